//! SQLite plumbing the server's store and the client's cache share.
//!
//! Both write through one connection in WAL mode with `synchronous=FULL`. SQLite copies the
//! WAL back into the database file (a checkpoint) inside the commit that takes the WAL past
//! 1,000 pages, so that commit, and every writer queued behind it, waits for the copy and
//! an `fsync` of the database file. Here the copy runs on a thread and connection of its
//! own, nudged after the commits that write much, and a commit returns once its own frames
//! are on disk (DECISIONS D19 for the cache, D79 for the server).

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;

/// The backstop for many small commits (the server's store): WAL pages (of 4 KiB) past
/// which the WAL is brought back to empty, should the copies fall behind a run of commits.
/// The writer's connection then checkpoints by itself, and the checkpoint thread copies
/// everything and empties the file, waiting for the writer (the busy timeout). SQLite's own
/// threshold is 1,000 pages; a sync page's commit in the cache alone writes about 1,500. A
/// WAL four times as long made the server's native deliveries slower (PERFORMANCE.md).
pub const WAL_BACKSTOP_PAGES: i64 = 4096;

/// Leaves the checkpoints of `writer`'s database to a [`Checkpointer`]: the writer's own
/// commits checkpoint only past `backstop` pages, and a WAL that grew is cut back to that
/// size when it starts over.
fn leave_checkpoints(writer: &Connection, backstop: i64) -> rusqlite::Result<()> {
    writer.pragma_update(None, "wal_autocheckpoint", backstop)?;
    writer.pragma_update(None, "journal_size_limit", backstop * 4096)
}

/// The thread that copies the WAL into the database file when nudged.
#[derive(Debug)]
pub struct Checkpointer {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Takes the checkpoints of `writer`'s database over: the thread `name` copies the WAL on
    /// `conn`, a connection of its own to the database (in WAL mode, with a busy timeout),
    /// and empties a WAL grown past `backstop` pages ([`WAL_BACKSTOP_PAGES`] for many small
    /// commits), past which the writer's own commits copy it too.
    pub fn start(
        writer: &Connection,
        conn: Connection,
        name: &str,
        backstop: i64,
    ) -> std::io::Result<Self> {
        leave_checkpoints(writer, backstop).map_err(std::io::Error::other)?;
        let (tx, rx) = sync_channel::<()>(1);
        let shown = conn.path().unwrap_or_default().to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Ends when the checkpointer is dropped.
                while rx.recv().is_ok() {
                    // PASSIVE: copies what no reader still needs, never waits for anyone. A
                    // WAL that a run of commits grew past the backstop is copied whole and
                    // emptied (TRUNCATE), waiting for the writer: the pressure that keeps it
                    // bounded.
                    let checkpoint = |mode: &str| {
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                            r.get::<_, i64>(1)
                        })
                    };
                    let done = checkpoint("PASSIVE").and_then(|pages| {
                        if pages > backstop {
                            checkpoint("TRUNCATE")?;
                        }
                        Ok(())
                    });
                    if let Err(e) = done {
                        tracing::warn!(db = %shown, error = %e, "a checkpoint failed");
                    }
                }
            })?;
        Ok(Self {
            nudges: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint; one already asked for and not begun covers this one too.
    pub fn nudge(&self) {
        if let Some(nudges) = &self.nudges {
            let _ = nudges.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Closes its connection before the drop returns (the last connection to close copies
    /// and removes the WAL).
    fn drop(&mut self) {
        drop(self.nudges.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    /// A commit far below the backstop is copied into the database file by the thread, not
    /// by the writer, which SQLite's own threshold would not have made checkpoint yet.
    #[test]
    fn a_nudge_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open(&path);
        let checkpoints =
            Checkpointer::start(&writer, open(&path), "test-checkpoint", WAL_BACKSTOP_PAGES)
                .unwrap();
        writer
            .execute_batch("CREATE TABLE t (b BLOB); INSERT INTO t VALUES (zeroblob(2000000));")
            .unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        assert!(size() < 1_000_000, "the writer checkpointed by itself");
        checkpoints.nudge();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() < 2_000_000 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint came");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(checkpoints);
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }
}
