//! Asynchronous approval holds (OpenID CIBA): a risky call waits for the user's OK.
pub mod store;
