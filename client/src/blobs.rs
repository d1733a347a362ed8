//! Blobs on the client (PROTOCOL.md §19a): the large parts of a message sealed apart from
//! its envelope, uploaded chunk by chunk (a broken upload resumes where the server stands),
//! and downloaded, checked and kept sealed in the local store before a message that names
//! them is committed and acknowledged — after the acknowledgement the server deletes them.

use letterme_protocol::Payload;
use std::sync::Arc;

use letterme_protocol::blob::{
    BlobRef, CHUNK, ChunkSealer, ChunkSource, FirstPass, Opener, Sealer, chunks,
};

use crate::attached::{AttachedFile, Begun};
use crate::cache::Cache;
use crate::http::Api;
use crate::{ClientError, Online, Unlocked, mime};

/// What [`Online::download_awaited`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downloaded {
    /// The message waited for nothing (any more).
    Nothing,
    /// Its blobs are kept: it is served whole.
    Kept,
    /// A blob could not be had: the message (envelope `envelope`) was withdrawn.
    Refused { envelope: String, reason: String },
}

/// Chunk transfers of one blob in flight at once (uploads and downloads): the network,
/// the server's group commit and our sealing or checking overlap.
const CHUNKS_AHEAD: usize = 4;

/// Chunks kept in one local commit (each commit waits for the disk).
const CHUNKS_PER_COMMIT: usize = 8;

/// Chunks of an upload kept in one local commit: half as many, as the chunks of one commit
/// wait in memory while the chunks of the one before are written.
const UPLOAD_CHUNKS_PER_COMMIT: usize = CHUNKS_PER_COMMIT / 2;

/// Attempts at an upload's missing chunks before giving up (waiting 1, 2, 4 and 8 s
/// between them).
const UPLOAD_ATTEMPTS: usize = 5;

/// Asks the server where the upload of blob `reference` stands and sends the chunks it
/// lacks, [`CHUNKS_AHEAD`] in flight, each sealed again in its transfer's task (the
/// runtime's workers seal side by side); each chunk is kept in `cache` too (our Sent copy
/// reads the blob there), [`UPLOAD_CHUNKS_PER_COMMIT`] at a time, each commit beside the next
/// chunks' transfers.
async fn upload_missing<S: ChunkSource + ?Sized>(
    api: &Api,
    cache: &Arc<Cache>,
    pass: &FirstPass,
    manifest: &[u8],
    source: &S,
) -> Result<(), ClientError> {
    let reference = &pass.reference;
    let size = letterme_protocol::blob::sealed_size(source.size());
    let state = api.blob_begin(&reference.id, size, manifest).await?;
    let held = cache.held_chunks(&reference.id)?;
    let sealer = Arc::new(ChunkSealer::again(reference));
    let mut keeping = Keeping::new(cache, &reference.id);
    let count = chunks(source.size());
    let sent = async {
        let mut transfers = tokio::task::JoinSet::new();
        for n in 0..count {
            let (upload, keep) = (!state.stored.contains(&n), !held.contains(&n));
            if !upload && !keep {
                continue;
            }
            while transfers.len() >= CHUNKS_AHEAD {
                keeping
                    .add(joined(transfers.join_next().await)?.flatten())
                    .await?;
            }
            // A file is read here (a megabyte from the page cache, or from the disk).
            let chunk = source
                .chunk(n)
                .map_err(|e| ClientError::attachment(&e))?
                .into_owned();
            let tag = pass
                .tags
                .get(usize::try_from(n).unwrap_or(usize::MAX))
                .copied();
            let (api, id, sealer) = (api.clone(), reference.id.clone(), sealer.clone());
            transfers.spawn(async move {
                // About a millisecond of work: sealed here rather than handed to a blocking
                // thread, whose allocator arena would keep its megabytes. Bytes that are not
                // those of the first pass (a file rewritten since) go nowhere: sealed under
                // the same nonce, they would give away both versions.
                let sealed = tag
                    .and_then(|tag| sealer.seal_again(n, n + 1 == count, &chunk, &tag))
                    .ok_or_else(|| {
                        ClientError::Attachment(
                            "the file changed while it was being sent; send it again".into(),
                        )
                    })?;
                let sealed = bytes::Bytes::from(sealed);
                drop(chunk);
                if upload {
                    api.blob_put(&id, n, sealed.clone()).await?;
                }
                Ok(keep.then_some((n, sealed)))
            });
        }
        while let Some(done) = transfers.join_next().await {
            keeping.add(joined(Some(done))?.flatten()).await?;
        }
        Ok(())
    }
    .await;
    match sent {
        Ok(()) => keeping.finish().await,
        // The commit under way ends before the error is told: a send given up deletes the
        // chunks kept, which a commit still running would put back.
        Err(e) => {
            let _ = keeping.wait().await;
            Err(e)
        }
    }
}

/// The chunks of an upload kept locally, [`UPLOAD_CHUNKS_PER_COMMIT`] to a commit on a blocking
/// thread, one commit at a time.
struct Keeping {
    cache: Arc<Cache>,
    blob: String,
    fresh: Vec<(u64, bytes::Bytes)>,
    committing: Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
}

impl Keeping {
    fn new(cache: &Arc<Cache>, blob: &str) -> Self {
        Self {
            cache: cache.clone(),
            blob: blob.to_owned(),
            fresh: Vec::new(),
            committing: None,
        }
    }

    /// Takes a sealed chunk to keep; commits once there are enough.
    async fn add(&mut self, chunk: Option<(u64, bytes::Bytes)>) -> Result<(), ClientError> {
        self.fresh.extend(chunk);
        if self.fresh.len() >= UPLOAD_CHUNKS_PER_COMMIT {
            self.commit().await?;
        }
        Ok(())
    }

    /// Waits for the commit under way, then starts one of the chunks taken since.
    async fn commit(&mut self) -> Result<(), ClientError> {
        self.wait().await?;
        let (cache, blob) = (self.cache.clone(), self.blob.clone());
        let chunks = std::mem::take(&mut self.fresh);
        self.committing = Some(tokio::task::spawn_blocking(move || {
            cache.keep_chunks(&blob, &chunks)
        }));
        Ok(())
    }

    async fn wait(&mut self) -> Result<(), ClientError> {
        match self.committing.take() {
            Some(commit) => commit
                .await
                .map_err(|e| ClientError::Io(format!("keeping chunks failed: {e}")))?,
            None => Ok(()),
        }
    }

    /// Commits the rest and waits for it.
    async fn finish(mut self) -> Result<(), ClientError> {
        if !self.fresh.is_empty() {
            self.commit().await?;
        }
        self.wait().await
    }
}

/// The outcome of a chunk's transfer task.
fn joined<T>(
    done: Option<Result<Result<T, ClientError>, tokio::task::JoinError>>,
) -> Result<Option<T>, ClientError> {
    done.map(|r| r.map_err(|e| ClientError::Io(format!("a chunk transfer failed: {e}")))?)
        .transpose()
}

/// Chunk downloads started ahead of the one being checked, in order; aborted when the
/// download ends early.
struct Ahead(std::collections::VecDeque<(u64, ChunkTask)>);

/// A chunk's download.
type ChunkTask = tokio::task::JoinHandle<Result<Vec<u8>, ClientError>>;

impl Drop for Ahead {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// Opens a blob's sealed chunks against its reference: every chunk authenticates, in
/// order, and the whole has the reference's size and id.
pub(crate) fn open(sealed: &[Vec<u8>], reference: &BlobRef) -> Result<Vec<u8>, ClientError> {
    let mut opener = Opener::new(reference)?;
    if sealed.len() as u64 != opener.chunks() {
        return Err(letterme_protocol::blob::BlobError::Size {
            expected: reference.size,
            got: (sealed.len() * CHUNK) as u64,
        }
        .into());
    }
    let mut out = Vec::with_capacity(usize::try_from(reference.size).unwrap_or(0).min(1 << 30));
    for c in sealed {
        out.extend(opener.open_next(c)?);
    }
    Ok(out)
}

/// The first pass over a blob (its manifest: the upload declares it, and the blob's id is
/// its hash), sealed on every core; the chunks are sealed again as they go, so no more than
/// a few are held.
fn first_pass<S: ChunkSource + ?Sized>(source: &S) -> std::io::Result<FirstPass> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Sealer::first_pass(source, threads)
}

/// Begins the first pass over each of `files` that stays in its file, one file after the
/// other on a thread of its own: it then runs beside what a send does before its uploads
/// (the passphrase's Argon2, opening the local store, logging in, looking the recipients
/// up) rather than after it. The send takes each up as it uploads the file; a send that
/// does not get that far only spent the work.
pub fn seal_ahead(files: &[AttachedFile]) {
    let mut passes = Vec::new();
    for f in files {
        if let Some(slot) = f.bytes.ahead() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            slot.set(rx);
            passes.push((f.bytes.clone(), tx));
        }
    }
    if passes.is_empty() {
        return;
    }
    // Without a thread, the send makes each pass itself.
    let _ = std::thread::Builder::new()
        .name("letterme-seal-ahead".into())
        .spawn(move || {
            for (bytes, tx) in passes {
                let _ = tx.send(first_pass(&bytes));
            }
        });
}

impl Online {
    /// Seals `source` and uploads it as a blob, its first pass `begun` ahead or made here.
    /// When the connection breaks (the server restarting included) it waits, logs in again
    /// and resumes with the chunks the server does not hold. The reference goes into the
    /// payload.
    pub(crate) async fn upload_blob<S: ChunkSource + ?Sized>(
        &self,
        source: &S,
        begun: Option<Begun>,
    ) -> Result<BlobRef, ClientError> {
        let ahead = match begun {
            Some(rx) => tokio::task::spawn_blocking(move || rx.recv().ok())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let pass = ahead
            .unwrap_or_else(|| first_pass(source))
            .map_err(|e| ClientError::attachment(&e))?;
        let reference = pass.reference.clone();
        let cache = &self.me.cache;
        let manifest = pass.manifest.to_bytes();
        let mut api = self.api.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let broken = match upload_missing(&api, cache, &pass, &manifest, source).await {
                Ok(()) => return Ok(reference),
                // A restarted server forgot the login (401): log in again and resume.
                Err(e @ ClientError::Api { status: 401, .. }) => e,
                // The server refused, or the file cannot be read: trying again changes
                // nothing.
                Err(e @ (ClientError::Api { .. } | ClientError::Attachment(_))) => {
                    self.discard_blobs(std::slice::from_ref(&reference)).await;
                    return Err(e);
                }
                Err(e) => e,
            };
            if attempt >= UPLOAD_ATTEMPTS {
                self.discard_blobs(std::slice::from_ref(&reference)).await;
                return Err(broken);
            }
            let wait = std::time::Duration::from_millis(500 << attempt);
            tracing::warn!(error = %broken, blob = %reference.id, ?wait, "blob upload broke off; resuming");
            tokio::time::sleep(wait).await;
            if let Err(e) = self.login_again(&mut api).await {
                tracing::warn!(error = %e, "logging in again failed");
            }
        }
    }

    /// Logs in again on `api` (a clone of ours: the new token serves every clone).
    async fn login_again(&self, api: &mut Api) -> Result<(), ClientError> {
        let p = &self.me.profile;
        api.login(&p.domain, &p.address, &self.me.keys.device).await
    }

    /// After a send that failed: gives up its uploads on the server (which keeps any a
    /// posted envelope names) and, for those, the chunks kept for the Sent copy.
    pub(crate) async fn discard_blobs(&self, refs: &[BlobRef]) {
        for r in refs {
            if let Err(e) = self.api.blob_discard(&r.id).await {
                tracing::debug!(error = %e, blob = %r.id, "the server keeps the blob");
            }
            // No Sent copy is filed for a send that failed: nothing here reads them.
            if let Err(e) = self.me.cache.discard_chunks(&r.id) {
                tracing::warn!(error = %e, blob = %r.id, "cannot delete the chunks kept for a failed send");
            }
        }
    }

    /// Downloads the chunks of blob `reference` the local store lacks, [`CHUNKS_AHEAD`]
    /// in flight, each checked against the reference in order before it is kept (sealed,
    /// as it came, [`CHUNKS_PER_COMMIT`] at a time), and the kept ones checked again: at
    /// the end the whole is the blob the reference names. A download broken off resumes
    /// after the chunks kept; a login that expires on the way (a large blob on a slow line
    /// outlasts a token) is renewed. A kept chunk that does not open is compared with the
    /// server's, once: the same bytes mean the reference is wrong (the message is refused,
    /// and nothing kept changes — other messages may name the same blob); other bytes mean
    /// the kept one was damaged on disk, and the server's replaces it.
    pub(crate) async fn keep_blob(&self, reference: &BlobRef) -> Result<(), ClientError> {
        let cache = &self.me.cache;
        let mut compared = std::collections::BTreeSet::new();
        loop {
            let (n, error) = match self.keep_blob_once(reference).await? {
                Ok(()) => return Ok(()),
                Err(failed) => failed,
            };
            if !compared.insert(n) {
                return Err(error.into());
            }
            let served = self.api.blob_chunk(&reference.id, n).await?;
            if cache.blob_chunk(&reference.id, n)?.as_deref() == Some(served.as_slice()) {
                return Err(error.into());
            }
            tracing::warn!(blob = %reference.id, chunk = n, "a kept chunk was damaged; replaced with the server's");
            cache.replace_chunk(&reference.id, n, &served)?;
        }
    }

    /// [`Online::keep_blob`] once: `Ok(Err((n, why)))` when kept chunk `n` does not open.
    async fn keep_blob_once(
        &self,
        reference: &BlobRef,
    ) -> Result<Result<(), (u64, letterme_protocol::blob::BlobError)>, ClientError> {
        let cache = &self.me.cache;
        let held = cache.held_chunks(&reference.id)?;
        let mut api = self.api.clone();
        let mut opener = Opener::new(reference)?;
        let count = opener.chunks();
        let mut ahead = Ahead(std::collections::VecDeque::new());
        let mut next = 0;
        let mut fresh = Vec::new();
        for n in 0..count {
            while ahead.0.len() < CHUNKS_AHEAD && next < count {
                if !held.contains(&next) {
                    let (api, id, m) = (api.clone(), reference.id.clone(), next);
                    let task = tokio::spawn(async move { api.blob_chunk(&id, m).await });
                    ahead.0.push_back((m, task));
                }
                next += 1;
            }
            let kept = if held.contains(&n) {
                cache.blob_chunk(&reference.id, n)?
            } else {
                None
            };
            let from_store = kept.is_some();
            let chunk = if let Some(c) = kept {
                c
            } else {
                let started = ahead.0.front().is_some_and(|(m, _)| *m == n);
                let got = if started && let Some((_, task)) = ahead.0.pop_front() {
                    task.await
                        .map_err(|e| ClientError::Io(format!("a chunk transfer failed: {e}")))?
                } else {
                    // Listed as kept, gone meanwhile: downloaded now.
                    api.blob_chunk(&reference.id, n).await
                };
                match got {
                    Err(ClientError::Api { status: 401, .. }) => {
                        self.login_again(&mut api).await?;
                        api.blob_chunk(&reference.id, n).await?
                    }
                    other => other?,
                }
            };
            match opener.open_next(&chunk) {
                Err(e) if from_store => return Ok(Err((n, e))),
                other => drop(other?),
            }
            if !from_store {
                fresh.push((n, chunk));
            }
            if fresh.len() >= CHUNKS_PER_COMMIT || n + 1 == count {
                cache.keep_chunks(&reference.id, &fresh)?;
                fresh.clear();
            }
        }
        Ok(Ok(()))
    }

    /// [`Online::keep_blob`]; `Ok(Err(reason))` when the blob cannot be had for good (a
    /// chunk that does not open, a blob the server does not have): the message naming it
    /// is refused. Errors are what may pass.
    pub(crate) async fn keep_or_refuse(
        &self,
        reference: &BlobRef,
    ) -> Result<Result<(), String>, ClientError> {
        match self.keep_blob(reference).await {
            Ok(()) => Ok(Ok(())),
            Err(ClientError::Blob(e)) => Ok(Err(format!("attachment blob {}: {e}", reference.id))),
            Err(ClientError::Api { status: 404, .. }) => Ok(Err(format!(
                "attachment blob {} is not on the server",
                reference.id
            ))),
            Err(e) => Err(e),
        }
    }

    /// Downloads the blobs a message filed before them waits for ([`Cache::awaited`]),
    /// then lets its envelope be acknowledged, and acknowledges it. A blob that cannot be
    /// had (damaged, or no longer on the server) withdraws the message from every mailbox
    /// and sets it aside as refused, as a sync that downloads with the message would have.
    /// Errors are what may pass (the network, the server away).
    pub async fn download_awaited(&self, content: i64) -> Result<Downloaded, ClientError> {
        let cache = &self.me.cache;
        let Some(crate::cache::Awaited {
            envelope_id,
            pieces,
        }) = cache.awaited(content)?
        else {
            return Ok(Downloaded::Nothing);
        };
        let mut refused = None;
        for p in pieces.iter().flatten() {
            if let Err(reason) = self.keep_or_refuse(&p.blob).await? {
                refused = Some(reason);
                break;
            }
        }
        let outcome = match refused {
            None => {
                cache.downloaded(content)?;
                Downloaded::Kept
            }
            Some(reason) => {
                let mailbox = self.me.mailbox()?;
                if let Some(m) = mailbox.stored(&envelope_id)? {
                    tracing::warn!(id = %envelope_id, sender = %m.sender, %reason, "refused a message");
                    mailbox.refuse(&envelope_id, &m.sender, &reason, &m.envelope, crate::now())?;
                }
                cache.withdraw(content)?;
                Downloaded::Refused {
                    envelope: envelope_id.clone(),
                    reason,
                }
            }
        };
        // The next sync acknowledges it if this does not get through.
        if let Err(e) = self.api.ack_many(std::slice::from_ref(&envelope_id)).await {
            tracing::warn!(error = %e, id = %envelope_id, "acknowledging failed; the next sync will");
        }
        Ok(outcome)
    }

    /// Uploads each file [`mime::compose_apart`] set apart as a blob of its bytes, whose
    /// part's body is their base64 ([`BlobRef::base64`]): the reader makes the text the
    /// sender would have sent, a third more to seal, upload, store and download.
    pub(crate) async fn upload_apart(
        &self,
        files: &[AttachedFile],
        limit: u64,
    ) -> Result<Vec<BlobRef>, ClientError> {
        let bytes: Vec<&crate::attached::FileBytes> = files.iter().map(|f| &f.bytes).collect();
        let begun = files
            .iter()
            .map(|f| f.bytes.ahead().and_then(crate::attached::PassAhead::take))
            .collect();
        let mut refs = self.upload_all(&bytes, begun, limit).await?;
        for r in &mut refs {
            r.base64 = true;
        }
        Ok(refs)
    }

    /// Uploads each of `blobs`, every size checked against `limit` first (nothing is
    /// uploaded for a message that cannot go); after a failure the ones uploaded are given
    /// up.
    async fn upload_all<S: ChunkSource + ?Sized>(
        &self,
        blobs: &[&S],
        begun: Vec<Option<Begun>>,
        limit: u64,
    ) -> Result<Vec<BlobRef>, ClientError> {
        for b in blobs {
            let sealed = letterme_protocol::blob::sealed_size(b.size());
            if sealed > limit {
                return Err(ClientError::AttachmentTooLarge {
                    size: sealed,
                    limit,
                });
            }
        }
        let mut refs = Vec::with_capacity(blobs.len());
        let mut begun = begun.into_iter();
        for b in blobs {
            match self.upload_blob(*b, begun.next().flatten()).await {
                Ok(r) => refs.push(r),
                Err(e) => {
                    self.discard_blobs(&refs).await;
                    return Err(e);
                }
            }
        }
        Ok(refs)
    }

    /// The payload to seal for `payload` with `entity` when the entity has parts larger
    /// than [`mime::BLOB_THRESHOLD`]: those uploaded as blobs, in the entity's place a
    /// field naming each, none larger than `limit` (the server's). `None` when nothing is
    /// that large.
    pub(crate) async fn with_parts_as_blobs(
        &self,
        payload: &Payload,
        entity: &[u8],
        limit: u64,
    ) -> Result<Option<Payload>, ClientError> {
        let (detached, bodies) = mime::detach(entity, mime::BLOB_THRESHOLD);
        if bodies.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&[u8]> = bodies.iter().map(|b| &entity[b.clone()]).collect();
        let refs = self.upload_all(&parts, Vec::new(), limit).await?;
        Ok(Some(with_entity(payload, detached, refs)))
    }
}

/// `payload` carrying `entity`, whose fields name `blobs` in their places; not the whole
/// entity again (it is the large part of the payload).
pub(crate) fn with_entity(payload: &Payload, entity: Vec<u8>, blobs: Vec<BlobRef>) -> Payload {
    Payload {
        from: payload.from.clone(),
        to: payload.to.clone(),
        cc: payload.cc.clone(),
        bcc: payload.bcc.clone(),
        subject: payload.subject.clone(),
        body: payload.body.clone(),
        headers: payload.headers.clone(),
        date: payload.date,
        message_id: payload.message_id.clone(),
        in_reply_to: payload.in_reply_to.clone(),
        references: payload.references.clone(),
        legacy: payload.legacy.clone(),
        mime: Some(entity),
        blobs,
        state: vec![],
    }
}

impl Unlocked {
    /// Writes the body of blob `r`, kept whole in the local store, to `out`, decoding its
    /// transfer encoding, one chunk in memory at a time; the bytes written.
    pub(crate) fn write_blob(
        &self,
        r: &BlobRef,
        transfer: mail_parser::Encoding,
        out: impl std::io::Write,
    ) -> Result<u64, ClientError> {
        let mut opener = Opener::new(r)?;
        // A blob of the bytes themselves (the sender's base64 undone) is written as it is.
        let transfer = if r.base64 {
            mail_parser::Encoding::None
        } else {
            transfer
        };
        let mut decode = mime::Decode::new(transfer, out);
        for n in 0..opener.chunks() {
            let sealed = self
                .cache
                .blob_chunk(&r.id, n)?
                .ok_or_else(|| ClientError::NotDownloaded(r.id.clone()))?;
            decode.feed(&opener.open_next(&sealed)?)?;
        }
        decode.finish()
    }

    /// `payload` with the bodies of its blobs back in its entity, from the sealed chunks
    /// the local store keeps. A blob the store does not hold whole (not downloaded yet,
    /// D76) stays a placeholder field.
    pub(crate) fn with_blob_bodies(&self, payload: Payload) -> Result<Payload, ClientError> {
        if payload.blobs.is_empty() {
            return Ok(payload);
        }
        let Some(entity) = &payload.mime else {
            return Ok(payload);
        };
        let mailbox = self.mailbox()?;
        let mut bodies = Vec::with_capacity(payload.blobs.len());
        for r in &payload.blobs {
            let sealed = mailbox.blob_chunks(&r.id)?;
            bodies.push(
                if sealed.len() as u64 == letterme_protocol::blob::chunks(r.size) {
                    Some(mime::written(r, open(&sealed, r)?))
                } else {
                    None
                },
            );
        }
        // Checked at sync: each blob has one place.
        let (mime, _) = mime::attach(entity, &bodies);
        Ok(Payload {
            mime: Some(mime),
            ..payload
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file left in its file gets its first pass begun ahead, taken once: its reference
    /// seals the file's chunks again into the manifest it declared, each with its tag. A
    /// file held in memory gets none (the send makes it).
    #[test]
    fn a_first_pass_begun_ahead_is_the_files_manifest_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * CHUNK + 5;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, &bytes).unwrap();
        let files = [
            AttachedFile::open(&path).unwrap(),
            AttachedFile::held("small.txt", b"small".to_vec()),
        ];
        seal_ahead(&files);
        assert!(files[1].bytes.ahead().is_none());
        let slot = files[0].bytes.ahead().unwrap();
        let pass = slot.take().unwrap().recv().unwrap().unwrap();
        assert!(slot.take().is_none(), "taken once");
        let again = ChunkSealer::again(&pass.reference);
        let count = chunks(len as u64);
        for n in 0..count {
            let chunk = letterme_protocol::blob::chunk_of(&bytes, n);
            let tag = &pass.tags[n as usize];
            let sealed = again.seal_again(n, n + 1 == count, chunk, tag).unwrap();
            let hash = letterme_protocol::blob::Manifest::chunk_hash(&sealed);
            assert_eq!(pass.manifest.0[n as usize], hash);
        }
        assert_eq!(pass.reference.size, len as u64);
        assert_eq!(pass.reference.id, pass.manifest.id().to_hex());
    }

    /// A file rewritten under a send, its length kept: the chunk sealed again does not give
    /// the first pass's tag, so it is neither sent nor kept (its bytes under the same nonce
    /// would give both versions away); the same bytes seal again as before.
    #[test]
    fn bytes_changed_since_the_first_pass_are_not_sealed_again() {
        let bytes = vec![3u8; CHUNK + 10];
        let pass = first_pass(bytes.as_slice()).unwrap();
        let again = ChunkSealer::again(&pass.reference);
        let mut changed = bytes.clone();
        changed[CHUNK + 2] ^= 1;
        let last = letterme_protocol::blob::chunk_of(&changed, 1);
        assert!(again.seal_again(1, true, last, &pass.tags[1]).is_none());
        let first = letterme_protocol::blob::chunk_of(&changed, 0);
        assert!(again.seal_again(0, false, first, &pass.tags[0]).is_some());
    }

    #[test]
    fn sealed_blobs_open_and_changed_ones_do_not() {
        for len in [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            // The manifest sealed on three threads, the chunks sealed again one by one
            // under its reference, as an upload does: the same chunks.
            let FirstPass {
                reference: r,
                manifest,
                ..
            } = Sealer::first_pass(bytes.as_slice(), 3).unwrap();
            let again = ChunkSealer::again(&r);
            let count = chunks(len as u64);
            let sealed: Vec<Vec<u8>> = (0..count)
                .map(|n| {
                    let chunk = letterme_protocol::blob::chunk_of(&bytes, n);
                    again.seal(n, n + 1 == count, chunk)
                })
                .collect();
            assert_eq!(
                manifest.0,
                sealed
                    .iter()
                    .map(|c| letterme_protocol::blob::Manifest::chunk_hash(c))
                    .collect::<Vec<_>>()
            );
            assert_eq!(sealed.len() as u64, chunks(len as u64));
            assert_eq!(manifest.id().to_hex(), r.id);
            assert_eq!(open(&sealed, &r).unwrap(), bytes);
            let mut changed = sealed.clone();
            changed[0][0] ^= 1;
            assert!(open(&changed, &r).is_err());
            if sealed.len() > 1 {
                assert!(open(&sealed[..sealed.len() - 1], &r).is_err());
            }
        }
    }
}
