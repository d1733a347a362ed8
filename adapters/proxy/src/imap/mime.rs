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
    fetch::{Part, Section},
};
use mail_parser::{
    Addr, Attribute, ContentType, Encoding, Header, HeaderName, HeaderValue, MessageParser,
    MessagePart, PartType, parsers::MessageStream,
};

/// Nesting limit for multipart and message/rfc822 entities; deeper ones are opaque leaves.
const MAX_DEPTH: usize = 32;

/// RFC 3501 §7.4.2 ENVELOPE of a message.
pub fn envelope(raw: &[u8]) -> Envelope<'static> {
    let fields = MessageParser::default()
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
    // The top-level header and text need no MIME tree: what clients fetch for every message
    // of a mailbox (Thunderbird's header list) stays a header-only parse.
    let top_level = matches!(
        section,
        Section::Header(None)
            | Section::Text(None)
            | Section::HeaderFields(None, _)
            | Section::HeaderFieldsNot(None, _)
    );
    let root = top_level
        .then(|| headers_only(raw))
        .flatten()
        .unwrap_or_else(|| parse(raw, 0..raw.len(), 0));
    let slice = |range: &Range<usize>| span(raw, range).to_vec();
    match section {
        Section::Part(part) => find(&root, part).map(|node| slice(&node.body)),
        Section::Mime(part) => find(&root, part).map(|node| slice(&node.header)),
        Section::Header(part) => message(&root, part.as_ref()).map(|m| slice(&m.header)),
        Section::Text(part) => message(&root, part.as_ref()).map(|m| slice(&m.body)),
        Section::HeaderFields(part, names) => {
            message(&root, part.as_ref()).map(|m| header_fields(raw, m, names.as_ref(), true))
        }
        Section::HeaderFieldsNot(part, names) => {
            message(&root, part.as_ref()).map(|m| header_fields(raw, m, names.as_ref(), false))
        }
    }
    .unwrap_or_default()
}

/// Applies a `<origin.count>` partial (RFC 3501 §6.4.5): an origin past the end gives no bytes,
/// a count past the end is truncated.
pub fn partial(bytes: &[u8], partial: Option<(u32, NonZeroU32)>) -> &[u8] {
    let Some((origin, count)) = partial else {
        return bytes;
    };
    let start = usize::try_from(origin).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(count.get()).unwrap_or(usize::MAX));
    span(bytes, &(start..end))
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
    let parsed = MessageParser::default().parse(bytes);
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
    if !stream.parse_headers(&MessageParser::default(), &mut fields) || fields.is_empty() {
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

/// An address list as (name adl mailbox host) structures; a group is framed by a start marker
/// (mailbox = group name, host NIL) and an end marker (all NIL) (RFC 3501 §7.4.2).
///
/// ENVELOPE carries header text undecoded, but mail-parser decodes RFC 2047 words in display
/// names, so every "=?" is masked as "=\0?" while parsing; `istring` drops the NUL again.
fn addresses(value: &[u8]) -> Vec<Address<'static>> {
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
        let spec = addr.address.as_deref().unwrap_or_default();
        // Without "@" the host is "" rather than NIL, which would mean a group marker.
        let (mailbox, host) = spec.rsplit_once('@').unwrap_or((spec, ""));
        Address {
            name: NString(addr.name.as_deref().map(istring)),
            adl: NString::NIL,
            mailbox: NString(Some(istring(mailbox))),
            host: NString(Some(istring(host))),
        }
    };
    let marker = |mailbox| Address {
        name: NString::NIL,
        adl: NString::NIL,
        mailbox,
        host: NString::NIL,
    };
    match list {
        mail_parser::Address::List(list) => list.iter().map(address).collect(),
        mail_parser::Address::Group(groups) => groups
            .iter()
            .flat_map(|group| {
                let name = group.name.as_deref();
                let start = name.map(|name| marker(NString(Some(istring(name)))));
                let end = name.map(|_| marker(NString::NIL));
                start
                    .into_iter()
                    .chain(group.addresses.iter().map(address))
                    .chain(end)
            })
            .collect(),
    }
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
mod tests {
    use imap_codec::{
        ResponseCodec,
        encode::Encoder,
        imap_types::{fetch::MessageDataItem, response::Data, response::Response},
    };

    use super::*;

    /// The wire form of a FETCH data item, without the "* 1 FETCH (" frame.
    fn wire(item: MessageDataItem<'static>) -> String {
        let response = Response::Data(Data::Fetch {
            seq: NonZeroU32::MIN,
            items: Vec1::from(item),
        });
        let bytes = ResponseCodec::default().encode(&response).dump();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let inner = text
            .strip_prefix("* 1 FETCH (")
            .and_then(|t| t.strip_suffix(")\r\n"));
        inner.unwrap_or(&text).to_owned()
    }

    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    fn part(numbers: &[u32]) -> Part {
        let numbers = numbers
            .iter()
            .filter_map(|&n| NonZeroU32::new(n))
            .collect::<Vec<_>>();
        Part(Vec1::try_from(numbers).expect("non-empty part"))
    }

    fn names(names: &[&'static str]) -> Vec1<AString<'static>> {
        let names = names
            .iter()
            .map(|&n| AString::try_from(n).expect("astring"));
        Vec1::try_from(names.collect::<Vec<_>>()).expect("non-empty")
    }

    #[allow(clippy::needless_pass_by_value)]
    fn text(raw: &[u8], section: Section<'_>) -> String {
        String::from_utf8_lossy(&super::section(raw, Some(&section))).into_owned()
    }

    const PLAIN: &str = "Date: Mon, 7 Feb 1994 21:52:25 -0800\n\
        From: Fred Foobar <foobar@Blurdybloop.COM>\n\
        Reply-To: =?utf-8?q?R=C3=A9ply?= =?utf-8?q?_to?= <r@x.y> (comment)\n\
        Subject: =?utf-8?q?caf=C3=A9?= and\n\tmore\n\
        To: mooch@owatagu.siam.edu, \"=?utf-8?q?Ren=C3=A9?=\" <rene@example.org>\n\
        Cc: Friends: a@b.c, d@e.f;\n\
        Message-Id: <B27397-0100000@Blurdybloop.COM>\n\
        Content-Type: text/plain; charset=UTF-8\n\
        \n\
        Hello World\n";

    #[test]
    fn plain_envelope() {
        let expected = "ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" \
            \"=?utf-8?q?caf=C3=A9?= and\tmore\" \
            ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.COM\")) \
            ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.COM\")) \
            ((\"=?utf-8?q?R=C3=A9ply?= =?utf-8?q?_to?= (comment)\" NIL \"r\" \"x.y\")) \
            ((NIL NIL \"mooch\" \"owatagu.siam.edu\")\
            (\"=?utf-8?q?Ren=C3=A9?=\" NIL \"rene\" \"example.org\")) \
            ((NIL NIL \"Friends\" NIL)(NIL NIL \"a\" \"b.c\")(NIL NIL \"d\" \"e.f\")(NIL NIL NIL NIL)) \
            NIL NIL \"<B27397-0100000@Blurdybloop.COM>\")";
        assert_eq!(
            wire(MessageDataItem::Envelope(envelope(&crlf(PLAIN)))),
            expected
        );
    }

    #[test]
    fn plain_body_structure() {
        let raw = crlf(PLAIN);
        assert_eq!(
            wire(MessageDataItem::BodyStructure(body_structure(&raw))),
            "BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"UTF-8\") NIL NIL \"7BIT\" 13 1 \
             NIL NIL NIL NIL)"
        );
        assert_eq!(
            wire(MessageDataItem::Body(body(&raw))),
            "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"UTF-8\") NIL NIL \"7BIT\" 13 1)"
        );
        assert_eq!(text(&raw, Section::Text(None)), "Hello World\r\n");
        assert_eq!(text(&raw, Section::Part(part(&[1]))), "Hello World\r\n");
        assert_eq!(super::section(&raw, None), raw);
    }

    #[test]
    fn defaults_without_mime_headers() {
        let raw = b"Subject: x\n\nline 1\nline 2";
        assert_eq!(
            wire(MessageDataItem::Body(body(raw))),
            "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 2)"
        );
        let envelope = wire(MessageDataItem::Envelope(envelope(raw)));
        assert_eq!(
            envelope,
            "ENVELOPE (NIL \"x\" NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
    }

    const ALTERNATIVE: &str = "From: a@example.com\n\
        Content-Type: multipart/alternative; boundary=\"b1\"\n\
        \n\
        preamble\n\
        --b1\n\
        Content-Type: text/plain; charset=us-ascii\n\
        \n\
        plain text\n\
        --b1\n\
        Content-Type: text/html; charset=us-ascii\n\
        Content-Transfer-Encoding: quoted-printable\n\
        \n\
        <p>html</p>\n\
        --b1--\n";

    #[test]
    fn alternative() {
        let raw = crlf(ALTERNATIVE);
        assert_eq!(
            wire(MessageDataItem::BodyStructure(body_structure(&raw))),
            "BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 \
             NIL NIL NIL NIL)(\"TEXT\" \"HTML\" (\"CHARSET\" \"us-ascii\") NIL NIL \
             \"QUOTED-PRINTABLE\" 11 1 NIL NIL NIL NIL) \"ALTERNATIVE\" (\"BOUNDARY\" \"b1\") \
             NIL NIL NIL)"
        );
        assert_eq!(
            wire(MessageDataItem::Body(body(&raw))),
            "BODY ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1)\
             (\"TEXT\" \"HTML\" (\"CHARSET\" \"us-ascii\") NIL NIL \"QUOTED-PRINTABLE\" 11 1) \
             \"ALTERNATIVE\")"
        );
        assert_eq!(text(&raw, Section::Part(part(&[2]))), "<p>html</p>");
    }

    const MIXED: &str = "From: a@example.com\n\
        Subject: mixed\n\
        Content-Type: multipart/mixed; boundary=outer\n\
        \n\
        --outer\n\
        Content-Type: text/plain\n\
        \n\
        see attached\n\
        --outer\n\
        Content-Type: multipart/alternative; boundary=inner\n\
        \n\
        --inner\n\
        \n\
        alt one\n\
        --inner\n\
        Content-Type: text/html\n\
        \n\
        <i>alt two</i>\n\
        --inner--\n\
        --outer\n\
        Content-Type: application/pdf; name=\"doc.pdf\"\n\
        Content-Transfer-Encoding: base64\n\
        Content-Disposition: attachment; filename=\"doc.pdf\"\n\
        Content-ID: <pdf@example.com>\n\
        Content-Description: A =?utf-8?q?d=C3=B6c?=\n\
        Content-Language: en, de\n\
        \n\
        JVBERi0=\n\
        --outer\n\
        Content-Type: message/rfc822\n\
        Content-Disposition: attachment; filename*=utf-8''%E2%82%AC.eml\n\
        \n\
        From: Inner <inner@example.com>\n\
        Subject: inner\n\
        Content-Type: multipart/mixed; boundary=nested\n\
        \n\
        --nested\n\
        \n\
        nested text\n\
        --nested\n\
        Content-Type: image/png\n\
        \n\
        PNG\n\
        --nested--\n\
        --outer--\n";

    #[test]
    fn mixed_body_structure() {
        let expected = "BODYSTRUCTURE (\
            (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 12 1 NIL NIL NIL NIL)\
            ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 7 1 NIL NIL NIL NIL)\
            (\"TEXT\" \"HTML\" NIL NIL NIL \"7BIT\" 14 1 NIL NIL NIL NIL) \"ALTERNATIVE\" \
            (\"BOUNDARY\" \"inner\") NIL NIL NIL)\
            (\"APPLICATION\" \"PDF\" (\"NAME\" \"doc.pdf\") \"<pdf@example.com>\" \
            \"A =?utf-8?q?d=C3=B6c?=\" \"BASE64\" 8 NIL (\"ATTACHMENT\" (\"FILENAME\" \"doc.pdf\")) \
            (\"en\" \"de\") NIL)\
            (\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 176 \
            (NIL \"inner\" ((\"Inner\" NIL \"inner\" \"example.com\")) \
            ((\"Inner\" NIL \"inner\" \"example.com\")) ((\"Inner\" NIL \"inner\" \"example.com\")) \
            NIL NIL NIL NIL NIL) \
            ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 11 1 NIL NIL NIL NIL)\
            (\"IMAGE\" \"PNG\" NIL NIL NIL \"7BIT\" 3 NIL NIL NIL NIL) \"MIXED\" \
            (\"BOUNDARY\" \"nested\") NIL NIL NIL) 12 \
            NIL (\"ATTACHMENT\" (\"FILENAME*\" \"utf-8''%E2%82%AC.eml\")) NIL NIL) \
            \"MIXED\" (\"BOUNDARY\" \"outer\") NIL NIL NIL)";
        assert_eq!(
            wire(MessageDataItem::BodyStructure(body_structure(&crlf(MIXED)))),
            expected
        );
    }

    #[test]
    fn nested_sections() {
        let raw = crlf(MIXED);
        assert_eq!(text(&raw, Section::Part(part(&[1]))), "see attached");
        assert_eq!(text(&raw, Section::Part(part(&[2, 2]))), "<i>alt two</i>");
        assert_eq!(
            text(&raw, Section::Mime(part(&[2]))),
            "Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
        );
        assert_eq!(text(&raw, Section::Mime(part(&[2, 1]))), "\r\n");
        assert_eq!(text(&raw, Section::Part(part(&[2, 1]))), "alt one");
        assert_eq!(text(&raw, Section::Part(part(&[3]))), "JVBERi0=");
        // The message/rfc822 part: whole encapsulated message, its header, text and parts.
        let message = text(&raw, Section::Part(part(&[4])));
        assert!(message.starts_with("From: Inner") && message.ends_with("--nested--"));
        assert_eq!(
            text(&raw, Section::Header(Some(part(&[4])))),
            "From: Inner <inner@example.com>\r\nSubject: inner\r\n\
             Content-Type: multipart/mixed; boundary=nested\r\n\r\n"
        );
        assert!(text(&raw, Section::Text(Some(part(&[4])))).starts_with("--nested\r\n"));
        assert_eq!(
            text(
                &raw,
                Section::HeaderFields(Some(part(&[4])), names(&["subject"]))
            ),
            "Subject: inner\r\n\r\n"
        );
        assert_eq!(text(&raw, Section::Part(part(&[4, 1]))), "nested text");
        assert_eq!(text(&raw, Section::Part(part(&[4, 2]))), "PNG");
        assert_eq!(
            text(&raw, Section::Mime(part(&[4, 2]))),
            "Content-Type: image/png\r\n\r\n"
        );
        // Sections that do not exist.
        for missing in [
            Section::Part(part(&[5])),
            Section::Part(part(&[1, 1])),
            Section::Part(part(&[4, 3])),
            Section::Header(Some(part(&[1]))),
            Section::Text(Some(part(&[2]))),
            Section::Mime(part(&[9, 9, 9])),
        ] {
            assert_eq!(text(&raw, missing), "");
        }
    }

    #[test]
    fn single_part_numbering() {
        let raw = b"Subject: x\r\n\r\nbody";
        assert_eq!(text(raw, Section::Part(part(&[1]))), "body");
        assert_eq!(text(raw, Section::Mime(part(&[1]))), "Subject: x\r\n\r\n");
        assert_eq!(text(raw, Section::Part(part(&[2]))), "");
        assert_eq!(text(raw, Section::Part(part(&[1, 1]))), "");
        // A top-level message/rfc822: part 1 is the encapsulated message, 1.1 its body.
        let raw = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner body";
        assert_eq!(
            text(raw, Section::Part(part(&[1]))),
            "Subject: in\r\n\r\ninner body"
        );
        assert_eq!(text(raw, Section::Part(part(&[1, 1]))), "inner body");
        assert_eq!(
            text(raw, Section::Header(Some(part(&[1])))),
            "Subject: in\r\n\r\n"
        );
        // A transfer-encoded message/rfc822 is not descended into.
        let raw = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n\
            U3ViamVjdDogaW4NCg0KYm9keQ==";
        assert_eq!(
            wire(MessageDataItem::Body(body(raw))),
            "BODY (\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 28)"
        );
        assert_eq!(text(raw, Section::Text(Some(part(&[1])))), "");
    }

    const FOLDED: &str = "Received: by x\n\
        From: someone@example.com\n\
        Subject: a folded\n  subject line\n\
        X-Other: y\n\
        subject: second\n\
        \n\
        the text\n";

    #[test]
    fn header_sections() {
        let raw = crlf(FOLDED);
        assert_eq!(
            text(
                &raw,
                Section::HeaderFields(None, names(&["From", "SUBJECT"]))
            ),
            "From: someone@example.com\r\nSubject: a folded\r\n  subject line\r\n\
             subject: second\r\n\r\n"
        );
        assert_eq!(
            text(
                &raw,
                Section::HeaderFieldsNot(None, names(&["subject", "from"]))
            ),
            "Received: by x\r\nX-Other: y\r\n\r\n"
        );
        assert_eq!(
            text(&raw, Section::HeaderFields(None, names(&["Cc"]))),
            "\r\n"
        );
        assert_eq!(text(&raw, Section::Text(None)), "the text\r\n");
        let header = text(&raw, Section::Header(None));
        assert!(header.starts_with("Received: by x\r\n") && header.ends_with("second\r\n\r\n"));
        let envelope = wire(MessageDataItem::Envelope(envelope(&raw)));
        assert!(
            envelope.contains("\"a folded  subject line\""),
            "{envelope}"
        );
    }

    #[test]
    fn partials() {
        let range = |origin, count| Some((origin, NonZeroU32::new(count).expect("non-zero")));
        assert_eq!(partial(b"0123456789abcdef", range(0, 10)), b"0123456789");
        assert_eq!(partial(b"0123456789abcdef", range(10, 100)), b"abcdef");
        assert_eq!(partial(b"0123456789", range(10, 1)), b"");
        assert_eq!(partial(b"0123456789", range(u32::MAX, u32::MAX)), b"");
        assert_eq!(partial(b"0123456789", None), b"0123456789");
    }

    #[test]
    fn bare_lf_and_header_only() {
        let raw = b"Subject: lf\nFrom: a@b\n\nbody\n";
        assert_eq!(
            text(raw, Section::Header(None)),
            "Subject: lf\nFrom: a@b\n\n"
        );
        assert_eq!(text(raw, Section::Text(None)), "body\n");
        assert_eq!(
            text(raw, Section::HeaderFields(None, names(&["from"]))),
            "From: a@b\n\r\n"
        );

        let raw = b"Subject: no body\r\nFrom: a@b";
        assert_eq!(
            text(raw, Section::Header(None)),
            "Subject: no body\r\nFrom: a@b"
        );
        assert_eq!(text(raw, Section::Text(None)), "");
        assert_eq!(
            text(raw, Section::HeaderFields(None, names(&["from"]))),
            "From: a@b\r\n\r\n"
        );
        assert_eq!(
            wire(MessageDataItem::Body(body(raw))),
            "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)"
        );
    }

    #[test]
    fn eight_bit_headers_become_literals() {
        let raw = b"Subject: caf\xe9 \xff\r\nFrom: \"J\xc3\xb6rg\" <j@x.de>\r\n\r\n";
        let from: &[u8] = b"(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"x.de\"))";
        let expected = [
            &b"* 1 FETCH (ENVELOPE (NIL {6}\r\ncaf\xe9 \xff "[..],
            from,
            b" ",
            from,
            b" ",
            from,
            b" NIL NIL NIL NIL NIL))\r\n",
        ]
        .concat();
        let response = Response::Data(Data::Fetch {
            seq: NonZeroU32::MIN,
            items: Vec1::from(MessageDataItem::Envelope(envelope(raw))),
        });
        assert_eq!(ResponseCodec::default().encode(&response).dump(), expected);
    }

    #[test]
    fn deep_nesting_is_capped() {
        let mut raw = b"Subject: leaf\r\n\r\nleaf".to_vec();
        for depth in 0..200 {
            let wrapped = if depth % 2 == 0 {
                "Content-Type: message/rfc822\r\n\r\n".to_owned()
            } else {
                format!("Content-Type: multipart/mixed; boundary=b{depth}\r\n\r\n--b{depth}\r\n")
            };
            let mut next = wrapped.into_bytes();
            next.extend_from_slice(&raw);
            if depth % 2 == 1 {
                next.extend_from_slice(format!("\r\n--b{depth}--\r\n").as_bytes());
            }
            raw = next;
        }
        let structure = wire(MessageDataItem::BodyStructure(body_structure(&raw)));
        assert!(structure.contains("\"APPLICATION\" \"OCTET-STREAM\""));
        assert!(!super::section(&raw, Some(&Section::Part(part(&[1; 10])))).is_empty());
        assert!(super::section(&raw, Some(&Section::Part(part(&[1; 40])))).is_empty());
    }

    #[test]
    fn garbage_does_not_panic() {
        let pieces: [&[u8]; 16] = [
            b"\r\n",
            b"\n",
            b":",
            b" ",
            b"=?",
            b"?=",
            b"\"",
            b"<",
            b">",
            b"@",
            b";",
            b"(",
            b"Content-Type: multipart/mixed; boundary=z\r\n",
            b"--z",
            b"Content-Type: message/rfc822\r\n",
            b"\xff\x00\xc3",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let sections = [
            None,
            Some(Section::Header(None)),
            Some(Section::Text(Some(part(&[1])))),
            Some(Section::Mime(part(&[1, 1]))),
            Some(Section::Part(part(&[1, 2, 1]))),
            Some(Section::HeaderFieldsNot(Some(part(&[2])), names(&["x"]))),
        ];
        for round in 0..5000 {
            let mut raw = Vec::new();
            for _ in 0..next() % 64 {
                match next() % 3 {
                    0 => raw.extend_from_slice(pieces[(next() % 16) as usize]),
                    _ => raw.push(next() as u8),
                }
            }
            if round == 0 {
                raw.clear();
            }
            let _ = (envelope(&raw), body_structure(&raw), body(&raw));
            for section in &sections {
                let _ = super::section(&raw, section.as_ref());
            }
            let _ = wire(MessageDataItem::BodyStructure(body_structure(&raw)));
        }
        assert_eq!(
            wire(MessageDataItem::Body(body(b""))),
            "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)"
        );
        assert_eq!(
            wire(MessageDataItem::Envelope(envelope(b""))),
            "ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn top_level_sections_agree_with_the_full_parse() {
        let raw = b"From: a@b\r\nSubject: folded\r\n subject\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\npreamble\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n";
        let names = Vec1::try_from(vec![AString::try_from("subject").unwrap()]).unwrap();
        for s in [
            Section::Header(None),
            Section::Text(None),
            Section::HeaderFields(None, names.clone()),
            Section::HeaderFieldsNot(None, names),
        ] {
            let root = parse(raw, 0..raw.len(), 0);
            let fast = headers_only(raw).unwrap();
            assert_eq!(root.header, fast.header, "{s:?}");
            assert_eq!(section(raw, Some(&s)), {
                let m = &root;
                match &s {
                    Section::Header(_) => span(raw, &m.header).to_vec(),
                    Section::Text(_) => span(raw, &m.body).to_vec(),
                    Section::HeaderFields(_, n) => header_fields(raw, m, n.as_ref(), true),
                    Section::HeaderFieldsNot(_, n) => header_fields(raw, m, n.as_ref(), false),
                    _ => unreachable!(),
                }
            });
        }
    }

    #[test]
    fn bare_addr_spec_fields_are_envelope_addresses() {
        let raw =
            b"From: alice@x.test\r\nTo: bob@x.test, Carol <carol@x.test>\r\nSubject: s\r\n\r\nb";
        let e = envelope(raw);
        assert_eq!(e.from.len(), 1);
        assert_eq!(e.from[0].mailbox, NString(Some(istring("alice"))));
        assert_eq!(e.from[0].host, NString(Some(istring("x.test"))));
        assert_eq!(e.to.len(), 2);
    }
}
