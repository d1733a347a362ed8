//! Message commands on the selected mailbox: FETCH, STORE, COPY and MOVE, EXPUNGE, SEARCH.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn copy_uid(validity: u32, pairs: &[(u32, u32)]) -> Option<Code<'static>> {
    let src: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.0))).collect();
    let dst: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.1))).collect();
    Some(Code::CopyUid {
        uid_validity: nz(validity),
        source: UidSet(Vec1::try_from(src).ok()?),
        destination: UidSet(Vec1::try_from(dst).ok()?),
    })
}

impl Session {
    /// Resolves a sequence set against the client's view: (seq, uid) pairs in order.
    pub(super) fn resolve(&mut self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
        let s = self.sel();
        if s.uids.is_empty() {
            return vec![];
        }
        if uid {
            let largest = nz(*s.uids.last().expect("not empty"));
            let wanted: BTreeSet<u32> = set.iter(largest).map(NonZeroU32::get).collect();
            s.uids
                .iter()
                .enumerate()
                .filter(|(_, u)| wanted.contains(u))
                .map(|(i, &u)| (i as u32 + 1, u))
                .collect()
        } else {
            let largest = nz(s.uids.len() as u32);
            set.iter(largest)
                .filter_map(|n| s.uids.get(n.get() as usize - 1).map(|&u| (n.get(), u)))
                .collect()
        }
    }

    pub(super) fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
    ) -> Reply {
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
        if items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            return Self::reply(vec![tagged(
                tag,
                Kind::No,
                None,
                "BINARY is not supported; use BODY[]",
            )]);
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let todo = self.resolve(set, uid);
        if todo.is_empty() && !uid {
            return Self::reply(vec![tagged(tag, Kind::Bad, None, "no such message")]);
        }
        let job = FetchJob {
            tag: tag.clone(),
            uid,
            items,
            todo: todo.into(),
        };
        self.fetch_more(job)
    }

    /// The next batch of a FETCH; the tagged OK comes with the last one.
    pub fn fetch_more(&mut self, mut job: FetchJob) -> Reply {
        let batch: Vec<(u32, u32)> = job.todo.drain(..job.todo.len().min(FETCH_BATCH)).collect();
        let needs_content = job.items.iter().any(|i| {
            !matches!(
                i,
                MessageDataItemName::Flags
                    | MessageDataItemName::Uid
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
            )
        });
        let marks_seen = job.items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
        let folder = self.sel().folder.id;
        let read_only = self.sel().read_only;
        let uids: Vec<u32> = batch.iter().map(|b| b.1).collect();
        let (lo, hi) = (
            uids.iter().min().copied().unwrap_or(1),
            uids.iter().max().copied().unwrap_or(0),
        );
        let metas: std::collections::HashMap<u32, MailMeta> =
            match self.cache.messages_between(folder, lo, hi) {
                Ok(rows) => rows.into_iter().map(|m| (m.uid, m)).collect(),
                Err(e) => return Self::reply(vec![store_error(&job.tag, &e.to_string())]),
            };
        let contents: std::collections::HashMap<u32, Vec<u8>> = if needs_content {
            match self.cache.contents(folder, &uids) {
                Ok(c) => c.into_iter().collect(),
                Err(e) => return Self::reply(vec![store_error(&job.tag, &e.to_string())]),
            }
        } else {
            std::collections::HashMap::new()
        };
        let mut newly_seen = Vec::new();
        let mut out = Vec::with_capacity(batch.len() + 1);
        for (seq, uid) in batch {
            let Some(meta) = metas.get(&uid) else {
                continue;
            };
            let mut flags = meta.flags.clone();
            if marks_seen && !read_only && !has(&flags, "\\Seen") {
                flags.push("\\Seen".to_owned());
                newly_seen.push((uid, flags.clone()));
            }
            let raw = contents.get(&uid).map_or(&[][..], Vec::as_slice);
            let mut data: Vec<MessageDataItem<'static>> = Vec::with_capacity(job.items.len());
            for item in &job.items {
                data.push(match item {
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(uid)),
                    MessageDataItemName::Flags => MessageDataItem::Flags(flag_fetch(&flags)),
                    MessageDataItemName::InternalDate => {
                        MessageDataItem::InternalDate(imap_date(meta.internal_date))
                    }
                    MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(meta.size),
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
                    _ => continue,
                });
            }
            // FLAGS changed by this FETCH are reported in it (RFC 3501 §6.4.5).
            if newly_seen.last().is_some_and(|n| n.0 == uid)
                && !job.items.contains(&MessageDataItemName::Flags)
            {
                data.push(MessageDataItem::Flags(flag_fetch(&flags)));
            }
            if let Ok(items) = Vec1::try_from(data) {
                out.push(Out::Data(Data::Fetch {
                    seq: nz(seq),
                    items,
                }));
            }
        }
        if !newly_seen.is_empty() {
            if let Err(e) = self.cache.set_flags(folder, &newly_seen) {
                return Self::reply(vec![store_error(&job.tag, &e.to_string())]);
            }
            self.note_flags(&newly_seen);
        }
        if out.is_empty() && !job.todo.is_empty() {
            // Every message of this batch vanished meanwhile; go on with the next.
            return self.fetch_more(job);
        }
        if job.todo.is_empty() {
            out.push(tagged(
                &job.tag,
                Kind::Ok,
                None,
                if job.uid {
                    "UID FETCH completed"
                } else {
                    "FETCH completed"
                },
            ));
            Reply {
                out,
                next: Next::Continue,
                more: None,
            }
        } else {
            Reply {
                out,
                next: Next::Continue,
                more: Some(job),
            }
        }
    }

    /// Records flag changes this session made, so they are not echoed as updates.
    pub(super) fn note_flags(&mut self, changes: &[(u32, Vec<String>)]) {
        let s = self.sel();
        for (uid, flags) in changes {
            if let Ok(i) = s.uids.binary_search(uid) {
                s.flags[i].clone_from(flags);
            }
        }
        self.seen_change = *self.cache.changes().borrow();
    }

    pub(super) fn store(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Reply {
        if self.sel().read_only {
            return Self::read_only(tag);
        }
        let targets = self.resolve(set, uid);
        let given: Vec<String> = flags.iter().map(ToString::to_string).collect();
        let mut changes = Vec::new();
        let mut out = Vec::new();
        for (seq, u) in targets {
            let current = self.sel().flags[seq as usize - 1].clone();
            let new: Vec<String> = match kind {
                StoreType::Replace => given.clone(),
                StoreType::Add => {
                    let mut v = current.clone();
                    for f in &given {
                        if !has(&v, f) {
                            v.push(f.clone());
                        }
                    }
                    v
                }
                StoreType::Remove => current
                    .iter()
                    .filter(|f| !has(&given, f))
                    .cloned()
                    .collect(),
            };
            if response == StoreResponse::Answer {
                let mut items = vec![MessageDataItem::Flags(flag_fetch(&new))];
                if uid {
                    items.push(MessageDataItem::Uid(nz(u)));
                }
                out.push(Out::Data(Data::Fetch {
                    seq: nz(seq),
                    items: Vec1::try_from(items).expect("not empty"),
                }));
            }
            changes.push((u, new));
        }
        let folder = self.sel().folder.id;
        if let Err(e) = self.cache.set_flags(folder, &changes) {
            return Self::reply(vec![store_error(tag, &e.to_string())]);
        }
        self.note_flags(&changes);
        out.push(tagged(
            tag,
            Kind::Ok,
            None,
            if uid {
                "UID STORE completed"
            } else {
                "STORE completed"
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
            out.push(tagged(
                tag,
                Kind::Ok,
                None,
                if uid {
                    "UID MOVE completed"
                } else {
                    "MOVE completed"
                },
            ));
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
        let s = self.sel();
        let mut out = Vec::new();
        // Highest sequence number first, so each number is still valid when sent.
        for i in (0..s.uids.len()).rev() {
            if gone.contains(&s.uids[i]) {
                out.push(Data::Expunge(nz(i as u32 + 1)));
                s.uids.remove(i);
                s.flags.remove(i);
            }
        }
        self.seen_change = *self.cache.changes().borrow();
        out
    }

    pub(super) fn expunge_deleted(
        &mut self,
        only: Option<&BTreeSet<u32>>,
    ) -> Result<BTreeSet<u32>, String> {
        let folder = self.sel().folder.id;
        let current = self.cache.messages(folder).map_err(|e| e.to_string())?;
        let doomed: BTreeSet<u32> = current
            .iter()
            .filter(|m| has(&m.flags, "\\Deleted") && only.is_none_or(|o| o.contains(&m.uid)))
            .map(|m| m.uid)
            .collect();
        let list: Vec<u32> = doomed.iter().copied().collect();
        self.cache
            .expunge(folder, &list)
            .map_err(|e| e.to_string())?;
        Ok(doomed)
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
        match self.expunge_deleted(only.as_ref()) {
            Ok(gone) => {
                let mut out: Vec<Out> = self.forget(&gone).into_iter().map(Out::Data).collect();
                out.push(tagged(tag, Kind::Ok, None, "EXPUNGE completed"));
                Self::reply(out)
            }
            Err(e) => Self::reply(vec![store_error(tag, &e)]),
        }
    }

    pub(super) fn search(
        &mut self,
        tag: &Tag<'static>,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Reply {
        let folder = self.sel().folder.id;
        let uids = self.sel().uids.clone();
        let flags = self.sel().flags.clone();
        let metas = match self.cache.messages(folder) {
            Ok(m) => m,
            Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
        };
        let dates: std::collections::HashMap<u32, (i64, u32)> = metas
            .iter()
            .map(|m| (m.uid, (m.internal_date, m.size)))
            .collect();
        let contents: std::collections::HashMap<u32, Vec<u8>> = if search::needs_content(criteria) {
            match self.cache.contents(folder, &uids) {
                Ok(c) => c.into_iter().collect(),
                Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
            }
        } else {
            std::collections::HashMap::new()
        };
        let candidates = uids.iter().zip(&flags).enumerate().map(|(i, (u, f))| {
            let (date, size) = dates.get(u).copied().unwrap_or((0, 0));
            search::Candidate {
                seq: i as u32 + 1,
                uid: *u,
                flags: f,
                recent: false,
                internal_date: date,
                size,
                raw: contents.get(u).map_or(&[][..], Vec::as_slice),
            }
        });
        let bounds = search::Bounds {
            max_seq: uids.len() as u32,
            max_uid: uids.last().copied().unwrap_or(0),
        };
        let found = search::search_all(criteria, candidates, bounds);
        let numbers: Vec<NonZeroU32> = found
            .iter()
            .map(|&(s, u)| nz(if uid { u } else { s }))
            .collect();
        Self::reply(vec![
            Out::Data(Data::Search(numbers)),
            tagged(
                tag,
                Kind::Ok,
                None,
                if uid {
                    "UID SEARCH completed"
                } else {
                    "SEARCH completed"
                },
            ),
        ])
    }
}
