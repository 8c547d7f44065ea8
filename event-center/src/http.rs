//! The HTTP API and the on-call web page.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use firebreak_plumbing::auth::{Caller, Guard, Tokens, require};
use firebreak_schema::{ClearEscalation, REMEDIATION_CONTROL_TOPIC, Role};
use futures::Stream;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use crate::{Error, EventFilter, Live, Store};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) live: broadcast::Sender<Live>,
    pub(crate) registry: Arc<Registry>,
    /// Whether the consumer holds partitions.
    pub(crate) ready: Arc<AtomicBool>,
    /// Sends operators' instructions to the remediators.
    pub(crate) producer: firebreak_plumbing::kafka::Producer,
    /// The consumer's lag as last measured, per partition.
    pub(crate) lag: tokio::sync::watch::Receiver<Vec<(firebreak_plumbing::kafka::LagLabels, i64)>>,
    /// Cancelled at shutdown: live streams end then, so the server can stop.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

/// `GET /api/v1/lag`: records on the topics the event center has not read yet, in all and per
/// partition, as last measured.
async fn lag(State(s): State<AppState>) -> Json<serde_json::Value> {
    let now = s.lag.borrow().clone();
    let total: i64 = now.iter().map(|(_, n)| n).sum();
    let partitions: Vec<serde_json::Value> = now
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| serde_json::json!({"topic": l.topic, "partition": l.partition, "lag": n}))
        .collect();
    Json(serde_json::json!({"total": total, "partitions": partitions, "measured_every_s": crate::LAG_EVERY.as_secs()}))
}

pub(crate) fn router(state: AppState, tokens: Option<Arc<Tokens>>) -> Router {
    // Write actions: an operator's token, or off without tokens.
    let writes = Router::new().route("/api/v1/escalations/clear", post(clear_escalation));
    let writes = match tokens {
        Some(tokens) => {
            writes.route_layer(axum::middleware::from_fn_with_state(Guard { tokens, role: Role::Operator }, require))
        }
        None => writes.route_layer(axum::middleware::from_fn(writes_off)),
    };
    Router::new()
        .merge(writes)
        .route("/", get(|| async { Html(include_str!("index.html")) }))
        .route("/api/v1/events", get(events))
        .route("/api/v1/remediations", get(remediations))
        .route("/api/v1/gate", get(gate))
        .route("/api/v1/lag", get(lag))
        .route("/api/v1/stream", get(stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = match &self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::WritesOff => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if code.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; see the event center's log".to_owned()
        } else {
            self.to_string()
        };
        (code, Json(serde_json::json!({"error": message}))).into_response()
    }
}

/// What the gate's topic and the health topic last said: health per cluster, halts in force,
/// recent changes.
async fn gate(State(s): State<AppState>) -> Result<Response, Error> {
    Ok(Json(s.store.gate_view().await?).into_response())
}

async fn events(
    State(s): State<AppState>,
    q: Result<Query<EventFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(f) = q.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(s.store.list_faults(&f).await?).into_response())
}

#[derive(serde::Deserialize)]
struct RemediationFilter {
    cluster: Option<String>,
    node: Option<String>,
    limit: Option<i64>,
}

async fn remediations(
    State(s): State<AppState>,
    q: Result<Query<RemediationFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(f) = q.map_err(|e| Error::BadRequest(e.body_text()))?;
    let rows =
        s.store.list_remediations(f.cluster.as_deref().unwrap_or(""), f.node.as_deref().unwrap_or(""), f.limit).await?;
    Ok(Json(rows).into_response())
}

async fn stream(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = s.live.subscribe();
    let shutdown = s.shutdown.clone();
    let events = async_stream::stream! {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = rx.recv() => next,
            };
            match next {
                Ok(Live::Fault(r)) => yield Ok(Event::default().event("fault").json_data(&*r).unwrap_or_default()),
                Ok(Live::Remediation(r)) => yield Ok(Event::default().event("remediation").json_data(&*r).unwrap_or_default()),
                Ok(Live::Gate) => yield Ok(Event::default().event("gate").data("changed")),
                // A slow client missed some; tell it to reload.
                Err(broadcast::error::RecvError::Lagged(n)) => yield Ok(Event::default().event("lagged").data(n.to_string())),
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// What every write route answers when the event center has no tokens.
async fn writes_off(_: axum::extract::Request, _: axum::middleware::Next) -> Response {
    Error::WritesOff.into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRequest {
    cluster: String,
    node: String,
    reason: String,
}

/// `POST /api/v1/escalations/clear` `{"cluster", "node", "reason"}` (operator): asks the
/// cluster's remediator to clear the node's escalation; 202 with the instruction's id. The
/// remediator records it in the node's workflow (a step on the remediation topic).
async fn clear_escalation(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<ClearRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Error> {
    let Json(r) = body.map_err(|e| Error::BadRequest(e.body_text()))?;
    let ask = ClearEscalation {
        id: uuid::Uuid::now_v7(),
        cluster: r.cluster,
        node: r.node,
        by: caller.name,
        reason: r.reason,
        at: chrono::Utc::now(),
    };
    firebreak_schema::CloudEvent::validate(&ask).map_err(|e| Error::BadRequest(e.to_string()))?;
    s.producer.publish(REMEDIATION_CONTROL_TOPIC, &ask).await?;
    tracing::info!(id = %ask.id, cluster = %ask.cluster, node = %ask.node, by = %ask.by, "escalation clearing asked");
    let body = serde_json::json!({"id": ask.id, "status": "asked", "cluster": ask.cluster, "node": ask.node});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Ready when the database answers and the consumer has been assigned partitions.
async fn readyz(State(s): State<AppState>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "consumer has no partitions yet").into_response();
    }
    healthz(State(s)).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
