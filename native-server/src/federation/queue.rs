//! The federation queue's worker: claims due rows per destination in batches, delivers each
//! batch with one signed, idempotent `PUT /v1/federation/transactions/{txid}`, and records
//! what the peer answered per recipient. Temporary failures come back with exponential
//! backoff and jitter; permanent ones, and anything still undelivered after
//! `give_up_after`, become a failure notice in the sender's inbox.
//!
//! A batch keeps its transaction id until the peer gives a signed answer for it, so a
//! crash or a lost answer leads to the very same request again, which the peer answers
//! from its record instead of storing a second copy.
//!
//! An envelope that names blobs goes alone, its blobs first: each offered to the peer,
//! which answers with the chunks it holds, and only the missing chunks sent, one at a
//! time. So a blob crosses to a domain once, however many recipients, envelopes (Bcc) or
//! retries, and a broken transfer resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use letterme_protocol::api::{BlobState, ErrorCode};
use letterme_protocol::blob::BlobId;
use letterme_protocol::codec::hex;
use letterme_protocol::federation::{
    BlobOffer, DeliveryReport, DeliveryStatus, encode_batch_items,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{Federation, FederationError};
use crate::clock::Clock;
use crate::notice::Failure;
use crate::store::{
    BatchLimit, Claimed, FederationRow, NewDelivery, RowOutcome, Store, StoreError,
};
use crate::worker::{self, Due, jitter, retry_delay};

const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// Batches in flight to one destination at most.
pub const PER_DESTINATION: usize = 4;
/// Batches in flight in all: with `federation.batch_bytes` (at most 64 MiB, and a single
/// envelope at most `limits.max_message_size`) this bounds the bytes the worker holds.
pub const IN_FLIGHT: usize = 16;

/// Attempts on which a peer answers the blob offer with an unsigned `404` (it has no
/// route for blobs) before an envelope naming a blob is bounced.
pub const NO_BLOBS_SIGHTINGS: u32 = 3;

/// The worker; one per server.
pub struct FederationQueue {
    store: Store,
    fed: Arc<Federation>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    busy: Mutex<HashSet<[u8; 16]>>,
    flying: Mutex<HashMap<String, usize>>,
    /// Destinations that answered `413` to a batch: the smaller byte bound they get now
    /// (as many destinations as verified peers are kept).
    shrunk: Mutex<lru::LruCache<String, u64>>,
    /// See [`Due::claiming`].
    claiming: tokio::sync::Mutex<()>,
    /// Counts the blob chunks sent (the server's metrics).
    chunks_sent: prometheus_client::metrics::counter::Counter,
    /// Blobs go to one destination one envelope at a time (a lane per destination while
    /// any envelope with blobs is on its way there), so two envelopes naming one blob — a
    /// message's Bcc copies — never send its chunks twice at once: the second's offer
    /// finds them there. A slow destination holds up only its own.
    blob_lanes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for FederationQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationQueue").finish_non_exhaustive()
    }
}

impl FederationQueue {
    pub fn new(
        store: Store,
        fed: Arc<Federation>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        chunks_sent: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            store,
            fed,
            clock,
            wake,
            busy: Mutex::default(),
            flying: Mutex::default(),
            shrunk: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(super::MAX_PEERS)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            claiming: tokio::sync::Mutex::default(),
            chunks_sent,
            blob_lanes: Mutex::default(),
        }
    }

    /// Runs until `stop`: delivers what is due, sleeps until the next row is due or new
    /// mail is queued.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        worker::run(
            &self,
            &*self.clock,
            &self.wake,
            "reading the federation queue failed",
            stop,
        )
        .await;
    }

    /// Delivers everything due now and waits for the answers; returns how many batches
    /// were tried. (The background worker does the same; tests and operators call this.)
    pub async fn run_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        worker::run_due(self).await
    }
}

impl Due for FederationQueue {
    fn claiming(&self) -> &tokio::sync::Mutex<()> {
        &self.claiming
    }

    /// Claims and starts due batches; returns when the next not-yet-due row is due.
    async fn spawn_due(
        self: &Arc<Self>,
        tasks: &mut JoinSet<usize>,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.clock.now();
        let mut next: Option<u64> = None;
        for (destination, due) in self.store.federation_destinations().await? {
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            loop {
                let (flying, all) = self
                    .flying
                    .lock()
                    .map_or((PER_DESTINATION, IN_FLIGHT), |m| {
                        (m.get(&destination).copied().unwrap_or(0), m.values().sum())
                    });
                if flying >= PER_DESTINATION || all >= IN_FLIGHT {
                    break;
                }
                let busy: Vec<[u8; 16]> = self
                    .busy
                    .lock()
                    .map(|b| b.iter().copied().collect())
                    .unwrap_or_default();
                let Some(claimed) = self
                    .store
                    .claim_federation(
                        destination.clone(),
                        now,
                        self.batch_limit(&destination),
                        busy,
                    )
                    .await?
                else {
                    break;
                };
                if let Ok(mut b) = self.busy.lock() {
                    b.insert(claimed.txid);
                }
                if let Ok(mut m) = self.flying.lock() {
                    *m.entry(destination.clone()).or_default() += 1;
                }
                let me = self.clone();
                tasks.spawn(async move {
                    let txid = claimed.txid;
                    let dest = claimed.destination.clone();
                    if let Err(e) = me.attempt(claimed).await {
                        tracing::error!(destination = %dest, error = %e, "recording a delivery attempt failed");
                    }
                    if let Ok(mut b) = me.busy.lock() {
                        b.remove(&txid);
                    }
                    if let Ok(mut m) = me.flying.lock()
                        && let Some(n) = m.get_mut(&dest)
                    {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            m.remove(&dest);
                        }
                    }
                    1
                });
            }
        }
        Ok(next)
    }
}

impl FederationQueue {
    /// How the next batch for `destination` is cut.
    fn batch_limit(&self, destination: &str) -> BatchLimit {
        let cfg = &self.fed.config;
        let shrunk = self
            .shrunk
            .lock()
            .ok()
            .and_then(|mut m| m.get(destination).copied());
        BatchLimit {
            rows: cfg.batch,
            bytes: shrunk.map_or(cfg.batch_bytes.0, |s| s.min(cfg.batch_bytes.0)),
        }
    }

    /// Sends one batch and records the outcome.
    async fn attempt(&self, claimed: Claimed) -> Result<(), StoreError> {
        let Claimed {
            destination,
            txid,
            rows,
        } = claimed;
        let result = match self.push_blobs(&destination, &rows).await? {
            Ok(()) => self.send(&destination, txid, &rows).await,
            Err(e) => Err(e),
        };
        let now = self.clock.now();
        if rows.len() > 1
            && let Err(FederationError::Refused { status: 413, .. }) = &result
        {
            // Too large for this peer: the same envelopes go again at once in batches of
            // half the bytes, down to one envelope, which is then refused alone.
            let bytes: u64 = rows.iter().map(|r| r.size).sum();
            if let Ok(mut m) = self.shrunk.lock() {
                m.put(destination.clone(), (bytes / 2).max(1));
            }
            tracing::info!(%destination, envelopes = rows.len(), bytes, "batch too large for the peer; splitting");
            let outcomes = rows.iter().map(|r| (r.id, RowOutcome::Release)).collect();
            return self
                .store
                .finish_federation(outcomes, Vec::new(), true)
                .await;
        }
        let cfg = &self.fed.config;
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let retire;
        match result {
            Ok(report) => {
                retire = true;
                for (i, row) in rows.iter().enumerate() {
                    let mut failed = Vec::new();
                    let mut again = Vec::new();
                    let statuses = report.results.get(&hex(&row.envelope_id));
                    let rejected = report.rejected.get(&i.to_string());
                    for rcpt in &row.recipients {
                        match (statuses.and_then(|s| s.get(rcpt)), rejected) {
                            (Some(DeliveryStatus::Accepted), _) => {}
                            (Some(s), _) if s.is_permanent() => {
                                failed.push((rcpt.clone(), s.describe().to_owned()));
                            }
                            (Some(s), _) => again.push((rcpt.clone(), s.describe().to_owned())),
                            (None, Some(reason)) => {
                                failed.push((
                                    rcpt.clone(),
                                    crate::notice::remote_said(
                                        &format!("{destination} refused the message"),
                                        reason,
                                    ),
                                ));
                            }
                            (None, None) => again.push((
                                rcpt.clone(),
                                format!("{destination} did not answer for this recipient"),
                            )),
                        }
                    }
                    outcomes.push(self.settle(row, failed, again, now, &mut failures));
                }
                tracing::info!(%destination, envelopes = rows.len(), "delivered a batch");
            }
            Err(e) => {
                // Refused for good, or not a letter.me domain at all (no `_mailx` record):
                // retrying for days would not change the answer. A peer's bound on blobs
                // in transfer clears as its transfers are named, so that one is retried.
                let permanent = match &e {
                    FederationError::Refused { code, .. } if *code == ErrorCode::BlobLimit => false,
                    FederationError::Refused { status, .. } => {
                        matches!(status, 400 | 403 | 404 | 409 | 413 | 422)
                    }
                    // Once could be a proxy in front of the peer during a redeploy.
                    FederationError::NoBlobs { .. } => {
                        rows.iter().all(|r| r.attempts + 1 >= NO_BLOBS_SIGHTINGS)
                    }
                    FederationError::NoRecord(_)
                    | FederationError::BlobGone { .. }
                    | FederationError::Dns(crate::dns::DnsError::NotFound(_)) => true,
                    _ => false,
                };
                if matches!(
                    e,
                    FederationError::Document { .. }
                        | FederationError::BadResponse { .. }
                        | FederationError::Record { .. }
                ) {
                    self.fed.forget(&destination);
                }
                tracing::warn!(%destination, error = %e, envelopes = rows.len(), "delivery attempt failed");
                retire = permanent;
                let reason = e.notice_text();
                for row in &rows {
                    let list: Vec<(String, String)> = row
                        .recipients
                        .iter()
                        .map(|r| (r.clone(), reason.clone()))
                        .collect();
                    let (failed, again) = if permanent {
                        (list, Vec::new())
                    } else {
                        (Vec::new(), list)
                    };
                    outcomes.push(self.settle(row, failed, again, now, &mut failures));
                }
            }
        }
        let _ = cfg;
        let notices = self.notices(failures, now).await?;
        self.store
            .finish_federation(outcomes, notices, retire)
            .await
    }

    /// Decides a row's fate: done, or retried later for the recipients still worth trying.
    fn settle(
        &self,
        row: &FederationRow,
        mut failed: Vec<(String, String)>,
        again: Vec<(String, String)>,
        now: u64,
        failures: &mut Vec<Failure>,
    ) -> (i64, RowOutcome) {
        let cfg = &self.fed.config;
        let expired = now.saturating_sub(row.queued_at) >= cfg.give_up_after.0;
        let outcome = if again.is_empty() {
            RowOutcome::Done
        } else if expired {
            failed.extend(again.into_iter().map(|(r, why)| {
                (
                    r,
                    format!(
                        "gave up after {} of trying; last error: {why}",
                        cfg.give_up_after
                    ),
                )
            }));
            RowOutcome::Done
        } else {
            let delay = retry_delay(
                cfg.retry_first.0,
                cfg.retry_max.0,
                row.attempts + 1,
                jitter(),
            );
            RowOutcome::Retry {
                error: again[0].1.clone(),
                recipients: again.into_iter().map(|(r, _)| r).collect(),
                next_attempt: now + delay,
            }
        };
        if !failed.is_empty() {
            failures.push(Failure {
                sender: row.sender.clone(),
                what: format!("message (envelope {})", hex(&row.envelope_id)),
                queued_at: row.queued_at,
                recipients: failed,
            });
        }
        (row.id, outcome)
    }

    /// Brings the peer every blob the rows' envelopes name that it does not hold in full
    /// yet, one chunk in memory at a time. The outer error is this server's store.
    async fn push_blobs(
        &self,
        destination: &str,
        rows: &[FederationRow],
    ) -> Result<Result<(), FederationError>, StoreError> {
        if rows.iter().all(|r| r.blobs.is_empty()) {
            return Ok(Ok(()));
        }
        let lane = self
            .blob_lanes
            .lock()
            .map(|mut m| m.entry(destination.to_owned()).or_default().clone())
            .unwrap_or_default();
        let held = lane.lock().await;
        let mut result = Ok(Ok(()));
        'rows: for row in rows {
            for id in &row.blobs {
                match self.push_blob(destination, &row.sender, *id).await {
                    Ok(Ok(())) => {}
                    other => {
                        result = other;
                        break 'rows;
                    }
                }
            }
        }
        drop(held);
        // The last one out removes the lane (the map's reference and ours are all).
        if let Ok(mut m) = self.blob_lanes.lock()
            && Arc::strong_count(&lane) == 2
        {
            m.remove(destination);
        }
        result
    }

    /// Brings blob `id` of an envelope of `sender`'s to `destination` (see
    /// [`FederationQueue::push_blobs`]).
    async fn push_blob(
        &self,
        destination: &str,
        sender: &str,
        id: BlobId,
    ) -> Result<Result<(), FederationError>, StoreError> {
        let gone = || FederationError::BlobGone {
            id: id.to_hex(),
            domain: destination.to_owned(),
        };
        // The envelope's blob, whoever uploaded it (an envelope may name any blob here).
        let Some(blob) = self.store.blob_status(id).await? else {
            return Ok(Err(gone()));
        };
        let peer = match self.fed.peer(destination).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let target = format!("/v1/federation/blobs/{}", id.to_hex());
        let offer = BlobOffer {
            owner: sender.to_owned(),
            size: blob.size,
            manifest: blob.manifest.to_bytes(),
        };
        let body = serde_json::to_vec(&offer).unwrap_or_default();
        let there: BlobState = match self
            .fed
            .call(&peer, reqwest::Method::PUT, &target, body, JSON)
            .await
            .and_then(|(_, answer)| {
                serde_json::from_slice(&answer).map_err(|e| FederationError::Garbled {
                    domain: destination.to_owned(),
                    reason: e.to_string(),
                })
            }) {
            Ok(s) => s,
            // No blob route at all (a server from before blobs answers its unsigned
            // 404): an envelope naming a blob cannot go there.
            Err(FederationError::BadResponse {
                status: 404,
                domain,
                ..
            }) => return Ok(Err(FederationError::NoBlobs { domain })),
            Err(e) => return Ok(Err(e)),
        };
        let mut sent = 0usize;
        for n in 0..blob.manifest.0.len() as u64 {
            if there.stored.binary_search(&n).is_ok() {
                continue;
            }
            let Some(chunk) = self.store.blob_chunk(id, n, None).await? else {
                return Ok(Err(gone()));
            };
            let put = self
                .fed
                .call(
                    &peer,
                    reqwest::Method::PUT,
                    &format!("{target}/{n}"),
                    chunk,
                    OCTETS,
                )
                .await;
            if let Err(e) = put {
                return Ok(Err(e));
            }
            self.chunks_sent.inc();
            sent += 1;
        }
        tracing::debug!(%destination, blob = %id.to_hex(), chunks = sent, "blob brought to the peer");
        Ok(Ok(()))
    }

    async fn send(
        &self,
        destination: &str,
        txid: [u8; 16],
        rows: &[FederationRow],
    ) -> Result<DeliveryReport, FederationError> {
        let peer = self.fed.peer(destination).await?;
        let body = encode_batch_items(
            rows.iter()
                .map(|r| (r.recipients.as_slice(), r.envelope.as_slice())),
        );
        let target = format!("/v1/federation/transactions/{}", hex(&txid));
        let (_, answer) = self
            .fed
            .call(
                &peer,
                reqwest::Method::PUT,
                &target,
                body,
                letterme_protocol::federation::BATCH_CONTENT_TYPE,
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| FederationError::Garbled {
            domain: destination.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Failure notices, sealed to each sender and signed by the domain key.
    async fn notices(
        &self,
        failures: Vec<Failure>,
        now: u64,
    ) -> Result<Vec<NewDelivery>, StoreError> {
        crate::notice::failure_notices(
            &self.store,
            &self.fed.domain,
            self.fed.signing_key(),
            failures,
            now,
        )
        .await
    }
}
