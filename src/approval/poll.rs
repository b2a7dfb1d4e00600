//! Polling the CIBA token endpoint until the user answers, and the time limits around it.

use std::time::{Duration, Instant};

use super::ciba::{self, Poll};
use super::confirm::Asked;
use super::Outcome;
use crate::config::model::ApprovalSpec;
use crate::credentials::oauth::{OAuthError, TokenClient};
use crate::secret::Secret;

/// How long to wait for the user: the route's limit, but a second less than the authorization
/// server keeps the request, so the outcome of a late answer is always our time-out (408),
/// never a race with the server's `expired_token`.
pub fn lifetime(spec: &ApprovalSpec, started: &ciba::Started) -> u64 {
    spec.max_wait
        .as_secs()
        .min(started.expires_in.saturating_sub(1))
        .max(1)
}

/// How long a poller's lease lasts: two intervals and some slack, renewed before each wait.
pub fn lease_ttl(interval: u64) -> Duration {
    Duration::from_secs(interval * 2 + 3)
}

/// A lease for a taken-over approval, until its poller renews it with its interval.
pub const ADOPT_LEASE: Duration = Duration::from_secs(10);

/// Poll until the user answers, the request expires or `deadline` passes; an approval counts
/// only if the answer grants what was `asked` (else `Mismatch`). `keep(interval)`
/// is asked before each wait (renewing the polling lease); `None` when it says no (another
/// replica polls now, or the backend is gone): nothing is recorded.
pub async fn poll_until<K: std::future::Future<Output = bool>>(
    client: &TokenClient,
    auth_req_id: &Secret,
    asked: &Asked,
    mut interval: u64,
    deadline: Instant,
    on_slow_down: impl Fn(u64),
    mut keep: impl FnMut(u64) -> K,
) -> Option<Outcome> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(Outcome::TimedOut);
        }
        if !keep(interval).await {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(interval).min(left)).await;
        if Instant::now() >= deadline {
            return Some(Outcome::TimedOut);
        }
        match ciba::poll(client, auth_req_id).await {
            Poll::Pending => {}
            Poll::SlowDown => {
                interval += ciba::SLOW_DOWN_STEP;
                on_slow_down(interval);
            }
            Poll::Approved(answer) => {
                return Some(match asked.check(&answer).await {
                    Ok(()) => Outcome::Approved,
                    Err(m) => {
                        tracing::warn!(code = m.code, why = %m.why, "the user's answer does not cover what was asked; refusing");
                        Outcome::Mismatch(m.code)
                    }
                })
            }
            Poll::Denied => return Some(Outcome::Denied),
            Poll::Expired => return Some(Outcome::Expired),
            // A network blip is retried until the deadline; an error answer is final.
            Poll::Failed(OAuthError::Unreachable(e)) => {
                tracing::warn!(error = %e, "CIBA poll failed; retrying");
            }
            Poll::Failed(e) => {
                tracing::warn!(error = %e, "CIBA poll refused; giving up");
                return Some(Outcome::Failed);
            }
        }
    }
}
