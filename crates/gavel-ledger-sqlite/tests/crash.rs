//! Crash test: a writer process appends under load, printing each id once it
//! is acknowledged durable; it is SIGKILLed at random moments several times.
//! After each kill the ledger verifies as it is, and after each restart the
//! appender signs the crash tail, a strict verify passes, and every
//! acknowledged id is present. Bounded: a handful of runs of about a second.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TempDir;
use gavel_ledger::{Appender, AppenderConfig, RecordKind, VerifyOptions};
use gavel_ledger_sqlite::{create_signing_key, load_signing_key, ExportFilter, SqliteLedgerSink};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RUNS: usize = 5;

/// xorshift64: enough randomness for kill timing, reproducible from the seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_loses_no_acknowledged_record() {
    let dir = TempDir::new("crash");
    let db = dir.path("gavel.db");
    let key = dir.path("ledger.key");
    let signer = create_signing_key(&key, "gavel.test/crash").unwrap();
    let verifier = signer.verifier();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut acked: HashSet<String> = HashSet::new();
    for run in 0..RUNS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gavel-ledger-crash-writer"))
            .arg(&db)
            .arg(&key)
            .arg(format!("r{run}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                // Only complete lines count: a kill can cut the last one.
                while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    if let Some(line) = buf.strip_suffix(b"\n") {
                        if let Some(id) = std::str::from_utf8(line)
                            .ok()
                            .and_then(|l| l.strip_prefix("ACK "))
                        {
                            lines.lock().unwrap().push(id.to_owned());
                        }
                    }
                    buf.clear();
                }
            })
        };
        // Let it get going, then kill at a random moment within the next
        // 400 ms (mid-batch, mid-checkpoint, mid-WAL-checkpoint alike).
        let deadline = Instant::now() + Duration::from_secs(20);
        while lines.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(next(&mut seed) % 400));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let run_acks = std::mem::take(&mut *lines.lock().unwrap());
        assert!(
            !run_acks.is_empty(),
            "run {run}: writer acknowledged nothing"
        );

        // As left by the kill: verifies, possibly with an unsigned tail.
        let sink = SqliteLedgerSink::open(&db).unwrap();
        let as_killed = sink.verify(&verifier, VerifyOptions::default()).unwrap();

        // Restart: the appender signs the crash tail; then everything is
        // covered and verifies strictly.
        let app = Appender::start(
            SqliteLedgerSink::open(&db).unwrap(),
            load_signing_key(&key).unwrap(),
            AppenderConfig::default(),
        )
        .unwrap();
        app.close().unwrap();
        let report = sink
            .verify(
                &verifier,
                VerifyOptions {
                    check_format: true,
                    check_query_aids: true,
                    require_signed_tail: true,
                },
            )
            .unwrap();
        assert_eq!(report.records, as_killed.records);

        let stored: HashSet<String> = sink
            .query(&ExportFilter {
                kind: Some(RecordKind::Decision),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.record.id)
            .collect();
        acked.extend(run_acks.iter().cloned());
        let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "run {run}: {} acknowledged ids missing, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        eprintln!(
            "run {run}: {} acked this run, {} stored, unsigned tail after kill {}, checkpoints {}",
            run_acks.len(),
            report.records,
            as_killed.unsigned_tail,
            report.checkpoints
        );
    }
}
