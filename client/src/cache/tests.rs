//! The cache's rules on their own: encryption at rest, UIDs and UIDVALIDITY, atomic flag
//! changes, MODSEQ bookkeeping, `\Recent`, subscriptions, and upgrading an older cache.

use letterme_protocol::SigningKeypair;

use super::*;

fn cache(dir: &tempfile::TempDir) -> Cache {
    Cache::open(
        &dir.path().join("mail.db"),
        CacheKey::derive(&SigningKeypair::generate()),
    )
    .unwrap()
}

fn mail(folder: &str, raw: &str, mid: Option<&str>) -> NewMail {
    NewMail {
        folder: folder.into(),
        flags: vec![],
        internal_date: 1_700_000_000,
        raw: raw.as_bytes().to_vec(),
        message_id: mid.map(str::to_owned),
        pieces: vec![],
    }
}

#[test]
fn content_is_encrypted_at_rest_and_uids_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKeypair::generate();
    let c = Cache::open(&dir.path().join("mail.db"), CacheKey::derive(&key)).unwrap();
    let canary = "Subject: canary-4711\r\n\r\nsecret body canary-4711\r\n";
    let (validity, uid, _) = c.append(&mail("INBOX", canary, None)).unwrap();
    drop(c);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"canary-4711"));
    }
    let c = Cache::open(&dir.path().join("mail.db"), CacheKey::derive(&key)).unwrap();
    let inbox = c.folder("inbox").unwrap().unwrap();
    assert_eq!(inbox.uidvalidity, validity);
    assert_eq!(
        c.fetch(inbox.id, &[uid], Content::Whole).unwrap()[0]
            .1
            .as_deref(),
        Some(canary.as_bytes())
    );
    // A different key cannot read it.
    let other = Cache::open(
        &dir.path().join("mail.db"),
        CacheKey::derive(&SigningKeypair::generate()),
    )
    .unwrap();
    assert!(other.fetch(inbox.id, &[uid], Content::Whole).is_err());
}

#[test]
fn duplicate_message_ids_are_filed_once_and_moves_keep_content() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let (_, a, new_a) = c
        .append(&mail("Sent", "Subject: x\r\n\r\nx", Some("<1@x>")))
        .unwrap();
    let (_, b, new_b) = c
        .append(&mail("Sent", "Subject: x\r\n\r\nx", Some("<1@x>")))
        .unwrap();
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    let sent = c.folder("Sent").unwrap().unwrap();
    let (_, pairs) = c.copy(sent.id, &[a], "Archive", true).unwrap();
    assert!(c.messages(sent.id).unwrap().is_empty());
    let archive = c.folder("Archive").unwrap().unwrap();
    assert_eq!(
        c.fetch(archive.id, &[pairs[0].1], Content::Whole).unwrap()[0]
            .1
            .as_deref(),
        Some(&b"Subject: x\r\n\r\nx"[..])
    );
    // UIDs are never reused.
    let (_, again, _) = c.append(&mail("Sent", "y", None)).unwrap();
    assert!(again > a);
}

#[test]
fn folders_create_rename_delete() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    c.create_folder("Projects", None).unwrap();
    c.create_folder("Projects/2026", None).unwrap();
    assert!(matches!(
        c.create_folder("Projects", None),
        Err(MailboxError::AlreadyExists(_))
    ));
    assert!(matches!(
        c.delete_folder("Sent"),
        Err(MailboxError::Protected(_))
    ));
    assert!(matches!(
        c.create_folder("a*b", None),
        Err(MailboxError::InvalidName(_))
    ));
    c.rename_folder("Projects", "Work").unwrap();
    let names: Vec<String> = c.folders().unwrap().into_iter().map(|f| f.name).collect();
    assert!(names.contains(&"Work/2026".to_owned()), "{names:?}");
    c.delete_folder("Work/2026").unwrap();
    assert!(matches!(
        c.delete_folder("Nope"),
        Err(MailboxError::NoSuchMailbox(_))
    ));
}

#[test]
fn uidvalidity_is_never_reused_even_within_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        c.create_folder("Again", None).unwrap();
        let f = c.folder("Again").unwrap().unwrap();
        assert!(seen.insert(f.uidvalidity), "{} given twice", f.uidvalidity);
        c.delete_folder("Again").unwrap();
    }
    // ...and after the cache is closed and opened again.
    drop(c);
    let c = Cache::open(
        &dir.path().join("mail.db"),
        CacheKey::derive(&SigningKeypair::generate()),
    )
    .unwrap();
    c.create_folder("Again", None).unwrap();
    let f = c.folder("Again").unwrap().unwrap();
    assert!(!seen.contains(&f.uidvalidity));
}

#[test]
fn flag_changes_apply_to_the_stored_set_and_stamp_modseqs() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let (_, uid, _) = c.append(&mail("INBOX", "a", None)).unwrap();
    let inbox = c.folder("INBOX").unwrap().unwrap();
    let before = inbox.highestmodseq;
    // Two sessions each add their own flag: both stay.
    let one = c
        .store_flags(inbox.id, &[uid], FlagOp::Add, &["\\Seen".into()], None)
        .unwrap();
    let two = c
        .store_flags(inbox.id, &[uid], FlagOp::Add, &["\\Flagged".into()], None)
        .unwrap();
    assert!(one.stored[0].changed && two.stored[0].changed);
    assert_eq!(two.stored[0].flags, vec!["\\Flagged", "\\Seen"]);
    assert!(two.stored[0].modseq > one.stored[0].modseq);
    // Adding what is there changes nothing and keeps the MODSEQ.
    let same = c
        .store_flags(inbox.id, &[uid], FlagOp::Add, &["\\seen".into()], None)
        .unwrap();
    assert!(!same.stored[0].changed);
    assert_eq!(same.stored[0].modseq, two.stored[0].modseq);
    // UNCHANGEDSINCE below the message's MODSEQ leaves it alone.
    let refused = c
        .store_flags(inbox.id, &[uid], FlagOp::Replace, &[], Some(before))
        .unwrap();
    assert_eq!(refused.modified, vec![uid]);
    assert!(refused.stored.is_empty());
    let changes = c
        .changes_since(inbox.id, one.stored[0].modseq)
        .unwrap()
        .unwrap();
    assert_eq!(changes.changed.len(), 1);
    assert_eq!(changes.folder.highestmodseq, two.stored[0].modseq);
    // An expunge leaves a tombstone a later look finds.
    c.store_flags(inbox.id, &[uid], FlagOp::Add, &["\\Deleted".into()], None)
        .unwrap();
    let mark = c.folder("INBOX").unwrap().unwrap().highestmodseq;
    assert_eq!(c.expunge_deleted(inbox.id, None).unwrap(), vec![uid]);
    let changes = c.changes_since(inbox.id, mark).unwrap().unwrap();
    assert_eq!(changes.vanished, vec![uid]);
    assert!(changes.changed.is_empty());
    assert!(
        c.fetch(inbox.id, &[uid], Content::Whole)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn each_message_is_recent_for_one_claimant_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let inbox = c.folder("INBOX").unwrap().unwrap();
    c.append(&mail("INBOX", "a", None)).unwrap();
    c.append(&mail("INBOX", "b", None)).unwrap();
    assert_eq!(c.claim_recent(inbox.id, 3).unwrap(), (1, 3));
    assert_eq!(c.claim_recent(inbox.id, 3).unwrap(), (3, 3));
    c.append(&mail("INBOX", "c", None)).unwrap();
    c.append(&mail("INBOX", "d", None)).unwrap();
    // A claimant that has read only up to UID 3 leaves UID 4 to another.
    assert_eq!(c.claim_recent(inbox.id, 4).unwrap(), (3, 4));
    assert_eq!(c.claim_recent(inbox.id, 5).unwrap(), (4, 5));
}

#[test]
fn subscriptions_are_names_apart_from_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let subs = c.subscriptions().unwrap();
    for (name, _) in STANDARD_MAILBOXES {
        assert!(subs.contains(name), "{name} starts subscribed");
    }
    c.create_folder("Lists", None).unwrap();
    assert!(
        !c.subscriptions().unwrap().contains("Lists"),
        "CREATE does not subscribe"
    );
    c.subscribe("Not/There", true).unwrap();
    c.subscribe("Never", false).unwrap();
    c.subscribe("Lists", true).unwrap();
    c.delete_folder("Lists").unwrap();
    let subs = c.subscriptions().unwrap();
    assert!(subs.contains("Not/There") && subs.contains("Lists"));
}

#[test]
fn a_cache_from_before_modseqs_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO folders (name, special, subscribed, uidvalidity, uidnext)
               VALUES ('INBOX', NULL, 1, 1700000000, 3), ('Old', NULL, 0, 1700000001, 1),
                 ('Entw&APw-rfe', NULL, 1, 1700000002, 1), ('Tom &- Jerry', NULL, 0, 1700000003, 1);
             INSERT INTO contents (id, nonce, data) VALUES (7, x'00', x'00');
             INSERT INTO mail (folder, uid, content, flags, internal_date, size)
               VALUES (1, 2, 7, '\\Seen', 1700000000, 1);",
        )
        .unwrap();
    }
    let c = Cache::open(&path, CacheKey::derive(&SigningKeypair::generate())).unwrap();
    let inbox = c.folder("INBOX").unwrap().unwrap();
    assert_eq!((inbox.uidvalidity, inbox.uidnext), (1_700_000_000, 3));
    assert_eq!(inbox.recent_uid, 3, "nothing is recent after an upgrade");
    assert_eq!(c.messages(inbox.id).unwrap()[0].flags, vec!["\\Seen"]);
    let subs = c.subscriptions().unwrap();
    assert!(subs.contains("INBOX") && !subs.contains("Old"));
    // Names IMAP4rev1 clients wrote in modified UTF-7 are UTF-8 now.
    assert!(subs.contains("Entwürfe"), "{subs:?}");
    assert!(c.folder("Entwürfe").unwrap().is_some());
    assert!(c.folder("Tom & Jerry").unwrap().is_some());
    c.create_folder("New", None).unwrap();
    assert!(c.folder("New").unwrap().unwrap().uidvalidity > 1_700_000_001);
    // Content ids go on after the highest of the random ones older caches chose.
    c.append(&mail("INBOX", "Subject: new\r\n\r\nnew", None))
        .unwrap();
    assert_eq!(content_ids(&path), [7, 8]);
}

/// The ids of the content rows, in the order they were written.
fn content_ids(path: &std::path::Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM contents ORDER BY rowid")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Content ids count up (each row goes at the end of the table) and a deleted one, even the
/// last, is never given again: a ciphertext bound to it never fits a later row.
#[test]
fn content_ids_count_up_and_are_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let path = dir.path().join("mail.db");
    c.append(&mail("INBOX", "Subject: a\r\n\r\na", None))
        .unwrap();
    let (_, b, _) = c
        .append(&mail("INBOX", "Subject: b\r\n\r\nb", None))
        .unwrap();
    assert_eq!(content_ids(&path), [1, 2]);
    let inbox = c.folder("INBOX").unwrap().unwrap();
    c.store_flags(inbox.id, &[b], FlagOp::Add, &["\\Deleted".into()], None)
        .unwrap();
    assert_eq!(c.expunge_deleted(inbox.id, None).unwrap(), vec![b]);
    assert_eq!(content_ids(&path), [1]);
    c.append(&mail("INBOX", "Subject: c\r\n\r\nc", None))
        .unwrap();
    assert_eq!(content_ids(&path), [1, 3]);
}

#[test]
fn rename_gives_way_to_old_subscriptions_and_refuses_child_collisions() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    c.create_folder("X", None).unwrap();
    c.create_folder("X/a", None).unwrap();
    c.subscribe("X", true).unwrap();
    // A subscription kept from a deleted mailbox of the target name does not block it.
    c.subscribe("Trash/X", true).unwrap();
    c.rename_folder("X", "Trash/X").unwrap();
    let subs = c.subscriptions().unwrap();
    assert!(subs.contains("Trash/X") && !subs.contains("X"), "{subs:?}");
    // A child whose new name is taken: refused as such, nothing renamed.
    c.create_folder("Y", None).unwrap();
    c.create_folder("Y/a", None).unwrap();
    c.create_folder("Z/a", None).unwrap();
    assert!(matches!(
        c.rename_folder("Y", "Z"),
        Err(MailboxError::AlreadyExists(_))
    ));
    assert!(c.folder("Y/a").unwrap().is_some());
}

#[test]
fn a_deleted_mailboxs_id_is_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    c.create_folder("Tmp", None).unwrap();
    let old = c.folder("Tmp").unwrap().unwrap().id;
    c.delete_folder("Tmp").unwrap();
    c.create_folder("Other", None).unwrap();
    assert_ne!(c.folder("Other").unwrap().unwrap().id, old);
}

#[test]
fn header_sections_are_kept_apart_for_header_only_reads() {
    assert_eq!(header_end(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"), 14);
    assert_eq!(header_end(b"A: 1\n\nbody"), 6);
    assert_eq!(header_end(b"A: 1\r\nno body"), 13);
    assert_eq!(header_end(b"\r\nbody"), 2);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let raw = "Subject: head\r\nFrom: a@x.test\r\n\r\nbody canary\r\n";
    let (_, uid, _) = c.append(&mail("INBOX", raw, None)).unwrap();
    let inbox = c.folder("INBOX").unwrap().unwrap();
    let head = c.fetch(inbox.id, &[uid], Content::Head).unwrap();
    assert_eq!(
        head[0].1.as_deref(),
        Some(&b"Subject: head\r\nFrom: a@x.test\r\n\r\n"[..])
    );
    // A row from before header sections existed is read whole and cut.
    c.lock()
        .execute("UPDATE contents SET head = NULL, head_nonce = NULL", [])
        .unwrap();
    let head = c.fetch(inbox.id, &[uid], Content::Head).unwrap();
    assert_eq!(
        head[0].1.as_deref(),
        Some(&b"Subject: head\r\nFrom: a@x.test\r\n\r\n"[..])
    );
    // The header ciphertext is bound to its part: put in place of the whole, it fails.
    let (_, uid, _) = c.append(&mail("INBOX", raw, None)).unwrap();
    c.lock()
        .execute(
            "UPDATE contents SET nonce = head_nonce, data = head WHERE head IS NOT NULL",
            [],
        )
        .unwrap();
    assert!(c.fetch(inbox.id, &[uid], Content::Whole).is_err());
}

/// A message whose large parts are blobs is kept once: the rest of it, and each blob's
/// sealed chunks as they came. Read whole it is the message again, its size counts the
/// blobs, and a copy shares them; a missing or changed chunk fails the read rather than
/// serve the message without it.
#[test]
fn a_message_kept_in_pieces_reads_whole_and_never_short() {
    use letterme_protocol::blob::{CHUNK, Sealer};
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let blob: Vec<u8> = (0..CHUNK + 100).map(|i| (i % 251) as u8).collect();
    let mut sealer = Sealer::new();
    let first = sealer.seal_chunk(&blob[..CHUNK]);
    let (last, reference, _) = sealer.finish(&blob[CHUNK..]);
    let rest = b"Subject: pieces\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nHALF--b--\r\n";
    let at = rest.iter().position(|&b| b == b'H').unwrap() + 2;
    let mut m = mail("INBOX", std::str::from_utf8(rest).unwrap(), None);
    m.pieces = vec![Piece {
        at,
        blob: reference.clone(),
    }];
    let mut whole = rest[..at].to_vec();
    whole.extend_from_slice(&blob);
    whole.extend_from_slice(&rest[at..]);
    c.keep_chunks(&reference.id, &[(0, first.clone())]).unwrap();
    let (_, uid, _) = c.append(&m).unwrap();
    let inbox = c.folder("INBOX").unwrap().unwrap();
    let read = |uid| c.fetch(inbox.id, &[uid], Content::Whole);
    // One chunk still missing: no message rather than a short one.
    assert!(read(uid).is_err());
    c.keep_chunks(&reference.id, &[(1, last.clone())]).unwrap();
    let got = read(uid).unwrap();
    assert_eq!(got[0].1.as_deref(), Some(whole.as_slice()));
    assert_eq!(got[0].0.size as usize, whole.len());
    assert_eq!(
        c.held_chunks(&reference.id)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        [0, 1]
    );
    // The header alone needs no blob.
    let head = c.fetch(inbox.id, &[uid], Content::Head).unwrap();
    assert_eq!(head[0].1.as_deref(), Some(&rest[..header_end(rest)]));
    // A copy reads the same blob.
    let (_, pairs) = c.copy(inbox.id, &[uid], "Archive", false).unwrap();
    let archive = c.folder("Archive").unwrap().unwrap();
    let copied = c.fetch(archive.id, &[pairs[0].1], Content::Whole).unwrap();
    assert_eq!(copied[0].1.as_deref(), Some(whole.as_slice()));
    // A chunk changed on disk fails the read.
    {
        let db = c.lock();
        db.execute(
            "UPDATE blob_chunks SET data = ?2 WHERE blob = ?1 AND n = 1",
            params![reference.id, vec![0u8; last.len()]],
        )
        .unwrap();
    }
    assert!(read(uid).is_err());
}

/// A message filed before its blob is downloaded (synced `awaiting`): its envelope is
/// listed as not to be acknowledged; read whole, the blob's place is filled with lines of
/// its size (so everything else is where it will be) and the places are given; once the
/// chunks are kept and it is `downloaded`, it reads whole for real. One whose blob cannot
/// be had is withdrawn from every mailbox, each copy leaving a tombstone.
#[test]
fn a_message_awaiting_its_blob_reads_filled_then_whole_or_is_withdrawn() {
    use letterme_protocol::blob::{CHUNK, Sealer};
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let blob: Vec<u8> = (0..CHUNK + 100).map(|i| b"QUJD"[i % 4]).collect();
    let mut sealer = Sealer::new();
    let first = sealer.seal_chunk(&blob[..CHUNK]);
    let (last, reference, _) = sealer.finish(&blob[CHUNK..]);
    let rest = b"Subject: later\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n--b--\r\n";
    let at = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let at = rest[at + 4..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + at
        + 8;
    let synced = |id: &str, awaiting: bool| {
        let mut m = mail("INBOX", std::str::from_utf8(rest).unwrap(), None);
        m.pieces = vec![Piece {
            at,
            blob: reference.clone(),
        }];
        Synced {
            stored: Stored {
                id: id.into(),
                sender: "alice@x.test".into(),
                received: 1,
                envelope: id.as_bytes().to_vec(),
                signer_key: [0; 32],
            },
            mail: Some(m),
            state: vec![],
            awaiting,
        }
    };
    c.commit_synced(&[synced("e1", true), synced("e2", false)], 1)
        .unwrap();
    assert_eq!(
        c.awaiting_envelopes()
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["e1"]
    );
    // With when the server received it, which on-demand downloads count from.
    let [(content, 1)] = c.awaiting().unwrap()[..] else {
        panic!("one message awaits")
    };
    let awaited = c.awaited(content).unwrap().unwrap();
    assert_eq!(awaited.envelope_id, "e1");
    assert_eq!(awaited.pieces.unwrap()[0].blob, reference);

    let inbox = c.folder("INBOX").unwrap().unwrap();
    let (filled, holes) = {
        let got = c.fetch(inbox.id, &[1], Content::Whole).unwrap();
        let (meta, raw, awaiting) = got.into_iter().next().unwrap();
        let awaiting = awaiting.expect("served filled");
        assert_eq!(awaiting.content, content);
        assert_eq!(meta.size as usize, raw.as_ref().unwrap().len());
        (raw.unwrap(), awaiting.holes)
    };
    assert_eq!(
        holes,
        vec![std::ops::Range {
            start: at,
            end: at + blob.len()
        }]
    );
    assert_eq!(&filled[..at], &rest[..at]);
    assert_eq!(&filled[at + blob.len()..], &rest[at..]);
    assert!(
        filled[at..at + blob.len()]
            .iter()
            .all(|b| b"A\r\n".contains(b))
    );
    assert!(filled[at..at + 80].ends_with(b"AA\r\nAA"));
    // The one synced with its blob (never kept here) is not served filled: no short read.
    assert!(c.fetch(inbox.id, &[2], Content::Whole).is_err());

    c.keep_chunks(&reference.id, &[(0, first.clone())]).unwrap();
    c.keep_chunks(&reference.id, &[(1, last.clone())]).unwrap();
    c.downloaded(content).unwrap();
    assert!(c.awaiting_envelopes().unwrap().is_empty());
    assert!(c.awaited(content).unwrap().is_none());
    let got = c.fetch(inbox.id, &[1], Content::Whole).unwrap();
    assert_eq!(got[0].2, None);
    let mut whole = rest[..at].to_vec();
    whole.extend_from_slice(&blob);
    whole.extend_from_slice(&rest[at..]);
    assert_eq!(got[0].1.as_deref(), Some(whole.as_slice()));

    // Withdrawn: every copy goes, each with a tombstone.
    c.commit_synced(&[synced("e3", true)], 1).unwrap();
    let [(later, _)] = c.awaiting().unwrap()[..] else {
        panic!("one message awaits")
    };
    let (_, pairs) = c.copy(inbox.id, &[3], "Archive", false).unwrap();
    let archive = c.folder("Archive").unwrap().unwrap();
    c.withdraw(later).unwrap();
    assert!(c.awaiting().unwrap().is_empty());
    assert!(c.fetch(inbox.id, &[3], Content::None).unwrap().is_empty());
    assert!(
        c.fetch(archive.id, &[pairs[0].1], Content::None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.vanished_since(inbox.id, 0).unwrap(), [3]);
    assert_eq!(c.vanished_since(archive.id, 0).unwrap(), [pairs[0].1]);

    // Expunged before its download: it waits for nothing, and may be acknowledged.
    c.commit_synced(&[synced("e4", true)], 1).unwrap();
    assert_eq!(c.awaiting().unwrap().len(), 1);
    c.store_flags(inbox.id, &[4], FlagOp::Add, &["\\Deleted".into()], None)
        .unwrap();
    assert_eq!(c.expunge_deleted(inbox.id, None).unwrap(), [4]);
    assert!(c.awaiting_envelopes().unwrap().is_empty());
}

/// A commit leaves the copy of its WAL frames into the database file to the checkpoint
/// thread: the file takes a commit smaller than SQLite's own threshold (1,000 pages) without
/// another commit or connection doing it, and the WAL, however fast commits follow each
/// other, is brought back instead of growing with every page.
#[test]
fn commits_are_checkpointed_beside_them_and_the_wal_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let db = dir.path().join("mail.db");
    let wal = dir.path().join("mail.db-wal");
    let body = "x".repeat(100_000);
    let page = |n: usize| -> Vec<Synced> {
        (0..10)
            .map(|i| Synced {
                stored: Stored {
                    id: format!("e{n}-{i}"),
                    sender: "alice@x.test".into(),
                    received: 1,
                    envelope: body.as_bytes().to_vec(),
                    signer_key: [0; 32],
                },
                mail: Some(mail(
                    "INBOX",
                    &format!("Subject: {n} {i}\r\n\r\n{body}\r\n"),
                    None,
                )),
                state: vec![],
                awaiting: false,
            })
            .collect()
    };
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let before = size(&db);
    let settled = |want: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !want() {
            assert!(start.elapsed() < std::time::Duration::from_secs(20));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // One page of 2 MB (about 500 WAL pages).
    c.commit_synced(&page(0), 1).unwrap();
    settled(&|| size(&db) > before + 2_000_000);
    // Half as much again as the backstop lets the WAL hold.
    let backstop = super::WAL_BACKSTOP as u64 * 4096;
    let pages = (backstop * 3 / 2).div_ceil(2_000_000);
    for n in 1..pages {
        c.commit_synced(&page(n as usize), 1).unwrap();
    }
    settled(&|| size(&db) > before + pages * 2_000_000);
    // The pages went through a WAL that was copied and brought back below the backstop, if
    // the copies fell behind, by emptying it.
    settled(&|| size(&wal) < backstop + 4_000_000);
}

/// The chunks a message kept go with the last message in the cache that places them (an
/// expunged Sent copy's attachment), and not while a copy of it, or a stored envelope that
/// names the blob (`letterme read` opens a received message from it), still needs them.
#[test]
fn a_blobs_chunks_go_with_the_last_message_that_needs_them() {
    use letterme_protocol::blob::Sealer;
    use letterme_protocol::{Address, EncryptionKeypair, Payload};
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let expunge = |folder: i64, uid: u32| {
        c.store_flags(folder, &[uid], FlagOp::Add, &["\\Deleted".into()], None)
            .unwrap();
        c.expunge_deleted(folder, None).unwrap();
    };
    let placed = |reference: &letterme_protocol::blob::BlobRef, folder: &str| {
        let rest = "Subject: with a blob\r\n\r\n";
        let mut m = mail(folder, rest, None);
        m.pieces = vec![Piece {
            at: rest.len(),
            blob: reference.clone(),
        }];
        m
    };

    // Our Sent copy, and a copy of it in Archive: the chunks go with the second.
    let (sealed, reference, _) = Sealer::new().finish(b"the blob's bytes");
    c.keep_chunks(&reference.id, &[(0, sealed)]).unwrap();
    let (_, uid, _) = c.append(&placed(&reference, "Sent")).unwrap();
    let sent = c.folder("Sent").unwrap().unwrap();
    let (_, pairs) = c.copy(sent.id, &[uid], "Archive", false).unwrap();
    let archive = c.folder("Archive").unwrap().unwrap();
    let kept = |r: &letterme_protocol::blob::BlobRef| c.held_chunks(&r.id).unwrap().len();
    expunge(sent.id, uid);
    assert_eq!(kept(&reference), 1, "the copy in Archive still reads them");
    expunge(archive.id, pairs[0].1);
    assert_eq!(kept(&reference), 0);

    // A received message: its stored envelope names the blob, so they stay.
    let (sealed, reference, _) = Sealer::new().finish(b"another blob's bytes");
    c.keep_chunks(&reference.id, &[(0, sealed)]).unwrap();
    let bob = Address::parse("bob@x.test").unwrap();
    let payload = Payload {
        from: Address::parse("alice@x.test").unwrap(),
        to: vec![bob.clone()],
        cc: vec![],
        bcc: vec![],
        subject: "s".into(),
        body: String::new(),
        headers: vec![],
        date: 1,
        message_id: "<m@x.test>".into(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![reference.clone()],
        state: vec![],
    };
    let envelope = letterme_protocol::envelope::seal(
        letterme_protocol::envelope::SignerKind::User,
        &SigningKeypair::generate(),
        &payload,
        &[(bob, EncryptionKeypair::generate().public())],
        1,
    )
    .unwrap();
    c.commit_synced(
        &[Synced {
            stored: Stored {
                id: envelope.id.to_hex(),
                sender: "alice@x.test".into(),
                received: 1,
                envelope: envelope.encode(),
                signer_key: [0; 32],
            },
            mail: Some(placed(&reference, "INBOX")),
            state: vec![],
            awaiting: false,
        }],
        1,
    )
    .unwrap();
    let inbox = c.folder("INBOX").unwrap().unwrap();
    let uid = messages::uids_in(&c.lock(), inbox.id).unwrap()[0];
    expunge(inbox.id, uid);
    assert_eq!(kept(&reference), 1, "a stored envelope names them");
}

/// A write that reads first (APPEND looks for its Message-ID, then files) waits for another
/// connection's write to end — the proxy beside a CLI command, the checkpoint thread
/// emptying the WAL — rather than failing at once with "database is locked".
#[test]
fn a_write_waits_for_another_connections_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&dir);
    let path = dir.path().join("mail.db");
    let (locked, release) = (
        std::sync::Arc::new(std::sync::Barrier::new(2)),
        std::time::Duration::from_millis(300),
    );
    let holder = {
        let locked = locked.clone();
        std::thread::spawn(move || {
            let other = rusqlite::Connection::open(&path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked.wait();
            std::thread::sleep(release);
            other.execute_batch("COMMIT").unwrap();
        })
    };
    locked.wait();
    c.append(&mail("Sent", "Subject: x\r\n\r\nx", Some("<wait@x>")))
        .unwrap();
    holder.join().unwrap();
}

/// Two devices' caches: what one device's mail clients change reaches the other through
/// the operations its outbox holds, whatever order they come in; concurrent changes end
/// the same on both (last writer wins, by clock and then device id).
mod in_step {
    use super::*;

    fn device(dir: &tempfile::TempDir, id: &str) -> Cache {
        let c = cache(dir);
        c.set_device(id);
        c.set_in_step(true);
        c
    }

    fn received(id: &str, raw: &str) -> Synced {
        Synced {
            stored: Stored {
                id: id.into(),
                sender: "bob@x.test".into(),
                received: 1,
                envelope: id.as_bytes().to_vec(),
                signer_key: [0; 32],
            },
            mail: Some(mail("INBOX", raw, None)),
            state: vec![],
            awaiting: false,
        }
    }

    /// The outbox of `from`, emptied, as the envelope `id` carries it.
    fn ops_of(from: &Cache, id: &str) -> Synced {
        let (upto, ops) = from.outbox(1000, usize::MAX).unwrap().unwrap();
        from.outbox_sent(upto).unwrap();
        Synced {
            stored: Stored {
                id: id.into(),
                sender: "alice@x.test".into(),
                received: 2,
                envelope: id.as_bytes().to_vec(),
                signer_key: [0; 32],
            },
            mail: None,
            state: ops,
            awaiting: false,
        }
    }

    /// (folder name, flags) of each message, by folder then uid.
    fn view(c: &Cache) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for f in c.folders().unwrap() {
            for m in c.messages(f.id).unwrap() {
                let mut flags = m.flags.clone();
                flags.sort();
                out.push((f.name.clone(), flags));
            }
        }
        out
    }

    #[test]
    fn flags_moves_deletions_and_folders_reach_the_other_device() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (device(&da, "aaaa"), device(&db, "bbbb"));
        for c in [&a, &b] {
            c.commit_synced(
                &[
                    received("e1", "Subject: one\r\n\r\n1\r\n"),
                    received("e2", "Subject: two\r\n\r\n2\r\n"),
                ],
                1,
            )
            .unwrap();
        }
        // Nothing was recorded for mail as received: every device files it alike.
        assert!(a.outbox(10, usize::MAX).unwrap().is_none());
        let inbox = a.folder("INBOX").unwrap().unwrap();
        let uids: Vec<u32> = a
            .messages(inbox.id)
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect();
        a.store_flags(
            inbox.id,
            &uids[..1],
            FlagOp::Add,
            &["\\Seen".into(), "$work".into()],
            None,
        )
        .unwrap();
        a.create_folder("Projects", None).unwrap();
        a.copy(inbox.id, &uids[..1], "Archive", true).unwrap();
        a.store_flags(
            inbox.id,
            &uids[1..],
            FlagOp::Add,
            &["\\Deleted".into()],
            None,
        )
        .unwrap();
        a.expunge_deleted(inbox.id, None).unwrap();
        let sent = ops_of(&a, "s1");
        b.commit_synced(std::slice::from_ref(&sent), 2).unwrap();
        assert_eq!(view(&b), view(&a));
        assert_eq!(
            view(&b),
            vec![(
                "Archive".to_owned(),
                vec!["$work".to_owned(), "\\Seen".to_owned()]
            )]
        );
        assert!(b.folder("Projects").unwrap().is_some());
        // Its own operations coming back change nothing.
        let before = view(&a);
        a.commit_synced(&[sent], 2).unwrap();
        assert_eq!(view(&a), before);

        // A rename and a deletion of a folder.
        a.rename_folder("Projects", "Work").unwrap();
        b.commit_synced(&[ops_of(&a, "s2")], 3).unwrap();
        assert!(b.folder("Projects").unwrap().is_none());
        assert!(b.folder("Work").unwrap().is_some());
        a.delete_folder("Work").unwrap();
        b.commit_synced(&[ops_of(&a, "s3")], 4).unwrap();
        assert!(b.folder("Work").unwrap().is_none());

        // A message a mail client appends goes with its placement, read from the cache
        // when sent (the outbox holds no message).
        let draft = "Subject: draft-canary\r\n\r\nunsent\r\n";
        let mut m = mail("Drafts", draft, None);
        m.flags = vec!["\\Draft".into()];
        a.append_all(&[m]).unwrap();
        for f in std::fs::read_dir(da.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(12).any(|w| w == b"draft-canary"));
        }
        b.commit_synced(&[ops_of(&a, "s4")], 5).unwrap();
        let drafts = b.folder("Drafts").unwrap().unwrap();
        let got = b.fetch(drafts.id, &[1], Content::Whole).unwrap();
        assert_eq!(got[0].1.as_deref(), Some(draft.as_bytes()));
        assert_eq!(got[0].0.flags, vec!["\\Draft".to_owned()]);
        // Local messages (an alert) stay here.
        a.append(&mail("INBOX", "Subject: alert\r\n\r\nx\r\n", None))
            .unwrap();
        assert!(a.outbox(10, usize::MAX).unwrap().is_none());
    }

    #[test]
    fn operations_that_come_before_the_mail_apply_when_it_is_filed() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (device(&da, "aaaa"), device(&db, "bbbb"));
        a.commit_synced(&[received("e1", "Subject: one\r\n\r\n1\r\n")], 1)
            .unwrap();
        let inbox = a.folder("INBOX").unwrap().unwrap();
        a.store_flags(inbox.id, &[1], FlagOp::Add, &["\\Flagged".into()], None)
            .unwrap();
        a.copy(inbox.id, &[1], "Archive", false).unwrap();
        a.copy(inbox.id, &[1], "Junk", true).unwrap();
        b.commit_synced(&[ops_of(&a, "s1")], 2).unwrap();
        assert!(view(&b).is_empty(), "nothing to apply them to yet");
        b.commit_synced(&[received("e1", "Subject: one\r\n\r\n1\r\n")], 3)
            .unwrap();
        assert_eq!(view(&b), view(&a));
        assert_eq!(view(&b).len(), 2, "{:?}", view(&b));
    }

    #[test]
    fn concurrent_changes_end_the_same_on_both_devices() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (device(&da, "aaaa"), device(&db, "bbbb"));
        for c in [&a, &b] {
            c.commit_synced(&[received("e1", "Subject: one\r\n\r\n1\r\n")], 1)
                .unwrap();
        }
        let inbox = a.folder("INBOX").unwrap().unwrap().id;
        // At once: a flags it and moves it to Archive; b flags it, clears the flag and moves
        // it to Trash. Each register goes to the later stamp (b's, made after more
        // operations), on both devices alike.
        a.store_flags(inbox, &[1], FlagOp::Add, &["\\Flagged".into()], None)
            .unwrap();
        b.store_flags(inbox, &[1], FlagOp::Add, &["\\Flagged".into()], None)
            .unwrap();
        b.store_flags(inbox, &[1], FlagOp::Remove, &["\\Flagged".into()], None)
            .unwrap();
        a.copy(inbox, &[1], "Archive", true).unwrap();
        b.copy(inbox, &[1], "Trash", true).unwrap();
        let (from_a, from_b) = (ops_of(&a, "sa"), ops_of(&b, "sb"));
        b.commit_synced(&[from_a], 2).unwrap();
        a.commit_synced(&[from_b], 2).unwrap();
        assert_eq!(view(&a), view(&b));
        assert_eq!(view(&a), vec![("Trash".to_owned(), vec![])]);
    }
}
