//! The built-in vault: credentials stored through the admin API, refreshed with rotation at
//! the real OpenID Provider, encrypted at rest, surviving a restart, revocable.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{client, config, parts, Gw, Op, Upstream};

pub const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
pub const ADMIN: &str = "admin-secret-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A user grant with a refresh token: agent-1 asks alice by CIBA (auto-approved).
pub fn connection_grant(op: &Op) -> Value {
    let c = client();
    let r: Value = c
        .post(format!("{}/backchannel", op.url()))
        .basic_auth("agent-1", Some("agent-1-secret"))
        .form(&[
            ("scope", "openid offline_access invoices:read"),
            ("login_hint", "alice"),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = r["auth_req_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    for _ in 0..50 {
        let t: Value = c
            .post(format!("{}/token", op.url()))
            .basic_auth("agent-1", Some("agent-1-secret"))
            .form(&[
                ("grant_type", "urn:openid:params:grant-type:ciba"),
                ("auth_req_id", id.as_str()),
            ])
            .send()
            .unwrap()
            .json()
            .unwrap();
        if t["refresh_token"].is_string() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no CIBA grant");
}

fn yaml(op: &Op, up: &Upstream, dir: &std::path::Path) -> String {
    let routes = r#"  - name: repos
    match: { path_prefix: /repos }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      vault: { connection: github }
      expiry_margin_seconds: 1
"#;
    config(&op.url(), &op.issuer, &up.url(), routes)
        .replace("admin: {", "admin: { token_env: PORTCULLIS_TEST_ADMIN,")
        .replace(
            "routes:\n",
            &format!(
                "clients:\n  - {{ name: github-app, token_endpoint: \"{}/token\", client_id: agent-1, client_secret_env: PORTCULLIS_TEST_CONN_SECRET }}\nvault:\n  path: {}\n  key_env: PORTCULLIS_TEST_VAULT_KEY\n  connections: [{{ name: github, client: github-app }}]\nroutes:\n",
                op.url(),
                dir.join("vault.db").display()
            ),
        )
}

fn start(yaml: &str, key: &str) -> Gw {
    Gw::start_env(
        yaml,
        true,
        &[
            ("PORTCULLIS_TEST_ADMIN", ADMIN),
            ("PORTCULLIS_TEST_CONN_SECRET", "agent-1-secret"),
            ("PORTCULLIS_TEST_VAULT_KEY", key),
        ],
    )
}

pub fn admin(
    gw: &Gw,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = client()
        .request(method, format!("{}{path}", gw.admin_url()))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn bearer(up: &Upstream) -> String {
    up.last()
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

#[test]
fn vault_refreshes_with_rotation_survives_restart_and_revokes() {
    let op = Op::start_env(&[("ACCESS_TOKEN_TTL", "3"), ("AUTO_APPROVE_MS", "0")]);
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml(&op, &up, dir.path());
    let user = op.mint(json!({"sub": "alice", "scope": "invoices:read", "ttl": 600}));
    let grant = connection_grant(&op);
    let (access, refresh) = (
        grant["access_token"].as_str().unwrap(),
        grant["refresh_token"].as_str().unwrap(),
    );

    let gw = start(&yaml, KEY);
    // No credential yet: consent required, nothing forwarded.
    let (status, _, body) = parts(gw.get("/repos/x", Some(&user)));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("consent_required")),
        "{body}"
    );
    assert_eq!(body["connection"], "github");

    // The admin API needs its secret.
    let put = json!({"access_token": access, "refresh_token": refresh, "expires_at": now() - 10, "scope": "invoices:read"});
    assert_eq!(
        admin(
            &gw,
            reqwest::Method::PUT,
            "/vault/credentials/github/alice",
            "wrong",
            Some(put.clone())
        )
        .0,
        401
    );
    let (status, body) = admin(
        &gw,
        reqwest::Method::PUT,
        "/vault/credentials/github/alice",
        ADMIN,
        Some(put),
    );
    assert_eq!(status, 200, "{body}");

    // Stored expired: the gateway refreshes, the upstream gets the new access token.
    let before = op.token_requests();
    assert_eq!(gw.get("/repos/x", Some(&user)).status(), 200);
    assert_eq!(op.token_requests() - before, 1);
    let first = bearer(&up);
    assert_ne!(first, access);
    assert_ne!(first, user);
    let (_, list) = admin(
        &gw,
        reqwest::Method::GET,
        "/vault/credentials?sub=alice",
        ADMIN,
        None,
    );
    let row = &list["credentials"][0];
    assert_eq!(
        (row["connection"].as_str(), row["version"].as_u64()),
        (Some("github"), Some(2)),
        "{list}"
    );
    assert!(
        !list.to_string().contains(&first) && !list.to_string().contains(refresh),
        "list shows a token"
    );

    // Encrypted at rest, private file.
    let mut raw = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        raw.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    let raw = String::from_utf8_lossy(&raw);
    for secret in [access, refresh, first.as_str()] {
        assert!(!raw.contains(secret), "a token is stored in plaintext");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("vault.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Restart; once the access token expires the rotated refresh token (from the file) works.
    drop(gw);
    let gw = start(&yaml, KEY);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gw.get("/repos/x", Some(&user)).status(), 200);
    let second = bearer(&up);
    assert_ne!(second, first);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_vault_refresh_total{outcome="success"} 1"#),
        "{metrics}"
    );

    // Revoke → the next call is refused, even though a token was cached.
    let (status, _) = admin(
        &gw,
        reqwest::Method::DELETE,
        "/vault/credentials/github/alice",
        ADMIN,
        None,
    );
    assert_eq!(status, 200);
    let (status, _, body) = parts(gw.get("/repos/x", Some(&user)));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("consent_required"))
    );
    assert_eq!(up.requests().len(), 2);
    assert!(
        !gw.log().contains(refresh) && !gw.log().contains(&second),
        "a token was logged"
    );
    drop(gw);

    // A wrong key is a clear start-up error.
    let path = gw_config(dir.path(), &yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env("PORTCULLIS_TEST_ADMIN", ADMIN)
        .env("PORTCULLIS_TEST_CONN_SECRET", "x")
        .env("PORTCULLIS_TEST_VAULT_KEY", OTHER_KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vault") && err.contains("k1"), "{err}");
}

/// Write the config with fixed ports so the CLI can read it.
fn gw_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("cli.yaml");
    std::fs::write(
        &path,
        yaml.replace("{port}", "18081").replace("{admin}", "18082"),
    )
    .unwrap();
    path
}

#[test]
fn vault_cli_puts_lists_and_revokes_offline() {
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let path = gw_config(dir.path(), &yaml(op, &up, dir.path()));
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("vault")
            .args(args)
            .args(["--config", path.to_str().unwrap()])
            .env("PORTCULLIS_TEST_ADMIN", ADMIN)
            .env("PORTCULLIS_TEST_CONN_SECRET", "x")
            .env("PORTCULLIS_TEST_VAULT_KEY", KEY)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(
        &["put", "--connection", "github", "--sub", "bob"],
        r#"{"access_token":"gho_secret123","expires_in":3600}"#,
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["list"], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"sub\":\"bob\"") && !out.contains("gho_secret123"),
        "{out}"
    );
    let (code, out) = run(
        &["put", "--connection", "gitlab", "--sub", "bob"],
        r#"{"access_token":"x"}"#,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unknown vault connection"), "{out}");
    assert_eq!(
        run(&["revoke", "--connection", "github", "--sub", "bob"], "").0,
        Some(0)
    );
    let (code, out) = run(&["revoke", "--connection", "github", "--sub", "bob"], "");
    assert_eq!(code, Some(1), "{out}");
}
