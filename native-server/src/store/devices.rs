//! Devices (`devices`): an account's devices, each receiving every envelope (DECISIONS
//! D83). Adding and removing devices are logged in key transparency in the same
//! transaction; removing one drops the deliveries still waiting for it.

use letterme_protocol::device::Device;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::mailbox::remove_delivery;
use super::{Store, StoreError};

/// One of an account's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub device_key: [u8; 32],
    pub encryption_key: [u8; 32],
    /// Its certificate and binding; `None` for the device of an account from before
    /// devices (its identity key) until it certified itself.
    pub statement: Option<Device>,
    pub added: u64,
    /// When it was removed; `None` while current.
    pub removed: Option<u64>,
}

/// A device's mailbox: the deliveries waiting for one device of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    pub address: String,
    /// `devices.id`.
    pub device: i64,
}

const COLUMNS: &str = "id, device_key, encryption_key, statement, added, removed";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    let statement: Option<String> = r.get(3)?;
    Ok(DeviceRow {
        id: r.get(0)?,
        device_key: r.get(1)?,
        encryption_key: r.get(2)?,
        // Written from a verified `Device` only; one that no longer parses is treated as
        // not certified, so the account cannot add devices until it certifies it again.
        statement: statement.and_then(|s| serde_json::from_str(&s).ok()),
        added: r.get::<_, i64>(4)? as u64,
        removed: r.get::<_, Option<i64>>(5)?.map(|t| t as u64),
    })
}

/// The current devices of `account`, oldest first.
pub(super) fn current(c: &Connection, account: &str) -> Result<Vec<DeviceRow>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM devices WHERE account = ?1 AND removed IS NULL ORDER BY id"
    ))?
    .query_map([account], row)?
    .collect::<Result<_, _>>()?)
}

/// The first device of a newly registered account: its identity key.
pub(super) fn add_first(
    c: &Connection,
    account: &str,
    identity_key: &[u8; 32],
    encryption_key: &[u8; 32],
    added: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO devices (account, device_key, encryption_key, statement, added)
         VALUES (?1, ?2, ?3, NULL, ?4)",
    )?
    .execute(params![
        account,
        identity_key.as_slice(),
        encryption_key.as_slice(),
        added as i64
    ])?;
    Ok(())
}

/// The encryption key of a device not yet certified follows the account's (a key rotation of
/// an account from before devices).
pub(super) fn follow_account_key(
    c: &Connection,
    account: &str,
    identity_key: &[u8; 32],
    encryption_key: &[u8; 32],
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE devices SET encryption_key = ?3
          WHERE account = ?1 AND device_key = ?2 AND statement IS NULL AND removed IS NULL",
    )?
    .execute(params![
        account,
        identity_key.as_slice(),
        encryption_key.as_slice()
    ])?;
    Ok(())
}

/// Refused unless the account's current devices are still `expected` (by id): another
/// change came first.
fn unchanged(c: &Connection, account: &str, expected: &[i64]) -> Result<(), StoreError> {
    let ids: Vec<i64> = current(c, account)?.iter().map(|d| d.id).collect();
    if ids == expected {
        Ok(())
    } else {
        Err(StoreError::KeyConflict(account.to_owned()))
    }
}

fn log_entry(c: &Connection, kt: &(u64, [u8; 32], Vec<u8>)) -> Result<(), StoreError> {
    c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?
        .execute(params![kt.0 as i64, kt.1.as_slice(), kt.2])?;
    Ok(())
}

fn statement_json(d: &Device) -> String {
    serde_json::to_string(d).expect("a device always serializes")
}

impl Store {
    /// The current devices of `account`, oldest first (none: no such account).
    pub async fn devices(&self, account: String) -> Result<Vec<DeviceRow>, StoreError> {
        self.read(move |c| current(c, &account)).await
    }

    /// The device of `account` with `device_key`, current or removed.
    pub async fn device_by_key(
        &self,
        account: String,
        device_key: [u8; 32],
    ) -> Result<Option<DeviceRow>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM devices WHERE account = ?1 AND device_key = ?2"
            ))?
            .query_row(params![account, device_key.as_slice()], row)
            .optional()?)
        })
        .await
    }

    /// Certifies the account's devices in `certified` (current devices without a statement,
    /// the same keys), adds `added`, and appends the key-transparency entry at `kt.0`, in
    /// one transaction. Refused when the current devices are no longer `expected`, or a
    /// device key of `added` was the account's before ([`StoreError::DeviceKnown`]).
    pub async fn add_devices_logged(
        &self,
        account: String,
        expected: Vec<i64>,
        certified: Vec<Device>,
        added: Vec<Device>,
        now: u64,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            unchanged(c, &account, &expected)?;
            let mut certify = c.prepare_cached(
                "UPDATE devices SET statement = ?3
                  WHERE account = ?1 AND device_key = ?2 AND removed IS NULL",
            )?;
            for d in &certified {
                certify.execute(params![
                    account,
                    d.cert.device_key.as_bytes().as_slice(),
                    statement_json(d)
                ])?;
            }
            let mut insert = c.prepare_cached(
                "INSERT OR IGNORE INTO devices (account, device_key, encryption_key, statement, added)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for d in &added {
                let n = insert.execute(params![
                    account,
                    d.cert.device_key.as_bytes().as_slice(),
                    d.binding.encryption_key.as_bytes().as_slice(),
                    statement_json(d),
                    now as i64
                ])?;
                if n == 0 {
                    return Err(StoreError::DeviceKnown(d.id()));
                }
            }
            log_entry(c, &kt)
        })
        .await
    }

    /// Removes device `device` of `account`, drops the deliveries waiting for it, and
    /// appends the key-transparency entry at `kt.0`, in one transaction. Refused when the
    /// current devices are no longer `expected`. Returns how many deliveries it dropped.
    pub async fn remove_device_logged(
        &self,
        account: String,
        expected: Vec<i64>,
        device: i64,
        now: u64,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<usize, StoreError> {
        let (dropped, released) = self
            .write(move |c| {
                unchanged(c, &account, &expected)?;
                c.prepare_cached("UPDATE devices SET removed = ?3 WHERE account = ?1 AND id = ?2")?
                    .execute(params![account, device, now as i64])?;
                let waiting: Vec<[u8; 16]> = c
                    .prepare_cached(
                        "SELECT message_id FROM deliveries WHERE recipient = ?1 AND device = ?2",
                    )?
                    .query_map(params![account, device], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let inbox = Inbox {
                    address: account.clone(),
                    device,
                };
                let mut dropped = 0;
                for id in &waiting {
                    dropped += remove_delivery(c, &inbox, id)?;
                }
                log_entry(c, &kt)?;
                Ok((dropped, super::blobs::any_released(c)?))
            })
            .await?;
        self.purge_released_later(released);
        Ok(dropped)
    }
}
