//! Policy decisions for letter.me, kept apart from the mechanisms that gather evidence.
//!
//! This crate will hold pure functions that turn verification results — DKIM, SPF and DMARC
//! verdicts in RFC vocabulary as `mail-auth` reports them — into accept / tempfail / reject /
//! quarantine, together with rate limits, quotas and block lists. It does no I/O and decides
//! nothing it was not given evidence for; the inbound SMTP adapter (issue 3) is its first user.
