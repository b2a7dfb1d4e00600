//! Upstream tokens from the built-in vault: the stored access token while it is fresh, else a
//! refresh_token grant at the connection's token endpoint, done under the row's lock
//! ([`crate::vault::VaultBackend::update_locked`]) so that replicas sharing a PostgreSQL vault
//! never present the same (rotating) refresh token twice: the one that waited finds the
//! refreshed row and uses it.

use std::time::{Duration, Instant};

use crate::config::model::{ConnectionSpec, CredentialSpec};
use crate::metrics::CredentialMetrics;
use crate::policy::Refusal;
use crate::vault::{Credential, Update, Vault, VaultError};

use super::cache::UpstreamToken;
use super::oauth::{OAuthError, TokenClient};
use super::{refusal_for, valid_until};

/// How much longer than the token endpoint's time-out a replica waits for another one's
/// refresh of the same row.
const LOCK_MARGIN: Duration = Duration::from_secs(5);

/// The stored access token if it is still usable `spec.expiry_margin` from now.
fn fresh(cred: &Credential, spec: &CredentialSpec, now: u64) -> Option<UpstreamToken> {
    let margin = spec.expiry_margin.as_secs();
    match cred.expires_at {
        None => Some(UpstreamToken {
            value: cred.access_token.clone(),
            valid_until: valid_until(now, None, spec),
        }),
        Some(exp) if exp > now + margin => Some(UpstreamToken {
            value: cred.access_token.clone(),
            valid_until: exp - margin,
        }),
        Some(_) => None,
    }
}

pub struct VaultSource<'a> {
    pub vault: &'a Vault,
    pub connection: &'a ConnectionSpec,
    pub client: &'a TokenClient,
    pub metrics: &'a CredentialMetrics,
}

impl VaultSource<'_> {
    fn vault_error(&self, operation: &str, e: &VaultError) -> Refusal {
        self.metrics.vault_errors.inc();
        tracing::error!(connection = %self.connection.name, operation, error = %e, "vault error; denying");
        if e.is_backend() {
            self.metrics
                .vault_backend_error(self.vault.kind(), operation);
            Refusal::VaultUnavailable
        } else {
            Refusal::CredentialsUnavailable
        }
    }

    fn consent(&self) -> Refusal {
        Refusal::ConsentRequired {
            connection: self.connection.name.to_string(),
        }
    }

    /// A usable access token of `sub` for this connection.
    pub async fn token(
        &self,
        sub: &str,
        spec: &CredentialSpec,
        now: u64,
    ) -> Result<UpstreamToken, Refusal> {
        let conn = &*self.connection.name;
        let stored = self
            .vault
            .get(sub, conn)
            .await
            .map_err(|e| self.vault_error("get", &e))?;
        match stored {
            None => return Err(self.consent()),
            Some((cred, _)) => {
                if let Some(t) = fresh(&cred, spec, now) {
                    return Ok(t);
                }
                if cred.refresh_token.is_none() {
                    return Err(self.consent());
                }
            }
        }
        // Expired: refresh under the row lock. Whoever held it before us may have refreshed.
        let mut outcome: Option<(Result<UpstreamToken, Refusal>, bool)> = None;
        let slot = &mut outcome;
        let wait = self.client.spec.timeout + LOCK_MARGIN;
        let written = self
            .vault
            .update_locked(
                sub,
                conn,
                wait,
                Box::new(move |row| {
                    Box::pin(async move {
                        let (result, update) = self.refresh(row, spec, now).await;
                        *slot = Some((result, matches!(update, Update::Write(_))));
                        update
                    })
                }),
            )
            .await
            .map_err(|e| self.vault_error("refresh", &e))?;
        let Some((result, wanted_write)) = outcome else {
            return Err(Refusal::CredentialsUnavailable);
        };
        if written || !wanted_write {
            return result;
        }
        // Refreshed but not written: (SQLite shared by processes) replaced meanwhile.
        let stored = self
            .vault
            .get(sub, conn)
            .await
            .map_err(|e| self.vault_error("get", &e))?;
        match stored {
            None => Err(self.consent()),
            Some((cred, _)) => fresh(&cred, spec, now).ok_or(Refusal::CredentialsUnavailable),
        }
    }

    /// Decides for the locked row: use it if another refresher made it fresh, else refresh.
    async fn refresh(
        &self,
        row: Option<(Credential, u64)>,
        spec: &CredentialSpec,
        now: u64,
    ) -> (Result<UpstreamToken, Refusal>, Update) {
        let Some((cred, _)) = row else {
            return (Err(self.consent()), Update::Keep);
        };
        if let Some(t) = fresh(&cred, spec, now) {
            return (Ok(t), Update::Keep);
        }
        let Some(refresh) = cred.refresh_token.clone() else {
            return (Err(self.consent()), Update::Keep);
        };
        let started = Instant::now();
        let answer = self
            .client
            .request(vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", refresh.expose().to_string()),
            ])
            .await;
        let resp = match answer {
            Ok(r) => r,
            Err(e) => return (Err(self.refresh_failed(&e, started)), Update::Keep),
        };
        self.metrics
            .exchanged("vault", "success", started.elapsed());
        self.metrics.refreshed("success");
        let new = Credential {
            access_token: resp.access_token,
            refresh_token: resp.refresh_token.or(cred.refresh_token),
            expires_at: resp.expires_in.map(|e| now + e),
            scopes: resp
                .scope
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or(cred.scopes),
        };
        let token = UpstreamToken {
            valid_until: valid_until(now, resp.expires_in, spec),
            value: new.access_token.clone(),
        };
        (Ok(token), Update::Write(new))
    }

    fn refresh_failed(&self, e: &OAuthError, started: Instant) -> Refusal {
        let (outcome, refusal) = refusal_for(e);
        self.metrics.exchanged("vault", outcome, started.elapsed());
        self.metrics.refreshed(outcome);
        tracing::warn!(connection = %self.connection.name, error = %e, "vault refresh failed; denying");
        match refusal {
            // The refresh token is no longer good: the user must connect again.
            Refusal::ExchangeRejected => self.consent(),
            other => other,
        }
    }
}
