//! Policy decisions for letter.me, kept apart from the mechanisms that gather evidence.
//!
//! The inbound adapter verifies SPF, DKIM and DMARC and reports the results here in RFC
//! vocabulary; [`decide`] alone turns them into accept / quarantine / reject / tempfail,
//! with the SMTP reply each carries. Pure functions over plain data: no I/O, no clock, so
//! every rule is tested by table. Leniency is named configuration ([`AllowEntry`]), never a
//! stray boolean.

use std::net::IpAddr;

pub use letterme_protocol::verdict::{AuthResult, DmarcMode};

/// A domain's published DMARC policy (RFC 7489 §6.3 `p=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

/// What the verifier found. Alignment (RFC 7489 §3.1, relaxed) is computed by the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub client_ip: IpAddr,
    /// RFC 5322.From domain; `None` when the message has no single From address.
    pub from_domain: Option<String>,
    pub spf_helo: AuthResult,
    pub spf_mail_from: AuthResult,
    /// The domain SPF was checked for (MAIL FROM domain, or HELO for a null sender).
    pub spf_domain: String,
    pub spf_aligned: bool,
    /// Each DKIM signature's result and `d=` domain.
    pub dkim: Vec<(AuthResult, String)>,
    /// Whether some passing DKIM signature's `d=` aligns with From.
    pub dkim_aligned: bool,
    /// DMARC record lookup: `None` when the domain publishes no record.
    pub dmarc_policy: Option<DmarcPolicy>,
    /// DMARC evaluation as the verifier reported it (TempError on DNS failure).
    pub dmarc: AuthResult,
}

/// A named exception for forwarders and lists that break DKIM: mail from these client
/// networks, or with a passing SPF for these domains, is accepted whatever DMARC says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub name: String,
    /// Client networks as (address, prefix length).
    pub networks: Vec<(IpAddr, u8)>,
    /// Domains whose SPF pass (MAIL FROM) vouches for the message.
    pub spf_domains: Vec<String>,
}

impl AllowEntry {
    fn matches(&self, e: &Evidence) -> bool {
        self.networks
            .iter()
            .any(|(net, len)| in_network(e.client_ip, *net, *len))
            || (e.spf_mail_from == AuthResult::Pass
                && self
                    .spf_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&e.spf_domain)))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// An SMTP reply: code, enhanced status code (RFC 3463), text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept {
        note: String,
    },
    /// Deliver to the recipient's Junk folder.
    Quarantine {
        note: String,
    },
    Reject(Reply),
    TempFail(Reply),
}

/// Decides from the evidence. RFC 7489 §6.6.2 for DMARC evaluation; RFC 7372 §3.2 for the
/// enhanced status codes of authentication failures.
pub fn decide(mode: DmarcMode, e: &Evidence, allow: &[AllowEntry]) -> Decision {
    let summary = summary(e);
    if mode == DmarcMode::Off {
        return Decision::Accept {
            note: format!("dmarc policy off; {summary}"),
        };
    }
    let Some(from) = &e.from_domain else {
        return Decision::Reject(Reply {
            code: 550,
            enhanced: "5.7.1",
            text: "the message must have exactly one From address (RFC 5322 §3.6)".into(),
        });
    };
    let aligned_pass = (e.spf_aligned && e.spf_mail_from == AuthResult::Pass)
        || (e.dkim_aligned && e.dkim.iter().any(|(r, _)| *r == AuthResult::Pass));
    if aligned_pass {
        return Decision::Accept {
            note: format!("dmarc pass for {from}; {summary}"),
        };
    }
    if let Some(entry) = allow.iter().find(|a| a.matches(e)) {
        return Decision::Accept {
            note: format!("allowed by policy entry {:?}; {summary}", entry.name),
        };
    }
    // No aligned pass. A DNS failure on the way may be why: ask the sender to retry.
    let temp = [e.dmarc, e.spf_mail_from]
        .into_iter()
        .chain(e.dkim.iter().map(|(r, _)| *r))
        .any(|r| r == AuthResult::TempError);
    if temp {
        return Decision::TempFail(Reply {
            code: 451,
            // RFC 3463 X.4.3: directory (DNS) server failure.
            enhanced: "4.4.3",
            text: format!(
                "temporary DNS failure while verifying {from}; try again later ({summary})"
            ),
        });
    }
    match mode {
        DmarcMode::Strict => Decision::Reject(reject_reply(from, e, &summary)),
        DmarcMode::Published => match e.dmarc_policy {
            Some(DmarcPolicy::Reject) => Decision::Reject(reject_reply(from, e, &summary)),
            Some(DmarcPolicy::Quarantine) => Decision::Quarantine {
                note: format!("dmarc fail for {from}, p=quarantine; {summary}"),
            },
            Some(DmarcPolicy::None) | None => Decision::Accept {
                note: format!("dmarc fail for {from}, but its policy is none; {summary}"),
            },
        },
        DmarcMode::Off => unreachable!("handled above"),
    }
}

fn reject_reply(from: &str, e: &Evidence, summary: &str) -> Reply {
    let dkim_pass_unaligned = e.dkim.iter().any(|(r, _)| *r == AuthResult::Pass) && !e.dkim_aligned;
    let spf_pass_unaligned = e.spf_mail_from == AuthResult::Pass && !e.spf_aligned;
    let (enhanced, why) =
        if dkim_pass_unaligned && !spf_pass_unaligned && e.spf_mail_from != AuthResult::Pass {
            // RFC 7372 §3.2: no valid author-matched DKIM signature.
            (
                "5.7.22",
                "the DKIM signature is valid but not for the From domain",
            )
        } else if e.dkim.is_empty()
            && matches!(e.spf_mail_from, AuthResult::Fail | AuthResult::SoftFail)
        {
            // RFC 7372 §3.2: SPF validation failed.
            ("5.7.23", "SPF failed and the message has no DKIM signature")
        } else {
            // RFC 7372 §3.2: multiple authentication checks failed.
            ("5.7.26", "no aligned SPF or DKIM pass")
        };
    Reply {
        code: 550,
        enhanced,
        text: format!("DMARC: {why} for {from} ({summary})"),
    }
}

fn summary(e: &Evidence) -> String {
    let dkim = if e.dkim.is_empty() {
        "none".to_owned()
    } else {
        e.dkim
            .iter()
            .map(|(r, d)| format!("{}@{d}", r.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "spf={} dkim={dkim} dmarc={}",
        e.spf_mail_from.as_str(),
        e.dmarc.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Evidence {
        Evidence {
            client_ip: "192.0.2.1".parse().unwrap(),
            from_domain: Some("sender.test".into()),
            spf_helo: AuthResult::None,
            spf_mail_from: AuthResult::None,
            spf_domain: "sender.test".into(),
            spf_aligned: true,
            dkim: vec![],
            dkim_aligned: false,
            dmarc_policy: None,
            dmarc: AuthResult::None,
        }
    }

    fn is_reject(d: &Decision, enhanced: &str) -> bool {
        matches!(d, Decision::Reject(r) if r.code == 550 && r.enhanced == enhanced)
    }

    #[test]
    fn strict_accepts_only_aligned_passes() {
        let mut e = base();
        e.spf_mail_from = AuthResult::Pass;
        e.dmarc_policy = Some(DmarcPolicy::None);
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[]),
            Decision::Accept { .. }
        ));

        let mut e = base();
        e.dkim = vec![(AuthResult::Pass, "sender.test".into())];
        e.dkim_aligned = true;
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[]),
            Decision::Accept { .. }
        ));

        // No SPF, no DKIM, no DMARC record: rejected in strict mode.
        assert!(is_reject(
            &decide(DmarcMode::Strict, &base(), &[]),
            "5.7.26"
        ));

        // SPF fail, no DKIM.
        let mut e = base();
        e.spf_mail_from = AuthResult::Fail;
        assert!(is_reject(&decide(DmarcMode::Strict, &e, &[]), "5.7.23"));

        // DKIM valid, but for another domain.
        let mut e = base();
        e.dkim = vec![(AuthResult::Pass, "other.test".into())];
        let d = decide(DmarcMode::Strict, &e, &[]);
        assert!(is_reject(&d, "5.7.22"), "{d:?}");

        // SPF pass but unaligned (look-alike From).
        let mut e = base();
        e.spf_mail_from = AuthResult::Pass;
        e.spf_aligned = false;
        e.from_domain = Some("xn--snder-3ya.test".into());
        assert!(is_reject(&decide(DmarcMode::Strict, &e, &[]), "5.7.26"));

        let mut e = base();
        e.from_domain = None;
        assert!(is_reject(&decide(DmarcMode::Strict, &e, &[]), "5.7.1"));
    }

    #[test]
    fn dns_failures_are_temporary() {
        let mut e = base();
        e.dmarc = AuthResult::TempError;
        let d = decide(DmarcMode::Strict, &e, &[]);
        assert!(
            matches!(&d, Decision::TempFail(r) if r.code == 451 && r.enhanced.starts_with("4.")),
            "{d:?}"
        );
        let mut e = base();
        e.dkim = vec![(AuthResult::TempError, "sender.test".into())];
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[]),
            Decision::TempFail(_)
        ));
        // A pass elsewhere still wins over a temporary failure.
        e.spf_mail_from = AuthResult::Pass;
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[]),
            Decision::Accept { .. }
        ));
    }

    #[test]
    fn published_follows_the_domain() {
        let mut e = base();
        e.spf_mail_from = AuthResult::Fail;
        e.dmarc = AuthResult::Fail;
        for (p, want) in [
            (None, "accept"),
            (Some(DmarcPolicy::None), "accept"),
            (Some(DmarcPolicy::Quarantine), "quarantine"),
            (Some(DmarcPolicy::Reject), "reject"),
        ] {
            e.dmarc_policy = p;
            let got = match decide(DmarcMode::Published, &e, &[]) {
                Decision::Accept { .. } => "accept",
                Decision::Quarantine { .. } => "quarantine",
                Decision::Reject(_) => "reject",
                Decision::TempFail(_) => "tempfail",
            };
            assert_eq!(got, want, "{p:?}");
        }
        assert!(matches!(
            decide(DmarcMode::Off, &e, &[]),
            Decision::Accept { .. }
        ));
    }

    #[test]
    fn named_allow_entries() {
        let mut e = base();
        e.spf_mail_from = AuthResult::Pass;
        e.spf_aligned = false;
        e.spf_domain = "lists.example".into();
        e.client_ip = "198.51.100.7".parse().unwrap();
        let by_spf = AllowEntry {
            name: "mailing list".into(),
            networks: vec![],
            spf_domains: vec!["lists.example".into()],
        };
        let by_net = AllowEntry {
            name: "forwarder".into(),
            networks: vec![("198.51.100.0".parse().unwrap(), 24)],
            spf_domains: vec![],
        };
        let other_net = AllowEntry {
            name: "other".into(),
            networks: vec![("203.0.113.0".parse().unwrap(), 24)],
            spf_domains: vec![],
        };
        assert!(
            matches!(decide(DmarcMode::Strict, &e, &[by_spf]), Decision::Accept { note } if note.contains("mailing list"))
        );
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[by_net]),
            Decision::Accept { .. }
        ));
        assert!(matches!(
            decide(DmarcMode::Strict, &e, &[other_net]),
            Decision::Reject(_)
        ));
    }
}
