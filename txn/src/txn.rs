//! What a transaction is: its keys, what it reads, and the update it computes from what it
//! read; plus the dependency sets ([`Deps`]) the protocol attaches to it.
//!
//! An [`Update`] is a pure function of the values read at executeAt, so any replica (or a
//! recovery coordinator) that reads at executeAt computes the same writes. That determinism
//! is what lets the coordinator answer the client before Apply reaches the replicas.

use std::collections::{BTreeMap, BTreeSet};

use concord_storage::partitioner::{Token, token};

use crate::timestamp::{TxnId, TxnKind};

/// The largest number of keys one transaction may name.
pub const TXN_KEYS_MAX: usize = 64;

/// A key the protocol orders transactions on: a partition's token and its serialized
/// partition key. Ordered by token first, so keys of one shard are contiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub token: Token,
    pub partition: Vec<u8>,
}

impl Key {
    /// Builds the key of a serialized partition key, hashing it as Cassandra does.
    pub fn from_partition(partition: Vec<u8>) -> Key {
        Key {
            token: token(&partition),
            partition,
        }
    }

    /// A key for tests and the simulator, named by a number.
    pub fn numbered(n: u64) -> Key {
        Key::from_partition(n.to_be_bytes().to_vec())
    }
}

/// The values read: key → the value at executeAt (`None` when absent).
pub type ReadData = BTreeMap<Key, Option<Vec<u8>>>;

/// The writes a transaction makes: key → new value (`None` deletes).
pub type Writes = BTreeMap<Key, Option<Vec<u8>>>;

/// How a transaction changes data, as a function of what it read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Update {
    /// Reads only.
    None,
    /// Appends each value to the list stored at its key (lists are big-endian u64s).
    Append(Vec<(Key, u64)>),
    /// Moves `amount` from one account to another if the source balance allows; balances are
    /// big-endian i64 and a missing account holds `initial_balance`.
    Transfer {
        from: Key,
        to: Key,
        amount: i64,
        initial_balance: i64,
    },
    /// Sets values blindly.
    Put(Vec<(Key, Option<Vec<u8>>)>),
    /// A body only the node's [`DataStore`](crate::storage::DataStore) understands (the server's
    /// CQL transactions): it reads the transaction's keys with
    /// [`DataStore::read`](crate::storage::DataStore::read) and computes the writes with
    /// [`DataStore::compute`](crate::storage::DataStore::compute), deterministically from the
    /// body and the values read. `writes` names every key it may write; an empty `writes`
    /// makes a read-only transaction.
    Opaque { writes: Vec<Key>, body: Vec<u8> },
}

impl Update {
    /// Computes the writes from the values read at executeAt. Deterministic. `None` for an
    /// [`Update::Opaque`] body, which only a data store can compute.
    pub fn compute(&self, reads: &ReadData) -> Option<Writes> {
        let mut writes = Writes::new();
        match self {
            Update::None => {}
            Update::Opaque { .. } => return None,
            Update::Append(appends) => {
                for (key, value) in appends {
                    let current = writes
                        .get(key)
                        .cloned()
                        .flatten()
                        .or_else(|| reads.get(key).cloned().flatten())
                        .unwrap_or_default();
                    let mut list = current;
                    list.extend_from_slice(&value.to_be_bytes());
                    writes.insert(key.clone(), Some(list));
                }
            }
            Update::Transfer {
                from,
                to,
                amount,
                initial_balance,
            } => {
                let balance = |key: &Key| -> i64 {
                    reads
                        .get(key)
                        .cloned()
                        .flatten()
                        .map_or(*initial_balance, |bytes| {
                            decode_balance(&bytes).unwrap_or(*initial_balance)
                        })
                };
                let (from_balance, to_balance) = (balance(from), balance(to));
                if from != to && from_balance >= *amount {
                    writes.insert(
                        from.clone(),
                        Some((from_balance - amount).to_be_bytes().to_vec()),
                    );
                    writes.insert(
                        to.clone(),
                        Some((to_balance + amount).to_be_bytes().to_vec()),
                    );
                }
            }
            Update::Put(puts) => {
                for (key, value) in puts {
                    writes.insert(key.clone(), value.clone());
                }
            }
        }
        Some(writes)
    }

    /// The keys the update may write.
    pub fn keys(&self) -> Vec<Key> {
        match self {
            Update::None => Vec::new(),
            Update::Append(appends) => appends.iter().map(|(key, _)| key.clone()).collect(),
            Update::Transfer { from, to, .. } => vec![from.clone(), to.clone()],
            Update::Put(puts) => puts.iter().map(|(key, _)| key.clone()).collect(),
            Update::Opaque { writes, .. } => writes.clone(),
        }
    }
}

/// Decodes a list written by [`Update::Append`].
pub fn decode_list(bytes: &[u8]) -> Option<Vec<u64>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                u64::from_be_bytes(word)
            })
            .collect(),
    )
}

/// Decodes a balance written by [`Update::Transfer`].
pub fn decode_balance(bytes: &[u8]) -> Option<i64> {
    let word: [u8; 8] = bytes.try_into().ok()?;
    Some(i64::from_be_bytes(word))
}

/// A transaction's definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    kind: TxnKind,
    /// Every key the transaction reads or writes, ascending, no duplicates.
    keys: Vec<Key>,
    /// The keys whose values the client gets back.
    reads: Vec<Key>,
    update: Update,
}

impl Txn {
    /// Builds a transaction that reads `reads` and applies `update`. Its keys are the union;
    /// every key is read at executeAt because the update is computed from them.
    ///
    /// # Panics
    /// If it names no key or more than [`TXN_KEYS_MAX`].
    pub fn new(reads: Vec<Key>, update: Update) -> Txn {
        let mut keys: Vec<Key> = reads.iter().cloned().chain(update.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert!(!keys.is_empty() && keys.len() <= TXN_KEYS_MAX);
        let kind = if update.keys().is_empty() {
            TxnKind::Read
        } else {
            TxnKind::Write
        };
        Txn {
            kind,
            keys,
            reads,
            update,
        }
    }

    pub fn kind(&self) -> TxnKind {
        self.kind
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn reads(&self) -> &[Key] {
        &self.reads
    }

    pub fn update(&self) -> &Update {
        &self.update
    }

    /// The home key: where the transaction's progress is tracked.
    pub fn home_key(&self) -> &Key {
        &self.keys[0]
    }
}

/// A dependency set: each dependency with the keys it conflicts on. A replica waits only on
/// deps that conflict on keys it replicates; the keys also route status queries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Deps(BTreeMap<TxnId, BTreeSet<Key>>);

impl Deps {
    pub fn new() -> Deps {
        Deps::default()
    }

    pub fn insert(&mut self, txn_id: TxnId, key: Key) {
        self.0.entry(txn_id).or_default().insert(key);
    }

    pub fn remove(&mut self, txn_id: TxnId) {
        self.0.remove(&txn_id);
    }

    pub fn union(&mut self, other: &Deps) {
        for (txn_id, key) in other.iter() {
            self.insert(txn_id, key.clone());
        }
    }

    pub fn contains(&self, txn_id: TxnId) -> bool {
        self.0.contains_key(&txn_id)
    }

    /// The number of dependencies (not keys).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every (dependency, key) pair, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (TxnId, &Key)> {
        self.0
            .iter()
            .flat_map(|(txn_id, keys)| keys.iter().map(move |key| (*txn_id, key)))
    }

    /// The dependencies, ascending.
    pub fn txn_ids(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.0.keys().copied()
    }

    /// The keys `txn_id` conflicts on.
    pub fn keys_of(&self, txn_id: TxnId) -> impl Iterator<Item = &Key> {
        self.0.get(&txn_id).into_iter().flatten()
    }

    /// The number of (dependency, key) pairs.
    pub fn pair_count(&self) -> usize {
        self.0.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_functions_of_reads() {
        let (a, b) = (Key::numbered(1), Key::numbered(2));
        let append = Update::Append(vec![(a.clone(), 7), (b.clone(), 8)]);
        let mut reads = ReadData::new();
        reads.insert(a.clone(), Some(5u64.to_be_bytes().to_vec()));
        reads.insert(b.clone(), None);
        let writes = append.compute(&reads).expect("built in");
        assert_eq!(
            decode_list(writes[&a].as_deref().unwrap_or_default()),
            Some(vec![5, 7])
        );
        assert_eq!(
            decode_list(writes[&b].as_deref().unwrap_or_default()),
            Some(vec![8])
        );

        let transfer = Update::Transfer {
            from: a.clone(),
            to: b.clone(),
            amount: 30,
            initial_balance: 100,
        };
        let writes = transfer.compute(&ReadData::new()).expect("built in");
        assert_eq!(
            decode_balance(writes[&a].as_deref().unwrap_or_default()),
            Some(70)
        );
        assert_eq!(
            decode_balance(writes[&b].as_deref().unwrap_or_default()),
            Some(130)
        );
        let too_much = Update::Transfer {
            from: a,
            to: b,
            amount: 300,
            initial_balance: 100,
        };
        assert!(
            too_much
                .compute(&ReadData::new())
                .expect("built in")
                .is_empty()
        );
    }
}
