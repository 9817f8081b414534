//! The catalog context: a DataFusion session whose tables are the node's
//! tables as empty, schema-only tables, with `pg_catalog` (from
//! `datafusion-pg-catalog`) and `information_schema` over them. psql's `\d`
//! family and BI tools' introspection run here; so does planning a data query
//! to describe its result columns. It never reads data: data queries execute
//! through `Db::sql_with`.
//!
//! Rebuilt when the schema version changes (DDL through CQL), so `\dt` sees a
//! table as soon as `CREATE TABLE` returns.

use std::sync::Arc;

use ::pgwire::error::PgWireError;
use arrow::datatypes::DataType;
use concord_storage::schema::TableDef;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::empty::EmptyTable;
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, Volatility, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use parking_lot::Mutex;

use crate::Db;
use crate::pgwire::sqlstate;

/// The database (catalog) name clients see: `current_database()`, psql's
/// prompt, Flight SQL's catalog.
pub const DATABASE_NAME: &str = "concord";
/// The Postgres version the endpoint reports (`server_version`,
/// `version()`); clients gate SQL features on the major version.
pub const SERVER_VERSION: &str = "15.0";

/// `version()`'s text.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Concord {}, Postgres wire endpoint; not a PostgreSQL server)",
        env!("CARGO_PKG_VERSION")
    )
}

/// The cached catalog context, keyed by schema version.
pub struct Catalog {
    db: Arc<Db>,
    cached: Mutex<Option<(u64, Arc<SessionContext>)>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(db: Arc<Db>) -> Catalog {
        Catalog {
            db,
            cached: Mutex::new(None),
        }
    }

    /// The context for the current schema.
    ///
    /// # Errors
    /// `XX000` if a table's Arrow schema or the pg_catalog cannot be built.
    pub fn context(&self) -> Result<Arc<SessionContext>, PgWireError> {
        let schema = self.db.schema();
        let mut cached = self.cached.lock();
        if let Some((version, context)) = cached.as_ref()
            && *version == schema.version
        {
            return Ok(Arc::clone(context));
        }
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(DATABASE_NAME, "public");
        let context = SessionContext::new_with_config(config);
        let catalog = context.catalog(DATABASE_NAME).ok_or_else(|| {
            sqlstate::error(
                sqlstate::INTERNAL_ERROR,
                "the catalog context has no catalog",
            )
        })?;
        for keyspace in schema.keyspaces() {
            let provider = MemorySchemaProvider::new();
            for table in keyspace.tables.values() {
                let arrow_schema = concord_columnar::sql::table_schema(table)
                    .map_err(|error| sqlstate::from_sql(&error))?;
                provider
                    .register_table(table.name.clone(), Arc::new(EmptyTable::new(arrow_schema)))
                    .map_err(|error| sqlstate::from_datafusion(&error))?;
            }
            catalog
                .register_schema(&keyspace.def.name, Arc::new(provider))
                .map_err(|error| sqlstate::from_datafusion(&error))?;
        }
        datafusion_pg_catalog::setup_pg_catalog(&context, DATABASE_NAME, EmptyContextProvider)
            .map_err(|error| sqlstate::from_datafusion(&error))?;
        let version = version_string();
        context.register_udf(create_udf(
            "version",
            vec![],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(move |_: &[ColumnarValue]| {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                    version.clone(),
                ))))
            }),
        ));
        let context = Arc::new(context);
        *cached = Some((schema.version, Arc::clone(&context)));
        Ok(context)
    }

    /// The plan's positional parameters (`$1`, `$2`, ...) in order, with the type the
    /// planner inferred for each (`None` when it could not).
    ///
    /// # Errors
    /// The planner's error as a SQLSTATE.
    pub fn ordered_parameters(
        plan: &LogicalPlan,
    ) -> Result<Vec<(usize, Option<DataType>)>, PgWireError> {
        let mut parameters: Vec<(usize, Option<DataType>)> = plan
            .get_parameter_types()
            .map_err(|error| sqlstate::from_datafusion(&error))?
            .into_iter()
            .filter_map(|(name, ty)| {
                name.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .map(|n| (n, ty))
            })
            .collect();
        parameters.sort_by_key(|(n, _)| *n);
        Ok(parameters)
    }

    /// Plans `statement` here (no data read), with `*` over a table leaving
    /// out the hidden columns as `Db::sql` does, so the planned schema is the
    /// schema of the rows `Db::sql` returns.
    ///
    /// # Errors
    /// The planner's error as a SQLSTATE.
    pub async fn plan(&self, statement: &Statement) -> Result<LogicalPlan, PgWireError> {
        let context = self.context()?;
        let tables: Vec<Arc<TableDef>> = self
            .db
            .schema()
            .keyspaces()
            .flat_map(|keyspace| keyspace.tables.values().cloned())
            .collect();
        let mut statement = DfStatement::Statement(Box::new(statement.clone()));
        concord_columnar::sql::hide_hidden_columns(&mut statement, &tables);
        context
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|error| sqlstate::from_datafusion(&error))
    }
}
