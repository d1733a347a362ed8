//! Federation (DESIGN.md §6): finding other domains' servers through DNS, talking to them
//! over pinned TLS 1.3 with signed requests and responses, delivering from a durable queue
//! (`queue`), and receiving from them (`receive`).
//!
//! Trust comes from DNS alone: the `_mailx` record names the domain key(s), the endpoint
//! and the TLS key. The server document must agree with it, every request and response is
//! signed by a published key, and nothing a peer says about itself overrides DNS.

pub mod budget;
pub mod pin;
pub mod queue;
pub mod witness;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letterme_protocol::discovery::{DiscoveryError, MailxRecord, ServerDocument};
use letterme_protocol::federation::{
    RemoteKeys, RequestSignature, ResponseSignature, SignatureError,
};
use letterme_protocol::{Address, IdentityPublicKey, SigningKeypair, b64};
use lru::LruCache;

use crate::clock::Clock;
use crate::config::FederationConfig;
use crate::dns::{DnsError, TxtResolver};
use crate::egress::Egress;
use crate::kt::KtState;

fn cap(n: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN)
}

/// Longest a discovery answer is cached, whatever its TTL says.
pub const MAX_CACHE: u64 = 7 * 86_400;
/// Validity window of the requests this server signs, seconds.
pub const REQUEST_LIFETIME: u64 = 120;
/// Lifetime of the server document this server publishes, seconds.
pub const DOCUMENT_TTL: u64 = 86_400;
/// Largest response body read from a peer.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Nonces remembered at most; beyond, requests are refused (503) until old ones expire.
pub const MAX_NONCES: usize = 1_000_000;
/// Nonces one origin may hold at once (`503 busy` to that origin beyond).
pub const MAX_NONCES_PER_ORIGIN: usize = MAX_NONCES / 20;
/// Local part of the address failure notices come from.
pub use crate::notice::NOTICE_SENDER;
/// A peer whose key verification failed is looked up again after this long at the soonest.
const REFRESH_AFTER: u64 = 30;
/// A failed `_mailx` lookup is answered from memory for this long (seconds), so requests
/// naming a domain without a record do not each cost a DNS query.
pub const NEGATIVE_TTL: u64 = 5;
/// Domains whose records (and, apart, whose failed lookups) are kept at most; the least
/// recently used goes first. Any domain can name itself the origin of a request.
pub const MAX_CACHED_DOMAINS: usize = 10_000;
/// Verified peers (each with its HTTPS client and connection pool) kept at most.
pub const MAX_PEERS: usize = 1_000;

/// Why talking to a peer failed. Everything here is temporary for the queue except what a
/// peer answered about a recipient (that is a `DeliveryStatus`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("_mailx.{0} has no usable v=mailx1 record")]
    NoRecord(String),
    #[error("_mailx.{domain}: {error}")]
    Record {
        domain: String,
        error: DiscoveryError,
    },
    #[error("{domain}'s server document does not match DNS: {error}")]
    Document {
        domain: String,
        error: DiscoveryError,
    },
    #[error("cannot reach {domain} at {endpoint}: {reason}")]
    Unreachable {
        domain: String,
        endpoint: String,
        reason: String,
    },
    #[error("{domain} answered {status}: {message}")]
    Refused {
        domain: String,
        status: u16,
        code: letterme_protocol::api::ErrorCode,
        message: String,
    },
    #[error("{domain}'s answer ({status}) is not signed by its DNS key: {error}")]
    BadResponse {
        domain: String,
        status: u16,
        error: SignatureError,
    },
    #[error("{domain} sent an unreadable answer: {reason}")]
    Garbled { domain: String, reason: String },
    /// A blob the envelope names is no longer on this server, so it cannot go to the peer.
    #[error(
        "blob {id}, an attachment of the message, is no longer on this server to bring to {domain}"
    )]
    BlobGone { id: String, domain: String },
    /// The peer has no route for blobs: a server from before them, whose unsigned `404`
    /// will not change however often the offer is made.
    #[error(
        "{domain}'s server does not take attachments sent as blobs (it is older than them); \
         its operator needs to upgrade it"
    )]
    NoBlobs { domain: String },
}

impl FederationError {
    /// The reason a failure notice gives: this server's words, with what the peer said
    /// only quoted (`notice::remote_said`).
    pub fn notice_text(&self) -> String {
        match self {
            Self::Refused {
                domain,
                status,
                code,
                message,
            } => crate::notice::remote_said(
                &format!("{domain} refused the delivery ({status} {code})"),
                message,
            ),
            Self::Garbled { domain, reason } => crate::notice::remote_said(
                &format!("{domain} sent an answer that does not parse"),
                reason,
            ),
            other => other.to_string(),
        }
    }

    /// What went wrong, in words that hold nothing the peer or its DNS said: for answers
    /// to users, while the whole error goes to the log (D62).
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Dns(_) => "could not be looked up in DNS",
            Self::NoRecord(_) | Self::Record { .. } => "publishes no usable _mailx record",
            Self::Unreachable { .. } => "cannot be reached",
            Self::Refused { .. } => "refused the request",
            Self::Document { .. } => "does not match its DNS record",
            Self::BadResponse { .. } => "answered without a valid signature of its domain key",
            Self::Garbled { .. } => "sent an answer that does not parse",
            Self::BlobGone { .. } => "cannot be brought an attachment this server no longer has",
            Self::NoBlobs { .. } => "does not take attachments sent as blobs",
        }
    }
}

/// A peer as DNS describes it.
#[derive(Debug, Clone)]
pub struct PeerRecords {
    pub domain: String,
    /// Every published domain key (more than one while a key rotation overlaps).
    pub keys: Vec<IdentityPublicKey>,
    pub endpoint: String,
    pub fingerprint: Option<String>,
    /// The record whose key signed the server document, for verification.
    pub records: Vec<MailxRecord>,
    pub expires: u64,
    pub fetched: u64,
}

/// A discovered, verified peer, with its pinned HTTPS client.
#[derive(Debug, Clone)]
pub struct Peer {
    pub records: Arc<PeerRecords>,
    pub http: reqwest::Client,
}

/// A static `[federation] peers` entry.
#[derive(Debug, Clone)]
enum StaticPeer {
    /// The endpoint only; keys and fingerprint still come from DNS.
    Endpoint(String),
    /// A whole `_mailx` record, for private networks without DNS.
    Record(MailxRecord),
}

/// Remembers nonces until their request expires, with a quota per origin so that no
/// domain (which can sign as many requests as it likes) fills the table for the others.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<[u8; 16], (u64, Arc<str>)>,
    per_origin: HashMap<Arc<str>, usize>,
    inserts: u64,
}

impl Nonces {
    /// Records `nonce` of a request from `origin`, kept until `keep`.
    pub fn check(&mut self, origin: &str, nonce: [u8; 16], keep: u64, now: u64) -> NonceCheck {
        self.inserts += 1;
        if self.inserts.is_multiple_of(4096) || self.seen.len() >= MAX_NONCES {
            self.seen.retain(|_, (e, _)| *e >= now);
            self.per_origin.clear();
            for (_, o) in self.seen.values() {
                *self.per_origin.entry(o.clone()).or_default() += 1;
            }
        }
        if self.seen.contains_key(&nonce) {
            return NonceCheck::Replayed;
        }
        let mine = self.per_origin.get(origin).copied().unwrap_or(0);
        if self.seen.len() >= MAX_NONCES || mine >= MAX_NONCES_PER_ORIGIN {
            return NonceCheck::Full;
        }
        let origin: Arc<str> = Arc::from(origin);
        *self.per_origin.entry(origin.clone()).or_default() += 1;
        self.seen.insert(nonce, (keep, origin));
        NonceCheck::Fresh
    }
}

/// Whether a request's nonce may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    Replayed,
    /// Too many remembered; refuse for now.
    Full,
}

/// The federation side of a server.
pub struct Federation {
    pub domain: String,
    key: SigningKeypair,
    pub endpoint: String,
    pub fingerprint: Option<String>,
    pub config: FederationConfig,
    resolver: Arc<dyn TxtResolver>,
    statics: BTreeMap<String, StaticPeer>,
    records: Mutex<LruCache<String, Arc<PeerRecords>>>,
    /// Failed lookups, until when they stand.
    failures: Mutex<LruCache<String, (u64, FederationError)>>,
    peers: Mutex<LruCache<String, Peer>>,
    nonces: Mutex<Nonces>,
    pub origin_limit: crate::auth::RateLimiter<String>,
    pub clock: Arc<dyn Clock>,
    /// This domain's log, whose checkpoint goes with every request.
    pub kt: Arc<KtState>,
    /// What a peer's endpoint may resolve to (D62).
    egress: Egress,
    /// Witness observations of one domain run one at a time (one lock per domain).
    pub witness_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("domain", &self.domain)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Federation {
    // Reason: the one constructor, called once at start with what `serve` assembled.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        domain: &str,
        key: SigningKeypair,
        endpoint: String,
        fingerprint: Option<String>,
        config: FederationConfig,
        resolver: Arc<dyn TxtResolver>,
        clock: Arc<dyn Clock>,
        kt: Arc<KtState>,
        egress: Egress,
    ) -> Result<Self, String> {
        let mut statics = BTreeMap::new();
        for (d, v) in &config.peers {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let peer = if v.trim_start().starts_with("v=") {
                StaticPeer::Record(
                    MailxRecord::parse(v).map_err(|e| format!("federation.peers.{d}: {e}"))?,
                )
            } else if v.starts_with("https://") {
                StaticPeer::Endpoint(v.trim_end_matches('/').to_owned())
            } else {
                return Err(format!(
                    "federation.peers.{d}: expected an https:// URL or a whole v=mailx1 record"
                ));
            };
            statics.insert(d, peer);
        }
        let origin_limit =
            crate::auth::RateLimiter::new(config.origin_rate, config.origin_burst, 100_000);
        Ok(Self {
            domain: domain.to_owned(),
            key,
            endpoint,
            fingerprint,
            config,
            resolver,
            statics,
            records: Mutex::new(LruCache::new(cap(MAX_CACHED_DOMAINS))),
            failures: Mutex::new(LruCache::new(cap(MAX_CACHED_DOMAINS))),
            peers: Mutex::new(LruCache::new(cap(MAX_PEERS))),
            nonces: Mutex::default(),
            origin_limit,
            clock,
            kt,
            egress,
            witness_locks: Mutex::default(),
        })
    }

    /// The document served at `/.well-known/mailx-server`.
    pub fn document(&self) -> ServerDocument {
        ServerDocument::sign(
            &self.domain,
            &self.key,
            &self.endpoint,
            self.fingerprint.clone(),
            self.clock.now(),
            DOCUMENT_TTL,
        )
    }

    /// The `_mailx` record this server should be published under.
    pub fn record(&self) -> MailxRecord {
        MailxRecord {
            domain_key: self.key.public(),
            endpoint: self.endpoint.clone(),
            tls_fingerprint: self.fingerprint.clone(),
        }
    }

    pub(crate) fn signing_key(&self) -> &SigningKeypair {
        &self.key
    }

    /// What DNS (or a static entry) says about `domain`, cached within its TTL.
    pub async fn records(&self, domain: &str) -> Result<Arc<PeerRecords>, FederationError> {
        self.records_fresh(domain, false).await
    }

    async fn records_fresh(
        &self,
        domain: &str,
        refresh: bool,
    ) -> Result<Arc<PeerRecords>, FederationError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = self.clock.now();
        if let Some(r) = self
            .records
            .lock()
            .ok()
            .and_then(|mut m| m.get(&domain).cloned())
            && now < r.expires
            && !(refresh && now >= r.fetched + REFRESH_AFTER)
        {
            return Ok(r);
        }
        if let Some((until, e)) = self
            .failures
            .lock()
            .ok()
            .and_then(|mut m| m.get(&domain).cloned())
            && now < until
        {
            return Err(e);
        }
        let found = self.read_records(&domain, now).await;
        match &found {
            Ok(peer) => {
                if let Ok(mut m) = self.records.lock() {
                    m.put(domain.clone(), peer.clone());
                }
                if let Ok(mut m) = self.failures.lock() {
                    m.pop(&domain);
                }
            }
            Err(e) => {
                if let Ok(mut m) = self.failures.lock() {
                    m.put(domain, (now + NEGATIVE_TTL, e.clone()));
                }
            }
        }
        found
    }

    /// Reads `domain`'s `_mailx` records (or its static entry).
    async fn read_records(
        &self,
        domain: &str,
        now: u64,
    ) -> Result<Arc<PeerRecords>, FederationError> {
        let domain = domain.to_owned();
        let (mut records, ttl) = if let Some(StaticPeer::Record(r)) = self.statics.get(&domain) {
            (vec![r.clone()], 86_400)
        } else {
            {
                let answer = self.resolver.txt(&format!("_mailx.{domain}")).await?;
                let mut parsed = Vec::new();
                let mut last_error = None;
                for txt in &answer.records {
                    // Other TXT records may share the name; only ours count.
                    if !txt.trim_start().starts_with("v=") {
                        continue;
                    }
                    match MailxRecord::parse(txt) {
                        Ok(r) => parsed.push(r),
                        Err(error) => last_error = Some(error),
                    }
                }
                if parsed.is_empty() {
                    return Err(match last_error {
                        Some(error) => FederationError::Record { domain, error },
                        None => FederationError::NoRecord(domain),
                    });
                }
                (parsed, answer.ttl.as_secs())
            }
        };
        if let Some(StaticPeer::Endpoint(e)) = self.statics.get(&domain) {
            for r in &mut records {
                r.endpoint.clone_from(e);
            }
        }
        let first = &records[0];
        if records
            .iter()
            .any(|r| r.endpoint != first.endpoint || r.tls_fingerprint != first.tls_fingerprint)
        {
            return Err(FederationError::Record {
                domain,
                error: DiscoveryError::Malformed(
                    "several records name different endpoints or TLS keys".into(),
                ),
            });
        }
        Ok(Arc::new(PeerRecords {
            keys: records.iter().map(|r| r.domain_key).collect(),
            endpoint: first.endpoint.clone(),
            fingerprint: first.tls_fingerprint.clone(),
            records,
            expires: now + ttl.clamp(1, MAX_CACHE),
            fetched: now,
            domain,
        }))
    }

    /// The published keys of `origin`, looked up again (at most every 30 s) when `key` is
    /// not among them, so a rotation is picked up before the TTL runs out.
    pub async fn origin_keys(
        &self,
        origin: &str,
        key: &IdentityPublicKey,
    ) -> Result<Arc<PeerRecords>, FederationError> {
        let r = self.records(origin).await?;
        if r.keys.contains(key) {
            return Ok(r);
        }
        self.records_fresh(origin, true).await
    }

    /// A verified peer: its records, and its server document checked against them over a
    /// pinned TLS 1.3 connection. Cached as long as the records are.
    pub async fn peer(&self, domain: &str) -> Result<Peer, FederationError> {
        let records = self.records(domain).await?;
        if let Some(p) = self
            .peers
            .lock()
            .ok()
            .and_then(|mut m| m.get(&records.domain).cloned())
            && Arc::ptr_eq(&p.records, &records)
        {
            return Ok(p);
        }
        let fp = match &records.fingerprint {
            Some(f) => Some(b64::decode_array(f).ok_or_else(|| FederationError::Record {
                domain: records.domain.clone(),
                error: DiscoveryError::Malformed("fp is not base64 of 32 bytes".into()),
            })?),
            None => None,
        };
        let tls = pin::client_config(fp).map_err(|reason| FederationError::Unreachable {
            domain: records.domain.clone(),
            endpoint: records.endpoint.clone(),
            reason,
        })?;
        // A peer the operator listed may be on a private network; one DNS names may not.
        let egress = if self.statics.contains_key(&records.domain) {
            self.egress.allowing_private()
        } else {
            self.egress.clone()
        };
        let unreachable = |reason: String| FederationError::Unreachable {
            domain: records.domain.clone(),
            endpoint: records.endpoint.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&records.endpoint).map_err(|e| unreachable(e.to_string()))?;
        if let Some(ip) = url
            .host_str()
            .and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse().ok())
        {
            egress.check(ip).map_err(|e| unreachable(e.to_string()))?;
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(egress))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_mins(1))
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(letterme_protocol::net::POOL_IDLE)
            .build()
            .map_err(|e| FederationError::Unreachable {
                domain: records.domain.clone(),
                endpoint: records.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let url = format!("{}/.well-known/mailx-server", records.endpoint);
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(describe(&e)))?;
        if !resp.status().is_success() {
            return Err(unreachable(format!("{url} answered {}", resp.status())));
        }
        let body = read_limited(resp, 64 * 1024).await.map_err(&unreachable)?;
        let doc: ServerDocument =
            serde_json::from_slice(&body).map_err(|e| FederationError::Garbled {
                domain: records.domain.clone(),
                reason: format!("server document: {e}"),
            })?;
        let record = records
            .records
            .iter()
            .find(|r| r.domain_key == doc.domain_key)
            .ok_or_else(|| FederationError::Document {
                domain: records.domain.clone(),
                error: DiscoveryError::Mismatch("domain key"),
            })?;
        doc.verify(&records.domain, record, self.clock.now())
            .map_err(|error| FederationError::Document {
                domain: records.domain.clone(),
                error,
            })?;
        let peer = Peer {
            records: records.clone(),
            http,
        };
        if let Ok(mut m) = self.peers.lock() {
            m.put(records.domain.clone(), peer.clone());
        }
        Ok(peer)
    }

    /// Drops what is cached about `domain` (after a failure that may mean it changed).
    pub fn forget(&self, domain: &str) {
        if let Ok(mut m) = self.peers.lock() {
            m.pop(domain);
        }
    }

    /// Sends a signed request (a body, if any, of `content_type`) and checks the signed
    /// answer. Returns the status and body.
    pub async fn call(
        &self,
        peer: &Peer,
        method: reqwest::Method,
        target: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<(u16, Vec<u8>), FederationError> {
        let domain = &peer.records.domain;
        let sig = RequestSignature::sign(
            &self.key,
            method.as_str(),
            target,
            &body,
            &self.domain,
            domain,
            self.clock.now(),
            REQUEST_LIFETIME,
        );
        let mut req = peer
            .http
            .request(method, format!("{}{target}", peer.records.endpoint));
        for (name, value) in sig.headers() {
            req = req.header(name, value);
        }
        if !body.is_empty() {
            req = req.header("content-type", content_type);
        }
        // Our log's checkpoint, for the peer to witness.
        let cp = self
            .kt
            .checkpoint(&self.domain, self.clock.now(), &self.key)
            .await;
        req = req.header(witness::CHECKPOINT_HEADER, witness::to_header(&cp));
        // As long as the peer gives the body, and the answer a minute after.
        let timeout = budget::body_deadline(body.len() as u64) + Duration::from_mins(1);
        let resp = req.timeout(timeout).body(body).send().await.map_err(|e| {
            FederationError::Unreachable {
                domain: domain.clone(),
                endpoint: peer.records.endpoint.clone(),
                reason: describe(&e),
            }
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = read_limited(resp, MAX_RESPONSE).await.map_err(|reason| {
            FederationError::Unreachable {
                domain: domain.clone(),
                endpoint: peer.records.endpoint.clone(),
                reason,
            }
        })?;
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(ToOwned::to_owned)
        };
        ResponseSignature::verify_response(
            status,
            &bytes,
            sig.nonce,
            domain,
            &peer.records.keys,
            get,
        )
        .map_err(|error| FederationError::BadResponse {
            domain: domain.clone(),
            status,
            error,
        })?;
        if !(200..300).contains(&status) {
            let (code, message) =
                match serde_json::from_slice::<letterme_protocol::api::ErrorBody>(&bytes) {
                    Ok(b) if !b.error.message.is_empty() => (b.error.code, b.error.message),
                    Ok(b) => (b.error.code, "no reason given".to_owned()),
                    Err(_) => (
                        letterme_protocol::api::ErrorCode::Other("unknown".into()),
                        "no reason given".to_owned(),
                    ),
                };
            return Err(FederationError::Refused {
                domain: domain.clone(),
                status,
                code,
                message,
            });
        }
        Ok((status, bytes))
    }

    /// Looks up a remote user's attested keys and checks the attestation against the
    /// domain's keys in DNS before passing it on.
    pub async fn lookup(
        &self,
        address: &Address,
        since: Option<u64>,
    ) -> Result<RemoteKeys, FederationError> {
        let peer = self.peer(address.domain()).await?;
        let target = match since {
            Some(n) => format!("/v1/federation/keys/{address}?since={n}"),
            None => format!("/v1/federation/keys/{address}"),
        };
        let (_, body) = self
            .call(&peer, reqwest::Method::GET, &target, Vec::new(), "")
            .await?;
        let found: RemoteKeys =
            serde_json::from_slice(&body).map_err(|e| FederationError::Garbled {
                domain: peer.records.domain.clone(),
                reason: e.to_string(),
            })?;
        if let Some(att) = &found.attestation {
            let ok = peer
                .records
                .keys
                .iter()
                .any(|k| att.verify(address, &peer.records.domain, k).is_ok());
            if !ok {
                return Err(FederationError::Garbled {
                    domain: peer.records.domain.clone(),
                    reason: format!(
                        "the attestation for {address} does not verify against the domain key in DNS"
                    ),
                });
            }
        }
        Ok(found)
    }

    /// Remembers `nonce` until `expires`.
    pub fn check_nonce(&self, origin: &str, nonce: [u8; 16], expires: u64) -> NonceCheck {
        let now = self.clock.now();
        let Ok(mut n) = self.nonces.lock() else {
            return NonceCheck::Full;
        };
        // Kept past its expiry by the skew window, since `verify` tolerates that much.
        n.check(
            origin,
            nonce,
            expires + letterme_protocol::federation::MAX_SKEW,
            now,
        )
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    /// A zone in memory that counts the questions it is asked.
    #[derive(Debug, Default)]
    struct Zone {
        asked: AtomicUsize,
        txt: Mutex<HashMap<String, String>>,
    }

    #[async_trait::async_trait]
    impl TxtResolver for Zone {
        async fn txt(&self, name: &str) -> Result<crate::dns::TxtAnswer, DnsError> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            match self.txt.lock().unwrap().get(name) {
                Some(v) => Ok(crate::dns::TxtAnswer {
                    records: vec![v.clone()],
                    ttl: Duration::from_hours(1),
                }),
                None => Err(DnsError::NotFound(name.to_owned())),
            }
        }
    }

    #[derive(Debug, Default)]
    struct Tick(AtomicU64);

    impl Clock for Tick {
        fn now(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
        fn now_f64(&self) -> f64 {
            self.now() as f64
        }
    }

    async fn federation(zone: Arc<Zone>, clock: Arc<Tick>) -> (Federation, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("t.db")).unwrap();
        let kt = Arc::new(
            KtState::load(&store, letterme_protocol::kt::VrfKey::generate())
                .await
                .unwrap(),
        );
        let mail_dns = crate::dns::HickoryMailDns::new(
            &["127.0.0.1:9".parse().unwrap()],
            Duration::from_millis(10),
            0,
        )
        .unwrap();
        let fed = Federation::new(
            "me.test",
            SigningKeypair::generate(),
            "https://127.0.0.1:9".into(),
            None,
            FederationConfig::default(),
            zone,
            clock,
            kt,
            Egress::new(Arc::new(mail_dns), false),
        )
        .unwrap();
        (fed, dir)
    }

    /// Issue 15.8: requests naming domains without a record cost one DNS question per
    /// domain and `NEGATIVE_TTL`, and however many domains there are, the cache of their
    /// records keeps the most recent `MAX_CACHED_DOMAINS`.
    #[tokio::test]
    async fn failed_lookups_are_remembered_briefly_and_the_domain_cache_is_bounded() {
        let zone = Arc::new(Zone::default());
        let clock = Arc::new(Tick(AtomicU64::new(1_000)));
        let (fed, _dir) = federation(zone.clone(), clock.clone()).await;
        let asked = || zone.asked.load(Ordering::Relaxed);
        for _ in 0..100 {
            assert!(matches!(
                fed.records("nx.test").await,
                Err(FederationError::Dns(DnsError::NotFound(_)))
            ));
        }
        assert_eq!(asked(), 1);
        clock.0.fetch_add(NEGATIVE_TTL, Ordering::Relaxed);
        assert!(fed.records("nx.test").await.is_err());
        assert_eq!(asked(), 2);

        let record = MailxRecord {
            domain_key: SigningKeypair::generate().public(),
            endpoint: "https://127.0.0.1:9".into(),
            tls_fingerprint: None,
        }
        .to_txt();
        {
            let mut txt = zone.txt.lock().unwrap();
            for n in 0..MAX_CACHED_DOMAINS + 10 {
                txt.insert(format!("_mailx.d{n}.test"), record.clone());
            }
        }
        for n in 0..MAX_CACHED_DOMAINS + 10 {
            fed.records(&format!("d{n}.test")).await.unwrap();
        }
        assert_eq!(fed.records.lock().unwrap().len(), MAX_CACHED_DOMAINS);
        let before = asked();
        fed.records(&format!("d{}.test", MAX_CACHED_DOMAINS + 9))
            .await
            .unwrap();
        assert_eq!(asked(), before, "the newest domain is still cached");
        fed.records("d0.test").await.unwrap();
        assert_eq!(asked(), before + 1, "the oldest one was let go");
    }

    /// One domain signing requests as fast as it likes fills its own quota, not the table:
    /// another origin is still served, and a replay is still caught.
    #[test]
    fn one_origin_cannot_fill_the_nonce_table() {
        let mut n = Nonces::default();
        let nonce = |i: u64| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&i.to_be_bytes());
            b
        };
        for i in 0..MAX_NONCES_PER_ORIGIN as u64 {
            assert_eq!(n.check("evil.test", nonce(i), 1000, 0), NonceCheck::Fresh);
        }
        assert_eq!(
            n.check("evil.test", nonce(u64::MAX), 1000, 0),
            NonceCheck::Full
        );
        assert_eq!(
            n.check("good.test", nonce(u64::MAX - 1), 1000, 0),
            NonceCheck::Fresh
        );
        assert_eq!(
            n.check("good.test", nonce(u64::MAX - 1), 1000, 0),
            NonceCheck::Replayed
        );
        assert_eq!(
            n.check("evil.test", nonce(3), 1000, 0),
            NonceCheck::Replayed
        );
        // Once its requests have expired, the origin is served again.
        for i in 0..4096u64 {
            let _ = n.check("other.test", nonce(1 << 40 | i), 5000, 2000);
        }
        assert_eq!(
            n.check("evil.test", nonce(u64::MAX - 7), 5000, 2000),
            NonceCheck::Fresh
        );
    }
}
