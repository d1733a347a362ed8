//! Accounts (`accounts`, `used_invites`): registration and key changes, each logged in
//! key transparency in the same transaction.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{Store, StoreError};

/// A registered account's key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub address: String,
    pub identity_key: [u8; 32],
    pub encryption_key: [u8; 32],
    pub key_created: u64,
    pub key_version: u32,
    pub binding_signature: [u8; 64],
    pub attestation_sig: [u8; 64],
    pub registered_at: u64,
    pub usage_bytes: u64,
}

pub(super) fn register_in(
    c: &Connection,
    acc: &AccountRow,
    invite_hash: Option<[u8; 32]>,
) -> Result<(), StoreError> {
    if let Some(h) = invite_hash {
        let used = c.execute(
            "INSERT OR IGNORE INTO used_invites (token_hash, address, used_at) VALUES (?1, ?2, ?3)",
            params![h.as_slice(), acc.address, acc.registered_at as i64],
        )?;
        if used == 0 {
            return Err(StoreError::InviteUsed);
        }
    }
    let n = c.execute(
        "INSERT OR IGNORE INTO accounts (address, identity_key, encryption_key, key_created, key_version,
             binding_signature, attestation_sig, registered_at, usage_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
        params![
            acc.address,
            acc.identity_key.as_slice(),
            acc.encryption_key.as_slice(),
            acc.key_created as i64,
            acc.key_version,
            acc.binding_signature.as_slice(),
            acc.attestation_sig.as_slice(),
            acc.registered_at as i64,
        ],
    )?;
    if n == 0 {
        return Err(StoreError::AddressTaken);
    }
    super::devices::add_first(
        c,
        &acc.address,
        &acc.identity_key,
        &acc.encryption_key,
        acc.registered_at,
    )
}

/// An account's address and key columns: identity, encryption, created, version, binding.
type AccountKeys = (String, [u8; 32], [u8; 32], i64, u32, [u8; 64]);

/// Signs every account's attestation again with `key` (a domain key rotation); returns how
/// many accounts there are.
pub(super) fn reattest_all(
    c: &Connection,
    key: &letterme_protocol::SigningKeypair,
) -> Result<usize, StoreError> {
    let rows: Vec<AccountKeys> = c
        .prepare(
            "SELECT address, identity_key, encryption_key, key_created, key_version, binding_signature
               FROM accounts",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut update = c.prepare("UPDATE accounts SET attestation_sig = ?2 WHERE address = ?1")?;
    for (address, identity, encryption, created, version, binding) in &rows {
        let address = letterme_protocol::Address::parse(address)
            .map_err(|e| StoreError::Database(format!("stored address {address:?}: {e}")))?;
        let binding = letterme_protocol::KeyBinding {
            address: address.clone(),
            identity_key: letterme_protocol::IdentityPublicKey(*identity),
            encryption_key: letterme_protocol::EncryptionPublicKey(*encryption),
            created: *created as u64,
            signature: letterme_protocol::Signature(*binding),
        };
        let att = letterme_protocol::Attestation::issue(&binding, *version, key);
        update.execute(params![address.as_str(), att.signature.0.as_slice()])?;
    }
    Ok(rows.len())
}

impl Store {
    pub async fn register(
        &self,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        self.write(move |c| register_in(c, &acc, invite_hash)).await
    }

    /// Registers and appends the key-transparency entry at `kt.0` in one transaction.
    pub async fn register_logged(
        &self,
        acc: AccountRow,
        invite_hash: Option<[u8; 32]>,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            register_in(c, &acc, invite_hash)?;
            c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?
                .execute(params![kt.0 as i64, kt.1.as_slice(), kt.2])?;
            Ok(())
        })
        .await
    }

    /// Replaces an account's keys — the new key version, binding and attestation in `acc`
    /// — and appends the key-transparency entry at `kt.0`, in one transaction. Refused
    /// when the stored version is not `acc.key_version - 1` (a concurrent change).
    pub async fn change_keys_logged(
        &self,
        acc: AccountRow,
        kt: (u64, [u8; 32], Vec<u8>),
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let current: Option<u32> = c
                .prepare_cached("SELECT key_version FROM accounts WHERE address = ?1")?
                .query_row([&acc.address], |r| r.get(0))
                .optional()?;
            match current {
                None => return Err(StoreError::NoAccount(acc.address.clone())),
                Some(v) if v.checked_add(1) != Some(acc.key_version) => {
                    return Err(StoreError::KeyConflict(acc.address.clone()));
                }
                Some(_) => {}
            }
            c.prepare_cached(
                "UPDATE accounts SET identity_key = ?2, encryption_key = ?3, key_created = ?4,
                        key_version = ?5, binding_signature = ?6, attestation_sig = ?7
                  WHERE address = ?1",
            )?
            .execute(params![
                acc.address,
                acc.identity_key.as_slice(),
                acc.encryption_key.as_slice(),
                acc.key_created as i64,
                acc.key_version,
                acc.binding_signature.as_slice(),
                acc.attestation_sig.as_slice(),
            ])?;
            super::devices::follow_account_key(
                c,
                &acc.address,
                &acc.identity_key,
                &acc.encryption_key,
            )?;
            c.prepare_cached("INSERT INTO kt_log (idx, label, entry) VALUES (?1, ?2, ?3)")?
                .execute(params![kt.0 as i64, kt.1.as_slice(), kt.2])?;
            Ok(())
        })
        .await
    }

    /// Every account's logged fields — (address, identity key, encryption key, key
    /// version, registered at) — oldest first.
    #[allow(clippy::type_complexity)]
    pub async fn accounts_for_log(
        &self,
    ) -> Result<Vec<(String, [u8; 32], [u8; 32], u32, u64)>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT address, identity_key, encryption_key, key_version, registered_at
                   FROM accounts ORDER BY registered_at, address",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, i64>(4)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn account(&self, address: String) -> Result<Option<AccountRow>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT address, identity_key, encryption_key, key_created, key_version, binding_signature,
                        attestation_sig, registered_at, usage_bytes FROM accounts WHERE address = ?1",
            )?
            .query_row([address], |r| {
                Ok(AccountRow {
                    address: r.get(0)?,
                    identity_key: r.get(1)?,
                    encryption_key: r.get(2)?,
                    key_created: r.get::<_, i64>(3)? as u64,
                    key_version: r.get(4)?,
                    binding_signature: r.get(5)?,
                    attestation_sig: r.get(6)?,
                    registered_at: r.get::<_, i64>(7)? as u64,
                    usage_bytes: r.get::<_, i64>(8)? as u64,
                })
            })
            .optional()?)
        })
        .await
    }

    pub async fn account_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }
}
