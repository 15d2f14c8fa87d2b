//! A throwaway PostgreSQL cluster for a test: Debian's server binaries, a fresh
//! `initdb` in a temporary directory, its own port on loopback and its own
//! socket directory, stopped and removed when dropped (also when the test
//! panics).
//!
//! PostgreSQL refuses to run as root, and the tests run as root (loop devices),
//! so the cluster runs as the `postgres` system user the Debian package creates.
//! `scripts/setup` installs the package when it is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL cluster owned by one test.
pub struct PgCluster {
    /// The temporary directory holding the data directory, the socket and the
    /// log; removed on drop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The server's options (`pg_ctl -o`), kept to start it again.
    options: String,
}

impl PgCluster {
    /// Creates and starts a cluster with one database, `flashrack`, owned by the
    /// superuser `postgres` and reachable without a password over loopback.
    /// Panics with a clear message when PostgreSQL is not installed. Commits
    /// are not flushed to disk (`fsync=off`): a test's data is thrown away.
    pub fn start() -> Self {
        Self::start_with("-c fsync=off")
    }

    /// As [`start`](Self::start), with `settings` (server options such as
    /// `-c shared_buffers=256MB`) instead of `fsync=off`: a measurement
    /// passes none, to measure the server as it is deployed (durable commits).
    pub fn start_with(settings: &str) -> Self {
        let bin = server_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): \
                 run scripts/setup, which installs Debian's postgresql package"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("flashrack-pg-")
            .tempdir()
            .expect("a temporary directory for the cluster");
        // The cluster's user must reach and own its directory.
        crate::run(
            "chown",
            &["-R", "postgres:postgres", &dir.path().to_string_lossy()],
        );
        let data = dir.path().join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {settings}",
            dir.path().display()
        );
        let cluster = Self {
            dir,
            bin,
            port,
            options,
        };
        cluster.start_again();
        as_postgres(
            &cluster.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "flashrack",
            ],
        );
        cluster
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, as when
    /// an administrator stops the service); its port refuses connections
    /// until [`start_again`](Self::start_again). Its data stays.
    pub fn stop(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data_dir().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }

    /// Starts the server (again, after [`stop`](Self::stop)) on the same
    /// port, and waits until it accepts connections.
    pub fn start_again(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data_dir().to_string_lossy(),
                "-l",
                &self.dir.path().join("log").to_string_lossy(),
                "-o",
                &self.options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.wait_ready();
    }

    /// The connection URL of the `flashrack` database.
    pub fn url(&self) -> String {
        self.url_of("flashrack")
    }

    /// The connection URL of another database of the cluster.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        as_postgres(
            &self.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ],
        );
        self.url_of(name)
    }

    /// The process id of the cluster's postmaster (every server process is
    /// its child), from its `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not become ready within 60 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.data_dir().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
            ])
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The newest installed PostgreSQL server's `bin` directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Runs a PostgreSQL program as the `postgres` user; panics with its output on
/// failure.
fn as_postgres(program: &Path, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}
