//! Keys: an Ed25519 identity key per user (and one per domain), and a separate X25519
//! encryption key that the identity key signs, so the encryption key can rotate while the
//! identity stays.

use std::fmt;

use crypto_box::aead::OsRng;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::address::Address;
use crate::b64;
use crate::codec::Writer;

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the operating system's random source failed");
    out
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify")]
pub struct BadSignature;

macro_rules! public_bytes {
    ($name:ident, $len:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "b64::array")] pub [u8; $len]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_base64(&self) -> String {
                b64::encode(&self.0)
            }

            pub fn from_base64(s: &str) -> Option<Self> {
                b64::decode_array(s).map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), b64::encode(&self.0))
            }
        }
    };
}

public_bytes!(
    IdentityPublicKey,
    32,
    "An Ed25519 public key (user identity or domain key)."
);
public_bytes!(
    EncryptionPublicKey,
    32,
    "An X25519 public key that mail is sealed to."
);
public_bytes!(Signature, 64, "An Ed25519 signature.");

impl IdentityPublicKey {
    /// Verifies `sig` over `context || message` with RFC 8032 strict verification
    /// (rejects small-order keys and non-canonical `S`).
    pub fn verify(
        &self,
        context: &[u8],
        message: &[u8],
        sig: &Signature,
    ) -> Result<(), BadSignature> {
        let mut buf = Vec::with_capacity(context.len() + message.len());
        buf.extend_from_slice(context);
        buf.extend_from_slice(message);
        self.verify_prefixed(&buf, sig)
    }

    /// [`IdentityPublicKey::verify`] of bytes that already begin with their context.
    pub fn verify_prefixed(&self, signed: &[u8], sig: &Signature) -> Result<(), BadSignature> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(signed, &sig).map_err(|_| BadSignature)
    }
}

/// One signature of a batch: the key, the signed bytes beginning with their context, and the
/// signature.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub key: &'a IdentityPublicKey,
    pub message: &'a [u8],
    pub signature: &'a Signature,
}

/// Checks many signatures at once; for each, whether it holds (DECISIONS D77).
///
/// Ed25519 batch verification (ed25519-dalek's `verify_batch`: one multi-scalar
/// multiplication for the whole batch, with coefficients drawn from a transcript of every
/// input) costs less than half of one [`IdentityPublicKey::verify`] per signature. What
/// `verify_strict` refuses besides a wrong signature is refused here first, for each
/// signature: a small-order key or `R`, and a non-canonical `S`. When the batch does not
/// hold, every signature is verified alone, strictly, to tell which fail.
pub fn verify_batch(items: &[Signed<'_>]) -> Vec<bool> {
    if let Some(all) = batch_holds(items)
        && all
    {
        return vec![true; items.len()];
    }
    items
        .iter()
        .map(|i| i.key.verify_prefixed(i.message, i.signature).is_ok())
        .collect()
}

/// Whether the batch equation holds for `items`; `None` when one of them is refused before
/// it (an empty batch, a small-order or undecodable key or `R`).
fn batch_holds(items: &[Signed<'_>]) -> Option<bool> {
    let mut keys: Vec<VerifyingKey> = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    for item in items {
        // Mail comes in runs from one signer: each key is decoded once per run.
        let key = match keys.last() {
            Some(last) if last.as_bytes() == &item.key.0 => *last,
            _ => VerifyingKey::from_bytes(&item.key.0).ok()?,
        };
        let sig = ed25519_dalek::Signature::from_bytes(&item.signature.0);
        // `R` decoded as a point only to refuse a small-order one, as `verify_strict` does.
        let r = VerifyingKey::from_bytes(sig.r_bytes()).ok()?;
        if key.is_weak() || r.is_weak() {
            return None;
        }
        keys.push(key);
        sigs.push(sig);
    }
    if items.is_empty() {
        return None;
    }
    let messages: Vec<&[u8]> = items.iter().map(|i| i.message).collect();
    // A non-canonical `S` fails the whole batch (ed25519-dalek refuses it).
    Some(ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok())
}

/// An Ed25519 signing key: a user's identity key or a domain key. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKeypair(SigningKey);

impl SigningKeypair {
    pub fn generate() -> Self {
        let seed = Zeroizing::new(random_bytes::<32>());
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn from_secret_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `context || message`; every context string ends in NUL so no two collide.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        let mut buf = Vec::with_capacity(context.len() + message.len());
        buf.extend_from_slice(context);
        buf.extend_from_slice(message);
        Signature(self.0.sign(&buf).to_bytes())
    }
}

impl fmt::Debug for SigningKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKeypair(public={}, secret=<redacted>)",
            self.public().to_base64()
        )
    }
}

/// An X25519 secret key that opens sealed content keys. `Debug` never shows it.
///
/// The public key is derived once: opening an envelope compares it with each recipient
/// entry, and a scalar multiplication per message was a tenth of the sync's work. The
/// scalar is kept as curve25519-dalek's, for the multiplication on the Edwards curve
/// ([`EncryptionKeypair::unseal`]).
#[derive(Clone)]
pub struct EncryptionKeypair {
    secret: crypto_box::SecretKey,
    scalar: Zeroizing<curve25519_dalek::Scalar>,
    public: EncryptionPublicKey,
}

impl EncryptionKeypair {
    fn from_secret(secret: crypto_box::SecretKey) -> Self {
        let public = EncryptionPublicKey(*secret.public_key().as_bytes());
        // crypto_box's own scalar: the clamped secret reduced modulo the group order.
        let clamped = Zeroizing::new(curve25519_dalek::scalar::clamp_integer(*Zeroizing::new(
            secret.to_bytes(),
        )));
        let scalar = Zeroizing::new(curve25519_dalek::Scalar::from_bytes_mod_order(*clamped));
        Self {
            secret,
            scalar,
            public,
        }
    }

    pub fn generate() -> Self {
        Self::from_secret(crypto_box::SecretKey::generate(&mut OsRng))
    }

    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self::from_secret(crypto_box::SecretKey::from_bytes(*bytes))
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub fn public(&self) -> EncryptionPublicKey {
        self.public
    }

    /// Opens a libsodium sealed box (`crypto_box_seal_open`: an ephemeral public key, then
    /// a box under the nonce BLAKE2b-192(ephemeral ‖ recipient)). The same steps as
    /// [`crypto_box::SecretKey::unseal`], which derives the recipient's public key again on
    /// every call: a quarter of the cost of opening an envelope.
    pub(crate) fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use blake2::Digest as _;
        use crypto_box::aead::{Aead as _, KeyInit as _};
        let (ephemeral, boxed) = sealed.split_first_chunk::<32>()?;
        let nonce = blake2::Blake2b::<crypto_box::aead::consts::U24>::new()
            .chain_update(ephemeral)
            .chain_update(self.public.0)
            .finalize();
        let Some(shared) = self.shared_secret(ephemeral) else {
            // Not a point of the curve (of its twist): crypto_box's own ladder decides.
            return crypto_box::SalsaBox::new(
                &crypto_box::PublicKey::from(*ephemeral),
                &self.secret,
            )
            .decrypt(&nonce, boxed)
            .ok();
        };
        // crypto_box's key derivation for XSalsa20-Poly1305: HSalsa20 of the shared secret.
        let key = Zeroizing::new(salsa20::hsalsa::<crypto_box::aead::consts::U10>(
            (&*shared).into(),
            &crypto_box::aead::generic_array::GenericArray::default(),
        ));
        crypto_secretbox::XSalsa20Poly1305::new(&key)
            .decrypt(&nonce, boxed)
            .ok()
    }

    /// The X25519 shared secret with `ephemeral` as crypto_box computes it (our scalar
    /// times the point), computed on the Edwards curve, where curve25519-dalek uses AVX2
    /// (39 µs against 53 µs for the Montgomery ladder here; DECISIONS D78). `None` when
    /// `ephemeral` is not the u-coordinate of a point of the curve.
    #[expect(clippy::op_ref, reason = "by reference: no copy of the secret scalar")]
    fn shared_secret(&self, ephemeral: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        // Either sign gives the same u-coordinate of the product.
        let point = curve25519_dalek::MontgomeryPoint(*ephemeral).to_edwards(0)?;
        let product = Zeroizing::new(&point * &*self.scalar);
        Some(Zeroizing::new(
            Zeroizing::new(product.to_montgomery()).to_bytes(),
        ))
    }
}

impl EncryptionPublicKey {
    /// Seals `plaintext` to this key (`crypto_box_seal`): anonymous, so the envelope
    /// signature is what binds it to a sender.
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        crypto_box::PublicKey::from(self.0)
            .seal(&mut OsRng, plaintext)
            .expect("sealing to a 32-byte public key cannot fail")
    }
}

impl fmt::Debug for EncryptionKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EncryptionKeypair(public={}, secret=<redacted>)",
            self.public().to_base64()
        )
    }
}

/// The bytes of a statement "key `second` goes with `address` and key `first`, since
/// `created`": `u16` length and address, the two keys, `u64` created (PROTOCOL.md §6, §6a).
pub(crate) fn key_statement(
    address: &Address,
    first: &[u8; 32],
    second: &[u8; 32],
    created: u64,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.str16(address.as_str())
        .raw(first)
        .raw(second)
        .u64(created);
    w.into_bytes()
}

/// Signature context of a key binding.
pub const KEY_BINDING_CONTEXT: &[u8] = b"letterme/v1/key-binding\0";

/// The identity key's statement "this encryption key is mine, since `created`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBinding {
    pub address: Address,
    pub identity_key: IdentityPublicKey,
    pub encryption_key: EncryptionPublicKey,
    /// Unix seconds.
    pub created: u64,
    pub signature: Signature,
}

impl KeyBinding {
    /// Canonical bytes the identity key signs (`docs/PROTOCOL.md` §Key binding).
    pub fn signed_bytes(
        address: &Address,
        identity_key: &IdentityPublicKey,
        encryption_key: &EncryptionPublicKey,
        created: u64,
    ) -> Vec<u8> {
        key_statement(
            address,
            identity_key.as_bytes(),
            encryption_key.as_bytes(),
            created,
        )
    }

    pub fn create(
        address: &Address,
        identity: &SigningKeypair,
        encryption_key: &EncryptionPublicKey,
        created: u64,
    ) -> Self {
        let identity_key = identity.public();
        let msg = Self::signed_bytes(address, &identity_key, encryption_key, created);
        Self {
            address: address.clone(),
            identity_key,
            encryption_key: *encryption_key,
            created,
            signature: identity.sign(KEY_BINDING_CONTEXT, &msg),
        }
    }

    pub fn verify(&self) -> Result<(), BadSignature> {
        let msg = Self::signed_bytes(
            &self.address,
            &self.identity_key,
            &self.encryption_key,
            self.created,
        );
        self.identity_key
            .verify(KEY_BINDING_CONTEXT, &msg, &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key binding's bytes, field by field as PROTOCOL.md §6 lays them out (the device
    /// statements share the layout): what every registration was signed over.
    #[test]
    fn a_key_binding_has_the_bytes_it_always_had() {
        let addr = Address::parse("a@x.test").unwrap();
        let (id, enc) = (IdentityPublicKey([5; 32]), EncryptionPublicKey([6; 32]));
        let mut want = vec![0, 8];
        want.extend(b"a@x.test");
        want.extend([5; 32]);
        want.extend([6; 32]);
        want.extend(77u64.to_be_bytes());
        assert_eq!(KeyBinding::signed_bytes(&addr, &id, &enc, 77), want);
    }

    #[test]
    fn binding_verifies_and_detects_tampering() {
        let addr = Address::parse("a@x.test").unwrap();
        let id = SigningKeypair::generate();
        let enc = EncryptionKeypair::generate();
        let b = KeyBinding::create(&addr, &id, &enc.public(), 10);
        b.verify().unwrap();
        let mut t = b.clone();
        t.encryption_key = EncryptionKeypair::generate().public();
        assert_eq!(t.verify(), Err(BadSignature));
        let mut t = b.clone();
        t.address = Address::parse("b@x.test").unwrap();
        assert_eq!(t.verify(), Err(BadSignature));
        let mut t = b;
        t.created += 1;
        assert_eq!(t.verify(), Err(BadSignature));
    }

    /// `unseal` is libsodium's `crypto_box_seal_open`: it opens what crypto_box seals and
    /// refuses exactly what crypto_box's own `unseal` refuses.
    #[test]
    fn unseal_agrees_with_crypto_box() {
        let me = EncryptionKeypair::generate();
        let other = EncryptionKeypair::generate();
        let sealed = me.public().seal(b"content key");
        assert_eq!(me.unseal(&sealed).as_deref(), Some(&b"content key"[..]));
        let mut cases = vec![sealed[..32].to_vec(), sealed[..40].to_vec(), vec![]];
        for i in [0, 31, 32, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            cases.push(bad);
        }
        for case in &cases {
            assert_eq!(me.unseal(case), me.secret.unseal(case).ok());
            assert_eq!(me.unseal(case), None);
        }
        assert_eq!(other.unseal(&sealed), None);
        assert_eq!(other.secret.unseal(&sealed).ok(), None);
    }

    /// The shared secret computed on the Edwards curve is crypto_box's for every kind of
    /// ephemeral key a sender can write: an honest one, one with a small-order component,
    /// a small-order point, a point of the twist (left to crypto_box), a non-canonical
    /// encoding. Each box is made with crypto_box's shared secret, so only the same
    /// secret opens it.
    #[test]
    fn unseal_computes_crypto_box_shared_secret_for_any_ephemeral_key() {
        use crypto_box::aead::{Aead as _, AeadCore as _};
        use curve25519_dalek::{MontgomeryPoint, constants::EIGHT_TORSION};
        let me = EncryptionKeypair::generate();
        let honest = EncryptionKeypair::generate().public().0;
        let honest_point = MontgomeryPoint(honest).to_edwards(0).unwrap();
        let mut ephemerals = vec![honest];
        for t in EIGHT_TORSION {
            ephemerals.push((honest_point + t).to_montgomery().to_bytes());
            ephemerals.push(t.to_montgomery().to_bytes());
        }
        let twist = (2u8..=255)
            .map(|u| [[u].as_slice(), &[0; 31]].concat().try_into().unwrap())
            .find(|u: &[u8; 32]| MontgomeryPoint(*u).to_edwards(0).is_none())
            .unwrap();
        ephemerals.push(twist);
        // The top bit set (ignored by X25519), and p + 1 for u = 1.
        let mut top = honest;
        top[31] |= 0x80;
        ephemerals.push(top);
        let mut p_plus_one = [0xff; 32];
        p_plus_one[0] = 0xee;
        p_plus_one[31] = 0x7f;
        ephemerals.push(p_plus_one);
        for e in ephemerals {
            let nonce = {
                use blake2::Digest as _;
                blake2::Blake2b::<crypto_box::aead::consts::U24>::new()
                    .chain_update(e)
                    .chain_update(me.public().0)
                    .finalize()
            };
            let boxed = crypto_box::SalsaBox::new(&crypto_box::PublicKey::from(e), &me.secret)
                .encrypt(&nonce, &b"content key"[..])
                .unwrap();
            let sealed = [e.as_slice(), &boxed].concat();
            assert_eq!(
                me.secret.unseal(&sealed).ok().as_deref(),
                Some(&b"content key"[..])
            );
            assert_eq!(
                me.unseal(&sealed).as_deref(),
                Some(&b"content key"[..]),
                "{e:?}"
            );
            // Not a nonce's worth of difference: another nonce is refused by both.
            let other = crypto_box::SalsaBox::generate_nonce(&mut OsRng);
            let wrong = crypto_box::SalsaBox::new(&crypto_box::PublicKey::from(e), &me.secret)
                .encrypt(&other, &b"content key"[..])
                .unwrap();
            assert_eq!(me.unseal(&[e.as_slice(), &wrong].concat()), None);
        }
    }

    /// A batch refuses what single strict verification refuses, whatever else is in the
    /// batch: a signature of another message, a signature by another key, a non-canonical
    /// `S`, a small-order `R` (also one the key's holder made to fit the equation), a forgery
    /// under a small-order key. (What only a key's holder can make with a torsion component
    /// may differ: DECISIONS D77.)
    #[test]
    fn a_batch_refuses_what_strict_verification_refuses() {
        let (a, b) = (SigningKeypair::generate(), SigningKeypair::generate());
        let messages: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let good: Vec<(IdentityPublicKey, Signature)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let k = if i % 3 == 0 { &b } else { &a };
                (k.public(), k.sign(b"", m))
            })
            .collect();
        let check = |cases: &[(IdentityPublicKey, Signature)]| {
            let items: Vec<Signed<'_>> = cases
                .iter()
                .zip(&messages)
                .map(|((key, signature), message)| Signed {
                    key,
                    message,
                    signature,
                })
                .collect();
            let strict: Vec<bool> = items
                .iter()
                .map(|i| i.key.verify(b"", i.message, i.signature).is_ok())
                .collect();
            assert_eq!(verify_batch(&items), strict);
            strict
        };
        assert_eq!(check(&good), vec![true; 12]);
        // The identity point: a small-order `R`, and a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let s_plus_l = {
            // S + ℓ: the same scalar, not canonical.
            let l: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut sig = good[4].1.0;
            let mut carry = 0u16;
            for i in 0..32 {
                let sum = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
                sig[32 + i] = sum as u8;
                carry = sum >> 8;
            }
            Signature(sig)
        };
        let mut small_r = good[5].1.0;
        small_r[..32].copy_from_slice(&identity);
        // With the identity as key, `R` the identity and `S` zero satisfy the equation for
        // any message: the forgery a weak key allows.
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        // The key's holder signs with `R` the identity: `S = k·a` fits the equation, and
        // only the refusal of a small-order `R` stops it.
        let holder = SigningKeypair::from_secret_bytes(&[9; 32]);
        let fitted = {
            use curve25519_dalek::Scalar;
            use sha2::{Digest as _, Sha512};
            let mut a: [u8; 32] = Sha512::digest([9u8; 32])[..32].try_into().unwrap();
            a[0] &= 0b1111_1000;
            a[31] &= 0b0111_1111;
            a[31] |= 0b0100_0000;
            let k: [u8; 64] = Sha512::new()
                .chain_update(identity)
                .chain_update(holder.public().0)
                .chain_update(&messages[6])
                .finalize()
                .into();
            let s = Scalar::from_bytes_mod_order_wide(&k) * Scalar::from_bytes_mod_order(a);
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&identity);
            sig[32..].copy_from_slice(s.as_bytes());
            Signature(sig)
        };
        let spoilt = [
            (6, (holder.public(), fitted)),
            (1, (good[1].0, good[2].1)),
            (2, (b.public(), good[2].1)),
            (4, (good[4].0, s_plus_l)),
            (5, (good[5].0, Signature(small_r))),
            (7, (IdentityPublicKey(identity), Signature(forged))),
        ];
        for (i, case) in spoilt {
            let mut cases = good.clone();
            cases[i] = case;
            let held = check(&cases);
            assert_eq!(
                held.iter().filter(|h| !**h).count(),
                1,
                "case {i}: {held:?}"
            );
        }
        assert!(verify_batch(&[]).is_empty());
    }

    #[test]
    fn debug_redacts_secrets() {
        let id = SigningKeypair::generate();
        let secret = b64::encode(&*id.secret_bytes());
        assert!(!format!("{id:?}").contains(&secret));
        let enc = EncryptionKeypair::generate();
        let secret = b64::encode(&*enc.secret_bytes());
        assert!(!format!("{enc:?}").contains(&secret));
    }
}
