//! The PostgreSQL vault's schema: created on start if missing, under an advisory lock so
//! replicas starting together do not race; a database written by a newer schema is refused.

use std::time::Duration;

use super::bounded;
use crate::vault::sealed::{self, now};
use crate::vault::{VaultError, VaultKeys};

/// The version this build writes (`portcullis_vault_schema.version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Arbitrary key of the advisory lock serialising schema set-up ("pcvault" in ASCII).
const LOCK_KEY: i64 = 0x0070_6376_6175_6c74;

const SCHEMA_V1: &str = "
CREATE TABLE portcullis_vault_keys (key_id TEXT PRIMARY KEY, nonce BYTEA NOT NULL,
    check_ct BYTEA NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE portcullis_vault_credentials (sub TEXT NOT NULL, connection TEXT NOT NULL,
    key_id TEXT NOT NULL, nonce BYTEA NOT NULL, ciphertext BYTEA NOT NULL, expires_at BIGINT,
    scopes TEXT NOT NULL, has_refresh_token BOOLEAN NOT NULL, updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY (sub, connection));
CREATE INDEX portcullis_vault_credentials_key_id ON portcullis_vault_credentials (key_id);
CREATE TABLE portcullis_vault_revoked (sub TEXT NOT NULL, connection TEXT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY (sub, connection));
INSERT INTO portcullis_vault_schema (version) VALUES (1);";

/// Creates the schema if missing, checks its version, verifies the keys (as the SQLite vault
/// does) and registers the primary key's check row, in one transaction.
pub async fn prepare(
    client: &tokio_postgres::Client,
    keys: &VaultKeys,
    timeout: Duration,
) -> Result<(), VaultError> {
    let t = timeout;
    bounded(t, client.batch_execute("BEGIN")).await?;
    let result = async {
        bounded(
            t,
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]),
        )
        .await?;
        bounded(
            t,
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS portcullis_vault_schema (version BIGINT NOT NULL)",
            ),
        )
        .await?;
        let found: Option<i64> = bounded(
            t,
            client.query_one("SELECT MAX(version) FROM portcullis_vault_schema", &[]),
        )
        .await?
        .get(0);
        match found {
            None => bounded(t, client.batch_execute(SCHEMA_V1)).await?,
            Some(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(VaultError::UnsupportedSchema {
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
        }
        let checks = bounded(
            t,
            client.query(
                "SELECT key_id, nonce, check_ct FROM portcullis_vault_keys ORDER BY key_id",
                &[],
            ),
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        let used = bounded(
            t,
            client.query(
                "SELECT DISTINCT key_id FROM portcullis_vault_credentials ORDER BY key_id",
                &[],
            ),
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        sealed::verify_keys(keys, checks, used)?;
        ensure_check_row(client, keys, t).await
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    bounded(t, client.batch_execute(end)).await?;
    result
}

/// Registers the primary key's check row if the vault has none for its id.
pub async fn ensure_check_row(
    client: &tokio_postgres::Client,
    keys: &VaultKeys,
    timeout: Duration,
) -> Result<(), VaultError> {
    let (nonce, check) = keys.seal_check()?;
    bounded(
        timeout,
        client.execute(
            "INSERT INTO portcullis_vault_keys (key_id, nonce, check_ct, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
            &[&keys.primary_id(), &&nonce[..], &check, &now()],
        ),
    )
    .await?;
    Ok(())
}
