//! Every route in one table: method, path, the roles allowed, a summary. The router, the
//! authorisation layer and `/openapi.json` are all built from it, so the document cannot drift
//! from what is served and no route can be added without saying who may call it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use gavel_store::Role;

use super::gateway::{bearer, Gateway};
use super::{admin, api, dashboard, proxy};

/// Who may call a route; empty means public (health, readiness, metrics, the API document).
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub roles: &'static [Role],
    pub summary: &'static str,
}

const SERVICE: &[Role] = &[Role::Service];
const READERS: &[Role] = &[Role::Auditor, Role::Approver, Role::Operator, Role::Admin];
const PUBLIC: &[Role] = &[];

macro_rules! route {
    ($method:ident, $path:literal, $roles:expr, $summary:literal, $handler:expr) => {
        (
            RouteDoc {
                method: stringify!($method),
                path: $path,
                roles: $roles,
                summary: $summary,
            },
            $method($handler),
        )
    };
}

pub fn table() -> Vec<(RouteDoc, MethodRouter<Arc<Gateway>>)> {
    vec![
        route!(get, "/healthz", PUBLIC, "Liveness: the process is up.", api::healthz),
        route!(get, "/readyz", PUBLIC, "Readiness: the contract and the ledger are loaded.", api::readyz),
        route!(get, "/metrics", PUBLIC, "Prometheus metrics.", api::metrics),
        route!(get, "/openapi.json", PUBLIC, "This document.", openapi),
        route!(get, "/v1/audit/pubkey", PUBLIC, "The ledger's checkpoint verification key (a C2SP note verifier key).", admin::pubkey),
        route!(post, "/v1/chat/completions", SERVICE, "OpenAI-compatible chat completions (streamed or not), governed: decided and recorded before the upstream is called, output scanned before it is released.", proxy::chat_completions),
        route!(post, "/v1/embeddings", SERVICE, "OpenAI-compatible embeddings, governed.", proxy::embeddings),
        route!(get, "/v1/models", SERVICE, "The deployments the caller may use now, as models.", proxy::models),
        route!(post, "/v1/decide", SERVICE, "Decide any action (inference, tool call, task): the decide request of docs/decide.md; answers the decision with its ledger receipt.", api::decide),
        route!(post, "/v1/outcome", SERVICE, "Settle a decision's reserved budget with the actual usage; recorded.", api::outcome),
        route!(post, "/v1/feedback", SERVICE, "Report an accuracy proxy for a decision (a score in [0,1] and/or a label, features); recorded.", api::feedback),
        route!(get, "/v1/status", READERS, "Every deployment's state (serving, cooldown, probing, fallback, blocked, killed, unapproved), its signals against its approved thresholds, approval and owner, as `gavel status --json`.", admin::status),
        route!(get, "/v1/explain/{deployment}", READERS, "The auditor's three questions for one deployment.", admin::explain),
        route!(get, "/v1/admin/keys", &[Role::Admin], "List API keys (never the keys themselves).", admin::list_keys),
        route!(post, "/v1/admin/keys", &[Role::Admin], "Create an API key: {principal, role, approver_role?}; the key is in the answer, once.", admin::create_key),
        route!(post, "/v1/admin/keys/{id}/revoke", &[Role::Admin], "Revoke an API key.", admin::revoke_key),
        route!(get, "/v1/admin/approvals", READERS, "List approvals with their state.", admin::list_approvals),
        route!(post, "/v1/admin/approvals", &[Role::Approver], "Request or grant an approval: a signoff on a deployment's current binding ({deployment, population?, expires?, on_breach?, thresholds?, evidence?}, as `gavel approve`).", admin::approve),
        route!(post, "/v1/admin/approvals/{id}/revoke", &[Role::Approver], "Revoke an approval: {reason}.", admin::revoke_approval),
        route!(post, "/v1/admin/baselines", &[Role::Approver], "Record a drift baseline with the deployment's approval: {deployment, rows: [{feature: value}], label?} or {deployment, from, to} (a traffic window), as `gavel baseline`.", admin::baseline),
        route!(post, "/v1/admin/kill", &[Role::Operator], "Set a kill switch: {deployment | use_case | all, reason, for?}.", admin::kill),
        route!(post, "/v1/admin/unkill", &[Role::Operator], "Lift a kill switch: {deployment | use_case | all}.", admin::unkill),
        route!(get, "/v1/audit/records", READERS, "Ledger records as JSON Lines, oldest first; query: deployment, approval, principal, reason, kind, from, to, limit, after, before (leaf index bounds, for paging).", admin::records),
        route!(get, "/v1/audit/records/{id}", READERS, "One ledger record by id.", admin::record),
        route!(get, "/v1/audit/proof/{id}", READERS, "An inclusion proof for a record plus the signed checkpoint, checkable with the public key alone.", admin::proof),
        route!(post, "/v1/admin/evidence", READERS, "An evidence pack for a deployment (EU AI Act Annex IV, NIST AI RMF), as `gavel evidence`: {deployment, from?, to?}; its files in the answer (text, or base64), its manifest's digest recorded in the ledger.", admin::evidence),
        route!(post, "/v1/audit/verify", READERS, "Re-derive every leaf, the tree and every checkpoint signature.", admin::verify),
        route!(get, "/dashboard", READERS, "The dashboard (HTML): deployments and their signals against their thresholds, breaches, approvals, the ledger and its last verification. Also takes the key as the password of HTTP Basic authentication.", dashboard::overview),
        route!(get, "/dashboard/ledger", READERS, "The dashboard's ledger search (HTML), newest first; query: deployment, approval, principal, reason, kind, from, to, limit, before (a leaf index: the next page).", dashboard::ledger),
        route!(get, "/dashboard/records/{id}", READERS, "One ledger record (HTML).", dashboard::record),
        route!(get, "/dashboard/deployments/{deployment}", READERS, "One deployment's three answers, as `gavel explain` (HTML).", dashboard::deployment),
        route!(post, "/dashboard/verify", READERS, "Verify the ledger from the dashboard (a form; refused when another site's page sends it), then show the overview.", dashboard::verify),
    ]
}

/// The router: every route behind its authorisation check.
pub fn router(gw: Arc<Gateway>) -> Router {
    let mut router = Router::new();
    for (doc, handler) in table() {
        let route: Arc<str> = format!("{} {}", doc.method.to_uppercase(), doc.path).into();
        let handler = handler.route_layer(middleware::from_fn_with_state(
            (gw.clone(), doc.roles, route),
            authorize,
        ));
        router = router.route(doc.path, handler);
    }
    router
        .fallback(|| async {
            super::error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route; GET /openapi.json lists them",
            )
        })
        .with_state(gw)
}

/// The gateway, the roles a route allows, and the route as `METHOD /path` for refusals.
type Guard = (Arc<Gateway>, &'static [Role], Arc<str>);

/// Checks the caller's key against the route's roles and hands the key record to the handler.
/// The dashboard's routes also take the key as HTTP Basic authentication's password (a
/// browser cannot send a Bearer header), and ask a browser without one to sign in.
async fn authorize(
    State((gw, roles, route)): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    if roles.is_empty() {
        return next.run(request).await;
    }
    let dashboard = route.contains(" /dashboard");
    let key = match bearer(request.headers()).map(str::to_string) {
        None if dashboard => basic_password(request.headers()),
        key => key,
    };
    match gw.authorize(key.as_deref(), roles, &format!("`{route}`")) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) if dashboard && refused.status == StatusCode::UNAUTHORIZED => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                format!(
                    "{}; in a browser, sign in with the key as the password (the user name is not read)",
                    refused.message
                ),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gavel\", charset=\"UTF-8\""),
            );
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// The password of `Authorization: Basic base64(user:password)`, or the user name when the
/// password is empty (`curl -u KEY:`).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (user, password) = credentials.split_once(':')?;
    Some(if password.is_empty() { user } else { password }.to_string())
}

/// OpenAPI 3.1, generated from the route table.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (doc, _) in table() {
        // axum's `{param}` path syntax is OpenAPI's too.
        let entry = paths.entry(doc.path).or_insert_with(|| json!({}));
        let params: Vec<Value> = doc
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let roles: Vec<&str> = doc.roles.iter().map(|r| r.as_str()).collect();
        let mut operation = json!({
            "summary": doc.summary,
            "parameters": params,
            "x-gavel-roles": roles,
            "responses": {
                "200": { "description": "OK" },
                "400": { "description": "Bad request: what was wrong, in OpenAI's error shape", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if !doc.roles.is_empty() {
            operation["security"] = json!([{ "bearer": [] }]);
            operation["responses"]["401"] = json!({ "description": "No valid API key" });
            operation["responses"]["403"] = json!({ "description": "The key's role may not call this route, or governance refused (BLOCK)" });
        }
        if doc.method == "post" {
            operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        entry[doc.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "gavel", "version": env!("CARGO_PKG_VERSION"), "description": "Runtime governance gateway: OpenAI-compatible proxy, decide API, admin API. Reason codes: docs/reasons.md." },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "properties": {
                "message": { "type": "string" }, "type": { "type": "string" }, "code": { "type": "string", "description": "gavel's reason code" }, "decision_id": { "type": "string" } } } } } },
        },
    })
}

async fn openapi() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_roles() {
        let doc = document();
        let mut seen = std::collections::BTreeSet::new();
        for (route, _) in table() {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
            let op = &doc["paths"][route.path][route.method];
            assert_eq!(op["summary"], route.summary);
            assert_eq!(
                op["x-gavel-roles"].as_array().map(Vec::len),
                Some(route.roles.len())
            );
        }
        // The data path is for services only: an admin key there changes nothing.
        for path in ["/v1/chat/completions", "/v1/decide", "/v1/embeddings"] {
            assert_eq!(
                doc["paths"][path]["post"]["x-gavel-roles"],
                json!(["service"])
            );
        }
    }
}
