//! The receipts chain in Redis, one per store, shared by the replicas: `receipts` is a list
//! of receipt JSON (position `seq - 1`), `receipts:head` the last receipt. An append is a
//! compare-and-set on the head (one Lua script), retried against the head the script returns
//! when another replica appended first, so concurrent appends are serialised and the chain
//! never forks. Each replica remembers the head it last saw: an append is one round trip
//! unless another replica appended since. Receipts do not
//! expire: export and trim them with your own retention (docs/approvals.md).

use std::sync::LazyLock;

use redis::Script;

use super::approvals::RedisApprovals;
use crate::approval::receipts::{Draft, Receipt, Row};
use crate::state::StateError;

/// Appends lost to other replicas before giving up (the store is then overloaded).
const MAX_ATTEMPTS: usize = 200;

static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return {'moved', head} end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return {'ok'}
"#,
    )
});

impl RedisApprovals {
    pub(super) async fn append(&self, draft: Draft) -> Result<Receipt, StateError> {
        let (head_key, list) = (
            self.redis().key("receipts:head"),
            self.redis().key("receipts"),
        );
        let mut head = self.last_head();
        for _ in 0..MAX_ATTEMPTS {
            let prev =
                match head.as_deref() {
                    None | Some("") => None,
                    Some(text) => Some(serde_json::from_str::<Receipt>(text).map_err(|_| {
                        StateError::Corrupt("the last receipt is unreadable".into())
                    })?),
                };
            let receipt = draft.clone().chain(prev.as_ref());
            let text =
                serde_json::to_string(&receipt).map_err(|e| StateError::Corrupt(e.to_string()))?;
            let expected = head.as_deref().unwrap_or("");
            let answer: Vec<String> = self
                .redis()
                .script(
                    "receipt_append",
                    &APPEND,
                    &[&head_key, &list],
                    &[expected, &text],
                )
                .await?;
            match answer.as_slice() {
                [ok] if ok == "ok" => {
                    self.remember_head(Some(text));
                    return Ok(receipt);
                }
                [_, current] => head = Some(current.clone()),
                _ => return Err(StateError::Corrupt("receipt append answer".into())),
            }
        }
        self.remember_head(None);
        Err(StateError::Store(
            "could not append a receipt: the chain head kept moving".into(),
        ))
    }

    pub(super) async fn list(
        &self,
        after: u64,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<Row>, StateError> {
        let list = self.redis().key("receipts");
        let mut out = Vec::new();
        let mut next = after;
        let page = limit.clamp(1, 1000) as u64;
        while out.len() < limit {
            let mut range = redis::cmd("LRANGE");
            range.arg(&list).arg(next).arg(next + page - 1);
            let texts: Vec<String> = self.redis().cmd("receipt_list", range).await?;
            if texts.is_empty() {
                break;
            }
            for text in texts {
                next += 1;
                let parsed = serde_json::from_str::<Receipt>(&text).map_err(|e| e.to_string());
                let keep = match (&parsed, sub) {
                    (Ok(r), Some(s)) => r.draft.sub == s,
                    _ => true,
                };
                if keep && out.len() < limit {
                    out.push((next, parsed));
                }
            }
        }
        Ok(out)
    }
}
