//! What the HTTP API, the federation listener and the background tasks share: one value
//! built at start (`serve`) and handed to each of them.

use std::net::IpAddr;
use std::sync::Arc;

use letterme_protocol::{Address, SigningKeypair};
use tokio::sync::Notify;

use crate::auth::{Auth, RateLimiter};
use crate::clock::Clock;
use crate::config::Config;
use crate::federation::Federation;
use crate::kt::KtState;
use crate::metrics::Metrics;
use crate::outbound::OutboundState;
use crate::store::Store;

/// The server's shared state.
pub struct AppState {
    pub config: Config,
    pub domain_key: SigningKeypair,
    pub store: Store,
    pub auth: Auth,
    /// Device-linking exchanges in progress.
    pub links: crate::link::LinkSlots,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub lookup_limit: RateLimiter<Address>,
    /// Registration and login, per client prefix (`letterme_protocol::net::client_prefix`).
    pub ip_limit: RateLimiter<IpAddr>,
    /// Deliveries to other domains queued, per user (`limits.remote_per_minute`).
    pub remote_limit: RateLimiter<Address>,
    /// Set when `[federation] listen` is configured.
    pub federation: Option<Arc<Federation>>,
    /// Wakes the federation queue after mail for another domain is queued.
    pub federation_wake: Arc<Notify>,
    /// Set when `[outbound] mode` is relay or notice.
    pub outbound: Option<Arc<OutboundState>>,
    /// The key-transparency log.
    pub kt: Arc<KtState>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}
