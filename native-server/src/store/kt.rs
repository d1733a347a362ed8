//! Key transparency (`kt_log`, `kt_witness`, `kt_forks`): the domain's log, and what this
//! server witnessed of other domains' logs.

use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError};

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

/// Forks kept per domain.
pub const MAX_FORKS: i64 = 16;
/// Forks recorded in all: any domain can sign a fork of its own log, and domains are
/// cheap.
pub const MAX_FORKS_IN_ALL: i64 = 10_000;
/// Other domains whose newest checkpoint is held as a witness; beyond, the one seen
/// longest ago is forgotten (it is witnessed afresh when it comes back).
pub const MAX_WITNESSED: i64 = 50_000;

impl Store {
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
            let held: i64 = c
                .prepare_cached("SELECT count(*) FROM kt_witness")?
                .query_row([], |r| r.get(0))?;
            if held > MAX_WITNESSED {
                c.prepare_cached(
                    "DELETE FROM kt_witness WHERE domain IN (
                         SELECT domain FROM kt_witness ORDER BY seen_at LIMIT ?1)",
                )?
                .execute([held - MAX_WITNESSED])?;
            }
            Ok(())
        })
        .await
    }

    /// Records the evidence of a fork.
    /// Records a fork; returns false when `domain` has [`MAX_FORKS`] already (the evidence
    /// is kept, more rows would only let the domain grow this table).
    pub async fn add_fork(&self, fork: ForkRow) -> Result<bool, StoreError> {
        self.write(move |c| {
            let held: i64 = c
                .prepare_cached("SELECT count(*) FROM kt_forks WHERE domain = ?1")?
                .query_row([&fork.domain], |r| r.get(0))?;
            let all: i64 = c
                .prepare_cached("SELECT count(*) FROM kt_forks")?
                .query_row([], |r| r.get(0))?;
            if held >= MAX_FORKS || all >= MAX_FORKS_IN_ALL {
                return Ok(false);
            }
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
            Ok(true)
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
