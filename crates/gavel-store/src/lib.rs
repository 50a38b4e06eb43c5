//! Where governance state lives: API keys (hashed), approvals, deployment registrations,
//! contract versions seen, kill switches, cooldowns, budget windows with in-flight
//! reservations, idempotency keys, abuse strikes, breaches in force, signal rollups and drift
//! baselines.
//!
//! [`Store`] is the one narrow interface; [`SqliteStore`] is the embedded implementation. The
//! trait speaks in domain types only (no SQL, no rows), so a PostgreSQL backend implements the
//! same methods and runs the same test suite (`tests/it/suite.rs`). The engine's view of state
//! is [`gavel_engine::RuntimeState`], which every `Store` also implements.
//!
//! ```
//! use gavel_store::{SqliteStore, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
//! assert!(store.keys().unwrap().is_empty());
//! ```

mod keys;
mod sqlite;

pub use keys::{hash_key, KeyRecord, Role};
pub use sqlite::{Batch, Durability, SqliteStore};

use gavel_contract::time::Timestamp;
use gavel_contract::Snapshot;
use gavel_engine::approval::Registration;
use gavel_engine::{Approval, Breach, Cooldown, Kill, RuntimeState, Scope};

/// A storage failure, described for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for gavel_engine::StateError {
    fn from(e: StoreError) -> Self {
        gavel_engine::StateError(e.0)
    }
}

/// Until when [`Store::prune_expired`] deletes, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBefore {
    /// Budget windows, idempotency keys and cooldowns that ended before this.
    pub ended_ms: i64,
    /// Reservations never settled whose resource claims lapsed before this.
    pub unsettled_ms: i64,
}

/// A contract version as first applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractRecord {
    pub version: String,
    pub applied_by: String,
    pub at: Timestamp,
}

/// One stored bucket of a deployment's signals, as written by one process (`writer`). Rows of
/// the same bucket from different writers add up; the body is gavel-monitor's encoded bucket,
/// which the store does not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub deployment: String,
    pub start_ms: i64,
    pub writer: String,
    pub body: Vec<u8>,
}

/// The distributions drift is measured against, recorded with an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBaseline {
    pub approval_id: String,
    pub deployment: String,
    pub recorded_at: Timestamp,
    pub recorded_by: String,
    /// Where it came from: `file:<sha256>` or `traffic:<from>..<to>`.
    pub source: String,
    /// gavel-monitor's baseline as JSON.
    pub body: String,
}

/// Everything gavel keeps besides the ledger.
pub trait Store: RuntimeState {
    fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked; returns false if no such unrevoked key exists.
    fn revoke_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError>;

    /// Records a contract version and the files it was built from; returns false if it was
    /// applied before (its record and files are kept as first applied).
    fn record_contract(
        &self,
        record: &ContractRecord,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError>;
    fn contract_applied(&self, version: &str) -> Result<Option<ContractRecord>, StoreError>;
    /// The most recently applied version, with the files it was built from.
    fn latest_contract(&self) -> Result<Option<(ContractRecord, Snapshot)>, StoreError>;
    fn registration(&self, deployment: &str) -> Result<Option<Registration>, StoreError>;
    fn set_registration(
        &self,
        deployment: &str,
        registration: &Registration,
    ) -> Result<(), StoreError>;

    /// Writes an approval if the stored one is still as the caller read it (`read`: `None` for
    /// a new approval), so that a signoff racing a revocation or another signoff cannot undo
    /// it. Returns false, writing nothing, when it changed in between.
    fn save_approval(
        &self,
        approval: &Approval,
        read: Option<&Approval>,
    ) -> Result<bool, StoreError>;
    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError>;
    /// Every approval, oldest first.
    fn all_approvals(&self) -> Result<Vec<Approval>, StoreError>;

    fn set_kill(&self, kill: &Kill) -> Result<(), StoreError>;
    /// Removes a kill switch and returns it, if one was set.
    fn clear_kill(&self, scope: &Scope) -> Result<Option<Kill>, StoreError>;
    /// Kill switches in force at `now`.
    fn kills(&self, now: Timestamp) -> Result<Vec<Kill>, StoreError>;
    /// Cooldowns in force at `now`.
    fn cooldowns(&self, now: Timestamp) -> Result<Vec<Cooldown>, StoreError>;
    /// Cooldowns that ended by `now` and whose end is not in the ledger yet, by row id.
    fn ended_cooldowns_unrecorded(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(i64, Cooldown)>, StoreError>;
    /// Notes that a cooldown's end is in the ledger.
    fn cooldown_end_recorded(&self, id: i64) -> Result<(), StoreError>;

    /// Puts a breach in force on its deployment; false, writing nothing, when one already is.
    fn start_breach(&self, breach: &Breach) -> Result<bool, StoreError>;
    /// Replaces the deployment's breach in force (a cooldown extended after a failed probe).
    fn update_breach(&self, breach: &Breach) -> Result<(), StoreError>;
    /// Ends the deployment's breach and returns it, if there was one.
    fn end_breach(&self, deployment: &str) -> Result<Option<Breach>, StoreError>;
    /// Every breach in force.
    fn breaches(&self) -> Result<Vec<Breach>, StoreError>;

    /// Writes rollup rows, replacing rows with the same deployment, start and writer.
    fn save_rollups(&self, rows: &[Rollup]) -> Result<(), StoreError>;
    /// Rows of buckets starting at or after `from_ms`, optionally of one deployment.
    fn rollups_since(
        &self,
        from_ms: i64,
        deployment: Option<&str>,
    ) -> Result<Vec<Rollup>, StoreError>;
    /// Deletes rows of buckets that started before `before_ms`; returns how many.
    fn prune_rollups(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Deletes what counts for nothing any more: budget windows, idempotency keys and
    /// cooldowns that ended before `cutoffs.ended_ms`, and reservations (with their resource
    /// claims) that expired before `cutoffs.unsettled_ms`, whose outcome is then refused as
    /// for an unknown decision. Returns how many rows went.
    fn prune_expired(&self, cutoffs: PruneBefore) -> Result<usize, StoreError>;

    /// Whether a decision still holds an open reservation (no outcome settled it yet).
    fn reservation_open(&self, decision_id: &str) -> Result<bool, StoreError>;
    /// Claims, all or none, what a decision may be given once (`feedback:<id>`,
    /// `judged:<id>`) for `by`; the first key already claimed, writing nothing, if any was.
    fn claim_reports(&self, keys: &[String], by: &str) -> Result<Option<String>, StoreError>;
    /// Claims `key` for work begun at `now_ms` and held only while it records and stores (an
    /// outcome's [`settling_claim`], an approval's baseline); a claim made before
    /// `stale_before_ms` is taken over (its holder died between claiming and giving it back).
    /// False when a live holder has it.
    fn claim_expiring(
        &self,
        key: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Gives back claims (of [`Store::claim_reports`] or [`Store::claim_expiring`]) whose
    /// report recorded nothing, so that it can be made again, or that were held only while
    /// settling.
    fn release_reports(&self, keys: &[String]) -> Result<(), StoreError>;

    /// Records the baseline of an approval, replacing an earlier one of the same approval.
    fn save_baseline(&self, baseline: &StoredBaseline) -> Result<(), StoreError>;
    fn baseline(&self, approval_id: &str) -> Result<Option<StoredBaseline>, StoreError>;
}

/// The report claim an outcome holds while it records and settles its decision's reservation
/// ([`hold_claim`]).
pub fn settling_claim(decision_id: &str) -> String {
    format!("settling:{decision_id}")
}

/// How long a [`HeldClaim`] may go unreleased before another may take it over: far longer than
/// recording and storing take, short enough for a retry after a crash.
pub const CLAIM_GOES_STALE_MS: i64 = 60_000;

/// A claim of [`Store::claim_expiring`], given back when dropped: when its work is done or has
/// failed, so that it can be done again. One whose holder died is taken over once stale.
pub struct HeldClaim<'s> {
    store: &'s dyn Store,
    key: [String; 1],
}

impl Drop for HeldClaim<'_> {
    fn drop(&mut self) {
        // A claim a failing store keeps is taken over once stale.
        let _ = self.store.release_reports(&self.key);
    }
}

/// Claims `key` for work begun at `now_ms`, held until the [`HeldClaim`] is dropped; None when a
/// live holder has it.
pub fn hold_claim(
    store: &dyn Store,
    key: String,
    now_ms: i64,
) -> Result<Option<HeldClaim<'_>>, StoreError> {
    let stale_before = now_ms.saturating_sub(CLAIM_GOES_STALE_MS);
    Ok(store
        .claim_expiring(&key, now_ms, stale_before)?
        .then(|| HeldClaim { store, key: [key] }))
}
