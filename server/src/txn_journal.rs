//! The accord runtime's journal, as `txn_journal` picks it (design/cluster.md, "Journal"):
//! `engine` keeps command records in the engine's `Family::Txn` ([`EngineJournal`]); `log`
//! writes them to the dedicated segmented log in `<data_dir>/journal` ([`LogJournal`]), the
//! apply's rows still going to the engine.
//!
//! Switching journals on an existing data directory moves the live state: on open, the live
//! commands and watermarks of the journal not chosen are recorded in the chosen one (synced),
//! then erased from the old one. A crash in between leaves both holding them, and the next
//! open moves them again (recording the same state twice is idempotent). Nothing is lost and
//! nothing is skipped silently.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use concord_cluster::journal::LogJournal;
use concord_cluster::journal::log::LogConfig;
use concord_cluster::runtime::MonotonicClock;
use concord_storage::engine::{Durability, Engine, WriteBatch};
use concord_txn::storage::{EngineJournal, Journal};
use concord_txn::timestamp::TxnId;

use crate::config::TxnJournal;
use crate::{Error, Result};

/// The log journal's directory under the data directory.
pub const JOURNAL_DIR: &str = "journal";

fn journal_error(context: &str, error: impl std::fmt::Display) -> Error {
    Error::Io {
        context: context.to_owned(),
        source: std::io::Error::other(error.to_string()),
    }
}

/// Opens the journal `choice` names on `engine`, first moving into it what the other journal
/// still holds. `log_dir`: the log journal's directory (`None`: a database without a data
/// directory, which has no log journal).
///
/// # Errors
/// `Io` when a journal cannot be opened, read or written; `InvalidRequest` for the log
/// journal without a directory.
pub fn open<E: Engine + Debug>(
    choice: TxnJournal,
    log_dir: Option<&Path>,
    engine: &Arc<E>,
) -> Result<Box<dyn Journal + Send>> {
    match (choice, log_dir) {
        (TxnJournal::Engine, log_dir) => {
            let mut journal = EngineJournal::new(engine.clone());
            if let Some(dir) = log_dir.filter(|dir| dir.exists()) {
                let mut old = LogJournal::open(dir, LogConfig::default(), engine.clone())
                    .map_err(|error| journal_error("open the old log journal", error))?;
                move_live_state(&mut old, &mut journal)?;
            }
            Ok(Box::new(journal))
        }
        (TxnJournal::Log, Some(dir)) => {
            let mut journal = LogJournal::open(dir, LogConfig::default(), engine.clone())
                .map_err(|error| journal_error("open the log journal", error))?;
            move_live_state(&mut EngineJournal::new(engine.clone()), &mut journal)?;
            Ok(Box::new(journal))
        }
        (TxnJournal::Log, None) => Err(concord_storage::Error::InvalidRequest(
            "txn_journal = \"log\" needs a data directory".into(),
        )
        .into()),
    }
}

/// Records `from`'s live commands and watermarks in `to` (synced), then erases them from
/// `from`. Returns how many commands moved.
fn move_live_state(from: &mut dyn Journal, to: &mut dyn Journal) -> Result<usize> {
    let context = "move the journal's live state to the configured txn_journal";
    let now = MonotonicClock::new().now();
    let commands = from.replay(now).map_err(|e| journal_error(context, e))?;
    let watermarks = from.watermarks().map_err(|e| journal_error(context, e))?;
    let target = to.watermarks().map_err(|e| journal_error(context, e))?;
    if target == Default::default() && watermarks != Default::default() {
        to.record_watermarks(&watermarks)
            .map_err(|e| journal_error(context, e))?;
    }
    if commands.is_empty() {
        return Ok(0);
    }
    for command in &commands {
        to.record(command, WriteBatch::new(), Durability::Sync)
            .map_err(|e| journal_error(context, e))?;
    }
    // Durable in `to` before `from` forgets them.
    to.flush().map_err(|e| journal_error(context, e))?;
    let ids: Vec<TxnId> = commands.iter().map(|command| command.txn_id).collect();
    from.erase(&ids).map_err(|e| journal_error(context, e))?;
    tracing::info!(
        commands = ids.len(),
        "moved the live journal state to the configured txn_journal"
    );
    Ok(ids.len())
}
