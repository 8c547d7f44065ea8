//! `firebreak`: every Firebreak service, and the demo, in one binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = firebreak::cli::Cli::parse();
    firebreak::init_telemetry(cli.log_json);
    firebreak::cli::run(cli).await?;
    Ok(())
}
