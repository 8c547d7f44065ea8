//! The gate: the central authority every risky operation asks for a permit.
//!
//! It owns the policy (`policy`), the permits, the decisions, halts and breaker trips, all
//! durable through `sqlx` (`store`: SQLite for one replica, PostgreSQL for several), and decides
//! exactly: every decision runs under the gate's lock in the transaction that records it
//! (`decide`, in batches by `gate`). Rules per operation and scope — global, cluster, failure
//! domain: in-flight caps (absolute and as a share of the scope's nodes), an unhealthy-node
//! ratio, a GCRA rate with burst, a breaker over a sliding window, time windows and freezes,
//! operator halts. Every answer names the rule, its scope, the measured value and the threshold.
//!
//! A permit is granted with a TTL; its holder renews it while its step runs and releases it
//! after; one not renewed expires and is logged and counted as abandoned. Asking again with the
//! same requester, operation, cluster and node returns the permit already held. Node counts and
//! health come from the detectors' cluster snapshots on the health topic (`snapshots`); a rule
//! that needs one and has none recent enough denies (no data is not a yes).
//!
//! Every HTTP route but `/healthz` needs a bearer token with a role (`http`, through
//! `plumbing::auth`).

mod changes;
mod decide;
mod gate;
mod health;
mod http;
mod metrics;
mod monitor;
mod notify;
mod policy;
mod snapshots;
mod store;
mod storms;

use std::{path::PathBuf, sync::Arc};

pub use firebreak_plumbing::webhook::signature;
use firebreak_plumbing::{auth::Tokens, kafka::KafkaConfig, serve::Tls};
pub use firebreak_schema::Decision;
pub use gate::{Gate, GateStatus, InFlight, SnapshotSummary};
pub use http::router;
pub use policy::{
    ApiRate, Breaker, BreakerScope, Freeze, HealthRule, Limits, NoData, OperationPolicy, Percent, Policy, PromQuery,
    RuleScope, Storms, Webhook, Window,
};
use tokio_util::sync::CancellationToken;

/// Everything that can go wrong in the gate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The policy is invalid.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// The request is invalid.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such permit, halt or change.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state (a change registered differently, a batch out of
    /// turn, a concurrent update).
    #[error("{0}")]
    Conflict(String),
    /// The permit already ended.
    #[error("{0}")]
    Gone(String),
    /// The gate cannot decide now (its store failed, it is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Opening the database, tokens or Kafka failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
    /// The HTTP server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run the gate.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://FILE` (one replica) or `postgres://…` (one or more).
    pub database_url: String,
    /// The policy.
    pub policy: Policy,
    /// Where the policy came from, for reloads.
    pub policy_path: Option<PathBuf>,
    /// Accepted bearer tokens.
    pub tokens: Tokens,
    /// Where to read health samples from and publish changes and halts to; `None`: rules that
    /// need samples deny, and nothing is published.
    pub kafka: Option<KafkaConfig>,
    /// Serve HTTPS with this certificate; plain HTTP without.
    pub tls: Option<Tls>,
}

/// Serves the gate on `listener` until `cancel`.
pub async fn run(cfg: Config, listener: tokio::net::TcpListener, cancel: CancellationToken) -> Result<()> {
    let producer = cfg.kafka.as_ref().map(firebreak_plumbing::kafka::Producer::new).transpose()?;
    let gate = Gate::open(&cfg.database_url, cfg.policy, cfg.policy_path, producer, cancel.clone()).await?;
    if let Some(kafka) = &cfg.kafka {
        tokio::spawn(snapshots::consume(kafka.clone(), gate.clone(), cancel.clone()));
    }
    tracing::info!(addr = ?listener.local_addr().ok(), tls = cfg.tls.is_some(),
        snapshots_from = ?cfg.kafka.as_ref().map(|k| k.brokers.clone()), "gate running");
    firebreak_plumbing::serve::serve(listener, router(gate, Arc::new(cfg.tokens)), cfg.tls, cancel)
        .await
        .map_err(Error::Serve)
}
