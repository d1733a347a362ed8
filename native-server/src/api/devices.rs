//! Devices (DECISIONS D83): `GET /v1/devices`, `POST /v1/devices` and
//! `DELETE /v1/devices/{id}`. Each change is a key-transparency entry naming the digest of
//! the device set after it, so every lookup's proof covers the whole set. The server
//! cannot add a device of its own: each is certified by the identity key, which it never
//! holds.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use letterme_protocol::api::{AddDevicesRequest, DeviceInfo, DeviceList, ErrorCode};
use letterme_protocol::device::{Device, MAX_DEVICES, device_id, verify_set};
use letterme_protocol::{Address, EncryptionPublicKey, IdentityPublicKey};

use crate::auth::Session;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{AccountRow, DeviceRow};

use super::keys::check_key_changes;
use super::{AppResult, Authed, St, json_body, path_param};

fn info(row: &DeviceRow, session: &Session) -> DeviceInfo {
    let device_key = IdentityPublicKey(row.device_key);
    DeviceInfo {
        id: device_id(&device_key),
        device_key,
        encryption_key: EncryptionPublicKey(row.encryption_key),
        added: row.added,
        statement: row.statement.clone(),
        this: row.id == session.device,
    }
}

fn bad_device(why: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::BadDevice, why)
}

/// The account and its current devices.
async fn current(state: &AppState, address: &Address) -> AppResult<(AccountRow, Vec<DeviceRow>)> {
    let account = state
        .store
        .account(address.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("no such account"))?;
    let devices = state.store.devices(address.to_string()).await?;
    Ok((account, devices))
}

async fn listing(
    state: &AppState,
    session: &Session,
    index: Option<u64>,
) -> AppResult<Json<DeviceList>> {
    let devices = state.store.devices(session.address.to_string()).await?;
    Ok(Json(DeviceList {
        devices: devices.iter().map(|d| info(d, session)).collect(),
        index,
    }))
}

/// `GET /v1/devices`: the account's current devices.
pub(super) async fn list(State(state): St, Authed(session): Authed) -> AppResult<Json<DeviceList>> {
    listing(&state, &session, None).await
}

/// The statements of every device of a set, each device's: `None` when one is not certified.
fn statements(devices: &[DeviceRow]) -> Option<Vec<Device>> {
    devices.iter().map(|d| d.statement.clone()).collect()
}

/// The devices a key lookup lists for `address`: its certified set, or none for an
/// account of one device from before devices.
pub(super) async fn listed(
    store: &crate::store::Store,
    address: &Address,
) -> Result<Vec<Device>, crate::store::StoreError> {
    Ok(statements(&store.devices(address.to_string()).await?).unwrap_or_default())
}

/// `POST /v1/devices`: adds devices certified by the identity key.
pub(super) async fn add(
    State(state): St,
    Authed(session): Authed,
    body: Result<Json<AddDevicesRequest>, JsonRejection>,
) -> AppResult<Json<DeviceList>> {
    let req = json_body(body)?;
    let address = session.address.clone();
    if req.devices.is_empty() || req.devices.len() > MAX_DEVICES {
        return Err(bad_device(format!(
            "name between 1 and {MAX_DEVICES} devices"
        )));
    }
    let now = state.clock.now();
    let (account, devices) = current(&state, &address).await?;
    let identity_key = IdentityPublicKey(account.identity_key);
    for d in &req.devices {
        d.verify(&address, &identity_key)
            .map_err(|e| bad_device(format!("device {}: {e}", d.id())))?;
    }
    // Each named device either certifies one of the account's that is not yet, with the
    // same keys, or is new.
    let (mut certified, mut added) = (Vec::new(), Vec::new());
    for d in req.devices {
        match devices.iter().find(|r| r.device_key == d.cert.device_key.0) {
            None => added.push(d),
            Some(r) if r.statement.is_none() && r.encryption_key == d.binding.encryption_key.0 => {
                certified.push(d);
            }
            Some(_) => {
                return Err(bad_device(format!(
                    "device {} is already one of {address}'s",
                    d.id()
                )));
            }
        }
    }
    if added.is_empty() {
        return Err(bad_device("no new device is named"));
    }
    let mut set = Vec::with_capacity(devices.len() + added.len());
    for r in &devices {
        match (
            &r.statement,
            certified
                .iter()
                .find(|d| d.cert.device_key.0 == r.device_key),
        ) {
            (_, Some(d)) | (Some(d), None) => set.push(d.clone()),
            (None, None) => {
                return Err(bad_device(format!(
                    "device {} is not certified yet: certify it in the same request (a device \
                     whose device key is the identity key, binding its encryption key)",
                    device_id(&IdentityPublicKey(r.device_key))
                )));
            }
        }
    }
    set.extend(added.iter().cloned());
    verify_set(&set, &address, &identity_key).map_err(|e| bad_device(e.to_string()))?;
    check_key_changes(&state, &address, now).await?;
    let ids = added.iter().map(Device::id).collect::<Vec<_>>().join(", ");
    let expected = devices.iter().map(|d| d.id).collect();
    let index = state
        .kt
        .add_devices(
            &state.store,
            &account,
            &address,
            expected,
            certified,
            added,
            &set,
            now,
        )
        .await?;
    tracing::info!(%address, devices = %ids, index, "devices added");
    listing(&state, &session, Some(index)).await
}

/// `DELETE /v1/devices/{id}`: the device stops receiving at once — what waits for it is
/// dropped, its sessions end, and mail sealed after the change does not name it.
pub(super) async fn remove(
    State(state): St,
    Authed(session): Authed,
    id: Result<Path<String>, PathRejection>,
) -> AppResult<Json<DeviceList>> {
    let Path(id) = path_param(id)?;
    let address = session.address.clone();
    let now = state.clock.now();
    let (account, devices) = current(&state, &address).await?;
    let gone = devices
        .iter()
        .find(|d| device_id(&IdentityPublicKey(d.device_key)) == id.to_ascii_lowercase())
        .ok_or_else(|| ApiError::not_found(format!("{address} has no device {id}")))?;
    let rest: Vec<DeviceRow> = devices
        .iter()
        .filter(|d| d.id != gone.id)
        .cloned()
        .collect();
    if rest.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BadDevice,
            "this is the account's only device; an account keeps at least one",
        ));
    }
    let set = statements(&rest).ok_or_else(|| {
        bad_device("a remaining device is not certified: link a device first, which certifies it")
    })?;
    check_key_changes(&state, &address, now).await?;
    let expected = devices.iter().map(|d| d.id).collect();
    let index = state
        .kt
        .remove_device(
            &state.store,
            &account,
            &address,
            expected,
            gone.id,
            &set,
            now,
        )
        .await?;
    state.auth.end_device(&address, gone.id);
    tracing::info!(%address, device = %id, index, "device removed");
    listing(&state, &session, Some(index)).await
}
