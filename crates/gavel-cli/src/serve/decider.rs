//! The gateway's decider: one thread makes every decision, a batch at a time, each batch in one
//! store transaction.
//!
//! Requests queue here, and so do the outcomes of answered requests. The thread takes whatever
//! has queued (at most [`MAX_BATCH`]; outcomes alone wait up to [`OUTCOME_WAIT`] for a request
//! to share its transaction), settles the outcomes and decides the requests inside one
//! `SqliteStore::batch`, commits, then hands each record to the ledger and answers. Under load
//! many decisions share one write lock, one commit and one WAL write of each budget page; a
//! lone decision waits for nobody. The batch holds SQLite's write lock from its first write to
//! its commit, so the ledger's next commit (same file) waits that long: a few decisions' CPU.
//! What needs no state stays out of this thread: each request's content scanners and its
//! texts' token count run on its own task before it is queued (`Engine::prescan`), so that a
//! long prompt does not hold up every decision queued behind it.
//!
//! Before, each decision took a blocking thread and a transaction of its own, and the threads
//! queued on the store's connection and on SQLite's write lock: at 2,000 req/s that queue
//! (futex waits and wake-ups, busy-handler sleeps) cost more of the gateway's CPU than deciding
//! (docs/gateway.md, "Measured").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use gavel_engine::{DecideInput, DecideRequest, Decision, Engine, Prescanned, Verdict};
use gavel_ledger::appender::Durable;

use super::gateway::{Finished, Gateway, FALLBACK_FOR};
use super::metrics;
use crate::cmd::decide::{submit_async, Submitted};
use crate::context::{new_id, now};
use crate::failure::Failure;

/// Decisions and outcomes per store transaction at most: enough to share one commit among
/// everything a busy gateway has queued, few enough that the write lock is not held for long.
const MAX_BATCH: usize = 64;

/// How long outcomes with no decision beside them wait for one before they are settled alone
/// (the ledger's outcome records wait as long for a decision's commit: `background_delay`).
/// Settled in the next decision's transaction, an outcome costs no transaction of its own:
/// it writes the budget and reservation pages that decision writes anyway. The decision still
/// sees it settled (outcomes are settled first), so budgets answer as if it had been settled
/// at once. What follows the settling comes up to this late: readers of the store outside the
/// decider (status), monitoring's count (which may fall in the next bucket) and the outcome's
/// ledger record (its `at_ms` is when it was settled).
const OUTCOME_WAIT: Duration = Duration::from_millis(100);

/// Requests with at most this many bytes of text are scanned and counted on the async worker
/// that reads them (about 25 us a kilobyte of English, 0.4 ms at this size; base64 counts at
/// about 50 us a kilobyte); longer ones on a blocking thread.
const PRESCAN_INLINE_UP_TO: usize = 16 << 10;

fn text_bytes(request: &DecideRequest) -> usize {
    request.texts().map(|(_, text)| text.len()).sum()
}

/// A decision whose store writes are committed and whose record is submitted to the ledger.
pub type Decided = Result<(Decision, Submitted<Durable>), Failure>;

/// What [`Decider::decide`] came back with.
pub enum Answered {
    /// In time: the decision and its submitted record, or why there is none.
    InTime(Decided),
    /// The deadline passed first. With the decision the decider had handed over by then,
    /// which its caller must abandon ([`super::gateway::Gateway::abandon`]); without, the
    /// decider abandons what it decides, or decides nothing ([`Job::wanted`]).
    Late(Option<(Decision, Submitted<Durable>)>),
}

/// The queue into the decider thread, and the thread.
pub struct Decider {
    work: Sender<Work>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The decider thread's end of the queue.
pub struct Queue(Receiver<Work>);

enum Work {
    Decide(Job),
    Settle(Finished),
    /// Handle what came before, then say so.
    Fence(std::sync::mpsc::Sender<()>),
    /// Handle what came before, then stop.
    Stop,
}

struct Job {
    engine: Arc<Engine>,
    request: Arc<DecideRequest>,
    /// The scanners' findings and the texts' token count, worked out on the caller's task:
    /// neither needs state, so both stay out of the one thread every decision goes through.
    prescanned: Option<Prescanned>,
    principal: String,
    /// A call through the proxy, whose ALLOW the gateway settles itself: registered
    /// ([`Gateway::will_settle`]) as it is committed, before anyone can drop it.
    by_gateway: bool,
    reply: oneshot::Sender<Decided>,
}

impl Job {
    /// Whether its caller still waits: it stops at the decision deadline (`Gateway::decide`),
    /// or if its task panicked.
    fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }

    /// Hands the caller its decision; the decision and its record come back if nobody waits
    /// for them any more.
    fn deliver(
        self,
        decision: Decision,
        submitted: Submitted<Durable>,
    ) -> Option<(Decision, Submitted<Durable>)> {
        match self.reply.send(Ok((decision, submitted))) {
            Err(Ok(nobody_took)) => Some(nobody_took),
            Ok(()) | Err(Err(_)) => None,
        }
    }

    /// Tells the caller its request could not be decided (nothing was recorded, so nothing is
    /// left to release if nobody listens any more).
    fn refuse(self, failure: Failure) {
        let _ = self.reply.send(Err(failure));
    }
}

impl Decider {
    /// The queue, and its other end for [`Decider::start`].
    pub fn new() -> (Decider, Queue) {
        let (work, queue) = channel();
        let decider = Decider {
            work,
            thread: Mutex::new(None),
        };
        (decider, Queue(queue))
    }

    /// Starts the decider thread. It holds the gateway weakly (the gateway owns the decider).
    pub fn start(&self, queue: Queue, gateway: Weak<Gateway>) -> Result<(), Failure> {
        let thread = std::thread::Builder::new()
            .name("gavel-decider".into())
            .spawn(move || run(&queue.0, &gateway))
            .map_err(|e| Failure::storage(format!("cannot start the decider thread: {e}")))?;
        *self
            .thread
            .lock()
            .map_err(|_| Failure::storage("the decider is poisoned"))? = Some(thread);
        Ok(())
    }

    /// Handles everything queued so far, then stops the thread and waits for it: at shutdown,
    /// once no request is left, so that the last outcomes are settled and recorded before the
    /// ledger closes.
    pub fn stop(&self) {
        let _ = self.work.send(Work::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the decider thread ended with a panic");
            }
        }
    }

    /// Returns once everything queued before it is handled (at most about 15 s): at shutdown,
    /// once no request is left, so that what the decider had in hand is registered or
    /// abandoned before the gateway finishes the calls that were cut
    /// ([`Gateway::close_open_calls`]).
    pub fn fence(&self) {
        let (done, handled) = std::sync::mpsc::channel();
        if self.work.send(Work::Fence(done)).is_ok() {
            let _ = handled.recv_timeout(Duration::from_secs(15));
        }
    }

    /// Queues an answered request's outcome for settling and recording. If the decider has
    /// stopped, the outcome is logged and dropped: its reservation stays charged at the
    /// estimate (its resources are freed when the reservation's time runs out).
    pub fn settle(&self, finished: Finished) {
        if self.work.send(Work::Settle(finished)).is_err() {
            tracing::error!("an outcome arrived after the decider stopped; it was not recorded");
        }
    }

    /// Decides `request` on the decider thread: its store writes are committed and its record
    /// is submitted when this returns a decision in time; past `deadline`, it is late.
    pub async fn decide(
        &self,
        engine: Arc<Engine>,
        request: Arc<DecideRequest>,
        principal: &str,
        by_gateway: bool,
        deadline: tokio::time::Instant,
    ) -> Answered {
        let refused = |why: &str| Answered::InTime(Err(Failure::storage(why)));
        let prescanned = if text_bytes(&request) <= PRESCAN_INLINE_UP_TO {
            engine.prescan(&request)
        } else {
            // A long text ties up its thread for milliseconds: not one of the async workers,
            // which serve every other connection meanwhile.
            let (engine, request) = (engine.clone(), request.clone());
            let scanning = tokio::task::spawn_blocking(move || engine.prescan(&request));
            match tokio::time::timeout_at(deadline, scanning).await {
                Ok(Ok(scanned)) => scanned,
                Ok(Err(_)) => return refused("scanning the request failed (a panic)"),
                // Nothing decided yet, so nothing to abandon.
                Err(_) => return Answered::Late(None),
            }
        };
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            prescanned: Some(prescanned),
            engine,
            request,
            principal: principal.to_string(),
            by_gateway,
            reply,
        };
        if self.work.send(Work::Decide(job)).is_err() {
            return refused("the decider has stopped");
        }
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(Ok(decided)) => Answered::InTime(decided),
            Ok(Err(_)) => refused("the decision was lost: the decider failed while deciding it"),
            Err(_) => {
                // Closed first, so that the decider either finds nobody waiting or has already
                // handed over what it decided, which is taken here.
                answer.close();
                Answered::Late(answer.try_recv().ok().and_then(Result::ok))
            }
        }
    }
}

/// What the decider took from its queue for one round.
#[derive(Default)]
struct Taken {
    jobs: Vec<Job>,
    outcomes: Vec<Finished>,
    fences: Vec<std::sync::mpsc::Sender<()>>,
    stop: bool,
}

impl Taken {
    fn add(&mut self, work: Work) {
        match work {
            Work::Decide(job) => self.jobs.push(job),
            Work::Settle(finished) => self.outcomes.push(finished),
            Work::Fence(done) => self.fences.push(done),
            Work::Stop => self.stop = true,
        }
    }
}

/// Until stopped, or until the gateway is gone (and with it the queue's sending end).
fn run(queue: &Receiver<Work>, gateway: &Weak<Gateway>) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = queue.recv() else {
            return;
        };
        let mut taken = Taken::default();
        for work in std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1)) {
            taken.add(work);
        }
        if taken.jobs.is_empty() && !taken.stop {
            let deadline = Instant::now() + OUTCOME_WAIT;
            while taken.jobs.is_empty() && !taken.stop && taken.outcomes.len() < MAX_BATCH {
                match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(work) => taken.add(work),
                    Err(_) => break,
                }
            }
            let room = MAX_BATCH.saturating_sub(taken.jobs.len() + taken.outcomes.len());
            for work in queue.try_iter().take(room) {
                taken.add(work);
            }
        }
        let Taken {
            jobs,
            outcomes,
            fences,
            stop,
        } = taken;
        stopping = stop;
        let Some(gw) = gateway.upgrade() else {
            if !outcomes.is_empty() {
                tracing::error!(
                    outcomes = outcomes.len(),
                    "outcomes arrived after the gateway stopped; they were not recorded"
                );
            }
            return;
        };
        // A panic fails the decisions in hand (their callers see them lost and refuse, fail
        // closed) and rolls their transaction back (`Batch`'s drop, which also makes the
        // store's connection usable again); the next requests are decided as usual.
        let batches = AssertUnwindSafe(|| decide_in_batches(&gw, jobs, outcomes));
        if catch_unwind(batches).is_err() {
            tracing::error!("a batch of decisions failed with a panic; they were refused");
        }
        for done in fences {
            let _ = done.send(());
        }
    }
}

/// Settles `outcomes` and decides `jobs` in as few store transactions as it can: one, unless a
/// decision starts a cooldown (the next decisions must see it, and reads of governance see only
/// what is committed) or SQLite rolls a transaction back on its own. Outcomes are settled
/// first, so that what they give back is there for the decisions.
fn decide_in_batches(gw: &Arc<Gateway>, jobs: Vec<Job>, outcomes: Vec<Finished>) {
    let mut waiting = jobs.into_iter();
    let mut outcomes = Some(outcomes).filter(|o| !o.is_empty());
    while waiting.len() > 0 || outcomes.is_some() {
        let batch = match gw.store.batch() {
            Ok(batch) => batch,
            Err(e) => {
                let why = format!("the store cannot take decisions: {e}");
                for job in waiting {
                    job.refuse(Failure::storage(why.clone()));
                }
                if let Some(outcomes) = outcomes {
                    tracing::error!(error = %why, "settling usage failed");
                    gw.record_settled(outcomes);
                }
                return;
            }
        };
        let settled = outcomes.take();
        let mut settled_ids = Vec::new();
        let mut decided: Vec<(Job, Decision)> = Vec::new();
        {
            let state = batch.state();
            if let Some(settled) = &settled {
                settled_ids = gw.settle(&batch, settled);
            }
            for mut job in waiting.by_ref() {
                // Given up at the deadline before it was decided: never decided, never recorded.
                if !job.wanted() {
                    continue;
                }
                let decision = match new_id("dec") {
                    Ok(decision_id) => {
                        let input = DecideInput {
                            request: &job.request,
                            principal: &job.principal,
                            decision_id,
                            now: now(),
                        };
                        let prescanned = job.prescanned.take();
                        job.engine.decide_prescanned(&state, input, prescanned)
                    }
                    Err(failure) => {
                        job.refuse(failure);
                        continue;
                    }
                };
                let started_cooldown = decision.started_cooldown.is_some();
                decided.push((job, decision));
                if started_cooldown || !batch.is_intact() {
                    break;
                }
            }
        }
        let committed = batch.commit();
        match &committed {
            Ok(()) => {
                if !decided.is_empty() {
                    metrics::decision_batch(decided.len());
                }
                for (job, decision) in decided {
                    let by_gateway = job.by_gateway && decision.verdict == Verdict::Allow;
                    let mut record = decision.record();
                    if job.by_gateway {
                        // Only the proxy sets this: a caller's metadata reaches no record.
                        record = record.fallback_for(
                            job.request.metadata.get(FALLBACK_FOR).map(String::as_str),
                        );
                    }
                    if by_gateway {
                        // No caller reports this outcome: it is the gateway's to settle.
                        record = record.settled_by_gateway();
                    }
                    let submitted = submit_async(&gw.ledger, &decision, record);
                    if by_gateway {
                        gw.will_settle(&job.engine, &job.request, &decision);
                    }
                    let (engine, request) = (job.engine.clone(), job.request.clone());
                    // Given up while it was decided: withdrawn once its record lands.
                    if let Some((decision, submitted)) = job.deliver(decision, submitted) {
                        gw.abandon(engine, request, decision, submitted.durable());
                    }
                }
            }
            Err(e) => {
                let why = format!("the store could not hold the decision: {e}");
                for (job, _) in decided {
                    job.refuse(Failure::storage(why.clone()));
                }
            }
        }
        // After the answers: recording outcomes is not on any request's path.
        if let Some(settled) = settled {
            match &committed {
                Ok(()) => gw.settled(&settled_ids),
                Err(e) => {
                    tracing::error!(error = %e, "settling usage failed: the batch was not committed");
                }
            }
            gw.record_settled(settled);
        }
    }
}
