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

// --- Submission mode (RFC 6409 with RFC 4954 AUTH PLAIN/LOGIN) ---

const USER: &str = "bob@x.test";
const PASS: &str = "s3cret";

/// The one login these tests accept.
#[derive(Debug)]
struct Login;

impl CheckLogin for Login {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        username.eq_ignore_ascii_case(USER.as_bytes()) && password == PASS.as_bytes()
    }
}

fn submission_with(limits: Limits) -> Session {
    Session::new(
        SessionConfig {
            hostname: "localhost".into(),
            domain: "x.test".into(),
            limits,
            tls_available: true,
            auth: Some(Arc::new(Login)),
        },
        "127.0.0.1".parse().unwrap(),
    )
}

fn submission() -> Session {
    submission_with(Limits::default())
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// An RFC 4616 PLAIN response: `authzid NUL authcid NUL passwd`, base64.
fn plain(authz: &str, user: &str, pass: &str) -> String {
    b64(&format!("{authz}\0{user}\0{pass}"))
}

/// A submission session that has said EHLO.
fn greeted() -> Session {
    let mut s = submission();
    let (r, _, _) = drive(&mut s, b"EHLO c.test\r\n");
    assert_eq!(codes(&r), vec![250]);
    s
}

fn line(s: &str) -> Vec<u8> {
    format!("{s}\r\n").into_bytes()
}

fn assert_reply(r: &Reply, code: u16, enhanced: &str) {
    assert_eq!((r.code, r.enhanced), (code, enhanced), "{r:?}");
}

/// MAIL FROM answers 250 only once the session is authenticated.
fn can_send(s: &mut Session) -> bool {
    let (r, _, _) = drive(s, b"MAIL FROM:<bob@x.test>\r\n");
    let ok = r.len() == 1 && r[0].code == 250;
    if ok {
        drive(s, b"RSET\r\n");
    }
    ok
}

#[test]
fn ehlo_advertises_auth_only_in_submission_mode() {
    let ehlo = |mut s: Session| {
        let (r, _, _) = drive(&mut s, b"EHLO c.test\r\n");
        assert_eq!(codes(&r), vec![250]);
        String::from_utf8(r[0].to_bytes()).unwrap()
    };
    let mx = ehlo(session(1000));
    assert!(!mx.contains("AUTH"), "{mx}");
    let sub = ehlo(submission());
    assert!(sub.contains("\r\n250 AUTH PLAIN LOGIN\r\n"), "{sub}");
    assert!(sub.contains("250-STARTTLS\r\n"), "{sub}");
}

#[test]
fn auth_on_the_public_mx_is_not_offered() {
    let mut s = session(1000);
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nAUTH LOGIN\r\nMAIL FROM:<a@s.test>\r\n",
        plain("", USER, PASS)
    );
    let (r, _, _) = drive(&mut s, input.as_bytes());
    assert_eq!(codes(&r), vec![250, 502, 502, 250]);
    assert_reply(&r[1], 502, "5.5.1");
    // No 334 prompt: the line after AUTH LOGIN was read as a command.
    assert!(!s.authenticated);
}

#[test]
fn mail_before_auth_is_refused_in_submission_mode() {
    let mut s = greeted();
    let (r, m, _) = drive(
        &mut s,
        b"MAIL FROM:<bob@x.test>\r\nRCPT TO:<carol@x.test>\r\nDATA\r\n",
    );
    assert_eq!(codes(&r), vec![530, 503, 503]);
    assert_reply(&r[0], 530, "5.7.0");
    assert!(m.is_empty());
    // EHLO still comes first.
    let mut s = submission();
    let (r, _, _) = drive(&mut s, b"MAIL FROM:<bob@x.test>\r\n");
    assert_eq!(codes(&r), vec![503]);
}

#[test]
fn auth_plain_with_initial_response_and_the_right_password_allows_mail() {
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);
    assert_reply(&r[0], 235, "2.7.0");
    // The username is compared without regard to ASCII case.
    let mut s2 = greeted();
    let (r, _, _) = drive(
        &mut s2,
        &line(&format!("AUTH PLAIN {}", plain("", "BOB@X.test", PASS))),
    );
    assert_eq!(codes(&r), vec![235]);

    // MAIL and RCPT proceed as on the MX: RCPT asks the driver about the recipient.
    let (r, _, _) = drive(&mut s, b"MAIL FROM:<bob@x.test>\r\n");
    assert_eq!(codes(&r), vec![250]);
    let events = s.feed(b"RCPT TO:<carol@x.test>\r\n");
    let [Event::CheckRecipient(a)] = &events[..] else {
        panic!("expected a recipient check, got {events:?}");
    };
    assert_eq!(a.to_string(), "carol@x.test");
    let reply = s.recipient_checked(a.clone(), Ok(()));
    assert_eq!(reply.code, 250);
    let (r, m, _) = drive(&mut s, b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(codes(&r), vec![354, 250]);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].mail_from, "bob@x.test");
    assert_eq!(m[0].recipients[0].to_string(), "carol@x.test");
    assert_eq!(m[0].data, b"Subject: hi\r\n\r\nbody\r\n");
    // Authentication lasts for the session: a second transaction needs no new AUTH.
    assert!(can_send(&mut s));
}

#[test]
fn auth_plain_with_a_wrong_password_or_user_is_refused() {
    for (user, pass) in [
        (USER, "s3cre"),
        (USER, "s3cret!"),
        (USER, ""),
        ("eve@x.test", PASS),
        ("", PASS),
    ] {
        let mut s = greeted();
        let (r, _, _) = drive(
            &mut s,
            &line(&format!("AUTH PLAIN {}", plain("", user, pass))),
        );
        assert_eq!(codes(&r), vec![535], "{user:?} {pass:?}");
        assert_reply(&r[0], 535, "5.7.8");
        assert!(!r[0].text.contains(PASS), "the reply does not echo secrets");
        assert!(!can_send(&mut s), "{user:?} {pass:?}");
    }
}

#[test]
fn auth_plain_authzid_must_be_the_user() {
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain(USER, USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);
    assert!(can_send(&mut s));
    // Right password, but asking to act as someone else.
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("eve@x.test", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![535]);
    assert_reply(&r[0], 535, "5.7.8");
    assert!(!can_send(&mut s));
}

#[test]
fn auth_plain_without_initial_response_reads_the_next_line() {
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, b"AUTH PLAIN\r\n");
    assert_eq!(codes(&r), vec![334]);
    assert_eq!(r[0].to_bytes(), b"334 \r\n", "an empty challenge");
    let (r, _, _) = drive(&mut s, &line(&plain("", USER, PASS)));
    assert_eq!(codes(&r), vec![235]);
    assert!(can_send(&mut s));
    // A wrong password on the continuation line is refused the same way.
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN\r\n{}", plain("", USER, "no"))),
    );
    assert_eq!(codes(&r), vec![334, 535]);
    assert!(!can_send(&mut s));
}

#[test]
fn auth_plain_continuation_is_not_read_as_a_command() {
    // A response that happens to look like a command is still the AUTH response.
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, b"AUTH PLAIN\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(codes(&r), vec![334, 501, 250]);
    assert!(!s.authenticated);
}

#[test]
fn auth_login_prompts_for_username_then_password() {
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, b"AUTH LOGIN\r\n");
    assert_eq!(codes(&r), vec![334]);
    assert_eq!(
        r[0].to_bytes(),
        b"334 VXNlcm5hbWU6\r\n",
        "base64 \"Username:\""
    );
    let (r, _, _) = drive(&mut s, &line(&b64(USER)));
    assert_eq!(codes(&r), vec![334]);
    assert_eq!(
        r[0].to_bytes(),
        b"334 UGFzc3dvcmQ6\r\n",
        "base64 \"Password:\""
    );
    assert!(!s.authenticated, "not before the password");
    let (r, _, _) = drive(&mut s, &line(&b64(PASS)));
    assert_eq!(codes(&r), vec![235]);
    assert_reply(&r[0], 235, "2.7.0");
    assert!(can_send(&mut s));

    // With the username as the initial response, only the password is asked for.
    let mut s = greeted();
    let input = format!("AUTH LOGIN {}\r\n{}\r\n", b64(USER), b64(PASS));
    let (r, _, _) = drive(&mut s, input.as_bytes());
    assert_eq!(codes(&r), vec![334, 235]);
    assert_eq!(r[0].text, b64("Password:"));

    // A wrong password after a right username.
    let mut s = greeted();
    let input = format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64(USER), b64("wrong"));
    let (r, _, _) = drive(&mut s, input.as_bytes());
    assert_eq!(codes(&r), vec![334, 334, 535]);
    assert_reply(&r[2], 535, "5.7.8");
    assert!(!can_send(&mut s));
}

#[test]
fn a_star_cancels_the_auth_exchange() {
    // At the PLAIN prompt, the LOGIN username prompt and the LOGIN password prompt.
    for input in [
        "AUTH PLAIN\r\n*\r\n".to_string(),
        "AUTH LOGIN\r\n*\r\n".to_string(),
        format!("AUTH LOGIN\r\n{}\r\n*\r\n", b64(USER)),
    ] {
        let mut s = greeted();
        let (r, _, _) = drive(&mut s, input.as_bytes());
        assert_eq!(r.last().unwrap().code, 501, "{input:?}");
        assert_reply(r.last().unwrap(), 501, "5.0.0");
        assert!(r[..r.len() - 1].iter().all(|r| r.code == 334), "{input:?}");
        // Back to commands, not authenticated, and AUTH may be tried again.
        let (r, _, _) = drive(&mut s, b"NOOP\r\n");
        assert_eq!(codes(&r), vec![250], "{input:?}");
        assert!(!can_send(&mut s));
        let (r, _, _) = drive(
            &mut s,
            &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
        );
        assert_eq!(codes(&r), vec![235], "{input:?}");
    }
}

#[test]
fn invalid_base64_in_auth_is_a_syntax_error() {
    for input in [
        "AUTH PLAIN !!!notbase64\r\n".to_string(),
        "AUTH PLAIN\r\nnot base64 at all\r\n".to_string(),
        "AUTH LOGIN\r\n%%%\r\n".to_string(),
        format!("AUTH LOGIN\r\n{}\r\nYWJj*\r\n", b64(USER)),
    ] {
        let mut s = greeted();
        let (r, _, _) = drive(&mut s, input.as_bytes());
        assert_eq!(r.last().unwrap().code, 501, "{input:?}: {r:?}");
        assert_reply(r.last().unwrap(), 501, "5.5.2");
        assert!(!s.authenticated);
        let (r, _, _) = drive(&mut s, b"NOOP\r\n");
        assert_eq!(codes(&r), vec![250], "back to commands after {input:?}");
    }
}

#[test]
fn malformed_plain_responses_are_refused() {
    for response in [
        // "=" is the empty response: no NULs at all.
        "=".to_string(),
        b64("bob@x.test s3cret"),
        b64(&format!("{USER}\0{PASS}")),
        b64(&format!("\0{USER}\0{PASS}\0")),
    ] {
        let mut s = greeted();
        let (r, _, _) = drive(&mut s, &line(&format!("AUTH PLAIN {response}")));
        assert_eq!(codes(&r), vec![501], "{response:?}");
        assert_reply(&r[0], 501, "5.5.2");
        assert!(!can_send(&mut s));
    }
    // "=" as the LOGIN username is an empty username, which then fails.
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, &line(&format!("AUTH LOGIN =\r\n{}", b64(PASS))));
    assert_eq!(codes(&r), vec![334, 535]);
}

#[test]
fn unknown_auth_mechanism_is_504() {
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, b"AUTH CRAM-MD5\r\nAUTH XOAUTH2 abc\r\n");
    assert_eq!(codes(&r), vec![504, 504]);
    assert_reply(&r[0], 504, "5.5.4");
    assert!(!s.authenticated);
    // A name smtp-proto does not know is unsupported too; no mechanism at all is syntax.
    let (r, _, _) = drive(&mut s, b"AUTH NOSUCHMECH\r\nAUTH\r\nNOOP\r\n");
    assert_eq!(codes(&r), vec![504, 501, 250]);
}

#[test]
fn a_second_auth_after_success_is_refused() {
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);
    // Neither PLAIN nor LOGIN prompts again; a right or wrong password changes nothing.
    let input = format!(
        "AUTH PLAIN {}\r\nAUTH LOGIN\r\nAUTH PLAIN {}\r\nMAIL FROM:<bob@x.test>\r\n",
        plain("", USER, PASS),
        plain("", USER, "wrong"),
    );
    let (r, _, _) = drive(&mut s, input.as_bytes());
    assert_eq!(codes(&r), vec![503, 503, 503, 250]);
    assert_reply(&r[0], 503, "5.5.1");
    // Inside a transaction, too.
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![503]);
}

#[test]
fn pipelined_auth_plain_and_mail_from_in_one_feed() {
    let mut s = submission();
    let input = format!(
        "EHLO c.test\r\nAUTH PLAIN {}\r\nMAIL FROM:<bob@x.test>\r\nRCPT TO:<carol@x.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        plain("", USER, PASS)
    );
    let (r, m, closed) = drive(&mut s, input.as_bytes());
    assert_eq!(codes(&r), vec![250, 235, 250, 250, 354, 250, 221]);
    assert!(closed);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].data, b"Subject: hi\r\n\r\nbody\r\n");
    // The same pipeline with a wrong password sends nothing.
    let mut s = submission();
    let input = input.replace(&plain("", USER, PASS), &plain("", USER, "wrong"));
    let (r, m, _) = drive(&mut s, input.as_bytes());
    assert_eq!(
        codes(&r),
        vec![250, 535, 530, 503, 503, 500, 500, 500, 500, 221]
    );
    assert!(m.is_empty());
}

#[test]
fn wrong_passwords_count_towards_the_error_limit() {
    let wrong = line(&format!("AUTH PLAIN {}", plain("", USER, "guess")));
    // Three failures are three errors; under the default limit the session goes on and
    // the right password still works.
    let mut s = greeted();
    for _ in 0..3 {
        let (r, _, closed) = drive(&mut s, &wrong);
        assert_eq!(codes(&r), vec![535]);
        assert!(!closed);
    }
    assert_eq!(s.errors, 3);
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);

    // Past `max_errors` the session closes after the reply that crossed it.
    let mut s = submission_with(Limits {
        max_errors: 2,
        ..Limits::default()
    });
    let (r, _, _) = drive(&mut s, b"EHLO c.test\r\n");
    assert_eq!(codes(&r), vec![250]);
    for _ in 0..2 {
        let (r, _, closed) = drive(&mut s, &wrong);
        assert_eq!(codes(&r), vec![535]);
        assert!(!closed);
    }
    let (r, _, closed) = drive(&mut s, &wrong);
    assert_eq!(codes(&r), vec![535, 421]);
    assert_reply(&r[1], 421, "4.7.0");
    assert!(closed);
    // Nothing more is read, not even the right password.
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert!(r.is_empty());
    assert!(!s.authenticated);

    // Cancelled and undecodable exchanges count too.
    let mut s = submission_with(Limits {
        max_errors: 2,
        ..Limits::default()
    });
    let (r, _, closed) = drive(
        &mut s,
        b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n!!\r\nAUTH PLAIN\r\n*\r\n",
    );
    assert_eq!(codes(&r), vec![250, 334, 501, 334, 501, 334, 501, 421]);
    assert!(closed);
}

#[test]
fn an_overlong_auth_response_line_is_refused() {
    let mut s = greeted();
    let (r, _, _) = drive(&mut s, b"AUTH PLAIN\r\n");
    assert_eq!(codes(&r), vec![334]);
    let (r, _, _) = drive(&mut s, &vec![b'A'; Limits::default().max_line + 1]);
    assert_eq!(codes(&r), vec![500]);
    assert_reply(&r[0], 500, "5.5.6");
    assert!(s.pending.is_empty());
    // The rest of that line is discarded; the exchange is over.
    let (r, _, _) = drive(&mut s, b"AAAA\r\nNOOP\r\n");
    assert_eq!(codes(&r), vec![250]);
    assert!(!s.authenticated);
}

#[test]
fn starttls_forgets_authentication() {
    // RFC 3207 §4.2: after the handshake the server discards what the client told it.
    let mut s = greeted();
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);
    let events = s.feed(b"STARTTLS\r\n");
    assert!(matches!(events.last(), Some(Event::StartTls)));
    s.tls_started();
    let (r, _, _) = drive(&mut s, b"EHLO c.test\r\nMAIL FROM:<bob@x.test>\r\n");
    assert_eq!(codes(&r), vec![250, 530]);
    // Logging in again over TLS works.
    let (r, _, _) = drive(
        &mut s,
        &line(&format!("AUTH PLAIN {}", plain("", USER, PASS))),
    );
    assert_eq!(codes(&r), vec![235]);
    assert!(can_send(&mut s));
}
