//! `gavel decide` and `gavel outcome`: the data path from the command line.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use gavel_contract::time::Timestamp;
use gavel_engine::{
    parse_request, DecideInput, DecideRequest, Decision, DecisionRecord, Engine, EngineConfig,
    Reason, ReasonCode, Settled, Usage, Verdict,
};
use gavel_ledger::{Durable, Pending, RecordKind};
use gavel_store::{Role, Store};

use crate::context::out;
use crate::context::{new_id, now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::{self, Ledger};
use crate::monitoring::{record_decisions_once, record_once, Recorded, Reported};

/// Input larger than this is refused whole: a decide batch is requests, not a data dump.
const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

pub fn decide(ctx: &Context, file: Option<&Path>) -> Outcome {
    let input = read_input(file)?;
    let loaded = ctx.load_contract()?;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Service], "deciding")?;
    let contract = Arc::new(loaded.contract);
    let not_in_force = ctx.not_in_force(&store, &contract.version.0)?;
    let engine = Engine::new(
        contract.clone(),
        EngineConfig::standard().map_err(Failure::storage)?,
    );

    let ledger = Ledger::open(&ctx.db_path)?;
    // Payload capture is off unless the contract names the subject field.
    let capture = match &contract.policy.payload_subject {
        Some(field) => Some((field.clone(), ledger::open_sink(&ctx.db_path)?)),
        None => None,
    };

    // Decide every request, queue its record, and print nothing until the records are durable:
    // nobody may act on a decision the ledger does not hold.
    let mut results = Vec::new();
    for (line, item) in requests(&input) {
        let request = match parse_request(item) {
            Ok(request) => request,
            Err(e) => {
                results.push(Decided::Unreadable { line, error: e.0 });
                continue;
            }
        };
        let input = DecideInput {
            request: &request,
            principal: &who.principal,
            decision_id: new_id("dec")?,
            now: now(),
        };
        let decision = match &not_in_force {
            None => engine.decide(&store, input),
            // Fail closed: only the version in force governs; anything else is an unrecorded
            // governance change.
            Some(why) => engine.refuse(
                input,
                Reason::new(ReasonCode::GovernanceUnavailable, why.clone()),
            ),
        };
        let submitted = submit(&ledger, &decision);
        results.push(Decided::Decided {
            request: Box::new(request),
            decision: Box::new(decision),
            submitted,
        });
    }

    let mut bad_lines = 0usize;
    let mut ruled_all = Vec::new();
    for result in results {
        match result {
            Decided::Unreadable { line, error } => {
                bad_lines += 1;
                out!("{}", json!({ "error": error, "line": line }));
            }
            Decided::Decided {
                request,
                decision,
                submitted,
            } => {
                let (ruled, receipt) = match submitted.wait() {
                    Ok(receipt) => {
                        if let Some((field, sink)) = &capture {
                            capture_payload(sink, field, &request, &decision)?;
                        }
                        (*decision, Some(receipt))
                    }
                    Err(why) => (withdrawn(&engine, &store, &request, &decision, &why), None),
                };
                let mut shown = serde_json::to_value(&ruled)
                    .map_err(|e| Failure::invalid(format!("cannot print a decision: {e}")))?;
                if let Some(receipt) = receipt {
                    shown["receipt"] = json!(receipt);
                }
                ruled_all.push(ruled);
                if let Some(object) = shown.as_object_mut() {
                    object.remove("started_cooldown");
                }
                out!("{shown}");
            }
        }
    }
    ledger.close()?;
    // Counted for monitoring as the gateway counts its decisions (`gavel status`, breaches).
    record_decisions_once(
        &store,
        engine.contract(),
        &ruled_all,
        &new_id("cli")?,
        now(),
    )?;
    if bad_lines > 0 {
        return Err(Failure::invalid(format!(
            "{bad_lines} request(s) could not be read; their lines carry an `error`"
        )));
    }
    Ok(())
}

enum Decided {
    Unreadable {
        line: usize,
        error: String,
    },
    Decided {
        request: Box<DecideRequest>,
        decision: Box<Decision>,
        submitted: Submitted<Pending>,
    },
}

/// A decision's ledger record (and the cooldown it started, if any) on their way to disk:
/// `Pending` for threads that block until durable, `Durable` for async tasks that await it.
pub struct Submitted<P> {
    decision: Result<P, Failure>,
    cooldown: Option<Result<P, Failure>>,
}

impl Submitted<Pending> {
    /// The decision's receipt once every record is durable.
    pub fn wait(self) -> Result<gavel_ledger::Receipt, Failure> {
        let receipt = self.decision.and_then(ledger::wait)?;
        if let Some(started) = self.cooldown {
            started.and_then(ledger::wait)?;
        }
        Ok(receipt)
    }
}

impl Submitted<Durable> {
    /// [`Submitted::wait`] without holding a thread while the commit runs.
    pub async fn durable(self) -> Result<gavel_ledger::Receipt, Failure> {
        let made_durable =
            |e| Failure::storage(format!("the ledger could not make a record durable: {e}"));
        let receipt = self.decision?.await.map_err(made_durable)?;
        if let Some(started) = self.cooldown {
            started?.await.map_err(made_durable)?;
        }
        Ok(receipt)
    }
}

/// Queues a decision's record, and the record of the cooldown it started.
pub fn submit(ledger: &Ledger, decision: &Decision) -> Submitted<Pending> {
    queue(decision.record(), decision, |kind, at, id, body| {
        ledger.submit(kind, at, id, body)
    })
}

/// [`submit`] for async callers, with what [`queue`] is to record of the decision: the
/// gateway's proxy says which outcomes it settles itself and which decisions are fallbacks.
pub fn submit_async<'d>(
    ledger: &Ledger,
    decision: &'d Decision,
    record: DecisionRecord<'d>,
) -> Submitted<Durable> {
    queue(record, decision, |kind, at, id, body| {
        ledger.submit_async(kind, at, id, body)
    })
}

fn queue<'d, P>(
    record: DecisionRecord<'d>,
    decision: &'d Decision,
    send: impl Fn(RecordKind, Timestamp, &str, Body<'_>) -> Result<P, Failure>,
) -> Submitted<P> {
    let pending = send(
        RecordKind::Decision,
        now(),
        &decision.decision_id,
        Body::Decision(record),
    );
    let cooldown = decision.started_cooldown.as_ref().map(|cooldown| {
        let body = Body::Change(ledger::change(
            &decision.principal,
            "cooldown_started",
            json!({ "cooldown": cooldown, "decision_id": decision.decision_id }),
        ));
        send(
            RecordKind::CooldownStarted,
            cooldown.since,
            &new_id("chg")?,
            body,
        )
    });
    Submitted {
        decision: pending,
        cooldown,
    }
}

/// Stores the request's texts encrypted under the subject's key (crypto-shreddable with
/// `gavel audit forget`). The ledger record holds only their digest (`input_sha256`), which
/// each text's field, index and role are enough to recompute (docs/decide.md).
pub fn capture_payload(
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    field: &str,
    request: &DecideRequest,
    decision: &Decision,
) -> Outcome {
    let Some(subject) = request.metadata.get(field) else {
        return Ok(());
    };
    let texts: Vec<serde_json::Value> = request
        .sourced_texts()
        .map(|(source, role, text)| {
            json!({ "source": source.name(), "index": source.index(), "role": role, "text": text })
        })
        .collect();
    let plaintext = serde_json::to_vec(&texts)
        .map_err(|e| Failure::storage(format!("cannot encode a payload: {e}")))?;
    sink.store_payload(subject, &decision.decision_id, "input", &plaintext)
        .map_err(|e| {
            Failure::storage(format!(
                "cannot store the payload of {}: {e}",
                decision.decision_id
            ))
        })
}

/// What [`queue`] records: a decision, or the governance change it caused.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'d> {
    Decision(DecisionRecord<'d>),
    Change(Value),
}

/// The ledger did not take the record: the decision must not be acted on. Give back what it
/// holds and answer BLOCK `governance.unavailable` instead (fail closed).
pub fn withdrawn(
    engine: &Engine,
    store: &dyn Store,
    request: &DecideRequest,
    decision: &Decision,
    why: &Failure,
) -> Decision {
    let _ = engine.withdraw(store, request, decision, now());
    let mut blocked = decision.clone();
    blocked.verdict = Verdict::Block;
    blocked.obligations.clear();
    blocked.started_cooldown = None;
    blocked.reasons = vec![Reason::new(
        ReasonCode::GovernanceUnavailable,
        format!(
            "the ledger could not record this decision ({}); failing closed",
            why.message
        ),
    )];
    blocked
}

/// Decide requests from `file` or standard input, bounded.
pub fn read_input(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let result = match file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read `{}` ({e})", path.display())),
        None => std::io::stdin()
            .take(MAX_INPUT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read standard input ({e})")),
    };
    result.map_err(Failure::invalid)?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Failure::invalid(format!(
            "the input is larger than {MAX_INPUT_BYTES} bytes; split it"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::invalid(
            "no request given; pipe one JSON request (or JSON Lines) to `gavel decide`",
        ));
    }
    Ok(bytes)
}

/// One JSON document (possibly spread over lines), or JSON Lines: one request per line.
pub fn requests(input: &[u8]) -> Vec<(usize, &[u8])> {
    let trimmed = input.trim_ascii();
    let single = serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok();
    if single {
        return vec![(1, trimmed)];
    }
    input
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect()
}

pub fn outcome(
    ctx: &Context,
    decision_id: &str,
    deployment: &str,
    usage: Usage,
    report: Option<&str>,
) -> Outcome {
    let reported: Reported = match report {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Failure::usage(format!("--report is not a report object: {e}")))?,
        None => Reported::default(),
    };
    reported
        .check()
        .map_err(|why| Failure::usage(format!("--report: {why}")))?;
    let loaded = ctx.load_contract()?;
    let store = ctx.store()?;
    let who = ctx
        .authenticate(&store, &[Role::Service], "reporting an outcome")?
        .principal;
    if let Some(why) = ctx.not_in_force(&store, &loaded.contract.version.0)? {
        return Err(Failure::invalid(why));
    }
    let engine = Engine::new(Arc::new(loaded.contract), EngineConfig::default());
    let sink = ledger::open_sink(&ctx.db_path)?;
    let ledger = Ledger::open(&ctx.db_path)?;
    let settled = settle_outcome(
        &engine,
        &store,
        &ledger,
        &sink,
        &who,
        decision_id,
        deployment,
        &usage,
        &reported,
    );
    ledger.close()?;
    let settled = settled?;
    record_once(&store, engine.contract(), &settled, &new_id("cli")?, now())?;
    out!("{}", settled.answer);
    Ok(())
}

/// The ledger's record of a decision made for `who` (only that principal may `act` on it: report
/// its outcome, give feedback).
pub fn own_decision(
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    decision_id: &str,
    who: &str,
    act: &str,
) -> Result<serde_json::Value, Failure> {
    let decided = sink
        .record_by_id(decision_id)
        .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))?
        .filter(|entry| entry.record.kind == RecordKind::Decision)
        .ok_or_else(|| Failure::invalid(format!("no decision `{decision_id}` in the ledger")))?
        .record
        .body;
    if decided["principal"].as_str() != Some(who) {
        return Err(Failure::auth(format!(
            "decision `{decision_id}` was made for another principal; only it may {act}"
        )));
    }
    Ok(decided)
}

/// Settles a decision's reservation with the actual usage, as the principal it was made for
/// and under the deployment it ran on (the ledger says which); recorded first, because a
/// settlement changes budgets.
#[allow(clippy::too_many_arguments)]
pub fn settle_outcome(
    engine: &Engine,
    store: &dyn Store,
    ledger: &Ledger,
    sink: &gavel_ledger_sqlite::SqliteLedgerSink,
    who: &str,
    decision_id: &str,
    deployment: &str,
    usage: &Usage,
    reported: &Reported,
) -> Result<Recorded, Failure> {
    crate::context::known_deployment(engine.contract(), deployment)?;
    let decided = own_decision(sink, decision_id, who, "report the outcome")?;
    if decided["settled_by"] == DecisionRecord::SETTLED_BY_GATEWAY {
        return Err(Failure::conflict(
            "outcome.settled_by_gateway",
            format!("decision `{decision_id}` is a call through the gateway's proxy, which settles it with the usage the upstream reports; its outcome is not reported by its caller"),
        ));
    }
    let ran_on = decided["obligations"]
        .as_array()
        .and_then(|obligations| obligations.iter().find(|o| o["type"] == "route"))
        .and_then(|route| route["deployment"].as_str())
        .or(decided["deployment"].as_str())
        .unwrap_or_default();
    if ran_on != deployment {
        return Err(Failure::invalid(format!("decision `{decision_id}` ran on `{ran_on}`; report its outcome with --deployment {ran_on}")));
    }
    // Refused before anything is recorded: the ledger lists only outcomes that settled.
    if !store.reservation_open(decision_id)? {
        return Err(no_open_reservation(decision_id));
    }
    // The prompt gavel counted with the model's tokenizer when it decided is a floor: a report
    // below it would hand back the tokens and dollars reserved for a prompt that was sent.
    let counted_prompt = decided["estimate"]["prompt_tokens"].as_u64().unwrap_or(0);
    let usage = &Usage {
        prompt_tokens: usage.prompt_tokens.max(counted_prompt),
        ..usage.clone()
    };
    let at = now();
    let mut body = json!({ "principal": who, "decision_id": decision_id, "deployment": deployment, "usage": usage });
    if let (Some(body), Ok(serde_json::Value::Object(extra))) =
        (body.as_object_mut(), serde_json::to_value(reported))
    {
        body.extend(extra);
    }
    let outcome_id = new_id("out")?;
    // Of two reports racing for one reservation, one claims it, records and settles; the other
    // is refused here and records nothing (the check above alone let both record). Held only
    // while settling, and given back however this report ends, so that a retry can settle:
    // once settled, the reservation is gone and refuses a second report by itself.
    let settling = gavel_store::settling_claim(decision_id);
    let Some(_held) = gavel_store::hold_claim(store, settling, at.millis())? else {
        return Err(Failure::conflict(
            "outcome.settling",
            format!("decision `{decision_id}` has an outcome being recorded and settled by another report; if that report failed, report again in a minute"),
        ));
    };
    // Only this report's own: a judgement an earlier feedback claimed is never given back, and
    // one stays claimed once its record was sent (a failed sync leaves what it covered in doubt).
    let judged: Vec<String> = match reported.judges() {
        true => vec![format!("judged:{decision_id}")],
        false => Vec::new(),
    };
    crate::cmd::feedback::claim(store, decision_id, &judged, "outcome")?;
    // Settled since the check above by a report that has given its claim back.
    if !store.reservation_open(decision_id)? {
        let _ = store.release_reports(&judged);
        return Err(no_open_reservation(decision_id));
    }
    let receipt = ledger.record(RecordKind::Outcome, at, &outcome_id, body)?;
    match engine.settle(store, decision_id, deployment, usage, at)? {
        Settled::Settled => Ok(Recorded {
            answer: json!({ "decision_id": decision_id, "settled": true, "receipt": receipt }),
            deployment: deployment.to_string(),
            observed: reported.outcome(
                decision_id,
                true,
                Some(usage),
                engine.usd_micros(deployment, usage),
            ),
        }),
        // Withdrawn or pruned since the check: recorded, and nothing settled.
        Settled::Unknown => Err(no_open_reservation(decision_id)),
    }
}

fn no_open_reservation(decision_id: &str) -> Failure {
    Failure::invalid(format!(
        "decision `{decision_id}` holds no open reservation (already settled, refused, a dry run, unknown, or left unsettled for over a day and pruned)"
    ))
}
