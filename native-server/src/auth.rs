//! Login challenges, bearer tokens and per-key rate limits, all in memory and bounded.
//!
//! Tokens are short-lived (15 minutes) and held only as SHA-256 hashes, so a memory dump
//! or a log line never yields a usable token. A restart simply makes clients log in again.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use hmac::{Hmac, Mac as _};

use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use letterme_protocol::{Address, IdentityPublicKey};
use sha2::{Digest as _, Sha256};

/// Seconds a challenge may be answered in.
pub const CHALLENGE_TTL: u64 = 120;
/// Seconds a token lives.
pub const TOKEN_TTL: u64 = 15 * 60;
/// Answered challenges remembered (until they expire) so none is used twice.
pub const MAX_SPENT: usize = 100_000;
/// Live tokens kept at most.
pub const MAX_TOKENS: usize = 100_000;
/// Live tokens per account: a new login beyond this ends the account's oldest session.
pub const MAX_TOKENS_PER_ACCOUNT: usize = 16;

/// Who a token belongs to: an account, and the device of it that logged in.
#[derive(Debug, Clone)]
pub struct Session {
    pub address: Address,
    pub identity_key: IdentityPublicKey,
    /// The device (`devices.id`) and the key it logged in with: the identity key for the
    /// device of an account from before devices.
    pub device: i64,
    pub device_key: IdentityPublicKey,
    pub expires: u64,
}

impl Session {
    /// The deliveries this session's device lists, fetches and acknowledges.
    pub fn inbox(&self) -> crate::store::Inbox {
        crate::store::Inbox {
            address: self.address.to_string(),
            device: self.device,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

/// Login state. Challenges are stateless — an expiry, a nonce and a MAC under a key drawn
/// at start — so asking for them, however often and from wherever, fills nothing; only an
/// answered challenge is remembered, and only after its signature verified (D63).
pub struct Auth {
    key: zeroize::Zeroizing<[u8; 32]>,
    spent: Mutex<HashMap<[u8; 32], u64>>,
    tokens: Mutex<Tokens>,
}

#[derive(Default)]
struct Tokens {
    by_hash: HashMap<[u8; 32], Session>,
    /// Each account's token hashes, oldest first.
    by_account: HashMap<Address, VecDeque<[u8; 32]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            key: zeroize::Zeroizing::new(random_bytes()),
            spent: Mutex::default(),
            tokens: Mutex::default(),
        }
    }
}

/// When a challenge expires: its first 8 bytes (checked under its MAC).
fn expiry(challenge: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&challenge[..8]);
    u64::from_be_bytes(b)
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// The MAC binding a challenge's expiry and nonce to `address`.
    fn challenge_mac(&self, address: &Address, head: &[u8]) -> [u8; 16] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&*self.key).expect("HMAC takes any key");
        mac.update(b"letterme/v1/login-challenge\0");
        mac.update(head);
        mac.update(address.as_str().as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A challenge for `address`, known or not (the answer looks the same): its expiry,
    /// a random nonce and a MAC over both and the address. Nothing is stored.
    pub fn challenge(&self, address: &Address, now: u64) -> [u8; 32] {
        let mut c = [0u8; 32];
        c[..8].copy_from_slice(&(now + CHALLENGE_TTL).to_be_bytes());
        c[8..16].copy_from_slice(&random_bytes::<8>());
        let mac = self.challenge_mac(address, &c[..16]);
        c[16..].copy_from_slice(&mac);
        c
    }

    /// Whether `challenge` was issued here for `address` and has not expired.
    pub fn challenge_valid(&self, challenge: &[u8; 32], address: &Address, now: u64) -> bool {
        let mac = self.challenge_mac(address, &challenge[..16]);
        // Constant time: a byte-by-byte comparison would leak the MAC's prefix.
        let same = mac
            .iter()
            .zip(&challenge[16..])
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0;
        same && expiry(challenge) > now
    }

    /// Marks an answered challenge used: false when it was used before (or when the table
    /// is full of unexpired answers, which only verified logins fill).
    pub fn spend(&self, challenge: &[u8; 32], now: u64) -> bool {
        let Ok(mut spent) = self.spent.lock() else {
            return false;
        };
        if spent.len() >= MAX_SPENT {
            spent.retain(|_, exp| *exp > now);
            if spent.len() >= MAX_SPENT {
                return false;
            }
        }
        spent.insert(*challenge, expiry(challenge)).is_none()
    }

    /// Issues a token for `session` (its expiry set here). An account holds at most
    /// [`MAX_TOKENS_PER_ACCOUNT`]: its oldest goes. `None` when the table is full of live
    /// tokens.
    pub fn issue(&self, mut session: Session, now: u64) -> Option<(String, u64)> {
        let mut t = self.tokens.lock().ok()?;
        let Tokens {
            by_hash,
            by_account,
        } = &mut *t;
        if by_hash.len() >= MAX_TOKENS {
            by_hash.retain(|_, s| s.expires > now);
            by_account.retain(|_, list| {
                list.retain(|h| by_hash.contains_key(h));
                !list.is_empty()
            });
            if by_hash.len() >= MAX_TOKENS {
                return None;
            }
        }
        let raw: [u8; 32] = random_bytes();
        let token = format!("lm1_{}", hex(&raw));
        let expires = now + TOKEN_TTL;
        session.expires = expires;
        let list = by_account.entry(session.address.clone()).or_default();
        list.retain(|h| by_hash.get(h).is_some_and(|s| s.expires > now));
        while list.len() >= MAX_TOKENS_PER_ACCOUNT {
            if let Some(old) = list.pop_front() {
                by_hash.remove(&old);
            }
        }
        let h = hash(&token);
        list.push_back(h);
        by_hash.insert(h, session);
        Some((token, expires))
    }

    /// Ends every session of device `device` of `address` (the device was removed).
    pub fn end_device(&self, address: &Address, device: i64) {
        let Ok(mut t) = self.tokens.lock() else {
            return;
        };
        let Tokens {
            by_hash,
            by_account,
        } = &mut *t;
        if let Some(list) = by_account.get_mut(address) {
            list.retain(|h| {
                let other = by_hash.get(h).is_some_and(|s| s.device != device);
                if !other {
                    by_hash.remove(h);
                }
                other
            });
        }
    }

    pub fn session(&self, token: &str, now: u64) -> Result<Session, TokenError> {
        let t = self.tokens.lock().map_err(|_| TokenError::Invalid)?;
        match t.by_hash.get(&hash(token)) {
            None => Err(TokenError::Invalid),
            Some(s) if s.expires <= now => Err(TokenError::Expired),
            Some(s) => Ok(s.clone()),
        }
    }
}

/// Token buckets keyed by `K`: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, f64)>>,
    max_keys: usize,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        Self::with_rate(f64::from(rate.max(1)), burst, max_keys)
    }

    /// A limiter refilling `rate` tokens per second (fractions allowed: 0.5 is one every 2 s).
    pub fn with_rate(rate: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            rate: rate.max(1e-6),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// Takes one token at time `now` (seconds, fractional); false when empty.
    pub fn allow(&self, key: &K, now: f64) -> bool {
        self.allow_n(key, 1, now)
    }

    /// Takes `n` tokens at once; false (and none taken) when fewer are left.
    pub fn allow_n(&self, key: &K, n: u32, now: f64) -> bool {
        let Ok(mut map) = self.buckets.lock() else {
            return false;
        };
        if map.len() >= self.max_keys && !map.contains_key(key) {
            // Drop buckets that have refilled completely; they carry no state.
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| *tokens + (now - *at) * rate < burst);
            if map.len() >= self.max_keys {
                return false;
            }
        }
        let (tokens, at) = map.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + (now - *at).max(0.0) * self.rate).min(self.burst);
        *at = now;
        let n = f64::from(n);
        if *tokens >= n {
            *tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_bound_to_the_address_and_expire_and_answers_are_single_use() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let b = Address::parse("b@x.test").unwrap();
        let c = auth.challenge(&a, 100);
        assert!(!auth.challenge_valid(&c, &b, 100));
        assert!(auth.challenge_valid(&c, &a, 100));
        assert!(!auth.challenge_valid(&c, &a, 100 + CHALLENGE_TTL));
        let mut forged = c;
        forged[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(
            !auth.challenge_valid(&forged, &a, 100),
            "the expiry is under the MAC"
        );
        assert!(auth.spend(&c, 100));
        assert!(
            !auth.spend(&c, 100),
            "an answered challenge is not taken twice"
        );
        assert!(
            !Auth::default().challenge_valid(&c, &a, 100),
            "another start, another key"
        );
    }

    /// Login cannot be locked by asking for challenges: any number of them fill nothing,
    /// and a fresh one still verifies.
    #[test]
    fn a_flood_of_challenges_does_not_stop_a_fresh_login() {
        let auth = Auth::default();
        let victim = Address::parse("victim@x.test").unwrap();
        let strangers: Vec<Address> = (0..1000)
            .map(|i| Address::parse(&format!("u{i}@x.test")).unwrap())
            .collect();
        // More than the 100,000 outstanding challenges the old table held.
        for i in 0..150_000 {
            let _ = auth.challenge(&strangers[i % 1000], 100);
        }
        let c = auth.challenge(&victim, 100);
        assert!(auth.challenge_valid(&c, &victim, 100) && auth.spend(&c, 100));
    }

    #[test]
    fn an_account_keeps_its_newest_tokens_only() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let tokens: Vec<String> = (0..MAX_TOKENS_PER_ACCOUNT + 3)
            .map(|_| auth.issue(session(&a, 1), 100).unwrap().0)
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(auth.session(t, 100).is_ok(), i >= 3, "token {i}");
        }
        let b = Address::parse("b@x.test").unwrap();
        let other = auth.issue(session(&b, 1), 100).unwrap().0;
        assert!(auth.session(&other, 100).is_ok());
    }

    fn session(address: &Address, device: i64) -> Session {
        Session {
            address: address.clone(),
            identity_key: IdentityPublicKey([0; 32]),
            device,
            device_key: IdentityPublicKey([device as u8; 32]),
            expires: 0,
        }
    }

    /// A removed device is logged out at once; the account's other devices are not.
    #[test]
    fn ending_a_device_ends_its_sessions_only() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let first = auth.issue(session(&a, 1), 100).unwrap().0;
        let second = auth.issue(session(&a, 2), 100).unwrap().0;
        let again = auth.issue(session(&a, 2), 100).unwrap().0;
        auth.end_device(&a, 2);
        assert!(auth.session(&first, 100).is_ok());
        assert_eq!(auth.session(&second, 100).unwrap_err(), TokenError::Invalid);
        assert_eq!(auth.session(&again, 100).unwrap_err(), TokenError::Invalid);
        let later = auth.issue(session(&a, 1), 100).unwrap().0;
        assert!(auth.session(&later, 100).is_ok());
    }

    #[test]
    fn tokens_expire() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let (t, exp) = auth.issue(session(&a, 1), 100).unwrap();
        assert_eq!(auth.session(&t, 100).unwrap().address, a);
        assert_eq!(auth.session(&t, exp).unwrap_err(), TokenError::Expired);
        assert_eq!(
            auth.session("lm1_nope", 100).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn rate_limiter_refills() {
        let rl = RateLimiter::new(1, 2, 10);
        assert!(rl.allow(&1, 0.0));
        assert!(rl.allow(&1, 0.0));
        assert!(!rl.allow(&1, 0.0));
        assert!(rl.allow(&2, 0.0));
        assert!(rl.allow(&1, 1.0));
    }
}
