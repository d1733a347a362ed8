//! The server's configuration (DESIGN.md §4), with the defaults `letterme serve` runs on
//! when there is no config file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Wire enums the config sets: `GET /v1/server` shows them.
pub use letterme_protocol::api::{OutboundMode, RegistrationMode};
pub use letterme_protocol::verdict::DmarcMode;

/// The whole config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub domain: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where the key-encryption key lives; default `<data_dir>/master.key`. Not used when the
    /// domain key was sealed under `LETTERME_SERVER_PASSPHRASE` (set at first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default, skip_serializing_if = "NetworkConfig::is_default")]
    pub network: NetworkConfig,
    /// `production` checks the published DNS records at start and refuses to run while a
    /// required one is wrong; absent: production when any listener is off loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RunMode>,
}

impl Config {
    /// The embedded default: domain `localhost`, data in `./letterme-data`, HTTP on
    /// 127.0.0.1:8080, SMTP on 127.0.0.1:2525.
    pub fn embedded_default() -> Self {
        Self::for_domain("localhost")
    }

    pub fn for_domain(domain: &str) -> Self {
        Self {
            domain: domain.to_ascii_lowercase(),
            data_dir: default_data_dir(),
            key_file: None,
            http: HttpConfig::default(),
            smtp: SmtpConfig::default(),
            dns: DnsConfig::default(),
            policy: PolicyConfig::default(),
            limits: LimitsConfig::default(),
            registration: RegistrationConfig::default(),
            federation: FederationConfig::default(),
            outbound: OutboundConfig::default(),
            network: NetworkConfig::default(),
            mode: None,
        }
    }

    /// Production unless configured otherwise or every listener is on loopback.
    pub fn is_production(&self) -> bool {
        match self.mode {
            Some(m) => m == RunMode::Production,
            None => {
                !self.http.listen.ip().is_loopback()
                    || (self.smtp.enabled
                        && self.smtp.listen.is_some_and(|l| !l.ip().is_loopback()))
                    || self
                        .federation
                        .listen
                        .is_some_and(|l| !l.ip().is_loopback())
            }
        }
    }

    /// The name this server greets with and publishes as MX: `[smtp] hostname`, else the domain.
    pub fn mail_hostname(&self) -> String {
        self.smtp
            .hostname
            .clone()
            .unwrap_or_else(|| self.domain.clone())
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("letterme.db")
    }

    /// The URL clients use; derived from the listen address when not configured.
    pub fn public_url(&self) -> String {
        self.http.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.http.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", self.http.listen)
        })
    }

    /// The config in normal form: the domain lower-cased, as addresses are.
    #[must_use]
    pub fn normalized(mut self) -> Self {
        self.domain = self
            .domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self
    }

    /// Checks what serde cannot: the domain's syntax, and that plain HTTP only listens on
    /// loopback (DESIGN.md §3).
    pub fn validate(&self) -> Result<(), String> {
        if !letterme_protocol::address::valid_domain(&self.domain) {
            return Err(format!(
                "domain {:?} is not a valid domain name",
                self.domain
            ));
        }
        if !self.http.listen.ip().is_loopback() && self.http.tls.is_none() {
            return Err(format!(
                "http.listen {} is not a loopback address, and plain HTTP is allowed only on loopback; \
                 listen on 127.0.0.1 behind a TLS-terminating proxy, or configure [http.tls]",
                self.http.listen
            ));
        }
        for a in &self.policy.allow {
            for n in &a.networks {
                parse_cidr(n).map_err(|e| format!("policy.allow {:?}: {e}", a.name))?;
            }
        }
        // Each accepted message is sealed whole into envelopes of bounded size.
        if self.smtp.max_message_size.0 > 50_000_000 {
            return Err("smtp.max_message_size may be at most 50MB".into());
        }
        if self.smtp.max_recipients == 0 || self.smtp.max_recipients > 1000 {
            return Err("smtp.max_recipients must be between 1 and 1000".into());
        }
        if self.policy.retention_days == 0 {
            return Err("policy.retention_days must be at least 1".into());
        }
        let f = &self.federation;
        if f.retry_first.0 == 0 || f.retry_max < f.retry_first {
            return Err(
                "federation.retry_first must be at least 1s and at most federation.retry_max"
                    .into(),
            );
        }
        if f.give_up_after.0 > MAX_GIVE_UP {
            return Err(format!(
                "federation.give_up_after may be at most {} days: peers refuse older envelopes",
                MAX_GIVE_UP / 86_400
            ));
        }
        if f.batch == 0 || f.batch > letterme_protocol::federation::MAX_BATCH {
            return Err(format!(
                "federation.batch must be between 1 and {}",
                letterme_protocol::federation::MAX_BATCH
            ));
        }
        if f.batch_bytes.0 < 64 * 1024
            || f.batch_bytes.0 > letterme_protocol::federation::MIN_ACCEPTED_BODY
        {
            return Err("federation.batch_bytes must be between 64KiB and 64MiB".into());
        }
        if let Some(u) = &f.public_url
            && !u.starts_with("https://")
        {
            return Err(format!("federation.public_url {u:?} must be https://"));
        }
        let o = &self.outbound;
        if o.retry_first.0 == 0 || o.retry_max < o.retry_first {
            return Err(
                "outbound.retry_first must be at least 1s and at most outbound.retry_max".into(),
            );
        }
        if o.port == 0 {
            return Err("outbound.port must not be 0".into());
        }
        if let Some(m) = &o.mta_sts
            && !matches!(m.as_str(), "enforce" | "testing")
        {
            return Err(format!(
                "outbound.mta_sts {m:?}: expected enforce or testing"
            ));
        }
        if let Some(r) = &o.tls_rpt
            && !(r.starts_with("mailto:") || r.starts_with("https://"))
        {
            return Err(format!(
                "outbound.tls_rpt {r:?}: expected a mailto: or https:// URI"
            ));
        }
        let l = &self.limits;
        // A batch of one such envelope must fit in the 64 MiB every peer accepts.
        if l.max_message_size.0 < 1024 || l.max_message_size.0 > MAX_NATIVE_MESSAGE {
            return Err(format!(
                "limits.max_message_size must be between 1024 bytes and {MAX_NATIVE_MESSAGE} bytes"
            ));
        }
        if l.max_domains_per_send == 0 || l.remote_per_minute == 0 || l.remote_burst == 0 {
            return Err("limits.max_domains_per_send, remote_per_minute and remote_burst must be at least 1".into());
        }
        if l.connections == 0 || l.connections_per_prefix == 0 {
            return Err(
                "limits.connections and limits.connections_per_prefix must be at least 1".into(),
            );
        }
        if l.header_timeout.0 == 0 || l.body_timeout.0 == 0 {
            return Err("limits.header_timeout and limits.body_timeout must be at least 1s".into());
        }
        if l.request_timeout.0 <= letterme_protocol::api::MAX_WAIT {
            return Err(format!(
                "limits.request_timeout must be longer than the longest long poll ({}s)",
                letterme_protocol::api::MAX_WAIT
            ));
        }
        let sm = &self.smtp;
        if sm.command_timeout.0 == 0
            || sm.session_timeout < sm.command_timeout
            || sm.min_data_rate == 0
        {
            return Err("smtp.command_timeout must be at least 1s and at most smtp.session_timeout; smtp.min_data_rate at least 1".into());
        }
        Ok(())
    }
}

/// Parses `198.51.100.0/24`, `2001:db8::/32` or a bare address.
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP network"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?
    };
    Ok((ip, len))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./letterme-data")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            public_url: None,
            tls: None,
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Certificate and key files (PEM).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Run the inbound SMTP listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(
        default = "default_smtp_listen",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    #[serde(default = "default_smtp_size")]
    pub max_message_size: ByteSize,
    /// Name in the greeting and in Authentication-Results; default: the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Per client prefix (IPv4 /24, IPv6 /64).
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    /// Longest wait for a command (RFC 5321 §4.5.3.2 asks at least 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Interval,
    /// Longest a session may last.
    #[serde(default = "default_session_timeout")]
    pub session_timeout: Interval,
    /// Slowest average rate of a message's DATA after `command_timeout`, bytes per second.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
}

fn default_command_timeout() -> Interval {
    Interval(300)
}

fn default_session_timeout() -> Interval {
    Interval(3600)
}

fn default_min_data_rate() -> u64 {
    1000
}

fn default_true() -> bool {
    true
}

fn default_max_recipients() -> usize {
    100
}

fn default_max_sessions() -> usize {
    512
}

fn default_max_sessions_per_ip() -> usize {
    20
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_smtp_listen(),
            max_message_size: default_smtp_size(),
            hostname: None,
            max_recipients: default_max_recipients(),
            max_sessions: default_max_sessions(),
            max_sessions_per_ip: default_max_sessions_per_ip(),
            command_timeout: default_command_timeout(),
            session_timeout: default_session_timeout(),
            min_data_rate: default_min_data_rate(),
        }
    }
}

#[allow(clippy::unnecessary_wraps)] // serde's default must have the field's type
fn default_smtp_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 2525)))
}

fn default_smtp_size() -> ByteSize {
    ByteSize(25 * 1000 * 1000)
}

/// What the server may connect to (`egress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Let federation and outbound mail connect to loopback, private, link-local and other
    /// non-public addresses that DNS names: for a lab or tests only. A peer listed in
    /// `[federation] peers` may be private without it.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

impl NetworkConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Absent: the system resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout in milliseconds.
    #[serde(default = "default_dns_timeout")]
    pub timeout_ms: u64,
    /// Retries after the first try.
    #[serde(default = "default_dns_attempts")]
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_ms: default_dns_timeout(),
            attempts: default_dns_attempts(),
        }
    }
}

fn default_dns_timeout() -> u64 {
    3000
}

fn default_dns_attempts() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Parsed here, so `policy.dmarc "lax": expected strict, published or off` stops the
    /// start before anything listens.
    #[serde(default)]
    pub dmarc: DmarcMode,
    #[serde(default = "default_retention")]
    pub retention_days: u32,
    /// Named exceptions for forwarders and lists that break DKIM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowConfig>,
}

/// `[[policy.allow]]`: mail from these networks, or with a passing SPF for these domains,
/// is accepted whatever DMARC says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    pub name: String,
    /// CIDR networks, e.g. `198.51.100.0/24`.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub spf_domains: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dmarc: DmarcMode::default(),
            retention_days: default_retention(),
            allow: Vec::new(),
        }
    }
}

fn default_retention() -> u32 {
    30
}

/// Native limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest sealed envelope accepted through the API.
    #[serde(default = "default_native_size")]
    pub max_message_size: ByteSize,
    /// Per-user storage of undelivered (not yet synced) mail.
    #[serde(default = "default_quota")]
    pub quota: ByteSize,
    /// Largest attachment uploaded as a blob (sealed bytes, PROTOCOL.md §19a).
    #[serde(default = "default_max_attachment")]
    pub max_attachment_size: ByteSize,
    /// Bytes of blobs one user may hold on the server that no delivered message refers to
    /// yet (uploads in progress, or done and not sent).
    #[serde(default = "default_blob_bytes_per_user")]
    pub blob_bytes_per_user: ByteSize,
    /// Key lookups per user: sustained rate per second and burst.
    #[serde(default = "default_lookup_rate")]
    pub key_lookups_per_second: u32,
    #[serde(default = "default_lookup_burst")]
    pub key_lookup_burst: u32,
    /// Key changes (rotations and revocations) one account may make in 24 hours: each is
    /// a log entry kept forever.
    #[serde(default = "default_key_changes")]
    pub key_changes_per_day: u32,
    /// Destination domains one envelope may go to.
    #[serde(default = "default_max_domains")]
    pub max_domains_per_send: usize,
    /// Bytes of one user's mail waiting for other domains (each envelope counted once).
    #[serde(default = "default_queued_per_user")]
    pub queued_per_user: ByteSize,
    /// Deliveries to other domains one user may queue: per minute (one per envelope and
    /// destination domain) and burst.
    #[serde(default = "default_remote_per_minute")]
    pub remote_per_minute: u32,
    #[serde(default = "default_remote_burst")]
    pub remote_burst: u32,
    /// Connections the API listener holds at once, and again the federation listener.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Of those, from one client prefix (IPv4 /24, IPv6 /64). Users behind one NAT share
    /// it: each running proxy keeps about two.
    #[serde(default = "default_connections_per_prefix")]
    pub connections_per_prefix: usize,
    /// Longest wait for a request's header, the TLS handshake, or the next request on an
    /// idle kept-alive connection.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Interval,
    /// Longest wait for the next piece of a request body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Interval,
    /// Longest a request may take from its header to its answer (long polls included).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Interval,
}

fn default_max_domains() -> usize {
    100
}

fn default_queued_per_user() -> ByteSize {
    ByteSize(500 * 1000 * 1000)
}

fn default_remote_per_minute() -> u32 {
    600
}

fn default_remote_burst() -> u32 {
    1000
}

fn default_connections() -> usize {
    4096
}

fn default_connections_per_prefix() -> usize {
    256
}

fn default_header_timeout() -> Interval {
    Interval(30)
}

fn default_body_timeout() -> Interval {
    Interval(30)
}

fn default_request_timeout() -> Interval {
    Interval(300)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: default_native_size(),
            quota: default_quota(),
            max_attachment_size: default_max_attachment(),
            blob_bytes_per_user: default_blob_bytes_per_user(),
            key_lookups_per_second: default_lookup_rate(),
            key_lookup_burst: default_lookup_burst(),
            key_changes_per_day: default_key_changes(),
            max_domains_per_send: default_max_domains(),
            queued_per_user: default_queued_per_user(),
            remote_per_minute: default_remote_per_minute(),
            remote_burst: default_remote_burst(),
            connections: default_connections(),
            connections_per_prefix: default_connections_per_prefix(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            request_timeout: default_request_timeout(),
        }
    }
}

fn default_native_size() -> ByteSize {
    ByteSize(25 * 1000 * 1000)
}

fn default_quota() -> ByteSize {
    ByteSize(1000 * 1000 * 1000)
}

fn default_max_attachment() -> ByteSize {
    ByteSize(500 * 1000 * 1000)
}

fn default_blob_bytes_per_user() -> ByteSize {
    ByteSize(1000 * 1000 * 1000)
}

fn default_lookup_rate() -> u32 {
    10
}

fn default_lookup_burst() -> u32 {
    100
}

fn default_key_changes() -> u32 {
    20
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default)]
    pub mode: RegistrationMode,
    /// Single-use invite tokens accepted when `mode = "invite"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invites: Vec<String>,
}

/// `[federation]`: server-to-server delivery (DESIGN.md §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The server-to-server listener: HTTPS, TLS 1.3 only. Absent: federation is off and
    /// mail to other domains is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The endpoint published as `e=` in `_mailx`; default `https://<listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Static peers for private networks: domain → `https://` endpoint (keys still from
    /// DNS), or a whole `v=mailx1; k=…; e=…; fp=…` record (no DNS needed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, String>,
    /// First retry after a temporary failure; doubles each time (with jitter).
    #[serde(default = "default_retry_first")]
    pub retry_first: Interval,
    /// Longest wait between retries.
    #[serde(default = "default_retry_max")]
    pub retry_max: Interval,
    /// After this long undelivered, give up and send the sender a failure notice.
    #[serde(default = "default_give_up")]
    pub give_up_after: Interval,
    /// Administrator's block list: `someone@example.com` or `example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
    /// Envelopes per second accepted from one origin domain, and the burst.
    #[serde(default = "default_origin_rate")]
    pub origin_rate: u32,
    #[serde(default = "default_origin_burst")]
    pub origin_burst: u32,
    /// Envelopes per delivery request at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Bytes per delivery request at most (a single larger envelope goes alone). Every
    /// server accepts 64 MiB; a peer answering `413` gets smaller batches.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,
    /// Bytes of blobs one peer domain may have brought that no envelope named yet (its
    /// transfers in progress); each blob at most `limits.max_attachment_size`.
    #[serde(default = "default_blob_bytes_per_peer")]
    pub blob_bytes_per_peer: ByteSize,
    /// The same, for all peer domains together (many domains cost an attacker little).
    #[serde(default = "default_blob_bytes_all_peers")]
    pub blob_bytes_all_peers: ByteSize,
}

fn default_blob_bytes_per_peer() -> ByteSize {
    ByteSize(2_000_000_000)
}

fn default_blob_bytes_all_peers() -> ByteSize {
    ByteSize(10_000_000_000)
}

fn default_batch_bytes() -> ByteSize {
    ByteSize(8_000_000)
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            peers: BTreeMap::new(),
            retry_first: default_retry_first(),
            retry_max: default_retry_max(),
            give_up_after: default_give_up(),
            blocked: Vec::new(),
            origin_rate: default_origin_rate(),
            origin_burst: default_origin_burst(),
            batch: default_batch(),
            batch_bytes: default_batch_bytes(),
            blob_bytes_per_peer: default_blob_bytes_per_peer(),
            blob_bytes_all_peers: default_blob_bytes_all_peers(),
        }
    }
}

impl FederationConfig {
    /// The endpoint published in DNS.
    pub fn endpoint(&self) -> Option<String> {
        self.public_url
            .clone()
            .or_else(|| self.listen.map(|l| format!("https://{l}")))
            .map(|u| u.trim_end_matches('/').to_owned())
    }

    /// Whether the administrator blocks mail from `sender`.
    pub fn blocks(&self, sender: &str) -> bool {
        let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
        self.blocked.iter().any(|b| {
            let b = b.trim().trim_start_matches('@');
            b.eq_ignore_ascii_case(sender) || b.eq_ignore_ascii_case(domain)
        })
    }
}

fn default_retry_first() -> Interval {
    Interval(60)
}

fn default_retry_max() -> Interval {
    Interval(4 * 3600)
}

/// The longest `federation.give_up_after`: a receiving server refuses envelopes older than
/// this and a day (`api::MAX_ENVELOPE_AGE`).
pub const MAX_GIVE_UP: u64 = 7 * 86_400;
/// Largest `limits.max_message_size`: an envelope alone, with its batch framing (at most
/// 1000 recipients of 320 bytes), stays within the 64 MiB every server accepts as a
/// delivery body (`letterme_protocol::federation::MIN_ACCEPTED_BODY`).
pub const MAX_NATIVE_MESSAGE: u64 = 60_000_000;

fn default_give_up() -> Interval {
    Interval(5 * 86_400)
}

fn default_origin_rate() -> u32 {
    10_000
}

fn default_origin_burst() -> u32 {
    50_000
}

fn default_batch() -> usize {
    256
}

/// A duration written as `90s`, `1m`, `4h`, `5d` or `1h 30m` (humantime), in seconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub u64);

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_duration(std::time::Duration::from_secs(self.0))
        )
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(|d| Self(d.as_secs()))
            .map_err(|e| {
                serde::de::Error::custom(format!("{s:?}: {e} (write e.g. 90s, 1m, 4h, 5d)"))
            })
    }
}

/// `[outbound]`: delivery to ordinary (non-letter.me) addresses over SMTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    #[serde(default)]
    pub mode: OutboundMode,
    /// TCP port of the MX hosts; 25 on the Internet (tests and private relays change it).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// How long one SMTP exchange may take before it counts as a temporary failure.
    #[serde(default = "default_smtp_timeout")]
    pub timeout: Interval,
    /// Addresses mail leaves from, published in SPF as `ip4:`/`ip6:`; absent: SPF names
    /// `mx` (mail leaves from the host that receives it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
    /// PEM certificates trusted, beside the public roots, when TLS is required (MTA-STS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_retry_first")]
    pub retry_first: Interval,
    #[serde(default = "default_retry_max")]
    pub retry_max: Interval,
    #[serde(default = "default_give_up")]
    pub give_up_after: Interval,
    /// Messages (counted per recipient) one user may send per minute, and the burst.
    #[serde(default = "default_user_per_minute")]
    pub user_per_minute: u32,
    #[serde(default = "default_user_burst")]
    pub user_burst: u32,
    /// Messages per minute to one destination domain from the whole server, and the burst.
    #[serde(default = "default_domain_per_minute")]
    pub domain_per_minute: u32,
    #[serde(default = "default_domain_burst")]
    pub domain_burst: u32,
    /// Recipients one user may reach outside letter.me per UTC day.
    #[serde(default = "default_daily_cap")]
    pub daily_cap: u32,
    /// Where a notice tells the recipient to get an address; default: the public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup_url: Option<String>,
    /// Publish (in `letterme dns`) and serve an MTA-STS policy in this mode: `enforce` or
    /// `testing`. Absent: none (the records are printed as comments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<String>,
    /// Where TLS reports go (`mailto:` or `https:`), published as TLS-RPT. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_rpt: Option<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            mode: OutboundMode::Off,
            port: default_smtp_port(),
            timeout: default_smtp_timeout(),
            ips: Vec::new(),
            ca_file: None,
            retry_first: default_retry_first(),
            retry_max: default_retry_max(),
            give_up_after: default_give_up(),
            user_per_minute: default_user_per_minute(),
            user_burst: default_user_burst(),
            domain_per_minute: default_domain_per_minute(),
            domain_burst: default_domain_burst(),
            daily_cap: default_daily_cap(),
            signup_url: None,
            mta_sts: None,
            tls_rpt: None,
        }
    }
}

fn default_smtp_port() -> u16 {
    25
}

fn default_smtp_timeout() -> Interval {
    Interval(120)
}

fn default_user_per_minute() -> u32 {
    30
}

fn default_user_burst() -> u32 {
    100
}

fn default_domain_per_minute() -> u32 {
    600
}

fn default_domain_burst() -> u32 {
    1000
}

fn default_daily_cap() -> u32 {
    1000
}

/// Whether the server runs for real (and so checks its DNS before it starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Production,
    Development,
}

/// A size written as `25MB`, `512KB`, `1GB`, `1MiB` or a plain number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 25MB"))?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" | "K" => 1000,
            "MB" | "M" => 1000 * 1000,
            "GB" | "G" => 1000 * 1000 * 1000,
            "KIB" => 1 << 10,
            "MIB" => 1 << 20,
            "GIB" => 1 << 30,
            _ => {
                return Err(format!(
                    "{s:?}: unknown size unit (use B, KB, MB, GB, KiB, MiB or GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000)] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("25MB").unwrap(), ByteSize(25_000_000));
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("512").unwrap(), ByteSize(512));
        assert!(ByteSize::parse("12XB").is_err());
        assert!(ByteSize::parse("MB").is_err());
        assert!(ByteSize::parse("99999999999999999999GB").is_err());
        assert_eq!(ByteSize(25_000_000).to_string(), "25MB");
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let mut c = Config::embedded_default();
        c.validate().unwrap();
        c.http.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("loopback"));
    }
}
