//! The MCP peers: the official MCP SDK (PyPI, in `.venv`) as server and as client.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{free_port, repo, wait_for};

pub struct McpServer {
    child: Child,
    pub port: u16,
    /// One JSON line per HTTP request the server received (method, path, headers).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl McpServer {
    /// `tests/peers/mcp_server.py` (tools read_invoice, pay_invoice, delete_all); `json`:
    /// JSON responses instead of SSE.
    pub fn start(json: bool) -> McpServer {
        let python = repo().join(".venv/bin/python");
        assert!(
            python.exists(),
            ".venv is missing: run scripts/test (it installs the MCP SDK)"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mcp-headers.log");
        let port = free_port();
        let child = Command::new(python)
            .arg(repo().join("tests/peers/mcp_server.py"))
            .env("MCP_PORT", port.to_string())
            .env("MCP_HEADER_LOG", &log)
            .env("MCP_JSON_RESPONSE", if json { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("MCP server", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        McpServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests the server received.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `tests/peers/mcp_client.py` (official SDK client): (exit code, stdout, stderr).
pub fn mcp_client(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/peers/mcp_client.py"))
        .args(["--url", url, "--token", token])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
