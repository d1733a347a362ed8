//! Store tests: group commit, quotas, replays, purges, key changes.

use std::collections::BTreeMap;

use letterme_protocol::api::FetchedEnvelope;
use rusqlite::params;

use super::kt::{MAX_FORKS_IN_ALL, MAX_WITNESSED};
use super::*;

fn account(addr: &str) -> AccountRow {
    AccountRow {
        address: addr.into(),
        identity_key: [1; 32],
        encryption_key: [2; 32],
        key_created: 1,
        key_version: 1,
        binding_signature: [3; 64],
        attestation_sig: [4; 64],
        registered_at: 1,
        usage_bytes: 0,
    }
}

/// The mailbox of `address`'s first device.
async fn inbox(store: &Store, address: &str) -> Inbox {
    let devices = store.devices(address.into()).await.unwrap();
    Inbox {
        address: address.into(),
        device: devices[0].id,
    }
}

fn delivery(id: u8, to: &[&str], at: u64) -> NewDelivery {
    NewDelivery {
        id: [id; 16],
        sender: "a@x.test".into(),
        envelope: vec![id; 100],
        blobs: vec![],
        recipients: to.iter().map(|s| (*s).to_owned()).collect(),
        received: at,
        quota: 250,
        device: None,
    }
}

#[tokio::test]
async fn deliver_list_ack_purge_quota_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    store.register(account("c@x.test"), None).await.unwrap();
    assert_eq!(
        store.register(account("b@x.test"), None).await,
        Err(StoreError::AddressTaken)
    );

    store
        .deliver(delivery(1, &["b@x.test", "c@x.test"], 100))
        .await
        .unwrap();
    assert_eq!(
        store.deliver(delivery(1, &["b@x.test"], 100)).await,
        Err(StoreError::Replay)
    );
    assert_eq!(
        store
            .deliver(delivery(2, &["b@x.test", "zz@x.test"], 100))
            .await,
        Err(StoreError::UnknownRecipients(vec!["zz@x.test".into()]))
    );
    // The failed delivery left nothing behind, not even its replay record.
    store
        .deliver(delivery(2, &["b@x.test"], 200))
        .await
        .unwrap();
    // Quota 250: b holds 200 bytes now.
    assert_eq!(
        store.deliver(delivery(3, &["b@x.test"], 300)).await,
        Err(StoreError::QuotaExceeded("b@x.test".into()))
    );

    let b = store
        .list(inbox(&store, "b@x.test").await, 0, 100)
        .await
        .unwrap();
    assert_eq!(b.iter().map(|p| p.id[0]).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        store
            .ack(inbox(&store, "b@x.test").await, vec![[1; 16]])
            .await
            .unwrap(),
        1
    );
    // c has not acked: the shared message stays for c.
    assert!(
        store
            .fetch(inbox(&store, "c@x.test").await, [1; 16])
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .fetch(inbox(&store, "b@x.test").await, [1; 16])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .account("b@x.test".into())
            .await
            .unwrap()
            .unwrap()
            .usage_bytes,
        100
    );

    // Retention: only deliveries older than the cutoff go.
    let stats = store.purge(150, 0).await.unwrap();
    assert_eq!(stats.deliveries, 1); // c's copy of message 1 (received at 100)
    assert!(
        store
            .fetch(inbox(&store, "c@x.test").await, [1; 16])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .fetch(inbox(&store, "b@x.test").await, [2; 16])
            .await
            .unwrap()
            .is_some()
    );
    let stats = store.purge(0, 1000).await.unwrap();
    assert_eq!(stats.seen_ids, 2);
}

#[tokio::test]
async fn concurrent_writes_commit_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut d = delivery(i, &["b@x.test"], 1);
            d.quota = u64::MAX;
            // Every tenth is a replay of an id that another task writes.
            if i % 10 == 9 {
                d.id = [i - 1; 16];
            }
            s.deliver(d).await
        }));
    }
    let mut ok = 0;
    let mut replays = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Replay) => replays += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, replays), (180, 20));
    assert_eq!(
        store
            .list(inbox(&store, "b@x.test").await, 0, 1000)
            .await
            .unwrap()
            .len(),
        180
    );
}

/// A job that fails keeps none of its writes: alone in its transaction (rolled back whole)
/// or in a group (rolled back to its savepoint, its neighbours committed).
#[tokio::test]
async fn a_failed_write_keeps_nothing_alone_or_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let bump = |store: &Store, fail: bool| {
        let store = store.clone();
        async move {
            store
                .write(move |c| {
                    c.execute(
                        "UPDATE accounts SET usage_bytes = usage_bytes + 1 WHERE address = 'b@x.test'",
                        [],
                    )?;
                    if fail { Err(StoreError::Replay) } else { Ok(()) }
                })
                .await
        }
    };
    assert!(matches!(bump(&store, true).await, Err(StoreError::Replay)));
    assert_eq!(usage_of(&store, "b@x.test").await, 0);
    bump(&store, false).await.unwrap();
    assert_eq!(usage_of(&store, "b@x.test").await, 1);
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(bump(&store, i % 2 == 1)))
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += usize::from(t.await.unwrap().is_err());
    }
    assert_eq!(failed, 100);
    assert_eq!(usage_of(&store, "b@x.test").await, 101);
}

/// Every entrance files mail through one function: an envelope from a peer and one from
/// the API share its rules (one message row, pending counted per recipient), and an id
/// already holding another envelope is refused on both paths instead of merged.
#[tokio::test]
async fn federation_and_api_file_alike_and_refuse_a_reused_id() {
    use letterme_protocol::federation::DeliveryStatus;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    for a in ["b@x.test", "c@x.test", "d@x.test"] {
        store.register(account(a), None).await.unwrap();
    }
    let incoming = |envelope: Vec<u8>, to: &str| Incoming {
        id: [7; 16],
        digest: [envelope[0]; 32],
        sender: "p@peer.test".into(),
        envelope,
        blobs: vec![],
        recipients: vec![to.into()],
    };
    let receive = |txid: u8, item: Incoming| {
        let store = store.clone();
        async move {
            let report = store
                .receive_transaction(
                    "peer.test".into(),
                    vec![txid],
                    [txid; 32],
                    vec![item],
                    BTreeMap::new(),
                    100,
                    1_000_000,
                    crate::config::FederationConfig::default(),
                )
                .await
                .unwrap()
                .unwrap();
            report
                .results
                .values()
                .next()
                .unwrap()
                .values()
                .next()
                .copied()
                .unwrap()
        }
    };
    // The same envelope for two recipients, in two batches: stored once, pending twice.
    assert_eq!(
        receive(1, incoming(vec![1; 50], "b@x.test")).await,
        DeliveryStatus::Accepted
    );
    assert_eq!(
        receive(2, incoming(vec![1; 50], "c@x.test")).await,
        DeliveryStatus::Accepted
    );
    for who in ["b@x.test", "c@x.test"] {
        let (bytes, _) = store
            .fetch(inbox(&store, who).await, [7; 16])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bytes, vec![1; 50]);
        assert_eq!(
            store
                .account(who.into())
                .await
                .unwrap()
                .unwrap()
                .usage_bytes,
            50
        );
    }
    assert_eq!(
        store
            .ack(inbox(&store, "b@x.test").await, vec![[7; 16]])
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .fetch(inbox(&store, "c@x.test").await, [7; 16])
            .await
            .unwrap()
            .is_some()
    );
    // Another envelope under the id still stored: refused from a peer and from the API.
    assert_eq!(
        receive(3, incoming(vec![2; 50], "d@x.test")).await,
        DeliveryStatus::Blocked
    );
    let mut api = delivery(7, &["d@x.test"], 100);
    api.envelope = vec![3; 50];
    assert_eq!(store.deliver(api).await, Err(StoreError::Replay));
    assert!(
        store
            .fetch(inbox(&store, "d@x.test").await, [7; 16])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .account("d@x.test".into())
            .await
            .unwrap()
            .unwrap()
            .usage_bytes,
        0
    );
}

/// A domain that keeps forking its log cannot grow the evidence table without bound.
#[tokio::test]
async fn forks_recorded_per_domain_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let fork = |domain: &str, n: u64| ForkRow {
        domain: domain.into(),
        held: "{}".into(),
        other: "{}".into(),
        source: "test".into(),
        reason: format!("fork {n}"),
        detected_at: n,
    };
    for n in 0..20 {
        let kept = store.add_fork(fork("evil.test", n)).await.unwrap();
        assert_eq!(kept, n < 16, "fork {n}");
    }
    assert!(store.add_fork(fork("other.test", 1)).await.unwrap());
    assert_eq!(store.forks("evil.test".into()).await.unwrap().len(), 16);
}

/// Issue 15.8: a witness holds at most `MAX_WITNESSED` domains (forgetting the one seen
/// longest ago) and at most `MAX_FORKS_IN_ALL` forks, however many domains sign.
#[tokio::test]
async fn witness_rows_and_forks_are_bounded_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store
        .write(|c| {
            let mut w = c.prepare(
                "INSERT INTO kt_witness (domain, checkpoint, seen_at) VALUES (?1, '{}', ?2)",
            )?;
            for n in 0..MAX_WITNESSED {
                w.execute(params![format!("d{n}.test"), 100 + n])?;
            }
            let mut f = c.prepare(
                "INSERT INTO kt_forks (domain, held, other, source, reason, detected_at)
                 VALUES (?1, '', '', '', '', 0)",
            )?;
            for n in 0..MAX_FORKS_IN_ALL {
                f.execute([format!("f{n}.test")])?;
            }
            Ok(())
        })
        .await
        .unwrap();
    store
        .set_witnessed("new.test".into(), "{}".into(), 1_000_000)
        .await
        .unwrap();
    assert!(store.witnessed("new.test".into()).await.unwrap().is_some());
    assert!(store.witnessed("d0.test".into()).await.unwrap().is_none());
    assert!(store.witnessed("d1.test".into()).await.unwrap().is_some());
    let fork = ForkRow {
        domain: "another.test".into(),
        held: String::new(),
        other: String::new(),
        source: String::new(),
        reason: String::new(),
        detected_at: 1,
    };
    assert!(!store.add_fork(fork).await.unwrap());
}

/// Issue 15.4: an envelope for several domains is counted once against its sender's
/// queued bytes, and the bytes come back when its last row is done.
#[tokio::test]
async fn queued_bytes_count_each_envelope_once_and_return_when_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let remote = || {
        ["d1.test", "d2.test", "d3.test"]
            .iter()
            .map(|d| NewFederationRow {
                destination: (*d).to_owned(),
                recipients: vec![format!("u@{d}")],
            })
            .collect::<Vec<_>>()
    };
    let mut first = delivery(1, &[], 10);
    first.envelope = vec![1; 100];
    store.accept_outgoing(first, remote(), 150).await.unwrap();
    let mut second = delivery(2, &[], 10);
    second.envelope = vec![2; 100];
    assert!(matches!(
        store.accept_outgoing(second.clone(), remote(), 150).await,
        Err(StoreError::QueueFull { queued: 100, .. })
    ));
    let rows = store.federation_rows().await.unwrap();
    assert_eq!(rows.len(), 3);
    let done = rows.iter().map(|r| (r.id, RowOutcome::Done)).collect();
    store.finish_federation(done, vec![], true).await.unwrap();
    store.accept_outgoing(second, remote(), 150).await.unwrap();
    let left = value(&store, "SELECT count(*) FROM federation_envelopes").await;
    assert_eq!(left, 1, "the delivered envelope's bytes are gone");
}

/// Every foreign key has an index led by its column: SQLite checks a child table on each
/// delete from the parent, and without one that check reads the whole child table.
#[test]
fn every_foreign_key_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(Store::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut unindexed = Vec::new();
    for table in &tables {
        let keys: Vec<String> = c
            .prepare("SELECT \"from\" FROM pragma_foreign_key_list(?1)")
            .unwrap()
            .query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for column in keys {
            let led: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) AS l
                       JOIN pragma_index_info(l.name) AS i ON i.seqno = 0
                      WHERE i.name = ?2)",
                    params![table, column],
                    |r| r.get(0),
                )
                .unwrap();
            if !led {
                unindexed.push(format!("{table}.{column}"));
            }
        }
    }
    assert!(
        unindexed.is_empty(),
        "foreign keys without an index: {unindexed:?}"
    );
}

/// A batch fetch answers in the order asked, `None` for what is not the caller's, and
/// stops once its byte budget is spent, never before the first record.
#[tokio::test]
async fn fetch_many_keeps_order_and_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    store.register(account("c@x.test"), None).await.unwrap();
    for (id, to, at) in [
        (1, "b@x.test", 10),
        (2, "c@x.test", 11),
        (3, "b@x.test", 12),
    ] {
        store.deliver(delivery(id, &[to], at)).await.unwrap();
    }
    let asked = vec![[3; 16], [2; 16], [9; 16], [1; 16]];
    let got = store
        .fetch_many(inbox(&store, "b@x.test").await, asked.clone(), usize::MAX)
        .await
        .unwrap();
    let record = |id: u8, found: Option<u64>| FetchedEnvelope {
        id: [id; 16],
        received: found.unwrap_or(0),
        envelope: found.map(|_| vec![id; 100]),
    };
    let expect = vec![
        record(3, Some(12)),
        record(2, None),
        record(9, None),
        record(1, Some(10)),
    ];
    assert_eq!(got, expect);
    // 100 bytes each: a budget of 150 ends the answer after the second envelope found.
    let got = store
        .fetch_many(
            inbox(&store, "b@x.test").await,
            vec![[3; 16], [1; 16], [3; 16]],
            150,
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let got = store
        .fetch_many(inbox(&store, "b@x.test").await, asked, 0)
        .await
        .unwrap();
    assert_eq!(got, expect[..1]);
}

/// Blob uploads: a manifest that does not add up and an owner over the limit are refused
/// before anything is stored; chunks arrive in any order, once each, each checked against
/// the manifest (whoever sends it: the same id is the same bytes); the last chunk's length
/// sets the size; the purge takes uploads past their keep.
#[tokio::test]
async fn blob_uploads_are_checked_and_bounded() {
    use letterme_protocol::blob::{Manifest, SEALED_CHUNK};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let chunks: Vec<Vec<u8>> = vec![vec![1; SEALED_CHUNK], vec![2; 100]];
    let manifest = Manifest(chunks.iter().map(|c| Manifest::chunk_hash(c)).collect());
    // Declared 50 bytes long: two chunks all the same, which the real last one corrects.
    let blob = NewBlob {
        id: manifest.id(),
        owner: "a@x.test".into(),
        origin: None,
        size: (SEALED_CHUNK + 150) as u64,
        manifest: manifest.clone(),
        created: 10,
        max_size: 10 * SEALED_CHUNK as u64,
        per_owner: 3 * SEALED_CHUNK as u64,
        per_origin: 0,
        all_origins: u64::MAX,
    };
    let bad =
        |b: NewBlob| async { matches!(store.blob_begin(b).await, Err(StoreError::BadBlob(_))) };
    assert!(
        bad(NewBlob {
            size: 99,
            ..blob.clone()
        })
        .await,
        "too few chunks for the size"
    );
    assert!(
        bad(NewBlob {
            size: SEALED_CHUNK as u64 + 8,
            ..blob.clone()
        })
        .await,
        "a last chunk shorter than a tag"
    );
    assert!(
        bad(NewBlob {
            max_size: 1000,
            ..blob.clone()
        })
        .await,
        "over the size limit"
    );
    assert!(
        bad(NewBlob {
            id: letterme_protocol::blob::BlobId([0; 32]),
            ..blob.clone()
        })
        .await
    );
    assert!(store.blob_status(blob.id).await.unwrap().is_none());

    assert!(
        store
            .blob_begin(blob.clone())
            .await
            .unwrap()
            .stored
            .is_empty()
    );
    let s = store.blob_put(blob.id, 1, chunks[1].clone()).await.unwrap();
    assert_eq!(
        (s.stored.clone(), s.complete(), s.size),
        (vec![1], false, (SEALED_CHUNK + 100) as u64)
    );
    assert!(matches!(
        store.blob_put(blob.id, 0, chunks[1].clone()).await,
        Err(StoreError::ChunkMismatch(_))
    ));
    assert!(matches!(
        store.blob_put(blob.id, 2, chunks[1].clone()).await,
        Err(StoreError::ChunkMismatch(_))
    ));
    for _ in 0..2 {
        let s = store.blob_put(blob.id, 0, chunks[0].clone()).await.unwrap();
        assert_eq!((s.stored.clone(), s.complete()), (vec![0, 1], true));
    }
    assert_eq!(
        store
            .blob_chunk(blob.id, 1, Some("a@x.test".into()))
            .await
            .unwrap(),
        Some(chunks[1].clone())
    );
    // Resuming is asking again: the same state, for anyone (the same id is the same
    // bytes); it stays the owner's who began it.
    assert_eq!(store.blob_begin(blob.clone()).await.unwrap().stored, [0, 1]);
    let s = store
        .blob_begin(NewBlob {
            owner: "b@x.test".into(),
            ..blob.clone()
        })
        .await
        .unwrap();
    assert_eq!((s.stored, s.owner.as_str()), (vec![0, 1], "a@x.test"));
    // Another upload of 2 chunks' worth would pass the owner's 3-chunk limit.
    let other: Vec<[u8; 32]> = vec![[7; 32], [8; 32]];
    let second = NewBlob {
        id: Manifest(other.clone()).id(),
        size: 2 * SEALED_CHUNK as u64,
        manifest: Manifest(other),
        ..blob.clone()
    };
    assert!(matches!(
        store.blob_begin(second).await,
        Err(StoreError::BlobLimit { .. })
    ));
    assert_eq!(store.purge_blobs(10).await.unwrap(), 0);
    assert_eq!(store.purge_blobs(11).await.unwrap(), 1);
    assert!(store.blob_status(blob.id).await.unwrap().is_none());
    assert_eq!(
        store
            .blob_chunk(blob.id, 1, Some("a@x.test".into()))
            .await
            .unwrap(),
        None
    );
}

/// However small, an owner's blobs are at most `MAX_BLOBS_PER_OWNER`: a stranger with an
/// account cannot fill the database with rows (each 16-byte blob is rows and index entries).
#[tokio::test]
async fn an_owner_cannot_hold_more_than_the_blob_count_limit() {
    use letterme_protocol::blob::Manifest;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let tiny = |i: u64| {
        let manifest = Manifest(vec![Manifest::chunk_hash(&i.to_be_bytes())]);
        NewBlob {
            id: manifest.id(),
            owner: "a@x.test".into(),
            origin: None,
            size: 16,
            manifest,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin: 0,
            all_origins: u64::MAX,
        }
    };
    let tasks: Vec<_> = (0..MAX_BLOBS_PER_OWNER)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.blob_begin(tiny(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(matches!(
        store.blob_begin(tiny(MAX_BLOBS_PER_OWNER)).await,
        Err(StoreError::BlobLimit { .. })
    ));
    // Another owner is not held back by it.
    let other = NewBlob {
        owner: "b@x.test".into(),
        ..tiny(MAX_BLOBS_PER_OWNER)
    };
    store.blob_begin(other).await.unwrap();
    assert_eq!(
        store.purge_blobs(2).await.unwrap(),
        MAX_BLOBS_PER_OWNER as usize + 1
    );
}

/// Uploads a one-chunk blob of `len` sealed bytes for `owner`.
async fn uploaded(
    store: &Store,
    owner: &str,
    fill: u8,
    len: usize,
) -> letterme_protocol::blob::BlobId {
    upload(store, None, owner, fill, len, 0).await.unwrap()
}

/// Begins and completes a one-chunk blob of `len` sealed bytes owned by `owner`, brought
/// by peer `origin` (under a bound of `per_origin` bytes) or uploaded here.
async fn upload(
    store: &Store,
    origin: Option<&str>,
    owner: &str,
    fill: u8,
    len: usize,
    per_origin: u64,
) -> Result<letterme_protocol::blob::BlobId, StoreError> {
    use letterme_protocol::blob::Manifest;
    let data = vec![fill; len];
    let manifest = Manifest(vec![Manifest::chunk_hash(&data)]);
    let id = manifest.id();
    store
        .blob_begin(NewBlob {
            id,
            owner: owner.into(),
            origin: origin.map(str::to_owned),
            size: len as u64,
            manifest,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin,
            all_origins: u64::MAX,
        })
        .await?;
    store.blob_put(id, 0, data).await?;
    Ok(id)
}

async fn readable(store: &Store, blob: letterme_protocol::blob::BlobId, who: &str) -> bool {
    store
        .readable_blob(blob, who.into())
        .await
        .unwrap()
        .is_some()
}

/// The one value `sql` selects.
async fn value(store: &Store, sql: &'static str) -> i64 {
    store
        .read(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .await
        .unwrap()
}

async fn usage_of(store: &Store, who: &str) -> u64 {
    store
        .account(who.into())
        .await
        .unwrap()
        .unwrap()
        .usage_bytes
}

/// Waits for the background deletion that follows the last acknowledgement.
async fn gone(store: &Store, id: letterme_protocol::blob::BlobId) -> bool {
    for _ in 0..200 {
        if store.blob_status(id).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// A blob named by an envelope to several recipients is stored once, counted in each
/// recipient's usage, readable by them (and its uploader) only while the message is
/// pending for them, and deleted once the last of them acknowledged it.
#[tokio::test]
async fn a_named_blob_is_kept_once_counted_per_recipient_and_deleted_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    for a in ["a@x.test", "b@x.test", "c@x.test", "d@x.test"] {
        store.register(account(a), None).await.unwrap();
    }
    let blob = uploaded(&store, "a@x.test", 1, 1000).await;
    let to_b_and_c = NewDelivery {
        blobs: vec![blob],
        quota: 10_000,
        ..delivery(1, &["b@x.test", "c@x.test"], 5)
    };
    // The blob counts against the quota: 100 + 1000 bytes do not fit in 1000.
    assert!(matches!(
        store
            .deliver(NewDelivery {
                quota: 1000,
                ..to_b_and_c.clone()
            })
            .await,
        Err(StoreError::QuotaExceeded(_))
    ));
    assert!(!readable(&store, blob, "b@x.test").await);
    store.deliver(to_b_and_c).await.unwrap();
    for who in ["b@x.test", "c@x.test"] {
        assert_eq!(usage_of(&store, who).await, 1100);
        assert!(readable(&store, blob, who).await);
    }
    assert!(readable(&store, blob, "a@x.test").await);
    assert!(!readable(&store, blob, "d@x.test").await);
    // Stored once.
    assert_eq!(value(&store, "SELECT count(*) FROM blob_chunks").await, 1);

    store
        .ack(inbox(&store, "b@x.test").await, vec![[1; 16]])
        .await
        .unwrap();
    assert_eq!(usage_of(&store, "b@x.test").await, 0);
    assert!(!readable(&store, blob, "b@x.test").await);
    assert!(readable(&store, blob, "c@x.test").await);
    // A purge now leaves it: c has not acknowledged.
    assert_eq!(store.purge_blobs(u64::MAX).await.unwrap(), 0);
    store
        .ack(inbox(&store, "c@x.test").await, vec![[1; 16]])
        .await
        .unwrap();
    assert!(
        gone(&store, blob).await,
        "the blob outlived its last recipient"
    );
    assert_eq!(
        store
            .blob_chunk(blob, 0, Some("a@x.test".into()))
            .await
            .unwrap(),
        None
    );
}

/// An envelope may name only blobs that are here in full; otherwise nothing is delivered
/// (and the envelope id is not used up). Who uploaded a complete blob does not matter: its
/// chunks are the ones its id names (a recipient forwarding it needs no second copy).
#[tokio::test]
async fn an_envelope_naming_a_missing_or_partial_blob_is_refused_whole() {
    use letterme_protocol::blob::{BlobId, Manifest};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let foreign = uploaded(&store, "z@x.test", 2, 500).await;
    let manifest = Manifest(vec![[9; 32], [8; 32]]);
    let partial = manifest.id();
    store
        .blob_begin(NewBlob {
            id: partial,
            owner: "a@x.test".into(),
            origin: None,
            size: 2 * letterme_protocol::blob::SEALED_CHUNK as u64,
            manifest,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin: 0,
            all_origins: u64::MAX,
        })
        .await
        .unwrap();
    for named in [BlobId([5; 32]), partial] {
        let d = NewDelivery {
            blobs: vec![named],
            quota: 1 << 20,
            ..delivery(3, &["b@x.test"], 5)
        };
        assert!(matches!(
            store.deliver(d).await,
            Err(StoreError::BadBlob(_))
        ));
    }
    assert!(
        store
            .list(inbox(&store, "b@x.test").await, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .deliver(NewDelivery {
            blobs: vec![foreign],
            quota: 1 << 20,
            ..delivery(3, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    assert!(readable(&store, foreign, "b@x.test").await);
}

/// A blob no longer counts against its uploader's limit once a message names it; it
/// stays while the envelope waits for another domain, and goes with the last of both; the
/// retention purge releases it like an acknowledgement.
#[tokio::test]
async fn a_blob_waits_for_the_federation_queue_and_the_retention_purge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let blob = uploaded(&store, "a@x.test", 3, 800).await;
    store
        .accept_outgoing(
            NewDelivery {
                blobs: vec![blob],
                quota: 1 << 20,
                ..delivery(4, &["b@x.test"], 5)
            },
            vec![NewFederationRow {
                destination: "peer.test".into(),
                recipients: vec!["p@peer.test".into()],
            }],
            1 << 20,
        )
        .await
        .unwrap();
    // Named: the uploader may begin another of the same size under a limit of 1,000.
    let other = letterme_protocol::blob::Manifest(vec![[1; 32]]);
    store
        .blob_begin(NewBlob {
            id: other.id(),
            owner: "a@x.test".into(),
            origin: None,
            size: 800,
            manifest: other,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1000,
            per_origin: 0,
            all_origins: u64::MAX,
        })
        .await
        .unwrap();
    store
        .ack(inbox(&store, "b@x.test").await, vec![[4; 16]])
        .await
        .unwrap();
    assert_eq!(store.purge_blobs(0).await.unwrap(), 0);
    assert!(store.blob_status(blob).await.unwrap().is_some());
    let rows = store.federation_rows().await.unwrap();
    assert_eq!(rows.len(), 1);
    store
        .finish_federation(vec![(rows[0].id, RowOutcome::Done)], vec![], true)
        .await
        .unwrap();
    // The last domain done released it: a purge (this one, or the one the finish began in
    // the background) deletes it.
    store.purge_blobs(0).await.unwrap();
    assert!(store.blob_status(blob).await.unwrap().is_none());

    // Retention: a message nobody acknowledged goes after `cutoff`, and its blob with it.
    let kept = uploaded(&store, "a@x.test", 4, 900).await;
    store
        .deliver(NewDelivery {
            blobs: vec![kept],
            quota: 1 << 20,
            ..delivery(5, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    store.purge(6, 0).await.unwrap();
    assert_eq!(store.purge_blobs(0).await.unwrap(), 1);
    assert!(store.blob_status(kept).await.unwrap().is_none());
    assert_eq!(usage_of(&store, "b@x.test").await, 0);
}

/// What all peers together brought that no envelope names yet is bounded too: many
/// domains, each within its own bound, cannot multiply it; a local upload is not counted.
#[tokio::test]
async fn what_all_peers_bring_is_bounded_together() {
    use letterme_protocol::blob::Manifest;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let begin = |origin: Option<&str>, fill: u8, len: usize| {
        let manifest = Manifest(vec![Manifest::chunk_hash(&vec![fill; len])]);
        NewBlob {
            id: manifest.id(),
            owner: format!("u{fill}@{}", origin.unwrap_or("x.test")),
            origin: origin.map(str::to_owned),
            size: len as u64,
            manifest,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin: 1000,
            all_origins: 1500,
        }
    };
    store.blob_begin(begin(None, 1, 900)).await.unwrap();
    store
        .blob_begin(begin(Some("one.test"), 2, 900))
        .await
        .unwrap();
    // Within two.test's own bound, over what all peers may bring together.
    let refused = store.blob_begin(begin(Some("two.test"), 3, 700)).await;
    assert!(
        matches!(&refused, Err(StoreError::BlobLimit { owner, used: 900, limit: 1500 }) if owner.contains("all other domains")),
        "{refused:?}"
    );
    store
        .blob_begin(begin(Some("two.test"), 4, 600))
        .await
        .unwrap();
}

/// What a peer brought that no envelope names yet is bounded per peer; its envelope that
/// names a blob is delivered once the blob is here in full, after which the blob no longer
/// counts against the peer. A blob another domain brought first (one that shares a
/// recipient, say) is the same bytes: offered again it answers where it stands, and
/// serves the second domain's envelope too, so being first buys nothing.
#[tokio::test]
async fn a_peer_brings_blobs_for_its_senders_within_its_bound() {
    use letterme_protocol::federation::DeliveryStatus;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let peer = Some("peer.test");
    let blob = upload(&store, peer, "p@peer.test", 1, 600, 1000)
        .await
        .unwrap();
    // Over the peer's bound of 1,000 unnamed bytes, whoever its sender.
    assert!(matches!(
        upload(&store, peer, "q@peer.test", 2, 500, 1000).await,
        Err(StoreError::BlobLimit { .. })
    ));
    let item = Incoming {
        id: [9; 16],
        digest: [9; 32],
        sender: "p@peer.test".into(),
        envelope: vec![9; 100],
        blobs: vec![blob],
        recipients: vec!["b@x.test".into()],
    };
    assert_eq!(
        received(&store, "peer.test", 1, item).await,
        DeliveryStatus::Accepted
    );
    assert!(readable(&store, blob, "b@x.test").await);
    assert_eq!(usage_of(&store, "b@x.test").await, 700);
    // Named now: the peer has room for the next one.
    upload(&store, peer, "q@peer.test", 2, 500, 1000)
        .await
        .unwrap();
    // The same blob from another domain: where it stands.
    let s = store
        .blob_begin(NewBlob {
            id: blob,
            owner: "o@other.test".into(),
            origin: Some("other.test".into()),
            size: 600,
            manifest: store.blob_status(blob).await.unwrap().unwrap().manifest,
            created: 1,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin: 1000,
            all_origins: u64::MAX,
        })
        .await
        .unwrap();
    assert_eq!(
        (s.stored, s.owner.as_str(), s.origin.as_deref()),
        (vec![0], "p@peer.test", Some("peer.test"))
    );
    // The other domain's envelope naming the same blob is delivered as well.
    let theirs = Incoming {
        id: [8; 16],
        digest: [8; 32],
        sender: "o@other.test".into(),
        envelope: vec![8; 100],
        blobs: vec![blob],
        recipients: vec!["b@x.test".into()],
    };
    assert_eq!(
        received(&store, "other.test", 2, theirs).await,
        DeliveryStatus::Accepted
    );
}

/// A blob counts once in its sender's queued bytes however many queued envelopes name it
/// (a message with Bcc recipients is one envelope per Bcc copy), until the last of them is
/// done.
#[tokio::test]
async fn a_blob_named_by_several_queued_envelopes_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let blob = uploaded(&store, "a@x.test", 3, 5000).await;
    let remote = |d: &str| {
        vec![NewFederationRow {
            destination: d.into(),
            recipients: vec![format!("u@{d}")],
        }]
    };
    let with_blob = |id: u8| NewDelivery {
        blobs: vec![blob],
        ..delivery(id, &[], 5)
    };
    let queued = || {
        value(
            &store,
            "SELECT coalesce(sum(bytes), 0) FROM federation_queued",
        )
    };
    store
        .accept_outgoing(with_blob(1), remote("d1.test"), 5100)
        .await
        .unwrap();
    assert_eq!(queued().await, 5100);
    // The Bcc copy adds its envelope's 100 bytes, not the blob's 5,000 again.
    store
        .accept_outgoing(with_blob(2), remote("d2.test"), 5200)
        .await
        .unwrap();
    assert_eq!(queued().await, 5200);
    // The first is done: the blob still counts for the second, then not at all.
    for n in 1..=2 {
        let rows = store.federation_rows().await.unwrap();
        let done = rows
            .iter()
            .filter(|r| r.envelope_id[0] == n)
            .map(|r| (r.id, RowOutcome::Done))
            .collect();
        store.finish_federation(done, vec![], true).await.unwrap();
        assert_eq!(queued().await, if n == 1 { 5100 } else { 0 });
    }
}

/// An envelope that names blobs leaves alone, with its blob ids, and its blobs count in
/// its sender's queued bytes; a blob released but not yet purged is kept again when its
/// uploader begins it anew (a Bcc copy, another domain).
#[tokio::test]
async fn a_queued_envelope_with_blobs_goes_alone_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let blob = uploaded(&store, "a@x.test", 3, 5000).await;
    let remote = || {
        vec![NewFederationRow {
            destination: "peer.test".into(),
            recipients: vec!["p@peer.test".into()],
        }]
    };
    for id in [1u8, 2] {
        store
            .accept_outgoing(delivery(id, &[], 5), remote(), 1 << 20)
            .await
            .unwrap();
    }
    let with_blob = |id: u8| NewDelivery {
        blobs: vec![blob],
        ..delivery(id, &[], 5)
    };
    // 5,000 blob bytes do not fit in 5,250 with 200 queued already.
    assert!(matches!(
        store.accept_outgoing(with_blob(3), remote(), 5250).await,
        Err(StoreError::QueueFull { .. })
    ));
    store
        .accept_outgoing(with_blob(3), remote(), 1 << 20)
        .await
        .unwrap();
    store
        .accept_outgoing(delivery(4, &[], 5), remote(), 1 << 20)
        .await
        .unwrap();
    let limit = BatchLimit {
        rows: 100,
        bytes: 1 << 20,
    };
    let mut batches = Vec::new();
    let mut busy = Vec::new();
    while let Some(c) = store
        .claim_federation("peer.test".into(), 10, limit, busy.clone())
        .await
        .unwrap()
    {
        busy.push(c.txid);
        batches.push(
            c.rows
                .iter()
                .map(|r| (r.envelope_id[0], r.blobs.clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        batches,
        [
            vec![(1, vec![]), (2, vec![])],
            vec![(3, vec![blob])],
            vec![(4, vec![])]
        ]
    );
    // Released (here by the retention purge, which starts no purge of blobs of its own)
    // and begun again before the purge of blobs: it stays.
    store.register(account("b@x.test"), None).await.unwrap();
    let kept = uploaded(&store, "a@x.test", 4, 900).await;
    store
        .deliver(NewDelivery {
            blobs: vec![kept],
            quota: 1 << 20,
            ..delivery(5, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    store.purge(6, 0).await.unwrap();
    let s = store.blob_status(kept).await.unwrap().unwrap();
    store
        .blob_begin(NewBlob {
            id: kept,
            owner: "a@x.test".into(),
            origin: None,
            size: s.size,
            manifest: s.manifest,
            created: 20,
            max_size: 1 << 30,
            per_owner: 1 << 30,
            per_origin: 0,
            all_origins: u64::MAX,
        })
        .await
        .unwrap();
    assert_eq!(store.purge_blobs(0).await.unwrap(), 0);
    assert!(store.blob_status(kept).await.unwrap().is_some());
}

/// A blob begun again while an envelope names it (the sender's next envelope is on its
/// way) is kept as an upload when that envelope goes, not released; a released blob begun
/// again comes back only within its uploader's limits.
#[tokio::test]
async fn a_blob_begun_again_outlives_its_envelope_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let begin_again = |id, per_owner| {
        let store = store.clone();
        async move {
            let s = store.blob_status(id).await.unwrap().unwrap();
            store
                .blob_begin(NewBlob {
                    id,
                    owner: "a@x.test".into(),
                    origin: None,
                    size: s.size,
                    manifest: s.manifest,
                    created: 30,
                    max_size: 1 << 30,
                    per_owner,
                    per_origin: 0,
                    all_origins: u64::MAX,
                })
                .await
        }
    };
    let blob = uploaded(&store, "a@x.test", 6, 700).await;
    store
        .deliver(NewDelivery {
            blobs: vec![blob],
            quota: 1 << 20,
            ..delivery(6, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    begin_again(blob, 1 << 30).await.unwrap();
    // The retention purge lets the envelope go (and starts no purge of its own).
    store.purge(6, 0).await.unwrap();
    assert_eq!(store.purge_blobs(0).await.unwrap(), 0);
    assert!(store.blob_status(blob).await.unwrap().is_some());
    // Kept as an upload begun at 30: the purge of uploads older than 30 takes another one
    // (begun at 1), not this.
    uploaded(&store, "a@x.test", 7, 400).await;
    assert_eq!(store.purge_blobs(30).await.unwrap(), 1);
    assert!(store.blob_status(blob).await.unwrap().is_some());

    // Released and not purged yet: begun again only within the limit.
    store
        .deliver(NewDelivery {
            blobs: vec![blob],
            quota: 1 << 20,
            ..delivery(7, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    store.purge(6, 0).await.unwrap();
    uploaded(&store, "a@x.test", 8, 400).await;
    assert!(matches!(
        begin_again(blob, 1000).await,
        Err(StoreError::BlobLimit { .. })
    ));
    begin_again(blob, 1 << 30).await.unwrap();
    assert_eq!(store.purge_blobs(0).await.unwrap(), 0);
    assert!(store.blob_status(blob).await.unwrap().is_some());
}

/// A blob declared shorter than it is (by someone who began its id first, say) cannot
/// refuse the real last chunk once someone declares the real size; a last chunk longer
/// than any declaration is refused, so a blob never grows past what its limits were
/// checked against.
#[tokio::test]
async fn a_short_declaration_cannot_refuse_the_real_blob() {
    use letterme_protocol::blob::{Manifest, SEALED_CHUNK};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let chunks: Vec<Vec<u8>> = vec![vec![3; SEALED_CHUNK], vec![4; 900]];
    let manifest = Manifest(chunks.iter().map(|c| Manifest::chunk_hash(c)).collect());
    let begin = |owner: &str, size: usize| NewBlob {
        id: manifest.id(),
        owner: owner.into(),
        origin: None,
        size: size as u64,
        manifest: manifest.clone(),
        created: 1,
        max_size: 1 << 30,
        per_owner: 1 << 30,
        per_origin: 0,
        all_origins: u64::MAX,
    };
    store
        .blob_begin(begin("z@x.test", SEALED_CHUNK + 20))
        .await
        .unwrap();
    assert!(matches!(
        store.blob_put(manifest.id(), 1, chunks[1].clone()).await,
        Err(StoreError::ChunkMismatch(_))
    ));
    let s = store
        .blob_begin(begin("a@x.test", SEALED_CHUNK + 900))
        .await
        .unwrap();
    assert_eq!(
        (s.size, s.owner.as_str()),
        ((SEALED_CHUNK + 900) as u64, "z@x.test")
    );
    store
        .blob_put(manifest.id(), 1, chunks[1].clone())
        .await
        .unwrap();
    let s = store
        .blob_put(manifest.id(), 0, chunks[0].clone())
        .await
        .unwrap();
    assert!(s.complete());
    // Begun by someone else, the owner may no longer give it up.
    assert!(
        !store
            .blob_discard(manifest.id(), "z@x.test".into())
            .await
            .unwrap()
    );
}

/// Giving up an upload (`DELETE /v1/blobs/{id}`) takes only the caller's own, while no
/// envelope names it: never another user's, a named one, or one a peer brought.
#[tokio::test]
async fn only_an_unnamed_upload_of_ones_own_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let mine = uploaded(&store, "a@x.test", 1, 300).await;
    assert!(!store.blob_discard(mine, "b@x.test".into()).await.unwrap());
    assert!(store.blob_discard(mine, "a@x.test".into()).await.unwrap());
    assert!(store.blob_status(mine).await.unwrap().is_none());

    let named = uploaded(&store, "a@x.test", 2, 300).await;
    store
        .deliver(NewDelivery {
            blobs: vec![named],
            quota: 1 << 20,
            ..delivery(1, &["b@x.test"], 5)
        })
        .await
        .unwrap();
    assert!(!store.blob_discard(named, "a@x.test".into()).await.unwrap());
    assert!(readable(&store, named, "b@x.test").await);

    let brought = upload(&store, Some("peer.test"), "p@peer.test", 3, 300, 1 << 20)
        .await
        .unwrap();
    assert!(
        !store
            .blob_discard(brought, "p@peer.test".into())
            .await
            .unwrap()
    );
}

/// What `origin`'s transaction `txid` of one envelope got for `b@x.test`.
async fn received(
    store: &Store,
    origin: &str,
    txid: u8,
    item: Incoming,
) -> letterme_protocol::federation::DeliveryStatus {
    let id = letterme_protocol::codec::hex(&item.id);
    let report = store
        .receive_transaction(
            origin.into(),
            vec![txid],
            [txid; 32],
            vec![item],
            BTreeMap::new(),
            100,
            1_000_000,
            crate::config::FederationConfig::default(),
        )
        .await
        .unwrap()
        .unwrap();
    report.results[&id]["b@x.test"]
}

/// The upgrade to migration 15 counts a blob that two queued envelopes of one sender
/// name once (before, each counted it).
#[tokio::test]
async fn the_upgrade_counts_a_blob_queued_twice_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let queued = |c: &rusqlite::Connection| -> i64 {
        c.query_row(
            "SELECT bytes FROM federation_queued WHERE sender = 'a@x.test'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        super::migrations().to_version(&mut c, 14).unwrap();
        c.execute_batch(
            "INSERT INTO blobs (id, owner, size, manifest, created, state)
                 VALUES (x'01', 'a@x.test', 5000, x'', 1, 1);
             INSERT INTO federation_envelopes (sender, size, envelope, blob_bytes)
                 VALUES ('a@x.test', 100, x'00', 5000), ('a@x.test', 100, x'00', 5000);
             INSERT INTO federation_queue
                 (destination, envelope_id, sender, recipients, body, queued_at, next_attempt)
                 VALUES ('d1.test', x'11', 'a@x.test', 'u@d1.test', 1, 1, 1),
                        ('d2.test', x'22', 'a@x.test', 'u@d2.test', 2, 1, 1);
             INSERT INTO envelope_blobs (envelope_id, blob) VALUES (x'11', x'01'), (x'22', x'01');",
        )
        .unwrap();
        assert_eq!(queued(&c), 10_200);
    }
    drop(Store::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(queued(&c), 5_200);
}

/// A device of `b@x.test` certified by `identity`.
fn device_of(
    identity: &letterme_protocol::SigningKeypair,
    at: u64,
) -> letterme_protocol::device::Device {
    let address = letterme_protocol::Address::parse("b@x.test").unwrap();
    let device = letterme_protocol::SigningKeypair::generate();
    let key = letterme_protocol::EncryptionKeypair::generate().public();
    letterme_protocol::device::Device::create(&address, identity, &device, &key, at)
}

fn kt_row(idx: u64) -> (u64, [u8; 32], Vec<u8>) {
    (idx, [9; 32], vec![idx as u8])
}

/// Each device of a recipient gets the envelope and acknowledges it for itself: the
/// message stays until the last device acknowledged, the usage counts it once, and a
/// removed device's waiting deliveries go with it.
#[tokio::test]
async fn every_device_acknowledges_and_usage_counts_the_envelope_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    store.register(account("b@x.test"), None).await.unwrap();
    let first = inbox(&store, "b@x.test").await;
    let identity = letterme_protocol::SigningKeypair::generate();
    let (laptop, desktop) = (device_of(&identity, 5), device_of(&identity, 6));
    store
        .add_devices_logged(
            "b@x.test".into(),
            vec![first.device],
            vec![],
            vec![laptop.clone(), desktop.clone()],
            10,
            kt_row(0),
        )
        .await
        .unwrap();
    let devices = store.devices("b@x.test".into()).await.unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[1].statement.as_ref(), Some(&laptop));
    let ids: Vec<i64> = devices.iter().map(|d| d.id).collect();
    let inboxes: Vec<Inbox> = ids
        .iter()
        .map(|&device| Inbox {
            address: "b@x.test".into(),
            device,
        })
        .collect();
    store
        .deliver(delivery(1, &["b@x.test"], 100))
        .await
        .unwrap();
    let usage = |s: &Store| {
        let s = s.clone();
        async move {
            s.account("b@x.test".into())
                .await
                .unwrap()
                .unwrap()
                .usage_bytes
        }
    };
    assert_eq!(usage(&store).await, 100, "one envelope, counted once");
    for i in &inboxes {
        assert_eq!(store.list(i.clone(), 0, 10).await.unwrap().len(), 1);
    }
    assert_eq!(
        store.ack(inboxes[0].clone(), vec![[1; 16]]).await.unwrap(),
        1
    );
    // Acknowledged twice by one device: nothing more.
    assert_eq!(
        store.ack(inboxes[0].clone(), vec![[1; 16]]).await.unwrap(),
        0
    );
    assert!(
        store
            .list(inboxes[0].clone(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .fetch(inboxes[1].clone(), [1; 16])
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(usage(&store).await, 100, "still waiting for two devices");

    // Removing the desktop drops what waits for it; the laptop still gets its copy.
    let dropped = store
        .remove_device_logged("b@x.test".into(), ids.clone(), ids[2], 20, kt_row(1))
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    assert_eq!(store.devices("b@x.test".into()).await.unwrap().len(), 2);
    let removed = store
        .device_by_key("b@x.test".into(), desktop.cert.device_key.0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.removed, Some(20));
    assert_eq!(usage(&store).await, 100);
    assert_eq!(
        store.ack(inboxes[1].clone(), vec![[1; 16]]).await.unwrap(),
        1
    );
    assert_eq!(usage(&store).await, 0, "the last device acknowledged");
    assert!(
        store
            .fetch(inboxes[1].clone(), [1; 16])
            .await
            .unwrap()
            .is_none()
    );

    // Mail after the removal waits for the current devices only.
    store
        .deliver(delivery(2, &["b@x.test"], 200))
        .await
        .unwrap();
    assert!(
        store
            .list(inboxes[2].clone(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.list(inboxes[1].clone(), 0, 10).await.unwrap().len(),
        1
    );

    // A removed device is not added again, and a change made against a stale set is refused.
    let current: Vec<i64> = ids[..2].to_vec();
    let desktop_id = desktop.id();
    assert_eq!(
        store
            .add_devices_logged(
                "b@x.test".into(),
                current,
                vec![],
                vec![desktop],
                30,
                kt_row(2)
            )
            .await,
        Err(StoreError::DeviceKnown(desktop_id))
    );
    assert_eq!(
        store
            .add_devices_logged(
                "b@x.test".into(),
                ids,
                vec![],
                vec![device_of(&identity, 7)],
                30,
                kt_row(2)
            )
            .await,
        Err(StoreError::KeyConflict("b@x.test".into()))
    );
    // Neither wrote its log entry.
    assert_eq!(store.kt_entries().await.unwrap().len(), 2);
}

/// The upgrade to migration 16 gives every account its first device and keeps its waiting
/// mail and the numbering clients list from.
#[tokio::test]
async fn the_upgrade_gives_each_account_a_device_and_keeps_its_mail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        super::migrations().to_version(&mut c, 15).unwrap();
        c.execute_batch(
            "INSERT INTO accounts (address, identity_key, encryption_key, key_created, key_version,
                 binding_signature, attestation_sig, registered_at, usage_bytes)
                 VALUES ('b@x.test', zeroblob(32), zeroblob(32), 1, 1, zeroblob(64), zeroblob(64), 1, 200);
             INSERT INTO messages (id, sender, envelope, size, received, pending, blob_bytes)
                 VALUES (x'01010101010101010101010101010101', 'a@x.test', x'00', 100, 5, 1, 0),
                        (x'02020202020202020202020202020202', 'a@x.test', x'00', 100, 6, 1, 0);
             INSERT INTO deliveries (seq, recipient, message_id, received)
                 VALUES (41, 'b@x.test', x'01010101010101010101010101010101', 5), (42, 'b@x.test', x'02020202020202020202020202020202', 6);
             DELETE FROM deliveries WHERE seq = 42;
             UPDATE messages SET pending = 0 WHERE id = x'02020202020202020202020202020202';",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let devices = store.devices("b@x.test".into()).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].device_key, devices[0].statement.is_none()),
        ([0; 32], true)
    );
    let b = Inbox {
        address: "b@x.test".into(),
        device: devices[0].id,
    };
    let waiting = store.list(b.clone(), 0, 10).await.unwrap();
    assert_eq!(waiting.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![41]);
    // A client that saw 42 must see what comes next.
    let mut d = delivery(3, &["b@x.test"], 7);
    d.quota = 10_000;
    store.deliver(d).await.unwrap();
    let next = store.list(b, 42, 10).await.unwrap();
    assert_eq!(next.iter().map(|p| p.id[0]).collect::<Vec<_>>(), vec![3]);
    assert!(next[0].seq > 42);
}
