//! Network helpers both sides share.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The key under which a client address is counted for limits: its /24 (IPv4) or /64
/// (IPv6) prefix, so one host or one customer's many addresses count once. IPv4-mapped
/// IPv6 addresses count as their IPv4 address.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_by_prefix() {
        let p = |s: &str| client_prefix(s.parse().unwrap());
        assert_eq!(p("192.0.2.7"), p("192.0.2.200"));
        assert_ne!(p("192.0.2.7"), p("192.0.3.7"));
        assert_eq!(p("2001:db8:1:2:aaaa::1"), p("2001:db8:1:2:bbbb::2"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
        assert_eq!(p("::ffff:192.0.2.7"), p("192.0.2.9"));
    }
}
