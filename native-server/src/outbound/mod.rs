//! Mail for addresses outside letter.me (DESIGN.md §3, §4): the durable SMTP queue, the
//! keys it signs with, and the state of the API that fills it (`api::outbound`). Delivery itself — MX lookup, SMTP,
//! DKIM signing — is the `letterme-smtp-out` adapter's; this side only stores (in `store::smtp`) and hands out work.
//!
//! A relayed message is the one copy that leaves end-to-end encryption, and only on the
//! user's explicit request. Even so, it never rests on disk in plaintext: it is sealed
//! under the queue key (itself sealed under the key-encryption key, like the domain key)
//! before the insert, and deleted when delivered or given up.

use std::sync::Arc;

use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::auth::RateLimiter;
use crate::config::OutboundConfig;

/// DKIM selector of the Ed25519 key (RFC 8463).
pub const SELECTOR_ED25519: &str = "ed1";
/// DKIM selector of the RSA-2048 key (RFC 6376 §3.3.1).
pub const SELECTOR_RSA: &str = "rsa1";
/// Bits of the RSA DKIM key.
pub const RSA_BITS: usize = 2048;

const QUEUE_ROW_AAD: &[u8] = b"letterme/v2/outbound-queue\0";
/// What rows queued before the binding carry; opened, never written.
const QUEUE_AAD: &[u8] = b"letterme/v1/outbound-queue\0";

/// The keys outbound mail is signed and queued with.
pub struct MailKeys {
    /// Ed25519 seed and raw public key.
    pub ed25519_seed: Zeroizing<Vec<u8>>,
    pub ed25519_public: Vec<u8>,
    /// RSA private key (PKCS#8 DER) and public key (SubjectPublicKeyInfo DER).
    pub rsa_pkcs8: Zeroizing<Vec<u8>>,
    pub rsa_public: Vec<u8>,
    pub queue: QueueKey,
}

impl std::fmt::Debug for MailKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailKeys(<redacted>)")
    }
}

/// The symmetric key relayed messages are sealed under while they wait in the queue.
#[derive(Clone)]
pub struct QueueKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueKey(<redacted>)")
    }
}

impl QueueKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }

    /// XChaCha20-Poly1305 under a random nonce: `nonce || ciphertext`, bound to the
    /// queue row's sender, time and size, so it opens in no other row (issue 15.9).
    pub fn seal(&self, plain: &[u8], sender: &str, queued_at: u64) -> Vec<u8> {
        let aad = Self::row(sender, queued_at, plain.len() as u64);
        crate::secrets::seal(&self.0, &aad, plain)
    }

    /// Opens what [`QueueKey::seal`] sealed for this row (or, queued before the binding,
    /// for any).
    pub fn open(
        &self,
        sealed: &[u8],
        sender: &str,
        queued_at: u64,
        size: u64,
    ) -> Option<Zeroizing<Vec<u8>>> {
        crate::secrets::open(&self.0, &Self::row(sender, queued_at, size), sealed)
            .or_else(|| crate::secrets::open(&self.0, QUEUE_AAD, sealed))
    }

    fn row(sender: &str, queued_at: u64, size: u64) -> Vec<u8> {
        crate::secrets::bound(
            QUEUE_ROW_AAD,
            &[
                sender.as_bytes(),
                &queued_at.to_be_bytes(),
                &size.to_be_bytes(),
            ],
        )
    }
}

/// A new RSA DKIM key: (PKCS#8 DER private key, SubjectPublicKeyInfo DER public key).
/// ring cannot generate RSA keys, so the RustCrypto `rsa` crate does (only this).
pub fn generate_rsa() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), String> {
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
        .map_err(|e| format!("cannot generate the RSA DKIM key: {e}"))?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| format!("cannot encode the RSA DKIM key: {e}"))?;
    let public = rsa::RsaPublicKey::from(&private)
        .to_public_key_der()
        .map_err(|e| format!("cannot encode the RSA DKIM public key: {e}"))?;
    Ok((Zeroizing::new(der.as_bytes().to_vec()), public.into_vec()))
}

/// The MTA-STS policy this server serves at `/.well-known/mta-sts.txt` (RFC 8461 §3.2),
/// when `[outbound] mta_sts` is set.
pub fn mta_sts_policy(config: &crate::config::Config) -> Option<String> {
    let mode = config.outbound.mta_sts.as_deref()?;
    Some(format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {}\r\nmax_age: 604800\r\n",
        config.mail_hostname()
    ))
}

/// What the API needs for outbound mail.
pub struct OutboundState {
    pub queue_key: QueueKey,
    pub user_limit: RateLimiter<String>,
    pub domain_limit: RateLimiter<String>,
    /// Wakes the SMTP worker when something is queued.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for OutboundState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundState").finish_non_exhaustive()
    }
}

impl OutboundState {
    pub fn new(config: &OutboundConfig, keys: &MailKeys, wake: Arc<Notify>) -> Self {
        // Limits are configured per minute; the buckets refill per second.
        let per_second = |n: u32| n.div_ceil(60).max(1);
        Self {
            queue_key: keys.queue.clone(),
            user_limit: RateLimiter::with_rate(
                f64::from(config.user_per_minute) / 60.0,
                config.user_burst.max(per_second(config.user_per_minute)),
                100_000,
            ),
            domain_limit: RateLimiter::with_rate(
                f64::from(config.domain_per_minute) / 60.0,
                config
                    .domain_burst
                    .max(per_second(config.domain_per_minute)),
                100_000,
            ),
            wake,
        }
    }
}

#[cfg(test)]
mod tests {
    use letterme_protocol::keys::random_bytes;

    use super::*;

    #[test]
    fn queue_key_round_trips_and_detects_tampering() {
        let k = QueueKey::new(random_bytes());
        let msg = b"Subject: secret\r\n\r\nbody";
        let n = msg.len() as u64;
        let sealed = k.seal(msg, "a@x.test", 100);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open(&sealed, "a@x.test", 100, n).unwrap().as_slice(), msg);
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(k.open(&bad, "a@x.test", 100, n).is_none());
        assert!(
            QueueKey::new(random_bytes())
                .open(&sealed, "a@x.test", 100, n)
                .is_none()
        );
        // Copied into another sender's row, or another message's, it does not open.
        assert!(k.open(&sealed, "b@x.test", 100, n).is_none());
        assert!(k.open(&sealed, "a@x.test", 101, n).is_none());
    }
}
