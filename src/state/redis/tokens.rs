//! The shared upstream-token cache: `tok:<slot digest>` → the token sealed with AES-256-GCM
//! (the vault's primary key, or `state.redis.cache_key_env`), bound to its Redis key as AAD,
//! expiring with the token (`valid_until`). A replica that misses asks here before the
//! authorization server, and stores what it obtained.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::Redis;
use crate::credentials::cache::{SlotKey, UpstreamToken};
use crate::secret::Secret;
use crate::state::{hex, SharedTokens, StateError};
use crate::vault::VaultKeys;

/// Domain separation from the vault's own use of the key.
const AAD_PREFIX: &str = "portcullis shared upstream token v1 ";

pub struct RedisTokens {
    redis: Arc<Redis>,
    keys: VaultKeys,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed {
    v: String,
    until: u64,
}

impl RedisTokens {
    /// `key_text`: `id:base64` entries, as vault keys.
    pub fn new(redis: Arc<Redis>, key_text: &str) -> Result<RedisTokens, String> {
        let keys = VaultKeys::parse(key_text).map_err(|e| format!("state cache key: {e}"))?;
        Ok(RedisTokens { redis, keys })
    }

    fn key(&self, slot: &SlotKey) -> String {
        self.redis.key(&format!("tok:{}", hex(slot)))
    }
}

#[async_trait]
impl SharedTokens for RedisTokens {
    async fn get(&self, slot: &SlotKey, now: u64) -> Result<Option<UpstreamToken>, StateError> {
        let key = self.key(slot);
        let value: Option<String> = self
            .redis
            .cmd("token_get", redis::cmd("GET").arg(&key).clone())
            .await?;
        let Some(value) = value else { return Ok(None) };
        // <key id>.<nonce b64>.<sealed b64>; anything unreadable is a miss (and overwritten).
        let mut parts = value.splitn(3, '.');
        let (Some(id), Some(nonce), Some(sealed)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let (Ok(nonce), Ok(sealed)) = (STANDARD.decode(nonce), STANDARD.decode(sealed)) else {
            return Ok(None);
        };
        let aad = format!("{AAD_PREFIX}{key}");
        let Ok(plain) = self.keys.open(id, &nonce, aad.as_bytes(), &sealed) else {
            tracing::warn!("a shared upstream token could not be opened (other key?); fetching");
            return Ok(None);
        };
        let Ok(t) = serde_json::from_slice::<Sealed>(&plain) else {
            return Ok(None);
        };
        Ok((t.until > now).then(|| UpstreamToken {
            value: Secret::new(t.v),
            valid_until: t.until,
        }))
    }

    async fn put(&self, slot: &SlotKey, token: &UpstreamToken, now: u64) -> Result<(), StateError> {
        if token.valid_until <= now {
            return Ok(());
        }
        let key = self.key(slot);
        let plain = serde_json::to_vec(&Sealed {
            v: token.value.expose().to_string(),
            until: token.valid_until,
        })
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
        let aad = format!("{AAD_PREFIX}{key}");
        let (nonce, sealed) = self
            .keys
            .seal(aad.as_bytes(), &plain)
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        let value = format!(
            "{}.{}.{}",
            self.keys.primary_id(),
            STANDARD.encode(nonce),
            STANDARD.encode(sealed)
        );
        let cmd = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("EXAT")
            .arg(token.valid_until)
            .clone();
        self.redis.cmd::<()>("token_put", cmd).await
    }
}
