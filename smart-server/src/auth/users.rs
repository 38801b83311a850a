//! People and scripts: user names with a role, an optional owner scope and an argon2id password hash.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the fleet: dashboards, the REST API, metrics.
    Viewer,
    /// Reads, and manages device tokens and users.
    Owner,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Owner => "owner",
        }
    }
}

/// A user as stored (the password only as its argon2id PHC string).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct User {
    pub role: Role,
    /// Only devices whose `owner` is this are visible to the user.
    pub scope_owner: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    phc: String,
}

/// A user store failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserError {
    #[error("the store failed: {0}")]
    Store(#[from] sled::Error),
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error("the stored entry of user {0:?} is damaged")]
    Damaged(String),
    #[error("{0}")]
    Invalid(String),
}

/// Longest user name.
const MAX_NAME: usize = 64;
/// Longest password (argon2 takes any length; this bounds the work an attacker can ask for).
pub(crate) const MAX_PASSWORD: usize = 1024;

/// The users of one data directory (sled tree `users`: name → JSON).
#[derive(Debug, Clone)]
pub(crate) struct Users {
    tree: sled::Tree,
}

impl Users {
    pub(crate) fn open(db: &sled::Db) -> Result<Users, UserError> {
        Ok(Users {
            tree: db.open_tree("users")?,
        })
    }

    /// Whether any user exists.
    pub(crate) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Add or replace a user; the password is stored only as its argon2id hash.
    pub(crate) fn add(
        &self,
        name: &str,
        password: &str,
        role: Role,
        scope_owner: Option<String>,
    ) -> Result<(), UserError> {
        let user = Users::prepare(name, password, role, scope_owner)?;
        self.put(name, &user)?;
        self.tree.flush()?;
        Ok(())
    }

    /// A user as it would be stored (name and password checked, the password hashed); stores nothing.
    pub(crate) fn prepare(
        name: &str,
        password: &str,
        role: Role,
        scope_owner: Option<String>,
    ) -> Result<User, UserError> {
        check_name(name)?;
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err(UserError::Invalid(format!(
                "a password has 1 to {MAX_PASSWORD} bytes"
            )));
        }
        let mut salt = [0_u8; 16];
        getrandom::fill(&mut salt).map_err(|e| UserError::Hash(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
        let phc = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UserError::Hash(e.to_string()))?
            .to_string();
        Ok(User {
            role,
            scope_owner,
            created_ms: super::tokens::now_ms(),
            phc,
        })
    }

    /// Store `user` under `name` (not flushed). Returns whether it differs from what was stored.
    pub(crate) fn put(&self, name: &str, user: &User) -> Result<bool, UserError> {
        check_name(name)?;
        let json = serde_json::to_vec(user).map_err(|e| UserError::Hash(e.to_string()))?;
        let old = self.tree.insert(name, json.as_slice())?;
        Ok(old.as_deref() != Some(&json[..]))
    }

    /// The stored user `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Result<Option<User>, UserError> {
        self.tree
            .get(name)?
            .map(|value| {
                serde_json::from_slice(&value).map_err(|_| UserError::Damaged(name.to_owned()))
            })
            .transpose()
    }

    /// Forget `name` (not flushed). Returns whether it existed.
    pub(crate) fn forget(&self, name: &str) -> Result<bool, UserError> {
        Ok(self.tree.remove(name)?.is_some())
    }

    /// Make what was changed durable.
    pub(crate) fn flush(&self) -> Result<(), UserError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Remove `name`; `false` if there was none. Durable when this returns.
    pub(crate) fn remove(&self, name: &str) -> Result<bool, UserError> {
        let removed = self.tree.remove(name)?.is_some();
        self.tree.flush()?;
        Ok(removed)
    }

    /// Every user, by name.
    pub(crate) fn list(&self) -> Result<Vec<(String, User)>, UserError> {
        let mut out = Vec::new();
        for item in &self.tree {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let user =
                serde_json::from_slice(&value).map_err(|_| UserError::Damaged(name.clone()))?;
            out.push((name, user));
        }
        Ok(out)
    }

    /// The user, if `name` exists and `password` is theirs. Slow by design (argon2id): call it off
    /// the async workers.
    pub(crate) fn verify(&self, name: &str, password: &str) -> Result<Option<User>, UserError> {
        if password.len() > MAX_PASSWORD {
            return Ok(None);
        }
        let Some(value) = self.tree.get(name)? else {
            // The same work as for a real user, so that timing does not tell which names exist.
            if let Ok(salt) = SaltString::from_b64("c21hcnRvcy1kdW1teQ") {
                let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
            }
            return Ok(None);
        };
        let user: User =
            serde_json::from_slice(&value).map_err(|_| UserError::Damaged(name.to_owned()))?;
        let parsed =
            PasswordHash::new(&user.phc).map_err(|_| UserError::Damaged(name.to_owned()))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok.then_some(user))
    }
}

fn check_name(name: &str) -> Result<(), UserError> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "a user name has 1 to {MAX_NAME} characters of [A-Za-z0-9._@-]"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_only_for_its_user_and_is_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let users = Users::open(&db).unwrap();
        assert!(users.is_empty());
        users
            .add("ops", "correct horse", Role::Viewer, Some("EET".into()))
            .unwrap();
        let user = users.verify("ops", "correct horse").unwrap().unwrap();
        assert_eq!(user.role, Role::Viewer);
        assert_eq!(user.scope_owner.as_deref(), Some("EET"));
        assert!(user.phc.starts_with("$argon2id$"), "{}", user.phc);
        assert!(users.verify("ops", "wrong").unwrap().is_none());
        assert!(users.verify("nobody", "correct horse").unwrap().is_none());
        assert!(users.add("bad name", "x", Role::Owner, None).is_err());
        assert!(users.add("ok", "", Role::Owner, None).is_err());
        let raw = db.open_tree("users").unwrap().get("ops").unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("correct horse"));
        assert!(users.remove("ops").unwrap());
        assert!(users.verify("ops", "correct horse").unwrap().is_none());
    }
}
