//! The store suite against the PostgreSQL vault, each case in a fresh database of one
//! throwaway cluster (skipped, saying so, when PostgreSQL is not installed).
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;
use crate::vault::suite::{self, Harness, Tamper};
use crate::vault::testdb::Cluster;
use crate::vault::{PgOptions, PgStore, Vault, VaultError, VaultKeys};

struct Pg<'a> {
    cluster: &'a Cluster,
    db: String,
}

impl Pg<'_> {
    fn sql(&self, q: &str) {
        self.cluster.psql(&self.db, q);
    }
}

impl Harness for Pg<'_> {
    fn open(&self, keys: &str) -> Result<Vault, VaultError> {
        let options = PgOptions {
            url: Secret::new(self.cluster.url(&self.db)),
            pool_size: 4,
            timeout: Duration::from_secs(30),
        };
        let counter = prometheus::IntCounter::new("rt", "round trips").unwrap();
        Ok(Arc::new(PgStore::open(
            &options,
            VaultKeys::parse(keys).unwrap(),
            counter,
        )?))
    }

    fn tamper(&self, t: Tamper<'_>) {
        let table = "portcullis_vault_credentials";
        match t {
            Tamper::CopyCiphertext { from, to } => self.sql(&format!(
                "UPDATE {table} SET nonce = f.nonce, ciphertext = f.ciphertext \
                 FROM {table} f WHERE f.sub = '{from}' AND {table}.sub = '{to}'"
            )),
            Tamper::AppendByte(sub) => self.sql(&format!(
                "UPDATE {table} SET ciphertext = ciphertext || '\\x00'::bytea WHERE sub = '{sub}'"
            )),
            Tamper::SetKeyId(sub, id) => self.sql(&format!(
                "UPDATE {table} SET key_id = '{id}' WHERE sub = '{sub}'"
            )),
            Tamper::SchemaVersion(v) => {
                self.sql(&format!("UPDATE portcullis_vault_schema SET version = {v}"))
            }
        }
    }

    fn stored(&self) -> Vec<u8> {
        // Every table, as the database returns it (bytea in hex, text as is), and the
        // database files themselves.
        let mut all = self
            .cluster
            .psql(
                &self.db,
                "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM portcullis_vault_credentials) t",
            )
            .into_bytes();
        let mut stack = vec![self.cluster.dir().join("data")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    all.extend(bytes);
                }
            }
        }
        all
    }

    fn locks_across_stores(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_passes_the_store_suite() {
    let Some(cluster) = Cluster::start("postgres_backend_passes_the_store_suite") else {
        return;
    };
    macro_rules! run {
        ($($case:ident),* $(,)?) => {$(
            let db = stringify!($case).to_string();
            cluster.create_db(&db);
            suite::$case(&Pg { cluster: &cluster, db }).await;
        )*};
    }
    run!(
        put_get_round_trip_and_versions,
        rejects_invalid_arguments,
        never_stores_plaintext_tokens,
        wrong_or_missing_key_is_refused,
        rotation_moves_rows_to_the_new_primary,
        replace_if_is_compare_and_swap,
        revoke_and_list_metadata,
        tampered_rows_fail_to_decrypt,
        update_locked_serialises_refreshers,
    );
    assert!(
        !cluster.log().contains(&cluster.password),
        "the database password reached the server log"
    );
}
