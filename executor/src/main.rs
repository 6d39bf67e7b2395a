//! `gocron-executor --config conf/conf.ini`: see the library for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gocron_executor::main().await
}
