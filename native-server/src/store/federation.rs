//! Federation's tables (migrations/0002, 0006, 0008): the federation queue
//! (`federation_queue`, one row per envelope and destination, the bytes once in
//! `federation_envelopes`), received transactions (`received_transactions`,
//! `federated_seen`). Each operation is one group-commit write, so what the API
//! acknowledges and what a peer is told is on disk first.

use std::collections::{BTreeMap, HashSet};

use letterme_protocol::federation::{DeliveryReport, DeliveryStatus};
use rusqlite::{Connection, OptionalExtension as _, params};

use letterme_protocol::blob::BlobId;

use super::blobs::{any_released, link_blobs, named_bytes};
use super::mailbox::{Filed, deliver_in, file, usage};
use super::{NewDelivery, Store, StoreError, split_lines};

/// An envelope to deliver to one destination domain.
#[derive(Debug, Clone)]
pub struct NewFederationRow {
    pub destination: String,
    pub recipients: Vec<String>,
}

/// A queued delivery, as the worker sees it.
#[derive(Debug, Clone)]
pub struct FederationRow {
    pub id: i64,
    pub destination: String,
    pub envelope_id: [u8; 16],
    pub sender: String,
    pub recipients: Vec<String>,
    /// The envelope's row in `federation_envelopes`, its size, and the sealed bytes of
    /// the blobs it names.
    pub body: i64,
    pub size: u64,
    pub blob_bytes: u64,
    /// Read only for a claimed batch ([`Store::claim_federation`]); empty otherwise.
    pub envelope: Vec<u8>,
    /// The blobs the envelope names, which go to the peer before it; read as `envelope`.
    pub blobs: Vec<BlobId>,
    pub queued_at: u64,
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_error: Option<String>,
}

/// A batch claimed for sending: its transaction id and rows.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub destination: String,
    pub txid: [u8; 16],
    pub rows: Vec<FederationRow>,
}

/// What to do with one row after an attempt.
#[derive(Debug, Clone)]
pub enum RowOutcome {
    /// Delivered, or failed for good (a notice is delivered alongside): remove.
    Done,
    /// Not tried (the batch was too large for the peer): due again at once in a new
    /// transaction, attempts unchanged.
    Release,
    /// Try again at `next_attempt` for these recipients, in a new transaction.
    Retry {
        recipients: Vec<String>,
        next_attempt: u64,
        error: String,
    },
}

/// One envelope of a received batch, checked by the handler.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub id: [u8; 16],
    /// SHA-256 of `envelope`: with the origin, what identifies the envelope.
    pub digest: [u8; 32],
    pub sender: String,
    pub envelope: Vec<u8>,
    /// The blobs the envelope's header names.
    pub blobs: Vec<BlobId>,
    pub recipients: Vec<String>,
}

const ROW_COLUMNS: &str = "q.id, q.destination, q.envelope_id, q.sender, q.recipients, q.body, e.size, \
                           q.queued_at, q.attempts, q.next_attempt, q.last_error, e.blob_bytes \
                           FROM federation_queue q JOIN federation_envelopes e ON e.id = q.body";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FederationRow> {
    Ok(FederationRow {
        id: r.get(0)?,
        destination: r.get(1)?,
        envelope_id: r.get(2)?,
        sender: r.get(3)?,
        recipients: split_lines(&r.get::<_, String>(4)?),
        body: r.get(5)?,
        size: r.get::<_, i64>(6)? as u64,
        blob_bytes: r.get::<_, i64>(11)? as u64,
        envelope: Vec::new(),
        blobs: Vec::new(),
        queued_at: r.get::<_, i64>(7)? as u64,
        attempts: r.get(8)?,
        next_attempt: r.get::<_, i64>(9)? as u64,
        last_error: r.get(10)?,
    })
}

/// How a claimed batch is cut: at most `rows` envelopes and, beyond the first, `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimit {
    pub rows: usize,
    pub bytes: u64,
}

impl Store {
    /// Accepts a user's envelope: delivers to local recipients and queues it for the
    /// remote domains — its bytes once, a row per domain — in one transaction, unless the
    /// sender's queued bytes (envelopes and the blobs they name, each blob once however
    /// many of them name it) would pass `queued_limit`.
    pub async fn accept_outgoing(
        &self,
        local: NewDelivery,
        remote: Vec<NewFederationRow>,
        queued_limit: u64,
    ) -> Result<(), StoreError> {
        let rcpts = local.recipients.clone();
        self.write(move |c| {
            let blob_bytes = deliver_in(c, &local)?;
            if remote.is_empty() {
                return Ok(());
            }
            let size = local.envelope.len() as u64;
            let queued: i64 = c
                .prepare_cached("SELECT bytes FROM federation_queued WHERE sender = ?1")?
                .query_row([&local.sender], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            // A blob another queued envelope of the sender names (a Bcc copy's) is
            // counted already.
            let mut new_blob_bytes = 0u64;
            let mut blobs = local.blobs.clone();
            blobs.sort_unstable_by_key(|b| b.0);
            blobs.dedup();
            for id in &blobs {
                let counted = c
                    .prepare_cached(
                        "SELECT 1 FROM federation_envelope_blobs WHERE sender = ?1 AND blob = ?2",
                    )?
                    .query_row(params![local.sender, id.0.as_slice()], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !counted {
                    let size: i64 = c
                        .prepare_cached("SELECT size FROM blobs WHERE id = ?1")?
                        .query_row([id.0.as_slice()], |r| r.get(0))?;
                    new_blob_bytes = new_blob_bytes.saturating_add(size as u64);
                }
            }
            if (queued as u64)
                .saturating_add(size)
                .saturating_add(new_blob_bytes)
                > queued_limit
            {
                return Err(StoreError::QueueFull {
                    sender: local.sender.clone(),
                    queued: queued as u64,
                    limit: queued_limit,
                });
            }
            c.prepare_cached(
                "INSERT INTO federation_envelopes (sender, size, envelope, blob_bytes)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                local.sender,
                size as i64,
                local.envelope,
                blob_bytes as i64
            ])?;
            let body = c.last_insert_rowid();
            let mut link = c.prepare_cached(
                "INSERT OR IGNORE INTO federation_envelope_blobs (body, blob, sender, size)
                 SELECT ?1, id, ?2, size FROM blobs WHERE id = ?3",
            )?;
            for id in &blobs {
                link.execute(params![body, local.sender, id.0.as_slice()])?;
            }
            let mut ins = c.prepare_cached(
                "INSERT INTO federation_queue (destination, envelope_id, sender, recipients, body, queued_at, next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )?;
            for r in &remote {
                ins.execute(params![
                    r.destination,
                    local.id.as_slice(),
                    local.sender,
                    r.recipients.join("\n"),
                    body,
                    local.received as i64,
                ])?;
            }
            Ok(())
        })
        .await?;
        self.wake_recipients(&rcpts);
        Ok(())
    }

    /// Claims due rows for `destination` not in `busy`: a batch that was sent before and
    /// must be resent as it was (same transaction id), or else a new batch within `limit`.
    /// An envelope that names blobs goes alone, so that a blob the peer refuses fails
    /// that envelope only. Only the claimed rows' envelopes are read.
    pub async fn claim_federation(
        &self,
        destination: String,
        now: u64,
        limit: BatchLimit,
        busy: Vec<[u8; 16]>,
    ) -> Result<Option<Claimed>, StoreError> {
        self.write(move |c| {
            let busy: HashSet<[u8; 16]> = busy.into_iter().collect();
            let pending: Vec<[u8; 16]> = c
                .prepare_cached(
                    "SELECT DISTINCT txid FROM federation_queue
                      WHERE destination = ?1 AND next_attempt <= ?2 AND txid IS NOT NULL",
                )?
                .query_map(params![destination, now as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if let Some(txid) = pending.into_iter().find(|t| !busy.contains(t)) {
                let mut rows = c
                    .prepare_cached(&format!(
                        "SELECT {ROW_COLUMNS} WHERE q.txid = ?1 ORDER BY q.id"
                    ))?
                    .query_map([txid.as_slice()], row)?
                    .collect::<Result<Vec<_>, _>>()?;
                read_envelopes(c, &mut rows)?;
                return Ok(Some(Claimed {
                    destination,
                    txid,
                    rows,
                }));
            }
            let mut rows = Vec::new();
            // The body as it will be encoded, framing included.
            let mut bytes = letterme_protocol::federation::BATCH_HEADER_LEN;
            let mut due = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS}
                  WHERE q.destination = ?1 AND q.next_attempt <= ?2 AND q.txid IS NULL
                  ORDER BY q.id LIMIT ?3"
            ))?;
            for r in due.query_map(params![destination, now as i64, limit.rows as i64], row)? {
                let r = r?;
                let item = letterme_protocol::federation::batch_item_len(&r.recipients, r.size);
                let alone = r.blob_bytes > 0;
                if !rows.is_empty() && (alone || bytes + item > limit.bytes) {
                    break;
                }
                bytes += item;
                rows.push(r);
                if alone {
                    break;
                }
            }
            drop(due);
            if rows.is_empty() {
                return Ok(None);
            }
            read_envelopes(c, &mut rows)?;
            let txid: [u8; 16] = letterme_protocol::keys::random_bytes();
            let mut set =
                c.prepare_cached("UPDATE federation_queue SET txid = ?2 WHERE id = ?1")?;
            for r in &rows {
                set.execute(params![r.id, txid.as_slice()])?;
            }
            Ok(Some(Claimed {
                destination,
                txid,
                rows,
            }))
        })
        .await
    }

    /// Records the outcome of an attempt; `notices` (failure notices to local senders) are
    /// delivered in the same transaction. Blobs no envelope waits for any more are then
    /// deleted in the background.
    pub async fn finish_federation(
        &self,
        outcomes: Vec<(i64, RowOutcome)>,
        notices: Vec<NewDelivery>,
        retire_txid: bool,
    ) -> Result<(), StoreError> {
        let rcpts: Vec<String> = notices.iter().flat_map(|n| n.recipients.clone()).collect();
        let released = self.write(move |c| {
            for (id, outcome) in &outcomes {
                match outcome {
                    RowOutcome::Done => {
                        c.prepare_cached("DELETE FROM federation_queue WHERE id = ?1")?
                            .execute([id])?;
                    }
                    RowOutcome::Release => {
                        c.prepare_cached("UPDATE federation_queue SET txid = NULL WHERE id = ?1")?
                            .execute([id])?;
                    }
                    RowOutcome::Retry {
                        recipients,
                        next_attempt,
                        error,
                    } => {
                        // A definitive answer retires the transaction id (the peer keeps
                        // its answer for it); a failed exchange keeps it for the resend.
                        let sql = if retire_txid {
                            "UPDATE federation_queue SET recipients = ?2, next_attempt = ?3, last_error = ?4,
                                    attempts = attempts + 1, txid = NULL WHERE id = ?1"
                        } else {
                            "UPDATE federation_queue SET recipients = ?2, next_attempt = ?3, last_error = ?4,
                                    attempts = attempts + 1 WHERE id = ?1"
                        };
                        c.prepare_cached(sql)?.execute(params![
                            id,
                            recipients.join("\n"),
                            *next_attempt as i64,
                            error
                        ])?;
                    }
                }
            }
            for n in &notices {
                deliver_in(c, n)?;
            }
            any_released(c)
        })
        .await?;
        self.wake_recipients(&rcpts);
        self.purge_released_later(released);
        Ok(())
    }

    /// Destinations with queued mail, and the earliest time one is due.
    pub async fn federation_destinations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT destination, min(next_attempt) FROM federation_queue GROUP BY destination",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The whole queue without the envelopes (for `letterme queue` and tests).
    pub async fn federation_rows(&self) -> Result<Vec<FederationRow>, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {ROW_COLUMNS} ORDER BY q.id"))?
                    .query_map([], row)?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    /// Stores a batch from `origin` under its transaction id, or returns the answer already
    /// given for it. `None`: the id was used before for a different body.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive_transaction(
        &self,
        origin: String,
        txid: Vec<u8>,
        digest: [u8; 32],
        items: Vec<Incoming>,
        rejected: BTreeMap<String, String>,
        now: u64,
        quota: u64,
        admin_blocks: crate::config::FederationConfig,
    ) -> Result<Option<DeliveryReport>, StoreError> {
        let (report, woken) = self
            .write(move |c| {
                if let Some((d, json)) = c
                    .prepare_cached(
                        "SELECT digest, report FROM received_transactions WHERE origin = ?1 AND txid = ?2",
                    )?
                    .query_row(params![origin, txid], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?
                {
                    if d != digest {
                        return Ok((None, Vec::new()));
                    }
                    let report = serde_json::from_str(&json)
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                    return Ok((Some(report), Vec::new()));
                }
                let mut report = DeliveryReport {
                    rejected,
                    ..DeliveryReport::default()
                };
                let mut woken = Vec::new();
                for item in &items {
                    let mut statuses = BTreeMap::new();
                    for rcpt in &item.recipients {
                        let s = receive_one(c, &origin, item, rcpt, now, quota, &admin_blocks)?;
                        if s == DeliveryStatus::Accepted {
                            woken.push(rcpt.clone());
                        }
                        statuses.insert(rcpt.clone(), s);
                    }
                    report
                        .results
                        .insert(letterme_protocol::codec::hex(&item.id), statuses);
                }
                let json = serde_json::to_string(&report)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                c.prepare_cached(
                    "INSERT INTO received_transactions (origin, txid, digest, report, received)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![origin, txid, digest.as_slice(), json, now as i64])?;
                Ok((Some(report), woken))
            })
            .await?;
        self.wake_recipients(&woken);
        Ok(report)
    }

    /// Forgets received transactions and (envelope, recipient) records older than `cutoff`.
    pub async fn purge_federation(&self, cutoff: u64) -> Result<usize, StoreError> {
        self.write(move |c| {
            let a = c.execute(
                "DELETE FROM received_transactions WHERE received < ?1",
                [cutoff as i64],
            )?;
            let b = c.execute(
                "DELETE FROM federated_seen WHERE seen_at < ?1",
                [cutoff as i64],
            )?;
            Ok(a + b)
        })
        .await
    }
}

/// Reads the envelopes of claimed rows, and the blobs they name.
fn read_envelopes(c: &Connection, rows: &mut [FederationRow]) -> Result<(), StoreError> {
    let mut get = c.prepare_cached("SELECT envelope FROM federation_envelopes WHERE id = ?1")?;
    let mut blobs = c.prepare_cached("SELECT blob FROM envelope_blobs WHERE envelope_id = ?1")?;
    for r in rows {
        r.envelope = get.query_row([r.body], |x| x.get(0))?;
        if r.blob_bytes > 0 {
            r.blobs = blobs
                .query_map([r.envelope_id.as_slice()], |x| x.get(0).map(BlobId))?
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(())
}

/// Delivers one envelope to one local recipient, or says why not.
fn receive_one(
    c: &Connection,
    origin: &str,
    item: &Incoming,
    rcpt: &str,
    now: u64,
    quota: u64,
    admin: &crate::config::FederationConfig,
) -> Result<DeliveryStatus, StoreError> {
    // The envelope is its origin and its bytes: the same one again (a retried batch) is
    // accepted again and stored once; any other envelope under a known id — another
    // domain's, other bytes, or a local user's — is refused, never acknowledged.
    let known: Vec<(String, String, Vec<u8>)> = c
        .prepare_cached(
            "SELECT recipient, origin, digest FROM federated_seen WHERE envelope_id = ?1",
        )?
        .query_map([item.id.as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let same = |o: &str, d: &[u8]| d.is_empty() || (o == origin && d == item.digest.as_slice());
    if known.iter().any(|(_, o, d)| !same(o, d)) {
        return Ok(DeliveryStatus::Blocked);
    }
    if known.iter().any(|(r, _, _)| r == rcpt) {
        return Ok(DeliveryStatus::Accepted);
    }
    if known.is_empty() {
        let local = c
            .prepare_cached("SELECT 1 FROM seen_envelopes WHERE id = ?1")?
            .query_row([item.id.as_slice()], |_| Ok(()))
            .optional()?;
        if local.is_some() {
            return Ok(DeliveryStatus::Blocked);
        }
    }
    let Some(usage) = usage(c, rcpt)? else {
        return Ok(DeliveryStatus::NoSuchUser);
    };
    let sender_domain = item
        .sender
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| format!("@{d}"));
    let user_blocks = c
        .prepare_cached("SELECT 1 FROM blocks WHERE owner = ?1 AND entry IN (?2, ?3)")?
        .query_row(params![rcpt, item.sender, sender_domain], |_| Ok(()))
        .optional()?;
    if admin.blocks(&item.sender) || user_blocks.is_some() {
        return Ok(DeliveryStatus::Blocked);
    }
    // The peer brings an envelope's blobs before it (`PUT /v1/federation/blobs`): one
    // that is not here in full is refused for good.
    let blob_bytes = match named_bytes(c, &item.sender, &item.blobs) {
        Err(StoreError::BadBlob(why)) => {
            tracing::warn!(sender = %item.sender, %why, "a peer's envelope names a blob that is not here");
            return Ok(DeliveryStatus::Blocked);
        }
        other => other?,
    };
    let size = (item.envelope.len() as u64).saturating_add(blob_bytes);
    if usage.saturating_add(size) > quota {
        return Ok(DeliveryStatus::QuotaExceeded);
    }
    let rcpts = [rcpt.to_owned()];
    let filed = Filed {
        id: &item.id,
        sender: &item.sender,
        envelope: &item.envelope,
        blob_bytes,
        received: now,
    };
    if !file(c, &filed, &rcpts, None)? {
        // Another envelope holds this id here: a forged collision, refused for good.
        tracing::warn!(sender = %item.sender, "a peer reused an envelope id of another message");
        return Ok(DeliveryStatus::Blocked);
    }
    link_blobs(c, &item.id, &item.blobs)?;
    c.prepare_cached(
        "INSERT INTO federated_seen (envelope_id, recipient, seen_at, origin, digest)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        item.id.as_slice(),
        rcpt,
        now as i64,
        origin,
        item.digest.as_slice()
    ])?;
    // The id enters the replay set the API checks too.
    c.prepare_cached("INSERT OR IGNORE INTO seen_envelopes (id, seen_at) VALUES (?1, ?2)")?
        .execute(params![item.id.as_slice(), now as i64])?;
    Ok(DeliveryStatus::Accepted)
}
