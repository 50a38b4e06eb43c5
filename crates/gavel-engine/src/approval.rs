//! Approvals: checking a signoff against the taxonomy's requirements, and choosing the approval
//! that covers a request.
//!
//! Approvals are decisions by authenticated people, made through the CLI or API and stored
//! outside the contract. A new approval starts with its terms (population, expiry, thresholds,
//! on_breach, evidence) and the first signoff; it stays `pending` until the tier's number of
//! approvers, distinct roles and spend-tier roles are all covered, then becomes `active`.

use std::collections::{BTreeMap, BTreeSet};

use gavel_contract::short_hash;
use gavel_contract::time::{Span, Timestamp};
use gavel_contract::{BudgetScope, Contract, Deployment, Signal, SpendTier, Tier};

use crate::state::{Approval, ApprovalStatus, Evidence, OnBreach, Revocation, Signoff};

/// Who last registered (applied) a deployment's current binding. Segregation of duties: that
/// principal cannot approve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub binding: String,
    pub changed_by: String,
    pub at: Timestamp,
}

/// The terms a new approval is proposed under.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    pub population: String,
    pub expires_at: Timestamp,
    pub thresholds: BTreeMap<String, f64>,
    pub on_breach: OnBreach,
    pub evidence: Vec<Evidence>,
}

/// The principal signing.
#[derive(Debug, Clone, Copy)]
pub struct Approver<'a> {
    pub principal: &'a str,
    pub approver_role: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SignoffOutcome {
    /// Recorded; these requirements are still open.
    Pending {
        approval: Approval,
        missing: Vec<String>,
    },
    /// Recorded, and the approval is now active.
    Completed(Approval),
}

impl SignoffOutcome {
    pub fn approval(&self) -> &Approval {
        match self {
            SignoffOutcome::Pending { approval, .. } | SignoffOutcome::Completed(approval) => {
                approval
            }
        }
    }
}

/// Parses `cooldown:15m`, `fallback` or `block`.
pub fn parse_on_breach(text: &str) -> Result<OnBreach, String> {
    match text {
        "fallback" => Ok(OnBreach::Fallback),
        "block" => Ok(OnBreach::Block),
        _ => match text.strip_prefix("cooldown:") {
            Some(span) => Span::parse(span).map(|s| OnBreach::Cooldown {
                seconds: s.millis().div_ceil(1000),
            }),
            None => Err(format!(
                "on_breach `{text}` is not one of cooldown:<duration>, fallback, block"
            )),
        },
    }
}

/// One signoff to check.
pub struct Signing<'a> {
    pub deployment_id: &'a str,
    /// The deployment's open approval, if any.
    pub pending: Option<&'a Approval>,
    /// Terms to start a new approval; absent to join a pending one.
    pub terms: Option<Terms>,
    pub approver: Approver<'a>,
    pub registration: Option<&'a Registration>,
    /// The id a new approval gets.
    pub new_id: &'a str,
    pub now: Timestamp,
}

/// Checks one signoff and returns the approval as it stands after it.
///
pub fn sign(contract: &Contract, signing: Signing<'_>) -> Result<SignoffOutcome, String> {
    let Signing {
        deployment_id,
        pending,
        terms,
        approver,
        registration,
        new_id,
        now,
    } = signing;
    let deployment = contract.deployment(deployment_id).ok_or_else(|| {
        format!("deployment `{deployment_id}` is not in the contract; check the name with `gavel check`")
    })?;
    let use_case = contract
        .use_case_of(deployment)
        .ok_or_else(|| format!("deployment `{deployment_id}` has no use case"))?;
    let requirements = contract
        .taxonomy
        .requirements
        .get(&use_case.tier)
        .ok_or_else(|| {
            format!(
                "the taxonomy has no approval requirements for tier `{}`",
                use_case.tier
            )
        })?;
    if use_case.tier == Tier::Unacceptable || !requirements.allowed {
        return Err(format!(
            "use case `{}` (domain `{}`) is tier `{}`, which can never be approved",
            use_case.id, use_case.domain, use_case.tier
        ));
    }
    let binding = &deployment.binding.0;
    let registration = registration.filter(|r| r.binding == *binding).ok_or_else(|| {
        format!(
            "deployment `{deployment_id}`'s current binding {} has not been applied; an operator must run `gavel apply` first",
            short_hash(binding)
        )
    })?;
    if registration.changed_by == approver.principal {
        return Err(format!(
            "segregation of duties: `{}` applied this version of `{deployment_id}` and cannot approve it; another approver must",
            approver.principal
        ));
    }

    let mut approval = match (pending, terms) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "an approval of `{deployment_id}` is already pending; sign it without new terms (omit --population, --expires, --threshold, --evidence, --on-breach) or revoke it first"
            ))
        }
        (Some(open), None) => {
            if open.binding != *binding {
                return Err(format!(
                    "pending approval {} was for binding {}, but the deployment is now {}; revoke it and start a new one",
                    open.id,
                    short_hash(&open.binding),
                    short_hash(binding)
                ));
            }
            if open.signoffs.iter().any(|s| s.principal == approver.principal) {
                return Err(format!(
                    "`{}` has already signed approval {}; a different approver must sign",
                    approver.principal, open.id
                ));
            }
            if now >= open.expires_at {
                return Err(format!("pending approval {} expired before it was complete; start a new one", open.id));
            }
            // Whoever applied the binding since signing it (another version, then this one
            // again) is its last changer now: their signature no longer counts towards it.
            let mut open = open.clone();
            open.signoffs
                .retain(|s| s.principal != registration.changed_by);
            open
        }
        (None, None) => {
            return Err(format!(
                "no approval of `{deployment_id}` is pending; start one with --population, --expires, --on-breach and the thresholds and evidence the tier requires"
            ))
        }
        (None, Some(terms)) => {
            check_terms(&terms, requirements, use_case.tier, now)?;
            Approval {
                id: new_id.to_string(),
                deployment: deployment.id.clone(),
                use_case: use_case.id.clone(),
                binding: binding.clone(),
                contract_version: contract.version.0.clone(),
                tier: use_case.tier.as_str().to_string(),
                population: terms.population,
                created_at: now,
                expires_at: terms.expires_at,
                thresholds: terms.thresholds,
                on_breach: terms.on_breach,
                evidence: terms.evidence,
                signoffs: Vec::new(),
                status: ApprovalStatus::Pending,
                revocation: None,
                activated_at: None,
            }
        }
    };
    approval.signoffs.push(Signoff {
        principal: approver.principal.to_string(),
        approver_role: approver.approver_role.map(str::to_string),
        at: now,
    });

    let mut required_roles: Vec<String> = requirements.distinct_roles.clone();
    for role in spend_roles(contract, deployment) {
        if !required_roles.contains(&role) {
            required_roles.push(role);
        }
    }
    let missing = missing_signoffs(&approval.signoffs, requirements.approvers, &required_roles);
    if missing.is_empty() {
        approval.status = ApprovalStatus::Active;
        approval.activated_at = Some(now);
        Ok(SignoffOutcome::Completed(approval))
    } else {
        Ok(SignoffOutcome::Pending { approval, missing })
    }
}

fn check_terms(
    terms: &Terms,
    requirements: &gavel_contract::ApprovalRequirements,
    tier: Tier,
    now: Timestamp,
) -> Result<(), String> {
    if terms.population.trim().is_empty() {
        return Err("an approval must name the population it covers (--population)".into());
    }
    if terms.expires_at <= now {
        return Err("the expiry is not in the future (--expires)".into());
    }
    if let Some(days) = requirements.max_validity_days {
        let limit = now.saturating_add(Span::from_days(u64::from(days)));
        if terms.expires_at > limit {
            return Err(format!(
                "tier `{tier}` approvals last at most {days} days: expire on or before {}",
                limit.to_rfc3339()
            ));
        }
    }
    for name in terms.thresholds.keys() {
        if Signal::of_threshold(name).is_none() {
            return Err(format!(
                "unknown threshold `{name}`; expected one of {}, drift_js",
                Signal::ALL.map(Signal::as_str).join(", ")
            ));
        }
    }
    for (name, value) in &terms.thresholds {
        if let Some(why) = Signal::threshold_out_of_range(name, *value) {
            return Err(why);
        }
    }
    let missing_thresholds: Vec<&str> = requirements
        .require_thresholds
        .iter()
        .map(|s| s.as_str())
        // `drift_js` (Jensen-Shannon) is a drift threshold as much as `drift` (PSI).
        .filter(|s| {
            !terms
                .thresholds
                .keys()
                .any(|k| k == s || (*s == "drift" && k == "drift_js"))
        })
        .collect();
    if !missing_thresholds.is_empty() {
        return Err(format!(
            "tier `{tier}` requires thresholds on {}; missing: {} (add --threshold NAME=VALUE)",
            requirements
                .require_thresholds
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            missing_thresholds.join(", ")
        ));
    }
    let have: BTreeSet<&str> = terms.evidence.iter().map(|e| e.kind.as_str()).collect();
    let missing_evidence: Vec<&str> = requirements
        .evidence
        .iter()
        .map(String::as_str)
        .filter(|k| !have.contains(k))
        .collect();
    if !missing_evidence.is_empty() {
        return Err(format!(
            "tier `{tier}` requires evidence of kinds {}; missing: {} (add --evidence KIND=PATH)",
            requirements.evidence.join(", "),
            missing_evidence.join(", ")
        ));
    }
    Ok(())
}

/// What the signoffs still lack: more approvers, or a distinct approver for a role.
fn missing_signoffs(signoffs: &[Signoff], approvers: u32, roles: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    let count = signoffs.len() as u32;
    if count < approvers {
        let more = approvers - count;
        let plural = if more == 1 { "" } else { "s" };
        missing.push(format!(
            "{more} more approver{plural} ({count} of {approvers})"
        ));
    }
    // Each role needs its own principal: match roles to distinct signers greedily (each signer
    // has one role, so greedy is exact).
    let mut used = BTreeSet::new();
    for role in roles {
        let signer = signoffs.iter().find(|s| {
            s.approver_role.as_deref() == Some(role.as_str()) && !used.contains(&s.principal)
        });
        match signer {
            Some(s) => {
                used.insert(s.principal.clone());
            }
            None => missing.push(format!("an approver with role `{role}`")),
        }
    }
    missing
}

/// The most a deployment can spend in a calendar month under the contract's USD budgets, or
/// `None` when no budget bounds it (principal and run budgets do not: there is no bound on their
/// number).
pub fn monthly_spend_ceiling_usd(contract: &Contract, deployment: &Deployment) -> Option<f64> {
    contract
        .policy
        .budgets
        .iter()
        .filter(|b| {
            matches!(
                b.scope,
                BudgetScope::Organization | BudgetScope::UseCase | BudgetScope::Deployment
            )
        })
        .filter(|b| {
            b.only_use_case
                .as_ref()
                .is_none_or(|u| *u == deployment.use_case)
        })
        .filter(|b| {
            b.only_deployment
                .as_ref()
                .is_none_or(|d| *d == deployment.id)
        })
        .filter_map(|b| {
            let usd = b.limits.usd_micros? as f64 / 1e6;
            let windows = windows_in_a_month(b.window?.millis())?;
            Some(usd * windows as f64)
        })
        .min_by(f64::total_cmp)
}

/// The most budget windows of `window_ms` one calendar month overlaps, each of which can be
/// spent in full. Windows are aligned to the epoch; a month has up to 31 days and starts at
/// midnight UTC, so it starts at an offset into a window that is a multiple of gcd(window,
/// one day), the latest being a window less that step. (30 days divided by the window, as
/// before, left out the 31st day and the window a month starts inside.)
fn windows_in_a_month(window_ms: u64) -> Option<u64> {
    const DAY_MS: u64 = 86_400_000;
    const MONTH_MS: u64 = 31 * DAY_MS;
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let step = gcd(window_ms, DAY_MS);
    // ceil((month + window - step) / window), written so that no window, however long (a
    // window parses up to u64::MAX ms), overflows.
    (window_ms > 0).then(|| (MONTH_MS - step).div_ceil(window_ms) + 1)
}

/// Revokes `approval`. One that is in force keeps when it came into force, so that it goes on
/// superseding the approvals before it ([`covering_approval`]): one completed before approvals
/// kept that time gets it from its last signoff.
pub fn revoke(approval: &mut Approval, revocation: Revocation) {
    if approval.status == ApprovalStatus::Active && approval.activated_at.is_none() {
        approval.activated_at = approval
            .signoffs
            .iter()
            .map(|s| s.at)
            .max()
            .or(Some(approval.created_at));
    }
    approval.status = ApprovalStatus::Revoked;
    approval.revocation = Some(revocation);
}

/// The spend tiers that apply to this deployment: those its monthly spend ceiling is above.
fn spend_tiers_applying<'c>(
    contract: &'c Contract,
    deployment: &Deployment,
) -> impl Iterator<Item = &'c SpendTier> {
    // Most contracts have none: the ceiling (a pass over the budgets) is not worked out then.
    let ceiling = (!contract.taxonomy.spend_tiers.is_empty())
        .then(|| monthly_spend_ceiling_usd(contract, deployment))
        .flatten();
    contract
        .taxonomy
        .spend_tiers
        .iter()
        .filter(move |t| ceiling.is_none_or(|c| c > t.above_usd_per_month))
}

/// Roles the spend tiers add for this deployment.
fn spend_roles(contract: &Contract, deployment: &Deployment) -> Vec<String> {
    spend_tiers_applying(contract, deployment)
        .map(|t| t.extra_role.clone())
        .collect()
}

/// Why `approval` no longer meets what the contract in force asks of an approval of
/// `deployment`, if it does not: the spend tiers' extra roles follow the budgets, which are not
/// part of the binding (the use case's domain, tier, population and data classes are, so a
/// change there already needs a new approval), so lowering or removing a dollar budget can ask
/// for a role none of the approval's signers holds. Checked on every decision, so such an
/// approval stops covering as soon as the contract changes, until one signed under it.
pub fn requirements_moved(
    approval: &Approval,
    contract: &Contract,
    deployment: &Deployment,
) -> Option<String> {
    let unsigned = spend_tiers_applying(contract, deployment).find(|t| {
        !approval
            .signoffs
            .iter()
            .any(|s| s.approver_role.as_deref() == Some(t.extra_role.as_str()))
    })?;
    Some(format!(
        "the budgets now allow `{}` to spend more than ${} a month, which needs a `{}` signoff that approval {} does not have; approve again",
        deployment.id, unsigned.above_usd_per_month, unsigned.extra_role, approval.id
    ))
}

/// Why no approval covers a request, as a reason code and sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCovered {
    Missing,
    Pending(String),
    Expired(String),
    Revoked(String),
    BindingMismatch {
        approval_id: String,
        approved: String,
    },
}

/// The active, unexpired approval for exactly this deployment binding and use case; otherwise
/// the most telling reason why there is none.
pub fn covering_approval<'a>(
    approvals: &'a [Approval],
    deployment: &Deployment,
    now: Timestamp,
) -> Result<&'a Approval, NotCovered> {
    let current =
        |a: &&Approval| a.binding == deployment.binding.0 && a.use_case == deployment.use_case;
    let live = |a: &&Approval| a.status == ApprovalStatus::Active && now < a.expires_at;
    // The newest approval that came into force is the one that governs: a re-approval
    // supersedes the earlier one (its thresholds, its on_breach, and any breach held against
    // the earlier one) for good, even when it expires sooner or is revoked: neither brings the
    // earlier one's terms back, nor a breach that its arrival cleared.
    let in_force_once =
        |a: &&Approval| a.status == ApprovalStatus::Active || a.activated_at.is_some();
    let governing = approvals
        .iter()
        .filter(current)
        .filter(in_force_once)
        .max_by_key(|a| (a.created_at, a.expires_at));
    if let Some(a) = governing.filter(live) {
        return Ok(a);
    }
    let latest = |status: ApprovalStatus| {
        approvals
            .iter()
            .filter(current)
            .filter(move |a| a.status == status)
            .max_by_key(|a| a.created_at)
    };
    if let Some(a) = latest(ApprovalStatus::Pending) {
        return Err(if now < a.expires_at {
            NotCovered::Pending(a.id.clone())
        } else {
            NotCovered::Expired(a.id.clone())
        });
    }
    if let Some(a) = governing {
        return Err(match a.status {
            ApprovalStatus::Revoked => NotCovered::Revoked(a.id.clone()),
            _ => NotCovered::Expired(a.id.clone()),
        });
    }
    if let Some(a) = latest(ApprovalStatus::Revoked) {
        return Err(NotCovered::Revoked(a.id.clone()));
    }
    if let Some(a) = approvals
        .iter()
        .filter(|a| a.binding != deployment.binding.0)
        .filter(live)
        .max_by_key(|a| a.created_at)
    {
        return Err(NotCovered::BindingMismatch {
            approval_id: a.id.clone(),
            approved: a.binding.clone(),
        });
    }
    Err(NotCovered::Missing)
}

#[cfg(test)]
mod tests {
    use super::windows_in_a_month;

    #[test]
    fn a_month_overlaps_every_window_it_can_start_inside() {
        let hour = 3_600_000;
        let day = 24 * hour;
        for (window, windows) in [
            // Windows that divide a day line up with the month's start: 31 days' worth.
            (60_000, 31 * 24 * 60),
            (hour, 31 * 24),
            (day, 31),
            // A month can start on its window's last day and end two windows on.
            (7 * day, 6),
            (30 * day, 2),
            (31 * day, 2),
            // 36 h windows: a midnight falls 0, 12 or 24 h into one; from 24 h, 12 h are left
            // in the first and the other 732 h reach into 21 more.
            (36 * hour, 22),
            (5 * hour, 150),
        ] {
            assert_eq!(windows_in_a_month(window), Some(windows), "{window} ms");
        }
        assert_eq!(windows_in_a_month(u64::MAX), Some(2));
        assert_eq!(windows_in_a_month(0), None);
    }
}
