//! The error answer of the API and of the federation listener, and its stable codes.
//!
//! Both sides match on [`ErrorCode`], never on a string. A code this build does not know
//! (a newer server's) parses to [`ErrorCode::Other`], so a client keeps working.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
        /// A stable machine code of an error answer (`docs/API.md`, PROTOCOL.md §17).
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this build does not know, as received.
            Other(String),
        }

        impl ErrorCode {
            /// Every known code, for tests and documentation.
            pub const KNOWN: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)*
                    Self::Other(s) => s,
                }
            }

            /// Parses a wire string; an unknown one becomes [`ErrorCode::Other`].
            pub fn parse(s: &str) -> Self {
                match s {
                    $($wire => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    AddressTaken = "address_taken",
    BadAddress = "bad_address",
    /// A blob upload that does not add up (manifest, id, size).
    BadBlob = "bad_blob",
    BadBody = "bad_body",
    BadChallenge = "bad_challenge",
    /// A device certificate or binding that does not verify, or a device set that would not
    /// hold (PROTOCOL.md §6a).
    BadDevice = "bad_device",
    BadDomain = "bad_domain",
    BadEntry = "bad_entry",
    BadId = "bad_id",
    BadJson = "bad_json",
    BadMessage = "bad_message",
    BadPath = "bad_path",
    BadQuery = "bad_query",
    BadSignature = "bad_signature",
    /// Federation: the transaction id is not valid.
    BadTxid = "bad_txid",
    /// Federation: a consistency proof was asked from a size beyond the log.
    BeyondLog = "beyond_log",
    /// The user's blobs that no message refers to yet are over `limits.blob_bytes_per_user`.
    BlobLimit = "blob_limit",
    /// Federation: the receiver is busy with this origin; retry.
    Busy = "busy",
    /// A blob chunk whose size or hash is not the one its manifest names.
    ChunkMismatch = "chunk_mismatch",
    DailyCap = "daily_cap",
    /// A device key the account had before: a removed device is not added again.
    DeviceKnown = "device_known",
    /// The device that logged in was removed from the account.
    DeviceRemoved = "device_removed",
    /// Federation: the digest of the body does not match `Content-Digest`.
    DigestMismatch = "digest_mismatch",
    /// Federation: the request signature has expired or is not yet valid.
    Expired = "expired",
    ExpiredToken = "expired_token",
    FederationUnavailable = "federation_unavailable",
    FromMismatch = "from_mismatch",
    IdentityChanged = "identity_changed",
    Internal = "internal",
    InvalidInvite = "invalid_invite",
    InvalidToken = "invalid_token",
    InviteRequired = "invite_required",
    KeyConflict = "key_conflict",
    KtFork = "kt_fork",
    LocalRecipient = "local_recipient",
    LoginFailed = "login_failed",
    /// Federation: the delivery batch does not decode.
    MalformedBatch = "malformed_batch",
    MalformedEnvelope = "malformed_envelope",
    /// Federation: a signature header is missing or malformed.
    MalformedSignature = "malformed_signature",
    MessageTooLarge = "message_too_large",
    MethodNotAllowed = "method_not_allowed",
    MissingToken = "missing_token",
    /// No such link slot: the code is wrong, expired, or used.
    NoLink = "no_link",
    /// A link slot whose new device's message was posted already: a code is used once.
    LinkUsed = "link_used",
    NoMessage = "no_message",
    NoRecipients = "no_recipients",
    NotFound = "not_found",
    NotWitnessed = "not_witnessed",
    NoticeOnly = "notice_only",
    OutboundDisabled = "outbound_disabled",
    PeerFailed = "peer_failed",
    QuotaExceeded = "quota_exceeded",
    /// The sender's mail waiting for other domains is over `limits.queued_per_user`.
    QueueFull = "queue_full",
    RateLimited = "rate_limited",
    Replay = "replay",
    /// Federation: the request's nonce was already used.
    Replayed = "replayed",
    SameKey = "same_key",
    SenderMismatch = "sender_mismatch",
    ShuttingDown = "shutting_down",
    Stale = "stale",
    StaleEnvelope = "stale_envelope",
    /// A request (or its body) took longer than the server allows.
    Timeout = "timeout",
    TooLarge = "too_large",
    TooMany = "too_many",
    /// An envelope for more destination domains than `limits.max_domains_per_send`.
    TooManyDomains = "too_many_domains",
    TooManyKeyChanges = "too_many_key_changes",
    TooManyRecipients = "too_many_recipients",
    TooManyVersions = "too_many_versions",
    /// Federation: the transaction id was used before for another body.
    TxidReused = "txid_reused",
    /// Federation: the signing key is not one the origin publishes in DNS.
    UnknownOriginKey = "unknown_origin_key",
    UnknownRecipients = "unknown_recipients",
    WrongAddress = "wrong_address",
    WrongDestination = "wrong_destination",
    WrongDomain = "wrong_domain",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// Compares with a wire string; lets callers outside the crates assert on codes.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The whole error answer: `{"error": {"code", "message", ...details}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The `error` object. Detail fields appear only on the errors that carry them
/// (`docs/API.md`, Errors). Fields are in alphabetical order, as the wire has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// `rate_limited` of an outbound domain bucket: the destination domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `too_large`: the byte limit; outbound `rate_limited`: which bucket. A value this
    /// build does not know is ignored rather than refusing the whole answer.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::lenient"
    )]
    pub limit: Option<ErrorLimit>,
    /// One human-readable line; not to be parsed.
    #[serde(default)]
    pub message: String,
    /// `unknown_recipients`, `quota_exceeded`, `federation_unavailable`: the addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
}

impl ErrorDetail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            domain: None,
            limit: None,
            message: message.into(),
            recipients: None,
        }
    }
}

/// The `limit` detail: a number of bytes, or which rate-limit bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorLimit {
    Bytes(u64),
    Bucket(LimitBucket),
}

/// The outbound rate-limit buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBucket {
    /// The user's own bucket.
    User,
    /// A destination domain's bucket.
    Domain,
}
