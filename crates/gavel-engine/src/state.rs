//! The governance state the engine reads and the counters it updates, behind one trait.
//!
//! The engine knows nothing about where state lives: `MemoryState` (in this crate) keeps it in
//! process, `gavel-store` keeps it in SQLite (and later PostgreSQL/Redis). Every method may fail;
//! the engine turns any failure into BLOCK `governance.unavailable`, never into an ALLOW.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use gavel_contract::time::Timestamp;

/// What a kill switch or a cooldown applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "id", rename_all = "snake_case")]
pub enum Scope {
    All,
    UseCase(String),
    Deployment(String),
    Principal(String),
    Run(String),
}

impl Scope {
    /// `all`, `use_case:ID`, `deployment:ID`, `principal:NAME`, `run:ID`.
    pub fn key(&self) -> String {
        match self {
            Scope::All => "all".to_string(),
            Scope::UseCase(id) => format!("use_case:{id}"),
            Scope::Deployment(id) => format!("deployment:{id}"),
            Scope::Principal(id) => format!("principal:{id}"),
            Scope::Run(id) => format!("run:{id}"),
        }
    }

    pub fn parse_key(key: &str) -> Option<Scope> {
        if key == "all" {
            return Some(Scope::All);
        }
        let (kind, id) = key.split_once(':')?;
        let id = id.to_string();
        match kind {
            "use_case" => Some(Scope::UseCase(id)),
            "deployment" => Some(Scope::Deployment(id)),
            "principal" => Some(Scope::Principal(id)),
            "run" => Some(Scope::Run(id)),
            _ => None,
        }
    }
}

/// An operator's stop. With `until` it is a timed kill (COOLDOWN until then), else a BLOCK
/// until someone unkills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub scope: Scope,
    pub reason: String,
    pub by: String,
    pub at: Timestamp,
    pub until: Option<Timestamp>,
}

/// A pause until `until`, started by the engine (abuse strikes) or monitoring (breaches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooldown {
    pub scope: Scope,
    /// The reason code that started it, e.g. `abuse.cooldown`.
    pub code: String,
    pub reason: String,
    pub since: Timestamp,
    pub until: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Some signoffs are still missing.
    Pending,
    /// Complete: every requirement of the tier was met.
    Active,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signoff {
    pub principal: String,
    /// The approver's governance role (e.g. `risk`), from their key.
    pub approver_role: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: String,
    pub path: String,
    pub sha256: String,
}

/// What happens when a threshold is breached (applied by monitoring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OnBreach {
    Cooldown { seconds: u64 },
    Fallback,
    Block,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub by: String,
    pub at: Timestamp,
    pub reason: String,
}

/// A decision by people: this binding of this deployment may serve this use case and
/// population until `expires_at`, under these thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub deployment: String,
    pub use_case: String,
    pub binding: String,
    pub contract_version: String,
    pub tier: String,
    pub population: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub thresholds: BTreeMap<String, f64>,
    pub on_breach: OnBreach,
    pub evidence: Vec<Evidence>,
    pub signoffs: Vec<Signoff>,
    pub status: ApprovalStatus,
    pub revocation: Option<Revocation>,
    /// When its last signoff brought it into force (absent: never, or before this was kept).
    /// An approval that was once in force supersedes every earlier one for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Timestamp>,
}

impl Approval {
    /// `pending`, `active`, `expired` or `revoked` as of `now`.
    pub fn state_at(&self, now: Timestamp) -> &'static str {
        match self.status {
            ApprovalStatus::Revoked => "revoked",
            _ if now >= self.expires_at => "expired",
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Active => "active",
        }
    }
}

/// A threshold breach in force on a deployment, started by monitoring under the approval's
/// `on_breach`; it ends when monitoring sees the signal recover (or a new approval).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    pub id: String,
    pub deployment: String,
    pub approval_id: String,
    /// The threshold name (`drift`, `drift_js`, `latency`, ...).
    pub threshold: String,
    /// The signal it watches, as in `contract.breach.<signal>`.
    pub signal: String,
    pub value: f64,
    pub limit: f64,
    pub on_breach: OnBreach,
    pub since: Timestamp,
    /// For a cooldown: when it ends and probe traffic is let through.
    pub until: Option<Timestamp>,
}

/// The slice of governance state one decision reads.
#[derive(Debug, Clone, Default)]
pub struct GovernanceView {
    /// Kill switches on `all`, the use case or the deployment.
    pub kills: Vec<Kill>,
    /// Unexpired cooldowns on the deployment, use case, principal or run.
    pub cooldowns: Vec<Cooldown>,
    /// Every approval ever made for the deployment (and its route targets are fetched
    /// separately); the engine picks the one that applies.
    pub approvals: Vec<Approval>,
    /// The breach in force on the deployment, if any.
    pub breach: Option<Breach>,
}

/// Amounts charged to a budget window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    pub tokens: u64,
    pub usd_micros: u64,
    pub requests: u64,
    pub tool_calls: u64,
}

impl Amounts {
    pub fn of(self, measure: Measure) -> u64 {
        match measure {
            Measure::Tokens => self.tokens,
            Measure::UsdMicros => self.usd_micros,
            Measure::Requests => self.requests,
            Measure::ToolCalls => self.tool_calls,
        }
    }

    pub fn saturating_add(self, other: Amounts) -> Amounts {
        Amounts {
            tokens: self.tokens.saturating_add(other.tokens),
            usd_micros: self.usd_micros.saturating_add(other.usd_micros),
            requests: self.requests.saturating_add(other.requests),
            tool_calls: self.tool_calls.saturating_add(other.tool_calls),
        }
    }

    /// What settling charges for a call reserved as `reserved` that reports using `self`: the
    /// report, up to twice the reservation plus a margin (1,024 tokens, $0.001, 8 tool calls,
    /// 1 request). A call cannot use more completion tokens than the `max_tokens` reserved
    /// for it, and its prompt was counted when it was reserved; a report far past both is not
    /// a call this reservation allowed, and settled whole it would fill every window the
    /// reservation charged (one outcome claiming 2^53 tokens locked a use case out for a day).
    ///
    /// A report of an action that ran (it counts its request) keeps at least the tool calls
    /// reserved: a `tool_call` action is one whatever the caller reports (`--tool-calls`
    /// defaults to 0), so an outcome cannot hand its run's tool-call budget back. A withdrawal
    /// (nothing ran: all zero) gives everything back.
    pub fn settled_within(self, reserved: Amounts) -> Amounts {
        let cap = |actual: u64, reserved: u64, margin: u64| {
            actual.min(reserved.saturating_mul(2).saturating_add(margin))
        };
        let tool_calls = if self.requests > 0 {
            self.tool_calls.max(reserved.tool_calls)
        } else {
            self.tool_calls
        };
        Amounts {
            tokens: cap(self.tokens, reserved.tokens, 1_024),
            usd_micros: cap(self.usd_micros, reserved.usd_micros, 1_000),
            requests: cap(self.requests, reserved.requests, 1),
            tool_calls: cap(tool_calls, reserved.tool_calls, 8),
        }
    }

    pub fn saturating_sub(self, other: Amounts) -> Amounts {
        Amounts {
            tokens: self.tokens.saturating_sub(other.tokens),
            usd_micros: self.usd_micros.saturating_sub(other.usd_micros),
            requests: self.requests.saturating_sub(other.requests),
            tool_calls: self.tool_calls.saturating_sub(other.tool_calls),
        }
    }
}

/// Limits of one window (`None` = no limit on that measure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowLimits {
    pub tokens: Option<u64>,
    pub usd_micros: Option<u64>,
    pub requests: Option<u64>,
    pub tool_calls: Option<u64>,
}

/// Which measure of a window overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Tokens,
    UsdMicros,
    Requests,
    ToolCalls,
}

impl WindowLimits {
    /// The first measure for which `used + add` would exceed the limit.
    pub fn overflow(&self, used: Amounts, add: Amounts) -> Option<(Measure, u64, u64)> {
        let checks = [
            (Measure::Tokens, self.tokens, used.tokens, add.tokens),
            (
                Measure::UsdMicros,
                self.usd_micros,
                used.usd_micros,
                add.usd_micros,
            ),
            (
                Measure::Requests,
                self.requests,
                used.requests,
                add.requests,
            ),
            (
                Measure::ToolCalls,
                self.tool_calls,
                used.tool_calls,
                add.tool_calls,
            ),
        ];
        checks.into_iter().find_map(|(measure, limit, used, add)| {
            let limit = limit?;
            (add > 0 && used.saturating_add(add) > limit).then_some((measure, limit, used))
        })
    }
}

/// One window a reservation is charged to. `key` identifies the counter: the budget line, the
/// scope value and the window's start, so the same line counts separately per use case,
/// principal or run and per window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCharge {
    pub key: String,
    pub limits: WindowLimits,
    pub amounts: Amounts,
    /// When the window ends (`None` for run budgets that never reset).
    pub resets_at: Option<Timestamp>,
}

/// A capacity held while an action runs (memory, external calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceClaim {
    pub name: String,
    pub amount: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRequest {
    pub reservation_id: String,
    pub windows: Vec<WindowCharge>,
    pub resources: Vec<ResourceClaim>,
    /// Unsettled reservations stop holding resources at this instant (their budget charge
    /// stays at the estimate), so a caller that never reports back cannot leak capacity.
    pub expires_at: Timestamp,
}

impl ReservationRequest {
    /// The first window or resource this reservation would overflow, given each window's usage
    /// and each resource's amount in use. Backends call it inside their atomic section, so the
    /// rule is written once.
    pub fn first_refusal<E>(
        &self,
        mut window_usage: impl FnMut(&str) -> Result<Amounts, E>,
        mut resource_in_use: impl FnMut(&str) -> Result<u64, E>,
    ) -> Result<Option<Refusal>, E> {
        for charge in &self.windows {
            let used = window_usage(&charge.key)?;
            if let Some((measure, limit, used)) = charge.limits.overflow(used, charge.amounts) {
                return Ok(Some(Refusal::Window {
                    key: charge.key.clone(),
                    measure,
                    limit,
                    used,
                    requested: charge.amounts.of(measure),
                    resets_at: charge.resets_at,
                }));
            }
        }
        for claim in &self.resources {
            let in_use = resource_in_use(&claim.name)?;
            if in_use.saturating_add(claim.amount) > claim.capacity {
                return Ok(Some(Refusal::Resource {
                    name: claim.name.clone(),
                    capacity: claim.capacity,
                    in_use,
                    requested: claim.amount,
                }));
            }
        }
        Ok(None)
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    Window {
        key: String,
        measure: Measure,
        limit: u64,
        used: u64,
        requested: u64,
        resets_at: Option<Timestamp>,
    },
    Resource {
        name: String,
        capacity: u64,
        in_use: u64,
        requested: u64,
    },
}

/// Errors from the state backend. The engine treats every one as "cannot decide".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

/// The outcome of settling a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Settled,
    /// Already settled, or never existed.
    Unknown,
}

/// Everything the engine needs from governance state.
pub trait RuntimeState: Send + Sync {
    /// Kills, cooldowns and approvals relevant to one request.
    fn view(
        &self,
        deployment: &str,
        use_case: &str,
        principal: &str,
        run_id: Option<&str>,
        now: Timestamp,
    ) -> Result<GovernanceView, StateError>;

    /// Approvals of another deployment (a route target).
    fn approvals_of(&self, deployment: &str) -> Result<Vec<Approval>, StateError>;

    /// Atomically records `key` -> `decision_id` unless the key is already held and unexpired,
    /// in which case the first decision's id is returned and nothing is recorded.
    fn claim_idempotency(
        &self,
        key: &str,
        decision_id: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<String>, StateError>;

    /// Gives a key back if `decision_id` still holds it: a refused request executed nothing, so
    /// a retry with the same key must be decided afresh.
    fn release_idempotency(&self, key: &str, decision_id: &str) -> Result<(), StateError>;

    /// Atomically charges every window and claims every resource, or nothing. In-flight
    /// reservations count. With `dry_run`, checks without recording anything.
    fn reserve(
        &self,
        request: &ReservationRequest,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<Result<(), Refusal>, StateError>;

    /// Replaces a reservation's estimated amounts with the actual ones (per window, in the
    /// window it was charged to) and releases its resources.
    fn settle(
        &self,
        reservation_id: &str,
        actual: Amounts,
        now: Timestamp,
    ) -> Result<Settled, StateError>;

    /// [`RuntimeState::settle`] for many reservations at once (a backend may do them in one
    /// transaction); one answer per settlement, in order.
    fn settle_many(
        &self,
        settlements: &[(String, Amounts)],
        now: Timestamp,
    ) -> Result<Vec<Settled>, StateError> {
        settlements
            .iter()
            .map(|(reservation_id, actual)| self.settle(reservation_id, *actual, now))
            .collect()
    }

    /// Records an abuse strike against `principal` and returns how many strikes it has within
    /// `[now - within, now]`.
    fn add_strike(
        &self,
        principal: &str,
        now: Timestamp,
        within_ms: u64,
    ) -> Result<u32, StateError>;

    /// Starts a cooldown (abuse, breach).
    fn start_cooldown(&self, cooldown: &Cooldown) -> Result<(), StateError>;
}
