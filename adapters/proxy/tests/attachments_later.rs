//! Messages filed before their large attachments are downloaded (DECISIONS D76), served
//! by a proxy that cannot download them: what needs no attachment byte is answered from
//! the filled message, and a FETCH that reads into an attachment never gets the filler —
//! each such message is left out and the FETCH says why.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;

use common::{PASSWORD, Proxy, USER};
use letterme_client::cache::{Piece, Synced};
use letterme_client::mailbox::Stored;
use letterme_protocol::blob::Sealer;

/// Two messages, each with a PDF whose body is a blob not downloaded.
fn file_two_awaiting(proxy: &Proxy) {
    file_awaiting(proxy, &["e1", "e2"], "application/pdf");
}

/// A message for each of `ids`, each with an attachment of `content_type` whose body is a
/// blob not downloaded.
fn file_awaiting(proxy: &Proxy, ids: &[&str], content_type: &str) {
    let (_, reference, _) = Sealer::new().finish(&[b'Q'; 3000]);
    let rest = format!("From: bob@x.test\r\nSubject: later\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n--b--\r\n").into_bytes();
    let at = rest.windows(6).rposition(|w| w == b"\r\n\r\n\r\n").unwrap() + 4;
    let synced = |id: &str| Synced {
        stored: Stored {
            id: id.into(),
            sender: "bob@x.test".into(),
            received: 1,
            envelope: id.as_bytes().to_vec(),
            signer_key: [0; 32],
        },
        mail: Some(letterme_client::cache::NewMail {
            folder: "INBOX".into(),
            flags: vec![],
            internal_date: 1_700_000_000,
            raw: rest.clone(),
            message_id: None,
            pieces: vec![Piece {
                at,
                blob: reference.clone(),
            }],
        }),
        state: vec![],
        awaiting: true,
    };
    let synced: Vec<Synced> = ids.iter().map(|id| synced(id)).collect();
    proxy.cache.commit_synced(&synced, 1).unwrap();
}

/// Sends `command` tagged `t` and returns every line up to and including the tagged one.
fn exchange(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    tag: &str,
    command: &str,
) -> Vec<String> {
    write!(w, "{tag} {command}\r\n").unwrap();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed: {lines:?}");
        let done = line.starts_with(&format!("{tag} "));
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// A connection logged in, with INBOX selected.
fn inbox(proxy: &Proxy) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(proxy.addr).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    exchange(&mut r, &mut w, "a", &format!("LOGIN {USER} {PASSWORD}"));
    exchange(&mut r, &mut w, "b", "SELECT INBOX");
    (r, w)
}

#[test]
fn a_fetch_never_serves_a_missing_attachment_as_filler() {
    let proxy = Proxy::start();
    file_two_awaiting(&proxy);
    let (mut r, mut w) = inbox(&proxy);

    // The structure, size and text part need no byte of the PDF.
    let seen = exchange(
        &mut r,
        &mut w,
        "c",
        "UID FETCH 1:2 (RFC822.SIZE BODYSTRUCTURE BODY.PEEK[1])",
    )
    .concat();
    assert!(seen.contains("c OK"), "{seen}");
    assert_eq!(seen.matches("\"APPLICATION\" \"PDF\"").count(), 2, "{seen}");
    assert_eq!(seen.matches("see attached").count(), 2, "{seen}");

    // Both read into it: neither is served, the FETCH says it could not download them.
    for items in [
        "BODY.PEEK[]",
        "BODY.PEEK[2]",
        "BINARY.PEEK[2]",
        "RFC822.TEXT",
    ] {
        let seen = exchange(&mut r, &mut w, "d", &format!("UID FETCH 1:2 ({items})")).concat();
        assert!(seen.contains("d NO [UNAVAILABLE]"), "{items}: {seen}");
        assert!(!seen.contains("AAAA"), "{items}: filler served: {seen}");
        assert!(!seen.contains(" FETCH "), "{items}: {seen}");
    }
    // Nor did anything mark them \Seen.
    let seen = exchange(&mut r, &mut w, "e", "UID FETCH 1:2 (FLAGS)").concat();
    assert!(!seen.contains("\\Seen"), "{seen}");
}

/// A text search reads text parts and never the filler: a PDF not downloaded changes no
/// answer, and a text attachment not downloaded (this proxy cannot) fails the search —
/// SEARCH, ESEARCH, SORT and THREAD alike — rather than answer without its words.
#[test]
fn a_text_search_never_reads_the_filler() {
    let proxy = Proxy::start();
    file_two_awaiting(&proxy);
    let (mut r, mut w) = inbox(&proxy);
    let seen = exchange(&mut r, &mut w, "c", "UID SEARCH BODY \"see attached\"").concat();
    assert!(seen.contains("* SEARCH 1 2\r\n"), "{seen}");
    assert!(seen.contains("c OK"), "{seen}");
    let seen = exchange(&mut r, &mut w, "d", "SEARCH TEXT \"AAAAAAAA\"").concat();
    assert!(seen.contains("* SEARCH\r\n"), "{seen}");

    file_awaiting(&proxy, &["e3"], "text/plain");
    exchange(&mut r, &mut w, "e", "NOOP");
    for command in [
        "SEARCH BODY \"AAAAAAAA\"",
        "UID SEARCH TEXT \"see attached\"",
        "SEARCH RETURN (COUNT) BODY \"AAAAAAAA\"",
        "SORT (ARRIVAL) UTF-8 BODY \"AAAAAAAA\"",
        "THREAD REFERENCES UTF-8 TEXT \"AAAAAAAA\"",
    ] {
        let seen = exchange(&mut r, &mut w, "f", command).concat();
        assert!(seen.contains("f NO [UNAVAILABLE]"), "{command}: {seen}");
        assert!(
            !seen.contains(" 3"),
            "{command}: answered without the text: {seen}"
        );
    }
    // Header keys read no attachment.
    let seen = exchange(&mut r, &mut w, "g", "SEARCH SUBJECT later FROM bob").concat();
    assert!(seen.contains("* SEARCH 1 2 3\r\n"), "{seen}");
}

/// Reads one tagged exchange's lines and the literals in them (`{n}` at a line's end is
/// followed by n bytes).
fn exchange_literals(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    tag: &str,
    command: &str,
) -> (Vec<String>, Vec<Vec<u8>>) {
    use std::io::Read as _;
    write!(w, "{tag} {command}\r\n").unwrap();
    let (mut lines, mut literals) = (Vec::new(), Vec::new());
    loop {
        let mut line = Vec::new();
        assert!(r.read_until(b'\n', &mut line).unwrap() > 0, "closed");
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some(n) = text
            .trim_end()
            .strip_suffix('}')
            .and_then(|t| t.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let mut literal = vec![0; n];
            r.read_exact(&mut literal).unwrap();
            literals.push(literal);
        }
        let done = text.starts_with(&format!("{tag} "));
        lines.push(text);
        if done {
            return (lines, literals);
        }
    }
}

/// Several large messages in one FETCH: each written as it is, a few at a time, in order,
/// with the FETCH going on after each, and sections and partials cut from them exactly.
#[test]
fn large_messages_are_served_whole_one_after_another() {
    let proxy = Proxy::start();
    let messages: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let mut m = format!(
                "From: bob@x.test\r\nSubject: large {i}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\npart one {i}\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            m.extend((0..3 << 20).map(|j: u32| b"0123456789abcdef"[((j + u32::from(i)) % 16) as usize]));
            m.extend_from_slice(b"\r\n--b--\r\n");
            m
        })
        .collect();
    let mails: Vec<letterme_client::cache::NewMail> = messages
        .iter()
        .map(|raw| letterme_client::cache::NewMail {
            folder: "INBOX".into(),
            flags: vec![],
            internal_date: 1_700_000_000,
            raw: raw.clone(),
            message_id: None,
            pieces: vec![],
        })
        .collect();
    proxy.cache.append_all(&mails).unwrap();
    let (mut r, mut w) = inbox(&proxy);
    let (lines, literals) =
        exchange_literals(&mut r, &mut w, "c", "UID FETCH 1:4 (UID BODY.PEEK[])");
    assert!(
        lines.last().unwrap().starts_with("c OK"),
        "{:?}",
        lines.last()
    );
    assert_eq!(literals, messages, "every message whole, in order");
    let (lines, literals) = exchange_literals(
        &mut r,
        &mut w,
        "d",
        "UID FETCH 2:3 (BODY.PEEK[1] BODY.PEEK[2]<5.10>)",
    );
    assert!(lines.last().unwrap().starts_with("d OK"), "{lines:?}");
    assert_eq!(literals.len(), 4, "{lines:?}");
    for (i, m) in [(0, &messages[1]), (2, &messages[2])] {
        let part = &m[m.len() - 9 - (3 << 20)..m.len() - 9];
        let mut got = literals[i..i + 2].to_vec();
        got.sort();
        let mut want = vec![
            format!("part one {}", i / 2 + 1).into_bytes(),
            part[5..15].to_vec(),
        ];
        want.sort();
        assert_eq!(got, want, "{lines:?}");
    }
}
