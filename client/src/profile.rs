//! The user's profile directory: public identity, the pinned domain key, and the private
//! keys sealed under the passphrase with argon2id + XChaCha20-Poly1305.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use letterme_protocol::keys::random_bytes;
use letterme_protocol::{
    Address, Attestation, EncryptionKeypair, IdentityPublicKey, SigningKeypair, b64,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ClientError;

pub const PROFILE_FILE: &str = "profile.json";
const KEYSTORE_AAD: &[u8] = b"letterme/v1/keystore\0";

/// argon2id cost, stored with the keystore so it can be raised later.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedKeys {
    pub kdf: String,
    pub params: KdfParams,
    #[serde(with = "b64::bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "b64::bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64::bytes")]
    pub ciphertext: Vec<u8>,
}

/// `profile.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    pub address: Address,
    pub server: String,
    pub domain: String,
    /// The domain key pinned when the account was created.
    pub domain_key: IdentityPublicKey,
    pub attestation: Attestation,
    pub keys: SealedKeys,
}

/// The unlocked private keys.
#[derive(Debug)]
pub struct Keys {
    pub identity: SigningKeypair,
    pub encryption: EncryptionKeypair,
}

#[derive(Serialize, Deserialize)]
struct KeysPlain {
    identity: String,
    encryption: String,
}

fn derive(pass: &str, salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>, String> {
    let params = Params::new(p.m_kib, p.t, p.p, Some(32)).map_err(|e| e.to_string())?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass.as_bytes(), salt, &mut *out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

impl SealedKeys {
    pub fn seal(keys: &Keys, passphrase: &str) -> Self {
        let params = KdfParams::default();
        let salt: [u8; 16] = random_bytes();
        let nonce: [u8; 24] = random_bytes();
        let kek = derive(passphrase, &salt, params).expect("default argon2 params are valid");
        let plain = Zeroizing::new(
            serde_json::to_vec(&KeysPlain {
                identity: b64::encode(&*keys.identity.secret_bytes()),
                encryption: b64::encode(&*keys.encryption.secret_bytes()),
            })
            .expect("serializes"),
        );
        let ciphertext = XChaCha20Poly1305::new_from_slice(&*kek)
            .expect("32-byte key")
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: KEYSTORE_AAD,
                },
            )
            .expect("encrypts");
        Self {
            kdf: "argon2id".into(),
            params,
            salt: salt.to_vec(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// `None` when the passphrase is wrong (or the keystore was altered).
    pub fn open(&self, passphrase: &str) -> Option<Keys> {
        // Bounded, so a tampered profile cannot demand unbounded memory or time.
        let p = self.params;
        if self.nonce.len() != 24
            || self.kdf != "argon2id"
            || p.m_kib > 1 << 20
            || p.t > 16
            || p.p > 16
        {
            return None;
        }
        let kek = derive(passphrase, &self.salt, self.params).ok()?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new_from_slice(&*kek)
                .ok()?
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: KEYSTORE_AAD,
                    },
                )
                .ok()?,
        );
        let k: KeysPlain = serde_json::from_slice(&plain).ok()?;
        let id: [u8; 32] = b64::decode_array(&k.identity)?;
        let enc: [u8; 32] = b64::decode_array(&k.encryption)?;
        Some(Keys {
            identity: SigningKeypair::from_secret_bytes(&id),
            encryption: EncryptionKeypair::from_secret_bytes(&enc),
        })
    }
}

/// The profile directory: `~/.letterme` unless told otherwise.
#[derive(Debug, Clone)]
pub struct ProfileDir(pub PathBuf);

impl ProfileDir {
    pub fn file(&self) -> PathBuf {
        self.0.join(PROFILE_FILE)
    }

    pub fn store_path(&self) -> PathBuf {
        self.0.join("mail.db")
    }

    pub fn exists(&self) -> bool {
        self.file().exists()
    }

    pub fn load(&self) -> Result<Profile, ClientError> {
        let path = self.file();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NoProfile(self.0.display().to_string()));
            }
            Err(e) => {
                return Err(ClientError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::BadProfile(path.display().to_string(), e.to_string()))
    }

    pub fn unlock(&self, profile: &Profile, passphrase: &str) -> Result<Keys, ClientError> {
        let keys = profile
            .keys
            .open(passphrase)
            .ok_or_else(|| ClientError::WrongPassphrase(self.0.display().to_string()))?;
        if keys.identity.public() != profile.attestation.identity_key {
            return Err(ClientError::BadProfile(
                self.file().display().to_string(),
                "keys do not match".into(),
            ));
        }
        Ok(keys)
    }

    /// Writes atomically (temp file, fsync, rename) with mode 0600 in a 0700 directory.
    pub fn save(&self, profile: &Profile) -> Result<(), ClientError> {
        let io = |e: std::io::Error| {
            ClientError::Io(format!(
                "cannot write the profile in {}: {e}",
                self.0.display()
            ))
        };
        create_private_dir(&self.0).map_err(io)?;
        let tmp = self.0.join(".profile.json.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(profile).expect("serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.file()).map_err(io)?;
        if let Ok(d) = std::fs::File::open(&self.0) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trip_and_wrong_passphrase() {
        let keys = Keys {
            identity: SigningKeypair::generate(),
            encryption: EncryptionKeypair::generate(),
        };
        let sealed = SealedKeys::seal(&keys, "correct horse");
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains(&b64::encode(&*keys.identity.secret_bytes())));
        let opened = sealed.open("correct horse").unwrap();
        assert_eq!(opened.identity.public(), keys.identity.public());
        assert_eq!(opened.encryption.public(), keys.encryption.public());
        assert!(sealed.open("wrong").is_none());
    }
}
