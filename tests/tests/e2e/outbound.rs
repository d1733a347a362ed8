//! Outbound to ordinary addresses, end to end: a `letterme serve` process for a.test in
//! relay or notice mode, an in-process DNS server on loopback holding exactly what
//! `letterme dns` printed, and an SMTP sink playing legacy.test's MX. Signatures, SPF and
//! DMARC are checked with mail-auth against that DNS, as a receiving MTA would; a relayed
//! multipart message is read back part for part by python's email package, as the
//! recipient's mail client would.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use letterme_tests::multipart::{self, Multipart};
use letterme_tests::sink::Sink;
use letterme_tests::world::{World, dns_zone, queue, sync_until, wait_queue_empty};
use letterme_tests::{ServerProc, cli, contains, files_under, ok, user_error};
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::ResolverOpts;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfResult};
use serde_json::Value;

const SUBJECT: &str = "Quarterly numbers, confidential";
const BODY: &str = "The launch code is 4711 and nobody may know.";

/// legacy.test's MX, and the address records of both mail hosts.
const HOSTS: &str = "legacy.test. 60 IN MX 10 mx.legacy.test.\n\
                     mx.legacy.test. 60 IN A 127.0.0.1\n\
                     mx.a.test. 60 IN A 127.0.0.1\n";

/// a.test sending to legacy.test's MX (the sink), resolving through the test DNS, and alice.
struct Scene {
    world: World,
    sink: Sink,
    server: ServerProc,
    alice: PathBuf,
}

impl Scene {
    /// a.test in `mode`, its records published as `letterme dns` prints them, and alice.
    fn new(mode: &str, extra: &str) -> Self {
        let world = World::new(vec![]);
        world.block_on(world.dns.load_zone(HOSTS));
        let sink = world.block_on(Sink::start(world.path(), "mx.legacy.test"));
        let dir = world.path().join("a.test");
        std::fs::create_dir_all(&dir).unwrap();
        let server = ServerProc::start(
            &dir,
            "a.test",
            &format!(
                "smtp.hostname = \"mx.a.test\"\n{}\
                 outbound.mode = \"{mode}\"\noutbound.port = {}\noutbound.timeout = \"10s\"\n\
                 outbound.retry_first = \"1s\"\noutbound.retry_max = \"2s\"\n{extra}",
                world.dns_toml(500),
                sink.addr.port()
            ),
        );
        world.publish_zone(&server);
        let alice = world.account(&server, "alice", "alice@a.test");
        Self {
            world,
            sink,
            server,
            alice,
        }
    }

    fn config(&self) -> &str {
        self.server.config_path.to_str().unwrap()
    }

    /// What `letterme dns` prints for a.test.
    fn dns_zone(&self) -> String {
        dns_zone(&self.server)
    }

    fn send(&self, to: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["send", "--to", to, "--subject", SUBJECT, "--body", BODY];
        args.extend_from_slice(extra);
        cli(&self.alice, &args, None)
    }

    fn queue(&self) -> Vec<Value> {
        queue(&self.server)
    }

    fn wait_queue_empty(&self) {
        wait_queue_empty(&self.server, Duration::from_mins(1));
    }

    /// Syncs alice until `n` messages are in her mailbox; returns them.
    fn alice_mail(&self, n: usize) -> Vec<Value> {
        sync_until(n, |args| cli(&self.alice, args, None))
    }

    fn read(&self, id: &str) -> Value {
        serde_json::from_str(&ok(&cli(&self.alice, &["read", id, "--json"], None))).unwrap()
    }

    /// No byte of the subject or body anywhere under the server's data directory.
    fn assert_no_plaintext_on_server(&self) {
        for (path, bytes) in files_under(&self.server.data_dir) {
            for secret in [SUBJECT, BODY, "launch code"] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{secret:?} in {}",
                    path.display()
                );
            }
        }
    }

    fn authenticator(&self) -> MessageAuthenticator {
        MessageAuthenticator::new(
            letterme_server::dns::nameserver_config(&[self.world.dns.addr]),
            ResolverOpts::default(),
        )
        .unwrap()
    }

    /// `data` carries a.test's two DKIM signatures, and both verify against its DNS.
    fn assert_dkim_passes(&self, data: &[u8]) {
        let auth = self.authenticator();
        self.world.block_on(async {
            let msg = AuthenticatedMessage::parse(data).unwrap();
            let dkim = auth.verify_dkim(&msg).await;
            assert_eq!(dkim.len(), 2, "two DKIM signatures");
            for d in &dkim {
                assert_eq!(d.result(), &DkimResult::Pass, "{d:?}");
                assert_eq!(d.signature().unwrap().d, "a.test");
            }
        });
    }
}

#[test]
fn a_relayed_message_reaches_the_mx_dkim_signed_twice_with_spf_and_dmarc_passing() {
    let w = Scene::new("relay", "");
    // Without consent the copy does not leave end-to-end encryption.
    let err = user_error(&w.send("carol@legacy.test", &[]));
    assert!(err.contains("carol@legacy.test"), "{err}");
    assert!(err.contains("--allow-plaintext"), "{err}");
    assert!(w.queue().is_empty());

    let out = ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    assert!(out.contains("NOT end-to-end encrypted"), "{out}");
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    assert_eq!(got.len(), 1, "the sink got: {got:?}");
    let m = &got[0];
    assert_eq!(m.rcpts, vec!["carol@legacy.test".to_owned()]);
    assert_eq!(m.mail_from, "alice@a.test");
    assert_eq!(m.helo, "mx.a.test");
    assert!(m.tls, "STARTTLS was offered, so the session is encrypted");
    assert!(contains(&m.data, BODY.as_bytes()));

    let auth = w.authenticator();
    w.world.block_on(async {
        let msg = AuthenticatedMessage::parse(&m.data).unwrap();
        let dkim = auth.verify_dkim(&msg).await;
        assert_eq!(dkim.len(), 2, "two DKIM signatures");
        let mut algorithms = Vec::new();
        for d in &dkim {
            assert_eq!(d.result(), &DkimResult::Pass, "{d:?}");
            let sig = d.signature().unwrap();
            assert_eq!(sig.d, "a.test");
            algorithms.push(format!("{:?}", sig.a));
        }
        algorithms.sort();
        assert_eq!(algorithms, vec!["Ed25519Sha256", "RsaSha256"]);
        let spf = auth
            .verify_spf(SpfParameters::verify_mail_from(
                m.peer,
                &m.helo,
                "mx.legacy.test",
                &m.mail_from,
            ))
            .await;
        assert_eq!(spf.result(), SpfResult::Pass);
        let dmarc = auth
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, "a.test", &spf))
            .await;
        assert_eq!(dmarc.dkim_result(), &DmarcResult::Pass, "DKIM aligned");
        assert_eq!(dmarc.spf_result(), &DmarcResult::Pass, "SPF aligned");
    });
    w.wait_queue_empty();
    w.assert_no_plaintext_on_server();
}

/// Whole MIME to an ordinary address: text with an HTML alternative, a 200 KB binary file
/// and a file with a non-ASCII name reach the MX from alice, under a.test's valid DKIM
/// signatures, every part with its bytes and name; the server, which queued the message,
/// kept none of it readable.
#[test]
fn a_relayed_multipart_message_reaches_the_mx_part_for_part_under_valid_dkim() {
    let w = Scene::new("relay", "");
    let mail = Multipart::write(&w.world.path().join("files"));
    let files = mail.args();
    let mut extra = vec!["--allow-plaintext"];
    extra.extend(files.iter().map(String::as_str));
    ok(&w.send("carol@legacy.test", &extra));
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    assert_eq!(got.len(), 1, "messages at the sink");
    let m = &got[0];
    assert_eq!(m.rcpts, vec!["carol@legacy.test".to_owned()]);
    assert_eq!(m.mail_from, "alice@a.test");
    w.assert_dkim_passes(&m.data);
    mail.assert_carried_by(&m.data, "alice@a.test", BODY, "the relayed copy");
    w.wait_queue_empty();
    w.assert_no_plaintext_on_server();
    multipart::assert_unreadable_under(&w.server.data_dir, "alice@a.test");
}

#[test]
fn with_the_mx_down_the_message_is_retried_and_delivered_when_it_returns() {
    let mut w = Scene::new("relay", "");
    w.sink.down();
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    // Queued durably, sealed: retried while the MX refuses connections.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let q = w.queue();
        assert_eq!(q.len(), 1, "{q:?}");
        if q[0]["attempts"].as_u64().unwrap() >= 2 {
            assert!(
                q[0]["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("mx.legacy.test"),
                "{q:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no retries: {q:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    w.assert_no_plaintext_on_server();
    w.world.block_on(w.sink.up());
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    assert_eq!(got.len(), 1, "delivered once the MX is back: {got:?}");
    assert!(contains(&got[0].data, SUBJECT.as_bytes()));
    w.wait_queue_empty();
    // Delivered, so no failure notice.
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.alice_mail(0).is_empty());
}

#[test]
fn after_the_give_up_time_the_sender_gets_a_failure_notice() {
    let mut w = Scene::new("relay", "outbound.give_up_after = \"3s\"");
    w.sink.down();
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    w.wait_queue_empty();
    let mail = w.alice_mail(1);
    assert_eq!(mail[0]["from"], "mailer-daemon@a.test", "{mail:?}");
    let notice = w.read(mail[0]["id"].as_str().unwrap());
    let body = notice["body"].as_str().unwrap();
    assert!(body.contains("carol@legacy.test"), "{body}");
    assert!(body.contains("gave up after"), "{body}");
    w.world.block_on(w.sink.up());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        w.sink.received().is_empty(),
        "nothing is sent after giving up"
    );
}

#[test]
fn a_5xx_from_the_mx_gives_a_failure_notice_at_once() {
    let w = Scene::new("relay", "");
    w.sink
        .set_data_reply(Some("550 5.7.1 we do not take mail from strangers"));
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    w.wait_queue_empty();
    let q = w.queue();
    assert!(q.is_empty());
    let mail = w.alice_mail(1);
    let notice = w.read(mail[0]["id"].as_str().unwrap());
    let body = notice["body"].as_str().unwrap();
    assert!(body.contains("550"), "{body}");
    // The server's own words, then the MX's only as a quotation (issue 15.9).
    assert!(
        body.contains("the receiving server answered 550; the other server said: \""),
        "{body}"
    );
    assert!(
        body.contains("strangers"),
        "the MX's reason is passed on: {body}"
    );
    assert!(w.sink.connections() >= 1);
    assert!(w.sink.received().is_empty());
}

#[test]
fn in_notice_mode_the_mx_gets_a_signed_notice_without_subject_or_body() {
    let w = Scene::new("notice", "");
    // No consent needed: nothing of the message leaves.
    let out = ok(&w.send("carol@legacy.test", &[]));
    assert!(out.contains("notice"), "{out}");
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.rcpts, vec!["carol@legacy.test".to_owned()]);
    for secret in [SUBJECT, BODY, "launch code", "4711", "Quarterly"] {
        assert!(
            !contains(&m.data, secret.as_bytes()),
            "{secret:?} leaked into the notice"
        );
    }
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("alice@a.test"), "{text}");
    assert!(text.contains("letter.me"), "{text}");
    w.assert_dkim_passes(&m.data);
    w.wait_queue_empty();
    w.assert_no_plaintext_on_server();
}

#[test]
fn check_names_a_wrong_dkim_key_and_a_missing_dmarc_record_and_passes_once_fixed() {
    let w = Scene::new("relay", "");
    let check = || {
        cli(
            Path::new("/nonexistent"),
            &["check", "--config", w.config()],
            None,
        )
    };
    let good = check();
    let out = ok(&good);
    assert!(!out.contains("missing") && !out.contains("wrong"), "{out}");
    assert!(out.contains("DNSSEC: not validated"), "{out}");

    // Someone else's Ed25519 key at our selector, and no DMARC record.
    let other = letterme_protocol::SigningKeypair::generate()
        .public()
        .to_base64();
    w.world.block_on(async {
        w.world
            .dns
            .set_txt(
                "ed1._domainkey.a.test",
                &format!("v=DKIM1; k=ed25519; p={other}"),
            )
            .await;
        w.world
            .dns
            .remove(
                "_dmarc.a.test",
                mail_auth::hickory_resolver::proto::rr::RecordType::TXT,
            )
            .await;
    });
    let bad = check();
    assert!(!bad.status.success());
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(
        report.contains("wrong    TXT  ed1._domainkey.a.test."),
        "{report}"
    );
    assert!(report.contains("missing  TXT  _dmarc.a.test."), "{report}");
    assert!(
        report.contains("fix: add  _dmarc.a.test. 3600 IN TXT \"v=DMARC1; p=reject"),
        "{report}"
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("ed1._domainkey.a.test") && err.contains("_dmarc.a.test"),
        "{err}"
    );

    // Publishing `letterme dns` again fixes both.
    w.world.block_on(w.world.dns.load_zone(&w.dns_zone()));
    ok(&check());
}

/// Starts `letterme serve` with `args`; its first stdout line, or its stderr when it exits.
fn serve(args: &[&str]) -> Result<String, String> {
    let mut child = std::process::Command::new(letterme_tests::letterme_bin())
        .arg("serve")
        .args(args)
        .env("LETTERME_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if line.starts_with("letterme serving") {
        Ok(line)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn serve_in_production_refuses_to_start_while_records_are_wrong_unless_told_to_skip() {
    let w = Scene::new("relay", "");
    // A second server on the same data, in production mode, on other ports.
    let text = std::fs::read_to_string(&w.server.config_path).unwrap();
    let (port, smtp) = (letterme_tests::free_port(), letterme_tests::free_port());
    let mut text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("http.listen") {
                format!("http.listen = \"127.0.0.1:{port}\"\n")
            } else if l.starts_with("smtp.listen") {
                format!("smtp.listen = \"127.0.0.1:{smtp}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    text.insert_str(0, "mode = \"production\"\n");
    let second = w.server.config_path.with_file_name("production.toml");
    std::fs::write(&second, text).unwrap();
    let second = second.to_str().unwrap();

    // Every required record is in place: it starts.
    serve(&["--config", second]).unwrap();

    w.world.block_on(w.world.dns.remove(
        "_dmarc.a.test",
        mail_auth::hickory_resolver::proto::rr::RecordType::TXT,
    ));
    let err = serve(&["--config", second]).unwrap_err();
    assert!(err.contains("_dmarc.a.test"), "{err}");
    assert!(err.contains("--skip-dns-check"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let line = serve(&["--skip-dns-check", "--config", second]).unwrap();
    assert!(line.starts_with("letterme serving a.test"), "{line:?}");
}

#[test]
fn a_stolen_account_cannot_turn_the_server_into_a_spam_cannon() {
    // Per user: a burst of 2, then one a minute.
    let w = Scene::new(
        "relay",
        "outbound.user_burst = 2\noutbound.user_per_minute = 1",
    );
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    ok(&w.send("dave@legacy.test", &["--allow-plaintext"]));
    let err = user_error(&w.send("erin@legacy.test", &["--allow-plaintext"]));
    assert!(err.contains("429") && err.contains("slow down"), "{err}");

    // Per destination domain, whoever sends.
    let w = Scene::new(
        "relay",
        "outbound.domain_burst = 1\noutbound.domain_per_minute = 1",
    );
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    let err = user_error(&w.send("dave@legacy.test", &["--allow-plaintext"]));
    assert!(
        err.contains("legacy.test"),
        "the refusal names the domain: {err}"
    );

    // Per day, counted durably: a restart does not reset it.
    let mut w = Scene::new("relay", "outbound.daily_cap = 2");
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    w.server.restart();
    ok(&w.send("dave@legacy.test", &["--allow-plaintext"]));
    let err = user_error(&w.send("erin@legacy.test", &["--allow-plaintext"]));
    assert!(err.contains("daily limit of 2"), "{err}");
    let got = w.world.block_on(w.sink.wait_for(2, Duration::from_mins(1)));
    assert_eq!(got.len(), 2, "exactly the two accepted messages went out");
}

/// SMTP smuggling through the relay: a body with `\n.\r\n` followed by a second
/// transaction. Refused at `POST /v1/outbound`; the MX (a sink recording raw bytes) sees
/// only the legitimate message sent after it.
#[test]
fn a_smuggled_second_transaction_in_a_relayed_body_never_reaches_the_mx() {
    let w = Scene::new("relay", "");
    let smuggled = b"From: alice@a.test\r\nTo: carol@legacy.test\r\nSubject: hi\r\n\r\n\
hello\n.\r\nMAIL FROM:<ceo@a.test>\r\nRCPT TO:<carol@legacy.test>\r\nDATA\r\n\
From: ceo@a.test\r\nSubject: wire the money\r\n\r\nsmuggled\r\n.\r\n";
    let refused = w.world.block_on(async {
        let online = letterme_tests::world::online(&w.alice).await;
        let carol = letterme_protocol::Address::parse("carol@legacy.test").unwrap();
        online
            .api
            .send_outbound(&[carol], Some(smuggled))
            .await
            .unwrap_err()
    });
    match refused {
        letterme_client::ClientError::Api {
            status, message, ..
        } => {
            assert_eq!(status, 400, "{message}");
            assert!(message.contains("LF without CR"), "{message}");
        }
        other => panic!("expected a 400, got {other}"),
    }
    ok(&w.send("carol@legacy.test", &["--allow-plaintext"]));
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    w.wait_queue_empty();
    let got_all = w.world.block_on(w.sink.wait_for(2, Duration::from_secs(2)));
    assert_eq!(got.len(), 1);
    assert_eq!(got_all.len(), 1, "one transaction reached the MX");
    for m in &got_all {
        assert_eq!(m.mail_from, "alice@a.test");
        assert!(!contains(&m.data, b"smuggled") && !contains(&m.data, b"wire the money"));
    }
}

const PROXY_SESSION: &str = include_str!("../../fixtures/imap/proxy_session.py");

#[test]
fn the_proxy_relays_from_smtplib_only_when_started_with_allow_plaintext() {
    let w = Scene::new("relay", "");
    let eml = w.alice.with_extension("eml");
    std::fs::write(
        &eml,
        format!(
            "From: alice@a.test\r\nTo: Carol <carol@legacy.test>\r\nSubject: {SUBJECT}\r\n\
             Message-ID: <thunder-1@client.local>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{BODY}\r\n"
        ),
    )
    .unwrap();
    let cert = w.alice.join("proxy-cert.pem");
    let smtp = |proxy: &letterme_tests::ProxyProc, rcpt: &str, foreign: &str| {
        letterme_tests::python(
            PROXY_SESSION,
            &[
                "smtp",
                "127.0.0.1",
                &proxy.imap.port().to_string(),
                "alice@a.test",
                &proxy.password,
                &proxy.smtp.port().to_string(),
                rcpt,
                foreign,
                eml.to_str().unwrap(),
                cert.to_str().unwrap(),
            ],
        )
    };
    // Without the flag: RCPT to an ordinary address is refused, and says how to allow it.
    let proxy = letterme_tests::ProxyProc::start(&w.alice);
    let out = smtp(&proxy, "alice@a.test", "carol@legacy.test");
    assert_eq!(out["foreign"]["carol@legacy.test"][0], 550, "{out}");
    let why = out["foreign"]["carol@legacy.test"][1].as_str().unwrap();
    assert!(why.contains("--allow-plaintext"), "{why}");
    drop(proxy);
    assert!(w.sink.received().is_empty());

    let proxy = letterme_tests::ProxyProc::start_with(
        &w.alice,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--allow-plaintext"],
    );
    let out = smtp(&proxy, "carol@legacy.test", "nobody@a.test");
    assert_eq!(out["refused"], serde_json::json!({}), "{out}");
    assert_eq!(out["foreign"]["nobody@a.test"][0], 550, "{out}");
    let got = w.world.block_on(w.sink.wait_for(1, Duration::from_mins(1)));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpts, vec!["carol@legacy.test".to_owned()]);
    assert!(contains(&got[0].data, BODY.as_bytes()));
    assert!(contains(
        &got[0].data,
        b"Message-ID: <thunder-1@client.local>"
    ));
}
