//! Ledger benchmark, one command, prints a table:
//!
//!   cargo run --release -p gavel-ledger-sqlite --example ledger_bench [-- --dir DIR --records N]
//!
//! Durable appends/s through the group-commit appender into SQLite at several concurrency
//! levels, latency of a lone append next to the raw fsync cost, verification speed, and proof
//! timings. The ledger runs as `gavel serve` runs it: WAL, the fsync on the appender's sync
//! thread, WAL checkpoints every 200 ms on a thread of their own.
//!
//! `--run 4x1024` measures only that many threads x appends in flight, with gateway-sized
//! records (a quick check after a change); `--run verify` only verification and proofs over
//! what the folder holds; `--run shared` only lone appends into that ledger with another
//! connection committing to the file between them, as the store's does in `gavel serve`.

// A benchmark reports failures by stopping loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The allocator `gavel serve` runs with: records are built on the callers' threads and freed on
// the writer's, which glibc's malloc makes costly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use gavel_engine::{Decision, Estimate, FindingRecord, Obligation, Verdict};
use gavel_ledger::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash, MerkleTree};
use gavel_ledger::{
    verify_records, AppendRecord, Appender, AppenderConfig, Encoded, Flusher, LedgerSink,
    NoteSigner, Pending, Prover, Record, RecordKind, SinkError, StoredCheckpoint, StoredRecord,
    TreeNode, VerifyOptions,
};
use gavel_ledger_sqlite::{SqliteLedgerSink, WalCheckpointer};
use serde_json::json;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts sink commits and the time spent in them, to report the batch sizes group commit
/// achieved and how busy the one writer thread was.
struct Counting {
    inner: SqliteLedgerSink,
    commits: Arc<AtomicU64>,
    commit_nanos: Arc<AtomicU64>,
}

impl LedgerSink for Counting {
    fn append(
        &mut self,
        records: &[AppendRecord],
        nodes: &[TreeNode],
        checkpoint: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let appended = self.inner.append(records, nodes, checkpoint);
        self.commit_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        appended
    }
    fn record_count(&self) -> Result<u64, SinkError> {
        self.inner.record_count()
    }
    fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError> {
        self.inner.leaf_hashes(from, to)
    }
    fn tree_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, SinkError> {
        self.inner.tree_nodes(level, from, to)
    }
    fn add_missing_nodes(&mut self, nodes: &[TreeNode]) -> Result<(), SinkError> {
        self.inner.add_missing_nodes(nodes)
    }
    fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError> {
        self.inner.read_records(from, to)
    }
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError> {
        self.inner.checkpoints()
    }
    fn flusher(&mut self) -> Result<Option<Box<dyn Flusher>>, SinkError> {
        self.inner.flusher()
    }
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("gavel.bench/ledger", &[9u8; 32]).unwrap()
}

/// A record's body as its producer holds it before recording it.
enum Body {
    /// The engine's typed decision: written straight into canonical bytes, as the gateway does.
    Decision(Box<Decision>),
    Json {
        id: String,
        value: serde_json::Value,
    },
}

impl Body {
    /// What the producer does on its own thread to record the body (before `submit` hashes it).
    fn encode(&self, at_ms: i64) -> Encoded {
        match self {
            Body::Decision(d) => {
                Encoded::new(RecordKind::Decision, at_ms, &d.decision_id, &d.record())
            }
            Body::Json { id, value } => Encoded::new(RecordKind::Decision, at_ms, id, value),
        }
        .unwrap()
    }

    fn size(&self) -> usize {
        self.encode(1_764_000_000_000).bytes.len()
    }
}

/// A decision as the gateway records it for the bench's 1 KiB question (an ALLOW with a
/// max_tokens obligation and a low-confidence injection finding): about 930 bytes canonical,
/// the size of the gateway bench's records.
fn decision(i: u64) -> Body {
    Body::Decision(Box::new(Decision {
        decision_id: format!("dec_01M81W{i:020}"),
        verdict: Verdict::Allow,
        reasons: vec![],
        obligations: vec![Obligation::CapMaxTokens { max_tokens: 400 }],
        findings: vec![FindingRecord {
            kind: "injection.persona_jailbreak".into(),
            rule_id: "injection.persona".into(),
            text_index: 1,
            start: 377,
            end: 412,
            confidence: 0.2,
        }],
        deployment: "kb-search-v1".into(),
        use_case: Some("knowledge-search".into()),
        tier: Some("minimal".into()),
        binding: Some("913be1a49b8ee7425d211ccd733c2da354dfd0ae3acca37cc7c09069b48fdf04".into()),
        approval_id: Some(format!("apr_01M81WNC1FT2B7KJCX0MRBYA{:02}", i % 17)),
        contract_version: "0f9a678fb96293ecedc2423dc8407a561df5eed6761b89472a46d159d24630a0".into(),
        principal: format!("svc-support-{}", i % 5),
        run_id: None,
        at: "2026-11-22T15:05:45.163Z".into(),
        retry_after: None,
        retry_after_seconds: None,
        would_be: None,
        first_decision_id: None,
        estimate: Some(Estimate {
            prompt_tokens: 219,
            max_tokens: 400,
            usd_micros: 290,
            tool_calls: 0,
        }),
        input_sha256: "f4c9c9d7ba478337bd00fc61b15db8466fae232b9aebde85d7248b209d2375ae".into(),
        started_cooldown: None,
    }))
}

/// A minimal decision (ids, verdict, one hash), ~250 bytes, to show how
/// throughput depends on record size.
fn small_decision(i: u64) -> Body {
    Body::Json {
        id: format!("dec-{i:012}"),
        value: json!({
            "deployment": "support-bot",
            "approval_id": format!("ap-{}", i % 17),
            "principal": format!("svc-{}", i % 5),
            "verdict": "allow",
            "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        }),
    }
}

/// Threads, depth per thread, records, record maker.
type Run = (u64, u64, u64, fn(u64) -> Body);

/// The WAL as `gavel serve` keeps it: preallocated, and checkpointed by a thread of its own
/// every 200 ms, never inside a commit. Stops when dropped.
struct BackgroundCheckpoints {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundCheckpoints {
    fn start(db: &Path) -> BackgroundCheckpoints {
        let mut checkpointer = WalCheckpointer::open(db).unwrap();
        checkpointer.preallocate().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                checkpointer.run().unwrap();
            }
        });
        BackgroundCheckpoints {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BackgroundCheckpoints {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The ledger's connection as `gavel serve` opens it.
fn serve_like_sink(db: &Path) -> (SqliteLedgerSink, BackgroundCheckpoints) {
    let sink = SqliteLedgerSink::open(db).unwrap();
    sink.hand_checkpoints_to_background().unwrap();
    (sink, BackgroundCheckpoints::start(db))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What reads the ledger's tree, on the ledger itself: a starting writer and `audit prove`'s
/// proof (`Prover::prove`). Both read stored tree nodes, O(log n) rows; a ledger
/// written before the nodes existed gets them at its first writer start, which reads every
/// leaf hash as every start did before.
fn ledger_proof_table(db: &Path, sink: &SqliteLedgerSink) {
    let v = signer().verifier();
    let count = sink.record_count().unwrap();
    println!("| on the ledger ({count} records) | value |");
    println!("|------------------------------|-------|");
    for label in ["writer start, first", "writer start, again"] {
        let t = Instant::now();
        Appender::start(
            SqliteLedgerSink::open(db).unwrap(),
            signer(),
            AppenderConfig::default(),
        )
        .unwrap()
        .close()
        .unwrap();
        println!("| {label} | {:.2} ms |", t.elapsed().as_secs_f64() * 1e3);
    }
    let Some((_, signed)) = sink.newest_checkpoint().unwrap() else {
        return;
    };
    let iters = 2_000u64;
    // Proofs of other records, untimed, before the last row.
    let warm_up = 20_000u64;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let indexes: Vec<u64> = (0..iters + warm_up)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % signed
        })
        .collect();
    // A gateway keeps one prover: every proof until the next checkpoint is signed shares the
    // signature check. `gavel audit prove` is one proof in a process of its own: it pays for it.
    let all_ids: Vec<String> = indexes
        .iter()
        .map(|&i| {
            let stored = sink.read_records(i, i + 1).unwrap();
            Record::from_canonical(&stored[0].bytes).unwrap().id
        })
        .collect();
    let (ids, other_ids) = all_ids.split_at(iters as usize);
    // Each proof timed on its own: a few read pages the OS no longer caches move the mean by
    // tens of microseconds from run to run; the median is the typical proof.
    let timed = |prove: &dyn Fn(&str)| {
        let mut times: Vec<Duration> = ids
            .iter()
            .map(|id| {
                let t = Instant::now();
                prove(id);
                t.elapsed()
            })
            .collect();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        times.sort();
        format!(
            "{} median, {} p99, {} mean",
            us(pct(&times, 0.5)),
            us(pct(&times, 0.99)),
            us(mean)
        )
    };
    let prover = Prover::new(v.clone());
    println!(
        "| inclusion proof from the ledger by record id, checkpoint's signature checked once (the gateway's proof route; {iters} random records) | {} |",
        timed(&|id| {
            std::hint::black_box(sink.prove(id, &prover).unwrap());
        })
    );
    println!(
        "| the same, checking the signature each time (`gavel audit prove`'s one proof) | {} |",
        timed(&|id| {
            std::hint::black_box(sink.prove(id, &Prover::new(v.clone())).unwrap());
        })
    );
    // A gateway's prover after a while: the subtrees it keeps (every one of 256 leaves or more
    // at this size) come from the paths it has proven.
    for id in other_ids {
        std::hint::black_box(sink.prove(id, &prover).unwrap());
    }
    println!(
        "| the first row's prover again, after {warm_up} proofs of other random records (a gateway's after a while) | {} |",
        timed(&|id| {
            std::hint::black_box(sink.prove(id, &prover).unwrap());
        })
    );
    let without_nodes = WithoutNodes(SqliteLedgerSink::open_read_only(db).unwrap());
    let t = Instant::now();
    for &i in &indexes[..5] {
        std::hint::black_box(Prover::new(v.clone()).prove(&without_nodes, i).unwrap());
    }
    println!(
        "| the same from every leaf hash (a ledger without nodes, as before them; mean of 5) | {} |",
        us(t.elapsed() / 5)
    );
    println!();
}

/// The ledger as a sink that keeps no tree nodes, for the proof a ledger without them gets.
struct WithoutNodes(SqliteLedgerSink);

impl LedgerSink for WithoutNodes {
    fn append(
        &mut self,
        _: &[AppendRecord],
        _: &[TreeNode],
        _: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError> {
        Err("read-only".into())
    }
    fn record_count(&self) -> Result<u64, SinkError> {
        self.0.record_count()
    }
    fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, SinkError> {
        self.0.leaf_hashes(from, to)
    }
    fn read_records(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, SinkError> {
        self.0.read_records(from, to)
    }
    fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, SinkError> {
        self.0.checkpoints()
    }
    fn newest_stored_checkpoint(&self) -> Result<Option<StoredCheckpoint>, SinkError> {
        self.0.newest_stored_checkpoint()
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn fsync_baseline(dir: &Path) -> Duration {
    let path = dir.join("fsync.probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&[0u8; 4096]).unwrap();
        f.sync_data().unwrap();
        times.push(t.elapsed());
    }
    let _ = std::fs::remove_file(path);
    times.sort();
    pct(&times, 0.5)
}

/// 1,000 appends one at a time into the ledger at `db`, after what it holds, with `before` run
/// ahead of each one (untimed). Returns the sorted latencies and the process CPU per append
/// (`before` and the background threads included).
fn lone_appends(db: &Path, mut before: impl FnMut(u64)) -> (Vec<Duration>, Duration) {
    const APPENDS: u64 = 1_000;
    let (sink, _checkpoints) = serve_like_sink(db);
    let base = sink.record_count().unwrap();
    let app = Appender::start(sink, signer(), AppenderConfig::default()).unwrap();
    let mut times = Vec::new();
    let cpu = process_cpu();
    for i in base..base + APPENDS {
        before(i);
        let body = decision(i);
        let t = Instant::now();
        app.append(body.encode(1_764_000_000_000 + i as i64))
            .unwrap();
        times.push(t.elapsed());
    }
    let cpu = (process_cpu() - cpu) / APPENDS as u32;
    app.close().unwrap();
    times.sort();
    (times, cpu)
}

fn lone_append(dir: &Path) -> Vec<Duration> {
    lone_appends(&dir.join("lone.db"), |_| {}).0
}

/// Lone appends as `gavel serve` makes them: into a ledger that already holds `db`'s records,
/// with another connection (the store's, in `gavel serve`) committing to the same file before
/// each one. Its commit makes the ledger's connection drop its page cache at the next append,
/// so this shows what that costs.
fn shared_file_appends(db: &Path) -> (Vec<Duration>, Duration) {
    let other = rusqlite::Connection::open(db).unwrap();
    other
        .busy_handler(Some(gavel_ledger_sqlite::wait_for_writer))
        .unwrap();
    other.pragma_update(None, "synchronous", "NORMAL").unwrap();
    other
        .execute_batch("CREATE TABLE IF NOT EXISTS bench_other_writer (n INTEGER)")
        .unwrap();
    lone_appends(db, |i| {
        other
            .execute("INSERT INTO bench_other_writer (n) VALUES (?1)", [i])
            .unwrap();
    })
}

fn shared_file_table(db: &Path) {
    let (times, cpu) = shared_file_appends(db);
    println!("| lone append, another connection committing before each (1000) | value |");
    println!("|----------------------------------------------------------------|-------|");
    println!("| durable append latency p50 | {} |", us(pct(&times, 0.5)));
    println!("| durable append latency p99 | {} |", us(pct(&times, 0.99)));
    println!(
        "| process CPU per append (the other commit included) | {} |",
        us(cpu)
    );
    println!();
}

/// What one throughput run measured.
struct Throughput {
    appends_per_s: f64,
    commits: u64,
    cpu_us_per_append: f64,
    /// Share of the run the writer thread spent inside sink commits.
    writer_busy: f64,
}

/// `threads` threads each keeping `depth` appends in flight.
fn throughput(
    db: &Path,
    threads: u64,
    depth: u64,
    total: u64,
    make: fn(u64) -> Body,
) -> Throughput {
    let commits = Arc::new(AtomicU64::new(0));
    let commit_nanos = Arc::new(AtomicU64::new(0));
    let (inner, _checkpoints) = serve_like_sink(db);
    // Ids continue past what the folder holds: a ledger never sees a decision id twice, and
    // ids made again from 0 land in the middle of the id index, which no gateway does.
    let base = inner.record_count().unwrap();
    let sink = Counting {
        inner,
        commits: Arc::clone(&commits),
        commit_nanos: Arc::clone(&commit_nanos),
    };
    let app = Arc::new(Appender::start(sink, signer(), AppenderConfig::default()).unwrap());
    let per_thread = total / threads;
    // Decisions are built before the clock starts: the engine has its decision anyway.
    // Writing the record's canonical bytes and hashing them (in `submit`) are timed.
    let records: Arc<Vec<Body>> =
        Arc::new((0..per_thread * threads).map(|i| make(base + i)).collect());
    let start = Instant::now();
    let cpu_start = process_cpu();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let app = Arc::clone(&app);
            let records = Arc::clone(&records);
            // Named, so that a profile tells the producers' encoding from the appender's work.
            let producer = std::thread::Builder::new().name("bench-producer".into());
            producer
                .spawn(move || {
                    // A sliding window, as independent callers keep it: a new append as soon
                    // as the oldest is durable, never a pause with nothing in flight.
                    let mut in_flight = VecDeque::with_capacity(depth as usize);
                    for i in 0..per_thread {
                        if in_flight.len() as u64 == depth {
                            in_flight.pop_front().map(Pending::wait).unwrap().unwrap();
                        }
                        // Interleaved, so that every thread's next id is at the index's right
                        // edge, as the gateway's time-ordered ids are (ids.rs).
                        let at = (i * threads + t) as usize;
                        let body = records[at].encode(1_764_000_000_000 + at as i64);
                        in_flight.push_back(app.submit(body).unwrap());
                    }
                    in_flight.into_iter().for_each(|p| {
                        p.wait().unwrap();
                    });
                })
                .unwrap()
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu() - cpu_start;
    let app = Arc::try_unwrap(app).ok().unwrap();
    app.close().unwrap();
    let n = per_thread * threads;
    Throughput {
        appends_per_s: n as f64 / elapsed.as_secs_f64(),
        commits: commits.load(Ordering::Relaxed),
        cpu_us_per_append: cpu.as_secs_f64() * 1e6 / n as f64,
        writer_busy: commit_nanos.load(Ordering::Relaxed) as f64 / elapsed.as_nanos() as f64,
    }
}

/// CPU time (user + system) this process has used: unlike wall-clock rates
/// it barely moves when other jobs share the machine.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, in clock ticks of 10 ms.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// What recording a decision costs its producer's thread before the appender sees it, both
/// ways a body can become canonical bytes. Rounds of 20,000 decisions, one thread, the two
/// ways alternating; the best round of seven each (the least disturbed by other work).
fn encoding_table() {
    let bodies: Vec<Body> = (0..20_000).map(decision).collect();
    let round = |encode: &dyn Fn(&Body) -> usize| {
        let t = Instant::now();
        let bytes: usize = bodies.iter().map(encode).sum();
        std::hint::black_box(bytes);
        t.elapsed() / bodies.len() as u32
    };
    let direct = |b: &Body| b.encode(1).bytes.len();
    let via_tree = |b: &Body| match b {
        Body::Decision(d) => Record::new(RecordKind::Decision, 1, &d.decision_id, &d.record())
            .unwrap()
            .encode()
            .unwrap()
            .bytes
            .len(),
        Body::Json { .. } => unreachable!("decision() makes typed decisions"),
    };
    let (mut best_direct, mut best_tree) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        best_direct = best_direct.min(round(&direct));
        best_tree = best_tree.min(round(&via_tree));
    }
    println!("| encoding a decision record (1 thread, best of 7 x 20,000) | per record |");
    println!("|-----------------------------------------------------------|------------|");
    println!(
        "| typed decision straight to canonical bytes (`Encoded::new`) | {} |",
        us(best_direct)
    );
    println!(
        "| through a JSON tree (`serde_json::to_value`, then canonicalised) | {} |",
        us(best_tree)
    );
    println!();
}

/// The lone-append latency table: one caller, one record at a time.
fn lone_table(dir: &Path) {
    let fsync = fsync_baseline(dir);
    let lone = lone_append(dir);
    println!("| lone append (1 caller, 1000 appends)     | value |");
    println!("|------------------------------------------|-------|");
    println!(
        "| raw fsync of 4 KiB on this disk (p50)    | {} |",
        us(fsync)
    );
    println!(
        "| durable append latency p50               | {} |",
        us(pct(&lone, 0.5))
    );
    println!(
        "| added over the raw fsync (p50 - p50)     | {} |",
        us(pct(&lone, 0.5).saturating_sub(fsync))
    );
    println!(
        "| durable append latency p99               | {} |",
        us(pct(&lone, 0.99))
    );
    println!(
        "| durable append latency max              | {} |",
        us(pct(&lone, 1.0))
    );
    println!();
}

/// What `--run` asks for: everything, or one part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    /// Only the verification and proof tables, over what the folder holds.
    Verify,
    /// Only the lone appends with another connection committing in between.
    Shared,
    /// Only that many threads x appends in flight, with gateway-sized records.
    Throughput(u64, u64),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let total: u64 = arg("--records").map_or(200_000, |s| s.parse().unwrap());
    let dir = arg("--dir").map_or_else(
        || std::env::temp_dir().join(format!("gavel-ledger-bench-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "gavel ledger bench: dir {}, {} cores",
        dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("record size: {} bytes canonical", decision(0).size());
    println!();

    let mode = match arg("--run").as_deref() {
        None => Mode::Full,
        Some("verify") => Mode::Verify,
        Some("shared") => Mode::Shared,
        Some(v) => {
            let (threads, depth) = v
                .split_once('x')
                .expect("--run verify|shared|THREADSxDEPTH, e.g. 4x1024");
            Mode::Throughput(threads.parse().unwrap(), depth.parse().unwrap())
        }
    };
    if matches!(mode, Mode::Full | Mode::Throughput(..)) {
        encoding_table();
    }
    if mode == Mode::Full {
        lone_table(&dir);
    }

    let db = dir.join("bench.db");
    let runs: Vec<Run> = match mode {
        Mode::Full => vec![
            (1, 1, 2_000, decision),
            (4, 4, total / 4, decision),
            (8, 32, total, decision),
            (4, 1024, total, decision),
            (4, 1024, total, small_decision),
        ],
        Mode::Throughput(threads, depth) => vec![(threads, depth, total, decision)],
        Mode::Verify | Mode::Shared => vec![],
    };
    if !runs.is_empty() {
        println!(
            "| in flight (threads x depth), record size | records | durable appends/s | commits | mean batch | CPU us/append | writer busy |"
        );
        println!(
            "|------------------------------------------|---------|-------------------|---------|------------|---------------|-------------|"
        );
    }
    for (threads, depth, n, make) in runs {
        let run = throughput(&db, threads, depth, n, make);
        let label = format!("{} B", make(0).size());
        println!(
            "| {:>4} ({threads} x {depth}), {label} records | {n} | {:.0} | {} | {:.1} | {:.1} | {:.0}% |",
            threads * depth,
            run.appends_per_s,
            run.commits,
            n as f64 / run.commits.max(1) as f64,
            run.cpu_us_per_append,
            run.writer_busy * 100.0
        );
    }
    println!();

    // After the throughput runs, so that the tree the appender loads is a large one.
    if matches!(mode, Mode::Full | Mode::Shared) {
        shared_file_table(&db);
    }
    if !matches!(mode, Mode::Full | Mode::Verify) {
        return;
    }
    // As `gavel audit verify` opens it.
    let sink = SqliteLedgerSink::open_read_only(&db).unwrap();
    let v = signer().verifier();
    // CPU seconds next to wall seconds: verification spreads over the cores, so CPU above wall
    // shows how much of it ran in parallel.
    println!("| verification | records | checkpoints | seconds | CPU seconds | records/s |");
    println!("|--------------|---------|-------------|---------|-------------|-----------|");
    for (label, check_format, check_query_aids) in [
        ("SQLite, hashes + tree + signatures", false, false),
        ("SQLite, plus canonical-format check", true, false),
        (
            "SQLite, plus format and query aids (`gavel audit verify`)",
            true,
            true,
        ),
    ] {
        let (t, cpu) = (Instant::now(), process_cpu());
        let report = sink
            .verify(
                &v,
                VerifyOptions {
                    check_format,
                    check_query_aids,
                    require_signed_tail: true,
                },
            )
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "| {label} | {} | {} | {s:.3} | {:.2} | {:.0} |",
            report.records,
            report.checkpoints,
            (process_cpu() - cpu).as_secs_f64(),
            report.records as f64 / s
        );
    }
    // What reading alone costs on one thread, records lent in place as verification reads them.
    let count = sink.record_count().unwrap();
    let (t, cpu) = (Instant::now(), process_cpu());
    let mut from = 0;
    while from < count {
        let to = (from + 4_096).min(count); // verify_sink's chunk
        sink.visit_records(from, to, &mut |_, hash, bytes| {
            std::hint::black_box((hash, bytes));
        })
        .unwrap();
        from = to;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "| SQLite, reading the records alone (one thread, no checks) | {count} | - | {s:.3} | {:.2} | {:.0} |",
        (process_cpu() - cpu).as_secs_f64(),
        count as f64 / s
    );
    let records = sink.read_records(0, u64::MAX >> 1).unwrap();
    let checkpoints = sink.checkpoints().unwrap();
    let (t, cpu) = (Instant::now(), process_cpu());
    let report = verify_records(
        records.iter().cloned().map(Ok),
        &checkpoints,
        &v,
        VerifyOptions {
            check_format: false,
            check_query_aids: false,
            require_signed_tail: true,
        },
    )
    .unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "| in memory, one thread, hashes + tree + signatures | {} | {} | {s:.3} | {:.2} | {:.0} |",
        report.records,
        report.checkpoints,
        (process_cpu() - cpu).as_secs_f64(),
        report.records as f64 / s
    );
    println!();
    // As the gateway's ledger reader opens it.
    ledger_proof_table(&db, &SqliteLedgerSink::open(&db).unwrap());

    let n: u64 = 1 << 20;
    let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let t = Instant::now();
    let tree = MerkleTree::from_leaf_hashes(leaves.iter().copied());
    let build = t.elapsed();
    let root = tree.root();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let iters = 20_000u32;
    let idx: Vec<u64> = (0..iters).map(|_| rnd() % n).collect();
    let t = Instant::now();
    let proofs: Vec<Vec<Hash>> = idx
        .iter()
        .map(|&i| tree.inclusion_proof(i, n).unwrap())
        .collect();
    let gen = t.elapsed() / iters;
    let t = Instant::now();
    for (&i, p) in idx.iter().zip(&proofs) {
        verify_inclusion(&leaves[i as usize], i, n, p, &root).unwrap();
    }
    let ver = t.elapsed() / iters;
    let olds: Vec<u64> = (0..iters).map(|_| 1 + rnd() % (n - 1)).collect();
    let t = Instant::now();
    let cproofs: Vec<Vec<Hash>> = olds
        .iter()
        .map(|&m| tree.consistency_proof(m, n).unwrap())
        .collect();
    let cgen = t.elapsed() / iters;
    let old_roots: Vec<Hash> = olds.iter().map(|&m| tree.root_at(m).unwrap()).collect();
    let t = Instant::now();
    for ((&m, p), r) in olds.iter().zip(&cproofs).zip(&old_roots) {
        verify_consistency(m, n, r, &root, p).unwrap();
    }
    let cver = t.elapsed() / iters;
    // Whole third-party check of a proof file: JSON parse, Ed25519, canonical
    // record check, path.
    let total_stored = sink.record_count().unwrap();
    let bundle = Prover::new(v.clone())
        .prove(&sink, total_stored / 2)
        .unwrap();
    let json = serde_json::to_string(&bundle).unwrap();
    let key = v.to_string();
    let t = Instant::now();
    for _ in 0..1_000 {
        gavel_ledger::check_proof_json(&json, &key).unwrap();
    }
    let bundle_check = t.elapsed() / 1_000;
    println!("| proofs on a 2^20-leaf tree (mean of {iters}) | value |");
    println!("|----------------------------------------------|-------|");
    println!(
        "| build tree from leaf hashes                  | {:.0} ms |",
        build.as_secs_f64() * 1e3
    );
    println!(
        "| inclusion proof generation                   | {} |",
        us(gen)
    );
    println!(
        "| inclusion proof verification                 | {} |",
        us(ver)
    );
    println!(
        "| consistency proof generation                 | {} |",
        us(cgen)
    );
    println!(
        "| consistency proof verification               | {} |",
        us(cver)
    );
    println!(
        "| check-proof of a bundle (incl. Ed25519)      | {} |",
        us(bundle_check)
    );
    if arg("--dir").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
