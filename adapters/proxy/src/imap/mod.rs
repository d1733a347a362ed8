//! The local IMAP server of `letterme proxy`: serves the decrypted local cache to the
//! user's mail client on loopback (DESIGN.md §3, §7.5).
//!
//! `session` is the protocol core (command in, responses out); `server` the tokio driver;
//! `mime` and `search` answer FETCH and SEARCH from the RFC 5322 bytes; `extended` reads
//! the extension commands imap-codec does not parse.

pub mod extended;
pub mod mime;
pub mod search;
pub mod server;
pub mod session;
pub mod sort;

pub use server::{ImapProxy, serve};
