//! Small helpers that build imap-types values: tagged statuses, flags, dates, strings.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn tagged(
    tag: &Tag<'static>,
    kind: Kind,
    code: Option<Code<'static>>,
    msg: &str,
) -> Out {
    let build = |code, msg: &str| {
        let tag = Some(tag.clone());
        match kind {
            Kind::Ok => Status::ok(tag, code, msg.to_owned()),
            Kind::No => Status::no(tag, code, msg.to_owned()),
            Kind::Bad => Status::bad(tag, code, msg.to_owned()),
        }
    };
    // Text that is not valid IMAP text (8-bit, CR, LF) is replaced, never the tag lost: a
    // client waits for its tagged answer.
    Out::Status(build(code, msg).unwrap_or_else(|_| {
        build(None, "(the reason cannot be written in IMAP text)").expect("valid text")
    }))
}

/// The tagged OK of a command that has a UID form: `UID FETCH completed`, `FETCH completed`.
pub(super) fn completed(tag: &Tag<'static>, uid: bool, name: &str) -> Out {
    let text = if uid {
        format!("UID {name} completed")
    } else {
        format!("{name} completed")
    };
    tagged(tag, Kind::Ok, None, &text)
}

pub(super) fn untagged_ok(code: Code<'static>, msg: &str) -> Out {
    Out::Status(Status::ok(None, Some(code), msg.to_owned()).expect("valid text"))
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Ok,
    No,
    Bad,
}

pub(super) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub(super) fn to_flag(s: &str) -> Option<Flag<'static>> {
    Flag::try_from(s).ok().map(IntoStatic::into_static)
}

/// FLAGS of a message as FETCH answers them, with `\Recent` when it is recent for the session.
pub(super) fn flag_fetch(flags: &[String], recent: bool) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| to_flag(f))
        .map(FlagFetch::Flag)
        .chain(recent.then_some(FlagFetch::Recent))
        .collect()
}

pub(super) fn nz64(n: u64) -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(n).unwrap_or(std::num::NonZeroU64::MIN)
}

/// NString holding arbitrary message bytes: a literal (NUL is not allowed in one).
pub(super) fn nstring(bytes: Vec<u8>) -> NString<'static> {
    literal_nstring(without_nul(bytes))
}

fn literal_nstring(bytes: Vec<u8>) -> NString<'static> {
    NString(Some(IString::Literal(Literal::unvalidated(bytes))))
}

/// `bytes` as a literal may carry them: any bytes but NUL (RFC 3501 §9, CHAR8); memchr
/// finds one fast.
fn without_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.contains(&0) {
        bytes.retain(|&b| b != 0);
    }
    bytes
}

/// NString8 for BINARY content: a literal8 (`~{n}`) when it holds NUL, which a literal
/// cannot (RFC 3516 §4.2), else a literal.
pub(super) fn nstring8(bytes: Vec<u8>) -> imap_codec::imap_types::core::NString8<'static> {
    use imap_codec::imap_types::core::{LiteralMode, NString8};
    use imap_codec::imap_types::extensions::binary::Literal8;
    if bytes.contains(&0) {
        NString8::Literal8(Literal8 {
            data: bytes.into(),
            mode: LiteralMode::Sync,
        })
    } else {
        NString8::NString(nstring(bytes))
    }
}

pub(super) fn imap_date(unix: i64) -> DateTime {
    let utc = Utc.timestamp_opt(unix, 0).single().unwrap_or_default();
    let fixed: ChronoDateTime<FixedOffset> = utc.fixed_offset();
    DateTime::try_from(fixed).unwrap_or_else(|_| DateTime::unvalidated(fixed))
}

pub(super) fn atom_attr(s: &str) -> FlagNameAttribute<'static> {
    let atom = s.trim_start_matches('\\');
    FlagNameAttribute::from(Atom::try_from(atom.to_owned()).expect("valid attribute"))
}

/// A refused mailbox operation with its RFC 5530 response code (which IMAP4rev2 uses).
pub(super) fn mailbox_error(tag: &Tag<'static>, e: &MailboxError) -> Out {
    let code: &[u8] = match e {
        MailboxError::Store(inner) => return store_error(tag, &inner.to_string()),
        MailboxError::NoSuchMailbox(_) => b"NONEXISTENT",
        MailboxError::AlreadyExists(_) => b"ALREADYEXISTS",
        _ => b"CANNOT",
    };
    tagged(
        tag,
        Kind::No,
        Some(Code::Other(CodeOther::unvalidated(code))),
        &e.to_string(),
    )
}

pub(super) fn store_error(tag: &Tag<'static>, e: &str) -> Out {
    tracing::error!(error = %e, "local cache error");
    tagged(
        tag,
        Kind::No,
        Some(Code::Other(CodeOther::unvalidated(&b"SERVERBUG"[..]))),
        "local cache error; see the proxy's log",
    )
}

/// NO with RFC 5530 UNAVAILABLE: what the command needs cannot be had now (an attachment
/// not downloaded); trying again later may succeed.
pub(super) fn unavailable(tag: &Tag<'static>, text: &str) -> Out {
    tagged(
        tag,
        Kind::No,
        Some(Code::Other(CodeOther::unvalidated(&b"UNAVAILABLE"[..]))),
        text,
    )
}

/// RFC 5530 EXPUNGEISSUED: another session expunged a message this command asked for.
pub(super) fn expunge_issued() -> Code<'static> {
    Code::Other(CodeOther::unvalidated(&b"EXPUNGEISSUED"[..]))
}

/// Whether two flag sets are the same set (flags compare without regard to case).
pub(super) fn same_flags(a: &[String], b: &[String]) -> bool {
    a.iter().all(|f| has_flag(b, f)) && b.iter().all(|f| has_flag(a, f))
}

/// RFC 5530 NONEXISTENT: the command names a mailbox that does not exist.
pub(super) fn nonexistent() -> Code<'static> {
    Code::Other(CodeOther::unvalidated(&b"NONEXISTENT"[..]))
}

/// A LIST response with the RFC 5258 CHILDINFO extended item `("SUBSCRIBED")`, which
/// imap-types cannot express: imap-codec encodes the response, the item is appended.
pub(super) fn list_childinfo(
    items: &[FlagNameAttribute<'static>],
    mailbox: Mailbox<'static>,
) -> Vec<u8> {
    use imap_codec::ResponseCodec;
    use imap_codec::encode::Encoder as _;
    use imap_codec::imap_types::response::Response;
    let data = Data::List {
        items: items.to_vec(),
        delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
        mailbox,
    };
    let mut bytes = ResponseCodec::default()
        .encode(&Response::Data(data))
        .dump();
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    }
    bytes.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
    bytes
}

/// A FETCH response whose last item holds a large literal, as [`Out::Raw`] pieces: the
/// literal's bytes are written as they are instead of copied into imap-next's encoding
/// (one copy of a 50 MB attachment in memory, not three). imap-codec encodes the response
/// with that literal empty (`{0}`); its length goes in that place and its bytes after it
/// (RFC 3501 §4.3). `items` ends with that item, its literal empty.
pub(super) fn fetch_with_literal(
    seq: NonZeroU32,
    items: Vec1<MessageDataItem<'static>>,
    literal: Vec<u8>,
) -> Vec<Out> {
    use imap_codec::ResponseCodec;
    use imap_codec::encode::Encoder as _;
    use imap_codec::imap_types::response::Response;
    let literal = without_nul(literal);
    // The other items are small (the literal is empty): encoded from a copy, kept for
    // the fallback.
    let encoded = ResponseCodec::default()
        .encode(&Response::Data(Data::Fetch {
            seq,
            items: items.clone(),
        }))
        .dump();
    if let Some(head) = encoded.strip_suffix(b"{0}\r\n)\r\n") {
        let mut first = head.to_vec();
        first.extend_from_slice(format!("{{{}}}\r\n", literal.len()).as_bytes());
        return vec![
            Out::Raw(first),
            Out::Raw(literal),
            Out::Raw(b")\r\n".to_vec()),
        ];
    }
    // Never encoded otherwise; if it were, the literal goes through imap-next after all.
    let mut all = items.into_inner();
    if let Some(last) = all.last_mut() {
        let full = literal_nstring(literal);
        match last {
            MessageDataItem::BodyExt { data, .. }
            | MessageDataItem::Rfc822(data)
            | MessageDataItem::Rfc822Text(data) => *data = full,
            _ => {}
        }
    }
    Vec1::try_from(all)
        .map(|items| vec![Out::Data(Data::Fetch { seq, items })])
        .unwrap_or_default()
}

/// A sequence set as IMAP writes it (`1:3,5`), for responses built here.
pub(super) fn sequence_text(set: &SequenceSet) -> String {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
    let one = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.to_string(),
        SeqOrUid::Asterisk => "*".to_owned(),
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => one(v),
            Sequence::Range(a, b) => format!("{}:{}", one(a), one(b)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Numbers as a sequence set, consecutive ones as ranges; `None` for none.
pub(super) fn number_set(numbers: &[u32]) -> Option<SequenceSet> {
    use imap_codec::imap_types::sequence::Sequence;
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<Sequence> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        let end = sorted[i];
        let value = |n| imap_codec::imap_types::sequence::SeqOrUid::Value(nz(n));
        runs.push(if start == end {
            Sequence::Single(value(start))
        } else {
            Sequence::Range(value(start), value(end))
        });
        i += 1;
    }
    SequenceSet::try_from(runs).ok()
}

/// UIDs in the order given, consecutive ascending runs as ranges (`4:6,2`): APPENDUID after
/// MULTIAPPEND pairs them with the messages in order (RFC 4315 §3).
pub(super) fn in_order_text(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        while i + 1 < numbers.len() && numbers[i + 1] == numbers[i].wrapping_add(1) {
            i += 1;
        }
        parts.push(if numbers[i] == start {
            start.to_string()
        } else {
            format!("{start}:{}", numbers[i])
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use imap_codec::ResponseCodec;
    use imap_codec::encode::Encoder as _;
    use imap_codec::imap_types::response::Response;

    use super::*;

    /// A large literal written as it is gives the bytes imap-codec writes for the same
    /// response with the literal inside it, NULs taken out as `nstring` takes them.
    #[test]
    fn a_fetch_with_its_literal_apart_is_the_same_response() {
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let items = |data| {
            Vec1::try_from(vec![
                MessageDataItem::Uid(nz(7)),
                MessageDataItem::Flags(vec![FlagFetch::Flag(Flag::Seen)]),
                MessageDataItem::BodyExt {
                    section: None,
                    origin: Some(5),
                    data,
                },
            ])
            .unwrap()
        };
        let apart = fetch_with_literal(
            nz(3),
            items(NString(Some(IString::Literal(Literal::unvalidated(
                Vec::new(),
            ))))),
            body.clone(),
        );
        assert_eq!(apart.len(), 3, "head, literal, tail");
        let written: Vec<u8> = apart
            .into_iter()
            .flat_map(|o| match o {
                Out::Raw(bytes) => bytes,
                _ => panic!("not written apart"),
            })
            .collect();
        let whole = ResponseCodec::default()
            .encode(&Response::Data(Data::Fetch {
                seq: nz(3),
                items: items(nstring(body)),
            }))
            .dump();
        assert_eq!(written, whole);
        assert!(written.starts_with(b"* 3 FETCH (UID 7 FLAGS (\\Seen) BODY[]<5> {69721}\r\n"));
    }
}
