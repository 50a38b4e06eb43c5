//! What changed between two contract versions, and whether any change loosens governance.
//!
//! Loading a new version is a recorded governance change (SPEC section 4); the record carries
//! this summary, and a version that raises a limit, weakens or removes a guard, lowers a tier
//! or widens an allowlist is flagged as loosening, so that review can focus there.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::*;

/// One change, in words, with whether it loosens governance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub what: String,
    pub loosening: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContractDiff {
    pub changes: Vec<Change>,
}

impl ContractDiff {
    pub fn loosening(&self) -> bool {
        self.changes.iter().any(|c| c.loosening)
    }

    fn note(&mut self, loosening: bool, what: String) {
        self.changes.push(Change { what, loosening });
    }
}

/// Compares two contracts. Equal versions give an empty diff.
pub fn diff(old: &Contract, new: &Contract) -> ContractDiff {
    let mut d = ContractDiff::default();
    if old.version == new.version {
        return d;
    }
    use_cases(&mut d, &old.use_cases, &new.use_cases);
    endpoints(&mut d, old, new);
    deployments(&mut d, old, new);
    requirements(&mut d, &old.taxonomy, &new.taxonomy);
    policy(&mut d, &old.policy, &new.policy);
    prices(&mut d, &old.prices, &new.prices);
    if d.changes.is_empty() {
        d.note(
            false,
            "wording, prices or other details changed (no limit, guard, tier or allowlist)".into(),
        );
    }
    d
}

fn added_removed<'a, T>(
    old: &'a BTreeMap<String, T>,
    new: &'a BTreeMap<String, T>,
) -> (Vec<&'a String>, Vec<&'a String>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).collect();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).collect();
    (added, removed)
}

fn use_cases(
    d: &mut ContractDiff,
    old: &BTreeMap<String, UseCase>,
    new: &BTreeMap<String, UseCase>,
) {
    let (added, removed) = added_removed(old, new);
    for id in added {
        d.note(false, format!("use case `{id}` added"));
    }
    for id in removed {
        d.note(false, format!("use case `{id}` removed"));
    }
    for (id, n) in new {
        let Some(o) = old.get(id) else { continue };
        // Tiers are ordered most severe first, so a lower tier compares greater.
        if n.tier > o.tier {
            d.note(
                true,
                format!("use case `{id}` tier lowered from {} to {}", o.tier, n.tier),
            );
        } else if n.tier < o.tier {
            d.note(
                false,
                format!("use case `{id}` tier raised from {} to {}", o.tier, n.tier),
            );
        }
        let dropped: Vec<&String> = o
            .data_classes
            .iter()
            .filter(|c| !n.data_classes.contains(c))
            .collect();
        if !dropped.is_empty() {
            d.note(
                true,
                format!("use case `{id}` no longer declares data classes {dropped:?}"),
            );
        }
        if n.population != o.population {
            d.note(false, format!("use case `{id}` population changed"));
        }
        // Who is on the hook (SPEC section 1's third question): recorded, though no limit.
        if n.owner != o.owner {
            d.note(
                false,
                format!("use case `{id}` owner {} -> {}", o.owner, n.owner),
            );
        }
        let (oc, nc) = (&o.oncall, &n.oncall);
        if nc.webhook != oc.webhook {
            // By its origin only: a webhook's path is often its credential.
            d.note(
                false,
                format!(
                    "use case `{id}` on-call webhook changed ({} -> {})",
                    oc.webhook_origin(),
                    nc.webhook_origin()
                ),
            );
        }
        if nc.severity_map != oc.severity_map || nc.runbook != oc.runbook {
            d.note(
                false,
                format!("use case `{id}` on-call severity map or runbook changed"),
            );
        }
    }
}

/// An endpoint's place (location, region) decides which sovereignty rules let data go to it:
/// one that moves where a rule of the new policy admits it and did not before loosens that
/// rule as widening its `allow` would. (Every deployment on it also gets a new binding.)
fn endpoints(d: &mut ContractDiff, old: &Contract, new: &Contract) {
    let (added, removed) = added_removed(&old.endpoints, &new.endpoints);
    for id in added {
        d.note(false, format!("endpoint `{id}` added"));
    }
    for id in removed {
        d.note(false, format!("endpoint `{id}` removed"));
    }
    for (id, n) in &new.endpoints {
        let Some(o) = old.endpoints.get(id) else {
            continue;
        };
        if (&n.location, &n.region) != (&o.location, &o.region) {
            let now_admitted = newly_admitted(&new.policy, o, n);
            let place = |e: &Endpoint| format!("{}, {}", e.location.as_str(), e.region);
            let mut what = format!("endpoint `{id}` moved ({} -> {})", place(o), place(n));
            if !now_admitted.is_empty() {
                what.push_str(&format!(": {now_admitted:?} data may now go to it"));
            }
            d.note(!now_admitted.is_empty(), what);
        }
        if n.url != o.url || n.kind != o.kind {
            d.note(false, format!("endpoint `{id}` address or kind changed"));
        }
    }
}

/// The data classes whose sovereignty rule (in `policy`) admits endpoint `is` and not `was`.
fn newly_admitted<'p>(policy: &'p Policy, was: &Endpoint, is: &Endpoint) -> Vec<&'p str> {
    policy
        .sovereignty
        .iter()
        .filter(|rule| rule.admits(is) && !rule.admits(was))
        .map(|rule| rule.data_class.as_str())
        .collect()
}

fn deployments(d: &mut ContractDiff, old_contract: &Contract, new_contract: &Contract) {
    let (old, new) = (&old_contract.deployments, &new_contract.deployments);
    let (added, removed) = added_removed(old, new);
    for id in added {
        d.note(
            false,
            format!("deployment `{id}` added (it needs an approval)"),
        );
    }
    for id in removed {
        d.note(false, format!("deployment `{id}` removed"));
    }
    for (id, n) in new {
        let Some(o) = old.get(id) else { continue };
        if n.binding == o.binding {
            continue;
        }
        d.note(
            false,
            format!(
                "deployment `{id}` changed: binding {} -> {} (it needs a new approval)",
                short_hash(&o.binding.0),
                short_hash(&n.binding.0)
            ),
        );
        // Sent to another endpoint: as an endpoint moving there would, by the new rules.
        if let (Some(was), Some(is)) = (
            old_contract.endpoint_of(o),
            new_contract
                .endpoint_of(n)
                .filter(|_| n.endpoint != o.endpoint),
        ) {
            let now_admitted = newly_admitted(&new_contract.policy, was, is);
            if !now_admitted.is_empty() {
                d.note(
                    true,
                    format!(
                        "deployment `{id}` now sends to endpoint `{}` (was `{}`): {now_admitted:?} data may now go to it",
                        n.endpoint, o.endpoint
                    ),
                );
            }
        }
        for tool in n.tools.keys().filter(|t| !o.tools.contains_key(*t)) {
            d.note(
                true,
                format!("deployment `{id}` may call new tool `{tool}`"),
            );
        }
        for (name, rule) in &n.params {
            if widened(o.params.get(name), rule) {
                d.note(true, format!("deployment `{id}` param `{name}` widened"));
            }
        }
        // Other params left out are refused at run time; max_tokens left out falls back to the
        // default ceiling, which may be higher.
        if o.params.contains_key("max_tokens") && !n.params.contains_key("max_tokens") {
            d.note(
                true,
                format!(
                    "deployment `{id}` no longer caps `max_tokens` (the default ceiling applies)"
                ),
            );
        }
    }
}

/// Whether a param's rule now lets through a value the old one refused, or raises its one value
/// (a higher `max_tokens` is a higher ceiling; a higher `n` or `temperature` is taken as
/// looser too, in doubt).
fn widened(old: Option<&ParamRule>, new: &ParamRule) -> bool {
    match (old, new) {
        (None, _) => true,
        (Some(ParamRule::Range { min: a, max: b }), ParamRule::Range { min: c, max: e }) => {
            c < a || e > b
        }
        (Some(ParamRule::Exactly(a)), ParamRule::Range { min, max }) => {
            a.as_f64().is_none_or(|v| *min < v || *max > v)
        }
        (Some(ParamRule::Exactly(a)), ParamRule::Exactly(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => y > x,
            _ => false,
        },
        (Some(ParamRule::Range { min, max }), ParamRule::Exactly(b)) => {
            b.as_f64().is_some_and(|v| v < *min || v > *max)
        }
    }
}

fn requirements(d: &mut ContractDiff, old: &Taxonomy, new: &Taxonomy) {
    for (tier, n) in &new.requirements {
        let Some(o) = old.requirements.get(tier) else {
            continue;
        };
        if n.allowed && !o.allowed {
            d.note(true, format!("tier `{tier}` became approvable"));
        }
        if n.approvers < o.approvers {
            d.note(
                true,
                format!(
                    "tier `{tier}` needs {} approvers instead of {}",
                    n.approvers, o.approvers
                ),
            );
        }
        for (what, o_list, n_list) in [
            ("role", &o.distinct_roles, &n.distinct_roles),
            ("evidence", &o.evidence, &n.evidence),
        ] {
            for gone in o_list.iter().filter(|x| !n_list.contains(x)) {
                d.note(
                    true,
                    format!("tier `{tier}` no longer requires {what} `{gone}`"),
                );
            }
        }
        for gone in o
            .require_thresholds
            .iter()
            .filter(|s| !n.require_thresholds.contains(s))
        {
            d.note(
                true,
                format!("tier `{tier}` no longer requires a `{gone}` threshold"),
            );
        }
        if n.max_validity_days.unwrap_or(u32::MAX) > o.max_validity_days.unwrap_or(u32::MAX) {
            d.note(
                true,
                format!(
                    "tier `{tier}` approvals may last longer ({:?} days)",
                    n.max_validity_days
                ),
            );
        }
    }
    let old_spend: BTreeMap<&str, f64> = old
        .spend_tiers
        .iter()
        .map(|t| (t.extra_role.as_str(), t.above_usd_per_month))
        .collect();
    for (role, above) in old_spend {
        match new.spend_tiers.iter().find(|t| t.extra_role == role) {
            None => d.note(true, format!("spend tier for role `{role}` removed")),
            Some(t) if t.above_usd_per_month > above => d.note(
                true,
                format!(
                    "spend tier for role `{role}` raised to {} USD/month",
                    t.above_usd_per_month
                ),
            ),
            _ => {}
        }
    }
}

fn action_rank(action: FindingAction) -> u8 {
    match action {
        FindingAction::Block => 0,
        FindingAction::Redact => 1,
        FindingAction::Flag => 2,
        FindingAction::Allow => 3,
    }
}

fn policy(d: &mut ContractDiff, old: &Policy, new: &Policy) {
    match (&old.privacy, &new.privacy) {
        (Some(_), None) => d.note(true, "privacy policy removed".into()),
        (Some(o), Some(n)) => {
            let pairs = [
                ("input pii", o.input.pii, n.input.pii),
                ("input secret", o.input.secret, n.input.secret),
                ("retrieved pii", o.retrieved.pii, n.retrieved.pii),
                ("retrieved secret", o.retrieved.secret, n.retrieved.secret),
                ("output pii", o.output.pii, n.output.pii),
                ("output secret", o.output.secret, n.output.secret),
            ];
            for (what, a, b) in pairs {
                if action_rank(b) != action_rank(a) {
                    d.note(
                        action_rank(b) > action_rank(a),
                        format!("privacy {what}: {a:?} -> {b:?}").to_lowercase(),
                    );
                }
            }
        }
        (None, Some(_)) => d.note(false, "privacy policy added".into()),
        (None, None) => {}
    }
    match (&old.injection, &new.injection) {
        (Some(_), None) => d.note(true, "injection policy removed".into()),
        (Some(o), Some(n)) => {
            for (what, a, b) in [
                ("input", o.input, n.input),
                ("retrieved", o.retrieved, n.retrieved),
            ] {
                if action_rank(b) != action_rank(a) {
                    d.note(
                        action_rank(b) > action_rank(a),
                        format!("injection {what}: {a:?} -> {b:?}").to_lowercase(),
                    );
                }
            }
            if n.threshold != o.threshold {
                d.note(
                    n.threshold > o.threshold,
                    format!("injection threshold {} -> {}", o.threshold, n.threshold),
                );
            }
        }
        (None, Some(_)) => d.note(false, "injection policy added".into()),
        (None, None) => {}
    }
    sovereignty(d, &old.sovereignty, &new.sovereignty);
    budgets(d, &old.budgets, &new.budgets);
    for (name, capacity) in &new.resources {
        match old.resources.get(name) {
            Some(o) if capacity > o => d.note(
                true,
                format!("resource `{name}` capacity raised {o} -> {capacity}"),
            ),
            None => d.note(true, format!("resource `{name}` added")),
            _ => {}
        }
    }
    match (old.abuse, new.abuse) {
        (Some(_), None) => d.note(true, "abuse cooldowns removed".into()),
        (Some(o), Some(n))
            if n.strikes > o.strikes || n.within < o.within || n.cooldown < o.cooldown =>
        {
            d.note(true, format!("abuse policy relaxed ({} strikes in {} -> {} strikes in {}, cooldown {} -> {})", o.strikes, o.within, n.strikes, n.within, o.cooldown, n.cooldown));
        }
        _ => {}
    }
    if new.payload_subject.is_some() && old.payload_subject.is_none() {
        d.note(
            true,
            "payload capture turned on: prompts are now retained (encrypted)".into(),
        );
    }
    let (o, n) = (&old.monitoring, &new.monitoring);
    let slower = n.window > o.window
        || n.min_samples > o.min_samples
        || n.drift_min_samples > o.drift_min_samples
        || n.min_group_size > o.min_group_size;
    if slower {
        d.note(true, format!("monitoring slower to notice (window {} -> {}, min_samples {} -> {}, drift_min_samples {} -> {}, min_group_size {} -> {})", o.window, n.window, o.min_samples, n.min_samples, o.drift_min_samples, n.drift_min_samples, o.min_group_size, n.min_group_size));
    }
    // More of a breached deployment's traffic goes to it rather than to its fallback.
    let more_probes = n.probe_percent > o.probe_percent;
    if more_probes {
        d.note(
            true,
            format!(
                "breach probes raised {}% -> {}% of requests",
                o.probe_percent, n.probe_percent
            ),
        );
    }
    if !slower && !more_probes && n != o {
        d.note(false, "monitoring settings changed".into());
    }
    custom_rules(d, &old.rules, &new.rules);
    if new.idempotency_window < old.idempotency_window {
        d.note(
            true,
            format!(
                "idempotency window shortened {} -> {}",
                old.idempotency_window, new.idempotency_window
            ),
        );
    }
}

/// A rule added or made to block tightens; one removed or made to only flag loosens. A rule
/// whose file changed is taken to loosen: what a Rego program denies cannot be compared, and
/// an edit that narrows it must not pass unflagged.
fn custom_rules(d: &mut ContractDiff, old: &[CustomRule], new: &[CustomRule]) {
    for o in old {
        let Some(n) = new.iter().find(|n| n.id == o.id) else {
            d.note(true, format!("custom rule `{}` removed", o.id));
            continue;
        };
        if n.file.sha256 != o.file.sha256 {
            d.note(
                true,
                format!(
                    "custom rule `{}` changed (its file's SHA-256 {} -> {}): taken to loosen, since what it denies may have narrowed",
                    o.id,
                    short_hash(&o.file.sha256),
                    short_hash(&n.file.sha256)
                ),
            );
        }
        if n.action != o.action {
            d.note(
                n.action == RuleAction::Flag,
                format!(
                    "custom rule `{}`: {} -> {}",
                    o.id,
                    o.action.as_str(),
                    n.action.as_str()
                ),
            );
        }
    }
    for n in new.iter().filter(|n| old.iter().all(|o| o.id != n.id)) {
        d.note(
            false,
            format!("custom rule `{}` added ({})", n.id, n.action.as_str()),
        );
    }
}

fn sovereignty(d: &mut ContractDiff, old: &[SovereigntyRule], new: &[SovereigntyRule]) {
    for o in old {
        match new.iter().find(|n| n.data_class == o.data_class) {
            None => d.note(
                true,
                format!("sovereignty rule for `{}` removed", o.data_class),
            ),
            Some(n) => {
                let widened: Vec<&Destination> =
                    n.allow.iter().filter(|x| !o.allow.contains(x)).collect();
                if !widened.is_empty() {
                    d.note(
                        true,
                        format!("`{}` data may now go to {widened:?}", o.data_class),
                    );
                }
                if o.on_violation == OnViolation::Block
                    && n.on_violation == OnViolation::RouteOrBlock
                {
                    d.note(
                        true,
                        format!(
                            "`{}` violations may now be routed instead of blocked",
                            o.data_class
                        ),
                    );
                }
            }
        }
    }
    for n in new
        .iter()
        .filter(|n| !old.iter().any(|o| o.data_class == n.data_class))
    {
        d.note(
            false,
            format!("sovereignty rule for `{}` added", n.data_class),
        );
    }
}

/// Budget lines are matched by what they count (scope, window, filters); their limits compared.
fn budgets(d: &mut ContractDiff, old: &[Budget], new: &[Budget]) {
    let new_lines: BTreeMap<String, &Budget> = new.iter().map(|b| (b.line(), b)).collect();
    let old_lines: BTreeSet<String> = old.iter().map(Budget::line).collect();
    let added: Vec<&Budget> = new
        .iter()
        .filter(|n| !old_lines.contains(&n.line()))
        .collect();
    let removed: Vec<&Budget> = old
        .iter()
        .filter(|o| !new_lines.contains_key(&o.line()))
        .collect();
    let mut relined = BTreeSet::new();
    for o in old {
        let key = o.line();
        let Some(n) = new_lines.get(&key) else {
            match lengthened(o, &removed, &added) {
                Some(n) => {
                    relined.insert(n.line());
                    d.note(
                        false,
                        format!(
                            "budget `{key}` window lengthened to `{}`, its limits not raised",
                            n.line()
                        ),
                    );
                }
                None => d.note(true, format!("budget `{key}` removed")),
            }
            continue;
        };
        for (what, a, b) in limits(o, n) {
            match (a, b) {
                (Some(a), Some(b)) if b > a => {
                    d.note(true, format!("budget `{key}` {what} raised {a} -> {b}"))
                }
                (Some(a), Some(b)) if b < a => {
                    d.note(false, format!("budget `{key}` {what} lowered {a} -> {b}"))
                }
                (Some(a), None) => {
                    d.note(true, format!("budget `{key}` {what} limit ({a}) removed"))
                }
                (None, Some(b)) => d.note(false, format!("budget `{key}` {what} limited to {b}")),
                _ => {}
            }
        }
    }
    for n in added.iter().filter(|n| !relined.contains(&n.line())) {
        d.note(false, format!("budget `{}` added", n.line()));
    }
}

/// Each limit of two budget lines, by name: (name, old's, new's).
fn limits(old: &Budget, new: &Budget) -> [(&'static str, Option<u64>, Option<u64>); 4] {
    let (o, n) = (&old.limits, &new.limits);
    [
        ("tokens", o.tokens, n.tokens),
        ("usd_micros", o.usd_micros, n.usd_micros),
        ("requests", o.requests, n.requests),
        ("tool_calls", o.tool_calls, n.tool_calls),
    ]
}

/// The line that replaces `old`'s (gone from the new contract) with a longer window and no
/// limit raised or removed: a tightening, since every window of the longer one is a whole
/// number of the shorter ones (windows are aligned to the epoch) and holds no more than each
/// did. Only when the pairing is certain: `old` is the only line of its scope and filters that
/// went, and one such line came.
fn lengthened<'a>(old: &Budget, removed: &[&Budget], added: &[&'a Budget]) -> Option<&'a Budget> {
    let same_place = |b: &Budget| {
        (b.scope, &b.only_use_case, &b.only_deployment)
            == (old.scope, &old.only_use_case, &old.only_deployment)
    };
    let candidates: Vec<&&Budget> = added.iter().filter(|b| same_place(b)).collect();
    let gone_alike = removed.iter().filter(|b| same_place(b)).count();
    let [n] = candidates.as_slice() else {
        return None;
    };
    let (Some(was), Some(is)) = (old.window, n.window) else {
        return None;
    };
    let (was, is) = (was.millis(), is.millis());
    // A whole multiple, and not the same window (else the line would have stayed).
    let longer = was > 0 && is % was == 0;
    let not_raised = limits(old, n).iter().all(|(_, a, b)| match (a, b) {
        (Some(a), Some(b)) => b <= a,
        (Some(_), None) => false,
        (None, _) => true,
    });
    (gone_alike == 1 && longer && not_raised).then_some(**n)
}

/// A lower price lets more traffic through the same USD budget.
fn prices(d: &mut ContractDiff, old: &BTreeMap<String, Price>, new: &BTreeMap<String, Price>) {
    for (snapshot, o) in old {
        match new.get(snapshot) {
            Some(n) if n.input < o.input || n.output < o.output => d.note(
                true,
                format!(
                    "price of `{snapshot}` lowered ({}/{} -> {}/{} USD per 1M tokens)",
                    o.input, o.output, n.input, n.output
                ),
            ),
            Some(n) if n.input > o.input || n.output > o.output => {
                d.note(false, format!("price of `{snapshot}` raised"))
            }
            _ => {}
        }
    }
    // Fewer tokens reserved per image let more images through the same token budget; an entry
    // added or removed moves a snapshot from or to the default.
    let reserved = |prices: &BTreeMap<String, Price>, snapshot: &str, low_detail: bool| {
        prices.get(snapshot).map_or(DEFAULT_IMAGE_TOKENS, |p| {
            p.reserved_image_tokens(low_detail)
        })
    };
    let snapshots: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for snapshot in snapshots {
        for (low_detail, what) in [(false, "image tokens"), (true, "low-detail image tokens")] {
            let was = reserved(old, snapshot, low_detail);
            let is = reserved(new, snapshot, low_detail);
            if is < was {
                d.note(
                    true,
                    format!("{what} of `{snapshot}` lowered ({was} -> {is})"),
                );
            } else if is > was {
                d.note(false, format!("{what} of `{snapshot}` raised"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn contract(edits: &[(&str, &str)]) -> Contract {
        let mut text = crate::example::FILES[0].1.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "no `{from}`");
            text = text.replacen(from, to, 1);
        }
        crate::load_bytes(
            Path::new("gavel.yaml"),
            text.as_bytes(),
            &crate::example::InMemory,
        )
        .unwrap()
        .contract
    }

    fn loosening(edits: &[(&str, &str)]) -> ContractDiff {
        diff(&contract(&[]), &contract(edits))
    }

    #[test]
    fn identical_contracts_have_no_changes() {
        assert!(diff(&contract(&[]), &contract(&[])).changes.is_empty());
    }

    #[test]
    fn each_kind_of_loosening_is_flagged() {
        let cases: [(&str, &str, &str); 14] = [
            (
                "window: 1m, requests: 120",
                "window: 1m, requests: 500",
                "raised 120 -> 500",
            ),
            (
                "secret: block }, output",
                "secret: flag }, output",
                "privacy input secret",
            ),
            ("threshold: 0.5", "threshold: 0.95", "injection threshold"),
            (
                "domain: credit\n",
                "domain: marketing\n",
                "tier lowered from high to limited",
            ),
            (
                "allow: [self_hosted, \"region:eu\"]",
                "allow: [self_hosted, \"region:eu\", external]",
                "may now go to",
            ),
            (
                "memory_mb: { capacity: 16384 }",
                "memory_mb: { capacity: 32768 }",
                "capacity raised",
            ),
            (
                "limited: { approvers: 1, evidence: [eval],",
                "limited: { approvers: 1,",
                "no longer requires evidence `eval`",
            ),
            (
                "abuse:       { strikes: 3,",
                "abuse:       { strikes: 10,",
                "abuse policy relaxed",
            ),
            (
                "    - { scope: principal, window: 1m, requests: 120 }\n",
                "",
                "removed",
            ),
            // Relabelled self-hosted, OpenAI's endpoint now takes what the pii rule admits.
            (
                "api.openai.com/v1\", location: external,",
                "api.openai.com/v1\", location: self_hosted,",
                "endpoint `openai` moved (external, us -> self_hosted, us): [\"pii\", \"financial\"] data may now go to it",
            ),
            ("probe_percent: 10", "probe_percent: 50", "breach probes raised 10% -> 50%"),
            (
                "    endpoint: openai\n",
                "    endpoint: local-llama\n",
                "deployment `support-triage-v3` now sends to endpoint `local-llama` (was `openai`): [\"pii\", \"financial\"] data may now go to it",
            ),
            (
                "params: { temperature: 0.2, max_tokens: 512 }",
                "params: { temperature: 0.2 }",
                "`support-triage-v3` no longer caps `max_tokens`",
            ),
            (
                "temperature: { min: 0, max: 0.3 }",
                "temperature: 1.5",
                "param `temperature` widened",
            ),
        ];
        for (from, to, expected) in cases {
            let d = loosening(&[(from, to)]);
            assert!(d.loosening(), "`{to}` should loosen: {d:?}");
            assert!(
                d.changes
                    .iter()
                    .any(|c| c.loosening && c.what.contains(expected)),
                "`{to}`: {d:?}"
            );
        }
    }

    #[test]
    fn lower_prices_and_payload_capture_are_flagged() {
        let d = loosening(&[(
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.0, output: 0.0 }",
        )]);
        assert!(
            d.changes.iter().any(|c| c.loosening
                && c.what
                    .contains("price of `llama-3.1-8b-instruct-q8-2024-07` lowered")),
            "{d:?}"
        );
        // Fewer tokens reserved per image let more images through a token budget.
        let d = loosening(&[(
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05, image_tokens: 85 }",
        )]);
        assert!(
            d.changes.iter().any(|c| c.loosening
                && c.what.contains(
                    "image tokens of `llama-3.1-8b-instruct-q8-2024-07` lowered (16384 -> 85)"
                )),
            "{d:?}"
        );
        // So do fewer per image sent with `detail: low`.
        let d = loosening(&[(
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }\n  gpt-4o-2024-08-06: { input: 2.5, output: 10.0, low_detail_image_tokens: 40 }",
        )]);
        assert!(
            d.changes.iter().any(|c| c.loosening
                && c.what
                    .contains("low-detail image tokens of `gpt-4o-2024-08-06` lowered (85 -> 40)")),
            "{d:?}"
        );
        assert!(
            !d.changes
                .iter()
                .any(|c| c.what.starts_with("image tokens of `gpt-4o-2024-08-06`")),
            "{d:?}"
        );
        // Removing an entry that raised the figure lowers it to the default.
        let raised = [(
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }",
            "llama-3.1-8b-instruct-q8-2024-07:  { input: 0.05, output: 0.05 }\n  qwen2.5-vl-72b: { input: 0, output: 0, image_tokens: 20000 }",
        )];
        let d = diff(&contract(&raised), &contract(&[]));
        assert!(
            d.changes.iter().any(|c| c.loosening
                && c.what
                    .contains("image tokens of `qwen2.5-vl-72b` lowered (20000 -> 16384)")),
            "{d:?}"
        );
        let d = loosening(&[(
            "  idempotency: { window: 24h }\n",
            "  idempotency: { window: 24h }\n  payload_capture: { subject: user_id }\n",
        )]);
        assert!(d.loosening(), "{d:?}");
    }

    /// Who is on the hook, an endpoint moved where no rule newly admits it, and another exact
    /// value for a param are recorded as changes that loosen nothing; a webhook by its origin
    /// only, since its path is often its credential.
    #[test]
    fn owners_on_call_and_places_are_recorded_without_loosening() {
        let d = loosening(&[
            ("owner: alice@acme.example", "owner: mallory@acme.example"),
            (
                "https://hooks.acme.example/pager/support",
                "https://pager.example/integration/k3y-abc123",
            ),
            (
                "location: external, region: us",
                "location: external, region: ca",
            ),
            ("params: { temperature: 0.2,", "params: { temperature: 0.1,"),
        ]);
        assert!(!d.loosening(), "{d:?}");
        let said = |what: &str| d.changes.iter().any(|c| c.what.contains(what));
        assert!(
            said("owner alice@acme.example -> mallory@acme.example"),
            "{d:?}"
        );
        assert!(
            said("on-call webhook changed (https://hooks.acme.example -> https://pager.example)"),
            "{d:?}"
        );
        assert!(!said("k3y-abc123"), "{d:?}");
        assert!(
            said("endpoint `openai` moved (external, us -> external, ca)"),
            "{d:?}"
        );
    }

    /// A budget line whose window grows to a multiple of the old one, limits not raised, holds
    /// no more in any window than before: listed, not flagged. Any other new window is the old
    /// line removed (flagged) and a new one added.
    #[test]
    fn a_budget_window_lengthened_without_a_raise_is_no_loosening() {
        let line = "window: 1m, tokens: 200000";
        let d = loosening(&[(line, "window: 1h, tokens: 200000")]);
        assert!(!d.loosening(), "{d:?}");
        assert_eq!(d.changes.len(), 1, "{d:?}");
        assert!(
            d.changes[0]
                .what
                .contains("budget `use_case/1m/*/*` window lengthened to `use_case/1h/*/*`"),
            "{d:?}"
        );
        for looser in [
            "window: 1h, tokens: 300000",
            "window: 30s, tokens: 200000",
            "window: 90s, tokens: 200000",
            "window: 1h, usd: 5",
        ] {
            let d = loosening(&[(line, looser)]);
            assert!(
                d.changes
                    .iter()
                    .any(|c| c.loosening && c.what == "budget `use_case/1m/*/*` removed"),
                "{looser}: {d:?}"
            );
        }
    }

    #[test]
    fn tightening_is_recorded_but_not_flagged() {
        let d = loosening(&[
            ("window: 1m, requests: 120", "window: 1m, requests: 60"),
            ("threshold: 0.5", "threshold: 0.4"),
        ]);
        assert!(!d.loosening(), "{d:?}");
        assert_eq!(d.changes.len(), 2, "{d:?}");
    }

    /// The example's files with the rule file's text replaced.
    struct RuleText(String);

    impl crate::SourceFiles for RuleText {
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            if path.ends_with("rules/refund_ticket.rego") {
                return Ok(self.0.as_bytes().to_vec());
            }
            crate::example::InMemory.read(path)
        }
    }

    #[test]
    fn custom_rules_removed_edited_or_made_to_flag_loosen_and_added_ones_do_not() {
        let line = "  rules:\n    - { id: refund-needs-ticket, file: rules/refund_ticket.rego }\n";
        let flagged = |d: &ContractDiff, what: &str| {
            d.changes
                .iter()
                .any(|c| c.loosening && c.what.starts_with(what))
        };
        let d = loosening(&[(line, "")]);
        assert!(
            flagged(&d, "custom rule `refund-needs-ticket` removed"),
            "{d:?}"
        );
        let d = loosening(&[(
            "rules/refund_ticket.rego }",
            "rules/refund_ticket.rego, action: flag }",
        )]);
        assert!(
            flagged(&d, "custom rule `refund-needs-ticket`: block -> flag"),
            "{d:?}"
        );
        // An edit, even one that only adds a comment, cannot be judged: it is taken to loosen.
        let text = format!(
            "{}\n# reviewed\n",
            crate::example::FILES
                .iter()
                .find(|(p, _)| *p == "rules/refund_ticket.rego")
                .map_or("", |f| f.1)
        );
        let edited = crate::load_bytes(
            Path::new("gavel.yaml"),
            crate::example::FILES[0].1.as_bytes(),
            &RuleText(text),
        )
        .unwrap()
        .contract;
        let d = diff(&contract(&[]), &edited);
        assert!(
            flagged(&d, "custom rule `refund-needs-ticket` changed"),
            "{d:?}"
        );
        // Added, or turned from flag to block: recorded, not loosening.
        let without = contract(&[(line, "")]);
        let d = diff(&without, &contract(&[]));
        assert!(!d.loosening(), "{d:?}");
        assert_eq!(
            d.changes[0].what,
            "custom rule `refund-needs-ticket` added (block)"
        );
        let d = diff(
            &contract(&[(
                "rules/refund_ticket.rego }",
                "rules/refund_ticket.rego, action: flag }",
            )]),
            &contract(&[]),
        );
        assert!(!d.loosening(), "{d:?}");
        assert_eq!(d.changes.len(), 1, "{d:?}");
    }

    #[test]
    fn a_changed_deployment_is_named_and_new_tools_loosen() {
        let d = loosening(&[(
            "params: { temperature: 0.1, max_tokens: 400 }",
            "params: { temperature: 0.1, max_tokens: 800 }",
        )]);
        assert!(d
            .changes
            .iter()
            .any(|c| c.what.contains("kb-search-v1") && c.what.contains("needs a new approval")));
        assert!(d.loosening(), "a higher max_tokens ceiling loosens: {d:?}");
    }
}
