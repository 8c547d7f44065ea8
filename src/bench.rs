//! `firebreak bench …`: benchmarks that print their figures and setup, each against a baseline
//! measured in the same run.
//!
//! `gate`: the permit endpoint (ask, then give back) at a fixed concurrency, beside a bare route
//! of the same server (`/healthz`), on SQLite and — when it is reachable — PostgreSQL. The
//! figure that matters is the p99 ratio: what the gate's exact, durable decision costs over
//! the HTTP server itself.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use firebreak_plumbing::auth::{Tokens, entry, new_secret};
use firebreak_rate_limiter::{Limits, OperationPolicy, Policy};
use firebreak_schema::{Operation, PermitRequest, PermitResponse, Role};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// `firebreak bench` targets.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Permit requests per second, p50 and p99, against a bare route of the same server.
    Gate(GateBench),
}

/// `firebreak bench gate` flags.
#[derive(Debug, Clone, Args)]
pub struct GateBench {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Permit requests per database (each followed by its release).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    /// PostgreSQL server to measure too (a fresh database is made on it); skipped if unreachable.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432", env = "FIREBREAK_BENCH_POSTGRES")]
    pub postgres: String,
}

/// Latencies of one kind of request.
struct Figures {
    count: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn of(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort();
        let at =
            |q: f64| samples.get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1))).copied();
        Figures { count: samples.len(), elapsed, p50: at(0.50).unwrap_or_default(), p99: at(0.99).unwrap_or_default() }
    }

    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `count` requests made by `make(i)` with `concurrency` in flight; their latencies.
async fn load<F, Fut>(concurrency: usize, count: usize, make: F) -> Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (make, next) = (make.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, Error>(out);
                    }
                    out.push(make(i).await?);
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(count);
    for w in workers {
        samples.extend(w.await.map_err(|e| Error::Usage(format!("benchmark worker failed: {e}")))??);
    }
    Ok(Figures::of(samples, started.elapsed()))
}

struct Run {
    bare: Figures,
    permit: Figures,
}

async fn measure(db: &str, args: &GateBench) -> Result<Run> {
    let secret = new_secret();
    let tokens = Tokens::parse(&entry("bench", Role::Operator, &secret))?;
    // Budgets that grant everything: the cost measured is the decision, not a denial.
    let policy = Policy {
        operations: BTreeMap::from([(
            Operation::Cordon,
            OperationPolicy {
                cluster: Some(Limits { max_in_flight: Some(1_000_000), ..Limits::default() }),
                ..OperationPolicy::default()
            },
        )]),
        ..Policy::default()
    };
    let listener = crate::bind("127.0.0.1:0").await?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|source| Error::Io { what: "bench address".into(), source })?
    );
    let stop = CancellationToken::new();
    let cfg = firebreak_rate_limiter::Config {
        database_url: db.into(),
        policy,
        policy_path: None,
        tokens,
        kafka: None,
        tls: None,
    };
    let server = tokio::spawn(firebreak_rate_limiter::run(cfg, listener, stop.clone()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let failed = |e: reqwest::Error| Error::Usage(format!("benchmark request failed: {e}"));
    // Up, and warm.
    for _ in 0..50 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bare = {
        let (http, url) = (http.clone(), format!("{base}/healthz"));
        load(args.concurrency, args.requests, move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let t = Instant::now();
                http.get(&url).send().await.map_err(failed)?.bytes().await.map_err(failed)?;
                Ok(t.elapsed())
            }
        })
        .await?
    };
    let permit = {
        let (http, base, secret) = (http.clone(), base.clone(), secret.clone());
        load(args.concurrency, args.requests, move |i| {
            let (http, base, secret) = (http.clone(), base.clone(), secret.clone());
            async move {
                let req = PermitRequest {
                    operation: Operation::Cordon,
                    cluster: "bench".into(),
                    node: Some(format!("node-{i}")),
                    requester: format!("bench/{i}"),
                    domains: BTreeMap::new(),
                };
                let t = Instant::now();
                let r: PermitResponse = http
                    .post(format!("{base}/api/v1/permits"))
                    .bearer_auth(&secret)
                    .json(&req)
                    .send()
                    .await
                    .map_err(failed)?
                    .json()
                    .await
                    .map_err(failed)?;
                let took = t.elapsed();
                let id = r.permit_id.ok_or_else(|| Error::Usage(format!("permit denied: {}", r.reason)))?;
                http.delete(format!("{base}/api/v1/permits/{id}")).bearer_auth(&secret).send().await.map_err(failed)?;
                Ok(took)
            }
        })
        .await?
    };
    stop.cancel();
    let _ = server.await;
    Ok(Run { bare, permit })
}

/// Runs a benchmark and prints its table.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Gate(args) = cmd;
    let dir = std::env::temp_dir().join(format!("firebreak-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { what: format!("create {}", dir.display()), source })?;
    let mut dbs = vec![("SQLite".to_owned(), format!("sqlite://{}", dir.join("gate.db").display()))];
    match postgres_database(&args.postgres).await {
        Ok(url) => dbs.push(("PostgreSQL".into(), url)),
        Err(why) => println!("PostgreSQL skipped: {why}"),
    }
    println!(
        "firebreak bench gate: {} permit requests (each then released) and {} GET /healthz, {} in flight, one gate, \
         this machine ({} CPUs)",
        args.requests,
        args.requests,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<12} {:<22} {:>10} {:>10} {:>10}", "database", "route", "req/s", "p50", "p99");
    for (name, url) in dbs {
        let r = measure(&url, &args).await?;
        for (route, f) in [("GET /healthz (bare)", &r.bare), ("POST /api/v1/permits", &r.permit)] {
            println!("{name:<12} {route:<22} {:>10.0} {:>10} {:>10}", f.per_second(), ms(f.p50), ms(f.p99));
        }
        let ratio = r.permit.p99.as_secs_f64() / r.bare.p99.as_secs_f64().max(1e-9);
        println!("{name:<12} p99 ratio permit / bare: {ratio:.2} (goal ≤ 1.5 on SQLite)");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh database on the server at `base`.
async fn postgres_database(base: &str) -> std::result::Result<String, String> {
    use sqlx::Connection;
    let name = format!("fb_bench_{}", uuid::Uuid::now_v7().simple());
    let mut conn =
        sqlx::PgConnection::connect(&format!("{base}/postgres")).await.map_err(|e| format!("{base}: {e}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.map_err(|e| e.to_string())?;
    Ok(format!("{base}/{name}"))
}
