//! The account's devices (issue 18, DECISIONS D83): listing and removing them, and
//! linking a new one with a one-time code (PROTOCOL.md §6b) — shown on the device holding
//! the identity key (`letterme device link`), typed on the new machine (`letterme account
//! join`).

use letterme_protocol::api::{DeviceInfo, DeviceList, ErrorCode};
use letterme_protocol::device::{Device, DeviceBinding, DeviceCert};
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::link::{
    Channel, Exchange, JoinAnswer, JoinRequest, LINK_TTL, LinkCode, Linked, Side, WRONG_CODE,
    join_message, split_join_message,
};
use letterme_protocol::state::{MAX_OPS, Stamp, StateOp};
use letterme_protocol::{Address, EncryptionKeypair, EncryptionPublicKey, Payload, SigningKeypair};

use crate::http::Api;
use crate::profile::{Keys, Profile, ProfileDir, SealedKeys};
use crate::{ClientError, Online, now};

/// Bytes of messages one envelope of mailbox state carries, about (past its first).
const STATE_BYTES: usize = 4 * 1024 * 1024;

/// Seconds one long poll of a link slot waits.
const LINK_POLL: u64 = 25;

/// A code shown and not yet used: [`Online::complete_link`] waits for the new device.
#[derive(Debug)]
pub struct PendingLink {
    pub code: LinkCode,
    /// When the code stops working (Unix seconds).
    pub expires: u64,
    exchange: Exchange,
}

/// The payload of an envelope of mailbox state: from us to us, no message.
fn state_payload(me: &Address, ops: Vec<StateOp>) -> Payload {
    Payload {
        state: ops,
        ..crate::to_ourselves(me, "", String::new())
    }
}

/// A link slot's answer from index `from`, polled until one arrives or the code expires.
async fn next_message(
    api: &Api,
    address: &Address,
    slot: &str,
    from: usize,
    expires: u64,
) -> Result<Vec<u8>, ClientError> {
    loop {
        match api.link_read(address, slot, from, LINK_POLL).await {
            Ok(found) => {
                if let Some(m) = found.into_iter().next() {
                    return Ok(m);
                }
            }
            Err(ClientError::Api {
                code: ErrorCode::NoLink,
                ..
            }) => {
                return Err(ClientError::Link(
                    "the code is wrong or expired; show a new one with `letterme device link` \
                     on a device of the account"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        }
        if now() >= expires {
            return Err(ClientError::Link(
                "the code expired before the other device answered".into(),
            ));
        }
    }
}

impl Online {
    /// Sends this device's mailbox changes (its outbox) to the account's devices, in
    /// envelopes sealed to the account (each current device a key wrap) of at most
    /// `MAX_OPS` operations; each is taken out of the outbox once the server took it.
    /// Returns how many operations went.
    pub async fn push_state(&self) -> Result<usize, ClientError> {
        let cache = &self.me.cache;
        let me = &self.me.profile.address;
        let mut sent = 0;
        let mut keys = None;
        while let Some((upto, ops)) = cache.outbox(MAX_OPS, STATE_BYTES)? {
            if ops.is_empty() {
                cache.outbox_sent(upto)?;
                continue;
            }
            let keys = match &keys {
                Some(k) => k,
                None => keys.insert(self.own_devices().await?),
            };
            let n = ops.len();
            let recipients: Vec<(Address, EncryptionPublicKey)> =
                keys.iter().map(|k| (me.clone(), *k)).collect();
            let env = seal(
                SignerKind::User,
                &self.me.keys.device,
                &state_payload(me, ops),
                &recipients,
                now(),
            )?;
            self.api.send(env.encode()).await?;
            cache.outbox_sent(upto)?;
            sent += n;
        }
        Ok(sent)
    }

    /// Sends this device's mailbox — every folder, every message with its flags and
    /// INTERNALDATE — to a newly linked device, re-sealed to that device alone, in
    /// envelopes of about [`STATE_BYTES`]; `progress(done, total)` after each. Stamped
    /// before anything the devices change, so a change made meanwhile wins. Returns how
    /// many messages went.
    pub async fn send_history(
        &self,
        to: &Device,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<usize, ClientError> {
        let cache = &self.me.cache;
        let history = cache.history()?;
        let total = history.placements.len();
        let id = to.id();
        let stamp = || Stamp {
            clock: 0,
            device: letterme_protocol::device::device_id(&self.me.keys.device.public()),
        };
        let mut batch: Vec<StateOp> = history
            .folders
            .iter()
            .map(|(name, special)| StateOp::CreateFolder {
                name: name.clone(),
                special: special.clone(),
                stamp: stamp(),
            })
            .collect();
        let mut bytes = 0;
        let mut done = 0;
        for p in &history.placements {
            let raw = cache
                .fetch(p.folder, &[p.uid], crate::cache::Content::Whole)?
                .into_iter()
                .next()
                .and_then(|(_, raw, _)| raw);
            bytes += raw.as_ref().map_or(0, Vec::len);
            batch.push(StateOp::Place {
                gid: p.gid.clone(),
                content: p.origin.clone().unwrap_or_else(|| p.gid.clone()),
                folder: p.folder_name.clone(),
                flags: p
                    .flags
                    .iter()
                    .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                    .cloned()
                    .collect(),
                date: Some(p.date),
                raw,
                stamp: stamp(),
            });
            done += 1;
            if bytes >= STATE_BYTES || batch.len() >= MAX_OPS {
                self.send_state_to(to, &id, std::mem::take(&mut batch))
                    .await?;
                bytes = 0;
                progress(done, total);
            }
        }
        if !batch.is_empty() {
            self.send_state_to(to, &id, batch).await?;
        }
        progress(done, total);
        Ok(total)
    }

    /// Mailbox state sealed to device `to` alone (its id `id`), sent to it alone.
    async fn send_state_to(
        &self,
        to: &Device,
        id: &str,
        ops: Vec<StateOp>,
    ) -> Result<(), ClientError> {
        let me = &self.me.profile.address;
        let env = seal(
            SignerKind::User,
            &self.me.keys.device,
            &state_payload(me, ops),
            &[(me.clone(), to.binding.encryption_key)],
            now(),
        )?;
        self.api.send_to(env.encode(), Some(id)).await.map(drop)
    }

    /// Our account's keys, as verified last (or now, the first time).
    pub(crate) async fn own_keys(&self) -> Result<crate::VerifiedKeys, ClientError> {
        if let Some(keys) = self.me.own_keys.lock().ok().and_then(|k| k.clone()) {
            return Ok(keys);
        }
        let keys = self.verified_keys(&self.me.profile.address).await?;
        self.me.set_own_keys(Some(keys.clone()));
        Ok(keys)
    }

    /// Our account's devices' encryption keys, as verified last.
    pub(crate) async fn own_devices(&self) -> Result<Vec<EncryptionPublicKey>, ClientError> {
        Ok(self.own_keys().await?.encryption_keys())
    }

    /// The account's current devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        Ok(self.api.devices().await?.devices)
    }

    /// Removes a device by its id (`letterme device list`): it stops receiving at once.
    /// This profile remembers its key, so that the key listed again is reported.
    pub async fn remove_device(&self, id: &str) -> Result<DeviceList, ClientError> {
        let before = self.api.devices().await?.devices;
        let after = self.api.remove_device(id).await?;
        let dir = &self.me.dir.0;
        let mut file = crate::kt::KtFile::load(dir).map_err(ClientError::Io)?;
        file.removed.extend(
            before
                .iter()
                .filter(|d| !after.devices.iter().any(|a| a.id == d.id))
                .map(|d| d.device_key.to_base64()),
        );
        file.save(dir).map_err(ClientError::Io)?;
        self.me.cache.set_in_step(after.devices.len() > 1);
        Ok(after)
    }

    /// Opens a link: the code to show the new device. Only the device holding the
    /// identity key links, since it certifies the new device.
    pub async fn open_link(&self) -> Result<PendingLink, ClientError> {
        if self.me.keys.identity.is_none() {
            return Err(ClientError::NoIdentity("linking a device"));
        }
        // The password is drawn here; the slot's number is the server's.
        let address = &self.me.profile.address;
        let code = LinkCode::generate();
        let (exchange, first) = Exchange::start(Side::Existing, &code, address);
        let opened = self.api.link_open(first).await?;
        Ok(PendingLink {
            code: code.with_slot(&opened.slot),
            expires: opened.expires,
            exchange,
        })
    }

    /// Waits for the new device to use the code (until it expires), certifies its keys
    /// with the identity key, adds it to the account and answers it. Returns the device.
    pub async fn complete_link(&self, pending: PendingLink) -> Result<Device, ClientError> {
        let me = &self.me;
        let address = &me.profile.address;
        let slot = pending.code.slot.clone();
        let request = next_message(&self.api, address, &slot, 1, pending.expires).await?;
        let (theirs, sealed) = split_join_message(&request)?;
        let channel = pending.exchange.finish(theirs)?;
        let join: JoinRequest = match channel.open(sealed) {
            Ok(j) => j,
            Err(e) => {
                // The two sides used different codes: say so to the new device too.
                let _ = self
                    .api
                    .link_post(address, &slot, true, WRONG_CODE.to_vec())
                    .await;
                return Err(ClientError::Link(format!(
                    "{e}: the new device typed another code; nothing was changed — run `letterme \
                     device link` again"
                )));
            }
        };
        let answer = self.certify(&join.binding).await;
        let reply = match &answer {
            Ok(linked) => JoinAnswer::Linked(Box::new(linked.clone())),
            Err(e) => JoinAnswer::Refused {
                reason: e.to_string(),
            },
        };
        self.api
            .link_post(address, &slot, true, channel.seal(&reply))
            .await?;
        answer.map(|l| l.device)
    }

    /// Certifies the new device's keys and adds it (with this device's own certificate,
    /// the first time the account links one).
    async fn certify(&self, binding: &DeviceBinding) -> Result<Linked, ClientError> {
        let me = &self.me;
        let address = &me.profile.address;
        let identity = me
            .keys
            .identity
            .as_ref()
            .ok_or(ClientError::NoIdentity("linking a device"))?;
        if &binding.address != address || binding.verify().is_err() {
            return Err(ClientError::Link(
                "the new device's keys are not bound to this address".into(),
            ));
        }
        let t = now();
        let device = Device {
            cert: DeviceCert::create(address, identity, &binding.device_key, t),
            binding: binding.clone(),
        };
        let mut adding = Vec::with_capacity(2);
        let ours = identity.public();
        let uncertified = self
            .api
            .devices()
            .await?
            .devices
            .iter()
            .any(|d| d.statement.is_none() && d.device_key == ours);
        if uncertified {
            adding.push(Device::create(
                address,
                identity,
                identity,
                &me.keys.encryption.public(),
                t,
            ));
        }
        adding.push(device.clone());
        let now_listed = self.api.add_devices(&adding).await?;
        // From now on this device's mailbox changes go to the new one too.
        let dir = &me.dir.0;
        let mut file = crate::kt::KtFile::load(dir).map_err(ClientError::Io)?;
        file.devices = now_listed
            .devices
            .iter()
            .map(|d| d.device_key.to_base64())
            .collect();
        file.save(dir).map_err(ClientError::Io)?;
        me.cache.set_in_step(true);
        Ok(Linked {
            device,
            domain: me.profile.domain.clone(),
            domain_key: me.profile.domain_key,
            attestation: me.profile.attestation.clone(),
        })
    }
}

/// `letterme account join`: makes a profile at `dir` for a new device of `address`, linked
/// with the code another device of the account shows. The new device's keys are made here
/// and never leave it; the identity key stays where it is.
pub async fn join_account(
    dir: &ProfileDir,
    address: &Address,
    server: &str,
    code: &LinkCode,
    passphrase: &str,
) -> Result<Profile, ClientError> {
    let (api, _) = crate::server_for_new_profile(dir, address, server).await?;
    let expires = now() + LINK_TTL;
    let first = next_message(&api, address, &code.slot, 0, expires).await?;
    let (exchange, ours) = Exchange::start(Side::New, code, address);
    let channel = exchange.finish(&first)?;
    let device = SigningKeypair::generate();
    let encryption = EncryptionKeypair::generate();
    let binding = DeviceBinding::create(address, &device, &encryption.public(), now());
    let request = channel.seal(&JoinRequest {
        binding: binding.clone(),
    });
    match api
        .link_post(address, &code.slot, false, join_message(&ours, &request))
        .await
    {
        Err(ClientError::Api {
            code: ErrorCode::LinkUsed,
            ..
        }) => {
            return Err(ClientError::Link(
                "this code was used already; show a new one with `letterme device link`".into(),
            ));
        }
        other => other?,
    }
    let answer = next_message(&api, address, &code.slot, 2, expires).await?;
    let linked = open_answer(&channel, &answer)?;
    let d = &linked.device;
    let att = &linked.attestation;
    let checked = d.binding == binding
        && &att.address == address
        && linked.domain.eq_ignore_ascii_case(address.domain())
        && att
            .verify(address, &linked.domain, &linked.domain_key)
            .is_ok()
        && d.verify(address, &att.identity_key).is_ok();
    if !checked {
        return Err(ClientError::Link(
            "the other device's answer does not verify; nothing was saved".into(),
        ));
    }
    let profile = Profile {
        version: 1,
        address: address.clone(),
        server: api.base().to_owned(),
        domain: linked.domain.clone(),
        domain_key: linked.domain_key,
        attestation: linked.attestation.clone(),
        device: Some(linked.device.clone()),
        keys: SealedKeys::seal(&Keys::linked(device, encryption), passphrase),
    };
    dir.save(&profile)?;
    Ok(profile)
}

fn open_answer(channel: &Channel, answer: &[u8]) -> Result<Linked, ClientError> {
    if answer == WRONG_CODE {
        return Err(ClientError::Link(
            "the code is wrong: the other device could not read this one's request; nothing \
             was changed"
                .into(),
        ));
    }
    match channel.open::<JoinAnswer>(answer)? {
        JoinAnswer::Linked(linked) => Ok(*linked),
        JoinAnswer::Refused { reason } => Err(ClientError::Link(format!(
            "the other device refused: {reason}"
        ))),
    }
}

impl crate::Unlocked {
    /// Sets (or forgets) our account's keys as verified.
    pub(crate) fn set_own_keys(&self, keys: Option<crate::VerifiedKeys>) {
        if let Ok(mut k) = self.own_keys.lock() {
            *k = keys;
        }
    }
}
