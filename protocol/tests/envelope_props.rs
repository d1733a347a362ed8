//! Property tests: an envelope opens only exactly as sealed, for its own recipients,
//! from the key the reader trusts, and only once.
#![allow(clippy::unwrap_used)]

use letterme_protocol::envelope::{OpenError, SignerKind, seal, seal_message};
use letterme_protocol::{
    Address, EncryptionKeypair, Envelope, EnvelopeId, Payload, SigningKeypair,
};
use proptest::prelude::*;

struct World {
    alice: Address,
    alice_id: SigningKeypair,
    bob: Address,
    bob_key: EncryptionKeypair,
    carol: Address,
    carol_key: EncryptionKeypair,
}

fn world() -> World {
    World {
        alice: Address::parse("alice@x.test").unwrap(),
        alice_id: SigningKeypair::generate(),
        bob: Address::parse("bob@x.test").unwrap(),
        bob_key: EncryptionKeypair::generate(),
        carol: Address::parse("carol@x.test").unwrap(),
        carol_key: EncryptionKeypair::generate(),
    }
}

fn payload(w: &World, subject: &str, body: &str) -> Payload {
    Payload {
        from: w.alice.clone(),
        to: vec![w.bob.clone()],
        cc: vec![w.carol.clone()],
        bcc: vec![],
        subject: subject.into(),
        body: body.into(),
        headers: vec![("X-Test".into(), "1".into())],
        date: 1_700_000_000,
        message_id: "<m1@x.test>".into(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    }
}

fn sealed(w: &World, subject: &str, body: &str) -> Envelope {
    let rcpts = [
        (w.bob.clone(), w.bob_key.public()),
        (w.carol.clone(), w.carol_key.public()),
    ];
    seal(
        SignerKind::User,
        &w.alice_id,
        &payload(w, subject, body),
        &rcpts,
        1_700_000_000,
    )
    .unwrap()
}

fn open_as_bob(w: &World, bytes: &[u8]) -> Result<Payload, OpenError> {
    Envelope::decode(bytes)?.open(&w.bob, &[&w.bob_key], &w.alice_id.public(), &|_| false)
}

#[test]
fn both_recipients_open_the_same_payload() {
    let w = world();
    let env = sealed(&w, "hello", "body text");
    let bytes = env.encode();
    let p = open_as_bob(&w, &bytes).unwrap();
    assert_eq!(p.subject, "hello");
    assert_eq!(p.body, "body text");
    let decoded = Envelope::decode(&bytes).unwrap();
    let p2 = decoded
        .open(&w.carol, &[&w.carol_key], &w.alice_id.public(), &|_| false)
        .unwrap();
    assert_eq!(p, p2);
    assert_eq!(decoded, env);
    // The subject is not in the clear anywhere in the envelope.
    assert!(!bytes.windows(5).any(|win| win == b"hello"));
}

#[test]
fn outsider_and_wrong_key_cannot_open() {
    let w = world();
    let bytes = sealed(&w, "s", "b").encode();
    let env = Envelope::decode(&bytes).unwrap();
    let dave = Address::parse("dave@x.test").unwrap();
    let dave_key = EncryptionKeypair::generate();
    assert_eq!(
        env.open(&dave, &[&dave_key], &w.alice_id.public(), &|_| false),
        Err(OpenError::NotARecipient(dave))
    );
    assert_eq!(
        env.open(&w.bob, &[&dave_key], &w.alice_id.public(), &|_| false),
        Err(OpenError::NoMatchingKey(w.bob.clone()))
    );
}

#[test]
fn replayed_envelope_is_refused() {
    let w = world();
    let env = sealed(&w, "s", "b");
    let id = env.id;
    let seen = move |i: &EnvelopeId| *i == id;
    assert_eq!(
        env.open(&w.bob, &[&w.bob_key], &w.alice_id.public(), &seen),
        Err(OpenError::Replayed(id))
    );
}

#[test]
fn resigned_envelope_is_refused() {
    let w = world();
    let mut env = sealed(&w, "s", "b");
    let mallory = SigningKeypair::generate();
    // Re-signed by another key but still claiming alice's key: the signature fails.
    let mut forged = env.clone();
    forged.signature = mallory.sign(letterme_protocol::envelope::ENVELOPE_CONTEXT, &[]);
    assert_eq!(
        open_as_bob(&w, &forged.encode()),
        Err(OpenError::BadSignature)
    );
    // Re-signed consistently with mallory's own key: not the sender's verified key.
    env.signer_key = mallory.public();
    let rcpts = [(w.bob.clone(), w.bob_key.public())];
    let mut p = payload(&w, "s", "b");
    p.cc.clear();
    let mallory_env = seal(SignerKind::User, &mallory, &p, &rcpts, 1).unwrap();
    assert_eq!(
        open_as_bob(&w, &mallory_env.encode()),
        Err(OpenError::UnexpectedSigner(w.alice.clone()))
    );
}

#[test]
fn bcc_recipients_get_their_own_envelopes() {
    let w = world();
    let dave = Address::parse("dave@x.test").unwrap();
    let dave_key = EncryptionKeypair::generate();
    let p = payload(&w, "s", "b");
    let key_of = |a: &Address| {
        if *a == w.bob {
            vec![w.bob_key.public()]
        } else if *a == w.carol {
            vec![w.carol_key.public()]
        } else if *a == dave {
            vec![dave_key.public()]
        } else {
            vec![]
        }
    };
    let envs = seal_message(&w.alice_id, &p, std::slice::from_ref(&dave), &key_of, 1).unwrap();
    assert_eq!(envs.len(), 2);
    let shared = &envs[0];
    assert!(shared.recipients.iter().all(|r| r.address != dave));
    let shared_payload = shared
        .open(&w.bob, &[&w.bob_key], &w.alice_id.public(), &|_| false)
        .unwrap();
    assert!(shared_payload.bcc.is_empty());
    let own = &envs[1];
    assert_eq!(own.recipients.len(), 1);
    assert_eq!(own.recipients[0].address, dave);
    let own_payload = own
        .open(&dave, &[&dave_key], &w.alice_id.public(), &|_| false)
        .unwrap();
    assert_eq!(own_payload.bcc, vec![dave.clone()]);
    let unknown = Address::parse("eve@x.test").unwrap();
    assert!(seal_message(&w.alice_id, &p, &[unknown], &key_of, 1).is_err());
}

#[test]
fn swapped_recipient_is_refused() {
    let w = world();
    let mut env = sealed(&w, "s", "b");
    // The server (or anyone) swaps bob's entry for carol's key slot.
    let dave = Address::parse("dave@x.test").unwrap();
    env.recipients[1].address = dave;
    assert_eq!(open_as_bob(&w, &env.encode()), Err(OpenError::BadSignature));
    let mut env = sealed(&w, "s", "b");
    env.recipients.swap(0, 1);
    assert_eq!(open_as_bob(&w, &env.encode()), Err(OpenError::BadSignature));
}

#[test]
fn respelled_addresses_do_not_decode() {
    // The signature covers one spelling; a re-cased copy must not verify as the same envelope.
    let w = world();
    let bytes = sealed(&w, "s", "b").encode();
    let pos = bytes
        .windows(10)
        .position(|win| win == b"bob@x.test")
        .unwrap();
    let mut respelled = bytes.clone();
    respelled[pos] = b'B';
    assert!(matches!(
        Envelope::decode(&respelled),
        Err(OpenError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_flipped_byte_fails_to_open(
        subject in ".{0,40}",
        body in ".{0,300}",
        pos_seed in any::<usize>(),
        bit in 0u8..8,
    ) {
        let w = world();
        let mut bytes = sealed(&w, &subject, &body).encode();
        prop_assert!(open_as_bob(&w, &bytes).is_ok());
        let pos = pos_seed % bytes.len();
        bytes[pos] ^= 1 << bit;
        prop_assert!(open_as_bob(&w, &bytes).is_err());
    }

    #[test]
    fn truncated_or_extended_input_fails_cleanly(cut in 0usize..2000, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let w = world();
        let bytes = sealed(&w, "s", "b").encode();
        let cut = cut % bytes.len();
        prop_assert!(open_as_bob(&w, &bytes[..cut]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(open_as_bob(&w, &longer).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&data);
        let mut prefixed = b"LMENV\x01".to_vec();
        prefixed.extend_from_slice(&data);
        let _ = Envelope::decode(&prefixed);
    }
}

fn blob_ref(n: u8) -> letterme_protocol::blob::BlobRef {
    letterme_protocol::blob::BlobRef {
        id: letterme_protocol::blob::BlobId([n; 32]).to_hex(),
        key: [n; 32],
        nonce: [n; letterme_protocol::blob::NONCE_PREFIX],
        size: 1 << 20,
        base64: false,
    }
}

/// A payload without blobs keeps envelope version 1 (what older servers and clients
/// read); one with blobs is version 2 and its header names them, in order, under the
/// signature: the server can neither add nor drop nor swap one.
#[test]
fn blobs_are_named_in_a_version_2_header_under_the_signature() {
    use letterme_protocol::blob::BlobId;
    let w = world();
    let rcpts = [(w.bob.clone(), w.bob_key.public())];
    let plain = sealed(&w, "s", "b");
    assert_eq!(plain.encode()[5], 1);
    assert!(plain.blobs.is_empty());

    let mut p = payload(&w, "s", "b");
    p.blobs = vec![blob_ref(7), blob_ref(3)];
    let env = seal(SignerKind::User, &w.alice_id, &p, &rcpts, 1).unwrap();
    let bytes = env.encode();
    assert_eq!(bytes[5], 2);
    let decoded = Envelope::decode(&bytes).unwrap();
    assert_eq!(decoded.blobs, vec![BlobId([7; 32]), BlobId([3; 32])]);
    let opened = decoded
        .open(&w.bob, &[&w.bob_key], &w.alice_id.public(), &|_| false)
        .unwrap();
    assert_eq!(opened.blobs, p.blobs);

    for change in [
        vec![BlobId([7; 32])],
        vec![BlobId([3; 32]), BlobId([7; 32])],
        vec![BlobId([7; 32]), BlobId([4; 32])],
    ] {
        let mut t = decoded.clone();
        t.blobs = change;
        let t = Envelope::decode(&t.encode()).unwrap();
        assert_eq!(
            t.open(&w.bob, &[&w.bob_key], &w.alice_id.public(), &|_| false),
            Err(OpenError::BadSignature)
        );
    }
}

/// One encoding per envelope: a version 2 header with no blob, or one blob twice, does
/// not decode; a payload naming a blob twice or a malformed id does not seal.
#[test]
fn blob_lists_have_one_encoding() {
    let w = world();
    let rcpts = [(w.bob.clone(), w.bob_key.public())];
    let mut p = payload(&w, "s", "b");
    p.blobs = vec![blob_ref(7)];
    let env = seal(SignerKind::User, &w.alice_id, &p, &rcpts, 1).unwrap();
    let bytes = env.encode();
    // The blob count sits right before the one id and the nonce.
    let id_at = bytes.windows(32).position(|x| x == [7; 32]).unwrap();
    let mut zero = bytes[..id_at - 2].to_vec();
    zero.extend_from_slice(&[0, 0]);
    zero.extend_from_slice(&bytes[id_at + 32..]);
    assert!(Envelope::decode(&zero).is_err());
    let mut twice = bytes[..id_at - 2].to_vec();
    twice.extend_from_slice(&[0, 2]);
    twice.extend_from_slice(&[7; 32]);
    twice.extend_from_slice(&bytes[id_at..]);
    assert!(Envelope::decode(&twice).is_err());

    p.blobs = vec![blob_ref(7), blob_ref(7)];
    assert!(seal(SignerKind::User, &w.alice_id, &p, &rcpts, 1).is_err());
    let mut bad = blob_ref(1);
    bad.id = "not hex".into();
    p.blobs = vec![bad];
    assert!(seal(SignerKind::User, &w.alice_id, &p, &rcpts, 1).is_err());
}
