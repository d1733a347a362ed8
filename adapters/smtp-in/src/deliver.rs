//! Sealing accepted legacy mail: the raw message, with Authentication-Results prepended, is
//! sealed in memory to every recipient's current encryption key and signed with the domain
//! key; only the envelope reaches the store. Plaintext never touches disk.

use letterme_protocol::envelope::{LegacyMail, SignerKind, VERIFIED_HEADER, seal};
use letterme_protocol::verdict::{AuthResult, Disposition, DkimResults};
use letterme_protocol::{Address, EncryptionPublicKey, Payload, SigningKeypair};
use letterme_server::store::{NewDelivery, Store, StoreError};

/// An accepted message on its way to the store.
#[derive(Debug)]
pub struct Inbound {
    pub raw: Vec<u8>,
    pub mail_from: String,
    pub helo: String,
    pub client_ip: String,
    pub recipients: Vec<Address>,
    pub authentication_results: String,
    pub spf: AuthResult,
    pub dkim: DkimResults,
    pub dmarc: AuthResult,
    pub quarantine: bool,
    pub note: String,
    /// The session ran over TLS.
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    #[error("mailbox of {0} is full")]
    Quota(String),
    #[error("no such user {0}")]
    UnknownUser(String),
    #[error("storage failed: {0}")]
    Store(String),
    #[error("cannot seal: {0}")]
    Seal(String),
    #[error("the message is too large to seal")]
    TooLarge,
}

/// Seals `msg` to its recipients and commits it. Returns once durable.
pub async fn seal_and_store(
    store: &Store,
    domain: &str,
    hostname: &str,
    domain_key: &SigningKeypair,
    quota: u64,
    now: u64,
    msg: Inbound,
) -> Result<(), DeliverError> {
    // Each recipient's current devices, one key wrap each.
    let mut keys: Vec<(Address, EncryptionPublicKey)> = Vec::with_capacity(msg.recipients.len());
    for r in &msg.recipients {
        let devices = store
            .devices(r.to_string())
            .await
            .map_err(|e| DeliverError::Store(e.to_string()))?;
        if devices.is_empty() {
            return Err(DeliverError::UnknownUser(r.to_string()));
        }
        keys.extend(
            devices
                .iter()
                .map(|d| (r.clone(), EncryptionPublicKey(d.encryption_key))),
        );
    }
    let parsed = mail_parser::MessageParser::default().parse(&msg.raw);
    let subject = parsed
        .as_ref()
        .and_then(|m| m.subject())
        .unwrap_or_default()
        .to_owned();
    let body = parsed
        .as_ref()
        .and_then(|m| m.body_text(0))
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default();
    let message_id = parsed
        .as_ref()
        .and_then(|m| m.message_id())
        .map(|id| format!("<{id}>"))
        .unwrap_or_default();
    let date = parsed
        .as_ref()
        .and_then(|m| m.date())
        .map_or(now, |d| u64::try_from(d.to_timestamp()).unwrap_or(now));
    // The envelope's sender is the From address when it is a usable one, else the
    // gateway itself; the sealed raw message keeps the original either way.
    let gateway = Address::parse(&format!("mailer-daemon@{domain}"))
        .map_err(|e| DeliverError::Seal(e.to_string()))?;
    let sender = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| Address::parse(a).ok())
        .unwrap_or(gateway);
    let received = received_field(&msg.helo, &msg.client_ip, domain, msg.tls, now);
    let mut raw =
        Vec::with_capacity(received.len() + msg.authentication_results.len() + msg.raw.len() + 32);
    raw.extend_from_slice(received.as_bytes());
    raw.extend_from_slice(b"Authentication-Results: ");
    raw.extend_from_slice(msg.authentication_results.as_bytes());
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&strip_forged_fields(&msg.raw, domain, hostname));
    let payload = Payload {
        from: sender.clone(),
        to: vec![],
        cc: vec![],
        bcc: vec![],
        subject,
        body,
        headers: vec![],
        date,
        message_id,
        in_reply_to: None,
        references: vec![],
        mime: None,
        blobs: vec![],
        state: vec![],
        legacy: Some(LegacyMail {
            raw,
            mail_from: msg.mail_from,
            helo: msg.helo,
            client_ip: msg.client_ip,
            authentication_results: msg.authentication_results,
            spf: msg.spf,
            dkim: msg.dkim,
            dmarc: msg.dmarc,
            disposition: if msg.quarantine {
                Disposition::Quarantine
            } else {
                Disposition::Accept
            },
            note: msg.note,
        }),
    };
    // One envelope per recipient: the SMTP envelope does not say who was Bcc, so no local
    // recipient learns of another (DESIGN.md §5).
    let mut deliveries = Vec::with_capacity(keys.len());
    for (address, key) in &keys {
        let mut own = payload.clone();
        own.to = vec![address.clone()];
        let env = seal(
            SignerKind::Domain,
            domain_key,
            &own,
            &[(address.clone(), *key)],
            now,
        )
        .map_err(|e| match e {
            letterme_protocol::SealError::TooLarge(_) => DeliverError::TooLarge,
            other => DeliverError::Seal(other.to_string()),
        })?;
        deliveries.push(NewDelivery {
            id: env.id.0,
            sender: sender.to_string(),
            envelope: env.encode(),
            blobs: vec![],
            recipients: vec![address.to_string()],
            received: now,
            quota,
            device: None,
        });
    }
    drop(payload);
    store.deliver_all(deliveries).await.map_err(|e| match e {
        StoreError::QuotaExceeded(who) => DeliverError::Quota(who),
        StoreError::UnknownRecipients(who) => DeliverError::UnknownUser(who.join(", ")),
        other => DeliverError::Store(other.to_string()),
    })
}

/// The Received trace field (RFC 5321 §4.4). The client's HELO is its own claim: written
/// as the From-domain only when it is a domain or an address literal; anything else is
/// `unknown`, the HELO kept in the comment with what could end it replaced, so no client
/// can forge a hop or a `by` clause into the trace.
pub fn received_field(helo: &str, client_ip: &str, domain: &str, tls: bool, now: u64) -> String {
    let literal = helo
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| {
            h.strip_prefix("IPv6:").map_or_else(
                || h.parse::<std::net::Ipv4Addr>().is_ok(),
                |v6| v6.parse::<std::net::Ipv6Addr>().is_ok(),
            )
        });
    let from = if letterme_protocol::address::valid_domain(helo) || literal {
        format!("{helo} ([{client_ip}])")
    } else {
        let quoted: String = helo
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\' | ';') {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        format!("unknown ([{client_ip}] helo={quoted})")
    };
    format!(
        "Received: from {from}\r\n\tby {domain} with {}; {}\r\n",
        if tls { "ESMTPS" } else { "ESMTP" },
        mail_parser::DateTime::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX)).to_rfc822()
    )
}

/// RFC 8601 §5: Authentication-Results fields that claim our own authserv-id (the hostname
/// we sign results with, or our domain) came from outside and are forged; they are removed
/// so only the gateway's own verdict speaks for us. So is any `Letterme-Signature` field:
/// the proxy adds that one to native mail only, and classic mail must not pose as native.
pub fn strip_forged_fields(raw: &[u8], domain: &str, hostname: &str) -> Vec<u8> {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(raw) else {
        return raw.to_vec();
    };
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for h in parsed.headers() {
        let (field, start, end) = (
            h.offset_field as usize,
            h.offset_start as usize,
            h.offset_end as usize,
        );
        if h.name.as_str().eq_ignore_ascii_case(VERIFIED_HEADER) {
            cut.push((field, end));
            continue;
        }
        if h.name != mail_parser::HeaderName::AuthenticationResults {
            continue;
        }
        let Some(value) = raw.get(start..end) else {
            continue;
        };
        let value = String::from_utf8_lossy(value);
        let id = authserv_id(&value);
        if id.eq_ignore_ascii_case(hostname) || id.eq_ignore_ascii_case(domain) {
            cut.push((field, end));
        }
    }
    if cut.is_empty() {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    for (from, to) in cut {
        out.extend_from_slice(&raw[at..from]);
        at = to;
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// The authserv-id of an Authentication-Results value (RFC 8601 §2.2): the first token
/// after any CFWS — folding whitespace and comments, which may nest and hold quoted pairs.
fn authserv_id(value: &str) -> &str {
    let mut rest = value;
    loop {
        rest = rest.trim_start();
        if !rest.starts_with('(') {
            break;
        }
        let mut depth = 0usize;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_helo_cannot_forge_a_hop_in_the_received_field() {
        let ok = received_field("mail.sender.test", "192.0.2.1", "x.test", true, 0);
        assert!(
            ok.starts_with(
                "Received: from mail.sender.test ([192.0.2.1])\r\n\tby x.test with ESMTPS; "
            ),
            "{ok}"
        );
        let lit = received_field("[IPv6:2001:db8::1]", "2001:db8::1", "x.test", false, 0);
        assert!(
            lit.starts_with("Received: from [IPv6:2001:db8::1] ([2001:db8::1])"),
            "{lit}"
        );
        let evil = received_field(
            "a.test) by mx.bank.test (x;",
            "192.0.2.1",
            "x.test",
            false,
            0,
        );
        assert!(
            evil.starts_with(
                "Received: from unknown ([192.0.2.1] helo=a.test??by?mx.bank.test??x?)\r\n"
            ),
            "{evil}"
        );
        assert_eq!(evil.matches("by ").count(), 1, "{evil}");
    }

    #[test]
    fn forged_authentication_results_for_our_domain_are_removed() {
        let raw = b"Authentication-Results: mx.x.test; dkim=pass\r\n\theader.d=bank.test\r\n\
Authentication-Results: other.example; spf=fail\r\n\
From: a@s.test\r\nAuthentication-Results: X.TEST;\r\n dmarc=pass\r\nLetterme-signature: pass;\r\n signer=bank@x.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = strip_forged_fields(raw, "x.test", "mx.x.test");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Authentication-Results: other.example; spf=fail\r\nFrom: a@s.test\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        // RFC 8601 §2.2: comments and folding may come before the authserv-id.
        let cfws = b"Authentication-Results: (trust me) mx.x.test; dkim=pass\r\n\
Authentication-Results:\r\n (a (nested \\) one)) X.TEST(c); dmarc=pass\r\nSubject: hi\r\n\r\nb";
        assert_eq!(
            String::from_utf8(strip_forged_fields(cfws, "x.test", "mx.x.test")).unwrap(),
            "Subject: hi\r\n\r\nb"
        );
        let clean = b"From: a@s.test\r\n\r\nbody";
        assert_eq!(strip_forged_fields(clean, "x.test", "mx.x.test"), clean);
    }
}
