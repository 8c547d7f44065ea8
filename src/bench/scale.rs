//! `firebreak bench scale`: how the control plane's cost grows with the fleet. For each size it
//! runs `firebreak bench fleet` as a child process (fleet-sim, the control plane and the load
//! each in a process of their own, so that every size starts from fresh heaps); the child
//! reports the control plane's peak memory and CPU under the load, fleet-sim's memory, and the
//! time from a fault published to its node cordoned and tainted. Then one table and one SVG plot
//! (plotters) of memory and latency against nodes.
//!
//! A size the machine cannot hold is a row that says how it failed; the plot has the sizes that
//! ran.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use plotters::prelude::*;

use super::fleet::SizeFigures;
use crate::{Error, Result};

/// `firebreak bench scale` flags.
#[derive(Debug, Clone, Args)]
pub struct ScaleBench {
    /// Fleet sizes, in nodes (clusters of --nodes-per-cluster each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000,100000")]
    pub sizes: Vec<usize>,
    /// Nodes per simulated cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes_per_cluster: usize,
    /// How long each size's control plane is measured under the load.
    #[arg(long, default_value = "2m", value_parser = crate::cli::positive_duration)]
    pub duration: Duration,
    /// Kubelet Lease and agent heartbeat period.
    #[arg(long, default_value = "10s", value_parser = crate::cli::positive_duration)]
    pub heartbeat: Duration,
    /// How long each size's control plane may take before it is measured as it is.
    #[arg(long, default_value = "3m", value_parser = crate::cli::positive_duration)]
    pub setup_timeout: Duration,
    /// Where the SVG plot is written.
    #[arg(long, default_value = "firebreak-scale.svg")]
    pub plot: PathBuf,
}

/// Runs `bench fleet` at each size, prints the table, draws the plot.
pub async fn scale(args: ScaleBench) -> Result<Vec<super::Headline>> {
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.nodes_per_cluster == 0 {
        return Err(Error::Usage("--sizes and --nodes-per-cluster must be more than zero".into()));
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io { what: "find this binary".into(), source })?;
    let scratch = super::Scratch::new()?;
    println!(
        "firebreak bench scale: bench fleet at {} nodes ({} per cluster), each measured for {:?}, one child process \
         per size, this machine ({} CPUs)",
        args.sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
        args.nodes_per_cluster,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut ran = Vec::new();
    let mut failed = Vec::new();
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    for &size in &args.sizes {
        let clusters = size.div_ceil(args.nodes_per_cluster);
        let nodes = size.div_ceil(clusters);
        let figures = scratch.0.join(format!("{size}.json"));
        println!("--- {size} nodes: {clusters} cluster(s) × {nodes}");
        let status = tokio::process::Command::new(&exe)
            .args(["bench", "fleet", "--clusters", &clusters.to_string(), "--nodes", &nodes.to_string()])
            .args(["--duration", &fmt(args.duration), "--heartbeat", &fmt(args.heartbeat)])
            .args(["--sample-every", &fmt((args.duration / 6).max(Duration::from_secs(1)))])
            .args(["--setup-timeout", &fmt(args.setup_timeout)])
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
        "{:>8} {:>9} {:>13} {:>12} {:>10} {:>10} {:>10} {:>6}",
        "nodes", "setup", "control MiB", "control CPU", "sim MiB", "p50 ms", "p99 ms", "lag"
    );
    for f in &ran {
        println!(
            "{:>8} {:>8.1}s {:>13.0} {:>11.0}% {:>10.0} {:>10} {:>10} {:>6}",
            f.nodes,
            f.setup_s,
            f.control_mib,
            f.control_cpu_percent,
            f.sim_mib,
            f.cordoned_ms.map_or("none".into(), |(p50, _)| format!("{p50:.0}")),
            f.cordoned_ms.map_or("none".into(), |(_, p99)| format!("{p99:.0}")),
            f.lag
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
                format!("{} nodes: control plane MiB, fault → cordoned p50 / p99", f.nodes),
                match f.cordoned_ms {
                    Some((p50, p99)) => format!("{:.0}; {p50:.0} / {p99:.0} ms", f.control_mib),
                    None => format!("{:.0}; none cordoned", f.control_mib),
                },
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

/// The control plane's memory (left) and fault → cordon latency (right) against nodes, on a
/// logarithmic axis of nodes.
fn plot(path: &std::path::Path, points: &[SizeFigures]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let (left, right) = root.split_horizontally(500);
    let lo = points.iter().map(|p| p.nodes).min().unwrap_or(1) as f64;
    let hi = points.iter().map(|p| p.nodes).max().unwrap_or(1) as f64;
    let xs = (lo * 0.7)..(hi * 1.4);
    let top = |v: &dyn Fn(&SizeFigures) -> Option<f64>| points.iter().filter_map(v).fold(1.0_f64, f64::max) * 1.15;
    let mut memory = ChartBuilder::on(&left)
        .caption("Resident memory of the control plane", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.clone().log_scale(), 0.0..top(&|p| Some(p.control_mib)))
        .map_err(drawing(path))?;
    memory
        .configure_mesh()
        .x_desc("simulated nodes (log)")
        .y_desc("MiB")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(drawing(path))?;
    // A size where no node was cordoned has no latency point.
    let series = |v: fn(&SizeFigures) -> Option<f64>| {
        points.iter().filter_map(move |p| Some((p.nodes as f64, v(p)?))).collect::<Vec<_>>()
    };
    memory
        .draw_series(LineSeries::new(series(|p| Some(p.control_mib)), BLUE.stroke_width(2)))
        .map_err(drawing(path))?;
    memory
        .draw_series(series(|p| Some(p.control_mib)).into_iter().map(|xy| Circle::new(xy, 4, BLUE.filled())))
        .map_err(drawing(path))?;
    let mut latency = ChartBuilder::on(&right)
        .caption("Fault published → node cordoned", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xs.log_scale(), 0.0..top(&|p| p.cordoned_ms.map(|c| c.1)))
        .map_err(drawing(path))?;
    latency
        .configure_mesh()
        .x_desc("simulated nodes (log)")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(drawing(path))?;
    for (name, color, v) in [
        ("p50", BLUE, (|p: &SizeFigures| p.cordoned_ms.map(|c| c.0)) as fn(&SizeFigures) -> Option<f64>),
        ("p99", RED, |p| p.cordoned_ms.map(|c| c.1)),
    ] {
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
