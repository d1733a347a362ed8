//! Base64 (RFC 4648 §4, padded) for bytes inside JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};

pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(s)
}

/// Decodes into a fixed-size array, failing on any other length.
pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    decode(s).ok()?.try_into().ok()
}

/// `#[serde(with = "b64::bytes")]` for `Vec<u8>` fields.
pub mod bytes {
    use super::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "b64::array")]` for `[u8; N]` fields.
pub mod array {
    use super::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::decode_array(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("expected base64 of {N} bytes")))
    }
}

/// `#[serde(with = "b64::optional")]` for `Option<Vec<u8>>` fields (absent or `null`: `None`).
pub mod optional {
    use super::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option, reason = "the signature serde's `with` calls")]
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&super::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?
            .map(|s| super::decode(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
