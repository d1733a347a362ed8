//! Federation end to end: two (or three) `letterme serve` processes for different
//! domains, discovering each other through an in-process DNS server on loopback, with
//! users on the CLI. Plus the signature checks against hand-made requests, and the retry
//! schedule under an injected clock.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use letterme_protocol::federation::{RequestSignature, ResponseSignature, encode_batch_items};
use letterme_protocol::{Address, EncryptionKeypair, SigningKeypair};
use letterme_tests::dns::TestDns;
use letterme_tests::{
    FakeClock, PASSPHRASE, ServerProc, cli, contains, files_under, free_port, ok, sealed_text,
    user_error,
};
use serde_json::Value;

/// TTL of the test `_mailx` records: short, so a changed record is seen quickly.
const TTL: u32 = 1;

struct World {
    rt: tokio::runtime::Runtime,
    dns: TestDns,
    root: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dns = rt.block_on(TestDns::start(vec![])).unwrap();
        Self {
            rt,
            dns,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn dns_arg(&self) -> String {
        self.dns.addr.to_string()
    }

    /// Starts a federating server for `domain` and publishes its `_mailx` record as
    /// `letterme dns` prints it.
    fn server(&self, domain: &str, extra: &str) -> ServerProc {
        let dir = self.root.path().join(domain);
        std::fs::create_dir_all(&dir).unwrap();
        let s = ServerProc::start(
            &dir,
            domain,
            &format!(
                "dns.nameservers = [\"{}\"]\ndns.timeout_ms = 500\n\
                 federation.listen = \"127.0.0.1:{}\"\nfederation.retry_first = \"1s\"\n\
                 federation.retry_max = \"2s\"\n{extra}",
                self.dns.addr,
                free_port()
            ),
        );
        assert!(s.federation.is_some(), "federation listener announced");
        self.publish(&s, domain);
        s
    }

    /// Publishes what `letterme dns` prints for `server`.
    fn publish(&self, server: &ServerProc, domain: &str) -> String {
        let out = ok(&cli(
            Path::new("/nonexistent"),
            &["dns", "--config", server.config_path.to_str().unwrap()],
            None,
        ));
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("_mailx.{domain}.")))
            .unwrap_or_else(|| panic!("no _mailx line in {out}"));
        let value = line.split_once('"').unwrap().1.trim_end_matches('"');
        assert!(value.contains("fp="), "{value}");
        assert!(
            value.contains(server.federation.as_deref().unwrap()),
            "{value}"
        );
        self.rt.block_on(
            self.dns
                .set_txt_ttl(&format!("_mailx.{domain}"), value, TTL),
        );
        value.to_owned()
    }

    fn user(&self, server: &ServerProc, address: &str) -> PathBuf {
        let p = self.root.path().join(format!("profile-{address}"));
        ok(&cli(
            &p,
            &["account", "create", address, "--server", &server.url],
            None,
        ));
        p
    }

    /// The CLI with this world's DNS server.
    fn cli(&self, profile: &Path, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--dns", &*Box::leak(self.dns_arg().into_boxed_str())];
        all.extend_from_slice(args);
        cli(profile, &all, None)
    }

    /// Syncs until `n` messages are in the local mailbox (or fails after a while).
    fn sync_until(&self, profile: &Path, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            ok(&self.cli(profile, &["sync"]));
            let list: Vec<Value> =
                serde_json::from_str(&ok(&self.cli(profile, &["list", "--json"]))).unwrap();
            if list.len() >= n || Instant::now() > deadline {
                assert_eq!(list.len(), n, "messages in {}", profile.display());
                return list;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn queue(&self, server: &ServerProc) -> Vec<Value> {
        serde_json::from_str(&ok(&cli(
            Path::new("/nonexistent"),
            &[
                "queue",
                "--json",
                "--config",
                server.config_path.to_str().unwrap(),
            ],
            None,
        )))
        .unwrap()
    }

    fn wait_queue_empty(&self, server: &ServerProc) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let q = self.queue(server);
            if q.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "queue never drained: {q:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn subjects(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn alice_and_bob_on_two_domains_exchange_mail_verified_through_dns() {
    let w = World::new();
    let a = w.server("a.test", "");
    let b = w.server("b.test", "");
    let c = w.server("c.test", "");
    let alice = w.user(&a, "alice@a.test");
    let anna = w.user(&a, "anna@a.test");
    let bob = w.user(&b, "bob@b.test");
    let carol = w.user(&c, "carol@c.test");

    // One envelope for a local recipient and two other domains: each gets it once.
    let out = ok(&w.cli(
        &alice,
        &[
            "send",
            "--to",
            "bob@b.test",
            "carol@c.test",
            "--cc",
            "anna@a.test",
            "--subject",
            "Federated canary-subject-7f3a",
            "--body",
            "canary-body-91c2 across domains",
        ],
    ));
    assert!(out.contains("bob@b.test"), "{out}");
    let got = w.sync_until(&bob, 1);
    assert_eq!(got[0]["subject"], "Federated canary-subject-7f3a");
    assert_eq!(got[0]["from"], "alice@a.test");
    assert_eq!(got[0]["signature_verified"], true);
    let id = got[0]["id"].as_str().unwrap().to_owned();
    let read: Value = serde_json::from_str(&ok(&w.cli(&bob, &["read", &id, "--json"]))).unwrap();
    assert_eq!(read["body"], "canary-body-91c2 across domains");
    assert_eq!(subjects(&w.sync_until(&carol, 1)), ["Federated canary-subject-7f3a"]);
    assert_eq!(subjects(&w.sync_until(&anna, 1)), ["Federated canary-subject-7f3a"]);

    // And back: bob's client verifies alice's attestation against a.test's key in DNS.
    ok(&w.cli(
        &bob,
        &["send", "--to", "alice@a.test", "--subject", "Re: canary-subject-7f3a", "--body", "canary-reply-55e0"],
    ));
    let back = w.sync_until(&alice, 1);
    assert_eq!(back[0]["from"], "bob@b.test");
    assert_eq!(back[0]["subject"], "Re: canary-subject-7f3a");
    w.wait_queue_empty(&a);
    w.wait_queue_empty(&b);

    // Several syncs later still exactly one copy each.
    assert_eq!(w.sync_until(&bob, 1).len(), 1);
    assert_eq!(w.sync_until(&carol, 1).len(), 1);

    // Neither server wrote a subject or body anywhere: database, WAL, logs.
    for server in [&a, &b, &c] {
        for (path, bytes) in files_under(&server.data_dir) {
            for canary in ["canary-subject-7f3a", "canary-body-91c2", "canary-reply-55e0"] {
                assert!(
                    !contains(&bytes, canary.as_bytes()),
                    "{canary} in {}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn deliveries_survive_a_receiver_killed_mid_delivery_and_a_sender_killed_with_a_queue() {
    let w = World::new();
    let mut a = w.server("a.test", "");
    let mut b = w.server("b.test", "federation.batch = 16\n");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");
    let bob_addr = Address::parse("bob@b.test").unwrap();
    let dns = vec![w.dns.addr];

    // 300 messages, sent while the receiving server is killed once the first are stored.
    let n = 300;
    let b_db = b.data_dir.join("letterme.db");
    let (online, key) = w.rt.block_on(async {
        let me = letterme_client::Unlocked::open(
            letterme_client::profile::ProfileDir(alice.clone()),
            PASSPHRASE,
        )
        .unwrap()
        .with_dns(dns.clone());
        let online = me.connect().await.unwrap();
        let key = online.verified_key(&bob_addr).await.unwrap().encryption_key;
        (online, key)
    });
    let online = std::sync::Arc::new(online);
    let sender = {
        let online = online.clone();
        let bob_addr = bob_addr.clone();
        w.rt.spawn(async move {
            for i in 0..n {
                let env = sealed_text(&online, &bob_addr, key, &format!("m{i}"), "x", &format!("<m{i}@a.test>"));
                online.api.send(env.encode()).await.unwrap();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: i64 = rusqlite::Connection::open(&b_db)
            .unwrap()
            .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap_or(0);
        if stored > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing arrived at b.test");
        std::thread::sleep(Duration::from_millis(2));
    }
    b.kill9();
    w.rt.block_on(sender).unwrap();
    assert!(!w.queue(&a).is_empty(), "mail waits for b.test");
    b.restart();
    w.wait_queue_empty(&a);
    let got = w.sync_until(&bob, n);
    let distinct: BTreeSet<String> = subjects(&got).into_iter().collect();
    assert_eq!(distinct.len(), n, "every message exactly once");

    // Now the sender dies with mail queued for a peer that is down. (The key was verified
    // while b.test was up, as a client with a cached key would have it.)
    b.kill9();
    w.rt.block_on(async {
        for i in 0..5 {
            let env = sealed_text(&online, &bob_addr, key, &format!("queued {i}"), "q", &format!("<q{i}@a.test>"));
            online.api.send(env.encode()).await.unwrap();
        }
    });
    assert_eq!(w.queue(&a).len(), 5, "queued while b.test is down");
    a.kill9();
    b.restart();
    a.restart();
    w.wait_queue_empty(&a);
    let got = w.sync_until(&bob, n + 5);
    let distinct: BTreeSet<String> = subjects(&got).into_iter().collect();
    assert_eq!(distinct.len(), n + 5);
}
