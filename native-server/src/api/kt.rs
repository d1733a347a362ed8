//! The key-transparency log: `/v1/kt/...` (checkpoint, consistency, mine, entries, witness,
//! witnessed).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use letterme_protocol::api::kt::{
    CheckpointResponse, ConsistencyQuery, ConsistencyResponse, EntriesPage, EntriesQuery, Fork,
    WitnessRequest, WitnessVerdict, Witnessed,
};
use letterme_protocol::api::{ErrorCode, LookupQuery};
use letterme_protocol::b64;

use crate::error::ApiError;

use super::{
    AppResult, Authed, St, UNWITNESSED, check_lookups, json_body, path_param, peer_failed,
};

/// `GET /v1/kt/checkpoint`: the log's current signed checkpoint and the VRF key of its
/// labels.
pub(super) async fn checkpoint(State(state): St) -> Json<CheckpointResponse> {
    let cp = state
        .kt
        .checkpoint(&state.config.domain, state.clock.now(), &state.domain_key)
        .await;
    Json(CheckpointResponse {
        checkpoint: cp,
        vrf_key: b64::encode(&state.kt.vrf.public()),
    })
}

/// `GET /v1/kt/consistency?from=N`: the current checkpoint and the proof that it extends
/// the log's first N entries.
pub(super) async fn consistency(
    State(state): St,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> AppResult<Json<ConsistencyResponse>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    let Some((cp, mut proofs)) = state
        .kt
        .consistency(
            &[q.from],
            &state.config.domain,
            state.clock.now(),
            &state.domain_key,
        )
        .await
    else {
        return Err(ApiError::bad_request(
            ErrorCode::BeyondLog,
            format!("the log has fewer than {} entries", q.from),
        ));
    };
    let proof = proofs.pop().unwrap_or_default();
    Ok(Json(ConsistencyResponse {
        checkpoint: cp,
        proof: b64::encode(&proof),
    }))
}

/// `GET /v1/kt/mine?since=N`: every log entry under the caller's own label, with proofs,
/// so the client can see each key ever logged for its address.
pub(super) async fn mine(
    State(state): St,
    Authed(session): Authed,
    q: Result<Query<LookupQuery>, QueryRejection>,
) -> AppResult<Json<letterme_protocol::kt::KtHistory>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    Ok(Json(
        state
            .kt
            .history_for(
                &state.store,
                &session.address,
                q.since,
                &state.config.domain,
                state.clock.now(),
                &state.domain_key,
            )
            .await?,
    ))
}

/// `GET /v1/kt/entries?domain=D&start=N&limit=M`: a page of a domain's log (this one's, or
/// another's fetched over federation) with that domain's current checkpoint, for audits.
pub(super) async fn entries(
    State(state): St,
    Authed(session): Authed,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> AppResult<Json<EntriesPage>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    check_lookups(&state, &session)?;
    let limit = q
        .limit
        .unwrap_or(crate::kt::ENTRIES_PAGE)
        .min(crate::kt::ENTRIES_PAGE);
    let domain = q.domain.map_or_else(
        || state.config.domain.clone(),
        |d| d.trim_end_matches('.').to_ascii_lowercase(),
    );
    if domain == state.config.domain {
        let (cp, entries) = state
            .kt
            .entries(
                &state.store,
                q.start,
                limit,
                &state.config.domain,
                state.clock.now(),
                &state.domain_key,
            )
            .await?;
        let entries: Vec<String> = entries.iter().map(|e| b64::encode(e)).collect();
        return Ok(Json(EntriesPage {
            checkpoint: cp,
            entries,
            start: q.start,
        }));
    }
    if !letterme_protocol::address::valid_domain(&domain) {
        return Err(ApiError::bad_request(
            ErrorCode::BadDomain,
            "not a domain name",
        ));
    }
    let fed = state.federation.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::FederationUnavailable,
            "this server does not federate, so it cannot reach other domains' logs",
        )
    })?;
    let failed = |e: crate::federation::FederationError| peer_failed(&domain, e.summary(), &e);
    let peer = fed.peer(&domain).await.map_err(failed)?;
    let target = format!("/v1/federation/kt/entries?start={}&limit={limit}", q.start);
    let (_, body) = fed
        .call(&peer, reqwest::Method::GET, &target, Vec::new(), "")
        .await
        .map_err(failed)?;
    let page: EntriesPage = serde_json::from_slice(&body)
        .map_err(|e| peer_failed(&domain, "sent a page of its log that does not parse", &e))?;
    Ok(Json(page))
}

/// `POST /v1/kt/witness`: a user hands in a checkpoint of another domain it was shown;
/// this server checks it against what it saw of that domain (DESIGN.md §7.4).
pub(super) async fn witness(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<WitnessRequest>, JsonRejection>,
) -> AppResult<Json<WitnessVerdict>> {
    use crate::federation::witness::{WitnessError, observe};
    let req = json_body(body)?;
    check_lookups(&state, &session)?;
    let Some(fed) = &state.federation else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::FederationUnavailable,
            "this server does not federate, so it witnesses no other domain's log",
        ));
    };
    let source = "a checkpoint a user handed in";
    match observe(fed, &state.store, &state.metrics, &req.checkpoint, source).await {
        Ok(v) => Ok(Json(v)),
        Err(e @ (WitnessError::OwnDomain | WitnessError::Unsigned(_))) => Err(
            ApiError::bad_request(ErrorCode::NotWitnessed, e.to_string()),
        ),
        Err(WitnessError::Store(e)) => Err(e.into()),
        Err(e) => Err(peer_failed(
            req.checkpoint.domain.trim_end_matches('.'),
            UNWITNESSED,
            &e,
        )),
    }
}

/// `GET /v1/kt/witnessed/{domain}`: the newest checkpoint of `domain` this server holds,
/// and the forks it caught (public: all of it is signed by that domain).
pub(super) async fn witnessed(
    State(state): St,
    domain: Result<Path<String>, PathRejection>,
) -> AppResult<Json<Witnessed>> {
    let Path(domain) = path_param(domain)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let checkpoint = state
        .store
        .witnessed(domain.clone())
        .await?
        .and_then(|j| serde_json::from_str(&j).ok());
    let forks = state
        .store
        .forks(domain.clone())
        .await?
        .into_iter()
        .map(|f| Fork {
            detected_at: f.detected_at,
            held: serde_json::from_str(&f.held).ok(),
            other: serde_json::from_str(&f.other).ok(),
            reason: f.reason,
            source: f.source,
        })
        .collect();
    Ok(Json(Witnessed {
        checkpoint,
        domain,
        forks,
    }))
}
