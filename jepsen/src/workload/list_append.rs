//! List-append: `BEGIN TRANSACTION` blocks that read some lists and append unique integers to
//! others, checked strict serializable (Elle-style, `concord-checker`).
//!
//! Keys rotate as in Jepsen: [`ACTIVE_KEYS`] keys are live at a time and a key is retired after
//! [`WRITES_PER_KEY_MAX`] appends, so version orders stay short. A transaction has 1–4
//! micro-operations on distinct keys, its reads first: each read is a `LET` (which reads the
//! state before the block's writes, matching the micro-operations' order), returned by one
//! `SELECT r0.l, r1.l, ...`; each append is `UPDATE ... SET l = l + [e]`.
//!
//! After the run, [`ListAppend::final_reads`] reads every key ever used; an acknowledged append
//! missing from that read is a lost write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_checker::{History, MicroOp, Outcome, Transaction};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use scylla::client::session::Session;
use scylla::value::CqlValue;

use super::{OpError, Workload, integer, query, rows};

/// Keys live at a time.
pub const ACTIVE_KEYS: usize = 8;
/// Appends after which a key is retired.
pub const WRITES_PER_KEY_MAX: u32 = 32;
/// Micro-operations per transaction, at most.
pub const MICRO_OPS_MAX: usize = 4;
/// Keys per final-read transaction.
pub const FINAL_READ_KEYS: usize = 16;

#[derive(Debug)]
struct Keys {
    active: Vec<u64>,
    writes: BTreeMap<u64, u32>,
    next_key: u64,
}

/// The list-append workload.
#[derive(Debug)]
pub struct ListAppend {
    replication_factor: usize,
    keys: Mutex<Keys>,
    next_element: AtomicU64,
}

impl ListAppend {
    pub fn new(replication_factor: usize) -> ListAppend {
        ListAppend {
            replication_factor,
            keys: Mutex::new(Keys {
                active: (0..ACTIVE_KEYS as u64).collect(),
                writes: BTreeMap::new(),
                next_key: ACTIVE_KEYS as u64,
            }),
            next_element: AtomicU64::new(1),
        }
    }

    /// Every key an operation may have touched.
    pub fn keys_used(&self) -> Vec<u64> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        (0..keys.next_key).collect()
    }

    /// Read-only transactions over every key used, [`FINAL_READ_KEYS`] at a time.
    pub fn final_reads(&self) -> Vec<Transaction> {
        self.keys_used()
            .chunks(FINAL_READ_KEYS)
            .map(|chunk| chunk.iter().map(|&key| MicroOp::Read(key, None)).collect())
            .collect()
    }
}

/// The CQL block of a transaction (reads first, as generated).
pub fn statement(transaction: &Transaction) -> String {
    let mut cql = String::from("BEGIN TRANSACTION\n");
    let mut selected = Vec::new();
    for (index, op) in transaction.iter().enumerate() {
        if let MicroOp::Read(key, _) = op {
            let _ = writeln!(
                cql,
                "  LET r{index} = (SELECT l FROM jepsen.lists WHERE k = {key});"
            );
            selected.push(format!("r{index}.l"));
        }
    }
    if !selected.is_empty() {
        let _ = writeln!(cql, "  SELECT {};", selected.join(", "));
    }
    for op in transaction {
        if let MicroOp::Append(key, element) = op {
            let _ = writeln!(
                cql,
                "  UPDATE jepsen.lists SET l = l + [{element}] WHERE k = {key};"
            );
        }
    }
    cql.push_str("COMMIT TRANSACTION");
    cql
}

fn list(value: Option<&CqlValue>) -> Result<Vec<u64>, OpError> {
    match value {
        None => Ok(Vec::new()),
        Some(CqlValue::List(items)) => items
            .iter()
            .map(|item| {
                integer(item)
                    .and_then(|value| u64::try_from(value).ok())
                    .ok_or_else(|| OpError::Client(format!("list element {item:?}")))
            })
            .collect(),
        Some(CqlValue::Empty) => Ok(Vec::new()),
        Some(other) => Err(OpError::Client(format!("expected a list, got {other:?}"))),
    }
}

impl Workload for ListAppend {
    type Body = Transaction;

    async fn setup(&self, session: &Session) -> anyhow::Result<()> {
        super::create_schema(
            session,
            self.replication_factor,
            "CREATE TABLE IF NOT EXISTS jepsen.lists (k bigint PRIMARY KEY, l list<bigint>)",
        )
        .await
    }

    fn generate(&self, rng: &mut StdRng) -> Transaction {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let count = rng.random_range(1..=MICRO_OPS_MAX);
        let mut chosen = keys.active.clone();
        chosen.shuffle(rng);
        chosen.truncate(count);
        let mut reads = Vec::new();
        let mut appends = Vec::new();
        for key in chosen {
            if rng.random_bool(0.5) {
                reads.push(MicroOp::Read(key, None));
            } else {
                let element = self.next_element.fetch_add(1, Ordering::SeqCst);
                appends.push(MicroOp::Append(key, element));
                let writes = keys.writes.entry(key).or_insert(0);
                *writes += 1;
                if *writes >= WRITES_PER_KEY_MAX {
                    let fresh = keys.next_key;
                    keys.next_key += 1;
                    if let Some(slot) = keys.active.iter_mut().find(|slot| **slot == key) {
                        *slot = fresh;
                    }
                }
            }
        }
        reads.extend(appends);
        reads
    }

    async fn execute(
        &self,
        session: &Session,
        transaction: &Transaction,
    ) -> Result<Transaction, OpError> {
        let result = query(session, &statement(transaction)).await?;
        let rows = rows(result)?;
        let reads = transaction
            .iter()
            .filter(|op| matches!(op, MicroOp::Read(..)))
            .count();
        let row = match (reads, rows.first()) {
            (0, _) => None,
            (_, Some(row)) => Some(row),
            (_, None) => {
                return Err(OpError::Client(
                    "a transaction with reads returned no row".to_owned(),
                ));
            }
        };
        let mut column = 0;
        let mut done = Vec::with_capacity(transaction.len());
        for op in transaction {
            match op {
                MicroOp::Read(key, _) => {
                    let value = row
                        .and_then(|row| row.columns.get(column))
                        .and_then(Option::as_ref);
                    column += 1;
                    done.push(MicroOp::Read(*key, Some(list(value)?)));
                }
                append => done.push(append.clone()),
            }
        }
        Ok(done)
    }
}

/// Acknowledged appends missing from the newest `ok` read of their key in `history` (the final
/// reads come last): `(key, element)` pairs. Keys never read `ok` are not judged.
pub fn lost_appends(history: &History<Transaction>) -> Vec<(u64, u64)> {
    let mut acknowledged: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut last_read: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    for operation in history.operations() {
        let Outcome::Ok(done) = operation.outcome() else {
            continue;
        };
        let invoked = operation.invoke_time();
        for op in done {
            match op {
                MicroOp::Append(key, element) => {
                    acknowledged.entry(*key).or_default().push(*element);
                }
                MicroOp::Read(key, Some(values)) => {
                    let newer = last_read.get(key).is_none_or(|(time, _)| *time <= invoked);
                    if newer {
                        last_read.insert(*key, (invoked, values.clone()));
                    }
                }
                MicroOp::Read(_, None) => {}
            }
        }
    }
    let mut lost = Vec::new();
    for (key, elements) in acknowledged {
        let Some((read_at, values)) = last_read.get(&key) else {
            continue;
        };
        for element in elements {
            // Only appends acknowledged before the read was invoked must be in it.
            let acknowledged_before = history.operations().iter().any(|operation| {
                operation
                    .complete_time()
                    .is_some_and(|time| time < *read_at)
                    && matches!(operation.outcome(), Outcome::Ok(done)
                        if done.contains(&MicroOp::Append(key, element)))
            });
            if acknowledged_before && !values.contains(&element) {
                lost.push((key, element));
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use concord_checker::{ProcessId, Status};

    use super::*;

    #[test]
    fn statement_reads_with_lets_then_appends() {
        let transaction = vec![
            MicroOp::Read(3, None),
            MicroOp::Read(5, None),
            MicroOp::Append(2, 17),
        ];
        assert_eq!(
            statement(&transaction),
            "BEGIN TRANSACTION\n  LET r0 = (SELECT l FROM jepsen.lists WHERE k = 3);\n  \
             LET r1 = (SELECT l FROM jepsen.lists WHERE k = 5);\n  SELECT r0.l, r1.l;\n  \
             UPDATE jepsen.lists SET l = l + [17] WHERE k = 2;\nCOMMIT TRANSACTION"
        );
    }

    #[test]
    fn generated_transactions_read_first_on_distinct_keys_with_unique_elements() {
        let workload = ListAppend::new(1);
        let mut rng = rand::SeedableRng::seed_from_u64(3);
        let mut elements = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let transaction = workload.generate(&mut rng);
            assert!((1..=MICRO_OPS_MAX).contains(&transaction.len()));
            let mut keys: Vec<u64> = transaction.iter().map(MicroOp::key).collect();
            let first_append = transaction
                .iter()
                .position(|op| matches!(op, MicroOp::Append(..)))
                .unwrap_or(transaction.len());
            assert!(
                transaction[first_append..]
                    .iter()
                    .all(|op| matches!(op, MicroOp::Append(..)))
            );
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), transaction.len(), "{transaction:?}");
            for op in &transaction {
                if let MicroOp::Append(_, element) = op {
                    assert!(elements.insert(*element));
                }
            }
        }
        // Keys rotated: more keys than the active set were used.
        assert!(workload.keys_used().len() > ACTIVE_KEYS);
    }

    #[test]
    fn an_acknowledged_append_missing_from_a_later_read_is_lost() {
        let mut history: History<Transaction> = History::new();
        history
            .record(ProcessId(0), 1, 2, vec![MicroOp::Append(1, 10)], Status::Ok)
            .unwrap();
        history
            .record(ProcessId(0), 3, 4, vec![MicroOp::Append(1, 11)], Status::Ok)
            .unwrap();
        // An append whose outcome is unknown may be missing.
        history
            .record(
                ProcessId(1),
                3,
                4,
                vec![MicroOp::Append(1, 12)],
                Status::Info,
            )
            .unwrap();
        history
            .record(
                ProcessId(2),
                5,
                6,
                vec![MicroOp::Read(1, Some(vec![10]))],
                Status::Ok,
            )
            .unwrap();
        assert_eq!(lost_appends(&history), vec![(1, 11)]);
        history
            .record(
                ProcessId(2),
                7,
                8,
                vec![MicroOp::Read(1, Some(vec![10, 11]))],
                Status::Ok,
            )
            .unwrap();
        assert_eq!(lost_appends(&history), Vec::<(u64, u64)>::new());
    }
}
