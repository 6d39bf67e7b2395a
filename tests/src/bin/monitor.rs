//! The real monitor as a process of its own, for tests that kill it with SIGKILL: what
//! `gocron-monitor`'s `main` does, built inside this package so that its tests can find it.

use clap::Parser as _;
use gocron_shared::config::Config;
use gocron_shared::daemon::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_tracing();
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    gocron_monitor::run(config, daemon::shutdown_on_signals()).await
}
