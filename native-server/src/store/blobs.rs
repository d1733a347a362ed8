//! Blobs (`blobs`, `blob_chunks`, `envelope_blobs`): large attachments sealed by their
//! sender (PROTOCOL.md §19a), uploaded chunk by chunk. An upload declares its manifest
//! first; each chunk is checked against its hash there as it arrives, so a changed chunk is
//! refused at once and a broken upload resumes with the chunks still missing. An envelope
//! whose header names a blob keeps it, once however many recipients, until the last of
//! them acknowledged it (or retention removed it) and no other domain still waits for it;
//! the purge then deletes it. Another domain brings the blobs of its senders' envelopes
//! the same way, before the envelope (`origin`, migration 0012), within a per-peer bound.
//! The server never reads a blob.

use letterme_protocol::blob::{
    BlobId, Manifest, SEALED_CHUNK, TAG, sealed_chunk_len, sealed_chunks,
};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{Store, StoreError};

/// Where a blob is in its life (`blobs.state`).
const UPLOADED: i64 = 0;
const NAMED: i64 = 1;
/// Every envelope that named it is gone (set by a trigger, migration 0011).
const RELEASED: i64 = 2;

/// How long (seconds) an uploaded blob is kept while no message refers to it.
pub const BLOB_UPLOAD_KEEP: u64 = 86_400;

/// Most blobs one owner may hold at once, uploaded or named by a pending message, whatever
/// their size: each is rows and index entries, and a stranger with an account must not
/// fill the database with tiny ones (naming them in messages to themselves included).
pub const MAX_BLOBS_PER_OWNER: u64 = 1000;

/// Most blobs one peer domain may have brought that no envelope named yet.
pub const MAX_BLOBS_PER_PEER: u64 = 10_000;

/// Blobs all peer domains together may have brought that no envelope named yet.
pub const MAX_BLOBS_ALL_PEERS: u64 = 100_000;

/// An upload to begin (or to resume, when the same blob was begun before).
#[derive(Debug, Clone)]
pub struct NewBlob {
    pub id: BlobId,
    /// The local user who uploads it, or the remote sender whose domain brings it.
    pub owner: String,
    /// The peer domain that brings it; `None` for a local upload.
    pub origin: Option<String>,
    /// Sealed bytes.
    pub size: u64,
    pub manifest: Manifest,
    pub created: u64,
    /// Largest sealed blob accepted.
    pub max_size: u64,
    /// Most bytes of blobs one owner may hold that no message refers to yet.
    pub per_owner: u64,
    /// Most bytes of blobs one peer may have brought that no envelope named yet.
    pub per_origin: u64,
    /// Most bytes of blobs all peers together may have brought that no envelope named yet.
    pub all_origins: u64,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    pub owner: String,
    /// The peer domain that brought it; `None` for a local upload.
    pub origin: Option<String>,
    /// Sealed bytes.
    pub size: u64,
    pub manifest: Manifest,
    /// The chunks stored, in order.
    pub stored: Vec<u64>,
}

impl BlobStatus {
    pub fn complete(&self) -> bool {
        self.stored.len() == self.manifest.0.len()
    }
}

/// Checks that a declared upload adds up: a manifest of one hash per chunk that hashes to
/// the id, a last chunk of at least a tag, a size within the limit.
fn check(b: &NewBlob) -> Result<(), StoreError> {
    if b.size > b.max_size {
        return Err(StoreError::BadBlob(format!(
            "the blob is {} bytes sealed; the server accepts at most {}",
            b.size, b.max_size
        )));
    }
    let Some(chunks) = sealed_chunks(b.size) else {
        return Err(StoreError::BadBlob(format!(
            "no blob is {} bytes sealed: every chunk carries a 16-byte tag",
            b.size
        )));
    };
    if b.manifest.0.len() as u64 != chunks {
        return Err(StoreError::BadBlob(format!(
            "a blob of {} sealed bytes has {chunks} chunks; the manifest lists {}",
            b.size,
            b.manifest.0.len()
        )));
    }
    if b.manifest.id() != b.id {
        return Err(StoreError::BadBlob(
            "the manifest does not hash to the blob's id".into(),
        ));
    }
    Ok(())
}

/// Checks that `b` fits its uploader's limits (and its peer's, for a blob a peer brings):
/// the bytes it adds to what waits unnamed, and the count of blobs.
fn within_limits(c: &Connection, b: &NewBlob) -> Result<(), StoreError> {
    let charge = b.size;
    let allowance = b
        .origin
        .as_ref()
        .map_or(b.per_owner, |_| b.per_owner.min(b.per_origin));
    if charge > allowance {
        return Err(StoreError::BadBlob(format!(
            "a blob of up to {charge} sealed bytes is more than this server holds for one \
             uploader ({allowance})"
        )));
    }
    if let Some(origin) = &b.origin {
        // Bounded work: the partial index holds a peer's blobs by state.
        let (count, used): (i64, i64) = c
            .prepare_cached(
                "SELECT count(*), coalesce(sum(size), 0) FROM blobs
                  WHERE origin = ?1 AND state = ?2",
            )?
            .query_row(params![origin, UPLOADED], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let used = used as u64;
        if count as u64 >= MAX_BLOBS_PER_PEER || used.saturating_add(charge) > b.per_origin {
            return Err(StoreError::BlobLimit {
                owner: origin.clone(),
                used,
                limit: b.per_origin,
            });
        }
        // All peers together, so that many domains cannot multiply the bound above. Bounded
        // work: the partial index holds what peers brought, by state, with the sizes.
        let (count, used): (i64, i64) = c
            .prepare_cached(
                "SELECT count(*), coalesce(sum(size), 0) FROM blobs
                  WHERE origin IS NOT NULL AND state = ?1",
            )?
            .query_row(params![UPLOADED], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let used = used as u64;
        if count as u64 >= MAX_BLOBS_ALL_PEERS || used.saturating_add(charge) > b.all_origins {
            return Err(StoreError::BlobLimit {
                owner: "all other domains together".into(),
                used,
                limit: b.all_origins,
            });
        }
    }
    // Bounded work: an owner holds at most MAX_BLOBS_PER_OWNER rows.
    let (count, used): (i64, i64) = c
        .prepare_cached(
            "SELECT count(*), coalesce(sum(CASE WHEN state = ?2 THEN size ELSE 0 END), 0)
             FROM blobs WHERE owner = ?1",
        )?
        .query_row(params![b.owner, UPLOADED], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let used = used as u64;
    if count as u64 >= MAX_BLOBS_PER_OWNER || used.saturating_add(charge) > b.per_owner {
        return Err(StoreError::BlobLimit {
            owner: b.owner.clone(),
            used,
            limit: b.per_owner,
        });
    }
    Ok(())
}

/// The sealed bytes of the blobs an envelope of `sender` names, each of which must be here
/// in full — whoever uploaded or brought it, since each chunk was checked against the id:
/// what each local recipient's usage carries while the envelope is pending.
pub(super) fn named_bytes(
    c: &Connection,
    sender: &str,
    blobs: &[BlobId],
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    for id in blobs {
        let s = status(c, id)?.ok_or_else(|| {
            StoreError::BadBlob(format!(
                "the envelope of {sender} names blob {}, which is not here",
                id.to_hex()
            ))
        })?;
        if !s.complete() {
            return Err(StoreError::BadBlob(format!(
                "blob {} is not uploaded in full ({} of {} chunks)",
                id.to_hex(),
                s.stored.len(),
                s.manifest.0.len()
            )));
        }
        total = total.saturating_add(s.size);
    }
    Ok(total)
}

/// Records that envelope `envelope` (stored or queued in the same transaction) names
/// `blobs`, which keeps them until it is gone. Again for the same envelope: no change.
pub(super) fn link_blobs(
    c: &Connection,
    envelope: &[u8; 16],
    blobs: &[BlobId],
) -> Result<(), StoreError> {
    for id in blobs {
        c.prepare_cached(
            "INSERT OR IGNORE INTO envelope_blobs (envelope_id, blob) VALUES (?1, ?2)",
        )?
        .execute(params![envelope.as_slice(), id.0.as_slice()])?;
        // Named: an offer that kept it for this envelope is answered.
        c.prepare_cached("UPDATE blobs SET state = ?2, reoffered = 0 WHERE id = ?1")?
            .execute(params![id.0.as_slice(), NAMED])?;
    }
    Ok(())
}

/// Whether a blob waits for the purge, every envelope that named it gone.
pub(super) fn any_released(c: &Connection) -> Result<bool, StoreError> {
    Ok(
        c.prepare_cached("SELECT EXISTS (SELECT 1 FROM blobs WHERE state = ?1)")?
            .query_row([RELEASED], |r| r.get(0))?,
    )
}

/// Whether `reader` may read blob `id`: its uploader, or a local recipient of a pending
/// envelope that names it.
fn may_read(c: &Connection, id: &BlobId, reader: &str) -> Result<bool, StoreError> {
    let owner: Option<String> = c
        .prepare_cached("SELECT owner FROM blobs WHERE id = ?1")?
        .query_row([id.0.as_slice()], |r| r.get(0))
        .optional()?;
    match owner {
        None => Ok(false),
        Some(o) if o == reader => Ok(true),
        Some(_) => Ok(c
            .prepare_cached(
                "SELECT 1 FROM envelope_blobs e JOIN deliveries d ON d.message_id = e.envelope_id
                 WHERE e.blob = ?1 AND d.recipient = ?2 LIMIT 1",
            )?
            .query_row(params![id.0.as_slice(), reader], |_| Ok(()))
            .optional()?
            .is_some()),
    }
}

fn status(c: &Connection, id: &BlobId) -> Result<Option<BlobStatus>, StoreError> {
    let Some((owner, origin, size, manifest)) = c
        .prepare_cached("SELECT owner, origin, size, manifest FROM blobs WHERE id = ?1")?
        .query_row([id.0.as_slice()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let stored = c
        .prepare_cached("SELECT n FROM blob_chunks WHERE blob = ?1 ORDER BY n")?
        .query_map([id.0.as_slice()], |r| r.get::<_, i64>(0).map(|n| n as u64))?
        .collect::<Result<_, _>>()?;
    let manifest = Manifest::from_bytes(&manifest).ok_or_else(|| {
        StoreError::Database("a stored blob manifest is not 32 bytes a chunk".into())
    })?;
    Ok(Some(BlobStatus {
        owner,
        origin,
        size,
        manifest,
        stored,
    }))
}

impl Store {
    /// Begins an upload, or answers where the one begun before stands (a resumed upload,
    /// or the same blob from someone else: the same id is the same manifest and chunks,
    /// which whoever has them may add; its owner stays the one who began it). Begun again
    /// by its holder, a blob is kept a day from now as an upload, for a new envelope to
    /// name (a Bcc copy, one more domain, a retried delivery), and once the envelopes that
    /// name it now are gone; a released one not yet purged is kept again for whoever begins
    /// it, within their limits.
    pub async fn blob_begin(&self, b: NewBlob) -> Result<BlobStatus, StoreError> {
        check(&b)?;
        self.write(move |c| {
            if let Some(s) = status(c, &b.id)? {
                let state: i64 = c
                    .prepare_cached("SELECT state FROM blobs WHERE id = ?1")?
                    .query_row([b.id.0.as_slice()], |r| r.get(0))?;
                if state == RELEASED {
                    // Nobody needs it any more: kept again for whoever begins it, against
                    // their limits, as a new upload.
                    within_limits(c, &b)?;
                    c.prepare_cached(
                        "UPDATE blobs SET state = ?2, created = ?3, owner = ?4, origin = ?5,
                                reoffered = 0, shared = 0
                          WHERE id = ?1",
                    )?
                    .execute(params![
                        b.id.0.as_slice(),
                        UPLOADED,
                        b.created as i64,
                        b.owner,
                        b.origin
                    ])?;
                    return Ok(BlobStatus {
                        owner: b.owner,
                        origin: b.origin,
                        ..s
                    });
                }
                if s.owner == b.owner && s.origin == b.origin {
                    // Its holder again: kept a day from now, and past the envelopes that
                    // name it now.
                    c.prepare_cached(
                        "UPDATE blobs SET created = ?2, reoffered = (state = ?3) WHERE id = ?1",
                    )?
                    .execute(params![
                        b.id.0.as_slice(),
                        b.created as i64,
                        NAMED
                    ])?;
                } else {
                    // Someone else relies on it now: its owner may not give it up. It stays
                    // the owner's, on the owner's terms (nobody else keeps it alive).
                    c.prepare_cached("UPDATE blobs SET shared = 1 WHERE id = ?1")?
                        .execute([b.id.0.as_slice()])?;
                }
                // Not complete yet, declared smaller than this: the larger size holds (the
                // same chunks either way), so a short declaration cannot refuse the real
                // last chunk.
                if !s.complete() && b.size > s.size && b.size <= b.max_size {
                    c.prepare_cached("UPDATE blobs SET size = ?2 WHERE id = ?1")?
                        .execute(params![b.id.0.as_slice(), b.size as i64])?;
                    return Ok(BlobStatus { size: b.size, ..s });
                }
                return Ok(s);
            }
            within_limits(c, &b)?;
            let manifest = b.manifest.to_bytes();
            c.prepare_cached(
                "INSERT INTO blobs (id, owner, origin, size, manifest, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                b.id.0.as_slice(),
                b.owner,
                b.origin,
                b.size as i64,
                manifest,
                b.created as i64
            ])?;
            Ok(BlobStatus {
                owner: b.owner,
                origin: b.origin,
                size: b.size,
                manifest: b.manifest,
                stored: Vec::new(),
            })
        })
        .await
    }

    /// Where an upload stands; `None` when there is no such blob.
    pub async fn blob_status(&self, id: BlobId) -> Result<Option<BlobStatus>, StoreError> {
        self.read(move |c| status(c, &id)).await
    }

    /// The blob, when `reader` may read it: its uploader, or a local recipient of a
    /// pending envelope that names it. `None` otherwise, as for no blob at all.
    pub async fn readable_blob(
        &self,
        id: BlobId,
        reader: String,
    ) -> Result<Option<BlobStatus>, StoreError> {
        self.read(move |c| {
            if may_read(c, &id, &reader)? {
                status(c, &id)
            } else {
                Ok(None)
            }
        })
        .await
    }

    /// Stores chunk `n` of a blob after checking it against the manifest (again: a
    /// repeated chunk is the same bytes; whoever sends it, for the same reason); a last
    /// chunk shorter than declared sets the size. Returns the upload's state after it.
    pub async fn blob_put(
        &self,
        id: BlobId,
        n: u64,
        data: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<BlobStatus, StoreError> {
        // The hash is taken before the writer is asked: a megabyte of SHA-256 is not the
        // single writer's work.
        let hash = Manifest::chunk_hash(data.as_ref());
        self.write(move |c| {
            let mut s = status(c, &id)?.ok_or(StoreError::NoBlob)?;
            let chunks = s.manifest.0.len() as u64;
            let Some(expected) = s.manifest.0.get(usize::try_from(n).unwrap_or(usize::MAX)) else {
                return Err(StoreError::ChunkMismatch(format!(
                    "the blob has chunks 0 to {}; there is no chunk {n}",
                    chunks - 1
                )));
            };
            // Every chunk but the last is whole; the last is what the manifest says, so its
            // length sets the blob's size, never above the size declared (the largest of
            // those declared: `Store::blob_begin`), which the limits were checked against.
            let last = n + 1 == chunks;
            let data = data.as_ref();
            let len = data.len() as u64;
            let whole = sealed_chunk_len(s.size, chunks, n);
            let fits = if last {
                (TAG as u64..=whole).contains(&len)
            } else {
                len == whole
            };
            if !fits {
                return Err(StoreError::ChunkMismatch(format!(
                    "chunk {n} is {whole} bytes; this one has {len}"
                )));
            }
            if *expected != hash {
                return Err(StoreError::ChunkMismatch(format!(
                    "chunk {n} does not match the blob's manifest: it was changed on the way, \
                     or belongs to another blob"
                )));
            }
            if s.stored.binary_search(&n).is_err() {
                c.prepare_cached("INSERT INTO blob_chunks (blob, n, data) VALUES (?1, ?2, ?3)")?
                    .execute(params![id.0.as_slice(), n as i64, data])?;
                let at = s.stored.partition_point(|&m| m < n);
                s.stored.insert(at, n);
                if last && len != whole {
                    s.size = (chunks - 1) * SEALED_CHUNK as u64 + len;
                    c.prepare_cached("UPDATE blobs SET size = ?2 WHERE id = ?1")?
                        .execute(params![id.0.as_slice(), s.size as i64])?;
                }
            }
            Ok(s)
        })
        .await
    }

    /// Deletes `owner`'s upload `id` if no envelope names it and nobody else began it too;
    /// whether there was one.
    pub async fn blob_discard(&self, id: BlobId, owner: String) -> Result<bool, StoreError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM blobs
                  WHERE id = ?1 AND owner = ?2 AND origin IS NULL AND state = ?3 AND shared = 0",
            )?
            .execute(params![id.0.as_slice(), owner, UPLOADED])?
                == 1)
        })
        .await
    }

    /// Deletes the released blobs in the background, when `released` says there are some
    /// (an acknowledgement or a finished delivery to another domain let their last
    /// envelope go).
    pub(super) fn purge_released_later(&self, released: bool) {
        if !released {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            // Time 0: released blobs only, not uploads waiting to be named.
            if let Err(e) = store.purge_blobs(0).await {
                tracing::warn!(error = %e, "deleting released blobs failed; the purge retries");
            }
        });
    }

    /// Deletes the released blobs and those uploaded before `cutoff` that no envelope
    /// named (their chunks with them); returns how many. A few blobs per write
    /// transaction, so the overwriting of deleted pages (`secure_delete`) never holds
    /// deliveries up for long.
    pub async fn purge_blobs(&self, cutoff: u64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .write(move |c| {
                    Ok(c.prepare_cached(
                        "DELETE FROM blobs WHERE id IN
                           (SELECT id FROM blobs WHERE state = ?2
                            UNION ALL
                            SELECT id FROM blobs WHERE state = ?3 AND created < ?1
                            LIMIT 4)",
                    )?
                    .execute(params![cutoff as i64, RELEASED, UPLOADED])?)
                })
                .await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Chunk `n` of a blob, when `reader` may read it (as [`Store::readable_blob`]; `None`:
    /// the server itself, bringing a queued envelope's blobs to another domain): one read,
    /// without the blob's list of chunks, since a download asks once per chunk.
    pub async fn blob_chunk(
        &self,
        id: BlobId,
        n: u64,
        reader: Option<String>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| {
            if let Some(reader) = &reader
                && !may_read(c, &id, reader)?
            {
                return Ok(None);
            }
            Ok(
                c.prepare_cached("SELECT data FROM blob_chunks WHERE blob = ?1 AND n = ?2")?
                    .query_row(params![id.0.as_slice(), n as i64], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }
}
