//! MCP approvals that outlive client time-outs (issue 14), with the official TypeScript SDK
//! 1.x client (`tests/peers/mcp_client_ts1.mjs`, protocol 2025-11-25), the real OP (CIBA) and
//! the official Python SDK as the MCP server, which logs every tool run:
//! - a held call the client cancels (`notifications/cancelled` after its time-out) stops at
//!   once: the tool never runs, even when the user approves later;
//! - `approval.mcp: retry_hint`: the call is answered within `round_seconds` with a tool error
//!   asking the agent to call again; the identical re-call joins the same approval (the user is
//!   asked once) and, once approved, runs exactly once.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mcp_peer::{ts1_client, McpServer};
use crate::support::{config, metric, Gw, Op};

/// An MCP route whose payments over 1000 need approval (policy `mcp_invoices`); `approval`
/// is the route's `approval:` block body.
pub fn gateway(op: &Op, server: &McpServer, approval: &str, dir: &tempfile::TempDir) -> Gw {
    let routes = format!(
        r#"  - name: mcp
    kind: mcp
    match: {{ path_prefix: /mcp }}
    upstream: "{{upstream}}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: mcp_invoices
    mcp: {{ resource: "http://127.0.0.1:{{port}}/mcp" }}
    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", {approval} }}
"#,
        op = op.url()
    );
    let yaml = config(&op.url(), &op.issuer, &server.url(), &routes)
        .replace(
            r#"audiences: ["#,
            r#"audiences: ["http://127.0.0.1:{port}/mcp", "#,
        )
        .replace(
            "routes:\n",
            &format!(
                "clients:\n  - {{ name: gw, token_endpoint: \"{}/token\", client_id: portcullis, \
                 client_secret_env: PORTCULLIS_TEST_CLIENT_SECRET }}\n\
                 approvals: {{ store: \"{}\" }}\nroutes:\n",
                op.url(),
                dir.path().join("approvals.db").display()
            ),
        );
    Gw::start_env(
        &yaml,
        true,
        &[("PORTCULLIS_TEST_CLIENT_SECRET", "portcullis-secret")],
    )
}

pub fn payer(op: &Op, gw: &Gw) -> String {
    op.mint(
        json!({"sub": "alice", "client_id": "agent-1", "scope": "invoices:read invoices:pay",
                   "resource": format!("http://127.0.0.1:{}/mcp", gw.port)}),
    )
}

/// CIBA requests the OP received (any status).
fn asked(op: &Op) -> Vec<Value> {
    op.pending(true)
}

#[test]
fn a_cancelled_hold_never_runs_the_tool_even_when_approved_later() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&op, &server, "mcp: hold, max_wait_seconds: 120", &dir);
    let (url, token) = (gw.url("/mcp"), payer(&op, &gw));
    let started = Instant::now();
    // The TypeScript SDK's default: give up after 60 s, send notifications/cancelled, and
    // leave the HTTP request open.
    let client = thread::spawn(move || {
        ts1_client(
            &url,
            &token,
            &[
                "--call",
                "pay_invoice",
                "--args",
                r#"{"invoice_id":"INV-42","amount":5000}"#,
            ],
        )
    });
    let request = op.wait_pending();
    let (code, out, err) = client.join().unwrap();
    let gave_up = started.elapsed();
    assert_eq!(code, 2, "{out} {err}");
    assert_eq!(out["error"]["code"], -32001, "{out}");
    assert!(gave_up >= Duration::from_secs(59), "{gave_up:?}");
    assert!(err.contains("notifications/cancelled"), "{err}");
    // The hold ended at the cancellation: the user's late approval forwards nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw.metrics(), "portcullis_mcp_cancellations_total") < 1 {
        assert!(Instant::now() < deadline, "{}", gw.metrics());
        thread::sleep(Duration::from_millis(100));
    }
    let polls = op.token_requests();
    thread::sleep(Duration::from_secs(15)); // approve at ~75 s
    op.answer("approve", request["auth_req_id"].as_str().unwrap());
    thread::sleep(Duration::from_secs(3));
    assert_eq!(server.runs_of("pay_invoice"), 0, "{:?}", server.tool_runs());
    assert_eq!(
        op.token_requests(),
        polls,
        "the gateway kept polling after the cancellation"
    );
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_mcp_approvals_total{mode="hold",outcome="cancelled"}"#
        ),
        1,
        "{metrics}"
    );
    assert!(gw.log().contains("approval_cancelled"), "{}", gw.log());
}

#[test]
fn retry_hint_joins_the_pending_approval_and_runs_the_tool_once() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &op,
        &server,
        "mcp: retry_hint, round_seconds: 3, max_wait_seconds: 120",
        &dir,
    );
    let (url, token) = (gw.url("/mcp"), payer(&op, &gw));
    let call = |args: &'static str, retry: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        thread::spawn(move || {
            ts1_client(
                &url,
                &token,
                &[
                    "--call",
                    "pay_invoice",
                    "--args",
                    args,
                    "--retry-after-error",
                    retry,
                ],
            )
        })
    };
    // Approved between the first call's answer (3 s) and the agent's re-call (3 + 6 s).
    let client = call(r#"{"invoice_id":"INV-42","amount":5000}"#, "6");
    let request = op.wait_pending();
    assert_eq!(request["binding_message"], "Pay INV-42 5000 EUR");
    thread::sleep(Duration::from_secs(5));
    op.answer("approve", request["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_eq!(code, 0, "{out} {err}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{out}");
    assert_eq!(results[0]["isError"], true, "{out}");
    let hint = results[0]["content"][0]["text"].as_str().unwrap();
    assert!(
        hint.contains("Call the tool `pay_invoice` again with exactly the same arguments"),
        "{hint}"
    );
    assert!(results[1]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("paid"));
    assert_eq!(server.runs_of("pay_invoice"), 1, "{:?}", server.tool_runs());
    assert_eq!(asked(&op).len(), 1, "the user was asked once");

    // Denied: the re-call gets the refusal, the tool never runs, nobody is asked again.
    let client = call(r#"{"invoice_id":"INV-1","amount":7000}"#, "6");
    let request = op.wait_pending();
    thread::sleep(Duration::from_secs(5));
    op.answer("deny", request["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_ne!(code, 0, "{out} {err}");
    let last = serde_json::to_string(&out).unwrap();
    assert!(last.contains("denied"), "{last}");
    assert_eq!(server.runs_of("pay_invoice"), 1, "{:?}", server.tool_runs());
    assert_eq!(asked(&op).len(), 2);

    // The same call approved within the first round runs at once, with no hint.
    let client = call(r#"{"invoice_id":"INV-7","amount":2000}"#, "6");
    let request = op.wait_pending();
    op.answer("approve", request["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out["results"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(server.runs_of("pay_invoice"), 2);

    let metrics = gw.metrics();
    for (series, want) in [
        (
            r#"portcullis_mcp_approvals_total{mode="retry_hint",outcome="pending"}"#,
            2,
        ),
        (
            r#"portcullis_mcp_approvals_total{mode="retry_hint",outcome="approved"}"#,
            2,
        ),
        (
            r#"portcullis_mcp_approvals_total{mode="retry_hint",outcome="approval_denied"}"#,
            1,
        ),
        ("portcullis_mcp_approval_rounds_count", 3),
        ("portcullis_mcp_approval_rounds_sum", 5),
    ] {
        assert_eq!(metric(&metrics, series), want, "{series}\n{metrics}");
    }
}

#[test]
fn progress_keeps_a_2025_client_waiting_through_a_90_second_approval() {
    let op = Op::start_env(&[("CIBA_INTERVAL", "1")]);
    let server = McpServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    // `mcp` unset with an approval store: `auto`, which picks `progress` for a 2025 call
    // carrying a progress token.
    let gw = gateway(&op, &server, "max_wait_seconds: 300", &dir);
    let (url, token) = (gw.url("/mcp"), payer(&op, &gw));
    let started = Instant::now();
    let client = thread::spawn(move || {
        ts1_client(
            &url,
            &token,
            &[
                "--call",
                "pay_invoice",
                "--args",
                r#"{"invoice_id":"INV-42","amount":5000}"#,
                "--progress",
            ],
        )
    });
    let request = op.wait_pending();
    thread::sleep(Duration::from_secs(90).saturating_sub(started.elapsed()));
    assert_eq!(
        server.runs_of("pay_invoice"),
        0,
        "nothing runs before the approval"
    );
    op.answer("approve", request["auth_req_id"].as_str().unwrap());
    let (code, out, err) = client.join().unwrap();
    assert_eq!(code, 0, "{out} {err}");
    assert!(started.elapsed() >= Duration::from_secs(90));
    assert!(out["result"].to_string().contains("paid"), "{out}");
    let progress = err.matches("progress_notification").count();
    assert!(progress >= 15, "{progress} progress notifications: {err}");
    assert!(err.contains("waiting for alice to approve on their device: Pay INV-42 5000 EUR"));
    assert_eq!(server.runs_of("pay_invoice"), 1);
    assert_eq!(asked(&op).len(), 1);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_mcp_approvals_total{mode="progress",outcome="approved"}"#
        ),
        1,
        "{metrics}"
    );
}
