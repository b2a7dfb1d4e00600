//! Signing keys: rotation, an unreachable IdP with cached keys, unknown kids.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{config, free_port, parts, standard_routes, Gw, Op, Upstream};

#[test]
fn rotated_keys_are_fetched_on_a_new_kid() {
    let port = free_port();
    let mut op = Op::start_on(port, None);
    let up = Upstream::start();
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    assert_eq!(
        gw.get("/invoices/finance/1", Some(&op.alice())).status(),
        200
    );
    // Restart the OP on the same port: new keys, new kids (a key rotation).
    op.stop();
    let op = Op::start_on(port, None);
    let fresh = op.alice();
    assert_eq!(gw.get("/invoices/finance/1", Some(&fresh)).status(), 200);
    assert_eq!(op.jwks_fetches(), 1, "exactly one refetch for the new kid");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_jwks_refresh_total{issuer="corp",outcome="success"} 2"#),
        "{metrics}"
    );
}

#[test]
fn a_rotation_at_the_idp_fetches_the_new_kid_once_and_old_tokens_stay_valid() {
    let op = Op::start();
    let up = Upstream::start();
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    assert_eq!(
        gw.get("/invoices/finance/1", Some(&op.alice())).status(),
        200
    );
    let before_rotation = op.alice(); // not yet seen by the gateway
    op.rotate();
    let after_rotation = op.alice();
    assert_eq!(
        gw.get("/invoices/finance/1", Some(&after_rotation))
            .status(),
        200
    );
    assert_eq!(
        gw.get("/invoices/finance/1", Some(&before_rotation))
            .status(),
        200,
        "the retired key is still published"
    );
    assert_eq!(op.jwks_fetches(), 2, "start, then once for the new kid");
}

#[test]
fn cached_keys_keep_working_while_the_idp_is_down_and_unknown_kids_fail_fast() {
    let mut op = Op::start();
    // A second OP with the same issuer name but other keys: its tokens carry unknown kids.
    let impostor = Op::start_on(free_port(), Some(&op.issuer));
    let up = Upstream::start();
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    let token = op.alice();
    let foreign = impostor
        .mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"dept": "finance"}}));
    op.stop();

    // Never seen before, but signed by a cached key: verified offline.
    assert_eq!(gw.get("/invoices/finance/1", Some(&token)).status(), 200);
    let start = Instant::now();
    let (status, challenge, body) = parts(gw.get("/invoices/finance/1", Some(&foreign)));
    assert_eq!(status, 401, "{body}");
    assert!(challenge.unwrap().contains("invalid_token"));
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("unknown key"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "unknown kid took {:?}",
        start.elapsed()
    );
    // Within the cooldown another unknown kid does not trigger a fetch: still fast, still 401.
    assert_eq!(gw.get("/invoices/finance/1", Some(&foreign)).status(), 401);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn unknown_kids_do_not_hammer_the_jwks_endpoint() {
    let op = Op::start();
    let impostor = Op::start_on(free_port(), Some(&op.issuer));
    let up = Upstream::start();
    let gw = Gw::start(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    let before = op.jwks_fetches();
    for i in 0..20 {
        let t = impostor.mint(json!({"sub": format!("u{i}"), "scope": "invoices:read"}));
        assert_eq!(gw.get("/invoices/finance/1", Some(&t)).status(), 401);
    }
    let fetched = op.jwks_fetches() - before;
    assert!(
        fetched <= 1,
        "20 unknown-kid tokens caused {fetched} JWKS fetches"
    );
}

#[test]
fn an_unreachable_idp_at_start_means_not_ready_and_503() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let up = Upstream::start();
    let gw = Gw::start_opts(&config(&dead, &dead, &up.url(), standard_routes()), false);
    let r = crate::support::client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhIn0.c2ln";
    let (status, _, body) = parts(gw.get("/invoices/finance/1", Some(token)));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(up.requests().is_empty());
}
