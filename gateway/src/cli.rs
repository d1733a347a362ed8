//! The command line (DESIGN.md §3).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "letterme",
    version,
    about = "End-to-end encrypted, federated mail that runs alongside classic email.",
    long_about = "End-to-end encrypted, federated mail that runs alongside classic email.\n\n\
        Server side: `letterme init`, then `letterme serve`.\n\
        Client side: `letterme account create ADDRESS --server URL`, then `send`, `sync`, `list`, `read`.\n\
        Try it all at once: `letterme demo`."
)]
pub struct Cli {
    /// Client profile directory (keys, local mailbox).
    #[arg(long, global = true, env = "LETTERME_PROFILE", value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// DNS servers (HOST:PORT) the client uses to verify other domains' keys (their
    /// `_mailx` records). Default: the system resolver.
    #[arg(
        long,
        global = true,
        env = "LETTERME_DNS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub dns: Vec<SocketAddr>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a server config file and generate the domain key.
    Init(InitArgs),
    /// Run the native server (on the embedded default when there is no config file).
    Serve(ServeArgs),
    /// Run the whole story on a temporary directory: a server, two users, mail both ways.
    Demo,
    /// Manage your account.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Send an end-to-end encrypted message (body from stdin when --body is absent).
    Send(SendArgs),
    /// Fetch new mail, store it locally, then acknowledge it so the server deletes it.
    Sync(SyncArgs),
    /// List the messages in your local mailbox.
    List(JsonFlag),
    /// Show one message (ID or a unique prefix of it, as `list` prints).
    Read(ReadArgs),
    /// Serve your mail to a desktop mail client (Thunderbird) over IMAP and SMTP on loopback.
    ///
    /// Keeps syncing from the server, decrypts locally, and sends what the client submits
    /// end-to-end encrypted. `letterme proxy credentials` prints the login to configure.
    Proxy(ProxyArgs),
    /// Print the DNS records this server needs, as zone-file lines with comments.
    Dns(ConfigArg),
    /// Look the DNS records up live: each is ok, missing or wrong, with the exact fix.
    ///
    /// Exits non-zero while a required record is missing or wrong.
    Check(QueueArgs),
    /// Rotate the domain key: `next` makes and publishes a new key, `activate` switches to it.
    #[command(subcommand)]
    DomainKey(DomainKeyAction),
    /// Show the outbound queues (federation and SMTP): what waits for which domain, and why.
    Queue(QueueArgs),
    /// Refuse mail from an address or a whole domain (`@example.com`), or list/undo that.
    Block(BlockArgs),
    /// Your devices: link a new one with a one-time code, list them, remove one.
    #[command(subcommand)]
    Device(DeviceAction),
    /// Your encryption key: replace it (`rotate`), or replace it and stop trusting the old
    /// one at once (`revoke`). Both are recorded in your domain's key-transparency log.
    #[command(subcommand)]
    Key(KeyAction),
    /// Key transparency: check a domain's public log of key changes.
    #[command(subcommand)]
    Kt(KtAction),
}

#[derive(Debug, Subcommand)]
pub enum KtAction {
    /// Verify DOMAIN's whole key-transparency log from its first entry, print its size
    /// and head, and (for another domain) have your server witness that head.
    ///
    /// Exits non-zero when the log does not verify, contradicts what this profile saw
    /// before, or your server caught the domain showing someone else another log.
    Audit {
        /// The domain, e.g. example.com.
        domain: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Forget the checkpoint this profile remembers for DOMAIN, so the next check starts
    /// afresh. Only for a log known to have been restored from a backup (its operator says
    /// so): it also forgets the protection against that domain rewriting its history.
    Forget {
        /// The domain, e.g. example.com.
        domain: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Show a one-time code (and its QR code) for a new machine, then wait for it: run
    /// `letterme account join ADDRESS --code CODE` there within 10 minutes. Run this on
    /// the device that created the account: it holds the identity key that certifies the
    /// new device. With --json, prints `{"code": ...}` first, then the linked device.
    Link(JsonFlag),
    /// List the account's devices; the one you are on is marked.
    List(JsonFlag),
    /// Remove a device by its id (as `list` prints it): it stops receiving at once, and
    /// mail sent from now on is not sealed to it.
    Remove {
        /// The device's id.
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Make a new encryption key and have the server attest and log it. Senders then
    /// encrypt only to the new key; mail already on its way to the old one still opens
    /// for the overlap period.
    Rotate {
        /// Days the old key still opens newly received mail (mail in flight).
        #[arg(long, default_value_t = letterme_client::ROTATION_OVERLAP_DAYS, value_name = "DAYS")]
        overlap_days: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// For a key that may be compromised: make a new key as `rotate` does, with no
    /// overlap — mail that arrives sealed to the old key from now on is refused.
    Revoke {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum DomainKeyAction {
    /// Generate the next domain key; `letterme dns` then prints its record beside the
    /// current one. Publish both before activating.
    Next(ConfigArg),
    /// Switch to the next key (with the server stopped): accounts are attested again with
    /// it, and the previous key stays published for verification during the overlap.
    Activate(ConfigArg),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file; default ./letterme.toml.
    #[arg(long, default_value = "letterme.toml", value_name = "PATH")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    /// `someone@example.com`, or `@example.com` for every address there.
    #[arg(required_unless_present = "list")]
    pub entry: Option<String>,
    /// Unblock instead.
    #[arg(long, conflicts_with = "list")]
    pub remove: bool,
    /// List what you block.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub action: Option<ProxyAction>,
    /// IMAP listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:1143", value_name = "ADDR")]
    pub imap_listen: SocketAddr,
    /// SMTP submission listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:1025", value_name = "ADDR")]
    pub smtp_listen: SocketAddr,
    /// Let mail to ordinary (non-letter.me) addresses leave as plaintext email when your
    /// server relays: such a copy is not end-to-end encrypted.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// When large attachments (sent as separate blobs) are downloaded. The message itself
    /// appears at once with `background` and `on-demand`; the server keeps it until its
    /// attachments are downloaded.
    #[arg(long, value_enum, default_value_t = AttachmentDownload::Background, value_name = "WHEN")]
    pub attachments: AttachmentDownload,
}

/// `letterme proxy --attachments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachmentDownload {
    /// Right after the message appears.
    Background,
    /// When the mail client opens the attachment (or fetches the whole message), or once
    /// it has waited half the server's retention, before the server would delete it.
    OnDemand,
    /// Before the message appears, with it.
    WithMessage,
}

impl From<AttachmentDownload> for letterme_client::AttachmentDownload {
    fn from(a: AttachmentDownload) -> Self {
        match a {
            AttachmentDownload::Background => Self::Background,
            AttachmentDownload::OnDemand => Self::OnDemand,
            AttachmentDownload::WithMessage => Self::WithMessage,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ProxyAction {
    /// Print what the mail client needs: addresses, username, password, TLS fingerprint.
    Credentials(JsonFlag),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The mail domain this server serves, e.g. example.com.
    #[arg(long)]
    pub domain: String,
    /// Where to write the config file.
    #[arg(long, default_value = "letterme.toml", value_name = "PATH")]
    pub config: PathBuf,
    /// Data directory (database, key file).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The URL clients and peers use to reach this server.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// HTTP listen address.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// SMTP listen address (inbound adapter).
    #[arg(long, value_name = "ADDR")]
    pub smtp_listen: Option<SocketAddr>,
    /// Server-to-server (federation) listen address, TLS 1.3 only; federation is off without it.
    #[arg(long, value_name = "ADDR")]
    pub federation_listen: Option<SocketAddr>,
    /// The federation endpoint other servers use (published as `e=` in `_mailx`);
    /// default https://<federation-listen>.
    #[arg(long, value_name = "URL", requires = "federation_listen")]
    pub federation_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file; default ./letterme.toml, or the embedded default when that is absent.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Start even when required DNS records are missing or wrong (production mode checks
    /// them at start, as `letterme check` does).
    #[arg(long)]
    pub skip_dns_check: bool,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Generate keys locally, register ADDRESS with the server and write the profile.
    Create {
        /// Your address, e.g. alice@example.com.
        address: String,
        /// The server's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        server: String,
        /// Invite token, when the server registers by invitation.
        #[arg(long)]
        invite: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make this machine a new device of ADDRESS, with the code `letterme device link`
    /// shows on a device of the account. The new device's keys are made here; the code
    /// works once, for 10 minutes.
    Join {
        /// The account's address, e.g. alice@example.com.
        address: String,
        /// The one-time code, e.g. 123456-ABCD-EFGH.
        #[arg(long)]
        code: String,
        /// The server's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        server: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub to: Vec<String>,
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub cc: Vec<String>,
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub bcc: Vec<String>,
    #[arg(long)]
    pub subject: String,
    /// Message body; read from stdin when absent.
    #[arg(long)]
    pub body: Option<String>,
    /// An HTML version of the message, from this file (UTF-8); the body stays as its
    /// plain-text alternative.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Attach this file, under its own file name (repeatable).
    #[arg(long, value_name = "PATH")]
    pub attach: Vec<PathBuf>,
    /// Allow copies to ordinary (non-letter.me) addresses, which leave end-to-end
    /// encryption: your server sends them as plaintext email (when it relays).
    #[arg(long)]
    pub allow_plaintext: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Keep running: print each new message as it arrives (long poll), until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Message id (or a unique prefix).
    pub id: String,
    /// Write each attachment into this directory (created if needed), under its own file
    /// name; an existing file is never overwritten.
    #[arg(long, value_name = "DIR")]
    pub save_attachments: Option<PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}
