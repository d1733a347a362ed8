//! Commands of IMAP extensions that imap-codec 2.0.0-alpha.10 does not parse: the RFC 5258
//! LIST with selection options, several patterns and return options (RFC 5819 STATUS
//! among them).
//!
//! imap-next hands such a command over as bytes it could not decode. It is cut into tokens
//! here (atoms, quoted strings, literals, parentheses: RFC 3501 §4), but every mailbox name,
//! pattern and status item is still validated by imap-codec, by decoding a plain command
//! built from it, so no IMAP string grammar is written twice.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder as _;
use imap_codec::imap_types::IntoStatic as _;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};

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
}

/// Why a command was refused: the text of the tagged BAD.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub tag: Tag<'static>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    /// An atom or a quoted string or literal, as it was written (quotes and all) and its value.
    Word {
        written: Vec<u8>,
        value: Vec<u8>,
    },
}

/// Longest literal accepted inside one of these commands (a mailbox name or pattern).
const MAX_TOKEN: usize = 4096;

/// Cuts a command line into tokens; `None` if it is not well formed.
fn tokens(line: &[u8]) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' | b'\r' | b'\n' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let start = i;
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
                out.push(Token::Word {
                    written: line[start..i].to_vec(),
                    value,
                });
            }
            b'{' => {
                let close = i + line[i..].iter().position(|&b| b == b'}')?;
                let digits = std::str::from_utf8(&line[i + 1..close]).ok()?;
                let n: usize = digits.trim_end_matches('+').parse().ok()?;
                if n > MAX_TOKEN || line.get(close + 1..close + 3)? != b"\r\n" {
                    return None;
                }
                let start = close + 3;
                let value = line.get(start..start + n)?.to_vec();
                i = start + n;
                out.push(Token::Word {
                    written: quoted(&value)?,
                    value,
                });
            }
            _ => {
                let start = i;
                while i < line.len() && !matches!(line[i], b' ' | b'(' | b')' | b'\r' | b'\n') {
                    i += 1;
                }
                let word = line[start..i].to_vec();
                out.push(Token::Word {
                    written: word.clone(),
                    value: word,
                });
            }
        }
    }
    Some(out)
}

/// A value as a quoted string, for handing to imap-codec; `None` if it cannot be one.
fn quoted(value: &[u8]) -> Option<Vec<u8>> {
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
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
    if tokens.get(at)? != &Token::Open {
        return None;
    }
    let mut words = Vec::new();
    let mut i = at + 1;
    loop {
        match tokens.get(i)? {
            Token::Close => return Some((words, i + 1)),
            Token::Open => return None,
            w @ Token::Word { .. } => words.push(w),
        }
        i += 1;
    }
}

fn value(t: &Token) -> &[u8] {
    match t {
        Token::Word { value, .. } => value,
        _ => b"",
    }
}

fn written(t: &Token) -> &[u8] {
    match t {
        Token::Word { written, .. } => written,
        _ => b"",
    }
}

/// Parses a command imap-codec refused. `Ok(None)`: not one of these commands;
/// `Err`: one of them, malformed or with an option this server does not know.
pub fn parse(line: &[u8]) -> Result<Option<Extended>, Refusal> {
    let Some(tokens) = tokens(line) else {
        return Ok(None);
    };
    let (Some(tag), Some(name)) = (tokens.first(), tokens.get(1)) else {
        return Ok(None);
    };
    let Ok(tag) = Tag::try_from(value(tag).to_vec()) else {
        return Ok(None);
    };
    let tag = tag.into_static();
    let refuse = |text: &str| Refusal {
        tag: tag.clone(),
        text: text.to_owned(),
    };
    if value(name).eq_ignore_ascii_case(b"LIST") {
        list(&tag, &tokens[2..])
            .map(Some)
            .map_err(|text| refuse(&text))
    } else {
        Ok(None)
    }
}

/// RFC 5258 §6:
/// `list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]`
fn list(tag: &Tag<'static>, t: &[Token]) -> Result<Extended, String> {
    let malformed = || "LIST: malformed arguments (RFC 5258)".to_owned();
    let mut options = ListOptions {
        extended: true,
        ..ListOptions::default()
    };
    let mut i = 0;
    let mut selected = false;
    if t.first() == Some(&Token::Open) {
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
        .filter(|r| **r != Token::Open)
        .ok_or_else(malformed)?;
    i += 1;
    let mut pattern_tokens = Vec::new();
    if t.get(i) == Some(&Token::Open) {
        let (words, next) = word_list(t, i).ok_or_else(malformed)?;
        if words.is_empty() {
            return Err(malformed());
        }
        pattern_tokens = words;
        i = next;
    } else {
        pattern_tokens.push(t.get(i).ok_or_else(malformed)?);
        i += 1;
    }
    if i < t.len() {
        if !value(&t[i]).eq_ignore_ascii_case(b"RETURN") {
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
        let line = [b"x LIST ", written(reference), b" ", written(p), b"\r\n"].concat();
        match plain(&line) {
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
    if t.get(at) != Some(&Token::Open) {
        return Err(malformed());
    }
    let mut i = at + 1;
    loop {
        match t.get(i).ok_or_else(malformed)? {
            Token::Close => return Ok(i + 1),
            Token::Open => return Err(malformed()),
            w @ Token::Word { .. } => match value(w).to_ascii_uppercase().as_slice() {
                b"SUBSCRIBED" => options.return_subscribed = true,
                b"SPECIAL-USE" => options.return_special_use = true,
                b"CHILDREN" => {}
                b"STATUS" => {
                    let (items, next) = word_list(t, i + 1).ok_or_else(malformed)?;
                    let names: Vec<&[u8]> = items.iter().map(|w| written(w)).collect();
                    let line =
                        [b"x STATUS INBOX (".as_slice(), &names.join(&b' '), b")\r\n"].concat();
                    match plain(&line) {
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
    }
}
