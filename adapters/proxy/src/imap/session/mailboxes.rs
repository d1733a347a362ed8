//! Mailbox commands: SELECT and EXAMINE, LIST and LSUB, STATUS, APPEND.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_owned(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

pub(super) fn mailbox_of(name: &str) -> Mailbox<'static> {
    Mailbox::try_from(name.to_owned()).unwrap_or(Mailbox::Inbox)
}

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

/// The options of a LIST command (RFC 5258 selection and return options).
// Reason: four independent switches named after the RFC's options.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ListOptions {
    pub subscribed_only: bool,
    pub return_subscribed: bool,
    pub return_special_use: bool,
    pub special_use_only: bool,
}

impl Session {
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
                    None,
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

    pub(super) fn select(&mut self, tag: &Tag<'static>, name: &str, read_only: bool) -> Reply {
        self.state = State::Authenticated;
        let (folder, messages) = match self.folder_and_messages(tag, name) {
            Ok(found) => found,
            Err(refusal) => return Self::reply(vec![refusal]),
        };
        self.seen_change = *self.cache.changes().borrow();
        let exists = messages.len() as u32;
        let first_unseen = messages.iter().position(|m| !has(&m.flags, "\\Seen"));
        let mut out = vec![
            Out::Data(Data::Flags(
                ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
                    .into_iter()
                    .filter_map(to_flag)
                    .collect(),
            )),
            untagged_ok(
                Code::PermanentFlags(
                    ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
                        .into_iter()
                        .filter_map(to_flag)
                        .map(FlagPerm::Flag)
                        .chain([FlagPerm::Asterisk])
                        .collect(),
                ),
                "flags permitted",
            ),
            Out::Data(Data::Exists(exists)),
            Out::Data(Data::Recent(0)),
            untagged_ok(Code::UidValidity(nz(folder.uidvalidity)), "UIDs valid"),
            untagged_ok(Code::UidNext(nz(folder.uidnext)), "predicted next UID"),
        ];
        if let Some(i) = first_unseen {
            out.push(untagged_ok(Code::Unseen(nz(i as u32 + 1)), "first unseen"));
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
        self.state = State::Selected(Selected {
            folder,
            read_only,
            uids: messages.iter().map(|m| m.uid).collect(),
            flags: messages.into_iter().map(|m| m.flags).collect(),
        });
        Self::reply(out)
    }

    /// LIST and LSUB, and LIST-EXTENDED (RFC 5258) through [`ListOptions`].
    pub fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        opts: ListOptions,
        lsub: bool,
    ) -> Reply {
        let pattern: &[u8] = match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        };
        let reference = match reference {
            Mailbox::Inbox => b"INBOX".to_vec(),
            Mailbox::Other(o) => o.as_ref().to_vec(),
        };
        let mut out = Vec::new();
        if pattern.is_empty() && !lsub {
            // RFC 3501 §6.3.8: the hierarchy delimiter and root.
            out.push(Out::Data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
                mailbox: Mailbox::try_from(String::new()).unwrap_or(Mailbox::Inbox),
            }));
            out.push(tagged(tag, Kind::Ok, None, "LIST completed"));
            return Self::reply(out);
        }
        let full: Vec<u8> = [reference.as_slice(), pattern].concat();
        let folders = match self.cache.folders() {
            Ok(f) => f,
            Err(e) => return Self::reply(vec![store_error(tag, &e.to_string())]),
        };
        for f in &folders {
            let name = f.name.as_bytes();
            let matches = wildcard(&full, name)
                || (f.name == "INBOX" && wildcard(&full.to_ascii_uppercase(), name));
            if !matches
                || (opts.subscribed_only && !f.subscribed)
                || (opts.special_use_only && f.special.is_none())
            {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", f.name);
            let children = folders.iter().any(|c| c.name.starts_with(&prefix));
            let mut items: Vec<FlagNameAttribute<'static>> = vec![atom_attr(if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            })];
            if !lsub
                && (opts.return_special_use || !opts.subscribed_only)
                && let Some(s) = &f.special
            {
                items.push(atom_attr(s));
            }
            if (opts.return_subscribed || (opts.subscribed_only && !lsub)) && f.subscribed {
                items.push(atom_attr("\\Subscribed"));
            }
            let data = if lsub {
                Data::Lsub {
                    items,
                    delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
                    mailbox: mailbox_of(&f.name),
                }
            } else {
                Data::List {
                    items,
                    delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
                    mailbox: mailbox_of(&f.name),
                }
            };
            out.push(Out::Data(data));
        }
        out.push(tagged(
            tag,
            Kind::Ok,
            None,
            if lsub {
                "LSUB completed"
            } else {
                "LIST completed"
            },
        ));
        Self::reply(out)
    }

    pub(super) fn status(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        items: &[StatusDataItemName],
    ) -> Reply {
        let (folder, messages) = match self.folder_and_messages(tag, name) {
            Ok(found) => found,
            Err(refusal) => return Self::reply(vec![refusal]),
        };
        let count = |flag: &str, want: bool| {
            messages
                .iter()
                .filter(|m| has(&m.flags, flag) == want)
                .count() as u32
        };
        let data: Vec<StatusDataItem> = items
            .iter()
            .filter_map(|i| match i {
                StatusDataItemName::Messages => {
                    Some(StatusDataItem::Messages(messages.len() as u32))
                }
                StatusDataItemName::Recent => Some(StatusDataItem::Recent(0)),
                StatusDataItemName::UidNext => Some(StatusDataItem::UidNext(nz(folder.uidnext))),
                StatusDataItemName::UidValidity => {
                    Some(StatusDataItem::UidValidity(nz(folder.uidvalidity)))
                }
                StatusDataItemName::Unseen => Some(StatusDataItem::Unseen(count("\\Seen", false))),
                StatusDataItemName::Deleted => {
                    Some(StatusDataItem::Deleted(count("\\Deleted", true)))
                }
                StatusDataItemName::DeletedStorage => Some(StatusDataItem::DeletedStorage(
                    messages
                        .iter()
                        .filter(|m| has(&m.flags, "\\Deleted"))
                        .map(|m| u64::from(m.size))
                        .sum(),
                )),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect();
        Self::reply(vec![
            Out::Data(Data::Status {
                mailbox: mailbox_of(&folder.name),
                items: Cow::Owned(data),
            }),
            tagged(tag, Kind::Ok, None, "STATUS completed"),
        ])
    }

    pub(super) fn append(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        flags: &[Flag<'_>],
        date: Option<&DateTime>,
        message: &[u8],
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
        // Only the Sent mailbox deduplicates: the proxy's SMTP already filed a copy there.
        let message_id = if folder.special.as_deref() == Some("\\Sent") {
            mail_parser::MessageParser::default()
                .parse_headers(message)
                .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        } else {
            None
        };
        let internal_date =
            date.map_or_else(|| letterme_client::now() as i64, |d| d.as_ref().timestamp());
        let mail = NewMail {
            folder: folder.name.clone(),
            flags: flags.iter().map(ToString::to_string).collect(),
            internal_date,
            raw: message.to_vec(),
            message_id,
        };
        match self.cache.append(&mail) {
            Ok((validity, uid, _)) => Self::reply(vec![tagged(
                tag,
                Kind::Ok,
                Some(Code::AppendUid {
                    uid_validity: nz(validity),
                    uid: nz(uid),
                }),
                "APPEND completed",
            )]),
            Err(e) => Self::reply(vec![mailbox_error(tag, &e)]),
        }
    }
}
