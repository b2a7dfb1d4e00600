//! JSON-RPC parsing of MCP bodies: never panics; garbage is a parse error; anything it
//! accepts really is JSON-RPC 2.0, and the tool it names is the body's `params.name`.

use portcullis::mcp::{parse, Body, PARSE_ERROR};
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &[
    "jsonrpc",
    "method",
    "id",
    "params",
    "name",
    "uri",
    "arguments",
    "result",
    "error",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!("2.0")),
        Just(json!("tools/call")),
        Just(json!("resources/read")),
        Just(json!("prompts/get")),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

/// JSON built mostly from JSON-RPC's own member names, so that near-misses are common.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS).prop_map(str::to_string),
                        "[a-z]{1,6}"
                    ],
                    inner
                ),
                0..6,
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Checks, independently of the parser, that `v` is a JSON-RPC 2.0 message as parsed.
fn check(v: &Value, m: &portcullis::mcp::Message) -> Result<(), String> {
    let o = v.as_object().ok_or("accepted a non-object")?;
    if o.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(format!("accepted without jsonrpc 2.0: {v}"));
    }
    if let Some(id) = o.get("id") {
        if !(id.is_string() || id.is_number() || id.is_null()) || m.id.as_ref() != Some(id) {
            return Err(format!("bad id accepted: {v}"));
        }
    }
    match (o.get("method"), &m.method) {
        (Some(Value::String(s)), Some(parsed)) if s == parsed => {}
        (None, None) if o.contains_key("result") || o.contains_key("error") => {}
        _ => return Err(format!("method mismatch: {v}")),
    }
    if let Some(tool) = m.tool() {
        let name = v.pointer("/params/name").and_then(Value::as_str);
        if m.method.as_deref() != Some("tools/call") || name != Some(tool) {
            return Err(format!("tool {tool} not the body's: {v}"));
        }
    }
    if let Some(uri) = &m.uri {
        if v.pointer("/params/uri").and_then(Value::as_str) != Some(uri) {
            return Err(format!("uri {uri} not the body's: {v}"));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn bytes_that_are_not_json_are_parse_errors(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let result = parse(&bytes);
        if serde_json::from_slice::<Value>(&bytes).is_err() {
            prop_assert_eq!(result.map_err(|e| e.code), Err(PARSE_ERROR));
        }
    }

    #[test]
    fn whatever_is_accepted_is_json_rpc(v in value()) {
        let text = v.to_string();
        match parse(text.as_bytes()) {
            Err(e) => prop_assert!(e.code != PARSE_ERROR, "valid JSON called a parse error: {}", text),
            Ok(Body::Single(m)) => {
                let r = check(&v, &m);
                prop_assert!(r.is_ok(), "{:?}", r);
            }
            Ok(Body::Batch(ms)) => {
                let items = v.as_array().expect("a batch from an array");
                prop_assert_eq!(items.len(), ms.len());
                for (item, m) in items.iter().zip(&ms) {
                    let r = check(item, m);
                    prop_assert!(r.is_ok(), "{:?}", r);
                }
            }
        }
    }
}
