//! DKIM signatures for outbound mail: Ed25519-SHA256 (RFC 8463) and RSA-SHA256
//! (RFC 6376), both by mail-auth, so receivers that know only RSA still verify one.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use letterme_server::outbound::{MailKeys, SELECTOR_ED25519, SELECTOR_RSA};

/// Header fields signed when present (RFC 6376 §5.4.1 recommends these).
pub const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Auto-Submitted",
];

/// Signs as one domain with both keys.
pub struct Signer {
    domain: String,
    ed: DkimSigner<Ed25519Key, Done>,
    rsa: DkimSigner<RsaKey<Sha256>, Done>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.domain)
    }
}

/// A DKIM key that does not load.
#[derive(Debug, thiserror::Error)]
#[error("the DKIM {which} key does not load: {reason}")]
pub struct KeyError {
    which: &'static str,
    reason: String,
}

/// A message that cannot be signed (no From, unparsable header).
#[derive(Debug, thiserror::Error)]
#[error("cannot DKIM-sign the message: {0}")]
pub struct SignError(String);

impl Signer {
    pub fn new(domain: &str, keys: &MailKeys) -> Result<Self, KeyError> {
        let ed = Ed25519Key::from_seed_and_public_key(&keys.ed25519_seed, &keys.ed25519_public)
            .map_err(|e| KeyError {
                which: "Ed25519",
                reason: e.to_string(),
            })?;
        let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            keys.rsa_pkcs8.as_slice(),
        )))
        .map_err(|e| KeyError {
            which: "RSA",
            reason: e.to_string(),
        })?;
        // Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4) survives the re-folding and
        // whitespace changes of relays on the way.
        let ed = DkimSigner::from_key(ed)
            .domain(domain)
            .selector(SELECTOR_ED25519)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let rsa = DkimSigner::from_key(rsa)
            .domain(domain)
            .selector(SELECTOR_RSA)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Self {
            domain: domain.to_owned(),
            ed,
            rsa,
        })
    }

    /// `raw` with an RSA and an Ed25519 DKIM-Signature field prepended.
    pub fn sign(&self, raw: &[u8]) -> Result<Vec<u8>, SignError> {
        let rsa = self.rsa.sign(raw).map_err(|e| SignError(e.to_string()))?;
        let ed = self.ed.sign(raw).map_err(|e| SignError(e.to_string()))?;
        let mut out = (rsa.to_header() + &ed.to_header()).into_bytes();
        out.extend_from_slice(raw);
        Ok(out)
    }
}
