//! ENABLE (RFC 5161) of CONDSTORE, QRESYNC (RFC 7162) and IMAP4rev2 (RFC 9051); SELECT's
//! QRESYNC parameter; VANISHED.
//!
//! Every message has a MODSEQ and every expunge a tombstone in the cache (DECISIONS D72), so
//! a client that knows a mailbox's HIGHESTMODSEQ from an earlier session learns exactly what
//! changed and what vanished since.

// Reason: one `impl Session` cut into files along its seams; they share the parent's imports.
#[allow(clippy::wildcard_imports)]
use super::*;

use imap_codec::imap_types::extensions::enable::CapabilityEnable;

impl Session {
    /// ENABLE (RFC 5161): CONDSTORE, and QRESYNC (which implies it); the answer lists what
    /// this command turned on.
    pub(super) fn enable(
        &mut self,
        tag: &Tag<'static>,
        requested: &[CapabilityEnable<'_>],
    ) -> Reply {
        let mut enabled = Vec::new();
        for c in requested {
            match c {
                CapabilityEnable::CondStore if !self.condstore => {
                    self.condstore = true;
                    enabled.push(CapabilityEnable::CondStore);
                }
                CapabilityEnable::Other(_)
                    if c.to_string().eq_ignore_ascii_case("QRESYNC") && !self.qresync =>
                {
                    self.qresync = true;
                    self.condstore = true;
                    enabled.push(c.clone().into_static());
                }
                // RFC 9051 §6.3.1: only before a mailbox is selected.
                CapabilityEnable::Other(_)
                    if c.to_string().eq_ignore_ascii_case("IMAP4rev2")
                        && !self.rev2
                        && !self.is_selected() =>
                {
                    self.rev2 = true;
                    enabled.push(c.clone().into_static());
                }
                _ => {}
            }
        }
        Self::reply(vec![
            Out::Data(Data::Enabled {
                capabilities: enabled,
            }),
            tagged(tag, Kind::Ok, None, "ENABLE completed"),
        ])
    }

    /// RFC 7162 §3.2.5: for SELECT (QRESYNC (uidvalidity modseq [known-uids])), what vanished
    /// and what changed since `modseq`, as VANISHED (EARLIER) and FETCH.
    pub(super) fn qresync_since(
        &self,
        modseq: u64,
        known_uids: Option<&SequenceSet>,
    ) -> Result<Vec<Out>, letterme_client::ClientError> {
        let State::Selected(s) = &self.state else {
            return Ok(vec![]);
        };
        let Some(changes) = self.cache.changes_since(s.folder.id, modseq)? else {
            return Ok(vec![]);
        };
        let largest = s.folder.uidnext.saturating_sub(1).max(1);
        let vanished: Vec<u32> = changes
            .vanished
            .into_iter()
            .filter(|&u| known_uids.is_none_or(|k| search::in_set(k, u, largest)))
            .collect();
        let mut out = Vec::new();
        if let Some(set) = wire::number_set(&vanished) {
            out.push(Out::Data(Data::Vanished {
                earlier: true,
                known_uids: set,
            }));
        }
        for m in &changes.changed {
            let Ok(i) = s.uids.binary_search(&m.uid) else {
                continue;
            };
            let items = vec![
                MessageDataItem::Uid(nz(m.uid)),
                MessageDataItem::Flags(flag_fetch(&s.flags[i], s.recent.contains(&m.uid))),
                MessageDataItem::ModSeq(nz64(m.modseq)),
            ];
            out.push(Out::Data(Data::Fetch {
                seq: nz(i as u32 + 1),
                items: Vec1::try_from(items).expect("not empty"),
            }));
        }
        Ok(out)
    }

    /// The parameters of SELECT and EXAMINE (RFC 7162 §3.1.8, §3.2.5): CONDSTORE turns it
    /// on; QRESYNC needs ENABLE QRESYNC first. Returns the QRESYNC state to answer, or BAD.
    pub(super) fn select_parameters(
        &mut self,
        tag: &Tag<'static>,
        parameters: &[SelectParameter],
    ) -> Result<Option<(u32, u64, Option<SequenceSet>)>, Out> {
        let mut qresync = None;
        for p in parameters {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.qresync {
                        return Err(tagged(
                            tag,
                            Kind::Bad,
                            None,
                            "QRESYNC must be enabled first (ENABLE QRESYNC)",
                        ));
                    }
                    qresync = Some((
                        uid_validity.get(),
                        mod_sequence_value.get(),
                        known_uids.clone(),
                    ));
                }
            }
        }
        Ok(qresync)
    }
}
