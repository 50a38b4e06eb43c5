//! `gavel decide` and `gavel outcome`: the data path from the command line.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use gavel_engine::{
    parse_request, DecideInput, Engine, EngineConfig, Reason, ReasonCode, Settled, Usage,
};
use gavel_store::{Role, Store};

use crate::context::out;
use crate::context::{new_id, now, short, Context};
use crate::failure::{Failure, Outcome};

/// Input larger than this is refused whole: a decide batch is requests, not a data dump.
const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

pub fn decide(ctx: &Context, file: Option<&Path>) -> Outcome {
    let input = read_input(file)?;
    let loaded = ctx.load_contract()?;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, &[Role::Service], "deciding")?;
    let contract = Arc::new(loaded.contract);
    let applied = store.contract_applied(&contract.version.0)?.is_some();
    let engine = Engine::new(
        contract.clone(),
        EngineConfig::standard().map_err(Failure::storage)?,
    );

    let mut bad_lines = 0usize;
    for (line, item) in requests(&input) {
        let request = match parse_request(item) {
            Ok(request) => request,
            Err(e) => {
                bad_lines += 1;
                out!("{}", json!({ "error": e.0, "line": line }));
                continue;
            }
        };
        let decision_id = new_id("dec")?;
        let input = DecideInput {
            request: &request,
            principal: &who.principal,
            decision_id,
            now: now(),
        };
        let decision = if applied {
            engine.decide(&store, input)
        } else {
            // Fail closed: a contract nobody applied is an unrecorded governance change.
            let reason = Reason::new(
                ReasonCode::GovernanceUnavailable,
                format!(
                    "contract version {} has not been applied; an operator must run `gavel apply`",
                    short(&contract.version.0)
                ),
            );
            engine.refuse(input, reason)
        };
        let text = serde_json::to_string(&decision)
            .map_err(|e| Failure::invalid(format!("cannot print a decision: {e}")))?;
        out!("{text}");
    }
    if bad_lines > 0 {
        return Err(Failure::invalid(format!(
            "{bad_lines} request(s) could not be read; their lines carry an `error`"
        )));
    }
    Ok(())
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
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
fn requests(input: &[u8]) -> Vec<(usize, &[u8])> {
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

pub fn outcome(ctx: &Context, decision_id: &str, deployment: &str, usage: Usage) -> Outcome {
    let loaded = ctx.load_contract()?;
    let store = ctx.store()?;
    ctx.authenticate(&store, &[Role::Service], "reporting an outcome")?;
    let engine = Engine::new(
        Arc::new(loaded.contract),
        EngineConfig::standard().map_err(Failure::storage)?,
    );
    if engine.contract().deployment(deployment).is_none() {
        return Err(Failure::invalid(format!(
            "deployment `{deployment}` is not in the contract"
        )));
    }
    match engine.settle(&store, decision_id, deployment, &usage, now())? {
        Settled::Settled => out!("{}", json!({ "decision_id": decision_id, "settled": true })),
        Settled::Unknown => {
            return Err(Failure::invalid(format!(
                "decision `{decision_id}` holds no open reservation (already settled, refused, a dry run, or unknown)"
            )))
        }
    }
    Ok(())
}
