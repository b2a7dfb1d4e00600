//! Validation of approval holds: a route's `approval:` block and the top-level `approvals:`
//! limits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::super::file;
use super::super::model::{
    ApprovalLimits, ApprovalMode, ApprovalSpec, ClientSpec, LoginHint, McpApprovalMode, RouteSpec,
};
use super::super::{ConfigError, Source};
use super::credentials::client_index;
use super::MAX_POLICY_BODY;

pub fn limits(
    src: &Source,
    base: &Path,
    a: file::Approvals,
) -> Result<ApprovalLimits, ConfigError> {
    let positive = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(src.error(field, "must be greater than 0")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(ApprovalLimits {
        store: a.store.map(|p| base.join(p)),
        max_pending: positive("approvals.max_pending", a.max_pending, 10_000)?,
        max_pending_per_user: positive(
            "approvals.max_pending_per_user",
            a.max_pending_per_user,
            10,
        )?,
        state_key: match super::credentials::secret(
            src,
            base,
            "approvals.state_key_env",
            a.state_key_env.as_deref(),
            a.state_key_file.as_deref(),
        )? {
            Some(k) => {
                crate::vault::VaultKeys::parse(k.expose())
                    .map_err(|e| src.error("approvals.state_key_env", e.to_string()))?;
                Some(k)
            }
            None => None,
        },
    })
}

pub fn approval(
    src: &Source,
    at: &str,
    a: file::Approval,
    clients: &[Arc<ClientSpec>],
) -> Result<ApprovalSpec, ConfigError> {
    let client = client_index(src, &format!("{at}.client"), &a.client, clients)?;
    let url = url::Url::parse(&a.backchannel_endpoint).map_err(|e| {
        src.error(
            &format!("{at}.backchannel_endpoint"),
            format!("invalid URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(src.error(
            &format!("{at}.backchannel_endpoint"),
            "must be an http or https URL",
        ));
    }
    let mode = match a.mode.as_deref() {
        None | Some("sync") => ApprovalMode::Sync,
        Some("async") => ApprovalMode::Async,
        Some(other) => {
            return Err(src.error(
                &format!("{at}.mode"),
                format!("'{other}' is not a mode (sync or async)"),
            ))
        }
    };
    let login_hint = match a.login_hint.as_deref() {
        None | Some("sub") => LoginHint::Sub,
        Some("iss_sub") => LoginHint::IssSub,
        Some(other) => {
            return Err(src.error(
                &format!("{at}.login_hint"),
                format!("'{other}' is not a login_hint format (sub or iss_sub)"),
            ))
        }
    };
    let mut scope: Vec<String> = vec!["openid".into()];
    for s in a.scope.as_deref().unwrap_or("").split_whitespace() {
        if !scope.iter().any(|x| x == s) {
            scope.push(s.to_string());
        }
    }
    let max_wait = a.max_wait_seconds.unwrap_or(120);
    if max_wait == 0 || max_wait > 3600 {
        return Err(src.error(
            &format!("{at}.max_wait_seconds"),
            "must be between 1 and 3600",
        ));
    }
    let max_body_bytes = a.max_body_bytes.unwrap_or(MAX_POLICY_BODY);
    if max_body_bytes == 0 || max_body_bytes > MAX_POLICY_BODY {
        return Err(src.error(
            &format!("{at}.max_body_bytes"),
            format!("must be between 1 and {MAX_POLICY_BODY}"),
        ));
    }
    // `None` here: `auto` where an approval store exists, else `hold` (see check_routes).
    let mcp = match a.mcp.as_deref() {
        None => None,
        Some("hold") => Some(McpApprovalMode::Hold),
        Some("retry_hint") => Some(McpApprovalMode::RetryHint),
        Some("input_required") => Some(McpApprovalMode::InputRequired),
        Some("progress") => Some(McpApprovalMode::Progress),
        Some("auto") => Some(McpApprovalMode::Auto),
        Some(other) => {
            return Err(src.error(
                &format!("{at}.mcp"),
                format!(
                    "'{other}' is not an MCP approval mode (auto, input_required, progress, \
                     retry_hint or hold)"
                ),
            ))
        }
    };
    let round = a.round_seconds.unwrap_or(50.min(max_wait));
    if round == 0 || round > max_wait {
        return Err(src.error(
            &format!("{at}.round_seconds"),
            format!("must be between 1 and max_wait_seconds ({max_wait})"),
        ));
    }
    let replay = a.replay_seconds.unwrap_or(60);
    if replay > 86_400 {
        return Err(src.error(
            &format!("{at}.replay_seconds"),
            "must be at most 86400 (a day: how long finished approvals are kept)",
        ));
    }
    Ok(ApprovalSpec {
        replay: Duration::from_secs(replay),
        mcp: mcp.unwrap_or(McpApprovalMode::Auto),
        mcp_explicit: mcp.is_some(),
        round: Duration::from_secs(round),
        client,
        backchannel_endpoint: a.backchannel_endpoint,
        mode,
        login_hint,
        scope: scope.join(" "),
        max_wait: Duration::from_secs(max_wait),
        max_body_bytes,
        require_details: a.require_approved_details.unwrap_or(true),
        keep_on_policy_change: a.keep_on_policy_change.unwrap_or(false),
    })
}

/// Cross-route checks: an async route needs `approvals.store` (or a shared state backend).
pub fn check_routes(
    src: &Source,
    routes: &mut [Arc<RouteSpec>],
    limits: &ApprovalLimits,
    shared_state: bool,
) -> Result<(), ConfigError> {
    let stored = limits.store.is_some() || shared_state;
    for (i, r) in routes.iter_mut().enumerate() {
        let Some(a) = &r.approval else { continue };
        if a.mcp_explicit && r.mcp.is_none() {
            return Err(src.error(
                &format!("routes[{i}].approval.mcp"),
                "only for `kind: mcp` routes",
            ));
        }
        if a.mcp_explicit && a.mcp != McpApprovalMode::Hold && !stored {
            return Err(src.error(
                &format!("routes[{i}].approval.mcp"),
                format!(
                    "{} approvals outlive the call in `approvals.store` (or `state.backend: redis`): set it",
                    a.mcp.label()
                ),
            ));
        }
        if !a.mcp_explicit && (!stored || r.mcp.is_none()) {
            // Without a store an approval cannot outlive the call: hold it.
            if let Some(route) = Arc::get_mut(r) {
                if let Some(a) = route.approval.as_mut() {
                    a.mcp = McpApprovalMode::Hold;
                }
            }
        }
        let Some(a) = &r.approval else { continue };
        if a.mode == ApprovalMode::Async && limits.store.is_none() && !shared_state {
            return Err(src.error(
                &format!("routes[{i}].approval.mode"),
                "async approvals survive restarts in `approvals.store` (or `state.backend: redis`): set it",
            ));
        }
    }
    Ok(())
}
