//! Register: reads, blind writes and compare-and-set (LWT) on single keys, checked
//! linearizable per key (WGL search, `concord-checker`).
//!
//! Values are 1..=[`VALUE_MAX`]; an absent row is the register's initial value 0, so a CAS from
//! 0 is `INSERT ... IF NOT EXISTS` and a CAS from `e ≥ 1` is `UPDATE ... IF v = e` (a row, once
//! written, is never deleted and never holds 0, so both match the model exactly). Keys rotate
//! after [`OPS_PER_KEY`] operations so each key's search stays small.

use std::sync::atomic::{AtomicU64, Ordering};

use concord_checker::{RegisterAction, RegisterOp};
use rand::Rng;
use rand::rngs::StdRng;
use scylla::client::session::Session;
use scylla::value::CqlValue;

use super::{OpError, Workload, integer, query, rows};

/// Operations per key before the next key is used.
pub const OPS_PER_KEY: u64 = 200;
/// The largest value written.
pub const VALUE_MAX: u64 = 5;

/// The register workload.
#[derive(Debug)]
pub struct Register {
    replication_factor: usize,
    operations: AtomicU64,
}

impl Register {
    pub fn new(replication_factor: usize) -> Register {
        Register {
            replication_factor,
            operations: AtomicU64::new(0),
        }
    }
}

/// The statement of an operation.
pub fn statement(op: &RegisterOp) -> String {
    let key = op.key;
    match op.action {
        RegisterAction::Read(_) => format!("SELECT v FROM jepsen.registers WHERE k = {key}"),
        RegisterAction::Write(value) => {
            format!("UPDATE jepsen.registers SET v = {value} WHERE k = {key}")
        }
        RegisterAction::CompareAndSet { expected: 0, new } => {
            format!("INSERT INTO jepsen.registers (k, v) VALUES ({key}, {new}) IF NOT EXISTS")
        }
        RegisterAction::CompareAndSet { expected, new } => {
            format!("UPDATE jepsen.registers SET v = {new} WHERE k = {key} IF v = {expected}")
        }
    }
}

impl Workload for Register {
    type Body = RegisterOp;

    async fn setup(&self, session: &Session) -> anyhow::Result<()> {
        super::create_schema(
            session,
            self.replication_factor,
            "CREATE TABLE IF NOT EXISTS jepsen.registers (k bigint PRIMARY KEY, v bigint)",
        )
        .await
    }

    fn generate(&self, rng: &mut StdRng) -> RegisterOp {
        let key = self.operations.fetch_add(1, Ordering::SeqCst) / OPS_PER_KEY;
        let action = match rng.random_range(0..4) {
            0 | 1 => RegisterAction::Read(None),
            2 => RegisterAction::Write(rng.random_range(1..=VALUE_MAX)),
            _ => RegisterAction::CompareAndSet {
                expected: rng.random_range(0..=VALUE_MAX),
                new: rng.random_range(1..=VALUE_MAX),
            },
        };
        RegisterOp { key, action }
    }

    async fn execute(&self, session: &Session, op: &RegisterOp) -> Result<RegisterOp, OpError> {
        let rows = rows(query(session, &statement(op)).await?)?;
        match op.action {
            RegisterAction::Read(_) => {
                let value = match rows.first().and_then(|row| row.columns.first()) {
                    None | Some(None) => 0,
                    Some(Some(value)) => integer(value)
                        .and_then(|value| u64::try_from(value).ok())
                        .ok_or_else(|| OpError::Client(format!("register value {value:?}")))?,
                };
                Ok(RegisterOp {
                    key: op.key,
                    action: RegisterAction::Read(Some(value)),
                })
            }
            RegisterAction::Write(_) => Ok(*op),
            RegisterAction::CompareAndSet { .. } => {
                let applied = rows
                    .first()
                    .and_then(|row| row.columns.first())
                    .and_then(Option::as_ref);
                match applied {
                    Some(CqlValue::Boolean(true)) => Ok(*op),
                    Some(CqlValue::Boolean(false)) => {
                        Err(OpError::Fail("compare-and-set not applied".to_owned()))
                    }
                    other => Err(OpError::Client(format!("[applied] was {other:?}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_from_the_initial_value_inserts_if_not_exists() {
        let op = |action| RegisterOp { key: 4, action };
        assert_eq!(
            statement(&op(RegisterAction::CompareAndSet {
                expected: 0,
                new: 2
            })),
            "INSERT INTO jepsen.registers (k, v) VALUES (4, 2) IF NOT EXISTS"
        );
        assert_eq!(
            statement(&op(RegisterAction::CompareAndSet {
                expected: 3,
                new: 2
            })),
            "UPDATE jepsen.registers SET v = 2 WHERE k = 4 IF v = 3"
        );
        let register = Register::new(1);
        let mut rng = rand::SeedableRng::seed_from_u64(9);
        for _ in 0..1_000 {
            let op = register.generate(&mut rng);
            if let RegisterAction::Write(value) | RegisterAction::CompareAndSet { new: value, .. } =
                op.action
            {
                assert!((1..=VALUE_MAX).contains(&value), "0 is the absent row");
            }
        }
        assert_eq!(register.generate(&mut rng).key, 1_000 / OPS_PER_KEY);
    }
}
