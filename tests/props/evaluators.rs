//! The default evaluator (`policies.engine: auto`: the Rego VM wherever it answers as the
//! interpreter would) and the strict interpreter decide alike on the repository's policies,
//! for input documents whose fields have the expected shape or any other JSON value.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::config::model::PolicyEngine;
use portcullis::policy::rego::{entrypoint, PolicySet};
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;
use serde_json::{json, Value};

const PACKAGES: [&str; 3] = ["invoices", "mcp_invoices", "calendar"];

fn sets() -> &'static (PolicySet, PolicySet) {
    static SETS: OnceLock<(PolicySet, PolicySet)> = OnceLock::new();
    SETS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let load = |kind| PolicySet::load(&dir, &PACKAGES, Duration::from_secs(5), kind).unwrap();
        (load(PolicyEngine::Auto), load(PolicyEngine::Interpreter))
    })
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3000i64..3000).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9:/_ -]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One of `expected` (as JSON strings), or any JSON value.
fn one_of(expected: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(expected).prop_map(Value::from),
        1 => any_json(),
    ]
}

fn path() -> impl Strategy<Value = Value> {
    let segment = prop_oneof![
        Just("finance".to_string()),
        Just("sales".to_string()),
        "INV-[0-9]{1,3}",
        Just("pay".to_string()),
        Just(String::new()),
    ];
    prop_oneof![
        4 => prop::collection::vec(segment, 0..5)
            .prop_map(|s| Value::from(format!("/invoices/{}", s.join("/")))),
        1 => any_json(),
    ]
}

fn scopes() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::collection::vec(one_of(&["invoices:read", "invoices:pay", "calendar:read"]), 0..3)
            .prop_map(Value::Array),
        1 => any_json(),
    ]
}

fn amount() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0u32..3000).prop_map(Value::from),
        1 => (0u32..3000).prop_map(|n| Value::from(n.to_string())),
        1 => any_json(),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    let request = (one_of(&["GET", "POST", "DELETE"]), path())
        .prop_map(|(method, path)| json!({"method": method, "path": path, "headers": {}}));
    let subject = (scopes(), one_of(&["finance", "sales"]))
        .prop_map(|(scopes, dept)| json!({"sub": "alice", "agent": "agent-1", "scopes": scopes, "claims": {"dept": dept}}));
    let body = prop_oneof![
        3 => (amount(), one_of(&["EUR", "USD"])).prop_map(|(a, c)| json!({"amount": a, "currency": c})),
        1 => any_json(),
    ];
    let arguments = prop_oneof![
        3 => (one_of(&["INV-1", "INV-9"]), amount())
            .prop_map(|(id, a)| json!({"invoice_id": id, "amount": a, "id": id})),
        1 => any_json(),
    ];
    let mcp = (
        one_of(&["tools/call", "tools/list", "initialize", "resources/read"]),
        one_of(&["read_invoice", "pay_invoice", "delete_all", "other"]),
        arguments,
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(method, tool, arguments, listing)| {
            let mut m = json!({"method": method, "tool": tool, "arguments": arguments});
            if let Some(l) = listing {
                m["listing"] = Value::from(l);
            }
            m
        });
    let credentials = prop_oneof![
        Just(Value::Null),
        (
            one_of(&["token_vault", "vault", "token_exchange"]),
            one_of(&["google-oauth2", "github"])
        )
            .prop_map(|(mode, c)| json!({"mode": mode, "connection": c})),
    ];
    (request, subject, body, mcp, credentials).prop_map(
        |(request, subject, body, mcp, credentials)| {
            json!({"route": "r", "request": request, "subject": subject, "body": body, "mcp": mcp,
               "credentials": credentials})
        },
    )
}

proptest! {
    #[test]
    fn auto_and_the_interpreter_decide_alike(
        doc in document(),
        package in prop::sample::select(&PACKAGES[..]),
    ) {
        let (auto, interpreter) = sets();
        let entry = entrypoint(package);
        prop_assert!(auto.on_vm(&entry), "{} runs on the VM under auto", package);
        let input = regorus::Value::from(doc.clone());
        let a = auto.decide(&entry, input.clone());
        let b = interpreter.decide(&entry, input);
        match (&a, &b) {
            (Ok(x), Ok(y)) => prop_assert_eq!(x, y, "{}: {}", package, doc),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{}: {} → auto {:?}, interpreter {:?}", package, doc, a, b),
        }
    }
}
