//! Reading a request body the gateway must see (policy input, approval binding): bounded,
//! kept in pingora's retry buffer so the very same bytes are forwarded upstream.

use bytes::Bytes;
use pingora::prelude::Session;

use crate::policy::Refusal;

/// The whole body, at most `limit` bytes (over it → 413, never truncation).
pub async fn read(session: &mut Session, limit: usize) -> Result<Bytes, Refusal> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::BodyTooLarge { limit });
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Refusal::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err(Refusal::BadRequest("the request body could not be read")),
        }
    }
    if session.retry_buffer_truncated() {
        return Err(Refusal::BodyTooLarge { limit });
    }
    Ok(Bytes::from(body))
}

/// A body as JSON for the policy: `None` when empty.
pub fn json(body: &[u8]) -> Result<Option<serde_json::Value>, Refusal> {
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|_| Refusal::BodyNotJson)
}
