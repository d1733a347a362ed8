//! Where mail for a domain goes (RFC 5321 §5.1): its MX hosts by preference, or the domain
//! itself when it has no MX (the implicit MX), nowhere when it publishes a null MX
//! (RFC 7505); and whether the domain demands TLS (an MTA-STS record, RFC 8461 §3.1, or a
//! TLSA record for the MX, RFC 7672). DNS comes in through [`MailDns`], so tests run this
//! very code against their own zone.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

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
        letterme_server::federation::dns::resolver(nameservers, timeout, attempts, 1024).map(Self)
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
                RData::TXT(t) => Some(letterme_server::federation::dns::txt_text(t)),
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

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// A TLSA record exists for it (DANE, RFC 7672): TLS is required.
    pub dane: bool,
}

/// How to reach a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// In order of preference.
    pub hosts: Vec<Host>,
    /// The domain publishes MTA-STS (RFC 8461): STARTTLS with a valid certificate required.
    pub mta_sts: bool,
}

/// Why a domain cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No retry will help: the domain does not exist or accepts no mail.
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Temporary(String),
}

impl From<DnsFailure> for RouteError {
    fn from(e: DnsFailure) -> Self {
        Self::Temporary(e.to_string())
    }
}

/// Hosts tried per domain at most.
pub const MAX_HOSTS: usize = 10;

/// Resolves where mail for `domain` goes.
pub async fn route(dns: &dyn MailDns, domain: &str, port: u16) -> Result<Route, RouteError> {
    let names: Vec<String> = match dns.mx(domain).await? {
        Answer::NoDomain => {
            return Err(RouteError::Permanent(format!(
                "the domain {domain} does not exist"
            )));
        }
        Answer::Found(mut mx) => {
            // RFC 7505 §3: a single MX of "." — the domain accepts no mail.
            if mx.len() == 1 && mx[0].1.is_empty() {
                return Err(RouteError::Permanent(format!(
                    "{domain} accepts no mail (null MX, RFC 7505)"
                )));
            }
            mx.retain(|(_, h)| !h.is_empty());
            // RFC 5321 §5.1: lowest preference first; equal ones in any order.
            mx.sort_by_key(|(p, _)| *p);
            mx.into_iter().map(|(_, h)| h).take(MAX_HOSTS).collect()
        }
        // RFC 5321 §5.1: no MX, so the domain itself is the implicit MX.
        Answer::NoRecords => vec![domain.to_owned()],
    };
    let mut hosts = Vec::new();
    let mut last_failure = None;
    for name in names {
        match dns.ips(&name).await {
            Ok(Answer::Found(ips)) => {
                let dane = dns
                    .has_tlsa(&format!("_{port}._tcp.{name}"))
                    .await
                    .unwrap_or(false);
                hosts.push(Host { name, ips, dane });
            }
            Ok(_) => {}
            Err(e) => last_failure = Some(e),
        }
    }
    if hosts.is_empty() {
        return Err(match last_failure {
            Some(e) => RouteError::Temporary(e.to_string()),
            None => RouteError::Permanent(format!("no mail host of {domain} has an address")),
        });
    }
    let mta_sts = match dns.txt(&format!("_mta-sts.{domain}")).await {
        Ok(Answer::Found(v)) => v.iter().any(|t| t.trim_start().starts_with("v=STSv1")),
        Ok(_) => false,
        // Unknown: be strict rather than downgrade.
        Err(_) => true,
    };
    Ok(Route { hosts, mta_sts })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A zone in a map: name → answers.
    #[derive(Debug, Default)]
    struct Zone {
        mx: HashMap<&'static str, Answer<Vec<(u16, String)>>>,
        ips: HashMap<&'static str, Answer<Vec<IpAddr>>>,
        txt: HashMap<&'static str, Answer<Vec<String>>>,
        tlsa: Vec<&'static str>,
        failing: Vec<&'static str>,
    }

    fn fail(name: &str) -> DnsFailure {
        DnsFailure {
            name: name.to_owned(),
            reason: "SERVFAIL".into(),
        }
    }

    #[async_trait::async_trait]
    impl MailDns for Zone {
        async fn mx(&self, name: &str) -> Result<Answer<Vec<(u16, String)>>, DnsFailure> {
            if self.failing.contains(&name) {
                return Err(fail(name));
            }
            Ok(self.mx.get(name).cloned().unwrap_or(Answer::NoRecords))
        }
        async fn ips(&self, name: &str) -> Result<Answer<Vec<IpAddr>>, DnsFailure> {
            if self.failing.contains(&name) {
                return Err(fail(name));
            }
            Ok(self.ips.get(name).cloned().unwrap_or(Answer::NoRecords))
        }
        async fn txt(&self, name: &str) -> Result<Answer<Vec<String>>, DnsFailure> {
            Ok(self.txt.get(name).cloned().unwrap_or(Answer::NoRecords))
        }
        async fn has_tlsa(&self, name: &str) -> Result<bool, DnsFailure> {
            Ok(self.tlsa.contains(&name))
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn mx_hosts_come_in_preference_order_with_their_addresses() {
        let mut z = Zone::default();
        z.mx.insert(
            "example.test",
            Answer::Found(vec![
                (20, "b.example.test".into()),
                (10, "a.example.test".into()),
            ]),
        );
        z.ips
            .insert("a.example.test", Answer::Found(vec![ip("192.0.2.1")]));
        z.ips
            .insert("b.example.test", Answer::Found(vec![ip("192.0.2.2")]));
        z.tlsa.push("_25._tcp.b.example.test");
        let r = block_on(route(&z, "example.test", 25)).unwrap();
        let names: Vec<&str> = r.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a.example.test", "b.example.test"]);
        assert!(!r.hosts[0].dane && r.hosts[1].dane);
        assert!(!r.mta_sts);
    }

    #[test]
    fn without_mx_the_domain_itself_is_the_implicit_mx() {
        let mut z = Zone::default();
        z.ips
            .insert("example.test", Answer::Found(vec![ip("192.0.2.7")]));
        z.txt.insert(
            "_mta-sts.example.test",
            Answer::Found(vec!["v=STSv1; id=20261129".into()]),
        );
        let r = block_on(route(&z, "example.test", 25)).unwrap();
        assert_eq!(r.hosts[0].name, "example.test");
        assert_eq!(r.hosts[0].ips, [ip("192.0.2.7")]);
        assert!(r.mta_sts, "an MTA-STS record makes TLS required");
    }

    #[test]
    fn a_null_mx_or_a_missing_domain_fails_for_good_and_a_dns_failure_only_for_now() {
        let mut z = Zone::default();
        z.mx.insert("nomail.test", Answer::Found(vec![(0, String::new())]));
        z.mx.insert("gone.test", Answer::NoDomain);
        z.failing.push("flaky.test");
        let permanent =
            |d: &'static str| matches!(block_on(route(&z, d, 25)), Err(RouteError::Permanent(_)));
        assert!(permanent("nomail.test"));
        assert!(permanent("gone.test"));
        assert!(
            permanent("noaddress.test"),
            "no MX and no address: nowhere to deliver"
        );
        assert!(matches!(
            block_on(route(&z, "flaky.test", 25)),
            Err(RouteError::Temporary(_))
        ));
    }
}
