//! The sealed envelope (DESIGN.md §5).
//!
//! A random content key encrypts the payload (subject, body, headers, time) with
//! XChaCha20-Poly1305; the content key is sealed (`crypto_box_seal`) to each recipient's
//! X25519 key; the signer signs the canonical bytes of the whole envelope. The cleartext
//! header is exactly what the server must see to route mail: sender, recipients, size, time.
//! Bcc recipients get envelopes of their own, so nobody learns of them.

use std::collections::BTreeSet;
use std::fmt;

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::address::Address;
use crate::b64;
use crate::blob::{BlobId, BlobRef};
use crate::codec::{DecodeError, Reader, Writer};
use crate::device::MAX_DEVICES;
use crate::keys::{
    EncryptionKeypair, EncryptionPublicKey, IdentityPublicKey, Signature, Signed, SigningKeypair,
    random_bytes, verify_batch,
};
use crate::verdict::{AuthResult, Disposition, DkimResults};

/// Magic and format version at the start of every envelope.
/// The header field a client adds to rendered mail recording the signature check (RFC
/// 6648: no `X-`). The inbound adapter strips any copy arriving from outside, so a sender
/// cannot forge it.
pub const VERIFIED_HEADER: &str = "Letterme-Signature";

pub const ENVELOPE_MAGIC: &[u8; 5] = b"LMENV";
/// The version of an envelope that names no blob.
pub const ENVELOPE_VERSION: u8 = 1;
/// The version of an envelope whose header names the blobs its payload refers to.
pub const ENVELOPE_VERSION_BLOBS: u8 = 2;
/// The version of an envelope with a recipient of several devices: each recipient's entry
/// lists one key wrap per device, and the header names its blobs (none or more). Written
/// only then, so the mail of single-device recipients keeps versions 1 and 2 byte for byte.
pub const ENVELOPE_VERSION_DEVICES: u8 = 3;
/// Blobs one envelope may name.
pub const MAX_BLOBS: usize = 100;
/// Signature context of an envelope.
pub const ENVELOPE_CONTEXT: &[u8] = b"letterme/v1/envelope\0";
/// Recipients in one envelope.
pub const MAX_RECIPIENTS: usize = 1000;
/// Ciphertext of one envelope; the server's own size limit is usually far lower.
pub const MAX_CIPHERTEXT: usize = 64 * 1024 * 1024;
/// Address octets on the wire (local 64 + '@' + domain 253).
pub const MAX_ADDRESS: usize = 320;
/// A sealed 32-byte content key: ephemeral public key (32) + MAC (16) + key (32).
pub const WRAPPED_KEY_LEN: usize = 80;
const SIGNATURE_LEN: usize = 64;

/// Random, unique per envelope; the server and clients refuse a second envelope with an id
/// they have already seen (replay).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvelopeId(#[serde(with = "b64::array")] pub [u8; 16]);

impl EnvelopeId {
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Lower-case hex, the form used in URLs and the CLI.
    pub fn to_hex(&self) -> String {
        crate::codec::hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        crate::codec::unhex(s).map(Self)
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvelopeId({})", self.to_hex())
    }
}

/// Whose key signed the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SignerKind {
    /// The sending user's identity key (native mail).
    User = 1,
    /// The sending domain's key (inbound legacy mail sealed by the gateway, notices).
    Domain = 2,
}

impl SignerKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::User),
            2 => Some(Self::Domain),
            _ => None,
        }
    }
}

/// One recipient's copies of the content key: one per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientEntry {
    pub address: Address,
    /// In the order the sender listed the recipient's keys; never empty, no key twice.
    pub wraps: Vec<KeyWrap>,
}

/// The content key sealed to one encryption key (`crypto_box_seal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWrap {
    pub encryption_key: EncryptionPublicKey,
    pub wrapped_key: Vec<u8>,
}

/// What the envelope carries, encrypted. Serialized as JSON inside the ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub from: Address,
    pub to: Vec<Address>,
    #[serde(default)]
    pub cc: Vec<Address>,
    /// Set only in a Bcc recipient's own envelope, naming that recipient.
    #[serde(default)]
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body: String,
    /// Extra header fields, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Unix seconds, as the sender's clock saw it.
    pub date: u64,
    pub message_id: String,
    #[serde(default)]
    pub in_reply_to: Option<String>,
    #[serde(default)]
    pub references: Vec<String>,
    /// Present on mail that arrived from classic email through the inbound SMTP adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyMail>,
    /// Payload version 2: the message's MIME entity as the sender's mail client wrote it —
    /// the `Content-*` header fields of its top level, an empty line, and its body (RFC
    /// 2045) — text, HTML, inline parts and attachments. Rendered in place of `body`,
    /// which then holds its text for readers that show text only. Absent in version 1.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::b64::optional"
    )]
    pub mime: Option<Vec<u8>>,
    /// Large attachments sealed apart (PROTOCOL.md §19a): each blob's id, key and size. The
    /// envelope's header names the same ids, in this order, for the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobRef>,
    /// Mailbox state for the sender's own devices (PROTOCOL.md §9.6): set only in an
    /// envelope a device seals to its own account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<crate::state::StateOp>,
}

/// A message received from classic email, sealed by the domain's inbound gateway.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyMail {
    /// The message exactly as received (RFC 5322), with the gateway's
    /// Authentication-Results header field prepended.
    #[serde(with = "b64::bytes")]
    pub raw: Vec<u8>,
    /// The SMTP reverse-path (MAIL FROM), empty for a null sender.
    pub mail_from: String,
    pub helo: String,
    pub client_ip: String,
    /// The Authentication-Results header field value (RFC 8601).
    pub authentication_results: String,
    /// SPF of the MAIL FROM domain.
    pub spf: AuthResult,
    /// Each DKIM signature's result.
    pub dkim: DkimResults,
    pub dmarc: AuthResult,
    /// `accept` (INBOX) or `quarantine` (Junk).
    pub disposition: Disposition,
    /// Why the gateway decided as it did.
    pub note: String,
}

impl fmt::Debug for LegacyMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyMail")
            .field("raw", &format_args!("<{} bytes>", self.raw.len()))
            .field("mail_from", &self.mail_from)
            .field("disposition", &self.disposition)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Payload {
    // Subject and body never reach a log through Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("cc", &self.cc)
            .field("subject", &"<redacted>")
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field(
                "mime",
                &format_args!("<{} bytes>", self.mime.as_ref().map_or(0, Vec::len)),
            )
            .field("blobs", &self.blobs.len())
            .field("date", &self.date)
            .finish_non_exhaustive()
    }
}

/// A sealed envelope, as decoded from (or encoded to) its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: EnvelopeId,
    /// Unix seconds.
    pub created: u64,
    pub signer_kind: SignerKind,
    pub sender: Address,
    pub signer_key: IdentityPublicKey,
    pub recipients: Vec<RecipientEntry>,
    /// The blobs the payload refers to (version 2), so that the server keeps them while
    /// the envelope is pending and lets its recipients read them. Empty: version 1.
    pub blobs: Vec<BlobId>,
    pub nonce: [u8; 24],
    pub ciphertext: Vec<u8>,
    pub signature: Signature,
}

/// Why an envelope could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("an envelope needs at least one recipient")]
    NoRecipients,
    #[error("too many recipients ({0}, limit {MAX_RECIPIENTS})")]
    TooManyRecipients(usize),
    #[error("the message is too large ({0} bytes, limit {MAX_CIPHERTEXT})")]
    TooLarge(usize),
    #[error("no verified encryption key for {0}")]
    MissingKey(Address),
    #[error("{0} has more than {MAX_DEVICES} encryption keys")]
    TooManyKeys(Address),
    #[error("the payload's blob references are not valid: {0}")]
    BadBlobs(String),
}

/// Every way opening an envelope can fail.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("malformed envelope: {0}")]
    Malformed(#[from] DecodeError),
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("the envelope signature does not verify (tampered or forged)")]
    BadSignature,
    #[error("the envelope is signed by a key that is not {0}'s verified key")]
    UnexpectedSigner(Address),
    #[error("{0} is not a recipient of this envelope")]
    NotARecipient(Address),
    #[error("the envelope is sealed to a key of {0} that this device does not hold")]
    NoMatchingKey(Address),
    #[error("the content key does not open")]
    KeyUnwrap,
    #[error("the payload does not decrypt")]
    Decrypt,
    #[error("the payload is malformed: {0}")]
    MalformedPayload(String),
    #[error("the payload names a sender other than the envelope's")]
    SenderMismatch,
    #[error("the payload's blobs are not the ones the envelope names")]
    BlobMismatch,
    #[error("envelope {0} was already received (replay)")]
    Replayed(EnvelopeId),
}

impl Envelope {
    /// The format version these contents are written in: the lowest that holds them.
    pub fn version(&self) -> u8 {
        if self.recipients.iter().any(|r| r.wraps.len() > 1) {
            ENVELOPE_VERSION_DEVICES
        } else if self.blobs.is_empty() {
            ENVELOPE_VERSION
        } else {
            ENVELOPE_VERSION_BLOBS
        }
    }

    /// Canonical header bytes: the AEAD associated data.
    fn header_bytes(&self) -> Vec<u8> {
        self.header_bytes_as(self.version())
    }

    /// The header written as `version` (tests write one that is not the envelope's own).
    fn header_bytes_as(&self, version: u8) -> Vec<u8> {
        let wraps: usize = self.recipients.iter().map(|r| r.wraps.len()).sum();
        let mut w = Writer::with_capacity(
            128 + self.recipients.len() * 40 + wraps * 120 + self.blobs.len() * 32,
        );
        w.raw(ENVELOPE_MAGIC)
            .u8(version)
            .raw(&self.id.0)
            .u64(self.created)
            .u8(self.signer_kind as u8)
            .str16(self.sender.as_str())
            .raw(self.signer_key.as_bytes())
            .u16(self.recipients.len() as u16);
        for r in &self.recipients {
            w.str16(r.address.as_str());
            if version == ENVELOPE_VERSION_DEVICES {
                w.u8(r.wraps.len() as u8);
            }
            for k in &r.wraps {
                w.raw(k.encryption_key.as_bytes()).bytes16(&k.wrapped_key);
            }
        }
        if version != ENVELOPE_VERSION {
            w.u16(self.blobs.len() as u16);
            for b in &self.blobs {
                w.raw(&b.0);
            }
        }
        w.into_bytes()
    }

    /// Canonical bytes covered by the signature (header, nonce, ciphertext), after `prefix`
    /// (the signature's context, when they are to be verified).
    fn signed_bytes(&self, prefix: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(prefix.len() + self.ciphertext.len() + 1024);
        w.raw(prefix)
            .raw(&self.header_bytes())
            .raw(&self.nonce)
            .bytes32(&self.ciphertext);
        w.into_bytes()
    }

    /// The canonical wire bytes (`docs/PROTOCOL.md` §Envelope).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes(&[]);
        bytes.extend_from_slice(self.signature.as_bytes());
        bytes
    }

    /// Decodes the structure without checking any signature. Total and bounded.
    pub fn decode(bytes: &[u8]) -> Result<Self, OpenError> {
        let mut r = Reader::new(bytes);
        r.expect(ENVELOPE_MAGIC, "envelope")?;
        let version = r.u8("version")?;
        if !(ENVELOPE_VERSION..=ENVELOPE_VERSION_DEVICES).contains(&version) {
            return Err(OpenError::UnsupportedVersion(version));
        }
        let devices = version == ENVELOPE_VERSION_DEVICES;
        let id = EnvelopeId(r.array("id")?);
        let created = r.u64("created")?;
        let signer_kind =
            SignerKind::from_u8(r.u8("signer kind")?).ok_or(DecodeError::Invalid("signer kind"))?;
        let sender = parse_address(r.str16("sender", MAX_ADDRESS)?, "sender")?;
        let signer_key = IdentityPublicKey(r.array("signer key")?);
        let count = usize::from(r.u16("recipient count")?);
        if count == 0 || count > MAX_RECIPIENTS {
            return Err(DecodeError::Invalid("recipient count").into());
        }
        let mut recipients = Vec::with_capacity(count.min(r.remaining() / 100));
        let mut seen = BTreeSet::new();
        for _ in 0..count {
            let address = parse_address(r.str16("recipient", MAX_ADDRESS)?, "recipient")?;
            if !seen.insert(address.clone()) {
                return Err(DecodeError::Invalid("duplicate recipient").into());
            }
            let n = if devices {
                usize::from(r.u8("wrap count")?)
            } else {
                1
            };
            if n == 0 || n > MAX_DEVICES {
                return Err(DecodeError::Invalid("wrap count").into());
            }
            let mut wraps: Vec<KeyWrap> = Vec::with_capacity(n);
            for _ in 0..n {
                let encryption_key = EncryptionPublicKey(r.array("recipient key")?);
                let wrapped = r.bytes16("wrapped key", WRAPPED_KEY_LEN)?;
                if wrapped.len() != WRAPPED_KEY_LEN {
                    return Err(DecodeError::Invalid("wrapped key length").into());
                }
                if wraps.iter().any(|k| k.encryption_key == encryption_key) {
                    return Err(DecodeError::Invalid("a recipient key twice").into());
                }
                wraps.push(KeyWrap {
                    encryption_key,
                    wrapped_key: wrapped.to_vec(),
                });
            }
            recipients.push(RecipientEntry { address, wraps });
        }
        // Version 3 only when a recipient has several keys: one encoding per envelope.
        if devices && recipients.iter().all(|r| r.wraps.len() == 1) {
            return Err(DecodeError::Invalid("version 3 with one key per recipient").into());
        }
        let mut blobs = Vec::new();
        if version != ENVELOPE_VERSION {
            // Version 2 names at least one blob, each once: one encoding per envelope.
            let count = usize::from(r.u16("blob count")?);
            if count > MAX_BLOBS || (count == 0 && !devices) {
                return Err(DecodeError::Invalid("blob count").into());
            }
            let mut seen = BTreeSet::new();
            for _ in 0..count {
                let id = BlobId(r.array("blob id")?);
                if !seen.insert(id) {
                    return Err(DecodeError::Invalid("duplicate blob").into());
                }
                blobs.push(id);
            }
        }
        let nonce = r.array("nonce")?;
        let ciphertext = r.bytes32("ciphertext", MAX_CIPHERTEXT)?.to_vec();
        let signature = Signature(r.array::<SIGNATURE_LEN>("signature")?);
        r.finish()?;
        Ok(Self {
            id,
            created,
            signer_kind,
            sender,
            signer_key,
            recipients,
            blobs,
            nonce,
            ciphertext,
            signature,
        })
    }

    /// Checks the signature against the envelope's own signer key. Anyone (the server
    /// included) can run this; it proves integrity, not who the signer is.
    pub fn verify_signature(&self) -> Result<(), OpenError> {
        self.signer_key
            .verify_prefixed(&self.signed_bytes(ENVELOPE_CONTEXT), &self.signature)
            .map_err(|_| OpenError::BadSignature)
    }

    /// [`Envelope::verify_signature`] of many envelopes at once (one Ed25519 batch,
    /// DECISIONS D77): each envelope whose signature holds, ready to open.
    pub fn verify_all<'a>(envelopes: &[&'a Envelope]) -> Vec<Result<Verified<'a>, OpenError>> {
        let messages: Vec<Vec<u8>> = envelopes
            .iter()
            .map(|e| e.signed_bytes(ENVELOPE_CONTEXT))
            .collect();
        let items: Vec<Signed<'_>> = envelopes
            .iter()
            .zip(&messages)
            .map(|(e, message)| Signed {
                key: &e.signer_key,
                message,
                signature: &e.signature,
            })
            .collect();
        verify_batch(&items)
            .into_iter()
            .zip(envelopes)
            .map(|(held, e)| {
                if held {
                    Ok(Verified(e))
                } else {
                    Err(OpenError::BadSignature)
                }
            })
            .collect()
    }

    /// Opens the envelope for `me`.
    ///
    /// `trusted_signer` is the key the caller verified for the sender (the sender's attested
    /// identity key, or the sender domain's key for [`SignerKind::Domain`]); `keys` are this
    /// device's encryption keys, current first; `seen` tells whether this id was received
    /// before.
    pub fn open(
        &self,
        me: &Address,
        keys: &[&EncryptionKeypair],
        trusted_signer: &IdentityPublicKey,
        seen: &dyn Fn(&EnvelopeId) -> bool,
    ) -> Result<Payload, OpenError> {
        self.verify_signature()?;
        Verified(self).open(me, keys, trusted_signer, seen)
    }
}

/// An envelope whose signature holds ([`Envelope::verify_all`]).
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a>(&'a Envelope);

impl Verified<'_> {
    /// [`Envelope::open`] without checking the signature again.
    pub fn open(
        &self,
        me: &Address,
        keys: &[&EncryptionKeypair],
        trusted_signer: &IdentityPublicKey,
        seen: &dyn Fn(&EnvelopeId) -> bool,
    ) -> Result<Payload, OpenError> {
        let envelope = self.0;
        if &envelope.signer_key != trusted_signer {
            return Err(OpenError::UnexpectedSigner(envelope.sender.clone()));
        }
        let entry = envelope
            .recipients
            .iter()
            .find(|r| &r.address == me)
            .ok_or_else(|| OpenError::NotARecipient(me.clone()))?;
        let (key, wrap) = keys
            .iter()
            .find_map(|k| {
                let public = k.public();
                entry
                    .wraps
                    .iter()
                    .find(|w| w.encryption_key == public)
                    .map(|w| (k, w))
            })
            .ok_or_else(|| OpenError::NoMatchingKey(me.clone()))?;
        let content_key =
            Zeroizing::new(key.unseal(&wrap.wrapped_key).ok_or(OpenError::KeyUnwrap)?);
        if content_key.len() != 32 {
            return Err(OpenError::KeyUnwrap);
        }
        let cipher =
            XChaCha20Poly1305::new_from_slice(&content_key).map_err(|_| OpenError::KeyUnwrap)?;
        let aad = envelope.header_bytes();
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&envelope.nonce),
                    AeadPayload {
                        msg: &envelope.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| OpenError::Decrypt)?,
        );
        let payload: Payload = serde_json::from_slice(&plaintext)
            .map_err(|e| OpenError::MalformedPayload(e.to_string()))?;
        if payload.from != envelope.sender {
            return Err(OpenError::SenderMismatch);
        }
        if blob_ids(&payload.blobs).ok().as_ref() != Some(&envelope.blobs) {
            return Err(OpenError::BlobMismatch);
        }
        if seen(&envelope.id) {
            return Err(OpenError::Replayed(envelope.id));
        }
        Ok(payload)
    }
}

/// Addresses on the wire must already be in normal form, so that the signed bytes are the
/// only encoding of the envelope (no re-spelling survives verification).
fn parse_address(s: &str, what: &'static str) -> Result<Address, DecodeError> {
    match Address::parse(s) {
        Ok(a) if a.as_str() == s => Ok(a),
        _ => Err(DecodeError::Invalid(what)),
    }
}

/// The ids of a payload's blobs, in order: what its envelope's header names.
fn blob_ids(refs: &[BlobRef]) -> Result<Vec<BlobId>, SealError> {
    if refs.len() > MAX_BLOBS {
        return Err(SealError::BadBlobs(format!(
            "{} blobs; an envelope names at most {MAX_BLOBS}",
            refs.len()
        )));
    }
    let mut seen = BTreeSet::new();
    refs.iter()
        .map(|r| {
            let id = BlobId::from_hex(&r.id)
                .ok_or_else(|| SealError::BadBlobs(format!("{:?} is not a blob id", r.id)))?;
            if seen.insert(id) {
                Ok(id)
            } else {
                Err(SealError::BadBlobs(format!("blob {} is named twice", r.id)))
            }
        })
        .collect()
}

/// Seals `payload` into one envelope for `recipients`, signed by `signer`: an address
/// listed with several keys (one per device) gets one key wrap per key, in one entry at
/// the place of its first listing. The header names the payload's blobs.
pub fn seal(
    signer_kind: SignerKind,
    signer: &SigningKeypair,
    payload: &Payload,
    recipients: &[(Address, EncryptionPublicKey)],
    created: u64,
) -> Result<Envelope, SealError> {
    seal_naming(
        signer_kind,
        signer,
        payload,
        recipients,
        blob_ids(&payload.blobs)?,
        created,
    )
}

/// [`seal`] with the header's blob list given (tests give one that differs from the
/// payload's).
fn seal_naming(
    signer_kind: SignerKind,
    signer: &SigningKeypair,
    payload: &Payload,
    recipients: &[(Address, EncryptionPublicKey)],
    blobs: Vec<BlobId>,
    created: u64,
) -> Result<Envelope, SealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let plaintext =
        Zeroizing::new(serde_json::to_vec(payload).expect("a payload always serializes"));
    if plaintext.len() + 16 > MAX_CIPHERTEXT {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let content_key = Zeroizing::new(random_bytes::<32>());
    let mut entries: Vec<RecipientEntry> = Vec::new();
    for (address, key) in recipients {
        let wrap = || KeyWrap {
            encryption_key: *key,
            wrapped_key: key.seal(&*content_key),
        };
        match entries.iter_mut().find(|e| &e.address == address) {
            Some(e) if e.wraps.iter().any(|w| w.encryption_key == *key) => {}
            Some(e) if e.wraps.len() >= MAX_DEVICES => {
                return Err(SealError::TooManyKeys(address.clone()));
            }
            Some(e) => e.wraps.push(wrap()),
            None => entries.push(RecipientEntry {
                address: address.clone(),
                wraps: vec![wrap()],
            }),
        }
    }
    if entries.len() > MAX_RECIPIENTS {
        return Err(SealError::TooManyRecipients(entries.len()));
    }
    let mut env = Envelope {
        id: EnvelopeId::random(),
        created,
        signer_kind,
        sender: payload.from.clone(),
        signer_key: signer.public(),
        recipients: entries,
        blobs,
        nonce: random_bytes(),
        ciphertext: Vec::new(),
        signature: Signature([0; 64]),
    };
    let cipher = XChaCha20Poly1305::new_from_slice(&*content_key).expect("32-byte key");
    let aad = env.header_bytes();
    env.ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&env.nonce),
            AeadPayload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of a bounded message cannot fail");
    env.signature = signer.sign(ENVELOPE_CONTEXT, &env.signed_bytes(&[]));
    Ok(env)
}

/// Seals a message the way a mail client sends it: one envelope for To and Cc together,
/// and one envelope per Bcc recipient whose payload names only that recipient as Bcc.
/// `key_of` returns the verified encryption keys of an address (one per device; none: not
/// verified).
pub fn seal_message(
    signer: &SigningKeypair,
    payload: &Payload,
    bcc: &[Address],
    key_of: &dyn Fn(&Address) -> Vec<EncryptionPublicKey>,
    created: u64,
) -> Result<Vec<Envelope>, SealError> {
    let out = seal_message_except(signer, payload, bcc, key_of, &BTreeSet::new(), created)?;
    if out.is_empty() {
        return Err(SealError::NoRecipients);
    }
    Ok(out)
}

/// Like [`seal_message`], but the addresses in `outside` (ordinary email, reached another
/// way) stay in the headers and get no envelope. Returns no envelopes when every
/// recipient is outside.
pub fn seal_message_except(
    signer: &SigningKeypair,
    payload: &Payload,
    bcc: &[Address],
    key_of: &dyn Fn(&Address) -> Vec<EncryptionPublicKey>,
    outside: &BTreeSet<Address>,
    created: u64,
) -> Result<Vec<Envelope>, SealError> {
    let lookup = |a: &Address| {
        let keys = key_of(a);
        if keys.is_empty() {
            return Err(SealError::MissingKey(a.clone()));
        }
        Ok(keys.into_iter().map(|k| (a.clone(), k)).collect::<Vec<_>>())
    };
    let mut out = Vec::new();
    let visible: Vec<Address> = payload.to.iter().chain(&payload.cc).cloned().collect();
    let mut shared = payload.clone();
    shared.bcc.clear();
    let sealed_to: Vec<&Address> = visible.iter().filter(|a| !outside.contains(*a)).collect();
    if !sealed_to.is_empty() {
        let keys = sealed_to
            .into_iter()
            .map(lookup)
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        out.push(seal(SignerKind::User, signer, &shared, &keys, created)?);
    }
    for b in bcc.iter().collect::<BTreeSet<_>>() {
        if visible.contains(b) || outside.contains(b) {
            continue;
        }
        let mut own = shared.clone();
        own.bcc = vec![b.clone()];
        out.push(seal(SignerKind::User, signer, &own, &lookup(b)?, created)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlobRef {
        BlobRef {
            id: BlobId([n; 32]).to_hex(),
            key: [n; 32],
            nonce: [n; crate::blob::NONCE_PREFIX],
            size: 100,
            base64: false,
        }
    }

    fn payload(blobs: Vec<BlobRef>) -> Payload {
        let a = Address::parse("a@x.test").unwrap();
        Payload {
            from: a.clone(),
            to: vec![a],
            cc: vec![],
            bcc: vec![],
            subject: "s".into(),
            body: "b".into(),
            headers: vec![],
            date: 1,
            message_id: "<m@x.test>".into(),
            in_reply_to: None,
            references: vec![],
            legacy: None,
            mime: None,
            blobs,
            state: vec![],
        }
    }

    /// A header whose blob list is not the payload's (a sender's client gone wrong, or a
    /// server pointing recipients at other blobs) does not open, even when the sender
    /// signed and encrypted it so.
    #[test]
    fn a_header_naming_other_blobs_than_the_payload_does_not_open() {
        let signer = SigningKeypair::generate();
        let key = EncryptionKeypair::generate();
        let p = payload(vec![blob(1)]);
        let me = p.from.clone();
        let rcpts = [(me.clone(), key.public())];
        let honest = seal(SignerKind::User, &signer, &p, &rcpts, 1).unwrap();
        assert!(
            honest
                .open(&me, &[&key], &signer.public(), &|_| false)
                .is_ok()
        );
        for named in [
            vec![BlobId([2; 32])],
            vec![BlobId([1; 32]), BlobId([2; 32])],
            vec![],
        ] {
            let env = seal_naming(SignerKind::User, &signer, &p, &rcpts, named, 1).unwrap();
            let env = Envelope::decode(&env.encode()).unwrap();
            assert_eq!(
                env.open(&me, &[&key], &signer.public(), &|_| false),
                Err(OpenError::BlobMismatch)
            );
        }
    }

    /// One envelope reaches every device of a recipient: one key wrap per device, in a
    /// version-3 envelope that each device opens and a key outside the set does not.
    #[test]
    fn an_envelope_to_several_devices_wraps_the_key_once_per_device() {
        let signer = SigningKeypair::generate();
        let (laptop, desktop, other) = (
            EncryptionKeypair::generate(),
            EncryptionKeypair::generate(),
            EncryptionKeypair::generate(),
        );
        let p = payload(vec![]);
        let me = p.from.clone();
        let bob = Address::parse("bob@y.test").unwrap();
        let rcpts = [
            (me.clone(), laptop.public()),
            (bob.clone(), other.public()),
            (me.clone(), desktop.public()),
            (me.clone(), laptop.public()),
        ];
        let env = seal(SignerKind::User, &signer, &p, &rcpts, 1).unwrap();
        assert_eq!(env.version(), ENVELOPE_VERSION_DEVICES);
        assert_eq!(env.recipients.len(), 2);
        assert_eq!(
            env.recipients[0].wraps.len(),
            2,
            "the repeated key is wrapped once"
        );
        let bytes = env.encode();
        assert_eq!(bytes[5], ENVELOPE_VERSION_DEVICES);
        let env = Envelope::decode(&bytes).unwrap();
        for key in [&laptop, &desktop] {
            assert_eq!(
                env.open(&me, &[key], &signer.public(), &|_| false).unwrap(),
                p
            );
        }
        assert_eq!(
            env.open(&me, &[&other], &signer.public(), &|_| false),
            Err(OpenError::NoMatchingKey(me.clone()))
        );
        assert!(
            env.open(&bob, &[&other], &signer.public(), &|_| false)
                .is_ok()
        );
    }

    /// One key per recipient keeps the versions from before devices, byte for byte in
    /// layout; a version-3 envelope that would not need it, or lists a key twice for one
    /// recipient, is refused: each envelope has one encoding.
    #[test]
    fn version_three_only_where_a_recipient_has_several_keys() {
        let signer = SigningKeypair::generate();
        let key = EncryptionKeypair::generate();
        let p = payload(vec![]);
        let me = p.from.clone();
        let single = seal(
            SignerKind::User,
            &signer,
            &p,
            &[(me.clone(), key.public())],
            1,
        )
        .unwrap();
        let bytes = single.encode();
        assert_eq!(bytes[5], ENVELOPE_VERSION);
        // Version 1: magic, version, id, created, kind, sender, signer, count, then the
        // recipient as address, key and wrap with no count of wraps.
        let at = 5 + 1 + 16 + 8 + 1 + 2 + me.as_str().len() + 32 + 2;
        assert_eq!(
            &bytes[at + 2..at + 2 + me.as_str().len()],
            me.as_str().as_bytes()
        );
        let key_at = at + 2 + me.as_str().len();
        assert_eq!(&bytes[key_at..key_at + 32], key.public().as_bytes());

        let two = EncryptionKeypair::generate();
        let rcpts = [(me.clone(), key.public()), (me.clone(), two.public())];
        let env = seal(SignerKind::User, &signer, &p, &rcpts, 1).unwrap();
        // The same contents with one wrap, written as version 3, and a key listed twice.
        let mut one = env.clone();
        one.recipients[0].wraps.truncate(1);
        let mut twice = env.clone();
        twice.recipients[0].wraps[1] = twice.recipients[0].wraps[0].clone();
        for bad in [one, twice] {
            let mut w = Writer::new();
            w.raw(&bad.header_bytes_as(ENVELOPE_VERSION_DEVICES))
                .raw(&bad.nonce)
                .bytes32(&bad.ciphertext)
                .raw(bad.signature.as_bytes());
            assert!(matches!(
                Envelope::decode(&w.into_bytes()),
                Err(OpenError::Malformed(DecodeError::Invalid(_)))
            ));
        }
    }
}
