//! Load tool: inbound SMTP messages per second with full verification.
//!
//! Starts an in-process DNS server (SPF, DKIM RSA + Ed25519, DMARC for sender.test), runs
//! `letterme serve` as a separate process pointed at it, then `--connections` clients
//! each send `--messages / --connections` DKIM-signed 4 KiB messages over one SMTP session
//! (MAIL, RCPT, DATA pipelined). Reports messages/s, the p50/p99 time from the end of DATA
//! to the 250, and the server process's peak resident memory (VmHWM).
//! Run: `cargo run --release -p letterme-tests --bin letterme-smtp-bench`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use letterme_tests::dkim::DkimKeys;
use letterme_tests::dns::{TestDns, txt};
use letterme_tests::{ServerProc, cli, ok};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Inbound SMTP messages per second with SPF/DKIM/DMARC verification")]
struct Args {
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 8000)]
    messages: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 4096)]
    body: usize,
    /// Distinct signed messages cycled through.
    #[arg(long, default_value_t = 64)]
    distinct: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = DkimKeys::new("sender.test");
    let mut records = vec![
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
    ];
    for (owner, value) in keys.records() {
        records.push(txt(&owner, &value));
    }
    let dns = TestDns::start(records).await?;
    let root = tempfile::tempdir()?;
    // SAFETY-free: only this process reads the variable, before spawning the server.
    let server = tokio::task::spawn_blocking({
        let root = root.path().to_owned();
        let dns = dns.addr;
        move || {
            ServerProc::start(
                &root,
                "x.test",
                &format!("dns.nameservers = [\"{dns}\"]\nsmtp.max_sessions_per_ip = 64\nlimits.quota = \"10GB\""),
            )
        }
    })
    .await?;
    let profile = root.path().join("bob");
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        ok(&cli(
            &profile,
            &["account", "create", "bob@x.test", "--server", &url],
            None,
        ))
    })
    .await?;
    let smtp = server
        .smtp
        .ok_or_else(|| anyhow::anyhow!("no smtp listener"))?;

    let body =
        "lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n".repeat(args.body / 57 + 1);
    let signed: Vec<Vec<u8>> = (0..args.distinct)
        .map(|i| {
            let raw = format!(
                "From: Alice <alice@sender.test>\r\nTo: bob@x.test\r\nSubject: load {i}\r\n\
                 Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{i}@sender.test>\r\n\r\n{}",
                &body[..args.body]
            );
            let mut m = keys.sign(raw.as_bytes());
            m.extend_from_slice(b"\r\n.\r\n");
            m
        })
        .collect();
    let per = args.messages / args.connections;
    eprintln!(
        "{} connections x {per} messages of {} bytes (signed, rsa + ed25519)",
        args.connections,
        signed[0].len()
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let msgs: Vec<Vec<u8>> = (0..per)
            .map(|k| signed[(c * per + k) % signed.len()].clone())
            .collect();
        tasks.push(tokio::spawn(client(smtp, msgs)));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await??;
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let peak = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "VmHWM: unknown".into());
    println!(
        "messages: {} accepted, {failed} refused, in {:.2} s",
        lat.len() - failed,
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} messages/s",
        (lat.len() - failed) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "end of DATA to 250: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "server peak memory: {}",
        peak.trim_start_matches("VmHWM:").trim()
    );
    drop(server);
    drop(dns);
    Ok(())
}

/// One SMTP session sending `msgs`; returns end-of-DATA→reply latencies and refusals.
async fn client(addr: SocketAddr, msgs: Vec<Vec<u8>>) -> anyhow::Result<(Vec<Duration>, usize)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut reply =
        async |r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>| -> anyhow::Result<u16> {
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    anyhow::bail!("connection closed");
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
                }
            }
        };
    anyhow::ensure!(reply(&mut r).await? == 220);
    w.write_all(b"EHLO client.test\r\n").await?;
    anyhow::ensure!(reply(&mut r).await? == 250);
    let mut lat = Vec::with_capacity(msgs.len());
    let mut failed = 0;
    for m in msgs {
        w.write_all(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n")
            .await?;
        let codes = (
            reply(&mut r).await?,
            reply(&mut r).await?,
            reply(&mut r).await?,
        );
        anyhow::ensure!(codes == (250, 250, 354), "unexpected {codes:?}");
        w.write_all(&m).await?;
        let t0 = Instant::now();
        let code = reply(&mut r).await?;
        lat.push(t0.elapsed());
        failed += usize::from(code != 250);
    }
    w.write_all(b"QUIT\r\n").await?;
    Ok((lat, failed))
}
