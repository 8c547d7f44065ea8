//! The gate's HTTP API (axum). Every route but `/healthz` needs a bearer token: viewers read,
//! requesters ask for, renew and release their own permits, operators release any permit, halt,
//! resume and reset breakers, admins reload the policy. Errors are JSON `{"error": …}`; 5xx
//! details go to the log, not to the caller.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use firebreak_plumbing::auth::{Caller, Guard, Tokens, require};
use firebreak_schema::{HaltRequest, Operation, PermitRequest, Role, Scope};
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

/// A JSON body whose rejections are JSON errors too.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => {
                let code = match e {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err((code, Json(serde_json::json!({"error": e.body_text()}))).into_response())
            }
        }
    }
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

fn guarded(router: Router<Arc<Gate>>, tokens: &Arc<Tokens>, role: Role, limiter: &Limiter) -> Router<Arc<Gate>> {
    // Layers run outside in: the token is checked first, then its request rate.
    router
        .route_layer(middleware::from_fn_with_state(limiter.clone(), limit_requests))
        .route_layer(middleware::from_fn_with_state(Guard { tokens: tokens.clone(), role }, require))
}

/// The gate's HTTP API.
pub fn router(gate: Arc<Gate>, tokens: Arc<Tokens>) -> Router {
    let limiter: Limiter = gate
        .policy()
        .api_rate_per_token
        .map(|r| Arc::new(RateLimiter::keyed(Quota::per_second(r.per_second).allow_burst(r.burst))));
    let viewer = Router::new()
        .route("/api/v1/permits", get(list_permits))
        .route("/api/v1/decisions", get(list_decisions))
        .route("/api/v1/status", get(status))
        .route("/api/v1/halts", get(list_halts))
        .route("/metrics", get(metrics));
    let requester = Router::new()
        .route("/api/v1/permits", post(request_permit))
        .route("/api/v1/permits/{id}/renew", post(renew_permit))
        .route("/api/v1/permits/{id}", delete(release_permit));
    let operator = Router::new()
        .route("/api/v1/halts", post(halt))
        .route("/api/v1/halts/{id}/resume", post(resume))
        .route("/api/v1/breakers/reset", post(reset_breaker));
    let admin = Router::new().route("/api/v1/policy/reload", post(reload));
    Router::new()
        .merge(guarded(viewer, &tokens, Role::Viewer, &limiter))
        .merge(guarded(requester, &tokens, Role::Requester, &limiter))
        .merge(guarded(operator, &tokens, Role::Operator, &limiter))
        .merge(guarded(admin, &tokens, Role::Admin, &limiter))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(gate)
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
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    Ok(Json(gate.renew(id, &caller).await?).into_response())
}

async fn release_permit(
    State(gate): State<Arc<Gate>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    Ok(Json(gate.release(id, &caller).await?).into_response())
}

async fn list_permits(State(gate): State<Arc<Gate>>) -> Result<Response, Error> {
    Ok(Json(gate.permits().await?).into_response())
}

#[derive(Deserialize)]
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
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    Ok(Json(gate.resume(id, &caller).await?).into_response())
}

/// `POST /api/v1/breakers/reset` body.
#[derive(Deserialize)]
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
