//! Server-to-server messages (DESIGN.md §6): the signature over a request and its
//! response, the batch of envelopes a delivery carries, and the per-recipient statuses the
//! receiver answers with.
//!
//! Request signatures follow RFC 9421's idea — the signer covers the method, the target,
//! a content digest (RFC 9530), who sends, for whom, a validity window and a nonce — with
//! this protocol's own canonical bytes instead of the HTTP signature base, so there is one
//! binary encoding for everything the domain key signs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::api::ErrorCode;
use crate::b64;
use crate::codec::{Reader, Writer};
use crate::keys::{IdentityPublicKey, Signature, SigningKeypair};

/// Signature context of a request.
pub const REQUEST_CONTEXT: &[u8] = b"letterme/v1/federation-request\0";
/// Signature context of a response.
pub const RESPONSE_CONTEXT: &[u8] = b"letterme/v1/federation-response\0";
/// Longest validity window a request may claim, seconds.
pub const MAX_REQUEST_LIFETIME: u64 = 300;
/// Clock skew tolerated between servers, seconds.
pub const MAX_SKEW: u64 = 60;
/// Envelopes in one delivery batch at most.
pub const MAX_BATCH: usize = 1000;
/// Longest method, target or domain in a signature.
pub const MAX_FIELD: usize = 2048;

/// The headers carrying a signature.
pub mod header {
    pub const ORIGIN: &str = "mailx-origin";
    pub const DESTINATION: &str = "mailx-destination";
    pub const CREATED: &str = "mailx-created";
    pub const EXPIRES: &str = "mailx-expires";
    pub const NONCE: &str = "mailx-nonce";
    pub const KEY: &str = "mailx-key";
    pub const SIGNATURE: &str = "mailx-signature";
    /// RFC 9530 `Content-Digest: sha-256=:<base64>:`.
    pub const CONTENT_DIGEST: &str = "content-digest";
}

/// Why a request or response signature is refused. The codes are what a 401 carries.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("the {0} header is missing or malformed")]
    Malformed(&'static str),
    #[error("the request is for {found}, not this server ({expected})")]
    WrongDestination { expected: String, found: String },
    #[error("the request has expired or is not yet valid")]
    Expired,
    #[error("the request's nonce was already used")]
    Replayed,
    #[error("the signing key is not a key {0} publishes in DNS")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the content digest does not match the body")]
    DigestMismatch,
}

impl SignatureError {
    /// The stable code of a 401 answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::MalformedSignature,
            Self::WrongDestination { .. } => ErrorCode::WrongDestination,
            Self::Expired => ErrorCode::Expired,
            Self::Replayed => ErrorCode::Replayed,
            Self::UnknownKey(_) => ErrorCode::UnknownOriginKey,
            Self::BadSignature => ErrorCode::BadSignature,
            Self::DigestMismatch => ErrorCode::DigestMismatch,
        }
    }
}

/// SHA-256 of a body.
pub fn digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// `sha-256=:<base64>:` (RFC 9530 §2).
pub fn format_digest(d: &[u8; 32]) -> String {
    format!("sha-256=:{}:", b64::encode(d))
}

/// Reads the `sha-256` member of a Content-Digest field; other algorithms are ignored.
pub fn parse_digest(field: &str) -> Option<[u8; 32]> {
    field.split(',').find_map(|member| {
        let v = member.trim().strip_prefix("sha-256=:")?.strip_suffix(':')?;
        b64::decode_array(v)
    })
}

/// What a request's signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub digest: [u8; 32],
    pub origin: String,
    pub destination: String,
    pub created: u64,
    pub expires: u64,
    pub nonce: [u8; 16],
    /// The key that signed: one of the origin's published domain keys.
    pub key: IdentityPublicKey,
    pub signature: Signature,
}

impl RequestSignature {
    /// Signs a request from `origin` to `destination`, valid for `lifetime` seconds.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &SigningKeypair,
        method: &str,
        target: &str,
        body: &[u8],
        origin: &str,
        destination: &str,
        now: u64,
        lifetime: u64,
    ) -> Self {
        let mut s = Self {
            method: method.to_ascii_uppercase(),
            target: target.to_owned(),
            digest: digest(body),
            origin: origin.to_ascii_lowercase(),
            destination: destination.to_ascii_lowercase(),
            created: now,
            expires: now + lifetime.min(MAX_REQUEST_LIFETIME),
            nonce: crate::keys::random_bytes(),
            key: key.public(),
            signature: Signature([0; 64]),
        };
        s.signature = key.sign(REQUEST_CONTEXT, &s.signed_bytes());
        s
    }

    /// The canonical bytes signed (`docs/PROTOCOL.md` §17).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160 + self.target.len());
        w.str16(&self.method)
            .str16(&self.target)
            .raw(&self.digest)
            .str16(&self.origin)
            .str16(&self.destination)
            .u64(self.created)
            .u64(self.expires)
            .raw(&self.nonce)
            .raw(self.key.as_bytes());
        w.into_bytes()
    }

    /// The header fields to send.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::ORIGIN, self.origin.clone()),
            (header::DESTINATION, self.destination.clone()),
            (header::CREATED, self.created.to_string()),
            (header::EXPIRES, self.expires.to_string()),
            (header::NONCE, b64::encode(&self.nonce)),
            (header::KEY, self.key.to_base64()),
            (header::SIGNATURE, self.signature.to_base64()),
            (header::CONTENT_DIGEST, format_digest(&self.digest)),
        ]
    }

    /// Reads the signature of a received request; `get` returns a header's value.
    pub fn from_headers(
        method: &str,
        target: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SignatureError> {
        let text = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty() && v.len() <= MAX_FIELD)
                .ok_or(SignatureError::Malformed(name))
        };
        let number = |name: &'static str| {
            text(name)?
                .parse::<u64>()
                .map_err(|_| SignatureError::Malformed(name))
        };
        if method.len() > MAX_FIELD || target.len() > MAX_FIELD {
            return Err(SignatureError::Malformed("request target"));
        }
        Ok(Self {
            method: method.to_ascii_uppercase(),
            target: target.to_owned(),
            digest: parse_digest(&text(header::CONTENT_DIGEST)?)
                .ok_or(SignatureError::Malformed(header::CONTENT_DIGEST))?,
            origin: text(header::ORIGIN)?.to_ascii_lowercase(),
            destination: text(header::DESTINATION)?.to_ascii_lowercase(),
            created: number(header::CREATED)?,
            expires: number(header::EXPIRES)?,
            nonce: b64::decode_array(&text(header::NONCE)?)
                .ok_or(SignatureError::Malformed(header::NONCE))?,
            key: IdentityPublicKey::from_base64(&text(header::KEY)?)
                .ok_or(SignatureError::Malformed(header::KEY))?,
            signature: Signature::from_base64(&text(header::SIGNATURE)?)
                .ok_or(SignatureError::Malformed(header::SIGNATURE))?,
        })
    }

    /// Checks everything but the nonce's freshness (the receiver's memory) and which keys
    /// the origin publishes (DNS): destination, time window, signature, body digest.
    pub fn verify(&self, me: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
        self.verify_headers(me, now)?;
        self.verify_digest(&digest(body))
    }

    /// What a receiver checks before it reads a body: destination, time window, and the
    /// signature over the digest the sender claims. The body is then streamed through
    /// [`digest`] and checked with [`RequestSignature::verify_digest`].
    pub fn verify_headers(&self, me: &str, now: u64) -> Result<(), SignatureError> {
        if !self.destination.eq_ignore_ascii_case(me) {
            return Err(SignatureError::WrongDestination {
                expected: me.to_owned(),
                found: self.destination.clone(),
            });
        }
        if self.expires < now
            || self.created > now + MAX_SKEW
            || self.expires < self.created
            || self.expires - self.created > MAX_REQUEST_LIFETIME
        {
            return Err(SignatureError::Expired);
        }
        self.key
            .verify(REQUEST_CONTEXT, &self.signed_bytes(), &self.signature)
            .map_err(|_| SignatureError::BadSignature)
    }

    /// Checks the digest of the body received against the one signed.
    pub fn verify_digest(&self, body_digest: &[u8; 32]) -> Result<(), SignatureError> {
        if *body_digest == self.digest {
            Ok(())
        } else {
            Err(SignatureError::DigestMismatch)
        }
    }
}

/// What a response's signature covers: it answers exactly one request (its nonce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSignature {
    pub status: u16,
    pub request_nonce: [u8; 16],
    pub digest: [u8; 32],
    /// The responder.
    pub origin: String,
    pub created: u64,
    pub key: IdentityPublicKey,
    pub signature: Signature,
}

impl ResponseSignature {
    pub fn sign(
        key: &SigningKeypair,
        status: u16,
        request_nonce: [u8; 16],
        body: &[u8],
        origin: &str,
        now: u64,
    ) -> Self {
        let mut s = Self {
            status,
            request_nonce,
            digest: digest(body),
            origin: origin.to_ascii_lowercase(),
            created: now,
            key: key.public(),
            signature: Signature([0; 64]),
        };
        s.signature = key.sign(RESPONSE_CONTEXT, &s.signed_bytes());
        s
    }

    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.u16(self.status)
            .raw(&self.request_nonce)
            .raw(&self.digest)
            .str16(&self.origin)
            .u64(self.created)
            .raw(self.key.as_bytes());
        w.into_bytes()
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::ORIGIN, self.origin.clone()),
            (header::CREATED, self.created.to_string()),
            (header::NONCE, b64::encode(&self.request_nonce)),
            (header::KEY, self.key.to_base64()),
            (header::SIGNATURE, self.signature.to_base64()),
            (header::CONTENT_DIGEST, format_digest(&self.digest)),
        ]
    }

    /// Checks a response to the request with `nonce`, from `peer`, signed by one of `keys`.
    pub fn verify_response(
        status: u16,
        body: &[u8],
        nonce: [u8; 16],
        peer: &str,
        keys: &[IdentityPublicKey],
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SignatureError> {
        let text = |name: &'static str| get(name).ok_or(SignatureError::Malformed(name));
        let s = Self {
            status,
            request_nonce: nonce,
            digest: parse_digest(&text(header::CONTENT_DIGEST)?)
                .ok_or(SignatureError::Malformed(header::CONTENT_DIGEST))?,
            origin: text(header::ORIGIN)?.to_ascii_lowercase(),
            created: text(header::CREATED)?
                .parse()
                .map_err(|_| SignatureError::Malformed(header::CREATED))?,
            key: IdentityPublicKey::from_base64(&text(header::KEY)?)
                .ok_or(SignatureError::Malformed(header::KEY))?,
            signature: Signature::from_base64(&text(header::SIGNATURE)?)
                .ok_or(SignatureError::Malformed(header::SIGNATURE))?,
        };
        if !s.origin.eq_ignore_ascii_case(peer) {
            return Err(SignatureError::WrongDestination {
                expected: peer.to_owned(),
                found: s.origin,
            });
        }
        if text(header::NONCE)? != b64::encode(&nonce) {
            return Err(SignatureError::Replayed);
        }
        if digest(body) != s.digest {
            return Err(SignatureError::DigestMismatch);
        }
        if !keys.contains(&s.key) {
            return Err(SignatureError::UnknownKey(peer.to_owned()));
        }
        s.key
            .verify(RESPONSE_CONTEXT, &s.signed_bytes(), &s.signature)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(s)
    }
}

/// Magic of a delivery batch body.
pub const BATCH_MAGIC: &[u8; 4] = b"LMTX";
/// Every server accepts delivery bodies of at least this many bytes (more when its
/// `limits.max_message_size` is large), so a sender that keeps its batches within it never
/// needs to know a peer's limit.
pub const MIN_ACCEPTED_BODY: u64 = 64 * 1024 * 1024;
/// Bytes of a batch body before its first item: magic and count.
pub const BATCH_HEADER_LEN: u64 = 6;

/// Bytes one item adds to a batch body (`encode_batch_items`): its recipients' framing
/// and the envelope with its length.
pub fn batch_item_len(recipients: &[String], envelope_len: u64) -> u64 {
    2 + recipients.iter().map(|r| 2 + r.len() as u64).sum::<u64>() + 4 + envelope_len
}

/// Encodes envelopes (canonical envelope bytes, each with the recipients at the
/// destination to deliver it to) as one delivery body:
/// `"LMTX" u16 count { u16 n, str16 recipient * n, u32 length, envelope }*`.
pub fn encode_batch_items<'a>(
    items: impl IntoIterator<Item = (&'a [String], &'a [u8])>,
) -> Vec<u8> {
    let items: Vec<_> = items.into_iter().collect();
    let mut w = Writer::new();
    w.raw(BATCH_MAGIC).u16(items.len() as u16);
    for (recipients, envelope) in items {
        w.u16(recipients.len() as u16);
        for r in recipients {
            w.str16(r);
        }
        w.bytes32(envelope);
    }
    w.into_bytes()
}

/// One decoded batch entry: the recipients to deliver to, and the envelope.
pub type BatchItem<'a> = (Vec<&'a str>, &'a [u8]);

/// Decodes a delivery body; at most [`MAX_BATCH`] envelopes of at most `max_envelope`
/// bytes, each for at most [`crate::envelope::MAX_RECIPIENTS`] recipients.
pub fn decode_batch_items(
    body: &[u8],
    max_envelope: usize,
) -> Result<Vec<BatchItem<'_>>, crate::codec::DecodeError> {
    use crate::codec::DecodeError;
    let mut r = Reader::new(body);
    r.expect(BATCH_MAGIC, "batch magic")?;
    let n = r.u16("batch count")? as usize;
    if n == 0 || n > MAX_BATCH {
        return Err(DecodeError::Invalid("batch count"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.u16("recipient count")? as usize;
        if k == 0 || k > crate::envelope::MAX_RECIPIENTS {
            return Err(DecodeError::Invalid("recipient count"));
        }
        let mut rcpts = Vec::with_capacity(k);
        for _ in 0..k {
            rcpts.push(r.str16("recipient", crate::envelope::MAX_ADDRESS)?);
        }
        out.push((rcpts, r.bytes32("batch envelope", max_envelope)?));
    }
    r.finish()?;
    Ok(out)
}

/// What became of one recipient of a delivered envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryStatus {
    Accepted,
    NoSuchUser,
    QuotaExceeded,
    RateLimited,
    Blocked,
}

impl DeliveryStatus {
    /// A permanent failure: no retry, a failure notice at once. Quota and rate limits clear
    /// with time, so they are retried until the sender's server gives up.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::NoSuchUser | Self::Blocked)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::NoSuchUser => "no such user",
            Self::QuotaExceeded => "the recipient's mailbox is full",
            Self::RateLimited => "the receiving server is rate limiting us",
            Self::Blocked => "the recipient or their server blocks the sender",
        }
    }
}

/// The receiver's answer to a delivery: per envelope (hex id), per recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub results: BTreeMap<String, BTreeMap<String, DeliveryStatus>>,
    /// Envelopes refused whole (undecodable, bad signature, wrong origin): id or index → reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, String>,
}

/// `GET /v1/federation/keys/{address}`: another domain's answer for one of its addresses,
/// and the client's view of a lookup relayed to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteKeys {
    pub address: crate::Address,
    pub found: bool,
    pub attestation: Option<crate::Attestation>,
    /// The key's entry in the domain's key-transparency log, with proofs.
    #[serde(default)]
    pub kt: Option<crate::kt::KtProof>,
    /// The account's devices (as [`crate::api::KeyLookup::devices`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::device::Device>,
}

/// Content type of a delivery body (`PUT /v1/federation/transactions/{txid}`).
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.letterme.batch";

/// `PUT /v1/federation/blobs/{id}`: a blob the origin brings before the envelope that
/// names it (PROTOCOL.md §17.5a). The answer is [`crate::api::BlobState`], as for a local
/// upload; its chunks then go as `PUT /v1/federation/blobs/{id}/{n}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobOffer {
    /// The envelope's sender, an address of the origin domain.
    pub owner: String,
    /// Sealed bytes.
    pub size: u64,
    /// Each sealed chunk's SHA-256, concatenated.
    #[serde(with = "crate::b64::bytes")]
    pub manifest: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(now: u64) -> (SigningKeypair, RequestSignature) {
        let key = SigningKeypair::generate();
        let s = RequestSignature::sign(
            &key,
            "put",
            "/v1/federation/transactions/ab",
            b"body",
            "A.test",
            "b.test",
            now,
            120,
        );
        (key, s)
    }

    #[test]
    fn a_signed_request_round_trips_through_its_headers_and_verifies() {
        let (_, s) = signed(1000);
        let headers: BTreeMap<&str, String> = s.headers().into_iter().collect();
        let back =
            RequestSignature::from_headers("PUT", &s.target, |n| headers.get(n).cloned()).unwrap();
        assert_eq!(back, s);
        back.verify("b.test", b"body", 1010).unwrap();
    }

    #[test]
    fn forged_misdirected_stale_and_tampered_requests_are_refused() {
        let (_, s) = signed(1000);
        assert!(matches!(
            s.verify("c.test", b"body", 1000),
            Err(SignatureError::WrongDestination { .. })
        ));
        assert_eq!(
            s.verify("b.test", b"body", 1200),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            s.verify("b.test", b"body", 800),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            s.verify("b.test", b"other", 1000),
            Err(SignatureError::DigestMismatch)
        );
        let mut forged = s.clone();
        forged.target = "/v1/federation/transactions/cd".into();
        assert_eq!(
            forged.verify("b.test", b"body", 1000),
            Err(SignatureError::BadSignature)
        );
        let mut other_key = s.clone();
        other_key.key = SigningKeypair::generate().public();
        assert_eq!(
            other_key.verify("b.test", b"body", 1000),
            Err(SignatureError::BadSignature)
        );
        let mut long = s;
        long.expires = long.created + MAX_REQUEST_LIFETIME + 1;
        assert_eq!(
            long.verify("b.test", b"body", 1000),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn responses_are_bound_to_their_request_and_signer() {
        let key = SigningKeypair::generate();
        let nonce = [9u8; 16];
        let r = ResponseSignature::sign(&key, 200, nonce, b"{}", "b.test", 5);
        let h: BTreeMap<&str, String> = r.headers().into_iter().collect();
        let get = |n: &str| h.get(n).cloned();
        ResponseSignature::verify_response(200, b"{}", nonce, "b.test", &[key.public()], get)
            .unwrap();
        assert!(
            ResponseSignature::verify_response(201, b"{}", nonce, "b.test", &[key.public()], get)
                .is_err()
        );
        assert_eq!(
            ResponseSignature::verify_response(200, b"{}", [1; 16], "b.test", &[key.public()], get),
            Err(SignatureError::Replayed)
        );
        assert!(matches!(
            ResponseSignature::verify_response(
                200,
                b"{}",
                nonce,
                "b.test",
                &[SigningKeypair::generate().public()],
                get
            ),
            Err(SignatureError::UnknownKey(_))
        ));
    }

    #[test]
    fn batches_round_trip_and_bounds_hold() {
        let a = vec![1u8; 10];
        let b = vec![2u8; 3];
        let ra = vec!["x@b.test".to_owned()];
        let rb = vec!["y@b.test".to_owned(), "z@b.test".to_owned()];
        let body =
            encode_batch_items([(ra.as_slice(), a.as_slice()), (rb.as_slice(), b.as_slice())]);
        let back = decode_batch_items(&body, 100).unwrap();
        assert_eq!(back[0], (vec!["x@b.test"], &a[..]));
        assert_eq!(back[1], (vec!["y@b.test", "z@b.test"], &b[..]));
        assert!(decode_batch_items(&body, 5).is_err());
        assert!(decode_batch_items(&body[..body.len() - 1], 100).is_err());
        assert!(decode_batch_items(b"LMTX\0\0", 100).is_err());
        assert!(decode_batch_items(b"nope", 100).is_err());
        assert_eq!(
            parse_digest("md5=:AAAA:, sha-256=:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=:"),
            Some([1; 32])
        );
    }
}
