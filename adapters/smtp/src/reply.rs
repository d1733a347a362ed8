//! The reply catalogue: every reply the SMTP services send with a fixed text, in one place,
//! as code (RFC 5321 §4.2), enhanced status code (RFC 3463, RFC 2034; empty for the
//! greeting-style replies) and text. Replies whose text names something only known at the
//! time (an address, a size, a host name) are built with [`Reply::new`] where that is known.

use crate::session::Reply;

pub const SEE_RFC_5321: Reply = Reply::fixed(214, "2.0.0", "see RFC 5321");
pub const READY_TO_START_TLS: Reply = Reply::fixed(220, "2.0.0", "ready to start TLS");
pub const BYE: Reply = Reply::fixed(221, "2.0.0", "bye");
pub const AUTHENTICATED: Reply = Reply::fixed(235, "2.7.0", "authenticated");
pub const SEALED_AND_STORED: Reply = Reply::fixed(250, "2.0.0", "message sealed and stored");
pub const OK: Reply = Reply::fixed(250, "2.0.0", "ok");
pub const SENDER_OK: Reply = Reply::fixed(250, "2.1.0", "sender ok");
pub const RECIPIENT_OK: Reply = Reply::fixed(250, "2.1.5", "recipient ok");
pub const RECIPIENT_OK_DUPLICATE: Reply = Reply::fixed(250, "2.1.5", "recipient ok (duplicate)");
pub const VRFY_CANNOT_VERIFY: Reply = Reply::fixed(
    252,
    "2.5.0",
    "cannot VRFY user; send mail and it will be delivered if the user exists",
);
pub const AUTH_CONTINUE: Reply = Reply::fixed(334, "", "");
pub const START_DATA: Reply = Reply::fixed(354, "", "end data with <CR><LF>.<CR><LF>");
pub const TIMEOUT_CLOSING: Reply = Reply::fixed(421, "4.4.2", "timeout; closing");
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::fixed(421, "4.7.0", "too many connections; try again later");
pub const TOO_MANY_CONNECTIONS_FROM_YOU: Reply = Reply::fixed(
    421,
    "4.7.0",
    "too many connections from your address; try again later",
);
pub const TOO_MANY_COMMANDS_CLOSING: Reply =
    Reply::fixed(421, "4.7.0", "too many commands; closing");
pub const TOO_MANY_COMMANDS_WITHOUT_MAIL_CLOSING: Reply =
    Reply::fixed(421, "4.7.0", "too many commands without mail; closing");
pub const TOO_MANY_ERRORS_CLOSING: Reply = Reply::fixed(421, "4.7.0", "too many errors; closing");
pub const RECIPIENT_LOOKUP_FAILED: Reply =
    Reply::fixed(451, "4.3.0", "temporary failure looking up the recipient");
pub const LOCAL_FAILURE_NOTHING_STORED: Reply = Reply::fixed(
    451,
    "4.3.0",
    "temporary local failure; nothing was stored, try again later",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, "4.5.3", "too many recipients");
pub const COMMAND_NOT_RECOGNIZED: Reply = Reply::fixed(500, "5.5.1", "command not recognized");
pub const LHLO_IS_FOR_LMTP: Reply = Reply::fixed(500, "5.5.1", "LHLO is for LMTP");
pub const LINE_TOO_LONG: Reply = Reply::fixed(500, "5.5.2", "line too long");
pub const AUTH_LINE_TOO_LONG: Reply =
    Reply::fixed(500, "5.5.6", "authentication exchange line too long");
pub const AUTHENTICATION_CANCELLED: Reply = Reply::fixed(501, "5.0.0", "authentication cancelled");
pub const BAD_RECIPIENT_ADDRESS_SYNTAX: Reply =
    Reply::fixed(501, "5.1.3", "bad recipient address syntax");
pub const BAD_SENDER_ADDRESS_SYNTAX: Reply =
    Reply::fixed(501, "5.1.7", "bad sender address syntax");
pub const BAD_BASE64: Reply = Reply::fixed(501, "5.5.2", "cannot decode the base64 response");
pub const MALFORMED_PLAIN_RESPONSE: Reply = Reply::fixed(501, "5.5.2", "malformed PLAIN response");
pub const SYNTAX_ERROR: Reply = Reply::fixed(501, "5.5.2", "syntax error");
pub const INVALID_PARAMETER: Reply = Reply::fixed(501, "5.5.4", "invalid parameter");
pub const AUTH_NOT_OFFERED_ON_THIS_PORT: Reply =
    Reply::fixed(502, "5.5.1", "AUTH not offered on this port");
pub const CHUNKING_NOT_OFFERED: Reply = Reply::fixed(502, "5.5.1", "CHUNKING not offered");
pub const COMMAND_NOT_IMPLEMENTED: Reply = Reply::fixed(502, "5.5.1", "command not implemented");
pub const STARTTLS_NOT_AVAILABLE: Reply = Reply::fixed(502, "5.5.1", "STARTTLS not available");
pub const ALREADY_AUTHENTICATED: Reply = Reply::fixed(503, "5.5.1", "already authenticated");
pub const AUTH_IN_TRANSACTION: Reply = Reply::fixed(
    503,
    "5.5.1",
    "AUTH is not allowed during a mail transaction",
);
pub const NEED_MAIL_BEFORE_DATA: Reply = Reply::fixed(503, "5.5.1", "need MAIL before DATA");
pub const NEED_MAIL_BEFORE_RCPT: Reply = Reply::fixed(503, "5.5.1", "need MAIL before RCPT");
pub const NESTED_MAIL_COMMAND: Reply = Reply::fixed(503, "5.5.1", "nested MAIL command");
pub const SAY_EHLO_FIRST: Reply = Reply::fixed(503, "5.5.1", "say EHLO first");
pub const SMTPUTF8_NEEDS_EHLO: Reply = Reply::fixed(503, "5.5.1", "SMTPUTF8 needs EHLO");
pub const UNSUPPORTED_MECHANISM: Reply =
    Reply::fixed(504, "5.5.4", "unsupported mechanism; use PLAIN or LOGIN");
pub const AUTHENTICATION_REQUIRED: Reply = Reply::fixed(
    530,
    "5.7.0",
    "authentication required; see `letterme proxy credentials`",
);
pub const FOREIGN_AUTHORIZATION_IDENTITY: Reply =
    Reply::fixed(535, "5.7.8", "authorization identity must be the user");
pub const WRONG_LOGIN: Reply = Reply::fixed(
    535,
    "5.7.8",
    "wrong username or password; see `letterme proxy credentials`",
);
pub const MESSAGE_TOO_LARGE_TO_STORE: Reply =
    Reply::fixed(552, "5.3.4", "message too large to store");
pub const NO_VALID_RECIPIENTS: Reply = Reply::fixed(554, "5.5.1", "no valid recipients");
pub const BARE_CR_OR_LF: Reply = Reply::fixed(
    554,
    "5.6.0",
    "message has bare CR or LF line endings; refused",
);
pub const UNPARSABLE_MESSAGE: Reply = Reply::fixed(554, "5.6.0", "the message could not be parsed");
pub const MAIL_PARAMETER_UNKNOWN: Reply = Reply::fixed(
    555,
    "5.5.4",
    "MAIL parameter not recognized or not implemented",
);
pub const PARAMETER_NOT_SUPPORTED: Reply = Reply::fixed(555, "5.5.4", "parameter not supported");
