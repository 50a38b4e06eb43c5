//! After a failed timed checkpoint the writer thread must idle, not spin.
//! Alone in its own test binary because it measures this process's CPU time,
//! which tests running in parallel threads would inflate.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gavel_ledger::merkle::Hash;
use gavel_ledger::{
    AppendRecord, Appender, AppenderConfig, LedgerError, LedgerSink, MemorySink, NoteSigner,
    Record, RecordKind, SinkError, StoredCheckpoint, StoredRecord, TreeNode,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A memory sink whose commits fail on demand.
struct FailingSink {
    inner: MemorySink,
    fail: Arc<AtomicBool>,
}

impl LedgerSink for FailingSink {
    fn append(
        &mut self,
        records: &[AppendRecord],
        nodes: &[TreeNode],
        checkpoint: Option<&StoredCheckpoint>,
    ) -> Result<(), SinkError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("disk on fire".into());
        }
        self.inner.append(records, nodes, checkpoint)
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
}

/// CPU time used by this process so far (utime + stime from /proc, in
/// clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[test]
fn a_failed_timed_checkpoint_does_not_spin_the_writer() {
    let fail = Arc::new(AtomicBool::new(false));
    let sink = FailingSink {
        inner: MemorySink::new(),
        fail: Arc::clone(&fail),
    };
    let config = AppenderConfig {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_millis(5),
        max_batch: 64,
        ..AppenderConfig::default()
    };
    let signer = NoteSigner::from_seed("gavel.test/idle", &[1u8; 32]).unwrap();
    let app = Appender::start(sink, signer, config).unwrap();
    let record =
        |i: i64| Record::new(RecordKind::Decision, i, format!("d-{i}"), &json!({})).unwrap();
    app.append(&record(0)).unwrap();
    fail.store(true, Ordering::SeqCst);
    // The timed checkpoint fails within 5 ms; afterwards the writer idles.
    std::thread::sleep(Duration::from_millis(50));
    let before = process_cpu();
    std::thread::sleep(Duration::from_millis(400));
    let used = process_cpu().saturating_sub(before);
    assert!(
        used < Duration::from_millis(100),
        "writer burned {used:?} of CPU while idle"
    );
    assert!(matches!(
        app.append(&record(1)),
        Err(LedgerError::Failed(_))
    ));
}
