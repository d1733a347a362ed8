//! The letter.me client: profile and keystore, a typed API client, sending (verify the
//! recipient's attested key, seal, upload) and syncing (fetch, verify, store locally, and
//! only then acknowledge). Shared by the CLI and, later, the local IMAP/SMTP proxy.

pub mod cache;
pub mod dns;
pub mod error;
pub mod files;
pub mod http;
pub mod kt;
pub mod mailbox;
pub mod profile;
pub mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use letterme_protocol::api::OutboundMode;
use letterme_protocol::api::kt::WitnessVerdict;
use letterme_protocol::codec::hex;
use letterme_protocol::envelope::{Envelope, SignerKind, seal_message_except};
use letterme_protocol::keys::random_bytes;
use letterme_protocol::verdict::{AuthResult, Disposition, DkimResults};
use letterme_protocol::{
    Address, Attestation, EncryptionKeypair, EncryptionPublicKey, IdentityPublicKey, KeyBinding,
    Payload, SigningKeypair,
};
use serde::Serialize;

use cache::{Cache, CacheKey, NewMail, Synced};
pub use error::ClientError;
use http::{Api, ListEntry};
use mailbox::{Mailbox, Stored};
use profile::{Keys, Profile, ProfileDir, SealedKeys};

/// Local part of the address the server's failure notices come from.
pub const NOTICE_SENDER: &str = "mailer-daemon";

/// Seconds one long poll of `watch` waits on the server.
pub const WATCH_WAIT_SECS: u64 = 50;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates keys locally, registers them, verifies the attestation, writes the profile.
pub async fn create_account(
    dir: &ProfileDir,
    address: &Address,
    server: &str,
    passphrase: &str,
    invite: Option<&str>,
) -> Result<Profile, ClientError> {
    if dir.exists() {
        return Err(ClientError::ProfileExists(dir.0.display().to_string()));
    }
    let api = Api::new(server);
    let info = api.server_info().await?;
    if !address.domain().eq_ignore_ascii_case(&info.domain) {
        return Err(ClientError::OtherDomain(address.clone(), info.domain));
    }
    let keys = Keys::new(SigningKeypair::generate(), EncryptionKeypair::generate());
    let binding = KeyBinding::create(address, &keys.identity, &keys.encryption.public(), now());
    let reg = api.register(&binding, invite).await?;
    if reg.domain_key != info.domain_key
        || reg.attestation.identity_key != keys.identity.public()
        || reg.attestation.encryption_key != keys.encryption.public()
    {
        return Err(ClientError::BadRegistration(address.clone()));
    }
    reg.attestation
        .verify(address, &info.domain, &info.domain_key)
        .map_err(|e| ClientError::Unverified(address.clone(), e))?;
    let profile = Profile {
        version: 1,
        address: address.clone(),
        server: api.base().to_owned(),
        domain: info.domain,
        domain_key: info.domain_key,
        attestation: reg.attestation,
        keys: SealedKeys::seal(&keys, passphrase),
    };
    dir.save(&profile)?;
    Ok(profile)
}

/// How many envelope downloads a sync keeps in flight.
const FETCH_CONCURRENCY: usize = 8;

/// An unlocked profile: enough for local reading.
#[derive(Debug)]
pub struct Unlocked {
    pub dir: ProfileDir,
    pub profile: Profile,
    pub keys: Keys,
    /// The decrypted-on-demand local cache the proxy serves.
    pub cache: Arc<Cache>,
    /// DNS servers for other domains' keys (empty: the system resolver).
    pub nameservers: Vec<std::net::SocketAddr>,
    domain_keys: std::sync::OnceLock<Result<dns::DomainKeys, String>>,
}

/// A message as the user reads it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: String,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body: String,
    pub date: u64,
    pub received: u64,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// Always true for stored messages: unverifiable ones are refused at sync.
    pub signature_verified: bool,
    /// `INBOX`, or `Junk` for legacy mail the gateway quarantined.
    pub folder: String,
    /// Set when the message arrived from classic email through the inbound gateway.
    pub legacy: Option<LegacyView>,
}

/// How a legacy message arrived and what the gateway verified.
#[derive(Debug, Clone, Serialize)]
pub struct LegacyView {
    pub mail_from: String,
    pub client_ip: String,
    pub authentication_results: String,
    pub spf: AuthResult,
    pub dkim: DkimResults,
    pub dmarc: AuthResult,
    pub disposition: Disposition,
    pub note: String,
    /// Size of the original message in bytes.
    pub raw_size: usize,
}

impl Unlocked {
    pub fn open(dir: ProfileDir, passphrase: &str) -> Result<Self, ClientError> {
        let profile = dir.load()?;
        let keys = dir.unlock(&profile, passphrase)?;
        let cache = Arc::new(Cache::open(
            &dir.store_path(),
            CacheKey::derive(&keys.identity),
        )?);
        Ok(Self {
            dir,
            profile,
            keys,
            cache,
            nameservers: Vec::new(),
            domain_keys: std::sync::OnceLock::new(),
        })
    }

    /// Uses these DNS servers for other domains' keys.
    #[must_use]
    pub fn with_dns(mut self, nameservers: Vec<std::net::SocketAddr>) -> Self {
        self.nameservers = nameservers;
        self
    }

    /// The DNS view of other domains' keys, set up on first use.
    pub fn domain_keys(&self) -> Result<&dns::DomainKeys, ClientError> {
        self.domain_keys
            .get_or_init(|| dns::DomainKeys::new(&self.nameservers).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ClientError::Dns(e.clone()))
    }

    /// Files messages synced before the cache existed; returns how many.
    pub fn backfill_cache(&self) -> Result<usize, ClientError> {
        let pending = self.cache.unrendered()?;
        for m in &pending {
            let env = Envelope::decode(&m.envelope)?;
            let signer = IdentityPublicKey(m.signer_key);
            let payload = env.open(
                &self.profile.address,
                &self.keys.all_encryption(),
                &signer,
                &|_| false,
            )?;
            self.cache
                .commit_rendered(&m.id, &self.filed(&payload, &signer, m.received))?;
        }
        Ok(pending.len())
    }

    /// The cache entry for a received message: INBOX, or Junk for quarantined legacy mail.
    fn filed(&self, payload: &Payload, signer: &IdentityPublicKey, received: u64) -> NewMail {
        let folder = match &payload.legacy {
            Some(l) if l.disposition == Disposition::Quarantine => "Junk",
            _ => "INBOX",
        };
        NewMail {
            folder: folder.to_owned(),
            flags: vec![],
            internal_date: received as i64,
            raw: render::render(payload, signer, &self.profile.address),
            message_id: None,
        }
    }

    pub fn mailbox(&self) -> Result<Mailbox, ClientError> {
        Mailbox::open(&self.dir.store_path())
    }

    fn decrypt(&self, m: &Stored) -> Result<Message, ClientError> {
        let env = Envelope::decode(&m.envelope)?;
        let payload = env.open(
            &self.profile.address,
            &self.keys.all_encryption(),
            &IdentityPublicKey(m.signer_key),
            &|_| false,
        )?;
        Ok(message(&m.id, m.received, payload))
    }

    /// All local messages, oldest first.
    pub fn list(&self) -> Result<Vec<Message>, ClientError> {
        self.mailbox()?
            .all()?
            .iter()
            .map(|m| self.decrypt(m))
            .collect()
    }

    pub fn read(&self, id_prefix: &str) -> Result<Message, ClientError> {
        let m = self.mailbox()?.find(id_prefix)?;
        self.decrypt(&m)
    }

    /// Logs in to the profile's server.
    pub async fn connect(self) -> Result<Online, ClientError> {
        Self::connect_shared(Arc::new(self)).await
    }

    /// Logs in with an unlocked profile that other sessions share (the proxy's sync and
    /// submission each have their own login).
    pub async fn connect_shared(me: Arc<Self>) -> Result<Online, ClientError> {
        let mut api = Api::new(&me.profile.server);
        api.login(&me.profile.domain, &me.profile.address, &me.keys.identity)
            .await?;
        Ok(Online { me, api })
    }
}

fn message(id: &str, received: u64, p: Payload) -> Message {
    let folder = match &p.legacy {
        Some(l) if l.disposition == Disposition::Quarantine => "Junk",
        _ => "INBOX",
    };
    let legacy = p.legacy.map(|l| LegacyView {
        raw_size: l.raw.len(),
        mail_from: l.mail_from,
        client_ip: l.client_ip,
        authentication_results: l.authentication_results,
        spf: l.spf,
        dkim: l.dkim,
        dmarc: l.dmarc,
        disposition: l.disposition,
        note: l.note,
    });
    Message {
        folder: folder.to_owned(),
        legacy,
        id: id.to_owned(),
        from: p.from,
        to: p.to,
        cc: p.cc,
        bcc: p.bcc,
        subject: p.subject,
        body: p.body,
        date: p.date,
        received,
        message_id: p.message_id,
        in_reply_to: p.in_reply_to,
        references: p.references,
        signature_verified: true,
    }
}

async fn join_ack(
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
) -> Result<(), ClientError> {
    task.await
        .map_err(|e| ClientError::Io(format!("acknowledging failed: {e}")))?
}

/// What the user wants to send.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// Kept when the mail client chose one (threads), generated otherwise.
    pub message_id: Option<String>,
    /// The user agreed that copies to ordinary addresses leave end-to-end encryption.
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub message_id: String,
    /// Envelope ids, one for To+Cc and one per Bcc.
    pub envelopes: Vec<String>,
    pub recipients: Vec<Address>,
    /// Ordinary addresses the server sends the message to in plaintext (relay mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relayed: Vec<Address>,
    /// Ordinary addresses that get only a notice (notice mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub noticed: Vec<Address>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub fetched: usize,
    pub already_had: usize,
    pub refused: Vec<(String, String)>,
    /// Ids of the messages this sync stored.
    pub new_ids: Vec<String>,
    /// What the check of our own keys in the key-transparency log found amiss: a key this
    /// profile did not make, or a log that does not verify. Empty when all is well.
    pub kt_alerts: Vec<String>,
}

/// Something the check of our own keys in the log found amiss.
#[derive(Debug, Clone)]
pub struct KtAlert {
    pub message: String,
    /// Not reported before by this profile (each entry is filed in the inbox once).
    pub first_time: bool,
}

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

/// A local cache failure as a client error.
fn cache_error(e: cache::MailboxError) -> ClientError {
    match e {
        cache::MailboxError::Store(e) => e,
        other => ClientError::Io(other.to_string()),
    }
}

/// Days a rotated-out key still opens newly received mail, by default (`letterme key
/// rotate --overlap-days`): mail in flight (federation retries give up after 5 days)
/// still opens. The user's own key; the server's domain key has `DOMAIN_KEY_OVERLAP`.
pub const ROTATION_OVERLAP_DAYS: u64 = 7;

/// A pending key older than this, that the server does not have, is made again (its
/// binding would be refused as stale).
const PENDING_MAX_AGE: u64 = 3600;

/// A logged-in session.
#[derive(Debug)]
pub struct Online {
    pub me: Arc<Unlocked>,
    pub api: Api,
}

impl Online {
    /// The attested key of a user: on our domain verified against the pinned domain key,
    /// on another domain against that domain's keys in DNS; in both cases also against the
    /// domain's key-transparency log (DESIGN.md §5, §7.4).
    pub async fn verified_key(&self, address: &Address) -> Result<Attestation, ClientError> {
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
        self.check_transparency(address, &att, found.kt.as_ref(), &keys, kt_file)?;
        Ok(att)
    }

    /// Checks a key against its domain's key-transparency log (the checkpoint signed by
    /// one of `domain_keys`) and remembers the checkpoint it was checked against
    /// (DESIGN.md §7.4).
    fn check_transparency(
        &self,
        address: &Address,
        att: &Attestation,
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
            kt::check(address, att, proof, domain_keys, last.as_ref()).map_err(refuse)?;
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
        let made = |e: &letterme_protocol::kt::LogEntry| {
            e.identity_key == keys.identity.public().0
                && keys.made(&EncryptionPublicKey(e.encryption_key))
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
        Ok(alerts)
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
        let binding = KeyBinding::create(
            &address,
            &keys.identity,
            &pending.key.public(),
            pending.created,
        );
        let (att, log_index) = self.api.change_key(&binding, revoke).await?;
        // Newer than what the server had (after a restore from a backup that may be older
        // than what this profile last saw).
        let before = on_server
            .as_ref()
            .map_or(profile.attestation.version, |a| a.version);
        if att.identity_key != keys.identity.public()
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
        let seen = self.verified_key(&address).await?;
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

    /// Our domain's keys: the pinned one, and those published in DNS (during and after a
    /// domain key rotation).
    async fn own_domain_keys(&self) -> Result<Vec<IdentityPublicKey>, ClientError> {
        let p = &self.me.profile;
        let mut keys = vec![p.domain_key];
        for k in self.me.domain_keys()?.keys(&p.domain).await? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// What the server does with mail for ordinary addresses.
    pub async fn outbound_mode(&self) -> Result<OutboundMode, ClientError> {
        Ok(self.api.server_info().await?.outbound)
    }

    pub async fn send(&self, draft: &Draft) -> Result<SendReport, ClientError> {
        let all: Vec<&Address> = draft.to.iter().chain(&draft.cc).chain(&draft.bcc).collect();
        if all.is_empty() {
            return Err(ClientError::NoRecipients);
        }
        let p = &self.me.profile;
        let info = self.api.server_info().await?;
        let mut keys: BTreeMap<Address, EncryptionPublicKey> = BTreeMap::new();
        let mut legacy: std::collections::BTreeSet<Address> = std::collections::BTreeSet::new();
        for a in &all {
            if !keys.contains_key(*a) && !legacy.contains(*a) {
                match self.verified_key(a).await {
                    Ok(att) => {
                        keys.insert((*a).clone(), att.encryption_key);
                    }
                    Err(ClientError::Legacy(a)) => {
                        legacy.insert(a);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let legacy_list: Vec<Address> = legacy.iter().cloned().collect();
        if !legacy.is_empty() {
            match info.outbound {
                OutboundMode::Relay if !draft.allow_plaintext => {
                    return Err(ClientError::PlaintextRefused(legacy_list));
                }
                OutboundMode::Relay | OutboundMode::Notice => {}
                OutboundMode::Off => return Err(ClientError::OutboundOff(legacy_list)),
            }
        }
        let message_id = draft
            .message_id
            .as_deref()
            .and_then(render::clean_msg_id)
            .unwrap_or_else(|| format!("<{}@{}>", hex(&random_bytes::<16>()), p.domain));
        let payload = Payload {
            from: p.address.clone(),
            to: draft.to.clone(),
            cc: draft.cc.clone(),
            bcc: vec![],
            subject: draft.subject.clone(),
            body: draft.body.clone(),
            headers: vec![],
            date: now(),
            message_id: message_id.clone(),
            in_reply_to: draft.in_reply_to.clone(),
            references: draft.references.clone(),
            legacy: None,
        };
        let envelopes = seal_message_except(
            &self.me.keys.identity,
            &payload,
            &draft.bcc,
            &|a| keys.get(a).copied(),
            &legacy,
            now(),
        )?;
        let encoded: Vec<(String, Vec<u8>)> = envelopes
            .iter()
            .map(|e| (e.id.to_hex(), e.encode()))
            .collect();
        if let Some((_, big)) = encoded
            .iter()
            .find(|(_, b)| b.len() as u64 > info.max_message_size)
        {
            return Err(ClientError::TooLarge {
                size: big.len() as u64,
                limit: info.max_message_size,
            });
        }
        // Ordinary addresses first: the server's limits and checks refuse there, and then
        // nothing at all has been sent.
        let (mut relayed, mut noticed) = (Vec::new(), Vec::new());
        if !legacy.is_empty() {
            if info.outbound == OutboundMode::Relay {
                let raw = render::outgoing(&payload).ok_or_else(|| {
                    ClientError::Io("the message cannot be written as ordinary email".into())
                })?;
                self.api.send_outbound(&legacy_list, Some(&raw)).await?;
                relayed = legacy_list;
            } else {
                self.api.send_outbound(&legacy_list, None).await?;
                noticed = legacy_list;
            }
        }
        let mut ids = Vec::new();
        for (id, bytes) in encoded {
            self.api.send(bytes).await?;
            ids.push(id);
        }
        // Our own copy, for the Sent mailbox; a client that also APPENDs it finds it there.
        let sent = Payload {
            bcc: draft.bcc.clone(),
            ..payload
        };
        self.me
            .cache
            .append(&NewMail {
                folder: "Sent".into(),
                flags: vec!["\\Seen".into()],
                internal_date: now() as i64,
                raw: render::render(&sent, &p.attestation.identity_key, &p.address),
                message_id: Some(message_id.clone()),
            })
            .map_err(cache_error)?;
        Ok(SendReport {
            message_id,
            envelopes: ids,
            recipients: keys.into_keys().collect(),
            relayed,
            noticed,
        })
    }

    /// Syncs now, then keeps syncing as mail arrives (long poll), calling `on_new` after
    /// every sync that stored or refused something. Logs in again when the token expires.
    /// Runs until an error.
    pub async fn watch(
        &mut self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
        on_new: &mut (dyn FnMut(&Unlocked, &SyncReport) + Send),
    ) -> Result<(), ClientError> {
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

    pub async fn relogin(&mut self) -> Result<(), ClientError> {
        let p = &self.me.profile;
        self.api
            .login(&p.domain, &p.address, &self.me.keys.identity)
            .await
    }

    /// Fetches new mail, verifies it, commits it locally, then acknowledges it. Works a
    /// page (up to 1000 messages) at a time: downloads in parallel, opens on every core,
    /// commits the page in one transaction, and only then acknowledges the page.
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
        let mut report = SyncReport::default();
        let mut senders: BTreeMap<Address, Result<IdentityPublicKey, String>> = BTreeMap::new();
        let mut after = 0;
        let mut done = 0;
        let mut acking: Option<tokio::task::JoinHandle<Result<(), ClientError>>> = None;
        loop {
            let page = self.api.list(after).await?;
            if page.is_empty() {
                break;
            }
            after = page.iter().map(|e| e.seq).max().unwrap_or(after);
            let bodies = self.fetch_page(&page).await?;
            let mut fresh = Vec::new();
            for (entry, bytes) in page.iter().zip(bodies) {
                match mailbox.envelope(&entry.id)? {
                    // Stored before a crash, never acknowledged: acknowledge now.
                    Some(existing) if existing == bytes => report.already_had += 1,
                    _ => fresh.push((entry, bytes)),
                }
            }
            for (_, bytes) in &fresh {
                if let Ok(env) = Envelope::decode(bytes)
                    && env.signer_kind == SignerKind::User
                    && !senders.contains_key(&env.sender)
                {
                    let key = self
                        .verified_key(&env.sender)
                        .await
                        .map(|a| a.identity_key)
                        .map_err(|e| e.to_string());
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
            let opened = self.open_all(&mailbox, &fresh, &senders, &domain_keys);
            let mut accepted = Vec::new();
            for ((entry, bytes), result) in fresh.into_iter().zip(opened) {
                match result {
                    Ok((signer, payload)) => {
                        accepted.push(Synced {
                            mail: self.me.filed(&payload, &signer, entry.received),
                            stored: Stored {
                                id: entry.id.clone(),
                                sender: entry.sender.clone(),
                                received: entry.received,
                                envelope: bytes,
                                signer_key: signer.0,
                            },
                        });
                        report.fetched += 1;
                        report.new_ids.push(entry.id.clone());
                    }
                    Err(reason) => {
                        tracing::warn!(id = %entry.id, sender = %entry.sender, %reason, "refused a message");
                        mailbox.refuse(&entry.id, &entry.sender, &reason, &bytes, now())?;
                        report.refused.push((entry.id.clone(), reason));
                    }
                }
            }
            self.me.cache.commit_synced(&accepted, now())?;
            // Only after the local commit above; it runs while the next page downloads.
            let ids: Vec<String> = page.iter().map(|e| e.id.clone()).collect();
            if let Some(previous) = acking.take() {
                join_ack(previous).await?;
            }
            let api = self.api.clone();
            acking = Some(tokio::spawn(async move { api.ack_many(&ids).await }));
            done += page.len();
            progress(done, done + usize::from(page.len() == 1000));
        }
        if let Some(last) = acking {
            join_ack(last).await?;
        }
        let alerts = match self.check_own_keys().await {
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
        Ok(report)
    }

    /// Files a key-transparency alert in the local INBOX (for IMAP clients). It is written
    /// here, never sent anywhere.
    fn file_alert(&self, message: &str) -> Result<(), ClientError> {
        let me = &self.me.profile.address;
        let payload = Payload {
            from: me.clone(),
            to: vec![me.clone()],
            cc: vec![],
            bcc: vec![],
            subject:
                "letter.me security alert: the key-transparency log lists a key you did not create"
                    .into(),
            body: format!(
                "This message was written by your letter.me client, on this machine.\n\n\
                 WARNING: {message}.\n"
            ),
            headers: vec![],
            date: now(),
            message_id: format!("<{}@{}>", hex(&random_bytes::<16>()), me.domain()),
            in_reply_to: None,
            references: vec![],
            legacy: None,
        };
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
            })
            .map(drop)
            .map_err(cache_error)
    }

    /// Downloads a page of envelopes, several at a time, in listing order.
    async fn fetch_page(&self, page: &[ListEntry]) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; page.len()];
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while tasks.len() < FETCH_CONCURRENCY && next < page.len() {
                let api = self.api.clone();
                let id = page[next].id.clone();
                let i = next;
                tasks.spawn(async move { (i, api.fetch(&id).await) });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (i, bytes) =
                joined.map_err(|e| ClientError::Io(format!("download task failed: {e}")))?;
            out[i] = Some(bytes?);
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Verifies and opens envelopes on every core.
    fn open_all(
        &self,
        mailbox: &Mailbox,
        items: &[(&ListEntry, Vec<u8>)],
        senders: &BTreeMap<Address, Result<IdentityPublicKey, String>>,
        domain_keys: &[IdentityPublicKey],
    ) -> Vec<Result<(IdentityPublicKey, Payload), String>> {
        // Envelope ids already stored, for replay detection; looked up before the threads.
        let stored: std::collections::BTreeSet<String> = items
            .iter()
            .filter_map(|(_, b)| Envelope::decode(b).ok())
            .map(|e| e.id.to_hex())
            .filter(|id| mailbox.envelope(id).ok().flatten().is_some())
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let chunk = items.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    let stored = &stored;
                    scope.spawn(move || {
                        part.iter()
                            .map(|(entry, bytes)| {
                                self.verify(entry, bytes, senders, domain_keys, stored)
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

    /// Checks a fetched envelope fully; the error is the reason it is refused.
    fn verify(
        &self,
        entry: &ListEntry,
        bytes: &[u8],
        senders: &BTreeMap<Address, Result<IdentityPublicKey, String>>,
        domain_keys: &[IdentityPublicKey],
        stored: &std::collections::BTreeSet<String>,
    ) -> Result<(IdentityPublicKey, Payload), String> {
        let env = Envelope::decode(bytes).map_err(|e| e.to_string())?;
        if env.id.to_hex() != entry.id {
            return Err("the envelope id does not match the server's listing".into());
        }
        // Legacy mail is sealed by our own domain's inbound gateway; native mail by its
        // sender, whose identity key was verified once for this sync.
        let signer = if env.signer_kind == SignerKind::Domain {
            if !domain_keys.contains(&env.signer_key) {
                return Err(
                    "signed by a domain key that is neither pinned nor published in DNS".into(),
                );
            }
            env.signer_key
        } else {
            senders
                .get(&env.sender)
                .cloned()
                .unwrap_or_else(|| Err("the sender's key was not looked up".into()))?
        };
        let seen = |i: &letterme_protocol::EnvelopeId| stored.contains(&i.to_hex());
        let keys = &self.me.keys;
        let me = &self.me.profile.address;
        let payload = env
            .open(me, &keys.encryption_at(entry.received), &signer, &seen)
            .map_err(|e| {
                // Sealed to a key whose overlap ended before the server received it: say so.
                let late = keys.retired.iter().find(|r| {
                    entry.received > r.open_until && env.open(me, &[&r.key], &signer, &seen).is_ok()
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
