//! Client errors: each is one line a user can act on.

use letterme_protocol::{Address, AttestationError, OpenError, SealError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(
        "no letter.me profile at {0}; create one with `letterme account create ADDRESS --server URL`"
    )]
    NoProfile(String),
    #[error("a profile already exists at {0}; use another --profile directory")]
    ProfileExists(String),
    #[error("the profile at {0} is damaged: {1}")]
    BadProfile(String, String),
    #[error("wrong passphrase for the profile at {0}")]
    WrongPassphrase(String),
    #[error(
        "{0} needs the account's identity key, which is on the device that created the account, not on this linked device; run it there"
    )]
    NoIdentity(&'static str),
    #[error("linking the device failed: {0}")]
    Link(String),
    #[error("cannot reach the server at {url}: {reason}; is `letterme serve` running there?")]
    ServerDown { url: String, reason: String },
    #[error(
        "refusing to talk to {0} over plain http: tokens and mail would cross the network unencrypted; use its https:// URL (plain http is for loopback only)"
    )]
    PlaintextServer(String),
    #[error("the server at {url} answered {status}: {message}")]
    Api {
        url: String,
        status: u16,
        code: letterme_protocol::api::ErrorCode,
        message: String,
    },
    #[error("no such user: {0}")]
    UnknownRecipient(Address),
    #[error("{0} is not on this server's domain @{1}")]
    OtherDomain(Address, String),
    #[error("refusing to encrypt to {0}: {1}")]
    UnverifiedRemote(Address, String),
    #[error("refusing to encrypt to {0}: key transparency check failed: {1}")]
    Transparency(Address, letterme_protocol::kt::KtError),
    #[error(
        "the key-transparency log of your own domain does not verify: {0}; your server may be misbehaving, contact its operator"
    )]
    OwnLog(letterme_protocol::kt::KtError),
    #[error("the key-transparency log of {0} does not verify: {1}")]
    Audit(String, String),
    #[error(
        "the keys of the profile at {0} changed since it was opened (`letterme key rotate` or `revoke`); start again (restart `letterme proxy`)"
    )]
    KeysChanged(String),
    #[error("{0} is not on letter.me")]
    Legacy(Address),
    #[error(
        "{} not on letter.me, and your server does not send to ordinary addresses ([outbound] mode is off)",
        list_of(.0)
    )]
    OutboundOff(Vec<Address>),
    #[error(
        "{} not on letter.me: this copy would leave end-to-end encryption and be readable by your server, theirs and anyone they share it with; send again with --allow-plaintext to allow it",
        list_of(.0)
    )]
    PlaintextRefused(Vec<Address>),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("the message is {size} bytes encrypted; the server accepts at most {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("refusing to encrypt to {0}: its key cannot be verified ({1})")]
    Unverified(Address, AttestationError),
    #[error("the server sent a key for {0} that does not match what it registered for us")]
    BadRegistration(Address),
    #[error("cannot seal the message: {0}")]
    Seal(#[from] SealError),
    #[error("cannot open message: {0}")]
    Open(#[from] OpenError),
    #[error("no message with id {0} in the local mailbox (run `letterme list`)")]
    NoSuchMessage(String),
    #[error("id prefix {0} matches more than one message; give more digits")]
    AmbiguousId(String),
    #[error("a message needs at least one recipient (--to, --cc or --bcc)")]
    NoRecipients,
    #[error("local store {path}: {reason}")]
    LocalStore { path: String, reason: String },
    #[error("{0}")]
    Io(String),
    /// A file attached that cannot be read (or changed while it was sent).
    #[error("attachment: {0}")]
    Attachment(String),
    #[error("an attachment is {size} bytes encrypted; the server accepts at most {limit} bytes")]
    AttachmentTooLarge { size: u64, limit: u64 },
    #[error("attachment blob: {0}")]
    Blob(#[from] letterme_protocol::blob::BlobError),
    #[error(
        "attachment blob {0} is not downloaded yet: `letterme proxy` downloads it (open the \
         message in your mail client), or stop the proxy and run `letterme sync`"
    )]
    NotDownloaded(String),
}

fn list_of(v: &[Address]) -> String {
    let names: Vec<&str> = v.iter().map(Address::as_str).collect();
    let verb = if v.len() == 1 { "is" } else { "are" };
    format!("{} {verb}", names.join(", "))
}

impl ClientError {
    /// A file attached that cannot be read.
    pub(crate) fn attachment(e: &std::io::Error) -> Self {
        Self::Attachment(e.to_string())
    }

    pub(crate) fn store(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::LocalStore {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

impl From<letterme_protocol::link::LinkError> for ClientError {
    fn from(e: letterme_protocol::link::LinkError) -> Self {
        Self::Link(e.to_string())
    }
}
