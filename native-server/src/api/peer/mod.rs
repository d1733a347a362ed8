//! The server-to-server listener: the server document, deliveries from peers, and key
//! lookups by peers. Every request must be signed by a key the origin publishes in DNS;
//! every answer is signed by this domain's key and bound to the request's nonce.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;

use axum::Extension;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use letterme_protocol::Address;
use letterme_protocol::api::kt::{EntriesPage, FederationConsistency};
use letterme_protocol::api::{ErrorBody, ErrorCode, ErrorDetail};
use letterme_protocol::envelope::{Envelope, SignerKind};
use letterme_protocol::federation::{
    self, RequestSignature, ResponseSignature, SignatureError, decode_batch_items,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{MAX_CLOCK_SKEW, MAX_ENVELOPE_AGE};
use crate::federation::budget::{
    BodyBudget, Reservation, body_budget, body_deadline, max_batch_bytes,
};
use crate::federation::{Federation, NonceCheck, witness};
use crate::state::AppState;
use crate::store::StoreError;
use letterme_protocol::federation::RemoteKeys;

mod blobs;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    // One budget for the bodies of deliveries and blobs alike.
    let budget = body_budget(state.config.limits.max_message_size.0);
    Router::new()
        .route("/.well-known/mailx-server", get(document))
        .route(
            "/v1/federation/transactions/{txid}",
            put(transaction).layer(Extension(budget.clone())),
        )
        .route(
            "/v1/federation/blobs/{id}",
            put(blobs::offer).layer(Extension(budget.clone())),
        )
        .route(
            "/v1/federation/blobs/{id}/{n}",
            put(blobs::chunk).layer(Extension(budget)),
        )
        .route("/v1/federation/keys/{address}", get(keys))
        .route("/v1/federation/kt/consistency", get(kt_consistency))
        .route("/v1/federation/kt/entries", get(kt_entries))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(ErrorBody {
                    error: ErrorDetail::new(
                        ErrorCode::NotFound,
                        "no such federation endpoint; see docs/PROTOCOL.md §17",
                    ),
                }),
            )
        })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

fn fed(state: &AppState) -> &Arc<Federation> {
    state
        .federation
        .as_ref()
        .expect("the federation listener runs only with federation configured")
}

async fn document(State(state): St) -> Response {
    axum::Json(fed(&state).document()).into_response()
}

/// An answer signed by this domain, bound to the request's nonce.
fn signed(
    fed: &Federation,
    status: StatusCode,
    nonce: [u8; 16],
    body: &impl Serialize,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let sig = ResponseSignature::sign(
        fed.signing_key(),
        status.as_u16(),
        nonce,
        &bytes,
        &fed.domain,
        fed.clock.now(),
    );
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in sig.headers() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

fn error(
    fed: &Federation,
    status: StatusCode,
    nonce: [u8; 16],
    code: ErrorCode,
    message: &str,
) -> Response {
    signed(
        fed,
        status,
        nonce,
        &ErrorBody {
            error: ErrorDetail::new(code, message),
        },
    )
}

/// The signature headers of a request, parsed (not yet verified).
fn request_signature(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<RequestSignature, SignatureError> {
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    RequestSignature::from_headers(method.as_str(), target, |n| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned)
    })
}

/// Checks a request's signature headers, the origin's key in DNS, the origin's rate and
/// the nonce, all before any body is read (issue 15.2); the error is the signed 401 (or
/// 429, 503) to answer with. The body, if any, is then checked against the signed digest
/// ([`read_body`], [`authenticate_bodiless`]).
async fn authenticate(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<RequestSignature, Response> {
    let fed = fed(state);
    let refuse = |nonce: [u8; 16], e: &SignatureError| {
        state.metrics.error(&e.code());
        tracing::info!(reason = %e, "refused a federation request");
        error(
            fed,
            StatusCode::UNAUTHORIZED,
            nonce,
            e.code(),
            &e.to_string(),
        )
    };
    let sig = request_signature(method, uri, headers).map_err(|e| refuse([0; 16], &e))?;
    sig.verify_headers(&fed.domain, fed.clock.now())
        .map_err(|e| refuse(sig.nonce, &e))?;
    match fed.origin_keys(&sig.origin, &sig.key).await {
        Ok(r) if r.keys.contains(&sig.key) => {}
        Ok(_) => {
            return Err(refuse(
                sig.nonce,
                &SignatureError::UnknownKey(sig.origin.clone()),
            ));
        }
        Err(e) => {
            tracing::info!(origin = %sig.origin, error = %e, "cannot verify a federation request's origin");
            state.metrics.error(&ErrorCode::UnknownOriginKey);
            return Err(error(
                fed,
                StatusCode::UNAUTHORIZED,
                sig.nonce,
                ErrorCode::UnknownOriginKey,
                &format!("cannot find the keys of {}: {e}", sig.origin),
            ));
        }
    }
    // Every signed request costs its origin a token (a batch one more per envelope, in
    // `transaction`), before its nonce takes a place in the table.
    if !fed.origin_limit.allow(&sig.origin, state.clock.now_f64()) {
        state.metrics.error(&ErrorCode::RateLimited);
        return Err(error(
            fed,
            StatusCode::TOO_MANY_REQUESTS,
            sig.nonce,
            ErrorCode::RateLimited,
            "too many requests from your domain; retry later",
        ));
    }
    match fed.check_nonce(&sig.origin, sig.nonce, sig.expires) {
        NonceCheck::Fresh => Ok(sig),
        NonceCheck::Replayed => Err(refuse(sig.nonce, &SignatureError::Replayed)),
        NonceCheck::Full => Err(error(
            fed,
            StatusCode::SERVICE_UNAVAILABLE,
            sig.nonce,
            ErrorCode::Busy,
            "too many requests in flight; retry later",
        )),
    }
}

/// [`authenticate`] for a request without a body (the signed digest is of no bytes).
async fn authenticate_bodiless(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<RequestSignature, Response> {
    let sig = authenticate(state, method, uri, headers).await?;
    match sig.verify_digest(&federation::digest(&[])) {
        Ok(()) => Ok(sig),
        Err(e) => Err(error(
            fed(state),
            StatusCode::UNAUTHORIZED,
            sig.nonce,
            e.code(),
            &e.to_string(),
        )),
    }
}

/// A body read within the budget, with the reservation that holds its bytes.
struct Received {
    bytes: Vec<u8>,
    _held: Reservation,
}

/// Reads the body of an authenticated request: at most `max` bytes, into a reservation
/// from `budget`, within [`body_deadline`], through the
/// digest the request signed. The error is the status, code and message to answer with.
async fn read_body(
    budget: &Arc<BodyBudget>,
    sig: &RequestSignature,
    headers: &HeaderMap,
    body: Body,
    max: u64,
) -> Result<Received, (StatusCode, ErrorCode, String)> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadBody,
            format!("this request's body is at most {max} bytes"),
        )
    };
    let busy = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            "too many bytes in flight from your domain or in all; retry later".to_owned(),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        // The request is signed by a peer's published key: its body is read and thrown
        // away (nothing is kept), so the peer sees the 413 rather than a connection
        // reset it would retry as it was, and splits the batch. Beyond twice the limit,
        // or too slowly, the connection is just closed.
        if n <= max.saturating_mul(2) {
            let mut body = body;
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(body_deadline(n), drain).await;
        }
        return Err(too_large());
    }
    let mut held = budget
        .take(sig.origin.clone(), declared.unwrap_or(0))
        .map_err(|_| busy())?;
    let deadline = body_deadline(declared.unwrap_or(max));
    let mut bytes = Vec::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    let mut hash = Sha256::new();
    let mut body = body;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadBody,
                    format!("the body was cut off: {e}"),
                )
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let n = chunk.len() as u64;
            if bytes.len() as u64 + n > max {
                return Err(too_large());
            }
            if bytes.len() as u64 + n > held.amount()
                && held.grow(bytes.len() as u64 + n - held.amount()).is_err()
            {
                return Err(busy());
            }
            hash.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                format!(
                    "the body did not arrive within {} seconds",
                    deadline.as_secs()
                ),
            ));
        }
    }
    sig.verify_digest(&hash.finalize().into())
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
    Ok(Received { bytes, _held: held })
}

async fn transaction(
    State(state): St,
    Extension(budget): Extension<Arc<BodyBudget>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    txid: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Body,
) -> Response {
    let fed = fed(&state).clone();
    let sig = match authenticate(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let nonce = sig.nonce;
    let Some(txid) = txid
        .ok()
        .and_then(|Path(t)| letterme_protocol::EnvelopeId::from_hex(&t))
    else {
        return error(
            &fed,
            StatusCode::BAD_REQUEST,
            nonce,
            ErrorCode::BadTxid,
            "a transaction id is 32 hex digits",
        );
    };
    let max = max_batch_bytes(state.config.limits.max_message_size.0);
    // Every answer, a refused body's included, echoes the nonce (issue 15.4).
    let body = match read_body(&budget, &sig, &headers, body, max).await {
        Ok(b) => b,
        Err((status, code, message)) => {
            state.metrics.error(&code);
            return error(&fed, status, nonce, code, &message);
        }
    };
    let body = body.bytes.as_slice();
    let max_env = usize::try_from(state.config.limits.max_message_size.0).unwrap_or(usize::MAX);
    // An envelope over this server's limit is refused alone, in the report, not the
    // whole batch (issue 15.4): the sender tells its user about that one.
    let items = match decode_batch_items(body, body.len()) {
        Ok(i) => i,
        Err(e) => {
            return error(
                &fed,
                StatusCode::BAD_REQUEST,
                nonce,
                ErrorCode::MalformedBatch,
                &e.to_string(),
            );
        }
    };
    if !fed
        .origin_limit
        .allow_n(&sig.origin, items.len() as u32, state.clock.now_f64())
    {
        state.metrics.error(&ErrorCode::RateLimited);
        return error(
            &fed,
            StatusCode::TOO_MANY_REQUESTS,
            nonce,
            ErrorCode::RateLimited,
            "too many envelopes from your domain; retry later",
        );
    }
    witness_attached(&state, &headers, &sig.origin);
    let mut incoming = Vec::new();
    let mut rejected = BTreeMap::new();
    for (i, (recipients, bytes)) in items.iter().enumerate() {
        if bytes.len() > max_env {
            rejected.insert(
                i.to_string(),
                format!(
                    "the message is {} bytes, more than {} accepts ({max_env} bytes)",
                    bytes.len(),
                    fed.domain
                ),
            );
            continue;
        }
        match check_envelope(
            &fed.domain,
            &sig.origin,
            recipients,
            bytes,
            state.clock.now(),
        ) {
            Ok(item) => incoming.push(item),
            Err(reason) => {
                rejected.insert(i.to_string(), reason);
            }
        }
    }
    let result = state
        .store
        .receive_transaction(
            sig.origin.clone(),
            txid.0.to_vec(),
            sig.digest,
            incoming,
            rejected,
            state.clock.now(),
            state.config.limits.quota.0,
            fed.config.clone(),
        )
        .await;
    match result {
        Ok(Some(report)) => {
            let accepted = report
                .results
                .values()
                .flat_map(BTreeMap::values)
                .filter(|s| **s == federation::DeliveryStatus::Accepted)
                .count();
            state.metrics.deliveries.inc_by(accepted as u64);
            tracing::debug!(origin = %sig.origin, envelopes = items.len(), accepted, "federated delivery");
            signed(
                &fed,
                StatusCode::OK,
                nonce,
                &serde_json::to_value(&report).unwrap_or_default(),
            )
        }
        Ok(None) => error(
            &fed,
            StatusCode::CONFLICT,
            nonce,
            ErrorCode::TxidReused,
            "this transaction id was used before for a different body",
        ),
        Err(e) => {
            tracing::error!(error = %e, "storing a federated delivery failed");
            let (status, code) = match e {
                StoreError::Closed => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            };
            error(&fed, status, nonce, code, "not stored; retry later")
        }
    }
}

/// Checks one envelope of a batch: it decodes, its sender belongs to the origin, it is
/// signed by its sender, its time is within [`MAX_ENVELOPE_AGE`] (and no more than
/// [`MAX_CLOCK_SKEW`] ahead), and every listed recipient is ours and named in it.
fn check_envelope(
    me: &str,
    origin: &str,
    recipients: &[&str],
    bytes: &[u8],
    now: u64,
) -> Result<crate::store::Incoming, String> {
    let env = Envelope::decode(bytes).map_err(|e| format!("malformed envelope: {e}"))?;
    if env.signer_kind != SignerKind::User {
        return Err("only user-signed envelopes are relayed between domains".into());
    }
    if !env.sender.domain().eq_ignore_ascii_case(origin) {
        return Err(format!(
            "the sender {} is not of the origin domain {origin}",
            env.sender
        ));
    }
    env.verify_signature()
        .map_err(|_| "the envelope signature does not verify".to_owned())?;
    if env.created > now + MAX_CLOCK_SKEW || env.created + MAX_ENVELOPE_AGE < now {
        return Err(format!(
            "the envelope's time is more than a day ahead of this server's clock or more than {} days behind it",
            MAX_ENVELOPE_AGE / 86_400
        ));
    }
    let mut list = Vec::new();
    for r in recipients {
        let named = env.recipients.iter().any(|e| e.address.as_str() == *r);
        let ours = Address::parse(r).is_ok_and(|a| a.domain().eq_ignore_ascii_case(me));
        if !named || !ours {
            return Err(format!("{r} is not a recipient of this envelope on {me}"));
        }
        list.push((*r).to_owned());
    }
    if list.is_empty() {
        return Err("no recipients".into());
    }
    Ok(crate::store::Incoming {
        id: env.id.0,
        digest: Sha256::digest(bytes).into(),
        sender: env.sender.to_string(),
        envelope: bytes.to_vec(),
        blobs: env.blobs.clone(),
        recipients: list,
    })
}

async fn keys(
    State(state): St,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    address: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let fed = fed(&state).clone();
    let sig = match authenticate_bodiless(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if !fed
        .origin_limit
        .allow_n(&sig.origin, 1, state.clock.now_f64())
    {
        return error(
            &fed,
            StatusCode::TOO_MANY_REQUESTS,
            sig.nonce,
            ErrorCode::RateLimited,
            "too many lookups; retry later",
        );
    }
    witness_attached(&state, &headers, &sig.origin);
    let Some(address) = address
        .ok()
        .and_then(|Path(a)| Address::parse(&a).ok())
        .filter(|a| a.domain().eq_ignore_ascii_case(&fed.domain))
    else {
        return error(
            &fed,
            StatusCode::BAD_REQUEST,
            sig.nonce,
            ErrorCode::BadAddress,
            "not an address on this domain",
        );
    };
    let since = query_u64(&uri, "since");
    let found = match state.store.account(address.to_string()).await {
        Ok(Some(row)) => state
            .kt
            .proof_for(
                &state.store,
                &address,
                since,
                &state.config.domain,
                state.clock.now(),
                &state.domain_key,
            )
            .await
            .map(|kt| Some((super::attestation_of(&address, &row), kt))),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let devices = match &found {
        Ok(Some(_)) => super::devices::listed(&state.store, &address).await,
        _ => Ok(vec![]),
    };
    match found.and_then(|f| devices.map(|d| (f, d))) {
        Ok((found, devices)) => {
            let (attestation, kt) = found.map_or((None, None), |(a, k)| (Some(a), k));
            let body = RemoteKeys {
                address,
                found: attestation.is_some(),
                attestation,
                kt,
                devices,
            };
            signed(
                &fed,
                StatusCode::OK,
                sig.nonce,
                &serde_json::to_value(&body).unwrap_or_default(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "key lookup failed");
            error(
                &fed,
                StatusCode::INTERNAL_SERVER_ERROR,
                sig.nonce,
                ErrorCode::Internal,
                "retry later",
            )
        }
    }
}

/// Witnesses the checkpoint a peer attached to its request, in the background: a fork is
/// recorded and logged; the request itself is answered as usual.
fn witness_attached(state: &Arc<AppState>, headers: &HeaderMap, origin: &str) {
    let Some(cp) = witness::from_header(headers) else {
        return;
    };
    if !cp.domain.eq_ignore_ascii_case(origin) {
        return;
    }
    let Some(fed) = state.federation.clone() else {
        return;
    };
    let state = state.clone();
    let source = format!("a request from {origin}");
    tokio::spawn(async move {
        // One background observation per domain at a time, and none once a fork is on
        // record (the evidence is kept; more rows would add nothing).
        if witness::busy(&fed, &cp.domain)
            || witness::forked(&state.store, &cp.domain)
                .await
                .is_ok_and(|f| f.is_some())
        {
            return;
        }
        if let Err(e) = witness::observe(&fed, &state.store, &state.metrics, &cp, &source).await {
            tracing::info!(origin = %cp.domain, error = %e, "cannot witness a peer's checkpoint");
        }
    });
}

/// A query parameter as a number.
fn query_u64(uri: &Uri, name: &str) -> Option<u64> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// `GET /v1/federation/kt/consistency?from=A&also=B`: the current checkpoint and the
/// proofs that it extends the log's first A (and B) entries.
async fn kt_consistency(
    State(state): St,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let fed = fed(&state).clone();
    let sig = match authenticate_bodiless(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let Some(from) = query_u64(&uri, "from") else {
        return error(
            &fed,
            StatusCode::BAD_REQUEST,
            sig.nonce,
            ErrorCode::BadQuery,
            "from=N is required",
        );
    };
    let mut sizes = vec![from];
    sizes.extend(query_u64(&uri, "also"));
    match state
        .kt
        .consistency(
            &sizes,
            &state.config.domain,
            state.clock.now(),
            &state.domain_key,
        )
        .await
    {
        Some((checkpoint, proofs)) => signed(
            &fed,
            StatusCode::OK,
            sig.nonce,
            &FederationConsistency {
                checkpoint,
                proofs: proofs
                    .iter()
                    .map(|p| letterme_protocol::b64::encode(p))
                    .collect(),
            },
        ),
        None => error(
            &fed,
            StatusCode::BAD_REQUEST,
            sig.nonce,
            ErrorCode::BeyondLog,
            "a size is beyond the log",
        ),
    }
}

/// `GET /v1/federation/kt/entries?start=N&limit=M`: a page of the log, for audits.
async fn kt_entries(State(state): St, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let fed = fed(&state).clone();
    let sig = match authenticate_bodiless(&state, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let start = query_u64(&uri, "start").unwrap_or(0);
    let limit = query_u64(&uri, "limit")
        .unwrap_or(crate::kt::ENTRIES_PAGE)
        .min(crate::kt::ENTRIES_PAGE);
    match state
        .kt
        .entries(
            &state.store,
            start,
            limit,
            &state.config.domain,
            state.clock.now(),
            &state.domain_key,
        )
        .await
    {
        Ok((checkpoint, entries)) => signed(
            &fed,
            StatusCode::OK,
            sig.nonce,
            &EntriesPage {
                checkpoint,
                entries: entries
                    .iter()
                    .map(|e| letterme_protocol::b64::encode(e))
                    .collect(),
                start,
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "reading the log failed");
            error(
                &fed,
                StatusCode::INTERNAL_SERVER_ERROR,
                sig.nonce,
                ErrorCode::Internal,
                "retry later",
            )
        }
    }
}
