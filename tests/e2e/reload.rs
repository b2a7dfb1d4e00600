//! Hot reload (SIGHUP and `POST /admin/reload`): new scopes and policies apply, a broken file
//! or policy or a restart-only change is rejected while the old configuration keeps serving,
//! in-flight requests and pending approvals survive, unchanged issuers keep their keys.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::approval::{pay, pay_in_background, raw_get, wait_status, yaml, SECRET};
use crate::support::{
    client, config, parts, read_request, repo, standard_routes, wait_for, Gw, Op, Upstream,
};

pub(crate) const ADMIN: (&str, &str) = ("PORTCULLIS_TEST_ADMIN", "reload-admin-secret");

/// Replace the gateway's config file (`{port}` and `{admin}` filled in as at start).
pub(crate) fn rewrite(gw: &Gw, yaml: &str) {
    let text = yaml
        .replace("{port}", &gw.port.to_string())
        .replace("{admin}", &gw.admin_port.to_string());
    std::fs::write(gw.dir.path().join("portcullis.yaml"), text).unwrap();
}

fn hangup(gw: &Gw) {
    let status = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The value of the metric line starting with `name ` (0 when absent).
fn metric(gw: &Gw, name: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn reloads(gw: &Gw, outcome: &str) -> u64 {
    metric(
        gw,
        &format!("portcullis_config_reloads_total{{outcome=\"{outcome}\"}}"),
    )
}

fn generation(gw: &Gw) -> u64 {
    metric(gw, "portcullis_config_generation")
}

/// `POST /admin/reload` with the admin secret.
pub(crate) fn admin_reload(gw: &Gw) -> (u16, Value) {
    let r = client()
        .post(format!("{}/admin/reload", gw.admin_url()))
        .bearer_auth(ADMIN.1)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub(crate) fn with_admin_secret(yaml: &str) -> String {
    yaml.replace("admin: {", "admin: { token_env: PORTCULLIS_TEST_ADMIN,")
}

/// A copy of the repository's policies the test may change.
pub(crate) fn policy_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// The standard config, with its policies read from `policies`.
fn standard_yaml(op: &Op, up: &Upstream, policies: &Path) -> String {
    let yaml = config(&op.url(), &op.issuer, &up.url(), standard_routes());
    with_admin_secret(&yaml.replace(
        &repo().join("policies").display().to_string(),
        &policies.display().to_string(),
    ))
}

#[test]
fn sighup_applies_new_scopes_and_policies() {
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let policies = policy_copy();
    let yaml = standard_yaml(op, &up, policies.path());
    let gw = Gw::start_env(&yaml, true, &[ADMIN]);
    let alice = op.alice();
    // bob's role (viewer) grants invoices:read only.
    let bob = op.mint(json!({"sub": "bob", "client_id": "agent-1",
                             "scope": "invoices:read invoices:pay", "set": {"dept": "finance"}}));
    assert_eq!(gw.get("/invoices/finance/1", Some(&alice)).status(), 200);
    assert_eq!(gw.get("/payments/1", Some(&bob)).status(), 403);
    assert_eq!(generation(&gw), 1);

    std::fs::write(
        policies.path().join("maintenance.rego"),
        "package maintenance\n\ndecision := {\"allow\": false, \"reason\": \"closed for maintenance\"}\n",
    )
    .unwrap();
    let changed = yaml
        .replace("policy: invoices", "policy: maintenance")
        .replace(
            r#"require_scopes: ["invoices:pay"]"#,
            r#"require_scopes: ["invoices:read"]"#,
        );
    rewrite(&gw, &changed);
    hangup(&gw);
    wait_for("the reload", Duration::from_secs(20), || {
        generation(&gw) == 2
    });

    let (status, _, body) = parts(gw.get("/invoices/finance/1", Some(&alice)));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_description"], "closed for maintenance");
    let (status, _, body) = parts(gw.get("/payments/1", Some(&bob)));
    assert_eq!(status, 200, "the route now asks invoices:read only: {body}");
    assert_eq!(reloads(&gw, "ok"), 1);
    assert_eq!(reloads(&gw, "error"), 0);
    assert!(metric(&gw, "portcullis_config_loaded_timestamp_seconds") > 1_600_000_000);
    // Counters carry over the reload: the allowed requests before it are still counted.
    assert!(gw.metrics().contains(
        r#"portcullis_decisions_total{decision="allow",reason="allowed",route="invoices"} 1"#
    ));
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("a reload log line");
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (line["trigger"].as_str(), line["routes"].as_u64()),
        (Some("SIGHUP"), Some(4))
    );

    // And back: SIGHUP again restores the first behaviour.
    rewrite(&gw, &yaml);
    hangup(&gw);
    wait_for("the reload", Duration::from_secs(20), || {
        generation(&gw) == 3
    });
    assert_eq!(gw.get("/invoices/finance/1", Some(&alice)).status(), 200);
    let (status, challenge, body) = parts(gw.get("/payments/1", Some(&bob)));
    assert_eq!(status, 403, "{body}");
    assert!(challenge.unwrap().contains("insufficient_scope"));
}

#[test]
fn broken_files_and_restart_only_changes_are_rejected_and_the_old_config_serves() {
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let policies = policy_copy();
    let yaml = standard_yaml(op, &up, policies.path());
    let gw = Gw::start_env(&yaml, true, &[ADMIN]);
    let alice = op.alice();
    let file = gw.dir.path().join("portcullis.yaml").display().to_string();

    // A YAML syntax error, by SIGHUP: logged with file and line, counted.
    rewrite(
        &gw,
        &yaml.replace("routes:\n", "routes:\n  - name: [broken\n"),
    );
    hangup(&gw);
    wait_for("the rejection", Duration::from_secs(20), || {
        reloads(&gw, "error") == 1
    });
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload rejected"))
        .expect("an error log line");
    let line: Value = serde_json::from_str(line).unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("{file}:")), "{error}");
    assert_eq!(line["level"], "ERROR");
    assert_eq!(gw.get("/invoices/finance/1", Some(&alice)).status(), 200);

    // A validation error, by the admin endpoint: 422 with the file, line and field.
    rewrite(
        &gw,
        &yaml.replace("auth: { issuer: corp", "auth: { issuer: nope"),
    );
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_config");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("{file}:"))
            && description.contains("routes[0].auth.issuer: unknown issuer 'nope'"),
        "{description}"
    );

    // A policy that does not compile: the file and line of the Rego error.
    rewrite(&gw, &yaml);
    std::fs::write(
        policies.path().join("invoices.rego"),
        "package invoices\n\ndecision := {\n",
    )
    .unwrap();
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 422, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("invoices.rego:4:"), "{description}");
    std::fs::copy(
        repo().join("policies/invoices.rego"),
        policies.path().join("invoices.rego"),
    )
    .unwrap();

    // A setting only a restart applies.
    let other_port = crate::support::free_port();
    rewrite(
        &gw,
        &yaml.replace(
            "listen: \"127.0.0.1:{port}\"",
            &format!("listen: \"127.0.0.1:{other_port}\""),
        ),
    );
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 422, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains(":2: listen: cannot change without a restart"),
        "{description}"
    );

    // Through all of it the first configuration served, unchanged.
    assert_eq!(reloads(&gw, "error"), 4);
    assert_eq!((reloads(&gw, "ok"), generation(&gw)), (0, 1));
    let (status, _, body) = parts(gw.get("/invoices/finance/1", Some(&alice)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        gw.get("/invoices/sales/1", Some(&alice)).status(),
        403,
        "the old policy still decides"
    );
    // A good file is accepted again.
    rewrite(&gw, &yaml);
    let (status, body) = admin_reload(&gw);
    assert_eq!((status, &body["generation"]), (200, &json!(2)), "{body}");
}

#[test]
fn the_admin_reload_endpoint_needs_the_admin_secret() {
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let yaml = config(&op.url(), &op.issuer, &up.url(), standard_routes());
    let gw = Gw::start_env(&with_admin_secret(&yaml), true, &[ADMIN]);
    let url = format!("{}/admin/reload", gw.admin_url());
    let (status, challenge, body) = parts(client().post(&url).send().unwrap());
    assert_eq!(status, 401, "{body}");
    assert!(challenge.unwrap().starts_with("Bearer"));
    let r = client().post(&url).bearer_auth("wrong").send().unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(&url).bearer_auth(ADMIN.1).send().unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!((reloads(&gw, "ok"), reloads(&gw, "error")), (0, 0));
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"reloaded": true, "generation": 2, "routes": 4})
    );
    assert_eq!(generation(&gw), 2);

    // Without an admin secret the endpoint is off.
    let open = Gw::start(&yaml);
    let r = client()
        .post(format!("{}/admin/reload", open.admin_url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(generation(&open), 1);
}

/// An upstream that answers each request only when the test says so.
fn held_upstream() -> (u16, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = std::io::BufReader::new(stream);
            if read_request(&mut reader).is_none() {
                continue;
            }
            let _ = arrived_tx.send(());
            if release_rx.recv().is_err() {
                return;
            }
            let body = r#"{"slow":"done"}"#;
            let _ = write!(
                writer,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, arrived, release)
}

#[test]
fn a_request_in_flight_during_a_reload_completes() {
    let op = crate::support::shared_op();
    let up = Upstream::start();
    let (slow_port, arrived, release) = held_upstream();
    let slow_route = format!(
        "  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: \"http://127.0.0.1:{slow_port}\"\n    auth: {{ issuer: corp }}\n"
    );
    let routes = format!("{}{slow_route}", standard_routes());
    let yaml = with_admin_secret(&config(&op.url(), &op.issuer, &up.url(), &routes));
    let gw = Gw::start_env(&yaml, true, &[ADMIN]);
    let alice = op.alice();
    let (url, token) = (gw.url("/slow/report"), alice.clone());
    let call = thread::spawn(move || {
        let r = client().get(url).bearer_auth(token).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    arrived
        .recv_timeout(Duration::from_secs(20))
        .expect("the request reached the upstream");

    // The new configuration has no `slow` route at all.
    rewrite(&gw, &yaml.replace(&slow_route, ""));
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.get("/slow/report", Some(&alice)).status(), 404);

    release.send(()).unwrap();
    let (status, body) = call.join().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"slow":"done"}"#),
        "the request that began before the reload finishes on the old configuration"
    );
}

#[test]
fn pending_approvals_survive_a_reload() {
    let op = crate::approval::op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("approvals.db");
    let backchannel = format!("{}/backchannel", op.url());
    // Sync holds on `invoices`; async approvals on a second route with the same policy.
    let base = with_admin_secret(&yaml(&op, &up, &backchannel, "", Some(&store)));
    let async_route = format!(
        "  - name: invoices-async\n    match: {{ path_prefix: /later }}\n    upstream: \"{}\"\n    auth: {{ issuer: corp, require_scopes: [\"invoices:read\"] }}\n    policy: invoices\n    policy_body: true\n    approval: {{ client: gw, backchannel_endpoint: \"{backchannel}\", scope: \"invoices:pay\", mode: async }}\n",
        up.url()
    );
    let yaml = format!("{base}{async_route}");
    let gw = Gw::start_env(&yaml, true, &[SECRET, ADMIN]);
    let token = op.alice();

    let held = pay_in_background(&gw, &token, 5000);
    let sync_request = op.wait_pending();
    let r = client()
        .post(gw.url("/later/finance/INV-7/pay"))
        .bearer_auth(&token)
        .json(&json!({"amount": 5000, "currency": "EUR"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().unwrap();
    let id = body["approval_id"].as_str().unwrap().to_string();
    let location = format!("/.portcullis/approvals/{id}");
    wait_for("two pending holds", Duration::from_secs(15), || {
        metric(&gw, "portcullis_approvals_pending") == 2
    });

    // Reload (the approval limit changes) while both wait for the user.
    rewrite(
        &gw,
        &yaml.replace("max_pending_per_user: 2", "max_pending_per_user: 3"),
    );
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 200, "{body}");
    // The holds still count against the limits after the reload.
    assert_eq!(metric(&gw, "portcullis_approvals_pending"), 2);

    for p in op.pending(false) {
        op.answer("approve", p["auth_req_id"].as_str().unwrap());
    }
    let (status, body) = held.join().unwrap();
    assert_eq!(
        status, 200,
        "the sync hold completes after the reload: {body}"
    );
    assert_ne!(sync_request["auth_req_id"], Value::Null);
    wait_status(&gw, &location, &token, "approved");
    let r = client()
        .post(gw.url("/later/finance/INV-7/pay"))
        .bearer_auth(&token)
        .header("portcullis-approval", &id)
        .json(&json!({"amount": 5000, "currency": "EUR"}))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the async approval is redeemed after the reload"
    );
    assert_eq!(raw_get(gw.port, &location, &token)["status"], "used");
    assert_eq!(up.requests().len(), 2, "each call forwarded once");
    wait_for("the holds released", Duration::from_secs(15), || {
        metric(&gw, "portcullis_approvals_pending") == 0
    });
    // Small payments still pass without approval on the reloaded configuration.
    assert_eq!(pay(&gw, &token, 10, None).status(), 200);
}

#[test]
fn an_unchanged_issuer_keeps_its_keys_and_a_changed_one_refetches() {
    let op = Op::start();
    let up = Upstream::start();
    let yaml = with_admin_secret(&config(&op.url(), &op.issuer, &up.url(), standard_routes()));
    let gw = Gw::start_env(&yaml, true, &[ADMIN]);
    assert_eq!(
        gw.get("/invoices/finance/1", Some(&op.alice())).status(),
        200
    );
    let fetches = op.jwks_fetches();
    assert_eq!(fetches, 1, "the keys are fetched once at start");

    // Routes change, the issuer does not: no fetch, and new tokens verify with the kept keys.
    rewrite(&gw, &yaml.replace("/public", "/open"));
    for generation in 2..=4 {
        let (status, body) = admin_reload(&gw);
        assert_eq!((status, &body["generation"]), (200, &json!(generation)));
    }
    let fresh =
        op.mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"dept": "finance"}}));
    assert_eq!(gw.get("/invoices/finance/1", Some(&fresh)).status(), 200);
    assert_eq!(gw.get("/open/x", None).status(), 200);
    let ready = client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        op.jwks_fetches(),
        fetches,
        "no JWKS fetch for an unchanged issuer"
    );

    // The issuer's JWKS address changes: its keys are fetched again.
    let moved = yaml.replace(
        &format!("jwks_uri: \"{}/jwks\"", op.url()),
        &format!("jwks_uri: \"{}/jwks?v=2\"", op.url()),
    );
    assert_ne!(moved, yaml);
    rewrite(&gw, &moved);
    let (status, body) = admin_reload(&gw);
    assert_eq!(status, 200, "{body}");
    wait_for("the refetch", Duration::from_secs(20), || {
        op.jwks_fetches() > fetches
    });
    assert_eq!(gw.get("/invoices/finance/1", Some(&fresh)).status(), 200);
}
