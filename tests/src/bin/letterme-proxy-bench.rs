//! Load tool: the local proxy with a large mailbox.
//!
//! Starts an in-process server, fills bob's account with `--messages` native messages of
//! 2–8 KiB, then starts `letterme proxy` for bob and measures: the first full sync from the
//! server into the proxy's encrypted local cache (from process start until IMAP STATUS shows
//! every message), python imaplib's `UID FETCH 1:* (FLAGS BODY.PEEK[])` and a header-only
//! fetch of every message, and the proxy's resident memory.
//! Run: `cargo run --release -p letterme-tests --bin letterme-proxy-bench`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_client::profile::ProfileDir;
use letterme_protocol::Address;
use letterme_server::{Config, SystemClock};
use letterme_tests::{PASSPHRASE, ProxyProc, flood, python};

#[derive(Debug, Parser)]
#[command(about = "The local proxy with a large mailbox: first sync, IMAP fetch times, memory")]
struct Args {
    /// Messages in the account.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Timed repetitions of each IMAP fetch.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const FETCH: &str = r#"
import imaplib, json, sys, time
host, port, user, password, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
m = imaplib.IMAP4(host, port)
m.login(user, password)
m.select("INBOX", readonly=True)
out = {}
for name, items in [
    ("full", "(FLAGS BODY.PEEK[])"),
    ("headers", "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To Received)])"),
]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        typ, dat = m.uid("FETCH", "1:*", items)
        times.append(time.perf_counter() - t0)
        count = sum(1 for d in dat if isinstance(d, tuple))
        size = sum(len(d[1]) for d in dat if isinstance(d, tuple))
    out[name] = {"seconds": times, "messages": count, "bytes": size}
m.logout()
print(json.dumps(out))
"#;

/// User and system CPU time of a process so far (`/proc/PID/stat`, in USER_HZ = 100 ticks).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn status_messages(proxy: &ProxyProc) -> usize {
    let Ok(s) = TcpStream::connect(proxy.imap) else {
        return 0;
    };
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    let _ = write!(
        w,
        "a LOGIN bob@bench.test {}\r\nb STATUS INBOX (MESSAGES)\r\nc LOGOUT\r\n",
        proxy.password
    );
    let mut n = 0;
    for l in r.lines().map_while(Result::ok) {
        if let Some(rest) = l.split("(MESSAGES ").nth(1) {
            n = rest.trim_end_matches(')').parse().unwrap_or(0);
        }
        if l.starts_with("c ") {
            break;
        }
    }
    n
}

/// Time from a sender starting its upload to an IDLE-ing client hearing EXISTS: the server's
/// commit, the proxy's long poll waking, its sync and cache commit, and the IDLE push.
async fn push_latency(
    alice: &std::path::Path,
    bob: &Address,
    proxy: &ProxyProc,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let me = letterme_client::Unlocked::open(ProfileDir(alice.to_owned()), PASSPHRASE)?;
    let online = me.connect().await?;
    let key = online.verified_keys(bob).await?.attestation.encryption_key;
    let s = TcpStream::connect(proxy.imap)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line)?;
    write!(
        w,
        "a LOGIN bob@bench.test {}\r\nb SELECT INBOX\r\n",
        proxy.password
    )?;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.starts_with("b ") {
            break;
        }
    }
    let mut out = Vec::new();
    for i in 0..runs {
        write!(w, "i{i} IDLE\r\n")?;
        line.clear();
        r.read_line(&mut line)?;
        anyhow::ensure!(line.starts_with('+'), "IDLE refused: {line}");
        let env = letterme_tests::sealed_text(
            &online,
            bob,
            key,
            &format!("push {i}"),
            "ping",
            &format!("<push-{i}@bench.test>"),
        );
        let t0 = Instant::now();
        online.api.send(env.encode()).await?;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line.contains("EXISTS") {
                break;
            }
        }
        out.push(t0.elapsed());
        write!(w, "DONE\r\n")?;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line.starts_with(&format!("i{i} ")) {
                break;
            }
        }
    }
    Ok(out)
}

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Built before anything is timed.
    letterme_tests::letterme_bin();
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut config = Config::for_domain("bench.test");
    config.data_dir = tmp.path().join("server");
    config.http.listen = "127.0.0.1:0".parse()?;
    config.limits.quota = letterme_server::config::ByteSize(u64::MAX / 2);
    let server = rt.block_on(letterme_server::start(config, Arc::new(SystemClock)))?;
    let url = format!("http://{}", server.local_addr);
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    let bob_addr = Address::parse("bob@bench.test")?;
    rt.block_on(async {
        for (dir, a) in [(&alice, "alice@bench.test"), (&bob, "bob@bench.test")] {
            letterme_client::create_account(
                &ProfileDir(dir.clone()),
                &Address::parse(a)?,
                &url,
                PASSPHRASE,
                None,
            )
            .await?;
        }
        anyhow::Ok(())
    })?;
    let t = Instant::now();
    rt.block_on(flood(&alice, &bob_addr, args.messages, |i| {
        2048 + (i * 7919) % 6145
    }));
    eprintln!(
        "delivered {} messages of 2-8 KiB in {:.1} s",
        args.messages,
        t.elapsed().as_secs_f64()
    );

    let server_cpu = cpu_seconds("self");
    let t0 = Instant::now();
    let proxy = ProxyProc::start(&bob);
    let started = t0.elapsed();
    loop {
        if status_messages(&proxy) >= args.messages {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_mins(5),
            "the proxy did not finish its first sync"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let synced = t0.elapsed();
    let proxy_cpu = cpu_seconds(&proxy.child.id().to_string());
    let server_cpu = cpu_seconds("self") - server_cpu;
    println!(
        "first sync of {} messages: {:.2} s from proxy start (process up and logged in after {:.2} s)",
        args.messages,
        synced.as_secs_f64(),
        started.as_secs_f64()
    );
    // Less sensitive than the wall time to what else the machine does: compare these
    // between builds.
    println!(
        "  CPU during the sync: proxy {proxy_cpu:.2} s, server {server_cpu:.2} s, of {:.2} s on {} cores",
        synced.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    // Where the time went, page by page (the proxy logs each page it opens and commits).
    let log = std::fs::read_to_string(bob.with_extension("proxy.log")).unwrap_or_default();
    for line in log.lines() {
        for what in ["synced a page", "committed a page"] {
            if let Some(rest) = line.split(what).nth(1) {
                println!("  {what}: {}", rest.trim());
            }
        }
    }
    let port = proxy.imap.port().to_string();
    let runs = args.runs.to_string();
    let fetched = python(
        FETCH,
        &["127.0.0.1", &port, "bob@bench.test", &proxy.password, &runs],
    );
    for name in ["full", "headers"] {
        let f = &fetched[name];
        let secs: Vec<f64> = f["seconds"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let best = secs.iter().copied().fold(f64::INFINITY, f64::min);
        let label = if name == "full" {
            "UID FETCH 1:* (FLAGS BODY.PEEK[])"
        } else {
            "UID FETCH 1:* (headers, Thunderbird's list)"
        };
        println!(
            "{label}: {} messages, {:.1} MiB, best {:.0} ms, runs {:?} ms",
            f["messages"],
            f["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
            best * 1e3,
            secs.iter().map(|s| (s * 1e3).round()).collect::<Vec<_>>()
        );
    }
    let push = rt.block_on(push_latency(&alice, &bob_addr, &proxy, args.runs))?;
    println!(
        "new mail to IDLE: upload starts -> `* n EXISTS` at the idling client: {:?} ms",
        push.iter()
            .map(|d| (d.as_secs_f64() * 1e4).round() / 10.0)
            .collect::<Vec<_>>()
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap_or_default();
    println!(
        "proxy memory with {} messages cached: RSS {:.1} MiB, peak {:.1} MiB",
        args.messages,
        kib(&status, "VmRSS:") as f64 / 1024.0,
        kib(&status, "VmHWM:") as f64 / 1024.0
    );
    drop(proxy);
    rt.block_on(server.shutdown())?;
    Ok(())
}
