//! Messages in a mailbox: filing, reading, flags, copies, expunges, and what changed since a
//! MODSEQ. Each operation is one transaction under the cache's lock, so what two IMAP
//! sessions do at once is applied one after the other to the stored state.

use std::collections::{BTreeSet, HashSet};

use letterme_protocol::keys::random_bytes;
use letterme_protocol::state::StateOp;
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use letterme_protocol::blob::Opener;

use super::key::{CacheKey, Part};
use super::{
    Cache, ClientError, Folder, MailMeta, MailboxError, NewMail, Piece, Stored, Synced, flags_text,
    flags_vec, folder_by_id, folder_by_name, has_flag,
};

/// How STORE changes flags (RFC 3501 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

impl FlagOp {
    /// The flag set after applying `given` to `current`.
    pub fn apply(self, current: &[String], given: &[String]) -> Vec<String> {
        match self {
            Self::Replace => given.to_vec(),
            Self::Add => {
                let mut v = current.to_vec();
                for f in given {
                    if !has_flag(&v, f) {
                        v.push(f.clone());
                    }
                }
                v
            }
            Self::Remove => current
                .iter()
                .filter(|f| !has_flag(given, f))
                .cloned()
                .collect(),
        }
    }
}

/// One message's flags after a STORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFlags {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    /// Whether this STORE changed them (an unchanged message keeps its MODSEQ).
    pub changed: bool,
}

/// What a STORE did.
#[derive(Debug, Clone, Default)]
pub struct StoreOutcome {
    /// The messages found, in UID order.
    pub stored: Vec<StoredFlags>,
    /// UIDs left alone because they changed after the client's UNCHANGEDSINCE (RFC 7162
    /// §3.1.3).
    pub modified: Vec<u32>,
}

/// What changed in a mailbox after a MODSEQ.
#[derive(Debug, Clone)]
pub struct Changes {
    /// The folder as it is now (HIGHESTMODSEQ, the first UID not yet `\Recent`).
    pub folder: Folder,
    /// Messages added or with flags changed, by UID.
    pub changed: Vec<MailMeta>,
    /// UIDs expunged, ascending.
    pub vanished: Vec<u32>,
}

/// A message's metadata, its content when asked for, and when that content is whole but
/// its pieces' blobs are not downloaded yet, where they go.
pub type Fetched = (MailMeta, Option<Vec<u8>>, Option<Awaiting>);

/// A message served before its blobs were downloaded: their places in the content are
/// filled with lines of `A` of their sizes, so its structure and every other part are
/// served as they will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The message's content, by which its download is asked for.
    pub content: i64,
    /// The filled places, in order.
    pub holes: Vec<std::ops::Range<usize>>,
}

/// What a message filed before its blobs waits for.
#[derive(Debug, Clone)]
pub struct Awaited {
    /// The envelope to acknowledge once they are kept.
    pub envelope_id: String,
    /// The pieces whose blobs are to be downloaded; `None` when every copy of the message
    /// was expunged meanwhile (nothing to download).
    pub pieces: Option<Vec<Piece>>,
}

/// The line a blob's place is filled with until it is downloaded: the length of a
/// base64 line (RFC 2045 §6.8), and never a boundary (those begin with `--`).
const FILLER_LINE: &[u8; 78] =
    b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n";

/// How much of each message [`Cache::fetch`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Content {
    /// Metadata only.
    None,
    /// The header section, through the blank line that ends it.
    Head,
    /// The whole message.
    Whole,
}

/// Where a message's header section ends: after its first empty line (RFC 5322 §2.1), or
/// the whole message when it has none.
pub fn header_end(raw: &[u8]) -> usize {
    let mut at = 0;
    while let Some(i) = raw[at..].iter().position(|&b| b == b'\n') {
        let line_end = at + i + 1;
        // An empty line: "\n" or "\r\n" right after the previous line's end.
        if i == 0 || (i == 1 && raw[at] == b'\r') {
            return line_end;
        }
        at = line_end;
    }
    raw.len()
}

const META_COLUMNS: &str = "uid, flags, internal_date, size, modseq";

fn meta_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MailMeta> {
    Ok(MailMeta {
        uid: r.get(0)?,
        flags: flags_vec(&r.get::<_, String>(1)?),
        internal_date: r.get(2)?,
        size: r.get(3)?,
        modseq: r.get::<_, i64>(4)? as u64,
    })
}

impl Cache {
    /// Every message in a folder, by UID.
    pub fn messages(&self, folder: i64) -> Result<Vec<MailMeta>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {META_COLUMNS} FROM mail WHERE folder = ?1 ORDER BY uid"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([folder], meta_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The given UIDs that still exist, by UID, each with its decrypted content when
    /// `content` is set: metadata and content read together, so a message expunged meanwhile
    /// is missing from the answer rather than present without its content.
    pub fn fetch(
        &self,
        folder: i64,
        uids: &[u32],
        content: Content,
    ) -> Result<Vec<Fetched>, ClientError> {
        let (Some(&lo), Some(&hi)) = (uids.iter().min(), uids.iter().max()) else {
            return Ok(Vec::new());
        };
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let c = self.lock();
        let sql = match content {
            Content::Whole => {
                "SELECT m.uid, m.flags, m.internal_date, m.size, m.modseq, c.id, c.nonce, c.data,
                        0, c.pieces_nonce, c.pieces,
                        EXISTS (SELECT 1 FROM awaiting a WHERE a.content = c.id)
                 FROM mail m JOIN contents c ON c.id = m.content
                 WHERE m.folder = ?1 AND m.uid BETWEEN ?2 AND ?3 ORDER BY m.uid"
            }
            Content::Head => {
                "SELECT m.uid, m.flags, m.internal_date, m.size, m.modseq, c.id,
                        COALESCE(c.head_nonce, c.nonce), COALESCE(c.head, c.data), c.head IS NOT NULL
                 FROM mail m JOIN contents c ON c.id = m.content
                 WHERE m.folder = ?1 AND m.uid BETWEEN ?2 AND ?3 ORDER BY m.uid"
            }
            Content::None => {
                "SELECT uid, flags, internal_date, size, modseq FROM mail
                 WHERE folder = ?1 AND uid BETWEEN ?2 AND ?3 ORDER BY uid"
            }
        };
        let mut stmt = c.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![folder, lo, hi])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(wanted.len());
        // Messages whose blobs are put in place once the connection is free again
        // (position in `out`, pieces): a large one takes a while, and other sessions wait
        // for the connection meanwhile.
        let mut to_assemble = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let meta = meta_row(r).map_err(|e| self.err(e))?;
            if !wanted.contains(&meta.uid) {
                continue;
            }
            let mut awaiting = None;
            let raw = if content == Content::None {
                None
            } else {
                let id: i64 = r.get(5).map_err(|e| self.err(e))?;
                let head: bool = r.get(8).map_err(|e| self.err(e))?;
                let blob = |i| {
                    r.get_ref(i)
                        .and_then(|v| v.as_blob().map_err(Into::into))
                        .map_err(|e| self.err(e))
                };
                let part = if head { Part::Head } else { Part::Whole };
                let mut plain = self.key.open(id, part, blob(6)?, blob(7)?).ok_or_else(|| {
                    ClientError::store(
                        &self.path,
                        format!("message {} fails its integrity check", meta.uid),
                    )
                })?;
                if content == Content::Head && !head {
                    plain.truncate(header_end(&plain));
                }
                if content == Content::Whole {
                    let maybe = |i| {
                        r.get_ref(i)
                            .and_then(|v| v.as_blob_or_null().map_err(Into::into))
                            .map_err(|e| self.err(e))
                    };
                    match (maybe(9)?, maybe(10)?) {
                        (None, None) => {}
                        (Some(nonce), Some(sealed)) => {
                            let pieces = self.pieces(id, meta.uid, &plain, nonce, sealed)?;
                            if r.get(11).map_err(|e| self.err(e))? {
                                let (filled, holes) = fill(&plain, &pieces);
                                plain = filled;
                                awaiting = Some(Awaiting { content: id, holes });
                            } else {
                                to_assemble.push((out.len(), pieces));
                            }
                        }
                        // Never written so: a row changed on disk is not served short.
                        _ => {
                            return Err(ClientError::store(
                                &self.path,
                                format!(
                                    "message {}: its attachments' places are damaged",
                                    meta.uid
                                ),
                            ));
                        }
                    }
                }
                Some(plain)
            };
            out.push((meta, raw, awaiting));
        }
        drop(rows);
        drop(stmt);
        drop(c);
        for (i, pieces) in to_assemble {
            let (meta, raw, _) = &mut out[i];
            if let Some(rest) = raw.take() {
                *raw = Some(self.assemble(meta.uid, &rest, &pieces)?);
            }
        }
        Ok(out)
    }

    /// The blobs whose bytes belong in content `id` (sealed with it) at their places in
    /// `rest`, in order.
    fn pieces(
        &self,
        id: i64,
        uid: u32,
        rest: &[u8],
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<Piece>, ClientError> {
        let broken = |what: &str| ClientError::store(&self.path, format!("message {uid}: {what}"));
        let pieces: Vec<Piece> = self
            .key
            .open(id, Part::Pieces, nonce, sealed)
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| broken("its attachments' places fail their integrity check"))?;
        // Never written otherwise: a row changed on disk is not served cut wrong.
        let mut at = 0;
        for p in &pieces {
            if p.at < at || p.at > rest.len() {
                return Err(broken("its attachments' places are out of order"));
            }
            at = p.at;
        }
        Ok(pieces)
    }

    /// A message whose blobs are kept apart, whole: `rest` with each piece's bytes opened
    /// from the blob's sealed chunks and put in its place, one chunk read at a time (the
    /// connection held for each read only).
    fn assemble(&self, uid: u32, rest: &[u8], pieces: &[Piece]) -> Result<Vec<u8>, ClientError> {
        let broken = |what: &str| ClientError::store(&self.path, format!("message {uid}: {what}"));
        let (whole, _) = place(rest, pieces, |p, out| {
            let read = |n: u64| -> Result<Vec<u8>, ClientError> {
                self.blob_chunk(&p.blob.id, n)?
                    .ok_or_else(|| broken(&format!("attachment blob {} is missing", p.blob.id)))
            };
            let opened = |r: Result<Vec<u8>, letterme_protocol::blob::BlobError>| {
                r.map_err(|e| broken(&format!("attachment blob {}: {e}", p.blob.id)))
            };
            let mut opener = Opener::new(&p.blob)
                .map_err(|e| broken(&format!("attachment blob {}: {e}", p.blob.id)))?;
            let mut lines = p.blob.base64.then(crate::mime::Base64Lines::default);
            for n in 0..opener.chunks() {
                let plain = opened(opener.open_next(&read(n)?))?;
                match &mut lines {
                    Some(lines) => lines.feed(&plain, out),
                    None => out.extend(plain),
                }
            }
            if let Some(lines) = lines {
                lines.finish(out);
            }
            Ok::<(), ClientError>(())
        })?;
        Ok(whole)
    }

    /// Which chunks of blob `id` are kept.
    pub fn held_chunks(&self, blob: &str) -> Result<BTreeSet<u64>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached("SELECT n FROM blob_chunks WHERE blob = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([blob], |r| r.get::<_, i64>(0).map(|n| n as u64))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Sealed chunk `n` of blob `id`, if kept.
    pub fn blob_chunk(&self, blob: &str, n: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let c = self.lock();
        c.prepare_cached("SELECT data FROM blob_chunks WHERE blob = ?1 AND n = ?2")
            .and_then(|mut s| {
                s.query_row(params![blob, n as i64], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Deletes every kept chunk of blob `id`.
    pub fn discard_chunks(&self, blob: &str) -> Result<(), ClientError> {
        let c = self.lock();
        c.prepare_cached("DELETE FROM blob_chunks WHERE blob = ?1")
            .and_then(|mut s| s.execute([blob]))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Puts `data` in the place of kept chunk `n` of blob `blob` (one found damaged).
    pub fn replace_chunk(&self, blob: &str, n: u64, data: &[u8]) -> Result<(), ClientError> {
        let c = self.lock();
        c.prepare_cached("INSERT OR REPLACE INTO blob_chunks (blob, n, data) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![blob, n as i64, data]))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Keeps sealed chunks `(n, data)` of blob `blob`, in one commit (durably: a download
    /// broken after them resumes past them). Chunks are immutable: the same one again
    /// changes nothing.
    pub fn keep_chunks(
        &self,
        blob: &str,
        chunks: &[(u64, impl AsRef<[u8]>)],
    ) -> Result<(), ClientError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO blob_chunks (blob, n, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.err(e))?;
            for (n, data) in chunks {
                insert
                    .execute(params![blob, *n as i64, data.as_ref()])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        // Nothing a session sees changed, but the WAL grew by the chunks.
        self.checkpoints.nudge();
        Ok(())
    }

    /// Files one message of this device's own (a security alert, a Sent copy), for this
    /// device only. With a Message-ID already present in the folder, nothing is added and
    /// the existing UID is returned (`false`).
    pub fn append(&self, mail: &NewMail) -> Result<(u32, u32, bool), MailboxError> {
        self.append_placed(mail, None)
    }

    /// [`Cache::append`] of a message the account's other devices get too, as `placed`:
    /// its placement id and the envelope that brings it to them.
    pub fn append_placed(
        &self,
        mail: &NewMail,
        placed: Option<(&str, &str)>,
    ) -> Result<(u32, u32, bool), MailboxError> {
        let before = self.folder(&mail.folder)?.map(|f| f.uidnext);
        let filing = match placed {
            Some((gid, origin)) => Filing::As(gid, origin),
            None => Filing::Here,
        };
        let (validity, uids) = self.append_with(std::slice::from_ref(mail), filing)?;
        let uid = uids.first().copied().unwrap_or_default();
        Ok((validity, uid, before.is_some_and(|next| uid >= next)))
    }

    /// Files messages into one folder, all or none (MULTIAPPEND, RFC 3502); each with a
    /// Message-ID already present in the folder is not added again and its existing UID
    /// stands in. Returns the folder's UIDVALIDITY and a UID per message. A mail client's
    /// APPEND: each message goes to the account's other devices too.
    pub fn append_all(&self, mails: &[NewMail]) -> Result<(u32, Vec<u32>), MailboxError> {
        self.append_with(mails, Filing::Shared)
    }

    fn append_with(
        &self,
        mails: &[NewMail],
        filing: Filing<'_>,
    ) -> Result<(u32, Vec<u32>), MailboxError> {
        let Some(first) = mails.first() else {
            return Err(MailboxError::InvalidName(String::new()));
        };
        let mut c = self.lock();
        let f = self.need_folder(&c, &first.folder)?;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut uids = Vec::with_capacity(mails.len());
        for mail in mails {
            if let Some(mid) = &mail.message_id {
                let existing: Option<u32> = tx
                    .query_row(
                        "SELECT uid FROM mail WHERE folder = ?1 AND msgid_hash = ?2",
                        params![f.id, self.key.msgid_hash(mid)],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                if let Some(uid) = existing {
                    uids.push(uid);
                    continue;
                }
            }
            let (gid, origin) = match filing {
                Filing::As(gid, origin) => (gid.to_owned(), Some(origin)),
                Filing::Here | Filing::Shared => (new_gid(), None),
            };
            uids.push(
                self.file(&tx, f.id, mail, &gid, origin)
                    .map_err(|e| self.err(e))?
                    .0,
            );
            if matches!(filing, Filing::Shared) {
                self.emit_carrying(&tx, true, |stamp| StateOp::Place {
                    content: gid.clone(),
                    gid,
                    folder: f.name.clone(),
                    flags: mail.flags.clone(),
                    date: Some(mail.internal_date),
                    raw: None,
                    stamp,
                })
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok((f.uidvalidity, uids))
    }

    /// Files `mail` in `folder` as placement `gid`, its content brought by envelope
    /// `origin` (none: made here): its UID and its content's id.
    pub(super) fn file(
        &self,
        tx: &Transaction<'_>,
        folder: i64,
        mail: &NewMail,
        gid: &str,
        origin: Option<&str>,
    ) -> rusqlite::Result<(u32, i64)> {
        let id = next_content_id(tx)?;
        let (nonce, data) = self.key.seal(id, Part::Whole, &mail.raw);
        let (head_nonce, head) = self
            .key
            .seal(id, Part::Head, &mail.raw[..header_end(&mail.raw)]);
        let (pieces_nonce, pieces) = if mail.pieces.is_empty() {
            (None, None)
        } else {
            let json = serde_json::to_vec(&mail.pieces).unwrap_or_default();
            let (n, p) = self.key.seal(id, Part::Pieces, &json);
            (Some(n.to_vec()), Some(p))
        };
        tx.prepare_cached(
            "INSERT INTO contents (id, nonce, data, head_nonce, head, pieces_nonce, pieces, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            id,
            nonce.as_slice(),
            data,
            head_nonce.as_slice(),
            head,
            pieces_nonce,
            pieces,
            origin
        ])?;
        let (uid, modseq) = next_uid(tx, folder)?;
        let hash = mail.message_id.as_deref().map(|m| self.key.msgid_hash(m));
        tx.prepare_cached(
            "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash, modseq, gid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
                folder,
                uid,
                id,
                flags_text(&mail.flags),
                mail.internal_date,
                mail.size() as i64,
                hash,
                modseq as i64,
                gid
            ],
        )?;
        Ok((uid, id))
    }

    /// Commits synced envelopes and their rendered messages in one transaction, so a crash
    /// leaves either both or neither. Envelopes already stored are skipped.
    pub fn commit_synced(&self, items: &[Synced], now: u64) -> Result<(), ClientError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        for item in items {
            let s = &item.stored;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages (id, sender, received, stored_at, envelope, signer_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![s.id, s.sender, s.received as i64, now as i64, s.envelope, s.signer_key.as_slice()])
                })
                .map_err(|e| self.err(e))?;
            if inserted == 0 {
                continue;
            }
            // A message placed by the device that sent it (a Sent copy): filed where it
            // says, under its placement id; its content is this envelope's.
            let mut state = item.state.clone();
            let mut placed = None;
            for op in &mut state {
                if let StateOp::Place {
                    gid,
                    content,
                    folder,
                    flags,
                    ..
                } = op
                    && content.is_empty()
                {
                    content.clone_from(&s.id);
                    placed.get_or_insert((gid.clone(), folder.clone(), flags.clone()));
                }
            }
            let filed = match (&item.mail, placed) {
                (Some(mail), Some((gid, folder, flags))) => {
                    let mail = NewMail {
                        folder,
                        flags,
                        ..mail.clone()
                    };
                    self.file_placed(&tx, &s.id, &mail, &gid)
                        .map_err(|e| self.err(e))?
                }
                (Some(mail), None) => self
                    .file_rendered(&tx, &s.id, mail)
                    .map_err(|e| self.err(e))?,
                (None, _) => None,
            };
            if !state.is_empty() {
                self.apply_ops(&tx, &state).map_err(|e| self.err(e))?;
            }
            if let Some(content) = filed
                && item.awaiting
            {
                tx.prepare_cached("INSERT INTO awaiting (envelope_id, content) VALUES (?1, ?2)")
                    .and_then(|mut stmt| stmt.execute(params![s.id, content]))
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// Files the rendered form of an envelope already in `messages` (backfill).
    pub fn commit_rendered(&self, envelope_id: &str, mail: &NewMail) -> Result<(), ClientError> {
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        self.file_rendered(&tx, envelope_id, mail)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// Files a message another device of the account placed (its Sent copy) as placement
    /// `gid`, unless it is here already (this device's own, coming back); its content's id.
    fn file_placed(
        &self,
        tx: &Transaction<'_>,
        envelope_id: &str,
        mail: &NewMail,
        gid: &str,
    ) -> rusqlite::Result<Option<i64>> {
        let here: bool = tx
            .prepare_cached("SELECT 1 FROM mail WHERE gid = ?1")?
            .exists([gid])?;
        if here
            || tx
                .prepare_cached("INSERT OR IGNORE INTO rendered (envelope_id) VALUES (?1)")?
                .execute([envelope_id])?
                == 0
        {
            return Ok(None);
        }
        let Some(folder) = super::state::folder_named(tx, &mail.folder)? else {
            return Ok(None);
        };
        let (_, content) = self.file(tx, folder, mail, gid, Some(envelope_id))?;
        Ok(Some(content))
    }

    /// Files the rendering of an envelope not filed before; its content's id.
    fn file_rendered(
        &self,
        tx: &Transaction<'_>,
        envelope_id: &str,
        mail: &NewMail,
    ) -> rusqlite::Result<Option<i64>> {
        if tx
            .prepare_cached("INSERT OR IGNORE INTO rendered (envelope_id) VALUES (?1)")?
            .execute([envelope_id])?
            == 0
        {
            return Ok(None);
        }
        // Here already: brought by the history another device sent, under the same id.
        if tx
            .prepare_cached("SELECT 1 FROM mail WHERE gid = ?1")?
            .exists([envelope_id])?
        {
            return Ok(None);
        }
        let folder = folder_by_name(tx, &mail.folder)?
            .map_or_else(
                || folder_by_name(tx, "INBOX").map(|f| f.map(|f| f.id)),
                |f| Ok(Some(f.id)),
            )?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        // Its placement's id is the envelope's, on every device of the account; operations
        // about it that came first apply now.
        let (_, content) = self.file(tx, folder, mail, envelope_id, Some(envelope_id))?;
        self.place_copies_of(tx, envelope_id)?;
        Ok(Some(content))
    }

    /// The contents filed before their blobs were downloaded, oldest first, each with
    /// when the server received its envelope (unix seconds).
    pub fn awaiting(&self) -> Result<Vec<(i64, u64)>, ClientError> {
        Ok(self
            .awaiting_rows()?
            .into_iter()
            .map(|(_, c, received)| (c, received))
            .collect())
    }

    /// The UIDs of the messages in `folder` filed before their blobs were downloaded.
    pub fn awaiting_in(&self, folder: i64) -> Result<Vec<u32>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(
                "SELECT uid FROM mail WHERE folder = ?1 \
                 AND content IN (SELECT content FROM awaiting) ORDER BY uid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([folder], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The ids of the envelopes whose blobs are not downloaded yet: not to be acknowledged.
    pub fn awaiting_envelopes(&self) -> Result<BTreeSet<String>, ClientError> {
        Ok(self.awaiting_rows()?.into_iter().map(|(e, ..)| e).collect())
    }

    /// Each message waiting for its blobs, oldest first: (envelope id, content, received;
    /// 0 when its envelope is not stored).
    fn awaiting_rows(&self) -> Result<Vec<(String, i64, u64)>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare_cached(
                "SELECT a.envelope_id, a.content, coalesce(m.received, 0) FROM awaiting a \
                 LEFT JOIN messages m ON m.id = a.envelope_id ORDER BY a.rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// What content `content` waits for; `None` when it waits for nothing (downloaded
    /// meanwhile).
    pub fn awaited(&self, content: i64) -> Result<Option<Awaited>, ClientError> {
        let c = self.lock();
        let Some(envelope_id) = c
            .prepare_cached("SELECT envelope_id FROM awaiting WHERE content = ?1")
            .and_then(|mut s| s.query_row([content], |r| r.get::<_, String>(0)).optional())
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let row = c
            .prepare_cached(
                "SELECT nonce, data, pieces_nonce, pieces FROM contents
                 WHERE id = ?1 AND pieces IS NOT NULL",
            )
            .and_then(|mut s| {
                s.query_row([content], |r| {
                    Ok([r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?, r.get(3)?])
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some([nonce, data, pieces_nonce, pieces]) = row else {
            return Ok(Some(Awaited {
                envelope_id,
                pieces: None,
            }));
        };
        let rest = self
            .key
            .open(content, Part::Whole, &nonce, &data)
            .ok_or_else(|| {
                ClientError::store(
                    &self.path,
                    "a message waiting for its attachments fails its integrity check",
                )
            })?;
        let pieces = self.pieces(content, 0, &rest, &pieces_nonce, &pieces)?;
        Ok(Some(Awaited {
            envelope_id,
            pieces: Some(pieces),
        }))
    }

    /// Content `content` has its blobs: served whole from now on, and its envelope may be
    /// acknowledged.
    pub fn downloaded(&self, content: i64) -> Result<(), ClientError> {
        self.lock()
            .prepare_cached("DELETE FROM awaiting WHERE content = ?1")
            .and_then(|mut s| s.execute([content]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Takes a message whose blobs could not be had out of every mailbox (each session
    /// hears an EXPUNGE), and out of the waiting ones.
    pub fn withdraw(&self, content: i64) -> Result<(), ClientError> {
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let copies: Vec<(i64, u32)> = {
            let mut stmt = tx
                .prepare_cached("SELECT folder, uid FROM mail WHERE content = ?1")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([content], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        for (folder, uid) in copies {
            remove(&tx, &self.key, folder, &[uid]).map_err(|e| self.err(e))?;
        }
        tx.execute("DELETE FROM awaiting WHERE content = ?1", [content])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(())
    }

    /// Envelopes synced before the cache existed (or by an older version).
    pub fn unrendered(&self) -> Result<Vec<Stored>, ClientError> {
        let c = self.lock();
        let mut stmt = c
            .prepare(
                "SELECT id, sender, received, envelope, signer_key FROM messages
                 WHERE id NOT IN (SELECT envelope_id FROM rendered) ORDER BY received, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], crate::mailbox::stored_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// STORE: applies `op` with `flags` to each message's flags as stored now, not to any
    /// session's copy of them, so changes made at once by two sessions both take effect.
    /// A message whose MODSEQ is above `unchanged_since` is left alone and listed in
    /// [`StoreOutcome::modified`] (RFC 7162 §3.1.3).
    pub fn store_flags(
        &self,
        folder: i64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<StoreOutcome, ClientError> {
        let mut out = StoreOutcome::default();
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT flags, modseq, gid FROM mail WHERE folder = ?1 AND uid = ?2",
                )
                .map_err(|e| self.err(e))?;
            let mut set = tx
                .prepare_cached(
                    "UPDATE mail SET flags = ?3, modseq = ?4 WHERE folder = ?1 AND uid = ?2",
                )
                .map_err(|e| self.err(e))?;
            for &uid in uids {
                let Some((text, modseq, gid)) = get
                    .query_row(params![folder, uid], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    })
                    .optional()
                    .map_err(|e| self.err(e))?
                else {
                    continue;
                };
                if unchanged_since.is_some_and(|u| modseq > u) {
                    out.modified.push(uid);
                    continue;
                }
                let new = flags_text(&op.apply(&flags_vec(&text), flags));
                if new == text {
                    out.stored.push(StoredFlags {
                        uid,
                        flags: flags_vec(&text),
                        modseq,
                        changed: false,
                    });
                    continue;
                }
                let modseq = bump(&tx, folder).map_err(|e| self.err(e))?;
                set.execute(params![folder, uid, new, modseq as i64])
                    .map_err(|e| self.err(e))?;
                if let Some(gid) = gid {
                    let (before, after) = (flags_vec(&text), flags_vec(&new));
                    for (flag, on) in flag_changes(&before, &after) {
                        self.emit(&tx, |stamp| StateOp::Flag {
                            gid: gid.clone(),
                            flag,
                            on,
                            stamp,
                        })
                        .map_err(|e| self.err(e))?;
                    }
                }
                out.stored.push(StoredFlags {
                    uid,
                    flags: flags_vec(&new),
                    modseq,
                    changed: true,
                });
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        if out.stored.iter().any(|s| s.changed) {
            self.changed();
        }
        Ok(out)
    }

    /// COPY (and the first half of MOVE): new UIDs in the target, content shared.
    /// Returns (target UIDVALIDITY, [(source uid, new uid)]).
    pub fn copy(
        &self,
        from: i64,
        uids: &[u32],
        to: &str,
        remove_source: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), MailboxError> {
        let mut c = self.lock();
        let target = self.need_folder(&c, to)?;
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut pairs = Vec::with_capacity(uids.len());
        // A move keeps each placement's id (set once the source is gone); a copy is a
        // placement of its own.
        let mut gids = Vec::with_capacity(uids.len());
        for &uid in uids {
            let row = tx
                .query_row(
                    "SELECT m.content, m.flags, m.internal_date, m.size, m.msgid_hash, m.gid, c.origin
                       FROM mail m JOIN contents c ON c.id = m.content WHERE m.folder = ?1 AND m.uid = ?2",
                    params![from, uid],
                    |r| {
                        Ok(Placed {
                            content: r.get(0)?,
                            flags: r.get(1)?,
                            date: r.get(2)?,
                            size: r.get(3)?,
                            hash: r.get(4)?,
                            gid: r.get(5)?,
                            origin: r.get(6)?,
                        })
                    },
                )
                .optional()
                .map_err(|e| self.err(e))?;
            let Some(Placed {
                content,
                flags,
                date,
                size,
                hash,
                gid,
                origin,
            }) = row
            else {
                continue;
            };
            let (new, modseq) = next_uid(&tx, target.id).map_err(|e| self.err(e))?;
            let new_id = if remove_source { None } else { Some(new_gid()) };
            tx.execute(
                "INSERT INTO mail (folder, uid, content, flags, internal_date, size, msgid_hash, modseq, gid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![target.id, new, content, flags, date, size, hash, modseq as i64, new_id],
            )
            .map_err(|e| self.err(e))?;
            pairs.push((uid, new));
            gids.push((new, gid, new_id, origin, flags));
        }
        if remove_source {
            let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            remove(&tx, &self.key, from, &moved).map_err(|e| self.err(e))?;
        }
        for (new, gid, copy, origin, flags) in gids {
            match (copy, gid, origin) {
                (None, Some(gid), _) => {
                    tx.execute(
                        "UPDATE mail SET gid = ?3 WHERE folder = ?1 AND uid = ?2",
                        params![target.id, new, gid],
                    )
                    .map_err(|e| self.err(e))?;
                    self.emit(&tx, |stamp| StateOp::Move {
                        gid,
                        folder: target.name.clone(),
                        stamp,
                    })
                    .map_err(|e| self.err(e))?;
                }
                // A copy of content the other devices hold: they make it too.
                (Some(gid), _, Some(content)) => {
                    self.emit(&tx, |stamp| StateOp::Place {
                        gid,
                        content,
                        folder: target.name.clone(),
                        flags: flags_vec(&flags),
                        date: None,
                        raw: None,
                        stamp,
                    })
                    .map_err(|e| self.err(e))?;
                }
                _ => {}
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok((target.uidvalidity, pairs))
    }

    /// EXPUNGE (RFC 3501 §6.4.3, UID EXPUNGE RFC 4315 §2.1): removes the messages flagged
    /// `\Deleted` at this moment, only those in `only` when given; returns their UIDs.
    pub fn expunge_deleted(
        &self,
        folder: i64,
        only: Option<&BTreeSet<u32>>,
    ) -> Result<Vec<u32>, ClientError> {
        let doomed = |uid: u32, flags: &[String]| {
            has_flag(flags, "\\Deleted") && only.is_none_or(|o| o.contains(&uid))
        };
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let gone: Vec<u32> = {
            let mut stmt = tx
                .prepare_cached("SELECT uid, flags FROM mail WHERE folder = ?1 ORDER BY uid")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([folder], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| self.err(e))?;
            let mut gone = Vec::new();
            for row in rows {
                let (uid, flags) = row.map_err(|e| self.err(e))?;
                if doomed(uid, &flags_vec(&flags)) {
                    gone.push(uid);
                }
            }
            gone
        };
        if gone.is_empty() {
            return Ok(gone);
        }
        for &uid in &gone {
            let gid: Option<String> = tx
                .query_row(
                    "SELECT gid FROM mail WHERE folder = ?1 AND uid = ?2",
                    params![folder, uid],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if let Some(gid) = gid {
                self.emit(&tx, |stamp| StateOp::Remove { gid, stamp })
                    .map_err(|e| self.err(e))?;
            }
        }
        remove(&tx, &self.key, folder, &gone).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(c);
        self.changed();
        Ok(gone)
    }

    /// What changed in a folder after `since`: messages added or changed, UIDs expunged.
    /// `None` when the folder no longer exists.
    pub fn changes_since(&self, folder: i64, since: u64) -> Result<Option<Changes>, ClientError> {
        let c = self.lock();
        let Some(f) = folder_by_id(&c, folder).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        if f.highestmodseq <= since {
            return Ok(Some(Changes {
                folder: f,
                changed: vec![],
                vanished: vec![],
            }));
        }
        let changed = {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {META_COLUMNS} FROM mail WHERE folder = ?1 AND modseq > ?2 ORDER BY uid"
                ))
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![folder, since as i64], meta_row)
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?
        };
        let vanished = vanished_since(&c, folder, since).map_err(|e| self.err(e))?;
        Ok(Some(Changes {
            folder: f,
            changed,
            vanished,
        }))
    }

    /// The UIDs expunged from a folder after `since` (RFC 7162 VANISHED), ascending.
    pub fn vanished_since(&self, folder: i64, since: u64) -> Result<Vec<u32>, ClientError> {
        vanished_since(&self.lock(), folder, since).map_err(|e| self.err(e))
    }

    /// Claims the messages below UID `upto` that no session has yet seen as `\Recent`
    /// (RFC 3501 §2.3.2): returns the UID range `lo..hi` that is recent for the caller alone.
    pub fn claim_recent(&self, folder: i64, upto: u32) -> Result<(u32, u32), ClientError> {
        let mut c = self.lock();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let range: Option<(u32, u32)> = tx
            .query_row(
                "SELECT recent_uid, uidnext FROM folders WHERE id = ?1",
                [folder],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((lo, next)) = range else {
            return Ok((1, 1));
        };
        let hi = next.min(upto).max(lo);
        if lo < hi {
            tx.execute(
                "UPDATE folders SET recent_uid = ?2 WHERE id = ?1",
                params![folder, hi],
            )
            .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok((lo, hi))
    }
}

/// `rest` with each piece's bytes, as `each` writes them, at its place (pieces in order,
/// as [`Cache::pieces`] checks); and where each piece's bytes went.
fn place<E>(
    rest: &[u8],
    pieces: &[Piece],
    mut each: impl FnMut(&Piece, &mut Vec<u8>) -> Result<(), E>,
) -> Result<(Vec<u8>, Vec<std::ops::Range<usize>>), E> {
    let total = pieces
        .iter()
        .map(|p| usize::try_from(crate::mime::written_len(&p.blob)).unwrap_or(usize::MAX))
        .fold(rest.len(), usize::saturating_add);
    let mut out = Vec::with_capacity(total.min(1 << 31));
    let mut places = Vec::with_capacity(pieces.len());
    let mut at = 0;
    for p in pieces {
        out.extend_from_slice(&rest[at..p.at]);
        let start = out.len();
        each(p, &mut out)?;
        places.push(start..out.len());
        at = p.at;
    }
    out.extend_from_slice(&rest[at..]);
    Ok((out, places))
}

/// `rest` with each piece's place filled with [`FILLER_LINE`]s, cut to its size.
fn fill(rest: &[u8], pieces: &[Piece]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let filled = place(rest, pieces, |p, out| {
        let size = usize::try_from(crate::mime::written_len(&p.blob)).unwrap_or(usize::MAX);
        out.extend(FILLER_LINE.iter().copied().cycle().take(size));
        Ok::<(), std::convert::Infallible>(())
    });
    match filled {
        Ok(f) => f,
    }
}

/// The next UID of a folder and the MODSEQ of its arrival.
pub(super) fn next_uid(tx: &Transaction<'_>, folder: i64) -> rusqlite::Result<(u32, u64)> {
    tx.prepare_cached(
        "UPDATE folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
         WHERE id = ?1 RETURNING uidnext - 1, highestmodseq",
    )?
    .query_row([folder], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
}

/// A new content row's id: the next of a counter that never goes back, so a ciphertext
/// bound to a deleted row's id never fits a later row (D18). Past the last 64-bit id (never
/// reached by counting), a random one as before.
fn next_content_id(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    let next = tx
        .prepare_cached(
            "UPDATE counters SET value = value + 1 WHERE name = 'content' AND value < ?1
             RETURNING value",
        )?
        .query_row([i64::MAX], |r| r.get(0))
        .optional()?;
    Ok(next.unwrap_or_else(|| i64::from_be_bytes(random_bytes::<8>()) & i64::MAX))
}

/// The next MODSEQ of a folder (RFC 7162 §3.1: every change gets a higher one).
pub(super) fn bump(tx: &Transaction<'_>, folder: i64) -> rusqlite::Result<u64> {
    tx.query_row(
        "UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id = ?1 RETURNING highestmodseq",
        [folder],
        |r| r.get::<_, i64>(0).map(|m| m as u64),
    )
}

pub(super) fn uids_in(c: &Connection, folder: i64) -> rusqlite::Result<Vec<u32>> {
    let mut stmt = c.prepare_cached("SELECT uid FROM mail WHERE folder = ?1")?;
    stmt.query_map([folder], |r| r.get(0))?.collect()
}

fn vanished_since(c: &Connection, folder: i64, since: u64) -> rusqlite::Result<Vec<u32>> {
    let mut stmt = c.prepare_cached(
        "SELECT uid FROM vanished WHERE folder = ?1 AND modseq > ?2 ORDER BY uid",
    )?;
    stmt.query_map(params![folder, since as i64], |r| r.get(0))?
        .collect()
}

/// Deletes rows, leaving a tombstone with a new MODSEQ for each, and any content no other
/// row refers to, with the kept chunks of the blobs it placed that nothing needs any more
/// ([`drop_unneeded_chunks`]).
pub(super) fn remove(
    tx: &Transaction<'_>,
    key: &CacheKey,
    folder: i64,
    uids: &[u32],
) -> rusqlite::Result<()> {
    let mut get = tx.prepare_cached("SELECT content FROM mail WHERE folder = ?1 AND uid = ?2")?;
    let mut placed = tx.prepare_cached(
        "SELECT pieces_nonce, pieces FROM contents WHERE id = ?1 AND pieces IS NOT NULL",
    )?;
    let mut blobs = BTreeSet::new();
    let mut del = tx.prepare_cached("DELETE FROM mail WHERE folder = ?1 AND uid = ?2")?;
    let mut gc = tx.prepare_cached(
        "DELETE FROM contents WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM mail WHERE content = ?1)",
    )?;
    // A message expunged before its blobs were downloaded needs them no more: the next
    // sync acknowledges it.
    let mut unawait = tx.prepare_cached(
        "DELETE FROM awaiting WHERE content = ?1 AND NOT EXISTS (SELECT 1 FROM contents WHERE id = ?1)",
    )?;
    let mut tomb = tx.prepare_cached(
        "INSERT OR REPLACE INTO vanished (folder, uid, modseq) VALUES (?1, ?2, ?3)",
    )?;
    for &uid in uids {
        if let Some(content) = get
            .query_row(params![folder, uid], |r| r.get::<_, i64>(0))
            .optional()?
        {
            del.execute(params![folder, uid])?;
            let pieces = placed
                .query_row([content], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            if gc.execute([content])? == 1
                && let Some((nonce, sealed)) = pieces
            {
                blobs.extend(piece_blobs(key, content, &nonce, &sealed));
            }
            unawait.execute([content])?;
            let modseq = bump(tx, folder)?;
            tomb.execute(params![folder, uid, modseq as i64])?;
        }
    }
    drop_unneeded_chunks(tx, key, &blobs)
}

/// The ids of the blobs content `id`'s sealed pieces place (none when they do not open).
fn piece_blobs(key: &CacheKey, id: i64, nonce: &[u8], sealed: &[u8]) -> Vec<String> {
    key.open(id, Part::Pieces, nonce, sealed)
        .and_then(|p| serde_json::from_slice::<Vec<Piece>>(&p).ok())
        .map(|pieces| pieces.iter().map(|p| p.blob.id.clone()).collect())
        .unwrap_or_default()
}

/// Deletes the kept chunks of `blobs` (whose last message in the cache went) that nothing
/// else needs: no other message in the cache places them, and no stored envelope names
/// them (`letterme read` opens a received message from its envelope and the chunks). What
/// goes is typically an expunged Sent copy's attachment.
fn drop_unneeded_chunks(
    tx: &Transaction<'_>,
    key: &CacheKey,
    blobs: &BTreeSet<String>,
) -> rusqlite::Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let mut needed = BTreeSet::new();
    let mut placing = tx
        .prepare_cached("SELECT id, pieces_nonce, pieces FROM contents WHERE pieces IS NOT NULL")?;
    let rows = placing.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    for row in rows {
        let (id, nonce, sealed) = row?;
        needed.extend(piece_blobs(key, id, &nonce, &sealed));
    }
    // Version 2 envelopes name their blobs in their header (after the 5-byte magic).
    let mut naming =
        tx.prepare_cached("SELECT envelope FROM messages WHERE substr(envelope, 6, 1) = x'02'")?;
    let rows = naming.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    for row in rows {
        if let Ok(env) = letterme_protocol::Envelope::decode(&row?) {
            needed.extend(
                env.blobs
                    .iter()
                    .map(letterme_protocol::blob::BlobId::to_hex),
            );
        }
    }
    let mut drop = tx.prepare_cached("DELETE FROM blob_chunks WHERE blob = ?1")?;
    for blob in blobs.difference(&needed) {
        drop.execute([blob])?;
    }
    Ok(())
}

/// A new placement id (a copy, a message filed here).
pub(super) fn new_gid() -> String {
    letterme_protocol::codec::hex(&letterme_protocol::keys::random_bytes::<16>())
}

/// The flags set and cleared between two sets (`\Recent` is no one's to keep in step).
fn flag_changes(before: &[String], after: &[String]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for f in after {
        if !has_flag(before, f) && !f.eq_ignore_ascii_case("\\Recent") {
            out.push((f.clone(), true));
        }
    }
    for f in before {
        if !has_flag(after, f) && !f.eq_ignore_ascii_case("\\Recent") {
            out.push((f.clone(), false));
        }
    }
    out
}

/// A placement as a copy or a move reads it.
struct Placed {
    content: i64,
    flags: String,
    date: i64,
    size: i64,
    hash: Option<String>,
    gid: Option<String>,
    origin: Option<String>,
}

/// How appended messages are filed.
#[derive(Clone, Copy)]
enum Filing<'a> {
    /// For this device only.
    Here,
    /// For this device only, as placement `.0` whose content envelope `.1` brings to the
    /// other devices.
    As(&'a str, &'a str),
    /// For every device of the account (an IMAP APPEND).
    Shared,
}
