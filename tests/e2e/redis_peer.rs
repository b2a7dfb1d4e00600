//! A real `redis-server` per test on a free loopback port, in a temporary directory, without
//! persistence; killed (and restartable on the same port) by the test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_for};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Whether `redis-server` can be run (scripts/test installs it).
fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A started Redis, or `None` after printing why the test is skipped.
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    if !available() {
        let why = format!("{test}: redis-server not found (scripts/test installs it with apt)");
        // scripts/test (and so CI) installs the engine: there a skip would hide a lost suite.
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_PEERS").is_none(),
            "PORTCULLIS_REQUIRE_PEERS is set but {why}"
        );
        eprintln!("SKIPPED {why}");
        return None;
    }
    Some(RedisServer::start())
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    fn spawn(&self) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(self.spawn());
        let port = self.port;
        wait_for("redis-server", Duration::from_secs(30), || {
            self.cli(&["PING"]).trim() == "PONG" && port > 0
        });
    }

    /// SIGKILL: the gateway sees connections reset and refused.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` output of one command ("" if it could not run).
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Every key and every string/hash value, for leakage checks.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for key in self.cli(&["--scan"]).lines() {
            out.push_str(key);
            out.push('\n');
            match self.cli(&["TYPE", key]).trim() {
                "string" => out.push_str(&self.cli(&["GET", key])),
                "hash" => out.push_str(&self.cli(&["HGETALL", key])),
                "zset" => out.push_str(&self.cli(&["ZRANGE", key, "0", "-1"])),
                _ => {}
            }
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
