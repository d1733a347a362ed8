//! Large attachments as blobs (issue 17.2, docs/PROTOCOL.md §19a): a file encrypted once
//! under a random key of its own, uploaded and stored apart from the envelopes that refer
//! to it, so a 50 MB attachment to five people is one 50 MB blob, not five.
//!
//! The encryption is the STREAM construction (Hoang, Reyhanitabar, Rogaway and Vizár,
//! "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015) as the
//! `aead` crate implements it: XChaCha20-Poly1305 over chunks of [`CHUNK`] bytes, each
//! nonce a random 19-byte prefix, a 32-bit big-endian chunk counter and a last-chunk flag.
//! Each chunk is authenticated on its own (a reader can use the first megabyte before the
//! last has arrived), and chunks cannot be reordered, repeated, dropped or cut off at the
//! end. The blob's id is the SHA-256 of its manifest, the SHA-256 of each sealed chunk in
//! order: the server checks every chunk of an upload against the manifest as it arrives
//! (a flipped bit is refused at once, and a broken upload resumes at the first missing
//! chunk) without being able to read any, and a payload names the blob by its id.

use std::fmt;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit as _;
use chacha20poly1305::aead::stream::{
    DecryptorBE32, NewStream as _, StreamBE32, StreamPrimitive as _,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use zeroize::Zeroize as _;

use crate::b64;
use crate::keys::random_bytes;

/// Plaintext bytes in every chunk but the last.
pub const CHUNK: usize = 1 << 20;
/// A sealed chunk: the plaintext and its 16-byte tag.
pub const SEALED_CHUNK: usize = CHUNK + TAG;
/// Poly1305 tag length.
pub const TAG: usize = 16;
/// The random part of each chunk's nonce (24 bytes less the counter and the flag).
pub const NONCE_PREFIX: usize = 19;

/// A blob's id: the SHA-256 of its manifest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn to_hex(&self) -> String {
        crate::codec::hex(&self.0)
    }

    /// Exactly 64 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::codec::unhex(s).map(Self)
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// How many chunks a blob of `size` plaintext bytes has: every one but the last full, and
/// at least one (an empty file is one empty chunk).
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK as u64).max(1)
}

/// Chunk `n` of a blob's `bytes`: every chunk but the last [`CHUNK`] bytes, the last the
/// rest (0 to [`CHUNK`] bytes).
pub fn chunk_of(bytes: &[u8], n: u64) -> &[u8] {
    let range = chunk_range(bytes.len() as u64, n);
    // Within `bytes`, whose length bounds the range.
    &bytes[range.start as usize..range.end as usize]
}

/// Where chunk `n` of a blob of `size` bytes lies in it ([`chunk_of`]'s bounds, for bytes
/// read from elsewhere than memory).
pub fn chunk_range(size: u64, n: u64) -> std::ops::Range<u64> {
    let start = n.saturating_mul(CHUNK as u64).min(size);
    start..start.saturating_add(CHUNK as u64).min(size)
}

/// A blob's bytes as a sender reads them, a chunk at a time: from memory, or from a file
/// that is never held whole.
pub trait ChunkSource: Sync {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// Chunk `n`, as [`chunk_of`] cuts it.
    fn chunk(&self, n: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>>;
}

impl ChunkSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn chunk(&self, n: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        Ok(chunk_of(self, n).into())
    }
}

/// The sealed size of a blob of `size` plaintext bytes.
pub fn sealed_size(size: u64) -> u64 {
    size + chunks(size) * TAG as u64
}

/// What the server sees of a blob of `sealed` bytes: its sealed chunks, each
/// [`SEALED_CHUNK`] bytes but the last, which holds the rest. `None` when no blob has that
/// size (under one tag, or a last chunk shorter than a tag).
pub fn sealed_chunks(sealed: u64) -> Option<u64> {
    let n = sealed.div_ceil(SEALED_CHUNK as u64).max(1);
    (sealed_chunk_len(sealed, n, n - 1) >= TAG as u64).then_some(n)
}

/// The length of sealed chunk `i` of a blob of `sealed` bytes in `n` chunks.
pub fn sealed_chunk_len(sealed: u64, n: u64, i: u64) -> u64 {
    if i + 1 < n {
        SEALED_CHUNK as u64
    } else {
        sealed.saturating_sub((n - 1) * SEALED_CHUNK as u64)
    }
}

/// The SHA-256 of each sealed chunk, in order: what the server checks chunks against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest(pub Vec<[u8; 32]>);

impl Manifest {
    /// From its wire form, 32 bytes a chunk; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.len().is_multiple_of(32).then(|| {
            Self(
                bytes
                    .chunks_exact(32)
                    .map(|h| h.try_into().expect("32-byte chunks"))
                    .collect(),
            )
        })
    }

    /// Its wire form: the hashes concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.concat()
    }

    /// The blob's id.
    pub fn id(&self) -> BlobId {
        let mut h = Sha256::new();
        for c in &self.0 {
            h.update(c);
        }
        BlobId(h.finalize().into())
    }

    /// The hash a sealed chunk is checked against.
    pub fn chunk_hash(sealed: &[u8]) -> [u8; 32] {
        Sha256::digest(sealed).into()
    }
}

/// What a payload carries to name and open a blob. Inside the encryption only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The blob's id (SHA-256 of its manifest), 64 hex digits.
    pub id: String,
    /// The blob's key.
    #[serde(with = "b64::array")]
    pub key: [u8; 32],
    /// The random prefix of every chunk's nonce.
    #[serde(with = "b64::array")]
    pub nonce: [u8; NONCE_PREFIX],
    /// Plaintext size in bytes.
    pub size: u64,
    /// The part's body as its message has it is the blob's bytes in base64, 76 characters a
    /// line and CRLF between lines (the sender's own encoding, which the reader redoes), not
    /// the blob's bytes themselves: a file goes decoded, a third smaller. Absent (false)
    /// for a body kept as written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRef")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for BlobRef {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Why a blob did not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("the blob reference is malformed")]
    BadReference,
    #[error("chunk {0} of the blob does not authenticate: it was changed or is not this blob's")]
    Chunk(u64),
    #[error("the blob has {got} bytes where its reference says {expected}")]
    Size { expected: u64, got: u64 },
    #[error("the blob's chunks do not hash to its id")]
    Hash,
}

/// Seals any chunk of a blob from its number alone, on any thread: chunk `n` of the STREAM
/// with its last-chunk flag, the same bytes [`Sealer`] gives in order. How a sender seals
/// on every core, and seals again as it uploads a blob whose manifest it declared without
/// keeping every sealed chunk in memory.
pub struct ChunkSealer {
    stream: StreamBE32<XChaCha20Poly1305>,
}

impl fmt::Debug for ChunkSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkSealer").finish_non_exhaustive()
    }
}

impl ChunkSealer {
    fn with(key: &[u8; 32], nonce: &[u8; NONCE_PREFIX]) -> Self {
        let cipher = XChaCha20Poly1305::new(key.into());
        Self {
            stream: StreamBE32::from_aead(cipher, nonce.as_slice().into()),
        }
    }

    /// The key and nonce prefix of a blob sealed before: fed the same bytes, it seals the
    /// same chunks again, byte for byte. Only for those bytes: other bytes sealed at a
    /// position already used reuse its nonce.
    pub fn again(reference: &BlobRef) -> Self {
        Self::with(&reference.key, &reference.nonce)
    }

    /// Seals chunk `n` again, `None` unless it gives the tag the first pass gave it
    /// ([`FirstPass::tags`]): bytes that changed since (a file rewritten under a send) are
    /// sealed under the same nonce, and must then go nowhere.
    pub fn seal_again(&self, n: u64, last: bool, chunk: &[u8], tag: &[u8; TAG]) -> Option<Vec<u8>> {
        let sealed = self.seal(n, last, chunk);
        (sealed.get(sealed.len().saturating_sub(TAG)..) == Some(tag.as_slice())).then_some(sealed)
    }

    /// Seals chunk `n`: [`CHUNK`] bytes unless it is the `last` (then at most that).
    pub fn seal(&self, n: u64, last: bool, chunk: &[u8]) -> Vec<u8> {
        if last {
            assert!(chunk.len() <= CHUNK, "a chunk is at most CHUNK bytes");
        } else {
            assert_eq!(
                chunk.len(),
                CHUNK,
                "every chunk but the last is CHUNK bytes"
            );
        }
        let position = u32::try_from(n).expect("a blob has fewer than 2^32 chunks");
        self.stream
            .encrypt(position, last, chunk)
            .expect("XChaCha20-Poly1305 seals any chunk")
    }
}

/// Encrypts a file chunk by chunk; the caller feeds [`CHUNK`]-byte pieces and ends with
/// the rest (0 to [`CHUNK`] bytes).
pub struct Sealer {
    chunks: ChunkSealer,
    key: [u8; 32],
    nonce: [u8; NONCE_PREFIX],
    manifest: Manifest,
    size: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sealer {
    /// A fresh random key and nonce prefix.
    pub fn new() -> Self {
        let (key, nonce) = (random_bytes::<32>(), random_bytes::<NONCE_PREFIX>());
        Self {
            chunks: ChunkSealer::with(&key, &nonce),
            key,
            nonce,
            manifest: Manifest::default(),
            size: 0,
        }
    }

    /// Seals a chunk that is not the last; it must be exactly [`CHUNK`] bytes.
    pub fn seal_chunk(&mut self, chunk: &[u8]) -> Vec<u8> {
        let sealed = self.chunks.seal(self.manifest.0.len() as u64, false, chunk);
        self.manifest.0.push(Manifest::chunk_hash(&sealed));
        self.size += chunk.len() as u64;
        sealed
    }

    /// Seals the last chunk (at most [`CHUNK`] bytes); returns it, the reference a payload
    /// carries, and the manifest the upload declares.
    pub fn finish(mut self, last: &[u8]) -> (Vec<u8>, BlobRef, Manifest) {
        let sealed = self.chunks.seal(self.manifest.0.len() as u64, true, last);
        self.manifest.0.push(Manifest::chunk_hash(&sealed));
        let reference = self.reference(self.size + last.len() as u64);
        (sealed, reference, std::mem::take(&mut self.manifest))
    }

    /// The reference of the blob of `size` bytes whose manifest is complete.
    fn reference(&mut self, size: u64) -> BlobRef {
        BlobRef {
            id: self.manifest.id().to_hex(),
            key: self.key,
            nonce: self.nonce,
            size,
            base64: false,
        }
    }

    /// The first pass over a blob: `source` sealed under a fresh key on `threads` threads at
    /// once, for its reference, its manifest and its chunks' tags. The sealed chunks are not
    /// kept: [`ChunkSealer::seal_again`] seals each again as it goes, checked against its tag.
    /// Fails as reading `source` fails.
    pub fn first_pass<S: ChunkSource + ?Sized>(
        source: &S,
        threads: usize,
    ) -> std::io::Result<FirstPass> {
        let mut sealer = Self::new();
        let size = source.size();
        let count = chunks(size);
        let per_thread = count.div_ceil(threads.max(1) as u64);
        let sealing = &sealer.chunks;
        let sealed: Vec<([u8; 32], [u8; TAG])> = std::thread::scope(|scope| {
            let parts: Vec<_> = (0..count)
                .step_by(usize::try_from(per_thread).unwrap_or(usize::MAX).max(1))
                .map(|from| {
                    scope.spawn(move || {
                        (from..count.min(from + per_thread))
                            .map(|n| {
                                let chunk = source.chunk(n)?;
                                let sealed = sealing.seal(n, n + 1 == count, &chunk);
                                let mut tag = [0; TAG];
                                tag.copy_from_slice(&sealed[sealed.len() - TAG..]);
                                Ok((Manifest::chunk_hash(&sealed), tag))
                            })
                            .collect::<std::io::Result<Vec<_>>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("sealing a chunk does not panic"))
                .collect::<std::io::Result<Vec<_>>>()
                .map(|parts| parts.concat())
        })?;
        let (hashes, tags) = sealed.into_iter().unzip();
        sealer.manifest = Manifest(hashes);
        let reference = sealer.reference(size);
        Ok(FirstPass {
            reference,
            manifest: std::mem::take(&mut sealer.manifest),
            tags,
        })
    }
}

/// What [`Sealer::first_pass`] gives: the reference a payload carries, the manifest the
/// upload declares, and each sealed chunk's tag, which sealing it again must give again.
#[derive(Debug, Clone)]
pub struct FirstPass {
    pub reference: BlobRef,
    pub manifest: Manifest,
    pub tags: Vec<[u8; TAG]>,
}

/// Decrypts a blob chunk by chunk, in order; [`Opener::finish`] checks the last chunk, the
/// size and the id.
pub struct Opener {
    /// Taken by the last chunk.
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    id: BlobId,
    size: u64,
    chunks: u64,
    next: u64,
    manifest: Manifest,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("id", &self.id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub fn new(reference: &BlobRef) -> Result<Self, BlobError> {
        let id = BlobId::from_hex(&reference.id).ok_or(BlobError::BadReference)?;
        let cipher = XChaCha20Poly1305::new(&reference.key.into());
        Ok(Self {
            stream: Some(DecryptorBE32::from_aead(
                cipher,
                reference.nonce.as_slice().into(),
            )),
            id,
            size: reference.size,
            chunks: chunks(reference.size),
            next: 0,
            manifest: Manifest::default(),
        })
    }

    /// How many sealed chunks the blob has; the last is [`Opener::finish`]'s.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Opens the next chunk, which is not the last.
    pub fn open_chunk(&mut self, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
        let at = self.next;
        if at + 1 >= self.chunks || sealed.len() != SEALED_CHUNK {
            return Err(BlobError::Chunk(at));
        }
        let stream = self.stream.as_mut().ok_or(BlobError::Chunk(at))?;
        self.manifest.0.push(Manifest::chunk_hash(sealed));
        let plain = stream
            .decrypt_next(sealed)
            .map_err(|_| BlobError::Chunk(at))?;
        self.next += 1;
        Ok(plain)
    }

    /// Opens the next chunk, the last one included ([`Opener::finish`]'s checks then): for
    /// a reader that takes the chunks in order as they come.
    pub fn open_next(&mut self, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
        if self.next + 1 < self.chunks {
            self.open_chunk(sealed)
        } else {
            self.open_last(sealed)
        }
    }

    /// Opens the last chunk; checks that the blob had the size and id its reference says.
    pub fn finish(mut self, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
        self.open_last(sealed)
    }

    fn open_last(&mut self, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
        let at = self.next;
        if at + 1 != self.chunks {
            return Err(BlobError::Size {
                expected: self.size,
                got: at * CHUNK as u64,
            });
        }
        let stream = self.stream.take().ok_or(BlobError::Chunk(at))?;
        self.manifest.0.push(Manifest::chunk_hash(sealed));
        self.next += 1;
        let plain = stream
            .decrypt_last(sealed)
            .map_err(|_| BlobError::Chunk(at))?;
        let got = at * CHUNK as u64 + plain.len() as u64;
        if got != self.size {
            return Err(BlobError::Size {
                expected: self.size,
                got,
            });
        }
        if self.manifest.id() != self.id {
            return Err(BlobError::Hash);
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8]) -> (Vec<Vec<u8>>, BlobRef) {
        let mut s = Sealer::new();
        let mut sealed = Vec::new();
        let full = chunks(data.len() as u64) as usize - 1;
        for chunk in data.chunks(CHUNK).take(full) {
            sealed.push(s.seal_chunk(chunk));
        }
        let (last, r, manifest) = s.finish(&data[full * CHUNK..]);
        sealed.push(last);
        assert_eq!(
            manifest.0,
            sealed
                .iter()
                .map(|c| Manifest::chunk_hash(c))
                .collect::<Vec<_>>()
        );
        assert_eq!(manifest.id().to_hex(), r.id);
        // Any chunk sealed again from its number alone is the same.
        let again = ChunkSealer::again(&r);
        for (n, c) in data.chunks(CHUNK).enumerate() {
            assert_eq!(again.seal(n as u64, n == full, c), sealed[n]);
        }
        (sealed, r)
    }

    fn open(sealed: &[Vec<u8>], r: &BlobRef) -> Result<Vec<u8>, BlobError> {
        let mut o = Opener::new(r)?;
        let mut out = Vec::new();
        let (last, rest) = sealed.split_last().unwrap();
        for c in rest {
            out.extend(o.open_chunk(c)?);
        }
        out.extend(o.finish(last)?);
        Ok(out)
    }

    #[test]
    fn blobs_round_trip_at_every_chunk_boundary() {
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let (sealed, r) = seal(&data);
            assert_eq!(sealed.len() as u64, chunks(size as u64), "{size}");
            let total: usize = sealed.iter().map(Vec::len).sum();
            assert_eq!(total as u64, sealed_size(size as u64));
            // What the server computes from the sealed size alone agrees, chunk by chunk.
            let n = sealed_chunks(total as u64).unwrap();
            assert_eq!(n, sealed.len() as u64);
            for (i, c) in sealed.iter().enumerate() {
                assert_eq!(sealed_chunk_len(total as u64, n, i as u64), c.len() as u64);
            }
            assert_eq!(r.size, size as u64);
            assert_eq!(open(&sealed, &r).unwrap(), data, "{size}");
        }
    }

    #[test]
    fn a_changed_reordered_or_cut_blob_does_not_open() {
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8).collect();
        let (sealed, r) = seal(&data);
        let mut flipped = sealed.clone();
        flipped[1][100] ^= 1;
        assert_eq!(open(&flipped, &r), Err(BlobError::Chunk(1)));
        let swapped = vec![sealed[1].clone(), sealed[0].clone(), sealed[2].clone()];
        assert_eq!(open(&swapped, &r), Err(BlobError::Chunk(0)));
        // The first two chunks alone, the second posing as the last.
        let cut = sealed[..2].to_vec();
        assert!(open(&cut, &r).is_err());
        let other = seal(&data).1;
        assert!(open(&sealed, &other).is_err(), "another key");
        let mut wrong_id = r.clone();
        wrong_id.id = BlobId([0; 32]).to_hex();
        assert_eq!(open(&sealed, &wrong_id), Err(BlobError::Hash));
        let mut wrong_size = r.clone();
        wrong_size.size -= 1;
        assert!(open(&sealed, &wrong_size).is_err());
        assert!(BlobId::from_hex("zz").is_none());
        assert_eq!(sealed_chunks(15), None, "under one tag");
        assert_eq!(
            sealed_chunks(SEALED_CHUNK as u64 + 15),
            None,
            "a last chunk under a tag"
        );
        assert_eq!(sealed_chunks(SEALED_CHUNK as u64 + 16), Some(2));
        assert_eq!(Manifest::from_bytes(&[0; 33]), None);
        let m = Manifest(vec![[1; 32], [2; 32]]);
        assert_eq!(Manifest::from_bytes(&m.to_bytes()), Some(m));
        assert_eq!(
            BlobId::from_hex(&r.id.to_uppercase()).unwrap().to_hex(),
            r.id
        );
    }
}
