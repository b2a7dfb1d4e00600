//! The `requestState` of an MCP 2026-07-28 `input_required` round: sealed (AES-256-GCM, keys
//! `id:base64` as for the vault, the first one seals, the others still open: rotatable and
//! shared by replicas) and bound to the issuer, the user, the agent, the route, the call
//! (method, name, SHA-256 of the arguments), the approval and an expiry. It is attacker input
//! on the way back: a tampered, expired, or another caller's or another call's state is
//! refused and nothing is forwarded.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::vault::VaultKeys;

const PREFIX: &str = "pc1.";
const AAD: &[u8] = b"portcullis MCP requestState v1";
/// Largest `requestState` accepted back (a sealed state is a few hundred bytes).
const MAX_LEN: usize = 4096;

/// What a state binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    /// The approval the rounds wait on.
    pub approval: String,
    pub iss: String,
    pub sub: String,
    pub agent: Option<String>,
    pub route: String,
    /// `tools/call`, `prompts/get` or `resources/read`, and the tool, prompt or URI.
    pub method: String,
    pub name: String,
    /// Hex SHA-256 of the canonical arguments.
    pub args: String,
    /// Unix seconds after which the state is refused.
    pub exp: u64,
}

/// Why a state was refused (all are the client's fault: -32602).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    Malformed,
    /// Not sealed by any of this gateway's keys, or altered.
    Forged,
    Expired,
    /// Valid, but for another caller, route or call.
    Mismatch,
}

impl StateError {
    pub fn message(self) -> &'static str {
        match self {
            StateError::Malformed => "requestState is not one this gateway issued",
            StateError::Forged => "requestState was altered or not sealed by this gateway",
            StateError::Expired => "requestState has expired",
            StateError::Mismatch => "requestState belongs to another caller or another call",
        }
    }
}

/// Seal `claims` with the primary key.
pub fn seal(keys: &VaultKeys, claims: &StateClaims) -> Option<String> {
    seal_raw(keys, AAD, &serde_json::to_vec(claims).ok()?)
}

/// What the link to an approval's status page binds (see [`page_token`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PageClaims {
    approval: String,
    exp: u64,
}

const PAGE_AAD: &[u8] = b"portcullis approval page v1";

/// The capability in the link to approval `id`'s status page, valid until `exp`: only the
/// caller it was given to (in their elicitation) can open the page.
pub fn page_token(keys: &VaultKeys, id: &str, exp: u64) -> Option<String> {
    let claims = PageClaims {
        approval: id.to_string(),
        exp,
    };
    seal_raw(keys, PAGE_AAD, &serde_json::to_vec(&claims).ok()?)
}

/// Whether `token` opens the status page of approval `id` at `now`.
pub fn page_allows(keys: &VaultKeys, token: &str, id: &str, now: u64) -> bool {
    open_raw(keys, PAGE_AAD, token)
        .ok()
        .and_then(|plain| serde_json::from_slice::<PageClaims>(&plain).ok())
        .is_some_and(|c| c.approval == id && c.exp > now)
}

fn seal_raw(keys: &VaultKeys, aad: &[u8], plain: &[u8]) -> Option<String> {
    let (nonce, sealed) = keys.seal(aad, plain).ok()?;
    let id = keys.primary_id().as_bytes();
    let mut raw = Vec::with_capacity(1 + id.len() + nonce.len() + sealed.len());
    raw.push(u8::try_from(id.len()).ok()?);
    raw.extend_from_slice(id);
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&sealed);
    Some(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// Open a state and check it against what the current call is (`expected`, whose `approval`
/// and `exp` are ignored) at `now`.
pub fn open(
    keys: &VaultKeys,
    text: &str,
    expected: &StateClaims,
    now: u64,
) -> Result<StateClaims, StateError> {
    let plain = open_raw(keys, AAD, text)?;
    let claims: StateClaims = serde_json::from_slice(&plain).map_err(|_| StateError::Forged)?;
    if claims.exp <= now {
        return Err(StateError::Expired);
    }
    let same = StateClaims {
        approval: claims.approval.clone(),
        exp: claims.exp,
        ..expected.clone()
    };
    if claims != same {
        return Err(StateError::Mismatch);
    }
    Ok(claims)
}

fn open_raw(keys: &VaultKeys, aad: &[u8], text: &str) -> Result<Vec<u8>, StateError> {
    if text.len() > MAX_LEN {
        return Err(StateError::Malformed);
    }
    let body = text.strip_prefix(PREFIX).ok_or(StateError::Malformed)?;
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| StateError::Malformed)?;
    let (&id_len, rest) = raw.split_first().ok_or(StateError::Malformed)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + 12 + 16 {
        return Err(StateError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, sealed) = rest.split_at(12);
    let id = std::str::from_utf8(id).map_err(|_| StateError::Malformed)?;
    keys.open(id, nonce, aad, sealed)
        .map_err(|_| StateError::Forged)
}

#[cfg(test)]
mod tests {
    use super::{open, seal, StateClaims, StateError};
    use crate::vault::VaultKeys;

    fn claims() -> StateClaims {
        StateClaims {
            approval: "ap-1".into(),
            iss: "https://idp".into(),
            sub: "alice".into(),
            agent: Some("agent-1".into()),
            route: "mcp".into(),
            method: "tools/call".into(),
            name: "pay_invoice".into(),
            args: "ab".repeat(32),
            exp: 1000,
        }
    }

    #[test]
    fn sealed_states_open_only_for_the_same_call_before_expiry() {
        let keys = VaultKeys::parse(&VaultKeys::generate().unwrap()).unwrap();
        let state = seal(&keys, &claims()).unwrap();
        assert_eq!(open(&keys, &state, &claims(), 999).unwrap(), claims());
        assert_eq!(
            open(&keys, &state, &claims(), 1000),
            Err(StateError::Expired)
        );
        for change in [
            |c: &mut StateClaims| c.sub = "bob".into(),
            |c: &mut StateClaims| c.agent = None,
            |c: &mut StateClaims| c.iss = "https://other".into(),
            |c: &mut StateClaims| c.route = "mcp2".into(),
            |c: &mut StateClaims| c.name = "refund".into(),
            |c: &mut StateClaims| c.args = "cd".repeat(32),
        ] {
            let mut other = claims();
            change(&mut other);
            assert_eq!(open(&keys, &state, &other, 1), Err(StateError::Mismatch));
        }
        // One flipped character anywhere after the prefix: refused.
        for i in 4..state.len() {
            let mut bytes = state.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered != state {
                assert!(open(&keys, &tampered, &claims(), 1).is_err(), "{i}");
            }
        }
        // Another gateway's key, and the rotation that keeps an old key to open with.
        let other = VaultKeys::parse(&VaultKeys::generate().unwrap()).unwrap();
        assert_eq!(open(&other, &state, &claims(), 1), Err(StateError::Forged));
        assert_eq!(
            open(&keys, "garbage", &claims(), 1),
            Err(StateError::Malformed)
        );
    }
}
