//! letter.me's wire types and cryptography: addresses, keys, attestations and the sealed
//! envelope, with their canonical encodings.
//!
//! Pure on purpose — no I/O, no async — so the server, the adapters, the client and the
//! fuzzers all share exactly one implementation of what is signed and how.

pub mod address;
pub mod api;
pub mod attestation;
pub mod auth;
pub mod b64;
pub mod blob;
pub mod codec;
pub mod device;
pub mod discovery;
pub mod envelope;
pub mod federation;
pub mod keys;
pub mod kt;
pub mod link;
pub mod net;
pub mod state;
pub mod verdict;

pub use address::{Address, AddressError};
pub use attestation::{Attestation, AttestationError};
pub use envelope::{Envelope, EnvelopeId, OpenError, Payload, SealError, SignerKind, Verified};
pub use keys::{
    EncryptionKeypair, EncryptionPublicKey, IdentityPublicKey, KeyBinding, Signature,
    SigningKeypair,
};
