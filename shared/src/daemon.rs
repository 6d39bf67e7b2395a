//! What the three daemons' `main`s share: flags, logging, signals, and retry with backoff.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The allocator of every process that links this crate (the daemons, `gocronctl`, the tests
/// and the benchmark): jemalloc rather than glibc's. At a thousand runs a second a run makes
/// many short-lived allocations on several threads (tasks, buffers, statements, Redis commands),
/// and glibc's allocator took a sixth of the daemons' CPU in a profile (its arenas'
/// consolidation and unlinking, mostly); with jemalloc the daemons spent about 12 % less CPU
/// per run, for about a fifth more peak memory (README, "Benchmark").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The flags every daemon takes.
#[derive(Debug, clap::Parser)]
pub struct Args {
    /// The configuration file.
    #[arg(long, short, default_value = "conf/conf.ini", env = "GOCRON_CONFIG")]
    pub config: PathBuf,
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default: `info`), coloured on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes belong on a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token cancelled by the first SIGINT or SIGTERM; a second one exits the process at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; a second signal stops at once");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

/// Two tokens: the first SIGINT or SIGTERM cancels `.0` (stop gracefully), the second cancels
/// `.1` (hurry: skip what can be skipped, such as waiting for running jobs), a third exits the
/// process at once.
pub fn shutdown_and_hurry_on_signals() -> (CancellationToken, CancellationToken) {
    let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
    let (first, second) = (shutdown.clone(), hurry.clone());
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; a second signal stops running jobs at once");
        first.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: stopping running jobs now; a third exits at once");
        second.cancel();
        wait_for_signal().await;
        tracing::warn!("third signal: exiting now");
        std::process::exit(130);
    });
    (shutdown, hurry)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be stopped by SIGKILL; never spin.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Returned when a wait was cut short by shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled by shutdown")]
pub struct Cancelled;

/// Exponential backoff (100 ms doubling to 10 s) for reconnecting to a dependency, logging each
/// failure with the dependency's name.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    delay: Duration,
    attempts: u32,
}

impl Backoff {
    /// The first delay.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The largest delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// A fresh backoff for dependency `what`.
    pub fn new(what: &'static str) -> Backoff {
        Backoff {
            what,
            delay: Backoff::MIN,
            attempts: 0,
        }
    }

    /// Logs `error` and sleeps the current delay (then doubles it), unless `cancel` fires first.
    pub async fn wait(
        &mut self,
        error: impl Display,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        self.attempts += 1;
        tracing::warn!(
            dependency = self.what,
            attempt = self.attempts,
            retry_in_ms = self.delay.as_millis() as u64,
            "{}: {error}",
            self.what
        );
        tokio::select! {
            _ = cancel.cancelled() => return Err(Cancelled),
            _ = tokio::time::sleep(self.delay) => {}
        }
        self.delay = (self.delay * 2).min(Backoff::MAX);
        Ok(())
    }

    /// Starts again from the smallest delay, after a success.
    pub fn reset(&mut self) {
        self.delay = Backoff::MIN;
        self.attempts = 0;
    }
}
