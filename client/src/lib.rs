//! The letter.me client: profile and keystore, a typed API client, sending (verify the
//! recipient's attested key, seal, upload) and syncing (fetch, verify, store locally, and
//! only then acknowledge). Shared by the CLI and, later, the local IMAP/SMTP proxy.

pub mod attached;
mod blobs;
pub mod cache;
pub mod devices;
pub mod dns;
pub mod error;
pub mod files;
pub mod http;
pub mod kt;
pub mod mailbox;
pub mod mime;
pub mod profile;
pub mod render;

mod keys;
mod send;
mod sync;
mod transparency;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use letterme_protocol::envelope::Envelope;
use letterme_protocol::verdict::{AuthResult, Disposition, DkimResults};
use letterme_protocol::{
    Address, EncryptionKeypair, IdentityPublicKey, KeyBinding, Payload, SigningKeypair,
};
use serde::Serialize;

pub use blobs::{Downloaded, seal_ahead};
use cache::{Cache, CacheKey, NewMail};
pub use error::ClientError;
use http::Api;
pub use keys::{KeyChange, ROTATION_OVERLAP_DAYS, VerifiedKeys};
use mailbox::{Mailbox, Stored};
use profile::{Keys, Profile, ProfileDir, SealedKeys};
pub use send::{Draft, SendReport};
pub use sync::{SyncReport, WATCH_WAIT_SECS};
pub use transparency::{AuditReport, KtAlert};

/// Local part of the address the server's failure notices come from.
pub const NOTICE_SENDER: &str = "mailer-daemon";

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
    let (api, info) = server_for_new_profile(dir, address, server).await?;
    let identity = SigningKeypair::generate();
    let keys = Keys::new(identity.clone(), EncryptionKeypair::generate());
    let binding = KeyBinding::create(address, &identity, &keys.encryption.public(), now());
    let reg = api.register(&binding, invite).await?;
    if reg.domain_key != info.domain_key
        || reg.attestation.identity_key != identity.public()
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
        device: None,
        keys: SealedKeys::seal(&keys, passphrase),
    };
    dir.save(&profile)?;
    Ok(profile)
}

/// The server of a profile about to be made at `dir` for `address` (account creation, a
/// device joining): no profile there yet, and the server serves the address's domain.
pub(crate) async fn server_for_new_profile(
    dir: &ProfileDir,
    address: &Address,
    server: &str,
) -> Result<(Api, http::ServerInfo), ClientError> {
    if dir.exists() {
        return Err(ClientError::ProfileExists(dir.0.display().to_string()));
    }
    let api = Api::new(server);
    let info = api.server_info().await?;
    if !address.domain().eq_ignore_ascii_case(&info.domain) {
        return Err(ClientError::OtherDomain(address.clone(), info.domain));
    }
    Ok((api, info))
}

/// A message from us to us, written on this machine (an alert, mailbox state).
pub(crate) fn to_ourselves(me: &Address, subject: &str, body: String) -> Payload {
    Payload {
        from: me.clone(),
        to: vec![me.clone()],
        cc: vec![],
        bcc: vec![],
        subject: subject.to_owned(),
        body,
        headers: vec![],
        date: now(),
        message_id: format!(
            "<{}@{}>",
            letterme_protocol::codec::hex(&letterme_protocol::keys::random_bytes::<16>()),
            me.domain()
        ),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    }
}

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
    /// Our account's keys as last verified, for mailbox state sent to our devices and
    /// received from them: refreshed when the log's newest entry of ours changes
    /// (`check_own_keys`).
    own_keys: std::sync::Mutex<Option<keys::VerifiedKeys>>,
    /// When our own keys were last checked in the log (`Online::sync`).
    own_keys_checked: std::sync::Mutex<Option<std::time::Instant>>,
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
    /// Its attachments (names, types, decoded sizes), in order.
    pub attachments: Vec<mime::Attachment>,
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
            CacheKey::derive(&keys.device),
        )?);
        cache.set_device(&letterme_protocol::device::device_id(&keys.device.public()));
        // Other devices to keep in step: a linked device has one at least; the first device
        // knows from the device set it last checked.
        let devices = kt::KtFile::load(&dir.0).map_or(0, |f| f.devices.len());
        cache.set_in_step(profile.device.is_some() || devices > 1);
        Ok(Self {
            dir,
            profile,
            keys,
            cache,
            nameservers: Vec::new(),
            domain_keys: std::sync::OnceLock::new(),
            own_keys: std::sync::Mutex::default(),
            own_keys_checked: std::sync::Mutex::default(),
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
            let payload = self.open_stored(m)?;
            let signer = IdentityPublicKey(m.signer_key);
            self.cache
                .commit_rendered(&m.id, &self.filed(&payload, &signer, m.received))?;
        }
        Ok(pending.len())
    }

    /// The cache entry for a received message: INBOX, or Junk for quarantined legacy mail.
    fn filed(&self, payload: &Payload, signer: &IdentityPublicKey, received: u64) -> NewMail {
        let raw = render::render(payload, signer, &self.profile.address);
        filed_as(payload, raw, Vec::new(), received)
    }

    /// A message of our own (the Sent copy) as filed: when it names blobs, its place for
    /// each (their chunks are kept by the upload), or failing that the whole message.
    fn own_copy(&self, payload: Payload) -> Result<(Vec<u8>, Vec<cache::Piece>), ClientError> {
        let me = &self.profile.address;
        let signer = &self.profile.attestation.identity_key;
        if !payload.blobs.is_empty()
            && let Ok(r) = render::render_pieces(&payload, signer, me)
        {
            return Ok(r);
        }
        let whole = self.with_blob_bodies(payload)?;
        Ok((render::render(&whole, signer, me), Vec::new()))
    }

    /// [`Unlocked::filed`] for a payload that names blobs: the blobs are kept apart, in
    /// the local store.
    fn filed_in_pieces(
        &self,
        payload: &Payload,
        signer: &IdentityPublicKey,
        received: u64,
    ) -> Result<NewMail, render::Unplaced> {
        let (raw, pieces) = render::render_pieces(payload, signer, &self.profile.address)?;
        Ok(filed_as(payload, raw, pieces, received))
    }

    pub fn mailbox(&self) -> Result<Mailbox, ClientError> {
        Mailbox::open(&self.dir.store_path())
    }

    /// Opens a stored envelope (verified at sync) again, its blobs' bodies put back.
    fn open_stored(&self, m: &Stored) -> Result<Payload, ClientError> {
        self.with_blob_bodies(self.open_envelope(m)?)
    }

    /// Opens a stored envelope (verified at sync) again; a blob stays a field naming it.
    fn open_envelope(&self, m: &Stored) -> Result<Payload, ClientError> {
        let env = Envelope::decode(&m.envelope)?;
        Ok(env.open(
            &self.profile.address,
            &self.keys.all_encryption(),
            &IdentityPublicKey(m.signer_key),
            &|_| false,
        )?)
    }

    fn decrypt(&self, m: &Stored) -> Result<Message, ClientError> {
        let payload = self.open_envelope(m)?;
        let attachments = self.attachment_list(&payload)?;
        Ok(message(&m.id, m.received, payload, attachments))
    }

    /// The attachments of a payload. A blob's size is the one its field gives; a field
    /// without one (written before sizes were) is measured by decoding the blob as it is
    /// read, and stays 0 while the blob is not downloaded.
    fn attachment_list(&self, p: &Payload) -> Result<Vec<mime::Attachment>, ClientError> {
        let Some(entity) = mime_of(p) else {
            return Ok(Vec::new());
        };
        if p.blobs.is_empty() {
            return Ok(mime::attachment_list(entity));
        }
        let mut out = Vec::new();
        for (mut a, bytes) in mime::attachment_parts(entity) {
            if let mime::AttachmentBytes::Blob(n, transfer) = bytes
                && a.size == 0
                && let Some(r) = p.blobs.get(n)
                && self.blob_kept(r)?
            {
                a.size = usize::try_from(self.write_blob(r, transfer, std::io::sink())?)
                    .unwrap_or(usize::MAX);
            }
            out.push(a);
        }
        Ok(out)
    }

    /// Whether every chunk of blob `r` is in the local store.
    fn blob_kept(&self, r: &letterme_protocol::blob::BlobRef) -> Result<bool, ClientError> {
        Ok(self.cache.held_chunks(&r.id)?.len() as u64 == letterme_protocol::blob::chunks(r.size))
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

    /// Hands each attachment of a stored message, in order, to `save` with its number from
    /// 1 and a way to write its decoded bytes into a writer (giving their count); `save`
    /// makes the writer and finishes it, one attachment at a time. An attachment that is a
    /// blob is decoded as its chunks are read, so none is in memory whole.
    pub fn save_attachments(
        &self,
        id_prefix: &str,
        mut save: impl FnMut(
            &mime::Attachment,
            usize,
            &mut dyn FnMut(&mut dyn std::io::Write) -> Result<u64, ClientError>,
        ) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let stored = self.mailbox()?.find(id_prefix)?;
        let payload = self.open_envelope(&stored)?;
        // Not downloaded yet (the proxy downloads later, D76): nothing is saved short.
        for r in &payload.blobs {
            if !self.blob_kept(r)? {
                return Err(ClientError::NotDownloaded(r.id.clone()));
            }
        }
        for (i, (a, bytes)) in mime::attachment_parts(mime_of(&payload).unwrap_or_default())
            .into_iter()
            .enumerate()
        {
            let mut write = |w: &mut dyn std::io::Write| match &bytes {
                mime::AttachmentBytes::Here(b) => {
                    w.write_all(b)
                        .map_err(|e| ClientError::Io(format!("cannot write an attachment: {e}")))?;
                    Ok(b.len() as u64)
                }
                mime::AttachmentBytes::Blob(n, transfer) => {
                    let r = payload.blobs.get(*n).ok_or_else(|| {
                        ClientError::Io(format!("the message names a blob {n} it does not carry"))
                    })?;
                    self.write_blob(r, *transfer, w)
                }
            };
            save(&a, i + 1, &mut write)?;
        }
        Ok(())
    }

    /// Logs in to the profile's server.
    pub async fn connect(self) -> Result<Online, ClientError> {
        Self::connect_shared(Arc::new(self)).await
    }

    /// Logs in with an unlocked profile that other sessions share (the proxy's sync and
    /// submission each have their own login).
    pub async fn connect_shared(me: Arc<Self>) -> Result<Online, ClientError> {
        let mut api = Api::new(&me.profile.server);
        api.login(&me.profile.domain, &me.profile.address, &me.keys.device)
            .await?;
        Ok(Online {
            me,
            api,
            attachments: AttachmentDownload::default(),
            watching: false,
        })
    }
}

/// The MIME a payload carries: the entity of a version 2 native message, or the whole of
/// a legacy one.
fn mime_of(p: &Payload) -> Option<&[u8]> {
    p.mime
        .as_deref()
        .or_else(|| p.legacy.as_ref().map(|l| l.raw.as_slice()))
}

fn message(id: &str, received: u64, p: Payload, attachments: Vec<mime::Attachment>) -> Message {
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
        attachments,
    }
}

/// A local cache failure as a client error.
fn cache_error(e: cache::MailboxError) -> ClientError {
    match e {
        cache::MailboxError::Store(e) => e,
        other => ClientError::Io(other.to_string()),
    }
}

/// A logged-in session.
#[derive(Debug)]
pub struct Online {
    pub me: Arc<Unlocked>,
    pub api: Api,
    /// When a synced message's blobs are downloaded.
    pub attachments: AttachmentDownload,
    /// Syncing as mail arrives ([`Online::watch`]): our own keys are checked at most every
    /// `OWN_KEYS_EVERY`, not at every sync.
    watching: bool,
}

/// When a synced message's blobs (its large attachments) are downloaded (DECISIONS D76).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachmentDownload {
    /// With the message: it is filed once they are kept (the CLI's `sync`).
    #[default]
    WithMessage,
    /// After the message is filed, in the background (the proxy's default).
    Background,
    /// When a mail client asks for their bytes, or once the message has waited half the
    /// server's retention.
    OnDemand,
}

impl Online {
    pub async fn relogin(&mut self) -> Result<(), ClientError> {
        let p = &self.me.profile;
        self.api
            .login(&p.domain, &p.address, &self.me.keys.device)
            .await
    }
}

/// Where a received message is filed: INBOX, or Junk for quarantined legacy mail.
fn filed_as(payload: &Payload, raw: Vec<u8>, pieces: Vec<cache::Piece>, received: u64) -> NewMail {
    let folder = match &payload.legacy {
        Some(l) if l.disposition == Disposition::Quarantine => "Junk",
        _ => "INBOX",
    };
    NewMail {
        folder: folder.to_owned(),
        flags: vec![],
        internal_date: received as i64,
        raw,
        message_id: None,
        pieces,
    }
}
