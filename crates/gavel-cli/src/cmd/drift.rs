//! `gavel drift`: compliance drift over time, read from the ledger (docs/cli.md, `gavel drift`).
//!
//! Four reports: per guard, block and finding rates by UTC day; guards that went quiet while
//! traffic continued; contract loads and approvals that loosened thresholds; approvals extended
//! repeatedly. Decisions are streamed and folded into per-day counters, so memory grows with
//! the number of days and guards, not with the ledger. Governance records (contract loads,
//! approvals, revocations) are few and are read whole.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use gavel_contract::short_hash;
use gavel_contract::time::{Date, Span, Timestamp};
use gavel_ledger::RecordKind;
use gavel_ledger_sqlite::{ExportFilter, LedgerEntry, SqliteLedgerSink};

use crate::cli::DriftArgs;
use crate::cmd::audit::READERS;
use crate::context::{note, now, out, print_json, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger;
use crate::ledger::EachLine;

const DAY_MS: i64 = 86_400_000;
/// Days in the default period (today included).
const DEFAULT_DAYS: i64 = 30;
/// The longest period, in UTC days: a year, leap or not. Each guard gets one row per day, so
/// an unbounded period would let a typo in `--from` print (and hold) millions of rows.
const MAX_DAYS: i64 = 366;
/// A silent guard is reported as quiet only if its earlier rate predicts at least this many
/// findings over the quiet days: with a Poisson count the chance of seeing none by luck is
/// then at most e^-3, about 5%. Below that, silence is what a rare guard looks like.
const MIN_EXPECTED_FINDINGS: f64 = 3.0;
/// Extensions in the period from which a deployment is reported.
const REPEATED_EXTENSIONS: usize = 2;

pub fn run(ctx: &Context, args: &DriftArgs) -> Outcome {
    let settings = Settings::from_args(args, now())?;
    let store = ctx.store()?;
    ctx.authenticate(&store, &READERS, "reporting compliance drift")?;
    let sink = ledger::open_sink(&ctx.db_path)?;
    let report = build_report(&sink, &settings)?;
    if settings.as_json {
        print_json(&report)
    } else {
        print_text(&report)
    }
}

/// The command line, checked.
struct Settings {
    period: Period,
    /// Empty: every deployment.
    deployments: BTreeSet<String>,
    quiet_days: usize,
    min_daily_decisions: u64,
    extension_gap: Span,
    as_json: bool,
}

impl Settings {
    fn from_args(args: &DriftArgs, now: Timestamp) -> Result<Settings, Failure> {
        let as_json = match args.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(Failure::usage(format!(
                    "--format `{other}` is not text or json"
                )))
            }
        };
        if args.quiet_days == 0 {
            return Err(Failure::usage(
                "--quiet-days must be at least 1 (the number of last days a guard must be silent on)",
            ));
        }
        let extension_gap = Span::parse(&args.extension_gap)
            .map_err(|why| Failure::usage(format!("--extension-gap: {why}")))?;
        Ok(Settings {
            period: Period::from_args(args.from.as_deref(), args.to.as_deref(), now)?,
            deployments: args.deployments.iter().cloned().collect(),
            quiet_days: usize::try_from(args.quiet_days).unwrap_or(usize::MAX),
            min_daily_decisions: args.min_daily_decisions,
            extension_gap,
            as_json,
        })
    }

    fn selects(&self, deployment: &str) -> bool {
        self.deployments.is_empty() || self.deployments.contains(deployment)
    }
}

/// `[from, to)`, cut into the UTC days it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    from: Timestamp,
    to: Timestamp,
}

impl Period {
    fn from_args(from: Option<&str>, to: Option<&str>, now: Timestamp) -> Result<Period, Failure> {
        let to = to.map_or(Ok(now), |text| parse_time("to", text))?;
        let from = match from {
            Some(text) => parse_time("from", text)?,
            None => Timestamp(
                day_of(to.millis().saturating_sub(1))
                    .saturating_sub(DEFAULT_DAYS - 1)
                    .saturating_mul(DAY_MS),
            ),
        };
        if from >= to {
            return Err(Failure::usage(format!(
                "--from {from} is not before --to {to}; give a --from earlier than --to"
            )));
        }
        let period = Period { from, to };
        let days = period.last_day() - period.first_day() + 1;
        if days > MAX_DAYS {
            return Err(Failure::usage(format!(
                "the period covers {days} UTC days and drift reports at most {MAX_DAYS}; narrow --from and --to"
            )));
        }
        Ok(period)
    }

    fn first_day(self) -> i64 {
        day_of(self.from.millis())
    }

    fn last_day(self) -> i64 {
        day_of(self.to.millis().saturating_sub(1))
    }

    fn day_count(self) -> usize {
        usize::try_from(self.last_day() - self.first_day() + 1).unwrap_or(0)
    }

    fn contains(self, at_ms: i64) -> bool {
        self.from.millis() <= at_ms && at_ms < self.to.millis()
    }
}

fn parse_time(flag: &str, text: &str) -> Result<Timestamp, Failure> {
    Timestamp::parse_rfc3339(text).ok_or_else(|| {
        Failure::usage(format!(
            "--{flag} `{text}` is not a date (YYYY-MM-DD) or an RFC 3339 UTC time (e.g. 2026-11-22T12:00:00Z)"
        ))
    })
}

/// Days since 1970-01-01 of an instant, in UTC.
fn day_of(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS)
}

fn day_name(day: i64) -> String {
    Date::from_days_since_epoch(day).to_string()
}

// ---------------------------------------------------------------------------------------------
// Guards by day

/// What drift reads of a decision record; serde skips the rest without building it.
#[derive(Debug, Deserialize)]
struct DecisionLine<'a> {
    at_ms: i64,
    #[serde(borrow)]
    body: DecisionFacts<'a>,
}

#[derive(Debug, Deserialize)]
struct DecisionFacts<'a> {
    #[serde(borrow)]
    verdict: Cow<'a, str>,
    /// The engine puts the reason that stopped a request first; later codes are notes.
    #[serde(default, borrow)]
    reason_codes: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    findings: Vec<FindingKind<'a>>,
}

#[derive(Debug, Deserialize)]
struct FindingKind<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

impl DecisionFacts<'_> {
    /// The guard that refused the request, if it was refused (BLOCK, or COOLDOWN: also a refusal).
    fn refused_by(&self) -> Option<&str> {
        match self.verdict.as_ref() {
            "BLOCK" | "COOLDOWN" => self.reason_codes.first().map(AsRef::as_ref),
            _ => None,
        }
    }

    /// Every guard that found something in this decision, once each: its reason codes (a
    /// block, a flag, a route, a cap), and the guards that judge its scanner findings (a
    /// redacted e-mail address leaves a finding but no reason).
    fn guards_that_fired(&self) -> Vec<&str> {
        let mut guards: Vec<&str> = Vec::with_capacity(self.reason_codes.len() + 1);
        let scanner_guards = self
            .findings
            .iter()
            .filter_map(|f| guard_judging_finding(&f.kind));
        for guard in self
            .reason_codes
            .iter()
            .map(AsRef::as_ref)
            .chain(scanner_guards)
        {
            if !guards.contains(&guard) {
                guards.push(guard);
            }
        }
        guards
    }
}

/// The guard (reason code) that rules on a scanner finding of this kind. Injection matches are
/// evidence toward a score, not findings of their own: the injection guards find something
/// when the score crosses the threshold, and the decision then carries their reason code.
fn guard_judging_finding(kind: &str) -> Option<&'static str> {
    match kind {
        "pii" => Some("privacy.pii"),
        "secret" => Some("privacy.secret"),
        "invalid_utf8" | "nul_byte" => Some("input.invalid"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GuardDay {
    blocks: u64,
    findings: u64,
}

/// Decisions per day of the period, and each guard's blocks and findings per day.
#[derive(Debug)]
struct Tally {
    first_day: i64,
    decisions: Vec<u64>,
    guards: BTreeMap<String, Vec<GuardDay>>,
}

impl Tally {
    fn new(period: Period) -> Tally {
        Tally {
            first_day: period.first_day(),
            decisions: vec![0; period.day_count()],
            guards: BTreeMap::new(),
        }
    }

    fn add(&mut self, at_ms: i64, decision: &DecisionFacts) {
        let Some(day) = usize::try_from(day_of(at_ms) - self.first_day)
            .ok()
            .filter(|day| *day < self.decisions.len())
        else {
            return;
        };
        self.decisions[day] += 1;
        let refused_by = decision.refused_by();
        for guard in decision.guards_that_fired() {
            let days = match self.guards.get_mut(guard) {
                Some(days) => days,
                None => self
                    .guards
                    .entry(guard.to_string())
                    .or_insert_with(|| vec![GuardDay::default(); self.decisions.len()]),
            };
            days[day].findings += 1;
            if refused_by == Some(guard) {
                days[day].blocks += 1;
            }
        }
    }

    fn day_rows(&self) -> Vec<DayTraffic> {
        self.decisions
            .iter()
            .enumerate()
            .map(|(offset, &decisions)| DayTraffic {
                day: self.day_name(offset),
                decisions,
            })
            .collect()
    }

    fn guard_series(&self) -> Vec<GuardSeries> {
        self.guards
            .iter()
            .map(|(guard, days)| GuardSeries {
                guard: guard.clone(),
                blocks: days.iter().map(|d| d.blocks).sum(),
                findings: days.iter().map(|d| d.findings).sum(),
                days: days
                    .iter()
                    .zip(&self.decisions)
                    .enumerate()
                    .map(|(offset, (counts, &decisions))| GuardDayRow {
                        day: self.day_name(offset),
                        decisions,
                        blocks: counts.blocks,
                        findings: counts.findings,
                        block_rate: share(counts.blocks, decisions),
                        finding_rate: share(counts.findings, decisions),
                    })
                    .collect(),
            })
            .collect()
    }

    fn day_name(&self, offset: usize) -> String {
        day_name(self.first_day + i64::try_from(offset).unwrap_or(0))
    }
}

/// `part / whole`, or None when there is no whole to be a share of.
fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Streams the period's decisions (of the selected deployments) into a tally. Returns it with
/// the selected deployments that had no decision at all, which is most often a mistyped id.
fn tally_decisions(
    sink: &SqliteLedgerSink,
    settings: &Settings,
) -> Result<(Tally, Vec<String>), Failure> {
    let mut tally = Tally::new(settings.period);
    let mut silent = Vec::new();
    // One filtered pass per selected deployment: SQLite skips the other rows before any JSON
    // is parsed, and counts are additive, so the passes need no merging.
    let selections: Vec<Option<&String>> = if settings.deployments.is_empty() {
        vec![None]
    } else {
        settings.deployments.iter().map(Some).collect()
    };
    for deployment in selections {
        let filter = ExportFilter {
            kind: Some(RecordKind::Decision),
            deployment: deployment.cloned(),
            from_ms: Some(settings.period.from.millis()),
            to_ms: Some(settings.period.to.millis()),
            ..ExportFilter::default()
        };
        let mut lines = EachLine::new(|line: &[u8]| {
            let record: DecisionLine = serde_json::from_slice(line).map_err(|e| {
                Failure::storage(format!(
                    "a decision record in the ledger is not what gavel writes ({e}); check the ledger with `gavel audit verify`"
                ))
            })?;
            tally.add(record.at_ms, &record.body);
            Ok(())
        });
        let exported = sink.export_jsonl(&filter, &mut lines);
        let count = exported.as_ref().map_or(0, |count| *count);
        lines.finish(exported)?;
        if let (Some(deployment), 0) = (deployment, count) {
            silent.push(deployment.clone());
        }
    }
    Ok((tally, silent))
}

// ---------------------------------------------------------------------------------------------
// Quiet guards

/// Guards that fired before the last `quiet_days` days of the period and on none of them,
/// although each of those days had at least `min_daily_decisions` decisions and the guard's
/// earlier rate predicts at least `MIN_EXPECTED_FINDINGS` findings over them.
fn quiet_guards(tally: &Tally, quiet_days: usize, min_daily_decisions: u64) -> QuietReport {
    let days = tally.decisions.len();
    let Some(window_start) = days.checked_sub(quiet_days).filter(|start| *start > 0) else {
        return QuietReport::not_checked(format!(
            "the period has {days} day(s), no more than --quiet-days {quiet_days}, so there is no earlier part to compare with; widen --from or lower --quiet-days"
        ));
    };
    let mut report = QuietReport {
        first_day: Some(tally.day_name(window_start)),
        last_day: Some(tally.day_name(days - 1)),
        not_checked: None,
        guards: Vec::new(),
    };
    if let Some((offset, &decisions)) = tally
        .decisions
        .iter()
        .enumerate()
        .skip(window_start)
        .find(|(_, &decisions)| decisions < min_daily_decisions)
    {
        report.not_checked = Some(format!(
            "{} had {decisions} decision(s), fewer than --min-daily-decisions {min_daily_decisions}: traffic did not continue, so silence shows nothing",
            tally.day_name(offset)
        ));
        return report;
    }
    let earlier_decisions: u64 = tally.decisions[..window_start].iter().sum();
    let window_decisions: u64 = tally.decisions[window_start..].iter().sum();
    for (guard, by_day) in &tally.guards {
        let (earlier, window) = by_day.split_at(window_start);
        let earlier_findings: u64 = earlier.iter().map(|d| d.findings).sum();
        let window_findings: u64 = window.iter().map(|d| d.findings).sum();
        let Some(last_fired) = earlier.iter().rposition(|d| d.findings > 0) else {
            continue;
        };
        let earlier_rate = share(earlier_findings, earlier_decisions).unwrap_or(0.0);
        let expected = earlier_rate * window_decisions as f64;
        if window_findings == 0 && expected >= MIN_EXPECTED_FINDINGS {
            report.guards.push(QuietGuard {
                guard: guard.clone(),
                last_fired: tally.day_name(last_fired),
                earlier_decisions,
                earlier_findings,
                earlier_finding_rate: earlier_rate,
                window_decisions,
                expected_findings: expected,
            });
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Loosened contracts

/// What drift reads of a `contract_loaded` record (`gavel apply`, the gateway's reload).
#[derive(Debug, Deserialize)]
struct ContractLoad {
    #[serde(default)]
    principal: Option<String>,
    contract_version: String,
    previous_version: Option<String>,
    #[serde(default)]
    changes: Vec<String>,
    loosening: bool,
}

/// `gavel apply` marks each loosening change line with this prefix.
const LOOSENS: &str = "LOOSENS ";

fn loosened_contracts(
    sink: &SqliteLedgerSink,
    period: Period,
) -> Result<Vec<LoosenedContract>, Failure> {
    let filter = ExportFilter {
        kind: Some(RecordKind::ContractLoaded),
        from_ms: Some(period.from.millis()),
        to_ms: Some(period.to.millis()),
        ..ExportFilter::default()
    };
    let mut loosened = Vec::new();
    for entry in read_records(sink, &filter)? {
        let load: ContractLoad = body_of(&entry)?;
        if load.loosening {
            loosened.push(LoosenedContract {
                at: Timestamp(entry.record.at_ms).to_rfc3339(),
                record_id: entry.record.id,
                principal: load.principal,
                contract_version: load.contract_version,
                previous_version: load.previous_version,
                loosened: loosened_changes(&load.changes),
            });
        }
    }
    Ok(loosened)
}

/// The change lines flagged as loosening, without their flag.
fn loosened_changes(changes: &[String]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|change| change.strip_prefix(LOOSENS))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Approvals: looser thresholds and repeated extensions

/// What drift reads of an `approval_completed` record.
#[derive(Debug, Deserialize)]
struct ApprovalCompleted {
    approval: GrantedTerms,
}

#[derive(Debug, Deserialize)]
struct GrantedTerms {
    id: String,
    deployment: String,
    binding: String,
    expires_at: i64,
    #[serde(default)]
    thresholds: BTreeMap<String, f64>,
}

/// What drift reads of an `approval_revoked` record.
#[derive(Debug, Deserialize)]
struct ApprovalRevoked {
    approval_id: String,
}

/// An approval as it became active: when its `approval_completed` record was written.
#[derive(Debug, Clone, PartialEq)]
struct Grant {
    approval_id: String,
    deployment: String,
    binding: String,
    granted_at: i64,
    expires_at: i64,
    thresholds: BTreeMap<String, f64>,
}

/// Whether a threshold is a floor or a ceiling: loosening lowers a floor or raises a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Minimum,
    Maximum,
}

fn bound_of(threshold: &str) -> Option<Bound> {
    match threshold {
        "accuracy" | "fairness" => Some(Bound::Minimum),
        // `drift_js`: drift measured as a Jensen-Shannon distance (docs/monitoring.md).
        "latency" | "drift" | "drift_js" | "abuse" | "fallback" | "error" | "spend" => {
            Some(Bound::Maximum)
        }
        _ => None,
    }
}

/// Every threshold of `previous` that `current` loosens: a lower minimum, a higher maximum, a
/// threshold dropped altogether, or (for a signal this build does not know) any other value.
fn loosened_thresholds(
    previous: &BTreeMap<String, f64>,
    current: &BTreeMap<String, f64>,
) -> Vec<ThresholdChange> {
    let mut loosened = Vec::new();
    for (name, &before) in previous {
        let change = match (current.get(name).copied(), bound_of(name)) {
            (None, _) => "dropped",
            (Some(after), Some(Bound::Minimum)) if after < before => "minimum lowered",
            (Some(after), Some(Bound::Maximum)) if after > before => "maximum raised",
            (Some(after), None) if after != before => "changed (direction unknown)",
            _ => continue,
        };
        loosened.push(ThresholdChange {
            threshold: name.clone(),
            change,
            previous: before,
            now: current.get(name).copied(),
        });
    }
    loosened
}

/// Whether `grant` extends `previous` (same deployment and binding): granted while `previous`
/// was active (not yet expired, not revoked), or at most `gap_ms` after it expired unrevoked.
fn extends(previous: &Grant, previous_revoked_at: Option<i64>, grant: &Grant, gap_ms: i64) -> bool {
    let revoked_before = previous_revoked_at.is_some_and(|at| at <= grant.granted_at);
    previous.deployment == grant.deployment
        && previous.binding == grant.binding
        && !revoked_before
        && grant.granted_at <= previous.expires_at.saturating_add(gap_ms)
}

/// Walks every grant up to the end of the period in ledger order and reports, for grants made
/// in the period: thresholds looser than the deployment's previous grant's, and extensions.
fn approval_drift(
    grants: &[Grant],
    revoked_at: &HashMap<String, i64>,
    period: Period,
    gap: Span,
) -> (Vec<LooserApproval>, Vec<RepeatedExtensions>) {
    let gap_ms = i64::try_from(gap.millis()).unwrap_or(i64::MAX);
    let mut loosened = Vec::new();
    let mut extensions: BTreeMap<&str, Vec<Extension>> = BTreeMap::new();
    let mut latest_of_deployment: HashMap<&str, &Grant> = HashMap::new();
    let mut latest_of_binding: HashMap<(&str, &str), &Grant> = HashMap::new();
    for grant in grants {
        let deployment = grant.deployment.as_str();
        let binding = (deployment, grant.binding.as_str());
        if period.contains(grant.granted_at) {
            if let Some(previous) = latest_of_deployment.get(deployment) {
                let changes = loosened_thresholds(&previous.thresholds, &grant.thresholds);
                if !changes.is_empty() {
                    loosened.push(LooserApproval {
                        deployment: grant.deployment.clone(),
                        approval_id: grant.approval_id.clone(),
                        granted_at: Timestamp(grant.granted_at).to_rfc3339(),
                        previous_approval_id: previous.approval_id.clone(),
                        loosened: changes,
                    });
                }
            }
            if let Some(previous) = latest_of_binding.get(&binding) {
                let previous_revoked_at = revoked_at.get(&previous.approval_id).copied();
                if extends(previous, previous_revoked_at, grant, gap_ms) {
                    extensions.entry(deployment).or_default().push(Extension {
                        approval_id: grant.approval_id.clone(),
                        granted_at: Timestamp(grant.granted_at).to_rfc3339(),
                        binding: grant.binding.clone(),
                        extends: previous.approval_id.clone(),
                        previous_expires_at: Timestamp(previous.expires_at).to_rfc3339(),
                        while_active: grant.granted_at < previous.expires_at,
                    });
                }
            }
        }
        latest_of_deployment.insert(deployment, grant);
        latest_of_binding.insert(binding, grant);
    }
    let repeated = extensions
        .into_iter()
        .filter(|(_, list)| list.len() >= REPEATED_EXTENSIONS)
        .map(|(deployment, approvals)| RepeatedExtensions {
            deployment: deployment.to_string(),
            extensions: approvals.len(),
            approvals,
        })
        .collect();
    (loosened, repeated)
}

/// Every completed approval of the selected deployments up to the end of the period, and when
/// each revoked approval was revoked.
fn read_grants(
    sink: &SqliteLedgerSink,
    settings: &Settings,
) -> Result<(Vec<Grant>, HashMap<String, i64>), Failure> {
    // From the start of the ledger: the approval a grant in the period is compared with, or
    // extends, may be older than the period.
    let until_end = |kind| ExportFilter {
        kind: Some(kind),
        to_ms: Some(settings.period.to.millis()),
        ..ExportFilter::default()
    };
    let mut grants = Vec::new();
    for entry in read_records(sink, &until_end(RecordKind::ApprovalCompleted))? {
        let completed: ApprovalCompleted = body_of(&entry)?;
        let terms = completed.approval;
        if settings.selects(&terms.deployment) {
            grants.push(Grant {
                approval_id: terms.id,
                deployment: terms.deployment,
                binding: terms.binding,
                granted_at: entry.record.at_ms,
                expires_at: terms.expires_at,
                thresholds: terms.thresholds,
            });
        }
    }
    let mut revoked_at = HashMap::new();
    for entry in read_records(sink, &until_end(RecordKind::ApprovalRevoked))? {
        let revoked: ApprovalRevoked = body_of(&entry)?;
        revoked_at
            .entry(revoked.approval_id)
            .or_insert(entry.record.at_ms);
    }
    Ok((grants, revoked_at))
}

fn read_records(
    sink: &SqliteLedgerSink,
    filter: &ExportFilter,
) -> Result<Vec<LedgerEntry>, Failure> {
    sink.query(filter)
        .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))
}

fn body_of<T: serde::de::DeserializeOwned>(entry: &LedgerEntry) -> Result<T, Failure> {
    T::deserialize(&entry.record.body).map_err(|e| {
        Failure::storage(format!(
            "ledger record {} (`{}`, {}) is not what gavel writes ({e}); check the ledger with `gavel audit verify`",
            entry.index, entry.record.id, entry.record.kind
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// The report

/// The JSON document (`--format json`); the text tables are drawn from it.
#[derive(Debug, Serialize)]
struct Report {
    from: String,
    to: String,
    /// null: every deployment.
    deployments: Option<Vec<String>>,
    settings: ReportSettings,
    decisions: u64,
    days: Vec<DayTraffic>,
    guards: Vec<GuardSeries>,
    quiet: QuietReport,
    loosened_contracts: Vec<LoosenedContract>,
    loosened_approvals: Vec<LooserApproval>,
    repeated_extensions: Vec<RepeatedExtensions>,
}

#[derive(Debug, Serialize)]
struct ReportSettings {
    quiet_days: usize,
    min_daily_decisions: u64,
    min_expected_findings: f64,
    extension_gap: Span,
    repeated_extensions: usize,
}

#[derive(Debug, Serialize)]
struct DayTraffic {
    day: String,
    decisions: u64,
}

#[derive(Debug, Serialize)]
struct GuardSeries {
    guard: String,
    blocks: u64,
    findings: u64,
    days: Vec<GuardDayRow>,
}

#[derive(Debug, Serialize)]
struct GuardDayRow {
    day: String,
    decisions: u64,
    blocks: u64,
    findings: u64,
    block_rate: Option<f64>,
    finding_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
struct QuietReport {
    /// The quiet window: the last `quiet_days` days of the period (null if it has no more).
    first_day: Option<String>,
    last_day: Option<String>,
    /// Why no guard could be called quiet, if so.
    not_checked: Option<String>,
    guards: Vec<QuietGuard>,
}

impl QuietReport {
    fn not_checked(why: String) -> QuietReport {
        QuietReport {
            first_day: None,
            last_day: None,
            not_checked: Some(why),
            guards: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
struct QuietGuard {
    guard: String,
    last_fired: String,
    earlier_decisions: u64,
    earlier_findings: u64,
    earlier_finding_rate: f64,
    window_decisions: u64,
    expected_findings: f64,
}

#[derive(Debug, Serialize)]
struct LoosenedContract {
    at: String,
    record_id: String,
    principal: Option<String>,
    contract_version: String,
    previous_version: Option<String>,
    /// The loosening change lines; empty when the previous version could not be reloaded to
    /// compare (apply then flags the load as loosening, assuming the worst).
    loosened: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LooserApproval {
    deployment: String,
    approval_id: String,
    granted_at: String,
    previous_approval_id: String,
    loosened: Vec<ThresholdChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ThresholdChange {
    threshold: String,
    change: &'static str,
    previous: f64,
    /// null: dropped.
    now: Option<f64>,
}

#[derive(Debug, Serialize)]
struct RepeatedExtensions {
    deployment: String,
    extensions: usize,
    approvals: Vec<Extension>,
}

#[derive(Debug, Serialize)]
struct Extension {
    approval_id: String,
    granted_at: String,
    binding: String,
    extends: String,
    previous_expires_at: String,
    /// Granted before the previous approval expired (else within the gap after).
    while_active: bool,
}

fn build_report(sink: &SqliteLedgerSink, settings: &Settings) -> Result<Report, Failure> {
    let (tally, silent) = tally_decisions(sink, settings)?;
    for deployment in silent {
        note(&format!(
            "note: no decision of deployment `{deployment}` in the period; check the id with `gavel check`"
        ));
    }
    let (grants, revoked_at) = read_grants(sink, settings)?;
    let (loosened_approvals, repeated_extensions) = approval_drift(
        &grants,
        &revoked_at,
        settings.period,
        settings.extension_gap,
    );
    Ok(Report {
        from: settings.period.from.to_rfc3339(),
        to: settings.period.to.to_rfc3339(),
        deployments: (!settings.deployments.is_empty())
            .then(|| settings.deployments.iter().cloned().collect()),
        settings: ReportSettings {
            quiet_days: settings.quiet_days,
            min_daily_decisions: settings.min_daily_decisions,
            min_expected_findings: MIN_EXPECTED_FINDINGS,
            extension_gap: settings.extension_gap,
            repeated_extensions: REPEATED_EXTENSIONS,
        },
        decisions: tally.decisions.iter().sum(),
        days: tally.day_rows(),
        guards: tally.guard_series(),
        quiet: quiet_guards(&tally, settings.quiet_days, settings.min_daily_decisions),
        loosened_contracts: loosened_contracts(sink, settings.period)?,
        loosened_approvals,
        repeated_extensions,
    })
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{:.2}%", r * 100.0))
}

fn print_text(report: &Report) -> Outcome {
    let scope = report
        .deployments
        .as_ref()
        .map_or_else(|| "all deployments".to_string(), |d| d.join(", "));
    out!(
        "compliance drift from {} to {} ({} UTC days), {scope}: {} decision(s)",
        report.from,
        report.to,
        report.days.len(),
        report.decisions
    );

    out!("\nGUARDS BY DAY (blocks and findings as shares of the day's decisions; days without decisions left out)");
    if report.guards.is_empty() {
        out!("  no guard fired");
    }
    for series in &report.guards {
        out!(
            "{}: {} block(s), {} decision(s) with a finding",
            series.guard,
            series.blocks,
            series.findings
        );
        out!(
            "  {:<10}  {:>9}  {:>7}  {:>10}  {:>8}  {:>12}",
            "DAY",
            "DECISIONS",
            "BLOCKS",
            "BLOCK RATE",
            "FINDINGS",
            "FINDING RATE"
        );
        for row in series.days.iter().filter(|row| row.decisions > 0) {
            out!(
                "  {:<10}  {:>9}  {:>7}  {:>10}  {:>8}  {:>12}",
                row.day,
                row.decisions,
                row.blocks,
                percent(row.block_rate),
                row.findings,
                percent(row.finding_rate)
            );
        }
    }

    let quiet = &report.quiet;
    out!(
        "\nQUIET GUARDS (fired earlier in the period, then on none of the last {} days although each had at least {} decisions and the earlier rate predicts at least {} findings)",
        report.settings.quiet_days,
        report.settings.min_daily_decisions,
        report.settings.min_expected_findings
    );
    if let (Some(first), Some(last)) = (&quiet.first_day, &quiet.last_day) {
        out!("  last days: {first} to {last}");
    }
    if let Some(why) = &quiet.not_checked {
        out!("  not checked: {why}");
    } else if quiet.guards.is_empty() {
        out!("  none");
    } else {
        out!(
            "  {:<26}  {:<10}  {:>12}  {:>15}  {:>8}",
            "GUARD",
            "LAST FIRED",
            "EARLIER RATE",
            "DECISIONS SINCE",
            "EXPECTED"
        );
        for guard in &quiet.guards {
            out!(
                "  {:<26}  {:<10}  {:>12}  {:>15}  {:>8.1}",
                guard.guard,
                guard.last_fired,
                percent(Some(guard.earlier_finding_rate)),
                guard.window_decisions,
                guard.expected_findings
            );
        }
    }

    out!("\nCONTRACT LOADS THAT LOOSENED GOVERNANCE");
    if report.loosened_contracts.is_empty() {
        out!("  none");
    }
    for load in &report.loosened_contracts {
        out!(
            "  {} by {}: version {} (was {})",
            load.at,
            load.principal.as_deref().unwrap_or("?"),
            short_hash(&load.contract_version),
            load.previous_version.as_deref().map_or("none", short_hash)
        );
        if load.loosened.is_empty() {
            out!("    flagged as loosening without itemised changes (the previous version could not be reloaded to compare)");
        }
        for change in &load.loosened {
            out!("    LOOSENS {change}");
        }
    }

    out!("\nAPPROVALS WITH LOOSER THRESHOLDS THAN THE DEPLOYMENT'S PREVIOUS APPROVAL");
    if report.loosened_approvals.is_empty() {
        out!("  none");
    }
    for approval in &report.loosened_approvals {
        let changes: Vec<String> = approval
            .loosened
            .iter()
            .map(|c| match c.now {
                Some(now) => format!("{} {} {} -> {now}", c.threshold, c.change, c.previous),
                None => format!("{} {} (was {})", c.threshold, c.change, c.previous),
            })
            .collect();
        out!(
            "  {} {} {} (previous {}): {}",
            approval.granted_at,
            approval.deployment,
            approval.approval_id,
            approval.previous_approval_id,
            changes.join("; ")
        );
    }

    out!(
        "\nAPPROVALS EXTENDED REPEATEDLY ({} or more extensions in the period; gap after expiry {})",
        report.settings.repeated_extensions,
        report.settings.extension_gap
    );
    if report.repeated_extensions.is_empty() {
        out!("  none");
    }
    for deployment in &report.repeated_extensions {
        out!(
            "  {}: {} extensions",
            deployment.deployment,
            deployment.extensions
        );
        for e in &deployment.approvals {
            out!(
                "    {} {} extended {} ({} {})",
                e.granted_at,
                e.approval_id,
                e.extends,
                if e.while_active {
                    "active until"
                } else {
                    "expired at"
                },
                e.previous_expires_at
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        Timestamp::parse_rfc3339(text).unwrap().millis()
    }

    fn period(from: &str, to: &str) -> Period {
        Period::from_args(Some(from), Some(to), Timestamp(0)).unwrap()
    }

    fn facts<'a>(verdict: &'a str, codes: &[&'a str], findings: &[&'a str]) -> DecisionFacts<'a> {
        DecisionFacts {
            verdict: Cow::Borrowed(verdict),
            reason_codes: codes.iter().map(|c| Cow::Borrowed(*c)).collect(),
            findings: findings
                .iter()
                .map(|k| FindingKind {
                    kind: Cow::Borrowed(*k),
                })
                .collect(),
        }
    }

    #[test]
    fn the_default_period_is_thirty_utc_days_ending_now() {
        let now = Timestamp(at("2026-11-22T15:00:00Z"));
        let p = Period::from_args(None, None, now).unwrap();
        assert_eq!(p.from.to_rfc3339(), "2026-10-24T00:00:00.000Z");
        assert_eq!(p.to, now);
        assert_eq!(p.day_count(), 30);
        // --to at midnight: the day it starts is not part of the period.
        let p = Period::from_args(None, Some("2026-11-01"), now).unwrap();
        assert_eq!(p.from.to_rfc3339(), "2026-10-02T00:00:00.000Z");
        assert_eq!(day_name(p.last_day()), "2026-10-31");
        assert_eq!(p.day_count(), 30);
    }

    #[test]
    fn bad_periods_are_usage_errors() {
        let now = Timestamp(0);
        let e = Period::from_args(Some("2026-11-02"), Some("2026-11-01"), now).unwrap_err();
        assert_eq!(e.exit_code, crate::failure::EXIT_USAGE);
        assert!(e.message.contains("is not before --to"), "{}", e.message);
        let e = Period::from_args(Some("yesterday"), None, now).unwrap_err();
        assert!(e.message.contains("--from `yesterday` is not a date"));
        let e = Period::from_args(Some("2020-01-01"), Some("2026-01-01"), now).unwrap_err();
        assert!(e.message.contains("at most 366"), "{}", e.message);
        assert!(Period::from_args(Some("2024-01-01"), Some("2025-01-01"), now).is_ok());
    }

    #[test]
    fn a_block_is_counted_for_the_guard_that_stopped_the_request_only() {
        let p = period("2026-10-01", "2026-10-03");
        let mut tally = Tally::new(p);
        // Flagged PII first (a note), then a budget block: the engine puts the stop first.
        tally.add(
            at("2026-10-01T10:00:00Z"),
            &facts("BLOCK", &["budget.tokens", "privacy.pii"], &["pii", "pii"]),
        );
        // A redacted secret: a scanner finding with no reason code.
        tally.add(
            at("2026-10-01T11:00:00Z"),
            &facts("ALLOW", &[], &["secret"]),
        );
        // Injection features alone are not findings of a guard.
        tally.add(
            at("2026-10-02T11:00:00Z"),
            &facts("ALLOW", &[], &["injection"]),
        );
        tally.add(
            at("2026-10-02T12:00:00Z"),
            &facts("COOLDOWN", &["killswitch.active"], &[]),
        );
        // Outside the period: ignored.
        tally.add(at("2026-10-03T00:00:00Z"), &facts("BLOCK", &["x"], &[]));
        assert_eq!(tally.decisions, [2, 2]);
        let day = |guard: &str, d: usize| tally.guards[guard][d];
        assert_eq!(
            day("budget.tokens", 0),
            GuardDay {
                blocks: 1,
                findings: 1
            }
        );
        assert_eq!(
            day("privacy.pii", 0),
            GuardDay {
                blocks: 0,
                findings: 1
            }
        );
        assert_eq!(
            day("privacy.secret", 0),
            GuardDay {
                blocks: 0,
                findings: 1
            }
        );
        assert_eq!(
            day("killswitch.active", 1),
            GuardDay {
                blocks: 1,
                findings: 1
            }
        );
        assert_eq!(tally.guards.len(), 4);
        let series = tally.guard_series();
        let pii = series.iter().find(|s| s.guard == "privacy.pii").unwrap();
        assert_eq!(pii.days[0].finding_rate, Some(0.5));
        assert_eq!(pii.days[0].block_rate, Some(0.0));
        assert_eq!(pii.days[1].finding_rate, Some(0.0));
    }

    #[test]
    fn days_without_decisions_have_no_rate() {
        assert_eq!(share(0, 0), None);
        assert_eq!(share(1, 4), Some(0.25));
    }

    /// A tally of `days` days with `traffic` decisions each, and a guard's findings per day.
    fn tally_with(traffic: &[u64], guard: &str, findings: &[u64]) -> Tally {
        Tally {
            first_day: Date::parse("2026-10-01").unwrap().days_since_epoch(),
            decisions: traffic.to_vec(),
            guards: [(
                guard.to_string(),
                findings
                    .iter()
                    .map(|&f| GuardDay {
                        blocks: 0,
                        findings: f,
                    })
                    .collect(),
            )]
            .into(),
        }
    }

    #[test]
    fn a_guard_silent_on_the_last_days_with_traffic_is_quiet() {
        let tally = tally_with(&[10; 6], "privacy.pii", &[2, 2, 0, 0, 0, 0]);
        let report = quiet_guards(&tally, 3, 10);
        assert_eq!(report.not_checked, None);
        assert_eq!(report.first_day.as_deref(), Some("2026-10-04"));
        assert_eq!(report.last_day.as_deref(), Some("2026-10-06"));
        let quiet = &report.guards[0];
        assert_eq!(quiet.guard, "privacy.pii");
        assert_eq!(quiet.last_fired, "2026-10-02");
        assert_eq!((quiet.earlier_findings, quiet.earlier_decisions), (4, 30));
        assert_eq!(quiet.window_decisions, 30);
        assert!((quiet.expected_findings - 4.0).abs() < 1e-9);
    }

    #[test]
    fn a_rare_guard_or_one_that_fired_lately_is_not_quiet() {
        // 2 findings expected over the last days: silence is what a rare guard looks like.
        let rare = tally_with(
            &[10, 10, 10, 10, 10, 10],
            "privacy.pii",
            &[2, 0, 0, 0, 0, 0],
        );
        assert!(quiet_guards(&rare, 3, 10).guards.is_empty());
        let lately = tally_with(&[10; 6], "privacy.pii", &[5, 5, 5, 0, 1, 0]);
        assert!(quiet_guards(&lately, 3, 10).guards.is_empty());
        let never_before = tally_with(&[10; 6], "privacy.pii", &[0, 0, 0, 0, 0, 0]);
        assert!(quiet_guards(&never_before, 3, 10).guards.is_empty());
    }

    #[test]
    fn silence_without_traffic_or_an_earlier_part_is_not_checked() {
        let thin = tally_with(&[10, 10, 10, 10, 9, 10], "privacy.pii", &[9, 9, 9, 0, 0, 0]);
        let report = quiet_guards(&thin, 3, 10);
        assert!(report.guards.is_empty());
        let why = report.not_checked.unwrap();
        assert!(why.starts_with("2026-10-05 had 9 decision(s)"), "{why}");
        let short = tally_with(&[10; 3], "privacy.pii", &[9, 0, 0]);
        let report = quiet_guards(&short, 3, 10);
        assert!(report.not_checked.unwrap().contains("no earlier part"));
        assert_eq!(report.first_day, None);
    }

    #[test]
    fn loosened_contract_changes_lose_their_flag() {
        let changes = [
            "LOOSENS budget `principal/1m/*/*` requests raised 120 -> 500".to_string(),
            "injection threshold 0.8 -> 0.7".to_string(),
        ];
        assert_eq!(
            loosened_changes(&changes),
            ["budget `principal/1m/*/*` requests raised 120 -> 500"]
        );
    }

    fn thresholds(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn looser_thresholds_by_direction() {
        let before = thresholds(&[
            ("accuracy", 0.9),
            ("fairness", 0.8),
            ("latency", 500.0),
            ("spend", 100.0),
            ("drift", 0.2),
            ("drift_js", 0.1),
            ("future_signal", 1.0),
        ]);
        let after = thresholds(&[
            ("accuracy", 0.85), // lower minimum: looser
            ("fairness", 0.9),  // higher minimum: tighter
            ("latency", 800.0), // higher maximum: looser
            ("spend", 50.0),    // lower maximum: tighter
            // drift dropped: looser
            ("drift_js", 0.3),      // higher maximum: looser
            ("future_signal", 2.0), // unknown direction, changed
            ("abuse", 0.1),         // new: tighter
        ]);
        let changes = loosened_thresholds(&before, &after);
        let summary: Vec<(&str, &str, Option<f64>)> = changes
            .iter()
            .map(|c| (c.threshold.as_str(), c.change, c.now))
            .collect();
        assert_eq!(
            summary,
            [
                ("accuracy", "minimum lowered", Some(0.85)),
                ("drift", "dropped", None),
                ("drift_js", "maximum raised", Some(0.3)),
                ("future_signal", "changed (direction unknown)", Some(2.0)),
                ("latency", "maximum raised", Some(800.0)),
            ]
        );
        assert!(loosened_thresholds(&before, &before).is_empty());
    }

    fn grant(id: &str, binding: &str, granted: &str, expires: &str) -> Grant {
        Grant {
            approval_id: id.to_string(),
            deployment: "kb".to_string(),
            binding: binding.to_string(),
            granted_at: at(granted),
            expires_at: at(expires),
            thresholds: BTreeMap::new(),
        }
    }

    #[test]
    fn an_extension_needs_the_same_binding_and_an_unrevoked_predecessor_within_the_gap() {
        let gap = Span::from_days(7).millis() as i64;
        let first = grant("a", "b1", "2026-10-01", "2026-10-10");
        let during = grant("b", "b1", "2026-10-05", "2026-10-20");
        let soon_after = grant("c", "b1", "2026-10-17", "2026-10-30");
        let too_late = grant("d", "b1", "2026-10-17T00:00:01Z", "2026-10-30");
        let other_binding = grant("e", "b2", "2026-10-05", "2026-10-20");
        assert!(extends(&first, None, &during, gap));
        assert!(extends(&first, None, &soon_after, gap));
        assert!(!extends(&first, None, &too_late, gap));
        assert!(!extends(&first, None, &other_binding, gap));
        assert!(!extends(&first, Some(at("2026-10-04")), &during, gap));
        // Revoked only after the new grant: it was still active when extended.
        assert!(extends(&first, Some(at("2026-10-06")), &during, gap));
    }

    #[test]
    fn repeated_extensions_and_looser_approvals_are_reported_for_grants_in_the_period() {
        let p = period("2026-10-01", "2026-11-01");
        let mut before_period = grant("a", "b1", "2026-09-01", "2026-10-02");
        before_period.thresholds = thresholds(&[("accuracy", 0.9)]);
        let mut grants = vec![
            before_period,
            grant("b", "b1", "2026-10-01T12:00:00Z", "2026-10-15"),
            grant("c", "b1", "2026-10-14", "2026-10-30"),
        ];
        let (loosened, repeated) = approval_drift(&grants, &HashMap::new(), p, Span::from_days(7));
        assert_eq!(loosened.len(), 1);
        assert_eq!(loosened[0].approval_id, "b");
        assert_eq!(loosened[0].previous_approval_id, "a");
        assert_eq!(loosened[0].loosened[0].change, "dropped");
        assert_eq!(repeated.len(), 1);
        assert_eq!(repeated[0].extensions, 2);
        assert_eq!(repeated[0].approvals[0].extends, "a");
        assert!(repeated[0].approvals[0].while_active);
        // One re-approval in the period is not "repeatedly".
        grants.truncate(2);
        let (_, repeated) = approval_drift(&grants, &HashMap::new(), p, Span::from_days(7));
        assert!(repeated.is_empty());
        // A revoked predecessor is replaced, not extended.
        grants.push(grant("c", "b1", "2026-10-14", "2026-10-30"));
        let revoked = HashMap::from([("b".to_string(), at("2026-10-13"))]);
        let (_, repeated) = approval_drift(&grants, &revoked, p, Span::from_days(7));
        assert!(repeated.is_empty());
    }
}
