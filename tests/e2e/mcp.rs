//! MCP routes with the official MCP SDK as server and client: per-tool policy, tools/list
//! filtering (JSON and SSE), JSON-RPC denials, header/body mismatch, limits, RFC 9728.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::support::{client, config, mcp_client, shared_op, Gw, McpServer};

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
