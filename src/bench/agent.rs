//! `firebreak bench agent`: one `firebreak-agent` process, as a node runs it, against a Kafka
//! broker (librdkafka's mock cluster, in this process): its resident memory and CPU idle, then
//! while a writer appends kernel log records to its host root at a fixed rate (one in a hundred
//! a fault its rules know). Read from `/proc/<pid>/status` and `/proc/<pid>/stat`; the faults it
//! delivered are counted on the topic, so the load figure is for an agent that kept up.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Args;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::DefaultProducerContext,
};

use crate::{Error, Result};

/// `firebreak bench agent` flags.
#[derive(Debug, Clone, Args)]
pub struct AgentBench {
    /// The agent binary (default: `firebreak-agent` beside this one; build it with
    /// `cargo build --release -p firebreak-agent`).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// How long the idle agent is measured.
    #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
    pub idle: Duration,
    /// How long the loaded agent is measured.
    #[arg(long, default_value = "30s", value_parser = crate::cli::positive_duration)]
    pub load: Duration,
    /// Kernel log records written per second under load.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
}

fn agent_bin(args: &AgentBench) -> Result<PathBuf> {
    let bin = match &args.agent_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|source| Error::Io { what: "find this binary".into(), source })?
            .with_file_name("firebreak-agent"),
    };
    if !bin.is_file() {
        return Err(Error::Usage(format!(
            "no agent binary at {}: build it (`cargo build --release -p firebreak-agent`) or pass --agent-bin",
            bin.display()
        )));
    }
    Ok(bin)
}

fn host_root(dir: &Path) -> Result<()> {
    let io = |what: String| move |source| Error::Io { what, source };
    for (file, text) in [
        ("dev/kmsg", String::new()),
        ("proc/stat", format!("cpu 0\nbtime {}\n", chrono::Utc::now().timestamp() - 3600)),
        ("proc/sys/kernel/random/boot_id", format!("{}\n", uuid::Uuid::new_v4())),
        ("proc/mounts", "/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sda2 /var/lib/kubelet ext4 rw 0 0\n".to_owned()),
    ] {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
    }
    Ok(())
}

/// Records on a topic (sum of its partitions' high watermarks).
fn records(consumer: &BaseConsumer, topic: &str) -> i64 {
    (0..3).filter_map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).ok()).map(|(_, hi)| hi).sum()
}

pub(super) async fn agent(args: AgentBench) -> Result<Vec<super::Headline>> {
    let bin = agent_bin(&args)?;
    let scratch = super::Scratch::new()?;
    let dir = scratch.0.clone();
    let root = dir.join("host");
    host_root(&root)?;
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).map_err(firebreak_plumbing::Error::from)?;
    let cluster = "bench";
    let fault_topic = firebreak_schema::fault_topic(cluster);
    for (topic, partitions) in firebreak_schema::topics::for_clusters([cluster]) {
        mock.create_topic(&topic, partitions, 1).map_err(firebreak_plumbing::Error::from)?;
    }
    let brokers = mock.bootstrap_servers();
    let counter: BaseConsumer = firebreak_plumbing::kafka::KafkaConfig::new(brokers.clone())
        .consumer("bench-agent")
        .create()
        .map_err(firebreak_plumbing::Error::from)?;
    println!(
        "firebreak bench agent: {} against librdkafka's mock broker, host root {}; idle {}s, then {} kernel log \
         records/s for {}s (1 in 100 a fault); this machine ({} CPUs)",
        bin.display(),
        root.display(),
        args.idle.as_secs(),
        args.rate,
        args.load.as_secs(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut child = tokio::process::Command::new(&bin)
        .args(["--cluster", cluster, "--node", "n1", "--kafka-brokers", &brokers])
        .arg("--host-root")
        .arg(&root)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--component", "kubelet=/run/kubelet.sock"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("agent.log"))
                .map_err(|source| Error::Io { what: format!("create {}", dir.join("agent.log").display()), source })?,
        )
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Io { what: format!("start {}", bin.display()), source })?;
    let pid = child.id().ok_or_else(|| Error::Bench("the agent exited at once".into()))?;

    // Idle, after it settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(Some(status)) = child.try_wait() {
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        return Err(Error::Bench(format!("the agent exited ({status}): {}", log.trim())));
    }
    let before = super::usage(pid)?;
    tokio::time::sleep(args.idle).await;
    let idle = super::usage(pid)?;
    let idle_cpu = (idle.cpu - before.cpu).as_secs_f64() / args.idle.as_secs_f64() * 100.0;

    // Under load: records appended at the rate, in 10 ms slices.
    let faults_before = records(&counter, &fault_topic);
    let kmsg = root.join("dev/kmsg");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .map_err(|source| Error::Io { what: format!("open {}", kmsg.display()), source })?;
    let start = Instant::now();
    let before = super::usage(pid)?;
    let (mut written, mut faults) = (0u64, 0i64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while start.elapsed() < args.load {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(args.rate)) as u64;
        let mut batch = String::new();
        while written < due {
            written += 1;
            let usec = start.elapsed().as_micros();
            if written % 100 == 0 {
                faults += 1;
                batch.push_str(&format!(
                    "3,{written},{usec},-;EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (page:0x{written:x})\n"
                ));
            } else {
                batch.push_str(&format!(
                    "6,{written},{usec},-;eth0: rx queue {} refilled, nothing wrong\n",
                    written % 8
                ));
            }
        }
        log.write_all(batch.as_bytes())
            .map_err(|source| Error::Io { what: format!("write {}", kmsg.display()), source })?;
    }
    let loaded = super::usage(pid)?;
    let load_secs = start.elapsed().as_secs_f64();
    let load_cpu = (loaded.cpu - before.cpu).as_secs_f64() / load_secs * 100.0;
    // The faults written must all be delivered (their ids are distinct), within a grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delivered = records(&counter, &fault_topic) - faults_before;
    while delivered < faults && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        delivered = records(&counter, &fault_topic) - faults_before;
    }
    let _ = child.kill().await;
    println!("{:<44} {:>12} {:>16}", "", "idle", format!("{} records/s", args.rate));
    println!(
        "{:<44} {:>9.1} MiB {:>12.1} MiB",
        "resident memory (VmRSS)",
        idle.rss_kib as f64 / 1024.0,
        loaded.rss_kib as f64 / 1024.0
    );
    println!(
        "{:<44} {:>9.1} MiB {:>12.1} MiB",
        "peak resident memory (VmHWM)",
        idle.peak_kib as f64 / 1024.0,
        loaded.peak_kib as f64 / 1024.0
    );
    println!("{:<44} {:>10.2} % {:>14.2} %", "CPU, of one core", idle_cpu, load_cpu);
    println!("records written {written}, faults among them {faults}, faults delivered to the topic {delivered}");
    println!("goals (issue 9 and 11): resident ≤ 16 MiB; idle CPU ≤ 0.2 % of a core");
    if delivered < faults {
        return Err(Error::Bench(format!("the agent delivered {delivered} of {faults} faults: it did not keep up")));
    }
    let mib = idle.rss_kib.max(loaded.rss_kib) as f64 / 1024.0;
    Ok(vec![
        super::Headline::new(
            "agent",
            "resident memory, idle and loaded (the larger)",
            format!("{mib:.1} MiB"),
            "≤ 16 MiB",
            mib <= 16.0,
        ),
        super::Headline::new("agent", "CPU idle, of one core", format!("{idle_cpu:.2} %"), "≤ 0.2 %", idle_cpu <= 0.2),
    ])
}
