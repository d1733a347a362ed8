//! Blobs (`/v1/blobs`, PROTOCOL.md §19a): uploading a large attachment, sealed by its
//! sender, in chunks that the store checks against the upload's manifest, and reading
//! where an upload stands (to resume it) or a chunk back — the uploader, and the
//! recipients of a pending message that names the blob.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use letterme_protocol::api::{BlobBegin, BlobState, ErrorCode};
use letterme_protocol::blob::{BlobId, Manifest, SEALED_CHUNK};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{BlobStatus, NewBlob};

use super::{AppResult, Authed, St, body_error, json_body, path_param};

pub(super) fn parse_blob_id(s: &str) -> AppResult<BlobId> {
    BlobId::from_hex(s)
        .ok_or_else(|| ApiError::bad_request(ErrorCode::BadId, "a blob id is 64 hex digits"))
}

pub(super) fn state_of(id: BlobId, s: BlobStatus) -> BlobState {
    BlobState {
        id: id.to_hex(),
        size: s.size,
        chunks: s.manifest.0.len() as u64,
        stored: s.stored,
        manifest: s.manifest.to_bytes(),
    }
}

/// `POST /v1/blobs`: begins an upload, or answers where the same upload stands (201 for a
/// new one, 200 for one begun before).
pub(super) async fn begin(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<BlobBegin>, JsonRejection>,
) -> AppResult<Response> {
    let req = json_body(body)?;
    let id = parse_blob_id(&req.id)?;
    let (status, s) = begin_in(
        &state,
        id,
        session.address.to_string(),
        None,
        req.size,
        &req.manifest,
    )
    .await?;
    Ok((status, Json(s)).into_response())
}

/// Begins (or resumes) an upload of `owner`'s, or of a blob `origin` brings for its sender
/// `owner`: `201` for a new one, `200` for one begun before.
pub(super) async fn begin_in(
    state: &AppState,
    id: BlobId,
    owner: String,
    origin: Option<String>,
    size: u64,
    manifest: &[u8],
) -> AppResult<(StatusCode, BlobState)> {
    let manifest = Manifest::from_bytes(manifest).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::BadBlob,
            "a manifest is 32 bytes per chunk",
        )
    })?;
    let before = state.store.blob_status(id).await?.is_some();
    let s = state
        .store
        .blob_begin(NewBlob {
            id,
            owner,
            origin,
            size,
            manifest,
            created: state.clock.now(),
            max_size: state.config.limits.max_attachment_size.0,
            per_owner: state.config.limits.blob_bytes_per_user.0,
            per_origin: state.config.federation.blob_bytes_per_peer.0,
            all_origins: state.config.federation.blob_bytes_all_peers.0,
        })
        .await?;
    let status = if before {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, state_of(id, s)))
}

/// Room for a body that begins an upload, with the manifest of the largest blob the server
/// takes (32 bytes a chunk, as base64).
pub(super) fn begin_limit(max_attachment_size: u64) -> usize {
    let chunks = letterme_protocol::blob::sealed_chunks(max_attachment_size).unwrap_or(1);
    usize::try_from(chunks * 32 * 4 / 3)
        .unwrap_or(usize::MAX)
        .saturating_add(1024)
        .max(super::MAX_JSON_BODY)
}

/// `GET /v1/blobs/{id}`: where the caller's upload stands, or the blob a pending message
/// to the caller names.
pub(super) async fn status(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<Json<BlobState>> {
    let id = parse_blob_id(&path_param(id)?.0)?;
    let s = state
        .store
        .readable_blob(id, session.address.to_string())
        .await?
        .ok_or(crate::store::StoreError::NoBlob)?;
    Ok(Json(state_of(id, s)))
}

/// `DELETE /v1/blobs/{id}`: gives up an upload of the caller's that no message names (a
/// send that failed after its uploads), so it stops counting against the caller's limits
/// at once; `204`. A blob a message names stays until its recipients are done with it.
pub(super) async fn discard(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let id = parse_blob_id(&path_param(id)?.0)?;
    if state
        .store
        .blob_discard(id, session.address.to_string())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "no upload of yours by that id that no message names",
        ))
    }
}

pub(super) fn chunk_path(
    p: Result<Path<(String, String)>, PathRejection>,
) -> AppResult<(BlobId, u64)> {
    let Path((id, n)) = p.map_err(|e| ApiError::bad_request(ErrorCode::BadPath, e.body_text()))?;
    let n = n.parse().map_err(|_| {
        ApiError::bad_request(ErrorCode::BadPath, "a chunk number is a decimal integer")
    })?;
    Ok((parse_blob_id(&id)?, n))
}

/// `PUT /v1/blobs/{id}/{n}`: one sealed chunk, checked against the manifest (so any
/// logged-in user holding it may add it; the blob's owner is whoever began it).
pub(super) async fn put_chunk(
    State(state): St,
    Authed(_session): Authed,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<Json<BlobState>> {
    let (id, n) = chunk_path(path)?;
    let data = body.map_err(|e| body_error(&e, SEALED_CHUNK as u64))?;
    let s = state.store.blob_put(id, n, data).await?;
    Ok(Json(state_of(id, s)))
}

/// `GET /v1/blobs/{id}/{n}`: a stored chunk of the caller's blob, or of a blob a pending
/// message to the caller names.
pub(super) async fn get_chunk(
    State(state): St,
    Authed(session): Authed,
    path: Result<Path<(String, String)>, PathRejection>,
) -> AppResult<Response> {
    let (id, n) = chunk_path(path)?;
    let data = state
        .store
        .blob_chunk(id, n, Some(session.address.to_string()))
        .await?
        .ok_or_else(|| ApiError::not_found("no such chunk"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}
