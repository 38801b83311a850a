//! Device tokens: one per serial, 256 bits from the OS random source, stored only as SHA-256 hashes.
//!
//! Two sled trees: `device_tokens` maps a serial to its token's hash, creation and last use;
//! `device_token_hashes` maps a hash back to its serial, so a device that presents only its token is
//! found with one lookup. The hash found is compared again in constant time (`subtle`). A token
//! issued with an owner carries it: the device's record takes that owner (the multi-tenant `owner`
//! field that users with `--scope-owner` see by).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use smart_proto::Serial;
use subtle::ConstantTimeEq as _;

/// What every token starts with, so that secret scanners and people recognise one.
pub(crate) const TOKEN_PREFIX: &str = "smartos_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// A stored entry: hash, created (ms since the epoch), last used (ms, 0 = never), then the owner's
/// UTF-8 text if the token was issued with one.
const ENTRY_LEN: usize = 32 + 8 + 8;
/// Longest owner name, in bytes.
pub(crate) const MAX_OWNER_BYTES: usize = 128;

/// A token store failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("the store failed: {0}")]
    Store(#[from] sled::Error),
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error("a stored token entry for {0:?} is damaged")]
    Damaged(String),
    #[error("bad owner: {0}")]
    BadOwner(&'static str),
}

/// Check an owner name given to [`Tokens::issue`]: 1 to [`MAX_OWNER_BYTES`] bytes, no control
/// characters.
pub(crate) fn check_owner(owner: &str) -> Result<(), TokenError> {
    if owner.is_empty() {
        Err(TokenError::BadOwner("empty"))
    } else if owner.len() > MAX_OWNER_BYTES {
        Err(TokenError::BadOwner("longer than 128 bytes"))
    } else if owner.chars().any(char::is_control) {
        Err(TokenError::BadOwner("control characters"))
    } else {
        Ok(())
    }
}

/// A token that verified: the serial it may write, and the owner its device gets, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub serial: Serial,
    pub owner: Option<String>,
}

/// One serial's token, as listed (never the token itself).
/// What [`Tokens::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// The serial had exactly this entry.
    Same,
    /// The same token, with another owner or creation time.
    Updated,
    /// Another token (or none) was replaced: the old one's connections must end.
    Replaced,
}

/// A token as the cluster shares it (`--redis`): its hash, creation time and owner; never the token.
/// When it was last used stays with each instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredToken {
    /// SHA-256 of the token, base64url.
    hash: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl StoredToken {
    /// The hash as bytes; `None` if it is not 32 bytes of base64url (a damaged shared entry).
    fn hash_bytes(&self) -> Option<[u8; 32]> {
        URL_SAFE_NO_PAD.decode(&self.hash).ok()?.try_into().ok()
    }

    /// The local store's entry: hash, created, last used (`used`), owner.
    fn entry(&self, used: u64) -> Option<Vec<u8>> {
        let hash = self.hash_bytes()?;
        let owner = self.owner.as_deref().unwrap_or_default();
        let mut entry = Vec::with_capacity(ENTRY_LEN + owner.len());
        entry.extend_from_slice(&hash);
        entry.extend_from_slice(&self.created_ms.to_be_bytes());
        entry.extend_from_slice(&used.to_be_bytes());
        entry.extend_from_slice(owner.as_bytes());
        Some(entry)
    }

    /// From the local store's entry.
    fn from_entry(serial: &str, entry: &[u8]) -> Result<StoredToken, TokenError> {
        let damaged = || TokenError::Damaged(serial.to_owned());
        let hash = entry.get(..32).ok_or_else(damaged)?;
        Ok(StoredToken {
            hash: URL_SAFE_NO_PAD.encode(hash),
            created_ms: be_u64(entry, 32).ok_or_else(damaged)?,
            owner: stored_owner(entry).map_err(|_| damaged())?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    pub serial: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Milliseconds since the Unix epoch of the last accepted connection; `None` if never used.
    pub last_used_ms: Option<u64>,
    /// The owner the device gets, if the token was issued with one.
    pub owner: Option<String>,
}

/// The device tokens of one data directory.
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    by_serial: sled::Tree,
    by_hash: sled::Tree,
}

impl Tokens {
    /// The token trees of `db`.
    pub(crate) fn open(db: &sled::Db) -> Result<Tokens, TokenError> {
        Ok(Tokens {
            by_serial: db.open_tree("device_tokens")?,
            by_hash: db.open_tree("device_token_hashes")?,
        })
    }

    /// A new token for `serial` (whose device gets `owner`, if given), replacing (revoking) any
    /// earlier one. Durable when this returns.
    pub(crate) fn issue(&self, serial: &Serial, owner: Option<&str>) -> Result<String, TokenError> {
        let token = self.issue_unsynced(serial, owner)?;
        self.flush()?;
        Ok(token)
    }

    /// New tokens for many serials, with one sync at the end. Durable when this returns.
    pub(crate) fn issue_many(
        &self,
        serials: &[Serial],
        owner: Option<&str>,
    ) -> Result<Vec<String>, TokenError> {
        let tokens = serials
            .iter()
            .map(|serial| self.issue_unsynced(serial, owner))
            .collect::<Result<Vec<_>, _>>()?;
        self.flush()?;
        Ok(tokens)
    }

    fn issue_unsynced(&self, serial: &Serial, owner: Option<&str>) -> Result<String, TokenError> {
        let (token, stored) = Tokens::prepare(owner)?;
        self.put(serial.as_str(), &stored)?;
        Ok(token)
    }

    /// A new token for a device (`owner` checked), and what the store keeps of it; stores nothing.
    pub(crate) fn prepare(owner: Option<&str>) -> Result<(String, StoredToken), TokenError> {
        if let Some(owner) = owner {
            check_owner(owner)?;
        }
        let token = format!("{TOKEN_PREFIX}{}", random_secret()?);
        let stored = StoredToken {
            hash: URL_SAFE_NO_PAD.encode(hash(&token)),
            created_ms: now_ms(),
            owner: owner.map(str::to_owned),
        };
        Ok((token, stored))
    }

    /// Make `stored` the token of `serial` (replacing any other; not flushed). When it is the token
    /// already stored, its last use is kept.
    pub(crate) fn put(&self, serial: &str, stored: &StoredToken) -> Result<Put, TokenError> {
        let hash = stored
            .hash_bytes()
            .ok_or_else(|| TokenError::Damaged(serial.to_owned()))?;
        let old = self.by_serial.get(serial)?;
        let same = old.as_ref().and_then(|old| old.get(..32)) == Some(&hash[..]);
        let used = match &old {
            Some(old) if same => be_u64(old, 40).unwrap_or(0),
            _ => 0,
        };
        let entry = stored
            .entry(used)
            .ok_or_else(|| TokenError::Damaged(serial.to_owned()))?;
        if old.as_deref() == Some(&entry[..]) {
            return Ok(Put::Same);
        }
        if let Some(old) = self.by_serial.insert(serial, entry)?
            && let Some(old_hash) = old.get(..32)
            && old_hash != hash
        {
            self.by_hash.remove(old_hash)?;
        }
        self.by_hash.insert(hash, serial)?;
        Ok(if same { Put::Updated } else { Put::Replaced })
    }

    /// What the store keeps of `serial`'s token, if it has one.
    pub(crate) fn stored(&self, serial: &str) -> Result<Option<StoredToken>, TokenError> {
        self.by_serial
            .get(serial)?
            .map(|entry| StoredToken::from_entry(serial, &entry))
            .transpose()
    }

    /// Every token the store keeps, by serial.
    pub(crate) fn all_stored(&self) -> Result<Vec<(String, StoredToken)>, TokenError> {
        let mut out = Vec::new();
        for item in &self.by_serial {
            let (key, value) = item?;
            let serial = String::from_utf8_lossy(&key).into_owned();
            let stored = StoredToken::from_entry(&serial, &value)?;
            out.push((serial, stored));
        }
        Ok(out)
    }

    /// Forget `serial`'s token (not flushed). Returns whether it had one.
    pub(crate) fn remove(&self, serial: &str) -> Result<bool, TokenError> {
        let Some(old) = self.by_serial.remove(serial)? else {
            return Ok(false);
        };
        if let Some(old_hash) = old.get(..32) {
            self.by_hash.remove(old_hash)?;
        }
        Ok(true)
    }

    pub(crate) fn revoke(&self, serial: &str) -> Result<bool, TokenError> {
        let removed = self.remove(serial)?;
        if removed {
            self.flush()?;
        }
        Ok(removed)
    }

    pub(crate) fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let mut out = Vec::new();
        for item in &self.by_serial {
            let (key, value) = item?;
            let serial = String::from_utf8_lossy(&key).into_owned();
            let (Some(created), Some(used)) = (be_u64(&value, 32), be_u64(&value, 40)) else {
                return Err(TokenError::Damaged(serial));
            };
            let Ok(owner) = stored_owner(&value) else {
                return Err(TokenError::Damaged(serial));
            };
            out.push(TokenInfo {
                serial,
                created_ms: created,
                last_used_ms: (used != 0).then_some(used),
                owner,
            });
        }
        Ok(out)
    }

    /// The serial `token` belongs to, or `None` for a token that is unknown or revoked. Records the
    /// use (made durable with the next checkpoint, not here: a connection costs no sync).
    pub(crate) fn verify(&self, token: &str) -> Result<Option<Verified>, TokenError> {
        let hash = hash(token);
        let Some(serial) = self.by_hash.get(hash)? else {
            return Ok(None);
        };
        let Some(old) = self.by_serial.get(&serial)? else {
            return Ok(None);
        };
        // The index agreed; the entry must too (a revoke may have raced this lookup).
        let matches = old
            .get(..32)
            .is_some_and(|stored| bool::from(stored.ct_eq(&hash)));
        let serial = std::str::from_utf8(&serial)
            .ok()
            .and_then(|s| Serial::new(s).ok());
        let (true, Some(serial)) = (matches, serial) else {
            return Ok(None);
        };
        let Ok(owner) = stored_owner(&old) else {
            return Err(TokenError::Damaged(serial.as_str().to_owned()));
        };
        let mut entry = old.to_vec();
        if let Some(used) = entry.get_mut(40..48) {
            used.copy_from_slice(&now_ms().to_be_bytes());
            // Only if unchanged since it was read: a concurrent revoke or re-issue wins.
            let _ = self
                .by_serial
                .compare_and_swap(serial.as_str(), Some(old), Some(entry))?;
        }
        Ok(Some(Verified { serial, owner }))
    }

    pub(crate) fn flush(&self) -> Result<(), TokenError> {
        self.by_serial.flush()?;
        self.by_hash.flush()?;
        Ok(())
    }
}

/// The owner stored after an entry's fixed part (`Err` if it is not UTF-8).
fn stored_owner(entry: &[u8]) -> Result<Option<String>, std::str::Utf8Error> {
    match entry.get(ENTRY_LEN..) {
        Some(bytes) if !bytes.is_empty() => Ok(Some(std::str::from_utf8(bytes)?.to_owned())),
        _ => Ok(None),
    }
}

/// 256 random bits from the OS, as unpadded base64url (43 characters).
pub(crate) fn random_secret() -> Result<String, TokenError> {
    let mut random = [0_u8; TOKEN_BYTES];
    getrandom::fill(&mut random).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(random))
}

/// SHA-256 of a token's text.
fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tokens = Tokens::open(&db).unwrap();
        (dir, tokens)
    }

    #[test]
    fn a_token_verifies_as_its_serial_until_revoked_or_reissued() {
        let (_dir, tokens) = tokens();
        let serial = Serial::new("0001").unwrap();
        let first = tokens.issue(&serial, None).unwrap();
        assert!(first.starts_with(TOKEN_PREFIX));
        // 32 bytes in unpadded base64.
        assert_eq!(first.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(
            tokens.verify(&first).unwrap(),
            Some(Verified {
                serial: serial.clone(),
                owner: None
            })
        );
        assert_eq!(tokens.verify("smartos_wrong").unwrap(), None);

        let second = tokens.issue(&serial, None).unwrap();
        assert_ne!(first, second);
        assert_eq!(tokens.verify(&first).unwrap(), None, "re-issue revokes");
        assert_eq!(
            tokens.verify(&second).unwrap(),
            Some(Verified {
                serial: serial.clone(),
                owner: None
            })
        );

        assert!(tokens.revoke("0001").unwrap());
        assert!(!tokens.revoke("0001").unwrap());
        assert_eq!(tokens.verify(&second).unwrap(), None);
    }

    #[test]
    fn a_token_issued_with_an_owner_verifies_with_it() {
        let (_dir, tokens) = tokens();
        let serial = Serial::new("0001").unwrap();
        let token = tokens.issue(&serial, Some("Tenant A")).unwrap();
        let verified = tokens.verify(&token).unwrap().unwrap();
        assert_eq!(verified.owner.as_deref(), Some("Tenant A"));
        // Verifying rewrites "last used": the owner stays.
        assert_eq!(tokens.verify(&token).unwrap(), Some(verified));
        for bad in ["", "a\nb", &"x".repeat(MAX_OWNER_BYTES + 1)] {
            assert!(tokens.issue(&serial, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(
            tokens.verify(&token).unwrap().is_some(),
            "a refused issue revokes nothing"
        );
    }

    #[test]
    fn the_list_shows_serials_and_times_never_tokens_or_hashes() {
        let (_dir, tokens) = tokens();
        let before = now_ms();
        let b = tokens.issue(&Serial::new("b").unwrap(), None).unwrap();
        tokens
            .issue(&Serial::new("a").unwrap(), Some("Tenant A"))
            .unwrap();
        let list = tokens.list().unwrap();
        assert_eq!(
            list.iter().map(|t| t.serial.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(list.iter().all(|t| t.created_ms >= before));
        assert!(list.iter().all(|t| t.last_used_ms.is_none()));
        tokens.verify(&b).unwrap();
        let list = tokens.list().unwrap();
        assert!(list[1].last_used_ms.is_some_and(|t| t >= before));
        assert!(list[0].last_used_ms.is_none());
        assert_eq!(
            list[0].owner.as_deref(),
            Some("Tenant A"),
            "the owner survives a use"
        );
        assert_eq!(list[1].owner, None);
        assert!(!format!("{list:?}").contains(&b));
    }
}
