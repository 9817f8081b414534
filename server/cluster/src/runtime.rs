//! The Accord runtime: one thread that owns a [`concord_txn::node::Node`] and drives it.
//!
//! ```text
//!   submit(txn) ──┐                        ┌──► Peers::send(to, messages)   (other nodes)
//!   deliver(from, ┼─► input queue ─► thread ┼──► the waiting Submission      (client replies)
//!     messages) ──┘   (bounded)     Node::   └──► timer heap on the thread   (timers)
//!                                    handle
//! ```
//!
//! - **Admission**: the input queue holds [`INPUT_QUEUE_CAPACITY`] inputs. A full queue refuses
//!   a client submission with [`RuntimeError::Overloaded`] and a peer delivery with the same
//!   error, counted in [`RuntimeStats::refused_messages`]: a protocol message is never dropped
//!   silently (the protocol tolerates loss, the operator sees it).
//! - **Time**: [`MonotonicClock`] gives `LocalTime` in microseconds since the Unix epoch:
//!   the wall clock at start, advanced by `Instant`, following the wall clock forward when it
//!   jumps ahead and never going back.
//!   The Node's hybrid logical clock runs on it, so executeAt is a wall-clock-like write time.
//! - **Timers** live in a heap on the thread, which sleeps on the queue until the next one.
//! - **Messages to itself** short-circuit: the Node handles most inside `handle`; any left in
//!   the effects go back into the thread's local backlog, never through [`Peers`].
//! - **Journal**: whatever `Journal` the caller gives (the server gives `EngineJournal` on the
//!   node's engine, `Durability::Sync`); the Node is opened on the thread, so a restarted
//!   runtime replays its journal before it takes any input (K4 of design/cluster.md).
//! - **Steps**: before and after every `Node::handle`, a [`StepObserver`] learns the node's
//!   apply floor (`Node::apply_floor`); the server keeps its change feed's frontier below it.
//! - **Epochs** (K1 of design/cluster.md): [`Runtime::set_topology`] with a newer epoch
//!   reopens the Node on the same journal and data store under the new topology (the protocol
//!   core's topology is static per Node; transactions in flight on this coordinator get
//!   `Outcome::Unknown`). Peer messages stamped with an epoch this runtime does not run yet
//!   ([`Runtime::deliver_at`]) wait, at most [`EPOCH_WAIT_MESSAGES_MAX`] of them for at most
//!   [`EPOCH_WAIT_TIMEOUT`], until that topology arrives; past either bound they are dropped
//!   and counted (the protocol retries, as for any lost message).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_storage::partitioner::TokenRange;
use concord_txn::messages::Message;
use concord_txn::node::{
    ClientRequestId, Effects, Input, Node, NodeConfig, NodeStats, Outcome, Timer,
};
use concord_txn::storage::{DataStore, Journal};
use concord_txn::timestamp::{Epoch, LocalTime, NodeId, Timestamp};
use concord_txn::topology::Topology;
use concord_txn::txn::Txn;

/// The most inputs (client submissions and peer messages) waiting for the Node's thread.
pub const INPUT_QUEUE_CAPACITY: usize = 4_096;
/// How long [`Runtime::execute`] waits for a transaction's outcome by default.
pub const CLIENT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Runtime::start`] waits for the Node to open (journal replay included).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// The most client transactions an epoch seal holds back (they start on the next epoch's
/// Node); more get `Outcome::Overloaded` (nothing started).
pub const SEAL_HELD_CLIENTS_MAX: usize = 1_024;
/// The most peer messages that wait for a topology epoch this runtime does not run yet.
pub const EPOCH_WAIT_MESSAGES_MAX: usize = 4_096;
/// The most Node steps whose journal records one sync covers (group commit). The runtime
/// handles queued inputs back to back and syncs once when the queue is empty or after this
/// many steps, then releases the steps' messages and replies (never before the sync).
pub const STEP_GROUP_MAX: usize = 64;
/// How long a peer message waits for its epoch before it is dropped (and counted).
pub const EPOCH_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the runtime did not give an outcome.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// The input queue is full: nothing was started; retry later.
    #[error("the transaction runtime is overloaded ({INPUT_QUEUE_CAPACITY} inputs queued)")]
    Overloaded,
    /// No outcome within the wait: the transaction may or may not execute.
    #[error("no transaction outcome within {0:?}; it may or may not have executed")]
    Timeout(Duration),
    /// The runtime stopped (shut down, or its Node failed on storage).
    #[error("the transaction runtime is stopped: {0}")]
    Stopped(String),
    /// The Node could not open (journal replay failed).
    #[error("the transaction runtime failed to open: {0}")]
    Open(String),
}

/// Where outgoing protocol messages go: the transport in a cluster, [`Loopback`] on one node.
pub trait Peers: Send + 'static {
    /// Sends `messages`, in order, to `to` (never this node itself: the runtime
    /// short-circuits those). Must not block the Node's thread on the network.
    fn send(&self, to: NodeId, messages: Vec<Message>);
}

/// The peers of a one-node cluster: there are none. A message for another node is a topology
/// bug; it is counted and logged, not lost silently.
#[derive(Debug, Default, Clone)]
pub struct Loopback {
    misrouted: Arc<AtomicU64>,
}

impl Loopback {
    /// Messages addressed to a node that does not exist here.
    pub fn misrouted(&self) -> u64 {
        self.misrouted.load(Ordering::Relaxed)
    }
}

impl Peers for Loopback {
    fn send(&self, to: NodeId, messages: Vec<Message>) {
        self.misrouted
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        tracing::error!(%to, count = messages.len(), "one-node runtime: message for another node");
    }
}

/// Learns the Node's apply floor around every step (see `Node::apply_floor`): before the
/// step, no write below `floor` will be applied during it; after it, none below the new one
/// will ever be. Called on the Node's thread; must be quick.
pub trait StepObserver: Send + 'static {
    fn before_step(&mut self, floor: Timestamp);
    fn after_step(&mut self, floor: Timestamp);
}

/// A [`StepObserver`] that does nothing (no change feed to pace).
#[derive(Debug, Default)]
pub struct NoObserver;

impl StepObserver for NoObserver {
    fn before_step(&mut self, _floor: Timestamp) {}
    fn after_step(&mut self, _floor: Timestamp) {}
}

/// Microseconds since the Unix epoch that never go back: the wall clock (plus the node's
/// injected offset) read at start and advanced by `Instant` after, following the wall clock
/// forward when it runs ahead (an NTP step, a skewed node) and never back (a step back is
/// waited out on `Instant`). The runtime's thread owns it.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    offset_micros: i64,
    /// (`Instant`, microseconds since the epoch at that instant)
    anchor: Cell<(Instant, u64)>,
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock::with_offset(0)
    }

    /// A clock `offset_micros` ahead of the wall clock (behind when negative): a node's
    /// injected clock skew (`RuntimeConfig::clock_offset_micros`).
    pub fn with_offset(offset_micros: i64) -> MonotonicClock {
        let clock = MonotonicClock {
            offset_micros,
            anchor: Cell::new((Instant::now(), 0)),
        };
        clock.anchor.set((Instant::now(), clock.wall_micros()));
        clock
    }

    fn wall_micros(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            });
        u64::try_from(wall.saturating_add(self.offset_micros)).unwrap_or(0)
    }

    pub fn now(&self) -> LocalTime {
        self.now_with_wall(self.wall_micros())
    }

    /// [`MonotonicClock::now`] with the wall clock read as `wall_micros`.
    fn now_with_wall(&self, wall_micros: u64) -> LocalTime {
        let (origin, origin_micros) = self.anchor.get();
        let elapsed = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        let steady = origin_micros.saturating_add(elapsed);
        if wall_micros > steady {
            self.anchor.set((Instant::now(), wall_micros));
            return LocalTime(wall_micros);
        }
        LocalTime(steady)
    }
}

/// What the runtime needs to open its Node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub node: NodeId,
    pub topology: Arc<Topology>,
    pub node_config: NodeConfig,
    /// How far this node's clock runs ahead of the wall clock (behind when negative), in
    /// microseconds: 0 but for fault injection (the server's `test_clock_offset_ms`).
    pub clock_offset_micros: i64,
    /// The floor of the epoch `topology` was entered with through a completed transition
    /// (`Node::adopt_epoch_floor`), adopted on open; `None` for an epoch entered without one.
    pub epoch_floor: Option<Timestamp>,
}

/// An epoch seal as other threads see it (`Runtime::seal_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealStatus {
    /// The seal's bound (`concord_txn::sync::epoch_seal_bound` of the next epoch).
    pub bound: Option<Timestamp>,
    /// Every shard this node replicates has applied every transaction below the bound.
    pub sealed_locally: bool,
    /// Every shard's range, and whether this node replicates it with its applied-before
    /// floor at the bound (its rows there hold every write below it).
    pub shards: Vec<(TokenRange, bool)>,
}

/// Counters, readable from any thread.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Client submissions refused because the queue was full.
    pub refused_clients: AtomicU64,
    /// Peer messages refused because the queue was full.
    pub refused_messages: AtomicU64,
    /// Inputs the Node handled.
    pub steps: AtomicU64,
    /// Journal syncs (`Node::flush`), one per group of at most [`STEP_GROUP_MAX`] steps.
    pub journal_flushes: AtomicU64,
    /// Transactions committed through this node's coordinator.
    pub committed: AtomicU64,
    /// The highest executeAt (HLC microseconds) of a committed transaction answered here.
    pub committed_max_hlc: AtomicU64,
    /// The epoch of the topology the Node runs on now.
    pub epoch: AtomicU64,
    /// Times the Node was reopened on a newer topology.
    pub topology_changes: AtomicU64,
    /// Peer messages that arrived before their epoch's topology and waited for it.
    pub epoch_waited: AtomicU64,
    /// Peer messages dropped waiting for their epoch (over [`EPOCH_WAIT_MESSAGES_MAX`] or
    /// [`EPOCH_WAIT_TIMEOUT`]).
    pub epoch_dropped: AtomicU64,
    /// Transactions this node's coordinator committed on the fast path (one round trip:
    /// PreAccept and a fast quorum of replies agreeing on executeAt = TxnId), summed over
    /// every Node this runtime opened (`NodeStats::fast_path_commits`).
    pub fast_path_commits: AtomicU64,
    /// Transactions this node's coordinator committed on the slow path (an Accept round
    /// after PreAccept: two round trips).
    pub slow_path_commits: AtomicU64,
    /// Recoveries this node started (a transaction whose coordinator went quiet).
    pub recoveries_started: AtomicU64,
    /// Transactions this node's coordinator invalidated (no quorum witnessed them).
    pub invalidations: AtomicU64,
    /// Protocol messages handed to [`Peers::send`] (to other nodes; messages to itself are
    /// handled in place and not counted).
    pub messages_sent: AtomicU64,
    /// Protocol messages from peers handed to the Node.
    pub messages_received: AtomicU64,
    /// Client transactions held back by an epoch seal (they start on the next epoch).
    pub seal_held_clients: AtomicU64,
    /// The current epoch seal's progress (published after each step while sealed).
    pub seal: Mutex<SealStatus>,
}

enum Work {
    Client {
        txn: Txn,
        reply: SyncSender<Outcome>,
    },
    Messages {
        from: NodeId,
        /// The sender's topology epoch, when the carrier knows it.
        epoch: Option<Epoch>,
        messages: Vec<Message>,
    },
    Topology(Arc<Topology>, Option<Timestamp>),
    Seal(Timestamp),
    Stop,
}

/// Why [`Driver::run`] returned.
enum Exit {
    Stop,
    Reopen(Arc<Topology>, Option<Timestamp>),
}

/// Peer messages waiting for their epoch's topology.
#[derive(Default)]
struct EpochWait {
    /// `(until, from, epoch, messages)`, oldest first.
    waiting: VecDeque<(LocalTime, NodeId, Epoch, Vec<Message>)>,
    count: usize,
}

/// A submitted transaction's pending outcome.
#[derive(Debug)]
pub struct Submission {
    reply: Receiver<Outcome>,
}

impl Submission {
    /// Waits up to `timeout` for the outcome.
    ///
    /// # Errors
    /// `Timeout` when none came; `Stopped` when the runtime went away first.
    pub fn wait(self, timeout: Duration) -> Result<Outcome, RuntimeError> {
        match self.reply.recv_timeout(timeout) {
            Ok(outcome) => Ok(outcome),
            Err(RecvTimeoutError::Timeout) => Err(RuntimeError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(RuntimeError::Stopped(
                "the runtime stopped before answering".into(),
            )),
        }
    }
}

/// A running Accord runtime. Dropping it stops the thread (pending submissions get `Stopped`).
#[derive(Debug)]
pub struct Runtime {
    node: NodeId,
    queue: SyncSender<Work>,
    stats: Arc<RuntimeStats>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Opens the Node on a new thread (replaying `journal`) and starts driving it.
    ///
    /// # Errors
    /// `Open` when the journal cannot be replayed or the thread cannot start.
    pub fn start(
        config: RuntimeConfig,
        journal: Box<dyn Journal + Send>,
        data: Box<dyn DataStore + Send>,
        peers: Box<dyn Peers>,
        observer: Box<dyn StepObserver>,
    ) -> Result<Runtime, RuntimeError> {
        let (queue, inputs) = mpsc::sync_channel(INPUT_QUEUE_CAPACITY);
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let stats = Arc::new(RuntimeStats::default());
        let thread_stats = stats.clone();
        let node_id = config.node;
        let thread = std::thread::Builder::new()
            .name(format!("concord-accord-{}", node_id.0))
            .spawn(move || {
                let mut observer = observer;
                let clock = MonotonicClock::with_offset(config.clock_offset_micros);
                let journal: Box<dyn Journal> = journal;
                let data: Box<dyn DataStore> = data;
                // Replay applies writes too: the observer brackets it like a step, so a
                // change feed paced by the floor passes the replayed writes before the
                // runtime is reported open (a replica rebuilt right after must find the
                // watermark above every write in the row store).
                observer.before_step(Timestamp::ZERO);
                let node_config = config.node_config.clone();
                let opened = open_node(
                    config.node,
                    config.topology,
                    config.node_config,
                    (journal, data),
                    clock.now(),
                    config.epoch_floor,
                );
                let (node, effects) = match opened {
                    Ok(opened) => {
                        observer.after_step(opened.0.apply_floor());
                        let _ = opened_tx.send(Ok(()));
                        opened
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                thread_stats
                    .epoch
                    .store(node.topology().epoch.0, Ordering::SeqCst);
                let mut driver = Driver {
                    node,
                    node_config,
                    clock,
                    peers,
                    observer,
                    stats: thread_stats,
                    timers: BinaryHeap::new(),
                    timer_seq: 0,
                    pending: HashMap::new(),
                    next_request: 0,
                    backlog: VecDeque::new(),
                    held: Effects::default(),
                    held_steps: 0,
                    epoch_wait: EpochWait::default(),
                    sealed: None,
                    held_clients: VecDeque::new(),
                };
                driver.absorb(effects);
                loop {
                    match driver.run(&inputs) {
                        Exit::Stop => return,
                        Exit::Reopen(topology, floor) => match driver.reopen(topology, floor) {
                            Some(reopened) => driver = reopened,
                            None => return,
                        },
                    }
                }
            })
            .map_err(|error| RuntimeError::Open(format!("spawn the runtime thread: {error}")))?;
        match opened_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(())) => Ok(Runtime {
                node: node_id,
                queue,
                stats,
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(RuntimeError::Open(error))
            }
            Err(_) => Err(RuntimeError::Open(format!(
                "the node did not open within {OPEN_TIMEOUT:?}"
            ))),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// Queues a transaction; its coordinator is this node.
    ///
    /// # Errors
    /// `Overloaded` when the input queue is full (nothing was started); `Stopped` when the
    /// runtime is gone.
    pub fn submit(&self, txn: Txn) -> Result<Submission, RuntimeError> {
        let (reply, outcome) = mpsc::sync_channel(1);
        match self.queue.try_send(Work::Client { txn, reply }) {
            Ok(()) => Ok(Submission { reply: outcome }),
            Err(TrySendError::Full(_)) => {
                self.stats.refused_clients.fetch_add(1, Ordering::Relaxed);
                Err(RuntimeError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(RuntimeError::Stopped(
                "the runtime thread has exited".into(),
            )),
        }
    }

    /// Submits `txn` and waits up to [`CLIENT_REPLY_TIMEOUT`] for its outcome.
    ///
    /// # Errors
    /// As [`Runtime::submit`] and [`Submission::wait`].
    pub fn execute(&self, txn: Txn) -> Result<Outcome, RuntimeError> {
        self.submit(txn)?.wait(CLIENT_REPLY_TIMEOUT)
    }

    /// Hands messages from a peer to the Node, whatever their epoch.
    ///
    /// # Errors
    /// `Overloaded` when the input queue is full: the messages are refused and counted
    /// (the protocol retries; the caller may too). `Stopped` when the runtime is gone.
    pub fn deliver(&self, from: NodeId, messages: Vec<Message>) -> Result<(), RuntimeError> {
        self.enqueue_messages(from, None, messages)
    }

    /// Hands messages a peer sent at topology `epoch` to the Node: at once if the Node runs
    /// that epoch or a later one, else once [`Runtime::set_topology`] brings it (K1; bounded
    /// by [`EPOCH_WAIT_MESSAGES_MAX`] and [`EPOCH_WAIT_TIMEOUT`]).
    ///
    /// # Errors
    /// As [`Runtime::deliver`].
    pub fn deliver_at(
        &self,
        from: NodeId,
        epoch: Epoch,
        messages: Vec<Message>,
    ) -> Result<(), RuntimeError> {
        self.enqueue_messages(from, Some(epoch), messages)
    }

    /// The epoch of the topology the Node runs on.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.stats.epoch.load(Ordering::SeqCst))
    }

    /// Moves the Node to `topology` if its epoch is newer than the one it runs: the Node is
    /// reopened on the same journal and data store (replaying the journal), transactions this
    /// node coordinates that are in flight get `Outcome::Unknown`, and peer messages waiting
    /// for this epoch are handed over. An older or equal epoch is ignored.
    ///
    /// # Errors
    /// `Overloaded` when the input queue is full (retry); `Stopped` when the runtime is gone.
    pub fn set_topology(&self, topology: Arc<Topology>) -> Result<(), RuntimeError> {
        self.set_topology_with_floor(topology, None)
    }

    /// As [`Runtime::set_topology`], for an epoch entered through a completed transition:
    /// the new Node adopts `floor` (`Node::adopt_epoch_floor`), and client transactions held
    /// by the seal start on it.
    ///
    /// # Errors
    /// As [`Runtime::set_topology`].
    pub fn set_topology_with_floor(
        &self,
        topology: Arc<Topology>,
        floor: Option<Timestamp>,
    ) -> Result<(), RuntimeError> {
        self.send_work(Work::Topology(topology, floor))
    }

    /// Queues control work: `Overloaded` when the input queue is full (the caller retries),
    /// `Stopped` when the runtime is gone.
    fn send_work(&self, work: Work) -> Result<(), RuntimeError> {
        match self.queue.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RuntimeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(RuntimeError::Stopped(
                "the runtime thread has exited".into(),
            )),
        }
    }

    /// Seals the Node's epoch before `bound` (`Node::seal`): from now on new client
    /// transactions are held (up to [`SEAL_HELD_CLIENTS_MAX`]) until a newer topology comes,
    /// and the durability rounds this node drives run at `bound`. Repeating it is harmless.
    ///
    /// # Errors
    /// `Overloaded` when the input queue is full (retry); `Stopped` when the runtime is gone.
    pub fn seal(&self, bound: Timestamp) -> Result<(), RuntimeError> {
        self.send_work(Work::Seal(bound))
    }

    /// The current seal's progress.
    pub fn seal_status(&self) -> SealStatus {
        self.stats.seal.lock().clone()
    }

    /// Whether this node's rows of `range` hold every write below `bound`: it replicates
    /// every shard meeting the range and each one's applied-before floor reached the bound
    /// (a node that gains the range may fetch it from here).
    pub fn applied_covers(&self, range: &TokenRange, bound: Timestamp) -> bool {
        let status = self.seal_status();
        if status.bound.is_none_or(|sealed| sealed < bound) {
            return false;
        }
        let meeting: Vec<bool> = status
            .shards
            .iter()
            .filter(|(shard, _)| shard.meets(range))
            .map(|(_, applied)| *applied)
            .collect();
        !meeting.is_empty() && meeting.iter().all(|applied| *applied)
    }

    fn enqueue_messages(
        &self,
        from: NodeId,
        epoch: Option<Epoch>,
        messages: Vec<Message>,
    ) -> Result<(), RuntimeError> {
        let count = messages.len() as u64;
        match self.queue.try_send(Work::Messages {
            from,
            epoch,
            messages,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats
                    .refused_messages
                    .fetch_add(count, Ordering::Relaxed);
                tracing::warn!(%from, count, "accord input queue full: peer messages refused");
                Err(RuntimeError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(RuntimeError::Stopped(
                "the runtime thread has exited".into(),
            )),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // A blocking send: the stop waits behind queued work rather than being refused.
        let _ = self.queue.send(Work::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The state of the Node's thread.
struct Driver {
    node: Node,
    node_config: NodeConfig,
    clock: MonotonicClock,
    peers: Box<dyn Peers>,
    observer: Box<dyn StepObserver>,
    stats: Arc<RuntimeStats>,
    timers: BinaryHeap<Reverse<(LocalTime, u64, Timer)>>,
    timer_seq: u64,
    pending: HashMap<ClientRequestId, SyncSender<Outcome>>,
    next_request: u64,
    /// Messages the Node addressed to itself, handled before the next queued input.
    backlog: VecDeque<Message>,
    /// Messages to peers and client replies of the steps since the last journal flush: they
    /// leave only after it (`release`).
    held: Effects,
    /// Steps since the last journal flush.
    held_steps: usize,
    /// Peer messages of epochs the Node does not run yet (K1).
    epoch_wait: EpochWait,
    /// The epoch seal in force (`Runtime::seal`), until the next topology.
    sealed: Option<Timestamp>,
    /// Client transactions the seal holds back, with when each came.
    held_clients: VecDeque<(Instant, Txn, SyncSender<Outcome>)>,
}

/// Opens a Node and, for an epoch entered through a completed transition, adopts its floor.
fn open_node(
    id: NodeId,
    topology: Arc<Topology>,
    config: NodeConfig,
    (journal, data): (Box<dyn Journal>, Box<dyn DataStore>),
    now: LocalTime,
    floor: Option<Timestamp>,
) -> concord_txn::Result<(Node, Effects)> {
    let (mut node, mut effects) = Node::open(id, topology, config, journal, data, now)?;
    if let Some(floor) = floor {
        let more = node.adopt_epoch_floor(now, floor)?;
        effects.messages.extend(more.messages);
        effects.timers.extend(more.timers);
        effects.replies.extend(more.replies);
    }
    Ok((node, effects))
}

impl Driver {
    /// Reopens the Node on `topology` (same journal and data store). `None` when the new
    /// Node cannot open: the runtime stops.
    fn reopen(self, topology: Arc<Topology>, floor: Option<Timestamp>) -> Option<Driver> {
        let Driver {
            node,
            node_config,
            clock,
            peers,
            mut observer,
            stats,
            pending,
            next_request,
            epoch_wait,
            held_clients,
            ..
        } = self;
        let id = node.id();
        let (journal, data) = node.into_storage();
        for (_, reply) in pending {
            // Its coordination died with the old Node: the outcome is unknown.
            let _ = reply.try_send(Outcome::Unknown);
        }
        let epoch = topology.epoch;
        // Replay applies writes: bracketed like a step, as at start.
        observer.before_step(Timestamp::ZERO);
        let (node, effects) = match open_node(
            id,
            topology,
            node_config.clone(),
            (journal, data),
            clock.now(),
            floor,
        ) {
            Ok(opened) => {
                observer.after_step(opened.0.apply_floor());
                opened
            }
            Err(error) => {
                tracing::error!(%error, "accord node failed to reopen on a new topology; the runtime stops");
                return None;
            }
        };
        stats.epoch.store(epoch.0, Ordering::SeqCst);
        stats.topology_changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %id, epoch = epoch.0, "accord runtime on a new topology");
        let mut driver = Driver {
            node,
            node_config,
            clock,
            peers,
            observer,
            stats,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            pending: HashMap::new(),
            next_request,
            backlog: VecDeque::new(),
            held: Effects::default(),
            held_steps: 0,
            epoch_wait: EpochWait::default(),
            sealed: None,
            held_clients: VecDeque::new(),
        };
        *driver.stats.seal.lock() = SealStatus::default();
        driver.absorb(effects);
        // What the seal held starts on the new epoch, unless its client gave up waiting.
        for (since, txn, reply) in held_clients {
            if since.elapsed() >= CLIENT_REPLY_TIMEOUT {
                let _ = reply.try_send(Outcome::Overloaded);
                continue;
            }
            if let Err(error) = driver.start_client(txn, reply) {
                tracing::error!(%error, "accord node failed; the runtime stops");
                return None;
            }
        }
        // Hand over what waited for this epoch; keep what waits for a later one.
        for (until, from, waited, messages) in epoch_wait.waiting {
            if waited <= epoch {
                if let Err(error) = driver.step_messages(from, messages) {
                    tracing::error!(%error, "accord node failed; the runtime stops");
                    return None;
                }
            } else {
                driver.epoch_wait.count += messages.len();
                driver
                    .epoch_wait
                    .waiting
                    .push_back((until, from, waited, messages));
            }
        }
        Some(driver)
    }

    fn epoch(&self) -> Epoch {
        self.node.topology().epoch
    }

    /// Drops (and counts) waiting messages whose time is up.
    fn expire_epoch_waits(&mut self) {
        let now = self.clock.now();
        while let Some((until, ..)) = self.epoch_wait.waiting.front() {
            if *until > now {
                break;
            }
            if let Some((_, from, epoch, messages)) = self.epoch_wait.waiting.pop_front() {
                self.epoch_wait.count -= messages.len();
                self.stats
                    .epoch_dropped
                    .fetch_add(messages.len() as u64, Ordering::Relaxed);
                tracing::warn!(%from, epoch = epoch.0, count = messages.len(), "accord messages dropped: their epoch did not arrive in time");
            }
        }
    }

    fn step_messages(&mut self, from: NodeId, messages: Vec<Message>) -> concord_txn::Result<()> {
        messages
            .into_iter()
            .try_for_each(|message| self.step(Input::Message { from, message }))
    }

    /// Handles peer messages now, or keeps them until their epoch's topology arrives.
    fn take_messages(
        &mut self,
        from: NodeId,
        epoch: Option<Epoch>,
        messages: Vec<Message>,
    ) -> concord_txn::Result<()> {
        match epoch {
            Some(epoch) if epoch > self.epoch() => {
                let count = messages.len();
                if self.epoch_wait.count + count > EPOCH_WAIT_MESSAGES_MAX {
                    self.stats
                        .epoch_dropped
                        .fetch_add(count as u64, Ordering::Relaxed);
                    tracing::warn!(%from, epoch = epoch.0, count, "accord messages dropped: too many wait for a newer epoch");
                    return Ok(());
                }
                let until = self.clock.now().after_micros(
                    u64::try_from(EPOCH_WAIT_TIMEOUT.as_micros()).unwrap_or(u64::MAX),
                );
                self.stats
                    .epoch_waited
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.epoch_wait.count += count;
                self.epoch_wait
                    .waiting
                    .push_back((until, from, epoch, messages));
                Ok(())
            }
            _ => self.step_messages(from, messages),
        }
    }

    fn run(&mut self, inputs: &Receiver<Work>) -> Exit {
        loop {
            self.expire_epoch_waits();
            if let Err(error) = self.fire_due_timers() {
                tracing::error!(%error, "accord node failed; the runtime stops");
                return Exit::Stop;
            }
            if let Some(message) = self.backlog.pop_front() {
                let from = self.node.id();
                if let Err(error) = self.step(Input::Message { from, message }) {
                    tracing::error!(%error, "accord node failed; the runtime stops");
                    return Exit::Stop;
                }
                continue;
            }
            // Queued work first, unsynced; once the queue is empty the group's records are
            // synced and its effects released, then the thread waits.
            let work = match inputs.try_recv() {
                Ok(work) => Ok(work),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {
                    if let Err(error) = self.release() {
                        tracing::error!(%error, "accord node failed; the runtime stops");
                        return Exit::Stop;
                    }
                    match self.next_deadline() {
                        None => inputs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(deadline) => {
                            let now = self.clock.now();
                            inputs.recv_timeout(Duration::from_micros(
                                deadline.0.saturating_sub(now.0),
                            ))
                        }
                    }
                }
            };
            let result = match work {
                Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = self.release() {
                        tracing::error!(%error, "accord node failed to sync its journal on stop");
                    }
                    return Exit::Stop;
                }
                Ok(Work::Topology(topology, floor)) => {
                    if topology.epoch > self.epoch() {
                        // The old Node's last steps leave before it is replaced.
                        if let Err(error) = self.release() {
                            tracing::error!(%error, "accord node failed; the runtime stops");
                            return Exit::Stop;
                        }
                        return Exit::Reopen(topology, floor);
                    }
                    Ok(())
                }
                Err(RecvTimeoutError::Timeout) => Ok(()),
                Ok(Work::Client { txn, reply }) => {
                    if self.sealed.is_some() {
                        if self.held_clients.len() >= SEAL_HELD_CLIENTS_MAX {
                            let _ = reply.try_send(Outcome::Overloaded);
                        } else {
                            self.stats.seal_held_clients.fetch_add(1, Ordering::Relaxed);
                            self.held_clients.push_back((Instant::now(), txn, reply));
                        }
                        Ok(())
                    } else {
                        self.start_client(txn, reply)
                    }
                }
                Ok(Work::Seal(bound)) => {
                    if self.sealed.is_none_or(|sealed| sealed < bound) && bound.epoch > self.epoch()
                    {
                        self.sealed = Some(bound);
                        self.node.seal(bound);
                        self.publish_seal();
                    }
                    Ok(())
                }
                Ok(Work::Messages {
                    from,
                    epoch,
                    messages,
                }) => self.take_messages(from, epoch, messages),
            };
            if let Err(error) = result {
                tracing::error!(%error, "accord node failed; the runtime stops");
                return Exit::Stop;
            }
        }
    }

    fn start_client(&mut self, txn: Txn, reply: SyncSender<Outcome>) -> concord_txn::Result<()> {
        let request_id = ClientRequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(request_id, reply);
        self.step(Input::Client { request_id, txn })
    }

    /// Publishes the seal's progress for other threads (`Runtime::seal_status`).
    fn publish_seal(&self) {
        let Some(bound) = self.sealed else {
            return;
        };
        let topology = self.node.topology();
        let shards = topology
            .shards
            .iter()
            .map(|shard| (shard.range, self.node.applied_covers(&shard.range, bound)))
            .collect();
        *self.stats.seal.lock() = SealStatus {
            bound: Some(bound),
            sealed_locally: self.node.sealed_locally(bound),
            shards,
        };
    }

    fn next_deadline(&self) -> Option<LocalTime> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let wait = self.epoch_wait.waiting.front().map(|(until, ..)| *until);
        match (timer, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire_due_timers(&mut self) -> concord_txn::Result<()> {
        loop {
            let now = self.clock.now();
            match self.timers.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => return Ok(()),
            }
            if let Some(Reverse((_, _, timer))) = self.timers.pop() {
                self.step(Input::Timer(timer))?;
            }
        }
    }

    fn step(&mut self, input: Input) -> concord_txn::Result<()> {
        if let Input::Message { from, .. } = &input
            && *from != self.node.id()
        {
            self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        }
        let before = self.node.stats().clone();
        self.observer.before_step(self.node.apply_floor());
        let result = self.node.handle_unflushed(self.clock.now(), input);
        self.observer.after_step(self.node.apply_floor());
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.count_protocol(&before);
        self.hold(result?);
        if self.sealed.is_some() {
            self.publish_seal();
        }
        self.held_steps += 1;
        if self.held_steps >= STEP_GROUP_MAX {
            self.release()?;
        }
        Ok(())
    }

    /// Keeps an unflushed step's messages to peers and client replies until `release`;
    /// its messages to itself and its timers are acted on at once (nothing leaves the node).
    fn hold(&mut self, effects: Effects) {
        let own = self.node.id();
        for (to, message) in effects.messages {
            if to == own {
                self.backlog.push_back(message);
            } else {
                self.held.messages.push((to, message));
            }
        }
        for (at, timer) in effects.timers {
            self.timer_seq += 1;
            self.timers.push(Reverse((at, self.timer_seq, timer)));
        }
        self.held.replies.extend(effects.replies);
    }

    /// Syncs the journal records of the held steps (one sync for the group), then sends their
    /// messages and replies.
    fn release(&mut self) -> concord_txn::Result<()> {
        if self.held_steps == 0 {
            return Ok(());
        }
        self.node.flush()?;
        self.held_steps = 0;
        self.stats.journal_flushes.fetch_add(1, Ordering::Relaxed);
        self.send_held();
        Ok(())
    }

    /// Adds what the Node's counters gained in one step to [`RuntimeStats`] (a reopened Node
    /// counts from zero again; the runtime's sums go on).
    fn count_protocol(&self, before: &NodeStats) {
        let after = self.node.stats();
        let add = |counter: &AtomicU64, before: u64, after: u64| {
            let gained = after.saturating_sub(before);
            if gained > 0 {
                counter.fetch_add(gained, Ordering::Relaxed);
            }
        };
        add(
            &self.stats.fast_path_commits,
            before.fast_path_commits,
            after.fast_path_commits,
        );
        add(
            &self.stats.slow_path_commits,
            before.slow_path_commits,
            after.slow_path_commits,
        );
        add(
            &self.stats.recoveries_started,
            before.recoveries_started,
            after.recoveries_started,
        );
        add(
            &self.stats.invalidations,
            before.invalidations,
            after.invalidations,
        );
    }

    /// Acts on effects whose journal records are already durable (a Node's open): keeps
    /// what stays in the node, sends the rest at once.
    fn absorb(&mut self, effects: Effects) {
        self.hold(effects);
        self.send_held();
    }

    /// Sends the held messages (one batch per run of messages to the same peer) and hands
    /// the held replies to their clients.
    fn send_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let mut outgoing: Vec<(NodeId, Vec<Message>)> = Vec::new();
        for (to, message) in held.messages {
            match outgoing.last_mut() {
                Some((last, batch)) if *last == to => batch.push(message),
                _ => outgoing.push((to, vec![message])),
            }
        }
        for (to, messages) in outgoing {
            self.stats
                .messages_sent
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            self.peers.send(to, messages);
        }
        for (request_id, outcome) in held.replies {
            if let Outcome::Committed { execute_at, .. } = &outcome {
                self.stats.committed.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .committed_max_hlc
                    .fetch_max(execute_at.hlc, Ordering::SeqCst);
            }
            if let Some(reply) = self.pending.remove(&request_id) {
                // The client may have stopped waiting (timeout): nothing to do then.
                let _ = reply.try_send(outcome);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
