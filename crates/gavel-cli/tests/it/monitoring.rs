//! Monitoring end to end, over real HTTP against the real binary: a deployment drifts, the
//! breach is detected within the window, the verdict changes at once, the on-call webhook gets
//! exactly one alert, the ledger has the breach and the recovery, and recovery follows the
//! signal's return.

use std::time::Duration;

use serde_json::{json, Value};

use super::hooks::{failing_webhook, records, until, webhook};
use super::serve::Server;
use super::{approve_kb, kb_request, Ready};

/// The example with a short window, kb-search-v1 paging `hook`, no per-principal request
/// budget in the way, and an approval with drift thresholds and a 3 s cooldown on breach.
fn setup(hook: &str) -> Ready {
    Ready::start_approving(
        |yaml| {
            yaml.replacen(
                "oncall: { webhook: \"https://hooks.acme.example/pager/platform\" }",
                &format!("oncall: {{ webhook: \"{hook}\", runbook: \"https://wiki.acme.example/runbooks/kb\" }}"),
                1,
            )
            .replace("window: 1m, requests: 120", "window: 1m, requests: 100000")
            .replace("monitoring:  { window: 5m, bucket: 10s, min_samples: 20, drift_bins: 10, drift_min_samples: 50,", "monitoring:  { window: 30s, bucket: 1s, min_samples: 20, drift_bins: 10, drift_min_samples: 30,")
        },
        &[
            approve_kb("cooldown:3s"),
            vec!["--threshold", "drift_js=0.3", "--threshold", "drift=1.0"],
        ]
        .concat(),
    )
}

/// A decision and its outcome with `score` as a declared feature; the decision's HTTP status.
fn served(s: &Server, key: &str, score: f64) -> u16 {
    let decided = s.request("POST", "/v1/decide", Some(key), Some(&kb_request()));
    if decided.status != 200 {
        return decided.status;
    }
    let id = decided.json()["decision_id"].as_str().unwrap().to_string();
    let outcome = json!({ "decision_id": id, "deployment": "kb-search-v1",
        "usage": { "prompt_tokens": 20, "completion_tokens": 5 },
        "latency_ms": 12.5, "success": true, "features": { "score": score } });
    let reported = s.request("POST", "/v1/outcome", Some(key), Some(&outcome));
    assert_eq!(reported.status, 200, "{}", reported.body);
    200
}

/// Scores spread evenly over [0, 1), as the baseline; shifted ones sit in [0.8, 1.0).
fn in_distribution(i: usize) -> f64 {
    ((i * 37) % 100) as f64 / 100.0
}

/// Records 300 in-distribution scores as kb-search-v1's baseline, as the risk approver.
fn record_baseline(s: &Server, t: &Ready) -> super::serve::Reply {
    let rows: Vec<Value> = (0..300)
        .map(|i| json!({ "score": in_distribution(i) }))
        .collect();
    let recorded = s.request(
        "POST",
        "/v1/admin/baselines",
        Some(&t.risk),
        Some(&json!({ "deployment": "kb-search-v1", "rows": rows, "label": "evals/kb.jsonl" })),
    );
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    recorded
}

#[test]
fn drift_breaches_cools_down_alerts_once_and_recovers() {
    let (hook, alerts) = webhook();
    let t = setup(&hook);
    let s = Server::start(&t.g, &t.operator, &[]);

    let recorded = record_baseline(&s, &t);
    assert_eq!(recorded.json()["values_per_feature"]["score"], 300);
    let replaced = s.request(
        "POST",
        "/v1/admin/baselines",
        Some(&t.risk),
        Some(&json!({ "deployment": "kb-search-v1", "rows": [{ "score": 1.0 }] })),
    );
    assert_eq!(
        replaced.status, 400,
        "a baseline is captured once per approval: {}",
        replaced.body
    );
    assert!(
        replaced.body.contains("already has its baseline"),
        "{}",
        replaced.body
    );
    let refused = s.request(
        "POST",
        "/v1/admin/baselines",
        Some(&t.service),
        Some(&json!({ "deployment": "kb-search-v1", "rows": [] })),
    );
    assert_eq!(refused.status, 403, "a service key records no baseline");

    // In distribution: served, and the status shows drift within its threshold.
    for i in 0..40 {
        assert_eq!(served(&s, &t.service, in_distribution(i)), 200);
    }
    let mut status = Value::Null;
    assert!(
        until(Duration::from_secs(15), || {
            status = s
                .request("GET", "/v1/status", Some(&t.auditor), None)
                .json();
            let kb = kb(&status);
            kb["checks"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["threshold"] == "drift_js" && c["state"] == "within")
            })
        }),
        "{status:#}"
    );
    assert_eq!(kb(&status)["state"], "serving");
    assert!(alerts.lock().unwrap().is_empty());

    // Drift: the scores move to the top of the range. Within the window the breach is found
    // and the very next request is refused (COOLDOWN, 503).
    for i in 0..60 {
        served(&s, &t.service, 0.8 + in_distribution(i) / 5.0);
    }
    let mut refused = None;
    assert!(
        until(Duration::from_secs(15), || {
            let r = s.request("POST", "/v1/decide", Some(&t.service), Some(&kb_request()));
            let hit = r.status == 503;
            refused = Some(r);
            hit
        }),
        "no breach while the drifted outcomes were in the window: {:?}",
        refused.map(|r| r.body)
    );
    let refused = refused.unwrap();
    let reason = &refused.json()["reasons"][0];
    assert_eq!(reason["code"], "contract.breach.drift", "{}", refused.body);
    assert!(refused.header("retry-after").is_some());

    // Exactly one alert, with what the on-call needs.
    assert!(until(Duration::from_secs(15), || !alerts
        .lock()
        .unwrap()
        .is_empty()));
    let alert = alerts.lock().unwrap()[0].clone();
    assert_eq!(alert["deployment"], "kb-search-v1");
    assert_eq!(alert["signal"], "drift");
    assert!(
        ["drift_js", "drift"].contains(&alert["threshold"].as_str().unwrap()),
        "{alert:#}"
    );
    assert!(alert["value"].as_f64().unwrap() > alert["limit"].as_f64().unwrap());
    assert_eq!(alert["window"], "30s");
    assert_eq!(alert["approved_by"], json!(["rita"]));
    assert_eq!(alert["owner"], "dana@acme.example");
    assert_eq!(alert["runbook"], "https://wiki.acme.example/runbooks/kb");
    assert!(alert["since"].is_string());
    assert!(!alert["example_decision_ids"].as_array().unwrap().is_empty());
    let breach_id = alert["breach_id"].as_str().unwrap().to_string();
    let metrics = s.request("GET", "/metrics", None, None).body;
    assert!(
        metrics.contains("gavel_signal{deployment=\"kb-search-v1\",signal=\"drift_js\"}"),
        "per-deployment signal gauges: {metrics}"
    );
    assert!(metrics.contains("gavel_breach_events_total{deployment=\"kb-search-v1\",signal=\"drift\",event=\"started\"} 1"));

    // After the 3 s cooldown, requests probe; in-distribution probes recover the deployment.
    let mut probes = 0;
    let recovered = until(Duration::from_secs(20), || {
        if served(&s, &t.service, in_distribution(probes)) == 200 {
            probes += 1;
        }
        !records(&s, &t.auditor, "recovery").is_empty()
    });
    assert!(recovered, "no recovery after {probes} probes");
    assert_eq!(served(&s, &t.service, 0.5), 200, "serving again");

    let breaches = records(&s, &t.auditor, "breach");
    assert_eq!(breaches.len(), 1, "{breaches:#?}");
    assert_eq!(breaches[0]["id"], breach_id);
    let recovery = &records(&s, &t.auditor, "recovery")[0];
    assert_eq!(recovery["body"]["breach_id"], breach_id);
    // Delivery is recorded, with the webhook's host only (its path carries a token).
    assert!(until(Duration::from_secs(15), || {
        records(&s, &t.auditor, "admin")
            .iter()
            .any(|r| r["body"]["action"] == "alert_delivered")
    }));
    let admin = records(&s, &t.auditor, "admin");
    assert!(!serde_json::to_string(&admin)
        .unwrap()
        .contains("secret-token"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        alerts.lock().unwrap().len(),
        1,
        "one alert per breach, none for the recovery"
    );
    assert_eq!(
        kb(&s
            .request("GET", "/v1/status", Some(&t.auditor), None)
            .json())["state"],
        "serving"
    );
    s.stop();

    // The signals survive a restart: the command reads the stored buckets, and a new gateway,
    // before any traffic of its own, reads its predecessor's back into its live window (the
    // window moves on meanwhile, so fewer of them are still in it).
    let status = t.g.run(Some(&t.auditor), &["status", "--json"]).ok();
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let decisions = kb(&status)["signals"]["decisions"].as_u64().unwrap();
    assert!(decisions > 0, "{status:#}");
    let again = Server::start(&t.g, &t.operator, &[]);
    let mut live = Value::Null;
    assert!(
        until(Duration::from_secs(15), || {
            live = again
                .request("GET", "/v1/status", Some(&t.auditor), None)
                .json();
            kb(&live)["signals"]["decisions"]
                .as_u64()
                .is_some_and(|n| n > 0 && n <= decisions)
        }),
        "the restarted gateway's window: {live:#}"
    );
}

fn kb(status: &Value) -> &Value {
    status["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["deployment"] == "kb-search-v1"))
        .unwrap_or(&Value::Null)
}

#[test]
fn outcome_and_feedback_refuse_bad_reports_and_other_principals() {
    let r = super::Ready::start();
    let other = r.g.key("svc-other", "service", None);
    let s = Server::start(&r.g, &r.operator, &[]);
    let decided = s.request("POST", "/v1/decide", Some(&r.service), Some(&kb_request()));
    let id = decided.json()["decision_id"].as_str().unwrap().to_string();
    let outcome = |extra: Value| {
        let mut body = json!({ "decision_id": id, "deployment": "kb-search-v1",
            "usage": { "prompt_tokens": 1, "completion_tokens": 1 } });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (bad, says) in [
        (json!({ "score": 2 }), "`score`"),
        (json!({ "prediction": "maybe" }), "`prediction`"),
        (
            json!({ "features": { "x": { "nested": 1 } } }),
            "feature `x`",
        ),
        (json!({ "override": true }), "unknown field"),
        // Reports are recorded as they are: no secret in a group or a feature.
        (
            json!({ "features": { "note": format!("AKIA{}", "QWERTYUIOPASDFGH") } }),
            "looks like a secret",
        ),
        (
            json!({ "prediction": 1, "group": format!("AKIA{}", "QWERTYUIOPASDFGH") }),
            "looks like a secret",
        ),
    ] {
        let reply = s.request(
            "POST",
            "/v1/outcome",
            Some(&r.service),
            Some(&outcome(bad.clone())),
        );
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.body.contains(says), "{bad}: {}", reply.body);
    }
    let feedback =
        |body: Value, key: &str| s.request("POST", "/v1/feedback", Some(key), Some(&body));
    let run_fields = feedback(json!({ "decision_id": id, "latency_ms": 5 }), &r.service);
    assert_eq!(run_fields.status, 400, "{}", run_fields.body);
    let empty = feedback(json!({ "decision_id": id }), &r.service);
    assert_eq!(empty.status, 400, "{}", empty.body);
    let foreign = feedback(json!({ "decision_id": id, "score": 0.5 }), &other);
    assert_eq!(
        foreign.status, 403,
        "another principal's decision: {}",
        foreign.body
    );
    let fine = feedback(
        json!({ "decision_id": id, "score": 0.5, "label": 1, "prediction": 1, "group": "a" }),
        &r.service,
    );
    assert_eq!(fine.status, 200, "{}", fine.body);
    let settled = s.request(
        "POST",
        "/v1/outcome",
        Some(&r.service),
        Some(&outcome(json!({ "latency_ms": 3.5 }))),
    );
    assert_eq!(settled.status, 200, "{}", settled.body);
    // Once each: a second outcome or feedback is refused and leaves no record.
    let again = s.request(
        "POST",
        "/v1/outcome",
        Some(&r.service),
        Some(&outcome(json!({}))),
    );
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("no open reservation"), "{}", again.body);
    let twice = feedback(json!({ "decision_id": id, "score": 0.9 }), &r.service);
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert!(
        twice.body.contains("already has its feedback"),
        "{}",
        twice.body
    );
    // A judgement (score, prediction, label, group) counts once, with the outcome or the feedback.
    let second = s.request("POST", "/v1/decide", Some(&r.service), Some(&kb_request()));
    let second = second.json()["decision_id"].as_str().unwrap().to_string();
    let judged = s.request("POST", "/v1/outcome", Some(&r.service), Some(&json!({ "decision_id": second,
        "deployment": "kb-search-v1", "usage": { "prompt_tokens": 1, "completion_tokens": 1 }, "score": 0.2 })));
    assert_eq!(judged.status, 200, "{}", judged.body);
    let rejudged = feedback(json!({ "decision_id": second, "score": 0.9 }), &r.service);
    assert_eq!(rejudged.status, 400, "{}", rejudged.body);
    assert!(
        rejudged.body.contains("already has a score"),
        "{}",
        rejudged.body
    );
    let features_only = feedback(
        json!({ "decision_id": second, "features": { "x": 1 } }),
        &r.service,
    );
    assert_eq!(
        features_only.status, 200,
        "features alone judge nothing: {}",
        features_only.body
    );
    let recorded = s.request(
        "GET",
        "/v1/audit/records?kind=outcome&deployment=kb-search-v1",
        Some(&r.auditor),
        None,
    );
    assert_eq!(
        recorded.body.lines().count(),
        4,
        "two outcomes and two feedbacks: {} (the last feedback said {})",
        recorded.body,
        features_only.body
    );
    assert!(
        recorded.body.contains("\"latency_ms\":3.5"),
        "the report is in the outcome record: {}",
        recorded.body
    );
}

/// An on-call webhook kept out of the contract (`${env:NAME}`) is read from the gateway's
/// environment: unset, the alert is not sent and the failure names the variable (never a URL);
/// set at the next start, the alert goes out.
#[test]
fn a_webhook_kept_in_the_environment_is_read_from_it() {
    const VARIABLE: &str = "GAVEL_TEST_KB_PAGER";
    let (hook, alerts) = webhook();
    let t = setup(&format!("${{env:{VARIABLE}}}"));
    let s = Server::start(&t.g, &t.operator, &[]);
    record_baseline(&s, &t);
    for i in 0..60 {
        served(&s, &t.service, 0.8 + in_distribution(i) / 5.0);
    }
    let failed = |s: &Server| {
        records(s, &t.auditor, "admin")
            .into_iter()
            .find(|r| r["body"]["action"] == "alert_failed")
    };
    let mut failure = None;
    assert!(
        until(Duration::from_secs(15), || {
            failure = failed(&s);
            failure.is_some()
        }),
        "no failed alert recorded"
    );
    let failure = failure.unwrap();
    assert_eq!(
        failure["body"]["last_error"],
        format!("the environment variable {VARIABLE} is not set"),
        "{failure:#}"
    );
    assert_eq!(
        failure["body"]["webhook_origin"],
        format!("${{env:{VARIABLE}}}")
    );
    assert_eq!(failure["body"]["attempts"], 0);
    assert!(alerts.lock().unwrap().is_empty());
    s.stop();

    let again = Server::start_with_env(&t.g, &t.operator, &[], &[(VARIABLE, &hook)]);
    assert!(
        until(Duration::from_secs(15), || !alerts
            .lock()
            .unwrap()
            .is_empty()),
        "the alert was not sent with the variable set"
    );
    assert_eq!(
        alerts.lock().unwrap()[0]["breach_id"],
        failure["body"]["breach_id"]
    );
    again.stop();
}

/// An alert the gateway could not deliver before it stopped is sent when it starts again, and
/// its delivery is recorded: the on-call is paged once the webhook answers.
#[test]
fn an_undelivered_alert_is_sent_after_a_restart() {
    let (hook, alerts, failing) = failing_webhook(true);
    let t = setup(&hook);
    let s = Server::start(&t.g, &t.operator, &[]);
    record_baseline(&s, &t);
    for i in 0..60 {
        served(&s, &t.service, 0.8 + in_distribution(i) / 5.0);
    }
    assert!(
        until(Duration::from_secs(15), || !alerts
            .lock()
            .unwrap()
            .is_empty()),
        "no alert attempt"
    );
    let breach_id = alerts.lock().unwrap()[0]["breach_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.stop();
    let delivered = |s: &Server| {
        records(s, &t.auditor, "admin").iter().any(|r| {
            r["body"]["action"] == "alert_delivered" && r["body"]["breach_id"] == breach_id.as_str()
        })
    };

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = Server::start(&t.g, &t.operator, &[]);
    assert!(
        until(Duration::from_secs(15), || delivered(&again)),
        "the alert was not sent again"
    );
    let received = alerts.lock().unwrap().clone();
    assert!(
        received.len() >= 2,
        "a failed attempt, then the delivery: {received:#?}"
    );
    assert!(
        received
            .iter()
            .all(|a| a["breach_id"] == breach_id.as_str()),
        "{received:#?}"
    );
    // Delivered once: the next start finds the delivery in the ledger and pages no more.
    again.stop();
    let count = received.len();
    let third = Server::start(&t.g, &t.operator, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        alerts.lock().unwrap().len(),
        count,
        "paged again although delivered"
    );
    third.stop();
}

/// The baseline decides what drift is measured against: only a signer of the approval records
/// it, never whoever applied the binding, and one request of two racing records it.
#[test]
fn a_baseline_is_recorded_once_by_a_signer_of_its_approval() {
    let r = Ready::start();
    let g = &r.g;
    let rows: String = (0..50)
        .map(|i| format!("{{\"score\": {}}}\n", f64::from(i) / 50.0))
        .collect();
    std::fs::write(g.path("rows.jsonl"), rows).unwrap();
    let rows_path = g.path("rows.jsonl");
    let baseline = |key: &str| {
        g.run(
            Some(key),
            &[
                "baseline",
                "kb-search-v1",
                "--file",
                rows_path.to_str().unwrap(),
            ],
        )
    };
    let records = || {
        g.run(Some(&r.auditor), &["audit", "export"])
            .ok()
            .stdout
            .matches("baseline_recorded")
            .count()
    };
    // Emil is an approver who did not sign kb-search-v1's approval (Rita did).
    baseline(&r.engineering).fails(1, "only a signer of approval");
    // Olga applied the binding; an approver's key of hers is barred as her signature would be.
    let olga_approver = g.key("olga", "approver", Some("risk"));
    baseline(&olga_approver).fails(1, "segregation of duties");
    assert_eq!(records(), 0, "the refused requests recorded nothing");
    // Recorded but not stored (a storage failure): the claim is given back, so it can be
    // recorded again rather than never.
    let db = rusqlite::Connection::open(g.path("gavel.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_baselines BEFORE INSERT ON baselines BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    baseline(&r.risk).fails(4, "disk full");
    assert_eq!(records(), 1);
    db.execute_batch("DROP TRIGGER no_baselines").unwrap();
    let claims = || -> i64 {
        db.query_row(
            "SELECT count(*) FROM report_claims WHERE key LIKE 'baseline:%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(claims(), 0, "the failed request gave its claim back");
    // Another request holds the approval's baseline claim: refused, nothing recorded.
    let approval: String = db
        .query_row("SELECT id FROM approvals", [], |row| row.get(0))
        .unwrap();
    db.execute(
        "INSERT INTO report_claims (key, by_id) VALUES (?1, '99999999999999')",
        [format!("baseline:{approval}")],
    )
    .unwrap();
    baseline(&r.risk).fails(1, "being recorded by another request");
    assert_eq!(records(), 1, "the refused request recorded nothing");
    // A claim whose request died long ago is taken over, and given back once recorded.
    db.execute("UPDATE report_claims SET by_id = '1'", [])
        .unwrap();
    baseline(&r.risk).ok();
    assert_eq!((records(), claims()), (2, 0));
    baseline(&r.risk).fails(1, "already has its baseline");
    assert_eq!(records(), 2);
}
