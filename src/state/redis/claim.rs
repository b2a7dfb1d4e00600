//! Claims on an approval's join key in Redis: the replica that asks the user for a binding
//! holds the claim (compare-and-set, with a time-out) until its approval is stored, so
//! identical calls on other replicas wait for that approval instead of asking again.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::approvals::RedisApprovals;
use crate::approval::store::Binding;
use crate::state::StateError;

/// The join key: claim it when it is empty or still holds `ARGV[1]` (the id the caller saw;
/// empty: none), for `ARGV[3]` ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1]) or ''
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#,
    )
});

static UNCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

impl RedisApprovals {
    /// The value of a claim by this process (not a plausible approval id: never looked up).
    fn claim_value(&self) -> String {
        format!("claim:{}", self.owner())
    }

    pub(super) async fn claim(
        &self,
        route: &str,
        b: &Binding,
        seen: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let key = self.join_key(route, b);
        let (value, ttl) = (self.claim_value(), ttl.as_millis().max(1).to_string());
        let claimed: u8 = self
            .redis()
            .script("approval_claim", &CLAIM, &[&key], &[seen, &value, &ttl])
            .await?;
        Ok(claimed == 1)
    }

    /// Give this process's claim up (asking the user failed).
    pub(super) async fn release_claim(&self, route: &str, b: &Binding) -> Result<(), StateError> {
        let key = self.join_key(route, b);
        let value = self.claim_value();
        self.redis()
            .script::<()>("approval_unclaim", &UNCLAIM, &[&key], &[&value])
            .await
    }
}
