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
    let tag = Some(tag.clone());
    let status = match kind {
        Kind::Ok => Status::ok(tag, code, msg.to_owned()),
        Kind::No => Status::no(tag, code, msg.to_owned()),
        Kind::Bad => Status::bad(tag, code, msg.to_owned()),
    };
    Out::Status(status.unwrap_or_else(|_| Status::bad(None, None, "error").expect("valid text")))
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

pub(super) fn flag_fetch(flags: &[String]) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| to_flag(f))
        .map(FlagFetch::Flag)
        .collect()
}

pub(super) fn has(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// NString holding arbitrary message bytes: a literal (NUL is not allowed in one).
pub(super) fn nstring(mut bytes: Vec<u8>) -> NString<'static> {
    // A literal is any bytes but NUL (RFC 3501 §9, CHAR8); memchr finds one fast.
    if bytes.contains(&0) {
        bytes.retain(|&b| b != 0);
    }
    NString(Some(IString::Literal(Literal::unvalidated(bytes))))
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

pub(super) fn mailbox_error(tag: &Tag<'static>, e: &MailboxError) -> Out {
    match e {
        MailboxError::Store(inner) => store_error(tag, &inner.to_string()),
        other => tagged(tag, Kind::No, None, &other.to_string()),
    }
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
