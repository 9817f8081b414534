//! Indexing a list-append history, the anomalies visible without a graph, and the inference of
//! dependency edges.
//!
//! Everything is keyed by dense integers: operation `i` is graph node `i`, keys are interned
//! to indices, and every append is a [`WriteRecord`] found through one hash map from
//! `(key, element)`.
//!
//! Which transactions enter the dependency graph: every `ok` one, and every `info` one with an
//! append that some read observed (then it committed). `fail` transactions never do; reading
//! their appends is G1a.
//!
//! Edges, for a key whose reads are all prefixes of its longest read `L` (its version order):
//!
//! ```text
//!   ww  writer(L[i]) -> writer(L[j]), consecutive in-graph writers along L
//!   wr  writer(last element of a read) -> reader
//!   rw  reader of a prefix of length n -> the first in-graph writer of L[n..]
//! ```
//!
//! Committed appends that no read observed must sit after all of `L` (every read is a prefix of
//! the final list). Rather than an edge from every reader of the whole of `L` to every such
//! writer, each key gets one helper node `U` (node `n_operations + key index`):
//!
//! ```text
//!   reader of all of L ──rw──► U ──continuation──► each unobserved committed writer
//!   last writer of L   ──ww──► U
//! ```
//!
//! A path through `U` means the kind of the edge that entered it. A transaction that is itself
//! one of the unobserved writers gets direct edges instead, or `U` would close a false cycle
//! back to it.

use crate::fast_hash::{FastHashMap, FastHashSet};
use crate::graph::{Graph, GraphBuilder, GraphEdgeKind};
use crate::history::{History, OpId, Operation, Status};
use crate::list_append::{Element, Key, MicroOp, Transaction};
use crate::realtime::add_realtime_edges;
use crate::report::{Anomaly, AnomalyKind, Report};

/// Most direct rw edges from one reader that is also an unobserved writer of the key. Valid
/// histories have at most one such reader per key; the limit only bounds broken ones.
const DIRECT_ANTI_DEPENDENCIES_MAX: usize = 64;
/// Most conflicting reads named in one incompatible-order anomaly.
const CONFLICTING_READS_SHOWN_MAX: usize = 4;

#[derive(Clone, Copy, Debug)]
struct WriteRecord {
    op: u32,
    key: u32,
    element: Element,
    /// Whether this is its transaction's last append to the key (see G1b).
    final_in_transaction: bool,
    observed: bool,
}

#[derive(Clone, Copy, Debug)]
struct ReadRecord {
    op: u32,
    key: u32,
    micro_op: u32,
}

/// What a key's reads say, found by `Analysis::observe_reads`.
#[derive(Clone, Copy, Debug)]
struct KeySummary {
    /// The longest read (the first of equally long ones).
    longest: ReadRecord,
    /// Whether every read is a prefix of the longest.
    compatible: bool,
    longest_has_duplicates: bool,
}

/// Reads of elements that are not there to read, as (first reader, number of times read): per
/// aborted writer, and per garbage `(key, element)`.
#[derive(Debug, Default)]
struct ElementTally {
    aborted_reads: FastHashMap<u32, (u32, usize)>,
    garbage_reads: FastHashMap<(u32, Element), (u32, usize)>,
}

/// The version order of one key: the writers along its longest read.
#[derive(Debug)]
pub(super) struct VersionOrder {
    /// The in-graph writers along the longest read, consecutive repeats removed.
    writers: Vec<u32>,
    /// `next_writer[n]`: the first in-graph writer of the longest read's elements `n..`.
    next_writer: Vec<Option<u32>>,
}

#[derive(Debug)]
pub(super) struct Analysis<'h> {
    history: &'h History<Transaction>,
    keys: Vec<Key>,
    key_index: FastHashMap<Key, u32>,
    writes: Vec<WriteRecord>,
    write_by_element: FastHashMap<(u32, Element), u32>,
    reads: Vec<ReadRecord>,
    reads_by_key: Vec<Vec<u32>>,
    /// Each operation's status, apart from the bulky operations for cache locality.
    statuses: Vec<Status>,
    /// Per key; filled by `observe_reads`. `None` for keys nobody read.
    key_summaries: Vec<Option<KeySummary>>,
    /// Whether each operation is a node of the dependency graph; set by `observe_reads`.
    in_graph: Vec<bool>,
}

impl<'h> Analysis<'h> {
    /// Indexes appends and completed reads; reports duplicate appends and internal anomalies.
    pub(super) fn new(history: &'h History<Transaction>, report: &mut Report<Transaction>) -> Self {
        let mut analysis = Analysis {
            history,
            keys: Vec::new(),
            key_index: FastHashMap::default(),
            writes: Vec::new(),
            write_by_element: FastHashMap::default(),
            reads: Vec::new(),
            reads_by_key: Vec::new(),
            statuses: history.operations().iter().map(Operation::status).collect(),
            key_summaries: Vec::new(),
            in_graph: vec![false; history.len()],
        };
        for (op, operation) in history.operations().iter().enumerate() {
            analysis.index_operation(op as u32, operation, report);
            if operation.status() == Status::Ok {
                analysis.check_internal(op as u32, operation.body(), report);
            }
        }
        analysis
    }

    fn intern(&mut self, key: Key) -> u32 {
        let next = self.keys.len() as u32;
        let index = *self.key_index.entry(key).or_insert(next);
        if index == next {
            self.keys.push(key);
            self.reads_by_key.push(Vec::new());
        }
        index
    }

    fn index_operation(
        &mut self,
        op: u32,
        operation: &Operation<Transaction>,
        report: &mut Report<Transaction>,
    ) {
        // This transaction's latest append per key, to mark earlier ones non-final.
        let mut latest_write_of_key: Vec<(u32, u32)> = Vec::new();
        for (micro_op_idx, micro_op) in operation.body().iter().enumerate() {
            match micro_op {
                MicroOp::Append(key, element) => {
                    let key = self.intern(*key);
                    let write = self.writes.len() as u32;
                    if let Some(&existing) = self.write_by_element.get(&(key, *element)) {
                        let existing_op = self.writes[existing as usize].op;
                        report.push(self.anomaly(
                            AnomalyKind::DuplicateAppend,
                            format!(
                                "element {element} is appended to key {} twice; appended \
                                 elements must be unique per key",
                                self.keys[key as usize]
                            ),
                            &[existing_op, op],
                        ));
                        continue;
                    }
                    self.write_by_element.insert((key, *element), write);
                    match latest_write_of_key
                        .iter_mut()
                        .find(|(write_key, _)| *write_key == key)
                    {
                        Some((_, latest)) => {
                            self.writes[*latest as usize].final_in_transaction = false;
                            *latest = write;
                        }
                        None => latest_write_of_key.push((key, write)),
                    }
                    self.writes.push(WriteRecord {
                        op,
                        key,
                        element: *element,
                        final_in_transaction: true,
                        observed: false,
                    });
                }
                MicroOp::Read(key, Some(_)) if operation.status() == Status::Ok => {
                    let key = self.intern(*key);
                    self.reads_by_key[key as usize].push(self.reads.len() as u32);
                    self.reads.push(ReadRecord {
                        op,
                        key,
                        micro_op: micro_op_idx as u32,
                    });
                }
                MicroOp::Read(..) => {}
            }
        }
    }

    /// A transaction's reads must agree with its own earlier reads and appends: a read after
    /// a read of the same key equals it plus the appends since; a read after appends only ends
    /// with those appends.
    fn check_internal(&self, op: u32, body: &Transaction, report: &mut Report<Transaction>) {
        /// One key as the transaction has seen it so far.
        struct KeyState<'b> {
            key: Key,
            latest_read: Option<&'b [Element]>,
            appends_since: Vec<Element>,
        }
        let mut states: Vec<KeyState<'_>> = Vec::new();
        for micro_op in body {
            let key = micro_op.key();
            let state_idx = match states.iter().position(|state| state.key == key) {
                Some(state_idx) => state_idx,
                None => {
                    states.push(KeyState {
                        key,
                        latest_read: None,
                        appends_since: Vec::new(),
                    });
                    states.len() - 1
                }
            };
            let KeyState {
                latest_read,
                appends_since,
                ..
            } = &mut states[state_idx];
            match micro_op {
                MicroOp::Append(_, element) => appends_since.push(*element),
                MicroOp::Read(_, Some(elements)) => {
                    let consistent = match latest_read {
                        Some(previous) => {
                            elements.len() == previous.len() + appends_since.len()
                                && elements.starts_with(previous)
                                && elements.ends_with(appends_since)
                        }
                        None => elements.ends_with(appends_since),
                    };
                    if !consistent {
                        let explanation = format!(
                            "the read of key {key} gives {elements:?}, which does not follow \
                             from the transaction's own earlier reads and appends"
                        );
                        report.push(self.anomaly(AnomalyKind::Internal, explanation, &[op]));
                        return;
                    }
                    *latest_read = Some(elements);
                    appends_since.clear();
                }
                MicroOp::Read(_, None) => {}
            }
        }
    }

    fn read_elements(&self, read: &ReadRecord) -> &'h [Element] {
        let history: &'h History<Transaction> = self.history;
        let body = history.operations()[read.op as usize].body();
        match &body[read.micro_op as usize] {
            MicroOp::Read(_, Some(elements)) => elements,
            // Only completed reads are indexed.
            MicroOp::Read(_, None) | MicroOp::Append(..) => &[],
        }
    }

    fn status(&self, op: u32) -> Status {
        self.statuses[op as usize]
    }

    pub(super) fn operation_id(&self, op: u32) -> OpId {
        self.history.operations()[op as usize].id()
    }

    pub(super) fn n_operations(&self) -> usize {
        self.history.len()
    }

    pub(super) fn anomaly(
        &self,
        kind: AnomalyKind,
        explanation: String,
        ops: &[u32],
    ) -> Anomaly<Transaction> {
        let operations = self.history.operations();
        Anomaly {
            kind,
            explanation,
            operations: ops
                .iter()
                .map(|&op| operations[op as usize].clone())
                .collect(),
            cycle: Vec::new(),
        }
    }

    /// Looks at every read, key by key: marks appends observed, and reports duplicate
    /// elements, garbage reads, aborted reads (G1a), intermediate reads (G1b) and incompatible
    /// orders. Then decides which operations are graph nodes.
    ///
    /// Reads that are prefixes of their key's longest read (all of them, in a valid history)
    /// hold only elements of that read, so each of its elements is looked up once for all of
    /// them; a prefix test is a memory comparison, far cheaper than hashing every element of
    /// every read when lists grow long.
    pub(super) fn observe_reads(&mut self, report: &mut Report<Transaction>) {
        let mut tally = ElementTally::default();
        let mut seen: FastHashSet<Element> = FastHashSet::default();
        for key in 0..self.keys.len() as u32 {
            let summary = self.observe_key(key, &mut tally, &mut seen, report);
            self.key_summaries.push(summary);
        }
        self.report_aborted_and_garbage(tally, report);
        for write in &self.writes {
            if write.observed && self.statuses[write.op as usize] == Status::Info {
                self.in_graph[write.op as usize] = true;
            }
        }
        for (op, status) in self.statuses.iter().enumerate() {
            if *status == Status::Ok {
                self.in_graph[op] = true;
            }
        }
    }

    fn observe_key(
        &mut self,
        key: u32,
        tally: &mut ElementTally,
        seen: &mut FastHashSet<Element>,
        report: &mut Report<Transaction>,
    ) -> Option<KeySummary> {
        let reads: Vec<ReadRecord> = self.reads_by_key[key as usize]
            .iter()
            .map(|&read| self.reads[read as usize])
            .collect();
        // The first of equally long reads, for determinism.
        let longest = *reads
            .iter()
            .max_by_key(|read| (self.read_elements(read).len(), std::cmp::Reverse(read.op)))?;
        let order = self.read_elements(&longest);
        let (prefix_reads, conflicting): (Vec<ReadRecord>, Vec<ReadRecord>) = reads
            .iter()
            .partition(|read| order.starts_with(self.read_elements(read)));
        let mut prefix_lengths: Vec<usize> = prefix_reads
            .iter()
            .map(|read| self.read_elements(read).len())
            .collect();
        prefix_lengths.sort_unstable();
        for (position, &element) in order.iter().enumerate() {
            let n_reads =
                prefix_lengths.len() - prefix_lengths.partition_point(|&length| length <= position);
            self.tally_element(key, element, longest.op, n_reads, tally);
        }
        for read in &conflicting {
            for &element in self.read_elements(read) {
                self.tally_element(key, element, read.op, 1, tally);
            }
        }
        let longest_duplicate = first_duplicate(order, seen);
        for read in &prefix_reads {
            if let Some((position, element)) = longest_duplicate
                && self.read_elements(read).len() > position
            {
                self.report_duplicate(read, element, report);
            }
        }
        for read in &conflicting {
            if let Some((_, element)) = first_duplicate(self.read_elements(read), seen) {
                self.report_duplicate(read, element, report);
            }
        }
        for read in &reads {
            self.check_intermediate_read(read, self.read_elements(read), report);
        }
        if !conflicting.is_empty() {
            let mut ops = vec![longest.op];
            ops.extend(
                conflicting
                    .iter()
                    .take(CONFLICTING_READS_SHOWN_MAX)
                    .map(|read| read.op),
            );
            let explanation = format!(
                "{} read(s) of key {} are not prefixes of the longest read, by {}, so the key \
                 has no single order of appends",
                conflicting.len(),
                self.keys[key as usize],
                self.operation_id(longest.op),
            );
            report.push(self.anomaly(AnomalyKind::IncompatibleOrder, explanation, &ops));
        }
        Some(KeySummary {
            longest,
            compatible: conflicting.is_empty(),
            longest_has_duplicates: longest_duplicate.is_some(),
        })
    }

    /// Notes that `n_reads` reads, the first by `reader`, contain `element` of `key`.
    fn tally_element(
        &mut self,
        key: u32,
        element: Element,
        reader: u32,
        n_reads: usize,
        tally: &mut ElementTally,
    ) {
        let Some(&write) = self.write_by_element.get(&(key, element)) else {
            tally
                .garbage_reads
                .entry((key, element))
                .or_insert((reader, 0))
                .1 += n_reads;
            return;
        };
        let write = &mut self.writes[write as usize];
        write.observed = true;
        if self.statuses[write.op as usize] == Status::Fail {
            tally.aborted_reads.entry(write.op).or_insert((reader, 0)).1 += n_reads;
        }
    }

    fn report_duplicate(
        &self,
        read: &ReadRecord,
        element: Element,
        report: &mut Report<Transaction>,
    ) {
        let key = self.keys[read.key as usize];
        let explanation = format!("read of key {key} contains element {element} twice");
        report.push(self.anomaly(AnomalyKind::DuplicateElements, explanation, &[read.op]));
    }

    fn check_intermediate_read(
        &self,
        read: &ReadRecord,
        elements: &[Element],
        report: &mut Report<Transaction>,
    ) {
        let Some(&last) = elements.last() else { return };
        let Some(&write) = self.write_by_element.get(&(read.key, last)) else {
            return;
        };
        let write = self.writes[write as usize];
        if write.op != read.op && !write.final_in_transaction {
            let explanation = format!(
                "read of key {} ends with element {last}, which {} appended but then followed \
                 with another append to the same key",
                self.keys[read.key as usize],
                self.operation_id(write.op),
            );
            report.push(self.anomaly(AnomalyKind::G1b, explanation, &[write.op, read.op]));
        }
    }

    fn report_aborted_and_garbage(&self, tally: ElementTally, report: &mut Report<Transaction>) {
        let mut aborted_reads: Vec<_> = tally.aborted_reads.into_iter().collect();
        aborted_reads.sort_unstable();
        for (writer, (first_reader, n_reads)) in aborted_reads {
            let explanation = format!(
                "reads observed appends of failed transaction {} {n_reads} time(s), among them {}",
                self.operation_id(writer),
                self.operation_id(first_reader),
            );
            report.push(self.anomaly(AnomalyKind::G1a, explanation, &[writer, first_reader]));
        }
        let mut garbage_reads: Vec<_> = tally.garbage_reads.into_iter().collect();
        garbage_reads.sort_unstable();
        for ((key, element), (first_reader, n_reads)) in garbage_reads {
            let explanation = format!(
                "reads of key {} contain element {element} ({n_reads} time(s)), which no \
                 transaction appended",
                self.keys[key as usize],
            );
            report.push(self.anomaly(AnomalyKind::GarbageRead, explanation, &[first_reader]));
        }
    }

    /// The version order of every key whose reads are all prefixes of its longest read, free
    /// of duplicates. Needs `observe_reads` first.
    pub(super) fn version_orders(&self) -> Vec<Option<VersionOrder>> {
        assert_eq!(
            self.key_summaries.len(),
            self.keys.len(),
            "observe_reads comes first"
        );
        (0..self.keys.len())
            .map(|key| self.version_order(key as u32))
            .collect()
    }

    fn version_order(&self, key: u32) -> Option<VersionOrder> {
        let summary = self.key_summaries[key as usize]?;
        if !summary.compatible || summary.longest_has_duplicates {
            return None; // Reported already; positions are ambiguous.
        }
        let order = self.read_elements(&summary.longest);
        let writer_at = |element: &Element| {
            let write = *self.write_by_element.get(&(key, *element))?;
            let op = self.writes[write as usize].op;
            self.in_graph[op as usize].then_some(op)
        };
        let writer_at_position: Vec<Option<u32>> = order.iter().map(writer_at).collect();
        let mut writers: Vec<u32> = writer_at_position.iter().flatten().copied().collect();
        writers.dedup();
        let mut next_writer = vec![None; order.len() + 1];
        for position in (0..order.len()).rev() {
            next_writer[position] = writer_at_position[position].or(next_writer[position + 1]);
        }
        Some(VersionOrder {
            writers,
            next_writer,
        })
    }

    /// Reports `ok` appends that no read observed although a read of the key began after the
    /// append's transaction completed.
    pub(super) fn report_lost_writes(&self, report: &mut Report<Transaction>) {
        let operations = self.history.operations();
        // Per key: the read invoked last, as (invoke time, reader).
        let mut latest_read: Vec<Option<(u64, u32)>> = vec![None; self.keys.len()];
        for read in &self.reads {
            let candidate = (operations[read.op as usize].invoke_time(), read.op);
            let latest = &mut latest_read[read.key as usize];
            *latest = (*latest).max(Some(candidate));
        }
        for write in &self.writes {
            if write.observed || self.status(write.op) != Status::Ok {
                continue;
            }
            let Some((read_time, reader)) = latest_read[write.key as usize] else {
                continue;
            };
            let Some(complete_time) = operations[write.op as usize].complete_time() else {
                continue;
            };
            if complete_time < read_time {
                let explanation = format!(
                    "element {} appended to key {} by {} (completed at {complete_time}) is in no \
                     read, though {} read the key starting at {read_time}",
                    write.element,
                    self.keys[write.key as usize],
                    operations[write.op as usize].id(),
                    operations[reader as usize].id(),
                );
                report.push(self.anomaly(AnomalyKind::LostWrite, explanation, &[write.op, reader]));
            }
        }
    }

    /// Builds the dependency graph: operations are nodes `0..n_operations`, then one helper
    /// node per key. Real-time edges are added when `realtime` is set.
    pub(super) fn dependency_graph(
        &self,
        orders: &[Option<VersionOrder>],
        realtime: bool,
    ) -> Graph {
        let n_operations = self.n_operations();
        let mut builder = GraphBuilder::new(n_operations + self.keys.len());
        for read in self
            .reads_by_key
            .iter()
            .flatten()
            .map(|&read| &self.reads[read as usize])
        {
            let Some(&last) = self.read_elements(read).last() else {
                continue;
            };
            let Some(&write) = self.write_by_element.get(&(read.key, last)) else {
                continue;
            };
            let writer = self.writes[write as usize].op;
            if writer != read.op && self.in_graph[writer as usize] {
                let key = self.keys[read.key as usize];
                builder.add(writer, read.op, GraphEdgeKind::WriteRead, key);
            }
        }
        let unobserved_writers = self.unobserved_committed_writers();
        for (key, order) in orders.iter().enumerate() {
            if let Some(order) = order {
                self.add_order_edges(key as u32, order, &unobserved_writers[key], &mut builder);
            }
        }
        if realtime {
            add_realtime_edges(self.history.operations(), &self.in_graph, &mut builder);
        }
        builder.build()
    }

    /// Per key, the sorted in-graph operations with an append to it that no read observed.
    fn unobserved_committed_writers(&self) -> Vec<Vec<u32>> {
        let mut writers = vec![Vec::new(); self.keys.len()];
        for write in &self.writes {
            if !write.observed && self.in_graph[write.op as usize] {
                writers[write.key as usize].push(write.op);
            }
        }
        for key_writers in &mut writers {
            key_writers.sort_unstable();
            key_writers.dedup();
        }
        writers
    }

    fn add_order_edges(
        &self,
        key_idx: u32,
        order: &VersionOrder,
        unobserved_writers: &[u32],
        builder: &mut GraphBuilder,
    ) {
        let key = self.keys[key_idx as usize];
        let helper = (self.n_operations() + key_idx as usize) as u32;
        for pair in order.writers.windows(2) {
            builder.add(pair[0], pair[1], GraphEdgeKind::WriteWrite, key);
        }
        let is_unobserved_writer = |op: u32| unobserved_writers.binary_search(&op).is_ok();
        let direct_edges = |source: u32, kind, builder: &mut GraphBuilder| {
            let targets = unobserved_writers
                .iter()
                .filter(|&&target| target != source);
            for &target in targets.take(DIRECT_ANTI_DEPENDENCIES_MAX) {
                builder.add(source, target, kind, key);
            }
        };
        if !unobserved_writers.is_empty() {
            for &writer in unobserved_writers {
                builder.add(helper, writer, GraphEdgeKind::Continuation, key);
            }
            if let Some(&last) = order.writers.last() {
                if is_unobserved_writer(last) {
                    direct_edges(last, GraphEdgeKind::WriteWrite, builder);
                } else {
                    builder.add(last, helper, GraphEdgeKind::WriteWrite, key);
                }
            }
        }
        for &read in &self.reads_by_key[key_idx as usize] {
            let read = self.reads[read as usize];
            let length = self.read_elements(&read).len();
            match order.next_writer[length] {
                Some(writer) if writer != read.op => {
                    builder.add(read.op, writer, GraphEdgeKind::ReadWrite, key);
                }
                Some(_) => {} // The reader's own append comes next; its ww edges go on.
                None if unobserved_writers.is_empty() => {}
                None if is_unobserved_writer(read.op) => {
                    direct_edges(read.op, GraphEdgeKind::ReadWrite, builder);
                }
                None => builder.add(read.op, helper, GraphEdgeKind::ReadWrite, key),
            }
        }
    }
}

/// The first repeat in `elements`, as (position, element); `seen` is scratch space.
fn first_duplicate(
    elements: &[Element],
    seen: &mut FastHashSet<Element>,
) -> Option<(usize, Element)> {
    /// Up to this length, comparing all pairs beats hashing.
    const PAIRWISE_LENGTH_MAX: usize = 16;
    let mut positions = elements.iter().copied().enumerate();
    if elements.len() <= PAIRWISE_LENGTH_MAX {
        return positions.find(|&(position, element)| elements[..position].contains(&element));
    }
    seen.clear();
    positions.find(|&(_, element)| !seen.insert(element))
}
