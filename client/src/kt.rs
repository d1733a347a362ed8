//! Key transparency on the client (issue 7): every key of its own domain the client is
//! about to trust must be the one in the domain's log. The lookup brings the log entry,
//! the VRF proof of its label, an inclusion proof, a signed checkpoint and — from the last
//! checkpoint this profile accepted for the domain — a consistency proof; all must verify,
//! or the client refuses the key. The last accepted checkpoint, and the domain's VRF key
//! (pinned at first use), are kept in `kt.json` in the profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use letterme_protocol::kt::{
    Checkpoint, KtError, KtProof, LogEntry, verify_consistency, verify_inclusion, verify_label,
};
use letterme_protocol::{Address, Attestation, IdentityPublicKey, b64};
use serde::{Deserialize, Serialize};

/// What the profile remembers of one domain's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    /// The domain's VRF public key, base64 (pinned at first use).
    pub vrf_key: String,
    pub checkpoint: Checkpoint,
}

/// `kt.json`: domain → what was seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KtFile {
    pub domains: BTreeMap<String, Seen>,
}

impl KtFile {
    pub fn path(profile: &std::path::Path) -> PathBuf {
        profile.join("kt.json")
    }

    pub fn load(profile: &std::path::Path) -> Result<Self, String> {
        match std::fs::read(Self::path(profile)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("kt.json: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("kt.json: {e}")),
        }
    }

    /// Written to a temporary file and renamed, so a crash leaves the old or the new.
    pub fn save(&self, profile: &std::path::Path) -> Result<(), String> {
        let tmp = profile.join("kt.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes).map_err(|e| format!("kt.json: {e}"))?;
        std::fs::rename(&tmp, Self::path(profile)).map_err(|e| format!("kt.json: {e}"))
    }
}

/// Checks a lookup's proofs for `att` against the domain's `domain_keys`, the pinned VRF
/// key and the last checkpoint seen; returns the checkpoint to remember.
pub fn check(
    address: &Address,
    att: &Attestation,
    proof: &KtProof,
    domain_keys: &[IdentityPublicKey],
    vrf_key: &[u8; 32],
    last: Option<&Checkpoint>,
) -> Result<Checkpoint, KtError> {
    let cp = &proof.checkpoint;
    if !cp.domain.eq_ignore_ascii_case(address.domain()) {
        return Err(KtError::OtherDomain(
            cp.domain.clone(),
            address.domain().to_owned(),
        ));
    }
    if !domain_keys.iter().any(|k| cp.verify(k).is_ok()) {
        return Err(KtError::BadCheckpointSignature(cp.domain.clone()));
    }
    let label = verify_label(vrf_key, address, &proof.label_proof)?;
    let entry = LogEntry::decode(&proof.entry)?;
    if entry.label != label {
        return Err(KtError::BadLabel(address.to_string()));
    }
    verify_inclusion(&entry, proof.index, cp, &proof.inclusion)?;
    // The attested key must be the logged one: a key the server hands out without a log
    // entry is exactly what transparency catches.
    if entry.identity_key != att.identity_key.0
        || entry.encryption_key != att.encryption_key.0
        || entry.key_version != att.version
    {
        return Err(KtError::NotLogged(address.to_string()));
    }
    if let Some(last) = last {
        let p = match &proof.consistency {
            Some(p) => b64::decode(p).map_err(|e| KtError::Malformed(e.to_string()))?,
            None if cp.size == last.size => Vec::new(),
            None => {
                return Err(if cp.size < last.size {
                    KtError::Rollback {
                        domain: cp.domain.clone(),
                        old: last.size,
                        new: cp.size,
                    }
                } else {
                    KtError::Malformed("no consistency proof from the last checkpoint".into())
                });
            }
        };
        verify_consistency(last, cp, &p)?;
    }
    Ok(cp.clone())
}
