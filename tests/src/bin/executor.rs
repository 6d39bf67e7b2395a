//! The real executor as a process of its own, for tests that kill it with SIGKILL: the same
//! `main` as `gocron-executor`, built inside this package so that its tests can find it.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gocron_executor::main().await
}
