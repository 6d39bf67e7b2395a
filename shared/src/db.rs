//! The database connection: one pool per daemon, migrated at start.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend, DbErr,
};
use sea_orm_migration::MigratorTrait;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;
use crate::daemon::{Backoff, Cancelled};
use crate::migration::Migrator;

/// Connects to the configured database, retrying with backoff until it answers or `cancel`.
///
/// A SQLite file's folder is created if missing, and the file is put in WAL mode, so that the
/// daemons of one machine can write it at once without "database is locked" at every tick.
pub async fn connect(
    config: &DatabaseConfig,
    cancel: &CancellationToken,
) -> Result<DatabaseConnection, Cancelled> {
    connect_limited(
        config,
        config.statement_timeout,
        config.max_connections,
        cancel,
    )
    .await
}

/// Connects with at most `connections` connections, each of whose statements the server cancels
/// after `timeout` (MySQL/MariaDB, PostgreSQL; `None`: no limit).
async fn connect_limited(
    config: &DatabaseConfig,
    timeout: Option<Duration>,
    connections: u32,
    cancel: &CancellationToken,
) -> Result<DatabaseConnection, Cancelled> {
    if let Some(path) = sqlite_path(&config.url)
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the SQLite folder");
    }
    let mut options = ConnectOptions::new(config.url.clone());
    if let Some(timeout) = timeout {
        let ms = timeout.as_millis().to_string();
        options.map_sqlx_postgres_opts(move |o| o.options([("statement_timeout", ms.as_str())]));
        let secs = timeout.as_secs_f64();
        let ms = timeout.as_millis();
        options.after_connect(move |db| {
            Box::pin(async move {
                if db.get_database_backend() == DbBackend::MySql {
                    // MariaDB's variable, or else MySQL's (which limits reads only).
                    let maria = format!("SET SESSION max_statement_time = {secs}");
                    if db.execute_unprepared(&maria).await.is_err() {
                        let mysql = format!("SET SESSION max_execution_time = {ms}");
                        if let Err(e) = db.execute_unprepared(&mysql).await {
                            tracing::warn!(error = %e, "cannot limit statement time on this MySQL server");
                        }
                    }
                }
                Ok(())
            })
        });
    }
    options
        .max_connections(connections)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    let mut backoff = Backoff::new("database");
    loop {
        match Database::connect(options.clone()).await {
            Ok(db) => return Ok(db),
            Err(e) => backoff.wait(&e, cancel).await?,
        }
    }
}

/// Connects (see [`connect`]) and brings the schema up to date.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    cancel: &CancellationToken,
) -> Result<DatabaseConnection, Cancelled> {
    // Migrations may rewrite a big table: on a connection of their own, without the limit.
    let unlimited = connect_limited(config, None, 1, cancel).await?;
    let mut backoff = Backoff::new("database migration");
    loop {
        match migrate(&unlimited).await {
            Ok(()) => break,
            Err(e) => backoff.wait(&e, cancel).await?,
        }
    }
    if let Err(e) = unlimited.close().await {
        tracing::debug!(error = %e, "closing the migration connection");
    }
    connect(config, cancel).await
}

/// Applies pending migrations. Safe to call from several daemons at once: a racing loser gets
/// an error and, retried, finds nothing left to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// The file path of a `sqlite://` URL, without its query string.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Whether `err` is a unique-constraint violation (the duplicate-run fence).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://var/g.db?mode=rwc"), Some("var/g.db"));
        assert_eq!(sqlite_path("sqlite:///abs/g.db"), Some("/abs/g.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("mysql://x"), None);
    }
}
