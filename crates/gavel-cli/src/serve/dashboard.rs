//! The dashboard: server-rendered HTML for people (SPEC section 9). Every deployment's state
//! and signals against the thresholds it was approved under, breaches, approvals, the ledger's
//! state and its last verification, ledger search, one record, and one deployment's three
//! answers (as `gavel explain`). It reads what the admin API reads, through the same functions;
//! the one thing it does is "verify now".
//!
//! Browsers cannot send a Bearer header, so these routes alone also take the API key as the
//! password of HTTP Basic authentication (see `routes.rs`). Browsers attach Basic credentials
//! to cross-site requests too, so the one POST checks that the form came from the dashboard.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use serde_json::Value;

use gavel_contract::time::Timestamp;
use gavel_contract::{short_hash, Contract};
use gavel_monitor::{Bound, CheckState};
use gavel_store::{KeyRecord, Store};

use super::admin::verify_ledger;
use super::api::blocking;
use super::error::ApiError;
use super::gateway::Gateway;
use crate::cli::ExportArgs;
use crate::cmd::{audit, explain};
use crate::context::now;
use crate::failure::Failure;
use crate::ledger::LedgerState;
use crate::monitoring::{status, DeploymentStatus};

/// Most records one search shows.
const SEARCH_MOST: u64 = 500;
/// Records a search shows unless it asks for another number.
const SEARCH_DEFAULT: u64 = 50;

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1b1f24;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:16px}
main{padding:16px 20px;max-width:1400px}
h2{font-size:15px;margin:24px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px ui-monospace,monospace}
pre{background:#fff;border:1px solid #dde1e6;padding:10px;overflow:auto}
.state{display:inline-block;padding:0 6px;border-radius:3px;font-weight:600;font-size:12px}
.ok{background:#dcf5e3;color:#0f5323}.warn{background:#fff1c2;color:#6b4d00}
.bad{background:#ffdcdc;color:#8a1010}.idle{background:#e8eaed;color:#444}
form.search{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:8px 0}
form.search label{display:flex;flex-direction:column;font-size:12px}
.muted{color:#5b6470}
";

/// A complete page: the layout around `content`, with headers that keep a browser from
/// running, framing or caching anything of it.
fn page(gw: &Gateway, title: &str, content: Markup) -> Response {
    let organization = gw.engine().contract().organization.clone();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gavel" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.brand href="/dashboard" { "gavel" }
                    span { (organization) }
                    a href="/dashboard" { "Overview" }
                    a href="/dashboard/ledger" { "Ledger" }
                }
                main { (content) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page that says what went wrong, in the layout.
fn failed(gw: &Gateway, error: ApiError) -> Response {
    let mut response = page(gw, "Error", html! { h2 { "Error" } p { (error.message) } });
    *response.status_mut() = error.status;
    response
}

/// The last verification of the ledger this gateway ran (through the dashboard or
/// `POST /v1/audit/verify`).
#[derive(Debug, Clone)]
pub struct Verification {
    pub at: Timestamp,
    pub by: String,
    /// What it found: "N records, M checkpoints ..." or why it failed.
    pub outcome: Result<String, String>,
}

/// `GET /dashboard`.
pub async fn overview(State(gw): State<Arc<Gateway>>) -> Response {
    let gathered = blocking({
        let gw = gw.clone();
        move || gather_overview(&gw).map_err(ApiError::from)
    })
    .await;
    match gathered {
        Ok(overview) => page(&gw, "Overview", overview.render(&gw)),
        Err(e) => failed(&gw, e),
    }
}

struct Overview {
    at: Timestamp,
    contract_version: String,
    window: String,
    rows: Vec<DeploymentStatus>,
    approvals: Vec<gavel_engine::Approval>,
    ledger: LedgerState,
}

fn gather_overview(gw: &Gateway) -> Result<Overview, Failure> {
    let engine = gw.engine();
    let contract: &Contract = engine.contract();
    let at = now();
    let windows = gw.monitor.windows(&contract.policy.monitoring);
    let rows = status(contract, &gw.store, &windows, at, None)?;
    let mut approvals = gw.store.all_approvals()?;
    approvals.sort_by_key(|a| std::cmp::Reverse(a.created_at));
    let ledger = LedgerState::of(&*gw.ledger_reader()?)?;
    Ok(Overview {
        at,
        contract_version: contract.version.to_string(),
        window: contract.policy.monitoring.window.to_string(),
        rows,
        approvals,
        ledger,
    })
}

impl Overview {
    fn render(&self, gw: &Gateway) -> Markup {
        let verification = gw
            .last_verification
            .lock()
            .map(|v| v.clone())
            .unwrap_or(None);
        let breaches: Vec<&DeploymentStatus> =
            self.rows.iter().filter(|r| r.breach.is_some()).collect();
        html! {
            p.muted {
                "As of " (self.at) "; contract version " code { (short_hash(&self.contract_version)) }
                "; signals over the last " (self.window) "."
            }
            h2 { "Deployments (" (self.rows.len()) ")" }
            table {
                tr {
                    th { "Deployment" } th { "State" } th { "Use case" } th { "Owner" } th { "Approval" }
                    th { "Decisions" } th { "p99" } th { "Errors" } th { "Abuse" } th { "Fallback" }
                    th { "Accuracy" } th { "Spend" } th { "Thresholds" }
                }
                @for row in &self.rows {
                    (deployment_row(row))
                }
            }
            h2 { "Breaches (" (breaches.len()) ")" }
            @if breaches.is_empty() {
                p.muted { "No deployment is in breach." }
            } @else {
                table {
                    tr { th { "Deployment" } th { "Breach" } th { "Threshold" } th { "Value" } th { "Limit" } th { "Since" } th { "On breach" } th { "Until" } }
                    @for row in &breaches {
                        @if let Some(b) = &row.breach {
                            tr {
                                td { (row.deployment) } td { code { (b.id) } } td { (b.threshold) }
                                td.num { (format!("{:.4}", b.value)) } td.num { (b.limit) } td { (b.since) }
                                td { (serde_json::to_string(&b.on_breach).unwrap_or_default()) }
                                td { (b.until.map(|u| u.to_string()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
            h2 { "Approvals (" (self.approvals.len()) ")" }
            table {
                tr { th { "Approval" } th { "Deployment" } th { "State" } th { "Population" } th { "Signed by" } th { "Thresholds" } th { "Granted" } th { "Expires" } }
                @for a in &self.approvals {
                    tr {
                        td { a href=(format!("/dashboard/ledger?approval={}", urlencode(&a.id))) { code { (a.id) } } }
                        td { (a.deployment) }
                        td { (badge(a.state_at(self.at))) }
                        td { (a.population) }
                        td {
                            @for (i, s) in a.signoffs.iter().enumerate() {
                                @if i > 0 { ", " }
                                (s.principal)
                                @if let Some(role) = &s.approver_role { " (" (role) ")" }
                            }
                        }
                        td { @for (name, limit) in &a.thresholds { (name) " " (limit) " " } }
                        td { (a.created_at) }
                        td { (a.expires_at) }
                    }
                }
            }
            h2 { "Ledger" }
            p {
                (self.ledger.records) " records; "
                @match self.ledger.newest_checkpoint {
                    Some((seq, size)) => { "newest signed checkpoint #" (seq) " covers " (size) " records. " }
                    None => { "no signed checkpoint yet. " }
                }
                @match gw.ledger.failure() {
                    Some(why) => { span.state.bad { "STOPPED" } " " (why) }
                    None => { span.state.ok { "accepting records" } }
                }
            }
            p {
                "Last verification: "
                @match &verification {
                    None => { span.muted { "none since this gateway started." } }
                    Some(v) => {
                        @match &v.outcome {
                            Ok(summary) => { span.state.ok { "OK" } " " (summary) }
                            Err(why) => { span.state.bad { "FAILED" } " " (why) }
                        }
                        span.muted { " (at " (v.at) ", by " (v.by) ")" }
                    }
                }
            }
            form method="post" action="/dashboard/verify" {
                button type="submit" { "Verify the ledger now" }
                span.muted { " re-derives every leaf, the tree, every checkpoint signature" }
            }
            (search_form(&Search::default()))
        }
    }
}

fn deployment_row(row: &DeploymentStatus) -> Markup {
    let s = &row.signals;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    html! {
        tr {
            td { a href=(format!("/dashboard/deployments/{}", urlencode(&row.deployment))) { (row.deployment) } }
            td { (badge(row.state)) }
            td { (row.use_case) }
            td { (row.owner) }
            td {
                @match row.approval.as_ref().and_then(|a| a["id"].as_str()) {
                    Some(id) => { code { (id) } }
                    None => { "-" }
                }
            }
            td.num { (s.decisions) }
            td.num { (s.latency_ms.as_ref().map_or("-".to_string(), |l| format!("{:.0} ms", l.p99))) }
            td.num { (pct(s.error_rate)) }
            td.num { (pct(s.abuse_rate)) }
            td.num { (pct(s.fallback_rate)) }
            td.num { (s.accuracy.map_or("-".to_string(), |a| format!("{a:.3}"))) }
            td.num { (format!("${:.4}", s.spend_usd)) }
            td {
                @for c in &row.checks {
                    div {
                        (c.threshold) " "
                        (c.value.map_or("-".to_string(), |v| format!("{v:.4}")))
                        (match c.bound { Bound::Max => " ≤ ", Bound::Min => " ≥ " })
                        (c.limit) " "
                        @match c.state {
                            CheckState::Within => span.state.ok { "ok" },
                            CheckState::Breached => span.state.bad { "BREACH" },
                            CheckState::Insufficient => span.state.idle { "n=" (c.samples) },
                        }
                    }
                }
            }
        }
    }
}

/// A state or verdict, coloured by what it asks of the reader.
fn badge(state: &str) -> Markup {
    let class = match state {
        "serving" | "active" | "ok" | "ALLOW" => "ok",
        "cooldown" | "probing" | "fallback" | "pending" | "COOLDOWN" | "NO_OP" => "warn",
        "blocked" | "killed" | "revoked" | "expired" | "unapproved" | "BLOCK" => "bad",
        _ => "idle",
    };
    html! { span class=(format!("state {class}")) { (state) } }
}

/// The ledger search, as the form sends it: empty fields are no filter, and parameters it does
/// not know (a link's tracking parameters) are ignored rather than answered with a blank page.
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    deployment: String,
    #[serde(default)]
    approval: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    limit: String,
    /// Only records below this leaf index: the page after one that ended there.
    #[serde(default)]
    before: String,
}

impl Search {
    fn export_args(&self) -> Result<ExportArgs, Failure> {
        let given = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
        let limit = match given(&self.limit) {
            None => SEARCH_DEFAULT,
            Some(n) => n
                .parse::<u64>()
                .map_err(|_| Failure::invalid(format!("limit `{n}` is not a number of records")))?,
        };
        let before = given(&self.before)
            .map(|n| {
                n.parse::<u64>()
                    .map_err(|_| Failure::invalid(format!("before `{n}` is not a leaf index")))
            })
            .transpose()?;
        Ok(ExportArgs {
            deployment: given(&self.deployment),
            approval: given(&self.approval),
            principal: given(&self.principal),
            reason: given(&self.reason),
            kind: given(&self.kind),
            from: given(&self.from),
            to: given(&self.to),
            limit: Some(limit.clamp(1, SEARCH_MOST)),
            after: None,
            before,
        })
    }

    /// The link to the page of older records after a full page whose oldest record is `last`.
    fn older_than(&self, last: u64) -> String {
        let fields = [
            ("deployment", &self.deployment),
            ("approval", &self.approval),
            ("principal", &self.principal),
            ("reason", &self.reason),
            ("kind", &self.kind),
            ("from", &self.from),
            ("to", &self.to),
            ("limit", &self.limit),
        ];
        let mut query: Vec<String> = fields
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(name, value)| format!("{name}={}", urlencode(value.trim())))
            .collect();
        query.push(format!("before={last}"));
        format!("/dashboard/ledger?{}", query.join("&"))
    }
}

fn search_form(search: &Search) -> Markup {
    let field = |name: &'static str, label: &'static str, value: &str, hint: &'static str| {
        html! { label { (label) input name=(name) value=(value) placeholder=(hint); } }
    };
    html! {
        h2 { "Search the ledger" }
        form.search method="get" action="/dashboard/ledger" {
            (field("deployment", "Deployment", &search.deployment, "kb-search-v1"))
            (field("approval", "Approval", &search.approval, "apr_…"))
            (field("principal", "Principal", &search.principal, "svc-support"))
            (field("reason", "Reason code", &search.reason, "privacy.pii"))
            (field("kind", "Kind", &search.kind, "decision"))
            (field("from", "From", &search.from, "2026-11-01"))
            (field("to", "To", &search.to, "RFC 3339 or date"))
            (field("limit", "Newest", &search.limit, "50"))
            button type="submit" { "Search" }
        }
    }
}

/// `GET /dashboard/ledger?...`: the newest records that match, newest first.
pub async fn ledger(State(gw): State<Arc<Gateway>>, Query(search): Query<Search>) -> Response {
    let args = search.export_args();
    let found = blocking({
        let gw = gw.clone();
        move || search_ledger(&gw, args).map_err(ApiError::from)
    })
    .await;
    let (found, more) = match found {
        Ok(found) => found,
        Err(e) => return failed(&gw, e),
    };
    page(
        &gw,
        "Ledger",
        html! {
            (search_form(&search))
            h2 { (found.len()) " record(s), newest first"
                @if let Ok(before) = search.before.trim().parse::<u64>() { ", below leaf " (before) } }
            table {
                tr { th { "Leaf" } th { "Time" } th { "Kind" } th { "Id" } th { "Deployment" } th { "Principal" } th { "Verdict" } th { "Reasons" } }
                @for entry in &found {
                    @let body = &entry.record.body;
                    tr {
                        td.num { (entry.index) }
                        td { (Timestamp(entry.record.at_ms)) }
                        td { (entry.record.kind.as_str()) }
                        td { a href=(format!("/dashboard/records/{}", urlencode(&entry.record.id))) { code { (entry.record.id) } } }
                        td { (text_of(body, "deployment")) }
                        td { (text_of(body, "principal")) }
                        td { @if let Some(v) = body["verdict"].as_str() { (badge(v)) } }
                        td { (reason_codes(body)) }
                    }
                }
            }
            @if let (Some(last), true) = (found.last(), more) {
                p { a href=(search.older_than(last.index)) { "Older records →" } }
            }
        },
    )
}

/// The newest records that match, and whether older ones match too (one more is read to know).
fn search_ledger(
    gw: &Gateway,
    args: Result<ExportArgs, Failure>,
) -> Result<(Vec<gavel_ledger_sqlite::LedgerEntry>, bool), Failure> {
    let mut filter = audit::export_filter(&args?)?;
    filter.newest_first = true;
    let page = filter.limit.unwrap_or(SEARCH_DEFAULT);
    filter.limit = Some(page + 1);
    let mut found = gw
        .ledger_reader()?
        .query(&filter)
        .map_err(|e| Failure::storage(format!("the search failed: {e}")))?;
    let more = found.len() as u64 > page;
    found.truncate(page as usize);
    Ok((found, more))
}

fn text_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key].as_str().unwrap_or_default()
}

fn reason_codes(body: &Value) -> String {
    body["reason_codes"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `GET /dashboard/records/{id}`: one record as stored, with its leaf index.
pub async fn record(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let found = blocking({
        let (gw, id) = (gw.clone(), id.clone());
        move || record_by_id(&gw, &id).map_err(ApiError::from)
    })
    .await;
    match found {
        Ok(entry) => {
            let pretty = serde_json::to_string_pretty(&entry.record.body).unwrap_or_default();
            page(
                &gw,
                &id,
                html! {
                    h2 { (entry.record.kind.as_str()) " " code { (id) } }
                    p {
                        "Leaf " (entry.index) ", at " (Timestamp(entry.record.at_ms))
                        ". An inclusion proof: " code { "gavel audit prove " (id) } " or "
                        code { "GET /v1/audit/proof/" (id) } "."
                    }
                    pre { (pretty) }
                },
            )
        }
        Err(e) => failed(&gw, e),
    }
}

fn record_by_id(gw: &Gateway, id: &str) -> Result<gavel_ledger_sqlite::LedgerEntry, Failure> {
    gw.ledger_reader()?
        .record_by_id(id)
        .map_err(Failure::storage)?
        .ok_or_else(|| Failure::invalid(format!("no ledger record with id `{id}`")))
}

/// `GET /dashboard/deployments/{id}`: the three questions, answered as `gavel explain` does.
pub async fn deployment(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let answered = blocking({
        let (gw, id) = (gw.clone(), id.clone());
        move || explained(&gw, &id).map_err(ApiError::from)
    })
    .await;
    match answered {
        Ok(text) => page(
            &gw,
            &id,
            html! {
                h2 { (id) }
                pre { (text) }
                p { a href=(format!("/dashboard/ledger?deployment={}", urlencode(&id))) { "Its records in the ledger" } }
            },
        ),
        Err(e) => failed(&gw, e),
    }
}

fn explained(gw: &Gateway, id: &str) -> Result<String, Failure> {
    let engine = gw.engine();
    let contract = engine.contract();
    let sink = gw.ledger_reader()?;
    let window = contract.policy.monitoring.window.to_string();
    Ok(explain::gather(contract, &gw.store, &sink, id)?.text(&window))
}

/// `POST /dashboard/verify`: verifies the ledger, then shows the overview with the result.
pub async fn verify(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<KeyRecord>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers) {
        return failed(
            &gw,
            ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site",
                "the verification was asked for by another site's page; use the button on the dashboard",
            ),
        );
    }
    if let Err(e) = verify_ledger(gw.clone(), caller.principal).await {
        return failed(&gw, e);
    }
    Redirect::to("/dashboard").into_response()
}

/// Whether a browser's POST came from a page of this gateway: the fetch metadata say so, or
/// the `Origin` names the host it was sent to. A request with neither is not a browser's
/// (browsers send `Origin` with every POST), so no page of another site made it.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
    }
}

/// `text` for a URL's query or path segment: every byte but unreserved ones percent-encoded.
fn urlencode(text: &str) -> String {
    // RFC 3986's unreserved characters stay as they are.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_page_of_this_gateway_may_post() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "h")])));
        assert!(same_origin(&headers(&[])), "curl sends no Origin");
    }

    #[test]
    fn urls_carry_any_id() {
        assert_eq!(urlencode("kb-search_v1.2~"), "kb-search_v1.2~");
        assert_eq!(urlencode("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }
}
