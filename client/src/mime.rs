//! The MIME entity a native message carries (payload version 2, docs/PROTOCOL.md).
//!
//! A submitted message is split in two. The fields letter.me carries itself, inside the
//! signed payload, stay as they were: From (the verified sender), To, Cc, Subject, Date,
//! Message-ID and threading. The rest — the top-level `Content-*` fields and the body,
//! text, HTML, inline parts and attachments — travels byte for byte as the entity
//! (RFC 2045 §3). When a message is rendered only the entity's `Content-*` fields are
//! taken from it, each checked to be one well-formed field, so an entity cannot bring a
//! From, a Subject or a verification field of its own. The splitting is mail-parser's;
//! nothing here reads MIME grammar beyond field names.

use base64::Engine as _;
use mail_parser::{MessageParser, MessagePart, MimeHeaders as _, PartType};

use crate::attached::{AttachedFile, FileBytes};
use crate::cache::header_end;
use crate::error::ClientError;

/// An attachment of a message, as `letterme read` and `list` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// Its file name as the sender gave it (RFC 2231 / RFC 2047 decoded); empty when none.
    pub name: String,
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// The top-level `Content-*` fields of `raw` as written, each ending in CRLF, and where its
/// body starts. Fields that are not one well-formed field (a bare CR or LF, a continuation
/// line that does not start with white space) are left out.
fn content_fields(raw: &[u8]) -> (Vec<u8>, usize) {
    let Some(part) = MessageParser::new()
        .parse_headers(raw)
        .and_then(|mut m| m.parts.pop())
    else {
        return (Vec::new(), header_end(raw));
    };
    let mut out = Vec::new();
    for h in &part.headers {
        let is_content = h
            .name
            .as_str()
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("content-"));
        let Some(field) = raw.get(h.offset_field as usize..h.offset_end as usize) else {
            continue;
        };
        let field = field
            .strip_suffix(b"\r\n")
            .or_else(|| field.strip_suffix(b"\n"))
            .unwrap_or(field);
        if is_content && one_field(field) {
            out.extend_from_slice(field);
            out.extend_from_slice(b"\r\n");
        }
    }
    (out, header_end(raw))
}

/// One header field (RFC 5322 §2.2): every line break is CRLF followed by white space and
/// then something else (a line of white space alone ends a header for some readers), no
/// NUL.
fn one_field(field: &[u8]) -> bool {
    let well_broken = field.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => field.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && field[i - 1] == b'\r' && matches!(field.get(i + 1), Some(b' ' | b'\t')),
        0 => false,
        _ => true,
    });
    well_broken
        && field
            .split(|&b| b == b'\n')
            .skip(1)
            .all(|line| line.iter().any(|b| !b" \t\r".contains(b)))
}

/// The MIME entity of a whole message (what a mail client submits): its top-level
/// `Content-*` fields, an empty line, and its body, byte for byte.
pub fn entity_of(message: &[u8]) -> Vec<u8> {
    let (mut out, body) = content_fields(message);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message[body..]);
    out
}

/// An entity split for rendering: its checked `Content-*` fields (each ending in CRLF) and
/// its body.
pub fn split_entity(entity: &[u8]) -> (Vec<u8>, &[u8]) {
    let (fields, body) = content_fields(entity);
    (fields, &entity[body..])
}

/// The entity `letterme send` writes (lettre formats it): the text, with the HTML as its
/// alternative, and the files attached, each typed by its extension. `None` for text alone,
/// which travels as payload version 1. The files are taken, not copied: each is large
/// enough as it is (one left in its file is read here: an error as that fails).
pub fn compose(
    text: &str,
    html: Option<&str>,
    files: Vec<AttachedFile>,
) -> std::io::Result<Option<Vec<u8>>> {
    use lettre::message::header::{ContentTransferEncoding, ContentType};
    use lettre::message::{Attachment as LettreAttachment, Body, MultiPart, SinglePart};
    if html.is_none() && files.is_empty() {
        return Ok(None);
    }
    let alternative =
        html.map(|html| MultiPart::alternative_plain_html(text.to_owned(), html.to_owned()));
    if files.is_empty() {
        return Ok(alternative.map(|a| a.formatted()));
    }
    let mut mixed = match alternative {
        Some(a) => MultiPart::mixed().multipart(a),
        None => MultiPart::mixed().singlepart(SinglePart::plain(text.to_owned())),
    };
    for f in files {
        let guessed = mime_guess::from_path(&f.name).first_or_octet_stream();
        let content_type = ContentType::parse(guessed.as_ref())
            .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"));
        // Always base64: a file is bytes, and lettre would send ASCII text with bare LF
        // line ends (or a NUL) as 7bit, which no SMTP hop may carry (RFC 5321 §2.3.8).
        let body = Body::new_with_encoding(f.bytes.into_vec()?, ContentTransferEncoding::Base64)
            .expect("base64 carries any bytes");
        mixed = mixed.singlepart(LettreAttachment::new(f.name).body(body, content_type));
    }
    Ok(Some(mixed.formatted()))
}

/// The field that stands for a part's body sent as blob `N` of the payload (PROTOCOL.md
/// §19a): `Letterme-Blob: N; size=S`, first in the part's header, the body left empty; `S`
/// is the body's size decoded (what saving the attachment writes), so a reader lists the
/// attachment without its bytes. Readers take `N` alone too.
pub const BLOB_FIELD: &str = "Letterme-Blob";

/// A [`BLOB_FIELD`]'s value: the blob's number and, when given, the decoded size.
fn blob_field(value: &str) -> Option<(usize, Option<u64>)> {
    let mut params = value.split(';');
    let n = params.next()?.trim().parse().ok()?;
    let size = params.find_map(|p| {
        let (name, v) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("size")
            .then(|| v.trim().parse().ok())?
    });
    Some((n, size))
}

/// The size of a part's `body` (as written) once its transfer encoding is undone: base64
/// counted by its characters (as its decoder reads it, padding and line breaks aside),
/// quoted-printable decoded.
fn decoded_len(body: &[u8], encoding: mail_parser::Encoding) -> u64 {
    match encoding {
        mail_parser::Encoding::Base64 => {
            let chars = body
                .iter()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/'))
                .count() as u64;
            chars * 3 / 4
        }
        mail_parser::Encoding::QuotedPrintable => quoted_printable(body).len() as u64,
        mail_parser::Encoding::None => body.len() as u64,
    }
}

/// Parts whose body (as written, transfer-encoded) is larger than this travel as blobs.
pub const BLOB_THRESHOLD: usize = 1 << 20;

/// Takes the body of every part larger than `threshold` out of `entity`: the entity with
/// a [`BLOB_FIELD`] in each such part's place, and the bodies, in order, as byte ranges of
/// `entity`. [`attach`] puts them back byte for byte. Parts are mail-parser's.
pub fn detach(entity: &[u8], threshold: usize) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    detach_where(entity, |part, body| {
        (body.len() > threshold).then(|| decoded_len(&entity[body.clone()], part.encoding))
    })
}

/// [`detach`] for the leaf parts `pick` chooses (given each with its body as written),
/// saying each one's decoded size.
fn detach_where(
    entity: &[u8],
    pick: impl Fn(&MessagePart<'_>, &std::ops::Range<usize>) -> Option<u64>,
) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let Some(m) = MessageParser::default().parse(entity) else {
        return (entity.to_vec(), Vec::new());
    };
    let mut bodies: Vec<(usize, std::ops::Range<usize>, u64)> = m
        .parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
        .filter_map(|p| {
            let body = p.offset_body as usize..p.offset_end as usize;
            let size = (body.end <= entity.len()).then(|| pick(p, &body))??;
            Some((p.offset_header as usize, body, size))
        })
        .collect();
    bodies.sort_by_key(|(_, body, _)| body.start);
    let mut out = Vec::with_capacity(entity.len());
    let mut at = 0;
    // Parts in order, none inside another (as mail-parser finds leaves); one that is not
    // stays where it is.
    bodies.retain({
        let mut end = 0;
        move |(header, body, _)| {
            let fits = end <= *header && *header <= body.start;
            if fits {
                end = body.end;
            }
            fits
        }
    });
    for (i, (header, body, size)) in bodies.iter().enumerate() {
        out.extend_from_slice(&entity[at..*header]);
        out.extend_from_slice(format!("{BLOB_FIELD}: {i}; size={size}\r\n").as_bytes());
        out.extend_from_slice(&entity[*header..body.start]);
        at = body.end;
    }
    out.extend_from_slice(&entity[at..]);
    (out, bodies.into_iter().map(|(_, body, _)| body).collect())
}

/// A file's bytes as a base64 body (RFC 2045 §6.8): lines of 76 characters joined by
/// CRLF, made a range at a time. The one form the CLI writes, so that a file set apart
/// goes as a blob of its bytes and its readers make this text again (DECISIONS D80).
#[derive(Debug, Clone, Copy)]
pub struct Base64Body<'a>(pub &'a [u8]);

impl Base64Body<'_> {
    /// Input bytes per line, and the line with its CRLF.
    const IN: usize = 57;
    const LINE: usize = 78;

    pub fn len(&self) -> usize {
        usize::try_from(Self::len_of(self.0.len() as u64)).unwrap_or(usize::MAX)
    }

    /// The text's length for `n` bytes (saturating: `n` may be a sender's claim).
    pub fn len_of(n: u64) -> u64 {
        let chars = n.div_ceil(3).saturating_mul(4);
        chars.saturating_add(chars.div_ceil(76).saturating_sub(1).saturating_mul(2))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text's bytes in `range` (within `0..len()`).
    pub fn range(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        if range.is_empty() {
            return Vec::new();
        }
        let lines = self.0.len().div_ceil(Self::IN);
        let (first, last) = (range.start / Self::LINE, (range.end - 1) / Self::LINE);
        let mut text = Vec::with_capacity((last - first + 1) * Self::LINE);
        for line in first..=last.min(lines.saturating_sub(1)) {
            let input = &self.0[line * Self::IN..((line + 1) * Self::IN).min(self.0.len())];
            text.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(input)
                    .as_bytes(),
            );
            if line + 1 < lines {
                text.extend_from_slice(b"\r\n");
            }
        }
        let offset = first * Self::LINE;
        text.get(range.start - offset..range.end - offset)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
}

/// [`Base64Body`]'s text made as its bytes arrive, a piece at a time (a blob's chunks).
#[derive(Debug, Default)]
pub struct Base64Lines {
    /// Bytes short of a line.
    carry: Vec<u8>,
    /// Whether a line was written (the next one starts with CRLF).
    started: bool,
}

impl Base64Lines {
    /// Appends the text of `bytes`' whole lines to `out`, keeping what is short of a line.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let take = (Base64Body::IN - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < Base64Body::IN {
                return;
            }
            let line = std::mem::take(&mut self.carry);
            self.line(&line, out);
        }
        let mut lines = bytes.chunks_exact(Base64Body::IN);
        for line in &mut lines {
            self.line(line, out);
        }
        self.carry.extend_from_slice(lines.remainder());
    }

    /// Appends the last, shorter line, if any.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.carry);
        if !rest.is_empty() {
            self.line(&rest, out);
        }
    }

    fn line(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        use base64::Engine as _;
        if self.started {
            out.extend_from_slice(b"\r\n");
        }
        self.started = true;
        let at = out.len();
        out.resize(at + bytes.len().div_ceil(3) * 4, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(bytes, &mut out[at..])
            .unwrap_or(0);
        out.truncate(at + written);
    }
}

/// The length of blob `r`'s bytes as its message has them ([`BlobRef::base64`]).
pub fn written_len(r: &letterme_protocol::blob::BlobRef) -> u64 {
    if r.base64 {
        Base64Body::len_of(r.size)
    } else {
        r.size
    }
}

/// Blob `r`'s opened bytes as its message has them.
pub fn written(r: &letterme_protocol::blob::BlobRef, bytes: Vec<u8>) -> Vec<u8> {
    if r.base64 {
        let body = Base64Body(&bytes);
        body.range(0..body.len())
    } else {
        bytes
    }
}

/// Whether a file of `size` bytes is set apart from the entity ([`compose_apart`]): its
/// base64 body longer than `threshold`.
pub fn goes_apart(size: u64, threshold: usize) -> bool {
    Base64Body::len_of(size) > threshold as u64
}

/// [`compose`] with each file whose base64 body is longer than `threshold` set apart: in
/// its place a part with the header it would have, a [`BLOB_FIELD`] naming it first and
/// no body, as [`detach`] leaves one. The files set apart, in order, go as blobs of their
/// bytes whose parts' bodies are their [`Base64Body`] (`BlobRef::base64`), or are put back
/// as that text with [`attach`]; a large file is then never composed into the entity,
/// copied, or parsed.
pub fn compose_apart(
    text: &str,
    html: Option<&str>,
    files: Vec<AttachedFile>,
    threshold: usize,
) -> std::io::Result<(Option<Vec<u8>>, Vec<AttachedFile>)> {
    let large = |f: &AttachedFile| goes_apart(f.bytes.len(), threshold);
    if !files.iter().any(large) {
        return Ok((compose(text, html, files)?, Vec::new()));
    }
    // Each large file composed with a marker of its own for its bytes, which the parts
    // are then found by.
    let mut apart = Vec::new();
    let mut markers = Vec::new();
    let files: Vec<AttachedFile> = files
        .into_iter()
        .map(|f| {
            if !large(&f) {
                return f;
            }
            // ASCII: mail-parser hands a text part's bytes back as UTF-8.
            let marker =
                letterme_protocol::codec::hex(&letterme_protocol::keys::random_bytes::<16>())
                    .into_bytes();
            markers.push(marker.clone());
            let name = f.name.clone();
            apart.push(f);
            AttachedFile::held(name, marker)
        })
        .collect();
    let Some(entity) = compose(text, html, files.clone())? else {
        return Ok((None, apart));
    };
    let (detached, bodies) = detach_where(&entity, |part, _| {
        let i = markers.iter().position(|m| part.contents() == m)?;
        apart.get(i).map(|f| f.bytes.len())
    });
    // Each marker found once, in order: the fields then name the files set apart by their
    // order. Were it otherwise, the files are composed in after all.
    let found: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(
                    entity[b.clone()]
                        .iter()
                        .copied()
                        .filter(|c| !c.is_ascii_whitespace())
                        .collect::<Vec<u8>>(),
                )
                .unwrap_or_default()
        })
        .collect();
    if found != markers {
        let mut apart = apart.into_iter();
        let whole = files
            .into_iter()
            .map(|f| match &f.bytes {
                FileBytes::Held(b) if markers.contains(b) => apart.next().unwrap_or(f),
                _ => f,
            })
            .collect();
        return Ok((compose(text, html, whole)?, Vec::new()));
    }
    Ok((Some(detached), apart))
}

/// Where an entity [`detach`] wrote names blob bodies: each part whose header begins with
/// a [`BLOB_FIELD`] naming a body `n` for which `available(n)`, as (field start, field end,
/// body start, n), in order, each body once (at the first part naming it); and how many
/// such fields there are in all.
fn blob_fields(entity: &[u8], available: impl Fn(usize) -> bool) -> (Vec<[usize; 4]>, usize) {
    let Some(m) = MessageParser::default().parse(entity) else {
        return (Vec::new(), 0);
    };
    let mut edits = Vec::new();
    let mut fields = 0;
    for p in &m.parts {
        if matches!(p.body, PartType::Multipart(_)) {
            continue;
        }
        let Some(h) = p.headers.first() else { continue };
        if !h.name.as_str().eq_ignore_ascii_case(BLOB_FIELD) {
            continue;
        }
        fields += 1;
        let Some((n, _)) = h.value.as_text().and_then(blob_field) else {
            continue;
        };
        if available(n) && p.offset_body as usize <= entity.len() {
            edits.push([
                h.offset_field as usize,
                h.offset_end as usize,
                p.offset_body as usize,
                n,
            ]);
        }
    }
    edits.sort_unstable();
    let mut placed = std::collections::BTreeSet::new();
    let mut at = 0;
    edits.retain(|&[field, field_end, body, n]| {
        let keep = field >= at && field_end <= body && placed.insert(n);
        if keep {
            at = body;
        }
        keep
    });
    (edits, fields)
}

/// Puts blob bodies back into an entity [`detach`] wrote: each part whose header begins
/// with a [`BLOB_FIELD`] naming a body in `bodies` loses that field and gets the body, each
/// body once (at the first part naming it). A field naming no body (not downloaded, made
/// up, or naming one again) is left as it is. The flag: every body placed exactly once and
/// no field left — what a well-formed message gives; anything else a sender made up.
pub fn attach(entity: &[u8], bodies: &[Option<Vec<u8>>]) -> (Vec<u8>, bool) {
    let (skeleton, places, exact) = place(entity, |n| bodies.get(n).is_some_and(Option::is_some));
    let exact = exact && places.len() == bodies.len();
    let mut out =
        Vec::with_capacity(skeleton.len() + bodies.iter().flatten().map(Vec::len).sum::<usize>());
    let mut at = 0;
    for (body, n) in places {
        out.extend_from_slice(&skeleton[at..body]);
        out.extend_from_slice(bodies[n].as_deref().unwrap_or_default());
        at = body;
    }
    out.extend_from_slice(&skeleton[at..]);
    (out, exact)
}

/// Where blobs `0..count` go in an entity [`detach`] wrote, without their bodies: the
/// entity with each placed [`BLOB_FIELD`] taken out, and for each blob the offset in it
/// where its body belongs, in order. The flag as [`attach`]'s: every blob placed exactly
/// once and no field left.
pub fn placements(entity: &[u8], count: usize) -> (Vec<u8>, Vec<(usize, usize)>, bool) {
    let (skeleton, places, exact) = place(entity, |n| n < count);
    let exact = exact && places.len() == count;
    (skeleton, places, exact)
}

/// The entity without the placed fields, the (offset, blob) places in it, and whether
/// every field was placed.
fn place(entity: &[u8], available: impl Fn(usize) -> bool) -> (Vec<u8>, Vec<(usize, usize)>, bool) {
    let (edits, fields) = blob_fields(entity, available);
    let mut out = Vec::with_capacity(entity.len());
    let mut places = Vec::with_capacity(edits.len());
    let mut at = 0;
    for &[field, field_end, body, n] in &edits {
        out.extend_from_slice(&entity[at..field]);
        out.extend_from_slice(&entity[field_end..body]);
        places.push((out.len(), n));
        at = body;
    }
    out.extend_from_slice(&entity[at..]);
    (out, places, fields == edits.len())
}

/// The text a reader that shows text only gets of a message or an entity: its first text
/// part, or the text of its first HTML part.
pub fn text_of(entity: &[u8]) -> String {
    MessageParser::default()
        .parse(entity)
        .and_then(|m| m.body_text(0).map(|t| t.replace("\r\n", "\n")))
        .unwrap_or_default()
}

/// The attachments of a whole message, in order, with their decoded bytes.
pub fn attachments(message: &[u8]) -> Vec<(Attachment, Vec<u8>)> {
    let mut out = Vec::new();
    each_attachment(message, |a, bytes| out.push((a, bytes.to_vec())));
    out
}

/// The attachments of a whole message, in order: names, types and sizes only.
pub fn attachment_list(message: &[u8]) -> Vec<Attachment> {
    let mut out = Vec::new();
    each_attachment(message, |a, _| out.push(a));
    out
}

/// Quoted-printable text decoded as mail-parser decodes a part's body (RFC 2045 §6.7,
/// leniently).
pub fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let (_, decoded) =
        mail_parser::parsers::MessageStream::new(text).decode_quoted_printable_mime(b"");
    decoded.into_owned()
}

/// Where an attachment's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentBytes {
    /// In the entity, decoded.
    Here(Vec<u8>),
    /// The body of blob `n` of the payload, transfer-encoded as written (`None`: 7bit,
    /// 8bit, binary, or an encapsulated message, the bytes as they are).
    Blob(usize, mail_parser::Encoding),
}

/// The attachments of an entity [`detach`] wrote (or any other), in order, as
/// [`attachments`] finds them: a part whose body is a blob (its [`BLOB_FIELD`] first) says
/// which, with the size its field gives (0 from a field without one: measured by decoding
/// the blob).
pub fn attachment_parts(entity: &[u8]) -> Vec<(Attachment, AttachmentBytes)> {
    let mut out = Vec::new();
    each_part(entity, |mut a, part, bytes| {
        let blob = part
            .headers
            .first()
            .filter(|h| h.name.as_str().eq_ignore_ascii_case(BLOB_FIELD))
            .and_then(|h| h.value.as_text())
            .and_then(blob_field);
        let source = match blob {
            Some((n, size)) => {
                a.size = size.map_or(0, |s| usize::try_from(s).unwrap_or(usize::MAX));
                AttachmentBytes::Blob(n, part.encoding)
            }
            None => AttachmentBytes::Here(bytes.to_vec()),
        };
        out.push((a, source));
    });
    out
}

fn each_attachment(message: &[u8], mut found: impl FnMut(Attachment, &[u8])) {
    each_part(message, |a, _, bytes| found(a, bytes));
}

fn each_part(message: &[u8], mut found: impl FnMut(Attachment, &MessagePart<'_>, &[u8])) {
    let Some(m) = MessageParser::default().parse(message) else {
        return;
    };
    for part in m.attachments() {
        let content_type = part.content_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_owned(),
            },
        );
        let bytes = match &part.body {
            PartType::Message(inner) => inner.raw_message(),
            _ => part.contents(),
        };
        let name = part
            .attachment_name()
            .or_else(|| match &part.body {
                PartType::Message(inner) => inner.subject(),
                _ => None,
            })
            .unwrap_or_default()
            .to_owned();
        let size = bytes.len();
        found(
            Attachment {
                name,
                content_type,
                size,
            },
            part,
            bytes,
        );
    }
}

/// Base64 (RFC 2045 §6.8) decoded as it comes, in pieces of any length: characters outside
/// the alphabet (line breaks) are skipped, as mail readers skip them, and whole quanta are
/// decoded as soon as they are complete.
pub(crate) struct Base64Stream<W> {
    out: W,
    carry: Vec<u8>,
    written: u64,
}

impl<W: std::io::Write> Base64Stream<W> {
    /// Lenient as mail-parser is: padding may be missing, trailing bits may be set.
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );

    fn new(out: W) -> Self {
        Self {
            out,
            carry: Vec::with_capacity(letterme_protocol::blob::CHUNK + 4),
            written: 0,
        }
    }

    fn feed(&mut self, text: &[u8]) -> Result<(), ClientError> {
        self.carry.extend(
            text.iter()
                .copied()
                .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/')),
        );
        let whole = self.carry.len() / 4 * 4;
        self.decode(whole)?;
        self.carry.drain(..whole);
        Ok(())
    }

    fn decode(&mut self, len: usize) -> Result<(), ClientError> {
        use base64::Engine as _;
        let bytes = Self::ENGINE
            .decode(&self.carry[..len])
            .map_err(|e| ClientError::Io(format!("an attachment is not valid base64: {e}")))?;
        self.out.write_all(&bytes).map_err(|e| write_error(&e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The rest (a last quantum of 2 or 3 characters); the decoded size.
    fn finish(mut self) -> Result<u64, ClientError> {
        let len = self.carry.len();
        self.decode(len)?;
        Ok(self.written)
    }
}

/// A blob's body decoded as its part's transfer encoding says, as it is read.
pub(crate) enum Decode<W> {
    Base64(Base64Stream<W>),
    /// Quoted-printable is rare for a large part: decoded whole at the end.
    QuotedPrintable(Vec<u8>, W),
    AsIs(W, u64),
}

impl<W: std::io::Write> Decode<W> {
    pub(crate) fn new(transfer: mail_parser::Encoding, out: W) -> Self {
        match transfer {
            mail_parser::Encoding::Base64 => Self::Base64(Base64Stream::new(out)),
            mail_parser::Encoding::QuotedPrintable => Self::QuotedPrintable(Vec::new(), out),
            mail_parser::Encoding::None => Self::AsIs(out, 0),
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self {
            Self::Base64(b) => b.feed(bytes),
            Self::QuotedPrintable(text, _) => {
                text.extend_from_slice(bytes);
                Ok(())
            }
            Self::AsIs(out, written) => {
                *written += bytes.len() as u64;
                out.write_all(bytes).map_err(|e| write_error(&e))
            }
        }
    }

    /// The bytes written.
    pub(crate) fn finish(self) -> Result<u64, ClientError> {
        match self {
            Self::Base64(b) => b.finish(),
            Self::QuotedPrintable(text, mut out) => {
                let decoded = quoted_printable(&text);
                out.write_all(&decoded).map_err(|e| write_error(&e))?;
                Ok(decoded.len() as u64)
            }
            Self::AsIs(_, written) => Ok(written),
        }
    }
}

fn write_error(e: &std::io::Error) -> ClientError {
    ClientError::Io(format!("cannot write an attachment: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMITTED: &[u8] = b"From: Alice <alice@x.test>\r\nTo: bob@x.test\r\nSubject: hi\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\
        X-Mailer: test\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n\
        --b1\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n";

    #[test]
    fn the_entity_keeps_content_fields_and_body_only() {
        let entity = entity_of(SUBMITTED);
        let text = String::from_utf8(entity.clone()).unwrap();
        assert!(
            text.starts_with("Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\r\n--b1\r\n"),
            "{text}"
        );
        for gone in ["From:", "Subject:", "X-Mailer", "MIME-Version"] {
            assert!(
                !text.starts_with(gone) && !text.contains(&format!("\r\n{gone}")),
                "{gone}"
            );
        }
        let body_at = SUBMITTED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(entity.ends_with(&SUBMITTED[body_at..]));
        assert_eq!(text_of(&entity), "Hallo");
        let found = attachments(SUBMITTED);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.name, "r.pdf");
        assert_eq!(found[0].0.content_type, "application/pdf");
        assert_eq!(found[0].1, b"%PDF-");
    }

    /// Base64 decoded piece by piece, cut anywhere (inside a line break, a quantum or
    /// the padding), is the whole decoded at once; padding may be missing.
    #[test]
    fn base64_decodes_in_pieces_as_it_would_whole() {
        use base64::Engine as _;
        for len in [0, 1, 2, 3, 57, 58, 1000, 4099] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let lines: Vec<u8> = encoded
                .as_bytes()
                .chunks(76)
                .flat_map(|l| [l, b"\r\n"].concat())
                .collect();
            for cut in [1, 3, 77, 78, 1000] {
                let mut out = Vec::new();
                let mut stream = Base64Stream::new(&mut out);
                for piece in lines.chunks(cut) {
                    stream.feed(piece).unwrap();
                }
                assert_eq!(stream.finish().unwrap(), len as u64);
                assert_eq!(out, bytes, "{len} bytes cut every {cut}");
            }
            let unpadded = encoded.trim_end_matches('=');
            let mut out = Vec::new();
            let mut stream = Base64Stream::new(&mut out);
            stream.feed(unpadded.as_bytes()).unwrap();
            stream.finish().unwrap();
            assert_eq!(out, bytes);
        }
    }

    /// A file's base64 body made a range at a time is the file base64-encoded in lines of
    /// 76 joined by CRLF, however the ranges are cut.
    #[test]
    fn a_base64_body_is_made_in_any_ranges() {
        for len in [0, 1, 56, 57, 58, 114, 1000, 5000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let whole: Vec<u8> = encoded
                .as_bytes()
                .chunks(76)
                .collect::<Vec<_>>()
                .join(&b"\r\n"[..]);
            let body = Base64Body(&bytes);
            assert_eq!(body.len(), whole.len(), "{len}");
            assert_eq!(body.range(0..body.len()), whole, "{len}");
            let reference = letterme_protocol::blob::BlobRef {
                id: String::new(),
                key: [0; 32],
                nonce: [0; letterme_protocol::blob::NONCE_PREFIX],
                size: len as u64,
                base64: true,
            };
            assert_eq!(written_len(&reference), whole.len() as u64, "{len}");
            // Made as the bytes arrive, however they are cut (a blob's chunks).
            for cut in [1, 2, 56, 57, 58, 1000] {
                let mut lines = Base64Lines::default();
                let mut made = Vec::new();
                for piece in bytes.chunks(cut) {
                    lines.feed(piece, &mut made);
                }
                lines.finish(&mut made);
                assert_eq!(made, whole, "{len} in pieces of {cut}");
            }
            for cut in [1, 7, 77, 78, 79, 1000] {
                let mut joined = Vec::new();
                let mut at = 0;
                while at < whole.len() {
                    let end = (at + cut).min(whole.len());
                    joined.extend(body.range(at..end));
                    at = end;
                }
                assert_eq!(joined, whole, "{len} bytes in ranges of {cut}");
            }
        }
    }

    /// Composed apart, a large file is a field in its part; put back as its base64 body,
    /// the message has the attachments composing it whole gives.
    #[test]
    fn a_large_file_composed_apart_is_put_back_as_composed_whole() {
        let files = vec![
            AttachedFile::held("big.bin", (0..3000u32).map(|i| (i % 251) as u8).collect()),
            AttachedFile::held("small.txt", b"small".to_vec()),
            AttachedFile::held("big.csv", "a,b,c\n".repeat(300).into_bytes()),
        ];
        let (entity, apart) = compose_apart("Hallo", None, files.clone(), 1000).unwrap();
        let entity = entity.unwrap();
        let names: Vec<&str> = apart.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["big.bin", "big.csv"],
            "a text file is set apart too"
        );
        let text = String::from_utf8_lossy(&entity);
        // Each field says the file's size, which lists it without its bytes.
        assert!(
            text.contains(&format!("{BLOB_FIELD}: 1; size=1800\r\n")),
            "{text}"
        );
        let listed: Vec<(String, usize)> = attachment_parts(&entity)
            .into_iter()
            .map(|(a, _)| (a.name, a.size))
            .collect();
        assert_eq!(
            listed,
            [
                ("big.bin".to_owned(), 3000),
                ("small.txt".to_owned(), 5),
                ("big.csv".to_owned(), 1800)
            ]
        );
        assert!(entity.len() < 2000, "the large files are not in it: {text}");
        let bodies: Vec<Option<Vec<u8>>> = apart
            .iter()
            .map(|f| {
                let bytes = f.bytes.whole().unwrap();
                let body = Base64Body(&bytes);
                Some(body.range(0..body.len()))
            })
            .collect();
        let (whole, exact) = attach(&entity, &bodies);
        assert!(exact);
        let got: Vec<(String, Vec<u8>)> = attachments(&whole)
            .into_iter()
            .map(|(a, b)| (a.name, b))
            .collect();
        let want: Vec<(String, Vec<u8>)> =
            attachments(&compose("Hallo", None, files).unwrap().unwrap())
                .into_iter()
                .map(|(a, b)| (a.name, b))
                .collect();
        assert_eq!(got, want);
        // Nothing large: composed whole, nothing apart.
        let (_, none) = compose_apart("Hallo", None, vec![], 1000).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn composed_mail_carries_html_and_named_files() {
        assert_eq!(compose("just text", None, vec![]).unwrap(), None);
        let files = [
            AttachedFile::held(
                "Grüße – Übersicht.pdf",
                b"%PDF-1.7 \x00\xff binary".to_vec(),
            ),
            AttachedFile::held("notes", b"plain\nlines\n".to_vec()),
        ];
        let entity = compose("Hallo", Some("<p>Hallo</p>"), files.to_vec())
            .unwrap()
            .unwrap();
        let m = MessageParser::default().parse(&entity).unwrap();
        assert_eq!(m.body_text(0).unwrap(), "Hallo");
        assert_eq!(m.body_html(0).unwrap(), "<p>Hallo</p>");
        let found = attachments(&entity);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0.name, "Grüße – Übersicht.pdf");
        assert_eq!(found[0].0.content_type, "application/pdf");
        assert_eq!(found[0].1, files[0].bytes.whole().unwrap().as_ref());
        assert_eq!(found[1].0.content_type, "application/octet-stream");
        assert_eq!(found[1].1, b"plain\nlines\n");
        // Every bare LF of the file is inside base64: the entity's line ends are CRLF.
        assert!(!entity.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        // The file name travels encoded (RFC 2231 or RFC 2047), never as raw UTF-8.
        assert!(entity.is_ascii());
    }

    /// Large parts come out and go back byte for byte: attachments, an inline image, a
    /// forwarded message, a single-part entity; small parts stay.
    #[test]
    fn large_bodies_detach_and_attach_byte_for_byte() {
        let big = |c: char| {
            let line = format!("{}\r\n", c.to_string().repeat(76));
            line.repeat(20)
        };
        let files = [
            AttachedFile::held(
                "große Datei.bin",
                (0..3000u32).map(|i| (i * 7 % 251) as u8).collect(),
            ),
            AttachedFile::held("small.txt", b"tiny".to_vec()),
        ];
        let composed = compose("Hallo", Some("<p>Hallo</p>"), files.to_vec())
            .unwrap()
            .unwrap();
        let related = format!(
            "Content-Type: multipart/related; boundary=\"r\"\r\n\r\n--r\r\n\
             Content-Type: text/html\r\n\r\n<img src=\"cid:i\">\r\n--r\r\n\
             Content-Type: image/png\r\nContent-ID: <i>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
             --r\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@x.test\r\nSubject: fwd\r\n\r\n{}\
             \r\n--r--\r\n",
            big('A'),
            big('B')
        );
        let single = format!("Content-Type: text/plain\r\n\r\n{}", big('C'));
        for entity in [composed, related.into_bytes(), single.into_bytes()] {
            let (detached, bodies) = detach(&entity, 1000);
            assert!(!bodies.is_empty());
            assert!(detached.len() + 900 < entity.len());
            let parts: Vec<Option<Vec<u8>>> = bodies
                .iter()
                .map(|r| Some(entity[r.clone()].to_vec()))
                .collect();
            assert!(parts.iter().flatten().all(|b| b.len() > 1000));
            // Listed from the fields as from the bytes.
            let sizes = |l: Vec<Attachment>| l.into_iter().map(|a| a.size).collect::<Vec<_>>();
            assert_eq!(
                sizes(
                    attachment_parts(&detached)
                        .into_iter()
                        .map(|p| p.0)
                        .collect()
                ),
                sizes(attachment_list(&entity))
            );
            assert_eq!(attach(&detached, &parts), (entity.clone(), true));
            // Nothing to attach: the placeholders stay, the rest is intact.
            assert_eq!(attach(&detached, &[]), (detached.clone(), false));
            assert_eq!(
                attach(&detached, &vec![None; parts.len()]),
                (detached.clone(), false)
            );
            // Below every threshold: nothing moves.
            assert_eq!(detach(&entity, usize::MAX), (entity.clone(), vec![]));
        }
    }

    /// A sender's made-up entity cannot have one blob put in twice (a 500 MB blob named by
    /// a million parts), nor leave a blob out, nor name one that is not there: each body
    /// goes in once, and the flag says the message is not what a client writes.
    #[test]
    fn a_made_up_entity_cannot_repeat_or_skip_a_blob() {
        let part = |n: &str| format!("--b\r\n{BLOB_FIELD}: {n}\r\nContent-Type: a/b\r\n\r\n\r\n");
        let entity = |parts: &[&str]| {
            let mut e = "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n".to_owned();
            for p in parts {
                e.push_str(&part(p));
            }
            e.push_str("--b--\r\n");
            e.into_bytes()
        };
        let body = vec![Some(b"BODY".to_vec())];
        let twice = entity(&["0", "0", "0"]);
        let (out, exact) = attach(&twice, &body);
        assert!(!exact);
        assert_eq!(out.windows(4).filter(|w| w == b"BODY").count(), 1);
        for (parts, bodies) in [
            (vec!["0"], vec![Some(b"A".to_vec()), Some(b"B".to_vec())]),
            (vec!["0", "1"], body.clone()),
            (vec!["x"], body.clone()),
            (vec![], body.clone()),
        ] {
            assert!(!attach(&entity(&parts), &bodies).1, "{parts:?}");
        }
        assert!(attach(&entity(&["0"]), &body).1);
    }

    #[test]
    fn an_entity_cannot_bring_fields_of_its_own() {
        // Hand-made (a hostile sender's own client): a From, a verification field, a
        // Content-Type whose value smuggles a bare CR, and a bare LF before a Subject.
        let entity = b"From: ceo@x.test\r\nX-Letterme-Verified: pass\r\n\
            Content-Type: text/plain\rFrom: evil@x.test\r\nContent-ID: <a>\nSubject: injected\r\n\
            Content-Description: ok\r\n\r\nbody";
        let (fields, body) = split_entity(entity);
        assert_eq!(
            String::from_utf8(fields).unwrap(),
            "Content-ID: <a>\r\nContent-Description: ok\r\n"
        );
        assert_eq!(body, b"body");
        assert!(one_field(b"Content-Type: a;\r\n b"));
        assert!(!one_field(b"Content-Type: a;\r\nFrom: b"));
        assert!(!one_field(b"Content-Type: a\rb"));
        assert!(
            !one_field(b"Content-Type: a;\r\n \r\n b"),
            "a blank continuation"
        );
    }
}
