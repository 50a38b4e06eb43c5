//! Contract hot reload: the contract path is re-read on an interval; a valid new version is
//! applied (recorded with what changed and its loosening flag, as `gavel apply` records it) and
//! swapped in atomically; an invalid one is refused, recorded and logged, and the last good
//! version keeps governing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use gavel_contract::{load_with_snapshot, short_hash, Contract, Snapshot};
use gavel_engine::{Engine, EngineConfig};
use gavel_ledger::RecordKind;

use super::gateway::Gateway;
use super::metrics;
use crate::cmd::apply::{apply, Applied};
use crate::context::now;
use crate::failure::Failure;
use crate::ledger::Ledger;

/// Makes `contract` the version in force (if it is not already) and returns its engine.
pub fn make_in_force(
    store: &gavel_store::SqliteStore,
    ledger: &Ledger,
    contract: Contract,
    snapshot: &Snapshot,
    operator: &str,
) -> Result<(Engine, Option<Applied>), Failure> {
    use gavel_store::Store;
    let in_force = store
        .latest_contract()?
        .is_some_and(|(latest, _)| latest.version == contract.version.0);
    let applied = if in_force {
        None
    } else {
        Some(apply(store, ledger, &contract, snapshot, operator, now())?)
    };
    let config = EngineConfig::standard().map_err(Failure::storage)?;
    Ok((Engine::new(Arc::new(contract), config), applied))
}

/// Polls the contract until `stop` fires.
pub async fn watch(
    gw: Arc<Gateway>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_refusal: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let gw2 = gw.clone();
        let current = gw.engine().contract().version.0.clone();
        let refused = last_refusal.clone();
        let outcome =
            tokio::task::spawn_blocking(move || check(&gw2, &current, refused.as_deref())).await;
        match outcome {
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Swapped) => last_refusal = None,
            Ok(Reloaded::Refused(why)) => last_refusal = Some(why),
            Err(e) => tracing::error!(error = %e, "contract reload task failed"),
        }
    }
}

enum Reloaded {
    Unchanged,
    Swapped,
    /// The file is invalid (or could not be applied); the reason, so it is recorded once.
    Refused(String),
}

fn check(gw: &Gateway, current: &str, already_refused: Option<&str>) -> Reloaded {
    let (loaded, snapshot) = match load_with_snapshot(&gw.contract_path) {
        Ok(found) => found,
        Err(errors) => return refuse(gw, errors.to_string(), already_refused),
    };
    if loaded.contract.version.0 == current {
        return Reloaded::Unchanged;
    }
    let version = loaded.contract.version.0.clone();
    match make_in_force(
        &gw.store,
        &gw.ledger,
        loaded.contract,
        &snapshot,
        &gw.operator,
    ) {
        Ok((engine, applied)) => {
            gw.engine.store(Arc::new(engine));
            metrics::reload("applied");
            let loosening = applied.as_ref().is_some_and(|a| a.loosening);
            tracing::info!(version = %short_hash(&version), loosening, "contract reloaded");
            Reloaded::Swapped
        }
        Err(failure) => refuse(gw, failure.message, already_refused),
    }
}

fn refuse(gw: &Gateway, why: String, already_refused: Option<&str>) -> Reloaded {
    if already_refused == Some(why.as_str()) {
        return Reloaded::Refused(why);
    }
    metrics::reload("refused");
    tracing::error!(error = %why, "the changed contract is invalid; the last good version keeps governing");
    let recorded = gw.ledger.record_change(
        RecordKind::Admin,
        now(),
        &gw.operator,
        "contract_reload_refused",
        json!({ "file": gw.contract_path.display().to_string(), "why": why, "in_force": gw.engine().contract().version }),
    );
    if let Err(e) = recorded {
        tracing::error!(error = %e.message, "the refused reload could not be recorded");
    }
    Reloaded::Refused(why)
}
