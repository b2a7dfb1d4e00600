//! MCP 2026-07-28 multi round-trip approvals (`approval.mcp: input_required`, and `auto` for
//! 2026-07-28 clients): each round is held up to `round_seconds`, then answered
//! `input_required` with an elicitation (when the client declared it) and a sealed
//! `requestState`; the retry that finds the approval approved runs the tool once. With the
//! official Python SDK 2.x `Client` and the TypeScript `@modelcontextprotocol/client` 2.x,
//! and raw calls for hostile states.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mcp_approvals::{gateway, payer};
use crate::mcp_peer::{mcp_client, node_client, McpServer};
use crate::support::{client, metric, Gw, Op};

fn ts2_client(url: &str, token: &str, args: &[&str]) -> (i32, Value, String) {
    node_client("mcp_client_ts2.mjs", url, token, args)
}

const PAY: &str = r#"{"invoice_id":"INV-42","amount":5000}"#;

#[test]
fn python_client_survives_a_95_second_approval_through_elicitation_rounds() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &op,
        &server,
        "round_seconds: 30, max_wait_seconds: 300",
        &dir,
    );
    let started = Instant::now();
    // The first elicitation comes after round 1 (30 s); the user approves 65 s later, in the
    // middle of round 4 (90-120 s).
    let (code, out, err) = mcp_client(
        &gw.url("/mcp"),
        &payer(&op, &gw),
        &[
            "--mode",
            "2026-07-28",
            "--call",
            "pay_invoice",
            "--args",
            PAY,
            "--elicit",
            "accept",
            "--elicit-url",
            &format!("{}/approve/latest", op.url()),
            "--elicit-delay",
            "65",
        ],
    );
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(took >= Duration::from_secs(93), "{took:?}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["protocol_version"], "2026-07-28");
    assert!(v["result"].to_string().contains("paid"), "{out}");
    let elicitations = v["elicitations"].as_array().unwrap();
    assert_eq!(elicitations.len(), 3, "{out}");
    assert!(elicitations[0]["message"]
        .as_str()
        .unwrap()
        .contains("approve this call on your own device: \"Pay INV-42 5000 EUR\""));
    assert_eq!(server.runs_of("pay_invoice"), 1, "{:?}", server.tool_runs());
    assert_eq!(op.pending(true).len(), 1, "the user was asked once");
    // The client declared URL-mode elicitation: a link to this approval's status page.
    assert_eq!(elicitations[0]["mode"], "url", "{out}");
    let link = elicitations[0]["url"].as_str().unwrap();
    assert!(
        link.starts_with(&gw.url("/.portcullis/approvals/")),
        "{link}"
    );
    let page = client().get(link).send().unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().unwrap();
    assert!(
        html.contains("Pay INV-42 5000 EUR") && html.contains("approved and done"),
        "{html}"
    );
    let forged = format!("{}x", &link[..link.len() - 1]);
    assert_eq!(client().get(forged).send().unwrap().status(), 404);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_mcp_approvals_total{mode="input_required",outcome="pending"}"#
        ),
        3,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "portcullis_mcp_approval_rounds_sum"), 4);
}

#[test]
fn typescript_client_2_survives_a_95_second_approval() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    // `mcp` unset: `auto` (there is an approval store) → input_required for 2026-07-28.
    let gw = gateway(
        &op,
        &server,
        "round_seconds: 30, max_wait_seconds: 300",
        &dir,
    );
    let (url, token) = (gw.url("/mcp"), payer(&op, &gw));
    let started = Instant::now();
    let client =
        thread::spawn(move || ts2_client(&url, &token, &["--call", "pay_invoice", "--args", PAY]));
    let request = op.wait_pending();
    // Approved in the middle of round 4 (90-120 s after the call).
    thread::sleep(Duration::from_secs(95).saturating_sub(started.elapsed()));
    op.answer("approve", request["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out["protocol_version"], "2026-07-28");
    assert!(out["result"].to_string().contains("paid"), "{out}");
    assert_eq!(out["elicitations"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(server.runs_of("pay_invoice"), 1);
    assert_eq!(op.pending(true).len(), 1);
}

/// A raw 2026-07-28 `tools/call` (no SDK), as a hostile client would send it.
fn raw_call(gw: &Gw, token: &str, id: u64, args: Value, state: Option<&str>) -> Value {
    let mut params = json!({
        "name": "pay_invoice",
        "arguments": args,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    });
    if let Some(s) = state {
        params["requestState"] = json!(s);
    }
    let r = client()
        .post(gw.url("/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "pay_invoice")
        .body(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    // JSON, or the MCP server's SSE answer once forwarded.
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    serde_json::from_str(data).unwrap_or_else(|_| panic!("{text}"))
}

/// Retry (`call`) until the answer is no longer `input_required` (at most 15 s).
fn until_settled(mut call: impl FnMut() -> Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = call();
        if v["result"]["resultType"] != "input_required" {
            return v;
        }
        assert!(Instant::now() < deadline, "{v}");
    }
}

#[test]
fn hostile_request_states_are_refused_and_nothing_runs() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &op,
        &server,
        "mcp: input_required, round_seconds: 1, max_wait_seconds: 300",
        &dir,
    );
    let alice = payer(&op, &gw);
    let args = json!({"invoice_id": "INV-42", "amount": 5000});
    let first = raw_call(&gw, &alice, 1, args.clone(), None);
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    // No elicitation capability declared: a state-only round.
    assert!(first["result"].get("inputRequests").is_none(), "{first}");
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    // Still pending: the same state comes back with another round.
    let again = raw_call(&gw, &alice, 2, args.clone(), Some(&state));
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");

    let refused = |v: &Value, why: &str| {
        assert_eq!(v["error"]["code"], -32602, "{why}: {v}");
    };
    let mut tampered = state.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    refused(
        &raw_call(&gw, &alice, 3, args.clone(), Some(&tampered)),
        "tampered",
    );
    let other_args = json!({"invoice_id": "INV-42", "amount": 9000});
    refused(
        &raw_call(&gw, &alice, 4, other_args, Some(&state)),
        "other arguments",
    );
    let bob = op.mint(
        json!({"sub": "bob", "client_id": "agent-1", "scope": "invoices:read invoices:pay",
               "set": {"roles": ["finance"]},
               "resource": format!("http://127.0.0.1:{}/mcp", gw.port)}),
    );
    refused(
        &raw_call(&gw, &bob, 5, args.clone(), Some(&state)),
        "another user",
    );
    let other_agent = op.mint(json!({"sub": "alice", "client_id": "agent-2",
        "scope": "invoices:read invoices:pay", "resource": format!("http://127.0.0.1:{}/mcp", gw.port)}));
    refused(
        &raw_call(&gw, &other_agent, 6, args.clone(), Some(&state)),
        "another agent",
    );
    assert_eq!(server.runs_of("pay_invoice"), 0);

    // Approved: the retry runs the tool once; the MCP server never sees the gateway's state.
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    let done = until_settled(|| raw_call(&gw, &alice, 7, args.clone(), Some(&state)));
    assert!(done["result"].to_string().contains("paid"), "{done}");
    assert_eq!(server.runs_of("pay_invoice"), 1);
    // Replayed after use: refused, nothing runs again.
    let replay = raw_call(&gw, &alice, 8, args.clone(), Some(&state));
    assert_eq!(replay["error"]["code"], -32003, "{replay}");
    assert!(replay.to_string().contains("approval_invalid"), "{replay}");
    assert_eq!(server.runs_of("pay_invoice"), 1);
    assert_eq!(op.pending(true).len(), 1, "the user was asked once");
}

#[test]
fn a_round_started_on_one_replica_is_finished_on_another() {
    let Some(redis) = crate::redis_peer::redis_or_skip("mcp_rounds::replicas") else {
        return;
    };
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    // Both replicas serve the same resource and share Redis and the requestState key.
    let resource = "https://mcp.portcullis.test/mcp";
    let routes = format!(
        r#"  - name: mcp
    kind: mcp
    match: {{ path_prefix: /mcp }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: mcp_invoices
    mcp: {{ resource: "{resource}" }}
    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", mcp: input_required, round_seconds: 1 }}
"#,
        op = op.url()
    );
    let yaml = crate::support::config(&op.url(), &op.issuer, &server.url(), &routes)
        .replace(r#"audiences: ["#, &format!(r#"audiences: ["{resource}", "#))
        .replace(
            "routes:\n",
            &format!(
                "clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, \
                 client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\n\
                 approvals: {{ state_key_env: PORTCULLIS_TEST_STATE_KEY }}\n\
                 state:\n  backend: redis\n  redis: {{ url: \"{}\", key_prefix: \"pc-mrtr:\" }}\n\
                 routes:\n",
                op.url(),
                redis.url()
            ),
        );
    let env = [
        ("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret"),
        (
            "PORTCULLIS_TEST_STATE_KEY",
            "s1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ];
    let a = Gw::start_env(&yaml, true, &env);
    let b = Gw::start_env(&yaml, true, &env);
    let alice = op.mint(json!({"sub": "alice", "client_id": "agent-1",
                              "scope": "invoices:read invoices:pay", "resource": resource}));
    let args = json!({"invoice_id": "INV-42", "amount": 5000});
    let first = raw_call(&a, &alice, 1, args.clone(), None);
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    let done = until_settled(|| raw_call(&b, &alice, 2, args.clone(), Some(&state)));
    assert!(done["result"].to_string().contains("paid"), "{done}");
    assert_eq!(server.runs_of("pay_invoice"), 1);
    // Replayed on the first replica: used, refused.
    let replay = raw_call(&a, &alice, 3, args, Some(&state));
    assert!(replay.to_string().contains("approval_invalid"), "{replay}");
    assert_eq!(server.runs_of("pay_invoice"), 1);
    assert_eq!(op.pending(true).len(), 1);
}

#[test]
fn a_denial_or_a_decline_at_the_client_runs_nothing() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &op,
        &server,
        "round_seconds: 2, max_wait_seconds: 300",
        &dir,
    );
    let (url, token) = (gw.url("/mcp"), payer(&op, &gw));
    let call = |answer: &'static str, invoice: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        thread::spawn(move || {
            let args = format!(r#"{{"invoice_id":"{invoice}","amount":5000}}"#);
            mcp_client(
                &url,
                &token,
                &[
                    "--mode",
                    "2026-07-28",
                    "--call",
                    "pay_invoice",
                    "--args",
                    &args,
                    "--elicit",
                    answer,
                ],
            )
        })
    };
    // The user denies on their device: the next round refuses with the reason.
    let client = call("accept", "INV-1");
    op.answer("deny", op.wait_pending()["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("the user denied this request"),
        "{out}{err}"
    );
    // The person at the client declines the elicitation: withdrawn, refused.
    let client = call("decline", "INV-2");
    let (code, out, err) = client.join().unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("denied"), "{out}{err}");
    assert_eq!(server.runs_of("pay_invoice"), 0, "{:?}", server.tool_runs());
    assert_eq!(op.pending(true).len(), 2);
}
