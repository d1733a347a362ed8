//! Canonical binary encoding shared by everything that is signed.
//!
//! Signatures must cover exactly one byte string per value, so signed structures are written
//! with this minimal, strict codec instead of JSON: big-endian fixed-width integers,
//! length-prefixed byte strings, no optional fields, no trailing bytes. The reader is total:
//! every length is checked against the remaining input and a named limit before use.
//! The layout of each structure is specified in `docs/PROTOCOL.md`.

use thiserror::Error;

/// Why canonical bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input ends early while reading {0}")]
    Truncated(&'static str),
    #[error("{0} is longer than the limit of {1} bytes")]
    TooLong(&'static str, usize),
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("unexpected {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("bad magic: not a {0}")]
    BadMagic(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Lower-case hex of `bytes` (ids, tokens, Message-ID local parts).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Exactly `2 × N` ASCII hex digits, either case, as bytes; nothing else (no sign, prefix,
/// separator or whitespace).
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Appends canonical fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A string with a u16 length prefix. Callers bound lengths before writing.
    pub fn str16(&mut self, s: &str) -> &mut Self {
        self.bytes16(s.as_bytes())
    }

    /// Bytes with a u16 length prefix.
    pub fn bytes16(&mut self, b: &[u8]) -> &mut Self {
        debug_assert!(u16::try_from(b.len()).is_ok());
        self.u16(b.len() as u16);
        self.raw(b)
    }

    /// Bytes with a u32 length prefix.
    pub fn bytes32(&mut self, b: &[u8]) -> &mut Self {
        debug_assert!(u32::try_from(b.len()).is_ok());
        self.u32(b.len() as u32);
        self.raw(b)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical fields, never past the end of its input.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn bytes16(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let n = usize::from(self.u16(what)?);
        if n > limit {
            return Err(DecodeError::TooLong(what, limit));
        }
        self.take(n, what)
    }

    pub fn bytes32(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        if n > limit {
            return Err(DecodeError::TooLong(what, limit));
        }
        self.take(n, what)
    }

    pub fn str16(&mut self, what: &'static str, limit: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes16(what, limit)?).map_err(|_| DecodeError::InvalidUtf8(what))
    }

    pub fn expect(&mut self, magic: &[u8], what: &'static str) -> Result<(), DecodeError> {
        if self.take(magic.len(), what)? == magic {
            Ok(())
        } else {
            Err(DecodeError::BadMagic(what))
        }
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let mut w = Writer::new();
        w.u8(1).u16(2).u32(3).u64(4).str16("héllo").bytes32(b"xyz");
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(r.u64("d").unwrap(), 4);
        assert_eq!(r.str16("e", 64).unwrap(), "héllo");
        assert_eq!(r.bytes32("f", 3).unwrap(), b"xyz");
        r.finish().unwrap();

        let mut r = Reader::new(&bytes[..bytes.len() - 1]);
        r.take(23, "skip").unwrap();
        assert_eq!(r.bytes32("f", 3), Err(DecodeError::Truncated("f")));
        let mut r = Reader::new(&bytes[23..]);
        assert_eq!(r.bytes32("f", 2), Err(DecodeError::TooLong("f", 2)));
    }

    #[test]
    fn huge_declared_length_is_refused_before_allocation() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.bytes32("blob", 1 << 20),
            Err(DecodeError::TooLong(..))
        ));
    }
}
