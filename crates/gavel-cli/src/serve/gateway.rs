//! The gateway's shared state and the steps every route takes: authenticate, read a bounded
//! body, decide and record durably before answering.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use gavel_engine::{
    Amounts, DecideInput, DecideRequest, Decision, Engine, Obligation, Reason, ReasonCode,
    RuntimeState, Usage, Verdict,
};
use gavel_ledger::{Receipt, RecordKind};
use gavel_ledger_sqlite::SqliteLedgerSink;
use gavel_scan::Scanners;
use gavel_store::{Batch, KeyRecord, Role, SqliteStore};

use super::decider::Answered;
use super::error::{ApiError, ApiResult};
use super::metrics;
use crate::cmd::decide::{capture_payload, withdrawn};
use crate::context::{known_key, new_id, now, role_allowed};
use crate::failure::{Failure, EXIT_AUTH};
use crate::ledger::Ledger;

/// What a client controls, bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    /// How long a decision may take, durable record included; past it, the answer is BLOCK
    /// with `governance.unavailable` (see [`Gateway::decide`]).
    pub decision_timeout: Duration,
}

/// How long to wait for an upstream.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// Until the response head (and, for streams, between chunks).
    pub first_byte: Duration,
    pub total: Duration,
}

pub struct Gateway {
    /// Makes every decision, in batches that share a store transaction.
    pub decider: super::decider::Decider,
    /// Signals per deployment, checked against thresholds once a second.
    pub monitor: super::monitor::Monitor,
    /// The engine under the contract in force; swapped whole when a new version is loaded.
    pub engine: ArcSwap<Engine>,
    pub store: SqliteStore,
    pub ledger: Ledger,
    /// A second connection for ledger queries, proofs and captured payloads.
    pub ledger_reader: Mutex<SqliteLedgerSink>,
    /// Proofs for the admin API, and the key its proofs and verifications check the ledger's
    /// signatures with (loaded at start, as the ledger's writer loads it).
    pub prover: gavel_ledger::Prover,
    /// Output scanners (secrets and PII), shared by every stream.
    pub output_scanners: Arc<Scanners>,
    pub upstreams: super::upstream::Upstreams,
    pub limits: Limits,
    /// The key the gateway was started with: contract reloads are applied in its principal's
    /// name, and only while it is still an operator's or admin's active key.
    pub operator: KeyRecord,
    pub contract_path: PathBuf,
    pub db_path: PathBuf,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Set once the contract and the ledger are loaded.
    pub ready: AtomicBool,
    /// The last verification of the ledger this gateway ran, for the dashboard.
    pub last_verification: Mutex<Option<super::dashboard::Verification>>,
    /// Held while an evidence pack is built: one at a time.
    pub building_evidence: Mutex<()>,
    /// The runtime the gateway serves on, for work started from the decider's thread.
    pub runtime: tokio::runtime::Handle,
    /// Decisions of calls through the proxy, from their ALLOW until the decider has committed
    /// their settlement with what the upstream reported, so that each gets exactly one
    /// outcome, a call cut at shutdown included ([`Gateway::close_open_calls`]). Nobody else
    /// reports their outcome: their ledger records say the gateway settles them
    /// (`settle_outcome` refuses). One whose settlement failed stays: its reservation stays
    /// charged at the estimate (the store keeps an unsettled reservation for a day after its
    /// claims lapse), and so it should.
    pub open_calls: Mutex<HashMap<String, Open>>,
    /// Decisions given up at the deadline whose withdrawal waits for their record
    /// ([`Gateway::abandon`]); finished at shutdown if it comes first.
    pub abandoning: Mutex<HashMap<String, Abandoned>>,
}

/// What happened after an ALLOW, waiting to be settled and recorded.
pub struct Finished {
    /// The contract the decision was made under, which prices and settles it (a reload may
    /// have dropped its deployment since).
    engine: Arc<Engine>,
    decision_id: String,
    principal: String,
    ran_on: String,
    usage: Usage,
    details: Value,
}

/// The request metadata key under which the proxy names the decision whose failed upstream
/// call a fallback deployment's decision stands in for; the decider records it
/// ([`gavel_engine::DecisionRecord::fallback_for`]).
pub const FALLBACK_FOR: &str = "fallback_for";

/// Why a decision given up at its deadline ran nothing (its caller was refused).
const DEADLINE_PASSED: &str =
    "no durable decision by the deadline: the caller was refused with governance.unavailable";

/// An allowed call through the proxy, from its ALLOW until its settlement is committed.
pub struct Open {
    decided: Abandoned,
    /// Whether the upstream has been called ([`Gateway::calling`]).
    called: bool,
    /// Whether its outcome is on its way to the decider.
    outcome_queued: bool,
}

/// A decision with what withdrawing it needs, should it be abandoned: given up at its
/// deadline, or cut at shutdown before its call.
#[derive(Clone)]
pub struct Abandoned {
    engine: Arc<Engine>,
    request: Arc<DecideRequest>,
    decision: Decision,
}

/// The deployment the decision runs on: its route obligation's, else its own.
pub fn route_of(decision: &Decision) -> String {
    decision
        .obligations
        .iter()
        .find_map(|o| match o {
            Obligation::Route { deployment, .. } => Some(deployment.clone()),
            _ => None,
        })
        .unwrap_or_else(|| decision.deployment.clone())
}

/// The usage a call is charged when the upstream may have done the work but did not say what
/// it used (cut at shutdown, timed out, broken off after it was sent): all that was reserved,
/// so that a budget is never spent by calls that fail late.
pub fn as_reserved(decision: &Decision) -> Usage {
    decision
        .estimate
        .as_ref()
        .map_or_else(Usage::default, |e| Usage {
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.max_tokens,
            tool_calls: e.tool_calls,
        })
}

/// A decision the ledger holds (or, if it could not take it, the fail-closed refusal).
pub struct Ruling {
    pub decision: Decision,
    pub receipt: Option<Receipt>,
    /// The contract in force when the decision was made: what an ALLOW executes (deployment,
    /// endpoint, model), whatever a reload has put in force since, so that the call is the
    /// binding the decision and its record name.
    pub engine: Arc<Engine>,
}

impl Ruling {
    /// The decision as callers see it: the decision JSON plus its receipt.
    pub fn shown(&self) -> Value {
        let mut shown = serde_json::to_value(&self.decision).unwrap_or_else(|_| json!({}));
        if let Some(object) = shown.as_object_mut() {
            object.remove("started_cooldown");
        }
        if let Some(receipt) = &self.receipt {
            shown["receipt"] = json!(receipt);
        }
        shown
    }
}

impl Gateway {
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// The connection for ledger queries, proofs and captured payloads.
    pub fn ledger_reader(&self) -> Result<MutexGuard<'_, SqliteLedgerSink>, Failure> {
        self.ledger_reader
            .lock()
            .map_err(|_| Failure::storage("the ledger reader is unavailable"))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The caller's key, if it is valid (else 401) and its role is allowed here (else 403).
    pub fn authorize(
        &self,
        key: Option<&str>,
        allowed: &[Role],
        action: &str,
    ) -> ApiResult<KeyRecord> {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                format!("{action} needs an API key: send it as `Authorization: Bearer <key>`"),
            ));
        };
        // An unknown key is a 401; a store that cannot answer is a 503, not a 401.
        let record = known_key(&self.store, Some(key), action).map_err(|f| {
            if f.exit_code == EXIT_AUTH {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", f.message)
            } else {
                ApiError::from(f)
            }
        })?;
        role_allowed(&record, allowed, action)
            .map_err(|f| ApiError::new(StatusCode::FORBIDDEN, "role_not_allowed", f.message))?;
        Ok(record)
    }

    /// Decides one request and waits until its record is durable. A record the ledger does not
    /// take turns the decision into BLOCK `governance.unavailable` (and gives back what it held).
    /// Its caller reports its outcome (the decide API).
    pub async fn decide(self: &Arc<Self>, request: Arc<DecideRequest>, principal: &str) -> Ruling {
        // A task of its own, so that it runs to the end even if the client goes away meanwhile:
        // a reservation the ledger refused must be given back, and the decision counted.
        let (gw, req, owner) = (self.clone(), request.clone(), principal.to_string());
        let deciding = async move { gw.decide_to_the_end(req, &owner, false).await };
        match tokio::spawn(deciding).await {
            Ok(ruling) => ruling,
            Err(e) => {
                let failure = Failure::storage(format!("the decision was lost: {e}"));
                self.refused(&self.engine(), &request, principal, failure)
            }
        }
    }

    /// [`Gateway::decide`] for a call through the proxy, whose outcome the gateway settles
    /// itself: the decider registers an ALLOW ([`Gateway::will_settle`]) as it commits it,
    /// so that from then on it ends in an outcome whatever happens, shutdown included (its
    /// ledger record says the gateway settles it, so no caller can report that outcome). Its
    /// callers already run on a task of their own to the end (the proxy's `ran_to_the_end`),
    /// so it needs none.
    pub async fn decide_for_call(
        self: &Arc<Self>,
        request: Arc<DecideRequest>,
        principal: &str,
    ) -> Ruling {
        self.clone()
            .decide_to_the_end(request, principal, true)
            .await
    }

    async fn decide_to_the_end(
        self: Arc<Self>,
        request: Arc<DecideRequest>,
        principal: &str,
        by_gateway: bool,
    ) -> Ruling {
        let started = Instant::now();
        let engine = self.engine();
        // Time running out is a refusal like any failure to decide. A decision given up before
        // the decider takes it is never made (`Job::wanted`); one given up after it is withdrawn
        // once its record lands (`abandon`).
        let timeout = self.limits.decision_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let late = || Failure::storage(format!("no durable decision within {timeout:?}"));
        let answered = self
            .decider
            .decide(
                engine.clone(),
                request.clone(),
                principal,
                by_gateway,
                deadline,
            )
            .await;
        let (decision, submitted) = match answered {
            Answered::InTime(Ok(decided)) => decided,
            Answered::InTime(Err(failure)) => {
                return self.refused(&engine, &request, principal, failure)
            }
            Answered::Late(handed_over) => {
                if let Some((decision, submitted)) = handed_over {
                    self.abandon(
                        engine.clone(),
                        request.clone(),
                        decision,
                        submitted.durable(),
                    );
                }
                return self.refused(&engine, &request, principal, late());
            }
        };
        let committing = Instant::now();
        let mut durable = Box::pin(submitted.durable());
        let durable = match tokio::time::timeout_at(deadline, &mut durable).await {
            Ok(durable) => durable,
            Err(_) => {
                self.abandon(engine.clone(), request.clone(), decision, durable);
                return self.refused(&engine, &request, principal, late());
            }
        };
        metrics::ledger_wait(committing.elapsed());
        let ruling = match durable {
            Ok(receipt) => {
                if engine.contract().policy.payload_subject.is_some() {
                    let (gw, engine, req, decision) = (
                        self.clone(),
                        engine.clone(),
                        request.clone(),
                        decision.clone(),
                    );
                    let _ =
                        tokio::task::spawn_blocking(move || gw.capture(&engine, &req, &decision))
                            .await;
                }
                Ruling {
                    decision,
                    receipt: Some(receipt),
                    engine: engine.clone(),
                }
            }
            Err(why) => {
                // Giving back the reservation writes SQLite: a blocking thread again. Off the
                // register (no outcome is to come) only there, where the withdrawal surely
                // runs: cut before, the sweep at shutdown withdraws it.
                let (gw, in_force, req) = (self.clone(), engine.clone(), request.clone());
                let withdrawing = tokio::task::spawn_blocking(move || {
                    let blocked = withdrawn(&in_force, &gw.store, &req, &decision, &why);
                    gw.forget_call(&decision.decision_id);
                    blocked
                });
                match withdrawing.await {
                    Ok(blocked) => Ruling {
                        decision: blocked,
                        receipt: None,
                        engine: engine.clone(),
                    },
                    Err(e) => {
                        let failure = Failure::storage(format!("the decision was lost: {e}"));
                        return self.refused(&engine, &request, principal, failure);
                    }
                }
            }
        };
        let known = engine
            .contract()
            .deployment(&ruling.decision.deployment)
            .is_some();
        metrics::decided(&ruling.decision, known, started.elapsed());
        self.monitor.record_decision(&ruling.decision, known);
        ruling
    }

    /// A decision its caller gave up at the deadline (answered BLOCK `governance.unavailable`):
    /// once its record lands, an ALLOW is withdrawn (its reservation and idempotency key given
    /// back: nothing ran, and a retry under the same key is decided afresh) and, if the ledger
    /// took its record, an outcome says so; a record the ledger refused is withdrawn as when
    /// that happens in time. Runs on the gateway's runtime, from any thread.
    pub fn abandon(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        request: Arc<DecideRequest>,
        decision: Decision,
        landed: impl std::future::Future<Output = Result<Receipt, Failure>> + Send + 'static,
    ) {
        let id = decision.decision_id.clone();
        // Finished here, not settled as a call.
        self.forget_call(&id);
        if let Ok(mut abandoning) = self.abandoning.lock() {
            abandoning.insert(
                id.clone(),
                Abandoned {
                    engine,
                    request,
                    decision,
                },
            );
        }
        let gw = self.clone();
        self.runtime.spawn(async move {
            let landed = landed.await;
            let finishing = gw.clone();
            let _ = tokio::task::spawn_blocking(move || {
                // Taken out only here, where the work surely runs: whoever takes it (this
                // thread, or the sweep at shutdown) finishes it, once.
                let taken = finishing
                    .abandoning
                    .lock()
                    .ok()
                    .and_then(|mut a| a.remove(&id));
                if let Some(abandoned) = taken {
                    finishing.finish_abandoned(abandoned, landed.err(), DEADLINE_PASSED);
                }
            })
            .await;
        });
    }

    /// Withdraws an abandoned decision (an ALLOW, or one whose record the ledger refused: a
    /// BLOCK or a COOLDOWN reserved nothing) and, if the ledger took its record, says so in
    /// an outcome. Writes the store: a blocking thread, or the main thread at shutdown.
    fn finish_abandoned(&self, abandoned: Abandoned, refused: Option<Failure>, why: &str) {
        let Abandoned {
            engine,
            request,
            decision,
        } = abandoned;
        if decision.verdict != Verdict::Allow && refused.is_none() {
            return;
        }
        let withdrawal = engine
            .withdraw(&self.store, &request, &decision, now())
            .map_err(|e| e.0);
        if refused.is_some() {
            return;
        }
        let said = match withdrawal {
            Ok(()) => format!("{why}; nothing ran, and the decision was withdrawn"),
            Err(e) => {
                tracing::error!(decision_id = %decision.decision_id, error = %e, "withdrawing an abandoned decision failed");
                format!("{why}; nothing ran, and withdrawing it failed ({e}), so it is settled at no usage")
            }
        };
        self.queue_outcome(
            engine,
            &decision,
            &route_of(&decision),
            &Usage::default(),
            json!({ "abandoned": said }),
        );
    }

    /// At shutdown, once no task runs any more (the runtime is stopped) and before the
    /// decider stops: every allowed call cut before its outcome gets one, charged as reserved
    /// (what the upstream used is unknown), and every abandoned decision is finished.
    pub fn close_open_calls(&self) {
        let mut cut = Vec::new();
        let mut never_called = Vec::new();
        if let Ok(mut open) = self.open_calls.lock() {
            for o in open.values_mut().filter(|o| !o.outcome_queued) {
                // Whatever a task still running would say comes too late: one outcome each.
                o.outcome_queued = true;
                let decided = o.decided.clone();
                if o.called {
                    cut.push((decided.engine, decided.decision));
                } else {
                    never_called.push(decided);
                }
            }
        }
        // Decided, never called: withdrawn like a decision given up at its deadline.
        for abandoned in never_called {
            self.finish_abandoned(
                abandoned,
                None,
                "the gateway stopped between the decision and its call",
            );
        }
        for (engine, decision) in cut {
            self.queue_outcome(
                engine,
                &decision,
                &route_of(&decision),
                &as_reserved(&decision),
                json!({ "upstream_error": "the gateway stopped before the call ended: what the upstream used is unknown, so it is charged as reserved" }),
            );
        }
        let abandoned: Vec<Abandoned> = self
            .abandoning
            .lock()
            .map(|mut a| a.drain().map(|(_, abandoned)| abandoned).collect())
            .unwrap_or_default();
        for abandoned in abandoned {
            self.finish_abandoned(abandoned, None, DEADLINE_PASSED);
        }
    }

    fn refused(
        &self,
        engine: &Arc<Engine>,
        request: &DecideRequest,
        principal: &str,
        why: Failure,
    ) -> Ruling {
        let decision = engine.refuse(
            DecideInput {
                request,
                principal,
                decision_id: "dec_unavailable".to_string(),
                now: now(),
            },
            Reason::new(ReasonCode::GovernanceUnavailable, why.message),
        );
        Ruling {
            decision,
            receipt: None,
            engine: engine.clone(),
        }
    }

    /// Stores the request's texts encrypted under the subject's key when the contract asks for
    /// payload capture. A failure is logged, not fatal: the decision is already recorded.
    fn capture(&self, engine: &Engine, request: &DecideRequest, decision: &Decision) {
        let Some(field) = &engine.contract().policy.payload_subject else {
            return;
        };
        let Ok(sink) = self.ledger_reader() else {
            return;
        };
        if let Err(e) = capture_payload(&sink, field, request, decision) {
            tracing::error!(decision_id = %decision.decision_id, error = %e.message, "payload capture failed");
        }
    }

    /// Records what happened after an ALLOW (usage, latency, output digest, findings) and
    /// settles the decision's reservation with the actual usage. Not awaited: the decision is
    /// what must be durable before acting; this follows it. The decider settles it in its next
    /// store transaction, with whatever else has queued by then.
    pub fn record_outcome(&self, decision: &Decision, ran_on: &str, usage: &Usage, details: Value) {
        let registered = self.open_calls.lock().ok().and_then(|mut open| {
            open.get_mut(&decision.decision_id).map(|o| {
                let first = !o.outcome_queued;
                o.outcome_queued = true;
                (o.decided.engine.clone(), first)
            })
        });
        match registered {
            // One outcome per call: a second would settle and record it twice.
            Some((_, false)) => {
                tracing::warn!(decision_id = %decision.decision_id, "a second outcome for one call was dropped");
            }
            Some((engine, true)) => self.queue_outcome(engine, decision, ran_on, usage, details),
            None => self.queue_outcome(self.engine(), decision, ran_on, usage, details),
        }
    }

    /// Queues an outcome to be settled under `engine` (the decision's contract) and recorded.
    fn queue_outcome(
        &self,
        engine: Arc<Engine>,
        decision: &Decision,
        ran_on: &str,
        usage: &Usage,
        details: Value,
    ) {
        self.decider.settle(Finished {
            engine,
            decision_id: decision.decision_id.clone(),
            principal: decision.principal.clone(),
            ran_on: ran_on.to_string(),
            usage: usage.clone(),
            details,
        });
    }

    /// Registers an allowed call through the proxy as one whose outcome the gateway settles
    /// itself, until its settlement is committed ([`Gateway::close_open_calls`] finishes it if
    /// it is cut).
    pub fn will_settle(
        &self,
        engine: &Arc<Engine>,
        request: &Arc<DecideRequest>,
        decision: &Decision,
    ) {
        if let Ok(mut settling) = self.open_calls.lock() {
            settling.insert(
                decision.decision_id.clone(),
                Open {
                    decided: Abandoned {
                        engine: engine.clone(),
                        request: request.clone(),
                        decision: decision.clone(),
                    },
                    called: false,
                    outcome_queued: false,
                },
            );
        }
    }

    /// The call's upstream is about to be called: cut at shutdown from here on, it is charged
    /// as reserved, not withdrawn.
    pub fn calling(&self, decision: &Decision) {
        if let Ok(mut settling) = self.open_calls.lock() {
            if let Some(open) = settling.get_mut(&decision.decision_id) {
                open.called = true;
            }
        }
    }

    /// Takes a call off the register: it is withdrawn or abandoned, and no outcome of a call
    /// will come.
    fn forget_call(&self, decision_id: &str) {
        if let Ok(mut settling) = self.open_calls.lock() {
            settling.remove(decision_id);
        }
    }

    /// These settlements are committed: no longer the gateway's to settle.
    pub fn settled(&self, decision_ids: &[String]) {
        if let Ok(mut settling) = self.open_calls.lock() {
            for id in decision_ids {
                settling.remove(id);
            }
        }
    }

    /// The output policy answers are guarded under: the contract in force as the answer
    /// arrives, so that a reload that tightens it applies to calls already running.
    pub fn output_actions(&self) -> Option<gavel_contract::PrivacyActions> {
        self.engine()
            .contract()
            .policy
            .privacy
            .as_ref()
            .map(|p| p.output)
    }

    /// A guard for one answer under [`Gateway::output_actions`].
    pub fn output_guard(&self) -> super::output::OutputGuard {
        super::output::OutputGuard::new(self.output_scanners.clone(), self.output_actions())
    }

    /// Replaces the reservations of `finished` with their actual usage, in `batch`'s
    /// transaction; the decisions it settled. A failure is logged: the reservation then stays
    /// charged at the estimate.
    pub fn settle(&self, batch: &Batch<'_>, finished: &[Finished]) -> Vec<String> {
        let settlements: Vec<(String, Amounts)> = finished
            .iter()
            .filter_map(|f| match f.engine.actual_amounts(&f.ran_on, &f.usage) {
                Ok(actual) => Some((f.decision_id.clone(), actual)),
                Err(e) => {
                    tracing::error!(decision_id = %f.decision_id, error = %e, "settling usage failed");
                    None
                }
            })
            .collect();
        if let Err(e) = batch.state().settle_many(&settlements, now()) {
            for (decision_id, _) in &settlements {
                tracing::error!(%decision_id, error = %e, "settling usage failed");
            }
            return Vec::new();
        }
        settlements.into_iter().map(|(id, _)| id).collect()
    }

    /// Counts `finished` in monitoring and submits their outcome records to the ledger.
    pub fn record_settled(&self, finished: Vec<Finished>) {
        let at = now();
        for f in finished {
            self.monitor.record_outcome(
                &f.ran_on,
                &observed(&f.engine, &f.decision_id, &f.ran_on, &f.usage, &f.details),
            );
            let mut body = json!({
                "principal": f.principal,
                "decision_id": f.decision_id,
                "deployment": f.ran_on,
                "usage": f.usage,
            });
            if let (Some(body), Value::Object(details)) = (body.as_object_mut(), f.details) {
                body.extend(details);
            }
            let submitted = new_id("out").and_then(|id| {
                self.ledger
                    .submit_background(RecordKind::Outcome, at, &id, body)
            });
            if let Err(e) = submitted {
                tracing::error!(decision_id = %f.decision_id, error = %e.message, "the outcome could not be recorded");
            }
        }
    }

    /// Reads a request body of at most `max_body_bytes`, within `body_timeout`.
    pub async fn read_body(&self, body: Body) -> ApiResult<Bytes> {
        let limit = self.limits.max_body_bytes;
        match tokio::time::timeout(self.limits.body_timeout, axum::body::to_bytes(body, limit))
            .await
        {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s; send it at once",
                    self.limits.body_timeout.as_secs()
                ),
            )),
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than {limit} bytes (or was cut off); send less"
                ),
            )),
            Ok(Ok(bytes)) => Ok(bytes),
        }
    }
}

/// What monitoring learns from a proxied call's outcome details.
fn observed(
    engine: &Engine,
    decision_id: &str,
    ran_on: &str,
    usage: &Usage,
    details: &Value,
) -> gavel_monitor::Outcome {
    let failed = details.get("upstream_error").is_some()
        || details["upstream_status"]
            .as_u64()
            .is_some_and(|s| !(200..300).contains(&s));
    let reported = crate::monitoring::Reported {
        latency_ms: details["latency_ms"].as_f64(),
        success: Some(!failed),
        fallback_used: details["fallback"].as_bool(),
        ..Default::default()
    };
    // An abandoned decision ran nothing: no call to count, neither good nor failed.
    let executed = details.get("abandoned").is_none();
    let mut outcome = reported.outcome(
        decision_id,
        executed,
        Some(usage),
        engine.usd_micros(ran_on, usage),
    );
    outcome.snapshot_changed = details["snapshot_changed"].as_bool() == Some(true);
    outcome
}

/// The key from `Authorization: Bearer <key>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Parses a JSON body with the same guards as the decide request: UTF-8, bounded nesting.
pub fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_utf8",
            format!(
                "the body is not valid UTF-8 (first bad byte at offset {}); send UTF-8 JSON",
                e.valid_up_to()
            ),
        )
    })?;
    if let Some(at) = gavel_engine::nesting_exceeds(text.as_bytes(), gavel_engine::MAX_JSON_DEPTH) {
        return Err(ApiError::bad_request(
            "too_deep",
            format!(
                "the body nests deeper than {} levels (at byte {at}); flatten it",
                gavel_engine::MAX_JSON_DEPTH
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })
}
