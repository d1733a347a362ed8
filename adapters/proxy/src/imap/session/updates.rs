//! Unilateral updates after each command (RFC 3501 §7.4.1): EXPUNGE, FLAGS, FETCH FLAGS,
//! EXISTS and RECENT for what changed in the selected mailbox since the session last looked.
//!
//! The session keeps the MODSEQ up to which its client has heard of every change, and asks
//! the cache for what came after it. While EXPUNGE may not be sent (during FETCH, STORE and
//! SEARCH) that MODSEQ stays where it is, so the expunge is reported by the next command
//! that allows it; changes the session made itself are already in its view and are not
//! echoed.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

impl Session {
    /// Changes made elsewhere (sync, other sessions) since the client last heard:
    /// EXPUNGE (when allowed), FLAGS for new keywords, FETCH FLAGS, EXISTS and RECENT
    /// (RFC 3501 §7.2–§7.4). A mailbox deleted meanwhile ends the session with BYE.
    pub fn updates(&mut self, allow_expunge: bool) -> Vec<Out> {
        let State::Selected(s) = &self.state else {
            return vec![];
        };
        let now = *self.cache.changes().borrow();
        if now == self.seen_change {
            return vec![];
        }
        let changes = match self.cache.changes_since(s.folder.id, s.modseq) {
            Ok(Some(c)) if c.folder.uidvalidity == s.folder.uidvalidity => c,
            Ok(_) => {
                self.closing = true;
                return vec![Out::Status(
                    Status::bye(None, "the selected mailbox was deleted").expect("valid"),
                )];
            }
            Err(e) => {
                tracing::error!(error = %e, "local cache error");
                return vec![];
            }
        };
        let mut out = Vec::new();
        let gone: BTreeSet<u32> = changes
            .vanished
            .iter()
            .copied()
            .filter(|u| self.sel().uids.binary_search(u).is_ok())
            .collect();
        if allow_expunge && !gone.is_empty() {
            out.extend(self.forget(&gone).into_iter().map(Out::Data));
        }
        let condstore = self.condstore;
        let s = self.sel();
        let mut fetches = Vec::new();
        let mut new_keyword = false;
        let before = s.uids.len();
        for m in &changes.changed {
            new_keyword |= s.learn_keywords(&m.flags);
            match s.uids.binary_search(&m.uid) {
                Ok(i) if s.flags[i] != m.flags => {
                    s.flags[i].clone_from(&m.flags);
                    let mut items = vec![
                        MessageDataItem::Flags(flag_fetch(&m.flags, s.recent.contains(&m.uid))),
                        MessageDataItem::Uid(nz(m.uid)),
                    ];
                    if condstore {
                        items.push(MessageDataItem::ModSeq(nz64(m.modseq)));
                    }
                    fetches.push(Data::Fetch {
                        seq: nz(i as u32 + 1),
                        items: Vec1::try_from(items).expect("not empty"),
                    });
                }
                // UIDs only grow, so one the view lacks above its last is new.
                Err(i) if i == s.uids.len() => {
                    s.uids.push(m.uid);
                    s.flags.push(m.flags.clone());
                }
                _ => {}
            }
        }
        if new_keyword {
            out.extend(s.flags_responses());
        }
        out.extend(fetches.into_iter().map(Out::Data));
        if s.uids.len() != before {
            let arrived: Vec<u32> = s.uids[before..].to_vec();
            self.note_recent(&arrived, changes.folder.recent_uid);
            let rev2 = self.rev2;
            let s = self.sel();
            out.push(Out::Data(Data::Exists(s.uids.len() as u32)));
            if !rev2 {
                out.push(Out::Data(Data::Recent(s.recent.len() as u32)));
            }
        }
        if allow_expunge || gone.is_empty() {
            self.sel().modseq = changes.folder.highestmodseq;
            self.seen_change = now;
        }
        out
    }

    /// Marks which of `arrived` are `\Recent` for this session: those it claims first when
    /// read-write, those no session has claimed yet when read-only (EXAMINE claims nothing).
    pub(super) fn note_recent(&mut self, arrived: &[u32], unclaimed_from: u32) {
        // IMAP4rev2 has no \Recent (RFC 9051 Appendix E): leave them to IMAP4rev1 sessions.
        if self.rev2 {
            return;
        }
        let (read_only, folder) = (self.sel().read_only, self.sel().folder.id);
        let (lo, hi) = if read_only {
            (unclaimed_from, u32::MAX)
        } else {
            // Only up to what this session has read: a message filed since stays for
            // whoever reads it first.
            let upto = arrived.iter().max().map_or(0, |u| u.saturating_add(1));
            match self.cache.claim_recent(folder, upto) {
                Ok(range) => range,
                Err(e) => {
                    tracing::error!(error = %e, "local cache error");
                    (0, 0)
                }
            }
        };
        let s = self.sel();
        s.recent
            .extend(arrived.iter().copied().filter(|u| (lo..hi).contains(u)));
    }
}

impl Selected {
    /// Adds the keywords among `flags` to those announced; whether one was new.
    pub(super) fn learn_keywords(&mut self, flags: &[String]) -> bool {
        let mut new = false;
        for f in flags {
            if !f.starts_with('\\') && !has_flag(&self.keywords, f) {
                self.keywords.push(f.clone());
                new = true;
            }
        }
        new
    }

    /// FLAGS and PERMANENTFLAGS: the system flags and every keyword in use (RFC 3501
    /// §7.2.6, §7.1); new keywords are allowed (`\*`).
    pub(super) fn flags_responses(&self) -> Vec<Out> {
        let all: Vec<Flag<'static>> = SYSTEM_FLAGS
            .into_iter()
            .chain(self.keywords.iter().map(String::as_str))
            .filter_map(to_flag)
            .collect();
        let permanent: Vec<FlagPerm<'static>> = if self.read_only {
            vec![]
        } else {
            all.iter()
                .cloned()
                .map(FlagPerm::Flag)
                .chain([FlagPerm::Asterisk])
                .collect()
        };
        vec![
            Out::Data(Data::Flags(all)),
            untagged_ok(Code::PermanentFlags(permanent), "flags permitted"),
        ]
    }
}
