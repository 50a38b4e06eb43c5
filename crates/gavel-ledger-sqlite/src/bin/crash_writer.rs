//! Load generator for the crash test: `gavel-ledger-crash-writer DB KEYFILE TAG`
//! appends decisions from several threads and prints `ACK <id>` for each one
//! only after the appender reports it durable. The test SIGKILLs it at random
//! moments; it exits by itself after a while in case nobody does. Its WAL is kept as
//! `gavel serve` keeps it: preallocated, and checkpointed by a thread of its own.

use gavel_ledger::{Appender, AppenderConfig, Record, RecordKind};
use gavel_ledger_sqlite::{load_signing_key, SqliteLedgerSink, WalCheckpointer};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 8;
/// Appends each thread keeps in flight, so batches form as in a busy server.
const DEPTH: usize = 32;
const LIFETIME: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, key, tag] = args.as_slice() else {
        eprintln!("usage: gavel-ledger-crash-writer DB KEYFILE TAG");
        return ExitCode::from(2);
    };
    match run(db, key, tag) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash writer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(db: &str, key: &str, tag: &str) -> Result<(), Box<dyn std::error::Error>> {
    let sink = SqliteLedgerSink::open(db)?;
    sink.hand_checkpoints_to_background()?;
    let mut checkpointer = WalCheckpointer::open(db)?;
    checkpointer.preallocate()?;
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Err(e) = checkpointer.run() {
            eprintln!("crash writer: checkpoint: {e}");
        }
    });
    let signer = load_signing_key(key)?;
    let config = AppenderConfig {
        checkpoint_every: 256,
        checkpoint_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let app = Arc::new(Appender::start(sink, signer, config)?);
    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let app = Arc::clone(&app);
            let tag = tag.to_owned();
            std::thread::spawn(move || -> Result<(), String> {
                let mut n = 0u64;
                while start.elapsed() < LIFETIME {
                    let mut pending = Vec::with_capacity(DEPTH);
                    for _ in 0..DEPTH {
                        let id = format!("{tag}-{t}-{n}");
                        n += 1;
                        let body = json!({"deployment": "crash", "principal": format!("p{t}"), "verdict": "allow", "reason_codes": ["load"]});
                        let record = Record::new(RecordKind::Decision, 0, id.clone(), &body).map_err(|e| e.to_string())?;
                        pending.push((id, app.submit(&record).map_err(|e| e.to_string())?));
                    }
                    let mut out = std::io::stdout().lock();
                    for (id, p) in pending {
                        p.wait().map_err(|e| e.to_string())?;
                        writeln!(out, "ACK {id}").map_err(|e| e.to_string())?;
                    }
                    out.flush().map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}
