//! `letterme proxy` end to end: python's imaplib and smtplib against the local IMAP and
//! SMTP, a real server, a legacy message through the inbound SMTP adapter, restarts.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use letterme_tests::dns::{TestDns, txt};
use letterme_tests::{PASSPHRASE, ProxyProc, ServerProc, cli, letterme_bin, ok, python, user_error};
use serde_json::Value;

const SESSION: &str = include_str!("../fixtures/imap/proxy_session.py");
const SMTP_SEND: &str = include_str!("../fixtures/smtp_send.py");

struct World {
    root: tempfile::TempDir,
    _dns: TestDns,
    _rt: tokio::runtime::Runtime,
    server: ServerProc,
    alice: PathBuf,
    bob: PathBuf,
}

fn world() -> World {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt
        .block_on(TestDns::start(vec![
            txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
            txt("_dmarc.sender.test", "v=DMARC1; p=none"),
        ]))
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let extra = format!(
        "dns.nameservers = [\"{}\"]\ndns.timeout_ms = 400\ndns.attempts = 0\npolicy.dmarc = \"published\"\n",
        dns.addr
    );
    let server = ServerProc::start(root.path(), "x.test", &extra);
    let alice = root.path().join("alice");
    let bob = root.path().join("bob");
    for (p, a) in [(&alice, "alice@x.test"), (&bob, "bob@x.test")] {
        ok(&cli(p, &["account", "create", a, "--server", &server.url], None));
    }
    World {
        root,
        _dns: dns,
        _rt: rt,
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
fn legacy_mail(w: &World, subject: &str, body: &str) -> Vec<u8> {
    let raw = format!(
        "From: Sam <sam@sender.test>\r\nTo: bob@x.test\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <legacy-1@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    let path = w.root.path().join("legacy.eml");
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
        &["send", "--to", "bob@x.test", "--subject", "Native hello", "--body", "Hi Bob,\nnative body line.\n"],
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
    for cap in ["IDLE", "UIDPLUS", "MOVE", "UNSELECT", "ID", "NAMESPACE", "SPECIAL-USE", "ENABLE", "LITERAL+"] {
        assert!(read["capabilities"].as_array().unwrap().iter().any(|c| c == cap), "{cap}: {read}");
    }
    let list = read["list"].to_string();
    for (attr, name) in [("\\\\Sent", "Sent"), ("\\\\Drafts", "Drafts"), ("\\\\Trash", "Trash"), ("\\\\Junk", "Junk"), ("\\\\Archive", "Archive")] {
        assert!(list.contains(attr) && list.contains(name), "{attr} {name}: {list}");
    }
    // The native message: ENVELOPE, BODYSTRUCTURE and body.
    let native = &read["fetch"][0];
    let meta = native["meta"].as_str().unwrap();
    assert!(meta.contains("\"Native hello\""), "{meta}");
    assert!(meta.contains("((NIL NIL \"alice\" \"x.test\"))"), "ENVELOPE from: {meta}");
    assert!(meta.contains("((NIL NIL \"bob\" \"x.test\"))"), "ENVELOPE to: {meta}");
    assert!(meta.contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\")"), "{meta}");
    let body = native["literal"].as_str().unwrap();
    assert!(body.contains("native body line."), "{body}");
    assert!(body.contains("Letterme-Signature: pass; signer=alice@x.test"), "{body}");
    // The legacy message, byte for byte as sealed, with the gateway's verdict.
    let legacy = &read["fetch"][1];
    let meta = legacy["meta"].as_str().unwrap();
    assert!(meta.contains("\"Legacy hello\"") && meta.contains("((\"Sam\" NIL \"sam\" \"sender.test\"))"), "{meta}");
    let body = legacy["literal"].as_str().unwrap();
    assert!(body.contains("Authentication-Results: ") && body.contains("spf=pass"), "{body}");
    assert!(body.ends_with("Subject: Legacy hello\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <legacy-1@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nlegacy body text\r\n"), "{body}");
    assert!(has(&read["text"], "Hi Bo") && has(&read["text"], "Subject: Native hello"), "{read}");
    assert_eq!(read["search_subject"], "1");
    assert_eq!(read["search_unseen"], "1 2", "BODY.PEEK must not set \\Seen");

    // Flags survive a restart of the proxy (kill -9).
    let stored = step(&proxy, bob, "store", &[]);
    assert!(has(&stored, "\\\\Flagged"), "{stored}");
    proxy.kill9_and_restart();
    let flags = step(&proxy, bob, "flags", &[]);
    let first = flags["flags"][0]["meta"].as_str().unwrap();
    assert!(first.contains("\\Flagged") && first.contains("$Important"), "{flags}");
    let uid = first.split("UID ").nth(1).unwrap().split([' ', ')']).next().unwrap().to_owned();

    // MOVE (RFC 6851) to Archive, then EXPUNGE there (RFC 3501).
    let moved = step(&proxy, bob, "move", &[&uid]);
    assert_eq!(moved["move"][0], "OK", "{moved}");
    assert_eq!(moved["expunged"], serde_json::json!(["1"]), "{moved}");
    assert!(moved["copyuid"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().ends_with(&format!(" {uid} 1"))), "{moved}");
    assert_eq!(moved["inbox_after"], 1);
    assert_eq!(moved["archive"], 1);
    assert_eq!(moved["expunge"], serde_json::json!(["OK", ["1"]]), "{moved}");
    assert_eq!(moved["archive_after"], 0);

    // IDLE reports a message delivered to the server while idling.
    let idle = step(&proxy, bob, "idle", &[letterme_bin().to_str().unwrap(), w.alice.to_str().unwrap(), PASSPHRASE, bob]);
    assert_eq!(idle["send_status"], 0, "{idle}");
    assert!(idle["continuation"].as_str().unwrap().starts_with('+'), "{idle}");
    assert!(has(&idle["idle_lines"], "EXISTS"), "{idle}");
    assert!(idle["done"].as_str().unwrap().contains("OK"), "{idle}");

    // smtplib through the proxy: end-to-end encrypted to alice, readable by her CLI.
    let submitted = "From: bob@x.test\r\nTo: Alice <alice@x.test>\r\nSubject: Re: Native hello\r\n\
        Message-ID: <reply-42@client.local>\r\nIn-Reply-To: <thread-1@x.test>\r\nReferences: <thread-0@x.test> <thread-1@x.test>\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSMTP-CANARY reply body\r\n";
    let eml = w.root.path().join("reply.eml");
    std::fs::write(&eml, submitted).unwrap();
    let smtp = step(&proxy, bob, "smtp", &[&proxy.smtp.port().to_string(), "alice@x.test", "carol@elsewhere.test", eml.to_str().unwrap()]);
    assert!(has(&smtp["ehlo"], "AUTH PLAIN LOGIN"), "{smtp}");
    assert_eq!(smtp["wrong_login"][0], 535, "{smtp}");
    assert_eq!(smtp["refused"], serde_json::json!({}), "{smtp}");
    assert_eq!(smtp["foreign"]["carol@elsewhere.test"][0], 550, "{smtp}");
    assert!(has(&smtp["foreign"], "carol@elsewhere.test"), "the 550 names the recipient: {smtp}");
    ok(&cli(&w.alice, &["sync"], None));
    let list: Value = serde_json::from_str(&ok(&cli(&w.alice, &["list", "--json"], None))).unwrap();
    let reply = list.as_array().unwrap().iter().find(|m| m["subject"] == "Re: Native hello").expect("alice got the reply");
    let id = reply["id"].as_str().unwrap();
    let read_reply: Value = serde_json::from_str(&ok(&cli(&w.alice, &["read", id, "--json"], None))).unwrap();
    assert_eq!(read_reply["from"], "bob@x.test");
    assert!(read_reply["body"].as_str().unwrap().contains("SMTP-CANARY reply body"));
    assert_eq!(read_reply["message_id"], "<reply-42@client.local>");
    assert_eq!(read_reply["in_reply_to"], "<thread-1@x.test>");
    assert_eq!(read_reply["references"], serde_json::json!(["<thread-0@x.test>", "<thread-1@x.test>"]));

    // The copy is in Sent, and the client's own APPEND of it does not duplicate it.
    let sent = step(&proxy, bob, "sent", &[eml.to_str().unwrap()]);
    assert_eq!(sent["sent_before"], 1, "{sent}");
    assert!(has(&sent["sent_fetch"], "reply-42@client.local") && has(&sent["sent_fetch"], "\\\\Seen"), "{sent}");
    assert!(has(&sent["append"], "APPENDUID"), "{sent}");
    assert_eq!(sent["sent_after"], 1, "{sent}");

    // STARTTLS with the proxy's own certificate.
    let tls = step(&proxy, bob, "starttls", &[w.bob.join("proxy-cert.pem").to_str().unwrap()]);
    assert!(tls["tls"].as_str().unwrap().starts_with("TLSv1."), "{tls}");
    assert_eq!(tls["exists"], 2, "{tls}");

    // Nothing decrypted reached bob's profile directory in the clear.
    for (path, bytes) in letterme_tests::files_under(&w.bob) {
        for canary in [&b"native body line"[..], b"legacy body text", b"SMTP-CANARY"] {
            assert!(!letterme_tests::contains(&bytes, canary), "plaintext in {}", path.display());
        }
    }
}

#[test]
fn the_proxy_listens_on_loopback_only_and_fails_clearly_when_it_cannot_unlock() {
    let w = world();
    let err = user_error(&cli(&w.bob, &["proxy", "--imap-listen", "0.0.0.0:0"], None));
    assert!(err.contains("not a loopback address"), "{err}");
    let err = user_error(&cli(&w.bob, &["proxy", "--smtp-listen", "192.0.2.1:25"], None));
    assert!(err.contains("not a loopback address"), "{err}");
    let err = user_error(&letterme_tests::cli_with(&w.bob, &["proxy", "--imap-listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0"], None, "wrong"));
    assert!(err.contains("wrong passphrase"), "{err}");
    let creds: Value = serde_json::from_str(&ok(&cli(&w.bob, &["proxy", "credentials", "--json"], None))).unwrap();
    assert_eq!(creds["imap"], "127.0.0.1:1143");
    assert_eq!(creds["smtp"], "127.0.0.1:1025");
    assert_eq!(creds["username"], "bob@x.test");
    assert_eq!(creds["password"].as_str().unwrap().len(), 32);
    assert_eq!(creds["tls_fingerprint"].as_str().unwrap().split(':').count(), 32);
    // The password is stable.
    let again: Value = serde_json::from_str(&ok(&cli(&w.bob, &["proxy", "credentials", "--json"], None))).unwrap();
    assert_eq!(again["password"], creds["password"]);
    let _: &Path = w.server.data_dir.as_path();
}
