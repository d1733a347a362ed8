//! Syncing: fetch new envelopes a page at a time, verify and open them, commit them to
//! the local store, and only then acknowledge them to the server; `watch` repeats that
//! on a long poll.

use std::collections::{BTreeMap, BTreeSet};

use letterme_protocol::envelope::{Envelope, OpenError, SignerKind, Verified};
use letterme_protocol::state::StateOp;
use letterme_protocol::{Address, IdentityPublicKey, Payload};
use serde::Serialize;

use crate::cache::{NewMail, Synced};
use crate::http::{Api, ListEntry};
use crate::mailbox::Stored;
use crate::{
    AttachmentDownload, ClientError, KtAlert, NOTICE_SENDER, Online, Unlocked, cache_error, now,
    render,
};

/// Seconds one long poll of `watch` waits on the server.
pub const WATCH_WAIT_SECS: u64 = 50;

/// Messages a sync takes per page: one page commits while the next downloads and opens,
/// so two are in memory at once.
const SYNC_PAGE: u32 = 500;

/// Envelope bytes (by the listed sizes) a sync takes per page, whatever the count: at
/// least one envelope, however large.
const SYNC_PAGE_BYTES: u64 = 4 << 20;

/// How many download requests a sync keeps in flight.
const FETCH_CONCURRENCY: usize = 4;

/// Envelope bytes (by the listed sizes) a sync asks for in one request: a page goes as
/// several requests, in flight together.
const FETCH_BATCH_BYTES: u64 = 1 << 20;

/// An envelope verified and opened on a worker thread.
enum Opened {
    Rendered(NewMail),
    /// Only mailbox state, from a device of the account (another's, or this one's coming
    /// back): no message.
    State,
    /// Names blobs: rendered without their bytes, then they are downloaded and kept.
    WithBlobs(Box<Payload>),
}

/// How often a long-running sync checks our own keys in the log at most.
pub const OWN_KEYS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// An envelope opened: its signer, what it holds, and the mailbox state it carries.
type OpenedBy = (IdentityPublicKey, Opened, Vec<StateOp>);

/// A page whose local commit runs on a blocking thread.
struct Committing {
    /// The page's ids to acknowledge once the commit returned: all but those filed before
    /// their blobs are kept.
    ids: Vec<String>,
    /// The SHA-256 of each envelope being stored, by id (not in the store yet).
    storing: BTreeMap<String, [u8; 32]>,
    /// The commit; what it took.
    commit: tokio::task::JoinHandle<Result<std::time::Duration, ClientError>>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// How many of `entries`, from the first, fit in `budget` bytes by their listed sizes
/// (at least one).
fn within_bytes(entries: &[ListEntry], budget: u64) -> usize {
    let mut total = 0;
    entries
        .iter()
        .take_while(|e| {
            total = e.size.saturating_add(total);
            total <= budget
        })
        .count()
        .max(1)
}

/// One batch download; a record per id up to the server's byte budget (`None` when no
/// longer pending). Falls back to one request per envelope against a server that has no
/// `POST /v1/messages/fetch` (older servers answer it 404 or 405).
async fn fetch_batch(api: &Api, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
    match api.fetch_many(ids).await {
        Ok(records) => Ok(records.into_iter().map(|r| r.envelope).collect()),
        Err(ClientError::Api {
            status: 404 | 405, ..
        }) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(match api.fetch(id).await {
                    Ok(bytes) => Some(bytes),
                    Err(ClientError::Api { status: 404, .. }) => None,
                    Err(e) => return Err(e),
                });
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

async fn join_ack(
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
) -> Result<(), ClientError> {
    task.await
        .map_err(|e| ClientError::Io(format!("acknowledging failed: {e}")))?
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub fetched: usize,
    pub already_had: usize,
    pub refused: Vec<(String, String)>,
    /// Ids of the messages this sync stored.
    pub new_ids: Vec<String>,
    /// Mailbox changes the account's other devices made, applied.
    pub state_changes: usize,
    /// What the check of our own keys in the key-transparency log found amiss: a key this
    /// profile did not make, or a log that does not verify. Empty when all is well.
    pub kt_alerts: Vec<String>,
}

impl Online {
    /// Syncs now, then keeps syncing as mail arrives (long poll), calling `on_new` after
    /// every sync that stored or refused something. Logs in again when the token expires.
    /// Runs until an error.
    pub async fn watch(
        &mut self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
        on_new: &mut (dyn FnMut(&Unlocked, &SyncReport) + Send),
    ) -> Result<(), ClientError> {
        self.watching = true;
        loop {
            match self.sync(progress).await {
                Ok(report) => {
                    if report.fetched > 0
                        || !report.refused.is_empty()
                        || !report.kt_alerts.is_empty()
                    {
                        on_new(&self.me, &report);
                    }
                }
                Err(ClientError::Api { status: 401, .. }) => {
                    self.relogin().await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.api.list_wait(0, WATCH_WAIT_SECS).await {
                Ok(_) => {}
                Err(ClientError::Api { status: 401, .. }) => self.relogin().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches new mail, verifies it, commits it locally, then acknowledges it. Works a
    /// page ([`SYNC_PAGE`] messages or [`SYNC_PAGE_BYTES`]) at a time, in a pipeline: while
    /// one page commits on a blocking thread, the next downloads (a few batch requests in
    /// flight) and opens on every core; a page is acknowledged only once its commit
    /// returned (DECISIONS D19).
    pub async fn sync(
        &self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<SyncReport, ClientError> {
        // A key change since this profile was opened (`letterme key rotate` while a proxy
        // runs): mail to the new key would not open, so nothing is fetched until restart.
        if self.me.dir.load()?.attestation.encryption_key
            != self.me.profile.attestation.encryption_key
        {
            return Err(ClientError::KeysChanged(
                self.me.dir.0.display().to_string(),
            ));
        }
        let mailbox = self.me.mailbox()?;
        // Filed before, their blobs not downloaded yet: neither fetched again nor
        // acknowledged (the download acknowledges them).
        let waiting = self.me.cache.awaiting_envelopes()?;
        let mut report = SyncReport::default();
        let mut senders: BTreeMap<Address, Result<Vec<IdentityPublicKey>, String>> =
            BTreeMap::new();
        let mut after = 0;
        let mut done = 0;
        let mut committing: Option<Committing> = None;
        let mut acking: Option<tokio::task::JoinHandle<Result<(), ClientError>>> = None;
        loop {
            let started = std::time::Instant::now();
            let mut page = self.api.list_up_to(after, Some(SYNC_PAGE)).await?;
            if page.is_empty() {
                break;
            }
            let listed = page.len();
            page.truncate(within_bytes(&page, SYNC_PAGE_BYTES));
            after = page.iter().map(|e| e.seq).max().unwrap_or(after);
            let taken = page.len();
            page.retain(|e| !waiting.contains(&e.id));
            let bodies = self.fetch_page(&page).await?;
            let downloaded = started.elapsed();
            // Envelope ids stored before (or in the page committing now) with other bytes:
            // a replay, refused when opened.
            let mut replayed = BTreeSet::new();
            let mut fresh = Vec::new();
            for (entry, body) in page.iter().zip(bodies) {
                // Acknowledged elsewhere meanwhile: nothing to store.
                let Some(bytes) = body else { continue };
                match mailbox.envelope(&entry.id)? {
                    // Stored before a crash, never acknowledged: acknowledge now.
                    Some(existing) if existing == bytes => report.already_had += 1,
                    Some(_) => {
                        replayed.insert(entry.id.clone());
                        fresh.push((entry, bytes));
                    }
                    None => fresh.push((entry, bytes)),
                }
            }
            // The page committing now is not in the store yet: an id of it listed again is
            // taken as stored.
            if let Some(page) = &committing {
                fresh.retain(|(entry, bytes)| match page.storing.get(&entry.id) {
                    Some(same) if *same == digest(bytes) => {
                        report.already_had += 1;
                        false
                    }
                    Some(_) => {
                        replayed.insert(entry.id.clone());
                        true
                    }
                    None => true,
                });
            }
            for (_, bytes) in &fresh {
                if let Ok(env) = Envelope::decode(bytes)
                    && env.signer_kind == SignerKind::User
                    && !senders.contains_key(&env.sender)
                {
                    // Our own (mailbox state from our devices): as verified last, unless a
                    // device unknown then signed (one linked since).
                    let own = env.sender == self.me.profile.address;
                    let found = match own.then_some(self.own_keys().await) {
                        Some(Ok(k)) if k.signing_keys().contains(&env.signer_key) => Ok(k),
                        _ => self.verified_keys(&env.sender).await,
                    };
                    if own && let Ok(k) = &found {
                        self.me.set_own_keys(Some(k.clone()));
                    }
                    let key = found.map(|k| k.signing_keys()).map_err(|e| e.to_string());
                    senders.insert(env.sender.clone(), key);
                }
            }
            // Envelopes our domain signed with a key other than the pinned one: accepted
            // only when DNS publishes that key too (a domain key rotation).
            let pinned = self.me.profile.domain_key;
            let rotated = fresh.iter().any(|(_, b)| {
                Envelope::decode(b)
                    .is_ok_and(|e| e.signer_kind == SignerKind::Domain && e.signer_key != pinned)
            });
            let domain_keys = if rotated {
                self.own_domain_keys().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read our domain's keys from DNS");
                    vec![pinned]
                })
            } else {
                vec![pinned]
            };
            let opening = std::time::Instant::now();
            let opened = self.open_all(&fresh, &senders, &domain_keys, &replayed);
            let opened_in = opening.elapsed();
            let mut accepted = Vec::new();
            let later = self.attachments != AttachmentDownload::WithMessage;
            let mut blob_limit = None;
            for ((entry, bytes), result) in fresh.into_iter().zip(opened) {
                let (result, state) = match result {
                    Ok((signer, opened, state)) => (Ok((signer, opened)), state),
                    Err(e) => (Err(e), Vec::new()),
                };
                let result = match result {
                    Ok((signer, Opened::State)) => Ok((signer, None, false)),
                    Ok((signer, Opened::Rendered(mail))) => Ok((signer, Some(mail), false)),
                    // Filed now, its blobs downloaded later (DECISIONS D76).
                    Ok((signer, Opened::WithBlobs(payload))) if later => self
                        .filed_for_later(&payload, &signer, entry.received, &mut blob_limit)
                        .await?
                        .map(|mail| (signer, Some(mail), true)),
                    Ok((signer, Opened::WithBlobs(payload))) => self
                        .fetch_blobs(*payload, &signer, entry.received)
                        .await?
                        .map(|mail| (signer, Some(mail), false)),
                    Err(reason) => Err(reason),
                };
                match result {
                    Ok((signer, mail, awaiting)) => {
                        if mail.is_some() {
                            report.fetched += 1;
                            report.new_ids.push(entry.id.clone());
                        } else {
                            report.state_changes += state.len();
                        }
                        accepted.push(Synced {
                            mail,
                            state,
                            stored: Stored {
                                id: entry.id.clone(),
                                sender: entry.sender.clone(),
                                received: entry.received,
                                envelope: bytes,
                                signer_key: signer.0,
                            },
                            awaiting,
                        });
                    }
                    Err(reason) => {
                        tracing::warn!(id = %entry.id, sender = %entry.sender, %reason, "refused a message");
                        mailbox.refuse(&entry.id, &entry.sender, &reason, &bytes, now())?;
                        report.refused.push((entry.id.clone(), reason));
                    }
                }
            }
            // The previous page is acknowledged once its commit returned; this one's commit
            // then starts, and runs while the next page downloads and opens.
            if let Some(previous) = committing.take() {
                self.ack_after_commit(previous, &mut acking).await?;
            }
            let cache = self.me.cache.clone();
            let messages = page.len();
            let filed_awaiting: BTreeSet<&str> = accepted
                .iter()
                .filter(|a| a.awaiting)
                .map(|a| a.stored.id.as_str())
                .collect();
            let ids = page
                .iter()
                .filter(|e| !filed_awaiting.contains(e.id.as_str()))
                .map(|e| e.id.clone())
                .collect();
            committing = Some(Committing {
                ids,
                storing: accepted
                    .iter()
                    .map(|a| (a.stored.id.clone(), digest(&a.stored.envelope)))
                    .collect(),
                commit: tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    cache.commit_synced(&accepted, now())?;
                    Ok(started.elapsed())
                }),
            });
            done += messages;
            // Where a sync's time goes (docs/PERFORMANCE.md reads these).
            tracing::info!(
                messages,
                download_ms = downloaded.as_millis() as u64,
                open_ms = opened_in.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "synced a page"
            );
            progress(
                done,
                done + usize::from(taken < listed || listed == SYNC_PAGE as usize),
            );
        }
        if let Some(last) = committing.take() {
            self.ack_after_commit(last, &mut acking).await?;
        }
        if let Some(last) = acking {
            join_ack(last).await?;
        }
        // What a proxy filed to download later and has not (it was stopped, or downloads
        // on demand): downloading with the message, this sync does.
        if self.attachments == AttachmentDownload::WithMessage {
            for (content, _) in self.me.cache.awaiting()? {
                if let crate::Downloaded::Refused { envelope, reason } =
                    self.download_awaited(content).await?
                {
                    report.refused.push((envelope, reason));
                }
            }
        }
        // Our own keys in the log: at every sync of a command, and at most every
        // [`OWN_KEYS_EVERY`] in a long-running sync (a proxy syncs on every delivery; each
        // check is a lookup the server counts).
        let due = !self.watching
            || self
                .me
                .own_keys_checked
                .lock()
                .map_or(true, |t| t.is_none_or(|t| t.elapsed() >= OWN_KEYS_EVERY));
        let checked = if due {
            self.check_own_keys().await
        } else {
            Ok(Vec::new())
        };
        if due
            && checked.is_ok()
            && let Ok(mut t) = self.me.own_keys_checked.lock()
        {
            *t = Some(std::time::Instant::now());
        }
        let alerts = match checked {
            Ok(alerts) => alerts,
            Err(e) => vec![KtAlert {
                message: format!("cannot check your keys in the key-transparency log: {e}"),
                first_time: false,
            }],
        };
        for a in &alerts {
            tracing::warn!(alert = %a.message, "key transparency");
            if a.first_time {
                // Where a mail client's user looks: a local message in the inbox.
                self.file_alert(&a.message)?;
            }
        }
        report.kt_alerts = alerts.into_iter().map(|a| a.message).collect();
        // This device's mailbox changes, for the others (a proxy sends them as they are
        // made; here what is left over).
        if let Err(e) = self.push_state().await {
            tracing::warn!(error = %e, "cannot send mailbox changes to the other devices yet");
        }
        Ok(report)
    }

    /// Files a key-transparency alert in the local INBOX (for IMAP clients). It is written
    /// here, never sent anywhere.
    fn file_alert(&self, message: &str) -> Result<(), ClientError> {
        let me = &self.me.profile.address;
        let payload = crate::to_ourselves(
            me,
            "letter.me security alert: the key-transparency log lists a key you did not create",
            format!(
                "This message was written by your letter.me client, on this machine.\n\n\
                 WARNING: {message}.\n"
            ),
        );
        let raw = render::outgoing(&payload)
            .ok_or_else(|| ClientError::Io("cannot write the alert message".into()))?;
        self.me
            .cache
            .append(&NewMail {
                folder: "INBOX".into(),
                flags: vec!["\\Flagged".into()],
                internal_date: now() as i64,
                raw,
                message_id: None,
                pieces: vec![],
            })
            .map(drop)
            .map_err(cache_error)
    }

    /// Waits for a page's commit, logs what it took, then acknowledges the page in the
    /// background (after the acknowledgement of the page before).
    async fn ack_after_commit(
        &self,
        page: Committing,
        acking: &mut Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
    ) -> Result<(), ClientError> {
        let took = page
            .commit
            .await
            .map_err(|e| ClientError::Io(format!("the local commit failed: {e}")))??;
        tracing::info!(
            messages = page.ids.len(),
            commit_ms = took.as_millis() as u64,
            "committed a page"
        );
        if let Some(previous) = acking.take() {
            join_ack(previous).await?;
        }
        // Filed meanwhile by another process (the proxy beside a CLI sync) to download its
        // blobs later: not acknowledged before it has (D76).
        let waiting = self.me.cache.awaiting_envelopes()?;
        let mut ids = page.ids;
        ids.retain(|id| !waiting.contains(id));
        let api = self.api.clone();
        *acking = Some(tokio::spawn(async move { api.ack_many(&ids).await }));
        Ok(())
    }

    /// Downloads a page of envelopes in listing order, in batches of about
    /// [`FETCH_BATCH_BYTES`] (by the listed sizes), several in flight. `None` for an
    /// envelope no longer pending. Against a server without `POST /v1/messages/fetch`, one
    /// request per envelope.
    async fn fetch_page(&self, page: &[ListEntry]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let mut batches = Vec::new();
        let mut start = 0;
        while start < page.len() {
            let end = start + within_bytes(&page[start..], FETCH_BATCH_BYTES);
            batches.push(start..end);
            start = end;
        }
        let mut out: Vec<Option<Vec<u8>>> = vec![None; page.len()];
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < FETCH_CONCURRENCY
                && let Some(range) = batches.pop()
            {
                let api = self.api.clone();
                let ids: Vec<String> = page[range.clone()].iter().map(|e| e.id.clone()).collect();
                tasks.spawn(async move { (range, fetch_batch(&api, &ids).await) });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (range, got) =
                joined.map_err(|e| ClientError::Io(format!("download task failed: {e}")))?;
            let got = got?;
            let answered = got.len();
            for (slot, envelope) in out[range.clone()].iter_mut().zip(got) {
                *slot = envelope;
            }
            // The server's byte budget ended the answer early: ask for the rest.
            if answered < range.len() {
                batches.push(range.start + answered..range.end);
            }
        }
        Ok(out)
    }

    /// Renders a message that names blobs without their bytes, and downloads, checks and
    /// keeps the blobs (sealed, in the local store) that the message is then read with.
    /// `Ok(Err(reason))`: the entity does not place each blob exactly once, or a blob is
    /// not the one the message names or not on the server — the message is refused, never
    /// shown without it.
    async fn fetch_blobs(
        &self,
        payload: Payload,
        signer: &IdentityPublicKey,
        received: u64,
    ) -> Result<Result<NewMail, String>, ClientError> {
        // Placed before anything is downloaded: each blob exactly once in the entity.
        let mail = match self.me.filed_in_pieces(&payload, signer, received) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why.to_string())),
        };
        for r in &payload.blobs {
            if let Err(reason) = self.keep_or_refuse(r).await? {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(mail))
    }

    /// [`Unlocked::filed_in_pieces`] for a message whose blobs are downloaded later (D76).
    /// `Ok(Err(reason))`: it cannot be placed, or it says a blob is larger than the server
    /// takes (`limit`, asked once) — the size is the sender's word until the download
    /// checks it, and its place is filled with as many bytes meanwhile.
    async fn filed_for_later(
        &self,
        payload: &Payload,
        signer: &IdentityPublicKey,
        received: u64,
        limit: &mut Option<u64>,
    ) -> Result<Result<NewMail, String>, ClientError> {
        let max = match *limit {
            Some(max) => max,
            None => *limit.insert(self.api.server_info().await?.max_attachment_size),
        };
        if let Some(r) = payload.blobs.iter().find(|r| r.size > max) {
            return Ok(Err(format!(
                "attachment blob {} is said to be {} bytes, more than the server takes ({max})",
                r.id, r.size
            )));
        }
        Ok(self
            .me
            .filed_in_pieces(payload, signer, received)
            .map_err(|why| why.to_string()))
    }

    /// Verifies, opens and renders envelopes on every core; a message that names blobs is
    /// rendered (without their bytes) when they are downloaded. `replayed`: ids that must not be opened again.
    fn open_all(
        &self,
        items: &[(&ListEntry, Vec<u8>)],
        senders: &BTreeMap<Address, Result<Vec<IdentityPublicKey>, String>>,
        domain_keys: &[IdentityPublicKey],
        replayed: &BTreeSet<String>,
    ) -> Vec<Result<OpenedBy, String>> {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let chunk = items.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let decoded: Vec<_> = part
                            .iter()
                            .map(|(_, bytes)| Envelope::decode(bytes))
                            .collect();
                        // The signatures of the part checked as one batch (DECISIONS D77).
                        let envelopes: Vec<&Envelope> =
                            decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
                        let mut checked = Envelope::verify_all(&envelopes).into_iter();
                        part.iter()
                            .zip(&decoded)
                            .map(|((entry, _), env)| {
                                let env = env.as_ref().map_err(ToString::to_string)?;
                                let checked =
                                    checked.next().ok_or("the signature was not checked")?;
                                let (signer, payload) = self.verify(
                                    entry,
                                    env,
                                    checked,
                                    senders,
                                    domain_keys,
                                    replayed,
                                )?;
                                let mut payload = payload;
                                let state = state_of(
                                    &self.me.profile.address,
                                    env,
                                    std::mem::take(&mut payload.state),
                                )?;
                                // A Sent copy carries its message; other state does not.
                                let carries = state.iter().any(|op| {
                                    matches!(op, StateOp::Place { content, .. } if content.is_empty())
                                });
                                if !state.is_empty() && !carries {
                                    return Ok((signer, Opened::State, state));
                                }
                                if !payload.blobs.is_empty() {
                                    return Ok((
                                        signer,
                                        Opened::WithBlobs(Box::new(payload)),
                                        state,
                                    ));
                                }
                                let mail = self.me.filed(&payload, &signer, entry.received);
                                Ok((signer, Opened::Rendered(mail), state))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Checks a fetched envelope fully, given whether its signature holds (`checked`); the
    /// error is the reason it is refused.
    fn verify(
        &self,
        entry: &ListEntry,
        env: &Envelope,
        checked: Result<Verified<'_>, OpenError>,
        senders: &BTreeMap<Address, Result<Vec<IdentityPublicKey>, String>>,
        domain_keys: &[IdentityPublicKey],
        replayed: &BTreeSet<String>,
    ) -> Result<(IdentityPublicKey, Payload), String> {
        if env.id.to_hex() != entry.id {
            return Err("the envelope id does not match the server's listing".into());
        }
        // Legacy mail is sealed by our own domain's inbound gateway; native mail by its
        // sender's identity key or one of its devices' keys, verified once for this sync.
        let signer = if env.signer_kind == SignerKind::Domain {
            if !domain_keys.contains(&env.signer_key) {
                return Err(
                    "signed by a domain key that is neither pinned nor published in DNS".into(),
                );
            }
            env.signer_key
        } else {
            let keys = senders
                .get(&env.sender)
                .cloned()
                .unwrap_or_else(|| Err("the sender's key was not looked up".into()))?;
            if !keys.contains(&env.signer_key) {
                return Err(OpenError::UnexpectedSigner(env.sender.clone()).to_string());
            }
            env.signer_key
        };
        let seen = |i: &letterme_protocol::EnvelopeId| replayed.contains(&i.to_hex());
        let keys = &self.me.keys;
        let me = &self.me.profile.address;
        let verified = checked.map_err(|e| e.to_string())?;
        let payload = verified
            .open(me, &keys.encryption_at(entry.received), &signer, &seen)
            .map_err(|e| {
                // Sealed to a key whose overlap ended before the server received it: say so.
                let late = keys.retired.iter().find(|r| {
                    entry.received > r.open_until
                        && verified.open(me, &[&r.key], &signer, &seen).is_ok()
                });
                match late {
                    Some(r) => format!(
                        "sealed to your encryption key version {}, which was {} before this \
                         arrived; the sender used an outdated key",
                        r.version,
                        if r.revoked {
                            "revoked"
                        } else {
                            "retired (overlap ended)"
                        }
                    ),
                    None => e.to_string(),
                }
            })?;
        // Our domain signs two things: inbound legacy mail, and failure notices from its
        // mailer-daemon.
        if env.signer_kind == SignerKind::Domain
            && payload.legacy.is_none()
            && !(env.sender.local_part() == NOTICE_SENDER
                && env
                    .sender
                    .domain()
                    .eq_ignore_ascii_case(&self.me.profile.domain))
        {
            return Err(
                "a domain-signed envelope that is neither inbound legacy mail nor a notice".into(),
            );
        }
        Ok((signer, payload))
    }
}

/// The mailbox state an envelope carries: only from our own account, to it alone (an
/// envelope another sender sealed cannot move our mail).
fn state_of(me: &Address, env: &Envelope, state: Vec<StateOp>) -> Result<Vec<StateOp>, String> {
    if state.is_empty() {
        return Ok(state);
    }
    let ours = &env.sender == me && env.recipients.iter().all(|r| &r.address == me);
    if !ours || env.signer_kind != SignerKind::User {
        return Err("mailbox state from another account".into());
    }
    if state.len() > letterme_protocol::state::MAX_OPS {
        return Err("more mailbox state operations than an envelope may carry".into());
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(sizes: &[u64]) -> Vec<ListEntry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| ListEntry {
                id: format!("{i:032x}"),
                seq: i as i64 + 1,
                sender: "a@x.test".into(),
                size,
                received: 1,
            })
            .collect()
    }

    #[test]
    fn pages_and_batches_are_cut_by_listed_bytes() {
        assert_eq!(within_bytes(&listed(&[10, 20, 30, 40]), 60), 3);
        assert_eq!(within_bytes(&listed(&[10, 20, 30, 40]), 59), 2);
        assert_eq!(within_bytes(&listed(&[10, 20]), 1000), 2);
        // One envelope larger than the budget still makes a page of its own.
        assert_eq!(within_bytes(&listed(&[500, 1]), 100), 1);
    }
}
