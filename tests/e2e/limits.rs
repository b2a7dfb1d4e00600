//! Resource limits: request head size (431; pingora's own hard limits answer 400), the
//! approval body bound, per-agent rate limits on an HTTP route, open connections (503).
//! Every refusal is counted.
//!
//! Covered elsewhere: the policy body bound (`policy.rs`), the MCP body bound (`mcp.rs`),
//! pending approvals per user (`approval.rs`), per-tool rate limits (`mcp.rs`), the JWKS
//! size bound (`faults.rs`), limit validation (`cli.rs`).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use crate::support::{
    client, config, metric, parts, shared_op, standard, standard_routes, Gw, Op, Upstream,
};

/// Send `head` (a raw request head) and return what came back, if anything.
fn raw(port: u16, head: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(head);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn request_heads_over_the_limit_are_refused_never_forwarded() {
    let op = shared_op();
    let up = Upstream::start();
    let yaml = config(&op.url(), &op.issuer, &up.url(), standard_routes()).replace(
        "issuers:\n",
        "limits: { max_header_bytes: 8192 }\nissuers:\n",
    );
    let gw = Gw::start(&yaml);
    let token = op.alice();
    let with = |headers: &[(String, String)]| {
        let mut r = client().get(gw.url("/payments/1")).bearer_auth(&token);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send().unwrap()
    };
    let pad = |n: usize| vec![("x-pad".to_string(), "p".repeat(n))];
    assert_eq!(with(&pad(4000)).status(), 200, "under the limit");
    // One large header, then many small ones adding up.
    let many: Vec<(String, String)> = (0..100)
        .map(|i| (format!("x-h{i}"), "v".repeat(90)))
        .collect();
    for (what, headers) in [("one large header", pad(9000)), ("100 headers", many)] {
        let r = with(&headers);
        assert_eq!(r.headers().get("www-authenticate"), None, "{what}");
        let (status, _, body) = parts(r);
        assert_eq!(status, 431, "{what}: {body}");
        assert_eq!(body["error"], "request_header_too_large", "{what}");
        assert!(
            body["error_description"].as_str().unwrap().contains("8192"),
            "{body}"
        );
    }
    // pingora's own parser: more than 256 headers → 400, never forwarded.
    let mut head = String::from("GET /payments/1 HTTP/1.1\r\nhost: x\r\n");
    for i in 0..300 {
        head.push_str(&format!("x-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let out = raw(gw.port, head.as_bytes());
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A head over pingora's 1 MiB parser limit: 400, or the connection is dropped (the
    // rest of the head still unread) — never a 2xx, never forwarded.
    let mut head = b"GET /payments/1 HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'p', 1100 << 10));
    head.extend_from_slice(b"\r\n\r\n");
    let out = raw(gw.port, &head);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(up.requests().len(), 1, "only the request under the limit");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_decisions_total{decision="deny",reason="header_too_large",route="none"}"#
        ),
        2,
        "{metrics}"
    );
}

#[test]
fn the_default_head_limit_is_64_kib() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let get = |n: usize| {
        client()
            .get(gw.url("/payments/1"))
            .bearer_auth(&token)
            .header("x-pad", "p".repeat(n))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(60 << 10), 200);
    assert_eq!(get(70 << 10), 431);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn a_body_over_the_approval_bound_is_413_before_anyone_is_asked() {
    // The policy may read up to 64 KiB; the approval holds at most 64 bytes.
    let op = Op::start();
    let up = Upstream::start();
    let routes = format!(
        r#"  - name: invoices
    match: {{ path_prefix: /invoices, methods: [GET, POST] }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: invoices
    policy_body: true
    approval: {{ client: gw, backchannel_endpoint: "{}/backchannel", max_body_bytes: 64 }}
"#,
        op.url()
    );
    let yaml = config(&op.url(), &op.issuer, &up.url(), &routes).replace(
        "routes:\n",
        &format!(
            "clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\nroutes:\n",
            op.url()
        ),
    );
    let gw = Gw::start_env(
        &yaml,
        true,
        &[("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret")],
    );
    let body = json!({"amount": 5000, "currency": "EUR", "memo": "m".repeat(100)});
    let r = client()
        .post(gw.url("/invoices/finance/INV-7/pay"))
        .bearer_auth(op.alice())
        .json(&body)
        .send()
        .unwrap();
    let (status, _, body) = parts(r);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "request_too_large");
    assert!(op.pending(true).is_empty(), "the user was asked");
    assert!(up.requests().is_empty());
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_decisions_total{decision="deny",reason="body_too_large",route="invoices"}"#
        ),
        1,
        "{metrics}"
    );
}

#[test]
fn per_agent_rate_limit_on_an_http_route() {
    let op = shared_op();
    let up = Upstream::start();
    let routes = r#"  - name: limited
    match: { path_prefix: /limited }
    upstream: "{upstream}"
    auth: { issuer: corp }
    rate_limit: { agent: { per_second: 0.01, burst: 2 } }
"#;
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), routes));
    let agent1 = op.alice();
    let agent2 = op.mint(json!({"sub": "alice", "client_id": "agent-2", "scope": "invoices:read"}));
    assert_eq!(gw.get("/limited/a", Some(&agent1)).status(), 200);
    assert_eq!(gw.get("/limited/b", Some(&agent1)).status(), 200);
    let r = gw.get("/limited/c", Some(&agent1));
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    let (status, _, body) = parts(r);
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Another agent of the same user has its own bucket.
    assert_eq!(gw.get("/limited/d", Some(&agent2)).status(), 200);
    assert_eq!(up.requests().len(), 3);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_decisions_total{decision="deny",reason="rate_limited",route="limited"}"#
        ),
        1,
        "{metrics}"
    );
}

/// A kept-alive connection that has been answered once (it stays open, idle).
fn open_connection(port: u16) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /public/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

#[test]
fn connections_over_the_limit_get_503_and_idle_ones_count() {
    let op = shared_op();
    let up = Upstream::start();
    let yaml = config(&op.url(), &op.issuer, &up.url(), standard_routes()).replace(
        "graceful_shutdown_timeout_seconds: 1 }",
        "graceful_shutdown_timeout_seconds: 1, max_connections: 2 }",
    );
    assert!(yaml.contains("max_connections: 2"));
    let gw = Gw::start(&yaml);
    let first = open_connection(gw.port);
    let _second = open_connection(gw.port);
    // Both are idle now, but open: a third connection is refused before its request is read.
    let third = raw(gw.port, b"GET /public/2 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    assert!(third.contains("too_many_connections"), "{third}");
    let metrics = gw.metrics();
    assert_eq!(metric(&metrics, "portcullis_connections_refused_total "), 1);
    assert_eq!(metric(&metrics, "portcullis_connections_open "), 2);
    assert_eq!(
        up.requests().len(),
        2,
        "the refused request was not forwarded"
    );
    // Closing one frees its slot.
    drop(first);
    let start = std::time::Instant::now();
    while metric(&gw.metrics(), "portcullis_connections_open ") > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slot was not freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _fourth = open_connection(gw.port);
    assert_eq!(up.requests().len(), 3);
}
