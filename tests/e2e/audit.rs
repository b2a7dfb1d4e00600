//! Approvals an auditor can trust, against the real OpenID Provider: the user's answer must
//! grant what was asked (an approval with altered `authorization_details` is refused and
//! nothing is forwarded), identical calls ask the user once, an approval does not survive a
//! change of the route's policy, and every human decision leaves a receipt in a hash chain
//! that `portcullis receipts verify` checks (and names the receipt an edit broke).

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::approval::{op, pay, pay_in_background, wait_status, yaml, SECRET};
use crate::reload::{admin_reload, policy_copy, rewrite, with_admin_secret, ADMIN};
use crate::support::{metric, parts, repo, Gw, Op, Upstream};

/// `portcullis receipts <args> --config <gateway's file>`: exit code and stdout.
fn receipts(gw: &Gw, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("receipts")
        .args(args)
        .arg("--config")
        .arg(gw.dir.path().join("portcullis.yaml"))
        .env(SECRET.0, SECRET.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

fn events(gw: &Gw) -> Vec<String> {
    let (code, out) = receipts(gw, &["list", "--sub", "alice", "--limit", "1000"]);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The OP (1 s CIBA interval), an upstream and an approval store file.
struct Stack {
    op: Op,
    up: Upstream,
    dir: tempfile::TempDir,
    store: std::path::PathBuf,
}

impl Stack {
    fn new() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("approvals.db");
        Stack {
            op: op(),
            up: Upstream::start(),
            dir,
            store,
        }
    }
}

/// The invoices route with approval settings `extra`, on `store`.
fn start(op: &Op, up: &Upstream, extra: &str, store: &Path) -> Gw {
    let backchannel = format!("{}/backchannel", op.url());
    Gw::start_env(
        &yaml(op, up, &backchannel, extra, Some(store)),
        true,
        &[SECRET],
    )
}

/// The user approves the pending CIBA request at the OP; wait until approval `id` says so.
fn approve_pending(op: &Op, gw: &Gw, token: &str, id: &str) {
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    wait_status(
        gw,
        &format!("/.portcullis/approvals/{id}"),
        token,
        "approved",
    );
}

/// The OP's CIBA requests so far (pending or answered).
fn asked(op: &Op) -> usize {
    op.pending(true).len()
}

#[test]
fn altered_details_are_refused_and_every_decision_leaves_a_verifiable_receipt() {
    let Stack {
        op,
        up,
        dir: _dir,
        store,
    } = Stack::new();
    let gw = start(&op, &up, "", &store);
    let token = op.alice();

    // The user's device approves other details (a tenfold amount): refused, nothing sent.
    let call = pay_in_background(&gw, &token, 5000);
    let pending = op.wait_pending();
    let mut altered = pending["authorization_details"].clone();
    altered[0]["instructedAmount"]["amount"] = json!(50000);
    let id = pending["auth_req_id"].as_str().unwrap();
    let details: String =
        url::form_urlencoded::byte_serialize(altered.to_string().as_bytes()).collect();
    let r = crate::support::client()
        .post(format!("{}/approve/{id}?details={details}", op.url()))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let (status, body) = call.join().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("approval_mismatch")),
        "{body}"
    );
    assert!(up.requests().is_empty(), "nothing is forwarded");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_approvals_total{mode="sync",outcome="mismatch"}"#
        ),
        1,
        "{metrics}"
    );

    // A denial and an approval as asked.
    let call = pay_in_background(&gw, &token, 2000);
    op.answer("deny", op.wait_pending()["auth_req_id"].as_str().unwrap());
    assert_eq!(call.join().unwrap().0, 403);
    let call = pay_in_background(&gw, &token, 3000);
    op.answer(
        "approve",
        op.wait_pending()["auth_req_id"].as_str().unwrap(),
    );
    let (status, body) = call.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.requests().len(), 1);

    let events = events(&gw);
    assert_eq!(
        events,
        [
            "asked",
            "mismatch",
            "asked",
            "denied",
            "asked",
            "approved",
            "forwarded"
        ],
    );
    let (code, out) = receipts(&gw, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK, 7 receipts"), "{out}");
    let (_, listed) = receipts(&gw, &["list", "--limit", "1000"]);
    assert!(!listed.contains(&token), "no token in a receipt");
    assert!(!listed.contains(id), "no auth_req_id in a receipt");

    // Someone turns the denial into an approval in the database: `verify` names it.
    let conn = rusqlite::Connection::open(&store).unwrap();
    let text: String = conn
        .query_row("SELECT receipt FROM receipts WHERE seq = 4", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(text.contains(r#""event":"denied""#), "{text}");
    conn.execute(
        "UPDATE receipts SET receipt = ?1 WHERE seq = 4",
        [text.replace(r#""event":"denied""#, r#""event":"approved""#)],
    )
    .unwrap();
    drop(conn);
    let (code, out) = receipts(&gw, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("receipt 4"), "{out}");
    assert!(out.contains("3 receipts before it verify"), "{out}");
}

#[test]
fn identical_calls_ask_the_user_once() {
    let Stack {
        op,
        up,
        dir: _dir,
        store,
    } = Stack::new();
    let gw = start(&op, &up, "", &store);
    let token = op.alice();
    let before = asked(&op);

    // Sync: three identical calls wait on one request to the user.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = pay_in_background(&gw, &token, 5000);
            thread::sleep(Duration::from_millis(300));
            c
        })
        .collect();
    let pending = op.wait_pending();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(asked(&op) - before, 1, "the user is asked once");
    op.answer("approve", pending["auth_req_id"].as_str().unwrap());
    for c in calls {
        let (status, body) = c.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Once per caller request still waiting when the user approved (docs/approvals.md).
    assert_eq!(up.requests().len(), 3);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portcullis_approvals_joined_total{mode="sync"}"#
        ),
        2,
        "{metrics}"
    );

    // Async: an identical call without the id gets the same approval (and the user is not
    // asked again); after approval it runs once; a third identical call learns it was used.
    let gw = start(&op, &up, ", mode: async", &store);
    let before = asked(&op);
    let first: Value = pay(&gw, &token, 7000, None).json().unwrap();
    let second: Value = pay(&gw, &token, 7000, None).json().unwrap();
    assert_eq!(first["approval_id"], second["approval_id"], "{second}");
    assert_eq!(asked(&op) - before, 1);
    let id = first["approval_id"].as_str().unwrap();
    approve_pending(&op, &gw, &token, id);
    let seen = up.requests().len();
    assert_eq!(pay(&gw, &token, 7000, None).status(), 200);
    let (status, _, body) = parts(pay(&gw, &token, 7000, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("approval_invalid")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    assert_eq!(up.requests().len(), seen + 1, "forwarded once");
    // A denied call is refused again without asking.
    let call = pay(&gw, &token, 8000, None);
    assert_eq!(call.status(), 202);
    op.answer("deny", op.wait_pending()["auth_req_id"].as_str().unwrap());
    thread::sleep(Duration::from_millis(2500));
    let before = asked(&op);
    let (status, _, body) = parts(pay(&gw, &token, 8000, None));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    assert_eq!(asked(&op), before, "not asked again");
}

/// The invoices config with the policies read from `policies` and an admin token.
fn reloadable(op: &Op, up: &Upstream, extra: &str, store: &Path, policies: &Path) -> String {
    let backchannel = format!("{}/backchannel", op.url());
    with_admin_secret(&yaml(op, up, &backchannel, extra, Some(store)).replace(
        &repo().join("policies").display().to_string(),
        &policies.display().to_string(),
    ))
}

/// Change the text of the invoices policy (a comment: the decisions stay the same, the
/// revision does not).
fn touch_policy(policies: &Path, n: u32) {
    let path = policies.join("invoices.rego");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n# revision {n}\n")).unwrap();
}

#[test]
fn an_approval_does_not_survive_a_change_of_the_routes_policy() {
    let Stack {
        op,
        up,
        dir: _dir,
        store,
    } = Stack::new();
    let policies = policy_copy();
    let yaml = reloadable(&op, &up, ", mode: async", &store, policies.path());
    let gw = Gw::start_env(&yaml, true, &[SECRET, ADMIN]);
    let token = op.alice();

    let approve = |amount: u64| -> String {
        let body: Value = pay(&gw, &token, amount, None).json().unwrap();
        let id = body["approval_id"].as_str().unwrap().to_string();
        approve_pending(&op, &gw, &token, &id);
        id
    };
    let id = approve(5000);
    touch_policy(policies.path(), 1);
    assert_eq!(admin_reload(&gw).0, 200);
    let (status, _, body) = parts(pay(&gw, &token, 5000, Some(&id)));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("approval_invalid")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("policy changed"),
        "{body}"
    );
    assert!(up.requests().is_empty());

    // A route that opts out keeps its approvals across a policy change.
    let keep = reloadable(
        &op,
        &up,
        ", mode: async, keep_on_policy_change: true",
        &store,
        policies.path(),
    );
    rewrite(&gw, &keep);
    assert_eq!(admin_reload(&gw).0, 200);
    let id = approve(6000);
    touch_policy(policies.path(), 2);
    assert_eq!(admin_reload(&gw).0, 200);
    assert_eq!(pay(&gw, &token, 6000, Some(&id)).status(), 200);
    assert_eq!(up.requests().len(), 1);
}
