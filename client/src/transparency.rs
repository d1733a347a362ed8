//! The session's key-transparency checks (DESIGN.md §7.4): a looked-up key against its
//! domain's log, our own entries in our domain's log, and a whole-log audit. The proofs
//! themselves are checked in [`crate::kt`]; this module fetches and decides.

use std::collections::BTreeMap;

use letterme_protocol::api::kt::WitnessVerdict;
use letterme_protocol::{Address, Attestation, EncryptionPublicKey, IdentityPublicKey};
use serde::Serialize;

use crate::{ClientError, Online, kt};

/// Something the check of our own keys in the log found amiss.
#[derive(Debug, Clone)]
pub struct KtAlert {
    pub message: String,
    /// Not reported before by this profile (each entry is filed in the inbox once).
    pub first_time: bool,
}

/// What `letterme kt audit` found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub domain: String,
    /// Entries in the log.
    pub size: u64,
    /// The head's root hash, hex.
    pub root: String,
    /// When the head was signed (Unix seconds).
    pub signed_at: u64,
    /// Entries by operation.
    pub operations: BTreeMap<String, u64>,
    /// The size of the checkpoint this profile saw before, proven a prefix of the head.
    pub previously_seen: Option<u64>,
    /// Our server's verdict as a witness (other domains only): `consistent`.
    pub witness: Option<String>,
}

impl Online {
    /// Checks a key and its device set against its domain's key-transparency log (the checkpoint signed by
    /// one of `domain_keys`) and remembers the checkpoint it was checked against
    /// (DESIGN.md §7.4).
    pub(crate) fn check_transparency(
        &self,
        address: &Address,
        att: &Attestation,
        devices: &[letterme_protocol::device::Device],
        proof: Option<&letterme_protocol::kt::KtProof>,
        domain_keys: &[IdentityPublicKey],
        mut file: kt::KtFile,
    ) -> Result<(), ClientError> {
        let refuse = |e| ClientError::Transparency(address.clone(), e);
        let Some(proof) = proof else {
            return Err(refuse(letterme_protocol::kt::KtError::Malformed(
                "the server sent no key-transparency proof".into(),
            )));
        };
        let domain = address.domain().to_ascii_lowercase();
        let last = file.domains.get(&domain).map(|s| s.checkpoint.clone());
        let accepted =
            kt::check(address, att, devices, proof, domain_keys, last.as_ref()).map_err(refuse)?;
        file.remember(&domain, accepted);
        file.save(&self.me.dir.0).map_err(ClientError::Io)
    }

    /// Checks every entry the key-transparency log holds for our own address (DESIGN.md
    /// §7.4, self-monitoring): each must be a key this profile made, and the newest must
    /// be the one in use. Returns what is amiss, in words for the user; an error when
    /// the log's proofs do not verify.
    pub async fn check_own_keys(&self) -> Result<Vec<KtAlert>, ClientError> {
        let p = &self.me.profile;
        let mut file = kt::KtFile::load(&self.me.dir.0).map_err(ClientError::Io)?;
        let last = file
            .domains
            .get(&p.domain.to_ascii_lowercase())
            .map(|s| s.checkpoint.clone());
        let history = self.api.kt_mine(last.as_ref().map(|c| c.size)).await?;
        let mut domain_keys = vec![p.domain_key];
        if history.checkpoint.verify(&p.domain_key).is_err() {
            domain_keys = self.own_domain_keys().await.unwrap_or(domain_keys);
        }
        let (cp, entries) = kt::check_history(&p.address, &history, &domain_keys, last.as_ref())
            .map_err(ClientError::OwnLog)?;
        let keys = &self.me.keys;
        // Ours: our identity key with a key this profile made. A linked device made no
        // key of the account's: it knows the attested one, and entries from before devices
        // (which came before it) it takes as they are. A device the server adds of its own
        // is caught by the device set's check below, and by every lookup (each device is
        // certified by the identity key, which the server never holds).
        let linked = p.device.is_some();
        let made = |e: &letterme_protocol::kt::LogEntry| {
            e.identity_key == p.attestation.identity_key.0
                && (keys.made(&EncryptionPublicKey(e.encryption_key))
                    || (linked
                        && (e.device_set.is_none()
                            || e.encryption_key == p.attestation.encryption_key.0)))
        };
        let newest = entries.last().map(|(i, _)| *i);
        let mut alerts = Vec::new();
        for (index, e) in &entries {
            let current = Some(*index) == newest;
            if made(e) || (!current && file.reported.contains(index)) {
                continue;
            }
            let first_time = !file.reported.contains(index);
            let message = format!(
                "the key-transparency log of {} lists a key for {} that this profile did not \
                 create (entry {index}, {:?}, key version {}, at Unix time {}){}",
                p.domain,
                p.address,
                e.op,
                e.key_version,
                e.time,
                if current {
                    ": it is the key senders use for you now, so new mail to you may be \
                     readable by someone else; contact your server's operator and run \
                     `letterme key revoke`"
                } else {
                    ""
                }
            );
            alerts.push(KtAlert {
                message,
                first_time,
            });
            file.reported.insert(*index);
        }
        if let Some((index, e)) = entries.last() {
            let in_use = e.encryption_key == keys.encryption.public().0
                || (linked && e.encryption_key == p.attestation.encryption_key.0)
                || keys
                    .pending
                    .as_ref()
                    .is_some_and(|k| k.key.public().0 == e.encryption_key);
            if made(e) && !in_use {
                alerts.push(KtAlert {
                    message: format!(
                        "the newest key the log of {} lists for {} (entry {index}, version {}) \
                         is one this profile retired: the server hands out an old key of yours",
                        p.domain, p.address, e.key_version
                    ),
                    first_time: file.reported.insert(*index),
                });
            }
        }
        file.remember(&p.domain, cp);
        file.save(&self.me.dir.0).map_err(ClientError::Io)?;
        if let Some((newest, _)) = entries.last().filter(|(_, e)| e.device_set.is_some())
            && file.devices_at != Some(*newest)
        {
            // The device set the newest entry names, as a lookup lists it and checked
            // against the log (which saves the checkpoint it checked against); looked up
            // again only when the set changes.
            let found = self.verified_keys(&p.address).await?;
            let mut file = kt::KtFile::load(&self.me.dir.0).map_err(ClientError::Io)?;
            alerts.extend(watch_devices(&mut file, p, &found.devices, *newest));
            file.devices_at = Some(*newest);
            file.save(&self.me.dir.0).map_err(ClientError::Io)?;
            self.me.cache.set_in_step(found.devices.len() > 1);
            self.me.set_own_keys(Some(found));
        }
        Ok(alerts)
    }

    /// Verifies a domain's whole key-transparency log from the first entry: every entry
    /// replayed into a tree whose root must be the signed head's, and the checkpoint this
    /// profile saw before must be a prefix of it. For another domain, the head is then
    /// handed to our server, which witnesses it against what it saw of that domain.
    pub async fn audit(&self, domain: &str) -> Result<AuditReport, ClientError> {
        use letterme_protocol::kt::{Checkpoint, KtError, Log, LogEntry};
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let p = &self.me.profile;
        let own = domain.eq_ignore_ascii_case(&p.domain);
        let keys = if own {
            self.own_domain_keys()
                .await
                .unwrap_or_else(|_| vec![p.domain_key])
        } else {
            self.me.domain_keys()?.keys(&domain).await?
        };
        let bad = |e: KtError| ClientError::Audit(domain.clone(), e.to_string());
        let mut file = kt::KtFile::load(&self.me.dir.0).map_err(ClientError::Io)?;
        let last = file.domains.get(&domain).map(|s| s.checkpoint.clone());
        let mut log = Log::new();
        let mut head: Option<Checkpoint> = None;
        let mut prefix_checked = None;
        let mut ops: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let mut waited = 0;
            let page = loop {
                match self.api.kt_entries(&domain, log.len()).await {
                    // A long log takes many pages: wait for the rate limit to refill.
                    Err(ClientError::Api { status: 429, .. }) if waited < 120 => {
                        waited += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    other => break other?,
                }
            };
            let cp = page.checkpoint;
            if head.is_none() {
                // Checked before anything is downloaded against it.
                kt::check_checkpoint(&domain, &cp, None, &keys, None).map_err(bad)?;
            }
            let head = head.get_or_insert(cp);
            let entries = page.entries;
            if entries.is_empty() && log.len() < head.size {
                return Err(ClientError::Audit(
                    domain.clone(),
                    format!("the server stopped at entry {} of {}", log.len(), head.size),
                ));
            }
            for e in entries {
                if log.len() >= head.size {
                    break;
                }
                let bytes = letterme_protocol::b64::decode(&e)
                    .map_err(|_| ClientError::Audit(domain.clone(), "bad entry".into()))?;
                let entry = LogEntry::decode(&bytes).map_err(bad)?;
                *ops.entry(format!("{:?}", entry.op)).or_default() += 1;
                log.push(entry);
                if let Some(l) = &last
                    && log.len() == l.size
                {
                    prefix_checked = Some(log.root() == l.root);
                }
            }
            if log.len() >= head.size {
                break;
            }
        }
        let head = head.expect("set on the first page");
        if log.root() != head.root {
            return Err(bad(KtError::Inconsistent {
                domain: domain.clone(),
                old: head.size,
                new: log.len(),
            }));
        }
        if let Some(l) = &last {
            if l.size == 0 {
                prefix_checked = Some(true);
            }
            match prefix_checked {
                Some(true) if l.vrf_key == head.vrf_key => {}
                Some(true) => return Err(bad(KtError::VrfKeyChanged(domain.clone()))),
                Some(false) => {
                    return Err(bad(KtError::Inconsistent {
                        domain: domain.clone(),
                        old: l.size,
                        new: head.size,
                    }));
                }
                None => {
                    return Err(bad(KtError::Rollback {
                        domain: domain.clone(),
                        old: l.size,
                        new: head.size,
                    }));
                }
            }
        }
        let witness = if own {
            None
        } else {
            Some(self.api.kt_witness(&head).await?)
        };
        if let Some(WitnessVerdict::Fork { reason, .. }) = &witness {
            return Err(ClientError::Audit(
                domain.clone(),
                format!(
                    "your server holds a checkpoint of {domain} that contradicts this one: {reason} (a fork)"
                ),
            ));
        }
        file.remember(&domain, head.clone());
        file.save(&self.me.dir.0).map_err(ClientError::Io)?;
        Ok(AuditReport {
            domain,
            size: head.size,
            root: letterme_protocol::codec::hex(&head.root),
            signed_at: head.time,
            operations: ops,
            previously_seen: last.map(|l| l.size),
            witness: witness.map(|w| w.as_str().to_owned()),
        })
    }
}

/// Checks our account's current device set (verified against the log) against what this
/// profile saw before: this device must be in it, and no device it saw removed may be back
/// (each is certified by the identity key, so only a removed one can come back without the
/// user). Remembers the set, and the devices that left it. `newest`: the log entry naming
/// the set; what is amiss is filed in the inbox once per entry.
fn watch_devices(
    file: &mut kt::KtFile,
    p: &crate::profile::Profile,
    devices: &[letterme_protocol::device::Device],
    newest: u64,
) -> Vec<KtAlert> {
    let first_time = !file.reported.contains(&newest);
    let mut alerts = Vec::new();
    if devices.is_empty() {
        // An account of one device from before devices: nothing to watch.
        return alerts;
    }
    let current: std::collections::BTreeSet<String> = devices
        .iter()
        .map(|d| d.cert.device_key.to_base64())
        .collect();
    if !current.contains(&p.device_key().to_base64()) {
        alerts.push(KtAlert {
            message: format!(
                "this device is not among the devices of {} the log lists: it was removed \
                 (by you on another device, or by your server)",
                p.address
            ),
            first_time,
        });
    }
    for d in devices {
        let key = d.cert.device_key.to_base64();
        if file.removed.contains(&key) {
            alerts.push(KtAlert {
                message: format!(
                    "device {} of {} was removed and is listed again: a device key was added \
                     back without you, so mail to you may be readable by whoever holds it; \
                     contact your server's operator and remove it with `letterme device remove \
                     {}`",
                    d.id(),
                    p.address,
                    d.id()
                ),
                first_time,
            });
        }
    }
    if !alerts.is_empty() {
        file.reported.insert(newest);
    }
    let gone: Vec<String> = file.devices.difference(&current).cloned().collect();
    file.removed.extend(gone);
    file.devices = current;
    alerts
}
