//! The letter.me native server: accounts and attestation, key lookup, the ciphertext
//! message store, and its HTTP/JSON API.
//!
//! The server never sees plaintext: clients seal before they send and open after they sync.
//! It routes by the envelope's cleartext header (sender, recipients, size, time) and
//! acknowledges only what is committed to SQLite.

pub mod api;
pub mod auth;
pub mod config;
pub mod dns;
pub mod error;
pub mod federation;
pub mod init;
pub mod kt;
pub mod metrics;
pub mod notice;
pub mod outbound;
pub mod records;
pub mod secrets;
pub mod store;
pub mod tls;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use letterme_protocol::{IdentityPublicKey, SigningKeypair};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

use crate::secrets::Kek;
use crate::store::Store;

/// Version of the API and envelope format this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// How long in-flight requests may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a replaced domain key stays published for verification (seconds).
pub const DOMAIN_KEY_OVERLAP: u64 = 7 * 86_400;

/// How often the retention purge runs.
pub const PURGE_INTERVAL: Duration = Duration::from_hours(1);

/// The time source; injected so tests can move it.
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

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the database {path}")]
    Store {
        path: String,
        source: store::StoreError,
    },
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr} (is another server running there?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

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
    state: Arc<api::AppState>,
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
    let federation = match config.federation.listen {
        Some(addr) => Some(federation_setup(&config, &domain_key, clock.clone(), addr)?),
        None => None,
    };
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
    if let Some((fed, _)) = &federation {
        let _ = fed.kt.set(kt.clone());
    }
    let mail_keys = if config.outbound.mode == config::OutboundMode::Off {
        None
    } else {
        Some(Arc::new(
            load_mail_keys(&store, &config, clock.now()).await?,
        ))
    };
    let smtp_state = mail_keys.as_ref().map(|k| {
        Arc::new(outbound::api::OutboundState::new(
            &config.outbound,
            k,
            smtp_wake.clone(),
        ))
    });
    let limits = &config.limits;
    let state = Arc::new(api::AppState {
        lookup_limit: auth::RateLimiter::new(
            limits.key_lookups_per_second,
            limits.key_lookup_burst,
            100_000,
        ),
        ip_limit: auth::RateLimiter::new(20, 200, 100_000),
        domain_key: domain_key.clone(),
        store: store.clone(),
        auth: auth::Auth::default(),
        clock: clock.clone(),
        metrics: Arc::new(metrics::Metrics::default()),
        federation: federation.as_ref().map(|(f, _)| f.clone()),
        federation_wake: federation_wake.clone(),
        outbound: smtp_state,
        kt,
        config,
    });
    let (tx, mut rx) = watch::channel(false);
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
    let app = api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let task = if let Some(tls) = tls {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            let _ = rx.wait_for(|stop| *stop).await;
            stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
        });
        tokio::spawn(
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .handle(handle)
            .serve(app),
        )
    } else {
        let listener = TcpListener::from_std(listener).map_err(bind_err)?;
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    let mut federation_addr = None;
    let mut federation_queue = None;
    if let Some((fed, (listener, tls))) = federation {
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listener.local_addr().unwrap_or(local_addr),
            source,
        })?;
        federation_addr = Some(addr);
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let mut stop_rx = tx.subscribe();
        tokio::spawn(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
        });
        let app = federation::receive::router(state.clone());
        tokio::spawn(
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .handle(handle)
            .serve(app.into_make_service()),
        );
        let queue = Arc::new(federation::queue::FederationQueue::new(
            store.clone(),
            fed.clone(),
            clock.clone(),
            federation_wake.clone(),
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
        workers: std::sync::Mutex::default(),
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
pub async fn purge(state: &api::AppState) -> Result<store::PurgeStats, store::StoreError> {
    let now = state.clock.now();
    let retention = u64::from(state.config.policy.retention_days) * 86_400;
    // Replay records must outlive the clock-skew window in which an envelope is accepted.
    let seen_keep = retention.max(2 * api::MAX_CLOCK_SKEW + 3600);
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

async fn load_domain_key(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<SigningKeypair, StartError> {
    let (public, seed) = load_secret(store, config, "domain", now, || {
        let key = SigningKeypair::generate();
        tracing::info!(public = %key.public().to_base64(), "generated the domain key");
        Ok((
            key.public().0.to_vec(),
            zeroize::Zeroizing::new(key.secret_bytes().to_vec()),
        ))
    })
    .await?;
    Ok(keypair_from_seed(&public, &seed)?)
}

/// The Ed25519 keypair of a stored seed, checked against its stored public key.
fn keypair_from_seed(public: &[u8], seed: &[u8]) -> Result<SigningKeypair, secrets::SecretError> {
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    let key = SigningKeypair::from_secret_bytes(&seed);
    if key.public().0.as_slice() != public {
        return Err(secrets::SecretError::Malformed);
    }
    Ok(key)
}

/// The key of the log's VRF labels, generated on first use.
async fn load_vrf_key(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<letterme_protocol::kt::VrfKey, StartError> {
    let (_, secret) = load_secret(store, config, "kt-vrf", now, || {
        let key = letterme_protocol::kt::VrfKey::generate();
        Ok((
            key.public().to_vec(),
            zeroize::Zeroizing::new(key.to_bytes().to_vec()),
        ))
    })
    .await?;
    let bytes: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    letterme_protocol::kt::VrfKey::from_bytes(bytes)
        .ok_or_else(|| secrets::SecretError::Malformed.into())
}

/// Loads the DKIM keys and the queue key, generating each on first use.
pub async fn load_mail_keys(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<outbound::MailKeys, StartError> {
    let (ed25519_public, ed25519_seed) = load_secret(store, config, "dkim-ed25519", now, || {
        let key = SigningKeypair::generate();
        Ok((
            key.public().0.to_vec(),
            zeroize::Zeroizing::new(key.secret_bytes().to_vec()),
        ))
    })
    .await?;
    let (rsa_public, rsa_pkcs8) = load_secret(store, config, "dkim-rsa", now, || {
        let (private, public) = outbound::generate_rsa().map_err(StartError::Config)?;
        tracing::info!("generated the RSA DKIM key");
        Ok((public, private))
    })
    .await?;
    let (_, queue) = load_secret(store, config, "outbound-queue", now, || {
        Ok((
            Vec::new(),
            zeroize::Zeroizing::new(letterme_protocol::keys::random_bytes::<32>().to_vec()),
        ))
    })
    .await?;
    let queue: [u8; 32] = queue
        .as_slice()
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    Ok(outbound::MailKeys {
        ed25519_seed,
        ed25519_public,
        rsa_pkcs8,
        rsa_public,
        queue: outbound::QueueKey::new(queue),
    })
}

/// The DKIM public keys (Ed25519 raw, RSA SubjectPublicKeyInfo), read without the
/// key-encryption key; generated (which needs it) only when missing.
pub async fn mail_public_keys(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<(Vec<u8>, Vec<u8>), StartError> {
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let ed = store
        .server_key_row("dkim-ed25519")
        .await
        .map_err(store_err)?;
    let rsa = store.server_key_row("dkim-rsa").await.map_err(store_err)?;
    if let (Some(ed), Some(rsa)) = (ed, rsa) {
        return Ok((ed.0, rsa.0));
    }
    let keys = load_mail_keys(store, config, now).await?;
    Ok((keys.ed25519_public.clone(), keys.rsa_public.clone()))
}

type Secret = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// A server secret by name: (public part, secret), opened with the key-encryption key; on
/// first use generated, sealed and stored.
async fn load_secret(
    store: &Store,
    config: &Config,
    name: &'static str,
    now: u64,
    generate: impl FnOnce() -> Result<Secret, StartError>,
) -> Result<Secret, StartError> {
    let key_file = config.key_file();
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    if let Some((public, sealed, kdf)) = store.server_key(name).await.map_err(store_err)? {
        let kek = Kek::for_existing(&kdf, &key_file)?;
        return Ok((public, kek.open(&sealed)?));
    }
    let (public, secret) = generate()?;
    let kek = Kek::for_new_key(&key_file)?;
    let sealed = kek.seal(&secret);
    store
        .put_server_key(name, public.clone(), sealed, kek.kdf.clone(), now)
        .await
        .map_err(store_err)?;
    Ok((public, secret))
}

/// Where the federation listener's certificate lives: `[http.tls]` when configured, else
/// `<data_dir>/tls/` (written by `letterme init`, or at the first start).
pub fn federation_tls(config: &Config) -> config::TlsConfig {
    config.http.tls.clone().unwrap_or_else(|| {
        let dir = config.data_dir.join("tls");
        config::TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    })
}

/// The federation certificate's files, created (self-signed for the domain and the
/// listen address) when missing.
pub fn ensure_federation_cert(config: &Config) -> Result<config::TlsConfig, StartError> {
    let tls_paths = federation_tls(config);
    if !tls_paths.cert.exists() {
        let mut names = vec![config.domain.clone()];
        if let Some(addr) = config.federation.listen
            && !addr.ip().is_unspecified()
        {
            names.push(addr.ip().to_string());
        }
        tls::generate_self_signed(&names, &tls_paths.cert, &tls_paths.key)?;
    }
    Ok(tls_paths)
}

type FederationListener = (std::net::TcpListener, Arc<rustls::ServerConfig>);

/// Loads (or creates) the federation certificate, binds its listener and builds the
/// federation state with a resolver on the configured nameservers.
fn federation_setup(
    config: &Config,
    domain_key: &SigningKeypair,
    clock: Arc<dyn Clock>,
    addr: SocketAddr,
) -> Result<(Arc<federation::Federation>, FederationListener), StartError> {
    let tls_paths = ensure_federation_cert(config)?;
    let fingerprint = tls::spki_fingerprint(&tls_paths.cert)?;
    let tls = federation::pin::server_config(&tls_paths.cert, &tls_paths.key)?;
    let resolver = dns::HickoryTxt::new(
        &config.dns.nameservers,
        Duration::from_millis(config.dns.timeout_ms),
        config.dns.attempts,
    )
    .map_err(StartError::Config)?;
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
    )
    .map_err(StartError::Config)?;
    Ok((Arc::new(fed), (listener, tls)))
}

/// A domain key to publish in `_mailx`, with a note on its role during a rotation.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    pub key: IdentityPublicKey,
    pub note: Option<String>,
}

/// The domain keys to publish now: the current one; the next one once generated; the
/// previous one for [`DOMAIN_KEY_OVERLAP`] after a switch.
pub async fn domain_keys(store: &Store, now: u64) -> Result<Vec<PublishedKey>, store::StoreError> {
    let mut out = Vec::new();
    let as_key = |b: &[u8]| b.try_into().ok().map(IdentityPublicKey);
    if let Some((public, _, _, _)) = store.server_key_row("domain").await?
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey { key, note: None });
    }
    if let Some((public, _, _, _)) = store.server_key_row("domain-next").await?
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey {
            key,
            note: Some(
                "next domain key (not in use yet): publish it now, `letterme domain-key activate` after the TTL"
                    .into(),
            ),
        });
    }
    if let Some((public, _, _, retired)) = store.server_key_row("domain-previous").await?
        && now < retired + DOMAIN_KEY_OVERLAP
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey {
            key,
            note: Some(format!(
                "previous domain key, still valid for verification: keep it published for {} more day(s)",
                (retired + DOMAIN_KEY_OVERLAP - now).div_ceil(86_400)
            )),
        });
    }
    Ok(out)
}

/// Generates the next domain key (sealed like the current one) for publication before use.
pub async fn domain_key_next(config: &Config, now: u64) -> Result<IdentityPublicKey, StartError> {
    let store = open_store(config)?;
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let Some((_, _, kdf, _)) = store.server_key_row("domain").await.map_err(store_err)? else {
        return Err(StartError::Config(
            "there is no domain key yet; run `letterme init` or start the server once".into(),
        ));
    };
    if let Some((public, _, _, _)) = store
        .server_key_row("domain-next")
        .await
        .map_err(store_err)?
    {
        return Err(StartError::Config(format!(
            "a next domain key ({}) exists already; publish it and run `letterme domain-key activate`",
            letterme_protocol::b64::encode(&public)
        )));
    }
    let kek = Kek::for_existing(&kdf, &config.key_file())?;
    let key = SigningKeypair::generate();
    store
        .put_server_key(
            "domain-next",
            key.public().0.to_vec(),
            kek.seal(&*key.secret_bytes()),
            kdf,
            now,
        )
        .await
        .map_err(store_err)?;
    tracing::info!(public = %key.public().to_base64(), "generated the next domain key");
    Ok(key.public())
}

/// Switches to the next domain key: the current key becomes the previous one (published
/// for [`DOMAIN_KEY_OVERLAP`]), every account is attested again with the new key, and the change
/// is appended to the key-transparency log, in one transaction. Run it with the server stopped; the server loads the key at start.
pub async fn domain_key_activate(
    config: &Config,
    now: u64,
) -> Result<(IdentityPublicKey, usize), StartError> {
    let store = open_store(config)?;
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let Some((public, sealed, kdf, _)) = store
        .server_key_row("domain-next")
        .await
        .map_err(store_err)?
    else {
        return Err(StartError::Config(
            "there is no next domain key; run `letterme domain-key next` and publish it first"
                .into(),
        ));
    };
    let seed = Kek::for_existing(&kdf, &config.key_file())?.open(&sealed)?;
    let key = keypair_from_seed(&public, &seed)?;
    let signer = key.clone();
    let n = store
        .switch_domain_key(signer, now)
        .await
        .map_err(store_err)?;
    tracing::info!(public = %key.public().to_base64(), accounts = n, "switched to the next domain key");
    Ok((key.public(), n))
}

fn open_store(config: &Config) -> Result<Store, StartError> {
    let path = config.database_path();
    Store::open(&path).map_err(|source| StartError::Store {
        path: path.display().to_string(),
        source,
    })
}
