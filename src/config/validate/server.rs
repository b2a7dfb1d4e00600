//! Validation of the `server:` block (settings applied at start only).

use super::positive;
use crate::config::model::ServerSpec;
use crate::config::{file, ConfigError, Source};

pub fn server(src: &Source, raw: &file::Server) -> Result<ServerSpec, ConfigError> {
    Ok(ServerSpec {
        threads: positive(src, "server.threads", raw.threads, 2)?,
        grace_period_seconds: raw.grace_period_seconds.unwrap_or(5),
        graceful_shutdown_timeout_seconds: raw.graceful_shutdown_timeout_seconds.unwrap_or(5),
        upstream_keepalive_pool_size: positive(
            src,
            "server.upstream_keepalive_pool_size",
            raw.upstream_keepalive_pool_size,
            128,
        )?,
        max_connections: positive(src, "server.max_connections", raw.max_connections, 10_000)?,
    })
}
