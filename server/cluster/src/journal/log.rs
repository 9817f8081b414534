//! The segmented append-only log under the Accord journal (design/cluster.md, "Journal").
//!
//! Records are framed `len u32 LE ‖ crc32 u32 LE ‖ lsn u64 LE ‖ payload`, the CRC covering
//! `lsn ‖ payload`. Segment files are named by the LSN of their first record
//! (`{lsn:020}.log`) and rolled once they reach [`JOURNAL_SEGMENT_BYTES`]. One writer thread
//! owns the files: appenders hand it their payload through a bounded queue, it drains whatever
//! is waiting (up to [`MAX_GROUP_RECORDS`] / [`MAX_GROUP_BYTES`]), writes the group and makes
//! it durable with one `fdatasync`, and only then answers each appender (group commit). The
//! write and sync are either `write` + `fdatasync` calls or a linked io_uring pair
//! ([`Backend`], `super::uring`).
//!
//! On open, every segment is read back in order; a torn or corrupt tail of the last segment
//! is cut (the file is truncated to its last whole record). A bad record anywhere else is
//! corruption and the open fails: nothing is silently dropped from the middle of the log.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::uring::Ring;

/// The size at which the writer rolls to a new segment file.
pub const JOURNAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The largest payload one record may carry; larger appends are refused.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Appends waiting for the writer thread before appenders block.
pub const JOURNAL_QUEUE_CAPACITY: usize = 4096;
/// The most records one group commit (one `fdatasync`) covers.
pub const MAX_GROUP_RECORDS: usize = 1024;
/// The most payload bytes one group commit covers (a record larger than this is its own group).
pub const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

const HEADER_BYTES: usize = 16;
const SEGMENT_SUFFIX: &str = ".log";

/// Log sequence number: the position of a record, counting from 0.
pub type Lsn = u64;

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("journal i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt journal segment {segment}: {reason}")]
    Corrupt { segment: PathBuf, reason: String },
    #[error("journal record of {0} bytes exceeds MAX_RECORD_BYTES ({MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error("the journal writer stopped (an earlier write or sync failed)")]
    Stopped,
}

/// How the writer writes and syncs a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `write` + `fdatasync` system calls.
    PlainFile,
    /// A linked io_uring `Write` + `Fsync(DATASYNC)` pair; opening fails where io_uring is
    /// unavailable.
    IoUring,
    /// io_uring where `io_uring_setup` works, plain files elsewhere.
    Auto,
}

/// Sizes and backend of a log; tests use small segments to exercise rolling and truncation.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Roll to a new segment once the current one reaches this many bytes.
    pub segment_bytes: u64,
    /// How groups are written and synced.
    pub backend: Backend,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: JOURNAL_SEGMENT_BYTES,
            backend: Backend::PlainFile,
        }
    }
}

/// Counters of the writer thread.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records made durable.
    pub records: AtomicU64,
    /// `fdatasync`s made for appends (one per group, plus one per segment roll in a group).
    pub syncs: AtomicU64,
    /// Groups committed.
    pub groups: AtomicU64,
    /// Segment files deleted by truncation.
    pub segments_removed: AtomicU64,
}

/// Where the writer answers one append.
type AppendReply = SyncSender<Result<Lsn, LogError>>;

enum Request {
    Append(Vec<u8>, AppendReply),
    Truncate(Lsn, SyncSender<Result<usize, LogError>>),
}

/// A handle to an open log; cheap to clone, usable from many threads at once.
#[derive(Debug, Clone)]
pub struct Log {
    queue: SyncSender<Request>,
    backend: Backend,
    stats: Arc<LogStats>,
    _writer: Arc<WriterThread>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append(payload, _) => write!(f, "Append({} bytes)", payload.len()),
            Request::Truncate(lsn, _) => write!(f, "Truncate({lsn})"),
        }
    }
}

/// Joins the writer thread when the last handle goes.
#[derive(Debug)]
struct WriterThread {
    thread: Option<JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // Every `Log` clone dropped its sender before this runs: the writer's queue is closed.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A record read back on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, returning the handle and every record in it, in
    /// order. A torn tail of the last segment is cut.
    ///
    /// # Errors
    /// I/O failure, or a corrupt record before the last segment's tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, Vec<Record>), LogError> {
        fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut next_lsn = segments.first().map_or(0, |(lsn, _)| *lsn);
        let mut tail_len = 0;
        for (index, (first, path)) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            if *first != next_lsn {
                return Err(corrupt(
                    path,
                    format!("starts at lsn {first}, expected {next_lsn}"),
                ));
            }
            let (good_len, file_len) = read_segment(path, *first, last, &mut records)?;
            next_lsn = records.last().map_or(*first, |r| r.lsn + 1);
            if last {
                if good_len < file_len {
                    tracing::warn!(segment = %path.display(), good_len, file_len, "cutting torn journal tail");
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(good_len)?;
                    file.sync_all()?;
                }
                tail_len = good_len;
            }
        }
        let current = match segments.last() {
            Some((_, path)) => OpenOptions::new().append(true).open(path)?,
            None => create_segment(dir, next_lsn)?,
        };
        let ring = match config.backend {
            Backend::PlainFile => None,
            Backend::IoUring => Some(Ring::probe()?),
            Backend::Auto => match Ring::probe() {
                Ok(ring) => Some(ring),
                Err(error) => {
                    tracing::info!(%error, "io_uring unavailable; the journal writes plain files");
                    None
                }
            },
        };
        let backend = if ring.is_some() {
            Backend::IoUring
        } else {
            Backend::PlainFile
        };
        let stats = Arc::new(LogStats::default());
        let (queue, requests) = mpsc::sync_channel(JOURNAL_QUEUE_CAPACITY);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            config,
            segments: segments.iter().map(|(lsn, _)| *lsn).collect(),
            current,
            current_len: tail_len,
            ring,
            next_lsn,
            stats: stats.clone(),
        };
        if writer.segments.is_empty() {
            writer.segments.push(next_lsn);
        }
        let thread = std::thread::Builder::new()
            .name("concord-journal".into())
            .spawn(move || writer.run(&requests))?;
        let handle = WriterThread {
            thread: Some(thread),
        };
        Ok((
            Log {
                queue,
                backend,
                stats,
                _writer: Arc::new(handle),
            },
            records,
        ))
    }

    /// Appends `payload` and returns its LSN once it is durable (after the `fdatasync` of the
    /// group it was written in).
    ///
    /// # Errors
    /// `TooLarge` for a payload over [`MAX_RECORD_BYTES`] (nothing is written); `Io` or
    /// `Stopped` when the write or sync failed (the log stops taking appends).
    pub fn append(&self, payload: Vec<u8>) -> Result<Lsn, LogError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge(payload.len()));
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue
            .send(Request::Append(payload, reply))
            .map_err(|_| LogError::Stopped)?;
        answer.recv().map_err(|_| LogError::Stopped)?
    }

    /// Deletes every segment all of whose records are below `lsn` (the durably-applied
    /// watermark); the current segment is never deleted. Returns how many were removed.
    ///
    /// # Errors
    /// I/O failure deleting a file.
    pub fn truncate_below(&self, lsn: Lsn) -> Result<usize, LogError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue
            .send(Request::Truncate(lsn, reply))
            .map_err(|_| LogError::Stopped)?;
        answer.recv().map_err(|_| LogError::Stopped)?
    }

    /// The backend in use (`PlainFile` or `IoUring`; `Auto` is resolved on open).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The writer's counters.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }
}

struct Writer {
    dir: PathBuf,
    config: LogConfig,
    /// First LSN of every live segment, ascending; the last is the one being written.
    segments: Vec<Lsn>,
    current: File,
    current_len: u64,
    /// `Some` when groups go through io_uring.
    ring: Option<Ring>,
    next_lsn: Lsn,
    stats: Arc<LogStats>,
}

impl Writer {
    fn run(&mut self, requests: &Receiver<Request>) {
        let mut failed = false;
        while let Ok(first) = requests.recv() {
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut pending = Some(first);
            while let Some(request) = pending.take() {
                match request {
                    Request::Append(payload, reply) => {
                        bytes += payload.len();
                        group.push((payload, reply));
                    }
                    Request::Truncate(lsn, reply) => {
                        let result = if failed {
                            Err(LogError::Stopped)
                        } else {
                            self.truncate(lsn)
                        };
                        let _ = reply.send(result);
                    }
                }
                if group.len() < MAX_GROUP_RECORDS && bytes < MAX_GROUP_BYTES {
                    pending = requests.try_recv().ok();
                }
            }
            if group.is_empty() {
                continue;
            }
            if failed {
                for (_, reply) in group {
                    let _ = reply.send(Err(LogError::Stopped));
                }
                continue;
            }
            match self.commit(&group) {
                Ok(first_lsn) => {
                    for (offset, (_, reply)) in (0u64..).zip(group) {
                        let _ = reply.send(Ok(first_lsn + offset));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "journal write failed; the journal stops");
                    failed = true;
                    let message = error.to_string();
                    for (_, reply) in group {
                        let _ =
                            reply.send(Err(LogError::Io(std::io::Error::other(message.clone()))));
                    }
                }
            }
        }
    }

    /// Writes the group and syncs; returns the first record's LSN.
    fn commit(&mut self, group: &[(Vec<u8>, AppendReply)]) -> Result<Lsn, LogError> {
        let first_lsn = self.next_lsn;
        let mut buf = Vec::new();
        for (payload, _) in group {
            let frame_len = (HEADER_BYTES + payload.len()) as u64;
            let pending = self.current_len + buf.len() as u64;
            if pending + frame_len > self.config.segment_bytes && pending > 0 {
                // The full segment is made durable before the next one starts.
                self.persist(&buf)?;
                buf.clear();
                self.current = create_segment(&self.dir, self.next_lsn)?;
                self.current_len = 0;
                self.segments.push(self.next_lsn);
            }
            frame(self.next_lsn, payload, &mut buf);
            self.next_lsn += 1;
        }
        self.persist(&buf)?;
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        Ok(first_lsn)
    }

    /// Writes `buf` at the end of the current segment and `fdatasync`s it.
    fn persist(&mut self, buf: &[u8]) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        match &mut self.ring {
            Some(ring) => ring.write_and_sync(&self.current, self.current_len, buf)?,
            None => {
                self.current.write_all(buf)?;
                self.current.sync_data()?;
            }
        }
        self.current_len += buf.len() as u64;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn truncate(&mut self, lsn: Lsn) -> Result<usize, LogError> {
        // Segment i holds [segments[i], segments[i + 1]); it can go when segments[i + 1] <= lsn.
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1] <= lsn {
            let first = self.segments.remove(0);
            fs::remove_file(segment_path(&self.dir, first))?;
            removed += 1;
        }
        if removed > 0 {
            File::open(&self.dir)?.sync_all()?;
            self.stats
                .segments_removed
                .fetch_add(removed as u64, Ordering::Relaxed);
        }
        Ok(removed)
    }
}

fn frame(lsn: Lsn, payload: &[u8], buf: &mut Vec<u8>) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    // MAX_RECORD_BYTES (checked in `append`) fits in u32.
    buf.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn create_segment(dir: &Path, first: Lsn) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, first))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        let lsn = stem
            .parse::<Lsn>()
            .map_err(|_| corrupt(&path, "segment name is not an lsn".into()))?;
        segments.push((lsn, path));
    }
    segments.sort();
    Ok(segments)
}

fn corrupt(path: &Path, reason: String) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        reason,
    }
}

/// Reads one segment's records into `records`; returns (bytes of whole valid records, file
/// length). Only the last segment may end in a bad record (its torn tail).
fn read_segment(
    path: &Path,
    first: Lsn,
    last: bool,
    records: &mut Vec<Record>,
) -> Result<(u64, u64), LogError> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut offset = 0;
    let mut expected = first;
    while offset < data.len() {
        match parse(&data[offset..], expected) {
            Ok((payload, used)) => {
                records.push(Record {
                    lsn: expected,
                    payload,
                });
                expected += 1;
                offset += used;
            }
            Err(reason) if last => {
                tracing::debug!(reason, offset, "journal tail ends here");
                break;
            }
            Err(reason) => return Err(corrupt(path, format!("at byte {offset}: {reason}"))),
        }
    }
    Ok((offset as u64, data.len() as u64))
}

fn parse(data: &[u8], expected: Lsn) -> Result<(Vec<u8>, usize), &'static str> {
    let header = data.get(..HEADER_BYTES).ok_or("short header")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_RECORD_BYTES {
        return Err("length over MAX_RECORD_BYTES");
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&header[8..16]);
    let payload = data
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or("short payload")?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err("crc mismatch");
    }
    if u64::from_le_bytes(lsn_bytes) != expected {
        return Err("lsn out of sequence");
    }
    Ok((payload.to_vec(), HEADER_BYTES + len))
}
