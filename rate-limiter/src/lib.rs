//! The gate: the central authority every risky operation asks for a permit.
//!
//! It owns the policy ([`Policy`]), the permits in flight, and the decisions: each request is
//! checked against the operation's concurrency cap per cluster, then against its rate (GCRA,
//! via `governor`, keyed by cluster). Every decision — grant or denial — carries its reason with
//! the measured value and the threshold, and is kept in a decision log served over HTTP.
//! Permits expire after the policy's TTL unless released. Asking again with the same requester,
//! operation, cluster and node returns the permit already held, so a retrying client never takes
//! a second slot. Permits live in memory: a restarted gate starts empty.
//!
//! Rooms: `gate` (the decision logic), `http` (the axum API), `metrics` (Prometheus counters),
//! `policy` (the TOML policy).

mod gate;
mod http;
mod metrics;
mod policy;

pub use gate::{Decision, Gate, Permit};
pub use http::{router, serve};
pub use policy::{Limits, Policy};

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
    /// The HTTP server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
