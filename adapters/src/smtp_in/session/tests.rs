//! Protocol-core tests: sequencing, limits and the end-of-data smuggling variants.

use super::*;

fn session(max_message: usize) -> Session {
    Session::new(
        SessionConfig {
            hostname: "mx.x.test".into(),
            domain: "x.test".into(),
            limits: Limits {
                max_message,
                ..Limits::default()
            },
            tls_available: true,
            auth: None,
        },
        "127.0.0.1".parse().unwrap(),
    )
}

/// Feeds input and answers recipient checks with "exists"; returns replies and messages.
fn drive(s: &mut Session, input: &[u8]) -> (Vec<Reply>, Vec<Transaction>, bool) {
    let mut replies = Vec::new();
    let mut msgs = Vec::new();
    let mut closed = false;
    let mut events = s.feed(input);
    loop {
        let mut more = false;
        for ev in events {
            match ev {
                Event::Reply(r) => replies.push(r),
                Event::CheckRecipient(a) => {
                    replies.push(s.recipient_checked(a, Ok(())));
                    more = true;
                }
                Event::Message(tx) => {
                    msgs.push(tx);
                    replies.push(s.message_done(Reply::new(250, "2.0.0", "queued")));
                    more = true;
                }
                Event::StartTls => {}
                Event::Close => closed = true,
            }
        }
        if !more {
            break;
        }
        events = s.resume();
    }
    (replies, msgs, closed)
}

fn codes(r: &[Reply]) -> Vec<u16> {
    r.iter().map(|r| r.code).collect()
}

const HEAD: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n";

#[test]
fn a_pipelined_transaction() {
    let mut s = session(1000);
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
    let (r, m, closed) = drive(&mut s, &input);
    assert_eq!(codes(&r), vec![250, 250, 250, 354, 250, 221]);
    assert!(closed);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].data, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert!(
        String::from_utf8(r[0].to_bytes())
            .unwrap()
            .contains("250-PIPELINING\r\n")
    );
}

#[test]
fn smtp_smuggling_bare_lf_end_of_data_does_not_split_the_message() {
    for smuggle in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r.\r"] {
        let mut s = session(10_000);
        let mut input = HEAD.to_vec();
        input.extend_from_slice(b"Subject: one\r\n\r\nfirst");
        input.extend_from_slice(smuggle);
        input.extend_from_slice(b"MAIL FROM:<evil@s.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n.\r\n");
        let (r, m, _) = drive(&mut s, &input);
        // One transaction only, refused for its bare line endings; no second message.
        assert!(m.is_empty(), "{smuggle:?} produced a message");
        assert_eq!(codes(&r), vec![250, 250, 250, 354, 554], "{smuggle:?}");
    }
}

#[test]
fn dot_stuffing_edge_cases() {
    let mut s = session(10_000);
    let mut input = HEAD.to_vec();
    // A line of two dots is one dot; ". " is data; ".\r\n" only ends it after CRLF.
    input.extend_from_slice(b"..\r\n. x\r\n...\r\n.\r\n");
    let (r, m, _) = drive(&mut s, &input);
    assert_eq!(codes(&r), vec![250, 250, 250, 354, 250]);
    assert_eq!(m[0].data, b".\r\n x\r\n..\r\n");
    // An empty message.
    let mut s = session(10_000);
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b".\r\n");
    let (_, m, _) = drive(&mut s, &input);
    assert_eq!(m[0].data, b"");
}

#[test]
fn one_byte_over_the_size_limit() {
    let body = |n: usize| {
        let mut v = HEAD.to_vec();
        v.extend_from_slice(&b"x".repeat(n - 2));
        v.extend_from_slice(b"\r\n.\r\n");
        v
    };
    let mut s = session(100);
    let (r, m, _) = drive(&mut s, &body(100));
    assert_eq!((codes(&r).last().copied(), m.len()), (Some(250), 1));
    let mut s = session(100);
    let (r, m, _) = drive(&mut s, &body(101));
    assert_eq!(r.last().unwrap().code, 552);
    assert_eq!(r.last().unwrap().enhanced, "5.3.4");
    assert!(m.is_empty());
    // SIZE declared up front.
    let mut s = session(100);
    let (r, _, _) = drive(&mut s, b"EHLO c\r\nMAIL FROM:<a@s.test> SIZE=101\r\n");
    assert_eq!(codes(&r), vec![250, 552]);
}

#[test]
fn a_one_mib_line_without_crlf_is_bounded() {
    let mut s = session(1000);
    let (r, _, _) = drive(&mut s, &vec![b'A'; 1 << 20]);
    assert_eq!(codes(&r), vec![500]);
    assert!(s.pending.capacity() < 2 << 20);
    assert!(s.pending.is_empty());
    // The rest of the line is discarded; the next line works.
    let (r, _, _) = drive(&mut s, b"AAAA\r\nNOOP\r\n");
    assert_eq!(codes(&r), vec![250]);
}

#[test]
fn ten_thousand_pipelined_commands() {
    let mut s = session(1000);
    let input = b"NOOP\r\n".repeat(10_000);
    let (r, _, closed) = drive(&mut s, &input);
    assert!(closed);
    assert_eq!(r.len(), Limits::default().max_junk_commands + 1);
    assert_eq!(r.last().unwrap().code, 421);
    // Transactions are not junk: 10,000 RCPTs are bounded by the recipient limit.
    let mut s = session(1000);
    let mut input = b"EHLO c\r\nMAIL FROM:<a@s.test>\r\n".to_vec();
    for i in 0..10_000 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@x.test>\r\n").as_bytes());
    }
    let (r, _, closed) = drive(&mut s, &input);
    assert!(closed, "closes once the command limit is reached");
    assert_eq!(
        r.iter().filter(|r| r.code == 250).count(),
        2 + Limits::default().max_recipients
    );
    assert!(r.iter().any(|r| r.code == 452));
}

#[test]
fn sequencing_and_relay() {
    let mut s = session(1000);
    let (r, _, _) = drive(
        &mut s,
        b"MAIL FROM:<a@s.test>\r\nEHLO c\r\nRCPT TO:<b@x.test>\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@other.test>\r\nRCPT TO:<not an address>\r\nDATA\r\nVRFY bob\r\nRSET\r\n",
    );
    assert_eq!(codes(&r), vec![503, 250, 503, 250, 550, 501, 554, 252, 250]);
    assert_eq!(r[4].enhanced, "5.7.1");
}

#[test]
fn starttls_discards_pipelined_input() {
    let mut s = session(1000);
    let events = s.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@s.test>\r\n");
    assert!(matches!(events.last(), Some(Event::StartTls)));
    s.tls_started();
    let (r, _, _) = drive(&mut s, b"");
    assert!(r.is_empty(), "the injected command was not run: {r:?}");
    let (r, _, _) = drive(&mut s, b"MAIL FROM:<a@s.test>\r\n");
    assert_eq!(
        codes(&r),
        vec![503],
        "EHLO is required again after STARTTLS"
    );
}
