//! Real IMAP clients nobody here wrote, from the distribution, against the proxy (issue 16):
//! mbsync (isync) and offlineimap3 sync its mailboxes to a local Maildir and back. `.ci/run`
//! installs both.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{PASSWORD, Proxy, USER};
use letterme_client::cache::{Content, FlagOp, NewMail};

/// Files a message through the cache, as the proxy's sync does.
fn deliver(proxy: &Proxy, folder: &str, subject: &str) {
    let raw = format!(
        "From: sam@sender.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@sender.test>\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\n\
         body of {subject}\r\n"
    );
    proxy
        .cache
        .append(&NewMail {
            folder: folder.into(),
            flags: vec![],
            internal_date: 1_796_000_000,
            raw: raw.into_bytes(),
            message_id: None,
            pieces: vec![],
        })
        .unwrap();
}

/// Every message file under a Maildir folder (`cur` and `new`), by name.
fn files(folder: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["cur", "new"]
        .iter()
        .filter_map(|d| std::fs::read_dir(folder.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); .ci/run installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// The mailbox id, UID and flags of the message with `subject` in `folder`.
fn find(proxy: &Proxy, folder: &str, subject: &str) -> Option<(i64, u32, Vec<String>)> {
    let f = proxy.cache.folder(folder).unwrap().unwrap();
    let uids: Vec<u32> = proxy
        .cache
        .messages(f.id)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    proxy
        .cache
        .fetch(f.id, &uids, Content::Head)
        .unwrap()
        .into_iter()
        .find(|(_, raw, _)| {
            String::from_utf8_lossy(raw.as_deref().unwrap())
                .contains(&format!("Subject: {subject}"))
        })
        .map(|(m, _, _)| (f.id, m.uid, m.flags))
}

/// The flags of the message with `subject` in `folder`, as the proxy holds them.
fn flags_of(proxy: &Proxy, folder: &str, subject: &str) -> Option<Vec<String>> {
    find(proxy, folder, subject).map(|m| m.2)
}

/// Expunges the message with `subject` on the proxy, as another client would.
fn expunge(proxy: &Proxy, folder: &str, subject: &str) {
    let (id, uid, _) = find(proxy, folder, subject).unwrap();
    proxy
        .cache
        .store_flags(id, &[uid], FlagOp::Add, &["\\Deleted".into()], None)
        .unwrap();
    proxy.cache.expunge_deleted(id, None).unwrap();
}

/// Adds a Maildir flag letter to a message file (RFC-less, but every Maildir reader's
/// convention: `name:2,FLAGS`, letters sorted).
fn add_maildir_flag(file: &Path, letter: char) -> PathBuf {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let (base, flags) = name.split_once(":2,").unwrap_or((&name, ""));
    let mut letters: Vec<char> = flags.chars().chain([letter]).collect();
    letters.sort_unstable();
    letters.dedup();
    let renamed = file
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cur")
        .join(format!(
            "{base}:2,{}",
            letters.into_iter().collect::<String>()
        ));
    std::fs::rename(file, &renamed).unwrap();
    renamed
}

fn seed(proxy: &Proxy) {
    for i in 0..5 {
        deliver(proxy, "INBOX", &format!("inbox-{i}"));
    }
    deliver(proxy, "Archive", "archived-1");
    proxy.cache.create_folder("Projects", None).unwrap();
    proxy.cache.create_folder("Projects/2026", None).unwrap();
    deliver(proxy, "Projects/2026", "plan");
}

#[test]
fn mbsync_syncs_every_folder_both_ways() {
    let proxy = Proxy::start();
    seed(&proxy);
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let config = dir.path().join("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount proxy\nHost 127.0.0.1\nPort {port}\nUser {USER}\nPass {PASSWORD}\n\
             SSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore far\nAccount proxy\n\n\
             MaildirStore near\nPath {mail}/\nInbox {mail}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :far:\nNear :near:\nPatterns *\nCreate Both\nExpunge Both\n\
             SyncState *\n",
            port = proxy.addr.port(),
            mail = mail.display(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // A first sync brings every folder, nested ones too.
    run("mbsync", &["-c", config, "-a"]);
    assert_eq!(files(&mail.join("INBOX")).len(), 5);
    assert_eq!(files(&mail.join("Archive")).len(), 1);
    assert_eq!(files(&mail.join("Projects/2026")).len(), 1);
    // A second run changes nothing on either side.
    let before = files(&mail.join("INBOX"));
    let out = run("mbsync", &["-c", config, "-a", "-V"]);
    assert_eq!(files(&mail.join("INBOX")), before, "{out}");
    let inbox = proxy.cache.folder("INBOX").unwrap().unwrap();
    assert_eq!(proxy.cache.messages(inbox.id).unwrap().len(), 5);
    // A flag set in the Maildir reaches the proxy.
    let file = files(&mail.join("INBOX"))
        .into_iter()
        .find(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("Subject: inbox-2")
        })
        .unwrap();
    add_maildir_flag(&file, 'F');
    run("mbsync", &["-c", config, "-a"]);
    assert_eq!(
        flags_of(&proxy, "INBOX", "inbox-2").unwrap(),
        vec!["\\Flagged"]
    );
    // A message deleted on the proxy disappears from the Maildir.
    expunge(&proxy, "INBOX", "inbox-4");
    run("mbsync", &["-c", config, "-a"]);
    let left = files(&mail.join("INBOX"));
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|f| {
        !std::fs::read_to_string(f)
            .unwrap()
            .contains("Subject: inbox-4")
    }));
}

#[test]
fn offlineimap_syncs_every_folder_both_ways() {
    let proxy = Proxy::start();
    seed(&proxy);
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let config = dir.path().join("offlineimaprc");
    std::fs::write(
        &config,
        format!(
            "[general]\naccounts = proxy\nmetadata = {meta}\n\n\
             [Account proxy]\nlocalrepository = near\nremoterepository = far\n\n\
             [Repository near]\ntype = Maildir\nlocalfolders = {mail}\nsep = /\n\n\
             [Repository far]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {port}\n\
             remoteuser = {USER}\nremotepass = {PASSWORD}\nssl = no\nstarttls = no\n",
            meta = dir.path().join("meta").display(),
            mail = mail.display(),
            port = proxy.addr.port(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let sync = || run("offlineimap", &["-c", config, "-o", "-u", "basic"]);
    sync();
    assert_eq!(files(&mail.join("INBOX")).len(), 5);
    assert_eq!(files(&mail.join("Archive")).len(), 1);
    assert_eq!(files(&mail.join("Projects/2026")).len(), 1);
    let before = files(&mail.join("INBOX"));
    sync();
    assert_eq!(files(&mail.join("INBOX")), before);
    let file = files(&mail.join("INBOX"))
        .into_iter()
        .find(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("Subject: inbox-1")
        })
        .unwrap();
    add_maildir_flag(&file, 'S');
    sync();
    assert_eq!(
        flags_of(&proxy, "INBOX", "inbox-1").unwrap(),
        vec!["\\Seen"]
    );
    expunge(&proxy, "INBOX", "inbox-3");
    sync();
    assert_eq!(files(&mail.join("INBOX")).len(), 4);
}
