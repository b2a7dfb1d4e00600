//! The PostgreSQL vault: two gateway replicas on one database, a throwaway cluster per test
//! (skipped, saying so, when PostgreSQL is not installed).

use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{client, config, metric, parts, wait_for, Gw, Op, Upstream};
use crate::testdb::Cluster;
use crate::vault::{admin, connection_grant, ADMIN, KEY};

const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const ROUND_TRIPS: &str = "portcullis_vault_db_round_trips_total";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn yaml(op: &Op, up: &Upstream) -> String {
    let routes = r#"  - name: repos
    match: { path_prefix: /repos }
    upstream: "{upstream}"
    auth: { issuer: corp }
    credentials:
      vault: { connection: github }
      expiry_margin_seconds: 1
  - name: plain
    match: { path_prefix: /plain }
    upstream: "{upstream}"
    auth: { issuer: corp }
"#;
    config(&op.url(), &op.issuer, &up.url(), routes)
        .replace("admin: {", "admin: { token_env: PORTCULLIS_TEST_ADMIN,")
        .replace(
            "routes:\n",
            &format!(
                "clients:\n  - {{ name: github-app, token_endpoint: \"{}/token\", client_id: agent-1, client_secret_env: PORTCULLIS_TEST_CONN_SECRET }}\nvault:\n  postgres: {{ url_env: PORTCULLIS_VAULT_PG_URL, pool_size: 2, timeout_ms: 3000 }}\n  key_env: PORTCULLIS_TEST_VAULT_KEY\n  connections: [{{ name: github, client: github-app }}]\nroutes:\n",
                op.url(),
            ),
        )
}

fn env<'a>(url: &'a str, key: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("PORTCULLIS_TEST_ADMIN", ADMIN),
        ("PORTCULLIS_TEST_CONN_SECRET", "agent-1-secret"),
        ("PORTCULLIS_TEST_VAULT_KEY", key),
        ("PORTCULLIS_VAULT_PG_URL", url),
    ]
}

fn bearer(r: &crate::support::Recorded) -> String {
    r.header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap()
        .to_string()
}

fn round_trips(gw: &Gw) -> u64 {
    metric(&gw.metrics(), ROUND_TRIPS)
}

/// Every stored byte: the credential rows as text (bytea in hex) and the database files.
fn stored(cluster: &Cluster) -> String {
    let mut all = cluster.psql(
        "vault",
        "SELECT string_agg(t::text, ' ') FROM portcullis_vault_credentials t",
    );
    let mut stack = vec![cluster.dir().join("data")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    all
}

#[test]
fn pg_vault_is_shared_by_replicas_refreshes_once_and_survives_an_outage() {
    let Some(cluster) = Cluster::start("pg_vault_is_shared_by_replicas") else {
        return;
    };
    cluster.create_db("vault");
    let url = cluster.url("vault");
    let op = Op::start_env(&[("ACCESS_TOKEN_TTL", "3"), ("AUTO_APPROVE_MS", "0")]);
    let up = Upstream::start();
    let yaml = yaml(&op, &up);
    let a = Gw::start_env(&yaml, true, &env(&url, KEY));
    let b = Gw::start_env(&yaml, true, &env(&url, KEY));
    let alice = op.mint(json!({"sub": "alice", "scope": "invoices:read", "ttl": 600}));
    let bob = op.mint(json!({"sub": "bob", "scope": "invoices:read", "ttl": 600}));
    let grant = connection_grant(&op);
    let (access, refresh) = (
        grant["access_token"].as_str().unwrap(),
        grant["refresh_token"].as_str().unwrap(),
    );

    // Stored through replica A, expired: both replicas refresh at once.
    let put = json!({"access_token": access, "refresh_token": refresh, "expires_at": now() - 10, "scope": "invoices:read"});
    let (status, body) = admin(
        &a,
        Method::PUT,
        "/vault/credentials/github/alice",
        ADMIN,
        Some(put),
    );
    assert_eq!(status, 200, "{body}");
    let before = op.token_requests();
    let urls = [a.url("/repos/x"), b.url("/repos/x")];
    let barrier = Barrier::new(2);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = urls
            .iter()
            .map(|u| {
                let (barrier, alice) = (&barrier, &alice);
                s.spawn(move || {
                    barrier.wait();
                    let r = client().get(u).bearer_auth(alice).send().unwrap();
                    r.status().as_u16()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200, 200]);
    assert_eq!(
        op.token_requests() - before,
        1,
        "the refresh token was used twice"
    );
    let sent: Vec<String> = up.requests().iter().map(bearer).collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0], sent[1],
        "both replicas use the one refreshed token"
    );
    assert!(sent[0] != access && sent[0] != alice);
    let refreshed = sent[0].clone();
    let (_, list) = admin(&b, Method::GET, "/vault/credentials?sub=alice", ADMIN, None);
    assert_eq!(list["credentials"][0]["version"], 2, "{list}");

    // Round trips per vault-credential request (measured on replica B).
    let rt = round_trips(&b);
    assert_eq!(b.get("/repos/x", Some(&alice)).status(), 200);
    let cached = round_trips(&b) - rt;
    assert_eq!(cached, 0, "a token-cache hit must not touch the database");
    std::thread::sleep(Duration::from_secs(3)); // the access token (TTL 3 s) expires
    let rt = round_trips(&b);
    assert_eq!(b.get("/repos/x", Some(&alice)).status(), 200);
    let refresh_rts = round_trips(&b) - rt;
    let rt = round_trips(&a);
    assert_eq!(a.get("/repos/x", Some(&alice)).status(), 200);
    let stored_rts = round_trips(&a) - rt;
    eprintln!(
        "vault round trips per request: token cached {cached}, stored token fresh \
         {stored_rts}, refresh {refresh_rts} (each includes statement prepares on a new connection)"
    );
    // get; BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT (+ up to 3 prepares).
    assert!((5..=8).contains(&refresh_rts), "{refresh_rts}");
    assert!((1..=2).contains(&stored_rts), "{stored_rts}");
    assert_eq!(op.token_requests() - before, 2);
    let latest = bearer(&up.last());
    assert_ne!(latest, refreshed);

    // Encrypted at rest: no token in the rows or the database files.
    let raw = stored(&cluster);
    assert!(raw.contains("alice"), "the scan sees plaintext metadata");
    for secret in [access, refresh, refreshed.as_str(), latest.as_str()] {
        assert!(!raw.contains(secret), "a token is stored in plaintext");
    }

    // Bob's credential is in the database only (never requested, so not cached).
    let put = json!({"access_token": "gho_bob_token", "expires_in": 3600});
    let (status, _) = admin(
        &b,
        Method::PUT,
        "/vault/credentials/github/bob",
        ADMIN,
        Some(put),
    );
    assert_eq!(status, 200);

    // PostgreSQL down: the vault route answers 503, other routes keep working.
    cluster.stop();
    let r = a.get("/repos/x", Some(&bob));
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, _, body) = parts(r);
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("vault"),
        "{body}"
    );
    assert_eq!(a.get("/plain/x", Some(&bob)).status(), 200);
    assert_eq!(b.get("/plain/x", Some(&alice)).status(), 200);
    let (status, _) = admin(&a, Method::GET, "/vault/credentials", ADMIN, None);
    assert_eq!(status, 503);
    let ready = client()
        .get(format!("{}/readyz", a.admin_url()))
        .send()
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "degraded, not unready");
    let ready: Value = ready.json().unwrap();
    assert_eq!(
        ready["vault"],
        json!({"backend": "postgres", "available": false})
    );
    assert_eq!(ready["degraded"], true);
    let m = a.metrics();
    assert!(
        metric(
            &m,
            r#"portcullis_vault_backend_errors_total{backend="postgres",operation="get"}"#
        ) >= 1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"portcullis_decisions_total{decision="deny",reason="vault_unavailable",route="repos"}"#
        ),
        1,
        "{m}"
    );

    // Back up: the pool reconnects, the vault route works again.
    cluster.resume();
    wait_for("the vault to recover", Duration::from_secs(60), || {
        a.get("/repos/x", Some(&bob)).status() == 200
    });
    assert_eq!(bearer(&up.last()), "gho_bob_token");
    let ready = client()
        .get(format!("{}/readyz", a.admin_url()))
        .send()
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(ready.json::<Value>().unwrap()["degraded"], false);

    for gw in [&a, &b] {
        let log = gw.log();
        for secret in [
            cluster.password.as_str(),
            refresh,
            refreshed.as_str(),
            "gho_bob_token",
        ] {
            assert!(!log.contains(secret), "a secret was logged");
        }
    }
}

#[test]
fn pg_vault_cli_puts_lists_rotates_and_revokes() {
    let Some(cluster) = Cluster::start("pg_vault_cli") else {
        return;
    };
    cluster.create_db("vault");
    let url = cluster.url("vault");
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.yaml");
    let text = yaml(op, &up)
        .replace("{port}", "18091")
        .replace("{admin}", "18092");
    std::fs::write(&path, &text).unwrap();
    let run = |args: &[&str], stdin: &str, key: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .args(["--config", path.to_str().unwrap()])
            .envs(env(&url, key))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let put = ["vault", "put", "--connection", "github", "--sub"];
    for sub in ["bob", "carol"] {
        let (code, out) = run(
            &[&put[..], &[sub]].concat(),
            r#"{"access_token":"gho_secret123","expires_in":3600}"#,
            KEY,
        );
        assert_eq!(code, Some(0), "{out}");
    }
    let (code, out) = run(&["vault", "list"], "", KEY);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"sub\":\"bob\"")
            && out.contains("\"sub\":\"carol\"")
            && !out.contains("gho_secret123"),
        "{out}"
    );
    let two = format!("{K2},{KEY}");
    let (code, out) = run(&["vault", "rotate-key"], "", &two);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("re-encrypted 2"), "{out}");
    let (_, out) = run(&["vault", "list"], "", K2);
    assert_eq!(out.matches("\"key_id\":\"k2\"").count(), 2, "{out}");
    // The old key alone no longer opens the vault.
    let (code, out) = run(&["vault", "list"], "", KEY);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("'k2'"), "{out}");
    assert_eq!(
        run(
            &["vault", "revoke", "--connection", "github", "--sub", "bob"],
            "",
            K2
        )
        .0,
        Some(0)
    );
    let (code, out) = run(
        &["vault", "revoke", "--connection", "github", "--sub", "bob"],
        "",
        K2,
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        cluster.psql("vault", "SELECT count(*) FROM portcullis_vault_credentials"),
        "1\n"
    );

    // Exactly one backend; the URL comes from the environment, is checked, never echoed.
    let both = text.replace("  postgres:", "  path: vault.db\n  postgres:");
    let line = both.lines().position(|l| l == "vault:").unwrap() + 1;
    std::fs::write(&path, both).unwrap();
    let (code, out) = run(&["check"], "", K2);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("vault") && out.contains("exactly one of `path`"),
        "{out}"
    );
    assert!(out.contains(&format!("cli.yaml:{line}: vault:")), "{out}");
    std::fs::write(&path, &text).unwrap();
    let bad = format!(
        "postgres://u:{}@127.0.0.1:5432/x?sslmode=require",
        cluster.password
    );
    let (code, out) = run(&["check"], "", K2);
    assert_eq!(code, Some(0), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(env(&bad, K2))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vault.postgres.url_env") && err.contains("sslmode"),
        "{err}"
    );
    assert!(!err.contains(&cluster.password), "{err}");
}
