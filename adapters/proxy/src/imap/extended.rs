//! Commands of IMAP extensions that imap-codec 2.0.0-alpha.10 does not parse: the RFC 5258
//! LIST with selection options, several patterns and return options (RFC 5819 STATUS
//! among them), SEARCH with RETURN options (ESEARCH, RFC 4731), CREATE with a special use
//! (RFC 6154 §3) and APPEND of several messages (MULTIAPPEND, RFC 3502).
//!
//! imap-next hands such a command over as bytes it could not decode. It is cut into tokens
//! here (atoms, quoted strings, literals, parentheses: RFC 3501 §4), but every mailbox name,
//! pattern, status item, search criterion, flag list, date and message is still validated
//! by imap-codec, by decoding a plain command built from it, so no IMAP grammar for them is
//! written twice.

use std::ops::Range;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder as _;
use imap_codec::imap_types::IntoStatic as _;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;

use super::session::ListOptions;

/// A command imap-codec could not parse, understood here.
#[derive(Debug)]
pub enum Extended {
    /// RFC 5258 LIST.
    List {
        tag: Tag<'static>,
        reference: Mailbox<'static>,
        patterns: Vec<ListMailbox<'static>>,
        options: ListOptions,
    },
    /// RFC 4731 SEARCH RETURN (...).
    Search {
        tag: Tag<'static>,
        uid: bool,
        returns: SearchReturn,
        criteria: Vec<SearchKey<'static>>,
    },
    /// RFC 6154 §3 CREATE mailbox (USE (attribute)).
    Create {
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        uses: Vec<String>,
    },
    /// RFC 3502 APPEND of several messages, all or none.
    MultiAppend {
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        messages: Vec<Appended>,
    },
}

/// One message of a MULTIAPPEND.
#[derive(Debug)]
pub struct Appended {
    pub flags: Vec<Flag<'static>>,
    pub date: Option<DateTime>,
    pub message: Vec<u8>,
}

/// The RFC 4731 return options, and RFC 5182 SAVE; none given means ALL.
// Reason: independent options named after the RFCs'.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    pub save: bool,
}

/// Where a command names the saved search result `$` (RFC 5182 §2.1).
#[derive(Debug)]
pub struct Dollars {
    pub tag: Tag<'static>,
    pub uid: bool,
    /// Where the command's name starts (an empty result turns `FETCH $` into `UID FETCH`).
    pub name_at: usize,
    /// Each `$` and what it stands in for.
    pub places: Vec<(Range<usize>, Place)>,
}

/// What a `$` stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The message set of FETCH, STORE, COPY, MOVE or UID EXPUNGE.
    Set,
    /// A search key (`sequence-set`): `UID set`.
    Key,
    /// The set after a `UID` search key.
    UidKey,
}

/// The `$` of a command line where RFC 5182 allows one: the message set of FETCH, STORE,
/// COPY, MOVE and UID EXPUNGE, and sequence sets in SEARCH, SORT and THREAD criteria. A
/// quoted `"$"` is a string, not the saved result. `None` when there is no such `$`.
pub fn dollars(line: &[u8]) -> Option<Dollars> {
    let tokens = tokens(line)?;
    let is_dollar = |t: &Token| matches!(&t.kind, Kind::Word { written, .. } if written == b"$");
    let tag = Tag::try_from(value(tokens.first()?).to_vec())
        .ok()?
        .into_static();
    let uid = is_word(tokens.get(1), b"UID");
    let at = if uid { 2 } else { 1 };
    let name = tokens.get(at)?;
    let named = |n: &str| is_word(Some(name), n.as_bytes());
    let mut places = Vec::new();
    if ["FETCH", "STORE", "COPY", "MOVE"].iter().any(|n| named(n)) || (uid && named("EXPUNGE")) {
        if let Some(set) = tokens.get(at + 1).filter(|t| is_dollar(t)) {
            places.push((set.span.clone(), Place::Set));
        }
    } else if ["SEARCH", "SORT", "THREAD"].iter().any(|n| named(n)) {
        for (i, t) in tokens.iter().enumerate().skip(at + 1) {
            if is_dollar(t) {
                let after_uid = i > at + 1 && is_word(tokens.get(i - 1), b"UID");
                places.push((
                    t.span.clone(),
                    if after_uid { Place::UidKey } else { Place::Key },
                ));
            }
        }
    }
    (!places.is_empty()).then_some(Dollars {
        tag,
        uid,
        name_at: name.span.start,
        places,
    })
}

/// The tag of a line that could not be parsed, to answer it with a tagged BAD.
pub fn tag_of(bytes: &[u8]) -> Option<Tag<'static>> {
    let end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    Tag::try_from(bytes[..end].to_vec()).ok()
}

/// Why a command was refused: the text of the tagged BAD.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub tag: Tag<'static>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    /// An atom, or a quoted string: as written (quotes and all), and its value.
    Word {
        written: Vec<u8>,
        value: Vec<u8>,
    },
    /// A literal's content (`{n}` or `~{n}` for literal8) within the line.
    Literal {
        data: Range<usize>,
        binary: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: Kind,
    /// Where the token starts and ends in the line.
    span: Range<usize>,
}

/// Longest literal accepted where a name or pattern is expected.
const MAX_NAME_LITERAL: usize = 4096;

/// Cuts a command line into tokens; `None` if it is not well formed.
fn tokens(line: &[u8]) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        let start = i;
        let kind = match line[i] {
            b' ' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b'"' => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    match *line.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            value.push(*line.get(i + 1)?);
                            i += 2;
                        }
                        b'\r' | b'\n' => return None,
                        b => {
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                Kind::Word {
                    written: line[start..i].to_vec(),
                    value,
                }
            }
            b'{' | b'~' => {
                let binary = line[i] == b'~';
                let open = if binary { i + 1 } else { i };
                if line.get(open) != Some(&b'{') {
                    return None;
                }
                let close = open + line[open..].iter().position(|&b| b == b'}')?;
                let digits = std::str::from_utf8(&line[open + 1..close]).ok()?;
                let n: usize = digits.trim_end_matches('+').parse().ok()?;
                if line.get(close + 1..close + 3)? != b"\r\n" {
                    return None;
                }
                let data = close + 3..(close + 3).checked_add(n)?;
                line.get(data.clone())?;
                i = data.end;
                Kind::Literal { data, binary }
            }
            _ => {
                while i < line.len() && !matches!(line[i], b' ' | b'(' | b')' | b'\r' | b'\n') {
                    i += 1;
                }
                let word = line[start..i].to_vec();
                Kind::Word {
                    written: word.clone(),
                    value: word,
                }
            }
        };
        out.push(Token {
            kind,
            span: start..i,
        });
    }
    Some(out)
}

/// A value as a quoted string, for handing to imap-codec; `None` if it cannot be one.
fn quoted(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_NAME_LITERAL || value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return None;
    }
    let mut q = vec![b'"'];
    for &b in value {
        if matches!(b, b'"' | b'\\') {
            q.push(b'\\');
        }
        q.push(b);
    }
    q.push(b'"');
    Some(q)
}

/// Decodes one plain command built from validated parts.
fn plain(line: &[u8]) -> Option<CommandBody<'static>> {
    let (rest, cmd) = CommandCodec::default().decode(line).ok()?;
    rest.is_empty().then(|| cmd.body.into_static())
}

/// A list of words in parentheses starting at `at`: the words and the index after `)`.
fn word_list(tokens: &[Token], at: usize) -> Option<(Vec<&Token>, usize)> {
    if tokens.get(at)?.kind != Kind::Open {
        return None;
    }
    let mut words = Vec::new();
    let mut i = at + 1;
    loop {
        let t = tokens.get(i)?;
        match t.kind {
            Kind::Close => return Some((words, i + 1)),
            Kind::Word { .. } => words.push(t),
            Kind::Open | Kind::Literal { .. } => return None,
        }
        i += 1;
    }
}

fn value(t: &Token) -> &[u8] {
    match &t.kind {
        Kind::Word { value, .. } => value,
        _ => b"",
    }
}

/// A name or pattern token as imap-codec may read it on its own: a literal becomes a
/// quoted string.
fn written(line: &[u8], t: &Token) -> Option<Vec<u8>> {
    match &t.kind {
        Kind::Word { written, .. } => Some(written.clone()),
        Kind::Literal { data, .. } => quoted(&line[data.clone()]),
        Kind::Open | Kind::Close => None,
    }
}

fn is_word(t: Option<&Token>, word: &[u8]) -> bool {
    t.is_some_and(|t| matches!(t.kind, Kind::Word { .. }) && value(t).eq_ignore_ascii_case(word))
}

/// Parses a command imap-codec refused. `Ok(None)`: not one of these commands;
/// `Err`: one of them, malformed or with an option this server does not know.
pub fn parse(line: &[u8]) -> Result<Option<Extended>, Refusal> {
    let Some(tokens) = tokens(line) else {
        return Ok(None);
    };
    let Some(tag) = tokens
        .first()
        .filter(|t| matches!(t.kind, Kind::Word { .. }))
    else {
        return Ok(None);
    };
    let Ok(tag) = Tag::try_from(value(tag).to_vec()) else {
        return Ok(None);
    };
    let tag = tag.into_static();
    let refuse = |text: String| Refusal {
        tag: tag.clone(),
        text,
    };
    let uid = is_word(tokens.get(1), b"UID");
    let at = if uid { 2 } else { 1 };
    let name = tokens.get(at);
    let rest = &tokens[(at + 1).min(tokens.len())..];
    let parsed = if is_word(name, b"LIST") && !uid {
        list(&tag, line, rest)
    } else if is_word(name, b"SEARCH") && is_word(rest.first(), b"RETURN") {
        search(&tag, uid, line, rest)
    } else if is_word(name, b"CREATE") && !uid {
        create(&tag, line, rest)
    } else if is_word(name, b"APPEND") && !uid {
        multi_append(&tag, line, rest)
    } else {
        return Ok(None);
    };
    parsed.map(Some).map_err(refuse)
}

/// RFC 5258 §6:
/// `list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]`
fn list(tag: &Tag<'static>, line: &[u8], t: &[Token]) -> Result<Extended, String> {
    let malformed = || "LIST: malformed arguments (RFC 5258)".to_owned();
    let mut options = ListOptions {
        extended: true,
        ..ListOptions::default()
    };
    let mut i = 0;
    let mut selected = false;
    if t.first().is_some_and(|t| t.kind == Kind::Open) {
        let (words, next) = word_list(t, 0).ok_or_else(malformed)?;
        for w in words {
            match value(w).to_ascii_uppercase().as_slice() {
                b"SUBSCRIBED" => {
                    options.subscribed_only = true;
                    options.return_subscribed = true;
                    selected = true;
                }
                b"SPECIAL-USE" => {
                    options.special_use_only = true;
                    options.return_special_use = true;
                    selected = true;
                }
                b"RECURSIVEMATCH" => options.recursive_match = true,
                b"REMOTE" => {}
                other => {
                    return Err(format!(
                        "LIST: unknown selection option {}",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        // RFC 5258 §3.1: RECURSIVEMATCH alone is an error.
        if options.recursive_match && !selected {
            return Err("LIST: RECURSIVEMATCH needs another selection option".to_owned());
        }
        i = next;
    }
    let reference = t
        .get(i)
        .and_then(|r| written(line, r))
        .ok_or_else(malformed)?;
    i += 1;
    let mut pattern_tokens = Vec::new();
    if t.get(i).is_some_and(|t| t.kind == Kind::Open) {
        i += 1;
        while let Some(p) = t.get(i).filter(|p| p.kind != Kind::Close) {
            pattern_tokens.push(p);
            i += 1;
        }
        if pattern_tokens.is_empty() || t.get(i).is_none() {
            return Err(malformed());
        }
        i += 1;
    } else {
        pattern_tokens.push(t.get(i).ok_or_else(malformed)?);
        i += 1;
    }
    if i < t.len() {
        if !is_word(t.get(i), b"RETURN") {
            return Err(malformed());
        }
        i = return_options(t, i + 1, &mut options)?;
    }
    if i != t.len() {
        return Err(malformed());
    }
    // Reference and each pattern, validated by imap-codec as a plain LIST.
    let mut reference_box = None;
    let mut patterns = Vec::new();
    for p in pattern_tokens {
        let p = written(line, p).ok_or_else(malformed)?;
        let plain_list = [b"x LIST ", reference.as_slice(), b" ", &p, b"\r\n"].concat();
        match plain(&plain_list) {
            Some(CommandBody::List {
                reference,
                mailbox_wildcard,
            }) => {
                reference_box = Some(reference);
                patterns.push(mailbox_wildcard);
            }
            _ => return Err(malformed()),
        }
    }
    Ok(Extended::List {
        tag: tag.clone(),
        reference: reference_box.ok_or_else(malformed)?,
        patterns,
        options,
    })
}

/// `list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"`, with
/// RFC 5819 `"STATUS" SP "(" status-att *(SP status-att) ")"`.
fn return_options(t: &[Token], at: usize, options: &mut ListOptions) -> Result<usize, String> {
    let malformed = || "LIST: malformed RETURN options (RFC 5258)".to_owned();
    if t.get(at).is_none_or(|t| t.kind != Kind::Open) {
        return Err(malformed());
    }
    let mut i = at + 1;
    loop {
        let w = t.get(i).ok_or_else(malformed)?;
        match w.kind {
            Kind::Close => return Ok(i + 1),
            Kind::Open | Kind::Literal { .. } => return Err(malformed()),
            Kind::Word { .. } => match value(w).to_ascii_uppercase().as_slice() {
                b"SUBSCRIBED" => options.return_subscribed = true,
                b"SPECIAL-USE" => options.return_special_use = true,
                b"CHILDREN" => {}
                b"STATUS" => {
                    let (items, next) = word_list(t, i + 1).ok_or_else(malformed)?;
                    let names: Vec<&[u8]> = items.iter().map(|w| value(w)).collect();
                    let plain_status =
                        [b"x STATUS INBOX (".as_slice(), &names.join(&b' '), b")\r\n"].concat();
                    match plain(&plain_status) {
                        Some(CommandBody::Status { item_names, .. }) => {
                            options.return_status = item_names.into_owned();
                        }
                        _ => return Err(malformed()),
                    }
                    i = next;
                    continue;
                }
                other => {
                    return Err(format!(
                        "LIST: unknown return option {}",
                        String::from_utf8_lossy(other)
                    ));
                }
            },
        }
        i += 1;
    }
}

/// RFC 4731 §3: `search = "SEARCH" [search-return-opts] SP search-criteria`, with
/// `search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"`.
/// The criteria after the options are handed to imap-codec as they were written.
fn search(tag: &Tag<'static>, uid: bool, line: &[u8], t: &[Token]) -> Result<Extended, String> {
    let malformed = || "SEARCH: malformed RETURN options (RFC 4731)".to_owned();
    let (words, next) = word_list(t, 1).ok_or_else(malformed)?;
    let mut returns = SearchReturn::default();
    for w in words {
        match value(w).to_ascii_uppercase().as_slice() {
            b"MIN" => returns.min = true,
            b"MAX" => returns.max = true,
            b"ALL" => returns.all = true,
            b"COUNT" => returns.count = true,
            b"SAVE" => returns.save = true,
            other => {
                return Err(format!(
                    "SEARCH: unknown return option {}",
                    String::from_utf8_lossy(other)
                ));
            }
        }
    }
    // RFC 4731 §3.1: RETURN () means ALL.
    if returns == SearchReturn::default() {
        returns.all = true;
    }
    let after = t.get(next - 1).ok_or_else(malformed)?.span.end;
    let plain_search = [
        if uid {
            b"x UID SEARCH".as_slice()
        } else {
            b"x SEARCH".as_slice()
        },
        &line[after..],
    ]
    .concat();
    match plain(&plain_search) {
        Some(CommandBody::Search { criteria, .. }) => Ok(Extended::Search {
            tag: tag.clone(),
            uid,
            returns,
            criteria: criteria.into_inner(),
        }),
        _ => Err("SEARCH: malformed criteria".to_owned()),
    }
}

/// RFC 6154 §3 (with RFC 4466 create-params):
/// `create = "CREATE" SP mailbox [SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"]`.
fn create(tag: &Tag<'static>, line: &[u8], t: &[Token]) -> Result<Extended, String> {
    let malformed = || "CREATE: malformed arguments (RFC 6154)".to_owned();
    let mailbox = t
        .first()
        .and_then(|m| written(line, m))
        .ok_or_else(malformed)?;
    let Some(CommandBody::Create { mailbox }) =
        plain(&[b"x CREATE ", mailbox.as_slice(), b"\r\n"].concat())
    else {
        return Err(malformed());
    };
    // "(" "USE" SP "(" attrs ")" ")"
    if t.get(1).is_none_or(|t| t.kind != Kind::Open) || !is_word(t.get(2), b"USE") {
        return Err(malformed());
    }
    let (words, next) = word_list(t, 3).ok_or_else(malformed)?;
    if t.get(next).is_none_or(|t| t.kind != Kind::Close) || next + 1 != t.len() {
        return Err(malformed());
    }
    Ok(Extended::Create {
        tag: tag.clone(),
        mailbox,
        uses: words
            .iter()
            .map(|w| String::from_utf8_lossy(value(w)).into_owned())
            .collect(),
    })
}

/// RFC 3502 §6.3.11: `append = "APPEND" SP mailbox 1*append-message`, each
/// `append-message = [SP flag-list] [SP date-time] SP literal`. Each message is validated by
/// imap-codec as a plain APPEND.
fn multi_append(tag: &Tag<'static>, line: &[u8], t: &[Token]) -> Result<Extended, String> {
    let malformed = || "APPEND: malformed arguments (RFC 3502)".to_owned();
    let mailbox_written = t
        .first()
        .and_then(|m| written(line, m))
        .ok_or_else(malformed)?;
    let mut messages = Vec::new();
    let mut mailbox = None;
    let mut i = 1;
    while i < t.len() {
        // Flags and date up to the literal, as written.
        let from = t[i].span.start;
        while t
            .get(i)
            .is_some_and(|t| !matches!(t.kind, Kind::Literal { .. }))
        {
            i += 1;
        }
        let literal = t.get(i).ok_or_else(malformed)?;
        let Kind::Literal { data, binary } = &literal.kind else {
            return Err(malformed());
        };
        let opts = &line[from..literal.span.start];
        let head = [
            b"x APPEND ".as_slice(),
            &mailbox_written,
            b" ",
            opts,
            if *binary { b"~{" } else { b"{" },
            data.len().to_string().as_bytes(),
            b"}\r\n",
        ]
        .concat();
        let plain_append = [head.as_slice(), &line[data.clone()], b"\r\n"].concat();
        match plain(&plain_append) {
            Some(CommandBody::Append {
                mailbox: m,
                flags,
                date,
                message,
            }) => {
                mailbox = Some(m);
                messages.push(Appended {
                    flags,
                    date,
                    message: match message {
                        LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
                        LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
                    },
                });
            }
            _ => return Err(malformed()),
        }
        i += 1;
    }
    Ok(Extended::MultiAppend {
        tag: tag.clone(),
        mailbox: mailbox.ok_or_else(malformed)?,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use imap_codec::imap_types::status::StatusDataItemName;

    use super::*;

    fn list(line: &str) -> (Vec<String>, ListOptions) {
        match parse(line.as_bytes()) {
            Ok(Some(Extended::List {
                patterns, options, ..
            })) => (
                patterns
                    .iter()
                    .map(|p| match p {
                        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
                        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
                    })
                    .collect(),
                options,
            ),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn rfc5258_list_commands_parse() {
        let (p, o) = list("97 list (subscribed) \"\" \"*\" return (special-use)\r\n");
        assert_eq!(p, ["*"]);
        assert!(o.subscribed_only && o.return_subscribed && o.return_special_use && o.extended);
        let (p, o) = list(
            "A LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" %/% {4}\r\nSent) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
        );
        assert_eq!(p, ["INBOX", "%/%", "Sent"]);
        assert!(o.recursive_match);
        assert_eq!(
            o.return_status,
            vec![StatusDataItemName::Messages, StatusDataItemName::Unseen]
        );
        let (p, _) = list("A LIST \"\" \"a \\\"quoted\\\" name\" RETURN ()\r\n");
        assert_eq!(p, ["a \"quoted\" name"]);
    }

    #[test]
    fn esearch_create_use_and_multiappend_parse() {
        let Ok(Some(Extended::Search {
            uid,
            returns,
            criteria,
            ..
        })) = parse(b"A UID SEARCH RETURN (MIN COUNT) SUBJECT {5}\r\nhello UNSEEN\r\n")
        else {
            panic!("ESEARCH")
        };
        assert!(uid && returns.min && returns.count && !returns.all);
        assert_eq!(criteria.len(), 2);
        let Ok(Some(Extended::Create { uses, .. })) =
            parse(b"A CREATE Receipts (USE (\\Archive))\r\n")
        else {
            panic!("CREATE USE")
        };
        assert_eq!(uses, ["\\Archive"]);
        let Ok(Some(Extended::MultiAppend { messages, .. })) = parse(
            b"A APPEND INBOX (\\Seen) \"01-Jan-2026 10:00:00 +0000\" {3}\r\none {3+}\r\ntwo\r\n",
        ) else {
            panic!("MULTIAPPEND")
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].message, b"one");
        assert!(messages[0].date.is_some() && messages[1].flags.is_empty());
        assert!(parse(b"A CREATE X (USE)\r\n").is_err());
        assert!(parse(b"A APPEND INBOX (\\Seen) {3}\r\none (\\Bogus\r\n").is_err());
    }

    #[test]
    fn bad_list_options_are_refused_and_other_commands_left_alone() {
        for bad in [
            "A LIST (RECURSIVEMATCH) \"\" \"*\"\r\n",
            "A LIST (BOGUS) \"\" \"*\"\r\n",
            "A LIST \"\" \"*\" RETURN (BOGUS)\r\n",
            "A LIST \"\" () \r\n",
            "A LIST \"\" \"*\" RETURN (STATUS (NOPE))\r\n",
            "A LIST \"\" \"*\" trailing\r\n",
        ] {
            let refusal = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(refusal.tag.inner(), "A", "{bad}");
        }
        assert!(parse(b"1 FETCH 1 (FLAGS)\r\n").unwrap().is_none());
        assert!(parse(b"\"unterminated\r\n").unwrap().is_none());
        assert!(parse(b"A LIST \"\" {99999}\r\n").unwrap().is_none());
        assert!(
            parse(b"A LIST \"\" {18446744073709551615}\r\nx")
                .unwrap()
                .is_none()
        );
    }
}
