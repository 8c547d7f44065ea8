//! The `firebreak` binary's wiring: one command per service (`agent`, `detector`,
//! `event-center`, `gate serve`, `remediator`, `fleet-sim`), the gate's operator commands
//! (`gate status|permits|decisions|halt|resume|reset-breaker|check-policy`, `token`), the
//! reference change driver (`rollout`), `demo`,
//! which runs the whole loop on one machine — librdkafka's mock cluster as the broker, SQLite,
//! fleet-sim as the clusters — and `bench`.
//!
//! It owns process concerns only: flags, telemetry, Kubernetes client construction, signal
//! handling, the operator client, benchmarks and the demo's orchestration. Every behaviour of the
//! system lives in the service crates.
//!
//! Feature `demo` (on by default) adds `demo`, `fleet-sim` and `bench`: the simulated clusters
//! and librdkafka's in-process mock broker. The service image is built without it.

#[cfg(feature = "demo")]
pub mod bench;
pub mod cli;
#[cfg(feature = "demo")]
pub mod demo;
pub mod escalations;
pub mod gate_cli;
pub mod rollout;
pub mod topics;

use std::path::Path;

/// Everything that can go wrong starting or running a service from this binary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] firebreak_agent::Error),
    /// The detector failed.
    #[error(transparent)]
    Detector(#[from] firebreak_detector::Error),
    /// The event center failed.
    #[error(transparent)]
    EventCenter(#[from] firebreak_event_center::Error),
    /// The remediator failed.
    #[error(transparent)]
    Remediator(#[from] firebreak_remediator::Error),
    /// The gate failed.
    #[error(transparent)]
    Gate(#[from] firebreak_rate_limiter::Error),
    /// The simulator failed.
    #[cfg(feature = "demo")]
    #[error(transparent)]
    FleetSim(#[from] firebreak_fleet_sim::Error),
    /// Kafka, tokens or another piece of shared plumbing failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
    /// A Kubernetes API request failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A socket or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A flag has an invalid value.
    #[error("invalid argument: {0}")]
    Usage(String),
    /// A benchmark could not run or finish: what it waited for did not happen.
    #[error("benchmark failed: {0}")]
    Bench(String),
    /// The gate refused or failed an operator command.
    #[error("gate: {0}")]
    GateApi(String),
}

/// Checks an `http://` or `https://` URL with a host (for `--gate-url`), as
/// [`firebreak_schema::names::http_url`] does.
pub fn parse_http_url(s: &str) -> std::result::Result<String, String> {
    firebreak_schema::names::http_url(s)
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Initialises logging: `RUST_LOG`-style filter from the environment (default `info`), text or
/// JSON lines.
pub fn init_telemetry(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn,librdkafka=warn,kube=warn,sqlx=warn,hyper=warn,tower=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.compact().try_init() };
}

/// A Kubernetes client from a kubeconfig file, without kube-client's implicit retries.
pub async fn kube_client(path: &Path) -> Result<kube::Client> {
    cluster_client(Some(path)).await
}

/// A Kubernetes client from a kubeconfig file, or without one as `kubectl` and client-go find
/// it: in a pod, its service account (in-cluster configuration); elsewhere `$KUBECONFIG` or
/// `~/.kube/config`. Says which API server it talks to.
pub async fn cluster_client(path: Option<&Path>) -> Result<kube::Client> {
    let shown = path.map_or_else(|| "in-cluster or $KUBECONFIG".to_owned(), |p| p.display().to_string());
    let err = |message: String| Error::Kubeconfig { path: shown.clone(), message };
    let mut config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| err(e.to_string()))?,
    };
    tracing::info!(api_server = %config.cluster_url, from = %shown, "Kubernetes API");
    // kube-client retries 429s by itself (15 times, backoff up to 1000 s). That would hide a
    // PodDisruptionBudget's refusal from the remediator, which retries evictions explicitly,
    // counts the refusals and bounds the drain with a timeout.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// Binds a TCP listener.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Io { what: format!("listen on {addr}"), source })
}

/// Serves `GET /metrics` (OpenMetrics text) for a registry until `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &registry) {
                    Ok(()) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    firebreak_plumbing::serve::serve(listener, app, None, shutdown)
        .await
        .map_err(|source| Error::Io { what: "metrics server".into(), source })
}
