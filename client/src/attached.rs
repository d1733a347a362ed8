//! Files a sender attaches (`letterme send --attach`). A small one is read at once and
//! composed into the message; one that goes as a blob stays in its file and is read a
//! chunk at a time as it is sealed and uploaded, so the sender never holds it whole
//! (issue 17.4: a 500 MB attachment, the server's default limit, needs no 500 MB of memory).

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use letterme_protocol::blob::{BlobRef, CHUNK, Manifest, Plaintext, chunk_of};

use crate::mime::{BLOB_THRESHOLD, Base64Body};

/// A file to attach: its name as the recipient sees it, and its bytes.
#[derive(Debug, Clone)]
pub struct AttachedFile {
    pub name: String,
    pub bytes: FileBytes,
}

impl AttachedFile {
    /// A file of `bytes`, held in memory.
    pub fn held(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            bytes: FileBytes::Held(bytes),
        }
    }

    /// The file at `path`, named by its file name: read now when it is composed into the
    /// message, left in the file when it is large enough to go as a blob
    /// ([`BLOB_THRESHOLD`], its base64 counted).
    pub fn open(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io::Error::other(format!("{} is not a file", path.display())))?;
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        let bytes = if Base64Body::len_of(size) > BLOB_THRESHOLD as u64 {
            FileBytes::Open {
                file: Arc::new(file),
                path: path.to_owned(),
                size,
                first_pass: FirstPass::default(),
            }
        } else {
            FileBytes::Held(std::fs::read(path)?)
        };
        Ok(Self { name, bytes })
    }
}

/// An attached file's bytes.
#[derive(Debug, Clone)]
pub enum FileBytes {
    /// In memory.
    Held(Vec<u8>),
    /// In the file, which had `size` bytes when it was opened: read a range at a time.
    Open {
        file: Arc<File>,
        path: PathBuf,
        size: u64,
        first_pass: FirstPass,
    },
}

/// A blob's reference and manifest, made from a file's bytes.
pub(crate) type Made = io::Result<(BlobRef, Manifest)>;

/// The first pass over an open file (its blob's manifest) when it was begun ahead of the
/// send ([`crate::seal_ahead`]); the upload takes it, once.
#[derive(Debug, Clone, Default)]
pub struct FirstPass(Arc<Mutex<Option<JoinHandle<Made>>>>);

impl FirstPass {
    pub(crate) fn set(&self, pass: JoinHandle<Made>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(pass);
        }
    }

    pub(crate) fn take(&self) -> Option<JoinHandle<Made>> {
        self.0.lock().ok()?.take()
    }
}

impl FileBytes {
    pub fn len(&self) -> u64 {
        match self {
            Self::Held(b) => b.len() as u64,
            Self::Open { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the first pass begun ahead over an open file is kept.
    pub(crate) fn first_pass(&self) -> Option<&FirstPass> {
        match self {
            Self::Held(_) => None,
            Self::Open { first_pass, .. } => Some(first_pass),
        }
    }

    /// All the bytes, the file read whole.
    pub fn whole(&self) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Self::Held(b) => Ok(Cow::Borrowed(b)),
            Self::Open { size, .. } => self.read(0, *size).map(Cow::Owned),
        }
    }

    /// The bytes, taken out of memory or read from the file.
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Held(b) => Ok(b),
            open @ Self::Open { .. } => open.whole().map(Cow::into_owned),
        }
    }

    /// `len` bytes of the file from `offset`. A file that became shorter since it was
    /// opened is an error that says so (what was sent of it no longer matches).
    fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let Self::Open { file, path, .. } = self else {
            unreachable!("only an open file is read");
        };
        let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other(format!(
                    "{} changed while it was being sent (it is shorter now); send it again",
                    path.display()
                ))
            } else {
                io::Error::other(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        Ok(buf)
    }
}

impl Plaintext for FileBytes {
    fn size(&self) -> u64 {
        self.len()
    }

    fn chunk(&self, n: u64) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Self::Held(b) => Ok(Cow::Borrowed(chunk_of(b, n))),
            Self::Open { size, .. } => {
                let start = n.saturating_mul(CHUNK as u64).min(*size);
                let end = start.saturating_add(CHUNK as u64).min(*size);
                self.read(start, end - start).map(Cow::Owned)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file at the threshold and past it: the small one read, the large one left in
    /// the file; each gives the same chunks and whole as the bytes held in memory.
    #[test]
    fn a_large_file_stays_in_its_file_and_reads_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let small_len = BLOB_THRESHOLD / 2;
        let large_len = 2 * CHUNK + 7;
        for (len, stays_open) in [(small_len, false), (large_len, true)] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            let f = AttachedFile::open(&path).unwrap();
            assert_eq!(f.name, format!("f{len}.bin"));
            assert_eq!(matches!(f.bytes, FileBytes::Open { .. }), stays_open);
            let held = FileBytes::Held(bytes.clone());
            assert_eq!(f.bytes.len(), bytes.len() as u64);
            for n in 0..letterme_protocol::blob::chunks(len as u64) {
                assert_eq!(f.bytes.chunk(n).unwrap(), held.chunk(n).unwrap());
            }
            assert_eq!(f.bytes.whole().unwrap(), bytes.as_slice());
        }
    }

    /// A file cut short after it was opened is refused with a line that says so; a
    /// directory is not a file.
    #[test]
    fn a_file_that_shrank_or_is_no_file_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, vec![7u8; 2 * CHUNK]).unwrap();
        let f = AttachedFile::open(&path).unwrap();
        std::fs::write(&path, vec![7u8; CHUNK / 2]).unwrap();
        let e = f.bytes.chunk(1).unwrap_err().to_string();
        assert!(e.contains("changed while it was being sent"), "{e}");
        let e = AttachedFile::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a file"), "{e}");
    }
}
