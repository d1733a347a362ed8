//! Protocol adapters that bridge letter.me and classic mail.
//!
//! `smtp_in` accepts legacy mail: it verifies SPF, DKIM and DMARC, lets `letterme-policy`
//! decide, and seals each accepted message to its recipients before anything touches disk.
//! `imap_proxy` and `submission` are the user's local IMAP and SMTP (`letterme proxy`),
//! serving the decrypted local cache on loopback. Still to come: `smtp_out` (DKIM-signed
//! delivery or a notice). Each adapter is a sans-I/O protocol core — bytes in, events and
//! replies out — plus a thin tokio driver.

pub mod credentials;
pub mod imap_proxy;
pub mod smtp_in;
pub mod submission;
