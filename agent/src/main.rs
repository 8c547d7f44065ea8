//! `firebreak-agent`: the lean per-node daemon.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Firebreak node agent: kernel log faults and heartbeats to Kafka")]
struct Cli {
    #[command(flatten)]
    args: firebreak_agent::AgentArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .json()
        .init();
    firebreak_agent::run(Cli::parse().args).await?;
    Ok(())
}
