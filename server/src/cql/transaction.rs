//! `BEGIN TRANSACTION ... COMMIT TRANSACTION`: the `LET` reads, the `IF`
//! condition and the modifications become one `Db::execute` transaction,
//! so the condition is judged and the writes applied at one timestamp.
//!
//! Built so far: `LET` rows (single-row selects by full primary key or
//! `LIMIT 1` partition reads), `SELECT row.column, ...` over them or a
//! single-partition `SELECT ... FROM` read at the block's timestamp, `IF` with
//! comparisons between references and values or two references, `IS [NOT]
//! NULL`, INSERT / UPDATE / DELETE modifications, and arithmetic on
//! numeric columns in SET (`balance = balance - ?`), computed by the
//! executor from an automatic read of the row (`db::DerivedCell`).

use std::collections::HashMap;
use std::sync::Arc;

use cassandra_protocol::frame::message_result::ResResultBody;
use concord_cql_parser::ast::{
    Relation, Select, Statement, Term, TransactionBlock, TransactionCondition, TransactionSelect,
};
use concord_storage::rows::Slice;
use concord_storage::schema::{ColumnKind, TableDef};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

use crate::cql::error::{CqlError, CqlResult, invalid};
use crate::cql::execute::{Context, column_spec, compare_op, key_restriction, rows_result};
use crate::cql::values::{Bound, term_value};
use crate::db::{Check, CompareOp, DerivedCell, Read, ReadResult, Transaction};

struct LetRow {
    read: usize,
    table: Arc<TableDef>,
}

fn let_read(context: &Context<'_>, select: &Select) -> CqlResult<(Read, Arc<TableDef>)> {
    let table = context.table(&select.table)?;
    let Some(restriction) = key_restriction(&table, &select.where_clause, &context.binds)? else {
        invalid!(
            "a LET select must restrict the whole partition key of {} by =",
            table.qualified_name()
        );
    };
    if restriction.partition_keys.len() != 1
        || restriction.clustering_prefixes.len() != 1
        || restriction.clustering_range.is_some()
    {
        invalid!("a LET select must name one row: no IN and no ranges");
    }
    for relation in &select.where_clause {
        if matches!(
            relation,
            Relation::Token { .. } | Relation::MultiCompare { .. } | Relation::MultiIn { .. }
        ) {
            invalid!("a LET select restricts key columns by = only");
        }
    }
    let partition_key = restriction.partition_keys[0].clone();
    let prefix = restriction.clustering_prefixes[0].clone();
    let read = if prefix.len() == table.clustering().len() {
        Read::Row {
            table: table.clone(),
            partition_key,
            clustering: prefix,
        }
    } else if prefix.is_empty() {
        if table.clustering().len() > 0 && select.limit.is_none() {
            invalid!(
                "a LET select over a partition with clustering columns needs LIMIT 1 or the full primary key"
            );
        }
        Read::Partition {
            table: table.clone(),
            partition_key,
            slice: Slice::all(),
            limit_rows: Some(1),
        }
    } else {
        invalid!("a LET select must give the whole clustering key or none of it (with LIMIT 1)");
    };
    Ok((read, table))
}

/// A LET row, and the column of it a reference names (none for the row).
type Referenced<'a> = (
    &'a LetRow,
    Option<(concord_storage::schema::ColumnId, CqlType)>,
);

fn reference<'a>(
    lets: &'a HashMap<String, LetRow>,
    term: &Term,
) -> CqlResult<Option<Referenced<'a>>> {
    match term {
        Term::Reference { row, column } => {
            let Some(binding) = lets.get(row) else {
                invalid!("unknown LET row {row}")
            };
            let Some(def) = binding.table.column(column) else {
                invalid!("LET row {row} has no column {column}");
            };
            if matches!(
                def.kind,
                ColumnKind::PartitionKey | ColumnKind::Clustering(_)
            ) {
                invalid!(
                    "conditions on key columns ({row}.{column}) are not supported; they are fixed by the LET select"
                );
            }
            Ok(Some((binding, Some((def.id, def.ty.clone())))))
        }
        Term::Identifier(row) => Ok(lets.get(row).map(|binding| (binding, None))),
        _ => Ok(None),
    }
}

fn flip(operator: CompareOp) -> CompareOp {
    match operator {
        CompareOp::Less => CompareOp::Greater,
        CompareOp::LessOrEqual => CompareOp::GreaterOrEqual,
        CompareOp::Greater => CompareOp::Less,
        CompareOp::GreaterOrEqual => CompareOp::LessOrEqual,
        other => other,
    }
}

/// A transaction block planned into one [`Transaction`], and what its result
/// needs (the CQL endpoint's `execute_block`, the gRPC `Transact`).
#[derive(Debug)]
pub struct PlannedBlock {
    /// The reads (LETs first, in block order), condition and writes.
    pub transaction: Transaction,
    /// Each LET's name, its index in `transaction.reads` and its table.
    pub lets: Vec<(String, usize, Arc<TableDef>)>,
    returning: Option<Vec<Returned>>,
    query_read: Option<(usize, Box<Select>)>,
}

/// A returned `row.column`: its name, read, column id, kind, type, table.
type Returned = (
    String,
    usize,
    concord_storage::schema::ColumnId,
    ColumnKind,
    CqlType,
    Arc<TableDef>,
);

/// Runs a transaction block.
///
/// # Errors
/// Invalid blocks (unknown LET names, multi-row LETs, unsupported
/// modifications) are refused before anything runs.
pub fn execute_block(
    context: &mut Context<'_>,
    block: &TransactionBlock,
) -> CqlResult<ResResultBody> {
    let planned = plan_block(context, block)?;
    let result = context.shared.db.execute(planned.transaction)?;
    let (returning, query_read) = (planned.returning, planned.query_read);
    if let Some((read, select)) = query_read {
        let partition = match result.reads.get(read) {
            Some(ReadResult::Partition(partition)) => partition.clone(),
            _ => None,
        };
        return crate::cql::select::rows_from_partition(context, &select, partition);
    }
    let Some(columns) = returning else {
        if block.condition.is_some() {
            let spec = vec![column_spec("", "", "[applied]", &CqlType::Boolean)];
            return rows_result(
                &spec,
                &[CqlType::Boolean],
                vec![vec![Some(CqlValue::Boolean(result.applied))]],
                None,
                context.version,
            );
        }
        return Ok(ResResultBody::Void);
    };
    let mut specs = Vec::new();
    let mut types = Vec::new();
    let mut row = Vec::new();
    for (name, read, column, kind, ty, table) in columns {
        specs.push(column_spec(&table.keyspace, &table.name, &name, &ty));
        types.push(ty.clone());
        let value = match result.reads.get(read) {
            Some(ReadResult::Row(Some(found))) => lookup(&table, found, column, kind, None),
            Some(ReadResult::Partition(Some(partition))) => partition
                .rows
                .first()
                .and_then(|found| lookup(&table, found, column, kind, Some(&partition.key)))
                .or_else(|| {
                    partition
                        .static_row
                        .as_ref()
                        .and_then(|s| s.columns.get(&column).map(|c| c.value.clone()))
                }),
            _ => None,
        };
        row.push(value);
    }
    rows_result(&specs, &types, vec![row], None, context.version).map_err(|error| match error {
        CqlError::Server(message) => CqlError::Server(format!("transaction result: {message}")),
        other => other,
    })
}

fn lookup(
    table: &TableDef,
    row: &concord_storage::rows::Row,
    column: concord_storage::schema::ColumnId,
    kind: ColumnKind,
    partition_key: Option<&Vec<CqlValue>>,
) -> Option<CqlValue> {
    match kind {
        ColumnKind::Clustering(_) => {
            let position = table.clustering().position(|c| c.id == column)?;
            row.clustering.get(position).cloned()
        }
        ColumnKind::PartitionKey => {
            let position = table.partition_key().position(|c| c.id == column)?;
            partition_key.and_then(|key| key.get(position).cloned())
        }
        _ => row.columns.get(&column).map(|cell| cell.value.clone()),
    }
}

/// Plans a transaction block into one [`Transaction`] without running it.
///
/// # Errors
/// As [`execute_block`]: invalid blocks are refused before anything runs.
pub fn plan_block(context: &Context<'_>, block: &TransactionBlock) -> CqlResult<PlannedBlock> {
    let mut transaction = Transaction::default();
    let mut lets = HashMap::new();
    for binding in &block.lets {
        let (read, table) = let_read(context, &binding.select)?;
        lets.insert(
            binding.name.clone(),
            LetRow {
                read: transaction.reads.len(),
                table,
            },
        );
        transaction.reads.push(read);
    }
    let mut returning = None;
    let mut query_read: Option<(usize, Box<Select>)> = None;
    match &block.select {
        None => {}
        Some(TransactionSelect::References(references)) => {
            let mut columns = Vec::new();
            for term in references {
                let Term::Reference { row, column } = term else {
                    invalid!("SELECT in a transaction names row.column references")
                };
                let Some(binding) = lets.get(row) else {
                    invalid!("unknown LET row {row}")
                };
                let Some(def) = binding.table.column(column) else {
                    invalid!("LET row {row} has no column {column}")
                };
                columns.push((
                    format!("{row}.{column}"),
                    binding.read,
                    def.id,
                    def.kind,
                    def.ty.clone(),
                    binding.table.clone(),
                ));
            }
            returning = Some(columns);
        }
        Some(TransactionSelect::Query(select)) => {
            let table = context.table(&select.table)?;
            let Some(restriction) = key_restriction(&table, &select.where_clause, &context.binds)?
            else {
                invalid!(
                    "a SELECT inside a transaction must restrict the whole partition key of {} by =",
                    table.qualified_name()
                );
            };
            if restriction.partition_keys.len() != 1 {
                invalid!(
                    "a SELECT inside a transaction reads one partition (no IN on the partition key)"
                );
            }
            let slice = if restriction.clustering_prefixes.len() == 1 {
                crate::cql::execute::slice_for(
                    &table,
                    &restriction.clustering_prefixes[0],
                    &restriction.clustering_range,
                )
            } else {
                Slice::all()
            };
            query_read = Some((transaction.reads.len(), select.clone()));
            transaction.reads.push(Read::Partition {
                table,
                partition_key: restriction.partition_keys[0].clone(),
                slice,
                limit_rows: None,
            });
        }
    }
    if let Some(conditions) = &block.condition {
        for condition in conditions {
            match condition {
                TransactionCondition::IsNull(term) | TransactionCondition::IsNotNull(term) => {
                    let is_null = matches!(condition, TransactionCondition::IsNull(_));
                    let Some((binding, column)) = reference(&lets, term)? else {
                        invalid!("IS NULL applies to a LET row or row.column")
                    };
                    transaction.condition.push(match (column, is_null) {
                        (None, true) => Check::RowAbsent { read: binding.read },
                        (None, false) => Check::RowExists { read: binding.read },
                        (Some((column, _)), _) => Check::Column {
                            read: binding.read,
                            column,
                            element: None,
                            operator: if is_null {
                                CompareOp::Equal
                            } else {
                                CompareOp::NotEqual
                            },
                            value: None,
                        },
                    });
                }
                TransactionCondition::Compare {
                    left,
                    operator,
                    right,
                } => {
                    let operator = compare_op(*operator)?;
                    let left_reference = reference(&lets, left)?;
                    let right_reference = reference(&lets, right)?;
                    transaction.condition.push(match (left_reference, right_reference) {
                        (Some((l, Some((lc, _)))), Some((r, Some((rc, _))))) => Check::Columns { left: (l.read, lc), operator, right: (r.read, rc) },
                        (Some((binding, Some((column, ty)))), None) | (None, Some((binding, Some((column, ty))))) => {
                            let (value_term, operator) = if matches!(left, Term::Reference { .. }) { (right, operator) } else { (left, flip(operator)) };
                            let value = match term_value(value_term, &ty, "a condition value", &context.binds)? {
                                Bound::Value(value) => value,
                                Bound::Unset => invalid!("a condition compares with an unset value"),
                            };
                            Check::Column { read: binding.read, column, element: None, operator, value }
                        }
                        _ => invalid!("each IF comparison needs a row.column reference on at least one side"),
                    });
                }
            }
        }
    }
    for statement in &block.modifications {
        match statement {
            Statement::Insert(insert) if insert.if_not_exists => invalid!(
                "per-statement IF conditions are not allowed inside a transaction; use the block's IF"
            ),
            Statement::Update(update) if update.condition.is_some() => invalid!(
                "per-statement IF conditions are not allowed inside a transaction; use the block's IF"
            ),
            Statement::Delete(delete) if delete.condition.is_some() => invalid!(
                "per-statement IF conditions are not allowed inside a transaction; use the block's IF"
            ),
            _ => {}
        }
        let plan = crate::cql::execute::plan_for_transaction(context, statement)?;
        let write_offset = transaction.writes.len();
        for (write, op, column, derivation, read) in plan.derived {
            let read_idx = transaction.reads.len();
            transaction.reads.push(read);
            transaction.derived.push(DerivedCell {
                write: write_offset + write,
                op,
                column,
                read: read_idx,
                derivation,
            });
        }
        transaction.writes.extend(plan.mutations);
    }
    let lets = lets
        .into_iter()
        .map(|(name, binding)| (name, binding.read, binding.table))
        .collect();
    Ok(PlannedBlock {
        transaction,
        lets,
        returning,
        query_read,
    })
}
