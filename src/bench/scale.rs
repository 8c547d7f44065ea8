//! `firebreak bench scale`: how the demo's cost grows with the fleet. For each size it runs
//! `firebreak bench detect` as a child process, so that every size starts from a fresh heap;
//! the child reports its process's resident memory and idle CPU with the detection latency.
//! Then one table and one SVG plot (plotters) of memory and latency against nodes.
//!
//! What is measured is the demo's one process: the simulated clusters, an agent per node and
//! the whole control plane together. A size the machine cannot hold is a row that says how it
//! failed; the plot has the sizes that ran.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use plotters::prelude::*;

use super::isolate::SizeFigures;
use crate::{Error, Result};

/// `firebreak bench scale` flags.
#[derive(Debug, Clone, Args)]
pub struct ScaleBench {
    /// Fleet sizes, in nodes (clusters of --nodes-per-cluster each).
    #[arg(long, value_delimiter = ',', default_value = "1000,3000,10000")]
    pub sizes: Vec<usize>,
    /// Nodes per simulated cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes_per_cluster: usize,
    /// Faults measured one after another at each size.
    #[arg(long, default_value_t = 20)]
    pub faults: usize,
    /// How long each size's stack is watched idle for its memory and CPU.
    #[arg(long, default_value = "10s", value_parser = crate::cli::positive_duration)]
    pub idle: Duration,
    /// How long to wait for one node before calling a size's run failed.
    #[arg(long, default_value = "120s", value_parser = crate::cli::positive_duration)]
    pub max_wait: Duration,
    /// Where the SVG plot is written.
    #[arg(long, default_value = "firebreak-scale.svg")]
    pub plot: PathBuf,
}

/// Runs `bench detect` at each size, prints the table, draws the plot.
pub async fn scale(args: ScaleBench) -> Result<Vec<super::Headline>> {
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.nodes_per_cluster == 0 || args.faults == 0 {
        return Err(Error::Usage("--sizes, --nodes-per-cluster and --faults must be more than zero".into()));
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io { what: "find this binary".into(), source })?;
    let scratch = super::Scratch::new()?;
    println!(
        "firebreak bench scale: bench detect at {} nodes ({} per cluster), {} faults each, one child process per size, \
         this machine ({} CPUs)",
        args.sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
        args.nodes_per_cluster,
        args.faults,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut ran = Vec::new();
    let mut failed = Vec::new();
    for &size in &args.sizes {
        let clusters = size.div_ceil(args.nodes_per_cluster);
        let nodes = size.div_ceil(clusters);
        let figures = scratch.0.join(format!("{size}.json"));
        println!("--- {size} nodes: {clusters} cluster(s) × {nodes}");
        let status = tokio::process::Command::new(&exe)
            .args(["bench", "detect", "--clusters", &clusters.to_string(), "--nodes", &nodes.to_string()])
            .args(["--faults", &args.faults.min(clusters * nodes).to_string()])
            .args(["--idle", &humantime::format_duration(args.idle).to_string()])
            .args(["--max-wait", &humantime::format_duration(args.max_wait).to_string()])
            .arg("--figures-to")
            .arg(&figures)
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|source| Error::Io { what: format!("run {}", exe.display()), source })?;
        let read = std::fs::read(&figures)
            .ok()
            .and_then(|b| serde_json::from_slice::<SizeFigures>(&b).ok())
            .filter(|_| status.success());
        match read {
            Some(f) => ran.push(f),
            None => {
                println!("{size} nodes: the run failed ({status}); no figures");
                failed.push((size, status.to_string()));
            }
        }
    }
    println!(
        "{:>8} {:>10} {:>14} {:>14} {:>10} {:>10}",
        "nodes", "stack up", "resident MiB", "idle CPU %", "p50 ms", "p99 ms"
    );
    for f in &ran {
        println!(
            "{:>8} {:>9.1}s {:>14.0} {:>14.0} {:>10.0} {:>10.0}",
            f.nodes, f.setup_s, f.rss_mib, f.idle_cpu_percent, f.p50_ms, f.p99_ms
        );
    }
    for (size, why) in &failed {
        println!("{size:>8} failed: {why}");
    }
    if !ran.is_empty() {
        plot(&args.plot, &ran)?;
        println!("plot: {}", args.plot.display());
    }
    let mut rows: Vec<super::Headline> = ran
        .iter()
        .map(|f| {
            super::Headline::new(
                "scale",
                format!("{} nodes: resident MiB, detect p50 / p99", f.nodes),
                format!("{:.0}; {:.0} / {:.0} ms", f.rss_mib, f.p50_ms, f.p99_ms),
                "(a curve)",
                true,
            )
        })
        .collect();
    rows.extend(failed.into_iter().map(|(size, why)| {
        super::Headline::new("scale", format!("{size} nodes"), format!("failed: {why}"), "(a curve)", false)
    }));
    Ok(rows)
}

fn drawing<E: std::error::Error + Send + Sync>(path: &std::path::Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Io { what: format!("draw {}", path.display()), source: std::io::Error::other(e.to_string()) }
}

/// Memory (left) and detection latency (right) against nodes, on a logarithmic axis of nodes.
fn plot(path: &std::path::Path, points: &[SizeFigures]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let (left, right) = root.split_horizontally(500);
    let lo = points.iter().map(|p| p.nodes).min().unwrap_or(1) as f64;
    let hi = points.iter().map(|p| p.nodes).max().unwrap_or(1) as f64;
    let xs = (lo * 0.7)..(hi * 1.4);
    let top = |v: &dyn Fn(&SizeFigures) -> f64| points.iter().map(v).fold(1.0_f64, f64::max) * 1.15;
    let mut memory = ChartBuilder::on(&left)
        .caption("Resident memory of the demo process", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.clone().log_scale(), 0.0..top(&|p| p.rss_mib))
        .map_err(drawing(path))?;
    memory
        .configure_mesh()
        .x_desc("simulated nodes (log)")
        .y_desc("MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(drawing(path))?;
    let series = |v: fn(&SizeFigures) -> f64| points.iter().map(move |p| (p.nodes as f64, v(p))).collect::<Vec<_>>();
    memory.draw_series(LineSeries::new(series(|p| p.rss_mib), BLUE.stroke_width(2))).map_err(drawing(path))?;
    memory
        .draw_series(series(|p| p.rss_mib).into_iter().map(|xy| Circle::new(xy, 4, BLUE.filled())))
        .map_err(drawing(path))?;
    let mut latency = ChartBuilder::on(&right)
        .caption("Kernel log line → node cordoned", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.log_scale(), 0.0..top(&|p| p.p99_ms))
        .map_err(drawing(path))?;
    latency
        .configure_mesh()
        .x_desc("simulated nodes (log)")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(drawing(path))?;
    for (name, color, v) in
        [("p50", BLUE, (|p: &SizeFigures| p.p50_ms) as fn(&SizeFigures) -> f64), ("p99", RED, |p| p.p99_ms)]
    {
        latency
            .draw_series(LineSeries::new(series(v), color.stroke_width(2)))
            .map_err(drawing(path))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        latency
            .draw_series(series(v).into_iter().map(|xy| Circle::new(xy, 4, color.filled())))
            .map_err(drawing(path))?;
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(drawing(path))?;
    root.present().map_err(drawing(path))?;
    Ok(())
}
