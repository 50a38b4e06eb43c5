//! The OpenAI-compatible proxy: `POST /v1/chat/completions` (streamed or not),
//! `POST /v1/embeddings`, `GET /v1/models`.
//!
//! Every call is decided (and the decision made durable) before the upstream is called; the
//! decision's obligations are applied to the body sent upstream (redaction, routing, the
//! max_tokens cap); the answer passes the output scanners (streams through the hold-back
//! window) before it reaches the client; usage is settled and an outcome recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use gavel_contract::{Contract, Deployment, Fallback, FindingAction};
use gavel_engine::{
    DecideRequest, Decision, Message, MessageContent, Obligation, ToolDefinition, Usage, Verdict,
};
use gavel_store::KeyRecord;

use super::error::{ApiError, ApiResult};
use super::gateway::{as_reserved, parse_json, route_of, Gateway, Ruling, FALLBACK_FOR};
use super::metrics;
use super::output::{guard_strings, tail_texts, OutputGuard, StreamGuard, Violation};
use super::upstream::{too_large, ByteStream, Reply, UpstreamError, ANSWER_MAX_BYTES};

/// Body fields that are not generation parameters.
const STRUCTURAL: &[&str] = &["model", "messages", "tools"];
/// Said (in a response header, the outcome record and the logs) when the upstream reports a
/// model other than the approved snapshot.
const SNAPSHOT_CHANGED: &str = "model.snapshot_changed";
/// How many fallback hops a failed call may take (a -> b -> canned response).
const MAX_FALLBACK_HOPS: usize = 3;

pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = gw.read_body(body).await?;
    let body = parse_json(&bytes)?;
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object with `model` and `messages`",
        ));
    };
    let engine = gw.engine();
    let contract = engine.contract();
    let (deployment_id, model) = deployment_of(&headers, &fields, contract)?;
    let request = Arc::new(decide_request(&headers, &fields, deployment_id, model)?);
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("`stream` must be true or false, not {other}"),
            ))
        }
    };
    ran_to_the_end(async move {
        let ruling = gw.decide_for_call(request.clone(), &caller.principal).await;
        if ruling.decision.verdict != Verdict::Allow {
            return ApiError::from_decision(&ruling.decision, ruling.shown()).into_response();
        }
        let call = Call {
            gw,
            caller,
            fields,
            request,
            stream,
            started: Instant::now(),
        };
        call.run(ruling).await
    })
    .await
}

/// Runs a request from its decision on, on a task of its own, to its end whatever the client
/// does: a client that hangs up drops its request's future, and a decision or an upstream call
/// cut there would leave an ALLOW with no outcome (its usage never settled, its reservation
/// charged at the estimate for good, its idempotency key spent).
async fn ran_to_the_end(
    call: impl std::future::Future<Output = Response> + Send + 'static,
) -> ApiResult<Response> {
    tokio::spawn(call)
        .await
        .map_err(|e| ApiError::unavailable(format!("the call was lost: {e}")))
}

/// Which deployment: the `X-Gavel-Deployment` header, else the body's `model` naming a
/// deployment id. Returns the deployment and the model name the request claims (checked by
/// conformance when it is not the deployment id).
fn deployment_of(
    headers: &HeaderMap,
    fields: &Map<String, Value>,
    contract: &Contract,
) -> ApiResult<(String, Option<String>)> {
    let model = match fields.get("model") {
        Some(Value::String(m)) => Some(m.clone()),
        None => None,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`model` must be a string",
            ))
        }
    };
    if let Some(header) = headers.get("x-gavel-deployment") {
        let id = header.to_str().map_err(|_| {
            ApiError::bad_request("invalid_request", "X-Gavel-Deployment must be ASCII")
        })?;
        return Ok((id.to_string(), model.filter(|m| m != id)));
    }
    match model {
        Some(m) if contract.deployment(&m).is_some() => Ok((m, None)),
        Some(m) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("`{m}` is not a deployment of this gateway; set `model` to a deployment id (GET /v1/models lists yours) or send X-Gavel-Deployment"),
        )),
        None => Err(ApiError::bad_request("invalid_request", "`model` is missing; set it to a deployment id")),
    }
}

/// The chat body as a decide request: messages, tools, and every other field as a parameter
/// (so an unapproved one is refused by conformance, and `bypass: true` is just that).
fn decide_request(
    headers: &HeaderMap,
    fields: &Map<String, Value>,
    deployment: String,
    model: Option<String>,
) -> ApiResult<DecideRequest> {
    let messages: Vec<Message> = match fields.get("messages") {
        // Objects only, as OpenAI's API takes them: the body is forwarded as written, and its
        // redactions are written into those objects.
        Some(m) => gavel_engine::messages_from(m).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("`messages` is not a list of chat messages: {e}"),
            )
        })?,
        None => Vec::new(),
    };
    let tools: Vec<ToolDefinition> = match fields.get("tools") {
        Some(t) => serde_json::from_value(t.clone()).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("`tools` is not a list of tool definitions: {e}"),
            )
        })?,
        None => Vec::new(),
    };
    let header = |name: &str| ascii_header(headers, name);
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(Value::String(user)) = fields.get("user") {
        metadata.insert("user".to_string(), user.clone());
    }
    let request = DecideRequest {
        deployment,
        model,
        messages,
        tools,
        params: fields
            .iter()
            .filter(|(k, _)| !STRUCTURAL.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        idempotency_key: header("idempotency-key")?,
        run_id: header("x-gavel-run-id")?,
        step: header("x-gavel-step")?,
        metadata,
        ..DecideRequest::default()
    };
    no_secret_in_identifiers(request)
}

/// A header's value, or a clear refusal when it is not ASCII (never dropped: a dropped
/// idempotency key would let a retry run twice).
fn ascii_header(headers: &HeaderMap, name: &str) -> ApiResult<Option<String>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("the {name} header must be ASCII"),
                )
            })
        })
        .transpose()
}

/// Refuses a request whose identifiers (deployment, model, keys) hold a secret: they are
/// recorded as they are, and no secret goes into the ledger.
fn no_secret_in_identifiers(request: DecideRequest) -> ApiResult<DecideRequest> {
    match request.secret_in_identifiers() {
        Some((field, rule)) => Err(ApiError::bad_request(
            "invalid_request",
            gavel_engine::secret_in(field, rule).0,
        )),
        None => Ok(request),
    }
}

/// An upstream's refusal (an answer that is not a 2xx), relayed as it gave it once guarded like
/// any answer (an error message can quote what it was sent, or anything), or refused if a
/// guard blocks; recorded either way. Chat and embeddings alike.
fn relay_refusal(
    gw: &Gateway,
    decision: &Decision,
    ran_on: &str,
    status: StatusCode,
    body: &Bytes,
    started: Instant,
) -> Response {
    let mut findings = Vec::new();
    let guarded = match serde_json::from_slice::<Value>(body) {
        Ok(mut refusal) => guard_strings(&mut refusal, &|| gw.output_guard(), &mut findings)
            .map(|()| Bytes::from(refusal.to_string())),
        Err(_) => {
            let mut whole = gw.output_guard();
            let checked = whole.whole(&String::from_utf8_lossy(body));
            findings.append(&mut whole.findings);
            checked.map(Bytes::from)
        }
    };
    let mut details = json!({ "upstream_status": status.as_u16(), "latency_ms": started.elapsed().as_millis() as u64, "output_findings": findings });
    match guarded {
        Ok(body) => {
            gw.record_outcome(decision, ran_on, &Usage::default(), details);
            passthrough(status, body, decision)
        }
        Err(v) => {
            metrics::output_violation(ran_on, v.code.as_str());
            details["output_violation"] = v.record();
            gw.record_outcome(decision, ran_on, &Usage::default(), details);
            output_refusal(decision, &v).into_response()
        }
    }
}

/// A call whose upstream gave no usable answer, on its way to the approved fallback.
struct Failed<'a> {
    ruling: &'a Ruling,
    /// The deployment the call ran on, whose fallback comes next.
    deployment: &'a Deployment,
    /// The endpoint that failed, and how.
    endpoint: &'a str,
    failure: UpstreamError,
    /// When the call started, for the outcome's latency.
    started: Instant,
    /// Upstream failures so far, this one included.
    hops: usize,
    answers: Answers<'a>,
}

/// What a call answers with, which decides the fallbacks that can stand in for its upstream.
enum Answers<'a> {
    /// Text (chat): the approved fixed answer, rendered by this, can.
    Text(&'a (dyn Fn(&str) -> Response + Sync)),
    /// Vectors (embeddings): no fixed text can, nor another model, whose vectors are of another
    /// space (a client storing them beside this model's would search its index with nonsense,
    /// and nothing would say so).
    Vectors,
}

/// Where the approved fallback of a failed call leads.
enum FellBack {
    /// The fallback deployment's own ruling, an ALLOW: call its upstream next.
    Deployment(Box<Ruling>),
    /// The call ends with this response: the fixed answer, a refused fallback, a human queue,
    /// no fallback that can stand in.
    Ended(Response),
}

/// Records `failed` (its outcome, charged as [`failed_call_usage`] says) and takes its approved
/// fallback's next step. A fallback deployment is governed like any other: its own decision on
/// the same request, recorded, which may refuse it.
async fn fall_back(
    gw: &Arc<Gateway>,
    caller: &KeyRecord,
    request: &DecideRequest,
    failed: Failed<'_>,
) -> FellBack {
    let decision = &failed.ruling.decision;
    let ran_on = &failed.deployment.id;
    let why = failed.failure.describe(failed.endpoint);
    tracing::warn!(decision_id = %decision.decision_id, deployment = %ran_on, error = %why, "upstream failed");
    let usage = failed_call_usage(decision, &failed.failure);
    gw.record_outcome(
        decision,
        ran_on,
        &usage,
        json!({ "upstream_error": why, "latency_ms": failed.started.elapsed().as_millis() as u64 }),
    );
    let unavailable = |message: String| {
        FellBack::Ended(
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream.unavailable", message).into_response(),
        )
    };
    match (failed.deployment.fallback.clone(), failed.answers) {
        (Some(Fallback::Deployment(next)), answers) if failed.hops <= MAX_FALLBACK_HOPS => {
            let contract = failed.ruling.engine.contract();
            let next_model = contract.deployment(&next).map(|n| &n.model.snapshot);
            if matches!(answers, Answers::Vectors)
                && next_model != Some(&failed.deployment.model.snapshot)
            {
                return unavailable(format!("{why}; the approved fallback `{next}` runs another model, whose embeddings could not be compared with `{ran_on}`'s, so embeddings do not fall back to it"));
            }
            metrics::fallback(ran_on, &next);
            let mut request = request.clone();
            request.deployment = next;
            request.model = None;
            // The first decision holds the idempotency key; the fallback is the same request.
            request.idempotency_key = None;
            request
                .metadata
                .insert(FALLBACK_FOR.to_string(), decision.decision_id.clone());
            let ruling = gw
                .decide_for_call(Arc::new(request), &caller.principal)
                .await;
            if ruling.decision.verdict != Verdict::Allow {
                return FellBack::Ended(
                    ApiError::from_decision(&ruling.decision, ruling.shown()).into_response(),
                );
            }
            FellBack::Deployment(Box::new(ruling))
        }
        (Some(Fallback::Response(text)), Answers::Text(canned)) => {
            metrics::fallback(ran_on, "response");
            FellBack::Ended(canned(&text))
        }
        (Some(Fallback::Response(_)), Answers::Vectors) => unavailable(format!("{why}; the approved fallback of deployment `{ran_on}` is a fixed answer, which cannot stand in for embeddings")),
        (Some(Fallback::HumanQueue(queue)), _) => {
            metrics::fallback(ran_on, "human_queue");
            FellBack::Ended(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "fallback.human_queue", format!("{why}; the approved fallback is the human queue `{queue}`: hand the request to it")).into_response())
        }
        _ => unavailable(format!("{why}; deployment `{ran_on}` has no approved fallback")),
    }
}

/// Guards every string of an embeddings answer but its vectors (`data[].embedding`: numbers,
/// or base64 text that is no text to guard, where a guard would see random letters): an
/// upstream's other fields reach the client as chat's do, so they are guarded as chat's are.
fn guard_all_but_vectors(
    answer: &mut Value,
    new_guard: &dyn Fn() -> OutputGuard,
    findings: &mut Vec<Value>,
) -> Result<(), Violation> {
    // Taken out by their place in `data` (once out, a slot holds null and is no vector).
    let vectors: Vec<(usize, Value)> = embedding_slots(answer)
        .filter(|(_, slot)| is_vector(slot))
        .map(|(at, slot)| (at, slot.take()))
        .collect();
    let result = guard_strings(answer, new_guard, findings);
    // Both in the order of `data`: one pass puts each back.
    let mut vectors = vectors.into_iter().peekable();
    for (at, slot) in embedding_slots(answer) {
        if let Some((_, vector)) = vectors.next_if(|(taken_at, _)| *taken_at == at) {
            *slot = vector;
        }
    }
    result
}

/// Each `data[].embedding` of an embeddings answer, with its item's place in `data`. A vector
/// ([`is_vector`]) there is no text; anything else an upstream put there is guarded.
fn embedding_slots(answer: &mut Value) -> impl Iterator<Item = (usize, &mut Value)> {
    answer
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(at, item)| item.get_mut("embedding").map(|slot| (at, slot)))
}

/// An array of numbers, or base64 (its alphabet only, in groups of four).
fn is_vector(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().all(Value::is_number),
        Value::String(text) => {
            text.len() % 4 == 0
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        }
        _ => false,
    }
}

/// One allowed call on its way upstream and back.
struct Call {
    gw: Arc<Gateway>,
    caller: KeyRecord,
    fields: Map<String, Value>,
    request: Arc<DecideRequest>,
    stream: bool,
    started: Instant,
}

impl Call {
    async fn run(self, ruling: Ruling) -> Response {
        let mut ruling = ruling;
        let mut hops = 0;
        loop {
            // What was decided is what runs: the contract of the decision, not one a reload
            // has put in force since.
            let engine = ruling.engine.clone();
            self.gw.calling(&ruling.decision);
            let (_, deployment, endpoint) = match target(&self.gw, &engine, &ruling.decision) {
                Ok(target) => target,
                Err(e) => return e.into_response(),
            };
            let body = self.upstream_body(&ruling.decision, deployment);
            let reply = self
                .gw
                .upstreams
                .call(endpoint, "/chat/completions", &body, self.stream)
                .await;
            let failure = match reply {
                Ok(Reply::Whole { status, body }) => {
                    return self.whole(&ruling, deployment, status, body, hops > 0)
                }
                Ok(Reply::Stream(bytes)) => {
                    return self.relay(ruling, deployment.clone(), bytes, hops > 0)
                }
                Err(e) => e,
            };
            hops += 1;
            let canned = |text: &str| self.canned(&ruling.decision, deployment, text);
            let failed = Failed {
                ruling: &ruling,
                deployment,
                endpoint: &endpoint.id,
                failure,
                started: self.started,
                hops,
                answers: Answers::Text(&canned),
            };
            match fall_back(&self.gw, &self.caller, &self.request, failed).await {
                FellBack::Deployment(next_ruling) => ruling = *next_ruling,
                FellBack::Ended(response) => return response,
            }
        }
    }

    /// The body sent upstream: the caller's, with the approved model name and the decision's
    /// obligations applied.
    fn upstream_body(&self, decision: &Decision, deployment: &Deployment) -> Value {
        let mut body = self.fields.clone();
        body.insert("model".to_string(), json!(deployment.model.name));
        for obligation in &decision.obligations {
            match obligation {
                Obligation::CapMaxTokens { max_tokens } => {
                    let mut capped = false;
                    for key in ["max_tokens", "max_completion_tokens"] {
                        if body.contains_key(key) {
                            body.insert(key.to_string(), json!(max_tokens));
                            capped = true;
                        }
                    }
                    if !capped {
                        body.insert("max_tokens".to_string(), json!(max_tokens));
                    }
                }
                Obligation::Redact { redactions } => {
                    if let Some(Value::Array(messages)) = body.get_mut("messages") {
                        redact_messages(messages, &self.request.messages, redactions);
                    }
                    redact_user(&mut body, &self.request, redactions);
                }
                Obligation::Route { .. } => {}
            }
        }
        if self.stream {
            body.insert(
                "stream_options".to_string(),
                json!({ "include_usage": true }),
            );
        }
        Value::Object(body)
    }

    fn whole(
        &self,
        ruling: &Ruling,
        deployment: &Deployment,
        status: StatusCode,
        body: Bytes,
        fallback: bool,
    ) -> Response {
        let decision = &ruling.decision;
        if !status.is_success() {
            return relay_refusal(
                &self.gw,
                decision,
                &deployment.id,
                status,
                &body,
                self.started,
            );
        }
        let Ok(mut reply @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
            // The upstream did the work (it answered 2xx) and said nothing of what it used.
            self.gw.record_outcome(
                decision,
                &deployment.id,
                &as_reserved(decision),
                json!({ "upstream_error": "the answer was not a JSON object" }),
            );
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream.invalid",
                format!(
                    "endpoint of `{}` answered with something that is not a JSON object",
                    deployment.id
                ),
            )
            .into_response();
        };
        // Each choice is its own answer: its own guard, one push and the end. Then every other
        // string of the reply.
        let mut findings = Vec::new();
        let mut violation = None;
        let mut guarded = Vec::new();
        if let Some(choices) = reply.get_mut("choices").and_then(Value::as_array_mut) {
            for (i, choice) in choices.iter_mut().enumerate() {
                let Some(text) = choice["message"]["content"].as_str().map(str::to_string) else {
                    continue;
                };
                guarded.push(format!("/choices/{i}/message/content"));
                let mut guard = self.guard();
                let checked = guard.whole(&text);
                findings.append(&mut guard.findings);
                match checked {
                    Ok(checked) => choice["message"]["content"] = json!(checked),
                    Err(v) => {
                        violation = Some(v);
                        break;
                    }
                }
            }
        }
        if violation.is_none() {
            violation = self
                .guard_all_but(&mut reply, &guarded, &mut findings)
                .err();
        }
        let usage = usage_of(&reply["usage"]).unwrap_or_else(|| counted(decision, &reply));
        let snapshot = snapshot_check(deployment, reply["model"].as_str());
        let mut details = json!({
            "upstream_status": status.as_u16(),
            "latency_ms": self.started.elapsed().as_millis() as u64,
            "output_sha256": hex::encode(Sha256::digest(&body)),
            "output_findings": findings,
            "fallback": fallback,
        });
        merge(&mut details, &snapshot);
        if let Some(v) = violation {
            metrics::output_violation(&deployment.id, v.code.as_str());
            details["output_violation"] = v.record();
            self.gw
                .record_outcome(decision, &deployment.id, &usage, details);
            return output_refusal(decision, &v).into_response();
        }
        self.gw
            .record_outcome(decision, &deployment.id, &usage, details);
        let mut response = (StatusCode::OK, Json(reply)).into_response();
        annotate(response.headers_mut(), ruling, fallback, &snapshot);
        response
    }

    /// Guards every string of `answer` (object keys included), each on its own, except the
    /// texts at `guarded` (JSON pointers), which the caller has guarded as answers of their
    /// own: set aside meanwhile, then put back. Drops `logprobs` first (see
    /// [`Call::withhold_logprobs`]).
    fn guard_all_but(
        &self,
        answer: &mut Value,
        guarded: &[String],
        findings: &mut Vec<Value>,
    ) -> Result<(), Violation> {
        let set_aside: Vec<Option<Value>> = guarded
            .iter()
            .map(|pointer| answer.pointer_mut(pointer).map(Value::take))
            .collect();
        self.withhold_logprobs(answer);
        let result = guard_strings(answer, &|| self.guard(), findings);
        for (pointer, text) in guarded.iter().zip(set_aside) {
            if let (Some(text), Some(slot)) = (text, answer.pointer_mut(pointer)) {
                *slot = text;
            }
        }
        result
    }

    /// Drops the `logprobs` of every choice when an output policy applies: they repeat the
    /// answer one token per string, so no guard sees a span whole (a redacted address would
    /// come back intact, token by token), and in a stream they carry text the hold-back window
    /// has not cleared yet.
    fn withhold_logprobs(&self, answer: &mut Value) {
        let guarded = self
            .gw
            .output_actions()
            .is_some_and(|a| a.pii != FindingAction::Allow || a.secret != FindingAction::Allow);
        if !guarded {
            return;
        }
        if let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                if let Some(logprobs) = choice.get_mut("logprobs").filter(|l| !l.is_null()) {
                    *logprobs = Value::Null;
                }
            }
        }
    }

    /// An event shaped like the upstream's chunks (`template`, its usage left out) carrying
    /// held-back ends of the choices' texts (`choices`, from [`StreamGuard`]). Its texts passed
    /// their windows; everything else in it (keys, a finish reason, the template's fields) is
    /// guarded like any event's.
    fn tail_event(
        &self,
        template: Option<&Value>,
        choices: Value,
        guard: &mut StreamGuard,
    ) -> Result<Bytes, Violation> {
        let mut chunk = template
            .cloned()
            .unwrap_or_else(|| json!({ "object": "chat.completion.chunk" }));
        if let Some(object) = chunk.as_object_mut() {
            object.remove("usage");
            object.insert("choices".to_string(), choices);
        }
        let texts = tail_texts(&chunk);
        self.guard_all_but(&mut chunk, &texts, &mut guard.findings)?;
        Ok(event(&chunk))
    }

    /// Hands `bytes` to the client's connection; false if the client is gone, or has taken
    /// nothing for as long as an upstream may stay silent: a client that stops reading must
    /// not hold its call (and its outcome) open beyond the upstream's own limits.
    async fn to_client(&self, tx: &tokio::sync::mpsc::Sender<Bytes>, bytes: Bytes) -> bool {
        tx.send_timeout(bytes, self.gw.upstreams.timeouts.first_byte)
            .await
            .is_ok()
    }

    fn guard(&self) -> OutputGuard {
        self.gw.output_guard()
    }

    /// The approved fallback response, in the shape the client asked for.
    fn canned(&self, decision: &Decision, deployment: &Deployment, text: &str) -> Response {
        let id = format!("chatcmpl-{}", decision.decision_id);
        let mut headers = HeaderMap::new();
        headers.insert("x-gavel-fallback", HeaderValue::from_static("response"));
        if let Ok(v) = HeaderValue::from_str(&decision.decision_id) {
            headers.insert("x-gavel-decision-id", v);
        }
        if self.stream {
            let chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": 0, "model": deployment.model.name,
                "choices": [{ "index": 0, "delta": { "role": "assistant", "content": text }, "finish_reason": "stop" }] });
            let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            return (StatusCode::OK, headers, body).into_response();
        }
        let reply = json!({ "id": id, "object": "chat.completion", "created": 0, "model": deployment.model.name,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 } });
        (StatusCode::OK, headers, Json(reply)).into_response()
    }

    /// Relays a server-sent-event stream through the output guard. Content is re-chunked to
    /// what the guard releases; a violation ends the stream with an error event.
    fn relay(
        self,
        ruling: Ruling,
        deployment: Deployment,
        upstream: ByteStream,
        fallback: bool,
    ) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        annotate(&mut headers, &ruling, fallback, &Value::Null);
        tokio::spawn(async move {
            let summary = self
                .pump(&ruling.decision, &deployment, upstream, &tx)
                .await;
            // Counted only when the upstream reported no usage.
            let seen = || {
                gavel_engine::Encoding::for_model(&deployment.model.name).count(&summary.text_seen)
            };
            let reserved = as_reserved(&ruling.decision);
            let usage = match summary.usage.clone() {
                Some(reported) => reported,
                // Cut off while the upstream may have gone on generating: what it used is
                // unknown, so it is charged what was reserved (or what was seen, if more).
                None if summary.cut_off => Usage {
                    completion_tokens: reserved.completion_tokens.max(seen()),
                    ..reserved
                },
                None => Usage {
                    prompt_tokens: reserved.prompt_tokens,
                    completion_tokens: seen(),
                    tool_calls: 0,
                },
            };
            let mut details = json!({
                "stream": true,
                "latency_ms": self.started.elapsed().as_millis() as u64,
                "output_sha256": hex::encode(Sha256::digest(summary.text_seen.as_bytes())),
                "output_findings": summary.findings,
                "fallback": fallback,
                "ended": summary.ended,
            });
            merge(&mut details, &summary.snapshot);
            if let Some(v) = &summary.violation {
                metrics::stream_violation(&deployment.id, v.code.as_str());
                details["output_violation"] = v.record();
            }
            self.gw
                .record_outcome(&ruling.decision, &deployment.id, &usage, details);
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, std::io::Error>(bytes), rx))
        });
        (StatusCode::OK, headers, Body::from_stream(body)).into_response()
    }

    async fn pump(
        &self,
        decision: &Decision,
        deployment: &Deployment,
        upstream: ByteStream,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
    ) -> StreamSummary {
        let mut summary = StreamSummary::default();
        let mut guard = StreamGuard::new(self.gw.output_scanners.clone(), self.gw.output_actions());
        if let Err(v) = self
            .relay_events(&mut guard, &mut summary, deployment, upstream, tx)
            .await
        {
            let error = output_refusal(decision, &v);
            self.to_client(tx, event(&error.body())).await;
            summary.ended = format!("cut: {}", v.code.as_str());
            summary.cut_off = true;
            summary.violation = Some(v);
        }
        summary.text_seen = guard.seen;
        summary.findings = guard.findings;
        summary
    }

    /// Relays the upstream's events through `guard` until the stream ends; the violation that
    /// must cut it, if one does.
    async fn relay_events(
        &self,
        guard: &mut StreamGuard,
        summary: &mut StreamSummary,
        deployment: &Deployment,
        mut upstream: ByteStream,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<(), Violation> {
        let mut events = SseEvents::default();
        // The bytes of a character the last read cut in two, until the next read completes it.
        let mut cut_char: Vec<u8> = Vec::new();
        let mut template: Option<Value> = None;
        let deadline = self.started + self.gw.upstreams.timeouts.total;
        let mut received = 0usize;
        loop {
            let wait = self
                .gw
                .upstreams
                .timeouts
                .first_byte
                .min(deadline.saturating_duration_since(Instant::now()));
            // Why it ended, and whether the upstream may have gone on generating.
            let next = match tokio::time::timeout(wait, upstream.next()).await {
                Err(_) => Err((
                    "the upstream stalled (no data within the timeout)".to_string(),
                    true,
                )),
                Ok(None) => Err((
                    "the upstream ended the stream without [DONE]".to_string(),
                    false,
                )),
                Ok(Some(Err(e))) => Err((format!("the upstream stream broke ({e})"), true)),
                Ok(Some(Ok(bytes))) if received + bytes.len() > ANSWER_MAX_BYTES => {
                    Err((too_large(), true))
                }
                Ok(Some(Ok(bytes))) => {
                    received += bytes.len();
                    Ok(bytes)
                }
            };
            let bytes = match next {
                Ok(bytes) => bytes,
                Err((why, cut_off)) => {
                    summary.ended = why.clone();
                    summary.cut_off = cut_off;
                    let error =
                        ApiError::new(StatusCode::BAD_GATEWAY, "upstream.stream_broken", why);
                    self.to_client(tx, event(&error.body())).await;
                    return Ok(());
                }
            };
            decode_utf8_into(events.buffer(), &mut cut_char, &bytes);
            while let Some(data) = events.next() {
                let Some(data) = data else { continue };
                if data == "[DONE]" {
                    if let Some(choices) = guard.finish()? {
                        let tail = self.tail_event(template.as_ref(), choices, guard)?;
                        self.to_client(tx, tail).await;
                    }
                    self.to_client(tx, Bytes::from_static(b"data: [DONE]\n\n"))
                        .await;
                    summary.ended = "done".to_string();
                    return Ok(());
                }
                // An event that is not a JSON object is no chunk of an answer: not relayed.
                let Ok(mut chunk @ Value::Object(_)) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                // An error ends the stream. Only the error is relayed, guarded whole: choices
                // beside it would skip their windows, and their logprobs would carry text one
                // token per string. `"error": null` is no error: the event is a chunk like any
                // other.
                if let Some(error) = chunk.get_mut("error").filter(|e| !e.is_null()) {
                    let mut chunk = json!({ "error": error.take() });
                    guard_strings(&mut chunk, &|| self.guard(), &mut guard.findings)?;
                    self.to_client(tx, event(&chunk)).await;
                    summary.ended = "upstream error event".to_string();
                    return Ok(());
                }
                if let Some(usage) = usage_of(&chunk["usage"]) {
                    summary.usage = Some(usage);
                }
                if summary.snapshot.is_null() {
                    if let Some(model) = chunk["model"].as_str() {
                        summary.snapshot = snapshot_check(deployment, Some(model));
                    }
                }
                // The texts of each choice through their hold-back windows, then every other
                // string of the event (fields of the upstream's own, ids, names) on its own.
                let guarded = guard.event(&mut chunk)?;
                self.guard_all_but(&mut chunk, &guarded.texts, &mut guard.findings)?;
                if template.is_none() {
                    template = Some(chunk.clone());
                }
                let mut sends = Vec::new();
                if guarded.forward {
                    sends.push(event(&chunk));
                }
                if let Some(choices) = guarded.after {
                    sends.push(self.tail_event(Some(&chunk), choices, guard)?);
                }
                for bytes in sends {
                    if !self.to_client(tx, bytes).await {
                        summary.ended = "client disconnected or stopped reading".to_string();
                        summary.cut_off = true;
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct StreamSummary {
    usage: Option<Usage>,
    /// Everything the upstream sent, for the digest and for counting when it reports no usage.
    text_seen: String,
    findings: Vec<Value>,
    snapshot: Value,
    violation: Option<Violation>,
    ended: String,
    /// Whether the gateway stopped reading while the upstream may have gone on generating.
    cut_off: bool,
}

/// Server-sent events cut from a stream as its text arrives. Each byte is searched once for the
/// blank line that ends an event (LF, CRLF or CR line endings), and consumed text is dropped
/// once per read, so a read of many events costs its length, not its length times its events.
#[derive(Default)]
struct SseEvents {
    buffer: String,
    /// Where the next event starts.
    start: usize,
    /// Where the search for the end of the next event resumes.
    searched: usize,
}

impl SseEvents {
    /// The decoded text of one read is `buffer`'s to add to: drops what was consumed.
    fn buffer(&mut self) -> &mut String {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.searched -= self.start;
            self.start = 0;
        }
        &mut self.buffer
    }

    /// The next complete event's data (None for a comment or an event without data), or None
    /// when no complete event is buffered.
    fn next(&mut self) -> Option<Option<String>> {
        let bytes = self.buffer.as_bytes();
        let mut i = self.searched.max(self.start);
        while i < bytes.len() {
            let gap = match bytes[i] {
                b'\n' if bytes.get(i + 1) == Some(&b'\n') => 2,
                b'\r' if bytes[i..].starts_with(b"\r\n\r\n") => 4,
                b'\r' if bytes.get(i + 1) == Some(&b'\r') => 2,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let block = &self.buffer[self.start..i];
            let data: Vec<&str> = block
                .split(['\r', '\n'])
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let data = (!data.is_empty()).then(|| data.join("\n"));
            self.start = i + gap;
            self.searched = self.start;
            return Some(data);
        }
        // A blank line's first bytes may have arrived at the end: look at them again.
        self.searched = bytes.len().saturating_sub(3).max(self.start);
        None
    }
}

fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn output_refusal(decision: &Decision, v: &Violation) -> ApiError {
    let mut error = ApiError::new(StatusCode::FORBIDDEN, v.code.as_str(), v.message());
    error.decision = Some(
        json!({ "decision_id": decision.decision_id, "reasons": [{ "code": v.code.as_str(), "message": v.message(), "direction": "output", "rule_id": v.rule_id, "field": v.field, "start": v.span.start, "end": v.span.end }] }),
    );
    error
}

/// The redactions of each text (by text index), in order, overlapping spans merged into the
/// first one's placeholder: what [`redacted`] needs to work through a text once.
fn spans_by_text(
    redactions: &[gavel_engine::Redaction],
) -> HashMap<usize, Vec<gavel_engine::Redaction>> {
    let mut by_text: HashMap<usize, Vec<gavel_engine::Redaction>> = HashMap::new();
    for r in redactions {
        by_text.entry(r.text_index).or_default().push(r.clone());
    }
    for spans in by_text.values_mut() {
        spans.sort_by_key(|r| (r.start, r.end));
        let mut merged: Vec<gavel_engine::Redaction> = Vec::with_capacity(spans.len());
        for r in spans.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        *spans = merged;
    }
    by_text
}

/// Applies the redactions of the `user` parameter (its text index,
/// [`DecideRequest::user_text_index`]) to the body sent upstream.
fn redact_user(
    body: &mut Map<String, Value>,
    request: &DecideRequest,
    redactions: &[gavel_engine::Redaction],
) {
    let (Some(index), Some(user)) = (request.user_text_index(), request.user_param()) else {
        return;
    };
    if let Some(spans) = spans_by_text(redactions).get(&index) {
        body.insert("user".to_string(), json!(redacted(user, 0, spans)));
    }
}

/// Replaces redacted spans in the messages sent upstream. Redactions index the request's
/// texts, which begin with one text per message: a message given as parts is one text, its
/// text parts joined with a line break, so each text part is redacted where its share of that
/// text lies, and the other parts (images, files) go as they came.
fn redact_messages(
    messages: &mut [Value],
    parsed: &[Message],
    redactions: &[gavel_engine::Redaction],
) {
    let by_text = spans_by_text(redactions);
    for (index, message) in parsed.iter().enumerate() {
        let (Some(spans), Some(slot)) = (by_text.get(&index), messages.get_mut(index)) else {
            continue;
        };
        // `decide_request` refused messages that are not objects; one that got here anyway is
        // withheld whole rather than sent unredacted.
        let Some(slot) = slot.as_object_mut() else {
            *slot = Value::String("[REDACTED]".to_string());
            continue;
        };
        match (
            &message.content,
            slot.get_mut("content").and_then(Value::as_array_mut),
        ) {
            (Some(MessageContent::Parts(parts)), Some(sent)) if sent.len() == parts.len() => {
                let mut at = 0;
                for (sent, part) in sent.iter_mut().zip(parts) {
                    let Some(text) = part.text.as_deref() else {
                        continue;
                    };
                    let text_part = redacted(text, at, spans);
                    match sent.as_object_mut() {
                        Some(sent) => {
                            sent.insert("text".to_string(), Value::String(text_part));
                        }
                        None => *sent = json!({ "type": "text", "text": text_part }),
                    }
                    at += text.len() + 1;
                }
            }
            _ => {
                slot.insert(
                    "content".to_string(),
                    Value::String(redacted(&message.text(), 0, spans)),
                );
            }
        }
    }
}

/// `text`, which starts at offset `at` of the text the spans index, with the part of every
/// span that falls in it replaced, each placeholder written where its span starts. `spans` are
/// in order and do not overlap ([`spans_by_text`]), so the text is copied once.
fn redacted(text: &str, at: usize, spans: &[gavel_engine::Redaction]) -> String {
    let end_of_text = at + text.len();
    let first = spans.partition_point(|r| r.end <= at);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for r in spans[first..].iter().take_while(|r| r.start < end_of_text) {
        let (start, end) = (r.start.max(at) - at, r.end.min(end_of_text) - at);
        if !(text.is_char_boundary(start) && text.is_char_boundary(end)) {
            // The scanners' spans fall on characters of this very text; one that does not is
            // a fault, and the text is withheld whole rather than sent unredacted.
            return "[REDACTED]".to_string();
        }
        out.push_str(&text[copied..start]);
        if r.start >= at {
            out.push_str(&r.placeholder);
        }
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

fn usage_of(value: &Value) -> Option<Usage> {
    // Counts the ledger records exactly (see `Usage`); settlement caps what they charge.
    const MOST: u64 = (1 << 53) - 1;
    Some(Usage {
        prompt_tokens: value["prompt_tokens"].as_u64()?.min(MOST),
        completion_tokens: value["completion_tokens"].as_u64().unwrap_or(0).min(MOST),
        tool_calls: 0,
    })
}

/// What a call that failed is charged: what was reserved when the upstream may have worked on
/// it, nothing when it cannot have.
fn failed_call_usage(decision: &Decision, failure: &UpstreamError) -> Usage {
    match failure.may_have_run() {
        true => as_reserved(decision),
        false => Usage::default(),
    }
}

/// Usage when the upstream reports none: the decision's prompt estimate and the answer counted.
fn counted(decision: &Decision, reply: &Value) -> Usage {
    let text: String = reply["choices"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["message"]["content"].as_str())
                .collect()
        })
        .unwrap_or_default();
    Usage {
        prompt_tokens: decision.estimate.as_ref().map_or(0, |e| e.prompt_tokens),
        completion_tokens: gavel_engine::Encoding::for_model(
            reply["model"].as_str().unwrap_or("gpt-4o"),
        )
        .count(&text),
        tool_calls: 0,
    }
}

/// The model snapshot the upstream says it used, against the approved one.
fn snapshot_check(deployment: &Deployment, reported: Option<&str>) -> Value {
    let Some(reported) = reported else {
        return Value::Null;
    };
    let changed = reported != deployment.model.snapshot && reported != deployment.model.name;
    if changed {
        metrics::snapshot_changed(&deployment.id);
        tracing::warn!(deployment = %deployment.id, approved = %deployment.model.snapshot, reported, SNAPSHOT_CHANGED);
    }
    json!({ "snapshot_reported": reported, "snapshot_changed": changed })
}

fn merge(details: &mut Value, extra: &Value) {
    if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
}

fn annotate(headers: &mut HeaderMap, ruling: &Ruling, fallback: bool, snapshot: &Value) {
    if let Ok(v) = HeaderValue::from_str(&ruling.decision.decision_id) {
        headers.insert("x-gavel-decision-id", v);
    }
    if let Some(receipt) = &ruling.receipt {
        if let Ok(v) = HeaderValue::from_str(&receipt.index.to_string()) {
            headers.insert("x-gavel-ledger-index", v);
        }
    }
    if fallback {
        headers.insert("x-gavel-fallback", HeaderValue::from_static("deployment"));
    }
    if snapshot["snapshot_changed"] == json!(true) {
        headers.insert(
            "x-gavel-warning",
            HeaderValue::from_static(SNAPSHOT_CHANGED),
        );
    }
}

/// Appends `bytes` to `text` as UTF-8, continuing the character `cut` holds from the last
/// call and keeping in `cut` the start of one the end of `bytes` leaves incomplete: a read of
/// the upstream's stream can end inside a character. Bytes that cannot be UTF-8 become U+FFFD.
fn decode_utf8_into(text: &mut String, cut: &mut Vec<u8>, bytes: &[u8]) {
    cut.extend_from_slice(bytes);
    let mut rest: &[u8] = cut;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // An incomplete character at the end: wait for the rest of it.
                    None => {
                        rest = after;
                        break;
                    }
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = after.get(bad..).unwrap_or_default();
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let from = cut.len() - keep;
    cut.drain(..from);
}

/// Where an allowed call runs: the deployment the decision names (or routes to), its endpoint,
/// in the contract the decision was made under; what was decided is what runs, whatever a
/// reload has put in force since. A decision that names neither (it cannot, in the contract it
/// was made under) ends its call, recorded as such.
fn target<'e>(
    gw: &Gateway,
    decided_under: &'e gavel_engine::Engine,
    decision: &Decision,
) -> ApiResult<(String, &'e Deployment, &'e gavel_contract::Endpoint)> {
    let contract = decided_under.contract();
    let ran_on = route_of(decision);
    let found = contract
        .deployment(&ran_on)
        .and_then(|d| contract.endpoint_of(d).map(|e| (d, e)));
    match found {
        Some((deployment, endpoint)) => Ok((ran_on, deployment, endpoint)),
        None => {
            let why = format!("deployment `{ran_on}` or its endpoint is not in the contract the decision was made under");
            gw.record_outcome(
                decision,
                &ran_on,
                &Usage::default(),
                json!({ "upstream_error": why }),
            );
            Err(ApiError::unavailable(why))
        }
    }
}

fn passthrough(status: StatusCode, body: Bytes, decision: &Decision) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&decision.decision_id) {
        response.headers_mut().insert("x-gavel-decision-id", v);
    }
    response
}

pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = gw.read_body(body).await?;
    let Value::Object(fields) = parse_json(&bytes)? else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object with `model` and `input`",
        ));
    };
    let engine = gw.engine();
    let (deployment_id, model) = deployment_of(&headers, &fields, engine.contract())?;
    // The input is content like any other: scanned, counted, governed.
    let inputs: Vec<String> = match fields.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`input` must be a string or a list of strings",
            ))
        }
    };
    // Transport, like `stream` for chat, so not a parameter to approve; forwarded as sent, so
    // one of the API's two values and nothing else.
    match fields.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(format)) if format == "float" || format == "base64" => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`encoding_format` must be \"float\" or \"base64\"",
            ))
        }
    }
    let request = DecideRequest {
        deployment: deployment_id,
        model,
        content: inputs
            .iter()
            .map(|text| gavel_engine::ContentPart {
                role: gavel_engine::ContentRole::User,
                text: text.clone(),
            })
            .collect(),
        action: gavel_engine::Action {
            kind: gavel_engine::ActionKind::Embeddings,
            name: Some("embeddings".to_string()),
            args: None,
        },
        // `encoding_format` is transport (floats or base64), like `stream` for chat.
        params: fields
            .iter()
            .filter(|(k, _)| !["model", "input", "encoding_format"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        idempotency_key: ascii_header(&headers, "idempotency-key")?,
        // As for chat: a retriever step of a chain, and any call of an agent's run, says so.
        run_id: ascii_header(&headers, "x-gavel-run-id")?,
        step: ascii_header(&headers, "x-gavel-step")?,
        ..DecideRequest::default()
    };
    let request = no_secret_in_identifiers(request)?;
    let request = Arc::new(request);
    ran_to_the_end(async move {
        let ruling = gw.decide_for_call(request.clone(), &caller.principal).await;
        if ruling.decision.verdict != Verdict::Allow {
            return ApiError::from_decision(&ruling.decision, ruling.shown()).into_response();
        }
        embed(gw, caller, ruling, fields, inputs, request)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    })
    .await
}

/// The upstream call of an allowed embeddings request, its answer and its outcome; on an
/// upstream failure, the approved fallback deployment's call, as for chat.
async fn embed(
    gw: Arc<Gateway>,
    caller: KeyRecord,
    ruling: Ruling,
    fields: Map<String, Value>,
    inputs: Vec<String>,
    request: Arc<DecideRequest>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let mut ruling = ruling;
    let mut hops = 0;
    loop {
        let engine = ruling.engine.clone();
        gw.calling(&ruling.decision);
        let (ran_on, deployment, endpoint) = target(&gw, &engine, &ruling.decision)?;
        let body = embeddings_body(&ruling.decision, deployment, &fields, &inputs, &request);
        let reply = gw
            .upstreams
            .call(endpoint, "/embeddings", &body, false)
            .await;
        let failure = match reply {
            Ok(Reply::Whole { status, body }) => {
                return Ok(embedded(
                    &gw,
                    &ruling,
                    &ran_on,
                    status,
                    body,
                    started,
                    hops > 0,
                ))
            }
            Ok(Reply::Stream(_)) => {
                let why = "the endpoint streamed an embeddings answer".to_string();
                gw.record_outcome(
                    &ruling.decision,
                    &ran_on,
                    &as_reserved(&ruling.decision),
                    json!({ "upstream_error": why }),
                );
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream.invalid",
                    why,
                ));
            }
            Err(e) => e,
        };
        hops += 1;
        let failed = Failed {
            ruling: &ruling,
            deployment,
            endpoint: &endpoint.id,
            failure,
            started,
            hops,
            answers: Answers::Vectors,
        };
        match fall_back(&gw, &caller, &request, failed).await {
            FellBack::Deployment(next_ruling) => ruling = *next_ruling,
            FellBack::Ended(response) => return Ok(response),
        }
    }
}

/// The body sent upstream for an embeddings call: the caller's, with the approved model name
/// and the decision's redactions applied to the inputs.
fn embeddings_body(
    decision: &Decision,
    deployment: &Deployment,
    fields: &Map<String, Value>,
    inputs: &[String],
    request: &DecideRequest,
) -> Value {
    let mut body = fields.clone();
    body.insert("model".to_string(), json!(deployment.model.name));
    if let Some(Obligation::Redact { redactions }) = decision
        .obligations
        .iter()
        .find(|o| matches!(o, Obligation::Redact { .. }))
    {
        // An embeddings request has no messages: its inputs are texts 0, 1, ...
        let by_text = spans_by_text(redactions);
        let inputs: Vec<String> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                by_text
                    .get(&i)
                    .map_or_else(|| text.clone(), |spans| redacted(text, 0, spans))
            })
            .collect();
        body.insert("input".to_string(), json!(inputs));
        redact_user(&mut body, request, redactions);
    }
    Value::Object(body)
}

/// An embeddings upstream's whole answer, guarded as chat's are, and its outcome recorded.
fn embedded(
    gw: &Gateway,
    ruling: &Ruling,
    ran_on: &str,
    status: StatusCode,
    body: Bytes,
    started: Instant,
    fallback: bool,
) -> Response {
    let decision = &ruling.decision;
    if !status.is_success() {
        return relay_refusal(gw, decision, ran_on, status, &body, started);
    }
    let Ok(mut reply @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        // The upstream did the work (it answered 2xx) and said nothing of what it used.
        let why = "the endpoint's embeddings answer is not a JSON object".to_string();
        gw.record_outcome(
            decision,
            ran_on,
            &as_reserved(decision),
            json!({ "upstream_status": status.as_u16(), "upstream_error": why }),
        );
        return ApiError::new(StatusCode::BAD_GATEWAY, "upstream.invalid", why).into_response();
    };
    // Settled from the upstream's usage, or counted (the estimate's prompt tokens).
    let usage = usage_of(&reply["usage"]).unwrap_or_else(|| counted(decision, &reply));
    let mut findings = Vec::new();
    let guarded = guard_all_but_vectors(&mut reply, &|| gw.output_guard(), &mut findings);
    // Written again only when a guard found something: else the vectors go as they came.
    let rewrite = !findings.is_empty();
    let mut details = json!({ "upstream_status": status.as_u16(), "latency_ms": started.elapsed().as_millis() as u64, "output_findings": findings, "fallback": fallback });
    if let Err(v) = guarded {
        metrics::output_violation(ran_on, v.code.as_str());
        details["output_violation"] = v.record();
        gw.record_outcome(decision, ran_on, &usage, details);
        return output_refusal(decision, &v).into_response();
    }
    gw.record_outcome(decision, ran_on, &usage, details);
    let body = if rewrite {
        Bytes::from(reply.to_string())
    } else {
        body
    };
    let mut response = passthrough(status, body, decision);
    annotate(response.headers_mut(), ruling, fallback, &Value::Null);
    response
}

/// `GET /v1/models`: the deployments this caller may use now (approved, not killed), as models.
pub async fn models(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
) -> Response {
    // The dry runs read the store, which may wait for the decider's batch: a blocking thread.
    match tokio::task::spawn_blocking(move || usable_models(&gw, &caller)).await {
        Ok(data) => Json(json!({ "object": "list", "data": data })).into_response(),
        Err(e) => ApiError::from(crate::failure::Failure::storage(format!(
            "listing models failed: {e}"
        )))
        .into_response(),
    }
}

fn usable_models(gw: &Gateway, caller: &KeyRecord) -> Vec<Value> {
    let engine = gw.engine();
    let now = crate::context::now();
    let mut data = Vec::new();
    for deployment in engine.contract().deployments.values() {
        let request = DecideRequest {
            deployment: deployment.id.clone(),
            dry_run: true,
            action: gavel_engine::Action {
                kind: gavel_engine::ActionKind::Task,
                name: None,
                args: None,
            },
            ..DecideRequest::default()
        };
        // A dry run consumes nothing and is not recorded: it only asks whether the approval,
        // kill switches and cooldowns would let this caller in.
        let decision = engine.decide(
            &gw.store,
            gavel_engine::DecideInput {
                request: &request,
                principal: &caller.principal,
                decision_id: "models".into(),
                now,
            },
        );
        let usable = decision
            .would_be
            .as_ref()
            .is_some_and(|w| w.verdict == Verdict::Allow);
        if usable {
            data.push(json!({ "id": deployment.id, "object": "model", "created": 0, "owned_by": engine.contract().organization, "gavel": { "model": deployment.model.name, "snapshot": deployment.model.snapshot, "approval_id": decision.approval_id } }));
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_and_keep_the_rest() {
        let mut events = SseEvents::default();
        events.buffer().push_str("data: {\"a\":1}\n\ndata: [DO");
        assert_eq!(events.next(), Some(Some("{\"a\":1}".to_string())));
        assert_eq!(events.next(), None);
        events.buffer().push_str("NE]\r");
        assert_eq!(events.next(), None);
        // A blank line split across reads, and every line ending SSE allows.
        events
            .buffer()
            .push_str("\n\r\n: keep-alive\n\ndata: b\r\rdata: c\r\n\n");
        assert_eq!(events.next(), Some(Some("[DONE]".to_string())));
        assert_eq!(events.next(), Some(None));
        assert_eq!(events.next(), Some(Some("b".to_string())));
        assert_eq!(events.next(), Some(Some("c".to_string())));
        assert_eq!(events.next(), None);
        assert_eq!(events.buffer().as_str(), "");
    }

    /// A redaction of text 0.
    fn span(start: usize, end: usize, placeholder: &str) -> gavel_engine::Redaction {
        gavel_engine::Redaction {
            text_index: 0,
            start,
            end,
            placeholder: placeholder.into(),
        }
    }

    #[test]
    fn redaction_replaces_spans_from_the_end() {
        let parsed: Vec<Message> = serde_json::from_value(
            json!([{ "role": "user", "content": "mail a@b.co and c@d.co" }]),
        )
        .unwrap();
        let mut messages = vec![json!({ "role": "user", "content": "mail a@b.co and c@d.co" })];
        redact_messages(
            &mut messages,
            &parsed,
            &[span(5, 11, "[EMAIL_1]"), span(16, 22, "[EMAIL_2]")],
        );
        assert_eq!(messages[0]["content"], "mail [EMAIL_1] and [EMAIL_2]");
    }

    /// A message given as parts keeps its parts: each text part is redacted where its share
    /// of the message's text lies, and the image goes as it came.
    #[test]
    fn redaction_keeps_a_messages_parts() {
        let content = json!([
            { "type": "text", "text": "mail a@b.co" },
            { "type": "image_url", "image_url": { "url": "https://example.org/x.png" } },
            { "type": "text", "text": "or c@d.co" },
        ]);
        let parsed: Vec<Message> =
            serde_json::from_value(json!([{ "role": "user", "content": content }])).unwrap();
        // The message's text is "mail a@b.co\nor c@d.co".
        assert_eq!(parsed[0].text(), "mail a@b.co\nor c@d.co");
        let mut messages = vec![json!({ "role": "user", "content": content })];
        redact_messages(
            &mut messages,
            &parsed,
            &[span(5, 11, "[EMAIL_1]"), span(15, 21, "[EMAIL_2]")],
        );
        let sent = &messages[0]["content"];
        // A span inside a character cannot come from the scanners: the text is withheld.
        assert_eq!(
            redacted("é@b.co", 0, &[span(1, 3, "[EMAIL_1]")]),
            "[REDACTED]"
        );
        assert_eq!(sent[0]["text"], "mail [EMAIL_1]");
        assert_eq!(sent[1]["image_url"]["url"], "https://example.org/x.png");
        assert_eq!(sent[2]["text"], "or [EMAIL_2]");
    }

    /// Overlapping spans become one; many spans cost one pass over the text, and a text part
    /// takes only the spans that fall in it.
    #[test]
    fn redaction_merges_overlaps_and_is_linear() {
        let by_text = spans_by_text(&[
            span(18, 24, "[EMAIL_2]"),
            span(5, 11, "[EMAIL_1]"),
            span(8, 13, "[SECRET_1]"),
        ]);
        let spans = &by_text[&0];
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].start, spans[0].end), (5, 13));
        assert_eq!(
            redacted("mail a@b.co.. and c@d.co", 0, spans),
            "mail [EMAIL_1] and [EMAIL_2]"
        );
        // The second half of that text, as a part starting at offset 13.
        assert_eq!(redacted(" and c@d.co", 13, spans), " and [EMAIL_2]");
        let text = "a@b.co ".repeat(100_000);
        let many: Vec<_> = (0..100_000)
            .map(|i| span(i * 7, i * 7 + 6, "[EMAIL]"))
            .collect();
        let by_text = spans_by_text(&many);
        let out = redacted(&text, 0, &by_text[&0]);
        assert_eq!(out, "[EMAIL] ".repeat(100_000));
    }

    #[test]
    fn characters_cut_between_reads_are_decoded_whole() {
        let text = "héllo → wörld 🦀".as_bytes();
        for cut_at in 0..=text.len() {
            let (mut decoded, mut cut) = (String::new(), Vec::new());
            decode_utf8_into(&mut decoded, &mut cut, &text[..cut_at]);
            decode_utf8_into(&mut decoded, &mut cut, &text[cut_at..]);
            assert_eq!(decoded, "héllo → wörld 🦀", "cut at {cut_at}");
            assert!(cut.is_empty());
        }
        // Bytes that cannot be UTF-8 become one replacement each; a started character waits.
        let (mut decoded, mut cut) = (String::new(), Vec::new());
        decode_utf8_into(&mut decoded, &mut cut, b"a\xffb\xf0\x9f");
        assert_eq!(
            (decoded.as_str(), cut.as_slice()),
            ("a\u{fffd}b", &b"\xf0\x9f"[..])
        );
    }
}
