//! About this server: `GET /v1/server`, `/healthz`, `/metrics` and the MTA-STS policy.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use letterme_protocol::api::{Health, ServerInfo};

use crate::error::ApiError;

use super::{PROTOCOL_VERSION, St};

pub(super) async fn healthz(State(state): St) -> Response {
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

pub(super) async fn metrics(State(state): St) -> Response {
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
pub(super) async fn mta_sts(State(state): St) -> Response {
    match crate::outbound::mta_sts_policy(&state.config) {
        Some(p) => ([(header::CONTENT_TYPE, "text/plain")], p).into_response(),
        None => ApiError::not_found("no MTA-STS policy is configured ([outbound] mta_sts)")
            .into_response(),
    }
}

pub(super) async fn server_info(State(state): St) -> Json<ServerInfo> {
    Json(ServerInfo {
        domain: state.config.domain.clone(),
        domain_key: state.domain_key.public(),
        protocol: PROTOCOL_VERSION,
        max_message_size: state.config.limits.max_message_size.0,
        quota: state.config.limits.quota.0,
        max_attachment_size: state.config.limits.max_attachment_size.0,
        retention_days: state.config.policy.retention_days,
        registration: state.config.registration.mode,
        outbound: state.config.outbound.mode,
    })
}
