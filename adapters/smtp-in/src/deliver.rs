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
    let mut keys: Vec<(Address, EncryptionPublicKey)> = Vec::with_capacity(msg.recipients.len());
    for r in &msg.recipients {
        let row = store
            .account(r.to_string())
            .await
            .map_err(|e| DeliverError::Store(e.to_string()))?
            .ok_or_else(|| DeliverError::UnknownUser(r.to_string()))?;
        keys.push((r.clone(), EncryptionPublicKey(row.encryption_key)));
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
    // RFC 5321 §4.4: the receiving server adds a Received trace field.
    let received = format!(
        "Received: from {} ([{}])\r\n\tby {domain} with {}; {}\r\n",
        msg.helo,
        msg.client_ip,
        if msg.tls { "ESMTPS" } else { "ESMTP" },
        mail_parser::DateTime::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX)).to_rfc822()
    );
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
            recipients: vec![address.to_string()],
            received: now,
            quota,
        });
    }
    drop(payload);
    store.deliver_all(deliveries).await.map_err(|e| match e {
        StoreError::QuotaExceeded(who) => DeliverError::Quota(who),
        StoreError::UnknownRecipients(who) => DeliverError::UnknownUser(who.join(", ")),
        other => DeliverError::Store(other.to_string()),
    })
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
        let id = value.split(';').next().unwrap_or_default().trim();
        let id = id.split_whitespace().next().unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let clean = b"From: a@s.test\r\n\r\nbody";
        assert_eq!(strip_forged_fields(clean, "x.test", "mx.x.test"), clean);
    }
}
