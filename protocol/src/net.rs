//! Network helpers both sides share.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

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

/// How long an HTTP client keeps an idle pooled connection to a letter.me server: below
/// the servers' default idle limit (`limits.header_timeout`, 30 s), so a client does not
/// reuse a connection just as the server closes it.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// The connections a listener holds at once: at most `max` in all and `per_prefix` from
/// one [`client_prefix`]. Each admitted connection holds an [`Admitted`] ticket and gives
/// its place back when the ticket drops.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_prefix: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only prefixes with open connections: bounded by `max`.
    by_prefix: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max` connections.
    Full,
    /// The client's prefix holds `per_prefix` connections.
    Prefix,
}

impl Admission {
    pub fn new(max: usize, per_prefix: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_prefix,
            open: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, or says which limit it would exceed.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let prefix = client_prefix(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max {
            return Err(Refused::Full);
        }
        // Looked up before inserting, so a refused prefix leaves no entry behind.
        if open.by_prefix.get(&prefix).copied().unwrap_or(0) >= self.per_prefix {
            return Err(Refused::Prefix);
        }
        *open.by_prefix.entry(prefix).or_insert(0) += 1;
        open.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            prefix,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    prefix: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.by_prefix.get_mut(&self.prefix) {
            *n -= 1;
            if *n == 0 {
                open.by_prefix.remove(&self.prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_admitted_within_both_limits_and_give_their_place_back() {
        let a = Admission::new(3, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = a.admit(ip("192.0.2.1")).unwrap();
        let two = a.admit(ip("192.0.2.99")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.5")).unwrap_err(), Refused::Prefix);
        let three = a.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(a.admit(ip("203.0.113.1")).unwrap_err(), Refused::Full);
        drop(one);
        let _again = a.admit(ip("192.0.2.5")).unwrap();
        drop((two, three));
        assert_eq!(a.open(), 1);
        assert_eq!(a.open.lock().unwrap().by_prefix.len(), 1);
    }

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
