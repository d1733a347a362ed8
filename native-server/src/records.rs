//! The DNS records a letter.me domain publishes (`letterme dns`), and the live check of
//! them (`letterme check`, and `letterme serve` at start in production).
//!
//! Mail DNS is spread over five RFCs; an operator should not have to read them. Each
//! record here carries why it exists, whether the server needs it, and how to tell the
//! published value is right — the same definition prints the zone line and judges what
//! DNS answers, so the two cannot drift apart.

use std::fmt::Write as _;

use crate::config::Config;
use crate::config::OutboundMode;
use letterme_protocol::b64;
use letterme_protocol::discovery::MailxRecord;

use crate::dns::{Answer, MailDns};

/// TTL printed on every record.
pub const TTL: u32 = 3600;

/// What a record is, for the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// MX at the domain pointing at this host.
    Mx { host: String },
    /// The domain's SPF policy (RFC 7208): exactly one, with these mechanisms, ending `-all`.
    Spf { mechanisms: Vec<String> },
    /// A DKIM key record (RFC 6376 §3.6.1) with this key type and public key.
    Dkim { k: &'static str, p: String },
    /// The DMARC policy (RFC 7489 §6.3): `p=reject` (or `quarantine`).
    Dmarc,
    /// letter.me discovery: a `_mailx` record with these values.
    Mailx(Vec<MailxRecord>),
    /// A TXT record beginning with this tag (MTA-STS, TLS-RPT).
    TxtPrefix(&'static str),
}

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Owner name, without the final dot.
    pub name: String,
    /// The record data as a zone file writes it after the type (`10 mx.example.` for MX; the
    /// text for TXT, unquoted).
    pub values: Vec<String>,
    pub kind: Kind,
    /// The server does not work right (or the domain can be spoofed) without it.
    pub required: bool,
    /// Printed as a comment only (an optional record not configured).
    pub commented: bool,
    /// One line saying what it is for.
    pub comment: String,
}

impl Rec {
    fn rtype(&self) -> &'static str {
        if matches!(self.kind, Kind::Mx { .. }) {
            "MX"
        } else {
            "TXT"
        }
    }

    /// The zone-file lines (TXT text split into strings of at most 255 bytes, RFC 1035 §3.3.14).
    pub fn lines(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|v| {
                let data = if self.rtype() == "TXT" {
                    quote_txt(v)
                } else {
                    v.clone()
                };
                let line = format!("{}. {TTL} IN {} {data}", self.name, self.rtype());
                if self.commented {
                    format!("; {line}")
                } else {
                    line
                }
            })
            .collect()
    }
}

fn quote_txt(v: &str) -> String {
    v.as_bytes()
        .chunks(255)
        .map(|c| {
            format!(
                "\"{}\"",
                String::from_utf8_lossy(c)
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the records are built from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Ed25519 DKIM public key (32 bytes) and RSA public key (SubjectPublicKeyInfo DER).
    pub dkim_ed25519: Vec<u8>,
    pub dkim_rsa: Vec<u8>,
    /// `_mailx` records (one per published domain key), when federation is on.
    pub mailx: Vec<(MailxRecord, Option<String>)>,
}

/// Every record, in the order `letterme dns` prints them.
pub fn expected(config: &Config, inputs: &Inputs) -> Vec<Rec> {
    let d = &config.domain;
    let host = config.mail_hostname();
    let sends = config.outbound.mode != OutboundMode::Off;
    let mut mechanisms: Vec<String> = config
        .outbound
        .ips
        .iter()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("ip4:{v4}"),
            std::net::IpAddr::V6(v6) => format!("ip6:{v6}"),
        })
        .collect();
    if mechanisms.is_empty() {
        mechanisms.push("mx".into());
    }
    let mut out = vec![
        Rec {
            name: d.clone(),
            values: vec![format!("10 {host}.")],
            kind: Kind::Mx { host: host.clone() },
            required: config.smtp.enabled,
            commented: false,
            comment: format!(
                "mail for {d} is received by {host} (it needs an A/AAAA record of its own)"
            ),
        },
        Rec {
            name: d.clone(),
            values: vec![format!("v=spf1 {} -all", mechanisms.join(" "))],
            kind: Kind::Spf {
                mechanisms: mechanisms.clone(),
            },
            required: true,
            commented: false,
            comment: if config.outbound.ips.is_empty() {
                "SPF (RFC 7208): mail from this domain leaves from its MX host and nowhere else".into()
            } else {
                "SPF (RFC 7208): mail from this domain leaves from these addresses and nowhere else".into()
            },
        },
        Rec {
            name: format!(
                "{}._domainkey.{d}",
                crate::outbound::SELECTOR_ED25519
            ),
            values: vec![format!(
                "v=DKIM1; k=ed25519; p={}",
                b64::encode(&inputs.dkim_ed25519)
            )],
            kind: Kind::Dkim {
                k: "ed25519",
                p: b64::encode(&inputs.dkim_ed25519),
            },
            required: sends,
            commented: false,
            comment: "DKIM key, Ed25519 (RFC 8463)".into(),
        },
        Rec {
            name: format!("{}._domainkey.{d}", crate::outbound::SELECTOR_RSA),
            values: vec![format!(
                "v=DKIM1; k=rsa; p={}",
                b64::encode(&inputs.dkim_rsa)
            )],
            kind: Kind::Dkim {
                k: "rsa",
                p: b64::encode(&inputs.dkim_rsa),
            },
            required: sends,
            commented: false,
            comment: "DKIM key, RSA-2048 (RFC 6376), for receivers without Ed25519".into(),
        },
        Rec {
            name: format!("_dmarc.{d}"),
            values: vec!["v=DMARC1; p=reject; adkim=s; aspf=s".into()],
            kind: Kind::Dmarc,
            required: true,
            commented: false,
            comment: "DMARC (RFC 7489): receivers reject mail claiming to be from this domain that fails SPF and DKIM".into(),
        },
    ];
    if !inputs.mailx.is_empty() {
        out.push(Rec {
            name: format!("_mailx.{d}"),
            values: inputs.mailx.iter().map(|(r, _)| r.to_txt()).collect(),
            kind: Kind::Mailx(inputs.mailx.iter().map(|(r, _)| r.clone()).collect()),
            required: true,
            commented: false,
            comment: {
                let notes: Vec<&str> = inputs.mailx.iter().filter_map(|(_, n)| n.as_deref()).collect();
                let mut c = "letter.me discovery: domain key, federation endpoint, TLS key (SHA-256 of its SPKI)".to_owned();
                for n in notes {
                    let _ = write!(c, "\n; {n}");
                }
                c
            },
        });
    }
    let policy = crate::outbound::mta_sts_policy(config);
    let id = policy.as_deref().map_or_else(
        || "YYYYMMDD".to_owned(),
        |p| {
            use sha2::Digest as _;
            letterme_protocol::codec::hex(&sha2::Sha256::digest(p.as_bytes())[..8])
        },
    );
    out.push(Rec {
        name: format!("_mta-sts.{d}"),
        values: vec![format!("v=STSv1; id={id}")],
        kind: Kind::TxtPrefix("v=STSv1"),
        required: false,
        commented: policy.is_none(),
        comment: if policy.is_some() {
            format!(
                "MTA-STS (RFC 8461): senders must use TLS; the policy is served at /.well-known/mta-sts.txt \
                 and must be reachable as https://mta-sts.{d}/.well-known/mta-sts.txt with a CA-issued certificate"
            )
        } else {
            "optional, MTA-STS (RFC 8461): set [outbound] mta_sts = \"enforce\" to publish a policy".into()
        },
    });
    let rua = config.outbound.tls_rpt.clone();
    out.push(Rec {
        name: format!("_smtp._tls.{d}"),
        values: vec![format!(
            "v=TLSRPTv1; rua={}",
            rua.as_deref().unwrap_or("mailto:tls-reports@example.com")
        )],
        kind: Kind::TxtPrefix("v=TLSRPTv1"),
        required: false,
        commented: rua.is_none(),
        comment: if rua.is_some() {
            "TLS-RPT (RFC 8460): where senders report TLS failures".into()
        } else {
            "optional, TLS-RPT (RFC 8460): set [outbound] tls_rpt = \"mailto:…\" to publish it"
                .into()
        },
    });
    out
}

/// The zone text `letterme dns` prints.
pub fn zone(config: &Config, records: &[Rec]) -> String {
    let mut s = format!("; DNS records for {} (letterme dns)\n", config.domain);
    for r in records {
        let _ = writeln!(s, "; {}", r.comment);
        for l in r.lines() {
            let _ = writeln!(s, "{l}");
        }
    }
    s
}

/// A checked record's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    Wrong,
    /// Optional and not published.
    Absent,
    /// DNS did not answer; cannot tell.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "missing",
            Self::Wrong => "wrong",
            Self::Absent => "absent",
            Self::Unknown => "unknown",
        }
    }
}

/// The verdict on one record.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub rtype: &'static str,
    pub status: Status,
    pub required: bool,
    /// What DNS answered, when it is wrong.
    pub found: Vec<String>,
    /// The exact fix: the zone line(s) to publish.
    pub fix: Vec<String>,
    pub why: String,
}

impl Verdict {
    /// Whether this verdict keeps `check` from passing.
    pub fn fails(&self) -> bool {
        self.required && !matches!(self.status, Status::Ok)
    }
}

fn tag<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Resolves each record live and judges it.
pub async fn check(dns: &dyn MailDns, records: &[Rec]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for r in records {
        let fix = {
            let mut l = r.lines();
            for x in &mut l {
                if let Some(s) = x.strip_prefix("; ") {
                    *x = s.to_owned();
                }
            }
            l
        };
        let mut v = Verdict {
            name: r.name.clone(),
            rtype: r.rtype(),
            status: Status::Ok,
            required: r.required && !r.commented,
            found: Vec::new(),
            fix,
            why: String::new(),
        };
        let answer = if let Kind::Mx { .. } = r.kind {
            dns.mx(&r.name).await.map(|a| match a {
                Answer::Found(v) => {
                    Answer::Found(v.into_iter().map(|(p, h)| format!("{p} {h}.")).collect())
                }
                Answer::NoRecords => Answer::NoRecords,
                Answer::NoDomain => Answer::NoDomain,
            })
        } else {
            dns.txt(&r.name).await
        };
        let found = match answer {
            Err(e) => {
                v.status = Status::Unknown;
                v.why = e.to_string();
                out.push(v);
                continue;
            }
            Ok(Answer::Found(f)) => f,
            Ok(_) => Vec::new(),
        };
        let (status, why) = judge(&r.kind, &found);
        v.status = if status == Status::Missing && r.commented {
            Status::Absent
        } else {
            status
        };
        v.why = why;
        if v.status == Status::Wrong {
            v.found = found;
        }
        out.push(v);
    }
    out
}

fn judge(kind: &Kind, found: &[String]) -> (Status, String) {
    let missing = |what: &str| (Status::Missing, format!("no {what} published"));
    match kind {
        Kind::Mx { host } => {
            if found.is_empty() {
                return missing("MX record");
            }
            if found.iter().any(|f| {
                f.split_whitespace()
                    .nth(1)
                    .is_some_and(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host))
            }) {
                (Status::Ok, String::new())
            } else {
                (Status::Wrong, format!("no MX points at {host}"))
            }
        }
        Kind::Spf { mechanisms } => {
            let spf: Vec<&String> = found
                .iter()
                .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
                .collect();
            match spf.as_slice() {
                [] => missing("SPF record (v=spf1)"),
                [one] => {
                    let terms: Vec<String> = one
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect();
                    let lacks: Vec<&String> = mechanisms
                        .iter()
                        .filter(|m| !terms.iter().any(|t| t == *m || t == &format!("+{m}")))
                        .collect();
                    if !lacks.is_empty() {
                        (
                            Status::Wrong,
                            format!(
                                "SPF does not allow {}",
                                lacks
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                        )
                    } else if terms.last().map(String::as_str) != Some("-all") {
                        (
                            Status::Wrong,
                            "SPF does not end in -all, so forged mail is not refused".into(),
                        )
                    } else {
                        (Status::Ok, String::new())
                    }
                }
                _ => (
                    Status::Wrong,
                    "more than one SPF record: receivers treat that as an error (RFC 7208 §4.5)"
                        .into(),
                ),
            }
        }
        Kind::Dkim { k, p } => {
            let Some(rec) = found.iter().find(|t| tag(t, "p").is_some()) else {
                return missing("DKIM key record");
            };
            let kt = tag(rec, "k").unwrap_or("rsa");
            let pub_key = strip_ws(tag(rec, "p").unwrap_or_default());
            if !kt.eq_ignore_ascii_case(k) {
                (Status::Wrong, format!("the key type is {kt}, not {k}"))
            } else if pub_key != *p {
                (
                    Status::Wrong,
                    "the published key is not this server's DKIM key: signatures will fail".into(),
                )
            } else {
                (Status::Ok, String::new())
            }
        }
        Kind::Dmarc => {
            let Some(rec) = found
                .iter()
                .find(|t| t.trim_start().starts_with("v=DMARC1"))
            else {
                return missing("DMARC record (v=DMARC1)");
            };
            match tag(rec, "p").map(str::to_ascii_lowercase).as_deref() {
                Some("reject" | "quarantine") => (Status::Ok, String::new()),
                Some(other) => (
                    Status::Wrong,
                    format!("p={other} lets forged mail through; use p=reject"),
                ),
                None => (Status::Wrong, "the DMARC record has no p= policy".into()),
            }
        }
        Kind::Mailx(want) => {
            if found.is_empty() {
                return missing("_mailx record");
            }
            let parsed: Vec<MailxRecord> = found
                .iter()
                .filter_map(|t| MailxRecord::parse(t).ok())
                .collect();
            if want.iter().all(|w| parsed.contains(w)) {
                (Status::Ok, String::new())
            } else {
                (Status::Wrong, "the published _mailx record differs from this server's key, endpoint or TLS key: peers will refuse it".into())
            }
        }
        Kind::TxtPrefix(prefix) => {
            if found.iter().any(|t| t.trim_start().starts_with(prefix)) {
                (Status::Ok, String::new())
            } else {
                missing(&format!("{prefix} record"))
            }
        }
    }
}

/// The report `letterme check` prints.
pub fn report(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    for v in verdicts {
        let _ = writeln!(s, "{:<8} {:<4} {}.", v.status.as_str(), v.rtype, v.name);
        if !v.why.is_empty() && v.status != Status::Ok {
            let _ = writeln!(s, "         {}", v.why);
        }
        for f in &v.found {
            let _ = writeln!(s, "         found: {f}");
        }
        if matches!(v.status, Status::Missing | Status::Wrong) {
            let verb = if v.status == Status::Missing {
                "add"
            } else {
                "replace it with"
            };
            for f in &v.fix {
                let _ = writeln!(s, "         fix: {verb}  {f}");
            }
        }
    }
    s
}

/// Whether the resolver validated DNSSEC for `domain`: one SOA query with the DO and AD
/// bits set (RFC 6840 §5.7) to the first configured nameserver (or the system's), read
/// back through hickory's message codec. A validating resolver sets AD on a secure answer.
pub async fn dnssec_status(nameservers: &[std::net::SocketAddr], domain: &str) -> String {
    use hickory_resolver::proto::op::{Edns, Message, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};
    let server = match nameservers.first() {
        Some(s) => *s,
        None => match crate::dns::resolver_config(&[]) {
            Ok(conf) => match conf.name_servers().first() {
                Some(ns) => std::net::SocketAddr::new(ns.ip, 53),
                None => return "not checked: no nameserver configured".into(),
            },
            Err(e) => return format!("not checked: {e}"),
        },
    };
    let Ok(name) = Name::from_ascii(format!("{}.", domain.trim_end_matches('.'))) else {
        return "not checked: the domain is not a DNS name".into();
    };
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.metadata.authentic_data = true;
    q.add_query(Query::query(name, RecordType::SOA));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    q.set_edns(edns);
    let Ok(bytes) = q.to_vec() else {
        return "not checked: cannot encode the query".into();
    };
    // Tests and local resolvers are on loopback; bind there, so nothing else is reached.
    let bind: std::net::SocketAddr = match (server.ip().is_loopback(), server.is_ipv4()) {
        (true, true) => ([127, 0, 0, 1], 0).into(),
        (true, false) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        (false, true) => ([0, 0, 0, 0], 0).into(),
        (false, false) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let answer = async {
        let sock = tokio::net::UdpSocket::bind(bind).await?;
        sock.send_to(&bytes, server).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            if from == server
                && let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == q.metadata.id
            {
                return Ok::<_, std::io::Error>(m);
            }
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), answer).await {
        Ok(Ok(m)) if m.metadata.authentic_data => {
            format!("validated (the resolver {server} set AD on the answer for {domain})")
        }
        Ok(Ok(_)) => format!(
            "not validated: the resolver {server} did not set AD for {domain} (the zone is unsigned, or the resolver does not validate)"
        ),
        Ok(Err(e)) => format!("not checked: {e}"),
        Err(_) => format!("not checked: {server} did not answer"),
    }
}
