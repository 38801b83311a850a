//! `/api/admin/…`: owner actions over HTTP — device tokens and users. The command line uses it, with
//! the admin secret the server keeps in its data dir (accepted from loopback only), when a running
//! server holds the store; people use it with the HTTP Basic credentials of an owner.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/admin/tokens` | `[{"serial", "created_ms", "last_used_ms", "owner"}]` (never a token) |
//! | `POST /api/admin/tokens/{serial}`, optional body `{"owner"}` | `{"serial", "token"}`: a new token; the old one stops working and its connections close |
//! | `POST /api/admin/tokens` with `{"serials": […], "owner"?}` | `[{"serial", "token"}]` |
//! | `DELETE /api/admin/tokens/{serial}` | `{"serial", "revoked": true}`; the device's connections close |
//! | `GET /api/admin/users` | `[{"name", "role", "scope_owner", "created_ms"}]` |
//! | `PUT /api/admin/users/{name}` with `{"password", "role", "scope_owner"}` | `{"name", "role"}` |
//! | `DELETE /api/admin/users/{name}` | `{"name", "removed": true}` |

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use smart_proto::Serial;
use tracing::info;
use warp::http::{Method, Request, StatusCode, header};

use crate::auth::{Auth, ChangeError, Denied, Role};

/// A status and its JSON body.
pub(crate) type Answer = (StatusCode, Value);

/// Largest request body (a bulk request of ~20,000 serials).
const MAX_BODY: usize = 1 << 20;

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    (status, json!({ "error": message.into() }))
}

/// Answer one `/api/admin/…` request from `remote`.
pub(crate) async fn handle(req: Request<Incoming>, auth: &Arc<Auth>, remote: IpAddr) -> Answer {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let who = if remote.is_loopback() && auth.is_admin_secret(authorization.as_deref()) {
        "command line".to_owned()
    } else {
        match auth.login(authorization.as_deref(), remote).await {
            // Tokens and users are fleet-wide: not for a user limited to one owner's devices.
            Ok(user) if user.scope_owner.is_some() => {
                info!(user = %user.name, "admin request refused: user limited to one owner's devices");
                return error(
                    StatusCode::FORBIDDEN,
                    "owner actions are fleet-wide: a user limited to one owner's devices may not perform them",
                );
            }
            Ok(user) if user.role == Role::Owner => user.name,
            Ok(user) => {
                info!(user = %user.name, "admin request refused: not an owner");
                return error(
                    StatusCode::FORBIDDEN,
                    "owner actions need a user with the owner role",
                );
            }
            Err(Denied::RateLimited) => {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins for this user from this address: wait a minute",
                );
            }
            Err(Denied::Unavailable) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "credentials cannot be checked now",
                );
            }
            Err(Denied::Missing | Denied::Invalid) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "owner actions need the HTTP Basic credentials of an owner",
                );
            }
        }
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path
        .strip_prefix("/api/admin")
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
    };
    let auth = Arc::clone(auth);
    let owned: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
    let action = format!("{method} {}", segments.first().copied().unwrap_or_default());
    // sled writes sync to disk: off the async workers.
    let answer = tokio::task::spawn_blocking(move || route(&auth, &method, &owned, &body))
        .await
        .unwrap_or_else(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("admin task failed: {e}"),
            )
        });
    info!(%who, %action, status = answer.0.as_u16(), "admin request");
    answer
}

#[derive(Deserialize)]
struct Bulk {
    serials: Vec<String>,
    #[serde(default)]
    owner: Option<String>,
}

/// The optional body of `POST /api/admin/tokens/{serial}`.
#[derive(Deserialize, Default)]
struct Issue {
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
struct NewUser {
    password: String,
    role: Role,
    #[serde(default)]
    scope_owner: Option<String>,
}

/// The answer to a credential change that was not made.
fn change_failed(e: &ChangeError) -> Answer {
    match e {
        ChangeError::Invalid(why) => error(StatusCode::BAD_REQUEST, why.clone()),
        ChangeError::Store(_) => {
            tracing::error!(%e, "admin request: the store failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the store failed")
        }
        ChangeError::Unshared(_) => {
            tracing::warn!(%e, "admin request: not shared with the cluster");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

fn route(auth: &Auth, method: &Method, segments: &[String], body: &[u8]) -> Answer {
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let store_failed = |e: &dyn std::fmt::Display| {
        tracing::error!(%e, "admin request: the store failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, "the store failed")
    };
    match (method, segments.as_slice()) {
        (&Method::GET, ["tokens"]) => match auth.tokens().list() {
            Ok(list) => (
                StatusCode::OK,
                list.into_iter()
                    .map(|t| json!({"serial": t.serial, "created_ms": t.created_ms, "last_used_ms": t.last_used_ms, "owner": t.owner}))
                    .collect(),
            ),
            Err(e) => store_failed(&e),
        },
        (&Method::POST, ["tokens"]) => {
            let bulk: Bulk = match serde_json::from_slice(body) {
                Ok(bulk) => bulk,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"serials\": [...]}}: {e}")),
            };
            let mut serials = Vec::with_capacity(bulk.serials.len());
            for s in &bulk.serials {
                match Serial::new(s) {
                    Ok(serial) => serials.push(serial),
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad serial: {e}")),
                }
            }
            match auth.issue_tokens(&serials, bulk.owner.as_deref()) {
                Ok(tokens) => (
                    StatusCode::OK,
                    serials
                        .iter()
                        .zip(tokens)
                        .map(|(s, t)| json!({"serial": s.as_str(), "token": t}))
                        .collect(),
                ),
                Err(e) => change_failed(&e),
            }
        }
        (&Method::POST, ["tokens", serial]) => {
            let serial = match Serial::new(serial) {
                Ok(serial) => serial,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad serial: {e}")),
            };
            let issue: Issue = if body.is_empty() {
                Issue::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(issue) => issue,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"owner\": …}} or no body: {e}")),
                }
            };
            match auth.issue_tokens(std::slice::from_ref(&serial), issue.owner.as_deref()) {
                Ok(tokens) => (
                    StatusCode::OK,
                    json!({"serial": serial.as_str(), "token": tokens.first()}),
                ),
                Err(e) => change_failed(&e),
            }
        }
        (&Method::DELETE, ["tokens", serial]) => match auth.revoke_token(serial) {
            Ok(true) => (StatusCode::OK, json!({"serial": serial, "revoked": true})),
            Ok(false) => error(StatusCode::NOT_FOUND, format!("{serial:?} has no token")),
            Err(e) => change_failed(&e),
        },
        (&Method::GET, ["users"]) => match auth.users().list() {
            Ok(list) => (
                StatusCode::OK,
                list.into_iter()
                    .map(|(name, u)| json!({"name": name, "role": u.role.as_str(), "scope_owner": u.scope_owner, "created_ms": u.created_ms}))
                    .collect(),
            ),
            Err(e) => store_failed(&e),
        },
        (&Method::PUT, ["users", name]) => {
            let new: NewUser = match serde_json::from_slice(body) {
                Ok(new) => new,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("expected {{\"password\": …, \"role\": \"viewer\"|\"owner\", \"scope_owner\": …}}: {e}"),
                    );
                }
            };
            match auth.put_user(name, &new.password, new.role, new.scope_owner) {
                Ok(()) => (StatusCode::OK, json!({"name": name, "role": new.role.as_str()})),
                Err(e) => change_failed(&e),
            }
        }
        (&Method::DELETE, ["users", name]) => match auth.remove_user(name) {
            Ok(true) => (StatusCode::OK, json!({"name": name, "removed": true})),
            Ok(false) => error(StatusCode::NOT_FOUND, format!("no user {name:?}")),
            Err(e) => change_failed(&e),
        },
        (_, ["tokens" | "users", ..]) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
        _ => error(StatusCode::NOT_FOUND, "no such admin resource"),
    }
}
