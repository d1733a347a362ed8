//! Mailbox state in step across a person's devices (issue 18, PROTOCOL.md §9.6): each
//! change one device makes — flags, a move, a deletion, a folder — travels to the others as
//! an operation inside an envelope the device seals to its own account (every current
//! device, one key wrap each), so the server stores and relays it and reads none of it.
//!
//! Each message's placement has an id all devices share (`gid`): the envelope id for mail
//! as received, a random id for a copy. Every attribute of a placement (its folder, each
//! flag) and every folder is a last-writer-wins register: an operation applies when its
//! [`Stamp`] is greater than the register's (Lamport clock, then device id), so every
//! device that saw the same operations ends in the same state, whatever order they came
//! in. A removed placement stays removed.

use serde::{Deserialize, Serialize};

/// Operations one envelope carries at most.
pub const MAX_OPS: usize = 1000;

/// When an operation was made: a Lamport clock, then the making device's id to break ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub clock: u64,
    pub device: String,
}

/// One change of mailbox state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StateOp {
    /// A placement of a message the devices hold under `content` (the id of the envelope
    /// that brought it) in `folder`, with `flags` (a copy, or a message filed by this
    /// device into a folder of its choosing). A message the other devices do not hold
    /// comes with it: as `raw` (RFC 5322; an IMAP APPEND, the history a new device gets),
    /// or as the carrying envelope's own payload when `content` is that envelope's id (a
    /// Sent copy).
    Place {
        gid: String,
        content: String,
        folder: String,
        #[serde(default)]
        flags: Vec<String>,
        /// INTERNALDATE (Unix seconds), with `raw`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        date: Option<i64>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::b64::optional"
        )]
        raw: Option<Vec<u8>>,
        stamp: Stamp,
    },
    /// The placement is now in `folder` (a move).
    Move {
        gid: String,
        folder: String,
        stamp: Stamp,
    },
    /// A flag of the placement set or cleared.
    Flag {
        gid: String,
        flag: String,
        on: bool,
        stamp: Stamp,
    },
    /// The placement is gone (expunged); final.
    Remove { gid: String, stamp: Stamp },
    /// A folder made (with its special use, RFC 6154).
    CreateFolder {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        special: Option<String>,
        stamp: Stamp,
    },
    /// A folder deleted, with what it held.
    DeleteFolder { name: String, stamp: Stamp },
}

impl StateOp {
    pub fn stamp(&self) -> &Stamp {
        match self {
            Self::Place { stamp, .. }
            | Self::Move { stamp, .. }
            | Self::Flag { stamp, .. }
            | Self::Remove { stamp, .. }
            | Self::CreateFolder { stamp, .. }
            | Self::DeleteFolder { stamp, .. } => stamp,
        }
    }
}
