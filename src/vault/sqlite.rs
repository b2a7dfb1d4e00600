//! The SQLite vault as a [`VaultBackend`]: the synchronous [`VaultStore`] run off the async
//! workers (`spawn_blocking`), plus in-process row locks for [`VaultBackend::update_locked`].

use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::backend::{Update, Updater, VaultBackend};
use super::{Credential, CredentialMeta, VaultError, VaultKeys, VaultStore};

/// Row locks, striped: two rows may share a stripe (and then wait for each other briefly).
const STRIPES: usize = 64;

#[derive(Debug)]
pub struct SqliteVault {
    store: Arc<VaultStore>,
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl SqliteVault {
    /// Opens or creates the vault file (see [`VaultStore::open`]).
    pub fn open(path: &Path, keys: VaultKeys) -> Result<SqliteVault, VaultError> {
        Ok(SqliteVault {
            store: Arc::new(VaultStore::open(path, keys)?),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VaultStore) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| VaultError::Sqlite(format!("vault task failed: {e}")))?
    }

    fn stripe(&self, sub: &str, connection: &str) -> &Mutex<()> {
        let h = self.hasher.hash_one((sub, connection));
        &self.stripes[(h % STRIPES as u64) as usize]
    }
}

#[async_trait]
impl VaultBackend for SqliteVault {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn put(&self, sub: &str, connection: &str, cred: &Credential) -> Result<(), VaultError> {
        let (s, c, cred) = (sub.to_string(), connection.to_string(), cred.clone());
        self.blocking(move |v| v.put(&s, &c, &cred)).await
    }

    async fn get(
        &self,
        sub: &str,
        connection: &str,
    ) -> Result<Option<(Credential, u64)>, VaultError> {
        let (s, c) = (sub.to_string(), connection.to_string());
        self.blocking(move |v| v.get(&s, &c)).await
    }

    async fn replace_if(
        &self,
        sub: &str,
        connection: &str,
        expected: u64,
        cred: &Credential,
    ) -> Result<bool, VaultError> {
        let (s, c, cred) = (sub.to_string(), connection.to_string(), cred.clone());
        self.blocking(move |v| v.replace_if(&s, &c, expected, &cred))
            .await
    }

    async fn list(
        &self,
        sub: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Vec<CredentialMeta>, VaultError> {
        let (s, c) = (sub.map(str::to_string), connection.map(str::to_string));
        self.blocking(move |v| v.list(s.as_deref(), c.as_deref()))
            .await
    }

    async fn revoke(&self, sub: &str, connection: &str) -> Result<bool, VaultError> {
        let (s, c) = (sub.to_string(), connection.to_string());
        self.blocking(move |v| v.revoke(&s, &c)).await
    }

    async fn rotate(&self) -> Result<usize, VaultError> {
        self.blocking(|v| v.rotate()).await
    }

    async fn ping(&self) -> Result<(), VaultError> {
        self.blocking(|v| v.list(Some("\0"), None).map(drop)).await
    }

    async fn update_locked<'a>(
        &'a self,
        sub: &'a str,
        connection: &'a str,
        wait: Duration,
        f: Updater<'a>,
    ) -> Result<bool, VaultError> {
        let _held = tokio::time::timeout(wait, self.stripe(sub, connection).lock())
            .await
            .map_err(|_| VaultError::Unavailable("timed out waiting for a row lock".into()))?;
        let row = self.get(sub, connection).await?;
        let version = row.as_ref().map(|(_, v)| *v);
        match (f(row).await, version) {
            (Update::Keep, _) => Ok(false),
            (Update::Write(cred), Some(v)) => self.replace_if(sub, connection, v, &cred).await,
            (Update::Write(cred), None) => {
                self.put(sub, connection, &cred).await?;
                Ok(true)
            }
        }
    }
}
