//! Blobs on the client (PROTOCOL.md §19a): the large parts of a message sealed apart from
//! its envelope, uploaded chunk by chunk (a broken upload resumes where the server stands),
//! and downloaded, checked and kept sealed in the local store before a message that names
//! them is committed and acknowledged — after the acknowledgement the server deletes them.

use letterme_protocol::Payload;
use letterme_protocol::blob::{BlobRef, CHUNK, Manifest, Opener, Sealer, chunks};

use crate::http::Api;
use crate::{ClientError, Online, Unlocked, mime};

/// Attempts at an upload's missing chunks before giving up (waiting 1, 2, 4 and 8 s
/// between them).
const UPLOAD_ATTEMPTS: usize = 5;

/// Asks the server where the upload of a blob stands and sends the chunks it lacks.
async fn upload_missing(
    api: &Api,
    id: &str,
    size: u64,
    manifest: &[u8],
    sealed: &[Vec<u8>],
) -> Result<(), ClientError> {
    let state = api.blob_begin(id, size, manifest).await?;
    for (n, chunk) in sealed.iter().enumerate() {
        if !state.stored.contains(&(n as u64)) {
            api.blob_put(id, n as u64, chunk.clone()).await?;
        }
    }
    Ok(())
}

/// Seals `bytes` as one blob: its sealed chunks, in order, its reference and manifest.
pub(crate) fn seal(bytes: &[u8]) -> (Vec<Vec<u8>>, BlobRef, Manifest) {
    let mut sealer = Sealer::new();
    // Every chunk but the last is full; the last holds the rest (0 to CHUNK bytes).
    let full = bytes.len().saturating_sub(1) / CHUNK;
    let mut out: Vec<Vec<u8>> = bytes
        .chunks(CHUNK)
        .take(full)
        .map(|c| sealer.seal_chunk(c))
        .collect();
    let (last, reference, manifest) = sealer.finish(&bytes[full * CHUNK..]);
    out.push(last);
    (out, reference, manifest)
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
        let (sealed, reference, manifest) = seal(bytes);
        let size: u64 = sealed.iter().map(|c| c.len() as u64).sum();
        let manifest = manifest.to_bytes();
        let mut api = self.api.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let broken = match upload_missing(&api, &reference.id, size, &manifest, &sealed).await {
                Ok(()) => return Ok(reference),
                // The server refused: sending the same again changes nothing.
                Err(e @ ClientError::Api { .. }) => return Err(e),
                Err(e) => e,
            };
            if attempt >= UPLOAD_ATTEMPTS {
                return Err(broken);
            }
            let wait = std::time::Duration::from_millis(500 << attempt);
            tracing::warn!(error = %broken, blob = %reference.id, ?wait, "blob upload broke off; resuming");
            tokio::time::sleep(wait).await;
            let p = &self.me.profile;
            if let Err(e) = api
                .login(&p.domain, &p.address, &self.me.keys.identity)
                .await
            {
                tracing::warn!(error = %e, "logging in again failed");
            }
        }
    }

    /// Downloads a blob's sealed chunks and checks them against `reference`: the chunks
    /// (kept sealed in the local store) and the bytes.
    pub(crate) async fn download_blob(
        &self,
        reference: &BlobRef,
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>), ClientError> {
        let mut sealed = Vec::new();
        for n in 0..chunks(reference.size) {
            sealed.push(self.api.blob_chunk(&reference.id, n).await?);
        }
        let bytes = open(&sealed, reference)?;
        Ok((sealed, bytes))
    }

    /// The payload to seal for `payload`: its parts larger than
    /// [`mime::BLOB_THRESHOLD`] uploaded as blobs, in the entity's place a field naming
    /// each. Unchanged when nothing is that large.
    pub(crate) async fn with_parts_as_blobs(
        &self,
        payload: &Payload,
    ) -> Result<Payload, ClientError> {
        let Some(entity) = &payload.mime else {
            return Ok(payload.clone());
        };
        let (detached, bodies) = mime::detach(entity, mime::BLOB_THRESHOLD);
        if bodies.is_empty() {
            return Ok(payload.clone());
        }
        let limit = self.api.server_info().await?.max_attachment_size;
        let mut refs = Vec::with_capacity(bodies.len());
        for body in bodies {
            let part = &entity[body];
            let sealed = letterme_protocol::blob::sealed_size(part.len() as u64);
            if sealed > limit {
                return Err(ClientError::AttachmentTooLarge {
                    size: sealed,
                    limit,
                });
            }
            refs.push(self.upload_blob(part).await?);
        }
        Ok(Payload {
            mime: Some(detached),
            blobs: refs,
            ..payload.clone()
        })
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
        let mime = mime::attach(entity, &bodies);
        Ok(Payload {
            mime: Some(mime),
            ..payload
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_and_changed_ones_do_not() {
        for len in [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let (sealed, r, manifest) = seal(&bytes);
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
