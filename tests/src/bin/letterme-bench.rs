//! Load tool: native deliveries per second through the HTTP API on loopback.
//!
//! Starts an in-process server on a temporary directory (SQLite WAL, synchronous=FULL),
//! registers users, seals every envelope up front (4 KiB bodies), then lets `--concurrency`
//! senders POST them as fast as the server acknowledges, and reports throughput and
//! latency percentiles. Run: `cargo run --release -p letterme-tests --bin letterme-bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::{Address, EncryptionKeypair, KeyBinding, Payload, SigningKeypair, b64};
use letterme_server::{Config, SystemClock};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Native deliveries per second through the HTTP API on loopback")]
struct Args {
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deliveries in the timed run.
    #[arg(long, default_value_t = 40_000)]
    messages: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 4096)]
    body: usize,
    /// Recipients (and senders) registered.
    #[arg(long, default_value_t = 64)]
    users: usize,
}

struct User {
    address: Address,
    identity: SigningKeypair,
    encryption: EncryptionKeypair,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let mut config = Config::for_domain("bench.test");
    config.data_dir = tmp.path().join("data");
    config.http.listen = "127.0.0.1:0".parse()?;
    config.limits.key_lookup_burst = 1_000_000;
    let server = letterme_server::start(config, Arc::new(SystemClock)).await?;
    let url = format!("http://{}", server.local_addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;

    let now = letterme_client::now();
    let mut users = Vec::new();
    for i in 0..args.users.max(2) {
        let u = User {
            address: Address::parse(&format!("user{i}@bench.test"))?,
            identity: SigningKeypair::generate(),
            encryption: EncryptionKeypair::generate(),
        };
        let binding = KeyBinding::create(&u.address, &u.identity, &u.encryption.public(), now);
        let r = http
            .post(format!("{url}/v1/accounts"))
            .json(&json!({ "binding": binding }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "register failed: {}",
            r.text().await?
        );
        users.push(u);
    }

    // One token and one queue of pre-sealed envelopes per sender.
    let body = "x".repeat(args.body);
    let per_sender = args.messages.div_ceil(args.concurrency);
    let mut senders = Vec::new();
    for s in 0..args.concurrency {
        let u = &users[s % users.len()];
        let token = login(&http, &url, u).await?;
        let queue = seal_queue(u, &users, s, per_sender, &body, now)?;
        senders.push((token, queue));
    }
    let envelope_size = senders[0].1[0].len();
    eprintln!(
        "sealed {} envelopes of {envelope_size} bytes; sending with {} concurrent senders",
        per_sender * args.concurrency,
        args.concurrency
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (token, queue) in senders {
        let http = http.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(queue.len());
            let mut errors = 0usize;
            for env in queue {
                let t0 = Instant::now();
                let ok = http
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(&token)
                    .body(env)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED);
                lat.push(t0.elapsed());
                errors += usize::from(!ok);
            }
            (lat, errors)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ok = lat.len() - errors;
    println!(
        "deliveries: {ok} ok, {errors} failed, in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} deliveries/s",
        ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "envelope size: {envelope_size} bytes; concurrency {}; synchronous=FULL, WAL",
        args.concurrency
    );
    server.shutdown().await?;
    Ok(())
}

async fn login(http: &reqwest::Client, url: &str, u: &User) -> anyhow::Result<String> {
    let c: Value = http
        .post(format!("{url}/v1/auth/challenge"))
        .json(&json!({ "address": u.address }))
        .send()
        .await?
        .json()
        .await?;
    let challenge: [u8; 32] = b64::decode_array(c["challenge"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("bad challenge"))?;
    let sig =
        letterme_protocol::auth::sign_challenge(&u.identity, "bench.test", &u.address, &challenge);
    let t: Value = http
        .post(format!("{url}/v1/auth/token"))
        .json(&json!({ "address": u.address, "challenge": c["challenge"], "signature": sig }))
        .send()
        .await?
        .json()
        .await?;
    Ok(t["token"].as_str().unwrap_or_default().to_owned())
}

/// Sender `s`'s envelopes, each to the next user round the ring.
fn seal_queue(
    u: &User,
    users: &[User],
    s: usize,
    n: usize,
    body: &str,
    now: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut queue = Vec::with_capacity(n);
    for k in 0..n {
        let to = &users[(s + k + 1) % users.len()];
        let payload = Payload {
            from: u.address.clone(),
            to: vec![to.address.clone()],
            cc: vec![],
            bcc: vec![],
            subject: format!("bench {s}/{k}"),
            body: body.to_owned(),
            headers: vec![],
            date: now,
            message_id: format!("<{s}.{k}@bench.test>"),
            in_reply_to: None,
            references: vec![],
            legacy: None,
            mime: None,
            blobs: vec![],
            state: vec![],
        };
        let env = seal(
            SignerKind::User,
            &u.identity,
            &payload,
            &[(to.address.clone(), to.encryption.public())],
            now,
        )?;
        queue.push(env.encode());
    }
    Ok(queue)
}
