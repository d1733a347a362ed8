//! Link slots (PROTOCOL.md §6b): the server relays the three messages of a device-linking
//! exchange — the existing device's opening, the new device's request, the existing
//! device's answer — and reads none of them (the two devices share a code the server
//! never sees). In memory and bounded: one slot per account, [`MAX_SLOTS`] in all, each
//! for [`LINK_TTL`] seconds, each message at most `MAX_LINK_MESSAGE` bytes; the new
//! device's message is taken once, so a slot is one guess at its code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use letterme_protocol::keys::random_bytes;
use letterme_protocol::link::{LINK_TTL, SLOT_DIGITS};
use tokio::sync::Notify;

/// Slots open at once, over all accounts.
pub const MAX_SLOTS: usize = 10_000;

/// Why a message was not posted to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// No such slot, or it expired.
    NoSlot,
    /// The new device's message was posted already: a code is used once.
    Used,
    /// An answer from another device than the one that opened the slot, or before there
    /// is a request to answer, or a second one.
    NotYours,
}

#[derive(Debug)]
struct Slot {
    /// The device (`devices.id`) that opened it.
    device: i64,
    expires: u64,
    messages: Vec<Vec<u8>>,
    changed: Arc<Notify>,
}

/// The open slots, by account and slot number.
#[derive(Debug, Default)]
pub struct LinkSlots {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

fn key(address: &str, slot: &str) -> (String, String) {
    (address.to_ascii_lowercase(), slot.to_owned())
}

impl LinkSlots {
    /// Opens a slot for `device` of `address` with its first message, closing the account's
    /// previous one. Returns the slot number and its expiry; `None` when [`MAX_SLOTS`] are
    /// open.
    pub fn open(
        &self,
        address: &str,
        device: i64,
        first: Vec<u8>,
        now: u64,
    ) -> Option<(String, u64)> {
        let mut slots = self.slots.lock().ok()?;
        slots.retain(|(a, _), s| s.expires > now && !a.eq_ignore_ascii_case(address));
        if slots.len() >= MAX_SLOTS {
            return None;
        }
        let n = u32::from_be_bytes(random_bytes()) % 10u32.pow(SLOT_DIGITS as u32);
        let number = format!("{n:0SLOT_DIGITS$}");
        let expires = now + LINK_TTL;
        slots.insert(
            key(address, &number),
            Slot {
                device,
                expires,
                messages: vec![first],
                changed: Arc::new(Notify::new()),
            },
        );
        Some((number, expires))
    }

    /// The slot's messages from index `from` on, and what to wait on for more; `None` when
    /// there is no such slot.
    pub fn read(
        &self,
        address: &str,
        slot: &str,
        from: usize,
        now: u64,
    ) -> Option<(Vec<Vec<u8>>, Arc<Notify>)> {
        let slots = self.slots.lock().ok()?;
        let s = slots.get(&key(address, slot)).filter(|s| s.expires > now)?;
        Some((
            s.messages.iter().skip(from).cloned().collect(),
            Arc::clone(&s.changed),
        ))
    }

    /// Posts the new device's request (`by` is `None`: anyone with the slot, once) or the
    /// opening device's answer (`by` is that device).
    pub fn post(
        &self,
        address: &str,
        slot: &str,
        by: Option<i64>,
        message: Vec<u8>,
        now: u64,
    ) -> Result<(), PostError> {
        let mut slots = self.slots.lock().map_err(|_| PostError::NoSlot)?;
        let s = slots
            .get_mut(&key(address, slot))
            .filter(|s| s.expires > now)
            .ok_or(PostError::NoSlot)?;
        match by {
            None if s.messages.len() == 1 => {}
            None => return Err(PostError::Used),
            Some(d) if d == s.device && s.messages.len() == 2 => {}
            Some(_) => return Err(PostError::NotYours),
        }
        s.messages.push(message);
        s.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_takes_one_request_and_one_answer_from_its_opener() {
        let slots = LinkSlots::default();
        let (n, expires) = slots.open("a@x.test", 1, b"open".to_vec(), 100).unwrap();
        assert_eq!(n.len(), SLOT_DIGITS);
        assert_eq!(expires, 100 + LINK_TTL);
        assert_eq!(
            slots.post("a@x.test", &n, Some(1), b"early".to_vec(), 101),
            Err(PostError::NotYours)
        );
        slots
            .post("A@x.test", &n, None, b"join".to_vec(), 101)
            .unwrap();
        assert_eq!(
            slots.post("a@x.test", &n, None, b"again".to_vec(), 101),
            Err(PostError::Used)
        );
        assert_eq!(
            slots.post("a@x.test", &n, Some(2), b"other".to_vec(), 101),
            Err(PostError::NotYours)
        );
        slots
            .post("a@x.test", &n, Some(1), b"answer".to_vec(), 102)
            .unwrap();
        let (all, _) = slots.read("a@x.test", &n, 1, 102).unwrap();
        assert_eq!(all, vec![b"join".to_vec(), b"answer".to_vec()]);
        assert!(slots.read("a@x.test", &n, 0, expires).is_none(), "expired");
        assert!(slots.read("b@x.test", &n, 0, 102).is_none());
    }

    #[test]
    fn an_account_has_one_slot_and_all_are_bounded() {
        let slots = LinkSlots::default();
        let (first, _) = slots.open("a@x.test", 1, vec![], 100).unwrap();
        let (second, _) = slots.open("a@x.test", 1, vec![], 100).unwrap();
        assert!(first == second || slots.read("a@x.test", &first, 0, 100).is_none());
        assert!(slots.read("a@x.test", &second, 0, 100).is_some());
        for i in 0..MAX_SLOTS - 1 {
            slots.open(&format!("u{i}@x.test"), 1, vec![], 100).unwrap();
        }
        assert!(slots.open("late@x.test", 1, vec![], 100).is_none());
        // Expired slots make room.
        assert!(
            slots
                .open("late@x.test", 1, vec![], 100 + LINK_TTL)
                .is_some()
        );
    }
}
