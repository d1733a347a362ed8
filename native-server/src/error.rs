//! API errors with their wire form: HTTP status, a stable machine code, and one human line.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// An error as the client sees it: `{"error": {"code", "message", ...details}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down and retry",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request; it was not stored",
        )
    }

    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Some(obj)) = (self.details, err.as_object_mut()) {
            obj.extend(extra);
        }
        let mut resp = (self.status, Json(json!({ "error": err }))).into_response();
        if self.code == "rate_limited" {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AddressTaken => Self::new(
                StatusCode::CONFLICT,
                "address_taken",
                "this address is already registered",
            ),
            StoreError::UnknownRecipients(list) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_recipients",
                format!("no such user: {}", list.join(", ")),
            )
            .with_details(json!({ "recipients": list })),
            StoreError::QuotaExceeded(who) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "quota_exceeded",
                format!("the mailbox of {who} is full"),
            )
            .with_details(json!({ "recipients": [who] })),
            StoreError::Replay => Self::new(
                StatusCode::CONFLICT,
                "replay",
                "an envelope with this id was already accepted (replay)",
            ),
            StoreError::InviteUsed => {
                Self::forbidden("invalid_invite", "this invite token was already used")
            }
            e @ StoreError::DailyCap { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "daily_cap",
                format!("{e}; try again tomorrow (UTC), or ask the administrator"),
            ),
            e @ StoreError::KeyConflict(_) => {
                Self::new(StatusCode::CONFLICT, "key_conflict", e.to_string())
            }
            StoreError::NoAccount(a) => Self::not_found(format!("no account {a}")),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
            StoreError::Database(msg) => {
                tracing::error!(error = %msg, "database error");
                Self::internal()
            }
        }
    }
}
