//! Where the server may connect: peers' federation endpoints and the MX hosts of outbound
//! mail are named by DNS, that is by strangers, so an address inside the operator's network
//! (loopback, RFC 1918, ULA, link-local, CGNAT, multicast, unspecified, reserved) is refused
//! unless the operator allows it — for a peer listed in `[federation] peers`, or everywhere
//! with `network.allow_private_addresses` (a lab, the tests). The check is made on the
//! addresses actually connected to: the federation HTTP client resolves names through
//! [`Egress`], and IP literals are checked before any connection (DECISIONS D62).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::dns::{Answer, MailDns};

/// Whether `ip` is an ordinary address on the public Internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (RFC 6052): the embedded IPv4 address is what is reached.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local, RFC 4193
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT, RFC 6598
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0} is not a public address (network.allow_private_addresses is off)")]
    Private(IpAddr),
    #[error("{name} has no public address (network.allow_private_addresses is off)")]
    NoPublicAddress { name: String },
    #[error("{name}: {reason}")]
    Dns { name: String, reason: String },
}

/// The connection policy, and a resolver that applies it (for reqwest).
#[derive(Debug, Clone)]
pub struct Egress {
    dns: Arc<dyn MailDns>,
    allow_private: bool,
}

impl Egress {
    pub fn new(dns: Arc<dyn MailDns>, allow_private: bool) -> Self {
        Self { dns, allow_private }
    }

    /// The same policy with private addresses allowed (a peer the operator listed).
    #[must_use]
    pub fn allowing_private(&self) -> Self {
        Self {
            dns: self.dns.clone(),
            allow_private: true,
        }
    }

    /// Whether the server may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(EgressError::Private(ip))
        }
    }

    /// Of `ips`, those the server may connect to; an error when none is left.
    pub fn filter(&self, name: &str, ips: Vec<IpAddr>) -> Result<Vec<IpAddr>, EgressError> {
        let allowed: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| self.check(*ip).is_ok())
            .collect();
        if allowed.is_empty() {
            Err(EgressError::NoPublicAddress {
                name: name.to_owned(),
            })
        } else {
            Ok(allowed)
        }
    }

    /// The addresses of `name` the server may connect to.
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, EgressError> {
        let dns_error = |reason: String| EgressError::Dns {
            name: name.to_owned(),
            reason,
        };
        match self.dns.ips(name).await {
            Ok(Answer::Found(ips)) => self.filter(name, ips),
            Ok(Answer::NoRecords | Answer::NoDomain) => Err(dns_error("no address".into())),
            Err(e) => Err(dns_error(e.reason)),
        }
    }
}

impl reqwest::dns::Resolve for Egress {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let me = self.clone();
        Box::pin(async move {
            let ips = Egress::resolve(&me, name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(!is_public(ip), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public}");
        }
    }
}
