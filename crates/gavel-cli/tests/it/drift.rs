//! `gavel drift` over ledgers spread across days. The CLI records with the system clock, so
//! the spread-out records are appended from here through the ledger library (the same
//! appender, sink and signing key the CLI uses), with chosen timestamps; the ledger they make
//! still verifies. Records the real commands write today are read too, so the report is
//! checked against what gavel actually records.

use std::time::Instant;

use serde_json::{json, Value};

use gavel_contract::time::Timestamp;
use gavel_ledger::{Appender, AppenderConfig, Pending, Record, RecordKind};
use gavel_ledger_sqlite::{load_signing_key, SqliteLedgerSink};

use crate::*;

fn ms(time: &str) -> i64 {
    Timestamp::parse_rfc3339(time)
        .unwrap_or_else(|| panic!("bad time {time}"))
        .millis()
}

/// Appends records with chosen timestamps to a gavel folder's ledger.
struct Backdated {
    appender: Appender,
    pending: Vec<Pending>,
    next_id: u64,
}

impl Backdated {
    fn open(g: &Gavel) -> Backdated {
        let signer = load_signing_key(g.path("gavel-ledger.key")).unwrap();
        let sink = SqliteLedgerSink::open(g.path("gavel.db")).unwrap();
        Backdated {
            appender: Appender::start(sink, signer, AppenderConfig::default()).unwrap(),
            pending: Vec::new(),
            next_id: 0,
        }
    }

    fn append(&mut self, kind: RecordKind, at_ms: i64, body: &Value) {
        self.next_id += 1;
        let id = format!("bkd_{}", self.next_id);
        let record = Record::new(kind, at_ms, id, body).unwrap();
        self.pending.push(self.appender.submit(&record).unwrap());
        // Bounded memory for big ledgers: wait for what is queued now and then.
        if self.pending.len() >= 50_000 {
            self.settle();
        }
    }

    fn settle(&mut self) {
        for pending in self.pending.drain(..) {
            pending.wait().unwrap();
        }
    }

    /// A decision shaped like the engine's.
    fn decision(
        &mut self,
        at_ms: i64,
        deployment: &str,
        verdict: &str,
        codes: &[&str],
        findings: &[&str],
    ) {
        let body = json!({
            "decision_id": format!("dec_{}", self.next_id + 1),
            "verdict": verdict,
            "reasons": codes.iter().map(|c| json!({"code": c, "message": format!("{c} (backdated)")})).collect::<Vec<_>>(),
            "reason_codes": codes,
            "obligations": [],
            "findings": findings.iter().map(|kind| json!({
                "kind": kind, "rule_id": format!("{kind}.email"), "text_index": 1, "start": 3, "end": 20, "confidence": 0.95
            })).collect::<Vec<_>>(),
            "deployment": deployment,
            "use_case": "knowledge-search",
            "tier": "minimal",
            "binding": "7557a51f4819aa5e1d5bbd2b6cd11b3e4bd1bd6b1e8b9e0e5a2c3d4e5f6a7b8c",
            "approval_id": "apr_01M81PJRS40DS24KAQMHTXK4PS",
            "contract_version": "fd733ee8cfe8a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6",
            "principal": "svc-wiki",
            "run_id": null,
            "at": Timestamp(at_ms).to_rfc3339(),
            "input_sha256": "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea",
        });
        self.append(RecordKind::Decision, at_ms, &body);
    }

    /// An `approval_completed` record shaped like `gavel approve`'s.
    fn approval(
        &mut self,
        deployment: &str,
        id: &str,
        binding: &str,
        granted: &str,
        expires: &str,
        thresholds: Value,
    ) {
        let approval = json!({
            "id": id, "deployment": deployment, "use_case": "order-support", "binding": binding,
            "contract_version": "fd733ee8cfe8", "tier": "limited", "population": "Acme customers",
            "created_at": ms(granted), "expires_at": ms(expires), "thresholds": thresholds,
            "on_breach": {"action": "block"}, "evidence": [],
            "signoffs": [{"principal": "rita", "approver_role": "risk", "at": ms(granted)}],
            "status": "active", "revocation": null,
        });
        let body = json!({
            "principal": "rita", "action": "approval_completed", "approval_id": id,
            "deployment": deployment, "approver_role": "risk", "approval": approval,
        });
        self.append(RecordKind::ApprovalCompleted, ms(granted), &body);
    }

    fn close(mut self) {
        self.settle();
        self.appender.close().unwrap();
    }
}

fn drift_json(g: &Gavel, key: &str, args: &[&str]) -> Value {
    let mut all = vec!["drift", "--format", "json"];
    all.extend_from_slice(args);
    let run = g.run(Some(key), &all).ok();
    serde_json::from_str(&run.stdout).unwrap()
}

/// The two weeks `two_weeks` writes, kb-search-v1 only.
const KB_FORTNIGHT: [&str; 6] = [
    "--from",
    "2026-10-01",
    "--to",
    "2026-10-15",
    "--deployment",
    "kb-search-v1",
];

fn kb_fortnight_json(r: &Ready, extra: &[&str]) -> Value {
    drift_json(&r.g, &r.auditor, &[KB_FORTNIGHT.as_slice(), extra].concat())
}

fn kb_fortnight_text(r: &Ready) -> String {
    let mut args = vec!["drift"];
    args.extend_from_slice(&KB_FORTNIGHT);
    r.g.run(Some(&r.auditor), &args).ok().stdout
}

fn guard<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["guards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["guard"] == name)
        .unwrap_or_else(|| panic!("no guard {name} in {}", report["guards"]))
}

fn guard_names(report: &Value) -> Vec<&str> {
    report["guards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["guard"].as_str().unwrap())
        .collect()
}

/// 2026-10-01 plus `day` days, at `minute` past midnight.
fn on_day(day: i64, minute: i64) -> i64 {
    ms("2026-10-01") + day * 86_400_000 + minute * 60_000
}

/// Fourteen days of 20 decisions a day on kb-search-v1: privacy.pii blocks 2 and finds 5 a
/// day for the first seven days and then nothing (quiet); privacy.secret blocks once on day 2
/// (rare, not quiet); budget.tokens blocks on days 3 and 12 (rare, fired lately). Plus traffic
/// outside the period and on another deployment.
fn two_weeks() -> (Ready, Value) {
    let r = Ready::start();
    let mut ledger = Backdated::open(&r.g);
    for day in 0..14 {
        let mut plan: Vec<(&str, &[&str], &[&str])> = Vec::new();
        if day < 7 {
            plan.extend([("BLOCK", &["privacy.pii"][..], &["pii"][..]); 2]);
            // Redacted: a finding without a reason code.
            plan.extend([("ALLOW", &[][..], &["pii"][..]); 3]);
        }
        if day == 1 {
            // The secret stops the request; the e-mail address beside it is a finding too.
            plan.push(("BLOCK", &["privacy.secret"], &["secret", "pii"]));
        }
        if day == 2 || day == 11 {
            plan.push(("BLOCK", &["budget.tokens"], &[]));
        }
        plan.resize(20, ("ALLOW", &[], &[]));
        for (minute, (verdict, codes, findings)) in (0..).zip(plan) {
            ledger.decision(
                on_day(day, minute),
                "kb-search-v1",
                verdict,
                codes,
                findings,
            );
        }
        ledger.decision(
            on_day(day, 600),
            "order-agent-v2",
            "BLOCK",
            &["approval.missing"],
            &[],
        );
    }
    // Just outside the period on either side.
    ledger.decision(
        ms("2026-09-30T23:59:59.999Z"),
        "kb-search-v1",
        "BLOCK",
        &["privacy.pii"],
        &[],
    );
    ledger.decision(
        ms("2026-10-15"),
        "kb-search-v1",
        "BLOCK",
        &["privacy.pii"],
        &[],
    );
    ledger.close();
    let report = kb_fortnight_json(&r, &[]);
    (r, report)
}

#[test]
fn block_and_finding_rates_by_day_are_exact() {
    let (r, report) = two_weeks();
    assert_eq!(report["from"], "2026-10-01T00:00:00.000Z");
    assert_eq!(report["to"], "2026-10-15T00:00:00.000Z");
    assert_eq!(report["deployments"], json!(["kb-search-v1"]));
    assert_eq!(report["decisions"], 14 * 20);
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 14);
    assert_eq!(days[0], json!({"day": "2026-10-01", "decisions": 20}));
    assert_eq!(days[13], json!({"day": "2026-10-14", "decisions": 20}));
    // The other deployment's approval.missing blocks are not in a kb-search-v1 report.
    assert_eq!(
        guard_names(&report),
        ["budget.tokens", "privacy.pii", "privacy.secret"]
    );

    let pii = guard(&report, "privacy.pii");
    assert_eq!(
        (pii["blocks"].as_u64(), pii["findings"].as_u64()),
        (Some(14), Some(36))
    );
    assert_eq!(
        pii["days"][0],
        json!({"day": "2026-10-01", "decisions": 20, "blocks": 2, "findings": 5, "block_rate": 0.1, "finding_rate": 0.25})
    );
    // Day 2 also has the secret request's e-mail address: one more finding, no more blocks.
    assert_eq!(pii["days"][1]["findings"], 6);
    assert_eq!(pii["days"][1]["finding_rate"], 0.3);
    assert_eq!(pii["days"][1]["block_rate"], 0.1);
    assert_eq!(
        pii["days"][7],
        json!({"day": "2026-10-08", "decisions": 20, "blocks": 0, "findings": 0, "block_rate": 0.0, "finding_rate": 0.0})
    );
    let secret = guard(&report, "privacy.secret");
    assert_eq!(
        secret["days"][1],
        json!({"day": "2026-10-02", "decisions": 20, "blocks": 1, "findings": 1, "block_rate": 0.05, "finding_rate": 0.05})
    );
    assert_eq!(guard(&report, "budget.tokens")["blocks"], 2);

    // Every deployment: the other deployment's blocks join, one a day.
    let all = drift_json(
        &r.g,
        &r.auditor,
        &["--from", "2026-10-01", "--to", "2026-10-15"],
    );
    assert_eq!(all["deployments"], Value::Null);
    assert_eq!(all["decisions"], 14 * 21);
    let missing = guard(&all, "approval.missing");
    assert_eq!(missing["days"][0]["blocks"], 1);
    assert_eq!(missing["days"][0]["block_rate"], 1.0 / 21.0);
    assert_eq!(
        guard(&all, "privacy.pii")["days"][0]["finding_rate"],
        5.0 / 21.0
    );

    // The text tables carry the same figures.
    let text = kb_fortnight_text(&r);
    assert!(
        text.contains("(14 UTC days), kb-search-v1: 280 decision(s)"),
        "{text}"
    );
    assert!(text.contains("privacy.pii: 14 block(s), 36 decision(s) with a finding"));
    let first_pii_row = text
        .lines()
        .skip_while(|l| !l.starts_with("privacy.pii:"))
        .nth(2)
        .unwrap();
    assert_eq!(
        first_pii_row.split_whitespace().collect::<Vec<_>>(),
        ["2026-10-01", "20", "2", "10.00%", "5", "25.00%"]
    );
}

#[test]
fn a_quiet_guard_is_reported_and_a_rare_one_is_not() {
    let (r, report) = two_weeks();
    let quiet = &report["quiet"];
    assert_eq!(quiet["first_day"], "2026-10-08");
    assert_eq!(quiet["last_day"], "2026-10-14");
    assert_eq!(quiet["not_checked"], Value::Null);
    // privacy.secret fired once in 140 earlier decisions: one finding expected over the last
    // seven days, so its silence is what rare looks like. budget.tokens fired on day 12.
    assert_eq!(
        quiet["guards"],
        json!([{
            "guard": "privacy.pii",
            "last_fired": "2026-10-07",
            "earlier_decisions": 140,
            "earlier_findings": 36,
            "earlier_finding_rate": 36.0 / 140.0,
            "window_decisions": 140,
            "expected_findings": 36.0 / 140.0 * 140.0,
        }])
    );

    // Without the traffic to show anything, nothing is called quiet, and the report says why.
    let thin = kb_fortnight_json(&r, &["--min-daily-decisions", "21"]);
    assert_eq!(thin["quiet"]["guards"], json!([]));
    assert_eq!(
        thin["quiet"]["not_checked"],
        "2026-10-08 had 20 decision(s), fewer than --min-daily-decisions 21: traffic did not continue, so silence shows nothing"
    );
    // A longer quiet window reaches back to the day privacy.pii last fired.
    let eight = kb_fortnight_json(&r, &["--quiet-days", "8"]);
    assert_eq!(eight["quiet"]["guards"], json!([]));
    let text = kb_fortnight_text(&r);
    assert!(
        text.contains("\n  last days: 2026-10-08 to 2026-10-14\n"),
        "{text}"
    );
    let quiet_rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("QUIET GUARDS"))
        .skip(3)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(quiet_rows.len(), 1, "{text}");
    assert_eq!(
        quiet_rows[0].split_whitespace().collect::<Vec<_>>(),
        ["privacy.pii", "2026-10-07", "25.71%", "140", "36.0"]
    );
}

#[test]
fn real_decisions_are_counted_today() {
    let r = Ready::start();
    let allowed = r.g.decide(&r.service, &kb_request());
    assert_eq!(allowed["verdict"], "ALLOW");
    let mut leaky = kb_request();
    leaky["messages"][1]["content"] = json!(format!(
        "my key AKIA{} and mail jane.doe@example.org",
        "QWERTYUIOPASDFGH"
    ));
    let secret = r.g.decide(&r.service, &leaky);
    assert_eq!(secret["verdict"], "BLOCK");
    assert_eq!(secret["reasons"][0]["code"], "privacy.secret");
    let kinds: Vec<&str> = secret["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"pii"), "{secret}");
    let mut unapproved = kb_request();
    unapproved["deployment"] = json!("support-triage-v3");
    let missing = r.g.decide(&r.service, &unapproved);
    assert_eq!(missing["reasons"][0]["code"], "approval.missing");

    let report = drift_json(&r.g, &r.auditor, &[]);
    assert_eq!(report["days"].as_array().unwrap().len(), 30);
    assert_eq!(report["decisions"], 3);
    let today = |name: &str| guard(&report, name)["days"][29].clone();
    assert_eq!(today("privacy.secret")["blocks"], 1);
    assert_eq!(today("privacy.pii")["blocks"], 0);
    assert_eq!(today("privacy.pii")["findings"], 1);
    assert_eq!(today("approval.missing")["block_rate"], 1.0 / 3.0);
    assert_eq!(report["quiet"]["guards"], json!([]));
}

#[test]
fn a_loosening_contract_load_is_reported_with_what_it_loosened() {
    let r = Ready::start();
    let yaml = std::fs::read_to_string(r.g.path("gavel.yaml")).unwrap();
    std::fs::write(
        r.g.path("gavel.yaml"),
        yaml.replace("requests: 120 }", "requests: 60 }"),
    )
    .unwrap();
    r.g.run(Some(&r.operator), &["apply"]).ok();
    let report = drift_json(&r.g, &r.auditor, &[]);
    assert_eq!(
        report["loosened_contracts"],
        json!([]),
        "tightening is not drift"
    );

    std::fs::write(
        r.g.path("gavel.yaml"),
        yaml.replace("requests: 120 }", "requests: 500 }"),
    )
    .unwrap();
    let applied = r.g.run(Some(&r.operator), &["apply"]).ok().stdout;
    assert!(applied.contains("LOOSENS"), "{applied}");
    let report = drift_json(&r.g, &r.auditor, &[]);
    let loosened = report["loosened_contracts"].as_array().unwrap();
    assert_eq!(loosened.len(), 1, "{loosened:?}");
    assert_eq!(loosened[0]["principal"], "olga");
    assert_eq!(
        loosened[0]["loosened"],
        json!(["budget `principal/1m/*/*` requests raised 60 -> 500"])
    );
    assert_ne!(loosened[0]["previous_version"], Value::Null);
    // A period that ends before the load does not report it.
    let before = drift_json(&r.g, &r.auditor, &["--to", "2026-01-01"]);
    assert_eq!(before["loosened_contracts"], json!([]));
    let text = r.g.run(Some(&r.auditor), &["drift"]).ok().stdout;
    assert!(
        text.contains("    LOOSENS budget `principal/1m/*/*` requests raised 60 -> 500"),
        "{text}"
    );
}

#[test]
fn looser_thresholds_and_repeated_extensions_of_real_approvals() {
    let r = Ready::start();
    let approve = |thresholds: &[&str]| {
        let mut args = approve_kb("cooldown:15m");
        for t in thresholds {
            args.extend(["--threshold", t]);
        }
        r.g.run(Some(&r.risk), &args).ok();
    };
    // Re-approved while the first approval is active, with thresholds where it had none:
    // an extension, and tighter.
    approve(&["accuracy=0.9", "latency=500"]);
    let report = drift_json(&r.g, &r.auditor, &[]);
    assert_eq!(report["loosened_approvals"], json!([]));
    assert_eq!(
        report["repeated_extensions"],
        json!([]),
        "one re-approval is not repeated"
    );

    // Again, with accuracy lowered and latency dropped: looser, and the second extension.
    approve(&["accuracy=0.8"]);
    let report = drift_json(&r.g, &r.auditor, &[]);
    let loosened = report["loosened_approvals"].as_array().unwrap();
    assert_eq!(loosened.len(), 1);
    assert_eq!(loosened[0]["deployment"], "kb-search-v1");
    assert_eq!(
        loosened[0]["loosened"],
        json!([
            {"threshold": "accuracy", "change": "minimum lowered", "previous": 0.9, "now": 0.8},
            {"threshold": "latency", "change": "dropped", "previous": 500.0, "now": null},
        ])
    );
    let repeated = report["repeated_extensions"].as_array().unwrap();
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0]["deployment"], "kb-search-v1");
    assert_eq!(repeated[0]["extensions"], 2);
    assert_eq!(repeated[0]["approvals"][0]["while_active"], true);
    assert_eq!(
        repeated[0]["approvals"][1]["extends"],
        repeated[0]["approvals"][0]["approval_id"]
    );
    // Another deployment's report has none of it.
    let other = drift_json(&r.g, &r.auditor, &["--deployment", "order-agent-v2"]);
    assert_eq!(other["loosened_approvals"], json!([]));
    assert_eq!(other["repeated_extensions"], json!([]));
}

#[test]
fn extensions_count_within_the_gap_after_expiry_and_not_after_it() {
    let g = Gavel::init();
    let auditor = g.key("audrey", "auditor", None);
    let mut ledger = Backdated::open(&g);
    // order-agent-v2: each re-approval comes 2 and then 5 days after the previous expired.
    let order = "order-agent-v2";
    ledger.approval(order, "apr_o1", "b1", "2026-10-01", "2026-10-10", json!({}));
    ledger.approval(order, "apr_o2", "b1", "2026-10-12", "2026-10-20", json!({}));
    ledger.approval(order, "apr_o3", "b1", "2026-10-25", "2026-11-20", json!({}));
    // support-triage-v3: re-approved 15 days after expiry (a new approval, not an extension),
    // then extended once while active, then re-approved for another binding.
    let triage = "support-triage-v3";
    ledger.approval(
        triage,
        "apr_t1",
        "b1",
        "2026-09-20",
        "2026-10-01",
        json!({"abuse": 0.1}),
    );
    ledger.approval(
        triage,
        "apr_t2",
        "b1",
        "2026-10-16",
        "2026-10-30",
        json!({"abuse": 0.2}),
    );
    ledger.approval(
        triage,
        "apr_t3",
        "b1",
        "2026-10-20",
        "2026-11-30",
        json!({"abuse": 0.2}),
    );
    ledger.approval(
        triage,
        "apr_t4",
        "b2",
        "2026-10-21",
        "2026-11-30",
        json!({"abuse": 0.2, "spend": 10}),
    );
    ledger.close();

    let report = drift_json(
        &g,
        &auditor,
        &["--from", "2026-10-01", "--to", "2026-11-01"],
    );
    assert_eq!(
        report["repeated_extensions"],
        json!([{
            "deployment": "order-agent-v2",
            "extensions": 2,
            "approvals": [
                {"approval_id": "apr_o2", "granted_at": "2026-10-12T00:00:00.000Z", "binding": "b1", "extends": "apr_o1", "previous_expires_at": "2026-10-10T00:00:00.000Z", "while_active": false},
                {"approval_id": "apr_o3", "granted_at": "2026-10-25T00:00:00.000Z", "binding": "b1", "extends": "apr_o2", "previous_expires_at": "2026-10-20T00:00:00.000Z", "while_active": false},
            ],
        }])
    );
    // The approval before the period is the one apr_t2 is compared with.
    assert_eq!(
        report["loosened_approvals"],
        json!([{
            "deployment": "support-triage-v3",
            "approval_id": "apr_t2",
            "granted_at": "2026-10-16T00:00:00.000Z",
            "previous_approval_id": "apr_t1",
            "loosened": [{"threshold": "abuse", "change": "maximum raised", "previous": 0.1, "now": 0.2}],
        }])
    );
    let strict = drift_json(
        &g,
        &auditor,
        &[
            "--from",
            "2026-10-01",
            "--to",
            "2026-11-01",
            "--extension-gap",
            "1d",
        ],
    );
    assert_eq!(strict["repeated_extensions"], json!([]));
    assert_eq!(strict["settings"]["extension_gap"], "1d");
    g.run(Some(&auditor), &["audit", "verify", "--strict"]).ok();
}

#[test]
fn every_ledger_reader_may_run_it_and_no_one_else() {
    let r = Ready::start();
    for key in [&r.auditor, &r.risk, &r.operator, &r.g.admin] {
        r.g.run(Some(key), &["drift"]).ok();
    }
    r.g.run(Some(&r.service), &["drift"]).fails(
        3,
        "`svc-wiki` has role service; reporting compliance drift needs role auditor or approver or operator or admin",
    );
    r.g.run(None, &["drift"])
        .fails(3, "reporting compliance drift needs an API key");
}

#[test]
fn wrong_options_are_one_sentence_and_exit_2() {
    let r = Ready::start();
    let run = |args: &[&str]| {
        let mut all = vec!["drift"];
        all.extend_from_slice(args);
        r.g.run(Some(&r.auditor), &all)
    };
    run(&["--from", "last week"]).fails(2, "--from `last week` is not a date (YYYY-MM-DD)");
    run(&["--from", "2026-10-02", "--to", "2026-10-01"]).fails(2, "is not before --to");
    run(&["--from", "2020-01-01", "--to", "2026-01-01"])
        .fails(2, "drift reports at most 366; narrow --from and --to");
    run(&["--format", "yaml"]).fails(2, "--format `yaml` is not text or json");
    run(&["--quiet-days", "0"]).fails(2, "--quiet-days must be at least 1");
    run(&["--extension-gap", "soon"]).fails(2, "--extension-gap: `soon` is not a duration");
    // A period no longer than the quiet window has no earlier part: said, not an error.
    let short = drift_json(
        &r.g,
        &r.auditor,
        &["--from", "2026-10-01", "--to", "2026-10-05"],
    );
    assert!(short["quiet"]["not_checked"]
        .as_str()
        .unwrap()
        .contains("no more than --quiet-days 7"));
    // A deployment without decisions is noted on standard error, in case the id is mistyped.
    let typo = run(&["--deployment", "kb-serch-v1"]).ok();
    assert!(
        typo.stderr
            .contains("no decision of deployment `kb-serch-v1`"),
        "{}",
        typo.stderr
    );
}

/// How long `gavel drift` takes over a million decisions (30 days, realistic records).
/// Measured, not asserted: `cargo test --release -p gavel-cli --test it drift::a_million -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: builds a 1M-decision ledger (about a minute), run it by hand"]
fn a_million_decisions() {
    let g = Gavel::init();
    let auditor = g.key("audrey", "auditor", None);
    let mut ledger = Backdated::open(&g);
    let total: i64 = 1_000_000;
    let built = Instant::now();
    for i in 0..total {
        // Spread evenly over 30 days; a block or finding every few decisions.
        let at = ms("2026-10-01") + i * (30 * 86_400_000 / total);
        match i % 50 {
            0 => ledger.decision(
                at,
                "kb-search-v1",
                "BLOCK",
                &["privacy.secret"],
                &["secret", "pii"],
            ),
            1..=3 => ledger.decision(at, "kb-search-v1", "ALLOW", &[], &["pii"]),
            4 => ledger.decision(at, "support-triage-v3", "BLOCK", &["approval.missing"], &[]),
            5 => ledger.decision(at, "kb-search-v1", "BLOCK", &["injection.direct"], &[]),
            _ => ledger.decision(at, "kb-search-v1", "ALLOW", &[], &[]),
        }
    }
    ledger.close();
    eprintln!(
        "built {total} decisions in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    for args in [
        vec!["--format", "json"],
        vec!["--format", "text"],
        vec!["--format", "json", "--deployment", "kb-search-v1"],
    ] {
        let mut all = vec!["drift", "--from", "2026-10-01", "--to", "2026-10-31"];
        all.extend(args.iter().copied());
        let started = Instant::now();
        let run = g.run(Some(&auditor), &all).ok();
        eprintln!(
            "gavel {}: {:.2} s ({} bytes out)",
            all.join(" "),
            started.elapsed().as_secs_f64(),
            run.stdout.len()
        );
    }
}
