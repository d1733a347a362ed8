//! The outbound SMTP adapter (DESIGN.md §1, §3): delivers what users handed over for
//! ordinary addresses — relayed messages, or notices — to each domain's MX, DKIM-signed
//! with the domain's Ed25519 and RSA keys.
//!
//! The queue lives in the server's database (`letterme_server::outbound`); this worker
//! takes due rows, groups them by domain, resolves each domain's route once per round,
//! signs, and sends over at most [`PER_DOMAIN`] connections per domain at a time. Temporary failures come back with
//! exponential backoff and jitter; a 5xx, or anything still undelivered after
//! `give_up_after`, becomes a failure notice in the sender's letter.me inbox, committed in
//! the same transaction that retires the row.

pub mod compose;
pub mod deliver;
pub mod resolve;
pub mod sign;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letterme_protocol::SigningKeypair;
use letterme_protocol::codec::hex;
use letterme_server::Clock;
use letterme_server::config::OutboundConfig;
use letterme_server::notice::{Failure, failure_notices};
use letterme_server::outbound::MailKeys;
use letterme_server::store::{SmtpKind, SmtpOutcome, SmtpRow, Store, StoreError};
use letterme_server::worker::{self, Due, jitter, retry_delay};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use deliver::{Outgoing, RcptResult, SessionParams};
use letterme_server::dns::MailDns;
use resolve::RouteError;

/// Rows taken per round.
pub const BATCH: usize = 512;
/// Connections to one domain at once.
pub const PER_DOMAIN: usize = 4;
/// Messages sent over one connection per round.
pub const PER_CONNECTION: usize = 64;

/// The worker; one per server.
pub struct SmtpOut {
    store: Store,
    signer: Arc<sign::Signer>,
    dns: Arc<dyn MailDns>,
    config: OutboundConfig,
    /// `network.allow_private_addresses`: MX hosts on private addresses are used.
    allow_private: bool,
    domain: String,
    hello: String,
    signup_url: String,
    domain_key: SigningKeypair,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    extra_roots: Vec<Vec<u8>>,
    queue: letterme_server::outbound::QueueKey,
    busy: Mutex<HashSet<i64>>,
    /// Connections in flight per domain.
    flying: Mutex<HashMap<String, usize>>,
    /// See [`Due::claiming`].
    claiming: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SmtpOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpOut")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Everything the worker is built from.
#[derive(Debug)]
pub struct Setup {
    pub store: Store,
    pub keys: Arc<MailKeys>,
    pub dns: Arc<dyn MailDns>,
    pub config: letterme_server::Config,
    pub domain_key: SigningKeypair,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
}

impl SmtpOut {
    pub fn new(s: Setup) -> Result<Self, String> {
        let signer = sign::Signer::new(&s.config.domain, &s.keys).map_err(|e| e.to_string())?;
        let extra_roots = match &s.config.outbound.ca_file {
            Some(p) => vec![
                std::fs::read(p).map_err(|e| format!("outbound.ca_file {}: {e}", p.display()))?,
            ],
            None => Vec::new(),
        };
        Ok(Self {
            store: s.store,
            signer: Arc::new(signer),
            dns: s.dns,
            signup_url: s
                .config
                .outbound
                .signup_url
                .clone()
                .unwrap_or_else(|| s.config.public_url()),
            hello: s.config.mail_hostname(),
            domain: s.config.domain.clone(),
            config: s.config.outbound.clone(),
            allow_private: s.config.network.allow_private_addresses,
            domain_key: s.domain_key,
            clock: s.clock,
            wake: s.wake,
            extra_roots,
            queue: s.keys.queue.clone(),
            busy: Mutex::default(),
            flying: Mutex::default(),
            claiming: tokio::sync::Mutex::default(),
        })
    }

    /// Runs until `stop`: delivers what is due, sleeps until the next row is due or new
    /// mail is queued.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        worker::run(
            &self,
            &*self.clock,
            &self.wake,
            "reading the SMTP queue failed",
            stop,
        )
        .await;
    }

    /// Delivers everything due now and waits for the outcome; returns the rows tried.
    pub async fn run_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        worker::run_due(self).await
    }
}

impl Due for SmtpOut {
    fn claiming(&self) -> &tokio::sync::Mutex<()> {
        &self.claiming
    }

    /// Takes due rows that no task holds and starts a task per domain, with as many
    /// connections as that domain has left of [`PER_DOMAIN`].
    /// Returns when the next row is due; if that cannot be read, as if nothing were queued.
    async fn spawn_due(
        self: &Arc<Self>,
        tasks: &mut JoinSet<usize>,
    ) -> Result<Option<u64>, StoreError> {
        let busy: Vec<i64> = self
            .busy
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        let rows = self.store.due_smtp(self.clock.now(), BATCH, busy).await?;
        let mut by_domain: BTreeMap<String, Vec<SmtpRow>> = BTreeMap::new();
        for r in rows {
            by_domain.entry(r.domain.clone()).or_default().push(r);
        }
        for (domain, mut rows) in by_domain {
            let free = {
                let flying = self
                    .flying
                    .lock()
                    .map_or(PER_DOMAIN, |m| m.get(&domain).copied().unwrap_or(0));
                PER_DOMAIN.saturating_sub(flying)
            };
            if free == 0 {
                continue;
            }
            let conns = rows.len().div_ceil(PER_CONNECTION).clamp(1, free);
            rows.truncate(conns * PER_CONNECTION);
            if let Ok(mut b) = self.busy.lock() {
                b.extend(rows.iter().map(|r| r.id));
            }
            if let Ok(mut m) = self.flying.lock() {
                *m.entry(domain.clone()).or_default() += conns;
            }
            let me = self.clone();
            tasks.spawn(async move {
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let n = rows.len();
                if let Err(e) = me.attempt(&domain, rows, conns).await {
                    tracing::error!(%domain, error = %e, "recording an SMTP attempt failed");
                }
                if let Ok(mut b) = me.busy.lock() {
                    for id in ids {
                        b.remove(&id);
                    }
                }
                if let Ok(mut m) = me.flying.lock()
                    && let Some(f) = m.get_mut(&domain)
                {
                    *f = f.saturating_sub(conns);
                }
                n
            });
        }
        Ok(self.store.next_smtp_due().await.ok().flatten())
    }
}

impl SmtpOut {
    /// Builds the signed bytes of a row: the opened relay message, or a fresh notice.
    fn message(&self, row: &SmtpRow) -> Result<Vec<u8>, String> {
        let now = self.clock.now();
        let raw: zeroize::Zeroizing<Vec<u8>> = match row.kind {
            SmtpKind::Relay => {
                let sealed = row
                    .sealed
                    .as_deref()
                    .ok_or("the queued message is missing")?;
                self.keys_open(row, sealed)?
            }
            SmtpKind::Notice => zeroize::Zeroizing::new(
                compose::legacy_notice(
                    &row.sender,
                    &row.recipients,
                    &self.domain,
                    &self.signup_url,
                    now,
                    &format!(
                        "<{}@{}>",
                        hex(&letterme_protocol::keys::random_bytes::<16>()),
                        self.domain
                    ),
                )
                .ok_or("the notice cannot be written for these addresses")?,
            ),
        };
        self.signer.sign(&raw).map_err(|e| e.to_string())
    }

    fn keys_open(
        &self,
        row: &SmtpRow,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        self.queue
            .open(sealed, &row.sender, row.queued_at, row.size)
            .ok_or_else(|| "the queued copy does not decrypt with this server's queue key".into())
    }

    /// Delivers rows for one domain over `conns` connections and records what happened.
    async fn attempt(
        self: &Arc<Self>,
        domain: &str,
        rows: Vec<SmtpRow>,
        conns: usize,
    ) -> Result<(), StoreError> {
        let results: Vec<Vec<(String, RcptResult)>> = match resolve::route(
            self.dns.as_ref(),
            domain,
            self.config.port,
            self.allow_private,
        )
        .await
        {
            Err(e) => {
                let r = match &e {
                    RouteError::Permanent(why) => RcptResult::Permanent(why.clone()),
                    RouteError::Temporary(why) => RcptResult::Temporary(why.clone()),
                };
                rows.iter()
                    .map(|row| {
                        row.recipients
                            .iter()
                            .map(|x| (x.clone(), r.clone()))
                            .collect()
                    })
                    .collect()
            }
            Ok(route) => {
                let route = Arc::new(route);
                let per = rows.len().div_ceil(conns.max(1)).max(1);
                let mut set = JoinSet::new();
                for (i, chunk) in rows.chunks(per).enumerate() {
                    let me = self.clone();
                    let route = route.clone();
                    let chunk = chunk.to_vec();
                    set.spawn(async move { (i, me.deliver_chunk(&route, chunk).await) });
                }
                let mut parts = Vec::new();
                while let Some(joined) = set.join_next().await {
                    match joined {
                        Ok(p) => parts.push(p),
                        Err(e) => tracing::error!(error = %e, "an SMTP delivery task failed"),
                    }
                }
                parts.sort_by_key(|(i, _)| *i);
                let mut all: Vec<Vec<(String, RcptResult)>> =
                    parts.into_iter().flat_map(|(_, r)| r).collect();
                // A task that died leaves its rows without results: retry them.
                while all.len() < rows.len() {
                    let row = &rows[all.len()];
                    all.push(
                        row.recipients
                            .iter()
                            .map(|x| {
                                (
                                    x.clone(),
                                    RcptResult::Temporary("delivery task failed".into()),
                                )
                            })
                            .collect(),
                    );
                }
                all
            }
        };
        let now = self.clock.now();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        for (row, res) in rows.iter().zip(results) {
            outcomes.push((row.id, self.settle(row, res, now, &mut failures)));
        }
        let finished = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, SmtpOutcome::Done))
            .count();
        tracing::info!(%domain, rows = rows.len(), finished, "SMTP attempt");
        let notices =
            failure_notices(&self.store, &self.domain, &self.domain_key, failures, now).await?;
        self.store.finish_smtp(outcomes, notices).await
    }

    /// Signs a chunk's messages (on the blocking pool: RSA-2048 is CPU work) and sends them
    /// over one connection; one result list per row, in order.
    async fn deliver_chunk(
        self: &Arc<Self>,
        route: &resolve::Route,
        mut rows: Vec<SmtpRow>,
    ) -> Vec<Vec<(String, RcptResult)>> {
        let wanted: Vec<i64> = rows
            .iter()
            .filter(|r| r.kind == SmtpKind::Relay)
            .map(|r| r.message)
            .collect();
        match self.store.smtp_sealed(wanted).await {
            Ok(mut sealed) => {
                for r in &mut rows {
                    r.sealed = sealed.remove(&r.message);
                }
            }
            Err(e) => {
                let why = format!("reading the queue failed: {e}");
                return rows
                    .iter()
                    .map(|r| {
                        r.recipients
                            .iter()
                            .map(|x| (x.clone(), RcptResult::Temporary(why.clone())))
                            .collect()
                    })
                    .collect();
            }
        }
        let me = self.clone();
        let copy = rows.clone();
        let built: Vec<Result<Vec<u8>, String>> =
            tokio::task::spawn_blocking(move || copy.iter().map(|r| me.message(r)).collect())
                .await
                .unwrap_or_else(|e| vec![Err(format!("signing failed: {e}")); rows.len()]);
        let mut sendable = Vec::new();
        let mut index = Vec::new();
        let mut results: Vec<Option<Vec<(String, RcptResult)>>> = vec![None; rows.len()];
        for (i, b) in built.into_iter().enumerate() {
            match b {
                Ok(data) => {
                    index.push(i);
                    sendable.push(Outgoing {
                        sender: rows[i].sender.clone(),
                        recipients: rows[i].recipients.clone(),
                        data,
                    });
                }
                Err(why) => {
                    results[i] = Some(
                        rows[i]
                            .recipients
                            .iter()
                            .map(|x| (x.clone(), RcptResult::Permanent(why.clone())))
                            .collect(),
                    );
                }
            }
        }
        if !sendable.is_empty() {
            let params = SessionParams {
                hello: self.hello.clone(),
                port: self.config.port,
                timeout: Duration::from_secs(self.config.timeout.0),
                extra_roots: self.extra_roots.clone(),
            };
            let sent = deliver::deliver(route, &params, &sendable).await;
            for (i, r) in index.into_iter().zip(sent) {
                results[i] = Some(r);
            }
        }
        results.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// Done, or retried later for the recipients still worth trying.
    fn settle(
        &self,
        row: &SmtpRow,
        results: Vec<(String, RcptResult)>,
        now: u64,
        failures: &mut Vec<Failure>,
    ) -> SmtpOutcome {
        let mut failed = Vec::new();
        let mut again = Vec::new();
        for (rcpt, r) in results {
            match r {
                RcptResult::Accepted => {}
                RcptResult::Permanent(why) => failed.push((rcpt, why)),
                RcptResult::Temporary(why) => again.push((rcpt, why)),
            }
        }
        let expired = now.saturating_sub(row.queued_at) >= self.config.give_up_after.0;
        let outcome = if again.is_empty() {
            SmtpOutcome::Done
        } else if expired {
            let after = self.config.give_up_after;
            failed.extend(again.into_iter().map(|(r, why)| {
                (
                    r,
                    format!("gave up after {after} of trying; last error: {why}"),
                )
            }));
            SmtpOutcome::Done
        } else {
            let delay = retry_delay(
                self.config.retry_first.0,
                self.config.retry_max.0,
                row.attempts + 1,
                jitter(),
            );
            SmtpOutcome::Retry {
                error: again[0].1.clone(),
                recipients: again.into_iter().map(|(r, _)| r).collect(),
                next_attempt: now + delay,
            }
        };
        if !failed.is_empty() {
            let what = match row.kind {
                SmtpKind::Relay => format!("message to {} (queued as {})", row.domain, row.message),
                SmtpKind::Notice => format!("letter.me notice to {}", row.domain),
            };
            failures.push(Failure {
                sender: row.sender.clone(),
                what,
                queued_at: row.queued_at,
                recipients: failed,
            });
        }
        outcome
    }
}
