//! IMAP SORT and THREAD (RFC 5256), with the DISPLAYFROM and DISPLAYTO sort keys (RFC 5957).
//!
//! Both read a handful of header fields of each message (parsed once, with mail-parser) plus
//! the metadata the caller already holds, so this module stays pure: messages in, numbers or
//! thread trees out. The order of the result is the protocol, so the RFC's procedures are
//! followed step by step and cited where they are implemented. All work is bounded: a message's
//! references are capped, parent links never form a loop, and tree walks use explicit stacks.

use std::{cmp::Ordering, collections::HashMap, num::NonZeroU32};

use chrono::{NaiveDate, NaiveTime};
use imap_codec::imap_types::{
    core::{Vec1, Vec2},
    extensions::{
        sort::{SortCriterion, SortKey},
        thread::{Thread, ThreadingAlgorithm},
    },
};
use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// Message-IDs read from one message's References field; the last ones are kept, since the
/// last reference names the parent (RFC 5256 §3 REFERENCES step 1.B).
const MAX_REFERENCES: usize = 1000;

/// Thread answers nested deeper than this are reported flat, as one chain in depth-first
/// order, so that the answer tree (and whatever encodes, clones or drops it recursively)
/// stays shallow however the References fields were crafted.
const MAX_THREAD_DEPTH: usize = 100;

/// One message as SORT and THREAD see it.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// The number reported: a sequence number, or the UID for UID SORT / UID THREAD.
    pub number: u32,
    /// Sequence number, the final tie-breaker (RFC 5256 §3).
    pub seq: u32,
    /// INTERNALDATE, unix seconds (UTC).
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u32,
    /// The RFC 5322 message (headers are enough).
    pub raw: &'a [u8],
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the message itself.
        f.debug_struct("Message")
            .field("number", &self.number)
            .field("seq", &self.seq)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// RFC 5256 SORT: the numbers in order.
///
/// Each criterion compares one key, REVERSE inverting only that key; messages equal on every
/// key are ordered by ascending sequence number (RFC 5256 §3).
pub fn sort(criteria: &[SortCriterion], messages: &[Message<'_>]) -> Vec<u32> {
    let headers = criteria
        .iter()
        .any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size));
    let mut rows: Vec<(Vec<Value>, &Message<'_>)> = messages
        .iter()
        .map(|m| {
            let parsed = if headers { parse(m.raw) } else { None };
            let values = criteria
                .iter()
                .map(|c| value(&c.key, m, parsed.as_ref()))
                .collect();
            (values, m)
        })
        .collect();
    rows.sort_by(|(a, ma), (b, mb)| {
        criteria
            .iter()
            .zip(a.iter().zip(b))
            .map(|(c, (x, y))| if c.reverse { y.cmp(x) } else { x.cmp(y) })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then(ma.seq.cmp(&mb.seq))
    });
    rows.into_iter().map(|(_, m)| m.number).collect()
}

/// RFC 5256 THREAD with ORDEREDSUBJECT or REFERENCES; None for an algorithm not supported.
///
/// A message numbered 0 cannot be reported (`nz-number`) and is left out.
pub fn thread(algorithm: &ThreadingAlgorithm<'_>, messages: &[Message<'_>]) -> Option<Vec<Thread>> {
    let threads: fn(&[Info]) -> Vec<Thread> = match algorithm {
        ThreadingAlgorithm::OrderedSubject => ordered_subject,
        ThreadingAlgorithm::References => references,
        ThreadingAlgorithm::Other(_) => return None,
    };
    let mut infos: Vec<Info> = messages.iter().filter_map(Info::read).collect();
    // Lowest sequence number first: it keeps a duplicated Message-ID (RFC 5256 §3 step 1.A).
    infos.sort_by_key(|i| i.seq);
    Some(threads(&infos))
}

/// RFC 5256 §2.1 base subject (after RFC 2047 decoding, i;unicode-casemap-ish: lowercase),
/// exposed for tests and reuse.
///
/// `subject` is the field's text with encoded-words already decoded, as mail-parser returns it.
pub fn base_subject(subject: &str) -> String {
    extract(subject).0
}

/// The base subject, and whether extracting it showed a reply or forward: a subj-refwd
/// removed in step (3), a "(fwd)" trailer in step (2) or a "[fwd: ...]" wrapper in step (6)
/// (RFC 5256 §2.1, used by REFERENCES step 5).
fn extract(subject: &str) -> (String, bool) {
    // (1) Tabs and continuations to space, runs of spaces to one. Lower-cased here, as every
    // comparison of base subjects is case-insensitive (RFC 5256 §2.1, §7).
    let mut text = String::with_capacity(subject.len());
    for c in subject.chars() {
        let c = if matches!(c, '\t' | '\r' | '\n') {
            ' '
        } else {
            c
        };
        if c == ' ' && text.ends_with(' ') {
            continue;
        }
        text.extend(c.to_lowercase());
    }
    let mut s = text.as_str();
    let mut reply = false;
    loop {
        // (2) subj-trailer = "(fwd)" / WSP, repeatedly.
        loop {
            if let Some(rest) = s.strip_suffix(' ') {
                s = rest;
            } else if let Some(rest) = s.strip_suffix("(fwd)") {
                s = rest;
                reply = true;
            } else {
                break;
            }
        }
        // (5) Repeat (3) and (4) until neither matches.
        loop {
            // (3) subj-leader = (*subj-blob subj-refwd) / WSP
            if let Some(rest) = s.strip_prefix(' ') {
                s = rest;
                continue;
            }
            if let Some(rest) = leader(s) {
                s = rest;
                reply = true;
                continue;
            }
            // (4) A leading subj-blob, if a non-empty subj-base remains without it. Step (3)
            // fails alike after each blob of a run, so the run goes at once (but for a last
            // blob that nothing follows), keeping the work linear.
            let before = s.len();
            while let Some(rest) = blob(s)
                && !rest.is_empty()
            {
                s = rest;
            }
            if s.len() == before {
                break;
            }
        }
        // (6) subj-fwd-hdr "[fwd:" ... subj-fwd-trl "]": unwrap and repeat from (2).
        match s.strip_prefix("[fwd:").and_then(|r| r.strip_suffix(']')) {
            Some(inner) => {
                s = inner;
                reply = true;
            }
            None => break,
        }
    }
    (s.to_owned(), reply)
}

/// `*subj-blob subj-refwd` at the start of `s`: the text after it.
fn leader(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(after) = blob(rest) {
        rest = after;
    }
    refwd(rest)
}

/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"` at the start of `s` (lower-cased):
/// the text after it.
fn refwd(s: &str) -> Option<&str> {
    let rest = s
        .strip_prefix("re")
        .or_else(|| s.strip_prefix("fwd"))
        .or_else(|| s.strip_prefix("fw"))?;
    let rest = rest.trim_start_matches(' ');
    blob(rest).unwrap_or(rest).strip_prefix(':')
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start of `s`: the text after it.
/// BLOBCHAR is any octet but NUL, `[` and `]`.
fn blob(s: &str) -> Option<&str> {
    let body = s.strip_prefix('[')?;
    let end = body.find(['[', ']', '\0'])?;
    let rest = body.get(end..)?.strip_prefix(']')?;
    Some(rest.trim_start_matches(' '))
}

/// A sort key's value for one message.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Number(i64),
    Text(String),
}

/// The value of `key` for `m` (RFC 5256 §3 SORT, RFC 5957 §3-4). Strings are lower-cased, so
/// that they compare case-insensitively; a missing field is the empty string.
fn value(key: &SortKey, m: &Message<'_>, parsed: Option<&mail_parser::Message<'_>>) -> Value {
    let address = |name| {
        parsed
            .and_then(|p| first(p, name))
            .and_then(HeaderValue::as_address)
    };
    match key {
        SortKey::Arrival => Value::Number(m.internal_date),
        SortKey::Size => Value::Number(i64::from(m.size)),
        SortKey::Date => Value::Number(sent_date(parsed, m.internal_date)),
        SortKey::Subject => Value::Text(base_subject(subject(parsed))),
        SortKey::From => Value::Text(mailbox(address(HeaderName::From))),
        SortKey::To => Value::Text(mailbox(address(HeaderName::To))),
        SortKey::Cc => Value::Text(mailbox(address(HeaderName::Cc))),
        SortKey::DisplayFrom => Value::Text(display(address(HeaderName::From))),
        SortKey::DisplayTo => Value::Text(display(address(HeaderName::To))),
    }
}

/// FROM, TO, CC: the addr-mailbox (local part) of the first address (RFC 5256 §3). A group
/// is looked into for its first mailbox.
fn mailbox(address: Option<&mail_parser::Address<'_>>) -> String {
    let spec = address
        .and_then(mail_parser::Address::first)
        .and_then(mail_parser::Addr::address)
        .unwrap_or_default();
    let local = spec.rsplit_once('@').map_or(spec, |(local, _)| local);
    // An obsolete source route (`@a,@b:user`) is not part of the mailbox.
    let local = match local.rsplit_once(':') {
        Some((route, mailbox)) if route.starts_with('@') => mailbox,
        _ => local,
    };
    local.to_lowercase()
}

/// DISPLAYFROM, DISPLAYTO: the first address's display name, decoded, when not empty; else its
/// addr-spec; else the empty string (RFC 5957 §3).
fn display(address: Option<&mail_parser::Address<'_>>) -> String {
    let Some(addr) = address.and_then(mail_parser::Address::first) else {
        return String::new();
    };
    addr.name()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .or_else(|| addr.address())
        .unwrap_or_default()
        .to_lowercase()
}

/// The header fields of `raw`, or None when mail-parser finds none.
fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    MessageParser::default().parse_headers(raw)
}

/// The first `name` field's parsed value, as ENVELOPE reads the first field too.
fn first<'p>(
    parsed: &'p mail_parser::Message<'_>,
    name: HeaderName<'static>,
) -> Option<&'p HeaderValue<'p>> {
    parsed.header_values(name).next()
}

/// The decoded Subject text, empty when missing.
fn subject<'p>(parsed: Option<&'p mail_parser::Message<'_>>) -> &'p str {
    parsed
        .and_then(|p| first(p, HeaderName::Subject))
        .and_then(HeaderValue::as_text)
        .unwrap_or_default()
}

/// RFC 5256 §2.2 sent date, unix seconds in UTC: the Date field adjusted by its zone; an
/// invalid zone counts as UTC and an invalid time as 00:00:00. Without a Date field or a
/// valid calendar date in it, the internal date stands in.
fn sent_date(parsed: Option<&mail_parser::Message<'_>>, internal_date: i64) -> i64 {
    parsed
        .and_then(|p| first(p, HeaderName::Date))
        .and_then(HeaderValue::as_datetime)
        .and_then(utc_seconds)
        .unwrap_or(internal_date)
}

fn utc_seconds(d: &mail_parser::DateTime) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))?;
    // A leap second (60) is valid in RFC 5322; it sorts with second 59.
    let time = NaiveTime::from_hms_opt(
        u32::from(d.hour),
        u32::from(d.minute),
        u32::from(d.second.min(59)),
    )
    .unwrap_or(NaiveTime::MIN);
    let offset = if d.tz_hour <= 23 && d.tz_minute <= 59 {
        let seconds = i64::from(d.tz_hour) * 3600 + i64::from(d.tz_minute) * 60;
        // West of Greenwich the local time is behind UTC.
        if d.tz_before_gmt { seconds } else { -seconds }
    } else {
        0
    };
    Some(date.and_time(time).and_utc().timestamp() + offset)
}

/// What THREAD reads of one message.
struct Info {
    number: NonZeroU32,
    seq: u32,
    /// Sent date (RFC 5256 §2.2).
    sent: i64,
    /// Base subject (RFC 5256 §2.1).
    subject: String,
    /// Whether the subject marks a reply or forward.
    reply: bool,
    /// The first valid Message-ID.
    id: Option<String>,
    /// The message's references (RFC 5256 §3 REFERENCES), oldest first.
    references: Vec<String>,
}

impl Info {
    fn read(m: &Message<'_>) -> Option<Self> {
        let number = NonZeroU32::new(m.number)?;
        let parsed = parse(m.raw);
        let parsed = parsed.as_ref();
        let (subject, reply) = extract(subject(parsed));
        let ids = |name| {
            parsed
                .and_then(|p| first(p, name))
                .map(message_ids)
                .unwrap_or_default()
        };
        // RFC 5256 §3 REFERENCES: the References field's Message-IDs, or without any, the
        // first valid one of In-Reply-To.
        let mut references = ids(HeaderName::References);
        if references.is_empty() {
            references = ids(HeaderName::InReplyTo);
            references.truncate(1);
        }
        let excess = references.len().saturating_sub(MAX_REFERENCES);
        references.drain(..excess);
        Some(Self {
            number,
            seq: m.seq,
            sent: sent_date(parsed, m.internal_date),
            subject,
            reply,
            id: ids(HeaderName::MessageId).into_iter().next(),
            references,
        })
    }

    fn key(&self) -> (i64, u32) {
        (self.sent, self.seq)
    }
}

/// The valid Message-IDs of an id-list field, brackets removed. mail-parser returns the ids
/// written in brackets, or without any, the field's text; a valid one has an "@" and no white
/// space (RFC 5322 §3.6.4 msg-id).
fn message_ids(value: &HeaderValue<'_>) -> Vec<String> {
    value
        .as_text_list()
        .unwrap_or_default()
        .iter()
        .filter(|id| id.contains('@') && !id.contains(char::is_whitespace))
        .map(ToString::to_string)
        .collect()
}

/// RFC 5256 §3 ORDEREDSUBJECT: messages grouped by base subject, each group in sent-date order
/// and the groups ordered by their first message. The first message is the parent of all the
/// others, which are siblings.
fn ordered_subject(infos: &[Info]) -> Vec<Thread> {
    let mut order: Vec<&Info> = infos.iter().collect();
    order.sort_by(|a, b| a.subject.cmp(&b.subject).then(a.key().cmp(&b.key())));
    let mut groups: Vec<&[&Info]> = order.chunk_by(|a, b| a.subject == b.subject).collect();
    groups.sort_by_key(|g| g.first().map(|i| i.key()));
    groups
        .into_iter()
        .filter_map(|group| {
            let (head, rest) = group.split_first()?;
            let answers = rest.iter().map(|i| leaf(i.number)).collect();
            members(vec![head.number], answers)
        })
        .collect()
}

fn leaf(number: NonZeroU32) -> Thread {
    Thread::Members {
        prefix: Vec1::from(number),
        answers: None,
    }
}

/// RFC 5256 §3 REFERENCES.
fn references(infos: &[Info]) -> Vec<Thread> {
    let mut forest = Forest {
        nodes: (0..infos.len()).map(|i| Node::new(Some(i))).collect(),
        infos,
    };
    // Step 1.A: a Message-ID names the first (lowest sequence number) message carrying it; a
    // later duplicate, like a message without one, is named by nothing and so stays unique.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, info) in infos.iter().enumerate() {
        if let Some(id) = info.id.as_deref() {
            by_id.entry(id).or_insert(i);
        }
    }
    for (i, info) in infos.iter().enumerate() {
        // (1.A) Link the references in a chain, each the parent of the next; an id no
        // message carries becomes a dummy, shared by all later references to it. A link
        // already made is kept, and none that would close a loop is made.
        let mut previous = None;
        for id in &info.references {
            let node = *by_id.entry(id.as_str()).or_insert_with(|| forest.add(None));
            if let Some(parent) = previous
                && forest.nodes[node].parent.is_none()
                && !forest.would_loop(parent, node)
            {
                forest.link(parent, node);
            }
            previous = Some(node);
        }
        // (1.B) The last reference is the message's parent, replacing a link a truncated
        // References field elsewhere may have made; without references it has none.
        forest.unlink(i);
        if let Some(parent) = previous
            && !forest.would_loop(parent, i)
        {
            forest.link(parent, i);
        }
    }
    // (2) The parentless messages are the root's children.
    let roots: Vec<usize> = (0..forest.nodes.len())
        .filter(|&n| forest.nodes[n].parent.is_none())
        .collect();
    let mut top = forest.prune(&roots);
    // (4) Sort the root's children by sent date, a dummy by its first child's.
    for &n in &top {
        forest.sort_children(n);
    }
    top.sort_by_cached_key(|&n| forest.key(n));
    forest.gather_by_subject(&mut top);
    // (6) Sort every set of siblings; a dummy sorts by its first (earliest) child.
    for n in 0..forest.nodes.len() {
        forest.sort_children(n);
    }
    top.retain(|&n| forest.nodes[n].parent.is_none() && forest.is_alive(n));
    top.sort_by_cached_key(|&n| forest.key(n));
    top.iter().filter_map(|&n| forest.thread(n, 0)).collect()
}

/// A message or dummy of the REFERENCES tree.
struct Node {
    /// Index into the messages; None for a dummy.
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

impl Node {
    fn new(message: Option<usize>) -> Self {
        Self {
            message,
            parent: None,
            children: Vec::new(),
        }
    }
}

/// The REFERENCES tree, its nodes addressed by index; nodes `0..infos.len()` are the messages.
struct Forest<'i> {
    nodes: Vec<Node>,
    infos: &'i [Info],
}

impl<'i> Forest<'i> {
    fn add(&mut self, message: Option<usize>) -> usize {
        self.nodes.push(Node::new(message));
        self.nodes.len() - 1
    }

    fn info(&self, n: usize) -> Option<&'i Info> {
        self.nodes[n].message.and_then(|m| self.infos.get(m))
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    fn unlink(&mut self, child: usize) {
        if let Some(parent) = self.nodes[child].parent.take() {
            self.nodes[parent].children.retain(|&c| c != child);
        }
    }

    /// Whether making `parent` the parent of `child` would close a loop: `parent` is `child`
    /// or one of its descendants (RFC 5256 §3 REFERENCES step 1.A).
    fn would_loop(&self, parent: usize, child: usize) -> bool {
        if parent == child {
            return true;
        }
        if self.nodes[child].children.is_empty() {
            return false;
        }
        // Walk up from `parent`; the links form no loop, so this ends within `nodes.len()`
        // steps (counted all the same).
        let mut at = self.nodes[parent].parent;
        for _ in 0..self.nodes.len() {
            match at {
                Some(n) if n == child => return true,
                Some(n) => at = self.nodes[n].parent,
                None => return false,
            }
        }
        true
    }

    /// Nodes under `roots`, each after all of its descendants.
    fn post_order(&self, roots: &[usize]) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                out.push(n);
            } else {
                stack.push((n, true));
                stack.extend(self.nodes[n].children.iter().rev().map(|&c| (c, false)));
            }
        }
        out
    }

    /// (3) Prune dummies: one without children goes; one with children goes too, its children
    /// spliced in among its siblings, except that under the root it stays when it has more
    /// than one child. Returns the root's children.
    fn prune(&mut self, roots: &[usize]) -> Vec<usize> {
        for n in self.post_order(roots) {
            let children = std::mem::take(&mut self.nodes[n].children);
            let mut kept = Vec::with_capacity(children.len());
            for c in children {
                if self.nodes[c].message.is_some() {
                    kept.push(c);
                } else {
                    // Already pruned below: its children are messages.
                    let grandchildren = std::mem::take(&mut self.nodes[c].children);
                    for &g in &grandchildren {
                        self.nodes[g].parent = Some(n);
                    }
                    self.nodes[c].parent = None;
                    kept.extend(grandchildren);
                }
            }
            self.nodes[n].children = kept;
        }
        let mut top = Vec::with_capacity(roots.len());
        for &r in roots {
            match (self.nodes[r].message, self.nodes[r].children.as_slice()) {
                (None, []) => {}
                (None, &[only]) => {
                    self.nodes[r].children.clear();
                    self.nodes[only].parent = None;
                    top.push(only);
                }
                // A message, or a dummy holding several threads.
                _ => top.push(r),
            }
        }
        top
    }

    /// (5) Gather the root's children that share a base subject.
    fn gather_by_subject(&mut self, top: &mut Vec<usize>) {
        // (5.B) One thread per subject: a dummy rather than a message, a message that is not
        // a reply or forward rather than one that is.
        let mut table: HashMap<&'i str, usize> = HashMap::new();
        for &n in top.iter() {
            let Some(subject) = self.thread_subject(n) else {
                continue;
            };
            match table.get(subject) {
                None => {
                    table.insert(subject, n);
                }
                Some(&t) => {
                    let (t_dummy, n_dummy) = (self.is_dummy(t), self.is_dummy(n));
                    if !t_dummy && (n_dummy || (self.is_reply(t) && !self.is_reply(n))) {
                        table.insert(subject, n);
                    }
                }
            }
        }
        // (5.C) Merge each other thread with that one.
        for i in 0..top.len() {
            let n = top[i];
            let Some(subject) = self.thread_subject(n) else {
                continue;
            };
            let Some(&t) = table.get(subject) else {
                continue;
            };
            if t == n {
                continue;
            }
            match (self.is_dummy(t), self.is_dummy(n)) {
                (true, true) => {
                    for c in std::mem::take(&mut self.nodes[n].children) {
                        self.link(t, c);
                    }
                }
                (true, false) => self.link(t, n),
                (false, false) if self.is_reply(n) && !self.is_reply(t) => self.link(t, n),
                _ => {
                    let dummy = self.add(None);
                    self.link(dummy, t);
                    self.link(dummy, n);
                    table.insert(subject, dummy);
                    top.push(dummy);
                }
            }
        }
    }

    /// The base subject of a root thread: its message's, or a dummy's first child's; None when
    /// empty (RFC 5256 §3 REFERENCES step 5.B.i-ii).
    fn thread_subject(&self, n: usize) -> Option<&'i str> {
        let info = match self.nodes[n].message {
            Some(_) => self.info(n),
            None => self.info(*self.nodes[n].children.first()?),
        }?;
        Some(info.subject.as_str()).filter(|s| !s.is_empty())
    }

    fn is_dummy(&self, n: usize) -> bool {
        self.nodes[n].message.is_none()
    }

    fn is_reply(&self, n: usize) -> bool {
        self.info(n).is_some_and(|i| i.reply)
    }

    /// A node still in the tree: a message, or a dummy with children.
    fn is_alive(&self, n: usize) -> bool {
        !self.is_dummy(n) || !self.nodes[n].children.is_empty()
    }

    /// Sent date and sequence number; a dummy's is its earliest child's (RFC 5256 §3
    /// REFERENCES steps 4 and 6).
    fn key(&self, n: usize) -> (i64, u32) {
        match self.info(n) {
            Some(info) => info.key(),
            None => self.nodes[n]
                .children
                .iter()
                .filter_map(|&c| self.info(c))
                .map(Info::key)
                .min()
                .unwrap_or((i64::MAX, u32::MAX)),
        }
    }

    fn sort_children(&mut self, n: usize) {
        let mut children = std::mem::take(&mut self.nodes[n].children);
        children.sort_by_cached_key(|&c| self.key(c));
        self.nodes[n].children = children;
    }

    /// The THREAD answer for the subtree at `n`: a chain of only children is one `prefix`,
    /// two or more children are `answers`, a dummy is `Nested`. Beyond `MAX_THREAD_DEPTH`
    /// the rest is reported as one chain.
    fn thread(&self, n: usize, depth: usize) -> Option<Thread> {
        if depth >= MAX_THREAD_DEPTH {
            return members(self.flatten(&[n]), Vec::new());
        }
        let Some(info) = self.info(n) else {
            let answers = self.nodes[n]
                .children
                .iter()
                .filter_map(|&c| self.thread(c, depth + 1))
                .collect();
            return nested(answers);
        };
        let mut prefix = vec![info.number];
        let mut at = n;
        loop {
            let children = &self.nodes[at].children;
            if let &[only] = children.as_slice()
                && let Some(child) = self.info(only)
            {
                prefix.push(child.number);
                at = only;
                continue;
            }
            let answers = children
                .iter()
                .filter_map(|&c| self.thread(c, depth + 1))
                .collect();
            return members(prefix, answers);
        }
    }

    /// The message numbers under `roots`, depth first.
    fn flatten(&self, roots: &[usize]) -> Vec<NonZeroU32> {
        let mut out = Vec::new();
        let mut stack: Vec<usize> = roots.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            out.extend(self.info(n).map(|i| i.number));
            stack.extend(self.nodes[n].children.iter().rev());
        }
        out
    }
}

/// A message chain and its answers as a thread; a single answer continues the chain.
fn members(mut prefix: Vec<NonZeroU32>, mut answers: Vec<Thread>) -> Option<Thread> {
    let answers = match answers.len() {
        0 => None,
        1 => match answers.pop()? {
            Thread::Members {
                prefix: more,
                answers,
            } => {
                prefix.extend(more.into_inner());
                answers
            }
            Thread::Nested { answers } => Some(answers),
        },
        _ => Some(Vec2::try_from(answers).ok()?),
    };
    Some(Thread::Members {
        prefix: Vec1::try_from(prefix).ok()?,
        answers,
    })
}

/// Threads under a dummy: none, the one, or several nested.
fn nested(mut answers: Vec<Thread>) -> Option<Thread> {
    match answers.len() {
        0 => None,
        1 => answers.pop(),
        _ => Some(Thread::Nested {
            answers: Vec2::try_from(answers).ok()?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01T00:00:00Z.
    const JAN_1: i64 = 1_704_067_200;

    /// A message of these header lines and a short body.
    fn mail(lines: &[&str]) -> Vec<u8> {
        format!("{}\r\n\r\nbody\r\n", lines.join("\r\n")).into_bytes()
    }

    /// A Date field `minutes` after 2024-01-01T00:00Z.
    fn date(minutes: u32) -> String {
        format!(
            "Date: Mon, 1 Jan 2024 {:02}:{:02}:00 +0000",
            minutes / 60,
            minutes % 60
        )
    }

    /// Messages 1.. of `raws` (number = sequence number), arriving in order.
    fn set(raws: &[Vec<u8>]) -> Vec<Message<'_>> {
        (1..)
            .zip(raws)
            .map(|(seq, raw)| Message {
                number: seq,
                seq,
                internal_date: JAN_1 + i64::from(seq),
                size: 100,
                raw,
            })
            .collect()
    }

    /// Sort criteria as written in the command, e.g. "REVERSE DATE SUBJECT".
    fn criteria(spec: &str) -> Vec<SortCriterion> {
        let mut out = Vec::new();
        let mut reverse = false;
        for word in spec.split_whitespace() {
            let key = match word {
                "REVERSE" => {
                    reverse = true;
                    continue;
                }
                "ARRIVAL" => SortKey::Arrival,
                "CC" => SortKey::Cc,
                "DATE" => SortKey::Date,
                "FROM" => SortKey::From,
                "SIZE" => SortKey::Size,
                "SUBJECT" => SortKey::Subject,
                "TO" => SortKey::To,
                "DISPLAYFROM" => SortKey::DisplayFrom,
                "DISPLAYTO" => SortKey::DisplayTo,
                _ => panic!("unknown sort key {word}"),
            };
            out.push(SortCriterion { reverse, key });
            reverse = false;
        }
        out
    }

    fn sorted(spec: &str, messages: &[Message<'_>]) -> Vec<u32> {
        sort(&criteria(spec), messages)
    }

    /// The THREAD response data, as `Thread`'s Display writes it.
    fn threaded(algorithm: &ThreadingAlgorithm<'_>, messages: &[Message<'_>]) -> String {
        thread(algorithm, messages)
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn references(messages: &[Message<'_>]) -> String {
        threaded(&ThreadingAlgorithm::References, messages)
    }

    /// The numbers in a rendered THREAD answer, in order.
    fn numbers(rendered: &str) -> Vec<u32> {
        rendered
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    #[test]
    fn base_subject_rfc_cases() {
        let cases = [
            ("Re: [fwd: Re: hello] (fwd)", "hello"),
            ("Fwd: [list] Re: x", "x"),
            ("[blob]", "[blob]"),
            ("Re: [blob]", "[blob]"),
            ("[a][b]", "[b]"),
            ("[list] hello", "hello"),
            ("[list]  [other] Re: hello", "hello"),
            ("Re: Re: RE: hello", "hello"),
            ("re[2]: hello", "hello"),
            ("Re [x] : hello", "hello"),
            ("fw: hello", "hello"),
            ("FWD:hello", "hello"),
            ("Reply: hello", "reply: hello"),
            ("Fwdx: hello", "fwdx: hello"),
            ("hello (fwd) (FWD)  ", "hello"),
            ("  Hello\t \t World  ", "hello world"),
            ("Hello\r\n World", "hello world"),
            ("[fwd: [list] foo]", "foo"),
            ("Re: [Fwd: Re: [Fwd: deep]]", "deep"),
            ("[fwd: hello] world", "world"),
            ("Re:", ""),
            ("", ""),
            ("[", "["),
            ("]]", "]]"),
            ("[fwd:]", ""),
            ("Ré: Ünïcode", "ré: ünïcode"),
        ];
        for (subject, base) in cases {
            assert_eq!(base_subject(subject), base, "{subject:?}");
        }
    }

    #[test]
    fn subject_artifacts_repeated_many_times() {
        // Stripped one blob at a time, with step (3) retried after each, these would take
        // quadratic time.
        let blobs = "[x]".repeat(50_000);
        assert_eq!(base_subject(&blobs), "[x]");
        assert_eq!(base_subject(&format!("{blobs} Re: hello")), "hello");
        assert_eq!(base_subject(&format!("{blobs} hello")), "hello");
        assert_eq!(base_subject(&"Re: ".repeat(50_000)), "");
        let wrapped = format!("{}x{}", "[fwd: ".repeat(20_000), "]".repeat(20_000));
        assert_eq!(base_subject(&wrapped), "x");
    }

    #[test]
    fn reply_or_forward_is_what_extraction_removed() {
        let cases = [
            ("hello", false),
            ("[list] hello", false),
            ("[blob]", false),
            ("Re: hello", true),
            ("[list] Fwd: hello", true),
            ("hello (fwd)", true),
            ("[fwd: hello]", true),
            ("Reply: hello", false),
        ];
        for (subject, reply) in cases {
            assert_eq!(extract(subject).1, reply, "{subject:?}");
        }
    }

    #[test]
    fn arrival_and_size_with_reverse_fall_back_to_sequence_numbers() {
        let raws = vec![mail(&["Subject: x"]); 4];
        let mut messages = set(&raws);
        for (m, (arrival, size)) in
            messages
                .iter_mut()
                .zip([(300, 10), (100, 30), (200, 10), (100, 20)])
        {
            m.internal_date = arrival;
            m.size = size;
        }
        assert_eq!(sorted("ARRIVAL", &messages), [2, 4, 3, 1]);
        // REVERSE inverts its key only; ties stay in ascending sequence order.
        assert_eq!(sorted("REVERSE ARRIVAL", &messages), [1, 3, 2, 4]);
        assert_eq!(sorted("SIZE", &messages), [1, 3, 4, 2]);
        assert_eq!(sorted("REVERSE SIZE", &messages), [2, 4, 1, 3]);
        assert_eq!(sorted("SIZE ARRIVAL", &messages), [3, 1, 4, 2]);
        assert_eq!(sorted("SIZE REVERSE ARRIVAL", &messages), [1, 3, 4, 2]);
        assert_eq!(sort(&[], &messages), [1, 2, 3, 4]);
        assert!(sorted("DATE", &[]).is_empty());
    }

    #[test]
    fn uid_sort_reports_uids_and_breaks_ties_by_sequence_number() {
        let raws = vec![mail(&["Subject: same"]); 3];
        let mut messages = set(&raws);
        for (m, uid) in messages.iter_mut().zip([30, 10, 20]) {
            m.number = uid;
        }
        assert_eq!(sorted("SUBJECT", &messages), [30, 10, 20]);
        assert_eq!(sorted("REVERSE SUBJECT", &messages), [30, 10, 20]);
    }

    #[test]
    fn subject_sorts_on_base_subject_case_insensitively() {
        let raws = [
            mail(&["Subject: Re: banana"]),
            mail(&["Subject: [list] Apple"]),
            mail(&["Subject: =?utf-8?q?Fwd=3A_apple?="]),
            mail(&["From: x@y"]),
            mail(&["Subject: cherry (fwd)"]),
            mail(&["Subject: BANANA"]),
        ];
        let messages = set(&raws);
        assert_eq!(sorted("SUBJECT", &messages), [4, 2, 3, 1, 6, 5]);
        assert_eq!(sorted("REVERSE SUBJECT", &messages), [5, 1, 6, 2, 3, 4]);
    }

    #[test]
    fn address_keys_sort_on_the_first_mailbox_local_part() {
        let raws = [
            mail(&["From: Zed <aaron@z.example>", "To: bob@x.example"]),
            mail(&[
                "From: bob@b.example",
                "To: Alice <alice@a.example>",
                "Cc: carol@c.example",
            ]),
            mail(&[
                "To: undisclosed-recipients:;",
                "Cc: \"Dave\" <Dave@d.example>, eve@e.example",
            ]),
            mail(&[
                "From: Mallory <MALLORY@m.example>",
                "To: group: zoe@z.example, al@a.example;",
                "Cc: al@x.example",
            ]),
        ];
        let messages = set(&raws);
        // A missing field sorts as the empty string, first.
        assert_eq!(sorted("FROM", &messages), [3, 1, 2, 4]);
        assert_eq!(sorted("REVERSE FROM", &messages), [4, 2, 1, 3]);
        assert_eq!(sorted("TO", &messages), [3, 2, 1, 4]);
        assert_eq!(sorted("CC", &messages), [1, 4, 2, 3]);
    }

    #[test]
    fn display_keys_sort_on_the_display_name_else_the_address() {
        let raws = [
            mail(&["From: Zed <aaron@z.example>", "To: b@x.example"]),
            mail(&["From: bob@b.example", "To: Ann <z@x.example>"]),
            mail(&["From: =?utf-8?q?Andr=C3=A9?= <x@y.example>"]),
            mail(&["From: \"\" <carl@c.example>", "To: c@x.example"]),
            mail(&["Subject: no from", "To: Ben <a@a.example>"]),
        ];
        let messages = set(&raws);
        // "" < "andré" < "bob@b.example" < "carl@c.example" < "zed"
        assert_eq!(sorted("DISPLAYFROM", &messages), [5, 3, 2, 4, 1]);
        assert_eq!(sorted("REVERSE DISPLAYFROM", &messages), [1, 4, 2, 3, 5]);
        // "" < "ann" < "b@x.example" < "ben" < "c@x.example"
        assert_eq!(sorted("DISPLAYTO", &messages), [3, 2, 1, 5, 4]);
        // FROM on the same messages reads the mailbox instead.
        assert_eq!(sorted("FROM", &messages), [5, 1, 2, 4, 3]);
    }

    #[test]
    fn date_is_utc_and_falls_back_to_the_internal_date() {
        let raws = [
            mail(&["Date: Mon, 1 Jan 2024 10:00:00 +0200"]), // 08:00Z
            mail(&["Date: Mon, 1 Jan 2024 09:00:00 +0000"]), // 09:00Z
            mail(&["Date: Sun, 31 Dec 2023 23:30:00 -0900"]), // 08:30Z
            mail(&["Subject: no date"]),
            mail(&["Date: not a date at all"]),
            mail(&["Date: Mon, 1 Jan 2024 03:00:00 -0500"]), // 08:00Z
        ];
        let mut messages = set(&raws);
        // Internal dates the other way round, so that DATE visibly ignores them when it can.
        for (m, minutes) in messages.iter_mut().zip([600, 500, 400, 495, 420, 100]) {
            m.internal_date = JAN_1 + minutes * 60;
        }
        assert_eq!(sorted("DATE", &messages), [5, 1, 6, 4, 3, 2]);
        assert_eq!(sorted("REVERSE DATE", &messages), [2, 3, 4, 1, 6, 5]);
        assert_eq!(sorted("ARRIVAL", &messages), [6, 3, 5, 4, 2, 1]);
    }

    #[test]
    fn sent_date_edge_cases() {
        let parsed = |raw: &'static [u8]| parse(raw);
        let at = |raw: &'static [u8]| sent_date(parsed(raw).as_ref(), -1);
        assert_eq!(
            at(b"Date: Sun, 31 Dec 2000 16:01:33 -0800\r\n\r\n"),
            978_307_293 // RFC 5256 §2.2: 1 Jan 2001 00:01:33 UTC
        );
        assert_eq!(at(b"Subject: none\r\n\r\n"), -1);
        assert_eq!(at(b"Date: Mon, 31 Feb 2024 10:00:00 +0000\r\n\r\n"), -1);
        assert_eq!(sent_date(None, 7), 7);
    }

    #[test]
    fn several_keys_each_break_the_previous_ties() {
        let raws = [
            mail(&["Subject: b", &date(1)]),
            mail(&["Subject: Re: a", &date(2)]),
            mail(&["Subject: A", &date(3)]),
            mail(&["Subject: [list] b", &date(1)]),
            mail(&["Subject: a", &date(2)]),
        ];
        let messages = set(&raws);
        assert_eq!(sorted("SUBJECT", &messages), [2, 3, 5, 1, 4]);
        assert_eq!(sorted("SUBJECT REVERSE DATE", &messages), [3, 2, 5, 1, 4]);
        assert_eq!(sorted("REVERSE SUBJECT DATE", &messages), [1, 4, 2, 5, 3]);
        assert_eq!(sorted("DATE SUBJECT", &messages), [1, 4, 2, 5, 3]);
    }

    #[test]
    fn ordered_subject_threads_by_base_subject_then_date() {
        let raws = [
            mail(&["Subject: A", &date(1)]),
            mail(&["Subject: Re: A", &date(3)]),
            mail(&["Subject: B", &date(2)]),
            mail(&["Subject: Re: a", &date(4)]),
            mail(&["Subject: re: b", &date(5)]),
            mail(&["Subject: C", &date(6)]),
            mail(&["Subject: Fwd: A", &date(2)]),
            mail(&["From: x@y", &date(0)]),
            mail(&["From: x@y", &date(9)]),
        ];
        let messages = set(&raws);
        assert_eq!(
            threaded(&ThreadingAlgorithm::OrderedSubject, &messages),
            "(8 9)(1 (7)(2)(4))(3 5)(6)"
        );
    }

    #[test]
    fn references_chain_branch_and_missing_parent() {
        let raws = [
            mail(&["Message-ID: <1@x>", "Subject: hello", &date(1)]),
            mail(&[
                "Message-ID: <2@x>",
                "References: <1@x>",
                "Subject: Re: hello",
                &date(4),
            ]),
            mail(&[
                "Message-ID: <3@x>",
                "References: <1@x>\r\n <2@x>",
                "Subject: Re: hello",
                &date(5),
            ]),
            mail(&[
                "Message-ID: <4@x>",
                "References: <1@x>",
                "Subject: Re: hello",
                &date(2),
            ]),
            // A parent not in the mailbox: a dummy holding both replies.
            mail(&[
                "Message-ID: <5@x>",
                "References: <gone@x>",
                "Subject: other",
                &date(6),
            ]),
            mail(&[
                "Message-ID: <6@x>",
                "References: <gone@x>",
                "Subject: Re: other",
                &date(7),
            ]),
            mail(&["Message-ID: <7@x>", "Subject: lone", &date(8)]),
            // In-Reply-To stands in for a missing References field.
            mail(&[
                "Message-ID: <8@x>",
                "In-Reply-To: <7@x> (Joe's message)",
                "Subject: Re: lone",
                &date(9),
            ]),
            // A dummy with a single child at the top is replaced by the child.
            mail(&[
                "Message-ID: <9@x>",
                "References: <alsogone@x>",
                "Subject: single",
                &date(10),
            ]),
        ];
        let messages = set(&raws);
        assert_eq!(references(&messages), "(1 (4)(2 3))((5)(6))(7 8)(9)");
    }

    #[test]
    fn references_a_message_own_last_reference_overrides_another_message_field() {
        // Message 3 claims 4 answers 1; message 4 itself names 2 as its parent, which wins
        // (RFC 5256 §3 step 1.B), and 3 stays under 4.
        let raws = [
            mail(&["Message-ID: <1@x>", "Subject: one", &date(1)]),
            mail(&["Message-ID: <2@x>", "Subject: two", &date(2)]),
            mail(&[
                "Message-ID: <3@x>",
                "References: <1@x> <4@x>",
                "Subject: Re: two",
                &date(4),
            ]),
            mail(&[
                "Message-ID: <4@x>",
                "References: <2@x>",
                "Subject: Re: two",
                &date(3),
            ]),
            // Message 5 claims 6 answers 1, but 6 has no references: it has no parent.
            mail(&[
                "Message-ID: <5@x>",
                "References: <1@x> <6@x>",
                "Subject: Re: six",
                &date(6),
            ]),
            mail(&["Message-ID: <6@x>", "Subject: six", &date(5)]),
        ];
        assert_eq!(references(&set(&raws)), "(1)(2 4 3)(6 5)");
    }

    #[test]
    fn references_loops_are_not_linked() {
        let raws = [
            mail(&[
                "Message-ID: <a@x>",
                "References: <b@x>",
                "Subject: loop",
                &date(1),
            ]),
            mail(&[
                "Message-ID: <b@x>",
                "References: <a@x>",
                "Subject: Re: loop",
                &date(2),
            ]),
            // A message naming itself.
            mail(&[
                "Message-ID: <c@x>",
                "References: <c@x>",
                "Subject: self",
                &date(3),
            ]),
            // A loop within one References field.
            mail(&[
                "Message-ID: <d@x>",
                "References: <e@x> <f@x> <e@x>",
                "Subject: cycle",
                &date(4),
            ]),
        ];
        assert_eq!(references(&set(&raws)), "(2 1)(3)(4)");
    }

    #[test]
    fn references_duplicate_and_missing_message_ids_are_unique() {
        let raws = [
            mail(&["Message-ID: <same@x>", "Subject: first", &date(1)]),
            mail(&["Message-ID: <same@x>", "Subject: second", &date(2)]),
            mail(&[
                "Message-ID: <3@x>",
                "References: <same@x>",
                "Subject: Re: first",
                &date(3),
            ]),
            mail(&["Subject: fourth", &date(4)]),
            mail(&["Message-ID: garbage without at", "Subject: fifth", &date(5)]),
            mail(&[
                "Message-ID: <6@x>",
                "In-Reply-To: garbage without at",
                "Subject: sixth",
                &date(6),
            ]),
        ];
        assert_eq!(references(&set(&raws)), "(1 3)(2)(4)(5)(6)");
    }

    #[test]
    fn references_gathers_threads_by_subject() {
        let raws = [
            // Two originals: a new dummy holds both, and the reply joins it.
            mail(&["Message-ID: <1@x>", "Subject: news", &date(1)]),
            mail(&["Message-ID: <2@x>", "Subject: News", &date(2)]),
            mail(&["Message-ID: <3@x>", "Subject: Re: news", &date(3)]),
            // Two replies: a new dummy.
            mail(&["Message-ID: <4@x>", "Subject: Re: sports", &date(4)]),
            mail(&["Message-ID: <5@x>", "Subject: Re: sports", &date(5)]),
            // A reply under the original.
            mail(&["Message-ID: <6@x>", "Subject: weather", &date(6)]),
            mail(&["Message-ID: <7@x>", "Subject: Re: weather", &date(7)]),
            // An empty subject gathers nothing.
            mail(&["Message-ID: <8@x>", &date(8)]),
            mail(&["Message-ID: <9@x>", "Subject: Re:", &date(9)]),
            // A message joins a dummy of the same subject.
            mail(&[
                "Message-ID: <10@x>",
                "References: <gone@x>",
                "Subject: tech",
                &date(10),
            ]),
            mail(&[
                "Message-ID: <11@x>",
                "References: <gone@x>",
                "Subject: Re: tech",
                &date(11),
            ]),
            mail(&["Message-ID: <12@x>", "Subject: tech", &date(12)]),
        ];
        assert_eq!(
            references(&set(&raws)),
            "((1)(2)(3))((4)(5))(6 7)(8)(9)((10)(11)(12))"
        );
    }

    #[test]
    fn references_sorts_siblings_by_sent_date_then_sequence() {
        let raws = [
            mail(&["Message-ID: <1@x>", "Subject: s", &date(1)]),
            mail(&[
                "Message-ID: <2@x>",
                "In-Reply-To: <1@x>",
                "Subject: s",
                &date(5),
            ]),
            mail(&[
                "Message-ID: <3@x>",
                "In-Reply-To: <1@x>",
                "Subject: s",
                &date(2),
            ]),
            mail(&[
                "Message-ID: <4@x>",
                "In-Reply-To: <1@x>",
                "Subject: s",
                &date(2),
            ]),
            mail(&["Message-ID: <5@x>", "Subject: t", &date(0)]),
        ];
        assert_eq!(references(&set(&raws)), "(5)(1 (3)(4)(2))");
    }

    #[test]
    fn unsupported_algorithm_and_unnumbered_messages() {
        let raws = [mail(&["Subject: a"]), mail(&["Subject: b"])];
        let mut messages = set(&raws);
        let other = ThreadingAlgorithm::from(
            imap_codec::imap_types::core::Atom::try_from("X-FANCY").expect("valid atom"),
        );
        assert!(thread(&other, &messages).is_none());
        messages[0].number = 0;
        assert_eq!(references(&messages), "(2)");
        assert_eq!(threaded(&ThreadingAlgorithm::OrderedSubject, &[]), "");
    }

    #[test]
    fn long_reply_chain_is_one_prefix() {
        let raws: Vec<Vec<u8>> = (1..=3000)
            .map(|i| {
                let id = format!("Message-ID: <{i}@x>");
                let parent = format!("In-Reply-To: <{}@x>", i - 1);
                mail(&[&id, &parent, "Subject: Re: chain"])
            })
            .collect();
        let rendered = references(&set(&raws));
        let expected: Vec<String> = (1..=3000).map(|i| i.to_string()).collect();
        assert_eq!(rendered, format!("({})", expected.join(" ")));
    }

    #[test]
    fn deep_branching_is_cut_at_the_depth_limit() {
        // Odd messages form a spine; each spine message also has an even leaf reply.
        let raws: Vec<Vec<u8>> = (1..=600)
            .map(|i| {
                let id = format!("Message-ID: <{i}@x>");
                let spine = if i % 2 == 0 { i - 1 } else { i - 2 };
                let parent = format!("In-Reply-To: <{spine}@x>");
                mail(&[&id, &parent, "Subject: deep"])
            })
            .collect();
        let rendered = references(&set(&raws));
        assert!(rendered.starts_with("(1 (2)(3 (4)(5 (6)"), "{rendered:.40}");
        let mut seen = numbers(&rendered);
        seen.sort_unstable();
        assert_eq!(seen, (1..=600).collect::<Vec<u32>>());
        let mut depth = 0usize;
        let mut deepest = 0;
        for c in rendered.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            deepest = deepest.max(depth);
        }
        assert!(deepest <= MAX_THREAD_DEPTH + 1, "{deepest}");
    }

    #[test]
    fn references_beyond_the_cap_keep_the_parent() {
        let refs: Vec<String> = (0..5000).map(|i| format!("<r{i}@x>")).collect();
        let raws = [
            mail(&["Message-ID: <r4999@x>", "Subject: p", &date(1)]),
            mail(&[
                "Message-ID: <c@x>",
                &format!("References: {}", refs.join("\r\n ")),
                "Subject: q",
                &date(2),
            ]),
        ];
        assert_eq!(references(&set(&raws)), "(1 2)");
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut raws: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\r\n\r\n".to_vec(),
            b"no colon here".to_vec(),
            b"Subject: [[[[[[[[[[[[".to_vec(),
            b"Subject: \0\xff\xfe ]]]] (fwd".to_vec(),
            format!("Subject: {}\r\n\r\n", "re: [x] ".repeat(5000)).into_bytes(),
            format!(
                "Subject: {}x{}\r\n\r\n",
                "[fwd: ".repeat(2000),
                "]".repeat(2000)
            )
            .into_bytes(),
            b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n\r\n".to_vec(),
            b"Date: Tue, 31 Dec 1899 25:61:61 -2500\r\n\r\n".to_vec(),
            b"From: <<<@@@>>>\r\nTo: ;;;:::,,,\r\nCc: \"unterminated\r\n\r\n".to_vec(),
            b"Message-ID: <a@x>\r\nReferences: <a@x> <<<>>> <@> <a@x>\r\n\r\n".to_vec(),
            b"Message-ID: <a@x>\r\nIn-Reply-To: <a@x>\r\n\r\n".to_vec(),
            b"References: <".to_vec(),
        ];
        // Pseudo-random bytes, some behind header-like prefixes.
        let mut state: u32 = 0x2545_f491;
        for i in 0..200 {
            let mut raw = match i % 4 {
                0 => b"Subject: ".to_vec(),
                1 => b"References: <".to_vec(),
                2 => b"From: ".to_vec(),
                _ => Vec::new(),
            };
            for _ in 0..(i * 7 % 300) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                raw.push(state.to_le_bytes()[0]);
            }
            raws.push(raw);
        }
        let messages = set(&raws);
        let all = "ARRIVAL CC DATE FROM SIZE SUBJECT TO DISPLAYFROM DISPLAYTO";
        assert_eq!(sorted(all, &messages).len(), messages.len());
        assert_eq!(
            sorted(&all.replace(' ', " REVERSE "), &messages).len(),
            messages.len()
        );
        for algorithm in [
            ThreadingAlgorithm::OrderedSubject,
            ThreadingAlgorithm::References,
        ] {
            let mut seen = numbers(&threaded(&algorithm, &messages));
            seen.sort_unstable();
            assert_eq!(
                seen,
                (1..=u32::try_from(messages.len()).unwrap_or(0)).collect::<Vec<_>>()
            );
        }
    }
}
