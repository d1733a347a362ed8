//! Load tool: outbound SMTP delivery to a local sink, DKIM-signed with both keys.
//!
//! Starts `letterme serve` for a.test in relay mode with an in-process DNS server holding
//! what `letterme dns` printed, and an SMTP sink as legacy.test's MX. Hands `--messages`
//! messages of `--size` bytes from alice@a.test to the server (`POST /v1/outbound`) from
//! `--senders` concurrent tasks, and reports messages per second from the first hand-over
//! to the last arrival at the sink, and the latency from hand-over to arrival.
//! Run: `cargo run --release -p letterme-tests --bin letterme-out-bench`.
// A load tool: any failure should stop it, loudly.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_client::profile::ProfileDir;
use letterme_protocol::Address;
use letterme_tests::sink::Sink;
use letterme_tests::world::World;
use letterme_tests::{PASSPHRASE, ServerProc};

#[derive(Debug, Parser)]
#[command(about = "Outbound SMTP messages per second to a local sink, DKIM-signed twice")]
struct Args {
    /// Messages to deliver.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Concurrent submitters (HTTP clients of a.test).
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Message size in bytes (header and body).
    #[arg(long, default_value_t = 4096)]
    size: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = Args::parse();
    let world = World::new(vec![]);
    let (rt, dns) = (&world.rt, &world.dns);
    rt.block_on(dns.load_zone(
        "legacy.test. 60 IN MX 10 mx.legacy.test.\nmx.legacy.test. 60 IN A 127.0.0.1\n\
         mx.a.test. 60 IN A 127.0.0.1\n",
    ));
    let sink = rt.block_on(Sink::start(world.path(), "mx.legacy.test"));
    let dir = world.path().join("a.test");
    std::fs::create_dir_all(&dir).unwrap();
    let server = ServerProc::start(
        &dir,
        "a.test",
        &format!(
            "smtp.hostname = \"mx.a.test\"\ndns.nameservers = [\"{}\"]\n\
             outbound.mode = \"relay\"\noutbound.port = {}\n\
             outbound.user_per_minute = 10000000\noutbound.user_burst = 1000000\n\
             outbound.domain_per_minute = 10000000\noutbound.domain_burst = 1000000\n\
             outbound.daily_cap = 10000000",
            dns.addr,
            sink.addr.port()
        ),
    );
    world.publish_zone(&server);
    let alice = world.account(&server, "alice", "alice@a.test");
    let online = rt
        .block_on(
            letterme_client::Unlocked::open(ProfileDir(alice.clone()), PASSPHRASE)
                .unwrap()
                .with_dns(vec![dns.addr])
                .connect(),
        )
        .unwrap();
    let carol = Address::parse("carol@legacy.test").unwrap();
    let message = |i: usize| -> Vec<u8> {
        let head = format!(
            "From: alice@a.test\r\nTo: carol@legacy.test\r\nSubject: bench {i}\r\n\
             Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench-{i}@a.test>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        );
        let mut body = String::new();
        while head.len() + body.len() + 78 <= args.size {
            body.push_str(&"x".repeat(76));
            body.push_str("\r\n");
        }
        body.push_str(&"y".repeat(args.size.saturating_sub(head.len() + body.len() + 2)));
        body.push_str("\r\n");
        format!("{head}{body}").into_bytes()
    };
    let messages: Vec<(usize, Vec<u8>)> = (0..args.messages).map(|i| (i, message(i))).collect();
    let size = messages[0].1.len();
    eprintln!(
        "{} messages of {size} bytes; handing over with {} senders",
        messages.len(),
        args.senders
    );
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; args.messages]));
    let queue = Arc::new(Mutex::new(messages));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..args.senders {
        let api = online.api.clone();
        let queue = queue.clone();
        let sent_at = sent_at.clone();
        let carol = carol.clone();
        senders.push(rt.spawn(async move {
            loop {
                let Some((i, bytes)) = queue.lock().unwrap().pop() else {
                    break;
                };
                sent_at.lock().unwrap()[i] = Some(Instant::now());
                api.send_outbound(std::slice::from_ref(&carol), Some(&bytes))
                    .await
                    .unwrap();
            }
        }));
    }
    // Arrival times, polled from the sink.
    let n = args.messages;
    let mut arrived: Vec<Option<Instant>> = vec![None; n];
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_mins(30);
    while seen < n {
        let got = sink.since(seen);
        let now = Instant::now();
        for r in &got {
            let text = String::from_utf8_lossy(&r.data);
            let i: usize = text
                .split("Subject: bench ")
                .nth(1)
                .and_then(|s| s.split("\r\n").next())
                .and_then(|s| s.trim().parse().ok())
                .unwrap();
            assert!(
                text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"),
                "both DKIM signatures"
            );
            arrived[i] = Some(now);
        }
        seen += got.len();
        assert!(Instant::now() < deadline, "only {seen} of {n} arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in senders {
        rt.block_on(s).unwrap();
    }
    let handed_over = {
        let s = sent_at.lock().unwrap();
        s.iter().flatten().max().copied().unwrap() - started
    };
    let last = arrived.iter().flatten().max().copied().unwrap();
    let elapsed = last - started;
    let s = sent_at.lock().unwrap();
    let mut lat: Vec<Duration> = arrived
        .iter()
        .zip(s.iter())
        .map(|(a, b)| a.unwrap() - b.unwrap())
        .collect();
    lat.sort();
    println!(
        "relayed {n} messages ({size} bytes, DKIM Ed25519 + RSA-2048) with {} senders over {} \
         SMTP connection(s): handed over in {:.2} s, all at the sink after {:.2} s = {:.0} messages/s; \
         latency hand-over -> sink: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.senders,
        sink.connections(),
        handed_over.as_secs_f64(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().unwrap().as_secs_f64() * 1000.0,
    );
    drop(server);
}
