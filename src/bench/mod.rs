//! `firebreak bench …`: benchmarks that print their figures and setup, each against a baseline
//! measured in the same run.
//!
//! `gate`: the permit endpoint (ask, then give back) at a fixed concurrency, beside a bare route
//! of the same server (`/healthz`), in alternating turns on connections already open, on SQLite
//! and — when it is reachable — PostgreSQL. The figure that matters is the p99 ratio: what the
//! gate's exact, durable decision costs over the HTTP server itself.
//!
//! `drain`: a mass drain under PodDisruptionBudgets (see [`drain`]).
//!
//! `agent`: one `firebreak-agent` process's memory and CPU, idle and under load (see [`agent`]).
//!
//! `ingest`: the event center's ingest rate over a bare consumer's of the same topics, on
//! SQLite and PostgreSQL (see [`ingest`]).
//!
//! `ui`: the on-call page's queries at many stored events (see [`ui`]).
//!
//! `detect` and `isolate`: kernel log line → node cordoned and tainted, one at a time and many
//! at once (see [`isolate`]).
//!
//! `health`: the health path of the gate at fleet scale. Simulated clusters (fleet-sim behind
//! its Kubernetes API) with steady pod churn, a detector per cluster, the gate with a health
//! rule, the Kafka mock between them; then, in each cluster in turn, a batch of nodes is
//! relabelled to a runtime version whose pods crash-loop. Measured: from the first failed pod
//! start of the batch (seen by this benchmark's own watch of the cluster's pods) to the gate's
//! halt decision (the halt's own time), in seconds and in health intervals; and what a health
//! sample costs — the detectors' build time (their own counters), its size on the topic.

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

mod agent;
mod drain;
mod fleet;
mod ingest;
mod isolate;
mod scale;
mod ui;

/// `firebreak bench` targets.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Permit requests per second, p50 and p99, against a bare route of the same server.
    Gate(GateBench),
    /// Time from a bad batch's first failed pod start to the halt, and a health sample's cost.
    Health(HealthBench),
    /// A mass drain: many nodes with many pods under PodDisruptionBudgets, evicted and moved.
    Drain(drain::DrainBench),
    /// One agent process's memory and CPU, idle and under a kernel log load.
    Agent(agent::AgentBench),
    /// The event center's ingest rate against a bare consumer of the same topics.
    Ingest(ingest::IngestBench),
    /// Kernel log line → node cordoned and tainted, one fault at a time: p50 and p99.
    Detect(isolate::DetectBench),
    /// Nodes cordoned and tainted per second when many faults arrive at once.
    Isolate(isolate::IsolateBench),
    /// The incident list's and the page's server time at many stored events.
    Ui(ui::UiBench),
    /// The control plane's memory and fault → cordon latency as the fleet grows: `fleet` at each
    /// size, and a plot.
    Scale(scale::ScaleBench),
    /// The control plane alone, in a process of its own, against a fleet-sim process under
    /// heartbeats and faults: its memory, CPU and consumer lag over time.
    Fleet(fleet::FleetBench),
    /// The control plane of `bench fleet`'s child process (not run by hand).
    #[command(hide = true)]
    ControlPlane(fleet::ControlPlaneChild),
    /// Every benchmark in turn, then one table of their headline figures against their goals.
    All(AllBench),
}

/// `firebreak bench all` flags.
#[derive(Debug, Clone, Args)]
pub struct AllBench {
    /// Each benchmark in its smoke size (what the test run uses): minutes in all, figures not
    /// meaningful.
    #[arg(long)]
    pub smoke: bool,
    /// Benchmarks to leave out (repeatable): gate, health, drain, agent, ingest, ui, detect, isolate.
    #[arg(long)]
    pub skip: Vec<String>,
}

/// One figure of a benchmark beside its goal: a row of `bench all`'s table.
#[derive(Debug, Clone)]
pub struct Headline {
    bench: &'static str,
    figure: String,
    value: String,
    goal: &'static str,
    met: bool,
}

impl Headline {
    fn new(
        bench: &'static str,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: &'static str,
        met: bool,
    ) -> Self {
        Self { bench, figure: figure.into(), value: value.into(), goal, met }
    }
}

fn print_headlines(rows: &[Headline]) {
    println!("{:<8} {:<52} {:>18} {:<14} met", "bench", "figure", "value", "goal");
    for h in rows {
        println!("{:<8} {:<52} {:>18} {:<14} {}", h.bench, h.figure, h.value, h.goal, if h.met { "yes" } else { "no" });
    }
}

/// The benchmarks `bench all` runs, in order, with their smoke sizes (the test run's).
const ALL: [(&str, &[&str]); 10] = [
    ("gate", &["--requests", "200", "--concurrency", "8"]),
    ("ingest", &["--events", "300", "--clusters", "2", "--max-wait", "60s"]),
    ("ui", &["--events", "3000", "--nodes", "200", "--clusters", "4", "--queries", "3"]),
    ("agent", &["--idle", "1s", "--load", "2s", "--rate", "200"]),
    ("detect", &["--clusters", "2", "--nodes", "6", "--faults", "4", "--idle", "1s"]),
    ("isolate", &["--nodes", "12", "--faults", "8"]),
    (
        "scale",
        &["--sizes", "4,8", "--nodes-per-cluster", "4", "--duration", "6s", "--heartbeat", "1s", "--plot", "/dev/null"],
    ),
    ("fleet", &["--clusters", "2", "--nodes", "5", "--heartbeat", "1s", "--duration", "8s", "--sample-every", "2s"]),
    ("drain", &["--nodes", "12", "--drain", "6", "--pods-per-node", "3", "--eviction-retry", "1s", "--max-wait", "2m"]),
    (
        "health",
        &[
            "--clusters",
            "1",
            "--nodes",
            "30",
            "--interval",
            "1s",
            "--batch",
            "20%",
            "--pod-lifetime",
            "4s",
            "--max-wait",
            "90s",
        ],
    ),
];

/// A benchmark's command line as clap reads it, defaults filled in.
#[derive(clap::Parser)]
struct One {
    #[command(subcommand)]
    bench: BenchCommand,
}

/// Runs every benchmark not skipped, each printing its own report, then the table of all their
/// headline figures. A benchmark that fails is a row saying so; the others still run.
async fn all(args: AllBench) -> Result<()> {
    use clap::Parser as _;
    for s in &args.skip {
        if !ALL.iter().any(|(name, _)| name == s) {
            return Err(Error::Usage(format!("--skip {s}: no such benchmark")));
        }
    }
    let mut rows = Vec::new();
    for (name, smoke) in ALL {
        if args.skip.iter().any(|s| s == name) {
            continue;
        }
        let mut argv = vec!["bench", name];
        if args.smoke {
            argv.extend_from_slice(smoke);
        }
        println!("\n=== firebreak {} ===", argv.join(" "));
        let cmd = One::try_parse_from(argv).map_err(|e| Error::Usage(e.to_string()))?.bench;
        match Box::pin(one(cmd)).await {
            Ok(h) => rows.extend(h),
            Err(e) => rows.push(Headline::new(
                // The names are 'static in ALL.
                name,
                format!("failed: {e}"),
                "-",
                "-",
                false,
            )),
        }
    }
    println!("\n=== firebreak bench all{} ===", if args.smoke { " --smoke (figures not meaningful)" } else { "" });
    print_headlines(&rows);
    Ok(())
}

/// `firebreak bench health` flags.
#[derive(Debug, Clone, Args)]
pub struct HealthBench {
    /// Simulated clusters; each takes one bad batch in turn.
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// The health interval: detectors sample, and the gate judges, this often.
    #[arg(long, default_value = "5s", value_parser = crate::cli::positive_duration)]
    pub interval: Duration,
    /// The bad batch: nodes per cluster (`50`) or a share of them (`5%`).
    #[arg(long, default_value = "5%")]
    pub batch: firebreak_schema::BatchSize,
    /// Pods created per minute in each cluster (a steady churn).
    #[arg(long, default_value_t = 600)]
    pub churn_per_minute: u32,
    /// How long a churn pod lives, on average. The first batch waits one and a half of these
    /// after the start, until the churn is steady.
    #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
    pub pod_lifetime: Duration,
    /// Decided pod starts the batch's domain needs before its rate is judged: the evidence
    /// asked for before a halt.
    #[arg(long, default_value_t = 5)]
    pub min_pod_starts: u32,
    /// How long to wait for a halt before calling the round failed.
    #[arg(long, default_value = "5m", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
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
    /// The databases measured.
    #[command(flatten)]
    pub db: Databases,
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

/// Runs the requests `make(i)` makes for each `i` of `range`, `concurrency` in flight; their
/// latencies, and how long they took together.
async fn load<F, Fut>(
    concurrency: usize,
    range: std::ops::Range<usize>,
    make: Arc<F>,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (make, next, end) = (make.clone(), next.clone(), range.end);
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= end {
                        return Ok::<_, Error>(out);
                    }
                    out.push(make(i).await?);
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(range.len());
    for w in workers {
        samples.extend(w.await.map_err(|e| Error::Bench(format!("benchmark worker failed: {e}")))??);
    }
    Ok((samples, started.elapsed()))
}

/// How many turns the bare route and the permits take, one after the other: each route's
/// figures are of all its turns, so both meet the same moments of the server's life (its
/// background checkpoints, the sweeper) rather than one a quiet start and the other the rest.
const TURNS: usize = 10;

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
        .map_err(|e| Error::Bench(e.to_string()))?;
    let failed = |e: reqwest::Error| Error::Bench(format!("benchmark request failed: {e}"));
    let healthz = {
        let (http, url) = (http.clone(), format!("{base}/healthz"));
        Arc::new(move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let t = Instant::now();
                http.get(&url).send().await.map_err(failed)?.bytes().await.map_err(failed)?;
                Ok(t.elapsed())
            }
        })
    };
    // Up, then warm: as many connections open as requests will be in flight, so neither route
    // pays for opening them.
    for _ in 0..50 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load(args.concurrency, 0..4 * args.concurrency, healthz.clone()).await?;
    let permit = {
        let (http, base, secret) = (http.clone(), base.clone(), secret.clone());
        Arc::new(move |i| {
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
                let id = r.permit_id.ok_or_else(|| Error::Bench(format!("permit denied: {}", r.reason)))?;
                http.delete(format!("{base}/api/v1/permits/{id}")).bearer_auth(&secret).send().await.map_err(failed)?;
                Ok(took)
            }
        })
    };
    // Each route's latencies and time over its turns.
    let (mut bare, mut permits) = ((Vec::new(), Duration::ZERO), (Vec::new(), Duration::ZERO));
    let turn = args.requests.div_ceil(TURNS).max(1);
    for start in (0..args.requests).step_by(turn) {
        let range = start..(start + turn).min(args.requests);
        let (samples, took) = load(args.concurrency, range.clone(), healthz.clone()).await?;
        bare.0.extend(samples);
        bare.1 += took;
        let (samples, took) = load(args.concurrency, range, permit.clone()).await?;
        permits.0.extend(samples);
        permits.1 += took;
    }
    let (bare, permit) = (Figures::of(bare.0, bare.1), Figures::of(permits.0, permits.1));
    stop.cancel();
    let _ = server.await;
    Ok(Run { bare, permit })
}

/// Runs a benchmark and prints its table.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::All(args) => all(args).await,
        cmd => {
            let rows = one(cmd).await?;
            print_headlines(&rows);
            Ok(())
        }
    }
}

/// Runs one benchmark; its headline figures.
async fn one(cmd: BenchCommand) -> Result<Vec<Headline>> {
    match cmd {
        BenchCommand::Gate(args) => gate(args).await,
        BenchCommand::Health(args) => health(args).await,
        BenchCommand::Drain(args) => drain::drain(args).await,
        BenchCommand::Agent(args) => agent::agent(args).await,
        BenchCommand::Ingest(args) => ingest::ingest(args).await,
        BenchCommand::Detect(args) => isolate::detect(args).await,
        BenchCommand::Isolate(args) => isolate::isolate(args).await,
        BenchCommand::Ui(args) => ui::ui(args).await,
        BenchCommand::Scale(args) => scale::scale(args).await,
        BenchCommand::Fleet(args) => fleet::fleet(args).await,
        BenchCommand::ControlPlane(args) => fleet::control_plane(args).await,
        BenchCommand::All(_) => Err(Error::Usage("`bench all` runs the others".into())),
    }
}

async fn gate(args: GateBench) -> Result<Vec<Headline>> {
    // Without a request there is no latency, and a ratio of nothing would read as met.
    if args.concurrency == 0 {
        return Err(Error::Usage("--concurrency must be at least 1".into()));
    }
    if args.requests == 0 {
        return Err(Error::Usage("--requests must be at least 1".into()));
    }
    let scratch = Scratch::new()?;
    let dbs = args.db.urls(&scratch, "gate.db").await;
    println!(
        "firebreak bench gate: {} permit requests (each then released) and {} GET /healthz, {} in flight, in {TURNS} \
         alternating turns on connections opened before, one gate, this machine ({} CPUs)",
        args.requests,
        args.requests,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<12} {:<22} {:>10} {:>10} {:>10}", "database", "route", "req/s", "p50", "p99");
    let mut rows = Vec::new();
    for (name, url) in dbs {
        let r = measure(&url, &args).await?;
        for (route, f) in [("GET /healthz (bare)", &r.bare), ("POST /api/v1/permits", &r.permit)] {
            println!("{name:<12} {route:<22} {:>10.0} {:>10} {:>10}", f.per_second(), ms(f.p50), ms(f.p99));
        }
        let ratio = r.permit.p99.as_secs_f64() / r.bare.p99.as_secs_f64().max(1e-9);
        println!("{name:<12} p99 ratio permit / bare: {ratio:.2} (goal ≤ 1.5 on SQLite)");
        rows.push(Headline::new(
            "gate",
            format!("permit p99 / bare route p99, {name}"),
            format!("{ratio:.2}"),
            "≤ 1.5",
            ratio <= 1.5,
        ));
    }
    Ok(rows)
}

/// What `/proc` says of a process: resident and peak memory, CPU time.
pub(crate) struct Usage {
    pub(crate) rss_kib: u64,
    pub(crate) peak_kib: u64,
    pub(crate) cpu: Duration,
}

pub(crate) fn usage(pid: u32) -> Result<Usage> {
    let io = |what: String| move |source| Error::Io { what, source };
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io(format!("read /proc/{pid}/status")))?;
    let kib = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(io(format!("read /proc/{pid}/stat")))?;
    // Fields after the command name (which may hold spaces, inside parentheses): utime and
    // stime are the 12th and 13th, in clock ticks of 1/100 s.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    let ticks: u64 = after.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    Ok(Usage { rss_kib: kib("VmRSS:"), peak_kib: kib("VmHWM:"), cpu: Duration::from_millis(ticks * 10) })
}

/// The databases a storage benchmark measures: SQLite in a scratch directory and PostgreSQL
/// (a fresh database on the server, skipped with a word when it cannot be reached).
#[derive(Debug, Clone, Args)]
pub struct Databases {
    /// PostgreSQL server to measure too (a fresh database is made on it); skipped if unreachable.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432", env = "FIREBREAK_BENCH_POSTGRES")]
    pub postgres: String,
    /// Only this database (repeatable): `sqlite`, `postgres`. Both by default.
    #[arg(long = "db", value_parser = ["sqlite", "postgres"])]
    pub only: Vec<String>,
}

impl Databases {
    /// (name, URL) of each database to measure, SQLite's file named `file` in `scratch`.
    async fn urls(&self, scratch: &Scratch, file: &str) -> Vec<(String, String)> {
        let wants = |db: &str| self.only.is_empty() || self.only.iter().any(|o| o == db);
        let mut dbs = Vec::new();
        if wants("sqlite") {
            dbs.push(("SQLite".to_owned(), format!("sqlite://{}", scratch.0.join(file).display())));
        }
        if wants("postgres") {
            match postgres_database(&self.postgres).await {
                Ok(name) => {
                    dbs.push(("PostgreSQL".into(), format!("{}/{name}", self.postgres)));
                    scratch.1.lock().unwrap_or_else(|e| e.into_inner()).push((self.postgres.clone(), name));
                }
                Err(why) => println!("PostgreSQL skipped: {why}"),
            }
        }
        dbs
    }
}

/// The Kafka a benchmark runs against: librdkafka's mock broker in its own process, or a
/// broker of its own process named by `--kafka-brokers`.
#[derive(Debug, Clone, Args)]
pub struct Broker {
    /// A broker to run against (its own process, holding no fault topics: a fresh one, since
    /// what an earlier run left there would be read again) instead of librdkafka's mock broker
    /// in this process.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
}

impl Broker {
    /// The named broker, checked before anything starts: reachable (within 10 s), and holding
    /// no fault topics. `None` for the mock broker.
    fn checked(&self) -> Result<Option<firebreak_plumbing::kafka::KafkaConfig>> {
        let Some(brokers) = &self.kafka_brokers else { return Ok(None) };
        let kafka = firebreak_plumbing::kafka::KafkaConfig::new(brokers.as_str());
        let unread = |e: rdkafka::error::KafkaError| Error::Bench(format!("cannot read the topics of {brokers}: {e}"));
        let consumer: rdkafka::consumer::BaseConsumer = kafka.client().create().map_err(unread)?;
        let metadata =
            rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10)).map_err(unread)?;
        let held: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|t| t.starts_with(firebreak_schema::FAULT_TOPIC_PREFIX))
            .collect();
        if !held.is_empty() {
            return Err(Error::Usage(format!(
                "{brokers} already holds fault topics ({}); the benchmark would read them too: use a fresh broker",
                held.join(", ")
            )));
        }
        Ok(Some(kafka))
    }

    /// The broker, in words for a benchmark's setup line.
    fn describe(&self) -> String {
        self.kafka_brokers.as_ref().map_or("librdkafka's mock broker in this process".to_owned(), |b| {
            format!("the broker at {b} (its own process)")
        })
    }
}

/// A benchmark's scratch: a directory, and the PostgreSQL databases (server, name) made for it;
/// both removed when it ends, however it ends.
pub(crate) struct Scratch(pub(crate) std::path::PathBuf, std::sync::Mutex<Vec<(String, String)>>);

impl Scratch {
    pub(crate) fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("firebreak-bench-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|source| Error::Io { what: format!("create {}", dir.display()), source })?;
        Ok(Self(dir, Default::default()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let made = std::mem::take(self.1.get_mut().unwrap_or_else(|e| e.into_inner()));
        if made.is_empty() {
            return;
        }
        // `Drop` cannot await, and may run on the benchmark's runtime: the databases are dropped
        // from a thread of their own, on a runtime of its own, and waited for.
        let dropping = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                for (base, name) in made {
                    if let Err(why) = drop_postgres_database(&base, &name).await {
                        eprintln!("could not drop the benchmark's database {name}: {why}");
                    }
                }
            });
        });
        let _ = dropping.join();
    }
}

/// Drops a database `postgres_database` made, closing what is still connected to it.
async fn drop_postgres_database(base: &str, name: &str) -> std::result::Result<(), String> {
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect(&format!("{base}/postgres")).await.map_err(|e| format!("{base}: {e}"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A fresh database on the server at `base`; returns its name.
async fn postgres_database(base: &str) -> std::result::Result<String, String> {
    use sqlx::Connection;
    let name = format!("fb_bench_{}", uuid::Uuid::now_v7().simple());
    let mut conn =
        sqlx::PgConnection::connect(&format!("{base}/postgres")).await.map_err(|e| format!("{base}: {e}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.map_err(|e| e.to_string())?;
    // The server's settings are part of the setup: with autovacuum off, the rows each update
    // leaves behind are never reclaimed and the planner's statistics never refreshed.
    let mut settings = Vec::new();
    for setting in ["server_version", "autovacuum", "shared_buffers", "synchronous_commit"] {
        let value: String =
            sqlx::query_scalar(&format!("SHOW {setting}")).fetch_one(&mut conn).await.map_err(|e| e.to_string())?;
        settings.push(format!("{setting} {value}"));
    }
    println!(
        "PostgreSQL at {}: {}; database {name}, dropped when the benchmark ends",
        firebreak_plumbing::db::redacted(base),
        settings.join(", ")
    );
    if settings.iter().any(|s| s == "autovacuum off") {
        println!(
            "  autovacuum is off on this server: dead rows pile up, so its write and query figures are worse than a production server's"
        );
    }
    Ok(name)
}

/// The rule `bench health` holds each batch to.
const HEALTH_RULE: &str = "batch-pod-starts";
/// The runtime version whose pods crash-loop.
const BAD: &str = "bench-bad";

/// The gate policy of `bench health`: the pod start success rate at least 90 % in every runtime
/// domain (the label a node software rollout changes), over at least `min_pod_starts` decided
/// starts, two samples in a row; it halts canary batches.
fn health_policy(interval: Duration, min_pod_starts: u32) -> firebreak_rate_limiter::Policy {
    let mut failure_domains = Policy::default().failure_domains;
    failure_domains.push(firebreak_fleet_sim::RUNTIME_LABEL.into());
    Policy {
        evaluate_every: interval,
        failure_domains,
        health_rules: vec![firebreak_rate_limiter::HealthRule {
            name: HEALTH_RULE.into(),
            signal: Some(firebreak_schema::Signal::PodStartSuccessRate),
            prometheus: None,
            scope: firebreak_rate_limiter::RuleScope::Domain,
            min: Some(90.0),
            max: None,
            max_drop_percent: None,
            max_rise: None,
            min_pod_starts,
            consecutive: std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN),
            for_: Duration::ZERO,
            no_data: firebreak_rate_limiter::NoData::Inconclusive,
            halts: vec![Operation::CanaryBatch],
            resume_after: None,
        }],
        ..Policy::default()
    }
}

/// One bad batch, measured.
struct Round {
    cluster: String,
    batch: usize,
    /// From the relabelling to the first failed pod start seen.
    first_failure: Duration,
    /// From the first failed pod start to the halt's time.
    to_halt: chrono::TimeDelta,
    /// From the first failed pod start to the first sample that broke the rule.
    to_breach: Option<chrono::TimeDelta>,
    /// The halt's measurement.
    says: String,
}

/// Whether a pod shows a failed start (its container waiting in `CrashLoopBackOff`).
fn crash_looping(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).any(|c| {
        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff")
    })
}

/// The first time a pod on one of `nodes` shows a failed start; `ready` fires once the watch
/// has listed the cluster.
async fn first_failure(
    client: kube::Client,
    nodes: std::collections::HashSet<String>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Option<Instant> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
    let mut ready = Some(ready);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(watcher::Event::Apply(p)) if ready.is_none() => {
                let on_batch = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| nodes.contains(n));
                if on_batch && crash_looping(&p) {
                    return Some(Instant::now());
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "benchmark pod watch failed; retrying"),
        }
    }
    None
}

/// What the health topic carried, per cluster: samples and bytes, and each sample's time with
/// the pod starts it counted in the bad runtime's domain.
#[derive(Default)]
struct Topic {
    sizes: BTreeMap<String, (u64, u64)>,
    bad_domain: BTreeMap<String, Vec<(chrono::DateTime<chrono::Utc>, firebreak_schema::PodStarts)>>,
}

type SharedTopic = Arc<std::sync::Mutex<Topic>>;

/// Relabels a batch of `cluster`'s nodes to the bad runtime; the halt the gate raises.
async fn bad_batch(
    stack: &crate::demo::Stack,
    cluster: &firebreak_fleet_sim::Cluster,
    args: &HealthBench,
    http: &reqwest::Client,
    topic: &SharedTopic,
) -> Result<Round> {
    use k8s_openapi::api::core::v1::Node;
    let client = crate::kube_client(&cluster.kubeconfig_path()).await?;
    cluster.set_runtime_health(BAD, false, firebreak_fleet_sim::RuntimeFailure::CrashLoop);
    let names = cluster.node_names();
    let size = args.batch.cumulative(u32::try_from(names.len()).unwrap_or(u32::MAX)).max(1) as usize;
    // Spread over the cluster, as a rollout's batch would be.
    let step = (names.len() / size).max(1);
    let batch: Vec<String> = names.iter().step_by(step).take(size).cloned().collect();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(first_failure(client.clone(), batch.iter().cloned().collect(), ready_tx));
    ready_rx.await.map_err(|_| Error::Bench(format!("{}: the pod watch ended before it listed", cluster.name())))?;
    let changed = Instant::now();
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let label = serde_json::json!({"metadata": {"labels": {firebreak_fleet_sim::RUNTIME_LABEL: BAD}}});
    for n in &batch {
        nodes.patch(n, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await?;
    }
    let deadline = Instant::now() + args.max_wait;
    let source = format!("rule:{HEALTH_RULE}");
    let halt = loop {
        let halts: Vec<firebreak_schema::Halt> = http
            .get(format!("{}/api/v1/halts", stack.gate_url))
            .bearer_auth(&stack.tokens.viewer)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::Bench(format!("gate halts: {e}")))?
            .json()
            .await
            .map_err(|e| Error::Bench(format!("gate halts: {e}")))?;
        let ours = halts.into_iter().find(|h| {
            h.source.as_deref() == Some(source.as_str()) && h.scope.cluster.as_deref() == Some(cluster.name())
        });
        if let Some(h) = ours {
            break h;
        }
        if Instant::now() > deadline {
            watch.abort();
            return Err(Error::Bench(format!("{}: no halt within {:?}", cluster.name(), args.max_wait)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The failure was seen before the halt was read; the watch has it by now.
    let failed = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .ok()
        .and_then(|r| r.ok().flatten())
        .ok_or_else(|| Error::Bench(format!("{}: halted, but no failed pod start was seen", cluster.name())))?;
    // The halt's time is the gate's wall clock; the failure's is this process's monotonic one.
    let failed_at =
        chrono::Utc::now() - chrono::TimeDelta::from_std(failed.elapsed()).map_err(|e| Error::Bench(e.to_string()))?;
    // The first sample since the failure in which the batch's domain broke the rule.
    let breached = topic.lock().unwrap_or_else(|e| e.into_inner()).bad_domain.get(cluster.name()).and_then(|v| {
        v.iter()
            .find(|(at, p)| {
                *at >= failed_at && p.decided() >= args.min_pod_starts && p.success_percent().is_some_and(|r| r < 90.0)
            })
            .map(|(at, _)| *at)
    });
    Ok(Round {
        cluster: cluster.name().into(),
        batch: batch.len(),
        first_failure: failed.duration_since(changed),
        to_halt: halt.at - failed_at,
        to_breach: breached.map(|b| b - failed_at),
        says: halt.signals.first().map(|m| m.message.clone()).unwrap_or(halt.reason),
    })
}

/// The sum of a metric's samples in an OpenMetrics text (`name value` or `name{…} value`)
/// whose labels contain `labels` (`""`: every sample).
fn metric_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `name{cluster="c"} value` lines of an OpenMetrics text, summed per cluster.
fn per_cluster(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix("{cluster=\"")) else { continue };
        let Some((cluster, value)) = rest.split_once("\"} ") else { continue };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(cluster.to_owned()).or_default() += v;
        }
    }
    out
}

async fn health(args: HealthBench) -> Result<Vec<Headline>> {
    use rdkafka::consumer::Consumer;
    if args.min_pod_starts == 0 {
        return Err(Error::Usage("--min-pod-starts must be at least 1".into()));
    }
    if args.interval.is_zero() {
        return Err(Error::Usage("--interval must be more than 0".into()));
    }
    let scratch = Scratch::new()?;
    let dir = scratch.0.clone();
    let mut opts = crate::demo::StackOptions::new(dir.clone(), args.clusters, args.nodes);
    opts.healing = false;
    opts.policy = health_policy(args.interval, args.min_pod_starts);
    opts.sample_every = args.interval;
    // The detector's production window and deadline.
    opts.pod_window = Duration::from_secs(300);
    opts.pod_start_deadline = Duration::from_secs(120);
    opts.timings.churn_per_minute = args.churn_per_minute;
    opts.timings.pod_lifetime = args.pod_lifetime;
    let started = Instant::now();
    let stack = crate::demo::Stack::start(opts).await?;
    // Every health sample on the topic: count and bytes per cluster.
    let consumer: rdkafka::consumer::StreamConsumer = stack
        .kafka_config
        .consumer(&format!("bench-health-{}", uuid::Uuid::now_v7().simple()))
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    consumer.subscribe(&[firebreak_schema::HEALTH_TOPIC]).map_err(firebreak_plumbing::Error::from)?;
    let topic: SharedTopic = Arc::default();
    let counting = {
        let topic = topic.clone();
        let domain = format!("{}={BAD}", firebreak_fleet_sim::RUNTIME_LABEL);
        tokio::spawn(async move {
            while let Ok(m) = consumer.recv().await {
                let sample = firebreak_plumbing::kafka::decode_message::<firebreak_schema::HealthSample>(&m);
                let mut t = topic.lock().unwrap_or_else(|e| e.into_inner());
                let Ok(sample) = sample else { continue };
                let e = t.sizes.entry(sample.cluster.clone()).or_default();
                e.0 += 1;
                e.1 += m.payload_len() as u64;
                let starts = sample.pod_starts_by_domain.get(&domain).cloned().unwrap_or_default();
                t.bad_domain.entry(sample.cluster).or_default().push((sample.at, starts));
            }
        })
    };
    let result = health_rounds(&stack, &args, started, &topic).await;
    let metrics = reqwest::get(format!("{}/metrics", stack.metrics_url)).await;
    counting.abort();
    // The consumer goes before the broker does.
    let _ = counting.await;
    stack.shutdown().await;
    let (rounds, pods) = result?;
    let metrics = metrics
        .map_err(|e| Error::Bench(format!("detector metrics: {e}")))?
        .text()
        .await
        .map_err(|e| Error::Bench(format!("detector metrics: {e}")))?;
    let interval = args.interval.as_secs_f64();
    println!(
        "firebreak bench health: {} clusters × {} nodes, {} pod starts/min per cluster, health interval {}s; rule \
         {HEALTH_RULE}: pod_start_success_rate ≥ 90 in each runtime domain over ≥ {} starts, 2 samples in a row; \
         this machine ({} CPUs)",
        args.clusters,
        args.nodes,
        args.churn_per_minute,
        interval,
        args.min_pod_starts,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "(failure: the first pod of the batch seen in CrashLoopBackOff; breach: the first health sample in which the \
         batch's domain broke the rule, i.e. had the evidence; halt: the gate's halt record)"
    );
    println!(
        "{:<8} {:>6} {:>16} {:>18} {:>17} {:>17}  halt's measurement",
        "cluster", "batch", "change→failure", "failure→breach", "breach→halt", "failure→halt"
    );
    let secs = |d: chrono::TimeDelta| d.as_seconds_f64();
    let both = |d: f64| format!("{d:.1}s {:.2}i", d / interval);
    for r in &rounds {
        let breach = r.to_breach.map(secs);
        println!(
            "{:<8} {:>6} {:>16} {:>18} {:>17} {:>17}  {}",
            r.cluster,
            r.batch,
            format!("{:.1}s", r.first_failure.as_secs_f64()),
            breach.map_or("-".into(), both),
            breach.map_or("-".into(), |b| both(secs(r.to_halt) - b)),
            both(secs(r.to_halt)),
            r.says
        );
    }
    let worst = |f: &dyn Fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).fold(0.0, f64::max) / interval;
    let to_halt = worst(&|r| Some(secs(r.to_halt)));
    println!(
        "worst, in health intervals (i): failure → halt {:.2} (goal ≤ 2), of which breach → halt (the gate's own \
         part) {:.2}",
        worst(&|r| Some(secs(r.to_halt))),
        worst(&|r| r.to_breach.map(|b| secs(r.to_halt) - secs(b)))
    );
    let count = per_cluster(&metrics, "firebreak_detector_health_samples_total");
    let seconds = per_cluster(&metrics, "firebreak_detector_health_sample_seconds_total");
    let sizes = topic.lock().unwrap_or_else(|e| e.into_inner()).sizes.clone();
    println!("{:<8} {:>8} {:>10} {:>18} {:>16}", "cluster", "pods", "samples", "build mean (ms)", "bytes on topic");
    for (cluster, n) in &count {
        let mean_ms = seconds.get(cluster).copied().unwrap_or_default() * 1000.0 / n.max(1.0);
        let (k, bytes) = sizes.get(cluster).copied().unwrap_or_default();
        println!(
            "{cluster:<8} {:>8} {n:>10} {mean_ms:>18.3} {:>16}",
            pods.get(cluster).copied().unwrap_or_default(),
            bytes.checked_div(k).unwrap_or_default()
        );
    }
    Ok(vec![Headline::new(
        "health",
        "first failed pod start → halt, worst, health intervals",
        format!("{to_halt:.2}"),
        "≤ 2",
        to_halt <= 2.0,
    )])
}

/// Waits until every cluster's health is measured and holds, then runs a bad batch in each.
async fn health_rounds(
    stack: &crate::demo::Stack,
    args: &HealthBench,
    started: Instant,
    topic: &SharedTopic,
) -> Result<(Vec<Round>, BTreeMap<String, usize>)> {
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| Error::Bench(e.to_string()))?;
    let deadline = Instant::now() + args.max_wait;
    for cluster in stack.fleet.clusters() {
        loop {
            let verdict: Option<firebreak_schema::Verdict> = async {
                let url = format!("{}/api/v1/verdict?cluster={}", stack.gate_url, cluster.name());
                http.get(url).bearer_auth(&stack.tokens.viewer).send().await.ok()?.json().await.ok()
            }
            .await;
            if verdict.is_some_and(|v| v.verdict == firebreak_schema::Phase::Successful) {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Bench(format!("{}: its health never held", cluster.name())));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tracing::info!(after_s = started.elapsed().as_secs(), "every cluster healthy and measured");
    // Pods made at bootstrap end over [0.5, 1.5] lifetimes; from then on the churn is steady.
    tokio::time::sleep_until((started + args.pod_lifetime.mul_f64(1.5)).into()).await;
    let mut rounds = Vec::new();
    let mut pods = BTreeMap::new();
    for cluster in stack.fleet.clusters() {
        rounds.push(bad_batch(stack, cluster, args, &http, topic).await?);
        let client = crate::kube_client(&cluster.kubeconfig_path()).await?;
        let all: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
        pods.insert(cluster.name().to_owned(), all.list(&Default::default()).await?.items.len());
    }
    Ok((rounds, pods))
}
