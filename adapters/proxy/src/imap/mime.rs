//! Message structure for FETCH: ENVELOPE, BODY, BODYSTRUCTURE and `BODY[section]<partial>`
//! (RFC 3501 §6.4.5, §7.4.2).
//!
//! IMAP serves the MIME tree of a stored message with byte-exact slices of the original, so
//! mail-parser is used only to *locate* entities and header fields (their byte offsets); every
//! string and section handed to the client is cut from the raw bytes. All functions are total:
//! malformed input yields a best-effort structure, never a panic.

use std::fmt::Write as _;

use std::{num::NonZeroU32, ops::Range};

use imap_codec::imap_types::{
    body::{
        BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
        SinglePartExtensionData, SpecificFields,
    },
    core::{AString, IString, NString, Quoted, Vec1},
    envelope::{Address, Envelope},
    fetch::{MessageDataItemName, Part, Section},
};
use mail_parser::{
    Addr, Attribute, ContentType, Encoding, Header, HeaderName, HeaderValue, MessageParser,
    MessagePart, PartType, parsers::MessageStream,
};

/// mail-parser reading only the MIME header fields (RFC 2045) into values: every string
/// handed out is cut from the raw bytes, so parsing Received, Date or address fields here
/// would be work thrown away (a mail client's header list reads every message's header).
static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .header_comma_separated(HeaderName::ContentLanguage)
});

/// Nesting limit for multipart and message/rfc822 entities; deeper ones are opaque leaves.
const MAX_DEPTH: usize = 32;

/// RFC 3501 §7.4.2 ENVELOPE of a message.
pub fn envelope(raw: &[u8]) -> Envelope<'static> {
    let fields = PARSER
        .parse_headers(raw)
        .and_then(|mut message| message.parts.pop())
        .map(|part| part.headers)
        .unwrap_or_default();
    envelope_of(raw, &fields)
}

/// RFC 3501 §7.4.2 BODYSTRUCTURE: the body structure with extension data.
pub fn body_structure(raw: &[u8]) -> BodyStructure<'static> {
    structure(raw, &parse(raw, 0..raw.len(), 0), true)
}

/// RFC 3501 §7.4.2 BODY: the non-extensible body structure.
pub fn body(raw: &[u8]) -> BodyStructure<'static> {
    structure(raw, &parse(raw, 0..raw.len(), 0), false)
}

/// RFC 3501 §6.4.5 `BODY[section]` content; `None` is the whole message. A section that does
/// not exist yields no bytes.
pub fn section(raw: &[u8], section: Option<&Section<'_>>) -> Vec<u8> {
    let Some(section) = section else {
        return raw.to_vec();
    };
    let root = root_for(raw, section);
    match section {
        Section::HeaderFields(part, names) => {
            message(&root, part.as_ref()).map(|m| header_fields(raw, m, names.as_ref(), true))
        }
        Section::HeaderFieldsNot(part, names) => {
            message(&root, part.as_ref()).map(|m| header_fields(raw, m, names.as_ref(), false))
        }
        _ => section_range(&root, section).map(|range| span(raw, &range).to_vec()),
    }
    .unwrap_or_default()
}

/// The tree a section is found in: the top-level header and text need no MIME tree (what
/// clients fetch for every message of a mailbox, Thunderbird's header list, stays a
/// header-only parse).
fn root_for<'a>(raw: &'a [u8], section: &Section<'_>) -> Node<'a> {
    let top_level = matches!(
        section,
        Section::Header(None)
            | Section::Text(None)
            | Section::HeaderFields(None, _)
            | Section::HeaderFieldsNot(None, _)
    );
    top_level
        .then(|| headers_only(raw))
        .flatten()
        .unwrap_or_else(|| parse(raw, 0..raw.len(), 0))
}

/// Where `section`'s bytes are in `raw` when they are one span of it (every section but
/// HEADER.FIELDS, whose fields are picked); `None` for those and for one that does not
/// exist.
pub fn section_span(raw: &[u8], section: &Section<'_>) -> Option<Range<usize>> {
    if matches!(
        section,
        Section::HeaderFields(..) | Section::HeaderFieldsNot(..)
    ) {
        return None;
    }
    section_range(&root_for(raw, section), section)
}

/// Where a section's bytes are in the message whose tree is `root` (the fields of
/// HEADER.FIELDS are picked from its header); `None` when it does not exist.
fn section_range(root: &Node<'_>, section: &Section<'_>) -> Option<Range<usize>> {
    match section {
        Section::Part(part) => find(root, part).map(|node| node.body.clone()),
        Section::Mime(part) => find(root, part).map(|node| node.header.clone()),
        Section::Header(part)
        | Section::HeaderFields(part, _)
        | Section::HeaderFieldsNot(part, _) => {
            message(root, part.as_ref()).map(|m| m.header.clone())
        }
        Section::Text(part) => message(root, part.as_ref()).map(|m| m.body.clone()),
    }
}

/// Whether answering `item` from `raw` needs bytes of `holes`: the places of blobs not
/// downloaded yet, filled so that everything else is where it will be. BODY and
/// BODYSTRUCTURE read none of a leaf's bytes, only its size, except the line count of a
/// text part and the structure of an encapsulated message.
pub fn reads_holes(raw: &[u8], item: &MessageDataItemName<'_>, holes: &[Range<usize>]) -> bool {
    if holes.is_empty() {
        return false;
    }
    let overlaps = |r: &Range<usize>| holes.iter().any(|h| h.start < r.end && r.start < h.end);
    let whole = 0..raw.len();
    let root = || parse(raw, whole.clone(), 0);
    match item {
        MessageDataItemName::Flags
        | MessageDataItemName::Uid
        | MessageDataItemName::InternalDate
        | MessageDataItemName::Rfc822Size
        | MessageDataItemName::ModSeq => false,
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => {
            headers_only(raw).is_none_or(|top| overlaps(&top.header))
        }
        MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
            structure_reads(&root(), &overlaps)
        }
        MessageDataItemName::Rfc822 => overlaps(&whole),
        MessageDataItemName::Rfc822Text => overlaps(&root().body),
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let range = match section {
                None => Some(whole.clone()),
                Some(s) => section_range(&root(), s),
            };
            // A section not found may exist once the holes are filled in.
            range.is_none_or(|r| {
                let taken = partial_range(r.len(), *partial);
                overlaps(&(r.start + taken.start..r.start + taken.end))
            })
        }
        // Decoded bytes: their offsets are not the raw ones, so the whole part counts.
        MessageDataItemName::Binary { section, .. }
        | MessageDataItemName::BinarySize { section } => match Vec1::try_from(section.clone()) {
            Err(_) => overlaps(&whole),
            Ok(numbers) => find(&root(), &Part(numbers)).is_none_or(|node| overlaps(&node.body)),
        },
    }
}

/// Whether a text search (SEARCH BODY or TEXT, [`super::search`]) of `raw` reads bytes of
/// `holes`: it reads header sections, text parts and encapsulated messages, never the
/// bytes of other leaves (an image, a PDF), so a hole there changes no answer. A
/// multipart taken for a leaf (nested too deep to describe) counts as read.
pub fn text_reads_holes(raw: &[u8], holes: &[Range<usize>]) -> bool {
    fn reads(node: &Node<'_>, overlaps: &impl Fn(&Range<usize>) -> bool) -> bool {
        overlaps(&node.header)
            || match &node.kind {
                Kind::Multipart(children) => children.as_ref().iter().any(|c| reads(c, overlaps)),
                Kind::Message(inner) => reads(inner, overlaps),
                Kind::Leaf => {
                    matches!(
                        node.content_type.c_type.as_ref(),
                        "text" | "message" | "multipart"
                    ) && overlaps(&node.body)
                }
            }
    }
    if holes.is_empty() {
        return false;
    }
    let overlaps = |r: &Range<usize>| holes.iter().any(|h| h.start < r.end && r.start < h.end);
    reads(&parse(raw, 0..raw.len(), 0), &overlaps)
}

/// Whether the structure of `node` depends on bytes `overlaps` says are missing.
fn structure_reads(node: &Node<'_>, overlaps: &impl Fn(&Range<usize>) -> bool) -> bool {
    if overlaps(&node.header) {
        return true;
    }
    match &node.kind {
        Kind::Multipart(children) => children
            .as_ref()
            .iter()
            .any(|c| structure_reads(c, overlaps)),
        Kind::Message(_) => overlaps(&node.body),
        Kind::Leaf => {
            matches!(node.content_type.c_type.as_ref(), "text" | "message") && overlaps(&node.body)
        }
    }
}

/// A part BINARY cannot decode: an unknown Content-Transfer-Encoding (RFC 3516 §4.3,
/// `UNKNOWN-CTE`), or content that is not valid in the one it names.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownCte;

/// RFC 3516 §4.2 `BINARY[section]`: the part's content with its Content-Transfer-Encoding
/// removed (base64 and quoted-printable decoded by mail-parser; 7bit, 8bit and binary as
/// they are). The whole message (`BINARY[]`), a multipart and an encapsulated message are
/// returned unchanged; a part that does not exist yields no bytes.
pub fn binary(raw: &[u8], section: &[NonZeroU32]) -> Result<Vec<u8>, UnknownCte> {
    let Ok(numbers) = Vec1::try_from(section.to_vec()) else {
        return Ok(raw.to_vec());
    };
    let root = parse(raw, 0..raw.len(), 0);
    let Some(node) = find(&root, &Part(numbers)) else {
        return Ok(Vec::new());
    };
    let body = span(raw, &node.body);
    if !matches!(node.kind, Kind::Leaf) {
        return Ok(body.to_vec());
    }
    let encoding = value(raw, &node.fields, HeaderName::ContentTransferEncoding)
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
        // Content that does not decode is refused rather than served empty.
        "base64" => mail_parser::decoders::base64::base64_decode(body).ok_or(UnknownCte),
        // Leniently, as mail-parser decodes bodies: a stray `=` not followed by two hex
        // digits is kept as written (RFC 2045 §6.7, note 1), which real mail often has.
        "quoted-printable" => {
            let (end, decoded) = MessageStream::new(body).decode_quoted_printable_mime(b"");
            if end == usize::MAX {
                Err(UnknownCte)
            } else {
                Ok(decoded.into_owned())
            }
        }
        _ => Err(UnknownCte),
    }
}

/// Applies a `<origin.count>` partial (RFC 3501 §6.4.5): an origin past the end gives no bytes,
/// a count past the end is truncated.
pub fn partial(bytes: &[u8], partial: Option<(u32, NonZeroU32)>) -> &[u8] {
    &bytes[partial_range(bytes.len(), partial)]
}

/// What a `<origin.count>` partial takes of `len` bytes, as [`partial`] applies it.
pub fn partial_range(len: usize, partial: Option<(u32, NonZeroU32)>) -> Range<usize> {
    let Some((origin, count)) = partial else {
        return 0..len;
    };
    let start = usize::try_from(origin).unwrap_or(usize::MAX).min(len);
    let end = start
        .saturating_add(usize::try_from(count.get()).unwrap_or(usize::MAX))
        .min(len);
    start..end
}

/// A MIME entity (RFC 2045 §2.4) located in the raw message.
struct Node<'a> {
    /// Header including the blank line that ends it.
    header: Range<usize>,
    body: Range<usize>,
    /// Header fields, offsets relative to the raw message.
    fields: Vec<Header<'a>>,
    /// Declared or default Content-Type; mail-parser lowercases type, subtype and parameter names.
    content_type: ContentType<'a>,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Leaf,
    Multipart(Vec1<Node<'a>>),
    /// The encapsulated message of a message/rfc822 entity (RFC 2046 §5.2.1).
    Message(Box<Node<'a>>),
}

/// Parses the message at `raw[range]`: the whole input or the body of a message/rfc822 entity.
fn parse(raw: &[u8], range: Range<usize>, depth: usize) -> Node<'_> {
    let bytes = span(raw, &range);
    let base = range.start.min(raw.len());
    let parsed = PARSER.parse(bytes);
    parsed
        .and_then(|mut message| node(raw, base, &mut message.parts, 0, false, depth))
        // Not a single header line (e.g. empty input): all header, empty body.
        .unwrap_or_else(|| {
            let end = base + bytes.len();
            Node {
                header: base..end,
                body: end..end,
                fields: Vec::new(),
                content_type: content_type(&[], false),
                kind: Kind::Leaf,
            }
        })
}

/// The top-level entity from a header-only parse: its header fields, and everything after
/// the header as its body.
fn headers_only(raw: &[u8]) -> Option<Node<'_>> {
    // mail-parser's own header-only parse forgets where the body starts; its stream keeps it.
    let mut stream = MessageStream::new(raw);
    let mut fields = Vec::new();
    if !stream.parse_headers(&PARSER, &mut fields) || fields.is_empty() {
        return None;
    }
    let body_start = stream.offset().min(raw.len());
    Some(Node {
        header: 0..body_start,
        body: body_start..raw.len(),
        content_type: content_type(&fields, false),
        fields,
        kind: Kind::Leaf,
    })
}

/// Builds the entity `parts[id]` of a mail-parser message that starts at `base` in `raw`.
/// Multipart children come from mail-parser; an encapsulated message is parsed afresh from its
/// slice, so all offsets stay relative to `raw` whatever its transfer encoding.
fn node<'a>(
    raw: &'a [u8],
    base: usize,
    parts: &mut [MessagePart<'a>],
    id: usize,
    in_digest: bool,
    depth: usize,
) -> Option<Node<'a>> {
    let part = parts.get_mut(id)?;
    let at = |offset: u32| base.saturating_add(offset as usize);
    let header = at(part.offset_header)..at(part.offset_body);
    let body = at(part.offset_body)..at(part.offset_end);
    let children = match &part.body {
        PartType::Multipart(ids) => ids.clone(),
        _ => Vec::new(),
    };
    // RFC 2046 §5.2.1 allows no transfer encoding of message/rfc822 beyond 7bit/8bit/binary.
    let unencoded = part.encoding == Encoding::None;
    let mut fields = std::mem::take(&mut part.headers);
    let shift = u32::try_from(base).unwrap_or(u32::MAX);
    for h in &mut fields {
        for offset in [&mut h.offset_field, &mut h.offset_start, &mut h.offset_end] {
            *offset = offset.saturating_add(shift);
        }
    }
    let content_type = content_type(&fields, in_digest);
    let kind = if depth >= MAX_DEPTH {
        Kind::Leaf
    } else if content_type.c_type == "multipart" {
        let digest = content_type.subtype() == Some("digest");
        let children: Vec<_> = children
            .into_iter()
            .filter_map(|child| node(raw, base, parts, child as usize, digest, depth + 1))
            .collect();
        Vec1::try_from(children).map_or(Kind::Leaf, Kind::Multipart)
    } else if is_rfc822(&content_type) && unencoded {
        Kind::Message(Box::new(parse(raw, body.clone(), depth + 1)))
    } else {
        Kind::Leaf
    };
    Some(Node {
        header,
        body,
        fields,
        content_type,
        kind,
    })
}

/// The entity's Content-Type, or the default when absent or invalid: text/plain;
/// charset=us-ascii (RFC 2045 §5.2), message/rfc822 inside multipart/digest (RFC 2046 §5.1.5).
fn content_type<'a>(fields: &[Header<'a>], in_digest: bool) -> ContentType<'a> {
    match field(fields, HeaderName::ContentType).and_then(|h| h.value.as_content_type()) {
        Some(declared) if declared.c_subtype.is_some() => declared.clone(),
        _ if in_digest => ContentType {
            c_type: "message".into(),
            c_subtype: Some("rfc822".into()),
            attributes: None,
        },
        _ => ContentType {
            c_type: "text".into(),
            c_subtype: Some("plain".into()),
            attributes: Some(vec![Attribute {
                name: "charset".into(),
                value: "us-ascii".into(),
            }]),
        },
    }
}

fn is_rfc822(content_type: &ContentType<'_>) -> bool {
    content_type.c_type == "message" && content_type.subtype() == Some("rfc822")
}

/// RFC 3501 §6.4.5 part numbering: a message's body is numbered as its multipart children, or
/// as part 1 if it is not multipart; a message/rfc822 part numbers its encapsulated message.
fn find<'n, 'a>(root: &'n Node<'a>, part: &Part) -> Option<&'n Node<'a>> {
    let (mut node, mut in_message) = (root, true);
    for number in part.0.as_ref() {
        if let (false, Kind::Message(inner)) = (in_message, &node.kind) {
            (node, in_message) = (inner, true);
        }
        let index = number.get() as usize - 1;
        node = match &node.kind {
            Kind::Multipart(children) => children.as_ref().get(index)?,
            _ if in_message && index == 0 => node,
            _ => return None,
        };
        in_message = false;
    }
    Some(node)
}

/// The message a HEADER/TEXT specifier refers to: the top-level one, or the one encapsulated
/// by the message/rfc822 part `part`.
fn message<'n, 'a>(root: &'n Node<'a>, part: Option<&Part>) -> Option<&'n Node<'a>> {
    match part {
        None => Some(root),
        Some(part) => match &find(root, part)?.kind {
            Kind::Message(inner) => Some(inner),
            _ => None,
        },
    }
}

/// HEADER.FIELDS (`keep`) or HEADER.FIELDS.NOT: the selected fields in their original order,
/// continuation lines included, then the blank line.
fn header_fields(raw: &[u8], message: &Node<'_>, names: &[AString<'_>], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for h in &message.fields {
        let name = h.name.as_str().as_bytes();
        if names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name)) == keep {
            let text = span(raw, &(h.offset_field as usize..h.offset_end as usize));
            out.extend_from_slice(text);
            if !text.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn structure(raw: &[u8], node: &Node<'_>, extended: bool) -> BodyStructure<'static> {
    let content_type = &node.content_type;
    let subtype = content_type
        .subtype()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let tail = || Some(disposition(raw, &node.fields));
    let body = span(raw, &node.body);
    let specific = match &node.kind {
        Kind::Multipart(children) => {
            let bodies = children
                .as_ref()
                .iter()
                .map(|c| structure(raw, c, extended));
            return BodyStructure::Multi {
                // Same length as `children`, which is non-empty.
                bodies: Vec1::unvalidated(bodies.collect()),
                subtype: istring(subtype),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: parameters(content_type),
                    tail: tail(),
                }),
            };
        }
        Kind::Message(inner) => SpecificFields::Message {
            envelope: Box::new(envelope_of(raw, &inner.fields)),
            body_structure: Box::new(structure(raw, inner, extended)),
            number_of_lines: lines(body),
        },
        Kind::Leaf if content_type.c_type == "text" => SpecificFields::Text {
            subtype: istring(subtype),
            number_of_lines: lines(body),
        },
        // A container not descended into (depth limit, no parts found, transfer-encoded
        // message) is opaque data.
        Kind::Leaf if content_type.c_type == "multipart" || is_rfc822(content_type) => {
            SpecificFields::Basic {
                r#type: istring("APPLICATION"),
                subtype: istring("OCTET-STREAM"),
            }
        }
        Kind::Leaf => SpecificFields::Basic {
            r#type: istring(content_type.c_type.to_ascii_uppercase()),
            subtype: istring(subtype),
        },
    };
    let encoding = value(raw, &node.fields, HeaderName::ContentTransferEncoding)
        .filter(|encoding| !encoding.is_empty())
        .map_or_else(
            || b"7BIT".to_vec(),
            |encoding| encoding.to_ascii_uppercase(),
        );
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: parameters(content_type),
                id: nstring(value(raw, &node.fields, HeaderName::ContentId)),
                description: nstring(value(raw, &node.fields, HeaderName::ContentDescription)),
                content_transfer_encoding: istring(encoding),
                size: u32::try_from(body.len()).unwrap_or(u32::MAX),
            },
            specific,
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString::NIL,
            tail: tail(),
        }),
    }
}

/// body-fld-dsp, body-fld-lang and body-fld-loc (RFC 3501 §7.4.2 after RFC 2183, RFC 3282,
/// RFC 2557).
fn disposition(raw: &[u8], fields: &[Header<'_>]) -> Disposition<'static> {
    let parsed = |name| field(fields, name).map(|h| &h.value);
    Disposition {
        disposition: parsed(HeaderName::ContentDisposition)
            .and_then(HeaderValue::as_content_type)
            .map(|d| (istring(d.c_type.to_ascii_uppercase()), parameters(d))),
        tail: Some(Language {
            language: parsed(HeaderName::ContentLanguage)
                .and_then(HeaderValue::as_text_list)
                .unwrap_or_default()
                .iter()
                .map(|tag| istring(tag.trim()))
                .collect(),
            tail: Some(Location {
                location: nstring(value(raw, fields, HeaderName::ContentLocation)),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// Content-Type/Content-Disposition parameters. mail-parser has already joined RFC 2231
/// continuations and decoded charsets; non-ASCII values are re-encoded per RFC 2231 §4 so the
/// list stays 7-bit.
fn parameters(content_type: &ContentType<'_>) -> Vec<(IString<'static>, IString<'static>)> {
    let attributes = content_type.attributes().unwrap_or_default();
    attributes
        .iter()
        .map(|Attribute { name, value }| {
            let name = name.to_ascii_uppercase();
            if value.is_ascii() {
                return (istring(name), istring(value.as_bytes()));
            }
            let mut encoded = String::from("utf-8''");
            for byte in value.bytes() {
                if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                    encoded.push(char::from(byte));
                } else {
                    let _ = write!(encoded, "%{byte:02X}");
                }
            }
            (istring(name + "*"), istring(encoded))
        })
        .collect()
}

fn envelope_of(raw: &[u8], fields: &[Header<'_>]) -> Envelope<'static> {
    let text = |name| nstring(value(raw, fields, name));
    let list = |name| {
        value(raw, fields, name)
            .map(|v| addresses(&v))
            .unwrap_or_default()
    };
    let from = list(HeaderName::From);
    // Absent or empty Sender and Reply-To default to From (RFC 3501 §7.4.2).
    let or_from = |addresses: Vec<Address<'static>>| {
        if addresses.is_empty() {
            from.clone()
        } else {
            addresses
        }
    };
    Envelope {
        date: text(HeaderName::Date),
        subject: text(HeaderName::Subject),
        sender: or_from(list(HeaderName::Sender)),
        reply_to: or_from(list(HeaderName::ReplyTo)),
        from,
        to: list(HeaderName::To),
        cc: list(HeaderName::Cc),
        bcc: list(HeaderName::Bcc),
        in_reply_to: text(HeaderName::InReplyTo),
        message_id: text(HeaderName::MessageId),
    }
}

/// Each address of an address field value as `name mailbox@host`, as ENVELOPE reads it
/// (comments inside the address and any source route left out), for SEARCH.
pub fn address_texts(value: &[u8]) -> Vec<String> {
    let text = |s: &NString<'_>| {
        s.0.as_ref()
            .map(|s| String::from_utf8_lossy(s.as_ref()).into_owned())
            .unwrap_or_default()
    };
    addresses(value)
        .iter()
        .filter(|a| a.host.0.is_some())
        .map(|a| format!("{} {}@{}", text(&a.name), text(&a.mailbox), text(&a.host)))
        .collect()
}

/// An address list as (name adl mailbox host) structures; a group is framed by a start marker
/// (mailbox = group name, host NIL) and an end marker (all NIL) (RFC 3501 §7.4.2).
///
/// ENVELOPE carries header text undecoded, but mail-parser decodes RFC 2047 words in display
/// names, so every "=?" is masked as "=\0?" while parsing; `istring` drops the NUL again.
fn addresses(value: &[u8]) -> Vec<Address<'static>> {
    let value = without_addr_spec_comments(value);
    let mut masked = Vec::with_capacity(value.len());
    for (i, &byte) in value.iter().enumerate() {
        masked.push(byte);
        if byte == b'=' && value.get(i + 1) == Some(&b'?') {
            masked.push(0);
        }
    }
    // mail-parser reads a header value up to its line end.
    masked.extend_from_slice(b"\r\n");
    let HeaderValue::Address(list) = MessageStream::new(&masked).parse_address() else {
        return Vec::new();
    };
    let address = |addr: &Addr<'_>| {
        // A comment where an address should be (`undisclosed-recipients: (none);`) is none.
        let spec = addr.address.as_deref().filter(|a| !a.trim().is_empty())?;
        // Without "@" the host is "" rather than NIL, which would mean a group marker.
        let (local, host) = spec.rsplit_once('@').unwrap_or((spec, ""));
        // An obsolete source route (RFC 5322 §4.4 obs-route, `<@a,@b:user@host>`) is the
        // adl (RFC 3501 §7.4.2).
        let (adl, mailbox) = match local.rsplit_once(':') {
            Some((route, mailbox)) if route.starts_with('@') => (Some(route), mailbox),
            _ => (None, local),
        };
        Some(Address {
            name: NString(addr.name.as_deref().map(istring)),
            adl: NString(adl.map(istring)),
            mailbox: NString(Some(istring(mailbox))),
            host: NString(Some(istring(host))),
        })
    };
    let marker = |mailbox| Address {
        name: NString::NIL,
        adl: NString::NIL,
        mailbox,
        host: NString::NIL,
    };
    match list {
        mail_parser::Address::List(list) => list.iter().filter_map(address).collect(),
        mail_parser::Address::Group(groups) => groups
            .iter()
            .flat_map(|group| {
                let name = group.name.as_deref();
                let start = name.map(|name| marker(NString(Some(istring(name)))));
                let end = name.map(|_| marker(NString::NIL));
                start
                    .into_iter()
                    .chain(group.addresses.iter().filter_map(address))
                    .chain(end)
            })
            .collect(),
    }
}

/// An address header value without the comments (RFC 5322 §3.2.2 CFWS) that sit inside an
/// address: within `<...>`, or next to the `@` or a `.` of a bare addr-spec, with the
/// white space around that `@`. mail-parser would otherwise take them for the display name
/// and lose the address (`user (x) @ host`). A comment elsewhere, such as the trailing
/// `(Name)` of `user@host (Name)`, stays and is read as the name, as clients expect. Quoted
/// strings and domain literals are copied as they are.
fn without_addr_spec_comments(value: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(value.len());
    let mut angle = 0usize;
    let mut i = 0;
    let next_visible = |from: usize| value[from..].iter().find(|b| !b.is_ascii_whitespace());
    // The last non-blank byte written, kept as it goes so a long run of comments and blanks
    // costs linear time.
    let mut last_visible: Option<u8> = None;
    while i < value.len() {
        let written = out.len();
        match value[i] {
            b'"' | b'[' => {
                let close = if value[i] == b'"' { b'"' } else { b']' };
                let start = i;
                i += 1;
                while i < value.len() && value[i] != close {
                    i += if value[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(value.len());
                out.extend_from_slice(&value[start..i]);
            }
            b'(' => {
                let start = i;
                let mut depth = 0usize;
                while i < value.len() {
                    match value[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i = (i + 1).min(value.len());
                let inside = angle > 0
                    || matches!(last_visible, Some(b'@' | b'.'))
                    || matches!(next_visible(i), Some(b'@' | b'.'));
                if !inside {
                    out.extend_from_slice(&value[start..i]);
                }
            }
            b'@' => {
                // The blanks before it go (below `written`), so this arm keeps its own note.
                while out.last().is_some_and(u8::is_ascii_whitespace) {
                    out.pop();
                }
                out.push(b'@');
                last_visible = Some(b'@');
                i += 1;
                while value.get(i).is_some_and(u8::is_ascii_whitespace) {
                    i += 1;
                }
                continue;
            }
            b => {
                match b {
                    b'<' => angle += 1,
                    b'>' => angle = angle.saturating_sub(1),
                    _ => {}
                }
                out.push(b);
                i += 1;
            }
        }
        if let Some(&b) = out[written..]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
        {
            last_visible = Some(b);
        }
    }
    out
}

// Reason: HeaderName is a small enum the callers build inline.
#[allow(clippy::needless_pass_by_value)]
fn field<'f, 'a>(fields: &'f [Header<'a>], name: HeaderName<'_>) -> Option<&'f Header<'a>> {
    fields.iter().find(|h| h.name == name)
}

/// The first `name` field's raw value (encoded words kept), unfolded (RFC 5322 §2.2.3) and
/// trimmed. Within a field every line break is a fold, so all CR and LF go.
fn value(raw: &[u8], fields: &[Header<'_>], name: HeaderName<'_>) -> Option<Vec<u8>> {
    let h = field(fields, name)?;
    let text = span(raw, &(h.offset_start as usize..h.offset_end as usize));
    Some(
        text.trim_ascii()
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
            .collect(),
    )
}

/// Lines of a body: its line breaks, plus an unterminated last line.
// Reason: a line count is not worth a dependency (bytecount).
#[allow(clippy::naive_bytecount)]
fn lines(body: &[u8]) -> u32 {
    let breaks = body.iter().filter(|&&b| b == b'\n').count();
    let partial = usize::from(body.last().is_some_and(|&b| b != b'\n'));
    u32::try_from(breaks + partial).unwrap_or(u32::MAX)
}

/// `bytes[range]`, clamped to the bounds.
fn span<'b>(bytes: &'b [u8], range: &Range<usize>) -> &'b [u8] {
    let start = range.start.min(bytes.len());
    bytes
        .get(start..range.end.clamp(start, bytes.len()))
        .unwrap_or_default()
}

/// An IMAP string for arbitrary bytes: quoted when possible, a literal for 8-bit or CR/LF
/// content. NUL cannot be sent at all (RFC 3501 §4.3) and is dropped.
fn istring(bytes: impl Into<Vec<u8>>) -> IString<'static> {
    let mut bytes = bytes.into();
    bytes.retain(|&b| b != 0);
    IString::try_from(bytes).unwrap_or_else(|_| Quoted::unvalidated("").into())
}

fn nstring(bytes: Option<Vec<u8>>) -> NString<'static> {
    NString(bytes.map(istring))
}

#[cfg(test)]
mod tests;
