//! Test harness: a whole gocron cluster in one process, against real etcd, Redis and databases.
//!
//! The servers come from `scripts/test`, which exports `GOCRON_TEST_ETCD`, `GOCRON_TEST_REDIS`,
//! `GOCRON_TEST_MYSQL` and `GOCRON_TEST_POSTGRES`. Each [`Cluster`] gets its own etcd prefix,
//! Redis prefix and database (a SQLite file in a temporary folder, or a fresh MariaDB/PostgreSQL
//! database), so tests run side by side without seeing each other. [`alarm`] has the SMTP server
//! and SMS gateway stand-ins of the alarm tests. [`servers`] starts private servers that fault
//! tests stop, kill and restart ([`Cluster::with_servers`] uses them), [`Process`] runs a daemon
//! as a process of its own that a test can SIGKILL, and [`accounted`] checks that every tick of a
//! job was accounted for. [`floor`] and [`procfs`] serve the benchmark (`gocron-bench`): the
//! minimal spawner it compares gocron with, and CPU time and memory from `/proc`.

pub mod accounted;
pub mod alarm;
pub mod browser;
pub mod floor;
pub mod procfs;
pub mod servers;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_shared::config::Config;
use gocron_shared::entity::{alarm_state, job, run};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, Statement, Value,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The database a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the cluster's temporary folder.
    Sqlite,
    /// A fresh database on the MariaDB server of `GOCRON_TEST_MYSQL`.
    MariaDb,
    /// A fresh database on the PostgreSQL server of `GOCRON_TEST_POSTGRES`.
    Postgres,
}

/// A server URL from the environment, or the test default; the message says how to get one.
fn server(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn require(what: &str, var: &str, url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "{what} is required by this test and is not reachable at {url} ({error}). \
         Run the tests with `scripts/test`, which starts it, or set {var}."
    )
}

fn log_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A running daemon of the cluster.
struct Daemon {
    kind: &'static str,
    name: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// One isolated gocron cluster: its configuration, its database, and daemons started in-process.
pub struct Cluster {
    /// A short unique id, used in every prefix and database name.
    pub id: String,
    /// The temporary folder (SQLite file, job output files).
    pub dir: tempfile::TempDir,
    /// The backend.
    pub backend: Backend,
    /// A connection to the cluster's database, for the test's own SQL.
    pub db: DatabaseConnection,
    ini: String,
    overrides: Vec<(String, String)>,
    daemons: Vec<Daemon>,
    drop_database: Option<(String, String)>,
    etcd_url: String,
    redis_url: String,
}

/// Servers a [`Cluster`] uses instead of the shared ones of `GOCRON_TEST_*`: any left `None`
/// is the shared one.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    /// An etcd endpoint, e.g. `http://127.0.0.1:2379`.
    pub etcd: Option<String>,
    /// A Redis URL.
    pub redis: Option<String>,
    /// The admin URL (no database name) of the MariaDB or PostgreSQL server the cluster's own
    /// database is created on; ignored for SQLite.
    pub database: Option<String>,
}

impl Cluster {
    /// A cluster on `backend` whose conf.ini has `machines` as its `[machine]` section.
    pub async fn new(backend: Backend, machines: &[(&str, &str)]) -> Cluster {
        Cluster::with_servers(backend, machines, Servers::default()).await
    }

    /// [`Cluster::new`], on `servers` where they are given (e.g. private ones of
    /// [`servers::Server`]).
    pub async fn with_servers(
        backend: Backend,
        machines: &[(&str, &str)],
        servers: Servers,
    ) -> Cluster {
        log_init();
        let id = format!("{:08x}", rand::random::<u32>());
        let dir = tempfile::tempdir().expect("temporary folder");
        let etcd = servers
            .etcd
            .unwrap_or_else(|| server("GOCRON_TEST_ETCD", "http://127.0.0.1:23790"));
        let redis = servers
            .redis
            .unwrap_or_else(|| server("GOCRON_TEST_REDIS", "redis://127.0.0.1:63790"));
        let database = servers.database;
        check_etcd(&etcd).await;
        check_redis(&redis).await;

        let (db_url, drop_database) = match backend {
            Backend::Sqlite => (
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("gocron.db").display()
                ),
                None,
            ),
            Backend::MariaDb => {
                let admin = database.clone().unwrap_or_else(|| {
                    server("GOCRON_TEST_MYSQL", "mysql://gocron:gocron@127.0.0.1:33060")
                });
                let name = format!("gocron_t_{id}");
                create_database(&admin, "MariaDB", "GOCRON_TEST_MYSQL", &name).await;
                (
                    format!("{}/{name}", admin.trim_end_matches('/')),
                    Some((admin, name)),
                )
            }
            Backend::Postgres => {
                let admin = database.clone().unwrap_or_else(|| {
                    server(
                        "GOCRON_TEST_POSTGRES",
                        "postgres://gocron:gocron@127.0.0.1:54320",
                    )
                });
                let name = format!("gocron_t_{id}");
                create_database(
                    &format!("{}/postgres", admin.trim_end_matches('/')),
                    "PostgreSQL",
                    "GOCRON_TEST_POSTGRES",
                    &name,
                )
                .await;
                (
                    format!("{}/{name}", admin.trim_end_matches('/')),
                    Some((format!("{}/postgres", admin.trim_end_matches('/')), name)),
                )
            }
        };

        let mut ini = format!(
            "[database]\nurl = {db_url}\nmax_connections = 5\n\
             [redis]\nurl = {redis}\nprefix = gct-{id}\n\
             [etcd]\nendpoints = {etcd}\nprefix = /gocron-test/{id}\nlease_ttl = 6\n\
             [executor]\nlisten = 127.0.0.1:0\ndrain_secs = 10\n\
             [dispatcher]\nrpc_timeout_ms = 2000\n\
             [monitor]\npoll_ms = 250\n\
             [rpc]\nsecret = test-secret-{id}-0123456789\n\
             [machine]\n"
        );
        for (name, members) in machines {
            ini.push_str(&format!("{name} = {members}\n"));
        }
        let config = Config::from_ini(&ini, "test conf.ini", []).expect("test configuration");
        let never = CancellationToken::new();
        let db = gocron_shared::db::connect_and_migrate(&config.database, &never)
            .await
            .expect("database");
        Cluster {
            id,
            dir,
            backend,
            db,
            ini,
            overrides: Vec::new(),
            daemons: Vec::new(),
            drop_database,
            etcd_url: etcd,
            redis_url: redis,
        }
    }

    /// Sets `[section] key = value` for daemons started from now on.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.overrides
            .push((format!("GOCRON__{section}__{key}"), value.to_owned()));
    }

    fn config(&self, section: &str, overrides: &[(&str, &str)]) -> Config {
        let own = overrides
            .iter()
            .map(|(k, v)| (format!("GOCRON__{section}__{k}"), v.to_string()));
        let env = self.overrides.iter().cloned().chain(own);
        Config::from_ini(&self.ini, "test conf.ini", env).expect("test configuration")
    }

    /// The `[database]` section the cluster's daemons use.
    pub fn database(&self) -> gocron_shared::config::DatabaseConfig {
        self.config("DATABASE", &[]).database
    }

    /// The whole configuration the cluster's daemons use.
    pub fn base_config(&self) -> Config {
        self.config("NONE", &[])
    }

    /// Starts daemon `name` of `kind`: `run` is its library's `run(config, shutdown)`.
    fn spawn<F>(
        &mut self,
        kind: &'static str,
        name: &str,
        config: Config,
        run: fn(Config, CancellationToken) -> F,
    ) where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(config, stop.clone()));
        self.daemons.push(Daemon {
            kind,
            name: name.into(),
            stop,
            task,
        });
    }

    /// Starts a monitor.
    pub fn start_monitor(&mut self) {
        self.start_monitor_as("monitor");
    }

    /// Waits until a monitor has finished a pass of its checks on this database (`checked_at`
    /// in `cron_alarm_state`, saved after its marks), so that what the test does next is news:
    /// every run row written from then on is watched (retries, chains, `lost`, alarms), and rows
    /// written before the first pass are history it does not replay.
    pub async fn wait_checks_started(&self) {
        wait_until(
            "the monitor's first pass of its checks",
            Duration::from_secs(90),
            || async {
                alarm_state::Entity::find_by_id("checked_at".to_owned())
                    .one(&self.db)
                    .await
                    .expect("query")
            },
        )
        .await;
    }

    /// Starts a monitor named `name` (for [`Cluster::stop`]).
    pub fn start_monitor_as(&mut self, name: &str) {
        let config = self.config("MONITOR", &[]);
        self.spawn("monitor", name, config, gocron_monitor::run);
    }

    /// Starts a monitor named `name` serving the HTTP API on a free port of 127.0.0.1 (with the
    /// `[http]` tokens [`Cluster::set`] gave); returns its address once it listens.
    pub async fn start_monitor_http(&mut self, name: &str) -> std::net::SocketAddr {
        let config = self.config("HTTP", &[("LISTEN", "127.0.0.1:0")]);
        let (bound, address) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(gocron_monitor::run_with(config, stop.clone(), Some(bound)));
        self.daemons.push(Daemon {
            kind: "monitor",
            name: name.into(),
            stop,
            task,
        });
        tokio::time::timeout(Duration::from_secs(30), address)
            .await
            .expect("the monitor's HTTP API did not listen within 30 s")
            .expect("the monitor ended before its HTTP API listened")
    }

    /// Every row of `cron_alarm`, in id order.
    pub async fn alarms(&self) -> Vec<gocron_shared::entity::alarm::Model> {
        use gocron_shared::entity::alarm;
        alarm::Entity::find()
            .order_by_asc(alarm::Column::Id)
            .all(&self.db)
            .await
            .expect("query")
    }

    /// Waits until the monitor has published job `id` in etcd (run-now is refused before).
    pub async fn wait_published(&self, id: i64) {
        let keys = gocron_shared::keys::EtcdKeys::new(&self.base_config().etcd.prefix);
        let etcd = self.etcd().await;
        wait_until("the job published", Duration::from_secs(30), || {
            let (mut etcd, key) = (etcd.clone(), keys.job(id));
            async move { (!etcd.get(key, None).await.ok()?.kvs().is_empty()).then_some(()) }
        })
        .await;
    }

    /// How many keys etcd holds under `folder` (e.g. `EtcdKeys::retries()`): the deferred
    /// requests waiting for a dispatcher.
    pub async fn etcd_keys_under(&self, folder: String) -> usize {
        self.etcd()
            .await
            .get(folder, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("etcd")
            .kvs()
            .len()
    }

    /// The etcd key layout of this cluster.
    pub fn etcd_keys(&self) -> gocron_shared::keys::EtcdKeys {
        gocron_shared::keys::EtcdKeys::new(&self.base_config().etcd.prefix)
    }

    /// Asks the dispatchers to run job `id` now, with `env` (`KEY=VALUE` lines) for that run,
    /// once the monitor has published it; returns the request's instant (the run's tick).
    pub async fn run_now(&self, id: i64, env: &str) -> DateTime<Utc> {
        self.wait_published(id).await;
        let keys = gocron_shared::keys::EtcdKeys::new(&self.base_config().etcd.prefix);
        gocron_shared::control::run_now(&mut self.etcd().await, &keys, id, env)
            .await
            .expect("run-now request")
    }

    /// Starts a dispatcher named `name`.
    pub fn start_dispatcher(&mut self, name: &str) {
        let config = self.config("DISPATCHER", &[("NAME", name)]);
        self.spawn("dispatcher", name, config, gocron_dispatcher::run);
    }

    /// Starts an executor named `name` and waits until it is registered in etcd.
    pub async fn start_executor(&mut self, name: &str) {
        self.start_executor_with(name, &[]).await;
    }

    /// Starts an executor named `name` with `[section] key = value` settings of its own, and
    /// waits until it is registered in etcd.
    pub async fn start_executor_with(&mut self, name: &str, settings: &[(&str, &str, &str)]) {
        let own = settings
            .iter()
            .map(|(section, key, value)| (format!("GOCRON__{section}__{key}"), value.to_string()));
        let env = self
            .overrides
            .iter()
            .cloned()
            .chain([
                ("GOCRON__EXECUTOR__NAME".to_owned(), name.to_owned()),
                (
                    "GOCRON__EXECUTOR__DATA_DIR".to_owned(),
                    self.data_dir_text(name),
                ),
            ])
            .chain(own);
        let config = Config::from_ini(&self.ini, "test conf.ini", env).expect("test configuration");
        self.spawn("executor", name, config, gocron_executor::run);
        self.wait_registered(name).await;
    }

    /// Starts an executor named `name` as a process of its own (`binary`: the
    /// `gocron-test-executor` binary, the real executor's `main`, whose path only integration
    /// tests know), so that a test can kill it with SIGKILL; waits until it is registered. The
    /// caller owns the process.
    pub async fn start_executor_process(
        &mut self,
        name: &str,
        binary: &Path,
    ) -> std::process::Child {
        self.start_executor_process_with(name, binary, &[]).await
    }

    /// [`Cluster::start_executor_process`], with `env` added to the process's environment.
    pub async fn start_executor_process_with(
        &mut self,
        name: &str,
        binary: &Path,
        env: &[(&str, &str)],
    ) -> std::process::Child {
        let ini = self.path(&format!("{name}.ini"));
        std::fs::write(&ini, &self.ini).expect("writing the executor's conf.ini");
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).expect("log file");
        let child = std::process::Command::new(binary)
            .arg("--config")
            .arg(&ini)
            .envs(self.overrides.iter().cloned())
            .env("GOCRON__EXECUTOR__NAME", name)
            .env("GOCRON__EXECUTOR__DATA_DIR", self.data_dir_text(name))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting gocron-test-executor");
        self.wait_registered(name).await;
        child
    }

    /// Starts daemon `name` as a process of its own: `binary` is one of the `gocron-test-*`
    /// binaries (the real daemons' `main`, whose paths only integration tests know), `section`
    /// the conf.ini section whose `name` it gets (`EXECUTOR`, `DISPATCHER`; `MONITOR` has none).
    /// It reads the cluster's conf.ini and the settings [`Cluster::set`] made so far, and logs to
    /// `{name}.log` in the cluster's folder. Does not wait for anything: for an executor, see
    /// [`Cluster::wait_registered`].
    pub fn start_process(&mut self, section: &str, name: &str, binary: &Path) -> Process {
        let ini = self.path("cluster.ini");
        if !ini.exists() {
            std::fs::write(&ini, &self.ini).expect("writing the cluster's conf.ini");
        }
        let mut env = self.overrides.clone();
        if section != "MONITOR" {
            env.push((format!("GOCRON__{section}__NAME"), name.to_owned()));
        }
        if section == "EXECUTOR" {
            env.push((
                "GOCRON__EXECUTOR__DATA_DIR".to_owned(),
                self.data_dir_text(name),
            ));
        }
        let mut process = Process {
            name: name.to_owned(),
            binary: binary.to_owned(),
            ini,
            env,
            log: self.path(&format!("{name}.log")),
            child: None,
        };
        process.start();
        process
    }

    /// The `[executor] data_dir` of executor `name`: its own, in the cluster's temporary
    /// folder, the same each time an executor of that name starts.
    pub fn executor_data_dir(&self, name: &str) -> PathBuf {
        self.path("executors").join(name)
    }

    fn data_dir_text(&self, name: &str) -> String {
        self.executor_data_dir(name).display().to_string()
    }

    /// A connection to the cluster's Redis fences, as an operator tool would have.
    pub async fn fences(&self) -> gocron_shared::lock::Fences {
        let config = self.base_config();
        gocron_shared::lock::Fences::connect(
            &config.redis,
            "test",
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .expect("redis")
    }

    /// The cluster's Redis URL and key prefix.
    pub fn redis(&self) -> (String, String) {
        (self.redis_url.clone(), format!("gct-{}", self.id))
    }

    /// A connection to the cluster's Redis (its keys are under [`Cluster::redis`]'s prefix).
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// A client of the cluster's etcd.
    pub async fn etcd(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.etcd_url.clone()], None)
            .await
            .expect("etcd")
    }

    /// Waits until executor `name` is registered in etcd.
    pub async fn wait_registered(&self, name: &str) {
        let key = format!("/gocron-test/{}/executors/{name}", self.id);
        let etcd = self.etcd_url.clone();
        wait_until(
            &format!("executor {name} registered"),
            Duration::from_secs(20),
            || {
                let (etcd, key) = (etcd.clone(), key.clone());
                async move {
                    let mut client = etcd_client::Client::connect([etcd], None).await.ok()?;
                    let found = client.get(key, None).await.ok()?.count() > 0;
                    found.then_some(())
                }
            },
        )
        .await;
    }

    /// The address executor `name` registered in etcd.
    pub async fn executor_address(&self, name: &str) -> std::net::SocketAddr {
        let key = format!("/gocron-test/{}/executors/{name}", self.id);
        let mut client = etcd_client::Client::connect([self.etcd_url.clone()], None)
            .await
            .expect("etcd");
        let found = client.get(key, None).await.expect("etcd get");
        let kv = found
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("executor {name} is not registered"));
        let info: gocron_shared::machine::ExecutorInfo =
            serde_json::from_slice(kv.value()).expect("registration JSON");
        info.address
    }

    /// Stops the daemon called `name` gracefully and waits for it to exit.
    pub async fn stop(&mut self, name: &str) {
        let i = self
            .daemons
            .iter()
            .position(|d| d.name == name)
            .unwrap_or_else(|| panic!("no daemon named {name}"));
        let daemon = self.daemons.remove(i);
        daemon.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), daemon.task)
            .await
            .unwrap_or_else(|_| panic!("{} {name} did not stop within 30 s", daemon.kind))
            .expect("daemon task panicked");
        result.unwrap_or_else(|e| panic!("{} {name} failed: {e:#}", daemon.kind));
    }

    /// Inserts a job with plain SQL, as a user would; returns its id.
    pub async fn insert_job(&self, name: &str, rule: &str, command: &str) -> i64 {
        self.insert_job_with(name, rule, command, &[]).await
    }

    /// Inserts a job with plain SQL, setting `extra` columns too; returns its id.
    pub async fn insert_job_with(
        &self,
        name: &str,
        rule: &str,
        command: &str,
        extra: &[(&str, Value)],
    ) -> i64 {
        let mut columns = vec!["name", "rule", "command"];
        let mut values: Vec<Value> = vec![name.into(), rule.into(), command.into()];
        for (column, value) in extra {
            columns.push(column);
            values.push(value.clone());
        }
        let marks = vec!["?"; columns.len()].join(", ");
        self.sql(
            &format!(
                "INSERT INTO cron_job ({}) VALUES ({marks})",
                columns.join(", ")
            ),
            values,
        )
        .await;
        self.job_by_name(name).await.id
    }

    /// Runs one statement written with `?` placeholders (rewritten to `$n` for PostgreSQL).
    pub async fn sql(&self, sql: &str, values: Vec<Value>) -> u64 {
        let backend = self.db.get_database_backend();
        let sql = if backend == DbBackend::Postgres {
            let mut n = 0;
            sql.chars()
                .map(|c| {
                    if c == '?' {
                        n += 1;
                        format!("${n}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        } else {
            sql.to_owned()
        };
        self.db
            .execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {e}"))
            .rows_affected()
    }

    /// The job row named `name`.
    pub async fn job_by_name(&self, name: &str) -> job::Model {
        job::Entity::find()
            .filter(job::Column::Name.eq(name))
            .one(&self.db)
            .await
            .expect("query")
            .unwrap_or_else(|| panic!("no job named {name}"))
    }

    /// All runs of a job, in tick order.
    pub async fn runs(&self, job_id: i64) -> Vec<run::Model> {
        run::Entity::find()
            .filter(run::Column::JobId.eq(job_id))
            .order_by_asc(run::Column::ScheduledAt)
            .order_by_asc(run::Column::Id)
            .all(&self.db)
            .await
            .expect("query")
    }

    /// Waits until job `job_id` has at least `n` finished runs (any final status); returns all.
    pub async fn wait_for_finished(
        &self,
        job_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Vec<run::Model> {
        wait_until(
            &format!("{n} finished runs of job {job_id}"),
            timeout,
            || async {
                let runs = self.runs(job_id).await;
                let finished = runs.iter().filter(|r| r.finished_at.is_some()).count();
                (finished >= n).then_some(runs)
            },
        )
        .await
    }

    /// A path in the cluster's temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops every daemon, then drops the cluster's database.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.daemons.iter().rev().map(|d| d.name.clone()).collect();
        for name in names {
            self.stop(&name).await;
        }
        if let Some((admin, name)) = self.drop_database.take() {
            self.db.clone().close().await.ok();
            if let Ok(db) = Database::connect(&admin).await {
                let _ = db
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test leaves its daemons behind: stop them rather than let them tick on.
        for d in &self.daemons {
            d.stop.cancel();
        }
    }
}

/// A daemon running as a process of its own (see [`Cluster::start_process`]), which a test can
/// kill with SIGKILL and start again with the same configuration. Killed when dropped.
pub struct Process {
    /// The daemon's name.
    pub name: String,
    binary: PathBuf,
    ini: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Process {
    /// Starts it (again), appending to its log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = std::process::Command::new(&self.binary)
            .arg("--config")
            .arg(&self.ini)
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping");
    }

    /// Whether it is running (started and not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

async fn check_etcd(url: &str) {
    let attempt = async {
        let mut c = etcd_client::Client::connect([url], None).await?;
        c.get("/", None).await?;
        Ok::<_, etcd_client::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => require("etcd", "GOCRON_TEST_ETCD", url, e),
        Err(_) => require("etcd", "GOCRON_TEST_ETCD", url, "timed out"),
    }
}

async fn check_redis(url: &str) {
    let attempt = async {
        let client = redis::Client::open(url)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => require("Redis", "GOCRON_TEST_REDIS", url, e),
        Err(_) => require("Redis", "GOCRON_TEST_REDIS", url, "timed out"),
    }
}

async fn create_database(admin: &str, what: &str, var: &str, name: &str) {
    let db = match Database::connect(admin).await {
        Ok(db) => db,
        Err(e) => require(what, var, admin, e),
    };
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    db.close().await.ok();
}

/// Polls `probe` every 50 ms until it yields a value; panics naming `what` after `timeout`.
///
/// Tests wait on conditions, never on a fixed sleep: the timeout is only a bound for a broken
/// build, far above what a healthy run needs.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of a file (empty if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Counts of each value.
pub fn tally<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// The executor name of a run (`name@address` → `name`).
pub fn executor_name(run: &run::Model) -> &str {
    run.executor.split('@').next().unwrap_or("")
}

/// Asserts that `runs` are one per tick, with no tick missing between the first and the last,
/// for a rule firing every `period`.
pub fn assert_one_run_per_tick(runs: &[run::Model], period: chrono::Duration) {
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r.scheduled_at).collect();
    let counts = tally(ticks.iter().copied());
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "ticks run more than once: {doubled:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            period,
            "ticks missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
}
