//! End-to-end harness: builds and starts the real `letterme` binary, drives it as a user
//! would (separate processes, real HTTP on loopback, real SQLite files), and offers an
//! in-process server with an injectable clock for tests that must move time.
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

pub mod dkim;
pub mod dns;
pub mod multipart;
pub mod sink;
pub mod world;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use letterme_server::{Clock, Config};

pub const PASSPHRASE: &str = "test passphrase";

/// Path to the `letterme` binary, built once per test process.
pub fn letterme_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> (tests) or target/<profile>/<bin> (tools) → target/<profile>
        let mut dir = exe.parent().unwrap().to_owned();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir = dir.parent().unwrap().to_owned();
        }
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "letterme", "--bin", "letterme"]);
        // Cargo describes the test's own crate to the test process (CARGO_PKG_*,
        // CARGO_MANIFEST_*, CARGO_CRATE_NAME, CARGO_BIN_EXE_*, ...). None of it is about the
        // build asked for here; keep only what locates cargo and the target directory.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(inherited_from_the_test) {
                cmd.env_remove(key);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building letterme failed");
        let bin = dir.join("letterme");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

/// Whether `key` is one of the variables cargo sets for the test process it runs (or for
/// the compilation of the test crate), rather than a setting of the user's.
fn inherited_from_the_test(key: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_MANIFEST_",
        "CARGO_PRIMARY_",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p))
        || matches!(
            key,
            "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR" | "OUT_DIR"
        )
}

/// A free loopback port (bound, then released) for a server a test configures before it
/// starts. It is taken outside the kernel's ephemeral range: a port from there, which
/// `bind(0)` hands to every other listener and every outgoing connection of the tests
/// running beside this one, could be given away between this probe and the server's own
/// bind ("server did not start", now and then). Threads of one test binary take turns
/// through the gap, and processes start at places of their own. Where the range leaves no
/// gap of 1,000 ports, a port of its own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut ends = r.split_whitespace().map(|p| p.parse::<u64>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32_768, 60_999));
    // The larger of the gaps below and above the range (privileged ports left alone).
    let (from, span) = [
        (1_024, low.saturating_sub(1_024)),
        (high + 1, 65_535u64.saturating_sub(high)),
    ]
    .into_iter()
    .max_by_key(|&(_, span)| span)
    .unwrap_or((0, 0));
    if span >= 1_000 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let start = (u64::from(std::process::id()) * 7_919 + nanos) % span;
        for _ in 0..1_000 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
            // A step prime to every span below 65,536 walks the whole gap.
            let port = from + (start + n * 104_729) % span;
            if let Ok(port) = u16::try_from(port)
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `letterme serve` process.
#[derive(Debug)]
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    /// The SMTP listener, when the config enables it.
    pub smtp: Option<SocketAddr>,
    /// The federation listener's URL, when the config enables it.
    pub federation: Option<String>,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
}

impl ServerProc {
    /// The server process's soft and hard limits on open files.
    pub fn open_files_limit(&self) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id()))
            .expect("the server process is running");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("/proc/PID/limits has Max open files");
        let mut n = line["Max open files".len()..].split_whitespace();
        (n.next().unwrap().to_owned(), n.next().unwrap().to_owned())
    }

    /// The server process's peak resident memory so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("/proc/PID/status has VmHWM")
    }

    /// Writes a config for `domain` under `root` and starts the server. `extra_toml` is
    /// top-level dotted keys, e.g. `limits.quota = "1MB"`. Every peer and MX of a test is on
    /// loopback, so private addresses are allowed unless `extra_toml` says otherwise.
    pub fn start(root: &Path, domain: &str, extra_toml: &str) -> Self {
        let port = free_port();
        let smtp = free_port();
        let data_dir = root.join("server-data");
        let config_path = root.join("letterme.toml");
        let network = if extra_toml.contains("network.allow_private_addresses") {
            ""
        } else {
            "network.allow_private_addresses = true\n"
        };
        std::fs::write(
            &config_path,
            format!(
                "domain = \"{domain}\"\ndata_dir = \"{}\"\nhttp.listen = \"127.0.0.1:{port}\"\n\
                 smtp.listen = \"127.0.0.1:{smtp}\"\n{network}{extra_toml}\n",
                data_dir.display()
            ),
        )
        .unwrap();
        Self::spawn(config_path, data_dir)
    }

    /// Starts a server on an existing config file.
    pub fn spawn(config_path: PathBuf, data_dir: PathBuf) -> Self {
        std::fs::create_dir_all(&data_dir).unwrap();
        // The server's log goes into its data directory, so the plaintext scan covers it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .unwrap();
        // Under the soft open-files limit many systems start services with (1024), which
        // the server raises (`ServerProc::open_files_limit`).
        let mut child = Command::new("sh")
            .args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""])
            .arg(letterme_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env(
                "LETTERME_LOG",
                std::env::var("LETTERME_TEST_SERVER_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| {
                panic!(
                    "server did not start: {line:?}; see {}",
                    data_dir.join("server.log").display()
                )
            })
            .trim_end_matches(',')
            .to_owned();
        let smtp = line
            .split_once(", smtp ")
            .and_then(|(_, a)| a.trim().parse().ok());
        let federation = line
            .split_once(", federation ")
            .and_then(|(_, rest)| rest.split([',', ' ', '\n']).next())
            .map(ToOwned::to_owned);
        Self {
            child,
            url,
            smtp,
            federation,
            config_path,
            data_dir,
        }
    }

    /// `kill -9`, no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// What the server's database holds of blobs and pending mail, read beside the
    /// running server.
    pub fn stored_blobs(&self) -> StoredBlobs {
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir.join("letterme.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let one = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
        StoredBlobs {
            blobs: one("SELECT count(*) FROM blobs"),
            chunk_bytes: one("SELECT coalesce(sum(length(data)), 0) FROM blob_chunks"),
            envelope_bytes: one("SELECT coalesce(sum(length(envelope)), 0) FROM messages"),
        }
    }

    /// Waits (up to 10 s) until the server holds no blob — the deletion that follows the
    /// last acknowledgement; whether it came.
    pub fn blobs_gone(&self) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if self.stored_blobs().blobs == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts again on the same config and data.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let next = Self::spawn(self.config_path.clone(), self.data_dir.clone());
        assert_eq!(
            next.url, self.url,
            "the server must come back on the same address"
        );
        *self = next;
    }
}

/// What [`ServerProc::stored_blobs`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlobs {
    pub blobs: u64,
    /// Sealed chunk bytes, every blob.
    pub chunk_bytes: u64,
    /// Bytes of the envelopes pending for local recipients.
    pub envelope_bytes: u64,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `_mailx` TXT value that `letterme dns` prints for `server` (serving `domain`).
pub fn mailx_record(server: &ServerProc, domain: &str) -> String {
    mailx_records(server, domain).remove(0)
}

/// Every `_mailx` TXT value `letterme dns` prints for `server` (more than one during a
/// domain key rotation).
pub fn mailx_records(server: &ServerProc, domain: &str) -> Vec<String> {
    let out = ok(&cli(
        Path::new("/nonexistent"),
        &["dns", "--config", server.config_path.to_str().unwrap()],
        None,
    ));
    let values: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with(&format!("_mailx.{domain}.")))
        .map(|l| {
            l.split_once('"')
                .unwrap()
                .1
                .trim_end_matches('"')
                .to_owned()
        })
        .collect();
    assert!(!values.is_empty(), "no _mailx line in {out}");
    values
}

/// Runs the CLI as a user with profile `profile`.
pub fn cli(profile: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    cli_with(profile, args, stdin, PASSPHRASE)
}

pub fn cli_with(profile: &Path, args: &[&str], stdin: Option<&str>, passphrase: &str) -> Output {
    let mut child = Command::new(letterme_bin())
        .args(args)
        .env("LETTERME_PROFILE", profile)
        .env("LETTERME_PASSPHRASE", passphrase)
        .env_remove("LETTERME_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts a user error: non-zero exit, one line on stderr, no panic; returns the line.
pub fn user_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line on stderr, got: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err:?}");
    err.trim_end().to_owned()
}

/// Every byte of every file under `dir`, with its path.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A clock tests can move.
#[derive(Debug)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn at_now() -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn now_f64(&self) -> f64 {
        self.now() as f64
    }
}

/// A config for an in-process server on a free loopback port.
pub fn test_config(root: &Path, domain: &str) -> Config {
    let mut c = Config::for_domain(domain);
    c.data_dir = root.join("server-data");
    c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // Every peer and MX of a test is on loopback.
    c.network.allow_private_addresses = true;
    c
}

/// A `letterme proxy` process for the profile `profile`, on free loopback ports.
#[derive(Debug)]
pub struct ProxyProc {
    pub child: Child,
    pub imap: SocketAddr,
    pub smtp: SocketAddr,
    pub profile: PathBuf,
    pub password: String,
    /// The proxy's stderr, for failure messages.
    pub log: PathBuf,
}

impl ProxyProc {
    pub fn start(profile: &Path) -> Self {
        Self::start_on(profile, "127.0.0.1:0", "127.0.0.1:0")
    }

    pub fn start_on(profile: &Path, imap: &str, smtp: &str) -> Self {
        Self::start_with(profile, imap, smtp, &[])
    }

    /// Like [`ProxyProc::start_on`], with more arguments (e.g. `--allow-plaintext`).
    pub fn start_with(profile: &Path, imap: &str, smtp: &str, extra: &[&str]) -> Self {
        let log = profile.with_extension("proxy.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(letterme_bin())
            .args(["proxy", "--imap-listen", imap, "--smtp-listen", smtp])
            .args(extra)
            .env("LETTERME_PROFILE", profile)
            .env("LETTERME_PASSPHRASE", PASSPHRASE)
            .env("LETTERME_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr_after = |key: &str| -> SocketAddr {
            line.split_once(key)
                .and_then(|(_, rest)| rest.split([',', ';', ' ']).next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "proxy did not start: {line:?}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
        };
        let (imap, smtp) = (addr_after("IMAP "), addr_after("SMTP "));
        let creds: serde_json::Value = serde_json::from_str(&ok(&cli(
            profile,
            &["proxy", "credentials", "--json"],
            None,
        )))
        .unwrap();
        Self {
            child,
            imap,
            smtp,
            profile: profile.to_owned(),
            password: creds["password"].as_str().unwrap().to_owned(),
            log,
        }
    }

    /// `kill -9`, then start again on the same profile (new ports).
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start(&self.profile.clone());
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of `table` in the `mail.db` of the profile at `profile`.
pub fn rows(profile: &Path, table: &str) -> i64 {
    rusqlite::Connection::open(profile.join("mail.db"))
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Whether `holds` comes true within 30 seconds (polled every 50 ms).
pub fn eventually(mut holds: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < until {
        if holds() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs a python3 script (standard library only) with arguments; parses its stdout as JSON.
pub fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A native text message from `online`'s user to `to`, sealed to `key` (already verified).
pub fn sealed_text(
    online: &letterme_client::Online,
    to: &letterme_protocol::Address,
    key: letterme_protocol::EncryptionPublicKey,
    subject: &str,
    body: &str,
    message_id: &str,
) -> letterme_protocol::Envelope {
    sealed_with_blobs(online, to, key, subject, body, message_id, vec![])
}

/// [`sealed_text`] whose payload refers to `blobs` (and whose header names them), each
/// placed as an attachment of a `multipart/mixed` entity, as a client writes it.
pub fn sealed_with_blobs(
    online: &letterme_client::Online,
    to: &letterme_protocol::Address,
    key: letterme_protocol::EncryptionPublicKey,
    subject: &str,
    body: &str,
    message_id: &str,
    blobs: Vec<letterme_protocol::blob::BlobRef>,
) -> letterme_protocol::Envelope {
    let now = letterme_client::now();
    let mime = (!blobs.is_empty()).then(|| {
        let mut e = format!("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n");
        for i in 0..blobs.len() {
            let _ = std::fmt::Write::write_fmt(
                &mut e,
                format_args!("--b\r\n{}: {i}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Disposition: attachment; filename=\"file{i}\"\r\n\r\n\r\n",
                letterme_client::mime::BLOB_FIELD),
            );
        }
        e.push_str("--b--\r\n");
        e.into_bytes()
    });
    let payload = letterme_protocol::Payload {
        from: online.me.profile.address.clone(),
        to: vec![to.clone()],
        cc: vec![],
        bcc: vec![],
        subject: subject.to_owned(),
        body: body.to_owned(),
        headers: vec![],
        date: now,
        message_id: message_id.to_owned(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime,
        blobs,
        state: vec![],
    };
    letterme_protocol::envelope::seal(
        letterme_protocol::envelope::SignerKind::User,
        &online.me.keys.device,
        &payload,
        &[(to.clone(), key)],
        now,
    )
    .expect("a text message seals")
}

/// Sends `n` native messages from the profile `from` to `to`: sealed in-process with the
/// client library (the recipient's key looked up and verified once) and uploaded eight at a
/// time. Message `i` has subject `flood i` and a body of `body_len(i)` bytes.
pub async fn flood(
    from: &Path,
    to: &letterme_protocol::Address,
    n: usize,
    body_len: impl Fn(usize) -> usize,
) {
    let me = letterme_client::Unlocked::open(
        letterme_client::profile::ProfileDir(from.to_owned()),
        PASSPHRASE,
    )
    .unwrap();
    let online = me.connect().await.unwrap();
    let key = online
        .verified_keys(to)
        .await
        .unwrap()
        .attestation
        .encryption_key;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let env = sealed_text(
            &online,
            to,
            key,
            &format!("flood {i}"),
            &"y".repeat(body_len(i)),
            &format!("<flood-{i}@{}>", to.domain()),
        );
        if tasks.len() >= 8 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let api = online.api.clone();
        tasks.spawn(async move { api.send(env.encode()).await.unwrap() });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// A connection to `to` from the loopback address `from` (say `127.0.1.1`): the server
/// counts it under that address's prefix, so a test can be two networks at once.
pub async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads (discarding) until the server closes `stream`, and returns what arrived; panics
/// if it is still open after `within`.
pub async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
    what: &str,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        // A reset is a close too.
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    };
    assert!(
        tokio::time::timeout(within, read).await.is_ok(),
        "{what}: still open after {within:?}"
    );
    got
}
