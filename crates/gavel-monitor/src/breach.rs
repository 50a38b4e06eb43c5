//! What monitoring does next about one deployment: start a breach, leave it, probe it, end it.
//! Pure: the caller supplies the checks over the right spans of time and applies the step.

use crate::signals::{Check, CheckState};

/// What the approval says to do on a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pause the deployment for this long, then let traffic probe it.
    Cooldown { ms: i64 },
    /// Route to the approved fallback; a share of requests still probes the deployment.
    Fallback,
    /// Refuse until a new approval covers the deployment.
    Block,
}

/// A breach in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub approval_id: String,
    pub threshold: String,
    pub action: Action,
    pub since_ms: i64,
    /// End of the current cooldown (Cooldown only).
    pub until_ms: Option<i64>,
}

impl Active {
    /// From when observations count as probes of the breached deployment: after the cooldown,
    /// or since the breach for a fallback route. None while nothing may probe.
    pub fn probe_from(&self, now_ms: i64) -> Option<i64> {
        match self.action {
            Action::Cooldown { .. } => self.until_ms.filter(|until| now_ms >= *until),
            Action::Fallback => Some(self.since_ms),
            Action::Block => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Nothing,
    /// A threshold is breached: apply the action and alert.
    Start(Check),
    /// Probes still breach: cool down again until `until_ms` (the same breach, no new alert).
    Extend {
        until_ms: i64,
        check: Check,
    },
    /// Probes are within the threshold, or a new approval took over.
    Recover {
        why: String,
    },
}

/// The next step. `covering` is the approval covering the deployment now, if any; `window`
/// are the checks over the window; `probes` the checks over observations since `probe_from`,
/// of which recovery needs at least `min_probes`.
pub fn next_step(
    active: Option<&Active>,
    covering: Option<&str>,
    window: &[Check],
    probes: &[Check],
    min_probes: u64,
    now_ms: i64,
) -> Step {
    let Some(active) = active else {
        return match window.iter().find(|c| c.state == CheckState::Breached) {
            Some(check) => Step::Start(check.clone()),
            None => Step::Nothing,
        };
    };
    match covering {
        // Only another live approval ends a breach this way: while nothing covers the
        // deployment (a changed binding, an expiry), the breach stays, so that changing the
        // contract back and forth cannot lift it.
        Some(other) if other != active.approval_id => {
            return Step::Recover {
                why: format!("approval {other} now covers the deployment"),
            }
        }
        Some(_) => {}
        None => return Step::Nothing,
    }
    if active.probe_from(now_ms).is_none() {
        return Step::Nothing;
    }
    let Some(probe) = probes.iter().find(|c| c.threshold == active.threshold) else {
        return Step::Recover {
            why: format!("the approval no longer sets `{}`", active.threshold),
        };
    };
    match (probe.state, active.action) {
        (CheckState::Within, _) if probe.samples >= min_probes => Step::Recover {
            why: format!(
                "`{}` is back within its threshold on {} probe observation(s)",
                active.threshold, probe.samples
            ),
        },
        (CheckState::Breached, Action::Cooldown { ms }) => Step::Extend {
            until_ms: now_ms + ms,
            check: probe.clone(),
        },
        _ => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::Bound;

    fn check(state: CheckState) -> Check {
        Check {
            threshold: "drift".into(),
            bound: Bound::Max,
            limit: 0.2,
            value: Some(0.5),
            samples: 60,
            state,
        }
    }

    fn cooling(until_ms: i64) -> Active {
        Active {
            approval_id: "apr_1".into(),
            threshold: "drift".into(),
            action: Action::Cooldown { ms: 1000 },
            since_ms: 0,
            until_ms: Some(until_ms),
        }
    }

    #[test]
    fn a_breach_starts_once_and_waits_out_its_cooldown() {
        let breached = [check(CheckState::Breached)];
        assert!(matches!(
            next_step(None, Some("apr_1"), &breached, &[], 20, 0),
            Step::Start(_)
        ));
        assert_eq!(
            next_step(
                None,
                Some("apr_1"),
                &[check(CheckState::Insufficient)],
                &[],
                20,
                0
            ),
            Step::Nothing
        );
        assert_eq!(
            next_step(
                Some(&cooling(1000)),
                Some("apr_1"),
                &breached,
                &breached,
                20,
                500
            ),
            Step::Nothing
        );
    }

    #[test]
    fn probes_after_the_cooldown_recover_or_extend() {
        let a = cooling(1000);
        let probed = |state| next_step(Some(&a), Some("apr_1"), &[], &[check(state)], 20, 1500);
        assert!(matches!(probed(CheckState::Within), Step::Recover { .. }));
        assert!(matches!(
            probed(CheckState::Breached),
            Step::Extend { until_ms: 2500, .. }
        ));
        assert_eq!(probed(CheckState::Insufficient), Step::Nothing);
    }

    #[test]
    fn a_block_lasts_until_a_new_approval() {
        let a = Active {
            action: Action::Block,
            until_ms: None,
            ..cooling(0)
        };
        assert_eq!(
            next_step(
                Some(&a),
                Some("apr_1"),
                &[],
                &[check(CheckState::Within)],
                20,
                10_000
            ),
            Step::Nothing
        );
        assert!(matches!(
            next_step(Some(&a), Some("apr_2"), &[], &[], 20, 10_000),
            Step::Recover { .. }
        ));
    }

    #[test]
    fn recovery_needs_enough_probes_and_a_live_approval() {
        let a = cooling(1000);
        let few = Check {
            samples: 0,
            ..check(CheckState::Within)
        };
        assert_eq!(
            next_step(Some(&a), Some("apr_1"), &[], &[few], 20, 1500),
            Step::Nothing,
            "an empty probe window proves nothing"
        );
        let block = Active {
            action: Action::Block,
            until_ms: None,
            ..cooling(0)
        };
        assert_eq!(
            next_step(Some(&block), None, &[], &[], 20, 10),
            Step::Nothing,
            "nothing covers it: the breach stays"
        );
    }

    #[test]
    fn a_fallback_route_recovers_on_probes_and_is_never_extended() {
        let a = Active {
            action: Action::Fallback,
            until_ms: None,
            ..cooling(0)
        };
        assert_eq!(
            next_step(
                Some(&a),
                Some("apr_1"),
                &[],
                &[check(CheckState::Breached)],
                20,
                10
            ),
            Step::Nothing
        );
        assert!(matches!(
            next_step(
                Some(&a),
                Some("apr_1"),
                &[],
                &[check(CheckState::Within)],
                20,
                10
            ),
            Step::Recover { .. }
        ));
    }
}
