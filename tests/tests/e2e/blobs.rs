//! Large attachments as blobs through the CLI (PROTOCOL.md §19a): stored once for several
//! recipients, counted in each one's quota, never readable on the server, carried through
//! kill -9 of the server during the upload and of the recipient during the download, and
//! deleted once every recipient has acknowledged them.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use letterme_tests::world::{World, json};
use letterme_tests::{
    PASSPHRASE, ProxyProc, ServerProc, cli, contains, eventually, files_under, letterme_bin, ok,
    python, rows,
};

/// A file of `len` bytes that does not compress, with `canary` in its middle.
fn file(dir: &Path, name: &str, len: usize, canary: &str) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bytes[len / 2..len / 2 + canary.len()].copy_from_slice(canary.as_bytes());
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

/// The CLI's arguments for sending bob@x.test a message with the file at `path` attached.
fn send_to_bob<'a>(path: &'a Path, subject: &'a str, body: &'a str) -> [&'a str; 9] {
    let path = path.to_str().unwrap();
    [
        "send",
        "--to",
        "bob@x.test",
        "--subject",
        subject,
        "--body",
        body,
        "--attach",
        path,
    ]
}

fn synced(profile: &Path) -> serde_json::Value {
    json(&cli(profile, &["sync", "--json"], None))
}

/// The attachment `bob` saves from the only message in his mailbox.
fn saved(profile: &Path, dir: &Path) -> Vec<u8> {
    let list = json(&cli(profile, &["list", "--json"], None));
    let id = list[0]["id"].as_str().unwrap().to_owned();
    ok(&cli(
        profile,
        &["read", &id, "--save-attachments", dir.to_str().unwrap()],
        None,
    ));
    std::fs::read(dir.join("big.bin")).unwrap()
}

#[test]
fn one_blob_for_five_recipients_counted_for_each_and_gone_after_the_last_ack() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let names = ["b1", "b2", "b3", "b4", "b5"];
    let readers: Vec<_> = names
        .iter()
        .map(|n| world.account(&server, n, &format!("{n}@x.test")))
        .collect();
    let canary = "CANARY-BLOB-BYTES-2f9e";
    let bytes = file(world.path(), "big.bin", 3 << 20, canary);
    let mut args = vec!["send", "--subject", "five", "--body", "see attached"];
    let to: Vec<String> = names.iter().map(|n| format!("{n}@x.test")).collect();
    args.push("--to");
    args.extend(to.iter().map(String::as_str));
    let path = world.path().join("big.bin");
    args.extend(["--attach", path.to_str().unwrap()]);
    ok(&cli(&alice, &args, None));

    // One copy: the file's 3 MiB (not its base64, which the readers make again) and a
    // tag a chunk, sealed; not five.
    let held = server.stored_blobs();
    assert_eq!(held.blobs, 1);
    assert_eq!(
        held.chunk_bytes,
        letterme_protocol::blob::sealed_size(3 << 20),
        "{held:?} for one 3 MiB file to five recipients"
    );
    for (path, stored) in files_under(&server.data_dir) {
        assert!(
            !contains(&stored, canary.as_bytes()),
            "{canary} readable in {}",
            path.display()
        );
    }
    for (i, reader) in readers.iter().enumerate() {
        assert_eq!(synced(reader)["fetched"], 1);
        let out = world.path().join(format!("saved-{i}"));
        assert_eq!(
            saved(reader, &out),
            bytes,
            "{} saved another file",
            names[i]
        );
        if i + 1 < readers.len() {
            assert_eq!(
                server.stored_blobs().blobs,
                1,
                "deleted before the last recipient acknowledged"
            );
        }
    }
    assert!(server.blobs_gone(), "the blob outlived its last recipient");
}

#[test]
fn a_blob_survives_kill_9_of_the_server_during_upload_and_of_the_reader_during_download() {
    let world = World::new(vec![]);
    let mut server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    // 24 MiB: 24 chunks, enough to kill the server between two of them.
    let bytes = file(world.path(), "big.bin", 24 << 20, "CANARY-KILL-77aa");
    let path = world.path().join("big.bin");
    let mut send = Command::new(letterme_bin())
        .args(send_to_bob(&path, "kill", "x"))
        .env("LETTERME_PROFILE", &alice)
        .env("LETTERME_PASSPHRASE", PASSPHRASE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_mins(2);
    loop {
        assert!(Instant::now() < until, "the upload never began");
        assert!(
            send.try_wait().unwrap().is_none(),
            "the upload ended before the server could be killed"
        );
        if server.stored_blobs().chunk_bytes > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    server.kill9();
    let before = server.stored_blobs().chunk_bytes;
    server.restart();
    // The same `letterme send` resumes against the restarted server and completes.
    let out = send.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "send did not survive the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(before > 0);
    assert_eq!(server.stored_blobs().blobs, 1);

    // kill -9 of bob's sync at some point of its download: either it had committed (the
    // whole message is there) or nothing of the message is.
    let mut sync = Command::new(letterme_bin())
        .args(["sync"])
        .env("LETTERME_PROFILE", &bob)
        .env("LETTERME_PASSPHRASE", PASSPHRASE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = sync.kill();
    let _ = sync.wait();
    let listed = json(&cli(&bob, &["list", "--json"], None));
    let listed = listed.as_array().unwrap();
    assert!(listed.len() <= 1);
    if let Some(m) = listed.first() {
        assert_eq!(
            m["attachments"][0]["size"],
            bytes.len(),
            "a half message: {m}"
        );
    }
    synced(&bob);
    assert_eq!(saved(&bob, &world.path().join("saved")), bytes);
    assert!(server.blobs_gone(), "the blob outlived the acknowledgement");
}

/// kill -9 of bob's proxy while it downloads an attachment in the background: the message
/// it already showed stays, nothing is acknowledged before the blob is all here, and the
/// proxy started again finishes the download after the chunks it kept; then the server
/// deletes the blob, and the attachment bob saves is the one sent.
#[test]
fn a_proxy_killed_while_downloading_an_attachment_finishes_it_after_a_restart() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let bytes = file(world.path(), "big.bin", 24 << 20, "CANARY-PROXY-KILL-31d7");
    let path = world.path().join("big.bin");
    let args = send_to_bob(&path, "kill the proxy", "x");
    ok(&cli(&alice, &args, None));
    let chunks = |profile: &Path| -> i64 {
        rusqlite::Connection::open(profile.join("mail.db"))
            .and_then(|db| db.query_row("SELECT count(*) FROM blob_chunks", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let mut proxy = letterme_tests::ProxyProc::start(&bob);
    let until = Instant::now() + Duration::from_mins(2);
    while chunks(&bob) == 0 {
        assert!(Instant::now() < until, "the download never began");
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.kill9_and_restart();
    let kept = chunks(&bob);
    // 24 MiB is 24 chunks: it had begun and, unless it finished in the moment between,
    // not ended; either way the message was filed.
    assert!(kept > 0);
    let until = Instant::now() + Duration::from_mins(2);
    while !server.blobs_gone() {
        assert!(
            Instant::now() < until,
            "the restarted proxy did not finish the download ({kept} chunks kept before)"
        );
    }
    drop(proxy);
    assert_eq!(saved(&bob, &world.path().join("saved")), bytes);
}

/// A mail client's submission (python's smtplib, 24 MiB attached) to alice's proxy, which
/// uploads the attachment as a blob before it answers DATA.
const SUBMIT: &str = r#"
import smtplib, sys
from email.message import EmailMessage
host, port, user, password, to, path = sys.argv[1:7]
msg = EmailMessage()
msg["From"], msg["To"], msg["Subject"] = user, to, "through the proxy"
msg.set_content("see attached")
with open(path, "rb") as f:
    msg.add_attachment(f.read(), maintype="application", subtype="octet-stream", filename="big.bin")
s = smtplib.SMTP(host, int(port), timeout=300)
s.login(user, password)
s.send_message(msg)
s.quit()
print("sent")
"#;

/// kill -9 of alice's proxy while it uploads the attachment Thunderbird submitted: the
/// mail client never got its 250, so nothing reaches bob — no message, no half of one —
/// and sending again through the restarted proxy delivers it once, whole.
#[test]
fn a_proxy_killed_while_uploading_a_submission_delivers_nothing_until_sent_again() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let bytes = file(world.path(), "big.bin", 24 << 20, "CANARY-SUBMIT-KILL-9b2e");
    let path = world.path().join("big.bin");
    let mut proxy = letterme_tests::ProxyProc::start(&alice);
    let submit = |proxy: &letterme_tests::ProxyProc| {
        Command::new("python3")
            .args(["-c", SUBMIT, "127.0.0.1"])
            .arg(proxy.smtp.port().to_string())
            .args(["alice@x.test", &proxy.password, "bob@x.test"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let client = submit(&proxy);
    let until = Instant::now() + Duration::from_mins(2);
    while server.stored_blobs().chunk_bytes == 0 {
        assert!(Instant::now() < until, "the upload never began");
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.kill9_and_restart();
    let out = client.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the mail client was told the message was sent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(synced(&bob)["fetched"], 0, "a message reached bob");

    let again = submit(&proxy).wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "sending again failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(synced(&bob)["fetched"], 1);
    assert_eq!(saved(&bob, &world.path().join("saved")), bytes);
}

/// A send refused after its upload (the recipient's mailbox cannot take it) gives the
/// upload up: the server holds nothing of it and the sender's limit is free at once, not
/// a day later; nor does the sender keep its chunks.
#[test]
fn a_send_refused_after_its_upload_leaves_no_blob_behind() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "limits.quota = \"2MB\"\n");
    let alice = world.account(&server, "alice", "alice@x.test");
    world.account(&server, "bob", "bob@x.test");
    file(world.path(), "big.bin", 3 << 20, "CANARY-REFUSED-4c1a");
    let path = world.path().join("big.bin");
    let args = send_to_bob(&path, "too big for bob", "attached");
    let out = cli(&alice, &args, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("full"), "{err}");
    let held = server.stored_blobs();
    assert_eq!((held.blobs, held.chunk_bytes), (0, 0), "{held:?}");
    let kept: i64 = rusqlite::Connection::open(alice.join("mail.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM blob_chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 0);
}

/// A text search reads a text attachment: with `--attachments on-demand`, bob's proxy
/// downloads a large one that waits before it answers `SEARCH BODY`, and finds the words
/// in it (a PDF's bytes, which a text search never reads, need no download:
/// e2e/mime.rs).
#[test]
fn a_text_search_downloads_the_text_attachment_it_reads() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let needle = "NEEDLE-IN-THE-NOTES-4b1d";
    let mut notes = "a line of meeting notes, nothing to find here\n".repeat(40_000);
    notes.push_str(needle);
    notes.push('\n');
    let path = world.path().join("notes.txt");
    std::fs::write(&path, &notes).unwrap();
    ok(&cli(
        &alice,
        &send_to_bob(&path, "notes", "see attached"),
        None,
    ));
    assert_eq!(server.stored_blobs().blobs, 1, "the notes went as a blob");
    let bob_proxy = ProxyProc::start_with(
        &bob,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--attachments", "on-demand"],
    );
    assert!(
        eventually(|| rows(&bob, "awaiting") == 1),
        "the message was not filed"
    );
    assert_eq!(rows(&bob, "blob_chunks"), 0);
    let found = python(
        include_str!("../../fixtures/imap_search.py"),
        &[
            "127.0.0.1",
            &bob_proxy.imap.port().to_string(),
            "bob@x.test",
            &bob_proxy.password,
            needle,
            "see attached",
            "NOT-IN-ANY-MESSAGE-77",
        ],
    );
    assert_eq!(found[needle], serde_json::json!(["OK", "1"]), "{found}");
    assert_eq!(found["see attached"], serde_json::json!(["OK", "1"]));
    assert_eq!(
        found["NOT-IN-ANY-MESSAGE-77"],
        serde_json::json!(["OK", ""])
    );
    // Downloaded for the search, and so acknowledged.
    assert_eq!(rows(&bob, "awaiting"), 0);
    assert!(
        server.blobs_gone(),
        "the downloaded message was not acknowledged"
    );
}

/// Reads message 1 of INBOX as a mail client does: whole, its attachment's body (part 2),
/// a range of that body across a chunk of the blob, and RFC822.SIZE; compares them with
/// the file it was sent from, base64-encoded by python (76 characters a line, CRLF).
const FETCH_ATTACHMENT: &str = r#"
import base64, email, email.policy, imaplib, json, sys
host, port, user, password, path, start, length = sys.argv[1:8]
start, length = int(start), int(length)
with open(path, "rb") as f:
    sent = f.read()
expected = base64.encodebytes(sent).replace(b"\n", b"\r\n").rstrip(b"\r\n")
m = imaplib.IMAP4(host, int(port))
m.login(user, password)
m.select("INBOX", readonly=True)
def body(item):
    typ, data = m.fetch("1", "(" + item + ")")
    return data[0][1]
whole = body("BODY.PEEK[]")
part = body("BODY.PEEK[2]")
partial = body("BODY.PEEK[2]<%d.%d>" % (start, length))
typ, data = m.fetch("1", "(RFC822.SIZE)")
size = int(data[0].split(b"RFC822.SIZE ")[1].split(b")")[0])
msg = email.message_from_bytes(whole, policy=email.policy.default)
attached = [p.get_payload(decode=True) for p in msg.walk() if p.get_filename() == "big.bin"]
print(json.dumps({
    "attachment_is_the_file": attached == [sent],
    "part_is_the_files_base64": part == expected,
    "partial_is_its_range": partial == expected[start:start + length],
    "partial_len": len(partial),
    "size_is_the_messages": size == len(whole),
}))
"#;

/// A file the CLI sends goes as a blob of its bytes, not of their base64 (a third less to
/// seal, upload, store and download); the recipient's proxy serves the part as the text the
/// sender's encoding makes, whole, by range across the blob's chunks and with the size it
/// announced, and python's email package reads the file back from it.
#[test]
fn an_attachment_sent_as_its_bytes_is_served_as_its_base64() {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    // Not a multiple of a line's 57 bytes nor of a chunk.
    let len = (3 << 20) + 1001;
    file(world.path(), "big.bin", len, "CANARY-AS-BYTES-8e2c");
    let path = world.path().join("big.bin");
    ok(&cli(&alice, &send_to_bob(&path, "as bytes", "x"), None));
    assert_eq!(
        server.stored_blobs().chunk_bytes,
        letterme_protocol::blob::sealed_size(len as u64),
        "the blob holds the file's bytes"
    );
    let proxy = ProxyProc::start(&bob);
    assert!(server.blobs_gone(), "bob's proxy did not download it");
    // The first chunk's bytes end at 1 MiB of the file, 1,398,101 characters of its text.
    let (start, length) = ("1390000", "20000");
    let got = python(
        FETCH_ATTACHMENT,
        &[
            "127.0.0.1",
            &proxy.imap.port().to_string(),
            "bob@x.test",
            &proxy.password,
            path.to_str().unwrap(),
            start,
            length,
        ],
    );
    for check in [
        "attachment_is_the_file",
        "part_is_the_files_base64",
        "partial_is_its_range",
        "size_is_the_messages",
    ] {
        assert_eq!(got[check], serde_json::json!(true), "{check}: {got}");
    }
    assert_eq!(got["partial_len"], serde_json::json!(20000));
}
