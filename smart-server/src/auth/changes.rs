//! Changing credentials: device tokens issued and revoked, users added, changed and removed.
//!
//! Alone, an instance changes its own store. With a [`Share`] (`--redis`: the cluster's credentials
//! live in Redis) a change goes to the cluster first and is made here only once the cluster has it,
//! so a change that cannot be shared changes nothing anywhere. The other instances' changes arrive
//! through [`Auth::apply_token`], [`Auth::apply_user`] and [`Auth::sync`]; whatever path a change
//! takes, a token revoked or replaced ends its device's connections here, and a user changed or
//! removed loses the logins remembered here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard, PoisonError};

use smart_proto::Serial;

use super::Auth;
use super::tokens::{Put, StoredToken, TokenError, Tokens};
use super::users::{Role, User, UserError, Users};

/// Where a store notes that its credentials follow a cluster's: tree, key.
const CLUSTERED: (&str, &str) = ("cluster", "credentials");

/// Note in `db` whether its credentials follow a cluster's (`redis`: the URL, without password),
/// so that the command line does not change them behind the cluster's back while no server runs.
pub(crate) fn mark_clustered(db: &sled::Db, redis: Option<&str>) -> sled::Result<()> {
    let tree = db.open_tree(CLUSTERED.0)?;
    match redis {
        Some(url) => tree.insert(CLUSTERED.1, url)?,
        None => tree.remove(CLUSTERED.1)?,
    };
    tree.flush()?;
    Ok(())
}

/// The Redis whose credentials `db`'s follow, if its server last ran with `--redis`.
pub(crate) fn clustered(db: &sled::Db) -> sled::Result<Option<String>> {
    Ok(db
        .open_tree(CLUSTERED.0)?
        .get(CLUSTERED.1)?
        .map(|url| String::from_utf8_lossy(&url).into_owned()))
}

/// One credential change, as the cluster shares it: the new value, or `None` for a removal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    Token {
        serial: &'a str,
        stored: Option<&'a StoredToken>,
    },
    User {
        name: &'a str,
        user: Option<&'a User>,
    },
}

/// Where credential changes go before they are made here (the cluster, `--redis`).
pub(crate) trait Share: Send + Sync + std::fmt::Debug {
    /// Make `changes` the cluster's, all or none. `Err`: the reason none was.
    fn share(&self, changes: &[Change<'_>]) -> Result<(), String>;
}

/// Why a credential change was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    /// The request is wrong (a bad owner, user name or password): 400.
    #[error("{0}")]
    Invalid(String),
    /// This instance's store failed: 500.
    #[error("the store failed: {0}")]
    Store(String),
    /// The cluster could not take the change, so nothing changed: 503.
    #[error("the cluster's credentials cannot be changed now (nothing was changed): {0}")]
    Unshared(String),
}

impl From<TokenError> for ChangeError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::BadOwner(_) => ChangeError::Invalid(e.to_string()),
            e => ChangeError::Store(e.to_string()),
        }
    }
}

impl From<UserError> for ChangeError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(why) => ChangeError::Invalid(why),
            e => ChangeError::Store(e.to_string()),
        }
    }
}

/// The cluster's credentials, all of them, as read at once.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub tokens: HashMap<String, StoredToken>,
    pub users: HashMap<String, User>,
    /// Entries that could not be read: what this instance has of them is kept.
    pub unreadable_tokens: HashSet<String>,
    pub unreadable_users: HashSet<String>,
}

/// What [`Auth::sync`] changed here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Tokens added or replaced.
    pub tokens_set: usize,
    /// Tokens this instance had and the cluster has not.
    pub tokens_dropped: usize,
    pub users_set: usize,
    pub users_dropped: usize,
}

impl Auth {
    /// Credential changes go to `share` first from now on (set once, at start).
    pub(crate) fn share_with(&self, share: Arc<dyn Share>) {
        let _ = self.share.set(share);
    }

    /// Held while credentials change here: by the changes below, and by whoever copies the
    /// cluster's (read the cluster's value and apply it under it).
    pub(crate) fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn share(&self, changes: &[Change<'_>]) -> Result<(), ChangeError> {
        match self.share.get() {
            Some(share) => share.share(changes).map_err(ChangeError::Unshared),
            None => Ok(()),
        }
    }

    /// New tokens for `serials` (each replacing the serial's old one), with `owner` for their
    /// devices. The old tokens' connections end.
    pub(crate) fn issue_tokens(
        &self,
        serials: &[Serial],
        owner: Option<&str>,
    ) -> Result<Vec<String>, ChangeError> {
        let _changing = self.changing();
        let prepared = serials
            .iter()
            .map(|_| Tokens::prepare(owner))
            .collect::<Result<Vec<_>, _>>()?;
        let changes: Vec<Change<'_>> = serials
            .iter()
            .zip(&prepared)
            .map(|(serial, (_, stored))| Change::Token {
                serial: serial.as_str(),
                stored: Some(stored),
            })
            .collect();
        self.share(&changes)?;
        for (serial, (_, stored)) in serials.iter().zip(&prepared) {
            self.tokens.put(serial.as_str(), stored)?;
        }
        self.tokens.flush()?;
        for serial in serials {
            self.disconnect(serial.as_str());
        }
        Ok(prepared.into_iter().map(|(token, _)| token).collect())
    }

    /// Revoke `serial`'s token: its connections end. `false` if it had none.
    pub(crate) fn revoke_token(&self, serial: &str) -> Result<bool, ChangeError> {
        let _changing = self.changing();
        if self.tokens.stored(serial)?.is_none() {
            return Ok(false);
        }
        self.share(&[Change::Token {
            serial,
            stored: None,
        }])?;
        self.tokens.remove(serial)?;
        self.tokens.flush()?;
        self.disconnect(serial);
        Ok(true)
    }

    /// Add or replace a user (the password stored only as its argon2id hash; slow by design, call
    /// off the async workers). Its remembered logins and sessions end.
    pub(crate) fn put_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
        scope_owner: Option<String>,
    ) -> Result<(), ChangeError> {
        let user = Users::prepare(name, password, role, scope_owner)?;
        let _changing = self.changing();
        self.share(&[Change::User {
            name,
            user: Some(&user),
        }])?;
        self.users.put(name, &user)?;
        self.users.flush()?;
        self.forget_user(name);
        Ok(())
    }

    /// Remove a user: its remembered logins and sessions end. `false` if there was none.
    pub(crate) fn remove_user(&self, name: &str) -> Result<bool, ChangeError> {
        let _changing = self.changing();
        if self.users.get(name)?.is_none() {
            return Ok(false);
        }
        self.share(&[Change::User { name, user: None }])?;
        self.users.forget(name)?;
        self.users.flush()?;
        self.forget_user(name);
        Ok(true)
    }

    /// Another instance changed `serial`'s token (`None`: revoked). Returns whether anything
    /// changed here. Call under [`Auth::changing`].
    pub(crate) fn apply_token(
        &self,
        serial: &str,
        stored: Option<&StoredToken>,
    ) -> Result<bool, TokenError> {
        let put = match stored {
            Some(stored) => self.tokens.put(serial, stored)?,
            None if self.tokens.remove(serial)? => Put::Replaced,
            None => Put::Same,
        };
        if put != Put::Same {
            self.tokens.flush()?;
        }
        if put == Put::Replaced {
            self.disconnect(serial);
        }
        Ok(put != Put::Same)
    }

    /// Another instance changed user `name` (`None`: removed). Returns whether anything changed
    /// here. Call under [`Auth::changing`].
    pub(crate) fn apply_user(&self, name: &str, user: Option<&User>) -> Result<bool, UserError> {
        let changed = match user {
            Some(user) => self.users.put(name, user)?,
            None => self.users.forget(name)?,
        };
        if changed {
            self.users.flush()?;
            self.forget_user(name);
        }
        Ok(changed)
    }

    /// Make this instance's credentials exactly the cluster's `snapshot`. What only this instance
    /// had is dropped (its connections end, its logins too); what the snapshot could not read is
    /// kept as it is here. Call under [`Auth::changing`].
    pub(crate) fn sync(&self, snapshot: &Snapshot) -> Result<Synced, ChangeError> {
        let mut synced = Synced::default();
        for (serial, _) in self.tokens.all_stored()? {
            let gone = !snapshot.tokens.contains_key(&serial)
                && !snapshot.unreadable_tokens.contains(&serial);
            if gone && self.apply_token(&serial, None)? {
                synced.tokens_dropped += 1;
            }
        }
        for (serial, stored) in &snapshot.tokens {
            if self.apply_token(serial, Some(stored))? {
                synced.tokens_set += 1;
            }
        }
        for (name, _) in self.users.list()? {
            let gone =
                !snapshot.users.contains_key(&name) && !snapshot.unreadable_users.contains(&name);
            if gone && self.apply_user(&name, None)? {
                synced.users_dropped += 1;
            }
        }
        for (name, user) in &snapshot.users {
            if self.apply_user(name, Some(user))? {
                synced.users_set += 1;
            }
        }
        Ok(synced)
    }

    /// Every token and user stored here (what a new cluster starts from).
    pub(crate) fn snapshot(&self) -> Result<Snapshot, ChangeError> {
        Ok(Snapshot {
            tokens: self.tokens.all_stored()?.into_iter().collect(),
            users: self.users.list()?.into_iter().collect(),
            ..Snapshot::default()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::AuthMode;

    /// A cluster that takes changes (keeping what it took) or refuses them all.
    #[derive(Debug, Default)]
    struct Cluster {
        down: bool,
        tokens: Mutex<HashMap<String, StoredToken>>,
        users: Mutex<HashMap<String, User>>,
    }

    impl Share for Cluster {
        fn share(&self, changes: &[Change<'_>]) -> Result<(), String> {
            if self.down {
                return Err("connection refused".to_owned());
            }
            for change in changes {
                match *change {
                    Change::Token { serial, stored } => {
                        let mut tokens = self.tokens.lock().unwrap();
                        match stored {
                            Some(stored) => tokens.insert(serial.to_owned(), stored.clone()),
                            None => tokens.remove(serial),
                        };
                    }
                    Change::User { name, user } => {
                        let mut users = self.users.lock().unwrap();
                        match user {
                            Some(user) => users.insert(name.to_owned(), user.clone()),
                            None => users.remove(name),
                        };
                    }
                }
            }
            Ok(())
        }
    }

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let auth = Auth::new(AuthMode::Required, &db).unwrap();
        (dir, auth)
    }

    fn serial(s: &str) -> Serial {
        Serial::new(s).unwrap()
    }

    /// A change the cluster refuses changes nothing here: the old token still works, nobody is
    /// disconnected, no user appears.
    #[test]
    fn a_change_the_cluster_refuses_changes_nothing() {
        let (_dir, auth) = auth();
        let old = auth.issue_tokens(&[serial("0001")], None).unwrap();
        auth.share_with(Arc::new(Cluster {
            down: true,
            ..Cluster::default()
        }));
        let grant = auth
            .device(Some(format!("Bearer {}", old[0]).as_bytes()), None)
            .unwrap()
            .unwrap();
        let refused = auth.issue_tokens(&[serial("0001")], None).unwrap_err();
        assert!(matches!(refused, ChangeError::Unshared(_)), "{refused}");
        assert!(matches!(
            auth.revoke_token("0001").unwrap_err(),
            ChangeError::Unshared(_)
        ));
        assert!(matches!(
            auth.put_user("ops", "pw", Role::Owner, None).unwrap_err(),
            ChangeError::Unshared(_)
        ));
        assert!(auth.tokens.verify(&old[0]).unwrap().is_some());
        assert!(!grant.revoked.is_revoked(), "still connected");
        assert!(auth.users.get("ops").unwrap().is_none());
        // A bad request is refused as such, before the cluster is asked.
        assert!(matches!(
            auth.issue_tokens(&[serial("0002")], Some("")).unwrap_err(),
            ChangeError::Invalid(_)
        ));
    }

    /// Changes reach the cluster as they are made here; a copy of the cluster's made elsewhere
    /// (another instance, `sync`) gives the same credentials, ends the connections of tokens
    /// replaced or revoked, and drops what only the copy had.
    #[test]
    fn the_cluster_s_changes_copied_here_end_replaced_tokens_connections() {
        let (_dir, a) = auth();
        let cluster = Arc::new(Cluster::default());
        a.share_with(Arc::clone(&cluster) as Arc<dyn Share>);
        let tokens = a
            .issue_tokens(&[serial("0001"), serial("0002")], Some("EET"))
            .unwrap();
        a.put_user("ops", "pw", Role::Viewer, None).unwrap();
        assert_eq!(cluster.tokens.lock().unwrap().len(), 2);
        assert_eq!(
            cluster.tokens.lock().unwrap()["0001"].owner.as_deref(),
            Some("EET")
        );
        assert!(cluster.users.lock().unwrap().contains_key("ops"));

        // Instance B, with a credential of its own, copies the cluster's.
        let (_dir_b, b) = auth();
        b.tokens.issue(&serial("0009"), None).unwrap();
        let snapshot = Snapshot {
            tokens: cluster.tokens.lock().unwrap().clone(),
            users: cluster.users.lock().unwrap().clone(),
            ..Snapshot::default()
        };
        let synced = b.sync(&snapshot).unwrap();
        assert_eq!(
            synced,
            Synced {
                tokens_set: 2,
                tokens_dropped: 1,
                users_set: 1,
                users_dropped: 0
            }
        );
        let verified = b.tokens.verify(&tokens[0]).unwrap().unwrap();
        assert_eq!(verified.owner.as_deref(), Some("EET"));
        assert!(b.users.verify("ops", "pw").unwrap().is_some());
        assert_eq!(b.sync(&snapshot).unwrap(), Synced::default(), "idempotent");

        // A device on B; A revokes its token; B copies the change: the connection ends.
        let grant = b
            .device(Some(format!("Bearer {}", tokens[0]).as_bytes()), None)
            .unwrap()
            .unwrap();
        assert!(a.revoke_token("0001").unwrap());
        assert!(!cluster.tokens.lock().unwrap().contains_key("0001"));
        assert!(b.apply_token("0001", None).unwrap());
        assert!(grant.revoked.is_revoked(), "disconnected");
        assert!(b.tokens.verify(&tokens[0]).unwrap().is_none());
        // The same change again changes nothing.
        assert!(!b.apply_token("0001", None).unwrap());
        // A token B cannot read from the cluster is kept as it is.
        let snapshot = Snapshot {
            unreadable_tokens: ["0002".to_owned()].into(),
            ..Snapshot::default()
        };
        let synced = b.sync(&snapshot).unwrap();
        assert_eq!(synced.tokens_dropped, 0);
        assert_eq!(synced.users_dropped, 1);
        assert!(b.tokens.verify(&tokens[1]).unwrap().is_some());
    }
}
