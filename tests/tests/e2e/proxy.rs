//! `letterme proxy` end to end: python's imaplib and smtplib against the local IMAP and
//! SMTP, a real server, a legacy message through the inbound SMTP adapter, restarts.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use letterme_tests::dns::txt;
use letterme_tests::world::World;
use letterme_tests::{
    PASSPHRASE, ProxyProc, ServerProc, cli, letterme_bin, ok, python, user_error,
};
use serde_json::Value;

const SESSION: &str = include_str!("../../fixtures/imap/proxy_session.py");
const SMTP_SEND: &str = include_str!("../../fixtures/smtp_send.py");

/// x.test resolving through the test DNS (sender.test: SPF for loopback, DMARC p=none),
/// with alice and bob.
struct Scene {
    world: World,
    server: ServerProc,
    alice: PathBuf,
    bob: PathBuf,
}

fn world() -> Scene {
    let world = World::new(vec![
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=none"),
    ]);
    let extra = format!(
        "{}dns.attempts = 0\npolicy.dmarc = \"published\"\n",
        world.dns_toml(400)
    );
    let server = ServerProc::start(world.path(), "x.test", &extra);
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    Scene {
        world,
        server,
        alice,
        bob,
    }
}

fn step(proxy: &ProxyProc, user: &str, name: &str, args: &[&str]) -> Value {
    let port = proxy.imap.port().to_string();
    let mut all = vec![name, "127.0.0.1", &port, user, &proxy.password];
    all.extend_from_slice(args);
    python(SESSION, &all)
}

/// A legacy message through the inbound SMTP adapter (SPF passes, DMARC p=none).
fn legacy_mail(w: &Scene, subject: &str, body: &str) -> Vec<u8> {
    let raw = format!(
        "From: Sam <sam@sender.test>\r\nTo: bob@x.test\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <legacy-1@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    let path = w.world.path().join("legacy.eml");
    std::fs::write(&path, &raw).unwrap();
    let smtp = w.server.smtp.unwrap();
    let replies = python(
        SMTP_SEND,
        &[
            "127.0.0.1",
            &smtp.port().to_string(),
            "mx.sender.test",
            "sam@sender.test",
            "bob@x.test",
            path.to_str().unwrap(),
        ],
    );
    assert!(replies.to_string().contains("250"), "{replies}");
    raw.into_bytes()
}

fn has(v: &Value, needle: &str) -> bool {
    v.to_string().contains(needle)
}

#[test]
fn thunderbird_style_clients_read_move_flag_and_send_through_the_proxy() {
    let w = world();
    ok(&cli(
        &w.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "Native hello",
            "--body",
            "Hi Bob,\nnative body line.\n",
        ],
        None,
    ));
    legacy_mail(&w, "Legacy hello", "legacy body text");
    let mut proxy = ProxyProc::start(&w.bob);
    let bob = "bob@x.test";

    // Sync is in the background: wait until both messages are there.
    let mut read = Value::Null;
    for _ in 0..100 {
        read = step(&proxy, bob, "read", &["Native hello"]);
        if read["exists"] == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(read["exists"], 2, "{read}");
    assert!(has(&read["wrong_login"], "AUTHENTICATIONFAILED"), "{read}");
    for cap in [
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "UNSELECT",
        "ID",
        "NAMESPACE",
        "SPECIAL-USE",
        "ENABLE",
        "LITERAL+",
    ] {
        assert!(
            read["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == cap),
            "{cap}: {read}"
        );
    }
    let list = read["list"].to_string();
    for (attr, name) in [
        ("\\\\Sent", "Sent"),
        ("\\\\Drafts", "Drafts"),
        ("\\\\Trash", "Trash"),
        ("\\\\Junk", "Junk"),
        ("\\\\Archive", "Archive"),
    ] {
        assert!(
            list.contains(attr) && list.contains(name),
            "{attr} {name}: {list}"
        );
    }
    // The native message: ENVELOPE, BODYSTRUCTURE and body.
    let native = &read["fetch"][0];
    let meta = native["meta"].as_str().unwrap();
    assert!(meta.contains("\"Native hello\""), "{meta}");
    assert!(
        meta.contains("((NIL NIL \"alice\" \"x.test\"))"),
        "ENVELOPE from: {meta}"
    );
    assert!(
        meta.contains("((NIL NIL \"bob\" \"x.test\"))"),
        "ENVELOPE to: {meta}"
    );
    assert!(
        meta.contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\")"),
        "{meta}"
    );
    let body = native["literal"].as_str().unwrap();
    assert!(body.contains("native body line."), "{body}");
    assert!(
        body.contains("Letterme-Signature: pass; signer=alice@x.test"),
        "{body}"
    );
    // The legacy message, byte for byte as sealed, with the gateway's verdict.
    let legacy = &read["fetch"][1];
    let meta = legacy["meta"].as_str().unwrap();
    assert!(
        meta.contains("\"Legacy hello\"")
            && meta.contains("((\"Sam\" NIL \"sam\" \"sender.test\"))"),
        "{meta}"
    );
    let body = legacy["literal"].as_str().unwrap();
    assert!(
        body.contains("Authentication-Results: ") && body.contains("spf=pass"),
        "{body}"
    );
    assert!(body.ends_with("Subject: Legacy hello\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <legacy-1@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nlegacy body text\r\n"), "{body}");
    assert!(
        has(&read["text"], "Hi Bo") && has(&read["text"], "Subject: Native hello"),
        "{read}"
    );
    assert_eq!(read["search_subject"], "1");
    assert_eq!(
        read["search_unseen"], "1 2",
        "BODY.PEEK must not set \\Seen"
    );

    // Flags survive a restart of the proxy (kill -9).
    let stored = step(&proxy, bob, "store", &[]);
    assert!(has(&stored, "\\\\Flagged"), "{stored}");
    proxy.kill9_and_restart();
    let flags = step(&proxy, bob, "flags", &[]);
    let first = flags["flags"][0]["meta"].as_str().unwrap();
    assert!(
        first.contains("\\Flagged") && first.contains("$Important"),
        "{flags}"
    );
    let uid = first
        .split("UID ")
        .nth(1)
        .unwrap()
        .split([' ', ')'])
        .next()
        .unwrap()
        .to_owned();

    // MOVE (RFC 6851) to Archive, then EXPUNGE there (RFC 3501).
    let moved = step(&proxy, bob, "move", &[&uid]);
    assert_eq!(moved["move"][0], "OK", "{moved}");
    assert_eq!(moved["expunged"], serde_json::json!(["1"]), "{moved}");
    assert!(
        moved["copyuid"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().ends_with(&format!(" {uid} 1"))),
        "{moved}"
    );
    assert_eq!(moved["inbox_after"], 1);
    assert_eq!(moved["archive"], 1);
    assert_eq!(
        moved["expunge"],
        serde_json::json!(["OK", ["1"]]),
        "{moved}"
    );
    assert_eq!(moved["archive_after"], 0);

    // IDLE reports a message delivered to the server while idling.
    let idle = step(
        &proxy,
        bob,
        "idle",
        &[
            letterme_bin().to_str().unwrap(),
            w.alice.to_str().unwrap(),
            PASSPHRASE,
            bob,
        ],
    );
    assert_eq!(idle["send_status"], 0, "{idle}");
    assert!(
        idle["continuation"].as_str().unwrap().starts_with('+'),
        "{idle}"
    );
    assert!(has(&idle["idle_lines"], "EXISTS"), "{idle}");
    assert!(idle["done"].as_str().unwrap().contains("OK"), "{idle}");

    // smtplib through the proxy: end-to-end encrypted to alice, readable by her CLI.
    let submitted = "From: bob@x.test\r\nTo: Alice <alice@x.test>\r\nSubject: Re: Native hello\r\n\
        Message-ID: <reply-42@client.local>\r\nIn-Reply-To: <thread-1@x.test>\r\nReferences: <thread-0@x.test> <thread-1@x.test>\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSMTP-CANARY reply body\r\n";
    let eml = w.world.path().join("reply.eml");
    std::fs::write(&eml, submitted).unwrap();
    let cert = w.bob.join("proxy-cert.pem");
    let smtp = step(
        &proxy,
        bob,
        "smtp",
        &[
            &proxy.smtp.port().to_string(),
            "alice@x.test",
            "carol@elsewhere.test,nobody@x.test",
            eml.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(
        smtp["tls"].as_str().unwrap().starts_with("TLSv1."),
        "{smtp}"
    );
    assert!(has(&smtp["ehlo"], "AUTH PLAIN LOGIN"), "{smtp}");
    assert_eq!(smtp["wrong_login"][0], 535, "{smtp}");
    assert_eq!(smtp["refused"], serde_json::json!({}), "{smtp}");
    for who in ["carol@elsewhere.test", "nobody@x.test"] {
        assert_eq!(smtp["foreign"][who][0], 550, "{smtp}");
        assert!(
            smtp["foreign"][who][1].as_str().unwrap().contains(who),
            "the 550 names {who}: {smtp}"
        );
    }
    ok(&cli(&w.alice, &["sync"], None));
    let list: Value = serde_json::from_str(&ok(&cli(&w.alice, &["list", "--json"], None))).unwrap();
    let reply = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subject"] == "Re: Native hello")
        .expect("alice got the reply");
    let id = reply["id"].as_str().unwrap();
    let read_reply: Value =
        serde_json::from_str(&ok(&cli(&w.alice, &["read", id, "--json"], None))).unwrap();
    assert_eq!(read_reply["from"], "bob@x.test");
    assert!(
        read_reply["body"]
            .as_str()
            .unwrap()
            .contains("SMTP-CANARY reply body")
    );
    assert_eq!(read_reply["message_id"], "<reply-42@client.local>");
    assert_eq!(read_reply["in_reply_to"], "<thread-1@x.test>");
    assert_eq!(
        read_reply["references"],
        serde_json::json!(["<thread-0@x.test>", "<thread-1@x.test>"])
    );

    // The copy is in Sent, and the client's own APPEND of it does not duplicate it.
    let sent = step(&proxy, bob, "sent", &[eml.to_str().unwrap()]);
    assert_eq!(sent["sent_before"], 1, "{sent}");
    assert!(
        has(&sent["sent_fetch"], "reply-42@client.local") && has(&sent["sent_fetch"], "\\\\Seen"),
        "{sent}"
    );
    assert!(has(&sent["append"], "APPENDUID"), "{sent}");
    assert_eq!(sent["sent_after"], 1, "{sent}");

    // STARTTLS with the proxy's own certificate.
    let tls = step(
        &proxy,
        bob,
        "starttls",
        &[w.bob.join("proxy-cert.pem").to_str().unwrap()],
    );
    assert!(tls["tls"].as_str().unwrap().starts_with("TLSv1."), "{tls}");
    assert_eq!(tls["exists"], 2, "{tls}");

    // Nothing decrypted reached bob's profile directory in the clear.
    for (path, bytes) in letterme_tests::files_under(&w.bob) {
        for canary in [
            &b"native body line"[..],
            b"legacy body text",
            b"SMTP-CANARY",
        ] {
            assert!(
                !letterme_tests::contains(&bytes, canary),
                "plaintext in {}",
                path.display()
            );
        }
    }
}

#[test]
fn the_proxy_listens_on_loopback_only_and_fails_clearly_when_it_cannot_unlock() {
    let w = world();
    let err = user_error(&cli(&w.bob, &["proxy", "--imap-listen", "0.0.0.0:0"], None));
    assert!(err.contains("not a loopback address"), "{err}");
    let err = user_error(&cli(
        &w.bob,
        &["proxy", "--smtp-listen", "192.0.2.1:25"],
        None,
    ));
    assert!(err.contains("not a loopback address"), "{err}");
    let err = user_error(&letterme_tests::cli_with(
        &w.bob,
        &[
            "proxy",
            "--imap-listen",
            "127.0.0.1:0",
            "--smtp-listen",
            "127.0.0.1:0",
        ],
        None,
        "wrong",
    ));
    assert!(err.contains("wrong passphrase"), "{err}");
    let creds: Value =
        serde_json::from_str(&ok(&cli(&w.bob, &["proxy", "credentials", "--json"], None))).unwrap();
    assert_eq!(creds["imap"], "127.0.0.1:1143");
    assert_eq!(creds["smtp"], "127.0.0.1:1025");
    assert_eq!(creds["username"], "bob@x.test");
    assert_eq!(creds["password"].as_str().unwrap().len(), 32);
    assert_eq!(
        creds["tls_fingerprint"]
            .as_str()
            .unwrap()
            .split(':')
            .count(),
        32
    );
    // The password is stable.
    let again: Value =
        serde_json::from_str(&ok(&cli(&w.bob, &["proxy", "credentials", "--json"], None))).unwrap();
    assert_eq!(again["password"], creds["password"]);
    let _: &Path = w.server.data_dir.as_path();
}

/// A raw IMAP connection: what a recorded client session needs, nothing more.
struct Raw {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> (Self, String) {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut raw = Self {
            r: std::io::BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = raw.line().unwrap();
        (raw, greeting)
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        self.w.write_all(bytes).unwrap();
    }

    /// One line; `None` at end of stream.
    fn line(&mut self) -> Option<String> {
        use std::io::BufRead as _;
        let mut buf = Vec::new();
        let n = self.r.read_until(b'\n', &mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf).into_owned())
    }

    /// One response, literals inlined.
    fn response(&mut self) -> Option<String> {
        use std::io::Read as _;
        let mut text = self.line()?;
        while let Some(n) = text
            .strip_suffix("}\r\n")
            .and_then(|t| t.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let mut lit = vec![0; n];
            self.r.read_exact(&mut lit).unwrap();
            text.push_str(&String::from_utf8_lossy(&lit));
            text.push_str(&self.line()?);
        }
        Some(text)
    }

    /// Untagged responses until the tagged one for `tag`.
    fn until_tagged(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        loop {
            let r = self
                .response()
                .unwrap_or_else(|| panic!("connection closed waiting for {tag}; got {untagged:?}"));
            if r.starts_with(&format!("{tag} ")) {
                return (untagged, r);
            }
            untagged.push(r);
        }
    }

    fn command(&mut self, line: &str) -> (Vec<String>, String) {
        self.send(format!("{line}\r\n").as_bytes());
        let tag = line.split(' ').next().unwrap().to_owned();
        self.until_tagged(&tag)
    }
}

fn login(proxy: &ProxyProc, user: &str) -> Raw {
    let (mut raw, greeting) = Raw::connect(proxy.imap);
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let (_, done) = raw.command(&format!("L1 LOGIN {user} {}", proxy.password));
    assert!(done.starts_with("L1 OK"), "{done}");
    raw
}

#[test]
fn a_recorded_thunderbird_first_sync_replays_with_the_expected_responses() {
    let w = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = letterme_protocol::Address::parse("bob@x.test").unwrap();
    for i in 1..=8 {
        ok(&cli(
            &w.alice,
            &[
                "send",
                "--to",
                "bob@x.test",
                "--subject",
                &format!("Thunderbird replay {i}"),
                "--body",
                &format!("replay body {i}"),
            ],
            None,
        ));
    }
    drop(rt);
    let _ = bob;
    let proxy = ProxyProc::start(&w.bob);
    wait_for(&proxy, "bob@x.test", 8);
    let script = include_str!("../../fixtures/imap/thunderbird-first-sync.replay");
    let mut conn: Option<Raw> = None;
    let mut pending: Option<(Vec<String>, String, String)> = None;
    let mut cursor = 0;
    for (n, line) in script.lines().enumerate() {
        let at = format!("replay line {}: {line}", n + 1);
        if line.starts_with("# connection") {
            conn = Some(login(&proxy, "bob@x.test"));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("C: ") {
            let c = conn.as_mut().expect("a connection");
            let (untagged, tagged) = c.command(cmd);
            pending = Some((untagged, tagged, cmd.to_owned()));
            cursor = 0;
        } else if let Some(want) = line.strip_prefix("S: ") {
            let (untagged, _, cmd) = pending.as_ref().unwrap();
            let found = untagged[cursor..].iter().position(|u| u.contains(want));
            assert!(
                found.is_some(),
                "{at}\nafter `{cmd}` got:\n{}",
                untagged.join("")
            );
            // Several S: lines may match within one response, in order.
            cursor += found.unwrap();
        } else if let Some(rest) = line.strip_prefix("COUNT ") {
            let (count, want) = rest.split_once(": ").unwrap();
            let (untagged, _, cmd) = pending.as_ref().unwrap();
            let got = untagged.iter().filter(|u| u.contains(want)).count();
            assert_eq!(
                got,
                count.parse::<usize>().unwrap(),
                "{at}\nafter `{cmd}` got:\n{}",
                untagged.join("")
            );
        } else if let Some(want) = line.strip_prefix("T: ") {
            let (_, tagged, cmd) = pending.as_ref().unwrap();
            assert!(
                tagged.starts_with(want),
                "{at}\nafter `{cmd}` the tagged reply was {tagged}"
            );
        } else {
            panic!("unknown replay line {at}");
        }
    }
}

/// Waits until the proxy's INBOX holds `n` messages (the background sync is done).
fn wait_for(proxy: &ProxyProc, user: &str, n: usize) {
    let mut raw = login(proxy, user);
    for _ in 0..300 {
        let (untagged, _) = raw.command("W1 STATUS INBOX (MESSAGES)");
        if untagged
            .iter()
            .any(|u| u.contains(&format!("(MESSAGES {n})")))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the proxy never showed {n} messages");
}

#[test]
fn hostile_imap_input_gets_bad_or_no_never_a_crash() {
    let w = world();
    let proxy = ProxyProc::start(&w.bob);
    let (mut raw, _) = Raw::connect(proxy.imap);
    // Commands before login.
    for cmd in [
        "a1 SELECT INBOX",
        "a2 FETCH 1:* (BODY[])",
        "a3 LIST \"\" *",
        "a4 APPEND INBOX {3+}\r\nabc",
    ] {
        let (_, done) = raw.command(cmd);
        let tag = cmd.split(' ').next().unwrap();
        assert!(
            done.starts_with(&format!("{tag} BAD")) || done.starts_with(&format!("{tag} NO")),
            "{cmd}: {done}"
        );
    }
    // Malformed commands.
    for cmd in [
        "b1 FETCH",
        "b2 LOGIN",
        "b3 UID FROB 1",
        "b4 SELECT \"unterminated",
    ] {
        let (_, done) = raw.command(cmd);
        assert!(
            done.starts_with(&format!("{} BAD", cmd.split(' ').next().unwrap())),
            "{cmd}: {done}"
        );
    }
    raw.send(b"\x00\x01\xff garbage\r\n");
    let r = raw.response().unwrap();
    assert!(r.starts_with("* BAD"), "{r}");
    // A huge literal is refused before a byte of it is sent.
    raw.send(b"c1 LOGIN {4294967295}\r\n");
    let r = raw.response().unwrap();
    assert!(r.starts_with("c1 BAD"), "{r}");
    // Before login a literal gets a few KiB at most, whatever it announced (issue 15.9).
    let (mut early, _) = Raw::connect(proxy.imap);
    early.send(b"z1 LOGIN {1000000}\r\n");
    let r = early.response().unwrap();
    assert!(r.starts_with('+'), "{r}");
    early.send(&[b'a'; 10_000]);
    let mut rest = String::new();
    while let Some(l) = early.line() {
        rest.push_str(&l);
    }
    assert!(rest.contains("* BYE too much input before login"), "{rest}");
    // Still serving.
    let (_, done) = raw.command("c2 NOOP");
    assert!(done.starts_with("c2 OK"), "{done}");
    let (_, done) = raw.command(&format!("c3 LOGIN bob@x.test {}", proxy.password));
    assert!(done.starts_with("c3 OK"), "{done}");
    // Nonsense after login.
    for (cmd, want) in [
        ("d0 STARTTLS", "d0 BAD"),
        ("d1 SELECT Nope", "d1 NO"),
        ("d2 FETCH 1 (FLAGS)", "d2 BAD"),
        ("d3 SELECT INBOX", "d3 OK"),
        ("d4 FETCH 99 (FLAGS)", "d4 BAD"),
        ("d5 UID FETCH 99:* (BODY[1.2.3.HEADER])", "d5 OK"),
        ("d6 APPEND Nope {3+}\r\nabc", "d6 NO [TRYCREATE]"),
        ("d7 CREATE \"a*b\"", "d7 NO"),
        ("d8 DELETE INBOX", "d8 NO"),
        ("d9 RENAME Sent Elsewhere", "d9 NO"),
        ("e1 SEARCH NOT NOT NOT ALL", "e1 OK"),
    ] {
        let (_, done) = raw.command(cmd);
        assert!(done.starts_with(want), "{cmd}: {done}");
    }
    // A command line longer than any limit: refused and closed, the proxy lives on.
    let mut big = b"f1 NOOP ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70 * 1024 * 1024));
    let _ = std::io::Write::write_all(&mut raw.w, &big);
    let mut fresh = login(&proxy, "bob@x.test");
    let (_, done) = fresh.command("g1 NOOP");
    assert!(done.starts_with("g1 OK"), "{done}");
    // Three wrong passwords end the connection.
    let (mut guess, _) = Raw::connect(proxy.imap);
    for i in 0..3 {
        let (_, done) = guess.command(&format!("h{i} LOGIN bob@x.test nope"));
        assert!(done.starts_with(&format!("h{i} NO")), "{done}");
    }
    let bye = guess.response().unwrap_or_default();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert!(guess.response().is_none(), "closed after 3 failures");
    // Connections are capped (issue 15.9): past the limit a new one gets BYE at once,
    // and once some close, the proxy serves again.
    drop((raw, fresh, guess));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..80 {
        let (conn, greeting) = Raw::connect(proxy.imap);
        if greeting.starts_with("* BYE") {
            refused = Some(greeting);
            break;
        }
        assert!(greeting.starts_with("* OK"), "{greeting}");
        held.push(conn);
    }
    assert!(refused.is_some(), "no cap after {} connections", held.len());
    assert!(
        (60..=64).contains(&held.len()),
        "{} served before the cap",
        held.len()
    );
    held.clear();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut again = login(&proxy, "bob@x.test");
    let (_, done) = again.command("i1 NOOP");
    assert!(done.starts_with("i1 OK"), "{done}");
}

#[test]
fn killing_the_proxy_during_a_sync_loses_nothing_and_duplicates_nothing() {
    let w = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bob = letterme_protocol::Address::parse("bob@x.test").unwrap();
    let total = 2500;
    rt.block_on(letterme_tests::flood(&w.alice, &bob, total, |i| {
        200 + i % 300
    }));
    let mut proxy = ProxyProc::start(&w.bob);
    // Kill it as soon as the first page is committed locally, mid-way through the sync.
    let db = w.bob.join("mail.db");
    for _ in 0..600 {
        let n = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM mail", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    proxy.kill9_and_restart();
    wait_for(&proxy, "bob@x.test", total);
    // Every message exactly once, by subject.
    let mut raw = login(&proxy, "bob@x.test");
    raw.command("k1 SELECT INBOX");
    let (untagged, done) = raw.command("k2 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(done.starts_with("k2 OK"), "{done}");
    let subjects: std::collections::BTreeSet<String> = untagged
        .iter()
        .filter_map(|u| u.split("Subject: ").nth(1))
        .map(|s| s.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(untagged.len(), total, "no duplicates");
    assert_eq!(subjects.len(), total, "every message once");
    // And the server holds nothing more for bob.
    let out = ok(&cli(&w.bob, &["sync", "--json"], None));
    assert!(out.contains("\"fetched\":0"), "{out}");
}
