//! `gavel replay --candidate PATH [FILE]`: what a candidate contract would change. Each request
//! (decide requests, as `gavel decide` reads them) is decided twice as a dry run, under the
//! contract in force and under the candidate, and the verdicts, reason codes and obligations
//! are compared. Nothing is recorded and nothing is consumed.
//!
//! Both sides see the same state: the approvals in the store, and nothing else (no kill
//! switch, cooldown, breach or budget use), so what differs is what the contract changes. A
//! candidate that changes a deployment's binding shows as `approval.binding_mismatch`: its
//! approvals would not cover it.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use gavel_contract::diff::diff;
use gavel_contract::{short_hash, Contract};
use gavel_engine::{
    parse_request, DecideInput, DecideRequest, Decision, Engine, EngineConfig, MemoryState, Verdict,
};
use gavel_store::Store;

use super::apply::print_changes;
use super::decide::{read_input, requests};
use super::status::READERS;
use crate::context::out;
use crate::context::{load_contract_at, now, Context};
use crate::failure::{Failure, Outcome};

/// The principal a request is decided for when it names none.
const REPLAY_PRINCIPAL: &str = "replay";

pub fn run(
    ctx: &Context,
    candidate_path: &Path,
    file: Option<&Path>,
    as_json: bool,
    fail_on_change: bool,
) -> Outcome {
    let input = read_input(file)?;
    let current = ctx.load_contract()?.contract;
    let candidate = load_contract_at(candidate_path)?.contract;
    let store = ctx.store()?;
    ctx.authenticate(&store, READERS, "replaying requests")?;
    // The comparison is against what governs now, not against whatever file is at hand.
    if let Some(why) = ctx.not_in_force(&store, &current.version.0)? {
        return Err(Failure::invalid(format!(
            "{why}; replay compares a candidate with the contract in force"
        )));
    }
    let state = approvals_only(&store)?;
    let replay = Replay::new(current, candidate)?;
    let mut summary = Summary::default();
    if !as_json {
        out!(
            "replaying under the contract in force ({}) and the candidate ({})",
            short_hash(&replay.current.contract().version.0),
            short_hash(&replay.candidate.contract().version.0)
        );
        let changes = diff(replay.current.contract(), replay.candidate.contract());
        if !changes.changes.is_empty() {
            print_changes(&replay.current.contract().version.0, &changes)?;
        }
    }
    for (line, item) in requests(&input) {
        let compared = match parse_request(item) {
            Ok(request) => replay.compare(&state, line, request),
            Err(e) => {
                summary.unreadable += 1;
                out!("{}", json!({ "line": line, "error": e.0 }));
                continue;
            }
        };
        summary.count(&compared);
        if as_json {
            out!("{}", json!(compared));
        } else if compared.changed {
            out!("{}", compared.line_text());
        }
    }
    if as_json {
        out!("{}", json!({ "summary": summary }));
    } else {
        out!("{}", summary.text());
    }
    if summary.unreadable > 0 {
        return Err(Failure::invalid(format!(
            "{} request(s) could not be read; their lines carry an `error`",
            summary.unreadable
        )));
    }
    if fail_on_change && summary.changed > 0 {
        return Err(Failure::invalid(format!(
            "the candidate changes the outcome of {} request(s) (--fail-on-change)",
            summary.changed
        )));
    }
    Ok(())
}

/// A state holding the store's approvals and nothing else (no kill switch, cooldown, breach,
/// budget use or abuse strike): what dry runs that measure a contract decide against.
pub fn approvals_only(store: &dyn Store) -> Result<MemoryState, Failure> {
    let state = MemoryState::new();
    for approval in store.all_approvals()? {
        state
            .put_approval(approval)
            .map_err(|e| Failure::storage(format!("cannot copy an approval: {e}")))?;
    }
    Ok(state)
}

/// The two engines a request is decided by.
struct Replay {
    current: Engine,
    candidate: Engine,
}

impl Replay {
    fn new(current: Contract, candidate: Contract) -> Result<Replay, Failure> {
        let config = || EngineConfig::standard().map_err(Failure::storage);
        Ok(Replay {
            current: Engine::new(Arc::new(current), config()?),
            candidate: Engine::new(Arc::new(candidate), config()?),
        })
    }

    fn compare(&self, state: &MemoryState, line: usize, mut request: DecideRequest) -> Compared {
        request.dry_run = true;
        let principal = request
            .principal
            .clone()
            .unwrap_or_else(|| REPLAY_PRINCIPAL.to_string());
        let at = now();
        let decide = |engine: &Engine| {
            Ruling::of(&engine.decide(
                state,
                DecideInput {
                    request: &request,
                    principal: &principal,
                    decision_id: format!("replay-{line}"),
                    now: at,
                },
            ))
        };
        let (current, candidate) = (decide(&self.current), decide(&self.candidate));
        Compared {
            line,
            deployment: request.deployment.clone(),
            changed: current != candidate,
            current,
            candidate,
        }
    }
}

/// What a dry run says would happen.
#[derive(Debug, PartialEq, Serialize)]
pub struct Ruling {
    pub verdict: Verdict,
    pub reason_codes: Vec<&'static str>,
    pub obligations: Vec<Value>,
}

impl Ruling {
    pub fn of(decision: &Decision) -> Ruling {
        // A dry run answers NO_OP with what it would do; a request refused before it was
        // evaluated (an unreadable one, an unknown deployment) answers for itself.
        let (verdict, reasons, obligations) = match &decision.would_be {
            Some(w) => (w.verdict, &w.reasons, &w.obligations),
            None => (decision.verdict, &decision.reasons, &decision.obligations),
        };
        Ruling {
            verdict,
            reason_codes: reasons.iter().map(|r| r.code.as_str()).collect(),
            obligations: obligations
                .iter()
                .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
                .collect(),
        }
    }

    fn text(&self) -> String {
        let mut text = self.verdict.as_str().to_string();
        if !self.reason_codes.is_empty() {
            text.push_str(&format!(" [{}]", self.reason_codes.join(", ")));
        }
        if !self.obligations.is_empty() {
            let kinds: Vec<&str> = self
                .obligations
                .iter()
                .map(|o| o["type"].as_str().unwrap_or("obligation"))
                .collect();
            text.push_str(&format!(" with {}", kinds.join(", ")));
        }
        text
    }
}

#[derive(Debug, Serialize)]
struct Compared {
    line: usize,
    deployment: String,
    changed: bool,
    current: Ruling,
    candidate: Ruling,
}

impl Compared {
    fn line_text(&self) -> String {
        format!(
            "line {}  {}  {}  ->  {}",
            self.line,
            self.deployment,
            self.current.text(),
            self.candidate.text()
        )
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    requests: usize,
    changed: usize,
    /// Requests the candidate would let run that the contract in force does not.
    would_run: usize,
    /// Requests the contract in force lets run that the candidate would not.
    would_be_refused: usize,
    unreadable: usize,
}

impl Summary {
    fn count(&mut self, compared: &Compared) {
        self.requests += 1;
        if !compared.changed {
            return;
        }
        self.changed += 1;
        let runs = |r: &Ruling| r.verdict == Verdict::Allow;
        match (runs(&compared.current), runs(&compared.candidate)) {
            (false, true) => self.would_run += 1,
            (true, false) => self.would_be_refused += 1,
            _ => {}
        }
    }

    fn text(&self) -> String {
        format!(
            "{} request(s): {} unchanged, {} changed ({} that run now would be refused, {} refused now would run, {} otherwise changed){}",
            self.requests,
            self.requests - self.changed,
            self.changed,
            self.would_be_refused,
            self.would_run,
            self.changed - self.would_run - self.would_be_refused,
            if self.unreadable > 0 {
                format!("; {} line(s) unreadable", self.unreadable)
            } else {
                String::new()
            }
        )
    }
}
