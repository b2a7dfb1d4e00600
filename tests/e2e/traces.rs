//! OTLP traces against a real OTLP/HTTP receiver (built on the official `opentelemetry-proto`
//! package, `tests/peers/otlp_receiver.py`): the request span continues the caller's
//! `traceparent`, its children are the policy evaluation, an on-demand JWKS fetch, the CIBA
//! start and polls and the upstream call, the upstream receives the gateway's `traceparent`,
//! and no span attribute holds a token or the user.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::approval::{op, yaml, SECRET};
use crate::support::{client, free_port, repo, wait_for, Gw, Upstream};

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start() -> Receiver {
        let python = repo().join(".venv/bin/python");
        assert!(python.exists(), ".venv is missing: run scripts/test");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let port = free_port();
        let child = Command::new(python)
            .arg(repo().join("tests/peers/otlp_receiver.py"))
            .arg(port.to_string())
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("OTLP receiver", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The spans of trace `trace_id`, once `want` of them have arrived.
    fn trace(&self, trace_id: &str, want: usize) -> Vec<Value> {
        let mut found = Vec::new();
        wait_for("exported spans", Duration::from_secs(20), || {
            found = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            found.len() >= want
        });
        found
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[test]
fn request_spans_continue_the_callers_trace_and_reach_the_collector() {
    let receiver = Receiver::start();
    let op = op();
    let up = Upstream::start();
    let telemetry = format!(
        "telemetry: {{ otlp: {{ endpoint: \"http://127.0.0.1:{}\", service_name: portcullis-test }} }}\nroutes:\n",
        receiver.port
    );
    let config = yaml(&op, &up, &format!("{}/backchannel", op.url()), "", None).replacen(
        "routes:\n",
        &telemetry,
        1,
    );
    let gw = Gw::start_env(&config, true, &[SECRET, ("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    let token = op.alice();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = client()
        .get(gw.url("/invoices/finance/INV-1"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let spans = receiver.trace(trace_id, 3);
    let request = named(&spans, "portcullis request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    assert_eq!(
        request["parent_span_id"], caller_span,
        "continues the caller's span"
    );
    assert_eq!(request["kind"], 2, "server span");
    assert_eq!(request["service"], "portcullis-test");
    let attrs = &request["attributes"];
    assert_eq!(attrs["portcullis.route"], "invoices");
    assert_eq!(attrs["portcullis.decision"], "allow");
    assert_eq!(attrs["portcullis.outcome"], "allowed");
    assert_eq!(attrs["portcullis.agent"], "agent-1");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.response.status_code"], 200);
    let id = request["span_id"].as_str().unwrap();
    let policy = named(&spans, "policy");
    assert_eq!(policy.len(), 1, "{spans:#?}");
    assert_eq!(policy[0]["parent_span_id"], id);
    let upstream = named(&spans, "upstream");
    assert_eq!(upstream.len(), 1, "{spans:#?}");
    assert_eq!(upstream[0]["parent_span_id"], id);
    assert_eq!(upstream[0]["kind"], 3, "client span");
    // The upstream's parent is the gateway's upstream span, in the caller's trace.
    let sent = up.last();
    let traceparent = sent.header("traceparent").unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{trace_id}-{}-01",
            upstream[0]["span_id"].as_str().unwrap()
        )
    );

    // A refused request is traced too (decision deny), without a caller's traceparent.
    let r = client()
        .get(gw.url("/invoices/sales/INV-1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    wait_for(
        "the refused request's span",
        Duration::from_secs(20),
        || {
            receiver.spans().iter().any(|s| {
                s["name"] == "portcullis request"
                    && s["attributes"]["portcullis.outcome"] == "policy_denied"
                    && s["attributes"]["http.response.status_code"] == 403
            })
        },
    );

    // New signing keys: the request that meets the new kid fetches the JWKS in its trace.
    op.rotate();
    thread::sleep(Duration::from_millis(1100)); // past the unknown-kid cooldown
    let rotated = op.alice();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .get(gw.url("/invoices/finance/INV-2"))
        .bearer_auth(&rotated)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = receiver.trace(trace_id, 4);
    let request = named(&spans, "portcullis request")[0]["span_id"].clone();
    let fetch = named(&spans, "jwks fetch");
    assert_eq!(fetch.len(), 1, "{spans:#?}");
    assert_eq!(fetch[0]["parent_span_id"], request);

    // An approval: the CIBA start and the polls are children of the held request.
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let traced = {
        let (url, token) = (gw.url("/invoices/finance/INV-7/pay"), rotated.clone());
        let traceparent = format!("00-{trace_id}-{caller_span}-01");
        thread::spawn(move || {
            client()
                .post(url)
                .bearer_auth(token)
                .header("traceparent", traceparent)
                .json(&serde_json::json!({"amount": 5000, "currency": "EUR"}))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let pending = op.wait_pending();
    thread::sleep(Duration::from_millis(2500)); // a few polls
    op.answer("approve", pending["auth_req_id"].as_str().unwrap());
    assert_eq!(traced.join().unwrap(), 200);
    let spans = receiver.trace(trace_id, 6);
    let request = named(&spans, "portcullis request")[0]["span_id"].clone();
    let start = named(&spans, "ciba start");
    assert_eq!(start.len(), 1, "{spans:#?}");
    assert_eq!(start[0]["parent_span_id"], request);
    let polls = named(&spans, "ciba poll");
    assert!(polls.len() >= 2, "{spans:#?}");
    assert!(polls.iter().all(|p| p["parent_span_id"] == request));

    // Nothing identifying in any span: no token, no user.
    let all = std::fs::read_to_string(&receiver.out).unwrap();
    for secret in [&token, &rotated, "alice", "secret"] {
        assert!(!all.contains(secret), "{secret} in an exported span");
    }
}
