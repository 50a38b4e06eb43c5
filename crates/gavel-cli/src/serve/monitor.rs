//! Live monitoring in the gateway: every decision and outcome lands in its deployment's current
//! bucket (one short lock per deployment); once a second the buckets are written to storage,
//! the signals of each deployment under thresholds are checked, and breaches are started,
//! probed, extended and ended, recorded in the ledger and alerted to the on-call webhook.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use gavel_contract::time::{Span, Timestamp};
use gavel_contract::Oncall;
use gavel_engine::approval::covering_approval;
use gavel_engine::{Breach, Decision, OnBreach};
use gavel_ledger::RecordKind;
use gavel_monitor::breach::{next_step, Action, Active, Step};
use gavel_monitor::{checks, signal_of, signals, Baseline, Bucket, Check, Config, Outcome, Series};
use gavel_store::{PruneBefore, Rollup, Store};

use super::gateway::Gateway;
use super::metrics;
use crate::context::{new_id, now};
use crate::failure::Failure;
use crate::monitoring::{
    add_row, alert_deliveries, baseline_of, config_of, observe_decision, window_start,
};

/// How long a baseline read from storage is used before it is read again (a new one recorded
/// through this gateway is seen at once: the route forgets the cached one).
const BASELINE_TTL_MS: i64 = 10_000;
/// How long rollups are kept (baselines from a traffic window read them back).
const KEEP_ROLLUPS: Span = Span::from_days(30);

/// Budget windows, idempotency keys and cooldowns are pruned a second after start and then once
/// a minute (of the once-a-second ticks), an hour after they ended: a decision in flight across
/// a window's end, or its settlement, still finds the row.
const PRUNE_EVERY_TICKS: u64 = 60;
const KEEP_EXPIRED: Span = Span::from_secs(3600);
/// A reservation never settled (a decide-API caller that reports no outcome, a gateway killed
/// mid-call) is pruned a day after its resource claims lapsed: an outcome may come that late
/// (a batch task's), and one later still is refused, the estimate staying charged.
const KEEP_UNSETTLED: Span = Span::from_days(1);
/// Waits between webhook attempts; one attempt more than there are waits.
const ALERT_BACKOFF_MS: [u64; 5] = [500, 1_000, 2_000, 4_000, 8_000];

/// One deployment's rows from other writers, by (bucket start, writer), with their bytes.
type RowsOf = HashMap<(i64, String), (Vec<u8>, Bucket)>;

/// Other writers' rows by deployment.
#[derive(Default)]
struct Others {
    rows: HashMap<String, RowsOf>,
    /// Whether the whole window has been read once.
    read_once: bool,
}
/// When a baseline was read, and what was read (None: the approval has none).
type CachedBaseline = (i64, Option<Arc<Baseline>>);

/// What one evaluation shares across deployments.
#[derive(Clone, Copy)]
struct Tick<'a> {
    gw: &'a Gateway,
    contract: &'a gavel_contract::Contract,
    cfg: &'a Config,
    from: i64,
    at: Timestamp,
}

pub struct Monitor {
    /// This process's name on the rollup rows it writes.
    writer: String,
    bucket_ms: i64,
    series: RwLock<HashMap<String, Arc<Mutex<Series>>>>,
    /// Rows other processes wrote (an earlier run of this gateway, the CLI), parsed once.
    others: Mutex<Others>,
    /// Per deployment, the first bucket after its last recovery (new breaches are judged from
    /// there on; kept in memory: after a restart, the whole window counts again).
    clean_since: Mutex<HashMap<String, i64>>,
    /// How long series keep buckets (the window, which a reload may change).
    keep_ms: std::sync::atomic::AtomicI64,
    /// Baselines by approval id, read at most every [`BASELINE_TTL_MS`].
    baselines: Mutex<HashMap<String, CachedBaseline>>,
    alerts: tokio::sync::mpsc::UnboundedSender<Alert>,
}

impl Monitor {
    /// A monitor and the receiving end of its alert queue (for [`deliver_alerts`]).
    pub fn new(
        cfg: &Config,
    ) -> Result<(Monitor, tokio::sync::mpsc::UnboundedReceiver<Alert>), Failure> {
        let (alerts, queue) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor {
            writer: new_id("gw")?,
            bucket_ms: cfg.bucket_ms,
            keep_ms: std::sync::atomic::AtomicI64::new(cfg.window_ms + 2 * cfg.bucket_ms),
            clean_since: Mutex::default(),
            series: RwLock::default(),
            others: Mutex::default(),
            baselines: Mutex::default(),
            alerts,
        };
        Ok((monitor, queue))
    }

    fn series(&self, deployment: &str) -> Option<Arc<Mutex<Series>>> {
        if let Some(s) = self.series.read().ok()?.get(deployment) {
            return Some(s.clone());
        }
        let mut all = self.series.write().ok()?;
        Some(
            all.entry(deployment.to_string())
                .or_insert_with(|| {
                    let keep = self.keep_ms.load(std::sync::atomic::Ordering::Relaxed);
                    Arc::new(Mutex::new(Series::new(self.bucket_ms, keep)))
                })
                .clone(),
        )
    }

    /// Counts a decision on a deployment the contract has (unknown names are not tracked, so a
    /// client cannot grow the map).
    pub fn record_decision(&self, decision: &Decision, known: bool) {
        if !known {
            return;
        }
        if let Some(series) = self.series(&decision.deployment) {
            if let Ok(mut s) = series.lock() {
                observe_decision(s.at(now().millis()), decision);
            }
        }
    }

    pub fn record_outcome(&self, deployment: &str, outcome: &Outcome) {
        if let Some(series) = self.series(deployment) {
            if let Ok(mut s) = series.lock() {
                s.at(now().millis()).record_outcome(outcome);
            }
        }
    }

    /// Writes changed buckets, then checks every deployment. Runs on a blocking thread.
    pub fn tick(&self, gw: &Gateway) -> Result<(), Failure> {
        let at = now();
        self.flush(&gw.store)?;
        // Not a reason to skip the signals: said, and tried again at the next tick.
        if let Err(e) = record_ended_cooldowns(gw, at) {
            tracing::error!(error = %e.message, "the end of a cooldown could not be recorded");
        }
        let engine = gw.engine();
        let contract = engine.contract();
        let cfg = config_of(&contract.policy.monitoring);
        self.keep_for(&cfg);
        let from = window_start(&cfg, at.millis());
        self.read_others(&gw.store, from, at.millis())?;
        let breaches: HashMap<String, Breach> = gw
            .store
            .breaches()?
            .into_iter()
            .map(|b| (b.deployment.clone(), b))
            .collect();
        let mut approvals: HashMap<String, Vec<gavel_engine::Approval>> = HashMap::new();
        for a in gw.store.all_approvals()? {
            approvals.entry(a.deployment.clone()).or_default().push(a);
        }
        let tick = Tick {
            gw,
            contract,
            cfg: &cfg,
            from,
            at,
        };
        for d in contract.deployments.values() {
            let active = breaches.get(&d.id);
            let covering = approvals
                .get(&d.id)
                .and_then(|a| covering_approval(a, d, at).ok());
            if covering.is_none_or(|a| a.thresholds.is_empty()) && active.is_none() {
                continue;
            }
            // One deployment's failure (a corrupt baseline, a refused record) must not stop the
            // others from being watched.
            if let Err(e) = self.evaluate(&tick, d, active, covering) {
                metrics::monitor_failure(&d.id);
                tracing::error!(deployment = %d.id, error = %e.message, "monitoring could not evaluate this deployment");
            }
        }
        Ok(())
    }

    fn evaluate(
        &self,
        tick: &Tick<'_>,
        d: &gavel_contract::Deployment,
        active: Option<&Breach>,
        covering: Option<&gavel_engine::Approval>,
    ) -> Result<(), Failure> {
        let Tick {
            gw,
            contract,
            cfg,
            from,
            at,
        } = *tick;
        let thresholds = covering.map(|a| a.thresholds.clone()).unwrap_or_default();
        let baseline = match covering {
            Some(a) => self.baseline(&gw.store, &a.id, at.millis())?,
            None => None,
        };
        let baseline = baseline.as_deref();
        // After a recovery, a new breach is judged on what came after it: the buckets that
        // caused the last one are still in the window.
        let clean_since = self.clean_since(&d.id).unwrap_or(from).max(from);
        let window = self.window(&d.id, clean_since, at.millis() + 1);
        let now_signals = signals(&window, baseline, cfg);
        let now_checks = checks(&now_signals, &thresholds, cfg);
        publish(&d.id, &now_checks);
        let as_active = active.map(monitored);
        let probe_checks = match as_active.as_ref().and_then(|a| a.probe_from(at.millis())) {
            Some(probe_from) => {
                // Whole buckets after the probing started: the bucket it started in may
                // hold what caused the breach.
                let first = probe_from.div_euclid(cfg.bucket_ms) * cfg.bucket_ms + cfg.bucket_ms;
                let probes = self.window(&d.id, first.max(from), at.millis() + 1);
                checks(&signals(&probes, baseline, cfg), &thresholds, cfg)
            }
            None => Vec::new(),
        };
        match next_step(
            as_active.as_ref(),
            covering.map(|a| a.id.as_str()),
            &now_checks,
            &probe_checks,
            cfg.min_samples,
            at.millis(),
        ) {
            Step::Nothing => {}
            Step::Start(check) => {
                if let Some(approval) = covering {
                    self.start(
                        gw,
                        contract,
                        d,
                        approval,
                        &check,
                        &now_signals.examples,
                        cfg,
                        at,
                    )?;
                }
            }
            Step::Extend { until_ms, check } => {
                if let Some(breach) = active {
                    let extended = Breach {
                        until: Some(Timestamp(until_ms)),
                        value: check.value.unwrap_or(breach.value),
                        ..breach.clone()
                    };
                    gw.ledger.record(RecordKind::CooldownStarted, at, &new_id("chg")?, json!({
                        "breach_id": breach.id, "deployment": d.id, "signal": breach.signal,
                        "threshold": breach.threshold, "value": check.value, "limit": check.limit,
                        "samples": check.samples, "until": extended.until,
                        "why": "probes after the cooldown still breach the threshold",
                    }))?;
                    gw.store.update_breach(&extended)?;
                    metrics::breach(&d.id, &breach.signal, "extended");
                    tracing::warn!(deployment = %d.id, breach_id = %breach.id, "probes still breach; cooling down again");
                }
            }
            Step::Recover { why } => {
                if let Some(breach) = active {
                    let probe = probe_checks
                        .iter()
                        .find(|c| c.threshold == breach.threshold);
                    gw.ledger.record(
                        RecordKind::Recovery,
                        at,
                        &new_id("chg")?,
                        json!({
                            "breach_id": breach.id, "deployment": d.id, "signal": breach.signal,
                            "threshold": breach.threshold, "value": probe.and_then(|c| c.value),
                            "limit": breach.limit, "samples": probe.map(|c| c.samples),
                            "since": breach.since, "why": why,
                        }),
                    )?;
                    gw.store.end_breach(&d.id)?;
                    self.set_clean_since(
                        &d.id,
                        at.millis().div_euclid(cfg.bucket_ms) * cfg.bucket_ms + cfg.bucket_ms,
                    );
                    metrics::breach(&d.id, &breach.signal, "recovered");
                    tracing::info!(deployment = %d.id, breach_id = %breach.id, %why, "recovered");
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        gw: &Gateway,
        contract: &gavel_contract::Contract,
        d: &gavel_contract::Deployment,
        approval: &gavel_engine::Approval,
        check: &Check,
        examples: &[String],
        cfg: &Config,
        at: Timestamp,
    ) -> Result<(), Failure> {
        let breach = Breach {
            id: new_id("brc")?,
            deployment: d.id.clone(),
            approval_id: approval.id.clone(),
            threshold: check.threshold.clone(),
            signal: signal_of(&check.threshold).to_string(),
            value: check.value.unwrap_or_default(),
            limit: check.limit,
            on_breach: approval.on_breach.clone(),
            since: at,
            until: match approval.on_breach {
                OnBreach::Cooldown { seconds } => Some(at.saturating_add(Span::from_secs(seconds))),
                _ => None,
            },
        };
        let use_case = contract.use_case_of(d);
        let approved_by: Vec<&str> = approval
            .signoffs
            .iter()
            .map(|s| s.principal.as_str())
            .collect();
        let alert = json!({
            "kind": "gavel.breach",
            "summary": format!("{}: {} {} {:.4} against the approved {} (window {}); on_breach {}",
                d.id, check.threshold, if check.bound == gavel_monitor::Bound::Max { "rose to" } else { "fell to" },
                breach.value, check.limit, Span::from_millis(cfg.window_ms as u64), on_breach_name(&approval.on_breach)),
            "breach_id": breach.id,
            "deployment": d.id,
            "use_case": d.use_case,
            "signal": breach.signal,
            "threshold": breach.threshold,
            "bound": check.bound,
            "value": check.value,
            "limit": check.limit,
            "samples": check.samples,
            "window": Span::from_millis(cfg.window_ms as u64).to_string(),
            "since": at.to_rfc3339(),
            "approval_id": approval.id,
            "approved_by": approved_by,
            "on_breach": approval.on_breach,
            "until": breach.until.map(Timestamp::to_rfc3339),
            "owner": use_case.map(|u| u.owner.clone()),
            "severity": use_case.and_then(|u| u.oncall.severity_map.get("breach").cloned()),
            "runbook": use_case.and_then(|u| u.oncall.runbook.clone()),
            "example_decision_ids": examples,
        });
        // Stored first, so that a breach that is already in force (another evaluation got there)
        // is not recorded twice; taken back if the ledger refuses the record, so that nothing
        // acts on a breach the ledger does not hold.
        if !gw.store.start_breach(&breach)? {
            return Ok(());
        }
        if let Err(e) = gw.ledger.record(RecordKind::Breach, at, &breach.id, &alert) {
            gw.store.end_breach(&d.id)?;
            return Err(e);
        }
        metrics::breach(&d.id, &breach.signal, "started");
        tracing::warn!(deployment = %d.id, breach_id = %breach.id, threshold = %breach.threshold, value = breach.value, limit = breach.limit, "threshold breached");
        if let Some(oncall) = use_case.map(|u| u.oncall.clone()) {
            let _ = self.alerts.send(Alert {
                oncall,
                body: alert,
            });
        }
        Ok(())
    }

    fn baseline(
        &self,
        store: &dyn Store,
        approval_id: &str,
        now_ms: i64,
    ) -> Result<Option<Arc<Baseline>>, Failure> {
        let mut cache = self
            .baselines
            .lock()
            .map_err(|_| Failure::storage("the baseline cache is unavailable"))?;
        if let Some((read_at, baseline)) = cache.get(approval_id) {
            if now_ms - read_at < BASELINE_TTL_MS {
                return Ok(baseline.clone());
            }
        }
        let baseline = baseline_of(store, approval_id)?.map(Arc::new);
        cache.insert(approval_id.to_string(), (now_ms, baseline.clone()));
        Ok(baseline)
    }

    /// Follows the window of the contract in force (a reload may lengthen it).
    fn keep_for(&self, cfg: &Config) {
        let keep = cfg.window_ms + 2 * cfg.bucket_ms;
        let before = self
            .keep_ms
            .swap(keep, std::sync::atomic::Ordering::Relaxed);
        if before != keep {
            if let Ok(all) = self.series.read() {
                for series in all.values() {
                    if let Ok(mut s) = series.lock() {
                        s.keep(keep);
                    }
                }
            }
        }
    }

    fn clean_since(&self, deployment: &str) -> Option<i64> {
        self.clean_since.lock().ok()?.get(deployment).copied()
    }

    fn set_clean_since(&self, deployment: &str, from_ms: i64) {
        if let Ok(mut all) = self.clean_since.lock() {
            all.insert(deployment.to_string(), from_ms);
        }
    }

    /// Pages again for breaches still in force whose alert the ledger does not show delivered
    /// (the gateway stopped while it was being sent, or every attempt failed).
    pub fn resend_undelivered(&self, gw: &Gateway) -> Result<usize, Failure> {
        let reader = gw.ledger_reader()?;
        let mut resent = 0;
        for breach in gw.store.breaches()? {
            let delivered = alert_deliveries(&reader, &breach.deployment)?
                .iter()
                .any(|r| r["action"] == "alert_delivered" && r["breach_id"] == breach.id.as_str());
            if delivered {
                continue;
            }
            let recorded = reader
                .record_by_id(&breach.id)
                .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))?;
            let oncall = gw
                .engine()
                .contract()
                .deployment(&breach.deployment)
                .and_then(|d| {
                    gw.engine()
                        .contract()
                        .use_case_of(d)
                        .map(|u| u.oncall.clone())
                });
            if let (Some(entry), Some(oncall)) = (recorded, oncall) {
                let _ = self.alerts.send(Alert {
                    oncall,
                    body: entry.record.body,
                });
                resent += 1;
            }
        }
        Ok(resent)
    }

    /// Drops the cached baseline of an approval (a new one was just recorded).
    pub fn forget_baseline(&self, approval_id: &str) {
        if let Ok(mut cache) = self.baselines.lock() {
            cache.remove(approval_id);
        }
    }

    fn flush(&self, store: &dyn Store) -> Result<(), Failure> {
        let all: Vec<(String, Arc<Mutex<Series>>)> = match self.series.read() {
            Ok(m) => m.iter().map(|(d, s)| (d.clone(), s.clone())).collect(),
            Err(_) => return Err(Failure::storage("the signal series are unavailable")),
        };
        let mut rows = Vec::new();
        for (deployment, series) in all {
            let dirty = match series.lock() {
                Ok(mut s) => s.take_dirty(),
                Err(_) => continue,
            };
            for (start_ms, bucket) in dirty {
                let body = bucket.to_bytes().map_err(Failure::storage)?;
                rows.push(Rollup {
                    deployment: deployment.clone(),
                    start_ms,
                    writer: self.writer.clone(),
                    body,
                });
            }
        }
        if !rows.is_empty() {
            store.save_rollups(&rows)?;
        }
        Ok(())
    }

    /// Brings other writers' rows up to date: all of the window the first time, then only the
    /// last two buckets (writers only add to the bucket of the moment), dropping rows that
    /// left the window. A row is decoded again only when its bytes changed.
    fn read_others(&self, store: &dyn Store, from_ms: i64, now_ms: i64) -> Result<(), Failure> {
        let mut others = self
            .others
            .lock()
            .map_err(|_| Failure::storage("the rollup cache is unavailable"))?;
        let since = match others.read_once {
            true => from_ms.max(now_ms - 2 * self.bucket_ms),
            false => from_ms,
        };
        for row in store.rollups_since(since, None)? {
            if row.writer == self.writer {
                continue;
            }
            let rows = others.rows.entry(row.deployment.clone()).or_default();
            let key = (row.start_ms, row.writer.clone());
            if rows.get(&key).is_some_and(|(body, _)| *body == row.body) {
                continue;
            }
            let mut decoded = HashMap::new();
            add_row(&mut decoded, &row);
            let bucket = decoded.remove(&row.deployment).unwrap_or_default();
            rows.insert(key, (row.body, bucket));
        }
        others.read_once = true;
        let bucket_ms = self.bucket_ms;
        for rows in others.rows.values_mut() {
            rows.retain(|(start, _), _| *start + bucket_ms > from_ms);
        }
        others.rows.retain(|_, rows| !rows.is_empty());
        Ok(())
    }

    /// Every deployment's window now, as the last evaluation saw other writers' rows.
    pub fn windows(&self, monitoring: &gavel_contract::Monitoring) -> HashMap<String, Bucket> {
        let cfg = config_of(monitoring);
        let now_ms = now().millis();
        let from = window_start(&cfg, now_ms);
        let mut names: HashSet<String> = match self.series.read() {
            Ok(all) => all.keys().cloned().collect(),
            Err(_) => HashSet::new(),
        };
        if let Ok(others) = self.others.lock() {
            names.extend(others.rows.keys().cloned());
        }
        names
            .into_iter()
            .map(|d| {
                let window = self.window(&d, from, now_ms + 1);
                (d, window)
            })
            .collect()
    }

    /// This process's buckets plus other writers' over [from_ms, to_ms).
    fn window(&self, deployment: &str, from_ms: i64, to_ms: i64) -> Bucket {
        let mut sum = self
            .series(deployment)
            .and_then(|s| s.lock().ok().map(|s| s.window(from_ms, to_ms)))
            .unwrap_or_default();
        if let Ok(others) = self.others.lock() {
            for ((start, _), (_, bucket)) in others.rows.get(deployment).into_iter().flatten() {
                if *start + self.bucket_ms > from_ms && *start < to_ms {
                    sum.merge(bucket);
                }
            }
        }
        sum
    }
}

fn on_breach_name(on_breach: &OnBreach) -> String {
    match on_breach {
        OnBreach::Cooldown { seconds } => format!("cooldown {}", Span::from_secs(*seconds)),
        OnBreach::Fallback => "fallback".into(),
        OnBreach::Block => "block until re-approved".into(),
    }
}

fn monitored(b: &Breach) -> Active {
    Active {
        approval_id: b.approval_id.clone(),
        threshold: b.threshold.clone(),
        action: match b.on_breach {
            OnBreach::Cooldown { seconds } => Action::Cooldown {
                ms: (seconds * 1000) as i64,
            },
            OnBreach::Fallback => Action::Fallback,
            OnBreach::Block => Action::Block,
        },
        since_ms: b.since.millis(),
        until_ms: b.until.map(Timestamp::millis),
    }
}

fn publish(deployment: &str, checks: &[Check]) {
    for c in checks {
        if let (Some(value), Some((name, _, _))) = (
            c.value,
            gavel_monitor::THRESHOLDS
                .iter()
                .find(|(n, _, _)| *n == c.threshold),
        ) {
            metrics::signal(deployment, name, value);
        }
    }
}

/// Checks once a second until `stop` ([`final_flush`] writes what the drain adds).
pub async fn run(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks: u64 = 0;
    // Pruning trusts the wall clock; this catches it jumping (set by hand, or a VM resumed),
    // which would otherwise delete windows and idempotency keys still in force.
    let (started_wall, started) = (now(), std::time::Instant::now());
    loop {
        ticks += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
        let worker = gw.clone();
        match tokio::task::spawn_blocking(move || worker.monitor.tick(&worker)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e.message, "monitoring could not evaluate the signals")
            }
            Err(e) => tracing::error!(error = %e, "monitoring stopped unexpectedly"),
        }
        let prune_expired = (ticks - 1).is_multiple_of(PRUNE_EVERY_TICKS);
        let wall_elapsed = now().millis().saturating_sub(started_wall.millis());
        let clock_steady = (wall_elapsed - started.elapsed().as_millis() as i64).abs() < 60_000;
        if prune_expired && !clock_steady {
            tracing::warn!("the wall clock moved apart from the time elapsed since start; ended budget windows, idempotency keys, cooldowns and reservations are not pruned until a restart");
        }
        let worker = gw.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            if let Err(e) = worker
                .store
                .prune_rollups(now().saturating_sub(KEEP_ROLLUPS).millis())
            {
                tracing::warn!(error = %e, "old rollups could not be pruned");
            }
            // Ended cooldowns go only once their end is in the ledger.
            let ended_recorded = || match record_ended_cooldowns(&worker, now()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e.message, "ended cooldowns are not recorded yet; nothing is pruned this time");
                    false
                }
            };
            if prune_expired && clock_steady && ended_recorded() {
                let cutoffs = PruneBefore {
                    ended_ms: now().saturating_sub(KEEP_EXPIRED).millis(),
                    unsettled_ms: now().saturating_sub(KEEP_UNSETTLED).millis(),
                };
                if let Err(e) = worker.store.prune_expired(cutoffs) {
                    tracing::warn!(error = %e, "ended budget windows, idempotency keys, cooldowns and reservations could not be pruned");
                }
            }
        });
        if pruned.await.is_err() {
            tracing::error!("pruning stopped unexpectedly");
        }
    }
}

/// Records, once, the end of each cooldown whose time ran out (a principal's abuse cooldown; a
/// breach's cooldown ends in a `recovery` record, or is extended). Ended while no gateway ran,
/// it is recorded at the next start; the prune, which deletes ended cooldowns, runs only after
/// this has succeeded.
fn record_ended_cooldowns(gw: &Gateway, at: Timestamp) -> Result<(), Failure> {
    for (id, cooldown) in gw.store.ended_cooldowns_unrecorded(at)? {
        // Under the principal it cooled down, as its start was, so that a query by principal
        // finds both.
        let principal = match &cooldown.scope {
            gavel_engine::Scope::Principal(p) => p.clone(),
            other => other.key(),
        };
        let body = crate::ledger::change(
            &principal,
            "cooldown_ended",
            json!({ "cooldown": cooldown, "why": "its time ran out" }),
        );
        gw.ledger
            .record(RecordKind::CooldownEnded, at, &new_id("chg")?, body)?;
        gw.store.cooldown_end_recorded(id)?;
    }
    Ok(())
}

/// Writes the last buckets: at shutdown, once the decider has settled the last outcomes (those
/// of the requests the drain finished, and of the calls cut at its end).
pub fn final_flush(gw: &Gateway) {
    if let Err(e) = gw.monitor.flush(&gw.store) {
        tracing::error!(error = %e.message, "the last monitoring buckets could not be written");
    }
}

/// Where `oncall`'s alerts go: the URL the contract writes, or the one in the environment
/// variable it names (`${env:NAME}`); why there is none, naming the variable.
pub fn webhook_url(oncall: &Oncall) -> Result<String, String> {
    let Some(name) = oncall.webhook_env() else {
        return Ok(oncall.webhook.clone());
    };
    match std::env::var(name) {
        Ok(url) if gavel_contract::is_http_url(&url) => Ok(url),
        Ok(_) => Err(format!(
            "the environment variable {name} does not hold an http(s) URL"
        )),
        Err(_) => Err(format!("the environment variable {name} is not set")),
    }
}

/// A breach's alert on its way to the use case's on-call webhook.
pub struct Alert {
    oncall: Oncall,
    body: Value,
}

/// Posts each alert to its webhook, retrying with backoff, and records in the ledger whether
/// the on-call was reached (the webhook's host only: its path may carry a token).
pub async fn deliver_alerts(
    gw: Arc<Gateway>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Alert>,
) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        tracing::error!("cannot build the alert client; alerts stay in the ledger only");
        return;
    };
    let mut sent = HashSet::new();
    while let Some(Alert {
        oncall,
        body: alert,
    }) = queue.recv().await
    {
        let (webhook, origin) = (webhook_url(&oncall), oncall.webhook_origin());
        let breach_id = alert["breach_id"].as_str().unwrap_or_default().to_string();
        if !sent.insert(breach_id.clone()) {
            continue;
        }
        let gw = gw.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let mut attempts = 0;
            let mut last = String::new();
            let delivered = loop {
                let webhook = match &webhook {
                    Ok(url) => url,
                    Err(unset) => {
                        last.clone_from(unset);
                        break false;
                    }
                };
                attempts += 1;
                let request = http
                    .post(webhook.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(alert.to_string());
                match request.send().await {
                    Ok(r) if r.status().is_success() => break true,
                    Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                    Err(e) => {
                        last = if e.is_timeout() {
                            "timed out".into()
                        } else if e.is_connect() {
                            "connection failed".into()
                        } else {
                            "request failed".into()
                        }
                    }
                }
                match ALERT_BACKOFF_MS.get(attempts - 1) {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                    None => break false,
                }
            };
            metrics::alert(if delivered { "delivered" } else { "failed" });
            let details = json!({ "breach_id": breach_id, "deployment": alert["deployment"], "webhook_origin": origin, "attempts": attempts, "delivered": delivered, "last_error": (!delivered).then_some(last) });
            let record = tokio::task::spawn_blocking(move || {
                gw.ledger.record_change(
                    RecordKind::Admin,
                    now(),
                    "gavel",
                    if delivered {
                        "alert_delivered"
                    } else {
                        "alert_failed"
                    },
                    details,
                )
            });
            if !matches!(record.await, Ok(Ok(_))) {
                tracing::error!("the alert delivery could not be recorded");
            }
        });
    }
}
