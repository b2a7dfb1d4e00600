//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, `postgres`
//! on a free loopback port with its unix socket in that directory, stopped and deleted on
//! drop. As root the server runs as the `postgres` OS user (it refuses root). Used by the
//! store suite and, through `#[path]`, by the end-to-end tests.

#![allow(dead_code)] // each user (unit tests, e2e tests) needs part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// Say that a test is skipped because a peer engine is missing (`why`) — or fail it when
/// `PORTCULLIS_REQUIRE_PEERS` is set: scripts/test (and so CI) installs the engines, so there a
/// skip would hide a lost suite. Shared by the PostgreSQL, Redis and approval-backend suites.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("PORTCULLIS_REQUIRE_PEERS").is_none(),
        "PORTCULLIS_REQUIRE_PEERS is set but {why}"
    );
    eprintln!("SKIPPED {why}");
}

/// The database role the tests connect as (a superuser of the throwaway cluster).
pub const USER: &str = "portcullis";

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The role's password (in the URL; must never show up in logs).
    pub password: String,
}

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`, if PostgreSQL is installed.
fn find_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PORTCULLIS_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    dirs.extend(versions.into_iter().rev());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().find(|d| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| d.join(b).is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// A running cluster, or `None` (after saying so on stderr) if PostgreSQL is not installed.
    pub fn start(test: &str) -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            let why = format!(
                "{test}: PostgreSQL not found (install the `postgresql` package, or \
                 set PORTCULLIS_PG_BIN to the directory holding initdb and pg_ctl)"
            );
            skip(&why);
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pcpg")
            .tempdir()
            .expect("temp dir");
        let as_postgres = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let password = format!("pg-secret-{}-{nanos}", std::process::id());
        std::fs::write(dir.path().join("pw"), &password).expect("password file");
        if as_postgres {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path())
                    .output(),
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
            password,
        };
        let data = cluster.data();
        let pw = cluster.dir.path().join("pw");
        check(
            "initdb",
            cluster
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "-E", "UTF8", "--no-sync", "--auth-local=trust"])
                .args(["--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pw.display()))
                .output(),
        );
        cluster.resume();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The directory holding the unix socket and the server log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (every statement is logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A TCP connection URL for database `db`, with the password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Runs `sql` in database `db` over the unix socket; the output, unaligned, tuples only.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = check(
            "psql",
            self.command("psql")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", USER, "-d", db])
                .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new, empty database.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&self) {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "120", "stop"])
                .output(),
        );
    }

    /// Starts the server (again), on the same port.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c log_statement=all",
            self.port,
            self.dir.path().display()
        );
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-w", "-t", "120", "-o", &options, "start"])
                .output(),
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
