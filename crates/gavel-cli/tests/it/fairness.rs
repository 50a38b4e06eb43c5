//! Fairness end to end, over real HTTP against the real binary: a scoring deployment reports
//! predictions, labels and groups; /v1/status gives each group's selection, false-positive and
//! false-negative rates exactly as computed here by hand; a group under `min_group_size` is
//! reported but not compared; the four-fifths threshold holds while the groups are close, then
//! breaches, the next decide is refused (`contract.breach.fairness`), the on-call webhook gets
//! exactly one alert and the ledger holds the breach.

use std::time::Duration;

use serde_json::{json, Value};

use super::hooks::{records, until, webhook};
use super::serve::Server;
use super::Gavel;

const DEPLOYMENT: &str = "offer-select-v1";

/// Outcomes of one group in one phase: how many of each (prediction, label).
struct Cell {
    group: &'static str,
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
}

impl Cell {
    fn rows(&self) -> Vec<(&'static str, bool, bool)> {
        let mut rows = Vec::new();
        for (n, prediction, label) in [
            (self.tp, true, true),
            (self.fp, true, false),
            (self.tn, false, false),
            (self.fn_, false, true),
        ] {
            rows.extend(std::iter::repeat_n((self.group, prediction, label), n));
        }
        rows
    }
}

/// Phase 1: A selects 18/30, B 15/30 (ratio 0.5 / 0.6 = 5/6, within the four-fifths rule), C
/// (10 outcomes, under the minimum of 30) selects nobody: compared, it would make the ratio 0.
/// Phase 2: A 12/20 more, B 0/20 more, so A 30/50 = 0.6 and B 15/50 = 0.3: ratio 0.5, a breach.
const PHASE_1: [Cell; 3] = [
    Cell {
        group: "A",
        tp: 15,
        fp: 3,
        tn: 10,
        fn_: 2,
    },
    Cell {
        group: "B",
        tp: 12,
        fp: 3,
        tn: 12,
        fn_: 3,
    },
    Cell {
        group: "C",
        tp: 0,
        fp: 0,
        tn: 7,
        fn_: 3,
    },
];
const PHASE_2: [Cell; 2] = [
    Cell {
        group: "A",
        tp: 9,
        fp: 3,
        tn: 6,
        fn_: 2,
    },
    Cell {
        group: "B",
        tp: 0,
        fp: 0,
        tn: 18,
        fn_: 2,
    },
];

/// Rows of a phase, the groups interleaved.
fn interleaved(cells: &[Cell]) -> Vec<(&'static str, bool, bool)> {
    let lists: Vec<_> = cells.iter().map(Cell::rows).collect();
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| lists.iter().filter_map(move |l| l.get(i).copied()))
        .collect()
}

fn deployment(status: &Value) -> Value {
    status["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["deployment"] == DEPLOYMENT))
        .cloned()
        .unwrap_or(Value::Null)
}

fn group<'a>(fairness: &'a Value, name: &str) -> &'a Value {
    fairness["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == name))
        .unwrap_or_else(|| panic!("no group {name}: {fairness:#}"))
}

#[track_caller]
fn close(value: &Value, expected: f64) {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"));
    assert!((v - expected).abs() < 1e-12, "{v} but {expected} by hand");
}

/// The status once it has counted `n` outcomes (rollups are written once a second).
fn status_with(s: &Server, auditor: &str, n: u64) -> Value {
    let mut d = Value::Null;
    let counted = until(Duration::from_secs(15), || {
        d = deployment(&s.request("GET", "/v1/status", Some(auditor), None).json());
        d["signals"]["fairness"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().filter_map(|g| g["n"].as_u64()).sum::<u64>() == n)
    });
    assert!(counted, "the status never counted {n} outcomes: {d:#}");
    d
}

fn fairness_check(d: &Value) -> Value {
    d["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["threshold"] == "fairness"))
        .cloned()
        .unwrap_or_else(|| panic!("no fairness check: {d:#}"))
}

#[test]
fn four_fifths_rule_breaches_on_exact_group_rates_and_alerts_once() {
    let (hook, alerts) = webhook();
    let g = Gavel::init();
    // A scoring deployment (which customers get a pre-approved loan offer: a selection) in a
    // limited-tier use case paging `hook`, a long window with groups of at least 30, and no
    // per-principal request budget in the way.
    let yaml = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
    let edited = yaml
        .replacen("\nuse_cases:\n", &format!("\nuse_cases:\n  loan-offers:\n    domain: marketing\n    owner: lena@acme.example\n    oncall: {{ webhook: \"{hook}\", runbook: \"https://wiki.acme.example/runbooks/offers\" }}\n    population: \"Retail customers with a current account\"\n    data_classes: [pii]\n"), 1)
        .replacen("\ndeployments:\n", &format!("\ndeployments:\n  {DEPLOYMENT}:\n    use_case: loan-offers\n    endpoint: local-llama\n    model: {{ name: llama-3.1-8b-instruct, snapshot: llama-3.1-8b-instruct-q8-2024-07 }}\n"), 1)
        .replace("window: 1m, requests: 120", "window: 1m, requests: 100000")
        .replace("monitoring:  { window: 5m, bucket: 10s, min_samples: 20, drift_bins: 10, drift_min_samples: 50, min_group_size: 30,", "monitoring:  { window: 10m, bucket: 1s, min_samples: 20, drift_bins: 10, drift_min_samples: 50, min_group_size: 30,");
    for edit in [
        "loan-offers:",
        "use_case: loan-offers",
        "requests: 100000",
        "window: 10m, bucket: 1s",
    ] {
        assert_eq!(
            edited.matches(edit).count(),
            1,
            "the example contract changed: {edit}"
        );
    }
    std::fs::write(g.path("gavel.yaml"), edited).unwrap();
    std::fs::write(g.path("offers-eval.jsonl"), "{\"case\": 1}\n").unwrap();
    let operator = g.key("olga", "operator", None);
    let risk = g.key("rita", "approver", Some("risk"));
    let service = g.key("svc-offers", "service", None);
    let auditor = g.key("audrey", "auditor", None);
    g.run(Some(&operator), &["apply"]).ok();
    g.run(
        Some(&risk),
        &[
            "approve",
            DEPLOYMENT,
            "--population",
            "Retail customers with a current account",
            "--expires",
            "30d",
            "--on-breach",
            "cooldown:10m",
            "--threshold",
            "fairness=0.8",
            "--evidence",
            "eval=offers-eval.jsonl",
        ],
    )
    .ok();
    let s = Server::start(&g, &operator, &[]);

    // Every decision first (a breach refuses decisions), then the outcomes phase by phase.
    let phase_1 = interleaved(&PHASE_1);
    let phase_2 = interleaved(&PHASE_2);
    let task = json!({ "deployment": DEPLOYMENT, "action": { "type": "task" } });
    let ids: Vec<String> = (0..phase_1.len() + phase_2.len())
        .map(|_| {
            let r = s.request("POST", "/v1/decide", Some(&service), Some(&task));
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["verdict"], "ALLOW", "{}", r.body);
            r.json()["decision_id"].as_str().unwrap().to_string()
        })
        .collect();
    let report = |id: &str, (group, prediction, label): (&str, bool, bool)| {
        let outcome = json!({ "decision_id": id, "deployment": DEPLOYMENT,
            "usage": { "prompt_tokens": 0, "completion_tokens": 0 },
            "prediction": prediction, "label": u8::from(label), "group": group });
        let r = s.request("POST", "/v1/outcome", Some(&service), Some(&outcome));
        assert_eq!(r.status, 200, "{}", r.body);
    };
    for (id, row) in ids.iter().zip(&phase_1) {
        report(id, *row);
    }

    // Phase 1: A 18/30 = 0.6, B 15/30 = 0.5, C 0/10 reported but not compared: ratio 5/6.
    let d = status_with(&s, &auditor, phase_1.len() as u64);
    let f = &d["signals"]["fairness"];
    close(&f["demographic_parity_ratio"], 0.5 / 0.6);
    assert_eq!(group(f, "C")["compared"], false, "{f:#}");
    assert_eq!(group(f, "C")["n"], 10);
    let check = fairness_check(&d);
    assert_eq!(check["state"], "within", "{check:#}");
    close(&check["value"], 0.5 / 0.6);
    assert_eq!(d["state"], "serving", "{d:#}");
    std::thread::sleep(Duration::from_millis(1200)); // one more check after the last outcome
    assert!(alerts.lock().unwrap().is_empty(), "no alert while within");
    assert!(records(&s, &auditor, "breach").is_empty());

    // Phase 2: B stops being selected.
    for (id, row) in ids[phase_1.len()..].iter().zip(&phase_2) {
        report(id, *row);
    }
    let d = status_with(&s, &auditor, (phase_1.len() + phase_2.len()) as u64);
    let f = &d["signals"]["fairness"];
    // By hand, over both phases:
    // A: n 50, selected 30, TP 24, FP 6, TN 16, FN 4.
    // B: n 50, selected 15, TP 12, FP 3, TN 30, FN 5.
    // C: n 10, selected 0, TP 0, FP 0, TN 7, FN 3.
    for (name, n, selection, fpr, fnr, compared) in [
        ("A", 50, 30.0 / 50.0, 6.0 / 22.0, 4.0 / 28.0, true),
        ("B", 50, 15.0 / 50.0, 3.0 / 33.0, 5.0 / 17.0, true),
        ("C", 10, 0.0, 0.0, 3.0 / 3.0, false),
    ] {
        let row = group(f, name);
        assert_eq!(row["n"], n, "{name}: {row}");
        close(&row["selection_rate"], selection);
        close(&row["false_positive_rate"], fpr);
        close(&row["false_negative_rate"], fnr);
        assert_eq!(row["compared"], compared, "{name}: {row}");
    }
    assert_eq!(f["groups"].as_array().map(Vec::len), Some(3), "{f:#}");
    close(&f["demographic_parity_ratio"], 0.3 / 0.6);
    close(&f["demographic_parity_difference"], 0.6 - 0.3);
    close(
        &f["equal_opportunity_difference"],
        24.0 / 28.0 - 12.0 / 17.0,
    );
    let check = fairness_check(&d);
    assert_eq!(check["state"], "breached", "{check:#}");
    assert_eq!(check["samples"], 100, "A and B only: {check:#}");

    // The breach is in force: the next decide is COOLDOWN contract.breach.fairness, 503.
    let mut refused = None;
    assert!(
        until(Duration::from_secs(15), || {
            let r = s.request("POST", "/v1/decide", Some(&service), Some(&task));
            let hit = r.status != 200;
            refused = Some(r);
            hit
        }),
        "still allowed after the breach"
    );
    let refused = refused.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    let decision = refused.json();
    assert_eq!(decision["verdict"], "COOLDOWN", "{decision:#}");
    assert_eq!(
        decision["reasons"][0]["code"], "contract.breach.fairness",
        "{decision:#}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((590..=600).contains(&retry), "the 10m cooldown: {retry}");
    assert_eq!(
        deployment(&s.request("GET", "/v1/status", Some(&auditor), None).json())["state"],
        "cooldown"
    );

    // Exactly one alert, naming what the on-call needs.
    assert!(until(Duration::from_secs(15), || !alerts
        .lock()
        .unwrap()
        .is_empty()));
    std::thread::sleep(Duration::from_millis(2200)); // two more checks: no second alert
    let all = alerts.lock().unwrap().clone();
    assert_eq!(all.len(), 1, "{all:#?}");
    let alert = &all[0];
    assert_eq!(alert["deployment"], DEPLOYMENT);
    assert_eq!(alert["signal"], "fairness");
    assert_eq!(alert["threshold"], "fairness");
    assert_eq!(alert["limit"], 0.8);
    assert!(alert["value"].as_f64().unwrap() < 0.8, "{alert:#}");
    assert_eq!(alert["approved_by"], json!(["rita"]));
    assert_eq!(alert["owner"], "lena@acme.example");
    assert_eq!(
        alert["runbook"],
        "https://wiki.acme.example/runbooks/offers"
    );

    // The ledger holds the breach and the alert's delivery.
    let breaches = records(&s, &auditor, "breach");
    assert_eq!(breaches.len(), 1, "{breaches:#?}");
    assert_eq!(breaches[0]["id"], alert["breach_id"]);
    assert_eq!(breaches[0]["body"]["deployment"], DEPLOYMENT);
    assert_eq!(breaches[0]["body"]["signal"], "fairness");
    assert!(until(Duration::from_secs(15), || {
        records(&s, &auditor, "admin")
            .iter()
            .any(|r| r["body"]["action"] == "alert_delivered")
    }));
    s.stop();
}
