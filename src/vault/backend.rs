//! The storage interface both vault backends implement (SQLite: [`super::SqliteVault`],
//! PostgreSQL: [`super::PgStore`]). Every method seals or opens tokens with the vault keys
//! inside the backend, so a caller never sees ciphertext and a backend never stores plaintext.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Credential, CredentialMeta, VaultError};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an [`Updater`] decides for the row it was shown.
pub enum Update {
    /// Leave the row as it is.
    Keep,
    /// Replace the credential (its version is bumped).
    Write(Credential),
}

/// Called by [`VaultBackend::update_locked`] with the current row (credential and version),
/// while no other updater of that row, in this process or (PostgreSQL) any replica, runs.
pub type Updater<'a> =
    Box<dyn FnOnce(Option<(Credential, u64)>) -> BoxFuture<'a, Update> + Send + 'a>;

/// A shared, opened vault.
pub type Vault = Arc<dyn VaultBackend>;

#[async_trait]
pub trait VaultBackend: Send + Sync + fmt::Debug {
    /// `sqlite` or `postgres` (a metric label).
    fn kind(&self) -> &'static str;

    /// Inserts or replaces the credential of (sub, connection), encrypted under the primary
    /// key. The version becomes the old version + 1, or 1 for a new pair (a pair revoked
    /// earlier continues from its last version instead).
    async fn put(&self, sub: &str, connection: &str, cred: &Credential) -> Result<(), VaultError>;

    /// The credential of (sub, connection) and its version, or `None` if there is none.
    /// [`VaultError::Corrupt`] if the row does not decrypt (tampered, moved, or damaged).
    async fn get(
        &self,
        sub: &str,
        connection: &str,
    ) -> Result<Option<(Credential, u64)>, VaultError>;

    /// Compare-and-swap: replaces the credential only if its stored version is still
    /// `expected`, atomically; `false` if the row was changed or revoked meanwhile.
    async fn replace_if(
        &self,
        sub: &str,
        connection: &str,
        expected: u64,
        cred: &Credential,
    ) -> Result<bool, VaultError>;

    /// Metadata of the stored credentials, optionally filtered by sub and/or connection,
    /// ordered by sub then connection. Decrypts nothing and returns no token.
    async fn list(
        &self,
        sub: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Vec<CredentialMeta>, VaultError>;

    /// Deletes the credential of (sub, connection); `true` if there was one.
    async fn revoke(&self, sub: &str, connection: &str) -> Result<bool, VaultError>;

    /// Re-encrypts under the primary key every row encrypted under another key, in one
    /// transaction; returns the number of rows rewritten. Versions are kept.
    async fn rotate(&self) -> Result<usize, VaultError>;

    /// Whether the backend answers now (for `/readyz`).
    async fn ping(&self) -> Result<(), VaultError>;

    /// Runs `f` on the current row of (sub, connection) while holding that row's lock, and
    /// stores what it decides; `Ok(true)` if an [`Update::Write`] was stored. Waits at most
    /// `wait` for another holder. This is how a refresh with a rotating refresh token is done
    /// at most once: PostgreSQL holds `SELECT ... FOR UPDATE` across `f` (every replica); the
    /// SQLite vault holds an in-process lock and writes with compare-and-swap (`Ok(false)`
    /// if another process changed the row meanwhile).
    async fn update_locked<'a>(
        &'a self,
        sub: &'a str,
        connection: &'a str,
        wait: Duration,
        f: Updater<'a>,
    ) -> Result<bool, VaultError>;
}
