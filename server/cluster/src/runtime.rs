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
//! - **Time**: [`MonotonicClock`] gives `LocalTime` in microseconds since the Unix epoch,
//!   read from the wall clock once and advanced by `Instant` after, so it never goes back.
//!   The Node's hybrid logical clock runs on it, so executeAt is a wall-clock-like write time.
//! - **Timers** live in a heap on the thread, which sleeps on the queue until the next one.
//! - **Messages to itself** short-circuit: the Node handles most inside `handle`; any left in
//!   the effects go back into the thread's local backlog, never through [`Peers`].
//! - **Journal**: whatever `Journal` the caller gives (the server gives `EngineJournal` on the
//!   node's engine, `Durability::Sync`); the Node is opened on the thread, so a restarted
//!   runtime replays its journal before it takes any input (K4 of design/cluster.md).
//! - **Steps**: before and after every `Node::handle`, a [`StepObserver`] learns the node's
//!   apply floor (`Node::apply_floor`); the server keeps its change feed's frontier below it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_txn::messages::Message;
use concord_txn::node::{ClientRequestId, Effects, Input, Node, NodeConfig, Outcome, Timer};
use concord_txn::storage::{DataStore, Journal};
use concord_txn::timestamp::{LocalTime, NodeId, Timestamp};
use concord_txn::topology::Topology;
use concord_txn::txn::Txn;

/// The most inputs (client submissions and peer messages) waiting for the Node's thread.
pub const INPUT_QUEUE_CAPACITY: usize = 4_096;
/// How long [`Runtime::execute`] waits for a transaction's outcome by default.
pub const CLIENT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Runtime::start`] waits for the Node to open (journal replay included).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Microseconds since the Unix epoch that never go back: the wall clock read once, then
/// `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
    origin_micros: u64,
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        let origin_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        MonotonicClock {
            origin: Instant::now(),
            origin_micros,
        }
    }

    pub fn now(&self) -> LocalTime {
        let elapsed = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        LocalTime(self.origin_micros.saturating_add(elapsed))
    }
}

/// What the runtime needs to open its Node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub node: NodeId,
    pub topology: Arc<Topology>,
    pub node_config: NodeConfig,
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
    /// Transactions committed through this node's coordinator.
    pub committed: AtomicU64,
    /// The highest executeAt (HLC microseconds) of a committed transaction answered here.
    pub committed_max_hlc: AtomicU64,
}

enum Work {
    Client {
        txn: Txn,
        reply: SyncSender<Outcome>,
    },
    Messages {
        from: NodeId,
        messages: Vec<Message>,
    },
    Stop,
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
                let clock = MonotonicClock::new();
                let journal: Box<dyn Journal> = journal;
                let data: Box<dyn DataStore> = data;
                // Replay applies writes too: the observer brackets it like a step, so a
                // change feed paced by the floor passes the replayed writes before the
                // runtime is reported open (a replica rebuilt right after must find the
                // watermark above every write in the row store).
                observer.before_step(Timestamp::ZERO);
                let opened = Node::open(
                    config.node,
                    config.topology,
                    config.node_config,
                    journal,
                    data,
                    clock.now(),
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
                let mut driver = Driver {
                    node,
                    clock,
                    peers,
                    observer,
                    stats: thread_stats,
                    timers: BinaryHeap::new(),
                    timer_seq: 0,
                    pending: HashMap::new(),
                    next_request: 0,
                    backlog: VecDeque::new(),
                };
                driver.absorb(effects);
                driver.run(&inputs);
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

    /// Hands messages from a peer to the Node.
    ///
    /// # Errors
    /// `Overloaded` when the input queue is full: the messages are refused and counted
    /// (the protocol retries; the caller may too). `Stopped` when the runtime is gone.
    pub fn deliver(&self, from: NodeId, messages: Vec<Message>) -> Result<(), RuntimeError> {
        let count = messages.len() as u64;
        match self.queue.try_send(Work::Messages { from, messages }) {
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
}

impl Driver {
    fn run(&mut self, inputs: &Receiver<Work>) {
        loop {
            if let Err(error) = self.fire_due_timers() {
                tracing::error!(%error, "accord node failed; the runtime stops");
                return;
            }
            if let Some(message) = self.backlog.pop_front() {
                let from = self.node.id();
                if let Err(error) = self.step(Input::Message { from, message }) {
                    tracing::error!(%error, "accord node failed; the runtime stops");
                    return;
                }
                continue;
            }
            let work = match self.next_deadline() {
                None => inputs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    let now = self.clock.now();
                    inputs.recv_timeout(Duration::from_micros(deadline.0.saturating_sub(now.0)))
                }
            };
            let result = match work {
                Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => Ok(()),
                Ok(Work::Client { txn, reply }) => {
                    let request_id = ClientRequestId(self.next_request);
                    self.next_request += 1;
                    self.pending.insert(request_id, reply);
                    self.step(Input::Client { request_id, txn })
                }
                Ok(Work::Messages { from, messages }) => messages
                    .into_iter()
                    .try_for_each(|message| self.step(Input::Message { from, message })),
            };
            if let Err(error) = result {
                tracing::error!(%error, "accord node failed; the runtime stops");
                return;
            }
        }
    }

    fn next_deadline(&self) -> Option<LocalTime> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
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
        self.observer.before_step(self.node.apply_floor());
        let result = self.node.handle(self.clock.now(), input);
        self.observer.after_step(self.node.apply_floor());
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.absorb(result?);
        Ok(())
    }

    fn absorb(&mut self, effects: Effects) {
        let own = self.node.id();
        let mut outgoing: Vec<(NodeId, Vec<Message>)> = Vec::new();
        for (to, message) in effects.messages {
            if to == own {
                self.backlog.push_back(message);
                continue;
            }
            match outgoing.last_mut() {
                Some((last, batch)) if *last == to => batch.push(message),
                _ => outgoing.push((to, vec![message])),
            }
        }
        for (to, messages) in outgoing {
            self.peers.send(to, messages);
        }
        for (at, timer) in effects.timers {
            self.timer_seq += 1;
            self.timers.push(Reverse((at, self.timer_seq, timer)));
        }
        for (request_id, outcome) in effects.replies {
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
mod tests;
