//! Whole MIME mail between letter.me users, through the local proxies: alice's mail client
//! (python's smtplib) submits a multipart message — text and HTML alternatives, an inline
//! image, a PDF, a file with a non-ASCII name, a forwarded message — and bob's (imaplib)
//! reads it. Every part arrives with the bytes it was sent with, in bob's INBOX and in
//! alice's Sent; IMAP describes it (BODYSTRUCTURE, partial FETCH); and the server, which
//! held it, never had a readable byte of it (DESIGN.md §5, §7.1).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use letterme_tests::cli;
use letterme_tests::world::{World, json};
use letterme_tests::{ProxyProc, ServerProc, contains, eventually, files_under, python, rows};
use serde_json::Value;

/// The mail clients: `send` builds and submits the message, `fetch` reads it back.
const MIME: &str = include_str!("../../fixtures/mime_roundtrip.py");

/// A mail client's `UID SEARCH BODY` for each word given.
const SEARCH: &str = include_str!("../../fixtures/imap_search.py");

/// The Subject the fixture writes.
const SUBJECT: &str = "Quartalsbericht für Q3 — Übersicht";

/// Strings the message carries (text, HTML, inside the PDF, in the attachment's file name,
/// the Subject's words): each must reach bob, and none may be readable where the server
/// keeps anything.
const CANARIES: [&str; 6] = [
    "CANARY-TEXT-7f3a",
    "CANARY-HTML-91bc",
    "CANARY-ATTACH-55d0",
    "CANARY-NAME-c0de",
    "Quartalsbericht",
    "Übersicht",
];

/// The size of each partial FETCH of the PDF.
const PARTIAL: u64 = 65536;

#[test]
fn a_multipart_message_with_html_inline_image_and_attachments_arrives_byte_identical() {
    let Scene {
        world: _world,
        server,
        alice,
        bob,
        alice_proxy,
        sent,
    } = alice_sends_bob_the_message();

    // The message is on the server now, sealed, and bob has not fetched it yet: the PDF
    // as one blob of its base64 body, beside an envelope that holds the rest.
    assert_no_plaintext_on_server(&server, "at rest");
    let held = server.stored_blobs();
    assert_eq!(held.blobs, 1);
    assert!(held.chunk_bytes > 2 * 1024 * 1024, "{held:?}");
    assert!(held.envelope_bytes < 512 * 1024, "{held:?}");

    // Bob's proxy downloads the PDF in the background (its default) once the message is
    // filed, and acknowledges it: the server deletes the blob before any client asked.
    let bob_proxy = ProxyProc::start(&bob);
    assert!(
        server.blobs_gone(),
        "the blob was neither downloaded in the background nor deleted"
    );
    let inbox = fetch(&bob_proxy, "bob@x.test", "INBOX");
    assert_arrived_intact("bob's INBOX", &inbox, &sent);
    let sent_copy = fetch(&alice_proxy, "alice@x.test", "Sent");
    assert_arrived_intact("alice's Sent", &sent_copy, &sent);

    assert_no_plaintext_on_server(&server, "after delivery");
    // Nor in either user's profile (the proxies' caches are sealed) or proxy log.
    for (dir, log) in [(&alice, &alice_proxy.log), (&bob, &bob_proxy.log)] {
        let mut files = files_under(dir);
        files.push((log.clone(), std::fs::read(log).unwrap()));
        assert_none_readable(&files, &dir.display().to_string());
    }
}

/// With `--attachments on-demand`, bob's mail client sees the message — its structure,
/// size, header and text — while the PDF is still only on the server; the proxy downloads
/// it when the client first reads into it, serves every part intact, and only then
/// acknowledges the message, so the server deletes the blob.
#[test]
fn a_large_attachment_is_downloaded_when_the_mail_client_reads_it() {
    let Scene {
        world,
        server,
        alice: _alice,
        bob,
        alice_proxy: _alice_proxy,
        sent,
    } = alice_sends_bob_the_message();
    let bob_proxy = ProxyProc::start_with(
        &bob,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--attachments", "on-demand"],
    );
    let port = bob_proxy.imap.port().to_string();
    let first = python(
        MIME,
        &[
            "first-look",
            "127.0.0.1",
            &port,
            "bob@x.test",
            &bob_proxy.password,
            "INBOX",
            SUBJECT,
        ],
    );
    assert_eq!(first["subject"], SUBJECT);
    assert!(
        first["text"].as_str().unwrap().contains("CANARY-TEXT-7f3a"),
        "{first}"
    );
    // Nothing of the PDF was downloaded for that: the server still holds it, bob's
    // store holds no chunk of it, and the message waits to be acknowledged.
    // A text search reads the text parts, never a PDF's bytes: answered at once.
    let found = python(
        SEARCH,
        &[
            "127.0.0.1",
            &port,
            "bob@x.test",
            &bob_proxy.password,
            "CANARY-TEXT-7f3a",
            "AAAAAAAA",
        ],
    );
    assert_eq!(found["CANARY-TEXT-7f3a"], serde_json::json!(["OK", "1"]));
    assert_eq!(found["AAAAAAAA"], serde_json::json!(["OK", ""]));
    assert_eq!(server.stored_blobs().blobs, 1);
    let count = |table: &str| rows(&bob, table);
    assert_eq!((count("blob_chunks"), count("awaiting")), (0, 1));
    // The CLI lists it meanwhile, and will not save an attachment it does not have.
    let listed = json(&cli(&bob, &["list", "--json"], None));
    let id = listed[0]["id"].as_str().unwrap();
    // With the PDF's size, which the message says, before a byte of it is here.
    let pdf = listed[0]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "report.pdf")
        .unwrap();
    assert_eq!(pdf["size"], part(&sent, "2")["size"], "{listed}");
    let out = world.path().join("early");
    let save = cli(
        &bob,
        &["read", id, "--save-attachments", out.to_str().unwrap()],
        None,
    );
    assert!(!save.status.success());
    let err = String::from_utf8_lossy(&save.stderr);
    assert!(err.contains("not downloaded yet"), "{err}");

    // Reading it downloads it; what was shown before is what is shown now.
    let inbox = fetch(&bob_proxy, "bob@x.test", "INBOX");
    assert_arrived_intact("bob's INBOX, on demand", &inbox, &sent);
    assert_eq!(inbox["bodystructure"], first["bodystructure"]);
    assert_eq!(inbox["rfc822_size"], first["rfc822_size"]);
    assert!(count("blob_chunks") > 0);
    assert_eq!(count("awaiting"), 0);
    assert!(
        server.blobs_gone(),
        "the blob outlived the message's acknowledgement"
    );
}

/// With `--attachments on-demand`, an attachment nobody opens is still downloaded once
/// its message has waited half the server's retention (30 days here), before the server
/// would delete it unacknowledged (DECISIONS D76).
#[test]
fn an_unopened_attachment_is_downloaded_before_the_server_would_drop_it() {
    let Scene {
        world: _world,
        server,
        alice: _alice,
        bob,
        alice_proxy: _alice_proxy,
        sent,
    } = alice_sends_bob_the_message();
    let on_demand = ["--attachments", "on-demand"];
    let bob_proxy = ProxyProc::start_with(&bob, "127.0.0.1:0", "127.0.0.1:0", &on_demand);
    assert!(
        eventually(|| rows(&bob, "awaiting") == 1),
        "the message was not filed"
    );
    // Only just received: it waits for a reader (the PDF, a few MB on loopback, would be
    // here well within this).
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!((rows(&bob, "awaiting"), rows(&bob, "blob_chunks")), (1, 0));
    assert_eq!(server.stored_blobs().blobs, 1);
    drop(bob_proxy);

    // Twenty days later, as bob's store counts them.
    rusqlite::Connection::open(bob.join("mail.db"))
        .unwrap()
        .execute("UPDATE messages SET received = received - 20 * 86400", [])
        .unwrap();
    let bob_proxy = ProxyProc::start_with(&bob, "127.0.0.1:0", "127.0.0.1:0", &on_demand);
    assert!(
        eventually(|| rows(&bob, "awaiting") == 0),
        "the attachment was not downloaded before the retention ran out"
    );
    assert!(
        server.blobs_gone(),
        "the downloaded message was not acknowledged"
    );
    assert!(rows(&bob, "blob_chunks") > 0);
    let inbox = fetch(&bob_proxy, "bob@x.test", "INBOX");
    assert_arrived_intact("bob's INBOX, downloaded before retention", &inbox, &sent);
}

/// A server with alice and bob, and the message alice's mail client submitted to bob
/// through her proxy.
struct Scene {
    world: World,
    server: ServerProc,
    alice: PathBuf,
    bob: PathBuf,
    alice_proxy: ProxyProc,
    sent: Value,
}

fn alice_sends_bob_the_message() -> Scene {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let alice_proxy = ProxyProc::start(&alice);
    let sent = submitted(&world, &alice_proxy);
    Scene {
        world,
        server,
        alice,
        bob,
        alice_proxy,
        sent,
    }
}

/// Alice's mail client submits the message through her proxy; what it sent, checked to
/// be the message the FETCH checks rely on.
fn submitted(world: &World, alice_proxy: &ProxyProc) -> Value {
    let sent = python(
        MIME,
        &[
            "send",
            "127.0.0.1",
            &alice_proxy.smtp.port().to_string(),
            "alice@x.test",
            &alice_proxy.password,
            "bob@x.test",
            world.path().to_str().unwrap(),
        ],
    );
    let replies = format!(
        "login {} / MAIL {} / RCPT {} / DATA {}",
        sent["login"], sent["mail"], sent["rcpt"], sent["data"]
    );
    assert_eq!(sent["login"][0], 235, "{replies}");
    assert_eq!(sent["mail"][0], 250, "{replies}");
    assert_eq!(sent["rcpt"][0], 250, "{replies}");
    assert_eq!(sent["data"][0], 250, "{replies}");
    assert_eq!(sent["subject"], SUBJECT);

    // What was sent, by IMAP section number; the FETCH checks below rely on it.
    assert_eq!(sent["type"], "multipart/mixed");
    let expect = [
        ("1", "multipart/alternative"),
        ("1.1", "text/plain"),
        ("1.2", "multipart/related"),
        ("1.2.1", "text/html"),
        ("1.2.2", "image/png"),
        ("2", "application/pdf"),
        ("3", "text/plain"),
        ("4", "message/rfc822"),
        ("4.1", "text/plain"),
    ];
    let layout: Vec<(&str, &str)> = sent["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["section"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    assert_eq!(layout, expect);
    assert_eq!(part(&sent, "1.2.2")["content_id"], "<logo@x.test>");
    assert_eq!(part(&sent, "1.2.2")["disposition"], "inline");
    assert_eq!(part(&sent, "2")["filename"], "report.pdf");
    // Over 1 MiB in base64: it travels as a blob (PROTOCOL.md §19a).
    assert!(part(&sent, "2")["size"].as_u64().unwrap() > 1024 * 1024);
    assert_eq!(
        part(&sent, "3")["filename"],
        "Grüße – Übersicht CANARY-NAME-c0de.txt"
    );
    assert_eq!(part(&sent, "4")["subject"], sent["forwarded_subject"]);
    // The text and HTML canaries are in the submitted bytes as they are, so a server that
    // kept the message as submitted would show them to the scans below.
    let submitted = std::fs::read(sent["eml"].as_str().unwrap()).unwrap();
    for canary in ["CANARY-TEXT-7f3a", "CANARY-HTML-91bc", "Quartalsbericht"] {
        assert!(contains(&submitted, canary.as_bytes()), "{canary} not sent");
    }
    sent
}

/// The message with [`SUBJECT`] in `user`'s `folder`, read through `proxy`'s IMAP and
/// described as `send` described what it submitted.
fn fetch(proxy: &ProxyProc, user: &str, folder: &str) -> Value {
    let port = proxy.imap.port().to_string();
    let mut args = vec![
        "fetch",
        "127.0.0.1",
        &port,
        user,
        &proxy.password,
        folder,
        SUBJECT,
    ];
    args.extend(CANARIES);
    python(MIME, &args)
}

/// The part at IMAP section `section` of a described message.
fn part<'a>(message: &'a Value, section: &str) -> &'a Value {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["section"] == section)
        .unwrap_or_else(|| panic!("no part {section}: {message}"))
}

/// `got`, a message read over IMAP, is the message `sent` part for part, and IMAP
/// describes and slices it correctly.
fn assert_arrived_intact(what: &str, got: &Value, sent: &Value) {
    assert_eq!(got["from"], "alice@x.test", "{what}");
    assert_eq!(got["subject"], SUBJECT, "{what}");
    assert_eq!(got["type"], "multipart/mixed", "{what}");
    assert_eq!(
        got["parts"], sent["parts"],
        "{what}: every part in order (type, decoded file name, Content-ID, disposition, \
         SHA-256 of the decoded bytes)"
    );
    // The payload carries the MIME entity as the client wrote it: the body after the
    // header is served unchanged, boundaries and transfer encodings included.
    assert_eq!(
        (&got["body_len"], &got["body_sha256"]),
        (&sent["body_len"], &sent["body_sha256"]),
        "{what}: the message body byte for byte"
    );
    assert_eq!(
        got["rfc822_size"], got["full_len"],
        "{what}: RFC822.SIZE is the length of BODY[]"
    );

    // Body types and subtypes are case-insensitive strings (RFC 3501 §7.4.2).
    let structure = got["bodystructure"].as_str().unwrap().to_ascii_uppercase();
    for want in [
        "\"MIXED\"",
        "\"ALTERNATIVE\"",
        "\"RELATED\"",
        "\"TEXT\" \"HTML\"",
        "\"IMAGE\" \"PNG\"",
        "\"<LOGO@X.TEST>\"",
        "\"APPLICATION\" \"PDF\"",
        "\"REPORT.PDF\"",
        "\"MESSAGE\" \"RFC822\"",
    ] {
        assert!(
            structure.contains(want),
            "{what}: BODYSTRUCTURE without {want}: {structure}"
        );
    }

    // BODY[2] is the PDF part's body as sent (base64), and partial FETCHes are its slices.
    let section = &got["section"];
    assert_eq!(section["number"], "2", "{what}");
    assert_eq!(
        section["decoded_sha256"],
        part(sent, "2")["sha256"],
        "{what}: BODY[2] is the PDF"
    );
    assert!(
        section["len"].as_u64().unwrap() > 2 * PARTIAL,
        "{what}: two full partials fit in BODY[2]: {section}"
    );
    let partials = got["partials"].as_array().unwrap();
    assert_eq!(partials.len(), 2, "{what}");
    for p in partials {
        assert_eq!(p["label"], true, "{what}: answered as BODY[2]<origin>: {p}");
        assert_eq!(p["len"], PARTIAL, "{what}: {p}");
        assert_eq!(p["equal"], true, "{what}: the slice of BODY[2]: {p}");
    }

    assert_eq!(
        got["canaries_seen"],
        serde_json::json!(CANARIES),
        "{what}: every canary reached the reader"
    );
}

/// No canary under the server's data directory: database, WAL, log, anything.
fn assert_no_plaintext_on_server(server: &ServerProc, when: &str) {
    let files = files_under(&server.data_dir);
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    for scanned in ["letterme.db-wal", "server.log"] {
        assert!(
            names.iter().any(|n| n == scanned),
            "{scanned} is scanned too: {names:?}"
        );
    }
    // Positive control: the scan sees what the server legitimately stores.
    assert!(files.iter().any(|(_, b)| contains(b, b"bob@x.test")));
    assert_none_readable(&files, &format!("the server's data directory {when}"));
}

fn assert_none_readable(files: &[(PathBuf, Vec<u8>)], place: &str) {
    for canary in CANARIES {
        for (path, bytes) in files {
            assert!(
                !contains(bytes, canary.as_bytes()),
                "{canary} readable in {} ({place})",
                path.display()
            );
        }
    }
}
