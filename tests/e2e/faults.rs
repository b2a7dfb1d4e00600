//! Fault injection: a JWKS endpoint, an authorization server and upstreams that misbehave
//! (close, hang, answer garbage, answer too much). Every fault fails closed — the request is
//! refused with a clear status and body and never forwarded — and shows in `/metrics`.
//!
//! Covered elsewhere (not repeated here): policy errors and time-outs (`policy.rs`), an IdP
//! down with cached keys and unknown kids (`jwks.rs`), a CIBA endpoint down
//! (`approval.rs`), a dead upstream port (`proxy.rs`).

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fakes::{jwks, token, Answer, Fake};
use crate::support::{client, config, free_port, metric, parts, shared_op, Gw, Upstream};

const ISS: &str = "https://faults.idp.test/";

/// One route without policy, issuer `corp` whose JWKS is `fake`, fetch time-out 1 s, and
/// an unknown kid refetched at most once a second (the shortest cooldown `check` accepts),
/// so each request a second apart meets the fault.
fn jwks_yaml(fake: &Fake, up: &Upstream) -> String {
    let routes = r#"  - name: plain
    match: { path_prefix: /plain }
    upstream: "{upstream}"
    auth: { issuer: corp }
"#;
    config(&fake.url(), ISS, &up.url(), routes).replace(
        "    algorithms: [RS256, ES256]\n",
        "    algorithms: [RS256, ES256]\n    jwks: { timeout_ms: 1000, unknown_kid_cooldown_seconds: 1 }\n",
    )
}

#[test]
fn a_misbehaving_jwks_endpoint_fails_closed_cached_keys_keep_working_and_is_counted() {
    let fake = Fake::start(Answer::json(&jwks(&["k1"])));
    let up = Upstream::start();
    let gw = Gw::start(&jwks_yaml(&fake, &up));
    let metrics = gw.metrics();
    for kind in ["unreachable", "timeout", "status", "too_large", "invalid"] {
        let series =
            format!(r#"portcullis_jwks_fetch_errors_total{{issuer="corp",kind="{kind}"}} 0"#);
        assert!(
            metrics.contains(&series),
            "pre-registered: {series}\n{metrics}"
        );
    }
    assert_eq!(
        gw.get("/plain", Some(&token("k1", ISS, "u0"))).status(),
        200
    );

    let big_keys = {
        let mut doc = jwks(&["k1", "k2"]);
        doc["padding"] = json!("x".repeat(2 << 20));
        doc.to_string().into_bytes()
    };
    let cases: Vec<(&str, Answer, &str)> = vec![
        ("connection closed at once", Answer::Close, "unreachable"),
        (
            "silent longer than the fetch time-out",
            Answer::Silence(Duration::from_secs(30)),
            "timeout",
        ),
        (
            "HTTP 500",
            Answer::Reply(500, "text/plain", b"oops".to_vec()),
            "status",
        ),
        (
            "not JSON",
            Answer::Reply(200, "text/html", b"<html>".to_vec()),
            "invalid",
        ),
        (
            "JSON without keys",
            Answer::json(&json!({"issuer": ISS})),
            "invalid",
        ),
        (
            "an empty key set",
            Answer::json(&json!({"keys": []})),
            "invalid",
        ),
        (
            "only a symmetric key with the new kid",
            Answer::json(&json!({"keys": [{"kty": "oct", "kid": "k2", "k": "c2VjcmV0"}]})),
            "invalid",
        ),
        (
            "2 MiB with the new kid, content-length declared",
            Answer::Reply(200, "application/json", big_keys.clone()),
            "too_large",
        ),
        (
            "2 MiB with the new kid, no content-length",
            Answer::Unframed(big_keys),
            "too_large",
        ),
    ];
    let mut kinds = std::collections::BTreeMap::new();
    for (i, (what, answer, kind)) in cases.iter().enumerate() {
        fake.set(answer.clone());
        let before = fake.accepted();
        thread::sleep(Duration::from_millis(1100)); // past the unknown-kid cooldown
                                                    // k2 is unknown: the gateway refetches, meets the fault, refuses.
        let started = Instant::now();
        let (status, challenge, body) = parts(gw.get("/plain", Some(&token("k2", ISS, "u1"))));
        let took = started.elapsed();
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            challenge.as_deref().unwrap_or("").contains("invalid_token"),
            "{what}: {challenge:?}"
        );
        assert_eq!(body["error"], "invalid_token", "{what}");
        assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
        assert_eq!(fake.accepted() - before, 1, "{what}: one fetch attempt");
        // A fresh token (not in the token cache) with a cached kid is still accepted.
        let fresh = token("k1", ISS, &format!("fresh-{i}"));
        assert_eq!(gw.get("/plain", Some(&fresh)).status(), 200, "{what}");
        *kinds.entry(*kind).or_insert(0u64) += 1;
    }
    assert_eq!(
        up.requests().len(),
        1 + cases.len(),
        "only the k1 tokens went through"
    );

    let metrics = gw.metrics();
    for (kind, n) in &kinds {
        let series =
            format!(r#"portcullis_jwks_fetch_errors_total{{issuer="corp",kind="{kind}"}}"#);
        assert_eq!(metric(&metrics, &series), *n, "{series}\n{metrics}");
    }
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_jwks_refresh_total{issuer="corp",outcome="failure"}"#
        ),
        cases.len() as u64
    );
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_decisions_total{decision="deny",reason="invalid_token",route="plain"}"#
        ),
        cases.len() as u64,
        "{metrics}"
    );
    // The endpoint recovers with the new key: k2 is accepted (after the cooldown).
    fake.set(Answer::json(&jwks(&["k1", "k2"])));
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        gw.get("/plain", Some(&token("k2", ISS, "u1"))).status(),
        200
    );
    assert!(
        gw.log().contains("JWKS refetch for unknown kid failed"),
        "the fetch failures are logged"
    );
}

#[test]
fn garbage_keys_at_start_mean_not_ready_and_503_until_the_endpoint_recovers() {
    let fake = Fake::start(Answer::Reply(200, "text/html", b"<html>".to_vec()));
    let up = Upstream::start();
    let gw = Gw::start_opts(&jwks_yaml(&fake, &up), false);
    let ready = || {
        client()
            .get(format!("{}/readyz", gw.admin_url()))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready(), 503);
    thread::sleep(Duration::from_millis(1100)); // past the unknown-kid cooldown
    let (status, _, body) = parts(gw.get("/plain", Some(&token("k1", ISS, "u0"))));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(up.requests().is_empty());
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_decisions_total{decision="deny",reason="keys_unavailable",route="plain"}"#
        ),
        1,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"portcullis_jwks_fetch_errors_total{issuer="corp",kind="invalid"}"#
        ) >= 2,
        "start-up fetch and the request's refetch: {metrics}"
    );
    // Good keys again: the next request's refetch loads them.
    fake.set(Answer::json(&jwks(&["k1"])));
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        gw.get("/plain", Some(&token("k1", ISS, "u0"))).status(),
        200
    );
    assert_eq!(ready(), 200);
}

const EXCHANGE_ROUTE: &str = r#"  - name: NAME
    match: { path_prefix: /NAME }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      token_exchange: { client: NAME, resource: ["https://billing.downstream.test"] }
"#;

#[test]
fn an_authorization_server_that_is_down_slow_or_broken_denies_and_is_counted() {
    let op = shared_op();
    let up = Upstream::start();
    let slow = Fake::start(Answer::Silence(Duration::from_secs(30)));
    let garbage = Fake::start(Answer::Reply(200, "text/html", b"<html>".to_vec()));
    let failing = Fake::start(Answer::Reply(500, "text/plain", b"oops".to_vec()));
    let dead = format!("http://127.0.0.1:{}", free_port());
    // (name, token endpoint, status, error, metric outcome)
    let cases = [
        ("down", dead, 503, "temporarily_unavailable", "unreachable"),
        (
            "slow",
            slow.url(),
            503,
            "temporarily_unavailable",
            "unreachable",
        ),
        ("garbage", garbage.url(), 502, "bad_gateway", "error"),
        ("failing", failing.url(), 502, "bad_gateway", "error"),
    ];
    let mut clients = String::from("clients:\n");
    let mut routes = String::new();
    for (name, url, ..) in &cases {
        clients.push_str(&format!(
            "  - {{ name: {name}, token_endpoint: \"{url}/token\", client_id: portcullis, client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET, timeout_ms: 1000 }}\n"
        ));
        routes.push_str(&EXCHANGE_ROUTE.replace("NAME", name));
    }
    let yaml = config(&op.url(), &op.issuer, &up.url(), &routes)
        .replace("routes:\n", &format!("{clients}routes:\n"));
    let gw = Gw::start_env(
        &yaml,
        true,
        &[("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret")],
    );
    let user = op.alice();
    for (name, _, want, error, _) in &cases {
        let started = Instant::now();
        let (status, _, body) = parts(gw.get(&format!("/{name}/x"), Some(&user)));
        assert_eq!(
            (status, body["error"].as_str()),
            (*want, Some(*error)),
            "{name}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert!(
            !body.to_string().contains("oops") && !body.to_string().contains("html"),
            "{name}: the AS's answer is not echoed: {body}"
        );
    }
    assert!(up.requests().is_empty(), "nothing was forwarded");
    assert_eq!(slow.accepted(), 1, "the slow AS was asked once");
    let metrics = gw.metrics();
    let outcome = |o: &str| {
        metric(
            &metrics,
            &format!(r#"portcullis_token_exchanges_total{{mode="token_exchange",outcome="{o}"}}"#),
        )
    };
    assert_eq!(
        (outcome("unreachable"), outcome("error")),
        (2, 2),
        "{metrics}"
    );
    for (name, _, want, ..) in &cases {
        let reason = if *want == 503 {
            "credentials_unavailable"
        } else {
            "credentials_failed"
        };
        let series = format!(
            r#"portcullis_decisions_total{{decision="deny",reason="{reason}",route="{name}"}}"#
        );
        assert_eq!(metric(&metrics, &series), 1, "{series}\n{metrics}");
    }
}

#[test]
fn upstream_faults_are_502_or_504_and_a_post_is_sent_exactly_once() {
    let op = shared_op();
    let closing = Fake::start(Answer::Close);
    let silent = Fake::start(Answer::Silence(Duration::from_secs(30)));
    let routes = format!(
        r#"  - name: closing
    match: {{ path_prefix: /closing }}
    upstream: "{}"
    auth: {{ issuer: corp }}
  - name: silent
    match: {{ path_prefix: /silent }}
    upstream: "{}"
    auth: {{ issuer: corp }}
    timeouts: {{ read_ms: 1000 }}
"#,
        closing.url(),
        silent.url()
    );
    let gw = Gw::start(&config(&op.url(), &op.issuer, "unused", &routes));
    let token = op.alice();
    let post = |path: &str| {
        client()
            .post(gw.url(path))
            .bearer_auth(&token)
            .json(&json!({"amount": 1}))
            .send()
            .unwrap()
    };
    // A connection closed before any answer: 502, and the POST is not retried.
    let (status, _, body) = parts(post("/closing/pay"));
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("bad_gateway")),
        "{body}"
    );
    assert_eq!(closing.accepted(), 1, "a POST is sent exactly once");
    let (status, _, _) = parts(gw.get("/closing/read", Some(&token)));
    assert_eq!(status, 502);
    assert_eq!(closing.accepted(), 2, "a failed GET is not retried either");
    // An upstream that never answers: 504 after the route's read time-out, once.
    let started = Instant::now();
    let (status, _, body) = parts(post("/silent/pay"));
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(silent.accepted(), 1);
    let metrics = gw.metrics();
    let errors = |route: &str| {
        metric(
            &metrics,
            &format!(r#"portcullis_upstream_errors_total{{route="{route}"}}"#),
        )
    };
    assert_eq!((errors("closing"), errors("silent")), (2, 1), "{metrics}");
    let fives = metric(
        &metrics,
        r#"portcullis_responses_total{class="5xx",route="closing"}"#,
    );
    assert_eq!(fives, 2, "{metrics}");
}
