//! Devices (issue 18, DECISIONS D83): each of a person's devices holds keys of its own, an
//! Ed25519 device key that signs what the device does and an X25519 encryption key senders
//! wrap a message's content key to. The account's identity key certifies each device key
//! ([`DeviceCert`]); the device key binds its encryption key ([`DeviceBinding`]), so a device
//! rotates its encryption key without the identity key, which need be only where devices
//! are linked. An account from before devices is one device whose device key is its
//! identity key. The canonical bytes are in `docs/PROTOCOL.md` §Devices.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::address::Address;
use crate::codec::Writer;
use crate::keys::{
    EncryptionPublicKey, IdentityPublicKey, Signature, SigningKeypair, key_statement,
};

/// Signature context of a device certificate.
pub const DEVICE_CERT_CONTEXT: &[u8] = b"letterme/v1/device-cert\0";
/// Signature context of a device's binding of its encryption key.
pub const DEVICE_BINDING_CONTEXT: &[u8] = b"letterme/v1/device-binding\0";
/// Hash context of a device set's digest.
pub const DEVICE_SET_CONTEXT: &[u8] = b"letterme/v1/device-set\0";
/// Devices an account has at most: each is a key wrap in every envelope to it.
pub const MAX_DEVICES: usize = 16;

/// Why a device or a device set is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeviceError {
    #[error("a device certificate's signature does not verify")]
    BadCert,
    #[error("a device's binding of its encryption key does not verify")]
    BadBinding,
    #[error("a device is certified for another address or by another identity key")]
    OtherAccount,
    #[error("a device's encryption key is bound by another device key than its certificate's")]
    Mismatch,
    #[error("two devices share a device key or an encryption key")]
    Duplicate,
    #[error("an account has at least one device and at most {MAX_DEVICES}")]
    Count,
}

/// The identity key's statement "this device key acts for `address`, since `created`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    pub address: Address,
    pub identity_key: IdentityPublicKey,
    pub device_key: IdentityPublicKey,
    /// Unix seconds.
    pub created: u64,
    pub signature: Signature,
}

impl DeviceCert {
    /// Canonical bytes the identity key signs.
    pub fn signed_bytes(
        address: &Address,
        identity_key: &IdentityPublicKey,
        device_key: &IdentityPublicKey,
        created: u64,
    ) -> Vec<u8> {
        key_statement(
            address,
            identity_key.as_bytes(),
            device_key.as_bytes(),
            created,
        )
    }

    pub fn create(
        address: &Address,
        identity: &SigningKeypair,
        device_key: &IdentityPublicKey,
        created: u64,
    ) -> Self {
        let identity_key = identity.public();
        let msg = Self::signed_bytes(address, &identity_key, device_key, created);
        Self {
            address: address.clone(),
            identity_key,
            device_key: *device_key,
            created,
            signature: identity.sign(DEVICE_CERT_CONTEXT, &msg),
        }
    }

    pub fn verify(&self) -> Result<(), DeviceError> {
        let msg = Self::signed_bytes(
            &self.address,
            &self.identity_key,
            &self.device_key,
            self.created,
        );
        self.identity_key
            .verify(DEVICE_CERT_CONTEXT, &msg, &self.signature)
            .map_err(|_| DeviceError::BadCert)
    }
}

/// The device key's statement "this encryption key is mine, since `created`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBinding {
    pub address: Address,
    pub device_key: IdentityPublicKey,
    pub encryption_key: EncryptionPublicKey,
    /// Unix seconds.
    pub created: u64,
    pub signature: Signature,
}

impl DeviceBinding {
    /// Canonical bytes the device key signs.
    pub fn signed_bytes(
        address: &Address,
        device_key: &IdentityPublicKey,
        encryption_key: &EncryptionPublicKey,
        created: u64,
    ) -> Vec<u8> {
        key_statement(
            address,
            device_key.as_bytes(),
            encryption_key.as_bytes(),
            created,
        )
    }

    pub fn create(
        address: &Address,
        device: &SigningKeypair,
        encryption_key: &EncryptionPublicKey,
        created: u64,
    ) -> Self {
        let device_key = device.public();
        let msg = Self::signed_bytes(address, &device_key, encryption_key, created);
        Self {
            address: address.clone(),
            device_key,
            encryption_key: *encryption_key,
            created,
            signature: device.sign(DEVICE_BINDING_CONTEXT, &msg),
        }
    }

    pub fn verify(&self) -> Result<(), DeviceError> {
        let msg = Self::signed_bytes(
            &self.address,
            &self.device_key,
            &self.encryption_key,
            self.created,
        );
        self.device_key
            .verify(DEVICE_BINDING_CONTEXT, &msg, &self.signature)
            .map_err(|_| DeviceError::BadBinding)
    }
}

/// One device as a key lookup lists it: its certificate and its encryption key's binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub cert: DeviceCert,
    pub binding: DeviceBinding,
}

impl Device {
    /// A device certified by `identity` and binding `encryption_key` with `device`.
    pub fn create(
        address: &Address,
        identity: &SigningKeypair,
        device: &SigningKeypair,
        encryption_key: &EncryptionPublicKey,
        created: u64,
    ) -> Self {
        Self {
            cert: DeviceCert::create(address, identity, &device.public(), created),
            binding: DeviceBinding::create(address, device, encryption_key, created),
        }
    }

    /// Both statements verify, and they speak of one device of `address` under
    /// `identity_key`.
    pub fn verify(
        &self,
        address: &Address,
        identity_key: &IdentityPublicKey,
    ) -> Result<(), DeviceError> {
        if &self.cert.address != address
            || &self.binding.address != address
            || &self.cert.identity_key != identity_key
        {
            return Err(DeviceError::OtherAccount);
        }
        if self.binding.device_key != self.cert.device_key {
            return Err(DeviceError::Mismatch);
        }
        self.cert.verify()?;
        self.binding.verify()
    }

    /// The device's short id, as `letterme device list` shows it and `device remove`
    /// takes it: the first 8 bytes of the SHA-256 of its device key, in hex.
    pub fn id(&self) -> String {
        device_id(&self.cert.device_key)
    }
}

/// The short id of device key `key` ([`Device::id`]).
pub fn device_id(key: &IdentityPublicKey) -> String {
    crate::codec::hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Checks a device set of `address` under `identity_key`: between one and [`MAX_DEVICES`]
/// devices, each verified, no device key or encryption key twice.
pub fn verify_set(
    devices: &[Device],
    address: &Address,
    identity_key: &IdentityPublicKey,
) -> Result<(), DeviceError> {
    if devices.is_empty() || devices.len() > MAX_DEVICES {
        return Err(DeviceError::Count);
    }
    let mut device_keys = std::collections::BTreeSet::new();
    let mut encryption_keys = std::collections::BTreeSet::new();
    for d in devices {
        d.verify(address, identity_key)?;
        if !device_keys.insert(d.cert.device_key.0)
            || !encryption_keys.insert(d.binding.encryption_key.0)
        {
            return Err(DeviceError::Duplicate);
        }
    }
    Ok(())
}

/// The digest of a device set, which a key-transparency entry carries so that its proof
/// covers every device of the set: SHA-256 of [`DEVICE_SET_CONTEXT`], the count, and each
/// device, in ascending order of their device keys, as its certificate's and binding's
/// signed bytes and signatures. The order the set is listed in does not change it; of a set
/// [`verify_set`] accepts (no device key twice).
pub fn set_digest(devices: &[Device]) -> [u8; 32] {
    let mut sorted: Vec<&Device> = devices.iter().collect();
    sorted.sort_by_key(|d| d.cert.device_key.0);
    let mut w = Writer::with_capacity(64 + devices.len() * 320);
    w.raw(DEVICE_SET_CONTEXT)
        .u16(u16::try_from(sorted.len()).unwrap_or(u16::MAX));
    for d in sorted {
        let (c, b) = (&d.cert, &d.binding);
        w.bytes16(&DeviceCert::signed_bytes(
            &c.address,
            &c.identity_key,
            &c.device_key,
            c.created,
        ))
        .raw(c.signature.as_bytes())
        .bytes16(&DeviceBinding::signed_bytes(
            &b.address,
            &b.device_key,
            &b.encryption_key,
            b.created,
        ))
        .raw(b.signature.as_bytes());
    }
    Sha256::digest(w.into_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EncryptionKeypair;

    fn device(address: &Address, identity: &SigningKeypair, created: u64) -> Device {
        let key = SigningKeypair::generate();
        Device::create(
            address,
            identity,
            &key,
            &EncryptionKeypair::generate().public(),
            created,
        )
    }

    #[test]
    fn a_device_verifies_and_each_changed_field_is_refused() {
        let address = Address::parse("alice@x.test").unwrap();
        let identity = SigningKeypair::generate();
        let d = device(&address, &identity, 10);
        let id = identity.public();
        d.verify(&address, &id).unwrap();
        let other = Address::parse("mallory@x.test").unwrap();
        assert_eq!(d.verify(&other, &id), Err(DeviceError::OtherAccount));
        let stranger = SigningKeypair::generate().public();
        assert_eq!(
            d.verify(&address, &stranger),
            Err(DeviceError::OtherAccount)
        );
        let mut t = d.clone();
        t.cert.created += 1;
        assert_eq!(t.verify(&address, &id), Err(DeviceError::BadCert));
        let mut t = d.clone();
        t.binding.encryption_key = EncryptionKeypair::generate().public();
        assert_eq!(t.verify(&address, &id), Err(DeviceError::BadBinding));
        // A binding by a key the identity never certified, however well signed.
        let mut t = d.clone();
        let rogue = SigningKeypair::generate();
        t.binding = DeviceBinding::create(&address, &rogue, &d.binding.encryption_key, 10);
        assert_eq!(t.verify(&address, &id), Err(DeviceError::Mismatch));
        // A certificate the server made with a key of its own for the identity's place.
        let mut t = d;
        t.cert = DeviceCert::create(&address, &rogue, &t.cert.device_key, 10);
        assert_eq!(t.verify(&address, &id), Err(DeviceError::OtherAccount));
    }

    #[test]
    fn a_set_is_bounded_has_no_key_twice_and_its_digest_ignores_order() {
        let address = Address::parse("alice@x.test").unwrap();
        let identity = SigningKeypair::generate();
        let id = identity.public();
        let set: Vec<Device> = (0..3).map(|i| device(&address, &identity, i)).collect();
        verify_set(&set, &address, &id).unwrap();
        let mut reversed = set.clone();
        reversed.reverse();
        assert_eq!(set_digest(&set), set_digest(&reversed));
        assert_ne!(set_digest(&set), set_digest(&set[..2]));
        let mut later = set.clone();
        later[0].cert = DeviceCert::create(&address, &identity, &later[0].cert.device_key, 99);
        assert_ne!(set_digest(&set), set_digest(&later));
        let mut twice = set.clone();
        twice.push(set[1].clone());
        assert_eq!(
            verify_set(&twice, &address, &id),
            Err(DeviceError::Duplicate)
        );
        assert_eq!(verify_set(&[], &address, &id), Err(DeviceError::Count));
        let many: Vec<Device> = (0..=MAX_DEVICES as u64)
            .map(|i| device(&address, &identity, i))
            .collect();
        assert_eq!(verify_set(&many, &address, &id), Err(DeviceError::Count));
        assert_eq!(set[0].id().len(), 16);
        assert_ne!(set[0].id(), set[1].id());
    }

    /// An account from before devices is one device whose device key is its identity key.
    #[test]
    fn the_identity_key_is_the_device_key_of_an_account_from_before_devices() {
        let address = Address::parse("alice@x.test").unwrap();
        let identity = SigningKeypair::generate();
        let enc = EncryptionKeypair::generate().public();
        let d = Device::create(&address, &identity, &identity, &enc, 5);
        d.verify(&address, &identity.public()).unwrap();
        assert_eq!(d.cert.device_key, identity.public());
    }
}
