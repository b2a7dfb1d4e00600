//! Approval holds through OpenID CIBA at the real OpenID Provider: the approver's view, approve,
//! deny, time-out, slow_down, client disconnect, async 202 + retry (binding, single use,
//! restart), limits and an unreachable backchannel endpoint.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{client, config, free_port, metric, parts, Gw, Op, Upstream};

pub(crate) const SECRET: (&str, &str) = ("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret");

/// The invoices route (policy asks approval above 1000) with `approval` settings `extra`.
pub(crate) fn yaml(
    op: &Op,
    up: &Upstream,
    backchannel: &str,
    extra: &str,
    store: Option<&std::path::Path>,
) -> String {
    let routes = format!(
        r#"  - name: invoices
    match: {{ path_prefix: /invoices, methods: [GET, POST] }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: invoices
    policy_body: true
    approval: {{ client: gw, backchannel_endpoint: "{backchannel}", scope: "invoices:pay"{extra} }}
"#
    );
    let approvals = match store {
        Some(p) => format!(
            "approvals: {{ store: {}, max_pending_per_user: 2 }}\n",
            p.display()
        ),
        None => "approvals: { max_pending_per_user: 2 }\n".to_string(),
    };
    config(&op.url(), &op.issuer, &up.url(), &routes).replace(
        "routes:\n",
        &format!(
            "clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\n{approvals}routes:\n",
            op.url()
        ),
    )
}

pub(crate) fn pay(
    gw: &Gw,
    token: &str,
    amount: u64,
    approval: Option<&str>,
) -> reqwest::blocking::Response {
    let mut r = client()
        .post(gw.url("/invoices/finance/INV-7/pay"))
        .bearer_auth(token)
        .json(&json!({"amount": amount, "currency": "EUR"}));
    if let Some(id) = approval {
        r = r.header("portcullis-approval", id);
    }
    r.send().unwrap()
}

/// Send a payment from another thread; returns its status and body later.
pub(crate) fn pay_in_background(
    gw: &Gw,
    token: &str,
    amount: u64,
) -> thread::JoinHandle<(u16, Value)> {
    let (url, token) = (gw.url("/invoices/finance/INV-7/pay"), token.to_string());
    thread::spawn(move || {
        let r = client()
            .post(url)
            .bearer_auth(token)
            .json(&json!({"amount": amount, "currency": "EUR"}))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    })
}

pub(crate) fn op() -> Op {
    Op::start_env(&[("CIBA_INTERVAL", "1")])
}

#[test]
fn sync_hold_shows_the_policy_details_and_forwards_once_approved() {
    let op = op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(&op, &up, &format!("{}/backchannel", op.url()), "", None),
        true,
        &[SECRET],
    );
    let token = op.alice();
    let call = pay_in_background(&gw, &token, 5000);
    let asked = op.wait_pending();
    // What the user's device shows is what the policy built.
    assert_eq!(asked["sub"], "alice");
    assert_eq!(asked["binding_message"], "Pay INV-7 5000 EUR");
    assert_eq!(
        asked["authorization_details"][0]["type"],
        "payment_initiation"
    );
    assert_eq!(
        asked["authorization_details"][0]["instructedAmount"],
        json!({"amount": 5000, "currency": "EUR"})
    );
    assert!(
        asked["scope"].as_str().unwrap().contains("openid"),
        "{asked}"
    );
    thread::sleep(Duration::from_millis(1500));
    assert!(
        up.requests().is_empty(),
        "forwarded before the user answered"
    );
    op.answer("approve", asked["auth_req_id"].as_str().unwrap());
    let (status, body) = call.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "the original request is forwarded exactly once"
    );
    let forwarded: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(forwarded, json!({"amount": 5000, "currency": "EUR"}));
    // Small payments need no approval.
    assert_eq!(pay(&gw, &token, 10, None).status(), 200);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_approvals_total{mode="sync",outcome="approved"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_approvals_pending 0"),
        "{metrics}"
    );
}

#[test]
fn sync_deny_timeout_and_unreachable_service_refuse() {
    let op = op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(
            &op,
            &up,
            &format!("{}/backchannel", op.url()),
            ", max_wait_seconds: 3",
            None,
        ),
        true,
        &[SECRET],
    );
    let token = op.alice();
    let call = pay_in_background(&gw, &token, 2000);
    op.answer("deny", op.wait_pending()["auth_req_id"].as_str().unwrap());
    let (status, body) = call.join().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("denied"));
    // Nobody answers: the route's hold time-out.
    let started = Instant::now();
    let (status, _, body) = parts(pay(&gw, &token, 3000, None));
    assert_eq!(status, 408, "{body}");
    // The hold lasts its full max_wait_seconds (the OP is asked to keep the request 1 s more).
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(up.requests().is_empty());
    // The backchannel endpoint is down: not forwarded.
    let dead = format!("http://127.0.0.1:{}/backchannel", free_port());
    let gw = Gw::start_env(&yaml(&op, &up, &dead, "", None), true, &[SECRET]);
    let (status, _, body) = parts(pay(&gw, &token, 3000, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert!(up.requests().is_empty());
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_decisions_total{decision="deny",reason="approval_failed",route="invoices"} 1"#
        ),
        "{metrics}"
    );
    // The log names the endpoint that failed: the backchannel one, not the token endpoint.
    let log = gw.log();
    assert!(
        log.contains("CIBA backchannel endpoint unreachable") && log.contains(&dead),
        "{log}"
    );
}

#[test]
fn a_user_the_authorization_server_does_not_know_is_a_clear_502() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(&op, &up, &format!("{}/backchannel", op.url()), "", None),
        true,
        &[SECRET],
    );
    // A valid token for a user the OP has no account for: CIBA answers unknown_user_id.
    let stranger = op.mint(
        json!({"sub": "mallory", "scope": "invoices:read invoices:pay",
                                  "set": {"dept": "finance", "roles": ["finance"]}}),
    );
    let (status, _, body) = parts(pay(&gw, &stranger, 3000, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("unknown_user")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("does not know this user"),
        "{body}"
    );
    assert!(up.requests().is_empty());
}

#[test]
fn slow_down_adds_five_seconds() {
    let op = Op::start_env(&[
        ("CIBA_INTERVAL", "1"),
        ("SLOW_DOWN", "1"),
        ("SLOW_DOWN_BELOW_MS", "3000"),
    ]);
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(&op, &up, &format!("{}/backchannel", op.url()), "", None),
        true,
        &[SECRET],
    );
    let token = op.alice();
    let before = op.token_requests();
    let call = pay_in_background(&gw, &token, 5000);
    let id = op.wait_pending()["auth_req_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Polls at ~1 s (pending) and ~2 s (slow_down); the next one only ~5 s later.
    thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        op.token_requests() - before,
        2,
        "polled again before the slowed-down interval"
    );
    op.answer("approve", &id);
    let (status, body) = call.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(op.token_requests() - before, 3);
}

#[test]
fn client_disconnect_stops_polling() {
    let op = op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(&op, &up, &format!("{}/backchannel", op.url()), "", None),
        true,
        &[SECRET],
    );
    let token = op.alice();
    let body = r#"{"amount": 5000, "currency": "EUR"}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "POST /invoices/finance/INV-7/pay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let id = op.wait_pending()["auth_req_id"]
        .as_str()
        .unwrap()
        .to_string();
    thread::sleep(Duration::from_millis(1500));
    drop(s);
    thread::sleep(Duration::from_millis(1500));
    let after_close = op.token_requests();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        op.token_requests(),
        after_close,
        "still polling after the client left"
    );
    op.answer("approve", &id);
    thread::sleep(Duration::from_millis(500));
    assert!(up.requests().is_empty(), "forwarded for a client that left");
    assert!(gw
        .log()
        .contains("client closed the connection during an approval hold"));
    assert!(gw.metrics().contains("portcullis_approvals_pending 0"));
}

#[test]
fn per_user_limit_is_429() {
    let op = op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(
            &op,
            &up,
            &format!("{}/backchannel", op.url()),
            ", max_wait_seconds: 30",
            None,
        ),
        true,
        &[SECRET],
    );
    let token = op.alice();
    let first = pay_in_background(&gw, &token, 5000);
    let second = pay_in_background(&gw, &token, 5001);
    let start = Instant::now();
    while op.pending(false).len() < 2 && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    let (status, _, body) = parts(pay(&gw, &token, 5002, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_approvals")),
        "{body}"
    );
    for p in op.pending(false) {
        op.answer("deny", p["auth_req_id"].as_str().unwrap());
    }
    assert_eq!(first.join().unwrap().0, 403);
    assert_eq!(second.join().unwrap().0, 403);
}

#[test]
fn total_pending_limit_is_429() {
    let op = op();
    let up = Upstream::start();
    let config = yaml(
        &op,
        &up,
        &format!("{}/backchannel", op.url()),
        ", max_wait_seconds: 30",
        None,
    )
    .replace(
        "max_pending_per_user: 2",
        "max_pending: 1, max_pending_per_user: 2",
    );
    assert!(config.contains("max_pending: 1"));
    let gw = Gw::start_env(&config, true, &[SECRET]);
    let token = op.alice();
    let first = pay_in_background(&gw, &token, 5000);
    let start = Instant::now();
    while op.pending(false).is_empty() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    // Under the per-user limit (2) but over the total (1): refused, nobody asked.
    let (status, _, body) = parts(pay(&gw, &token, 5001, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_approvals")),
        "{body}"
    );
    assert_eq!(
        body["error_description"].as_str(),
        Some("too many approvals are pending"),
        "{body}"
    );
    assert_eq!(op.pending(false).len(), 1);
    for p in op.pending(false) {
        op.answer("deny", p["auth_req_id"].as_str().unwrap());
    }
    assert_eq!(first.join().unwrap().0, 403);
    // The slot is free again.
    assert_eq!(metric(&gw.metrics(), "portcullis_approvals_pending "), 0);
}

pub(crate) fn raw_get(port: u16, path: &str, token: &str) -> Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

pub(crate) fn wait_status(gw: &Gw, location: &str, token: &str, want: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if raw_get(gw.port, location, token)["status"] == want {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("approval never reached {want}");
}

#[test]
fn async_approval_is_bound_single_use_and_survives_a_restart() {
    let op = op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("approvals.db");
    let yaml = yaml(
        &op,
        &up,
        &format!("{}/backchannel", op.url()),
        ", mode: async",
        Some(&store),
    );
    let gw = Gw::start_env(&yaml, true, &[SECRET]);
    let token = op.alice();
    let r = pay(&gw, &token, 5000, None);
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().unwrap();
    let id = body["approval_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/.portcullis/approvals/{id}"));
    assert_eq!(raw_get(gw.port, &location, &token)["status"], "pending");
    // Retrying before the user answers: still 202.
    assert_eq!(pay(&gw, &token, 5000, Some(&id)).status(), 202);

    // Restart while pending; the user approves meanwhile.
    drop(gw);
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    let gw = Gw::start_env(&yaml, true, &[SECRET]);
    wait_status(&gw, &location, &token, "approved");
    assert!(up.requests().is_empty());

    // Bound to the request: another amount is refused and does not use the approval up.
    let (status, _, body) = parts(pay(&gw, &token, 9999, Some(&id)));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("approval_invalid")),
        "{body}"
    );
    // The same request goes through once.
    assert_eq!(pay(&gw, &token, 5000, Some(&id)).status(), 200);
    let (status, _, _) = parts(pay(&gw, &token, 5000, Some(&id)));
    assert_eq!(status, 403, "an approval is single-use");
    assert_eq!(up.requests().len(), 1);
    // Another user cannot see it.
    let bob = op.mint(json!({"sub": "bob", "scope": "invoices:read", "set": {"dept": "finance"}}));
    assert_eq!(raw_get(gw.port, &location, &bob)["error"], "not_found");
}
