//! API errors with their wire form: HTTP status, a stable machine code, and one human line.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use letterme_protocol::api::{ErrorBody, ErrorCode, ErrorDetail, ErrorLimit};

use crate::store::StoreError;

/// An error as the client sees it: the status and `{"error": {"code", "message", ...details}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail::new(code, message),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests; slow down and retry",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the server failed to complete the request; it was not stored",
        )
    }

    pub fn code(&self) -> &ErrorCode {
        &self.detail.code
    }

    /// The `limit` detail.
    #[must_use]
    pub fn with_limit(mut self, limit: ErrorLimit) -> Self {
        self.detail.limit = Some(limit);
        self
    }

    /// The `domain` detail.
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.detail.domain = Some(domain.into());
        self
    }

    /// The `recipients` detail.
    #[must_use]
    pub fn with_recipients(mut self, recipients: Vec<String>) -> Self {
        self.detail.recipients = Some(recipients);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rate_limited = self.detail.code == ErrorCode::RateLimited;
        let mut resp = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if rate_limited {
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
                ErrorCode::AddressTaken,
                "this address is already registered",
            ),
            StoreError::UnknownRecipients(list) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UnknownRecipients,
                format!("no such user: {}", list.join(", ")),
            )
            .with_recipients(list),
            StoreError::QuotaExceeded(who) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::QuotaExceeded,
                format!("the mailbox of {who} is full"),
            )
            .with_recipients(vec![who]),
            StoreError::Replay => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::Replay,
                "an envelope with this id was already accepted (replay)",
            ),
            StoreError::InviteUsed => Self::forbidden(
                ErrorCode::InvalidInvite,
                "this invite token was already used",
            ),
            e @ StoreError::DailyCap { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::DailyCap,
                format!("{e}; try again tomorrow (UTC), or ask the administrator"),
            ),
            e @ StoreError::KeyConflict(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::KeyConflict, e.to_string())
            }
            StoreError::NoAccount(a) => Self::not_found(format!("no account {a}")),
            e @ StoreError::DeviceKnown(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::DeviceKnown, e.to_string())
            }
            e @ StoreError::QueueFull { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::QueueFull,
                format!("{e}; send again once some of it has been delivered"),
            ),
            StoreError::BadBlob(why) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::BadBlob, why)
            }
            StoreError::ChunkMismatch(why) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ChunkMismatch,
                why,
            ),
            e @ StoreError::BlobLimit { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::BlobLimit,
                format!("{e}; an upload no message refers to is deleted a day after it began"),
            ),
            StoreError::NoBlob => Self::not_found("no such blob"),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ),
            StoreError::Database(msg) => {
                tracing::error!(error = %msg, "database error");
                Self::internal()
            }
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the database {path}")]
    Store { path: String, source: StoreError },
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr} (is another server running there?)")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}
