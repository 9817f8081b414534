//! The in-memory engine: a `BTreeMap` per family behind a lock.
//!
//! It exists for deterministic simulation and fast tests, beside the RocksDB
//! engine, and passes the same conformance suite. Snapshots are copy-on-write
//! (`Arc<BTreeMap>`): taking one is O(1), the next write after it copies the
//! family it touches.
//!
//! With crash simulation on, the engine keeps a second, durable state: synced
//! writes reach it, buffered ones wait until the next sync, and
//! [`MemoryEngine::simulate_crash`] throws away exactly what a crash of a real
//! engine with the same `Durability` may lose.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::{
    BatchOp, CompactionContext, Direction, Durability, Engine, EngineOptions, Family,
    FilterDecision, KeyRange, KeyValue, ReadView, ScanIter, WriteBatch,
};
use crate::{Error, Result};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Default)]
struct Families {
    maps: [Arc<Map>; 4],
}

impl Families {
    fn map(&self, family: Family) -> &Arc<Map> {
        &self.maps[family_idx(family)]
    }

    fn map_mut(&mut self, family: Family) -> &mut Map {
        Arc::make_mut(&mut self.maps[family_idx(family)])
    }
}

fn family_idx(family: Family) -> usize {
    match family {
        Family::Meta => 0,
        Family::Rows => 1,
        Family::Txn => 2,
        Family::Feed => 3,
    }
}

struct State {
    current: Families,
    /// Present when crash simulation is on: what survives a crash.
    durable: Option<Families>,
    /// Buffered batches not yet in `durable`.
    unsynced: Vec<WriteBatch>,
}

/// An engine that keeps everything in memory.
pub struct MemoryEngine {
    options: EngineOptions,
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("options", &self.options)
            .finish()
    }
}

impl MemoryEngine {
    /// Opens an empty engine.
    pub fn new(options: EngineOptions) -> MemoryEngine {
        MemoryEngine {
            options,
            state: Mutex::new(State {
                current: Families::default(),
                durable: None,
                unsynced: Vec::new(),
            }),
        }
    }

    /// Opens an empty engine that tracks durability, for crash simulation.
    pub fn with_crash_simulation(options: EngineOptions) -> MemoryEngine {
        let engine = MemoryEngine::new(options);
        engine.state.lock().durable = Some(Families::default());
        engine
    }

    /// Loses every write that was not made durable, as a crash would.
    /// Without crash simulation this is a no-op.
    pub fn simulate_crash(&self) {
        let mut state = self.state.lock();
        if let Some(durable) = state.durable.clone() {
            state.current = durable;
            state.unsynced.clear();
        }
    }

    /// Resolves a batch against `families` into operations that cannot
    /// fail (merges become puts), without changing anything: a merge that
    /// fails leaves nothing half-applied, and applying in place afterwards
    /// copies no map (unless a snapshot shares it).
    fn resolve(&self, families: &Families, batch: &WriteBatch) -> Result<Vec<BatchOp>> {
        // What this batch has written so far, newest state per key.
        let mut overlay: BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        let mut deleted_ranges: Vec<(Family, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut resolved = Vec::with_capacity(batch.len());
        for op in batch.ops() {
            match op {
                BatchOp::Put { family, key, value } => {
                    overlay.insert((*family, key.clone()), Some(value.clone()));
                    resolved.push(op.clone());
                }
                BatchOp::Delete { family, key } => {
                    overlay.insert((*family, key.clone()), None);
                    resolved.push(op.clone());
                }
                BatchOp::DeleteRange { family, start, end } => {
                    overlay.retain(|(overlay_family, key), _| {
                        overlay_family != family || key < start || key >= end
                    });
                    deleted_ranges.push((*family, start.clone(), end.clone()));
                    resolved.push(op.clone());
                }
                BatchOp::Merge {
                    family,
                    key,
                    operand,
                } => {
                    let Some(merge_operator) = self.options.family(*family).merge_operator else {
                        return Err(Error::Internal(format!(
                            "merge into family {} which has no merge operator",
                            family.name()
                        )));
                    };
                    let existing: Option<&[u8]> = match overlay.get(&(*family, key.clone())) {
                        Some(written) => written.as_deref(),
                        None if deleted_ranges.iter().any(|(range_family, start, end)| {
                            range_family == family && key >= start && key < end
                        }) =>
                        {
                            None
                        }
                        None => families.map(*family).get(key).map(Vec::as_slice),
                    };
                    let merged = merge_operator
                        .merge(key, existing, &[operand.as_slice()])
                        .ok_or_else(|| {
                            Error::corruption(format!(
                                "merge operator {} rejected its input",
                                merge_operator.name()
                            ))
                        })?;
                    overlay.insert((*family, key.clone()), Some(merged.clone()));
                    resolved.push(BatchOp::Put {
                        family: *family,
                        key: key.clone(),
                        value: merged,
                    });
                }
            }
        }
        Ok(resolved)
    }

    /// Applies resolved operations (no merges) in place.
    fn apply_resolved(families: &mut Families, resolved: &[BatchOp]) {
        for op in resolved {
            match op {
                BatchOp::Put { family, key, value } => {
                    families.map_mut(*family).insert(key.clone(), value.clone());
                }
                BatchOp::Delete { family, key } => {
                    families.map_mut(*family).remove(key);
                }
                BatchOp::DeleteRange { family, start, end } => {
                    let map = families.map_mut(*family);
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in doomed {
                        map.remove(&key);
                    }
                }
                BatchOp::Merge { .. } => {
                    unreachable!("resolve turns every merge into a put")
                }
            }
        }
    }
}

/// A copy-on-write view of the families.
pub struct MemorySnapshot {
    families: Families,
}

impl std::fmt::Debug for MemorySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemorySnapshot")
    }
}

impl ReadView for MemorySnapshot {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.families.map(family).get(key).cloned())
    }

    fn scan(&self, family: Family, range: &KeyRange, direction: Direction) -> Result<ScanIter<'_>> {
        Ok(Box::new(MapScan {
            map: self.families.map(family).clone(),
            start: range.start.clone(),
            end: range.end.clone(),
            direction,
        }))
    }
}

/// Steps through an `Arc<Map>` without borrowing it, one range lookup per
/// item, narrowing the range as it goes.
struct MapScan {
    map: Arc<Map>,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    direction: Direction,
}

impl Iterator for MapScan {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if let (
            Bound::Included(start) | Bound::Excluded(start),
            Bound::Included(end) | Bound::Excluded(end),
        ) = (&self.start, &self.end)
        {
            // BTreeMap::range panics on an inverted or empty-exclusive range.
            let empty = start > end
                || (start == end
                    && !(matches!(self.start, Bound::Included(_))
                        && matches!(self.end, Bound::Included(_))));
            if empty {
                return None;
            }
        }
        let bounds = (
            self.start.as_ref().map(Vec::as_slice),
            self.end.as_ref().map(Vec::as_slice),
        );
        let mut range = self.map.range::<[u8], _>(bounds);
        let (key, value) = match self.direction {
            Direction::Forward => range.next()?,
            Direction::Reverse => range.next_back()?,
        };
        let item = (key.clone(), value.clone());
        match self.direction {
            Direction::Forward => self.start = Bound::Excluded(key.clone()),
            Direction::Reverse => self.end = Bound::Excluded(key.clone()),
        }
        Some(Ok(item))
    }
}

impl ReadView for MemoryEngine {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().current.map(family).get(key).cloned())
    }

    fn scan(&self, family: Family, range: &KeyRange, direction: Direction) -> Result<ScanIter<'_>> {
        let map = self.state.lock().current.map(family).clone();
        Ok(Box::new(MapScan {
            map,
            start: range.start.clone(),
            end: range.end.clone(),
            direction,
        }))
    }
}

impl Engine for MemoryEngine {
    type Snapshot<'a> = MemorySnapshot;

    fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            families: self.state.lock().current.clone(),
        }
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        batch.check_limits()?;
        let mut state = self.state.lock();
        let resolved = self.resolve(&state.current, &batch)?;
        Self::apply_resolved(&mut state.current, &resolved);
        if state.durable.is_some() {
            state.unsynced.push(batch);
            if durability == Durability::Sync {
                drop(state);
                return self.sync_wal();
            }
        }
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let Some(durable) = state.durable.as_mut() else {
            return Ok(());
        };
        // Each batch was resolved once already against the current state; it
        // resolves the same way against the durable one, which has every
        // earlier batch applied.
        for batch in std::mem::take(&mut state.unsynced) {
            let resolved = self.resolve(durable, &batch)?;
            Self::apply_resolved(durable, &resolved);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.sync_wal()
    }

    fn compact(&self, family: Family) -> Result<()> {
        let Some(factory) = self.options.family(family).compaction_filter else {
            return Ok(());
        };
        let mut filter = factory.create(CompactionContext {
            is_full_compaction: true,
        });
        let mut state = self.state.lock();
        let map = state.current.map_mut(family);
        let doomed: Vec<Vec<u8>> = map
            .iter()
            .filter(|(key, value)| filter.filter(key, value) == FilterDecision::Remove)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            map.remove(key);
        }
        // A compaction rewrites durable files: what it removed is gone there too.
        if let Some(durable) = state.durable.as_mut() {
            let durable_map = durable.map_mut(family);
            for key in &doomed {
                durable_map.remove(key);
            }
        }
        Ok(())
    }

    fn raw_entry_count(&self, family: Family) -> Result<u64> {
        Ok(self.state.lock().current.map(family).len() as u64)
    }
}
