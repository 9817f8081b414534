//! The change feed: every applied mutation, with its write time (the
//! transaction's executeAt), in the order positions were assigned, durable in
//! [`Family::Feed`] in the same batch as the rows it describes.
//!
//! The apply path calls [`ChangeFeed::begin`] around its timestamp
//! allocation, [`ChangeFeed::append`] once per mutation into the batch that
//! also holds the rows, and drops the ticket (or calls [`ChangeFeed::finish`])
//! once the batch is written or failed:
//!
//! ```text
//! let ticket = feed.begin(|| sequencer.next(clock));       // executeAt
//! rows::write_mutation(table, mutation, ticket.write_time(), &mut batch)?;
//! feed.append(&ticket, &mut batch, table, mutation)?;      // same batch
//! engine.write(batch, durability)?;                        // ticket drops after
//! ``` Consumers (the columnar replica, change-data capture) read
//! with [`read_from`] up to [`ChangeFeed::frontier`]: below the frontier's
//! position no record can still appear, and every write at or below its
//! watermark is in the feed. Records carry mutations, not cells: the op kinds
//! (upsert with TTL, cell delete, row delete, clustering-range delete,
//! partition delete) stay explicit, the TTL is resolved against the table
//! default at append time (so expiry is `write_time.seconds() + ttl`, as in
//! the row store, whatever the table default later becomes), and values use
//! a self-describing encoding, so a record still decodes after its column was
//! dropped. TTL expiry is not a record: it follows from the expiry times.
//!
//! ```text
//! key   = position: u64 big-endian                  (Family::Feed)
//!       | 0x00 (one byte: sorts first) → retention floor u64 BE (records before it are gone)
//! value = version u8 (1) | write_time i64 | table u32
//!       | n u32 | partition key value × n
//!       | n u32 | op × n
//! op    = 0 upsert  | clustering | liveness u8 | ttl_seconds u32 (0 = none) | n u32 | (column u16, cell op) × n
//!       | 1 delete row | clustering
//!       | 2 delete range | bound | bound          bound = 0 unbounded | 1 included values | 2 excluded values
//!       | 3 delete partition
//! value = tag u8 | payload   (lengths u32, integers big-endian; see `encode_value`)
//! ```

use std::collections::BTreeMap;

use num_bigint::BigInt;
use parking_lot::{Condvar, Mutex};

use crate::cell::{Expiry, WriteTime};
use crate::engine::{Direction, Family, KeyRange, ReadView, WriteBatch};
use crate::rows::{CellOp, Liveness, Mutation, RowOp, Slice, SliceBound, Ttl};
use crate::schema::{ColumnId, TableDef, TableId};
use crate::value::{CqlDuration, CqlValue, Decimal};
use crate::{Error, Result};

/// The most records one [`read_from`] call returns.
pub const FEED_READ_RECORDS_MAX: usize = 100_000;
/// The most transactions that may be between `begin` and `finish` at once.
pub const FEED_IN_FLIGHT_MAX: usize = 65_536;
/// The deepest value nesting a record may hold (collections of tuples of ...).
const VALUE_DEPTH_MAX: usize = 32;
const RECORD_VERSION: u8 = 1;
/// The retention floor's key: one byte, so it sorts before every position.
const FLOOR_KEY: [u8; 1] = [0];

/// A record's durable position in the feed; positions increase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeedPosition(pub u64);

impl FeedPosition {
    /// The feed key of this position.
    pub fn key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// One applied mutation, as read back from the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub position: FeedPosition,
    /// The write time of every cell of the mutation (executeAt).
    pub write_time: WriteTime,
    /// The mutation; every upsert's TTL is resolved (`Seconds` or `Unlimited`).
    pub mutation: Mutation,
}

impl FeedRecord {
    pub fn table(&self) -> TableId {
        self.mutation.table
    }
}

/// The expiry an upsert's cells get when written at `write_time`; `None` for
/// other ops and for cells without TTL. `TableDefault` must be resolved first.
pub fn upsert_expiry(op: &RowOp, write_time: WriteTime) -> Option<Expiry> {
    match op {
        RowOp::Upsert {
            ttl: Ttl::Seconds(ttl_seconds),
            ..
        } if *ttl_seconds > 0 => Some(Expiry {
            expiry_seconds: write_time.seconds().saturating_add(i64::from(*ttl_seconds)),
            ttl_seconds: *ttl_seconds,
        }),
        _ => None,
    }
}

/// What consumers may read: every position below `position_end` is final, and
/// every write with a write time at or below `watermark` is in the feed below
/// `position_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedFrontier {
    pub position_end: FeedPosition,
    pub watermark: WriteTime,
}

/// A transaction between [`ChangeFeed::begin`] and [`ChangeFeed::finish`]
/// (or the ticket's drop, so an early return cannot stall the frontier).
#[derive(Debug)]
#[must_use = "hold the ticket until the batch is written; dropping it finishes the transaction"]
pub struct FeedTicket<'feed> {
    feed: &'feed ChangeFeed,
    id: u64,
    write_time: WriteTime,
}

impl FeedTicket<'_> {
    /// The write time `begin` allocated: the cells' write time.
    pub fn write_time(&self) -> WriteTime {
        self.write_time
    }
}

impl Drop for FeedTicket<'_> {
    fn drop(&mut self) {
        self.feed.end_ticket(self.id);
    }
}

/// A ticket that owns a reference to its feed, for a writer that keeps it across calls: the
/// Accord runtime holds one over a step of its Node (`ChangeFeed::begin_shared`), during which
/// several transactions may apply, each at its own executeAt at or above the ticket's write
/// time ([`ChangeFeed::append_at`]).
#[derive(Debug)]
#[must_use = "hold the ticket until the batches are written; dropping it finishes them"]
pub struct SharedFeedTicket {
    feed: std::sync::Arc<ChangeFeed>,
    id: u64,
    write_time: WriteTime,
}

impl SharedFeedTicket {
    /// The lowest write time this ticket may append at.
    pub fn write_time(&self) -> WriteTime {
        self.write_time
    }
}

impl Drop for SharedFeedTicket {
    fn drop(&mut self) {
        self.feed.end_ticket(self.id);
    }
}

#[derive(Debug)]
struct InFlight {
    write_time: WriteTime,
    first_position: Option<u64>,
    /// Its last record's position.
    last_position: Option<u64>,
}

#[derive(Debug)]
struct FeedState {
    next_position: u64,
    next_ticket: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Finished tickets with a record at or above the frontier's
    /// `position_end` (a ticket still in flight appended below it):
    /// last position → write time. They bound the watermark until
    /// `position_end` passes them, else a record at a position not yet
    /// published could carry a write time the watermark already passed.
    finished_above: BTreeMap<u64, WriteTime>,
    write_time_max: WriteTime,
    /// Tickets finished since open: the frontier can only move when it does.
    n_tickets_ended: u64,
}

impl FeedState {
    /// Every record below it is written or held by no ticket in flight.
    fn position_end(&self) -> u64 {
        self.in_flight
            .values()
            .filter_map(|in_flight| in_flight.first_position)
            .min()
            .unwrap_or(self.next_position)
    }

    /// Drops the finished tickets whose records are all below `position_end`
    /// (their last one is).
    fn prune_finished(&mut self) {
        let position_end = self.position_end();
        self.finished_above = self.finished_above.split_off(&position_end);
    }
}

/// The node's change-feed writer: assigns positions and tracks the frontier.
#[derive(Debug)]
pub struct ChangeFeed {
    state: Mutex<FeedState>,
    /// Signalled when the last in-flight ticket finishes.
    drained: Condvar,
    /// Signalled when any ticket finishes (the frontier may have moved), for
    /// a consumer waiting in [`ChangeFeed::wait_for_frontier_change`].
    ticket_ended: Condvar,
}

impl ChangeFeed {
    /// Opens the feed over what `view` holds: new positions follow the last.
    ///
    /// # Errors
    /// `Engine` if the scan fails; `Corruption` for a malformed feed key.
    pub fn open(view: &dyn ReadView) -> Result<ChangeFeed> {
        let mut last = view.scan(Family::Feed, &KeyRange::all(), Direction::Reverse)?;
        let (next_position, write_time_max) = match last.next() {
            None => (0, WriteTime(i64::MIN)),
            // Every record was dropped by retention: positions continue at the floor.
            Some(item) if item.as_ref().is_ok_and(|(key, _)| key[..] == FLOOR_KEY) => {
                (retention_floor(view)?.0, WriteTime(i64::MIN))
            }
            Some(item) => {
                let (key, value) = item?;
                let position = decode_position(&key)?;
                let record = decode_record(position, &value)?;
                (position.0 + 1, record.write_time)
            }
        };
        Ok(ChangeFeed {
            state: Mutex::new(FeedState {
                next_position,
                next_ticket: 0,
                in_flight: BTreeMap::new(),
                finished_above: BTreeMap::new(),
                write_time_max,
                n_tickets_ended: 0,
            }),
            drained: Condvar::new(),
            ticket_ended: Condvar::new(),
        })
    }

    /// Starts a transaction: `allocate` (the sequencer, or Accord's executeAt)
    /// runs under the feed's lock, so the watermark never passes a write time
    /// whose records are not written yet. Also the heartbeat: a ticket
    /// finished without appends advances the watermark while idle.
    ///
    /// # Panics
    /// If more than `FEED_IN_FLIGHT_MAX` tickets are open (a leak in the
    /// caller), or `allocate` goes below a write time already finished.
    pub fn begin(&self, allocate: impl FnOnce() -> WriteTime) -> FeedTicket<'_> {
        let (id, write_time) = self.begin_ticket(allocate);
        FeedTicket {
            feed: self,
            id,
            write_time,
        }
    }

    /// As [`ChangeFeed::begin`], for a ticket kept across calls: its write time is a floor,
    /// and [`ChangeFeed::append_at`] appends at any write time at or above it.
    ///
    /// # Panics
    /// As [`ChangeFeed::begin`].
    pub fn begin_shared(
        self: &std::sync::Arc<Self>,
        allocate: impl FnOnce() -> WriteTime,
    ) -> SharedFeedTicket {
        let (id, write_time) = self.begin_ticket(allocate);
        SharedFeedTicket {
            feed: self.clone(),
            id,
            write_time,
        }
    }

    /// Adds `mutation`'s feed record, written at `write_time` (at or above the ticket's), to
    /// `batch`: the frontier's watermark stays below the ticket's write time until it drops.
    ///
    /// # Errors
    /// As [`ChangeFeed::append`]; `Internal` for a write time below the ticket's, or a ticket
    /// of another feed.
    pub fn append_at(
        &self,
        ticket: &SharedFeedTicket,
        write_time: WriteTime,
        batch: &mut WriteBatch,
        table: &TableDef,
        mutation: &Mutation,
    ) -> Result<FeedPosition> {
        if !std::ptr::eq(std::sync::Arc::as_ptr(&ticket.feed), self) {
            return Err(Error::Internal(
                "feed append with another feed's ticket".into(),
            ));
        }
        if write_time < ticket.write_time {
            return Err(Error::Internal(format!(
                "feed append at {write_time:?} below its ticket's floor {:?}",
                ticket.write_time
            )));
        }
        self.append_inner(ticket.id, write_time, batch, table, mutation)
    }

    fn end_ticket(&self, id: u64) {
        let mut state = self.state.lock();
        let removed = state.in_flight.remove(&id);
        assert!(removed.is_some(), "change feed: ticket finished twice");
        if let Some(InFlight {
            write_time,
            last_position: Some(last),
            ..
        }) = removed
        {
            state.finished_above.insert(last, write_time);
        }
        state.prune_finished();
        state.n_tickets_ended += 1;
        if state.in_flight.is_empty() {
            self.drained.notify_all();
        }
        drop(state);
        self.ticket_ended.notify_all();
    }

    /// How many tickets have finished: pass it to
    /// [`ChangeFeed::wait_for_frontier_change`] (read it before the frontier
    /// the caller acts on).
    pub fn n_tickets_ended(&self) -> u64 {
        self.state.lock().n_tickets_ended
    }

    /// Waits until a ticket finishes after `n_tickets_ended` were (the
    /// frontier may have moved), at most `timeout`. A consumer that has
    /// applied everything waits here instead of polling, so it sees a commit
    /// as soon as its ticket drops.
    pub fn wait_for_frontier_change(&self, n_tickets_ended: u64, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.state.lock();
        while state.n_tickets_ended == n_tickets_ended {
            if self
                .ticket_ended
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    fn begin_ticket(&self, allocate: impl FnOnce() -> WriteTime) -> (u64, WriteTime) {
        let mut state = self.state.lock();
        assert!(
            state.in_flight.len() < FEED_IN_FLIGHT_MAX,
            "change feed: {} tickets in flight",
            state.in_flight.len()
        );
        let write_time = allocate();
        assert!(
            state.in_flight.is_empty() || write_time >= state.write_time_max,
            "change feed: write time {write_time:?} below {:?}",
            state.write_time_max
        );
        state.write_time_max = state.write_time_max.max(write_time);
        let id = state.next_ticket;
        state.next_ticket += 1;
        state.in_flight.insert(
            id,
            InFlight {
                write_time,
                first_position: None,
                last_position: None,
            },
        );
        (id, write_time)
    }

    /// Adds `mutation`'s feed record to `batch` (the batch that holds its
    /// rows) and returns its position.
    ///
    /// # Errors
    /// `InvalidRequest` if the mutation is not for `table`; `Internal` for a
    /// ticket already finished. Nothing is added to `batch` on error.
    pub fn append(
        &self,
        ticket: &FeedTicket<'_>,
        batch: &mut WriteBatch,
        table: &TableDef,
        mutation: &Mutation,
    ) -> Result<FeedPosition> {
        self.append_inner(ticket.id, ticket.write_time, batch, table, mutation)
    }

    fn append_inner(
        &self,
        ticket: u64,
        write_time: WriteTime,
        batch: &mut WriteBatch,
        table: &TableDef,
        mutation: &Mutation,
    ) -> Result<FeedPosition> {
        if mutation.table != table.id {
            return Err(Error::InvalidRequest(format!(
                "feed record for table {} names table id {}",
                table.qualified_name(),
                mutation.table.0
            )));
        }
        let resolved = resolve_ttl(table, mutation);
        let bytes = encode_record(write_time, &resolved)?;
        let mut state = self.state.lock();
        let position = state.next_position;
        let in_flight = state
            .in_flight
            .get_mut(&ticket)
            .ok_or_else(|| Error::Internal("feed append with a finished ticket".into()))?;
        in_flight.first_position.get_or_insert(position);
        in_flight.last_position = Some(position);
        state.next_position += 1;
        drop(state);
        batch.put(Family::Feed, FeedPosition(position).key().to_vec(), bytes);
        Ok(FeedPosition(position))
    }

    /// Ends a transaction once its batch is written, or failed to be (the
    /// same as dropping the ticket; spelled out where it helps the reader).
    pub fn finish(&self, ticket: FeedTicket<'_>) {
        assert!(
            std::ptr::eq(ticket.feed, self),
            "change feed: ticket of another feed"
        );
        drop(ticket);
    }

    /// Waits until no transaction is in flight, then runs `snapshot` with the
    /// frontier while holding off new ones: an engine snapshot taken inside
    /// holds exactly the records below `position_end`, every write at or below
    /// `watermark` and none above it (what a replica rebuild needs). New
    /// transactions wait in `begin` meanwhile, so keep `snapshot` short (take
    /// the engine snapshot, nothing more); it must not call the feed.
    pub fn quiesce<R>(&self, snapshot: impl FnOnce(FeedFrontier) -> R) -> R {
        let mut state = self.state.lock();
        while !state.in_flight.is_empty() {
            self.drained.wait(&mut state);
        }
        let frontier = FeedFrontier {
            position_end: FeedPosition(state.next_position),
            watermark: state.write_time_max,
        };
        snapshot(frontier)
    }

    /// What consumers may read now.
    pub fn frontier(&self) -> FeedFrontier {
        let state = self.state.lock();
        let position_end = state.position_end();
        // In flight, and finished with records at or above position_end
        // (`end_ticket` prunes the others after every ticket ends, the only
        // time position_end moves past a finished ticket's records).
        let oldest = state
            .in_flight
            .values()
            .map(|i| i.write_time)
            .chain(state.finished_above.values().copied())
            .min();
        let watermark = match oldest {
            Some(oldest) => WriteTime(oldest.0.saturating_sub(1)),
            None => state.write_time_max,
        };
        FeedFrontier {
            position_end: FeedPosition(position_end),
            watermark,
        }
    }
}

/// Returns the records at positions `from ..end`, at most `limit_records`.
///
/// # Errors
/// `InvalidRequest` for a limit over `FEED_READ_RECORDS_MAX`; `Corruption`
/// for a record that does not decode; `Engine` if the scan fails.
pub fn read_from(
    view: &dyn ReadView,
    from: FeedPosition,
    end: FeedPosition,
    limit_records: usize,
) -> Result<Vec<FeedRecord>> {
    if limit_records > FEED_READ_RECORDS_MAX {
        return Err(Error::InvalidRequest(format!(
            "feed read of {limit_records} records exceeds FEED_READ_RECORDS_MAX"
        )));
    }
    let mut records = Vec::new();
    if from >= end {
        return Ok(records);
    }
    let range = KeyRange::half_open(from.key().to_vec(), end.key().to_vec());
    for item in view.scan(Family::Feed, &range, Direction::Forward)? {
        if records.len() == limit_records {
            break;
        }
        let (key, value) = item?;
        let position = decode_position(&key)?;
        records.push(decode_record(position, &value)?);
    }
    Ok(records)
}

/// Adds to `batch` the deletion of every record before `position` (retention)
/// and records `position` as the retention floor.
pub fn truncate_before(batch: &mut WriteBatch, position: FeedPosition) {
    batch.delete_range(
        Family::Feed,
        FeedPosition(0).key().to_vec(),
        position.key().to_vec(),
    );
    batch.put(Family::Feed, FLOOR_KEY.to_vec(), position.key().to_vec());
}

/// The first position retention kept: a consumer whose next position is
/// below it missed records and must rebuild from a row-store snapshot.
///
/// # Errors
/// `Corruption` for a malformed floor; `Engine` if the read fails.
pub fn retention_floor(view: &dyn ReadView) -> Result<FeedPosition> {
    match view.get(Family::Feed, &FLOOR_KEY)? {
        None => Ok(FeedPosition(0)),
        Some(bytes) => decode_position(&bytes),
    }
}

fn decode_position(key: &[u8]) -> Result<FeedPosition> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::corruption(format!("feed key of {} bytes", key.len())))?;
    Ok(FeedPosition(u64::from_be_bytes(bytes)))
}

/// `mutation` with every upsert's TTL resolved against `table`'s default (`Seconds` or
/// `Unlimited`), as the feed records it.
pub fn resolve_ttl(table: &TableDef, mutation: &Mutation) -> Mutation {
    let mut resolved = mutation.clone();
    for op in &mut resolved.ops {
        if let RowOp::Upsert { ttl, .. } = op {
            *ttl = match *ttl {
                Ttl::TableDefault if table.options.default_time_to_live_seconds > 0 => {
                    Ttl::Seconds(table.options.default_time_to_live_seconds)
                }
                Ttl::TableDefault | Ttl::Unlimited | Ttl::Seconds(0) => Ttl::Unlimited,
                Ttl::Seconds(seconds) => Ttl::Seconds(seconds),
            };
        }
    }
    resolved
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Encodes one record's value.
///
/// # Errors
/// `LimitExceeded` when a length does not fit the format's `u32`.
pub fn encode_record(write_time: WriteTime, mutation: &Mutation) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&write_time.0.to_be_bytes());
    out.extend_from_slice(&mutation.table.0.to_be_bytes());
    encode_values(&mutation.partition_key, &mut out)?;
    push_len(mutation.ops.len(), &mut out)?;
    for op in &mutation.ops {
        match op {
            RowOp::Upsert {
                clustering,
                liveness,
                ttl,
                cells,
            } => {
                out.push(0);
                encode_values(clustering, &mut out)?;
                out.push(match liveness {
                    Liveness::RowMarker => 0,
                    Liveness::CellsOnly => 1,
                });
                let ttl_seconds = match ttl {
                    Ttl::Seconds(seconds) => *seconds,
                    Ttl::Unlimited | Ttl::TableDefault => 0,
                };
                out.extend_from_slice(&ttl_seconds.to_be_bytes());
                push_len(cells.len(), &mut out)?;
                for (column, cell_op) in cells {
                    out.extend_from_slice(&column.0.to_be_bytes());
                    encode_cell_op(cell_op, &mut out)?;
                }
            }
            RowOp::DeleteRow { clustering } => {
                out.push(1);
                encode_values(clustering, &mut out)?;
            }
            RowOp::DeleteRange(slice) => {
                out.push(2);
                encode_bound(&slice.start, &mut out)?;
                encode_bound(&slice.end, &mut out)?;
            }
            RowOp::DeletePartition => out.push(3),
        }
    }
    Ok(out)
}

fn encode_cell_op(op: &CellOp, out: &mut Vec<u8>) -> Result<()> {
    match op {
        CellOp::Set(value) => {
            out.push(0);
            encode_optional(value.as_ref(), out)?;
        }
        CellOp::ListAppend(values) => encode_tagged_values(1, values, out)?,
        CellOp::ListPrepend(values) => encode_tagged_values(2, values, out)?,
        CellOp::SetAdd(values) => encode_tagged_values(3, values, out)?,
        CellOp::SetRemove(values) => encode_tagged_values(4, values, out)?,
        CellOp::MapPut(entries) => {
            out.push(5);
            push_len(entries.len(), out)?;
            for (key, value) in entries {
                encode_value(key, out)?;
                encode_value(value, out)?;
            }
        }
        CellOp::MapRemove(values) => encode_tagged_values(6, values, out)?,
        CellOp::UdtSetField(field_idx, value) => {
            out.push(7);
            push_len(*field_idx, out)?;
            encode_optional(value.as_ref(), out)?;
        }
    }
    Ok(())
}

fn encode_tagged_values(tag: u8, values: &[CqlValue], out: &mut Vec<u8>) -> Result<()> {
    out.push(tag);
    encode_values(values, out)
}

fn encode_bound(bound: &SliceBound, out: &mut Vec<u8>) -> Result<()> {
    match bound {
        SliceBound::Unbounded => out.push(0),
        SliceBound::Included(values) => encode_tagged_values(1, values, out)?,
        SliceBound::Excluded(values) => encode_tagged_values(2, values, out)?,
    }
    Ok(())
}

fn push_len(len: usize, out: &mut Vec<u8>) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::LimitExceeded {
        what: "feed record length".into(),
        limit: "u32::MAX",
        actual: len,
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn push_bytes(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    push_len(bytes.len(), out)?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn encode_values(values: &[CqlValue], out: &mut Vec<u8>) -> Result<()> {
    push_len(values.len(), out)?;
    values.iter().try_for_each(|value| encode_value(value, out))
}

fn encode_optional(value: Option<&CqlValue>, out: &mut Vec<u8>) -> Result<()> {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            encode_value(value, out)?;
        }
    }
    Ok(())
}

/// Encodes a value with its kind, so it decodes without a schema.
fn encode_value(value: &CqlValue, out: &mut Vec<u8>) -> Result<()> {
    use CqlValue as V;
    match value {
        V::Ascii(text) => {
            out.push(0);
            push_bytes(text.as_bytes(), out)?;
        }
        V::Bigint(number) => push_fixed(1, &number.to_be_bytes(), out),
        V::Blob(bytes) => {
            out.push(2);
            push_bytes(bytes, out)?;
        }
        V::Boolean(flag) => push_fixed(3, &[u8::from(*flag)], out),
        V::Date(days) => push_fixed(4, &days.to_be_bytes(), out),
        V::Decimal(decimal) => {
            out.push(5);
            out.extend_from_slice(&decimal.scale.to_be_bytes());
            push_bytes(&decimal.unscaled.to_signed_bytes_be(), out)?;
        }
        V::Double(number) => push_fixed(6, &number.to_bits().to_be_bytes(), out),
        V::Duration(duration) => {
            out.push(7);
            out.extend_from_slice(&duration.months.to_be_bytes());
            out.extend_from_slice(&duration.days.to_be_bytes());
            out.extend_from_slice(&duration.nanoseconds.to_be_bytes());
        }
        V::Float(number) => push_fixed(8, &number.to_bits().to_be_bytes(), out),
        V::Inet(address) => {
            out.push(9);
            match address {
                std::net::IpAddr::V4(v4) => push_bytes(&v4.octets(), out)?,
                std::net::IpAddr::V6(v6) => push_bytes(&v6.octets(), out)?,
            }
        }
        V::Int(number) => push_fixed(10, &number.to_be_bytes(), out),
        V::Smallint(number) => push_fixed(11, &number.to_be_bytes(), out),
        V::Text(text) => {
            out.push(12);
            push_bytes(text.as_bytes(), out)?;
        }
        V::Time(nanos) => push_fixed(13, &nanos.to_be_bytes(), out),
        V::Timestamp(millis) => push_fixed(14, &millis.to_be_bytes(), out),
        V::Timeuuid(bytes) => push_fixed(15, bytes, out),
        V::Tinyint(number) => push_fixed(16, &number.to_be_bytes(), out),
        V::Uuid(bytes) => push_fixed(17, bytes, out),
        V::Varint(number) => {
            out.push(18);
            push_bytes(&number.to_signed_bytes_be(), out)?;
        }
        V::List(values) => encode_tagged_values(19, values, out)?,
        V::Set(values) => encode_tagged_values(20, values, out)?,
        V::Map(entries) => {
            out.push(21);
            push_len(entries.len(), out)?;
            for (key, value) in entries {
                encode_value(key, out)?;
                encode_value(value, out)?;
            }
        }
        V::Tuple(fields) | V::Udt(fields) => {
            out.push(if matches!(value, V::Tuple(_)) { 22 } else { 23 });
            push_len(fields.len(), out)?;
            for field in fields {
                encode_optional(field.as_ref(), out)?;
            }
        }
    }
    Ok(())
}

fn push_fixed(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(bytes);
}

// ---------------------------------------------------------------------------
// Decoding: every malformed input is `Corruption`, never a panic.
// ---------------------------------------------------------------------------

/// Appends `values` in the feed's self-describing value encoding (for other codecs that carry
/// CQL values: the server's transaction bodies).
///
/// # Errors
/// `LimitExceeded` when a length does not fit the format's `u32`.
pub fn encode_values_into(values: &[CqlValue], out: &mut Vec<u8>) -> Result<()> {
    encode_values(values, out)
}

/// Appends a clustering slice in the feed's encoding.
///
/// # Errors
/// As [`encode_values_into`].
pub fn encode_slice_into(slice: &Slice, out: &mut Vec<u8>) -> Result<()> {
    encode_bound(&slice.start, out)?;
    encode_bound(&slice.end, out)
}

/// Decodes values written by [`encode_values_into`] at `*offset`, advancing it.
///
/// # Errors
/// `Corruption` for bytes that are not such values.
pub fn decode_values_from(bytes: &[u8], offset: &mut usize) -> Result<Vec<CqlValue>> {
    let mut reader = Reader {
        bytes,
        offset: *offset,
    };
    let values = reader.values(0)?;
    *offset = reader.offset;
    Ok(values)
}

/// Decodes a slice written by [`encode_slice_into`] at `*offset`, advancing it.
///
/// # Errors
/// `Corruption` for bytes that are not a slice.
pub fn decode_slice_from(bytes: &[u8], offset: &mut usize) -> Result<Slice> {
    let mut reader = Reader {
        bytes,
        offset: *offset,
    };
    let slice = Slice {
        start: reader.bound()?,
        end: reader.bound()?,
    };
    *offset = reader.offset;
    Ok(slice)
}

/// Decodes a record's value read at `position`.
///
/// # Errors
/// `Corruption` if the bytes are not a record of this format.
pub fn decode_record(position: FeedPosition, bytes: &[u8]) -> Result<FeedRecord> {
    let mut reader = Reader { bytes, offset: 0 };
    let version = reader.u8()?;
    if version != RECORD_VERSION {
        return Err(Error::corruption(format!(
            "feed record {} has version {version}",
            position.0
        )));
    }
    let write_time = WriteTime(i64::from_be_bytes(reader.array()?));
    let table = TableId(u32::from_be_bytes(reader.array()?));
    let partition_key = reader.values(0)?;
    let n_ops = reader.len()?;
    let mut ops = Vec::with_capacity(n_ops.min(1024));
    for _ in 0..n_ops {
        ops.push(reader.row_op()?);
    }
    if reader.offset != bytes.len() {
        return Err(Error::corruption(format!(
            "feed record {} has {} trailing bytes",
            position.0,
            bytes.len() - reader.offset
        )));
    }
    Ok(FeedRecord {
        position,
        write_time,
        mutation: Mutation {
            table,
            partition_key,
            ops,
        },
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8]> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| Error::corruption("feed record is truncated"))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        // Every counted item takes at least one byte, so a count above the
        // bytes left is corrupt; this also bounds allocations.
        if len > self.bytes.len() - self.offset {
            return Err(Error::corruption("feed record count exceeds its bytes"));
        }
        Ok(len)
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.len()?;
        Ok(self.take(len)?.to_vec())
    }

    fn text(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?)
            .map_err(|_| Error::corruption("feed record text is not UTF-8"))
    }

    fn values(&mut self, depth: usize) -> Result<Vec<CqlValue>> {
        let len = self.len()?;
        (0..len).map(|_| self.value(depth)).collect()
    }

    fn optional(&mut self, depth: usize) -> Result<Option<CqlValue>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.value(depth)?)),
            tag => Err(Error::corruption(format!("feed option tag {tag}"))),
        }
    }

    fn value(&mut self, depth: usize) -> Result<CqlValue> {
        use CqlValue as V;
        if depth > VALUE_DEPTH_MAX {
            return Err(Error::corruption("feed value nests too deeply"));
        }
        let next = depth + 1;
        Ok(match self.u8()? {
            0 => V::Ascii(self.text()?),
            1 => V::Bigint(i64::from_be_bytes(self.array()?)),
            2 => V::Blob(self.bytes()?),
            3 => V::Boolean(self.u8()? != 0),
            4 => V::Date(u32::from_be_bytes(self.array()?)),
            5 => {
                let scale = i32::from_be_bytes(self.array()?);
                V::Decimal(Decimal {
                    unscaled: BigInt::from_signed_bytes_be(&self.bytes()?),
                    scale,
                })
            }
            6 => V::Double(f64::from_bits(u64::from_be_bytes(self.array()?))),
            7 => V::Duration(CqlDuration {
                months: i32::from_be_bytes(self.array()?),
                days: i32::from_be_bytes(self.array()?),
                nanoseconds: i64::from_be_bytes(self.array()?),
            }),
            8 => V::Float(f32::from_bits(u32::from_be_bytes(self.array()?))),
            9 => {
                let octets = self.bytes()?;
                V::Inet(match octets.len() {
                    4 => std::net::IpAddr::from(
                        <[u8; 4]>::try_from(octets.as_slice())
                            .map_err(|_| Error::corruption("feed inet"))?,
                    ),
                    16 => std::net::IpAddr::from(
                        <[u8; 16]>::try_from(octets.as_slice())
                            .map_err(|_| Error::corruption("feed inet"))?,
                    ),
                    len => return Err(Error::corruption(format!("feed inet of {len} bytes"))),
                })
            }
            10 => V::Int(i32::from_be_bytes(self.array()?)),
            11 => V::Smallint(i16::from_be_bytes(self.array()?)),
            12 => V::Text(self.text()?),
            13 => V::Time(i64::from_be_bytes(self.array()?)),
            14 => V::Timestamp(i64::from_be_bytes(self.array()?)),
            15 => V::Timeuuid(self.array()?),
            16 => V::Tinyint(i8::from_be_bytes(self.array()?)),
            17 => V::Uuid(self.array()?),
            18 => V::Varint(BigInt::from_signed_bytes_be(&self.bytes()?)),
            19 => V::List(self.values(next)?),
            20 => V::Set(self.values(next)?),
            21 => V::Map(self.entries(next)?),
            tag @ (22 | 23) => {
                let len = self.len()?;
                let fields = (0..len)
                    .map(|_| self.optional(next))
                    .collect::<Result<Vec<_>>>()?;
                if tag == 22 {
                    V::Tuple(fields)
                } else {
                    V::Udt(fields)
                }
            }
            tag => return Err(Error::corruption(format!("feed value tag {tag}"))),
        })
    }

    fn entries(&mut self, depth: usize) -> Result<Vec<(CqlValue, CqlValue)>> {
        let len = self.len()?;
        (0..len)
            .map(|_| Ok((self.value(depth)?, self.value(depth)?)))
            .collect()
    }

    fn bound(&mut self) -> Result<SliceBound> {
        Ok(match self.u8()? {
            0 => SliceBound::Unbounded,
            1 => SliceBound::Included(self.values(0)?),
            2 => SliceBound::Excluded(self.values(0)?),
            tag => return Err(Error::corruption(format!("feed bound tag {tag}"))),
        })
    }

    fn cell_op(&mut self) -> Result<CellOp> {
        Ok(match self.u8()? {
            0 => CellOp::Set(self.optional(0)?),
            1 => CellOp::ListAppend(self.values(0)?),
            2 => CellOp::ListPrepend(self.values(0)?),
            3 => CellOp::SetAdd(self.values(0)?),
            4 => CellOp::SetRemove(self.values(0)?),
            5 => CellOp::MapPut(self.entries(0)?),
            6 => CellOp::MapRemove(self.values(0)?),
            7 => {
                let field_idx = u32::from_be_bytes(self.array()?) as usize;
                CellOp::UdtSetField(field_idx, self.optional(0)?)
            }
            tag => return Err(Error::corruption(format!("feed cell op tag {tag}"))),
        })
    }

    fn row_op(&mut self) -> Result<RowOp> {
        Ok(match self.u8()? {
            0 => {
                let clustering = self.values(0)?;
                let liveness = match self.u8()? {
                    0 => Liveness::RowMarker,
                    1 => Liveness::CellsOnly,
                    tag => return Err(Error::corruption(format!("feed liveness {tag}"))),
                };
                let ttl = match u32::from_be_bytes(self.array()?) {
                    0 => Ttl::Unlimited,
                    seconds => Ttl::Seconds(seconds),
                };
                let n_cells = self.len()?;
                let mut cells = Vec::with_capacity(n_cells.min(1024));
                for _ in 0..n_cells {
                    let column = ColumnId(u16::from_be_bytes(self.array()?));
                    cells.push((column, self.cell_op()?));
                }
                RowOp::Upsert {
                    clustering,
                    liveness,
                    ttl,
                    cells,
                }
            }
            1 => RowOp::DeleteRow {
                clustering: self.values(0)?,
            },
            2 => RowOp::DeleteRange(Slice {
                start: self.bound()?,
                end: self.bound()?,
            }),
            3 => RowOp::DeletePartition,
            tag => return Err(Error::corruption(format!("feed op tag {tag}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, Engine, EngineOptions};
    use crate::memory::MemoryEngine;
    use crate::testing::strategies::{arb_type, arb_value, values_identical};
    use proptest::prelude::*;

    fn mutation(ops: Vec<RowOp>) -> Mutation {
        Mutation {
            table: TableId(7),
            partition_key: vec![CqlValue::Int(1), CqlValue::Text("k".into())],
            ops,
        }
    }

    fn every_op_kind() -> Vec<RowOp> {
        vec![
            RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(3)],
                liveness: Liveness::RowMarker,
                ttl: Ttl::Seconds(60),
                cells: vec![
                    (ColumnId(3), CellOp::Set(Some(CqlValue::Text("v".into())))),
                    (ColumnId(4), CellOp::Set(None)),
                    (ColumnId(5), CellOp::ListAppend(vec![CqlValue::Int(1)])),
                    (ColumnId(5), CellOp::ListPrepend(vec![CqlValue::Int(0)])),
                    (ColumnId(6), CellOp::SetAdd(vec![CqlValue::Int(2)])),
                    (ColumnId(6), CellOp::SetRemove(vec![CqlValue::Int(3)])),
                    (
                        ColumnId(7),
                        CellOp::MapPut(vec![(CqlValue::Int(1), CqlValue::Boolean(true))]),
                    ),
                    (ColumnId(7), CellOp::MapRemove(vec![CqlValue::Int(9)])),
                    (
                        ColumnId(8),
                        CellOp::UdtSetField(2, Some(CqlValue::Tinyint(-1))),
                    ),
                    (ColumnId(8), CellOp::UdtSetField(1, None)),
                ],
            },
            RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(4)],
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: vec![],
            },
            RowOp::DeleteRow {
                clustering: vec![CqlValue::Bigint(5)],
            },
            RowOp::DeleteRange(Slice {
                start: SliceBound::Included(vec![CqlValue::Bigint(6)]),
                end: SliceBound::Excluded(vec![CqlValue::Bigint(9)]),
            }),
            RowOp::DeleteRange(Slice::all()),
            RowOp::DeletePartition,
        ]
    }

    #[test]
    fn every_op_kind_round_trips() {
        let original = mutation(every_op_kind());
        let bytes = encode_record(WriteTime(1_700_000_000_123_456), &original).expect("encode");
        let decoded = decode_record(FeedPosition(42), &bytes).expect("decode");
        assert_eq!(decoded.mutation, original);
        assert_eq!(decoded.write_time, WriteTime(1_700_000_000_123_456));
        assert_eq!(decoded.position, FeedPosition(42));
        assert_eq!(
            upsert_expiry(&decoded.mutation.ops[0], decoded.write_time),
            Some(Expiry {
                expiry_seconds: 1_700_000_060,
                ttl_seconds: 60
            })
        );
        assert_eq!(
            upsert_expiry(&decoded.mutation.ops[1], decoded.write_time),
            None
        );
    }

    #[test]
    fn truncated_and_extended_records_are_corruption() {
        let bytes = encode_record(WriteTime(5), &mutation(every_op_kind())).expect("encode");
        for len in 0..bytes.len() {
            let error = decode_record(FeedPosition(0), &bytes[..len]);
            assert!(matches!(error, Err(Error::Corruption(_))), "prefix {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_record(FeedPosition(0), &longer),
            Err(Error::Corruption(_))
        ));
    }

    proptest! {
        #[test]
        fn every_value_round_trips((ty, value) in arb_type().prop_flat_map(|ty| {
            let values = arb_value(&ty);
            (Just(ty), values)
        })) {
            let _ = ty;
            let original = mutation(vec![RowOp::Upsert {
                clustering: vec![],
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: vec![(ColumnId(1), CellOp::Set(Some(value.clone())))],
            }]);
            let bytes = encode_record(WriteTime(-3), &original).expect("encode");
            let decoded = decode_record(FeedPosition(1), &bytes).expect("decode");
            let RowOp::Upsert { cells, .. } = &decoded.mutation.ops[0] else {
                panic!("not an upsert");
            };
            let CellOp::Set(Some(back)) = &cells[0].1 else { panic!("not a set") };
            prop_assert!(values_identical(back, &value), "{back:?} != {value:?}");
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(FeedPosition(0), &bytes);
        }
    }

    fn table(default_ttl_seconds: u32) -> TableDef {
        let options = crate::schema::TableOptions {
            default_time_to_live_seconds: default_ttl_seconds,
            ..crate::schema::TableOptions::default()
        };
        (*crate::testing::model::table(options)).clone()
    }

    fn upsert(table: &TableDef, key: i32, ttl: Ttl) -> Mutation {
        Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(key)],
            ops: vec![RowOp::Upsert {
                clustering: vec![CqlValue::Int(0), CqlValue::Text("a".into())],
                liveness: Liveness::RowMarker,
                ttl,
                cells: vec![],
            }],
        }
    }

    #[test]
    fn positions_are_durable_and_reads_resume() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let table = table(30);
        let feed = ChangeFeed::open(&engine).expect("open");
        for key in 0..5 {
            let ticket = feed.begin(|| WriteTime(100 + i64::from(key)));
            let mut batch = WriteBatch::new();
            let position = feed
                .append(
                    &ticket,
                    &mut batch,
                    &table,
                    &upsert(&table, key, Ttl::TableDefault),
                )
                .expect("append");
            assert_eq!(position, FeedPosition(key as u64));
            engine.write(batch, Durability::Sync).expect("write");
            feed.finish(ticket);
        }
        let frontier = feed.frontier();
        assert_eq!(frontier.position_end, FeedPosition(5));
        assert_eq!(frontier.watermark, WriteTime(104));
        let first = read_from(&engine, FeedPosition(0), frontier.position_end, 2).expect("read");
        let rest = read_from(&engine, FeedPosition(2), frontier.position_end, 100).expect("read");
        let keys: Vec<_> = first
            .iter()
            .chain(&rest)
            .map(|record| (record.position.0, record.mutation.partition_key.clone()))
            .collect();
        assert_eq!(keys.len(), 5);
        for (idx, (position, key)) in keys.iter().enumerate() {
            assert_eq!(*position, idx as u64);
            assert_eq!(key, &vec![CqlValue::Int(idx as i32)]);
        }
        // The table default TTL was resolved at append time.
        let RowOp::Upsert { ttl, .. } = &rest[0].mutation.ops[0] else {
            panic!("not an upsert")
        };
        assert_eq!(*ttl, Ttl::Seconds(30));

        // A reopened feed continues after the last durable position.
        let reopened = ChangeFeed::open(&engine).expect("reopen");
        assert_eq!(reopened.frontier().position_end, FeedPosition(5));
        assert_eq!(reopened.frontier().watermark, WriteTime(104));
        let mut batch = WriteBatch::new();
        truncate_before(&mut batch, FeedPosition(3));
        engine.write(batch, Durability::Sync).expect("truncate");
        let kept = read_from(&engine, FeedPosition(0), FeedPosition(5), 100).expect("read");
        assert_eq!(kept.first().map(|r| r.position), Some(FeedPosition(3)));
        assert_eq!(retention_floor(&engine).expect("floor"), FeedPosition(3));
        // With every record dropped, a reopened feed continues at the floor.
        let mut batch = WriteBatch::new();
        truncate_before(&mut batch, FeedPosition(5));
        engine.write(batch, Durability::Sync).expect("truncate");
        let emptied = ChangeFeed::open(&engine).expect("reopen");
        assert_eq!(emptied.frontier().position_end, FeedPosition(5));
        let frontier = emptied.quiesce(|frontier| frontier);
        assert_eq!(frontier.position_end, FeedPosition(5));
    }

    #[test]
    fn a_consumer_waiting_for_the_frontier_wakes_when_a_ticket_ends() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let feed = std::sync::Arc::new(ChangeFeed::open(&engine).expect("open"));
        let seen = feed.n_tickets_ended();
        // Nothing ends: the wait lasts its timeout.
        let started = std::time::Instant::now();
        feed.wait_for_frontier_change(seen, std::time::Duration::from_millis(50));
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        // A ticket ending on another thread wakes it long before its timeout.
        let committer = {
            let feed = std::sync::Arc::clone(&feed);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let ticket = feed.begin(|| WriteTime(5));
                feed.finish(ticket);
            })
        };
        let started = std::time::Instant::now();
        feed.wait_for_frontier_change(seen, std::time::Duration::from_secs(60));
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(feed.n_tickets_ended(), seen + 1);
        assert_eq!(feed.frontier().watermark, WriteTime(5));
        committer.join().expect("committer");
        // A change already seen returns at once.
        let started = std::time::Instant::now();
        feed.wait_for_frontier_change(seen, std::time::Duration::from_secs(60));
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn a_finished_ticket_above_the_position_end_still_bounds_the_watermark() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let feed = ChangeFeed::open(&engine).expect("open");
        let def = table(0);
        // A takes the lower write time, B the higher; B appends first.
        let a = feed.begin(|| WriteTime(10));
        let b = feed.begin(|| WriteTime(20));
        let mut batch = WriteBatch::new();
        let b_position = feed
            .append(&b, &mut batch, &def, &upsert(&def, 1, Ttl::Unlimited))
            .expect("b");
        let a_position = feed
            .append(&a, &mut batch, &def, &upsert(&def, 2, Ttl::Unlimited))
            .expect("a");
        assert!(b_position < a_position);
        feed.finish(a);
        // A's record lies above B's: not published yet, so the watermark
        // must stay below A's write time while B is in flight.
        let frontier = feed.frontier();
        assert_eq!(frontier.position_end, b_position);
        assert!(
            frontier.watermark < WriteTime(10),
            "watermark {:?} passed a record at {a_position:?} not below position_end",
            frontier.watermark
        );
        feed.finish(b);
        let frontier = feed.frontier();
        assert_eq!(frontier.position_end, FeedPosition(a_position.0 + 1));
        assert_eq!(frontier.watermark, WriteTime(20));
    }

    #[test]
    fn frontier_waits_for_in_flight_tickets() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let table = table(0);
        let feed = ChangeFeed::open(&engine).expect("open");
        let slow = feed.begin(|| WriteTime(10));
        let fast = feed.begin(|| WriteTime(11));
        let mut slow_batch = WriteBatch::new();
        let mut fast_batch = WriteBatch::new();
        let slow_position = feed
            .append(
                &slow,
                &mut slow_batch,
                &table,
                &upsert(&table, 1, Ttl::Unlimited),
            )
            .expect("append");
        feed.append(
            &fast,
            &mut fast_batch,
            &table,
            &upsert(&table, 2, Ttl::Seconds(5)),
        )
        .expect("append");
        engine.write(fast_batch, Durability::Sync).expect("write");
        feed.finish(fast);
        // The slow transaction is not written: nothing from its position on is final,
        // and the watermark stays below its write time.
        let frontier = feed.frontier();
        assert_eq!(frontier.position_end, slow_position);
        assert_eq!(frontier.watermark, WriteTime(9));
        engine.write(slow_batch, Durability::Sync).expect("write");
        feed.finish(slow);
        assert_eq!(feed.frontier().position_end, FeedPosition(2));
        assert_eq!(feed.frontier().watermark, WriteTime(11));
        // A heartbeat advances the watermark while idle.
        let heartbeat = feed.begin(|| WriteTime(20));
        feed.finish(heartbeat);
        assert_eq!(feed.frontier().watermark, WriteTime(20));
        assert_eq!(feed.frontier().position_end, FeedPosition(2));
        // A ticket dropped on an early return (a failed write) finishes too.
        let failed = || -> Result<()> {
            let ticket = feed.begin(|| WriteTime(30));
            let mut batch = WriteBatch::new();
            feed.append(
                &ticket,
                &mut batch,
                &table,
                &upsert(&table, 3, Ttl::Unlimited),
            )?;
            Err(Error::Internal("the engine write failed".into()))
        };
        assert!(failed().is_err());
        assert_eq!(feed.frontier().watermark, WriteTime(30));
        assert_eq!(feed.frontier().position_end, FeedPosition(3));
    }

    #[test]
    fn shared_tickets_hold_the_watermark_below_their_floor() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let table = table(0);
        let feed = std::sync::Arc::new(ChangeFeed::open(&engine).expect("open"));
        let step = feed.begin_shared(|| WriteTime(100));
        let mut batch = WriteBatch::new();
        // Two transactions of one step, each at its own executeAt at or above the floor.
        for (key, at) in [(1, 105), (2, 100)] {
            feed.append_at(
                &step,
                WriteTime(at),
                &mut batch,
                &table,
                &upsert(&table, key, Ttl::Unlimited),
            )
            .expect("append");
        }
        assert!(
            feed.append_at(
                &step,
                WriteTime(99),
                &mut batch,
                &table,
                &upsert(&table, 3, Ttl::Unlimited)
            )
            .is_err(),
            "below the floor"
        );
        assert_eq!(feed.frontier().watermark, WriteTime(99));
        assert_eq!(feed.frontier().position_end, FeedPosition(0));
        engine.write(batch, Durability::Sync).expect("write");
        drop(step);
        assert_eq!(feed.frontier().position_end, FeedPosition(2));
        let records = read_from(&engine, FeedPosition(0), FeedPosition(2), 10).expect("read");
        let times: Vec<WriteTime> = records.iter().map(|record| record.write_time).collect();
        assert_eq!(times, vec![WriteTime(105), WriteTime(100)]);
        // After the step the pacer's heartbeat sets the watermark to what is applied.
        feed.finish(feed.begin(|| WriteTime(105)));
        assert_eq!(feed.frontier().watermark, WriteTime(105));
    }

    #[test]
    fn values_and_slices_round_trip_through_the_public_codec() {
        let values = vec![CqlValue::Int(7), CqlValue::Text("x".into())];
        let slice = Slice {
            start: SliceBound::Included(vec![CqlValue::Int(1)]),
            end: SliceBound::Unbounded,
        };
        let mut bytes = Vec::new();
        encode_values_into(&values, &mut bytes).expect("encode");
        encode_slice_into(&slice, &mut bytes).expect("encode");
        let mut offset = 0;
        assert_eq!(
            decode_values_from(&bytes, &mut offset).expect("decode"),
            values
        );
        assert_eq!(
            decode_slice_from(&bytes, &mut offset).expect("decode"),
            slice
        );
        assert_eq!(offset, bytes.len());
        let mut truncated = 0;
        assert!(decode_values_from(&bytes[..3], &mut truncated).is_err());
    }

    #[test]
    fn quiesce_waits_for_in_flight_tickets() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let feed = ChangeFeed::open(&engine).expect("open");
        let ticket = feed.begin(|| WriteTime(7));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                drop(ticket);
            });
            let started = std::time::Instant::now();
            let frontier = feed.quiesce(|frontier| frontier);
            assert!(started.elapsed() >= std::time::Duration::from_millis(20));
            assert_eq!(frontier.watermark, WriteTime(7));
        });
    }

    #[test]
    fn append_for_another_table_adds_nothing() {
        let engine = MemoryEngine::new(EngineOptions::default());
        let table = table(0);
        let feed = ChangeFeed::open(&engine).expect("open");
        let ticket = feed.begin(|| WriteTime(1));
        let mut batch = WriteBatch::new();
        let mut wrong = upsert(&table, 1, Ttl::Unlimited);
        wrong.table = TableId(table.id.0 + 1);
        assert!(feed.append(&ticket, &mut batch, &table, &wrong).is_err());
        assert!(batch.is_empty());
        feed.finish(ticket);
    }
}
