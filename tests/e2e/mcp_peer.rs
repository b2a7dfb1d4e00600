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
    /// One JSON line per tool run (`tool`, `arguments`).
    pub tool_log: PathBuf,
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
        let tool_log = dir.path().join("mcp-tools.log");
        let port = free_port();
        let child = Command::new(python)
            .arg(repo().join("tests/peers/mcp_server.py"))
            .env("MCP_PORT", port.to_string())
            .env("MCP_HEADER_LOG", &log)
            .env("MCP_TOOL_LOG", &tool_log)
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
            tool_log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests the server received.
    pub fn requests(&self) -> Vec<Value> {
        json_lines(&self.log)
    }

    /// Tools that ran, in order (`{"tool", "arguments"}`).
    pub fn tool_runs(&self) -> Vec<Value> {
        json_lines(&self.tool_log)
    }

    /// How many times `tool` ran.
    pub fn runs_of(&self, tool: &str) -> usize {
        self.tool_runs()
            .iter()
            .filter(|r| r["tool"] == tool)
            .count()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Run `tests/peers/mcp_client_ts1.mjs` (TypeScript SDK 1.x, protocol 2025-11-25):
/// (exit code, stdout JSON, stderr).
pub fn ts1_client(url: &str, token: &str, args: &[&str]) -> (i32, Value, String) {
    node_client("mcp_client_ts1.mjs", url, token, args)
}

/// Run a Node.js client peer of `tests/peers` that prints one JSON object.
pub fn node_client(script: &str, url: &str, token: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new("node")
        .arg(script)
        .args(["--url", url, "--token", token])
        .args(args)
        .current_dir(repo().join("tests/peers"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|_| panic!("{script} output: {stdout}{stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
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
