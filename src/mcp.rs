//! MCP (JSON-RPC 2.0 over streamable HTTP), as the gateway needs it: parse a POSTed message
//! or batch, name what each request does (method, tool and arguments, resource uri, prompt),
//! check the 2026-07-28 `Mcp-Method` / `Mcp-Name` headers against the body, build JSON-RPC
//! errors, and filter a `tools/list` result (JSON or one SSE event) to the tools a predicate
//! allows. Pure: no I/O, no pingora.

use serde_json::{json, Map, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
/// The 2026-07-28 revision's code for headers that do not match the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// portcullis: the gateway refused the request (policy, approval, limits).
pub const REFUSED: i64 = -32003;
/// Invalid params (a `requestState` this gateway did not issue for this call).
pub const INVALID_PARAMS: i64 = -32602;
/// 2026-07-28: where a request carries the client's capabilities.
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The protocol revision with multi round-trip requests.
pub const REVISION_MRTR: &str = "2026-07-28";

/// One JSON-RPC message of a POST body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `None` for notifications and responses.
    pub id: Option<Value>,
    /// `None` for responses (the client answering a server request).
    pub method: Option<String>,
    /// `params.name` of `tools/call` and `prompts/get`.
    pub name: Option<String>,
    /// `params.uri` of `resources/read`.
    pub uri: Option<String>,
    /// `params.arguments` of `tools/call` and `prompts/get`.
    pub arguments: Option<Value>,
    /// `params.requestId` of a `notifications/cancelled`: the request it cancels.
    pub cancels: Option<Value>,
    /// `params._meta.progressToken`: the caller accepts `notifications/progress` for it.
    pub progress_token: Option<Value>,
    /// 2026-07-28 multi round-trip: `params.requestState` sent back on a retry.
    pub request_state: Option<String>,
    /// 2026-07-28: `params.inputResponses` (answers to the previous round's requests).
    pub input_responses: Option<Value>,
    /// 2026-07-28: the client declared the elicitation capability in
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]`.
    pub elicitation: bool,
    /// ... and its URL mode (`elicitation.url`).
    pub elicitation_url: bool,
}

impl Message {
    /// The tool of a `tools/call`.
    pub fn tool(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call"))
            .then_some(self.name.as_deref())
            .flatten()
    }

    /// What `Mcp-Name` must say for this message, if anything.
    pub fn header_name(&self) -> Option<&str> {
        match self.method.as_deref() {
            Some("tools/call" | "prompts/get") => self.name.as_deref(),
            Some("resources/read") => self.uri.as_deref(),
            _ => None,
        }
    }

    /// `input.mcp` for the policy.
    pub fn policy_input(&self) -> Value {
        let mut m = Map::new();
        m.insert("method".into(), json!(self.method));
        if let Some(t) = self.tool() {
            m.insert("tool".into(), json!(t));
        }
        if self.method.as_deref() == Some("prompts/get") {
            m.insert("prompt".into(), json!(self.name));
        }
        if let Some(u) = &self.uri {
            m.insert("uri".into(), json!(u));
        }
        m.insert(
            "arguments".into(),
            self.arguments.clone().unwrap_or_else(|| json!({})),
        );
        Value::Object(m)
    }
}

/// A POST body: one message or a batch.
#[derive(Debug, Clone, PartialEq)]
// One body per request, parsed once and never copied: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(v) => v,
        }
    }
}

/// Why a body is not JSON-RPC.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub id: Option<Value>,
}

fn invalid(message: &str, id: Option<Value>) -> RpcError {
    RpcError {
        code: INVALID_REQUEST,
        message: message.to_string(),
        id,
    }
}

fn message(v: &Value) -> Result<Message, RpcError> {
    let Value::Object(o) = v else {
        return Err(invalid("a JSON-RPC message must be an object", None));
    };
    let id = o.get("id").cloned();
    if let Some(i) = &id {
        if !(i.is_string() || i.is_number() || i.is_null()) {
            return Err(invalid("id must be a string or a number", None));
        }
    }
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("jsonrpc must be \"2.0\"", id));
    }
    let method = match o.get("method") {
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(invalid("method must be a string", id)),
        None if o.contains_key("result") || o.contains_key("error") => None,
        None => return Err(invalid("a request needs a method", id)),
    };
    let params = o.get("params");
    if params.is_some_and(|p| !(p.is_object() || p.is_array())) {
        return Err(invalid("params must be an object or an array", id));
    }
    let field = |k: &str| params.and_then(|p| p.get(k));
    let string = |k: &str| -> Result<Option<String>, RpcError> {
        match field(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("params.{k} must be a string"), id.clone())),
        }
    };
    let (name, uri) = match method.as_deref() {
        Some("tools/call" | "prompts/get") => {
            let n = string("name")?;
            if n.is_none() {
                return Err(invalid("params.name is required", id));
            }
            (n, None)
        }
        Some("resources/read") => {
            let u = string("uri")?;
            if u.is_none() {
                return Err(invalid("params.uri is required", id));
            }
            (None, u)
        }
        _ => (None, None),
    };
    let arguments = match field("arguments") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(_)) => Some(a.clone()),
        Some(_) => return Err(invalid("params.arguments must be an object", id)),
    };
    let cancels = match method.as_deref() {
        Some("notifications/cancelled") => field("requestId")
            .filter(|v| v.is_string() || v.is_number())
            .cloned(),
        _ => None,
    };
    let progress_token = field("_meta")
        .and_then(|m| m.get("progressToken"))
        .filter(|v| v.is_string() || v.is_number())
        .cloned();
    let meta = field("_meta");
    let declared = meta
        .and_then(|m| m.get(CLIENT_CAPABILITIES))
        .and_then(|c| c.get("elicitation"))
        .filter(|e| e.is_object());
    let elicitation = declared.is_some();
    let elicitation_url = declared.is_some_and(|e| e.get("url").is_some_and(Value::is_object));
    Ok(Message {
        id,
        method,
        name,
        uri,
        arguments,
        cancels,
        progress_token,
        request_state: field("requestState")
            .and_then(Value::as_str)
            .map(str::to_string),
        input_responses: field("inputResponses").filter(|v| v.is_object()).cloned(),
        elicitation,
        elicitation_url,
    })
}

/// Parse a POST body.
pub fn parse(body: &[u8]) -> Result<Body, RpcError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| RpcError {
        code: PARSE_ERROR,
        message: format!("parse error: {e}"),
        id: None,
    })?;
    match &v {
        Value::Array(items) if items.is_empty() => Err(invalid("an empty batch", None)),
        Value::Array(items) => items
            .iter()
            .map(message)
            .collect::<Result<_, _>>()
            .map(Body::Batch),
        other => message(other).map(Body::Single),
    }
}

/// `Mcp-Method` / `Mcp-Name` must agree with the body (a header cannot smuggle another
/// tool past the policy). Absent headers are not checked here.
pub fn check_headers(
    body: &Body,
    method: Option<&str>,
    name: Option<&str>,
) -> Result<(), RpcError> {
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    let Body::Single(m) = body else {
        return Err(RpcError {
            code: HEADER_MISMATCH,
            message: "Mcp-Method/Mcp-Name headers cannot describe a batch".into(),
            id: None,
        });
    };
    let mismatch = |what: &str| RpcError {
        code: HEADER_MISMATCH,
        message: format!("the {what} header does not match the request body"),
        id: m.id.clone(),
    };
    if method.is_some_and(|h| Some(h) != m.method.as_deref()) {
        return Err(mismatch("Mcp-Method"));
    }
    if name != m.header_name() {
        return Err(mismatch("Mcp-Name"));
    }
    Ok(())
}

/// A JSON-RPC error response.
pub fn error(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = json!({"code": code, "message": message});
    if let Some(d) = data {
        e["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": e})
}

/// Remove from a JSON-RPC response whose `result.tools` is a list every tool `allowed`
/// refuses, without building a tree of the tools: each tool stays raw JSON and only its `name`
/// is read, and the kept tools are spliced into the original text (everything outside the
/// `tools` array is passed on byte for byte). Returns the new text and how many tools were
/// removed (`None`: not a tools/list result, or not JSON).
pub fn filter_tools_json(
    text: &str,
    mut allowed: impl FnMut(&str) -> bool,
) -> Option<(String, usize)> {
    use std::collections::BTreeMap;

    use serde_json::value::RawValue;

    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
    }
    // Maps, as before: a repeated key keeps its last value, as JSON parsers commonly do.
    let top: BTreeMap<&str, &RawValue> = serde_json::from_str(text).ok()?;
    let result: BTreeMap<&str, &RawValue> = serde_json::from_str(top.get("result")?.get()).ok()?;
    let tools_raw = result.get("tools")?.get();
    let tools: Vec<&RawValue> = serde_json::from_str(tools_raw).ok()?;
    // Borrowed raw values are slices of `text`: where the array is.
    let start = (tools_raw.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(tools_raw.len())?;
    if text.get(start..end) != Some(tools_raw) {
        return None;
    }
    let before = tools.len();
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    out.push('[');
    let mut kept = 0usize;
    for tool in tools {
        let keep = serde_json::from_str::<Named>(tool.get()).is_ok_and(|n| allowed(&n.name));
        if keep {
            if kept > 0 {
                out.push(',');
            }
            out.push_str(tool.get());
            kept += 1;
        }
    }
    out.push(']');
    out.push_str(&text[end..]);
    Some((out, before - kept))
}

/// Rewrite one SSE event (the text between blank lines, without them): a `data:` payload that
/// is a tools/list result is filtered; anything else is returned unchanged.
pub fn filter_sse_event(event: &str, allowed: impl FnMut(&str) -> bool) -> Option<String> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    let (v, _) = filter_tools_json(&data.join("\n"), allowed)?;
    let mut out: Vec<String> = event
        .lines()
        .filter(|l| !l.starts_with("data:"))
        .map(str::to_string)
        .collect();
    out.push(format!("data: {v}"));
    Some(out.join("\n"))
}

#[cfg(test)]
mod tests;
