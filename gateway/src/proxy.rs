//! `letterme proxy`: wires the sync engine, the local IMAP server and the local SMTP
//! submission together on loopback, with credentials and a certificate kept in the profile.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use letterme_client::Unlocked;
use letterme_client::profile::{ProfileDir, create_private_dir};
use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use letterme_proxy::credentials::Credentials;
use letterme_proxy::imap::{self, ImapProxy};
use letterme_proxy::submission::{self, Submission};
use letterme_smtp::driver::ConnLimits;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

/// `proxy.json` in the profile: the local login and where the proxy last listened.
#[derive(Serialize, Deserialize)]
struct ProxyState {
    password: String,
    imap: SocketAddr,
    smtp: SocketAddr,
}

struct Files {
    state: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn of(dir: &ProfileDir) -> Self {
        Self {
            state: dir.0.join("proxy.json"),
            cert: dir.0.join("proxy-cert.pem"),
            key: dir.0.join("proxy-key.pem"),
        }
    }
}

/// What `credentials --json` prints (DESIGN.md §3).
#[derive(Serialize)]
struct CredentialsView {
    imap: String,
    smtp: String,
    username: String,
    password: String,
    tls_fingerprint: String,
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Loads the proxy state, creating the password and certificate on first use.
fn ensure_state(dir: &ProfileDir) -> Result<ProxyState> {
    let files = Files::of(dir);
    if !dir.exists() {
        // The same one-line error as every other client command.
        dir.load()?;
    }
    create_private_dir(&dir.0).with_context(|| format!("cannot use {}", dir.0.display()))?;
    let state = match std::fs::read(&files.state) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; delete it to get a new proxy password",
                files.state.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = ProxyState {
                password: hex(&random_bytes::<16>()),
                imap: "127.0.0.1:1143".parse().expect("valid"),
                smtp: "127.0.0.1:1025".parse().expect("valid"),
            };
            write_private(&files.state, &serde_json::to_vec_pretty(&state)?)?;
            state
        }
        Err(e) => bail!("cannot read {}: {e}", files.state.display()),
    };
    if !files.cert.exists() {
        let _ = std::fs::remove_file(&files.key);
        letterme_server::tls::generate_self_signed(
            &[
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ],
            &files.cert,
            &files.key,
        )
        .context("cannot create the proxy's TLS certificate")?;
    }
    Ok(state)
}

pub fn credentials(dir: &ProfileDir, json: bool) -> Result<()> {
    let profile = dir.load()?;
    let state = ensure_state(dir)?;
    let view = CredentialsView {
        imap: state.imap.to_string(),
        smtp: state.smtp.to_string(),
        username: profile.address.to_string(),
        password: state.password,
        tls_fingerprint: letterme_server::tls::cert_sha256(&Files::of(dir).cert)?,
    };
    if json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        println!(
            "IMAP server:     {} (STARTTLS or none; loopback only)",
            view.imap
        );
        println!(
            "SMTP server:     {} (STARTTLS or none; loopback only)",
            view.smtp
        );
        println!("Username:        {}", view.username);
        println!("Password:        {}", view.password);
        println!("TLS certificate: SHA-256 {}", view.tls_fingerprint);
    }
    Ok(())
}

fn check_loopback(addr: SocketAddr, flag: &str) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "{flag} {addr} is not a loopback address; the proxy serves decrypted mail and listens on 127.0.0.1 or ::1 only"
        );
    }
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what}; is another `letterme proxy` running? (choose another port with --{}-listen)", what.to_ascii_lowercase())
    })
}

pub async fn run(
    dir: ProfileDir,
    imap: SocketAddr,
    smtp: SocketAddr,
    allow_plaintext: bool,
) -> Result<()> {
    check_loopback(imap, "--imap-listen")?;
    check_loopback(smtp, "--smtp-listen")?;
    let mut state = ensure_state(&dir)?;
    let me = Arc::new(crate::unlock(dir.clone())?);
    let files = Files::of(&dir);
    let mut tls_config = (*letterme_server::tls::server_config(&files.cert, &files.key)?).clone();
    tls_config.alpn_protocols.clear();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
    let imap_listener = bind(imap, "IMAP").await?;
    let smtp_listener = bind(smtp, "SMTP").await?;
    let (imap, smtp) = (imap_listener.local_addr()?, smtp_listener.local_addr()?);
    state.imap = imap;
    state.smtp = smtp;
    write_private(&files.state, &serde_json::to_vec_pretty(&state)?)?;

    let filed = me.backfill_cache()?;
    if filed > 0 {
        eprintln!("filed {filed} earlier synced message(s) for the mail client");
    }
    let sync = Unlocked::connect_shared(me.clone()).await?;
    let submit = Unlocked::connect_shared(me.clone()).await?;
    let creds = Credentials {
        username: me.profile.address.to_string(),
        password: state.password.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let imap_server = Arc::new(ImapProxy {
        cache: me.cache.clone(),
        credentials: creds.clone(),
        tls: Some(acceptor.clone()),
    });
    let submission = Arc::new(Submission {
        session: submission::session_config(
            "localhost",
            &me.profile.domain,
            Arc::new(creds),
            64 * 1024 * 1024,
        ),
        conn: ConnLimits {
            max_sessions: 32,
            max_sessions_per_ip: 32,
            ..ConnLimits::default()
        },
        tls: Some(acceptor),
        online: Arc::new(Mutex::new(submit)),
        allow_plaintext,
    });
    tokio::spawn(imap::serve(imap_listener, imap_server, stopped.clone()));
    tokio::spawn(letterme_smtp::driver::serve(
        smtp_listener,
        submission,
        stopped,
    ));
    tokio::spawn(sync_forever(sync));
    println!(
        "letterme proxy for {}: IMAP {imap}, SMTP {smtp}; `letterme proxy credentials` shows the login",
        me.profile.address
    );
    crate::shutdown_signal().await;
    let _ = stop.send(true);
    Ok(())
}

/// Keeps the cache in step with the server (long poll); survives the server being away.
async fn sync_forever(mut online: letterme_client::Online) {
    let mut backoff = Duration::from_secs(1);
    let mut progress = |done: usize, _: usize| {
        if done >= 1000 {
            tracing::info!(messages = done, "first sync in progress");
            eprintln!("synced {done} messages so far");
        }
    };
    loop {
        let mut report = |_: &Unlocked, r: &letterme_client::SyncReport| {
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
