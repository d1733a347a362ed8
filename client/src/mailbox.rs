//! The local mailbox: synced envelopes, still sealed, in SQLite in the profile directory.
//!
//! Messages stay encrypted at rest here exactly as they travelled; `list` and `read` open
//! them with the unlocked keys. A message is committed here (synchronous=FULL) before the
//! server is told to delete it (DESIGN.md §7.3).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::ClientError;

/// A stored message's metadata.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub sender: String,
    pub received: u64,
    pub envelope: Vec<u8>,
    pub signer_key: [u8; 32],
}

/// The sealed envelopes and the refused ones.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, sender TEXT NOT NULL, received INTEGER NOT NULL,
    stored_at INTEGER NOT NULL, envelope BLOB NOT NULL, signer_key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blob_chunks (
    blob TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (blob, n));
CREATE TABLE IF NOT EXISTS refused (
    id TEXT NOT NULL, sender TEXT NOT NULL, reason TEXT NOT NULL,
    envelope BLOB NOT NULL, stored_at INTEGER NOT NULL);
";

pub(crate) fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        id: r.get(0)?,
        sender: r.get(1)?,
        received: r.get::<_, i64>(2)? as u64,
        envelope: r.get(3)?,
        signer_key: r.get(4)?,
    })
}

/// Opens `mail.db` durable (WAL, synchronous=FULL) with the envelope tables in place.
pub(crate) fn open_db(path: &Path) -> Result<Connection, ClientError> {
    let err = |e: rusqlite::Error| ClientError::store(path, e);
    let mut conn = Connection::open(path).map_err(err)?;
    // Every transaction takes the write lock as it begins, waiting for it (the busy
    // timeout). A deferred one that read first and then wrote could not wait: SQLite
    // answers "database is locked" at once while another connection writes — the proxy
    // beside a CLI command, or the checkpoint thread emptying the WAL.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    // One transaction: a new file is made with one commit (one wait for the disk), not one
    // per table.
    let tx = conn.transaction().map_err(err)?;
    tx.execute_batch(SCHEMA).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(conn)
}

#[derive(Debug)]
pub struct Mailbox {
    conn: Connection,
    path: PathBuf,
}

impl Mailbox {
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let conn = open_db(path)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> ClientError {
        ClientError::store(&self.path, e)
    }

    /// The stored envelope bytes for `id`, if any.
    pub fn envelope(&self, id: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.conn
            .prepare_cached("SELECT envelope FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Keeps a message that failed verification, with the reason, instead of its content.
    pub fn refuse(
        &self,
        id: &str,
        sender: &str,
        reason: &str,
        envelope: &[u8],
        now: u64,
    ) -> Result<(), ClientError> {
        self.conn
            .execute(
                "INSERT INTO refused (id, sender, reason, envelope, stored_at)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (SELECT 1 FROM refused WHERE id = ?1)",
                params![id, sender, reason, envelope, now as i64],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The stored envelope `id`, if any.
    pub fn stored(&self, id: &str) -> Result<Option<Stored>, ClientError> {
        self.conn
            .prepare_cached(
                "SELECT id, sender, received, envelope, signer_key FROM messages WHERE id = ?1",
            )
            .and_then(|mut s| s.query_row([id], stored_row).optional())
            .map_err(|e| self.err(e))
    }

    pub fn all(&self) -> Result<Vec<Stored>, ClientError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, sender, received, envelope, signer_key FROM messages ORDER BY received, rowid")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], stored_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The sealed chunks of blob `id` kept for a stored message, in order; empty when none.
    pub fn blob_chunks(&self, id: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM blob_chunks WHERE blob = ?1 ORDER BY n")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Finds one message by id or unique id prefix.
    pub fn find(&self, prefix: &str) -> Result<Stored, ClientError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ClientError::NoSuchMessage(prefix));
        }
        let matches: Vec<Stored> = self
            .all()?
            .into_iter()
            .filter(|m| m.id.starts_with(&prefix))
            .collect();
        match matches.len() {
            0 => Err(ClientError::NoSuchMessage(prefix)),
            1 => Ok(matches.into_iter().next().expect("one element")),
            _ => Err(ClientError::AmbiguousId(prefix)),
        }
    }
}
