//! Validation of the `state:` block: where replica-shared state lives.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::super::file;
use super::super::model::{ApprovalLimits, RedisSpec, RouteSpec, StateSpec};
use super::super::{ConfigError, Source};
use super::credentials::secret;

pub fn state(
    src: &Source,
    base: &Path,
    raw: Option<file::State>,
) -> Result<StateSpec, ConfigError> {
    let Some(raw) = raw else {
        return Ok(StateSpec::Embedded);
    };
    match (raw.backend.as_str(), raw.redis) {
        ("embedded", None) => Ok(StateSpec::Embedded),
        ("embedded", Some(_)) => Err(src.error(
            "state.redis",
            "only used with `backend: redis` (remove it or set the backend)",
        )),
        ("redis", None) => Err(src.error(
            "state.redis",
            "`backend: redis` needs `redis: { url: ... }` (or `url_env`)",
        )),
        ("redis", Some(r)) => redis(src, base, r).map(StateSpec::Redis),
        (other, _) => Err(src.error(
            "state.backend",
            format!("'{other}' is not a state backend (embedded or redis)"),
        )),
    }
}

fn redis(src: &Source, base: &Path, r: file::Redis) -> Result<RedisSpec, ConfigError> {
    let url = match (r.url, r.url_env.as_deref()) {
        (Some(u), None) => u,
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            src.error(
                "state.redis.url_env",
                format!("environment variable '{var}' is not set"),
            )
        })?,
        (Some(_), Some(_)) => {
            return Err(src.error("state.redis.url", "set either `url` or `url_env`, not both"))
        }
        (None, None) => return Err(src.error("state.redis.url", "a Redis URL is required")),
    };
    let at = if r.url_env.is_some() {
        "state.redis.url_env"
    } else {
        "state.redis.url"
    };
    // Never echo the URL: it may carry a password.
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| src.error(at, format!("not a valid redis:// or rediss:// URL ({e})")))?;
    let tls = match parsed.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(src.error(
                at,
                format!("scheme '{other}' is not supported (redis or rediss)"),
            ))
        }
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(src.error(at, "the URL names no host"));
    }
    redis::IntoConnectionInfo::into_connection_info(parsed.as_str())
        .map_err(|e| src.error(at, format!("not a usable Redis URL ({:?})", e.kind())))?;
    let ca_file = match r.tls {
        Some(_) if !tls => {
            return Err(src.error("state.redis.tls", "TLS settings need a rediss:// URL"));
        }
        Some(t) => t.ca_file.map(|f| base.join(f)),
        None => None,
    };
    if let Some(f) = &ca_file {
        if !f.is_file() {
            return Err(src.error(
                "state.redis.tls.ca_file",
                format!("{} is not a readable file", f.display()),
            ));
        }
    }
    let key_prefix = r.key_prefix.unwrap_or_else(|| "portcullis:".to_string());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'?')
    {
        return Err(src.error(
            "state.redis.key_prefix",
            "must be 1-64 printable characters without spaces, '*' or '?'",
        ));
    }
    let timeout_ms = r.timeout_ms.unwrap_or(500);
    if timeout_ms == 0 || timeout_ms > 60_000 {
        return Err(src.error("state.redis.timeout_ms", "must be between 1 and 60000"));
    }
    let cache_key = secret(
        src,
        base,
        "state.redis.cache_key_env",
        r.cache_key_env.as_deref(),
        r.cache_key_file.as_deref(),
    )?;
    if let Some(k) = &cache_key {
        crate::vault::VaultKeys::parse(k.expose())
            .map_err(|e| src.error("state.redis.cache_key_env", e.to_string()))?;
    }
    Ok(RedisSpec {
        url: crate::secret::Secret::new(parsed.to_string()),
        key_prefix,
        timeout: Duration::from_millis(timeout_ms),
        cache_key,
        ca_file,
    })
}

/// Cross checks: the Redis backend keeps approvals itself (no `approvals.store`), and the
/// shared upstream-token cache needs a key (the vault's or `cache_key_env`).
pub fn check(
    src: &Source,
    state: &StateSpec,
    approvals: &ApprovalLimits,
    has_vault: bool,
    routes: &[Arc<RouteSpec>],
) -> Result<(), ConfigError> {
    let StateSpec::Redis(r) = state else {
        return Ok(());
    };
    if approvals.store.is_some() {
        return Err(src.error(
            "approvals.store",
            "not used with `state.backend: redis` (approvals are kept in Redis): remove it",
        ));
    }
    let shared_tokens = routes.iter().any(|r| r.credentials.is_some());
    if shared_tokens && r.cache_key.is_none() && !has_vault {
        return Err(src.error(
            "state.redis.cache_key_env",
            "routes with `credentials:` share exchanged tokens in Redis, encrypted: set \
             `cache_key_env` (or `cache_key_file`; `portcullis vault generate-key` makes one) \
             or configure `vault:`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::model::{Config, StateSpec};
    use crate::config::{ConfigError, Source};

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
        let text = format!(
            "version: 1\nlisten: \"127.0.0.1:8080\"\npolicies: {{ dir: \"{}\" }}\n\
             issuers:\n  - {{ name: corp, issuer: \"https://idp.example.com/\", \
             jwks_uri: \"http://127.0.0.1:1/jwks\", audiences: [api] }}\n{extra}\
             routes:\n  - {{ name: r, match: {{ path_prefix: /r }}, \
             upstream: \"http://127.0.0.1:9000\", auth: {{ issuer: corp }} }}\n",
            policies.display()
        );
        let file = PathBuf::from("/t/portcullis.yaml");
        Source { file, text }.parse()
    }

    #[test]
    fn embedded_is_the_default() {
        assert_eq!(load("").unwrap().state, StateSpec::Embedded);
        assert_eq!(
            load("state: { backend: embedded }\n").unwrap().state,
            StateSpec::Embedded
        );
    }

    #[test]
    fn redis_settings_and_defaults() {
        let c = load(
            "state: { backend: redis, redis: { url: \"redis://:hunter2@127.0.0.1:6379/0\" } }\n",
        )
        .unwrap();
        let StateSpec::Redis(r) = &c.state else {
            panic!("not redis")
        };
        assert_eq!(r.key_prefix, "portcullis:");
        assert_eq!(r.timeout.as_millis(), 500);
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the password is shown"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_url() {
        for (extra, field) in [
            ("state: { backend: memcached }\n", "state.backend"),
            ("state: { backend: redis }\n", "state.redis"),
            (
                "state: { backend: redis, redis: { url: \"http://:hunter2@127.0.0.1\" } }\n",
                "state.redis.url",
            ),
            (
                "state: { backend: redis, redis: { url: \"redis://:hunter2@h\", tls: {} } }\n",
                "state.redis.tls",
            ),
            (
                "state: { backend: redis, redis: { url: \"redis://h\", timeout_ms: 0 } }\n",
                "state.redis.timeout_ms",
            ),
            (
                "state: { backend: redis, redis: { url: \"redis://h\" } }\napprovals: { store: a.db }\n",
                "approvals.store",
            ),
        ] {
            let e = load(extra).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert!(e.line.is_some(), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = load("state: { backend: redis, redis: { url: \"redis://h\", urls: [] } }\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
