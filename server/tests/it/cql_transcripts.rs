//! Data-driven CQL behaviour: every statement of `server/tests/cql/*.cql`
//! (statements are separated by blank lines) runs through the endpoint's
//! executor on a fresh database, and the transcript of results is compared
//! with the `.expected` file beside it. `UPDATE_EXPECT=1 cargo test -p
//! concord-server --test it cql_transcripts` regenerates the files (this
//! project's `--complete`); review the diff before committing it.

use std::fmt::Write;
use std::sync::Arc;

use cassandra_protocol::consistency::Consistency;
use cassandra_protocol::frame::Version;
use cassandra_protocol::frame::message_query::BodyReqQuery;
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_response::ResponseBody;
use cassandra_protocol::frame::message_result::{
    ColType, ColTypeOption, ColTypeOptionValue, ResResultBody,
};
use cassandra_protocol::query::QueryParams;
use concord_server::Db;
use concord_server::config::{Config, TxnMode};
use concord_server::cql::connection::Session;
use concord_server::cql::{Limits, Shared, execute, values};
use concord_storage::types::{CqlType, UdtDefinition};
use concord_storage::value::native;
use expect_test::expect_file;

fn cql_type(option: &ColTypeOption) -> CqlType {
    let boxed = |option: &ColTypeOption| Box::new(cql_type(option));
    match (&option.id, &option.value) {
        (ColType::Ascii, _) => CqlType::Ascii,
        (ColType::Bigint, _) => CqlType::Bigint,
        (ColType::Blob, _) => CqlType::Blob,
        (ColType::Boolean, _) => CqlType::Boolean,
        (ColType::Counter, _) => CqlType::Counter,
        (ColType::Decimal, _) => CqlType::Decimal,
        (ColType::Double, _) => CqlType::Double,
        (ColType::Float, _) => CqlType::Float,
        (ColType::Int, _) => CqlType::Int,
        (ColType::Timestamp, _) => CqlType::Timestamp,
        (ColType::Uuid, _) => CqlType::Uuid,
        (ColType::Varchar, _) => CqlType::Text,
        (ColType::Varint, _) => CqlType::Varint,
        (ColType::Timeuuid, _) => CqlType::Timeuuid,
        (ColType::Inet, _) => CqlType::Inet,
        (ColType::Date, _) => CqlType::Date,
        (ColType::Time, _) => CqlType::Time,
        (ColType::Smallint, _) => CqlType::Smallint,
        (ColType::Tinyint, _) => CqlType::Tinyint,
        (ColType::Duration, _) => CqlType::Duration,
        (ColType::List, Some(ColTypeOptionValue::CList(element))) => CqlType::List(boxed(element)),
        (ColType::Set, Some(ColTypeOptionValue::CSet(element))) => CqlType::Set(boxed(element)),
        (ColType::Map, Some(ColTypeOptionValue::CMap(key, value))) => {
            CqlType::Map(boxed(key), boxed(value))
        }
        (ColType::Tuple, Some(ColTypeOptionValue::TupleType(tuple))) => {
            CqlType::Tuple(tuple.types.iter().map(cql_type).collect())
        }
        (ColType::Udt, Some(ColTypeOptionValue::UdtType(udt))) => {
            CqlType::Udt(Arc::new(UdtDefinition {
                keyspace: udt.ks.clone(),
                name: udt.udt_name.clone(),
                fields: udt
                    .descriptions
                    .iter()
                    .map(|(name, ty)| (name.clone(), cql_type(ty)))
                    .collect(),
            }))
        }
        other => panic!("unexpected column type {other:?}"),
    }
}

fn render(response: Result<ResponseBody, concord_server::cql::error::CqlError>) -> String {
    let result = match response {
        Err(error) => {
            let body = error.to_error_body();
            return format!("error 0x{:04x}: {}", body.ty.to_error_code(), body.message);
        }
        Ok(ResponseBody::Result(result)) => result,
        Ok(other) => return format!("{other:?}"),
    };
    match result {
        ResResultBody::Void => "ok".into(),
        ResResultBody::SetKeyspace(keyspace) => format!("keyspace {}", keyspace.body),
        ResResultBody::SchemaChange(change) => {
            format!(
                "schema change: {:?} {:?} {:?}",
                change.change_type, change.target, change.options
            )
        }
        ResResultBody::Prepared(_) => "prepared".into(),
        ResResultBody::Rows(rows) => {
            let names: Vec<&str> = rows
                .metadata
                .col_specs
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let types: Vec<CqlType> = rows
                .metadata
                .col_specs
                .iter()
                .map(|c| cql_type(&c.col_type))
                .collect();
            let mut out = names.join(" | ");
            for row in &rows.rows_content {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&types)
                    .map(|(cell, ty)| match cell.as_slice() {
                        None => "null".into(),
                        Some(bytes) => match native::deserialize(ty, bytes) {
                            Ok(value) => values::display_typed(&value, ty),
                            Err(error) => format!("<{error}>"),
                        },
                    })
                    .collect();
                let _ = write!(out, "\n{}", cells.join(" | "));
            }
            let _ = write!(out, "\n({} rows)", rows.rows_content.len());
            if rows.metadata.paging_state.is_some() {
                out.push_str(" more pages");
            }
            out
        }
        other => format!("{other:?}"),
    }
}

/// Runs `input` on a fresh database whose transactions run in `mode`: every
/// transcript passes in both modes against the same expected file.
fn transcript(input: &str, mode: TxnMode) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        txn_mode: Some(mode),
        ..Config::default()
    };
    let db = Arc::new(Db::open_with_config(&config).unwrap());
    let (events, _) = tokio::sync::broadcast::channel(16);
    let shared = Shared {
        db,
        limits: Limits::default(),
        address: "127.0.0.1:9042".parse().unwrap(),
        prepared: execute::PreparedCache::default(),
        events,
        in_flight: concord_server::cql::NodeInFlight::new(1),
    };
    let session = Session::default();
    let mut out = String::new();
    for statement in input.split("\n\n").map(str::trim).filter(|s| !s.is_empty()) {
        if statement.lines().all(|line| line.starts_with("--")) {
            let _ = writeln!(out, "{statement}\n");
            continue;
        }
        let request = RequestBody::Query(BodyReqQuery {
            query: statement.to_owned(),
            query_params: QueryParams {
                consistency: Consistency::One,
                ..QueryParams::default()
            },
        });
        let response = execute::handle_request(&shared, &session, request, Version::V4, false);
        let _ = writeln!(out, "> {statement}\n{}\n", render(response));
    }
    out
}

fn check(expected: expect_test::ExpectFile, input: &str, mode: TxnMode) {
    expected.assert_eq(&transcript(input, mode));
}

#[test]
fn ddl() {
    check(
        expect_file!["../cql/ddl.expected"],
        include_str!("../cql/ddl.cql"),
        TxnMode::Direct,
    );
}

#[test]
fn dml() {
    check(
        expect_file!["../cql/dml.expected"],
        include_str!("../cql/dml.cql"),
        TxnMode::Direct,
    );
}

#[test]
fn select() {
    check(
        expect_file!["../cql/select.expected"],
        include_str!("../cql/select.cql"),
        TxnMode::Direct,
    );
}

#[test]
fn transactions() {
    check(
        expect_file!["../cql/transactions.expected"],
        include_str!("../cql/transactions.cql"),
        TxnMode::Direct,
    );
}

// The same transcripts with every transaction through the Accord runtime.

#[test]
fn dml_accord() {
    check(
        expect_file!["../cql/dml.expected"],
        include_str!("../cql/dml.cql"),
        TxnMode::Accord,
    );
}

#[test]
fn select_accord() {
    check(
        expect_file!["../cql/select.expected"],
        include_str!("../cql/select.cql"),
        TxnMode::Accord,
    );
}

#[test]
fn transactions_accord() {
    check(
        expect_file!["../cql/transactions.expected"],
        include_str!("../cql/transactions.cql"),
        TxnMode::Accord,
    );
}
