//! Test harness: real peers on free loopback ports. The OpenID Provider is npm
//! `oidc-provider` (tests/peers/op.mjs), upstreams are small real HTTP/1.1 servers that record
//! what they receive, and the gateway is the built `portcullis` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port, never handed out twice by this process. Ports come from below the
/// kernel's ephemeral range (32768+), so outgoing connections cannot take one between this
/// check and the child process binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 600) as u16 * 20;
    let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let mut p = NEXT.fetch_add(1, Ordering::SeqCst);
        if p >= 32_000 {
            p = 20_000 + p % 12_000;
            NEXT.store(p + 1, Ordering::SeqCst);
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not ready after {timeout:?}");
}

/// Wait until `ready`; false if `child` exited first (e.g. its port was taken meanwhile).
pub fn wait_child(
    what: &str,
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // E.g. one of its ports was taken by another process's connection between `free_port`
    // and its bind, so a listener never came up: start again on other ports.
    eprintln!("{what} not ready after {timeout:?}; starting it again");
    let _ = child.kill();
    let _ = child.wait();
    false
}

// === OpenID Provider ===

pub struct Op {
    child: Option<Child>,
    pub port: u16,
    pub issuer: String,
}

impl Op {
    /// Start the OP on `port`, with `iss` = `issuer` (default: its own URL).
    pub fn start_on(port: u16, issuer: Option<&str>) -> Op {
        Op::start_with(port, issuer, &[])
    }

    /// A fresh OP with extra environment (`ACCESS_TOKEN_TTL`, `AUTO_APPROVE_MS`, ...).
    pub fn start_env(env: &[(&str, &str)]) -> Op {
        Op::start_with(free_port(), None, env)
    }

    fn start_with(port: u16, issuer: Option<&str>, env: &[(&str, &str)]) -> Op {
        for attempt in 0..3 {
            // Retry on a fresh port only when the port was ours to choose.
            let port = if attempt == 0 { port } else { free_port() };
            if let Some(op) = Op::try_start(port, issuer, env) {
                return op;
            }
        }
        panic!("the OpenID Provider did not start");
    }

    fn try_start(port: u16, issuer: Option<&str>, env: &[(&str, &str)]) -> Option<Op> {
        let peers = repo().join("tests/peers");
        assert!(
            peers.join("node_modules/oidc-provider").is_dir(),
            "tests/peers/node_modules is missing: run scripts/test (it runs `npm ci` there)"
        );
        let issuer = issuer.map_or_else(|| format!("http://127.0.0.1:{port}"), str::to_string);
        let child = Command::new("node")
            .arg("op.mjs")
            .arg(port.to_string())
            .current_dir(&peers)
            .env("ISSUER", &issuer)
            .env("PARENT_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let mut op = Op {
            child: Some(child),
            port,
            issuer,
        };
        let url = format!("{}/.well-known/openid-configuration", op.url());
        let child = op.child.as_mut().unwrap();
        let up = wait_child("OpenID Provider", child, Duration::from_secs(60), || {
            client()
                .get(&url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        up.then_some(op)
    }

    pub fn start() -> Op {
        Op::start_on(free_port(), None)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A user access token minted by the OP (real keys, real JWT format). `body`: sub,
    /// client_id, scope, resource, set {claims}, unset [claims], ttl.
    pub fn mint(&self, body: Value) -> String {
        let r: Value = client()
            .post(format!("{}/test/token", self.url()))
            .json(&body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("mint failed: {r}"))
            .to_string()
    }

    /// alice (roles finance, admin; dept finance) via agent-1 with read and pay scopes.
    /// A JWS over `payload` with `header` (alg RS256 and the current kid unless given),
    /// signed by the OP's own RS256 key (`/test/sign`).
    pub fn sign(&self, header: Value, payload: &Value) -> String {
        let r: Value = client()
            .post(format!("{}/test/sign", self.url()))
            .json(&json!({"header": header, "payload": payload}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }

    pub fn alice(&self) -> String {
        self.mint(json!({"sub": "alice", "client_id": "agent-1",
                         "scope": "invoices:read invoices:pay", "set": {"dept": "finance"}}))
    }

    /// CIBA requests awaiting the user (`all`: also approved and denied ones).
    pub fn pending(&self, all: bool) -> Vec<Value> {
        let url = format!("{}/pending{}", self.url(), if all { "?all" } else { "" });
        let v: Value = client().get(url).send().unwrap().json().unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    /// Wait until a CIBA request is pending and return it.
    pub fn wait_pending(&self) -> Value {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(p) = self.pending(false).pop() {
                return p;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("no CIBA request arrived at the OP");
    }

    /// The user's device answers: `approve` or `deny` the request `id`.
    pub fn answer(&self, verb: &str, id: &str) {
        let r = client()
            .post(format!("{}/{verb}/{id}", self.url()))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{verb} {id}: {}", r.status());
    }

    /// Requests served by the token endpoint so far.
    pub fn token_requests(&self) -> u64 {
        let s: Value = client()
            .get(format!("{}/test/stats", self.url()))
            .send()
            .unwrap()
            .json()
            .unwrap();
        s["token"].as_u64().unwrap()
    }

    pub fn jwks_fetches(&self) -> u64 {
        let s: Value = client()
            .get(format!("{}/test/stats", self.url()))
            .send()
            .unwrap()
            .json()
            .unwrap();
        s["jwks"].as_u64().unwrap()
    }

    /// Rotate the OP's signing keys (the previous ones stay published).
    pub fn rotate(&self) {
        let r = client()
            .post(format!("{}/test/rotate", self.url()))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One OP shared by the tests of this binary that do not stop or rotate it. It exits with
/// the test process (PARENT_PID watch in op.mjs).
pub fn shared_op() -> &'static Op {
    static OP: OnceLock<Op> = OnceLock::new();
    OP.get_or_init(Op::start)
}

// === Upstream ===

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 server (keep-alive, content-length and chunked bodies) answering 200 with
/// a small JSON document, and recording every request.
pub struct Upstream {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

pub fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut rec = Recorded {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if rec
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            rec.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = rec
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        rec.body = vec![0; n];
        reader.read_exact(&mut rec.body).ok()?;
    }
    Some(rec)
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    while let Some(req) = read_request(&mut reader) {
                        let body = json!({"upstream": "test", "path": req.path}).to_string();
                        record.lock().unwrap().push(req);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive, x-upstream-hop\r\nx-upstream-hop: secret\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(resp.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Upstream { port, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

// === Gateway ===

pub struct Gw {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
}

/// A config with issuer `corp` (the OP, roles mapped) and the given `routes:` block.
/// `{upstream}` in `routes` is replaced by the upstream URL.
pub fn config(op_url: &str, issuer: &str, upstream: &str, routes: &str) -> String {
    format!(
        r#"version: 1
listen: "127.0.0.1:{{port}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
policies: {{ dir: "{policies}" }}
issuers:
  - name: corp
    issuer: "{issuer}"
    jwks_uri: "{op_url}/jwks"
    audiences: ["https://api.portcullis.test", "https://es256.api.portcullis.test"]
    algorithms: [RS256, ES256]
    roles:
      claim: roles
      grants:
        finance: ["invoices:read", "invoices:pay"]
        viewer: ["invoices:read"]
routes:
{routes}"#,
        policies = repo().join("policies").display(),
        routes = routes.replace("{upstream}", upstream),
    )
}

/// The usual invoices route (policy `invoices`, body for the policy) plus a route without
/// policy and a public one.
pub fn standard_routes() -> &'static str {
    r#"  - name: invoices
    match: { path_prefix: /invoices, methods: [GET, POST] }
    upstream: "{upstream}"
    auth: { issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }
    policy: invoices
    policy_body: true
  - name: payments
    match: { path_prefix: /payments }
    upstream: "{upstream}"
    auth: { issuer: corp, require_scopes: ["invoices:pay"] }
  - name: echo-token
    match: { path_prefix: /echo-token }
    upstream: "{upstream}"
    auth: { issuer: corp }
    forward_token: true
  - name: public
    match: { path_prefix: /public }
    upstream: "{upstream}"
    public: true
"#
}

impl Gw {
    /// Start the gateway with `yaml` (`{port}`, `{admin}` filled in) and wait until ready.
    pub fn start(yaml: &str) -> Gw {
        Gw::start_opts(yaml, true)
    }

    pub fn start_opts(yaml: &str, wait_ready: bool) -> Gw {
        Gw::start_env(yaml, wait_ready, &[])
    }

    /// Start with extra environment variables (secrets the config names).
    pub fn start_env(yaml: &str, wait_ready: bool, env: &[(&str, &str)]) -> Gw {
        for _ in 0..3 {
            if let Some(gw) = Gw::try_start(yaml, wait_ready, env) {
                return gw;
            }
        }
        panic!("the gateway did not start");
    }

    fn try_start(yaml: &str, wait_ready: bool, env: &[(&str, &str)]) -> Option<Gw> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let text = yaml
            .replace("{port}", &port.to_string())
            .replace("{admin}", &admin_port.to_string());
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&path)
            .env("PORTCULLIS_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut gw = Gw {
            child,
            port,
            admin_port,
            dir,
        };
        let probe = if wait_ready { "readyz" } else { "healthz" };
        let url = format!("{}/{probe}", gw.admin_url());
        let up = wait_child("gateway", &mut gw.child, Duration::from_secs(30), || {
            client()
                .get(&url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        up.then_some(gw)
    }

    /// Process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The gateway's log so far. The gateway writes its log from a writer thread (the request's
    /// thread only queues the line), so a line can land a moment after the response: wait a
    /// little first.
    pub fn log(&self) -> String {
        thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::blocking::Response {
        let mut r = client().get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one exposition line (`name{labels}`) of `/metrics`; 0 when absent.
pub fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Status, `WWW-Authenticate` and JSON body of a response.
pub fn parts(r: reqwest::blocking::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json().unwrap_or(Value::Null);
    (status, challenge, body)
}

/// Assert that `r` is a refusal with `status` and JSON `error` code `code`; its
/// `WWW-Authenticate` and body.
#[track_caller]
pub fn refused(r: reqwest::blocking::Response, status: u16, code: &str) -> (Option<String>, Value) {
    let (got, challenge, body) = parts(r);
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    (challenge, body)
}

/// A gateway with the standard routes in front of a fresh upstream, using the shared OP.
pub fn standard() -> (&'static Op, Upstream, Gw) {
    let op = shared_op();
    let up = Upstream::start();
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    (op, up, gw)
}
