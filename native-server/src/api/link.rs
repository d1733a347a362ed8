//! Linking a device, relayed (PROTOCOL.md §6b): `POST /v1/link` opens a slot,
//! `GET /v1/link/{address}/{slot}` reads it (long poll), `PUT /v1/link/{address}/{slot}`
//! posts the new device's request (no login: the new device has none yet; once per slot),
//! `POST /v1/link/{address}/{slot}` the opening device's answer.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use letterme_protocol::api::{
    ErrorCode, LinkMessage, LinkMessages, LinkOpened, LinkQuery, MAX_WAIT,
};
use letterme_protocol::link::{LinkCode, MAX_LINK_MESSAGE};

use crate::error::ApiError;
use crate::link::PostError;

use super::{AppResult, Authed, St, check_ip, json_body, parse_address};

fn message(m: LinkMessage) -> AppResult<Vec<u8>> {
    if m.message.is_empty() || m.message.len() > MAX_LINK_MESSAGE {
        return Err(ApiError::bad_request(
            ErrorCode::TooLarge,
            format!("a link message is 1 to {MAX_LINK_MESSAGE} bytes"),
        ));
    }
    Ok(m.message)
}

fn no_link() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NoLink,
        "no such link: the code is wrong or expired",
    )
}

fn slot_path(p: Result<Path<(String, String)>, PathRejection>) -> AppResult<(String, String)> {
    let Path((address, slot)) =
        p.map_err(|e| ApiError::bad_request(ErrorCode::BadPath, e.body_text()))?;
    let address = parse_address(&address)?.to_string();
    if !LinkCode::valid_slot(&slot) {
        return Err(no_link());
    }
    Ok((address, slot))
}

/// `POST /v1/link`: opens a slot with the opening device's first message.
pub(super) async fn open(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<LinkMessage>, JsonRejection>,
) -> AppResult<(StatusCode, Json<LinkOpened>)> {
    let first = message(json_body(body)?)?;
    let (slot, expires) = state
        .links
        .open(
            session.address.as_str(),
            session.device,
            first,
            state.clock.now(),
        )
        .ok_or_else(ApiError::rate_limited)?;
    Ok((StatusCode::CREATED, Json(LinkOpened { slot, expires })))
}

/// `GET /v1/link/{address}/{slot}?from=&wait=`: the slot's messages from `from` on.
pub(super) async fn read(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<LinkQuery>, QueryRejection>,
) -> AppResult<Json<LinkMessages>> {
    check_ip(&state, peer)?;
    let (address, slot) = slot_path(path)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT));
    let look = || {
        state
            .links
            .read(&address, &slot, q.from, state.clock.now())
            .ok_or_else(no_link)
    };
    let (mut found, changed) = look()?;
    if found.is_empty() && !wait.is_zero() {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Posted between the look and the enable: look again before waiting.
        found = look()?.0;
        if found.is_empty() {
            let _ = tokio::time::timeout(wait, notified).await;
            found = look()?.0;
        }
    }
    Ok(Json(LinkMessages {
        messages: found
            .into_iter()
            .map(|message| LinkMessage { message })
            .collect(),
    }))
}

fn posted(r: Result<(), PostError>) -> AppResult<StatusCode> {
    match r {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PostError::NoSlot) => Err(no_link()),
        Err(PostError::Used) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::LinkUsed,
            "this code was used already; show a new one with `letterme device link`",
        )),
        Err(PostError::NotYours) => Err(ApiError::forbidden(
            ErrorCode::NoLink,
            "only the device that showed the code answers, once, after the request",
        )),
    }
}

/// `PUT /v1/link/{address}/{slot}`: the new device's request, once per slot.
pub(super) async fn join(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<LinkMessage>, JsonRejection>,
) -> AppResult<StatusCode> {
    check_ip(&state, peer)?;
    let (address, slot) = slot_path(path)?;
    let m = message(json_body(body)?)?;
    posted(
        state
            .links
            .post(&address, &slot, None, m, state.clock.now()),
    )
}

/// `POST /v1/link/{address}/{slot}`: the opening device's answer.
pub(super) async fn answer(
    State(state): St,
    Authed(session): Authed,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<LinkMessage>, JsonRejection>,
) -> AppResult<StatusCode> {
    let (address, slot) = slot_path(path)?;
    if address != session.address.as_str() {
        return Err(ApiError::forbidden(
            ErrorCode::WrongAddress,
            "a link is answered by a device of its own account",
        ));
    }
    let m = message(json_body(body)?)?;
    posted(
        state
            .links
            .post(&address, &slot, Some(session.device), m, state.clock.now()),
    )
}
