//! The local mail cache the proxy serves: mailboxes, stable UIDs, flags, and each message
//! rendered as RFC 5322, encrypted at rest.
//!
//! Content is sealed with AES-256-GCM (ring; AES-NI makes serving a whole mailbox cheap)
//! under a key derived from the identity secret ([`CacheKey`]). Metadata (UIDs, flags,
//! dates, sizes) stays in the clear so listing needs no decryption.
//!
//! Several IMAP sessions share one cache, so every rule about mailbox state lives here and
//! runs inside one transaction: a flag change applies to the stored set, never to a
//! session's snapshot; each change stamps the message with the mailbox's next MODSEQ
//! (RFC 7162), and each expunge leaves a tombstone with its MODSEQ, so a session (or a
//! QRESYNC client) learns exactly what changed since the last MODSEQ it saw. UIDVALIDITY
//! comes from a persistent counter, so no mailbox name ever gets one twice (RFC 3501
//! §2.3.1.1), and UIDs only grow. Every commit bumps a counter IMAP sessions watch (IDLE).

mod key;
mod messages;
mod state;
#[cfg(test)]
mod tests;
pub mod utf7;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use letterme_sqlite::Checkpointer;
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::watch;

use crate::error::ClientError;
use crate::mailbox::{Stored, open_db};
use letterme_protocol::state::StateOp;

pub use key::CacheKey;
pub use messages::{
    Awaited, Awaiting, Changes, Content, Fetched, FlagOp, StoreOutcome, StoredFlags, header_end,
};
pub use state::{History, Placement};

/// The mailboxes every account has, with their RFC 6154 special-use attributes. They start
/// subscribed; other mailboxes only when the client subscribes them (RFC 3501 §6.3.6).
pub const STANDARD_MAILBOXES: [(&str, Option<&str>); 6] = [
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

/// The special-use attributes a mailbox may be created with (RFC 6154 §2).
pub const SPECIAL_USES: [&str; 7] = [
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Junk",
    "\\Sent",
    "\\Trash",
];

/// Longest mailbox name accepted.
pub const MAX_MAILBOX_NAME: usize = 255;
/// The hierarchy delimiter.
pub const DELIMITER: char = '/';

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, special TEXT,
    subscribed INTEGER NOT NULL DEFAULT 1, uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS contents (id INTEGER PRIMARY KEY, nonce BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mail (
    folder INTEGER NOT NULL, uid INTEGER NOT NULL, content INTEGER NOT NULL,
    flags TEXT NOT NULL, internal_date INTEGER NOT NULL, size INTEGER NOT NULL,
    msgid_hash TEXT, PRIMARY KEY (folder, uid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mail_msgid ON mail (folder, msgid_hash);
CREATE TABLE IF NOT EXISTS rendered (envelope_id TEXT PRIMARY KEY);
";

/// WAL pages past which the cache's writer waits for the WAL to be copied and emptied: four
/// times the server's. One person's bulk writes (a large attachment's chunks, kept as they
/// upload or download, then the message) outrun the checkpoint thread, and at 16 MiB each
/// 50 MB attachment stopped its transfers for a full copy two or three times
/// (PERFORMANCE.md, issue 17).
const WAL_BACKSTOP: i64 = 4 * letterme_sqlite::WAL_BACKSTOP_PAGES;

/// One schema step: SQL, or a change SQL cannot express.
enum Step {
    Sql(&'static str),
    Rust(fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>),
}

/// Schema steps after [`SCHEMA`], by `PRAGMA user_version` (step i takes version i to i+1).
const MIGRATIONS: [Step; 8] = [
    // 1: MODSEQ per message and mailbox, expunge tombstones, \Recent, subscriptions apart from
    // mailboxes, and a UIDVALIDITY counter that outlives deleted mailboxes.
    Step::Sql(
        "
    ALTER TABLE folders ADD COLUMN highestmodseq INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE folders ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 1;
    UPDATE folders SET recent_uid = uidnext;
    ALTER TABLE mail ADD COLUMN modseq INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX mail_modseq ON mail (folder, modseq);
    CREATE TABLE vanished (
        folder INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL,
        PRIMARY KEY (folder, uid)) WITHOUT ROWID;
    CREATE INDEX vanished_modseq ON vanished (folder, modseq);
    CREATE TABLE subscriptions (name TEXT PRIMARY KEY) WITHOUT ROWID;
    INSERT INTO subscriptions (name) SELECT name FROM folders WHERE subscribed = 1;
    ALTER TABLE folders DROP COLUMN subscribed;
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'uidvalidity', COALESCE(MAX(uidvalidity), 0) FROM folders;
    ",
    ),
    // 2: names in UTF-8; IMAP4rev1 clients wrote them in modified UTF-7, stored as written.
    Step::Rust(names_to_utf8),
    // 3: mailbox ids never reused (a session holding a deleted mailbox's id must not reach
    // one created after it), and an index for finding a content row's last reference.
    Step::Sql(
        "
    CREATE TABLE folders_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, special TEXT,
        uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL DEFAULT 1, recent_uid INTEGER NOT NULL DEFAULT 1);
    INSERT INTO folders_v3 (id, name, special, uidvalidity, uidnext, highestmodseq, recent_uid)
        SELECT id, name, special, uidvalidity, uidnext, highestmodseq, recent_uid FROM folders;
    DROP TABLE folders;
    ALTER TABLE folders_v3 RENAME TO folders;
    CREATE INDEX mail_content ON mail (content);
    ",
    ),
    // 4: each message's header section sealed apart too, so a header-only FETCH (a mail
    // client's message list) opens a few hundred bytes, not the message. Older rows have
    // none and are read whole.
    Step::Sql(
        "
    ALTER TABLE contents ADD COLUMN head_nonce BLOB;
    ALTER TABLE contents ADD COLUMN head BLOB;
    ",
    ),
    // 5: a message with large attachments keeps them once, as the blobs' sealed chunks
    // (`blob_chunks`), and only where they go (sealed apart) beside the rest of it.
    Step::Sql(
        "
    ALTER TABLE contents ADD COLUMN pieces_nonce BLOB;
    ALTER TABLE contents ADD COLUMN pieces BLOB;
    ",
    ),
    // 6: a message filed before its blobs are downloaded (the proxy downloads them later,
    // DECISIONS D76): its envelope is not acknowledged until they are kept.
    Step::Sql(
        "
    CREATE TABLE awaiting (envelope_id TEXT PRIMARY KEY, content INTEGER NOT NULL);
    CREATE INDEX awaiting_content ON awaiting (content);
    ",
    ),
    // 7: content ids taken in order from a counter, never reused, instead of at random: a
    // new row goes at the end of `contents` rather than into the middle of its B-tree,
    // where each insert rewrote a page of other messages (PERFORMANCE.md, issue 16).
    Step::Sql(
        "
    INSERT INTO counters (name, value) SELECT 'content', COALESCE(MAX(id), 0) FROM contents;
    ",
    ),
    // 8: mailbox state in step across devices (issue 18, `state`): each placement's id all
    // devices share, each content's envelope, last-writer-wins registers, the outbox of
    // this device's operations, and a Lamport clock. Placements from before get ids of
    // their own.
    Step::Sql(
        "
    ALTER TABLE mail ADD COLUMN gid TEXT;
    UPDATE mail SET gid = lower(hex(randomblob(16)));
    CREATE UNIQUE INDEX mail_gid ON mail (gid);
    ALTER TABLE contents ADD COLUMN origin TEXT;
    CREATE INDEX contents_origin ON contents (origin);
    CREATE TABLE registers (
        key TEXT NOT NULL, attr TEXT NOT NULL, clock INTEGER NOT NULL, device TEXT NOT NULL,
        value TEXT, PRIMARY KEY (key, attr)) WITHOUT ROWID;
    CREATE INDEX registers_content ON registers (attr, value);
    CREATE TABLE state_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL,
        carry INTEGER NOT NULL DEFAULT 0);
    INSERT INTO counters (name, value) VALUES ('clock', 0);
    ",
    ),
];

/// Decodes each mailbox and subscription name that is modified UTF-7 with an encoded run.
fn names_to_utf8(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    for table in ["folders", "subscriptions"] {
        let names: Vec<String> = tx
            .prepare(&format!("SELECT name FROM {table} WHERE name LIKE '%&%'"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for name in names {
            if let Some(decoded) = utf7::decode(&name).filter(|d| *d != name && valid_name(d)) {
                tx.execute(
                    &format!("UPDATE OR IGNORE {table} SET name = ?2 WHERE name = ?1"),
                    params![name, decoded],
                )?;
            }
        }
    }
    Ok(())
}

/// Why a mailbox operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    #[error("no mailbox named {0}")]
    NoSuchMailbox(String),
    #[error("a mailbox named {0} already exists")]
    AlreadyExists(String),
    #[error("{0} is a standard mailbox and cannot be renamed or deleted")]
    Protected(String),
    #[error("invalid mailbox name {0:?}")]
    InvalidName(String),
    #[error("{0} is not a special-use attribute this server supports")]
    UnsupportedUse(String),
    #[error(transparent)]
    Store(#[from] ClientError),
}

/// A mailbox as SELECT and LIST see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub special: Option<String>,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// The MODSEQ of the latest change in this mailbox (RFC 7162 HIGHESTMODSEQ).
    pub highestmodseq: u64,
    /// The first UID no session has yet seen as `\Recent`.
    pub recent_uid: u32,
}

/// One message's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailMeta {
    pub uid: u32,
    pub flags: Vec<String>,
    pub internal_date: i64,
    pub size: u32,
    pub modseq: u64,
}

/// A message ready to be filed: where, with which flags, and its content.
#[derive(Debug, Clone)]
pub struct NewMail {
    pub folder: String,
    pub flags: Vec<String>,
    pub internal_date: i64,
    /// The message, or with `pieces` the message without their bytes.
    pub raw: Vec<u8>,
    pub message_id: Option<String>,
    /// Blobs whose bytes belong in `raw`, in order: kept once, sealed as they came, in
    /// `blob_chunks`, and put in place as the message is read.
    pub pieces: Vec<Piece>,
}

impl NewMail {
    /// The message's size as served: `raw` and its pieces.
    pub fn size(&self) -> u64 {
        self.pieces.iter().fold(self.raw.len() as u64, |n, p| {
            n.saturating_add(crate::mime::written_len(&p.blob))
        })
    }
}

/// A blob's bytes in a message: they go at byte `at` of the stored rest of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    pub at: usize,
    pub blob: letterme_protocol::blob::BlobRef,
}

/// A synced envelope and the message it renders to, committed together (the chunks of
/// the blobs it names are kept before, as they are downloaded, or, when `awaiting`, later).
#[derive(Debug, Clone)]
pub struct Synced {
    pub stored: Stored,
    /// The message to file; none for an envelope that carries only mailbox state.
    pub mail: Option<NewMail>,
    /// Mailbox state from the account's other devices (PROTOCOL.md §9.6).
    pub state: Vec<letterme_protocol::state::StateOp>,
    /// Filed before its pieces' blobs are kept: served with their places filled until they
    /// are, and not to be acknowledged before.
    pub awaiting: bool,
}

/// The cache. Cheap to share behind an `Arc`; one connection, serialised by a mutex.
#[derive(Debug)]
pub struct Cache {
    conn: Mutex<Connection>,
    key: CacheKey,
    path: PathBuf,
    changes: watch::Sender<u64>,
    checkpoints: Checkpointer,
    /// This device's id, in the stamps of its operations ([`Cache::set_device`]).
    device: std::sync::OnceLock<String>,
    /// Whether operations are recorded for other devices ([`Cache::set_in_step`]).
    in_step: std::sync::atomic::AtomicBool,
}

/// Normalises a mailbox name: INBOX is case-insensitive (RFC 3501 §5.1).
pub fn normalize_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}

/// INBOX, Sent, Drafts, Trash, Junk and Archive cannot be renamed or deleted.
fn is_standard(name: &str) -> bool {
    STANDARD_MAILBOXES.iter().any(|(n, _)| *n == name)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MAILBOX_NAME
        && !name.starts_with(DELIMITER)
        && !name.ends_with(DELIMITER)
        && !name.contains("//")
        && !name.chars().any(|c| c.is_control() || c == '*' || c == '%')
}

/// Whether `flags` holds `flag`; flags compare without regard to case (RFC 3501 §2.3.2).
pub fn has_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// The stored form of a flag set: sorted, once each, never `\Recent` (a session property).
fn flags_text(flags: &[String]) -> String {
    let mut set: Vec<&str> = Vec::with_capacity(flags.len());
    for f in flags {
        if !f.eq_ignore_ascii_case("\\Recent") && !set.iter().any(|s| s.eq_ignore_ascii_case(f)) {
            set.push(f);
        }
    }
    set.sort_unstable();
    set.join(" ")
}

fn flags_vec(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Cache {
    pub fn open(path: &Path, key: CacheKey) -> Result<Self, ClientError> {
        let err = |e: rusqlite::Error| ClientError::store(path, e);
        let mut conn = open_db(path)?;
        // A new cache is made, and an older one brought up to date, in one transaction: one
        // commit, all or nothing. The proxy and a CLI command may open the cache at once; the
        // transaction takes the write lock first (`open_db`), so the second waits and then
        // finds everything done.
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        migrate(&tx).map_err(err)?;
        for (name, special) in STANDARD_MAILBOXES {
            if folder_by_name(&tx, name).map_err(err)?.is_none() {
                insert_folder(&tx, name, special).map_err(err)?;
                tx.execute(
                    "INSERT OR IGNORE INTO subscriptions (name) VALUES (?1)",
                    [name],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        // Every statement the cache runs stays prepared (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(128);
        // The WAL is copied into the database file on a thread of its own, nudged after
        // the commits that write much (a sync page, blob chunks, whatever a mail client sees
        // change): a sync's commits then return once their WAL frames are on disk, and the
        // copy runs beside the next page's work (DECISIONS D19).
        let checkpoints =
            Checkpointer::start(&conn, open_db(path)?, "letterme-checkpoint", WAL_BACKSTOP)
                .map_err(|e| ClientError::Io(format!("cannot start the checkpoint thread: {e}")))?;
        let cache = Self {
            conn: Mutex::new(conn),
            key,
            path: path.to_owned(),
            changes: watch::channel(0).0,
            checkpoints,
            device: std::sync::OnceLock::new(),
            in_step: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn err(&self, e: rusqlite::Error) -> ClientError {
        ClientError::store(&self.path, e)
    }

    /// Changes to the cache: the value grows on every commit.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
        self.checkpoints.nudge();
    }

    pub fn folders(&self) -> Result<Vec<Folder>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {FOLDER_COLUMNS} FROM folders ORDER BY name = 'INBOX' DESC, name"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], folder_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub fn folder(&self, name: &str) -> Result<Option<Folder>, ClientError> {
        folder_by_name(&self.lock(), &normalize_name(name)).map_err(|e| self.err(e))
    }

    fn need_folder(&self, c: &Connection, name: &str) -> Result<Folder, MailboxError> {
        folder_by_name(c, &normalize_name(name))
            .map_err(|e| self.err(e))?
            .ok_or_else(|| MailboxError::NoSuchMailbox(name.to_owned()))
    }

    /// CREATE (RFC 3501 §6.3.3), optionally with a special use (RFC 6154 §3). A new mailbox
    /// is not subscribed.
    pub fn create_folder(&self, name: &str, special: Option<&str>) -> Result<(), MailboxError> {
        let name = normalize_name(name.trim_end_matches(DELIMITER));
        if !valid_name(&name) {
            return Err(MailboxError::InvalidName(name));
        }
        let special = match special {
            None => None,
            Some(s) => Some(
                *SPECIAL_USES
                    .iter()
                    .find(|u| u.eq_ignore_ascii_case(s))
                    .ok_or_else(|| MailboxError::UnsupportedUse(s.to_owned()))?,
            ),
        };
        let mut c = self.lock();
        if folder_by_name(&c, &name)
            .map_err(|e| self.err(e))?
            .is_some()
        {
            return Err(MailboxError::AlreadyExists(name));
        }
        let tx = c.transaction().map_err(|e| self.err(e))?;
        insert_folder(&tx, &name, special).map_err(|e| self.err(e))?;
        self.emit(&tx, |stamp| StateOp::CreateFolder {
            name,
            special: special.map(str::to_owned),
            stamp,
        })
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// RENAME (RFC 3501 §6.3.5); children and subscriptions move with their parent.
    pub fn rename_folder(&self, from: &str, to: &str) -> Result<(), MailboxError> {
        let to = normalize_name(to);
        if !valid_name(&to) || to == "INBOX" {
            return Err(MailboxError::InvalidName(to));
        }
        let mut c = self.lock();
        let f = self.need_folder(&c, from)?;
        if is_standard(&f.name) {
            return Err(MailboxError::Protected(f.name));
        }
        // The new name, and each child's new name, must be free.
        let prefix = format!("{}{DELIMITER}", f.name);
        let taken: Option<String> = c
            .query_row(
                "SELECT name FROM folders WHERE name = ?3 OR (substr(name, 1, length(?1)) = ?1
                   AND ?2 || substr(name, length(?1)) IN (SELECT name FROM folders)) LIMIT 1",
                params![prefix, to, to],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if taken.is_some() {
            return Err(MailboxError::AlreadyExists(to));
        }
        let tx = c.transaction().map_err(|e| self.err(e))?;
        // For the other devices: each folder made under its new name, its messages moved
        // there, the old name deleted.
        let names = state::renamed(&tx, &f.name, &to).map_err(|e| self.err(e))?;
        // The mailbox itself and every name under it, in folders and in subscriptions (where
        // an old subscription to a new name gives way).
        for (table, verb) in [
            ("folders", "UPDATE"),
            ("subscriptions", "UPDATE OR REPLACE"),
        ] {
            tx.execute(
                &format!(
                    "{verb} {table} SET name = ?3 || substr(name, length(?1) + 1)
                     WHERE name = ?1 OR substr(name, 1, length(?2)) = ?2"
                ),
                params![f.name, prefix, to],
            )
            .map_err(|e| self.err(e))?;
        }
        if self.in_step() {
            for (old, new) in names {
                let special: Option<String> = tx
                    .query_row("SELECT special FROM folders WHERE name = ?1", [&new], |r| {
                        r.get(0)
                    })
                    .map_err(|e| self.err(e))?;
                self.emit(&tx, |stamp| StateOp::CreateFolder {
                    name: new.clone(),
                    special,
                    stamp,
                })
                .map_err(|e| self.err(e))?;
                let gids: Vec<String> = tx
                    .prepare(
                        "SELECT m.gid FROM mail m JOIN folders f ON f.id = m.folder
                          WHERE f.name = ?1 AND m.gid IS NOT NULL",
                    )
                    .and_then(|mut s| s.query_map([&new], |r| r.get(0))?.collect())
                    .map_err(|e| self.err(e))?;
                for gid in gids {
                    self.emit(&tx, |stamp| StateOp::Move {
                        gid,
                        folder: new.clone(),
                        stamp,
                    })
                    .map_err(|e| self.err(e))?;
                }
                self.emit(&tx, |stamp| StateOp::DeleteFolder { name: old, stamp })
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// DELETE (RFC 3501 §6.3.4): the mailbox and its messages. Its subscription stays.
    pub fn delete_folder(&self, name: &str) -> Result<(), MailboxError> {
        let mut c = self.lock();
        let f = self.need_folder(&c, name)?;
        if is_standard(&f.name) {
            return Err(MailboxError::Protected(f.name));
        }
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let uids: Vec<u32> = messages::uids_in(&tx, f.id).map_err(|e| self.err(e))?;
        messages::remove(&tx, &self.key, f.id, &uids).map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM vanished WHERE folder = ?1", [f.id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM folders WHERE id = ?1", [f.id])
            .map_err(|e| self.err(e))?;
        self.emit(&tx, |stamp| StateOp::DeleteFolder {
            name: f.name.clone(),
            stamp,
        })
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// SUBSCRIBE and UNSUBSCRIBE (RFC 3501 §6.3.6, §6.3.7): a list of names, whether or not
    /// a mailbox has that name; unsubscribing a name not on it succeeds.
    pub fn subscribe(&self, name: &str, on: bool) -> Result<(), MailboxError> {
        let name = normalize_name(name.trim_end_matches(DELIMITER));
        if !valid_name(&name) {
            return Err(MailboxError::InvalidName(name));
        }
        let sql = if on {
            "INSERT OR IGNORE INTO subscriptions (name) VALUES (?1)"
        } else {
            "DELETE FROM subscriptions WHERE name = ?1"
        };
        self.lock().execute(sql, [&name]).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The subscribed names.
    pub fn subscriptions(&self) -> Result<BTreeSet<String>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached("SELECT name FROM subscriptions")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

/// Brings an older cache up to [`MIGRATIONS`] inside `tx`, which holds the write lock: the
/// version read under it is the one to start from.
fn migrate(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, step) in (1i64..).zip(MIGRATIONS) {
        if i <= version {
            continue;
        }
        match step {
            Step::Sql(sql) => tx.execute_batch(sql)?,
            Step::Rust(run) => run(tx)?,
        }
        tx.pragma_update(None, "user_version", i)?;
    }
    Ok(())
}

const FOLDER_COLUMNS: &str = "id, name, special, uidvalidity, uidnext, highestmodseq, recent_uid";

fn folder_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Folder> {
    Ok(Folder {
        id: r.get(0)?,
        name: r.get(1)?,
        special: r.get(2)?,
        uidvalidity: r.get(3)?,
        uidnext: r.get(4)?,
        highestmodseq: r.get::<_, i64>(5)? as u64,
        recent_uid: r.get(6)?,
    })
}

fn folder_by_name(c: &Connection, name: &str) -> rusqlite::Result<Option<Folder>> {
    c.prepare_cached(&format!(
        "SELECT {FOLDER_COLUMNS} FROM folders WHERE name = ?1"
    ))?
    .query_row([name], folder_row)
    .optional()
}

fn folder_by_id(c: &Connection, id: i64) -> rusqlite::Result<Option<Folder>> {
    c.query_row(
        &format!("SELECT {FOLDER_COLUMNS} FROM folders WHERE id = ?1"),
        [id],
        folder_row,
    )
    .optional()
}

/// A new mailbox gets the next UIDVALIDITY from a counter that outlives deleted mailboxes,
/// so a name deleted and created again within a second still gets a new one (RFC 3501
/// §2.3.1.1). The counter starts from the clock so a cache rebuilt from scratch does not
/// repeat the values of the one it replaces.
fn insert_folder(c: &Connection, name: &str, special: Option<&str>) -> rusqlite::Result<()> {
    let now = crate::now().min(u64::from(u32::MAX - 1)) as i64;
    let last: i64 = c.query_row(
        "SELECT value FROM counters WHERE name = 'uidvalidity'",
        [],
        |r| r.get(0),
    )?;
    let validity = now.max(last + 1);
    c.execute(
        "UPDATE counters SET value = ?1 WHERE name = 'uidvalidity'",
        [validity],
    )?;
    c.execute(
        "INSERT INTO folders (name, special, uidvalidity, uidnext, highestmodseq, recent_uid)
         VALUES (?1, ?2, ?3, 1, 1, 1)",
        params![name, special, validity],
    )?;
    Ok(())
}
