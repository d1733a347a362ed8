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
}
