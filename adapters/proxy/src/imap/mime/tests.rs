//! FETCH answers cut from real and hostile messages: sections, BODYSTRUCTURE, ENVELOPE.

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
    let raw = b"From: alice@x.test\r\nTo: bob@x.test, Carol <carol@x.test>\r\nSubject: s\r\n\r\nb";
    let e = envelope(raw);
    assert_eq!(e.from.len(), 1);
    assert_eq!(e.from[0].mailbox, NString(Some(istring("alice"))));
    assert_eq!(e.from[0].host, NString(Some(istring("x.test"))));
    assert_eq!(e.to.len(), 2);
}

#[test]
fn address_edge_cases_follow_rfc3501() {
    let env = |h: &str| {
        let raw = crlf(&format!("{h}\nSubject: x\n\nbody\n"));
        wire(MessageDataItem::Envelope(envelope(&raw)))
    };
    // A group whose list is only a comment: its two markers and nothing between.
    assert!(
        env("To: undisclosed-recipients: (nobody);")
            .contains(" ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) "),
        "{}",
        env("To: undisclosed-recipients: (nobody);")
    );
    // An obsolete source route is the adl.
    let routed = env("From: Joe <@a.example,@b.example:joe@example.com>");
    assert!(
        routed.contains("((\"Joe\" \"@a.example,@b.example\" \"joe\" \"example.com\"))"),
        "{routed}"
    );
    // Comments inside an addr-spec are no part of it; a trailing one is the name.
    let commented = env("From: user (comment) @ example.com (Name)");
    assert!(
        commented.contains("((\"Name\" NIL \"user\" \"example.com\"))"),
        "{commented}"
    );
    let angled = env("From: \"Name\" <user(c)@(d)example.com>");
    assert!(
        angled.contains("((\"Name\" NIL \"user\" \"example.com\"))"),
        "{angled}"
    );
    // Quoted strings keep their parentheses.
    let quoted = env("From: \"A (not a comment)\" <a@example.com>");
    assert!(quoted.contains("\"A (not a comment)\""), "{quoted}");
    assert_eq!(
        address_texts(b"user (c) @ example.com (Name), <@r.example:x@y.example>"),
        vec!["Name user@example.com", " x@y.example"]
    );
}

/// What a FETCH can answer before a message's blobs are downloaded: everything whose
/// bytes lie outside their places (the holes), and the structure of a message whose holes
/// are in opaque parts; never a section, partial or decoded part that reaches into one,
/// nor the line count of a text part or the structure of a message that is one.
#[test]
fn items_that_read_a_missing_blob_are_told_apart() {
    let raw = crlf(
        "From: a@x.test\nSubject: holes\nContent-Type: multipart/mixed; boundary=b\n\n\
         --b\nContent-Type: text/plain\n\nsee attached\n\
         --b\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\nAAAAAAAA\nAAAA\n\
         --b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nAAAA\n\
         --b--\n",
    );
    let find = |needle: &[u8], after: usize| {
        after
            + raw[after..]
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
    };
    let pdf_at = find(b"AAAAAAAA", 0);
    let pdf = pdf_at..pdf_at + "AAAAAAAA\r\nAAAA".len();
    let text_at = find(b"AAAA\r\n--b--", pdf.end);
    let text = text_at..text_at + 4;
    let body = |section: Option<Section<'static>>, partial| MessageDataItemName::BodyExt {
        section,
        partial,
        peek: true,
    };
    let reads =
        |item: &MessageDataItemName<'_>, holes: &[Range<usize>]| reads_holes(&raw, item, holes);
    let pdf_only = std::slice::from_ref(&pdf);
    for (item, expected) in [
        (MessageDataItemName::Rfc822Size, false),
        (MessageDataItemName::Envelope, false),
        (MessageDataItemName::Rfc822Header, false),
        (MessageDataItemName::BodyStructure, false),
        (MessageDataItemName::Body, false),
        (body(Some(Section::Header(None)), None), false),
        (body(Some(Section::Part(part(&[1]))), None), false),
        (body(Some(Section::Mime(part(&[2]))), None), false),
        (body(Some(Section::Part(part(&[3]))), None), false),
        (body(None, Some((0, NonZeroU32::new(40).unwrap()))), false),
        (
            MessageDataItemName::Binary {
                section: vec![NonZeroU32::MIN],
                partial: None,
                peek: true,
            },
            false,
        ),
        (body(Some(Section::Part(part(&[2]))), None), true),
        (
            body(
                Some(Section::Part(part(&[2]))),
                Some((4, NonZeroU32::new(2).unwrap())),
            ),
            true,
        ),
        (body(None, None), true),
        (body(Some(Section::Text(None)), None), true),
        (MessageDataItemName::Rfc822, true),
        (MessageDataItemName::Rfc822Text, true),
        (
            MessageDataItemName::BinarySize {
                section: vec![NonZeroU32::new(2).unwrap()],
            },
            true,
        ),
        // A part that does not exist may once the holes are filled in.
        (body(Some(Section::Part(part(&[7]))), None), true),
    ] {
        assert_eq!(reads(&item, pdf_only), expected, "{item:?}");
    }
    // A partial that ends before the hole does not reach it.
    let before = u32::try_from(pdf.start - 1).unwrap();
    assert!(!reads(
        &body(None, Some((0, NonZeroU32::new(before).unwrap()))),
        pdf_only
    ));
    assert!(reads(
        &body(None, Some((before, NonZeroU32::new(2).unwrap()))),
        pdf_only
    ));
    // A text part's line count is in BODYSTRUCTURE: not before it is there.
    let both = [pdf.clone(), text];
    assert!(reads(&MessageDataItemName::BodyStructure, &both));
    assert!(reads(&MessageDataItemName::Body, &both));
    assert!(!reads(&body(Some(Section::Part(part(&[1]))), None), &both));
    // Nothing missing: nothing to wait for.
    assert!(!reads(&body(None, None), &[]));
}
