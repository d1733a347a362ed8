//! The tokio driver shared by every SMTP service: accepts connections within session
//! limits, feeds bytes to the sans-I/O [`Session`], asks the [`Backend`] (the inbound MX,
//! the proxy's local submission) about recipients and messages, and writes replies. The
//! backend's reply to a message is sent only after it has handled the message durably.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use letterme_protocol::Address;
use letterme_protocol::net::{Admission, Refused};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reply;
use crate::session::{Event, Reply, Session, SessionConfig, Transaction};

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_sessions: usize,
    /// Per client prefix (IPv4 /24, IPv6 /64: `client_prefix`).
    pub max_sessions_per_ip: usize,
    /// RFC 5321 §4.5.3.2: at least 5 minutes for commands.
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.6: 10 minutes between DATA blocks.
    pub data_timeout: Duration,
    /// Longest a session may last, however busy.
    pub session_timeout: Duration,
    /// Slowest average rate of a message's DATA, bytes per second, after
    /// `command_timeout` (Postfix's `smtpd_min_data_rate`): a message trickled slower is
    /// cut off with `421 4.4.2`.
    pub min_data_rate: u64,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_sessions: 512,
            max_sessions_per_ip: 20,
            command_timeout: Duration::from_mins(5),
            data_timeout: Duration::from_mins(10),
            session_timeout: Duration::from_hours(1),
            min_data_rate: 1000,
        }
    }
}

/// How a service's listener runs its sessions: what each session is told, the connection
/// limits, and the certificate STARTTLS offers (none: STARTTLS is not offered).
#[derive(Clone)]
pub struct BackendConfig {
    pub session: SessionConfig,
    pub conn: ConnLimits,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("hostname", &self.session.hostname)
            .field("conn", &self.conn)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What the connection driver asks of the service behind it: the inbound MX
/// (`letterme-smtp-in`) or the proxy's local submission (`letterme-proxy`).
pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> &BackendConfig;
    /// `Ok` accepts RCPT TO; the error is the reply.
    fn check_recipient(
        &self,
        s: &Session,
        rcpt: &Address,
    ) -> impl Future<Output = Result<(), Reply>> + Send;
    /// Takes the message; the reply is sent only after it is durably handled.
    fn accept_message(&self, s: &Session, tx: Transaction) -> impl Future<Output = Reply> + Send;
}

/// Serves `listener` until `shutdown` turns true.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    smtp: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = smtp.config().conn.clone();
    let admission = Admission::new(conn.max_sessions as u64, conn.max_sessions_per_ip as u64);
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
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(Refused::Full) => {
                tokio::spawn(refuse(stream, reply::TOO_MANY_CONNECTIONS));
                continue;
            }
            Err(Refused::Share) => {
                tokio::spawn(refuse(stream, reply::TOO_MANY_CONNECTIONS_FROM_YOU));
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Err(e) = session(stream, peer, smtp.as_ref()).await {
                tracing::debug!(%peer, error = %e, "smtp session ended");
            }
            drop(admitted);
        });
    }
}

async fn refuse(mut stream: TcpStream, why: Reply) {
    let _ = stream.write_all(&why.to_bytes()).await;
    let _ = stream.shutdown().await;
}

enum Outcome<S> {
    Closed,
    StartTls(S, Box<Session>),
}

async fn session<B: Backend>(stream: TcpStream, peer: SocketAddr, smtp: &B) -> std::io::Result<()> {
    let mut s = Session::new(
        SessionConfig {
            tls_available: smtp.config().tls.is_some(),
            ..smtp.config().session.clone()
        },
        peer.ip().to_canonical(),
    );
    let mut stream = stream;
    stream.write_all(&s.greeting().to_bytes()).await?;
    let mut pace = Pace::new(&smtp.config().conn);
    match run(stream, s, smtp, &mut pace).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(stream, next) => {
            s = *next;
            let Some(acceptor) = &smtp.config().tls else {
                return Ok(());
            };
            let tls =
                tokio::time::timeout(smtp.config().conn.command_timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
            s.tls_started();
            match run(tls, s, smtp, &mut pace).await? {
                Outcome::Closed | Outcome::StartTls(..) => Ok(()),
            }
        }
    }
}

/// The deadlines of one session: its whole length, each read, and a message's DATA at
/// no less than the minimum rate.
struct Pace {
    limits: ConnLimits,
    session_ends: Instant,
    /// While in DATA: when it began and the bytes received since.
    data: Option<(Instant, u64)>,
}

impl Pace {
    fn new(limits: &ConnLimits) -> Self {
        Self {
            limits: limits.clone(),
            session_ends: Instant::now() + limits.session_timeout,
            data: None,
        }
    }

    /// When the next read must have returned.
    fn next_read_by(&mut self, in_data: bool) -> Instant {
        let now = Instant::now();
        let l = &self.limits;
        let mut by = self.session_ends;
        if in_data {
            let (began, bytes) = *self.data.get_or_insert((now, 0));
            let allowed = l.command_timeout
                + Duration::from_secs_f64(bytes as f64 / l.min_data_rate.max(1) as f64);
            by = by.min(began + allowed).min(now + l.data_timeout);
        } else {
            self.data = None;
            by = by.min(now + l.command_timeout);
        }
        by
    }

    fn received(&mut self, n: usize) {
        if let Some((_, bytes)) = &mut self.data {
            *bytes += n as u64;
        }
    }
}

/// Reads, feeds, answers, writes — until the session closes or asks for TLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin, B: Backend>(
    mut stream: S,
    mut s: Session,
    smtp: &B,
    pace: &mut Pace,
) -> std::io::Result<Outcome<S>> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let by = pace.next_read_by(s.in_data());
        let n = match tokio::time::timeout_at(by, stream.read(&mut buf)).await {
            Err(_) => {
                stream.write_all(&reply::TIMEOUT_CLOSING.to_bytes()).await?;
                let _ = stream.shutdown().await;
                return Ok(Outcome::Closed);
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        pace.received(n);
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
