//! Linking a device (issue 18, PROTOCOL.md §6b): a short one-time code shown on a device
//! of the account, typed on the new one, and a password-authenticated key exchange
//! (SPAKE2, the `spake2` crate) relayed by the server. Each side learns the other holds the
//! code; the server, which relays every message, learns nothing that lets it pose as
//! either (it never sees the code's password) and can only try one guess per code.
//!
//! The existing device plays SPAKE2's side A, the new device side B. The shared key seals
//! the new device's request (its keys, signed by its device key) and the existing
//! device's answer (the new device's certificate and what the new device needs to know of
//! the account) with XChaCha20-Poly1305, one key per direction.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::Attestation;
use crate::address::Address;
use crate::codec::{Reader, Writer};
use crate::device::{Device, DeviceBinding};
use crate::keys::{IdentityPublicKey, random_bytes};

/// Seconds a code may be used in.
pub const LINK_TTL: u64 = 600;
/// Largest message either side posts to a link slot.
pub const MAX_LINK_MESSAGE: usize = 16 * 1024;
/// Digits of a slot number.
pub const SLOT_DIGITS: usize = 6;
/// Characters of a code's password (Crockford base32: 5 bits each).
pub const PASSWORD_CHARS: usize = 8;
/// The alphabet of a code's password: Crockford's base32, without I, L, O and U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// SPAKE2 identities: the two sides, and the context both bind the exchange to.
const SIDE_A: &[u8] = b"letterme/v1/link/existing-device\0";
const SIDE_B: &[u8] = b"letterme/v1/link/new-device\0";
/// Key derivation contexts of the two directions.
const TO_NEW: &[u8] = b"letterme/v1/link/to-new-device\0";
const TO_EXISTING: &[u8] = b"letterme/v1/link/to-existing-device\0";

/// Why linking failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error(
        "a code is {SLOT_DIGITS} digits, then {PASSWORD_CHARS} letters and digits, like 123456-ABCD-EFGH"
    )]
    BadCode,
    #[error("the code is wrong (or was typed for another address)")]
    WrongCode,
    #[error("malformed link message: {0}")]
    Malformed(String),
}

/// The one-time code: the slot the server relays through, and the password only the two
/// devices know. Written `123456-ABCD-EFGH`.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    pub slot: String,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCode")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.password.as_str();
        write!(f, "{}-{}-{}", self.slot, &p[..4], &p[4..])
    }
}

impl LinkCode {
    /// A fresh password, for a slot the server gives next ([`LinkCode::with_slot`]).
    pub fn generate() -> Self {
        let bytes: [u8; PASSWORD_CHARS] = random_bytes();
        let password = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
            .collect();
        Self {
            slot: String::new(),
            password: Zeroizing::new(password),
        }
    }

    /// Reads a code as a person types it: dashes and spaces anywhere, any case, and the
    /// letters Crockford's base32 reads as digits (O as 0; I and L as 1).
    pub fn parse(s: &str) -> Result<Self, LinkError> {
        let chars: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\t'))
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            })
            .collect();
        if chars.len() != SLOT_DIGITS + PASSWORD_CHARS || !chars.is_ascii() {
            return Err(LinkError::BadCode);
        }
        let (slot, password) = chars.split_at(SLOT_DIGITS);
        if !slot.bytes().all(|b| b.is_ascii_digit())
            || !password.bytes().all(|b| ALPHABET.contains(&b))
        {
            return Err(LinkError::BadCode);
        }
        Ok(Self {
            slot: slot.to_owned(),
            password: Zeroizing::new(password.to_owned()),
        })
    }

    /// The same password with the slot the server gave.
    #[must_use]
    pub fn with_slot(mut self, slot: &str) -> Self {
        slot.clone_into(&mut self.slot);
        self
    }

    /// Whether `slot` is a slot number as the server hands them out.
    pub fn valid_slot(slot: &str) -> bool {
        slot.len() == SLOT_DIGITS && slot.bytes().all(|b| b.is_ascii_digit())
    }
}

/// Which end of the exchange this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device of the account that showed the code (SPAKE2's A).
    Existing,
    /// The device being linked (SPAKE2's B).
    New,
}

/// One side's exchange in progress.
pub struct Exchange {
    side: Side,
    state: Spake2<Ed25519Group>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// Starts this side's exchange for `address` with `code`'s password; returns the
    /// message to send. The address is part of the password, so a code typed for another
    /// address fails like a wrong one. (The slot is not: it is no secret, and the server
    /// picks it after the first message.)
    pub fn start(side: Side, code: &LinkCode, address: &Address) -> (Self, Vec<u8>) {
        let mut secret = Zeroizing::new(Vec::new());
        secret.extend_from_slice(address.as_str().as_bytes());
        secret.push(0);
        secret.extend_from_slice(code.password.as_bytes());
        let password = Password::new(secret.as_slice());
        let (a, b) = (Identity::new(SIDE_A), Identity::new(SIDE_B));
        let (state, msg) = match side {
            Side::Existing => Spake2::<Ed25519Group>::start_a(&password, &a, &b),
            Side::New => Spake2::<Ed25519Group>::start_b(&password, &a, &b),
        };
        (Self { side, state }, msg)
    }

    /// Completes the exchange with the other side's message. Both sides get the same
    /// keys only when both used the same code; a wrong code shows when a sealed message
    /// does not open.
    pub fn finish(self, theirs: &[u8]) -> Result<Channel, LinkError> {
        let shared = Zeroizing::new(
            self.state
                .finish(theirs)
                .map_err(|e| LinkError::Malformed(format!("{e:?}")))?,
        );
        let derive = |context: &[u8]| -> Zeroizing<[u8; 32]> {
            let mut h = Sha256::new();
            h.update(context);
            h.update(shared.as_slice());
            Zeroizing::new(h.finalize().into())
        };
        let (to_new, to_existing) = (derive(TO_NEW), derive(TO_EXISTING));
        let (send, receive) = match self.side {
            Side::Existing => (to_new, to_existing),
            Side::New => (to_existing, to_new),
        };
        Ok(Channel { send, receive })
    }
}

/// The sealed channel the exchange made: one key for each direction.
pub struct Channel {
    send: Zeroizing<[u8; 32]>,
    receive: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel(<keys>)")
    }
}

impl Channel {
    /// `value` as JSON, sealed for the other side: nonce (24 bytes), then ciphertext.
    pub fn seal<T: Serialize>(&self, value: &T) -> Vec<u8> {
        let plain = Zeroizing::new(serde_json::to_vec(value).expect("link messages serialize"));
        let nonce: [u8; 24] = random_bytes();
        let sealed = XChaCha20Poly1305::new_from_slice(self.send.as_slice())
            .expect("32-byte key")
            .encrypt(
                XNonce::from_slice(&nonce),
                AeadPayload {
                    msg: &plain,
                    aad: b"",
                },
            )
            .expect("bounded messages encrypt");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// A message of the other side; [`LinkError::WrongCode`] when it does not open (the
    /// two sides used different codes).
    pub fn open<T: for<'de> Deserialize<'de>>(&self, sealed: &[u8]) -> Result<T, LinkError> {
        if sealed.len() < 24 {
            return Err(LinkError::WrongCode);
        }
        let (nonce, body) = sealed.split_at(24);
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new_from_slice(self.receive.as_slice())
                .expect("32-byte key")
                .decrypt(
                    XNonce::from_slice(nonce),
                    AeadPayload {
                        msg: body,
                        aad: b"",
                    },
                )
                .map_err(|_| LinkError::WrongCode)?,
        );
        serde_json::from_slice(&plain).map_err(|e| LinkError::Malformed(e.to_string()))
    }
}

/// What the new device asks for, sealed: its device key and the binding of its encryption
/// key, signed by that device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub binding: DeviceBinding,
}

/// The existing device's answer, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinAnswer {
    Linked(Box<Linked>),
    /// The existing device refused the request (its reason, in words).
    Refused {
        reason: String,
    },
}

/// The new device's certificate, and what it needs to know of the account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Linked {
    pub device: Device,
    pub domain: String,
    /// The domain key the existing device pinned.
    pub domain_key: IdentityPublicKey,
    pub attestation: Attestation,
}

/// The new device's message: its half of the exchange, and its request sealed with the
/// key the exchange gave it (it has the existing device's half already).
pub fn join_message(exchange: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + exchange.len() + sealed.len());
    w.bytes16(exchange).raw(sealed);
    w.into_bytes()
}

/// The two parts of [`join_message`].
pub fn split_join_message(m: &[u8]) -> Result<(&[u8], &[u8]), LinkError> {
    let mut r = Reader::new(m);
    let exchange = r
        .bytes16("exchange", MAX_LINK_MESSAGE)
        .map_err(|e| LinkError::Malformed(e.to_string()))?;
    let sealed = r
        .take(r.remaining(), "sealed request")
        .map_err(|e| LinkError::Malformed(e.to_string()))?;
    Ok((exchange, sealed))
}

/// The message the existing device posts when the new device's request does not open:
/// unsealed, since the two sides share no key.
pub const WRONG_CODE: &[u8] = b"letterme/v1/link/wrong-code";

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &LinkCode, b: &LinkCode, address: &Address) -> (Channel, Channel) {
        let (existing, m1) = Exchange::start(Side::Existing, a, address);
        let (new, m2) = Exchange::start(Side::New, b, address);
        (existing.finish(&m2).unwrap(), new.finish(&m1).unwrap())
    }

    #[test]
    fn a_code_reads_as_typed_and_round_trips() {
        let code = LinkCode::generate().with_slot("042917");
        let shown = code.to_string();
        assert_eq!(shown.len(), SLOT_DIGITS + PASSWORD_CHARS + 2);
        assert_eq!(LinkCode::parse(&shown).unwrap(), code);
        assert_eq!(
            LinkCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap(),
            code
        );
        let typed = LinkCode::parse("123456-abcd-efgo").unwrap();
        assert_eq!(typed.to_string(), "123456-ABCD-EFG0");
        for bad in [
            "",
            "12345-ABCD-EFGH",
            "123456-ABCD-EFGU",
            "12345X-ABCD-EFGH",
            "123456-ABCD-EFGHJ",
        ] {
            assert_eq!(LinkCode::parse(bad), Err(LinkError::BadCode), "{bad}");
        }
    }

    /// The same code on both sides gives a channel each way; another code, or the same
    /// code for another address, gives keys that do not open the other side's messages.
    #[test]
    fn only_the_same_code_and_address_open_the_channel() {
        let alice = Address::parse("alice@x.test").unwrap();
        let code = LinkCode::generate().with_slot("000001");
        let (existing, new) = pair(&code, &code, &alice);
        let sealed = new.seal(&"hello");
        assert_eq!(existing.open::<String>(&sealed).unwrap(), "hello");
        assert_eq!(new.open::<String>(&existing.seal(&"back")).unwrap(), "back");
        // A message does not open in the direction it was sealed for the other way.
        assert_eq!(new.open::<String>(&sealed), Err(LinkError::WrongCode));

        let other = LinkCode::generate().with_slot("000001");
        let (existing, new) = pair(&code, &other, &alice);
        assert_eq!(
            existing.open::<String>(&new.seal(&"x")),
            Err(LinkError::WrongCode)
        );
        let bob = Address::parse("bob@x.test").unwrap();
        let (existing, m1) = Exchange::start(Side::Existing, &code, &alice);
        let (new, m2) = Exchange::start(Side::New, &code, &bob);
        let (existing, new) = (existing.finish(&m2).unwrap(), new.finish(&m1).unwrap());
        assert_eq!(
            existing.open::<String>(&new.seal(&"x")),
            Err(LinkError::WrongCode)
        );
    }
}
