//! Protocol adapters that bridge letter.me and classic mail.
//!
//! This crate will hold `smtp_in` (inbound SMTP: verify SPF/DKIM/DMARC, seal to the
//! recipient before anything touches disk), `smtp_out` (DKIM-signed delivery or a notice to
//! ordinary addresses), `imap_proxy` and `submission` (the user's local IMAP and SMTP on
//! loopback). Each is a sans-I/O protocol core — bytes in, events and replies out — plus a
//! thin tokio driver, so the cores can be tested and fuzzed without sockets.
