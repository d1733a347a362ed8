//! Failure notices: when mail a local user sent cannot be delivered — by federation or by
//! SMTP — the server tells the sender in their own inbox, sealed to their key and signed
//! with the domain key like any mail the server writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use letterme_protocol::codec::hex;
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::{Address, EncryptionPublicKey, Payload, SigningKeypair};

use crate::store::{NewDelivery, Store, StoreError};

/// The local part notices come from.
pub const NOTICE_SENDER: &str = "mailer-daemon";

/// A failure to report to a local sender.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sender: String,
    /// What failed, as the sender knows it: "envelope 3f2a…", "message 17".
    pub what: String,
    pub queued_at: u64,
    /// (recipient, why)
    pub recipients: Vec<(String, String)>,
}

/// Seals a notice for each failure whose sender has an account here.
pub async fn failure_notices(
    store: &Store,
    domain: &str,
    signing: &SigningKeypair,
    failures: Vec<Failure>,
    now: u64,
) -> Result<Vec<NewDelivery>, StoreError> {
    let mut out = Vec::new();
    let mut keys: BTreeMap<String, Vec<EncryptionPublicKey>> = BTreeMap::new();
    for f in failures {
        if !keys.contains_key(&f.sender) {
            let k = store
                .devices(f.sender.clone())
                .await?
                .iter()
                .map(|d| EncryptionPublicKey(d.encryption_key))
                .collect();
            keys.insert(f.sender.clone(), k);
        }
        let found = keys.get(&f.sender).filter(|k| !k.is_empty());
        let (Some(key), Ok(sender)) = (found, Address::parse(&f.sender)) else {
            tracing::warn!(sender = %f.sender, "no account to send a failure notice to");
            continue;
        };
        match failure_notice(domain, signing, &sender, key, &f, now) {
            Ok(d) => out.push(d),
            Err(e) => tracing::error!(error = %e, "cannot seal a failure notice"),
        }
    }
    Ok(out)
}

/// Longest reason a notice repeats, in characters: room for this server's words (a
/// domain name among them) and a whole quotation.
pub const MAX_REASON: usize = 800;
/// Longest part of a reason that another server wrote, in characters.
pub const MAX_REMOTE: usize = 160;

/// A failure reason whose explanation is this server's (`ours`: fixed text for the kind
/// of failure) and which repeats what the other server said only as a quotation, cut at
/// [`MAX_REMOTE`] characters on one line with its quotes escaped, so a peer or MX cannot
/// pass its words off as the server's.
pub fn remote_said(ours: &str, said: &str) -> String {
    let quoted = clean(said, MAX_REMOTE)
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("{ours}; the other server said: \"{quoted}\"")
}

/// `text` on one line (control characters become spaces), cut at `max` characters with
/// an ellipsis.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_owned()
}

/// A failure reason as a notice shows it: it may carry what a peer or a remote MTA
/// answered, so control characters (line breaks included) become spaces and it is cut
/// at [`MAX_REASON`] characters.
fn one_line(why: &str) -> String {
    clean(why, MAX_REASON)
}

/// One notice, sealed to `keys` (the sender's devices') and signed by the domain.
pub fn failure_notice(
    domain: &str,
    signing: &SigningKeypair,
    sender: &Address,
    keys: &[EncryptionPublicKey],
    f: &Failure,
    now: u64,
) -> Result<NewDelivery, letterme_protocol::SealError> {
    let from =
        Address::parse(&format!("{NOTICE_SENDER}@{domain}")).expect("the server's domain is valid");
    let mut body = format!(
        "Your {} queued at {} could not be delivered to:\n\n",
        f.what, f.queued_at
    );
    for (r, why) in &f.recipients {
        let _ = writeln!(body, "  {r}: {}", one_line(why));
    }
    body.push_str("\nThis notice was written by your server, ");
    body.push_str(domain);
    body.push_str(". Nothing more will be tried for these recipients.\n");
    let names: Vec<&str> = f.recipients.iter().map(|(r, _)| r.as_str()).collect();
    let payload = Payload {
        from: from.clone(),
        to: vec![sender.clone()],
        cc: vec![],
        bcc: vec![],
        subject: format!("Undelivered mail to {}", names.join(", ")),
        body,
        headers: vec![("Letterme-Notice".into(), "delivery-failure".into())],
        date: now,
        message_id: format!(
            "<{}@{}>",
            hex(&letterme_protocol::keys::random_bytes::<16>()),
            domain
        ),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    };
    let env = seal(
        SignerKind::Domain,
        signing,
        &payload,
        &keys
            .iter()
            .map(|k| (sender.clone(), *k))
            .collect::<Vec<_>>(),
        now,
    )?;
    Ok(NewDelivery {
        id: env.id.0,
        sender: from.to_string(),
        envelope: env.encode(),
        blobs: vec![],
        recipients: vec![sender.to_string()],
        received: now,
        // A notice always lands: it is small and the only news of a loss.
        quota: u64::MAX,
        device: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What another server said is quoted after this server's words, never mixed in.
    #[test]
    fn a_remote_answer_is_quoted_and_cut() {
        let r = remote_said(
            "b.test refused the message",
            "ok\" -- Your mail was delivered after all. \"\n",
        );
        assert_eq!(
            r,
            "b.test refused the message; the other server said: \"ok\\\" -- Your mail was delivered after all. \\\"\""
        );
        let long = remote_said("x", &"y".repeat(1000));
        assert_eq!(long.matches('y').count(), MAX_REMOTE);
        assert!(long.ends_with("…\""), "{long}");
    }

    /// A remote answer cannot fill a notice or forge lines in it.
    #[test]
    fn reasons_are_one_line_of_bounded_length() {
        assert_eq!(one_line("550 5.1.1 no such user"), "550 5.1.1 no such user");
        let forged = "refused\n\nYour mail was delivered after all.\r\nClick here";
        let q = one_line(forged);
        assert!(!q.contains('\n') && !q.contains('\r'), "{q}");
        let long = one_line(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_REASON + 1, "{long}");
        assert!(long.ends_with('…'));
    }
}
