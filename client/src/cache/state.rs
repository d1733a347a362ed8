//! Mailbox state in step across the account's devices (PROTOCOL.md §9.6): what this
//! device's mail clients change is recorded as operations in an outbox, in the transaction
//! that makes the change; what the other devices changed is applied here, each attribute a
//! last-writer-wins register, so every device that saw the same operations ends in the
//! same state whatever order they came in.
//!
//! A message's placement has an id all devices share (`mail.gid`): the envelope id for
//! mail as received, a random id for a copy. Its content has the id of the envelope that
//! brought it (`contents.origin`). Registers: (gid, `folder`) — the folder, or none once
//! removed (final); (gid, `flag:F`) — `1` or `0`; (gid, `content`) — where a placement made
//! elsewhere finds its content; (``, `folder:NAME`) — the folder's special use, or none
//! once deleted.

use letterme_protocol::state::{Stamp, StateOp};
use rusqlite::{OptionalExtension as _, Transaction, params};

use super::messages::{bump, next_uid, remove};
use super::{Cache, DELIMITER, flags_text, flags_vec, folder_by_name, insert_folder, is_standard};
use crate::error::ClientError;

/// A register: when it was written, and its value (`None`: removed).
struct Register {
    stamp: Stamp,
    value: Option<String>,
}

fn register(tx: &Transaction<'_>, key: &str, attr: &str) -> rusqlite::Result<Option<Register>> {
    tx.prepare_cached("SELECT clock, device, value FROM registers WHERE key = ?1 AND attr = ?2")?
        .query_row(params![key, attr], |r| {
            Ok(Register {
                stamp: Stamp {
                    clock: r.get::<_, i64>(0)? as u64,
                    device: r.get(1)?,
                },
                value: r.get(2)?,
            })
        })
        .optional()
}

/// Writes a register when `stamp` is newer than what it holds. A removed placement
/// (`folder` without a value) stays removed. Returns whether it was written.
fn write(
    tx: &Transaction<'_>,
    key: &str,
    attr: &str,
    stamp: &Stamp,
    value: Option<&str>,
) -> rusqlite::Result<bool> {
    if let Some(old) = register(tx, key, attr)? {
        let removed = attr == "folder" && old.value.is_none();
        if removed || old.stamp >= *stamp {
            return Ok(false);
        }
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO registers (key, attr, clock, device, value)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![key, attr, stamp.clock as i64, stamp.device, value])?;
    Ok(true)
}

/// The clock moves past every stamp seen (Lamport).
fn observe(tx: &Transaction<'_>, stamp: &Stamp) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE counters SET value = max(value, ?1) WHERE name = 'clock'")?
        .execute([stamp.clock as i64])?;
    Ok(())
}

/// Whether placement `gid` was removed (final).
fn removed(tx: &Transaction<'_>, gid: &str) -> rusqlite::Result<bool> {
    Ok(register(tx, gid, "folder")?.is_some_and(|r| r.value.is_none()))
}

fn flag_attr(flag: &str) -> String {
    format!("flag:{flag}")
}

fn folder_attr(name: &str) -> String {
    format!("folder:{name}")
}

/// Where a placement is now: (folder id, folder name, uid, flags).
fn placement(
    tx: &Transaction<'_>,
    gid: &str,
) -> rusqlite::Result<Option<(i64, String, u32, String)>> {
    tx.prepare_cached(
        "SELECT m.folder, f.name, m.uid, m.flags FROM mail m JOIN folders f ON f.id = m.folder
          WHERE m.gid = ?1",
    )?
    .query_row([gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
    .optional()
}

/// The folder `name`, made when missing (an operation naming a folder this device has not
/// heard of yet); `None` for a name no folder may have.
pub(super) fn folder_named(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<i64>> {
    if let Some(f) = folder_by_name(tx, name)? {
        return Ok(Some(f.id));
    }
    if !super::valid_name(name) {
        return Ok(None);
    }
    insert_folder(tx, name, None)?;
    Ok(folder_by_name(tx, name)?.map(|f| f.id))
}

/// Moves a placement to `folder` (a new UID there; a tombstone where it was).
fn move_to(
    tx: &Transaction<'_>,
    key: &super::CacheKey,
    gid: &str,
    folder: i64,
) -> rusqlite::Result<()> {
    let Some((from, _, uid, _)) = placement(tx, gid)? else {
        return Ok(());
    };
    if from == folder {
        return Ok(());
    }
    let (new, modseq) = next_uid(tx, folder)?;
    tx.execute(
        "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash, modseq)
         SELECT ?3, ?4, content, flags, internal_date, size, msgid_hash, ?5 FROM mail
          WHERE folder = ?1 AND uid = ?2",
        params![from, uid, folder, new, modseq as i64],
    )?;
    remove(tx, key, from, &[uid])?;
    tx.execute(
        "UPDATE mail SET gid = ?3 WHERE folder = ?1 AND uid = ?2",
        params![folder, new, gid],
    )?;
    Ok(())
}

/// Sets or clears a flag of a placement, when it is here.
fn set_flag(tx: &Transaction<'_>, gid: &str, flag: &str, on: bool) -> rusqlite::Result<()> {
    let Some((folder, _, uid, text)) = placement(tx, gid)? else {
        return Ok(());
    };
    let mut flags = flags_vec(&text);
    let had = super::has_flag(&flags, flag);
    if had == on {
        return Ok(());
    }
    if on {
        flags.push(flag.to_owned());
    } else {
        flags.retain(|f| !f.eq_ignore_ascii_case(flag));
    }
    let modseq = bump(tx, folder)?;
    tx.execute(
        "UPDATE mail SET flags = ?3, modseq = ?4 WHERE folder = ?1 AND uid = ?2",
        params![folder, uid, flags_text(&flags), modseq as i64],
    )?;
    Ok(())
}

impl Cache {
    /// This device's id, in the stamps of the operations it makes.
    pub fn set_device(&self, id: &str) {
        let _ = self.device.set(id.to_owned());
    }

    /// Whether the account has other devices to keep in step: operations are recorded for
    /// them only then.
    pub fn set_in_step(&self, on: bool) {
        self.in_step.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn in_step(&self) -> bool {
        self.in_step.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an operation of this device's in the outbox, stamped with the next clock,
    /// and writes its registers, so an older operation from elsewhere does not undo it.
    pub(super) fn emit(
        &self,
        tx: &Transaction<'_>,
        make: impl FnOnce(Stamp) -> StateOp,
    ) -> rusqlite::Result<()> {
        self.emit_carrying(tx, false, make)
    }

    /// [`Cache::emit`] of a placement whose message goes with it, read when it is sent
    /// (never kept in the outbox: content stays sealed at rest).
    pub(super) fn emit_carrying(
        &self,
        tx: &Transaction<'_>,
        carry: bool,
        make: impl FnOnce(Stamp) -> StateOp,
    ) -> rusqlite::Result<()> {
        if !self.in_step() {
            return Ok(());
        }
        let op = make(self.next_stamp(tx)?);
        record(tx, &op)?;
        tx.prepare_cached("INSERT INTO state_outbox (op, carry) VALUES (?1, ?2)")?
            .execute(params![
                serde_json::to_string(&op).unwrap_or_default(),
                carry
            ])?;
        Ok(())
    }

    /// The placement of a message this device files and sends to the account's other
    /// devices itself, in the envelope that carries it (a Sent copy): stamped and
    /// recorded here, not put in the outbox. `None` when there are no other devices.
    pub fn placement_for_all(
        &self,
        gid: &str,
        folder: &str,
        flags: &[String],
        date: i64,
    ) -> Result<Option<StateOp>, ClientError> {
        if !self.in_step() {
            return Ok(None);
        }
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let stamp = self.next_stamp(&tx).map_err(|e| self.err(e))?;
        let op = StateOp::Place {
            gid: gid.to_owned(),
            content: String::new(),
            folder: folder.to_owned(),
            flags: flags.to_vec(),
            date: Some(date),
            raw: None,
            stamp,
        };
        record(&tx, &op).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(op))
    }

    fn next_stamp(&self, tx: &Transaction<'_>) -> rusqlite::Result<Stamp> {
        let clock: i64 = tx.query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'clock' RETURNING value",
            [],
            |r| r.get(0),
        )?;
        Ok(Stamp {
            clock: clock as u64,
            device: self.device.get().cloned().unwrap_or_default(),
        })
    }

    /// This device's mailbox for a new device of the account: each folder a mail client
    /// made, and each placement with what the new device needs to file it, by folder.
    pub fn history(&self) -> Result<History, ClientError> {
        let c = self.lock();
        let folders = c
            .prepare_cached("SELECT name, special FROM folders ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<(String, Option<String>)>, _>>()
            })
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|(name, _)| !is_standard(name))
            .collect();
        let placements = c
            .prepare_cached(
                "SELECT m.folder, f.name, m.uid, m.gid, c.origin, m.flags, m.internal_date, m.size
                   FROM mail m JOIN folders f ON f.id = m.folder JOIN contents c ON c.id = m.content
                  WHERE m.gid IS NOT NULL ORDER BY m.folder, m.uid",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(Placement {
                        folder: r.get(0)?,
                        folder_name: r.get(1)?,
                        uid: r.get(2)?,
                        gid: r.get(3)?,
                        origin: r.get(4)?,
                        flags: flags_vec(&r.get::<_, String>(5)?),
                        date: r.get(6)?,
                        size: r.get::<_, i64>(7)?.max(0) as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.err(e))?;
        Ok(History {
            folders,
            placements,
        })
    }

    /// Operations waiting to be sent to the other devices, oldest first, at most `limit`
    /// and, past the first, about `max_bytes` of messages they carry: (their last outbox
    /// number, the operations).
    pub fn outbox(
        &self,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(i64, Vec<StateOp>)>, ClientError> {
        let rows: Vec<(i64, String, bool)> = {
            let c = self.lock();
            let mut stmt = c
                .prepare_cached("SELECT seq, op, carry FROM state_outbox ORDER BY seq LIMIT ?1")
                .map_err(|e| self.err(e))?;
            stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        let mut last = None;
        let mut ops = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for (seq, text, carry) in rows {
            if bytes >= max_bytes && !ops.is_empty() {
                break;
            }
            last = Some(seq);
            let Ok(mut op) = serde_json::from_str::<StateOp>(&text) else {
                continue;
            };
            if carry && let StateOp::Place { gid, raw, .. } = &mut op {
                *raw = self.whole_of(gid)?;
                bytes += raw.as_ref().map_or(0, Vec::len);
            }
            ops.push(op);
        }
        Ok(last.map(|l| (l, ops)))
    }

    /// The whole message of placement `gid`, if it is still here.
    pub fn whole_of(&self, gid: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let at: Option<(i64, u32)> = self
            .lock()
            .prepare_cached("SELECT folder, uid FROM mail WHERE gid = ?1")
            .and_then(|mut s| {
                s.query_row([gid], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((folder, uid)) = at else {
            return Ok(None);
        };
        Ok(self
            .fetch(folder, &[uid], super::Content::Whole)?
            .into_iter()
            .next()
            .and_then(|(_, raw, _)| raw))
    }

    /// The outbox's operations up to `upto` were sent.
    pub fn outbox_sent(&self, upto: i64) -> Result<(), ClientError> {
        self.lock()
            .execute("DELETE FROM state_outbox WHERE seq <= ?1", [upto])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Applies the other devices' operations (and this one's coming back), in order.
    pub(super) fn apply_ops(&self, tx: &Transaction<'_>, ops: &[StateOp]) -> rusqlite::Result<()> {
        for op in ops {
            observe(tx, op.stamp())?;
            match op {
                StateOp::Flag {
                    gid,
                    flag,
                    on,
                    stamp,
                } => {
                    if flag != "\\Recent"
                        && write(
                            tx,
                            gid,
                            &flag_attr(flag),
                            stamp,
                            Some(if *on { "1" } else { "0" }),
                        )?
                    {
                        set_flag(tx, gid, flag, *on)?;
                    }
                }
                StateOp::Move { gid, folder, stamp } => {
                    if write(tx, gid, "folder", stamp, Some(folder))?
                        && let Some(to) = folder_named(tx, folder)?
                    {
                        move_to(tx, &self.key, gid, to)?;
                    }
                }
                StateOp::Remove { gid, stamp } => {
                    if write(tx, gid, "folder", stamp, None)?
                        && let Some((folder, _, uid, _)) = placement(tx, gid)?
                    {
                        remove(tx, &self.key, folder, &[uid])?;
                    }
                }
                StateOp::Place {
                    gid,
                    content,
                    folder,
                    flags,
                    date,
                    raw,
                    stamp,
                } => {
                    write(tx, gid, "content", stamp, Some(content))?;
                    for f in flags {
                        write(tx, gid, &flag_attr(f), stamp, Some("1"))?;
                    }
                    let placed = write(tx, gid, "folder", stamp, Some(folder))?;
                    // A message that comes with its placement: filed as it, then put where
                    // the registers say (a later move may have come first).
                    if let Some(raw) = raw
                        && placement(tx, gid)?.is_none()
                        && !removed(tx, gid)?
                        && let Some(at) = folder_named(tx, folder)?
                    {
                        let mail = super::NewMail {
                            folder: folder.clone(),
                            flags: flags.clone(),
                            internal_date: date.unwrap_or_default(),
                            raw: raw.clone(),
                            message_id: None,
                            pieces: vec![],
                        };
                        self.file(tx, at, &mail, gid, Some(content))?;
                        self.materialize(tx, gid)?;
                    } else if placed {
                        self.materialize(tx, gid)?;
                    }
                }
                StateOp::CreateFolder {
                    name,
                    special,
                    stamp,
                } => {
                    if write(
                        tx,
                        "",
                        &folder_attr(name),
                        stamp,
                        Some(special.as_deref().unwrap_or("")),
                    )? && folder_by_name(tx, name)?.is_none()
                        && super::valid_name(name)
                    {
                        insert_folder(tx, name, special.as_deref())?;
                    }
                }
                StateOp::DeleteFolder { name, stamp } => {
                    if write(tx, "", &folder_attr(name), stamp, None)?
                        && !is_standard(name)
                        && let Some(f) = folder_by_name(tx, name)?
                    {
                        let uids = super::messages::uids_in(tx, f.id)?;
                        remove(tx, &self.key, f.id, &uids)?;
                        tx.execute("DELETE FROM vanished WHERE folder = ?1", [f.id])?;
                        tx.execute("DELETE FROM folders WHERE id = ?1", [f.id])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts placement `gid` where its registers say, once its content is here: a copy made
    /// elsewhere, or mail filed here before the operations about it came (or after).
    pub(super) fn materialize(&self, tx: &Transaction<'_>, gid: &str) -> rusqlite::Result<()> {
        let folder = register(tx, gid, "folder")?;
        if let Some((at, _, uid, _)) = placement(tx, gid)? {
            match folder {
                Some(Register { value: None, .. }) => remove(tx, &self.key, at, &[uid])?,
                Some(Register {
                    value: Some(name), ..
                }) => {
                    if let Some(to) = folder_named(tx, &name)? {
                        move_to(tx, &self.key, gid, to)?;
                    }
                }
                None => {}
            }
        } else if let Some(Register {
            value: Some(name), ..
        }) = folder
            && let Some(Register {
                value: Some(origin),
                ..
            }) = register(tx, gid, "content")?
            && let Some((content, date, size, hash)) = tx
                .prepare_cached(
                    "SELECT m.content, m.internal_date, m.size, m.msgid_hash FROM mail m
                       JOIN contents c ON c.id = m.content WHERE c.origin = ?1 LIMIT 1",
                )?
                .query_row([&origin], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .optional()?
            && let Some(to) = folder_named(tx, &name)?
        {
            let (uid, modseq) = next_uid(tx, to)?;
            tx.execute(
                "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash, modseq, gid)
                 VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?7, ?8)",
                params![to, uid, content, date, size, hash, modseq as i64, gid],
            )?;
        }
        // The flags its registers hold.
        let flags: Vec<(String, Option<String>)> = tx
            .prepare_cached(
                "SELECT substr(attr, 6), value FROM registers WHERE key = ?1 AND attr LIKE 'flag:%'",
            )?
            .query_map([gid], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (flag, value) in flags {
            set_flag(tx, gid, &flag, value.as_deref() == Some("1"))?;
        }
        Ok(())
    }

    /// The placements made elsewhere of the content envelope `origin` brought: filed now
    /// that it is here.
    pub(super) fn place_copies_of(
        &self,
        tx: &Transaction<'_>,
        origin: &str,
    ) -> rusqlite::Result<()> {
        let gids: Vec<String> = tx
            .prepare_cached(
                "SELECT key FROM registers WHERE attr = 'content' AND value = ?1 AND key != ?1",
            )?
            .query_map([origin], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for gid in std::iter::once(origin.to_owned()).chain(gids) {
            self.materialize(tx, &gid)?;
        }
        Ok(())
    }
}

/// Writes the registers of an operation this device makes.
fn record(tx: &Transaction<'_>, op: &StateOp) -> rusqlite::Result<()> {
    match op {
        StateOp::Flag {
            gid,
            flag,
            on,
            stamp,
        } => write(
            tx,
            gid,
            &flag_attr(flag),
            stamp,
            Some(if *on { "1" } else { "0" }),
        )?,
        StateOp::Move { gid, folder, stamp } => write(tx, gid, "folder", stamp, Some(folder))?,
        StateOp::Remove { gid, stamp } => write(tx, gid, "folder", stamp, None)?,
        StateOp::Place {
            gid,
            content,
            folder,
            stamp,
            ..
        } => {
            write(tx, gid, "content", stamp, Some(content))?;
            write(tx, gid, "folder", stamp, Some(folder))?
        }
        StateOp::CreateFolder {
            name,
            special,
            stamp,
        } => write(
            tx,
            "",
            &folder_attr(name),
            stamp,
            Some(special.as_deref().unwrap_or("")),
        )?,
        StateOp::DeleteFolder { name, stamp } => write(tx, "", &folder_attr(name), stamp, None)?,
    };
    Ok(())
}

/// The names a rename touches: the folder and every folder under it, old and new.
pub(super) fn renamed(
    tx: &Transaction<'_>,
    from: &str,
    to: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let prefix = format!("{from}{DELIMITER}");
    let names: Vec<String> = tx
        .prepare_cached(
            "SELECT name FROM folders WHERE name = ?1 OR substr(name, 1, length(?2)) = ?2",
        )?
        .query_map(params![from, prefix], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(names
        .into_iter()
        .map(|old| {
            let new = format!("{to}{}", &old[from.len()..]);
            (old, new)
        })
        .collect())
}

/// What [`Cache::history`] lists.
#[derive(Debug, Clone)]
pub struct History {
    /// Folders other than the standard ones, with their special use.
    pub folders: Vec<(String, Option<String>)>,
    pub placements: Vec<Placement>,
}

/// One message in one folder, as a new device files it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub folder: i64,
    pub folder_name: String,
    pub uid: u32,
    pub gid: String,
    /// The envelope that brought its content; none for one made here.
    pub origin: Option<String>,
    pub flags: Vec<String>,
    pub date: i64,
    pub size: u64,
}
