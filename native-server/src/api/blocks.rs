//! `/v1/blocks`: the user's list of blocked senders.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use letterme_protocol::Address;
use letterme_protocol::api::{BlockChange, BlockRequest, BlocksResponse, ErrorCode};

use crate::error::ApiError;

use super::{AppResult, Authed, St, json_body};

/// Normalizes a block entry: an address, or `@domain` for a whole domain.
pub(super) fn block_entry(raw: &str) -> AppResult<String> {
    let t = raw.trim();
    if let Some(domain) = t.strip_prefix('@') {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if letterme_protocol::address::valid_domain(&d) {
            return Ok(format!("@{d}"));
        }
    } else if let Ok(a) = Address::parse(t) {
        return Ok(a.to_string());
    }
    Err(ApiError::bad_request(
        ErrorCode::BadEntry,
        "block an address (someone@example.com) or a domain (@example.com)",
    ))
}

pub(super) async fn list_blocks(
    State(state): St,
    Authed(session): Authed,
) -> AppResult<Json<BlocksResponse>> {
    let blocks = state.store.blocks(session.address.to_string()).await?;
    Ok(Json(BlocksResponse { blocks }))
}

pub(super) async fn add_block(
    state: St,
    session: Authed,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> AppResult<Json<BlockChange>> {
    change_block(state, session, body, true).await
}

pub(super) async fn remove_block(
    state: St,
    session: Authed,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> AppResult<Json<BlockChange>> {
    change_block(state, session, body, false).await
}

/// `POST` (`add`) and `DELETE /v1/blocks`: one entry in or out of the user's list.
pub(super) async fn change_block(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<BlockRequest>, JsonRejection>,
    add: bool,
) -> AppResult<Json<BlockChange>> {
    let entry = block_entry(&json_body(body)?.entry)?;
    let changed = state
        .store
        .set_block(
            session.address.to_string(),
            entry.clone(),
            add,
            state.clock.now(),
        )
        .await?;
    Ok(Json(BlockChange { changed, entry }))
}
