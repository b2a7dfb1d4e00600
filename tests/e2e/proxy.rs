//! Proxy behaviour: routing, HTTP/2, upstream failures, admin endpoints.

use std::io::{Read, Write};

use crate::support::{
    client, config, free_port, parts, shared_op, standard, standard_routes, Gw, Upstream,
};

#[test]
fn unmatched_paths_methods_and_non_canonical_paths_are_refused() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let (status, _, body) = parts(gw.get("/nowhere", Some(&token)));
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let r = client()
        .delete(gw.url("/invoices/finance/1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    // HTTP clients normalise dot segments, so these go over a raw socket.
    for path in [
        "/invoices/finance/%2e%2e/sales/1",
        "/invoices/finance/../sales/1",
        "/invoices/a%2fb",
    ] {
        let head = raw_request(gw.port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
    assert!(up.requests().is_empty());
}

#[test]
fn public_routes_need_no_token() {
    let (_op, up, gw) = standard();
    assert_eq!(gw.get("/public/status", None).status(), 200);
    assert_eq!(up.last().path, "/public/status");
}

#[test]
fn http2_prior_knowledge_downstream() {
    let (op, up, gw) = standard();
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url("/invoices/finance/INV-2"))
        .bearer_auth(op.alice())
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.path, "/invoices/finance/INV-2");
    assert_eq!(seen.header("authorization"), None);
    let denied = h2.get(gw.url("/invoices/finance/INV-2")).send().unwrap();
    assert_eq!(denied.status(), 401);
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let (op, up, gw) = standard();
    let c = client();
    let token = op.alice();
    for i in 0..50 {
        let r = c
            .get(gw.url(&format!("/invoices/finance/{i}")))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.requests().len(), 50);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_token_cache_total{result="hit"} 49"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_responses_total{class="2xx",route="invoices"} 50"#),
        "{metrics}"
    );
}

#[test]
fn upstream_down_is_502_json() {
    let op = shared_op();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gw::start(&config(&op.url(), &op.issuer, &dead, standard_routes()));
    let (status, _, body) = parts(gw.get("/invoices/finance/1", Some(&op.alice())));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "bad_gateway");
    assert!(gw
        .metrics()
        .contains(r#"portcullis_upstream_errors_total{route="invoices"} 1"#));
}

#[test]
fn admin_endpoints_and_decision_log() {
    let (op, _up, gw) = standard();
    let token = op.alice();
    assert_eq!(gw.get("/invoices/finance/1", Some(&token)).status(), 200);
    let health = client()
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["issuers"]["corp"]["loaded"], true);
    let metrics = gw.metrics();
    for name in [
        "portcullis_decisions_total",
        "portcullis_authz_duration_seconds_bucket",
        "portcullis_jwks_refresh_total",
        "portcullis_jwks_keys",
        "portcullis_token_cache_total",
        "portcullis_token_cache_entries",
        "portcullis_policy_errors_total",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    // One JSON decision line per request, without the token.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("\"message\":\"request\""))
        .expect("decision log line");
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["route"], "invoices");
    assert_eq!(entry["sub"], "alice");
    assert_eq!(entry["agent"], "agent-1");
    assert_eq!(entry["decision"], "allow");
    assert!(entry["authz_us"].is_u64());
    assert!(!log.contains(&token), "the token appears in the log");
    let upstream_only = Upstream::start();
    drop(upstream_only);
}

/// Send `request` as is and return the response text.
fn raw_request(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
