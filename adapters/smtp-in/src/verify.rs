//! Verification: SPF (HELO and MAIL FROM), every DKIM signature, DMARC, and an RFC 8601
//! Authentication-Results, through `mail-auth` over a hickory resolver pointed at the
//! configured nameservers. Reports evidence in RFC vocabulary; never decides
//! (`letterme-policy` does).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use letterme_policy::{AuthResult, DmarcPolicy, Evidence};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};

/// DNS settings for verification.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Empty: the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Retries after the first try.
    pub attempts: usize,
}

/// Builds the authenticator. Answers are cached within their TTL (at most 5 minutes);
/// failures (timeouts, SERVFAIL) are never cached, so a sender's retry asks again.
pub fn authenticator(dns: &DnsSettings) -> Result<MessageAuthenticator, String> {
    let mut opts = letterme_server::dns::resolver_opts(dns.timeout, dns.attempts, 4096);
    opts.positive_max_ttl = Some(Duration::from_mins(5));
    opts.negative_max_ttl = Some(Duration::from_mins(1));
    opts.num_concurrent_reqs = 1;
    MessageAuthenticator::new(
        letterme_server::dns::resolver_config(&dns.nameservers)?,
        opts,
    )
    .map_err(|e| e.to_string())
}

/// What the verifier found, plus the header to prepend.
#[derive(Debug)]
pub struct Verified {
    pub evidence: Evidence,
    /// Authentication-Results field value (after "Authentication-Results: ").
    pub authentication_results: String,
}

/// Verifies one message from `ip`, said `helo`, with reverse-path `mail_from`.
pub async fn verify(
    auth: &MessageAuthenticator,
    hostname: &str,
    raw: &[u8],
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
) -> Verified {
    let spf_helo = auth
        .verify_spf(SpfParameters::verify_ehlo(ip, helo, hostname))
        .await;
    let spf_mail = auth
        .verify_spf(SpfParameters::verify_mail_from(
            ip, helo, hostname, mail_from,
        ))
        .await;
    let spf_domain = mail_from
        .rsplit_once('@')
        .map_or(helo, |(_, d)| d)
        .to_ascii_lowercase();
    let from_domain = single_from_domain(raw);

    let Some(msg) = AuthenticatedMessage::parse(raw) else {
        // No header at all: nothing to check DKIM or DMARC against.
        let ar = AuthenticationResults::new(hostname)
            .with_spf_ehlo_result(&spf_helo, ip, helo)
            .with_spf_mailfrom_result(&spf_mail, ip, mail_from, helo);
        return Verified {
            authentication_results: header_value(&ar.to_header()),
            evidence: Evidence {
                client_ip: ip,
                from_domain: None,
                spf_helo: spf(spf_helo.result()),
                spf_mail_from: spf(spf_mail.result()),
                spf_domain,
                spf_aligned: false,
                dkim: vec![],
                dkim_aligned: false,
                dmarc_policy: None,
                dmarc: AuthResult::None,
            },
        };
    };
    let dkim = auth.verify_dkim(&msg).await;
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(&msg, &dkim, &spf_domain, &spf_mail))
        .await;

    let dkim_results: Vec<(AuthResult, String)> = dkim
        .iter()
        .map(|o| {
            let domain = o
                .signature()
                .map(|s| s.d.to_ascii_lowercase())
                .unwrap_or_default();
            (dkim_result(o.result()), domain)
        })
        .collect();
    let record = dmarc.dmarc_record().is_some();
    let temp = matches!(dmarc.spf_result(), DmarcResult::TempError(_))
        || matches!(dmarc.dkim_result(), DmarcResult::TempError(_));
    let (spf_aligned, dkim_aligned) = if record {
        // RFC 7489 §3.1 with the domain's own adkim/aspf, as mail-auth evaluated it.
        (
            *dmarc.spf_result() == DmarcResult::Pass,
            *dmarc.dkim_result() == DmarcResult::Pass,
        )
    } else {
        // No record: relaxed alignment by organizational domain (public suffix list).
        let from = from_domain.as_deref().unwrap_or_default();
        (
            relaxed_aligned(&spf_domain, from),
            dkim_results
                .iter()
                .any(|(r, d)| *r == AuthResult::Pass && relaxed_aligned(d, from)),
        )
    };
    let dmarc_result = if temp {
        AuthResult::TempError
    } else if !record {
        AuthResult::None
    } else if dmarc.result() == DmarcResult::Pass {
        AuthResult::Pass
    } else {
        AuthResult::Fail
    };
    let policy = record.then(|| match dmarc.policy() {
        mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
        mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
        mail_auth::dmarc::Policy::None | mail_auth::dmarc::Policy::Unspecified => DmarcPolicy::None,
    });
    let mut ar = AuthenticationResults::new(hostname)
        .with_spf_ehlo_result(&spf_helo, ip, helo)
        .with_spf_mailfrom_result(&spf_mail, ip, mail_from, helo);
    if !dkim.is_empty() {
        ar = ar.with_dkim_results(&dkim, msg.from());
    }
    ar = ar.with_dmarc_result(&dmarc);
    let mut value = header_value(&ar.to_header());
    if dkim.is_empty() {
        value.push_str(";\r\n\tdkim=none");
    }
    Verified {
        authentication_results: value,
        evidence: Evidence {
            client_ip: ip,
            from_domain,
            spf_helo: spf(spf_helo.result()),
            spf_mail_from: spf(spf_mail.result()),
            spf_domain,
            spf_aligned,
            dkim: dkim_results,
            dkim_aligned,
            dmarc_policy: policy,
            dmarc: dmarc_result,
        },
    }
}

fn header_value(h: &str) -> String {
    h.strip_prefix("Authentication-Results: ")
        .unwrap_or(h)
        .trim_end_matches("\r\n")
        .to_owned()
}

/// Why a message's header section cannot be trusted to mean one thing, if it cannot
/// (issue 15.9): a NUL in it; not exactly one From field with exactly one address; an
/// address that is not a plain `local@domain` (no control characters, a valid domain);
/// or mail-auth (which checks DKIM and DMARC) and mail-parser (which finds the author
/// and the Subject the user sees) reading the section differently — other fields, another
/// end, other From addresses. DMARC is only as good as the From it judged being the From
/// the reader sees.
pub fn header_defect(raw: &[u8]) -> Option<&'static str> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    if raw[..end].contains(&0) {
        return Some("the header section contains a NUL byte");
    }
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(raw) else {
        return Some("the message has no header section");
    };
    let mut froms = parsed
        .headers()
        .iter()
        .filter(|h| h.name == mail_parser::HeaderName::From);
    let (Some(from), None) = (froms.next(), froms.next()) else {
        return Some("the message must have exactly one From field");
    };
    let address = from.value().as_address().and_then(|list| {
        let mut all = list.iter();
        match (all.next(), all.next()) {
            (Some(one), None) => one.address(),
            _ => None,
        }
    });
    let Some(address) = address else {
        return Some("the From field must hold exactly one address");
    };
    let plain = address.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !address.chars().any(char::is_control) && plain_domain(domain)
    });
    if !plain {
        return Some("the From address is not a valid address");
    }
    let Some(auth) = AuthenticatedMessage::parse(raw) else {
        return Some("the header section does not parse");
    };
    // mail-auth lower-cases addresses (Unicode lower case).
    let same_from =
        matches!(auth.from.as_slice(), [f] if f.to_lowercase() == address.to_lowercase());
    // Where each says the last field ends (mail-auth's fields are slices of `raw`).
    let auth_end = auth
        .headers
        .last()
        .map(|(_, v)| v.as_ptr() as usize - raw.as_ptr() as usize + v.len());
    let parser_end = parsed.headers().last().map(|h| h.offset_end as usize);
    if !same_from || auth.headers.len() != parsed.headers().len() || auth_end != parser_end {
        return Some("the header section reads differently to different parsers");
    }
    None
}

/// A domain of LDH labels, where a label may also hold non-ASCII characters (a U-label,
/// RFC 6531 mail), at most 63 bytes each and 253 in all.
fn plain_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// The domain of the message's single From address (RFC 5322 §3.6.2 requires one From
/// field; DMARC needs exactly one author domain, RFC 7489 §6.6.1).
fn single_from_domain(raw: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(raw)?;
    let froms: Vec<_> = parsed
        .headers()
        .iter()
        .filter(|h| h.name == mail_parser::HeaderName::From)
        .collect();
    if froms.len() != 1 {
        return None;
    }
    let list = froms[0].value().as_address()?;
    let mut addrs = list.iter();
    let first = addrs.next()?;
    if addrs.next().is_some() {
        return None;
    }
    let (_, domain) = first.address()?.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_lowercase())
}

/// RFC 7489 §3.1.1 relaxed alignment: same organizational domain.
fn relaxed_aligned(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    match (psl::domain_str(&a), psl::domain_str(&b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn spf(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_author() {
        assert!(relaxed_aligned("mail.sender.test", "sender.test"));
        assert!(relaxed_aligned("a.example.co.uk", "b.example.co.uk"));
        assert!(!relaxed_aligned("example.co.uk", "other.co.uk"));
        assert!(!relaxed_aligned("sender.test", "evil.test"));
        assert_eq!(
            single_from_domain(b"From: A <a@Sender.TEST>\r\n\r\nx").as_deref(),
            Some("sender.test")
        );
        assert_eq!(
            single_from_domain(b"From: \"a@sender.test\" <x@evil.test>\r\n\r\nx").as_deref(),
            Some("evil.test")
        );
        assert_eq!(
            single_from_domain(b"From: a@s.test, b@t.test\r\n\r\nx"),
            None
        );
        assert_eq!(
            single_from_domain(b"From: a@s.test\r\nFrom: b@s.test\r\n\r\nx"),
            None
        );
        assert_eq!(single_from_domain(b"Subject: x\r\n\r\nx"), None);
    }

    /// Issue 15.9: a header section that could mean two things to two readers is refused;
    /// ordinary ones, folded, encoded and with display names, are not.
    #[test]
    fn ambiguous_or_malformed_header_sections_are_refused() {
        for good in [
            &b"From: a@s.test\r\nSubject: hi\r\n\r\nbody\r\n"[..],
            b"From: =?utf-8?q?J=C3=B6rg?= <Joerg@Sender.TEST>\r\nTo: b@x.test\r\n\r\nx",
            "From: J\u{f6}rg <j\u{f6}rg@b\u{fc}cher.test>\r\n\r\nx".as_bytes(),
            "From: <J\u{d6}RG@B\u{dc}CHER.test>\r\n\r\nx".as_bytes(),
            b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom:\r\n \"Last, First\" <f@s.test>\r\nSubject: folded\r\n  subject\r\n\r\nbody",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=s.test; s=x;\r\n\th=from; bh=abc=; b=def=\r\nFrom: a@s.test\r\n\r\n",
        ] {
            assert_eq!(header_defect(good), None, "{}", String::from_utf8_lossy(good));
        }
        for (bad, why) in [
            (&b"From: a@s.test\r\nSubject: h\0i\r\n\r\nx"[..], "NUL"),
            (b"From: a@good.test\0@evil.test\r\n\r\nx", "NUL"),
            (b"Subject: no author\r\n\r\nx", "exactly one From field"),
            (
                b"From: a@s.test\r\nFrom: b@evil.test\r\n\r\nx",
                "exactly one From field",
            ),
            (
                b"From: a@s.test, b@evil.test\r\n\r\nx",
                "exactly one address",
            ),
            (b"From: Undisclosed:;\r\n\r\nx", "exactly one address"),
            (b"From: a@evil_test!\r\n\r\nx", "not a valid address"),
            // A line that is no field: one parser skips it, the other ends the section.
            (
                b"From: a@s.test\r\nX bad line\r\nSubject: hi\r\n\r\nx",
                "reads differently",
            ),
        ] {
            let found = header_defect(bad);
            assert!(
                found.is_some_and(|f| f.contains(why)),
                "{}: {found:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
