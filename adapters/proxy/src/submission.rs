//! The proxy's local SMTP submission (RFC 6409): the mail client hands over a message,
//! and it leaves end-to-end encrypted.
//!
//! The protocol core is `letterme-smtp`'s sans-I/O session in submission mode (AUTH
//! PLAIN/LOGIN required before MAIL); this backend checks each recipient's attested key
//! and sends through the client library. An ordinary (non-letter.me) address is accepted
//! when the user's server sends notices, or relays and the proxy was started with
//! `--allow-plaintext`; otherwise it is refused with a 550 that says why. `250` comes only
//! after the server committed every envelope (DESIGN.md §7.2).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use letterme_client::{ClientError, Draft, Online, mime};
use letterme_protocol::Address;
use letterme_protocol::api::OutboundMode;
use mail_parser::{Addr, HeaderValue, MessageParser};
use tokio::sync::Mutex;

use letterme_smtp::driver::{Backend, BackendConfig};
use letterme_smtp::reply;
use letterme_smtp::session::{Limits, Reply, Session, SessionConfig, Transaction};

/// The submission service: one logged-in client, shared by the connections.
pub struct Submission {
    pub smtp: BackendConfig,
    pub online: Arc<Mutex<Online>>,
    /// Copies to ordinary addresses may leave end-to-end encryption (relay mode).
    pub allow_plaintext: bool,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("smtp", &self.smtp)
            .finish_non_exhaustive()
    }
}

fn refusal(rcpt: &Address, e: &ClientError) -> Reply {
    match e {
        ClientError::PlaintextRefused(_) => Reply::new(
            550,
            "5.7.1",
            format!(
                "{rcpt} is not on letter.me: a copy would leave end-to-end encryption; \
                 start `letterme proxy --allow-plaintext` to allow that"
            ),
        ),
        ClientError::OutboundOff(_) => Reply::new(
            550,
            "5.7.1",
            format!(
                "{rcpt} is not on letter.me, and your server does not send to ordinary addresses"
            ),
        ),
        ClientError::UnknownRecipient(_) => {
            Reply::new(550, "5.1.1", format!("{rcpt}: no such letter.me user"))
        }
        // The user's server does not federate: no retry will change that.
        ClientError::Api { status: 422, .. } => Reply::new(
            550,
            "5.1.1",
            format!("{rcpt} is on another domain, and your letter.me server does not federate"),
        ),
        ClientError::Unverified(..) | ClientError::UnverifiedRemote(..) => {
            Reply::new(550, "5.7.1", e.to_string())
        }
        ClientError::ServerDown { .. } => Reply::new(
            451,
            "4.4.1",
            format!("cannot reach the letter.me server: {e}"),
        ),
        _ => Reply::new(451, "4.3.0", format!("temporary failure: {e}")),
    }
}

fn addresses(v: &HeaderValue<'_>) -> Vec<Address> {
    let list: Vec<&Addr<'_>> = match v {
        HeaderValue::Address(a) => a.iter().collect(),
        _ => vec![],
    };
    list.iter()
        .filter_map(|a| a.address.as_deref())
        .filter_map(|a| Address::parse(a).ok())
        .collect()
}

fn msg_id(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![format!("<{t}>")],
        HeaderValue::TextList(l) => l.iter().map(|t| format!("<{t}>")).collect(),
        _ => vec![],
    }
}

/// The draft a submitted message becomes: header To/Cc as written (limited to the envelope
/// recipients), every other envelope recipient as Bcc, and the message's MIME entity —
/// text, HTML, inline parts and attachments — byte for byte.
pub fn draft(tx: &Transaction) -> Result<Draft, Reply> {
    let m = MessageParser::default()
        .parse(&tx.data)
        .ok_or(reply::UNPARSABLE_MESSAGE)?;
    let rcpts: BTreeSet<&Address> = tx.recipients.iter().collect();
    let keep = |v: Vec<Address>| -> Vec<Address> {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|a| rcpts.contains(a) && seen.insert(a.clone()))
            .collect()
    };
    let to = keep(addresses(m.header("To").unwrap_or(&HeaderValue::Empty)));
    let cc: Vec<Address> = keep(addresses(m.header("Cc").unwrap_or(&HeaderValue::Empty)))
        .into_iter()
        .filter(|a| !to.contains(a))
        .collect();
    let bcc: Vec<Address> = tx
        .recipients
        .iter()
        .filter(|a| !to.contains(a) && !cc.contains(a))
        .cloned()
        .collect();
    Ok(Draft {
        to,
        cc,
        bcc,
        subject: m.subject().unwrap_or_default().to_owned(),
        body: mime::text_of(&tx.data),
        // Everything the mail client wrote below its header fields travels as it is.
        mime: Some(mime::entity_of(&tx.data)),
        in_reply_to: m
            .header("In-Reply-To")
            .map(msg_id)
            .and_then(|v| v.into_iter().next()),
        references: m.header("References").map(msg_id).unwrap_or_default(),
        message_id: m.message_id().map(|id| format!("<{id}>")),
        allow_plaintext: false,
        apart: Vec::new(),
    })
}

impl Backend for Submission {
    fn config(&self) -> &BackendConfig {
        &self.smtp
    }

    async fn check_recipient(&self, _: &Session, rcpt: &Address) -> Result<(), Reply> {
        let mut o = self.online.lock().await;
        let mut r = o.verified_keys(rcpt).await;
        if matches!(r, Err(ClientError::Api { status: 401, .. })) {
            // The token expired: log in again once.
            r = match o.relogin().await {
                Ok(()) => o.verified_keys(rcpt).await,
                Err(e) => Err(e),
            };
        }
        match r {
            Ok(_) => Ok(()),
            Err(ClientError::Legacy(_)) => match o.outbound_mode().await {
                Ok(OutboundMode::Notice) => Ok(()),
                Ok(OutboundMode::Relay) if self.allow_plaintext => Ok(()),
                Ok(OutboundMode::Relay) => Err(refusal(
                    rcpt,
                    &ClientError::PlaintextRefused(vec![rcpt.clone()]),
                )),
                Ok(OutboundMode::Off) => {
                    Err(refusal(rcpt, &ClientError::OutboundOff(vec![rcpt.clone()])))
                }
                Err(e) => Err(refusal(rcpt, &e)),
            },
            Err(e) => Err(refusal(rcpt, &e)),
        }
    }

    async fn accept_message(&self, _: &Session, tx: Transaction) -> Reply {
        let draft = match draft(&tx) {
            Ok(d) => Draft {
                allow_plaintext: self.allow_plaintext,
                ..d
            },
            Err(r) => return r,
        };
        let n = tx.recipients.len();
        let mut o = self.online.lock().await;
        let mut sent = o.send(&draft).await;
        if matches!(sent, Err(ClientError::Api { status: 401, .. })) {
            sent = match o.relogin().await {
                Ok(()) => o.send(&draft).await,
                Err(e) => Err(e),
            };
        }
        drop(o);
        match sent {
            Ok(report) => {
                tracing::info!(
                    recipients = n,
                    envelopes = report.envelopes.len(),
                    relayed = report.relayed.len(),
                    noticed = report.noticed.len(),
                    "submitted message sent"
                );
                let e2e = report.recipients.len();
                let mut text = format!("sent end-to-end encrypted to {e2e} recipient(s)");
                if !report.relayed.is_empty() {
                    let _ = write!(
                        text,
                        ", as ordinary (not end-to-end encrypted) email to {}",
                        report.relayed.len()
                    );
                }
                if !report.noticed.is_empty() {
                    let _ = write!(
                        text,
                        ", a notice only to {} not on letter.me",
                        report.noticed.len()
                    );
                }
                text.push_str("; a copy is in Sent");
                Reply::new(250, "2.0.0", text)
            }
            Err(ClientError::TooLarge { size, limit }) => Reply::new(
                552,
                "5.3.4",
                format!(
                    "the message is {size} bytes encrypted; the server accepts at most {limit}"
                ),
            ),
            Err(e) => match tx.recipients.first() {
                Some(first)
                    if matches!(
                        e,
                        ClientError::UnknownRecipient(_)
                            | ClientError::Unverified(..)
                            | ClientError::UnverifiedRemote(..)
                            | ClientError::PlaintextRefused(_)
                            | ClientError::OutboundOff(_)
                    ) =>
                {
                    refusal(first, &e)
                }
                _ => {
                    tracing::warn!(error = %e, "sending a submitted message failed");
                    Reply::new(451, "4.3.0", format!("not sent, try again: {e}"))
                }
            },
        }
    }
}

/// The session configuration of the submission port.
pub fn session_config(
    hostname: &str,
    domain: &str,
    creds: Arc<crate::credentials::Credentials>,
    max_message: usize,
) -> SessionConfig {
    SessionConfig {
        hostname: hostname.to_owned(),
        domain: domain.to_owned(),
        limits: Limits {
            max_message,
            ..Limits::default()
        },
        tls_available: false,
        auth: Some(creds),
    }
}
