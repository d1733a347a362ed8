//! The vocabulary of a legacy message's verdict, shared by the inbound gateway that seals it
//! (`LegacyMail`), the policy that decides on it and the client that files it.
//!
//! Each value is parsed once into an enum; the wire strings are the RFC 8601 words.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An authentication result, RFC 8601 §2.7 vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }

    const ALL: [Self; 7] = [
        Self::Pass,
        Self::Fail,
        Self::SoftFail,
        Self::Neutral,
        Self::None,
        Self::TempError,
        Self::PermError,
    ];
}

impl fmt::Display for AuthResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthResult {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an authentication result (RFC 8601 §2.7)"))
    }
}

/// One DKIM signature's result and its `d=` domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimResult {
    pub result: AuthResult,
    pub domain: String,
}

/// Every DKIM signature's result. On the wire one string: `none` without signatures,
/// else `result(domain)` per signature joined by commas, e.g. `pass(a.example),fail(b.example)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DkimResults(pub Vec<DkimResult>);

impl fmt::Display for DkimResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}({})", r.result, r.domain)?;
        }
        Ok(())
    }
}

/// `word(` at the start of `rest`: the result and what follows the parenthesis.
fn dkim_entry_start(rest: &str) -> Option<(AuthResult, &str)> {
    AuthResult::ALL.into_iter().find_map(|r| {
        rest.strip_prefix(r.as_str())
            .and_then(|t| t.strip_prefix('('))
            .map(|t| (r, t))
    })
}

impl FromStr for DkimResults {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::default());
        }
        let bad = || format!("{s:?} is not a list of DKIM results");
        // `word(` starts an entry; the entry's domain runs to the `)` that is followed by
        // the end or by `,word(` of the next entry, so a domain may hold any character.
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (result, body) = dkim_entry_start(rest).ok_or_else(bad)?;
            let end = body
                .match_indices(')')
                .map(|(i, _)| i)
                .find(|&i| {
                    let after = &body[i + 1..];
                    after.is_empty() || after.strip_prefix(',').and_then(dkim_entry_start).is_some()
                })
                .ok_or_else(bad)?;
            out.push(DkimResult {
                result,
                domain: body[..end].to_owned(),
            });
            rest = &body[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
        Ok(Self(out))
    }
}

impl Serialize for DkimResults {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DkimResults {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where the gateway filed a legacy message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// INBOX.
    Accept,
    /// Junk.
    Quarantine,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Quarantine => "quarantine",
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[policy] dmarc`: how the inbound gateway applies DMARC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcMode {
    /// Accept only when DMARC passes (aligned SPF or aligned DKIM), whatever the domain publishes.
    #[default]
    Strict,
    /// Follow the domain's own `p=`.
    Published,
    /// Record results only.
    Off,
}

impl DmarcMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Published => "published",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for DmarcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DmarcMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "published" => Ok(Self::Published),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "policy.dmarc {other:?}: expected strict, published or off"
            )),
        }
    }
}

impl Serialize for DmarcMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DmarcMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkim_results_keep_their_string() {
        for s in [
            "none",
            "pass(a.example)",
            "pass(a.example),fail(b.example)",
            "temperror(odd),name),none(x)",
        ] {
            let parsed: DkimResults = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        let two: DkimResults = "pass(a.example),fail(b.example)".parse().unwrap();
        assert_eq!(two.0[1].result, AuthResult::Fail);
        assert_eq!(two.0[1].domain, "b.example");
        assert!("pass".parse::<DkimResults>().is_err());
        assert!("maybe(a.example)".parse::<DkimResults>().is_err());
    }
}
