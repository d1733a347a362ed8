//! Inbound SMTP, the domain's MX: verification of SPF, DKIM and DMARC ([`verify`]), the
//! policy's decision, sealing to recipients ([`deliver`]), as a backend ([`server`]) of the
//! shared SMTP driver in `letterme-smtp`, wired to a running server by [`start`].

pub mod deliver;
pub mod server;
pub mod verify;
mod wiring;

pub use wiring::{StartError, start};
