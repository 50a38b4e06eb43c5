//! Verification of the query aids: the columns copied next to each record's bytes (`id`,
//! `kind`, `at_ms`, `deployment`, `approval_id`, `principal`, `reason_codes`) and the approval
//! spans. The bytes are the authority and the Merkle tree proves them; the aids decide which
//! records a lookup or a filtered query returns, so an edited aid could hide a record from
//! "every decision under approval X" without touching what any record says. `verify` checks
//! them once the tree has verified the bytes.

use std::collections::HashMap;

use gavel_ledger::{Problem, RecordAids, VerifyError, VerifyFailure};
use rusqlite::types::ValueRef;
use rusqlite::{OptionalExtension, Row};

use crate::SqliteLedgerSink;

fn mismatch(index: i64, what: String) -> VerifyError {
    VerifyError::Failed(VerifyFailure {
        index: u64::try_from(index).ok(),
        checkpoint_seq: None,
        problem: Problem::QueryAid(what),
    })
}

fn storage(e: rusqlite::Error) -> VerifyError {
    VerifyError::Sink(Box::new(e))
}

/// Why a lookup column matters, for the sentence that names an edited one.
const COLUMN_EDITED: &str = "lookups and filters on it (`audit show`, `audit export`, `gavel explain`) would miss the record or return it for the wrong value (query columns edited)";
const SPANS_EDITED: &str = "approval spans edited";

/// Reads column `i` (`name`) as optional text; any other type is itself an edit.
fn text<'r>(
    row: &'r Row,
    i: usize,
    name: &str,
    index: i64,
) -> Result<Option<&'r str>, VerifyError> {
    match row.get_ref(i).map_err(storage)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t).map(Some).map_err(|_| {
            mismatch(
                index,
                format!("the `{name}` column is not UTF-8 text: {COLUMN_EDITED}"),
            )
        }),
        other => Err(mismatch(
            index,
            format!(
                "the `{name}` column holds {} data, not text: {COLUMN_EDITED}",
                other.data_type().to_string().to_lowercase()
            ),
        )),
    }
}

/// Column `name` holds `stored`; the record says `derived`.
fn compare<T: PartialEq + std::fmt::Debug>(
    index: i64,
    name: &str,
    stored: T,
    derived: T,
) -> Result<(), VerifyError> {
    if stored == derived {
        return Ok(());
    }
    Err(mismatch(
        index,
        format!(
            "the `{name}` column holds {stored:?} but the record says {derived:?}: {COLUMN_EDITED}"
        ),
    ))
}

impl SqliteLedgerSink {
    /// Checks the query aids of the first `records` records (those the tree has proven): that
    /// the approval spans are well formed and one approval's never overlap (this crate writes
    /// one per approval per committed batch), that every record's query columns equal what
    /// its bytes say, and that each record under an approval lies within one of that
    /// approval's spans. Names the first record whose aids are wrong.
    ///
    /// Records are independent here, so the range is split into one stretch per core (two to
    /// eight), each read on a read-only connection of its own; the first stretch with a wrong
    /// aid names it. An in-memory database, or a ledger of few records, is read on the one
    /// connection.
    pub fn verify_query_aids(&self, records: u64) -> Result<(), VerifyError> {
        self.verify_spans_are_disjoint()?;
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        // At least two stretches even on one core, so that every machine runs the split path.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(2, 8));
        let stretches = if records < AIDS_STRETCH_MIN {
            1
        } else {
            cores as i64
        };
        let mut readers = Vec::new();
        for _ in 1..stretches {
            match self.read_only_connection().map_err(storage)? {
                Some(conn) => readers.push(conn),
                None => break,
            }
        }
        if readers.is_empty() {
            return check_aids(self.conn(), 0, records);
        }
        // Stretch i of n holds [records * i / n, records * (i + 1) / n): every index once.
        let n = readers.len() as i128 + 1;
        let edge = |i: i128| i64::try_from(i128::from(records) * i / n).unwrap_or(records);
        std::thread::scope(|scope| {
            let others: Vec<_> = readers
                .into_iter()
                .zip(1..)
                .map(|(conn, i)| {
                    let (from, to) = (edge(i), edge(i + 1));
                    scope.spawn(move || check_aids(&conn, from, to))
                })
                .collect();
            let mut results = vec![check_aids(self.conn(), edge(0), edge(1))];
            // Every worker joined before any error is returned, so that none is left running
            // and a panic in one becomes an error, not a panic of the scope.
            results.extend(others.into_iter().map(|worker| {
                worker.join().unwrap_or_else(|_| {
                    Err(VerifyError::Sink(
                        "checking the query aids failed (a panic)".into(),
                    ))
                })
            }));
            // Stretches in index order: the first that fails names the first wrong record.
            results
                .into_iter()
                .collect::<Result<Vec<()>, VerifyError>>()
                .map(drop)
        })
    }

    /// Every span begins no later than it ends, and one approval's spans do not overlap: what
    /// makes "the span starting nearest below" the only candidate for a record.
    fn verify_spans_are_disjoint(&self) -> Result<(), VerifyError> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT approval_id, first_idx, last_idx FROM ledger_approval_spans
                 ORDER BY approval_id, first_idx",
            )
            .map_err(storage)?;
        let mut rows = stmt.query([]).map_err(storage)?;
        let mut previous: Option<(String, i64, i64)> = None;
        while let Some(row) = rows.next().map_err(storage)? {
            let approval: String = row.get(0).map_err(storage)?;
            let (first, last): (i64, i64) =
                (row.get(1).map_err(storage)?, row.get(2).map_err(storage)?);
            if first > last {
                return Err(mismatch(
                    first,
                    format!("a span of approval {approval:?} ends at {last}, before it begins ({SPANS_EDITED})"),
                ));
            }
            if let Some((before, before_first, before_last)) = &previous {
                if *before == approval && first <= *before_last {
                    return Err(mismatch(
                        first,
                        format!(
                            "spans of approval {approval:?} overlap ({before_first}..={before_last} and {first}..={last}); the ledger never writes overlapping spans ({SPANS_EDITED})"
                        ),
                    ));
                }
            }
            previous = Some((approval, first, last));
        }
        Ok(())
    }
}

/// Fewer records than this are checked on one connection: opening others would cost more than
/// it saves.
const AIDS_STRETCH_MIN: i64 = 1_024;

/// Checks the query aids of records `[from, to)` through `conn` (see
/// [`SqliteLedgerSink::verify_query_aids`]).
fn check_aids(conn: &rusqlite::Connection, from: i64, to: i64) -> Result<(), VerifyError> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, bytes, id, kind, at_ms, deployment, approval_id, principal, reason_codes
             FROM ledger_records WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )
        .map_err(storage)?;
    let mut rows = stmt.query([from, to]).map_err(storage)?;
    let mut spans = Spans::new(conn);
    while let Some(row) = rows.next().map_err(storage)? {
        let index: i64 = row.get(0).map_err(storage)?;
        let bytes = row
            .get_ref(1)
            .map_err(storage)?
            .as_bytes()
            .map_err(|_| mismatch(index, "the record's bytes are not a blob".to_owned()))?;
        // The tree has verified these bytes; a record that does not even parse is the
        // format check's to report (it runs before, by default).
        let record = RecordAids::from_bytes(bytes).map_err(|e| {
            mismatch(
                index,
                format!("the record's lookup columns cannot be read from it: {e}"),
            )
        })?;
        let fields = &record.fields;
        let approval_id = text(row, 6, "approval_id", index)?;
        compare(
            index,
            "approval_id",
            approval_id,
            fields.approval_id.as_deref(),
        )?;
        for (column, name, derived) in [
            (2, "id", Some(record.id.as_str())),
            (3, "kind", Some(record.kind.as_str())),
            (5, "deployment", fields.deployment.as_deref()),
            (7, "principal", fields.principal.as_deref()),
        ] {
            compare(index, name, text(row, column, name, index)?, derived)?;
        }
        let at_ms = match row.get_ref(4).map_err(storage)? {
            ValueRef::Integer(at_ms) => Some(at_ms),
            _ => None,
        };
        compare(index, "at_ms", at_ms, Some(record.at_ms))?;
        let reason_codes = match text(row, 8, "reason_codes", index)? {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                mismatch(
                    index,
                    format!("the `reason_codes` column is not a JSON list of strings ({e}): {COLUMN_EDITED}"),
                )
            })?,
        };
        compare(index, "reason_codes", &reason_codes, &fields.reason_codes)?;
        if let Some(approval) = approval_id {
            spans.check_covers(approval, index)?;
        }
    }
    Ok(())
}

/// Span lookups for records read in index order: the span that covered an approval's last
/// record usually covers its next one too (one span per approval per committed batch), so
/// the database is asked about once per batch, not once per record.
struct Spans<'s> {
    conn: &'s rusqlite::Connection,
    last: HashMap<String, (i64, i64)>,
}

impl<'s> Spans<'s> {
    fn new(conn: &'s rusqlite::Connection) -> Spans<'s> {
        Spans {
            conn,
            last: HashMap::new(),
        }
    }

    fn check_covers(&mut self, approval: &str, index: i64) -> Result<(), VerifyError> {
        if let Some(&(first, last)) = self.last.get(approval) {
            if (first..=last).contains(&index) {
                return Ok(());
            }
        }
        // One approval's spans do not overlap (checked first): the one starting nearest below
        // `index` is the only one that can cover it.
        let span: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT first_idx, last_idx FROM ledger_approval_spans
                 WHERE approval_id = ?1 AND first_idx <= ?2 ORDER BY first_idx DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(rusqlite::params![approval, index], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(storage)?;
        match span {
            Some((first, last)) if last >= index => {
                self.last.insert(approval.to_owned(), (first, last));
                Ok(())
            }
            _ => Err(mismatch(
                index,
                format!("no span of approval {approval:?} covers this record: `audit export --approval` and `gavel explain` would miss it ({SPANS_EDITED})"),
            )),
        }
    }
}
