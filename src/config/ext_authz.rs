//! `ext_authz:`: portcullis as Envoy's external authorization service, validated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::file;
use super::model::{ApprovalMode, RouteSpec};
use super::{ConfigError, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzSpec {
    pub listen: SocketAddr,
    pub max_hold: Duration,
}

pub fn ext_authz(
    src: &Source,
    e: Option<file::ExtAuthz>,
    routes: &[Arc<RouteSpec>],
) -> Result<Option<ExtAuthzSpec>, ConfigError> {
    let Some(e) = e else { return Ok(None) };
    let listen: SocketAddr = e
        .listen
        .parse()
        .map_err(|_| src.error("ext_authz.listen", "must be ip:port"))?;
    let max_hold = e.max_hold_seconds.unwrap_or(10);
    if !(1..=300).contains(&max_hold) {
        return Err(src.error("ext_authz.max_hold_seconds", "must be within 1..300"));
    }
    // A sync hold answers the Check only when the user has answered: it must fit in Envoy's
    // ext_authz time-out.
    for (i, r) in routes.iter().enumerate() {
        if let Some(a) = r.approval.as_ref().filter(|a| a.mode == ApprovalMode::Sync) {
            if a.max_wait.as_secs() > max_hold {
                return Err(src.error(
                    &format!("routes[{i}].approval.max_wait_seconds"),
                    format!(
                        "a sync hold of {} s does not fit ext_authz.max_hold_seconds ({max_hold} s): \
                         lower it, raise max_hold_seconds (and Envoy's ext_authz timeout), or use mode: async",
                        a.max_wait.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(Some(ExtAuthzSpec {
        listen,
        max_hold: Duration::from_secs(max_hold),
    }))
}
