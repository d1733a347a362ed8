//! The SMTP queue's tables (migrations/0003). A message is stored once; each destination
//! domain gets a row with the recipients still to reach there. Every change is one
//! group-commit write, so the API answers only after the message is on disk, and a notice
//! to the sender lands in the same transaction that retires the row it reports on.

use std::collections::HashSet;

use rusqlite::{OptionalExtension as _, params};

use super::mailbox::deliver_in;
use super::{NewDelivery, Store, StoreError, split_lines};

/// What kind of mail a queued message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpKind {
    /// The user's RFC 5322 message, sealed under the queue key.
    Relay,
    /// A notice that a message waits in letter.me; no content is stored.
    Notice,
}

impl SmtpKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Notice => "notice",
        }
    }
}

/// A message handed over for delivery outside letter.me.
#[derive(Debug, Clone)]
pub struct NewSmtp {
    pub sender: String,
    pub kind: SmtpKind,
    /// Relay: the sealed message; notice: `None`.
    pub sealed: Option<Vec<u8>>,
    pub size: u64,
    /// (domain, recipients there)
    pub destinations: Vec<(String, Vec<String>)>,
    pub now: u64,
    /// Recipients outside letter.me `sender` may reach per UTC day.
    pub daily_cap: u32,
}

/// A queue row as the worker sees it.
#[derive(Debug, Clone)]
pub struct SmtpRow {
    pub id: i64,
    pub message: i64,
    pub domain: String,
    pub recipients: Vec<String>,
    pub sender: String,
    pub kind: SmtpKind,
    pub sealed: Option<Vec<u8>>,
    pub size: u64,
    pub queued_at: u64,
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_error: Option<String>,
}

/// What to do with a row after an attempt.
#[derive(Debug, Clone)]
pub enum SmtpOutcome {
    /// Delivered, or failed for good (with a notice alongside): remove.
    Done,
    /// Try these recipients again at `next_attempt`.
    Retry {
        recipients: Vec<String>,
        next_attempt: u64,
        error: String,
    },
}

const COLUMNS: &str = "q.id, q.message, q.domain, q.recipients, m.sender, m.kind, m.sealed, m.size, \
                       m.queued_at, q.attempts, q.next_attempt, q.last_error";

/// [`COLUMNS`] with NULL for the sealed message.
const LIGHT: &str = "q.id, q.message, q.domain, q.recipients, m.sender, m.kind, NULL, m.size, \
                     m.queued_at, q.attempts, q.next_attempt, q.last_error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SmtpRow> {
    Ok(SmtpRow {
        id: r.get(0)?,
        message: r.get(1)?,
        domain: r.get(2)?,
        recipients: split_lines(&r.get::<_, String>(3)?),
        sender: r.get(4)?,
        kind: if r.get::<_, String>(5)? == "notice" {
            SmtpKind::Notice
        } else {
            SmtpKind::Relay
        },
        sealed: r.get(6)?,
        size: r.get::<_, i64>(7)? as u64,
        queued_at: r.get::<_, i64>(8)? as u64,
        attempts: r.get(9)?,
        next_attempt: r.get::<_, i64>(10)? as u64,
        last_error: r.get(11)?,
    })
}

/// The UTC day number of `unix` seconds, for the daily cap.
fn utc_day(unix: u64) -> i64 {
    (unix / 86_400) as i64
}

impl Store {
    /// Queues a message: counts it against the sender's daily cap and stores it with one
    /// row per destination domain, in one transaction. Returns the message id.
    pub async fn queue_smtp(&self, m: NewSmtp) -> Result<i64, StoreError> {
        self.write(move |c| {
            let n: u32 = m.destinations.iter().map(|(_, r)| r.len() as u32).sum();
            let day = utc_day(m.now);
            let used: u32 = c
                .prepare_cached("SELECT count FROM smtp_usage WHERE sender = ?1 AND day = ?2")?
                .query_row(params![m.sender, day], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            if used.saturating_add(n) > m.daily_cap {
                return Err(StoreError::DailyCap {
                    sender: m.sender.clone(),
                    cap: m.daily_cap,
                });
            }
            c.prepare_cached(
                "INSERT INTO smtp_usage (sender, day, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sender, day) DO UPDATE SET count = count + ?3",
            )?
            .execute(params![m.sender, day, n])?;
            c.prepare_cached("DELETE FROM smtp_usage WHERE day < ?1")?
                .execute([day - 1])?;
            c.prepare_cached(
                "INSERT INTO smtp_messages (sender, kind, sealed, size, queued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                m.sender,
                m.kind.as_str(),
                m.sealed,
                m.size as i64,
                m.now as i64
            ])?;
            let id = c.last_insert_rowid();
            let mut ins = c.prepare_cached(
                "INSERT INTO smtp_queue (message, domain, recipients, next_attempt) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (domain, rcpts) in &m.destinations {
                ins.execute(params![id, domain, rcpts.join("\n"), m.now as i64])?;
            }
            Ok(id)
        })
        .await
    }

    /// Up to `max` due rows not in `busy`, oldest first, without their sealed messages
    /// (see [`Store::smtp_sealed`]): the worker looks often and sends only some.
    pub async fn due_smtp(
        &self,
        now: u64,
        max: usize,
        busy: Vec<i64>,
    ) -> Result<Vec<SmtpRow>, StoreError> {
        self.read(move |c| {
            let busy: HashSet<i64> = busy.into_iter().collect();
            let mut out = Vec::new();
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LIGHT} FROM smtp_queue q JOIN smtp_messages m ON m.id = q.message
                  WHERE q.next_attempt <= ?1 ORDER BY q.next_attempt, q.id LIMIT ?2"
            ))?;
            for r in stmt.query_map(params![now as i64, (max + busy.len()) as i64], row)? {
                let r = r?;
                if !busy.contains(&r.id) && out.len() < max {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The sealed messages of these message ids.
    pub async fn smtp_sealed(
        &self,
        messages: Vec<i64>,
    ) -> Result<std::collections::HashMap<i64, Vec<u8>>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sealed FROM smtp_messages WHERE id = ?1 AND sealed IS NOT NULL",
            )?;
            let mut out = std::collections::HashMap::new();
            for m in messages {
                if let Some(b) = stmt.query_row([m], |r| r.get::<_, Vec<u8>>(0)).optional()? {
                    out.insert(m, b);
                }
            }
            Ok(out)
        })
        .await
    }

    /// When the next not-yet-due row is due.
    pub async fn next_smtp_due(&self) -> Result<Option<u64>, StoreError> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT min(next_attempt) FROM smtp_queue", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })?
                .map(|t| t as u64),
            )
        })
        .await
    }

    /// Records attempts: removes finished rows (and messages with no rows left), reschedules
    /// the rest, and delivers `notices` to local senders — all in one transaction.
    pub async fn finish_smtp(
        &self,
        outcomes: Vec<(i64, SmtpOutcome)>,
        notices: Vec<NewDelivery>,
    ) -> Result<(), StoreError> {
        let rcpts: Vec<String> = notices.iter().flat_map(|n| n.recipients.clone()).collect();
        self.write(move |c| {
            for (id, outcome) in &outcomes {
                match outcome {
                    SmtpOutcome::Done => {
                        let message: Option<i64> = c
                            .prepare_cached("DELETE FROM smtp_queue WHERE id = ?1 RETURNING message")?
                            .query_row([id], |r| r.get(0))
                            .optional()?;
                        if let Some(m) = message {
                            c.prepare_cached(
                                "DELETE FROM smtp_messages WHERE id = ?1
                                   AND NOT EXISTS (SELECT 1 FROM smtp_queue WHERE message = ?1)",
                            )?
                            .execute([m])?;
                        }
                    }
                    SmtpOutcome::Retry {
                        recipients,
                        next_attempt,
                        error,
                    } => {
                        c.prepare_cached(
                            "UPDATE smtp_queue SET recipients = ?2, next_attempt = ?3, last_error = ?4,
                                    attempts = attempts + 1 WHERE id = ?1",
                        )?
                        .execute(params![id, recipients.join("\n"), *next_attempt as i64, error])?;
                    }
                }
            }
            for n in &notices {
                deliver_in(c, n)?;
            }
            Ok(())
        })
        .await?;
        self.wake_recipients(&rcpts);
        Ok(())
    }

    /// The whole SMTP queue (for `letterme queue` and tests); sealed bodies left out.
    pub async fn smtp_rows(&self) -> Result<Vec<SmtpRow>, StoreError> {
        self.read(|c| {
            let mut rows: Vec<SmtpRow> = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM smtp_queue q JOIN smtp_messages m ON m.id = q.message
                      ORDER BY q.id"
                ))?
                .query_map([], row)?
                .collect::<Result<_, _>>()?;
            for r in &mut rows {
                r.sealed = None;
            }
            Ok(rows)
        })
        .await
    }
}
