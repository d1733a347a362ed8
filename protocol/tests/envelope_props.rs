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
            Some(w.bob_key.public())
        } else if *a == w.carol {
            Some(w.carol_key.public())
        } else if *a == dave {
            Some(dave_key.public())
        } else {
            None
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
