//! How many body bytes the federation listener holds at once (issue 15.2): a request's
//! body is read only after its signature headers verified, and only into a reservation
//! from a global budget and its origin's share of it. A refused reservation is a `503`
//! the peer retries; nothing is buffered for a request that is not signed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use letterme_protocol::federation::MIN_ACCEPTED_BODY;

/// A body must arrive within this long plus a second per [`MIN_BODY_RATE`] bytes.
pub const BODY_GRACE: Duration = Duration::from_secs(30);
/// The slowest rate, in bytes per second, at which a peer may send a body.
pub const MIN_BODY_RATE: u64 = 256 * 1024;

/// How long a body of `bytes` may take, receiving or sending.
pub fn body_deadline(bytes: u64) -> Duration {
    BODY_GRACE + Duration::from_secs(bytes / MIN_BODY_RATE)
}

/// The largest delivery body accepted: four envelopes of the largest size, at least
/// [`MIN_ACCEPTED_BODY`]. One origin may have this much in flight; all origins together
/// twice it.
pub fn max_batch_bytes(max_message_size: u64) -> u64 {
    max_message_size.saturating_mul(4).max(MIN_ACCEPTED_BODY)
}

/// In-flight body bytes, in all and per origin.
#[derive(Debug)]
pub struct BodyBudget {
    total: u64,
    per_origin: u64,
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    total: u64,
    /// Only origins with bytes in flight: its size is bounded by concurrent requests.
    by_origin: HashMap<String, u64>,
}

impl BodyBudget {
    pub fn new(total: u64, per_origin: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_origin,
            used: Mutex::default(),
        })
    }

    /// The budget for a server whose largest message is `max_message_size`.
    pub fn for_message_size(max_message_size: u64) -> Arc<Self> {
        let batch = max_batch_bytes(max_message_size);
        Self::new(batch.saturating_mul(2), batch)
    }

    /// Reserves `bytes` for `origin`; `None` when the origin's share or the whole budget
    /// would be exceeded.
    pub fn reserve(self: &Arc<Self>, origin: &str, bytes: u64) -> Option<Reservation> {
        let mut r = Reservation {
            budget: self.clone(),
            origin: origin.to_owned(),
            bytes: 0,
        };
        r.grow(bytes).then_some(r)
    }

    /// Bytes reserved now, in all.
    pub fn in_flight(&self) -> u64 {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// Bytes held for one request; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    origin: String,
    bytes: u64,
}

impl Reservation {
    /// Takes `more` bytes (for a body whose length was not declared); false, and nothing
    /// taken, when a limit would be exceeded.
    pub fn grow(&mut self, more: u64) -> bool {
        let b = &self.budget;
        let mut used = b.used.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = used.by_origin.get(&self.origin).copied().unwrap_or(0);
        if used.total.saturating_add(more) > b.total || mine.saturating_add(more) > b.per_origin {
            return false;
        }
        used.total += more;
        if more > 0 {
            *used.by_origin.entry(self.origin.clone()).or_insert(0) += more;
        }
        self.bytes += more;
        true
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        used.total -= self.bytes;
        if let Some(n) = used.by_origin.get_mut(&self.origin) {
            *n -= self.bytes;
            if *n == 0 {
                used.by_origin.remove(&self.origin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_origin_cannot_take_the_whole_budget_and_bytes_come_back() {
        let b = BodyBudget::new(100, 60);
        let a1 = b.reserve("a.test", 50).unwrap();
        assert!(b.reserve("a.test", 20).is_none(), "over a.test's share");
        let mut c = b.reserve("c.test", 40).unwrap();
        assert!(!c.grow(20), "over the whole budget");
        assert_eq!(b.in_flight(), 90);
        drop(a1);
        assert!(c.grow(20));
        drop(c);
        assert_eq!(b.in_flight(), 0);
        assert!(b.used.lock().unwrap().by_origin.is_empty());
    }
}
