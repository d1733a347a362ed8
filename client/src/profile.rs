//! The user's profile directory: public identity, the pinned domain key, and the private
//! keys sealed under the passphrase with argon2id + XChaCha20-Poly1305.

use std::path::PathBuf;

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
use crate::files::{create_private_dir, write_private};

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
    /// This device's certificate and binding, for a device linked to the account (`letterme
    /// account join`); absent on the account's first device, whose device key is the
    /// identity key and whose encryption key the attestation names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<letterme_protocol::device::Device>,
    pub keys: SealedKeys,
}

impl Profile {
    /// This device's encryption key as the account's key lookup lists it.
    pub fn encryption_key(&self) -> letterme_protocol::EncryptionPublicKey {
        self.device
            .as_ref()
            .map_or(self.attestation.encryption_key, |d| {
                d.binding.encryption_key
            })
    }

    /// This device's key: it logs in and signs envelopes.
    pub fn device_key(&self) -> IdentityPublicKey {
        self.device
            .as_ref()
            .map_or(self.attestation.identity_key, |d| d.cert.device_key)
    }
}

/// The unlocked private keys.
#[derive(Debug)]
pub struct Keys {
    /// The account's identity key: on the device that created the account, which alone
    /// certifies new devices (DECISIONS D83). `None` on a linked device.
    pub identity: Option<SigningKeypair>,
    /// This device's key: it logs in and signs envelopes. On the account's first device it
    /// is the identity key.
    pub device: SigningKeypair,
    pub encryption: EncryptionKeypair,
    /// Encryption keys this profile had before, newest first: they still open stored mail,
    /// and mail received until their `open_until`.
    pub retired: Vec<RetiredKey>,
    /// A new encryption key sent to the server and not yet confirmed (a rotation that was
    /// interrupted): it opens mail too, and `letterme key rotate` finishes the change.
    pub pending: Option<PendingKey>,
}

impl Keys {
    /// The keys of an account's first device: its device key is the identity key.
    pub fn new(identity: SigningKeypair, encryption: EncryptionKeypair) -> Self {
        Self {
            device: identity.clone(),
            identity: Some(identity),
            encryption,
            retired: Vec::new(),
            pending: None,
        }
    }

    /// The keys of a device linked to an account: no identity key.
    pub fn linked(device: SigningKeypair, encryption: EncryptionKeypair) -> Self {
        Self {
            identity: None,
            device,
            encryption,
            retired: Vec::new(),
            pending: None,
        }
    }

    /// Every encryption key this profile holds: for mail already accepted.
    pub fn all_encryption(&self) -> Vec<&EncryptionKeypair> {
        let mut v = vec![&self.encryption];
        v.extend(self.pending.as_ref().map(|p| &p.key));
        v.extend(self.retired.iter().map(|r| &r.key));
        v
    }

    /// The keys that may open mail the server received at `received`: the current and
    /// pending ones, and retired ones whose overlap had not ended then.
    pub fn encryption_at(&self, received: u64) -> Vec<&EncryptionKeypair> {
        let mut v = vec![&self.encryption];
        v.extend(self.pending.as_ref().map(|p| &p.key));
        v.extend(
            self.retired
                .iter()
                .filter(|r| received <= r.open_until)
                .map(|r| &r.key),
        );
        v
    }

    /// Whether this profile made `key` (current, pending or retired).
    pub fn made(&self, key: &letterme_protocol::EncryptionPublicKey) -> bool {
        self.all_encryption().iter().any(|k| k.public() == *key)
    }
}

/// An encryption key replaced by a rotation or a revocation.
#[derive(Debug)]
pub struct RetiredKey {
    pub key: EncryptionKeypair,
    /// Its attestation version.
    pub version: u32,
    /// When it was replaced (Unix seconds).
    pub retired_at: u64,
    /// Mail the server received after this is not opened with it (the overlap's end; the
    /// replacement time itself for a revoked key).
    pub open_until: u64,
    pub revoked: bool,
}

/// A new encryption key on its way to the server.
#[derive(Debug)]
pub struct PendingKey {
    pub key: EncryptionKeypair,
    /// The time in its key binding, so a retry sends the same binding.
    pub created: u64,
    pub revoke: bool,
    /// The overlap the retired key gets, in seconds.
    pub overlap: u64,
}

#[derive(Serialize, Deserialize)]
struct KeysPlain {
    /// Absent on a linked device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    /// Absent on the account's first device: the identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    encryption: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<RetiredPlain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<PendingPlain>,
}

#[derive(Serialize, Deserialize)]
struct RetiredPlain {
    encryption: String,
    version: u32,
    retired_at: u64,
    open_until: u64,
    #[serde(default)]
    revoked: bool,
}

#[derive(Serialize, Deserialize)]
struct PendingPlain {
    encryption: String,
    created: u64,
    revoke: bool,
    overlap: u64,
}

fn secret(k: &EncryptionKeypair) -> String {
    b64::encode(&*k.secret_bytes())
}

fn enc_from(s: &str) -> Option<EncryptionKeypair> {
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(b64::decode_array(s)?);
    Some(EncryptionKeypair::from_secret_bytes(&bytes))
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
                identity: keys
                    .identity
                    .as_ref()
                    .map(|k| b64::encode(&*k.secret_bytes())),
                device: (keys.identity.as_ref().map(SigningKeypair::public)
                    != Some(keys.device.public()))
                .then(|| b64::encode(&*keys.device.secret_bytes())),
                encryption: secret(&keys.encryption),
                retired: keys
                    .retired
                    .iter()
                    .map(|r| RetiredPlain {
                        encryption: secret(&r.key),
                        version: r.version,
                        retired_at: r.retired_at,
                        open_until: r.open_until,
                        revoked: r.revoked,
                    })
                    .collect(),
                pending: keys.pending.as_ref().map(|p| PendingPlain {
                    encryption: secret(&p.key),
                    created: p.created,
                    revoke: p.revoke,
                    overlap: p.overlap,
                }),
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
        let signing = |s: &str| {
            let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(b64::decode_array(s)?);
            Some(SigningKeypair::from_secret_bytes(&bytes))
        };
        let identity = match &k.identity {
            Some(s) => Some(signing(s)?),
            None => None,
        };
        let device = match (&k.device, &identity) {
            (Some(s), _) => signing(s)?,
            (None, Some(identity)) => identity.clone(),
            (None, None) => return None,
        };
        let retired = k
            .retired
            .iter()
            .map(|r| {
                Some(RetiredKey {
                    key: enc_from(&r.encryption)?,
                    version: r.version,
                    retired_at: r.retired_at,
                    open_until: r.open_until,
                    revoked: r.revoked,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let pending = match &k.pending {
            Some(p) => Some(PendingKey {
                key: enc_from(&p.encryption)?,
                created: p.created,
                revoke: p.revoke,
                overlap: p.overlap,
            }),
            None => None,
        };
        Some(Keys {
            identity,
            device,
            encryption: enc_from(&k.encryption)?,
            retired,
            pending,
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
        let identity_ok = keys
            .identity
            .as_ref()
            .is_none_or(|k| k.public() == profile.attestation.identity_key);
        if !identity_ok
            || keys.device.public() != profile.device_key()
            || keys.encryption.public() != profile.encryption_key()
        {
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
        write_private(
            &self.file(),
            &serde_json::to_vec_pretty(profile).expect("serializes"),
        )
        .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trip_and_wrong_passphrase() {
        let mut keys = Keys::new(SigningKeypair::generate(), EncryptionKeypair::generate());
        keys.retired.push(RetiredKey {
            key: EncryptionKeypair::generate(),
            version: 1,
            retired_at: 10,
            open_until: 20,
            revoked: false,
        });
        let sealed = SealedKeys::seal(&keys, "correct horse");
        let json = serde_json::to_string(&sealed).unwrap();
        let identity = keys.identity.as_ref().unwrap();
        assert!(!json.contains(&b64::encode(&*identity.secret_bytes())));
        let opened = sealed.open("correct horse").unwrap();
        assert_eq!(
            opened.identity.as_ref().map(SigningKeypair::public),
            Some(identity.public())
        );
        assert_eq!(opened.device.public(), identity.public());
        assert_eq!(opened.encryption.public(), keys.encryption.public());
        assert_eq!(opened.retired.len(), 1);
        assert_eq!(opened.retired[0].key.public(), keys.retired[0].key.public());
        assert_eq!(opened.retired[0].open_until, 20);
        // Retired keys open mail received until their overlap ends, not after.
        assert_eq!(opened.encryption_at(20).len(), 2);
        assert_eq!(opened.encryption_at(21).len(), 1);
        assert!(opened.made(&keys.retired[0].key.public()));
        assert!(sealed.open("wrong").is_none());
    }

    /// A linked device's keystore holds its device key and no identity key.
    #[test]
    fn a_linked_device_keeps_its_device_key_and_no_identity() {
        let keys = Keys::linked(SigningKeypair::generate(), EncryptionKeypair::generate());
        let opened = SealedKeys::seal(&keys, "pw").open("pw").unwrap();
        assert!(opened.identity.is_none());
        assert_eq!(opened.device.public(), keys.device.public());
        assert_eq!(opened.encryption.public(), keys.encryption.public());
    }
}
