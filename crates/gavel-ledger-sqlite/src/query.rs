//! Read-side queries for the CLI: lookup by id, filtered listing and JSON
//! Lines export, verification and proofs.

use crate::{Error, SqliteLedgerSink};
use gavel_ledger::{
    verify_sink_reporting, InclusionBundle, LedgerSink, NoteVerifier, Problem, Prover, Record,
    RecordAids, RecordKind, VerifyError, VerifyOptions, VerifyReport,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, OptionalExtension};
use std::io::Write;

/// Filters over stored records; every set field must match. The columns come
/// from conventional body members (see `gavel_ledger::IndexFields`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    pub kind: Option<RecordKind>,
    pub deployment: Option<String>,
    pub approval_id: Option<String>,
    pub principal: Option<String>,
    /// Matches records whose `reason_codes` contain this code.
    pub reason_code: Option<String>,
    /// Inclusive lower bound on `at_ms`.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound on `at_ms`.
    pub to_ms: Option<i64>,
    pub limit: Option<u64>,
    /// Newest (highest index) first, e.g. "latest decisions under approval X".
    pub newest_first: bool,
    /// Exclusive lower bound on the leaf index: where the next page of an oldest-first listing
    /// starts (after the last index of the page before).
    pub after_index: Option<u64>,
    /// Exclusive upper bound on the leaf index: the next page of a newest-first listing.
    pub before_index: Option<u64>,
}

/// A stored record with its leaf index.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub index: u64,
    pub record: Record,
}

/// Spans of one approval closer than this many records are read as one range: the records in
/// between cost less to skip than another query.
const SPAN_GAP: i64 = 64;

/// Whether `span` lies within `SPAN_GAP` of `range`, on either side (spans of one approval
/// never overlap: each comes from its own batch).
fn within_gap(range: (i64, i64), span: (i64, i64)) -> bool {
    span.0 - range.1 <= SPAN_GAP && range.0 - span.1 <= SPAN_GAP
}

impl ExportFilter {
    /// The query for this filter, restricted to an index range (inclusive) and with its own
    /// limit, or the filter's.
    fn to_sql(&self, range: Option<(i64, i64)>, limit: Option<u64>) -> (String, Vec<SqlValue>) {
        let mut sql = String::from("SELECT idx, bytes FROM ledger_records WHERE 1 = 1");
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some((first, last)) = range {
            args.push(SqlValue::Integer(first));
            args.push(SqlValue::Integer(last));
            sql.push_str(" AND idx BETWEEN ?1 AND ?2");
        }
        let mut eq = |col: &str, v: &Option<String>, args: &mut Vec<SqlValue>| {
            if let Some(v) = v {
                args.push(SqlValue::Text(v.clone()));
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        };
        eq("kind", &self.kind.map(|k| k.as_str().to_owned()), &mut args);
        eq("deployment", &self.deployment, &mut args);
        eq("approval_id", &self.approval_id, &mut args);
        eq("principal", &self.principal, &mut args);
        if let Some(code) = &self.reason_code {
            args.push(SqlValue::Text(code.clone()));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(reason_codes) WHERE value = ?{})",
                args.len()
            ));
        }
        if let Some(from) = self.from_ms {
            args.push(SqlValue::Integer(from));
            sql.push_str(&format!(" AND at_ms >= ?{}", args.len()));
        }
        if let Some(to) = self.to_ms {
            args.push(SqlValue::Integer(to));
            sql.push_str(&format!(" AND at_ms < ?{}", args.len()));
        }
        let index = |i: u64| SqlValue::Integer(i64::try_from(i).unwrap_or(i64::MAX));
        if let Some(after) = self.after_index {
            args.push(index(after));
            sql.push_str(&format!(" AND idx > ?{}", args.len()));
        }
        if let Some(before) = self.before_index {
            args.push(index(before));
            sql.push_str(&format!(" AND idx < ?{}", args.len()));
        }
        sql.push_str(if self.newest_first {
            " ORDER BY idx DESC"
        } else {
            " ORDER BY idx"
        });
        if let Some(limit) = limit {
            args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ?{}", args.len()));
        }
        (sql, args)
    }
}

fn index_of(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Invalid(format!("negative record index {v}")))
}

impl SqliteLedgerSink {
    /// The record with this id (the first appended, should ids repeat).
    pub fn record_by_id(&self, id: &str) -> Result<Option<LedgerEntry>, Error> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT idx, bytes FROM ledger_records WHERE id = ?1 ORDER BY idx LIMIT 1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(idx, bytes)| {
            Ok(LedgerEntry {
                index: index_of(idx)?,
                record: Record::from_canonical(&bytes).map_err(Error::Record)?,
            })
        })
        .transpose()
    }

    /// The newest signed checkpoint's sequence number and tree size, without reading the
    /// others (a ledger signs one every second or thousand records).
    pub fn newest_checkpoint(&self) -> Result<Option<(u64, u64)>, Error> {
        let row: Option<(i64, i64)> = self
            .conn()
            .query_row(
                "SELECT seq, size FROM ledger_checkpoints ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(seq, size)| Ok((index_of(seq)?, index_of(size)?)))
            .transpose()
    }

    /// Records matching `filter`, parsed.
    pub fn query(&self, filter: &ExportFilter) -> Result<Vec<LedgerEntry>, Error> {
        let mut out = Vec::new();
        self.for_each_matching(filter, |idx, bytes| {
            out.push(LedgerEntry {
                index: idx,
                record: Record::from_canonical(bytes).map_err(Error::Record)?,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes matching records as JSON Lines: each line is exactly a
    /// record's canonical bytes, so SHA-256(0x00 || line) is its leaf hash.
    /// Returns the number of lines written.
    pub fn export_jsonl(&self, filter: &ExportFilter, out: &mut dyn Write) -> Result<u64, Error> {
        let mut n = 0;
        self.for_each_matching(filter, |_, bytes| {
            out.write_all(bytes)?;
            out.write_all(b"\n")?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Writes every signed checkpoint as JSON Lines,
    /// `{"seq":N,"size":N,"note":"<signed note>"}`, for independent auditors.
    pub fn export_checkpoints_jsonl(&self, out: &mut dyn Write) -> Result<u64, Error> {
        let checkpoints = self
            .checkpoints()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        for cp in &checkpoints {
            let line = serde_json::json!({"seq": cp.seq, "size": cp.size, "note": cp.note});
            writeln!(out, "{line}")?;
        }
        Ok(checkpoints.len() as u64)
    }

    fn for_each_matching(
        &self,
        filter: &ExportFilter,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Some(approval) = &filter.approval_id else {
            self.for_each_row(filter.to_sql(None, filter.limit), &mut f)?;
            return Ok(());
        };
        // Through the approval's spans, read in the order asked and merged on the way, range
        // by range until the limit: "the latest ten" reads a few spans, not all of them.
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let mut spans = self.conn().prepare_cached(&format!(
            "SELECT first_idx, last_idx FROM ledger_approval_spans WHERE approval_id = ?1 ORDER BY first_idx {order}"
        ))?;
        let mut spans = spans.query(params![approval])?;
        let mut left = filter.limit;
        let mut pending: Option<(i64, i64)> = None;
        // The last index read so far, in the order asked. Spans of one approval never overlap
        // as this crate writes them; each range is still cut to what has not been read, so
        // that an overlapping span inserted by hand cannot make a record come twice and push
        // another past the limit (`verify` reports such spans).
        let mut read_to: Option<i64> = None;
        while left != Some(0) {
            let next: Option<(i64, i64)> = match spans.next()? {
                Some(row) => Some((row.get(0)?, row.get(1)?)),
                None => None,
            };
            match (pending, next) {
                (Some(range), Some(span)) if within_gap(range, span) => {
                    pending = Some((range.0.min(span.0), range.1.max(span.1)));
                }
                (range, span) => {
                    let unread = range.map(|(first, last)| match (read_to, filter.newest_first) {
                        (Some(edge), false) => (first.max(edge.saturating_add(1)), last),
                        (Some(edge), true) => (first, last.min(edge.saturating_sub(1))),
                        (None, _) => (first, last),
                    });
                    if let Some((first, last)) = unread.filter(|(first, last)| first <= last) {
                        let found =
                            self.for_each_row(filter.to_sql(Some((first, last)), left), &mut f)?;
                        left = left.map(|n| n.saturating_sub(found));
                        read_to = Some(if filter.newest_first { first } else { last });
                    }
                    if span.is_none() {
                        break;
                    }
                    pending = span;
                }
            }
        }
        Ok(())
    }

    /// Runs one query of `for_each_matching`; returns how many rows it passed to `f`.
    fn for_each_row(
        &self,
        (sql, args): (String, Vec<SqlValue>),
        f: &mut impl FnMut(u64, &[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut stmt = self.conn().prepare_cached(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut found = 0;
        while let Some(row) = rows.next()? {
            let idx: i64 = row.get(0)?;
            let bytes: Vec<u8> = row.get(1)?;
            f(index_of(idx)?, &bytes)?;
            found += 1;
        }
        Ok(found)
    }

    /// `gavel audit verify`: re-derives everything stored and (with `check_query_aids`)
    /// checks the query aids against the records in the same pass; a wrong aid is named only
    /// once everything else has verified, after the approval spans' own shape.
    pub fn verify(
        &self,
        verifier: &NoteVerifier,
        opts: VerifyOptions,
    ) -> Result<VerifyReport, VerifyError> {
        self.verify_reporting(verifier, opts, &|_, _| {})
    }

    /// [`SqliteLedgerSink::verify`], calling `progress(records verified, records stored)` as
    /// it goes, for a caller that shows long work.
    pub fn verify_reporting(
        &self,
        verifier: &NoteVerifier,
        opts: VerifyOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport, VerifyError> {
        self.verify_rows_are_contiguous()?;
        let verified = verify_sink_reporting(self, verifier, opts, progress);
        let only_aids_wrong = match &verified {
            Ok(_) => true,
            Err(VerifyError::Failed(failure)) => matches!(failure.problem, Problem::QueryAid(_)),
            Err(VerifyError::Sink(_)) => false,
        };
        // Overlapping spans make "the span nearest below covers it" the wrong question, so
        // they are named before any record the spans seemed not to cover.
        if opts.check_query_aids && only_aids_wrong {
            self.verify_spans_are_disjoint()?;
        }
        // The schema last: a record's wrong aid, named by its index, says more.
        let report = verified?;
        if opts.check_query_aids {
            self.verify_leaf_blocks_within_records()?;
            self.verify_lookup_indexes()?;
        }
        Ok(report)
    }

    /// `gavel audit prove ID`: inclusion proof of the record against the
    /// newest signed checkpoint.
    ///
    /// Its dozen reads share one read transaction, so SQLite takes its locks once rather than
    /// per statement (about 2.5 us each, which was a third of a proof). Where the stored nodes
    /// do not give the signed root, the proof reads every leaf hash up to the checkpoint, long
    /// ranges through connections of their own: what is below a signed size never changes.
    pub fn prove(&self, id: &str, prover: &Prover) -> Result<InclusionBundle, Error> {
        // Dropped unfinished, it rolls back: nothing was written.
        let _one_read = self.conn().unchecked_transaction()?;
        let index: Option<i64> = self
            .conn()
            .prepare_cached("SELECT idx FROM ledger_records WHERE id = ?1 ORDER BY idx LIMIT 1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let index = index.ok_or_else(|| Error::Invalid(format!("no record with id {id:?}")))?;
        let bundle = prover.prove(self, index_of(index)?).map_err(Error::Proof)?;
        // The id column is a query aid: the record it led to must be the one asked for.
        let proven = RecordAids::from_bytes(bundle.record.as_bytes()).map_err(Error::Record)?;
        if proven.id != id {
            return Err(Error::Invalid(format!(
                "the ledger's id column leads {id:?} to record {}, whose id is {:?}: the query columns were edited (`gavel audit verify` names the record)",
                bundle.index, proven.id
            )));
        }
        Ok(bundle)
    }
}
