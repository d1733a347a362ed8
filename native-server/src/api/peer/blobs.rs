//! Blobs another domain brings (PROTOCOL.md §17.5a): before an envelope that names blobs,
//! its origin offers each blob (`PUT /v1/federation/blobs/{id}`), learns which chunks are
//! here, and sends the missing ones (`PUT /v1/federation/blobs/{id}/{n}`), each checked
//! against the manifest as a local upload's is. A blob a peer brings first is owned by the
//! envelope's sender, an address of the origin, and counts against that origin's bound on
//! what it can make this server hold before an envelope names it
//! (`federation.blob_bytes_per_peer`). A blob already here (brought by another domain that
//! shares a recipient, or uploaded by a local user) is the same bytes: the offer answers
//! where it stands, and anyone holding its chunks may complete it.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use letterme_protocol::Address;
use letterme_protocol::api::{ErrorBody, ErrorCode};
use letterme_protocol::blob::SEALED_CHUNK;
use letterme_protocol::federation::BlobOffer;

use super::{St, authenticate, fed, read_body, signed};
use crate::api::blobs::{begin_in, begin_limit, chunk_path, parse_blob_id, state_of};
use crate::error::ApiError;
use crate::federation::budget::BodyBudget;

/// An error answer, signed and bound to the request's nonce like every other.
fn refuse(state: &crate::state::AppState, nonce: [u8; 16], e: ApiError) -> Response {
    state.metrics.error(e.code());
    signed(fed(state), e.status, nonce, &ErrorBody { error: e.detail })
}

fn body_refused((status, code, message): (StatusCode, ErrorCode, String)) -> ApiError {
    ApiError::new(status, code, message)
}

/// `PUT /v1/federation/blobs/{id}`: offers a blob; the answer says which chunks are here.
pub(super) async fn offer(
    State(state): St,
    Extension(budget): Extension<Arc<BodyBudget>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let sig = match authenticate(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // Lower case already (`RequestSignature::from_headers`).
    let origin = sig.origin.clone();
    let answer = async {
        let id = parse_blob_id(
            &id.map_err(|e| ApiError::bad_request(ErrorCode::BadPath, e.body_text()))?
                .0,
        )?;
        let max = begin_limit(state.config.limits.max_attachment_size.0) as u64;
        let body = read_body(&budget, &sig, &headers, body, max)
            .await
            .map_err(body_refused)?;
        let offer: BlobOffer = serde_json::from_slice(&body.bytes)
            .map_err(|e| ApiError::bad_request(ErrorCode::BadJson, e.to_string()))?;
        let owner = Address::parse(&offer.owner)
            .ok()
            .filter(|a| a.domain().eq_ignore_ascii_case(&origin))
            .ok_or_else(|| {
                ApiError::forbidden(
                    ErrorCode::SenderMismatch,
                    format!("a blob's owner is an address of its origin domain, {origin}"),
                )
            })?;
        begin_in(
            &state,
            id,
            owner.to_string(),
            Some(origin.clone()),
            offer.size,
            &offer.manifest,
        )
        .await
    }
    .await;
    match answer {
        Ok((status, blob)) => signed(fed(&state), status, sig.nonce, &blob),
        Err(e) => refuse(&state, sig.nonce, e),
    }
}

/// `PUT /v1/federation/blobs/{id}/{n}`: one sealed chunk of a blob the origin offered.
pub(super) async fn chunk(
    State(state): St,
    Extension(budget): Extension<Arc<BodyBudget>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Response {
    let sig = match authenticate(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let answer = async {
        let (id, n) = chunk_path(path)?;
        // The reservation holds the chunk's bytes until it is stored.
        let super::Received { bytes, _held } =
            read_body(&budget, &sig, &headers, body, SEALED_CHUNK as u64)
                .await
                .map_err(body_refused)?;
        let s = state.store.blob_put(id, n, bytes).await?;
        Ok::<_, ApiError>(state_of(id, s))
    }
    .await;
    match answer {
        Ok(blob) => signed(fed(&state), StatusCode::OK, sig.nonce, &blob),
        Err(e) => refuse(&state, sig.nonce, e),
    }
}
