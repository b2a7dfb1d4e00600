//! Rego decisions per route: allow, deny with a reason, body-aware rules, policy errors.

use serde_json::json;

use crate::support::{client, config, parts, shared_op, standard, Gw, Upstream};

#[test]
fn policy_denies_with_its_reason() {
    let (op, up, gw) = standard();
    let (status, _, body) = parts(gw.get("/invoices/sales/INV-9", Some(&op.alice())));
    assert_eq!(status, 403);
    assert_eq!(body["error"], "access_denied");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("another department"),
        "{body}"
    );
    assert!(up.requests().is_empty());
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_decisions_total{decision="deny",reason="policy_denied",route="invoices"} 1"#),
        "{metrics}"
    );
}

#[test]
fn policy_reads_the_body_and_the_body_is_forwarded_intact() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let pay = |amount: u64| {
        client()
            .post(gw.url("/invoices/finance/INV-1/pay"))
            .bearer_auth(&token)
            .json(&json!({"amount": amount, "currency": "EUR"}))
            .send()
            .unwrap()
    };
    assert_eq!(pay(120).status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    let forwarded: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(forwarded, json!({"amount": 120, "currency": "EUR"}));
    let (status, _, body) = parts(pay(5000));
    assert_eq!(status, 403);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("approval"),
        "{body}"
    );
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn oversized_or_non_json_bodies_are_refused_before_forwarding() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let big = vec![b'x'; 70 * 1024];
    let r = client()
        .post(gw.url("/invoices/finance/INV-1/pay"))
        .bearer_auth(&token)
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client()
        .post(gw.url("/invoices/finance/INV-1/pay"))
        .bearer_auth(&token)
        .body("amount=5")
        .send()
        .unwrap();
    let (status, _, body) = parts(r);
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert!(up.requests().is_empty());
}

#[test]
fn policy_errors_and_time_outs_deny_and_are_counted() {
    let op = shared_op();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fragile.rego"),
        r#"package fragile
default decision := {"allow": false, "reason": "default"}
decision := {"allow": to_number(input.request.headers["x-amount"]) > 0}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slow.rego"),
        r#"package slow
default decision := {"allow": false}
decision := {"allow": true} if {
    input.request.headers["x-spin"] == "yes"
    n := count([x | some i in numbers.range(1, 2000); some j in numbers.range(1, 2000); x := i * j])
    n > 0
}
"#,
    )
    .unwrap();
    let routes = r#"  - name: fragile
    match: { path_prefix: /fragile }
    upstream: "{upstream}"
    auth: { issuer: corp }
    policy: fragile
  - name: slow
    match: { path_prefix: /slow }
    upstream: "{upstream}"
    auth: { issuer: corp }
    policy: slow
"#;
    let yaml = config(&op.url(), &op.issuer, &up.url(), routes)
        .replace(
            &crate::support::repo()
                .join("policies")
                .display()
                .to_string(),
            &dir.path().display().to_string(),
        )
        .replace("policies: {", "policies: { timeout_ms: 20,");
    let gw = Gw::start(&yaml);
    let token = op.alice();
    let call = |path: &str, header: (&str, &str)| {
        client()
            .get(gw.url(path))
            .bearer_auth(&token)
            .header(header.0, header.1)
            .send()
            .unwrap()
    };
    assert_eq!(call("/fragile", ("x-amount", "5")).status(), 200);
    let (status, _, body) = parts(call("/fragile", ("x-amount", "not a number")));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "policy_error");
    let (status, _, body) = parts(call("/slow", ("x-spin", "yes")));
    assert_eq!(status, 500, "{body}");
    assert_eq!(up.requests().len(), 1);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"portcullis_policy_errors_total{route="fragile"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_policy_errors_total{route="slow"} 1"#),
        "{metrics}"
    );
    assert!(gw.log().contains("policy evaluation failed"));
}
