//! Verified-token cache: SHA-256 of the token → the verified identity, until the token
//! expires. Bounded: when full, expired entries are swept; if it is still full the new entry
//! is simply not cached (verification still works, it is just not remembered).

use std::sync::Arc;

use dashmap::DashMap;

use super::Verified;

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub struct TokenCache {
    map: DashMap<TokenHash, Arc<Verified>>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: DashMap::new(),
            capacity,
        }
    }

    /// A live entry verified by issuer `issuer`.
    pub fn get(&self, key: &TokenHash, issuer: usize, now: u64) -> Option<Arc<Verified>> {
        let hit = self.map.get(key)?;
        if hit.issuer == issuer && hit.valid_until > now {
            return Some(hit.clone());
        }
        None
    }

    pub fn insert(&self, key: TokenHash, v: Arc<Verified>, now: u64) {
        if self.map.len() >= self.capacity {
            self.sweep(now);
            if self.map.len() >= self.capacity {
                return;
            }
        }
        self.map.insert(key, v);
    }

    /// Drop expired entries.
    pub fn sweep(&self, now: u64) {
        self.map.retain(|_, v| v.valid_until > now);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
