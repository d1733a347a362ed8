//! The HTTP/JSON API (`docs/API.md`).
//!
//! Handlers check input, then hand durable work to the store; a 2xx means committed.
//! Every failure is a JSON error with a stable code: unknown routes, bad JSON, oversized
//! bodies and panics included.
//!
//! One file per resource, as `docs/API.md` groups them; the server-to-server listener's
//! routes (`docs/PROTOCOL.md` §17) are in [`peer`].

mod accounts;
mod blobs;
mod blocks;
mod devices;
mod keys;
mod kt;
mod link;
mod messages;
mod outbound;
pub mod peer;
mod server;

pub use keys::attestation_of;
pub use messages::MAX_WAIT;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use letterme_protocol::api::{ErrorCode, ErrorLimit};
use letterme_protocol::net::client_prefix;
use letterme_protocol::{Address, KeyBinding};

use crate::auth::{Session, TokenError};
use crate::error::ApiError;
use crate::state::AppState;

/// Version of the API and envelope format this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// Envelopes may be this far from the server's clock (seconds).
pub const MAX_CLOCK_SKEW: u64 = 24 * 3600;
/// Envelopes from peers may be this old (seconds): the longest a sending server retries
/// (`federation.give_up_after`, at most [`crate::config::MAX_GIVE_UP`]) and a day of
/// clock skew.
pub const MAX_ENVELOPE_AGE: u64 = crate::config::MAX_GIVE_UP + MAX_CLOCK_SKEW;
/// Largest page of `GET /v1/messages`.
pub const MAX_LIST: u32 = 1000;
/// Longest a key lookup of another domain waits for its checkpoint to be witnessed (a
/// consistency proof fetched from that domain); the client checks the proofs itself.
pub const WITNESS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) type AppResult<T> = Result<T, ApiError>;
pub(super) type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let max_msg = usize::try_from(state.config.limits.max_message_size.0).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(server::healthz))
        .route("/metrics", get(server::metrics))
        .route("/v1/server", get(server::server_info))
        .route("/.well-known/mta-sts.txt", get(server::mta_sts))
        .route("/v1/accounts", post(accounts::register))
        .route("/v1/auth/challenge", post(accounts::challenge))
        .route("/v1/auth/token", post(accounts::token))
        .route("/v1/keys/{address}", get(keys::lookup))
        .route("/v1/kt/checkpoint", get(kt::checkpoint))
        .route("/v1/kt/consistency", get(kt::consistency))
        .route("/v1/kt/mine", get(kt::mine))
        .route("/v1/kt/entries", get(kt::entries))
        .route("/v1/kt/witness", post(kt::witness))
        .route("/v1/kt/witnessed/{domain}", get(kt::witnessed))
        .route("/v1/keys/rotate", post(keys::rotate_key))
        .route("/v1/keys/revoke", post(keys::revoke_key))
        .route("/v1/devices", get(devices::list).post(devices::add))
        .route("/v1/devices/{id}", delete(devices::remove))
        .route("/v1/link", post(link::open))
        .route(
            "/v1/link/{address}/{slot}",
            get(link::read).put(link::join).post(link::answer),
        )
        .route(
            "/v1/messages",
            post(messages::send)
                .layer(DefaultBodyLimit::max(max_msg))
                .get(messages::list),
        )
        .route("/v1/messages/ack", post(messages::ack_many))
        .route("/v1/messages/fetch", post(messages::fetch_many))
        .route(
            "/v1/blobs",
            post(blobs::begin).layer(DefaultBodyLimit::max(blobs::begin_limit(
                state.config.limits.max_attachment_size.0,
            ))),
        )
        .route("/v1/blobs/{id}", get(blobs::status).delete(blobs::discard))
        .route(
            "/v1/blobs/{id}/{n}",
            get(blobs::get_chunk)
                .put(blobs::put_chunk)
                .layer(DefaultBodyLimit::max(letterme_protocol::blob::SEALED_CHUNK)),
        )
        .route(
            "/v1/outbound",
            post(outbound::submit).layer(DefaultBodyLimit::max(
                max_msg.saturating_mul(4) / 3 + MAX_JSON_BODY,
            )),
        )
        .route(
            "/v1/blocks",
            get(blocks::list_blocks)
                .post(blocks::add_block)
                .delete(blocks::remove_block),
        )
        .route(
            "/v1/messages/{id}",
            get(messages::fetch).delete(messages::ack_one),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see docs/API.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

pub(super) fn json_body<T>(r: Result<Json<T>, JsonRejection>) -> AppResult<T> {
    match r {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::BytesRejection(b)) => Err(body_error(&b, MAX_JSON_BODY as u64)),
        Err(e) => Err(ApiError::bad_request(ErrorCode::BadJson, e.body_text())),
    }
}

pub(super) fn body_error(e: &BytesRejection, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("the request body is larger than this server accepts ({limit} bytes)"),
        )
        .with_limit(ErrorLimit::Bytes(limit))
    } else {
        ApiError::bad_request(ErrorCode::BadBody, e.body_text())
    }
}

pub(super) fn path_param(p: Result<Path<String>, PathRejection>) -> AppResult<Path<String>> {
    p.map_err(|e| ApiError::bad_request(ErrorCode::BadPath, e.body_text()))
}

pub(super) fn parse_address(s: &str) -> AppResult<Address> {
    Address::parse(s).map_err(|e| ApiError::bad_request(ErrorCode::BadAddress, e.to_string()))
}

pub(super) fn check_ip(state: &AppState, addr: SocketAddr) -> AppResult<()> {
    if state
        .ip_limit
        .allow(&client_prefix(addr.ip()), state.clock.now_f64())
    {
        Ok(())
    } else {
        state.metrics.error(&ErrorCode::RateLimited);
        Err(ApiError::rate_limited())
    }
}

/// What [`peer_failed`] says when another domain's log cannot be witnessed.
pub(super) const UNWITNESSED: &str =
    "cannot show its key-transparency log consistent with what this server saw before";

/// The account row a verified key binding and its attestation describe.
pub(super) fn account_row(
    b: &KeyBinding,
    attestation: &letterme_protocol::Attestation,
    registered_at: u64,
    usage_bytes: u64,
) -> crate::store::AccountRow {
    crate::store::AccountRow {
        address: b.address.to_string(),
        identity_key: b.identity_key.0,
        encryption_key: b.encryption_key.0,
        key_created: b.created,
        key_version: attestation.version,
        binding_signature: b.signature.0,
        attestation_sig: attestation.signature.0,
        registered_at,
        usage_bytes,
    }
}

/// Another domain's server failed us: the user gets a fixed text naming the domain and
/// the kind of failure; the detail, which may carry the peer's own words, goes to the log
/// only (D62).
pub(super) fn peer_failed(domain: &str, what: &str, detail: &dyn std::fmt::Display) -> ApiError {
    tracing::info!(domain, error = %detail, "a request to another domain's server failed");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::PeerFailed,
        format!("the letter.me server of {domain} {what}; this server's log has the details"),
    )
}

/// Counts a key or log lookup against the caller's `key_lookups_per_second`.
pub(super) fn check_lookups(state: &AppState, session: &Session) -> AppResult<()> {
    if state
        .lookup_limit
        .allow(&session.address, state.clock.now_f64())
    {
        Ok(())
    } else {
        state.metrics.error(&ErrorCode::RateLimited);
        Err(ApiError::rate_limited())
    }
}

/// A key binding a user hands in (registration, key change) is signed by its identity key
/// and made within [`MAX_CLOCK_SKEW`] of the server's clock; returns the server's time.
pub(super) fn check_binding(state: &AppState, b: &KeyBinding) -> AppResult<u64> {
    b.verify().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadSignature,
            "the key binding is not signed by the identity key",
        )
    })?;
    let now = state.clock.now();
    if b.created.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(ApiError::bad_request(
            ErrorCode::Stale,
            "the key binding's time is more than a day off the server's clock",
        ));
    }
    Ok(now)
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
#[derive(Debug)]
pub struct Authed(pub Session);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                ErrorCode::MissingToken,
                "log in first: Authorization: Bearer <token>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    ErrorCode::InvalidToken,
                    "expected Authorization: Bearer <token>",
                )
            })?;
        match state.auth.session(token.trim(), state.clock.now()) {
            Ok(s) => Ok(Self(s)),
            Err(TokenError::Expired) => Err(ApiError::unauthorized(
                ErrorCode::ExpiredToken,
                "the token has expired; log in again",
            )),
            Err(TokenError::Invalid) => Err(ApiError::unauthorized(
                ErrorCode::InvalidToken,
                "unknown token; log in again",
            )),
        }
    }
}
