//! Tests of the Accord runtime on the in-memory engine: commits and replies, admission
//! control (a full queue refuses), and journal replay on restart (K4).

use std::sync::Arc;
use std::sync::mpsc;

use concord_storage::engine::{Durability, EngineOptions, WriteBatch};
use concord_storage::memory::MemoryEngine;
use concord_txn::command::{Command, Status};
use concord_txn::node::{NodeConfig, Outcome};
use concord_txn::storage::{EngineJournal, Journal, KvDataStore};
use concord_txn::sync::Watermarks;
use concord_txn::timestamp::{LocalTime, NodeId, Timestamp, TxnId};
use concord_txn::topology::{FastPathMode, Topology};
use concord_txn::txn::{Key, Txn, Update, decode_list};

use super::*;

/// A one-node runtime's configuration (the core's defaults).
pub(crate) fn config() -> RuntimeConfig {
    RuntimeConfig {
        node: NodeId(1),
        topology: Arc::new(Topology::ring(1, 1, 1, FastPathMode::CoordinatorVotes)),
        node_config: NodeConfig::default(),
        clock_offset_micros: 0,
        epoch_floor: None,
    }
}

pub(crate) fn engine() -> Arc<MemoryEngine> {
    Arc::new(MemoryEngine::new(EngineOptions::default()))
}

fn start(engine: &Arc<MemoryEngine>, observer: Box<dyn StepObserver>) -> Runtime {
    Runtime::start(
        config(),
        Box::new(EngineJournal::new(engine.clone())),
        Box::new(KvDataStore::new(engine.clone())),
        Box::new(Loopback::default()),
        observer,
    )
    .expect("the runtime starts")
}

/// A transaction appending `value` to the list at `key`.
pub(crate) fn append(key: &Key, value: u64) -> Txn {
    Txn::new(
        vec![key.clone()],
        Update::Append(vec![(key.clone(), value)]),
    )
}

/// The list at `key` in `engine`, as `KvDataStore` stores it.
pub(crate) fn list(engine: &Arc<MemoryEngine>, key: &Key) -> Vec<u64> {
    let values = KvDataStore::new(engine.clone())
        .values(std::slice::from_ref(key))
        .expect("read");
    values[key]
        .as_deref()
        .map(|bytes| decode_list(bytes).expect("a list"))
        .unwrap_or_default()
}

fn committed(outcome: &Outcome) -> (Timestamp, Option<Vec<u8>>) {
    match outcome {
        Outcome::Committed {
            execute_at, reads, ..
        } => (*execute_at, reads.values().next().cloned().flatten()),
        other => panic!("not committed: {other:?}"),
    }
}

#[test]
fn transactions_commit_and_replies_arrive() {
    let engine = engine();
    let runtime = start(&engine, Box::new(NoObserver));
    let key = Key::numbered(1);
    let mut last = Timestamp::ZERO;
    for value in 1..=20 {
        let outcome = runtime.execute(append(&key, value)).expect("an outcome");
        let (execute_at, read) = committed(&outcome);
        assert!(execute_at > last, "executeAt increases");
        last = execute_at;
        // Each transaction read the list as its predecessors left it.
        let before: Vec<u64> = (1..value).collect();
        assert_eq!(
            read.as_deref()
                .map(|bytes| decode_list(bytes).expect("list")),
            (value > 1).then_some(before)
        );
    }
    // One node: applied before the reply was handed out.
    assert_eq!(list(&engine, &key), (1..=20).collect::<Vec<_>>());
    // Submissions from many threads at once all commit.
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let runtime = &runtime;
            scope.spawn(move || {
                let key = Key::numbered(100 + thread);
                for value in 0..10 {
                    let outcome = runtime.execute(append(&key, value)).expect("an outcome");
                    committed(&outcome);
                }
            });
        }
    });
    for thread in 0..4u64 {
        assert_eq!(
            list(&engine, &Key::numbered(100 + thread)),
            (0..10).collect::<Vec<_>>()
        );
    }
    let stats = runtime.stats();
    assert_eq!(stats.committed.load(Ordering::Relaxed), 60);
    assert!(stats.committed_max_hlc.load(Ordering::Relaxed) >= last.hlc);
    // One node: its own PreAccept is the whole fast quorum, every commit takes the fast
    // path, and no message leaves the node.
    assert_eq!(stats.fast_path_commits.load(Ordering::Relaxed), 60);
    assert_eq!(stats.slow_path_commits.load(Ordering::Relaxed), 0);
    assert_eq!(stats.messages_sent.load(Ordering::Relaxed), 0);
    assert_eq!(stats.messages_received.load(Ordering::Relaxed), 0);
}

/// Blocks the Node's thread in its first step after the open (the journal replay is reported
/// as a step too) until the test releases it.
struct Gate {
    opened: bool,
    entered: Option<mpsc::SyncSender<()>>,
    release: Option<mpsc::Receiver<()>>,
}

impl StepObserver for Gate {
    fn before_step(&mut self, _floor: Timestamp) {
        if !self.opened {
            return;
        }
        if let (Some(entered), Some(release)) = (self.entered.take(), self.release.take()) {
            let _ = entered.send(());
            let _ = release.recv();
        }
    }
    fn after_step(&mut self, _floor: Timestamp) {
        self.opened = true;
    }
}

#[test]
fn a_full_queue_refuses_new_work_and_loses_none() {
    let engine = engine();
    let (entered_tx, entered_rx) = mpsc::sync_channel(1);
    let (release_tx, release_rx) = mpsc::sync_channel(1);
    let runtime = start(
        &engine,
        Box::new(Gate {
            opened: false,
            entered: Some(entered_tx),
            release: Some(release_rx),
        }),
    );
    let key = Key::numbered(9);
    // The thread takes the first input (a submission, or the progress timer) and blocks.
    let first = runtime.submit(append(&key, 0)).expect("queued");
    entered_rx.recv().expect("the thread entered a step");
    let mut queued = vec![first];
    let mut value = 1;
    let refused = loop {
        match runtime.submit(append(&key, value)) {
            Ok(submission) => queued.push(submission),
            Err(error) => break error,
        }
        value += 1;
        assert!(
            queued.len() <= INPUT_QUEUE_CAPACITY + 1,
            "the queue is bounded"
        );
    };
    assert_eq!(refused, RuntimeError::Overloaded);
    assert!(
        queued.len() >= INPUT_QUEUE_CAPACITY,
        "{} queued",
        queued.len()
    );
    assert_eq!(
        runtime.deliver(NodeId(1), Vec::new()),
        Err(RuntimeError::Overloaded)
    );
    assert_eq!(runtime.stats().refused_clients.load(Ordering::Relaxed), 1);
    release_tx.send(()).expect("release");
    // Every accepted submission commits; the refused one left nothing behind.
    let accepted = queued.len() as u64;
    for submission in queued {
        committed(&submission.wait(CLIENT_REPLY_TIMEOUT).expect("an outcome"));
    }
    assert_eq!(list(&engine, &key), (0..accepted).collect::<Vec<_>>());
}

/// A journal that fails like a crash at the first Applied record: the PreApplied record
/// (synced) is in the journal, the data writes of the apply are not.
#[derive(Debug)]
struct CrashBeforeApply(EngineJournal<MemoryEngine>);

impl Journal for CrashBeforeApply {
    fn record(
        &mut self,
        command: &Command,
        data: WriteBatch,
        durability: Durability,
    ) -> concord_txn::Result<()> {
        if command.status == Status::Applied {
            return Err(concord_txn::Error::Execution("crash".into()));
        }
        self.0.record(command, data, durability)
    }
    fn flush(&mut self) -> concord_txn::Result<()> {
        self.0.flush()
    }
    fn erase(&mut self, txn_ids: &[TxnId]) -> concord_txn::Result<()> {
        self.0.erase(txn_ids)
    }
    fn record_watermarks(&mut self, watermarks: &Watermarks) -> concord_txn::Result<()> {
        self.0.record_watermarks(watermarks)
    }
    fn watermarks(&self) -> concord_txn::Result<Watermarks> {
        self.0.watermarks()
    }
    fn replay(&self, now: LocalTime) -> concord_txn::Result<Vec<Command>> {
        self.0.replay(now)
    }
    fn record_count(&self) -> concord_txn::Result<u64> {
        self.0.record_count()
    }
}

#[test]
fn a_restart_replays_the_journal_before_taking_input() {
    let engine = engine();
    let key = Key::numbered(3);
    let before = {
        let runtime = start(&engine, Box::new(NoObserver));
        committed(&runtime.execute(append(&key, 1)).expect("an outcome")).0
    };
    // The node "crashes" while applying the second transaction: no reply, no data.
    {
        let runtime = Runtime::start(
            config(),
            Box::new(CrashBeforeApply(EngineJournal::new(engine.clone()))),
            Box::new(KvDataStore::new(engine.clone())),
            Box::new(Loopback::default()),
            Box::new(NoObserver),
        )
        .expect("starts");
        let outcome = runtime.execute(append(&key, 2));
        assert!(
            matches!(outcome, Err(RuntimeError::Stopped(_))),
            "{outcome:?}"
        );
        assert_eq!(list(&engine, &key), vec![1]);
    }
    // Restart: replay applies the journaled transaction before any input is taken, and
    // the observer hears of it (with a floor above it) before `start` returns.
    let (floors_tx, floors_rx) = mpsc::channel();
    let runtime = start(&engine, Box::new(Floors(floors_tx, Timestamp::ZERO)));
    assert_eq!(list(&engine, &key), vec![1, 2]);
    let (_, replay_floor) = floors_rx
        .try_recv()
        .expect("the replay is reported as a step before start returns");
    assert!(replay_floor > before, "{replay_floor:?} vs {before:?}");
    let (after, read) = committed(&runtime.execute(append(&key, 3)).expect("an outcome"));
    assert!(after > before, "the clock witnessed the journal");
    assert_eq!(
        read.as_deref()
            .map(|bytes| decode_list(bytes).expect("list")),
        Some(vec![1, 2])
    );
    assert_eq!(list(&engine, &key), vec![1, 2, 3]);
}

/// Records the floors the runtime reports.
struct Floors(mpsc::Sender<(Timestamp, Timestamp)>, Timestamp);

impl StepObserver for Floors {
    fn before_step(&mut self, floor: Timestamp) {
        self.1 = floor;
    }
    fn after_step(&mut self, floor: Timestamp) {
        let _ = self.0.send((self.1, floor));
    }
}

#[test]
fn the_apply_floor_passes_every_applied_write_and_never_goes_back() {
    let engine = engine();
    let (floors_tx, floors_rx) = mpsc::channel();
    let runtime = start(&engine, Box::new(Floors(floors_tx, Timestamp::ZERO)));
    let key = Key::numbered(4);
    let mut executed = Vec::new();
    for value in 0..10 {
        executed.push(committed(&runtime.execute(append(&key, value)).expect("outcome")).0);
    }
    drop(runtime);
    let floors: Vec<(Timestamp, Timestamp)> = floors_rx.try_iter().collect();
    assert!(!floors.is_empty());
    let mut last = Timestamp::ZERO;
    for (before, after) in &floors {
        assert!(*before >= last && after >= before, "monotonic: {floors:?}");
        last = *after;
    }
    // After the last step every transaction is applied: the floor is above them all.
    let last_execute_at = executed.last().copied().expect("ten");
    assert!(last > last_execute_at);
}

/// Peers that record what the Node sends.
#[derive(Clone, Default)]
struct Recording(Arc<parking_lot::Mutex<Vec<(NodeId, Message)>>>);

impl Peers for Recording {
    fn send(&self, to: NodeId, messages: Vec<Message>) {
        self.0
            .lock()
            .extend(messages.into_iter().map(|message| (to, message)));
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A PreAccept from node 2, coordinated at `epoch`.
fn pre_accept_from_n2(epoch: u64, key: &Key) -> Message {
    let txn_id = TxnId::new(
        Timestamp::new(
            concord_txn::timestamp::Epoch(epoch),
            MonotonicClock::new().now().0,
            0,
            NodeId(2),
        ),
        concord_txn::timestamp::TxnKind::Write,
        concord_txn::timestamp::Domain::Key,
    );
    Message::PreAccept {
        txn_id,
        txn: append(key, 99),
    }
}

#[test]
fn messages_of_a_newer_epoch_wait_for_its_topology_which_reopens_the_node() {
    let engine = engine();
    let peers = Recording::default();
    let runtime = Runtime::start(
        config(),
        Box::new(EngineJournal::new(engine.clone())),
        Box::new(KvDataStore::new(engine.clone())),
        Box::new(peers.clone()),
        Box::new(NoObserver),
    )
    .expect("the runtime starts");
    let key = Key::numbered(7);
    for value in 1..=3 {
        committed(&runtime.execute(append(&key, value)).expect("an outcome"));
    }
    assert_eq!(runtime.epoch(), concord_txn::timestamp::Epoch(1));

    // Epoch 2 is not known here: the PreAccept waits, unanswered (K1).
    let epoch = concord_txn::timestamp::Epoch(2);
    runtime
        .deliver_at(NodeId(2), epoch, vec![pre_accept_from_n2(2, &key)])
        .expect("queued");
    wait_until("the message waits", || {
        runtime.stats().epoch_waited.load(Ordering::Relaxed) == 1
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(peers.0.lock().is_empty(), "{:?}", peers.0.lock());
    // An older topology is ignored.
    runtime
        .set_topology(Arc::new(Topology::ring(
            1,
            1,
            1,
            FastPathMode::CoordinatorVotes,
        )))
        .expect("queued");

    // Epoch 2's topology (nodes 1 and 2, RF 2) reopens the Node on the same
    // journal and hands the waiting PreAccept over: node 1 answers node 2.
    let mut two = Topology::ring(2, 1, 2, FastPathMode::CoordinatorVotes);
    two.epoch = epoch;
    runtime.set_topology(Arc::new(two)).expect("queued");
    wait_until("node 1 answers node 2's PreAccept", || {
        peers
            .0
            .lock()
            .iter()
            .any(|(to, message)| *to == NodeId(2) && matches!(message, Message::PreAcceptOk { .. }))
    });
    assert_eq!(runtime.epoch(), epoch);
    assert_eq!(runtime.stats().topology_changes.load(Ordering::Relaxed), 1);
    assert_eq!(runtime.stats().epoch_dropped.load(Ordering::Relaxed), 0);
    // What the old Node applied is still there.
    assert_eq!(list(&engine, &key), vec![1, 2, 3]);

    // Past the bound, waiting messages are dropped and counted.
    let many = vec![pre_accept_from_n2(3, &key); EPOCH_WAIT_MESSAGES_MAX + 1];
    runtime
        .deliver_at(NodeId(2), concord_txn::timestamp::Epoch(3), many)
        .expect("queued");
    wait_until("the oversized batch is dropped", || {
        runtime.stats().epoch_dropped.load(Ordering::Relaxed)
            == (EPOCH_WAIT_MESSAGES_MAX + 1) as u64
    });
    assert_eq!(runtime.stats().epoch_waited.load(Ordering::Relaxed), 1);
}

#[test]
fn the_clock_follows_the_wall_clock_forward_and_never_back() {
    let clock = MonotonicClock::with_offset(-60_000_000);
    let start = clock.now().0;
    let wall = clock.wall_micros();
    // The offset applies: a minute behind the true clock.
    let true_now = MonotonicClock::new().now().0;
    assert!(true_now - start >= 59_000_000, "{true_now} vs {start}");
    // A step forward of ten seconds is followed at once ...
    let ahead = clock.now_with_wall(wall + 10_000_000).0;
    assert!(ahead >= wall + 10_000_000, "{ahead}");
    // ... a step back to the old wall clock is not: time goes on from the step.
    let after = clock.now_with_wall(wall).0;
    assert!(after >= ahead, "{after} < {ahead}");
    std::thread::sleep(Duration::from_millis(5));
    let later = clock.now().0;
    assert!(later >= after + 5_000, "{later} vs {after}");
    assert!(later < wall + 11_000_000, "{later}");
}

/// Armed: the next flush says it entered on the sender, then waits on the receiver.
type FlushPause = Arc<parking_lot::Mutex<Option<(mpsc::SyncSender<()>, mpsc::Receiver<()>)>>>;

/// A journal that counts its flushes and, once armed, stops in the next flush (before its
/// sync) until the test lets it go.
#[derive(Debug)]
struct PausingFlush {
    inner: EngineJournal<MemoryEngine>,
    flushes: Arc<AtomicU64>,
    pause: FlushPause,
}

impl Journal for PausingFlush {
    fn record(
        &mut self,
        command: &Command,
        data: WriteBatch,
        durability: Durability,
    ) -> concord_txn::Result<()> {
        self.inner.record(command, data, durability)
    }
    fn flush(&mut self) -> concord_txn::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        let pause = self.pause.lock().take();
        if let Some((entered, release)) = pause {
            let _ = entered.send(());
            let _ = release.recv();
        }
        self.inner.flush()
    }
    fn erase(&mut self, txn_ids: &[TxnId]) -> concord_txn::Result<()> {
        self.inner.erase(txn_ids)
    }
    fn record_watermarks(&mut self, watermarks: &Watermarks) -> concord_txn::Result<()> {
        self.inner.record_watermarks(watermarks)
    }
    fn watermarks(&self) -> concord_txn::Result<Watermarks> {
        self.inner.watermarks()
    }
    fn replay(&self, now: LocalTime) -> concord_txn::Result<Vec<Command>> {
        self.inner.replay(now)
    }
    fn record_count(&self) -> concord_txn::Result<u64> {
        self.inner.record_count()
    }
}

/// Group commit: inputs queued while the Node's thread is busy are handled back to back and
/// their journal records synced together (one sync per [`STEP_GROUP_MAX`] steps at most, not
/// one per step), and no reply leaves before the sync that covers its step.
#[test]
fn queued_transactions_share_journal_syncs_and_no_reply_leaves_before_its_sync() {
    let engine = engine();
    let flushes = Arc::new(AtomicU64::new(0));
    let pause = Arc::new(parking_lot::Mutex::new(None));
    let (gate_entered_tx, gate_entered_rx) = mpsc::sync_channel(1);
    let (gate_release_tx, gate_release_rx) = mpsc::sync_channel(1);
    let runtime = Runtime::start(
        config(),
        Box::new(PausingFlush {
            inner: EngineJournal::new(engine.clone()),
            flushes: flushes.clone(),
            pause: pause.clone(),
        }),
        Box::new(KvDataStore::new(engine.clone())),
        Box::new(Loopback::default()),
        Box::new(Gate {
            opened: false,
            entered: Some(gate_entered_tx),
            release: Some(gate_release_rx),
        }),
    )
    .expect("the runtime starts");
    const TXNS: u64 = 32;
    let first = runtime
        .submit(append(&Key::numbered(200), 0))
        .expect("queued");
    // The thread takes the first input (the submission or the progress timer) and blocks.
    gate_entered_rx.recv().expect("the thread entered a step");
    let mut queued = vec![first];
    for value in 1..TXNS {
        queued.push(
            runtime
                .submit(append(&Key::numbered(200 + value), value))
                .expect("queued"),
        );
    }
    let (flush_entered_tx, flush_entered_rx) = mpsc::sync_channel(1);
    let (flush_release_tx, flush_release_rx) = mpsc::sync_channel(1);
    *pause.lock() = Some((flush_entered_tx, flush_release_rx));
    let flushes_before = flushes.load(Ordering::SeqCst);
    let steps_before = runtime.stats().steps.load(Ordering::SeqCst);
    gate_release_tx.send(()).expect("release the gate");
    // The thread handles what is queued and reaches its first sync: nothing has left yet,
    // although steps completed whole transactions (a one-node commit needs no peer).
    flush_entered_rx.recv().expect("the thread syncs");
    for submission in &queued {
        assert!(
            submission.reply.try_recv().is_err(),
            "a reply left before the journal sync of its step"
        );
    }
    flush_release_tx.send(()).expect("release the sync");
    for (value, submission) in queued.into_iter().enumerate() {
        committed(&submission.wait(CLIENT_REPLY_TIMEOUT).expect("an outcome"));
        assert_eq!(
            list(&engine, &Key::numbered(200 + value as u64)),
            vec![value as u64]
        );
    }
    let grouped = flushes.load(Ordering::SeqCst) - flushes_before;
    let steps = runtime.stats().steps.load(Ordering::SeqCst) - steps_before;
    assert!(
        steps >= TXNS,
        "each transaction takes at least one step: {steps}"
    );
    assert!(
        grouped <= steps.div_ceil(STEP_GROUP_MAX as u64) + 2,
        "{TXNS} queued transactions took {grouped} journal syncs over {steps} steps"
    );
    assert_eq!(
        runtime.stats().journal_flushes.load(Ordering::SeqCst),
        flushes.load(Ordering::SeqCst) - 1,
        "every flush but the open's is counted"
    );
}

/// An epoch seal holds new client transactions (they start on the next epoch's Node, which
/// adopts the seal's floor), seals the old epoch locally, and reports which ranges a gaining
/// node may fetch from here.
#[test]
fn a_seal_holds_clients_until_the_next_epoch_and_reports_its_progress() {
    let engine = engine();
    let runtime = Runtime::start(
        RuntimeConfig {
            node_config: NodeConfig {
                sync_interval_micros: 20_000,
                sync_margin_micros: 5_000,
                ..NodeConfig::default()
            },
            ..config()
        },
        Box::new(EngineJournal::new(engine.clone())),
        Box::new(KvDataStore::new(engine.clone())),
        Box::new(Loopback::default()),
        Box::new(NoObserver),
    )
    .expect("the runtime starts");
    let key = Key::numbered(3);
    committed(&runtime.execute(append(&key, 1)).expect("an outcome"));
    let next = concord_txn::timestamp::Epoch(2);
    let bound = concord_txn::sync::epoch_seal_bound(next);
    let full = concord_storage::partitioner::TokenRange::full_ring();
    assert!(!runtime.applied_covers(&full, bound));
    runtime.seal(bound).expect("queued");
    wait_until("the old epoch is sealed here", || {
        runtime.seal_status().sealed_locally
    });
    assert!(runtime.applied_covers(&full, bound));
    // A transaction submitted now waits for the next epoch.
    let held = runtime.submit(append(&key, 2)).expect("queued");
    wait_until("the transaction is held", || {
        runtime.stats().seal_held_clients.load(Ordering::Relaxed) == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(list(&engine, &key), vec![1], "a held transaction ran");
    let mut two = Topology::ring(1, 2, 1, FastPathMode::CoordinatorVotes);
    two.epoch = next;
    runtime
        .set_topology_with_floor(Arc::new(two), Some(bound))
        .expect("queued");
    let outcome = held.wait(CLIENT_REPLY_TIMEOUT).expect("an outcome");
    let Outcome::Committed { execute_at, .. } = outcome else {
        panic!("not committed: {outcome:?}");
    };
    assert!(execute_at >= bound, "ran in the old epoch at {execute_at}");
    assert_eq!(list(&engine, &key), vec![1, 2]);
    assert_eq!(runtime.seal_status(), SealStatus::default());
    // New transactions run at once again.
    committed(&runtime.execute(append(&key, 3)).expect("an outcome"));
}
