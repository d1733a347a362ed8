//! Load tool: several devices per person (issue 18).
//!
//! 1. Sealing cost of one message to one recipient with 1, 3 and 10 devices (one key wrap
//!    each), in-process.
//! 2. History for a new device: an in-process server, alice with `--messages` messages of
//!    2–8 KiB in her local mailbox; `letterme device link` and `letterme account join` as
//!    processes; the time the linking device takes to send the history after the new one
//!    joined, and the new device's sync of it.
//! 3. A flag changed through IMAP on one device until the other device's IMAP IDLE reports
//!    it, `--rounds` times, each device with its own `letterme proxy`.
//!
//! Run: `cargo run --release -p letterme-tests --bin letterme-devices-bench`.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use letterme_client::profile::ProfileDir;
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::{Address, EncryptionKeypair, SigningKeypair};
use letterme_server::{Config, SystemClock};
use letterme_tests::{PASSPHRASE, ProxyProc, flood, letterme_bin, python};

#[derive(Debug, Parser)]
#[command(about = "Several devices per person: seal cost, history transfer, flag to IDLE")]
struct Args {
    /// Messages in the mailbox a new device gets.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Flag changes timed from one device's IMAP to the other's IDLE.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Seals timed per device count.
    #[arg(long, default_value_t = 2000)]
    seals: usize,
}

const TWO_DEVICES: &str = include_str!("../../fixtures/imap/two_devices.py");

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn seal_cost(seals: usize) {
    let signer = SigningKeypair::generate();
    let bob = Address::parse("bob@bench.test").expect("an address");
    let payload = letterme_protocol::Payload {
        from: Address::parse("alice@bench.test").expect("an address"),
        to: vec![bob.clone()],
        cc: vec![],
        bcc: vec![],
        subject: "seal".into(),
        body: "x".repeat(4096),
        headers: vec![],
        date: 1,
        message_id: "<seal@bench.test>".into(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    };
    for devices in [1, 3, 10] {
        let keys: Vec<(Address, letterme_protocol::EncryptionPublicKey)> = (0..devices)
            .map(|_| (bob.clone(), EncryptionKeypair::generate().public()))
            .collect();
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..seals {
            bytes = seal(SignerKind::User, &signer, &payload, &keys, 1)
                .expect("seals")
                .encode()
                .len();
        }
        let each = t.elapsed().as_secs_f64() / seals as f64;
        println!(
            "seal, 4 KiB body, 1 recipient with {devices:>2} device(s): {:.1} µs each ({:.0}/s), envelope {bytes} bytes",
            each * 1e6,
            1.0 / each
        );
    }
}

/// `letterme` for `profile` with `args`, as a child process with piped stdout.
fn child(profile: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(letterme_bin())
        .args(args)
        .env("LETTERME_PROFILE", profile)
        .env("LETTERME_PASSPHRASE", PASSPHRASE)
        .env_remove("LETTERME_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("letterme runs")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    seal_cost(args.seals);
    // Built before anything is timed.
    letterme_bin();
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
    let laptop = tmp.path().join("laptop");
    let alice_addr = Address::parse("alice@bench.test")?;
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
    rt.block_on(flood(&bob, &alice_addr, args.messages, |i| {
        2048 + (i * 7919) % 6145
    }));
    rt.block_on(async {
        let me = letterme_client::Unlocked::open(ProfileDir(alice.clone()), PASSPHRASE)?;
        let online = me.connect().await?;
        let report = online.sync(&mut |_, _| {}).await?;
        anyhow::ensure!(
            report.fetched == args.messages,
            "alice synced {}",
            report.fetched
        );
        anyhow::Ok(())
    })?;

    // History: the link's first line is the code; it ends once the history is sent.
    let mut link = child(&alice, &["device", "link", "--json"]);
    let stdout = link.stdout.take();
    let linked = (|| -> anyhow::Result<(Duration, String)> {
        let mut lines = std::io::BufReader::new(stdout.context("stdout")?).lines();
        let shown: serde_json::Value = serde_json::from_str(&lines.next().context("a code")??)?;
        let code = shown["code"].as_str().unwrap_or_default().to_owned();
        let joined = Command::new(letterme_bin())
            .args([
                "account",
                "join",
                "alice@bench.test",
                "--code",
                &code,
                "--server",
                &url,
            ])
            .env("LETTERME_PROFILE", &laptop)
            .env("LETTERME_PASSPHRASE", PASSPHRASE)
            .output()?;
        anyhow::ensure!(joined.status.success(), "join: {joined:?}");
        let joined_at = Instant::now();
        let last = lines.last().transpose()?.unwrap_or_default();
        Ok((joined_at.elapsed(), last))
    })();
    let status = link.wait()?;
    let (sent, last) = linked?;
    anyhow::ensure!(status.success(), "device link failed: {last}");
    let t = Instant::now();
    let received = rt.block_on(async {
        let me = letterme_client::Unlocked::open(ProfileDir(laptop.clone()), PASSPHRASE)?;
        let online = me.connect().await?;
        online.sync(&mut |_, _| {}).await?;
        let inbox = me_count(&online.me)?;
        anyhow::Ok(inbox)
    })?;
    let synced = t.elapsed();
    anyhow::ensure!(received == args.messages, "the new device has {received}");
    println!(
        "history of {} messages (2-8 KiB) to a new device: sent in {:.2} s ({:.0}/s) after it joined, \
         synced by it in {:.2} s ({:.0}/s); {:.0} messages/s end to end [{last}]",
        args.messages,
        sent.as_secs_f64(),
        args.messages as f64 / sent.as_secs_f64(),
        synced.as_secs_f64(),
        args.messages as f64 / synced.as_secs_f64(),
        args.messages as f64 / (sent + synced).as_secs_f64()
    );

    // A flag on one device to IDLE on the other.
    let (one, two) = (ProxyProc::start(&alice), ProxyProc::start(&laptop));
    // Both proxies' first syncs (nothing new) done.
    std::thread::sleep(Duration::from_secs(3));
    let out = python(
        TWO_DEVICES,
        &[
            &one.imap.port().to_string(),
            &one.password,
            &two.imap.port().to_string(),
            &two.password,
            "alice@bench.test",
            &args.rounds.to_string(),
        ],
    );
    let mut lat: Vec<f64> = out["flag_latencies"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let missed = args.rounds - lat.len();
    lat.sort_by(f64::total_cmp);
    println!(
        "flag change on device 1 to IDLE on device 2 ({} rounds, {missed} not seen in 15 s): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.99) * 1e3,
        lat.last().copied().unwrap_or(f64::NAN) * 1e3
    );
    Ok(())
}

/// Messages in every folder of the cache.
fn me_count(me: &letterme_client::Unlocked) -> anyhow::Result<usize> {
    let mut n = 0;
    for f in me.cache.folders()? {
        n += me.cache.messages(f.id)?.len();
    }
    Ok(n)
}
