//! Two users on one server, each a separate `letterme` process, over real HTTP on loopback.
#![allow(clippy::unwrap_used)]

use letterme_client::Unlocked;
use letterme_client::profile::ProfileDir;
use letterme_tests::world::{World, json};
use letterme_tests::{
    PASSPHRASE, ServerProc, cli, cli_with, contains, files_under, ok, user_error,
};

/// Alice and bob on one x.test server, each a profile of their own.
struct Setup {
    world: World,
    server: ServerProc,
    alice: std::path::PathBuf,
    bob: std::path::PathBuf,
}

fn setup(extra_toml: &str) -> Setup {
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", extra_toml);
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    Setup {
        world,
        server,
        alice,
        bob,
    }
}

#[test]
fn two_users_exchange_mail_and_the_server_never_stores_plaintext() {
    let s = setup("");
    let subject = "CANARY-SUBJECT-7f3a9c";
    let body = "CANARY-BODY-e41b77 the secret plan";
    ok(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            subject,
            "--body",
            body,
        ],
        None,
    ));
    let synced = json(&cli(&s.bob, &["sync", "--json"], None));
    assert_eq!(synced["fetched"], 1);
    let list = json(&cli(&s.bob, &["list", "--json"], None));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["subject"], subject);
    assert_eq!(list[0]["from"], "alice@x.test");
    let id = list[0]["id"].as_str().unwrap();
    let read = json(&cli(&s.bob, &["read", &id[..8], "--json"], None));
    assert_eq!(read["body"], body);
    assert_eq!(read["subject"], subject);

    // The reply, with the body from stdin.
    let reply_subject = "CANARY-SUBJECT-reply-55d0";
    let reply_body = "CANARY-BODY-reply-90ab\nsecond line\n";
    ok(&cli(
        &s.bob,
        &["send", "--to", "alice@x.test", "--subject", reply_subject],
        Some(reply_body),
    ));
    ok(&cli(&s.alice, &["sync"], None));
    let list = json(&cli(&s.alice, &["list", "--json"], None));
    assert_eq!(list[0]["subject"], reply_subject);
    assert_eq!(list[0]["from"], "bob@x.test");
    let text = ok(&cli(
        &s.alice,
        &["read", list[0]["id"].as_str().unwrap()],
        None,
    ));
    assert!(text.contains(reply_body.trim_end()), "{text}");
    assert!(text.contains("Subject: CANARY-SUBJECT-reply-55d0"));

    // Nothing readable under the server's data directory: database, WAL, journal, log.
    let files = files_under(&s.server.data_dir);
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert!(
        names.iter().any(|n| n == "letterme.db-wal"),
        "the WAL is scanned too: {names:?}"
    );
    assert!(names.iter().any(|n| n == "server.log"));
    // Positive control: the scan does see what the server legitimately stores.
    assert!(files.iter().any(|(_, b)| contains(b, b"bob@x.test")));
    for canary in [
        "CANARY-SUBJECT",
        "CANARY-BODY",
        "secret plan",
        "second line",
    ] {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, canary.as_bytes()),
                "{canary} found in {}",
                path.display()
            );
        }
    }
}

#[test]
fn an_acknowledged_message_survives_kill_9_and_is_deleted_only_after_the_ack() {
    let mut s = setup("");
    ok(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "durable",
            "--body",
            "b1",
        ],
        None,
    ));
    // The CLI exited 0, so the server answered 201: kill it at once, without a chance to flush.
    s.server.kill9();
    s.server.restart();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bob = Unlocked::open(ProfileDir(s.bob.clone()), PASSPHRASE)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let pending = bob.api.list(0).await.unwrap();
        assert_eq!(
            pending.len(),
            1,
            "the acknowledged message survived kill -9"
        );
        // Fetching does not delete.
        bob.api.fetch(&pending[0].id).await.unwrap();
        assert_eq!(bob.api.list(0).await.unwrap().len(), 1);
    });

    // A sync that cannot commit locally must not acknowledge: make the local store unopenable.
    let store = s.bob.join("mail.db");
    let aside = s.bob.join("mail.db.aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::create_dir_all(&store).unwrap();
    let err = user_error(&cli(&s.bob, &["sync"], None));
    assert!(err.contains("local store"), "{err}");
    std::fs::remove_dir(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    rt.block_on(async {
        let bob = Unlocked::open(ProfileDir(s.bob.clone()), PASSPHRASE)
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert_eq!(
            bob.api.list(0).await.unwrap().len(),
            1,
            "not acknowledged, so still on the server"
        );
    });

    ok(&cli(&s.bob, &["sync"], None));
    let list = json(&cli(&s.bob, &["list", "--json"], None));
    assert_eq!(list[0]["subject"], "durable");
    rt.block_on(async {
        let bob = Unlocked::open(ProfileDir(s.bob.clone()), PASSPHRASE)
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert!(
            bob.api.list(0).await.unwrap().is_empty(),
            "deleted after the ack"
        );
    });
}

#[test]
fn user_errors_are_one_clear_line() {
    let mut s = setup("limits.max_message_size = \"64KB\"");
    let e = user_error(&cli_with(&s.alice, &["list"], None, "not the passphrase"));
    assert!(e.contains("wrong passphrase"), "{e}");

    let e = user_error(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "nobody@x.test",
            "--subject",
            "s",
            "--body",
            "b",
        ],
        None,
    ));
    assert!(e.contains("no such user: nobody@x.test"), "{e}");

    let e = user_error(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "carol@other.test",
            "--subject",
            "s",
            "--body",
            "b",
        ],
        None,
    ));
    assert!(e.contains("carol@other.test is on another domain"), "{e}");

    let big = "x".repeat(100_000);
    let e = user_error(&cli(
        &s.alice,
        &["send", "--to", "bob@x.test", "--subject", "s"],
        Some(&big),
    ));
    assert!(e.contains("the server accepts at most 64000 bytes"), "{e}");

    let e = user_error(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "not an address",
            "--subject",
            "s",
            "--body",
            "b",
        ],
        None,
    ));
    assert!(e.contains("not an address"), "{e}");

    let e = user_error(&cli(&s.alice, &["read", "abcdef"], None));
    assert!(e.contains("no message with id abcdef"), "{e}");

    let e = user_error(&cli(&s.root_profile("nobody"), &["list"], None));
    assert!(e.contains("no letter.me profile"), "{e}");

    let e = user_error(&cli(
        &s.alice,
        &[
            "account",
            "create",
            "alice2@x.test",
            "--server",
            &s.server.url,
        ],
        None,
    ));
    assert!(e.contains("already exists"), "{e}");

    s.server.kill9();
    let e = user_error(&cli(&s.alice, &["sync"], None));
    assert!(e.contains("cannot reach the server"), "{e}");
}

#[test]
fn a_server_that_substitutes_a_key_is_refused() {
    let s = setup("");
    // The server's database is edited to hand out a key bob never bound.
    let db = rusqlite_free_edit(&s.server.data_dir.join("letterme.db"));
    let e = user_error(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "s",
            "--body",
            "b",
        ],
        None,
    ));
    assert!(e.contains("refusing to encrypt to bob@x.test"), "{e}");
    drop(db);
}

impl Setup {
    fn root_profile(&self, name: &str) -> std::path::PathBuf {
        self.world.path().join(name)
    }
}

/// Replaces bob's encryption key in the server's database, as a lying server would.
fn rusqlite_free_edit(db: &std::path::Path) -> std::process::Output {
    let script = format!(
        "import sqlite3; c = sqlite3.connect('{}'); \
         c.execute(\"UPDATE accounts SET encryption_key = randomblob(32) WHERE address = 'bob@x.test'\"); \
         c.commit(); print(c.total_changes)",
        db.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    out
}

#[test]
fn demo_runs_the_whole_story_and_cleans_up() {
    let out = std::process::Command::new(letterme_tests::letterme_bin())
        .arg("demo")
        .env_remove("LETTERME_LOG")
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(
        text.contains("bob@demo.test reads: from alice@demo.test — \"Hello Bob\""),
        "{text}"
    );
    assert!(
        text.contains("alice@demo.test reads: from bob@demo.test — \"Re: Hello Bob\""),
        "{text}"
    );
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("5. the server only ever stored ciphertext; removing "))
        .unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
}

#[test]
fn sync_watch_prints_new_mail_as_it_arrives() {
    use std::io::BufRead as _;
    let s = setup("");
    let mut watch = std::process::Command::new(letterme_tests::letterme_bin())
        .args(["sync", "--watch"])
        .env("LETTERME_PROFILE", &s.bob)
        .env("LETTERME_PASSPHRASE", letterme_tests::PASSPHRASE)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for subject in ["first while watching", "second while watching"] {
        ok(&cli(
            &s.alice,
            &[
                "send",
                "--to",
                "bob@x.test",
                "--subject",
                subject,
                "--body",
                "b",
            ],
            None,
        ));
        // A hang guard, not a latency measurement: the watcher's long poll is 50 s.
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the watcher printed the new mail");
        assert!(
            line.starts_with("new  ") && line.contains(subject),
            "{line}"
        );
    }
    let _ = watch.kill();
    let _ = watch.wait();
    // Stored locally, acknowledged on the server.
    let list = json(&cli(&s.bob, &["list", "--json"], None));
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn key_rotate_and_revoke_on_the_command_line() {
    let s = setup("");
    ok(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "before",
            "--body",
            "b",
        ],
        None,
    ));
    let rotated = json(&cli(&s.bob, &["key", "rotate", "--json"], None));
    assert_eq!(rotated["version"], 2, "{rotated}");
    assert_eq!(rotated["log_index"], 2, "{rotated}");
    assert_eq!(rotated["revoked"], false, "{rotated}");
    // Without a terminal, a revocation needs --yes, and says so.
    let err = user_error(&cli(&s.bob, &["key", "revoke"], None));
    assert!(err.contains("--yes"), "{err}");
    let revoked = json(&cli(&s.bob, &["key", "revoke", "--yes", "--json"], None));
    assert_eq!(revoked["version"], 3, "{revoked}");
    assert_eq!(revoked["revoked"], true, "{revoked}");
    // The message sealed to the first key (received before the change) still opens, mail
    // after the change goes to the newest key, and the log holds nothing bob did not make.
    ok(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "after",
            "--body",
            "b",
        ],
        None,
    ));
    let out = cli(&s.bob, &["sync"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let list = json(&cli(&s.bob, &["list", "--json"], None));
    let subjects: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["before", "after"]);
    // Auditing the domain's log: registrations and both changes.
    let audit = json(&cli(&s.bob, &["kt", "audit", "x.test", "--json"], None));
    assert_eq!(audit["size"], 4, "{audit}");
    assert_eq!(audit["operations"]["Register"], 2, "{audit}");
    assert_eq!(audit["operations"]["Rotate"], 1, "{audit}");
    assert_eq!(audit["operations"]["Revoke"], 1, "{audit}");
    // Forgetting the remembered checkpoint (after an announced restore) asks first.
    let err = user_error(&cli(&s.bob, &["kt", "forget", "x.test"], None));
    assert!(err.contains("--yes"), "{err}");
    let out = ok(&cli(&s.bob, &["kt", "forget", "x.test", "--yes"], None));
    assert!(out.contains("at size 4"), "{out}");
    let out = ok(&cli(&s.bob, &["kt", "forget", "x.test", "--yes"], None));
    assert!(out.contains("remembers no checkpoint"), "{out}");
    drop(s.server);
}

/// `send --html --attach` on one side, `list --json` and `read --save-attachments` on the
/// other: every file comes back with its name and its bytes, a second save never
/// overwrites the first, and the server keeps none of it readable.
#[test]
fn attachments_and_html_travel_end_to_end_through_the_cli() {
    let s = setup("");
    let files = s.world.path().join("out-box");
    std::fs::create_dir_all(&files).unwrap();
    let pdf: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .chain(b"CANARY-FILE-0b5e".iter().copied())
        .collect();
    let pdf_path = files.join("Quartalszahlen.pdf");
    std::fs::write(&pdf_path, &pdf).unwrap();
    let named = files.join("Grüße – Übersicht.txt");
    std::fs::write(&named, "CANARY-NAMED-2c71 zweite Datei\n").unwrap();
    let html = files.join("body.html");
    std::fs::write(&html, "<p>CANARY-HTML-8d04 <b>fett</b></p>").unwrap();
    ok(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "with files",
            "--body",
            "see the files",
            "--html",
            html.to_str().unwrap(),
            "--attach",
            pdf_path.to_str().unwrap(),
            "--attach",
            named.to_str().unwrap(),
        ],
        None,
    ));
    let stored = files_under(&s.server.data_dir);
    for canary in [
        "CANARY-FILE-0b5e",
        "CANARY-NAMED-2c71",
        "CANARY-HTML-8d04",
        "Quartalszahlen",
    ] {
        assert!(
            !stored.iter().any(|(_, b)| contains(b, canary.as_bytes())),
            "{canary} on the server's disk"
        );
    }
    assert_eq!(json(&cli(&s.bob, &["sync", "--json"], None))["fetched"], 1);
    let list = json(&cli(&s.bob, &["list", "--json"], None));
    let attachments = list[0]["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2, "{list}");
    assert_eq!(attachments[0]["name"], "Quartalszahlen.pdf");
    assert_eq!(attachments[0]["content_type"], "application/pdf");
    assert_eq!(attachments[0]["size"], pdf.len());
    assert_eq!(attachments[1]["name"], "Grüße – Übersicht.txt");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let read = json(&cli(&s.bob, &["read", &id, "--json"], None));
    assert_eq!(read["body"], "see the files");
    let text = ok(&cli(&s.bob, &["read", &id], None));
    assert!(
        text.contains("Attachments:") && text.contains("Quartalszahlen.pdf"),
        "{text}"
    );
    let saved = s.world.path().join("saved");
    for _ in 0..2 {
        ok(&cli(
            &s.bob,
            &["read", &id, "--save-attachments", saved.to_str().unwrap()],
            None,
        ));
    }
    assert_eq!(
        std::fs::read(saved.join("Quartalszahlen.pdf")).unwrap(),
        pdf
    );
    assert_eq!(
        std::fs::read(saved.join("Quartalszahlen (2).pdf")).unwrap(),
        pdf
    );
    assert_eq!(
        std::fs::read_to_string(saved.join("Grüße – Übersicht.txt")).unwrap(),
        "CANARY-NAMED-2c71 zweite Datei\n"
    );
    let missing = user_error(&cli(
        &s.alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "x",
            "--body",
            "y",
            "--attach",
            "/nonexistent/file.pdf",
        ],
        None,
    ));
    assert!(missing.contains("/nonexistent/file.pdf"), "{missing}");
}
