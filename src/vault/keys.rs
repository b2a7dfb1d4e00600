//! Vault encryption keys: parsing, generation, and AES-256-GCM sealing.
//!
//! Keys come from an environment variable or a key file, never from the config file. The text
//! holds one or more `KEY_ID:BASE64` entries separated by commas or newlines; blank lines and
//! `#` comments are ignored. BASE64 (standard or url-safe, padding optional) must decode to
//! exactly 32 bytes; key ids are `[A-Za-z0-9._-]{1,64}` and unique. The first entry is the
//! primary key, used for every write; the others are older keys still accepted for reading.

use std::fmt;
use std::iter;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::VaultError;

/// AES-256 key length in bytes.
const KEY_LEN: usize = 32;
/// Longest accepted key id.
const MAX_ID_LEN: usize = 64;
/// Sealed per key id in the vault to recognise the key at open.
const CHECK_PLAINTEXT: &[u8] = b"portcullis vault key check v1";

/// One named key.
struct Entry {
    id: String,
    key: LessSafeKey,
}

/// The configured vault keys: a primary key for writing plus older keys for reading.
/// `Debug` shows key ids only.
pub struct VaultKeys {
    primary: Entry,
    older: Vec<Entry>,
}

/// Why [`VaultKeys::open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// No configured key has this id.
    UnknownKeyId,
    /// The key exists but authentication failed (wrong key, tampered data or AAD).
    Failed,
}

impl VaultKeys {
    /// Parses key text (see the module docs). Error messages name entries by position or by id
    /// and never include key material.
    pub fn parse(text: &str) -> Result<VaultKeys, VaultError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut n = 0usize;
        for line in text.lines() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            for raw in line.split(',') {
                let raw = raw.trim();
                if raw.is_empty() {
                    continue;
                }
                n += 1;
                let entry = parse_entry(n, raw)?;
                if entries.iter().any(|e| e.id == entry.id) {
                    return Err(bad(format!("key id '{}' appears more than once", entry.id)));
                }
                entries.push(entry);
            }
        }
        let mut entries = entries.into_iter();
        let primary = entries.next().ok_or_else(|| {
            bad("no keys found (expected one or more KEY_ID:BASE64 entries)".to_string())
        })?;
        Ok(VaultKeys {
            primary,
            older: entries.collect(),
        })
    }

    /// Returns fresh key text, `k<unix-time>:<base64 of 32 random bytes>`, suitable for
    /// [`VaultKeys::parse`] (put it first to make it the primary key).
    pub fn generate() -> Result<String, VaultError> {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes).map_err(|_| rng_failed())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(format!("k{now}:{}", STANDARD.encode(bytes)))
    }

    /// The id of the primary key, which encrypts every write.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// All key ids, primary first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries().map(|e| e.id.as_str())
    }

    /// Whether a key with this id is configured.
    pub fn contains(&self, key_id: &str) -> bool {
        self.entries().any(|e| e.id == key_id)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        iter::once(&self.primary).chain(self.older.iter())
    }

    /// Seals `plaintext` under the primary key with a fresh random nonce; returns
    /// `(nonce, ciphertext || tag)`.
    pub(crate) fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| rng_failed())?;
        let mut buf = plaintext.to_vec();
        self.primary
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| VaultError::Crypto("AES-256-GCM encryption failed".to_string()))?;
        Ok((nonce, buf))
    }

    /// Seals the fixed check string under the primary key; stored per key id, it lets a later
    /// open recognise a wrong key before any credential is read.
    pub(crate) fn seal_check(&self) -> Result<([u8; NONCE_LEN], Vec<u8>), VaultError> {
        self.seal(&check_aad(self.primary_id()), CHECK_PLAINTEXT)
    }

    /// Whether the configured key `key_id` opens a check sealed by [`VaultKeys::seal_check`].
    pub(crate) fn check_matches(&self, key_id: &str, nonce: &[u8], sealed: &[u8]) -> bool {
        self.open(key_id, nonce, &check_aad(key_id), sealed)
            .is_ok_and(|plain| plain == CHECK_PLAINTEXT)
    }

    /// Opens a value sealed under the key `key_id`.
    pub(crate) fn open(
        &self,
        key_id: &str,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, OpenFailure> {
        let entry = self
            .entries()
            .find(|e| e.id == key_id)
            .ok_or(OpenFailure::UnknownKeyId)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenFailure::Failed)?;
        let mut buf = ciphertext.to_vec();
        let len = entry
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| OpenFailure::Failed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let older: Vec<&str> = self.older.iter().map(|e| e.id.as_str()).collect();
        f.debug_struct("VaultKeys")
            .field("primary", &self.primary.id)
            .field("older", &older)
            .finish_non_exhaustive()
    }
}

/// Parses the `n`th (1-based) entry `KEY_ID:BASE64`.
fn parse_entry(n: usize, raw: &str) -> Result<Entry, VaultError> {
    let (id, b64) = raw
        .split_once(':')
        .ok_or_else(|| bad(format!("entry {n} is not of the form KEY_ID:BASE64")))?;
    let id = id.trim();
    if !valid_id(id) {
        return Err(bad(format!(
            "entry {n}: the key id must be 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ -"
        )));
    }
    let bytes = decode(b64.trim()).ok_or_else(|| {
        bad(format!(
            "key '{id}' is not valid base64 (standard or url-safe, padding optional)"
        ))
    })?;
    if bytes.len() != KEY_LEN {
        return Err(bad(format!(
            "key '{id}' decodes to {} bytes; AES-256 needs exactly {KEY_LEN}",
            bytes.len()
        )));
    }
    let key = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| VaultError::Crypto(format!("key '{id}' was rejected by AES-256-GCM")))?;
    Ok(Entry {
        id: id.to_string(),
        key: LessSafeKey::new(key),
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Decodes standard or url-safe base64, padded or not. The decoder's own error is dropped: its
/// message quotes the offending character, which is key material.
fn decode(b64: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if b64.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(b64).ok()
}

/// AAD of a key check; it has one NUL, so it never equals a credential row's AAD
/// (`sub \0 connection \0 key_id`, names without NUL), which has two.
fn check_aad(key_id: &str) -> Vec<u8> {
    format!("portcullis-vault-key-check\0{key_id}").into_bytes()
}

fn bad(msg: String) -> VaultError {
    VaultError::BadKey(msg)
}

fn rng_failed() -> VaultError {
    VaultError::Crypto("the system random generator failed".to_string())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;

    use super::{OpenFailure, VaultKeys};
    use crate::vault::VaultError;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn err(text: &str) -> String {
        match VaultKeys::parse(text) {
            Err(VaultError::BadKey(msg)) => msg,
            other => panic!("expected BadKey, got {other:?}"),
        }
    }

    #[test]
    fn parses_single_and_multiple_entries() {
        let keys = VaultKeys::parse(&format!("k1:{K1}")).unwrap();
        assert_eq!(keys.primary_id(), "k1");
        let url = URL_SAFE_NO_PAD.encode([0xfbu8; 32]);
        let text = format!(
            "# vault keys\n\n  new.key_2 : {url}  # rotated in\nk1:{K1}, old-0:{}\r\n",
            STANDARD.encode([7u8; 32]).trim_end_matches('=')
        );
        let keys = VaultKeys::parse(&text).unwrap();
        assert_eq!(keys.primary_id(), "new.key_2");
        assert_eq!(keys.ids().collect::<Vec<_>>(), ["new.key_2", "k1", "old-0"]);
        assert!(keys.contains("old-0") && !keys.contains("k9"));
    }

    #[test]
    fn rejects_bad_input_without_echoing_keys() {
        assert!(err("").contains("no keys"));
        assert!(err("# only a comment\n\n , ,\n").contains("no keys"));
        let m = err("k1:not*base64!");
        assert!(m.contains("'k1'") && m.contains("base64") && !m.contains("not*base64"));
        let short = STANDARD.encode([1u8; 16]);
        let m = err(&format!("k1:{short}"));
        assert!(m.contains("16 bytes") && !m.contains(&short));
        assert!(err(&format!("k1:{K1}\nk1:{K1}")).contains("more than once"));
        let m = err(K1);
        assert!(m.contains("entry 1") && !m.contains(K1));
        let m = err(&format!("k1:{K1}, bad id!:{K1}"));
        assert!(m.contains("entry 2") && !m.contains(K1));
        let long = "x".repeat(65);
        assert!(err(&format!("{long}:{K1}")).contains("key id"));
    }

    #[test]
    fn debug_shows_ids_only() {
        let keys = VaultKeys::parse(&format!("a:{K1},b:{}", STANDARD.encode([9u8; 32]))).unwrap();
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("\"a\"") && dbg.contains("\"b\""));
        assert!(!dbg.contains(K1) && !dbg.contains("AAECAw"));
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = VaultKeys::generate().unwrap();
        let b = VaultKeys::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with('k'));
        let keys = VaultKeys::parse(&a).unwrap();
        assert_eq!(Some(keys.primary_id()), a.split(':').next());
    }

    #[test]
    fn seal_open_round_trip_and_failures() {
        let keys = VaultKeys::parse(&format!("k2:{},k1:{K1}", STANDARD.encode([3u8; 32]))).unwrap();
        let (nonce, ct) = keys.seal(b"aad", b"secret").unwrap();
        assert_eq!(keys.open("k2", &nonce, b"aad", &ct).unwrap(), b"secret");
        assert_eq!(
            keys.open("k1", &nonce, b"aad", &ct),
            Err(OpenFailure::Failed)
        );
        assert_eq!(
            keys.open("k2", &nonce, b"other", &ct),
            Err(OpenFailure::Failed)
        );
        assert_eq!(
            keys.open("k3", &nonce, b"aad", &ct),
            Err(OpenFailure::UnknownKeyId)
        );
        assert_eq!(
            keys.open("k2", &nonce[..4], b"aad", &ct),
            Err(OpenFailure::Failed)
        );
        let (nonce2, _) = keys.seal(b"aad", b"secret").unwrap();
        assert_ne!(nonce, nonce2);
        let (nonce, check) = keys.seal_check().unwrap();
        assert!(keys.check_matches("k2", &nonce, &check));
        assert!(!keys.check_matches("k1", &nonce, &check));
    }
}
