//! Schema migrations, run by every daemon at start.
//!
//! The DDL is written out per backend rather than generated: users read and write these tables
//! with plain SQL, so the column types and defaults are part of the contract and should be
//! visible here as they are in the database. Every statement is idempotent (`IF NOT EXISTS`), so
//! that two daemons migrating at once cannot leave a half-made schema: the loser of the race
//! fails on the bookkeeping row and simply finds the work done when it retries (see
//! [`crate::db::migrate`]). Columns added later are added only where missing (MySQL and SQLite
//! have no `ADD COLUMN IF NOT EXISTS`), so that holds for them too; a released migration is
//! never edited: a change to the schema is a new migration, which upgrades take in place.
//!
//! `cron_run` has no index on `status` on purpose: every status change would move an entry in a
//! tiny-cardinality index, which is where InnoDB's gap locks made concurrent inserts and claims
//! deadlock under load.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::prelude::*;

/// All migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateTables),
            Box::new(PoliciesAndAlarms),
            Box::new(JobChanges),
            Box::new(Audit),
            Box::new(JobEnvironment),
            Box::new(Retries),
            Box::new(Events),
            Box::new(Chains),
            Box::new(Shards),
            Box::new(RunSources),
        ]
    }

    fn migration_table_name() -> DynIden {
        "gocron_migrations".into_iden()
    }
}

/// The `cron_job`, `cron_run`, `cron_alarm` and `cron_alarm_state` tables.
struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_create_cron_job_and_cron_run"
    }
}

const SQLITE: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_job (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name VARCHAR(255) NOT NULL,
        rule VARCHAR(255) NOT NULL,
        command TEXT NOT NULL,
        kind VARCHAR(16) NOT NULL DEFAULT 'shell',
        machine VARCHAR(255) NOT NULL DEFAULT '',
        timeout_secs INTEGER NOT NULL DEFAULT 0,
        timeout_policy VARCHAR(16) NOT NULL DEFAULT 'abandon',
        time_zone VARCHAR(64) NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1,
        alarm_emails VARCHAR(1024) NOT NULL DEFAULT '',
        alarm_mobiles VARCHAR(1024) NOT NULL DEFAULT '',
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        last_error TEXT NULL
    )"#,
    r#"CREATE TABLE IF NOT EXISTS cron_run (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        scheduled_at TIMESTAMP NOT NULL,
        status VARCHAR(16) NOT NULL,
        executor VARCHAR(255) NOT NULL DEFAULT '',
        started_at TIMESTAMP NULL,
        finished_at TIMESTAMP NULL,
        exit_code INTEGER NULL,
        output TEXT NULL,
        error TEXT NULL,
        "trigger" VARCHAR(16) NOT NULL DEFAULT 'schedule',
        UNIQUE (job_id, scheduled_at, "trigger")
    )"#,
];

const MYSQL: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_job (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        rule VARCHAR(255) NOT NULL,
        command TEXT NOT NULL,
        kind VARCHAR(16) NOT NULL DEFAULT 'shell',
        machine VARCHAR(255) NOT NULL DEFAULT '',
        timeout_secs INT NOT NULL DEFAULT 0,
        timeout_policy VARCHAR(16) NOT NULL DEFAULT 'abandon',
        time_zone VARCHAR(64) NOT NULL DEFAULT '',
        enabled INT NOT NULL DEFAULT 1,
        alarm_emails VARCHAR(1024) NOT NULL DEFAULT '',
        alarm_mobiles VARCHAR(1024) NOT NULL DEFAULT '',
        created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
        last_error TEXT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
    r#"CREATE TABLE IF NOT EXISTS cron_run (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        job_id BIGINT NOT NULL,
        scheduled_at DATETIME(3) NOT NULL,
        status VARCHAR(16) NOT NULL,
        executor VARCHAR(255) NOT NULL DEFAULT '',
        started_at DATETIME(3) NULL,
        finished_at DATETIME(3) NULL,
        exit_code INT NULL,
        output MEDIUMTEXT NULL,
        error TEXT NULL,
        `trigger` VARCHAR(16) NOT NULL DEFAULT 'schedule',
        UNIQUE KEY cron_run_tick (job_id, scheduled_at, `trigger`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
];

const POSTGRES: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_job (
        id BIGSERIAL PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        rule VARCHAR(255) NOT NULL,
        command TEXT NOT NULL,
        kind VARCHAR(16) NOT NULL DEFAULT 'shell',
        machine VARCHAR(255) NOT NULL DEFAULT '',
        timeout_secs INTEGER NOT NULL DEFAULT 0,
        timeout_policy VARCHAR(16) NOT NULL DEFAULT 'abandon',
        time_zone VARCHAR(64) NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1,
        alarm_emails VARCHAR(1024) NOT NULL DEFAULT '',
        alarm_mobiles VARCHAR(1024) NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        last_error TEXT NULL
    )"#,
    r#"CREATE TABLE IF NOT EXISTS cron_run (
        id BIGSERIAL PRIMARY KEY,
        job_id BIGINT NOT NULL,
        scheduled_at TIMESTAMPTZ(3) NOT NULL,
        status VARCHAR(16) NOT NULL,
        executor VARCHAR(255) NOT NULL DEFAULT '',
        started_at TIMESTAMPTZ(3) NULL,
        finished_at TIMESTAMPTZ(3) NULL,
        exit_code INTEGER NULL,
        output TEXT NULL,
        error TEXT NULL,
        "trigger" VARCHAR(16) NOT NULL DEFAULT 'schedule',
        CONSTRAINT cron_run_tick UNIQUE (job_id, scheduled_at, "trigger")
    )"#,
];

#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = by_backend(db.get_database_backend(), [SQLITE, MYSQL, POSTGRES])?;
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS cron_run")
            .await?;
        db.execute_unprepared("DROP TABLE IF EXISTS cron_job")
            .await?;
        Ok(())
    }
}

const SQLITE_0002: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_alarm (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dedup_key VARCHAR(255) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        channel VARCHAR(8) NOT NULL,
        job_id BIGINT NOT NULL DEFAULT 0,
        run_id BIGINT NULL,
        status VARCHAR(16) NOT NULL,
        recipients TEXT NOT NULL,
        subject VARCHAR(512) NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT NULL,
        created_at TIMESTAMP NOT NULL,
        next_attempt_at TIMESTAMP NOT NULL,
        sent_at TIMESTAMP NULL,
        claimed_by VARCHAR(255) NOT NULL DEFAULT '',
        UNIQUE (dedup_key)
    )"#,
    "CREATE INDEX IF NOT EXISTS cron_alarm_status ON cron_alarm (status)",
    "CREATE INDEX IF NOT EXISTS cron_alarm_job ON cron_alarm (job_id, kind)",
    r#"CREATE TABLE IF NOT EXISTS cron_alarm_state (
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL
    )"#,
];

const MYSQL_0002: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_alarm (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        dedup_key VARCHAR(255) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        channel VARCHAR(8) NOT NULL,
        job_id BIGINT NOT NULL DEFAULT 0,
        run_id BIGINT NULL,
        status VARCHAR(16) NOT NULL,
        recipients TEXT NOT NULL,
        subject VARCHAR(512) NOT NULL,
        body MEDIUMTEXT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        error TEXT NULL,
        created_at DATETIME(3) NOT NULL,
        next_attempt_at DATETIME(3) NOT NULL,
        sent_at DATETIME(3) NULL,
        claimed_by VARCHAR(255) NOT NULL DEFAULT '',
        UNIQUE KEY cron_alarm_dedup (dedup_key),
        KEY cron_alarm_status (status),
        KEY cron_alarm_job (job_id, kind)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
    r#"CREATE TABLE IF NOT EXISTS cron_alarm_state (
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
];

const POSTGRES_0002: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_alarm (
        id BIGSERIAL PRIMARY KEY,
        dedup_key VARCHAR(255) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        channel VARCHAR(8) NOT NULL,
        job_id BIGINT NOT NULL DEFAULT 0,
        run_id BIGINT NULL,
        status VARCHAR(16) NOT NULL,
        recipients TEXT NOT NULL,
        subject VARCHAR(512) NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT NULL,
        created_at TIMESTAMPTZ(3) NOT NULL,
        next_attempt_at TIMESTAMPTZ(3) NOT NULL,
        sent_at TIMESTAMPTZ(3) NULL,
        claimed_by VARCHAR(255) NOT NULL DEFAULT '',
        CONSTRAINT cron_alarm_dedup UNIQUE (dedup_key)
    )"#,
    "CREATE INDEX IF NOT EXISTS cron_alarm_status ON cron_alarm (status)",
    "CREATE INDEX IF NOT EXISTS cron_alarm_job ON cron_alarm (job_id, kind)",
    r#"CREATE TABLE IF NOT EXISTS cron_alarm_state (
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL
    )"#,
];

/// One of three per-backend values.
fn by_backend<T>(backend: DbBackend, [sqlite, mysql, postgres]: [T; 3]) -> Result<T, DbErr> {
    match backend {
        DbBackend::Sqlite => Ok(sqlite),
        DbBackend::MySql => Ok(mysql),
        DbBackend::Postgres => Ok(postgres),
        other => Err(DbErr::Migration(format!(
            "unsupported database backend {other:?}"
        ))),
    }
}

/// The timeout policies' and the misfire policy's columns (`cron_run.overrun_at`,
/// `cron_job.misfire`, `cron_job.done_at`) and the alarm tables (`cron_alarm`,
/// `cron_alarm_state`).
struct PoliciesAndAlarms;

impl MigrationName for PoliciesAndAlarms {
    fn name(&self) -> &str {
        "m0002_policies_misfire_alarms"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0002: &[(&str, &str, [&str; 3])] = &[
    (
        "cron_run",
        "overrun_at",
        ["TIMESTAMP NULL", "DATETIME(3) NULL", "TIMESTAMPTZ(3) NULL"],
    ),
    (
        "cron_job",
        "misfire",
        [
            "VARCHAR(16) NOT NULL DEFAULT 'skip'",
            "VARCHAR(16) NOT NULL DEFAULT 'skip'",
            "VARCHAR(16) NOT NULL DEFAULT 'skip'",
        ],
    ),
    (
        "cron_job",
        "done_at",
        ["TIMESTAMP NULL", "DATETIME(3) NULL", "TIMESTAMPTZ(3) NULL"],
    ),
];

/// Whether `table` has `column` (so that adding columns is idempotent on every backend: MySQL
/// and SQLite have no `ADD COLUMN IF NOT EXISTS`).
async fn has_column(
    db: &SchemaManagerConnection<'_>,
    table: &str,
    column: &str,
) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let sql = by_backend(
        backend,
        [
            "SELECT COUNT(*) AS n FROM pragma_table_info(?) WHERE name = ?",
            "SELECT COUNT(*) AS n FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?",
            "SELECT COUNT(*) AS n FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
        ],
    )?;
    Ok(count(db, sql, table, column).await? > 0)
}

/// The `n` of a `SELECT COUNT(*) AS n` of the schema, asked of `table` and `name`.
async fn count(
    db: &SchemaManagerConnection<'_>,
    sql: &str,
    table: &str,
    name: &str,
) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [table.into(), name.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("cannot read the schema of {table}")))?;
    row.try_get::<i64>("", "n")
}

/// Adds each of `columns` that its table lacks.
async fn add_columns(
    db: &SchemaManagerConnection<'_>,
    columns: &[(&str, &str, [&str; 3])],
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    for (table, column, types) in columns {
        if !has_column(db, table, column).await? {
            let ty = by_backend(backend, *types)?;
            db.execute_unprepared(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .await?;
        }
    }
    Ok(())
}

/// Drops each of `columns` that its table has.
async fn drop_columns(
    db: &SchemaManagerConnection<'_>,
    columns: &[(&str, &str, [&str; 3])],
) -> Result<(), DbErr> {
    for (table, column, _) in columns {
        if has_column(db, table, column).await? {
            db.execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
                .await?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for PoliciesAndAlarms {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        add_columns(db, COLUMNS_0002).await?;
        for statement in by_backend(backend, [SQLITE_0002, MYSQL_0002, POSTGRES_0002])? {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS cron_alarm_state")
            .await?;
        db.execute_unprepared("DROP TABLE IF EXISTS cron_alarm")
            .await?;
        drop_columns(db, COLUMNS_0002).await
    }
}

/// `cron_job_change`, the job table's change log, and the triggers that fill it: every insert,
/// update and delete of a `cron_job` row, by gocron or by plain SQL, appends the row's id. The
/// monitor reads the log above its mark instead of the whole table (see the monitor's `sync`).
struct JobChanges;

impl MigrationName for JobChanges {
    fn name(&self) -> &str {
        "m0003_job_change_log"
    }
}

const SQLITE_0003: &[&str] = &[r#"CREATE TABLE IF NOT EXISTS cron_job_change (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id BIGINT NOT NULL
    )"#];

const MYSQL_0003: &[&str] = &[r#"CREATE TABLE IF NOT EXISTS cron_job_change (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        job_id BIGINT NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#];

const POSTGRES_0003: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_job_change (
        seq BIGSERIAL PRIMARY KEY,
        job_id BIGINT NOT NULL
    )"#,
    r#"CREATE OR REPLACE FUNCTION cron_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO cron_job_change (job_id) VALUES (OLD.id);
            RETURN OLD;
        END IF;
        INSERT INTO cron_job_change (job_id) VALUES (NEW.id);
        IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN
            INSERT INTO cron_job_change (job_id) VALUES (OLD.id);
        END IF;
        RETURN NEW;
    END
    $$"#,
];

/// (trigger name, its DDL on SQLite, MySQL/MariaDB, PostgreSQL). An update logs the old id too
/// when the id itself changes.
const TRIGGERS_0003: &[(&str, [&str; 3])] = &[
    (
        "cron_job_change_insert",
        [
            "CREATE TRIGGER cron_job_change_insert AFTER INSERT ON cron_job \
             BEGIN INSERT INTO cron_job_change (job_id) VALUES (NEW.id); END",
            "CREATE TRIGGER cron_job_change_insert AFTER INSERT ON cron_job FOR EACH ROW \
             INSERT INTO cron_job_change (job_id) VALUES (NEW.id)",
            "CREATE TRIGGER cron_job_change_insert AFTER INSERT OR UPDATE OR DELETE ON cron_job \
             FOR EACH ROW EXECUTE FUNCTION cron_job_changed()",
        ],
    ),
    (
        "cron_job_change_update",
        [
            "CREATE TRIGGER cron_job_change_update AFTER UPDATE ON cron_job \
             BEGIN INSERT INTO cron_job_change (job_id) SELECT NEW.id UNION SELECT OLD.id; END",
            "CREATE TRIGGER cron_job_change_update AFTER UPDATE ON cron_job FOR EACH ROW \
             INSERT INTO cron_job_change (job_id) SELECT NEW.id UNION SELECT OLD.id",
            "",
        ],
    ),
    (
        "cron_job_change_delete",
        [
            "CREATE TRIGGER cron_job_change_delete AFTER DELETE ON cron_job \
             BEGIN INSERT INTO cron_job_change (job_id) VALUES (OLD.id); END",
            "CREATE TRIGGER cron_job_change_delete AFTER DELETE ON cron_job FOR EACH ROW \
             INSERT INTO cron_job_change (job_id) VALUES (OLD.id)",
            "",
        ],
    ),
];

/// Whether the trigger `name` exists (MySQL before 8.0.29 and PostgreSQL before 14 have no
/// `CREATE TRIGGER IF NOT EXISTS` / `OR REPLACE`, so creating one is made idempotent by hand).
async fn has_trigger(db: &SchemaManagerConnection<'_>, name: &str) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let sql = by_backend(
        backend,
        [
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'trigger' AND name = ?",
            "SELECT COUNT(*) AS n FROM information_schema.triggers \
             WHERE trigger_schema = DATABASE() AND trigger_name = ?",
            "SELECT COUNT(*) AS n FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             WHERE t.tgname = $1 AND c.relname = 'cron_job' \
             AND c.relnamespace = current_schema()::regnamespace",
        ],
    )?;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("cannot list the triggers ({name})")))?;
    Ok(row.try_get::<i64>("", "n")? > 0)
}

#[async_trait::async_trait]
impl MigrationTrait for JobChanges {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for statement in by_backend(backend, [SQLITE_0003, MYSQL_0003, POSTGRES_0003])? {
            db.execute_unprepared(statement).await?;
        }
        for (name, ddl) in TRIGGERS_0003 {
            let ddl = by_backend(backend, *ddl)?;
            if !ddl.is_empty() && !has_trigger(db, name).await? {
                db.execute_unprepared(ddl).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for (name, ddl) in TRIGGERS_0003 {
            if by_backend(backend, *ddl)?.is_empty() {
                continue;
            }
            let drop = match backend {
                DbBackend::Postgres => format!("DROP TRIGGER IF EXISTS {name} ON cron_job"),
                _ => format!("DROP TRIGGER IF EXISTS {name}"),
            };
            db.execute_unprepared(&drop).await?;
        }
        if backend == DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS cron_job_changed()")
                .await?;
        }
        db.execute_unprepared("DROP TABLE IF EXISTS cron_job_change")
            .await?;
        Ok(())
    }
}

/// `cron_audit`: one row per change made through the HTTP API, written in the same transaction
/// as the change. `before` and `after` are quoted: `BEFORE` is a reserved word on MySQL/MariaDB.
struct Audit;

impl MigrationName for Audit {
    fn name(&self) -> &str {
        "m0004_audit"
    }
}

const SQLITE_0004: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TIMESTAMP NOT NULL,
        actor VARCHAR(255) NOT NULL,
        action VARCHAR(64) NOT NULL,
        job_id BIGINT NULL,
        "before" TEXT NULL,
        "after" TEXT NULL
    )"#,
    "CREATE INDEX IF NOT EXISTS cron_audit_job ON cron_audit (job_id)",
];

const MYSQL_0004: &[&str] = &[r#"CREATE TABLE IF NOT EXISTS cron_audit (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        at DATETIME(3) NOT NULL,
        actor VARCHAR(255) NOT NULL,
        action VARCHAR(64) NOT NULL,
        job_id BIGINT NULL,
        `before` MEDIUMTEXT NULL,
        `after` MEDIUMTEXT NULL,
        KEY cron_audit_job (job_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#];

const POSTGRES_0004: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS cron_audit (
        id BIGSERIAL PRIMARY KEY,
        at TIMESTAMPTZ(3) NOT NULL,
        actor VARCHAR(255) NOT NULL,
        action VARCHAR(64) NOT NULL,
        job_id BIGINT NULL,
        "before" TEXT NULL,
        "after" TEXT NULL
    )"#,
    "CREATE INDEX IF NOT EXISTS cron_audit_job ON cron_audit (job_id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Audit {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for statement in by_backend(backend, [SQLITE_0004, MYSQL_0004, POSTGRES_0004])? {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS cron_audit")
            .await?;
        Ok(())
    }
}

/// A shell job's own environment and working directory (`cron_job.env`, `cron_job.workdir`).
/// On MySQL/MariaDB `env` is a `VARCHAR(4096)`, not a `TEXT`: a `TEXT` column takes a default
/// only from MySQL 8.0.13 on, and plain-SQL inserts must not have to name it.
struct JobEnvironment;

impl MigrationName for JobEnvironment {
    fn name(&self) -> &str {
        "m0005_job_env_workdir"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0005: &[(&str, &str, [&str; 3])] = &[
    (
        "cron_job",
        "env",
        [
            "TEXT NOT NULL DEFAULT ''",
            "VARCHAR(4096) NOT NULL DEFAULT ''",
            "TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        "cron_job",
        "workdir",
        [
            "VARCHAR(1024) NOT NULL DEFAULT ''",
            "VARCHAR(1024) NOT NULL DEFAULT ''",
            "VARCHAR(1024) NOT NULL DEFAULT ''",
        ],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for JobEnvironment {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(manager.get_connection(), COLUMNS_0005).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager.get_connection(), COLUMNS_0005).await
    }
}

/// Retries: `cron_job.retries` and `retry_delay_secs`, `cron_run.attempt` and `retry_of`.
struct Retries;

impl MigrationName for Retries {
    fn name(&self) -> &str {
        "m0006_retries"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0006: &[(&str, &str, [&str; 3])] = &[
    ("cron_job", "retries", ["INTEGER NOT NULL DEFAULT 0"; 3]),
    (
        "cron_job",
        "retry_delay_secs",
        ["INTEGER NOT NULL DEFAULT 10"; 3],
    ),
    ("cron_run", "attempt", ["INTEGER NOT NULL DEFAULT 1"; 3]),
    ("cron_run", "retry_of", ["BIGINT NULL"; 3]),
];

#[async_trait::async_trait]
impl MigrationTrait for Retries {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(manager.get_connection(), COLUMNS_0006).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager.get_connection(), COLUMNS_0006).await
    }
}

/// Events: the `cron_event` table, `cron_job.delay_secs`, and `cron_run.source_id` in the run's
/// unique key, `(job_id, scheduled_at, trigger, source_id)`: two events (or two retries) due in
/// the same millisecond are two runs. SQLite cannot change a table's unique constraint, so there
/// `cron_run` is copied into a new table (ids and the id sequence kept) inside one savepoint.
struct Events;

impl MigrationName for Events {
    fn name(&self) -> &str {
        "m0007_events"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0007: &[(&str, &str, [&str; 3])] = &[
    ("cron_job", "delay_secs", ["INTEGER NOT NULL DEFAULT 0"; 3]),
    ("cron_run", "source_id", ["BIGINT NOT NULL DEFAULT 0"; 3]),
];

/// `cron_run` rebuilt on SQLite with `source_id` in its unique key (the columns as the
/// migrations before this one left them), inside the savepoint `m0007`.
const SQLITE_0007_RUN: &[&str] = &[
    "DROP TABLE IF EXISTS cron_run_m0007",
    r#"CREATE TABLE cron_run_m0007 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        scheduled_at TIMESTAMP NOT NULL,
        status VARCHAR(16) NOT NULL,
        executor VARCHAR(255) NOT NULL DEFAULT '',
        started_at TIMESTAMP NULL,
        finished_at TIMESTAMP NULL,
        exit_code INTEGER NULL,
        output TEXT NULL,
        error TEXT NULL,
        "trigger" VARCHAR(16) NOT NULL DEFAULT 'schedule',
        overrun_at TIMESTAMP NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        retry_of BIGINT NULL,
        source_id BIGINT NOT NULL DEFAULT 0,
        UNIQUE (job_id, scheduled_at, "trigger", source_id)
    )"#,
    r#"INSERT INTO cron_run_m0007 (id, job_id, scheduled_at, status, executor, started_at,
        finished_at, exit_code, output, error, "trigger", overrun_at, attempt, retry_of)
        SELECT id, job_id, scheduled_at, status, executor, started_at, finished_at, exit_code,
        output, error, "trigger", overrun_at, attempt, retry_of FROM cron_run"#,
    // Ids only grow (the monitor reads above a mark): the new sequence starts where the old one
    // was, even past rows deleted since.
    "DELETE FROM sqlite_sequence WHERE name = 'cron_run_m0007'",
    "INSERT INTO sqlite_sequence (name, seq) SELECT 'cron_run_m0007', \
        MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cron_run'), 0), \
        COALESCE((SELECT MAX(id) FROM cron_run_m0007), 0))",
    "DROP TABLE cron_run",
    "ALTER TABLE cron_run_m0007 RENAME TO cron_run",
];

const SQLITE_0007: &[&str] = &[r#"CREATE TABLE IF NOT EXISTS cron_event (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name VARCHAR(255) NOT NULL,
        payload TEXT NULL,
        dedup_key VARCHAR(255) NULL,
        created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
        UNIQUE (name, dedup_key)
    )"#];

// `UTC_TIMESTAMP(3)`: the server's `CURRENT_TIMESTAMP` is in the session's time zone, and gocron
// keeps every instant in UTC. (An expression default needs MySQL 8.0.13 or MariaDB 10.2.)
const MYSQL_0007: &[&str] = &[
    "ALTER TABLE cron_run DROP INDEX cron_run_tick, \
        ADD UNIQUE KEY cron_run_tick (job_id, scheduled_at, `trigger`, source_id)",
    r#"CREATE TABLE IF NOT EXISTS cron_event (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        payload MEDIUMTEXT NULL,
        dedup_key VARCHAR(255) NULL,
        created_at DATETIME(3) NOT NULL DEFAULT (UTC_TIMESTAMP(3)),
        UNIQUE KEY cron_event_dedup (name, dedup_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"#,
];

const POSTGRES_0007: &[&str] = &[
    r#"ALTER TABLE cron_run DROP CONSTRAINT IF EXISTS cron_run_tick,
        ADD CONSTRAINT cron_run_tick UNIQUE (job_id, scheduled_at, "trigger", source_id)"#,
    r#"CREATE TABLE IF NOT EXISTS cron_event (
        id BIGSERIAL PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        payload TEXT NULL,
        dedup_key VARCHAR(255) NULL,
        created_at TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        CONSTRAINT cron_event_dedup UNIQUE (name, dedup_key)
    )"#,
];

#[async_trait::async_trait]
impl MigrationTrait for Events {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        if backend == DbBackend::Sqlite {
            add_columns(db, &COLUMNS_0007[..1]).await?;
            rebuild_sqlite_runs(db, "m0007", "source_id", SQLITE_0007_RUN).await?;
        } else {
            add_columns(db, COLUMNS_0007).await?;
        }
        for statement in by_backend(backend, [SQLITE_0007, MYSQL_0007, POSTGRES_0007])? {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS cron_event")
            .await?;
        // The unique key stays with source_id: dropping it would make retries and events due
        // in the same millisecond collide again.
        drop_columns(db, &COLUMNS_0007[..1]).await
    }
}

/// Chains (`cron_job.on_success` and `on_failure`) and routes (`cron_job.route`).
struct Chains;

impl MigrationName for Chains {
    fn name(&self) -> &str {
        "m0008_chains_routes"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0008: &[(&str, &str, [&str; 3])] = &[
    (
        "cron_job",
        "on_success",
        ["VARCHAR(1024) NOT NULL DEFAULT ''"; 3],
    ),
    (
        "cron_job",
        "on_failure",
        ["VARCHAR(1024) NOT NULL DEFAULT ''"; 3],
    ),
    (
        "cron_job",
        "route",
        ["VARCHAR(16) NOT NULL DEFAULT 'round_robin'"; 3],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Chains {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(manager.get_connection(), COLUMNS_0008).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager.get_connection(), COLUMNS_0008).await
    }
}

/// Rebuilds `cron_run` on SQLite with `statements` (which copy it into `cron_run_{savepoint}`,
/// carry the id sequence over and rename the copy), unless it has `column` already, inside
/// the savepoint `savepoint`: all of it or nothing.
async fn rebuild_sqlite_runs(
    db: &SchemaManagerConnection<'_>,
    savepoint: &str,
    column: &str,
    statements: &[&str],
) -> Result<(), DbErr> {
    // A write first takes the database's write lock: a daemon migrating at the same moment
    // has finished by then, and the check below sees its work.
    db.execute_unprepared(&format!("SAVEPOINT {savepoint}"))
        .await?;
    let rebuilt = async {
        db.execute_unprepared(&format!(
            "DELETE FROM sqlite_sequence WHERE name = 'cron_run_{savepoint}'"
        ))
        .await?;
        if !has_column(db, "cron_run", column).await? {
            for statement in statements {
                db.execute_unprepared(statement).await?;
            }
        }
        Ok::<(), DbErr>(())
    }
    .await;
    if let Err(e) = rebuilt {
        let _ = db
            .execute_unprepared(&format!("ROLLBACK TO {savepoint}"))
            .await;
        let _ = db.execute_unprepared(&format!("RELEASE {savepoint}")).await;
        return Err(e);
    }
    db.execute_unprepared(&format!("RELEASE {savepoint}"))
        .await?;
    Ok(())
}

/// Fanned-out ticks (routes `broadcast` and `shard`): `cron_run.shard_index` and
/// `shard_total`, the index in the run's unique key, `(job_id, scheduled_at, trigger,
/// source_id, shard_index)`: each executor's run of a tick is a run of its own. On SQLite
/// `cron_run` is rebuilt again (as in m0007), this time with the key as a named unique index,
/// which a later change can drop and create without a rebuild.
struct Shards;

impl MigrationName for Shards {
    fn name(&self) -> &str {
        "m0009_shards"
    }
}

/// (table, column, type on SQLite, MySQL/MariaDB, PostgreSQL).
const COLUMNS_0009: &[(&str, &str, [&str; 3])] = &[
    ("cron_run", "shard_index", ["INTEGER NOT NULL DEFAULT 0"; 3]),
    ("cron_run", "shard_total", ["INTEGER NOT NULL DEFAULT 0"; 3]),
];

/// `cron_run` rebuilt on SQLite with `shard_index` in its unique key, inside the savepoint
/// `m0009`.
const SQLITE_0009_RUN: &[&str] = &[
    "DROP TABLE IF EXISTS cron_run_m0009",
    r#"CREATE TABLE cron_run_m0009 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        scheduled_at TIMESTAMP NOT NULL,
        status VARCHAR(16) NOT NULL,
        executor VARCHAR(255) NOT NULL DEFAULT '',
        started_at TIMESTAMP NULL,
        finished_at TIMESTAMP NULL,
        exit_code INTEGER NULL,
        output TEXT NULL,
        error TEXT NULL,
        "trigger" VARCHAR(16) NOT NULL DEFAULT 'schedule',
        overrun_at TIMESTAMP NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        retry_of BIGINT NULL,
        source_id BIGINT NOT NULL DEFAULT 0,
        shard_index INTEGER NOT NULL DEFAULT 0,
        shard_total INTEGER NOT NULL DEFAULT 0
    )"#,
    r#"INSERT INTO cron_run_m0009 (id, job_id, scheduled_at, status, executor, started_at,
        finished_at, exit_code, output, error, "trigger", overrun_at, attempt, retry_of,
        source_id)
        SELECT id, job_id, scheduled_at, status, executor, started_at, finished_at, exit_code,
        output, error, "trigger", overrun_at, attempt, retry_of, source_id FROM cron_run"#,
    "DELETE FROM sqlite_sequence WHERE name = 'cron_run_m0009'",
    "INSERT INTO sqlite_sequence (name, seq) SELECT 'cron_run_m0009', \
        MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cron_run'), 0), \
        COALESCE((SELECT MAX(id) FROM cron_run_m0009), 0))",
    "DROP TABLE cron_run",
    "ALTER TABLE cron_run_m0009 RENAME TO cron_run",
    r#"CREATE UNIQUE INDEX cron_run_tick
        ON cron_run (job_id, scheduled_at, "trigger", source_id, shard_index)"#,
];

const MYSQL_0009: &[&str] = &["ALTER TABLE cron_run DROP INDEX cron_run_tick, \
    ADD UNIQUE KEY cron_run_tick (job_id, scheduled_at, `trigger`, source_id, shard_index)"];

const POSTGRES_0009: &[&str] = &[
    r#"ALTER TABLE cron_run DROP CONSTRAINT IF EXISTS cron_run_tick,
    ADD CONSTRAINT cron_run_tick UNIQUE (job_id, scheduled_at, "trigger", source_id, shard_index)"#,
];

#[async_trait::async_trait]
impl MigrationTrait for Shards {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Sqlite => {
                rebuild_sqlite_runs(db, "m0009", "shard_index", SQLITE_0009_RUN).await
            }
            backend => {
                add_columns(db, COLUMNS_0009).await?;
                // Drops the key and adds the new one: safe to run again after a failure.
                for statement in by_backend(backend, [&[][..], MYSQL_0009, POSTGRES_0009])? {
                    db.execute_unprepared(statement).await?;
                }
                Ok(())
            }
        }
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The columns stay: dropping the index's column would leave no unique key, and a
        // fanned-out tick's runs would collide in the old one.
        Ok(())
    }
}

/// An index of `cron_run` by `(source_id, job_id, trigger)`: whether a deferred request (a retry, an
/// event's run, a chained run) was served is asked by its source, whatever the run's
/// `scheduled_at` (which a second monitor, or one restarted, may have computed from a delay
/// changed since). On SQLite and PostgreSQL the index is partial (`source_id <> 0`): the runs
/// of schedules, nearly all of them, stay out of it and cost it nothing (a query takes it when
/// it says `source_id <> 0` in those words; with `trigger` in it, the index answers alone).
struct RunSources;

impl MigrationName for RunSources {
    fn name(&self) -> &str {
        "m0010_run_sources"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for RunSources {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let partial = r#"CREATE INDEX IF NOT EXISTS cron_run_source
            ON cron_run (source_id, job_id, "trigger") WHERE source_id <> 0"#;
        match db.get_database_backend() {
            DbBackend::MySql => {
                // MySQL has no `IF NOT EXISTS` here (MariaDB has): added where missing, and a
                // daemon that lost the race to add it finds it there.
                let add =
                    "ALTER TABLE cron_run ADD INDEX cron_run_source (source_id, job_id, `trigger`)";
                if has_index(db, "cron_run", "cron_run_source").await? {
                    return Ok(());
                }
                match db.execute_unprepared(add).await {
                    Err(e) if !has_index(db, "cron_run", "cron_run_source").await? => Err(e),
                    _ => Ok(()),
                }
            }
            _ => db.execute_unprepared(partial).await.map(|_| ()),
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let drop = by_backend(
            db.get_database_backend(),
            [
                "DROP INDEX IF EXISTS cron_run_source",
                "ALTER TABLE cron_run DROP INDEX cron_run_source",
                "DROP INDEX IF EXISTS cron_run_source",
            ],
        )?;
        db.execute_unprepared(drop).await.map(|_| ())
    }
}

/// Whether MySQL/MariaDB table `table` has index `index`.
async fn has_index(
    db: &SchemaManagerConnection<'_>,
    table: &str,
    index: &str,
) -> Result<bool, DbErr> {
    let sql = "SELECT COUNT(*) AS n FROM information_schema.statistics \
               WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?";
    Ok(count(db, sql, table, index).await? > 0)
}
