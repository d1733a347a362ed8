//! Key transparency on the server (issue 7, first part): registrations are logged, every
//! lookup carries a label proof, an inclusion proof and a signed checkpoint that verify,
//! consistency proofs hold between checkpoints, and the log survives a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use letterme_client::profile::ProfileDir;
use letterme_client::{Online, Unlocked};
use letterme_protocol::kt::{
    Checkpoint, KeyOp, LogEntry, verify_consistency, verify_inclusion, verify_label,
};
use letterme_protocol::{Address, b64};
use letterme_tests::world::{InProcess, online_user};
use letterme_tests::{FakeClock, PASSPHRASE, test_config};
use serde_json::Value;

fn checkpoint(v: &Value) -> Checkpoint {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_grow_the_log_and_every_lookup_proves_its_key() {
    let InProcess {
        root,
        config,
        server,
        url,
        clock,
    } = InProcess::start(|_| {}).await;
    let domain_key = server.domain_key;

    let alice = online_user(root.path(), &url, "alice").await;
    let first = alice.api.get_json("/v1/kt/checkpoint").await.unwrap();
    let first_cp = checkpoint(&first["checkpoint"]);
    assert_eq!(first_cp.size, 1);
    first_cp.verify(&domain_key).unwrap();
    let vrf_key: [u8; 32] = b64::decode_array(first["vrf_key"].as_str().unwrap()).unwrap();

    let mut names = vec!["alice".to_owned()];
    let mut seen = vec![first_cp.clone()];
    for i in 0..6 {
        let n = format!("user{i}");
        online_user(root.path(), &url, &n).await;
        names.push(n);
        seen.push(checkpoint(
            &alice.api.get_json("/v1/kt/checkpoint").await.unwrap()["checkpoint"],
        ));
    }
    let head = checkpoint(&alice.api.get_json("/v1/kt/checkpoint").await.unwrap()["checkpoint"]);
    assert_eq!(head.size, 7, "one entry per registration");

    for n in &names {
        let address = Address::parse(&format!("{n}@x.test")).unwrap();
        let found = alice
            .api
            .get_json(&format!("/v1/keys/{address}"))
            .await
            .unwrap();
        let kt = &found["kt"];
        let cp = checkpoint(&kt["checkpoint"]);
        cp.verify(&domain_key).unwrap();
        let entry_bytes = b64::decode(kt["entry"].as_str().unwrap()).unwrap();
        let entry = LogEntry::decode(&entry_bytes).unwrap();
        let label = verify_label(
            &vrf_key,
            &address,
            &b64::decode(kt["label_proof"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(entry.label, label, "the entry is under {address}'s label");
        assert_eq!(entry.op, KeyOp::Register);
        let att = &found["attestation"];
        assert_eq!(
            b64::encode(&entry.identity_key),
            att["identity_key"].as_str().unwrap(),
            "the logged key is the attested key"
        );
        verify_inclusion(
            &entry,
            kt["index"].as_u64().unwrap(),
            &cp,
            &b64::decode(kt["inclusion"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        // The label hides the address: it is not in the entry.
        assert!(!letterme_tests::contains(
            &entry_bytes,
            address.as_str().as_bytes()
        ));
    }
    // No address is derivable from the log, and an unknown one has no proof.
    let nobody = alice.api.get_json("/v1/keys/nobody@x.test").await.unwrap();
    assert!(nobody.get("kt").is_none_or(Value::is_null), "{nobody}");

    // Consistency from every checkpoint seen on the way to the head.
    for old in &seen {
        let c = alice
            .api
            .get_json(&format!("/v1/kt/consistency?from={}", old.size))
            .await
            .unwrap();
        let now = checkpoint(&c["checkpoint"]);
        assert_eq!(now.root, head.root);
        let proof = b64::decode(c["proof"].as_str().unwrap()).unwrap();
        verify_consistency(old, &now, &proof).unwrap();
        // The same proof does not make an older root into a different one.
        let mut forged = old.clone();
        forged.root[0] ^= 1;
        if old.size < now.size {
            assert!(verify_consistency(&forged, &now, &proof).is_err());
        }
    }
    let beyond = alice.api.get_json("/v1/kt/consistency?from=8").await;
    assert!(beyond.is_err());

    // After a restart the log is the same tree.
    server.shutdown().await.unwrap();
    let again = letterme_server::start(
        config,
        Arc::clone(&clock) as Arc<dyn letterme_server::Clock>,
    )
    .await
    .unwrap();
    let url = format!("http://{}", again.local_addr);
    let resp: Value = reqwest::get(format!("{url}/v1/kt/checkpoint"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after = checkpoint(&resp["checkpoint"]);
    assert_eq!((after.size, after.root), (head.size, head.root));
    again.shutdown().await.unwrap();
}

/// Waits (a little) for the last connections of a stopped in-process server to close, so
/// its files can be replaced: SQLite removes the WAL file when the last one closes.
async fn wait_closed(db: &std::path::Path) {
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    for _ in 0..50 {
        if !wal.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An in-process server for x.test on a fixed port, so it can come back on the same URL.
async fn serve_on(config: &letterme_server::Config) -> letterme_server::Running {
    letterme_server::start(config.clone(), FakeClock::at_now())
        .await
        .unwrap()
}

fn fixed_config(root: &std::path::Path) -> letterme_server::Config {
    let mut config = test_config(root, "x.test");
    config.http.listen = ([127, 0, 0, 1], letterme_tests::free_port()).into();
    config
}

fn draft_to(to: &str) -> letterme_client::Draft {
    letterme_client::Draft {
        to: vec![Address::parse(to).unwrap()],
        subject: "hello".into(),
        body: "body".into(),
        ..letterme_client::Draft::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_swapped_in_the_database_without_a_log_entry_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let config = fixed_config(root.path());
    let server = serve_on(&config).await;
    let url = format!("http://{}", server.local_addr);
    let alice = online_user(root.path(), &url, "alice").await;
    let _bob = online_user(root.path(), &url, "bob").await;
    alice.send(&draft_to("bob@x.test")).await.unwrap();

    // The server (or whoever has its database and domain key) gives bob a key of its own:
    // a valid attestation, but no log entry.
    let bob = Address::parse("bob@x.test").unwrap();
    let mallory = letterme_protocol::SigningKeypair::generate();
    let enc = letterme_protocol::EncryptionKeypair::generate();
    let binding = letterme_protocol::KeyBinding::create(
        &bob,
        &mallory,
        &enc.public(),
        letterme_client::now(),
    );
    let att = letterme_protocol::Attestation::issue(&binding, 1, server.domain_signing_key());
    let db = rusqlite::Connection::open(config.database_path()).unwrap();
    db.execute(
        "UPDATE accounts SET identity_key = ?1, encryption_key = ?2, key_created = ?3, \
         binding_signature = ?4, attestation_sig = ?5 WHERE address = 'bob@x.test'",
        rusqlite::params![
            att.identity_key.0.as_slice(),
            att.encryption_key.0.as_slice(),
            att.created as i64,
            att.binding_signature.0.as_slice(),
            att.signature.0.as_slice()
        ],
    )
    .unwrap();
    let err = alice
        .send(&draft_to("bob@x.test"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to encrypt to bob@x.test"), "{err}");
    assert!(
        err.contains("not the one in its key-transparency log"),
        "{err}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restored_from_an_older_backup_is_caught() {
    let root = tempfile::tempdir().unwrap();
    let config = fixed_config(root.path());
    let server = serve_on(&config).await;
    let url = format!("http://{}", server.local_addr);
    let mut alice = online_user(root.path(), &url, "alice").await;
    let _bob = online_user(root.path(), &url, "bob").await;
    // The backup: a consistent copy of the database with two accounts, as SQLite makes it.
    let db = config.database_path();
    let backup = root.path().join("backup.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    let _carol = online_user(root.path(), &url, "carol").await;
    // alice sees the log at three entries.
    alice.send(&draft_to("carol@x.test")).await.unwrap();
    server.shutdown().await.unwrap();
    wait_closed(&db).await;

    // Rolled back: the backup replaces the database.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&backup, &db).unwrap();
    let server = serve_on(&config).await;
    alice.relogin().await.unwrap();
    let err = alice
        .send(&draft_to("bob@x.test"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to encrypt to bob@x.test"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    // Recovery, once the operator announces the restore (`letterme kt forget x.test`):
    // the remembered checkpoint goes, and the next check starts afresh.
    let profile = root.path().join("alice");
    let mut file = letterme_client::kt::KtFile::load(&profile).unwrap();
    assert_eq!(file.domains["x.test"].checkpoint.size, 3);
    file.domains.remove("x.test");
    file.replace_on_disk(&profile).unwrap();
    alice.send(&draft_to("bob@x.test")).await.unwrap();
    let file = letterme_client::kt::KtFile::load(&profile).unwrap();
    assert_eq!(file.domains["x.test"].checkpoint.size, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_from_before_the_log_are_logged_at_start() {
    let root = tempfile::tempdir().unwrap();
    let config = fixed_config(root.path());
    let server = serve_on(&config).await;
    let url = format!("http://{}", server.local_addr);
    let _alice = online_user(root.path(), &url, "alice").await;
    let _bob = online_user(root.path(), &url, "bob").await;
    server.shutdown().await.unwrap();
    // A database from before the log: accounts, no entries.
    rusqlite::Connection::open(config.database_path())
        .unwrap()
        .execute("DELETE FROM kt_log", [])
        .unwrap();
    let server = serve_on(&config).await;
    let carol = online_user(root.path(), &url, "carol").await;
    // carol's client demands proofs for alice's and bob's keys: they are in the log now.
    carol.send(&draft_to("alice@x.test")).await.unwrap();
    carol.send(&draft_to("bob@x.test")).await.unwrap();
    let cp = checkpoint(&carol.api.get_json("/v1/kt/checkpoint").await.unwrap()["checkpoint"]);
    assert_eq!(cp.size, 3);
    server.shutdown().await.unwrap();
}

fn reopen(root: &std::path::Path, local: &str) -> Unlocked {
    Unlocked::open(ProfileDir(root.join(local)), PASSPHRASE).unwrap()
}

async fn head(online: &Online) -> Checkpoint {
    checkpoint(&online.api.get_json("/v1/kt/checkpoint").await.unwrap()["checkpoint"])
}

/// Every checkpoint in `seen` is proven a prefix of the log's head.
async fn assert_consistent(online: &Online, seen: &[Checkpoint]) {
    for old in seen {
        let c = online
            .api
            .get_json(&format!("/v1/kt/consistency?from={}", old.size))
            .await
            .unwrap();
        let proof = b64::decode(c["proof"].as_str().unwrap()).unwrap();
        verify_consistency(old, &checkpoint(&c["checkpoint"]), &proof).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_and_revoking_grow_the_log_and_senders_use_only_the_current_key() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let bob_addr = Address::parse("bob@x.test").unwrap();
    let v1 = bob.me.keys.encryption.public();
    let mut seen = vec![head(&alice).await];
    assert_eq!(seen[0].size, 2);

    // Mail in flight: sealed to bob's first key, not yet fetched.
    let mut in_flight = draft_to("bob@x.test");
    in_flight.subject = "sent before the rotation".into();
    alice.send(&in_flight).await.unwrap();

    let change = bob
        .change_key(PASSPHRASE, false, 60)
        .await
        .expect("rotation");
    assert_eq!((change.version, change.log_index), (2, 2));
    assert!(!change.revoked);
    let v2 = change.encryption_key;
    assert_ne!(v1, v2);
    seen.push(head(&alice).await);
    assert_eq!(seen[1].size, 3, "the rotation is one more entry");
    assert_consistent(&alice, &seen).await;

    // alice now gets, verified against the log, only the new key.
    let att = alice.verified_keys(&bob_addr).await.unwrap().attestation;
    assert_eq!((att.encryption_key, att.version), (v2, 2));
    let found = alice.api.get_json("/v1/keys/bob@x.test").await.unwrap();
    let entry =
        LogEntry::decode(&b64::decode(found["kt"]["entry"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!((entry.op, entry.encryption_key), (KeyOp::Rotate, v2.0));
    let mut after = draft_to("bob@x.test");
    after.subject = "sent after the rotation".into();
    alice.send(&after).await.unwrap();

    // bob's client, from the profile on disk: both open, nothing alarming in the log.
    let bob = reopen(w.root.path(), "bob").connect().await.unwrap();
    assert_eq!(bob.me.keys.encryption.public(), v2);
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!((report.fetched, report.refused.len()), (2, 0), "{report:?}");
    assert!(report.kt_alerts.is_empty(), "{:?}", report.kt_alerts);
    let subjects: Vec<String> = bob
        .me
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert!(subjects.contains(&"sent before the rotation".to_owned()));
    assert!(subjects.contains(&"sent after the rotation".to_owned()));
    // The message sent after the rotation is sealed to the new key only.
    let old_key = &bob.me.keys.retired[0].key;
    let opens_with_old = |subject_needle: &str| {
        bob.me.mailbox().unwrap().all().unwrap().iter().any(|m| {
            let env = letterme_protocol::Envelope::decode(&m.envelope).unwrap();
            env.open(
                &bob_addr,
                &[old_key],
                &letterme_protocol::IdentityPublicKey(m.signer_key),
                &|_| false,
            )
            .is_ok_and(|p| p.subject == subject_needle)
        })
    };
    assert!(opens_with_old("sent before the rotation"));
    assert!(!opens_with_old("sent after the rotation"));

    // After the overlap, mail sealed to the old key (a sender with a stale key) is refused.
    w.clock.advance(std::time::Duration::from_mins(10));
    let stale = letterme_tests::sealed_text(&alice, &bob_addr, v1, "stale", "old key", "<s@x>");
    alice.api.send(stale.encode()).await.unwrap();
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].1.contains("retired (overlap ended)"),
        "{:?}",
        report.refused
    );

    // Revocation: a new key at once, and the revoked one opens nothing that arrives later.
    let revoked = bob.change_key(PASSPHRASE, true, 0).await.unwrap();
    assert_eq!((revoked.version, revoked.log_index), (3, 3));
    seen.push(head(&alice).await);
    assert_eq!(seen[2].size, 4);
    assert_consistent(&alice, &seen).await;
    let att = alice.verified_keys(&bob_addr).await.unwrap().attestation;
    assert_eq!(att.encryption_key, revoked.encryption_key);
    let found = alice.api.get_json("/v1/keys/bob@x.test").await.unwrap();
    let entry =
        LogEntry::decode(&b64::decode(found["kt"]["entry"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(entry.op, KeyOp::Revoke);
    let to_revoked =
        letterme_tests::sealed_text(&alice, &bob_addr, v2, "late", "revoked key", "<r@x>");
    alice.api.send(to_revoked.encode()).await.unwrap();
    let bob = reopen(w.root.path(), "bob").connect().await.unwrap();
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].1.contains("revoked"),
        "{:?}",
        report.refused
    );
    assert!(report.kt_alerts.is_empty(), "{:?}", report.kt_alerts);
    // Stored mail stays readable with the keys kept in the keystore.
    assert_eq!(bob.me.list().unwrap().len(), 2);
    w.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bob_notices_a_key_for_bob_that_bob_did_not_create() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert!(report.kt_alerts.is_empty(), "{:?}", report.kt_alerts);

    // Someone with a copy of bob's keystore (a stolen laptop backup) puts in a key of
    // their own. To the server and to alice it is a proper rotation: attested, logged.
    let thief_dir = w.root.path().join("thief");
    std::fs::create_dir_all(&thief_dir).unwrap();
    std::fs::copy(
        w.root.path().join("bob").join("profile.json"),
        thief_dir.join("profile.json"),
    )
    .unwrap();
    let thief = Unlocked::open(ProfileDir(thief_dir), PASSPHRASE)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let planted = thief.change_key(PASSPHRASE, false, 0).await.unwrap();
    let bob_addr = Address::parse("bob@x.test").unwrap();
    let att = alice.verified_keys(&bob_addr).await.unwrap().attestation;
    assert_eq!(
        att.encryption_key, planted.encryption_key,
        "the planted key passes every check alice can make"
    );

    // bob's own client, on its next sync, sees the entry it did not make.
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.kt_alerts.len(), 1, "{:?}", report.kt_alerts);
    let alert = &report.kt_alerts[0];
    assert!(alert.contains("did not create"), "{alert}");
    assert!(alert.contains("entry 2"), "{alert}");
    assert!(alert.contains("the key senders use for you now"), "{alert}");
    // It stays loud while the planted key is the one in use...
    let again = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(again.kt_alerts.len(), 1, "{:?}", again.kt_alerts);
    // ...and a mail client (the proxy serves this cache) finds it in the inbox, once.
    let cache = &bob.me.cache;
    let inbox = cache.folder("INBOX").unwrap().unwrap();
    let uids: Vec<u32> = cache
        .messages(inbox.id)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    let alerts: Vec<String> = cache
        .fetch(inbox.id, &uids, letterme_client::cache::Content::Whole)
        .unwrap()
        .into_iter()
        .map(|(_, raw, _)| String::from_utf8_lossy(&raw.unwrap()).into_owned())
        .filter(|raw| raw.contains("security alert"))
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].contains("did not create"), "{}", alerts[0]);
    // ...and once bob takes his address back with a new key of his own, it is history,
    // reported once already, and the log is quiet again.
    let bob = reopen(w.root.path(), "bob").connect().await.unwrap();
    bob.change_key(PASSPHRASE, true, 0).await.unwrap();
    let bob = reopen(w.root.path(), "bob").connect().await.unwrap();
    let after = bob.sync(&mut |_, _| {}).await.unwrap();
    assert!(after.kt_alerts.is_empty(), "{:?}", after.kt_alerts);
    assert_eq!(
        alice
            .verified_keys(&bob_addr)
            .await
            .unwrap()
            .attestation
            .encryption_key,
        bob.me.keys.encryption.public()
    );
    w.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn key_changes_are_limited_per_account_and_day() {
    let w = InProcess::start(|c| c.limits.key_changes_per_day = 2).await;
    let _alice = w.user("alice").await;
    for _ in 0..2 {
        reopen(w.root.path(), "alice")
            .connect()
            .await
            .unwrap()
            .change_key(PASSPHRASE, false, 0)
            .await
            .unwrap();
    }
    let alice = reopen(w.root.path(), "alice").connect().await.unwrap();
    let err = alice
        .change_key(PASSPHRASE, false, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at most 2 key and device changes in 24 hours"),
        "{err}"
    );
    // The log grew by the two changes only.
    assert_eq!(head(&alice).await.size, 3);
    w.server.shutdown().await.unwrap();
}
