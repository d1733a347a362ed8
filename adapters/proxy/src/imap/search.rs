//! Evaluation of IMAP SEARCH criteria (RFC 3501 §6.4.4) against stored messages.
//!
//! The parser (imap-codec) turns the client's criteria into a [`SearchKey`] tree; this module
//! decides which messages of a mailbox satisfy it. Keys on flags, sizes, dates and numbers only
//! use the [`Candidate`] metadata, so a message is parsed (with mail-parser, at most once) only
//! when a key actually needs its headers or body text.

use std::fmt::Write as _;
use std::{borrow::Cow, cell::OnceCell};

use chrono::{DateTime, NaiveDate};
use imap_codec::imap_types::{
    core::AString,
    search::SearchKey,
    sequence::{SeqOrUid, Sequence, SequenceSet},
};
use letterme_client::cache::Content;
use mail_parser::{
    HeaderValue, Message, MessageParser, PartType, decoders::html::html_to_text,
    parsers::MessageStream,
};

/// Criteria nested deeper than this match nothing (imap-codec already limits nesting on input;
/// this guards keys built elsewhere against unbounded recursion).
const MAX_DEPTH: usize = 64;

/// One message as SEARCH sees it.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    /// Message sequence number (1-based).
    pub seq: u32,
    pub uid: u32,
    /// System flags and keywords as stored, e.g. `\Seen`, `$Forwarded`; compared case-insensitively.
    pub flags: &'a [String],
    pub recent: bool,
    /// Unix seconds (UTC).
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u32,
    /// The message's MODSEQ (RFC 7162 §3.1.5).
    pub modseq: u64,
    /// The full RFC 5322 message.
    pub raw: &'a [u8],
}

impl std::fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the message itself.
        f.debug_struct("Candidate")
            .field("seq", &self.seq)
            .field("uid", &self.uid)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The mailbox-wide numbers needed to resolve `*` in sequence sets (RFC 3501 §9, `seq-number`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_seq: u32,
    pub max_uid: u32,
}

/// Returns `(seq, uid)` of the candidates matching `key`, in candidate order.
pub fn search<'a>(
    key: &SearchKey<'_>,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    bounds: Bounds,
) -> Vec<(u32, u32)> {
    search_all(std::slice::from_ref(key), candidates, bounds)
}

/// Like [`search`] for the top-level criteria list of a SEARCH command (`CommandBody::Search`'s
/// `criteria.as_ref()`), whose keys are ANDed (RFC 3501 §6.4.4).
pub fn search_all<'a>(
    criteria: &[SearchKey<'_>],
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    bounds: Bounds,
) -> Vec<(u32, u32)> {
    if !criteria.iter().all(|key| within_depth(key, MAX_DEPTH)) {
        return Vec::new();
    }
    candidates
        .into_iter()
        .filter(|cand| {
            let eval = Eval {
                cand,
                bounds: &bounds,
                msg: OnceCell::new(),
                body: OnceCell::new(),
            };
            criteria.iter().all(|key| eval.matches(key))
        })
        .map(|cand| (cand.seq, cand.uid))
        .collect()
}

/// Whether any key is MODSEQ (RFC 7162 §3.1.5).
pub fn uses_modseq(criteria: &[SearchKey<'_>]) -> bool {
    fn uses(key: &SearchKey<'_>, budget: usize) -> bool {
        let Some(budget) = budget.checked_sub(1) else {
            return false;
        };
        match key {
            SearchKey::ModSequence { .. } => true,
            SearchKey::And(keys) => keys.as_ref().iter().any(|k| uses(k, budget)),
            SearchKey::Not(k) => uses(k, budget),
            SearchKey::Or(a, b) => uses(a, budget) || uses(b, budget),
            _ => false,
        }
    }
    criteria.iter().any(|k| uses(k, MAX_DEPTH))
}

/// How much of each message the keys read: the header section (addresses, Subject, Date:,
/// HEADER) or the whole message (BODY, TEXT, which read attachments too); flag-only and
/// number-only searches never decrypt content.
pub fn content_needed(criteria: &[SearchKey<'_>]) -> Content {
    fn needs(key: &SearchKey<'_>, budget: usize) -> Content {
        let Some(budget) = budget.checked_sub(1) else {
            return Content::None;
        };
        match key {
            SearchKey::And(keys) => keys
                .as_ref()
                .iter()
                .map(|k| needs(k, budget))
                .max()
                .unwrap_or(Content::None),
            SearchKey::Not(k) => needs(k, budget),
            SearchKey::Or(a, b) => needs(a, budget).max(needs(b, budget)),
            SearchKey::Bcc(_)
            | SearchKey::Cc(_)
            | SearchKey::From(_)
            | SearchKey::Subject(_)
            | SearchKey::To(_)
            | SearchKey::Header(..)
            | SearchKey::SentBefore(_)
            | SearchKey::SentOn(_)
            | SearchKey::SentSince(_) => Content::Head,
            SearchKey::Body(_) | SearchKey::Text(_) => Content::Whole,
            _ => Content::None,
        }
    }
    criteria
        .iter()
        .map(|k| needs(k, MAX_DEPTH))
        .max()
        .unwrap_or(Content::None)
}

fn within_depth(key: &SearchKey<'_>, budget: usize) -> bool {
    let Some(budget) = budget.checked_sub(1) else {
        return false;
    };
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| within_depth(k, budget)),
        SearchKey::Not(k) => within_depth(k, budget),
        SearchKey::Or(a, b) => within_depth(a, budget) && within_depth(b, budget),
        _ => true,
    }
}

/// One candidate under evaluation, with its lazily parsed message.
struct Eval<'c, 'a> {
    cand: &'c Candidate<'a>,
    bounds: &'c Bounds,
    /// `None` inside when mail-parser cannot make a message of the bytes.
    msg: OnceCell<Option<Message<'a>>>,
    /// Lower-cased decoded body text, see [`body_text`].
    body: OnceCell<String>,
}

impl Eval<'_, '_> {
    fn matches(&self, key: &SearchKey<'_>) -> bool {
        let c = self.cand;
        match key {
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Not(k) => !self.matches(k),
            // RFC 7162 §3.1.5: MODSEQ at or above the value; no per-flag MODSEQs are kept, so
            // the entry name and type are answered by the message's own MODSEQ.
            SearchKey::ModSequence { modseq, .. } => c.modseq >= *modseq,
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::All => true,
            SearchKey::SequenceSet(set) => in_set(set, c.seq, self.bounds.max_seq),
            SearchKey::Uid(set) => in_set(set, c.uid, self.bounds.max_uid),

            SearchKey::Answered => self.flag("\\Answered"),
            SearchKey::Deleted => self.flag("\\Deleted"),
            SearchKey::Draft => self.flag("\\Draft"),
            SearchKey::Flagged => self.flag("\\Flagged"),
            SearchKey::Seen => self.flag("\\Seen"),
            SearchKey::Keyword(k) => self.flag(k.inner()),
            SearchKey::Unanswered => !self.flag("\\Answered"),
            SearchKey::Undeleted => !self.flag("\\Deleted"),
            SearchKey::Undraft => !self.flag("\\Draft"),
            SearchKey::Unflagged => !self.flag("\\Flagged"),
            SearchKey::Unseen => !self.flag("\\Seen"),
            SearchKey::Unkeyword(k) => !self.flag(k.inner()),
            SearchKey::Recent => c.recent,
            SearchKey::New => c.recent && !self.flag("\\Seen"),
            SearchKey::Old => !c.recent,

            SearchKey::Larger(n) => c.size > *n,
            SearchKey::Smaller(n) => c.size < *n,

            SearchKey::Before(d) => self.internal_date().is_some_and(|x| x < *d.as_ref()),
            SearchKey::On(d) => self.internal_date().is_some_and(|x| x == *d.as_ref()),
            SearchKey::Since(d) => self.internal_date().is_some_and(|x| x >= *d.as_ref()),
            SearchKey::SentBefore(d) => self.sent_date().is_some_and(|x| x < *d.as_ref()),
            SearchKey::SentOn(d) => self.sent_date().is_some_and(|x| x == *d.as_ref()),
            SearchKey::SentSince(d) => self.sent_date().is_some_and(|x| x >= *d.as_ref()),

            SearchKey::Bcc(s) => self.header_contains("Bcc", s),
            SearchKey::Cc(s) => self.header_contains("Cc", s),
            SearchKey::From(s) => self.header_contains("From", s),
            SearchKey::Subject(s) => self.header_contains("Subject", s),
            SearchKey::To(s) => self.header_contains("To", s),
            SearchKey::Header(name, s) => {
                self.header_contains(&String::from_utf8_lossy(name.as_ref()), s)
            }
            SearchKey::Body(s) => self.body().contains(&lower(s)),
            SearchKey::Text(s) => self.text_contains(s),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.cand.flags.iter().any(|f| f.eq_ignore_ascii_case(name))
    }

    /// RFC 3501 §6.4.4: BEFORE/ON/SINCE use the internal date "disregarding time and timezone";
    /// internal dates are kept in UTC, so this is the UTC calendar date.
    fn internal_date(&self) -> Option<NaiveDate> {
        DateTime::from_timestamp(self.cand.internal_date, 0).map(|d| d.date_naive())
    }

    /// The calendar date written in the Date: header, its time and zone disregarded
    /// (RFC 3501 §6.4.4 SENT*). Without a usable Date: header, the internal date stands in.
    fn sent_date(&self) -> Option<NaiveDate> {
        self.msg()
            .and_then(|m| m.date())
            .filter(|d| d.is_valid())
            .and_then(|d| NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into()))
            .or_else(|| self.internal_date())
    }

    /// Whether a `name` field exists whose value contains `needle`, either as written or with
    /// RFC 2047 encoded-words decoded; an empty needle matches any such field (RFC 3501 §6.4.4
    /// HEADER). FROM, TO, CC, BCC and SUBJECT search the same field text.
    fn header_contains(&self, name: &str, needle: &AString<'_>) -> bool {
        let needle = lower(needle);
        let address = ["From", "To", "Cc", "Bcc"]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name));
        self.msg().is_some_and(|m| {
            fields(m)
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, raw)| {
                    values(raw).iter().any(|v| contains(v, &needle))
                        // An address as ENVELOPE reads it, comments and route aside.
                        || (address
                            && super::mime::address_texts(raw)
                                .iter()
                                .any(|v| contains(v, &needle)))
                })
        })
    }

    /// TEXT: any header field name or value, or the body (RFC 3501 §6.4.4).
    fn text_contains(&self, needle: &AString<'_>) -> bool {
        let needle = lower(needle);
        self.msg().is_some_and(|m| {
            fields(m).any(|(name, raw)| {
                contains(name, &needle) || values(raw).iter().any(|v| contains(v, &needle))
            })
        }) || self.body().contains(&needle)
    }

    fn msg(&self) -> Option<&Message<'_>> {
        self.msg
            .get_or_init(|| MessageParser::new().parse(self.cand.raw))
            .as_ref()
    }

    fn body(&self) -> &str {
        self.body.get_or_init(|| {
            let mut text = String::new();
            if let Some(m) = self.msg() {
                body_text(m, &mut text);
            }
            text.to_lowercase()
        })
    }
}

/// A sequence set as sorted, merged ranges, `*` being `largest`: membership in O(log n),
/// however many ranges a client sends.
#[derive(Debug)]
pub struct SetIndex(Vec<(u32, u32)>);

impl SetIndex {
    pub fn new(set: &SequenceSet, largest: u32) -> Self {
        let resolve = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => largest,
        };
        let mut ranges: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|seq| match seq {
                Sequence::Single(s) => (resolve(s), resolve(s)),
                Sequence::Range(a, b) => {
                    let (a, b) = (resolve(a), resolve(b));
                    (a.min(b), a.max(b))
                }
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self(merged)
    }

    pub fn contains(&self, n: u32) -> bool {
        let i = self.0.partition_point(|r| r.1 < n);
        self.0.get(i).is_some_and(|r| r.0 <= n)
    }
}

/// Membership in a sequence set, `*` being `largest`; a range may be written in either order
/// (RFC 3501 §9, `seq-range`), so `n:*` with n > largest still matches the largest.
pub fn in_set(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let resolve = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => resolve(s) == n,
        Sequence::Range(a, b) => {
            let (a, b) = (resolve(a), resolve(b));
            (a.min(b)..=a.max(b)).contains(&n)
        }
    })
}

/// The header fields of `msg` as `(name, raw value)`.
fn fields<'m>(msg: &'m Message<'_>) -> impl Iterator<Item = (&'m str, &'m [u8])> {
    msg.headers().iter().map(|h| {
        let raw = msg
            .raw_message
            .get(h.offset_start as usize..h.offset_end as usize);
        (h.name(), raw.unwrap_or_default())
    })
}

/// A raw field value as written, and unfolded with RFC 2047 encoded-words decoded.
fn values(raw: &[u8]) -> [Cow<'_, str>; 2] {
    let decoded = match MessageStream::new(raw).parse_unstructured() {
        HeaderValue::Text(text) => text,
        _ => Cow::Borrowed(""),
    };
    [String::from_utf8_lossy(raw), decoded]
}

/// Appends the decoded text of `msg`'s text parts (HTML rendered as text) and of attached
/// messages, headers included. Other media types are skipped, as RFC 3501 §6.4.4 allows.
fn body_text(msg: &Message<'_>, out: &mut String) {
    for part in &msg.parts {
        match &part.body {
            PartType::Text(text) => out.push_str(text),
            PartType::Html(html) => out.push_str(&html_to_text(html)),
            PartType::Message(inner) => {
                for (name, raw) in fields(inner) {
                    let [_, value] = values(raw);
                    let _ = writeln!(out, "{name}: {value}");
                }
                body_text(inner, out);
            }
            PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Multipart(_) => continue,
        }
        // Keep matches from spanning two parts.
        out.push('\n');
    }
}

/// Search strings match case-insensitively (RFC 3501 §6.4.4).
fn lower(s: &AString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).to_lowercase()
}

fn contains(haystack: &str, lower_needle: &str) -> bool {
    haystack.to_lowercase().contains(lower_needle)
}

#[cfg(test)]
mod tests {
    use imap_codec::{
        CommandCodec,
        decode::Decoder,
        imap_types::{command::CommandBody, core::Vec1},
    };

    use super::*;

    struct Fixture {
        flags: Vec<String>,
        recent: bool,
        internal: &'static str,
        size: u32,
        raw: &'static [u8],
    }

    const UIDS: [u32; 5] = [10, 11, 12, 20, 21];

    fn fixtures() -> Vec<Fixture> {
        fn f(
            flags: &[&str],
            recent: bool,
            internal: &'static str,
            size: u32,
            raw: &'static [u8],
        ) -> Fixture {
            let flags = flags.iter().map(std::string::ToString::to_string).collect();
            Fixture {
                flags,
                recent,
                internal,
                size,
                raw,
            }
        }
        vec![
            f(
                &["\\Seen"],
                false,
                "2024-01-01T08:00:00Z",
                500,
                b"From: Alice <alice@example.com>\r\n\
                  To: bob@example.org\r\n\
                  Subject: Hello world\r\n\
                  Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
                  Message-ID: <x@y>\r\n\
                  \r\n\
                  hello there\r\n",
            ),
            f(
                &["\\Flagged", "$Forwarded"],
                true,
                "2024-01-03T04:30:00Z",
                2000,
                b"From: Bob <bob@example.org>\r\n\
                  To: alice@example.com\r\n\
                  Cc: Carol <carol@example.net>\r\n\
                  Subject: hi again\r\n\
                  Date: Tue, 2 Jan 2024 23:30:00 -0500\r\n\
                  Message-ID: <other@z>\r\n\
                  MIME-Version: 1.0\r\n\
                  Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
                  \r\n\
                  --b1\r\n\
                  Content-Type: text/plain; charset=utf-8\r\n\
                  Content-Transfer-Encoding: quoted-printable\r\n\
                  \r\n\
                  Caf=C3=A9 menu\r\n\
                  --b1\r\n\
                  Content-Type: text/html; charset=utf-8\r\n\
                  \r\n\
                  <p>Caf&eacute; <b>specials</b></p>\r\n\
                  --b1--\r\n",
            ),
            f(
                &["\\Deleted", "\\Answered"],
                false,
                "2023-12-31T23:59:59Z",
                50,
                b"From: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.de>\r\n\
                  To: alice@example.com\r\n\
                  Subject: =?UTF-8?B?w5xiZXJyYXNjaHVuZw==?=\r\n\
                  \r\n\
                  no date here\r\n",
            ),
            f(
                &[],
                true,
                "2024-02-01T00:00:00Z",
                6000,
                b"\xff\xfe\x00garbage\r\n\r\n:::\x80",
            ),
            f(
                &["\\Seen", "\\Draft"],
                false,
                "2024-01-15T12:00:00Z",
                1000,
                b"From: carol@example.net\r\n\
                  Bcc: dave@example.com\r\n\
                  Subject: fwd\r\n\
                  Date: 10 Jan 2024 09:00:00 +0100\r\n\
                  Content-Type: multipart/mixed; boundary=\"m\"\r\n\
                  \r\n\
                  --m\r\n\
                  Content-Type: text/plain\r\n\
                  \r\n\
                  see attached\r\n\
                  --m\r\n\
                  Content-Type: message/rfc822\r\n\
                  \r\n\
                  Subject: inner secret\r\n\
                  \r\n\
                  nested words\r\n\
                  --m--\r\n",
            ),
        ]
    }

    fn candidates(fixtures: &[Fixture]) -> impl Iterator<Item = Candidate<'_>> {
        fixtures
            .iter()
            .zip(1..)
            .zip(UIDS)
            .map(|((f, seq), uid)| Candidate {
                seq,
                uid,
                flags: &f.flags,
                recent: f.recent,
                internal_date: f
                    .internal
                    .parse::<DateTime<chrono::Utc>>()
                    .unwrap()
                    .timestamp(),
                size: f.size,
                modseq: 1,
                raw: f.raw,
            })
    }

    const BOUNDS: Bounds = Bounds {
        max_seq: 5,
        max_uid: 21,
    };

    /// Parses a SEARCH / UID SEARCH command with imap-codec.
    fn parse(command: &str) -> (Vec<SearchKey<'_>>, bool) {
        let (rest, cmd) = CommandCodec::default().decode(command.as_bytes()).unwrap();
        assert!(rest.is_empty());
        match cmd.body {
            CommandBody::Search { criteria, uid, .. } => (criteria.into_inner(), uid),
            other => panic!("not a SEARCH: {other:?}"),
        }
    }

    /// Sequence numbers matching the criteria of a `a SEARCH ...` line.
    fn seqs(criteria: &str) -> Vec<u32> {
        let command = format!("a SEARCH {criteria}\r\n");
        let (keys, _) = parse(&command);
        let fixtures = fixtures();
        search_all(&keys, candidates(&fixtures), BOUNDS)
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    }

    #[test]
    fn flags_and_recency() {
        assert_eq!(seqs("ALL"), [1, 2, 3, 4, 5]);
        assert_eq!(seqs("OR FROM alice NOT SEEN"), [1, 2, 3, 4]);
        assert_eq!(seqs("ANSWERED"), [3]);
        assert_eq!(seqs("UNANSWERED"), [1, 2, 4, 5]);
        assert_eq!(seqs("DELETED"), [3]);
        assert_eq!(seqs("UNDELETED"), [1, 2, 4, 5]);
        assert_eq!(seqs("DRAFT"), [5]);
        assert_eq!(seqs("UNDRAFT"), [1, 2, 3, 4]);
        assert_eq!(seqs("FLAGGED"), [2]);
        assert_eq!(seqs("UNFLAGGED"), [1, 3, 4, 5]);
        assert_eq!(seqs("SEEN"), [1, 5]);
        assert_eq!(seqs("UNSEEN"), [2, 3, 4]);
        assert_eq!(seqs("RECENT"), [2, 4]);
        assert_eq!(seqs("NEW"), [2, 4]);
        assert_eq!(seqs("OLD"), [1, 3, 5]);
        assert_eq!(seqs("KEYWORD $Forwarded"), [2]);
        assert_eq!(seqs("KEYWORD $FORWARDED"), [2]);
        assert_eq!(seqs("UNKEYWORD $Forwarded"), [1, 3, 4, 5]);
    }

    #[test]
    fn sequence_and_uid_sets() {
        assert_eq!(seqs("1:2,4"), [1, 2, 4]);
        assert_eq!(seqs("*"), [5]);
        assert_eq!(seqs("4:2"), [2, 3, 4]);
        assert_eq!(seqs("4:*"), [4, 5]);
        assert_eq!(seqs("9:*"), [5]);
        assert_eq!(seqs("UID 11,20"), [2, 4]);
        assert_eq!(seqs("UID *"), [5]);
        assert_eq!(seqs("UID 30:*"), [5]);

        let (keys, uid) = parse("a UID SEARCH UID 12:* SINCE 1-Jan-2024\r\n");
        assert!(uid);
        let fixtures = fixtures();
        assert_eq!(
            search_all(&keys, candidates(&fixtures), BOUNDS),
            [(4, 20), (5, 21)]
        );
    }

    #[test]
    fn sizes_and_grouping() {
        assert_eq!(seqs("LARGER 100 SMALLER 5000"), [1, 2, 5]);
        assert_eq!(seqs("LARGER 500"), [2, 4, 5]);
        assert_eq!(seqs("(FROM bob SUBJECT hi) OR DELETED FLAGGED"), [2]);
        assert_eq!(seqs("NOT (UNSEEN OR DELETED RECENT)"), [1, 5]);
        assert_eq!(seqs("OR (SEEN DRAFT) 1"), [1, 5]);
    }

    #[test]
    fn dates() {
        // Internal dates, as UTC calendar dates.
        assert_eq!(seqs("ON 3-Jan-2024"), [2]);
        assert_eq!(seqs("BEFORE 1-Jan-2024"), [3]);
        assert_eq!(seqs("SINCE 15-Jan-2024"), [4, 5]);
        // Date: header as written (2 Jan -0500 is 3 Jan in UTC); #3 and #4 have none and fall
        // back to their internal dates.
        assert_eq!(seqs("SENTON 2-Jan-2024"), [2]);
        assert_eq!(seqs("SENTBEFORE 1-Jan-2024"), [3]);
        assert_eq!(seqs("SENTBEFORE 2-Jan-2024"), [1, 3]);
        assert_eq!(seqs("SENTSINCE 10-Jan-2024"), [4, 5]);
    }

    #[test]
    fn address_and_subject_fields() {
        assert_eq!(seqs("FROM ALICE"), [1]);
        assert_eq!(seqs("FROM \"bob@example.org\""), [2]);
        assert_eq!(seqs("TO bob"), [1]);
        assert_eq!(seqs("CC carol"), [2]);
        assert_eq!(seqs("BCC dave"), [5]);
        assert_eq!(seqs("SUBJECT HELLO"), [1]);
    }

    #[test]
    fn encoded_words_decoded_and_raw() {
        // "ÜBERRASCHUNG" is 13 octets; matches the decoded, lower-cased "Überraschung".
        assert_eq!(seqs("CHARSET UTF-8 SUBJECT {13}\r\n\u{dc}BERRASCHUNG"), [3]);
        assert_eq!(seqs("CHARSET UTF-8 FROM {5}\r\nJ\u{f6}rg"), [3]);
        // The field as written still matches.
        assert_eq!(seqs("SUBJECT w5xiZXJy"), [3]);
    }

    #[test]
    fn header_key() {
        assert_eq!(seqs("HEADER Message-ID <x@y>"), [1]);
        assert_eq!(seqs("HEADER message-id \"\""), [1, 2]);
        assert_eq!(seqs("HEADER X-Absent \"\""), Vec::<u32>::new());
        assert_eq!(seqs("HEADER Content-Type alternative"), [2]);
    }

    #[test]
    fn body_and_text() {
        assert_eq!(seqs("TEXT hello"), [1]);
        assert_eq!(seqs("BODY hello"), [1]);
        assert_eq!(seqs("BODY world"), Vec::<u32>::new());
        assert_eq!(seqs("TEXT world"), [1]);
        assert_eq!(seqs("TEXT message-id"), [1, 2]);
        // Quoted-printable is decoded; the encoded form is not body text.
        assert_eq!(seqs("CHARSET UTF-8 BODY {5}\r\nCAF\u{c9}"), [2]);
        assert_eq!(seqs("BODY =C3=A9"), Vec::<u32>::new());
        assert_eq!(seqs("BODY specials"), [2]);
        // Attached message: its header and body are part of the outer body.
        assert_eq!(seqs("BODY \"inner secret\""), [5]);
        assert_eq!(seqs("TEXT \"nested words\""), [5]);
    }

    #[test]
    fn single_key_entry_point() {
        let (keys, _) = parse("a SEARCH OR FLAGGED DRAFT\r\n");
        let fixtures = fixtures();
        assert_eq!(
            search(&keys[0], candidates(&fixtures), BOUNDS),
            [(2, 11), (5, 21)]
        );
    }

    #[test]
    fn nesting_beyond_limit_matches_nothing() {
        // ALL inside `levels - 1` one-key parenthesised lists.
        let nest =
            |levels| (1..levels).fold(SearchKey::All, |key, _| SearchKey::And(Vec1::from(key)));
        let fixtures = fixtures();
        assert_eq!(search(&nest(64), candidates(&fixtures), BOUNDS).len(), 5);
        assert_eq!(
            search(&nest(65), candidates(&fixtures), BOUNDS),
            Vec::<(u32, u32)>::new()
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        let raws: [&[u8]; 6] = [
            b"",
            b"\r\n\r\n",
            b"\xff\xff\xff",
            b"Subject",
            b"a:\r\n b\r\n\r\n",
            b"--\r\n=?x?q?",
        ];
        for raw in raws {
            let flags = [];
            let cand = Candidate {
                seq: 1,
                uid: 1,
                flags: &flags,
                recent: false,
                internal_date: i64::MAX,
                size: 0,
                modseq: 1,
                raw,
            };
            let (keys, _) = parse(
                "a SEARCH OR TEXT x OR BODY y OR HEADER a b OR SENTON 1-Jan-2024 OR ON 1-Jan-2024 SUBJECT z\r\n",
            );
            assert!(
                search_all(
                    &keys,
                    [cand],
                    Bounds {
                        max_seq: 1,
                        max_uid: 1
                    }
                )
                .len()
                    <= 1
            );
        }
    }
}
