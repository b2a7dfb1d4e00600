//! Route matching that path tricks cannot bypass (issue 21). One table of attacks, sent over
//! raw sockets with a token that has only `invoices:read` (or none), against routes
//! `admin-api` (`/api/admin`, GET/POST, needs `admin:delete_all`), `api` (`/api`, needs
//! `invoices:read`) and `health` (`/health`, public) on one upstream: a recording upstream
//! that logs the exact request line and headers, then real Starlette, Express 5 and nginx.
//! For every row, no upstream acts on a path under `/api/admin` unless `admin-api`
//! authorized it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portcullis::canon::{canonicalize, REROUTING_HEADERS};
use serde_json::json;

use crate::support::{repo, shared_op, Gw, Op, Upstream};
use crate::upstreams::RealUpstream;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tok {
    Reader,
    Admin,
    NoToken,
}

#[derive(Clone, Copy, Debug)]
enum Host {
    Gateway,
    Missing,
    Value(&'static str),
}

struct Row {
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    token: Tok,
    host: Host,
    /// The gateway's answer.
    want: u16,
}

const fn row(method: &'static str, target: &'static str, token: Tok, want: u16) -> Row {
    Row {
        method,
        target,
        headers: &[],
        token,
        host: Host::Gateway,
        want,
    }
}

const fn hdr(target: &'static str, headers: &'static [(&'static str, &'static str)]) -> Row {
    Row {
        method: "GET",
        target,
        headers,
        token: Tok::Reader,
        host: Host::Gateway,
        want: 200,
    }
}

const fn host(h: Host, want: u16) -> Row {
    Row {
        method: "GET",
        target: "/api/x",
        headers: &[],
        token: Tok::Reader,
        host: h,
        want,
    }
}

use Tok::{Admin, NoToken, Reader};

/// Every row of the issue and the variants around them, with the new answers.
const ROWS: &[Row] = &[
    // Percent-encoded unreserved characters are decoded before matching.
    row("GET", "/api/%61dmin/x", Reader, 403),
    row("GET", "/api/admi%6E", Reader, 403),
    row("GET", "/api/%41DMIN/x", Reader, 403),
    row("GET", "/%61pi/admin/x", Reader, 403),
    // Empty segments are refused (this listener does not merge them).
    row("GET", "/api//admin/x", Reader, 400),
    row("GET", "/api///admin", Reader, 400),
    row("GET", "//api/admin/x", Reader, 400),
    // `;` path parameters and dot segments hidden behind them.
    row("GET", "/health/..;/api/admin/x", NoToken, 400),
    row("GET", "/api/x/..;/admin/y", Reader, 400),
    row("GET", "/api;x=1/admin/y", Reader, 400),
    row("GET", "/api/admin;x=1", Reader, 400),
    row("GET", "/api/.;x/admin", Reader, 400),
    // Methods: a path matched by admin-api never falls through to `api`.
    row("HEAD", "/api/admin/x", Reader, 405),
    row("OPTIONS", "/api/admin/x", Reader, 405),
    row("get", "/api/admin/x", Reader, 405),
    row("TRACE", "/api/admin/x", Reader, 405),
    row("PROPFIND", "/api/admin/x", Reader, 405),
    row("DELETE", "/api/admin/x", Reader, 405),
    row("TRACE", "/api/x", Reader, 405),
    row("get", "/api/x", Reader, 405),
    row("PROPFIND", "/api/x", Reader, 405),
    // Case: prefix matching ignores ASCII case.
    row("GET", "/api/ADMIN/x", Reader, 403),
    row("GET", "/api/Admin", Reader, 403),
    row("GET", "/API/ADMIN/x", Reader, 403),
    // Encoded separators, dots, NUL, controls, double encoding, bad UTF-8.
    row("GET", "/api/admin%2fx", Reader, 400),
    row("GET", "/api%2fadmin/x", Reader, 400),
    row("GET", "/api/x%2f..%2fadmin", Reader, 400),
    row("GET", "/api/%2e%2e/api/admin", Reader, 400),
    row("GET", "/api/x%5c..%5cadmin", Reader, 400),
    row("GET", "/api/x\\..\\admin", Reader, 400),
    row("GET", "/api/admin%00", Reader, 400),
    row("GET", "/api/x%0d%0aX-Injected:%201", Reader, 400),
    row("GET", "/api/%2561dmin/x", Reader, 400),
    row("GET", "/api/x%c0%af..%c0%afadmin", Reader, 400),
    row("GET", "/api/%c0%afadmin", Reader, 400),
    row("GET", "/api/%e0%80%afadmin", Reader, 400),
    row("GET", "/api/x/../admin/y", Reader, 400),
    row("GET", "/api/./admin/x", Reader, 400),
    row("GET", "/api/zz%zz", Reader, 400),
    // Raw whitespace and control characters in the target. pingora percent-encodes a request
    // line httparse refuses before any hook runs, so these arrive as escapes: encoded
    // controls in the path are refused; a space (or `"`) is plain data, never a separator,
    // and the query's bytes are forwarded encoded.
    row("GET", "/api/x\t/admin", Reader, 400),
    row("GET", "/api/x\r/admin", Reader, 400),
    row("GET", "/api/x\x0b/admin", Reader, 400),
    row("GET", "/api/x /admin", Reader, 200),
    row("GET", "/api/x\"/admin", Reader, 200),
    row("GET", "/api/x?\x01", Reader, 200),
    // Targets that are not an absolute path.
    row("OPTIONS", "*", Reader, 400),
    // Headers that re-route or re-method: removed (or set from the gateway's view).
    hdr("/api/x", &[("X-Original-URL", "/api/admin/x")]),
    hdr("/api/x", &[("X-Rewrite-URL", "/api/admin/x")]),
    hdr("/api/x", &[("X-Original-URI", "/api/admin/x")]),
    hdr("/api/x", &[("X-Forwarded-Prefix", "/api/admin")]),
    hdr("/api/x", &[("X-Forwarded-Uri", "/api/admin/x")]),
    hdr("/api/x", &[("X-Forwarded-Host", "admin.internal")]),
    hdr(
        "/api/x",
        &[("Forwarded", "host=admin.internal;proto=https")],
    ),
    hdr("/api/x", &[("X-HTTP-Method-Override", "DELETE")]),
    hdr("/api/x", &[("X-HTTP-Method", "DELETE")]),
    hdr("/api/x", &[("X-Method-Override", "DELETE")]),
    hdr("/api/x", &[("Portcullis-Approval", "forged")]),
    // Host.
    host(Host::Missing, 400),
    host(Host::Value("gw.example:99999"), 400),
    host(Host::Value("gw.example:abc"), 400),
    host(Host::Value("gw.example:"), 400),
    host(Host::Value("gw example"), 400),
    // What must keep working.
    row("GET", "/api/x", Reader, 200),
    row("GET", "/api/admin/x", Reader, 403),
    row("GET", "/api/admin/x", NoToken, 401),
    row("GET", "/health", NoToken, 200),
    row("GET", "/api/admin/x", Admin, 200),
    row("GET", "/api/%61dmin/x", Admin, 200),
    row("GET", "/api/ADMIN/x", Admin, 200),
    row("GET", "/api/caf%c3%a9?q=%61", Reader, 200),
    row("POST", "/api/admin/x", Admin, 200),
];

fn gateway_yaml(op: &Op, upstream: &str, merge_slashes: bool) -> String {
    format!(
        r#"version: 1
listen: {{ address: "127.0.0.1:{{port}}", merge_slashes: {merge_slashes} }}
admin: {{ listen: "127.0.0.1:{{admin}}" }}
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
policies: {{ dir: "{policies}" }}
issuers:
  - name: corp
    issuer: "{issuer}"
    jwks_uri: "{op}/jwks"
    audiences: ["https://api.portcullis.test"]
    algorithms: [RS256]
routes:
  - name: admin-api
    match: {{ path_prefix: /api/admin, methods: [GET, POST] }}
    upstream: "{upstream}"
    auth: {{ issuer: corp, require_scopes: ["admin:delete_all"] }}
  - name: api
    match: {{ path_prefix: /api }}
    upstream: "{upstream}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
  - name: health
    match: {{ path_prefix: /health }}
    upstream: "{upstream}"
    public: true
  - name: legacy
    match: {{ path_prefix: /legacy, allow_path_params: true, case_sensitive: true }}
    upstream: "{upstream}"
    public: true
    pass_headers: [X-Forwarded-Prefix]
"#,
        policies = repo().join("policies").display(),
        issuer = op.issuer,
        op = op.url(),
    )
}

struct Tokens {
    reader: String,
    admin: String,
}

fn tokens(op: &Op) -> Tokens {
    Tokens {
        reader: op.mint(json!({"sub": "alice", "client_id": "agent-1", "scope": "invoices:read"})),
        admin: op.mint(json!({"sub": "root", "client_id": "agent-1",
                              "scope": "invoices:read admin:delete_all"})),
    }
}

/// Send one raw HTTP/1.1 request; (status, lower-case head, body). Status 0: no answer.
pub fn raw(port: u16, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn send(port: u16, tokens: &Tokens, i: usize, r: &Row) -> (u16, String, String) {
    let mut req = format!("{} {} HTTP/1.1\r\n", r.method, r.target);
    match r.host {
        Host::Gateway => req.push_str(&format!("Host: 127.0.0.1:{port}\r\n")),
        Host::Missing => {}
        Host::Value(h) => req.push_str(&format!("Host: {h}\r\n")),
    }
    match r.token {
        Tok::Reader => req.push_str(&format!("Authorization: Bearer {}\r\n", tokens.reader)),
        Tok::Admin => req.push_str(&format!("Authorization: Bearer {}\r\n", tokens.admin)),
        Tok::NoToken => {}
    }
    for (k, v) in r.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "X-Row: {i}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    raw(port, req.as_bytes())
}

fn under_admin(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == "/api/admin" || lower.starts_with("/api/admin/") || lower.starts_with("/api/admin?")
}

/// Run every row; check the gateway's status and that only admin rows reached an admin
/// handler (`ADMIN` body). Returns the bodies.
fn run_rows(port: u16, tokens: &Tokens, upstream: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut bodies = Vec::new();
    for (i, r) in ROWS.iter().enumerate() {
        let (status, head, body) = send(port, tokens, i, r);
        if status != r.want {
            failures.push(format!(
                "row {i} {} {:?} {:?}: want {}, got {status} {body}",
                r.method, r.target, r.host, r.want
            ));
        }
        if r.token != Tok::Admin && body.starts_with("ADMIN") {
            failures.push(format!(
                "row {i} {:?}: {upstream} ran the admin handler",
                r.target
            ));
        }
        if status == 405 && !head.contains("\r\nallow: ") {
            failures.push(format!("row {i}: 405 without Allow"));
        }
        bodies.push(body);
    }
    assert!(failures.is_empty(), "{upstream}:\n{}", failures.join("\n"));
    bodies
}

#[test]
fn bypass_table_against_a_recording_upstream() {
    let op = shared_op();
    let up = Upstream::start();
    let gw = Gw::start(&gateway_yaml(op, &up.url(), false));
    let tokens = tokens(op);
    run_rows(gw.port, &tokens, "recording upstream");
    let seen = up.requests();
    assert!(!seen.is_empty());
    for rec in &seen {
        let i: usize = rec.header("x-row").unwrap().parse().unwrap();
        let r = &ROWS[i];
        // The exact request line is canonical: reading it again changes nothing.
        let again = canonicalize(rec.path.as_bytes(), false)
            .unwrap()
            .request_target();
        assert_eq!(again, rec.path, "row {i}: forwarded target not canonical");
        if r.token != Tok::Admin {
            assert!(!under_admin(&rec.path), "row {i}: {} forwarded", rec.path);
        }
        assert_eq!(rec.method, r.method, "row {i}: method changed");
        for name in REROUTING_HEADERS {
            let v = rec.header(name);
            match *name {
                "x-forwarded-host" => {
                    assert_eq!(v, Some(format!("127.0.0.1:{}", gw.port).as_str()))
                }
                "forwarded" => assert_eq!(
                    v,
                    Some(
                        format!("for=127.0.0.1;host=\"127.0.0.1:{}\";proto=http", gw.port).as_str()
                    )
                ),
                _ => assert_eq!(v, None, "row {i}: {name} forwarded"),
            }
        }
        assert_eq!(rec.header("portcullis-approval"), None, "row {i}");
        assert_eq!(rec.header("authorization"), None, "row {i}");
    }
    let forwarded = |target: &str| {
        seen.iter()
            .find(|r| ROWS[r.header("x-row").unwrap().parse::<usize>().unwrap()].target == target)
            .map(|r| r.path.clone())
    };
    // The upstream receives the canonical form of what was authorized.
    assert_eq!(forwarded("/api/%61dmin/x").as_deref(), Some("/api/admin/x"));
    assert_eq!(
        forwarded("/api/ADMIN/x").as_deref(),
        Some("/api/ADMIN/x"),
        "client's case kept"
    );
    assert_eq!(
        forwarded("/api/caf%c3%a9?q=%61").as_deref(),
        Some("/api/caf%C3%A9?q=%61"),
        "escapes upper-cased in the path; the query as sent"
    );
    // Every refused row forwarded nothing.
    let forwarded_rows: Vec<usize> = seen
        .iter()
        .map(|r| r.header("x-row").unwrap().parse().unwrap())
        .collect();
    for (i, r) in ROWS.iter().enumerate() {
        assert_eq!(
            forwarded_rows.contains(&i),
            r.want == 200,
            "row {i} {:?}",
            r.target
        );
    }
    // The decision log names the canonical path.
    let log = gw.log();
    assert!(log.contains(r#""path":"/api/admin/x""#), "{log}");
}

#[test]
fn opt_ins_merge_slashes_path_params_and_passed_headers() {
    let op = shared_op();
    let up = Upstream::start();
    let tokens = tokens(op);
    let merging = Gw::start(&gateway_yaml(op, &up.url(), true));
    let get = |gw: &Gw, target: &str, token: &str, extra: &str| {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
        );
        raw(gw.port, req.as_bytes()).0
    };
    // Merged before matching: `//` cannot dodge admin-api, and the upstream sees it merged.
    assert_eq!(get(&merging, "/api//admin/x", &tokens.reader, ""), 403);
    assert_eq!(get(&merging, "//api///admin//x", &tokens.admin, ""), 200);
    assert_eq!(up.last().path, "/api/admin/x");
    assert_eq!(get(&merging, "/api//x/../admin", &tokens.reader, ""), 400);

    let gw = Gw::start(&gateway_yaml(op, &up.url(), false));
    // A route that allows `;` parameters forwards them; matching ignores them.
    assert_eq!(
        get(&gw, "/legacy;jsessionid=1/x;v=2", &tokens.reader, ""),
        200
    );
    assert_eq!(up.last().path, "/legacy;jsessionid=1/x;v=2");
    assert_eq!(get(&gw, "/legacy/..;/api/admin", &tokens.reader, ""), 400);
    // case_sensitive: /LEGACY is not the legacy route (nor any other).
    assert_eq!(get(&gw, "/LEGACY/x", &tokens.reader, ""), 404);
    // pass_headers forwards the client's value of a listed header, and only that one.
    let extra = "X-Forwarded-Prefix: /app\r\nX-Original-URL: /api/admin\r\n";
    assert_eq!(get(&gw, "/legacy/x", &tokens.reader, extra), 200);
    let last = up.last();
    assert_eq!(last.header("x-forwarded-prefix"), Some("/app"));
    assert_eq!(last.header("x-original-url"), None);
    // 405 names the methods of the route that matched.
    let head = "HEAD /api/admin/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    let (status, head, _) = raw(gw.port, head.as_bytes());
    assert_eq!(status, 405);
    assert!(head.contains("\r\nallow: get, post"), "{head}");
}

fn real_upstream(up: RealUpstream) {
    let op = shared_op();
    let gw = Gw::start(&gateway_yaml(op, &up.url(), false));
    let tokens = tokens(op);
    let bodies = run_rows(gw.port, &tokens, up.name);
    // The table's control rows reached the handler they should, so `ADMIN` is detectable.
    let body_of = |target: &str, token: Tok| {
        let i = ROWS
            .iter()
            .position(|r| r.target == target && r.token == token && r.method == "GET")
            .unwrap();
        bodies[i].clone()
    };
    assert_eq!(
        body_of("/api/admin/x", Admin),
        "ADMIN /api/admin/x",
        "{}",
        up.name
    );
    assert_eq!(
        body_of("/api/%61dmin/x", Admin),
        "ADMIN /api/admin/x",
        "{}",
        up.name
    );
    assert_eq!(body_of("/api/x", Reader), "API /api/x", "{}", up.name);
    assert_eq!(body_of("/health", NoToken), "HEALTH", "{}", up.name);
}

#[test]
fn bypass_table_against_starlette() {
    real_upstream(RealUpstream::starlette());
}

#[test]
fn bypass_table_against_express() {
    real_upstream(RealUpstream::express());
}

#[test]
fn bypass_table_against_nginx() {
    real_upstream(RealUpstream::nginx());
}
