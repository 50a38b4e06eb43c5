//! The tamper-evident ledger as the CLI uses it: one group-commit appender over the SQLite
//! sink in the same database, signing checkpoints with the key `gavel init` created.
//!
//! Governance changes are recorded before they take effect (an action that then fails to
//! apply leaves a record of the attempt, never a change without a record). Decisions are
//! recorded before their verdict is printed: a caller never acts on a decision the ledger
//! does not hold.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use gavel_contract::time::Timestamp;
use gavel_ledger::{
    Appender, AppenderConfig, BatchObserver, Durable, Encoded, NoteSigner, Pending, Receipt,
    RecordKind,
};
use gavel_ledger_sqlite::SqliteLedgerSink;

use crate::failure::Failure;

/// The signing key's file name, next to the database.
pub const KEY_FILE: &str = "gavel-ledger.key";

pub fn key_path(db_path: &Path) -> PathBuf {
    db_path
        .parent()
        .map_or_else(|| PathBuf::from(KEY_FILE), |dir| dir.join(KEY_FILE))
}

/// The log's name in its checkpoints (the first line of every signed note).
pub fn origin(organization: &str) -> String {
    format!("gavel.ledger/{organization}")
}

/// Creates the checkpoint signing key (owner-only, never overwritten).
pub fn create_key(db_path: &Path, organization: &str) -> Result<NoteSigner, Failure> {
    let path = key_path(db_path);
    gavel_ledger_sqlite::create_signing_key(&path, &origin(organization)).map_err(|e| {
        Failure::storage(format!(
            "cannot create the ledger signing key `{}`: {e}",
            path.display()
        ))
    })
}

pub fn load_key(db_path: &Path) -> Result<NoteSigner, Failure> {
    let path = key_path(db_path);
    gavel_ledger_sqlite::load_signing_key(&path).map_err(|e| {
        Failure::storage(format!(
            "cannot load the ledger signing key `{}`: {e}; it is created by `gavel init`",
            path.display()
        ))
    })
}

/// How long a command waits for another gavel command to finish with the ledger.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

pub fn open_sink(db_path: &Path) -> Result<SqliteLedgerSink, Failure> {
    SqliteLedgerSink::open(db_path)
        .map_err(|e| Failure::storage(format!("cannot open the ledger: {e}")))
}

/// Refuses `text` (what `what` names: a reason, a principal) when it holds a secret: it goes
/// into a ledger record as it is, and no secret may be in one.
pub fn without_secret(what: &str, text: &str) -> Result<(), Failure> {
    match gavel_engine::secret_in_text(text) {
        None => Ok(()),
        Some(rule) => Err(Failure::invalid(format!(
            "{what} holds what looks like a secret ({rule}); it is recorded in the ledger as it is, so leave the secret out"
        ))),
    }
}

/// Whether a gavel process holds the ledger for writing now (see [`Ledger::open`]).
pub fn writer_running(db_path: &Path) -> Result<bool, Failure> {
    let lock_path = db_path.with_extension("ledger-lock");
    let lock = match std::fs::File::open(&lock_path) {
        Ok(lock) => lock,
        // No process has ever written this ledger from here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(Failure::storage(format!(
                "cannot open the ledger lock `{}`: {e}",
                lock_path.display()
            )))
        }
    };
    match lock.try_lock_shared() {
        // Released when `lock` drops, at once: a writer may start during the check.
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Failure::storage(format!(
            "cannot check the ledger lock `{}`: {e}",
            lock_path.display()
        ))),
    }
}

/// The ledger opened for reading only (audit commands): nothing is written to the file.
pub fn open_reader(db_path: &Path) -> Result<SqliteLedgerSink, Failure> {
    SqliteLedgerSink::open_read_only(db_path)
        .map_err(|e| Failure::storage(format!("cannot open the ledger: {e}")))
}

pub struct Ledger {
    appender: Appender,
    /// One appender per ledger at a time: the appender keeps the tree in memory, so two
    /// processes appending at once would disagree about the next index. Held until close.
    _writer_lock: std::fs::File,
}

/// What to do while `gavel serve` holds the ledger, for commands its API offers too.
const WHILE_SERVED: &str = "use its admin API, or stop it";

impl Ledger {
    /// Opens the ledger for appending, waiting a while for another gavel process to finish.
    pub fn open(db_path: &Path) -> Result<Ledger, Failure> {
        Ledger::open_with(db_path, LOCK_PATIENCE, None, false, WHILE_SERVED)
    }

    /// As [`Ledger::open`], for a command the gateway's API does not offer: `while_served`
    /// says what to do while `gavel serve` holds the ledger.
    pub fn open_unserved(db_path: &Path, while_served: &str) -> Result<Ledger, Failure> {
        Ledger::open_with(db_path, LOCK_PATIENCE, None, false, while_served)
    }

    /// Opens the ledger for a long-running writer (`gavel serve`): fails within a second if
    /// another process holds it (not at once: `audit verify` holds it for a moment to see
    /// whether a writer runs), and reports every committed batch to `observer`. Its commits
    /// never checkpoint the WAL: the caller runs a `WalCheckpointer`.
    pub fn open_exclusive(
        db_path: &Path,
        observer: Option<BatchObserver>,
    ) -> Result<Ledger, Failure> {
        Ledger::open_with(
            db_path,
            Duration::from_secs(1),
            observer,
            true,
            WHILE_SERVED,
        )
    }

    fn open_with(
        db_path: &Path,
        patience: Duration,
        observer: Option<BatchObserver>,
        background_checkpoints: bool,
        while_served: &str,
    ) -> Result<Ledger, Failure> {
        let lock_path = db_path.with_extension("ledger-lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                Failure::storage(format!(
                    "cannot open the ledger lock `{}`: {e}",
                    lock_path.display()
                ))
            })?;
        let deadline = Instant::now() + patience;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Failure::storage(format!(
                        "the ledger `{}` is held by another gavel process (a running `gavel serve` holds it for as long as it runs: {while_served})",
                        lock_path.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Failure::storage(format!(
                        "cannot lock the ledger `{}`: {e}",
                        lock_path.display()
                    )))
                }
            }
        }
        let signer = load_key(db_path)?;
        let sink = open_sink(db_path)?;
        if background_checkpoints {
            sink.hand_checkpoints_to_background().map_err(|e| {
                Failure::storage(format!("cannot configure the ledger connection: {e}"))
            })?;
        }
        let appender = Appender::start_observed(sink, signer, AppenderConfig::default(), observer)
            .map_err(|e| Failure::storage(format!("the ledger cannot start: {e}")))?;
        Ok(Ledger {
            appender,
            _writer_lock: lock,
        })
    }

    /// Queues a record; it is durable once the returned `Pending` resolves.
    pub fn submit(
        &self,
        kind: RecordKind,
        at: Timestamp,
        id: &str,
        body: impl Serialize,
    ) -> Result<Pending, Failure> {
        self.appender
            .submit(encode(kind, at, id, body)?)
            .map_err(refused)
    }

    /// [`Ledger::submit`] for async callers: await the returned `Durable`.
    pub fn submit_async(
        &self,
        kind: RecordKind,
        at: Timestamp,
        id: &str,
        body: impl Serialize,
    ) -> Result<Durable, Failure> {
        self.appender
            .submit_async(encode(kind, at, id, body)?)
            .map_err(refused)
    }

    /// Queues a record nobody waits on before acting (what happened after an answer was
    /// sent): it rides with the next commit someone waits on, or goes on its own within
    /// the appender's background delay (`AppenderConfig::background_delay`, 100 ms).
    pub fn submit_background(
        &self,
        kind: RecordKind,
        at: Timestamp,
        id: &str,
        body: impl Serialize,
    ) -> Result<Pending, Failure> {
        self.appender
            .submit_background(encode(kind, at, id, body)?)
            .map_err(refused)
    }

    /// As [`Ledger::record_change`], also giving the record's id (to prove it by).
    pub fn record_change_named(
        &self,
        kind: RecordKind,
        at: Timestamp,
        principal: &str,
        action: &str,
        details: Value,
    ) -> Result<(String, Receipt), Failure> {
        let id = crate::context::new_id("chg")?;
        let pending = self.submit(kind, at, &id, change(principal, action, details))?;
        Ok((id, wait(pending)?))
    }

    /// Records a governance change by `principal` under a fresh id, durably.
    pub fn record_change(
        &self,
        kind: RecordKind,
        at: Timestamp,
        principal: &str,
        action: &str,
        details: Value,
    ) -> Result<Receipt, Failure> {
        self.record_change_named(kind, at, principal, action, details)
            .map(|(_, receipt)| receipt)
    }

    /// Appends a record and returns once it is durable.
    pub fn record(
        &self,
        kind: RecordKind,
        at: Timestamp,
        id: &str,
        body: impl Serialize,
    ) -> Result<Receipt, Failure> {
        wait(self.submit(kind, at, id, body)?)
    }

    /// Why the ledger stopped accepting records, after a failed commit or sync.
    pub fn failure(&self) -> Option<&str> {
        self.appender.failure()
    }

    /// Signs a final checkpoint and stops the writer.
    pub fn close(self) -> Result<(), Failure> {
        self.appender.close().map(|_| ()).map_err(|e| {
            Failure::storage(format!(
                "the ledger could not sign its final checkpoint: {e}"
            ))
        })
    }
}

/// Opens the ledger, records one governance change durably and closes it: for commands that
/// make a single change, before they make it.
pub fn record_change(
    db_path: &Path,
    kind: RecordKind,
    at: Timestamp,
    principal: &str,
    action: &str,
    details: Value,
) -> Result<Receipt, Failure> {
    let ledger = Ledger::open(db_path)?;
    let receipt = ledger.record_change(kind, at, principal, action, details)?;
    ledger.close()?;
    Ok(receipt)
}

/// The record's canonical bytes, written straight from the body (no JSON tree is built).
fn encode(
    kind: RecordKind,
    at: Timestamp,
    id: &str,
    body: impl Serialize,
) -> Result<Encoded, Failure> {
    Encoded::new(kind, at.millis(), id, &body)
        .map_err(|e| Failure::storage(format!("cannot encode a ledger record: {e}")))
}

fn refused(e: gavel_ledger::LedgerError) -> Failure {
    Failure::storage(format!("the ledger refused a record: {e}"))
}

pub fn wait(pending: Pending) -> Result<Receipt, Failure> {
    pending
        .wait()
        .map_err(|e| Failure::storage(format!("the ledger could not make a record durable: {e}")))
}

/// A governance change: who did what, with the fields the ledger indexes.
pub fn change(principal: &str, action: &str, details: Value) -> Value {
    let mut body = json!({ "principal": principal, "action": action });
    if let (Some(body), Value::Object(details)) = (body.as_object_mut(), details) {
        body.extend(details);
    }
    body
}

/// How far the ledger has come: its size and its newest signed checkpoint (sequence number,
/// tree size), as the model card and the dashboard show it.
pub struct LedgerState {
    pub records: u64,
    pub newest_checkpoint: Option<(u64, u64)>,
}

impl LedgerState {
    pub fn of(sink: &SqliteLedgerSink) -> Result<LedgerState, Failure> {
        Ok(LedgerState {
            records: gavel_ledger::LedgerSink::record_count(sink).map_err(Failure::storage)?,
            newest_checkpoint: sink.newest_checkpoint().map_err(Failure::storage)?,
        })
    }
}

/// Hands each line of `export_jsonl`'s output (one canonical record per line) to `each` as it
/// arrives, so the ledger is read one record at a time instead of collected in memory.
pub struct EachLine<F> {
    partial: Vec<u8>,
    each: F,
    /// Why `each` stopped the export: an `io::Error` cannot carry a `Failure` through it.
    failure: Option<Failure>,
}

impl<F: FnMut(&[u8]) -> Result<(), Failure>> EachLine<F> {
    pub fn new(each: F) -> EachLine<F> {
        EachLine {
            partial: Vec::new(),
            each,
            failure: None,
        }
    }

    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        (self.each)(line).map_err(|failure| {
            self.failure = Some(failure);
            io::Error::other("the reader stopped reading the ledger")
        })
    }

    /// The export's outcome, reporting the failure that stopped it, if one did.
    pub fn finish<E: std::fmt::Display>(self, exported: Result<u64, E>) -> Result<(), Failure> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        exported
            .map(|_| ())
            .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))
    }
}

impl<F: FnMut(&[u8]) -> Result<(), Failure>> io::Write for EachLine<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            if self.partial.is_empty() {
                self.line(line)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole)?;
                whole.clear();
                self.partial = whole;
            }
            rest = after.get(1..).unwrap_or_default();
        }
        self.partial.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn lines_are_handed_over_whole_however_the_bytes_arrive() {
        let mut seen = Vec::new();
        let mut lines = EachLine::new(|line: &[u8]| {
            seen.push(String::from_utf8(line.to_vec()).unwrap());
            Ok(())
        });
        lines.write_all(b"{\"a\"").unwrap();
        lines.write_all(b":1}").unwrap();
        lines.write_all(b"\n").unwrap();
        lines.write_all(b"{}\n{\"b\":2}\n{").unwrap();
        lines.write_all(b"}\n").unwrap();
        lines.finish(Ok::<u64, String>(4)).unwrap();
        assert_eq!(seen, ["{\"a\":1}", "{}", "{\"b\":2}", "{}"]);
    }

    #[test]
    fn a_failing_line_stops_the_export_with_its_own_failure() {
        let mut lines = EachLine::new(|_: &[u8]| Err(Failure::storage("bad record")));
        let written = lines.write_all(b"x\n");
        let failure = lines
            .finish(written.map(|()| 1).map_err(|e| e.to_string()))
            .unwrap_err();
        assert_eq!(failure.message, "bad record");
    }
}
