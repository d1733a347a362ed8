//! SQLite storage with group commit.
//!
//! One writer thread owns the only write connection. Concurrent writes queue up and are
//! committed together — each in its own savepoint, so one failing write never spoils its
//! neighbours — in a single transaction with `synchronous=FULL`, i.e. one fsync for the
//! whole group. A caller is answered only after that commit, so every acknowledgement the API
//! gives is durable (DESIGN.md §7.2). Reads use a small pool of connections, which WAL lets
//! run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use rusqlite_migration::{M, Migrations};
use std::collections::HashMap;

use tokio::sync::{Notify, mpsc, oneshot};

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
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/0001_init.sql")),
        M::up(include_str!("../../migrations/0002_federation.sql")),
        M::up(include_str!("../../migrations/0003_outbound.sql")),
        M::up(include_str!("../../migrations/0004_kt.sql")),
        M::up(include_str!("../../migrations/0005_kt_witness.sql")),
        M::up(include_str!("../../migrations/0006_federation_queue.sql")),
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

/// The evidence of a fork in another domain's key-transparency log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForkRow {
    pub domain: String,
    /// The checkpoint held (JSON).
    pub held: String,
    /// The one that contradicts it (JSON).
    pub other: String,
    pub source: String,
    pub reason: String,
    pub detected_at: u64,
}

/// A registered account's key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub address: String,
    pub identity_key: [u8; 32],
    pub encryption_key: [u8; 32],
    pub key_created: u64,
    pub key_version: u32,
    pub binding_signature: [u8; 64],
    pub attestation_sig: [u8; 64],
    pub registered_at: u64,
    pub usage_bytes: u64,
}

/// A sealed envelope to store for local recipients.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: [u8; 16],
    pub sender: String,
    pub envelope: Vec<u8>,
    pub recipients: Vec<String>,
    pub received: u64,
    pub quota: u64,
}

/// One pending message in a recipient's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub id: [u8; 16],
    pub sender: String,
    pub size: u64,
    pub received: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub deliveries: usize,
    pub seen_ids: usize,
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
        let (tx, rx) = mpsc::channel::<Job>(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("letterme-db-writer".into())
            .spawn(move || writer_loop(&conn, rx))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
            waiters: Arc::default(),
        })
    }

    /// Runs `f` inside the next group transaction; returns once it is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
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
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
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

    pub async fn server_key(
        &self,
        name: &'static str,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, String)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT public_key, sealed, kdf FROM server_keys WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })
        .await
    }

    /// A server key's public half, sealed secret, KDF and creation (or retirement) time.
    pub async fn server_key_row(
        &self,
        name: &'static str,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, String, u64)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT public_key, sealed, kdf, created FROM server_keys WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)),
            )
            .optional()?)
        })
        .await
    }

    pub async fn put_server_key(
        &self,
        name: &'static str,
        public_key: Vec<u8>,
        sealed: Vec<u8>,
        kdf: String,
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO server_keys (name, public_key, sealed, kdf, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, public_key, sealed, kdf, now as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn register(
        &self,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        self.write(move |c| register_in(c, &acc, invite_hash)).await
    }

    /// Registers and appends the key-transparency entry at `kt.0` in one transaction.
    pub async fn register_logged(
        &self,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            register_in(c, &acc, invite_hash)?;
            c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?
                .execute(params![kt.0 as i64, kt.1.as_slice(), kt.2])?;
            Ok(())
        })
        .await
    }

    /// Replaces an account's keys — the new key version, binding and attestation in `acc`
    /// — and appends the key-transparency entry at `kt.0`, in one transaction. Refused
    /// when the stored version is not `acc.key_version - 1` (a concurrent change).
    pub async fn change_keys_logged(
        &self,
        acc: AccountRow,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let current: Option<u32> = c
                .prepare_cached("SELECT key_version FROM accounts WHERE address = ?1")?
                .query_row([&acc.address], |r| r.get(0))
                .optional()?;
            match current {
                None => return Err(StoreError::NoAccount(acc.address.clone())),
                Some(v) if v.checked_add(1) != Some(acc.key_version) => {
                    return Err(StoreError::KeyConflict(acc.address.clone()));
                }
                Some(_) => {}
            }
            c.prepare_cached(
                "UPDATE accounts SET identity_key = ?2, encryption_key = ?3, key_created = ?4,
                        key_version = ?5, binding_signature = ?6, attestation_sig = ?7
                  WHERE address = ?1",
            )?
            .execute(params![
                acc.address,
                acc.identity_key.as_slice(),
                acc.encryption_key.as_slice(),
                acc.key_created as i64,
                acc.key_version,
                acc.binding_signature.as_slice(),
                acc.attestation_sig.as_slice(),
            ])?;
            c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?
                .execute(params![kt.0 as i64, kt.1.as_slice(), kt.2])?;
            Ok(())
        })
        .await
    }

    /// Every entry under `label`, oldest first, at most `limit` (the newest ones):
    /// (index, entry).
    pub async fn kt_under(
        &self,
        label: [u8; 32],
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            let mut rows: Vec<(u64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT idx, entry FROM kt_log WHERE label = ?1 ORDER BY idx DESC LIMIT ?2",
                )?
                .query_map(params![label.as_slice(), limit], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }

    /// The newest checkpoint of `domain` this server holds as a witness (JSON).
    pub async fn witnessed(&self, domain: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT checkpoint FROM kt_witness WHERE domain = ?1")?
                    .query_row([domain], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Keeps `checkpoint` (JSON) as the newest one of `domain`.
    pub async fn set_witnessed(
        &self,
        domain: String,
        checkpoint: String,
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO kt_witness (domain, checkpoint, seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (domain) DO UPDATE SET checkpoint = ?2, seen_at = ?3",
            )?
            .execute(params![domain, checkpoint, now as i64])?;
            Ok(())
        })
        .await
    }

    /// Records the evidence of a fork.
    pub async fn add_fork(&self, fork: ForkRow) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO kt_forks (domain, held, other, source, reason, detected_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                fork.domain,
                fork.held,
                fork.other,
                fork.source,
                fork.reason,
                fork.detected_at as i64
            ])?;
            Ok(())
        })
        .await
    }

    /// The forks caught in `domain`'s log (the newest 100).
    pub async fn forks(&self, domain: String) -> Result<Vec<ForkRow>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT domain, held, other, source, reason, detected_at FROM kt_forks
                  WHERE domain = ?1 ORDER BY id DESC LIMIT 100",
            )?
            .query_map([domain], |r| {
                Ok(ForkRow {
                    domain: r.get(0)?,
                    held: r.get(1)?,
                    other: r.get(2)?,
                    source: r.get(3)?,
                    reason: r.get(4)?,
                    detected_at: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Entries `start..end` of the log, in order.
    pub async fn kt_range(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT entry FROM kt_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?
            .query_map(params![start as i64, end as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every log entry, in order.
    pub async fn kt_entries(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT entry FROM kt_log ORDER BY idx")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// (accounts, distinct address labels in the log — domain-key entries have none):
    /// equal once every account is logged.
    pub async fn kt_coverage(&self) -> Result<(u64, u64), StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT (SELECT count(*) FROM accounts),
                        (SELECT count(DISTINCT label) FROM kt_log WHERE label != zeroblob(32))",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }

    /// Every label in the log.
    pub async fn kt_labels(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT label FROM kt_log")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every account's logged fields — (address, identity key, encryption key, key
    /// version, registered at) — oldest first.
    #[allow(clippy::type_complexity)]
    pub async fn accounts_for_log(
        &self,
    ) -> Result<Vec<(String, [u8; 32], [u8; 32], u32, u64)>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT address, identity_key, encryption_key, key_version, registered_at
                   FROM accounts ORDER BY registered_at, address",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, i64>(4)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Appends entries (index, label, entry) in one transaction.
    pub async fn kt_append(
        &self,
        entries: Vec<(u64, [u8; 32], Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let mut ins =
                c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?;
            for (i, l, e) in &entries {
                ins.execute(params![*i as i64, l.as_slice(), e])?;
            }
            Ok(())
        })
        .await
    }

    /// The newest entry under `label`: (index, entry).
    pub async fn kt_latest(&self, label: [u8; 32]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT idx, entry FROM kt_log WHERE label = ?1 ORDER BY idx DESC LIMIT 1",
            )?
            .query_row([label.as_slice()], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
        })
        .await
    }
}

fn register_in(
    c: &Connection,
    acc: &AccountRow,
    invite_hash: Option<[u8; 32]>,
) -> Result<(), StoreError> {
    if let Some(h) = invite_hash {
        let used = c.execute(
            "INSERT OR IGNORE INTO used_invites (token_hash, address, used_at) VALUES (?1, ?2, ?3)",
            params![h.as_slice(), acc.address, acc.registered_at as i64],
        )?;
        if used == 0 {
            return Err(StoreError::InviteUsed);
        }
    }
    let n = c.execute(
        "INSERT OR IGNORE INTO accounts (address, identity_key, encryption_key, key_created, key_version,
             binding_signature, attestation_sig, registered_at, usage_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
        params![
            acc.address,
            acc.identity_key.as_slice(),
            acc.encryption_key.as_slice(),
            acc.key_created as i64,
            acc.key_version,
            acc.binding_signature.as_slice(),
            acc.attestation_sig.as_slice(),
            acc.registered_at as i64,
        ],
    )?;
    if n == 0 {
        return Err(StoreError::AddressTaken);
    }
    Ok(())
}

impl Store {
    pub async fn account(&self, address: String) -> Result<Option<AccountRow>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT address, identity_key, encryption_key, key_created, key_version, binding_signature,
                        attestation_sig, registered_at, usage_bytes FROM accounts WHERE address = ?1",
            )?
            .query_row([address], |r| {
                Ok(AccountRow {
                    address: r.get(0)?,
                    identity_key: r.get(1)?,
                    encryption_key: r.get(2)?,
                    key_created: r.get::<_, i64>(3)? as u64,
                    key_version: r.get(4)?,
                    binding_signature: r.get(5)?,
                    attestation_sig: r.get(6)?,
                    registered_at: r.get::<_, i64>(7)? as u64,
                    usage_bytes: r.get::<_, i64>(8)? as u64,
                })
            })
            .optional()?)
        })
        .await
    }

    pub async fn account_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    /// Stores an envelope for its local recipients, all or nothing.
    pub async fn deliver(&self, d: NewDelivery) -> Result<(), StoreError> {
        let rcpts = d.recipients.clone();
        self.write(move |c| deliver_in(c, &d)).await?;
        self.wake_recipients(&rcpts);
        Ok(())
    }

    /// Stores several envelopes in one transaction, all or nothing.
    pub async fn deliver_all(&self, all: Vec<NewDelivery>) -> Result<(), StoreError> {
        let rcpts: Vec<String> = all.iter().flat_map(|d| d.recipients.clone()).collect();
        self.write(move |c| all.iter().try_for_each(|d| deliver_in(c, d)))
            .await?;
        self.wake_recipients(&rcpts);
        Ok(())
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

    pub async fn list(
        &self,
        recipient: String,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.seq, d.message_id, m.sender, m.size, d.received
                   FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.recipient = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![recipient, after, limit], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    sender: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    received: r.get::<_, i64>(4)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The envelope bytes of a message pending for `recipient`.
    pub async fn fetch(
        &self,
        recipient: String,
        id: [u8; 16],
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT m.envelope, d.received FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.recipient = ?1 AND d.message_id = ?2",
            )?
            .query_row(params![recipient, id.as_slice()], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
        })
        .await
    }

    /// Deletes acknowledged deliveries; returns how many existed.
    pub async fn ack(&self, recipient: String, ids: Vec<[u8; 16]>) -> Result<usize, StoreError> {
        self.write(move |c| {
            let mut n = 0;
            for id in &ids {
                n += remove_delivery(c, &recipient, id)?;
            }
            Ok(n)
        })
        .await
    }

    /// Deletes deliveries received before `cutoff` and replay records before `seen_cutoff`.
    pub async fn purge(&self, cutoff: u64, seen_cutoff: u64) -> Result<PurgeStats, StoreError> {
        self.write(move |c| {
            let old: Vec<(String, [u8; 16])> = c
                .prepare("SELECT recipient, message_id FROM deliveries WHERE received < ?1")?
                .query_map([cutoff as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut stats = PurgeStats::default();
            for (rcpt, id) in &old {
                stats.deliveries += remove_delivery(c, rcpt, id)?;
            }
            stats.seen_ids = c.execute(
                "DELETE FROM seen_envelopes WHERE seen_at < ?1",
                [seen_cutoff as i64],
            )?;
            Ok(stats)
        })
        .await
    }

    /// Checks the database answers (health check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

/// A list stored one entry per line (recipient lists in the queues).
pub(crate) fn split_lines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|l| !l.is_empty())
        .map(ToOwned::to_owned)
        .collect()
}

pub(crate) fn deliver_in(c: &Connection, d: &NewDelivery) -> Result<(), StoreError> {
    let size = d.envelope.len() as u64;
    let fresh = c
        .prepare_cached("INSERT OR IGNORE INTO seen_envelopes (id, seen_at) VALUES (?1, ?2)")?
        .execute(params![d.id.as_slice(), d.received as i64])?;
    if fresh == 0 {
        return Err(StoreError::Replay);
    }
    let mut unknown = Vec::new();
    {
        let mut usage = c.prepare_cached("SELECT usage_bytes FROM accounts WHERE address = ?1")?;
        for r in &d.recipients {
            match usage
                .query_row([r], |row| row.get::<_, i64>(0))
                .optional()?
            {
                None => unknown.push(r.clone()),
                Some(u) if (u as u64).saturating_add(size) > d.quota => {
                    return Err(StoreError::QuotaExceeded(r.clone()));
                }
                Some(_) => {}
            }
        }
    }
    if !unknown.is_empty() {
        return Err(StoreError::UnknownRecipients(unknown));
    }
    if d.recipients.is_empty() {
        // Every recipient is on another domain: only the replay record is kept here.
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO messages (id, sender, envelope, size, received, pending) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        d.id.as_slice(),
        d.sender,
        d.envelope,
        size as i64,
        d.received as i64,
        d.recipients.len() as i64
    ])?;
    let mut ins = c.prepare_cached(
        "INSERT INTO deliveries (recipient, message_id, received) VALUES (?1, ?2, ?3)",
    )?;
    let mut bump =
        c.prepare_cached("UPDATE accounts SET usage_bytes = usage_bytes + ?2 WHERE address = ?1")?;
    for r in &d.recipients {
        ins.execute(params![r, d.id.as_slice(), d.received as i64])?;
        bump.execute(params![r, size as i64])?;
    }
    Ok(())
}

fn remove_delivery(c: &Connection, recipient: &str, id: &[u8; 16]) -> Result<usize, StoreError> {
    let n = c
        .prepare_cached("DELETE FROM deliveries WHERE recipient = ?1 AND message_id = ?2")?
        .execute(params![recipient, id.as_slice()])?;
    if n == 0 {
        return Ok(0);
    }
    c.prepare_cached(
        "UPDATE accounts SET usage_bytes = max(0, usage_bytes - (SELECT size FROM messages WHERE id = ?2))
          WHERE address = ?1",
    )?
    .execute(params![recipient, id.as_slice()])?;
    c.prepare_cached("UPDATE messages SET pending = pending - 1 WHERE id = ?1")?
        .execute([id.as_slice()])?;
    c.prepare_cached("DELETE FROM messages WHERE id = ?1 AND pending <= 0")?
        .execute([id.as_slice()])?;
    Ok(n)
}

fn writer_loop(conn: &Connection, mut rx: mpsc::Receiver<Job>) {
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
        for job in batch {
            if let Err(e) = conn.execute_batch("SAVEPOINT op") {
                broken = Some(StoreError::from(e));
            }
            let (failed, done) = job(conn);
            let end = if failed {
                conn.execute_batch("ROLLBACK TO op; RELEASE op")
            } else {
                conn.execute_batch("RELEASE op")
            };
            if let Err(e) = end {
                broken = Some(StoreError::from(e));
            }
            completions.push(done);
        }
        let outcome = match broken {
            Some(e) => Err(e),
            None => conn.execute_batch("COMMIT").map_err(StoreError::from),
        };
        if outcome.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %outcome.as_ref().err().map(ToString::to_string).unwrap_or_default(), "group commit failed");
        }
        for done in completions {
            done(outcome.clone());
        }
    }
}

/// An account's address and key columns: identity, encryption, created, version, binding.
type AccountKeys = (String, [u8; 32], [u8; 32], i64, u32, [u8; 64]);

/// Signs every account's attestation again with `key` (a domain key rotation); returns how
/// many accounts there are.
pub(crate) fn reattest_all(
    c: &Connection,
    key: &letterme_protocol::SigningKeypair,
) -> Result<usize, StoreError> {
    let rows: Vec<AccountKeys> = c
        .prepare(
            "SELECT address, identity_key, encryption_key, key_created, key_version, binding_signature
               FROM accounts",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut update = c.prepare("UPDATE accounts SET attestation_sig = ?2 WHERE address = ?1")?;
    for (address, identity, encryption, created, version, binding) in &rows {
        let address = letterme_protocol::Address::parse(address)
            .map_err(|e| StoreError::Database(format!("stored address {address:?}: {e}")))?;
        let binding = letterme_protocol::KeyBinding {
            address: address.clone(),
            identity_key: letterme_protocol::IdentityPublicKey(*identity),
            encryption_key: letterme_protocol::EncryptionPublicKey(*encryption),
            created: *created as u64,
            signature: letterme_protocol::Signature(*binding),
        };
        let att = letterme_protocol::Attestation::issue(&binding, *version, key);
        update.execute(params![address.as_str(), att.signature.0.as_slice()])?;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(addr: &str) -> AccountRow {
        AccountRow {
            address: addr.into(),
            identity_key: [1; 32],
            encryption_key: [2; 32],
            key_created: 1,
            key_version: 1,
            binding_signature: [3; 64],
            attestation_sig: [4; 64],
            registered_at: 1,
            usage_bytes: 0,
        }
    }

    fn delivery(id: u8, to: &[&str], at: u64) -> NewDelivery {
        NewDelivery {
            id: [id; 16],
            sender: "a@x.test".into(),
            envelope: vec![id; 100],
            recipients: to.iter().map(|s| (*s).to_owned()).collect(),
            received: at,
            quota: 250,
        }
    }

    #[tokio::test]
    async fn deliver_list_ack_purge_quota_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store.register(account("b@x.test"), None).await.unwrap();
        store.register(account("c@x.test"), None).await.unwrap();
        assert_eq!(
            store.register(account("b@x.test"), None).await,
            Err(StoreError::AddressTaken)
        );

        store
            .deliver(delivery(1, &["b@x.test", "c@x.test"], 100))
            .await
            .unwrap();
        assert_eq!(
            store.deliver(delivery(1, &["b@x.test"], 100)).await,
            Err(StoreError::Replay)
        );
        assert_eq!(
            store
                .deliver(delivery(2, &["b@x.test", "zz@x.test"], 100))
                .await,
            Err(StoreError::UnknownRecipients(vec!["zz@x.test".into()]))
        );
        // The failed delivery left nothing behind, not even its replay record.
        store
            .deliver(delivery(2, &["b@x.test"], 200))
            .await
            .unwrap();
        // Quota 250: b holds 200 bytes now.
        assert_eq!(
            store.deliver(delivery(3, &["b@x.test"], 300)).await,
            Err(StoreError::QuotaExceeded("b@x.test".into()))
        );

        let b = store.list("b@x.test".into(), 0, 100).await.unwrap();
        assert_eq!(b.iter().map(|p| p.id[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            store.ack("b@x.test".into(), vec![[1; 16]]).await.unwrap(),
            1
        );
        // c has not acked: the shared message stays for c.
        assert!(
            store
                .fetch("c@x.test".into(), [1; 16])
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .fetch("b@x.test".into(), [1; 16])
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .account("b@x.test".into())
                .await
                .unwrap()
                .unwrap()
                .usage_bytes,
            100
        );

        // Retention: only deliveries older than the cutoff go.
        let stats = store.purge(150, 0).await.unwrap();
        assert_eq!(stats.deliveries, 1); // c's copy of message 1 (received at 100)
        assert!(
            store
                .fetch("c@x.test".into(), [1; 16])
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .fetch("b@x.test".into(), [2; 16])
                .await
                .unwrap()
                .is_some()
        );
        let stats = store.purge(0, 1000).await.unwrap();
        assert_eq!(stats.seen_ids, 2);
    }

    #[tokio::test]
    async fn concurrent_writes_commit_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store.register(account("b@x.test"), None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut d = delivery(i, &["b@x.test"], 1);
                d.quota = u64::MAX;
                // Every tenth is a replay of an id that another task writes.
                if i % 10 == 9 {
                    d.id = [i - 1; 16];
                }
                s.deliver(d).await
            }));
        }
        let mut ok = 0;
        let mut replays = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Replay) => replays += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, replays), (180, 20));
        assert_eq!(
            store.list("b@x.test".into(), 0, 1000).await.unwrap().len(),
            180
        );
    }
}
