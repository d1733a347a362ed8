//! Federation end to end: two (or three) `letterme serve` processes for different
//! domains, discovering each other through an in-process DNS server on loopback, with
//! users on the CLI; text mail and whole MIME (HTML, attachments) alike. Plus the signature
//! checks against hand-made requests, and the retry schedule under an injected clock.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use letterme_protocol::federation::{RequestSignature, ResponseSignature, encode_batch_items};
use letterme_protocol::{Address, EncryptionKeypair, SigningKeypair};
use letterme_server::Clock as _;
use letterme_tests::multipart::{self, Multipart};
use letterme_tests::world::{World, queue, sync_until, wait_queue_empty};
use letterme_tests::{
    FakeClock, PASSPHRASE, ServerProc, cli, closed_by_server, connect_from, contains, files_under,
    free_port, ok, sealed_text, user_error,
};
use serde_json::Value;

/// TTL of the test `_mailx` records: short, so a changed record is seen quickly.
const TTL: u32 = 1;

/// The federation steps of a scenario, on the shared world.
trait Federation {
    fn server(&self, domain: &str, extra: &str) -> ServerProc;
    fn publish(&self, server: &ServerProc, domain: &str) -> String;
    fn hand_made_domain(&self, domain: &str) -> SigningKeypair;
    fn online(
        &self,
        profile: &Path,
        peer: &Address,
    ) -> (
        letterme_client::Online,
        letterme_protocol::EncryptionPublicKey,
    );
    fn refused_for_a_key_mismatch(&self, profile: &Path, to: &str);
    fn user(&self, server: &ServerProc, address: &str) -> PathBuf;
    fn cli(&self, profile: &Path, args: &[&str]) -> std::process::Output;
    fn sync_until(&self, profile: &Path, n: usize) -> Vec<Value>;
    fn queue(&self, server: &ServerProc) -> Vec<Value>;
    fn wait_queue_empty(&self, server: &ServerProc);
}

impl Federation for World {
    /// Starts a federating server for `domain` and publishes its `_mailx` record as
    /// `letterme dns` prints it.
    fn server(&self, domain: &str, extra: &str) -> ServerProc {
        let dir = self.path().join(domain);
        std::fs::create_dir_all(&dir).unwrap();
        let s = ServerProc::start(
            &dir,
            domain,
            &format!(
                "{}federation.listen = \"127.0.0.1:{}\"\nfederation.retry_first = \"1s\"\n\
                 federation.retry_max = \"2s\"\n{extra}",
                self.dns_toml(500),
                free_port()
            ),
        );
        assert!(s.federation.is_some(), "federation listener announced");
        self.publish(&s, domain);
        s
    }

    /// Publishes what `letterme dns` prints for `server`.
    fn publish(&self, server: &ServerProc, domain: &str) -> String {
        let value = letterme_tests::mailx_record(server, domain);
        assert!(value.contains("fp="), "{value}");
        assert!(
            value.contains(server.federation.as_deref().unwrap()),
            "{value}"
        );
        self.rt.block_on(
            self.dns
                .set_txt_ttl(&format!("_mailx.{domain}"), &value, TTL),
        );
        value
    }

    /// A logged-in client session for `profile`, and `peer`'s verified encryption key.
    fn online(
        &self,
        profile: &Path,
        peer: &Address,
    ) -> (
        letterme_client::Online,
        letterme_protocol::EncryptionPublicKey,
    ) {
        self.rt.block_on(async {
            let me = letterme_client::Unlocked::open(
                letterme_client::profile::ProfileDir(profile.to_owned()),
                PASSPHRASE,
            )
            .unwrap()
            .with_dns(vec![self.dns.addr]);
            let online = me.connect().await.unwrap();
            let key = online
                .verified_keys(peer)
                .await
                .unwrap()
                .attestation
                .encryption_key;
            (online, key)
        })
    }

    /// Sending to `to` fails because its domain's server does not match DNS.
    fn refused_for_a_key_mismatch(&self, profile: &Path, to: &str) {
        let err = user_error(&self.cli(
            profile,
            &["send", "--to", to, "--subject", "s", "--body", "b"],
        ));
        assert!(err.contains("does not match"), "{err}");
    }

    fn user(&self, server: &ServerProc, address: &str) -> PathBuf {
        self.account(server, &format!("profile-{address}"), address)
    }
    /// A domain whose key the test holds, published in DNS, whose server is nowhere: the
    /// test signs its requests by hand.
    fn hand_made_domain(&self, domain: &str) -> SigningKeypair {
        let key = SigningKeypair::generate();
        let record = letterme_protocol::discovery::MailxRecord {
            domain_key: key.public(),
            endpoint: "https://127.0.0.1:9".into(),
            tls_fingerprint: None,
        };
        self.rt.block_on(
            self.dns
                .set_txt_ttl(&format!("_mailx.{domain}"), &record.to_txt(), TTL),
        );
        key
    }

    /// The CLI with this world's DNS server.
    fn cli(&self, profile: &Path, args: &[&str]) -> std::process::Output {
        let dns = self.dns.addr.to_string();
        let mut all = vec!["--dns", &dns];
        all.extend_from_slice(args);
        cli(profile, &all, None)
    }

    /// Syncs until `n` messages are in the local mailbox (or fails after a while).
    fn sync_until(&self, profile: &Path, n: usize) -> Vec<Value> {
        sync_until(n, |args| Federation::cli(self, profile, args))
    }

    fn queue(&self, server: &ServerProc) -> Vec<Value> {
        queue(server)
    }

    fn wait_queue_empty(&self, server: &ServerProc) {
        wait_queue_empty(server, Duration::from_secs(90));
    }
}

fn subjects(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn alice_and_bob_on_two_domains_exchange_mail_verified_through_dns() {
    let w = World::new(vec![]);
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
    assert_eq!(
        subjects(&w.sync_until(&carol, 1)),
        ["Federated canary-subject-7f3a"]
    );
    assert_eq!(
        subjects(&w.sync_until(&anna, 1)),
        ["Federated canary-subject-7f3a"]
    );

    // And back: bob's client verifies alice's attestation against a.test's key in DNS.
    ok(&w.cli(
        &bob,
        &[
            "send",
            "--to",
            "alice@a.test",
            "--subject",
            "Re: canary-subject-7f3a",
            "--body",
            "canary-reply-55e0",
        ],
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
            for canary in [
                "canary-subject-7f3a",
                "canary-body-91c2",
                "canary-reply-55e0",
            ] {
                assert!(
                    !contains(&bytes, canary.as_bytes()),
                    "{canary} in {}",
                    path.display()
                );
            }
        }
    }
}

/// Whole MIME across domains: alice@a.test sends text with an HTML alternative, a 1.5 MiB
/// binary file (a blob) and a file with a non-ASCII name to bob and carol at b.test, and
/// Bcc to dave there (a second envelope naming the same blob). b.test gets the blob from
/// a.test once for all three, each chunk sent once; what each mail client is served has
/// every part with its bytes and name; neither server, which both held the message, kept
/// any of it readable, and neither keeps the blob once it is delivered and acknowledged.
#[test]
fn html_and_attachments_cross_domains_byte_identical_and_unreadable_to_both_servers() {
    const TEXT: &str = "The measurements are attached.";
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let b = w.server("b.test", "");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");
    let carol = w.user(&b, "carol@b.test");
    let dave = w.user(&b, "dave@b.test");
    let mail = Multipart::write(&w.path().join("files"));
    let files = mail.args();
    let mut args = vec![
        "send",
        "--to",
        "bob@b.test",
        "--to",
        "carol@b.test",
        "--bcc",
        "dave@b.test",
        "--subject",
        "Messdaten",
        "--body",
        TEXT,
    ];
    args.extend(files.iter().map(String::as_str));
    ok(&w.cli(&alice, &args));

    w.wait_queue_empty(&a);
    assert!(a.blobs_gone(), "a.test kept the blob after delivering it");
    // One sealed copy of the 1.5 MiB file (as base64) for three recipients in two
    // envelopes, outside the envelopes, each of its chunks sent once.
    let held = b.stored_blobs();
    assert_eq!(held.blobs, 1, "{held:?}");
    assert!(
        held.chunk_bytes > 1536 * 1024 && held.chunk_bytes < 2 * 1536 * 1024,
        "{held:?}"
    );
    assert!(held.envelope_bytes < 200 * 1024, "{held:?}");
    let chunks = letterme_protocol::blob::sealed_chunks(held.chunk_bytes).unwrap();
    let metrics = w.rt.block_on(async {
        reqwest::get(format!("{}/metrics", a.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains(&format!(
            "letterme_federation_blob_chunks_sent_total {chunks}\n"
        )),
        "{metrics}"
    );
    multipart::assert_unreadable_under(&b.data_dir, "bob@b.test");

    for (who, profile) in [("bob", &bob), ("carol", &carol), ("dave", &dave)] {
        let got = w.sync_until(profile, 1);
        assert_eq!(got[0]["from"], "alice@a.test");
        assert_eq!(got[0]["signature_verified"], true);
        let served = served_inbox(profile);
        assert_eq!(served.len(), 1, "one message in {who}'s INBOX");
        mail.assert_carried_by(&served[0], "alice@a.test", TEXT, &format!("{who}'s INBOX"));
    }
    assert!(
        b.blobs_gone(),
        "b.test kept the blob after all acknowledged"
    );
    multipart::assert_unreadable_under(&a.data_dir, "alice@a.test");
    multipart::assert_unreadable_under(&b.data_dir, "bob@b.test");
}

/// The messages in `profile`'s INBOX, by UID, as its mail client is served them (the
/// proxy serves this cache; `sync` fills it).
fn served_inbox(profile: &Path) -> Vec<Vec<u8>> {
    let me = letterme_client::Unlocked::open(
        letterme_client::profile::ProfileDir(profile.to_owned()),
        PASSPHRASE,
    )
    .unwrap();
    let inbox = me.cache.folder("INBOX").unwrap().unwrap();
    let uids: Vec<u32> = me
        .cache
        .messages(inbox.id)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    me.cache
        .fetch(inbox.id, &uids, letterme_client::cache::Content::Whole)
        .unwrap()
        .into_iter()
        .map(|(_, raw, _)| raw.unwrap())
        .collect()
}

#[test]
fn deliveries_survive_a_receiver_killed_mid_delivery_and_a_sender_killed_with_a_queue() {
    let w = World::new(vec![]);
    let mut a = w.server("a.test", "");
    let mut b = w.server("b.test", "federation.batch = 16\n");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");
    let bob_addr = Address::parse("bob@b.test").unwrap();

    // 300 messages, sent while the receiving server is killed once the first are stored.
    let n = 300;
    let b_db = b.data_dir.join("letterme.db");
    let (online, key) = w.online(&alice, &bob_addr);
    let online = std::sync::Arc::new(online);
    let sender = {
        let online = online.clone();
        let bob_addr = bob_addr.clone();
        w.rt.spawn(async move {
            for i in 0..n {
                let env = sealed_text(
                    &online,
                    &bob_addr,
                    key,
                    &format!("m{i}"),
                    "x",
                    &format!("<m{i}@a.test>"),
                );
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
            let env = sealed_text(
                &online,
                &bob_addr,
                key,
                &format!("queued {i}"),
                "q",
                &format!("<q{i}@a.test>"),
            );
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

/// Server-side request forgery through discovery (issue 15.1): `_mailx` records that point
/// the server at an internal service — over plain http, at a loopback or private address,
/// by a name resolving to loopback, or behind an https peer answering 302 — get nowhere:
/// the stand-in internal service receives no connection, and no byte of what it would say
/// reaches the user, who gets a fixed answer naming the domain.
#[test]
fn a_mailx_record_cannot_point_the_server_at_internal_services() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SECRET: &str = "SECRET-OF-THE-INTERNAL-SERVICE";
    let w = World::new(vec![]);
    // The internal service: counts connections, answers anything with its secret.
    let (internal, hits) = w.rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let body = format!("{{\"error\":{{\"code\":\"x\",\"message\":\"{SECRET}\"}}}}");
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (addr, hits)
    });
    // An https peer the operator listed (so its loopback address is allowed) that answers
    // every request with a redirect to the internal service.
    let tls_dir = w.path().join("redirector");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    letterme_server::tls::generate_self_signed(&["127.0.0.1".into()], &cert, &key).unwrap();
    let fp = letterme_server::tls::spki_fingerprint(&cert).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(letterme_server::tls::server_config(&cert, &key).unwrap());
    let redirector = w.rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(c).await else { return };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            format!(
                                "HTTP/1.1 302 Found\r\nLocation: http://{internal}/steal\r\nContent-Length: 0\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    });
    let key_of = |_: &str| SigningKeypair::generate().public().to_base64();
    let listed = format!(
        "v=mailx1; k={}; e=https://{redirector}; fp={fp}",
        key_of("redirect")
    );
    let b = w.server(
        "b.test",
        &format!(
            "network.allow_private_addresses = false\nfederation.peers.\"redirect.test\" = \"{listed}\"\n"
        ),
    );
    let bob = w.user(&b, "bob@b.test");
    let port = internal.port();
    w.rt.block_on(w.dns.load_zone(&format!(
        "inside.named.test. 60 IN A 127.0.0.1\n\
         _mailx.plain.test. 60 IN TXT \"v=mailx1; k={}; e=http://127.0.0.1:{port}\"\n\
         _mailx.loopback.test. 60 IN TXT \"v=mailx1; k={}; e=https://127.0.0.1:{port}\"\n\
         _mailx.private.test. 60 IN TXT \"v=mailx1; k={}; e=https://10.255.255.1:{port}\"\n\
         _mailx.named.test. 60 IN TXT \"v=mailx1; k={}; e=https://inside.named.test:{port}\"\n",
        key_of("plain"),
        key_of("loopback"),
        key_of("private"),
        key_of("named")
    )));
    let answers: Vec<(String, String)> = w.rt.block_on(async {
        let online = letterme_tests::world::online(&bob).await;
        let mut out = Vec::new();
        for domain in [
            "plain.test",
            "loopback.test",
            "private.test",
            "named.test",
            "redirect.test",
        ] {
            let who = Address::parse(&format!("x@{domain}")).unwrap();
            let answer = match online.api.lookup(&who, None).await {
                Ok(found) => format!("{found:?}"),
                Err(e) => e.to_string(),
            };
            out.push((domain.to_owned(), answer));
        }
        out
    });
    for (domain, answer) in &answers {
        assert!(!answer.contains(SECRET), "{domain}: {answer}");
        assert!(!answer.contains(&port.to_string()), "{domain}: {answer}");
    }
    for (domain, answer) in &answers[1..] {
        assert!(
            answer.contains(&format!(
                "the letter.me server of {domain} cannot be reached"
            )),
            "{domain}: {answer}"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the internal service was reached: {answers:?}"
    );
    // The server's own log has the reasons, for the operator.
    let log = std::fs::read_to_string(b.data_dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("not a public address"), "{log}");
}

/// Mail for a domain that publishes no `_mailx` record (issue 15.9) is not a letter.me
/// domain: the sender hears of it at once, not after five days of retries.
#[test]
fn an_envelope_for_a_domain_without_mailx_fails_at_once_with_a_notice() {
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let alice = w.user(&a, "alice@a.test");
    w.rt.block_on(async {
        let online = letterme_tests::world::online(&alice).await;
        let bob = Address::parse("bob@plain.test").unwrap();
        let env = sealed_text(
            &online,
            &bob,
            EncryptionKeypair::generate().public(),
            "s",
            "b",
            "<nomailx@a.test>",
        );
        online.api.send(env.encode()).await.unwrap();
    });
    w.wait_queue_empty(&a);
    let list = w.sync_until(&alice, 1);
    assert_eq!(list[0]["from"], "mailer-daemon@a.test", "{list:?}");
    let read: Value = serde_json::from_str(&ok(
        &w.cli(&alice, &["read", list[0]["id"].as_str().unwrap(), "--json"])
    ))
    .unwrap();
    let body = read["body"].as_str().unwrap();
    assert!(
        body.contains("bob@plain.test") && body.contains("_mailx"),
        "{body}"
    );
}

/// Envelope identity is its origin and its bytes (issue 15.7): another domain that learns
/// an envelope's id cannot displace the message under it, neither for its recipient nor
/// for another one, while the real sender's retry is still accepted; envelopes too old or
/// from the future are refused.
#[test]
fn another_domains_colliding_envelope_id_cannot_displace_the_real_message() {
    let w = World::new(vec![]);
    let b = w.server("b.test", "");
    w.publish(&b, "b.test");
    let bob = w.user(&b, "bob@b.test");
    let carol = w.user(&b, "carol@b.test");
    let (good, evil) = (
        w.hand_made_domain("good.test"),
        w.hand_made_domain("evil.test"),
    );
    let base = b.federation.clone().unwrap();
    let http = any_certificate();
    let now = letterme_client::now();
    let mut txid = 0u8;
    // Delivers `env` to `to` as `origin`; returns the recipient's status, or the reason
    // the envelope was rejected.
    let mut deliver = |origin: &str, key: &SigningKeypair, to: &str, env: &[u8]| -> String {
        txid += 1;
        let target = format!(
            "/v1/federation/transactions/{}",
            letterme_protocol::codec::hex(&[txid; 16])
        );
        let rcpts = vec![to.to_owned()];
        let body = encode_batch_items([(rcpts.as_slice(), env)]);
        let sig = RequestSignature::sign(key, "PUT", &target, &body, origin, "b.test", now, 60);
        let report: Value = w.rt.block_on(async {
            let mut req = http.put(format!("{base}{target}"));
            for (n, v) in sig.headers() {
                req = req.header(n, v);
            }
            let resp = req.body(body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json().await.unwrap()
        });
        let id =
            letterme_protocol::codec::hex(&letterme_protocol::Envelope::decode(env).unwrap().id.0);
        report["results"][&id][to]
            .as_str()
            .or_else(|| report["rejected"]["0"].as_str())
            .unwrap_or_else(|| panic!("{report}"))
            .to_owned()
    };
    let alice = SigningKeypair::generate();
    let mallory = SigningKeypair::generate();
    let real = envelope_from(&alice, "alice@good.test", "bob@b.test", "real");
    // The same id over other bytes, signed by its own sender of evil.test.
    let forge = |to: &str| {
        let mut bytes = envelope_from(&mallory, "mallory@evil.test", to, "forged");
        bytes[6..22].copy_from_slice(&real[6..22]);
        let n = bytes.len() - 64;
        let sig = mallory.sign(letterme_protocol::envelope::ENVELOPE_CONTEXT, &bytes[..n]);
        bytes[n..].copy_from_slice(&sig.0);
        letterme_protocol::Envelope::decode(&bytes)
            .unwrap()
            .verify_signature()
            .unwrap();
        bytes
    };
    assert_eq!(deliver("good.test", &good, "bob@b.test", &real), "accepted");
    assert_eq!(
        deliver("evil.test", &evil, "bob@b.test", &forge("bob@b.test")),
        "blocked"
    );
    assert_eq!(
        deliver("evil.test", &evil, "carol@b.test", &forge("carol@b.test")),
        "blocked"
    );
    // The real sender retrying the same envelope is answered as before, and stored once.
    assert_eq!(deliver("good.test", &good, "bob@b.test", &real), "accepted");
    // What the server holds (the recipients' clients cannot open mail from these
    // test-held domains, so the API is asked directly).
    let pending = |profile: &Path| {
        w.rt.block_on(async {
            let online = letterme_tests::world::online(profile).await;
            let mut out = Vec::new();
            for m in online.api.list(0).await.unwrap() {
                out.push((m.sender.clone(), online.api.fetch(&m.id).await.unwrap()));
            }
            out
        })
    };
    assert_eq!(
        pending(&bob),
        vec![("alice@good.test".to_owned(), real.clone())]
    );
    assert!(pending(&carol).is_empty());
    // `created` is checked on federation too: too old to be a retry, or from the future.
    for (at, what) in [(now - 9 * 86_400, "old"), (now + 2 * 86_400, "ahead")] {
        let mut bytes = envelope_from(&alice, "alice@good.test", "bob@b.test", what);
        bytes[22..30].copy_from_slice(&at.to_be_bytes());
        let n = bytes.len() - 64;
        let sig = alice.sign(letterme_protocol::envelope::ENVELOPE_CONTEXT, &bytes[..n]);
        bytes[n..].copy_from_slice(&sig.0);
        assert_eq!(
            letterme_protocol::Envelope::decode(&bytes).unwrap().created,
            at
        );
        let why = deliver("good.test", &good, "bob@b.test", &bytes);
        assert!(why.contains("time"), "{what}: {why}");
    }
}

/// A message from `from` (signed by `identity`) to `to`, sealed to a key nobody holds.
/// Issue 15.3: connections that send nothing, half a header, a trickle of body, or sit
/// idle after a request are closed within the configured times (2 s here), one prefix
/// cannot take more than its share, and a client on another network is served meanwhile,
/// on the API listener and on the federation listener alike.
#[test]
fn idle_and_half_sent_connections_are_closed_while_another_network_is_served() {
    use tokio::io::AsyncWriteExt as _;
    use tokio_rustls::TlsConnector;
    const PER_PREFIX: usize = 6;
    let w = World::new(vec![]);
    let b = w.server(
        "b.test",
        &format!(
            "limits.header_timeout = \"2s\"\nlimits.body_timeout = \"2s\"\n\
             limits.connections_per_prefix = {PER_PREFIX}\n"
        ),
    );
    // Started under a soft limit of 1024 open files, it raised it to the hard limit.
    let (soft, hard) = b.open_files_limit();
    assert_eq!(soft, hard);
    let record =
        letterme_protocol::discovery::MailxRecord::parse(&w.publish(&b, "b.test")).unwrap();
    let fp = letterme_protocol::b64::decode_array(record.tls_fingerprint.as_deref().unwrap());
    let tls = TlsConnector::from(std::sync::Arc::new(
        letterme_server::federation::pin::client_config(fp).unwrap(),
    ));
    let name = || rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let api: std::net::SocketAddr = b.url.trim_start_matches("http://").parse().unwrap();
    let fed: std::net::SocketAddr = b
        .federation
        .as_deref()
        .unwrap()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let within = Duration::from_secs(8);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: b.test\r\n\r\n");
    let post = "POST /v1/accounts HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"addr";
    w.rt.block_on(async {
        // The API: nothing sent; half a header; a body that stops; idle after an answer.
        let mut hoard = Vec::new();
        for what in ["nothing", "half a header", "a stalled body", "kept alive", "nothing", "kept alive"] {
            let mut c = connect_from("127.0.0.1", api).await;
            match what {
                "half a header" => c.write_all(b"GET /healthz HTTP/1.1\r\nHost: b").await.unwrap(),
                "a stalled body" => c.write_all(post.as_bytes()).await.unwrap(),
                "kept alive" => c.write_all(get("/healthz").as_bytes()).await.unwrap(),
                _ => {}
            }
            hoard.push((what, c));
        }
        assert_eq!(hoard.len(), PER_PREFIX);
        // The prefix's share is taken: one more is closed at once, with nothing said.
        let mut extra = connect_from("127.0.0.9", api).await;
        extra.write_all(get("/healthz").as_bytes()).await.unwrap();
        let said = closed_by_server(&mut extra, within, "a connection over the prefix's share").await;
        assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));
        // Another network is served meanwhile.
        let mut other = connect_from("127.0.1.1", api).await;
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = closed_by_server(&mut other, within, "a finished request").await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        for (what, mut c) in hoard {
            let said = closed_by_server(&mut c, within, what).await;
            let said = String::from_utf8_lossy(&said);
            match what {
                "kept alive" => assert!(said.starts_with("HTTP/1.1 200"), "{said}"),
                "a stalled body" => assert!(said.starts_with("HTTP/1.1 4"), "{said}"),
                _ => {}
            }
        }

        // The federation listener: no TLS handshake; a handshake and nothing; half a header.
        let mut plain = Vec::new();
        let mut secured = Vec::new();
        for n in 0..PER_PREFIX {
            let c = connect_from("127.0.0.1", fed).await;
            if n < 2 {
                plain.push(c);
                continue;
            }
            let mut t = tls.connect(name(), c).await.unwrap();
            if n % 2 == 0 {
                t.write_all(b"GET /.well-known/mailx-server HTTP/1.1\r\nHost: b.").await.unwrap();
                t.flush().await.unwrap();
            }
            secured.push(t);
        }
        let mut extra = connect_from("127.0.0.9", fed).await;
        closed_by_server(&mut extra, within, "a federation connection over the prefix's share").await;
        let mut other = tls
            .connect(name(), connect_from("127.0.1.1", fed).await)
            .await
            .unwrap();
        other
            .write_all(b"GET /.well-known/mailx-server HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = closed_by_server(&mut other, within, "a finished federation request").await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        for mut c in plain {
            closed_by_server(&mut c, within, "a connection without a TLS handshake").await;
        }
        for mut t in secured {
            closed_by_server(&mut t, within, "a TLS connection without a whole request").await;
        }
    });
}

/// One request on a raw TLS connection to `server`'s federation listener, pinned to the
/// key its record publishes: `head` (request line and fields, each ending CRLF) and the
/// fields of `sig`, no body. Returns the status, the lower-cased fields and the body.
async fn raw_request(
    server: &ServerProc,
    record: &letterme_protocol::discovery::MailxRecord,
    head: &str,
    sig: &RequestSignature,
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fp = letterme_protocol::b64::decode_array(record.tls_fingerprint.as_deref().unwrap());
    let config = letterme_server::federation::pin::client_config(fp).unwrap();
    let addr = server
        .federation
        .as_deref()
        .unwrap()
        .trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut request = head.to_owned();
    for (n, v) in sig.headers() {
        let _ = write!(request, "{n}: {v}\r\n");
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(answer[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, fields, answer[split + 4..].to_vec())
}

/// An HTTPS client for hand-made requests to a federation listener, whose self-signed
/// certificate it does not check (the answers' signatures are what the tests check).
fn any_certificate() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

fn envelope_from(identity: &SigningKeypair, from: &str, to: &str, subject: &str) -> Vec<u8> {
    envelope_naming(identity, from, to, subject, vec![])
}

/// [`envelope_from`] whose payload refers to `blobs` (and whose header names them).
fn envelope_naming(
    identity: &SigningKeypair,
    from: &str,
    to: &str,
    subject: &str,
    blobs: Vec<letterme_protocol::blob::BlobRef>,
) -> Vec<u8> {
    let now = letterme_client::now();
    let to = Address::parse(to).unwrap();
    let payload = letterme_protocol::Payload {
        from: Address::parse(from).unwrap(),
        to: vec![to.clone()],
        cc: vec![],
        bcc: vec![],
        subject: subject.to_owned(),
        body: "b".into(),
        headers: vec![],
        date: now,
        message_id: format!("<{subject}@test>"),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs,
        state: vec![],
    };
    letterme_protocol::envelope::seal(
        letterme_protocol::envelope::SignerKind::User,
        identity,
        &payload,
        &[(to, EncryptionKeypair::generate().public())],
        now,
    )
    .unwrap()
    .encode()
}

/// What a peer may do with blobs (PROTOCOL.md §17.5a): bring them for its own senders
/// only, each chunk checked against the manifest it offered, within the bound one peer
/// may hold before an envelope names them; an envelope naming a blob the peer has not
/// brought in full is refused for its recipient, and is taken once the blob is complete.
#[test]
fn a_peer_brings_blobs_only_for_its_senders_checked_by_chunk_and_bounded() {
    use letterme_protocol::blob::{Manifest, Sealer};
    use letterme_protocol::federation::BlobOffer;
    let w = World::new(vec![]);
    let b = w.server("b.test", "federation.blob_bytes_per_peer = \"3000\"\n");
    w.publish(&b, "b.test");
    let _bob = w.user(&b, "bob@b.test");
    let evil = w.hand_made_domain("evil.test");
    let mallory = SigningKeypair::generate();
    let base = b.federation.clone().unwrap();
    let http = any_certificate();
    let put = |target: &str, body: Vec<u8>| -> (u16, Value) {
        let sig = RequestSignature::sign(
            &evil,
            "PUT",
            target,
            &body,
            "evil.test",
            "b.test",
            letterme_client::now(),
            60,
        );
        w.rt.block_on(async {
            let mut req = http.put(format!("{base}{target}"));
            for (n, v) in sig.headers() {
                req = req.header(n, v);
            }
            let resp = req.body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.json().await.unwrap())
        })
    };
    let offer = |owner: &str, sealed: &[u8], manifest: &Manifest| {
        serde_json::to_vec(&BlobOffer {
            owner: owner.into(),
            size: sealed.len() as u64,
            manifest: manifest.to_bytes(),
        })
        .unwrap()
    };
    let code = |(status, v): (u16, Value)| (status, v["error"]["code"].as_str().map(str::to_owned));
    let (sealed, reference, manifest) = Sealer::new().finish(&[7; 2000]);
    let blob = format!("/v1/federation/blobs/{}", reference.id);

    // Not for another domain's user.
    assert_eq!(
        code(put(&blob, offer("bob@b.test", &sealed, &manifest))),
        (403, Some("sender_mismatch".into()))
    );
    let (status, state) = put(&blob, offer("mallory@evil.test", &sealed, &manifest));
    assert_eq!(
        (status, &state["stored"]),
        (201, &serde_json::json!([])),
        "{state}"
    );
    let mut flipped = sealed.clone();
    flipped[10] ^= 1;
    assert_eq!(
        code(put(&format!("{blob}/0"), flipped)),
        (422, Some("chunk_mismatch".into()))
    );

    // An envelope naming it before it is complete is refused for its recipient.
    let deliver = |txid: u8, env: &[u8]| -> Value {
        let rcpts = vec!["bob@b.test".to_owned()];
        let body = encode_batch_items([(rcpts.as_slice(), env)]);
        let target = format!(
            "/v1/federation/transactions/{}",
            letterme_protocol::codec::hex(&[txid; 16])
        );
        let (status, report) = put(&target, body);
        assert_eq!(status, 200, "{report}");
        let id = letterme_protocol::Envelope::decode(env)
            .unwrap()
            .id
            .to_hex();
        report["results"][&id]["bob@b.test"].clone()
    };
    let early = envelope_naming(
        &mallory,
        "mallory@evil.test",
        "bob@b.test",
        "early",
        vec![reference.clone()],
    );
    assert_eq!(deliver(1, &early), "blocked");

    let (status, state) = put(&format!("{blob}/0"), sealed.clone());
    assert_eq!(
        (status, &state["stored"]),
        (200, &serde_json::json!([0])),
        "{state}"
    );
    // Offered again (a retry, a Bcc copy): nothing more to send.
    let (status, state) = put(&blob, offer("mallory@evil.test", &sealed, &manifest));
    assert_eq!(
        (status, &state["stored"]),
        (200, &serde_json::json!([0])),
        "{state}"
    );

    // 2,000 bytes wait unnamed; 2,000 more would pass the peer's 3,000.
    let (second, next, next_manifest) = Sealer::new().finish(&[8; 2000]);
    let other = format!("/v1/federation/blobs/{}", next.id);
    assert_eq!(
        code(put(
            &other,
            offer("mallory@evil.test", &second, &next_manifest)
        )),
        (422, Some("blob_limit".into()))
    );

    let env = envelope_naming(
        &mallory,
        "mallory@evil.test",
        "bob@b.test",
        "with a blob",
        vec![reference],
    );
    assert_eq!(deliver(2, &env), "accepted");
    let held = b.stored_blobs();
    assert_eq!((held.blobs, held.chunk_bytes), (1, sealed.len() as u64));
    // Named by a delivered envelope, it no longer counts against the peer.
    assert_eq!(
        put(&other, offer("mallory@evil.test", &second, &next_manifest)).0,
        201
    );
}

#[test]
fn forged_replayed_misdirected_and_wrong_key_requests_are_refused_and_blocks_hold() {
    let w = World::new(vec![]);
    let b = w.server(
        "b.test",
        "federation.blocked = [\"spammer@evil.test\"]\nlimits.max_message_size = \"1MB\"\n",
    );
    let b_record =
        letterme_protocol::discovery::MailxRecord::parse(&w.publish(&b, "b.test")).unwrap();
    let bob = w.user(&b, "bob@b.test");
    let evil = w.hand_made_domain("evil.test");
    let base = b.federation.clone().unwrap();
    let http = any_certificate();
    let mallory = SigningKeypair::generate();
    let put = |sig: Option<&RequestSignature>, target: &str, body: Vec<u8>| -> (u16, Value) {
        w.rt.block_on(async {
            let mut req = http.put(format!("{base}{target}"));
            if let Some(sig) = sig {
                for (n, v) in sig.headers() {
                    req = req.header(n, v);
                }
            }
            let resp = req.body(body.clone()).send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap();
            // Every answer, refusals included, is signed by b.test's key from DNS.
            if let Some(sig) = sig {
                ResponseSignature::verify_response(
                    status,
                    &bytes,
                    sig.nonce,
                    "b.test",
                    &[b_record.domain_key],
                    |n| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(ToOwned::to_owned)
                    },
                )
                .unwrap();
            }
            (status, serde_json::from_slice(&bytes).unwrap())
        })
    };
    let sign = |key: &SigningKeypair, dest: &str, target: &str, body: &[u8], at: u64| {
        RequestSignature::sign(key, "PUT", target, body, "evil.test", dest, at, 60)
    };
    let now = letterme_client::now();
    let batch = |to: &str, env: &[u8]| {
        let rcpts = vec![to.to_owned()];
        encode_batch_items([(rcpts.as_slice(), env)])
    };
    let tx = |n: u8| {
        format!(
            "/v1/federation/transactions/{}",
            letterme_protocol::codec::hex(&[n; 16])
        )
    };

    // A correctly signed delivery is accepted...
    let env = envelope_from(&mallory, "mallory@evil.test", "bob@b.test", "hello");
    let body = batch("bob@b.test", &env);
    let good = sign(&evil, "b.test", &tx(1), &body, now);
    let (status, report) = put(Some(&good), &tx(1), body.clone());
    assert_eq!(status, 200, "{report}");
    let id =
        letterme_protocol::codec::hex(&letterme_protocol::Envelope::decode(&env).unwrap().id.0);
    assert_eq!(report["results"][&id]["bob@b.test"], "accepted");
    // ...once: the very same request again is a replay.
    let (status, err) = put(Some(&good), &tx(1), body.clone());
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("replayed"))
    );
    // A forged signature.
    let mut forged = sign(&evil, "b.test", &tx(2), &body, now);
    forged.signature.0[5] ^= 1;
    let (status, err) = put(Some(&forged), &tx(2), body.clone());
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("bad_signature"))
    );
    // A body swapped under a valid signature.
    let other = batch(
        "bob@b.test",
        &envelope_from(&mallory, "mallory@evil.test", "bob@b.test", "swapped"),
    );
    let (status, err) = put(
        Some(&sign(&evil, "b.test", &tx(3), &body, now)),
        &tx(3),
        other,
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("digest_mismatch"))
    );
    // Meant for another destination.
    let (status, err) = put(
        Some(&sign(&evil, "c.test", &tx(4), &body, now)),
        &tx(4),
        body.clone(),
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("wrong_destination"))
    );
    // Signed by a key evil.test does not publish.
    let (status, err) = put(
        Some(&sign(
            &SigningKeypair::generate(),
            "b.test",
            &tx(5),
            &body,
            now,
        )),
        &tx(5),
        body.clone(),
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("unknown_origin_key"))
    );
    // Expired.
    let (status, err) = put(
        Some(&sign(&evil, "b.test", &tx(6), &body, now - 1000)),
        &tx(6),
        body.clone(),
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("expired"))
    );
    // Not signed at all.
    let (status, err) = put(None, &tx(7), body.clone());
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("malformed_signature"))
    );
    // A body over the limit (64 MiB here), under signature headers that parse: refused on
    // its declared length, and the refusal still echoes the request's nonce (`put` checks
    // the answer's signature against it) (issue 15.4). Just over the limit, the body is
    // read and thrown away first, so a sender writing it sees the 413, not a reset.
    let over = vec![0u8; 64 * 1024 * 1024 + 1];
    let (status, err) = put(
        Some(&sign(&evil, "b.test", &tx(20), &over, now)),
        &tx(20),
        over,
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (413, Some("bad_body"))
    );
    // Over twice the limit it is refused at once, before a byte of the body: this client
    // sends the head alone.
    let huge = sign(&evil, "b.test", &tx(8), b"not sent", now);
    let (status, headers, bytes) = w.rt.block_on(raw_request(
        &b,
        &b_record,
        &format!(
            "PUT {} HTTP/1.1\r\nHost: b.test\r\nContent-Length: 200000001\r\n",
            tx(8)
        ),
        &huge,
    ));
    ResponseSignature::verify_response(
        status,
        &bytes,
        huge.nonce,
        "b.test",
        &[b_record.domain_key],
        |n| headers.get(n).cloned(),
    )
    .unwrap();
    let err: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (413, Some("bad_body"))
    );

    // An envelope over b.test's limit is refused alone; the other one of its batch is
    // delivered (issue 15.4).
    let small = envelope_from(&mallory, "mallory@evil.test", "bob@b.test", "small");
    let mut big_payload = envelope_from(&mallory, "mallory@evil.test", "bob@b.test", "big");
    big_payload.resize(1_000_001, 0);
    let rcpts = vec!["bob@b.test".to_owned()];
    let body = encode_batch_items([
        (rcpts.as_slice(), big_payload.as_slice()),
        (rcpts.as_slice(), small.as_slice()),
    ]);
    let (status, report) = put(
        Some(&sign(&evil, "b.test", &tx(9), &body, now)),
        &tx(9),
        body,
    );
    assert_eq!(status, 200, "{report}");
    assert!(
        report["rejected"]["0"]
            .as_str()
            .unwrap()
            .contains("more than b.test accepts"),
        "{report}"
    );
    let small_id =
        letterme_protocol::codec::hex(&letterme_protocol::Envelope::decode(&small).unwrap().id.0);
    assert_eq!(report["results"][&small_id]["bob@b.test"], "accepted");

    // Recipient check, the administrator's block list, and the user's own.
    let send = |n: u8, from: &str, to: &str, subject: &str| -> Value {
        let env = envelope_from(&mallory, from, to, subject);
        let id =
            letterme_protocol::codec::hex(&letterme_protocol::Envelope::decode(&env).unwrap().id.0);
        let body = batch(to, &env);
        let (status, report) = put(
            Some(&sign(&evil, "b.test", &tx(n), &body, now)),
            &tx(n),
            body,
        );
        assert_eq!(status, 200, "{report}");
        report["results"][&id][to].clone()
    };
    assert_eq!(
        send(10, "mallory@evil.test", "nobody@b.test", "x"),
        "no_such_user"
    );
    assert_eq!(send(11, "spammer@evil.test", "bob@b.test", "x"), "blocked");
    let out = ok(&w.cli(&bob, &["block", "@evil.test"]));
    assert!(out.contains("@evil.test now blocked"), "{out}");
    assert_eq!(
        send(12, "mallory@evil.test", "bob@b.test", "again"),
        "blocked"
    );
    let list: Value =
        serde_json::from_str(&ok(&w.cli(&bob, &["block", "--list", "--json"]))).unwrap();
    assert_eq!(list["blocks"], serde_json::json!(["@evil.test"]));
    ok(&w.cli(&bob, &["block", "--remove", "@evil.test"]));
    assert_eq!(
        send(13, "mallory@evil.test", "bob@b.test", "after"),
        "accepted"
    );
    // An envelope whose sender is not of the signing origin is refused whole.
    let env = envelope_from(&mallory, "alice@a.test", "bob@b.test", "spoof");
    let body = batch("bob@b.test", &env);
    let (status, report) = put(
        Some(&sign(&evil, "b.test", &tx(14), &body, now)),
        &tx(14),
        body,
    );
    assert_eq!(status, 200);
    assert!(
        report["rejected"]["0"]
            .as_str()
            .unwrap()
            .contains("not of the origin"),
        "{report}"
    );
    assert_eq!(report["results"], serde_json::json!({}));
}

/// Issue 15.4: an envelope for fifty domains is stored once, not fifty times; the domains
/// per send, a user's queued bytes and the rate of deliveries to other domains are capped.
#[test]
fn a_send_to_fifty_domains_is_stored_once_and_the_queue_caps_hold() {
    const MB: usize = 1_000_000;
    let w = World::new(vec![]);
    let a = w.server(
        "a.test",
        "limits.max_domains_per_send = 50\nlimits.queued_per_user = \"3MB\"\n\
         limits.remote_burst = 120\nlimits.remote_per_minute = 1\n",
    );
    let alice = w.user(&a, "alice@a.test");
    // Fifty letter.me domains whose server does not answer: their rows stay queued.
    let down = letterme_protocol::discovery::MailxRecord {
        domain_key: SigningKeypair::generate().public(),
        endpoint: "https://127.0.0.1:9".into(),
        tls_fingerprint: None,
    };
    for n in 0..51 {
        w.rt.block_on(
            w.dns
                .set_txt_ttl(&format!("_mailx.d{n}.test"), &down.to_txt(), 300),
        );
    }
    let online = w.rt.block_on(letterme_tests::world::online(&alice));
    let send = |domains: std::ops::Range<usize>, size: usize| -> Result<(), (u16, String)> {
        let to: Vec<Address> = domains
            .map(|n| Address::parse(&format!("u{n}@d{n}.test")).unwrap())
            .collect();
        let now = letterme_client::now();
        let payload = letterme_protocol::Payload {
            from: Address::parse("alice@a.test").unwrap(),
            to: to.clone(),
            cc: vec![],
            bcc: vec![],
            subject: "to many".into(),
            body: "z".repeat(size),
            headers: vec![],
            date: now,
            message_id: format!(
                "<{}@a.test>",
                letterme_protocol::codec::hex(&letterme_protocol::keys::random_bytes::<8>())
            ),
            in_reply_to: None,
            references: vec![],
            legacy: None,
            mime: None,
            blobs: vec![],
            state: vec![],
        };
        let keys: Vec<_> = to
            .iter()
            .map(|t| (t.clone(), EncryptionKeypair::generate().public()))
            .collect();
        let env = letterme_protocol::envelope::seal(
            letterme_protocol::envelope::SignerKind::User,
            &online.me.keys.device,
            &payload,
            &keys,
            now,
        )
        .unwrap();
        w.rt.block_on(online.api.send(env.encode()))
            .map(|_| ())
            .map_err(|e| match e {
                letterme_client::ClientError::Api { status, code, .. } => {
                    (status, code.as_str().to_owned())
                }
                other => panic!("{other}"),
            })
    };
    let data_size = || -> usize { files_under(&a.data_dir).iter().map(|(_, b)| b.len()).sum() };

    assert_eq!(send(0..51, 1000), Err((400, "too_many_domains".into())));
    let before = data_size();
    send(0..50, MB).unwrap();
    let grown = data_size() - before;
    // One copy is about 1 MB (the WAL may hold it twice until a checkpoint); fifty would
    // be 50 MB.
    assert!(grown < 4 * MB, "the data directory grew by {grown} bytes");
    let rows = queue(&a);
    assert_eq!(rows.len(), 50, "{rows:?}");
    assert!(rows.iter().all(|r| r["size"].as_u64().unwrap() > MB as u64));
    // Queued bytes count each envelope once: 2 MB of 3 MB, then no room for 1.5 MB more.
    send(0..50, MB).unwrap();
    assert_eq!(send(0..1, 3 * MB / 2), Err((422, "queue_full".into())));
    // 101 of the 120 deliveries to other domains are used; 30 more are too many.
    assert_eq!(send(0..30, 1000), Err((429, "rate_limited".into())));
    assert_eq!(queue(&a).len(), 100);
}

/// A stand-in peer for `big.test` that takes delivery bodies up to `limit` bytes and
/// answers larger ones with a signed `413`, holding its first answers until released.
struct SmallPeer {
    key: SigningKeypair,
    limit: usize,
    /// Envelopes per batch received, in order.
    batches: std::sync::Mutex<Vec<usize>>,
    /// Envelope ids accepted.
    accepted: std::sync::Mutex<BTreeSet<String>>,
    hold: tokio::sync::watch::Receiver<bool>,
    held: usize,
}

impl SmallPeer {
    fn answer(&self, status: u16, nonce: [u8; 16], body: &Value) -> axum::response::Response {
        let bytes = serde_json::to_vec(body).unwrap();
        let sig = ResponseSignature::sign(
            &self.key,
            status,
            nonce,
            &bytes,
            "big.test",
            letterme_client::now(),
        );
        let mut resp = axum::response::Response::new(axum::body::Body::from(bytes));
        *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
        for (n, v) in sig.headers() {
            resp.headers_mut().insert(n, v.parse().unwrap());
        }
        resp
    }

    async fn deliver(
        self: std::sync::Arc<Self>,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let sig = RequestSignature::from_headers("PUT", uri.path(), |n| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(ToOwned::to_owned)
        })
        .unwrap();
        let items = letterme_protocol::federation::decode_batch_items(&body, body.len()).unwrap();
        let n = {
            let mut b = self.batches.lock().unwrap();
            b.push(items.len());
            b.len()
        };
        if n <= self.held {
            let _ = self.hold.clone().wait_for(|go| *go).await;
        }
        if body.len() > self.limit {
            let e = serde_json::json!({"error": {"code": "bad_body", "message": "too large"}});
            return self.answer(413, sig.nonce, &e);
        }
        let mut results = serde_json::Map::new();
        for (rcpts, env) in items {
            let id = letterme_protocol::codec::hex(
                &letterme_protocol::Envelope::decode(env).unwrap().id.0,
            );
            let statuses: serde_json::Map<String, Value> = rcpts
                .iter()
                .map(|r| ((*r).to_owned(), Value::from("accepted")))
                .collect();
            self.accepted.lock().unwrap().insert(id.clone());
            results.insert(id, Value::Object(statuses));
        }
        self.answer(200, sig.nonce, &serde_json::json!({ "results": results }))
    }
}

/// Issue 15.4: a batch a peer refuses as too large (`413`) is split and delivered in
/// smaller ones, nothing lost and no notice, instead of failing every envelope in it.
#[test]
fn a_batch_too_large_for_the_peer_is_split_and_every_envelope_delivered() {
    const MB: usize = 1_000_000;
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let alice = w.user(&a, "alice@a.test");
    // big.test: a stand-in on loopback, with its record in DNS.
    let (release, hold) = tokio::sync::watch::channel(false);
    let peer = std::sync::Arc::new(SmallPeer {
        key: SigningKeypair::generate(),
        limit: 3 * MB / 2,
        batches: std::sync::Mutex::default(),
        accepted: std::sync::Mutex::default(),
        hold,
        held: letterme_server::federation::queue::PER_DESTINATION,
    });
    let p = peer.clone();
    let app = axum::Router::new().route(
        "/v1/federation/transactions/{txid}",
        axum::routing::put(move |uri, headers, body| p.clone().deliver(uri, headers, body)),
    );
    let _stop = stand_in(&w, "big.test", &peer.key, app);

    let online = w.rt.block_on(letterme_tests::world::online(&alice));
    let to = Address::parse("u@big.test").unwrap();
    let key = EncryptionKeypair::generate().public();
    let send = |i: usize| {
        let env = sealed_text(
            &online,
            &to,
            key,
            &format!("m{i}"),
            &"z".repeat(MB),
            &format!("<m{i}@a.test>"),
        );
        w.rt.block_on(online.api.send(env.encode())).unwrap();
    };
    // Four single-envelope batches keep big.test busy while three more queue up, which
    // then go as one batch of 3 MB: over big.test's 1.5 MB.
    for i in 0..4 {
        send(i);
    }
    let started = Instant::now();
    while peer.batches.lock().unwrap().len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first batches never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 4..7 {
        send(i);
    }
    release.send(true).unwrap();
    w.wait_queue_empty(&a);
    let batches = peer.batches.lock().unwrap().clone();
    assert_eq!(batches[..5], [1, 1, 1, 1, 3], "{batches:?}");
    assert!(batches[5..].iter().all(|n| *n == 1), "{batches:?}");
    assert_eq!(peer.accepted.lock().unwrap().len(), 7);
    // Nothing failed: alice got no notice.
    let list = w.sync_until(&alice, 0);
    assert!(list.is_empty(), "{list:?}");
}

/// Serves `app` as `domain`'s federation endpoint on loopback (HTTPS, a self-signed
/// certificate), with its server document signed by `key` and its `_mailx` record in DNS;
/// it serves until the returned sender is dropped.
fn stand_in(
    w: &World,
    domain: &str,
    key: &SigningKeypair,
    app: axum::Router,
) -> tokio::sync::watch::Sender<bool> {
    let dir = w.path().join(domain);
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    letterme_server::tls::generate_self_signed(&[domain.into()], &cert, &pem).unwrap();
    let fp = letterme_server::tls::spki_fingerprint(&cert).unwrap();
    let tls = letterme_server::federation::pin::server_config(&cert, &pem).unwrap();
    let listener =
        w.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let doc = letterme_protocol::discovery::ServerDocument::sign(
        domain,
        key,
        &endpoint,
        Some(fp.clone()),
        letterme_client::now(),
        3600,
    );
    let app = app
        .route(
            "/.well-known/mailx-server",
            axum::routing::get(move || async move { axum::Json(doc) }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    w.rt.spawn(letterme_server::listener::serve(
        "stand-in",
        listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        app,
        letterme_server::listener::ConnBounds::from_limits(
            &letterme_server::config::LimitsConfig::default(),
        ),
        std::sync::Arc::new(letterme_server::metrics::Metrics::default()),
        stopped,
    ));
    let record = letterme_protocol::discovery::MailxRecord {
        domain_key: key.public(),
        endpoint,
        tls_fingerprint: Some(fp),
    };
    w.rt.block_on(
        w.dns
            .set_txt_ttl(&format!("_mailx.{domain}"), &record.to_txt(), 300),
    );
    stop
}

/// A peer from before blobs has no route for them and answers the offer with its
/// framework's unsigned `404`: after a few attempts (not one: a proxy in front of a peer
/// may answer so for a moment) the envelope that names a blob is bounced with a notice
/// that says why, not retried until `give_up_after` (DECISIONS D75).
#[test]
fn a_peer_older_than_blobs_gets_a_bounce_not_days_of_retries() {
    use letterme_protocol::blob::Sealer;
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let alice = w.user(&a, "alice@a.test");
    // old.test knows deliveries, not blobs (and never gets one here): what it does not
    // know it answers with a plain 404, counted.
    let unknown = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = unknown.clone();
    let _stop = stand_in(
        &w,
        "old.test",
        &SigningKeypair::generate(),
        axum::Router::new()
            .route(
                "/v1/federation/transactions/{txid}",
                axum::routing::put(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .fallback(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { axum::http::StatusCode::NOT_FOUND }
            }),
    );
    let online = w.rt.block_on(letterme_tests::world::online(&alice));
    let file = vec![7u8; 3000];
    let (sealed, reference, manifest) = Sealer::new().finish(&file);
    w.rt.block_on(async {
        online
            .api
            .blob_begin(&reference.id, sealed.len() as u64, &manifest.0.concat())
            .await
            .unwrap();
        online.api.blob_put(&reference.id, 0, sealed).await.unwrap();
    });
    let to = Address::parse("u@old.test").unwrap();
    let env = letterme_tests::sealed_with_blobs(
        &online,
        &to,
        EncryptionKeypair::generate().public(),
        "the file",
        "attached",
        "<old-1@a.test>",
        vec![reference],
    );
    w.rt.block_on(online.api.send(env.encode())).unwrap();
    // Retried first (one second apart here), then bounced: well before `give_up_after`.
    w.wait_queue_empty(&a);
    assert_eq!(
        unknown.load(std::sync::atomic::Ordering::SeqCst),
        letterme_server::federation::queue::NO_BLOBS_SIGHTINGS,
        "offered once per attempt, bounced on the last"
    );
    let list = w.sync_until(&alice, 1);
    assert_eq!(list[0]["from"], "mailer-daemon@a.test", "{list:?}");
    let read: Value = serde_json::from_str(&ok(
        &w.cli(&alice, &["read", list[0]["id"].as_str().unwrap(), "--json"])
    ))
    .unwrap();
    let notice = read["body"].as_str().unwrap();
    assert!(
        notice.contains("does not take attachments sent as blobs"),
        "{notice}"
    );
}

/// Issue 15.2: an upload that is not signed by a key its origin publishes is refused on
/// its headers; none of its body is buffered, however many arrive at once, and a signed
/// delivery is served meanwhile.
#[test]
fn unsigned_uploads_of_tens_of_megabytes_are_refused_before_their_bodies_are_read() {
    const UPLOADS: usize = 16;
    const SIZE: usize = 48 << 20;
    let w = World::new(vec![]);
    let b = w.server("b.test", "");
    w.publish(&b, "b.test");
    let _bob = w.user(&b, "bob@b.test");
    let evil = w.hand_made_domain("evil.test");
    let base = b.federation.clone().unwrap();
    let http = any_certificate();
    let target = |n: u8| {
        format!(
            "/v1/federation/transactions/{}",
            letterme_protocol::codec::hex(&[n; 16])
        )
    };
    let before = b.peak_rss_kib();
    let big: &'static [u8] = vec![b'x'; SIZE].leak();
    let answers = w.rt.block_on(async {
        let mut uploads = tokio::task::JoinSet::new();
        for n in 0..UPLOADS {
            // Half carry no signature; half one by a key evil.test does not publish.
            let mut req = http.put(format!("{base}{}", target(n as u8)));
            if n % 2 == 1 {
                let stranger = SigningKeypair::generate();
                let sig = RequestSignature::sign(
                    &stranger,
                    "PUT",
                    &target(n as u8),
                    b"claimed",
                    "evil.test",
                    "b.test",
                    letterme_client::now(),
                    60,
                );
                for (name, v) in sig.headers() {
                    req = req.header(name, v);
                }
            }
            let body = reqwest::Body::from(big);
            uploads.spawn(async move {
                match req.body(body).send().await {
                    Ok(resp) => Some(resp.status().as_u16()),
                    // The server closes the connection without reading the body: the
                    // client may see that before the answer.
                    Err(_) => None,
                }
            });
        }
        // A legitimate delivery from evil.test meanwhile.
        let mallory = SigningKeypair::generate();
        let env = envelope_from(&mallory, "mallory@evil.test", "bob@b.test", "meanwhile");
        let body = encode_batch_items([(["bob@b.test".to_owned()].as_slice(), env.as_slice())]);
        let sig = RequestSignature::sign(
            &evil,
            "PUT",
            &target(200),
            &body,
            "evil.test",
            "b.test",
            letterme_client::now(),
            60,
        );
        let mut req = http.put(format!("{base}{}", target(200)));
        for (name, v) in sig.headers() {
            req = req.header(name, v);
        }
        let legit = req.body(body).send().await.unwrap().status().as_u16();
        let mut answers = uploads.join_all().await;
        answers.push(Some(legit));
        answers
    });
    assert_eq!(answers.last(), Some(&Some(200)), "{answers:?}");
    for a in &answers[..UPLOADS] {
        assert!(matches!(a, None | Some(401)), "{answers:?}");
    }
    assert!(
        answers[..UPLOADS].contains(&Some(401)),
        "no refusal was read at all: {answers:?}"
    );
    // The stated bound (docs/OPERATIONS.md §17): an unauthenticated request holds its
    // headers only. Buffering the bodies would take 16 × 48 MiB.
    let after = b.peak_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "peak memory grew {before} -> {after} KiB for {UPLOADS} unsigned uploads of {SIZE} bytes"
    );
}

#[test]
fn a_missing_recipient_gets_alice_a_notice_and_a_changed_dns_key_stops_delivery() {
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let b = w.server("b.test", "");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");

    // The client cannot encrypt to a user that does not exist, and says so.
    let err = user_error(&w.cli(
        &alice,
        &[
            "send",
            "--to",
            "nobody@b.test",
            "--subject",
            "s",
            "--body",
            "b",
        ],
    ));
    assert!(err.contains("no such user: nobody@b.test"), "{err}");
    // A client that sends anyway (sealed to some key): b.test answers "no such user", and
    // alice's server puts a signed failure notice in her inbox.
    let bob_addr = Address::parse("bob@b.test").unwrap();
    let (online, bob_key) = w.online(&alice, &bob_addr);
    let nobody = Address::parse("nobody@b.test").unwrap();
    let stray = sealed_text(
        &online,
        &nobody,
        EncryptionKeypair::generate().public(),
        "to nobody",
        "b",
        "<n@a.test>",
    );
    w.rt.block_on(online.api.send(stray.encode())).unwrap();
    let got = w.sync_until(&alice, 1);
    assert_eq!(got[0]["from"], "mailer-daemon@a.test");
    assert!(
        got[0]["subject"]
            .as_str()
            .unwrap()
            .contains("nobody@b.test"),
        "{}",
        got[0]
    );
    let id = got[0]["id"].as_str().unwrap().to_owned();
    let notice: Value =
        serde_json::from_str(&ok(&w.cli(&alice, &["read", &id, "--json"]))).unwrap();
    assert!(
        notice["body"]
            .as_str()
            .unwrap()
            .contains("nobody@b.test: no such user"),
        "{notice}"
    );
    w.wait_queue_empty(&a);

    // b.test's _mailx record now names another key: a.test refuses to deliver to it.
    let published = w.publish(&b, "b.test");
    let mut changed = letterme_protocol::discovery::MailxRecord::parse(&published).unwrap();
    changed.domain_key = SigningKeypair::generate().public();
    w.rt.block_on(w.dns.set_txt_ttl("_mailx.b.test", &changed.to_txt(), TTL));
    std::thread::sleep(Duration::from_millis(2500));
    w.refused_for_a_key_mismatch(&alice, "bob@b.test");
    // Mail already sealed for bob waits in the queue, with the reason, and is not delivered.
    let env = sealed_text(&online, &bob_addr, bob_key, "held back", "b", "<h@a.test>");
    w.rt.block_on(online.api.send(env.encode())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let q = w.queue(&a);
        if q.len() == 1 && q[0]["attempts"].as_u64() >= Some(2) {
            break q[0].clone();
        }
        assert!(Instant::now() < deadline, "no failed attempt: {q:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("does not match DNS"),
        "{row}"
    );
    let out = ok(&w.cli(&bob, &["sync"]));
    assert!(out.starts_with("0 new"), "{out}");
    // Publishing the right key again lets it through.
    w.publish(&b, "b.test");
    w.wait_queue_empty(&a);
    assert_eq!(subjects(&w.sync_until(&bob, 1)), ["held back"]);
}

#[test]
fn a_peer_that_stays_down_is_retried_with_growing_intervals_then_the_sender_is_told() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let clock = FakeClock::at_now();
    let mut config = letterme_tests::test_config(root.path(), "a.test");
    config.federation.listen = Some("127.0.0.1:0".parse().unwrap());
    // b.test, known statically (no DNS), whose endpoint nobody listens on.
    let dead = letterme_protocol::discovery::MailxRecord {
        domain_key: SigningKeypair::generate().public(),
        endpoint: format!("https://127.0.0.1:{}", free_port()),
        tls_fingerprint: Some(letterme_protocol::b64::encode(&[1; 32])),
    };
    config
        .federation
        .peers
        .insert("b.test".into(), dead.to_txt());
    let running = rt
        .block_on(letterme_server::start(config, clock.clone()))
        .unwrap();
    let url = format!("http://{}", running.local_addr);
    let profile = root.path().join("alice");
    rt.block_on(async {
        letterme_client::create_account(
            &letterme_client::profile::ProfileDir(profile.clone()),
            &Address::parse("alice@a.test").unwrap(),
            &url,
            PASSPHRASE,
            None,
        )
        .await
        .unwrap();
        let online = letterme_tests::world::online(&profile).await;
        let bob = Address::parse("bob@b.test").unwrap();
        let env = sealed_text(
            &online,
            &bob,
            EncryptionKeypair::generate().public(),
            "s",
            "b",
            "<x@a.test>",
        );
        online.api.send(env.encode()).await.unwrap();
    });
    let queue = running.federation_queue.clone().unwrap();
    let mut waits = Vec::new();
    let mut tried = Vec::new();
    let mut attempts = 0;
    loop {
        let rows = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                queue.run_due().await.unwrap();
                let rows = running.store.federation_rows().await.unwrap();
                // The background worker may have the batch in flight: wait for its result.
                if rows.first().is_none_or(|r| r.attempts > attempts) {
                    break rows;
                }
                assert!(Instant::now() < deadline, "no attempt recorded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let Some(row) = rows.first() else { break };
        attempts = row.attempts;
        assert!(
            row.last_error
                .as_deref()
                .unwrap()
                .contains("cannot reach b.test"),
            "{:?}",
            row.last_error
        );
        let wait = row.next_attempt - clock.now();
        // The background worker and `run_due` may both have tried: the wait follows the
        // number of attempts made.
        waits.push(wait);
        tried.push(attempts);
        clock.advance(Duration::from_secs(wait));
    }
    // About a minute, doubling (±10% jitter), capped at four hours; then given up.
    for (w, n) in waits.iter().zip(&tried) {
        let i = n.saturating_sub(1);
        let expected = (60u64 << i.min(20)).min(4 * 3600) as f64;
        assert!(
            (*w as f64 - expected).abs() <= expected * 0.1 + 1.0,
            "after attempt {n}: {w}s, expected about {expected}s: {waits:?} {tried:?}"
        );
    }
    assert!(waits.windows(2).take(8).all(|p| p[1] > p[0]), "{waits:?}");
    let total: u64 = waits.iter().sum();
    assert!(
        (5 * 86_400..5 * 86_400 + 4 * 3600 + 3600).contains(&total),
        "gave up after {total}s"
    );
    // The sender learns of it: a notice from her own server, which her client opens.
    let report = rt.block_on(async {
        let online = letterme_tests::world::online(&profile).await;
        online.sync(&mut |_, _| {}).await.unwrap()
    });
    assert_eq!(report.fetched, 1, "{report:?}");
    let me =
        letterme_client::Unlocked::open(letterme_client::profile::ProfileDir(profile), PASSPHRASE)
            .unwrap();
    let m = me.read(&report.new_ids[0]).unwrap();
    assert_eq!(m.from.as_str(), "mailer-daemon@a.test");
    assert!(
        m.body.contains("bob@b.test: gave up after 5days"),
        "{}",
        m.body
    );
    rt.block_on(running.shutdown()).unwrap();
}

#[test]
fn a_rotated_domain_key_is_published_before_use_and_the_old_one_overlaps() {
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let mut b = w.server("b.test", "");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");
    let bea = w.user(&b, "bea@b.test");
    ok(&w.cli(
        &alice,
        &[
            "send",
            "--to",
            "bob@b.test",
            "--subject",
            "before",
            "--body",
            "1",
        ],
    ));
    assert_eq!(subjects(&w.sync_until(&bob, 1)), ["before"]);
    let old = letterme_tests::mailx_record(&b, "b.test");

    // 1. The next key is made and published beside the current one; nothing uses it yet.
    let out = ok(&cli(
        Path::new("/nonexistent"),
        &[
            "domain-key",
            "next",
            "--config",
            b.config_path.to_str().unwrap(),
        ],
        None,
    ));
    assert!(out.contains("next domain key: "), "{out}");
    let both = letterme_tests::mailx_records(&b, "b.test");
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0], old, "the current key is still first");
    let refs: Vec<&str> = both.iter().map(String::as_str).collect();
    w.rt.block_on(w.dns.set_txts_ttl("_mailx.b.test", &refs, TTL));
    std::thread::sleep(Duration::from_millis(1500));

    // 2. Switched with the server stopped; accounts are attested again with the new key.
    b.kill9();
    let out = ok(&cli(
        Path::new("/nonexistent"),
        &[
            "domain-key",
            "activate",
            "--config",
            b.config_path.to_str().unwrap(),
        ],
        None,
    ));
    assert!(out.contains("2 account(s) attested again"), "{out}");
    b.restart();
    // The previous key stays published for the overlap; the new one is now first.
    let after = letterme_tests::mailx_records(&b, "b.test");
    assert_eq!(after, vec![both[1].clone(), both[0].clone()]);

    // Mail flows both ways: b.test now signs with the new key, which DNS already had.
    ok(&w.cli(
        &alice,
        &[
            "send",
            "--to",
            "bob@b.test",
            "--subject",
            "after",
            "--body",
            "2",
        ],
    ));
    assert_eq!(subjects(&w.sync_until(&bob, 2)), ["before", "after"]);
    ok(&w.cli(
        &bob,
        &[
            "send",
            "--to",
            "alice@a.test",
            "--subject",
            "from b",
            "--body",
            "3",
        ],
    ));
    assert_eq!(subjects(&w.sync_until(&alice, 1)), ["from b"]);
    // bob's client pinned the old key at registration; bea's new attestation verifies
    // through the new key published in DNS.
    ok(&w.cli(
        &bob,
        &[
            "send",
            "--to",
            "bea@b.test",
            "--subject",
            "local",
            "--body",
            "4",
        ],
    ));
    assert_eq!(subjects(&w.sync_until(&bea, 1)), ["local"]);

    // Without the new key in DNS, nobody trusts b.test's new signatures.
    w.rt.block_on(w.dns.set_txt_ttl("_mailx.b.test", &old, TTL));
    std::thread::sleep(Duration::from_millis(1500));
    w.refused_for_a_key_mismatch(&alice, "bob@b.test");
}

/// `GET /v1/kt/witnessed/{domain}` on `server`.
fn witnessed(w: &World, server: &ServerProc, domain: &str) -> Value {
    w.rt.block_on(async {
        reqwest::get(format!("{}/v1/kt/witnessed/{domain}", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

#[test]
fn a_log_rewritten_behind_its_peers_back_is_caught_by_the_witness_and_audits() {
    let w = World::new(vec![]);
    let mut x = w.server("x.test", "");
    let a = w.server("a.test", "");
    let alice = w.user(&x, "alice@x.test");
    let bob = w.user(&a, "bob@a.test");
    let send = |subject: &str| {
        ok(&w.cli(
            &alice,
            &[
                "send",
                "--to",
                "bob@a.test",
                "--subject",
                subject,
                "--body",
                "b",
            ],
        ));
    };
    send("one");
    w.sync_until(&bob, 1);
    // a.test saw x.test's log through x.test's requests and the lookup of alice's key.
    let seen = witnessed(&w, &a, "x.test");
    assert_eq!(seen["checkpoint"]["size"], 1, "{seen}");
    assert_eq!(seen["forks"].as_array().unwrap().len(), 0, "{seen}");

    // bob audits both logs: his own domain's, and x.test's through his server.
    let own = ok(&w.cli(&bob, &["kt", "audit", "a.test"]));
    assert!(own.contains("size: 1 entries"), "{own}");
    assert!(own.contains("head: "), "{own}");
    let theirs: Value =
        serde_json::from_str(&ok(&w.cli(&bob, &["kt", "audit", "x.test", "--json"]))).unwrap();
    assert_eq!(theirs["size"], 1, "{theirs}");
    assert_eq!(theirs["witness"], "consistent", "{theirs}");

    // x.test's operator rewrites history: the same size, another entry, so another root.
    x.kill9();
    let db = rusqlite::Connection::open(x.data_dir.join("letterme.db")).unwrap();
    let mut entry: Vec<u8> = db
        .query_row("SELECT entry FROM kt_log WHERE idx = 0", [], |r| r.get(0))
        .unwrap();
    entry[70] ^= 0xff; // inside the encryption key
    db.execute(
        "UPDATE kt_log SET entry = ?1 WHERE idx = 0",
        rusqlite::params![entry],
    )
    .unwrap();
    drop(db);
    x.restart();

    // x.test's next requests carry a checkpoint of the rewritten log: a.test catches it.
    send("two");
    let deadline = Instant::now() + Duration::from_mins(1);
    let fork = loop {
        let v = witnessed(&w, &a, "x.test");
        if let Some(f) = v["forks"].as_array().and_then(|f| f.first()) {
            break f.clone();
        }
        assert!(Instant::now() < deadline, "no fork recorded: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The evidence: two checkpoints of the same size, both signed by x.test, two roots.
    let held: letterme_protocol::kt::Checkpoint =
        serde_json::from_value(fork["held"].clone()).unwrap();
    let other: letterme_protocol::kt::Checkpoint =
        serde_json::from_value(fork["other"].clone()).unwrap();
    assert_eq!((held.size, other.size), (1, 1));
    assert_ne!(held.root, other.root);
    let x_key = letterme_protocol::discovery::MailxRecord::parse(&letterme_tests::mailx_record(
        &x, "x.test",
    ))
    .unwrap()
    .domain_key;
    held.verify(&x_key).unwrap();
    other.verify(&x_key).unwrap();
    assert!(
        fork["reason"].as_str().unwrap().contains("two roots"),
        "{fork}"
    );

    // From then on a.test refuses x.test's keys, so bob's client cannot verify alice...
    let out = w.cli(&bob, &["sync"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("forked"), "{text}");
    // ...and bob's own audit of x.test fails against what his profile saw before.
    let err = user_error(&w.cli(&bob, &["kt", "audit", "x.test"]));
    assert!(err.contains("x.test"), "{err}");
}

/// A user on another domain reaches both of alice's devices, in one envelope each device
/// opens; the linked device's reply, signed by its own device key, verifies at bob's as
/// alice's.
#[test]
fn another_domain_reaches_both_devices_and_a_linked_device_replies() {
    let w = World::new(vec![]);
    let a = w.server("a.test", "");
    let b = w.server("b.test", "");
    let alice = w.user(&a, "alice@a.test");
    let bob = w.user(&b, "bob@b.test");
    let laptop = w.path().join("alice-laptop");
    let (linking, shown) = crate::devices::Linking::start(&alice);
    let code = shown["code"].as_str().unwrap().to_owned();
    ok(&crate::devices::join_as(&laptop, "alice@a.test", &code, &a));
    let (linked, said) = linking.finish();
    assert!(linked, "{said}");

    ok(&w.cli(
        &bob,
        &[
            "send",
            "--to",
            "alice@a.test",
            "--subject",
            "to both devices",
            "--body",
            "b",
        ],
    ));
    for profile in [&alice, &laptop] {
        let got = w.sync_until(profile, 1);
        assert_eq!(got[0]["subject"], "to both devices");
        assert_eq!(got[0]["signature_verified"], true);
    }
    ok(&w.cli(
        &laptop,
        &[
            "send",
            "--to",
            "bob@b.test",
            "--subject",
            "from the laptop",
            "--body",
            "b",
        ],
    ));
    let back = w.sync_until(&bob, 1);
    assert_eq!(back[0]["from"], "alice@a.test");
    assert_eq!(back[0]["subject"], "from the laptop");
}
