//! Key transparency: the per-domain append-only log of key operations, its signed
//! checkpoints, and the proofs a client checks (issue 7; DESIGN.md §5, §7.4).
//!
//! The tree is RFC 9162 §2.1's — leaf hash `SHA-256(0x00 || entry)`, node hash
//! `SHA-256(0x01 || left || right)` — as implemented by the `ct-merkle` crate; nothing
//! here hashes nodes by hand. An entry is the canonical encoding of one key operation
//! under a label that hides the address (a VRF output, so the log cannot be walked with a
//! dictionary). A checkpoint is (domain, size, root, time) signed by the domain key.
//! Verification is total: malformed proofs and wrong sizes are errors, never panics.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, HashableLeaf, InclusionProof, RootHash};
use sha2_11::Sha256;
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{IdentityPublicKey, Signature, SigningKeypair};

/// Prefix of the VRF input for an address's label.
pub const LABEL_CONTEXT: &[u8] = b"letterme/v1/kt-label\0";
/// Length of a VRF proof (RFC 9381 §5.5, ristretto255: point, challenge, scalar).
pub const VRF_PROOF_LEN: usize = 80;

/// Signature context of a checkpoint.
pub const CHECKPOINT_CONTEXT: &[u8] = b"letterme/v1/kt-checkpoint\0";
/// Version byte of an entry without a device set: every entry of an account from before
/// devices, and every domain-key entry.
pub const ENTRY_VERSION: u8 = 1;
/// Encoded length of a version-1 entry.
pub const ENTRY_LEN: usize = 1 + 1 + 32 + 32 + 32 + 4 + 8;
/// Version byte of an entry that also carries the digest of the account's device set
/// (issue 18, PROTOCOL.md §19.1): an entry's inclusion proof then covers every device of
/// the set it names (that it is the newest entry is not proven: §19 Limits).
pub const ENTRY_VERSION_DEVICES: u8 = 2;
/// Encoded length of a version-2 entry.
pub const ENTRY_LEN_DEVICES: usize = ENTRY_LEN + 32;
/// Longest proof accepted (64 levels of 32-byte hashes; a tree of 2^64 leaves).
pub const MAX_PROOF: usize = 64 * 32;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOp {
    Register = 1,
    Rotate = 2,
    Revoke = 3,
    DeviceAdd = 4,
    DeviceRemove = 5,
    /// The domain key changed; the entry's identity key is the new domain key.
    DomainKey = 6,
}

impl KeyOp {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Register,
            2 => Self::Rotate,
            3 => Self::Revoke,
            4 => Self::DeviceAdd,
            5 => Self::DeviceRemove,
            6 => Self::DomainKey,
            _ => return None,
        })
    }
}

/// One key operation in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    pub op: KeyOp,
    /// The address's VRF output (or all zeros for domain-key entries).
    pub label: [u8; 32],
    pub identity_key: [u8; 32],
    pub encryption_key: [u8; 32],
    pub key_version: u32,
    /// The digest of the account's device set after the operation
    /// (`device::set_digest`); `None` for an account of one device from before devices,
    /// whose entries keep version 1 byte for byte, and for a domain-key entry.
    pub device_set: Option<[u8; 32]>,
    /// Unix seconds.
    pub time: u64,
}

impl LogEntry {
    /// The canonical bytes: version, op, label, identity key, encryption key, key version
    /// (u32 BE), the device set's digest (version 2 only), time (u64 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(ENTRY_LEN_DEVICES);
        w.u8(if self.device_set.is_some() {
            ENTRY_VERSION_DEVICES
        } else {
            ENTRY_VERSION
        })
        .u8(self.op as u8)
        .raw(&self.label)
        .raw(&self.identity_key)
        .raw(&self.encryption_key)
        .u32(self.key_version);
        if let Some(digest) = &self.device_set {
            w.raw(digest);
        }
        w.u64(self.time);
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, KtError> {
        let mut r = Reader::new(bytes);
        let bad = |e: DecodeError| KtError::Malformed(e.to_string());
        let with_devices = match r.u8("entry version").map_err(bad)? {
            ENTRY_VERSION => false,
            ENTRY_VERSION_DEVICES => true,
            _ => return Err(KtError::Malformed("unknown entry version".into())),
        };
        let op = KeyOp::from_u8(r.u8("op").map_err(bad)?)
            .ok_or_else(|| KtError::Malformed("unknown key operation".into()))?;
        // A device is added or removed only in a set; the domain key has none.
        let fits = match op {
            KeyOp::DeviceAdd | KeyOp::DeviceRemove => with_devices,
            KeyOp::DomainKey => !with_devices,
            _ => true,
        };
        if !fits {
            return Err(KtError::Malformed(
                "a key operation in an entry of the wrong version".into(),
            ));
        }
        let entry = Self {
            op,
            label: r.array("label").map_err(bad)?,
            identity_key: r.array("identity key").map_err(bad)?,
            encryption_key: r.array("encryption key").map_err(bad)?,
            key_version: r.u32("key version").map_err(bad)?,
            device_set: if with_devices {
                Some(r.array("device set digest").map_err(bad)?)
            } else {
                None
            },
            time: r.u64("time").map_err(bad)?,
        };
        r.finish().map_err(bad)?;
        Ok(entry)
    }
}

impl LogEntry {
    /// The entry recording that the domain now signs with `key` (label all zeros).
    pub fn domain_key(key: &IdentityPublicKey, time: u64) -> Self {
        Self {
            op: KeyOp::DomainKey,
            label: [0; 32],
            identity_key: key.0,
            encryption_key: [0; 32],
            key_version: 0,
            device_set: None,
            time,
        }
    }
}

impl HashableLeaf for LogEntry {
    fn hash<H: ct_merkle::digest::Update>(&self, hasher: &mut H) {
        hasher.update(&self.encode());
    }
}

/// A signed statement of the log's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub domain: String,
    pub size: u64,
    #[serde(with = "crate::b64::array")]
    pub root: [u8; 32],
    pub time: u64,
    /// The VRF public key of the log's labels: signed with the rest, so a client learns
    /// it from the domain key rather than trusting it at first use.
    #[serde(with = "crate::b64::array")]
    pub vrf_key: [u8; 32],
    pub signature: Signature,
}

impl Checkpoint {
    /// Canonical bytes the domain key signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.str16(&self.domain)
            .u64(self.size)
            .raw(&self.root)
            .u64(self.time)
            .raw(&self.vrf_key);
        w.into_bytes()
    }

    pub fn sign(
        domain: &str,
        size: u64,
        root: [u8; 32],
        time: u64,
        vrf_key: [u8; 32],
        key: &SigningKeypair,
    ) -> Self {
        let mut c = Self {
            domain: domain.to_owned(),
            size,
            root,
            time,
            vrf_key,
            signature: Signature([0; 64]),
        };
        c.signature = key.sign(CHECKPOINT_CONTEXT, &c.signed_bytes());
        c
    }

    pub fn verify(&self, domain_key: &IdentityPublicKey) -> Result<(), KtError> {
        domain_key
            .verify(CHECKPOINT_CONTEXT, &self.signed_bytes(), &self.signature)
            .map_err(|_| KtError::BadCheckpointSignature(self.domain.clone()))
    }

    fn root_hash(&self) -> RootHash<Sha256> {
        RootHash::new(self.root.into(), self.size)
    }
}

/// What a lookup carries so the client can check the key against the log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KtProof {
    /// The entry's position in the log.
    pub index: u64,
    /// The entry's canonical bytes, base64.
    #[serde(with = "crate::b64::bytes")]
    pub entry: Vec<u8>,
    /// The VRF proof of the entry's label for this address, base64.
    #[serde(with = "crate::b64::bytes")]
    pub label_proof: Vec<u8>,
    /// The inclusion proof of `index` in `checkpoint`, base64.
    #[serde(with = "crate::b64::bytes")]
    pub inclusion: Vec<u8>,
    pub checkpoint: Checkpoint,
    /// When the client said which size it saw last: the proof that `checkpoint` extends
    /// it, base64 (absent when that size is beyond the log: a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

/// One entry with its inclusion proof, in a [`KtHistory`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KtHistoryEntry {
    pub index: u64,
    /// The entry's canonical bytes, base64.
    #[serde(with = "crate::b64::bytes")]
    pub entry: Vec<u8>,
    /// The inclusion proof of `index` in the history's checkpoint, base64.
    #[serde(with = "crate::b64::bytes")]
    pub inclusion: Vec<u8>,
}

/// Every entry under the caller's own label (`GET /v1/kt/mine`): what a client checks on
/// every sync, so a key it did not create cannot be logged for it unnoticed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KtHistory {
    /// The VRF proof of the caller's label, base64.
    #[serde(with = "crate::b64::bytes")]
    pub label_proof: Vec<u8>,
    /// Oldest first.
    pub entries: Vec<KtHistoryEntry>,
    pub checkpoint: Checkpoint,
    /// As in [`KtProof`]: the proof from the size the client gave as `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

/// Why a log statement is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KtError {
    #[error("malformed key-transparency data: {0}")]
    Malformed(String),
    #[error("the checkpoint of {0} is not signed by its domain key")]
    BadCheckpointSignature(String),
    #[error("the key is not in the log at position {index} of {size}: the inclusion proof fails")]
    NotIncluded { index: u64, size: u64 },
    #[error(
        "the log of {domain} at size {new} does not extend the one seen at size {old}: the server rewrote its history (fork or rollback)"
    )]
    Inconsistent { domain: String, old: u64, new: u64 },
    #[error("the log of {domain} shrank from {old} to {new} entries: the server rolled back")]
    Rollback { domain: String, old: u64, new: u64 },
    #[error("the checkpoints are of different domains ({0} and {1})")]
    OtherDomain(String, String),
    #[error("the log label of {0} does not verify against the domain's VRF key")]
    BadLabel(String),
    #[error("the key the server gives for {0} is not the one in its key-transparency log")]
    NotLogged(String),
    #[error("the log of {0} changed its VRF key: its labels no longer match what was seen")]
    VrfKeyChanged(String),
    #[error(
        "the devices the server lists for {0} are not the set its key-transparency log names: {1}"
    )]
    DevicesNotLogged(String, String),
}

/// A domain's VRF key (RFC 9381, ECVRF-RISTRETTO255-SHA512, via `vrf-r255`): the label of
/// an address in the log is its VRF output, which only the domain can compute and anyone
/// with the public key can check, so the log cannot be searched with a list of addresses.
#[derive(Clone)]
pub struct VrfKey(vrf_r255::SecretKey);

impl std::fmt::Debug for VrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VrfKey(<redacted>)")
    }
}

fn label_input(address: &crate::Address) -> Vec<u8> {
    let mut v = LABEL_CONTEXT.to_vec();
    v.extend_from_slice(address.as_str().to_ascii_lowercase().as_bytes());
    v
}

impl VrfKey {
    pub fn generate() -> Self {
        let mut bytes: [u8; 32] = crate::keys::random_bytes();
        // Below 2^252 < ℓ, so always a canonical scalar.
        bytes[31] &= 0x0f;
        Self::from_bytes(bytes).expect("a scalar below 2^252 is canonical")
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Option<Self> {
        Option::from(vrf_r255::SecretKey::from_bytes(bytes)).map(Self)
    }

    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        vrf_r255::PublicKey::from(self.0).to_bytes()
    }

    /// The address's label (the first 32 bytes of the VRF output) and the proof of it.
    pub fn label(&self, address: &crate::Address) -> ([u8; 32], [u8; VRF_PROOF_LEN]) {
        let input = label_input(address);
        let proof = self.0.prove(&input);
        let output = vrf_r255::PublicKey::from(self.0)
            .verify(&input, &proof)
            .expect("a proof verifies against its own key");
        let mut label = [0u8; 32];
        label.copy_from_slice(&output[..32]);
        (label, proof.to_bytes())
    }
}

/// Checks a label proof for `address` against the domain's VRF public key; returns the label.
pub fn verify_label(
    public: &[u8; 32],
    address: &crate::Address,
    proof: &[u8],
) -> Result<[u8; 32], KtError> {
    let bad = || KtError::BadLabel(address.to_string());
    let key = vrf_r255::PublicKey::from_bytes(*public).ok_or_else(bad)?;
    let proof: [u8; VRF_PROOF_LEN] = proof.try_into().map_err(|_| bad())?;
    let proof = vrf_r255::Proof::from_bytes(proof).ok_or_else(bad)?;
    let output: Option<[u8; 64]> = key.verify(&label_input(address), &proof).into();
    let output = output.ok_or_else(bad)?;
    let mut label = [0u8; 32];
    label.copy_from_slice(&output[..32]);
    Ok(label)
}

/// Checks that `entry` is at `index` in the tree `checkpoint` commits to.
pub fn verify_inclusion(
    entry: &LogEntry,
    index: u64,
    checkpoint: &Checkpoint,
    proof: &[u8],
) -> Result<(), KtError> {
    let not = KtError::NotIncluded {
        index,
        size: checkpoint.size,
    };
    if index >= checkpoint.size || proof.len() > MAX_PROOF || !proof.len().is_multiple_of(32) {
        return Err(not);
    }
    let proof =
        InclusionProof::<Sha256>::try_from_bytes(proof.to_vec()).map_err(|_| not.clone())?;
    checkpoint
        .root_hash()
        .verify_inclusion(entry, index, &proof)
        .map_err(|_| not)
}

/// Checks that `new` extends `old` (same domain): a smaller size is a rollback, the same
/// size with another root or a failing proof a fork.
pub fn verify_consistency(old: &Checkpoint, new: &Checkpoint, proof: &[u8]) -> Result<(), KtError> {
    if old.domain != new.domain {
        return Err(KtError::OtherDomain(old.domain.clone(), new.domain.clone()));
    }
    let inconsistent = KtError::Inconsistent {
        domain: new.domain.clone(),
        old: old.size,
        new: new.size,
    };
    if new.size < old.size {
        return Err(KtError::Rollback {
            domain: new.domain.clone(),
            old: old.size,
            new: new.size,
        });
    }
    if old.size == new.size {
        return if old.root == new.root {
            Ok(())
        } else {
            Err(inconsistent)
        };
    }
    if old.size == 0 {
        // The empty tree is a prefix of every tree.
        return Ok(());
    }
    if proof.len() > MAX_PROOF || !proof.len().is_multiple_of(32) {
        return Err(inconsistent);
    }
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.to_vec())
        .map_err(|_| inconsistent.clone())?;
    new.root_hash()
        .verify_consistency(&old.root_hash(), &proof)
        .map_err(|_| inconsistent)
}

/// The log itself, in memory: what the server appends to and proves from.
#[derive(Debug, Clone, Default)]
pub struct Log {
    tree: MemoryBackedTree<Sha256, LogEntry>,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.len() == 0
    }

    /// Appends; returns the entry's index.
    pub fn push(&mut self, entry: LogEntry) -> u64 {
        self.tree.push(entry);
        self.len() - 1
    }

    pub fn root(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.tree.root().as_bytes());
        out
    }

    /// A checkpoint of the current state, signed by `key`.
    pub fn checkpoint(
        &self,
        domain: &str,
        vrf_key: [u8; 32],
        time: u64,
        key: &SigningKeypair,
    ) -> Checkpoint {
        Checkpoint::sign(domain, self.len(), self.root(), time, vrf_key, key)
    }

    /// The inclusion proof of entry `index`, or `None` when there is no such entry.
    pub fn prove_inclusion(&self, index: u64) -> Option<Vec<u8>> {
        let i = usize::try_from(index).ok()?;
        (index < self.len()).then(|| self.tree.prove_inclusion(i).as_bytes().to_vec())
    }

    /// The proof that the current tree extends its first `old_size` entries, or `None`
    /// when `old_size` is larger than the log.
    pub fn prove_consistency(&self, old_size: u64) -> Option<Vec<u8>> {
        let len = self.len();
        if old_size > len {
            return None;
        }
        if old_size == 0 || old_size == len {
            return Some(Vec::new());
        }
        let additions = usize::try_from(len - old_size).ok()?;
        Some(self.tree.prove_consistency(additions).as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> LogEntry {
        let mut label = [0u8; 32];
        label[..4].copy_from_slice(&i.to_be_bytes());
        LogEntry {
            op: if i.is_multiple_of(3) {
                KeyOp::Rotate
            } else {
                KeyOp::Register
            },
            label,
            identity_key: [i as u8; 32],
            encryption_key: [(i >> 8) as u8; 32],
            key_version: i,
            device_set: None,
            time: 1_700_000_000 + u64::from(i),
        }
    }

    #[test]
    fn entries_round_trip_and_reject_garbage() {
        let e = entry(7);
        let b = e.encode();
        assert_eq!(b.len(), ENTRY_LEN);
        assert_eq!(LogEntry::decode(&b).unwrap(), e);
        assert!(LogEntry::decode(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(LogEntry::decode(&longer).is_err());
        let mut bad_op = b;
        bad_op[1] = 99;
        assert!(LogEntry::decode(&bad_op).is_err());
    }

    /// An entry with a device set's digest is version 2, 32 bytes longer, and round-trips;
    /// one without keeps version 1's bytes (an account from before devices); a version-1
    /// entry with a digest's worth of bytes more, or a version-2 one without, is refused.
    #[test]
    fn an_entry_with_devices_is_version_2_and_one_without_stays_version_1() {
        let plain = entry(4);
        let v1 = plain.encode();
        assert_eq!((v1[0], v1.len()), (ENTRY_VERSION, ENTRY_LEN));
        let with = LogEntry {
            op: KeyOp::DeviceAdd,
            device_set: Some([0xd5; 32]),
            ..plain
        };
        let v2 = with.encode();
        assert_eq!(
            (v2[0], v2.len()),
            (ENTRY_VERSION_DEVICES, ENTRY_LEN_DEVICES)
        );
        assert_eq!(LogEntry::decode(&v2).unwrap(), with);
        assert_eq!(&v2[2..ENTRY_LEN - 8], &v1[2..ENTRY_LEN - 8]);
        let mut posing = v2.clone();
        posing[0] = ENTRY_VERSION;
        assert!(LogEntry::decode(&posing).is_err());
        let mut short = v1;
        short[0] = ENTRY_VERSION_DEVICES;
        assert!(LogEntry::decode(&short).is_err());
        assert!(LogEntry::decode(&v2[..v2.len() - 1]).is_err());
        // A device operation outside a set, a domain key inside one.
        let mut outside = plain.encode();
        outside[1] = KeyOp::DeviceRemove as u8;
        assert!(LogEntry::decode(&outside).is_err());
        let mut inside = v2;
        inside[1] = KeyOp::DomainKey as u8;
        assert!(LogEntry::decode(&inside).is_err());
    }

    /// Version 1's bytes, field by field as PROTOCOL.md §19.1 lays them out: what the logs
    /// of every domain already hold.
    #[test]
    fn a_version_1_entry_has_the_bytes_it_always_had() {
        let e = entry(0x0104);
        let mut want = vec![1, 1];
        want.extend(e.label);
        want.extend([0x04; 32]);
        want.extend([0x01; 32]);
        want.extend(0x0104u32.to_be_bytes());
        want.extend((1_700_000_000u64 + 0x0104).to_be_bytes());
        assert_eq!(e.encode(), want);
    }

    #[test]
    fn the_empty_tree_and_one_leaf_hash_as_rfc_9162_says() {
        use sha2_11::Digest as _;
        // RFC 9162 §2.1.1: MTH({}) = SHA-256(), MTH({d0}) = SHA-256(0x00 || d0).
        assert_eq!(Log::new().root().as_slice(), Sha256::digest([]).as_slice());
        let mut log = Log::new();
        log.push(entry(1));
        let mut leaf = vec![0u8];
        leaf.extend(entry(1).encode());
        assert_eq!(log.root().as_slice(), Sha256::digest(&leaf).as_slice());
        // Two leaves: SHA-256(0x01 || leaf0 || leaf1).
        log.push(entry(2));
        let mut l2 = vec![0u8];
        l2.extend(entry(2).encode());
        let mut node = vec![1u8];
        node.extend(Sha256::digest(&leaf));
        node.extend(Sha256::digest(&l2));
        assert_eq!(log.root().as_slice(), Sha256::digest(&node).as_slice());
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_tampering_fails() {
        let key = SigningKeypair::generate();
        let mut log = Log::new();
        let mut checkpoints = vec![log.checkpoint("x.test", [7; 32], 0, &key)];
        for i in 0..40 {
            log.push(entry(i));
            checkpoints.push(log.checkpoint("x.test", [7; 32], u64::from(i), &key));
        }
        let head = checkpoints.last().unwrap();
        head.verify(&key.public()).unwrap();
        for i in 0..40u32 {
            let proof = log.prove_inclusion(u64::from(i)).unwrap();
            verify_inclusion(&entry(i), u64::from(i), head, &proof).unwrap();
            // The wrong entry, the wrong place, or a bent proof: refused.
            assert!(verify_inclusion(&entry(i + 1), u64::from(i), head, &proof).is_err());
            assert!(verify_inclusion(&entry(i), u64::from(i) + 1, head, &proof).is_err());
            if !proof.is_empty() {
                let mut bent = proof.clone();
                bent[0] ^= 1;
                assert!(verify_inclusion(&entry(i), u64::from(i), head, &bent).is_err());
            }
        }
        assert!(verify_inclusion(&entry(0), 40, head, &[]).is_err());
        // Consistency between every earlier checkpoint and the head.
        for old in &checkpoints {
            let proof = log.prove_consistency(old.size).unwrap();
            verify_consistency(old, head, &proof).unwrap();
        }
        assert!(log.prove_consistency(41).is_none());
    }

    #[test]
    fn consistency_proofs_verify_between_any_two_checkpoints() {
        let key = SigningKeypair::generate();
        let mut logs = vec![Log::new()];
        for i in 0..24 {
            let mut next = logs.last().unwrap().clone();
            next.push(entry(i));
            logs.push(next);
        }
        for (a, old) in logs.iter().enumerate() {
            let old_cp = old.checkpoint("x.test", [7; 32], 1, &key);
            for new in &logs[a..] {
                let new_cp = new.checkpoint("x.test", [7; 32], 2, &key);
                let proof = new.prove_consistency(old.len()).unwrap();
                verify_consistency(&old_cp, &new_cp, &proof).unwrap();
                if !old.is_empty() && old.len() < new.len() {
                    let mut other = old_cp.clone();
                    other.root[5] ^= 1;
                    assert!(verify_consistency(&other, &new_cp, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn labels_verify_only_for_their_address_and_key() {
        let key = VrfKey::generate();
        let alice = crate::Address::parse("alice@x.test").unwrap();
        let bob = crate::Address::parse("bob@x.test").unwrap();
        let (label, proof) = key.label(&alice);
        assert_eq!(key.label(&alice).0, label, "deterministic");
        assert_ne!(key.label(&bob).0, label);
        assert_eq!(verify_label(&key.public(), &alice, &proof).unwrap(), label);
        assert!(verify_label(&key.public(), &bob, &proof).is_err());
        assert!(verify_label(&VrfKey::generate().public(), &alice, &proof).is_err());
        assert!(verify_label(&key.public(), &alice, &proof[..79]).is_err());
        let again = VrfKey::from_bytes(*key.to_bytes()).unwrap();
        assert_eq!(again.label(&alice).0, label);
    }

    #[test]
    fn a_fork_or_a_rollback_is_caught() {
        let key = SigningKeypair::generate();
        let (mut a, mut b) = (Log::new(), Log::new());
        for i in 0..10 {
            a.push(entry(i));
            b.push(entry(if i == 6 { 99 } else { i }));
        }
        let seen = a.checkpoint("x.test", [7; 32], 1, &key);
        let fork = b.checkpoint("x.test", [7; 32], 1, &key);
        // Same size, other root: a fork.
        assert!(matches!(
            verify_consistency(&seen, &fork, &[]),
            Err(KtError::Inconsistent { .. })
        ));
        // The forked log grows: its proof from the size we saw does not hold.
        for i in 10..15 {
            b.push(entry(i));
        }
        let later = b.checkpoint("x.test", [7; 32], 2, &key);
        let proof = b.prove_consistency(seen.size).unwrap();
        assert!(matches!(
            verify_consistency(&seen, &later, &proof),
            Err(KtError::Inconsistent { .. })
        ));
        // Restored from an older backup: smaller than what we saw.
        let mut old = Log::new();
        for i in 0..5 {
            old.push(entry(i));
        }
        assert!(matches!(
            verify_consistency(&seen, &old.checkpoint("x.test", [7; 32], 3, &key), &[]),
            Err(KtError::Rollback { .. })
        ));
        // A checkpoint not signed by the domain key.
        assert!(seen.verify(&SigningKeypair::generate().public()).is_err());
    }
}
