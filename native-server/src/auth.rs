//! Login challenges, bearer tokens and per-key rate limits, all in memory and bounded.
//!
//! Tokens are short-lived (15 minutes) and held only as SHA-256 hashes, so a memory dump
//! or a log line never yields a usable token. A restart simply makes clients log in again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use letterme_protocol::{Address, IdentityPublicKey};
use sha2::{Digest as _, Sha256};

/// Seconds a challenge may be answered in.
pub const CHALLENGE_TTL: u64 = 120;
/// Seconds a token lives.
pub const TOKEN_TTL: u64 = 15 * 60;
/// Outstanding challenges kept at most.
pub const MAX_CHALLENGES: usize = 100_000;
/// Live tokens kept at most.
pub const MAX_TOKENS: usize = 100_000;

/// Who a token belongs to.
#[derive(Debug, Clone)]
pub struct Session {
    pub address: Address,
    pub identity_key: IdentityPublicKey,
    pub expires: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

#[derive(Debug, Default)]
pub struct Auth {
    challenges: Mutex<HashMap<[u8; 32], (Address, u64)>>,
    tokens: Mutex<HashMap<[u8; 32], Session>>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// Issues a challenge for `address`, known or not (the answer looks the same).
    /// `None` when the table is full of live challenges.
    pub fn challenge(&self, address: &Address, now: u64) -> Option<[u8; 32]> {
        let mut map = self.challenges.lock().ok()?;
        if map.len() >= MAX_CHALLENGES {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= MAX_CHALLENGES {
                return None;
            }
        }
        let c = random_bytes();
        map.insert(c, (address.clone(), now + CHALLENGE_TTL));
        Some(c)
    }

    /// Consumes a challenge: true when it was issued for `address` and is still valid.
    pub fn take_challenge(&self, challenge: &[u8; 32], address: &Address, now: u64) -> bool {
        let Ok(mut map) = self.challenges.lock() else {
            return false;
        };
        matches!(map.remove(challenge), Some((a, exp)) if &a == address && exp > now)
    }

    /// Issues a token; `None` when the table is full of live tokens.
    pub fn issue(
        &self,
        address: Address,
        identity_key: IdentityPublicKey,
        now: u64,
    ) -> Option<(String, u64)> {
        let mut map = self.tokens.lock().ok()?;
        if map.len() >= MAX_TOKENS {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_TOKENS {
                return None;
            }
        }
        let raw: [u8; 32] = random_bytes();
        let token = format!("lm1_{}", hex(&raw));
        let expires = now + TOKEN_TTL;
        map.insert(
            hash(&token),
            Session {
                address,
                identity_key,
                expires,
            },
        );
        Some((token, expires))
    }

    pub fn session(&self, token: &str, now: u64) -> Result<Session, TokenError> {
        let map = self.tokens.lock().map_err(|_| TokenError::Invalid)?;
        match map.get(&hash(token)) {
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
    fn challenges_are_single_use_and_bound_to_the_address() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let b = Address::parse("b@x.test").unwrap();
        let c = auth.challenge(&a, 100).unwrap();
        assert!(!auth.take_challenge(&c, &b, 100));
        let c = auth.challenge(&a, 100).unwrap();
        assert!(auth.take_challenge(&c, &a, 100));
        assert!(!auth.take_challenge(&c, &a, 100));
        let c = auth.challenge(&a, 100).unwrap();
        assert!(!auth.take_challenge(&c, &a, 100 + CHALLENGE_TTL));
    }

    #[test]
    fn tokens_expire() {
        let auth = Auth::default();
        let a = Address::parse("a@x.test").unwrap();
        let (t, exp) = auth
            .issue(a.clone(), IdentityPublicKey([0; 32]), 100)
            .unwrap();
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
