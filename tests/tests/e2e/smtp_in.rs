//! Inbound SMTP end to end: python's smtplib as the sending MTA, an in-process DNS server
//! serving SPF, DKIM and DMARC records, the real `letterme serve`, and the recipient
//! reading the sealed message with the CLI.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use letterme_tests::dkim::DkimKeys;
use letterme_tests::dns::txt;
use letterme_tests::world::World;
use letterme_tests::{ServerProc, cli, closed_by_server, connect_from, contains, files_under, ok};
use serde_json::Value;

/// x.test resolving through the test DNS, with bob and carol, and the DKIM keys the
/// sending domains publish.
struct Scene {
    world: World,
    server: ServerProc,
    bob: PathBuf,
    carol: PathBuf,
    sender_keys: DkimKeys,
    dkimonly_keys: DkimKeys,
}

fn world(policy: &str) -> Scene {
    world_with(policy, false, "")
}

fn world_with(policy: &str, tls: bool, extra_toml: &str) -> Scene {
    let sender_keys = DkimKeys::new("sender.test");
    let dkimonly_keys = DkimKeys::new("dkimonly.test");
    let mut records = vec![
        // sender.test: SPF for loopback, p=none, both DKIM keys.
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=none"),
        // spffail.test: SPF that excludes loopback.
        txt("spffail.test", "v=spf1 -all"),
        // quarantine.test: p=quarantine, SPF that excludes loopback.
        txt("quarantine.test", "v=spf1 -all"),
        txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        // dkimonly.test: DKIM keys, no SPF, no DMARC. nodmarc.test / unaligned.test: nothing.
    ];
    for k in [&sender_keys, &dkimonly_keys] {
        for (owner, value) in k.records() {
            records.push(txt(&owner, &value));
        }
    }
    let world = World::new(records);
    if tls {
        let dir = world.path().join("server-data/tls");
        letterme_server::tls::generate_self_signed(
            &["x.test".into(), "127.0.0.1".into()],
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
        )
        .unwrap();
    }
    let extra = format!(
        "{}dns.attempts = 0\npolicy.dmarc = \"{policy}\"\nsmtp.max_message_size = \"200KB\"\n{extra_toml}",
        world.dns_toml(400)
    );
    let server = ServerProc::start(world.path(), "x.test", &extra);
    let bob = world.account(&server, "bob", "bob@x.test");
    let carol = world.account(&server, "carol", "carol@x.test");
    Scene {
        world,
        server,
        bob,
        carol,
        sender_keys,
        dkimonly_keys,
    }
}

fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: Bob <bob@x.test>\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{}@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        subject.len() * 7919 + body.len()
    )
    .into_bytes()
}

/// Sends with smtplib; returns the (step, code, text) replies.
fn send(
    w: &Scene,
    mail_from: &str,
    rcpts: &[&str],
    msg: &[u8],
    smtputf8: bool,
) -> Vec<(String, u16, String)> {
    send_opts(w, mail_from, rcpts, msg, smtputf8, None)
}

fn send_opts(
    w: &Scene,
    mail_from: &str,
    rcpts: &[&str],
    msg: &[u8],
    smtputf8: bool,
    starttls_ca: Option<&Path>,
) -> Vec<(String, u16, String)> {
    let smtp: SocketAddr = w.server.smtp.unwrap();
    let path = w.world.path().join(format!("msg-{}.eml", rand_suffix()));
    std::fs::write(&path, msg).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smtp_send.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .arg(smtp.ip().to_string())
        .arg(smtp.port().to_string())
        .arg("client.test")
        .arg(mail_from)
        .arg(rcpts.join(","))
        .arg(&path);
    if smtputf8 {
        cmd.arg("smtputf8");
    }
    if let Some(ca) = starttls_ca {
        cmd.arg(format!("starttls={}", ca.display()));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, u16, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn data_reply(r: &[(String, u16, String)]) -> (u16, String) {
    let last = r.last().unwrap();
    assert_eq!(last.0, "data", "no DATA reply: {r:?}");
    (last.1, last.2.clone())
}

fn sync_json(profile: &Path) -> Value {
    serde_json::from_str(&ok(&cli(profile, &["sync", "--json"], None))).unwrap()
}

#[test]
fn signed_spf_passing_mail_is_accepted_sealed_and_readable() {
    let mut w = world("strict");
    let subject = "CANARY-SUBJ-41c9 quarterly plan";
    let body = "CANARY-BODY-88ad the numbers are in.";
    let raw = w
        .sender_keys
        .sign(&message("Alice <alice@sender.test>", subject, body));
    let r = send(
        &w,
        "alice@sender.test",
        &["bob@x.test", "carol@x.test"],
        &raw,
        false,
    );
    assert_eq!(r[1].1, 250, "{r:?}");
    let (code, text) = data_reply(&r);
    assert_eq!(code, 250, "{text}");

    // kill -9 right after the 250: nothing acknowledged is lost.
    w.server.kill9();
    w.server.restart();

    for profile in [&w.bob, &w.carol] {
        assert_eq!(sync_json(profile)["fetched"], 1);
        let list: Value =
            serde_json::from_str(&ok(&cli(profile, &["list", "--json"], None))).unwrap();
        assert_eq!(list[0]["subject"], subject);
        assert_eq!(list[0]["legacy"], true);
        assert_eq!(list[0]["folder"], "INBOX");
        let id = list[0]["id"].as_str().unwrap();
        let m: Value =
            serde_json::from_str(&ok(&cli(profile, &["read", id, "--json"], None))).unwrap();
        assert!(m["body"].as_str().unwrap().contains(body));
        assert_eq!(m["from"], "alice@sender.test");
        // Each recipient has an envelope of its own: nobody learns of the other (Bcc).
        assert_eq!(m["to"].as_array().unwrap().len(), 1, "{}", m["to"]);
        let raw_ar = m["legacy"]["authentication_results"].as_str().unwrap();
        assert!(!raw_ar.is_empty());
        let ar = m["legacy"]["authentication_results"].as_str().unwrap();
        assert!(ar.contains("dkim=pass"), "{ar}");
        assert!(
            ar.contains("header.s=rsa") && ar.contains("header.s=ed"),
            "both signatures verified: {ar}"
        );
        assert!(ar.contains("spf=pass"), "{ar}");
        assert!(ar.contains("dmarc=pass"), "{ar}");
        assert_eq!(m["legacy"]["disposition"], "accept");
        let text = ok(&cli(profile, &["read", id], None));
        assert!(text.contains("Arrived-From: classic email"), "{text}");
    }

    // The canary is nowhere on the server's disk or in its log.
    let files = files_under(&w.server.data_dir);
    assert!(
        files.iter().any(|(_, b)| contains(b, b"bob@x.test")),
        "positive control"
    );
    for canary in ["CANARY-SUBJ", "CANARY-BODY", "quarterly plan"] {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, canary.as_bytes()),
                "{canary} in {}",
                path.display()
            );
        }
    }
}

#[test]
fn strict_mode_rejects_unauthenticated_mail_and_stores_nothing() {
    let w = world("strict");
    let cases: Vec<(&str, &str, Vec<u8>, bool, &str)> = vec![
        (
            "body changed after signing",
            "alice@dkimonly.test",
            {
                let mut m =
                    w.dkimonly_keys
                        .sign(&message("alice@dkimonly.test", "s", "original body"));
                let n = m.len();
                m[n - 5] = b'X';
                m
            },
            false,
            "5.7.",
        ),
        (
            "SPF fail, no DKIM",
            "alice@spffail.test",
            message("alice@spffail.test", "s", "b"),
            false,
            "5.7.23",
        ),
        (
            "DKIM valid for a domain not aligned with From",
            "alice@unaligned.test",
            w.dkimonly_keys
                .sign(&message("alice@unaligned.test", "s", "b")),
            false,
            "5.7.22",
        ),
        (
            "no SPF, no DKIM, no DMARC record",
            "alice@nodmarc.test",
            message("alice@nodmarc.test", "s", "b"),
            false,
            "5.7.26",
        ),
        (
            "display-name look-alike From",
            "alice@sender.test",
            message("\"alice@sender.test\" <alice@evil.test>", "s", "b"),
            false,
            "5.7.26",
        ),
        (
            "Unicode look-alike From",
            "alice@sender.test",
            message("alice@s\u{0435}nder.test", "s", "b"),
            true,
            "5.7.26",
        ),
        // Issue 15.9: the signed and aligned From DMARC judges is not the one a reader
        // sees; refused before any check, whatever the signatures say.
        (
            "a second From field",
            "alice@dkimonly.test",
            {
                let mut m = w
                    .dkimonly_keys
                    .sign(&message("alice@dkimonly.test", "s", "b"));
                m.splice(0..0, b"From: ceo@bank.test\r\n".iter().copied());
                m
            },
            false,
            "5.6.0",
        ),
        (
            "a line that is no field hides the rest of the header",
            "alice@dkimonly.test",
            {
                let mut m = w
                    .dkimonly_keys
                    .sign(&message("alice@dkimonly.test", "s", "b"));
                m.splice(0..0, b"X-Hide this\r\n".iter().copied());
                m
            },
            false,
            "5.6.0",
        ),
    ];
    for (name, mail_from, raw, utf8, enhanced) in cases {
        let r = send(&w, mail_from, &["bob@x.test"], &raw, utf8);
        let (code, text) = data_reply(&r);
        assert_eq!(code, 550, "{name}: {text}");
        assert!(text.starts_with(enhanced), "{name}: {text}");
    }
    // A properly signed message from the DKIM-only domain passes (the control for case 1).
    let good = w
        .dkimonly_keys
        .sign(&message("alice@dkimonly.test", "s", "original body"));
    assert_eq!(
        data_reply(&send(
            &w,
            "alice@dkimonly.test",
            &["bob@x.test"],
            &good,
            false
        ))
        .0,
        250
    );
    // Only that one was stored.
    assert_eq!(sync_json(&w.bob)["fetched"], 1);
    let metrics = w
        .world
        .block_on(async {
            reqwest::get(format!("{}/metrics", w.server.url))
                .await?
                .text()
                .await
        })
        .unwrap();
    assert!(
        metrics.contains("letterme_smtp_messages_total{result=\"rejected\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("letterme_smtp_messages_total{result=\"accepted\"} 1"),
        "{metrics}"
    );
}

#[test]
fn recipients_relay_and_published_quarantine() {
    let w = world("published");
    let raw = message("alice@quarantine.test", "junk?", "b");
    let r = send(
        &w,
        "alice@quarantine.test",
        &["nobody@x.test", "bob@elsewhere.test", "bob@x.test"],
        &raw,
        false,
    );
    assert_eq!((r[2].1, &r[2].2[..5]), (550, "5.1.1"), "{r:?}");
    assert_eq!(
        (r[3].1, &r[3].2[..5]),
        (550, "5.7.1"),
        "no open relay: {r:?}"
    );
    assert_eq!(r[4].1, 250);
    assert_eq!(
        data_reply(&r).0,
        250,
        "p=quarantine is delivered to Junk in published mode"
    );
    assert_eq!(sync_json(&w.bob)["fetched"], 1);
    let list: Value = serde_json::from_str(&ok(&cli(&w.bob, &["list", "--json"], None))).unwrap();
    assert_eq!(list[0]["folder"], "Junk");
}

#[test]
fn a_dns_timeout_is_a_tempfail_and_the_retry_succeeds() {
    let w = world("strict");
    let raw = w
        .sender_keys
        .sign(&message("alice@sender.test", "retry me", "b"));
    w.world.dns.set_blackhole(true);
    let (code, text) = data_reply(&send(&w, "alice@sender.test", &["bob@x.test"], &raw, false));
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.4.3"), "{text}");
    w.world.dns.set_blackhole(false);
    let (code, text) = data_reply(&send(&w, "alice@sender.test", &["bob@x.test"], &raw, false));
    assert_eq!(code, 250, "{text}");
    assert_eq!(sync_json(&w.bob)["fetched"], 1);
    drop(w);
}

#[test]
fn starttls_with_tls_1_2_or_better() {
    let w = world_with("strict", true, "");
    let raw = w
        .sender_keys
        .sign(&message("alice@sender.test", "over tls", "b"));
    let ca = w.server.data_dir.join("tls/cert.pem");
    let r = send_opts(
        &w,
        "alice@sender.test",
        &["bob@x.test"],
        &raw,
        false,
        Some(&ca),
    );
    assert!(r[0].2.contains("STARTTLS"), "offered: {r:?}");
    assert_eq!(r[1].1, 220, "{r:?}");
    assert!(matches!(r[2].2.as_str(), "TLSv1.3" | "TLSv1.2"), "{r:?}");
    assert!(!r[3].2.contains("STARTTLS"), "not offered twice: {r:?}");
    assert_eq!(data_reply(&r).0, 250, "{r:?}");
    assert_eq!(sync_json(&w.bob)["fetched"], 1);
    let list: Value = serde_json::from_str(&ok(&cli(&w.bob, &["list", "--json"], None))).unwrap();
    assert_eq!(list[0]["subject"], "over tls");
}

/// A raw SMTP connection for malformed input no real client would send.
struct Raw {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_mins(1))).unwrap();
        let mut raw = Self {
            r: std::io::BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert_eq!(raw.reply().0, 220);
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        self.w.write_all(bytes).unwrap();
    }

    /// One (possibly multi-line) reply; code 0 when the connection closed.
    fn reply(&mut self) -> (u16, String) {
        use std::io::BufRead as _;
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, text);
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }
}

#[test]
fn hostile_input_gets_the_right_reply_with_bounded_memory() {
    let w = world("off");
    let addr = w.server.smtp.unwrap();
    let before = w.server.peak_rss_kib();

    // A 64 MiB line without CRLF: one 500, and the server's memory does not follow it.
    let mut c = Raw::connect(addr);
    let chunk = vec![b'A'; 1 << 20];
    for _ in 0..64 {
        c.send(&chunk);
    }
    c.send(b"\r\nNOOP\r\n");
    assert_eq!(c.reply().0, 500);
    assert_eq!(c.reply().0, 250, "the session goes on after the long line");
    let after = w.server.peak_rss_kib();
    assert!(
        after - before < 32 * 1024,
        "peak memory grew {before} -> {after} KiB"
    );

    // One byte over smtp.max_message_size (200KB): 552 5.3.4.
    let mut c = Raw::connect(addr);
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    let body = "x".repeat(200_000 - 1);
    c.send(format!("{body}\r\n.\r\n").as_bytes());
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"));
    c.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    let header = "From: a@s.test\r\n\r\n";
    let body = "x".repeat(200_000 - 2 - header.len());
    c.send(format!("{header}{body}\r\n.\r\n").as_bytes());
    assert_eq!(c.reply().0, 250, "exactly at the limit is accepted");

    // 10,000 pipelined commands: answered until the junk limit, then 421 and close.
    let mut c = Raw::connect(addr);
    c.send(&b"NOOP\r\n".repeat(10_000));
    let mut codes = Vec::new();
    loop {
        let (code, _) = c.reply();
        if code == 0 {
            break;
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 250).count(), 100);
    assert_eq!(codes.last(), Some(&421));

    // A bare LF in DATA, with a smuggled second message behind "\n.\n": one refusal.
    let mut c = Raw::connect(addr);
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    c.send(b"Subject: one\r\n\r\nfirst\n.\nMAIL FROM:<evil@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 554, "{text}");
    assert_eq!(
        c.reply().0,
        221,
        "the smuggled commands were message content, not commands"
    );

    // Dot-stuffing: a line that starts with a dot arrives with one dot.
    let mut c = Raw::connect(addr);
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    c.send(b"From: a@s.test\r\nSubject: dots\r\n\r\n..leading dot\r\n.\r\n");
    assert_eq!(c.reply().0, 250);

    assert_eq!(
        sync_json(&w.bob)["fetched"],
        2,
        "the at-limit message and the dotted one"
    );
    let list: Value = serde_json::from_str(&ok(&cli(&w.bob, &["list", "--json"], None))).unwrap();
    let dots = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subject"] == "dots")
        .unwrap();
    let m: Value = serde_json::from_str(&ok(&cli(
        &w.bob,
        &["read", dots["id"].as_str().unwrap(), "--json"],
        None,
    )))
    .unwrap();
    assert!(
        m["body"].as_str().unwrap().starts_with(".leading dot"),
        "{}",
        m["body"]
    );
}

/// Issue 15.3: a session that says nothing after the greeting, one that trickles its
/// message slower than `smtp.min_data_rate`, and one that stays busy with NOOPs past
/// `smtp.session_timeout` are each closed with `421 4.4.2`; a client on another network
/// is served meanwhile.
#[test]
fn idle_trickling_and_endless_smtp_sessions_are_closed_while_another_network_is_served() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let w = world_with(
        "off",
        false,
        "smtp.command_timeout = \"2s\"\nsmtp.session_timeout = \"5s\"\nsmtp.min_data_rate = 1000\n",
    );
    let addr = w.server.smtp.unwrap();
    let within = Duration::from_secs(10);
    w.world.rt.block_on(async {
        let idle = connect_from("127.0.0.1", addr).await;
        let (mut slow_r, mut slow_w) = connect_from("127.0.0.1", addr).await.into_split();
        let (mut busy_r, mut busy_w) = connect_from("127.0.0.1", addr).await.into_split();
        slow_w
            .write_all(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n")
            .await
            .unwrap();
        // Ten bytes a second into DATA; a NOOP a second.
        let slow = tokio::spawn(async move {
            while slow_w.write_all(b"12345").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let busy = tokio::spawn(async move {
            while busy_w.write_all(b"NOOP\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        // Another network meanwhile.
        let mut other = connect_from("127.0.1.1", addr).await;
        other
            .write_all(b"EHLO other.test\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("220 ") && answer.contains("\r\n250") && answer.contains("\r\n221"),
            "{answer}"
        );
        let mut idle = idle;
        for (what, said) in [
            (
                "idle",
                closed_by_server(&mut idle, within, "an idle session").await,
            ),
            (
                "slow",
                closed_by_server(&mut slow_r, within, "a trickled DATA").await,
            ),
            (
                "busy",
                closed_by_server(&mut busy_r, within, "a session of NOOPs").await,
            ),
        ] {
            let said = String::from_utf8_lossy(&said);
            assert!(
                said.trim_end().ends_with("421 4.4.2 timeout; closing"),
                "{what}: {said}"
            );
            if what == "slow" {
                assert!(said.contains("\r\n354 "), "{said}");
            }
            if what == "busy" {
                assert!(said.matches("250 ").count() >= 3, "{said}");
            }
        }
        slow.abort();
        busy.abort();
    });
}

#[test]
fn sessions_per_ip_and_allow_listed_forwarders() {
    // Loopback is a named forwarder here: its unaligned mail is accepted by config, not code.
    let w = world_with(
        "strict",
        false,
        "smtp.max_sessions_per_ip = 2\npolicy.allow = [{ name = \"test forwarder\", networks = [\"127.0.0.0/8\"] }]",
    );
    let addr = w.server.smtp.unwrap();
    let first = Raw::connect(addr);
    let second = Raw::connect(addr);
    let mut third = std::net::TcpStream::connect(addr)
        .map(|s| Raw {
            r: std::io::BufReader::new(s.try_clone().unwrap()),
            w: s,
        })
        .unwrap();
    let (code, text) = third.reply();
    assert_eq!(code, 421, "{text}");
    // Counted per /24 (issue 15.3): another address of the same prefix is refused too,
    // one of another prefix is greeted.
    let from = |src: &str| {
        let s = w
            .world
            .rt
            .block_on(connect_from(src, addr))
            .into_std()
            .unwrap();
        s.set_nonblocking(false).unwrap();
        Raw {
            r: std::io::BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    };
    let (code, text) = from("127.0.0.2").reply();
    assert_eq!(code, 421, "same /24: {text}");
    let (code, text) = from("127.0.1.1").reply();
    assert_eq!(code, 220, "another /24: {text}");
    drop((first, second));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let raw = message("alice@nodmarc.test", "forwarded", "b");
    let (code, text) = data_reply(&send(
        &w,
        "alice@nodmarc.test",
        &["bob@x.test"],
        &raw,
        false,
    ));
    assert_eq!(code, 250, "{text}");
    let m: Value = serde_json::from_str(&ok(&cli(&w.bob, &["sync", "--json"], None))).unwrap();
    assert_eq!(m["fetched"], 1);
    let list: Value = serde_json::from_str(&ok(&cli(&w.bob, &["list", "--json"], None))).unwrap();
    let id = list[0]["id"].as_str().unwrap();
    let m: Value = serde_json::from_str(&ok(&cli(&w.bob, &["read", id, "--json"], None))).unwrap();
    assert!(
        m["legacy"]["note"]
            .as_str()
            .unwrap()
            .contains("test forwarder"),
        "{}",
        m["legacy"]
    );
}
