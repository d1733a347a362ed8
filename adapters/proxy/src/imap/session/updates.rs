//! Unilateral updates after each command (RFC 3501 §7.4.1): EXISTS, EXPUNGE and FETCH FLAGS
//! for what changed in the cache since the session last looked.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

impl Session {
    /// Changes made elsewhere (sync, other sessions) since the client last heard:
    /// EXPUNGE (when allowed), EXISTS, and FETCH FLAGS (RFC 3501 §7.3, §7.4).
    pub fn updates(&mut self, allow_expunge: bool) -> Vec<Data<'static>> {
        let State::Selected(s) = &self.state else {
            return vec![];
        };
        let now = *self.cache.changes().borrow();
        if now == self.seen_change {
            return vec![];
        }
        let Ok(current) = self.cache.messages(s.folder.id) else {
            return vec![];
        };
        let mut out = Vec::new();
        if allow_expunge {
            let present: BTreeSet<u32> = current.iter().map(|m| m.uid).collect();
            let gone: BTreeSet<u32> = s
                .uids
                .iter()
                .copied()
                .filter(|u| !present.contains(u))
                .collect();
            if !gone.is_empty() {
                out.extend(self.forget(&gone));
            }
        }
        let State::Selected(s) = &mut self.state else {
            return out;
        };
        let by_uid: std::collections::HashMap<u32, &MailMeta> =
            current.iter().map(|m| (m.uid, m)).collect();
        for (i, u) in s.uids.iter().enumerate() {
            if let Some(m) = by_uid.get(u)
                && m.flags != s.flags[i]
            {
                s.flags[i].clone_from(&m.flags);
                let items = vec![
                    MessageDataItem::Flags(flag_fetch(&m.flags)),
                    MessageDataItem::Uid(nz(*u)),
                ];
                out.push(Data::Fetch {
                    seq: nz(i as u32 + 1),
                    items: Vec1::try_from(items).expect("not empty"),
                });
            }
        }
        let last = s.uids.last().copied().unwrap_or(0);
        let before = s.uids.len();
        for m in current.iter().filter(|m| m.uid > last) {
            s.uids.push(m.uid);
            s.flags.push(m.flags.clone());
        }
        if s.uids.len() != before {
            out.push(Data::Exists(s.uids.len() as u32));
        }
        if allow_expunge || out.is_empty() {
            self.seen_change = now;
        }
        out
    }
}
