//! An SMTP sink on loopback that plays a legacy domain's MX for the outbound tests: it
//! accepts (or refuses, on demand) what it is sent, offers STARTTLS with a self-signed
//! certificate, records each message with the client's address and envelope, and can be
//! taken down and brought back on the same port.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub peer: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
}

#[derive(Debug, Default)]
struct State {
    received: Vec<Received>,
    /// Replaces the answer to the end of DATA (e.g. "550 5.7.1 no").
    data_reply: Option<String>,
    connections: usize,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The running sink.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<watch::Sender<bool>>,
    tls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Longest command line read.
const MAX_LINE: usize = 4096;

impl Sink {
    /// Starts on a free loopback port; `dir` holds its certificate.
    pub async fn start(dir: &std::path::Path, hostname: &str) -> Self {
        let cert = dir.join("sink-cert.pem");
        let key = dir.join("sink-key.pem");
        letterme_server::tls::generate_self_signed(&[hostname.to_owned()], &cert, &key).unwrap();
        let config = letterme_server::tls::server_config(&cert, &key).unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sink = Self {
            addr,
            state: Arc::default(),
            stop: None,
            tls,
        };
        sink.serve(listener);
        sink
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, mut rx) = watch::channel(false);
        self.stop = Some(tx);
        let state = self.state.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((sock, peer)) = accepted else { continue };
                        if let Ok(mut s) = state.lock() {
                            s.connections += 1;
                        }
                        let state = state.clone();
                        let tls = tls.clone();
                        let stop = rx.clone();
                        tokio::spawn(async move {
                            let _ = session(Box::new(sock), peer.ip(), state, tls, stop).await;
                        });
                    }
                    _ = rx.changed() => break,
                }
            }
        });
    }

    /// Takes the sink down: the port refuses connections until [`Sink::up`].
    pub fn down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }

    /// Brings the sink back on the same port.
    pub async fn up(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Answers the end of DATA with `reply` (a full line such as `550 5.7.1 refused`), or
    /// with 250 again when `None`.
    pub fn set_data_reply(&self, reply: Option<&str>) {
        self.state.lock().unwrap().data_reply = reply.map(ToOwned::to_owned);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// The messages that arrived after the first `n`.
    pub fn since(&self, n: usize) -> Vec<Received> {
        let s = self.state.lock().unwrap();
        s.received
            .get(n..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits until at least `n` messages arrived (or `timeout` passed); returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.count() >= n || tokio::time::Instant::now() >= deadline {
                return self.received();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.down();
    }
}

fn addr_of(arg: &str) -> String {
    arg.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a.to_owned())
        .unwrap_or_default()
}

async fn session(
    sock: Box<dyn Io>,
    peer: IpAddr,
    state: Arc<Mutex<State>>,
    tls: tokio_rustls::TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut io = BufReader::new(sock);
    let mut secure = false;
    io.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let (mut helo, mut from, mut rcpts) = (String::new(), String::new(), Vec::<String>::new());
    loop {
        let mut line = String::new();
        let mut limited = (&mut io).take(MAX_LINE as u64);
        let n = tokio::select! {
            n = limited.read_line(&mut line) => n?,
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = cmd.get(verb.len()..).unwrap_or("").trim();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                helo = arg.to_owned();
                let tls_line = if secure { "" } else { "250-STARTTLS\r\n" };
                format!("250-sink\r\n250-8BITMIME\r\n{tls_line}250 SIZE 52428800\r\n")
            }
            "HELO" => {
                helo = arg.to_owned();
                "250 sink\r\n".into()
            }
            "STARTTLS" if !secure => {
                io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                let inner = io.into_inner();
                let stream = tls.accept(inner).await?;
                io = BufReader::new(Box::new(stream));
                secure = true;
                helo.clear();
                continue;
            }
            "MAIL" => {
                from = addr_of(arg);
                rcpts.clear();
                "250 2.1.0 ok\r\n".into()
            }
            "RCPT" => {
                rcpts.push(addr_of(arg));
                "250 2.1.5 ok\r\n".into()
            }
            "DATA" if rcpts.is_empty() => "503 5.5.1 no recipients\r\n".into(),
            "DATA" => {
                io.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if (&mut io).take(1 << 20).read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    // RFC 5321 §4.5.2: remove the transparency dot.
                    let l = if l.starts_with(b"..") {
                        &l[1..]
                    } else {
                        &l[..]
                    };
                    data.extend_from_slice(l);
                }
                let custom = state.lock().unwrap().data_reply.clone();
                if let Some(r) = custom {
                    format!("{r}\r\n")
                } else {
                    state.lock().unwrap().received.push(Received {
                        peer,
                        helo: helo.clone(),
                        mail_from: from.clone(),
                        rcpts: std::mem::take(&mut rcpts),
                        data,
                        tls: secure,
                    });
                    "250 2.0.0 queued\r\n".into()
                }
            }
            "RSET" => {
                from.clear();
                rcpts.clear();
                "250 2.0.0 ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 ok\r\n".into(),
            "QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "500 5.5.2 unknown command\r\n".into(),
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}
