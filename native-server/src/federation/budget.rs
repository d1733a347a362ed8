//! How many body bytes the federation listener holds at once (issue 15.2): a request's
//! body is read only after its signature headers verified, and only into a reservation
//! from a global budget and its origin's share of it. A refused reservation is a `503`
//! the peer retries; nothing is buffered for a request that is not signed.

use std::sync::Arc;
use std::time::Duration;

use letterme_protocol::federation::MIN_ACCEPTED_BODY;
use letterme_protocol::net::{Held, Shares};

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

/// In-flight body bytes, in all and per origin domain.
pub type BodyBudget = Shares<String>;
/// Bytes held for one request; given back when dropped.
pub type Reservation = Held<String>;

/// The budget for a server whose largest message is `max_message_size`: one largest
/// batch per origin, two in all.
pub fn body_budget(max_message_size: u64) -> Arc<BodyBudget> {
    let batch = max_batch_bytes(max_message_size);
    Shares::new(batch.saturating_mul(2), batch)
}
