//! Bearer headers and JWTs: garbage, forged and wrongly-claimed tokens never authorise;
//! a token signed by the issuer's key is accepted exactly when every claim is valid.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis::gateway::bearer;
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;
use serde_json::{json, Value};

use crate::fixture::{fixture, good_claims, now, sign, AUD, ISS};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JSON value of a few shapes, for claims and header fields.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::from),
        prop::collection::vec("[a-z:/.]{0,12}", 0..3).prop_map(|v| json!(v)),
        Just(json!({"nested": {"a": 1}})),
    ]
}

/// How one claim is set: the valid value, absent, or one of the invalid ones.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Set {
    Valid,
    Absent,
    Invalid(u8),
}

fn setting(absent_ok: bool) -> impl Strategy<Value = (Set, bool)> {
    // Mostly valid, so that both accepted and refused tokens are common.
    prop_oneof![
        8 => Just((Set::Valid, true)),
        1 => Just((Set::Absent, absent_ok)),
        2 => (0u8..3).prop_map(|i| (Set::Invalid(i), false)),
    ]
}

/// The claims for a choice per claim, and whether they are all acceptable.
fn claims(choices: &[(Set, bool); 8]) -> (Value, bool) {
    let now = now();
    let mut c = good_claims("alice");
    let invalid: [(&str, [Value; 3]); 8] = [
        ("iss", [json!("https://evil.test/"), json!(7), json!([ISS])]),
        (
            "aud",
            [json!("https://other.test"), json!(5), json!(["x", "y"])],
        ),
        ("exp", [json!(now - 1000), json!("tomorrow"), json!(-1)]),
        ("sub", [json!(""), json!(7), json!(["alice"])]),
        ("nbf", [json!(now + 1000), json!("x"), json!(now + 400)]),
        ("iat", [json!(now + 1000), json!("x"), json!(-5)]),
        ("azp", [json!(""), json!(1), json!(["agent-1"])]),
        ("scope", [json!(3), json!({"a": 1}), json!([1, 2])]),
    ];
    let mut ok = true;
    for ((name, bad), (set, acceptable)) in invalid.iter().zip(choices) {
        ok &= acceptable;
        match set {
            Set::Valid if *name == "nbf" => c[*name] = json!(now - 10),
            Set::Valid if *name == "aud" => c[*name] = json!(["https://x.test", AUD]),
            Set::Valid => {}
            Set::Absent => {
                c.as_object_mut().unwrap().remove(*name);
            }
            Set::Invalid(i) => c[*name] = bad[*i as usize].clone(),
        }
    }
    (c, ok)
}

fn choices() -> impl Strategy<Value = [(Set, bool); 8]> {
    // iss, aud, exp, sub are required; nbf, iat, azp, scope may be absent.
    (
        setting(false),
        setting(false),
        setting(false),
        setting(false),
        setting(true),
        setting(true),
        setting(true),
        setting(true),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| [a, b, c, d, e, f, g, h])
}

proptest! {
    #[test]
    fn bearer_parsing_never_panics_and_returns_only_b64token(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..3),
        prefix in prop_oneof![Just(b"Bearer ".to_vec()), Just(b"bearer  ".to_vec()), Just(Vec::new())],
    ) {
        let values: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| [prefix.clone(), v].concat())
            .collect();
        if let Ok(token) = bearer(values.iter().map(Vec::as_slice)) {
            prop_assert_eq!(values.len(), 1);
            let body = token.trim_end_matches('=');
            prop_assert!(!body.is_empty());
            prop_assert!(body.chars().all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c)));
        }
    }

    #[test]
    fn garbage_tokens_never_authorise(
        token in prop_oneof![
            "\\PC{0,300}",
            "[A-Za-z0-9_\\-]{0,60}\\.[A-Za-z0-9_\\-]{0,200}\\.[A-Za-z0-9_\\-]{0,100}",
            "eyJ[A-Za-z0-9_\\-\\.=+/]{0,400}",
        ],
    ) {
        prop_assert!(fixture().verify(&token).is_err(), "accepted {}", token);
    }

    #[test]
    fn structured_tokens_with_forged_signatures_never_authorise(
        alg in prop_oneof![
            Just(json!("RS256")), Just(json!("ES256")), Just(json!("HS256")), Just(json!("none")),
            Just(json!("PS256")), Just(json!("RS512")), Just(json!("EdDSA")), junk(),
        ],
        kid in prop_oneof![Just(Some(json!("k1"))), Just(Some(json!("e1"))), Just(None), junk().prop_map(Some)],
        extra in prop::collection::btree_map(prop_oneof![
            Just("crit".to_string()), Just("jku".to_string()), Just("x5u".to_string()),
            Just("jwk".to_string()), Just("typ".to_string()), Just("b64".to_string()), "[a-z]{1,5}",
        ], junk(), 0..3),
        payload_edits in prop::collection::btree_map("[a-z]{1,4}|iss|aud|exp|sub|nbf", junk(), 0..3),
        signature in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|s| URL_SAFE_NO_PAD.encode(s)),
            Just(String::new()),
            // a real signature of another token by the issuer's own key
            any::<bool>().prop_map(|ec| sign(&good_claims("mallory"), ec).rsplit('.').next().unwrap().to_string()),
        ],
    ) {
        let mut header = json!({"alg": alg});
        if let Some(k) = kid {
            header["kid"] = k;
        }
        for (k, v) in extra {
            header[k] = v;
        }
        let mut payload = good_claims("alice");
        for (k, v) in payload_edits {
            payload[k] = v;
        }
        let token = format!("{}.{}.{signature}", b64(&header), b64(&payload));
        prop_assert!(fixture().verify(&token).is_err(), "accepted {}", token);
    }

    #[test]
    fn signed_tokens_are_accepted_exactly_when_every_claim_is_valid(
        choices in choices(),
        ec in any::<bool>(),
    ) {
        let (claims, ok) = claims(&choices);
        let result = fixture().verify(&sign(&claims, ec));
        prop_assert_eq!(result.is_ok(), ok, "claims {} → {:?}", claims, result.err());
    }
}

/// Found by `signed_tokens_are_accepted_exactly_when_every_claim_is_valid`: jsonwebtoken
/// accepts an array `iss` that names the issuer; RFC 7519 allows one string only.
#[test]
fn an_array_iss_naming_the_issuer_is_refused() {
    let mut claims = good_claims("alice");
    assert!(fixture().verify(&sign(&claims, false)).is_ok());
    claims["iss"] = json!([ISS]);
    let err = fixture().verify(&sign(&claims, false)).err();
    assert_eq!(
        err.map(|r| r.to_string()),
        Some("the token's 'iss' claim is invalid".to_string())
    );
}
