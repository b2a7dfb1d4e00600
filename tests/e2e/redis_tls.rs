//! The state backend over TLS (`rediss://`, `state.redis.tls.ca_file`) against a real
//! `redis-server` that speaks TLS only: the shared rate limit works through it, and a server
//! certificate the gateway cannot verify fails closed (503 on the route that needs Redis)
//! while routes that do not need Redis keep answering.

use crate::redis_peer::{redis_present, RedisServer};
use crate::support::{config, metric, shared_op, Gw, Upstream};

const ROUTES: &str = r#"  - name: limited
    match: { path_prefix: /limited }
    upstream: "{upstream}"
    auth: { issuer: corp }
    rate_limit: { agent: { per_second: 0.01, burst: 3 } }
  - name: open
    match: { path_prefix: /open }
    upstream: "{upstream}"
    auth: { issuer: corp }
"#;

fn gateway(redis: &RedisServer, up: &Upstream, tls: &str) -> Gw {
    let op = shared_op();
    let yaml = config(&op.url(), &op.issuer, &up.url(), ROUTES).replace(
        "routes:\n",
        &format!(
            "state:\n  backend: redis\n  redis: {{ url: \"{}\", key_prefix: \"pc-tls:\", timeout_ms: 1000{tls} }}\nroutes:\n",
            redis.url()
        ),
    );
    Gw::start(&yaml)
}

#[test]
fn the_state_backend_over_tls_verifies_the_server_and_fails_closed_when_it_cannot() {
    if !redis_present("redis_tls") {
        return;
    }
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    // TLS only: a plaintext client gets no answer from that port.
    let plain = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));
    let up = Upstream::start();
    let token = shared_op().alice();

    let ca = format!(", tls: {{ ca_file: \"{}\" }}", redis.ca().display());
    let gw = gateway(&redis, &up, &ca);
    let statuses: Vec<u16> = (0..5)
        .map(|_| gw.get("/limited/x", Some(&token)).status().as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let keys = redis.cli(&["--scan", "--pattern", "pc-tls:*"]);
    assert!(!keys.trim().is_empty(), "the bucket lives in Redis: {keys}");
    let m = gw.metrics();
    assert!(m.contains("portcullis_state_backend_up 1"), "{m}");
    assert!(metric(&m, r#"portcullis_state_operations_total{op="rate_limit"}"#) >= 3);

    // The same server without its CA: the system roots do not trust it, so no connection.
    let untrusted = gateway(&redis, &up, "");
    let r = untrusted.get("/limited/x", Some(&token));
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["error"],
        "state_unavailable"
    );
    assert_eq!(untrusted.get("/open/x", Some(&token)).status(), 200);
    let m = untrusted.metrics();
    assert!(m.contains("portcullis_state_backend_up 0"), "{m}");
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.path == "/limited/x")
            .count(),
        3,
        "only the three allowed calls were forwarded"
    );
}
