//! The domain's key-transparency log on the server (issue 7): the log in memory for
//! proofs, every entry in SQLite (`kt_log`) for durability, appended in the same
//! transaction as the key change it records, and the VRF key that makes the labels.

use std::sync::Arc;

use letterme_protocol::device::{Device, set_digest};
use letterme_protocol::kt::{
    Checkpoint, KeyOp, KtHistory, KtHistoryEntry, KtProof, Log, LogEntry, VrfKey,
};
use letterme_protocol::{Address, SigningKeypair};
use tokio::sync::Mutex;

use crate::store::{AccountRow, Store, StoreError};

/// The proof (base64) that `log` extends its first `since` entries, when the client gave
/// the size it saw last and it is within the log.
fn consistency_since(log: &Log, since: Option<u64>) -> Option<String> {
    since
        .and_then(|s| log.prove_consistency(s))
        .map(|p| letterme_protocol::b64::encode(&p))
}

/// Most entries `GET /v1/kt/mine` returns (the newest ones).
pub const HISTORY_LIMIT: u32 = 1000;
/// Most entries one page of `GET /v1/kt/entries` returns.
pub const ENTRIES_PAGE: u64 = 10_000;

/// The log and the key of its labels.
pub struct KtState {
    pub log: Mutex<Log>,
    pub vrf: VrfKey,
    vrf_public: [u8; 32],
    /// Labels and their proofs by address: deterministic, and a VRF evaluation is the
    /// dearest part of a lookup.
    labels: std::sync::Mutex<std::collections::HashMap<String, Label>>,
    /// The last checkpoint signed: reused while the log and the second are the same.
    signed: std::sync::Mutex<Option<Checkpoint>>,
}

type Label = ([u8; 32], [u8; letterme_protocol::kt::VRF_PROOF_LEN]);

/// Labels remembered at most (about 150 bytes each); beyond, the cache starts over.
const LABEL_CACHE: usize = 100_000;

impl std::fmt::Debug for KtState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KtState").finish_non_exhaustive()
    }
}

impl KtState {
    /// Loads the log from the database, and logs accounts that have no entry yet (those
    /// registered before the log existed), oldest first, in one transaction.
    pub async fn load(store: &Store, vrf: VrfKey) -> Result<Self, StoreError> {
        let mut log = Log::new();
        for bytes in store.kt_entries().await? {
            let entry = LogEntry::decode(&bytes)
                .map_err(|e| StoreError::Database(format!("key-transparency log: {e}")))?;
            log.push(entry);
        }
        // Every account has a label in the log (the normal case): nothing to add, and no
        // VRF evaluation per account at each start.
        let (accounts, labels) = store.kt_coverage().await?;
        if labels >= accounts {
            return Ok(Self {
                log: Mutex::new(log),
                vrf_public: vrf.public(),
                vrf,
                labels: std::sync::Mutex::default(),
                signed: std::sync::Mutex::default(),
            });
        }
        let known: std::collections::HashSet<[u8; 32]> =
            store.kt_labels().await?.into_iter().collect();
        let mut missing = Vec::new();
        let mut entries = Vec::new();
        for (address, identity_key, encryption_key, key_version, registered_at) in
            store.accounts_for_log().await?
        {
            let Ok(address) = Address::parse(&address) else {
                continue;
            };
            let (label, _) = vrf.label(&address);
            if known.contains(&label) {
                continue;
            }
            let entry = LogEntry {
                op: KeyOp::Register,
                label,
                identity_key,
                encryption_key,
                key_version,
                device_set: None,
                time: registered_at,
            };
            missing.push((log.len() + entries.len() as u64, label, entry.encode()));
            entries.push(entry);
        }
        if !missing.is_empty() {
            tracing::info!(
                accounts = missing.len(),
                "logging accounts registered before the key-transparency log"
            );
            store.kt_append(missing).await?;
            for e in entries {
                log.push(e);
            }
        }
        Ok(Self {
            log: Mutex::new(log),
            vrf_public: vrf.public(),
            vrf,
            labels: std::sync::Mutex::default(),
            signed: std::sync::Mutex::default(),
        })
    }

    /// Commits `entry` with `commit` (which writes it at the index it is given, in the same
    /// transaction as the change it records), then adds it to the tree. One change at a
    /// time, so tree and table keep the same order. Runs as its own task, so a request
    /// that goes away mid-way cannot leave a committed entry out of the tree. Returns the
    /// entry's index.
    async fn append<F, Fut>(self: &Arc<Self>, entry: LogEntry, commit: F) -> Result<u64, StoreError>
    where
        F: FnOnce((u64, [u8; 32], Vec<u8>)) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
    {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut log = me.log.lock().await;
            let idx = log.len();
            commit((idx, entry.label, entry.encode())).await?;
            log.push(entry);
            Ok(idx)
        })
        .await
        .map_err(|e| StoreError::Database(format!("key-transparency append: {e}")))?
    }

    fn entry_for(&self, op: KeyOp, address: &Address, acc: &AccountRow, time: u64) -> LogEntry {
        LogEntry {
            op,
            label: self.label(address).0,
            identity_key: acc.identity_key,
            encryption_key: acc.encryption_key,
            key_version: acc.key_version,
            device_set: None,
            time,
        }
    }

    /// `address`'s label and its proof.
    fn label(&self, address: &Address) -> Label {
        let k = address.as_str().to_ascii_lowercase();
        if let Some(l) = self.labels.lock().ok().and_then(|m| m.get(&k).copied()) {
            return l;
        }
        let l = self.vrf.label(address);
        if let Ok(mut m) = self.labels.lock() {
            if m.len() >= LABEL_CACHE {
                m.clear();
            }
            m.insert(k, l);
        }
        l
    }

    /// The checkpoint of `log` now: the one signed last when nothing changed since.
    fn sign(&self, log: &Log, domain: &str, now: u64, key: &SigningKeypair) -> Checkpoint {
        if let Some(cp) = self.signed.lock().ok().and_then(|c| c.clone())
            && cp.size == log.len()
            && cp.time == now
            && cp.domain == domain
            && cp.root == log.root()
        {
            return cp;
        }
        let cp = log.checkpoint(domain, self.vrf_public, now, key);
        if let Ok(mut c) = self.signed.lock() {
            *c = Some(cp.clone());
        }
        cp
    }

    /// Registers `acc` and logs it.
    pub async fn register(
        self: &Arc<Self>,
        store: &Store,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
        address: &Address,
    ) -> Result<(), StoreError> {
        let entry = self.entry_for(KeyOp::Register, address, &acc, acc.registered_at);
        let store = store.clone();
        self.append(entry, move |kt| async move {
            store.register_logged(acc, invite_hash, kt).await
        })
        .await
        .map(drop)
    }

    /// The index of `address`'s newest log entry, if it has one.
    pub async fn latest_index(
        &self,
        store: &Store,
        address: &Address,
    ) -> Result<Option<u64>, StoreError> {
        Ok(store
            .kt_latest(self.label(address).0)
            .await?
            .map(|(i, _)| i))
    }

    /// How many key and device changes of `address` (rotations, revocations, devices added
    /// and removed) the log holds since `since` (Unix seconds, the server's time of each).
    pub async fn recent_changes(
        &self,
        store: &Store,
        address: &Address,
        since: u64,
    ) -> Result<u64, StoreError> {
        let (label, _) = self.label(address);
        Ok(store
            .kt_under(label, HISTORY_LIMIT)
            .await?
            .iter()
            .filter_map(|(_, e)| LogEntry::decode(e).ok())
            .filter(|e| {
                matches!(
                    e.op,
                    KeyOp::Rotate | KeyOp::Revoke | KeyOp::DeviceAdd | KeyOp::DeviceRemove
                ) && e.time >= since
            })
            .count() as u64)
    }

    /// Replaces `address`'s keys with those in `acc` (whose `key_version` is the next one)
    /// and logs the change as `op` (rotate or revoke). Returns the entry's index.
    pub async fn change_keys(
        self: &Arc<Self>,
        store: &Store,
        acc: AccountRow,
        op: KeyOp,
        address: &Address,
        now: u64,
    ) -> Result<u64, StoreError> {
        let entry = self.entry_for(op, address, &acc, now);
        let store = store.clone();
        self.append(entry, move |kt| async move {
            store.change_keys_logged(acc, kt).await
        })
        .await
    }

    /// Adds devices to `address` (certifying its first device where `certified` says),
    /// logged as [`KeyOp::DeviceAdd`] with the digest of `set`, the device set after it.
    /// `expected`: the current devices (ids) the change was checked against. Returns the
    /// entry's index.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_devices(
        self: &Arc<Self>,
        store: &Store,
        acc: &AccountRow,
        address: &Address,
        expected: Vec<i64>,
        certified: Vec<Device>,
        added: Vec<Device>,
        set: &[Device],
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut entry = self.entry_for(KeyOp::DeviceAdd, address, acc, now);
        entry.device_set = Some(set_digest(set));
        let (store, account) = (store.clone(), address.to_string());
        self.append(entry, move |kt| async move {
            store
                .add_devices_logged(account, expected, certified, added, now, kt)
                .await
        })
        .await
    }

    /// Removes device `device` of `address`, logged as [`KeyOp::DeviceRemove`] with the
    /// digest of `set`, the devices that remain. Returns the entry's index.
    #[allow(clippy::too_many_arguments)]
    pub async fn remove_device(
        self: &Arc<Self>,
        store: &Store,
        acc: &AccountRow,
        address: &Address,
        expected: Vec<i64>,
        device: i64,
        set: &[Device],
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut entry = self.entry_for(KeyOp::DeviceRemove, address, acc, now);
        entry.device_set = Some(set_digest(set));
        let (store, account) = (store.clone(), address.to_string());
        self.append(entry, move |kt| async move {
            store
                .remove_device_logged(account, expected, device, now, kt)
                .await
                .map(drop)
        })
        .await
    }

    /// The current signed checkpoint.
    pub async fn checkpoint(&self, domain: &str, now: u64, key: &SigningKeypair) -> Checkpoint {
        let log = self.log.lock().await;
        self.sign(&log, domain, now, key)
    }

    /// The proof material for `address`'s newest entry, if it has one.
    pub async fn proof_for(
        &self,
        store: &Store,
        address: &Address,
        since: Option<u64>,
        domain: &str,
        now: u64,
        key: &SigningKeypair,
    ) -> Result<Option<KtProof>, StoreError> {
        let (label, label_proof) = self.label(address);
        let Some((index, entry)) = store.kt_latest(label).await? else {
            return Ok(None);
        };
        let log = self.log.lock().await;
        let Some(inclusion) = log.prove_inclusion(index) else {
            return Ok(None);
        };
        let consistency = consistency_since(&log, since);
        Ok(Some(KtProof {
            index,
            entry,
            label_proof: label_proof.to_vec(),
            inclusion,
            checkpoint: self.sign(&log, domain, now, key),
            consistency,
        }))
    }

    /// Every entry under `address`'s label (the newest [`HISTORY_LIMIT`]), each with its
    /// inclusion proof in one checkpoint.
    pub async fn history_for(
        &self,
        store: &Store,
        address: &Address,
        since: Option<u64>,
        domain: &str,
        now: u64,
        key: &SigningKeypair,
    ) -> Result<KtHistory, StoreError> {
        let (label, label_proof) = self.label(address);
        let rows = store.kt_under(label, HISTORY_LIMIT).await?;
        let log = self.log.lock().await;
        let entries = rows
            .into_iter()
            .filter_map(|(index, entry)| {
                log.prove_inclusion(index).map(|inclusion| KtHistoryEntry {
                    index,
                    entry,
                    inclusion,
                })
            })
            .collect();
        let consistency = consistency_since(&log, since);
        Ok(KtHistory {
            label_proof: label_proof.to_vec(),
            entries,
            checkpoint: self.sign(&log, domain, now, key),
            consistency,
        })
    }

    /// The current checkpoint and entries `start..start+limit` of the log (fewer at its
    /// end): what an auditor replays to check the whole log.
    pub async fn entries(
        &self,
        store: &Store,
        start: u64,
        limit: u64,
        domain: &str,
        now: u64,
        key: &SigningKeypair,
    ) -> Result<(Checkpoint, Vec<Vec<u8>>), StoreError> {
        let cp = self.checkpoint(domain, now, key).await;
        let end = start.saturating_add(limit).min(cp.size);
        let entries = if start < end {
            store.kt_range(start, end).await?
        } else {
            Vec::new()
        };
        Ok((cp, entries))
    }

    /// The current checkpoint and, for each size in `from`, the proof that it extends the
    /// log's first that many entries (all against the same checkpoint); `None` when a
    /// size is beyond the log.
    pub async fn consistency(
        &self,
        from: &[u64],
        domain: &str,
        now: u64,
        key: &SigningKeypair,
    ) -> Option<(Checkpoint, Vec<Vec<u8>>)> {
        let log = self.log.lock().await;
        let proofs = from
            .iter()
            .map(|n| log.prove_consistency(*n))
            .collect::<Option<Vec<_>>>()?;
        Some((self.sign(&log, domain, now, key), proofs))
    }
}
