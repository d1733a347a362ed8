//! Starting and stopping the server: storage, the HTTP and federation listeners, the
//! workers, and one shutdown for all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use letterme_protocol::{IdentityPublicKey, SigningKeypair};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{self, Config};
use crate::egress::Egress;
use crate::error::StartError;
use crate::keyring::{load_domain_key, load_mail_keys, load_vrf_key};
use crate::listener::{self, ConnBounds};
use crate::state::AppState;
use crate::store::{self, Store};
use crate::{api, auth, dns, federation, kt, metrics, outbound, tls};

/// How long in-flight requests may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the retention purge runs.
pub const PURGE_INTERVAL: Duration = Duration::from_hours(1);

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub local_addr: SocketAddr,
    /// The server-to-server listener, when federation is on.
    pub federation_addr: Option<SocketAddr>,
    /// The federation queue's worker, when federation is on.
    pub federation_queue: Option<Arc<federation::queue::FederationQueue>>,
    /// The DKIM and queue keys, when `[outbound] mode` is not off.
    pub mail_keys: Option<Arc<outbound::MailKeys>>,
    /// Notified when mail is queued for SMTP delivery.
    pub smtp_wake: Arc<tokio::sync::Notify>,
    pub domain_key: IdentityPublicKey,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    signing: SigningKeypair,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// In-process adapters and workers started with [`Running::spawn`].
    workers: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests and the workers started with
    /// [`Running::spawn`] finish for up to [`SHUTDOWN_GRACE`], and returns. Nothing
    /// acknowledged is at risk: acknowledgements follow the commit.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        let mut workers = std::mem::take(
            &mut *self
                .workers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let all = async {
            let joined = (&mut self.task).await;
            while workers.join_next().await.is_some() {}
            joined
        };
        if let Ok(joined) = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), all).await
        {
            joined.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        } else {
            tracing::warn!("requests still running after the shutdown grace period; closing them");
            self.task.abort();
            workers.abort_all();
            Ok(())
        }
    }

    /// Runs an in-process adapter or worker (the inbound SMTP listener, outbound
    /// delivery) under the server's one shutdown: `task` gets [`Running::shutdown_signal`],
    /// and [`Running::shutdown`] waits for it within the grace period.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.shutdown_signal());
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(fut);
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::select! {
            joined = &mut self.task => joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            () = signal => {
                tracing::info!("shutting down");
                self.shutdown().await
            }
        }
    }

    /// The server's metrics, for in-process adapters to report into.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.state.metrics.clone()
    }

    /// The domain's signing key, for in-process adapters that seal as the domain.
    pub fn domain_signing_key(&self) -> &SigningKeypair {
        &self.signing
    }

    /// The server's configuration, as it runs.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// A receiver that turns true when the server shuts down, for in-process workers.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The federation state, when federation is on.
    pub fn federation(&self) -> Option<&Arc<federation::Federation>> {
        self.state.federation.as_ref()
    }

    /// Runs the retention purge now (it also runs every [`PURGE_INTERVAL`]).
    pub async fn purge_now(&self) -> Result<store::PurgeStats, store::StoreError> {
        purge(&self.state).await
    }
}

/// Opens storage, loads (or on first start generates) the domain key, binds the listener
/// and serves until shut down.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let config = config.normalized();
    let (store, domain_key) = open_storage(&config, clock.now()).await?;
    let tls = match &config.http.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    let listen = config.http.listen;
    let bind_err = move |source| StartError::Bind {
        addr: listen,
        source,
    };
    let listener = std::net::TcpListener::bind(config.http.listen).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    let has_tls = config.http.tls.is_some();
    let federation_wake = Arc::new(tokio::sync::Notify::new());
    let smtp_wake = Arc::new(tokio::sync::Notify::new());
    let kt = Arc::new(
        kt::KtState::load(&store, load_vrf_key(&store, &config, clock.now()).await?)
            .await
            .map_err(|source| StartError::Store {
                path: config.database_path().display().to_string(),
                source,
            })?,
    );
    let federation = match config.federation.listen {
        Some(addr) => Some(federation_setup(
            &config,
            &domain_key,
            clock.clone(),
            kt.clone(),
            addr,
        )?),
        None => None,
    };
    let mail_keys = if config.outbound.mode == config::OutboundMode::Off {
        None
    } else {
        Some(Arc::new(
            load_mail_keys(&store, &config, clock.now()).await?,
        ))
    };
    let smtp_state = mail_keys.as_ref().map(|k| {
        Arc::new(outbound::OutboundState::new(
            &config.outbound,
            k,
            smtp_wake.clone(),
        ))
    });
    let limits = &config.limits;
    let state = Arc::new(AppState {
        lookup_limit: auth::RateLimiter::new(
            limits.key_lookups_per_second,
            limits.key_lookup_burst,
            100_000,
        ),
        ip_limit: auth::RateLimiter::new(20, 200, 100_000),
        remote_limit: auth::RateLimiter::with_rate(
            f64::from(limits.remote_per_minute) / 60.0,
            limits.remote_burst,
            100_000,
        ),
        domain_key: domain_key.clone(),
        store: store.clone(),
        auth: auth::Auth::default(),
        links: crate::link::LinkSlots::default(),
        clock: clock.clone(),
        metrics: Arc::new(metrics::Metrics::default()),
        federation: federation.as_ref().map(|(f, _)| f.clone()),
        federation_wake: federation_wake.clone(),
        outbound: smtp_state,
        kt,
        config,
    });
    let (tx, _rx) = watch::channel(false);
    let purge_state = state.clone();
    let mut purge_rx = tx.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = purge(&purge_state).await; }
                _ = purge_rx.changed() => break,
            }
        }
    });
    let bounds = ConnBounds::from_limits(&state.config.limits);
    let task = tokio::spawn(listener::serve(
        "api",
        TcpListener::from_std(listener).map_err(bind_err)?,
        tls.map(tokio_rustls::TlsAcceptor::from),
        api::router(state.clone()),
        bounds.clone(),
        state.metrics.clone(),
        tx.subscribe(),
    ));
    let mut federation_addr = None;
    let mut federation_queue = None;
    // The federation listener runs under the same shutdown as the workers.
    let mut workers = tokio::task::JoinSet::new();
    if let Some((fed, (listener, tls))) = federation {
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listener.local_addr().unwrap_or(local_addr),
            source,
        })?;
        federation_addr = Some(addr);
        // A peer's largest body may take its whole allowance, and the answer is signed:
        // the request deadline leaves room for both.
        let max_body = federation::budget::max_batch_bytes(state.config.limits.max_message_size.0);
        let fed_bounds = ConnBounds {
            request_timeout: bounds
                .request_timeout
                .max(federation::budget::body_deadline(max_body) + Duration::from_mins(1)),
            ..bounds
        };
        let serving = listener::serve(
            "federation",
            TcpListener::from_std(listener).map_err(|source| StartError::Bind { addr, source })?,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            api::peer::router(state.clone()),
            fed_bounds,
            state.metrics.clone(),
            tx.subscribe(),
        );
        workers.spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "the federation listener stopped");
            }
        });
        let queue = Arc::new(federation::queue::FederationQueue::new(
            store.clone(),
            fed.clone(),
            clock.clone(),
            federation_wake.clone(),
            state.metrics.blob_chunks_sent.clone(),
        ));
        tokio::spawn(queue.clone().run(tx.subscribe()));
        federation_queue = Some(queue);
        tracing::info!(%addr, endpoint = %fed.endpoint, "federation listening (TLS 1.3)");
    }
    tracing::info!(addr = %local_addr, tls = has_tls, "native server listening");
    Ok(Running {
        federation_addr,
        federation_queue,
        mail_keys,
        smtp_wake,
        local_addr,
        domain_key: domain_key.public(),
        store,
        clock: clock.clone(),
        signing: domain_key.clone(),
        state,
        shutdown: tx,
        task,
        workers: std::sync::Mutex::new(workers),
    })
}

/// Validates the config, creates the data directory, opens the database (applying
/// migrations) and loads the domain key, generating it on first start.
pub async fn open_storage(
    config: &Config,
    now: u64,
) -> Result<(Store, SigningKeypair), StartError> {
    config.validate().map_err(StartError::Config)?;
    if config.domain != config.clone().normalized().domain {
        return Err(StartError::Config(format!(
            "domain {:?} must be lower case",
            config.domain
        )));
    }
    create_private_dir(&config.data_dir)?;
    let db_path = config.database_path();
    let store = Store::open(&db_path).map_err(|source| StartError::Store {
        path: db_path.display().to_string(),
        source,
    })?;
    let domain_key = load_domain_key(&store, config, now).await?;
    Ok((store, domain_key))
}

/// Deletes deliveries older than `policy.retention_days`.
pub async fn purge(state: &AppState) -> Result<store::PurgeStats, store::StoreError> {
    let now = state.clock.now();
    let retention = u64::from(state.config.policy.retention_days) * 86_400;
    // Replay records must outlive the window in which an envelope is accepted: a day either
    // way from the API, up to `MAX_ENVELOPE_AGE` old from a peer.
    let seen_keep = retention.max(api::MAX_ENVELOPE_AGE + api::MAX_CLOCK_SKEW + 3600);
    let stats = state
        .store
        .purge(now.saturating_sub(retention), now.saturating_sub(seen_keep))
        .await?;
    if stats.deliveries > 0 {
        tracing::info!(deliveries = stats.deliveries, "retention purge");
    }
    if state.federation.is_some() {
        state
            .store
            .purge_federation(now.saturating_sub(seen_keep))
            .await?;
    }
    let blobs = state
        .store
        .purge_blobs(now.saturating_sub(store::BLOB_UPLOAD_KEEP))
        .await?;
    if blobs > 0 {
        tracing::info!(blobs, "purged blobs no message refers to");
    }
    state.metrics.purged.inc_by(stats.deliveries as u64);
    Ok(stats)
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

type FederationListener = (std::net::TcpListener, Arc<rustls::ServerConfig>);

/// Loads (or creates) the federation certificate, binds its listener and builds the
/// federation state with a resolver on the configured nameservers.
fn federation_setup(
    config: &Config,
    domain_key: &SigningKeypair,
    clock: Arc<dyn Clock>,
    kt: Arc<kt::KtState>,
    addr: SocketAddr,
) -> Result<(Arc<federation::Federation>, FederationListener), StartError> {
    let tls_paths = tls::ensure_federation_cert(config)?;
    let fingerprint = tls::spki_fingerprint(&tls_paths.cert)?;
    let tls = federation::pin::server_config(&tls_paths.cert, &tls_paths.key)?;
    let resolver = dns::HickoryTxt::new(
        &config.dns.nameservers,
        Duration::from_millis(config.dns.timeout_ms),
        config.dns.attempts,
    )
    .map_err(StartError::Config)?;
    let mail_dns = dns::HickoryMailDns::new(
        &config.dns.nameservers,
        Duration::from_millis(config.dns.timeout_ms),
        config.dns.attempts,
    )
    .map_err(StartError::Config)?;
    let egress = Egress::new(Arc::new(mail_dns), config.network.allow_private_addresses);
    let bind_err = move |source| StartError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let endpoint = config.federation.public_url.clone().map_or_else(
        || format!("https://{bound}"),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let fed = federation::Federation::new(
        &config.domain,
        domain_key.clone(),
        endpoint,
        Some(fingerprint),
        config.federation.clone(),
        Arc::new(resolver),
        clock,
        kt,
        egress,
    )
    .map_err(StartError::Config)?;
    Ok((Arc::new(fed), (listener, tls)))
}
