//! `letterme proxy`, the user's side: serves the decrypted local cache of the client
//! library to the user's mail client on loopback — IMAP ([`imap`]) and SMTP submission
//! ([`submission`], on the shared core of `letterme-smtp`) — behind local
//! [`credentials`], with its password and addresses kept in the profile ([`state`]).
//! [`Listeners::serve`] wires them and the sync engine together under one stop signal.

pub mod credentials;
pub mod downloads;
pub mod imap;
pub mod state;
pub mod submission;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use letterme_client::{AttachmentDownload, ClientError, Online, SyncReport, Unlocked};
use letterme_smtp::driver::{BackendConfig, ConnLimits};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::credentials::Credentials;
use crate::downloads::Downloads;
use crate::imap::ImapProxy;
use crate::state::{ProxyError, Side};
use crate::submission::Submission;

/// Largest message the local submission takes.
const MAX_SUBMISSION: usize = 64 * 1024 * 1024;

/// The proxy's two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    imap: TcpListener,
    smtp: TcpListener,
}

/// What the proxy serves with. `Debug` never shows the password.
pub struct Setup {
    pub me: Arc<Unlocked>,
    /// The local password (`proxy.json`).
    pub password: String,
    pub tls: tokio_rustls::TlsAcceptor,
    /// Copies to ordinary addresses may leave end-to-end encryption (relay mode).
    pub allow_plaintext: bool,
    /// When a synced message's large attachments are downloaded.
    pub attachments: AttachmentDownload,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("address", &self.me.profile.address)
            .field("password", &"<redacted>")
            .field("allow_plaintext", &self.allow_plaintext)
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

impl Listeners {
    /// Binds IMAP, then SMTP submission.
    pub async fn bind(imap: SocketAddr, smtp: SocketAddr) -> Result<Self, ProxyError> {
        Ok(Self {
            imap: bind(imap, Side::Imap).await?,
            smtp: bind(smtp, Side::Smtp).await?,
        })
    }

    /// The bound IMAP and SMTP addresses.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.imap.local_addr()?, self.smtp.local_addr()?))
    }

    /// Connects the sync engine and the submission side, then serves IMAP, submission and
    /// a sync that keeps the cache current, until `stop` turns true.
    pub async fn serve(self, setup: Setup, stop: watch::Receiver<bool>) -> Result<(), ClientError> {
        let Setup {
            me,
            password,
            tls,
            allow_plaintext,
            attachments,
        } = setup;
        let mut sync = Unlocked::connect_shared(me.clone()).await?;
        sync.attachments = attachments;
        let submit = Unlocked::connect_shared(me.clone()).await?;
        let downloads = Arc::new(Downloads::new(Unlocked::connect_shared(me.clone()).await?));
        let creds = Credentials {
            username: me.profile.address.to_string(),
            password,
        };
        let imap_server = Arc::new(ImapProxy {
            cache: me.cache.clone(),
            credentials: creds.clone(),
            tls: Some(tls.clone()),
            downloads: Some(downloads.clone()),
        });
        let submission = Arc::new(Submission {
            smtp: BackendConfig {
                session: submission::session_config(
                    "localhost",
                    &me.profile.domain,
                    Arc::new(creds),
                    MAX_SUBMISSION,
                ),
                conn: ConnLimits {
                    max_sessions: 32,
                    max_sessions_per_ip: 32,
                    ..ConnLimits::default()
                },
                tls: Some(tls),
            },
            online: Arc::new(Mutex::new(submit)),
            allow_plaintext,
        });
        tokio::spawn(imap::serve(self.imap, imap_server, stop.clone()));
        tokio::spawn(letterme_smtp::driver::serve(
            self.smtp,
            submission,
            stop.clone(),
        ));
        // Messages a session asks for are downloaded on demand whatever the setting; with
        // `with-message` the sync downloads what an earlier run left waiting.
        if attachments != AttachmentDownload::WithMessage {
            let on_demand = attachments == AttachmentDownload::OnDemand;
            let api = sync.api.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let background = async {
                    let after = if on_demand {
                        on_demand_until(&api).await
                    } else {
                        Duration::ZERO
                    };
                    downloads.in_background(after).await;
                };
                tokio::select! {
                    () = background => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
        let state = Unlocked::connect_shared(me.clone()).await?;
        let mut stop_state = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = push_state_forever(state) => {}
                _ = stop_state.wait_for(|s| *s) => {}
            }
        });
        let mut stop = stop;
        tokio::spawn(async move {
            tokio::select! {
                () = sync_forever(sync) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        Ok(())
    }
}

/// How long an attachment nobody opened waits under `on-demand` before the background
/// downloads it: half the server's retention, after which the server would delete it with
/// its message (DECISIONS D76); at once when the server does not say. Asked until the
/// server answers (meanwhile only what a mail client reads is downloaded).
async fn on_demand_until(api: &letterme_client::http::Api) -> Duration {
    let mut backoff = Duration::from_secs(1);
    loop {
        match api.server_info().await {
            Ok(info) if info.retention_days > 0 => {
                return Duration::from_secs(u64::from(info.retention_days) * 86_400 / 2);
            }
            Ok(_) => {
                tracing::warn!(
                    "the server does not say how long it keeps mail: attachments are downloaded at once"
                );
                return Duration::ZERO;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot ask the server how long it keeps mail");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_mins(1));
            }
        }
    }
}

async fn bind(addr: SocketAddr, side: Side) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { side, addr, source })
}

/// Sends what the mail clients change (flags, moves, deletions, folders) to the account's
/// other devices as it is made (PROTOCOL.md §9.6); survives the server being away.
pub async fn push_state_forever(mut online: Online) {
    let mut changes = online.me.cache.changes();
    let mut backoff = Duration::from_secs(1);
    loop {
        changes.borrow_and_update();
        match online.push_state().await {
            Ok(_) => backoff = Duration::from_secs(1),
            Err(ClientError::Api { status: 401, .. }) => {
                if let Err(e) = online.relogin().await {
                    tracing::debug!(error = %e, "login failed");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot send mailbox changes to the other devices yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_mins(1));
                continue;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the cache in step with the server (long poll); survives the server being away.
pub async fn sync_forever(mut online: Online) {
    let mut backoff = Duration::from_secs(1);
    let mut progress = |done: usize, _: usize| {
        if done >= 1000 {
            tracing::info!(messages = done, "first sync in progress");
            eprintln!("synced {done} messages so far");
        }
    };
    loop {
        let mut report = |_: &Unlocked, r: &SyncReport| {
            tracing::info!(new = r.fetched, refused = r.refused.len(), "synced");
            for (id, reason) in &r.refused {
                tracing::warn!(%id, %reason, "a message failed verification and was set aside");
            }
        };
        let started = std::time::Instant::now();
        match online.watch(&mut progress, &mut report).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                if started.elapsed() > Duration::from_mins(2) {
                    // It had been working: start the backoff afresh.
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "sync failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_mins(1));
                if let Err(e) = online.relogin().await {
                    tracing::debug!(error = %e, "login failed");
                }
            }
        }
    }
}
