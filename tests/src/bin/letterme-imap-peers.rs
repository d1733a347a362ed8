//! Side by side: the proxy's IMAP against Dovecot from the distribution, same mailbox, same
//! client, same run (issue 16).
//!
//! Writes `--messages` classic messages (2–8 KiB) once into a Maildir that a Dovecot started
//! here (unprivileged service users, loopback, a temp dir) serves, and once into a proxy
//! cache served by the proxy's IMAP listener in this process. Then python's imaplib times, on
//! each server in turn: `UID FETCH 1:* (FLAGS BODY.PEEK[])`, the header fetch Thunderbird
//! sends for its message list, and a CONDSTORE/QRESYNC resynchronisation after 100 flag
//! changes made by another connection (SELECT with QRESYNC, then `UID FETCH 1:* (FLAGS)
//! (CHANGEDSINCE m)`). Prints each time and the ratio proxy / Dovecot of the medians.
//! Run: `cargo run --release -p letterme-tests --bin letterme-imap-peers` (needs `dovecot`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_client::cache::{Cache, CacheKey, NewMail};
use letterme_protocol::SigningKeypair;
use letterme_proxy::credentials::Credentials;
use letterme_proxy::imap::{ImapProxy, serve};
use letterme_tests::python;

#[derive(Debug, Parser)]
#[command(about = "The proxy's IMAP beside Dovecot: body fetch, header fetch, QRESYNC resync")]
struct Args {
    /// Messages in the mailbox.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Timed repetitions of each operation on each server.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const USER: &str = "bench";
const PASSWORD: &str = "bench-secret";

const CLIENT: &str = r#"
import imaplib, json, random, re, sys, time
host, port, user, password, runs, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
HEADERS = "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To Received)])"
def login():
    m = imaplib.IMAP4(host, port)
    m.login(user, password)
    return m
out = {"full": [], "headers": [], "resync": []}
m = login()
m.select("INBOX", readonly=True)
for name, items in [("full", "(FLAGS BODY.PEEK[])"), ("headers", HEADERS)]:
    for _ in range(runs):
        t0 = time.perf_counter()
        typ, dat = m.uid("FETCH", "1:*", items)
        out[name].append(time.perf_counter() - t0)
        assert typ == "OK"
        out[name + "_messages"] = sum(1 for d in dat if isinstance(d, tuple))
        out[name + "_bytes"] = sum(len(d[1]) for d in dat if isinstance(d, tuple))
m.logout()
rnd = random.Random(seed)
for _ in range(runs):
    a = login()
    a._simple_command("ENABLE", "QRESYNC")
    typ, dat = a._simple_command("SELECT", "INBOX")
    validity = int(a.untagged_responses["UIDVALIDITY"][-1])
    modseq = int(a.untagged_responses["HIGHESTMODSEQ"][-1])
    a.state = "SELECTED"
    # Another client changes 100 messages' flags.
    count = int(a.untagged_responses["EXISTS"][-1])
    for n in rnd.sample(range(1, count + 1), 100):
        a.store(str(n), rnd.choice(["+FLAGS", "-FLAGS"]), rnd.choice(["(\\Flagged)", "(\\Seen)", "($Label1)"]))
    a.logout()
    t0 = time.perf_counter()
    b = login()
    b._simple_command("ENABLE", "QRESYNC")
    typ, dat = b._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq}))")
    assert typ == "OK", (typ, dat)
    b.state = "SELECTED"
    typ, dat = b.uid("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq})")
    out["resync"].append(time.perf_counter() - t0)
    changed = len(set(re.findall(rb"UID (\d+)", b" ".join(d for d in dat if isinstance(d, bytes)))))
    assert 0 < changed <= 100, changed
    out["resync_changed"] = changed
    b.logout()
print(json.dumps(out))
"#;

/// One message, the same bytes for both servers.
fn message(i: usize, seed: &mut u64) -> Vec<u8> {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 33) as usize
    };
    let size = 2048 + next() % 6144;
    let line = "The quick brown fox jumps over the lazy dog; letter.me measures IMAP. ";
    let mut body = String::with_capacity(size + 80);
    while body.len() < size {
        body.push_str(line);
        body.push_str("\r\n");
    }
    let refs = if i > 0 && next() % 3 == 0 {
        format!(
            "In-Reply-To: <m{}@peers.test>\r\nReferences: <m{}@peers.test>\r\n",
            i - 1,
            i - 1
        )
    } else {
        String::new()
    };
    format!(
        "Received: from mx.sender{n}.test by mx.peers.test; Sun, 6 Dec 2026 10:00:00 +0000\r\n\
         From: Sender {n} <sender{n}@sender.test>\r\nTo: {USER}@peers.test\r\n\
         Subject: Message number {i} about topic {n}\r\nDate: Sun, 6 Dec 2026 10:{m:02}:00 +0000\r\n\
         Message-ID: <m{i}@peers.test>\r\n{refs}MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        n = next() % 50,
        m = i % 60,
    )
    .into_bytes()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Dovecot on loopback serving `dir/mail/USER` as Maildir; killed on drop.
struct Dovecot {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dovecot(dir: &Path, messages: &[Vec<u8>]) -> Dovecot {
    let maildir = dir.join("mail").join(USER);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("maildir");
    }
    for (i, m) in messages.iter().enumerate() {
        let name = format!("{}.M{i}P1.peers,S={}:2,", 1_796_000_000 + i, m.len());
        std::fs::write(maildir.join("cur").join(name), m).expect("write a message");
    }
    std::fs::create_dir_all(dir.join("home")).expect("home");
    let port = free_port();
    let conf = dir.join("dovecot.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/state\n\
             log_path = {d}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain login\ndefault_internal_user = dovecot\n\
             default_login_user = dovenull\nfirst_valid_uid = 1\nmail_location = maildir:{d}/mail/%u\n\
             passdb {{\n  driver = static\n  args = password={PASSWORD}\n}}\n\
             userdb {{\n  driver = static\n  args = uid=dovecot gid=dovecot home={d}/home/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
             inet_listener imaps {{\n    port = 0\n  }}\n}}\n"
        ),
    )
    .expect("dovecot.conf");
    // Dovecot serves mail as its own unprivileged user.
    let status = Command::new("chown")
        .args(["-R", "dovecot:dovecot"])
        .arg(dir.join("mail"))
        .arg(dir.join("home"))
        .status()
        .expect("chown");
    assert!(status.success(), "chown of the Maildir failed");
    let child = Command::new("dovecot")
        .arg("-F")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dovecot runs (apt-get install dovecot-imapd)");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr);
    Dovecot { child, addr }
}

/// The proxy's IMAP listener over a cache holding `messages`, on its own runtime thread.
fn proxy(dir: &Path, messages: &[Vec<u8>]) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let cache = Arc::new(
        Cache::open(
            &dir.join("mail.db"),
            CacheKey::derive(&SigningKeypair::generate()),
        )
        .expect("cache"),
    );
    for chunk in messages.chunks(1000) {
        let mails: Vec<NewMail> = chunk
            .iter()
            .map(|raw| NewMail {
                folder: "INBOX".into(),
                flags: vec![],
                internal_date: 1_796_000_000,
                raw: raw.clone(),
                message_id: None,
                pieces: vec![],
            })
            .collect();
        cache.append_all(&mails).expect("fill the cache");
    }
    let proxy = Arc::new(ImapProxy {
        cache,
        credentials: Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        },
        tls: None,
        downloads: None,
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve(listener, proxy, stopped).await;
        });
    });
    wait_for(addr);
    (addr, stop)
}

fn median(v: &serde_json::Value) -> f64 {
    let mut xs: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_f64)
                .map(|s| format!("{:.0}", s * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn main() {
    let args = Args::parse();
    let mut seed = 42;
    let messages: Vec<Vec<u8>> = (0..args.messages).map(|i| message(i, &mut seed)).collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!(
        "{} messages, {:.1} MiB; {} runs of each operation on each server",
        messages.len(),
        bytes as f64 / 1_048_576.0,
        args.runs
    );
    let dir = tempfile::tempdir().expect("temp dir");
    // Dovecot's mail process runs as the dovecot user: it must reach its Maildir.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temp dir");
    }
    let dove = dovecot(&dir.path().join("dovecot"), &messages);
    std::fs::create_dir_all(dir.path().join("proxy")).expect("proxy dir");
    let (proxy_addr, stop) = proxy(&dir.path().join("proxy"), &messages);
    let runs = args.runs.to_string();
    let log = dir.path().join("dovecot/dovecot.log");
    // The same pass number gives both servers the same flag changes.
    let measure = |addr: SocketAddr, pass: &str| {
        std::panic::catch_unwind(|| {
            python(
                CLIENT,
                &[
                    "127.0.0.1",
                    &addr.port().to_string(),
                    USER,
                    PASSWORD,
                    &runs,
                    pass,
                ],
            )
        })
        .unwrap_or_else(|e| {
            eprintln!(
                "Dovecot's log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::panic::resume_unwind(e)
        })
    };
    // Dovecot builds its index on first access; one untimed pass warms both servers alike.
    let _ = measure(dove.addr, "1");
    let _ = measure(proxy_addr, "1");
    let d = measure(dove.addr, "2");
    let p = measure(proxy_addr, "2");
    println!("| operation | Dovecot 2.3 (ms) | proxy (ms) | proxy / Dovecot (medians) |");
    println!("| --- | --- | --- | --- |");
    for (name, label) in [
        ("full", "UID FETCH 1:* (FLAGS BODY.PEEK[])"),
        ("headers", "Thunderbird header fetch"),
        ("resync", "QRESYNC resync after 100 flag changes"),
    ] {
        println!(
            "| {label} | {} | {} | {:.2} |",
            ms(&d[name]),
            ms(&p[name]),
            median(&p[name]) / median(&d[name])
        );
    }
    for key in ["full_bytes", "headers_bytes", "resync_changed"] {
        assert_eq!(
            d[key], p[key],
            "{key} differs: the servers did not answer the same"
        );
    }
    let _ = stop.send(true);
}
