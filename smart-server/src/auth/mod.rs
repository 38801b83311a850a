//! Who may connect: device tokens on `/update/`, user credentials everywhere else but `/healthz`.
//!
//! With `--auth off` everything is open, as in the original. With `--auth required`:
//! - a device presents its token (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for devices that
//!   cannot set headers) on the `/update/` upgrade; the connection may then write only the token's
//!   serial. Missing or wrong: 401 before the upgrade.
//! - people and scripts present HTTP Basic credentials of a user (`user add`); the browser asks for
//!   them. Verified credentials are remembered for a while (argon2id costs tens of milliseconds by
//!   design), and failures are rate-limited per user and address (429).
//!
//! Secrets never reach logs: neither tokens, passwords, nor the query strings that may carry them.

mod changes;
mod sessions;
mod tokens;
mod users;

pub(crate) use changes::{Change, ChangeError, Share, Snapshot, clustered, mark_clustered};
pub(crate) use sessions::{COOKIE, SESSION_TTL};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::ValueEnum;
use sha2::{Digest as _, Sha256};
use smart_proto::Serial;
use subtle::ConstantTimeEq as _;
use tracing::{error, info};

pub(crate) use tokens::{StoredToken, Tokens};
pub use users::Role;
pub(crate) use users::{User, Users};

/// Whether connections must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anyone who reaches the server may write any device and read the fleet.
    Off,
    /// Devices need a token, people a user name and password.
    Required,
}

/// Why a request was refused (the label of `smart_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No credentials.
    Missing,
    /// Credentials that match no token or user.
    Invalid,
    /// Too many failures for this user and address: 429.
    RateLimited,
    /// The store could not be read: 503.
    Unavailable,
}

impl Denied {
    pub(crate) const ALL: [Denied; 4] = [
        Denied::Missing,
        Denied::Invalid,
        Denied::RateLimited,
        Denied::Unavailable,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::RateLimited => "rate_limited",
            Denied::Unavailable => "unavailable",
        }
    }
}

/// A person who authenticated.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub name: String,
    pub role: Role,
    pub scope_owner: Option<String>,
}

/// The file in the data dir through which the command line finds a running server.
pub(crate) const ADMIN_FILE: &str = "admin.json";

/// How long verified credentials are remembered.
const REMEMBER: Duration = Duration::from_mins(5);
/// Most remembered credentials (then the memory is cleared).
const REMEMBER_MAX: usize = 4096;
/// Failed attempts per user and address within [`FAILURE_WINDOW`] before 429.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_mins(1);
/// Failed attempts from one address, whatever the user names, within [`FAILURE_WINDOW`] before 429.
const MAX_FAILURES_PER_ADDRESS: u32 = 30;
/// Password checks running at once, and how long a login waits for one before 503.
const HASHING_AT_ONCE: usize = 4;
const HASHING_WAIT: Duration = Duration::from_secs(5);
/// Most (user, address) pairs tracked for failures (then the oldest window is forgotten wholesale).
const FAILURES_MAX: usize = 65_536;

/// The credential checks of one server.
#[derive(Debug)]
pub(crate) struct Auth {
    mode: AuthMode,
    tokens: Tokens,
    users: Users,
    /// SHA-256 of `name:password` → the principal and when it was verified.
    remembered: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    failures: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
    /// Bounds the password checks running at once (memory and CPU).
    hashing: tokio::sync::Semaphore,
    /// Per serial with a live token-bound connection: set when the token is revoked or replaced,
    /// which ends those connections.
    live: Mutex<HashMap<Serial, Arc<Revocation>>>,
    /// Logins of the page (cookie sessions).
    sessions: sessions::Sessions,
    /// Lets the command line act through this server (loopback only): kept in the data dir, 0600.
    admin_secret: String,
    /// Where credential changes go first (`--redis`: the cluster), once set.
    share: OnceLock<Arc<dyn Share>>,
    /// Held while a change is shared and made here, and while the cluster's are copied here, so
    /// that the copy ends as the cluster has it whatever the interleaving.
    changing: Mutex<()>,
}

/// What a device connection may write: one serial, for as long as its token stands.
#[derive(Debug)]
pub(crate) struct Grant {
    pub serial: Serial,
    /// The owner the token assigns to its device (`token issue --owner`), if any.
    pub owner: Option<Arc<str>>,
    /// Set once the token is revoked or replaced.
    pub revoked: Revoked,
}

/// One serial's token revoked or replaced, shared by every live connection on it. (A tokio `watch`
/// channel did the same in ~390 bytes per device; this is ~70: it counts for every device with
/// `--auth required`.)
#[derive(Debug, Default)]
struct Revocation {
    revoked: AtomicBool,
    notify: tokio::sync::Notify,
}

/// A connection's view of its token's [`Revocation`] (8 bytes).
#[derive(Debug, Clone)]
pub(crate) struct Revoked(Arc<Revocation>);

impl Revoked {
    /// Whether the token was revoked or replaced.
    pub(crate) fn is_revoked(&self) -> bool {
        self.0.revoked.load(Ordering::Acquire)
    }

    /// Resolves once the token is revoked or replaced (at once if it was).
    pub(crate) async fn wait(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a revocation in between still wakes it.
        notified.as_mut().enable();
        if self.is_revoked() {
            return;
        }
        notified.await;
    }
}

impl Revocation {
    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

impl Auth {
    pub(crate) fn new(mode: AuthMode, db: &sled::Db) -> anyhow::Result<Auth> {
        let users = Users::open(db)?;
        if mode == AuthMode::Required && users.is_empty() {
            info!(
                "auth required and no user yet: dashboards and the API refuse everyone until one is added (`smart-server user add NAME --role owner`)"
            );
        }
        Ok(Auth {
            mode,
            tokens: Tokens::open(db)?,
            users,
            remembered: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            live: Mutex::new(HashMap::new()),
            sessions: sessions::Sessions::default(),
            admin_secret: tokens::random_secret()?,
            share: OnceLock::new(),
            changing: Mutex::new(()),
        })
    }

    /// The serial a device connection may write, from the upgrade request's headers and query:
    /// `Ok(None)` when auth is off (any serial).
    pub(crate) fn device(
        &self,
        authorization: Option<&[u8]>,
        query: Option<&str>,
    ) -> Result<Option<Grant>, Denied> {
        if self.mode == AuthMode::Off {
            return Ok(None);
        }
        let token = authorization
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .map(str::to_owned)
            .or_else(|| query.and_then(token_in_query));
        let Some(token) = token else {
            return Err(Denied::Missing);
        };
        match self.tokens.verify(&token) {
            Ok(Some(tokens::Verified { serial, owner })) => {
                let Ok(mut live) = self.live.lock() else {
                    return Err(Denied::Unavailable);
                };
                // Forget serials whose connections are all gone.
                if live.len() > 1024 && live.len().is_power_of_two() {
                    live.retain(|_, revocation| Arc::strong_count(revocation) > 1);
                }
                let revoked = Revoked(Arc::clone(live.entry(serial.clone()).or_default()));
                // A revoke between the lookup and the subscription would be missed: look again.
                match self.tokens.verify(&token) {
                    Ok(Some(_)) => Ok(Some(Grant {
                        serial,
                        owner: owner.map(Arc::from),
                        revoked,
                    })),
                    Ok(None) => Err(Denied::Invalid),
                    Err(_) => Err(Denied::Unavailable),
                }
            }
            Ok(None) => Err(Denied::Invalid),
            Err(e) => {
                error!(%e, "device token lookup failed");
                Err(Denied::Unavailable)
            }
        }
    }

    /// The person behind an `Authorization: Basic` header: `Ok(None)` when auth is off.
    /// A session cookie is tried first, then Basic credentials.
    pub(crate) async fn person(
        self: &Arc<Self>,
        authorization: Option<&[u8]>,
        cookie: Option<&[u8]>,
        from: IpAddr,
    ) -> Result<Option<Principal>, Denied> {
        if self.mode == AuthMode::Off {
            return Ok(None);
        }
        if let Some(principal) = cookie
            .and_then(sessions::from_cookie_header)
            .and_then(|id| self.sessions.get(id))
        {
            return Ok(Some(principal));
        }
        self.login(authorization, from).await.map(Some)
    }

    /// Log in with a name and password (the page's form): a new session id for the cookie.
    pub(crate) async fn start_session(
        self: &Arc<Self>,
        name: String,
        password: String,
        from: IpAddr,
    ) -> Result<(Principal, String), Denied> {
        let principal = self.check_password(name, password, from).await?;
        match self.sessions.start(principal.clone()) {
            Ok(id) => Ok((principal, id)),
            Err(e) => {
                error!(%e, "cannot start a session");
                Err(Denied::Unavailable)
            }
        }
    }

    /// End the session named in a `Cookie` header, if any.
    pub(crate) fn end_session(&self, cookie: Option<&[u8]>) {
        if let Some(id) = cookie.and_then(sessions::from_cookie_header) {
            self.sessions.end(id);
        }
    }

    /// The user behind an `Authorization: Basic` header, whatever the mode. Runs argon2id on a
    /// blocking thread unless the credentials were verified recently.
    pub(crate) async fn login(
        self: &Arc<Self>,
        authorization: Option<&[u8]>,
        from: IpAddr,
    ) -> Result<Principal, Denied> {
        let Some((name, password)) = authorization.and_then(basic_credentials) else {
            return Err(Denied::Missing);
        };
        self.check_password(name, password, from).await
    }

    /// Verify `name`'s `password` (remembered, rate-limited, argon2id off the async workers).
    async fn check_password(
        self: &Arc<Self>,
        name: String,
        password: String,
        from: IpAddr,
    ) -> Result<Principal, Denied> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(principal) = self.remembered(&key) {
            return Ok(principal);
        }
        if self.failed_too_often(&name, from) {
            return Err(Denied::RateLimited);
        }
        // argon2id takes ~19 MiB and tens of milliseconds: a few at a time, whoever asks.
        let Ok(Ok(_permit)) = tokio::time::timeout(HASHING_WAIT, self.hashing.acquire()).await
        else {
            return Err(Denied::Unavailable);
        };
        let auth = std::sync::Arc::clone(self);
        let who = name.clone();
        let verified =
            tokio::task::spawn_blocking(move || auth.users.verify(&who, &password)).await;
        match verified {
            Ok(Ok(Some(user))) => {
                let principal = Principal {
                    name,
                    role: user.role,
                    scope_owner: user.scope_owner,
                };
                self.remember(key, &principal);
                Ok(principal)
            }
            Ok(Ok(None)) => {
                self.count_failure(name, from);
                Err(Denied::Invalid)
            }
            Ok(Err(e)) => {
                error!(%e, "user lookup failed");
                Err(Denied::Unavailable)
            }
            Err(e) => {
                error!(%e, "password check task failed");
                Err(Denied::Unavailable)
            }
        }
    }

    /// Whether `authorization` is `Bearer ADMIN_SECRET` (compared in constant time).
    pub(crate) fn is_admin_secret(&self, authorization: Option<&[u8]>) -> bool {
        authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .is_some_and(|given| bool::from(given.ct_eq(self.admin_secret.as_bytes())))
    }

    /// Write `admin.json` (`{"addr": …, "secret": …}`, permissions 0600) into `dir`, so that the
    /// command line can provision through this server: `addr` is a loopback address that reaches
    /// it, or `null` when it listens on no loopback address.
    pub(crate) fn write_admin_file(&self, dir: &Path, listen: SocketAddr) -> std::io::Result<()> {
        let addr = match listen.ip() {
            ip if ip.is_loopback() => Some(listen),
            IpAddr::V4(ip) if ip.is_unspecified() => {
                Some(SocketAddr::from(([127, 0, 0, 1], listen.port())))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => Some(SocketAddr::from((
                std::net::Ipv6Addr::LOCALHOST,
                listen.port(),
            ))),
            _ => None,
        };
        let json = serde_json::json!({ "addr": addr, "secret": self.admin_secret });
        let tmp = dir.join("admin.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        std::io::Write::write_all(&mut file, json.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(ADMIN_FILE))
    }

    /// The device tokens (for the admin API and the command line).
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The users (for the admin API).
    pub(crate) fn users(&self) -> &Users {
        &self.users
    }

    /// End the live connections of `serial` (its token was revoked or replaced).
    pub(crate) fn disconnect(&self, serial: &str) {
        if let Ok(mut live) = self.live.lock()
            && let Some(revocation) = live.remove(serial)
        {
            revocation.revoke();
        }
    }

    /// Forget remembered logins and end the sessions of `name` (changed or removed).
    pub(crate) fn forget_user(&self, name: &str) {
        if let Ok(mut map) = self.remembered.lock() {
            map.retain(|_, (p, _)| p.name != name);
        }
        self.sessions.end_user(name);
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<Principal> {
        let map = self.remembered.lock().ok()?;
        let (principal, at) = map.get(key)?;
        (at.elapsed() < REMEMBER).then(|| principal.clone())
    }

    fn remember(&self, key: [u8; 32], principal: &Principal) {
        if let Ok(mut map) = self.remembered.lock() {
            if map.len() >= REMEMBER_MAX {
                map.clear();
            }
            map.insert(key, (principal.clone(), Instant::now()));
        }
    }

    /// Too many failures for this user from this address, or for any users from this address
    /// (an attacker trying many names).
    fn failed_too_often(&self, name: &str, from: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else {
            return true;
        };
        let over = |key: &(String, IpAddr), max: u32| {
            map.get(key)
                .is_some_and(|(n, since)| *n >= max && since.elapsed() < FAILURE_WINDOW)
        };
        over(&(name.to_owned(), from), MAX_FAILURES)
            || over(&(String::new(), from), MAX_FAILURES_PER_ADDRESS)
    }

    fn count_failure(&self, name: String, from: IpAddr) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= FAILURES_MAX {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if map.len() >= FAILURES_MAX {
                map.clear();
            }
        }
        // The empty name (not a valid user name) counts every failure from the address.
        for key in [(name, from), (String::new(), from)] {
            let entry = map.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FAILURE_WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }
}

/// `token=…` in a query string (percent-decoded).
fn token_in_query(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// `Basic base64(name:password)`.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Revoking a token ends every live connection on its serial — one waiting already, one that
    /// checks later — and a connection on the new token is not revoked by the old one's end.
    #[tokio::test]
    async fn a_revocation_reaches_every_connection_of_the_serial_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let auth = Auth::new(AuthMode::Required, &db).unwrap();
        let serial = Serial::new("0001").unwrap();
        let token = auth.tokens.issue(&serial, None).unwrap();
        let bearer = format!("Bearer {token}");
        let connect = || auth.device(Some(bearer.as_bytes()), None).unwrap().unwrap();
        let (first, second) = (connect(), connect());
        assert!(!first.revoked.is_revoked());
        let waiting = tokio::spawn({
            let revoked = first.revoked.clone();
            async move { revoked.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        auth.disconnect("0001");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(second.revoked.is_revoked());
        // Already revoked: resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), second.revoked.wait())
            .await
            .unwrap();
        // The serial's next connection gets a new, live revocation.
        let third = connect();
        assert!(!third.revoked.is_revoked());
        assert!(auth.live.lock().unwrap().contains_key("0001"));
    }

    #[test]
    fn credentials_are_read_from_the_usual_places() {
        assert_eq!(
            basic_credentials(b"Basic b3BzOnNlY3JldDpwYXJ0"),
            Some(("ops".into(), "secret:part".into()))
        );
        assert_eq!(basic_credentials(b"Bearer x"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(
            token_in_query("a=1&token=smartos_x%2By").as_deref(),
            Some("smartos_x+y")
        );
        assert_eq!(token_in_query("a=1"), None);
    }

    #[tokio::test]
    async fn failures_are_rate_limited_per_user_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let auth = std::sync::Arc::new(Auth::new(AuthMode::Required, &db).unwrap());
        auth.users.add("ops", "pw", Role::Viewer, None).unwrap();
        let basic =
            |user: &str, pw: &str| format!("Basic {}", STANDARD.encode(format!("{user}:{pw}")));
        let here: IpAddr = [127, 0, 0, 1].into();
        let there: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES {
            let r = auth
                .person(Some(basic("ops", "no").as_bytes()), None, here)
                .await;
            assert_eq!(r.unwrap_err(), Denied::Invalid);
        }
        let r = auth
            .person(Some(basic("ops", "pw").as_bytes()), None, here)
            .await;
        assert_eq!(
            r.unwrap_err(),
            Denied::RateLimited,
            "even the right password"
        );
        let ok = auth
            .person(Some(basic("ops", "pw").as_bytes()), None, there)
            .await;
        assert_eq!(ok.unwrap().unwrap().role, Role::Viewer, "another address");
        // Remembered now: no argon2, no rate limit.
        let again = auth
            .person(Some(basic("ops", "pw").as_bytes()), None, here)
            .await;
        assert_eq!(again.unwrap().unwrap().name, "ops");
        assert_eq!(
            auth.person(None, None, here).await.unwrap_err(),
            Denied::Missing
        );
    }
}
