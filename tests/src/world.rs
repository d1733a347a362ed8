//! The world the end-to-end tests run in, written once for all of them: a temporary root,
//! an in-process DNS server with the runtime it runs on, `letterme serve` processes pointed
//! at that DNS, users made with the CLI, and the queue and mailbox waits the scenarios
//! share. Tests that must move time use [`InProcess`] instead: the server in the test's own
//! runtime with a [`FakeClock`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::proto::rr::Record;
use letterme_client::profile::ProfileDir;
use letterme_client::{Online, Unlocked};
use letterme_protocol::Address;
use letterme_server::Config;
use serde_json::Value;

use crate::dns::TestDns;
use crate::{FakeClock, PASSPHRASE, ServerProc, cli, ok, test_config};

/// A temporary root and a DNS server on loopback, on a runtime of its own so that tests
/// stay plain `#[test]`s driving processes.
#[derive(Debug)]
pub struct World {
    pub root: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub dns: TestDns,
}

impl World {
    /// An empty root and a DNS server answering `records` (more can be set later).
    pub fn new(records: Vec<Record>) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dns = rt.block_on(TestDns::start(records)).unwrap();
        Self {
            root: tempfile::tempdir().unwrap(),
            rt,
            dns,
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Config lines that make a server resolve through this world's DNS only.
    pub fn dns_toml(&self, timeout_ms: u32) -> String {
        format!(
            "dns.nameservers = [\"{}\"]\ndns.timeout_ms = {timeout_ms}\n",
            self.dns.addr
        )
    }

    /// Loads what `letterme dns` prints for `server` into this world's DNS.
    pub fn publish_zone(&self, server: &ServerProc) {
        self.rt.block_on(self.dns.load_zone(&dns_zone(server)));
    }

    /// Creates `address` on `server` with the CLI, its profile at `<root>/<name>`.
    pub fn account(&self, server: &ServerProc, name: &str, address: &str) -> PathBuf {
        let profile = self.path().join(name);
        create_account(&profile, address, server);
        profile
    }
}

/// `letterme account create ADDRESS --server URL` for the profile `profile`.
pub fn create_account(profile: &Path, address: &str, server: &ServerProc) {
    ok(&cli(
        profile,
        &["account", "create", address, "--server", &server.url],
        None,
    ));
}

/// Stdout of a successful command, as JSON.
pub fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// What `letterme dns` prints for `server`.
pub fn dns_zone(server: &ServerProc) -> String {
    ok(&cli(
        Path::new("/nonexistent"),
        &["dns", "--config", server.config_path.to_str().unwrap()],
        None,
    ))
}

/// `letterme queue --json` on `server`'s config.
pub fn queue(server: &ServerProc) -> Vec<Value> {
    serde_json::from_value(json(&cli(
        Path::new("/nonexistent"),
        &[
            "queue",
            "--json",
            "--config",
            server.config_path.to_str().unwrap(),
        ],
        None,
    )))
    .unwrap()
}

/// Waits until `server`'s outgoing queue is empty, failing after `within`.
pub fn wait_queue_empty(server: &ServerProc, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let q = queue(server);
        if q.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "queue never drained: {q:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Syncs until `n` messages are in the mailbox (or fails after a minute); returns them.
/// `cli` runs the CLI for the profile (with whatever flags the scenario needs).
pub fn sync_until(n: usize, cli: impl Fn(&[&str]) -> Output) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        ok(&cli(&["sync"]));
        let list: Vec<Value> = serde_json::from_value(json(&cli(&["list", "--json"]))).unwrap();
        if list.len() >= n || Instant::now() > deadline {
            assert_eq!(list.len(), n, "messages in the mailbox: {list:?}");
            return list;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// An in-process server for x.test on a free loopback port, with a clock the test moves.
pub struct InProcess {
    pub root: tempfile::TempDir,
    pub config: Config,
    pub server: letterme_server::Running,
    pub url: String,
    pub clock: Arc<FakeClock>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("root", &self.root.path())
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// Starts the server on the test config after `tweak` changed it.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut config = test_config(root.path(), "x.test");
        tweak(&mut config);
        let clock = FakeClock::at_now();
        let server = letterme_server::start(config.clone(), clock.clone())
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr);
        Self {
            root,
            config,
            server,
            url,
            clock,
        }
    }

    /// `local@x.test`, registered and logged in.
    pub async fn user(&self, local: &str) -> Online {
        online_user(self.root.path(), &self.url, local).await
    }
}

/// The profile at `profile`, unlocked with the test passphrase and logged in.
pub async fn online(profile: &Path) -> Online {
    Unlocked::open(ProfileDir(profile.to_owned()), PASSPHRASE)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Registers `local@x.test` at `url` with its profile at `<root>/<local>`, and logs in.
pub async fn online_user(root: &Path, url: &str, local: &str) -> Online {
    let dir = ProfileDir(root.join(local));
    let addr = Address::parse(&format!("{local}@x.test")).unwrap();
    letterme_client::create_account(&dir, &addr, url, PASSPHRASE, None)
        .await
        .unwrap();
    Unlocked::open(dir, PASSPHRASE)
        .unwrap()
        .connect()
        .await
        .unwrap()
}
