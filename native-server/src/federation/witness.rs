//! Witnessing other domains' key-transparency logs (issue 7). Every checkpoint of another
//! domain this server comes across — attached to a peer's request, inside a key lookup it
//! passes on, or handed in by one of its users — is checked against the newest one it
//! holds for that domain: the same size must have the same root, and a different size
//! must be proven consistent by the domain itself (one head, a proof from each size). A
//! contradiction between two checkpoints the domain signed is a fork: the evidence is
//! kept, logged, and the domain's keys are refused from then on.

use std::sync::Arc;

use letterme_protocol::api::ErrorCode;
use letterme_protocol::api::kt::{FederationConsistency, WitnessVerdict};
use letterme_protocol::b64;
use letterme_protocol::kt::{Checkpoint, verify_consistency};

use super::{Federation, FederationError};
use crate::metrics::Metrics;
use crate::store::{ForkRow, Store, StoreError};

/// Header in which a server attaches its own latest checkpoint to federation requests:
/// base64 of the checkpoint's JSON.
pub const CHECKPOINT_HEADER: &str = "letterme-kt-checkpoint";
/// Largest header value read.
const MAX_HEADER: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("this server witnesses other domains' logs, not its own")]
    OwnDomain,
    #[error("the checkpoint is not signed by a key {0} publishes in DNS")]
    Unsigned(String),
    #[error("cannot check with {0}: {1}")]
    Federation(String, FederationError),
    #[error("{0} answered with an unreadable consistency proof: {1}")]
    Garbled(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses a checkpoint from the request header, if there is one.
pub fn from_header(headers: &axum::http::HeaderMap) -> Option<Checkpoint> {
    let v = headers.get(CHECKPOINT_HEADER)?.to_str().ok()?;
    if v.len() > MAX_HEADER {
        return None;
    }
    serde_json::from_slice(&b64::decode(v).ok()?).ok()
}

/// The header value for `cp`.
pub fn to_header(cp: &Checkpoint) -> String {
    b64::encode(&serde_json::to_vec(cp).unwrap_or_default())
}

/// Checks `cp` against what this server holds for its domain, and records the outcome.
pub async fn observe(
    fed: &Federation,
    store: &Store,
    metrics: &Metrics,
    cp: &Checkpoint,
    source: &str,
) -> Result<WitnessVerdict, WitnessError> {
    let domain = cp.domain.trim_end_matches('.').to_ascii_lowercase();
    if domain == fed.domain {
        return Err(WitnessError::OwnDomain);
    }
    let fail = |e| WitnessError::Federation(domain.clone(), e);
    let records = fed.records(&domain).await.map_err(fail)?;
    if !records.keys.iter().any(|k| cp.verify(k).is_ok()) {
        return Err(WitnessError::Unsigned(domain));
    }
    let lock = {
        let mut locks = fed
            .witness_locks
            .lock()
            .map_err(|_| WitnessError::Garbled(domain.clone(), "lock poisoned".into()))?;
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(domain.clone()).or_default().clone()
    };
    let _one_at_a_time = lock.lock().await;
    let now = fed.clock.now();
    let held: Option<Checkpoint> = store
        .witnessed(domain.clone())
        .await?
        .and_then(|j| serde_json::from_str(&j).ok());
    let Some(held) = held else {
        store.set_witnessed(domain, json(cp), now).await?;
        return Ok(WitnessVerdict::Consistent {
            checkpoint: cp.clone(),
        });
    };
    let fork = |held: &Checkpoint, other: &Checkpoint, reason: String| {
        let row = ForkRow {
            domain: domain.clone(),
            held: json(held),
            other: json(other),
            source: source.to_owned(),
            reason,
            detected_at: fed.clock.now(),
        };
        record_fork(store, metrics, row, held.clone(), other.clone())
    };
    if held.vrf_key != cp.vrf_key {
        return fork(&held, cp, "the VRF key of the labels differs".into()).await;
    }
    if held.size == cp.size {
        return if held.root == cp.root {
            Ok(WitnessVerdict::Consistent { checkpoint: held })
        } else {
            fork(&held, cp, format!("two roots for size {}", cp.size)).await
        };
    }
    // Ask the domain for one head and a proof from each size to it.
    let (head, proofs) = match fetch_consistency(fed, &domain, &[held.size, cp.size]).await {
        Ok(x) => x,
        Err(WitnessError::Federation(
            _,
            FederationError::Refused {
                code: ErrorCode::BeyondLog,
                ..
            },
        )) => {
            return fork(
                &held,
                cp,
                "the domain's log is now smaller than a size it signed before (rolled back)".into(),
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    if !records.keys.iter().any(|k| head.verify(k).is_ok()) || head.domain != held.domain {
        return Err(WitnessError::Garbled(
            domain,
            "its head checkpoint is not signed by its DNS key, or names another domain".into(),
        ));
    }
    if head.vrf_key != held.vrf_key {
        return fork(&held, &head, "the VRF key of the labels differs".into()).await;
    }
    if let Err(e) = verify_consistency(&held, &head, &proofs[0]) {
        return fork(&held, &head, e.to_string()).await;
    }
    if let Err(e) = verify_consistency(cp, &head, &proofs[1]) {
        return fork(&head, cp, e.to_string()).await;
    }
    store.set_witnessed(domain, json(&head), now).await?;
    Ok(WitnessVerdict::Consistent { checkpoint: head })
}

fn json(cp: &Checkpoint) -> String {
    serde_json::to_string(cp).unwrap_or_default()
}

async fn record_fork(
    store: &Store,
    metrics: &Metrics,
    row: ForkRow,
    held: Checkpoint,
    other: Checkpoint,
) -> Result<WitnessVerdict, WitnessError> {
    tracing::error!(
        domain = %row.domain,
        source = %row.source,
        reason = %row.reason,
        held_size = held.size,
        other_size = other.size,
        "key-transparency fork: the domain signed two checkpoints that cannot both hold; its keys are refused"
    );
    metrics.error(&ErrorCode::KtFork);
    let reason = row.reason.clone();
    store.add_fork(row).await?;
    Ok(WitnessVerdict::Fork {
        held,
        other,
        reason,
    })
}

/// `GET /v1/federation/kt/consistency?from=A&also=B` on the domain's server.
async fn fetch_consistency(
    fed: &Federation,
    domain: &str,
    sizes: &[u64; 2],
) -> Result<(Checkpoint, Vec<Vec<u8>>), WitnessError> {
    let fail = |e| WitnessError::Federation(domain.to_owned(), e);
    let peer = fed.peer(domain).await.map_err(fail)?;
    let target = format!(
        "/v1/federation/kt/consistency?from={}&also={}",
        sizes[0], sizes[1]
    );
    let (_, body) = fed
        .call(&peer, reqwest::Method::GET, &target, Vec::new(), "")
        .await
        .map_err(fail)?;
    let garbled = |e: String| WitnessError::Garbled(domain.to_owned(), e);
    let a: FederationConsistency =
        serde_json::from_slice(&body).map_err(|e| garbled(e.to_string()))?;
    let proofs = a
        .proofs
        .iter()
        .map(|p| b64::decode(p).map_err(|e| garbled(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if proofs.len() != 2 {
        return Err(garbled("expected two proofs".into()));
    }
    Ok((a.checkpoint, proofs))
}

/// Whether an observation of `domain` is running now.
pub fn busy(fed: &Federation, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    fed.witness_locks
        .lock()
        .ok()
        .and_then(|locks| locks.get(&domain).cloned())
        .is_some_and(|l| l.try_lock().is_err())
}

/// The newest fork on record for `domain`, if any.
pub async fn forked(store: &Store, domain: &str) -> Result<Option<ForkRow>, StoreError> {
    Ok(store
        .forks(domain.to_ascii_lowercase())
        .await?
        .into_iter()
        .next())
}
