//! Files a sender attaches (`letterme send --attach`). A small one is read at once and
//! composed into the message; one that goes as a blob stays in its file and is read a
//! chunk at a time as it is sealed and uploaded, so a send to letter.me addresses never
//! holds it whole (issue 17.4: a 500 MB attachment, the server's default limit, needs no
//! 500 MB of memory). Only a message that carries it whole (a server without blobs, a copy
//! relayed to ordinary addresses) reads it entire (DECISIONS D81).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use letterme_protocol::blob::{ChunkSource, FirstPass, chunk_of, chunk_range};

use crate::mime::{BLOB_THRESHOLD, goes_apart};

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

    /// The file at `path`, named by its file name: left in the file when it is large enough
    /// to go as a blob ([`BLOB_THRESHOLD`], its base64 counted), read now otherwise. What is
    /// no plain file (a pipe: `--attach <(command)`) is read now whatever its size.
    pub fn open(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io::Error::other(format!("{} is not a file", path.display())))?;
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )));
        }
        let size = meta.len();
        let bytes = if meta.is_file() && goes_apart(size, BLOB_THRESHOLD) {
            FileBytes::Open(OpenFile {
                file: Arc::new(file),
                path: path.to_owned(),
                size,
                ahead: PassAhead::default(),
            })
        } else {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            FileBytes::Held(bytes)
        };
        Ok(Self { name, bytes })
    }
}

/// An attached file's bytes.
#[derive(Debug, Clone)]
pub enum FileBytes {
    /// In memory.
    Held(Vec<u8>),
    /// In the file: read a range at a time.
    Open(OpenFile),
}

/// A file left where it is, as it was opened.
#[derive(Debug, Clone)]
pub struct OpenFile {
    file: Arc<File>,
    path: PathBuf,
    /// Its length when it was opened.
    size: u64,
    ahead: PassAhead,
}

/// A blob's first pass begun ahead of its send ([`crate::seal_ahead`]), as it will arrive.
pub(crate) type Begun = mpsc::Receiver<io::Result<FirstPass>>;

/// Where an open file's first pass begun ahead waits for the send, which takes it once.
#[derive(Debug, Clone, Default)]
pub(crate) struct PassAhead(Arc<Mutex<Option<Begun>>>);

impl PassAhead {
    pub(crate) fn set(&self, pass: Begun) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(pass);
        }
    }

    pub(crate) fn take(&self) -> Option<Begun> {
        self.0.lock().ok()?.take()
    }
}

impl FileBytes {
    pub fn len(&self) -> u64 {
        match self {
            Self::Held(b) => b.len() as u64,
            Self::Open(f) => f.size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the first pass over an open file waits, when it was begun ahead.
    pub(crate) fn ahead(&self) -> Option<&PassAhead> {
        match self {
            Self::Held(_) => None,
            Self::Open(f) => Some(&f.ahead),
        }
    }

    /// All the bytes, the file read whole (for a message that carries it whole).
    pub fn whole(&self) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Self::Held(b) => Ok(Cow::Borrowed(b)),
            Self::Open(f) => f.read(0, f.size).map(Cow::Owned),
        }
    }

    /// The bytes, taken out of memory or read from the file.
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Held(b) => Ok(b),
            open @ Self::Open(_) => open.whole().map(Cow::into_owned),
        }
    }
}

impl OpenFile {
    /// `len` bytes of the file from `offset`. A file that became shorter since it was
    /// opened is an error that says so.
    fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other(format!(
                    "{} changed while it was being sent (it is shorter now); send it again",
                    self.path.display()
                ))
            } else {
                io::Error::other(format!("cannot read {}: {e}", self.path.display()))
            }
        })?;
        Ok(buf)
    }
}

impl ChunkSource for FileBytes {
    fn size(&self) -> u64 {
        self.len()
    }

    fn chunk(&self, n: u64) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Self::Held(b) => Ok(Cow::Borrowed(chunk_of(b, n))),
            Self::Open(f) => {
                let range = chunk_range(f.size, n);
                f.read(range.start, range.end - range.start).map(Cow::Owned)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use letterme_protocol::blob::CHUNK;

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
            assert_eq!(matches!(f.bytes, FileBytes::Open(_)), stays_open);
            let held = FileBytes::Held(bytes.clone());
            assert_eq!(f.bytes.len(), bytes.len() as u64);
            for n in 0..letterme_protocol::blob::chunks(len as u64) {
                assert_eq!(f.bytes.chunk(n).unwrap(), held.chunk(n).unwrap());
            }
            assert_eq!(f.bytes.whole().unwrap(), bytes.as_slice());
        }
    }

    /// A file cut short after it was opened is refused with a line that says so; a
    /// directory is no file to attach.
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
        assert!(e.contains("is a directory"), "{e}");
        // What is no plain file (a device, a pipe) is read as it is opened.
        let device = AttachedFile::open(Path::new("/dev/null")).unwrap();
        assert!(matches!(device.bytes, FileBytes::Held(ref b) if b.is_empty()));
    }
}
