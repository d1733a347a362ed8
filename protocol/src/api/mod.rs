//! The client–server API (`docs/API.md`), typed once: the request and answer of every
//! `/v1/...` route, the federation listener's key-transparency answers, and the error
//! answer with its codes. The server's handlers and the client both use these types, so
//! the two sides cannot drift.
//!
//! Requests refuse unknown fields (`400 bad_json` / `bad_query`), as the server always
//! has. Answers tolerate them, and a value this build does not know where an enum is
//! expected falls back rather than failing, so a client talks to older and newer servers.
//! Field order is the wire's: where an answer was once built as a JSON map, its fields are
//! declared in alphabetical order.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Address, Attestation, IdentityPublicKey, KeyBinding, Signature};

pub mod error;
pub mod kt;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, ErrorLimit, LimitBucket};

/// Reads a value that may be of a kind this build does not know: `None` then, rather than
/// refusing the whole answer.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// As [`lenient`], with the type's default for an unknown value.
fn lenient_or_default<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(lenient(d)?.unwrap_or_default())
}

// ---- server ----------------------------------------------------------------------------

/// What happens to mail for addresses outside letter.me (`[outbound] mode`, DESIGN.md §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    /// The user's message, DKIM-signed, over SMTP to the recipient's MX.
    Relay,
    /// Only a notice that a message waits in letter.me; never the content.
    Notice,
    /// Mail to other domains goes through federation only.
    #[default]
    Off,
}

impl OutboundMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Notice => "notice",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for OutboundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboundMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "relay" => Ok(Self::Relay),
            "notice" => Ok(Self::Notice),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "outbound mode {other:?}: expected relay, notice or off"
            )),
        }
    }
}

/// Whether `POST /v1/accounts` needs an invite token (`[registration] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    #[default]
    Open,
    Invite,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `database unavailable` (with 503).
    pub status: String,
}

/// `GET /v1/server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub domain: String,
    pub domain_key: IdentityPublicKey,
    pub protocol: u32,
    pub max_message_size: u64,
    pub quota: u64,
    /// Largest attachment the server takes as a blob (sealed bytes); 0 from a server that
    /// takes none.
    #[serde(default)]
    pub max_attachment_size: u64,
    /// Days the server keeps a delivery no one acknowledged (`policy.retention_days`);
    /// 0 from a server that does not say.
    #[serde(default)]
    pub retention_days: u32,
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub registration: RegistrationMode,
    /// What happens to mail for addresses outside letter.me; `off` when absent or unknown.
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub outbound: OutboundMode,
}

// ---- accounts and login ----------------------------------------------------------------

/// `POST /v1/accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub binding: KeyBinding,
    #[serde(default)]
    pub invite: Option<String>,
}

/// `POST /v1/accounts`, 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub attestation: Attestation,
    pub domain_key: IdentityPublicKey,
}

/// `POST /v1/auth/challenge`. The address is parsed by the server, so a bad one is
/// `bad_address`, not `bad_json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    pub address: String,
}

/// `POST /v1/auth/challenge`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// Base64 of 32 bytes.
    pub challenge: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub expires: u64,
}

/// `POST /v1/auth/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub address: String,
    /// The challenge as received (base64 of 32 bytes).
    pub challenge: String,
    pub signature: Signature,
    /// The device key that signed (PROTOCOL.md §6a); absent: the identity key, which is the
    /// device key of the account's first device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<IdentityPublicKey>,
}

/// `POST /v1/auth/token`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub expires: u64,
    pub token: String,
}

// ---- keys ------------------------------------------------------------------------------

/// `GET /v1/keys/{address}?since=N` and `GET /v1/kt/mine?since=N`: `since` is the size of
/// the last checkpoint the client accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// `GET /v1/keys/{address}`: the same shape whether or not the address exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyLookup {
    pub address: Address,
    pub found: bool,
    pub attestation: Option<Attestation>,
    /// The log entry of this key, with its proofs (addresses of this server; `null`
    /// otherwise, so a lookup looks the same whether or not the address exists).
    #[serde(default)]
    pub kt: Option<crate::kt::KtProof>,
    /// The address's domain does not run letter.me (no `_mailx` record, or this server
    /// does not federate): mail to it can only leave as ordinary email.
    #[serde(default)]
    pub legacy: bool,
    /// The account's devices, the set its newest log entry names (PROTOCOL.md §6a); none
    /// for an account of one device from before devices, sealed to the attested key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::device::Device>,
}

/// `POST /v1/keys/rotate` and `POST /v1/keys/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChangeRequest {
    /// The new encryption key, bound to the (unchanged) identity key.
    pub binding: KeyBinding,
}

/// `POST /v1/keys/rotate` and `/revoke`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChangeResponse {
    pub attestation: Attestation,
    /// The log entry that records the change.
    pub index: u64,
}

// ---- devices ---------------------------------------------------------------------------

/// One of the account's devices, as `GET /v1/devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The short id `DELETE /v1/devices/{id}` takes (`device::device_id`).
    pub id: String,
    pub device_key: IdentityPublicKey,
    pub encryption_key: crate::EncryptionPublicKey,
    /// When the server added it (Unix seconds).
    pub added: u64,
    /// Its certificate and binding; absent for the first device of an account from before
    /// devices until it certified itself (the first time a device is linked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<crate::device::Device>,
    /// The device that asked.
    #[serde(default)]
    pub this: bool,
}

/// `GET /v1/devices`, 200, and the answer to a change of the device set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
    /// The log entry that records the change (changes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// `POST /v1/devices`: devices to add, each certified by the identity key. The first time
/// an account from before devices adds one, its first device certifies itself in the same
/// request (a device whose device key is the identity key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevicesRequest {
    pub devices: Vec<crate::device::Device>,
}

/// A message of a device-linking exchange (`POST /v1/link`, `PUT /v1/link/{address}/{slot}`,
/// `POST /v1/link/{address}/{slot}`): opaque to the server (PROTOCOL.md §6b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkMessage {
    #[serde(with = "crate::b64::bytes")]
    pub message: Vec<u8>,
}

/// `POST /v1/link`, 201: the slot the code names, and when it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOpened {
    pub slot: String,
    pub expires: u64,
}

/// `GET /v1/link/{address}/{slot}?from=&wait=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkQuery {
    /// The index of the first message wanted (0: the opening).
    #[serde(default)]
    pub from: usize,
    /// Long poll: wait up to this many seconds (at most [`MAX_WAIT`]) for a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

/// `GET /v1/link/{address}/{slot}`, 200: the slot's messages from `from` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkMessages {
    pub messages: Vec<LinkMessage>,
}

// ---- messages --------------------------------------------------------------------------

/// `POST /v1/messages?device=ID`: the envelope goes to that one device of the sender's own
/// account (the mailbox history a device sends a new one), not to every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `POST /v1/messages`, 201 (the request is the envelope's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub id: String,
    pub size: u64,
    #[serde(default)]
    pub recipients: Vec<Address>,
    /// Recipients on other domains: queued for federated delivery.
    #[serde(default)]
    pub queued: Vec<String>,
}

/// Longest long-poll wait a server grants, in seconds (`ListQuery::wait`).
pub const MAX_WAIT: u64 = 60;

/// `GET /v1/messages?after=&limit=&wait=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub after: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Long poll: when nothing is pending, wait up to this many seconds (at most
    /// [`MAX_WAIT`]) for a delivery before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

/// One entry of `GET /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub id: String,
    pub seq: i64,
    pub sender: String,
    pub size: u64,
    pub received: u64,
}

/// `GET /v1/messages`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub messages: Vec<ListEntry>,
}

/// `POST /v1/messages/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub ids: Vec<String>,
}

/// `POST /v1/messages/ack`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    #[serde(default)]
    pub deleted: u64,
}

/// `POST /v1/messages/fetch`: up to a listing page of envelope ids, downloaded in one
/// answer of [`ENVELOPES_TYPE`] (see [`FetchedEnvelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub ids: Vec<String>,
}

/// Envelope bytes after which the server ends a `POST /v1/messages/fetch` answer (it
/// always carries at least one record); the ids left out are asked for again.
pub const FETCH_BYTES: usize = 4 << 20;

/// Content type of a `POST /v1/messages/fetch` answer.
pub const ENVELOPES_TYPE: &str = "application/vnd.letterme.envelopes";

/// One record of a `POST /v1/messages/fetch` answer, in the order asked: the id (16
/// bytes), the time the server received the envelope (u64, Unix seconds), then 1 and the
/// envelope (u32 length and bytes), or 0 when the id is not pending for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedEnvelope {
    pub id: [u8; 16],
    pub received: u64,
    pub envelope: Option<Vec<u8>>,
}

impl FetchedEnvelope {
    pub fn encode_into(&self, w: &mut crate::codec::Writer) {
        w.raw(&self.id).u64(self.received);
        match &self.envelope {
            Some(bytes) => w.u8(1).bytes32(bytes),
            None => w.u8(0),
        };
    }

    /// Reads a whole answer; each envelope is at most `max_envelope` bytes.
    pub fn decode_all(
        input: &[u8],
        max_envelope: usize,
    ) -> Result<Vec<Self>, crate::codec::DecodeError> {
        let mut r = crate::codec::Reader::new(input);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let id = r.array("envelope id")?;
            let received = r.u64("received")?;
            let envelope = match r.u8("presence")? {
                0 => None,
                1 => Some(r.bytes32("envelope", max_envelope)?.to_vec()),
                _ => return Err(crate::codec::DecodeError::Invalid("presence")),
            };
            out.push(Self {
                id,
                received,
                envelope,
            });
        }
        Ok(out)
    }
}

// ---- blobs -----------------------------------------------------------------------------

/// `POST /v1/blobs`: begin (or resume) the upload of a blob (PROTOCOL.md §19a).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobBegin {
    /// The blob's id, 64 hex digits.
    pub id: String,
    /// Sealed bytes.
    pub size: u64,
    /// Each sealed chunk's SHA-256, concatenated.
    #[serde(with = "crate::b64::bytes")]
    pub manifest: Vec<u8>,
}

/// `POST /v1/blobs`, `PUT /v1/blobs/{id}/{n}` and `GET /v1/blobs/{id}`, 200/201: where an
/// upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobState {
    pub id: String,
    /// Sealed bytes.
    pub size: u64,
    pub chunks: u64,
    /// The chunks the server holds, in order; all of them: the blob is complete.
    #[serde(default)]
    pub stored: Vec<u64>,
    /// Each sealed chunk's SHA-256, concatenated (a reader checks chunks against it).
    #[serde(with = "crate::b64::bytes")]
    pub manifest: Vec<u8>,
}

// ---- blocks ----------------------------------------------------------------------------

/// `POST` and `DELETE /v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    /// `someone@example.com` or `@example.com`.
    pub entry: String,
}

/// `GET /v1/blocks`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksResponse {
    #[serde(default)]
    pub blocks: Vec<String>,
}

/// `POST` and `DELETE /v1/blocks`, 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockChange {
    /// Whether the list changed.
    #[serde(default)]
    pub changed: bool,
    /// The entry as normalised by the server.
    #[serde(default)]
    pub entry: String,
}

// ---- outbound --------------------------------------------------------------------------

/// `POST /v1/outbound`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundRequest {
    /// Relay mode: the RFC 5322 message, base64. Absent in notice mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub recipients: Vec<String>,
}

/// `POST /v1/outbound`, 202.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundResponse {
    pub id: i64,
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub mode: OutboundMode,
    pub queued: Vec<String>,
}
