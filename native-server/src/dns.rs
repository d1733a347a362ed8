//! DNS, behind traits so tests answer from their own zone and the shipped code path stays
//! the same (an in-process DNS server on loopback, or any other implementation): TXT
//! lookups for discovery ([`TxtResolver`]), and the questions outbound mail and
//! `letterme check` ask ([`MailDns`]). One resolver setup ([`resolver`]) for all of them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

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

/// The configured nameservers, or the system's when none are configured.
pub fn resolver_config(nameservers: &[SocketAddr]) -> Result<ResolverConfig, String> {
    if nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map(|(config, _)| config)
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))
    } else {
        Ok(nameserver_config(nameservers))
    }
}

/// What every resolver of the server shares: `timeout` and `attempts` from `[dns]`, the
/// servers asked in the order given, never the hosts file, `cache_size` answers cached.
pub fn resolver_opts(timeout: Duration, attempts: usize, cache_size: u64) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = attempts;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.cache_size = cache_size;
    opts
}

/// A hickory resolver on [`resolver_config`] with [`resolver_opts`].
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
    cache_size: u64,
) -> Result<TokioResolver, String> {
    let mut builder = TokioResolver::builder_with_config(
        resolver_config(nameservers)?,
        TokioRuntimeProvider::default(),
    );
    *builder.options_mut() = resolver_opts(timeout, attempts, cache_size);
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

/// What a DNS question found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Found(T),
    /// The name exists but has no record of that type.
    NoRecords,
    /// The name does not exist (NXDOMAIN).
    NoDomain,
}

/// A lookup that failed (timeout, SERVFAIL): worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of {name} failed: {reason}")]
pub struct DnsFailure {
    pub name: String,
    pub reason: String,
}

/// The DNS questions outbound mail and `letterme check` ask.
#[async_trait::async_trait]
pub trait MailDns: Send + Sync + std::fmt::Debug + 'static {
    /// MX records: (preference, exchange without the final dot).
    async fn mx(&self, name: &str) -> Result<Answer<Vec<(u16, String)>>, DnsFailure>;
    /// A and AAAA records.
    async fn ips(&self, name: &str) -> Result<Answer<Vec<IpAddr>>, DnsFailure>;
    /// TXT records, each one's strings joined.
    async fn txt(&self, name: &str) -> Result<Answer<Vec<String>>, DnsFailure>;
    /// Whether TLSA records exist at `name`.
    async fn has_tlsa(&self, name: &str) -> Result<bool, DnsFailure>;
}

/// hickory-resolver on the configured nameservers.
#[derive(Debug)]
pub struct HickoryMailDns(TokioResolver);

impl HickoryMailDns {
    pub fn new(
        nameservers: &[std::net::SocketAddr],
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, String> {
        resolver(nameservers, timeout, attempts, 1024).map(Self)
    }

    async fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Answer<Vec<RData>>, DnsFailure> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.0.lookup(fqdn.as_str(), rtype).await {
            Ok(l) => {
                let v: Vec<RData> = l.answers().iter().map(|r| r.data.clone()).collect();
                Ok(if v.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Found(v)
                })
            }
            Err(e) if e.is_nx_domain() => Ok(Answer::NoDomain),
            Err(e) if e.is_no_records_found() => Ok(Answer::NoRecords),
            Err(e) => Err(DnsFailure {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

fn map<T>(a: Answer<Vec<RData>>, f: impl Fn(&RData) -> Option<T>) -> Answer<Vec<T>> {
    match a {
        Answer::Found(v) => {
            let out: Vec<T> = v.iter().filter_map(f).collect();
            if out.is_empty() {
                Answer::NoRecords
            } else {
                Answer::Found(out)
            }
        }
        Answer::NoRecords => Answer::NoRecords,
        Answer::NoDomain => Answer::NoDomain,
    }
}

#[async_trait::async_trait]
impl MailDns for HickoryMailDns {
    async fn mx(&self, name: &str) -> Result<Answer<Vec<(u16, String)>>, DnsFailure> {
        Ok(map(self.lookup(name, RecordType::MX).await?, |r| match r {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        }))
    }

    async fn ips(&self, name: &str) -> Result<Answer<Vec<IpAddr>>, DnsFailure> {
        let v4 = self.lookup(name, RecordType::A).await?;
        if v4 == Answer::NoDomain {
            return Ok(Answer::NoDomain);
        }
        let v6 = self.lookup(name, RecordType::AAAA).await?;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in [v4, v6] {
            if let Answer::Found(v) = map(a, |r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }) {
                out.extend(v);
            }
        }
        Ok(if out.is_empty() {
            Answer::NoRecords
        } else {
            Answer::Found(out)
        })
    }

    async fn txt(&self, name: &str) -> Result<Answer<Vec<String>>, DnsFailure> {
        Ok(map(
            self.lookup(name, RecordType::TXT).await?,
            |r| match r {
                RData::TXT(t) => Some(txt_text(t)),
                _ => None,
            },
        ))
    }

    async fn has_tlsa(&self, name: &str) -> Result<bool, DnsFailure> {
        Ok(matches!(
            self.lookup(name, RecordType::TLSA).await?,
            Answer::Found(_)
        ))
    }
}
