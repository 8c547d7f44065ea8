//! `firebreak bench ui`: what the on-call page's queries cost the event center with many stored
//! events, on SQLite and PostgreSQL.
//!
//! A fresh database is filled through the event center's own store, as its consumer writes:
//! `--events` faults in batches of 512 (each batch one transaction that also counts its faults
//! into incidents), spread over `--clusters` clusters of `--nodes` nodes in all and six kinds, so
//! there are up to nodes × 6 incidents. Then each query the page makes is run `--queries` times,
//! through the same store call and JSON encoding as the HTTP handler: the server's time for the
//! request, without the network. The baseline is the plain list of the latest 100 faults on the
//! same database.

use std::{collections::BTreeMap, time::Instant};

use clap::Args;
use firebreak_event_center::{Rules, Store, store::IncidentQuery};
use firebreak_schema::{FaultEvent, FaultKind, Severity, Source};

use super::{Figures, ms};
use crate::{Error, Result};

/// `firebreak bench ui` flags.
#[derive(Debug, Clone, Args)]
pub struct UiBench {
    /// Faults stored before the queries.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Nodes, over all clusters.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Clusters.
    #[arg(long, default_value_t = 10)]
    pub clusters: usize,
    /// Times each query is run.
    #[arg(long, default_value_t = 50)]
    pub queries: usize,
    /// The databases measured.
    #[command(flatten)]
    pub db: super::Databases,
}

const KINDS: [FaultKind; 6] = [
    FaultKind::KernelHung,
    FaultKind::MemoryCorrectable,
    FaultKind::NicErrors,
    FaultKind::ReadonlyFilesystem,
    FaultKind::KernelError,
    FaultKind::MountMissing,
];

fn fault(i: usize, args: &UiBench, start: chrono::DateTime<chrono::Utc>) -> FaultEvent {
    let node = i % args.nodes;
    let cluster = format!("c{}", node % args.clusters);
    let kind = KINDS[(i / args.nodes) % KINDS.len()];
    FaultEvent {
        id: uuid::Uuid::now_v7(),
        node: format!("{cluster}-node-{node:05}"),
        cluster,
        class: kind.class(),
        kind,
        severity: [Severity::Warning, Severity::Critical, Severity::Info][i % 3],
        source: Source::Agent,
        observed_at: start + chrono::TimeDelta::milliseconds(i as i64),
        message: format!("INFO: task kworker/{i}:1 blocked for more than 120 seconds."),
        evidence: BTreeMap::from([("rule".into(), "hung-task".into()), ("kmsg_seq".into(), i.to_string())]),
    }
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Bench(e.to_string())
}

/// Runs `f` `n` times; its latencies.
async fn measure<F, Fut>(n: usize, mut f: F) -> Result<Figures>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<u8>>>,
{
    let mut samples = Vec::with_capacity(n);
    let all = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(f().await?);
        samples.push(t.elapsed());
    }
    Ok(Figures::of(samples, all.elapsed()))
}

fn json<T: serde::Serialize>(t: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(t).map_err(failed)
}

pub async fn ui(args: UiBench) -> Result<Vec<super::Headline>> {
    if args.nodes == 0 || args.clusters == 0 || args.queries == 0 || args.clusters > args.nodes {
        return Err(Error::Usage(
            "--nodes, --clusters and --queries must be more than zero, and clusters at most nodes".into(),
        ));
    }
    let scratch = super::Scratch::new()?;
    let dbs = args.db.urls(&scratch, "events.db").await;
    println!(
        "firebreak bench ui: {} faults on {} nodes in {} clusters (6 kinds), each query {} times, this machine ({} CPUs)",
        args.events,
        args.nodes,
        args.clusters,
        args.queries,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Incidents stay active: the board has all of them to sort.
    let rules = Rules { resolve_quiet_after: chrono::TimeDelta::days(3650), ..Rules::default() };
    let start = chrono::Utc::now() - chrono::TimeDelta::days(1);
    let mut results = Vec::new();
    for (name, url) in dbs {
        let store = Store::open_with(&url, rules).await?;
        let t = Instant::now();
        let mut batch = Vec::with_capacity(512);
        for i in 0..args.events {
            batch.push(fault(i, &args, start));
            if batch.len() == 512 || i + 1 == args.events {
                store.insert_faults(&batch).await?;
                batch.clear();
            }
        }
        let fill = t.elapsed();
        let incidents = store.list_incidents(&IncidentQuery { limit: Some(1000), ..Default::default() }).await?;
        println!(
            "{name}: stored {} faults in {:.1} s ({:.0}/s) into {}{} incidents",
            args.events,
            fill.as_secs_f64(),
            args.events as f64 / fill.as_secs_f64().max(1e-9),
            incidents.items.len(),
            if incidents.next.is_some() { "+" } else { "" }
        );
        let q = |query: IncidentQuery| {
            let store = store.clone();
            move || {
                let store = store.clone();
                let query = query.clone();
                async move { json(&store.list_incidents(&query).await?) }
            }
        };
        let active = IncidentQuery { state: Some("active".into()), limit: Some(100), ..Default::default() };
        let cluster = IncidentQuery { cluster: Some("c1".into()), ..active.clone() };
        let node = IncidentQuery { cluster: Some("c1".into()), node: Some("c1-node-00001".into()), ..active.clone() };
        let kind = IncidentQuery { kind: Some("NicErrors".into()), ..active.clone() };
        // The fifth page of the board, by cursor.
        let mut page5 = active.clone();
        for _ in 0..4 {
            page5.cursor = store.list_incidents(&page5).await?.next;
        }
        let mut rows = vec![
            ("faults: latest 100 (baseline)", {
                let store = store.clone();
                measure(args.queries, || {
                    let store = store.clone();
                    async move { json(&store.list_faults(&Default::default()).await?) }
                })
                .await?
            }),
            ("board: active, 100", measure(args.queries, q(active)).await?),
            ("board: one cluster", measure(args.queries, q(cluster)).await?),
            ("board: one kind", measure(args.queries, q(kind)).await?),
            ("board: fifth page", measure(args.queries, q(page5)).await?),
            ("board: one node", measure(args.queries, q(node)).await?),
        ];
        let s = store.clone();
        rows.push((
            "node page (timeline)",
            measure(args.queries, || {
                let s = s.clone();
                async move { json(&s.node_timeline("c1", "c1-node-00001").await?) }
            })
            .await?,
        ));
        let s = store.clone();
        rows.push((
            "fleet view",
            measure(args.queries, || {
                let s = s.clone();
                async move { json(&s.fleet().await?) }
            })
            .await?,
        ));
        // Printed as soon as measured: a long run cut short still says what it measured.
        println!("{:<12} {:<30} {:>10} {:>10}", "database", "query", "p50", "p99");
        for (query, f) in &rows {
            println!("{name:<12} {query:<30} {:>10} {:>10}", ms(f.p50), ms(f.p99));
        }
        results.push((name, rows));
    }
    println!("goal: the incident list ≤ 200 ms at 1,000,000 stored events");
    let mut out = Vec::new();
    for (name, rows) in &results {
        // The slowest of the incident list's queries.
        let worst = rows.iter().filter(|(q, _)| q.starts_with("board")).map(|(_, f)| f.p99).max().unwrap_or_default();
        out.push(super::Headline::new(
            "ui",
            format!("incident list p99 (worst filter), {} events, {name}", args.events),
            ms(worst),
            "≤ 200 ms",
            worst <= std::time::Duration::from_millis(200),
        ));
    }
    Ok(out)
}
