//! Messages: `POST /v1/messages` (send), `GET` (list, long poll), fetch (one or a page)
//! and acknowledge.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use letterme_protocol::api::{
    AckRequest, AckResponse, ENVELOPES_TYPE, ErrorCode, FETCH_BYTES, FetchRequest, ListEntry,
    ListQuery, ListResponse, SendQuery, SendResponse,
};
use letterme_protocol::codec::Writer;
use letterme_protocol::envelope::{Envelope, SignerKind};
use letterme_protocol::{Address, EnvelopeId};

use crate::auth::Session;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::NewDelivery;

use super::{AppResult, Authed, MAX_CLOCK_SKEW, MAX_LIST, St, body_error, json_body, path_param};

pub(super) async fn send(
    State(state): St,
    Authed(session): Authed,
    q: Result<Query<SendQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<(StatusCode, Json<SendResponse>)> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    let limit = state.config.limits.max_message_size.0;
    let body = body.map_err(|e| {
        let mut err = body_error(&e, limit);
        if err.status == StatusCode::PAYLOAD_TOO_LARGE {
            err.detail.code = ErrorCode::MessageTooLarge;
            err.detail.message =
                format!("the message is larger than this server accepts ({limit} bytes)");
        }
        state.metrics.error(err.code());
        err
    })?;
    let result = accept(&state, &session, &body, q.device.as_deref()).await;
    if let Err(e) = &result {
        state.metrics.error(e.code());
    }
    result
}

pub(super) async fn accept(
    state: &AppState,
    session: &Session,
    body: &[u8],
    device: Option<&str>,
) -> AppResult<(StatusCode, Json<SendResponse>)> {
    let env = Envelope::decode(body)
        .map_err(|e| ApiError::bad_request(ErrorCode::MalformedEnvelope, e.to_string()))?;
    if env.signer_kind != SignerKind::User || env.sender != session.address {
        return Err(ApiError::forbidden(
            ErrorCode::SenderMismatch,
            "the envelope's sender is not the logged-in user",
        ));
    }
    if env.signer_key != session.device_key {
        return Err(ApiError::forbidden(
            ErrorCode::SenderMismatch,
            "the envelope is not signed by the key this device logged in with",
        ));
    }
    env.verify_signature().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadSignature,
            "the envelope signature does not verify",
        )
    })?;
    // For one device of our own account only: that device, current.
    let only = match device {
        None => None,
        Some(id) => {
            if env.recipients.iter().any(|r| r.address != session.address) {
                return Err(ApiError::bad_request(
                    ErrorCode::BadDevice,
                    "an envelope for one device goes to your own account only",
                ));
            }
            let devices = state.store.devices(session.address.to_string()).await?;
            let found = devices.iter().find(|d| {
                letterme_protocol::device::device_id(&letterme_protocol::IdentityPublicKey(
                    d.device_key,
                )) == id.to_ascii_lowercase()
            });
            Some(
                found
                    .ok_or_else(|| ApiError::not_found(format!("you have no device {id}")))?
                    .id,
            )
        }
    };
    let now = state.clock.now();
    if env.created.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(ApiError::bad_request(
            ErrorCode::StaleEnvelope,
            "the envelope's time is more than a day off the server's clock",
        ));
    }
    let mut local = Vec::new();
    let mut remote = std::collections::BTreeMap::<String, Vec<String>>::new();
    for r in &env.recipients {
        if r.address.domain() == state.config.domain {
            local.push(r.address.to_string());
        } else {
            remote
                .entry(r.address.domain().to_owned())
                .or_default()
                .push(r.address.to_string());
        }
    }
    if !remote.is_empty() && state.federation.is_none() {
        let list: Vec<String> = remote.values().flatten().cloned().collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::FederationUnavailable,
            format!(
                "{} not on {}, and this server does not federate ([federation] listen is not set)",
                list.join(", "),
                state.config.domain
            ),
        )
        .with_recipients(list));
    }
    let limits = &state.config.limits;
    if remote.len() > limits.max_domains_per_send {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyDomains,
            format!(
                "the envelope goes to {} other domains; at most {} are allowed (limits.max_domains_per_send)",
                remote.len(),
                limits.max_domains_per_send
            ),
        ));
    }
    if !remote.is_empty()
        && !state
            .remote_limit
            .allow_n(&session.address, remote.len() as u32, state.clock.now_f64())
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "too much mail for other domains: {} deliveries a minute (one per envelope and domain); try again later",
                limits.remote_per_minute
            ),
        ));
    }
    let recipients: Vec<Address> = env.recipients.iter().map(|r| r.address.clone()).collect();
    let queued: Vec<String> = remote.values().flatten().cloned().collect();
    let size = body.len() as u64;
    let outbound = remote
        .into_iter()
        .map(|(destination, recipients)| crate::store::NewFederationRow {
            destination,
            recipients,
        })
        .collect::<Vec<_>>();
    let has_remote = !outbound.is_empty();
    state
        .store
        .accept_outgoing(
            NewDelivery {
                id: env.id.0,
                sender: env.sender.to_string(),
                envelope: body.to_vec(),
                blobs: env.blobs.clone(),
                recipients: local,
                received: now,
                quota: state.config.limits.quota.0,
                device: only,
            },
            outbound,
            limits.queued_per_user.0,
        )
        .await?;
    if has_remote {
        state.federation_wake.notify_one();
    }
    state.metrics.deliveries.inc();
    state.metrics.delivered_bytes.inc_by(size);
    tracing::debug!(id = %env.id, sender = %env.sender, recipients = recipients.len(), queued = queued.len(), size, "accepted");
    Ok((
        StatusCode::CREATED,
        Json(SendResponse {
            id: env.id.to_hex(),
            size,
            recipients,
            queued,
        }),
    ))
}

pub use letterme_protocol::api::MAX_WAIT;

pub(super) async fn list(
    State(state): St,
    Authed(session): Authed,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> AppResult<Json<ListResponse>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    let limit = q.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    let me = session.address.to_string();
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT));
    // Only a long poll registers a waiter: plain listing stays off the waiter map.
    let waiter = (!wait.is_zero()).then(|| state.store.waiter(&me));
    let notified = waiter.as_ref().map(|w| w.notified());
    tokio::pin!(notified);
    if let Some(n) = notified.as_mut().as_pin_mut() {
        n.enable();
    }
    let mut rows = state.store.list(session.inbox(), q.after, limit).await?;
    if rows.is_empty()
        && let Some(n) = notified.as_mut().as_pin_mut()
    {
        // Woken by a commit to us, or the wait ends; either way, look again.
        let _ = tokio::time::timeout(wait, n).await;
        rows = state.store.list(session.inbox(), q.after, limit).await?;
    }
    let messages: Vec<ListEntry> = rows
        .into_iter()
        .map(|p| ListEntry {
            id: EnvelopeId(p.id).to_hex(),
            seq: p.seq,
            sender: p.sender,
            size: p.size,
            received: p.received,
        })
        .collect();
    Ok(Json(ListResponse { messages }))
}

/// The ids of a `fetch` or `acknowledge` request: at most a page ([`MAX_LIST`]), each
/// one an envelope id.
fn page_of_ids(ids: &[String], what: &str) -> AppResult<Vec<[u8; 16]>> {
    if ids.len() > MAX_LIST as usize {
        return Err(ApiError::bad_request(
            ErrorCode::TooMany,
            format!("{what} at most {MAX_LIST} ids at once"),
        ));
    }
    ids.iter().map(|s| parse_id(s).map(|i| i.0)).collect()
}

pub(super) fn parse_id(s: &str) -> AppResult<EnvelopeId> {
    EnvelopeId::from_hex(s)
        .ok_or_else(|| ApiError::bad_request(ErrorCode::BadId, "a message id is 32 hex digits"))
}

pub(super) async fn fetch(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<Response> {
    let id = parse_id(&path_param(id)?.0)?;
    let (bytes, received) = state
        .store
        .fetch(session.inbox(), id.0)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message in your mailbox"))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.letterme.envelope".to_owned(),
            ),
            (
                header::HeaderName::from_static("x-letterme-received"),
                received.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /v1/messages/fetch`: a page of envelopes in one answer.
pub(super) async fn fetch_many(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<FetchRequest>, JsonRejection>,
) -> AppResult<Response> {
    let ids = page_of_ids(&json_body(body)?.ids, "fetch")?;
    let found = state
        .store
        .fetch_many(session.inbox(), ids, FETCH_BYTES)
        .await?;
    let mut w = Writer::new();
    for record in &found {
        record.encode_into(&mut w);
    }
    Ok(([(header::CONTENT_TYPE, ENVELOPES_TYPE)], w.into_bytes()).into_response())
}

pub(super) async fn ack_one(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let id = parse_id(&path_param(id)?.0)?;
    let n = state.store.ack(session.inbox(), vec![id.0]).await?;
    if n == 0 {
        return Err(ApiError::not_found("no such message in your mailbox"));
    }
    state.metrics.acks.inc();
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn ack_many(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> AppResult<Json<AckResponse>> {
    let ids = page_of_ids(&json_body(body)?.ids, "acknowledge")?;
    let n = state.store.ack(session.inbox(), ids).await?;
    state.metrics.acks.inc_by(n as u64);
    Ok(Json(AckResponse { deleted: n as u64 }))
}
