//! The server's attestation of a user's keys.
//!
//! The domain key signs (address, identity key, encryption key, created, version). A client
//! trusts a key only when this signature verifies against the domain key it trusts (pinned
//! at account creation now; from DNS once federation exists) and the identity key's own
//! binding of the encryption key verifies too.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::Address;
use crate::codec::Writer;
use crate::keys::{EncryptionPublicKey, IdentityPublicKey, KeyBinding, Signature, SigningKeypair};

/// Signature context of an attestation.
pub const ATTESTATION_CONTEXT: &[u8] = b"letterme/v1/attestation\0";

/// Why an attestation is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AttestationError {
    #[error("the attestation for {0} is not signed by the domain key of {1}")]
    BadDomainSignature(Address, String),
    #[error("the key binding for {0} is not signed by its identity key")]
    BadBinding(Address),
    #[error("the attestation is for {found}, not {expected}")]
    WrongAddress { expected: Address, found: Address },
    #[error("the attestation for {0} was issued by another domain")]
    WrongDomain(Address),
}

/// A domain's signed statement of a user's current keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub address: Address,
    pub identity_key: IdentityPublicKey,
    pub encryption_key: EncryptionPublicKey,
    /// When the key binding was made (unix seconds).
    pub created: u64,
    /// Key version for this address: 1 at registration, +1 at each rotation.
    pub version: u32,
    /// The identity key's signature over the encryption key ([`KeyBinding`]).
    pub binding_signature: Signature,
    /// The domain key's signature over [`Attestation::signed_bytes`].
    pub signature: Signature,
}

impl Attestation {
    /// Canonical bytes the domain key signs (`docs/PROTOCOL.md` §Attestation).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(200);
        w.str16(self.address.domain())
            .str16(self.address.as_str())
            .raw(self.identity_key.as_bytes())
            .raw(self.encryption_key.as_bytes())
            .u64(self.created)
            .u32(self.version)
            .raw(self.binding_signature.as_bytes());
        w.into_bytes()
    }

    /// Issues an attestation for a verified key binding.
    pub fn issue(binding: &KeyBinding, version: u32, domain_key: &SigningKeypair) -> Self {
        let mut att = Self {
            address: binding.address.clone(),
            identity_key: binding.identity_key,
            encryption_key: binding.encryption_key,
            created: binding.created,
            version,
            binding_signature: binding.signature,
            signature: Signature([0; 64]),
        };
        att.signature = domain_key.sign(ATTESTATION_CONTEXT, &att.signed_bytes());
        att
    }

    pub fn binding(&self) -> KeyBinding {
        KeyBinding {
            address: self.address.clone(),
            identity_key: self.identity_key,
            encryption_key: self.encryption_key,
            created: self.created,
            signature: self.binding_signature,
        }
    }

    /// Verifies both signatures, that it is about `expected`, and that `domain_key`
    /// belongs to `domain` (the caller's trust decision).
    pub fn verify(
        &self,
        expected: &Address,
        domain: &str,
        domain_key: &IdentityPublicKey,
    ) -> Result<(), AttestationError> {
        if &self.address != expected {
            return Err(AttestationError::WrongAddress {
                expected: expected.clone(),
                found: self.address.clone(),
            });
        }
        if !self.address.domain().eq_ignore_ascii_case(domain) {
            return Err(AttestationError::WrongDomain(self.address.clone()));
        }
        domain_key
            .verify(ATTESTATION_CONTEXT, &self.signed_bytes(), &self.signature)
            .map_err(|_| {
                AttestationError::BadDomainSignature(self.address.clone(), domain.to_owned())
            })?;
        self.binding()
            .verify()
            .map_err(|_| AttestationError::BadBinding(self.address.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EncryptionKeypair;

    fn fixture() -> (Address, SigningKeypair, Attestation) {
        let addr = Address::parse("bob@b.test").unwrap();
        let domain = SigningKeypair::generate();
        let id = SigningKeypair::generate();
        let enc = EncryptionKeypair::generate();
        let binding = KeyBinding::create(&addr, &id, &enc.public(), 100);
        (
            addr,
            domain.clone(),
            Attestation::issue(&binding, 1, &domain),
        )
    }

    #[test]
    fn verifies() {
        let (addr, domain, att) = fixture();
        att.verify(&addr, "b.test", &domain.public()).unwrap();
    }

    #[test]
    fn forged_attestation_is_refused() {
        let (addr, domain, att) = fixture();
        let mallory = SigningKeypair::generate();
        let mut forged = att.clone();
        forged.encryption_key = EncryptionKeypair::generate().public();
        forged.signature = mallory.sign(ATTESTATION_CONTEXT, &forged.signed_bytes());
        assert!(matches!(
            forged.verify(&addr, "b.test", &domain.public()),
            Err(AttestationError::BadDomainSignature(..))
        ));
        // Signed by the real domain key but with a key the identity never bound.
        let mut rebound = att.clone();
        rebound.encryption_key = EncryptionKeypair::generate().public();
        rebound.signature = domain.sign(ATTESTATION_CONTEXT, &rebound.signed_bytes());
        assert!(matches!(
            rebound.verify(&addr, "b.test", &domain.public()),
            Err(AttestationError::BadBinding(..))
        ));
        let other = Address::parse("carol@b.test").unwrap();
        assert!(matches!(
            att.verify(&other, "b.test", &domain.public()),
            Err(AttestationError::WrongAddress { .. })
        ));
        assert!(matches!(
            att.verify(&addr, "c.test", &domain.public()),
            Err(AttestationError::WrongDomain(..))
        ));
    }
}
