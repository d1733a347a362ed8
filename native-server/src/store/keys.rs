//! The server's own keys (`server_keys`): the domain key, its next and previous, the DKIM,
//! queue and VRF keys, each sealed at rest.

use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError};

impl Store {
    pub async fn server_key(
        &self,
        name: &'static str,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, String)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT public_key, sealed, kdf FROM server_keys WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })
        .await
    }

    /// A server key's public half, sealed secret, KDF and creation (or retirement) time.
    pub async fn server_key_row(
        &self,
        name: &'static str,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, String, u64)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT public_key, sealed, kdf, created FROM server_keys WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)),
            )
            .optional()?)
        })
        .await
    }

    pub async fn put_server_key(
        &self,
        name: &'static str,
        public_key: Vec<u8>,
        sealed: Vec<u8>,
        kdf: String,
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO server_keys (name, public_key, sealed, kdf, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, public_key, sealed, kdf, now as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes the next domain key the domain key and keeps the replaced one as the previous,
    /// logs the change in key transparency, and attests every account again with `signer`
    /// (the new key) — all in one transaction. Returns how many accounts were attested.
    pub async fn switch_domain_key(
        &self,
        signer: letterme_protocol::SigningKeypair,
        now: u64,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM server_keys WHERE name = 'domain-previous'", [])?;
            c.execute(
                "UPDATE server_keys SET name = 'domain-previous', created = ?1 WHERE name = 'domain'",
                [now as i64],
            )?;
            c.execute(
                "UPDATE server_keys SET name = 'domain' WHERE name = 'domain-next'",
                [],
            )?;
            // The change of domain key is public: it goes into the key-transparency log.
            let entry = letterme_protocol::kt::LogEntry::domain_key(&signer.public(), now);
            c.execute(
                "INSERT INTO kt_log (idx, label, entry)
                 VALUES ((SELECT count(*) FROM kt_log), ?1, ?2)",
                params![entry.label.as_slice(), entry.encode()],
            )?;
            super::accounts::reattest_all(c, &signer)
        })
        .await
    }
}
