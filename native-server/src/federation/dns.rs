//! TXT lookups for discovery, behind a trait so tests can answer from their own zone and
//! the shipped code path stays the same (an in-process DNS server on loopback, or any
//! other implementation).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// The strings of each TXT record at a name, and how long the answer may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtAnswer {
    /// One entry per record, its character-strings joined (RFC 7208 §3.3 style).
    pub records: Vec<String>,
    pub ttl: Duration,
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("{0} does not exist in DNS (no TXT record)")]
    NotFound(String),
    #[error("DNS lookup of {0} failed: {1}")]
    Failed(String, String),
}

/// A TXT record's character-strings joined into one text (RFC 7208 §3.3, RFC 6376
/// §3.6.2.2 read them that way).
pub fn txt_text(t: &hickory_resolver::proto::rr::rdata::TXT) -> String {
    t.txt_data
        .iter()
        .map(|s| String::from_utf8_lossy(s))
        .collect()
}

/// Looks up TXT records.
#[async_trait::async_trait]
pub trait TxtResolver: Send + Sync + std::fmt::Debug + 'static {
    async fn txt(&self, name: &str) -> Result<TxtAnswer, DnsError>;
}

/// A resolver configuration asking exactly these servers, over UDP and TCP (each
/// `HOST:PORT`, so tests can point at a zone on a loopback port).
pub fn nameserver_config(nameservers: &[SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|sa| {
            let mut udp = ConnectionConfig::udp();
            udp.port = sa.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = sa.port();
            NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// hickory-resolver against the configured nameservers, or the system's.
#[derive(Debug)]
pub struct HickoryTxt(TokioResolver);

impl HickoryTxt {
    pub fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, String> {
        // Discovery keeps its own cache, bounded by the record's TTL.
        resolver(nameservers, timeout, attempts, 0).map(Self)
    }
}

/// A hickory resolver asking `nameservers` (the system's when empty), never the hosts
/// file, with `cache_size` answers cached.
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
    cache_size: u64,
) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = attempts;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.cache_size = cache_size;
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(TokioRuntimeProvider::default())
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        TokioResolver::builder_with_config(
            nameserver_config(nameservers),
            TokioRuntimeProvider::default(),
        )
    };
    *builder.options_mut() = opts;
    builder.build().map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl TxtResolver for HickoryTxt {
    async fn txt(&self, name: &str) -> Result<TxtAnswer, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.0.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => Some(txt_text(t)),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if records.is_empty() {
                    return Err(DnsError::NotFound(name.to_owned()));
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                Ok(TxtAnswer { records, ttl })
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(DnsError::NotFound(name.to_owned()))
            }
            Err(e) => Err(DnsError::Failed(name.to_owned(), e.to_string())),
        }
    }
}
