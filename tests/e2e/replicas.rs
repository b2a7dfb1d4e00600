//! Scale-out: two or three gateway replicas sharing a real `redis-server` (`state.backend:
//! redis`) — async approvals redeemed on any replica and polled by exactly one, taken over
//! when the polling replica is killed, single-use across replicas, shared rate limits, the
//! shared exchanged-token cache, and failing closed while Redis is down. Skipped (with a
//! message) when `redis-server` is not installed.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::approval::{pay, raw_get, SECRET};
use crate::redis_peer::{redis_or_skip, RedisServer};
use crate::support::{client, config, metric, parts, Gw, Op, Upstream};

const CACHE_KEY: (&str, &str) = (
    "PORTCULLIS_TEST_STATE_KEY",
    "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
);

/// Async approvals on `invoices`, a rate-limited route, a token-exchange route, all sharing
/// `redis`.
fn yaml(op: &Op, up: &Upstream, redis: &RedisServer, limit: &str) -> String {
    let routes = format!(
        r#"  - name: invoices
    match: {{ path_prefix: /invoices, methods: [GET, POST] }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: invoices
    policy_body: true
    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", scope: "invoices:pay", mode: async }}
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp }}
    rate_limit: {{ agent: {limit} }}
  - name: open
    match: {{ path_prefix: /open }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp }}
  - name: billing
    match: {{ path_prefix: /billing }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp }}
    credentials:
      token_exchange: {{ client: gw, resource: ["https://billing.downstream.test"], scope: "invoices:read" }}
"#,
        op = op.url()
    );
    config(&op.url(), &op.issuer, &up.url(), &routes).replace(
        "routes:\n",
        &format!(
            "clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\n\
             approvals: {{ max_pending_per_user: 3 }}\n\
             state:\n  backend: redis\n  redis: {{ url: \"{}\", key_prefix: \"pc-test:\", timeout_ms: 1000, cache_key_env: PORTCULLIS_TEST_STATE_KEY }}\n\
             routes:\n",
            op.url(),
            redis.url()
        ),
    )
}

fn replica(yaml: &str) -> Gw {
    Gw::start_env(yaml, true, &[SECRET, CACHE_KEY])
}

fn op() -> Op {
    Op::start_env(&[("CIBA_INTERVAL", "1")])
}

/// Start an async approval on `gw`; its id and status URL.
fn start_approval(gw: &Gw, token: &str, amount: u64) -> (String, String) {
    let r = pay(gw, token, amount, None);
    assert_eq!(r.status(), 202, "{:?}", r.text());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = r.json().unwrap();
    (body["approval_id"].as_str().unwrap().to_string(), location)
}

fn wait_status(gw: &Gw, location: &str, token: &str, want: &str, limit: Duration) {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < limit {
        last = raw_get(gw.port, location, token);
        if last["status"] == want {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("approval never reached {want} (last: {last})");
}

/// State operations (Redis round trips) `gw` made while deciding the requests `f` sends.
fn ops_per_request(gw: &Gw, f: impl FnOnce()) -> f64 {
    let before = gw.metrics();
    f();
    let after = gw.metrics();
    let m = |text: &str, s: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(s)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let sum = m(&after, "portcullis_state_operations_per_request_sum")
        - m(&before, "portcullis_state_operations_per_request_sum");
    let count = m(&after, "portcullis_state_operations_per_request_count")
        - m(&before, "portcullis_state_operations_per_request_count");
    assert!(count > 0.0, "no request was counted");
    sum / count
}

#[test]
fn an_approval_started_on_one_replica_completes_on_another_once() {
    let Some(redis) =
        redis_or_skip("replicas::an_approval_started_on_one_replica_completes_on_another_once")
    else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let (a, b) = (replica(&yaml), replica(&yaml));
    let token = op.alice();

    let mut id = String::new();
    let mut location = String::new();
    let start_ops = ops_per_request(&a, || (id, location) = start_approval(&a, &token, 5000));
    // The status URL and the retry work on the other replica.
    let status_ops = ops_per_request(&b, || {
        assert_eq!(raw_get(b.port, &location, &token)["status"], "pending");
    });
    let (status, _, body) = parts(pay(&b, &token, 5000, Some(&id)));
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("pending")),
        "{body}"
    );

    // Exactly one replica polls the IdP: ~1 poll a second, not 2.
    let before = op.token_requests();
    thread::sleep(Duration::from_secs(5));
    let polls = op.token_requests() - before;
    assert!(
        (2..=7).contains(&polls),
        "{polls} polls in 5 s at a 1 s interval"
    );

    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    wait_status(&b, &location, &token, "approved", Duration::from_secs(20));
    assert!(up.requests().is_empty());

    // The same retry on both replicas at once: exactly one is forwarded.
    let barrier = Arc::new(Barrier::new(2));
    let retries: Vec<_> = [
        a.url("/invoices/finance/INV-7/pay"),
        b.url("/invoices/finance/INV-7/pay"),
    ]
    .into_iter()
    .map(|url| {
        let (barrier, token, id) = (barrier.clone(), token.clone(), id.clone());
        thread::spawn(move || {
            let req = client()
                .post(url)
                .bearer_auth(token)
                .header("portcullis-approval", id)
                .json(&json!({"amount": 5000, "currency": "EUR"}));
            barrier.wait();
            req.send().unwrap().status().as_u16()
        })
    })
    .collect();
    let mut statuses: Vec<u16> = retries.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 403],
        "one retry forwarded, the other refused"
    );
    assert_eq!(up.requests().len(), 1, "the upstream ran exactly once");
    assert_eq!(raw_get(a.port, &location, &token)["status"], "used");

    let redeem_ops = ops_per_request(&a, || {
        assert_eq!(pay(&a, &token, 5000, Some(&id)).status(), 403);
    });
    let plain_ops = ops_per_request(&a, || {
        assert_eq!(a.get("/open/x", Some(&token)).status(), 200);
    });
    let limited_ops = ops_per_request(&a, || {
        assert_eq!(a.get("/limited/x", Some(&token)).status(), 200);
    });
    println!(
        "Redis operations per request: start async approval {start_ops}, status {status_ops}, \
         redeem {redeem_ops}, rate-limited route {limited_ops}, JWT-only route {plain_ops}"
    );
    assert_eq!(
        plain_ops, 0.0,
        "a route that needs no shared state makes no Redis call"
    );
    assert_eq!(
        limited_ops, 1.0,
        "a rate-limited request is one Redis round trip"
    );
    assert!(
        (2.0..=3.0).contains(&redeem_ops),
        "redeeming a used approval: read it, append the `refused` receipt (one more script \
         when another replica appended a receipt since this one did): {redeem_ops}"
    );
    assert_eq!(
        start_ops, 5.0,
        "starting: look for an identical open approval, claim the asking (other replicas' \
         identical calls wait), reserve a slot, store record + lease, append the `asked` receipt"
    );
    assert_eq!(status_ops, 1.0, "the status URL: one read");
    // Both replicas appended to one receipts chain, without a fork.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["receipts", "verify", "--config"])
        .arg(a.dir.path().join("portcullis.yaml"))
        .envs([SECRET, CACHE_KEY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let receipts: u64 = text
        .split("OK, ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // asked, approved, forwarded, refused (the losing retry), refused (the measured redeem).
    assert!(receipts >= 5, "{text}");
    // Nothing secret in Redis: no bearer token, no user name in a key.
    let dump = redis.dump();
    assert!(!dump.contains(&token));
    assert!(!redis.cli(&["--scan"]).contains("alice"));
}

#[test]
fn pending_limits_count_every_replica() {
    let Some(redis) = redis_or_skip("replicas::pending_limits_count_every_replica") else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let (a, b) = (replica(&yaml), replica(&yaml));
    let token = op.alice();
    // max_pending_per_user: 3, spread over both replicas.
    start_approval(&a, &token, 5001);
    start_approval(&b, &token, 5002);
    start_approval(&a, &token, 5003);
    for gw in [&a, &b] {
        let (status, _, body) = parts(pay(gw, &token, 5004, None));
        assert_eq!(
            (status, body["error"].as_str()),
            (429, Some("too_many_approvals")),
            "{body}"
        );
    }
    // Another user is not limited by alice's approvals.
    let bob = op.mint(json!({"sub": "bob", "client_id": "agent-1",
        "scope": "invoices:read invoices:pay", "set": {"dept": "finance", "roles": ["finance"]}}));
    assert_eq!(pay(&b, &bob, 5005, None).status(), 202);
    // An answered approval frees its slot for every replica.
    let first = op.pending(false)[0]["auth_req_id"]
        .as_str()
        .unwrap()
        .to_string();
    op.answer("deny", &first);
    let start = Instant::now();
    while pay(&b, &token, 5006, None).status() != 202 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the slot was never released"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_killed_polling_replica_is_taken_over() {
    let Some(redis) = redis_or_skip("replicas::a_killed_polling_replica_is_taken_over") else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let (a, b, c) = (replica(&yaml), replica(&yaml), replica(&yaml));
    let token = op.alice();
    let (id, location) = start_approval(&a, &token, 5000);
    op.wait_pending();
    // The replica that asked polls; kill it (SIGKILL) mid-approval.
    thread::sleep(Duration::from_millis(1500));
    drop(a);
    let killed = Instant::now();
    // Its lease (2 intervals + 3 s) runs out; another replica takes over polling.
    let start = Instant::now();
    while !(b.log().contains("taking over polling") || c.log().contains("taking over polling")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nobody took over"
        );
        thread::sleep(Duration::from_millis(200));
    }
    println!(
        "approval taken over {:?} after the poller was killed",
        killed.elapsed()
    );
    let takers = [&b, &c]
        .iter()
        .filter(|g| g.log().contains("taking over polling"))
        .count();
    assert_eq!(takers, 1, "exactly one replica took over");
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    // Only a poller can have recorded the approval: the survivor did.
    wait_status(&c, &location, &token, "approved", Duration::from_secs(20));
    assert_eq!(pay(&b, &token, 5000, Some(&id)).status(), 200);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn a_rate_limit_holds_across_replicas() {
    let Some(redis) = redis_or_skip("replicas::a_rate_limit_holds_across_replicas") else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 0.01, burst: 5 }");
    let (a, b) = (replica(&yaml), replica(&yaml));
    let token = op.alice();
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            gw.get("/limited/x", Some(&token)).status().as_u16()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another agent has its own bucket. Once one replica spent it all, that replica refuses
    // from its local pre-check without a Redis call; the other asks Redis.
    let other = op.mint(json!({"sub": "alice", "client_id": "agent-2", "scope": "invoices:read"}));
    for _ in 0..5 {
        assert_eq!(b.get("/limited/x", Some(&other)).status(), 200);
    }
    let local_ops = ops_per_request(&b, || {
        assert_eq!(b.get("/limited/x", Some(&other)).status(), 429);
    });
    let shared_ops = ops_per_request(&a, || {
        assert_eq!(a.get("/limited/x", Some(&other)).status(), 429);
    });
    assert_eq!((local_ops, shared_ops), (0.0, 1.0));

    // Rough latency of the Redis-backed check (no assertion): the same requests to a route
    // without a limit and to one with a (never reached) shared limit.
    let wide = yaml.replace(
        "{ per_second: 0.01, burst: 5 }",
        "{ per_second: 100000, burst: 100000 }",
    );
    let g = replica(&wide);
    let c = client();
    let mut took = [Duration::ZERO; 2];
    for i in 0..1000 {
        let path = ["/open/x", "/limited/x"][i % 2];
        let start = Instant::now();
        assert_eq!(
            c.get(g.url(path))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .status(),
            200
        );
        if i >= 100 {
            took[i % 2] += start.elapsed();
        }
    }
    let (open, limited) = (
        took[0].as_micros() as f64 / 450.0,
        took[1].as_micros() as f64 / 450.0,
    );
    let text = g.metrics();
    let sum = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"portcullis_state_operation_duration_seconds_sum{op="rate_limit"} "#)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    let count = metric(
        &text,
        r#"portcullis_state_operation_duration_seconds_count{op="rate_limit"}"#,
    );
    println!(
        "request latency through the gateway: no limit {open:.0} µs, Redis rate limit {limited:.0} µs \
         (+{:.0} µs); Redis rate-limit script {:.0} µs on average over {count}",
        limited - open,
        sum / count.max(1) as f64 * 1e6
    );
}

#[test]
fn exchanged_tokens_are_shared_by_replicas() {
    let Some(redis) = redis_or_skip("replicas::exchanged_tokens_are_shared_by_replicas") else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let (a, b) = (replica(&yaml), replica(&yaml));
    let token = op.alice();
    let before = op.token_requests();
    assert_eq!(a.get("/billing/x", Some(&token)).status(), 200);
    assert_eq!(
        op.token_requests() - before,
        1,
        "replica A exchanged the token"
    );
    assert_eq!(b.get("/billing/x", Some(&token)).status(), 200);
    assert_eq!(a.get("/billing/y", Some(&token)).status(), 200);
    assert_eq!(
        op.token_requests() - before,
        1,
        "replica B used the token A obtained"
    );
    let seen = up.requests();
    let bearer = |i: usize| seen[i].header("authorization").unwrap().to_string();
    assert_eq!(bearer(0), bearer(1));
    assert_ne!(bearer(0), format!("Bearer {token}"));
    assert_eq!(
        metric(
            &b.metrics(),
            r#"portcullis_upstream_token_cache_total{result="shared_hit"}"#
        ),
        1
    );
    // Encrypted at rest in Redis, keyed by a digest.
    let upstream_token = bearer(0).trim_start_matches("Bearer ").to_string();
    let dump = redis.dump();
    assert!(dump.contains("pc-test:tok:"), "{dump}");
    assert!(
        !dump.contains(&upstream_token),
        "the upstream token is stored in plaintext"
    );
    assert!(!dump.contains(&token));
}

#[test]
fn redis_down_fails_closed_only_where_needed_and_recovers() {
    let Some(mut redis) =
        redis_or_skip("replicas::redis_down_fails_closed_only_where_needed_and_recovers")
    else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let gw = replica(&yaml);
    let token = op.alice();
    assert_eq!(gw.get("/limited/x", Some(&token)).status(), 200);
    let (_, location) = start_approval(&gw, &token, 5000);

    redis.stop();
    let (status, _, body) = parts(pay(&gw, &token, 5000, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("state_unavailable")),
        "{body}"
    );
    let (status, _, body) = parts(gw.get("/limited/x", Some(&token)));
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("state_unavailable")),
        "{body}"
    );
    assert_eq!(
        raw_get(gw.port, &location, &token)["error"],
        "state_unavailable"
    );
    // Plain JWT + Rego routes do not need Redis.
    assert_eq!(
        gw.get("/invoices/finance/INV-1", Some(&token)).status(),
        200
    );
    assert_eq!(gw.get("/open/x", Some(&token)).status(), 200);
    let ready = client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .unwrap();
    // Still ready (Redis is every replica's: draining them all would stop the plain routes
    // too), but reported degraded.
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().unwrap();
    assert_eq!(ready["state"], json!({"backend": "redis", "up": false}));
    assert_eq!(ready["degraded"], true);
    let m = gw.metrics();
    assert!(m.contains("portcullis_state_backend_up 0"), "{m}");
    assert!(
        metric(&m, r#"portcullis_state_errors_total{op="approval_join"}"#) >= 1,
        "a new approval first looks for an identical open one: {m}"
    );
    assert!(
        metric(
            &m,
            r#"portcullis_decisions_total{decision="deny",reason="state_unavailable",route="invoices"}"#
        ) >= 1
    );
    assert!(
        up.requests().iter().all(|r| r.method == "GET"),
        "nothing was paid"
    );

    redis.restart();
    let start = Instant::now();
    loop {
        let status = pay(&gw, &token, 5000, None).status().as_u16();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(start.elapsed() < Duration::from_secs(30), "never recovered");
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(gw.get("/limited/x", Some(&token)).status(), 200);
    let ready = client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().unwrap()["degraded"], false);
    assert!(gw.metrics().contains("portcullis_state_backend_up 1"));
}

#[test]
fn identical_calls_on_two_replicas_at_once_ask_the_user_once() {
    let Some(redis) =
        redis_or_skip("replicas::identical_calls_on_two_replicas_at_once_ask_the_user_once")
    else {
        return;
    };
    let (op, up) = (op(), Upstream::start());
    let yaml = yaml(&op, &up, &redis, "{ per_second: 100, burst: 100 }");
    let (a, b) = (replica(&yaml), replica(&yaml));
    let token = op.alice();
    for round in 0..3 {
        let amount = 5000 + round;
        let barrier = Arc::new(Barrier::new(4));
        let calls: Vec<_> = [&a, &b, &a, &b]
            .iter()
            .map(|gw| {
                let url = gw.url("/invoices/finance/INV-7/pay");
                let (barrier, token) = (barrier.clone(), token.clone());
                thread::spawn(move || {
                    let req = client()
                        .post(url)
                        .bearer_auth(token)
                        .json(&json!({"amount": amount, "currency": "EUR"}));
                    barrier.wait();
                    let r = req.send().unwrap();
                    assert_eq!(r.status(), 202);
                    r.json::<Value>().unwrap()["approval_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        let ids: Vec<String> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "one approval: {ids:?}");
        let asked = op
            .pending(false)
            .into_iter()
            .filter(|p| {
                p["binding_message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&amount.to_string()))
            })
            .count();
        assert_eq!(asked, 1, "the user is asked once (round {round})");
    }
    assert!(up.requests().is_empty());
}
