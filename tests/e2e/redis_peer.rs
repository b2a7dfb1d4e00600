//! A real `redis-server` per test on a free loopback port, in a temporary directory, without
//! persistence; killed (and restartable on the same port) by the test. `start_tls` serves TLS
//! only, with a certificate for 127.0.0.1 from a throw-away CA made by the `openssl` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_for};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS only: the CA certificate that signed the server's.
    tls_ca: Option<PathBuf>,
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
    redis_present(test).then(RedisServer::start)
}

/// Whether Redis can be run; if not, says the test is skipped (or fails under scripts/test).
pub fn redis_present(test: &str) -> bool {
    if !available() {
        let why = format!("{test}: redis-server not found (scripts/test installs it with apt)");
        crate::testdb::skip(&why);
        return false;
    }
    true
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls_ca: None,
        };
        r.restart();
        r
    }

    /// A Redis that speaks TLS only (no plaintext port); `ca()` is its CA certificate.
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            tls_ca: Some(dir.path().join("ca.crt")),
            dir,
        };
        r.restart();
        r
    }

    /// The CA certificate of a TLS Redis.
    pub fn ca(&self) -> &Path {
        self.tls_ca.as_deref().expect("a TLS Redis")
    }

    fn spawn(&self) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls_ca {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(ca) => {
                let file = |name: &str| self.dir.path().join(name);
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(file("server.crt"))
                    .arg("--tls-key-file")
                    .arg(file("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"])
            }
        };
        cmd.args(["--save", "", "--appendonly", "no", "--dir"])
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
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` output of one command ("" if it could not run).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        cmd.args(args)
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

/// A CA and a server certificate for IP 127.0.0.1 signed by it (P-256 keys), in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (scripts/test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &key[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=portcullis test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &key[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
