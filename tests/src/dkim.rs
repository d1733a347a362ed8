//! DKIM signing for test messages (mail-auth's signer), RSA-2048 and Ed25519, and the
//! `_domainkey` TXT records that publish the keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// A 2048-bit RSA key made with `openssl genrsa -traditional 2048` (ring cannot generate RSA keys).
pub const RSA_PEM: &[u8] = include_bytes!("../fixtures/dkim-rsa-2048.pem");

const SIGNED_HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

/// A domain's signing keys and their DNS records.
pub struct DkimKeys {
    pub domain: String,
    rsa_pem: Vec<u8>,
    ed_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DkimKeys({})", self.domain)
    }
}

impl DkimKeys {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            rsa_pem: RSA_PEM.to_vec(),
            ed_pkcs8: Ed25519Key::generate_pkcs8().expect("ed25519 key"),
        }
    }

    fn rsa(&self) -> RsaKey<Sha256> {
        RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(&self.rsa_pem).expect("pem"))
            .expect("rsa key")
    }

    fn ed(&self) -> Ed25519Key {
        Ed25519Key::from_pkcs8_der(&self.ed_pkcs8).expect("ed25519 key")
    }

    /// `(owner, value)` TXT records for selectors `rsa` and `ed`.
    pub fn records(&self) -> Vec<(String, String)> {
        vec![
            (
                format!("rsa._domainkey.{}", self.domain),
                format!(
                    "v=DKIM1; k=rsa; p={}",
                    STANDARD.encode(self.rsa().public_key())
                ),
            ),
            (
                format!("ed._domainkey.{}", self.domain),
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    STANDARD.encode(self.ed().public_key())
                ),
            ),
        ]
    }

    /// Prepends an RSA and an Ed25519 DKIM-Signature to `raw`.
    pub fn sign(&self, raw: &[u8]) -> Vec<u8> {
        let rsa = DkimSigner::from_key(self.rsa())
            .domain(&self.domain)
            .selector("rsa")
            .headers(SIGNED_HEADERS)
            .sign(raw)
            .expect("rsa signature");
        let ed = DkimSigner::from_key(self.ed())
            .domain(&self.domain)
            .selector("ed")
            .headers(SIGNED_HEADERS)
            .sign(raw)
            .expect("ed25519 signature");
        let mut out = (rsa.to_header() + &ed.to_header()).into_bytes();
        out.extend_from_slice(raw);
        out
    }
}
