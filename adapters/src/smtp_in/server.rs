//! The tokio driver for inbound SMTP: accepts connections within session limits, feeds
//! bytes to the [`Session`] core, answers its events (recipient checks, verification,
//! policy, sealing, STARTTLS) and writes replies. `250` only after the sealed envelope is
//! committed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letterme_policy::{AllowEntry, Decision, DmarcMode, decide};
use letterme_protocol::verdict::{DkimResult, DkimResults};
use letterme_protocol::{Address, SigningKeypair};
use letterme_server::Clock;
use letterme_server::store::Store;
use mail_auth::MessageAuthenticator;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::deliver::{DeliverError, Inbound, seal_and_store};
use super::session::{Event, Reply, Session, SessionConfig};
use super::verify::verify;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// RFC 5321 §4.5.3.2: at least 5 minutes for commands.
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.6: 10 minutes between DATA blocks.
    pub data_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_sessions: 512,
            max_sessions_per_ip: 20,
            command_timeout: Duration::from_mins(5),
            data_timeout: Duration::from_mins(10),
        }
    }
}

/// Everything a session needs.
pub struct SmtpIn {
    pub session: SessionConfig,
    pub conn: ConnLimits,
    pub store: Store,
    pub domain_key: SigningKeypair,
    pub authenticator: MessageAuthenticator,
    pub dmarc: DmarcMode,
    pub allow: Vec<AllowEntry>,
    pub quota: u64,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<letterme_server::metrics::Metrics>,
}

impl std::fmt::Debug for SmtpIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpIn")
            .field("hostname", &self.session.hostname)
            .field("dmarc", &self.dmarc)
            .finish_non_exhaustive()
    }
}

/// What the connection driver asks of the service behind it: the inbound MX here, the
/// proxy's local submission in `crate::submission`.
pub trait Backend: Send + Sync + 'static {
    fn session_config(&self) -> &SessionConfig;
    fn conn_limits(&self) -> &ConnLimits;
    fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor>;
    /// `Ok` accepts RCPT TO; the error is the reply.
    fn check_recipient(
        &self,
        s: &Session,
        rcpt: &Address,
    ) -> impl Future<Output = Result<(), Reply>> + Send;
    /// Takes the message; the reply is sent only after it is durably handled.
    fn accept_message(
        &self,
        s: &Session,
        tx: super::session::Transaction,
    ) -> impl Future<Output = Reply> + Send;
}

impl Backend for SmtpIn {
    fn session_config(&self) -> &SessionConfig {
        &self.session
    }
    fn conn_limits(&self) -> &ConnLimits {
        &self.conn
    }
    fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }
    async fn check_recipient(&self, _: &Session, rcpt: &Address) -> Result<(), Reply> {
        check_recipient(self, rcpt).await
    }
    async fn accept_message(&self, s: &Session, tx: super::session::Transaction) -> Reply {
        accept_message(self, s, tx).await
    }
}

/// Serves `listener` until `shutdown` turns true.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    smtp: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = smtp.conn_limits().clone();
    let sessions = Arc::new(Semaphore::new(conn.max_sessions));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "smtp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        };
        let smtp = smtp.clone();
        let per_ip = per_ip.clone();
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, "too many connections; try again later"));
            continue;
        };
        let ip = peer.ip().to_canonical();
        let admitted = per_ip.lock().is_ok_and(|mut m| {
            let n = m.entry(ip).or_insert(0);
            if *n >= conn.max_sessions_per_ip {
                false
            } else {
                *n += 1;
                true
            }
        });
        if !admitted {
            tokio::spawn(refuse(
                stream,
                "too many connections from your address; try again later",
            ));
            continue;
        }
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Err(e) = session(stream, peer, smtp.as_ref()).await {
                tracing::debug!(%peer, error = %e, "smtp session ended");
            }
            if let Ok(mut m) = per_ip.lock()
                && let Some(n) = m.get_mut(&ip)
            {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
            drop(permit);
        });
    }
}

async fn refuse(mut stream: TcpStream, why: &str) {
    let _ = stream
        .write_all(&Reply::new(421, "4.7.0", why).to_bytes())
        .await;
    let _ = stream.shutdown().await;
}

enum Outcome<S> {
    Closed,
    StartTls(S, Box<Session>),
}

async fn session<B: Backend>(stream: TcpStream, peer: SocketAddr, smtp: &B) -> std::io::Result<()> {
    let mut s = Session::new(
        SessionConfig {
            tls_available: smtp.tls().is_some(),
            ..smtp.session_config().clone()
        },
        peer.ip().to_canonical(),
    );
    let mut stream = stream;
    stream.write_all(&s.greeting().to_bytes()).await?;
    match run(stream, s, smtp).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(stream, next) => {
            s = *next;
            let Some(acceptor) = smtp.tls() else {
                return Ok(());
            };
            let tls =
                tokio::time::timeout(smtp.conn_limits().command_timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
            s.tls_started();
            match run(tls, s, smtp).await? {
                Outcome::Closed | Outcome::StartTls(..) => Ok(()),
            }
        }
    }
}

/// Reads, feeds, answers, writes — until the session closes or asks for TLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin, B: Backend>(
    mut stream: S,
    mut s: Session,
    smtp: &B,
) -> std::io::Result<Outcome<S>> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let timeout = if s.in_data() {
            smtp.conn_limits().data_timeout
        } else {
            smtp.conn_limits().command_timeout
        };
        let n = match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Err(_) => {
                stream
                    .write_all(&Reply::new(421, "4.4.2", "timeout; closing").to_bytes())
                    .await?;
                return Ok(Outcome::Closed);
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        let mut events = s.feed(&buf[..n]);
        loop {
            let mut resumed = false;
            for ev in events {
                match ev {
                    Event::Reply(r) => out.extend_from_slice(&r.to_bytes()),
                    Event::CheckRecipient(rcpt) => {
                        let result = smtp.check_recipient(&s, &rcpt).await;
                        out.extend_from_slice(&s.recipient_checked(rcpt, result).to_bytes());
                        resumed = true;
                    }
                    Event::Message(tx) => {
                        // The sender may be waiting for replies to pipelined commands.
                        stream.write_all(&out).await?;
                        out.clear();
                        let reply = smtp.accept_message(&s, tx).await;
                        out.extend_from_slice(&s.message_done(reply).to_bytes());
                        resumed = true;
                    }
                    Event::StartTls => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(Outcome::StartTls(stream, Box::new(s)));
                    }
                    Event::Close => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        let _ = stream.shutdown().await;
                        return Ok(Outcome::Closed);
                    }
                }
            }
            if !resumed {
                break;
            }
            events = s.resume();
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

async fn check_recipient(smtp: &SmtpIn, rcpt: &Address) -> Result<(), Reply> {
    match smtp.store.account(rcpt.to_string()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Reply::new(550, "5.1.1", format!("no such user: {rcpt}"))),
        Err(e) => {
            tracing::error!(error = %e, "recipient lookup failed");
            Err(Reply::new(
                451,
                "4.3.0",
                "temporary failure looking up the recipient",
            ))
        }
    }
}

async fn accept_message(smtp: &SmtpIn, s: &Session, tx: super::session::Transaction) -> Reply {
    let ip = s.peer;
    let verified = verify(
        &smtp.authenticator,
        &smtp.session.hostname,
        &tx.data,
        ip,
        &tx.helo,
        &tx.mail_from,
    )
    .await;
    let decision = decide(smtp.dmarc, &verified.evidence, &smtp.allow);
    let e = &verified.evidence;
    let dkim = DkimResults(
        e.dkim
            .iter()
            .map(|(result, domain)| DkimResult {
                result: *result,
                domain: domain.clone(),
            })
            .collect(),
    );
    let (quarantine, note) = match decision {
        Decision::Accept { note } => (false, note),
        Decision::Quarantine { note } => (true, note),
        Decision::Reject(r) | Decision::TempFail(r) => {
            smtp.metrics.smtp(if r.code >= 500 {
                "rejected"
            } else {
                "tempfailed"
            });
            tracing::info!(%ip, mail_from = %tx.mail_from, code = r.code, reason = %r.text, "smtp message refused");
            return Reply::new(r.code, r.enhanced, r.text);
        }
    };
    let size = tx.data.len();
    let rcpts = tx.recipients.len();
    let result = seal_and_store(
        &smtp.store,
        &smtp.session.domain,
        &smtp.session.hostname,
        &smtp.domain_key,
        smtp.quota,
        smtp.clock.now(),
        Inbound {
            raw: tx.data,
            mail_from: tx.mail_from.clone(),
            helo: tx.helo,
            client_ip: ip.to_string(),
            recipients: tx.recipients,
            authentication_results: verified.authentication_results,
            spf: e.spf_mail_from,
            dkim,
            dmarc: e.dmarc,
            quarantine,
            note,
            tls: s.is_tls(),
        },
    )
    .await;
    match result {
        Ok(()) => {
            smtp.metrics.smtp(if quarantine {
                "quarantined"
            } else {
                "accepted"
            });
            tracing::info!(%ip, mail_from = %tx.mail_from, rcpts, size, quarantine, "smtp message accepted and sealed");
            Reply::new(250, "2.0.0", "message sealed and stored")
        }
        Err(DeliverError::Quota(who)) => {
            Reply::new(452, "4.2.2", format!("mailbox of {who} is full"))
        }
        Err(DeliverError::UnknownUser(who)) => {
            Reply::new(550, "5.1.1", format!("no such user: {who}"))
        }
        Err(DeliverError::TooLarge) => Reply::new(552, "5.3.4", "message too large to store"),
        Err(e) => {
            tracing::error!(error = %e, "sealing or storing an inbound message failed");
            Reply::new(
                451,
                "4.3.0",
                "temporary local failure; nothing was stored, try again later",
            )
        }
    }
}
