//! Protocol adapters that bridge letter.me and classic mail.
//!
//! `smtp_in` accepts legacy mail: it verifies SPF, DKIM and DMARC, lets `letterme-policy`
//! decide, and seals each accepted message to its recipients before anything touches disk.
//! Still to come: `smtp_out` (DKIM-signed delivery or a notice), `imap_proxy` and
//! `submission` (the user's local IMAP and SMTP). Each adapter is a sans-I/O protocol core —
//! bytes in, events and replies out — plus a thin tokio driver.

pub mod smtp_in;
