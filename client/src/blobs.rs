//! Blobs on the client (PROTOCOL.md §19a): the large parts of a message sealed apart from
//! its envelope, uploaded chunk by chunk (a broken upload resumes where the server stands),
//! and downloaded, checked and kept sealed in the local store before a message that names
//! them is committed and acknowledged — after the acknowledgement the server deletes them.

use letterme_protocol::Payload;
use letterme_protocol::blob::{BlobRef, CHUNK, Manifest, Opener, Sealer};

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
    /// A blob could not be had: the message was withdrawn, for this reason.
    Refused(String),
}

/// Attempts at an upload's missing chunks before giving up (waiting 1, 2, 4 and 8 s
/// between them).
const UPLOAD_ATTEMPTS: usize = 5;

/// `bytes` cut as a blob is: every chunk but the last full, the last holding the rest (0
/// to [`CHUNK`] bytes).
fn split(bytes: &[u8]) -> (std::slice::Chunks<'_, u8>, &[u8]) {
    let full = bytes.len().saturating_sub(1) / CHUNK;
    (bytes[..full * CHUNK].chunks(CHUNK), &bytes[full * CHUNK..])
}

/// Seals `bytes` under `sealer`, giving each sealed chunk with its number to `each` as it
/// is made; returns the reference and the manifest.
fn seal_each(
    bytes: &[u8],
    mut sealer: Sealer,
    mut each: impl FnMut(u64, Vec<u8>),
) -> (BlobRef, Manifest) {
    let (full, last) = split(bytes);
    let mut n = 0;
    for c in full {
        each(n, sealer.seal_chunk(c));
        n += 1;
    }
    let (sealed, reference, manifest) = sealer.finish(last);
    each(n, sealed);
    (reference, manifest)
}

/// Asks the server where the upload of blob `reference` stands and sends the chunks it
/// lacks, sealing them again one at a time; each chunk is kept in `cache` too (our Sent
/// copy reads the blob there).
async fn upload_missing(
    api: &Api,
    cache: &Cache,
    reference: &BlobRef,
    manifest: &[u8],
    bytes: &[u8],
) -> Result<(), ClientError> {
    let size = letterme_protocol::blob::sealed_size(bytes.len() as u64);
    let state = api.blob_begin(&reference.id, size, manifest).await?;
    let held = cache.held_chunks(&reference.id)?;
    let mut sealer = Sealer::again(reference);
    let (full, last) = split(bytes);
    let mut n = 0;
    let each = async |n: u64, sealed: Vec<u8>| -> Result<(), ClientError> {
        if !held.contains(&n) {
            cache.keep_chunk(&reference.id, n, &sealed)?;
        }
        if !state.stored.contains(&n) {
            api.blob_put(&reference.id, n, sealed).await?;
        }
        Ok(())
    };
    for c in full {
        each(n, sealer.seal_chunk(c)).await?;
        n += 1;
    }
    let (sealed, _, _) = sealer.finish(last);
    each(n, sealed).await
}

/// Opens a blob's sealed chunks against its reference: every chunk authenticates, in
/// order, and the whole has the reference's size and id.
pub(crate) fn open(sealed: &[Vec<u8>], reference: &BlobRef) -> Result<Vec<u8>, ClientError> {
    let mut opener = Opener::new(reference)?;
    let Some((last, rest)) = sealed.split_last() else {
        return Err(letterme_protocol::blob::BlobError::Size {
            expected: reference.size,
            got: 0,
        }
        .into());
    };
    let mut out = Vec::with_capacity(usize::try_from(reference.size).unwrap_or(0).min(1 << 30));
    for c in rest {
        out.extend(opener.open_chunk(c)?);
    }
    out.extend(opener.finish(last)?);
    Ok(out)
}

impl Online {
    /// Seals `bytes` and uploads it as a blob. When the connection breaks (the server
    /// restarting included) it waits, logs in again and resumes with the chunks the server
    /// does not hold. The reference goes into the payload.
    pub(crate) async fn upload_blob(&self, bytes: &[u8]) -> Result<BlobRef, ClientError> {
        // The manifest first (the upload declares it); the chunks are sealed again as
        // they go, so no more than one is held.
        let (reference, manifest) = seal_each(bytes, Sealer::new(), |_, _| {});
        let manifest = manifest.to_bytes();
        let mut api = self.api.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let broken =
                match upload_missing(&api, &self.me.cache, &reference, &manifest, bytes).await {
                    Ok(()) => return Ok(reference),
                    // A restarted server forgot the login (401): log in again and resume.
                    Err(e @ ClientError::Api { status: 401, .. }) => e,
                    // The server refused: sending the same again changes nothing.
                    Err(e @ ClientError::Api { .. }) => {
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
        api.login(&p.domain, &p.address, &self.me.keys.identity)
            .await
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

    /// Downloads the chunks of blob `reference` the local store lacks, one at a time,
    /// each checked against the reference before it is kept (sealed, as it came), and the
    /// kept ones checked again in order: at the end the whole is the blob the reference
    /// names. A download broken off resumes after the chunks kept; a login that expires on
    /// the way (a large blob on a slow line outlasts a token) is renewed.
    pub(crate) async fn keep_blob(&self, reference: &BlobRef) -> Result<(), ClientError> {
        let held = self.me.cache.held_chunks(&reference.id)?;
        let mut api = self.api.clone();
        let mut opener = Opener::new(reference)?;
        let last = opener.chunks().saturating_sub(1);
        for n in 0..last {
            let chunk = self
                .chunk(&mut api, reference, held.contains(&n), n)
                .await?;
            opener.open_chunk(&chunk)?;
            self.keep(reference, &held, n, &chunk)?;
        }
        let chunk = self
            .chunk(&mut api, reference, held.contains(&last), last)
            .await?;
        opener.finish(&chunk)?;
        self.keep(reference, &held, last, &chunk)
    }

    /// Chunk `n` of a blob: the kept one, or downloaded.
    async fn chunk(
        &self,
        api: &mut Api,
        reference: &BlobRef,
        kept: bool,
        n: u64,
    ) -> Result<Vec<u8>, ClientError> {
        if kept && let Some(c) = self.me.cache.blob_chunk(&reference.id, n)? {
            return Ok(c);
        }
        match api.blob_chunk(&reference.id, n).await {
            Err(ClientError::Api { status: 401, .. }) => {
                self.login_again(api).await?;
                api.blob_chunk(&reference.id, n).await
            }
            other => other,
        }
    }

    /// Keeps a checked chunk that is not kept yet.
    fn keep(
        &self,
        reference: &BlobRef,
        held: &std::collections::BTreeSet<u64>,
        n: u64,
        chunk: &[u8],
    ) -> Result<(), ClientError> {
        if held.contains(&n) {
            return Ok(());
        }
        self.me.cache.keep_chunk(&reference.id, n, chunk)
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
            match self.keep_blob(&p.blob).await {
                Ok(()) => {}
                Err(ClientError::Blob(e)) => {
                    refused = Some(format!("attachment blob {}: {e}", p.blob.id));
                    break;
                }
                Err(ClientError::Api { status: 404, .. }) => {
                    refused = Some(format!(
                        "attachment blob {} is not on the server",
                        p.blob.id
                    ));
                    break;
                }
                Err(e) => return Err(e),
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
                Downloaded::Refused(reason)
            }
        };
        // The next sync acknowledges it if this does not get through.
        if let Err(e) = self.api.ack_many(std::slice::from_ref(&envelope_id)).await {
            tracing::warn!(error = %e, id = %envelope_id, "acknowledging failed; the next sync will");
        }
        Ok(outcome)
    }

    /// The payload to seal for `payload` with `entity` when the entity has parts larger
    /// than [`mime::BLOB_THRESHOLD`]: those uploaded as blobs, in the entity's place a
    /// field naming each. `None` when nothing is that large.
    pub(crate) async fn with_parts_as_blobs(
        &self,
        payload: &Payload,
        entity: &[u8],
    ) -> Result<Option<Payload>, ClientError> {
        let (detached, bodies) = mime::detach(entity, mime::BLOB_THRESHOLD);
        if bodies.is_empty() {
            return Ok(None);
        }
        let limit = self.api.server_info().await?.max_attachment_size;
        if limit == 0 {
            // A server from before blobs: the parts stay in the envelope.
            return Ok(None);
        }
        // Every size first: nothing is uploaded for a message that cannot go.
        for body in &bodies {
            let sealed = letterme_protocol::blob::sealed_size(body.len() as u64);
            if sealed > limit {
                return Err(ClientError::AttachmentTooLarge {
                    size: sealed,
                    limit,
                });
            }
        }
        let mut refs = Vec::with_capacity(bodies.len());
        for body in bodies {
            match self.upload_blob(&entity[body]).await {
                Ok(r) => refs.push(r),
                Err(e) => {
                    self.discard_blobs(&refs).await;
                    return Err(e);
                }
            }
        }
        Ok(Some(Payload {
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
            // Not the whole entity again: it is the large part of the payload.
            mime: Some(detached),
            blobs: refs,
        }))
    }
}

impl Unlocked {
    /// `payload` with the bodies of its blobs back in its entity, from the sealed chunks
    /// the local store keeps. A blob the store does not hold stays a placeholder field.
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
            bodies.push(if sealed.is_empty() {
                None
            } else {
                Some(open(&sealed, r)?)
            });
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
    use letterme_protocol::blob::chunks;

    #[test]
    fn sealed_blobs_open_and_changed_ones_do_not() {
        for len in [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut sealed = Vec::new();
            let (r, manifest) = seal_each(&bytes, Sealer::new(), |n, c| {
                assert_eq!(n, sealed.len() as u64);
                sealed.push(c);
            });
            // Sealed again under the same reference: the same chunks.
            let mut again = Vec::new();
            let (r2, m2) = seal_each(&bytes, Sealer::again(&r), |_, c| again.push(c));
            assert_eq!(
                (again.clone(), r2.id.clone(), m2.0.clone()),
                (sealed.clone(), r.id.clone(), manifest.0.clone())
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
