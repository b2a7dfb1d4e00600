//! No leakage: one gateway runs token exchange, the vault (with a refresh) and an approval
//! hold at debug log level, plus refused calls; then everything the upstream received, the
//! gateway's whole log and `/metrics` are searched for every secret of the run. Tokens meant
//! for the upstream (exchanged, vault) may reach it, and nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support::{client, config, Gw, Op, Upstream};
use crate::vault::{connection_grant, ADMIN, KEY};

const CLIENT_SECRET: &str = "portcullis-secret";
const CONN_SECRET: &str = "agent-1-secret";

fn routes() -> &'static str {
    r#"  - name: billing
    match: { path_prefix: /billing }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      token_exchange: { client: gw, resource: ["https://billing.downstream.test"] }
  - name: repos
    match: { path_prefix: /repos }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      vault: { connection: github }
      expiry_margin_seconds: 1
  - name: invoices
    match: { path_prefix: /invoices, methods: [GET, POST] }
    upstream: "{upstream}"
    auth: { issuer: corp, require_scopes: ["invoices:read"] }
    policy: invoices
    policy_body: true
    approval: { client: gw, backchannel_endpoint: "{op}/backchannel", scope: "invoices:pay" }
"#
}

/// The line of `text` holding `secret`, the secret masked (for the failure message).
fn around(text: &str, secret: &str) -> String {
    let line = text.lines().find(|l| l.contains(secret)).unwrap_or("");
    line.replace(secret, "<SECRET>").chars().take(600).collect()
}

#[test]
fn no_secret_reaches_the_upstream_the_log_or_the_metrics() {
    let op = Op::start_env(&[("AUTO_APPROVE_MS", "200"), ("CIBA_INTERVAL", "1")]);
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let clients = format!(
        "clients:\n  - {{ name: gw, token_endpoint: \"{op}/token\", client_id: portcullis, client_secret_env: T_CLIENT_SECRET }}\n  - {{ name: github-app, token_endpoint: \"{op}/token\", client_id: agent-1, auth: client_secret_post, client_secret_env: T_CONN_SECRET }}\nvault:\n  path: {}\n  key_env: T_VAULT_KEY\n  connections: [{{ name: github, client: github-app }}]\nroutes:\n",
        dir.path().join("vault.db").display(),
        op = op.url(),
    );
    let yaml = config(
        &op.url(),
        &op.issuer,
        &up.url(),
        &routes().replace("{op}", &op.url()),
    )
    .replace("admin: {", "admin: { token_env: T_ADMIN,")
    .replace("routes:\n", &clients);
    let gw = Gw::start_env(
        &yaml,
        true,
        &[
            ("PORTCULLIS_LOG", "debug"),
            ("T_ADMIN", ADMIN),
            ("T_CLIENT_SECRET", CLIENT_SECRET),
            ("T_CONN_SECRET", CONN_SECRET),
            ("T_VAULT_KEY", KEY),
        ],
    );
    let user = op.alice();
    let c = client();

    // Token exchange.
    assert_eq!(gw.get("/billing/statements", Some(&user)).status(), 200);
    let exchanged = up.last().header("authorization").unwrap().to_string();

    // Vault: store an expired credential through the admin API; the call refreshes it.
    let grant = connection_grant(&op);
    let (access, refresh) = (
        grant["access_token"].as_str().unwrap().to_string(),
        grant["refresh_token"].as_str().unwrap().to_string(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let put = c
        .put(format!("{}/vault/credentials/github/alice", gw.admin_url()))
        .bearer_auth(ADMIN)
        .json(&json!({"access_token": access, "refresh_token": refresh, "expires_at": now - 10}))
        .send()
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(gw.get("/repos/x", Some(&user)).status(), 200);
    let vault_token = up.last().header("authorization").unwrap().to_string();
    let listed = c
        .get(format!("{}/vault/credentials?sub=alice", gw.admin_url()))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .text()
        .unwrap();

    // An approval hold, approved on the user's device.
    let r = c
        .post(gw.url("/invoices/finance/INV-7/pay"))
        .bearer_auth(&user)
        .json(&json!({"amount": 5000, "currency": "EUR"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // Refusals: a tampered token, the admin API with a wrong secret.
    let tampered = format!("{}x", &user[..user.len() - 1]);
    assert_eq!(gw.get("/billing/statements", Some(&tampered)).status(), 401);
    let wrong = c
        .get(format!("{}/vault/credentials", gw.admin_url()))
        .bearer_auth("not-the-admin-secret")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let metrics = gw.metrics();
    let log = gw.log();
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        3,
        "exchange, vault and approved calls forwarded"
    );
    assert!(log.contains("\"message\":\"request\""), "the log is empty");
    let upstream: String = seen
        .iter()
        .map(|r| {
            let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(
                "{} {}\n{}\n{}\n",
                r.method,
                r.path,
                headers.join("\n"),
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect();
    let key_material = KEY.split_once(':').unwrap().1;
    let secrets: Vec<(&str, &str)> = vec![
        ("user token", &user),
        ("tampered user token", &tampered),
        ("user token signature", user.rsplit('.').next().unwrap()),
        ("stored access token", &access),
        ("refresh token", &refresh),
        ("gateway client secret", CLIENT_SECRET),
        ("connection client secret", CONN_SECRET),
        ("vault key", key_material),
        ("admin token", ADMIN),
        ("wrong admin token", "not-the-admin-secret"),
    ];
    for (what, secret) in &secrets {
        for (place, text) in [
            ("upstream", &upstream),
            ("log", &log),
            ("metrics", &metrics),
            ("vault listing", &listed),
        ] {
            assert!(
                !text.contains(secret),
                "{what} in the {place}: {}",
                around(text, secret)
            );
        }
    }
    // Tokens issued for the upstream go there, and nowhere else.
    for (what, token) in [
        ("exchanged token", &exchanged),
        ("vault token", &vault_token),
    ] {
        let token = token.strip_prefix("Bearer ").unwrap();
        assert!(upstream.contains(token), "{what} was forwarded");
        for (place, text) in [
            ("log", &log),
            ("metrics", &metrics),
            ("vault listing", &listed),
        ] {
            assert!(
                !text.contains(token),
                "{what} in the {place}: {}",
                around(text, token)
            );
        }
    }
    // No JWT of any kind (user, exchanged, CIBA grant, assertions) in the log or metrics.
    assert!(!log.contains("eyJ"), "a JWT-shaped string in the log");
    assert!(
        !metrics.contains("eyJ"),
        "a JWT-shaped string in the metrics"
    );
}
