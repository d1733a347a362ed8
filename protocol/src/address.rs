//! Mail addresses as letter.me identifies users.
//!
//! Addresses are compared and signed in one normal form (lower case, trimmed), so the same
//! user never has two spellings in a signature, a database key or a log label.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// RFC 5321 §4.5.3.1.1: local part at most 64 octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: domain at most 255 octets; 253 in presentation form.
pub const MAX_DOMAIN: usize = 253;

/// Why a string is not a usable address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("address {0:?} has no '@'")]
    MissingAt(String),
    #[error("address {0:?} has an empty or too long local part")]
    BadLocalPart(String),
    #[error("address {0:?} has an invalid domain")]
    BadDomain(String),
    #[error("address {0:?} contains characters letter.me does not accept")]
    BadCharacter(String),
}

/// A normalised `local@domain` address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    /// Parses and normalises an address (lower case). Accepts the dot-atom subset of
    /// RFC 5322 §3.4.1 for the local part and LDH labels for the domain.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let s = input.trim().to_ascii_lowercase();
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(AddressError::MissingAt(input.to_owned()));
        };
        if local.is_empty() || local.len() > MAX_LOCAL_PART {
            return Err(AddressError::BadLocalPart(input.to_owned()));
        }
        // RFC 5322 §3.2.3 atext, dot-atom: no leading, trailing or doubled dots.
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        if local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local.chars().all(|c| c == '.' || atext(c))
        {
            return Err(AddressError::BadCharacter(input.to_owned()));
        }
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain(input.to_owned()));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(l, _)| l)
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// LDH labels of 1..=63 octets, total at most 253 (RFC 1035 §2.3.1, RFC 5890 A-labels).
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_validates() {
        let a = Address::parse(" Alice.B+tag@Example.COM ").unwrap();
        assert_eq!(a.as_str(), "alice.b+tag@example.com");
        assert_eq!(a.local_part(), "alice.b+tag");
        assert_eq!(a.domain(), "example.com");
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            ".a@x.com",
            "a..b@x.com",
            "a b@x.com",
            "a@-x.com",
            "a@x..com",
            "a@x_y.com",
            "\"q\"@x.com",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@x.com", "a".repeat(65));
        assert!(Address::parse(&long_local).is_err());
    }
}
