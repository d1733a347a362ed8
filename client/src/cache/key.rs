//! The cache's content key: AES-256-GCM under a key derived from the identity secret (so
//! only the passphrase unlocks it), with each ciphertext bound to its row.

use letterme_protocol::SigningKeypair;
use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const CACHE_AAD: &[u8] = b"letterme/v1/cache\0";
const KEY_CONTEXT: &[u8] = b"letterme/v1/cache-key\0";

/// Which ciphertext of a content row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Whole,
    Head,
    /// Where blobs go in the message (their places and keys).
    Pieces,
}

/// The content key. `Debug` never shows it.
pub struct CacheKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

impl CacheKey {
    /// Derived from the identity secret, so the passphrase protects it.
    pub fn derive(identity: &SigningKeypair) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_CONTEXT);
        h.update(*identity.secret_bytes());
        Self(Zeroizing::new(h.finalize().into()))
    }

    fn cipher(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*self.0).expect("32-byte key"))
    }

    /// The associated data of a row's ciphertext: the row id, and which part it is (the
    /// whole message, or its header section kept apart for header-only reads).
    fn aad(id: i64, part: Part) -> Vec<u8> {
        let mut aad = CACHE_AAD.to_vec();
        aad.extend_from_slice(&id.to_be_bytes());
        match part {
            Part::Whole => {}
            Part::Head => aad.extend_from_slice(b"\0head"),
            Part::Pieces => aad.extend_from_slice(b"\0pieces"),
        }
        aad
    }

    pub(super) fn seal(&self, id: i64, part: Part, plain: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let mut data = plain.to_vec();
        self.cipher()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(id, part)),
                &mut data,
            )
            .expect("encrypts");
        (nonce, data)
    }

    pub(super) fn open(&self, id: i64, part: Part, nonce: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = data.to_vec();
        let len = self
            .cipher()
            .open_in_place(nonce, Aad::from(Self::aad(id, part)), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }

    /// A keyed hash of a Message-ID, so duplicates are found without storing the id.
    pub(super) fn msgid_hash(&self, message_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"letterme/v1/msgid\0");
        h.update(*self.0);
        h.update(message_id.trim().as_bytes());
        hex(&h.finalize()[..16])
    }
}
