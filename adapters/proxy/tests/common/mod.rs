//! A proxy IMAP listener over a fresh cache, for the tests in this directory.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use letterme_client::cache::{Cache, CacheKey};
use letterme_protocol::SigningKeypair;
use letterme_proxy::credentials::Credentials;
use letterme_proxy::imap::{ImapProxy, serve};

/// The proxy's local login in these tests.
pub const USER: &str = "alice@x.test";
pub const PASSWORD: &str = "local-secret";

/// A proxy IMAP listener over a fresh cache, on its own runtime; stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub cache: Arc<Cache>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            Cache::open(
                &dir.path().join("mail.db"),
                CacheKey::derive(&SigningKeypair::generate()),
            )
            .unwrap(),
        );
        let proxy = Arc::new(ImapProxy {
            cache: cache.clone(),
            credentials: Credentials {
                username: USER.into(),
                password: PASSWORD.into(),
            },
            tls: None,
            downloads: None,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serve(listener, proxy, stopped).await;
            });
        });
        Self {
            addr,
            cache,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Runs `script STEP HOST PORT USER PASSWORD [ARGS]` with python3; fails the test with
    /// its output unless it succeeds.
    pub fn python(&self, script: &str, name: &str, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(script)
            .args([
                name,
                "127.0.0.1",
                &self.addr.port().to_string(),
                USER,
                PASSWORD,
            ])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
