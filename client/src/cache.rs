//! The local mail cache the proxy serves: mailboxes, stable UIDs, flags, and each message
//! rendered as RFC 5322, encrypted at rest.
//!
//! Content is sealed with AES-256-GCM (ring; AES-NI makes serving a whole mailbox cheap)
//! under a key derived from the identity secret, which only the passphrase unlocks; the
//! associated data binds each ciphertext to its row; nonces are random (96 bits).
//! Metadata (UIDs, flags, dates, sizes) stays in the clear so listing needs no decryption.
//! UIDVALIDITY is fixed when a mailbox is created and UIDs only grow (RFC 3501 §2.3.1.1),
//! so clients' caches stay valid across restarts. Every change bumps a counter that IMAP
//! sessions watch (IDLE, NOOP).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use letterme_protocol::SigningKeypair;
use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::mailbox::{Stored, open_db};

const CACHE_AAD: &[u8] = b"letterme/v1/cache\0";
const KEY_CONTEXT: &[u8] = b"letterme/v1/cache-key\0";

/// The mailboxes every account has, with their RFC 6154 special-use attributes.
pub const STANDARD_MAILBOXES: [(&str, Option<&str>); 6] = [
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
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

/// The content key. `Debug` never shows it.
pub struct CacheKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

impl CacheKey {
    /// Derived from the identity secret, so the passphrase protects it.
    pub fn derive(identity: &SigningKeypair) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_CONTEXT);
        h.update(*identity.secret_bytes());
        Self(Zeroizing::new(h.finalize().into()))
    }

    fn cipher(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*self.0).expect("32-byte key"))
    }

    fn aad(id: i64) -> Vec<u8> {
        let mut aad = CACHE_AAD.to_vec();
        aad.extend_from_slice(&id.to_be_bytes());
        aad
    }

    fn seal(&self, id: i64, plain: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let mut data = plain.to_vec();
        self.cipher()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(id)),
                &mut data,
            )
            .expect("encrypts");
        (nonce, data)
    }

    fn open(&self, id: i64, nonce: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = data.to_vec();
        let len = self
            .cipher()
            .open_in_place(nonce, Aad::from(Self::aad(id)), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }

    /// A keyed hash of a Message-ID, so duplicates are found without storing the id.
    fn msgid_hash(&self, message_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"letterme/v1/msgid\0");
        h.update(*self.0);
        h.update(message_id.trim().as_bytes());
        hex(&h.finalize()[..16])
    }
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
    #[error(transparent)]
    Store(#[from] ClientError),
}

/// A mailbox as SELECT and LIST see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub special: Option<String>,
    pub subscribed: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
}

/// One message's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailMeta {
    pub uid: u32,
    pub flags: Vec<String>,
    pub internal_date: i64,
    pub size: u32,
}

/// A message ready to be filed: where, with which flags, and its content.
#[derive(Debug, Clone)]
pub struct NewMail {
    pub folder: String,
    pub flags: Vec<String>,
    pub internal_date: i64,
    pub raw: Vec<u8>,
    pub message_id: Option<String>,
}

/// A synced envelope and the message it renders to, committed together.
#[derive(Debug, Clone)]
pub struct Synced {
    pub stored: Stored,
    pub mail: NewMail,
}

/// The cache. Cheap to share behind an `Arc`; one connection, serialised by a mutex.
#[derive(Debug)]
pub struct Cache {
    conn: Mutex<Connection>,
    key: CacheKey,
    path: PathBuf,
    changes: watch::Sender<u64>,
}

/// Normalises a mailbox name: INBOX is case-insensitive (RFC 3501 §5.1).
pub fn normalize_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MAILBOX_NAME
        && !name.starts_with(DELIMITER)
        && !name.ends_with(DELIMITER)
        && !name.contains("//")
        && !name.chars().any(|c| c.is_control() || c == '*' || c == '%')
}

fn flags_text(flags: &[String]) -> String {
    let set: BTreeSet<&str> = flags
        .iter()
        .map(String::as_str)
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    set.into_iter().collect::<Vec<_>>().join(" ")
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
        let conn = open_db(path)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let cache = Self {
            conn: Mutex::new(conn),
            key,
            path: path.to_owned(),
            changes: watch::channel(0).0,
        };
        for (name, special) in STANDARD_MAILBOXES {
            let c = cache.lock();
            let exists: bool = c
                .query_row("SELECT 1 FROM folders WHERE name = ?1", [name], |_| Ok(()))
                .optional()
                .map_err(err)?
                .is_some();
            if !exists {
                insert_folder(&c, name, special).map_err(err)?;
            }
        }
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
    }

    pub fn folders(&self) -> Result<Vec<Folder>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(
                "SELECT id, name, special, subscribed, uidvalidity, uidnext FROM folders ORDER BY name = 'INBOX' DESC, name",
            )
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

    pub fn create_folder(&self, name: &str) -> Result<(), MailboxError> {
        let name = normalize_name(name.trim_end_matches(DELIMITER));
        if !valid_name(&name) {
            return Err(MailboxError::InvalidName(name));
        }
        let c = self.lock();
        if folder_by_name(&c, &name)
            .map_err(|e| self.err(e))?
            .is_some()
        {
            return Err(MailboxError::AlreadyExists(name));
        }
        insert_folder(&c, &name, None).map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// RENAME (RFC 3501 §6.3.5); children move with their parent.
    pub fn rename_folder(&self, from: &str, to: &str) -> Result<(), MailboxError> {
        let to = normalize_name(to);
        if !valid_name(&to) || to == "INBOX" {
            return Err(MailboxError::InvalidName(to));
        }
        let mut c = self.lock();
        let f = self.need_folder(&c, from)?;
        if f.special.is_some() || f.name == "INBOX" {
            return Err(MailboxError::Protected(f.name));
        }
        if folder_by_name(&c, &to).map_err(|e| self.err(e))?.is_some() {
            return Err(MailboxError::AlreadyExists(to));
        }
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let prefix = format!("{}{DELIMITER}", f.name);
        let children: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare("SELECT id, name FROM folders WHERE substr(name, 1, ?2) = ?1")
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![prefix, prefix.len() as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?
        };
        tx.execute(
            "UPDATE folders SET name = ?2 WHERE id = ?1",
            params![f.id, to],
        )
        .map_err(|e| self.err(e))?;
        for (id, name) in children {
            let renamed = format!("{to}{}", &name[f.name.len()..]);
            tx.execute(
                "UPDATE folders SET name = ?2 WHERE id = ?1",
                params![id, renamed],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// DELETE (RFC 3501 §6.3.4): the mailbox and its messages.
    pub fn delete_folder(&self, name: &str) -> Result<(), MailboxError> {
        let mut c = self.lock();
        let f = self.need_folder(&c, name)?;
        if f.special.is_some() || f.name == "INBOX" {
            return Err(MailboxError::Protected(f.name));
        }
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let uids: Vec<u32> = uids_in(&tx, f.id).map_err(|e| self.err(e))?;
        remove(&tx, f.id, &uids).map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM folders WHERE id = ?1", [f.id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    pub fn subscribe(&self, name: &str, on: bool) -> Result<(), MailboxError> {
        let c = self.lock();
        let f = self.need_folder(&c, name)?;
        c.execute(
            "UPDATE folders SET subscribed = ?2 WHERE id = ?1",
            params![f.id, i64::from(on)],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every message in a folder, by UID.
    pub fn messages(&self, folder: i64) -> Result<Vec<MailMeta>, ClientError> {
        self.messages_between(folder, 1, u32::MAX)
    }

    /// The metadata of the messages with UIDs in `lo..=hi`, by UID.
    pub fn messages_between(
        &self,
        folder: i64,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MailMeta>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(
                "SELECT uid, flags, internal_date, size FROM mail
                 WHERE folder = ?1 AND uid BETWEEN ?2 AND ?3 ORDER BY uid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![folder, lo, hi], |r| {
                Ok(MailMeta {
                    uid: r.get(0)?,
                    flags: flags_vec(&r.get::<_, String>(1)?),
                    internal_date: r.get(2)?,
                    size: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The decrypted content of the given UIDs (missing ones are skipped), in UID order.
    /// One range scan covers the lowest to the highest UID asked for.
    pub fn contents(&self, folder: i64, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ClientError> {
        let (Some(&lo), Some(&hi)) = (uids.iter().min(), uids.iter().max()) else {
            return Ok(Vec::new());
        };
        let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(
                "SELECT m.uid, c.id, c.nonce, c.data FROM mail m JOIN contents c ON c.id = m.content
                 WHERE m.folder = ?1 AND m.uid BETWEEN ?2 AND ?3 ORDER BY m.uid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![folder, lo, hi])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(uids.len());
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let uid: u32 = r.get(0).map_err(|e| self.err(e))?;
            if !wanted.contains(&uid) {
                continue;
            }
            let id: i64 = r.get(1).map_err(|e| self.err(e))?;
            let nonce = r
                .get_ref(2)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| self.err(e.into()))?;
            let data = r
                .get_ref(3)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| self.err(e.into()))?;
            let plain = self.key.open(id, nonce, data).ok_or_else(|| {
                ClientError::store(
                    &self.path,
                    format!("message {uid} fails its integrity check"),
                )
            })?;
            out.push((uid, plain));
        }
        Ok(out)
    }

    /// Files one message (APPEND, a Sent copy). With a Message-ID already present in the
    /// folder, nothing is added and the existing UID is returned (`false`).
    pub fn append(&self, mail: &NewMail) -> Result<(u32, u32, bool), MailboxError> {
        let mut c = self.lock();
        let f = self.need_folder(&c, &mail.folder)?;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        if let Some(mid) = &mail.message_id {
            let hash = self.key.msgid_hash(mid);
            let existing: Option<u32> = tx
                .query_row(
                    "SELECT uid FROM mail WHERE folder = ?1 AND msgid_hash = ?2",
                    params![f.id, hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(uid) = existing {
                return Ok((f.uidvalidity, uid, false));
            }
        }
        let uid = self.file(&tx, f.id, mail).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok((f.uidvalidity, uid, true))
    }

    fn file(&self, tx: &Transaction<'_>, folder: i64, mail: &NewMail) -> rusqlite::Result<u32> {
        let id = i64::from_be_bytes(random_bytes::<8>()) & i64::MAX;
        let (nonce, data) = self.key.seal(id, &mail.raw);
        tx.execute(
            "INSERT INTO contents (id, nonce, data) VALUES (?1, ?2, ?3)",
            params![id, nonce.as_slice(), data],
        )?;
        let uid = next_uid(tx, folder)?;
        let hash = mail.message_id.as_deref().map(|m| self.key.msgid_hash(m));
        tx.execute(
            "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                folder,
                uid,
                id,
                flags_text(&mail.flags),
                mail.internal_date,
                mail.raw.len() as i64,
                hash
            ],
        )?;
        Ok(uid)
    }

    /// Commits synced envelopes and their rendered messages in one transaction, so a crash
    /// leaves either both or neither. Envelopes already stored are skipped.
    pub fn commit_synced(&self, items: &[Synced], now: u64) -> Result<(), ClientError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        for item in items {
            let s = &item.stored;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO messages (id, sender, received, stored_at, envelope, signer_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![s.id, s.sender, s.received as i64, now as i64, s.envelope, s.signer_key.as_slice()],
                )
                .map_err(|e| self.err(e))?;
            if inserted == 1 {
                self.file_rendered(&tx, &s.id, &item.mail)
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// Files the rendered form of an envelope already in `messages` (backfill).
    pub fn commit_rendered(&self, envelope_id: &str, mail: &NewMail) -> Result<(), ClientError> {
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        self.file_rendered(&tx, envelope_id, mail)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    fn file_rendered(
        &self,
        tx: &Transaction<'_>,
        envelope_id: &str,
        mail: &NewMail,
    ) -> rusqlite::Result<()> {
        if tx.execute(
            "INSERT OR IGNORE INTO rendered (envelope_id) VALUES (?1)",
            [envelope_id],
        )? == 0
        {
            return Ok(());
        }
        let folder = folder_by_name(tx, &mail.folder)?
            .map_or_else(
                || folder_by_name(tx, "INBOX").map(|f| f.map(|f| f.id)),
                |f| Ok(Some(f.id)),
            )?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        self.file(tx, folder, mail).map(|_| ())
    }

    /// Envelopes synced before the cache existed (or by an older version).
    pub fn unrendered(&self) -> Result<Vec<Stored>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare(
                "SELECT id, sender, received, envelope, signer_key FROM messages
                 WHERE id NOT IN (SELECT envelope_id FROM rendered) ORDER BY received, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], crate::mailbox::stored_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Replaces the flags of the given UIDs; returns the new flags of each changed message.
    pub fn set_flags(
        &self,
        folder: i64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<(), ClientError> {
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE mail SET flags = ?3 WHERE folder = ?1 AND uid = ?2")
                .map_err(|e| self.err(e))?;
            for (uid, flags) in changes {
                stmt.execute(params![folder, uid, flags_text(flags)])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// COPY (and the first half of MOVE): new UIDs in the target, content shared.
    /// Returns (target UIDVALIDITY, [(source uid, new uid)]).
    pub fn copy(
        &self,
        from: i64,
        uids: &[u32],
        to: &str,
        remove_source: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), MailboxError> {
        let mut c = self.lock();
        let target = self.need_folder(&c, to)?;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut pairs = Vec::with_capacity(uids.len());
        for &uid in uids {
            let row: Option<(i64, String, i64, i64, Option<String>)> = tx
                .query_row(
                    "SELECT content, flags, internal_date, size, msgid_hash FROM mail WHERE folder = ?1 AND uid = ?2",
                    params![from, uid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            let Some((content, flags, date, size, hash)) = row else {
                continue;
            };
            let new = next_uid(&tx, target.id).map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![target.id, new, content, flags, date, size, hash],
            )
            .map_err(|e| self.err(e))?;
            pairs.push((uid, new));
        }
        if remove_source {
            let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            remove(&tx, from, &moved).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok((target.uidvalidity, pairs))
    }

    /// Removes messages for good (EXPUNGE).
    pub fn expunge(&self, folder: i64, uids: &[u32]) -> Result<(), ClientError> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        remove(&tx, folder, uids).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }
}

fn folder_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Folder> {
    Ok(Folder {
        id: r.get(0)?,
        name: r.get(1)?,
        special: r.get(2)?,
        subscribed: r.get::<_, i64>(3)? != 0,
        uidvalidity: r.get(4)?,
        uidnext: r.get(5)?,
    })
}

fn folder_by_name(c: &Connection, name: &str) -> rusqlite::Result<Option<Folder>> {
    c.query_row(
        "SELECT id, name, special, subscribed, uidvalidity, uidnext FROM folders WHERE name = ?1",
        [name],
        folder_row,
    )
    .optional()
}

/// A new mailbox gets a UIDVALIDITY no earlier mailbox of the same name had.
fn insert_folder(c: &Connection, name: &str, special: Option<&str>) -> rusqlite::Result<()> {
    let now = crate::now().min(u64::from(u32::MAX - 1)) as i64;
    let last: i64 = c.query_row(
        "SELECT COALESCE(MAX(uidvalidity), 0) FROM folders",
        [],
        |r| r.get(0),
    )?;
    c.execute(
        "INSERT INTO folders (name, special, subscribed, uidvalidity, uidnext) VALUES (?1, ?2, 1, ?3, 1)",
        params![name, special, now.max(last + 1)],
    )?;
    Ok(())
}

fn next_uid(tx: &Transaction<'_>, folder: i64) -> rusqlite::Result<u32> {
    let uid: u32 = tx.query_row("SELECT uidnext FROM folders WHERE id = ?1", [folder], |r| {
        r.get(0)
    })?;
    tx.execute(
        "UPDATE folders SET uidnext = uidnext + 1 WHERE id = ?1",
        [folder],
    )?;
    Ok(uid)
}

fn uids_in(c: &Connection, folder: i64) -> rusqlite::Result<Vec<u32>> {
    let mut stmt = c.prepare_cached("SELECT uid FROM mail WHERE folder = ?1")?;
    stmt.query_map([folder], |r| r.get(0))?.collect()
}

/// Deletes rows and any content no other row refers to.
fn remove(tx: &Transaction<'_>, folder: i64, uids: &[u32]) -> rusqlite::Result<()> {
    let mut get = tx.prepare_cached("SELECT content FROM mail WHERE folder = ?1 AND uid = ?2")?;
    let mut del = tx.prepare_cached("DELETE FROM mail WHERE folder = ?1 AND uid = ?2")?;
    let mut gc = tx.prepare_cached(
        "DELETE FROM contents WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM mail WHERE content = ?1)",
    )?;
    for &uid in uids {
        if let Some(content) = get
            .query_row(params![folder, uid], |r| r.get::<_, i64>(0))
            .optional()?
        {
            del.execute(params![folder, uid])?;
            gc.execute([content])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
            c.contents(inbox.id, &[uid]).unwrap()[0].1,
            canary.as_bytes()
        );
        // A different key cannot read it.
        let other = Cache::open(
            &dir.path().join("mail.db"),
            CacheKey::derive(&SigningKeypair::generate()),
        )
        .unwrap();
        assert!(other.contents(inbox.id, &[uid]).is_err());
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
            c.contents(archive.id, &[pairs[0].1]).unwrap()[0].1,
            b"Subject: x\r\n\r\nx"
        );
        // UIDs are never reused.
        let (_, again, _) = c.append(&mail("Sent", "y", None)).unwrap();
        assert!(again > a);
    }

    #[test]
    fn folders_create_rename_delete() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(&dir);
        c.create_folder("Projects").unwrap();
        c.create_folder("Projects/2026").unwrap();
        assert!(matches!(
            c.create_folder("Projects"),
            Err(MailboxError::AlreadyExists(_))
        ));
        assert!(matches!(
            c.delete_folder("Sent"),
            Err(MailboxError::Protected(_))
        ));
        assert!(matches!(
            c.create_folder("a*b"),
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
}
