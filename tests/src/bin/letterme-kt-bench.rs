//! Load tool: key lookups per second through the HTTP API, each answered with the key's
//! key-transparency proofs (VRF label proof, inclusion proof in a log of `--log-size`
//! entries, a freshly signed checkpoint, and a consistency proof from `since`).
//!
//! Starts an in-process server on a temporary directory, registers `--users` accounts
//! through the API, fills the log up to `--log-size` entries (extra entries written to the
//! database while the server is stopped, as a large domain's history), starts the server
//! again (the log is rebuilt from the database), then lets `--concurrency` clients look
//! keys up as fast as the server answers. A sample of the answers is verified as the
//! client does. Run: `cargo run --release -p letterme-tests --bin letterme-kt-bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_protocol::kt::{KeyOp, KtProof, LogEntry};
use letterme_protocol::{Address, Attestation, EncryptionKeypair, KeyBinding, SigningKeypair, b64};
use letterme_server::{Config, SystemClock};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Key lookups per second with key-transparency proofs, through the API")]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Lookups in the timed run.
    #[arg(long, default_value_t = 50_000)]
    lookups: usize,
    /// Accounts registered (and looked up); at most 200, the burst one address may
    /// register before the per-IP limit.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Entries in the log during the run.
    #[arg(long, default_value_t = 1_000_000)]
    log_size: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let mut config = Config::for_domain("bench.test");
    config.data_dir = tmp.path().join("data");
    config.http.listen = "127.0.0.1:0".parse()?;
    config.limits.key_lookup_burst = 100_000_000;
    config.limits.key_lookups_per_second = 100_000_000;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;

    // Accounts, through the API.
    let server = letterme_server::start(config.clone(), Arc::new(SystemClock)).await?;
    let url = format!("http://{}", server.local_addr);
    let now = letterme_client::now();
    let n = args.users.max(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for part in 0..args.concurrency.min(n) {
        let http = http.clone();
        let url = url.clone();
        let (from, step) = (part, args.concurrency.min(n));
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (from..n).step_by(step) {
                let address = Address::parse(&format!("user{i}@bench.test"))?;
                let identity = SigningKeypair::generate();
                let binding = KeyBinding::create(
                    &address,
                    &identity,
                    &EncryptionKeypair::generate().public(),
                    now,
                );
                let r = http
                    .post(format!("{url}/v1/accounts"))
                    .json(&json!({ "binding": binding }))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "register: {}", r.text().await?);
                made.push((address, identity));
            }
            Ok::<_, anyhow::Error>(made)
        }));
    }
    let mut users = Vec::new();
    for t in tasks {
        users.extend(t.await??);
    }
    let took = t0.elapsed().as_secs_f64();
    println!(
        "registrations: {n} through the API, each committed with its log entry, in {took:.2} s = {:.0}/s",
        n as f64 / took
    );
    let domain_key = server.domain_key;
    server.shutdown().await?;

    // The rest of a large domain's history.
    let filled = fill_log(&config, args.log_size)?;
    let t0 = Instant::now();
    let server = letterme_server::start(config, Arc::new(SystemClock)).await?;
    eprintln!(
        "log of {filled} entries rebuilt at start in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let url = format!("http://{}", server.local_addr);
    let token = login(&http, &url, &users[0].0, &users[0].1).await?;
    let since = filled / 2;

    let per_client = args.lookups.div_ceil(args.concurrency);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let http = http.clone();
        let url = url.clone();
        let token = token.clone();
        let names: Vec<Address> = users.iter().map(|(a, _)| a.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            let mut errors = 0usize;
            let mut sample = Vec::new();
            for k in 0..per_client {
                let who = &names[(c * 7919 + k) % names.len()];
                let t = Instant::now();
                let r = http
                    .get(format!("{url}/v1/keys/{who}?since={since}"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let body = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                    _ => None,
                };
                lat.push(t.elapsed());
                match body {
                    Some(b) if sample.len() < 4 => sample.push((who.clone(), b)),
                    Some(_) => {}
                    None => errors += 1,
                }
            }
            (lat, errors, sample)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut errors = 0;
    let mut samples = Vec::new();
    for t in tasks {
        let (l, e, s) = t.await?;
        lat.extend(l);
        errors += e;
        samples.extend(s);
    }
    let elapsed = start.elapsed();
    // The answers carry proofs that verify, as a client checks them.
    let mut proof_bytes = 0;
    for (who, body) in &samples {
        let v: Value = serde_json::from_slice(body)?;
        let att: Attestation = serde_json::from_value(v["attestation"].clone())?;
        let kt: KtProof = serde_json::from_value(v["kt"].clone())?;
        anyhow::ensure!(kt.checkpoint.size == filled, "checkpoint size");
        letterme_client::kt::check(who, &att, &[], &kt, &[domain_key], None)
            .map_err(|e| anyhow::anyhow!("{who}: {e}"))?;
        proof_bytes = kt.inclusion.len();
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ok = lat.len() - errors;
    println!(
        "lookups: {ok} ok, {errors} failed, in {:.2} s (log of {filled} entries, since={since})",
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} lookups/s with proofs",
        ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "verified {} sampled answers; inclusion proof {proof_bytes} bytes; concurrency {}",
        samples.len(),
        args.concurrency
    );
    server.shutdown().await?;
    Ok(())
}

/// Appends entries under random labels until the log holds `size`; returns its size.
fn fill_log(config: &Config, size: u64) -> anyhow::Result<u64> {
    let mut db = rusqlite::Connection::open(config.database_path())?;
    let have: u64 = db.query_row("SELECT count(*) FROM kt_log", [], |r| r.get::<_, i64>(0))? as u64;
    let tx = db.transaction()?;
    {
        let mut ins = tx.prepare("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?;
        for idx in have..size {
            let label: [u8; 32] = letterme_protocol::keys::random_bytes();
            let entry = LogEntry {
                op: KeyOp::Register,
                label,
                identity_key: letterme_protocol::keys::random_bytes(),
                encryption_key: letterme_protocol::keys::random_bytes(),
                key_version: 1,
                device_set: None,
                time: 1_700_000_000 + idx,
            };
            ins.execute(rusqlite::params![
                idx as i64,
                label.as_slice(),
                entry.encode()
            ])?;
        }
    }
    tx.commit()?;
    Ok(size.max(have))
}

async fn login(
    http: &reqwest::Client,
    url: &str,
    address: &Address,
    identity: &SigningKeypair,
) -> anyhow::Result<String> {
    let c: Value = http
        .post(format!("{url}/v1/auth/challenge"))
        .json(&json!({ "address": address }))
        .send()
        .await?
        .json()
        .await?;
    let challenge: [u8; 32] = b64::decode_array(c["challenge"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow::anyhow!("bad challenge"))?;
    let sig = letterme_protocol::auth::sign_challenge(identity, "bench.test", address, &challenge);
    let t: Value = http
        .post(format!("{url}/v1/auth/token"))
        .json(&json!({ "address": address, "challenge": c["challenge"], "signature": sig }))
        .send()
        .await?
        .json()
        .await?;
    Ok(t["token"].as_str().unwrap_or_default().to_owned())
}
