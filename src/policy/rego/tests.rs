//! Interpreting decisions, loading, time limits, and the VM against the interpreter.

use super::{interpret, PolicySet};
use crate::config::model::PolicyEngine;
use crate::policy::{Decision, Refusal};
use regorus::Value;
use std::time::Duration;

const MS_20: Duration = Duration::from_millis(20);
const MS_50: Duration = Duration::from_millis(50);

fn v(json: &str) -> Value {
    Value::from_json_str(json).unwrap()
}

#[test]
fn interpret_allow_and_deny() {
    assert_eq!(
        interpret(&v(r#"{"allow":true,"reason":"ok"}"#)),
        Ok(Decision::Allow)
    );
    assert_eq!(
        interpret(&v(r#"{"allow":false,"reason":"too much"}"#)),
        Ok(Decision::Deny(Refusal::PolicyDenied {
            reason: "too much".into()
        }))
    );
}

#[test]
fn interpret_rejects_garbage() {
    assert!(interpret(&Value::Undefined).is_err());
    assert!(interpret(&v(r#"{"allow":"yes"}"#)).is_err());
    assert!(interpret(&v(r#"{"reason":"x"}"#)).is_err());
    assert!(interpret(&v("true")).is_err());
}

#[test]
fn interpret_approval() {
    let d = interpret(&v(
        r#"{"allow":true,"require_approval":{"binding_message":"Pay INV-1: 120 EUR",
            "authorization_details":[{"type":"payment","amount":120}]}}"#,
    ))
    .unwrap();
    match d {
        Decision::RequireApproval(a) => {
            assert_eq!(a.binding_message, "Pay INV-1: 120 EUR");
            assert_eq!(a.authorization_details[0]["amount"], 120);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(interpret(&v(
        r#"{"allow":true,"require_approval":{"binding_message":"<script>"}}"#
    ))
    .is_err());
    let long = "x".repeat(65);
    let doc = format!(r#"{{"allow":true,"require_approval":{{"binding_message":"{long}"}}}}"#);
    assert!(interpret(&v(&doc)).is_err());
}

fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn load_checks_packages_and_time_limit_denies() {
    let dir = policy_dir(&[(
        "p.rego",
        "package p\ndefault decision := {\"allow\": false}\n\
         decision := {\"allow\": true} if { input.request.method == \"GET\" }\n\
         slow if { some i in numbers.range(1, 100000000); i < 0 }\n\
         loop := {\"allow\": true} if { slow }\n",
    )]);
    assert!(PolicySet::load(dir.path(), &["nope"], MS_50, PolicyEngine::Vm).is_err());
    let set = PolicySet::load(dir.path(), &["p"], MS_20, PolicyEngine::Vm).unwrap();
    assert!(set.on_vm("data.p.decision"));
    let input = v(r#"{"request":{"method":"GET"}}"#);
    assert_eq!(
        set.decide("data.p.decision", input.clone()),
        Ok(Decision::Allow)
    );
    // A runaway rule hits the time limit and errors (the gateway then denies).
    assert!(set.decide("data.p.loop", input).is_err());
}

#[test]
fn vm_time_limit_denies() {
    let dir = policy_dir(&[(
        "q.rego",
        "package q\ndefault decision := {\"allow\": false}\n\
         decision := {\"allow\": true} if {\n\
           some i in numbers.range(1, 20000)\n\
           some j in numbers.range(1, 20000)\n\
           i + j < 0\n\
         }\n",
    )]);
    // The warm-up input runs into the limit too: loading reports it.
    let err = PolicySet::load(dir.path(), &["q"], MS_20, PolicyEngine::Vm)
        .err()
        .expect("a runaway decision fails to load");
    assert!(err.to_string().contains("data.q.decision"), "{err}");
}

/// The repository's policies answer the same on the VM and on the interpreter, for
/// inputs covering each of their branches.
#[test]
fn vm_and_interpreter_agree_on_the_example_policies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let packages = ["invoices", "mcp_invoices", "calendar"];
    // `auto` (the default) puts every example package on the VM.
    let vm = PolicySet::load(&dir, &packages, MS_50, PolicyEngine::Auto).unwrap();
    let interp = PolicySet::load(&dir, &packages, MS_50, PolicyEngine::Interpreter).unwrap();
    for p in packages {
        assert!(vm.on_vm(&super::entrypoint(p)), "{p} runs on the VM");
        assert_eq!(vm.evaluator(&super::entrypoint(p)), "the Rego VM");
        assert!(!interp.on_vm(&super::entrypoint(p)));
    }
    let subject = |scopes: &str, dept: &str| {
        format!(
            r#"{{"sub":"alice","agent":"agent-1","scopes":[{scopes}],"claims":{{"dept":"{dept}"}}}}"#
        )
    };
    let read = r#""invoices:read""#;
    let both = r#""invoices:read","invoices:pay""#;
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (method, path, body, scopes, dept) in [
        ("GET", "/invoices/finance/INV-1", "null", read, "finance"),
        ("GET", "/invoices/sales/INV-1", "null", read, "finance"),
        ("GET", "/invoices/finance/INV-1", "null", "", "finance"),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":10}"#,
            read,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":10}"#,
            both,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":5000,"currency":"USD"}"#,
            both,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":"x"}"#,
            both,
            "finance",
        ),
        ("DELETE", "/invoices", "null", both, "finance"),
        // Values of unexpected types: builtins fail or compare across types.
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":null}"#,
            both,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":[1]}"#,
            both,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"{"amount":5000,"currency":7}"#,
            both,
            "finance",
        ),
        (
            "POST",
            "/invoices/finance/INV-1/pay",
            r#"[1,2]"#,
            both,
            "finance",
        ),
        (
            "GET",
            "/invoices/finance/INV-1",
            "null",
            r#""invoices:read",7"#,
            "finance",
        ),
    ] {
        let doc = format!(
            r#"{{"request":{{"method":"{method}","path":"{path}"}},"body":{body},"subject":{}}}"#,
            subject(scopes, dept)
        );
        cases.push(("invoices", doc));
    }
    for (method, tool, args, scopes) in [
        ("tools/list", "", "{}", read),
        ("tools/call", "read_invoice", r#"{"id":"INV-1"}"#, read),
        ("tools/call", "read_invoice", r#"{"id":"INV-1"}"#, ""),
        ("tools/call", "delete_all", "{}", both),
        (
            "tools/call",
            "pay_invoice",
            r#"{"invoice_id":"INV-9","amount":50}"#,
            read,
        ),
        (
            "tools/call",
            "pay_invoice",
            r#"{"invoice_id":"INV-9","amount":50}"#,
            both,
        ),
        (
            "tools/call",
            "pay_invoice",
            r#"{"invoice_id":"INV-9","amount":5000}"#,
            both,
        ),
        ("tools/call", "unknown", "{}", both),
    ] {
        let doc = format!(
            r#"{{"mcp":{{"method":"{method}","tool":"{tool}","arguments":{args}}},"subject":{}}}"#,
            subject(scopes, "finance")
        );
        cases.push(("mcp_invoices", doc));
    }
    for cred in [
        r#"{"mode":"token_vault","connection":"google-oauth2"}"#,
        r#"{"mode":"vault","connection":"github"}"#,
        "null",
    ] {
        let doc = format!(
            r#"{{"request":{{"method":"GET","path":"/calendar/events"}},"credentials":{cred},"subject":{}}}"#,
            subject(read, "finance")
        );
        cases.push(("calendar", doc));
    }
    // Whole fields of the wrong type: a non-string path makes `trim_prefix` fail (the
    // interpreter's error must win on the VM too), a numeric department compares across types.
    for doc in [
        r#"{"request":{"method":"GET","path":42},"subject":{"scopes":["invoices:read"],"claims":{"dept":"finance"}}}"#,
        r#"{"request":{"method":"GET","path":"/invoices/7/INV-1"},"subject":{"scopes":["invoices:read"],"claims":{"dept":7}}}"#,
        r#"{"request":{"method":"GET","path":"/invoices/finance/INV-1"},"subject":{"scopes":"invoices:read","claims":{"dept":"finance"}}}"#,
        r#"{"request":{"method":7,"path":"/invoices/finance/INV-1"},"subject":{"scopes":["invoices:read"],"claims":{}}}"#,
    ] {
        cases.push(("invoices", doc.to_string()));
    }
    cases.push(("mcp_invoices", r#"{"mcp":{"method":"tools/call","tool":"pay_invoice","arguments":{"amount":"5000"}},"subject":{"scopes":["invoices:read","invoices:pay"]}}"#.to_string()));
    cases.push(("mcp_invoices", r#"{"mcp":{"method":"tools/call","tool":7,"arguments":null},"subject":{"scopes":["invoices:read"]}}"#.to_string()));
    for (package, doc) in cases {
        let entry = super::entrypoint(package);
        let a = vm.decide(&entry, v(&doc));
        let b = interp.decide(&entry, v(&doc));
        assert_eq!(a, b, "{package}: {doc}");
    }
}

/// A builtin error inside a rule body: the interpreter (strict) fails the evaluation, so
/// the gateway denies with `policy_error`. regorus 0.14.1's VM alone would make that body
/// fail (the `default` would apply, and `not helper` would turn true); the guards send the
/// request to the interpreter, so the VM path fails the same way.
#[test]
fn builtin_errors_fail_on_the_vm_as_on_the_interpreter() {
    let dir = policy_dir(&[(
        "f.rego",
        "package fragile\ndefault decision := {\"allow\": false, \"reason\": \"default\"}\n\
         decision := {\"allow\": to_number(input.request.headers[\"x-amount\"]) > 0}\n\
         blocked if to_number(input.request.headers[\"x-block\"]) > 0\n\
         open := {\"allow\": true} if not blocked\n",
    )]);
    let input = || v(r#"{"request":{"headers":{"x-amount":"nan","x-block":"nan"}}}"#);
    for kind in [
        PolicyEngine::Interpreter,
        PolicyEngine::Auto,
        PolicyEngine::Vm,
    ] {
        let set = PolicySet::load(dir.path(), &["fragile"], MS_50, kind).unwrap();
        assert_eq!(
            set.on_vm("data.fragile.decision"),
            kind != PolicyEngine::Interpreter
        );
        for entry in ["data.fragile.decision", "data.fragile.open"] {
            let err = set.decide(entry, input()).unwrap_err();
            assert!(
                err.contains("could not parse string as number"),
                "{kind:?} {entry}: {err}"
            );
        }
        // Well-typed input: no error, and the VM's answer stands.
        let ok = v(r#"{"request":{"headers":{"x-amount":"3","x-block":"0"}}}"#);
        assert_eq!(
            set.decide("data.fragile.decision", ok.clone()),
            Ok(Decision::Allow)
        );
        assert_eq!(set.decide("data.fragile.open", ok), Ok(Decision::Allow));
    }
}

/// `auto` keeps on the interpreter a package whose answer the VM could change (arithmetic,
/// conflicting rule values); `vm` runs it on the VM anyway.
#[test]
fn auto_keeps_divergent_packages_on_the_interpreter() {
    let dir = policy_dir(&[
        (
            "a.rego",
            "package arith\ndefault decision := {\"allow\": false}\n\
             decision := {\"allow\": true} if input.n / 2 > 1\n",
        ),
        (
            "c.rego",
            "package conflict\ndefault decision := {\"allow\": false}\n\
             level := 1 if input.a\nlevel := 2 if input.b\n\
             decision := {\"allow\": true, \"reason\": \"no level\"} if not level\n",
        ),
    ]);
    let auto = PolicySet::load(
        dir.path(),
        &["arith", "conflict"],
        MS_50,
        PolicyEngine::Auto,
    )
    .unwrap();
    let vm = PolicySet::load(dir.path(), &["arith", "conflict"], MS_50, PolicyEngine::Vm).unwrap();
    for p in ["data.arith.decision", "data.conflict.decision"] {
        assert!(!auto.on_vm(p), "{p}");
        assert!(vm.on_vm(p), "{p}");
        let why = auto.evaluator(p);
        assert!(why.contains("could answer it differently"), "{p}: {why}");
    }
    // Where they differ: conflicting values fail the interpreter (deny); the VM makes `level`
    // undefined, so `not level` holds and it allows.
    let both = v(r#"{"a":true,"b":true}"#);
    assert!(auto.decide("data.conflict.decision", both.clone()).is_err());
    assert_eq!(
        vm.decide("data.conflict.decision", both),
        Ok(Decision::Allow)
    );
}

/// A thread keeps one VM per program it ran, and lets go of the VMs of programs whose
/// configuration was replaced (here: 40 reloads leave one VM).
#[test]
fn vms_of_replaced_configurations_are_dropped() {
    let dir = policy_dir(&[(
        "p.rego",
        "package p\ndefault decision := {\"allow\": false}\n\
         decision := {\"allow\": true} if input.request.method == \"GET\"\n",
    )]);
    for _ in 0..40 {
        let set = PolicySet::load(dir.path(), &["p"], MS_50, PolicyEngine::Auto).unwrap();
        let get = v(r#"{"request":{"method":"GET"}}"#);
        assert_eq!(set.decide("data.p.decision", get), Ok(Decision::Allow));
    }
    assert_eq!(super::vm::thread_vms(), 1);
}
