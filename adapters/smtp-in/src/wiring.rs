//! Wiring the inbound SMTP adapter to a running native server and its config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use letterme_policy::{AllowEntry, DmarcMode};
use letterme_server::{Config, Running};

use letterme_smtp::driver::{BackendConfig, ConnLimits, serve};
use letterme_smtp::session::{Limits, SessionConfig};

use crate::server::SmtpIn;
use crate::verify::{DnsSettings, authenticator};

/// Why the SMTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot listen for SMTP on {addr} (is another server running there?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot set up DNS for SMTP verification: {0}")]
    Dns(String),
    #[error(transparent)]
    Tls(#[from] letterme_server::tls::TlsError),
}

type Result<T> = std::result::Result<T, StartError>;

/// Binds the SMTP listener and serves it under the server's one shutdown
/// ([`Running::spawn`]). Returns the bound address.
pub async fn start(config: &Config, server: &Running, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let dmarc: DmarcMode = config.policy.dmarc;
    let allow = config
        .policy
        .allow
        .iter()
        .map(|a| {
            Ok(AllowEntry {
                name: a.name.clone(),
                networks: a
                    .networks
                    .iter()
                    .map(|n| letterme_server::config::parse_cidr(n).map_err(StartError::Config))
                    .collect::<Result<Vec<_>>>()?,
                spf_domains: a
                    .spf_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let auth = authenticator(&DnsSettings {
        nameservers: config.dns.nameservers.clone(),
        timeout: Duration::from_millis(config.dns.timeout_ms),
        attempts: config.dns.attempts,
    })
    .map_err(StartError::Dns)?;
    let tls = tls_acceptor(config)?;
    let smtp = Arc::new(SmtpIn {
        smtp: BackendConfig {
            session: SessionConfig {
                hostname: config
                    .smtp
                    .hostname
                    .clone()
                    .unwrap_or_else(|| config.domain.clone()),
                domain: config.domain.clone(),
                limits: Limits {
                    max_message: usize::try_from(config.smtp.max_message_size.0)
                        .unwrap_or(usize::MAX),
                    max_recipients: config.smtp.max_recipients,
                    ..Limits::default()
                },
                tls_available: tls.is_some(),
                auth: None,
            },
            conn: ConnLimits {
                max_sessions: config.smtp.max_sessions,
                max_sessions_per_ip: config.smtp.max_sessions_per_ip,
                command_timeout: Duration::from_secs(config.smtp.command_timeout.0),
                session_timeout: Duration::from_secs(config.smtp.session_timeout.0),
                min_data_rate: config.smtp.min_data_rate,
                ..ConnLimits::default()
            },
            tls,
        },
        store: server.store.clone(),
        domain_key: server.domain_signing_key().clone(),
        authenticator: auth,
        dmarc,
        allow,
        quota: config.limits.quota.0,
        clock: server.clock.clone(),
        metrics: server.metrics(),
    });
    server.spawn(|stop| serve(listener, smtp, stop));
    Ok(local)
}

/// STARTTLS uses the HTTP listener's certificate, or the one `init` generated.
fn tls_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let (cert, key) = match &config.http.tls {
        Some(t) => (t.cert.clone(), t.key.clone()),
        None => (
            config.data_dir.join("tls/cert.pem"),
            config.data_dir.join("tls/key.pem"),
        ),
    };
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let base = letterme_server::tls::server_config(&cert, &key)?;
    let mut tls = (*base).clone();
    tls.alpn_protocols.clear();
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}
