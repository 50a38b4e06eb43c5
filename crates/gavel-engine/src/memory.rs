//! Governance state held in process: for embedding the engine as a library, for tests and for
//! benchmarks. One mutex guards the counters, which makes reserve-check-and-charge atomic; the
//! critical section is a few map lookups.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use gavel_contract::time::Timestamp;

use crate::state::*;

#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    kills: BTreeMap<Scope, Kill>,
    cooldowns: Vec<Cooldown>,
    approvals: BTreeMap<String, Vec<Approval>>,
    idempotency: HashMap<String, (String, Timestamp)>,
    windows: HashMap<String, Amounts>,
    reservations: HashMap<String, HeldReservation>,
    strikes: HashMap<String, Vec<Timestamp>>,
    breaches: HashMap<String, Breach>,
}

struct HeldReservation {
    windows: Vec<(String, Amounts)>,
    resources: Vec<(String, u64)>,
    expires_at: Timestamp,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StateError> {
        self.inner
            .lock()
            .map_err(|_| StateError("in-memory state is poisoned by an earlier panic".into()))
    }

    pub fn kill(&self, kill: Kill) -> Result<(), StateError> {
        self.lock()?.kills.insert(kill.scope.clone(), kill);
        Ok(())
    }

    pub fn unkill(&self, scope: &Scope) -> Result<bool, StateError> {
        Ok(self.lock()?.kills.remove(scope).is_some())
    }

    /// Adds or replaces (by id) an approval.
    /// Puts a breach in force on its deployment (replacing any other), as monitoring does.
    pub fn set_breach(&self, breach: Breach) -> Result<(), StateError> {
        self.lock()?
            .breaches
            .insert(breach.deployment.clone(), breach);
        Ok(())
    }

    pub fn clear_breach(&self, deployment: &str) -> Result<Option<Breach>, StateError> {
        Ok(self.lock()?.breaches.remove(deployment))
    }

    pub fn put_approval(&self, approval: Approval) -> Result<(), StateError> {
        let mut inner = self.lock()?;
        let list = inner
            .approvals
            .entry(approval.deployment.clone())
            .or_default();
        list.retain(|a| a.id != approval.id);
        list.push(approval);
        Ok(())
    }

    /// Total amounts charged to a window key (for tests and status).
    pub fn window_usage(&self, key: &str) -> Result<Amounts, StateError> {
        Ok(self.lock()?.windows.get(key).copied().unwrap_or_default())
    }

    /// Every window's usage, for invariant checks.
    pub fn all_windows(&self) -> Result<Vec<(String, Amounts)>, StateError> {
        Ok(self
            .lock()?
            .windows
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    /// Reservations not yet settled (and not expired as of `now`).
    pub fn open_reservations(&self, now: Timestamp) -> Result<usize, StateError> {
        Ok(self
            .lock()?
            .reservations
            .values()
            .filter(|r| r.expires_at > now)
            .count())
    }

    /// Resource amounts held by unexpired reservations.
    pub fn resources_in_use(&self, name: &str, now: Timestamp) -> Result<u64, StateError> {
        let inner = self.lock()?;
        Ok(resource_in_use(&inner, name, now))
    }
}

fn resource_in_use(inner: &Inner, name: &str, now: Timestamp) -> u64 {
    inner
        .reservations
        .values()
        .filter(|r| r.expires_at > now)
        .flat_map(|r| r.resources.iter())
        .filter(|(n, _)| n == name)
        .map(|(_, amount)| *amount)
        .sum()
}

impl RuntimeState for MemoryState {
    fn view(
        &self,
        deployment: &str,
        use_case: &str,
        principal: &str,
        run_id: Option<&str>,
        now: Timestamp,
    ) -> Result<GovernanceView, StateError> {
        let inner = self.lock()?;
        let scopes = relevant_scopes(deployment, use_case, principal, run_id);
        Ok(GovernanceView {
            kills: scopes
                .iter()
                .filter_map(|s| inner.kills.get(s))
                .filter(|k| k.until.is_none_or(|until| until > now))
                .cloned()
                .collect(),
            cooldowns: inner
                .cooldowns
                .iter()
                .filter(|c| c.until > now && scopes.contains(&c.scope))
                .cloned()
                .collect(),
            approvals: inner.approvals.get(deployment).cloned().unwrap_or_default(),
            breach: inner.breaches.get(deployment).cloned(),
        })
    }

    fn approvals_of(&self, deployment: &str) -> Result<Vec<Approval>, StateError> {
        Ok(self
            .lock()?
            .approvals
            .get(deployment)
            .cloned()
            .unwrap_or_default())
    }

    fn claim_idempotency(
        &self,
        key: &str,
        decision_id: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<String>, StateError> {
        let mut inner = self.lock()?;
        if let Some((first, until)) = inner.idempotency.get(key) {
            if *until > now {
                return Ok(Some(first.clone()));
            }
        }
        inner
            .idempotency
            .insert(key.to_string(), (decision_id.to_string(), expires_at));
        Ok(None)
    }

    fn release_idempotency(&self, key: &str, decision_id: &str) -> Result<(), StateError> {
        let mut inner = self.lock()?;
        if inner
            .idempotency
            .get(key)
            .is_some_and(|(holder, _)| holder == decision_id)
        {
            inner.idempotency.remove(key);
        }
        Ok(())
    }

    fn reserve(
        &self,
        request: &ReservationRequest,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<Result<(), Refusal>, StateError> {
        let mut inner = self.lock()?;
        let refusal = request.first_refusal(
            |key| Ok::<_, StateError>(inner.windows.get(key).copied().unwrap_or_default()),
            |name| Ok(resource_in_use(&inner, name, now)),
        )?;
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
        if dry_run {
            return Ok(Ok(()));
        }
        for charge in &request.windows {
            let used = inner.windows.entry(charge.key.clone()).or_default();
            *used = used.saturating_add(charge.amounts);
        }
        inner.reservations.insert(
            request.reservation_id.clone(),
            HeldReservation {
                windows: request
                    .windows
                    .iter()
                    .map(|c| (c.key.clone(), c.amounts))
                    .collect(),
                resources: request
                    .resources
                    .iter()
                    .map(|r| (r.name.clone(), r.amount))
                    .collect(),
                expires_at: request.expires_at,
            },
        );
        Ok(Ok(()))
    }

    fn settle(
        &self,
        reservation_id: &str,
        actual: Amounts,
        _now: Timestamp,
    ) -> Result<Settled, StateError> {
        let mut inner = self.lock()?;
        let Some(held) = inner.reservations.remove(reservation_id) else {
            return Ok(Settled::Unknown);
        };
        for (key, reserved) in held.windows {
            let used = inner.windows.entry(key).or_default();
            *used = used
                .saturating_sub(reserved)
                .saturating_add(actual.settled_within(reserved));
        }
        Ok(Settled::Settled)
    }

    fn add_strike(
        &self,
        principal: &str,
        now: Timestamp,
        within_ms: u64,
    ) -> Result<u32, StateError> {
        let mut inner = self.lock()?;
        let strikes = inner.strikes.entry(principal.to_string()).or_default();
        let since = now
            .millis()
            .saturating_sub(i64::try_from(within_ms).unwrap_or(i64::MAX));
        strikes.retain(|t| t.millis() >= since);
        strikes.push(now);
        Ok(u32::try_from(strikes.len()).unwrap_or(u32::MAX))
    }

    fn start_cooldown(&self, cooldown: &Cooldown) -> Result<(), StateError> {
        self.lock()?.cooldowns.push(cooldown.clone());
        Ok(())
    }
}

/// The scopes whose kills and cooldowns apply to a request.
pub fn relevant_scopes(
    deployment: &str,
    use_case: &str,
    principal: &str,
    run_id: Option<&str>,
) -> Vec<Scope> {
    let mut scopes = vec![
        Scope::All,
        Scope::UseCase(use_case.to_string()),
        Scope::Deployment(deployment.to_string()),
        Scope::Principal(principal.to_string()),
    ];
    if let Some(run) = run_id {
        scopes.push(Scope::Run(run.to_string()));
    }
    scopes
}
