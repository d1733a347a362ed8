//! Load tool: ordinary messages with an attachment through the native path.
//!
//! Starts an in-process server (SQLite, synchronous=FULL), then alice sends `--messages`
//! messages of about `--size` bytes — text and one `--attachment`-byte file, composed as
//! `letterme send --attach` composes them — through the whole client send (compose, seal,
//! POST, the Sent copy into her encrypted cache), `--concurrency` at a time; then bob syncs
//! them all (download, verify, open, render, commit to his encrypted cache, acknowledge).
//! Reports messages/s and MB/s each way.
//! Run: `cargo run --release -p letterme-tests --bin letterme-mime-bench`.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use letterme_client::attached::AttachedFile;
use letterme_client::mime::compose;
use letterme_client::profile::ProfileDir;
use letterme_client::{Draft, Unlocked};
use letterme_protocol::Address;
use letterme_server::{Config, SystemClock};
use letterme_tests::PASSPHRASE;

#[derive(Debug, Parser)]
#[command(about = "Messages with an attachment per second through the native path")]
struct Args {
    /// Messages sent and synced.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Bytes of each message's text and file together.
    #[arg(long, default_value_t = 100_000)]
    size: usize,
    /// Bytes of each message's file.
    #[arg(long, default_value_t = 10_000)]
    attachment: usize,
    /// Sends in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut config = Config::for_domain("bench.test");
    config.data_dir = tmp.path().join("server");
    config.http.listen = "127.0.0.1:0".parse()?;
    config.limits.quota = letterme_server::config::ByteSize(u64::MAX / 2);
    // Each send looks bob's key up; the per-user lookup rate is not what is measured.
    config.limits.key_lookup_burst = 1_000_000;
    let server = rt.block_on(letterme_server::start(config, Arc::new(SystemClock)))?;
    let url = format!("http://{}", server.local_addr);
    let bob = Address::parse("bob@bench.test")?;
    let mut online = Vec::new();
    for who in ["alice", "bob"] {
        let dir = ProfileDir(tmp.path().join(who));
        let address = Address::parse(&format!("{who}@bench.test"))?;
        rt.block_on(async {
            letterme_client::create_account(&dir, &address, &url, PASSPHRASE, None).await?;
            let me = Unlocked::open(dir, PASSPHRASE)?;
            anyhow::Ok(Arc::new(me.connect().await?))
        })
        .map(|o| online.push(o))?;
    }
    let (alice, bob_online) = (online[0].clone(), online[1].clone());

    // Deterministic text of about the size asked, and a file of bytes of every value.
    let text_len = args.size.saturating_sub(args.attachment);
    let line = "The quarterly figures are in the attached file; notes follow below.\n";
    let text: String = line.repeat(text_len / line.len() + 1)[..text_len].to_owned();
    let file: Vec<u8> = (0..args.attachment).map(|i| (i * 7 % 256) as u8).collect();
    let draft = |i: usize| Draft {
        to: vec![bob.clone()],
        cc: vec![],
        bcc: vec![],
        subject: format!("figures {i}"),
        body: text.clone(),
        in_reply_to: None,
        references: vec![],
        message_id: None,
        allow_plaintext: false,
        apart: vec![],
        mime: compose(
            &text,
            None,
            vec![AttachedFile::held(format!("figures-{i}.bin"), file.clone())],
        )
        .expect("held in memory"),
    };
    let sample = draft(0).mime.map_or(0, |m| m.len());

    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..args.messages {
            if tasks.len() >= args.concurrency {
                tasks.join_next().await.expect("a task")??;
            }
            let (alice, d) = (alice.clone(), draft(i));
            tasks.spawn(async move { alice.send(&d).await.map(drop) });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })?;
    let sent = t.elapsed().as_secs_f64();
    let mb = (sample * args.messages) as f64 / 1e6;
    println!(
        "send: {} messages of {:.1} KB (entity as composed) in {sent:.2} s: {:.0} msg/s, {:.1} MB/s ({} in flight)",
        args.messages,
        sample as f64 / 1e3,
        args.messages as f64 / sent,
        mb / sent,
        args.concurrency
    );

    let t = Instant::now();
    let report = rt.block_on(bob_online.sync(&mut |_, _| {}))?;
    let synced = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.fetched == args.messages,
        "bob synced {} of {} messages",
        report.fetched,
        args.messages
    );
    println!(
        "receive (sync into the encrypted cache): {} messages in {synced:.2} s: {:.0} msg/s, {:.1} MB/s",
        args.messages,
        args.messages as f64 / synced,
        mb / synced
    );
    rt.block_on(server.shutdown())?;
    Ok(())
}
