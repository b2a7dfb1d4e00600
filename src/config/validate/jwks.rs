//! Validation of an issuer's JWKS timings: values that would switch a protection off (a
//! refetch storm on unknown `kid`s, refreshing without pause, fetches that never time out)
//! are refused.

use std::time::Duration;

use super::super::file;
use super::super::model::JwksTiming;
use super::super::{ConfigError, Source};

pub fn timing(src: &Source, at: &str, j: file::JwksOptions) -> Result<JwksTiming, ConfigError> {
    let at_least = |field: &str, v: Option<u64>, default: u64, min: u64| match v {
        Some(n) if n < min => Err(src.error(
            &format!("{at}.jwks.{field}"),
            format!("must be at least {min}: a smaller value switches a protection off"),
        )),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let timeout_ms = at_least("timeout_ms", j.timeout_ms, 5_000, 1)?;
    if timeout_ms > 60_000 {
        return Err(src.error(&format!("{at}.jwks.timeout_ms"), "must be at most 60000"));
    }
    let jwks = JwksTiming {
        default_refresh: Duration::from_secs(at_least(
            "refresh_seconds",
            j.refresh_seconds,
            300,
            1,
        )?),
        min_refresh: Duration::from_secs(at_least(
            "min_refresh_seconds",
            j.min_refresh_seconds,
            60,
            1,
        )?),
        max_refresh: Duration::from_secs(j.max_refresh_seconds.unwrap_or(86_400)),
        unknown_kid_cooldown: Duration::from_secs(at_least(
            "unknown_kid_cooldown_seconds",
            j.unknown_kid_cooldown_seconds,
            30,
            1,
        )?),
        fetch_timeout: Duration::from_millis(timeout_ms),
    };
    if jwks.min_refresh > jwks.max_refresh {
        return Err(src.error(
            &format!("{at}.jwks"),
            "need min_refresh_seconds <= max_refresh_seconds",
        ));
    }
    Ok(jwks)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::Source;

    fn load(jwks: &str) -> Result<(), String> {
        let text = format!(
            "version: 1\nlisten: \"127.0.0.1:8080\"\npolicies: {{ dir: \"{}\" }}\n\
             issuers:\n  - {{ name: corp, issuer: \"https://idp.example.com/\", \
             jwks_uri: \"http://127.0.0.1:1/jwks\", audiences: [api], jwks: {{ {jwks} }} }}\n\
             routes:\n  - {{ name: r, match: {{ path_prefix: /r }}, \
             upstream: \"http://127.0.0.1:9000\", auth: {{ issuer: corp }} }}\n",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display()
        );
        Source {
            file: PathBuf::from("/t/p.yaml"),
            text,
        }
        .parse()
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn timings_that_switch_protections_off_are_refused() {
        assert_eq!(
            load("unknown_kid_cooldown_seconds: 1, refresh_seconds: 10"),
            Ok(())
        );
        for (jwks, field) in [
            (
                "unknown_kid_cooldown_seconds: 0",
                "issuers[0].jwks.unknown_kid_cooldown_seconds",
            ),
            ("refresh_seconds: 0", "issuers[0].jwks.refresh_seconds"),
            (
                "min_refresh_seconds: 0",
                "issuers[0].jwks.min_refresh_seconds",
            ),
            ("timeout_ms: 0", "issuers[0].jwks.timeout_ms"),
            ("timeout_ms: 600000", "issuers[0].jwks.timeout_ms"),
            (
                "min_refresh_seconds: 100, max_refresh_seconds: 50",
                "issuers[0].jwks",
            ),
        ] {
            let e = load(jwks).unwrap_err();
            assert!(e.contains(field), "{jwks}: {e}");
        }
    }
}
