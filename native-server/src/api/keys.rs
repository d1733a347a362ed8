//! Keys: `GET /v1/keys/{address}` (local and, over federation, other domains'),
//! `POST /v1/keys/rotate` and `/v1/keys/revoke`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use letterme_protocol::api::kt::WitnessVerdict;
use letterme_protocol::api::{
    ErrorCode, KeyChangeRequest, KeyChangeResponse, KeyLookup, LookupQuery,
};
use letterme_protocol::keys::Signature;
use letterme_protocol::{Address, Attestation, IdentityPublicKey};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::AccountRow;

use super::{
    AppResult, Authed, St, UNWITNESSED, WITNESS_WAIT, account_row, check_binding, check_lookups,
    json_body, parse_address, path_param, peer_failed,
};

/// `POST /v1/keys/rotate`: a new encryption key replaces the current one; mail sealed to
/// the old one still opens on the client for the overlap period.
pub(super) async fn rotate_key(
    state: St,
    authed: Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
) -> AppResult<Json<KeyChangeResponse>> {
    change_key(state, authed, body, letterme_protocol::kt::KeyOp::Rotate).await
}

/// `POST /v1/keys/revoke`: as rotate, for a key that must not be trusted any more (no
/// overlap on the client).
pub(super) async fn revoke_key(
    state: St,
    authed: Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
) -> AppResult<Json<KeyChangeResponse>> {
    change_key(state, authed, body, letterme_protocol::kt::KeyOp::Revoke).await
}

pub(super) async fn change_key(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<KeyChangeRequest>, JsonRejection>,
    op: letterme_protocol::kt::KeyOp,
) -> AppResult<Json<KeyChangeResponse>> {
    let b = json_body(body)?.binding;
    check_lookups(&state, &session)?;
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
    let now = check_binding(&state, &b)?;
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
    if !super::devices::listed(&state.store, &b.address)
        .await?
        .is_empty()
    {
        // The account's key is its first device's, certified in its device set: a new
        // one would leave the set naming the old.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BadDevice,
            "this account has linked devices: its encryption keys are its devices' (rotating \
             a device's key is not supported yet; remove the device and link it anew)",
        ));
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
    check_key_changes(&state, &b.address, now).await?;
    let version = current.key_version.checked_add(1).ok_or_else(|| {
        ApiError::bad_request(ErrorCode::TooManyVersions, "no key version is left")
    })?;
    let attestation = Attestation::issue(&b, version, &state.domain_key);
    let index = state
        .kt
        .change_keys(
            &state.store,
            account_row(&b, &attestation, current.registered_at, current.usage_bytes),
            op,
            &b.address,
            now,
        )
        .await?;
    tracing::info!(address = %b.address, version, ?op, "encryption key changed");
    Ok(Json(KeyChangeResponse { attestation, index }))
}

/// Refuses a change of `address`'s keys or devices past `limits.key_changes_per_day`: each
/// is a log entry kept forever, so a few a day per account.
pub(super) async fn check_key_changes(
    state: &AppState,
    address: &Address,
    now: u64,
) -> AppResult<()> {
    let recent = state
        .kt
        .recent_changes(&state.store, address, now.saturating_sub(86_400))
        .await?;
    if recent >= u64::from(state.config.limits.key_changes_per_day) {
        state.metrics.error(&ErrorCode::TooManyKeyChanges);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyKeyChanges,
            format!(
                "at most {} key and device changes in 24 hours; try again later",
                state.config.limits.key_changes_per_day
            ),
        ));
    }
    Ok(())
}

/// Refuses a domain whose log this server caught forking.
pub(super) async fn refuse_forked(state: &AppState, domain: &str) -> AppResult<()> {
    if let Some(f) = crate::federation::witness::forked(&state.store, domain).await? {
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

pub(super) async fn lookup(
    State(state): St,
    Authed(session): Authed,
    address: Result<Path<String>, PathRejection>,
    q: Result<Query<LookupQuery>, QueryRejection>,
) -> AppResult<Json<KeyLookup>> {
    let Path(address) = path_param(address)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(ErrorCode::BadQuery, e.body_text()))?;
    check_lookups(&state, &session)?;
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
                    devices: vec![],
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
                letterme_protocol::federation::RemoteKeys {
                    address: address.clone(),
                    found: false,
                    attestation: None,
                    kt: None,
                    devices: vec![],
                }
            }
            Err(e) => return Err(peer_failed(address.domain(), e.summary(), &e)),
        };
        if let Some(kt) = &found.kt {
            // We witness the domain's log with every lookup we pass on.
            // The domain must prove the checkpoint consistent with what we saw before; a
            // domain that cannot (or will not) gets its key refused, not passed on.
            let observed = tokio::time::timeout(
                WITNESS_WAIT,
                crate::federation::witness::observe(
                    fed,
                    &state.store,
                    &state.metrics,
                    &kt.checkpoint,
                    "a key lookup",
                ),
            )
            .await;
            let unchecked = |why: String| peer_failed(address.domain(), UNWITNESSED, &why);
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
            devices: found.devices,
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
    let devices = if attestation.is_some() {
        super::devices::listed(&state.store, &address).await?
    } else {
        vec![]
    };
    Ok(Json(KeyLookup {
        address,
        found: attestation.is_some(),
        attestation,
        kt,
        legacy: false,
        devices,
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
