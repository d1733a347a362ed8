//! Load tool: federated delivery between two servers on loopback.
//!
//! Starts `letterme serve` for a.test and b.test (separate processes) with an in-process
//! DNS server publishing both `_mailx` records, seals `--messages` messages from
//! alice@a.test to bob@b.test in advance, then sends them through a.test's API from
//! `--senders` concurrent tasks while bob long-polls b.test's API. Reports deliveries per
//! second (first send to last arrival at b.test) and the latency from each send to the
//! message being listed at b.test (stored and committed there).
//! Run: `cargo run --release -p letterme-tests --bin letterme-fed-bench`.
// A load tool: any failure should stop it, loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_client::profile::ProfileDir;
use letterme_protocol::Address;
use letterme_tests::world::World;
use letterme_tests::{PASSPHRASE, ServerProc, free_port, mailx_record, sealed_text};

#[derive(Debug, Parser)]
#[command(about = "Federated deliveries per second and latency, a.test -> b.test on loopback")]
struct Args {
    /// Messages to deliver.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent senders (HTTP clients of a.test).
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = Args::parse();
    let world = World::new(vec![]);
    let (rt, dns) = (&world.rt, &world.dns);
    let start_server = |domain: &str| {
        let dir = world.path().join(domain);
        std::fs::create_dir_all(&dir).unwrap();
        let s = ServerProc::start(
            &dir,
            domain,
            &format!(
                "dns.nameservers = [\"{}\"]\nfederation.listen = \"127.0.0.1:{}\"\n\
                 limits.quota = \"10GB\"\nlimits.queued_per_user = \"10GB\"\n\
                 limits.remote_per_minute = 100000000\nlimits.remote_burst = 100000000",
                dns.addr,
                free_port()
            ),
        );
        let value = mailx_record(&s, domain);
        rt.block_on(dns.set_txt(&format!("_mailx.{domain}"), &value));
        s
    };
    let a = start_server("a.test");
    let b = start_server("b.test");
    let alice = world.account(&a, "alice@a.test", "alice@a.test");
    let bob = world.account(&b, "bob@b.test", "bob@b.test");
    let bob_addr = Address::parse("bob@b.test").unwrap();
    let login = |p: &Path| {
        rt.block_on(
            letterme_client::Unlocked::open(ProfileDir(p.to_owned()), PASSPHRASE)
                .unwrap()
                .with_dns(vec![dns.addr])
                .connect(),
        )
        .unwrap()
    };
    let alice_online = login(&alice);
    let bob_online = login(&bob);
    let key = rt
        .block_on(alice_online.verified_keys(&bob_addr))
        .unwrap()
        .attestation
        .encryption_key;
    let body = "x".repeat(args.body);
    let sealed: Vec<(String, Vec<u8>)> = (0..args.messages)
        .map(|i| {
            let env = sealed_text(
                &alice_online,
                &bob_addr,
                key,
                &format!("bench {i}"),
                &body,
                &format!("<bench-{i}@a.test>"),
            );
            (env.id.to_hex(), env.encode())
        })
        .collect();
    let size = sealed.first().map_or(0, |(_, b)| b.len());
    eprintln!(
        "sealed {} envelopes of {size} bytes; sending with {} senders",
        sealed.len(),
        args.senders
    );

    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let n = args.messages;
    let started = Instant::now();
    // bob at b.test: long-polls and notes when each message is listed.
    let receiver = {
        let api = bob_online.api.clone();
        rt.spawn(async move {
            let mut arrived = HashMap::with_capacity(n);
            let mut after = 0;
            while arrived.len() < n {
                let page = api.list_wait(after, 5).await.unwrap();
                let now = Instant::now();
                for e in page {
                    after = after.max(e.seq);
                    arrived.insert(e.id, now);
                }
            }
            arrived
        })
    };
    let queue = Arc::new(Mutex::new(sealed));
    let mut senders = Vec::new();
    for _ in 0..args.senders {
        let api = alice_online.api.clone();
        let queue = queue.clone();
        let sent_at = sent_at.clone();
        senders.push(rt.spawn(async move {
            loop {
                let Some((id, bytes)) = queue.lock().unwrap().pop() else {
                    break;
                };
                sent_at.lock().unwrap().insert(id, Instant::now());
                api.send(bytes).await.unwrap();
            }
        }));
    }
    for s in senders {
        rt.block_on(s).unwrap();
    }
    let sent_all = started.elapsed();
    let arrived = rt.block_on(receiver).unwrap();
    let last = arrived.values().max().copied().unwrap();
    let elapsed = last - started;
    let sent_at = sent_at.lock().unwrap();
    let mut lat: Vec<Duration> = arrived.iter().map(|(id, at)| *at - sent_at[id]).collect();
    lat.sort();
    println!(
        "federated {n} messages ({size}-byte envelopes) with {} senders: accepted by a.test in {:.2} s, \
         all stored at b.test after {:.2} s = {:.0} deliveries/s; latency send -> stored at b.test: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.senders,
        sent_all.as_secs_f64(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().unwrap().as_secs_f64() * 1000.0,
    );
    drop((a, b));
}
