//! Hand-scripted protocol scenarios: real [`Node`]s over in-memory engines, with a test that
//! decides which message is delivered and which is lost, for interleavings the swarm finds
//! only rarely. Each test names the swarm seed that first showed the interleaving.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use concord_storage::engine::{EngineOptions, WriteBatch};
use concord_storage::memory::MemoryEngine;

use crate::command::Status;
use crate::error::{Error, Result};
use crate::messages::Message;
use crate::node::{ClientRequestId, Effects, Input, Node, NodeConfig, Outcome, Timer};
use crate::storage::{DataStore, EngineJournal, KvDataStore};
use crate::timestamp::{LocalTime, NodeId, Timestamp, TxnId, TxnKind};
use crate::topology::{FastPathMode, Topology};
use crate::txn::{Key, ReadData, Txn, Update, Writes};

/// A cluster whose network the test drives by hand.
struct Net {
    topology: Arc<Topology>,
    config: NodeConfig,
    nodes: BTreeMap<NodeId, Node>,
    engines: BTreeMap<NodeId, Arc<MemoryEngine>>,
    /// Nodes execute `Update::Opaque` bodies as compare-and-set (`CasStore`).
    cas: bool,
    /// Sent but not yet delivered or dropped.
    in_flight: VecDeque<(NodeId, NodeId, Message)>,
    timers: BTreeMap<NodeId, Vec<(LocalTime, Timer)>>,
    replies: Vec<(NodeId, ClientRequestId, Outcome)>,
    now: u64,
}

impl Net {
    /// Without durability rounds (their messages would interleave with the script, and the
    /// assertions read commands that garbage collection would erase at the end).
    fn new(nodes: u32, mode: FastPathMode) -> Net {
        let config = NodeConfig {
            gc_enabled: false,
            ..NodeConfig::default()
        };
        Net::with_config(nodes, mode, config)
    }

    fn with_config(nodes: u32, mode: FastPathMode, config: NodeConfig) -> Net {
        let topology = Arc::new(Topology::ring(nodes, 1, nodes as usize, mode));
        let mut net = Net {
            topology,
            config,
            nodes: BTreeMap::new(),
            engines: BTreeMap::new(),
            cas: false,
            in_flight: VecDeque::new(),
            timers: BTreeMap::new(),
            replies: Vec::new(),
            now: 1_000,
        };
        for id in 1..=nodes {
            let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
            net.engines.insert(NodeId(id), engine);
            net.open(NodeId(id));
        }
        net
    }

    /// With durability rounds every 50 ms (margin 10 ms).
    fn with_rounds(nodes: u32, mode: FastPathMode) -> Net {
        let config = NodeConfig {
            sync_interval_micros: 50_000,
            sync_margin_micros: 10_000,
            ..NodeConfig::default()
        };
        Net::with_config(nodes, mode, config)
    }

    /// A client of `node` asks (as `request`) to append `value` to the list at `key`.
    fn append(&mut self, node: NodeId, request: u64, key: Key, value: u64) {
        let txn = Txn::new(vec![key.clone()], Update::Append(vec![(key, value)]));
        self.input(
            node,
            Input::Client {
                request_id: ClientRequestId(request),
                txn,
            },
        );
    }

    /// Opens (or reopens, after a restart) `id` over its engine.
    fn open(&mut self, id: NodeId) {
        let engine = self.engines[&id].clone();
        let data: Box<dyn DataStore> = if self.cas {
            Box::new(CasStore(KvDataStore::new(engine.clone())))
        } else {
            Box::new(KvDataStore::new(engine.clone()))
        };
        let (node, effects) = Node::open(
            id,
            self.topology.clone(),
            self.config.clone(),
            Box::new(EngineJournal::new(engine)),
            data,
            LocalTime(self.now),
        )
        .expect("open");
        self.nodes.insert(id, node);
        self.timers.remove(&id);
        self.absorb(id, effects);
    }

    fn absorb(&mut self, from: NodeId, effects: Effects) {
        for (to, message) in effects.messages {
            self.in_flight.push_back((from, to, message));
        }
        self.timers.entry(from).or_default().extend(effects.timers);
        for (request, outcome) in effects.replies {
            self.replies.push((from, request, outcome));
        }
    }

    fn input(&mut self, node: NodeId, input: Input) {
        self.now += 100;
        let now = LocalTime(self.now);
        let effects = self.nodes.get_mut(&node).expect("node").handle(now, input);
        self.absorb(node, effects.expect("in-memory engine"));
    }

    /// Delivers the in-flight messages `keep` accepts, drops the others, until none remain.
    fn deliver(&mut self, keep: impl Fn(NodeId, NodeId, &Message) -> bool) {
        while let Some((from, to, message)) = self.in_flight.pop_front() {
            if keep(from, to, &message) {
                self.input(to, Input::Message { from, message });
            }
        }
    }

    /// Moves the clock by `micros` and fires every timer due on `node`.
    fn fire_timers(&mut self, node: NodeId, micros: u64) {
        self.now += micros;
        let due: Vec<Timer> = {
            let timers = self.timers.entry(node).or_default();
            let now = self.now;
            let mut due: Vec<(LocalTime, Timer)> = timers
                .iter()
                .filter(|(at, _)| at.0 <= now)
                .copied()
                .collect();
            due.sort();
            timers.retain(|(at, _)| at.0 > now);
            due.into_iter().map(|(_, timer)| timer).collect()
        };
        for timer in due {
            self.input(node, Input::Timer(timer));
        }
    }

    /// Heals the network: delivers everything and fires every node's timers until the
    /// cluster is quiet or `rounds` rounds passed.
    fn heal(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.deliver(|_, _, _| true);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.fire_timers(id, 20_000);
            }
            let busy = self
                .nodes
                .values()
                .any(|node| node.unfinished_count() > 0 || !node.coordinations.is_empty());
            if !busy && self.in_flight.is_empty() {
                return;
            }
        }
    }

    fn txn_id_of(&self, node: NodeId, request: ClientRequestId) -> TxnId {
        let node = &self.nodes[&node];
        let coordination = node
            .coordinations
            .values()
            .find(|c| c.client == Some(request));
        coordination.expect("coordinating").txn_id
    }
}

/// Regression (swarm seed 1500, 200 txns, RF 3 with coordinator votes): recovery proposed t0
/// for a transaction τ that a later transaction γ had fast-committed past without τ in its
/// deps, so γ read a list without τ's append although τ executes first.
///
/// τ's coordinator n1 is cut off after pre-accepting τ locally. γ (n3) fast-commits with the
/// votes of n3 and n2 (fastQ = 2), neither of which knew τ. n1 then recovers τ from n1 and
/// n2: one non-vote is below fastReject (2), and γ is only PreAccepted at n2, so no
/// superseding reject either. The recovery must wait for γ to be decided instead of
/// proposing t0; once γ is Stable at n2 without τ, τ is invalidated or placed after γ.
#[test]
fn recovery_waits_for_later_fast_votes_that_missed_t0() {
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let mut net = Net::new(3, FastPathMode::CoordinatorVotes);
    let key = Key::numbered(3);
    // τ: n1 appends 54; its PreAccepts to n2 and n3 are lost.
    let tau = Txn::new(Vec::new(), Update::Append(vec![(key.clone(), 54)]));
    net.input(
        n1,
        Input::Client {
            request_id: ClientRequestId(1),
            txn: tau,
        },
    );
    let tau_id = net.txn_id_of(n1, ClientRequestId(1));
    net.deliver(|_, _, _| false);
    // γ: n3 reads the list and appends 55; only n2 hears from it, and only n3 learns the
    // decision (its Commits and Applies are lost).
    net.now += 1_000;
    let gamma = Txn::new(vec![key.clone()], Update::Append(vec![(key.clone(), 55)]));
    net.input(
        n3,
        Input::Client {
            request_id: ClientRequestId(2),
            txn: gamma,
        },
    );
    let gamma_id = net.txn_id_of(n3, ClientRequestId(2));
    net.deliver(|from, to, message| {
        matches!(
            message,
            Message::PreAccept { .. } | Message::PreAcceptOk { .. }
        ) && (from, to) != (n3, n1)
    });
    let gamma_read = net.replies.iter().find_map(|(_, request, outcome)| {
        (*request == ClientRequestId(2)).then_some(outcome.clone())
    });
    let Some(Outcome::Committed {
        execute_at: gamma_at,
        fast_path: true,
        ..
    }) = gamma_read
    else {
        panic!("γ must fast-commit at n3: {gamma_read:?}");
    };
    assert!(
        !net.nodes[&n3].commands[&gamma_id].deps.contains(tau_id),
        "the scenario needs γ committed without τ"
    );
    // From now on n3 is cut off, and n1's resent PreAccepts are lost (delivered, they would
    // push τ past γ on the slow path). Only n1's timers run: its coordination of τ gives up,
    // then its progress log recovers τ with BeginRecovery, answered by n1 and n2.
    let cut = move |from: NodeId, to: NodeId, message: &Message| {
        from != n3
            && to != n3
            && !matches!(
                message,
                Message::PreAccept { .. } | Message::PreAcceptOk { .. }
            )
    };
    let mut recoveries = 0;
    for _ in 0..40 {
        net.fire_timers(n1, 50_000);
        recoveries += net
            .in_flight
            .iter()
            .filter(|(_, _, message)| matches!(message, Message::BeginRecovery { .. }))
            .count();
        net.deliver(cut);
    }
    assert!(recoveries > 0, "n1's progress log never recovered τ");
    // Without the wait, recovery proposes t0 to n1 and n2 (a quorum) and commits it.
    for node in [n1, n2] {
        let command = &net.nodes[&node].commands[&tau_id];
        let at_t0 = command.execute_at == tau_id.timestamp()
            && (command.status == Status::Accepted || command.status.is_decided());
        assert!(
            !at_t0,
            "recovery proposed t0 for τ past γ: {:?} on {node}",
            command.status
        );
    }
    // Heal: everything must finish, and τ must not execute before γ unless γ waited for it.
    net.heal(400);
    for (id, node) in &net.nodes {
        let gamma = &node.commands[&gamma_id];
        assert_eq!(gamma.status, Status::Applied, "γ on {id}");
        assert_eq!(gamma.execute_at, gamma_at, "γ on {id}");
        let tau = &node.commands[&tau_id];
        assert!(tau.status.is_final(), "τ on {id}: {:?}", tau.status);
        if tau.status == Status::Applied {
            assert!(
                tau.execute_at > gamma_at || gamma.deps.contains(tau_id),
                "τ applied at {} before γ ({gamma_at}) on {id}, which never waited for it",
                tau.execute_at
            );
        }
    }
}

/// Durability rounds on a calm 3-node cluster: the driver (n1) fences, checks and publishes
/// DurableBefore; every command is then erased from memory and the journal on every node. The
/// watermarks survive a restart, a PreAccept of an unknown transaction below them is rejected,
/// and a peer asking about a collected transaction learns it is applied everywhere.
#[test]
fn durability_round_fences_collects_and_survives_restart() {
    let mut net = Net::with_rounds(3, FastPathMode::Standard);
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let mut ids = Vec::new();
    let mut txns = Vec::new();
    for request in 0..12u64 {
        let node = NodeId(1 + (request % 3) as u32);
        let key = Key::numbered(request % 4);
        let txn = Txn::new(vec![key.clone()], Update::Append(vec![(key, request)]));
        txns.push(txn.clone());
        net.input(
            node,
            Input::Client {
                request_id: ClientRequestId(request),
                txn,
            },
        );
        ids.push(net.txn_id_of(node, ClientRequestId(request)));
        net.deliver(|_, _, _| true);
    }
    let committed = net
        .replies
        .iter()
        .filter(|(_, _, outcome)| matches!(outcome, Outcome::Committed { .. }))
        .count();
    assert_eq!(committed, 12);
    // Run about 1.8 s of timers (rounds every 50 ms), delivering everything.
    for _ in 0..30 {
        net.deliver(|_, _, _| true);
        for node in [n1, n2, n3] {
            net.fire_timers(node, 20_000);
        }
    }
    net.deliver(|_, _, _| true);
    let last = ids.iter().max().copied().expect("ids");
    for (id, node) in &net.nodes {
        let durable = node
            .durable_before()
            .get(&crate::topology::ShardId(0))
            .copied();
        let durable = durable.unwrap_or_else(|| {
            panic!(
                "{id}: no DurableBefore; rounds {:?}",
                net.nodes[&n1].sync_rounds
            )
        });
        assert!(durable > last.timestamp(), "{id}: DurableBefore {durable}");
        assert_eq!(node.command_count(), 0, "{id} kept commands");
        assert_eq!(node.journal_record_count().expect("count"), 0, "{id}");
        assert_eq!(node.tombstone_count(), 0, "{id}");
    }
    // Restart n2 from its journal: the watermarks come back, nothing else.
    let before = net.nodes[&n2].durable_before();
    net.open(n2);
    assert_eq!(net.nodes[&n2].durable_before(), before);
    assert_eq!(net.nodes[&n2].command_count(), 0);
    // A PreAccept of an unknown transaction with an old t0 is fenced off.
    let old = TxnId::new(
        crate::timestamp::Timestamp::new(crate::timestamp::Epoch(1), 5, 0, n3),
        crate::timestamp::TxnKind::Write,
        crate::timestamp::Domain::Key,
    );
    let txn = Txn::new(Vec::new(), Update::Append(vec![(Key::numbered(0), 99)]));
    net.input(
        n2,
        Input::Message {
            from: n3,
            message: Message::PreAccept { txn_id: old, txn },
        },
    );
    // A peer blocked on a collected transaction learns that it is applied everywhere.
    net.input(
        n2,
        Input::Message {
            from: n1,
            message: Message::CheckStatus { txn_id: ids[0] },
        },
    );
    let rejected = net.in_flight.iter().any(|(from, to, message)| {
        (*from, *to) == (n2, n3)
            && matches!(message, Message::PreAcceptRejected { txn_id } if *txn_id == old)
    });
    assert!(rejected, "{:?}", net.in_flight);
    let answered = net.in_flight.iter().any(|(from, to, message)| {
        (*from, *to) == (n2, n1)
            && matches!(message, Message::CheckStatusOk { knowledge: Some(k), .. }
                if k.status == Status::Applied)
    });
    assert!(answered, "{:?}", net.in_flight);
    assert_eq!(net.nodes[&n2].command_count(), 0, "nothing was recreated");
    // A late answer to an old CheckStatus about a collected transaction must not bring it
    // back: re-applying its writes would overwrite newer ones (swarm seed 5010, 2,000 txns).
    let stale: crate::txn::Writes = [(Key::numbered(0), Some(vec![0; 8]))].into_iter().collect();
    net.input(
        n2,
        Input::Message {
            from: n1,
            message: Message::CheckStatusOk {
                epoch: crate::timestamp::Epoch(1),
                txn_id: ids[0],
                knowledge: Some(Box::new(crate::messages::Knowledge {
                    status: Status::Applied,
                    txn: Some(txns[0].clone()),
                    execute_at: ids[0].timestamp(),
                    deps: crate::txn::Deps::new(),
                    writes: Some(stale),
                })),
                durable_before: Vec::new(),
            },
        },
    );
    assert_eq!(
        net.nodes[&n2].command_count(),
        0,
        "a collected txn came back"
    );
    let data = net.nodes[&n2]
        .data
        .read(&txns[0], &[Key::numbered(0)], Timestamp::ZERO)
        .expect("read");
    let list = data[&Key::numbered(0)]
        .clone()
        .expect("key 0 was appended to");
    assert_eq!(list.len(), 3 * 8, "key 0 holds its three appends");
}

/// A data store that executes `Update::Opaque` bodies the way the server will execute CQL
/// transactions: the body is the store's own language (here `expected ‖ 0xff ‖ new`, a
/// compare-and-set of every written key), read and computed only by the store.
#[derive(Debug)]
struct CasStore(KvDataStore<MemoryEngine>);

impl CasStore {
    fn body(expected: Option<&[u8]>, new: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(expected) = expected {
            body.push(1);
            body.push(expected.len() as u8);
            body.extend_from_slice(expected);
        } else {
            body.push(0);
        }
        body.extend_from_slice(new);
        body
    }

    fn parse(body: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
        match body.split_first()? {
            (0, new) => Some((None, new)),
            (1, rest) => {
                let (len, rest) = rest.split_first()?;
                let (expected, new) = rest.split_at_checked(usize::from(*len))?;
                Some((Some(expected), new))
            }
            _ => None,
        }
    }
}

impl DataStore for CasStore {
    fn read(&self, txn: &Txn, keys: &[Key], execute_at: Timestamp) -> Result<ReadData> {
        self.0.read(txn, keys, execute_at)
    }

    fn compute(&self, txn: &Txn, reads: &ReadData) -> Result<Writes> {
        let Update::Opaque { writes, body } = txn.update() else {
            return self.0.compute(txn, reads);
        };
        let (expected, new) =
            CasStore::parse(body).ok_or_else(|| Error::Execution("bad CAS body".into()))?;
        let mut out = Writes::new();
        for key in writes {
            if reads.get(key).cloned().flatten().as_deref() == expected {
                out.insert(key.clone(), Some(new.to_vec()));
            }
        }
        Ok(out)
    }

    fn write(&self, writes: &Writes, execute_at: Timestamp, batch: &mut WriteBatch) {
        self.0.write(writes, execute_at, batch);
    }
}

/// Opaque bodies (the server's transactions) go through the whole protocol: the coordinator
/// computes the writes with its data store from the reads at executeAt, every replica applies
/// them, the client gets the values read, a read-only body is a read, and a restarted node
/// replays the body from its journal.
#[test]
fn opaque_bodies_are_read_and_computed_by_the_data_store() {
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let mut net = Net::new(3, FastPathMode::CoordinatorVotes);
    net.cas = true;
    for id in [n1, n2, n3] {
        net.open(id);
    }
    let key = Key::numbered(7);
    let cas = |expected: Option<&[u8]>, new: &[u8]| {
        Txn::new(
            vec![key.clone()],
            Update::Opaque {
                writes: vec![key.clone()],
                body: CasStore::body(expected, new),
            },
        )
    };
    let value_everywhere = |net: &Net| -> Vec<Option<Vec<u8>>> {
        net.engines
            .values()
            .map(|engine| {
                KvDataStore::new(engine.clone())
                    .values(std::slice::from_ref(&key))
                    .expect("read")[&key]
                    .clone()
            })
            .collect()
    };
    let submit = |net: &mut Net, node: NodeId, request: u64, txn: Txn| -> Outcome {
        net.input(
            node,
            Input::Client {
                request_id: ClientRequestId(request),
                txn,
            },
        );
        net.heal(50);
        net.replies
            .iter()
            .find(|(_, id, _)| *id == ClientRequestId(request))
            .map(|(_, _, outcome)| outcome.clone())
            .expect("the client got an answer")
    };
    let read_of = |outcome: &Outcome| match outcome {
        Outcome::Committed { reads, .. } => reads[&key].clone(),
        other => panic!("not committed: {other:?}"),
    };

    // Absent → "a": applied on every replica; the client read the value before.
    let first = submit(&mut net, n1, 1, cas(None, b"a"));
    assert_eq!(read_of(&first), None);
    assert_eq!(value_everywhere(&net), vec![Some(b"a".to_vec()); 3]);

    // Absent → "b" again: the condition fails at executeAt, nothing is written.
    let second = submit(&mut net, n2, 2, cas(None, b"b"));
    assert_eq!(read_of(&second), Some(b"a".to_vec()));
    assert_eq!(value_everywhere(&net), vec![Some(b"a".to_vec()); 3]);

    // A read-only body is a read (it does not conflict with reads).
    let read_only = Txn::new(
        vec![key.clone()],
        Update::Opaque {
            writes: Vec::new(),
            body: CasStore::body(None, b""),
        },
    );
    assert_eq!(read_only.kind(), TxnKind::Read);
    assert_eq!(
        read_of(&submit(&mut net, n3, 3, read_only)),
        Some(b"a".to_vec())
    );

    // n3 restarts from its journal (the opaque body decodes), then "a" → "c" through n3.
    net.open(n3);
    let third = submit(&mut net, n3, 4, cas(Some(b"a"), b"c"));
    assert_eq!(read_of(&third), Some(b"a".to_vec()));
    assert_eq!(value_everywhere(&net), vec![Some(b"c".to_vec()); 3]);
}

/// A store that cannot execute an opaque body says so instead of writing nothing.
#[test]
fn a_store_without_an_executor_refuses_opaque_bodies() {
    let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
    let store = KvDataStore::new(engine);
    let txn = Txn::new(
        vec![Key::numbered(1)],
        Update::Opaque {
            writes: vec![Key::numbered(1)],
            body: vec![0],
        },
    );
    assert!(matches!(
        store.compute(&txn, &ReadData::new()),
        Err(Error::Execution(_))
    ));
}

/// Two nodes coordinate conflicting writes in the same microsecond. Without node bits in the
/// HLC both take the fast path at the same HLC value (their timestamps differ only in the node
/// id), so a store that uses executeAt's HLC as the cell's write time would see a tie; with
/// `hlc_node_bits` the two HLC values differ and follow executeAt's order.
#[test]
fn conflicting_writes_in_one_microsecond_tie_on_hlc_only_without_node_bits() {
    for bits in [0, 6] {
        let config = NodeConfig {
            gc_enabled: false,
            hlc_node_bits: bits,
            ..NodeConfig::default()
        };
        let mut net = Net::with_config(3, FastPathMode::CoordinatorVotes, config);
        let key = Key::numbered(1);
        let same_time = LocalTime(net.now + 10_000);
        for (node, value) in [(NodeId(1), 1), (NodeId(2), 2)] {
            let txn = Txn::new(
                vec![key.clone()],
                Update::Append(vec![(key.clone(), value)]),
            );
            let effects = net
                .nodes
                .get_mut(&node)
                .expect("node")
                .handle(
                    same_time,
                    Input::Client {
                        request_id: ClientRequestId(value),
                        txn,
                    },
                )
                .expect("in-memory engine");
            net.absorb(node, effects);
        }
        net.heal(50);
        let execute_at = |request: u64| -> Timestamp {
            match net
                .replies
                .iter()
                .find(|(_, id, _)| *id == ClientRequestId(request))
                .map(|(_, _, outcome)| outcome)
            {
                Some(Outcome::Committed { execute_at, .. }) => *execute_at,
                other => panic!("request {request}: {other:?}"),
            }
        };
        let (a, b) = (execute_at(1), execute_at(2));
        assert_ne!(a, b);
        if bits == 0 {
            assert_eq!(a.hlc, b.hlc, "the tie this test is about: {a} {b}");
        } else {
            assert_ne!(a.hlc, b.hlc, "{a} {b}");
            assert_eq!(a < b, a.hlc < b.hlc, "{a} {b}");
            let mask = (1u64 << bits) - 1;
            assert_eq!(a.hlc & mask, u64::from(a.node.0), "{a}");
            assert_eq!(b.hlc & mask, u64::from(b.node.0), "{b}");
        }
    }
}

/// In a cluster the apply floor must bound the writes a replica has yet to apply, including
/// one it never heard of: n1 and n2 commit a write W on the fast path while every message to
/// n3 is lost, then n3 coordinates a write of its own on another key. Without
/// `apply_floor_durable` n3's floor (its clock's next value) passes W, which n3 has not
/// applied; with it the floor stays at or below DurableBefore, which only passes W once the
/// durability rounds made W applied on every replica.
#[test]
fn the_apply_floor_bounds_writes_a_replica_never_voted_on_only_with_durable_floors() {
    for durable in [false, true] {
        let config = NodeConfig {
            sync_interval_micros: 50_000,
            sync_margin_micros: 10_000,
            apply_floor_durable: durable,
            ..NodeConfig::default()
        };
        let mut net = Net::with_config(3, FastPathMode::CoordinatorVotes, config);
        let (n1, n3) = (NodeId(1), NodeId(3));
        let key = Key::numbered(1);
        let w = Txn::new(vec![key.clone()], Update::Append(vec![(key.clone(), 1)]));
        net.input(
            n1,
            Input::Client {
                request_id: ClientRequestId(1),
                txn: w,
            },
        );
        net.deliver(|_, to, _| to != n3);
        let w_at = match net
            .replies
            .iter()
            .find(|(_, id, _)| *id == ClientRequestId(1))
        {
            Some((_, _, Outcome::Committed { execute_at, .. })) => *execute_at,
            other => panic!("W: {other:?}"),
        };
        net.now += 10_000;
        let other = Key::numbered(2);
        let mine = Txn::new(vec![other.clone()], Update::Append(vec![(other, 2)]));
        net.input(
            n3,
            Input::Client {
                request_id: ClientRequestId(2),
                txn: mine,
            },
        );
        net.deliver(|from, to, _| from == n3 || to == n3);
        let floor = net.nodes[&n3].apply_floor();
        if durable {
            assert!(floor <= w_at, "n3's floor {floor} passed W at {w_at}");
        } else {
            assert!(
                floor > w_at,
                "the gap this test is about: {floor} vs {w_at}"
            );
        }
        // Rounds make W applied everywhere; the floor then passes it.
        net.heal(60);
        let floor = net.nodes[&n3].apply_floor();
        assert!(
            floor > w_at,
            "n3's floor {floor} after the rounds, W at {w_at}"
        );
        let values = KvDataStore::new(net.engines[&n3].clone())
            .values(std::slice::from_ref(&key))
            .expect("read");
        assert!(values[&key].is_some(), "n3 applied W");
    }
}

/// The applied level (design/accord.md, "Two levels"): τ is pre-accepted by its coordinator
/// n3 alone (its own fast-path vote) and n3 is cut off. n1 and n2 run durability rounds
/// between them and raise their applied-before floors past τ's t0. Then n3 recovers τ reaching
/// n1 only: the recovery quorum {n3, n1} holds one non-vote, below fastReject (2), so n1's
/// answer decides. n1 answered a check pass clean above t0 without knowing τ, so it answers
/// that τ cannot have taken the fast path, and recovery invalidates τ. With
/// `ProtocolBug::RecoveryIgnoresCleanPromise` recovery proposes t0 and τ commits below the
/// floors n1 and n2 raised (the gap the answer closes).
#[test]
fn recovery_of_a_txn_only_a_cut_off_replica_knew_stays_above_the_applied_floor() {
    use crate::node::ProtocolBug;
    use crate::topology::ShardId;
    for bug in [None, Some(ProtocolBug::RecoveryIgnoresCleanPromise)] {
        let config = NodeConfig {
            sync_interval_micros: 50_000,
            sync_margin_micros: 10_000,
            apply_floor_durable: true,
            bug,
            ..NodeConfig::default()
        };
        let mut net = Net::with_config(3, FastPathMode::CoordinatorVotes, config);
        let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
        let key = Key::numbered(1);
        net.input(
            n3,
            Input::Client {
                request_id: ClientRequestId(1),
                txn: Txn::new(vec![key.clone()], Update::Append(vec![(key.clone(), 1)])),
            },
        );
        let tau = net.txn_id_of(n3, ClientRequestId(1));
        net.in_flight.clear();
        // n1 and n2 alone: their rounds reach the applied level without n3.
        for _ in 0..40 {
            net.deliver(|from, to, _| from != n3 && to != n3);
            net.fire_timers(n1, 20_000);
            net.fire_timers(n2, 20_000);
        }
        net.in_flight.clear();
        let floors: Vec<Timestamp> = [n1, n2]
            .iter()
            .map(|node| net.nodes[node].applied_before()[&ShardId(0)])
            .collect();
        for floor in &floors {
            assert!(
                *floor > tau.timestamp(),
                "floor {floor} vs t0 {}",
                tau.timestamp()
            );
        }
        assert!(
            net.nodes[&n1].durable_before().is_empty(),
            "no DurableBefore without n3"
        );
        // n3 comes back reaching n1 only, and recovers τ.
        for _ in 0..40 {
            net.deliver(|from, to, _| (from == n3 && to == n1) || (from == n1 && to == n3));
            net.fire_timers(n3, 20_000);
            net.fire_timers(n1, 20_000);
        }
        let status = net.nodes[&n3]
            .commands
            .get(&tau)
            .map(|command| command.status);
        let applied: Vec<(NodeId, Timestamp)> = [n1, n3]
            .iter()
            .flat_map(|node| {
                net.nodes
                    .get_mut(node)
                    .expect("node")
                    .take_applied()
                    .into_iter()
                    .filter(|record| record.txn_id == tau)
                    .map(move |record| (*node, record.execute_at))
            })
            .collect();
        match bug {
            None => {
                assert_eq!(status, Some(Status::Invalidated), "τ at n3");
                assert!(applied.is_empty(), "τ applied: {applied:?}");
            }
            Some(_) => {
                assert!(
                    applied
                        .iter()
                        .any(|(_, at)| *at == tau.timestamp() && *at < floors[0]),
                    "the gap: τ {status:?}, applied {applied:?}, floors {floors:?}"
                );
            }
        }
    }
}

/// Jepsen (skew nemesis): a durability round driven by a node whose clock ran 79 s ahead
/// fenced off every TxnId the other nodes' clocks gave, so their transactions were all
/// rejected (client: unknown outcome) until their clocks passed the bound. A node witnesses
/// the fences and DurableBefore it learns, so its own transactions start above them.
#[test]
fn a_node_whose_clock_is_behind_a_fence_still_coordinates() {
    let mut net = Net::new(3, FastPathMode::CoordinatorVotes);
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    // n1's round, on a clock a minute ahead of the others'.
    let bound = Timestamp::new(
        crate::timestamp::Epoch(1),
        net.now + 60_000_000,
        0,
        NodeId(0),
    );
    for node in [n1, n2, n3] {
        net.input(
            node,
            Input::Message {
                from: n1,
                message: Message::SyncFence {
                    epoch: crate::timestamp::Epoch(1),
                    shard: crate::topology::ShardId(0),
                    bound,
                },
            },
        );
    }
    net.in_flight.clear();
    let key = Key::numbered(1);
    net.input(
        n3,
        Input::Client {
            request_id: ClientRequestId(1),
            txn: Txn::new(vec![key.clone()], Update::Append(vec![(key, 7)])),
        },
    );
    assert!(
        net.txn_id_of(n3, ClientRequestId(1)).timestamp() > bound,
        "n3's TxnId is below the fence it knows"
    );
    net.heal(20);
    let outcomes: Vec<&Outcome> = net
        .replies
        .iter()
        .filter(|(node, request, _)| (*node, *request) == (n3, ClientRequestId(1)))
        .map(|(_, _, outcome)| outcome)
        .collect();
    assert!(
        matches!(outcomes.as_slice(), [Outcome::Committed { .. }]),
        "{outcomes:?}"
    );
}

/// A step's journal records are durable before its messages leave the node (one flush per
/// step, `Journal::flush`): n2 answers n1's PreAccept, "crashes" right after that step
/// (every unsynced engine write lost) and finds the command it voted on in its journal.
#[test]
fn a_reply_leaves_a_node_only_after_its_records_are_synced() {
    let (n1, n2) = (NodeId(1), NodeId(2));
    let mut net = Net::new(3, FastPathMode::CoordinatorVotes);
    net.engines.insert(
        n2,
        Arc::new(MemoryEngine::with_crash_simulation(EngineOptions::default())),
    );
    net.open(n2);
    let key = Key::numbered(5);
    net.input(
        n1,
        Input::Client {
            request_id: ClientRequestId(1),
            txn: Txn::new(Vec::new(), Update::Append(vec![(key, 1)])),
        },
    );
    let txn_id = net.txn_id_of(n1, ClientRequestId(1));
    let at = net
        .in_flight
        .iter()
        .position(|(_, to, message)| *to == n2 && matches!(message, Message::PreAccept { .. }))
        .expect("a PreAccept for n2");
    let (from, to, message) = net.in_flight.remove(at).expect("in flight");
    net.input(to, Input::Message { from, message });
    assert!(
        net.in_flight.iter().any(|(from, _, message)| *from == n2
            && matches!(message, Message::PreAcceptOk { .. })),
        "n2's vote left it"
    );
    net.engines[&n2].simulate_crash();
    net.open(n2);
    let status = net.nodes[&n2]
        .commands
        .get(&txn_id)
        .map(|command| command.status);
    assert!(
        status.is_some_and(|status| status >= Status::PreAccepted),
        "n2 voted on {txn_id:?} and must remember it after a crash: {status:?}"
    );
}

/// Runs `net` for `steps` × 20 ms of timers on every node, delivering what `keep` accepts.
fn run_timers(net: &mut Net, steps: usize, keep: impl Fn(NodeId, NodeId, &Message) -> bool) {
    for _ in 0..steps {
        net.deliver(&keep);
        let ids: Vec<NodeId> = net.nodes.keys().copied().collect();
        for id in ids {
            net.fire_timers(id, 20_000);
        }
    }
    net.deliver(&keep);
}

/// An epoch seal (design/cluster.md, "Epoch transitions"): a transaction left in flight by a
/// coordinator cut off after its PreAccept, and committed ones, all end up applied or
/// invalidated on every replica below the seal bound; every node's DurableBefore reaches the
/// bound; and a PreAccept of the old epoch arriving afterwards is rejected.
#[test]
fn an_epoch_seal_applies_or_fences_off_every_transaction_of_the_old_epoch() {
    let mut net = Net::with_rounds(3, FastPathMode::CoordinatorVotes);
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    for request in 0..6u64 {
        let node = NodeId(1 + (request % 3) as u32);
        net.append(node, request, Key::numbered(request % 2), request);
        net.deliver(|_, _, _| true);
    }
    // n3 starts one more and its PreAccepts reach only n1: it is in flight when the seal
    // begins.
    net.append(n3, 77, Key::numbered(0), 77);
    let in_flight = net.txn_id_of(n3, ClientRequestId(77));
    net.deliver(|from, to, _| from != n3 || to == n1);
    let bound = crate::sync::epoch_seal_bound(crate::timestamp::Epoch(2));
    assert!(in_flight.timestamp() < bound);
    for node in net.nodes.values_mut() {
        assert!(!node.sealed_locally(bound));
        node.seal(bound);
    }
    run_timers(&mut net, 60, |_, _, _| true);
    let full = concord_storage::partitioner::TokenRange::full_ring();
    for (id, node) in &net.nodes {
        assert!(node.sealed_locally(bound), "{id} not sealed");
        assert!(
            node.applied_covers(&full, bound),
            "{id} does not cover the ring"
        );
        for (shard, durable) in node.durable_before() {
            assert!(
                durable >= bound,
                "{id}: shard {shard:?} durable only {durable}"
            );
        }
        assert_eq!(node.unfinished_count(), 0, "{id} left work unfinished");
    }
    // Every node applied the same appends (the in-flight one committed or was invalidated
    // the same way everywhere).
    let applied: Vec<Vec<(TxnId, Timestamp)>> = net
        .nodes
        .values_mut()
        .map(|node| {
            let mut applied: Vec<(TxnId, Timestamp)> = node
                .take_applied()
                .into_iter()
                .map(|record| (record.txn_id, record.execute_at))
                .collect();
            applied.sort();
            applied
        })
        .collect();
    assert!(
        applied.iter().all(|each| *each == applied[0]),
        "{applied:?}"
    );
    assert!(applied[0].len() >= 6, "{applied:?}");
    // A late PreAccept of the old epoch is rejected.
    let late = TxnId::new(
        Timestamp::new(crate::timestamp::Epoch(1), net.now + 1_000_000, 0, n3),
        TxnKind::Write,
        crate::timestamp::Domain::Key,
    );
    let txn = Txn::new(
        vec![Key::numbered(1)],
        Update::Append(vec![(Key::numbered(1), 5)]),
    );
    net.input(
        n2,
        Input::Message {
            from: n3,
            message: Message::PreAccept { txn_id: late, txn },
        },
    );
    let rejected = net.in_flight.iter().any(|(from, to, message)| {
        (*from, *to) == (n2, n3)
            && matches!(message, Message::PreAcceptRejected { txn_id } if *txn_id == late)
    });
    assert!(rejected, "{:?}", net.in_flight);
}

/// With one replica cut off, the seal cannot become durable, but the live replicas reach
/// the applied level (each has applied every old transaction that can still commit), which
/// is what removing the cut-off node needs.
#[test]
fn an_epoch_seal_reaches_the_applied_level_with_one_replica_cut_off() {
    let mut net = Net::with_rounds(3, FastPathMode::CoordinatorVotes);
    let n3 = NodeId(3);
    for request in 0..4u64 {
        let node = NodeId(1 + (request % 2) as u32);
        net.append(node, request, Key::numbered(request), request);
        net.deliver(|_, _, _| true);
    }
    let bound = crate::sync::epoch_seal_bound(crate::timestamp::Epoch(2));
    for node in net.nodes.values_mut() {
        node.seal(bound);
    }
    // Long enough for the second replica to take over the rounds if it had to.
    run_timers(&mut net, 150, |from, to, _| from != n3 && to != n3);
    for id in [NodeId(1), NodeId(2)] {
        let node = &net.nodes[&id];
        assert!(node.sealed_locally(bound), "{id} not sealed");
        assert!(
            node.durable_before()
                .values()
                .all(|durable| *durable < bound),
            "{id}: durable without n3"
        );
    }
    assert!(!net.nodes[&n3].sealed_locally(bound));
}

/// A node entering an epoch through a completed transition adopts its floor on every shard
/// of the new topology and forgets the watermarks of shard ids the new topology lacks.
#[test]
fn adopting_an_epoch_floor_replaces_the_old_epochs_watermarks() {
    let mut net = Net::with_rounds(3, FastPathMode::CoordinatorVotes);
    net.topology = Arc::new(Topology::ring(3, 4, 3, FastPathMode::CoordinatorVotes));
    for id in 1..=3 {
        net.open(NodeId(id));
    }
    net.append(NodeId(1), 1, Key::numbered(1), 1);
    run_timers(&mut net, 20, |_, _, _| true);
    assert!(net.nodes[&NodeId(1)].durable_before().len() == 4);
    // The next epoch has one shard.
    let mut next = Topology::ring(3, 1, 3, FastPathMode::CoordinatorVotes);
    next.epoch = crate::timestamp::Epoch(2);
    net.topology = Arc::new(next);
    net.open(NodeId(1));
    let bound = crate::sync::epoch_seal_bound(crate::timestamp::Epoch(2));
    let now = LocalTime(net.now);
    let node = net.nodes.get_mut(&NodeId(1)).expect("node");
    node.adopt_epoch_floor(now, bound).expect("adopt");
    let durable = node.durable_before();
    assert_eq!(
        durable.keys().copied().collect::<Vec<_>>(),
        vec![crate::topology::ShardId(0)]
    );
    assert!(durable.values().all(|at| *at >= bound));
    assert!(node.sealed_locally(bound));
    // The watermarks are durable: a restart keeps them.
    net.open(NodeId(1));
    assert_eq!(net.nodes[&NodeId(1)].durable_before(), durable);
}

/// Shard ids name ranges of one topology epoch only: a durability-round message or a
/// DurableBefore list of another epoch (a late one, after the receiver moved to a new
/// topology) is ignored, instead of raising the floor of whichever shard has that id here
/// (or panicking on an id past this topology's shards, as every removal did).
#[test]
fn durability_messages_of_another_epoch_are_ignored() {
    let mut net = Net::new(3, FastPathMode::CoordinatorVotes);
    let (n1, n2) = (NodeId(1), NodeId(2));
    let other = crate::timestamp::Epoch(2);
    let bound = Timestamp::new(
        crate::timestamp::Epoch(1),
        net.now + 1_000_000,
        0,
        NodeId(0),
    );
    for message in [
        Message::SyncDurable {
            epoch: other,
            shard: crate::topology::ShardId(7),
            bound,
        },
        Message::SyncApplied {
            epoch: other,
            shard: crate::topology::ShardId(0),
            bound,
        },
        Message::SyncFence {
            epoch: other,
            shard: crate::topology::ShardId(9),
            bound,
        },
        Message::CheckStatusOk {
            txn_id: TxnId::new(
                Timestamp::new(crate::timestamp::Epoch(1), 5, 0, n2),
                TxnKind::Write,
                crate::timestamp::Domain::Key,
            ),
            knowledge: None,
            durable_before: vec![(crate::topology::ShardId(0), bound)],
            epoch: other,
        },
    ] {
        net.input(n1, Input::Message { from: n2, message });
    }
    let node = &net.nodes[&n1];
    assert_eq!(node.stats().stale_sync_messages, 3);
    assert!(
        node.durable_before().is_empty(),
        "{:?}",
        node.durable_before()
    );
    assert!(!node.sealed_locally(bound));
    assert!(net.in_flight.is_empty(), "{:?}", net.in_flight);
    // The same messages of this epoch do take effect.
    net.input(
        n1,
        Input::Message {
            from: n2,
            message: Message::SyncDurable {
                epoch: crate::timestamp::Epoch(1),
                shard: crate::topology::ShardId(0),
                bound,
            },
        },
    );
    assert_eq!(
        net.nodes[&n1]
            .durable_before()
            .get(&crate::topology::ShardId(0)),
        Some(&bound)
    );
}
