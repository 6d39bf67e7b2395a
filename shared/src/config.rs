//! `conf/conf.ini`: one file for all three daemons, each reading the sections it needs.
//!
//! Every key can be overridden by an environment variable `GOCRON__SECTION__KEY` (upper or lower
//! case), which is how one file serves several daemons of a kind on one host (each executor its
//! own `listen` port). Unknown sections and keys are errors: a typo must not silently fall back
//! to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;

use crate::machine::MachineGroups;

/// Occurs when the configuration cannot be used; the daemon must not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Occurs when the file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Occurs when the file is not valid INI.
    #[error("{origin}: not a valid INI file: {message}")]
    Syntax {
        /// The file (or environment).
        origin: String,
        /// What the parser said.
        message: String,
    },
    /// Occurs when a key has a value that cannot be used, or is unknown.
    #[error("{origin}: [{section}] {key}: {message}")]
    Invalid {
        /// The file the key came from, or the environment variable that overrode it.
        origin: String,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// What is wrong, in words.
        message: String,
    },
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[redis]`.
    pub redis: RedisConfig,
    /// `[etcd]`.
    pub etcd: EtcdConfig,
    /// `[machine]`: the machine groups jobs target.
    pub machines: MachineGroups,
    /// `[executor]`.
    pub executor: ExecutorConfig,
    /// `[dispatcher]`.
    pub dispatcher: DispatcherConfig,
    /// `[monitor]`.
    pub monitor: MonitorConfig,
    /// `[rpc]`.
    pub rpc: RpcConfig,
    /// `[alarm]`: read by the monitor.
    pub alarm: crate::alarm::config::AlarmConfig,
    /// `[http]`: the monitor's HTTP API.
    pub http: HttpConfig,
    /// `[metrics]`: where a dispatcher or executor serves `/metrics`.
    pub metrics: MetricsConfig,
    /// What the file held that means nothing here (keys of the Go gocron's conf.ini), in
    /// words; logged at start by [`Config::load`].
    pub warnings: Vec<String>,
}

/// `[metrics]`: Prometheus metrics of a dispatcher or an executor (the monitor serves its own
/// on `[http] listen`).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// `listen`: the address `/metrics` is served on (port 0: any free port); `None`: not served.
    pub listen: Option<SocketAddr>,
}

/// `[http]`: the HTTP API the monitor serves (see the `gocron-web` crate).
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// `listen`: the address the API binds (port 0: any free port); `None` (empty): no API.
    pub listen: Option<SocketAddr>,
    /// `admin_token`: the bearer token with full rights; `None`: nobody has them.
    pub admin_token: Option<crate::rpc::Secret>,
    /// `viewer_token`: the bearer token with read rights; `None`: nobody has them.
    pub viewer_token: Option<crate::rpc::Secret>,
    /// `secure_cookie`: the console's session cookie is marked `Secure` (sent over HTTPS only);
    /// set it when a TLS proxy serves the console.
    pub secure_cookie: bool,
}

/// `[rpc]`: how dispatchers and executors trust each other.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// `secret`: shared by all dispatchers and executors; at least 16 characters.
    pub secret: crate::rpc::Secret,
    /// `tls_cert` and `tls_key`: an executor's certificate chain and private key (PEM files);
    /// when set, the executor accepts TLS connections only.
    pub tls_cert: Option<PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `tls_ca`: the CA certificates (PEM) that callers (dispatchers, operator tools) trust for
    /// executors' certificates; when set, callers connect with TLS only.
    pub tls_ca: Option<PathBuf>,
    /// `tls_server_name`: the name callers verify in an executor's certificate; empty: the
    /// executor's advertised IP address (which the certificate must then hold as an IP SAN).
    pub tls_server_name: String,
}

/// `[database]`: where jobs and runs live.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `url`: `sqlite://path?mode=rwc`, `mysql://user:pass@host:port/db` or `postgres://...`.
    pub url: String,
    /// `max_connections`: the pool size of each daemon.
    pub max_connections: u32,
    /// `statement_timeout_secs`: the longest a statement may run on MySQL/MariaDB and
    /// PostgreSQL before the server cancels it (`None`: no limit). Not for migrations.
    pub statement_timeout: Option<Duration>,
}

/// `[redis]`: the tick locks.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `url`: `redis://host:port/db`.
    pub url: String,
    /// `prefix`: the first part of every key gocron writes, so clusters can share a server.
    pub prefix: String,
}

/// `[etcd]`: executor registration and job publication.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `endpoints`: comma-separated `http://host:port` list.
    pub endpoints: Vec<String>,
    /// `prefix`: the first part of every key gocron writes.
    pub prefix: String,
    /// `lease_ttl`: seconds after which a dead daemon's registration disappears.
    pub lease_ttl: u64,
}

/// `[executor]`: one executor daemon.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// `listen`: the address the RPC server binds.
    pub listen: SocketAddr,
    /// `advertise`: the address dispatchers dial; its IP is what `[machine]` members match.
    pub advertise: SocketAddr,
    /// `name`: unique executor name; default `<hostname>-<advertised port>`.
    pub name: String,
    /// `max_concurrent`: runs at once; over it the executor answers busy.
    pub max_concurrent: usize,
    /// `output_kib`: how much of the tail of a run's stdout and stderr is kept.
    pub output_kib: usize,
    /// `shell`: the shell that runs `shell` jobs with `-c`.
    pub shell: String,
    /// `drain_secs`: on shutdown, how long running jobs may go on before they are stopped.
    pub drain_secs: u64,
    /// `kill_grace_secs`: between SIGTERM and SIGKILL when a job's process group is stopped.
    pub kill_grace_secs: u64,
    /// `run_as`: the user jobs run as (empty: the executor's own user); needs a root executor.
    pub run_as: String,
    /// `pass_env`: names of the executor's environment variables copied into every shell job's
    /// environment (which otherwise starts empty); never a `GOCRON__…` setting.
    pub pass_env: Vec<String>,
    /// `max_connections`: RPC connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// `data_dir`: the executor's own folder (its outcome spool); default `var/executor/<name>`.
    pub data_dir: PathBuf,
    /// `max_unrecorded`: outcomes waiting for the database (in memory or spooled) past which
    /// the executor answers busy; default 10,000 (ten seconds of a thousand runs a second).
    pub max_unrecorded: usize,
}

/// `[dispatcher]`: one dispatcher daemon.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// `name`: unique dispatcher name; default `<hostname>-<pid>`.
    pub name: String,
    /// `time_zone`: the IANA zone of jobs whose `time_zone` column is empty.
    pub time_zone: Tz,
    /// `lock_ttl_secs`: how long a tick lock is kept in Redis.
    pub lock_ttl: Duration,
    /// `rpc_timeout_ms`: deadline of one call to an executor (connect included).
    pub rpc_timeout: Duration,
    /// `max_late_ms`: a tick fired later than this counts as missed (misfire policy).
    pub max_late: Duration,
    /// `catchup_secs`: how far back missed ticks are looked for (misfire policy).
    pub catchup: Duration,
    /// `catchup_max`: the most missed ticks recorded or run for one job at once.
    pub catchup_max: usize,
    /// `max_ticks_in_flight`: ticks being fired at once; past it, new ticks are left to the
    /// other dispatchers (and are missed if none fires them).
    pub max_ticks_in_flight: usize,
    /// `lead_ms`: how long before its tick a scheduled run is handed over (lock, row, executor),
    /// the executor then starting it at the tick; 0: at the tick.
    pub lead: Duration,
}

/// `[monitor]`: one monitor daemon.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// `poll_ms`: how often the job table's change log is read.
    pub poll_interval: Duration,
    /// `reconcile_secs`: how often the whole job table is compared with etcd, in pages.
    pub reconcile_interval: Duration,
    /// `keep_days`: final runs scheduled longer ago than this many days are deleted.
    pub keep_days: u64,
    /// `keep_runs`: per job, final runs beyond the newest this many are deleted.
    pub keep_runs: u64,
    /// `alarm_keep_days`: alarms done with (sent, given up, summarised, ...) are deleted after
    /// this many days.
    pub alarm_keep_days: u64,
    /// `retention_secs`: how often old rows are looked for (and once soon after start).
    pub retention_interval: Duration,
}

/// `[dispatcher] lead_ms` by default: a tick's hand-over (lock, row, RPC, claim) is done before
/// the tick, so that at the tick only the spawn is left, within the second's quiet part at a
/// hundred runs a second.
pub const DEFAULT_LEAD: Duration = Duration::from_millis(300);

/// The most `[dispatcher] lead_ms` may be.
pub const MAX_LEAD: Duration = Duration::from_secs(10);

/// The keys each section accepts; anything else is a typo.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "database",
        &["url", "max_connections", "statement_timeout_secs"],
    ),
    ("redis", &["url", "prefix"]),
    ("etcd", &["endpoints", "prefix", "lease_ttl"]),
    (
        "executor",
        &[
            "listen",
            "advertise",
            "name",
            "max_concurrent",
            "output_kib",
            "shell",
            "drain_secs",
            "kill_grace_secs",
            "run_as",
            "pass_env",
            "max_connections",
            "data_dir",
            "max_unrecorded",
        ],
    ),
    (
        "dispatcher",
        &[
            "name",
            "time_zone",
            "lock_ttl_secs",
            "rpc_timeout_ms",
            "max_late_ms",
            "catchup_secs",
            "catchup_max",
            "max_ticks_in_flight",
            "lead_ms",
        ],
    ),
    (
        "monitor",
        &[
            "poll_ms",
            "reconcile_secs",
            "keep_days",
            "keep_runs",
            "alarm_keep_days",
            "retention_secs",
        ],
    ),
    (
        "http",
        &["listen", "admin_token", "viewer_token", "secure_cookie"],
    ),
    ("metrics", &["listen"]),
    (
        "rpc",
        &["secret", "tls_cert", "tls_key", "tls_ca", "tls_server_name"],
    ),
    (
        "alarm",
        &[
            "smtp_host",
            "smtp_port",
            "smtp_tls",
            "smtp_user",
            "smtp_password",
            "mail_from",
            "mail_list",
            "sms_url",
            "sms_method",
            "sms_body",
            "sms_mobiles",
            "quiet_secs",
            "daily_cap",
            "base_url",
            "check_ms",
            "grace_secs",
        ],
    ),
];

/// The shortest `[rpc] secret` accepted.
pub const MIN_SECRET_CHARS: usize = 16;

/// The shortest `[http] admin_token` or `viewer_token` accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The environment variable prefix for overrides: `GOCRON__SECTION__KEY`.
pub const ENV_PREFIX: &str = "GOCRON__";

/// `text` with every byte but unreserved URL characters percent-encoded (a user name or
/// password inside a URL, a query value).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One value and where it came from, so that an error can name its origin.
#[derive(Debug, Clone)]
struct Value {
    text: String,
    origin: String,
}

/// The raw `(section, key) → value` map, before typing.
#[derive(Debug, Default)]
struct Raw {
    values: BTreeMap<(String, String), Value>,
    file: String,
}

impl Config {
    /// Loads `path` and applies the process environment's overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_ini(&text, &path.display().to_string(), std::env::vars())?;
        for warning in &config.warnings {
            tracing::warn!(config = %path.display(), "{warning}");
        }
        Ok(config)
    }

    /// Parses INI text (named `origin` in errors) and applies the given `GOCRON__…` overrides.
    pub fn from_ini(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut raw = Raw::parse(text, origin)?;
        raw.apply_env(env);
        let warnings = raw.translate_go_gocron();
        raw.check_known()?;
        let mut config = raw.build()?;
        config.warnings = warnings;
        Ok(config)
    }
}

impl Raw {
    fn parse(text: &str, origin: &str) -> Result<Raw, ConfigError> {
        let ini = ini::Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut raw = Raw {
            values: BTreeMap::new(),
            file: origin.to_owned(),
        };
        for (section, props) in ini.iter() {
            let Some(section) = section else {
                if let Some((key, _)) = props.iter().next() {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_owned(),
                        section: String::new(),
                        key: key.to_owned(),
                        message: "keys must be inside a [section]".into(),
                    });
                }
                continue;
            };
            for (key, value) in props.iter() {
                raw.values.insert(
                    (section.to_ascii_lowercase(), key.trim().to_owned()),
                    Value {
                        text: value.trim().to_owned(),
                        origin: origin.to_owned(),
                    },
                );
            }
        }
        Ok(raw)
    }

    /// Takes in the keys of the Go gocron's conf.ini, which people moving here bring: its
    /// `[database]` (MySQL) and `[redis]` addresses become our `url`s and `[alarm_mail_list]`
    /// our `[alarm] mail_list`, wherever ours are not set (ours win); the keys that mean
    /// nothing here are named, in one warning, instead of refused.
    fn translate_go_gocron(&mut self) -> Vec<String> {
        let mut ignored = Vec::new();
        let take = |raw: &mut Raw, section: &str, keys: &[&str]| {
            keys.iter()
                .filter_map(|k| {
                    let v = raw.values.remove(&(section.to_owned(), (*k).to_owned()))?;
                    Some(((*k).to_owned(), v.text))
                })
                .collect::<BTreeMap<String, String>>()
        };
        let go_db = take(
            self,
            "database",
            &[
                "username", "password", "host", "port", "database", "charset",
            ],
        );
        if go_db.contains_key("charset") {
            ignored.push("[database] charset (gocron always uses utf8mb4)".to_owned());
        }
        let has = |raw: &Raw, section: &str, key: &str| {
            raw.values
                .contains_key(&(section.to_owned(), key.to_owned()))
        };
        let addressed = ["username", "password", "host", "port", "database"]
            .iter()
            .any(|k| go_db.contains_key(*k));
        if addressed {
            if has(self, "database", "url") {
                ignored.push(
                    "[database] username/password/host/port/database (url is set and wins)"
                        .to_owned(),
                );
            } else {
                let get = |k: &str, default: &str| {
                    go_db.get(k).cloned().unwrap_or_else(|| default.to_owned())
                };
                let url = format!(
                    "mysql://{}:{}@{}:{}/{}",
                    percent_encode(&get("username", "root")),
                    percent_encode(&get("password", "")),
                    get("host", "127.0.0.1"),
                    get("port", "3306"),
                    get("database", "gocron"),
                );
                self.values.insert(
                    ("database".to_owned(), "url".to_owned()),
                    Value {
                        text: url,
                        origin: format!(
                            "{} ([database] of the Go gocron: username, password, host, port, database)",
                            self.file
                        ),
                    },
                );
            }
        }
        let go_redis = take(self, "redis", &["host", "port", "max_idle", "max_active"]);
        for key in ["max_idle", "max_active"] {
            if go_redis.contains_key(key) {
                ignored.push(format!(
                    "[redis] {key} (each daemon keeps one multiplexed connection)"
                ));
            }
        }
        if go_redis.contains_key("host") || go_redis.contains_key("port") {
            if has(self, "redis", "url") {
                ignored.push("[redis] host/port (url is set and wins)".to_owned());
            } else {
                let host = go_redis.get("host").map_or("127.0.0.1", String::as_str);
                let port = go_redis.get("port").map_or("6379", String::as_str);
                self.values.insert(
                    ("redis".to_owned(), "url".to_owned()),
                    Value {
                        text: format!("redis://{host}:{port}/"),
                        origin: format!("{} ([redis] host, port of the Go gocron)", self.file),
                    },
                );
            }
        }
        let list: Vec<((String, String), Value)> = self
            .values
            .iter()
            .filter(|((s, _), _)| s == "alarm_mail_list")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let addresses: Vec<String> = list
            .iter()
            .flat_map(|(_, v)| crate::alarm::split_list(&v.text))
            .collect();
        for (key, _) in &list {
            self.values.remove(key);
        }
        if !addresses.is_empty() {
            if has(self, "alarm", "mail_list") {
                ignored.push("[alarm_mail_list] ([alarm] mail_list is set and wins)".to_owned());
            } else {
                self.values.insert(
                    ("alarm".to_owned(), "mail_list".to_owned()),
                    Value {
                        text: addresses.join(","),
                        origin: format!("{} ([alarm_mail_list] of the Go gocron)", self.file),
                    },
                );
            }
        }
        if ignored.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "keys of the Go gocron's conf.ini that mean nothing here, ignored: {}",
            ignored.join("; ")
        )]
    }

    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
        for (name, text) in env {
            let Some(rest) = name
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| &name[ENV_PREFIX.len()..])
            else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let section = section.to_ascii_lowercase();
            // Machine group names are user-chosen; keep an existing key's spelling if it matches.
            let key = self
                .values
                .keys()
                .find(|(s, k)| *s == section && k.eq_ignore_ascii_case(key))
                .map(|(_, k)| k.clone())
                .unwrap_or_else(|| key.to_ascii_lowercase());
            self.values.insert(
                (section, key),
                Value {
                    text: text.trim().to_owned(),
                    origin: format!("environment variable {name}"),
                },
            );
        }
    }

    fn check_known(&self) -> Result<(), ConfigError> {
        for ((section, key), value) in &self.values {
            if section == "machine" {
                continue;
            }
            let known = KNOWN.iter().find(|(s, _)| s == section);
            let message = match known {
                None => format!(
                    "unknown section [{section}] (known: {}, machine)",
                    KNOWN.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
                ),
                Some((_, keys)) if !keys.contains(&key.as_str()) => {
                    format!("unknown key (known in [{section}]: {})", keys.join(", "))
                }
                Some(_) => continue,
            };
            return Err(ConfigError::Invalid {
                origin: value.origin.clone(),
                section: section.clone(),
                key: key.clone(),
                message,
            });
        }
        Ok(())
    }

    fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.values
            .get(&(section.to_owned(), key.to_owned()))
            .filter(|v| !v.text.is_empty())
    }

    fn invalid(&self, section: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let origin = self
            .values
            .get(&(section.to_owned(), key.to_owned()))
            .map_or_else(|| self.file.clone(), |v| v.origin.clone());
        ConfigError::Invalid {
            origin,
            section: section.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn string(&self, section: &str, key: &str, default: &str) -> String {
        self.get(section, key)
            .map_or_else(|| default.to_owned(), |v| v.text.clone())
    }

    fn parsed<T>(&self, section: &str, key: &str, default: T, what: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
    {
        match self.get(section, key) {
            None => Ok(default),
            Some(v) => v
                .text
                .parse()
                .map_err(|_| self.invalid(section, key, format!("{:?} is not {what}", v.text))),
        }
    }

    fn positive(&self, section: &str, key: &str, default: u64) -> Result<u64, ConfigError> {
        let n: u64 = self.parsed(section, key, default, "a whole number")?;
        if n == 0 {
            return Err(self.invalid(section, key, "must be greater than 0"));
        }
        Ok(n)
    }

    fn build(&self) -> Result<Config, ConfigError> {
        let database = DatabaseConfig {
            url: self.string("database", "url", "sqlite://var/gocron.db?mode=rwc"),
            max_connections: self.positive("database", "max_connections", 10)? as u32,
            statement_timeout: match self.parsed::<u64>(
                "database",
                "statement_timeout_secs",
                30,
                "a whole number of seconds (0: no limit)",
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
        };
        if !["sqlite:", "mysql:", "mariadb:", "postgres:", "postgresql:"]
            .iter()
            .any(|scheme| database.url.starts_with(scheme))
        {
            return Err(self.invalid(
                "database",
                "url",
                "must start with sqlite://, mysql://, mariadb:// or postgres://",
            ));
        }

        let redis = RedisConfig {
            url: self.string("redis", "url", "redis://127.0.0.1:6379/"),
            prefix: self.string("redis", "prefix", "gocron"),
        };
        if !redis.url.starts_with("redis://") && !redis.url.starts_with("unix://") {
            return Err(self.invalid("redis", "url", "must start with redis:// or unix://"));
        }

        let endpoints: Vec<String> = self
            .string("etcd", "endpoints", "http://127.0.0.1:2379")
            .split(',')
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(self.invalid("etcd", "endpoints", "needs at least one endpoint"));
        }
        let prefix = self
            .string("etcd", "prefix", "/gocron")
            .trim_end_matches('/')
            .to_owned();
        if !prefix.starts_with('/') {
            return Err(self.invalid("etcd", "prefix", "must start with /"));
        }
        let etcd = EtcdConfig {
            endpoints,
            prefix,
            lease_ttl: self.positive("etcd", "lease_ttl", 10)?,
        };

        let mut machines = MachineGroups::default();
        for ((section, key), value) in &self.values {
            if section == "machine" {
                machines
                    .insert(key, &value.text)
                    .map_err(|message| self.invalid("machine", key, message))?;
            }
        }

        let listen: SocketAddr = self.parsed(
            "executor",
            "listen",
            SocketAddr::from(([127, 0, 0, 1], 7070)),
            "an ip:port address",
        )?;
        let advertise = match self.get("executor", "advertise") {
            Some(_) => self.parsed("executor", "advertise", listen, "an ip:port address")?,
            None if listen.ip().is_unspecified() => {
                return Err(self.invalid(
                    "executor",
                    "advertise",
                    "required when listen is a wildcard address: the address dispatchers dial",
                ));
            }
            None => listen,
        };
        let name = self.string(
            "executor",
            "name",
            &format!("{}-{}", host_name(), advertise.port()),
        );
        let data_dir = match self.get("executor", "data_dir") {
            Some(v) => PathBuf::from(&v.text),
            None => Path::new("var/executor").join(&name),
        };
        let executor = ExecutorConfig {
            listen,
            advertise,
            name,
            max_concurrent: self.positive("executor", "max_concurrent", 64)? as usize,
            output_kib: self.positive("executor", "output_kib", 64)? as usize,
            shell: self.string("executor", "shell", "/bin/sh"),
            drain_secs: self.parsed("executor", "drain_secs", 30, "a whole number")?,
            kill_grace_secs: self.parsed("executor", "kill_grace_secs", 10, "a whole number")?,
            run_as: self.string("executor", "run_as", ""),
            pass_env: self.pass_env()?,
            max_connections: self.positive("executor", "max_connections", 256)? as usize,
            data_dir,
            max_unrecorded: self.positive("executor", "max_unrecorded", 10_000)? as usize,
        };

        let dispatcher = DispatcherConfig {
            name: self.string(
                "dispatcher",
                "name",
                &format!("{}-{}", host_name(), std::process::id()),
            ),
            time_zone: self.parsed("dispatcher", "time_zone", Tz::UTC, "an IANA time zone")?,
            lock_ttl: Duration::from_secs(self.positive("dispatcher", "lock_ttl_secs", 3600)?),
            rpc_timeout: Duration::from_millis(self.positive(
                "dispatcher",
                "rpc_timeout_ms",
                3000,
            )?),
            max_late: Duration::from_millis(self.positive("dispatcher", "max_late_ms", 5000)?),
            catchup: Duration::from_secs(self.positive("dispatcher", "catchup_secs", 86_400)?),
            catchup_max: self.positive("dispatcher", "catchup_max", 100)? as usize,
            max_ticks_in_flight: self.positive("dispatcher", "max_ticks_in_flight", 10_000)?
                as usize,
            lead: self.lead()?,
        };

        let monitor = MonitorConfig {
            poll_interval: Duration::from_millis(self.positive("monitor", "poll_ms", 250)?),
            reconcile_interval: Duration::from_secs(self.positive(
                "monitor",
                "reconcile_secs",
                300,
            )?),
            keep_days: self.positive("monitor", "keep_days", 30)?,
            keep_runs: self.positive("monitor", "keep_runs", 1000)?,
            alarm_keep_days: self.positive("monitor", "alarm_keep_days", 90)?,
            retention_interval: Duration::from_secs(self.positive(
                "monitor",
                "retention_secs",
                300,
            )?),
        };

        let secret = self.string("rpc", "secret", "");
        if secret.chars().count() < MIN_SECRET_CHARS {
            return Err(self.invalid(
                "rpc",
                "secret",
                format!(
                    "required, at least {MIN_SECRET_CHARS} characters, the same on every dispatcher and executor"
                ),
            ));
        }
        let path = |key| {
            let value = self.string("rpc", key, "");
            (!value.is_empty()).then(|| PathBuf::from(value))
        };
        let (tls_cert, tls_key) = (path("tls_cert"), path("tls_key"));
        if tls_cert.is_some() != tls_key.is_some() {
            let missing = if tls_cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            };
            return Err(self.invalid(
                "rpc",
                missing,
                "tls_cert and tls_key go together: set both (TLS on) or neither",
            ));
        }
        let rpc = RpcConfig {
            secret: crate::rpc::Secret::new(secret),
            tls_cert,
            tls_key,
            tls_ca: path("tls_ca"),
            tls_server_name: self.string("rpc", "tls_server_name", ""),
        };

        let alarm = self.alarm()?;
        let http = self.http()?;
        let metrics = MetricsConfig {
            listen: match self.get("metrics", "listen") {
                None => None,
                Some(_) => Some(self.parsed(
                    "metrics",
                    "listen",
                    SocketAddr::from(([127, 0, 0, 1], 9100)),
                    "an ip:port address",
                )?),
            },
        };

        Ok(Config {
            database,
            redis,
            etcd,
            machines,
            executor,
            dispatcher,
            monitor,
            rpc,
            alarm,
            http,
            metrics,
            warnings: Vec::new(),
        })
    }

    /// `[http]`: tokens are long, and two different ones (a token names its role).
    fn http(&self) -> Result<HttpConfig, ConfigError> {
        let listen = match self.get("http", "listen") {
            None => None,
            Some(_) => Some(self.parsed(
                "http",
                "listen",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                "an ip:port address",
            )?),
        };
        let token = |key: &str| match self.get("http", key) {
            None => Ok(None),
            Some(v) if v.text.chars().count() < MIN_TOKEN_CHARS => Err(self.invalid(
                "http",
                key,
                format!(
                    "at least {MIN_TOKEN_CHARS} characters when set (e.g. `openssl rand -hex 32`)"
                ),
            )),
            Some(v) => Ok(Some(crate::rpc::Secret::new(v.text.clone()))),
        };
        let (admin_token, viewer_token) = (token("admin_token")?, token("viewer_token")?);
        if let (Some(admin), Some(viewer)) = (&admin_token, &viewer_token)
            && admin.matches(viewer)
        {
            return Err(self.invalid(
                "http",
                "viewer_token",
                "must differ from admin_token (a token says which role calls)",
            ));
        }
        Ok(HttpConfig {
            listen,
            admin_token,
            viewer_token,
            secure_cookie: self.parsed("http", "secure_cookie", false, "true or false")?,
        })
    }

    /// `[dispatcher] lead_ms`: at most [`MAX_LEAD`], since a run handed over is then past every
    /// change to its job until its tick.
    fn lead(&self) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parsed(
            "dispatcher",
            "lead_ms",
            DEFAULT_LEAD.as_millis() as u64,
            "a whole number",
        )?;
        if ms > MAX_LEAD.as_millis() as u64 {
            return Err(self.invalid(
                "dispatcher",
                "lead_ms",
                format!("must be at most {}", MAX_LEAD.as_millis()),
            ));
        }
        Ok(Duration::from_millis(ms))
    }

    /// `[executor] pass_env`: variable names, comma- or space-separated. gocron's own settings
    /// (`GOCRON__…`, the database URL and the RPC secret among them) are refused: a job must never
    /// see them.
    fn pass_env(&self) -> Result<Vec<String>, ConfigError> {
        let text = self.string("executor", "pass_env", "");
        let mut names = Vec::new();
        for name in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|n| !n.is_empty())
        {
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(self.invalid(
                    "executor",
                    "pass_env",
                    format!("{name:?} is not an environment variable name (letters, digits, _)"),
                ));
            }
            if name
                .get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            {
                return Err(self.invalid(
                    "executor",
                    "pass_env",
                    format!(
                        "{name}: gocron's own settings ({ENV_PREFIX}…) are never passed to jobs"
                    ),
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn alarm(&self) -> Result<crate::alarm::config::AlarmConfig, ConfigError> {
        use crate::alarm::config::{AlarmConfig, DEFAULT_SMS_BODY, SmsConfig, SmtpConfig, SmtpTls};
        use crate::alarm::split_list;
        let defaults = AlarmConfig::default();
        let smtp = match self.get("alarm", "smtp_host") {
            None => None,
            Some(host) => {
                let tls: SmtpTls = match self.get("alarm", "smtp_tls") {
                    None => SmtpTls::StartTls,
                    Some(v) => v
                        .text
                        .parse()
                        .map_err(|e: String| self.invalid("alarm", "smtp_tls", e))?,
                };
                let port =
                    self.parsed("alarm", "smtp_port", tls.default_port(), "a port number")?;
                let from = self.string("alarm", "mail_from", &format!("gocron@{}", host_name()));
                if !crate::alarm::mail::is_mailbox(&from) {
                    return Err(self.invalid(
                        "alarm",
                        "mail_from",
                        format!("{from:?} is not a mail address"),
                    ));
                }
                Some(SmtpConfig {
                    host: host.text.clone(),
                    port,
                    tls,
                    user: self.string("alarm", "smtp_user", ""),
                    password: self.string("alarm", "smtp_password", ""),
                    from,
                })
            }
        };
        let sms = match self.get("alarm", "sms_url") {
            None => None,
            Some(url) => {
                if !url.text.starts_with("http://") && !url.text.starts_with("https://") {
                    return Err(self.invalid(
                        "alarm",
                        "sms_url",
                        "must start with http:// or https://",
                    ));
                }
                let method = self
                    .string("alarm", "sms_method", "POST")
                    .to_ascii_uppercase();
                if !["GET", "POST", "PUT"].contains(&method.as_str()) {
                    return Err(self.invalid(
                        "alarm",
                        "sms_method",
                        format!("{method:?} is not one of: GET, POST, PUT"),
                    ));
                }
                Some(SmsConfig {
                    url: url.text.clone(),
                    method,
                    body: self.string("alarm", "sms_body", DEFAULT_SMS_BODY),
                })
            }
        };
        let mail_list = split_list(&self.string("alarm", "mail_list", ""));
        if let Some(bad) = mail_list
            .iter()
            .find(|a| !crate::alarm::mail::is_address(a))
        {
            return Err(self.invalid(
                "alarm",
                "mail_list",
                format!("{bad:?} is not a mail address"),
            ));
        }
        Ok(AlarmConfig {
            smtp,
            mail_list,
            sms,
            sms_mobiles: split_list(&self.string("alarm", "sms_mobiles", "")),
            quiet: Duration::from_secs(self.parsed(
                "alarm",
                "quiet_secs",
                defaults.quiet.as_secs(),
                "a whole number",
            )?),
            daily_cap: self.parsed("alarm", "daily_cap", defaults.daily_cap, "a whole number")?,
            base_url: self
                .string("alarm", "base_url", "")
                .trim_end_matches('/')
                .to_owned(),
            check_interval: Duration::from_millis(self.positive(
                "alarm",
                "check_ms",
                defaults.check_interval.as_millis() as u64,
            )?),
            grace: Duration::from_secs(self.parsed(
                "alarm",
                "grace_secs",
                defaults.grace.as_secs(),
                "a whole number",
            )?),
        })
    }
}

/// This host's name, or `localhost` when it has none we can read.
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The given overrides, plus a valid `[rpc] secret` unless one is given.
    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !pairs
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("GOCRON__RPC__SECRET"))
        {
            all.push(("GOCRON__RPC__SECRET".into(), "0123456789abcdef".into()));
        }
        all
    }

    #[test]
    fn the_rpc_secret_is_required_and_long() {
        for secret in ["", "short"] {
            let err = Config::from_ini("", "c.ini", env(&[("GOCRON__RPC__SECRET", secret)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("[rpc] secret: required, at least 16"), "{err}");
        }
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        for (set, missing) in [("TLS_CERT", "tls_key"), ("TLS_KEY", "tls_cert")] {
            let err = Config::from_ini(
                "",
                "c.ini",
                env(&[(&format!("GOCRON__RPC__{set}"), "/etc/gocron/x.pem")]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!(
                    "[rpc] {missing}: tls_cert and tls_key go together"
                )),
                "{err}"
            );
        }
        let c = Config::from_ini("", "c.ini", env(&[])).unwrap();
        assert!(c.rpc.tls_cert.is_none() && c.rpc.tls_ca.is_none());
    }

    #[test]
    fn the_sample_conf_ini_is_valid() {
        let text = include_str!("../../conf/conf.ini");
        let c = Config::from_ini(text, "conf/conf.ini", Vec::new()).unwrap();
        assert!(c.machines.is_known("local"));
        assert_eq!(c.monitor.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn the_go_gocrons_conf_ini_loads_with_one_warning_and_our_keys_win() {
        let text = include_str!("../../conf/examples/go-gocron.ini");
        // Ours needs an RPC secret, which the Go gocron's has no word for.
        let secret = env(&[("GOCRON__RPC__SECRET", "0123456789abcdef")]);
        let c = Config::from_ini(text, "go.ini", secret.clone()).unwrap();
        assert_eq!(c.database.url, "mysql://root:root@localhost:3306/cron");
        assert_eq!(c.redis.url, "redis://192.168.100.60:6381/");
        assert!(c.machines.is_known("phpgroup") && c.machines.is_known("cron75"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        for key in ["charset", "max_idle", "max_active"] {
            assert!(c.warnings[0].contains(key), "{:?}", c.warnings);
        }
        // A password with URL characters, a mail list, and our own keys winning.
        let text = "[database]\nusername = cron\npassword = p@ss:w/rd\nhost = db\n\
                    [alarm_mail_list]\nops = ops@example.com, dev@example.com\n\
                    [redis]\nhost = r1\nurl = redis://ours:6379/\n";
        let c = Config::from_ini(text, "go.ini", secret.clone()).unwrap();
        assert_eq!(
            c.database.url,
            "mysql://cron:p%40ss%3Aw%2Frd@db:3306/gocron"
        );
        assert_eq!(c.alarm.mail_list, ["ops@example.com", "dev@example.com"]);
        assert_eq!(c.redis.url, "redis://ours:6379/");
        assert!(
            c.warnings[0].contains("url is set and wins"),
            "{:?}",
            c.warnings
        );
        // Our conf.ini has no warning.
        let ours = Config::from_ini(include_str!("../../conf/conf.ini"), "c.ini", Vec::new());
        assert!(ours.unwrap().warnings.is_empty());
    }

    #[test]
    fn the_sample_alarm_keys_are_valid_uncommented() {
        let text: String = include_str!("../../conf/conf.ini")
            .lines()
            .map(|l| match l.strip_prefix(';') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::from_ini(&text, "conf/conf.ini", Vec::new()).unwrap();
        let smtp = c.alarm.smtp.expect("smtp_host is set");
        assert_eq!(smtp.port, 587);
        assert_eq!(c.alarm.mail_list.len(), 2);
        assert_eq!(c.alarm.sms.expect("sms_url is set").method, "POST");
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = Config::from_ini("", "conf.ini", env(&[])).unwrap();
        assert_eq!(c.etcd.prefix, "/gocron");
        assert_eq!(c.etcd.lease_ttl, 10);
        assert_eq!(c.executor.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.executor.advertise, c.executor.listen);
        assert_eq!(c.dispatcher.time_zone, Tz::UTC);
        assert!(c.database.url.starts_with("sqlite://"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = "[executor]\nlisten = 127.0.0.1:7070\n[machine]\nPhpGroup = 10.0.0.1\n";
        let c = Config::from_ini(
            text,
            "conf.ini",
            env(&[
                ("GOCRON__EXECUTOR__LISTEN", "127.0.0.1:7071"),
                ("gocron__machine__phpgroup", "10.0.0.2"),
                ("OTHER__EXECUTOR__LISTEN", "127.0.0.1:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.executor.listen.port(), 7071);
        let members = c.machines.get("PhpGroup").unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].to_string(), "10.0.0.2");
    }

    #[test]
    fn errors_name_the_file_section_and_key() {
        let err = Config::from_ini("[etcd]\nlease_ttl = soon\n", "/etc/gocron.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/gocron.ini: [etcd] lease_ttl: \"soon\" is not a whole number"
        );

        let err = Config::from_ini("[executor]\nlisten = 1.2.3.4\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.ini: [executor] listen:"), "{err}");

        let err = Config::from_ini(
            "",
            "c.ini",
            env(&[("GOCRON__DISPATCHER__TIME_ZONE", "Mars/Base")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "environment variable GOCRON__DISPATCHER__TIME_ZONE: [dispatcher] time_zone"
            ),
            "{err}"
        );
    }

    #[test]
    fn typos_are_refused() {
        let err = Config::from_ini("[redis]\nurll = redis://x\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[redis] urll: unknown key"), "{err}");
        let err = Config::from_ini("[dispatch]\nname = a\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown section [dispatch]"), "{err}");
    }

    #[test]
    fn wildcard_listen_needs_advertise() {
        let err = Config::from_ini("[executor]\nlisten = 0.0.0.0:7070\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[executor] advertise: required"), "{err}");
        let c = Config::from_ini(
            "[executor]\nlisten = 0.0.0.0:7070\nadvertise = 10.0.0.9:7070\n",
            "c.ini",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.executor.advertise.to_string(), "10.0.0.9:7070");
    }

    #[test]
    fn alarm_keys_have_defaults_and_are_checked() {
        use crate::alarm::config::SmtpTls;
        let c = Config::from_ini("", "c.ini", env(&[])).unwrap();
        assert!(c.alarm.smtp.is_none() && c.alarm.sms.is_none());
        assert_eq!(c.alarm.quiet, Duration::from_secs(3600));
        let c = Config::from_ini(
            "[alarm]\nsmtp_host = mail.example\nsmtp_tls = TLS\nmail_list = a@x, b@y c@z\n",
            "c.ini",
            env(&[]),
        )
        .unwrap();
        let smtp = c.alarm.smtp.unwrap();
        assert_eq!((smtp.tls, smtp.port), (SmtpTls::Tls, 465));
        assert_eq!(c.alarm.mail_list, vec!["a@x", "b@y", "c@z"]);
        let err = Config::from_ini(
            "[alarm]\nsmtp_host = m\nsmtp_tls = ssl\n",
            "c.ini",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[alarm] smtp_tls: \"ssl\" is not one of"),
            "{err}"
        );
        let err = Config::from_ini("[alarm]\nmail_list = a@x, nobody\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[alarm] mail_list: \"nobody\" is not a mail address"),
            "{err}"
        );
        let err = Config::from_ini("[alarm]\nsms_url = ftp://x\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[alarm] sms_url"), "{err}");
    }

    #[test]
    fn pass_env_takes_names_and_refuses_gocron_settings() {
        let c = Config::from_ini(
            "[executor]\npass_env = TZ, http_proxy  PATH,TZ\n",
            "c.ini",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.executor.pass_env, ["TZ", "http_proxy", "PATH"]);
        assert_eq!(c.executor.max_connections, 256);
        let c = Config::from_ini("", "c.ini", env(&[])).unwrap();
        assert!(c.executor.pass_env.is_empty());
        for bad in ["GOCRON__RPC__SECRET", "gocron__database__url"] {
            let err = Config::from_ini(
                &format!("[executor]\npass_env = TZ {bad}\n"),
                "c.ini",
                env(&[]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("[executor] pass_env: ")
                    && err.contains("gocron's own settings (GOCRON__…) are never passed to jobs"),
                "{err}"
            );
        }
        let err = Config::from_ini("[executor]\npass_env = A=B\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an environment variable name"), "{err}");
    }

    #[test]
    fn an_executor_has_a_data_dir_of_its_own_and_a_cap_on_unrecorded_outcomes() {
        let c = Config::from_ini("[executor]\nname = exec-1\n", "c.ini", env(&[])).unwrap();
        assert_eq!(c.executor.data_dir, Path::new("var/executor/exec-1"));
        assert_eq!(c.executor.max_unrecorded, 10_000);
        assert_eq!(
            (
                c.monitor.keep_days,
                c.monitor.keep_runs,
                c.monitor.alarm_keep_days
            ),
            (30, 1000, 90)
        );
        assert_eq!(c.monitor.retention_interval, Duration::from_secs(300));
        let c = Config::from_ini(
            "[executor]\ndata_dir = /srv/gocron\nmax_unrecorded = 5\n",
            "c.ini",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.executor.data_dir, Path::new("/srv/gocron"));
        assert_eq!(c.executor.max_unrecorded, 5);
        let err = Config::from_ini("[executor]\nmax_unrecorded = 0\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[executor] max_unrecorded"), "{err}");
    }

    #[test]
    fn http_is_off_by_default_and_its_tokens_are_long() {
        let c = Config::from_ini("", "c.ini", env(&[])).unwrap();
        assert!(c.http.listen.is_none() && c.http.admin_token.is_none());
        let c = Config::from_ini(
            "[http]\nlisten = 127.0.0.1:0\nadmin_token = 0123456789abcdef\n",
            "c.ini",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.http.listen.unwrap().to_string(), "127.0.0.1:0");
        assert!(c.http.admin_token.is_some() && c.http.viewer_token.is_none());
        for key in ["admin_token", "viewer_token"] {
            let err = Config::from_ini(&format!("[http]\n{key} = short\n"), "c.ini", env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("[http] {key}: at least 16 characters")),
                "{err}"
            );
        }
        let err = Config::from_ini(
            "[http]\nadmin_token = 0123456789abcdef\nviewer_token = 0123456789abcdef\n",
            "c.ini",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[http] viewer_token: must differ"), "{err}");
        let err = Config::from_ini("[http]\nlisten = 8080\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[http] listen: \"8080\" is not an ip:port"),
            "{err}"
        );
    }

    #[test]
    fn bad_machine_member_is_refused() {
        let err = Config::from_ini("[machine]\ng = 10.0.0.1||x\n", "c.ini", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[machine] g:"), "{err}");
    }
}
