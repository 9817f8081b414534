//! The durable side of the metadata Raft group: its log, vote and state
//! machine (with snapshots) on the storage [`Engine`], in `Family::Meta`
//! under the key prefix `cluster/raft/` (no family of its own).
//!
//! ```text
//!   cluster/raft/vote            the vote (term, voted for), synced before any reply
//!   cluster/raft/committed       the last committed log id (a hint for restart)
//!   cluster/raft/purged          the last purged log id
//!   cluster/raft/log/<index:u64 BE>  one log entry (serde JSON)
//!   cluster/raft/state           the applied state: last applied id, membership, ClusterState
//!   cluster/raft/snapshot        the last snapshot built or installed (meta + data)
//! ```
//!
//! Every write is one `WriteBatch` with `Durability::Sync`: a log append is
//! reported flushed to openraft only after the engine synced it, and an
//! applied state is never ahead of a log the node could lose. Metadata
//! writes are rare (membership, keyspaces, DDL), so syncing each costs
//! nothing that matters.
//!
//! After applying (or installing a snapshot) the state machine publishes a
//! new [`ClusterView`] on its watch channel; it never publishes a state it
//! has not stored.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use concord_storage::engine::{
    Direction, Durability, Engine, Family, KeyRange, WriteBatch, prefix_successor,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::MetaTypes;
use super::state::{ClusterState, CommandResult};
use super::view::ClusterView;

const VOTE_KEY: &[u8] = b"cluster/raft/vote";
const COMMITTED_KEY: &[u8] = b"cluster/raft/committed";
const PURGED_KEY: &[u8] = b"cluster/raft/purged";
const LOG_PREFIX: &[u8] = b"cluster/raft/log/";
const STATE_KEY: &[u8] = b"cluster/raft/state";
const SNAPSHOT_KEY: &[u8] = b"cluster/raft/snapshot";

type NodeId = u64;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn log_key(index: u64) -> Vec<u8> {
    let mut key = LOG_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn log_prefix_end() -> Vec<u8> {
    prefix_successor(LOG_PREFIX).unwrap_or_else(|| LOG_PREFIX.to_vec())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    serde_json::to_vec(value).map_err(|e| AnyError::new(&e))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, AnyError> {
    serde_json::from_slice(bytes).map_err(|e| AnyError::new(&e))
}

fn read<E: Engine, T: for<'de> Deserialize<'de>>(
    engine: &E,
    key: &[u8],
) -> Result<Option<T>, AnyError> {
    match engine.get(Family::Meta, key) {
        Ok(Some(bytes)) => decode(&bytes).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(AnyError::new(&e)),
    }
}

fn write<E: Engine>(engine: &E, batch: WriteBatch) -> Result<(), AnyError> {
    engine
        .write(batch, Durability::Sync)
        .map_err(|e| AnyError::new(&e))
}

/// The Raft log and vote on an engine. Cheap to clone (it is also its own
/// log reader).
#[derive(Debug)]
pub struct LogStore<E: Engine> {
    engine: Arc<E>,
}

impl<E: Engine> Clone for LogStore<E> {
    fn clone(&self) -> Self {
        LogStore {
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<E: Engine> LogStore<E> {
    pub fn new(engine: Arc<E>) -> LogStore<E> {
        LogStore { engine }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, AnyError> {
        let range = KeyRange::half_open(LOG_PREFIX.to_vec(), log_prefix_end());
        let mut scan = self
            .engine
            .scan(Family::Meta, &range, Direction::Reverse)
            .map_err(|e| AnyError::new(&e))?;
        match scan.next() {
            Some(Ok((_, value))) => Ok(Some(decode::<Entry<MetaTypes>>(&value)?.log_id)),
            Some(Err(e)) => Err(AnyError::new(&e)),
            None => Ok(None),
        }
    }
}

impl<E: Engine> RaftLogReader<MetaTypes> for LogStore<E> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<MetaTypes>>> {
        let start = match range.start_bound() {
            Bound::Included(index) => log_key(*index),
            Bound::Excluded(index) => log_key(index.saturating_add(1)),
            Bound::Unbounded => LOG_PREFIX.to_vec(),
        };
        let end = match range.end_bound() {
            Bound::Included(index) => Bound::Included(log_key(*index)),
            Bound::Excluded(index) => Bound::Excluded(log_key(*index)),
            Bound::Unbounded => Bound::Excluded(log_prefix_end()),
        };
        let key_range = KeyRange {
            start: Bound::Included(start),
            end,
        };
        let scan = self
            .engine
            .scan(Family::Meta, &key_range, Direction::Forward)
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let mut entries = Vec::new();
        for item in scan {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            entries.push(decode(&value).map_err(StorageIOError::read_logs)?);
        }
        Ok(entries)
    }
}

impl<E: Engine> RaftLogStorage<MetaTypes> for LogStore<E> {
    type LogReader = LogStore<E>;

    async fn get_log_state(&mut self) -> StoreResult<LogState<MetaTypes>> {
        let last_purged: Option<LogId<NodeId>> =
            read(&*self.engine, PURGED_KEY).map_err(StorageIOError::read_logs)?;
        let last_entry = self.last_entry_id().map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_log_id: last_entry.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.put(
            Family::Meta,
            VOTE_KEY.to_vec(),
            encode(vote).map_err(StorageIOError::write_vote)?,
        );
        write(&*self.engine, batch).map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Ok(read(&*self.engine, VOTE_KEY).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.put(
            Family::Meta,
            COMMITTED_KEY.to_vec(),
            encode(&committed).map_err(StorageIOError::write)?,
        );
        write(&*self.engine, batch).map_err(StorageIOError::write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            read(&*self.engine, COMMITTED_KEY).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaTypes>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<MetaTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            let value = encode(&entry).map_err(StorageIOError::write_logs)?;
            batch.put(Family::Meta, log_key(entry.log_id.index), value);
        }
        let result = self.engine.write(batch, Durability::Sync);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(AnyError::new(&e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.delete_range(Family::Meta, log_key(log_id.index), log_prefix_end());
        write(&*self.engine, batch).map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.put(
            Family::Meta,
            PURGED_KEY.to_vec(),
            encode(&log_id).map_err(StorageIOError::write_logs)?,
        );
        let end = match log_id.index.checked_add(1) {
            Some(next) => log_key(next),
            None => log_prefix_end(),
        };
        batch.delete_range(Family::Meta, log_key(0), end);
        write(&*self.engine, batch).map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}

/// What the state machine stores: the applied state and what Raft needs to
/// resume from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    cluster: ClusterState,
}

/// A stored snapshot: its meta and the serialized [`Applied`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The metadata state machine on an engine. Clones share one state (the
/// snapshot builder is a clone).
#[derive(Debug)]
pub struct StateMachine<E: Engine> {
    engine: Arc<E>,
    applied: Arc<tokio::sync::Mutex<Applied>>,
    view: Arc<watch::Sender<Arc<ClusterView>>>,
}

impl<E: Engine> Clone for StateMachine<E> {
    fn clone(&self) -> Self {
        StateMachine {
            engine: Arc::clone(&self.engine),
            applied: Arc::clone(&self.applied),
            view: Arc::clone(&self.view),
        }
    }
}

impl<E: Engine> StateMachine<E> {
    /// Opens the state machine stored in `engine` (empty if none) and
    /// publishes its view.
    ///
    /// # Errors
    /// When the engine fails or the stored state does not decode.
    pub fn open(engine: Arc<E>) -> Result<StateMachine<E>, AnyError> {
        let applied: Applied = read(&*engine, STATE_KEY)?.unwrap_or_default();
        let view = watch::Sender::new(Arc::new(view_of(&applied)));
        Ok(StateMachine {
            engine,
            applied: Arc::new(tokio::sync::Mutex::new(applied)),
            view: Arc::new(view),
        })
    }

    /// A receiver of every view this state machine publishes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    fn store(&self, applied: &Applied, snapshot: Option<&StoredSnapshot>) -> Result<(), AnyError> {
        let mut batch = WriteBatch::new();
        batch.put(Family::Meta, STATE_KEY.to_vec(), encode(applied)?);
        if let Some(snapshot) = snapshot {
            batch.put(Family::Meta, SNAPSHOT_KEY.to_vec(), encode(snapshot)?);
        }
        write(&*self.engine, batch)
    }

    fn publish(&self, applied: &Applied) {
        let view = Arc::new(view_of(applied));
        self.view.send_if_modified(|current| {
            if **current == *view {
                false
            } else {
                *current = view;
                true
            }
        });
    }
}

fn view_of(applied: &Applied) -> ClusterView {
    let index = applied.last_applied.map_or(0, |id| id.index);
    ClusterView::new(index, applied.cluster.clone())
}

impl<E: Engine> RaftSnapshotBuilder<MetaTypes> for StateMachine<E> {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<MetaTypes>> {
        let applied = self.applied.lock().await;
        let data = encode(&*applied).map_err(StorageIOError::read_state_machine)?;
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Family::Meta,
            SNAPSHOT_KEY.to_vec(),
            encode(&stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?,
        );
        write(&*self.engine, batch)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<E: Engine> RaftStateMachine<MetaTypes> for StateMachine<E> {
    type SnapshotBuilder = StateMachine<E>;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let applied = self.applied.lock().await;
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<MetaTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.lock().await;
        let mut next = applied.clone();
        let mut results = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => next.cluster.unchanged(),
                EntryPayload::Normal(command) => next.cluster.apply(&command),
                EntryPayload::Membership(membership) => {
                    next.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    next.cluster.unchanged()
                }
            };
            results.push(result);
        }
        self.store(&next, None)
            .map_err(StorageIOError::write_state_machine)?;
        *applied = next;
        self.publish(&applied);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut installed: Applied =
            decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        installed.last_applied = meta.last_log_id;
        installed.last_membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let mut applied = self.applied.lock().await;
        self.store(&installed, Some(&stored))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        *applied = installed;
        self.publish(&applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<MetaTypes>>> {
        let stored: Option<StoredSnapshot> =
            read(&*self.engine, SNAPSHOT_KEY).map_err(StorageIOError::read_state_machine)?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use concord_storage::engine::EngineOptions;
    use concord_storage::memory::MemoryEngine;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct MemoryBuilder;

    impl StoreBuilder<MetaTypes, LogStore<MemoryEngine>, StateMachine<MemoryEngine>> for MemoryBuilder {
        async fn build(
            &self,
        ) -> StoreResult<((), LogStore<MemoryEngine>, StateMachine<MemoryEngine>)> {
            let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
            let log = LogStore::new(Arc::clone(&engine));
            let machine = StateMachine::open(engine).map_err(StorageIOError::read_state_machine)?;
            Ok(((), log, machine))
        }
    }

    /// openraft's own storage conformance suite, on the in-memory engine.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(MemoryBuilder).expect("the storage suite passes");
    }
}
