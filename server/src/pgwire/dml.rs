//! Postgres DML as CQL statements with the Postgres meaning, run by the CQL
//! endpoint's executor so it meets the same type checks and reaches
//! `Db::execute` like every other write:
//!
//! ```text
//! INSERT INTO ks.t (c, ...) VALUES (...), (...)  → BEGIN BATCH INSERT ... IF NOT EXISTS; ... APPLY BATCH
//!                                                  (one transaction: all rows or none; 23505 if any key exists)
//! UPDATE ks.t SET c = v WHERE <full primary key> → UPDATE ... IF EXISTS   (UPDATE 0 | UPDATE 1)
//! DELETE FROM ks.t WHERE <full primary key>      → DELETE ... IF EXISTS   (DELETE 0 | DELETE 1)
//! ```

use ::pgwire::error::PgWireError;
use cassandra_protocol::frame::Version;
use cassandra_protocol::frame::message_result::ResResultBody;
use datafusion::sql::sqlparser::ast::{
    FromTable, ObjectName, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
};

use crate::cql::Shared;
use crate::cql::connection::Session;
use crate::cql::execute::{Context, execute_statement};
use crate::cql::values::BoundValues;
use crate::pgwire::sqlstate;

/// Which DML a statement is (its command tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmlKind {
    Insert,
    Update,
    Delete,
}

impl DmlKind {
    pub fn tag(self) -> &'static str {
        match self {
            DmlKind::Insert => "INSERT",
            DmlKind::Update => "UPDATE",
            DmlKind::Delete => "DELETE",
        }
    }
}

/// A Postgres DML statement in CQL form.
#[derive(Debug, Clone)]
pub struct CqlDml {
    pub kind: DmlKind,
    /// `keyspace.table`.
    pub table: (String, String),
    /// One CQL statement (a batch for a multi-row INSERT).
    pub cql: String,
    /// Rows written when the condition holds.
    pub rows: usize,
}

fn unsupported(message: impl Into<String>) -> PgWireError {
    sqlstate::error(sqlstate::FEATURE_NOT_SUPPORTED, message)
}

/// `keyspace.table` of a DML target.
fn qualified(name: &ObjectName) -> Result<(String, String), PgWireError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| part.to_string().trim_matches('"').to_owned())
        .collect();
    match parts.as_slice() {
        [keyspace, table] => Ok((keyspace.clone(), table.clone())),
        [_, keyspace, table] => Ok((keyspace.clone(), table.clone())),
        _ => Err(sqlstate::error(
            sqlstate::UNDEFINED_TABLE,
            format!(
                "relation \"{name}\" does not exist: qualify it with its keyspace (schema), e.g. ks.{name}"
            ),
        )),
    }
}

fn single_table(tables: &[TableWithJoins]) -> Result<&ObjectName, PgWireError> {
    match tables {
        [table] if table.joins.is_empty() => match &table.relation {
            TableFactor::Table { name, .. } => Ok(name),
            _ => Err(unsupported("DML on a derived table is not supported")),
        },
        _ => Err(unsupported(
            "DML over joins or several tables is not supported",
        )),
    }
}

/// Whether `statement` is DML this endpoint runs.
pub fn is_dml(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    )
}

/// The CQL form of a Postgres INSERT / UPDATE / DELETE (literals only: bind
/// parameters are substituted before).
///
/// # Errors
/// `0A000` for what has no CQL form (RETURNING, ON CONFLICT, INSERT ...
/// SELECT, a missing WHERE), `42P01` for an unqualified table.
pub fn translate(statement: &Statement) -> Result<CqlDml, PgWireError> {
    match statement {
        Statement::Insert(insert) => {
            if insert.returning.is_some() || insert.on.is_some() {
                return Err(unsupported(
                    "INSERT ... RETURNING and ON CONFLICT are not supported",
                ));
            }
            let TableObject::TableName(name) = &insert.table else {
                return Err(unsupported("INSERT INTO a table function is not supported"));
            };
            let table = qualified(name)?;
            if insert.columns.is_empty() {
                return Err(unsupported(
                    "INSERT needs its column list: INSERT INTO ks.t (a, b) VALUES (...)",
                ));
            }
            let Some(source) = &insert.source else {
                return Err(unsupported("INSERT needs VALUES"));
            };
            let SetExpr::Values(values) = source.body.as_ref() else {
                return Err(unsupported(
                    "INSERT ... SELECT is not supported; use VALUES",
                ));
            };
            let columns = insert
                .columns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let mut inserts = Vec::new();
            for row in &values.rows {
                if row.len() != insert.columns.len() {
                    return Err(sqlstate::error(
                        sqlstate::SYNTAX_OR_ACCESS,
                        format!(
                            "INSERT has {} target columns but {} expressions",
                            insert.columns.len(),
                            row.len()
                        ),
                    ));
                }
                let values = row
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                inserts.push(format!(
                    "INSERT INTO \"{}\".\"{}\" ({columns}) VALUES ({values}) IF NOT EXISTS",
                    table.0, table.1
                ));
            }
            let rows = inserts.len();
            let cql = if rows == 1 {
                inserts.remove(0)
            } else {
                format!("BEGIN BATCH {} APPLY BATCH", inserts.join("; "))
            };
            Ok(CqlDml {
                kind: DmlKind::Insert,
                table,
                cql,
                rows,
            })
        }
        Statement::Update(update) => {
            if update.returning.is_some() || update.from.is_some() {
                return Err(unsupported(
                    "UPDATE ... FROM and RETURNING are not supported",
                ));
            }
            let table = qualified(single_table(std::slice::from_ref(&update.table))?)?;
            let Some(selection) = &update.selection else {
                return Err(unsupported(
                    "UPDATE needs a WHERE clause naming the full primary key",
                ));
            };
            let assignments = update
                .assignments
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Ok(CqlDml {
                kind: DmlKind::Update,
                cql: format!(
                    "UPDATE \"{}\".\"{}\" SET {assignments} WHERE {selection} IF EXISTS",
                    table.0, table.1
                ),
                table,
                rows: 1,
            })
        }
        Statement::Delete(delete) => {
            if delete.returning.is_some() || delete.using.is_some() {
                return Err(unsupported(
                    "DELETE ... USING and RETURNING are not supported",
                ));
            }
            let tables = match &delete.from {
                FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
            };
            let table = qualified(single_table(tables)?)?;
            let Some(selection) = &delete.selection else {
                return Err(unsupported(
                    "DELETE needs a WHERE clause naming the full primary key (TRUNCATE through CQL empties a table)",
                ));
            };
            Ok(CqlDml {
                kind: DmlKind::Delete,
                cql: format!(
                    "DELETE FROM \"{}\".\"{}\" WHERE {selection} IF EXISTS",
                    table.0, table.1
                ),
                table,
                rows: 1,
            })
        }
        _ => Err(unsupported("not a DML statement")),
    }
}

/// Runs the CQL form; returns the rows written. Blocking (it calls
/// `Db::execute`): run it off the async runtime.
///
/// # Errors
/// `23505` when an INSERT finds an existing key; the CQL executor's error
/// mapped by [`sqlstate::from_cql`].
pub fn execute(shared: &Shared, dml: &CqlDml) -> Result<usize, PgWireError> {
    let parsed = concord_cql_parser::parse(&dml.cql).map_err(|error| {
        sqlstate::error(
            sqlstate::SYNTAX_ERROR,
            format!("{error} (in the statement's CQL form: {})", dml.cql),
        )
    })?;
    let session = Session::default();
    let mut context = Context {
        shared,
        session: &session,
        keyspace: None,
        binds: BoundValues::default(),
        page_rows: None,
        paging_state: None,
        version: Version::V4,
        text: Some(&dml.cql),
    };
    let result = execute_statement(&mut context, &parsed.statement)
        .map_err(|error| sqlstate::from_cql(&error))?;
    let applied = match result {
        ResResultBody::Rows(rows) => rows
            .rows_content
            .first()
            .and_then(|row| row.first())
            .and_then(|cell| cell.as_slice())
            .is_some_and(|bytes| bytes == [1]),
        _ => true,
    };
    match (dml.kind, applied) {
        (_, true) => Ok(dml.rows),
        (DmlKind::Insert, false) => Err(sqlstate::error(
            sqlstate::UNIQUE_VIOLATION,
            format!(
                "duplicate key value violates the primary key of {}.{}: a row with this key exists (nothing was written)",
                dml.table.0, dml.table.1
            ),
        )),
        (DmlKind::Update | DmlKind::Delete, false) => Ok(0),
    }
}
