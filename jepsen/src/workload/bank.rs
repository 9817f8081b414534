//! Bank: transfers between accounts inside transactions (`LET` the sender's balance, `IF` it
//! covers the amount, two `UPDATE`s), and reads of every balance in one transaction. Checked:
//! the total never changes and no balance goes negative (`concord-checker`'s bank checker).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use concord_checker::{BankOp, BankOptions, NegativeBalances};
use rand::Rng;
use rand::rngs::StdRng;
use scylla::client::session::Session;

use super::{OpError, Workload, integer, query, rows};

/// Accounts in the bank.
pub const ACCOUNTS: u64 = 5;
/// Every account's balance before the run.
pub const INITIAL_BALANCE: i64 = 100;
/// The largest transfer.
pub const TRANSFER_MAX: i64 = 5;

/// The bank workload.
#[derive(Debug)]
pub struct Bank {
    replication_factor: usize,
}

impl Bank {
    pub fn new(replication_factor: usize) -> Bank {
        Bank { replication_factor }
    }

    /// The invariants the checker holds reads to.
    pub fn options() -> BankOptions {
        BankOptions {
            accounts: (0..ACCOUNTS).collect(),
            total: INITIAL_BALANCE * i64::try_from(ACCOUNTS).unwrap_or(0),
            negative_balances: NegativeBalances::Forbidden,
        }
    }
}

/// The CQL block of a transfer.
pub fn transfer_statement(from: u64, to: u64, amount: i64) -> String {
    format!(
        "BEGIN TRANSACTION\n  LET sender = (SELECT balance FROM jepsen.accounts WHERE id = {from});\n  \
         IF sender.balance >= {amount} THEN\n    \
         UPDATE jepsen.accounts SET balance = balance - {amount} WHERE id = {from};\n    \
         UPDATE jepsen.accounts SET balance = balance + {amount} WHERE id = {to};\n  \
         END IF\nCOMMIT TRANSACTION"
    )
}

/// The CQL block reading every balance.
pub fn read_statement() -> String {
    let mut cql = String::from("BEGIN TRANSACTION\n");
    for account in 0..ACCOUNTS {
        let _ = writeln!(
            cql,
            "  LET a{account} = (SELECT balance FROM jepsen.accounts WHERE id = {account});"
        );
    }
    let columns: Vec<String> = (0..ACCOUNTS).map(|a| format!("a{a}.balance")).collect();
    let _ = writeln!(cql, "  SELECT {};", columns.join(", "));
    cql.push_str("COMMIT TRANSACTION");
    cql
}

impl Workload for Bank {
    type Body = BankOp;

    async fn setup(&self, session: &Session) -> anyhow::Result<()> {
        super::create_schema(
            session,
            self.replication_factor,
            "CREATE TABLE IF NOT EXISTS jepsen.accounts (id bigint PRIMARY KEY, balance bigint)",
        )
        .await?;
        for account in 0..ACCOUNTS {
            // IF NOT EXISTS: a second setup (another node) must not reset balances.
            session
                .query_unpaged(
                    format!(
                        "INSERT INTO jepsen.accounts (id, balance) VALUES ({account}, {INITIAL_BALANCE}) IF NOT EXISTS"
                    ),
                    (),
                )
                .await?;
        }
        Ok(())
    }

    fn generate(&self, rng: &mut StdRng) -> BankOp {
        if rng.random_bool(0.5) {
            return BankOp::Read(None);
        }
        let from = rng.random_range(0..ACCOUNTS);
        let mut to = rng.random_range(0..ACCOUNTS - 1);
        if to >= from {
            to += 1;
        }
        BankOp::Transfer {
            from,
            to,
            amount: rng.random_range(1..=TRANSFER_MAX),
        }
    }

    async fn execute(&self, session: &Session, op: &BankOp) -> Result<BankOp, OpError> {
        match op {
            BankOp::Transfer { from, to, amount } => {
                query(session, &transfer_statement(*from, *to, *amount)).await?;
                Ok(op.clone())
            }
            BankOp::Read(_) => {
                let rows = rows(query(session, &read_statement()).await?)?;
                let row = rows
                    .first()
                    .ok_or_else(|| OpError::Client("a balance read returned no row".into()))?;
                let mut balances = BTreeMap::new();
                for (account, value) in (0..ACCOUNTS).zip(row.columns.iter()) {
                    if let Some(value) = value {
                        let balance = integer(value)
                            .ok_or_else(|| OpError::Client(format!("balance {value:?}")))?;
                        balances.insert(account, balance);
                    }
                }
                Ok(BankOp::Read(Some(balances)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_move_between_distinct_accounts_within_bounds() {
        let bank = Bank::new(1);
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        let mut transfers = 0;
        for _ in 0..1_000 {
            if let BankOp::Transfer { from, to, amount } = bank.generate(&mut rng) {
                transfers += 1;
                assert_ne!(from, to);
                assert!(from < ACCOUNTS && to < ACCOUNTS);
                assert!((1..=TRANSFER_MAX).contains(&amount));
            }
        }
        assert!(transfers > 300, "{transfers}");
        assert_eq!(Bank::options().total, 500);
        assert!(read_statement().contains("SELECT a0.balance, a1.balance"));
    }
}
