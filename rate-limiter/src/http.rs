//! The gate's HTTP API (axum), described by `GET /api/v1/openapi.json`. Every route but
//! `/healthz` and the document needs a bearer token: viewers read, requesters ask for, renew and
//! release their own permits and step changes, operators release any permit, halt, resume and
//! reset breakers, admins reload the policy. Errors are JSON `{"error": …}`; 5xx details go to
//! the log, not to the caller.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, Path, Query, Request, State,
        rejection::{JsonRejection, PathRejection},
    },
    http::{Method, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, post},
};
use firebreak_plumbing::auth::{Caller, Guard, Tokens, require};
use firebreak_schema::{ChangeRequest, HaltRequest, Operation, PermitRequest, Phase, Role, Scope, Verdict};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use prometheus_client::encoding::text::encode;
use serde::Deserialize;
use uuid::Uuid;

use crate::{Error, Gate};

/// Largest request body the gate reads.
const BODY_LIMIT: usize = 16 * 1024;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = match &self {
            Error::BadRequest(_) | Error::Policy(_) => StatusCode::BAD_REQUEST,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Gone(_) => StatusCode::GONE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
            "internal error; see the gate's log".to_owned()
        } else {
            self.to_string()
        };
        (code, Json(serde_json::json!({"error": message}))).into_response()
    }
}

/// A JSON object body whose rejections are JSON errors too. It is read as an object first:
/// serde would take an array's items for a struct's fields, in order.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let object = match Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, state).await {
            Ok(Json(o)) => o,
            Err(e) => {
                let code = match e {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                return Err((code, Json(serde_json::json!({"error": e.body_text()}))).into_response());
            }
        };
        serde_json::from_value(serde_json::Value::Object(object)).map(Body).map_err(|e| {
            Error::BadRequest(format!("Failed to deserialize the JSON body into the target type: {e}")).into_response()
        })
    }
}

/// A path's parameters, or a 400 that says which is wrong (a JSON error, as every other).
type P<T> = Result<Path<T>, PathRejection>;

fn path<T>(p: P<T>) -> Result<T, Error> {
    p.map(|Path(t)| t).map_err(|e| Error::BadRequest(e.body_text()))
}

/// Requests per token, when the policy limits them.
type Limiter = Option<Arc<DefaultKeyedRateLimiter<String>>>;

/// 429 with `Retry-After` for a token over its request rate.
async fn limit_requests(
    State(limiter): State<Limiter>,
    Extension(caller): Extension<Caller>,
    req: Request,
    next: middleware::Next,
) -> Response {
    if let Some(limiter) = &limiter
        && let Err(not_until) = limiter.check_key(&caller.name)
    {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let secs = wait.as_secs() + 1;
        tracing::warn!(token = %caller.name, retry_after_s = secs, "token over its request rate");
        let body = serde_json::json!({"error": format!(
            "token `{}` is over its request rate; retry in {:.1}s", caller.name, wait.as_secs_f64()
        )});
        let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    }
    next.run(req).await
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: liveness and the API's own description.
    Open,
    /// A bearer token of this role or a higher one, within the policy's request rate per token.
    Token(Role),
    /// Flagger's webhook: a known token in the `Authorization` header or in `metadata.token`.
    Hook,
}

/// Every route: method, path, who may call it, and its handler. The router is built from this
/// table and the OpenAPI document is checked against it.
pub(crate) fn routes() -> Vec<(Method, &'static str, Access, MethodRouter<Arc<Gate>>)> {
    use Access::{Hook, Open, Token};
    use Role::{Admin, Operator, Requester, Viewer};
    vec![
        (Method::GET, "/healthz", Open, get(|| async { "ok" })),
        (Method::GET, "/api/v1/openapi.json", Open, get(openapi)),
        (Method::GET, "/metrics", Token(Viewer), get(metrics)),
        (Method::GET, "/api/v1/status", Token(Viewer), get(status)),
        (Method::GET, "/api/v1/verdict", Token(Viewer), get(verdict)),
        (Method::GET, "/api/v1/permits", Token(Viewer), get(list_permits)),
        (Method::POST, "/api/v1/permits", Token(Requester), post(request_permit)),
        (Method::POST, "/api/v1/permits/{id}/renew", Token(Requester), post(renew_permit)),
        (Method::DELETE, "/api/v1/permits/{id}", Token(Requester), delete(release_permit)),
        (Method::GET, "/api/v1/decisions", Token(Viewer), get(list_decisions)),
        (Method::GET, "/api/v1/halts", Token(Viewer), get(list_halts)),
        (Method::POST, "/api/v1/halts", Token(Operator), post(halt)),
        (Method::POST, "/api/v1/halts/{id}/resume", Token(Operator), post(resume)),
        (Method::POST, "/api/v1/breakers/reset", Token(Operator), post(reset_breaker)),
        (Method::GET, "/api/v1/changes", Token(Viewer), get(list_changes)),
        (Method::POST, "/api/v1/changes", Token(Requester), post(register_change)),
        (Method::GET, "/api/v1/changes/{id}", Token(Viewer), get(get_change)),
        (Method::POST, "/api/v1/changes/{id}/batches/{n}/begin", Token(Requester), post(begin_batch)),
        (Method::POST, "/api/v1/changes/{id}/batches/{n}/complete", Token(Requester), post(complete_batch)),
        (Method::POST, "/api/v1/changes/{id}/resume", Token(Operator), post(resume_change)),
        (Method::POST, "/api/v1/changes/{id}/abort", Token(Operator), post(abort_change)),
        (Method::POST, "/api/v1/policy/reload", Token(Admin), post(reload)),
        (Method::POST, "/api/v1/webhooks/flagger", Hook, post(flagger)),
    ]
}

/// The gate's HTTP API.
pub fn router(gate: Arc<Gate>, tokens: Arc<Tokens>) -> Router {
    let limiter: Limiter = gate
        .policy()
        .api_rate_per_token
        .map(|r| Arc::new(RateLimiter::keyed(Quota::per_second(r.per_second).allow_burst(r.burst))));
    let mut open = Router::new();
    let mut guarded: BTreeMap<Role, Router<Arc<Gate>>> = BTreeMap::new();
    for (_, path, access, handler) in routes() {
        match access {
            Access::Token(role) => {
                let r = guarded.entry(role).or_default();
                *r = std::mem::take(r).route(path, handler);
            }
            Access::Open | Access::Hook => open = open.route(path, handler),
        }
    }
    for (role, routes) in guarded {
        // Layers run outside in: the token is checked first, then its request rate.
        let routes = routes
            .route_layer(middleware::from_fn_with_state(limiter.clone(), limit_requests))
            .route_layer(middleware::from_fn_with_state(Guard { tokens: tokens.clone(), role }, require));
        open = open.merge(routes);
    }
    open.layer(Extension(tokens)).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(gate)
}

/// The OpenAPI 3.1 document of this API.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn register_change(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<ChangeRequest>,
) -> Result<Response, Error> {
    Ok((StatusCode::CREATED, Json(gate.register_change(req, &caller).await?)).into_response())
}

async fn begin_batch(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<(String, u32)>,
) -> Result<Response, Error> {
    let (id, n) = path(p)?;
    Ok(Json(gate.begin_batch(&id, n, &caller).await?).into_response())
}

async fn complete_batch(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<(String, u32)>,
) -> Result<Response, Error> {
    let (id, n) = path(p)?;
    Ok(Json(gate.complete_batch(&id, n, &caller).await?).into_response())
}

async fn resume_change(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<String>,
) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.resume_change(&id, &caller).await?).into_response())
}

async fn abort_change(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<String>,
) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.abort_change(&id, &caller).await?).into_response())
}

async fn get_change(State(gate): State<Arc<Gate>>, p: P<String>) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.change(&id).await?).into_response())
}

async fn list_changes(
    State(gate): State<Arc<Gate>>,
    q: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = q.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(gate.changes(q.limit.unwrap_or(100)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictQuery {
    cluster: String,
    change: Option<String>,
}

/// The verdict on a cluster — or on a change's batch in progress, against its baseline — for
/// Argo Rollouts' `web` metric provider: `successCondition: result.verdict == "Successful"`.
/// A halt in force that stops `canary_batch` in the cluster, or a halted change, is `Failed`.
async fn verdict(
    State(gate): State<Arc<Gate>>,
    q: Result<Query<VerdictQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = q.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(judge(&gate, &q.cluster, q.change.as_deref()).await?).into_response())
}

async fn judge(gate: &Gate, cluster: &str, change: Option<&str>) -> Result<Verdict, Error> {
    if !firebreak_schema::names::is_dns1123_subdomain(cluster) {
        return Err(Error::BadRequest(format!("cluster `{}` is not a DNS-1123 name", cluster.escape_debug())));
    }
    let mut baseline = Vec::new();
    let mut halted = None;
    if let Some(id) = change {
        let c = gate.change(id).await?;
        if c.spec.cluster != cluster {
            return Err(Error::NotFound(format!("no change {id} in cluster {cluster} (it is in {})", c.spec.cluster)));
        }
        if c.state == firebreak_schema::ChangeState::Halted || c.state == firebreak_schema::ChangeState::Aborted {
            halted = Some(format!("change {id} is {}: {}", c.state.as_str(), c.reason.unwrap_or_default()));
        }
        baseline = c.history.last().map(|b| b.baseline.clone()).unwrap_or_default();
    }
    let mut v = gate.verdict(cluster, &baseline, Some(Operation::CanaryBatch));
    let scope = Scope::cluster(cluster);
    if halted.is_none()
        && let Some(h) =
            gate.halts().await?.into_iter().find(|h| h.stops(Operation::CanaryBatch) && h.scope.contains(&scope))
    {
        halted = Some(format!("{} is halted since {} by {}: {}", h.scope, h.at.to_rfc3339(), h.by, h.reason));
    }
    if let Some(why) = halted {
        v.verdict = Phase::Failed;
        v.reason = format!("{why}; health now: {}", v.reason);
    }
    Ok(v)
}

/// Flagger's webhook payload.
#[derive(Deserialize)]
struct FlaggerHook {
    name: String,
    namespace: String,
    #[serde(default)]
    phase: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Flagger's webhooks (`confirm-rollout`, `pre-rollout`, `confirm-promotion`, `rollout`, ...):
/// 200 to proceed, 403 with the reason to hold. For a `rollback` hook the sense is Flagger's:
/// 200 rolls the canary back (the verdict failed), 403 lets it go on. The cluster comes from
/// `metadata.cluster` (and an optional `metadata.change`). Flagger sends no headers, so the
/// viewer token may come as `metadata.token` when there is no `Authorization` header.
async fn flagger(
    State(gate): State<Arc<Gate>>,
    Extension(tokens): Extension<Arc<Tokens>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let hook: FlaggerHook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return Error::BadRequest(format!("not a Flagger webhook payload: {e}")).into_response(),
    };
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(caller) = bearer.or_else(|| hook.metadata.get("token").cloned()).and_then(|t| tokens.check(&t)) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "a known token is needed (Authorization header or metadata.token)"})),
        )
            .into_response();
    };
    let Some(cluster) = hook.metadata.get("cluster") else {
        return Error::BadRequest("metadata.cluster names no cluster".into()).into_response();
    };
    let v = match judge(&gate, cluster, hook.metadata.get("change").map(String::as_str)).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    tracing::info!(canary = %format!("{}/{}", hook.namespace, hook.name), phase = %hook.phase, hook = %hook.kind,
        %cluster, verdict = v.verdict.as_str(), token = %caller.name, "Flagger asked");
    let healthy = v.verdict == Phase::Successful;
    let proceed = if hook.kind == "rollback" { !healthy } else { healthy };
    let code = if proceed { StatusCode::OK } else { StatusCode::FORBIDDEN };
    (code, Json(serde_json::json!({"verdict": v.verdict, "reason": v.reason, "signals": v.signals}))).into_response()
}

async fn request_permit(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<PermitRequest>,
) -> Result<Response, Error> {
    Ok(Json(gate.request(req, &caller).await?).into_response())
}

async fn renew_permit(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<Uuid>,
) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.renew(id, &caller).await?).into_response())
}

async fn release_permit(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<Uuid>,
) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.release(id, &caller).await?).into_response())
}

async fn list_permits(State(gate): State<Arc<Gate>>) -> Result<Response, Error> {
    Ok(Json(gate.permits().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<i64>,
}

async fn list_decisions(
    State(gate): State<Arc<Gate>>,
    q: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = q.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(gate.decisions(q.limit.unwrap_or(100)).await?).into_response())
}

async fn status(State(gate): State<Arc<Gate>>) -> Result<Response, Error> {
    Ok(Json(gate.status().await?).into_response())
}

async fn list_halts(State(gate): State<Arc<Gate>>) -> Result<Response, Error> {
    Ok(Json(gate.halts().await?).into_response())
}

async fn halt(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<HaltRequest>,
) -> Result<Response, Error> {
    Ok((StatusCode::CREATED, Json(gate.halt(&req, &caller).await?)).into_response())
}

async fn resume(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    p: P<Uuid>,
) -> Result<Response, Error> {
    let id = path(p)?;
    Ok(Json(gate.resume(id, &caller).await?).into_response())
}

/// `POST /api/v1/breakers/reset` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBreaker {
    operation: Operation,
    scope: Scope,
}

async fn reset_breaker(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<ResetBreaker>,
) -> Result<Response, Error> {
    let n = gate.reset_breaker(req.operation, &req.scope, &caller).await?;
    Ok(Json(serde_json::json!({"reset": n})).into_response())
}

async fn reload(State(gate): State<Arc<Gate>>, Extension(caller): Extension<Caller>) -> Result<Response, Error> {
    let policy = gate.reload_policy()?;
    tracing::info!(by = %caller.name, "policy reloaded on request");
    Ok(Json(serde_json::json!({"operations": policy.operations.keys().collect::<Vec<_>>()})).into_response())
}

async fn metrics(State(gate): State<Arc<Gate>>) -> Response {
    let mut out = String::new();
    match encode(&mut out, gate.registry()) {
        Ok(()) => {
            ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("the document is JSON")
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_who_may_call_it() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object().expect("operations").keys().map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> =
            routes().into_iter().map(|(m, p, _, _)| (m.to_string(), p.to_owned())).collect();
        assert_eq!(documented, served);
        for (m, p, access, _) in routes() {
            let op = &doc["paths"][p][m.as_str().to_lowercase()];
            assert!(op["summary"].is_string(), "{m} {p} has a summary");
            match access {
                Access::Open => assert!(op["security"].is_null(), "{m} {p} is open"),
                Access::Token(role) => {
                    assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{m} {p} needs a token");
                    assert_eq!(op["x-role"], role.as_str(), "{m} {p} names its role");
                    assert!(op["responses"]["403"].is_object(), "{m} {p}: a lesser role's 403");
                }
                Access::Hook => {
                    assert_eq!(op["security"], serde_json::json!([{"bearer": []}, {}]), "{m} {p}: header or body");
                }
            }
        }
    }

    #[test]
    fn the_openapi_document_names_every_operation_and_state() {
        let doc = doc();
        let names = |v: &serde_json::Value| -> BTreeSet<String> {
            v["enum"].as_array().expect("an enum").iter().map(|s| s.as_str().expect("a name").to_owned()).collect()
        };
        let schemas = &doc["components"]["schemas"];
        let all =
            |names: &mut dyn Iterator<Item = &'static str>| -> BTreeSet<String> { names.map(str::to_owned).collect() };
        use firebreak_schema::{ChangeState, PermitState};
        assert_eq!(names(&schemas["Operation"]), all(&mut Operation::ALL.iter().map(|o| o.as_str())));
        assert_eq!(
            names(&schemas["Change"]["properties"]["state"]),
            all(&mut ChangeState::ALL.iter().map(|s| s.as_str()))
        );
        assert_eq!(
            names(&schemas["Permit"]["properties"]["state"]),
            all(&mut PermitState::ALL.iter().map(|s| s.as_str()))
        );
        assert_eq!(names(&schemas["Phase"]), all(&mut Phase::ALL.iter().map(|p| p.as_str())));
    }
}
