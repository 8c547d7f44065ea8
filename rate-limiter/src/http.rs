//! The gate's HTTP API (axum): permits, decisions, health and metrics.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use firebreak_schema::PermitRequest;
use prometheus_client::encoding::text::encode;
use uuid::Uuid;

use crate::{Decision, Error, Gate, Permit, Result};

/// The gate's HTTP API.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/api/v1/permits", post(request_permit).get(list_permits))
        .route("/api/v1/permits/{id}", delete(release_permit))
        .route("/api/v1/decisions", get(list_decisions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(gate)
}

/// Serves the gate on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(gate)).with_graceful_shutdown(shutdown).await.map_err(Error::Serve)
}

async fn request_permit(State(gate): State<Arc<Gate>>, Json(req): Json<PermitRequest>) -> Response {
    match gate.request(&req) {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": e.to_string()}))).into_response(),
    }
}

async fn release_permit(State(gate): State<Arc<Gate>>, Path(id): Path<Uuid>) -> StatusCode {
    if gate.release(id) { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

async fn list_permits(State(gate): State<Arc<Gate>>) -> Json<Vec<Permit>> {
    Json(gate.permits())
}

async fn list_decisions(State(gate): State<Arc<Gate>>) -> Json<Vec<Decision>> {
    Json(gate.decisions())
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
