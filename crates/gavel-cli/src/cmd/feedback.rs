//! `gavel feedback` (and `POST /v1/feedback`): an accuracy proxy, a label, a prediction, a group
//! or declared features for one of the caller's decisions, recorded in the ledger and counted by
//! monitoring.

use serde_json::{json, Value};

use gavel_ledger::RecordKind;
use gavel_store::{Role, Store};

use crate::cmd::decide::own_decision;
use crate::context::{new_id, now, out, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::{self, Ledger};
use crate::monitoring::{feature_value, record_once, Recorded, Reported};

/// Checks that `reported` is feedback (a judgement, not a run) and records it.
pub fn record_feedback(
    store: &dyn Store,
    ledger: &Ledger,
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    who: &str,
    decision_id: &str,
    reported: &Reported,
) -> Result<Recorded, Failure> {
    if reported.latency_ms.is_some()
        || reported.success.is_some()
        || reported.fallback_used.is_some()
    {
        return Err(Failure::invalid("feedback carries score, label, prediction, group and features; report latency_ms, success and fallback_used with the outcome"));
    }
    if reported.is_empty() {
        return Err(Failure::invalid("feedback needs a `score` in [0, 1], a `label`, a `prediction`, a `group` or `features`"));
    }
    reported.check().map_err(Failure::invalid)?;
    let decided = own_decision(sink, decision_id, who, "give feedback")?;
    let deployment = decided["deployment"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let record = json!({
        "principal": who,
        "decision_id": decision_id,
        "deployment": deployment,
        "feedback": reported,
    });
    let id = new_id("fbk")?;
    // One feedback per decision, and one judgement (score, prediction, label, group) whether it
    // comes with the outcome or the feedback: counting a second would let one caller weigh a
    // decision, a group or a score as often as it likes.
    let mut once = vec![format!("feedback:{decision_id}")];
    if reported.judges() {
        once.push(format!("judged:{decision_id}"));
    }
    claim(store, decision_id, &once, &id)?;
    let receipt = ledger.record(RecordKind::Outcome, now(), &id, record)?;
    Ok(Recorded {
        answer: json!({ "feedback_id": id, "decision_id": decision_id, "receipt": receipt }),
        deployment,
        observed: reported.outcome(decision_id, false, None, 0),
    })
}

/// Claims `keys` (all or none) for `by`; refuses, naming what the decision already has.
pub fn claim(
    store: &dyn Store,
    decision_id: &str,
    keys: &[String],
    by: &str,
) -> Result<(), Failure> {
    let Some(taken) = store.claim_reports(keys, by)? else {
        return Ok(());
    };
    let what = if taken.starts_with("judged:") {
        "a score, prediction, label or group (given with its outcome or feedback)"
    } else {
        "its feedback"
    };
    Err(Failure::invalid(format!(
        "decision `{decision_id}` already has {what}; one is counted per decision"
    )))
}

/// The CLI's options as a report.
pub struct FeedbackArgs {
    pub score: Option<f64>,
    pub label: Option<String>,
    pub prediction: Option<String>,
    pub group: Option<String>,
    pub features: Vec<String>,
}

fn binary_flag(flag: &str, text: Option<String>) -> Result<Option<Value>, Failure> {
    text.map(|t| match t.as_str() {
        "true" | "1" => Ok(json!(true)),
        "false" | "0" => Ok(json!(false)),
        _ => Err(Failure::usage(format!(
            "--{flag} `{t}` is not true/false or 1/0"
        ))),
    })
    .transpose()
}

pub fn run(ctx: &Context, decision_id: &str, args: FeedbackArgs) -> Outcome {
    let mut features = serde_json::Map::new();
    for f in &args.features {
        let (name, value) = f
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--feature `{f}` is not NAME=VALUE")))?;
        // A number when it reads as one, else a category.
        let value = serde_json::from_str::<Value>(value)
            .ok()
            .filter(|v| feature_value(v).is_some())
            .unwrap_or_else(|| json!(value));
        features.insert(name.to_string(), value);
    }
    let reported = Reported {
        score: args.score,
        label: binary_flag("label", args.label)?,
        prediction: binary_flag("prediction", args.prediction)?,
        group: args.group,
        features,
        ..Reported::default()
    };
    let store = ctx.store()?;
    let who = ctx
        .authenticate(&store, &[Role::Service], "giving feedback")?
        .principal;
    // Signals are measured against the thresholds in force, not an edited file's.
    let contract = ctx.contract_in_force(&store)?;
    let sink = ledger::open_sink(&ctx.db_path)?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let recorded = record_feedback(&store, &ledger, &sink, &who, decision_id, &reported);
    ledger.close()?;
    let recorded = recorded?;
    record_once(&store, &contract, &recorded, &new_id("cli")?, now())?;
    out!("{}", recorded.answer);
    Ok(())
}
