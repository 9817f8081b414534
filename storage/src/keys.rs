//! The order-preserving key layout of the row family.
//!
//! Every key of a table starts with the table id and the partition's token,
//! so a table is one contiguous range and its partitions sort in token order
//! (the ring order Cassandra drivers route by). Within a partition:
//!
//! ```text
//!  [table u32][token u64*][pk component]...  partition prefix
//!     [0x10]                                  partition deletion     (tombstone cell)
//!     [0x20][0x01][column u16]...             static cells
//!     [0x30][start len u16][start][end]       range tombstone        (tombstone cell)
//!     [0x40][clustering component]...[0x01][column u16]...   row cells
//!
//!  component   = [0x02][ordered encoding of the value, inverted if DESC]
//!  column part = [column u16]                         simple cell
//!              | [column u16][0x00]                   collection deletion
//!              | [column u16][0x01][element key]      collection element
//!  column 0 = row deletion, column 1 = row marker (INSERT liveness).
//!  token* = token with its sign bit flipped, big endian, so bytes sort as i64.
//! ```
//!
//! Because every clustering component starts with 0x02 and a row's cells
//! start with 0x01, a clustering prefix `P` bounds its rows bytewise: every
//! key extending `P` lies in `[P, P ‖ 0x03)`. Slices and range tombstones use
//! exactly these bounds.

use crate::partitioner::{self, Token};
use crate::schema::{ColumnId, TableDef, TableId};
use crate::value::{ClusteringOrder, CqlValue, native, ordered};
use crate::{Error, Result};

pub const SECTION_PARTITION_DELETION: u8 = 0x10;
pub const SECTION_STATIC: u8 = 0x20;
pub const SECTION_RANGE_TOMBSTONES: u8 = 0x30;
pub const SECTION_ROWS: u8 = 0x40;

/// Starts every clustering and partition key component.
pub const COMPONENT: u8 = 0x02;
/// Ends a row's clustering: the row's cells follow.
pub const CELLS: u8 = 0x01;
/// Sorts after every extension of a clustering prefix.
pub const AFTER_PREFIX: u8 = 0x03;

pub const COMPLEX_DELETION: u8 = 0x00;
pub const COMPLEX_ELEMENT: u8 = 0x01;

/// The pseudo-column holding a row deletion.
pub const ROW_DELETION_COLUMN: ColumnId = ColumnId(0);
/// The pseudo-column holding the row marker written by `INSERT`.
pub const ROW_MARKER_COLUMN: ColumnId = ColumnId(1);

/// The largest serialized partition key component (Cassandra's composite
/// key format stores its length in 16 bits).
pub const PARTITION_KEY_COMPONENT_BYTES_MAX: usize = 65_535;

/// The 4-byte prefix of every key of `table`.
pub fn table_prefix(table: TableId) -> Vec<u8> {
    table.0.to_be_bytes().to_vec()
}

/// A token as 8 bytes that sort as the signed value.
pub fn token_bytes(token: Token) -> [u8; 8] {
    ((token.0 as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`token_bytes`].
pub fn token_from_bytes(bytes: [u8; 8]) -> Token {
    Token((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// A partition key, validated and encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPartition {
    pub token: Token,
    /// Table id, token and key components: the prefix of every key of the
    /// partition.
    pub prefix: Vec<u8>,
    /// The partition key as Cassandra serializes it (what the token hashes).
    pub serialized_key: Vec<u8>,
}

impl EncodedPartition {
    /// The prefix of one section of the partition.
    pub fn section(&self, section: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 1);
        key.extend_from_slice(&self.prefix);
        key.push(section);
        key
    }
}

/// Validates and encodes a partition key.
///
/// # Errors
/// `InvalidRequest` for a wrong number of components, `InvalidValue` for a
/// value that does not match its column.
pub fn encode_partition(table: &TableDef, values: &[CqlValue]) -> Result<EncodedPartition> {
    let key_columns = table.partition_key();
    if key_columns.len() != values.len() {
        return Err(Error::InvalidRequest(format!(
            "table {} has {} partition key columns but {} values were given",
            table.qualified_name(),
            key_columns.len(),
            values.len()
        )));
    }
    let mut serialized_components = Vec::with_capacity(values.len());
    let mut prefix = table_prefix(table.id);
    prefix.extend_from_slice(&[0; 8]);
    for (column, value) in key_columns.zip(values) {
        value
            .validate(&column.ty)
            .map_err(|error| in_column(error, &column.name))?;
        let mut serialized = Vec::new();
        native::serialize(value, &column.ty, &mut serialized)?;
        if serialized.len() > PARTITION_KEY_COMPONENT_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: format!("partition key column {}", column.name),
                limit: "PARTITION_KEY_COMPONENT_BYTES_MAX",
                actual: serialized.len(),
                max: PARTITION_KEY_COMPONENT_BYTES_MAX,
            });
        }
        serialized_components.push(serialized);
        prefix.push(COMPONENT);
        // Exact: 1.0 and 1.00 (or two NaNs) are different partitions in
        // Cassandra, which hashes the bytes the client sent.
        ordered::encode_exact(value, &column.ty, ClusteringOrder::Asc, &mut prefix)?;
    }
    let component_slices: Vec<&[u8]> = serialized_components.iter().map(Vec::as_slice).collect();
    let serialized_key = partitioner::serialize_partition_key(&component_slices);
    let token = partitioner::token(&serialized_key);
    prefix[4..12].copy_from_slice(&token_bytes(token));
    Ok(EncodedPartition {
        token,
        prefix,
        serialized_key,
    })
}

/// Decodes the partition a row-family key belongs to.
///
/// # Errors
/// `Corruption` when the key does not decode for `table`.
pub fn decode_partition(table: &TableDef, key: &[u8]) -> Result<(EncodedPartition, Vec<CqlValue>)> {
    let corrupt = |what: &str| {
        Error::corruption(format!(
            "row key of table {} {what}",
            table.qualified_name()
        ))
    };
    if key.len() < 12 || key[..4] != table.id.0.to_be_bytes() {
        return Err(corrupt("is shorter than its partition prefix"));
    }
    let mut token_raw = [0u8; 8];
    token_raw.copy_from_slice(&key[4..12]);
    let token = token_from_bytes(token_raw);
    let mut rest = &key[12..];
    let mut values = Vec::new();
    let mut serialized_components = Vec::new();
    for column in table.partition_key() {
        let Some((&COMPONENT, after_header)) = rest.split_first() else {
            return Err(corrupt("lacks a partition key component"));
        };
        rest = after_header;
        let value = ordered::decode_exact(&column.ty, ClusteringOrder::Asc, &mut rest)?;
        let mut serialized = Vec::new();
        native::serialize(&value, &column.ty, &mut serialized)?;
        serialized_components.push(serialized);
        values.push(value);
    }
    let prefix_len = key.len() - rest.len();
    let component_slices: Vec<&[u8]> = serialized_components.iter().map(Vec::as_slice).collect();
    let serialized_key = partitioner::serialize_partition_key(&component_slices);
    Ok((
        EncodedPartition {
            token,
            prefix: key[..prefix_len].to_vec(),
            serialized_key,
        },
        values,
    ))
}

/// Encodes a clustering prefix (all or the first few clustering values).
///
/// # Errors
/// `InvalidRequest` for too many values, `InvalidValue` for a mismatch.
pub fn encode_clustering(table: &TableDef, values: &[CqlValue], out: &mut Vec<u8>) -> Result<()> {
    let clustering = table.clustering();
    if values.len() > clustering.len() {
        return Err(Error::InvalidRequest(format!(
            "table {} has {} clustering columns but {} values were given",
            table.qualified_name(),
            clustering.len(),
            values.len()
        )));
    }
    for (column, value) in clustering.zip(values) {
        value
            .validate(&column.ty)
            .map_err(|error| in_column(error, &column.name))?;
        let order = match column.kind {
            crate::schema::ColumnKind::Clustering(order) => order,
            _ => ClusteringOrder::Asc,
        };
        out.push(COMPONENT);
        ordered::encode(value, &column.ty, order, out)?;
    }
    Ok(())
}

/// Decodes a full clustering from the start of `input`, advancing it.
///
/// # Errors
/// `Corruption` when the bytes do not decode.
pub fn decode_clustering(table: &TableDef, input: &mut &[u8]) -> Result<Vec<CqlValue>> {
    let mut values = Vec::with_capacity(table.clustering().len());
    for column in table.clustering() {
        let Some((&COMPONENT, after_header)) = input.split_first() else {
            return Err(Error::corruption(format!(
                "row key of table {} lacks clustering column {}",
                table.qualified_name(),
                column.name
            )));
        };
        *input = after_header;
        let order = match column.kind {
            crate::schema::ColumnKind::Clustering(order) => order,
            _ => ClusteringOrder::Asc,
        };
        values.push(ordered::decode(&column.ty, order, input)?);
    }
    Ok(values)
}

/// Appends a column part (see the module docs) to `out`.
pub fn push_column(out: &mut Vec<u8>, column: ColumnId) {
    out.push(CELLS);
    out.extend_from_slice(&column.0.to_be_bytes());
}

/// Adds the column name to a value error.
fn in_column(error: Error, column: &str) -> Error {
    match error {
        Error::InvalidValue { target, reason } => Error::InvalidValue {
            target: format!("column {column} ({target})"),
            reason,
        },
        other => other,
    }
}

/// Decodes the column id at the start of a column part (after `CELLS`).
///
/// # Errors
/// `Corruption` when truncated.
pub fn decode_column(part: &[u8]) -> Result<(ColumnId, &[u8])> {
    match part {
        [CELLS, high, low, rest @ ..] => Ok((ColumnId(u16::from_be_bytes([*high, *low])), rest)),
        _ => Err(Error::corruption(format!(
            "cell key column part {part:02x?} does not decode"
        ))),
    }
}
