//! All of the server's SQL: every table and query lives under `store/`, behind `Store`
//! methods whose signatures carry only the crate's own types, so another backend can later
//! implement the same surface. One file per group of tables: [`accounts`], [`keys`],
//! [`kt`], [`mailbox`], [`federation`] (the federation queue and received transactions),
//! [`smtp`] (the SMTP queue and usage), [`blocks`].
//!
//! SQLite with group commit. One writer thread owns the only write connection. Concurrent
//! writes queue up and are committed together — each in its own savepoint when it has
//! neighbours, so one failing write never spoils them (a write alone is rolled back with
//! its transaction) — in a single transaction with `synchronous=FULL`,
//! i.e. one fsync for the whole group. A caller is answered only after that commit, so
//! every acknowledgement the API gives is durable (DESIGN.md §7.2). Reads use a small pool
//! of connections, which WAL lets run beside the writer.

mod accounts;
mod blobs;
mod blocks;
mod devices;
mod federation;
mod keys;
mod kt;
mod mailbox;
mod smtp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use letterme_sqlite::Checkpointer;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};
use tokio::sync::{Notify, mpsc, oneshot};

pub use accounts::AccountRow;
pub use blobs::{
    BLOB_UPLOAD_KEEP, BlobStatus, MAX_BLOBS_ALL_PEERS, MAX_BLOBS_PER_OWNER, MAX_BLOBS_PER_PEER,
    NewBlob,
};
pub use devices::{DeviceRow, Inbox};
pub use federation::{BatchLimit, Claimed, FederationRow, Incoming, NewFederationRow, RowOutcome};
pub use kt::ForkRow;
pub use mailbox::{NewDelivery, Pending, PurgeStats};
pub use smtp::{NewSmtp, SmtpKind, SmtpOutcome, SmtpRow};

/// Writes committed in one transaction at most.
pub const MAX_GROUP: usize = 512;

/// Writes waiting for the writer at most; callers wait (back-pressure) beyond.
pub const WRITE_QUEUE: usize = 4096;

/// Idle read connections kept.
const READ_POOL: usize = 8;

/// Typed storage outcomes the API maps to its errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the address is already registered")]
    AddressTaken,
    #[error("unknown recipients: {}", .0.join(", "))]
    UnknownRecipients(Vec<String>),
    #[error("{0} is over quota")]
    QuotaExceeded(String),
    #[error("this envelope id was already accepted")]
    Replay,
    #[error("this invite token was already used")]
    InviteUsed,
    #[error("{sender} reached the daily limit of {cap} recipients outside letter.me")]
    DailyCap { sender: String, cap: u32 },
    #[error("the store is shutting down")]
    Closed,
    #[error("the keys of {0} changed meanwhile; try again")]
    KeyConflict(String),
    #[error("no account {0}")]
    NoAccount(String),
    /// A device key the account had before: a removed device is not added again.
    #[error("device {0} was the account's before; link the machine anew")]
    DeviceKnown(String),
    #[error("{sender} has {queued} bytes waiting for other domains; the limit is {limit}")]
    QueueFull {
        sender: String,
        queued: u64,
        limit: u64,
    },
    /// An upload that does not add up: a manifest that does not hash to the id or does not
    /// fit the size, a size over the limit.
    #[error("{0}")]
    BadBlob(String),
    /// A chunk that is not the one the manifest names (its size or its hash).
    #[error("{0}")]
    ChunkMismatch(String),
    #[error("{owner} has {used} bytes of blobs no message refers to yet; the limit is {limit}")]
    BlobLimit {
        owner: String,
        used: u64,
        limit: u64,
    },
    /// No such blob, or not one the caller may see.
    #[error("no such blob")]
    NoBlob,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../../migrations/0001_init.sql")),
        M::up(include_str!("../../../migrations/0002_federation.sql")),
        M::up(include_str!("../../../migrations/0003_outbound.sql")),
        M::up(include_str!("../../../migrations/0004_kt.sql")),
        M::up(include_str!("../../../migrations/0005_kt_witness.sql")),
        M::up(include_str!(
            "../../../migrations/0006_federation_queue.sql"
        )),
        M::up(include_str!(
            "../../../migrations/0007_federated_identity.sql"
        )),
        M::up(include_str!(
            "../../../migrations/0008_federation_envelopes.sql"
        )),
        M::up(include_str!(
            "../../../migrations/0009_deliveries_by_message.sql"
        )),
        M::up(include_str!("../../../migrations/0010_blobs.sql")),
        M::up(include_str!("../../../migrations/0011_envelope_blobs.sql")),
        M::up(include_str!("../../../migrations/0012_federated_blobs.sql")),
        M::up(include_str!("../../../migrations/0013_blob_offers.sql")),
        M::up(include_str!("../../../migrations/0014_blobs_brought.sql")),
        M::up(include_str!(
            "../../../migrations/0015_queued_blobs_once.sql"
        )),
        M::up(include_str!("../../../migrations/0016_devices.sql")),
    ])
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before we answer.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted ciphertext is overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// Long-poll waiters per recipient, woken after a delivery to them commits.
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A list stored one entry per line (recipient lists in the queues).
fn split_lines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|l| !l.is_empty())
        .map(ToOwned::to_owned)
        .collect()
}

fn writer_loop(conn: &Connection, mut rx: mpsc::Receiver<Job>, checkpoints: &Checkpointer) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Run nothing: dropping the jobs answers every caller "not committed".
            tracing::error!(error = %e, "cannot begin a write transaction");
            drop(batch);
            continue;
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut broken = None;
        // A job alone in its transaction needs no savepoint: if it fails, the whole
        // transaction is rolled back. A savepoint keeps the original of every page the job
        // changes in a statement journal, written to a temporary file past 64 KiB.
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        for job in batch {
            if !alone && let Err(e) = conn.execute_batch("SAVEPOINT op") {
                broken = Some(StoreError::from(e));
            }
            let (failed, done) = job(conn);
            let end = match (alone, failed) {
                (true, _) => Ok(()),
                (false, true) => conn.execute_batch("ROLLBACK TO op; RELEASE op"),
                (false, false) => conn.execute_batch("RELEASE op"),
            };
            if let Err(e) = end {
                broken = Some(StoreError::from(e));
            }
            failed_alone = alone && failed;
            completions.push(done);
        }
        let outcome = match broken {
            Some(e) => Err(e),
            // The lone job's own error is its answer; nothing of it is kept.
            // (SQLite may have rolled it back itself, after an I/O error say.)
            None if failed_alone && conn.is_autocommit() => Ok(()),
            None if failed_alone => conn.execute_batch("ROLLBACK").map_err(StoreError::from),
            None => conn.execute_batch("COMMIT").map_err(StoreError::from),
        };
        if outcome.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %outcome.as_ref().err().map(ToString::to_string).unwrap_or_default(), "group commit failed");
        }
        if outcome.is_ok() {
            checkpoints.nudge();
        }
        for done in completions {
            done(outcome.clone());
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations, starts the writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        // The WAL is copied into the database file on a thread of its own, nudged after each
        // group commit, rather than by the commit that crossed SQLite's threshold, which
        // held every writer queued behind it (DECISIONS D79).
        let checkpoint_conn = Connection::open(path)?;
        configure(&checkpoint_conn)?;
        let checkpoints = Checkpointer::start(
            &conn,
            checkpoint_conn,
            "letterme-db-checkpoint",
            letterme_sqlite::WAL_BACKSTOP_PAGES,
        )
        .map_err(|e| StoreError::Database(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Job>(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("letterme-db-writer".into())
            .spawn(move || writer_loop(&conn, rx, &checkpoints))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
            waiters: Arc::default(),
        })
    }

    /// Runs `f` inside the next group transaction; returns once it is committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let failed = result.is_err();
            let done: Completion = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (failed, done)
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| {
            StoreError::Database(
                "the write transaction could not begin; nothing was committed".into(),
            )
        })?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().ok().and_then(|mut v| v.pop());
            let conn = if let Some(c) = pooled {
                c
            } else {
                let c = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c
            };
            let out = f(&conn);
            if let Ok(mut v) = readers.lock()
                && v.len() < READ_POOL
            {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task failed: {e}")))?
    }

    /// A handle that is notified when mail for `recipient` commits. Take it *before*
    /// checking for mail, then await `notified()`, so no delivery slips in between.
    pub fn waiter(&self, recipient: &str) -> Arc<Notify> {
        let Ok(mut map) = self.waiters.lock() else {
            return Arc::new(Notify::new());
        };
        // Entries nobody waits on any more are dropped, so the map stays bounded by waiters.
        map.retain(|_, n| Arc::strong_count(n) > 1);
        map.entry(recipient.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    pub(crate) fn wake_recipients(&self, recipients: &[String]) {
        if let Ok(map) = self.waiters.lock() {
            for r in recipients {
                if let Some(n) = map.get(r) {
                    n.notify_waiters();
                }
            }
        }
    }

    /// Checks the database answers (health check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

#[cfg(test)]
mod tests;
