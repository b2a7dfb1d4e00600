//! The PostgreSQL vault: the same rows, sealing and semantics as the SQLite vault, shared by
//! every gateway replica through one database (tables `portcullis_vault_*`, created on start,
//! versioned in `portcullis_vault_schema`).
//!
//! Refresh-token rotation across replicas: [`VaultBackend::update_locked`] opens a transaction,
//! takes the row with `SELECT ... FOR UPDATE` and holds it across the refresh at the token
//! endpoint; a second replica blocks on the row lock (bounded by `lock_timeout`) and then
//! reads the refreshed row, so a refresh token is never presented twice. A transaction that
//! does not end normally (error, time-out, cancelled request) discards its connection, which
//! makes the server roll it back.
//!
//! Connections come from a small pool (deadpool); a connection that broke is replaced on the
//! next checkout, so the vault recovers by itself when the database comes back. Every call is
//! bounded by `timeout_ms`; any failure is a [`VaultError::Unavailable`] or
//! [`VaultError::Postgres`] and the request is refused (503).

mod schema;

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use prometheus::IntCounter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

use super::backend::{Update, Updater, VaultBackend};
use super::sealed::{self, RawRow, SealedRow};
use super::{Credential, CredentialMeta, VaultError, VaultKeys};
use crate::secret::Secret;

const COLUMNS: &str = "sub, connection, key_id, nonce, ciphertext, expires_at, scopes, \
                       has_refresh_token, updated_at, version";
const GET: &str = "SELECT sub, connection, key_id, nonce, ciphertext, expires_at, scopes, \
    has_refresh_token, updated_at, version FROM portcullis_vault_credentials \
    WHERE sub = $1 AND connection = $2";
const GET_FOR_UPDATE: &str = "SELECT sub, connection, key_id, nonce, ciphertext, expires_at, \
    scopes, has_refresh_token, updated_at, version FROM portcullis_vault_credentials \
    WHERE sub = $1 AND connection = $2 FOR UPDATE";
/// Rewrites a row if its version is `$10`, bumping the version.
const UPDATE: &str = "UPDATE portcullis_vault_credentials SET key_id = $3, nonce = $4, \
    ciphertext = $5, expires_at = $6, scopes = $7, has_refresh_token = $8, updated_at = $9, \
    version = version + 1 WHERE sub = $1 AND connection = $2 AND version = $10";
/// Upsert in one statement: a new row continues from a revoked predecessor's version (and
/// forgets it), an existing row's version is bumped.
const PUT: &str = "WITH gone AS (DELETE FROM portcullis_vault_revoked WHERE sub = $1 \
    AND connection = $2 RETURNING version) INSERT INTO portcullis_vault_credentials \
    (sub, connection, key_id, nonce, ciphertext, expires_at, scopes, has_refresh_token, \
    updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
    1 + COALESCE((SELECT version FROM gone), 0)) ON CONFLICT (sub, connection) DO UPDATE SET \
    key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, \
    expires_at = EXCLUDED.expires_at, scopes = EXCLUDED.scopes, \
    has_refresh_token = EXCLUDED.has_refresh_token, updated_at = EXCLUDED.updated_at, \
    version = portcullis_vault_credentials.version + 1";
/// Deletes a row and remembers its version, in one statement.
const REVOKE: &str = "WITH gone AS (DELETE FROM portcullis_vault_credentials WHERE sub = $1 \
    AND connection = $2 RETURNING sub, connection, version) INSERT INTO portcullis_vault_revoked \
    (sub, connection, version) SELECT sub, connection, version FROM gone \
    ON CONFLICT (sub, connection) DO UPDATE SET version = EXCLUDED.version";
const LIST: &str = "SELECT sub, connection, key_id, nonce, ciphertext, expires_at, scopes, \
    has_refresh_token, updated_at, version FROM portcullis_vault_credentials \
    WHERE ($1::text IS NULL OR sub = $1) AND ($2::text IS NULL OR connection = $2) \
    ORDER BY sub, connection";

/// Where and how to reach the database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `postgres://...` or `key=value` connection string (holds the password: never logged).
    pub url: Secret,
    pub pool_size: usize,
    /// Bound of every database call (and of connecting).
    pub timeout: Duration,
}

/// Parses a connection string into the driver's configuration. The error never echoes it.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("not a valid PostgreSQL connection string ({e})"))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "sslmode=require: this build connects to the vault database without TLS \
             (use a local socket, a trusted network or a TLS-terminating proxy)"
                .to_string(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("the connection string names no host".to_string());
    }
    Ok(config)
}

/// The PostgreSQL vault store.
pub struct PgStore {
    pool: Pool,
    keys: VaultKeys,
    timeout: Duration,
    round_trips: IntCounter,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("keys", &self.keys)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// A transaction in progress on a pooled connection. Dropped without [`Tx::commit`], the
/// connection is taken out of the pool and closed, so the server rolls the transaction back.
struct Tx {
    client: Option<Object>,
}

impl Tx {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("transaction in progress")
    }

    fn done(mut self) -> Object {
        self.client.take().expect("transaction in progress")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl PgStore {
    /// Connects once to create or check the schema and verify the keys (as
    /// [`super::VaultStore::open`] does), then sets up the pool. Blocking: call it outside
    /// async code (it runs its own runtime on a helper thread). `round_trips` counts the
    /// requests sent to the database.
    pub fn open(
        options: &PgOptions,
        keys: VaultKeys,
        round_trips: IntCounter,
    ) -> Result<PgStore, VaultError> {
        let mut config = parse_url(options.url.expose()).map_err(VaultError::InvalidArgument)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("portcullis");
        }
        config.keepalives(true);
        let init = config.clone();
        let timeout = options.timeout;
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| VaultError::Io(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async {
                    let (client, conn) = bounded(timeout, init.connect(NoTls)).await?;
                    let task = tokio::spawn(conn);
                    let result = schema::prepare(&client, &keys, timeout).await;
                    drop(client);
                    let _ = task.await;
                    result
                })
            })
            .join()
            .map_err(|_| VaultError::Io("the vault open thread panicked".to_string()))?
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| VaultError::Unavailable(format!("cannot build the pool: {e}")))?;
        Ok(PgStore {
            pool,
            keys,
            timeout: options.timeout,
            round_trips,
        })
    }

    async fn client(&self) -> Result<Object, VaultError> {
        self.pool.get().await.map_err(|e| {
            VaultError::Unavailable(format!("no connection to the vault database: {e}"))
        })
    }

    /// One request to the server, bounded and counted.
    async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, VaultError> {
        self.round_trips.inc();
        bounded(self.timeout, f).await
    }

    /// The prepared statement for `sql` on `client` (a round trip the first time only).
    async fn statement(&self, client: &Object, sql: &str) -> Result<Statement, VaultError> {
        let cached = client.statement_cache.size();
        let stmt = bounded(self.timeout, client.prepare_cached(sql)).await?;
        if client.statement_cache.size() != cached {
            self.round_trips.inc();
        }
        Ok(stmt)
    }

    async fn query(
        &self,
        client: &Object,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, VaultError> {
        let stmt = self.statement(client, sql).await?;
        self.call(client.query(&stmt, params)).await
    }

    async fn execute(
        &self,
        client: &Object,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, VaultError> {
        let stmt = self.statement(client, sql).await?;
        self.call(client.execute(&stmt, params)).await
    }

    /// `BEGIN` (plus `settings`, e.g. `SET LOCAL ...`) in one round trip.
    async fn begin(&self, settings: &str) -> Result<Tx, VaultError> {
        let client = self.client().await?;
        self.call(client.batch_execute(&format!("BEGIN; {settings}")))
            .await?;
        Ok(Tx {
            client: Some(client),
        })
    }

    async fn commit(&self, tx: Tx) -> Result<(), VaultError> {
        self.call(tx.client().batch_execute("COMMIT")).await?;
        drop(tx.done());
        Ok(())
    }

    /// `UPDATE` of a sealed row if its version is `expected`; `true` if it matched.
    async fn update(
        &self,
        client: &Object,
        row: &SealedRow<'_>,
        expected: i64,
    ) -> Result<bool, VaultError> {
        let nonce = &row.nonce[..];
        let mut params = row_params(row, &nonce);
        params.push(&expected);
        let n = self.execute(client, UPDATE, &params).await?;
        Ok(n == 1)
    }

    /// [`PUT`] of a sealed row.
    async fn upsert(&self, client: &Object, row: &SealedRow<'_>) -> Result<(), VaultError> {
        let nonce = &row.nonce[..];
        self.execute(client, PUT, &row_params(row, &nonce)).await?;
        Ok(())
    }

    fn unseal(&self, row: &Row) -> Result<(Credential, u64), VaultError> {
        sealed::unseal(&self.keys, read_row(row)?)
    }
}

#[async_trait]
impl VaultBackend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn put(&self, sub: &str, connection: &str, cred: &Credential) -> Result<(), VaultError> {
        let row = sealed::seal(&self.keys, sub, connection, cred)?;
        let client = self.client().await?;
        self.upsert(&client, &row).await
    }

    async fn get(
        &self,
        sub: &str,
        connection: &str,
    ) -> Result<Option<(Credential, u64)>, VaultError> {
        let client = self.client().await?;
        let rows = self.query(&client, GET, &[&sub, &connection]).await?;
        rows.first().map(|r| self.unseal(r)).transpose()
    }

    async fn replace_if(
        &self,
        sub: &str,
        connection: &str,
        expected: u64,
        cred: &Credential,
    ) -> Result<bool, VaultError> {
        let Ok(expected) = i64::try_from(expected) else {
            return Ok(false);
        };
        let row = sealed::seal(&self.keys, sub, connection, cred)?;
        let client = self.client().await?;
        self.update(&client, &row, expected).await
    }

    async fn list(
        &self,
        sub: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Vec<CredentialMeta>, VaultError> {
        let client = self.client().await?;
        let rows = self.query(&client, LIST, &[&sub, &connection]).await?;
        rows.iter()
            .map(|r| read_row(r).map(|raw| raw.meta))
            .collect()
    }

    async fn revoke(&self, sub: &str, connection: &str) -> Result<bool, VaultError> {
        let client = self.client().await?;
        Ok(self.execute(&client, REVOKE, &[&sub, &connection]).await? == 1)
    }

    async fn rotate(&self) -> Result<usize, VaultError> {
        let primary = self.keys.primary_id();
        let tx = self.begin("").await?;
        schema::ensure_check_row(tx.client(), &self.keys, self.timeout).await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM portcullis_vault_credentials WHERE key_id <> $1 FOR UPDATE"
        );
        let rows = self.query(tx.client(), &sql, &[&primary]).await?;
        for row in &rows {
            let raw = read_row(row)?;
            let (nonce, ciphertext) = sealed::reseal(&self.keys, &raw)?;
            self.execute(
                tx.client(),
                "UPDATE portcullis_vault_credentials SET key_id = $3, nonce = $4, \
                 ciphertext = $5 WHERE sub = $1 AND connection = $2",
                &[
                    &raw.meta.sub,
                    &raw.meta.connection,
                    &primary,
                    &&nonce[..],
                    &ciphertext,
                ],
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(rows.len())
    }

    async fn ping(&self) -> Result<(), VaultError> {
        let client = self.client().await?;
        self.call(client.simple_query("")).await.map(drop)
    }

    async fn update_locked<'a>(
        &'a self,
        sub: &'a str,
        connection: &'a str,
        wait: Duration,
        f: Updater<'a>,
    ) -> Result<bool, VaultError> {
        let wait_ms = wait.as_millis().max(1);
        let tx = self
            .begin(&format!("SET LOCAL lock_timeout = {wait_ms}"))
            .await?;
        // The wait for another replica's refresh is bounded by `lock_timeout`, not `timeout`.
        let stmt = self.statement(tx.client(), GET_FOR_UPDATE).await?;
        self.round_trips.inc();
        let rows = bounded(
            wait + self.timeout,
            tx.client().query(&stmt, &[&sub, &connection]),
        )
        .await?;
        let row = rows.first().map(|r| self.unseal(r)).transpose()?;
        let version = row.as_ref().map(|(_, v)| *v);
        let written = match (f(row).await, version) {
            (Update::Keep, _) => false,
            (Update::Write(cred), Some(v)) => {
                let row = sealed::seal(&self.keys, sub, connection, &cred)?;
                let v = i64::try_from(v).map_err(|_| VaultError::Postgres("bad version".into()))?;
                self.update(tx.client(), &row, v).await?
            }
            (Update::Write(cred), None) => {
                let row = sealed::seal(&self.keys, sub, connection, &cred)?;
                self.upsert(tx.client(), &row).await?;
                true
            }
        };
        self.commit(tx).await?;
        Ok(written)
    }
}

/// Reads a row of `portcullis_vault_credentials` (columns [`COLUMNS`]).
fn read_row(r: &Row) -> Result<RawRow, VaultError> {
    let bad = |e: tokio_postgres::Error| VaultError::Postgres(format!("unexpected row: {e}"));
    let unsigned = |v: i64| {
        u64::try_from(v).map_err(|_| VaultError::Postgres("negative number in a row".into()))
    };
    let scopes: String = r.try_get(6).map_err(bad)?;
    let expires_at: Option<i64> = r.try_get(5).map_err(bad)?;
    let meta = CredentialMeta {
        sub: r.try_get(0).map_err(bad)?,
        connection: r.try_get(1).map_err(bad)?,
        key_id: r.try_get(2).map_err(bad)?,
        expires_at: expires_at.map(unsigned).transpose()?,
        scopes: sealed::scopes(&scopes),
        has_refresh_token: r.try_get(7).map_err(bad)?,
        updated_at: unsigned(r.try_get(8).map_err(bad)?)?,
        version: unsigned(r.try_get(9).map_err(bad)?)?,
    };
    Ok(RawRow {
        meta,
        nonce: r.try_get(3).map_err(bad)?,
        ciphertext: r.try_get(4).map_err(bad)?,
    })
}

/// `f` bounded by `timeout`, its error classified.
async fn bounded<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, VaultError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(VaultError::Unavailable(format!(
            "the vault database did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Connection loss, shutdown, time-outs and lock waits are [`VaultError::Unavailable`]; other
/// server errors are [`VaultError::Postgres`]. Messages carry no connection string.
fn classify(e: &tokio_postgres::Error) -> VaultError {
    let message = e.to_string();
    match e.code() {
        Some(code)
            if *code != SqlState::LOCK_NOT_AVAILABLE
                && *code != SqlState::QUERY_CANCELED
                && !code.code().starts_with("08")
                && !code.code().starts_with("57") =>
        {
            VaultError::Postgres(message)
        }
        _ => VaultError::Unavailable(message),
    }
}

/// A sealed row's columns as `$1`..`$9` of [`PUT`] and [`UPDATE`] (`nonce`: the row's nonce
/// as a slice, which is what PostgreSQL's `bytea` takes).
fn row_params<'r>(row: &'r SealedRow<'_>, nonce: &'r &'r [u8]) -> Vec<&'r (dyn ToSql + Sync)> {
    vec![
        &row.sub,
        &row.connection,
        &row.key_id,
        nonce,
        &row.ciphertext,
        &row.expires_at,
        &row.scopes,
        &row.has_refresh_token,
        &row.updated_at,
    ]
}

#[cfg(test)]
mod tests;
