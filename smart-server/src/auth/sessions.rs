//! Login sessions of the page: a random id in an `HttpOnly; SameSite=Strict` cookie, kept in memory by
//! its SHA-256 (a restart logs everyone out; nothing secret is stored).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::Principal;
use super::tokens::{TokenError, random_secret};

/// The cookie's name.
pub(crate) const COOKIE: &str = "smartos_session";
/// How long a session lasts after its login.
pub(crate) const SESSION_TTL: Duration = Duration::from_hours(12);
/// Most sessions at once; beyond, the oldest is ended.
const MAX_SESSIONS: usize = 10_000;

/// Live sessions by the SHA-256 of their id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session for `principal`: its id, for the cookie.
    pub(crate) fn start(&self, principal: Principal) -> Result<String, TokenError> {
        let id = random_secret()?;
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_SESSIONS {
                map.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
            }
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
            map.insert(key(&id), (principal, Instant::now()));
        }
        Ok(id)
    }

    /// The principal of a live session.
    pub(crate) fn get(&self, id: &str) -> Option<Principal> {
        let mut map = self.map.lock().ok()?;
        let k = key(id);
        match map.get(&k) {
            Some((principal, at)) if at.elapsed() < SESSION_TTL => Some(principal.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// End one session.
    pub(crate) fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&key(id));
        }
    }

    /// End every session of user `name` (changed or removed).
    pub(crate) fn end_user(&self, name: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, (p, _)| p.name != name);
        }
    }
}

/// The session id in a `Cookie` header.
pub(crate) fn from_cookie_header(header: &[u8]) -> Option<&str> {
    std::str::from_utf8(header)
        .ok()?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_session_lives_until_ended_and_its_id_is_read_from_the_cookie() {
        let sessions = Sessions::default();
        let who = Principal {
            name: "ops".into(),
            role: Role::Viewer,
            scope_owner: None,
        };
        let id = sessions.start(who.clone()).unwrap();
        assert_eq!(sessions.get(&id).unwrap().name, "ops");
        assert!(sessions.get("nope").is_none());
        let header = format!("theme=dark; {COOKIE}={id}; x=y");
        assert_eq!(from_cookie_header(header.as_bytes()), Some(id.as_str()));
        assert_eq!(from_cookie_header(b"theme=dark"), None);
        sessions.end_user("ops");
        assert!(sessions.get(&id).is_none());
        let id = sessions.start(who).unwrap();
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }
}
