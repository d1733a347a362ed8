//! The domain key at rest.
//!
//! The Ed25519 domain key is sealed with XChaCha20-Poly1305 under a key-encryption key (KEK)
//! before it reaches the database. The KEK comes from `LETTERME_SERVER_PASSPHRASE` through
//! argon2id when that is set, otherwise from a 32-byte key file created with mode 0600 next
//! to (or, better, away from) the data directory. A copy of the database alone never yields
//! the domain key.

use std::io::Write as _;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use letterme_protocol::b64;
use letterme_protocol::keys::random_bytes;
use zeroize::Zeroizing;

/// Env var that, when set, derives the KEK from a passphrase instead of the key file.
pub const PASSPHRASE_ENV: &str = "LETTERME_SERVER_PASSPHRASE";
/// Associated data of a sealed server key: this context and the key's public part, so a
/// sealed secret opens only in the row it was sealed for (issue 15.9).
const AAD: &[u8] = b"letterme/v2/server-key-at-rest\0";
/// What keys sealed before the binding carry; opened, never written.
const LEGACY_AAD: &[u8] = b"letterme/v1/domain-key-at-rest\0";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("cannot read or create the key file {path}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file {0} is not 32 bytes; restore the original file")]
    KeyFileCorrupt(String),
    #[error(
        "the domain key does not decrypt: wrong {PASSPHRASE_ENV} or key file for this data directory"
    )]
    WrongKey,
    #[error("the stored domain key is malformed")]
    Malformed,
}

/// A key-encryption key and how it was obtained (stored beside the sealed key).
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    pub kdf: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(kdf={}, key=<redacted>)", self.kdf)
    }
}

impl Kek {
    /// The KEK for sealing a new domain key.
    pub fn for_new_key(key_file: &Path) -> Result<Self, SecretError> {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(pass) if !pass.is_empty() => {
                let salt: [u8; 16] = random_bytes();
                Ok(Self {
                    key: derive(&pass, &salt),
                    kdf: format!("argon2id:{}", b64::encode(&salt)),
                })
            }
            _ => Ok(Self {
                key: load_or_create_key_file(key_file)?,
                kdf: "keyfile".into(),
            }),
        }
    }

    /// The KEK for opening a key sealed with `kdf`.
    pub fn for_existing(kdf: &str, key_file: &Path) -> Result<Self, SecretError> {
        if let Some(salt) = kdf.strip_prefix("argon2id:") {
            let salt = b64::decode(salt).map_err(|_| SecretError::Malformed)?;
            let pass = std::env::var(PASSPHRASE_ENV).map_err(|_| SecretError::WrongKey)?;
            return Ok(Self {
                key: derive(&pass, &salt),
                kdf: kdf.to_owned(),
            });
        }
        Ok(Self {
            key: load_key_file(key_file)?,
            kdf: kdf.to_owned(),
        })
    }

    /// Seals the secret of the key whose public part is `public`.
    pub fn seal(&self, secret: &[u8], public: &[u8]) -> Vec<u8> {
        seal(&self.key, &bound(AAD, &[public]), secret)
    }

    /// Opens what [`Kek::seal`] sealed for `public` (or, from before the binding, for
    /// any key).
    pub fn open(&self, sealed: &[u8], public: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        if sealed.len() < 24 + 16 {
            return Err(SecretError::Malformed);
        }
        open(&self.key, &bound(AAD, &[public]), sealed)
            .or_else(|| open(&self.key, LEGACY_AAD, sealed))
            .ok_or(SecretError::WrongKey)
    }
}

/// Associated data: `context`, then each part with its length in front.
pub fn bound(context: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = context.to_vec();
    for p in parts {
        aad.extend_from_slice(&(p.len() as u64).to_be_bytes());
        aad.extend_from_slice(p);
    }
    aad
}

/// XChaCha20-Poly1305 under `key` with a random nonce: `nonce || ciphertext`.
pub fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; 24] = random_bytes();
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let mut out = nonce.to_vec();
    out.extend(
        cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory data"),
    );
    out
}

/// Opens what [`seal`] made; `None` when the key or the data is wrong.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 24 + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(24);
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn derive(pass: &str, salt: &[u8]) -> Zeroizing<[u8; 32]> {
    // RFC 9106 §4 second recommended option: 64 MiB, 3 passes, 4 lanes.
    let params = Params::new(64 * 1024, 3, 4, Some(32)).expect("valid argon2 params");
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass.as_bytes(), salt, &mut *out)
        .expect("argon2 with a valid salt length");
    out
}

/// The key file of an existing domain key: never created here, since a new random file
/// could only fail to open the key and would hide the real file's absence.
fn load_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    if !path.exists() {
        return Err(SecretError::KeyFile {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing; restore it from backup (the domain key in the database is sealed with it)",
            ),
        });
    }
    load_or_create_key_file(path)
}

fn load_or_create_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let err = |source| SecretError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::KeyFileCorrupt(path.display().to_string()))?;
            Ok(Zeroizing::new(arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Zeroizing::new(random_bytes::<32>());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(err)?;
            f.write_all(&*key).map_err(err)?;
            f.sync_all().map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_kek_round_trip_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let kek = Kek::for_new_key(&path).unwrap();
        let sealed = kek.seal(b"secret seed", b"public A");
        assert!(!sealed.windows(11).any(|w| w == b"secret seed"));
        let again = Kek::for_existing("keyfile", &path).unwrap();
        assert_eq!(
            &again.open(&sealed, b"public A").unwrap()[..],
            b"secret seed"
        );
        // Moved into another key's row, it does not open (issue 15.9).
        assert!(matches!(
            again.open(&sealed, b"public B"),
            Err(SecretError::WrongKey)
        ));
        // Sealed before the binding: still opens.
        let legacy = seal(&kek.key, LEGACY_AAD, b"old seed");
        assert_eq!(&again.open(&legacy, b"any").unwrap()[..], b"old seed");
        assert!(matches!(
            Kek::for_existing("keyfile", &dir.path().join("missing.key")),
            Err(SecretError::KeyFile { .. })
        ));
        assert!(
            !dir.path().join("missing.key").exists(),
            "a missing key file is not replaced"
        );
        let other = Kek::for_new_key(&dir.path().join("other.key")).unwrap();
        assert!(matches!(
            other.open(&sealed, b"public A"),
            Err(SecretError::WrongKey)
        ));
    }
}
