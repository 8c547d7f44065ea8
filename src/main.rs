//! `firebreak`: every Firebreak service, and the demo, in one binary.

use clap::Parser;

/// mimalloc, not glibc's malloc: a fifth of the services' CPU went to malloc and free (see
/// docs/performance.md, "The allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = firebreak::cli::Cli::parse();
    firebreak::init_telemetry(cli.log_json);
    firebreak::cli::run(cli).await?;
    Ok(())
}
