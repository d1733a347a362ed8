//! Key transparency on the client (issue 7): every key of its own domain the client is
//! about to trust must be the one in the domain's log. The lookup brings the log entry,
//! the VRF proof of its label, an inclusion proof, a signed checkpoint and — from the last
//! checkpoint this profile accepted for the domain — a consistency proof; all must verify,
//! or the client refuses the key. The last accepted checkpoint per domain (with the VRF
//! key it signs) is kept in `kt.json` in the profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use letterme_protocol::device::{Device, set_digest, verify_set};
use letterme_protocol::kt::{
    Checkpoint, KtError, KtHistory, KtProof, LogEntry, verify_consistency, verify_inclusion,
    verify_label,
};
use letterme_protocol::{Address, Attestation, IdentityPublicKey, b64};
use serde::{Deserialize, Serialize};

/// What the profile remembers of one domain's log: the last checkpoint it accepted
/// (which carries the domain's VRF key, signed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub checkpoint: Checkpoint,
}

/// `kt.json`: domain → what was seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KtFile {
    pub domains: BTreeMap<String, Seen>,
    /// Entries under our own label with a key this profile did not make, already reported
    /// (log indexes); each is reported once, the newest one at every sync while it stays
    /// the newest.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub reported: std::collections::BTreeSet<u64>,
    /// Our account's device keys (base64) in the newest device set this profile checked.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub devices: std::collections::BTreeSet<String>,
    /// Device keys (base64) that left our account's set while this profile watched, or
    /// that it removed: one listed again is reported (a server adding back a device the
    /// user removed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub removed: std::collections::BTreeSet<String>,
    /// The log index of the entry whose device set `devices` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_at: Option<u64>,
}

impl KtFile {
    pub fn path(profile: &std::path::Path) -> PathBuf {
        profile.join("kt.json")
    }

    pub fn load(profile: &std::path::Path) -> Result<Self, String> {
        let bytes = match std::fs::read(Self::path(profile)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("kt.json: {e}")),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("kt.json: {e}"))?;
        let mut file = Self {
            reported: serde_json::from_value(v["reported"].clone()).unwrap_or_default(),
            devices: serde_json::from_value(v["devices"].clone()).unwrap_or_default(),
            removed: serde_json::from_value(v["removed"].clone()).unwrap_or_default(),
            devices_at: serde_json::from_value(v["devices_at"].clone()).unwrap_or_default(),
            ..Self::default()
        };
        if let Some(domains) = v["domains"].as_object() {
            for (d, seen) in domains {
                match serde_json::from_value::<Seen>(seen.clone()) {
                    Ok(s) => {
                        file.domains.insert(d.clone(), s);
                    }
                    // Written before checkpoints carried the VRF key: the next check of
                    // that domain starts afresh, and says so.
                    Err(e) => tracing::warn!(
                        domain = %d,
                        error = %e,
                        "kt.json: a checkpoint in an older format is set aside"
                    ),
                }
            }
        }
        Ok(file)
    }

    /// Remembers `cp` as the checkpoint of `domain` unless a larger one is remembered.
    pub fn remember(&mut self, domain: &str, cp: Checkpoint) {
        let domain = domain.to_ascii_lowercase();
        if self
            .domains
            .get(&domain)
            .is_none_or(|s| cp.size >= s.checkpoint.size)
        {
            self.domains.insert(domain, Seen { checkpoint: cp });
        }
    }

    /// Saves, merged with what is on disk now (another process of this profile — the
    /// proxy's sync and submission, a CLI command — may have saved since this was loaded):
    /// per domain the larger checkpoint, every entry reported and every device removed by
    /// either, and this one's device set.
    pub fn save(&self, profile: &std::path::Path) -> Result<(), String> {
        let mut merged = self.clone();
        if let Ok(disk) = Self::load(profile) {
            for (d, seen) in disk.domains {
                let keep_mine = merged
                    .domains
                    .get(&d)
                    .is_some_and(|m| m.checkpoint.size >= seen.checkpoint.size);
                if !keep_mine {
                    merged.domains.insert(d, seen);
                }
            }
            merged.reported.extend(disk.reported);
            merged.removed.extend(disk.removed);
            if merged.devices.is_empty() {
                merged.devices = disk.devices;
                merged.devices_at = disk.devices_at;
            }
        }
        merged.replace_on_disk(profile)
    }

    /// Written to a temporary file of its own, synced and renamed, so a crash leaves the
    /// old or the new, and a checkpoint once accepted is not forgotten. Replaces what is
    /// on disk (`letterme kt forget`); [`KtFile::save`] merges.
    pub fn replace_on_disk(&self, profile: &std::path::Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::files::write_private(&Self::path(profile), &bytes)
            .map_err(|e| format!("kt.json: {e}"))
    }
}

/// Checks a checkpoint of `domain`: signed by one of `domain_keys`, and — when this
/// profile accepted `last` before — proven to extend it by `consistency`.
pub fn check_checkpoint(
    domain: &str,
    cp: &Checkpoint,
    consistency: Option<&str>,
    domain_keys: &[IdentityPublicKey],
    last: Option<&Checkpoint>,
) -> Result<(), KtError> {
    if !cp.domain.eq_ignore_ascii_case(domain) {
        return Err(KtError::OtherDomain(cp.domain.clone(), domain.to_owned()));
    }
    if !domain_keys.iter().any(|k| cp.verify(k).is_ok()) {
        return Err(KtError::BadCheckpointSignature(cp.domain.clone()));
    }
    let Some(last) = last else {
        return Ok(());
    };
    if last.vrf_key != cp.vrf_key {
        return Err(KtError::VrfKeyChanged(cp.domain.clone()));
    }
    let p = match consistency {
        Some(p) => b64::decode(p).map_err(|e| KtError::Malformed(e.to_string()))?,
        None if cp.size == last.size => Vec::new(),
        None if cp.size < last.size => {
            return Err(KtError::Rollback {
                domain: cp.domain.clone(),
                old: last.size,
                new: cp.size,
            });
        }
        None => {
            return Err(KtError::Malformed(
                "no consistency proof from the last checkpoint".into(),
            ));
        }
    };
    verify_consistency(last, cp, &p)
}

/// Checks a lookup's proofs for `att` and the account's `devices` against the domain's `domain_keys`, the pinned VRF
/// key in the (signed) checkpoint and the last checkpoint seen; returns the checkpoint to
/// remember.
pub fn check(
    address: &Address,
    att: &Attestation,
    devices: &[Device],
    proof: &KtProof,
    domain_keys: &[IdentityPublicKey],
    last: Option<&Checkpoint>,
) -> Result<Checkpoint, KtError> {
    let cp = &proof.checkpoint;
    check_checkpoint(
        address.domain(),
        cp,
        proof.consistency.as_deref(),
        domain_keys,
        last,
    )?;
    let label = verify_label(&cp.vrf_key, address, &proof.label_proof)?;
    let entry = LogEntry::decode(&proof.entry)?;
    if entry.label != label {
        return Err(KtError::BadLabel(address.to_string()));
    }
    verify_inclusion(&entry, proof.index, cp, &proof.inclusion)?;
    // The devices listed must be the set the entry names, each certified by the logged
    // identity key; an account from before devices lists none.
    let not_logged = |why: &str| KtError::DevicesNotLogged(address.to_string(), why.to_owned());
    match entry.device_set {
        None if !devices.is_empty() => return Err(not_logged("the log names no device set")),
        None => {}
        Some(digest) => {
            verify_set(devices, address, &IdentityPublicKey(entry.identity_key))
                .map_err(|e| not_logged(&e.to_string()))?;
            if set_digest(devices) != digest {
                return Err(not_logged("another set than the logged one"));
            }
        }
    }
    // The attested key must be the logged one: a key the server hands out without a log
    // entry is exactly what transparency catches.
    if entry.identity_key != att.identity_key.0
        || entry.encryption_key != att.encryption_key.0
        || entry.key_version != att.version
    {
        return Err(KtError::NotLogged(address.to_string()));
    }
    Ok(cp.clone())
}

/// Checks every entry the log holds under our own label (`GET /v1/kt/mine`): the label
/// proof, each inclusion, the checkpoint. Returns the checkpoint to remember and the
/// entries, oldest first, as (index, entry).
pub fn check_history(
    address: &Address,
    history: &KtHistory,
    domain_keys: &[IdentityPublicKey],
    last: Option<&Checkpoint>,
) -> Result<(Checkpoint, Vec<(u64, LogEntry)>), KtError> {
    let cp = &history.checkpoint;
    check_checkpoint(
        address.domain(),
        cp,
        history.consistency.as_deref(),
        domain_keys,
        last,
    )?;
    let label = verify_label(&cp.vrf_key, address, &history.label_proof)?;
    let mut out = Vec::with_capacity(history.entries.len());
    for h in &history.entries {
        let entry = LogEntry::decode(&h.entry)?;
        if entry.label != label {
            return Err(KtError::BadLabel(address.to_string()));
        }
        verify_inclusion(&entry, h.index, cp, &h.inclusion)?;
        if out.last().is_some_and(|(i, _)| *i >= h.index) {
            return Err(KtError::Malformed("log entries out of order".into()));
        }
        out.push((h.index, entry));
    }
    if out.is_empty() {
        return Err(KtError::NotLogged(address.to_string()));
    }
    Ok((cp.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use letterme_protocol::kt::{KeyOp, Log, VrfKey};
    use letterme_protocol::{EncryptionKeypair, KeyBinding, SigningKeypair};

    /// The devices a lookup lists must be the set the logged entry names, certified by the
    /// logged identity key; an entry from before devices goes with no devices listed.
    #[test]
    fn the_listed_devices_must_be_the_logged_set() {
        let address = Address::parse("alice@a.test").unwrap();
        let (domain, vrf) = (SigningKeypair::generate(), VrfKey::generate());
        let identity = SigningKeypair::generate();
        let enc = EncryptionKeypair::generate().public();
        let binding = KeyBinding::create(&address, &identity, &enc, 10);
        let att = Attestation::issue(&binding, 1, &domain);
        let (label, label_proof) = vrf.label(&address);
        let proof_of = |device_set: Option<[u8; 32]>| {
            let entry = LogEntry {
                op: if device_set.is_some() {
                    KeyOp::DeviceAdd
                } else {
                    KeyOp::Register
                },
                label,
                identity_key: identity.public().0,
                encryption_key: enc.0,
                key_version: 1,
                device_set,
                time: 10,
            };
            let mut log = Log::new();
            let index = log.push(entry);
            KtProof {
                index,
                entry: entry.encode(),
                label_proof: label_proof.to_vec(),
                inclusion: log.prove_inclusion(index).unwrap(),
                checkpoint: log.checkpoint("a.test", vrf.public(), 20, &domain),
                consistency: None,
            }
        };
        let keys = [domain.public()];
        let device = |identity: &SigningKeypair| {
            Device::create(
                &address,
                identity,
                &SigningKeypair::generate(),
                &EncryptionKeypair::generate().public(),
                10,
            )
        };
        let (laptop, desktop) = (device(&identity), device(&identity));
        let set = [laptop.clone(), desktop.clone()];
        check(&address, &att, &[], &proof_of(None), &keys, None).unwrap();
        check(
            &address,
            &att,
            &set,
            &proof_of(Some(set_digest(&set))),
            &keys,
            None,
        )
        .unwrap();
        let refused = |devices: &[Device], logged: Option<[u8; 32]>| {
            matches!(
                check(&address, &att, devices, &proof_of(logged), &keys, None),
                Err(KtError::DevicesNotLogged(..))
            )
        };
        // A device the log does not name, one left out, none at all, devices where the log
        // names none, and a device certified by another identity key.
        let digest = Some(set_digest(&set));
        let extra = [laptop.clone(), desktop.clone(), device(&identity)];
        assert!(refused(&extra, digest));
        assert!(refused(std::slice::from_ref(&laptop), digest));
        assert!(refused(&[], digest));
        assert!(refused(&set, None));
        let stranger = [laptop, device(&SigningKeypair::generate())];
        assert!(refused(&stranger, Some(set_digest(&stranger))));
    }

    #[test]
    fn a_checkpoint_in_the_older_format_is_set_aside_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = letterme_protocol::SigningKeypair::generate();
        let good = Checkpoint::sign("a.test", 3, [1; 32], 10, [2; 32], &key);
        let mut old = serde_json::to_value(&good).unwrap();
        old.as_object_mut().unwrap().remove("vrf_key");
        let json = serde_json::json!({
            "domains": {
                "a.test": { "checkpoint": good },
                "b.test": { "vrf_key": "AAAA", "checkpoint": old },
            },
            "reported": [4],
        });
        std::fs::write(KtFile::path(dir.path()), json.to_string()).unwrap();
        let file = KtFile::load(dir.path()).unwrap();
        assert_eq!(file.domains.len(), 1);
        assert_eq!(file.domains["a.test"].checkpoint, good);
        assert!(file.reported.contains(&4));
        // Saved and loaded again: the same.
        file.save(dir.path()).unwrap();
        assert_eq!(KtFile::load(dir.path()).unwrap().domains.len(), 1);
        // Not JSON at all is an error, not a silent reset.
        std::fs::write(KtFile::path(dir.path()), b"{not json").unwrap();
        assert!(KtFile::load(dir.path()).is_err());
    }
}
