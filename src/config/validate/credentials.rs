//! Validation of the credential sections: `clients:`, `vault:`, a route's `credentials:` and the
//! admin API secret. Secrets are read from the environment or files here, so `check` reports a
//! missing one; their values never appear in an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};

use super::super::file;
use super::super::model::{
    ClientAuth, ClientSpec, ConnectionSpec, CredentialMode, CredentialSpec, SigningKey,
    VaultBackendSpec, VaultKeySource, VaultSpec,
};
use super::super::{ConfigError, Source};
use crate::secret::Secret;

/// A secret from `env` (variable name) or `file` (path), exactly one of them, if any.
pub fn secret(
    src: &Source,
    base: &Path,
    at: &str,
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    let value = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(src.error(at, "set either the `_env` or the `_file` form, not both"))
        }
        (Some(var), None) => std::env::var(var)
            .map_err(|_| src.error(at, format!("environment variable '{var}' is not set")))?,
        (None, Some(path)) => {
            let path = base.join(path);
            std::fs::read_to_string(&path)
                .map_err(|e| src.error(at, format!("cannot read {}: {e}", path.display())))?
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(src.error(at, "the secret is empty"));
    }
    Ok(Some(Secret::new(value)))
}

fn signing_key(
    src: &Source,
    at: &str,
    path: &Path,
    kid: Option<String>,
) -> Result<SigningKey, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| src.error(at, format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&pem);
    let (key, alg) = if text.contains("RSA PRIVATE KEY") {
        (EncodingKey::from_rsa_pem(&pem), Algorithm::RS256)
    } else if text.contains("EC PRIVATE KEY") {
        (EncodingKey::from_ec_pem(&pem), Algorithm::ES256)
    } else {
        // PKCS#8: try RSA, then EC P-256.
        match EncodingKey::from_rsa_pem(&pem) {
            Ok(k) if jsonwebtoken::jwk::Jwk::from_encoding_key(&k, Algorithm::RS256).is_ok() => {
                (Ok(k), Algorithm::RS256)
            }
            _ => (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
        }
    };
    let key = key.map_err(|_| {
        src.error(
            at,
            format!(
                "{} is not an RSA or EC P-256 private key in PEM",
                path.display()
            ),
        )
    })?;
    Ok(SigningKey { key, alg, kid })
}

pub fn clients(
    src: &Source,
    base: &Path,
    raw: Vec<file::Client>,
) -> Result<Vec<Arc<ClientSpec>>, ConfigError> {
    let mut out: Vec<Arc<ClientSpec>> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let at = format!("clients[{i}]");
        if c.name.is_empty() || out.iter().any(|o| *o.name == *c.name) {
            return Err(src.error(
                &format!("{at}.name"),
                format!("'{}' is empty or used twice", c.name),
            ));
        }
        let url = url::Url::parse(&c.token_endpoint)
            .map_err(|e| src.error(&format!("{at}.token_endpoint"), format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(src.error(
                &format!("{at}.token_endpoint"),
                "must be an http or https URL",
            ));
        }
        if c.client_id.is_empty() {
            return Err(src.error(&format!("{at}.client_id"), "must not be empty"));
        }
        let secret = secret(
            src,
            base,
            &format!("{at}.client_secret_env"),
            c.client_secret_env.as_deref(),
            c.client_secret_file.as_deref(),
        )?;
        let signing_key = c
            .private_key_file
            .as_deref()
            .map(|p| {
                signing_key(
                    src,
                    &format!("{at}.private_key_file"),
                    &base.join(p),
                    c.key_id.clone(),
                )
            })
            .transpose()?;
        let method = c.auth.as_deref().unwrap_or("client_secret_basic");
        let auth = match (method, secret) {
            ("client_secret_basic", Some(s)) => ClientAuth::SecretBasic(s),
            ("client_secret_post", Some(s)) => ClientAuth::SecretPost(s),
            ("client_secret_basic" | "client_secret_post", None) => {
                return Err(src.error(
                    &format!("{at}.auth"),
                    format!("{method} needs client_secret_env or client_secret_file"),
                ))
            }
            ("private_key_jwt", _) if signing_key.is_none() => {
                return Err(src.error(
                    &format!("{at}.auth"),
                    "private_key_jwt needs private_key_file",
                ))
            }
            ("private_key_jwt", _) => ClientAuth::PrivateKeyJwt,
            (other, _) => {
                return Err(src.error(
                    &format!("{at}.auth"),
                    format!("unknown method '{other}' (client_secret_basic, client_secret_post or private_key_jwt)"),
                ))
            }
        };
        out.push(Arc::new(ClientSpec {
            name: Arc::from(c.name.as_str()),
            token_endpoint: c.token_endpoint,
            client_id: c.client_id,
            auth,
            signing_key,
            timeout: Duration::from_millis(c.timeout_ms.unwrap_or(5_000).max(1)),
        }));
    }
    Ok(out)
}

/// Index of client `name`, or an error listing the known clients.
pub fn client_index(
    src: &Source,
    at: &str,
    name: &str,
    clients: &[Arc<ClientSpec>],
) -> Result<usize, ConfigError> {
    clients
        .iter()
        .position(|c| *c.name == *name)
        .ok_or_else(|| {
            let known: Vec<&str> = clients.iter().map(|c| &*c.name).collect();
            src.error(
                at,
                format!("unknown client '{name}' (known: {})", known.join(", ")),
            )
        })
}

pub fn vault(
    src: &Source,
    base: &Path,
    raw: Option<file::Vault>,
    clients: &[Arc<ClientSpec>],
) -> Result<Option<VaultSpec>, ConfigError> {
    let Some(v) = raw else { return Ok(None) };
    let keys = match (v.key_env, v.key_file) {
        (Some(var), None) => {
            if std::env::var_os(&var).is_none() {
                return Err(src.error(
                    "vault.key_env",
                    format!("environment variable '{var}' is not set"),
                ));
            }
            VaultKeySource::Env(var)
        }
        (None, Some(path)) => VaultKeySource::File(base.join(path)),
        _ => {
            return Err(src.error(
                "vault",
                "set exactly one of `key_env` and `key_file` (keys never go in this file)",
            ))
        }
    };
    let backend = match (v.path, v.postgres) {
        (Some(path), None) => VaultBackendSpec::Sqlite(base.join(path)),
        (None, Some(pg)) => VaultBackendSpec::Postgres(postgres(src, base, pg)?),
        _ => {
            return Err(src.error(
                "vault",
                "set exactly one of `path` (a SQLite file) and `postgres` (a shared database)",
            ))
        }
    };
    let mut connections: Vec<ConnectionSpec> = Vec::new();
    for (i, c) in v.connections.into_iter().enumerate() {
        let at = format!("vault.connections[{i}]");
        if c.name.is_empty() || connections.iter().any(|o| *o.name == *c.name) {
            return Err(src.error(
                &format!("{at}.name"),
                format!("'{}' is empty or used twice", c.name),
            ));
        }
        connections.push(ConnectionSpec {
            name: Arc::from(c.name.as_str()),
            client: client_index(src, &format!("{at}.client"), &c.client, clients)?,
        });
    }
    Ok(Some(VaultSpec {
        backend,
        keys,
        connections,
    }))
}

/// `vault.postgres`: the connection string from the environment or a file (checked, never
/// echoed), the pool size and the time-out.
fn postgres(
    src: &Source,
    base: &Path,
    pg: file::PostgresVault,
) -> Result<crate::vault::PgOptions, ConfigError> {
    let at = if pg.url_file.is_some() {
        "vault.postgres.url_file"
    } else {
        "vault.postgres.url_env"
    };
    let url =
        secret(src, base, at, pg.url_env.as_deref(), pg.url_file.as_deref())?.ok_or_else(|| {
            src.error(
                "vault.postgres",
                "set `url_env` or `url_file` (the connection string never goes in this file)",
            )
        })?;
    crate::vault::postgres::parse_url(url.expose()).map_err(|e| src.error(at, e))?;
    let pool_size = pg.pool_size.unwrap_or(8);
    if !(1..=256).contains(&pool_size) {
        return Err(src.error("vault.postgres.pool_size", "must be between 1 and 256"));
    }
    let timeout_ms = pg.timeout_ms.unwrap_or(5000);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(src.error("vault.postgres.timeout_ms", "must be between 100 and 60000"));
    }
    Ok(crate::vault::PgOptions {
        url,
        pool_size,
        timeout: Duration::from_millis(timeout_ms),
    })
}

pub fn credentials(
    src: &Source,
    at: &str,
    c: file::Credentials,
    clients: &[Arc<ClientSpec>],
    vault: Option<&VaultSpec>,
) -> Result<CredentialSpec, ConfigError> {
    let mode = match (c.token_exchange, c.token_vault, c.vault) {
        (Some(t), None, None) => {
            let client = client_index(
                src,
                &format!("{at}.token_exchange.client"),
                &t.client,
                clients,
            )?;
            if t.audience.is_empty() && t.resource.is_empty() {
                return Err(src.error(
                    &format!("{at}.token_exchange"),
                    "name the upstream with `audience` or `resource`",
                ));
            }
            if t.actor_token && clients[client].signing_key.is_none() {
                return Err(src.error(
                    &format!("{at}.token_exchange.actor_token"),
                    "an actor token is the gateway's signed assertion: the client needs private_key_file",
                ));
            }
            CredentialMode::TokenExchange {
                client,
                audience: t.audience,
                resource: t.resource,
                scope: t.scope,
                requested_token_type: t.requested_token_type,
                actor_token: t.actor_token,
            }
        }
        (None, Some(t), None) => {
            if t.connection.is_empty() {
                return Err(src.error(&format!("{at}.token_vault.connection"), "must not be empty"));
            }
            CredentialMode::TokenVault {
                client: client_index(src, &format!("{at}.token_vault.client"), &t.client, clients)?,
                connection: t.connection,
                scope: t.scope,
                login_hint: t.login_hint,
            }
        }
        (None, None, Some(v)) => {
            let Some(spec) = vault else {
                return Err(src.error(&format!("{at}.vault"), "needs a top-level `vault:` section"));
            };
            let connection = spec
                .connections
                .iter()
                .position(|c| *c.name == *v.connection)
                .ok_or_else(|| {
                    src.error(
                        &format!("{at}.vault.connection"),
                        format!("unknown vault connection '{}'", v.connection),
                    )
                })?;
            CredentialMode::Vault { connection }
        }
        _ => {
            return Err(src.error(
                at,
                "set exactly one of `token_exchange`, `token_vault` and `vault`",
            ))
        }
    };
    let header = c
        .header
        .unwrap_or_else(|| "authorization".into())
        .to_ascii_lowercase();
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(src.error(&format!("{at}.header"), "not a valid header name"));
    }
    let scheme = match c.scheme {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s),
        None if header == "authorization" => Some("Bearer".into()),
        None => None,
    };
    Ok(CredentialSpec {
        mode,
        header,
        scheme,
        expiry_margin: Duration::from_secs(c.expiry_margin_seconds.unwrap_or(30)),
    })
}
