//! The tokio driver for the IMAP proxy: accepts loopback connections, feeds bytes to
//! imap-next's server flow, hands commands to [`Session`], writes the answers, and runs
//! STARTTLS and IDLE.

use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::{Tag, Text};
use imap_codec::imap_types::response::{CommandContinuationRequest, Status};
use imap_next::server::{Error as FlowError, Event, Options, ResponseHandle, Server};
use imap_next::{Interrupt, Io, State as _};
use letterme_client::cache::Cache;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::extended;
use super::session::{Authenticate, FetchJob, Next, Out, Reply, Session};
use crate::credentials::Credentials;
use crate::downloads::Downloads;

/// Largest literal accepted (APPEND of one message).
pub const MAX_LITERAL: u32 = 64 * 1024 * 1024;
/// Concurrent IMAP connections (Thunderbird opens up to 5 per account); one more is
/// greeted with BYE and closed, so no local program can exhaust the proxy's descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// Idle connections are closed after this (RFC 3501 §5.4: at least 30 minutes).
const AUTOLOGOUT: Duration = Duration::from_mins(31);
/// Bytes a client may send before it has logged in: CAPABILITY, ID, STARTTLS and LOGIN
/// fit many times over; a literal of any size before login ends the connection with BYE,
/// so a stranger on the machine cannot make the proxy hold more (imap-next takes one
/// literal limit for the whole connection; issue 15.9).
pub const MAX_BEFORE_LOGIN: usize = 8 * 1024;
/// Largest command line without literals.
const MAX_COMMAND: u32 = MAX_LITERAL + 64 * 1024;

/// What every connection shares.
pub struct ImapProxy {
    pub cache: Arc<Cache>,
    pub credentials: Credentials,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Downloads the attachments a FETCH needs that are not downloaded yet.
    pub downloads: Option<Arc<Downloads>>,
}

impl std::fmt::Debug for ImapProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapProxy")
            .field("credentials", &self.credentials)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Accepts connections until `stop` turns true.
pub async fn serve(listener: TcpListener, proxy: Arc<ImapProxy>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt as _;
                            let _ = stream
                                .write_all(b"* BYE too many connections to the proxy; close some and retry\r\n")
                                .await;
                            let _ = stream.shutdown().await;
                        });
                        continue;
                    };
                    // Small unilateral answers (EXISTS during IDLE) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, &proxy).await {
                            tracing::debug!(%peer, error = %e, "IMAP connection ended");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "IMAP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

fn options() -> Options {
    let mut o = Options::default();
    o.max_literal_size = MAX_LITERAL;
    o.max_command_size = MAX_COMMAND;
    o
}

enum Outcome<S> {
    Closed,
    StartTls(S, Box<Session>),
}

async fn connection(stream: TcpStream, proxy: &ImapProxy) -> std::io::Result<()> {
    let session = Session::new(
        proxy.cache.clone(),
        proxy.credentials.clone(),
        proxy.tls.is_some(),
    );
    let server = Server::new(options(), session.greeting());
    match run(stream, server, session, proxy, false).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls(stream, mut session) => {
            let Some(acceptor) = &proxy.tls else {
                return Ok(());
            };
            let tls = tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            session.tls_started();
            // A fresh flow: nothing read before the handshake survives it (RFC 3501 §6.2.1).
            let server = Server::new(options(), session.greeting());
            match run(tls, server, *session, proxy, true).await? {
                Outcome::Closed | Outcome::StartTls(..) => Ok(()),
            }
        }
    }
}

/// Reads, feeds, answers, writes — until the connection closes or asks for TLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut server: Server,
    mut s: Session,
    proxy: &ImapProxy,
    after_starttls: bool,
) -> std::io::Result<Outcome<S>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Unsent::default();
    // After STARTTLS the flow's greeting must not be sent (RFC 3501 §6.2.1).
    let mut suppress_greeting = after_starttls;
    let mut after_write = Next::Continue;
    let mut idle_tag: Option<Tag<'static>> = None;
    let mut changes = proxy.cache.changes();
    let mut outbox = Outbox::default();
    let mut before_login = 0usize;
    // An AUTHENTICATE waiting for the client's response.
    let mut authenticating: Option<(Tag<'static>, AuthMechanism<'static>)> = None;
    loop {
        match server.next() {
            Ok(Event::GreetingSent { .. }) => suppress_greeting = false,
            Ok(Event::ResponseSent { handle, .. }) => {
                outbox.sent(handle);
                outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
            }
            Ok(Event::CommandReceived { command }) => {
                download_first(proxy, s.downloads_for(&command), &mut out, &mut stream).await?;
                outbox.push(s.handle(command), &mut after_write);
                outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
            }
            Ok(Event::CommandAuthenticateReceived {
                command_authenticate,
            }) => {
                let tag = command_authenticate.tag.clone();
                let response = command_authenticate
                    .initial_response
                    .as_ref()
                    .map(|r| r.declassify().as_ref());
                let step = s.authenticate(&tag, &command_authenticate.mechanism, response);
                authenticating = finish_auth(&mut server, &mut outbox, step, &mut after_write, tag);
                outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
            }
            Ok(Event::AuthenticateDataReceived { authenticate_data }) => {
                let step = match (&authenticating, authenticate_data) {
                    (Some((tag, mechanism)), AuthenticateData::Continue(data)) => {
                        s.authenticate(tag, mechanism, Some(data.declassify().as_ref()))
                    }
                    (tag, _) => Authenticate::Done(Box::new(Reply {
                        out: vec![Out::Status(
                            Status::bad(
                                tag.as_ref().map(|t| t.0.clone()),
                                None,
                                "authentication cancelled",
                            )
                            .expect("valid text"),
                        )],
                        next: Next::Continue,
                        more: None,
                    })),
                };
                let tag = authenticating.take().map(|t| t.0);
                if let Some(tag) = tag {
                    authenticating =
                        finish_auth(&mut server, &mut outbox, step, &mut after_write, tag);
                }
                outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
            }
            Ok(Event::IdleCommandReceived { tag }) => {
                if s.is_authenticated() {
                    let cont = CommandContinuationRequest::basic(
                        None,
                        Text::try_from("idling").expect("valid"),
                    )
                    .expect("valid");
                    let _ = server.idle_accept(cont);
                    outbox.push_updates(&mut s, &mut after_write);
                    outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
                    idle_tag = Some(tag);
                } else {
                    let _ = server
                        .idle_reject(Status::bad(Some(tag), None, "log in first").expect("valid"));
                }
            }
            Ok(Event::IdleDoneReceived) => {
                if let Some(tag) = idle_tag.take() {
                    server.enqueue_status(
                        Status::ok(Some(tag), None, "IDLE terminated").expect("valid"),
                    );
                }
            }
            Err(Interrupt::Io(Io::Output(bytes))) => {
                if !suppress_greeting {
                    out.push(bytes);
                }
                if out.len >= 256 * 1024 {
                    out.write_to(&mut stream).await?;
                }
            }
            Err(Interrupt::Io(Io::NeedMoreInput)) => {
                if out.len > 0 {
                    out.write_to(&mut stream).await?;
                    stream.flush().await?;
                }
                match after_write {
                    Next::Continue => {}
                    Next::Close => {
                        let _ = stream.shutdown().await;
                        return Ok(Outcome::Closed);
                    }
                    Next::StartTls => return Ok(Outcome::StartTls(stream, Box::new(s))),
                }
                // A FETCH waits for a message's attachments: the client waits for its
                // answer meanwhile.
                if let Some(content) = outbox.more.as_ref().and_then(FetchJob::wants) {
                    let failed = download(proxy, content).await;
                    if let Some(job) = &mut outbox.more {
                        job.downloaded(failed);
                    }
                    outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
                    continue;
                }
                // A FETCH held back while what it had produced was written: on with it.
                if outbox.more.is_some() && outbox.last.is_none() {
                    outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
                    continue;
                }
                let n = if idle_tag.is_some() {
                    tokio::select! {
                        r = tokio::time::timeout(AUTOLOGOUT, stream.read(&mut buf)) => r,
                        _ = changes.changed() => {
                            outbox.push_updates(&mut s, &mut after_write);
                            outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
                            continue;
                        }
                    }
                } else {
                    tokio::time::timeout(AUTOLOGOUT, stream.read(&mut buf)).await
                };
                let n = match n {
                    Err(_) => {
                        stream
                            .write_all(b"* BYE autologout; idle for too long\r\n")
                            .await?;
                        return Ok(Outcome::Closed);
                    }
                    Ok(r) => r?,
                };
                if n == 0 {
                    return Ok(Outcome::Closed);
                }
                if !s.is_authenticated() {
                    before_login += n;
                    if before_login > MAX_BEFORE_LOGIN {
                        out.write_to(&mut stream).await?;
                        stream
                            .write_all(b"* BYE too much input before login\r\n")
                            .await?;
                        let _ = stream.shutdown().await;
                        return Ok(Outcome::Closed);
                    }
                }
                server.enqueue_input(&buf[..n]);
            }
            Err(Interrupt::Error(e)) => match e {
                FlowError::MalformedMessage { discarded_bytes }
                | FlowError::ExpectedCrlfGotLf { discarded_bytes } => {
                    let line = discarded_bytes.declassify();
                    download_first(proxy, s.downloads_for_unparsed(line), &mut out, &mut stream)
                        .await?;
                    let reply = s.handle_unparsed(line);
                    outbox.push(reply, &mut after_write);
                    outbox.pump(&mut server, &mut out, &mut s, &mut after_write);
                }
                // imap-next already answered a synchronising literal with BAD.
                FlowError::LiteralTooLong { discarded_bytes } => {
                    if let Some(tag) = extended::tag_of(discarded_bytes.declassify()) {
                        tracing::debug!(tag = tag.inner(), "literal too long");
                    }
                }
                FlowError::CommandTooLong { .. } => {
                    server.enqueue_status(
                        Status::bye(None, "command too long; closing").expect("valid"),
                    );
                    after_write = Next::Close;
                }
            },
        }
    }
}

/// Downloads a message's attachments; why it failed, if it did.
async fn download(proxy: &ImapProxy, content: i64) -> Option<String> {
    match &proxy.downloads {
        None => Some("this proxy does not download attachments".to_owned()),
        Some(d) => d.download(content).await.err().map(|e| e.to_string()),
    }
}

/// Before a command that reads them (a text search): downloads the attachments of
/// `contents`, after writing what earlier commands produced. A failure shows in the
/// command's answer, which finds the attachment still missing.
async fn download_first(
    proxy: &ImapProxy,
    contents: Vec<i64>,
    out: &mut Unsent,
    stream: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<()> {
    if contents.is_empty() {
        return Ok(());
    }
    out.write_to(stream).await?;
    stream.flush().await?;
    for content in contents {
        download(proxy, content).await;
    }
    Ok(())
}

/// Ends or continues an AUTHENTICATE exchange; returns it while it waits for the client.
fn finish_auth(
    server: &mut Server,
    outbox: &mut Outbox,
    step: Authenticate,
    after_write: &mut Next,
    tag: Tag<'static>,
) -> Option<(Tag<'static>, AuthMechanism<'static>)> {
    match step {
        Authenticate::Continue => {
            let _ = server.authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
            Some((tag, AuthMechanism::Plain))
        }
        Authenticate::Done(reply) => {
            let mut reply = *reply;
            if matches!(reply.out.first(), Some(Out::Status(_)))
                && let Out::Status(status) = reply.out.remove(0)
            {
                let _ = server.authenticate_finish(status);
            }
            outbox.push(reply, after_write);
            None
        }
    }
}

/// Bytes waiting to be written past which a FETCH produces no more until they are.
const OUT_LIMIT: usize = 1 << 20;

/// Bytes to write, in order: small ones gathered into one buffer, a large one (a message
/// body as a literal) kept as it came rather than copied.
#[derive(Default)]
struct Unsent {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl Unsent {
    /// What imap-next or the session produced, after what is there.
    fn push(&mut self, bytes: Vec<u8>) {
        self.len += bytes.len();
        match self.bufs.last_mut() {
            Some(last) if bytes.len() < 64 * 1024 && last.len() < 256 * 1024 => {
                last.extend_from_slice(&bytes);
            }
            _ => self.bufs.push(bytes),
        }
    }

    async fn write_to(&mut self, stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        for b in self.bufs.drain(..) {
            stream.write_all(&b).await?;
        }
        self.len = 0;
        Ok(())
    }
}

/// Responses waiting their turn. imap-next encodes and writes what imap-types can express;
/// an [`Out::Raw`] is written by the driver once everything queued before it has been sent,
/// and the next batch of a FETCH is produced only then, so memory stays bounded.
#[derive(Default)]
struct Outbox {
    waiting: std::collections::VecDeque<Out>,
    /// The last response handed to imap-next and not yet sent.
    last: Option<ResponseHandle>,
    more: Option<FetchJob>,
}

impl Outbox {
    fn push(&mut self, reply: Reply, after_write: &mut Next) {
        self.waiting.extend(reply.out);
        self.more = reply.more;
        *after_write = reply.next;
    }

    /// Unilateral updates (IDLE): a deleted mailbox closes the connection.
    fn push_updates(&mut self, s: &mut Session, after_write: &mut Next) {
        self.waiting.extend(s.updates(true));
        if s.is_closing() {
            *after_write = Next::Close;
        }
    }

    fn sent(&mut self, handle: ResponseHandle) {
        if self.last == Some(handle) {
            self.last = None;
        }
    }

    /// Hands on what may go now; continues a FETCH once all before it has been sent.
    fn pump(&mut self, server: &mut Server, out: &mut Unsent, s: &mut Session, next: &mut Next) {
        loop {
            while let Some(o) = self.waiting.pop_front() {
                match o {
                    Out::Data(d) => self.last = Some(server.enqueue_data(d)),
                    Out::Status(st) => self.last = Some(server.enqueue_status(st)),
                    Out::Raw(bytes) if self.last.is_none() => out.push(bytes),
                    Out::Raw(bytes) => {
                        self.waiting.push_front(Out::Raw(bytes));
                        return;
                    }
                }
            }
            // Written (imap-next's responses, or raw ones piling up in `out`) before more is
            // produced: a FETCH of large messages holds a few at a time.
            if self.last.is_some() || out.len >= OUT_LIMIT {
                return;
            }
            let Some(job) = self.more.take_if(|job| job.wants().is_none()) else {
                return;
            };
            self.push(s.fetch_more(job), next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_unparsed_lines() {
        assert_eq!(
            extended::tag_of(b"a1 GARBAGE"),
            Some(Tag::try_from("a1").unwrap())
        );
    }
}
