//! Timestamps, transaction ids, ballots, the per-node hybrid logical clock, and transaction
//! kinds with their conflict matrix.
//!
//! A [`Timestamp`] is `(epoch, hlc, flags, node)` and compares in that order, so every
//! timestamp any node creates is unique (the node id breaks ties) and totally ordered. A
//! [`TxnId`] is the timestamp a coordinator creates for a new transaction; its flags carry the
//! [`TxnKind`] and [`Domain`]. A [`Ballot`] orders coordinators of one transaction: the
//! original coordinator uses [`Ballot::ZERO`], recoveries use fresh HLC timestamps.

use std::fmt;

/// A node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A topology epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// A reading of a node's local clock in microseconds. It may be skewed against other nodes;
/// the protocol only uses it to feed the HLC and to schedule timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LocalTime(pub u64);

impl LocalTime {
    /// Returns the time `micros` later.
    pub fn after_micros(self, micros: u64) -> LocalTime {
        LocalTime(self.0.saturating_add(micros))
    }
}

/// What a transaction does, which decides what it conflicts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnKind {
    /// Reads only.
    Read,
    /// Reads and writes.
    Write,
    /// A sync point: witnesses reads and writes, is witnessed by nothing new.
    SyncPoint,
    /// An exclusive sync point: witnesses everything.
    ExclusiveSyncPoint,
}

impl TxnKind {
    /// Returns true if a transaction of kind `self` must order itself after an earlier one of
    /// kind `other` (so `other` belongs in its deps). Reads never witness reads.
    pub fn witnesses(self, other: TxnKind) -> bool {
        match self {
            TxnKind::Read => other == TxnKind::Write,
            TxnKind::Write | TxnKind::SyncPoint => {
                matches!(other, TxnKind::Read | TxnKind::Write)
            }
            TxnKind::ExclusiveSyncPoint => true,
        }
    }

    fn to_bits(self) -> u16 {
        match self {
            TxnKind::Read => 0,
            TxnKind::Write => 1,
            TxnKind::SyncPoint => 2,
            TxnKind::ExclusiveSyncPoint => 3,
        }
    }

    fn from_bits(bits: u16) -> Option<TxnKind> {
        match bits {
            0 => Some(TxnKind::Read),
            1 => Some(TxnKind::Write),
            2 => Some(TxnKind::SyncPoint),
            3 => Some(TxnKind::ExclusiveSyncPoint),
            _ => None,
        }
    }
}

/// Whether a transaction names keys or ranges. Only keys are implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Domain {
    Key,
    Range,
}

const KIND_MASK: u16 = 0b0111;
const DOMAIN_RANGE_BIT: u16 = 0b1000;

/// A totally ordered, globally unique timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub epoch: Epoch,
    pub hlc: u64,
    pub flags: u16,
    pub node: NodeId,
}

impl Timestamp {
    /// The smallest timestamp.
    pub const ZERO: Timestamp = Timestamp {
        epoch: Epoch(0),
        hlc: 0,
        flags: 0,
        node: NodeId(0),
    };

    /// Returns a timestamp with the same identity flags and the given clock reading.
    pub fn new(epoch: Epoch, hlc: u64, flags: u16, node: NodeId) -> Timestamp {
        Timestamp {
            epoch,
            hlc,
            flags,
            node,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.epoch.0, self.hlc, self.flags, self.node.0
        )
    }
}

/// A transaction's id: the timestamp its coordinator proposed (`t0`), with kind and domain in
/// its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxnId(Timestamp);

impl TxnId {
    /// Builds an id from a fresh timestamp, stamping kind and domain into the flags.
    pub fn new(timestamp: Timestamp, kind: TxnKind, domain: Domain) -> TxnId {
        let domain_bits = if domain == Domain::Range {
            DOMAIN_RANGE_BIT
        } else {
            0
        };
        TxnId(Timestamp {
            flags: kind.to_bits() | domain_bits,
            ..timestamp
        })
    }

    /// Rebuilds an id from its timestamp, as decoded from storage.
    pub fn from_timestamp(timestamp: Timestamp) -> Option<TxnId> {
        TxnKind::from_bits(timestamp.flags & KIND_MASK)?;
        Some(TxnId(timestamp))
    }

    pub fn timestamp(self) -> Timestamp {
        self.0
    }

    pub fn kind(self) -> TxnKind {
        // Every constructor validates the kind bits.
        TxnKind::from_bits(self.0.flags & KIND_MASK).unwrap_or(TxnKind::ExclusiveSyncPoint)
    }

    pub fn domain(self) -> Domain {
        if self.0.flags & DOMAIN_RANGE_BIT != 0 {
            Domain::Range
        } else {
            Domain::Key
        }
    }

    /// The node that created the id: the original coordinator.
    pub fn coordinator(self) -> NodeId {
        self.0.node
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Orders competing coordinators of one transaction; replicas promise not to accept lower
/// ballots once they promised a higher one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot(pub Timestamp);

impl Ballot {
    /// The ballot of the original coordinator.
    pub const ZERO: Ballot = Ballot(Timestamp::ZERO);

    /// The promise a replica answers with once the command is decided or
    /// invalidated: above every ballot a coordinator can hold.
    pub const DECIDED: Ballot = Ballot(Timestamp {
        hlc: u64::MAX,
        ..Timestamp::ZERO
    });
}

/// The most low bits of an HLC value that may carry the issuing node's id
/// ([`Hlc::with_node_bits`]).
pub const HLC_NODE_BITS_MAX: u32 = 16;

/// A node's hybrid logical clock: `hlc = max(now, last + 1)`, ratcheted by every timestamp the
/// node witnesses. One per node, shared by everything on it, so its timestamps are totally
/// ordered.
///
/// With `node_bits = b > 0` ([`Hlc::with_node_bits`]) every value it issues is the smallest
/// at or above `max(now, last + 1)` whose low `b` bits equal the node id, so two nodes (with
/// ids below `2^b`) never issue the same HLC value: equal HLCs mean the same node. The server
/// relies on it: a write's cell timestamp is executeAt's HLC alone, and conflicting writes
/// must not tie (design/cluster.md, "Write time"). The price: one node issues at most one
/// value per `2^b` microseconds before its clock runs ahead of the wall clock.
#[derive(Debug, Clone)]
pub struct Hlc {
    node: NodeId,
    epoch: Epoch,
    last: u64,
    node_bits: u32,
}

impl Hlc {
    pub fn new(node: NodeId, epoch: Epoch) -> Hlc {
        Hlc::with_node_bits(node, epoch, 0)
    }

    /// A clock whose values carry `node` in their low `node_bits` bits.
    ///
    /// # Panics
    /// When `node_bits` exceeds [`HLC_NODE_BITS_MAX`] or the node id does not fit in
    /// `node_bits` bits (callers validate first: `Node::open` refuses such a configuration).
    pub fn with_node_bits(node: NodeId, epoch: Epoch, node_bits: u32) -> Hlc {
        assert!(node_bits <= HLC_NODE_BITS_MAX);
        assert!(node_bits == 0 || u64::from(node.0) < (1u64 << node_bits));
        Hlc {
            node,
            epoch,
            last: 0,
            node_bits,
        }
    }

    /// Returns a timestamp above every one this clock returned or witnessed.
    pub fn unique_now(&mut self, now: LocalTime) -> Timestamp {
        let base = now.0.max(self.last.saturating_add(1));
        self.last = if self.node_bits == 0 {
            base
        } else {
            let stride = 1u64 << self.node_bits;
            let candidate = (base & !(stride - 1)) | u64::from(self.node.0);
            if candidate < base {
                candidate + stride
            } else {
                candidate
            }
        };
        Timestamp {
            epoch: self.epoch,
            hlc: self.last,
            flags: 0,
            node: self.node,
        }
    }

    /// Returns a unique timestamp strictly above `at_least` (ignoring `at_least`'s node).
    pub fn unique_now_above(&mut self, now: LocalTime, at_least: Timestamp) -> Timestamp {
        self.witness(at_least);
        let timestamp = self.unique_now(now);
        assert!(timestamp > at_least);
        timestamp
    }

    /// A timestamp at or below the next one [`Hlc::unique_now`] can return: every timestamp
    /// this clock issues from now on is at or above it.
    pub fn next_floor(&self) -> Timestamp {
        Timestamp {
            epoch: self.epoch,
            hlc: self.last.saturating_add(1),
            flags: 0,
            node: NodeId(0),
        }
    }

    /// Ratchets the clock past a timestamp seen in a message. The sentinel `hlc = u64::MAX`
    /// ([`Ballot::DECIDED`], the promise a decided command answers a Nack with) is not a time
    /// and is ignored: witnessing it would leave no timestamp above it (Jepsen: a Nack with it
    /// during a partition overflowed the coordinator's clock).
    pub fn witness(&mut self, timestamp: Timestamp) {
        if timestamp.hlc == u64::MAX {
            return;
        }
        if timestamp.epoch > self.epoch {
            self.epoch = timestamp.epoch;
        }
        self.last = self.last.max(timestamp.hlc);
    }

    pub fn node(&self) -> NodeId {
        self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn conflict_matrix() {
        let kinds = [
            TxnKind::Read,
            TxnKind::Write,
            TxnKind::SyncPoint,
            TxnKind::ExclusiveSyncPoint,
        ];
        let mut table = String::new();
        for a in kinds {
            let row: Vec<&str> = kinds
                .iter()
                .map(|b| if a.witnesses(*b) { "x" } else { "." })
                .collect();
            table.push_str(&format!("{a:?}: {}\n", row.join(" ")));
        }
        expect![[r#"
            Read: . x . .
            Write: x x . .
            SyncPoint: x x . .
            ExclusiveSyncPoint: x x x x
        "#]]
        .assert_eq(&table);
    }

    #[test]
    fn the_decided_ballot_is_not_a_time_the_clock_witnesses() {
        let mut hlc = Hlc::new(NodeId(1), Epoch(1));
        let before = hlc.unique_now(LocalTime(100));
        hlc.witness(Ballot::DECIDED.0);
        let after = hlc.unique_now(LocalTime(200));
        assert!(after > before);
        assert_eq!(after.hlc, 200);
    }

    #[test]
    fn hlc_is_monotonic_and_ratchets() {
        let mut hlc = Hlc::new(NodeId(1), Epoch(1));
        let a = hlc.unique_now(LocalTime(100));
        let b = hlc.unique_now(LocalTime(50));
        assert!(b > a);
        let remote = Timestamp::new(Epoch(1), 1_000, 0, NodeId(2));
        let c = hlc.unique_now_above(LocalTime(60), remote);
        assert!(c > remote && c.hlc == 1_001);
        let id = TxnId::new(c, TxnKind::Write, Domain::Key);
        assert_eq!(id.kind(), TxnKind::Write);
        assert_eq!(id.domain(), Domain::Key);
        assert_eq!(id.coordinator(), NodeId(1));
    }

    #[test]
    fn hlc_values_carry_the_node_in_their_low_bits() {
        let bits = 6;
        let mut one = Hlc::with_node_bits(NodeId(1), Epoch(1), bits);
        let mut two = Hlc::with_node_bits(NodeId(2), Epoch(1), bits);
        let mask = (1u64 << bits) - 1;
        let mut last = 0;
        for now in [100, 100, 101, 50, 1_000, 1_000, 1_064, 5_000] {
            let a = one.unique_now(LocalTime(now));
            let b = two.unique_now(LocalTime(now));
            assert_eq!(a.hlc & mask, 1);
            assert_eq!(b.hlc & mask, 2);
            assert!(a.hlc >= now && b.hlc >= now);
            // The smallest such value: less than one stride above the floor.
            assert!(a.hlc > last && a.hlc - now.max(last + 1) < 64);
            last = a.hlc;
        }
        // Witnessing another node's value keeps the node's own bits.
        let remote = two.unique_now(LocalTime(9_000));
        let above = one.unique_now_above(LocalTime(0), remote);
        assert!(above > remote && above.hlc & mask == 1 && above.hlc != remote.hlc);
    }
}
