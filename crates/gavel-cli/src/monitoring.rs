//! Monitoring glue shared by the CLI and the gateway: what callers report about outcomes, the
//! contract's settings as gavel-monitor's config, windows rebuilt from stored rollups, and each
//! deployment's status (state, signals against the covering approval's thresholds).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use gavel_contract::time::Timestamp;
use gavel_contract::{Contract, Monitoring};
use gavel_engine::approval::{covering_approval, requirements_moved};
use gavel_engine::{
    relevant_scopes, Approval, Breach, Decision, OnBreach, ReasonCode, Usage, Verdict,
};
use gavel_monitor::{
    checks, signals, Baseline, Bucket, Check, Config, FeatureValue, Outcome, Signals,
};
use gavel_store::{Rollup, Store, StoredBaseline};

use crate::failure::Failure;

/// What a caller may report with an outcome or feedback, beyond usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reported {
    /// How long the action took, end to end, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Whether it succeeded (false counts towards the error rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// Whether the approved fallback served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_used: Option<bool>,
    /// An accuracy proxy in [0, 1] (a rating, a grader's score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// What the model predicted, for a scoring deployment: true/false or 1/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Value>,
    /// The ground truth once known: true/false or 1/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Value>,
    /// The group the subject belongs to, for fairness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Declared features (numbers, strings or booleans) for drift.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub features: Map<String, Value>,
}

/// Largest number of declared features one report may carry.
const MAX_FEATURES: usize = 64;
/// Longest feature name and category, in bytes.
const MAX_NAME: usize = 64;
const MAX_CATEGORY: usize = 128;
/// Largest magnitude of a reported number (latency in ms, a feature's value).
const MAX_NUMBER: f64 = 1e12;
/// Features gavel computes itself; a report may not feed them.
pub const BUILT_IN_FEATURES: [&str; 3] = ["prompt_tokens", "output_tokens", "injection_score"];

impl Reported {
    /// Checks every field; the error names the field and what it must be.
    pub fn check(&self) -> Result<(), String> {
        if self
            .latency_ms
            .is_some_and(|ms| !ms.is_finite() || !(0.0..=MAX_NUMBER).contains(&ms))
        {
            return Err(format!(
                "`latency_ms` must be a number from 0 to {MAX_NUMBER}"
            ));
        }
        if self.score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
            return Err("`score` must be between 0 and 1".into());
        }
        binary("prediction", self.prediction.as_ref())?;
        binary("label", self.label.as_ref())?;
        // Without the prediction beside them, a group or a label would be dropped silently.
        if self.prediction.is_none() && (self.group.is_some() || self.label.is_some()) {
            return Err("`group` and `label` need the `prediction` in the same report (fairness and labelled accuracy compare them with it)".into());
        }
        if self.group.as_ref().is_some_and(|g| {
            g.is_empty() || g.len() > MAX_CATEGORY || g == gavel_monitor::sketch::OTHER
        }) {
            return Err(format!(
                "`group` must be 1 to {MAX_CATEGORY} bytes and not `{}`",
                gavel_monitor::sketch::OTHER
            ));
        }
        if self.features.len() > MAX_FEATURES {
            return Err(format!("at most {MAX_FEATURES} features per report"));
        }
        for (name, value) in &self.features {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(format!("feature names are 1 to {MAX_NAME} bytes"));
            }
            if BUILT_IN_FEATURES.contains(&name.as_str()) {
                return Err(format!(
                    "feature `{name}` is computed by gavel; name yours otherwise"
                ));
            }
            match feature_value(value) {
                Some(FeatureValue::Number(n)) if n.abs() > MAX_NUMBER => {
                    return Err(format!(
                        "feature `{name}`: numbers are at most {MAX_NUMBER} in magnitude"
                    ))
                }
                Some(FeatureValue::Category(c))
                    if c.is_empty()
                        || c.len() > MAX_CATEGORY
                        || c == gavel_monitor::sketch::OTHER =>
                {
                    return Err(format!(
                        "feature `{name}`: a category is 1 to {MAX_CATEGORY} bytes and not `{}`",
                        gavel_monitor::sketch::OTHER
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "feature `{name}` must be a finite number, a string or a boolean"
                    ))
                }
            }
        }
        // Reports are recorded in the ledger as they are, and no secret may be in a record.
        let texts = self
            .group
            .iter()
            .chain(self.features.keys())
            .map(String::as_str)
            .chain(self.features.values().filter_map(Value::as_str));
        if let Some(rule) = texts.into_iter().find_map(gavel_engine::secret_in_text) {
            return Err(format!("a `group` or a feature holds what looks like a secret ({rule}); reports are recorded in the ledger as they are, so leave the secret out"));
        }
        Ok(())
    }

    /// Whether it judges the decision (a score, a prediction, a label or a group): that may be
    /// counted once per decision, with the outcome or with the feedback.
    pub fn judges(&self) -> bool {
        self.score.is_some()
            || self.prediction.is_some()
            || self.label.is_some()
            || self.group.is_some()
    }

    pub fn is_empty(&self) -> bool {
        serde_json::to_value(self).is_ok_and(|v| v.as_object().is_some_and(Map::is_empty))
    }

    /// The observation for monitoring. `executed`: this reports a run (an outcome), not only a
    /// judgement on one (feedback).
    pub fn outcome(
        &self,
        decision_id: &str,
        executed: bool,
        usage: Option<&Usage>,
        usd_micros: u64,
    ) -> Outcome {
        let mut features: Vec<(String, FeatureValue)> = self
            .features
            .iter()
            .filter_map(|(name, v)| feature_value(v).map(|f| (name.clone(), f)))
            .collect();
        if let Some(u) = usage.filter(|u| u.prompt_tokens + u.completion_tokens > 0) {
            features.push((
                "prompt_tokens".into(),
                FeatureValue::Number(u.prompt_tokens as f64),
            ));
            features.push((
                "output_tokens".into(),
                FeatureValue::Number(u.completion_tokens as f64),
            ));
        }
        Outcome {
            decision_id: Some(decision_id.to_string()),
            executed,
            latency_ms: self.latency_ms,
            error: self.success == Some(false),
            fallback: self.fallback_used == Some(true),
            spend_usd_micros: usd_micros,
            snapshot_changed: false,
            score: self.score,
            features,
            group: self.group.clone(),
            prediction: self.prediction.as_ref().and_then(as_bool),
            label: self.label.as_ref().and_then(as_bool),
        }
    }
}

fn binary(field: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        Some(v) if as_bool(v).is_none() => Err(format!("`{field}` must be true/false or 1/0")),
        _ => Ok(()),
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Some(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Some(false),
        _ => None,
    }
}

pub fn feature_value(v: &Value) -> Option<FeatureValue> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(FeatureValue::Number),
        Value::String(s) => Some(FeatureValue::Category(s.clone())),
        Value::Bool(b) => Some(FeatureValue::Category(b.to_string())),
        _ => None,
    }
}

/// The contract's `policy.monitoring` as gavel-monitor's config.
pub fn config_of(m: &Monitoring) -> Config {
    Config {
        window_ms: m.window.millis() as i64,
        bucket_ms: m.bucket.millis().max(1000) as i64,
        min_samples: m.min_samples,
        drift_bins: m.drift_bins as usize,
        drift_min_samples: m.drift_min_samples,
        min_group_size: m.min_group_size,
    }
}

/// Adds one stored row's bucket to `windows` (rows that do not parse are skipped with a log
/// line: one bad row must not hide every other signal).
pub fn add_row(windows: &mut HashMap<String, Bucket>, row: &Rollup) {
    match Bucket::from_bytes(&row.body) {
        Ok(bucket) => windows
            .entry(row.deployment.clone())
            .or_default()
            .merge(&bucket),
        Err(e) => {
            tracing::warn!(deployment = %row.deployment, start_ms = row.start_ms, error = %e, "a stored signal rollup does not parse; skipped")
        }
    }
}

/// Each deployment's window over the last `window_ms` (or only `only`'s), from stored
/// rollups of every writer. Rows are parsed on every core: with a thousand deployments the
/// window is tens of thousands of rows.
pub fn stored_windows(
    store: &dyn Store,
    cfg: &Config,
    now: Timestamp,
    only: Option<&str>,
) -> Result<HashMap<String, Bucket>, Failure> {
    let rows = store.rollups_since(window_start(cfg, now.millis()), only)?;
    // Threads pay off only for thousands of rows (a window of many deployments).
    let threads = match rows.len() {
        0..2048 => 1,
        _ => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8),
    };
    let chunk = rows.len().div_ceil(threads).max(1);
    let parts: Vec<HashMap<String, Bucket>> = std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut windows = HashMap::new();
                    for row in part {
                        add_row(&mut windows, row);
                    }
                    windows
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let mut windows: HashMap<String, Bucket> = HashMap::new();
    for part in parts {
        for (deployment, bucket) in part {
            match windows.get_mut(&deployment) {
                Some(window) => window.merge(&bucket),
                None => {
                    windows.insert(deployment, bucket);
                }
            }
        }
    }
    Ok(windows)
}

/// The first bucket start inside the window ending at `now_ms`.
pub fn window_start(cfg: &Config, now_ms: i64) -> i64 {
    (now_ms - cfg.window_ms).div_euclid(cfg.bucket_ms) * cfg.bucket_ms + cfg.bucket_ms
}

/// A reported outcome or feedback once recorded: the answer for the caller, and what
/// monitoring counts on which deployment.
pub struct Recorded {
    pub answer: Value,
    pub deployment: String,
    pub observed: Outcome,
}

/// The built-in drift feature carrying the scanners' highest injection score of a decision.
pub const INJECTION_SCORE: &str = "injection_score";

/// Counts a decision in `bucket`, as the gateway and `gavel decide` both do: whether it was
/// blocked or abusive (findings, an abuse refusal, an abuse cooldown), and for decisions the
/// scanners looked at (those allowed, and those they stopped) the injection score, a built-in
/// drift feature.
pub fn observe_decision(bucket: &mut Bucket, decision: &Decision) {
    // A dry run or an idempotent duplicate ran nothing: it is not traffic, and a dry run's
    // findings (what a probe asked about) must not move the abuse rate into a breach.
    if decision.verdict == Verdict::NoOp {
        return;
    }
    let first = decision.reasons.first().map(|r| r.code);
    let blocked = decision.verdict == Verdict::Block;
    // Injection evidence is reported from a floor of 0 (the policy thresholds it): it counts
    // only where the policy acted on it (an `injection.*` reason, blocking or flagged), or a
    // single "you must" in a tool's description would make every request abusive.
    let abusive = decision.findings.iter().any(|f| f.kind != "injection")
        || decision.reason_codes().any(|c| {
            matches!(
                c,
                ReasonCode::InjectionDirect | ReasonCode::InjectionIndirect
            )
        })
        || (blocked && first.is_some_and(ReasonCode::is_abuse))
        || first == Some(ReasonCode::AbuseCooldown);
    let scanned = decision.verdict == Verdict::Allow
        || first.is_some_and(|c| {
            matches!(
                c,
                ReasonCode::InjectionDirect
                    | ReasonCode::InjectionIndirect
                    | ReasonCode::PrivacyPii
                    | ReasonCode::PrivacySecret
            )
        });
    bucket.record_decision(&decision.decision_id, blocked, abusive);
    if scanned {
        let score = decision
            .findings
            .iter()
            .filter(|f| f.kind == "injection")
            .map(|f| f64::from(f.confidence))
            .fold(0.0, f64::max);
        bucket.record_outcome(&Outcome {
            features: vec![(INJECTION_SCORE.to_string(), FeatureValue::Number(score))],
            ..Outcome::default()
        });
    }
}

/// Counts a one-shot writer's decisions (`gavel decide`'s) as rollup rows of its own, one per
/// deployment the contract has, so that `gavel status` and the breach checks see the traffic
/// the CLI decided as they see the gateway's.
pub fn record_decisions_once(
    store: &dyn Store,
    contract: &Contract,
    decisions: &[Decision],
    writer_id: &str,
    at: Timestamp,
) -> Result<(), Failure> {
    let mut buckets: BTreeMap<&str, Bucket> = BTreeMap::new();
    for decision in decisions {
        if contract.deployment(&decision.deployment).is_some() {
            observe_decision(buckets.entry(&decision.deployment).or_default(), decision);
        }
    }
    save_buckets(store, contract, buckets, writer_id, at)
}

/// Saves a one-shot writer's buckets, by deployment, as rollup rows of its own in the bucket
/// of `at` (rows add up, so nothing is read back or overwritten).
fn save_buckets<'d>(
    store: &dyn Store,
    contract: &Contract,
    buckets: impl IntoIterator<Item = (&'d str, Bucket)>,
    writer_id: &str,
    at: Timestamp,
) -> Result<(), Failure> {
    let cfg = config_of(&contract.policy.monitoring);
    let rows = buckets
        .into_iter()
        .map(|(deployment, bucket)| {
            Ok(Rollup {
                deployment: deployment.to_string(),
                start_ms: at.millis().div_euclid(cfg.bucket_ms) * cfg.bucket_ms,
                writer: writer_id.to_string(),
                body: bucket.to_bytes().map_err(Failure::storage)?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    if !rows.is_empty() {
        store.save_rollups(&rows)?;
    }
    Ok(())
}

/// Writes what a one-shot writer such as the CLI observed as a rollup row of its own (rows add
/// up, so nothing is read back or overwritten).
pub fn record_once(
    store: &dyn Store,
    contract: &Contract,
    recorded: &Recorded,
    writer_id: &str,
    at: Timestamp,
) -> Result<(), Failure> {
    let mut bucket = Bucket::default();
    bucket.record_outcome(&recorded.observed);
    save_buckets(
        store,
        contract,
        [(recorded.deployment.as_str(), bucket)],
        writer_id,
        at,
    )
}

/// The bodies of a deployment's latest `limit` ledger records of `kind`, newest first.
pub fn newest_records(
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    kind: gavel_ledger::RecordKind,
    deployment: &str,
    limit: u64,
) -> Result<Vec<Value>, Failure> {
    let filter = gavel_ledger_sqlite::ExportFilter {
        kind: Some(kind),
        deployment: Some(deployment.to_string()),
        limit: Some(limit),
        newest_first: true,
        ..Default::default()
    };
    Ok(sink
        .query(&filter)
        .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))?
        .into_iter()
        .map(|entry| entry.record.body)
        .collect())
}

/// The recorded attempts to page a deployment's on-call (`alert_delivered`, `alert_failed`),
/// newest first.
pub fn alert_deliveries(
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    deployment: &str,
) -> Result<Vec<Value>, Failure> {
    Ok(
        newest_records(sink, gavel_ledger::RecordKind::Admin, deployment, 200)?
            .into_iter()
            .filter(|r| r["action"] == "alert_delivered" || r["action"] == "alert_failed")
            .collect(),
    )
}

/// The baseline recorded with an approval, if any.
pub fn baseline_of(store: &dyn Store, approval_id: &str) -> Result<Option<Baseline>, Failure> {
    match store.baseline(approval_id)? {
        Some(StoredBaseline { body, .. }) => serde_json::from_str(&body).map(Some).map_err(|e| {
            Failure::storage(format!("the baseline of {approval_id} is corrupt: {e}"))
        }),
        None => Ok(None),
    }
}

/// One deployment as `gavel status` shows it.
#[derive(Debug, Serialize)]
pub struct DeploymentStatus {
    pub deployment: String,
    /// serving, cooldown, fallback, blocked, killed or unapproved.
    pub state: &'static str,
    pub use_case: String,
    pub owner: String,
    pub approval: Option<Value>,
    pub breach: Option<Breach>,
    pub has_baseline: bool,
    pub signals: Signals,
    pub checks: Vec<Check>,
}

/// Every deployment's (or only `only`'s) state and signals against its covering approval's
/// thresholds.
pub fn status(
    contract: &Contract,
    store: &dyn Store,
    windows: &HashMap<String, Bucket>,
    now: Timestamp,
    only: Option<&str>,
) -> Result<Vec<DeploymentStatus>, Failure> {
    let cfg = config_of(&contract.policy.monitoring);
    let kills = store.kills(now)?;
    let cooldowns = store.cooldowns(now)?;
    let breaches: HashMap<String, Breach> = store
        .breaches()?
        .into_iter()
        .map(|b| (b.deployment.clone(), b))
        .collect();
    let mut approvals: BTreeMap<String, Vec<Approval>> = BTreeMap::new();
    for a in store.all_approvals()? {
        approvals.entry(a.deployment.clone()).or_default().push(a);
    }
    let empty = Bucket::default();
    let mut rows = Vec::with_capacity(contract.deployments.len());
    for d in contract.deployments.values() {
        let Some(use_case) = contract.use_case_of(d) else {
            continue;
        };
        if only.is_some_and(|o| o != d.id) {
            continue;
        }
        let scopes = relevant_scopes(&d.id, &use_case.id, "", None);
        let covering = approvals
            .get(&d.id)
            .and_then(|a| covering_approval(a, d, now).ok())
            .cloned();
        let breach = breaches
            .get(&d.id)
            .filter(|b| covering.as_ref().is_some_and(|a| a.id == b.approval_id))
            .cloned();
        let kill = kills.iter().find(|k| scopes.contains(&k.scope));
        let cooling = cooldowns.iter().any(|c| scopes.contains(&c.scope));
        // An approval the spend tiers no longer accept covers nothing (decisions refuse it).
        let stale = covering
            .as_ref()
            .is_some_and(|a| requirements_moved(a, contract, d).is_some());
        let state = match (kill, &breach, &covering) {
            (Some(k), _, _) if k.until.is_none() => "killed",
            (Some(_), _, _) => "cooldown",
            (None, _, None) => "unapproved",
            (None, _, Some(_)) if stale => "unapproved",
            (None, Some(b), Some(_)) => match b.on_breach {
                OnBreach::Block => "blocked",
                OnBreach::Fallback => "fallback",
                OnBreach::Cooldown { .. } if b.until.is_some_and(|u| now < u) => "cooldown",
                OnBreach::Cooldown { .. } => "probing",
            },
            (None, None, Some(_)) if cooling => "cooldown",
            (None, None, Some(_)) => "serving",
        };
        let baseline = match &covering {
            Some(a) => baseline_of(store, &a.id)?,
            None => None,
        };
        let window = windows.get(&d.id).unwrap_or(&empty);
        let s = signals(window, baseline.as_ref(), &cfg);
        let c = covering
            .as_ref()
            .map(|a| checks(&s, &a.thresholds, &cfg))
            .unwrap_or_default();
        rows.push(DeploymentStatus {
            deployment: d.id.clone(),
            state,
            use_case: use_case.id.clone(),
            owner: use_case.owner.clone(),
            approval: covering.as_ref().map(|a| json!({
                "id": a.id,
                "approved_by": a.signoffs.iter().map(|s| s.principal.clone()).collect::<Vec<_>>(),
                "expires_at": a.expires_at.to_rfc3339(),
                "on_breach": a.on_breach,
                "thresholds": a.thresholds,
            })),
            breach,
            has_baseline: baseline.is_some(),
            signals: s,
            checks: c,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_engine::{FindingRecord, Reason};

    fn report(v: Value) -> Result<Reported, String> {
        let r: Reported = serde_json::from_value(v).map_err(|e| e.to_string())?;
        r.check().map(|()| r)
    }

    #[test]
    fn reports_are_checked_field_by_field() {
        for (bad, says) in [
            (json!({ "latency_ms": -1 }), "latency_ms"),
            (json!({ "score": 1.5 }), "score"),
            (json!({ "prediction": "yes" }), "prediction"),
            (json!({ "label": 2 }), "label"),
            (json!({ "group": "" }), "group"),
            (json!({ "features": { "x": [1] } }), "feature `x`"),
            (json!({ "features": { "x": null } }), "feature `x`"),
            (json!({ "bypass": true }), "unknown field"),
            (json!({ "group": "a" }), "need the `prediction`"),
            (json!({ "latency_ms": 1e308 }), "latency_ms"),
            (json!({ "features": { "x": 1e300 } }), "at most"),
            (
                json!({ "features": { "prompt_tokens": 5 } }),
                "computed by gavel",
            ),
            (json!({ "features": { "x": "(other)" } }), "not `(other)`"),
            (json!({ "prediction": true, "group": "(other)" }), "`group`"),
            (json!({ "label": true }), "need the `prediction`"),
        ] {
            let e = report(bad.clone()).err().unwrap_or_default();
            assert!(e.contains(says), "{bad} gave `{e}`");
        }
        let many: Map<String, Value> = (0..65).map(|i| (format!("f{i}"), json!(i))).collect();
        assert!(report(json!({ "features": many })).is_err());
    }

    #[test]
    fn a_report_becomes_an_observation() {
        let r = report(
            json!({ "latency_ms": 12.5, "success": false, "prediction": 1, "label": false,
            "group": "g", "features": { "score": 0.25, "channel": "web", "vip": true } }),
        )
        .unwrap_or_default();
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            tool_calls: 0,
        };
        let o = r.outcome("dec_1", true, Some(&usage), 42);
        assert!(o.executed && o.error && !o.fallback);
        assert_eq!(
            (o.prediction, o.label, o.spend_usd_micros),
            (Some(true), Some(false), 42)
        );
        let names: Vec<&str> = o.features.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["channel", "score", "vip", "prompt_tokens", "output_tokens"]
        );
        assert!(o
            .features
            .contains(&("vip".into(), FeatureValue::Category("true".into()))));
        assert!(report(json!({})).unwrap_or_default().is_empty());
    }

    /// A dry run or a duplicate ran nothing: not traffic, and a dry run's findings are what a
    /// probe asked about, not abuse.
    #[test]
    fn a_no_op_is_not_observed_and_unacted_injection_evidence_is_not_abuse() {
        let finding = FindingRecord {
            kind: "injection".into(),
            rule_id: "instruction_override".into(),
            text_index: 0,
            start: 0,
            end: 6,
            confidence: 0.9,
        };
        let decision = |verdict| Decision {
            decision_id: "dec_1".into(),
            verdict,
            reasons: vec![],
            obligations: vec![],
            findings: vec![finding.clone()],
            deployment: "kb".into(),
            use_case: None,
            tier: None,
            binding: None,
            approval_id: None,
            contract_version: "v".into(),
            principal: "svc".into(),
            run_id: None,
            at: "2026-11-24T00:00:00Z".into(),
            retry_after: None,
            retry_after_seconds: None,
            would_be: None,
            first_decision_id: None,
            estimate: None,
            input_sha256: String::new(),
            started_cooldown: None,
        };
        let mut bucket = Bucket::default();
        observe_decision(&mut bucket, &decision(Verdict::NoOp));
        assert_eq!((bucket.decisions, bucket.abusive), (0, 0));
        // Injection evidence under the contract's threshold is not abuse; flagged, it is.
        observe_decision(&mut bucket, &decision(Verdict::Allow));
        assert_eq!((bucket.decisions, bucket.abusive), (1, 0));
        let mut flagged = decision(Verdict::Allow);
        flagged
            .reasons
            .push(Reason::new(ReasonCode::InjectionDirect, "flagged"));
        observe_decision(&mut bucket, &flagged);
        assert_eq!((bucket.decisions, bucket.abusive), (2, 1));
        let mut pii = decision(Verdict::Allow);
        pii.findings[0].kind = "pii".into();
        observe_decision(&mut bucket, &pii);
        assert_eq!((bucket.decisions, bucket.abusive), (3, 2));
    }

    #[test]
    fn the_window_starts_at_the_first_whole_bucket_inside_it() {
        let cfg = Config {
            window_ms: 60_000,
            bucket_ms: 10_000,
            ..Config::default()
        };
        assert_eq!(window_start(&cfg, 125_000), 70_000);
        assert_eq!(window_start(&cfg, 120_000), 70_000);
    }
}
