//! The notice an ordinary address gets in notice mode: who wrote, that the message waits
//! in letter.me, and how to get an address to read it. It is built from the sender and
//! the recipients alone — the server never had the message's subject or text.

use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes};

/// The RFC 5322 notice, or `None` when an address does not parse.
pub fn legacy_notice(
    sender: &str,
    recipients: &[String],
    domain: &str,
    signup_url: &str,
    now: u64,
    message_id: &str,
) -> Option<Vec<u8>> {
    let from: Mailbox = sender
        .parse::<lettre::Address>()
        .ok()
        .map(|a| Mailbox::new(None, a))?;
    let mut to = Mailboxes::new();
    for r in recipients {
        to.push(Mailbox::new(None, r.parse::<lettre::Address>().ok()?));
    }
    let body = format!(
        "{sender} wrote you a message on letter.me, an end-to-end encrypted mail system.\n\
         \n\
         The message waits in letter.me, where only its recipients can read it, so it is\n\
         not part of this email: neither its subject nor its text.\n\
         \n\
         To read it, get a letter.me address (see {signup_url}) and tell {sender}\n\
         your new address, or reply to this email to ask {sender} to reach you another way.\n\
         \n\
         -- \n\
         Sent by the letter.me server of {domain} on behalf of {sender}.\n"
    );
    lettre::Message::builder()
        .from(from)
        .mailbox(lettre::message::header::To::from(to))
        .subject(format!("{sender} sent you a message on letter.me"))
        .date(UNIX_EPOCH + Duration::from_secs(now))
        .message_id(Some(message_id.to_owned()))
        .header(lettre::message::header::MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        // RFC 3834 §5: written by a program, so auto-responders stay quiet.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .body(body)
        .ok()
        .map(|m| m.formatted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_names_the_sender_and_carries_no_content() {
        let n = legacy_notice(
            "alice@a.test",
            &["carol@legacy.test".into()],
            "a.test",
            "https://a.test/",
            1_700_000_000,
            "<n1@a.test>",
        )
        .unwrap();
        let text = String::from_utf8(n).unwrap();
        assert!(text.contains("From: alice@a.test"), "{text}");
        assert!(text.contains("To: carol@legacy.test"), "{text}");
        assert!(text.contains("Auto-Submitted: auto-generated"), "{text}");
        assert!(text.contains("https://a.test/"), "{text}");
        assert!(legacy_notice("not an address", &[], "a.test", "u", 0, "<x@a.test>").is_none());
    }
}
