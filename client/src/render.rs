//! Turning an opened envelope into the RFC 5322 message a mail client reads.
//!
//! Legacy mail is served byte for byte as the gateway sealed it (with its
//! Authentication-Results). Native mail gets its header fields from lettre, so header
//! encoding (RFC 2047) and transfer encoding are not hand-written here; its body is the
//! MIME entity the sender's mail client wrote (payload version 2, [`crate::mime`]), or a
//! text/plain UTF-8 body (version 1).
//! Sender-controlled strings are cleaned before they reach a header, so a hostile subject
//! cannot inject header fields.

use std::time::{Duration, UNIX_EPOCH};

use letterme_protocol::{Address, IdentityPublicKey, Payload};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox as LettreMailbox, Mailboxes};

use letterme_protocol::envelope::VERIFIED_HEADER;

use crate::cache::Piece;
use crate::mime;

/// The message as served over IMAP.
pub fn render(payload: &Payload, signer: &IdentityPublicKey, me: &Address) -> Vec<u8> {
    if let Some(l) = &payload.legacy {
        return l.raw.clone();
    }
    native(payload, signer, me).unwrap_or_else(|| fallback(payload, signer))
}

fn mailbox(a: &Address) -> Option<LettreMailbox> {
    a.as_str()
        .parse::<lettre::Address>()
        .ok()
        .map(|a| LettreMailbox::new(None, a))
}

fn mailboxes(list: &[Address]) -> Option<Mailboxes> {
    let mut out = Mailboxes::new();
    for a in list {
        out.push(mailbox(a)?);
    }
    Some(out)
}

/// One line of printable text: control characters (CR, LF, ...) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A msg-id (RFC 5322 §3.6.4) as sent, or `None` when it is not a plain `<...>` token.
pub fn clean_msg_id(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = s.len() <= 998
        && s.starts_with('<')
        && s.ends_with('>')
        && s.len() > 2
        && s[1..s.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    ok.then(|| s.to_owned())
}

fn verified_value(payload: &Payload, signer: &IdentityPublicKey) -> String {
    format!(
        "pass; signer={}; identity-key={}",
        payload.from,
        signer.to_base64()
    )
}

fn native(payload: &Payload, signer: &IdentityPublicKey, me: &Address) -> Option<Vec<u8>> {
    build(payload, Some(signer), me)
}

/// Why a payload that names blobs cannot be filed without their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    /// Its entity does not name each blob exactly once ([`mime::placements`]): never what
    /// a client writes, and a repeated blob could multiply a large one without end.
    #[error("the message does not place each of its attachment blobs exactly once")]
    NotExactlyOnce,
    /// The message as rendered would not carry the entity's body as it is (legacy mail, a
    /// payload that cannot be rendered), so no blob has a place in it.
    #[error("the message's attachment blobs have no place in it as rendered")]
    NoPlace,
}

/// [`render`] for a payload whose entity names blobs (the entity [`mime::detach`] wrote):
/// the message without their bytes, and where each blob's bytes go in it.
pub fn render_pieces(
    payload: &Payload,
    signer: &IdentityPublicKey,
    me: &Address,
) -> Result<(Vec<u8>, Vec<Piece>), Unplaced> {
    let detached = payload.mime.as_deref().ok_or(Unplaced::NotExactlyOnce)?;
    let (entity, places, exact) = mime::placements(detached, payload.blobs.len());
    if !exact {
        return Err(Unplaced::NotExactlyOnce);
    }
    if payload.legacy.is_some() {
        return Err(Unplaced::NoPlace);
    }
    let rest = Payload {
        mime: Some(entity),
        ..payload.clone()
    };
    let entity = rest.mime.as_deref().unwrap_or_default();
    let raw = native(&rest, signer, me).ok_or(Unplaced::NoPlace)?;
    let (_, body) = mime::split_entity(entity);
    if !raw.ends_with(body) {
        return Err(Unplaced::NoPlace);
    }
    // The entity's body ends the message: an offset in it moves by the difference.
    let body_at = entity.len() - body.len();
    let shift = raw.len() - body.len();
    let pieces = places
        .iter()
        .map(|&(at, n)| {
            Some(Piece {
                at: at.checked_sub(body_at)? + shift,
                blob: payload.blobs.get(n)?.clone(),
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(Unplaced::NoPlace)?;
    Ok((raw, pieces))
}

/// The copy of a message that leaves as ordinary email (outbound relay): the same headers
/// and body, without Bcc and without the letter.me signature field.
pub fn outgoing(payload: &Payload) -> Option<Vec<u8>> {
    build(payload, None, &payload.from)
}

fn build(
    payload: &Payload,
    signer: Option<&IdentityPublicKey>,
    envelope_rcpt: &Address,
) -> Option<Vec<u8>> {
    let mut b = lettre::Message::builder()
        .from(mailbox(&payload.from)?)
        .subject(one_line(&payload.subject))
        .date(UNIX_EPOCH + Duration::from_secs(payload.date))
        .message_id(clean_msg_id(&payload.message_id))
        .header(lettre::message::header::MIME_VERSION_1_0);
    if let Some(signer) = signer {
        b = b.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(VERIFIED_HEADER),
            verified_value(payload, signer),
        ));
    }
    if !payload.to.is_empty() {
        b = b.mailbox(lettre::message::header::To::from(mailboxes(&payload.to)?));
    }
    if !payload.cc.is_empty() {
        b = b.mailbox(lettre::message::header::Cc::from(mailboxes(&payload.cc)?));
    }
    if let Some(r) = payload.in_reply_to.as_deref().and_then(clean_msg_id) {
        b = b.in_reply_to(r);
    }
    let refs: Vec<String> = payload
        .references
        .iter()
        .filter_map(|r| clean_msg_id(r))
        .collect();
    if !refs.is_empty() {
        b = b.references(refs.join(" "));
    }
    let envelope = lettre::address::Envelope::new(
        Some(payload.from.as_str().parse().ok()?),
        vec![envelope_rcpt.as_str().parse().ok()?],
    )
    .ok()?;
    let b = b.envelope(envelope);
    let Some(entity) = &payload.mime else {
        let m = b
            .header(ContentType::TEXT_PLAIN)
            .body(payload.body.clone())
            .ok()?;
        return Some(m.formatted());
    };
    // Payload version 2: letter.me's own fields above, then the entity's `Content-*` fields
    // and its body as the sender's mail client wrote them.
    let mut headers = b.body(Vec::new()).ok()?.headers().clone();
    headers.remove::<ContentType>();
    headers.remove::<ContentTransferEncoding>();
    let (fields, body) = mime::split_entity(entity);
    let mut out = headers.to_string().into_bytes();
    out.extend_from_slice(&fields);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some(out)
}

/// Never expected (every field is cleaned above), but a message is never dropped for it.
fn fallback(payload: &Payload, signer: &IdentityPublicKey) -> Vec<u8> {
    format!(
        "From: <{}>\r\nSubject: (unrenderable letter.me message)\r\n{VERIFIED_HEADER}: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}",
        payload.from,
        verified_value(payload, signer),
        payload.body.replace('\r', "").replace('\n', "\r\n")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use letterme_protocol::SigningKeypair;

    fn payload() -> Payload {
        Payload {
            from: Address::parse("alice@example.com").unwrap(),
            to: vec![Address::parse("bob@example.com").unwrap()],
            cc: vec![Address::parse("carol@example.com").unwrap()],
            bcc: vec![],
            subject: "Grüße\r\nBcc: evil@example.org".into(),
            body: "Hallo Bob,\nwie geht's?\n".into(),
            headers: vec![],
            date: 1_700_000_000,
            message_id: "<m1@example.com>".into(),
            in_reply_to: Some("<m0@example.com>".into()),
            references: vec!["<m-1@example.com>".into(), "<m0@example.com>".into()],
            legacy: None,
            mime: None,
            blobs: vec![],
            state: vec![],
        }
    }

    #[test]
    fn native_message_renders_as_rfc5322_with_threading_headers() {
        let key = SigningKeypair::generate().public();
        let me = Address::parse("bob@example.com").unwrap();
        let raw = render(&payload(), &key, &me);
        let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert!(
            m.subject().unwrap().starts_with("Grüße"),
            "{:?}",
            m.subject()
        );
        assert!(
            m.header("Bcc").is_none(),
            "header injection through the subject"
        );
        assert_eq!(m.message_id(), Some("m1@example.com"));
        assert_eq!(m.in_reply_to().as_text(), Some("m0@example.com"));
        assert_eq!(m.references().as_text_list().unwrap().len(), 2);
        assert_eq!(
            m.cc().unwrap().first().unwrap().address(),
            Some("carol@example.com")
        );
        assert_eq!(
            m.body_text(0).unwrap().replace("\r\n", "\n"),
            "Hallo Bob,\nwie geht's?\n"
        );
        let v = m.header_raw(VERIFIED_HEADER).unwrap();
        assert!(v.contains("pass; signer=alice@example.com"), "{v}");
        assert_eq!(m.date().unwrap().to_timestamp(), 1_700_000_000);
        assert!(m.header("MIME-Version").is_some());
    }

    /// Payload version 2: letter.me's own header fields, then the entity byte for byte; a
    /// From or Subject inside the entity is not served.
    #[test]
    fn a_mime_payload_renders_its_entity_under_the_verified_fields() {
        let key = SigningKeypair::generate().public();
        let me = Address::parse("bob@example.com").unwrap();
        let body = "--b\r\nContent-Type: text/html\r\n\r\n<p>Hallo</p>\r\n--b--\r\n";
        let entity = format!(
            "From: ceo@example.com\r\nSubject: forged\r\n\
             Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n{body}"
        );
        let p = Payload {
            mime: Some(entity.into_bytes()),
            blobs: vec![],
            ..payload()
        };
        let raw = render(&p, &key, &me);
        let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(
            m.from().unwrap().first().unwrap().address(),
            Some("alice@example.com")
        );
        assert!(m.subject().unwrap().starts_with("Grüße"));
        assert_eq!(m.header_values("From").count(), 1);
        assert_eq!(m.header_values("Subject").count(), 1);
        assert_eq!(m.header_values("Content-Type").count(), 1);
        assert!(m.header("Content-Transfer-Encoding").is_none());
        assert_eq!(m.body_html(0).unwrap(), "<p>Hallo</p>");
        assert!(raw.ends_with(body.as_bytes()));
        assert!(m.header_raw(VERIFIED_HEADER).is_some());
    }

    #[test]
    fn hostile_message_ids_are_dropped() {
        assert_eq!(clean_msg_id("<a@b>"), Some("<a@b>".into()));
        assert_eq!(clean_msg_id("<a@b>\r\nBcc: x"), None);
        assert_eq!(clean_msg_id("<a b@c>"), None);
        assert_eq!(clean_msg_id("<>"), None);
    }
}
