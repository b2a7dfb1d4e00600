//! The receipts chain in the SQLite store: one row per receipt, appended inside a
//! `BEGIN IMMEDIATE` transaction (so appends from threads or processes sharing the file are
//! serialised and the chain never forks).

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{ApprovalStore, ApprovalStoreError};
use crate::approval::receipts::{Draft, Receipt, Row};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS receipts (seq INTEGER PRIMARY KEY NOT NULL, at INTEGER NOT NULL,
    sub TEXT NOT NULL, receipt TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS receipts_sub ON receipts (sub, seq);";

impl ApprovalStore {
    /// Append `draft` to the chain.
    pub fn append_receipt(&self, draft: Draft) -> Result<Receipt, ApprovalStoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<String> = tx
            .query_row(
                "SELECT receipt FROM receipts ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let prev = match last {
            Some(text) => Some(serde_json::from_str::<Receipt>(&text).map_err(|e| {
                ApprovalStoreError::Sqlite(format!("the last receipt is unreadable: {e}"))
            })?),
            None => None,
        };
        let receipt = draft.chain(prev.as_ref());
        let text = serde_json::to_string(&receipt)
            .map_err(|e| ApprovalStoreError::InvalidArgument(e.to_string()))?;
        let seq = i64::try_from(receipt.seq)
            .map_err(|_| ApprovalStoreError::InvalidArgument("seq".into()))?;
        let at = i64::try_from(receipt.draft.at)
            .map_err(|_| ApprovalStoreError::InvalidArgument("at".into()))?;
        tx.execute(
            "INSERT INTO receipts (seq, at, sub, receipt) VALUES (?1, ?2, ?3, ?4)",
            params![seq, at, receipt.draft.sub, text],
        )?;
        tx.commit()?;
        Ok(receipt)
    }

    /// Up to `limit` rows after position `after`, in chain order (optionally of one user).
    pub fn receipts(
        &self,
        after: u64,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<Row>, ApprovalStoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, receipt FROM receipts WHERE seq > ?1 AND (?2 IS NULL OR sub = ?2) \
             ORDER BY seq LIMIT ?3",
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, sub, limit], |r| {
            let seq: i64 = r.get(0)?;
            let text: String = r.get(1)?;
            Ok((seq, text))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, text) = row?;
            let parsed = serde_json::from_str::<Receipt>(&text).map_err(|e| e.to_string());
            out.push((u64::try_from(seq).unwrap_or(0), parsed));
        }
        Ok(out)
    }
}
