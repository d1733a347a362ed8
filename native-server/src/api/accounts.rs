//! Accounts and login: `POST /v1/accounts`, `/v1/auth/challenge`, `/v1/auth/token`.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use letterme_protocol::api::{
    ChallengeRequest, ChallengeResponse, ErrorCode, RegisterRequest, RegisterResponse,
    RegistrationMode, TokenRequest, TokenResponse,
};
use letterme_protocol::auth::verify_challenge;
use letterme_protocol::{Attestation, IdentityPublicKey, b64};
use sha2::{Digest as _, Sha256};

use crate::auth::Session;
use crate::error::ApiError;

use super::{AppResult, St, account_row, check_binding, check_ip, json_body, parse_address};

pub(super) async fn register(
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
    let now = check_binding(&state, b)?;
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
            account_row(b, &attestation, now, 0),
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

pub(super) async fn challenge(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> AppResult<Json<ChallengeResponse>> {
    check_ip(&state, peer)?;
    let address = parse_address(&json_body(body)?.address)?;
    let now = state.clock.now();
    let c = state.auth.challenge(&address, now);
    Ok(Json(ChallengeResponse {
        challenge: b64::encode(&c),
        domain: state.config.domain.clone(),
        expires: now + crate::auth::CHALLENGE_TTL,
    }))
}

pub(super) async fn token(
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
    if !state.auth.challenge_valid(&challenge, &address, now) {
        return Err(denied());
    }
    let account = state
        .store
        .account(address.to_string())
        .await?
        .ok_or_else(denied)?;
    let identity_key = IdentityPublicKey(account.identity_key);
    let key = req.device_key.unwrap_or(identity_key);
    verify_challenge(
        &key,
        &state.config.domain,
        &address,
        &challenge,
        &req.signature,
    )
    .map_err(|_| denied())?;
    // Spent only now, after the signature verified: strangers cannot use up anything.
    if !state.auth.spend(&challenge, now) {
        return Err(denied());
    }
    // The device is looked up only now, so only its holder learns that it was removed.
    let device = state
        .store
        .device_by_key(address.to_string(), key.0)
        .await?
        .ok_or_else(denied)?;
    if device.removed.is_some() {
        return Err(ApiError::unauthorized(
            ErrorCode::DeviceRemoved,
            format!("this device was removed from {address}; link it again to use it"),
        ));
    }
    let session = Session {
        address,
        identity_key,
        device: device.id,
        device_key: key,
        expires: 0,
    };
    let (token, expires) = state
        .auth
        .issue(session, now)
        .ok_or_else(ApiError::rate_limited)?;
    state.metrics.logins.inc();
    Ok(Json(TokenResponse { expires, token }))
}
