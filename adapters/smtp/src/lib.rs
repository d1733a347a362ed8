//! The SMTP server core shared by the inbound MX (`letterme-smtp-in`) and the proxy's local
//! submission (`letterme-proxy`): a sans-I/O protocol [`session`] (bytes in, events and
//! replies out) and the tokio [`driver`] that runs it on sockets for any [`driver::Backend`].
//! Neither knows where a message goes; the backends decide.

pub mod driver;
pub mod reply;
pub mod session;
