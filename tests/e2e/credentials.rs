//! Calling upstreams on the user's behalf: RFC 8693 token exchange and Auth0 Token Vault's
//! federated-connection exchange at the real OpenID Provider, single-flight caching, client
//! authentication methods, and failures that deny.

use std::thread;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{client, config, free_port, parts, repo, shared_op, Gw, Op, Upstream};

const SECRET_ENV: (&str, &str) = ("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret");

/// Claims of a JWT, unverified (the upstream's view).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The standard config plus a `clients:` block; `{op}` in `clients` is the OP's URL.
fn yaml(op: &Op, upstream: &Upstream, clients: &str, routes: &str) -> String {
    config(&op.url(), &op.issuer, &upstream.url(), routes).replace(
        "routes:\n",
        &format!("clients:\n{}routes:\n", clients.replace("{op}", &op.url())),
    )
}

const PORTCULLIS_CLIENT: &str = r#"  - name: gw
    token_endpoint: "{op}/token"
    client_id: portcullis
    client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET
"#;

const EXCHANGE_ROUTES: &str = r#"  - name: billing
    match: { path_prefix: /billing }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      token_exchange: { client: gw, resource: ["https://billing.downstream.test"], scope: "invoices:read" }
  - name: calendar
    match: { path_prefix: /calendar }
    upstream: "{upstream}"
    auth: { issuer: corp }
    policy: calendar
    credentials:
      token_vault: { client: gw, connection: google-oauth2 }
      header: x-upstream-token
"#;

fn bearer(r: &crate::support::Recorded) -> String {
    r.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("a bearer token upstream")
        .to_string()
}

#[test]
fn token_exchange_sends_an_upstream_token_never_the_users() {
    let op = shared_op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(op, &up, PORTCULLIS_CLIENT, EXCHANGE_ROUTES),
        true,
        &[SECRET_ENV],
    );
    let user = op.alice();
    let r = gw.get("/billing/statements", Some(&user));
    assert_eq!(r.status(), 200);
    let seen = up.last();
    let sent = bearer(&seen);
    assert_ne!(sent, user, "the user's token reached the upstream");
    let c = claims(&sent);
    assert_eq!(c["aud"], "https://billing.downstream.test");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"]["sub"], "portcullis", "{c}");
    assert_eq!(c["scope"], "invoices:read");
    // The second call is served from the cache: same upstream token.
    assert_eq!(gw.get("/billing/statements", Some(&user)).status(), 200);
    assert_eq!(bearer(&up.last()), sent);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_token_exchanges_total{mode="token_exchange",outcome="success"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_upstream_token_cache_total{result="hit"} 1"#),
        "{metrics}"
    );
    assert!(
        !gw.log().contains(&sent) && !gw.log().contains(&user),
        "a token was logged"
    );
}

#[test]
fn token_vault_exchange_puts_the_connection_token_in_the_configured_header() {
    let op = shared_op();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(op, &up, PORTCULLIS_CLIENT, EXCHANGE_ROUTES),
        true,
        &[SECRET_ENV],
    );
    let user = op.alice();
    assert_eq!(gw.get("/calendar/events", Some(&user)).status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("authorization"), None);
    let sent = seen
        .header("x-upstream-token")
        .expect("the connection token")
        .to_string();
    let c = claims(&sent);
    assert_eq!(c["aud"], "https://google-oauth2.connections.test");
    assert_eq!(c["sub"], "alice");
    // The policy sees input.credentials: agent-2 may not use this connection.
    let other = op.mint(json!({"sub": "alice", "client_id": "agent-2", "scope": "invoices:read"}));
    let (status, _, body) = parts(gw.get("/calendar/events", Some(&other)));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("google-oauth2"),
        "{body}"
    );
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn concurrent_misses_cause_one_exchange() {
    let op = Op::start();
    let up = Upstream::start();
    let gw = Gw::start_env(
        &yaml(&op, &up, PORTCULLIS_CLIENT, EXCHANGE_ROUTES),
        true,
        &[SECRET_ENV],
    );
    let user = op.alice();
    let before = op.token_requests();
    let url = gw.url("/billing/x");
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (url, user) = (url.clone(), user.clone());
            thread::spawn(move || {
                client()
                    .get(url)
                    .bearer_auth(user)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(
        op.token_requests() - before,
        1,
        "16 concurrent misses → one exchange call"
    );
    let tokens: std::collections::HashSet<String> = up.requests().iter().map(bearer).collect();
    assert_eq!(tokens.len(), 1);
}

#[test]
fn private_key_jwt_client_with_actor_token() {
    let op = shared_op();
    let up = Upstream::start();
    // Register the gateway as a private_key_jwt client by dynamic client registration.
    let pem = std::fs::read(repo().join("tests/keys/es256.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
    let reg: Value = client()
        .post(format!("{}/reg", op.url()))
        .json(&json!({
            "client_name": "portcullis pk", "response_types": [], "redirect_uris": [],
            "grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]},
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let client_id = reg["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("registration failed: {reg}"));
    let clients = format!(
        "  - name: gw\n    token_endpoint: \"{{op}}/token\"\n    client_id: {client_id}\n    auth: private_key_jwt\n    private_key_file: {}\n",
        repo().join("tests/keys/es256.pem").display()
    );
    let routes = EXCHANGE_ROUTES.replace(
        "scope: \"invoices:read\" }",
        "scope: \"invoices:read\", actor_token: true }",
    );
    let gw = Gw::start(&yaml(op, &up, &clients, &routes));
    let (status, _, body) = parts(gw.get("/billing/x", Some(&op.alice())));
    assert_eq!(status, 200, "{body}");
    let c = claims(&bearer(&up.last()));
    assert_eq!(c["act"]["sub"], client_id);
    assert_eq!(c["aud"], "https://billing.downstream.test");
}

#[test]
fn exchange_failures_deny() {
    let op = shared_op();
    let up = Upstream::start();
    // Token endpoint down → 503.
    let dead = PORTCULLIS_CLIENT.replace("{op}", &format!("http://127.0.0.1:{}", free_port()));
    let gw = Gw::start_env(&yaml(op, &up, &dead, EXCHANGE_ROUTES), true, &[SECRET_ENV]);
    let (status, _, body) = parts(gw.get("/billing/x", Some(&op.alice())));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    drop(gw);
    // Wrong client secret → the AS refuses the gateway's client → 502, its text not echoed.
    let gw = Gw::start_env(
        &yaml(op, &up, PORTCULLIS_CLIENT, EXCHANGE_ROUTES),
        true,
        &[("PORTCULLIS_TEST_CLIENT_SECRET", "wrong")],
    );
    let (status, _, body) = parts(gw.get("/billing/x", Some(&op.alice())));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "bad_gateway");
    assert!(
        gw.log().contains("invalid_client"),
        "the AS error is logged"
    );
    drop(gw);
    // An AS that cannot verify the subject token (another OP) → invalid_grant → 401.
    let other = Op::start();
    let gw = Gw::start_env(
        &yaml(
            op,
            &up,
            &PORTCULLIS_CLIENT.replace("{op}", &other.url()),
            EXCHANGE_ROUTES,
        ),
        true,
        &[SECRET_ENV],
    );
    let (status, challenge, body) = parts(gw.get("/billing/x", Some(&op.alice())));
    assert_eq!(status, 401, "{body}");
    assert!(challenge.unwrap().contains("invalid_token"));
    assert!(
        up.requests().is_empty(),
        "a refused request reached the upstream"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_token_exchanges_total{mode="token_exchange",outcome="rejected"} 1"#
        ),
        "{metrics}"
    );
}
