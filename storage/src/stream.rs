//! Raw row movement for range streaming (design/bootstrap-streaming.md): the
//! row-family key ranges of one table's token range, and exporting,
//! clearing and importing those keys as raw `(key, cell bytes)` pairs.
//!
//! ```text
//!  token range (start, end] of table T
//!    → key ranges of Family::Rows, in key order:
//!        normal  (start < end):  [T|tok(start+1), T|tok(end+1))
//!        wraps or full ring:     [T|tok(MIN), T|tok(end+1))  and  [T|tok(start+1), T+1)
//!  export_chunk(view, T, range, after, bytes_max) → RowChunk{cells, next}
//!  import_batch(T, range, chunk)                  → WriteBatch of puts (every key checked)
//!  clear_batch(T, range)                          → WriteBatch of delete_ranges
//! ```
//!
//! Cells move as stored (header with write time, expiry and tombstone tag),
//! so write times, TTLs and every deletion shape survive the move. A cell is
//! put, not merged: the importing node holds no other version of the key
//! (it clears the range first).

use crate::cell::CellHeader;
use crate::engine::{Direction, Family, KeyRange, ReadView, WriteBatch, prefix_successor};
use crate::keys;
use crate::partitioner::{Token, TokenRange};
use crate::schema::TableId;
use crate::{Error, Result};

/// The largest chunk (bytes of keys and values) an import accepts: one
/// engine write batch.
pub const STREAM_CHUNK_BYTES_MAX: usize = crate::engine::WRITE_BATCH_BYTES_MAX;

/// Raw row-family pairs of one table's token range, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowChunk {
    /// `(key, encoded cell)` pairs.
    pub cells: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last key of the chunk when more keys of the range follow (the
    /// next chunk starts after it); `None` when the range is exhausted.
    pub next: Option<Vec<u8>>,
}

impl RowChunk {
    /// Bytes of keys and values in the chunk.
    pub fn size_bytes(&self) -> usize {
        self.cells
            .iter()
            .map(|(key, cell)| key.len() + cell.len())
            .sum()
    }
}

/// The half-open row-family key ranges `[start, end)` holding exactly the
/// keys of `table` whose token lies in `range`, in key order.
pub fn token_range_key_ranges(table: TableId, range: &TokenRange) -> Vec<(Vec<u8>, Vec<u8>)> {
    let table_prefix = keys::table_prefix(table);
    let table_end = prefix_successor(&table_prefix).unwrap_or_else(|| vec![0xFF; 5]);
    let token_key = |token: Token| {
        let mut key = table_prefix.clone();
        key.extend_from_slice(&keys::token_bytes(token));
        key
    };
    let after_token = |token: Token| match token.0.checked_add(1) {
        Some(next) => token_key(Token(next)),
        None => table_end.clone(),
    };
    if range.start < range.end {
        vec![(after_token(range.start), after_token(range.end))]
    } else {
        // Wrapping, or the full ring: the bottom of the ring up to `end`,
        // then everything after `start`.
        vec![
            (token_key(Token(i64::MIN)), after_token(range.end)),
            (after_token(range.start), table_end),
        ]
    }
}

/// Returns true if `key` is a row key of `table` whose token lies in `range`.
pub fn key_in_range(table: TableId, range: &TokenRange, key: &[u8]) -> bool {
    let Some(token) = key.get(4..12) else {
        return false;
    };
    let mut token_raw = [0u8; 8];
    token_raw.copy_from_slice(token);
    key[..4] == table.0.to_be_bytes() && range.contains(keys::token_from_bytes(token_raw))
}

/// Reads the next chunk of `table`'s keys in `range` from `view`: the pairs
/// after key `after` (from the range's start when `None`), in key order,
/// until they reach `bytes_max` bytes of keys and values (always at least
/// one pair, so a cell larger than `bytes_max` still moves).
///
/// # Errors
/// `InvalidRequest` for `bytes_max` 0; the engine's scan errors.
pub fn export_chunk(
    view: &dyn ReadView,
    table: TableId,
    range: &TokenRange,
    after: Option<&[u8]>,
    bytes_max: usize,
) -> Result<RowChunk> {
    if bytes_max == 0 {
        return Err(Error::InvalidRequest(
            "a range export chunk must allow at least one byte".into(),
        ));
    }
    let mut chunk = RowChunk::default();
    let mut bytes = 0usize;
    for (start, end) in token_range_key_ranges(table, range) {
        let start = match after {
            Some(after) if after >= end.as_slice() => continue,
            Some(after) if after >= start.as_slice() => std::ops::Bound::Excluded(after.to_vec()),
            _ => std::ops::Bound::Included(start),
        };
        let key_range = KeyRange {
            start,
            end: std::ops::Bound::Excluded(end),
        };
        for item in view.scan(Family::Rows, &key_range, Direction::Forward)? {
            let (key, cell) = item?;
            if bytes > 0 && bytes + key.len() + cell.len() > bytes_max {
                chunk.next = chunk.cells.last().map(|(key, _)| key.clone());
                return Ok(chunk);
            }
            bytes += key.len() + cell.len();
            chunk.cells.push((key, cell));
        }
    }
    Ok(chunk)
}

/// A batch deleting every key of `table` in `range`.
pub fn clear_batch(table: TableId, range: &TokenRange) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for (start, end) in token_range_key_ranges(table, range) {
        batch.delete_range(Family::Rows, start, end);
    }
    batch
}

/// A batch putting every pair of `chunk`, after checking the whole chunk:
/// every key belongs to `table` and `range` and every cell's header decodes.
///
/// # Errors
/// `LimitExceeded` for a chunk over [`STREAM_CHUNK_BYTES_MAX`];
/// `InvalidRequest` for a key outside the table or range, or a cell that
/// does not decode (nothing of the chunk is in the batch then).
pub fn import_batch(table: TableId, range: &TokenRange, chunk: &RowChunk) -> Result<WriteBatch> {
    let size_bytes = chunk.size_bytes();
    if size_bytes > STREAM_CHUNK_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "an imported range chunk".into(),
            limit: "STREAM_CHUNK_BYTES_MAX",
            actual: size_bytes,
            max: STREAM_CHUNK_BYTES_MAX,
        });
    }
    let mut batch = WriteBatch::new();
    for (key, cell) in &chunk.cells {
        if !key_in_range(table, range, key) {
            return Err(Error::InvalidRequest(format!(
                "imported key {} is not a row of table {} in token range ({}, {}]",
                hex_prefix(key),
                table.0,
                range.start,
                range.end
            )));
        }
        CellHeader::decode(cell).map_err(|error| {
            Error::InvalidRequest(format!(
                "imported cell of key {} does not decode: {error}",
                hex_prefix(key)
            ))
        })?;
        batch.put(Family::Rows, key.clone(), cell.clone());
    }
    Ok(batch)
}

/// The first bytes of a key in hex, for error messages.
fn hex_prefix(key: &[u8]) -> String {
    const SHOWN: usize = 24;
    let mut text: String = key
        .iter()
        .take(SHOWN)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if key.len() > SHOWN {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_key(table: u32, token: i64) -> Vec<u8> {
        let mut key = keys::table_prefix(TableId(table));
        key.extend_from_slice(&keys::token_bytes(Token(token)));
        key.push(keys::SECTION_PARTITION_DELETION);
        key
    }

    /// Every key the key ranges hold is in the token range and the other
    /// way round, for normal, wrapping, full-ring and edge ranges.
    #[test]
    fn key_ranges_hold_exactly_the_range_tokens() {
        let tokens = [
            i64::MIN,
            i64::MIN + 1,
            -100,
            -1,
            0,
            1,
            99,
            100,
            101,
            i64::MAX - 1,
            i64::MAX,
        ];
        let ranges = [
            TokenRange::full_ring(),
            TokenRange {
                start: Token(-100),
                end: Token(100),
            },
            TokenRange {
                start: Token(100),
                end: Token(-100),
            },
            TokenRange {
                start: Token(0),
                end: Token(i64::MIN),
            },
            TokenRange {
                start: Token(i64::MIN),
                end: Token(i64::MAX),
            },
            TokenRange {
                start: Token(i64::MAX),
                end: Token(0),
            },
            TokenRange {
                start: Token(5),
                end: Token(5),
            },
        ];
        for range in ranges {
            let key_ranges = token_range_key_ranges(TableId(7), &range);
            assert!(key_ranges.windows(2).all(|pair| pair[0].1 <= pair[1].0));
            for token in tokens {
                let key = row_key(7, token);
                let in_keys = key_ranges
                    .iter()
                    .any(|(start, end)| key >= *start && key < *end);
                assert_eq!(in_keys, range.contains(Token(token)), "{range:?} {token}");
                assert_eq!(key_in_range(TableId(7), &range, &key), in_keys);
                let other_table = row_key(8, token);
                assert!(
                    !key_ranges
                        .iter()
                        .any(|(start, end)| other_table >= *start && other_table < *end)
                );
                assert!(!key_in_range(TableId(8), &range, &key));
            }
        }
    }
}
