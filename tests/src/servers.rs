//! Private servers for fault tests: a Redis, etcd, MariaDB or PostgreSQL of the test's own, on a
//! free loopback port with its data in a temporary folder, that the test may stop, kill and start
//! again (same port, same data) without disturbing the shared servers other tests use.
//!
//! They are started the way `scripts/services` starts the shared ones (same binaries and
//! options; `scripts/services install` installs them), except that Redis keeps an append-only
//! file (`appendonly yes`, `appendfsync always`), as the README recommends for production, so
//! that a restart keeps the tick locks, claims and misfire marks. A server is killed (SIGKILL)
//! when its [`Server`] is dropped.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sea_orm::{ConnectionTrait as _, Database};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis-server`, with an append-only file.
    Redis,
    /// `etcd`, one member.
    Etcd,
    /// `mariadbd`, initialised by `mariadb-install-db`; user `gocron`, password `gocron`.
    MariaDb,
    /// `postgres`, initialised by `initdb`; trust authentication on loopback.
    Postgres,
}

/// A private server (see the module doc). Killed when dropped.
pub struct Server {
    kind: Kind,
    dir: tempfile::TempDir,
    port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A port nobody listens on now (the kernel's pick; a tiny race with other programs remains).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The folder of PostgreSQL's `initdb` and `postgres`: Debian keeps them off `PATH`.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .or_else(|| {
            let local = PathBuf::from("/usr/local/bin");
            local.join("initdb").exists().then_some(local)
        })
        .expect("PostgreSQL's initdb not found: run `scripts/services install`")
}

/// PostgreSQL refuses to run as root: as root, it runs as the `postgres` OS user (which the
/// Debian package, or `scripts/services start`, creates).
fn pg_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("running as root, PostgreSQL needs an OS user `postgres`: run `scripts/services install`");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn run(cmd: &mut Command, what: &str, log: &Path) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (run `scripts/services install`)"));
    std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat()).ok();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Server {
    /// A private server of `kind`, initialised and started; returns once it answers.
    pub async fn start_new(kind: Kind) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("gocron-server-")
            .tempdir()
            .expect("temporary folder");
        let mut server = Server {
            kind,
            dir,
            port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        server.init();
        server.start().await;
        server
    }

    /// The URL clients use: for the databases, the server's admin URL (no database name), as
    /// `GOCRON_TEST_MYSQL` and `GOCRON_TEST_POSTGRES` are.
    pub fn url(&self) -> String {
        let port = self.port;
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{port}"),
            Kind::Etcd => format!("http://127.0.0.1:{port}"),
            Kind::MariaDb => format!("mysql://gocron:gocron@127.0.0.1:{port}"),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{port}"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn init(&self) {
        let data = self.data();
        match self.kind {
            Kind::Redis | Kind::Etcd => {
                std::fs::create_dir_all(&data).expect("data folder");
                use std::os::unix::fs::PermissionsExt as _;
                // etcd 3.5+ refuses a data folder more open than this.
                std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).ok();
            }
            Kind::MariaDb => {
                let mut cmd = Command::new("mariadb-install-db");
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .args([
                        "--auth-root-authentication-method=socket",
                        "--skip-test-db",
                        "--skip-name-resolve",
                    ]);
                if nix::unistd::geteuid().is_root() {
                    cmd.arg("--user=root");
                }
                run(
                    &mut cmd,
                    "mariadb-install-db",
                    &self.dir.path().join("init.log"),
                );
            }
            Kind::Postgres => {
                use std::os::unix::fs::PermissionsExt as _;
                // The postgres user must reach its data folder inside our temporary folder.
                std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
                let mut cmd = Command::new(pg_bin().join("initdb"));
                cmd.arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                ]);
                if let Some((uid, gid)) = pg_user() {
                    std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(gid)).expect("chown");
                    cmd.uid(uid).gid(gid);
                }
                run(&mut cmd, "initdb", &self.dir.path().join("init.log"));
            }
        }
    }

    fn command(&self) -> Command {
        let data = self.data();
        let port = self.port.to_string();
        match self.kind {
            Kind::Redis => {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--bind", "127.0.0.1", "--port", &port, "--dir"])
                    .arg(&data)
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--daemonize",
                        "no",
                        "--logfile",
                        "",
                    ]);
                cmd
            }
            Kind::Etcd => {
                let client = format!("http://127.0.0.1:{}", self.port);
                let peer = format!("http://127.0.0.1:{}", self.peer_port);
                let mut cmd = Command::new("etcd");
                cmd.args(["--name", "gocron-fault", "--data-dir"])
                    .arg(&data)
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &format!("gocron-fault={peer}")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--logger", "zap", "--log-outputs", "stderr"]);
                if std::env::consts::ARCH != "x86_64" && std::env::consts::ARCH != "s390x" {
                    cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
                }
                cmd
            }
            Kind::MariaDb => {
                let mut cmd = Command::new("mariadbd");
                cmd.arg("--no-defaults");
                if nix::unistd::geteuid().is_root() {
                    cmd.arg("--user=root");
                }
                cmd.arg(format!("--datadir={}", data.display()))
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!(
                        "--pid-file={}",
                        self.dir.path().join("mariadb.pid").display()
                    ))
                    .arg(format!("--port={port}"))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--skip-name-resolve",
                        "--character-set-server=utf8mb4",
                        "--collation-server=utf8mb4_general_ci",
                        "--max-connections=200",
                        "--innodb-flush-log-at-trx-commit=2",
                        "--innodb-buffer-pool-size=32M",
                        "--log-warnings=1",
                    ]);
                cmd
            }
            Kind::Postgres => {
                let mut cmd = Command::new(pg_bin().join("postgres"));
                cmd.arg("-D")
                    .arg(&data)
                    .args(["-p", &port, "-k"])
                    .arg(self.dir.path())
                    .args(["-c", "listen_addresses=127.0.0.1"])
                    .args(["-c", "max_connections=100"])
                    .args(["-c", "synchronous_commit=off"])
                    .args(["-c", "shared_buffers=16MB"]);
                if let Some((uid, gid)) = pg_user() {
                    cmd.uid(uid).gid(gid);
                }
                cmd
            }
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    /// Starts the server (again: same port, same data) and waits until it answers.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{:?} is already running", self.kind);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("server log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            // Its own process group: a Ctrl-C of the test run is not the server's to see.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?}: {e} (run `scripts/services install`)",
                    self.kind
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.answers().await {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                panic!("{:?} exited at start ({status}):\n{log}", self.kind);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "private {:?} not answering at {} after 60 s",
                self.kind,
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.kind == Kind::MariaDb {
            self.mariadb_user();
        }
    }

    /// Whether the server answers now (for the databases: as the URL's user).
    pub async fn answers(&self) -> bool {
        let probe = async {
            match self.kind {
                Kind::Redis => {
                    let client = redis::Client::open(self.url()).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .ok()
                        .map(drop)
                }
                Kind::Etcd => {
                    let mut c = etcd_client::Client::connect([self.url()], None)
                        .await
                        .ok()?;
                    c.get("/", None).await.ok().map(drop)
                }
                // Until its user exists (first start), MariaDB answers on its socket only.
                Kind::MariaDb => std::net::TcpStream::connect(("127.0.0.1", self.port))
                    .ok()
                    .map(drop),
                Kind::Postgres => {
                    let db = Database::connect(format!("{}/postgres", self.url()))
                        .await
                        .ok()?;
                    db.execute_unprepared("SELECT 1").await.ok()?;
                    db.close().await.ok()
                }
            }
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), probe).await,
            Ok(Some(()))
        )
    }

    /// Creates the `gocron` account (idempotent), through the socket as root.
    fn mariadb_user(&self) {
        let mut sql = String::from("DROP USER IF EXISTS ''@'localhost';");
        for host in ["%", "localhost", "127.0.0.1"] {
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS 'gocron'@'{host}' IDENTIFIED BY 'gocron';\
                 GRANT ALL PRIVILEGES ON *.* TO 'gocron'@'{host}' WITH GRANT OPTION;"
            ));
        }
        sql.push_str("FLUSH PRIVILEGES;");
        let user = if nix::unistd::geteuid().is_root() {
            "root".to_owned()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "root".into())
        };
        run(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg("-S")
                .arg(self.socket())
                .args(["-u", &user, "--batch", "-e", &sql]),
            "mariadb (creating user gocron)",
            &self.dir.path().join("user.log"),
        );
    }

    /// Stops the server gracefully and waits for it to exit: SIGTERM, except for PostgreSQL,
    /// whose SIGTERM ("smart" shutdown) waits for every client to leave; SIGINT is its "fast"
    /// shutdown (`pg_ctl -m fast`, what `scripts/services stop` uses): clients are disconnected.
    pub async fn stop(&mut self) {
        let signal = match self.kind {
            Kind::Postgres => Signal::SIGINT,
            _ => Signal::SIGTERM,
        };
        self.signal(signal).await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        self.signal(Signal::SIGKILL).await;
    }

    async fn signal(&mut self, signal: Signal) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{:?} is not running", self.kind));
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).ok();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} still running 60 s after {signal}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
