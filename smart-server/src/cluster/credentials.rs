//! Credentials shared by every instance (`--redis`): device tokens and users live in Redis, and each
//! instance keeps a copy in its own store that follows them, so a device or a person is checked
//! without a round trip and keeps being let in while Redis is away.
//!
//! - A change (token issued or revoked, user added, changed or removed) made on any instance goes
//!   to Redis first, in one `MULTI`: the hash `smart:tokens` (serial → the token's hash, creation
//!   time and owner; never the token) or `smart:users` (name → role, scope, argon2id hash), and an
//!   entry on the stream `smart:credentials` naming what changed. Only then is it made on the
//!   instance itself; while Redis cannot be reached, changes are refused (503) and nothing changes.
//! - Every instance reads that stream (blocking reads on its own connection) and copies what each
//!   entry names from the hash: a token revoked or replaced on any instance ends its device's
//!   connections on every one; a user changed or removed loses its remembered logins.
//! - On every (re)connect an instance makes its copy exactly Redis's (what only it had is dropped:
//!   revoked while it was away). The first instance to find no credentials marker in Redis seeds
//!   the hashes with its own credentials, so a single instance that joins a cluster keeps its
//!   devices' tokens.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, info, warn};

use super::Link;
use super::follow::{self, missed};
use crate::auth::{Auth, Change, Share, Snapshot, StoredToken, User};
use crate::metrics::Metrics;

/// Serial → the JSON of a [`StoredToken`].
pub(crate) const TOKENS: &str = "smart:tokens";
/// User name → the JSON of a [`User`].
pub(crate) const USERS: &str = "smart:users";
/// One entry per change: `i` the instance, `k` `t` (token), `u` (user) or `all`, `n` the serial or name.
pub(crate) const STREAM: &str = "smart:credentials";
/// Set once the hashes hold the cluster's credentials (by the instance that seeded them).
pub(crate) const SEEDED: &str = "smart:credentials:seeded";
/// Entries the stream keeps (approximately): changes are rare; an instance further behind reads
/// the hashes again.
const STREAM_MAX_LEN: u64 = 10_000;
/// Entries one read takes.
const COUNT: usize = 200;

/// The instance's side of the shared credentials: changes go through it to Redis, and its thread
/// copies the others' changes.
#[derive(Debug)]
pub(crate) struct Credentials {
    link: Arc<Link>,
    /// Whether the stream is being read (`/healthz`).
    pub(crate) following: AtomicBool,
}

impl Credentials {
    pub(crate) fn new(link: Arc<Link>) -> Credentials {
        Credentials {
            link,
            following: AtomicBool::new(false),
        }
    }

    /// Follow the cluster's credentials until the process ends.
    pub(crate) fn run(&self, auth: &Auth, metrics: &Metrics) {
        super::reconnecting(
            || self.link.connect(),
            &self.following,
            &metrics.cluster_credential_errors,
            |conn| {
                let mut position = self.load(conn, auth, metrics)?;
                self.following.store(true, Ordering::Relaxed);
                loop {
                    if read(conn, &mut position, auth, metrics)? {
                        Metrics::inc(&metrics.cluster_credential_resyncs);
                        position = self.load(conn, auth, metrics)?;
                    }
                }
            },
            |e, news| {
                if news {
                    warn!(%e, redis = %self.link.redacted, "cannot read the cluster's credentials; the copy here is kept until Redis is back");
                } else {
                    debug!(%e, "following the credentials failed again");
                }
            },
        )
    }

    /// Seed the cluster's credentials if nobody has, note the stream's position, then make the
    /// copy here exactly Redis's. Returns the position.
    fn load(
        &self,
        conn: &mut redis::Connection,
        auth: &Auth,
        metrics: &Metrics,
    ) -> redis::RedisResult<String> {
        self.seed(conn, auth)?;
        let position = follow::last_entry_id(conn, STREAM)?;
        let _changing = auth.changing();
        let (tokens, users): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(TOKENS)
            .cmd("HGETALL")
            .arg(USERS)
            .query(conn)?;
        let mut snapshot = Snapshot::default();
        (snapshot.tokens, snapshot.unreadable_tokens) = parsed::<StoredToken>(tokens, "token");
        (snapshot.users, snapshot.unreadable_users) = parsed::<User>(users, "user");
        match auth.sync(&snapshot) {
            Ok(synced) => {
                let changed = synced.tokens_set
                    + synced.tokens_dropped
                    + synced.users_set
                    + synced.users_dropped;
                metrics
                    .cluster_credentials_applied
                    .fetch_add(changed as u64, Ordering::Relaxed);
                if synced.tokens_dropped + synced.users_dropped > 0 {
                    warn!(
                        tokens = synced.tokens_dropped,
                        users = synced.users_dropped,
                        "credentials only this instance had were dropped: the cluster's are in Redis"
                    );
                }
                info!(
                    tokens = snapshot.tokens.len(),
                    users = snapshot.users.len(),
                    set_here = synced.tokens_set + synced.users_set,
                    from = %position,
                    "loaded the cluster's credentials from Redis"
                );
            }
            Err(e) => {
                Metrics::inc(&metrics.cluster_credential_errors);
                warn!(%e, "cannot copy the cluster's credentials here");
            }
        }
        Ok(position)
    }

    /// If the cluster has no credentials yet, make this instance's its first ones.
    fn seed(&self, conn: &mut redis::Connection, auth: &Auth) -> redis::RedisResult<()> {
        let first: bool = redis::cmd("SET")
            .arg(SEEDED)
            .arg(&*self.link.instance)
            .arg("NX")
            .query::<Option<String>>(conn)?
            .is_some();
        if !first {
            return Ok(());
        }
        let Snapshot { tokens, users, .. } = match auth.snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Not seeded after all: the next instance (or this one's next start) seeds.
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(SEEDED).query(conn);
                warn!(%e, "cannot read this instance's credentials to seed the cluster's");
                return Ok(());
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (serial, stored) in &tokens {
            pipe.cmd("HSETNX")
                .arg(TOKENS)
                .arg(serial)
                .arg(to_json(stored))
                .ignore();
        }
        for (name, user) in &users {
            pipe.cmd("HSETNX")
                .arg(USERS)
                .arg(name)
                .arg(to_json(user))
                .ignore();
        }
        self.entry(&mut pipe, "all", "");
        pipe.query::<()>(conn)?;
        info!(
            tokens = tokens.len(),
            users = users.len(),
            "seeded the cluster's credentials with this instance's"
        );
        Ok(())
    }

    /// Add the stream entry naming a change to `pipe`.
    fn entry(&self, pipe: &mut redis::Pipeline, kind: &str, name: &str) {
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg("i")
            .arg(&*self.link.instance)
            .arg("k")
            .arg(kind)
            .arg("n")
            .arg(name)
            .ignore();
    }
}

impl Share for Credentials {
    fn share(&self, changes: &[Change<'_>]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in changes {
            match *change {
                Change::Token {
                    serial,
                    stored: Some(stored),
                } => {
                    pipe.cmd("HSET")
                        .arg(TOKENS)
                        .arg(serial)
                        .arg(to_json(stored))
                        .ignore();
                    self.entry(&mut pipe, "t", serial);
                }
                Change::Token {
                    serial,
                    stored: None,
                } => {
                    pipe.cmd("HDEL").arg(TOKENS).arg(serial).ignore();
                    self.entry(&mut pipe, "t", serial);
                }
                Change::User {
                    name,
                    user: Some(user),
                } => {
                    pipe.cmd("HSET")
                        .arg(USERS)
                        .arg(name)
                        .arg(to_json(user))
                        .ignore();
                    self.entry(&mut pipe, "u", name);
                }
                Change::User { name, user: None } => {
                    pipe.cmd("HDEL").arg(USERS).arg(name).ignore();
                    self.entry(&mut pipe, "u", name);
                }
            }
        }
        self.link
            .connect()
            .and_then(|mut conn| pipe.query::<()>(&mut conn))
            .map_err(|e| format!("Redis at {}: {e}", self.link.redacted))
    }
}

/// One blocking read from `position`: copy what each entry names. Returns whether entries after
/// the position had been trimmed (the caller loads everything again).
fn read(
    conn: &mut redis::Connection,
    position: &mut String,
    auth: &Auth,
    metrics: &Metrics,
) -> redis::RedisResult<bool> {
    let (first, entries) = follow::read_after(conn, STREAM, position, COUNT, follow::BLOCK)?;
    if missed(&first, position) {
        return Ok(true);
    }
    for (id, fields) in entries {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match (field("k"), field("n")) {
            (Some("t"), Some(serial)) => {
                let _changing = auth.changing();
                let json: Option<String> =
                    redis::cmd("HGET").arg(TOKENS).arg(serial).query(conn)?;
                let stored = json.and_then(|j| parse::<StoredToken>(serial, &j, "token"));
                match auth.apply_token(serial, stored.as_ref()) {
                    Ok(true) => Metrics::inc(&metrics.cluster_credentials_applied),
                    Ok(false) => {}
                    Err(e) => {
                        Metrics::inc(&metrics.cluster_credential_errors);
                        warn!(%e, serial, "cannot copy a token change here");
                    }
                }
            }
            (Some("u"), Some(name)) => {
                let _changing = auth.changing();
                let json: Option<String> = redis::cmd("HGET").arg(USERS).arg(name).query(conn)?;
                let user = json.and_then(|j| parse::<User>(name, &j, "user"));
                match auth.apply_user(name, user.as_ref()) {
                    Ok(true) => Metrics::inc(&metrics.cluster_credentials_applied),
                    Ok(false) => {}
                    Err(e) => {
                        Metrics::inc(&metrics.cluster_credential_errors);
                        warn!(%e, user = name, "cannot copy a user change here");
                    }
                }
            }
            (Some("all"), _) => {
                *position = id;
                return Ok(true);
            }
            _ => warn!(id, "unreadable credentials stream entry; ignored"),
        }
        *position = id;
    }
    Ok(false)
}

fn to_json(value: &impl serde::Serialize) -> String {
    // Plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// One shared entry, or `None` (logged) if it is unreadable.
fn parse<T: serde::de::DeserializeOwned>(key: &str, json: &str, what: &str) -> Option<T> {
    match serde_json::from_str(json) {
        Ok(value) => Some(value),
        Err(e) => {
            warn!(%e, key, "unreadable shared {what}; ignored");
            None
        }
    }
}

/// A whole hash's readable entries, and the keys of the others.
fn parsed<T: serde::de::DeserializeOwned>(
    hash: HashMap<String, String>,
    what: &str,
) -> (HashMap<String, T>, HashSet<String>) {
    let mut unreadable = HashSet::new();
    let readable = hash
        .into_iter()
        .filter_map(|(key, json)| {
            let value = parse(&key, &json, what);
            if value.is_none() {
                unreadable.insert(key.clone());
            }
            Some((key, value?))
        })
        .collect();
    (readable, unreadable)
}
