//! The domain's key-transparency log on the server (issue 7): the log in memory for
//! proofs, every entry in SQLite (`kt_log`) for durability, appended in the same
//! transaction as the key change it records, and the VRF key that makes the labels.

use letterme_protocol::kt::{Checkpoint, KeyOp, KtProof, Log, LogEntry, VrfKey};
use letterme_protocol::{Address, SigningKeypair};
use tokio::sync::Mutex;

use crate::store::{AccountRow, Store, StoreError};

/// The log and the key of its labels.
pub struct KtState {
    pub log: Mutex<Log>,
    pub vrf: VrfKey,
}

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
                vrf,
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
            vrf,
        })
    }

    /// Registers `acc` and logs it: the entry is committed with the account, then added
    /// to the tree. One registration at a time, so tree and table keep the same order.
    pub async fn register(
        &self,
        store: &Store,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
        address: &Address,
    ) -> Result<(), StoreError> {
        let (label, _) = self.vrf.label(address);
        let entry = LogEntry {
            op: KeyOp::Register,
            label,
            identity_key: acc.identity_key,
            encryption_key: acc.encryption_key,
            key_version: acc.key_version,
            time: acc.registered_at,
        };
        let mut log = self.log.lock().await;
        let idx = log.len();
        store
            .register_logged(acc, invite_hash, (idx, label, entry.encode()))
            .await?;
        log.push(entry);
        Ok(())
    }

    /// The current signed checkpoint.
    pub async fn checkpoint(&self, domain: &str, now: u64, key: &SigningKeypair) -> Checkpoint {
        self.log.lock().await.checkpoint(domain, now, key)
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
        let (label, label_proof) = self.vrf.label(address);
        let Some((index, entry)) = store.kt_latest(label).await? else {
            return Ok(None);
        };
        let log = self.log.lock().await;
        let Some(inclusion) = log.prove_inclusion(index) else {
            return Ok(None);
        };
        let consistency = since
            .and_then(|s| log.prove_consistency(s))
            .map(|p| letterme_protocol::b64::encode(&p));
        Ok(Some(KtProof {
            index,
            entry,
            label_proof: label_proof.to_vec(),
            inclusion,
            checkpoint: log.checkpoint(domain, now, key),
            consistency,
        }))
    }

    /// The current checkpoint and the proof that it extends the first `from` entries.
    pub async fn consistency(
        &self,
        from: u64,
        domain: &str,
        now: u64,
        key: &SigningKeypair,
    ) -> Option<(Checkpoint, Vec<u8>)> {
        let log = self.log.lock().await;
        let proof = log.prove_consistency(from)?;
        Some((log.checkpoint(domain, now, key), proof))
    }
}
