//! Several devices per account (issue 18) through the API: a device added with a
//! certificate of the identity key gets every message sealed after it, each device
//! acknowledges for itself, the server keeps one envelope until the last did, and a
//! removed device stops receiving and cannot log in.
#![allow(clippy::unwrap_used)]

use letterme_client::http::Api;
use letterme_client::{ClientError, Draft, Online};
use letterme_protocol::api::ErrorCode;
use letterme_protocol::device::Device;
use letterme_protocol::envelope::{ENVELOPE_VERSION, ENVELOPE_VERSION_DEVICES, Envelope};
use letterme_protocol::{EncryptionKeypair, SigningKeypair};
use letterme_tests::world::InProcess;

/// A second device of a user: keys of its own, and a login with its device key.
struct SecondDevice {
    key: SigningKeypair,
    encryption: EncryptionKeypair,
    api: Api,
}

impl SecondDevice {
    fn new(url: &str) -> Self {
        Self {
            key: SigningKeypair::generate(),
            encryption: EncryptionKeypair::generate(),
            api: Api::new(url),
        }
    }

    /// The statement the identity key of `owner` makes for it.
    fn certified_by(&self, owner: &Online) -> Device {
        let me = &owner.me;
        Device::create(
            &me.profile.address,
            me.keys.identity.as_ref().unwrap(),
            &self.key,
            &self.encryption.public(),
            letterme_client::now(),
        )
    }

    async fn login(&mut self, owner: &Online) -> Result<(), ClientError> {
        let p = &owner.me.profile;
        self.api.login(&p.domain, &p.address, &self.key).await
    }
}

/// The first device of `owner` (its identity key) certifying itself.
fn first_device(owner: &Online) -> Device {
    let me = &owner.me;
    Device::create(
        &me.profile.address,
        me.keys.identity.as_ref().unwrap(),
        &me.keys.device,
        &me.keys.encryption.public(),
        letterme_client::now(),
    )
}

fn stored_messages(w: &InProcess) -> i64 {
    let db = rusqlite::Connection::open(w.config.data_dir.join("letterme.db")).unwrap();
    db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

fn message(to: &Online, subject: &str) -> Draft {
    Draft {
        to: vec![to.me.profile.address.clone()],
        subject: subject.into(),
        body: "b".into(),
        ..Draft::default()
    }
}

fn code_of(e: &ClientError) -> Option<&ErrorCode> {
    match e {
        ClientError::Api { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn both_devices_get_one_envelope_kept_until_both_acknowledged() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut laptop = SecondDevice::new(&w.url);
    let added = alice
        .api
        .add_devices(&[first_device(&alice), laptop.certified_by(&alice)])
        .await
        .unwrap();
    assert_eq!(added.devices.len(), 2);
    assert!(added.index.is_some());
    assert_eq!(added.devices.iter().filter(|d| d.this).count(), 1);

    bob.send(&message(&alice, "to both")).await.unwrap();
    // One envelope, with one key wrap per device of alice.
    laptop.login(&alice).await.unwrap();
    let listed = laptop.api.list(0).await.unwrap();
    assert_eq!(listed.len(), 1);
    let bytes = laptop.api.fetch(&listed[0].id).await.unwrap();
    assert_eq!(bytes[5], ENVELOPE_VERSION_DEVICES);
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.recipients[0].wraps.len(), 2);
    let payload = env
        .open(
            &alice.me.profile.address,
            &[&laptop.encryption],
            &bob.me.keys.device.public(),
            &|_| false,
        )
        .unwrap();
    assert_eq!(payload.subject, "to both");

    // The first device syncs and acknowledges: the envelope stays for the laptop.
    let report = alice.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.new_ids.len(), 1, "{report:?}");
    assert_eq!(alice.me.list().unwrap()[0].subject, "to both");
    assert_eq!(stored_messages(&w), 1);
    assert_eq!(laptop.api.list(0).await.unwrap().len(), 1);
    laptop.api.ack_many(&[listed[0].id.clone()]).await.unwrap();
    assert_eq!(stored_messages(&w), 0, "gone once both acknowledged");
}

#[tokio::test]
async fn a_removed_device_stops_receiving_and_cannot_log_in() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut laptop = SecondDevice::new(&w.url);
    let statement = laptop.certified_by(&alice);
    alice
        .api
        .add_devices(&[first_device(&alice), statement.clone()])
        .await
        .unwrap();
    laptop.login(&alice).await.unwrap();
    bob.send(&message(&alice, "before")).await.unwrap();
    assert_eq!(laptop.api.list(0).await.unwrap().len(), 1);

    let after = alice.api.remove_device(&statement.id()).await.unwrap();
    assert_eq!(after.devices.len(), 1);
    // Its session ended, it cannot log in again, and what waited for it is gone.
    let e = laptop.api.list(0).await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 401, .. }), "{e}");
    let e = laptop.login(&alice).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::DeviceRemoved), "{e}");

    // Mail sent afterwards is sealed to the remaining device only.
    bob.send(&message(&alice, "after")).await.unwrap();
    let report = alice.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.new_ids.len(), 2, "{report:?}");
    let raw = alice.me.mailbox().unwrap().all().unwrap();
    let versions: Vec<u8> = raw.iter().map(|m| m.envelope[5]).collect();
    assert_eq!(versions, vec![ENVELOPE_VERSION_DEVICES, ENVELOPE_VERSION]);
    assert_eq!(stored_messages(&w), 0);

    // The server does not take the removed key back.
    let e = alice.api.add_devices(&[statement]).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::DeviceKnown), "{e}");
    // The last device stays.
    let first = first_device(&alice).id();
    let e = alice.api.remove_device(&first).await.unwrap_err();
    assert_eq!(code_of(&e), Some(&ErrorCode::BadDevice), "{e}");
}

#[tokio::test]
async fn only_devices_the_identity_key_certified_are_added() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let laptop = SecondDevice::new(&w.url);
    let refused = |r: Result<_, ClientError>| match r {
        Err(e) => code_of(&e) == Some(&ErrorCode::BadDevice),
        Ok(_) => false,
    };
    // Certified by another account's identity key.
    assert!(refused(
        alice
            .api
            .add_devices(&[first_device(&alice), laptop.certified_by(&mallory)])
            .await
    ));
    // The first device not certified along with the first addition.
    assert!(refused(
        alice.api.add_devices(&[laptop.certified_by(&alice)]).await
    ));
    // A statement altered after signing.
    let mut forged = laptop.certified_by(&alice);
    forged.binding.encryption_key = EncryptionKeypair::generate().public();
    assert!(refused(
        alice.api.add_devices(&[first_device(&alice), forged]).await
    ));
    // Nothing changed: lookups still list no devices, and mail is sealed as before.
    let devices = alice.api.devices().await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert!(devices[0].statement.is_none());
    let found = mallory
        .verified_keys(&alice.me.profile.address)
        .await
        .unwrap();
    assert!(found.devices.is_empty());
}

/// `letterme device link --json` for `profile`, running: its first line is the code.
pub(crate) struct Linking {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Linking {
    pub(crate) fn start(profile: &std::path::Path) -> (Self, serde_json::Value) {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(letterme_tests::letterme_bin())
            .args(["device", "link", "--json"])
            .env("LETTERME_PROFILE", profile)
            .env("LETTERME_PASSPHRASE", letterme_tests::PASSPHRASE)
            .env_remove("LETTERME_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let shown = serde_json::from_str(&first).unwrap();
        (Self { child, lines }, shown)
    }

    /// Its last line, once it ended, and whether it succeeded; its errors otherwise.
    pub(crate) fn finish(mut self) -> (bool, String) {
        use std::io::Read as _;
        let rest: Vec<String> = self.lines.by_ref().map(Result::unwrap).collect();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), format!("{}{err}", rest.join("\n")))
    }
}

fn join(
    profile: &std::path::Path,
    code: &str,
    server: &letterme_tests::ServerProc,
) -> std::process::Output {
    join_as(profile, "alice@x.test", code, server)
}

/// `letterme account join ADDRESS --code CODE --server URL --json` for `profile`.
pub(crate) fn join_as(
    profile: &std::path::Path,
    address: &str,
    code: &str,
    server: &letterme_tests::ServerProc,
) -> std::process::Output {
    letterme_tests::cli(
        profile,
        &[
            "account",
            "join",
            address,
            "--code",
            code,
            "--server",
            &server.url,
            "--json",
        ],
        None,
    )
}

/// A second machine joins with the code the first shows: both get mail sent afterwards,
/// each lists the devices, and removing the laptop ends its access. A wrong code and a
/// used code change nothing.
#[test]
fn a_machine_joins_with_a_code_and_both_receive() {
    use letterme_tests::world::{World, json};
    use letterme_tests::{ServerProc, cli, ok, user_error};
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let laptop = world.path().join("laptop");

    // A wrong code: both sides say so, and nothing is made.
    let (linking, shown) = Linking::start(&alice);
    let code = shown["code"].as_str().unwrap().to_owned();
    let wrong = format!("{}-AAAA-AAAA", &code[..6]);
    let e = user_error(&join(&laptop, &wrong, &server));
    assert!(e.contains("code is wrong"), "{e}");
    let (linked, said) = linking.finish();
    assert!(!linked && said.contains("another code"), "{said}");
    assert!(!laptop.join("profile.json").exists());
    let devices = json(&cli(&alice, &["device", "list", "--json"], None));
    assert_eq!(devices.as_array().unwrap().len(), 1);

    // The right code, once.
    let (linking, shown) = Linking::start(&alice);
    let code = shown["code"].as_str().unwrap().to_owned();
    assert!(shown["join"].as_str().unwrap().contains(&code));
    let joined = json(&join(&laptop, &code, &server));
    let (linked, said) = linking.finish();
    assert!(linked, "{said}");
    let id = joined["device"].as_str().unwrap().to_owned();
    assert!(said.contains(&id), "{said}");
    let again = world.path().join("again");
    let e = user_error(&join(&again, &code, &server));
    assert!(
        e.contains("used already") || e.contains("wrong or expired"),
        "{e}"
    );

    // Both machines get bob's message, and each opens it.
    ok(&cli(
        &bob,
        &[
            "send",
            "--to",
            "alice@x.test",
            "--subject",
            "hello both",
            "--body",
            "b",
        ],
        None,
    ));
    for profile in [&alice, &laptop] {
        let synced = json(&cli(profile, &["sync", "--json"], None));
        assert_eq!(synced["fetched"], 1, "{synced}");
        let list = json(&cli(profile, &["list", "--json"], None));
        assert_eq!(list[0]["subject"], "hello both");
    }
    let seen = json(&cli(&laptop, &["device", "list", "--json"], None));
    let this: Vec<&serde_json::Value> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["this"] == true)
        .collect();
    assert_eq!((seen.as_array().unwrap().len(), this.len()), (2, 1));
    assert_eq!(this[0]["id"], id.as_str());
    // The laptop holds no identity key: it cannot link another machine.
    let e = user_error(&cli(&laptop, &["device", "link"], None));
    assert!(e.contains("identity key"), "{e}");

    // Removed, the laptop can no longer sync, and says why.
    ok(&cli(&alice, &["device", "remove", &id], None));
    let e = user_error(&cli(&laptop, &["sync"], None));
    assert!(e.contains("removed"), "{e}");
    ok(&cli(&alice, &["sync"], None));

    // A server that adds the laptop back on its own, logged as it must be, is caught by
    // the device that remains.
    let mut server = server;
    server.kill9();
    add_back_behind_the_users_back(&server.data_dir.join("letterme.db"), &id);
    server.restart();
    let out = cli(&alice, &["sync", "--json"], None);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "device {id} of alice@x.test was removed and is listed again"
        )),
        "{said}"
    );
}

/// What a dishonest server would do to read a removed device's mail again: mark it current
/// and log a `DeviceAdd` naming the set with it, with the same proofs as any entry.
fn add_back_behind_the_users_back(db: &std::path::Path, id: &str) {
    use letterme_protocol::device::{device_id, set_digest};
    use letterme_protocol::kt::{KeyOp, LogEntry};
    let c = rusqlite::Connection::open(db).unwrap();
    let rows: Vec<(i64, Vec<u8>)> = c
        .prepare("SELECT id, device_key FROM devices WHERE account = 'alice@x.test'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (row, _) = rows
        .iter()
        .find(|(_, k)| {
            device_id(&letterme_protocol::IdentityPublicKey(
                k.clone().try_into().unwrap(),
            )) == id
        })
        .unwrap();
    c.execute("UPDATE devices SET removed = NULL WHERE id = ?1", [row])
        .unwrap();
    let set: Vec<Device> = c
        .prepare("SELECT statement FROM devices WHERE account = 'alice@x.test' AND removed IS NULL")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|s| serde_json::from_str(&s.unwrap()).unwrap())
        .collect();
    assert_eq!(set.len(), 2);
    let (idx, label, last): (i64, Vec<u8>, Vec<u8>) = c
        .query_row(
            "SELECT idx, label, entry FROM kt_log ORDER BY idx DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let mut entry = LogEntry::decode(&last).unwrap();
    assert_eq!(entry.op, KeyOp::DeviceRemove);
    entry.op = KeyOp::DeviceAdd;
    entry.device_set = Some(set_digest(&set));
    entry.time += 1;
    c.execute(
        "INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)",
        rusqlite::params![idx + 1, label, entry.encode()],
    )
    .unwrap();
}

/// Two machines of alice's, each with its own proxy: marking a message read, flagging it,
/// moving it to Archive and making a folder through IMAP on one shows on the other, whose
/// IDLE session sees the changes (PROTOCOL.md §9.6).
#[test]
fn mailbox_changes_on_one_device_show_on_the_other() {
    use letterme_tests::world::World;
    use letterme_tests::{ProxyProc, ServerProc, cli, ok, python};
    const SCRIPT: &str = include_str!("../../fixtures/imap/two_devices.py");
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    let laptop = world.path().join("laptop");
    let (linking, shown) = Linking::start(&alice);
    ok(&join(&laptop, shown["code"].as_str().unwrap(), &server));
    let (linked, said) = linking.finish();
    assert!(linked, "{said}");
    ok(&cli(
        &bob,
        &[
            "send",
            "--to",
            "alice@x.test",
            "--subject",
            "in step",
            "--body",
            "b",
        ],
        None,
    ));
    let (one, two) = (ProxyProc::start(&alice), ProxyProc::start(&laptop));
    for p in [&one, &two] {
        assert!(
            letterme_tests::eventually(|| letterme_tests::rows(&p.profile, "mail") == 1),
            "{}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
    }
    let out = python(
        SCRIPT,
        &[
            &one.imap.port().to_string(),
            &one.password,
            &two.imap.port().to_string(),
            &two.password,
            "alice@x.test",
            "4",
        ],
    );
    let log = || {
        format!(
            "{out}\n--- device 1:\n{}\n--- device 2:\n{}",
            std::fs::read_to_string(&one.log).unwrap_or_default(),
            std::fs::read_to_string(&two.log).unwrap_or_default()
        )
    };
    assert_eq!(out["exists"][0], 1, "{}", log());
    assert!(out["seen_seconds"].is_number(), "{}", log());
    let latencies = out["flag_latencies"].as_array().unwrap();
    assert!(
        latencies.iter().all(serde_json::Value::is_number),
        "{}",
        log()
    );
    assert!(out["expunge_seconds"].is_number(), "{}", log());
    assert_eq!(out["archive_exists"], 1, "{}", log());
    assert!(
        out["archive_flags"].to_string().contains("\\\\Seen"),
        "{}",
        log()
    );
    assert!(out["list"].to_string().contains("Projects"), "{}", log());

    // What one device sends lands in the other's Sent too.
    ok(&cli(
        &alice,
        &[
            "send",
            "--to",
            "bob@x.test",
            "--subject",
            "sent from one",
            "--body",
            "b",
        ],
        None,
    ));
    assert!(
        letterme_tests::eventually(|| in_folder(&laptop, "Sent") == 1),
        "{}",
        log()
    );
    assert_eq!(in_folder(&alice, "Sent"), 1);
}

/// Messages in folder `name` of the cache of the profile at `profile`.
fn in_folder(profile: &std::path::Path, name: &str) -> i64 {
    rusqlite::Connection::open(profile.join("mail.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM mail m JOIN folders f ON f.id = m.folder WHERE f.name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

/// A message as two devices must agree on it: INTERNALDATE, size, flags without `\Recent`.
type Seen = (i64, u32, Vec<String>);

/// Each folder of the profile at `profile` with its messages, sorted.
fn mailbox_of(profile: &std::path::Path) -> Vec<(String, Vec<Seen>)> {
    let me = letterme_client::Unlocked::open(
        letterme_client::profile::ProfileDir(profile.to_owned()),
        letterme_tests::PASSPHRASE,
    )
    .unwrap();
    let mut out = Vec::new();
    for f in me.cache.folders().unwrap() {
        let mut msgs: Vec<Seen> = me
            .cache
            .messages(f.id)
            .unwrap()
            .into_iter()
            .map(|m| {
                let mut flags: Vec<String> =
                    m.flags.into_iter().filter(|f| f != "\\Recent").collect();
                flags.sort();
                (m.internal_date, m.size, flags)
            })
            .collect();
        msgs.sort();
        out.push((f.name, msgs));
    }
    out
}

/// A machine linked to an account that has mail gets it all from the device that linked
/// it: every message in its folder, with its flags and INTERNALDATE, and the folders made.
#[test]
fn a_new_device_receives_the_history_of_the_first() {
    use letterme_client::cache::FlagOp;
    use letterme_tests::world::{World, json};
    use letterme_tests::{ServerProc, cli, ok};
    let world = World::new(vec![]);
    let server = ServerProc::start(world.path(), "x.test", "");
    let alice = world.account(&server, "alice", "alice@x.test");
    let bob = world.account(&server, "bob", "bob@x.test");
    for i in 0..6 {
        ok(&cli(
            &bob,
            &[
                "send",
                "--to",
                "alice@x.test",
                "--subject",
                &format!("m{i}"),
                "--body",
                "b",
            ],
            None,
        ));
    }
    assert_eq!(json(&cli(&alice, &["sync", "--json"], None))["fetched"], 6);
    {
        let me = letterme_client::Unlocked::open(
            letterme_client::profile::ProfileDir(alice.clone()),
            letterme_tests::PASSPHRASE,
        )
        .unwrap();
        let c = &me.cache;
        let inbox = c.folder("INBOX").unwrap().unwrap().id;
        c.create_folder("Projects/2026", None).unwrap();
        c.store_flags(inbox, &[1, 2], FlagOp::Add, &["\\Seen".into()], None)
            .unwrap();
        c.store_flags(
            inbox,
            &[3],
            FlagOp::Add,
            &["\\Flagged".into(), "$todo".into()],
            None,
        )
        .unwrap();
        c.copy(inbox, &[2, 3], "Projects/2026", true).unwrap();
        c.copy(inbox, &[4], "Archive", false).unwrap();
    }
    let before = mailbox_of(&alice);
    let laptop = world.path().join("laptop");
    let (linking, shown) = Linking::start(&alice);
    ok(&join(&laptop, shown["code"].as_str().unwrap(), &server));
    let (linked, said) = linking.finish();
    assert!(linked, "{said}");
    assert!(said.contains("\"history\":7"), "{said}");
    ok(&cli(&laptop, &["sync"], None));
    assert_eq!(mailbox_of(&laptop), before);
    assert!(
        before
            .iter()
            .any(|(f, m)| f == "Projects/2026" && m.len() == 2)
    );
}
