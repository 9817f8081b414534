//! Cells: a value (or a deletion) with its write time and optional expiry,
//! and the last-write-wins rule that reconciles two versions of one cell.
//!
//! On-disk form of a cell value (big endian):
//!
//! ```text
//!   live:      [0x00][write_time_micros i64]                               [value bytes...]
//!   expiring:  [0x01][write_time_micros i64][expiry_seconds i64][ttl u32][value bytes...]
//!   tombstone: [0x02][write_time_micros i64]
//! ```
//!
//! Reconciliation (Cassandra's rule): the higher write time wins; at equal
//! write times a tombstone wins over a live cell, then the greater value
//! bytes win, then the later expiry. The rule is a total order on versions,
//! so merging is associative and commutative, as an LSM merge operator must be.

use std::cmp::Ordering;

use crate::engine::MergeOperator;
use crate::{Error, Result};

/// The largest value a single cell may hold, in bytes.
pub const CELL_VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Write time in microseconds since the Unix epoch (CQL `WRITETIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTime(pub i64);

impl WriteTime {
    /// The second the write happened in, which expiry is computed from.
    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
}

const TAG_LIVE: u8 = 0;
const TAG_EXPIRING: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;

/// Expiry of a cell written with a TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The second at which the cell stops being visible.
    pub expiry_seconds: i64,
    /// The TTL it was written with (for CQL `TTL()`).
    pub ttl_seconds: u32,
}

/// One version of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub write_time: WriteTime,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    pub expiry: Option<Expiry>,
}

impl Cell {
    pub fn live(write_time: WriteTime, value: Vec<u8>, expiry: Option<Expiry>) -> Cell {
        Cell {
            write_time,
            value: Some(value),
            expiry,
        }
    }

    pub fn tombstone(write_time: WriteTime) -> Cell {
        Cell {
            write_time,
            value: None,
            expiry: None,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Returns true if the cell holds a value that has not expired at `now_seconds`.
    pub fn is_live(&self, now_seconds: i64) -> bool {
        self.value.is_some()
            && self
                .expiry
                .is_none_or(|expiry| expiry.expiry_seconds > now_seconds)
    }

    /// Encodes the cell into its on-disk form.
    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(1 + 8 + 12 + value_len);
        match (&self.value, &self.expiry) {
            (None, _) => {
                out.push(TAG_TOMBSTONE);
                out.extend_from_slice(&self.write_time.0.to_be_bytes());
            }
            (Some(value), None) => {
                out.push(TAG_LIVE);
                out.extend_from_slice(&self.write_time.0.to_be_bytes());
                out.extend_from_slice(value);
            }
            (Some(value), Some(expiry)) => {
                out.push(TAG_EXPIRING);
                out.extend_from_slice(&self.write_time.0.to_be_bytes());
                out.extend_from_slice(&expiry.expiry_seconds.to_be_bytes());
                out.extend_from_slice(&expiry.ttl_seconds.to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        out
    }

    /// Decodes a cell from its on-disk form.
    ///
    /// # Errors
    /// `Corruption` naming what did not decode.
    pub fn decode(bytes: &[u8]) -> Result<Cell> {
        let header = CellHeader::decode(bytes)?;
        let value = match header.tag {
            TAG_TOMBSTONE => None,
            _ => Some(bytes[header.value_offset..].to_vec()),
        };
        Ok(Cell {
            write_time: header.write_time,
            value,
            expiry: header.expiry,
        })
    }
}

/// The fixed part of an encoded cell, decoded without copying the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellHeader {
    tag: u8,
    pub write_time: WriteTime,
    pub expiry: Option<Expiry>,
    value_offset: usize,
}

impl CellHeader {
    /// Decodes the header of an encoded cell.
    ///
    /// # Errors
    /// `Corruption` when the bytes are too short or the tag is unknown.
    pub fn decode(bytes: &[u8]) -> Result<CellHeader> {
        let corrupt =
            |what: &str| Error::corruption(format!("cell {what} ({} bytes)", bytes.len()));
        let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("is empty"))?;
        let write_time = read_i64(rest, 0).ok_or_else(|| corrupt("write time is truncated"))?;
        match tag {
            TAG_LIVE => Ok(CellHeader {
                tag,
                write_time: WriteTime(write_time),
                expiry: None,
                value_offset: 9,
            }),
            TAG_TOMBSTONE if bytes.len() == 9 => Ok(CellHeader {
                tag,
                write_time: WriteTime(write_time),
                expiry: None,
                value_offset: 9,
            }),
            TAG_TOMBSTONE => Err(corrupt("tombstone has trailing bytes")),
            TAG_EXPIRING => {
                let expiry_seconds =
                    read_i64(rest, 8).ok_or_else(|| corrupt("expiry is truncated"))?;
                let ttl_bytes = rest
                    .get(16..20)
                    .ok_or_else(|| corrupt("ttl is truncated"))?;
                let mut ttl = [0u8; 4];
                ttl.copy_from_slice(ttl_bytes);
                Ok(CellHeader {
                    tag,
                    write_time: WriteTime(write_time),
                    expiry: Some(Expiry {
                        expiry_seconds,
                        ttl_seconds: u32::from_be_bytes(ttl),
                    }),
                    value_offset: 21,
                })
            }
            _ => Err(corrupt(&format!("has unknown tag {tag}"))),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.tag == TAG_TOMBSTONE
    }

    /// Returns true if the cell is a value not expired at `now_seconds`.
    pub fn is_live(&self, now_seconds: i64) -> bool {
        !self.is_tombstone()
            && self
                .expiry
                .is_none_or(|expiry| expiry.expiry_seconds > now_seconds)
    }

    /// The value bytes of `encoded`, the cell this header was decoded from.
    pub fn value<'a>(&self, encoded: &'a [u8]) -> &'a [u8] {
        &encoded[self.value_offset.min(encoded.len())..]
    }
}

fn read_i64(bytes: &[u8], offset: usize) -> Option<i64> {
    let slice = bytes.get(offset..offset + 8)?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(slice);
    Some(i64::from_be_bytes(buf))
}

/// Orders two encoded versions of a cell: `Greater` means `a` wins.
///
/// # Errors
/// `Corruption` when either does not decode.
pub fn reconcile(a: &[u8], b: &[u8]) -> Result<Ordering> {
    let header_a = CellHeader::decode(a)?;
    let header_b = CellHeader::decode(b)?;
    Ok(header_a
        .write_time
        .cmp(&header_b.write_time)
        .then_with(|| header_a.is_tombstone().cmp(&header_b.is_tombstone()))
        .then_with(|| header_a.value(a).cmp(header_b.value(b)))
        .then_with(|| {
            let expiry = |header: &CellHeader| header.expiry.map(|e| e.expiry_seconds);
            expiry(&header_a).cmp(&expiry(&header_b))
        }))
}

/// The row family's merge operator: last write wins.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriteWins;

impl MergeOperator for LastWriteWins {
    fn name(&self) -> &'static str {
        "concord.last_write_wins.v1"
    }

    fn merge(&self, _key: &[u8], existing: Option<&[u8]>, operands: &[&[u8]]) -> Option<Vec<u8>> {
        let mut winner: Option<&[u8]> = existing;
        for &operand in operands {
            winner = match winner {
                None => Some(operand),
                Some(current) => match reconcile(current, operand) {
                    Ok(Ordering::Less) => Some(operand),
                    Ok(_) => Some(current),
                    Err(_) => return None,
                },
            };
        }
        winner.map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip() {
        let cells = [
            Cell::live(WriteTime(5), b"abc".to_vec(), None),
            Cell::live(
                WriteTime(-7),
                Vec::new(),
                Some(Expiry {
                    expiry_seconds: 99,
                    ttl_seconds: 3,
                }),
            ),
            Cell::tombstone(WriteTime(i64::MAX)),
        ];
        for cell in cells {
            assert_eq!(Cell::decode(&cell.encode()).unwrap(), cell);
        }
    }

    #[test]
    fn corrupt_cells_are_errors() {
        for bytes in [
            &[][..],
            &[0, 1, 2],
            &[9, 0, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 5],
        ] {
            let error = Cell::decode(bytes).unwrap_err();
            assert!(matches!(error, Error::Corruption(_)), "{error}");
        }
    }

    #[test]
    fn last_write_wins_is_order_independent() {
        let versions = [
            Cell::live(WriteTime(10), b"a".to_vec(), None).encode(),
            Cell::live(WriteTime(10), b"b".to_vec(), None).encode(),
            Cell::tombstone(WriteTime(9)).encode(),
            Cell::live(WriteTime(3), b"z".to_vec(), None).encode(),
        ];
        let expected = versions[1].clone();
        let operator = LastWriteWins;
        let mut orders = vec![
            vec![0, 1, 2, 3],
            vec![3, 2, 1, 0],
            vec![2, 0, 3, 1],
            vec![1, 3, 0, 2],
        ];
        for order in orders.drain(..) {
            let operands: Vec<&[u8]> = order.iter().map(|&idx| versions[idx].as_slice()).collect();
            assert_eq!(operator.merge(b"k", None, &operands).unwrap(), expected);
            let (first, rest) = operands.split_first().unwrap();
            assert_eq!(operator.merge(b"k", Some(first), rest).unwrap(), expected);
        }
        // At equal write times a tombstone wins.
        let tombstone = Cell::tombstone(WriteTime(10)).encode();
        assert_eq!(
            operator
                .merge(b"k", Some(&versions[1]), &[&tombstone])
                .unwrap(),
            tombstone
        );
    }
}
