//! MCP routes with the official MCP SDK as server and client: per-tool policy, tools/list
//! filtering (JSON and SSE), JSON-RPC denials, header/body mismatch, limits, RFC 9728.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::mcp_peer::{mcp_client, McpServer};
use crate::support::{client, config, shared_op, Gw};

fn yaml(op_url: &str, issuer: &str, server: &McpServer) -> String {
    let routes = r#"  - name: mcp
    kind: mcp
    match: { path_prefix: /mcp }
    upstream: "{upstream}"
    auth: { issuer: corp, require_scopes: ["invoices:read"] }
    policy: mcp_invoices
    max_body_bytes: 4096
    mcp: { resource: "http://127.0.0.1:{port}/mcp" }
"#;
    config(op_url, issuer, &server.url(), routes).replace(
        r#"audiences: ["#,
        r#"audiences: ["http://127.0.0.1:{port}/mcp", "#,
    )
}

fn token(gw: &Gw, scope: &str) -> String {
    shared_op().mint(json!({"sub": "alice", "scope": scope, "resource": format!("http://127.0.0.1:{}/mcp", gw.port)}))
}

fn post(gw: &Gw, token: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = client()
        .post(gw.url("/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn tools(out: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|_| panic!("client output: {out}"));
    v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sdk_client_sees_only_allowed_tools_and_denials_as_errors() {
    let op = shared_op();
    for (json_mode, mode) in [(true, "auto"), (false, "legacy")] {
        let server = McpServer::start(json_mode);
        let gw = Gw::start(&yaml(&op.url(), &op.issuer, &server));
        let url = gw.url("/mcp");
        let reader = token(&gw, "invoices:read");
        // tools/list through the gateway: only what the policy lets a reader call.
        let (code, out, err) = mcp_client(
            &url,
            &reader,
            &[
                "--mode",
                mode,
                "--call",
                "read_invoice",
                "--args",
                r#"{"invoice_id":"INV-1"}"#,
            ],
        );
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert_eq!(tools(&out), vec!["read_invoice"], "{mode}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let text = v["result"].to_string();
        assert!(text.contains("INV-1"), "{text}");
        assert!(
            text.contains("upstream_saw_authorization") && !text.contains("Bearer"),
            "the user's token reached the MCP server: {text}"
        );
        // A payer sees pay_invoice too; nobody sees delete_all.
        let payer = token(&gw, "invoices:read invoices:pay");
        let (_, out, err) = mcp_client(&url, &payer, &["--mode", mode]);
        assert_eq!(
            tools(&out),
            vec!["read_invoice", "pay_invoice"],
            "{mode}: {err}"
        );
        // A denied call: the SDK surfaces the JSON-RPC error with the policy's reason.
        let (code, out, err) = mcp_client(&url, &payer, &["--mode", mode, "--call", "delete_all"]);
        assert_ne!(code, 0, "{out}");
        assert!(
            (out.clone() + &err).contains("delete_all is never allowed for agents"),
            "{mode}: {out}{err}"
        );
        assert!(
            !server
                .requests()
                .iter()
                .any(|r| r.to_string().contains("delete_all")),
            "a denied call reached the MCP server"
        );
        let metrics = gw.metrics();
        assert!(metrics.contains(r#"portcullis_mcp_requests_total{decision="deny",method="tools/call",route="mcp",tool="delete_all"} 1"#), "{metrics}");
    }
}

#[test]
fn json_rpc_errors_for_bad_bodies_headers_and_batches() {
    let op = shared_op();
    let server = McpServer::start(true);
    let gw = Gw::start(&yaml(&op.url(), &op.issuer, &server));
    let t = token(&gw, "invoices:read invoices:pay");
    let (status, body) = post(&gw, &t, "{not json", &[]);
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{body}"
    );
    let (status, body) = post(
        &gw,
        &t,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
        &[],
    );
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "{body}"
    );
    // 2026-07-28 headers must match the body: no smuggling another tool past the policy.
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}"#;
    let (status, body) = post(
        &gw,
        &t,
        call,
        &[("mcp-method", "tools/call"), ("mcp-name", "read_invoice")],
    );
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "{body}"
    );
    // Oversize: 413 with a JSON-RPC error, nothing truncated or forwarded.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"read_invoice","arguments":{{"invoice_id":"{}"}}}}}}"#,
        "x".repeat(5000)
    );
    let (status, body) = post(&gw, &t, &big, &[]);
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (413, Some(-32600)),
        "{body}"
    );
    // A batch with one denied element is refused whole, with an error per request.
    let batch = r#"[{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"read_invoice","arguments":{"invoice_id":"INV-1"}}},
                   {"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}]"#;
    let (status, body) = post(&gw, &t, batch, &[]);
    assert_eq!(status, 200, "{body}");
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["id"], 11);
    assert!(items[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("never allowed"));
    assert!(items[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("element 1"));
    // The same canonical path decides on every spelling of it: no path trick reaches the
    // MCP server without the per-tool decision.
    let (_, direct) = post(&gw, &t, call, &[]);
    assert!(direct["error"]["code"].is_i64(), "{direct}");
    for (path, want) in [
        ("/MCP", 200),
        ("/mc%70", 200),
        ("//mcp", 400),
        ("/mcp;x=1", 400),
    ] {
        let r = client()
            .post(gw.url(path))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call)
            .send()
            .unwrap();
        assert_eq!(r.status(), want, "{path}");
        if want == 200 {
            let body: Value = r.json().unwrap();
            assert_eq!(body["error"], direct["error"], "{path}");
        }
    }
    assert!(
        server.requests().iter().all(|r| r["method"] != "POST"),
        "something was forwarded"
    );
}

#[test]
fn protected_resource_metadata_and_audience() {
    let op = shared_op();
    let server = McpServer::start(true);
    let gw = Gw::start(&yaml(&op.url(), &op.issuer, &server));
    let resource = format!("http://127.0.0.1:{}/mcp", gw.port);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let doc: Value = client().get(gw.url(path)).send().unwrap().json().unwrap();
        assert_eq!(doc["resource"], resource.as_str(), "{path}");
        assert_eq!(doc["authorization_servers"], json!([op.issuer]));
        assert_eq!(doc["scopes_supported"], json!(["invoices:read"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    // 401 challenges point at the metadata.
    let r = client().post(gw.url("/mcp")).body("{}").send().unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp\"",
            gw.port
        )),
        "{challenge}"
    );
    // RFC 8707: a token for another resource of the same issuer is refused.
    let other = op.mint(json!({"sub": "alice", "scope": "invoices:read"}));
    let (status, _) = post(
        &gw,
        &other,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    );
    assert_eq!(status, 401);
    // A GET (SSE stream) needs a token too.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
}

#[test]
fn tool_call_approval_and_exchanged_token_on_an_mcp_route() {
    let op = crate::support::Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(true);
    let extra = format!(
        r#"    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", max_wait_seconds: 30 }}
    credentials:
      token_exchange: {{ client: gw, resource: ["https://invoices.mcp.test"], scope: "invoices:read" }}
"#,
        op = op.url()
    );
    let yaml = yaml(&op.url(), &op.issuer, &server)
        .replace("routes:\n", &format!("clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\nroutes:\n", op.url()))
        + &extra;
    let gw = Gw::start_env(
        &yaml,
        true,
        &[("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret")],
    );
    let url = gw.url("/mcp");
    let payer = op.mint(json!({"sub": "alice", "scope": "invoices:read invoices:pay", "resource": format!("http://127.0.0.1:{}/mcp", gw.port)}));
    // The MCP server gets a token exchanged for it, never the user's.
    let (code, out, err) = mcp_client(
        &url,
        &payer,
        &[
            "--call",
            "read_invoice",
            "--args",
            r#"{"invoice_id":"INV-42"}"#,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let text = v["result"].to_string();
    let signature = payer.rsplit('.').next().unwrap();
    assert!(
        text.contains("Bearer ey") && !text.contains(signature),
        "{text}"
    );
    let inner: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let sent = inner["upstream_saw_authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sent.split('.').nth(1).unwrap())
        .unwrap();
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["aud"], "https://invoices.mcp.test");
    assert_eq!(claims["act"]["sub"], "portcullis");
    // A large payment is held until the user approves it on their device.
    let (url2, payer2) = (url.clone(), payer.clone());
    let call = std::thread::spawn(move || {
        mcp_client(
            &url2,
            &payer2,
            &[
                "--call",
                "pay_invoice",
                "--args",
                r#"{"invoice_id":"INV-42","amount":5000}"#,
            ],
        )
    });
    let asked = op.wait_pending();
    assert_eq!(asked["binding_message"], "Pay INV-42 5000 EUR");
    assert_eq!(asked["authorization_details"][0]["type"], "tool_call");
    op.answer("approve", asked["auth_req_id"].as_str().unwrap());
    let (code, out, err) = call.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paid"), "{out}");
    // Denied by the user: a JSON-RPC error the client shows.
    let (url3, payer3) = (url.clone(), payer.clone());
    let call = std::thread::spawn(move || {
        mcp_client(
            &url3,
            &payer3,
            &[
                "--call",
                "pay_invoice",
                "--args",
                r#"{"invoice_id":"INV-1","amount":7000}"#,
            ],
        )
    });
    op.answer("deny", op.wait_pending()["auth_req_id"].as_str().unwrap());
    let (code, out, err) = call.join().unwrap();
    assert_ne!(code, 0);
    assert!((out + &err).contains("the user denied this request"));
}

#[test]
fn rate_limits_per_agent_and_per_tool() {
    let op = shared_op();
    let server = McpServer::start(true);
    let yaml = yaml(&op.url(), &op.issuer, &server).replace(
        "    mcp: { resource:",
        "    rate_limit: { agent: { per_second: 0.1, burst: 6 }, tool: { per_second: 0.1, burst: 2 } }\n    mcp: { resource:",
    );
    let gw = Gw::start(&yaml);
    let t = token(&gw, "invoices:read");
    let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"read_invoice","arguments":{"invoice_id":"INV-1"}}}"#;
    // Per agent and tool: the third call in a row is a JSON-RPC error with a retry hint.
    for _ in 0..2 {
        let (status, body) = post(&gw, &t, call, &[]);
        assert!(body["error"]["code"] != -32003, "{status} {body}");
    }
    let (status, body) = post(&gw, &t, call, &[]);
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (200, Some(-32003)),
        "{body}"
    );
    assert_eq!(body["id"], 5);
    assert!(
        body["error"]["data"]["retry_after"].as_u64().unwrap() >= 1,
        "{body}"
    );
    // Other methods still pass until the agent's own bucket (6) is empty: then HTTP 429.
    let list = r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#;
    let mut last = 0;
    for _ in 0..4 {
        last = post(&gw, &t, list, &[]).0;
    }
    assert_eq!(last, 429);
    let r = client()
        .post(gw.url("/mcp"))
        .bearer_auth(&t)
        .body(list)
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}
