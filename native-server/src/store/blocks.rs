//! Block lists (`blocks`): each user's own, kept by their server.

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// A user's block list.
    pub async fn blocks(&self, owner: String) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT entry FROM blocks WHERE owner = ?1 ORDER BY entry")?
                    .query_map([owner], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    /// Adds (`true`) or removes an entry; returns whether anything changed.
    pub async fn set_block(
        &self,
        owner: String,
        entry: String,
        add: bool,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = if add {
                c.execute(
                    "INSERT OR IGNORE INTO blocks (owner, entry, created) VALUES (?1, ?2, ?3)",
                    params![owner, entry, now as i64],
                )?
            } else {
                c.execute(
                    "DELETE FROM blocks WHERE owner = ?1 AND entry = ?2",
                    params![owner, entry],
                )?
            };
            Ok(n > 0)
        })
        .await
    }
}
