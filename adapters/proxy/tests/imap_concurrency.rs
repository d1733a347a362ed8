//! The proxy's IMAP under several connections at once (issue 16): python's imaplib, two or
//! more connections per scenario, against the real listener on loopback over a real cache.
//! Each scenario is in `fixtures/concurrent.py`, which asserts what the RFCs require.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use letterme_client::cache::{Cache, CacheKey};
use letterme_protocol::SigningKeypair;
use letterme_proxy::credentials::Credentials;
use letterme_proxy::imap::{ImapProxy, serve};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/concurrent.py");
const PASSWORD: &str = "local-secret";

/// A proxy IMAP listener over a fresh cache, on its own runtime; stopped on drop.
struct Proxy {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            Cache::open(
                &dir.path().join("mail.db"),
                CacheKey::derive(&SigningKeypair::generate()),
            )
            .unwrap(),
        );
        let proxy = Arc::new(ImapProxy {
            cache,
            credentials: Credentials {
                username: "alice@x.test".into(),
                password: PASSWORD.into(),
            },
            tls: None,
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
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Runs one scenario of the script; fails the test with its output if it fails.
    fn scenario(&self, name: &str, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(SCRIPT)
            .args([
                name,
                "127.0.0.1",
                &self.addr.port().to_string(),
                "alice@x.test",
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

fn run(name: &str) {
    Proxy::start().scenario(name, &[]);
}

#[test]
fn expunge_is_never_lost() {
    run("expunge_is_never_lost");
}

#[test]
fn flag_updates_are_never_lost() {
    run("flag_updates_are_never_lost");
}

#[test]
fn uidvalidity_is_never_reused() {
    run("uidvalidity_is_never_reused");
}

#[test]
fn copy_and_move_into_the_selected_mailbox_are_announced() {
    run("copy_and_move_into_the_selected_mailbox_are_announced");
}

#[test]
fn a_fetch_racing_an_expunge_never_serves_an_empty_message() {
    run("a_fetch_racing_an_expunge_never_serves_an_empty_message");
}

#[test]
fn keywords_are_listed_and_announced() {
    run("keywords_are_listed_and_announced");
}

#[test]
fn subscriptions_follow_rfc3501() {
    run("subscriptions_follow_rfc3501");
}

#[test]
fn recent_is_seen_by_one_session() {
    run("recent_is_seen_by_one_session");
}

#[test]
fn address_edge_cases_in_envelope_and_search() {
    run("address_edge_cases_in_envelope_and_search");
}

#[test]
fn list_extended_in_full() {
    run("list_extended_in_full");
}

#[test]
fn condstore() {
    run("condstore");
}

#[test]
fn qresync() {
    run("qresync");
}

#[test]
fn six_connections_at_random_keep_every_view_equal_to_a_fresh_select() {
    let out = Proxy::start().scenario("stress", &["5"]);
    println!("{out}");
}
