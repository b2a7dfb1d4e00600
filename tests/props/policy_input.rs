//! Policy input and decision: random requests and claims never panic the input builder or
//! the Rego evaluation, the input carries the request as given, and the `invoices` policy
//! never lets a user act on another department's invoices.

use portcullis::claims::Identity;
use portcullis::policy::input::{build, subject_value, RequestInfo};
use portcullis::policy::Decision;
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;
use serde_json::{json, Map, Value};

use crate::fixture::{fixture, good_claims, sign};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        "[A-Z]{1,8}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z0-9-]{1,12}", "[ -~]{0,40}"), 0..6)
}

proptest! {
    #[test]
    fn other_departments_are_never_allowed(
        method in method(),
        dept in "[a-zA-Z0-9_.-]{0,10}".prop_filter("another department", |d| d != "finance"),
        tail in "[a-zA-Z0-9_./-]{0,30}",
        query in prop::option::of("[ -~]{0,40}"),
        headers in headers(),
        body in prop::option::of(json_value()),
    ) {
        let f = fixture();
        let verified = f.verify(&sign(&good_claims("alice"), false)).expect("a valid token");
        let path = format!("/invoices/{dept}/{tail}");
        let info = RequestInfo {
            method: &method,
            path: &path,
            query: query.as_deref(),
            host: "api.example.com",
            headers: headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            body,
            mcp: None,
        };
        let decision = f.gateway.decide(0, &verified, info);
        prop_assert!(
            !matches!(decision, Ok(Decision::Allow) | Ok(Decision::RequireApproval(_))),
            "{} {} → {:?}", method, path, decision
        );
    }

    #[test]
    fn random_requests_and_claims_build_an_input_that_carries_the_request(
        method in method(),
        path in "\\PC{0,60}",
        query in prop::option::of("\\PC{0,40}"),
        host in "[ -~]{0,30}",
        headers in headers(),
        body in prop::option::of(json_value()),
        claims in prop::collection::btree_map(
            prop_oneof![
                Just("sub".to_string()), Just("azp".to_string()), Just("scope".to_string()),
                Just("scp".to_string()), Just("exp".to_string()), Just("roles".to_string()),
                "[a-z]{1,6}",
            ],
            json_value(),
            0..8,
        ),
    ) {
        let f = fixture();
        let mut claims: Map<String, Value> = claims.into_iter().collect();
        claims.entry("sub").or_insert(json!("alice"));
        claims.entry("exp").or_insert(json!(4_000_000_000u64));
        let spec = &f.gateway.config.issuers[0];
        let Ok(identity) = Identity::from_claims(spec, claims) else {
            return Ok(()); // refused claims never reach a policy
        };
        let subject = subject_value(&identity);
        let info = RequestInfo {
            method: &method,
            path: &path,
            query: query.as_deref(),
            host: &host,
            headers: headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            body: body.clone(),
            mcp: None,
        };
        let input = build("invoices", info, &subject, None);
        let doc: Value = serde_json::from_str(&input.to_json_str().unwrap()).unwrap();
        prop_assert_eq!(&doc["route"], &json!("invoices"));
        prop_assert_eq!(&doc["request"]["method"], &json!(method));
        prop_assert_eq!(&doc["request"]["path"], &json!(path));
        prop_assert_eq!(&doc["request"]["host"], &json!(host));
        prop_assert_eq!(&doc["subject"]["sub"], &json!(identity.sub));
        prop_assert_eq!(doc["request"].get("query").is_some(), query.is_some());
        prop_assert_eq!(doc.get("body").is_some(), body.is_some());
        for (k, _) in &headers {
            let last = headers.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
            prop_assert_eq!(doc["request"]["headers"][k].as_str(), last.map(String::as_str));
        }
        // Evaluating it never panics; any outcome is fine here.
        let _ = f.gateway.policies.decide("data.invoices.decision", input);
    }
}
