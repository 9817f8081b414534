//! The result of checking a history: a verdict, named anomalies, and counts.
//!
//! Every checker returns a [`Report`]. The history is valid exactly when the report has no
//! anomalies. Each [`Anomaly`] has a [`AnomalyKind`] whose [`AnomalyKind::name`] follows Elle's
//! vocabulary (`G0`, `G1c`, `G-single-realtime`, …), the operations involved (copied from the
//! history, with their results), a sentence of explanation, and, for dependency cycles, the
//! edges of one concrete cycle with their types.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{OpId, Operation, OperationBody};
use crate::list_append::Key;

/// Anomalies shown per kind by `Display`; the counts always cover all of them.
const ANOMALIES_DISPLAYED_PER_KIND_MAX: usize = 8;

/// The kind of an anomaly. See `design/checker.md` for the definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    /// Write cycle: a dependency cycle of write-write edges only.
    G0,
    /// Circular information flow: a cycle of write-write and write-read edges, at least one wr.
    G1c,
    /// A cycle with exactly one read-write anti-dependency edge (read skew and friends).
    GSingle,
    /// A cycle with two or more read-write anti-dependency edges (write skew and friends).
    G2Item,
    /// Like [`AnomalyKind::G0`], but the cycle needs a real-time edge.
    G0Realtime,
    /// Like [`AnomalyKind::G1c`], but the cycle needs a real-time edge.
    G1cRealtime,
    /// Like [`AnomalyKind::GSingle`], but the cycle needs a real-time edge (e.g. a stale read).
    GSingleRealtime,
    /// Like [`AnomalyKind::G2Item`], but the cycle needs a real-time edge.
    G2ItemRealtime,
    /// Aborted read: an ok read observed an element appended by a failed transaction.
    G1a,
    /// Intermediate read: a read ended in a non-final append of another transaction.
    G1b,
    /// A transaction's read disagrees with its own earlier reads and appends of that key.
    Internal,
    /// Two reads of one key where neither is a prefix of the other.
    IncompatibleOrder,
    /// A read contains the same element twice.
    DuplicateElements,
    /// A read contains an element that no transaction ever appended.
    GarbageRead,
    /// An ok append was never observed, though a read of its key began after it completed.
    LostWrite,
    /// Two appends of the same element to the same key: the history breaks the checker's
    /// assumption that appended elements are unique per key, so it cannot be judged.
    DuplicateAppend,
    /// A bank read whose balances do not add up to the invariant total.
    WrongTotal,
    /// A bank read with a negative balance where negative balances are forbidden.
    NegativeBalance,
    /// A bank read that is missing accounts or has accounts that do not exist.
    UnexpectedAccounts,
    /// A register's operations have no linearization.
    Nonlinearizable,
    /// The linearizability search hit its step limit before reaching a verdict.
    SearchLimitExceeded,
}

impl AnomalyKind {
    /// The name used in reports, following Elle's where Elle has one.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2Item => "G2-item",
            AnomalyKind::G0Realtime => "G0-realtime",
            AnomalyKind::G1cRealtime => "G1c-realtime",
            AnomalyKind::GSingleRealtime => "G-single-realtime",
            AnomalyKind::G2ItemRealtime => "G2-item-realtime",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::Internal => "internal",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::DuplicateElements => "duplicate-elements",
            AnomalyKind::GarbageRead => "garbage-read",
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::DuplicateAppend => "duplicate-append",
            AnomalyKind::WrongTotal => "wrong-total",
            AnomalyKind::NegativeBalance => "negative-balance",
            AnomalyKind::UnexpectedAccounts => "unexpected-accounts",
            AnomalyKind::Nonlinearizable => "nonlinearizable",
            AnomalyKind::SearchLimitExceeded => "search-limit-exceeded",
        }
    }

    /// Whether this is a cycle that exists only because of real-time order: a violation of
    /// strict serializability that a serializable database may exhibit.
    pub fn is_realtime(self) -> bool {
        matches!(
            self,
            AnomalyKind::G0Realtime
                | AnomalyKind::G1cRealtime
                | AnomalyKind::GSingleRealtime
                | AnomalyKind::G2ItemRealtime
        )
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The type of a dependency edge between two transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeKind {
    /// `from` appended an element, `to` appended a later element of the same key.
    WriteWrite,
    /// `to` read a list whose last element `from` appended.
    WriteRead,
    /// `from` read a list that lacks an element `to` appended (an anti-dependency).
    ReadWrite,
    /// `from` completed before `to` was invoked.
    Realtime,
}

impl EdgeKind {
    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::WriteWrite => "ww",
            EdgeKind::WriteRead => "wr",
            EdgeKind::ReadWrite => "rw",
            EdgeKind::Realtime => "realtime",
        }
    }
}

/// One edge of a reported dependency cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleEdge {
    pub from: OpId,
    pub to: OpId,
    pub kind: EdgeKind,
    /// The key whose reads or appends imply the edge; `None` for real-time edges.
    pub key: Option<Key>,
}

impl fmt::Display for CycleEdge {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(key) => write!(
                formatter,
                "{} -{}(key {key})-> {}",
                self.from,
                self.kind.name(),
                self.to
            ),
            None => write!(
                formatter,
                "{} -{}-> {}",
                self.from,
                self.kind.name(),
                self.to
            ),
        }
    }
}

/// One anomaly found in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly<B> {
    pub kind: AnomalyKind,
    /// A sentence saying what was observed.
    pub explanation: String,
    /// The operations involved, in cycle order for cycles.
    pub operations: Vec<Operation<B>>,
    /// For dependency cycles: the edges of one cycle, each `to` the next edge's `from`.
    pub cycle: Vec<CycleEdge>,
}

impl<B> Anomaly<B> {
    pub fn operation_ids(&self) -> Vec<OpId> {
        self.operations.iter().map(Operation::id).collect()
    }
}

impl<B: OperationBody> fmt::Display for Anomaly<B> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "{}: {}", self.kind, self.explanation)?;
        for edge in &self.cycle {
            writeln!(formatter, "    {edge}")?;
        }
        for operation in &self.operations {
            writeln!(formatter, "    {operation}")?;
        }
        Ok(())
    }
}

/// The verdict on one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<B> {
    checker: &'static str,
    anomalies: Vec<Anomaly<B>>,
    counts: BTreeMap<AnomalyKind, usize>,
}

impl<B> Report<B> {
    pub(crate) fn new(checker: &'static str) -> Self {
        Report {
            checker,
            anomalies: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    pub(crate) fn push(&mut self, anomaly: Anomaly<B>) {
        *self.counts.entry(anomaly.kind).or_insert(0) += 1;
        self.anomalies.push(anomaly);
    }

    /// Whether the history passed: true exactly when no anomaly was found.
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// What was checked, e.g. `"list-append (strict-serializable)"`.
    pub fn checker(&self) -> &'static str {
        self.checker
    }

    pub fn anomalies(&self) -> &[Anomaly<B>] {
        &self.anomalies
    }

    /// How many anomalies of each kind were found.
    pub fn counts(&self) -> &BTreeMap<AnomalyKind, usize> {
        &self.counts
    }

    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.count(kind) > 0
    }

    /// The names of the anomaly kinds found, in a fixed order.
    pub fn kind_names(&self) -> Vec<&'static str> {
        self.counts.keys().map(|kind| kind.name()).collect()
    }

    pub fn anomalies_of(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly<B>> {
        self.anomalies
            .iter()
            .filter(move |anomaly| anomaly.kind == kind)
    }
}

impl<B: OperationBody> fmt::Display for Report<B> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.valid() {
            return writeln!(formatter, "{}: valid", self.checker);
        }
        write!(formatter, "{}: INVALID:", self.checker)?;
        for (kind, count) in &self.counts {
            write!(formatter, " {kind}×{count}")?;
        }
        writeln!(formatter)?;
        for (kind, count) in &self.counts {
            for anomaly in self
                .anomalies_of(*kind)
                .take(ANOMALIES_DISPLAYED_PER_KIND_MAX)
            {
                write!(formatter, "{anomaly}")?;
            }
            if *count > ANOMALIES_DISPLAYED_PER_KIND_MAX {
                let hidden = count - ANOMALIES_DISPLAYED_PER_KIND_MAX;
                writeln!(formatter, "... and {hidden} more {kind}")?;
            }
        }
        Ok(())
    }
}
