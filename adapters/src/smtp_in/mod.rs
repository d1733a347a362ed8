//! Inbound SMTP: a sans-I/O protocol core ([`session`]), verification of SPF, DKIM and
//! DMARC ([`verify`]), sealing to recipients ([`deliver`]) and the tokio driver ([`server`]).

pub mod deliver;
pub mod server;
pub mod session;
pub mod verify;
mod wiring;

pub use wiring::{StartError, start};
