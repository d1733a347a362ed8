//! The key-transparency routes of the API (`/v1/kt/...`, PROTOCOL.md §19) and the
//! federation listener's answers that carry the log (§19.8–19.9). `GET /v1/kt/mine`
//! answers a [`crate::kt::KtHistory`].

use serde::{Deserialize, Serialize};

use crate::kt::Checkpoint;

/// `GET /v1/kt/checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResponse {
    pub checkpoint: Checkpoint,
    /// Base64 of the VRF public key of the log's labels.
    pub vrf_key: String,
}

/// `GET /v1/kt/consistency?from=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    pub from: u64,
}

/// `GET /v1/kt/consistency`, 200: the current checkpoint and the proof that it extends
/// the log's first N entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyResponse {
    pub checkpoint: Checkpoint,
    /// Base64 of the proof's hashes.
    pub proof: String,
}

/// `GET /v1/kt/entries?domain=&start=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub start: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// A page of a domain's log with its current checkpoint: `GET /v1/kt/entries` and the
/// federation's `GET /v1/federation/kt/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesPage {
    pub checkpoint: Checkpoint,
    /// Base64 of each entry's bytes (PROTOCOL.md §19.1), from `start` on.
    #[serde(default)]
    pub entries: Vec<String>,
    pub start: u64,
}

/// The federation's `GET /v1/federation/kt/consistency?from=A&also=B`: the current
/// checkpoint and a proof from each size to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationConsistency {
    pub checkpoint: Checkpoint,
    /// Base64 of each proof's hashes, in the order of the sizes asked.
    pub proofs: Vec<String>,
}

/// `POST /v1/kt/witness`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRequest {
    pub checkpoint: Checkpoint,
}

/// What a witness found (`POST /v1/kt/witness`, 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum WitnessVerdict {
    /// Consistent with all this server saw; `checkpoint` is the newest it now holds.
    Consistent { checkpoint: Checkpoint },
    /// Two checkpoints the domain signed contradict each other.
    Fork {
        held: Checkpoint,
        other: Checkpoint,
        reason: String,
    },
    /// A verdict this build does not know (a newer server's). Never sent.
    #[serde(other)]
    Unknown,
}

impl WitnessVerdict {
    /// The verdict's wire name (`unknown` for one this build does not know).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Consistent { .. } => "consistent",
            Self::Fork { .. } => "fork",
            Self::Unknown => "unknown",
        }
    }
}

/// `GET /v1/kt/witnessed/{domain}`: the newest checkpoint of the domain this server holds
/// and the forks it caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witnessed {
    pub checkpoint: Option<Checkpoint>,
    pub domain: String,
    #[serde(default)]
    pub forks: Vec<Fork>,
}

/// A fork a witness recorded: two checkpoints the domain signed that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub detected_at: u64,
    pub held: Option<Checkpoint>,
    pub other: Option<Checkpoint>,
    pub reason: String,
    /// What showed this server the contradicting checkpoint.
    pub source: String,
}
