//! The domain keys a client trusts for other domains: from the `_mailx.<domain>` TXT
//! record (DESIGN.md §6), never from what a server says. Cached within the record's TTL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use letterme_protocol::IdentityPublicKey;
use letterme_protocol::discovery::MailxRecord;

use crate::ClientError;

/// Looks up and caches domain keys.
#[derive(Debug)]
pub struct DomainKeys {
    resolver: TokioResolver,
    cache: Mutex<HashMap<String, (Vec<IdentityPublicKey>, Instant)>>,
}

impl DomainKeys {
    /// `nameservers` empty: the system resolver.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, ClientError> {
        let builder = if nameservers.is_empty() {
            TokioResolver::builder(TokioRuntimeProvider::default()).map_err(|e| {
                ClientError::Dns(format!(
                    "cannot read the system resolver configuration: {e}"
                ))
            })?
        } else {
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
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| ClientError::Dns(format!("cannot set up DNS: {e}")))?;
        Ok(Self {
            resolver,
            cache: Mutex::default(),
        })
    }

    /// Every domain key `domain` publishes (several while a rotation overlaps).
    pub async fn keys(&self, domain: &str) -> Result<Vec<IdentityPublicKey>, ClientError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((keys, until)) = self.cache.lock().ok().and_then(|c| c.get(&domain).cloned())
            && Instant::now() < until
        {
            return Ok(keys);
        }
        let name = format!("_mailx.{domain}.");
        let lookup = self.resolver.txt_lookup(name.as_str()).await.map_err(|e| {
            if e.is_no_records_found() || e.is_nx_domain() {
                ClientError::Dns(format!("{domain} publishes no _mailx record in DNS"))
            } else {
                ClientError::Dns(format!("looking up _mailx.{domain} failed: {e}"))
            }
        })?;
        let mut keys = Vec::new();
        for r in lookup.answers() {
            let RData::TXT(t) = &r.data else { continue };
            let txt: String = t
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect();
            if !txt.trim_start().starts_with("v=") {
                continue;
            }
            let record = MailxRecord::parse(&txt)
                .map_err(|e| ClientError::Dns(format!("_mailx.{domain}: {e}")))?;
            keys.push(record.domain_key);
        }
        if keys.is_empty() {
            return Err(ClientError::Dns(format!(
                "{domain} publishes no v=mailx1 record in DNS"
            )));
        }
        let until = lookup
            .valid_until()
            .min(Instant::now() + Duration::from_hours(7 * 24));
        if let Ok(mut c) = self.cache.lock() {
            c.insert(domain, (keys.clone(), until));
        }
        Ok(keys)
    }
}
