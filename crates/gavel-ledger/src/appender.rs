//! Group-commit appender: many threads append concurrently, one writer thread
//! turns whatever is queued into a single durable sink transaction, and each
//! caller is released only once its record is durable.
//!
//! Batching is load-driven: the writer never waits to fill a batch of records
//! someone is waiting on. A lone append is committed at once (its latency is
//! one sink commit); under load, records arriving while a commit is in flight
//! form the next batch, so the batch size, and with it throughput, grows with
//! the offered load.
//!
//! Background records (what follows an act already taken, such as the outcome
//! of a call whose answer has been sent) are the exception: nobody waits on
//! them, so a batch of only background records lingers up to
//! `background_delay` for the next record that is waited on and rides with
//! its commit. That halves the commits of a gateway that records a decision
//! and an outcome per request, and keeps outcome commits from delaying the
//! next decision's.
//!
//! When the sink can split durability off its commits ([`LedgerSink::flusher`]), a
//! second thread makes each committed batch durable (the fsync) and only then
//! acknowledges it, while the writer already commits the next batch: syncing
//! overlaps writing, and the sink's write lock is not held through the fsync.
//! A batch committed with nothing else queued behind it and nothing left to the
//! sync thread is synced by the writer itself, after its commit: there is no
//! commit to overlap, and a lone request's path is spared the sync thread's
//! wake-up (on an idle machine the longest of its thread hand-overs).

use crate::merkle::{is_stored_level, leaf_hash, stored_levels, Hash, MerkleFrontier, TreeNode};
use crate::note::{Checkpoint, NoteError, NoteSigner};
use crate::record::{Appendable, IndexFields, Record, RecordError, RecordKind};
use crate::sink::{
    leaf_hashes_in_order, tree_nodes_past, AppendRecord, Flusher, LeafReadError, LedgerSink,
    StoredCheckpoint, StoredReads,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When checkpoints are signed, and how large a batch may grow.
#[derive(Debug, Clone, Copy)]
pub struct AppenderConfig {
    /// Sign a checkpoint once this many records are unsigned (N).
    pub checkpoint_every: u64,
    /// Sign a checkpoint once the oldest unsigned record is this old (T).
    pub checkpoint_interval: Duration,
    /// Most records per sink transaction.
    pub max_batch: usize,
    /// How long a batch of only background records waits for a record that
    /// is waited on before it is committed on its own.
    pub background_delay: Duration,
}

impl Default for AppenderConfig {
    fn default() -> AppenderConfig {
        AppenderConfig {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_millis(1_000),
            max_batch: 8_192,
            // Long enough for a gateway serving a few tens of requests a second to commit each
            // outcome with the next decision: one commit and one fsync per request, not two.
            background_delay: Duration::from_millis(100),
        }
    }
}

/// Called after every durable batch of records with its record count and how long it took from
/// the start of its sink transaction until it was durable (the fsync included); a gateway feeds
/// its metrics from it.
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Proof of durable acceptance handed back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Leaf index of the record.
    pub index: u64,
    /// Sequence number of the checkpoint that covers the record: already
    /// signed when `checkpoint_size` is set, otherwise the next one to be
    /// signed (within N records or T ms, or at shutdown or restart).
    pub checkpoint_seq: u64,
    /// Tree size of that checkpoint when it was signed in the same commit.
    pub checkpoint_size: Option<u64>,
}

/// Why an append or the appender failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    Record(RecordError),
    Note(NoteError),
    /// The sink reported an error; the record is not durable.
    Sink(String),
    /// Stored state does not match its signatures; refusing to extend it.
    Corrupt(String),
    /// An earlier commit failed; the appender refuses further appends until
    /// it is restarted from what the sink holds (fail closed).
    Failed(String),
    /// The appender has shut down.
    Closed,
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Record(e) => write!(f, "{e}"),
            LedgerError::Note(e) => write!(f, "{e}"),
            LedgerError::Sink(e) => write!(f, "ledger storage error: {e}"),
            LedgerError::Corrupt(e) => write!(
                f,
                "ledger storage does not match its signed checkpoints: {e}"
            ),
            LedgerError::Failed(e) => {
                write!(f, "ledger appender stopped after an earlier failure: {e}")
            }
            LedgerError::Closed => f.write_str("ledger appender is closed"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<RecordError> for LedgerError {
    fn from(e: RecordError) -> LedgerError {
        LedgerError::Record(e)
    }
}

impl From<NoteError> for LedgerError {
    fn from(e: NoteError) -> LedgerError {
        LedgerError::Note(e)
    }
}

type CheckpointReply = Sender<Result<Option<StoredCheckpoint>, LedgerError>>;

struct Request {
    bytes: Vec<u8>,
    leaf: Hash,
    id: String,
    kind: RecordKind,
    at_ms: i64,
    fields: IndexFields,
    reply: Reply,
    /// Someone waits on this record before acting (see the module comment).
    waited_on: bool,
}

type Outcome = Result<Receipt, LedgerError>;

/// Where the writer sends a record's outcome: a thread blocked in
/// [`Pending::wait`] or a task awaiting [`Durable`].
enum Reply {
    Blocking(SyncSender<Outcome>),
    Async(tokio::sync::oneshot::Sender<Outcome>),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        // The caller may have stopped waiting; the record is stored anyway.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Async(tx) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// Committed work whose callers hear of it once it is durable.
enum Ack {
    Records {
        replies: Vec<Reply>,
        base: u64,
        checkpoint_seq: u64,
        checkpoint_size: Option<u64>,
        started: Instant,
    },
    /// A checkpoint committed on request (with a reply) or on the T timer.
    Checkpoint {
        reply: Option<CheckpointReply>,
        checkpoint: StoredCheckpoint,
    },
}

impl Ack {
    /// Tells the callers: receipts if the work is durable, the error if not.
    fn settle(self, durable: Result<(), &LedgerError>, observer: Option<&BatchObserver>) {
        match self {
            Ack::Records {
                replies,
                base,
                checkpoint_seq,
                checkpoint_size,
                started,
            } => match durable {
                Ok(()) => {
                    if let Some(observe) = observer {
                        observe(replies.len(), started.elapsed());
                    }
                    for (i, reply) in replies.into_iter().enumerate() {
                        reply.send(Ok(Receipt {
                            index: base + i as u64,
                            checkpoint_seq,
                            checkpoint_size,
                        }));
                    }
                }
                Err(e) => replies.into_iter().for_each(|r| r.send(Err(e.clone()))),
            },
            Ack::Checkpoint { reply, checkpoint } => {
                if let Some(reply) = reply {
                    let _ = reply.send(durable.map(|()| Some(checkpoint)).map_err(Clone::clone));
                }
            }
        }
    }
}

/// How committed work is acknowledged: at once (the sink's commits are durable), or after a
/// flush, by the sync thread or by the writer itself ([`Syncer`]).
enum Acks {
    Now,
    AfterFlush {
        syncer: Arc<Syncer>,
        tx: Sender<Ack>,
        handle: JoinHandle<()>,
    },
}

/// Makes committed work durable, then acknowledges it. After a failed flush nothing more is
/// acknowledged: what the failed sync covered is in doubt, and a later sync that succeeds
/// would not prove otherwise.
struct Syncer {
    /// Locked for each flush: the sync thread and the writer never flush at once.
    flusher: Mutex<Box<dyn Flusher>>,
    failed: Arc<OnceLock<String>>,
    observer: Option<BatchObserver>,
    /// Acknowledgements handed to the sync thread and not yet settled by it.
    handed: AtomicUsize,
}

impl Syncer {
    /// One flush for all of `acks` (committed before the call), then their callers hear.
    fn flush_and_settle(&self, acks: Vec<Ack>) {
        let durable = match self.failed.get() {
            Some(f) => Err(LedgerError::Failed(f.clone())),
            None => {
                let flushed = match self.flusher.lock() {
                    Ok(mut flusher) => flusher.flush().map_err(|e| e.to_string()),
                    Err(_) => Err("a flush panicked".to_string()),
                };
                flushed.map_err(|e| {
                    let msg = format!("sync failed: {e}");
                    let _ = self.failed.set(msg.clone());
                    LedgerError::Sink(msg)
                })
            }
        };
        for ack in acks {
            ack.settle(durable.as_ref().map(|_| ()), self.observer.as_ref());
        }
    }
}

/// The sync thread: flushes once for everything that queued up meanwhile.
fn flush_loop(syncer: &Syncer, rx: Receiver<Ack>) {
    while let Ok(first) = rx.recv() {
        let mut acks = vec![first];
        acks.extend(rx.try_iter());
        let taken = acks.len();
        syncer.flush_and_settle(acks);
        syncer.handed.fetch_sub(taken, Ordering::AcqRel);
    }
}

enum Msg {
    Append(Request),
    Checkpoint(CheckpointReply),
    Close(CheckpointReply),
}

/// An append in flight; `wait` returns once it is durable (or failed).
pub struct Pending {
    rx: Receiver<Result<Receipt, LedgerError>>,
}

impl Pending {
    pub fn wait(self) -> Result<Receipt, LedgerError> {
        self.rx.recv().unwrap_or(Err(LedgerError::Closed))
    }
}

/// An append in flight for async callers: resolves once it is durable (or
/// failed), without holding a thread while the commit runs.
pub struct Durable {
    rx: tokio::sync::oneshot::Receiver<Outcome>,
}

impl Future for Durable {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(LedgerError::Closed)))
    }
}

/// Handle to the writer thread. `Sync`: share it (e.g. in an `Arc`) between
/// request threads.
pub struct Appender {
    tx: Sender<Msg>,
    handle: Option<JoinHandle<()>>,
    /// Set by the writer or the sync thread when a commit or a sync fails.
    failed: Arc<OnceLock<String>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Appender {
    /// Rebuilds the tree from the sink, checks it against the newest signed
    /// checkpoint, signs a checkpoint over any tail left by a crash, then
    /// starts the writer thread.
    pub fn start<S: LedgerSink>(
        sink: S,
        signer: NoteSigner,
        config: AppenderConfig,
    ) -> Result<Appender, LedgerError> {
        Appender::start_observed(sink, signer, config, None)
    }

    /// [`Appender::start`], reporting every committed batch to `observer`.
    pub fn start_observed<S: LedgerSink>(
        sink: S,
        signer: NoteSigner,
        config: AppenderConfig,
        observer: Option<BatchObserver>,
    ) -> Result<Appender, LedgerError> {
        let mut writer = Writer::load(sink, signer, config)?;
        writer.observer = observer;
        if writer.tree.len() > writer.last_size {
            writer.checkpoint()?;
        }
        writer.split_durability()?;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::clone(&writer.failed);
        let handle = std::thread::Builder::new()
            .name("gavel-ledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LedgerError::Sink(format!("cannot start writer thread: {e}")))?;
        Ok(Appender {
            tx,
            handle: Some(handle),
            failed,
        })
    }

    /// Why the appender stopped accepting records, once a commit or a sync has failed (it
    /// refuses every append from then on: see [`LedgerError::Failed`]).
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Queues a record and returns at once; the record is durable when
    /// [`Pending::wait`] returns Ok. Canonicalisation and hashing happen here,
    /// on the caller's thread, to keep the single writer thread lean.
    pub fn submit(&self, record: impl Appendable) -> Result<Pending, LedgerError> {
        // A one-slot channel: the writer sends exactly one reply, and this
        // kind allocates far less than an unbounded one (measurable at
        // 100k appends/s).
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(record, Reply::Blocking(reply), true)?;
        Ok(Pending { rx })
    }

    /// [`Appender::submit`] for async callers: await the returned [`Durable`].
    pub fn submit_async(&self, record: impl Appendable) -> Result<Durable, LedgerError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(record, Reply::Async(reply), true)?;
        Ok(Durable { rx })
    }

    /// Queues a background record: one nobody waits on before acting. It is
    /// committed with the next record that is waited on, or on its own after
    /// `background_delay`; [`Pending::wait`] still says when it is durable.
    pub fn submit_background(&self, record: impl Appendable) -> Result<Pending, LedgerError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(record, Reply::Blocking(reply), false)?;
        Ok(Pending { rx })
    }

    fn send(
        &self,
        record: impl Appendable,
        reply: Reply,
        waited_on: bool,
    ) -> Result<(), LedgerError> {
        let record = record.encoded()?;
        let req = Request {
            leaf: leaf_hash(&record.bytes),
            bytes: record.bytes,
            id: record.id,
            kind: record.kind,
            at_ms: record.at_ms,
            fields: record.fields,
            reply,
            waited_on,
        };
        self.tx
            .send(Msg::Append(req))
            .map_err(|_| LedgerError::Closed)
    }

    /// Appends a record and returns once it is durable.
    pub fn append(&self, record: impl Appendable) -> Result<Receipt, LedgerError> {
        self.submit(record)?.wait()
    }

    /// Signs a checkpoint over everything appended so far (None if nothing is
    /// unsigned).
    pub fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, LedgerError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Msg::Checkpoint(reply))
            .map_err(|_| LedgerError::Closed)?;
        rx.recv().unwrap_or(Err(LedgerError::Closed))
    }

    /// Commits everything queued, signs a final checkpoint and stops.
    pub fn close(mut self) -> Result<Option<StoredCheckpoint>, LedgerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Option<StoredCheckpoint>, LedgerError> {
        let Some(handle) = self.handle.take() else {
            return Err(LedgerError::Closed);
        };
        let (reply, rx) = mpsc::channel();
        let result = match self.tx.send(Msg::Close(reply)) {
            Ok(()) => rx.recv().unwrap_or(Err(LedgerError::Closed)),
            Err(_) => Err(LedgerError::Closed),
        };
        if handle.join().is_err() {
            return Err(LedgerError::Failed("writer thread panicked".into()));
        }
        result
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Best effort: Drop cannot report; callers who care use `close`.
        if self.handle.is_some() {
            let _ = self.shutdown();
        }
    }
}

/// Whether a message waits for the writer; one taken from `rx` to look is kept in `next`.
fn peek(rx: &Receiver<Msg>, next: &mut Option<Msg>) -> bool {
    if next.is_none() {
        *next = rx.try_recv().ok();
    }
    next.is_some()
}

/// Moves queued appends into `batch` (up to `max`) without waiting; returns a
/// non-append message met on the way.
fn drain(rx: &Receiver<Msg>, batch: &mut Vec<Request>, max: usize) -> Option<Msg> {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(Msg::Append(r)) => batch.push(r),
            Ok(other) => return Some(other),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    None
}

struct Writer<S> {
    sink: S,
    signer: NoteSigner,
    config: AppenderConfig,
    /// The tree's right edge only: the writer needs the root as it grows, and a whole tree
    /// (two hashes a record) grew without bound in a gateway that ran for days.
    tree: MerkleFrontier,
    last_seq: u64,
    last_size: u64,
    /// When the oldest unsigned record was committed (drives T).
    unsigned_since: Option<Instant>,
    /// Why the appender stopped: set by the writer or by the sync thread, whichever fails
    /// first.
    failed: Arc<OnceLock<String>>,
    /// Reports durable batches while acknowledgements are `Acks::Now`; the sync thread takes
    /// it over otherwise.
    observer: Option<BatchObserver>,
    acks: Acks,
}

/// The records after the newest checkpoint are what the writer signs first when it starts:
/// what a writer that stopped without signing them (a crash) left. Nothing proves them yet, so
/// they are checked before the key vouches for them: each stored leaf hash must be the hash of
/// its bytes, and the bytes a canonical record; and there can be no more of them than one
/// writer leaves unsigned (a checkpoint is due every `checkpoint_every` records, after a batch
/// of at most `max_batch`). More means checkpoints were removed or records added by someone
/// without the key; signing over them would make the forgery verify.
fn check_unsigned_tail<S: LedgerSink>(
    sink: &S,
    signed: u64,
    count: u64,
    config: &AppenderConfig,
) -> Result<(), LedgerError> {
    let most = config
        .checkpoint_every
        .saturating_add(config.max_batch as u64);
    if count - signed > most {
        return Err(LedgerError::Corrupt(format!(
            "{} records follow the newest signed checkpoint (over {signed}), more than a writer \
             leaves unsigned (at most {most}): checkpoints were removed or records added without \
             the signing key, and this writer will not sign over them (run `gavel audit verify`)",
            count - signed
        )));
    }
    let mut problem = None;
    sink.visit_records(signed, count, &mut |index, stored_hash, bytes| {
        if problem.is_some() {
            return;
        }
        if leaf_hash(bytes) != *stored_hash {
            problem = Some(format!(
                "record {index} does not hash to its stored leaf hash"
            ));
        } else if let Err(e) = Record::check_canonical(bytes) {
            problem = Some(format!("record {index} is not a canonical record: {e}"));
        }
    })
    .map_err(|e| LedgerError::Sink(e.to_string()))?;
    match problem {
        Some(what) => Err(LedgerError::Corrupt(format!(
            "{what}; it follows the newest signed checkpoint, and this writer will not sign over \
             it (run `gavel audit verify`)"
        ))),
        None => Ok(()),
    }
}

fn mismatch(size: u64) -> LedgerError {
    LedgerError::Corrupt(format!(
        "stored leaves do not match the root signed at size {size}"
    ))
}

fn leaf_read_err(e: LeafReadError) -> LedgerError {
    match e {
        LeafReadError::Sink(e) => LedgerError::Sink(e.to_string()),
        missing => LedgerError::Corrupt(missing.to_string()),
    }
}

/// Appends `leaf` to `tree`, adding to `nodes` the subtrees it completes at the levels a sink
/// stores.
fn push_keeping_stored(tree: &mut MerkleFrontier, leaf: Hash, nodes: &mut Vec<TreeNode>) {
    tree.push_reporting(leaf, |n| {
        if is_stored_level(n.level) {
            nodes.push(n);
        }
    });
}

/// Leaves read between two writes of the nodes a starting writer fills in (about 70,000
/// nodes, 3 MB).
const LEAVES_PER_FILL: u64 = 1 << 20;

/// A node stored where the tree has none (past the records at a stored level, which would make
/// the append that reaches it fail, or at another level) is refused at start, whichever way
/// the tree is then built, where the reason can be said rather than in the middle of serving.
fn refuse_nodes_past_the_records<S: LedgerSink>(sink: &S, count: u64) -> Result<(), LedgerError> {
    let past = tree_nodes_past(sink, count).map_err(|e| LedgerError::Sink(e.to_string()))?;
    match past.first() {
        Some((level, index)) => Err(LedgerError::Corrupt(format!(
            "a tree node ({index} of level {level}) is stored where the ledger's {count} records \
             have none: it was inserted, and this writer would fail on it (run `gavel audit \
             verify`)"
        ))),
        None => Ok(()),
    }
}

/// The tree of `count` records from stored nodes, in O(log n) reads: the newest checkpoint's
/// tree, checked against its signed root, then the leaves after it (the unsigned tail, which
/// [`check_unsigned_tail`] bounds). None when the sink lacks a node it needs, or lacks the
/// newest nodes of some level (records appended by a gavel that stored none), or when the
/// nodes do not give the signed root: then [`tree_from_leaves`] reads every leaf.
fn tree_from_nodes<S: LedgerSink>(
    sink: &S,
    count: u64,
    newest: Option<&Checkpoint>,
) -> Result<Option<MerkleFrontier>, LedgerError> {
    let sink_err = |e: crate::sink::SinkError| LedgerError::Sink(e.to_string());
    for level in stored_levels() {
        let nodes = count >> level;
        // Nodes are written with their records, so every level's newest node is stored unless
        // some records were appended without them.
        if nodes > 0
            && sink
                .tree_nodes(level, nodes - 1, nodes)
                .map_err(sink_err)?
                .is_empty()
        {
            return Ok(None);
        }
    }
    let signed = newest.map_or(0, |cp| cp.size);
    let Some(mut tree) = StoredReads::new(sink).frontier(signed).map_err(sink_err)? else {
        return Ok(None);
    };
    if newest.is_some_and(|cp| cp.root != tree.root()) {
        return Ok(None);
    }
    for hash in leaf_hashes_in_order(sink, signed, count) {
        tree.push(hash.map_err(leaf_read_err)?);
    }
    Ok(Some(tree))
}

/// The tree of `count` records from every stored leaf hash, read once, the newest checkpoint's
/// root checked as the tree passes its size; the nodes it completes at stored levels that the
/// sink lacks are stored on the way, so that the next start, and proofs, need not read every
/// leaf.
fn tree_from_leaves<S: LedgerSink>(
    sink: &mut S,
    count: u64,
    newest: Option<&Checkpoint>,
) -> Result<MerkleFrontier, LedgerError> {
    let signed_at = |tree: &MerkleFrontier| {
        newest.is_some_and(|cp| cp.size == tree.len() && cp.root != tree.root())
    };
    let mut tree = MerkleFrontier::new();
    if signed_at(&tree) {
        return Err(mismatch(0));
    }
    while tree.len() < count {
        let to = tree.len().saturating_add(LEAVES_PER_FILL).min(count);
        let mut nodes: Vec<TreeNode> = Vec::new();
        for hash in leaf_hashes_in_order(&*sink, tree.len(), to) {
            push_keeping_stored(&mut tree, hash.map_err(leaf_read_err)?, &mut nodes);
            if signed_at(&tree) {
                return Err(mismatch(tree.len()));
            }
        }
        sink.add_missing_nodes(&nodes)
            .map_err(|e| LedgerError::Sink(e.to_string()))?;
    }
    Ok(tree)
}

impl<S: LedgerSink> Writer<S> {
    fn load(
        mut sink: S,
        signer: NoteSigner,
        config: AppenderConfig,
    ) -> Result<Writer<S>, LedgerError> {
        let sink_err = |e: crate::sink::SinkError| LedgerError::Sink(e.to_string());
        let count = sink.record_count().map_err(sink_err)?;
        let checkpoints = sink.checkpoints().map_err(sink_err)?;
        let newest = match checkpoints.last() {
            None => None,
            Some(stored) => {
                let cp = Checkpoint::open(&stored.note, &signer.verifier())
                    .map_err(|e| LedgerError::Corrupt(format!("newest checkpoint: {e}")))?;
                if cp.seq != checkpoints.len() as u64 {
                    return Err(LedgerError::Corrupt(format!(
                        "newest checkpoint has seq {} but {} are stored",
                        cp.seq,
                        checkpoints.len()
                    )));
                }
                Some(cp)
            }
        };
        let (last_seq, last_size) = newest.as_ref().map_or((0, 0), |cp| (cp.seq, cp.size));
        if last_size > count {
            return Err(mismatch(last_size));
        }
        check_unsigned_tail(&sink, last_size, count, &config)?;
        refuse_nodes_past_the_records(&sink, count)?;
        let tree = match tree_from_nodes(&sink, count, newest.as_ref())? {
            Some(tree) => tree,
            None => tree_from_leaves(&mut sink, count, newest.as_ref())?,
        };
        Ok(Writer {
            sink,
            signer,
            config,
            tree,
            last_seq,
            last_size,
            unsigned_since: None,
            failed: Arc::new(OnceLock::new()),
            observer: None,
            acks: Acks::Now,
        })
    }

    /// Hands durability to a sync thread if the sink can split it off its commits.
    fn split_durability(&mut self) -> Result<(), LedgerError> {
        let Some(flusher) = self
            .sink
            .flusher()
            .map_err(|e| LedgerError::Sink(e.to_string()))?
        else {
            return Ok(());
        };
        let (tx, rx) = mpsc::channel();
        let syncer = Arc::new(Syncer {
            flusher: Mutex::new(flusher),
            failed: Arc::clone(&self.failed),
            observer: self.observer.take(),
            handed: AtomicUsize::new(0),
        });
        let on_thread = Arc::clone(&syncer);
        let handle = std::thread::Builder::new()
            .name("gavel-ledger-sync".into())
            .spawn(move || flush_loop(&on_thread, rx))
            .map_err(|e| LedgerError::Sink(format!("cannot start the sync thread: {e}")))?;
        self.acks = Acks::AfterFlush { syncer, tx, handle };
        Ok(())
    }

    /// Acknowledges committed work once it is durable. `more_queued` says whether work waits
    /// behind it: then the sync thread flushes while the writer commits that work; otherwise,
    /// with nothing left to the sync thread either, the writer flushes itself.
    fn acknowledge(&self, ack: Ack, more_queued: bool) {
        match &self.acks {
            Acks::Now => ack.settle(Ok(()), self.observer.as_ref()),
            Acks::AfterFlush { syncer, tx, .. } => {
                if !more_queued && syncer.handed.load(Ordering::Acquire) == 0 {
                    syncer.flush_and_settle(vec![ack]);
                    return;
                }
                syncer.handed.fetch_add(1, Ordering::AcqRel);
                if let Err(returned) = tx.send(ack) {
                    syncer.handed.fetch_sub(1, Ordering::AcqRel);
                    // Nothing is made durable any more: refuse every later append too.
                    let why = "the ledger's sync thread stopped";
                    let _ = self.failed.set(why.to_string());
                    returned
                        .0
                        .settle(Err(&LedgerError::Failed(why.into())), None);
                }
            }
        }
    }

    /// Answers a checkpoint request (or, with no reply, a timed checkpoint): a committed
    /// checkpoint once it is durable, anything else at once.
    fn checkpoint_done(
        &self,
        reply: Option<CheckpointReply>,
        result: Result<Option<StoredCheckpoint>, LedgerError>,
        more_queued: bool,
    ) {
        match result {
            Ok(Some(checkpoint)) => {
                self.acknowledge(Ack::Checkpoint { reply, checkpoint }, more_queued);
            }
            other => {
                if let Some(reply) = reply {
                    let _ = reply.send(other);
                }
            }
        }
    }

    /// Waits until the sync thread has acknowledged everything committed.
    fn finish(self) {
        if let Acks::AfterFlush { tx, handle, .. } = self.acks {
            drop(tx);
            let _ = handle.join();
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut next: Option<Msg> = None;
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match self.unsigned_since {
                    Some(since) => {
                        let wait = (since + self.config.checkpoint_interval)
                            .saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(m) => m,
                            Err(RecvTimeoutError::Timeout) => {
                                let result = self.checkpoint();
                                let more_queued = peek(&rx, &mut next);
                                self.checkpoint_done(None, result, more_queued);
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    None => match rx.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                },
            };
            match msg {
                Msg::Append(first) => {
                    let mut batch = vec![first];
                    next = self.gather(&rx, &mut batch);
                    if let Some(ack) = self.commit(batch) {
                        let more_queued = peek(&rx, &mut next);
                        self.acknowledge(ack, more_queued);
                    }
                }
                Msg::Checkpoint(reply) => {
                    let result = self.checkpoint();
                    let more_queued = peek(&rx, &mut next);
                    self.checkpoint_done(Some(reply), result, more_queued);
                }
                Msg::Close(reply) => {
                    let result = self.checkpoint();
                    self.checkpoint_done(Some(reply), result, false);
                    break;
                }
            }
        }
        // Every handle is gone without `close`: still leave a signed tail (after a `close`
        // there is nothing left to sign).
        let result = self.checkpoint();
        self.checkpoint_done(None, result, false);
        self.finish();
    }

    /// Adds whatever is queued to `batch`; a batch of only background records
    /// then waits up to `background_delay` for a record that is waited on.
    /// Returns a non-append message that ended the gathering, to handle next.
    fn gather(&self, rx: &Receiver<Msg>, batch: &mut Vec<Request>) -> Option<Msg> {
        let max = self.config.max_batch;
        if let Some(other) = drain(rx, batch, max) {
            return Some(other);
        }
        if batch.iter().any(|r| r.waited_on) {
            return None;
        }
        let deadline = Instant::now() + self.config.background_delay;
        while batch.len() < max {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::Append(r)) => {
                    let waited_on = r.waited_on;
                    batch.push(r);
                    if waited_on {
                        return drain(rx, batch, max);
                    }
                }
                Ok(other) => return Some(other),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    fn next_checkpoint(&self) -> Result<StoredCheckpoint, LedgerError> {
        let cp = Checkpoint {
            origin: self.signer.name().to_owned(),
            size: self.tree.len(),
            root: self.tree.root(),
            seq: self.last_seq + 1,
            at_ms: now_ms(),
        };
        Ok(StoredCheckpoint {
            seq: cp.seq,
            size: cp.size,
            note: cp.sign(&self.signer)?,
        })
    }

    /// Signs and stores a checkpoint over all committed records, if any are
    /// unsigned.
    fn checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, LedgerError> {
        if let Some(f) = self.failed.get() {
            // Nothing more will be signed: stop the T-timer, or the writer
            // loop would wake at once, forever.
            self.unsigned_since = None;
            return Err(LedgerError::Failed(f.clone()));
        }
        if self.tree.len() == self.last_size {
            self.unsigned_since = None;
            return Ok(None);
        }
        let cp = self.next_checkpoint()?;
        match self.sink.append(&[], &[], Some(&cp)) {
            Ok(()) => {
                self.signed(&cp);
                Ok(Some(cp))
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = self.failed.set(msg.clone());
                Err(LedgerError::Sink(msg))
            }
        }
    }

    fn signed(&mut self, cp: &StoredCheckpoint) {
        self.last_seq = cp.seq;
        self.last_size = cp.size;
        self.unsigned_since = None;
    }

    /// Commits `batch`; what to acknowledge once it is durable, or None if it failed (its
    /// callers have heard why).
    fn commit(&mut self, batch: Vec<Request>) -> Option<Ack> {
        if let Some(f) = self.failed.get() {
            let err = LedgerError::Failed(f.clone());
            for r in batch {
                r.reply.send(Err(err.clone()));
            }
            return None;
        }
        let base = self.tree.len();
        let mut replies = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        let mut nodes = Vec::new();
        for (i, r) in batch.into_iter().enumerate() {
            push_keeping_stored(&mut self.tree, r.leaf, &mut nodes);
            records.push(AppendRecord {
                index: base + i as u64,
                leaf_hash: r.leaf,
                bytes: r.bytes,
                id: r.id,
                kind: r.kind,
                at_ms: r.at_ms,
                fields: r.fields,
            });
            replies.push(r.reply);
        }
        let unsigned = self.tree.len() - self.last_size;
        let overdue = self
            .unsigned_since
            .is_some_and(|t| t.elapsed() >= self.config.checkpoint_interval);
        let checkpoint = if unsigned >= self.config.checkpoint_every || overdue {
            self.next_checkpoint().map(Some)
        } else {
            Ok(None)
        };
        let started = Instant::now();
        let result = checkpoint.and_then(|cp| {
            self.sink
                .append(&records, &nodes, cp.as_ref())
                .map(|()| cp)
                .map_err(|e| LedgerError::Sink(e.to_string()))
        });
        match result {
            Ok(cp) => {
                let (checkpoint_seq, checkpoint_size) = match &cp {
                    Some(c) => {
                        self.signed(c);
                        (c.seq, Some(c.size))
                    }
                    None => {
                        self.unsigned_since.get_or_insert_with(Instant::now);
                        (self.last_seq + 1, None)
                    }
                };
                Some(Ack::Records {
                    replies,
                    base,
                    checkpoint_seq,
                    checkpoint_size,
                    started,
                })
            }
            Err(e) => {
                // The sink's transaction failed, so nothing from this batch
                // is stored. Our in-memory view may still be ahead of or
                // behind the sink in ways we cannot know (e.g. an fsync error),
                // so stop accepting appends until restarted from the sink (the
                // tree, ahead now, is never read again).
                let _ = self.failed.set(e.to_string());
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
                None
            }
        }
    }
}
