//! Our keys and other users': looking up a user's attested key and verifying it, and
//! rotating or revoking our own encryption key.

use letterme_protocol::device::Device;
use letterme_protocol::{
    Address, Attestation, EncryptionKeypair, EncryptionPublicKey, IdentityPublicKey, KeyBinding,
};
use serde::Serialize;

use crate::profile::SealedKeys;
use crate::{ClientError, Online, kt, now, profile};

/// The result of `letterme key rotate` / `letterme key revoke`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyChange {
    pub address: Address,
    pub version: u32,
    pub encryption_key: EncryptionPublicKey,
    /// The log entry that records the change.
    pub log_index: u64,
    pub revoked: bool,
    /// Mail the server receives until then still opens with the previous key.
    pub previous_opens_until: u64,
    /// The change was begun earlier and interrupted; this run finished it.
    pub resumed: bool,
}

/// A user's keys as verified: the attestation, and the device set the domain's
/// key-transparency log names (none for an account of one device from before devices).
#[derive(Debug, Clone)]
pub struct VerifiedKeys {
    pub attestation: Attestation,
    pub devices: Vec<Device>,
}

impl VerifiedKeys {
    /// The keys mail to the user is sealed to: one per device.
    pub fn encryption_keys(&self) -> Vec<EncryptionPublicKey> {
        if self.devices.is_empty() {
            vec![self.attestation.encryption_key]
        } else {
            self.devices
                .iter()
                .map(|d| d.binding.encryption_key)
                .collect()
        }
    }

    /// The keys the user's envelopes may be signed with: the identity key and each
    /// device's key.
    pub fn signing_keys(&self) -> Vec<IdentityPublicKey> {
        let mut keys = vec![self.attestation.identity_key];
        keys.extend(self.devices.iter().map(|d| d.cert.device_key));
        keys.dedup();
        keys
    }
}

/// Days a rotated-out key still opens newly received mail, by default (`letterme key
/// rotate --overlap-days`): mail in flight (federation retries give up after 5 days)
/// still opens. The user's own key; the server's domain key has `DOMAIN_KEY_OVERLAP`.
pub const ROTATION_OVERLAP_DAYS: u64 = 7;

/// A pending key older than this, that the server does not have, is made again (its
/// binding would be refused as stale).
const PENDING_MAX_AGE: u64 = 3600;

impl Online {
    /// The attested keys of a user and their devices: on our domain verified against the
    /// pinned domain key, on another domain against that domain's keys in DNS; in both
    /// cases also against the domain's key-transparency log (DESIGN.md §5, §7.4).
    pub async fn verified_keys(&self, address: &Address) -> Result<VerifiedKeys, ClientError> {
        let p = &self.me.profile;
        let own = address.domain().eq_ignore_ascii_case(&p.domain);
        let kt_file = kt::KtFile::load(&self.me.dir.0).map_err(ClientError::Io)?;
        let since = kt_file
            .domains
            .get(&address.domain().to_ascii_lowercase())
            .map(|s| s.checkpoint.size);
        let found = self.api.lookup(address, since).await?;
        let att = match found.attestation {
            Some(a) if found.found => a,
            _ if found.legacy => return Err(ClientError::Legacy(address.clone())),
            _ => return Err(ClientError::UnknownRecipient(address.clone())),
        };
        let keys = if own {
            let mut keys = vec![p.domain_key];
            if let Err(pinned) = att.verify(address, &p.domain, &p.domain_key) {
                // After a rotation of our domain key the new key is published in DNS
                // beside the pinned one (docs/OPERATIONS.md §7).
                keys = self.own_domain_keys().await.unwrap_or_default();
                if !keys
                    .iter()
                    .any(|k| att.verify(address, &p.domain, k).is_ok())
                {
                    return Err(ClientError::Unverified(address.clone(), pinned));
                }
            }
            keys
        } else {
            let keys = self
                .me
                .domain_keys()?
                .keys(address.domain())
                .await
                .map_err(|e| ClientError::UnverifiedRemote(address.clone(), e.to_string()))?;
            let mut failure = None;
            for k in &keys {
                match att.verify(address, address.domain(), k) {
                    Ok(()) => {
                        failure = None;
                        break;
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if keys.is_empty() {
                return Err(ClientError::UnverifiedRemote(
                    address.clone(),
                    "no domain key in DNS".into(),
                ));
            }
            if let Some(e) = failure {
                return Err(ClientError::Unverified(address.clone(), e));
            }
            keys
        };
        self.check_transparency(
            address,
            &att,
            &found.devices,
            found.kt.as_ref(),
            &keys,
            kt_file,
        )?;
        Ok(VerifiedKeys {
            attestation: att,
            devices: found.devices,
        })
    }

    /// Replaces our encryption key with a new one, made here: the server attests and logs
    /// it, senders then encrypt only to it. The previous key stays in the keystore: it
    /// opens stored mail, and mail received within `overlap` seconds (none after now when
    /// `revoke`). Safe to repeat after an interruption: the new key is saved before the
    /// server hears of it, and the same request is sent again.
    pub async fn change_key(
        &self,
        passphrase: &str,
        revoke: bool,
        overlap: u64,
    ) -> Result<KeyChange, ClientError> {
        let dir = &self.me.dir;
        let mut profile = dir.load()?;
        let mut keys = dir.unlock(&profile, passphrase)?;
        let identity = keys
            .identity
            .clone()
            .ok_or(ClientError::NoIdentity("changing the account's key"))?;
        let address = profile.address.clone();
        let mut resumed = false;
        let on_server = self.api.lookup(&address, None).await?.attestation;
        // The server takes only a binding newer than the key it has.
        let after = on_server
            .as_ref()
            .map_or(0, |a| a.created)
            .max(profile.attestation.created);
        // An interrupted change: the server may have it already.
        if let Some(pending) = &keys.pending {
            let on_server = on_server
                .as_ref()
                .is_some_and(|a| a.encryption_key == pending.key.public());
            if on_server || now().saturating_sub(pending.created) < PENDING_MAX_AGE {
                resumed = true;
            } else {
                keys.pending = None;
            }
        }
        if keys.pending.is_none() {
            keys.pending = Some(profile::PendingKey {
                key: EncryptionKeypair::generate(),
                created: now().max(after + 1),
                revoke,
                overlap,
            });
            // Saved before the server hears of it, so the key is never lost.
            profile.keys = SealedKeys::seal(&keys, passphrase);
            dir.save(&profile)?;
        }
        let pending = keys.pending.take().expect("set above");
        let revoke = pending.revoke || revoke;
        let binding =
            KeyBinding::create(&address, &identity, &pending.key.public(), pending.created);
        let (att, log_index) = self.api.change_key(&binding, revoke).await?;
        // Newer than what the server had (after a restore from a backup that may be older
        // than what this profile last saw).
        let before = on_server
            .as_ref()
            .map_or(profile.attestation.version, |a| a.version);
        if att.identity_key != identity.public()
            || att.encryption_key != pending.key.public()
            || (att.version <= before && !resumed)
        {
            return Err(ClientError::BadRegistration(address));
        }
        let domain_keys = self
            .own_domain_keys()
            .await
            .unwrap_or(vec![profile.domain_key]);
        if !domain_keys
            .iter()
            .any(|k| att.verify(&address, &profile.domain, k).is_ok())
        {
            return Err(ClientError::BadRegistration(address));
        }
        let t = now();
        let opens_until = if revoke {
            t
        } else {
            t.saturating_add(pending.overlap)
        };
        let old = std::mem::replace(&mut keys.encryption, pending.key);
        keys.retired.insert(
            0,
            profile::RetiredKey {
                key: old,
                version: profile.attestation.version,
                retired_at: t,
                open_until: opens_until,
                revoked: revoke,
            },
        );
        profile.attestation = att.clone();
        profile.keys = SealedKeys::seal(&keys, passphrase);
        dir.save(&profile)?;
        // The new key as senders will see it: attested, and in the log.
        let seen = self.verified_keys(&address).await?.attestation;
        if seen.encryption_key != att.encryption_key {
            return Err(ClientError::Io(format!(
                "the server still hands out the previous key for {address}; run the command again"
            )));
        }
        Ok(KeyChange {
            address,
            version: att.version,
            encryption_key: att.encryption_key,
            log_index,
            revoked: revoke,
            previous_opens_until: opens_until,
            resumed,
        })
    }

    /// Our domain's keys: the pinned one, and those published in DNS (during and after a
    /// domain key rotation).
    pub(crate) async fn own_domain_keys(&self) -> Result<Vec<IdentityPublicKey>, ClientError> {
        let p = &self.me.profile;
        let mut keys = vec![p.domain_key];
        for k in self.me.domain_keys()?.keys(&p.domain).await? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }
}
