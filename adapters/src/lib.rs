//! Protocol adapters that bridge letter.me and classic mail.
//!
//! `smtp_in` accepts legacy mail: it verifies SPF, DKIM and DMARC, lets `letterme-policy`
//! decide, and seals each accepted message to its recipients before anything touches disk.
//! `imap_proxy` and `submission` are the user's local IMAP and SMTP (`letterme proxy`),
//! serving the decrypted local cache on loopback. `smtp_out` delivers what users send to
//! ordinary addresses (the message, DKIM-signed, or only a notice), with lettre as its SMTP
//! client. `records` is the DNS a domain publishes, and the live check of it. The server
//! adapters are a sans-I/O protocol core — bytes in, events and replies out — plus a thin
//! tokio driver.

pub mod credentials;
pub mod imap_proxy;
pub mod records;
pub mod smtp_in;
pub mod smtp_out;
pub mod submission;
