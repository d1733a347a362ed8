//! Where mail for a domain goes (RFC 5321 §5.1): its MX hosts by preference, or the domain
//! itself when it has no MX (the implicit MX), nowhere when it publishes a null MX
//! (RFC 7505); and whether the domain demands TLS (an MTA-STS record, RFC 8461 §3.1, or a
//! TLSA record for the MX, RFC 7672). DNS comes in through the server's [`MailDns`], so
//! tests run this very code against their own zone.

use std::net::IpAddr;

use letterme_server::dns::{Answer, DnsFailure, MailDns};
use letterme_server::egress::is_public;

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

/// Resolves where mail for `domain` goes. Without `allow_private`, only public addresses
/// are used (`letterme_server::egress`): a domain's MX is named by strangers.
pub async fn route(
    dns: &dyn MailDns,
    domain: &str,
    port: u16,
    allow_private: bool,
) -> Result<Route, RouteError> {
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
    let mut private = false;
    for name in names {
        match dns.ips(&name).await {
            Ok(Answer::Found(mut ips)) => {
                ips.retain(|ip| allow_private || is_public(*ip));
                if ips.is_empty() {
                    private = true;
                    continue;
                }
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
            None if private => RouteError::Permanent(format!(
                "the mail hosts of {domain} are on private addresses, which this server does not connect to (network.allow_private_addresses)"
            )),
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
        let r = block_on(route(&z, "example.test", 25, true)).unwrap();
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
        let r = block_on(route(&z, "example.test", 25, true)).unwrap();
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
        let permanent = |d: &'static str| {
            matches!(
                block_on(route(&z, d, 25, true)),
                Err(RouteError::Permanent(_))
            )
        };
        assert!(permanent("nomail.test"));
        assert!(permanent("gone.test"));
        assert!(
            permanent("noaddress.test"),
            "no MX and no address: nowhere to deliver"
        );
        assert!(matches!(
            block_on(route(&z, "flaky.test", 25, true)),
            Err(RouteError::Temporary(_))
        ));
    }

    /// A domain whose MX names an internal address cannot turn the outbound queue into a
    /// port scanner of the operator's network: private hosts are skipped, and a domain
    /// with nothing else fails for good.
    #[test]
    fn mx_hosts_on_private_addresses_are_skipped_unless_allowed() {
        let mut z = Zone::default();
        z.mx.insert(
            "mixed.test",
            Answer::Found(vec![
                (10, "inside.test".into()),
                (20, "outside.test".into()),
            ]),
        );
        z.mx.insert(
            "inside-only.test",
            Answer::Found(vec![(10, "inside.test".into())]),
        );
        z.ips.insert(
            "inside.test",
            Answer::Found(vec![ip("127.0.0.1"), ip("10.0.0.5"), ip("fd00::1")]),
        );
        z.ips.insert(
            "outside.test",
            Answer::Found(vec![ip("169.254.169.254"), ip("93.184.216.34")]),
        );
        let r = block_on(route(&z, "mixed.test", 25, false)).unwrap();
        assert_eq!(r.hosts.len(), 1);
        assert_eq!(r.hosts[0].ips, [ip("93.184.216.34")]);
        match block_on(route(&z, "inside-only.test", 25, false)) {
            Err(RouteError::Permanent(why)) => assert!(why.contains("private"), "{why}"),
            other => panic!("{other:?}"),
        }
        let lab = block_on(route(&z, "inside-only.test", 25, true)).unwrap();
        assert_eq!(lab.hosts[0].ips.len(), 3);
    }
}
