//! portcullis: a reverse-proxy gateway that enforces identity and policy on AI agents.
//!
//! Pure decision core (no pingora, unit-testable alone): `config`, `claims`, `roles`,
//! `policy`, `respond`, `metrics`, `gateway`, `auth` (its only I/O is fetching JWKS).
//! pingora glue: `proxy`, `admin`, `server`, `reload`. Replica-shared state: `state`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
pub mod auth;
pub mod canon;
pub mod claims;
pub mod config;
pub mod credentials;
pub mod explain;
pub mod ext_authz;
pub mod gateway;
pub mod logformat;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod private_file;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod roles;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod vault;
