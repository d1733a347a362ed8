//! The IMAP session core: one parsed command in, responses out, over the local cache.
//!
//! No sockets here. imap-codec parses and encodes, imap-next runs the protocol flows
//! (literals, IDLE); this module decides what each command means (RFC 3501 §6, UIDPLUS
//! RFC 4315, MOVE RFC 6851, UNSELECT RFC 3691, ID RFC 2971, NAMESPACE RFC 2342,
//! SPECIAL-USE RFC 6154, ENABLE RFC 5161). Large FETCH results come out in batches so
//! memory stays bounded whatever the mailbox size.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{DateTime as ChronoDateTime, FixedOffset, TimeZone as _, Utc};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{
    AString, Atom, IString, Literal, NString, QuotedChar, Tag, Vec1,
};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{
    Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreResponse, StoreType,
};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Capability, Code, CodeOther, Data, Greeting, Status};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use letterme_client::cache::{Cache, DELIMITER, Folder, MailMeta, MailboxError, NewMail};

use super::{mime, search};
pub use crate::credentials::Credentials;

/// Messages per FETCH batch.
const FETCH_BATCH: usize = 250;
/// Failed logins before the connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// One response to write.
#[derive(Debug)]
pub enum Out {
    Data(Data<'static>),
    Status(Status<'static>),
}

/// What the driver does after writing the responses.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Write the responses, then start TLS (RFC 3501 §6.2.1).
    StartTls,
    /// Write the responses, then close.
    Close,
}

/// The result of one command.
#[derive(Debug)]
pub struct Reply {
    pub out: Vec<Out>,
    pub next: Next,
    /// More FETCH output to produce with [`Session::fetch_more`].
    pub more: Option<FetchJob>,
}

/// The rest of a FETCH.
#[derive(Debug)]
pub struct FetchJob {
    tag: Tag<'static>,
    uid: bool,
    items: Vec<MessageDataItemName<'static>>,
    /// (sequence number, uid) still to send.
    todo: std::collections::VecDeque<(u32, u32)>,
}

#[derive(Debug)]
struct Selected {
    folder: Folder,
    read_only: bool,
    /// UIDs by sequence number - 1; what the client currently believes.
    uids: Vec<u32>,
    flags: Vec<Vec<String>>,
}

#[derive(Debug)]
enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Selected),
}

/// One IMAP connection's state.
// Reason: independent facts about one connection, not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct Session {
    cache: Arc<Cache>,
    creds: Credentials,
    state: State,
    tls: bool,
    tls_available: bool,
    failures: u32,
    seen_change: u64,
}

fn tagged(tag: &Tag<'static>, kind: Kind, code: Option<Code<'static>>, msg: &str) -> Out {
    let tag = Some(tag.clone());
    let status = match kind {
        Kind::Ok => Status::ok(tag, code, msg.to_owned()),
        Kind::No => Status::no(tag, code, msg.to_owned()),
        Kind::Bad => Status::bad(tag, code, msg.to_owned()),
    };
    Out::Status(status.unwrap_or_else(|_| Status::bad(None, None, "error").expect("valid text")))
}

fn untagged_ok(code: Code<'static>, msg: &str) -> Out {
    Out::Status(Status::ok(None, Some(code), msg.to_owned()).expect("valid text"))
}

#[derive(Clone, Copy)]
enum Kind {
    Ok,
    No,
    Bad,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_owned(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

fn mailbox_of(name: &str) -> Mailbox<'static> {
    Mailbox::try_from(name.to_owned()).unwrap_or(Mailbox::Inbox)
}

fn to_flag(s: &str) -> Option<Flag<'static>> {
    Flag::try_from(s).ok().map(IntoStatic::into_static)
}

fn flag_fetch(flags: &[String]) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| to_flag(f))
        .map(FlagFetch::Flag)
        .collect()
}

fn has(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// NString holding arbitrary message bytes: a literal (NUL is not allowed in one).
fn nstring(mut bytes: Vec<u8>) -> NString<'static> {
    // A literal is any bytes but NUL (RFC 3501 §9, CHAR8); memchr finds one fast.
    if bytes.contains(&0) {
        bytes.retain(|&b| b != 0);
    }
    NString(Some(IString::Literal(Literal::unvalidated(bytes))))
}

fn imap_date(unix: i64) -> DateTime {
    let utc = Utc.timestamp_opt(unix, 0).single().unwrap_or_default();
    let fixed: ChronoDateTime<FixedOffset> = utc.fixed_offset();
    DateTime::try_from(fixed).unwrap_or_else(|_| DateTime::unvalidated(fixed))
}

/// RFC 3501 §6.3.8 wildcard match: `*` matches anything, `%` anything but the delimiter.
/// Dynamic programming over (pattern, name) prefixes, so no pattern can make it exponential.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
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
    pub fn new(cache: Arc<Cache>, creds: Credentials, tls_available: bool) -> Self {
        Self {
            cache,
            creds,
            state: State::NotAuthenticated,
            tls: false,
            tls_available,
            failures: 0,
            seen_change: 0,
        }
    }

    pub fn greeting(&self) -> Greeting<'static> {
        Greeting::ok(
            Some(Code::Capability(self.capabilities())),
            "letter.me local IMAP proxy ready",
        )
        .expect("valid greeting")
    }

    /// Called by the driver once TLS is up.
    pub fn tls_started(&mut self) {
        self.tls = true;
    }

    pub fn is_selected(&self) -> bool {
        matches!(self.state, State::Selected(_))
    }

    pub fn is_authenticated(&self) -> bool {
        !matches!(self.state, State::NotAuthenticated)
    }

    fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1, Capability::LiteralPlus];
        if self.tls_available && !self.tls {
            caps.push(Capability::StartTls);
        }
        // Everything is announced before login too: some clients (imaplib) never ask again.
        {
            caps.extend([
                Capability::Idle,
                Capability::UidPlus,
                Capability::Move,
                Capability::Unselect,
                Capability::Id,
                Capability::Namespace,
                Capability::Enable,
                Capability::ListExtended,
                Capability::try_from("SPECIAL-USE").expect("valid atom"),
            ]);
        }
        Vec1::try_from(caps).expect("not empty")
    }

    fn reply(out: Vec<Out>) -> Reply {
        Reply {
            out,
            next: Next::Continue,
            more: None,
        }
    }

    /// Handles one command.
    pub fn handle(&mut self, command: Command<'static>) -> Reply {
        let tag = command.tag.clone();
        let name = command.body.name();
        let mut reply = self.dispatch(&tag, command.body);
        // Unilateral updates for the selected mailbox (RFC 3501 §7): never EXPUNGE during
        // FETCH, STORE or SEARCH (§7.4.1).
        let allow_expunge = !matches!(name, "FETCH" | "STORE" | "SEARCH");
        if reply.more.is_none() && reply.next == Next::Continue {
            let updates = self.updates(allow_expunge);
            if !updates.is_empty() {
                let last = reply.out.pop();
                reply.out.extend(updates.into_iter().map(Out::Data));
                reply.out.extend(last);
            }
        }
        reply
    }

    fn dispatch(&mut self, tag: &Tag<'static>, body: CommandBody<'static>) -> Reply {
        use CommandBody as C;
        match body {
            C::Capability => Self::reply(vec![
                Out::Data(Data::Capability(self.capabilities())),
                tagged(tag, Kind::Ok, None, "CAPABILITY completed"),
            ]),
            C::Noop | C::Check => Self::reply(vec![tagged(tag, Kind::Ok, None, "done")]),
            C::Logout => Reply {
                out: vec![
                    Out::Status(Status::bye(None, "letter.me proxy logging out").expect("valid")),
                    tagged(tag, Kind::Ok, None, "LOGOUT completed"),
                ],
                next: Next::Close,
                more: None,
            },
            C::StartTLS => {
                // RFC 3501 §6.2.1: only before login, and once.
                if self.tls || !self.tls_available || self.is_authenticated() {
                    Self::reply(vec![tagged(
                        tag,
                        Kind::Bad,
                        None,
                        "STARTTLS is allowed only once, before login",
                    )])
                } else {
                    Reply {
                        out: vec![tagged(tag, Kind::Ok, None, "begin TLS negotiation now")],
                        next: Next::StartTls,
                        more: None,
                    }
                }
            }
            C::Id { .. } => Self::reply(vec![
                Out::Data(Data::Id {
                    parameters: Some(vec![
                        (
                            IString::try_from("name").expect("valid"),
                            NString::try_from("letterme").expect("valid"),
                        ),
                        (
                            IString::try_from("version").expect("valid"),
                            NString::try_from(env!("CARGO_PKG_VERSION")).expect("valid"),
                        ),
                    ]),
                }),
                tagged(tag, Kind::Ok, None, "ID completed"),
            ]),
            C::Login { username, password } => self.login(tag, &username, password.declassify()),
            _ if !self.is_authenticated() => {
                Self::reply(vec![tagged(tag, Kind::Bad, None, "log in first")])
            }
            body => self.authenticated(tag, body),
        }
    }

    fn login(&mut self, tag: &Tag<'static>, user: &AString<'_>, pass: &AString<'_>) -> Reply {
        if self.is_authenticated() {
            return Self::reply(vec![tagged(tag, Kind::Bad, None, "already logged in")]);
        }
        if self.creds.check(user.as_ref(), pass.as_ref()) {
            self.state = State::Authenticated;
            tracing::info!("IMAP login");
            Self::reply(vec![tagged(
                tag,
                Kind::Ok,
                Some(Code::Capability(self.capabilities())),
                "logged in",
            )])
        } else {
            self.failures += 1;
            tracing::warn!(failures = self.failures, "IMAP login failed");
            let code = Some(Code::Other(CodeOther::unvalidated(
                &b"AUTHENTICATIONFAILED"[..],
            )));
            let mut out = vec![tagged(
                tag,
                Kind::No,
                code,
                "wrong username or password; see `letterme proxy credentials`",
            )];
            if self.failures >= MAX_LOGIN_FAILURES {
                out.push(Out::Status(
                    Status::bye(None, "too many failed logins").expect("valid"),
                ));
                return Reply {
                    out,
                    next: Next::Close,
                    more: None,
                };
            }
            Self::reply(out)
        }
    }

    /// Refusal for AUTHENTICATE: only LOGIN is offered (over loopback, optionally TLS).
    pub fn authenticate_refused(&self, tag: &Tag<'static>) -> Status<'static> {
        Status::no(
            Some(tag.clone()),
            None,
            "use LOGIN with the credentials from `letterme proxy credentials`",
        )
        .expect("valid")
    }

    fn authenticated(&mut self, tag: &Tag<'static>, body: CommandBody<'static>) -> Reply {
        use CommandBody as C;
        let r = match body {
            C::Select { mailbox, .. } => return self.select(tag, &mailbox_name(&mailbox), false),
            C::Examine { mailbox, .. } => return self.select(tag, &mailbox_name(&mailbox), true),
            C::Create { mailbox } => self.cache.create_folder(&mailbox_name(&mailbox)),
            C::Delete { mailbox } => {
                let name = mailbox_name(&mailbox);
                let r = self.cache.delete_folder(&name);
                if let State::Selected(s) = &self.state
                    && r.is_ok()
                    && s.folder.name == letterme_client::cache::normalize_name(&name)
                {
                    self.state = State::Authenticated;
                }
                r
            }
            C::Rename { from, to } => self
                .cache
                .rename_folder(&mailbox_name(&from), &mailbox_name(&to)),
            C::Subscribe { mailbox } => self.cache.subscribe(&mailbox_name(&mailbox), true),
            C::Unsubscribe { mailbox } => self.cache.subscribe(&mailbox_name(&mailbox), false),
            C::List {
                reference,
                mailbox_wildcard,
            } => {
                return self.list(
                    tag,
                    &reference,
                    &mailbox_wildcard,
                    ListOptions::default(),
                    false,
                );
            }
            C::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                let opts = ListOptions {
                    subscribed_only: true,
                    ..ListOptions::default()
                };
                return self.list(tag, &reference, &mailbox_wildcard, opts, true);
            }
            C::Namespace => {
                return Self::reply(vec![
                    Out::Data(Data::Namespace {
                        personal: vec![Namespace {
                            prefix: IString::try_from("").expect("valid"),
                            delimiter: Some(QuotedChar::try_from(DELIMITER).expect("valid")),
                            extensions: vec![],
                        }],
                        other: vec![],
                        shared: vec![],
                    }),
                    tagged(tag, Kind::Ok, None, "NAMESPACE completed"),
                ]);
            }
            C::Enable { .. } => {
                // Nothing this server offers needs enabling (RFC 5161 §3.1).
                return Self::reply(vec![
                    Out::Data(Data::Enabled {
                        capabilities: vec![],
                    }),
                    tagged(tag, Kind::Ok, None, "ENABLE completed"),
                ]);
            }
            C::Status {
                mailbox,
                item_names,
            } => return self.status(tag, &mailbox_name(&mailbox), &item_names),
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                return self.append(
                    tag,
                    &mailbox_name(&mailbox),
                    &flags,
                    date.as_ref(),
                    match &message {
                        LiteralOrLiteral8::Literal(l) => l.as_ref(),
                        LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                    },
                );
            }
            C::Login { .. } => {
                return Self::reply(vec![tagged(tag, Kind::Bad, None, "already logged in")]);
            }
            body if self.is_selected() => return self.selected(tag, body),
            other => {
                return Self::reply(vec![tagged(
                    tag,
                    Kind::Bad,
                    None,
                    &format!(
                        "{} needs a selected mailbox or is not supported",
                        other.name()
                    ),
                )]);
            }
        };
        match r {
            Ok(()) => Self::reply(vec![tagged(tag, Kind::Ok, None, "done")]),
            Err(e) => Self::reply(vec![mailbox_error(tag, &e)]),
        }
    }

    /// A mailbox and its messages, or the tagged NO that answers the command.
    fn folder_and_messages(
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

    fn select(&mut self, tag: &Tag<'static>, name: &str, read_only: bool) -> Reply {
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

    fn status(&mut self, tag: &Tag<'static>, name: &str, items: &[StatusDataItemName]) -> Reply {
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

    fn append(
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

    /// STORE, MOVE and EXPUNGE under EXAMINE.
    fn read_only(tag: &Tag<'static>) -> Reply {
        Self::reply(vec![tagged(
            tag,
            Kind::No,
            None,
            "mailbox is read-only (EXAMINE)",
        )])
    }

    fn sel(&mut self) -> &mut Selected {
        match &mut self.state {
            State::Selected(s) => s,
            _ => unreachable!("checked by the caller"),
        }
    }

    fn selected(&mut self, tag: &Tag<'static>, body: CommandBody<'static>) -> Reply {
        use CommandBody as C;
        match body {
            C::Close | C::Unselect => {
                let expunge = matches!(body, C::Close) && !self.sel().read_only;
                if expunge && let Err(e) = self.expunge_deleted(None) {
                    return Self::reply(vec![store_error(tag, &e)]);
                }
                self.state = State::Authenticated;
                Self::reply(vec![tagged(tag, Kind::Ok, None, "done")])
            }
            C::Expunge => self.expunge(tag, None),
            C::ExpungeUid { sequence_set } => self.expunge(tag, Some(&sequence_set)),
            C::Search { criteria, uid, .. } => self.search(tag, criteria.as_ref(), uid),
            C::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => self.fetch(tag, &sequence_set, macro_or_item_names, uid),
            C::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => self.store(tag, &sequence_set, kind, response, &flags, uid),
            C::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox_name(&mailbox), uid, false),
            C::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox_name(&mailbox), uid, true),
            other => Self::reply(vec![tagged(
                tag,
                Kind::Bad,
                None,
                &format!("{} is not supported", other.name()),
            )]),
        }
    }

    /// Resolves a sequence set against the client's view: (seq, uid) pairs in order.
    fn resolve(&mut self, set: &SequenceSet, uid: bool) -> Vec<(u32, u32)> {
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

    fn fetch(
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
    fn note_flags(&mut self, changes: &[(u32, Vec<String>)]) {
        let s = self.sel();
        for (uid, flags) in changes {
            if let Ok(i) = s.uids.binary_search(uid) {
                s.flags[i].clone_from(flags);
            }
        }
        self.seen_change = *self.cache.changes().borrow();
    }

    fn store(
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

    fn copy(
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
    fn forget(&mut self, gone: &BTreeSet<u32>) -> Vec<Data<'static>> {
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

    fn expunge_deleted(&mut self, only: Option<&BTreeSet<u32>>) -> Result<BTreeSet<u32>, String> {
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

    fn expunge(&mut self, tag: &Tag<'static>, set: Option<&SequenceSet>) -> Reply {
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

    fn search(&mut self, tag: &Tag<'static>, criteria: &[SearchKey<'_>], uid: bool) -> Reply {
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

    /// Changes made elsewhere (sync, other sessions) since the client last heard:
    /// EXPUNGE (when allowed), EXISTS, and FETCH FLAGS (RFC 3501 §7.3, §7.4).
    pub fn updates(&mut self, allow_expunge: bool) -> Vec<Data<'static>> {
        let State::Selected(s) = &self.state else {
            return vec![];
        };
        let now = *self.cache.changes().borrow();
        if now == self.seen_change {
            return vec![];
        }
        let Ok(current) = self.cache.messages(s.folder.id) else {
            return vec![];
        };
        let mut out = Vec::new();
        if allow_expunge {
            let present: BTreeSet<u32> = current.iter().map(|m| m.uid).collect();
            let gone: BTreeSet<u32> = s
                .uids
                .iter()
                .copied()
                .filter(|u| !present.contains(u))
                .collect();
            if !gone.is_empty() {
                out.extend(self.forget(&gone));
            }
        }
        let State::Selected(s) = &mut self.state else {
            return out;
        };
        let by_uid: std::collections::HashMap<u32, &MailMeta> =
            current.iter().map(|m| (m.uid, m)).collect();
        for (i, u) in s.uids.iter().enumerate() {
            if let Some(m) = by_uid.get(u)
                && m.flags != s.flags[i]
            {
                s.flags[i].clone_from(&m.flags);
                let items = vec![
                    MessageDataItem::Flags(flag_fetch(&m.flags)),
                    MessageDataItem::Uid(nz(*u)),
                ];
                out.push(Data::Fetch {
                    seq: nz(i as u32 + 1),
                    items: Vec1::try_from(items).expect("not empty"),
                });
            }
        }
        let last = s.uids.last().copied().unwrap_or(0);
        let before = s.uids.len();
        for m in current.iter().filter(|m| m.uid > last) {
            s.uids.push(m.uid);
            s.flags.push(m.flags.clone());
        }
        if s.uids.len() != before {
            out.push(Data::Exists(s.uids.len() as u32));
        }
        if allow_expunge || out.is_empty() {
            self.seen_change = now;
        }
        out
    }
}

fn atom_attr(s: &str) -> FlagNameAttribute<'static> {
    let atom = s.trim_start_matches('\\');
    FlagNameAttribute::from(Atom::try_from(atom.to_owned()).expect("valid attribute"))
}

fn copy_uid(validity: u32, pairs: &[(u32, u32)]) -> Option<Code<'static>> {
    let src: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.0))).collect();
    let dst: Vec<UidElement> = pairs.iter().map(|p| UidElement::Single(nz(p.1))).collect();
    Some(Code::CopyUid {
        uid_validity: nz(validity),
        source: UidSet(Vec1::try_from(src).ok()?),
        destination: UidSet(Vec1::try_from(dst).ok()?),
    })
}

fn mailbox_error(tag: &Tag<'static>, e: &MailboxError) -> Out {
    match e {
        MailboxError::Store(inner) => store_error(tag, &inner.to_string()),
        other => tagged(tag, Kind::No, None, &other.to_string()),
    }
}

fn store_error(tag: &Tag<'static>, e: &str) -> Out {
    tracing::error!(error = %e, "local cache error");
    tagged(
        tag,
        Kind::No,
        Some(Code::Other(CodeOther::unvalidated(&b"SERVERBUG"[..]))),
        "local cache error; see the proxy's log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wildcards_follow_rfc3501() {
        assert!(wildcard(b"*", b"Projects/2026"));
        assert!(!wildcard(b"%", b"Projects/2026"));
        assert!(wildcard(b"Projects/%", b"Projects/2026"));
        assert!(wildcard(b"INBOX", b"INBOX"));
        assert!(!wildcard(b"Sent", b"Sentx"));
        assert!(wildcard(b"%/%", b"Projects/2026"));
        assert!(!wildcard(b"%/%", b"a/b/c"));
        assert!(wildcard(b"*2026", b"Projects/2026"));
        assert!(wildcard(b"", b""));
        // A pattern that is exponential for naive backtracking.
        let hostile = [b"*".repeat(5000), b"x".to_vec()].concat();
        assert!(!wildcard(&hostile, &b"a".repeat(200)));
    }
}
