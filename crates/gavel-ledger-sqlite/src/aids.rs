//! Verification of the query aids: the columns copied next to each record's bytes (`id`,
//! `kind`, `at_ms`, `deployment`, `approval_id`, `principal`, `reason_codes`) and the approval
//! spans. The bytes are the authority and the Merkle tree proves them; the aids decide which
//! records a filtered query returns, so an edited aid could hide a record from "every
//! decision under approval X" without touching what any record says. `verify` checks them
//! once the tree has verified the bytes.

use std::collections::HashMap;

use gavel_ledger::{IndexFields, Problem, RecordAids, VerifyError, VerifyFailure};
use rusqlite::OptionalExtension;

use crate::SqliteLedgerSink;

/// The aids of one stored row, as read back.
struct StoredAids {
    index: i64,
    bytes: Vec<u8>,
    id: String,
    kind: String,
    at_ms: i64,
    fields: IndexFields,
}

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

/// Column `name` holds `stored`; the record says `derived`.
fn compare<T: PartialEq + std::fmt::Debug>(
    index: i64,
    name: &str,
    stored: &T,
    derived: &T,
) -> Result<(), VerifyError> {
    if stored == derived {
        return Ok(());
    }
    Err(mismatch(
        index,
        format!("the `{name}` column holds {stored:?} but the record says {derived:?}"),
    ))
}

impl SqliteLedgerSink {
    /// Checks every record's query columns against its bytes, and that each record under an
    /// approval lies within one of that approval's spans. Names the first record whose aids
    /// are wrong. Returns how many records were checked.
    pub fn verify_query_aids(&self) -> Result<u64, VerifyError> {
        let mut rows = self
            .conn()
            .prepare(
                "SELECT idx, bytes, id, kind, at_ms, deployment, approval_id, principal, reason_codes
                 FROM ledger_records ORDER BY idx",
            )
            .map_err(storage)?;
        let mut rows = rows.query([]).map_err(storage)?;
        let mut spans = Spans::new(self);
        let mut checked = 0u64;
        while let Some(row) = rows.next().map_err(storage)? {
            let index: i64 = row.get(0).map_err(storage)?;
            let codes: Option<String> = row.get(8).map_err(storage)?;
            let reason_codes = match codes.as_deref() {
                None => Vec::new(),
                Some(json) => serde_json::from_str(json).map_err(|e| {
                    mismatch(
                        index,
                        format!("the `reason_codes` column is not a JSON list of strings ({e})"),
                    )
                })?,
            };
            let stored = StoredAids {
                index,
                bytes: row.get(1).map_err(storage)?,
                id: row.get(2).map_err(storage)?,
                kind: row.get(3).map_err(storage)?,
                at_ms: row.get(4).map_err(storage)?,
                fields: IndexFields {
                    deployment: row.get(5).map_err(storage)?,
                    approval_id: row.get(6).map_err(storage)?,
                    principal: row.get(7).map_err(storage)?,
                    reason_codes,
                },
            };
            check_row(&stored)?;
            if let Some(approval) = &stored.fields.approval_id {
                spans.check_covers(approval, index)?;
            }
            checked += 1;
        }
        Ok(checked)
    }
}

fn check_row(row: &StoredAids) -> Result<(), VerifyError> {
    let index = row.index;
    // The tree has verified these bytes; a record that does not even parse is the format
    // check's to report (it runs before, by default).
    let record = RecordAids::from_bytes(&row.bytes)
        .map_err(|e| mismatch(index, format!("the record's columns cannot be read: {e}")))?;
    compare(index, "id", &row.id.as_str(), &record.id.as_str())?;
    compare(index, "kind", &row.kind.as_str(), &record.kind.as_str())?;
    compare(index, "at_ms", &row.at_ms, &record.at_ms)?;
    let derived = record.fields;
    compare(
        index,
        "deployment",
        &row.fields.deployment,
        &derived.deployment,
    )?;
    compare(
        index,
        "approval_id",
        &row.fields.approval_id,
        &derived.approval_id,
    )?;
    compare(
        index,
        "principal",
        &row.fields.principal,
        &derived.principal,
    )?;
    compare(
        index,
        "reason_codes",
        &row.fields.reason_codes,
        &derived.reason_codes,
    )
}

/// Span lookups for records read in index order: the span that covered an approval's last
/// record usually covers its next one too (one span per approval per committed batch), so
/// the database is asked about once per batch, not once per record.
struct Spans<'s> {
    sink: &'s SqliteLedgerSink,
    last: HashMap<String, (i64, i64)>,
}

impl<'s> Spans<'s> {
    fn new(sink: &'s SqliteLedgerSink) -> Spans<'s> {
        Spans {
            sink,
            last: HashMap::new(),
        }
    }

    fn check_covers(&mut self, approval: &str, index: i64) -> Result<(), VerifyError> {
        if let Some(&(first, last)) = self.last.get(approval) {
            if (first..=last).contains(&index) {
                return Ok(());
            }
        }
        // Spans of one approval do not overlap: the one starting nearest below `index` is the
        // only one that can cover it.
        let span: Option<(i64, i64)> = self
            .sink
            .conn()
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
                format!("no approval span of {approval:?} covers this record"),
            )),
        }
    }
}
