//! Property tests (proptest): hostile input to the parsers on the decision path never
//! panics and never authorises. CI runs proptest's default 256 cases per property;
//! `scripts/fuzz` runs the same properties with many more (`PROPTEST_CASES`).

#[path = "props/fixture.rs"]
mod fixture;

#[path = "props/config.rs"]
mod config;
#[path = "props/evaluators.rs"]
mod evaluators;
#[path = "props/mcp.rs"]
mod mcp;
#[path = "props/policy_input.rs"]
mod policy_input;
#[path = "props/routing.rs"]
mod routing;
#[path = "props/tokens.rs"]
mod tokens;
