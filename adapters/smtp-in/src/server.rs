//! The inbound MX as a [`Backend`] of the shared SMTP driver: recipient checks against the
//! store, then verification, policy and sealing. `250` only after the sealed envelope is
//! committed.

use std::sync::Arc;

use letterme_policy::{AllowEntry, Decision, DmarcMode, decide};
use letterme_protocol::verdict::{DkimResult, DkimResults};
use letterme_protocol::{Address, SigningKeypair};
use letterme_server::Clock;
use letterme_server::store::Store;
use letterme_smtp::driver::{Backend, BackendConfig};
use letterme_smtp::reply;
use letterme_smtp::session::{Reply, Session, Transaction};
use mail_auth::MessageAuthenticator;

use crate::deliver::{DeliverError, Inbound, seal_and_store};
use crate::verify::{header_defect, verify};

/// Everything a session needs.
pub struct SmtpIn {
    pub smtp: BackendConfig,
    pub store: Store,
    pub domain_key: SigningKeypair,
    pub authenticator: MessageAuthenticator,
    pub dmarc: DmarcMode,
    pub allow: Vec<AllowEntry>,
    pub quota: u64,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<letterme_server::metrics::Metrics>,
}

impl std::fmt::Debug for SmtpIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpIn")
            .field("hostname", &self.smtp.session.hostname)
            .field("dmarc", &self.dmarc)
            .finish_non_exhaustive()
    }
}

impl Backend for SmtpIn {
    fn config(&self) -> &BackendConfig {
        &self.smtp
    }
    async fn check_recipient(&self, _: &Session, rcpt: &Address) -> Result<(), Reply> {
        check_recipient(self, rcpt).await
    }
    async fn accept_message(&self, s: &Session, tx: Transaction) -> Reply {
        accept_message(self, s, tx).await
    }
}

async fn check_recipient(smtp: &SmtpIn, rcpt: &Address) -> Result<(), Reply> {
    match smtp.store.account(rcpt.to_string()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Reply::new(550, "5.1.1", format!("no such user: {rcpt}"))),
        Err(e) => {
            tracing::error!(error = %e, "recipient lookup failed");
            Err(reply::RECIPIENT_LOOKUP_FAILED)
        }
    }
}

async fn accept_message(smtp: &SmtpIn, s: &Session, tx: Transaction) -> Reply {
    let ip = s.peer;
    if let Some(why) = header_defect(&tx.data) {
        smtp.metrics.smtp("rejected");
        tracing::info!(%ip, mail_from = %tx.mail_from, reason = why, "smtp message refused");
        return Reply::new(550, "5.6.0", format!("message refused: {why}"));
    }
    let verified = verify(
        &smtp.authenticator,
        &smtp.smtp.session.hostname,
        &tx.data,
        ip,
        &tx.helo,
        &tx.mail_from,
    )
    .await;
    let decision = decide(smtp.dmarc, &verified.evidence, &smtp.allow);
    let e = &verified.evidence;
    let dkim = DkimResults(
        e.dkim
            .iter()
            .map(|(result, domain)| DkimResult {
                result: *result,
                domain: domain.clone(),
            })
            .collect(),
    );
    let (quarantine, note) = match decision {
        Decision::Accept { note } => (false, note),
        Decision::Quarantine { note } => (true, note),
        Decision::Reject(r) | Decision::TempFail(r) => {
            smtp.metrics.smtp(if r.code >= 500 {
                "rejected"
            } else {
                "tempfailed"
            });
            tracing::info!(%ip, mail_from = %tx.mail_from, code = r.code, reason = %r.text, "smtp message refused");
            return Reply::new(r.code, r.enhanced, r.text);
        }
    };
    let size = tx.data.len();
    let rcpts = tx.recipients.len();
    let result = seal_and_store(
        &smtp.store,
        &smtp.smtp.session.domain,
        &smtp.smtp.session.hostname,
        &smtp.domain_key,
        smtp.quota,
        smtp.clock.now(),
        Inbound {
            raw: tx.data,
            mail_from: tx.mail_from.clone(),
            helo: tx.helo,
            client_ip: ip.to_string(),
            recipients: tx.recipients,
            authentication_results: verified.authentication_results,
            spf: e.spf_mail_from,
            dkim,
            dmarc: e.dmarc,
            quarantine,
            note,
            tls: s.is_tls(),
        },
    )
    .await;
    match result {
        Ok(()) => {
            smtp.metrics.smtp(if quarantine {
                "quarantined"
            } else {
                "accepted"
            });
            tracing::info!(%ip, mail_from = %tx.mail_from, rcpts, size, quarantine, "smtp message accepted and sealed");
            reply::SEALED_AND_STORED
        }
        Err(DeliverError::Quota(who)) => {
            Reply::new(452, "4.2.2", format!("mailbox of {who} is full"))
        }
        Err(DeliverError::UnknownUser(who)) => {
            Reply::new(550, "5.1.1", format!("no such user: {who}"))
        }
        Err(DeliverError::TooLarge) => reply::MESSAGE_TOO_LARGE_TO_STORE,
        Err(e) => {
            tracing::error!(error = %e, "sealing or storing an inbound message failed");
            reply::LOCAL_FAILURE_NOTHING_STORED
        }
    }
}
