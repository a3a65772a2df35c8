//! Private servers for tests: a PostgreSQL 15 cluster (initdb into a temp dir) and a
//! `nats-server -js`, each on a free loopback port, started from the binaries
//! installed on the machine and stopped by their own pid — never by name, never the
//! machine's shared instances.
//!
//! When a binary is missing the server is not started: [`Postgres::start`] returns
//! `None` after printing a loud SKIPPED line, unless `INVSYNC_REQUIRE_SERVICES=1`, in
//! which case it panics (CI must not pass by skipping).
//!
//! PostgreSQL refuses to run as root; as root, `initdb` and `postgres` run as the
//! `postgres` system user (`runuser`) on a directory it owns, with its socket in that
//! directory so it never collides with the machine's own server.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const NATS_BIN: &str = "/usr/sbin/nats-server";

fn required() -> bool {
    std::env::var("INVSYNC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Either skips loudly or, when services are required, fails the test.
fn missing(what: &str, why: &str) -> Option<std::convert::Infallible> {
    if required() {
        panic!("{what} is required (INVSYNC_REQUIRE_SERVICES=1) but {why}");
    }
    eprintln!("SKIPPED: {what} is not available here ({why}); set INVSYNC_REQUIRE_SERVICES=1 to fail instead");
    None
}

/// Whether an external checker a test runs (a validator, a linter) is installed:
/// `program probe_args…` must exit 0. Skips loudly, or fails under
/// `INVSYNC_REQUIRE_SERVICES=1`, like the servers.
pub fn tool(what: &str, program: &str, probe_args: &[&str]) -> Option<()> {
    let ok = Command::new(program)
        .args(probe_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(())
    } else {
        missing(
            what,
            &format!("`{program} {}` failed", probe_args.join(" ")),
        )?;
        None
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(bin: &str, as_postgres: bool) -> Command {
    let path = format!("{PG_BIN}/{bin}");
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

/// A private PostgreSQL server; stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    as_postgres: bool,
}

impl Postgres {
    /// Everything the server has logged so far (every start's log file), to look for
    /// what only PostgreSQL sees: `deadlock detected`, say.
    pub fn server_log(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// Starts a fresh cluster (fsync on, as in production) with a database `invsync`.
    pub fn start() -> Option<Self> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            missing("PostgreSQL 15", &format!("{PG_BIN}/initdb is missing"))?;
        }
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("invsync-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot chown the PostgreSQL temp dir to postgres");
        }
        let data = dir.path().join("data");
        let out = pg_command("initdb", as_postgres)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            dir,
            port: 0,
            child: None,
            as_postgres,
        };
        pg.launch(free_port());
        let ok = pg_command("psql", false)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-qc",
                "CREATE DATABASE invsync",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "CREATE DATABASE failed");
        Some(pg)
    }

    fn launch(&mut self, port: u16) {
        self.port = port;
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join(format!("postgres-{port}.log")))
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let child = pg_command("postgres", self.as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("postgres: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(format!("{PG_BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://…` of the `invsync` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/invsync", self.port)
    }

    /// Stops the server (fast shutdown, by its pid) to inject an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // As root the child is `runuser`, which does not pass signals on: signal
            // the postmaster itself, whose pid it wrote into its data directory.
            // SIGINT is PostgreSQL's "fast shutdown".
            let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| child.id().to_string());
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(self.port);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `nats-server -js`; stopped when dropped.
pub struct Nats {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Option<Self> {
        if !Path::new(NATS_BIN).exists() {
            missing("NATS server", &format!("{NATS_BIN} is missing"))?;
        }
        let dir = tempfile::Builder::new()
            .prefix("invsync-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut nats = Self {
            dir,
            port: free_port(),
            child: None,
        };
        nats.launch();
        Some(nats)
    }

    fn launch(&mut self) {
        let child = Command::new(NATS_BIN)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server by its pid (SIGKILL) to inject a crash. NATS 2.9 acknowledges
    /// a publish before it reaches disk, so a crash may lose the last messages.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server by its pid with SIGTERM, letting it flush its store: an
    /// outage (maintenance, a network cut), not a crash.
    pub fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`stop`](Self::stop) or [`shut_down`](Self::shut_down),
    /// on the same port and store directory.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_postgres_starts_accepts_queries_and_restarts() {
        let Some(mut pg) = Postgres::start() else {
            return;
        };
        let query = |pg: &Postgres| {
            pg_command("psql", false)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "invsync",
                    "-tAc",
                    "SELECT 40 + 2",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(query(&pg), "42");
        pg.restart();
        assert_eq!(query(&pg), "42");
        pg.stop();
        assert_eq!(query(&pg), "", "stopped means unreachable");
    }

    #[test]
    fn a_private_nats_starts_and_stops() {
        let Some(mut nats) = Nats::start() else {
            return;
        };
        assert!(std::net::TcpStream::connect(("127.0.0.1", nats.port)).is_ok());
        nats.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", nats.port)).is_err());
    }
}
