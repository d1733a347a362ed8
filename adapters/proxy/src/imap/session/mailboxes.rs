//! Mailbox commands: SELECT and EXAMINE, LIST and LSUB, STATUS, APPEND.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

/// RFC 3501 §6.3.8 wildcard match: `*` matches anything, `%` anything but the delimiter.
/// Dynamic programming over (pattern, name) prefixes, so no pattern can make it exponential.
pub(super) fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    // matched[j]: the pattern so far matches name[..j].
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        let mut reachable = false;
        for j in 0..=name.len() {
            match p {
                b'*' => {
                    reachable |= matched[j];
                    next[j] = reachable;
                }
                b'%' => {
                    if j > 0 && name[j - 1] == DELIMITER as u8 {
                        reachable = false;
                    }
                    reachable |= matched[j];
                    next[j] = reachable;
                }
                c => next[j] = j > 0 && matched[j - 1] && name[j - 1] == c,
            }
        }
        matched = next;
    }
    matched[name.len()]
}

/// The options of a LIST command: RFC 5258 selection and return options, RFC 5819 STATUS.
// Reason: independent switches named after the RFC's options.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    /// The LIST-EXTENDED form was used: a name that is not a mailbox is `\NonExistent`.
    pub extended: bool,
    pub subscribed_only: bool,
    pub recursive_match: bool,
    pub special_use_only: bool,
    pub return_subscribed: bool,
    pub return_special_use: bool,
    /// RFC 5819: a STATUS with these items after each selectable mailbox listed.
    pub return_status: Vec<StatusDataItemName>,
}

/// A name and the names above it: `a/b/c` gives `a`, `a/b`.
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(move |(i, _)| &name[..i])
}

impl Session {
    /// A mailbox name as the client wrote it, as the cache stores it (UTF-8): modified
    /// UTF-7 from an IMAP4rev1 client (RFC 3501 §5.1.3), UTF-8 after ENABLE IMAP4rev2
    /// (RFC 9051 §5.1). A name that is not valid modified UTF-7 is taken as written.
    pub(super) fn name_in(&self, m: &Mailbox<'_>) -> String {
        match m {
            Mailbox::Inbox => "INBOX".to_owned(),
            Mailbox::Other(o) => self.text_in(o.as_ref()),
        }
    }

    /// A new mailbox name (CREATE, RENAME's target) as the client wrote it, refused when an
    /// IMAP4rev1 client wrote `&` that is not modified UTF-7 (as Dovecot refuses it): it
    /// would be listed back as another name.
    pub(super) fn refuse_name(&self, tag: &Tag<'static>, mailbox: &Mailbox<'_>) -> Option<Reply> {
        let Mailbox::Other(o) = mailbox else {
            return None;
        };
        let wire = String::from_utf8_lossy(o.as_ref());
        (!self.rev2 && wire.contains('&') && letterme_client::cache::utf7::decode(&wire).is_none())
            .then(|| {
                Self::reply(vec![tagged(
                    tag,
                    Kind::No,
                    Some(Code::Other(CodeOther::unvalidated(&b"CANNOT"[..]))),
                    "the name is not valid modified UTF-7 (RFC 3501 section 5.1.3); write & as &-",
                )])
            })
    }

    fn text_in(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        if self.rev2 {
            return text.into_owned();
        }
        letterme_client::cache::utf7::decode(&text).unwrap_or_else(|| text.into_owned())
    }

    /// A stored name as this client reads it (see [`Session::name_in`]); `None` for one
    /// IMAP cannot carry, which is then left out rather than shown as another mailbox.
    pub(super) fn name_out(&self, name: &str) -> Option<Mailbox<'static>> {
        Mailbox::try_from(self.name_wire(name)).ok()
    }

    fn name_wire(&self, name: &str) -> String {
        if self.rev2 {
            name.to_owned()
        } else {
            letterme_client::cache::utf7::encode(name)
        }
    }

    /// A mailbox and its messages, or the tagged NO that answers the command.
    pub(super) fn folder_and_messages(
        &self,
        tag: &Tag<'static>,
        name: &str,
    ) -> Result<(Folder, Vec<MailMeta>), Out> {
        let folder = match self.cache.folder(name) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(tagged(
                    tag,
                    Kind::No,
                    Some(wire::nonexistent()),
                    &format!("no mailbox named {name}"),
                ));
            }
            Err(e) => return Err(store_error(tag, &e.to_string())),
        };
        let messages = self
            .cache
            .messages(folder.id)
            .map_err(|e| store_error(tag, &e.to_string()))?;
        Ok((folder, messages))
    }

    pub(super) fn select(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> Reply {
        // RFC 7162 §3.2.11, RFC 9051 §7.1: a mailbox closed by this SELECT is announced.
        let closed = (self.qresync || self.rev2) && self.is_selected();
        self.state = State::Authenticated;
        self.saved.clear();
        // The previous mailbox is closed whether or not this SELECT succeeds.
        let closing = || {
            closed
                .then(|| untagged_ok(Code::Closed, "previous mailbox closed"))
                .into_iter()
        };
        let qresync = match self.select_parameters(tag, parameters) {
            Ok(q) => q,
            Err(bad) => return Self::reply(closing().chain([bad]).collect()),
        };
        // The change counter first: a change after this point is seen by the next command.
        self.seen_change = *self.cache.changes().borrow();
        let (folder, messages) = match self.folder_and_messages(tag, name) {
            Ok(found) => found,
            Err(refusal) => return Self::reply(closing().chain([refusal]).collect()),
        };
        let mut selected = Selected {
            read_only,
            uids: messages.iter().map(|m| m.uid).collect(),
            flags: Vec::with_capacity(messages.len()),
            modseq: folder.highestmodseq,
            recent: BTreeSet::new(),
            keywords: Vec::new(),
            folder,
        };
        for m in &messages {
            selected.learn_keywords(&m.flags);
        }
        let first_unseen = messages.iter().position(|m| !has_flag(&m.flags, "\\Seen"));
        selected.flags = messages.into_iter().map(|m| m.flags).collect();
        let mut out: Vec<Out> = closing().collect();
        out.extend(selected.flags_responses());
        let (uidvalidity, uidnext, unclaimed, highest) = (
            selected.folder.uidvalidity,
            selected.folder.uidnext,
            selected.folder.recent_uid,
            selected.folder.highestmodseq,
        );
        let exists = selected.uids.len() as u32;
        let uids = selected.uids.clone();
        self.state = State::Selected(selected);
        self.note_recent(&uids, unclaimed);
        out.push(Out::Data(Data::Exists(exists)));
        if self.rev2 {
            // RFC 9051 §6.3.2: SELECT lists the mailbox; no RECENT, no UNSEEN.
            let name = self.sel().folder.name.clone();
            out.extend(self.list_one(&name));
        } else {
            out.push(Out::Data(Data::Recent(self.sel().recent.len() as u32)));
            if let Some(i) = first_unseen {
                out.push(untagged_ok(Code::Unseen(nz(i as u32 + 1)), "first unseen"));
            }
        }
        out.extend([
            untagged_ok(Code::UidValidity(nz(uidvalidity)), "UIDs valid"),
            untagged_ok(Code::UidNext(nz(uidnext)), "predicted next UID"),
            untagged_ok(Code::HighestModSeq(nz64(highest)), "highest MODSEQ"),
        ]);
        // RFC 7162 §3.2.5: with the UIDVALIDITY the client knows, what changed since.
        if let Some((validity, modseq, known)) = qresync
            && validity == uidvalidity
        {
            match self.qresync_since(modseq, known.as_ref()) {
                Ok(more) => out.extend(more),
                Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
            }
        }
        let code = if read_only {
            Code::ReadOnly
        } else {
            Code::ReadWrite
        };
        out.push(tagged(
            tag,
            Kind::Ok,
            Some(code),
            if read_only {
                "EXAMINE completed"
            } else {
                "SELECT completed"
            },
        ));
        Self::reply(out)
    }

    /// The LIST response for one mailbox by its exact name (IMAP4rev2's SELECT sends it).
    fn list_one(&mut self, name: &str) -> Vec<Out> {
        let Ok(pattern) = ListMailbox::try_from(self.name_wire(name)) else {
            return vec![];
        };
        let options = ListOptions {
            extended: true,
            ..ListOptions::default()
        };
        let tag = Tag::try_from("x").expect("valid tag");
        let mut reply = self.list(
            &tag,
            &Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
            &[pattern],
            &options,
            false,
        );
        reply.out.pop();
        reply.out
    }

    /// LIST and LSUB (RFC 3501 §6.3.8, §6.3.9), LIST-EXTENDED (RFC 5258) with several
    /// patterns, and LIST-STATUS (RFC 5819).
    ///
    /// A name that is not a mailbox is listed (`\Noselect`, or `\NonExistent` in the
    /// extended form) when it has a mailbox below it that the pattern does not reach, so a
    /// `%` at one level shows every level that has children; LSUB does the same for
    /// subscribed names, and SUBSCRIBED with RECURSIVEMATCH marks such a name with CHILDINFO.
    pub fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &Mailbox<'_>,
        patterns: &[ListMailbox<'_>],
        opts: &ListOptions,
        lsub: bool,
    ) -> Reply {
        let reference = match reference {
            Mailbox::Inbox => b"INBOX".to_vec(),
            Mailbox::Other(o) => o.as_ref().to_vec(),
        };
        let done = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        // RFC 3501 §6.3.8: an empty pattern asks for the hierarchy delimiter and root.
        let delimiter_query = patterns.len() == 1
            && match &patterns[0] {
                ListMailbox::Token(t) => t.as_ref().is_empty(),
                ListMailbox::String(s) => s.as_ref().is_empty(),
            };
        let patterns: Vec<Vec<u8>> = patterns
            .iter()
            .map(|p| {
                let p: &[u8] = match p {
                    ListMailbox::Token(t) => t.as_ref(),
                    ListMailbox::String(s) => s.as_ref(),
                };
                self.text_in(&[reference.as_slice(), p].concat())
                    .into_bytes()
            })
            .collect();
        if !lsub && delimiter_query && !opts.extended {
            return Self::reply(vec![
                Out::Data(Data::List {
                    items: vec![FlagNameAttribute::Noselect],
                    delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
                    mailbox: Mailbox::try_from(String::new()).unwrap_or(Mailbox::Inbox),
                }),
                tagged(tag, Kind::Ok, None, done),
            ]);
        }
        let (folders, subscribed) = match (self.cache.folders(), self.cache.subscriptions()) {
            (Ok(f), Ok(s)) => (f, s),
            (Err(e), _) | (_, Err(e)) => {
                return Self::reply(vec![store_error(tag, &e.to_string())]);
            }
        };
        let matches = |name: &str| {
            patterns.iter().any(|p| {
                wildcard(p, name.as_bytes())
                    || (name == "INBOX" && wildcard(&p.to_ascii_uppercase(), name.as_bytes()))
            })
        };
        let existing: std::collections::BTreeMap<&str, &Folder> =
            folders.iter().map(|f| (f.name.as_str(), f)).collect();
        // Every name there is: mailboxes, subscriptions, and the levels above them.
        let mut names: BTreeSet<&str> = existing.keys().copied().collect();
        names.extend(subscribed.iter().map(String::as_str));
        for n in names.clone() {
            names.extend(ancestors(n));
        }
        // INBOX first, as clients expect; then by name.
        let mut order: Vec<&str> = names.into_iter().collect();
        order.sort_by_key(|n| *n != "INBOX");
        let mailboxes: Vec<&str> = existing.keys().copied().collect();
        let subscriptions: Vec<&str> = subscribed.iter().map(String::as_str).collect();
        let below = |name: &str, set: &[&str]| {
            let prefix = format!("{name}{DELIMITER}");
            set.iter().any(|n| n.starts_with(&prefix))
        };
        // Below `name`, something in `set` that the patterns do not reach themselves.
        let hidden_below = |name: &str, set: &[&str]| {
            let prefix = format!("{name}{DELIMITER}");
            set.iter().any(|n| n.starts_with(&prefix) && !matches(n))
        };
        let nonexistent = if opts.extended || self.rev2 {
            atom_attr("\\NonExistent")
        } else {
            FlagNameAttribute::Noselect
        };
        let mut out = Vec::new();
        for name in order {
            if !matches(name) {
                continue;
            }
            let folder = existing.get(name).copied();
            let is_subscribed = subscribed.contains(name);
            let mut items: Vec<FlagNameAttribute<'static>> = Vec::new();
            let mut child_subscribed = false;
            if lsub {
                if !is_subscribed && !hidden_below(name, &subscriptions) {
                    continue;
                }
                if folder.is_none() || !is_subscribed {
                    items.push(FlagNameAttribute::Noselect);
                }
            } else {
                if opts.subscribed_only {
                    // RFC 5258 §3.5: CHILDINFO for any listed name with a subscribed child.
                    child_subscribed = opts.recursive_match && below(name, &subscriptions);
                    if !is_subscribed && !child_subscribed {
                        continue;
                    }
                }
                if opts.special_use_only && folder.is_none_or(|f| f.special.is_none()) {
                    continue;
                }
                if folder.is_none() {
                    let placeholder = (is_subscribed && opts.subscribed_only)
                        || child_subscribed
                        || hidden_below(name, &mailboxes);
                    if !placeholder {
                        continue;
                    }
                    items.push(nonexistent.clone());
                }
                items.push(atom_attr(if below(name, &mailboxes) {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }));
                if let Some(special) = folder.and_then(|f| f.special.as_deref())
                    && (opts.return_special_use || !opts.subscribed_only)
                {
                    items.push(atom_attr(special));
                }
                if is_subscribed && (opts.return_subscribed || opts.subscribed_only) {
                    items.push(atom_attr("\\Subscribed"));
                }
            }
            let delimiter = Some(QuotedChar::try_from(DELIMITER).expect("valid"));
            let Some(mailbox) = self.name_out(name) else {
                continue;
            };
            out.push(if lsub {
                Out::Data(Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                })
            } else if child_subscribed {
                // RFC 5258 §3.5: CHILDINFO, which imap-types cannot encode yet.
                Out::Raw(wire::list_childinfo(&items, mailbox))
            } else {
                Out::Data(Data::List {
                    items,
                    delimiter,
                    mailbox,
                })
            });
            if let Some(f) = folder
                && !opts.return_status.is_empty()
            {
                match self.status_data(f, &opts.return_status) {
                    Ok(d) => out.push(Out::Data(d)),
                    Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
                }
            }
        }
        out.push(tagged(tag, Kind::Ok, None, done));
        Self::reply(out)
    }

    pub(super) fn status(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        items: &[StatusDataItemName],
    ) -> Reply {
        let folder = match self.cache.folder(name) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Self::reply(vec![tagged(
                    tag,
                    Kind::No,
                    Some(wire::nonexistent()),
                    &format!("no mailbox named {name}"),
                )]);
            }
            Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
        };
        match self.status_data(&folder, items) {
            Ok(data) => Self::reply(vec![
                Out::Data(data),
                tagged(tag, Kind::Ok, None, "STATUS completed"),
            ]),
            Err(e) => Self::reply(vec![store_error(tag, &e.to_string())]),
        }
    }

    /// The STATUS response for one mailbox (RFC 3501 §6.3.10, RFC 7162 §3.1.6).
    pub(super) fn status_data(
        &self,
        folder: &Folder,
        items: &[StatusDataItemName],
    ) -> Result<Data<'static>, letterme_client::ClientError> {
        let messages = self.cache.messages(folder.id)?;
        let count = |want: &dyn Fn(&MailMeta) -> bool| messages.iter().filter(|m| want(m)).count();
        let data: Vec<StatusDataItem> = items
            .iter()
            .map(|i| match i {
                StatusDataItemName::Messages => StatusDataItem::Messages(messages.len() as u32),
                StatusDataItemName::Recent => {
                    StatusDataItem::Recent(count(&|m| m.uid >= folder.recent_uid) as u32)
                }
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(folder.uidnext)),
                StatusDataItemName::UidValidity => {
                    StatusDataItem::UidValidity(nz(folder.uidvalidity))
                }
                StatusDataItemName::Unseen => {
                    StatusDataItem::Unseen(count(&|m| !has_flag(&m.flags, "\\Seen")) as u32)
                }
                StatusDataItemName::Deleted => {
                    StatusDataItem::Deleted(count(&|m| has_flag(&m.flags, "\\Deleted")) as u32)
                }
                StatusDataItemName::DeletedStorage => StatusDataItem::DeletedStorage(
                    messages
                        .iter()
                        .filter(|m| has_flag(&m.flags, "\\Deleted"))
                        .map(|m| u64::from(m.size))
                        .sum(),
                ),
                StatusDataItemName::HighestModSeq => {
                    StatusDataItem::HighestModSeq(folder.highestmodseq)
                }
                // RFC 8438.
                StatusDataItemName::Size => {
                    StatusDataItem::Size(messages.iter().map(|m| u64::from(m.size)).sum())
                }
            })
            .collect();
        let mailbox = self.name_out(&folder.name).ok_or_else(|| {
            letterme_client::ClientError::Io(format!(
                "the mailbox name {:?} cannot be written in IMAP",
                folder.name
            ))
        })?;
        Ok(Data::Status {
            mailbox,
            items: Cow::Owned(data),
        })
    }

    /// CREATE (RFC 3501 §6.3.3), with CREATE-SPECIAL-USE's USE option (RFC 6154 §3): one
    /// special use per mailbox; any other gets `NO [USE]`.
    pub(super) fn create(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        uses: &[String],
    ) -> Reply {
        if let Some(refusal) = self.refuse_name(tag, mailbox) {
            return refusal;
        }
        let name = &self.name_in(mailbox);
        let use_code = || Some(Code::Other(CodeOther::unvalidated(&b"USE"[..])));
        if uses.len() > 1 {
            return Self::reply(vec![tagged(
                tag,
                Kind::No,
                use_code(),
                "a mailbox here has at most one special use",
            )]);
        }
        match self
            .cache
            .create_folder(name, uses.first().map(String::as_str))
        {
            Ok(()) => Self::reply(vec![tagged(tag, Kind::Ok, None, "CREATE completed")]),
            Err(e @ MailboxError::UnsupportedUse(_)) => {
                Self::reply(vec![tagged(tag, Kind::No, use_code(), &e.to_string())])
            }
            Err(e) => Self::reply(vec![mailbox_error(tag, &e)]),
        }
    }

    /// APPEND (RFC 3501 §6.3.11) of one message or, with MULTIAPPEND (RFC 3502), of several,
    /// all or none; `APPENDUID` names what was filed (RFC 4315).
    pub(super) fn append(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        messages: Vec<Appended>,
    ) -> Reply {
        let folder = match self.cache.folder(name) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Self::reply(vec![tagged(
                    tag,
                    Kind::No,
                    Some(Code::TryCreate),
                    &format!("no mailbox named {name}"),
                )]);
            }
            Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
        };
        let mails: Vec<NewMail> = messages
            .into_iter()
            .map(|m| {
                // Only the Sent mailbox deduplicates: the proxy's SMTP already filed a copy.
                let message_id = if folder.special.as_deref() == Some("\\Sent") {
                    mail_parser::MessageParser::default()
                        .parse_headers(&m.message)
                        .and_then(|p| p.message_id().map(|id| format!("<{id}>")))
                } else {
                    None
                };
                NewMail {
                    folder: folder.name.clone(),
                    flags: m.flags.iter().map(ToString::to_string).collect(),
                    internal_date: m
                        .date
                        .map_or_else(|| letterme_client::now() as i64, |d| d.as_ref().timestamp()),
                    raw: m.message,
                    message_id,
                    pieces: vec![],
                }
            })
            .collect();
        match self.cache.append_all(&mails) {
            Ok((validity, uids)) => {
                let code = match uids.as_slice() {
                    [uid] => Code::AppendUid {
                        uid_validity: nz(validity),
                        uid: nz(*uid),
                    },
                    _ => Code::Other(CodeOther::unvalidated(
                        format!("APPENDUID {validity} {}", wire::in_order_text(&uids)).into_bytes(),
                    )),
                };
                Self::reply(vec![tagged(tag, Kind::Ok, Some(code), "APPEND completed")])
            }
            Err(e) => Self::reply(vec![mailbox_error(tag, &e)]),
        }
    }
}
