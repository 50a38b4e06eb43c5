//! Prometheus metrics. Histograms have explicit buckets (the same on every replica) so that
//! they aggregate across replicas. Labels carry verdicts, reason codes, deployment and endpoint
//! ids: never prompt text, keys or principals' secrets.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use gavel_engine::Decision;

const DECISION_SECONDS: &str = "gavel_decision_seconds";
const UPSTREAM_SECONDS: &str = "gavel_upstream_seconds";
const LEDGER_COMMIT_SECONDS: &str = "gavel_ledger_commit_seconds";
const LEDGER_WAIT_SECONDS: &str = "gavel_ledger_wait_seconds";
const LEDGER_BATCH_RECORDS: &str = "gavel_ledger_batch_records";
const DECISION_BATCH_DECISIONS: &str = "gavel_decision_batch_decisions";

/// Microseconds to minutes: a decision takes tens of microseconds, an upstream seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 8192.0,
];

/// How often histogram samples are folded into their buckets. The recorder keeps each sample
/// until then or until `/metrics` is read: about 100 bytes a request, without bound in a gateway
/// that nobody scrapes (35-37 MB freed by one read after six minutes at 1,000 req/s).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`], until `stop`.
pub async fn upkeep(handle: PrometheusHandle, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
            _ = stop.changed() => break,
        }
    }
}

/// Installs the process-wide recorder; the handle renders `/metrics`. Its samples are folded by
/// [`upkeep`], which the caller runs.
pub fn install() -> Result<PrometheusHandle, String> {
    let mut builder = PrometheusBuilder::new();
    for name in [
        DECISION_SECONDS,
        UPSTREAM_SECONDS,
        LEDGER_COMMIT_SECONDS,
        LEDGER_WAIT_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), SECONDS_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    for name in [LEDGER_BATCH_RECORDS, DECISION_BATCH_DECISIONS] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), BATCH_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// Label value for a deployment the contract does not name: the client chose that name, and a
/// series per name would grow without bound (and show on the public /metrics).
pub const UNKNOWN_DEPLOYMENT: &str = "(unknown)";

/// Counts a decision; `known` says whether its deployment is in the contract.
pub fn decided(decision: &Decision, known: bool, took: Duration) {
    let reason = decision.reasons.first().map_or("none", |r| r.code.as_str());
    let deployment = if known {
        decision.deployment.clone()
    } else {
        UNKNOWN_DEPLOYMENT.to_string()
    };
    metrics::counter!("gavel_decisions_total", "verdict" => decision.verdict.as_str(), "reason" => reason, "deployment" => deployment).increment(1);
    metrics::histogram!(DECISION_SECONDS).record(took.as_secs_f64());
}

/// How long a request waited for its decision's record to be durable.
pub fn ledger_wait(took: Duration) {
    metrics::histogram!(LEDGER_WAIT_SECONDS).record(took.as_secs_f64());
}

/// One committed ledger batch (called on the ledger's writer thread).
pub fn ledger_batch(records: usize, took: Duration) {
    metrics::histogram!(LEDGER_COMMIT_SECONDS).record(took.as_secs_f64());
    metrics::histogram!(LEDGER_BATCH_RECORDS).record(records as f64);
}

/// One store transaction of the decider (called on its thread).
pub fn decision_batch(decisions: usize) {
    metrics::histogram!(DECISION_BATCH_DECISIONS).record(decisions as f64);
}

pub fn upstream(endpoint: &str, outcome: &'static str, took: Duration) {
    metrics::histogram!(UPSTREAM_SECONDS, "endpoint" => endpoint.to_string(), "outcome" => outcome)
        .record(took.as_secs_f64());
}

pub fn fallback(deployment: &str, to: &str) {
    metrics::counter!("gavel_fallbacks_total", "deployment" => deployment.to_string(), "to" => to.to_string()).increment(1);
}

pub fn stream_violation(deployment: &str, code: &str) {
    metrics::counter!("gavel_stream_violations_total", "deployment" => deployment.to_string(), "code" => code.to_string()).increment(1);
}

pub fn output_violation(deployment: &str, code: &str) {
    metrics::counter!("gavel_output_violations_total", "deployment" => deployment.to_string(), "code" => code.to_string()).increment(1);
}

pub fn snapshot_changed(deployment: &str) {
    metrics::counter!("gavel_snapshot_changes_total", "deployment" => deployment.to_string())
        .increment(1);
}

pub fn reload(outcome: &'static str) {
    metrics::counter!("gavel_contract_reloads_total", "outcome" => outcome).increment(1);
}

/// A connection turned away because `--max-connections` were open.
pub fn connection_refused() {
    metrics::counter!("gavel_connections_refused_total").increment(1);
}

/// A deployment's signal as last evaluated (one gauge per deployment and signal).
pub fn signal(deployment: &str, name: &'static str, value: f64) {
    metrics::gauge!("gavel_signal", "deployment" => deployment.to_string(), "signal" => name)
        .set(value);
}

pub fn breach(deployment: &str, signal: &str, event: &'static str) {
    metrics::counter!("gavel_breach_events_total", "deployment" => deployment.to_string(), "signal" => signal.to_string(), "event" => event).increment(1);
}

pub fn alert(outcome: &'static str) {
    metrics::counter!("gavel_alerts_total", "outcome" => outcome).increment(1);
}

/// Monitoring could not evaluate a deployment this second (see the logs).
pub fn monitor_failure(deployment: &str) {
    metrics::counter!("gavel_monitor_failures_total", "deployment" => deployment.to_string())
        .increment(1);
}
