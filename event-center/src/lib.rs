//! The event center: the fleet's system of record. It consumes the fault and remediation topics
//! into a durable store (SQLite or PostgreSQL through `sqlx`), deduplicates by event id, groups
//! faults into incidents (one per cluster, node and kind while unresolved) that follow their
//! remediation workflows, correlates storms, and serves the on-call web page, the REST API
//! (described by `/api/v1/openapi.json`) and a live Server-Sent-Events stream. What it learns it
//! publishes for platform services: incidents' states, occurrences, correlations, dead letters,
//! and webhooks.
//!
//! Offsets are committed only after the write (see [`consumer`]); records that cannot be
//! decoded are counted, kept in `rejected_messages`, copied to the dead-letter topic and
//! skipped, so one bad producer never stops the stream. Publications leave through an outbox
//! (see [`upkeep`]), so a crash after a write loses none.
//!
//! Write actions (acknowledge, silence, assign, annotate an incident; clear a node's escalation,
//! carried to the cluster's remediator on `firebreak.remediation-control.v1.<cluster>`) need an operator
//! token (the gate's token scheme, `plumbing::auth`); without tokens, write actions are off.

mod consumer;
mod http;
pub mod store;
pub mod subscriptions;
mod upkeep;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use firebreak_plumbing::kafka::KafkaConfig;
use firebreak_schema::{EventRecord, RemediationEvent};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rdkafka::consumer::StreamConsumer;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use store::{EventFilter, GateView, Rules, StepFilter, Store};
pub use upkeep::Upkeep;

/// Everything that can go wrong in the event center.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another writer changed a record between this one's read and write (the write is
    /// retried against the new state).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An API request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// What an API request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A write action was asked of an event center that has no tokens.
    #[error("write actions are off: the event center has no tokens (--tokens FILE)")]
    WritesOff,
    /// Kafka, or opening and migrating the database, failed.
    #[error(transparent)]
    Plumbing(#[from] firebreak_plumbing::Error),
    /// The HTTP listener failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the live stream carries.
#[derive(Debug, Clone)]
pub enum Live {
    /// A newly stored fault.
    Fault(Box<EventRecord>),
    /// A newly stored remediation step.
    Remediation(Box<RemediationEvent>),
    /// The gate's state or a cluster's health changed (`GET /api/v1/gate` has it).
    Gate,
    /// An incident was created or changed.
    Incident(Box<firebreak_schema::Incident>),
    /// A correlation was created or grew.
    Correlation(Box<firebreak_schema::Correlation>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    reason: &'static str,
}

/// The event center's metrics, registered under `firebreak_event_center`.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    consumed: Counter,
    stored: Counter,
    duplicates: Counter,
    rejected: Family<RejectLabels, Counter>,
    store_errors: Counter,
    webhooks_given_up: Counter,
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("records_consumed", "Kafka records consumed", self.consumed.clone());
        registry.register("records_stored", "New events and steps stored", self.stored.clone());
        registry.register("records_duplicate", "Records whose id was already stored", self.duplicates.clone());
        registry.register(
            "records_rejected",
            "Undecodable records, kept and skipped, by reason",
            self.rejected.clone(),
        );
        registry.register("store_errors", "Failed database writes (retried)", self.store_errors.clone());
        registry.register(
            "webhooks_given_up",
            "Incident webhook calls given up, undelivered a day after they were stored",
            self.webhooks_given_up.clone(),
        );
    }
}

/// How to run the event center.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kafka brokers and tuning.
    pub kafka: KafkaConfig,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Consumer group id.
    pub group_id: String,
    /// The tokens write actions accept (an operator's or above); none: write actions are off.
    pub tokens: Option<firebreak_plumbing::auth::Tokens>,
    /// Incidents' rules, expiry and retention.
    pub upkeep: Upkeep,
    /// Webhooks told of incidents that open or change state ([`subscriptions`]).
    pub webhooks: Vec<subscriptions::Webhook>,
}

/// Runs the consumer and the HTTP server on `listener` until `cancel`.
pub async fn run(cfg: Config, listener: tokio::net::TcpListener, cancel: CancellationToken) -> Result<()> {
    let store = Store::open_with(&cfg.database_url, cfg.upkeep.rules).await?;
    // Every cluster has its own fault topic; a new cluster's is found within 10 s (see
    // `KafkaConfig::consumer`).
    let consumer: StreamConsumer = cfg.kafka.consumer(&cfg.group_id).create().map_err(|e| Error::Plumbing(e.into()))?;
    consumer::subscribe(&consumer)?;
    let consumer = Arc::new(consumer);
    let (live, _) = broadcast::channel(1024);
    let metrics = Metrics::default();
    let mut registry = Registry::with_prefix("firebreak_event_center");
    metrics.register(&mut registry);
    let lag = firebreak_plumbing::kafka::Lag::default();
    registry.register(
        "consumer_lag",
        "Records on the topics not yet read, per consumer group and partition",
        lag.clone(),
    );
    let (lag_now, lag_rx) = tokio::sync::watch::channel(Vec::new());
    let lagging = tokio::spawn(firebreak_plumbing::kafka::report_lag(
        Arc::downgrade(&consumer),
        cfg.group_id.clone(),
        lag,
        lag_now,
        firebreak_plumbing::kafka::LAG_EVERY,
        cancel.clone(),
    ));
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, database = %firebreak_plumbing::db::redacted(&cfg.database_url), "event center running");
    let ready = Arc::new(AtomicBool::new(false));
    let producer = firebreak_plumbing::kafka::Producer::new(&cfg.kafka)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let sinks = consumer::Sinks {
        store: store.clone(),
        live: live.clone(),
        metrics: metrics.clone(),
        producer: producer.clone(),
        wake: wake.clone(),
    };
    let consuming = tokio::spawn(consumer::run(consumer, sinks, ready.clone(), cancel.clone()));
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| Error::BadRequest(format!("webhook client: {e}")))?;
    let outlets = upkeep::Outlets {
        producer: producer.clone(),
        webhooks: cfg.webhooks,
        http,
        given_up: metrics.webhooks_given_up.clone(),
    };
    let upkeeping =
        tokio::spawn(upkeep::run(store.clone(), outlets, cfg.upkeep, wake.clone(), live.clone(), cancel.clone()));
    let app = http::router(
        http::AppState {
            store,
            live,
            registry: Arc::new(registry),
            ready,
            producer,
            kafka: cfg.kafka.clone(),
            lag: lag_rx,
            shutdown: cancel.clone(),
            wake,
        },
        cfg.tokens.map(Arc::new),
    );
    let served = firebreak_plumbing::serve::serve(listener, app, None, cancel.clone()).await;
    cancel.cancel();
    let _ = consuming.await;
    let _ = lagging.await;
    let _ = upkeeping.await;
    served.map_err(Error::Serve)
}
