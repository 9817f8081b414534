//! The bank workload: transfers between accounts and reads of every balance.
//!
//! Transfers move money, so under snapshot isolation or anything stronger every read of all
//! accounts must add up to the same total (Jepsen's bank test). The checker looks at each `ok`
//! read and reports:
//!
//! - `wrong-total`: the balances do not add up to [`BankOptions::total`];
//! - `negative-balance`: a balance below zero, when [`NegativeBalances::Forbidden`];
//! - `unexpected-accounts`: the read lacks accounts or has accounts not in
//!   [`BankOptions::accounts`] (skipped when that list is empty).
//!
//! Transfers themselves carry no result and are not checked; their effect shows in the reads.
//!
//! JSON lines: `{"f":"transfer","value":{"from":1,"to":2,"amount":5}}` and
//! `{"f":"read","value":{"1":10,"2":20}}` (`null` when invoked).

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, OperationBody, Status};
use crate::report::{Anomaly, AnomalyKind, Report};

/// A bank account number.
pub type Account = u64;

/// One bank operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankOp {
    /// Moves `amount` from one account to another.
    Transfer {
        from: Account,
        to: Account,
        amount: i64,
    },
    /// Reads every balance: `None` until it completes `ok`.
    Read(Option<BTreeMap<Account, i64>>),
}

/// Whether balances may go below zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NegativeBalances {
    #[default]
    Forbidden,
    Allowed,
}

/// What the bank's invariants are.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BankOptions {
    /// The accounts every read must contain exactly; empty means "do not check".
    pub accounts: Vec<Account>,
    /// The sum of all balances, constant under transfers.
    pub total: i64,
    pub negative_balances: NegativeBalances,
}

/// Checks every `ok` read of a bank history against the invariants in `options`.
pub fn check_bank(history: &History<BankOp>, options: &BankOptions) -> Report<BankOp> {
    let mut report = Report::new("bank");
    for operation in history.operations() {
        let (Status::Ok, BankOp::Read(Some(balances))) = (operation.status(), operation.body())
        else {
            continue;
        };
        let mut found = |kind, explanation| {
            report.push(Anomaly {
                kind,
                explanation,
                operations: vec![operation.clone()],
                cycle: Vec::new(),
            });
        };
        if !options.accounts.is_empty() {
            let missing: Vec<Account> = options
                .accounts
                .iter()
                .copied()
                .filter(|account| !balances.contains_key(account))
                .collect();
            let unknown: Vec<Account> = balances
                .keys()
                .copied()
                .filter(|account| !options.accounts.contains(account))
                .collect();
            if !missing.is_empty() || !unknown.is_empty() {
                let explanation = format!(
                    "the read lacks accounts {missing:?} and has unknown accounts {unknown:?}"
                );
                found(AnomalyKind::UnexpectedAccounts, explanation);
            }
        }
        let total: i128 = balances.values().map(|&balance| i128::from(balance)).sum();
        if total != i128::from(options.total) {
            let explanation = format!("balances add up to {total}, not {}", options.total);
            found(AnomalyKind::WrongTotal, explanation);
        }
        if options.negative_balances == NegativeBalances::Forbidden {
            let negative: BTreeMap<Account, i64> = balances
                .iter()
                .filter(|&(_, &balance)| balance < 0)
                .map(|(&account, &balance)| (account, balance))
                .collect();
            if !negative.is_empty() {
                found(
                    AnomalyKind::NegativeBalance,
                    format!("negative balances {negative:?}"),
                );
            }
        }
    }
    report
}

impl OperationBody for BankOp {
    fn function_name(&self) -> &'static str {
        match self {
            BankOp::Transfer { .. } => "transfer",
            BankOp::Read(_) => "read",
        }
    }

    fn to_json_value(&self) -> serde_json::Value {
        match self {
            BankOp::Transfer { from, to, amount } => {
                serde_json::json!({"from": from, "to": to, "amount": amount})
            }
            BankOp::Read(None) => serde_json::Value::Null,
            BankOp::Read(Some(balances)) => {
                let balances = balances
                    .iter()
                    .map(|(account, balance)| (account.to_string(), serde_json::json!(balance)));
                serde_json::Value::Object(balances.collect())
            }
        }
    }

    fn from_json_value(function_name: &str, value: &serde_json::Value) -> Result<Self, String> {
        match function_name {
            "transfer" => {
                let field = |name: &str| value.get(name).ok_or(format!("transfer lacks {name}"));
                let account = |name: &str| {
                    field(name)?
                        .as_u64()
                        .ok_or(format!("transfer {name} is not an account"))
                };
                let amount = field("amount")?
                    .as_i64()
                    .ok_or("transfer amount is not an i64")?;
                Ok(BankOp::Transfer {
                    from: account("from")?,
                    to: account("to")?,
                    amount,
                })
            }
            "read" if value.is_null() => Ok(BankOp::Read(None)),
            "read" => {
                let object = value
                    .as_object()
                    .ok_or("a bank read must be an object or null")?;
                let mut balances = BTreeMap::new();
                for (account, balance) in object {
                    let account: Account = account
                        .parse()
                        .map_err(|_| format!("account {account:?} is not a u64"))?;
                    let balance = balance
                        .as_i64()
                        .ok_or(format!("balance {balance} is not an i64"))?;
                    balances.insert(account, balance);
                }
                Ok(BankOp::Read(Some(balances)))
            }
            other => Err(format!("unknown bank function {other:?}")),
        }
    }

    fn to_invocation(&self) -> Self {
        match self {
            BankOp::Transfer { .. } => self.clone(),
            BankOp::Read(_) => BankOp::Read(None),
        }
    }

    fn check_completion(&self, completion: &Self) -> Result<(), String> {
        match (self, completion) {
            (BankOp::Transfer { .. }, BankOp::Transfer { .. }) if self == completion => Ok(()),
            (BankOp::Read(_), BankOp::Read(Some(_))) => Ok(()),
            _ => Err(format!("{self:?} completed as {completion:?}")),
        }
    }

    fn describe(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankOp::Transfer { from, to, amount } => {
                write!(formatter, "transfer({amount} from {from} to {to})")
            }
            BankOp::Read(Some(balances)) => write!(formatter, "read({balances:?})"),
            BankOp::Read(None) => write!(formatter, "read(?)"),
        }
    }
}
