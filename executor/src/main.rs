//! `gocron-executor --config conf/conf.ini`: see the library for what it does.

use clap::Parser as _;
use gocron_shared::config::Config;
use gocron_shared::daemon::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_tracing();
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    let (shutdown, hurry) = daemon::shutdown_and_hurry_on_signals();
    gocron_executor::run_until(config, shutdown, hurry).await
}
