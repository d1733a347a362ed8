//! `letterme proxy`, the user's side: serves the decrypted local cache of the client
//! library to the user's mail client on loopback — IMAP ([`imap`]) and SMTP submission
//! ([`submission`], on the shared core of `letterme-smtp`) — behind local
//! [`credentials`].

pub mod credentials;
pub mod imap;
pub mod submission;
