//! Discovery (DESIGN.md §6): the `_mailx.<domain>` TXT record, and the server document
//! served at `<endpoint>/.well-known/mailx-server`, signed by the domain key, which must
//! agree with the record. The record is this protocol's own tag list (`v=mailx1; k=…;
//! e=…; fp=…`), parsed here with named limits; nothing else reads it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::Writer;
use crate::keys::{IdentityPublicKey, Signature, SigningKeypair};

/// Signature context of the server document.
pub const DOCUMENT_CONTEXT: &[u8] = b"letterme/v1/server-document\0";
/// The record version this implementation speaks.
pub const RECORD_VERSION: &str = "mailx1";
/// Longest TXT record accepted (after joining its strings).
pub const MAX_RECORD: usize = 1024;
/// Longest endpoint URL accepted.
pub const MAX_ENDPOINT: usize = 512;
/// Clock skew tolerated for a document's creation time, seconds.
pub const MAX_SKEW: u64 = 300;

/// Why a record or document is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("the _mailx record is malformed: {0}")]
    Malformed(String),
    #[error("the _mailx record has version {0:?}; this client speaks {RECORD_VERSION}")]
    Version(String),
    #[error("the server document is for {found}, not {expected}")]
    WrongDomain { expected: String, found: String },
    #[error("the server document's {0} does not match the _mailx record in DNS")]
    Mismatch(&'static str),
    #[error("the server document is not signed by the domain key published in DNS")]
    BadSignature,
    #[error("the server document expired or is not yet valid")]
    Expired,
}

/// The `_mailx.<domain>` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailxRecord {
    /// `k=`: the domain key, base64.
    pub domain_key: IdentityPublicKey,
    /// `e=`: the HTTPS endpoint of the domain's server.
    pub endpoint: String,
    /// `fp=`: base64 SHA-256 of the server's TLS public key (SPKI); absent when the server
    /// uses a CA-issued certificate.
    pub tls_fingerprint: Option<String>,
}

impl MailxRecord {
    /// Parses `v=mailx1; k=<base64>; e=<url>; fp=<base64>`. `v` comes first; unknown tags
    /// are ignored so later versions can add some; a repeated tag is an error.
    pub fn parse(txt: &str) -> Result<Self, DiscoveryError> {
        let bad = |why: &str| DiscoveryError::Malformed(why.to_owned());
        if txt.len() > MAX_RECORD {
            return Err(bad("longer than 1024 bytes"));
        }
        let mut tags: Vec<(&str, &str)> = Vec::new();
        for part in txt.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad("a tag without '='"))?;
            let (name, value) = (name.trim(), value.trim());
            if tags.iter().any(|(n, _)| *n == name) {
                return Err(bad(&format!("tag {name} appears twice")));
            }
            tags.push((name, value));
        }
        match tags.first() {
            Some(("v", v)) if *v == RECORD_VERSION => {}
            Some(("v", v)) => return Err(DiscoveryError::Version((*v).to_owned())),
            _ => return Err(bad("it does not start with v=mailx1")),
        }
        let get = |name: &str| tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let domain_key = get("k")
            .ok_or_else(|| bad("no k= (domain key)"))
            .and_then(|k| {
                IdentityPublicKey::from_base64(k)
                    .ok_or_else(|| bad("k= is not a base64 Ed25519 key"))
            })?;
        let endpoint = get("e").ok_or_else(|| bad("no e= (endpoint)"))?;
        // Federation runs over TLS only: a plain http:// endpoint would let anyone on the
        // path read and change what peers say (and point the server at internal services).
        if !endpoint.starts_with("https://") || endpoint.len() > MAX_ENDPOINT {
            return Err(bad("e= is not an https:// URL of at most 512 bytes"));
        }
        let tls_fingerprint = match get("fp") {
            None | Some("") => None,
            Some(fp) if crate::b64::decode_array::<32>(fp).is_some() => Some(fp.to_owned()),
            Some(_) => return Err(bad("fp= is not a base64 SHA-256 digest")),
        };
        Ok(Self {
            domain_key,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            tls_fingerprint,
        })
    }

    /// The TXT value to publish.
    pub fn to_txt(&self) -> String {
        let mut s = format!(
            "v={RECORD_VERSION}; k={}; e={}",
            self.domain_key.to_base64(),
            self.endpoint
        );
        if let Some(fp) = &self.tls_fingerprint {
            s.push_str("; fp=");
            s.push_str(fp);
        }
        s
    }
}

/// The server document: what the domain's server says about itself, signed by its domain
/// key. It must agree with the `_mailx` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDocument {
    pub domain: String,
    pub domain_key: IdentityPublicKey,
    pub endpoint: String,
    pub tls_fingerprint: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; clients cache the document at most until then.
    pub expires: u64,
    pub signature: Signature,
}

impl ServerDocument {
    /// Signs a document valid from `created` for `ttl` seconds.
    pub fn sign(
        domain: &str,
        key: &SigningKeypair,
        endpoint: &str,
        tls_fingerprint: Option<String>,
        created: u64,
        ttl: u64,
    ) -> Self {
        let mut doc = Self {
            domain: domain.to_ascii_lowercase(),
            domain_key: key.public(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            tls_fingerprint,
            created,
            expires: created.saturating_add(ttl),
            signature: Signature([0; 64]),
        };
        doc.signature = key.sign(DOCUMENT_CONTEXT, &doc.signed_bytes());
        doc
    }

    /// Canonical bytes the domain key signs (`docs/PROTOCOL.md`, discovery).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.str16(&self.domain)
            .raw(self.domain_key.as_bytes())
            .str16(&self.endpoint)
            .str16(self.tls_fingerprint.as_deref().unwrap_or_default())
            .u64(self.created)
            .u64(self.expires);
        w.into_bytes()
    }

    /// Checks the document against the domain asked for and its `_mailx` record, at `now`.
    pub fn verify(
        &self,
        domain: &str,
        record: &MailxRecord,
        now: u64,
    ) -> Result<(), DiscoveryError> {
        if !self.domain.eq_ignore_ascii_case(domain) {
            return Err(DiscoveryError::WrongDomain {
                expected: domain.to_owned(),
                found: self.domain.clone(),
            });
        }
        if self.domain_key != record.domain_key {
            return Err(DiscoveryError::Mismatch("domain key"));
        }
        record
            .domain_key
            .verify(DOCUMENT_CONTEXT, &self.signed_bytes(), &self.signature)
            .map_err(|_| DiscoveryError::BadSignature)?;
        if self.endpoint != record.endpoint {
            return Err(DiscoveryError::Mismatch("endpoint"));
        }
        if self.tls_fingerprint != record.tls_fingerprint {
            return Err(DiscoveryError::Mismatch("TLS fingerprint"));
        }
        if now >= self.expires || self.created > now.saturating_add(MAX_SKEW) {
            return Err(DiscoveryError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (SigningKeypair, MailxRecord) {
        let key = SigningKeypair::generate();
        let record = MailxRecord {
            domain_key: key.public(),
            endpoint: "https://mail.b.test:8443".into(),
            tls_fingerprint: Some(crate::b64::encode(&[7u8; 32])),
        };
        (key, record)
    }

    #[test]
    fn records_round_trip_and_ignore_unknown_tags() {
        let (_, record) = fixture();
        assert_eq!(MailxRecord::parse(&record.to_txt()).unwrap(), record);
        let spaced = format!(
            "v=mailx1 ;k={} ; e=https://mail.b.test:8443/ ;x=future; fp=",
            record.domain_key.to_base64()
        );
        let parsed = MailxRecord::parse(&spaced).unwrap();
        assert_eq!(parsed.endpoint, "https://mail.b.test:8443");
        assert_eq!(parsed.tls_fingerprint, None);
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let (_, record) = fixture();
        let k = record.domain_key.to_base64();
        for (txt, why) in [
            (format!("k={k}; v=mailx1; e=https://x"), "start with v"),
            ("v=mailx1; e=https://x".to_owned(), "no k="),
            (
                "v=mailx1; k=AAAA; e=https://x".to_owned(),
                "not a base64 Ed25519",
            ),
            (format!("v=mailx1; k={k}"), "no e="),
            (format!("v=mailx1; k={k}; e=ftp://x"), "https://"),
            (
                format!("v=mailx1; k={k}; e=http://127.0.0.1:80"),
                "https://",
            ),
            (format!("v=mailx1; k={k}; e=https://x; fp=nope"), "fp="),
            (format!("v=mailx1; k={k}; k={k}; e=https://x"), "twice"),
            (format!("v=mailx1; k={k}; e=https://x; junk"), "without '='"),
            ("x".repeat(MAX_RECORD + 1), "longer"),
        ] {
            let err = MailxRecord::parse(&txt).unwrap_err().to_string();
            assert!(err.contains(why), "{txt}: {err}");
        }
        assert_eq!(
            MailxRecord::parse(&format!("v=mailx2; k={k}; e=https://x")),
            Err(DiscoveryError::Version("mailx2".into()))
        );
    }

    #[test]
    fn a_document_verifies_only_against_its_own_record() {
        let (key, record) = fixture();
        let doc = ServerDocument::sign(
            "B.test",
            &key,
            "https://mail.b.test:8443/",
            record.tls_fingerprint.clone(),
            1_000,
            3_600,
        );
        assert_eq!(doc.verify("b.test", &record, 1_100), Ok(()));
        assert!(matches!(
            doc.verify("c.test", &record, 1_100),
            Err(DiscoveryError::WrongDomain { .. })
        ));
        assert_eq!(
            doc.verify("b.test", &record, 4_600),
            Err(DiscoveryError::Expired)
        );
        assert_eq!(
            doc.verify("b.test", &record, 1_000 - MAX_SKEW - 1),
            Err(DiscoveryError::Expired)
        );
        // DNS now names another key: refused, not trusted silently.
        let (_, other) = fixture();
        assert_eq!(
            doc.verify("b.test", &other, 1_100),
            Err(DiscoveryError::Mismatch("domain key"))
        );
        // A document altered after signing.
        let mut moved = doc.clone();
        moved.endpoint = "https://evil.test".into();
        assert_eq!(
            moved.verify("b.test", &record, 1_100),
            Err(DiscoveryError::BadSignature)
        );
        // A validly signed document that disagrees with DNS.
        let elsewhere = ServerDocument::sign(
            "b.test",
            &key,
            "https://other.b.test",
            record.tls_fingerprint.clone(),
            1_000,
            3_600,
        );
        assert_eq!(
            elsewhere.verify("b.test", &record, 1_100),
            Err(DiscoveryError::Mismatch("endpoint"))
        );
        let no_fp = ServerDocument::sign(
            "b.test",
            &key,
            "https://mail.b.test:8443",
            None,
            1_000,
            3_600,
        );
        assert_eq!(
            no_fp.verify("b.test", &record, 1_100),
            Err(DiscoveryError::Mismatch("TLS fingerprint"))
        );
    }
}
