//! The IMAP session core: one parsed command in, responses out, over the local cache.
//!
//! No sockets here. imap-codec parses and encodes, imap-next runs the protocol flows
//! (literals, IDLE); this module decides what each command means (RFC 3501 §6, UIDPLUS
//! RFC 4315, MOVE RFC 6851, UNSELECT RFC 3691, ID RFC 2971, NAMESPACE RFC 2342,
//! SPECIAL-USE RFC 6154, ENABLE RFC 5161). Large FETCH results come out in batches so
//! memory stays bounded whatever the mailbox size.

mod condstore;
mod mailboxes;
mod messages;
mod updates;
mod wire;

use std::borrow::Cow;

use std::fmt::Write as _;

use std::collections::BTreeSet;

use std::num::NonZeroU32;

use std::sync::Arc;

use chrono::{DateTime as ChronoDateTime, FixedOffset, TimeZone as _, Utc};

use imap_codec::imap_types::IntoStatic;

use imap_codec::imap_types::auth::AuthMechanism;

use imap_codec::imap_types::command::{
    Command, CommandBody, FetchModifier, SelectParameter, StoreModifier,
};

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

use letterme_client::cache::{
    Cache, Content, DELIMITER, Fetched, FlagOp, Folder, MailMeta, MailboxError, NewMail, has_flag,
    header_end,
};

use super::extended::{self, Appended, Extended, SearchReturn};
use imap_codec::imap_types::extensions::sort::{SortAlgorithm, SortCriterion};

use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;

use super::{mime, search, sort};
pub use mailboxes::ListOptions;
use wire::{
    Kind, atom_attr, completed, expunge_issued, flag_fetch, imap_date, mailbox_error, nstring, nz,
    nz64, same_flags, store_error, tagged, to_flag, unavailable, untagged_ok,
};

use crate::credentials::Credentials;

/// Messages per FETCH batch.
const FETCH_BATCH: usize = 250;

/// The flags every mailbox has (RFC 3501 §2.3.2); keywords come on top.
const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

/// Failed logins before the connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// One response to write.
#[derive(Debug)]
pub enum Out {
    Data(Data<'static>),
    Status(Status<'static>),
    /// A whole response imap-types cannot express (RFC 5258 CHILDINFO, RFC 4731 ESEARCH),
    /// encoded here; written in turn after everything before it.
    Raw(Vec<u8>),
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

/// The next step of an AUTHENTICATE exchange.
#[derive(Debug)]
pub enum Authenticate {
    /// Ask for the client's response with an empty continuation.
    Continue,
    /// The tagged answer first (it ends the exchange), then anything after it.
    Done(Box<Reply>),
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
// Reason: independent facts about one FETCH, not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct FetchJob {
    tag: Tag<'static>,
    uid: bool,
    items: Vec<MessageDataItemName<'static>>,
    /// (sequence number, uid) still to send.
    todo: std::collections::VecDeque<(u32, u32)>,
    /// Whether a message asked for was expunged by another session meanwhile.
    expunged: bool,
    /// Whether any message was answered (sent, or left out as unchanged).
    answered: bool,
    /// A BINARY part had an encoding that cannot be undone (RFC 3516 §4.3).
    unknown_cte: bool,
    /// CHANGEDSINCE (RFC 7162 §3.1.4.1): only messages with a higher MODSEQ.
    changed_since: Option<u64>,
    /// The message (UID, content) whose blobs must be downloaded before the FETCH goes on.
    wants: Option<(u32, i64)>,
    /// Messages whose download was tried for this FETCH.
    tried: BTreeSet<u32>,
    /// Messages left out because their download failed.
    left_out: BTreeSet<u32>,
    /// Why a message's blobs could not be downloaded: it was left out.
    unavailable: Option<String>,
}

impl FetchJob {
    /// The content whose blobs the FETCH waits for.
    pub fn wants(&self) -> Option<i64> {
        self.wants.map(|(_, content)| content)
    }

    /// The download it waited for ended: the FETCH goes on; a message whose download
    /// failed is left out, and the FETCH answers NO with the reason (RFC 5530 UNAVAILABLE).
    pub fn downloaded(&mut self, failed: Option<String>) {
        if let Some((uid, _)) = self.wants.take() {
            self.tried.insert(uid);
            if failed.is_some() {
                self.unavailable = failed;
            }
        }
    }
}

#[derive(Debug)]
struct Selected {
    folder: Folder,
    read_only: bool,
    /// UIDs by sequence number - 1; what the client currently believes.
    uids: Vec<u32>,
    flags: Vec<Vec<String>>,
    /// The MODSEQ up to which the client has heard of every change.
    modseq: u64,
    /// The messages that are `\Recent` for this session (RFC 3501 §2.3.2).
    recent: BTreeSet<u32>,
    /// The keywords announced in FLAGS.
    keywords: Vec<String>,
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
    /// The cache's change counter when this session last caught up with it.
    seen_change: u64,
    /// The selected mailbox went away: BYE, then close.
    closing: bool,
    /// CONDSTORE is on (RFC 7162 §3.1): FETCH responses carry MODSEQ.
    condstore: bool,
    /// QRESYNC is enabled (RFC 7162 §3.2): VANISHED instead of EXPUNGE.
    qresync: bool,
    /// IMAP4rev2 is enabled (RFC 9051): UTF-8 names, ESEARCH, no `\Recent`.
    rev2: bool,
    /// The UIDs a `SEARCH RETURN (SAVE)` kept for `$` (RFC 5182).
    saved: Vec<u32>,
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
            closing: false,
            condstore: false,
            qresync: false,
            rev2: false,
            saved: Vec::new(),
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

    /// The messages of the selected mailbox whose attachments `command` would read and
    /// are not downloaded yet: for a SEARCH, SORT or THREAD with a BODY or TEXT key, every
    /// such message (the driver downloads them before the command runs).
    pub fn downloads_for(&self, command: &Command<'_>) -> Vec<i64> {
        match &command.body {
            CommandBody::Search { criteria, .. } => self.awaiting_for(criteria.as_ref()),
            CommandBody::Sort {
                search_criteria, ..
            }
            | CommandBody::Thread {
                search_criteria, ..
            } => self.awaiting_for(search_criteria.as_ref()),
            _ => Vec::new(),
        }
    }

    /// [`Session::downloads_for`] a line imap-codec does not parse (`SEARCH RETURN`).
    pub fn downloads_for_unparsed(&self, line: &[u8]) -> Vec<i64> {
        match extended::parse(line) {
            Ok(Some(Extended::Search { criteria, .. })) => self.awaiting_for(&criteria),
            _ => Vec::new(),
        }
    }

    fn awaiting_for(&self, criteria: &[SearchKey<'_>]) -> Vec<i64> {
        let State::Selected(s) = &self.state else {
            return Vec::new();
        };
        if search::content_needed(criteria) != Content::Whole {
            return Vec::new();
        }
        let read = || -> Result<Vec<i64>, letterme_client::ClientError> {
            let mut out = Vec::new();
            // One at a time: each is read with its places filled, as large as its
            // attachments. Copies share their content, downloaded once.
            for uid in self.cache.awaiting_in(s.folder.id)? {
                for row in self.cache.fetch(s.folder.id, &[uid], Content::Whole)? {
                    if messages::search_reads_holes(&row)
                        && let Some(a) = row.2
                        && !out.contains(&a.content)
                    {
                        out.push(a.content);
                    }
                }
            }
            Ok(out)
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the messages waiting for attachments");
            Vec::new()
        })
    }

    pub fn is_selected(&self) -> bool {
        matches!(self.state, State::Selected(_))
    }

    /// The selected mailbox was deleted: the connection ends after the BYE.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    pub fn is_authenticated(&self) -> bool {
        !matches!(self.state, State::NotAuthenticated)
    }

    fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![
            Capability::Imap4Rev1,
            Capability::try_from("IMAP4rev2").expect("valid atom"),
            Capability::LiteralPlus,
            Capability::Auth(AuthMechanism::Plain),
            Capability::SaslIr,
        ];
        // RFC 3501 §6.2.1: STARTTLS only before login.
        if self.tls_available && !self.tls && !self.is_authenticated() {
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
                Capability::try_from("LIST-STATUS").expect("valid atom"),
                Capability::try_from("ESEARCH").expect("valid atom"),
                Capability::try_from("SEARCHRES").expect("valid atom"),
                Capability::try_from("STATUS=SIZE").expect("valid atom"),
                Capability::Binary,
                Capability::Sort(None),
                Capability::Sort(Some(SortAlgorithm::Display)),
                Capability::Thread(ThreadingAlgorithm::OrderedSubject),
                Capability::Thread(ThreadingAlgorithm::References),
                Capability::try_from("MULTIAPPEND").expect("valid atom"),
                Capability::try_from("CREATE-SPECIAL-USE").expect("valid atom"),
                Capability::try_from("SPECIAL-USE").expect("valid atom"),
                Capability::CondStore,
                Capability::QResync,
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
        let reply = self.dispatch(&tag, command.body);
        self.with_updates(name, reply)
    }

    /// Handles a command imap-codec could not parse: one naming the saved search result `$`
    /// (RFC 5182) is answered with the result put in its place; an extension command is
    /// read by [`extended`](super::extended); anything else gets BAD.
    pub fn handle_unparsed(&mut self, line: &[u8]) -> Reply {
        let substituted = match extended::dollars(line) {
            Some(d) if self.is_selected() => Some(self.put_saved(line, &d)),
            _ => None,
        };
        let line = substituted.as_deref().unwrap_or(line);
        if substituted.is_some()
            && let Ok((rest, command)) =
                imap_codec::decode::Decoder::decode(&imap_codec::CommandCodec::default(), line)
            && rest.is_empty()
        {
            return self.handle(command.into_static());
        }
        match extended::parse(line) {
            Ok(Some(command)) => self.handle_extended(command),
            Ok(None) => Self::reply(vec![Out::Status(
                Status::bad(
                    extended::tag_of(line),
                    None,
                    "syntax error; the command could not be parsed",
                )
                .expect("valid text"),
            )]),
            Err(refusal) => Self::reply(vec![tagged(&refusal.tag, Kind::Bad, None, &refusal.text)]),
        }
    }

    /// The line with each `$` replaced by the saved result (RFC 5182 §2.1): UIDs after UID
    /// and in search keys (`UID set`), sequence numbers otherwise. An empty result is a UID
    /// no message has, and turns a sequence-number command into its UID form, so the command
    /// is still checked and answered as usual and acts on nothing.
    fn put_saved(&self, line: &[u8], d: &extended::Dollars) -> Vec<u8> {
        let State::Selected(s) = &self.state else {
            return line.to_vec();
        };
        let saved = &self.saved;
        let seqs: Vec<u32> = saved
            .iter()
            .filter_map(|u| s.uids.binary_search(u).ok().map(|i| i as u32 + 1))
            .collect();
        let set = |numbers: &[u32]| wire::number_set(numbers).map(|s| wire::sequence_text(&s));
        let nothing = u32::MAX.to_string();
        let as_uids = !d.uid && seqs.is_empty();
        let mut out = Vec::with_capacity(line.len() + 16);
        let mut at = 0;
        if as_uids && d.places.iter().any(|p| p.1 == extended::Place::Set) {
            out.extend_from_slice(&line[..d.name_at]);
            out.extend_from_slice(b"UID ");
            at = d.name_at;
        }
        for (span, place) in &d.places {
            let replacement = match place {
                extended::Place::Key => {
                    format!("UID {}", set(saved).unwrap_or_else(|| nothing.clone()))
                }
                extended::Place::UidKey => set(saved).unwrap_or_else(|| nothing.clone()),
                extended::Place::Set if d.uid || as_uids => {
                    set(saved).unwrap_or_else(|| nothing.clone())
                }
                extended::Place::Set => set(&seqs).unwrap_or_else(|| nothing.clone()),
            };
            out.extend_from_slice(&line[at..span.start]);
            out.extend_from_slice(replacement.as_bytes());
            at = span.end;
        }
        out.extend_from_slice(&line[at..]);
        out
    }

    /// Handles a command of an extension imap-codec does not parse ([`Extended`]).
    pub fn handle_extended(&mut self, command: Extended) -> Reply {
        match command {
            Extended::List {
                tag,
                reference,
                patterns,
                options,
            } => {
                let reply = if self.is_authenticated() {
                    self.list(&tag, &reference, &patterns, &options, false)
                } else {
                    Self::reply(vec![tagged(&tag, Kind::Bad, None, "log in first")])
                };
                self.with_updates("LIST", reply)
            }
            _ if !self.is_authenticated() => {
                let tag = match &command {
                    Extended::List { tag, .. }
                    | Extended::Search { tag, .. }
                    | Extended::Create { tag, .. }
                    | Extended::MultiAppend { tag, .. } => tag.clone(),
                };
                Self::reply(vec![tagged(&tag, Kind::Bad, None, "log in first")])
            }
            Extended::Search {
                tag,
                uid,
                returns,
                criteria,
            } => {
                let reply = if self.is_selected() {
                    self.esearch(&tag, &criteria, uid, &returns)
                } else {
                    Self::reply(vec![tagged(
                        &tag,
                        Kind::Bad,
                        None,
                        "select a mailbox first",
                    )])
                };
                self.with_updates("SEARCH", reply)
            }
            Extended::Create { tag, mailbox, uses } => {
                let reply = self.create(&tag, &mailbox, &uses);
                self.with_updates("CREATE", reply)
            }
            Extended::MultiAppend {
                tag,
                mailbox,
                messages,
            } => {
                let reply = self.append(&tag, &self.name_in(&mailbox), messages);
                self.with_updates("APPEND", reply)
            }
        }
    }

    /// A command's reply followed by the unilateral updates it allows.
    fn with_updates(&mut self, name: &str, mut reply: Reply) -> Reply {
        // Unilateral updates for the selected mailbox (RFC 3501 §7): never EXPUNGE during
        // FETCH, STORE or SEARCH (§7.4.1).
        let allow_expunge = !matches!(name, "FETCH" | "STORE" | "SEARCH" | "SORT" | "THREAD");
        if reply.more.is_none() && reply.next == Next::Continue {
            let updates = self.updates(allow_expunge);
            if !updates.is_empty() {
                let last = reply.out.pop();
                reply.out.extend(updates);
                reply.out.extend(last);
            }
            if self.closing {
                reply.next = Next::Close;
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
        let ok = self.creds.check(user.as_ref(), pass.as_ref());
        self.check_login(tag, ok)
    }

    /// The answer to LOGIN or AUTHENTICATE, given whether the credentials were right.
    fn check_login(&mut self, tag: &Tag<'static>, ok: bool) -> Reply {
        if ok {
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

    /// AUTHENTICATE (RFC 3501 §6.2.2) with PLAIN (RFC 4616), the initial response in the
    /// command (SASL-IR, RFC 4959) or after an empty continuation. `response` is the decoded
    /// client response, `None` when the client has not sent one yet.
    pub fn authenticate(
        &mut self,
        tag: &Tag<'static>,
        mechanism: &AuthMechanism<'_>,
        response: Option<&[u8]>,
    ) -> Authenticate {
        if self.is_authenticated() {
            return Authenticate::Done(Box::new(Self::reply(vec![tagged(
                tag,
                Kind::Bad,
                None,
                "already logged in",
            )])));
        }
        if *mechanism != AuthMechanism::Plain {
            return Authenticate::Done(Box::new(Self::reply(vec![tagged(
                tag,
                Kind::No,
                None,
                "only PLAIN is offered, with the credentials from `letterme proxy credentials`",
            )])));
        }
        let Some(response) = response else {
            return Authenticate::Continue;
        };
        // RFC 4616 §2: [authzid] NUL authcid NUL passwd; acting as another user is refused.
        let mut parts = response.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Authenticate::Done(Box::new(Self::reply(vec![tagged(
                tag,
                Kind::Bad,
                None,
                "malformed PLAIN response",
            )])));
        };
        let as_self = authzid.is_empty() || authzid.eq_ignore_ascii_case(user);
        Authenticate::Done(Box::new(
            self.check_login(tag, as_self && self.creds.check(user, pass)),
        ))
    }

    fn authenticated(&mut self, tag: &Tag<'static>, body: CommandBody<'static>) -> Reply {
        use CommandBody as C;
        let r = match body {
            C::Select {
                mailbox,
                parameters,
            } => return self.select(tag, &self.name_in(&mailbox), false, &parameters),
            C::Examine {
                mailbox,
                parameters,
            } => return self.select(tag, &self.name_in(&mailbox), true, &parameters),
            C::Create { mailbox } => return self.create(tag, &mailbox, &[]),
            C::Delete { mailbox } => {
                let name = self.name_in(&mailbox);
                let r = self.cache.delete_folder(&name);
                if let State::Selected(s) = &self.state
                    && r.is_ok()
                    && s.folder.name == letterme_client::cache::normalize_name(&name)
                {
                    self.state = State::Authenticated;
                }
                r
            }
            C::Rename { to, .. } if let Some(refusal) = self.refuse_name(tag, &to) => {
                return refusal;
            }
            C::Rename { from, to } => self
                .cache
                .rename_folder(&self.name_in(&from), &self.name_in(&to)),
            C::Subscribe { mailbox } => self.cache.subscribe(&self.name_in(&mailbox), true),
            C::Unsubscribe { mailbox } => self.cache.subscribe(&self.name_in(&mailbox), false),
            C::List {
                reference,
                mailbox_wildcard,
            } => {
                return self.list(
                    tag,
                    &reference,
                    &[mailbox_wildcard],
                    &ListOptions::default(),
                    false,
                );
            }
            C::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                return self.list(
                    tag,
                    &reference,
                    &[mailbox_wildcard],
                    &ListOptions::default(),
                    true,
                );
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
            C::Enable { capabilities } => return self.enable(tag, capabilities.as_ref()),
            C::Status {
                mailbox,
                item_names,
            } => {
                // RFC 7162 §3.1: asking for HIGHESTMODSEQ turns CONDSTORE on.
                self.condstore |= item_names.contains(&StatusDataItemName::HighestModSeq);
                return self.status(tag, &self.name_in(&mailbox), &item_names);
            }
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let message = match message {
                    LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
                    LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
                };
                return self.append(
                    tag,
                    &self.name_in(&mailbox),
                    vec![Appended {
                        flags,
                        date,
                        message,
                    }],
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
                self.saved.clear();
                let expunge = matches!(body, C::Close) && !self.sel().read_only;
                let folder = self.sel().folder.id;
                if expunge && let Err(e) = self.cache.expunge_deleted(folder, None) {
                    return Self::reply(vec![store_error(tag, &e.to_string())]);
                }
                self.state = State::Authenticated;
                Self::reply(vec![tagged(tag, Kind::Ok, None, "done")])
            }
            C::Expunge => self.expunge(tag, None),
            C::ExpungeUid { sequence_set } => self.expunge(tag, Some(&sequence_set)),
            // RFC 9051 §6.4.4: IMAP4rev2 answers every SEARCH with ESEARCH.
            C::Search { criteria, uid, .. } if self.rev2 => {
                let all = SearchReturn {
                    all: true,
                    ..SearchReturn::default()
                };
                self.esearch(tag, criteria.as_ref(), uid, &all)
            }
            C::Search { criteria, uid, .. } => self.search(tag, criteria.as_ref(), uid),
            C::Sort {
                sort_criteria,
                search_criteria,
                uid,
                ..
            } => self.sort(tag, sort_criteria.as_ref(), search_criteria.as_ref(), uid),
            C::Thread {
                algorithm,
                search_criteria,
                uid,
                ..
            } => self.thread(tag, &algorithm, search_criteria.as_ref(), uid),
            C::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => self.fetch(tag, &sequence_set, macro_or_item_names, uid, &modifiers),
            C::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(u)| *u)
                    .next();
                self.store(
                    tag,
                    &sequence_set,
                    (kind, response),
                    &flags,
                    uid,
                    unchanged_since,
                )
            }
            C::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &self.name_in(&mailbox), uid, false),
            C::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &self.name_in(&mailbox), uid, true),
            other => Self::reply(vec![tagged(
                tag,
                Kind::Bad,
                None,
                &format!("{} is not supported", other.name()),
            )]),
        }
    }
}

#[cfg(test)]
mod tests {
    use imap_codec::decode::Decoder as _;

    use super::mailboxes::wildcard;
    use super::*;

    /// A session over a fresh cache, offering STARTTLS, with the login `u` / `p`.
    fn session() -> (tempfile::TempDir, Session) {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            Cache::open(
                &dir.path().join("mail.db"),
                letterme_client::cache::CacheKey::derive(
                    &letterme_protocol::SigningKeypair::generate(),
                ),
            )
            .unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        (dir, Session::new(Arc::new(cache), creds, true))
    }

    #[test]
    fn every_command_gets_its_tagged_answer() {
        let (_dir, mut s) = session();
        for line in [&b"a LOGIN u p\r\n"[..], b"b CREATE R&D\r\n"] {
            let cmd = imap_codec::CommandCodec::default()
                .decode(line)
                .unwrap()
                .1
                .into_static();
            let r = s.handle(cmd);
            // Every command gets its tagged answer.
            assert!(
                matches!(r.out.last(), Some(Out::Status(Status::Tagged(_)))),
                "{:?}",
                r.out
            );
        }
    }

    #[test]
    fn starttls_is_announced_only_before_login() {
        let (_dir, mut s) = session();
        assert!(s.capabilities().as_ref().contains(&Capability::StartTls));
        let login = imap_codec::CommandCodec::default()
            .decode(b"a LOGIN u p\r\n")
            .unwrap()
            .1
            .into_static();
        s.handle(login);
        assert!(s.is_authenticated());
        assert!(!s.capabilities().as_ref().contains(&Capability::StartTls));
    }

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
