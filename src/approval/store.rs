//! The SQLite-backed store of approval holds: one row per approval id, surviving restarts.
//!
//! An approval is bound to the request it was asked for ([`Binding`]) and is single-use:
//! [`ApprovalStore::consume`] moves it from `approved` to `used` inside one `BEGIN IMMEDIATE`
//! transaction, so of any number of concurrent callers (threads, or processes sharing the
//! file) exactly one gets [`Consume::Consumed`]. The CIBA `auth_req_id` is stored in plaintext
//! (it is useless without the gateway's client credentials); the file is created with mode 0600,
//! a file that group or others may access is refused, and deleted rows are overwritten.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use aws_lc_rs::rand;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};

use crate::private_file::{self, PrivateFileError};
use crate::secret::Secret;

mod receipts;
mod record;

pub use record::{ApprovalRecord, ApprovalStatus, Binding};

/// Written to `PRAGMA user_version`; a file with a higher version is refused. Version 2 added
/// the asked `scope`, the `policy_rev`, the `mismatch` status and the receipts.
const SCHEMA_VERSION: i64 = 2;

/// The `approvals` table as of version 2 (`{name}`: the table's name).
const APPROVALS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS {name} (id TEXT PRIMARY KEY NOT NULL, route TEXT NOT NULL,
    sub TEXT NOT NULL, agent TEXT, method TEXT NOT NULL, target TEXT NOT NULL,
    body_sha256 BLOB NOT NULL CHECK (length(body_sha256) = 32), auth_req_id TEXT NOT NULL,
    binding_message TEXT NOT NULL, authorization_details TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('pending', 'approved', 'denied', 'expired', 'failed', 'mismatch', 'used')),
    interval_secs INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, scope TEXT NOT NULL DEFAULT '',
    policy_rev TEXT NOT NULL DEFAULT '');";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS approvals_status_created ON approvals (status, created_at);
CREATE INDEX IF NOT EXISTS approvals_sub_status ON approvals (sub, status);";

/// Version 1 to 2: the table is rebuilt (SQLite cannot change a CHECK); the old rows keep an
/// empty `policy_rev`, which no route has, so they can no longer be redeemed.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE approvals RENAME TO approvals_v1;
{table}
INSERT INTO approvals (id, route, sub, agent, method, target, body_sha256, auth_req_id,
    binding_message, authorization_details, status, interval_secs, created_at, expires_at,
    updated_at)
SELECT id, route, sub, agent, method, target, body_sha256, auth_req_id, binding_message,
    authorization_details, status, interval_secs, created_at, expires_at, updated_at
FROM approvals_v1;
DROP TABLE approvals_v1;";

const COLUMNS: &str = "id, route, sub, agent, method, target, body_sha256, auth_req_id, \
    binding_message, authorization_details, status, interval_secs, created_at, expires_at, \
    updated_at, scope, policy_rev";

fn schema() -> String {
    let table = APPROVALS_TABLE.replace("{name}", "approvals");
    format!("{table}{INDEXES}{}", receipts::SCHEMA)
}

fn migrations() -> Vec<String> {
    let table = APPROVALS_TABLE.replace("{name}", "approvals");
    vec![MIGRATE_1_TO_2.replace("{table}", &table)]
}

/// A fresh approval id: 128 random bits, base64url without padding (22 characters).
pub fn new_id() -> Result<String, ApprovalStoreError> {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes).map_err(|_| ApprovalStoreError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Everything that can go wrong in the approval store. Messages never contain an
/// `auth_req_id`.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalStoreError {
    /// A file-system operation on the store file failed.
    #[error("approval store I/O error: {0}")]
    Io(String),
    /// The store file (or its WAL/SHM companion) can be read or written by group or others.
    #[error(
        "approval store file {} is accessible by group or others (mode {mode:03o}); \
         restrict it with `chmod 600`",
        .path.display()
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// SQLite reported an error (including a stored row that cannot be read back).
    #[error("approval store database error: {0}")]
    Sqlite(String),
    /// The file was written by a newer, incompatible version of the store.
    #[error("unsupported approval store schema version {found} (this build supports {supported})")]
    UnsupportedSchema {
        /// The version found in the file.
        found: i64,
        /// The version this build writes.
        supported: i64,
    },
    /// No approval has this id.
    #[error("no such approval")]
    NotFound,
    /// [`ApprovalStore::insert`]: an approval with this id already exists.
    #[error("an approval with id '{id}' already exists")]
    Duplicate {
        /// The approval id.
        id: String,
    },
    /// [`ApprovalStore::transition`] was asked for a change the life cycle does not allow.
    #[error("invalid approval transition from {} to {}", .from.as_str(), .to.as_str())]
    InvalidTransition {
        /// The expected current status.
        from: ApprovalStatus,
        /// The requested status.
        to: ApprovalStatus,
    },
    /// A caller-supplied value cannot be stored (an integer beyond `i64::MAX`, an empty id).
    #[error("invalid approval store argument: {0}")]
    InvalidArgument(String),
    /// The system random generator failed.
    #[error("the random generator failed")]
    Random,
}

impl From<rusqlite::Error> for ApprovalStoreError {
    fn from(e: rusqlite::Error) -> Self {
        ApprovalStoreError::Sqlite(e.to_string())
    }
}

/// What [`ApprovalStore::consume`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consume {
    /// The approval was approved and bound to this request; it is now used. Send the request.
    Consumed,
    /// No approval has this id.
    NotFound,
    /// The approval is for another request (user, agent, method, target or body differ):
    /// refuse; the record is unchanged and its status is not disclosed.
    Mismatch,
    /// The user has not answered yet.
    Pending,
    /// The user refused.
    Denied,
    /// The approval expired before it was decided or used.
    Expired,
    /// The approval was already consumed.
    AlreadyUsed,
    /// Polling the authorization server failed.
    Failed,
    /// The user's answer did not cover what was asked ([`ApprovalStatus::Mismatch`]).
    DetailsMismatch,
}

/// The approval store: a SQLite file (WAL mode). Synchronous and `Send + Sync`; async callers
/// wrap calls in `spawn_blocking`. Several stores (or processes) may share one file.
#[derive(Debug)]
pub struct ApprovalStore {
    conn: Mutex<Connection>,
}

impl ApprovalStore {
    /// Opens or creates the store file. A new file is created with mode 0600; an existing file
    /// (or WAL/SHM companion) that group or others may access is refused. Creates the schema
    /// and refuses a file from a newer schema version.
    pub fn open(path: &Path) -> Result<ApprovalStore, ApprovalStoreError> {
        let conn = open_sqlite(path)?;
        let conn = Mutex::new(conn);
        Ok(ApprovalStore { conn })
    }

    /// Stores a new record (normally `Pending`). [`ApprovalStoreError::Duplicate`] if the id
    /// is taken; [`ApprovalStoreError::InvalidArgument`] for an empty id or an integer beyond
    /// `i64::MAX`.
    pub fn insert(&self, r: &ApprovalRecord) -> Result<(), ApprovalStoreError> {
        if r.id.is_empty() {
            let msg = "the approval id must not be empty".to_string();
            return Err(ApprovalStoreError::InvalidArgument(msg));
        }
        let b = &r.binding;
        let auth_req_id = r.auth_req_id.expose();
        let values: [&dyn ToSql; 17] = [
            &r.id,
            &r.route,
            &b.sub,
            &b.agent,
            &b.method,
            &b.target,
            &b.body_sha256,
            &auth_req_id,
            &r.binding_message,
            &r.authorization_details,
            &r.status,
            &to_i64("interval_secs", r.interval_secs)?,
            &to_i64("created_at", r.created_at)?,
            &to_i64("expires_at", r.expires_at)?,
            &to_i64("updated_at", r.updated_at)?,
            &r.scope,
            &r.policy_rev,
        ];
        let sql = format!(
            "INSERT INTO approvals ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
             ON CONFLICT (id) DO NOTHING"
        );
        if self.lock().execute(&sql, &values[..])? == 0 {
            return Err(ApprovalStoreError::Duplicate { id: r.id.clone() });
        }
        Ok(())
    }

    /// The record with this id, or `None`.
    pub fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, ApprovalStoreError> {
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1");
        Ok(self.lock().query_row(&sql, [id], read_record).optional()?)
    }

    /// The newest approval of `route` bound to `b` that has not expired at `now` and did not
    /// fail: an identical call joins it instead of asking the user again (pending), is
    /// forwarded once (approved), or gets the same refusal (denied, used, expired early).
    pub fn find_latest(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
    ) -> Result<Option<ApprovalRecord>, ApprovalStoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE sub = ?1 AND status <> 'failed' \
             AND route = ?2 AND agent IS ?3 AND method = ?4 AND target = ?5 AND body_sha256 = ?6 \
             AND expires_at > ?7 ORDER BY created_at DESC, rowid DESC LIMIT 1"
        );
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let args = params![
            b.sub,
            route,
            b.agent,
            b.method,
            b.target,
            &b.body_sha256[..],
            now
        ];
        Ok(self.lock().query_row(&sql, args, read_record).optional()?)
    }

    /// Compare-and-swap of the status (`from` -> `to`), also setting `updated_at` to `now`, in
    /// one atomic `UPDATE`; `false` if the stored status is not `from` (or there is no such
    /// record). Only life-cycle moves are accepted, else
    /// [`ApprovalStoreError::InvalidTransition`]: `Pending` -> `Approved`, `Denied`,
    /// `Expired` or `Failed`; `Approved` -> `Used`, `Denied`, `Expired` or `Failed`. (Use
    /// [`ApprovalStore::consume`] for `Approved` -> `Used`: it checks the binding.)
    pub fn transition(
        &self,
        id: &str,
        from: ApprovalStatus,
        to: ApprovalStatus,
        now: u64,
    ) -> Result<bool, ApprovalStoreError> {
        let allowed = !from.is_final()
            && to != from
            && to != ApprovalStatus::Pending
            && !(from == ApprovalStatus::Pending && to == ApprovalStatus::Used);
        if !allowed {
            return Err(ApprovalStoreError::InvalidTransition { from, to });
        }
        let now = to_i64("now", now)?;
        let changed = self.lock().execute(
            "UPDATE approvals SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2",
            params![id, from, to, now],
        )?;
        Ok(changed == 1)
    }

    /// Records a new polling interval (CIBA `slow_down`) for a pending record.
    /// [`ApprovalStoreError::NotFound`] if there is no such record; a record no longer pending
    /// is left unchanged (its interval no longer matters).
    pub fn set_interval(&self, id: &str, interval_secs: u64) -> Result<(), ApprovalStoreError> {
        let interval = to_i64("interval_secs", interval_secs)?;
        let found = self.lock().execute(
            "UPDATE approvals SET interval_secs = \
             CASE status WHEN 'pending' THEN ?2 ELSE interval_secs END WHERE id = ?1",
            params![id, interval],
        )?;
        match found {
            0 => Err(ApprovalStoreError::NotFound),
            _ => Ok(()),
        }
    }

    /// Single use: in one `BEGIN IMMEDIATE` transaction, moves an `Approved` record to `Used`
    /// if its binding equals `binding` and it has not expired (`now < expires_at`); exactly
    /// one of concurrent callers gets [`Consume::Consumed`]. The binding is checked first,
    /// whatever the status: a different request gets [`Consume::Mismatch`] and changes nothing.
    /// A `Pending` or `Approved` record past `expires_at` gives [`Consume::Expired`] and is
    /// marked `Expired`. Other statuses are reported as they are (`Used` as
    /// [`Consume::AlreadyUsed`]).
    pub fn consume(
        &self,
        id: &str,
        binding: &Binding,
        now: u64,
    ) -> Result<Consume, ApprovalStoreError> {
        let now_i = to_i64("now", now)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1");
        let Some(rec) = tx.query_row(&sql, [id], read_record).optional()? else {
            return Ok(Consume::NotFound);
        };
        if rec.binding != *binding {
            return Ok(Consume::Mismatch);
        }
        let expired = now >= rec.expires_at;
        let (outcome, next) = match rec.status {
            ApprovalStatus::Pending | ApprovalStatus::Approved if expired => {
                (Consume::Expired, Some(ApprovalStatus::Expired))
            }
            ApprovalStatus::Approved => (Consume::Consumed, Some(ApprovalStatus::Used)),
            ApprovalStatus::Pending => (Consume::Pending, None),
            ApprovalStatus::Denied => (Consume::Denied, None),
            ApprovalStatus::Expired => (Consume::Expired, None),
            ApprovalStatus::Failed => (Consume::Failed, None),
            ApprovalStatus::Mismatch => (Consume::DetailsMismatch, None),
            ApprovalStatus::Used => (Consume::AlreadyUsed, None),
        };
        if let Some(next) = next {
            tx.execute(
                "UPDATE approvals SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, next, now_i],
            )?;
            tx.commit()?;
        }
        Ok(outcome)
    }

    /// Records still `Pending` (to resume polling after a restart), oldest first.
    pub fn pending(&self) -> Result<Vec<ApprovalRecord>, ApprovalStoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map([], read_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The number of `Pending` records, in total (`None`) or for one `sub` (for limits).
    pub fn count_pending(&self, sub: Option<&str>) -> Result<u64, ApprovalStoreError> {
        let count: i64 = self.lock().query_row(
            "SELECT COUNT(*) FROM approvals WHERE status = 'pending' AND (?1 IS NULL OR sub = ?1)",
            [sub],
            |r| r.get(0),
        )?;
        Ok(unsigned(0, count)?)
    }

    /// Deletes the final records (`Denied`, `Expired`, `Failed`, `Used`) whose `updated_at` is
    /// before `before`; returns how many were deleted.
    pub fn purge(&self, before: u64) -> Result<usize, ApprovalStoreError> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let sql = "DELETE FROM approvals \
            WHERE status IN ('denied', 'expired', 'failed', 'mismatch', 'used') AND updated_at < ?1";
        Ok(self.lock().execute(sql, [before])?)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolled that transaction back on drop: the connection is sound.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads a row selected with [`COLUMNS`].
fn read_record(r: &Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        id: r.get(0)?,
        route: r.get(1)?,
        binding: Binding {
            sub: r.get(2)?,
            agent: r.get(3)?,
            method: r.get(4)?,
            target: r.get(5)?,
            body_sha256: r.get(6)?,
        },
        auth_req_id: Secret::new(r.get(7)?),
        binding_message: r.get(8)?,
        authorization_details: r.get(9)?,
        status: r.get(10)?,
        interval_secs: unsigned(11, r.get(11)?)?,
        created_at: unsigned(12, r.get(12)?)?,
        expires_at: unsigned(13, r.get(13)?)?,
        updated_at: unsigned(14, r.get(14)?)?,
        scope: r.get(15)?,
        policy_rev: r.get(16)?,
    })
}

/// A stored integer that must not be negative.
fn unsigned(idx: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// A caller's integer as SQLite stores it.
fn to_i64(name: &str, value: u64) -> Result<i64, ApprovalStoreError> {
    i64::try_from(value)
        .map_err(|_| ApprovalStoreError::InvalidArgument(format!("{name} is out of range")))
}

/// `private_file::open_sqlite`, with this store's errors.
fn open_sqlite(path: &Path) -> Result<Connection, ApprovalStoreError> {
    let migrations = migrations();
    let migrations: Vec<&str> = migrations.iter().map(String::as_str).collect();
    private_file::open_sqlite(path, &schema(), SCHEMA_VERSION, &migrations).map_err(|e| match e {
        PrivateFileError::Io(m) => ApprovalStoreError::Io(m),
        PrivateFileError::Insecure { path, mode } => {
            ApprovalStoreError::InsecurePermissions { path, mode }
        }
        PrivateFileError::Sqlite(m) => ApprovalStoreError::Sqlite(m),
        PrivateFileError::UnsupportedSchema { found, supported } => {
            ApprovalStoreError::UnsupportedSchema { found, supported }
        }
    })
}

#[cfg(test)]
mod tests;
