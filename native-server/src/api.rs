//! The HTTP/JSON API (`docs/API.md`).
//!
//! Handlers check input, then hand durable work to the store; a 2xx means committed.
//! Every failure is a JSON error with a stable code: unknown routes, bad JSON, oversized
//! bodies and panics included.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use letterme_protocol::api::kt::{
    CheckpointResponse, ConsistencyQuery, ConsistencyResponse, EntriesPage, EntriesQuery, Fork,
    WitnessRequest, WitnessVerdict, Witnessed,
};
use letterme_protocol::api::{
    AckRequest, AckResponse, BlockChange, BlockRequest, BlocksResponse, ChallengeRequest,
    ChallengeResponse, ErrorCode, ErrorLimit, Health, KeyChangeRequest, KeyChangeResponse,
    KeyLookup, ListEntry, ListQuery, ListResponse, LookupQuery, RegisterRequest, RegisterResponse,
    RegistrationMode, SendResponse, ServerInfo, TokenRequest, TokenResponse,
};
use letterme_protocol::auth::verify_challenge;
use letterme_protocol::envelope::{Envelope, SignerKind};
use letterme_protocol::keys::Signature;
use letterme_protocol::{Address, Attestation, EnvelopeId, IdentityPublicKey, b64};
use sha2::{Digest as _, Sha256};

use crate::auth::{Auth, RateLimiter, Session, TokenError};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{AccountRow, NewDelivery, Store};
use crate::{Clock, PROTOCOL_VERSION};

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// Envelopes may be this far from the server's clock (seconds).
pub const MAX_CLOCK_SKEW: u64 = 24 * 3600;
/// Largest page of `GET /v1/messages`.
pub const MAX_LIST: u32 = 1000;
/// Longest a key lookup of another domain waits for its checkpoint to be witnessed (a
/// consistency proof fetched from that domain); the client checks the proofs itself.
pub const WITNESS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared state of the API.
pub struct AppState {
    pub config: Config,
    pub domain_key: letterme_protocol::SigningKeypair,
    pub store: Store,
    pub auth: Auth,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub lookup_limit: RateLimiter<Address>,
    pub ip_limit: RateLimiter<IpAddr>,
    /// Set when `[federation] listen` is configured.
    pub federation: Option<Arc<crate::federation::Federation>>,
    /// Wakes the federation queue after mail for another domain is queued.
    pub federation_wake: Arc<tokio::sync::Notify>,
    /// Set when `[outbound] mode` is relay or notice.
    pub outbound: Option<Arc<crate::outbound::api::OutboundState>>,
    /// The key-transparency log.
    pub kt: Arc<crate::kt::KtState>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}

type AppResult<T> = Result<T, ApiError>;
type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let max_msg = usize::try_from(state.config.limits.max_message_size.0).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/server", get(server_info))
        .route("/.well-known/mta-sts.txt", get(mta_sts))
        .route("/v1/accounts", post(register))
        .route("/v1/auth/challenge", post(challenge))
        .route("/v1/auth/token", post(token))
        .route("/v1/keys/{address}", get(lookup))
        .route("/v1/kt/checkpoint", get(kt_checkpoint))
        .route("/v1/kt/consistency", get(kt_consistency))
        .route("/v1/kt/mine", get(kt_mine))
        .route("/v1/kt/entries", get(kt_entries))
        .route("/v1/kt/witness", post(kt_witness))
        .route("/v1/kt/witnessed/{domain}", get(kt_witnessed))
        .route("/v1/keys/rotate", post(rotate_key))
        .route("/v1/keys/revoke", post(revoke_key))
        .route(
            "/v1/messages",
            post(send).layer(DefaultBodyLimit::max(max_msg)).get(list),
        )
        .route("/v1/messages/ack", post(ack_many))
        .route(
            "/v1/outbound",
            post(crate::outbound::api::submit).layer(DefaultBodyLimit::max(
                max_msg.saturating_mul(4) / 3 + MAX_JSON_BODY,
            )),
        )
        .route(
            "/v1/blocks",
            get(list_blocks).post(add_block).delete(remove_block),
        )
        .route("/v1/messages/{id}", get(fetch).delete(ack_one))
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

fn json_body<T>(r: Result<Json<T>, JsonRejection>) -> AppResult<T> {
    match r {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::BytesRejection(b)) => Err(body_error(&b, MAX_JSON_BODY as u64)),
        Err(e) => Err(ApiError::bad_request(ErrorCode::BadJson, e.body_text())),
    }
}

fn body_error(e: &BytesRejection, limit: u64) -> ApiError {
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

fn path_param(p: Result<Path<String>, PathRejection>) -> AppResult<Path<String>> {
    p.map_err(|e| ApiError::bad_request(ErrorCode::BadPath, e.body_text()))
}

fn parse_address(s: &str) -> AppResult<Address> {
    Address::parse(s).map_err(|e| ApiError::bad_request(ErrorCode::BadAddress, e.to_string()))
}

fn check_ip(state: &AppState, addr: SocketAddr) -> AppResult<()> {
    if state.ip_limit.allow(&addr.ip(), state.clock.now_f64()) {
        Ok(())
    } else {
        state.metrics.error(&ErrorCode::RateLimited);
        Err(ApiError::rate_limited())
    }
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

async fn healthz(State(state): St) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Health {
            status: "ok".into(),
        })
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "database unavailable".into(),
            }),
        )
            .into_response(),
    }
}

async fn metrics(State(state): St) -> Response {
    if let Ok(n) = state.store.account_count().await {
        state
            .metrics
            .accounts
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /.well-known/mta-sts.txt` (RFC 8461 §3.3), when a policy is configured.
async fn mta_sts(State(state): St) -> Response {
    match crate::outbound::mta_sts_policy(&state.config) {
        Some(p) => ([(header::CONTENT_TYPE, "text/plain")], p).into_response(),
        None => ApiError::not_found("no MTA-STS policy is configured ([outbound] mta_sts)")
            .into_response(),
    }
}

/// `GET /v1/kt/checkpoint`: the log's current signed checkpoint and the VRF key of its
/// labels.
async fn kt_checkpoint(State(state): St) -> Json<CheckpointResponse> {
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
async fn kt_consistency(
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
async fn kt_mine(
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

/// `POST /v1/keys/rotate`: a new encryption key replaces the current one; mail sealed to
/// the old one still opens on the client for the overlap period.
async fn rotate_key(
    state: St,
    authed: Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
) -> AppResult<Json<KeyChangeResponse>> {
    change_key(state, authed, body, letterme_protocol::kt::KeyOp::Rotate).await
}

/// `POST /v1/keys/revoke`: as rotate, for a key that must not be trusted any more (no
/// overlap on the client).
async fn revoke_key(
    state: St,
    authed: Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
) -> AppResult<Json<KeyChangeResponse>> {
    change_key(state, authed, body, letterme_protocol::kt::KeyOp::Revoke).await
}

async fn change_key(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
    op: letterme_protocol::kt::KeyOp,
) -> AppResult<Json<KeyChangeResponse>> {
    let b = json_body(body)?.binding;
    if !state
        .lookup_limit
        .allow(&session.address, state.clock.now_f64())
    {
        state.metrics.error(&ErrorCode::RateLimited);
        return Err(ApiError::rate_limited());
    }
    if b.address != session.address {
        return Err(ApiError::forbidden(
            ErrorCode::WrongAddress,
            "the key binding is for another address than the logged-in one",
        ));
    }
    if b.identity_key != session.identity_key {
        return Err(ApiError::forbidden(
            ErrorCode::IdentityChanged,
            "a new encryption key must be bound to your current identity key",
        ));
    }
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
    let current = state
        .store
        .account(b.address.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("no such account"))?;
    if current.encryption_key == b.encryption_key.0 && current.key_created == b.created {
        // The same request again (the answer was lost): the change is already made.
        let index = state
            .kt
            .latest_index(&state.store, &b.address)
            .await?
            .unwrap_or(0);
        return Ok(Json(KeyChangeResponse {
            attestation: attestation_of(&b.address, &current),
            index,
        }));
    }
    if current.encryption_key == b.encryption_key.0 {
        return Err(ApiError::bad_request(
            ErrorCode::SameKey,
            "this is the current encryption key; generate a new one",
        ));
    }
    if b.created <= current.key_created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Stale,
            "the key binding is older than the current key's",
        ));
    }
    // Each change is a log entry kept forever: a few a day per account.
    let recent = state
        .kt
        .recent_changes(&state.store, &b.address, now.saturating_sub(86_400))
        .await?;
    if recent >= u64::from(state.config.limits.key_changes_per_day) {
        state.metrics.error(&ErrorCode::TooManyKeyChanges);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyKeyChanges,
            format!(
                "at most {} key changes in 24 hours; try again later",
                state.config.limits.key_changes_per_day
            ),
        ));
    }
    let version = current.key_version.checked_add(1).ok_or_else(|| {
        ApiError::bad_request(ErrorCode::TooManyVersions, "no key version is left")
    })?;
    let attestation = Attestation::issue(&b, version, &state.domain_key);
    let index = state
        .kt
        .change_keys(
            &state.store,
            AccountRow {
                address: b.address.to_string(),
                identity_key: b.identity_key.0,
                encryption_key: b.encryption_key.0,
                key_created: b.created,
                key_version: version,
                binding_signature: b.signature.0,
                attestation_sig: attestation.signature.0,
                registered_at: current.registered_at,
                usage_bytes: current.usage_bytes,
            },
            op,
            &b.address,
            now,
        )
        .await?;
    tracing::info!(address = %b.address, version, ?op, "encryption key changed");
    Ok(Json(KeyChangeResponse { attestation, index }))
}

/// Refuses a domain whose log this server caught forking.
async fn refuse_forked(state: &AppState, domain: &str) -> AppResult<()> {
    if let Some(f) = crate::federation::witness::forked(state, domain).await? {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::KtFork,
            format!(
                "the key-transparency log of {domain} forked ({}; source: {}): this server refuses its keys; the evidence is at GET /v1/kt/witnessed/{domain}",
                f.reason, f.source
            ),
        ));
    }
    Ok(())
}

/// `GET /v1/kt/entries?domain=D&start=N&limit=M`: a page of a domain's log (this one's, or
/// another's fetched over federation) with that domain's current checkpoint, for audits.
async fn kt_entries(
    State(state): St,
    Authed(session): Authed,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> AppResult<Json<EntriesPage>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    if !state
        .lookup_limit
        .allow(&session.address, state.clock.now_f64())
    {
        state.metrics.error(&ErrorCode::RateLimited);
        return Err(ApiError::rate_limited());
    }
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
    let peer_failed = |e: crate::federation::FederationError| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::PeerFailed,
            e.to_string(),
        )
    };
    let peer = fed.peer(&domain).await.map_err(peer_failed)?;
    let target = format!("/v1/federation/kt/entries?start={}&limit={limit}", q.start);
    let (_, body) = fed
        .call(&peer, reqwest::Method::GET, &target, Vec::new())
        .await
        .map_err(peer_failed)?;
    let page: EntriesPage = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::PeerFailed,
            e.to_string(),
        )
    })?;
    Ok(Json(page))
}

/// `POST /v1/kt/witness`: a user hands in a checkpoint of another domain it was shown;
/// this server checks it against what it saw of that domain (DESIGN.md §7.4).
async fn kt_witness(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<WitnessRequest>, JsonRejection>,
) -> AppResult<Json<WitnessVerdict>> {
    use crate::federation::witness::{WitnessError, observe};
    let req = json_body(body)?;
    if !state
        .lookup_limit
        .allow(&session.address, state.clock.now_f64())
    {
        return Err(ApiError::rate_limited());
    }
    match observe(&state, &req.checkpoint, "a checkpoint a user handed in").await {
        Ok(v) => Ok(Json(v)),
        Err(WitnessError::Federation(_, crate::federation::FederationError::Disabled)) => {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::FederationUnavailable,
                "this server does not federate, so it witnesses no other domain's log",
            ))
        }
        Err(e @ (WitnessError::OwnDomain | WitnessError::Unsigned(_))) => Err(
            ApiError::bad_request(ErrorCode::NotWitnessed, e.to_string()),
        ),
        Err(WitnessError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::PeerFailed,
            e.to_string(),
        )),
    }
}

/// `GET /v1/kt/witnessed/{domain}`: the newest checkpoint of `domain` this server holds,
/// and the forks it caught (public: all of it is signed by that domain).
async fn kt_witnessed(
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

async fn server_info(State(state): St) -> Json<ServerInfo> {
    Json(ServerInfo {
        domain: state.config.domain.clone(),
        domain_key: state.domain_key.public(),
        protocol: PROTOCOL_VERSION,
        max_message_size: state.config.limits.max_message_size.0,
        quota: state.config.limits.quota.0,
        registration: state.config.registration.mode,
        outbound: state.config.outbound.mode,
    })
}

async fn register(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> AppResult<(StatusCode, Json<RegisterResponse>)> {
    check_ip(&state, peer)?;
    let req = json_body(body)?;
    let b = &req.binding;
    if !b
        .address
        .domain()
        .eq_ignore_ascii_case(&state.config.domain)
    {
        return Err(ApiError::forbidden(
            ErrorCode::WrongDomain,
            format!(
                "this server registers addresses @{} only",
                state.config.domain
            ),
        ));
    }
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
    let invite_hash = match state.config.registration.mode {
        RegistrationMode::Open => None,
        RegistrationMode::Invite => {
            let token = req.invite.as_deref().ok_or_else(|| {
                ApiError::forbidden(
                    ErrorCode::InviteRequired,
                    "this server registers by invitation; pass an invite token",
                )
            })?;
            // Compare digests, so the time taken says nothing about the configured tokens.
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let valid = state
                .config
                .registration
                .invites
                .iter()
                .fold(false, |found, t| {
                    found | (<[u8; 32]>::from(Sha256::digest(t.as_bytes())) == digest)
                });
            if !valid {
                return Err(ApiError::forbidden(
                    ErrorCode::InvalidInvite,
                    "this invite token is not valid",
                ));
            }
            Some(digest)
        }
    };
    let attestation = Attestation::issue(b, 1, &state.domain_key);
    state
        .kt
        .register(
            &state.store,
            AccountRow {
                address: b.address.to_string(),
                identity_key: b.identity_key.0,
                encryption_key: b.encryption_key.0,
                key_created: b.created,
                key_version: 1,
                binding_signature: b.signature.0,
                attestation_sig: attestation.signature.0,
                registered_at: now,
                usage_bytes: 0,
            },
            invite_hash,
            &b.address,
        )
        .await?;
    state.metrics.registrations.inc();
    tracing::info!(address = %b.address, "account registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            attestation,
            domain_key: state.domain_key.public(),
        }),
    ))
}

async fn challenge(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> AppResult<Json<ChallengeResponse>> {
    check_ip(&state, peer)?;
    let address = parse_address(&json_body(body)?.address)?;
    let now = state.clock.now();
    let c = state
        .auth
        .challenge(&address, now)
        .ok_or_else(ApiError::rate_limited)?;
    Ok(Json(ChallengeResponse {
        challenge: b64::encode(&c),
        domain: state.config.domain.clone(),
        expires: now + crate::auth::CHALLENGE_TTL,
    }))
}

async fn token(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> AppResult<Json<TokenResponse>> {
    check_ip(&state, peer)?;
    let req = json_body(body)?;
    let address = parse_address(&req.address)?;
    let challenge: [u8; 32] = b64::decode_array(&req.challenge).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::BadChallenge,
            "challenge must be base64 of 32 bytes",
        )
    })?;
    let now = state.clock.now();
    let denied = || {
        state.metrics.error(&ErrorCode::LoginFailed);
        ApiError::unauthorized(
            ErrorCode::LoginFailed,
            "the challenge is unknown or expired, or the signature does not verify",
        )
    };
    if !state.auth.take_challenge(&challenge, &address, now) {
        return Err(denied());
    }
    let account = state
        .store
        .account(address.to_string())
        .await?
        .ok_or_else(denied)?;
    let key = IdentityPublicKey(account.identity_key);
    verify_challenge(
        &key,
        &state.config.domain,
        &address,
        &challenge,
        &req.signature,
    )
    .map_err(|_| denied())?;
    let (token, expires) = state
        .auth
        .issue(address, key, now)
        .ok_or_else(ApiError::rate_limited)?;
    state.metrics.logins.inc();
    Ok(Json(TokenResponse { expires, token }))
}

async fn lookup(
    State(state): St,
    Authed(session): Authed,
    address: Result<Path<String>, PathRejection>,
    q: Result<Query<LookupQuery>, QueryRejection>,
) -> AppResult<Json<KeyLookup>> {
    let Path(address) = path_param(address)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    if !state
        .lookup_limit
        .allow(&session.address, state.clock.now_f64())
    {
        state.metrics.error(&ErrorCode::RateLimited);
        return Err(ApiError::rate_limited());
    }
    let address = parse_address(&address)?;
    state.metrics.key_lookups.inc();
    if address.domain() != state.config.domain {
        let Some(fed) = &state.federation else {
            if state.outbound.is_some() {
                // Without federation, every other domain is reached as ordinary email.
                return Ok(Json(KeyLookup {
                    address,
                    found: false,
                    attestation: None,
                    kt: None,
                    legacy: true,
                }));
            }
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::FederationUnavailable,
                format!("{address} is on another domain, and this server does not federate"),
            ));
        };
        refuse_forked(&state, address.domain()).await?;
        let mut legacy = false;
        let found = match fed.lookup(&address, q.since).await {
            Ok(f) => f,
            // No `_mailx` record: not a letter.me domain, so no letter.me key.
            Err(
                crate::federation::FederationError::NoRecord(_)
                | crate::federation::FederationError::Dns(crate::dns::DnsError::NotFound(_)),
            ) => {
                legacy = true;
                crate::federation::RemoteKeys {
                    address: address.clone(),
                    found: false,
                    attestation: None,
                    kt: None,
                }
            }
            Err(e) => {
                tracing::info!(%address, error = %e, "remote key lookup failed");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::PeerFailed,
                    e.to_string(),
                ));
            }
        };
        if let Some(kt) = &found.kt {
            // We witness the domain's log with every lookup we pass on.
            // The domain must prove the checkpoint consistent with what we saw before; a
            // domain that cannot (or will not) gets its key refused, not passed on.
            let observed = tokio::time::timeout(
                WITNESS_WAIT,
                crate::federation::witness::observe(&state, &kt.checkpoint, "a key lookup"),
            )
            .await;
            let unchecked = |why: String| {
                tracing::info!(%address, reason = %why, "cannot witness a checkpoint");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::PeerFailed,
                    format!(
                        "cannot check the key-transparency log of {} against what this server saw before: {why}",
                        address.domain()
                    ),
                )
            };
            match observed {
                Ok(Ok(WitnessVerdict::Fork { .. })) => {
                    refuse_forked(&state, address.domain()).await?;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(unchecked(e.to_string())),
                Err(_) => {
                    return Err(unchecked(format!(
                        "no answer within {} s",
                        WITNESS_WAIT.as_secs()
                    )));
                }
            }
        }
        return Ok(Json(KeyLookup {
            address,
            found: found.found,
            attestation: found.attestation,
            kt: found.kt,
            legacy,
        }));
    }
    let row = state.store.account(address.to_string()).await?;
    let attestation = row.map(|r| attestation_of(&address, &r));
    let kt = if attestation.is_some() {
        state
            .kt
            .proof_for(
                &state.store,
                &address,
                q.since,
                &state.config.domain,
                state.clock.now(),
                &state.domain_key,
            )
            .await?
    } else {
        None
    };
    Ok(Json(KeyLookup {
        address,
        found: attestation.is_some(),
        attestation,
        kt,
        legacy: false,
    }))
}

/// The attestation stored for an account.
pub fn attestation_of(address: &Address, r: &AccountRow) -> Attestation {
    Attestation {
        address: address.clone(),
        identity_key: IdentityPublicKey(r.identity_key),
        encryption_key: letterme_protocol::EncryptionPublicKey(r.encryption_key),
        created: r.key_created,
        version: r.key_version,
        binding_signature: Signature(r.binding_signature),
        signature: Signature(r.attestation_sig),
    }
}

async fn send(
    State(state): St,
    Authed(session): Authed,
    body: Result<Bytes, BytesRejection>,
) -> AppResult<(StatusCode, Json<SendResponse>)> {
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
    let result = accept(&state, &session, &body).await;
    if let Err(e) = &result {
        state.metrics.error(e.code());
    }
    result
}

async fn accept(
    state: &AppState,
    session: &Session,
    body: &[u8],
) -> AppResult<(StatusCode, Json<SendResponse>)> {
    let env = Envelope::decode(body)
        .map_err(|e| ApiError::bad_request(ErrorCode::MalformedEnvelope, e.to_string()))?;
    if env.signer_kind != SignerKind::User || env.sender != session.address {
        return Err(ApiError::forbidden(
            ErrorCode::SenderMismatch,
            "the envelope's sender is not the logged-in user",
        ));
    }
    if env.signer_key != session.identity_key {
        return Err(ApiError::forbidden(
            ErrorCode::SenderMismatch,
            "the envelope is not signed by your identity key",
        ));
    }
    env.verify_signature().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadSignature,
            "the envelope signature does not verify",
        )
    })?;
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
                recipients: local,
                received: now,
                quota: state.config.limits.quota.0,
            },
            outbound,
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

/// Longest long-poll wait, in seconds.
pub const MAX_WAIT: u64 = 60;

async fn list(
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
    let mut rows = state.store.list(me.clone(), q.after, limit).await?;
    if rows.is_empty()
        && let Some(n) = notified.as_mut().as_pin_mut()
    {
        // Woken by a commit to us, or the wait ends; either way, look again.
        let _ = tokio::time::timeout(wait, n).await;
        rows = state.store.list(me, q.after, limit).await?;
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

fn parse_id(s: &str) -> AppResult<EnvelopeId> {
    EnvelopeId::from_hex(s)
        .ok_or_else(|| ApiError::bad_request(ErrorCode::BadId, "a message id is 32 hex digits"))
}

async fn fetch(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<Response> {
    let id = parse_id(&path_param(id)?.0)?;
    let (bytes, received) = state
        .store
        .fetch(session.address.to_string(), id.0)
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

async fn ack_one(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let id = parse_id(&path_param(id)?.0)?;
    let n = state
        .store
        .ack(session.address.to_string(), vec![id.0])
        .await?;
    if n == 0 {
        return Err(ApiError::not_found("no such message in your mailbox"));
    }
    state.metrics.acks.inc();
    Ok(StatusCode::NO_CONTENT)
}

async fn ack_many(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> AppResult<Json<AckResponse>> {
    let req = json_body(body)?;
    if req.ids.len() > MAX_LIST as usize {
        return Err(ApiError::bad_request(
            ErrorCode::TooMany,
            format!("acknowledge at most {MAX_LIST} ids at once"),
        ));
    }
    let ids = req
        .ids
        .iter()
        .map(|s| parse_id(s).map(|i| i.0))
        .collect::<AppResult<Vec<_>>>()?;
    let n = state.store.ack(session.address.to_string(), ids).await?;
    state.metrics.acks.inc_by(n as u64);
    Ok(Json(AckResponse { deleted: n as u64 }))
}

/// Normalizes a block entry: an address, or `@domain` for a whole domain.
fn block_entry(raw: &str) -> AppResult<String> {
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

async fn list_blocks(State(state): St, Authed(session): Authed) -> AppResult<Json<BlocksResponse>> {
    let blocks = state.store.blocks(session.address.to_string()).await?;
    Ok(Json(BlocksResponse { blocks }))
}

async fn add_block(
    state: St,
    session: Authed,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> AppResult<Json<BlockChange>> {
    change_block(state, session, body, true).await
}

async fn remove_block(
    state: St,
    session: Authed,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> AppResult<Json<BlockChange>> {
    change_block(state, session, body, false).await
}

/// `POST` (`add`) and `DELETE /v1/blocks`: one entry in or out of the user's list.
async fn change_block(
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
