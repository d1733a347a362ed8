//! Key-based login: the server issues a random challenge, the client signs it with its
//! identity key, the server returns a short-lived bearer token.

use crate::address::Address;
use crate::codec::Writer;
use crate::keys::{BadSignature, IdentityPublicKey, Signature, SigningKeypair};

/// Signature context of a login challenge.
pub const CHALLENGE_CONTEXT: &[u8] = b"letterme/v1/auth-challenge\0";

/// Canonical bytes signed to answer a challenge: domain, address, challenge.
pub fn challenge_bytes(domain: &str, address: &Address, challenge: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(96);
    w.str16(domain).str16(address.as_str()).raw(challenge);
    w.into_bytes()
}

pub fn sign_challenge(
    key: &SigningKeypair,
    domain: &str,
    address: &Address,
    challenge: &[u8; 32],
) -> Signature {
    key.sign(
        CHALLENGE_CONTEXT,
        &challenge_bytes(domain, address, challenge),
    )
}

pub fn verify_challenge(
    key: &IdentityPublicKey,
    domain: &str,
    address: &Address,
    challenge: &[u8; 32],
    sig: &Signature,
) -> Result<(), BadSignature> {
    key.verify(
        CHALLENGE_CONTEXT,
        &challenge_bytes(domain, address, challenge),
        sig,
    )
}
