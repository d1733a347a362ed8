//! Load tool: one large attachment between two letter.me users of one server.
//!
//! Starts `letterme serve` with two accounts, writes a file of `--mib` MiB of random bytes,
//! sends it with `letterme send --attach` (compose, seal, upload as a blob), receives it
//! with `letterme sync` (download, open, store) and saves it with `letterme read
//! --save-attachments`, then checks the saved file is the sent one; then bob's `letterme
//! proxy` serves the message to python's imaplib (`BODY.PEEK[]`), which checks the file in
//! it. Reports MB/s each way (the file's bytes over the command's wall time), the peak RSS
//! of each command (from `/usr/bin/time`), of the server and of the proxy, and what the
//! server held.
//! Run: `cargo run --release -p letterme-tests --bin letterme-blob-bench`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use letterme_tests::world::World;
use letterme_tests::{PASSPHRASE, ProxyProc, ServerProc, letterme_bin, python};

/// Fetches INBOX message 1 whole, times it, and gives the SHA-256 of its first attachment.
const FETCH: &str = r#"
import email, hashlib, imaplib, json, sys, time
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login(sys.argv[3], sys.argv[4])
m.select("INBOX", readonly=True)
t0 = time.perf_counter()
typ, dat = m.fetch("1", "(BODY.PEEK[])")
secs = time.perf_counter() - t0
raw = dat[0][1]
msg = email.message_from_bytes(raw)
part = next(p for p in msg.walk() if p.get_filename())
m.logout()
print(json.dumps({"seconds": secs, "bytes": len(raw),
                  "sha256": hashlib.sha256(part.get_payload(decode=True)).hexdigest()}))
"#;

fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[derive(Debug, Parser)]
#[command(about = "One large attachment: send and receive throughput, peak memory")]
struct Args {
    /// Size of the attached file in MiB.
    #[arg(long, default_value_t = 50)]
    mib: usize,
    /// Recipients of the message (bob, then bob2, bob3...); the first one's receive is timed.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
}

/// Runs `letterme ARGS` for `profile` under `/usr/bin/time`: stdout, wall seconds, peak
/// RSS in MiB.
fn timed(profile: &Path, args: &[&str]) -> anyhow::Result<(String, f64, f64)> {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kib %M"])
        .arg(letterme_bin())
        .args(args)
        .env("LETTERME_PROFILE", profile)
        .env("LETTERME_PASSPHRASE", PASSPHRASE)
        .env_remove("LETTERME_LOG")
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "letterme {} failed: {stderr}",
        args.join(" ")
    );
    let kib: f64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        secs,
        kib / 1024.0,
    ))
}

fn server_peak_mib(server: &ServerProc) -> f64 {
    peak_mib(server.child.id())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    letterme_bin();
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let to: Vec<String> = (1..=args.recipients.max(1))
        .map(|i| {
            if i == 1 {
                "bob@x.test".to_owned()
            } else {
                world.account(&server, &format!("bob{i}"), &format!("bob{i}@x.test"));
                format!("bob{i}@x.test")
            }
        })
        .collect();
    let size = args.mib << 20;
    let file = world.path().join("big.bin");
    let mut bytes = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&file, &bytes)?;
    let mb = size as f64 / 1e6;
    println!("attachment: {} MiB ({mb:.1} MB) of random bytes", args.mib);

    let mut send = vec!["send", "--subject", "big", "--body", "attached", "--to"];
    send.extend(to.iter().map(String::as_str));
    send.extend(["--attach", file.to_str().unwrap_or_default()]);
    let (_, secs, rss) = timed(&alice, &send)?;
    println!(
        "send (compose, seal, upload): {secs:.2} s, {:.1} MB/s, peak RSS {rss:.1} MiB",
        mb / secs
    );
    let held = server.stored_blobs().chunk_bytes;
    println!(
        "server holds {:.1} MB of blob chunks for {} recipient(s) ({:.2}× the file)",
        held as f64 / 1e6,
        to.len(),
        held as f64 / size as f64
    );

    let (_, secs, rss) = timed(&bob, &["sync"])?;
    println!(
        "receive (download, open, store): {secs:.2} s, {:.1} MB/s, peak RSS {rss:.1} MiB",
        mb / secs
    );
    let (list, _, _) = timed(&bob, &["list", "--json"])?;
    let listed: serde_json::Value = serde_json::from_str(&list)?;
    let id = listed[0]["id"].as_str().unwrap_or_default().to_owned();
    let saved = world.path().join("saved");
    let (_, secs, rss) = timed(
        &bob,
        &[
            "read",
            &id,
            "--save-attachments",
            saved.to_str().unwrap_or_default(),
        ],
    )?;
    println!(
        "save (open, write): {secs:.2} s, {:.1} MB/s, peak RSS {rss:.1} MiB",
        mb / secs
    );
    let back = std::fs::read(saved.join("big.bin"))?;
    anyhow::ensure!(back == bytes, "the saved file differs from the sent one");
    println!(
        "saved file identical; server peak RSS {:.1} MiB",
        server_peak_mib(&server)
    );

    let proxy = ProxyProc::start(&bob);
    let port = proxy.imap.port().to_string();
    let got = python(FETCH, &["127.0.0.1", &port, "bob@x.test", &proxy.password]);
    let want = {
        use sha2::Digest as _;
        letterme_protocol::codec::hex(&sha2::Sha256::digest(&bytes))
    };
    anyhow::ensure!(
        got["sha256"].as_str() == Some(want.as_str()),
        "the proxy served another file: {got}"
    );
    let secs = got["seconds"].as_f64().unwrap_or(0.0);
    println!(
        "proxy serves it (imaplib BODY.PEEK[], {:.1} MB): {secs:.2} s, {:.1} MB/s, proxy peak RSS {:.1} MiB",
        got["bytes"].as_f64().unwrap_or(0.0) / 1e6,
        mb / secs,
        peak_mib(proxy.child.id())
    );
    Ok(())
}
