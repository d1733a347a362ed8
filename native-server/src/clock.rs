//! The time source, injected so tests can move it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The time source.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Unix seconds.
    fn now(&self) -> u64;
    /// Unix seconds with a fraction, for rate limiting.
    fn now_f64(&self) -> f64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn now_f64(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}
