//! `gavel audit`: verify, show, export, prove, check-proof, pubkey.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use gavel_contract::time::Timestamp;
use gavel_ledger::{
    check_proof_json, NoteVerifier, Problem, RecordKind, VerifyError, VerifyOptions, VerifyReport,
};
use gavel_ledger_sqlite::{ExportFilter, SqliteLedgerSink};
use gavel_store::Role;

use crate::cli::{AuditCommand, ExportArgs};
use crate::context::out;
use crate::context::Context;
use crate::failure::{Failure, Outcome};
use crate::ledger;

pub const READERS: [Role; 4] = [Role::Auditor, Role::Approver, Role::Operator, Role::Admin];

pub fn run(ctx: &Context, command: AuditCommand) -> Outcome {
    match command {
        AuditCommand::CheckProof { file, pubkey } => return check_proof(&file, &pubkey),
        AuditCommand::Pubkey => {
            out!(
                "{}",
                gavel_ledger_sqlite::public_key(&ledger::load_key(&ctx.db_path)?)
            );
            return Ok(());
        }
        _ => {}
    }
    let store = ctx.store()?;
    if let AuditCommand::Forget { subject } = &command {
        return forget(ctx, &store, subject);
    }
    ctx.authenticate(&store, &READERS, "reading the ledger")?;
    let sink = ledger::open_reader(&ctx.db_path)?;
    let pinned = match &command {
        AuditCommand::Verify {
            pubkey: Some(key), ..
        } => Some(NoteVerifier::parse(key).map_err(|e| {
            Failure::invalid(format!(
                "--pubkey is not a ledger public key as `gavel audit pubkey` prints it: {e}"
            ))
        })?),
        _ => None,
    };
    let verifier = match pinned {
        Some(verifier) => verifier,
        None => ledger::load_key(&ctx.db_path)?.verifier(),
    };
    match command {
        AuditCommand::Verify { strict, .. } => {
            // A writer signs what it appends within N records or T ms, and signs what a
            // crashed one left when it starts, after checking it; with no writer running,
            // records past the newest checkpoint are proven by nothing.
            let mut writing = ledger::writer_running(&ctx.db_path)?;
            let mut verified = verify(&sink, &verifier, strict || !writing);
            if let Err(VerifyError::Failed(failure)) = &verified {
                // A writer that started after the probe appends before it signs: look again
                // before calling its records unproven.
                if failure.problem == Problem::Unsigned && !writing && !strict {
                    writing = ledger::writer_running(&ctx.db_path)?;
                    if writing {
                        verified = verify(&sink, &verifier, false);
                    }
                }
            }
            match verified {
                Ok(report) => {
                    out!(
                        "ledger OK: {} records, {} signed checkpoints{}, {} record(s) after the newest checkpoint",
                        report.records,
                        report.checkpoints,
                        report.latest.map(|c| format!(" (newest: #{} over {} records)", c.seq, c.size)).unwrap_or_default(),
                        report.unsigned_tail
                    );
                }
                Err(VerifyError::Failed(failure))
                    if failure.problem == Problem::Unsigned && !writing =>
                {
                    return Err(Failure::invalid(format!(
                        "the ledger does NOT verify: {failure}, and no gavel process is writing the ledger. A writer killed before its next checkpoint leaves such records: the next gavel command that writes the ledger (e.g. `gavel serve`) checks them and signs them. Otherwise they were added or rewritten without the signing key"
                    )));
                }
                Err(VerifyError::Failed(failure)) => {
                    return Err(Failure::invalid(format!(
                        "the ledger does NOT verify: {failure}"
                    )));
                }
                Err(e) => return Err(Failure::storage(e)),
            }
        }
        AuditCommand::Show { id } => {
            let entry = sink
                .record_by_id(&id)
                .map_err(Failure::storage)?
                .ok_or_else(|| Failure::invalid(format!("no ledger record with id `{id}`")))?;
            let shown = json!({ "index": entry.index, "record": entry.record });
            crate::context::print_json(&shown)?;
        }
        AuditCommand::Export(args) => {
            let filter = export_filter(&args)?;
            let mut stdout = std::io::stdout().lock();
            let count = sink
                .export_jsonl(&filter, &mut stdout)
                .map_err(|e| Failure::storage(format!("export failed: {e}")))?;
            crate::context::note(&format!("exported {count} record(s)"));
        }
        AuditCommand::Prove { id } => {
            let bundle = sink
                .prove(&id, &gavel_ledger::Prover::new(verifier.clone()))
                .map_err(|e| Failure::invalid(format!("cannot prove `{id}`: {e}")))?;
            crate::context::print_json(&bundle)?;
        }
        AuditCommand::Payload { decision_id } => {
            // Reading a captured prompt is itself an audited act, and only auditors and admins may.
            let reader = ctx.authenticate(
                &store,
                &[Role::Auditor, Role::Admin],
                "reading a captured payload",
            )?;
            ledger::record_change(
                &ctx.db_path,
                RecordKind::Admin,
                crate::context::now(),
                &reader.principal,
                "payload_read",
                json!({ "decision_id": decision_id }),
            )?;
            match sink.load_payload(&decision_id, "input").map_err(Failure::storage)? {
                Some(bytes) => out!("{}", String::from_utf8_lossy(&bytes)),
                None => return Err(Failure::invalid(format!("no readable payload for `{decision_id}` (capture off, or its subject was forgotten)"))),
            }
        }
        AuditCommand::Forget { .. } | AuditCommand::CheckProof { .. } | AuditCommand::Pubkey => {}
    }
    Ok(())
}

/// Records the erasure (by the subject's digest, not the identifier), then destroys the key.
fn forget(ctx: &Context, store: &dyn gavel_store::Store, subject: &str) -> Outcome {
    use sha2::{Digest, Sha256};
    let who = ctx.authenticate(store, &[Role::Admin], "forgetting a subject")?;
    let at = crate::context::now();
    let digest = hex::encode(Sha256::digest(subject.as_bytes()));
    ledger::record_change(
        &ctx.db_path,
        RecordKind::Admin,
        at,
        &who.principal,
        "subject_forgotten",
        json!({ "subject_sha256": digest }),
    )?;
    let existed = ledger::open_sink(&ctx.db_path)?
        .forget(subject)
        .map_err(Failure::storage)?;
    if existed {
        out!("forgot subject (sha256 {}): its payload key is destroyed; captured payloads can no longer be read", &digest[..12]);
    } else {
        out!("no payload key for that subject; the request is recorded anyway");
    }
    Ok(())
}

/// Verifies the whole ledger, showing progress on a terminal.
fn verify(
    sink: &SqliteLedgerSink,
    verifier: &NoteVerifier,
    require_signed_tail: bool,
) -> Result<VerifyReport, VerifyError> {
    let options = VerifyOptions {
        require_signed_tail,
        ..VerifyOptions::default()
    };
    let progress = VerifyProgress::on_terminal();
    let verified =
        sink.verify_reporting(verifier, options, &|done, total| progress.show(done, total));
    progress.finish();
    verified
}

fn check_proof(file: &Path, pubkey: &str) -> Outcome {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::invalid(format!("cannot read the proof `{}` ({e})", file.display()))
    })?;
    let checked = check_proof_json(&text, pubkey)
        .map_err(|e| Failure::invalid(format!("the proof does NOT verify: {}", e.0)))?;
    out!(
        "proof OK: record `{}` ({}) is leaf {} of the ledger `{}` as signed in checkpoint #{} over {} records",
        checked.record.id,
        checked.record.kind.as_str(),
        checked.index,
        checked.checkpoint.origin,
        checked.checkpoint.seq,
        checked.checkpoint.size
    );
    Ok(())
}

pub fn export_filter(args: &ExportArgs) -> Result<ExportFilter, Failure> {
    let time = |flag: &str, value: &Option<String>| -> Result<Option<i64>, Failure> {
        value
            .as_deref()
            .map(|v| {
                Timestamp::parse_rfc3339(v)
                    .map(Timestamp::millis)
                    .ok_or_else(|| {
                        Failure::invalid(format!(
                            "--{flag} `{v}` is not a date (YYYY-MM-DD) or RFC 3339 time"
                        ))
                    })
            })
            .transpose()
    };
    let kind = args
        .kind
        .as_deref()
        .map(|k| {
            RecordKind::parse(k).ok_or_else(|| {
                let kinds: Vec<&str> = RecordKind::ALL.iter().map(|k| k.as_str()).collect();
                Failure::invalid(format!(
                    "unknown record kind `{k}`; expected one of {}",
                    kinds.join(", ")
                ))
            })
        })
        .transpose()?;
    Ok(ExportFilter {
        kind,
        deployment: args.deployment.clone(),
        approval_id: args.approval.clone(),
        principal: args.principal.clone(),
        reason_code: args.reason.clone(),
        from_ms: time("from", &args.from)?,
        to_ms: time("to", &args.to)?,
        limit: args.limit,
        newest_first: false,
        after_index: args.after,
        before_index: args.before,
    })
}

/// How far `audit verify` has come, on stderr when it is a terminal: one line, rewritten at most
/// four times a second (a ledger of ten million records takes about a minute). Nothing when
/// stderr is not a terminal, so that pipes and logs get the result alone.
struct VerifyProgress {
    /// None shows nothing.
    shown: Mutex<Option<ProgressLine>>,
}

/// Where the progress line goes, and when it was last written.
struct ProgressLine {
    out: Box<dyn Write + Send>,
    last: Option<Instant>,
}

impl VerifyProgress {
    const EVERY: Duration = Duration::from_millis(250);

    fn on_terminal() -> VerifyProgress {
        let stderr = std::io::stderr();
        let out = stderr
            .is_terminal()
            .then(|| Box::new(stderr) as Box<dyn Write + Send>);
        VerifyProgress::to(out)
    }

    fn to(out: Option<Box<dyn Write + Send>>) -> VerifyProgress {
        VerifyProgress {
            shown: Mutex::new(out.map(|out| ProgressLine { out, last: None })),
        }
    }

    /// `done` of `total` records verified (read, hashed and checked in index order).
    fn show(&self, done: u64, total: u64) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ProgressLine { out, last }) = shown.as_mut() else {
            return;
        };
        let recent = last.is_some_and(|at| at.elapsed() < VerifyProgress::EVERY);
        if recent && done < total {
            return;
        }
        let line = format!("verifying the ledger: {done} of {total} records");
        // Carriage return and erase-line: the line is rewritten in place.
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
        *last = Some(Instant::now());
    }

    /// Ends the line, if one was shown.
    fn finish(&self) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ProgressLine { out, last: Some(_) }) = shown.as_mut() {
            let _ = writeln!(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn progress_is_one_rewritten_line_at_most_four_times_a_second_and_always_the_last_step() {
        let captured = Captured::default();
        let progress = VerifyProgress::to(Some(Box::new(captured.clone())));
        for done in [4_096, 8_192, 12_288] {
            progress.show(done, 12_288);
        }
        progress.finish();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "\r\x1b[2Kverifying the ledger: 4096 of 12288 records\
             \r\x1b[2Kverifying the ledger: 12288 of 12288 records\n"
        );
    }

    #[test]
    fn nothing_is_shown_off_a_terminal() {
        let progress = VerifyProgress::to(None);
        progress.show(1, 2);
        progress.finish();
        assert!(progress.shown.lock().unwrap().is_none());
    }
}
