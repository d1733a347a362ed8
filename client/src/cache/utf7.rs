//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3), as IMAP4rev1 clients write them.
//!
//! The cache stores names in UTF-8 (what IMAP4rev2, RFC 9051 §5.1, puts on the wire); an
//! IMAP4rev1 session converts at its edge. The base64 is the base64 crate's, with the
//! alphabet RFC 3501 defines (`,` for `/`) and no padding.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const MUTF7: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// A UTF-8 name in modified UTF-7: printable ASCII as itself (`&` as `&-`), every other run
/// as UTF-16BE in modified base64 between `&` and `-`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if !run.is_empty() {
            let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&MUTF7.encode(bytes));
            out.push('-');
            run.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A modified UTF-7 name as UTF-8; `None` if it is not valid modified UTF-7 (8-bit bytes,
/// an unterminated or malformed `&...-` run, or one that encodes printable ASCII).
pub fn decode(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    // Right after a shifted run: another may not start here (no null shift, `&...-&...-`).
    let mut after_run = false;
    while let Some(at) = rest.find('&') {
        let (plain, tail) = rest.split_at(at);
        if after_run && plain.is_empty() && !tail.starts_with("&-") {
            return None;
        }
        if !plain.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        out.push_str(plain);
        let end = tail.find('-')?;
        let encoded = &tail[1..end];
        after_run = !encoded.is_empty();
        if encoded.is_empty() {
            out.push('&');
        } else {
            let bytes = MUTF7.decode(encoded).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            let text = String::from_utf16(&units).ok()?;
            // RFC 3501 §5.1.3: printable US-ASCII is never base64-encoded.
            if text.chars().any(|c| (' '..='~').contains(&c)) {
                return None;
            }
            out.push_str(&text);
        }
        rest = &tail[end + 1..];
    }
    if !rest.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3501_examples() {
        // RFC 3501 §5.1.3's example, and a name with an ampersand.
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some("~peter/mail/台北/日本語")
        );
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(decode("Tom &- Jerry").as_deref(), Some("Tom & Jerry"));
        for name in ["Entwürfe", "Отправленные", "a😀b", "plain", "&", "x&y/é"] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name), "{name}");
        }
    }

    #[test]
    fn refuses_what_is_not_modified_utf7() {
        for bad in [
            "&U,BTFw",
            "&Jjo!-",
            "caf\u{e9}",
            "&AGE-",
            "&A-",
            "&AOQ-&APY-",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
