//! Real upstream servers from the registries for the path-bypass suite (tests/peers/
//! upstreams.md): Starlette/uvicorn (PyPI), Express 5 (npm) and nginx (Debian). Each answers
//! `ADMIN <path>` from its `/api/admin` handler, `API <path>` from other `/api` paths and
//! `HEALTH` from `/health`, each reading the path its own way.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, repo, wait_child};

pub struct RealUpstream {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl RealUpstream {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(
        name: &'static str,
        spawn: impl Fn(u16) -> (Child, Option<tempfile::TempDir>),
    ) -> Self {
        for _ in 0..3 {
            let port = free_port();
            let (mut child, dir) = spawn(port);
            let up = wait_child(name, &mut child, Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up {
                return RealUpstream {
                    name,
                    port,
                    child,
                    _dir: dir,
                };
            }
        }
        panic!("{name} did not start");
    }

    /// Starlette routes on the percent-decoded path.
    pub fn starlette() -> Self {
        let python = repo().join(".venv/bin/python");
        assert!(python.exists(), ".venv is missing: run scripts/test");
        Self::start("starlette", |port| {
            let child = Command::new(&python)
                .arg("upstream_starlette.py")
                .args(["--port", &port.to_string()])
                .current_dir(peers())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the Starlette upstream");
            (child, None)
        })
    }

    /// Express 5 routes case-insensitively.
    pub fn express() -> Self {
        assert!(
            peers().join("node_modules/express").is_dir(),
            "tests/peers/node_modules is missing: run scripts/test"
        );
        Self::start("express", |port| {
            let child = Command::new("node")
                .arg("upstream_express.mjs")
                .args(["--port", &port.to_string()])
                .current_dir(peers())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the Express upstream");
            (child, None)
        })
    }

    /// nginx decodes, merges slashes and resolves dot segments before matching.
    pub fn nginx() -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| PathBuf::from(p).exists())
            .expect("nginx is missing: run scripts/test (apt nginx-light)");
        let template = std::fs::read_to_string(peers().join("upstream_nginx.conf.template"))
            .expect("read the nginx template");
        Self::start("nginx", |port| {
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("nginx.conf");
            let text = template
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string());
            std::fs::write(&conf, text).unwrap();
            let child = Command::new(nginx)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            (child, Some(dir))
        })
    }
}

impl Drop for RealUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers() -> PathBuf {
    repo().join("tests/peers")
}
