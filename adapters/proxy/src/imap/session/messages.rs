//! Message commands on the selected mailbox: FETCH, STORE, COPY and MOVE, EXPUNGE, SEARCH.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

use letterme_client::ClientError;

pub(super) fn copy_uid(validity: u32, pairs: &[(u32, u32)]) -> Option<Code<'static>> {
    let src: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.0))).collect();
    let dst: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.1))).collect();
    Some(Code::CopyUid {
        uid_validity: nz(validity),
        source: UidSet(Vec1::try_from(src).ok()?),
        destination: UidSet(Vec1::try_from(dst).ok()?),
    })
}

/// A message as SORT and THREAD read it, its header section kept.
struct SortRow {
    number: u32,
    seq: u32,
    internal_date: i64,
    size: u32,
    header: Vec<u8>,
}

fn sort_message(m: &SortRow) -> sort::Message<'_> {
    sort::Message {
        number: m.number,
        seq: m.seq,
        internal_date: m.internal_date,
        size: m.size,
        raw: &m.header,
    }
}

/// How much of a message a FETCH item needs: nothing, its header section (what a mail
/// client's message list asks for), or all of it.
fn content_for(item: &MessageDataItemName<'_>) -> Content {
    match item {
        MessageDataItemName::Flags
        | MessageDataItemName::Uid
        | MessageDataItemName::InternalDate
        | MessageDataItemName::Rfc822Size
        | MessageDataItemName::ModSeq => Content::None,
        MessageDataItemName::Envelope
        | MessageDataItemName::Rfc822Header
        | MessageDataItemName::BodyExt {
            section:
                Some(
                    Section::Header(None)
                    | Section::HeaderFields(None, _)
                    | Section::HeaderFieldsNot(None, _),
                ),
            ..
        } => Content::Head,
        _ => Content::Whole,
    }
}

/// Bytes of whole messages one FETCH batch reads (by their sizes).
const FETCH_BATCH_BYTES: u64 = 8 << 20;

/// A message at least this large has its body item's literal written as it is
/// ([`wire::fetch_with_literal`]), not copied into imap-next's encoding.
const LARGE_LITERAL: usize = 1 << 20;

/// Whether a FETCH item is a literal cut from the message (BINARY excepted: its literal8
/// is decoded, and rarely the whole message).
fn literal_item(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

/// A [`literal_item`] with its literal left empty, and the literal's bytes, cut from
/// `raw` in place (the message is held once, whatever part of it is served).
fn with_literal(
    item: &MessageDataItemName<'static>,
    raw: Vec<u8>,
) -> (MessageDataItem<'static>, Vec<u8>) {
    let empty = || wire::nstring(Vec::new());
    // `raw` cut to `span`, where one is given.
    let cut = |mut raw: Vec<u8>, span: Option<std::ops::Range<usize>>| {
        if let Some(span) = span {
            raw.truncate(span.end);
            raw.drain(..span.start.min(raw.len()));
        } else {
            raw.clear();
        }
        raw
    };
    match item {
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let bytes = match section {
                None => raw,
                Some(s @ (Section::HeaderFields(..) | Section::HeaderFieldsNot(..))) => {
                    mime::section(&raw, Some(s))
                }
                Some(s) => {
                    let span = mime::section_span(&raw, s);
                    cut(raw, span)
                }
            };
            let taken = mime::partial_range(bytes.len(), *partial);
            let bytes = cut(bytes, Some(taken));
            let item = MessageDataItem::BodyExt {
                section: section.clone(),
                origin: partial.map(|p| p.0),
                data: empty(),
            };
            (item, bytes)
        }
        MessageDataItemName::Rfc822Text => {
            let span = mime::section_span(&raw, &Section::Text(None));
            (MessageDataItem::Rfc822Text(empty()), cut(raw, span))
        }
        _ => (MessageDataItem::Rfc822(empty()), raw),
    }
}

/// Why a search could not be answered.
pub(super) enum Unsearched {
    Store(ClientError),
    /// A text search met a message whose attachments are not downloaded (their download
    /// was tried before the search and failed).
    NotDownloaded,
}

impl From<ClientError> for Unsearched {
    fn from(e: ClientError) -> Self {
        Self::Store(e)
    }
}

impl Unsearched {
    fn reply(&self, tag: &Tag<'static>) -> Reply {
        Session::reply(vec![match self {
            Self::Store(e) => store_error(tag, &e.to_string()),
            Self::NotDownloaded => unavailable(
                tag,
                "the attachments of a message could not be downloaded to search them",
            ),
        }])
    }
}

/// Whether a text search of a message as fetched would read the places of attachments not
/// downloaded yet.
pub(super) fn search_reads_holes((_, raw, awaiting): &Fetched) -> bool {
    awaiting
        .as_ref()
        .is_some_and(|a| mime::text_reads_holes(raw.as_deref().unwrap_or_default(), &a.holes))
}

/// Of messages of `sizes` in order, how many go into one batch of whole messages: as many
/// as [`FETCH_BATCH_BYTES`] holds (at least one).
fn within_batch_bytes(sizes: impl IntoIterator<Item = u64>) -> usize {
    let mut total = 0;
    sizes
        .into_iter()
        .take_while(|size| {
            let fits = total < FETCH_BATCH_BYTES;
            total += size;
            fits
        })
        .count()
        .max(1)
}

/// What a search found.
struct Matches {
    /// (sequence number, UID) of each match.
    found: Vec<(u32, u32)>,
    /// With a MODSEQ key, the highest MODSEQ among them (RFC 7162 §3.1.5).
    modseq: Option<u64>,
}

impl Session {
    /// Resolves a sequence set against the client's view: (seq, uid) pairs in order.
    /// The client's view's messages in `set` as (seq, uid), ascending. Membership is decided
    /// per message, so a set like `1:4294967295` costs what the mailbox holds, not what the
    /// set spans.
    pub(super) fn resolve(&mut self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let s = self.sel();
        let largest = if uid {
            s.uids.last().copied().unwrap_or(0)
        } else {
            s.uids.len() as u32
        };
        let index = search::SetIndex::new(set, largest);
        s.uids
            .iter()
            .enumerate()
            .map(|(i, &u)| (i as u32 + 1, u))
            .filter(|&(seq, u)| index.contains(if uid { u } else { seq }))
            .collect()
    }

    pub(super) fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> Reply {
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        // RFC 7162 §3.2.6: VANISHED only in a UID FETCH with CHANGEDSINCE, after ENABLE QRESYNC.
        if vanished && !(uid && changed_since.is_some() && self.qresync) {
            return Self::reply(vec![tagged(
                tag,
                Kind::Bad,
                None,
                "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled",
            )]);
        }
        let mut items = match items {
            MacroOrMessageDataItemNames::Macro(m) => {
                let mut v = vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ];
                if matches!(m, Macro::All | Macro::Full) {
                    v.push(MessageDataItemName::Envelope);
                }
                if matches!(m, Macro::Full) {
                    v.push(MessageDataItemName::Body);
                }
                v
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        // RFC 7162 §3.1.4: CHANGEDSINCE implies MODSEQ, and either turns CONDSTORE on.
        if changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            items.push(MessageDataItemName::ModSeq);
        }
        self.condstore |= items.contains(&MessageDataItemName::ModSeq);
        let todo = self.resolve(set, uid);
        if todo.is_empty() && !uid {
            return Self::reply(vec![tagged(tag, Kind::Bad, None, "no such message")]);
        }
        let mut first = Vec::new();
        if let Some(since) = changed_since.filter(|_| vanished) {
            let (folder, largest) = (
                self.sel().folder.id,
                self.sel().folder.uidnext.saturating_sub(1).max(1),
            );
            match self.cache.vanished_since(folder, since) {
                Ok(gone) => {
                    let gone: Vec<u32> = gone
                        .into_iter()
                        .filter(|&u| search::in_set(set, u, largest))
                        .collect();
                    if let Some(set) = wire::number_set(&gone) {
                        first.push(Out::Data(Data::Vanished {
                            earlier: true,
                            known_uids: set,
                        }));
                    }
                }
                Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
            }
        }
        let job = FetchJob {
            tag: tag.clone(),
            uid,
            items,
            todo: todo.into(),
            expunged: false,
            answered: false,
            unknown_cte: false,
            changed_since,
            wants: None,
            tried: BTreeSet::new(),
            left_out: BTreeSet::new(),
            unavailable: None,
        };
        let mut reply = self.fetch_more(job);
        reply.out.splice(0..0, first);
        reply
    }

    /// The next batch of a FETCH; the tagged OK comes with the last one. Metadata and
    /// content are read together, so a message expunged meanwhile by another session is
    /// left out (and the tagged answer says so, RFC 5530 EXPUNGEISSUED) rather than served
    /// empty.
    pub fn fetch_more(&mut self, mut job: FetchJob) -> Reply {
        // Batches whose messages all vanished, or are unchanged since CHANGEDSINCE, send
        // nothing; go on until one does, or the end.
        let mut out = Vec::new();
        while out.is_empty() && !job.todo.is_empty() && job.wants.is_none() {
            match self.fetch_batch(&mut job) {
                Ok(o) => out = o,
                Err(e) => return Self::reply(vec![store_error(&job.tag, &e.to_string())]),
            }
        }
        if !job.todo.is_empty() {
            return Reply {
                out,
                next: Next::Continue,
                more: Some(job),
            };
        }
        out.push(match (job.expunged, job.answered) {
            _ if let Some(why) = &job.unavailable => unavailable(
                &job.tag,
                &format!("an attachment could not be downloaded ({why}); try again later"),
            ),
            // RFC 3516 §4.3: a part whose encoding cannot be undone fails the FETCH.
            _ if job.unknown_cte => tagged(
                &job.tag,
                Kind::No,
                Some(Code::UnknownCte),
                "a part has a Content-Transfer-Encoding BINARY cannot decode; use BODY[]",
            ),
            (false, _) => completed(&job.tag, job.uid, "FETCH"),
            (true, true) => tagged(
                &job.tag,
                Kind::Ok,
                Some(expunge_issued()),
                "some messages were expunged meanwhile; the others were fetched",
            ),
            (true, false) => tagged(
                &job.tag,
                Kind::No,
                Some(expunge_issued()),
                "the requested messages were expunged meanwhile",
            ),
        });
        Self::reply(out)
    }

    /// The FETCH responses for the next batch of `job`.
    fn fetch_batch(&mut self, job: &mut FetchJob) -> Result<Vec<Out>, ClientError> {
        let mut batch: Vec<(u32, u32)> =
            job.todo.drain(..job.todo.len().min(FETCH_BATCH)).collect();
        let content = job
            .items
            .iter()
            .map(content_for)
            .max()
            .unwrap_or(Content::None);
        let folder = self.sel().folder.id;
        // Whole messages: as many as [`FETCH_BATCH_BYTES`] by their sizes (at least one),
        // so a FETCH of large ones holds few at a time.
        if content == Content::Whole {
            let uids: Vec<u32> = batch.iter().map(|b| b.1).collect();
            let sizes: std::collections::HashMap<u32, u64> = self
                .cache
                .fetch(folder, &uids, Content::None)?
                .into_iter()
                .map(|(m, _, _)| (m.uid, u64::from(m.size)))
                .collect();
            let keep = within_batch_bytes(
                batch
                    .iter()
                    .map(|(_, uid)| sizes.get(uid).copied().unwrap_or(0)),
            );
            for b in batch.drain(keep..).rev() {
                job.todo.push_front(b);
            }
        }
        let marks_seen = !self.sel().read_only
            && job.items.iter().any(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Binary { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let uids: Vec<u32> = batch.iter().map(|b| b.1).collect();
        let mut rows: std::collections::HashMap<u32, Fetched> =
            match self.cache.fetch(folder, &uids, content) {
                Ok(rows) => rows.into_iter().map(|r| (r.0.uid, r)).collect(),
                Err(e) => return Err(e),
            };
        // CHANGEDSINCE first (RFC 7162 §3.1.4.1): an unchanged message is answered by
        // leaving it out, and keeps its flags and MODSEQ.
        let mut unchanged = BTreeSet::new();
        if let Some(since) = job.changed_since {
            rows.retain(|uid, r| {
                let keep = r.0.modseq > since;
                if !keep {
                    unchanged.insert(*uid);
                }
                keep
            });
            job.answered |= !unchanged.is_empty();
        }
        // A message this FETCH reads blobs of that are not downloaded yet: one whose
        // download was tried is left out (it failed); at the first other one the batch
        // ends, and the FETCH goes on once its download is done.
        let needs_download = |r: &Fetched| {
            let (_, raw, awaiting) = r;
            let (raw, a) = (raw.as_deref()?, awaiting.as_ref()?);
            job.items
                .iter()
                .any(|i| mime::reads_holes(raw, i, &a.holes))
                .then_some(a.content)
        };
        let mut cut = None;
        for (i, &(_, uid)) in batch.iter().enumerate() {
            let Some(content) = rows.get(&uid).and_then(needs_download) else {
                continue;
            };
            if job.tried.contains(&uid) {
                rows.remove(&uid);
                job.left_out.insert(uid);
                job.unavailable
                    .get_or_insert_with(|| "its download did not complete".into());
            } else {
                cut = Some((i, uid, content));
                break;
            }
        }
        if let Some((i, uid, content)) = cut {
            for b in batch.drain(i..).rev() {
                rows.remove(&b.1);
                job.todo.push_front(b);
            }
            job.wants = Some((uid, content));
        }
        // The implicit \Seen (RFC 3501 §6.4.5), added to the stored flags as they are now.
        let mut newly_seen = BTreeSet::new();
        if marks_seen {
            let unseen: Vec<u32> = rows
                .values()
                .filter(|r| !has_flag(&r.0.flags, "\\Seen"))
                .map(|r| r.0.uid)
                .collect();
            if !unseen.is_empty() {
                let stored = match self.cache.store_flags(
                    folder,
                    &unseen,
                    FlagOp::Add,
                    &["\\Seen".to_owned()],
                    None,
                ) {
                    Ok(s) => s.stored,
                    Err(e) => return Err(e),
                };
                for st in stored {
                    if let Some(row) = rows.get_mut(&st.uid) {
                        row.0.flags = st.flags;
                        row.0.modseq = st.modseq;
                    }
                    newly_seen.insert(st.uid);
                }
            }
        }
        let condstore = self.condstore;
        let s = self.sel();
        let mut out = Vec::with_capacity(batch.len() + 1);
        for (seq, uid) in batch {
            if unchanged.contains(&uid) {
                continue;
            }
            let Some((meta, whole, _)) = rows.remove(&uid) else {
                // Gone meanwhile: expunged, or withdrawn as its attachment could not be had.
                if !job.left_out.contains(&uid) {
                    job.expunged = true;
                }
                continue;
            };
            if let Ok(i) = s.uids.binary_search(&uid)
                && (newly_seen.contains(&uid) || job.items.contains(&MessageDataItemName::Flags))
            {
                // The client learns these flags from this FETCH, not from an update.
                s.flags[i].clone_from(&meta.flags);
            }
            let raw = whole.as_deref().unwrap_or_default();
            let recent = s.recent.contains(&uid);
            let mut data: Vec<MessageDataItem<'static>> = Vec::with_capacity(job.items.len());
            // Of a large message, one body item goes last, its literal written as it is.
            let mut large = None;
            for item in &job.items {
                if large.is_none() && raw.len() >= LARGE_LITERAL && literal_item(item) {
                    large = Some(item);
                    continue;
                }
                data.push(match item {
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(uid)),
                    MessageDataItemName::Flags => {
                        MessageDataItem::Flags(flag_fetch(&meta.flags, recent))
                    }
                    MessageDataItemName::InternalDate => {
                        MessageDataItem::InternalDate(imap_date(meta.internal_date))
                    }
                    MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(meta.size),
                    MessageDataItemName::ModSeq => MessageDataItem::ModSeq(nz64(meta.modseq)),
                    MessageDataItemName::Envelope => MessageDataItem::Envelope(mime::envelope(raw)),
                    MessageDataItemName::BodyStructure => {
                        MessageDataItem::BodyStructure(mime::body_structure(raw))
                    }
                    MessageDataItemName::Body => MessageDataItem::Body(mime::body(raw)),
                    MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(nstring(raw.to_vec())),
                    MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(nstring(
                        mime::section(raw, Some(&Section::Header(None))),
                    )),
                    MessageDataItemName::Rfc822Text => MessageDataItem::Rfc822Text(nstring(
                        mime::section(raw, Some(&Section::Text(None))),
                    )),
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        // BODY[] is the stored message itself: one copy, not two.
                        let bytes: Cow<'_, [u8]> = match section {
                            None => Cow::Borrowed(raw),
                            Some(s) => Cow::Owned(mime::section(raw, Some(s))),
                        };
                        let part = mime::partial(&bytes, *partial).to_vec();
                        MessageDataItem::BodyExt {
                            section: section.clone(),
                            origin: partial.map(|p| p.0),
                            data: nstring(part),
                        }
                    }
                    MessageDataItemName::Binary {
                        section, partial, ..
                    } => {
                        let Ok(bytes) = mime::binary(raw, section) else {
                            job.unknown_cte = true;
                            continue;
                        };
                        MessageDataItem::Binary {
                            section: section.clone(),
                            value: wire::nstring8(mime::partial(&bytes, *partial).to_vec()),
                        }
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let Ok(bytes) = mime::binary(raw, section) else {
                            job.unknown_cte = true;
                            continue;
                        };
                        MessageDataItem::BinarySize {
                            section: section.clone(),
                            size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                        }
                    }
                });
            }
            // FLAGS changed by this FETCH are reported in it (RFC 3501 §6.4.5), and with
            // CONDSTORE their MODSEQ (RFC 7162 §3.1.4.1).
            if newly_seen.contains(&uid) {
                if !job.items.contains(&MessageDataItemName::Flags) {
                    data.push(MessageDataItem::Flags(flag_fetch(&meta.flags, recent)));
                }
                if condstore && !job.items.contains(&MessageDataItemName::ModSeq) {
                    data.push(MessageDataItem::ModSeq(nz64(meta.modseq)));
                }
            }
            if let Some(item) = large {
                let (empty, literal) = with_literal(item, whole.unwrap_or_default());
                data.push(empty);
                if let Ok(items) = Vec1::try_from(data) {
                    job.answered = true;
                    out.extend(wire::fetch_with_literal(nz(seq), items, literal));
                }
            } else if let Ok(items) = Vec1::try_from(data) {
                job.answered = true;
                out.push(Out::Data(Data::Fetch {
                    seq: nz(seq),
                    items,
                }));
            }
        }
        Ok(out)
    }

    pub(super) fn store(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        (kind, response): (StoreType, StoreResponse),
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
    ) -> Reply {
        if self.sel().read_only {
            return Self::read_only(tag);
        }
        let op = match kind {
            StoreType::Replace => FlagOp::Replace,
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
        };
        let targets = self.resolve(set, uid);
        let given: Vec<String> = flags.iter().map(ToString::to_string).collect();
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let folder = self.sel().folder.id;
        self.condstore |= unchanged_since.is_some();
        let outcome = match self
            .cache
            .store_flags(folder, &uids, op, &given, unchanged_since)
        {
            Ok(o) => o,
            Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
        };
        let condstore = self.condstore;
        let s = self.sel();
        let new_keyword = outcome
            .stored
            .iter()
            .fold(false, |new, st| s.learn_keywords(&st.flags) | new);
        let mut out = if new_keyword {
            s.flags_responses()
        } else {
            Vec::new()
        };
        for st in &outcome.stored {
            let Ok(i) = s.uids.binary_search(&st.uid) else {
                continue;
            };
            // What the client expects from its own view; anything else (another session's
            // change) it must hear even with .SILENT.
            let expected = op.apply(&s.flags[i], &given);
            let surprise = !same_flags(&expected, &st.flags);
            s.flags[i].clone_from(&st.flags);
            // With CONDSTORE the client hears each new MODSEQ, .SILENT or not (RFC 7162 §3.1.3).
            if response == StoreResponse::Answer || surprise || (condstore && st.changed) {
                let mut items = vec![MessageDataItem::Flags(flag_fetch(
                    &st.flags,
                    s.recent.contains(&st.uid),
                ))];
                if uid {
                    items.push(MessageDataItem::Uid(nz(st.uid)));
                }
                if condstore {
                    items.push(MessageDataItem::ModSeq(nz64(st.modseq)));
                }
                out.push(Out::Data(Data::Fetch {
                    seq: nz(i as u32 + 1),
                    items: Vec1::try_from(items).expect("not empty"),
                }));
            }
        }
        // RFC 7162 §3.1.3: the messages left alone, by the numbers the command used.
        let modified: Vec<u32> = if uid {
            outcome.modified
        } else {
            outcome
                .modified
                .iter()
                .filter_map(|u| s.uids.binary_search(u).ok().map(|i| i as u32 + 1))
                .collect()
        };
        let code = wire::number_set(&modified).map(Code::Modified);
        out.push(tagged(
            tag,
            Kind::Ok,
            code,
            match (uid, modified.is_empty()) {
                (_, false) => "conditional STORE failed for some messages",
                (true, true) => "UID STORE completed",
                (false, true) => "STORE completed",
            },
        ));
        Self::reply(out)
    }

    pub(super) fn copy(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        target: &str,
        uid: bool,
        is_move: bool,
    ) -> Reply {
        if is_move && self.sel().read_only {
            return Self::read_only(tag);
        }
        let pairs = self.resolve(set, uid);
        if pairs.is_empty() {
            let msg = if uid {
                "no messages matched; nothing to do"
            } else {
                "no such message"
            };
            return Self::reply(vec![tagged(
                tag,
                if uid { Kind::Ok } else { Kind::Bad },
                None,
                msg,
            )]);
        }
        let folder = self.sel().folder.id;
        let uids: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let (validity, copied) = match self.cache.copy(folder, &uids, target, is_move) {
            Ok(r) => r,
            Err(MailboxError::NoSuchMailbox(n)) => {
                return Self::reply(vec![tagged(
                    tag,
                    Kind::No,
                    Some(Code::TryCreate),
                    &format!("no mailbox named {n}"),
                )]);
            }
            Err(e) => return Self::reply(vec![mailbox_error(tag, &e)]),
        };
        let code = copy_uid(validity, &copied);
        let mut out = Vec::new();
        if is_move {
            // RFC 6851 §4.3: COPYUID in an untagged OK, then EXPUNGEs, then the tagged OK.
            if let Some(code) = code {
                out.push(untagged_ok(code, "moved"));
            }
            let moved: BTreeSet<u32> = copied.iter().map(|p| p.0).collect();
            out.extend(self.forget(&moved).into_iter().map(Out::Data));
            out.push(completed(tag, uid, "MOVE"));
        } else {
            out.push(tagged(
                tag,
                Kind::Ok,
                code,
                if uid {
                    "UID COPY completed"
                } else {
                    "COPY completed"
                },
            ));
        }
        Self::reply(out)
    }

    /// Drops UIDs from the client's view, returning their EXPUNGE responses.
    pub(super) fn forget(&mut self, gone: &BTreeSet<u32>) -> Vec<Data<'static>> {
        let qresync = self.qresync;
        let s = self.sel();
        // Highest sequence number first, so each number is still valid when sent.
        let mut out: Vec<Data<'static>> = (0..s.uids.len())
            .rev()
            .filter(|&i| gone.contains(&s.uids[i]))
            .map(|i| Data::Expunge(nz(i as u32 + 1)))
            .collect();
        if qresync {
            // RFC 7162 §3.2.10: after ENABLE QRESYNC, VANISHED says it by UID instead.
            let uids: Vec<u32> = s
                .uids
                .iter()
                .copied()
                .filter(|u| gone.contains(u))
                .collect();
            out = wire::number_set(&uids)
                .map(|known_uids| Data::Vanished {
                    earlier: false,
                    known_uids,
                })
                .into_iter()
                .collect();
        }
        if !out.is_empty() {
            let keep: Vec<bool> = s.uids.iter().map(|u| !gone.contains(u)).collect();
            let mut k = keep.iter();
            s.flags.retain(|_| *k.next().expect("same length"));
            s.uids.retain(|u| !gone.contains(u));
            s.recent.retain(|u| !gone.contains(u));
        }
        out
    }

    pub(super) fn expunge(&mut self, tag: &Tag<'static>, set: Option<&SequenceSet>) -> Reply {
        if self.sel().read_only {
            return Self::read_only(tag);
        }
        let only = set.map(|s| {
            self.resolve(s, true)
                .into_iter()
                .map(|p| p.1)
                .collect::<BTreeSet<u32>>()
        });
        let folder = self.sel().folder.id;
        match self.cache.expunge_deleted(folder, only.as_ref()) {
            Ok(gone) => {
                let gone: BTreeSet<u32> = gone.into_iter().collect();
                let mut out: Vec<Out> = self.forget(&gone).into_iter().map(Out::Data).collect();
                // RFC 7162 §3.2.7: with QRESYNC, the HIGHESTMODSEQ after the expunge.
                let code = match self.cache.changes_since(folder, u64::MAX) {
                    Ok(Some(c)) if self.qresync && !gone.is_empty() => {
                        Some(Code::HighestModSeq(nz64(c.folder.highestmodseq)))
                    }
                    _ => None,
                };
                out.push(tagged(tag, Kind::Ok, code, "EXPUNGE completed"));
                Self::reply(out)
            }
            Err(e) => Self::reply(vec![store_error(tag, &e.to_string())]),
        }
    }

    /// The messages matching `criteria`. Content is read a batch at a time (whole
    /// messages by their sizes), so a text search over large mail holds a few at once.
    fn matches(&mut self, criteria: &[SearchKey<'_>]) -> Result<Matches, Unsearched> {
        let folder = self.sel().folder.id;
        let uids = self.sel().uids.clone();
        let content = search::content_needed(criteria);
        let bounds = search::Bounds {
            max_seq: uids.len() as u32,
            max_uid: uids.last().copied().unwrap_or(0),
        };
        // Flags, dates and sizes as they are now; a message expunged meanwhile matches
        // nothing (it is still numbered until the client hears of it).
        let metas: std::collections::HashMap<u32, MailMeta> = self
            .cache
            .fetch(folder, &uids, Content::None)?
            .into_iter()
            .map(|r| (r.0.uid, r.0))
            .collect();
        let numbered: Vec<(u32, u32)> = uids
            .iter()
            .enumerate()
            .filter(|(_, u)| metas.contains_key(u))
            .map(|(i, &u)| (i as u32 + 1, u))
            .collect();
        let mut found = Vec::new();
        let mut rest = numbered.as_slice();
        while !rest.is_empty() {
            let take = match content {
                Content::Whole => within_batch_bytes(
                    rest.iter()
                        .map(|(_, u)| metas.get(u).map_or(0, |m| u64::from(m.size))),
                ),
                Content::Head => FETCH_BATCH,
                Content::None => rest.len(),
            }
            .min(rest.len());
            let (batch, after) = rest.split_at(take);
            rest = after;
            let texts: std::collections::HashMap<u32, Fetched> = if content == Content::None {
                std::collections::HashMap::new()
            } else {
                let uids: Vec<u32> = batch.iter().map(|b| b.1).collect();
                self.cache
                    .fetch(folder, &uids, content)?
                    .into_iter()
                    .map(|r| (r.0.uid, r))
                    .collect()
            };
            // Never the filler in an attachment's place: the driver downloaded what a text
            // search reads before it ran; what is still missing failed.
            if content == Content::Whole && texts.values().any(search_reads_holes) {
                return Err(Unsearched::NotDownloaded);
            }
            let recent = &self.sel().recent;
            let candidates = batch.iter().filter_map(|&(seq, uid)| {
                let meta = metas.get(&uid)?;
                let raw = match texts.get(&uid) {
                    Some((_, raw, _)) => raw.as_deref().unwrap_or_default(),
                    // Expunged between the two reads.
                    None if content != Content::None => return None,
                    None => &[],
                };
                Some(search::Candidate {
                    seq,
                    uid,
                    flags: &meta.flags,
                    recent: recent.contains(&uid),
                    internal_date: meta.internal_date,
                    size: meta.size,
                    modseq: meta.modseq,
                    raw,
                })
            });
            found.extend(search::search_all(criteria, candidates, bounds));
        }
        let modseq = if search::uses_modseq(criteria) {
            self.condstore = true;
            found
                .iter()
                .filter_map(|(_, u)| metas.get(u).map(|m| m.modseq))
                .max()
        } else {
            None
        };
        Ok(Matches { found, modseq })
    }

    pub(super) fn search(
        &mut self,
        tag: &Tag<'static>,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Reply {
        let Matches { found, modseq } = match self.matches(criteria) {
            Ok(m) => m,
            Err(e) => return e.reply(tag),
        };
        let numbers: Vec<NonZeroU32> = found
            .iter()
            .map(|&(s, u)| nz(if uid { u } else { s }))
            .collect();
        Self::reply(vec![
            Out::Data(Data::Search(numbers, modseq.map(nz64))),
            completed(tag, uid, "SEARCH"),
        ])
    }

    /// The messages matching `criteria` with what SORT and THREAD read: dates, sizes and
    /// header sections (bodies are dropped batch by batch, so memory stays bounded).
    fn sort_input(
        &mut self,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Result<(Vec<SortRow>, Option<u64>), Unsearched> {
        let Matches { found, modseq } = self.matches(criteria)?;
        let folder = self.sel().folder.id;
        let mut out = Vec::with_capacity(found.len());
        for chunk in found.chunks(FETCH_BATCH) {
            let uids: Vec<u32> = chunk.iter().map(|f| f.1).collect();
            let rows: std::collections::HashMap<u32, Fetched> = self
                .cache
                .fetch(folder, &uids, Content::Head)?
                .into_iter()
                .map(|r| (r.0.uid, r))
                .collect();
            for &(seq, u) in chunk {
                let Some((meta, raw, _)) = rows.get(&u) else {
                    continue;
                };
                let raw = raw.as_deref().unwrap_or_default();
                let end = header_end(raw);
                out.push(SortRow {
                    number: if uid { u } else { seq },
                    seq,
                    internal_date: meta.internal_date,
                    size: meta.size,
                    header: raw[..end].to_vec(),
                });
            }
        }
        Ok((out, modseq))
    }

    /// SORT (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO).
    pub(super) fn sort(
        &mut self,
        tag: &Tag<'static>,
        criteria: &[SortCriterion],
        search: &[SearchKey<'_>],
        uid: bool,
    ) -> Reply {
        let (input, modseq) = match self.sort_input(search, uid) {
            Ok(i) => i,
            Err(e) => return e.reply(tag),
        };
        let messages: Vec<sort::Message<'_>> = input.iter().map(sort_message).collect();
        let numbers = sort::sort(criteria, &messages)
            .into_iter()
            .map(nz)
            .collect();
        Self::reply(vec![
            Out::Data(Data::Sort(numbers, modseq.map(nz64))),
            completed(tag, uid, "SORT"),
        ])
    }

    /// THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES.
    pub(super) fn thread(
        &mut self,
        tag: &Tag<'static>,
        algorithm: &ThreadingAlgorithm<'_>,
        search: &[SearchKey<'_>],
        uid: bool,
    ) -> Reply {
        if matches!(algorithm, ThreadingAlgorithm::Other(_)) {
            return Self::reply(vec![tagged(
                tag,
                Kind::No,
                None,
                "only ORDEREDSUBJECT and REFERENCES are offered",
            )]);
        }
        let (input, _) = match self.sort_input(search, uid) {
            Ok(i) => i,
            Err(e) => return e.reply(tag),
        };
        let messages: Vec<sort::Message<'_>> = input.iter().map(sort_message).collect();
        let threads = sort::thread(algorithm, &messages).unwrap_or_default();
        Self::reply(vec![
            Out::Data(Data::Thread(threads)),
            completed(tag, uid, "THREAD"),
        ])
    }

    /// SEARCH RETURN (...) (ESEARCH, RFC 4731): `* ESEARCH (TAG "t") [UID] MIN MAX COUNT ALL`,
    /// with MODSEQ for a search by MODSEQ (RFC 7162 §3.1.5). imap-types has no ESEARCH
    /// response, so the line is written here; every part of it is a number or the tag.
    pub(super) fn esearch(
        &mut self,
        tag: &Tag<'static>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        returns: &SearchReturn,
    ) -> Reply {
        // RFC 5182 §2.1: a SAVE that fails leaves the result empty.
        if returns.save {
            self.saved.clear();
        }
        let Matches { found, modseq } = match self.matches(criteria) {
            Ok(m) => m,
            Err(e) => return e.reply(tag),
        };
        let numbers: Vec<u32> = found
            .iter()
            .map(|&(s, u)| if uid { u } else { s })
            .collect();
        if returns.save {
            // RFC 5182 §2.4: with only MIN and/or MAX, only those are saved.
            let uids: Vec<u32> = found.iter().map(|f| f.1).collect();
            self.saved = if (returns.min || returns.max) && !(returns.all || returns.count) {
                let mut kept: Vec<u32> = [
                    returns.min.then(|| uids.first().copied()).flatten(),
                    returns.max.then(|| uids.last().copied()).flatten(),
                ]
                .into_iter()
                .flatten()
                .collect();
                kept.dedup();
                kept
            } else {
                uids
            };
            if !(returns.min || returns.max || returns.all || returns.count) {
                // SAVE alone answers no ESEARCH.
                return Self::reply(vec![tagged(
                    tag,
                    Kind::Ok,
                    None,
                    "SEARCH completed, result saved",
                )]);
            }
        }
        // A tag has no quoted-specials (RFC 3501 §9, tag = 1*<any ASTRING-CHAR except "+">).
        let mut line = format!("* ESEARCH (TAG \"{}\")", tag.inner());
        if uid {
            line.push_str(" UID");
        }
        if let (true, Some(min)) = (returns.min, numbers.iter().min()) {
            let _ = write!(line, " MIN {min}");
        }
        if let (true, Some(max)) = (returns.max, numbers.iter().max()) {
            let _ = write!(line, " MAX {max}");
        }
        if returns.count {
            let _ = write!(line, " COUNT {}", numbers.len());
        }
        if let (true, Some(set)) = (returns.all, wire::number_set(&numbers)) {
            let _ = write!(line, " ALL {}", wire::sequence_text(&set));
        }
        if let Some(m) = modseq.filter(|_| !numbers.is_empty()) {
            let _ = write!(line, " MODSEQ {m}");
        }
        line.push_str("\r\n");
        Self::reply(vec![
            Out::Raw(line.into_bytes()),
            completed(tag, uid, "SEARCH"),
        ])
    }
}
