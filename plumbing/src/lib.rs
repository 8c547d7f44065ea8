//! The plumbing every Firebreak service needs done the same way, kept out of `schema` so that
//! `schema` stays the types and the wire format:
//!
//! - [`retry`]: the one retry policy (exponential backoff with jitter and a cap, from `backon`),
//!   with the reason logged on every retry;
//! - `kafka` (feature `kafka`): how producers and consumers are configured with `rdkafka`, how an
//!   event is published until the brokers have it, and how a record is decoded;
//! - `db` (feature `db`): how a service opens and migrates its database with `sqlx`;
//! - `auth` (feature `http`): bearer tokens with roles for every HTTP API, as an axum middleware;
//! - `serve` (feature `http`): serving an axum app over HTTP or HTTPS (rustls);
//! - `lenient` (feature `kube`): Kubernetes objects decoded one by one, so one undecodable
//!   object does not fail a whole list or watch;
//! - `webhook` (feature `webhook`): signed webhook POSTs (HMAC-SHA256), retried in the background.
//!
//! Services may depend on this crate as they depend on `schema`; it depends on no service. The
//! agent uses only `retry` and `kafka`, so it stays without SQL.

#[cfg(feature = "http")]
pub mod auth;
#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kube")]
pub mod leader;
#[cfg(feature = "kube")]
pub mod lenient;
pub mod retry;
#[cfg(feature = "http")]
pub mod serve;
#[cfg(feature = "webhook")]
pub mod webhook;

/// Everything that can go wrong in the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Schema(#[from] firebreak_schema::Error),
    /// The Kafka client failed.
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database could not be opened.
    #[cfg(feature = "db")]
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// The database could not be migrated.
    #[cfg(feature = "db")]
    #[error("migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A Kubernetes API call failed.
    #[cfg(feature = "kube")]
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A Kafka client setting is unusable.
    #[error("kafka configuration: {0}")]
    Config(String),
    /// A topic is missing or unusable.
    #[error("topic: {0}")]
    Topic(String),
    /// A tokens file is invalid.
    #[error("tokens: {0}")]
    Tokens(String),
    /// A TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
