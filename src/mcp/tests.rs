use serde_json::json;

use super::{
    check_headers, filter_sse_event, filter_tools_json, parse, Body, HEADER_MISMATCH,
    INVALID_REQUEST, PARSE_ERROR,
};

#[test]
fn parses_calls_and_names_what_they_do() {
    let b = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pay_invoice","arguments":{"amount":5}}}"#).unwrap();
    let Body::Single(m) = &b else { panic!() };
    assert_eq!(m.tool(), Some("pay_invoice"));
    let input = m.policy_input();
    assert_eq!(input["tool"], "pay_invoice");
    assert_eq!(input["arguments"]["amount"], 5);
    let r = parse(
        br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#,
    )
    .unwrap();
    assert_eq!(r.messages()[0].policy_input()["uri"], "file:///x");
    let n = parse(br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":1,"result":{}}]"#).unwrap();
    assert_eq!(n.messages().len(), 2);
    assert_eq!(n.messages()[1].method, None);
}

#[test]
fn rejects_what_is_not_json_rpc() {
    assert_eq!(parse(b"{nope").unwrap_err().code, PARSE_ERROR);
    for bad in [
        &br#"[]"#[..],
        br#"{"id":1,"method":"x"}"#,
        br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
        br#"{"jsonrpc":"2.0","id":1}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
        br#"7"#,
    ] {
        assert_eq!(
            parse(bad).unwrap_err().code,
            INVALID_REQUEST,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn headers_must_match_the_body() {
    let b = parse(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_invoice"}}"#,
    )
    .unwrap();
    assert!(check_headers(&b, None, None).is_ok());
    assert!(check_headers(&b, Some("tools/call"), Some("read_invoice")).is_ok());
    assert_eq!(
        check_headers(&b, Some("tools/call"), Some("delete_all"))
            .unwrap_err()
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        check_headers(&b, Some("tools/list"), Some("read_invoice"))
            .unwrap_err()
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        check_headers(&b, Some("tools/call"), None)
            .unwrap_err()
            .code,
        HEADER_MISMATCH
    );
    let l = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
    assert!(check_headers(&l, Some("tools/list"), None).is_ok());
}

#[test]
fn tools_list_filtering_json_and_sse() {
    let text =
        json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"name":"c"}]}})
            .to_string();
    let (out, removed) = filter_tools_json(&text, |n| n != "b").unwrap();
    assert_eq!(removed, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name":"a"},{"name":"c"}]));
    let event = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}";
    let out = filter_sse_event(event, |n| n == "a").unwrap();
    assert!(out.starts_with("event: message\ndata: "));
    assert!(out.contains("\"a\"") && !out.contains("\"b\""));
    assert_eq!(
        filter_sse_event(
            "event: ping\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}",
            |_| false
        ),
        None
    );
}

#[test]
fn raw_filter_keeps_other_fields_untouched() {
    let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","inputSchema":{"x":[1,2]}},{"name":"b"}],"nextCursor":"c"}}"#;
    let (out, removed) = filter_tools_json(text, |n| n == "a").unwrap();
    assert_eq!(removed, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","inputSchema":{"x":[1,2]}}],"nextCursor":"c"}})
    );
    assert!(filter_tools_json(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, |_| true).is_none());
    assert!(filter_tools_json("nope", |_| true).is_none());
}

#[test]
fn tools_filter_splices_and_keeps_the_rest_byte_for_byte() {
    let text = r#"{ "jsonrpc": "2.0", "id": 9,
  "result": {"tools": [ {"name": "a", "x": [1, {"name": "b"}]} , {"name":"b"},{"name":"c"} ],
  "nextCursor": "n" } }"#;
    let (out, removed) = filter_tools_json(text, |n| n != "b").unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        out,
        r#"{ "jsonrpc": "2.0", "id": 9,
  "result": {"tools": [{"name": "a", "x": [1, {"name": "b"}]},{"name":"c"}],
  "nextCursor": "n" } }"#
    );
    // Nothing allowed: an empty array; a tool without a string name is removed.
    let (out, removed) =
        filter_tools_json(r#"{"result":{"tools":[{"name":1},{"n":"a"}]}}"#, |_| true).unwrap();
    assert_eq!((out.as_str(), removed), (r#"{"result":{"tools":[]}}"#, 2));
    // A repeated key: the last one counts, as for the client's parser.
    let (out, _) = filter_tools_json(
        r#"{"result":{"tools":[{"name":"x"}]},"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#,
        |n| n == "a",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name": "a"}]));
}
