//! `letterme proxy`: glue. The proxy crate keeps its state and serves; here the profile is
//! unlocked with the passphrase, the loopback certificate made with the server's TLS code,
//! and the proxy runs until the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use letterme_client::profile::ProfileDir;
use letterme_proxy::state::{self, CERT_NAMES, ProxyFiles, ProxyState, Side};
use letterme_proxy::{Listeners, Setup};
use tokio::sync::watch;

use crate::client_cmd::unlock;
use crate::output;

/// Loads the proxy state, creating the password and certificate on first use.
fn ensure_state(dir: &ProfileDir) -> Result<ProxyState> {
    let state = state::ensure_state(dir)?;
    let files = ProxyFiles::of(dir);
    if files.cert_missing() {
        let names = CERT_NAMES.map(str::to_owned);
        letterme_server::tls::generate_self_signed(&names, &files.cert, &files.key)
            .context("cannot create the proxy's TLS certificate")?;
    }
    Ok(state)
}

/// `letterme proxy credentials`.
pub fn credentials(dir: &ProfileDir, json: bool) -> Result<()> {
    let profile = dir.load()?;
    let state = ensure_state(dir)?;
    let fingerprint = letterme_server::tls::cert_sha256(&ProxyFiles::of(dir).cert)?;
    output::credentials(&profile.address, &state, &fingerprint, json)
}

/// `letterme proxy`.
pub async fn run(
    dir: ProfileDir,
    imap: SocketAddr,
    smtp: SocketAddr,
    allow_plaintext: bool,
    attachments: letterme_client::AttachmentDownload,
) -> Result<()> {
    state::check_loopback(imap, Side::Imap)?;
    state::check_loopback(smtp, Side::Smtp)?;
    let mut state = ensure_state(&dir)?;
    let me = Arc::new(unlock(dir.clone())?);
    let files = ProxyFiles::of(&dir);
    let mut tls_config = (*letterme_server::tls::server_config(&files.cert, &files.key)?).clone();
    tls_config.alpn_protocols.clear();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
    let listeners = Listeners::bind(imap, smtp).await?;
    (state.imap, state.smtp) = listeners.addrs()?;
    files.save(&state)?;

    let filed = me.backfill_cache()?;
    if filed > 0 {
        eprintln!("filed {filed} earlier synced message(s) for the mail client");
    }
    let (stop, stopped) = watch::channel(false);
    let setup = Setup {
        me: me.clone(),
        password: state.password.clone(),
        tls,
        allow_plaintext,
        attachments,
    };
    listeners.serve(setup, stopped).await?;
    output::proxy_listening(&me.profile.address, state.imap, state.smtp);
    crate::shutdown_signal().await;
    let _ = stop.send(true);
    Ok(())
}
