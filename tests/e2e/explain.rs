//! `portcullis explain` against the real OpenID Provider's tokens and the invoices policy:
//! allow, deny, approval, a token that does not verify, and the token-free `--claims` form.

use std::process::Command;

use serde_json::json;

use crate::approval::{op, yaml, SECRET};
use crate::support::{Op, Upstream};

/// `portcullis explain --config <yaml> <args>`: exit code and stdout.
fn explain(op: &Op, up: &Upstream, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    let text = yaml(op, up, &format!("{}/backchannel", op.url()), "", None)
        .replace("{port}", "18080")
        .replace("{admin}", "18081");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("explain")
        .arg("--config")
        .arg(&path)
        .args(args)
        .env(SECRET.0, SECRET.1)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{text}{err}"))
}

#[test]
fn explain_says_why_a_call_is_allowed_denied_or_held_for_approval() {
    let op = op();
    let up = Upstream::start();
    let alice = op.alice();
    let t = ["--fetch-jwks", "--token", alice.as_str()];

    // Allowed: the route, the verified identity, the scopes after the role map, the input.
    let path = ["--path", "/invoices/finance/INV-1"];
    let (code, out) = explain(&op, &up, &[&t[..], &path[..]].concat());
    assert_eq!(code, 0, "{out}");
    for want in [
        "route        invoices",
        "token        verified",
        "sub alice · agent agent-1 · issuer corp",
        "roles        finance admin",
        "invoices:read invoices:pay (after the role map)",
        r#""path": "/invoices/finance/INV-1""#,
        "decision     allow",
        "verdict      forwarded to http://127.0.0.1:",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains(&alice), "the token is never printed");

    // Denied by the policy, with its reason.
    let path = ["--path", "/invoices/sales/INV-1"];
    let (code, out) = explain(&op, &up, &[&t[..], &path[..]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("deny: invoices of department 'sales' belong to another department"),
        "{out}"
    );
    assert!(
        out.contains("verdict      refused: 403 access_denied"),
        "{out}"
    );

    // Held for approval: what the user would be asked, then forwarded once approved.
    let pay = [
        "--method",
        "POST",
        "--path",
        "/invoices/finance/INV-7/pay",
        "--body",
        r#"{"amount": 5000, "currency": "EUR"}"#,
    ];
    let (code, out) = explain(&op, &up, &[&t[..], &pay[..]].concat());
    assert_eq!(code, 0, "{out}");
    for want in [
        r#""amount": 5000"#,
        "allow once the user approves: \"Pay INV-7 5000 EUR\"",
        "approval     ask alice on their device through CIBA (sync",
        "payment_initiation",
        "once approved",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn explain_names_a_bad_token_and_takes_claims_instead() {
    let op = op();
    let up = Upstream::start();
    let alice = op.alice();
    let mut forged = alice.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let path = ["--path", "/invoices/finance/INV-1"];
    let (code, out) = explain(
        &op,
        &up,
        &[&["--fetch-jwks", "--token", forged.as_str()][..], &path[..]].concat(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("token        does not verify"), "{out}");
    assert!(out.contains("refused: 401 invalid_token"), "{out}");

    // No network unless asked: the issuer's keys come from its jwks_uri.
    let before = op.jwks_fetches();
    let (code, out) = explain(
        &op,
        &up,
        &[&["--token", alice.as_str()][..], &path[..]].concat(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pass --fetch-jwks"), "{out}");
    assert_eq!(op.jwks_fetches(), before, "explain fetched keys unasked");

    // Token-free: bob's claims ask for both scopes, but his role (viewer) allows only
    // invoices:read, so the policy refuses the payment.
    let claims = json!({"sub": "bob", "azp": "agent-1", "iss": op.issuer,
        "aud": "https://api.portcullis.test", "exp": 4_000_000_000u64,
        "scope": "invoices:read invoices:pay", "roles": ["viewer"], "dept": "finance"})
    .to_string();
    let (code, out) = explain(
        &op,
        &up,
        &[
            "--claims",
            &claims,
            "--method",
            "POST",
            "--path",
            "/invoices/finance/INV-7/pay",
            "--body",
            r#"{"amount": 10}"#,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the claims given are taken as verified"),
        "{out}"
    );
    assert!(
        out.contains("scopes       invoices:read (after the role map)"),
        "{out}"
    );
    assert!(out.contains("decision     deny"), "{out}");
}
