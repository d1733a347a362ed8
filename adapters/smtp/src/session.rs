//! The SMTP protocol core shared by the inbound MX and the proxy's submission: bytes in,
//! events and replies out, no I/O.
//!
//! RFC 5321 command sequencing with ESMTP (RFC 1869), PIPELINING (RFC 2920), SIZE
//! (RFC 1870), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034/3463), SMTPUTF8
//! (RFC 6531) and STARTTLS (RFC 3207). Command grammar is `smtp-proto`'s; DATA framing and
//! dot-unstuffing are its `DataReceiver`, which does not end a message on a bare-LF
//! terminator. This module adds what a public MX needs on top: bounded lines, messages,
//! recipients and commands, refusal of bare CR/LF, and the transaction state machine.

use std::borrow::Cow;
use std::net::IpAddr;

use letterme_protocol::Address;
use smtp_proto::request::receiver::DataReceiver;

use crate::reply;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_BINARYMIME, MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8, Request,
};

/// MAIL FROM flags of extensions this server does not advertise (DSN, BINARYMIME,
/// REQUIRETLS, CONPERM).
const UNOFFERED_MAIL_FLAGS: u64 =
    MAIL_RET_FULL | MAIL_RET_HDRS | MAIL_BODY_BINARYMIME | MAIL_REQUIRETLS | MAIL_CONPERM;

/// Checks a submission login (RFC 4954). The proxy's local credentials implement it.
pub trait CheckLogin: Send + Sync + std::fmt::Debug {
    /// Must not leak the password's length or content through timing.
    fn check(&self, username: &[u8], password: &[u8]) -> bool;
}

/// Named limits of one session.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4 says 512;
    /// extensions make longer lines legitimate).
    pub max_line: usize,
    /// Largest message (DATA content, after dot-unstuffing).
    pub max_message: usize,
    pub max_recipients: usize,
    /// Commands per session, all kinds.
    pub max_commands: usize,
    /// NOOP, RSET, VRFY, HELP and unknown commands per session.
    pub max_junk_commands: usize,
    /// Syntax and sequence errors per session.
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 2048,
            max_message: 25_000_000,
            max_recipients: 100,
            max_commands: 10_000,
            max_junk_commands: 100,
            max_errors: 20,
        }
    }
}

/// An SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code, empty for the greeting and EHLO.
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// A reply of the catalogue ([`crate::reply`]).
    pub const fn fixed(code: u16, enhanced: &'static str, text: &'static str) -> Self {
        Self {
            code,
            enhanced,
            text: Cow::Borrowed(text),
        }
    }

    /// Wire form; multi-line when `text` has several lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let line = line.trim_end_matches('\r');
            if self.enhanced.is_empty() {
                out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes());
            } else {
                out.extend_from_slice(
                    format!("{}{sep}{} {line}\r\n", self.code, self.enhanced).as_bytes(),
                );
            }
        }
        out
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

/// A complete mail transaction, handed to the driver at the end of DATA.
#[derive(Debug)]
pub struct Transaction {
    pub helo: String,
    /// Reverse-path; empty for the null sender.
    pub mail_from: String,
    pub recipients: Vec<Address>,
    pub data: Vec<u8>,
    pub smtputf8: bool,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Event {
    Reply(Reply),
    /// Check a local recipient, then call [`Session::recipient_checked`].
    CheckRecipient(Address),
    /// Verify and deliver, then call [`Session::message_done`].
    Message(Transaction),
    /// Upgrade the connection to TLS (the 220 was already emitted), then call
    /// [`Session::tls_started`].
    StartTls,
    /// Close the connection (after writing any replies).
    Close,
}

#[derive(Debug)]
enum State {
    Command,
    /// Discarding the rest of an over-long command line.
    SkipLine,
    Data(Box<DataState>),
    /// Waiting for the driver; input is buffered meanwhile.
    Waiting,
    /// Reading an RFC 4954 AUTH response line.
    Auth(AuthStep),
    Closed,
}

#[derive(Debug)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPass(Vec<u8>),
}

struct DataState {
    rx: DataReceiver,
    buf: Vec<u8>,
    too_big: bool,
}

impl std::fmt::Debug for DataState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content.
        f.debug_struct("DataState")
            .field("len", &self.buf.len())
            .field("too_big", &self.too_big)
            .finish_non_exhaustive()
    }
}

/// Configuration shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub domain: String,
    pub limits: Limits,
    pub tls_available: bool,
    /// Submission mode (RFC 6409 with RFC 4954 AUTH PLAIN/LOGIN): MAIL needs a login
    /// these credentials check. `None` for the public MX, which offers no AUTH.
    pub auth: Option<Arc<dyn CheckLogin>>,
}

/// One SMTP session.
// Reason: independent facts about one connection, not a state machine in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    pub peer: IpAddr,
    state: State,
    pending: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    mail_from: Option<String>,
    authenticated: bool,
    smtputf8: bool,
    recipients: Vec<Address>,
    commands: usize,
    junk: usize,
    errors: usize,
}

impl Session {
    pub fn new(cfg: SessionConfig, peer: IpAddr) -> Self {
        Self {
            cfg,
            peer,
            state: State::Command,
            pending: Vec::new(),
            helo: None,
            esmtp: false,
            tls: false,
            mail_from: None,
            authenticated: false,
            smtputf8: false,
            recipients: Vec::new(),
            commands: 0,
            junk: 0,
            errors: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP letter.me", self.cfg.hostname))
    }

    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or_default()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Receiving message content (the DATA timeout applies).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// Feeds bytes from the peer. Stops after an event the driver must answer; the rest of
    /// the input stays buffered until [`Session::resume`].
    pub fn feed(&mut self, input: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(input);
        self.resume()
    }

    /// Processes buffered input.
    pub fn resume(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Closed | State::Waiting => break,
                State::SkipLine => {
                    if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                        self.pending.drain(..=pos);
                        self.state = State::Command;
                    } else {
                        self.pending.clear();
                        break;
                    }
                }
                State::Data(d) => {
                    let mut it = self.pending.iter();
                    let done = if d.too_big {
                        let mut scratch = Vec::new();
                        d.rx.ingest(&mut it, &mut scratch)
                    } else {
                        d.rx.ingest(&mut it, &mut d.buf)
                    };
                    let consumed = self.pending.len() - it.as_slice().len();
                    self.pending.drain(..consumed);
                    if d.buf.len() > self.cfg.limits.max_message {
                        d.too_big = true;
                        d.buf = Vec::new();
                    }
                    if !done {
                        break;
                    }
                    let State::Data(d) = std::mem::replace(&mut self.state, State::Command) else {
                        unreachable!("in the data state");
                    };
                    let ev = self.end_of_data(*d);
                    let wait = matches!(ev, Event::Message(_));
                    out.push(ev);
                    if wait {
                        break;
                    }
                }
                State::Auth(_) => {
                    let Some(pos) = self.pending.iter().position(|&b| b == b'\n') else {
                        if self.pending.len() > self.cfg.limits.max_line {
                            self.pending.clear();
                            self.state = State::SkipLine;
                            out.push(self.error(reply::AUTH_LINE_TOO_LONG));
                        }
                        break;
                    };
                    let line: Vec<u8> = self.pending.drain(..=pos).collect();
                    let State::Auth(step) = std::mem::replace(&mut self.state, State::Command)
                    else {
                        unreachable!("in the auth state");
                    };
                    self.auth_line(step, &line, &mut out);
                }
                State::Command => {
                    let Some(pos) = self.pending.iter().position(|&b| b == b'\n') else {
                        if self.pending.len() > self.cfg.limits.max_line {
                            // RFC 5321 §4.5.3.1.4 / §4.3.2: line too long.
                            self.pending.clear();
                            self.state = State::SkipLine;
                            out.push(self.error(reply::LINE_TOO_LONG));
                        }
                        break;
                    };
                    let line: Vec<u8> = self.pending.drain(..=pos).collect();
                    if line.len() > self.cfg.limits.max_line {
                        out.push(self.error(reply::LINE_TOO_LONG));
                    } else {
                        self.command(&line, &mut out);
                    }
                    if matches!(self.state, State::Waiting | State::Closed) {
                        break;
                    }
                }
            }
            if matches!(out.last(), Some(Event::Close)) {
                self.state = State::Closed;
                break;
            }
        }
        // Close on too many errors, after the replies that caused them.
        if self.errors > self.cfg.limits.max_errors && !matches!(self.state, State::Closed) {
            out.push(Event::Reply(reply::TOO_MANY_ERRORS_CLOSING));
            out.push(Event::Close);
            self.state = State::Closed;
        }
        out
    }

    /// RFC 4954 §4: AUTH, with or without an initial response.
    fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<Event>) {
        if self.cfg.auth.is_none() {
            out.push(self.error(reply::AUTH_NOT_OFFERED_ON_THIS_PORT));
        } else if self.authenticated {
            out.push(self.error(reply::ALREADY_AUTHENTICATED));
        } else if self.mail_from.is_some() {
            out.push(self.error(reply::AUTH_IN_TRANSACTION));
        } else if mechanism == AUTH_PLAIN && initial.is_empty() {
            self.state = State::Auth(AuthStep::Plain);
            out.push(Event::Reply(reply::AUTH_CONTINUE));
        } else if mechanism == AUTH_PLAIN {
            self.auth_line(AuthStep::Plain, initial.as_bytes(), out);
        } else if mechanism == AUTH_LOGIN && initial.is_empty() {
            self.state = State::Auth(AuthStep::LoginUser);
            out.push(Event::Reply(Reply::new(334, "", B64.encode("Username:"))));
        } else if mechanism == AUTH_LOGIN {
            self.auth_line(AuthStep::LoginUser, initial.as_bytes(), out);
        } else {
            out.push(self.error(reply::UNSUPPORTED_MECHANISM));
        }
    }

    fn auth_line(&mut self, step: AuthStep, line: &[u8], out: &mut Vec<Event>) {
        let line = line.trim_ascii();
        if line == b"*" {
            out.push(self.error(reply::AUTHENTICATION_CANCELLED));
            return;
        }
        // "=" is an empty initial response (RFC 4954 §4).
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            B64.decode(line)
        };
        let Ok(decoded) = decoded else {
            out.push(self.error(reply::BAD_BASE64));
            return;
        };
        let (user, pass) = match step {
            AuthStep::LoginUser => {
                self.state = State::Auth(AuthStep::LoginPass(decoded));
                out.push(Event::Reply(Reply::new(334, "", B64.encode("Password:"))));
                return;
            }
            AuthStep::LoginPass(user) => (user, decoded),
            // RFC 4616: [authzid] NUL authcid NUL passwd
            AuthStep::Plain => {
                let mut parts = decoded.split(|&b| b == 0);
                let (Some(authz), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    out.push(self.error(reply::MALFORMED_PLAIN_RESPONSE));
                    return;
                };
                if !authz.is_empty() && authz != user {
                    out.push(self.error(reply::FOREIGN_AUTHORIZATION_IDENTITY));
                    return;
                }
                (user.to_vec(), pass.to_vec())
            }
        };
        let ok = self
            .cfg
            .auth
            .as_ref()
            .is_some_and(|c| c.check(&user, &pass));
        if ok {
            self.authenticated = true;
            out.push(Event::Reply(reply::AUTHENTICATED));
        } else {
            out.push(self.error(reply::WRONG_LOGIN));
        }
    }

    fn error(&mut self, r: Reply) -> Event {
        self.errors += 1;
        Event::Reply(r)
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.smtputf8 = false;
        self.recipients.clear();
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<Event>) {
        self.commands += 1;
        if self.commands > self.cfg.limits.max_commands {
            out.push(Event::Reply(reply::TOO_MANY_COMMANDS_CLOSING));
            out.push(Event::Close);
            return;
        }
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::UnknownCommand) => {
                if self.too_much_junk(out) {
                    return;
                }
                out.push(self.error(reply::COMMAND_NOT_RECOGNIZED));
                return;
            }
            Err(e) => {
                let r = match e {
                    smtp_proto::Error::InvalidSenderAddress => reply::BAD_SENDER_ADDRESS_SYNTAX,
                    smtp_proto::Error::InvalidRecipientAddress => {
                        reply::BAD_RECIPIENT_ADDRESS_SYNTAX
                    }
                    smtp_proto::Error::UnsupportedParameter { .. } => {
                        reply::PARAMETER_NOT_SUPPORTED
                    }
                    smtp_proto::Error::InvalidParameter { .. } => reply::INVALID_PARAMETER,
                    _ => reply::SYNTAX_ERROR,
                };
                out.push(self.error(r));
                return;
            }
        };
        if matches!(
            req,
            Request::Noop { .. } | Request::Rset | Request::Vrfy { .. } | Request::Help { .. }
        ) && self.too_much_junk(out)
        {
            return;
        }
        match req {
            Request::Ehlo { host } => {
                self.reset();
                self.helo = Some(host.clone());
                self.esmtp = true;
                let mut text = format!(
                    "{} greets {host}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8",
                    self.cfg.hostname, self.cfg.limits.max_message
                );
                if self.cfg.tls_available && !self.tls {
                    text.push_str("\nSTARTTLS");
                }
                if self.cfg.auth.is_some() {
                    text.push_str("\nAUTH PLAIN LOGIN");
                }
                out.push(Event::Reply(Reply::new(250, "", text)));
            }
            Request::Helo { host } => {
                self.reset();
                self.helo = Some(host);
                self.esmtp = false;
                out.push(Event::Reply(Reply::new(250, "", self.cfg.hostname.clone())));
            }
            Request::Lhlo { .. } => {
                out.push(self.error(reply::LHLO_IS_FOR_LMTP));
            }
            Request::StartTls => {
                if !self.cfg.tls_available || self.tls {
                    out.push(self.error(reply::STARTTLS_NOT_AVAILABLE));
                } else {
                    out.push(Event::Reply(reply::READY_TO_START_TLS));
                    // RFC 3207 §4.2 and CVE-2011-0411: nothing pipelined before the
                    // handshake may be acted on after it.
                    self.pending.clear();
                    self.state = State::Waiting;
                    out.push(Event::StartTls);
                }
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    out.push(self.error(reply::SAY_EHLO_FIRST));
                } else if self.cfg.auth.is_some() && !self.authenticated {
                    out.push(self.error(reply::AUTHENTICATION_REQUIRED));
                } else if self.mail_from.is_some() {
                    out.push(self.error(reply::NESTED_MAIL_COMMAND));
                } else if from.size > self.cfg.limits.max_message {
                    out.push(Event::Reply(Reply::new(
                        552,
                        "5.3.4",
                        format!(
                            "message size exceeds fixed maximum of {} bytes",
                            self.cfg.limits.max_message
                        ),
                    )));
                } else if from.flags & UNOFFERED_MAIL_FLAGS != 0
                    || from.env_id.is_some()
                    || from.auth.is_some()
                    || from.by != 0
                    || from.hold_for != 0
                    || from.hold_until != 0
                {
                    // RFC 5321 §4.1.1.11: parameters of extensions we did not advertise.
                    out.push(self.error(reply::MAIL_PARAMETER_UNKNOWN));
                } else if from.flags & MAIL_SMTPUTF8 != 0 && !self.esmtp {
                    out.push(self.error(reply::SMTPUTF8_NEEDS_EHLO));
                } else {
                    self.smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
                    self.mail_from = Some(from.address);
                    out.push(Event::Reply(reply::SENDER_OK));
                }
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    out.push(self.error(reply::NEED_MAIL_BEFORE_RCPT));
                } else if self.recipients.len() >= self.cfg.limits.max_recipients {
                    out.push(Event::Reply(reply::TOO_MANY_RECIPIENTS));
                } else {
                    match Address::parse(&to.address) {
                        Err(_) => out.push(self.error(reply::BAD_RECIPIENT_ADDRESS_SYNTAX)),
                        // Never an open relay; submission asks its backend, which names them.
                        Ok(a) if a.domain() != self.cfg.domain && self.cfg.auth.is_none() => {
                            out.push(Event::Reply(Reply::new(
                                550,
                                "5.7.1",
                                format!("relaying to {} denied", a.domain()),
                            )));
                        }
                        Ok(a) if self.recipients.contains(&a) => {
                            out.push(Event::Reply(reply::RECIPIENT_OK_DUPLICATE));
                        }
                        Ok(a) => {
                            self.state = State::Waiting;
                            out.push(Event::CheckRecipient(a));
                        }
                    }
                }
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    out.push(self.error(reply::NEED_MAIL_BEFORE_DATA));
                } else if self.recipients.is_empty() {
                    out.push(self.error(reply::NO_VALID_RECIPIENTS));
                } else {
                    let mut rx = DataReceiver::new();
                    let mut buf = Vec::new();
                    // Prime the receiver as if after a CRLF, so ".\r\n" at once ends an empty message.
                    rx.ingest(&mut b"\r\n".iter(), &mut buf);
                    buf.clear();
                    self.state = State::Data(Box::new(DataState {
                        rx,
                        buf,
                        too_big: false,
                    }));
                    out.push(Event::Reply(reply::START_DATA));
                }
            }
            Request::Bdat { .. } => {
                out.push(self.error(reply::CHUNKING_NOT_OFFERED));
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response, out),
            Request::Rset => {
                self.reset();
                out.push(Event::Reply(reply::OK));
            }
            Request::Noop { .. } => {
                out.push(Event::Reply(reply::OK));
            }
            Request::Vrfy { .. } => {
                // RFC 5321 §3.5.3: cannot verify, but will accept and attempt delivery.
                out.push(Event::Reply(reply::VRFY_CANNOT_VERIFY));
            }
            Request::Help { .. } => {
                out.push(Event::Reply(reply::SEE_RFC_5321));
            }
            Request::Quit => {
                out.push(Event::Reply(reply::BYE));
                out.push(Event::Close);
            }
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                out.push(self.error(reply::COMMAND_NOT_IMPLEMENTED));
            }
        }
    }

    /// Counts a command that moves no mail; past the limit, closes instead of answering.
    fn too_much_junk(&mut self, out: &mut Vec<Event>) -> bool {
        self.junk += 1;
        if self.junk > self.cfg.limits.max_junk_commands {
            out.push(Event::Reply(reply::TOO_MANY_COMMANDS_WITHOUT_MAIL_CLOSING));
            out.push(Event::Close);
            return true;
        }
        false
    }

    fn end_of_data(&mut self, d: DataState) -> Event {
        let reply = if d.too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                format!(
                    "message exceeds fixed maximum size of {} bytes",
                    self.cfg.limits.max_message
                ),
            ))
        } else if has_bare_cr_or_lf(&d.buf) {
            // RFC 5321 §2.3.8: CR and LF only as CRLF. Refused rather than repaired, so a
            // smuggled end-of-data can never mean one thing here and another downstream.
            Some(reply::BARE_CR_OR_LF)
        } else {
            None
        };
        if let Some(r) = reply {
            self.reset();
            return Event::Reply(r);
        }
        let tx = Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: self.mail_from.clone().unwrap_or_default(),
            recipients: std::mem::take(&mut self.recipients),
            data: d.buf,
            smtputf8: self.smtputf8,
        };
        self.state = State::Waiting;
        Event::Message(tx)
    }

    /// The driver's answer to [`Event::CheckRecipient`].
    pub fn recipient_checked(&mut self, rcpt: Address, result: Result<(), Reply>) -> Reply {
        self.state = State::Command;
        match result {
            Ok(()) => {
                self.recipients.push(rcpt);
                reply::RECIPIENT_OK
            }
            Err(r) => {
                if !r.is_positive() {
                    self.errors += 1;
                }
                r
            }
        }
    }

    /// The driver's answer to [`Event::Message`]: the reply for the whole transaction.
    pub fn message_done(&mut self, reply: Reply) -> Reply {
        self.state = State::Command;
        self.reset();
        reply
    }

    /// TLS is up: the session starts over (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.authenticated = false;
        self.reset();
        self.pending.clear();
        self.state = State::Command;
    }
}

/// True when a CR is not followed by LF or an LF is not preceded by CR.
fn has_bare_cr_or_lf(data: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return true;
        }
        if b == b'\r' && data.get(i + 1) != Some(&b'\n') {
            return true;
        }
        prev = b;
    }
    false
}

#[cfg(test)]
mod tests;
