//! `letterme demo`: a server on a temporary directory, two users, a message each way,
//! and what each side sees — then everything is removed.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use letterme_client::profile::ProfileDir;
use letterme_client::{Draft, Unlocked};
use letterme_protocol::Address;
use letterme_server::{Config, SystemClock};

const PASS: &str = "demo passphrase";

pub async fn run() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("letterme-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut config = Config::for_domain("demo.test");
    config.data_dir = tmp.path().join("server");
    config.http.listen = "127.0.0.1:0".parse()?;
    let server = letterme_server::start(config, Arc::new(SystemClock)).await?;
    let url = format!("http://{}", server.local_addr);
    println!(
        "1. server for demo.test on {url} (data in {})",
        tmp.path().display()
    );

    let alice: Address = "alice@demo.test".parse()?;
    let bob: Address = "bob@demo.test".parse()?;
    let mut users = Vec::new();
    for who in [&alice, &bob] {
        let dir = ProfileDir(tmp.path().join(who.local_part()));
        let p = letterme_client::create_account(&dir, who, &url, PASS, None).await?;
        println!(
            "2. created {who}: keys generated locally, attested by the server (identity {}…)",
            &p.attestation.identity_key.to_base64()[..12]
        );
        users.push(dir);
    }

    let step = |from: &ProfileDir, to: &Address, subject: &str, body: &str| {
        let from = from.clone();
        let to = to.clone();
        let subject = subject.to_owned();
        let body = body.to_owned();
        async move {
            let online = Unlocked::open(from, PASS)?.connect().await?;
            let report = online
                .send(&Draft {
                    to: vec![to.clone()],
                    subject,
                    body,
                    ..Draft::default()
                })
                .await?;
            println!(
                "3. {} sealed a message to {to}'s verified key and sent it ({})",
                online.me.profile.address, report.message_id
            );
            anyhow::Ok(())
        }
    };
    let receive = |dir: &ProfileDir| {
        let dir = dir.clone();
        async move {
            let online = Unlocked::open(dir, PASS)?.connect().await?;
            let r = online.sync(&mut |_, _| {}).await?;
            let me = online.me.profile.address.clone();
            println!(
                "4. {me} synced {} new message(s); the server deleted them after the ack",
                r.fetched
            );
            for m in online.me.list()? {
                println!(
                    "   {me} reads: from {} — \"{}\" — {}",
                    m.from, m.subject, m.body
                );
            }
            anyhow::Ok(())
        }
    };

    step(&users[0], &bob, "Hello Bob", "Only you can read this.").await?;
    receive(&users[1]).await?;
    step(
        &users[1],
        &alice,
        "Re: Hello Bob",
        "And only you can read this reply.",
    )
    .await?;
    receive(&users[0]).await?;

    server.shutdown().await?;
    println!(
        "5. the server only ever stored ciphertext; removing {}",
        tmp.path().display()
    );
    drop(tmp);
    Ok(())
}
