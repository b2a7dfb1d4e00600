//! Upstream tokens from the built-in vault: the stored access token while it is fresh, else a
//! refresh_token grant at the connection's token endpoint whose result (with a rotated refresh
//! token) is written back with compare-and-swap, so two refreshers never both win.

use std::sync::Arc;
use std::time::Instant;

use crate::config::model::{ConnectionSpec, CredentialSpec};
use crate::metrics::CredentialMetrics;
use crate::policy::Refusal;
use crate::vault::{Credential, VaultError, VaultStore};

use super::cache::UpstreamToken;
use super::oauth::{OAuthError, TokenClient};
use super::{refusal_for, valid_until};

/// Run a blocking vault call off the async workers.
async fn blocking<T: Send + 'static>(
    store: &Arc<VaultStore>,
    f: impl FnOnce(&VaultStore) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| VaultError::Sqlite(format!("vault task failed: {e}")))?
}

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
    pub store: &'a Arc<VaultStore>,
    pub connection: &'a ConnectionSpec,
    pub client: &'a TokenClient,
    pub metrics: &'a CredentialMetrics,
}

impl VaultSource<'_> {
    fn vault_error(&self, e: &VaultError) -> Refusal {
        self.metrics.vault_errors.inc();
        tracing::error!(connection = %self.connection.name, error = %e, "vault error; denying");
        Refusal::CredentialsUnavailable
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
        let conn = self.connection.name.to_string();
        let (s, c) = (sub.to_string(), conn.clone());
        let stored = blocking(self.store, move |v| v.get(&s, &c))
            .await
            .map_err(|e| self.vault_error(&e))?;
        let Some((cred, version)) = stored else {
            return Err(self.consent());
        };
        if let Some(t) = fresh(&cred, spec, now) {
            return Ok(t);
        }
        let Some(refresh) = cred.refresh_token.clone() else {
            return Err(self.consent());
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
            Err(e) => return Err(self.refresh_failed(&e, started)),
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
        let (s, c, f) = (sub.to_string(), conn.clone(), new.clone());
        let written = blocking(self.store, move |v| v.replace_if(&s, &c, version, &f))
            .await
            .map_err(|e| self.vault_error(&e))?;
        if written {
            return Ok(UpstreamToken {
                valid_until: valid_until(now, resp.expires_in, spec),
                value: new.access_token,
            });
        }
        // Replaced or revoked meanwhile (another process): the stored row wins.
        tracing::warn!(connection = %self.connection.name, "vault row changed during refresh; using the stored one");
        let s = sub.to_string();
        let stored = blocking(self.store, move |v| v.get(&s, &conn))
            .await
            .map_err(|e| self.vault_error(&e))?;
        match stored {
            None => Err(self.consent()),
            Some((cred, _)) => fresh(&cred, spec, now).ok_or(Refusal::CredentialsUnavailable),
        }
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
