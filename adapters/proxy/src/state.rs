//! The proxy's files in the profile: `proxy.json` (the local password and where the proxy
//! last listened, so `letterme proxy credentials` can print them while it runs) and the
//! paths of its loopback TLS certificate. The certificate itself is made by the caller,
//! which owns the TLS setup; this crate stays free of the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use letterme_client::ClientError;
use letterme_client::files::{create_private_dir, write_private};
use letterme_client::profile::ProfileDir;
use letterme_protocol::codec::hex;
use letterme_protocol::keys::random_bytes;
use serde::{Deserialize, Serialize};

/// Where the proxy listens unless told otherwise (DESIGN.md §3).
pub const DEFAULT_IMAP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1143,
));
/// See [`DEFAULT_IMAP`].
pub const DEFAULT_SMTP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1025,
));
/// The names the proxy's self-signed certificate is made for.
pub const CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why the proxy's state could not be read, written or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The profile is missing or unreadable: the same error as every other client command.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot use {}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged; delete it to get a new proxy password", path.display())]
    Damaged {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} {addr} is not a loopback address; the proxy serves decrypted mail and listens on 127.0.0.1 or ::1 only",
        side.flag()
    )]
    NotLoopback { side: Side, addr: SocketAddr },
    #[error(
        "cannot listen on {addr} for {side}; is another `letterme proxy` running? (choose another port with {})",
        side.flag()
    )]
    Bind {
        side: Side,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One of the proxy's two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Imap,
    Smtp,
}

impl Side {
    /// The command-line flag that sets its address.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Imap => "--imap-listen",
            Self::Smtp => "--smtp-listen",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Imap => "IMAP",
            Self::Smtp => "SMTP",
        })
    }
}

/// The proxy serves decrypted mail: it listens on loopback only.
pub fn check_loopback(addr: SocketAddr, side: Side) -> Result<(), ProxyError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ProxyError::NotLoopback { side, addr })
    }
}

/// `proxy.json` in the profile: the local login and where the proxy last listened.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProxyState {
    pub password: String,
    pub imap: SocketAddr,
    pub smtp: SocketAddr,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState")
            .field("password", &"<redacted>")
            .field("imap", &self.imap)
            .field("smtp", &self.smtp)
            .finish()
    }
}

/// The proxy's files in a profile.
#[derive(Debug, Clone)]
pub struct ProxyFiles {
    pub state: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ProxyFiles {
    pub fn of(dir: &ProfileDir) -> Self {
        Self {
            state: dir.0.join("proxy.json"),
            cert: dir.0.join("proxy-cert.pem"),
            key: dir.0.join("proxy-key.pem"),
        }
    }

    /// True when the certificate is still to be made; a key left without its
    /// certificate is removed first.
    pub fn cert_missing(&self) -> bool {
        if self.cert.exists() {
            return false;
        }
        let _ = std::fs::remove_file(&self.key);
        true
    }

    /// Saves `state` (mode 0600, replaced atomically).
    pub fn save(&self, state: &ProxyState) -> Result<(), ProxyError> {
        let bytes = serde_json::to_vec_pretty(state).expect("serializes");
        write_private(&self.state, &bytes).map_err(|source| ProxyError::Write {
            path: self.state.clone(),
            source,
        })
    }
}

/// Loads the proxy state, creating the password on first use.
pub fn ensure_state(dir: &ProfileDir) -> Result<ProxyState, ProxyError> {
    let files = ProxyFiles::of(dir);
    if !dir.exists() {
        // The same one-line error as every other client command.
        dir.load()?;
    }
    create_private_dir(&dir.0).map_err(|source| ProxyError::Dir {
        path: dir.0.clone(),
        source,
    })?;
    match std::fs::read(&files.state) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ProxyError::Damaged {
            path: files.state.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = ProxyState {
                password: hex(&random_bytes::<16>()),
                imap: DEFAULT_IMAP,
                smtp: DEFAULT_SMTP,
            };
            files.save(&state)?;
            Ok(state)
        }
        Err(error) => Err(ProxyError::Read {
            path: files.state,
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_texts_name_the_flag_to_change() {
        let addr: SocketAddr = "192.0.2.1:1143".parse().expect("addr");
        assert_eq!(
            check_loopback(addr, Side::Imap)
                .expect_err("not loopback")
                .to_string(),
            "--imap-listen 192.0.2.1:1143 is not a loopback address; the proxy serves \
             decrypted mail and listens on 127.0.0.1 or ::1 only"
        );
        assert!(check_loopback("[::1]:1025".parse().expect("addr"), Side::Smtp).is_ok());
        let bind = ProxyError::Bind {
            side: Side::Smtp,
            addr: DEFAULT_SMTP,
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            bind.to_string(),
            "cannot listen on 127.0.0.1:1025 for SMTP; is another `letterme proxy` running? \
             (choose another port with --smtp-listen)"
        );
    }

    #[test]
    fn the_state_is_made_once_and_kept_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir(tmp.path().join("p"));
        assert!(matches!(
            ensure_state(&dir),
            Err(ProxyError::Client(ClientError::NoProfile(_)))
        ));
        std::fs::create_dir_all(&dir.0).expect("dir");
        std::fs::write(dir.file(), b"{}").expect("profile");
        let first = ensure_state(&dir).expect("made");
        assert_eq!((first.imap, first.smtp), (DEFAULT_IMAP, DEFAULT_SMTP));
        assert_eq!(ensure_state(&dir).expect("read").password, first.password);
        let files = ProxyFiles::of(&dir);
        std::fs::write(&files.state, b"not json").expect("damage");
        let damaged = ensure_state(&dir).expect_err("damaged").to_string();
        assert!(damaged.ends_with("proxy.json is damaged; delete it to get a new proxy password"));
    }
}
