//! SELECT: rows from a partition read, a token-range scan, or a virtual
//! table, then one in-memory pipeline (filter, order, per-partition limit,
//! DISTINCT, aggregate, limit, page, project) shared by all of them.
//!
//! A select with the whole partition key reads those partitions from the
//! row store. Any other select scans token ranges over the row store
//! (`Db::scan`), page by page with the scan cursor as paging state: the
//! baseline the columnar replica will replace (design/cql.md).
//!
//! Paging state (opaque to clients, validated when it comes back):
//! ```text
//!   tag u8 | rows already returned u64 BE | scan cursor bytes (tag 2 only)
//!   tag 1: the result is recomputed and the first N rows skipped
//!   tag 2: a streaming scan resumes at the cursor
//! ```

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use cassandra_protocol::frame::message_result::{ColSpec, ResResultBody};
use concord_cql_parser::ast::{
    Describe, InValues, Operator, Order, QualifiedName, Relation, Select, SelectItem, Selection,
    Selector, Term,
};
use concord_storage::partitioner::{self, MAX_TOKEN, MIN_TOKEN, Token, TokenRange};
use concord_storage::rows::{Partition, ReadOptions, Row};
use concord_storage::schema::{ColumnKind, TableDef};
use concord_storage::types::CqlType;
use concord_storage::value::{CqlValue, Decimal, native};
use num_bigint::BigInt;

use crate::cql::error::{CqlError, CqlResult, invalid};
use crate::cql::execute::{Context, column_spec, key_restriction, rows_result, slice_for};
use crate::cql::system::{self, VirtualTable};
use crate::cql::values::{self, Bound, required_value, term_value};

/// Rows a select may gather in memory (aggregates, ORDER BY across
/// partitions, virtual tables) before it is refused.
pub const MATERIALIZED_ROWS_MAX: usize = 1_000_000;
/// Rows a scan page may examine (filtering) before it returns what it has.
pub const SCANNED_ROWS_PER_PAGE_MAX: usize = 100_000;
/// The page size when the client sets none.
pub const PAGE_ROWS_DEFAULT: usize = 5_000;

const PAGING_OFFSET: u8 = 1;
const PAGING_SCAN: u8 = 2;

/// The columns a select reads from: a user table or a virtual one.
#[derive(Debug, Clone)]
struct Source {
    keyspace: String,
    name: String,
    names: Vec<String>,
    types: Vec<CqlType>,
    kinds: Vec<ColumnKind>,
    table: Option<Arc<TableDef>>,
}

impl Source {
    fn index(&self, name: &str) -> CqlResult<usize> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            CqlError::Invalid(format!(
                "unknown column {name} in {}.{}; its columns are: {}",
                self.keyspace,
                self.name,
                self.names.join(", ")
            ))
        })
    }

    fn partition_key(&self) -> Vec<usize> {
        (0..self.kinds.len())
            .filter(|&idx| self.kinds[idx] == ColumnKind::PartitionKey)
            .collect()
    }

    fn clustering(&self) -> Vec<usize> {
        (0..self.kinds.len())
            .filter(|&idx| matches!(self.kinds[idx], ColumnKind::Clustering(_)))
            .collect()
    }
}

/// A row in the pipeline: values by source column, plus write times and
/// TTLs for WRITETIME()/TTL(), and its partition's token.
#[derive(Debug, Clone)]
struct SourceRow {
    values: Vec<Option<CqlValue>>,
    write_times: Vec<Option<i64>>,
    ttls: Vec<Option<i32>>,
    token: i64,
}

/// Returns the user table a name refers to, `None` for a virtual table.
pub fn resolve_user_table(
    context: &Context<'_>,
    name: &QualifiedName,
) -> CqlResult<Option<Arc<TableDef>>> {
    let keyspace = context.keyspace_of(name)?;
    if system::VIRTUAL_KEYSPACES.contains(&keyspace.as_str()) {
        return Ok(None);
    }
    Ok(Some(context.shared.db.table(&keyspace, &name.name)?))
}

/// Whether a SELECT reads at most one row of a user table: every primary
/// key column restricted with `=`, and only `=` relations. Such a read is a
/// bounded lookup (memtable / block cache), cheap enough to run on the
/// connection's async task instead of a blocking-pool thread.
pub fn is_point_read(table: &TableDef, select: &Select) -> bool {
    let equal_columns: Vec<&str> = select
        .where_clause
        .iter()
        .filter_map(|relation| match relation {
            Relation::Compare {
                column,
                operator: Operator::Equal,
                ..
            } => Some(column.as_str()),
            _ => None,
        })
        .collect();
    equal_columns.len() == select.where_clause.len()
        && table
            .partition_key()
            .chain(table.clustering())
            .all(|column| equal_columns.contains(&column.name.as_str()))
        && select.group_by.is_empty()
        && !select.distinct
}

fn source(
    context: &Context<'_>,
    name: &QualifiedName,
) -> CqlResult<(Source, Option<VirtualTable>)> {
    let keyspace = context.keyspace_of(name)?;
    if system::VIRTUAL_KEYSPACES.contains(&keyspace.as_str()) {
        let Some(virtual_table) = system::virtual_table(context.shared, &keyspace, &name.name)
        else {
            invalid!("table {keyspace}.{} does not exist", name.name);
        };
        let source = Source {
            keyspace: keyspace.clone(),
            name: name.name.clone(),
            names: virtual_table.columns.iter().map(|c| c.0.clone()).collect(),
            types: virtual_table.columns.iter().map(|c| c.1.clone()).collect(),
            kinds: virtual_table.columns.iter().map(|c| c.2).collect(),
            table: None,
        };
        return Ok((source, Some(virtual_table)));
    }
    let table = context.shared.db.table(&keyspace, &name.name)?;
    let source = Source {
        keyspace,
        name: name.name.clone(),
        names: table.columns().iter().map(|c| c.name.clone()).collect(),
        types: table.columns().iter().map(|c| c.ty.clone()).collect(),
        kinds: table.columns().iter().map(|c| c.kind).collect(),
        table: Some(table),
    };
    Ok((source, None))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    CountRows,
    Count,
    Min,
    Max,
    Sum,
    Avg,
}

#[derive(Debug, Clone)]
enum Expr {
    Column(usize),
    WriteTime(usize),
    Ttl(usize),
    Token,
    Literal(Option<CqlValue>),
    Field(Box<Expr>, usize),
    ToJson(Box<Expr>, CqlType),
    Aggregate(Aggregate, Option<Box<Expr>>),
}

#[derive(Debug, Clone)]
struct Output {
    name: String,
    ty: CqlType,
    expr: Expr,
}

fn selector_name(selector: &Selector) -> String {
    match selector {
        Selector::Column(name) => name.clone(),
        Selector::WriteTime(name) => format!("writetime({name})"),
        Selector::Ttl(name) => format!("ttl({name})"),
        Selector::CountRows => "count".into(),
        Selector::Function { name, args } => {
            let args: Vec<String> = args.iter().map(selector_name).collect();
            match name.as_str() {
                "count" | "min" | "max" | "sum" | "avg" => {
                    format!("system.{name}({})", args.join(", "))
                }
                _ => format!("system.{name}({})", args.join(", ")),
            }
        }
        Selector::Term(_) => "literal".into(),
        Selector::Field(inner, field) => format!("{}.{field}", selector_name(inner)),
    }
}

fn plan_selector(source: &Source, selector: &Selector) -> CqlResult<(Expr, CqlType)> {
    Ok(match selector {
        Selector::Column(name) => {
            let idx = source.index(name)?;
            (Expr::Column(idx), source.types[idx].clone())
        }
        Selector::WriteTime(name) => {
            let idx = source.index(name)?;
            if matches!(
                source.kinds[idx],
                ColumnKind::PartitionKey | ColumnKind::Clustering(_)
            ) {
                invalid!("WRITETIME is not available for primary key column {name}");
            }
            (Expr::WriteTime(idx), CqlType::Bigint)
        }
        Selector::Ttl(name) => {
            let idx = source.index(name)?;
            if matches!(
                source.kinds[idx],
                ColumnKind::PartitionKey | ColumnKind::Clustering(_)
            ) {
                invalid!("TTL is not available for primary key column {name}");
            }
            (Expr::Ttl(idx), CqlType::Int)
        }
        Selector::CountRows => (Expr::Aggregate(Aggregate::CountRows, None), CqlType::Bigint),
        Selector::Function { name, args } => match (name.as_str(), args.as_slice()) {
            ("token", columns) => {
                let expected: Vec<String> = source
                    .partition_key()
                    .iter()
                    .map(|&idx| source.names[idx].clone())
                    .collect();
                let given: Vec<String> = columns.iter().map(selector_name).collect();
                if given != expected {
                    invalid!(
                        "token() takes the partition key columns in order: token({})",
                        expected.join(", ")
                    );
                }
                (Expr::Token, CqlType::Bigint)
            }
            ("count", [arg]) => {
                let (expr, _) = plan_selector(source, arg)?;
                (
                    Expr::Aggregate(Aggregate::Count, Some(Box::new(expr))),
                    CqlType::Bigint,
                )
            }
            (aggregate @ ("min" | "max" | "sum" | "avg"), [arg]) => {
                let (expr, ty) = plan_selector(source, arg)?;
                let kind = match aggregate {
                    "min" => Aggregate::Min,
                    "max" => Aggregate::Max,
                    "sum" => Aggregate::Sum,
                    _ => Aggregate::Avg,
                };
                if matches!(kind, Aggregate::Sum | Aggregate::Avg) && !is_numeric(&ty) {
                    invalid!("{aggregate}() needs a numeric column, got {ty}");
                }
                (Expr::Aggregate(kind, Some(Box::new(expr))), ty)
            }
            ("tojson", [arg]) => {
                let (expr, ty) = plan_selector(source, arg)?;
                (Expr::ToJson(Box::new(expr), ty), CqlType::Text)
            }
            _ => invalid!(
                "function {name}() with {} arguments is not supported in SELECT",
                args.len()
            ),
        },
        Selector::Term(term) => {
            let ty = match term {
                Term::Integer(_) => CqlType::Int,
                Term::Float(_) => CqlType::Double,
                Term::Boolean(_) => CqlType::Boolean,
                _ => CqlType::Text,
            };
            let value = match term_value(
                term,
                &ty,
                "a selected literal",
                &values::BoundValues::default(),
            )? {
                Bound::Value(value) => value,
                Bound::Unset => None,
            };
            (Expr::Literal(value), ty)
        }
        Selector::Field(inner, field) => {
            let (expr, ty) = plan_selector(source, inner)?;
            let CqlType::Udt(udt) = ty.unfrozen() else {
                invalid!("{} is not a user type", selector_name(inner))
            };
            let Some(idx) = udt.fields.iter().position(|(name, _)| name == field) else {
                invalid!("type {} has no field {field}", udt.name);
            };
            (Expr::Field(Box::new(expr), idx), udt.fields[idx].1.clone())
        }
    })
}

fn is_numeric(ty: &CqlType) -> bool {
    matches!(
        ty,
        CqlType::Tinyint
            | CqlType::Smallint
            | CqlType::Int
            | CqlType::Bigint
            | CqlType::Varint
            | CqlType::Float
            | CqlType::Double
            | CqlType::Decimal
            | CqlType::Counter
    )
}

fn plan_outputs(source: &Source, select: &Select) -> CqlResult<Vec<Output>> {
    let items: Vec<SelectItem> = match &select.selection {
        Selection::All => source
            .names
            .iter()
            .map(|name| SelectItem {
                selector: Selector::Column(name.clone()),
                alias: None,
            })
            .collect(),
        Selection::Items(items) => items.clone(),
    };
    let mut outputs = Vec::with_capacity(items.len());
    for item in &items {
        let (expr, ty) = plan_selector(source, &item.selector)?;
        let name = item
            .alias
            .clone()
            .unwrap_or_else(|| selector_name(&item.selector));
        outputs.push(Output { name, ty, expr });
    }
    Ok(outputs)
}

/// The result columns of a select (for PREPARE).
pub fn result_columns(context: &Context<'_>, select: &Select) -> CqlResult<Vec<ColSpec>> {
    let (source, _) = source(context, &select.table)?;
    let outputs = plan_outputs(&source, select)?;
    if select.json {
        return Ok(vec![column_spec(
            &source.keyspace,
            &source.name,
            "[json]",
            &CqlType::Text,
        )]);
    }
    Ok(outputs
        .iter()
        .map(|o| column_spec(&source.keyspace, &source.name, &o.name, &o.ty))
        .collect())
}

/// A compiled WHERE restriction.
#[derive(Debug)]
enum Predicate {
    Compare(usize, Operator, Option<CqlValue>),
    In(usize, Vec<CqlValue>),
    Multi(Vec<usize>, Operator, Vec<Option<CqlValue>>),
    MultiIn(Vec<usize>, Vec<Vec<Option<CqlValue>>>),
    Token(Operator, i64),
    NotNull(usize),
}

fn compile_predicates(
    context: &Context<'_>,
    source: &Source,
    relations: &[Relation],
) -> CqlResult<Vec<Predicate>> {
    let binds = &context.binds;
    let mut predicates = Vec::new();
    for relation in relations {
        predicates.push(match relation {
            Relation::Compare {
                column,
                operator,
                value,
            } => {
                let idx = source.index(column)?;
                let ty = match (operator, source.types[idx].unfrozen()) {
                    (Operator::Contains, CqlType::List(element) | CqlType::Set(element)) => {
                        (**element).clone()
                    }
                    (Operator::Contains, CqlType::Map(_, value)) => (**value).clone(),
                    (Operator::ContainsKey, CqlType::Map(key, _)) => (**key).clone(),
                    (Operator::Contains | Operator::ContainsKey, ty) => {
                        invalid!("CONTAINS needs a collection column; {column} is {ty}")
                    }
                    (Operator::Like, _) => {
                        invalid!("LIKE is not supported (it needs a SASI or SAI index)")
                    }
                    _ => source.types[idx].clone(),
                };
                let value = match term_value(value, &ty, &format!("column {column}"), binds)? {
                    Bound::Value(value) => value,
                    Bound::Unset => invalid!("column {column} is compared with an unset value"),
                };
                Predicate::Compare(idx, *operator, value)
            }
            Relation::In { column, values } => {
                let idx = source.index(column)?;
                let ty = source.types[idx].clone();
                let values = match values {
                    InValues::List(terms) => terms
                        .iter()
                        .map(|t| required_value(t, &ty, column, binds))
                        .collect::<CqlResult<Vec<_>>>()?,
                    InValues::Bind(marker) => {
                        match binds.get(marker, &CqlType::List(Box::new(ty)), column)? {
                            Bound::Value(Some(CqlValue::List(values))) => values,
                            _ => invalid!("IN ? for {column} needs a list"),
                        }
                    }
                };
                Predicate::In(idx, values)
            }
            Relation::MultiCompare {
                columns,
                operator,
                value,
            } => {
                let indexes = columns
                    .iter()
                    .map(|c| source.index(c))
                    .collect::<CqlResult<Vec<_>>>()?;
                let ty = CqlType::Tuple(indexes.iter().map(|&i| source.types[i].clone()).collect());
                let CqlValue::Tuple(values) =
                    required_value(value, &ty, &columns.join(", "), binds)?
                else {
                    invalid!("({}) is compared with a non-tuple", columns.join(", "));
                };
                Predicate::Multi(indexes, *operator, values)
            }
            Relation::MultiIn { columns, values } => {
                let indexes = columns
                    .iter()
                    .map(|c| source.index(c))
                    .collect::<CqlResult<Vec<_>>>()?;
                let ty = CqlType::Tuple(indexes.iter().map(|&i| source.types[i].clone()).collect());
                let InValues::List(terms) = values else {
                    invalid!("(...) IN ? is not supported; list the tuples")
                };
                let tuples = terms
                    .iter()
                    .map(
                        |term| match required_value(term, &ty, &columns.join(", "), binds)? {
                            CqlValue::Tuple(values) => Ok(values),
                            _ => invalid!("IN needs tuples"),
                        },
                    )
                    .collect::<CqlResult<Vec<_>>>()?;
                Predicate::MultiIn(indexes, tuples)
            }
            Relation::Token {
                columns,
                operator,
                value,
            } => {
                let expected: Vec<&String> = source
                    .partition_key()
                    .iter()
                    .map(|&i| &source.names[i])
                    .collect();
                if columns.iter().collect::<Vec<_>>() != expected {
                    invalid!("token() must name the partition key columns in order");
                }
                let token = match value {
                    Term::Function { name, args } if name == "token" => {
                        if args.len() != expected.len() {
                            invalid!("token() needs {} values", expected.len());
                        }
                        let mut components = Vec::new();
                        for (arg, &idx) in args.iter().zip(&source.partition_key()) {
                            let value =
                                required_value(arg, &source.types[idx], &source.names[idx], binds)?;
                            components.push(
                                native::serialize_to_vec(&value, &source.types[idx])
                                    .map_err(CqlError::from)?,
                            );
                        }
                        let refs: Vec<&[u8]> = components.iter().map(Vec::as_slice).collect();
                        partitioner::token(&partitioner::serialize_partition_key(&refs)).0
                    }
                    other => match required_value(other, &CqlType::Bigint, "token", binds)? {
                        CqlValue::Bigint(token) => token,
                        _ => invalid!("a token is a bigint"),
                    },
                };
                Predicate::Token(*operator, token)
            }
            Relation::IsNotNull(column) => Predicate::NotNull(source.index(column)?),
        });
    }
    Ok(predicates)
}

fn operator_holds(operator: Operator, ordering: Ordering) -> bool {
    match operator {
        Operator::Equal => ordering == Ordering::Equal,
        Operator::NotEqual => ordering != Ordering::Equal,
        Operator::Less => ordering == Ordering::Less,
        Operator::LessOrEqual => ordering != Ordering::Greater,
        Operator::Greater => ordering == Ordering::Greater,
        Operator::GreaterOrEqual => ordering != Ordering::Less,
        _ => false,
    }
}

fn matches(source: &Source, row: &SourceRow, predicates: &[Predicate]) -> bool {
    predicates.iter().all(|predicate| match predicate {
        Predicate::Compare(idx, operator, value) => {
            let ty = &source.types[*idx];
            match (&row.values[*idx], value, operator) {
                (
                    Some(CqlValue::List(elements) | CqlValue::Set(elements)),
                    Some(value),
                    Operator::Contains,
                ) => {
                    let element_type = match ty.unfrozen() {
                        CqlType::List(e) | CqlType::Set(e) => (**e).clone(),
                        other => other.clone(),
                    };
                    elements
                        .iter()
                        .any(|e| e.compare(value, &element_type).is_eq())
                }
                (
                    Some(CqlValue::Map(entries)),
                    Some(value),
                    Operator::Contains | Operator::ContainsKey,
                ) => {
                    let (key_type, value_type) = match ty.unfrozen() {
                        CqlType::Map(k, v) => ((**k).clone(), (**v).clone()),
                        other => (other.clone(), other.clone()),
                    };
                    entries.iter().any(|(k, v)| {
                        if *operator == Operator::ContainsKey {
                            k.compare(value, &key_type).is_eq()
                        } else {
                            v.compare(value, &value_type).is_eq()
                        }
                    })
                }
                (Some(current), Some(value), _) => {
                    operator_holds(*operator, current.compare(value, ty))
                }
                _ => false,
            }
        }
        Predicate::In(idx, values) => row.values[*idx].as_ref().is_some_and(|current| {
            values
                .iter()
                .any(|v| current.compare(v, &source.types[*idx]).is_eq())
        }),
        Predicate::Multi(indexes, operator, values) => {
            let mut ordering = Ordering::Equal;
            for (position, &idx) in indexes.iter().enumerate() {
                let (Some(current), Some(Some(value))) = (&row.values[idx], values.get(position))
                else {
                    return false;
                };
                ordering = current.compare(value, &source.types[idx]);
                if ordering != Ordering::Equal {
                    break;
                }
            }
            operator_holds(*operator, ordering)
        }
        Predicate::MultiIn(indexes, tuples) => tuples.iter().any(|tuple| {
            indexes.iter().enumerate().all(|(position, &idx)| {
                match (&row.values[idx], tuple.get(position)) {
                    (Some(current), Some(Some(value))) => {
                        current.compare(value, &source.types[idx]).is_eq()
                    }
                    _ => false,
                }
            })
        }),
        Predicate::Token(operator, token) => operator_holds(*operator, row.token.cmp(token)),
        Predicate::NotNull(idx) => row.values[*idx].is_some(),
    })
}

fn token_range(predicates: &[Predicate]) -> Option<TokenRange> {
    let mut start = MIN_TOKEN.0;
    let mut end = MAX_TOKEN.0;
    for predicate in predicates {
        if let Predicate::Token(operator, token) = predicate {
            match operator {
                Operator::Greater => start = start.max(*token),
                Operator::GreaterOrEqual => start = start.max(token.saturating_sub(1)),
                Operator::Less => end = end.min(token.saturating_sub(1)),
                Operator::LessOrEqual => end = end.min(*token),
                Operator::Equal => {
                    start = start.max(token.saturating_sub(1));
                    end = end.min(*token);
                }
                _ => {}
            }
        }
    }
    (start < end).then_some(TokenRange {
        start: Token(start),
        end: Token(end),
    })
}

fn partition_rows(
    source: &Source,
    table: &TableDef,
    partition: Partition,
    out: &mut Vec<SourceRow>,
) {
    let n_columns = source.names.len();
    let base = |partition: &Partition| {
        let mut row = SourceRow {
            values: vec![None; n_columns],
            write_times: vec![None; n_columns],
            ttls: vec![None; n_columns],
            token: partition.token.0,
        };
        for (position, column) in table.partition_key().enumerate() {
            if let Some(idx) = table.columns().iter().position(|c| c.id == column.id) {
                row.values[idx] = partition.key.get(position).cloned();
            }
        }
        row
    };
    let fill = |row: &mut SourceRow, source_row: &Row| {
        for (idx, column) in table.columns().iter().enumerate() {
            if let Some(cell) = source_row.columns.get(&column.id) {
                row.values[idx] = Some(cell.value.clone());
                row.write_times[idx] = Some(cell.write_time.0);
                row.ttls[idx] = cell.expiry.map(|expiry| expiry.ttl_seconds as i32);
            }
        }
    };
    let static_row = partition.static_row.clone();
    if partition.rows.is_empty() {
        if let Some(static_row) = &static_row {
            let mut row = base(&partition);
            fill(&mut row, static_row);
            out.push(row);
        }
        return;
    }
    for stored in &partition.rows {
        let mut row = base(&partition);
        if let Some(static_row) = &static_row {
            fill(&mut row, static_row);
        }
        for (position, column) in table.clustering().enumerate() {
            if let Some(idx) = table.columns().iter().position(|c| c.id == column.id) {
                row.values[idx] = stored.clustering.get(position).cloned();
            }
        }
        fill(&mut row, stored);
        out.push(row);
    }
}

fn limit_value(context: &Context<'_>, term: &Option<Term>, what: &str) -> CqlResult<Option<usize>> {
    let Some(term) = term else { return Ok(None) };
    match required_value(term, &CqlType::Int, what, &context.binds)? {
        CqlValue::Int(n) if n > 0 => Ok(Some(n as usize)),
        other => invalid!(
            "{what} must be a positive integer, got {}",
            values::display(&other)
        ),
    }
}

fn encode_paging(tag: u8, returned: u64, cursor: &[u8]) -> Vec<u8> {
    let mut state = vec![tag];
    state.extend_from_slice(&returned.to_be_bytes());
    state.extend_from_slice(cursor);
    state
}

fn decode_paging(state: &[u8]) -> CqlResult<(u8, u64, &[u8])> {
    if state.len() < 9 || !(state[0] == PAGING_OFFSET || state[0] == PAGING_SCAN) {
        invalid!(
            "the paging state does not decode: it must come from this statement's previous page"
        );
    }
    let mut returned = [0u8; 8];
    returned.copy_from_slice(&state[1..9]);
    Ok((state[0], u64::from_be_bytes(returned), &state[9..]))
}

/// The result of a single-partition SELECT whose partition a transaction
/// block read (at the block's timestamp): filter, project, limit.
///
/// # Errors
/// Unknown columns; aggregates, ORDER BY, GROUP BY and DISTINCT, which a
/// transaction's SELECT does not allow.
pub fn rows_from_partition(
    context: &Context<'_>,
    select: &Select,
    partition: Option<Partition>,
) -> CqlResult<ResResultBody> {
    let (source, _) = source(context, &select.table)?;
    let Some(table) = source.table.clone() else {
        invalid!("a transaction cannot read system tables");
    };
    let outputs = plan_outputs(&source, select)?;
    if outputs
        .iter()
        .any(|o| matches!(o.expr, Expr::Aggregate(..)))
        || !select.order_by.is_empty()
        || !select.group_by.is_empty()
        || select.distinct
    {
        invalid!(
            "a SELECT inside a transaction takes no aggregates, ORDER BY, GROUP BY or DISTINCT"
        );
    }
    let predicates = compile_predicates(context, &source, &select.where_clause)?;
    let limit = limit_value(context, &select.limit, "LIMIT")?;
    let mut rows = Vec::new();
    if let Some(partition) = partition {
        partition_rows(&source, &table, partition, &mut rows);
    }
    rows.retain(|row| matches(&source, row, &predicates));
    let mut page = rows
        .iter()
        .map(|row| project(&outputs, row))
        .collect::<CqlResult<Vec<_>>>()?;
    if let Some(limit) = limit {
        page.truncate(limit);
    }
    let n_rows = page.len();
    finish(
        context, &source, select, &outputs, page, None, n_rows, limit,
    )
}

/// Executes a SELECT.
///
/// # Errors
/// Unknown tables or columns, bad values, unsupported clauses.
pub fn execute_select(context: &Context<'_>, select: &Select) -> CqlResult<ResResultBody> {
    let (source, virtual_table) = source(context, &select.table)?;
    let outputs = plan_outputs(&source, select)?;
    let predicates = compile_predicates(context, &source, &select.where_clause)?;
    let limit = limit_value(context, &select.limit, "LIMIT")?;
    let per_partition_limit =
        limit_value(context, &select.per_partition_limit, "PER PARTITION LIMIT")?;
    let aggregating = outputs
        .iter()
        .any(|o| matches!(o.expr, Expr::Aggregate(..)));
    let page_rows = context.page_rows.unwrap_or(usize::MAX);
    let paging = context
        .paging_state
        .as_deref()
        .map(decode_paging)
        .transpose()?;
    let mut order_by = Vec::new();
    for (column, order) in &select.order_by {
        let idx = source.index(column)?;
        if !matches!(source.kinds[idx], ColumnKind::Clustering(_)) {
            invalid!("ORDER BY is only supported on clustering columns; {column} is not one");
        }
        order_by.push((idx, *order));
    }
    let restriction = match &source.table {
        Some(table) => key_restriction(table, &select.where_clause, &context.binds)?,
        None => None,
    };
    let needs_scan = source.table.is_some() && restriction.is_none();
    if needs_scan
        && !aggregating
        && order_by.is_empty()
        && !select.distinct
        && select.group_by.is_empty()
    {
        return scan_select(
            context,
            &source,
            select,
            &outputs,
            &predicates,
            limit,
            per_partition_limit,
            paging,
        );
    }
    // Materialized path: gather every matching row, then page by offset.
    let mut rows = Vec::new();
    match (&source.table, virtual_table, &restriction) {
        (None, Some(virtual_table), _) => {
            let n_columns = source.names.len();
            for values in virtual_table.rows {
                rows.push(SourceRow {
                    values,
                    write_times: vec![None; n_columns],
                    ttls: vec![None; n_columns],
                    token: 0,
                });
            }
        }
        (Some(table), _, Some(restriction)) => {
            let now_seconds = context.shared.db.now_seconds();
            let offset = match paging {
                Some((_, returned, _)) => returned as usize,
                None => 0,
            };
            let row_limit = partition_row_limit(
                &source,
                select,
                restriction,
                aggregating || !order_by.is_empty() || per_partition_limit.is_some(),
                // One row past the page tells whether another page follows.
                offset.saturating_add(page_rows).saturating_add(1),
                limit,
            );
            for partition_key in &restriction.partition_keys {
                let slice = if restriction.clustering_prefixes.len() == 1 {
                    slice_for(
                        table,
                        &restriction.clustering_prefixes[0],
                        &restriction.clustering_range,
                    )
                } else {
                    concord_storage::rows::Slice::all()
                };
                let options = ReadOptions {
                    limit_rows: row_limit,
                    ..ReadOptions::at(now_seconds)
                };
                let partition =
                    context
                        .shared
                        .db
                        .read_partition(table, partition_key, &slice, options)?;
                if let Some(partition) = partition {
                    partition_rows(&source, table, partition, &mut rows);
                }
                if rows.len() > MATERIALIZED_ROWS_MAX {
                    invalid!(
                        "the query reads more than MATERIALIZED_ROWS_MAX = {MATERIALIZED_ROWS_MAX} rows; narrow it or page it"
                    );
                }
            }
        }
        (Some(table), _, None) => {
            let mut cursor = None;
            loop {
                let page = context.shared.db.scan(
                    table,
                    &token_range(&predicates).unwrap_or_else(TokenRange::full_ring),
                    cursor.as_ref(),
                    10_000,
                )?;
                for partition in page.partitions {
                    partition_rows(&source, table, partition, &mut rows);
                }
                if rows.len() > MATERIALIZED_ROWS_MAX {
                    invalid!(
                        "the query reads more than MATERIALIZED_ROWS_MAX = {MATERIALIZED_ROWS_MAX} rows; add a partition key restriction"
                    );
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        _ => return Err(CqlError::Server("select source without rows".into())),
    }
    rows.retain(|row| matches(&source, row, &predicates));
    if !order_by.is_empty() {
        rows.sort_by(|a, b| {
            for (idx, order) in &order_by {
                let ordering = match (&a.values[*idx], &b.values[*idx]) {
                    (Some(x), Some(y)) => x.compare(y, &source.types[*idx]),
                    (x, y) => x.is_some().cmp(&y.is_some()),
                };
                let ordering = if *order == Order::Desc {
                    ordering.reverse()
                } else {
                    ordering
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    } else if source.table.is_some() && restriction.is_some() {
        // Partition reads come in stored order already.
    }
    if let Some(per_partition) = per_partition_limit {
        rows = apply_per_partition_limit(&source, rows, per_partition);
    }
    if select.distinct {
        let partition_key = source.partition_key();
        // Rows of a partition are adjacent; compare with the previous key.
        let mut previous: Option<Vec<Option<CqlValue>>> = None;
        rows.retain(|row| {
            let key: Vec<Option<CqlValue>> = partition_key
                .iter()
                .map(|&i| row.values[i].clone())
                .collect();
            let first = previous.as_ref() != Some(&key);
            previous = Some(key);
            first
        });
    }
    let mut result: Vec<Vec<Option<CqlValue>>> = if aggregating {
        aggregate(&source, &outputs, &rows, &select.group_by)?
    } else {
        rows.iter()
            .map(|row| project(&outputs, row))
            .collect::<CqlResult<_>>()?
    };
    if let Some(limit) = limit {
        result.truncate(limit);
    }
    let offset = match paging {
        Some((PAGING_OFFSET, returned, _)) => returned as usize,
        Some(_) => invalid!("the paging state belongs to another kind of query"),
        None => 0,
    };
    let n_results = result.len();
    let page: Vec<_> = result.into_iter().skip(offset).take(page_rows).collect();
    let total_rows = offset + page.len();
    let paging_state =
        (total_rows < n_results).then(|| encode_paging(PAGING_OFFSET, total_rows as u64, &[]));
    finish(
        context,
        &source,
        select,
        &outputs,
        page,
        paging_state,
        total_rows,
        limit,
    )
}

/// How many rows a single-partition read needs when the slice encodes
/// every restriction (so filtering drops nothing): the rows up to the end
/// of this page, or the LIMIT. `None` reads the whole slice.
fn partition_row_limit(
    source: &Source,
    select: &Select,
    restriction: &crate::cql::execute::KeyRestriction,
    reorders: bool,
    rows_to_page_end: usize,
    limit: Option<usize>,
) -> Option<usize> {
    if reorders
        || select.distinct
        || restriction.partition_keys.len() != 1
        || restriction.clustering_prefixes.len() != 1
    {
        return None;
    }
    let prefix_len = restriction.clustering_prefixes[0].len();
    let clustering = source.clustering();
    let encoded = select.where_clause.iter().all(|relation| match relation {
        Relation::Compare {
            column, operator, ..
        } => {
            let Ok(idx) = source.index(column) else {
                return false;
            };
            if source.kinds[idx] == ColumnKind::PartitionKey {
                return *operator == Operator::Equal;
            }
            let Some(position) = clustering.iter().position(|&c| c == idx) else {
                return false;
            };
            match operator {
                Operator::Equal => position < prefix_len,
                Operator::Less
                | Operator::LessOrEqual
                | Operator::Greater
                | Operator::GreaterOrEqual => {
                    position == prefix_len && restriction.clustering_range.is_some()
                }
                _ => false,
            }
        }
        Relation::In { column, .. } => source
            .index(column)
            .is_ok_and(|idx| source.kinds[idx] == ColumnKind::PartitionKey),
        _ => false,
    });
    if !encoded {
        return None;
    }
    let needed = limit.map_or(rows_to_page_end, |limit| limit.min(rows_to_page_end));
    (needed < usize::MAX).then_some(needed)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    context: &Context<'_>,
    source: &Source,
    select: &Select,
    outputs: &[Output],
    page: Vec<Vec<Option<CqlValue>>>,
    paging_state: Option<Vec<u8>>,
    _total_rows: usize,
    _limit: Option<usize>,
) -> CqlResult<ResResultBody> {
    if select.json {
        let spec = vec![column_spec(
            &source.keyspace,
            &source.name,
            "[json]",
            &CqlType::Text,
        )];
        let rows = page
            .into_iter()
            .map(|row| {
                // Selection order, as Cassandra writes it (a JSON map would sort).
                let entries: Vec<String> = outputs
                    .iter()
                    .zip(row)
                    .map(|(output, value)| {
                        let value = value
                            .map_or(serde_json::Value::Null, |v| values::to_json(&v, &output.ty));
                        format!(
                            "{}: {value}",
                            serde_json::Value::String(output.name.clone())
                        )
                    })
                    .collect();
                vec![Some(CqlValue::Text(format!("{{{}}}", entries.join(", "))))]
            })
            .collect();
        return rows_result(&spec, &[CqlType::Text], rows, paging_state, context.version);
    }
    let specs: Vec<ColSpec> = outputs
        .iter()
        .map(|o| column_spec(&source.keyspace, &source.name, &o.name, &o.ty))
        .collect();
    let types: Vec<CqlType> = outputs.iter().map(|o| o.ty.clone()).collect();
    rows_result(&specs, &types, page, paging_state, context.version)
}

fn apply_per_partition_limit(
    source: &Source,
    rows: Vec<SourceRow>,
    per_partition: usize,
) -> Vec<SourceRow> {
    let partition_key = source.partition_key();
    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    rows.into_iter()
        .filter(|row| {
            let key: Vec<u8> = partition_key
                .iter()
                .flat_map(|&i| format!("{:?}", row.values[i]).into_bytes())
                .collect();
            let count = counts.entry(key).or_insert(0);
            *count += 1;
            *count <= per_partition
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn scan_select(
    context: &Context<'_>,
    source: &Source,
    select: &Select,
    outputs: &[Output],
    predicates: &[Predicate],
    limit: Option<usize>,
    per_partition_limit: Option<usize>,
    paging: Option<(u8, u64, &[u8])>,
) -> CqlResult<ResResultBody> {
    let Some(table) = &source.table else {
        return Err(CqlError::Server("scan without a table".into()));
    };
    let non_key_filter = predicates
        .iter()
        .any(|p| !matches!(p, Predicate::Token(..)));
    if non_key_filter && !select.allow_filtering {
        invalid!(
            "this query filters on columns other than the partition key and might scan the whole table; add ALLOW FILTERING to run it anyway (analytic queries move to the columnar replica)"
        );
    }
    let (mut returned, mut cursor) = match paging {
        Some((PAGING_SCAN, returned, [])) => (returned as usize, None),
        Some((PAGING_SCAN, returned, cursor)) => (
            returned as usize,
            Some(concord_storage::rows::ScanCursor::from_bytes(cursor)?),
        ),
        Some(_) => invalid!("the paging state belongs to another kind of query"),
        None => (0, None),
    };
    let Some(range) = token_range(predicates) else {
        return finish(context, source, select, outputs, Vec::new(), None, 0, limit);
    };
    let page_rows = context
        .page_rows
        .unwrap_or(PAGE_ROWS_DEFAULT)
        .min(concord_storage::rows::SCAN_PAGE_ROWS_MAX);
    let mut page = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    let mut per_partition_counts: HashMap<i64, usize> = HashMap::new();
    while page.len() < page_rows && scanned < SCANNED_ROWS_PER_PAGE_MAX {
        if limit.is_some_and(|limit| returned >= limit) {
            exhausted = true;
            break;
        }
        let want = (page_rows - page.len()).max(1);
        let scan = context
            .shared
            .db
            .scan(table, &range, cursor.as_ref(), want)?;
        let mut rows = Vec::new();
        for partition in scan.partitions {
            partition_rows(source, table, partition, &mut rows);
        }
        scanned += rows.len().max(1);
        for row in rows {
            if !matches(source, &row, predicates) {
                continue;
            }
            if let Some(per_partition) = per_partition_limit {
                let count = per_partition_counts.entry(row.token).or_insert(0);
                *count += 1;
                if *count > per_partition {
                    continue;
                }
            }
            if limit.is_some_and(|limit| returned >= limit) {
                break;
            }
            page.push(project(outputs, &row)?);
            returned += 1;
        }
        match scan.next {
            Some(next) => cursor = Some(next),
            None => {
                exhausted = true;
                break;
            }
        }
    }
    let paging_state = if exhausted || limit.is_some_and(|limit| returned >= limit) {
        None
    } else {
        let cursor_bytes = cursor.map(|c| c.to_bytes()).unwrap_or_default();
        Some(encode_paging(PAGING_SCAN, returned as u64, &cursor_bytes))
    };
    finish(
        context,
        source,
        select,
        outputs,
        page,
        paging_state,
        returned,
        limit,
    )
}

fn eval(expr: &Expr, row: &SourceRow) -> CqlResult<Option<CqlValue>> {
    Ok(match expr {
        Expr::Column(idx) => row.values[*idx].clone(),
        Expr::WriteTime(idx) => row.write_times[*idx].map(CqlValue::Bigint),
        Expr::Ttl(idx) => row.ttls[*idx].map(CqlValue::Int),
        Expr::Token => Some(CqlValue::Bigint(row.token)),
        Expr::Literal(value) => value.clone(),
        Expr::Field(inner, idx) => match eval(inner, row)? {
            Some(CqlValue::Udt(fields)) => fields.get(*idx).cloned().flatten(),
            _ => None,
        },
        Expr::ToJson(inner, ty) => Some(CqlValue::Text(eval(inner, row)?.map_or_else(
            || "null".to_owned(),
            |v| values::to_json(&v, ty).to_string(),
        ))),
        Expr::Aggregate(..) => return Err(CqlError::Server("aggregate evaluated per row".into())),
    })
}

fn project(outputs: &[Output], row: &SourceRow) -> CqlResult<Vec<Option<CqlValue>>> {
    outputs
        .iter()
        .map(|output| eval(&output.expr, row))
        .collect()
}

fn aggregate(
    source: &Source,
    outputs: &[Output],
    rows: &[SourceRow],
    group_by: &[String],
) -> CqlResult<Vec<Vec<Option<CqlValue>>>> {
    let group_columns = group_by
        .iter()
        .map(|name| source.index(name))
        .collect::<CqlResult<Vec<_>>>()?;
    let primary_key: Vec<usize> = source
        .partition_key()
        .into_iter()
        .chain(source.clustering())
        .collect();
    if !primary_key.starts_with(&group_columns) {
        invalid!("GROUP BY must name a prefix of the primary key");
    }
    let mut groups: Vec<(Vec<Option<CqlValue>>, Vec<&SourceRow>)> = Vec::new();
    for row in rows {
        let key: Vec<Option<CqlValue>> = group_columns
            .iter()
            .map(|&i| row.values[i].clone())
            .collect();
        match groups.last_mut() {
            Some((last, members)) if *last == key => members.push(row),
            _ => groups.push((key, vec![row])),
        }
    }
    if groups.is_empty() && group_columns.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let mut result = Vec::with_capacity(groups.len());
    for (_, members) in groups {
        let mut out = Vec::with_capacity(outputs.len());
        for output in outputs {
            out.push(match &output.expr {
                Expr::Aggregate(kind, argument) => {
                    let values = match argument {
                        Some(argument) => members
                            .iter()
                            .map(|row| eval(argument, row))
                            .collect::<CqlResult<Vec<_>>>()?,
                        None => vec![None; members.len()],
                    };
                    aggregate_values(*kind, &output.ty, &values, members.len())?
                }
                expr => match members.first() {
                    Some(row) => eval(expr, row)?,
                    None => None,
                },
            });
        }
        result.push(out);
    }
    Ok(result)
}

fn aggregate_values(
    kind: Aggregate,
    ty: &CqlType,
    values: &[Option<CqlValue>],
    n_rows: usize,
) -> CqlResult<Option<CqlValue>> {
    let present: Vec<&CqlValue> = values.iter().flatten().collect();
    Ok(match kind {
        Aggregate::CountRows => Some(CqlValue::Bigint(n_rows as i64)),
        Aggregate::Count => Some(CqlValue::Bigint(present.len() as i64)),
        Aggregate::Min => present
            .iter()
            .min_by(|a, b| a.compare(b, ty))
            .map(|v| (*v).clone()),
        Aggregate::Max => present
            .iter()
            .max_by(|a, b| a.compare(b, ty))
            .map(|v| (*v).clone()),
        Aggregate::Sum | Aggregate::Avg => {
            let divisor = if kind == Aggregate::Avg {
                present.len().max(1)
            } else {
                1
            };
            let as_f64 = |v: &CqlValue| match v {
                CqlValue::Float(x) => f64::from(*x),
                CqlValue::Double(x) => *x,
                _ => 0.0,
            };
            let as_i128 = |v: &CqlValue| match v {
                CqlValue::Tinyint(x) => i128::from(*x),
                CqlValue::Smallint(x) => i128::from(*x),
                CqlValue::Int(x) => i128::from(*x),
                CqlValue::Bigint(x) => i128::from(*x),
                _ => 0,
            };
            let integer_total: i128 =
                present.iter().map(|v| as_i128(v)).sum::<i128>() / divisor as i128;
            let float_total: f64 = present.iter().map(|v| as_f64(v)).sum::<f64>() / divisor as f64;
            let overflow = || CqlError::Invalid(format!("{kind:?} overflows {ty}"));
            Some(match ty {
                CqlType::Tinyint => {
                    CqlValue::Tinyint(i8::try_from(integer_total).map_err(|_| overflow())?)
                }
                CqlType::Smallint => {
                    CqlValue::Smallint(i16::try_from(integer_total).map_err(|_| overflow())?)
                }
                CqlType::Int => {
                    CqlValue::Int(i32::try_from(integer_total).map_err(|_| overflow())?)
                }
                CqlType::Bigint | CqlType::Counter => {
                    CqlValue::Bigint(i64::try_from(integer_total).map_err(|_| overflow())?)
                }
                CqlType::Float => CqlValue::Float(float_total as f32),
                CqlType::Double => CqlValue::Double(float_total),
                CqlType::Varint => {
                    let total: BigInt = present
                        .iter()
                        .map(|v| match v {
                            CqlValue::Varint(x) => x.clone(),
                            _ => BigInt::from(0),
                        })
                        .sum();
                    // As Cassandra: an integer average truncates toward zero.
                    CqlValue::Varint(total / BigInt::from(divisor))
                }
                CqlType::Decimal => {
                    let decimals = present.iter().filter_map(|v| match v {
                        CqlValue::Decimal(x) => Some(x),
                        _ => None,
                    });
                    let total = decimal_sum(decimals);
                    if kind == Aggregate::Avg {
                        CqlValue::Decimal(decimal_divide(&total, divisor as u64))
                    } else {
                        CqlValue::Decimal(total)
                    }
                }
                other => invalid!("{kind:?} over {other} is not supported yet"),
            })
        }
    })
}

/// Significant digits of a decimal average, as Cassandra's (Java's
/// `MathContext.DECIMAL128`).
const DECIMAL_AVG_DIGITS: usize = 34;

/// The exact sum of decimals, at the largest scale among them.
fn decimal_sum<'a>(values: impl Iterator<Item = &'a Decimal> + Clone) -> Decimal {
    let scale = values.clone().map(|d| d.scale).max().unwrap_or(0);
    let unscaled = values
        .map(|d| {
            let shift = u32::try_from(i64::from(scale) - i64::from(d.scale)).unwrap_or(0);
            &d.unscaled * BigInt::from(10).pow(shift)
        })
        .sum();
    Decimal { unscaled, scale }
}

/// `total / divisor`: exact when the quotient has at most
/// [`DECIMAL_AVG_DIGITS`] significant digits, otherwise rounded to that many,
/// half to even (Java's `BigDecimal.divide(.., DECIMAL128)`).
fn decimal_divide(total: &Decimal, divisor: u64) -> Decimal {
    let divisor = BigInt::from(divisor.max(1));
    let digits = |x: &BigInt| x.magnitude().to_string().len();
    // Exact quotients first: the fewest extra decimal places that divide evenly.
    let mut scaled = total.unscaled.clone();
    for extra in 0..=(DECIMAL_AVG_DIGITS as i32) {
        if (&scaled % &divisor) == BigInt::from(0) {
            let quotient = &scaled / &divisor;
            if digits(&quotient) <= DECIMAL_AVG_DIGITS {
                return Decimal {
                    unscaled: quotient,
                    scale: total.scale + extra,
                };
            }
            break;
        }
        scaled *= 10;
    }
    // Inexact: carry places until the truncated quotient has more than
    // DECIMAL_AVG_DIGITS digits, then drop the surplus digits rounding half
    // to even against the exact remainder.
    let mut extra = 0i32;
    let mut scaled = total.unscaled.clone();
    while digits(&(&scaled / &divisor)) <= DECIMAL_AVG_DIGITS {
        scaled *= 10;
        extra += 1;
    }
    let surplus = digits(&(&scaled / &divisor)) - DECIMAL_AVG_DIGITS;
    let denominator = &divisor * BigInt::from(10).pow(surplus as u32);
    let mut quotient = &scaled / &denominator;
    let remainder = &scaled % &denominator;
    let twice = remainder.magnitude() * 2u32;
    let away = match twice.cmp(denominator.magnitude()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => (&quotient % 2) != BigInt::from(0),
        std::cmp::Ordering::Less => false,
    };
    if away {
        quotient += if scaled.sign() == num_bigint::Sign::Minus {
            -1
        } else {
            1
        };
    }
    let mut scale = total.scale + extra - surplus as i32;
    if digits(&quotient) > DECIMAL_AVG_DIGITS {
        // Rounding up made 10^DECIMAL_AVG_DIGITS: one digit fewer, exactly.
        quotient /= 10;
        scale -= 1;
    }
    Decimal {
        unscaled: quotient,
        scale,
    }
}

/// Server-side DESCRIBE (cqlsh 6 sends it as a statement).
///
/// # Errors
/// Unknown keyspaces or tables.
pub fn execute_describe(context: &Context<'_>, describe: &Describe) -> CqlResult<ResResultBody> {
    let schema = context.shared.db.schema();
    let columns = ["keyspace_name", "type", "name", "create_statement"];
    let mut rows: Vec<[String; 4]> = Vec::new();
    let describe_keyspace = |name: &str, rows: &mut Vec<[String; 4]>| -> CqlResult<()> {
        let keyspace = schema.keyspace(name)?;
        rows.push([
            name.to_owned(),
            "keyspace".into(),
            name.to_owned(),
            system::create_keyspace_statement(&keyspace.def),
        ]);
        for udt in &keyspace.types {
            rows.push([
                name.to_owned(),
                "type".into(),
                udt.name.clone(),
                system::create_type_statement(name, udt),
            ]);
        }
        for table in keyspace.tables.values() {
            rows.push([
                name.to_owned(),
                "table".into(),
                table.name.clone(),
                system::create_table_statement(table),
            ]);
        }
        Ok(())
    };
    match describe {
        Describe::Keyspaces => {
            for name in system::VIRTUAL_KEYSPACES
                .iter()
                .map(|s| (*s).to_owned())
                .chain(schema.keyspaces().map(|k| k.def.name.clone()))
            {
                rows.push([name.clone(), "keyspace".into(), name, String::new()]);
            }
        }
        Describe::Keyspace(name) => {
            let name = match name {
                Some(name) => name.clone(),
                None => context.keyspace.clone().ok_or_else(|| {
                    CqlError::Invalid("no keyspace: name one or USE one first".into())
                })?,
            };
            describe_keyspace(&name, &mut rows)?;
        }
        Describe::Schema { .. } => {
            for keyspace in schema.keyspaces() {
                describe_keyspace(&keyspace.def.name, &mut rows)?;
            }
        }
        Describe::Tables | Describe::Types => {
            for keyspace in schema.keyspaces() {
                if context
                    .keyspace
                    .as_ref()
                    .is_some_and(|k| *k != keyspace.def.name)
                {
                    continue;
                }
                if matches!(describe, Describe::Tables) {
                    for table in keyspace.tables.values() {
                        rows.push([
                            keyspace.def.name.clone(),
                            "table".into(),
                            table.name.clone(),
                            String::new(),
                        ]);
                    }
                } else {
                    for udt in &keyspace.types {
                        rows.push([
                            keyspace.def.name.clone(),
                            "type".into(),
                            udt.name.clone(),
                            String::new(),
                        ]);
                    }
                }
            }
        }
        Describe::Functions | Describe::Aggregates => {}
        Describe::Table(name) => {
            let table = context.table(name)?;
            rows.push([
                table.keyspace.clone(),
                "table".into(),
                table.name.clone(),
                system::create_table_statement(&table),
            ]);
        }
        Describe::Type(name) => {
            let keyspace = context.keyspace_of(name)?;
            let Some(udt) = schema.user_type(&keyspace, &name.name) else {
                invalid!("type {keyspace}.{} does not exist", name.name);
            };
            rows.push([
                keyspace.clone(),
                "type".into(),
                udt.name.clone(),
                system::create_type_statement(&keyspace, &udt),
            ]);
        }
        Describe::Name(name) => {
            if name.keyspace.is_none() && schema.keyspace(&name.name).is_ok() {
                describe_keyspace(&name.name, &mut rows)?;
            } else {
                let table = context.table(name)?;
                rows.push([
                    table.keyspace.clone(),
                    "table".into(),
                    table.name.clone(),
                    system::create_table_statement(&table),
                ]);
            }
        }
        Describe::Cluster => {
            let specs: Vec<ColSpec> = ["cluster", "partitioner", "snitch"]
                .iter()
                .map(|n| column_spec("system", "describe", n, &CqlType::Text))
                .collect();
            let row = vec![
                Some(CqlValue::Text(system::CLUSTER_NAME.into())),
                Some(CqlValue::Text(
                    "org.apache.cassandra.dht.Murmur3Partitioner".into(),
                )),
                Some(CqlValue::Text(
                    "org.apache.cassandra.locator.SimpleSnitch".into(),
                )),
            ];
            return rows_result(
                &specs,
                &[CqlType::Text, CqlType::Text, CqlType::Text],
                vec![row],
                None,
                context.version,
            );
        }
    }
    let specs: Vec<ColSpec> = columns
        .iter()
        .map(|n| column_spec("system", "describe", n, &CqlType::Text))
        .collect();
    let types = vec![CqlType::Text; 4];
    let rows = rows
        .into_iter()
        .map(|row| row.into_iter().map(|v| Some(CqlValue::Text(v))).collect())
        .collect();
    rows_result(&specs, &types, rows, None, context.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Decimal {
        let (digits, scale) = match text.split_once('.') {
            Some((whole, fraction)) => (format!("{whole}{fraction}"), fraction.len() as i32),
            None => (text.to_owned(), 0),
        };
        Decimal {
            unscaled: digits.parse().expect("digits"),
            scale,
        }
    }

    #[test]
    fn decimal_sum_aligns_scales_and_divide_rounds_as_java_decimal128() {
        let values = [decimal("1.5"), decimal("2.25"), decimal("-0.125")];
        assert_eq!(decimal_sum(values.iter()), decimal("3.625"));
        // Exact quotients keep the fewest places that divide evenly.
        assert_eq!(decimal_divide(&decimal("3.75"), 2), decimal("1.875"));
        assert_eq!(decimal_divide(&decimal("1"), 4), decimal("0.25"));
        assert_eq!(decimal_divide(&decimal("-15"), 2), decimal("-7.5"));
        // 5/3 to 34 significant digits, the last rounded up.
        assert_eq!(
            decimal_divide(&decimal("5"), 3),
            decimal("1.666666666666666666666666666666667")
        );
        assert_eq!(
            decimal_divide(&decimal("-5"), 3),
            decimal("-1.666666666666666666666666666666667")
        );
        // 35 digits ending in 5: a tie, rounded to the even neighbour.
        let tie = decimal("12345678901234567890123456789012345");
        let rounded = decimal_divide(&tie, 1);
        assert_eq!(
            rounded.unscaled,
            "1234567890123456789012345678901234".parse().expect("n")
        );
        assert_eq!(rounded.scale, -1);
        let odd = decimal("12345678901234567890123456789012335");
        let rounded = decimal_divide(&odd, 1);
        assert_eq!(
            rounded.unscaled,
            "1234567890123456789012345678901234".parse().expect("n")
        );
        // 9.99..95 (35 nines and a 5 would carry): rounding up adds a digit.
        let carry = decimal("99999999999999999999999999999999995");
        let rounded = decimal_divide(&carry, 1);
        assert_eq!(rounded.unscaled, BigInt::from(10).pow(33));
        assert_eq!(rounded.scale, -2);
    }
}
