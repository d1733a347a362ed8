//! The loop both queue workers run — the federation queue and the outbound SMTP adapter:
//! start what is due, then sleep until the next item is due, new mail is queued, a task
//! finishes or the server stops. Also the retry backoff they share, so neither reaches into
//! the other for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::store::StoreError;

/// The sleep when nothing is queued; no sleep between rounds is longer.
pub const IDLE: Duration = Duration::from_mins(5);
/// The sleep after reading the queue failed.
pub const AFTER_ERROR: Duration = Duration::from_secs(5);

/// A queue worker as the loop sees it.
pub trait Due: Send + Sync + 'static {
    /// Held around every [`Due::spawn_due`]: the background loop and [`run_due`] must not
    /// both claim work that neither has marked busy yet (it would be sent twice).
    fn claiming(&self) -> &tokio::sync::Mutex<()>;

    /// Claims due work that no task holds and starts a task for it; each task returns how
    /// many items it tried. Returns when the next not-yet-due item is due (Unix seconds).
    fn spawn_due(
        self: &Arc<Self>,
        tasks: &mut JoinSet<usize>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

/// Runs `worker` until `stop`. `failed` is logged when reading the queue fails.
pub async fn run<W: Due>(
    worker: &Arc<W>,
    clock: &dyn Clock,
    wake: &Notify,
    failed: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let claimed = {
            let _one_claimer = worker.claiming().lock().await;
            worker.spawn_due(&mut tasks).await
        };
        let sleep = match claimed {
            Ok(next) => sleep_until(next, clock.now()),
            Err(e) => {
                tracing::error!(error = %e, "{failed}");
                AFTER_ERROR
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Runs everything due now and waits for it; returns the sum of what the tasks tried.
pub async fn run_due<W: Due>(worker: &Arc<W>) -> Result<usize, StoreError> {
    let mut tasks = JoinSet::new();
    let mut n = 0;
    loop {
        {
            let _one_claimer = worker.claiming().lock().await;
            worker.spawn_due(&mut tasks).await?;
        }
        if tasks.is_empty() {
            return Ok(n);
        }
        while let Some(r) = tasks.join_next().await {
            n += r.unwrap_or(0);
        }
    }
}

/// How long to sleep at `now` when the next item is due at `next`: at least a second, at
/// most [`IDLE`], and [`IDLE`] when nothing is queued.
pub fn sleep_until(next: Option<u64>, now: u64) -> Duration {
    next.map_or(IDLE, |t| {
        Duration::from_secs(t.saturating_sub(now).clamp(1, IDLE.as_secs()))
    })
}

/// The delay before retry number `attempt` (1 for the first retry): `first` doubling up to
/// `max`, times `jitter` (a factor near 1, e.g. 0.9–1.1, so retries of many messages spread).
pub fn retry_delay(first: u64, max: u64, attempt: u32, jitter: f64) -> u64 {
    let doubled = first.saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
    let base = doubled.min(max) as f64;
    (base * jitter).round().max(1.0) as u64
}

/// A random factor in 0.9–1.1 for [`retry_delay`].
pub fn jitter() -> f64 {
    let r: [u8; 2] = letterme_protocol::keys::random_bytes();
    0.9 + 0.2 * f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_item_between_a_second_and_five_minutes() {
        assert_eq!(sleep_until(None, 1000), IDLE);
        assert_eq!(sleep_until(Some(1030), 1000), Duration::from_secs(30));
        assert_eq!(sleep_until(Some(1000), 1000), Duration::from_secs(1));
        assert_eq!(sleep_until(Some(10), 1000), Duration::from_secs(1));
        assert_eq!(sleep_until(Some(1000 + 3600), 1000), IDLE);
    }

    #[test]
    fn retries_double_from_a_minute_up_to_four_hours() {
        let d: Vec<u64> = (1..=10)
            .map(|n| retry_delay(60, 4 * 3600, n, 1.0))
            .collect();
        assert_eq!(
            d,
            vec![60, 120, 240, 480, 960, 1920, 3840, 7680, 14_400, 14_400]
        );
        assert_eq!(retry_delay(60, 4 * 3600, 200, 1.0), 14_400);
        assert_eq!(retry_delay(60, 4 * 3600, 1, 1.1), 66);
        assert_eq!(retry_delay(60, 4 * 3600, 1, 0.9), 54);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.9..=1.1).contains(&j), "{j}");
        }
    }
}
