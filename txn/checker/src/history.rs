//! The history model: client operations as the clients saw them.
//!
//! A history is a list of [`Operation`]s. Each operation is *invoked* by a client process at a
//! client-side time and later *completed* with one of three outcomes, as in Jepsen:
//!
//! ```text
//!   invoke ──► ok    the operation took effect; the completion carries its results
//!          ──► fail  the operation certainly did not take effect
//!          ──► info  unknown: it may or may not have taken effect, at any time after invoke
//! ```
//!
//! An operation that is never completed counts as `info`. Times are opaque `u64` ticks (the
//! simulator's clock, or nanoseconds for Jepsen); the checkers only compare them, and treat two
//! operations as ordered in real time only when one completes *strictly* before the other is
//! invoked.
//!
//! The body of an operation is generic: list-append transactions, bank operations and register
//! operations each implement [`OperationBody`], which also fixes their JSON-lines form:
//!
//! ```text
//! {"type":"invoke","op":0,"process":1,"time":5,"f":"txn","value":[["append",1,2],["r",1,null]]}
//! {"type":"ok","op":0,"process":1,"time":9,"f":"txn","value":[["append",1,2],["r",1,[2]]]}
//! ```
//!
//! This is the Jepsen/Elle event format plus an optional `op` field that pairs a completion with
//! its invocation. Without `op`, a completion pairs with its process's outstanding invocation, as
//! Jepsen requires. Lines whose `process` is a string (Jepsen's `"nemesis"`) are skipped.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};

use serde::Deserialize;

use crate::error::CheckerError;

/// Most operations in one history. Keeps [`OpId`] within `u32`, so graphs stay compact.
pub const OPERATIONS_MAX: usize = 1 << 30;

/// Identifies one operation of a history: its position in invocation order of recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(u32);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(index: usize) -> OpId {
        assert!(
            index < OPERATIONS_MAX,
            "operation index {index} over OPERATIONS_MAX"
        );
        OpId(index as u32)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "T{}", self.0)
    }
}

/// A client process. Jepsen processes run one operation at a time; the simulator may reuse an
/// id for concurrent operations as long as it pairs completions by [`OpId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "p{}", self.0)
    }
}

/// How an operation completed, with its results when it completed `ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<B> {
    /// Took effect; carries the body with results filled in (e.g. the values read).
    Ok(B),
    /// Certainly did not take effect.
    Fail,
    /// May or may not have taken effect (timeout, crash, lost reply).
    Info,
}

/// An operation's outcome without its results; never-completed operations are `Info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    Fail,
    Info,
}

impl fmt::Display for Status {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Info => "info",
        })
    }
}

/// What a workload's operation bodies must provide: their JSON form, how an invocation relates
/// to its completion, and a short human rendering for reports.
pub trait OperationBody: Clone + fmt::Debug {
    /// The Jepsen `f` field, e.g. `"txn"` or `"transfer"`.
    fn function_name(&self) -> &'static str;
    /// The Jepsen `value` field.
    fn to_json_value(&self) -> serde_json::Value;
    /// Parses a body from the `f` and `value` fields; the error says what was wrong.
    fn from_json_value(function_name: &str, value: &serde_json::Value) -> Result<Self, String>;
    /// The body as it was before execution: results (read values) removed.
    fn to_invocation(&self) -> Self;
    /// Checks that `completion` is a possible `ok` completion of the invocation `self`.
    fn check_completion(&self, completion: &Self) -> Result<(), String>;
    /// Writes a short rendering such as `append(1, 2) read(1, [2])`.
    fn describe(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// One client operation, from invocation to completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<B> {
    id: OpId,
    process: ProcessId,
    invoke_time: u64,
    complete_time: Option<u64>,
    invocation: B,
    outcome: Outcome<B>,
}

impl<B> Operation<B> {
    pub fn id(&self) -> OpId {
        self.id
    }

    pub fn process(&self) -> ProcessId {
        self.process
    }

    pub fn invoke_time(&self) -> u64 {
        self.invoke_time
    }

    /// When the client saw the completion; `None` if it never did.
    pub fn complete_time(&self) -> Option<u64> {
        self.complete_time
    }

    /// The body as invoked, without results.
    pub fn invocation(&self) -> &B {
        &self.invocation
    }

    /// The outcome; `Info` for an operation that was never completed.
    pub fn outcome(&self) -> &Outcome<B> {
        &self.outcome
    }

    pub fn status(&self) -> Status {
        match self.outcome {
            Outcome::Ok(_) => Status::Ok,
            Outcome::Fail => Status::Fail,
            Outcome::Info => Status::Info,
        }
    }

    /// The completed body with results for an `ok` operation, otherwise the invocation.
    pub fn body(&self) -> &B {
        match &self.outcome {
            Outcome::Ok(body) => body,
            Outcome::Fail | Outcome::Info => &self.invocation,
        }
    }
}

impl<B: OperationBody> fmt::Display for Operation<B> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} {} {} [{}, ",
            self.id,
            self.process,
            self.status(),
            self.invoke_time
        )?;
        match self.complete_time {
            Some(time) => write!(formatter, "{time}]: ")?,
            None => write!(formatter, "never]: ")?,
        }
        self.body().describe(formatter)
    }
}

/// A recorded history of client operations of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History<B> {
    operations: Vec<Operation<B>>,
}

impl<B: OperationBody> Default for History<B> {
    fn default() -> Self {
        History::new()
    }
}

impl<B: OperationBody> History<B> {
    pub fn new() -> Self {
        History {
            operations: Vec::new(),
        }
    }

    /// Records that `process` invoked an operation at `time`. Reads in `invocation` carry no
    /// results yet (for list-append: `Read(key, None)`).
    pub fn invoke(&mut self, process: ProcessId, time: u64, invocation: B) -> OpId {
        let id = OpId::from_index(self.operations.len());
        self.operations.push(Operation {
            id,
            process,
            invoke_time: time,
            complete_time: None,
            invocation,
            outcome: Outcome::Info,
        });
        id
    }

    /// Records the completion of `id` at `time`. An `Ok` outcome must have the invocation's
    /// shape with its results filled in.
    pub fn complete(
        &mut self,
        id: OpId,
        time: u64,
        outcome: Outcome<B>,
    ) -> Result<(), CheckerError> {
        let operation = self
            .operations
            .get_mut(id.index())
            .ok_or(CheckerError::UnknownOperation(id))?;
        if operation.complete_time.is_some() {
            return Err(CheckerError::AlreadyCompleted(id));
        }
        if time < operation.invoke_time {
            return Err(CheckerError::CompletionBeforeInvocation {
                op: id,
                invoke_time: operation.invoke_time,
                complete_time: time,
            });
        }
        if let Outcome::Ok(completion) = &outcome {
            operation
                .invocation
                .check_completion(completion)
                .map_err(|reason| CheckerError::CompletionMismatch { op: id, reason })?;
        }
        operation.complete_time = Some(time);
        operation.outcome = outcome;
        Ok(())
    }

    /// Records a whole operation at once. For `Status::Ok`, `body` is the completed body (with
    /// results) and the invocation is derived from it; otherwise `body` is the invocation.
    pub fn record(
        &mut self,
        process: ProcessId,
        invoke_time: u64,
        complete_time: u64,
        body: B,
        status: Status,
    ) -> Result<OpId, CheckerError> {
        let id = self.invoke(process, invoke_time, body.to_invocation());
        let outcome = match status {
            Status::Ok => Outcome::Ok(body),
            Status::Fail => Outcome::Fail,
            Status::Info => Outcome::Info,
        };
        self.complete(id, complete_time, outcome)?;
        Ok(id)
    }

    pub fn operations(&self) -> &[Operation<B>] {
        &self.operations
    }

    pub fn operation(&self, id: OpId) -> Option<&Operation<B>> {
        self.operations.get(id.index())
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Writes the history as JSON lines, events in time order (invocations before completions
    /// at equal times, as the checkers read ties).
    pub fn write_jsonl(&self, writer: &mut impl Write) -> Result<(), CheckerError> {
        for line in self.jsonl_lines() {
            writeln!(writer, "{line}")?;
        }
        Ok(())
    }

    /// The history as one JSON-lines string.
    pub fn to_jsonl_string(&self) -> String {
        let mut text = String::new();
        for line in self.jsonl_lines() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    fn jsonl_lines(&self) -> Vec<String> {
        // (time, 0 = invoke / 1 = completion, op index)
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(self.operations.len() * 2);
        for (index, operation) in self.operations.iter().enumerate() {
            events.push((operation.invoke_time, 0, index));
            if let Some(time) = operation.complete_time {
                events.push((time, 1, index));
            }
        }
        events.sort_unstable();
        events
            .into_iter()
            .map(|(time, phase, index)| {
                let operation = &self.operations[index];
                let (event_type, body) = if phase == 0 {
                    ("invoke", &operation.invocation)
                } else {
                    let event_type = match operation.status() {
                        Status::Ok => "ok",
                        Status::Fail => "fail",
                        Status::Info => "info",
                    };
                    (event_type, operation.body())
                };
                serde_json::json!({
                    "type": event_type,
                    "op": index,
                    "process": operation.process.0,
                    "time": time,
                    "f": body.function_name(),
                    "value": body.to_json_value(),
                })
                .to_string()
            })
            .collect()
    }

    /// Parses a JSON-lines history (see the module documentation for the format).
    pub fn from_jsonl_str(text: &str) -> Result<Self, CheckerError> {
        Self::read_jsonl(text.as_bytes())
    }

    /// Reads a JSON-lines history (see the module documentation for the format).
    pub fn read_jsonl(reader: impl BufRead) -> Result<Self, CheckerError> {
        let mut parser = JsonlParser::<B>::default();
        for (line_idx, line) in reader.lines().enumerate() {
            let line = line?;
            if !line.trim().is_empty() {
                parser.parse_line(line_idx + 1, &line)?;
            }
        }
        parser.finish()
    }
}

/// One event line, as Jepsen writes it (extra fields such as `index` are ignored).
#[derive(Debug, Deserialize)]
struct EventLine {
    #[serde(rename = "type")]
    event_type: String,
    process: serde_json::Value,
    time: u64,
    #[serde(default)]
    op: Option<u64>,
    f: String,
    #[serde(default)]
    value: serde_json::Value,
}

#[derive(Debug)]
struct ParsedOperation<B> {
    file_op: Option<u64>,
    process: u64,
    invoke_time: u64,
    invocation: B,
    completion: Option<(usize, u64, Outcome<B>)>,
}

#[derive(Debug)]
struct JsonlParser<B> {
    operations: Vec<ParsedOperation<B>>,
    by_file_op: HashMap<u64, usize>,
    outstanding_by_process: HashMap<u64, usize>,
}

impl<B> Default for JsonlParser<B> {
    fn default() -> Self {
        JsonlParser {
            operations: Vec::new(),
            by_file_op: HashMap::new(),
            outstanding_by_process: HashMap::new(),
        }
    }
}

impl<B: OperationBody> JsonlParser<B> {
    fn parse_line(&mut self, line: usize, text: &str) -> Result<(), CheckerError> {
        let event: EventLine =
            serde_json::from_str(text).map_err(|source| CheckerError::Json { line, source })?;
        let process = match &event.process {
            serde_json::Value::String(_) => return Ok(()), // the nemesis, not a client
            serde_json::Value::Number(number) => {
                number.as_u64().ok_or_else(|| CheckerError::InvalidField {
                    line,
                    field: "process",
                    reason: format!("{number} is not a non-negative integer"),
                })?
            }
            other => {
                return Err(CheckerError::InvalidField {
                    line,
                    field: "process",
                    reason: format!("{other} is neither an integer nor a string"),
                });
            }
        };
        let parse_body = || {
            B::from_json_value(&event.f, &event.value).map_err(|reason| {
                CheckerError::InvalidField {
                    line,
                    field: "value",
                    reason,
                }
            })
        };
        match event.event_type.as_str() {
            "invoke" => {
                let index = self.operations.len();
                if let Some(file_op) = event.op {
                    if self.by_file_op.insert(file_op, index).is_some() {
                        return Err(CheckerError::DuplicateInvocation { line, op: file_op });
                    }
                } else {
                    self.outstanding_by_process.insert(process, index);
                }
                self.operations.push(ParsedOperation {
                    file_op: event.op,
                    process,
                    invoke_time: event.time,
                    invocation: parse_body()?,
                    completion: None,
                });
            }
            "ok" | "fail" | "info" => {
                let index = match event.op {
                    Some(file_op) => self.by_file_op.get(&file_op).copied(),
                    None => self.outstanding_by_process.remove(&process),
                };
                let index = index.ok_or(CheckerError::UnmatchedCompletion { line, process })?;
                let outcome = match event.event_type.as_str() {
                    "ok" => Outcome::Ok(parse_body()?),
                    "fail" => Outcome::Fail,
                    _ => Outcome::Info,
                };
                self.operations[index].completion = Some((line, event.time, outcome));
            }
            other => {
                return Err(CheckerError::InvalidField {
                    line,
                    field: "type",
                    reason: format!("unknown event type {other:?}"),
                });
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<History<B>, CheckerError> {
        if self
            .operations
            .iter()
            .all(|operation| operation.file_op.is_some())
        {
            // Keep the file's operation numbering, so that export then import keeps ids.
            self.operations.sort_by_key(|operation| operation.file_op);
        }
        let mut history = History::new();
        for parsed in self.operations {
            let id = history.invoke(
                ProcessId(parsed.process),
                parsed.invoke_time,
                parsed.invocation,
            );
            if let Some((line, time, outcome)) = parsed.completion {
                history
                    .complete(id, time, outcome)
                    .map_err(|source| CheckerError::Line {
                        line,
                        source: Box::new(source),
                    })?;
            }
        }
        Ok(history)
    }
}
