//! `firebreak gate …` operator commands: a client of the gate's HTTP API with a bearer token,
//! printing readable tables (or the API's JSON with `-o json`).

use std::time::Duration;

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use firebreak_rate_limiter::{Decision, GateStatus};
use firebreak_schema::{Halt, HaltRequest, Operation, Permit, Scope};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// How to reach the gate.
#[derive(Debug, Clone, Args)]
pub struct GateClientArgs {
    /// Base URL of the gate.
    #[arg(long, default_value = "http://127.0.0.1:8181", env = "FIREBREAK_GATE_URL", value_parser = crate::parse_http_url)]
    pub gate_url: String,
    /// Bearer token (a viewer's for reading, an operator's to act).
    #[arg(long, env = "FIREBREAK_GATE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A certificate authority (PEM file) to trust for the gate's HTTPS.
    #[arg(long)]
    pub gate_ca: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable tables.
    Table,
    /// The API's JSON.
    Json,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// Budgets in use, halts, breakers and cluster snapshots.
    Status(GateClientArgs),
    /// Permits in flight.
    Permits(GateClientArgs),
    /// The newest decisions, with their reasons.
    Decisions {
        #[command(flatten)]
        client: GateClientArgs,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Stops operations in a scope until resumed (operator).
    Halt {
        #[command(flatten)]
        client: GateClientArgs,
        /// `global`, `cluster=C` or `cluster=C,LABEL=VALUE`.
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// Why (shown with every denial it causes).
        #[arg(long)]
        reason: String,
        /// Only these operations (repeatable); all without it.
        #[arg(long = "operation", value_parser = parse_operation)]
        operations: Vec<Operation>,
    },
    /// Lifts a halt (operator).
    Resume {
        #[command(flatten)]
        client: GateClientArgs,
        /// The halt's id (see `status`).
        id: uuid::Uuid,
    },
    /// Closes an open breaker (operator).
    ResetBreaker {
        #[command(flatten)]
        client: GateClientArgs,
        /// The operation.
        #[arg(long, value_parser = parse_operation)]
        operation: Operation,
        /// `global`, `cluster=C` or `cluster=C,LABEL=VALUE`.
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse().map_err(|e: firebreak_schema::Error| e.to_string())
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    s.parse().map_err(|e: firebreak_schema::Error| e.to_string())
}

pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(a: &GateClientArgs) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Idle connections go before the server's header timeout closes them (see
            // `plumbing::serve`), so a request never races a closing connection.
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(path) = &a.gate_ca {
            let pem =
                std::fs::read(path).map_err(|source| Error::Io { what: format!("read {}", path.display()), source })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Usage(format!("--gate-ca: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| Error::Usage(format!("gate client: {e}")))?;
        Ok(Self { base: a.gate_url.trim_end_matches('/').to_owned(), token: a.token.clone(), http })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<(T, String)> {
        let resp =
            req.bearer_auth(&self.token).send().await.map_err(|e| Error::GateApi(format!("{}: {e}", self.base)))?;
        let code = resp.status();
        let text = resp.text().await.map_err(|e| Error::GateApi(e.to_string()))?;
        if !code.is_success() {
            let why = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(Error::GateApi(format!("HTTP {code}: {why}")));
        }
        let value = serde_json::from_str(&text).map_err(|e| Error::GateApi(format!("unreadable answer: {e}")))?;
        Ok((value, text))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, String)> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(T, String)> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn ago(t: chrono::DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds();
    if s >= 0 { format!("{}s ago", s) } else { format!("in {}s", -s) }
}

fn print_halts(halts: &[Halt]) {
    if halts.is_empty() {
        println!("Halts: none");
        return;
    }
    let mut t = table(&["HALT", "SCOPE", "OPERATIONS", "BY", "SINCE", "REASON"]);
    for h in halts {
        let ops = if h.operations.is_empty() {
            "all".to_owned()
        } else {
            h.operations.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(",")
        };
        t.add_row(vec![h.id.to_string(), h.scope.to_string(), ops, h.by.clone(), ago(h.at), h.reason.clone()]);
    }
    println!("Halts:\n{t}");
}

fn print_permits(permits: &[Permit]) {
    let mut t = table(&["PERMIT", "OPERATION", "CLUSTER", "NODE", "REQUESTER", "HOLDER", "GRANTED", "EXPIRES"]);
    for p in permits {
        t.add_row(vec![
            p.id.to_string(),
            p.operation.to_string(),
            p.cluster.clone(),
            p.node.clone().unwrap_or_default(),
            p.requester.clone(),
            p.holder.clone(),
            ago(p.granted_at),
            ago(p.expires_at),
        ]);
    }
    println!("{t}");
}

/// Runs an operator command.
pub async fn run(cmd: GateCommand) -> Result<()> {
    match cmd {
        GateCommand::Status(a) => {
            let (s, raw): (GateStatus, _) = Client::new(&a)?.get("/api/v1/status").await?;
            if a.output == Output::Json {
                println!("{raw}");
                return Ok(());
            }
            let ops: Vec<&str> = s.operations.iter().map(|o| o.as_str()).collect();
            println!("Permit TTL: {}s; operations allowed: {}", s.permit_ttl_s, ops.join(", "));
            let mut t = table(&["OPERATION", "SCOPE", "IN FLIGHT", "LIMIT"]);
            for f in &s.in_flight {
                t.add_row(vec![
                    f.operation.to_string(),
                    f.scope.clone(),
                    f.held.to_string(),
                    f.limit.map_or("-".into(), |l| l.to_string()),
                ]);
            }
            println!("In flight:\n{t}");
            print_halts(&s.halts);
            if s.breakers.is_empty() {
                println!("Breakers: all closed");
            } else {
                let mut t = table(&["OPERATION", "SCOPE", "TRIPPED", "UNTIL", "REASON"]);
                for b in &s.breakers {
                    let until = b.until.map_or("reset by an operator".into(), |u| u.to_rfc3339());
                    t.add_row(vec![
                        b.operation.to_string(),
                        b.scope.to_string(),
                        ago(b.tripped_at),
                        until,
                        b.reason.clone(),
                    ]);
                }
                println!("Open breakers:\n{t}");
            }
            let mut t = table(&["CLUSTER", "SNAPSHOT", "NODES", "READY", "UNHEALTHY", "DATA"]);
            for c in &s.snapshots {
                let data = if c.fresh { "fresh" } else { "stale: rules that need it deny" };
                t.add_row(vec![
                    c.cluster.clone(),
                    ago(c.at),
                    c.nodes.to_string(),
                    c.ready.to_string(),
                    c.unhealthy.to_string(),
                    data.into(),
                ]);
            }
            println!("Clusters:\n{t}");
        }
        GateCommand::Permits(a) => {
            let (p, raw): (Vec<Permit>, _) = Client::new(&a)?.get("/api/v1/permits").await?;
            if a.output == Output::Json { println!("{raw}") } else { print_permits(&p) }
        }
        GateCommand::Decisions { client, limit } => {
            let (d, raw): (Vec<Decision>, _) =
                Client::new(&client)?.get(&format!("/api/v1/decisions?limit={limit}")).await?;
            if client.output == Output::Json {
                println!("{raw}");
                return Ok(());
            }
            let mut t = table(&["AT", "OPERATION", "CLUSTER", "NODE", "ANSWER", "RULE", "MEASURED / LIMIT", "REASON"]);
            for d in d {
                let answer = if d.granted { "granted" } else { "denied" };
                let values = match (d.measured, d.threshold) {
                    (Some(m), Some(l)) => format!("{m} / {l}"),
                    _ => String::new(),
                };
                t.add_row(vec![
                    d.at.to_rfc3339(),
                    d.operation.to_string(),
                    d.cluster,
                    d.node.unwrap_or_default(),
                    answer.into(),
                    d.rule.unwrap_or_default(),
                    values,
                    d.reason,
                ]);
            }
            println!("{t}");
        }
        GateCommand::Halt { client, scope, reason, operations } => {
            let req = HaltRequest { scope, operations, reason };
            let (h, raw): (Halt, _) = Client::new(&client)?.post("/api/v1/halts", &req).await?;
            if client.output == Output::Json {
                println!("{raw}")
            } else {
                println!("halted {}: halt {}", h.scope, h.id)
            }
        }
        GateCommand::Resume { client, id } => {
            let (h, raw): (Halt, _) = Client::new(&client)?.post(&format!("/api/v1/halts/{id}/resume"), &()).await?;
            if client.output == Output::Json {
                println!("{raw}")
            } else {
                println!("resumed {}: halt {}", h.scope, h.id)
            }
        }
        GateCommand::ResetBreaker { client, operation, scope } => {
            let body = serde_json::json!({"operation": operation, "scope": scope});
            let (_, raw): (serde_json::Value, _) = Client::new(&client)?.post("/api/v1/breakers/reset", &body).await?;
            if client.output == Output::Json {
                println!("{raw}")
            } else {
                println!("breaker of {operation} in {scope} reset")
            }
        }
    }
    Ok(())
}
