//! Network helpers both sides share.

use std::collections::HashMap;
use std::hash::Hash;
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

/// Units held at once — connections, bytes — at most `total` in all and `per_key` for one
/// key (a client prefix, a peer domain), so no one key can take what the others need.
/// Each taking is a [`Held`] that gives its units back when dropped; a key holding
/// nothing has no entry, so the map is bounded by what is held.
#[derive(Debug)]
pub struct Shares<K> {
    total: u64,
    per_key: u64,
    used: Mutex<Used<K>>,
}

#[derive(Debug)]
struct Used<K> {
    total: u64,
    by_key: HashMap<K, u64>,
}

/// Which limit a taking would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `total` is held.
    Full,
    /// The key holds its `per_key` share.
    Share,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    pub fn new(total: u64, per_key: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_key,
            used: Mutex::new(Used {
                total: 0,
                by_key: HashMap::new(),
            }),
        })
    }

    /// Takes `n` units for `key`, or says which limit that would pass.
    pub fn take(self: &Arc<Self>, key: K, n: u64) -> Result<Held<K>, Refused> {
        let mut held = Held {
            shares: self.clone(),
            key,
            n: 0,
        };
        held.grow(n)?;
        Ok(held)
    }

    /// Units held now, in all.
    pub fn in_use(&self) -> u64 {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// Units held for one key; given back when dropped.
#[derive(Debug)]
pub struct Held<K: Hash + Eq + Clone> {
    shares: Arc<Shares<K>>,
    key: K,
    n: u64,
}

impl<K: Hash + Eq + Clone> Held<K> {
    /// Takes `more` units; on a refusal nothing is taken.
    pub fn grow(&mut self, more: u64) -> Result<(), Refused> {
        let s = &self.shares;
        let mut used = s.used.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before inserting, so a refused key leaves no entry behind.
        let mine = used.by_key.get(&self.key).copied().unwrap_or(0);
        if used.total.saturating_add(more) > s.total {
            return Err(Refused::Full);
        }
        if mine.saturating_add(more) > s.per_key {
            return Err(Refused::Share);
        }
        used.total += more;
        if more > 0 {
            *used.by_key.entry(self.key.clone()).or_insert(0) += more;
        }
        self.n += more;
        Ok(())
    }

    /// Units held.
    pub fn amount(&self) -> u64 {
        self.n
    }
}

impl<K: Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut used = self
            .shares
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        used.total -= self.n;
        if let Some(n) = used.by_key.get_mut(&self.key) {
            *n -= self.n;
            if *n == 0 {
                used.by_key.remove(&self.key);
            }
        }
    }
}

/// A listener's connections, counted per [`client_prefix`].
pub type Admission = Shares<IpAddr>;
/// One admitted connection's place.
pub type Admitted = Held<IpAddr>;

impl Shares<IpAddr> {
    /// Admits a connection from `ip`, counted under its prefix.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        self.take(client_prefix(ip), 1)
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
        assert_eq!(a.admit(ip("192.0.2.5")).unwrap_err(), Refused::Share);
        let three = a.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(a.admit(ip("203.0.113.1")).unwrap_err(), Refused::Full);
        drop(one);
        let _again = a.admit(ip("192.0.2.5")).unwrap();
        drop((two, three));
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.used.lock().unwrap().by_key.len(), 1);
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

    #[test]
    fn one_key_cannot_take_the_whole_budget_and_units_come_back() {
        let b = Shares::new(100, 60);
        let a1 = b.take("a.test", 50).unwrap();
        assert!(b.take("a.test", 20).is_err(), "over a.test's share");
        let mut c = b.take("c.test", 40).unwrap();
        assert!(c.grow(20).is_err(), "over the whole budget");
        assert_eq!(b.in_use(), 90);
        drop(a1);
        assert!(c.grow(20).is_ok());
        drop(c);
        assert_eq!(b.in_use(), 0);
        assert!(b.used.lock().unwrap().by_key.is_empty());
    }
}
