//! The page's login: `POST /login` (form fields `user`, `password`) starts a cookie session,
//! `POST /logout` ends it, `GET /api/me` says who is logged in (and whether auth is on at all).

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;
use warp::http::header::{self, HeaderValue};
use warp::http::{Method, Request, StatusCode};
use warp::reply::Response;

use crate::auth::{Auth, AuthMode, COOKIE, Denied, SESSION_TTL};

/// Largest login form.
const MAX_FORM: usize = 8 * 1024;

#[derive(Deserialize)]
struct Form {
    user: String,
    password: String,
}

/// The answer to `req` if it is one of the account routes.
pub(crate) async fn route(
    req: Request<Incoming>,
    auth: &Arc<Auth>,
    mode: AuthMode,
    remote: IpAddr,
    secure: bool,
) -> Response {
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .map(|v| v.as_bytes().to_vec());
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/login") => login(req, auth, remote, secure).await,
        (&Method::POST, "/logout") => {
            auth.end_session(cookie.as_deref());
            let mut res = json(StatusCode::OK, &json!({"logged_out": true}));
            set_cookie(
                &mut res,
                &format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
                secure,
            );
            res
        }
        (&Method::GET, "/api/me") => {
            if mode == AuthMode::Off {
                return json(StatusCode::OK, &json!({"auth": "off"}));
            }
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match auth.person(authorization, cookie.as_deref(), remote).await {
                Ok(Some(user)) => json(
                    StatusCode::OK,
                    &json!({"auth": "required", "user": user.name, "role": user.role.as_str(), "scope_owner": user.scope_owner}),
                ),
                _ => json(
                    StatusCode::UNAUTHORIZED,
                    &json!({"auth": "required", "error": "not logged in"}),
                ),
            }
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed here"}),
        ),
    }
}

/// Whether `path` is one of the account routes.
pub(crate) fn is_account_path(path: &str) -> bool {
    matches!(path, "/login" | "/logout" | "/api/me")
}

async fn login(req: Request<Incoming>, auth: &Arc<Auth>, remote: IpAddr, secure: bool) -> Response {
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "login form too large"}),
            );
        }
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Form>(&body) else {
        return json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "expected form fields user and password (application/x-www-form-urlencoded)"}),
        );
    };
    let name = form.user.clone();
    match auth.start_session(form.user, form.password, remote).await {
        Ok((user, id)) => {
            info!(user = %user.name, role = user.role.as_str(), %remote, "logged in");
            let mut res = json(
                StatusCode::OK,
                &json!({"user": user.name, "role": user.role.as_str(), "scope_owner": user.scope_owner}),
            );
            let max_age = SESSION_TTL.as_secs();
            set_cookie(
                &mut res,
                &format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"),
                secure,
            );
            res
        }
        Err(denied) => {
            info!(user = %name, reason = denied.label(), %remote, "login refused");
            let (status, error) = match denied {
                Denied::RateLimited => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins for this user from this address: wait a minute",
                ),
                Denied::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "logins cannot be checked now",
                ),
                Denied::Missing | Denied::Invalid => {
                    (StatusCode::UNAUTHORIZED, "unknown user or wrong password")
                }
            };
            json(status, &json!({ "error": error }))
        }
    }
}

fn json(status: StatusCode, body: &Value) -> Response {
    let mut res = Response::new(body.to_string().into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn set_cookie(res: &mut Response, cookie: &str, secure: bool) {
    let cookie = if secure {
        format!("{cookie}; Secure")
    } else {
        cookie.to_owned()
    };
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, value);
    }
}
