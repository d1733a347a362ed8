//! Mailboxes (`messages`, `deliveries`, `seen_envelopes`): storing sealed envelopes for
//! local recipients, listing, fetching, acknowledging and purging them.

use letterme_protocol::api::FetchedEnvelope;
use letterme_protocol::blob::BlobId;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::blobs::{any_released, link_blobs, named_bytes};
use super::devices::Inbox;
use super::{Store, StoreError};

/// A sealed envelope to store for local recipients.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: [u8; 16],
    pub sender: String,
    pub envelope: Vec<u8>,
    /// The blobs the envelope's header names.
    pub blobs: Vec<BlobId>,
    pub recipients: Vec<String>,
    pub received: u64,
    pub quota: u64,
    /// Only this device (`devices.id`) of the one recipient gets it (the mailbox history a
    /// device sends a new one); none: every current device of each recipient.
    pub device: Option<i64>,
}

/// One pending message in a recipient's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub id: [u8; 16],
    pub sender: String,
    /// Envelope bytes and the sealed bytes of the blobs it names.
    pub size: u64,
    pub received: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub deliveries: usize,
    pub seen_ids: usize,
}

/// Stores an envelope for its local recipients, all or nothing: the API's local
/// recipients, inbound SMTP and notices (one envelope per recipient there) come this way,
/// federation per recipient through [`file`] directly. Returns the sealed bytes of the
/// blobs it names.
pub(super) fn deliver_in(c: &Connection, d: &NewDelivery) -> Result<u64, StoreError> {
    let fresh = c
        .prepare_cached("INSERT OR IGNORE INTO seen_envelopes (id, seen_at) VALUES (?1, ?2)")?
        .execute(params![d.id.as_slice(), d.received as i64])?;
    if fresh == 0 {
        return Err(StoreError::Replay);
    }
    let blob_bytes = named_bytes(c, &d.sender, &d.blobs)?;
    let size = (d.envelope.len() as u64).saturating_add(blob_bytes);
    let mut unknown = Vec::new();
    for r in &d.recipients {
        match usage(c, r)? {
            None => unknown.push(r.clone()),
            Some(u) if u.saturating_add(size) > d.quota => {
                return Err(StoreError::QuotaExceeded(r.clone()));
            }
            Some(_) => {}
        }
    }
    if !unknown.is_empty() {
        return Err(StoreError::UnknownRecipients(unknown));
    }
    // Kept for the local recipients, or for the other domains it is queued to.
    link_blobs(c, &d.id, &d.blobs)?;
    if d.recipients.is_empty() {
        // Every recipient is on another domain: only the replay record is kept here.
        return Ok(blob_bytes);
    }
    let stored = Filed {
        id: &d.id,
        sender: &d.sender,
        envelope: &d.envelope,
        blob_bytes,
        received: d.received,
    };
    if file(c, &stored, &d.recipients, d.device)? {
        Ok(blob_bytes)
    } else {
        Err(StoreError::Replay)
    }
}

/// The bytes a recipient's mailbox holds; `None`: no such account.
pub(super) fn usage(c: &Connection, recipient: &str) -> Result<Option<u64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT usage_bytes FROM accounts WHERE address = ?1")?
            .query_row([recipient], |row| row.get::<_, i64>(0))
            .optional()?
            .map(|u| u as u64),
    )
}

/// A checked envelope to file.
pub(super) struct Filed<'a> {
    pub id: &'a [u8; 16],
    pub sender: &'a str,
    pub envelope: &'a [u8],
    /// The sealed bytes of the blobs it names (checked by `named_bytes`).
    pub blob_bytes: u64,
    pub received: u64,
}

/// Files a checked envelope in local mailboxes: the message once (or its pending count
/// raised when it is stored already), a delivery for each current device of each
/// recipient, and the usage (envelope and blobs) once for each recipient. Every entrance
/// that delivers locally ends here. `false`: the id is taken by another envelope, and
/// nothing was filed.
pub(super) fn file(
    c: &Connection,
    m: &Filed<'_>,
    recipients: &[String],
    device: Option<i64>,
) -> Result<bool, StoreError> {
    let size = m.envelope.len() as i64;
    let stored = c
        .prepare_cached(
            "INSERT INTO messages (id, sender, envelope, size, received, pending, blob_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
             ON CONFLICT (id) DO UPDATE SET pending = pending
              WHERE envelope = excluded.envelope",
        )?
        .execute(params![
            m.id.as_slice(),
            m.sender,
            m.envelope,
            size,
            m.received as i64,
            m.blob_bytes as i64
        ])?;
    if stored == 0 {
        return Ok(false);
    }
    let mut ins = c.prepare_cached(
        "INSERT INTO deliveries (recipient, device, message_id, received)
         SELECT ?1, id, ?2, ?3 FROM devices
          WHERE account = ?1 AND removed IS NULL AND (?4 IS NULL OR id = ?4)",
    )?;
    let mut bump =
        c.prepare_cached("UPDATE accounts SET usage_bytes = usage_bytes + ?2 WHERE address = ?1")?;
    let usage = size.saturating_add(m.blob_bytes as i64);
    let mut filed = 0;
    for r in recipients {
        filed += ins.execute(params![r, m.id.as_slice(), m.received as i64, device])?;
        bump.execute(params![r, usage])?;
    }
    c.prepare_cached("UPDATE messages SET pending = pending + ?2 WHERE id = ?1")?
        .execute(params![m.id.as_slice(), filed as i64])?;
    Ok(true)
}

/// Removes one device's delivery of message `id`; the recipient's usage goes down when it
/// was the last of the recipient's devices the message waited for.
pub(super) fn remove_delivery(
    c: &Connection,
    inbox: &Inbox,
    id: &[u8; 16],
) -> Result<usize, StoreError> {
    let n = c
        .prepare_cached(
            "DELETE FROM deliveries WHERE recipient = ?1 AND device = ?2 AND message_id = ?3",
        )?
        .execute(params![inbox.address, inbox.device, id.as_slice()])?;
    if n == 0 {
        return Ok(0);
    }
    c.prepare_cached(
        "UPDATE accounts SET usage_bytes = max(0, usage_bytes - (SELECT size + blob_bytes FROM messages WHERE id = ?2))
          WHERE address = ?1
            AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?2 AND recipient = ?1)",
    )?
    .execute(params![inbox.address, id.as_slice()])?;
    c.prepare_cached("UPDATE messages SET pending = pending - 1 WHERE id = ?1")?
        .execute([id.as_slice()])?;
    c.prepare_cached("DELETE FROM messages WHERE id = ?1 AND pending <= 0")?
        .execute([id.as_slice()])?;
    Ok(n)
}

impl Store {
    /// Stores an envelope for its local recipients, all or nothing.
    pub async fn deliver(&self, d: NewDelivery) -> Result<(), StoreError> {
        let rcpts = d.recipients.clone();
        self.write(move |c| deliver_in(c, &d).map(drop)).await?;
        self.wake_recipients(&rcpts);
        Ok(())
    }

    /// Stores several envelopes in one transaction, all or nothing.
    pub async fn deliver_all(&self, all: Vec<NewDelivery>) -> Result<(), StoreError> {
        let rcpts: Vec<String> = all.iter().flat_map(|d| d.recipients.clone()).collect();
        self.write(move |c| all.iter().try_for_each(|d| deliver_in(c, d).map(drop)))
            .await?;
        self.wake_recipients(&rcpts);
        Ok(())
    }

    pub async fn list(
        &self,
        inbox: Inbox,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.seq, d.message_id, m.sender, m.size + m.blob_bytes, d.received
                   FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.recipient = ?1 AND d.device = ?2 AND d.seq > ?3 ORDER BY d.seq LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![inbox.address, inbox.device, after, limit], |r| {
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

    /// The envelope bytes of a message pending for a device.
    pub async fn fetch(
        &self,
        inbox: Inbox,
        id: [u8; 16],
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT m.envelope, d.received FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.recipient = ?1 AND d.device = ?2 AND d.message_id = ?3",
            )?
            .query_row(params![inbox.address, inbox.device, id.as_slice()], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
        })
        .await
    }

    /// Several envelopes pending for a device, with the time each was received, in the
    /// order asked (no envelope for an id not pending), read in one transaction. Stops after
    /// `budget` bytes of envelopes, always after the first: the ids past the end of the
    /// answer were left out.
    pub async fn fetch_many(
        &self,
        inbox: Inbox,
        ids: Vec<[u8; 16]>,
        budget: usize,
    ) -> Result<Vec<FetchedEnvelope>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.envelope, d.received FROM deliveries d JOIN messages m ON m.id = d.message_id
                  WHERE d.recipient = ?1 AND d.device = ?2 AND d.message_id = ?3",
            )?;
            let tx = c.unchecked_transaction()?;
            let mut out = Vec::with_capacity(ids.len());
            let mut bytes = 0;
            for id in ids {
                if !out.is_empty() && bytes >= budget {
                    break;
                }
                let (envelope, received) = stmt
                    .query_row(params![inbox.address, inbox.device, id.as_slice()], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64))
                    })
                    .optional()?
                    .map_or((None, 0), |(e, r)| (Some(e), r));
                bytes += envelope.as_ref().map_or(0, Vec::len);
                out.push(FetchedEnvelope {
                    id,
                    received,
                    envelope,
                });
            }
            drop(stmt);
            tx.finish()?;
            Ok(out)
        })
        .await
    }

    /// Deletes a device's acknowledged deliveries; returns how many existed. A message goes
    /// when no device waits for it any more; blobs whose last envelope this removed are
    /// deleted right after, in the background.
    pub async fn ack(&self, inbox: Inbox, ids: Vec<[u8; 16]>) -> Result<usize, StoreError> {
        let (n, released) = self
            .write(move |c| {
                let mut n = 0;
                for id in &ids {
                    n += remove_delivery(c, &inbox, id)?;
                }
                Ok((n, any_released(c)?))
            })
            .await?;
        self.purge_released_later(released);
        Ok(n)
    }

    /// Deletes deliveries received before `cutoff` and replay records before `seen_cutoff`.
    pub async fn purge(&self, cutoff: u64, seen_cutoff: u64) -> Result<PurgeStats, StoreError> {
        self.write(move |c| {
            let old: Vec<(Inbox, [u8; 16])> = c
                .prepare(
                    "SELECT recipient, device, message_id FROM deliveries WHERE received < ?1",
                )?
                .query_map([cutoff as i64], |r| {
                    Ok((
                        Inbox {
                            address: r.get(0)?,
                            device: r.get(1)?,
                        },
                        r.get(2)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let mut stats = PurgeStats::default();
            for (inbox, id) in &old {
                stats.deliveries += remove_delivery(c, inbox, id)?;
            }
            stats.seen_ids = c.execute(
                "DELETE FROM seen_envelopes WHERE seen_at < ?1",
                [seen_cutoff as i64],
            )?;
            Ok(stats)
        })
        .await
    }
}
