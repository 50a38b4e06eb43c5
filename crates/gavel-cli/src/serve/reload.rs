//! Contract hot reload: the contract's files are watched on an interval (modification time and
//! size; a full read when they change, and every 30 s regardless); a valid new version is
//! applied (recorded with what changed and its loosening flag, as `gavel apply` records it) and
//! swapped in atomically; an invalid one is refused, recorded and logged, and the last good
//! version keeps governing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use gavel_contract::{load_with_snapshot, short_hash, Contract, Snapshot};
use gavel_engine::{Engine, EngineConfig};
use gavel_ledger::RecordKind;
use gavel_store::{KeyRecord, Role, Store};

use super::gateway::Gateway;
use super::metrics;
use crate::cmd::apply::{apply, Applied};
use crate::context::now;
use crate::failure::Failure;
use crate::ledger::Ledger;

/// Makes `contract` the version in force (if it is not already) and returns its engine. A
/// version not yet in force is applied in the name of `operator`, whose key must still be an
/// active operator's or admin's (a revoked key authorises nothing, a running gateway's reloads
/// included; read from the store each time); one already in force (applied by someone else) is
/// only taken up.
pub fn make_in_force(
    store: &gavel_store::SqliteStore,
    ledger: &Ledger,
    contract: Contract,
    snapshot: &Snapshot,
    operator: &KeyRecord,
) -> Result<(Engine, Option<Applied>), Failure> {
    let in_force = store
        .latest_contract()?
        .is_some_and(|(latest, _)| latest.version == contract.version.0);
    let applied = if in_force {
        None
    } else {
        still_holds(store, operator)?;
        Some(apply(
            store,
            ledger,
            &contract,
            snapshot,
            &operator.principal,
            now(),
        )?)
    };
    let config = EngineConfig::standard().map_err(Failure::storage)?;
    Ok((Engine::new(Arc::new(contract), config), applied))
}

/// The files a contract was read from.
pub fn files_of(contract_path: &Path, snapshot: &Snapshot) -> Vec<PathBuf> {
    let file = gavel_contract::contract_file(contract_path);
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    snapshot.files.keys().map(|name| base.join(name)).collect()
}

/// Modification time and size of each file: a cheap test of whether anything changed since the
/// last full read (which parses, validates and hashes everything).
#[derive(PartialEq)]
struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Fingerprint {
        Fingerprint(
            files
                .iter()
                .map(|f| {
                    std::fs::metadata(f)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
        )
    }
}

/// Reads the contract in full at least this often, whatever the fingerprint says (a file that an
/// invalid version named may appear without the others changing).
const FULL_READ_EVERY: Duration = Duration::from_secs(30);

/// Polls the contract until `stop` fires: a fingerprint every `every`, a full read when it
/// changed.
pub async fn watch(
    gw: Arc<Gateway>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut files: Vec<PathBuf>,
) {
    let mut last_refusal: Option<String> = None;
    // Nothing seen yet, so the first tick reads in full: an edit made after start-up read the
    // contract but before this task first ran would otherwise look like the state already seen,
    // and wait for the 30-second full read (the reload test met exactly that on a busy machine).
    let mut seen = Fingerprint(Vec::new());
    let mut last_full_read = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let now_seen = Fingerprint::of(&files);
        if now_seen == seen && last_full_read.elapsed() < FULL_READ_EVERY {
            continue;
        }
        seen = now_seen;
        last_full_read = Instant::now();
        let gw2 = gw.clone();
        let current = gw.engine().contract().version.0.clone();
        let refused = last_refusal.clone();
        let outcome =
            tokio::task::spawn_blocking(move || check(&gw2, &current, refused.as_deref())).await;
        match outcome {
            Ok((reloaded, read)) => {
                // `seen` was taken before the read, so a change made during it is seen next
                // time. A different set of files has no fingerprint yet: read again next time.
                if let Some(read) = read.filter(|read| *read != files) {
                    files = read;
                    seen = Fingerprint(Vec::new());
                }
                match reloaded {
                    // The file is the version in force again: a refusal after this is new.
                    Reloaded::Unchanged | Reloaded::Swapped => last_refusal = None,
                    Reloaded::Refused(why) => last_refusal = Some(why),
                }
            }
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

/// Reads the contract in full; with the outcome, the files it was read from (when it loaded).
fn check(
    gw: &Gateway,
    current: &str,
    already_refused: Option<&str>,
) -> (Reloaded, Option<Vec<PathBuf>>) {
    let (loaded, snapshot) = match load_with_snapshot(&gw.contract_path) {
        Ok(found) => found,
        Err(errors) => return (refuse(gw, errors.to_string(), already_refused), None),
    };
    let files = Some(files_of(&gw.contract_path, &snapshot));
    if loaded.contract.version.0 == current {
        return (Reloaded::Unchanged, files);
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
            (Reloaded::Swapped, files)
        }
        Err(failure) => (refuse(gw, failure.message, already_refused), files),
    }
}

/// Whether `key` is still an active operator's or admin's key, as when it started the gateway.
fn still_holds(store: &gavel_store::SqliteStore, key: &KeyRecord) -> Result<(), Failure> {
    let action = "applying a contract change";
    crate::context::active_key(store, &key.hash)
        .and_then(|now| crate::context::role_allowed(&now, &[Role::Operator, Role::Admin], action))
        .map_err(|e| {
            Failure::auth(format!(
                "the key that started this gateway cannot apply contract changes any more ({}); restart it with an active operator key",
                e.message
            ))
        })
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
        &gw.operator.principal,
        "contract_reload_refused",
        json!({ "file": gw.contract_path.display().to_string(), "why": why, "in_force": gw.engine().contract().version }),
    );
    if let Err(e) = recorded {
        tracing::error!(error = %e.message, "the refused reload could not be recorded");
    }
    Reloaded::Refused(why)
}
