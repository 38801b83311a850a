//! HTTP: one hyper connection per socket. Websocket upgrades of `/update/` and `/client/` are
//! accepted here, at the hyper layer, so that every socket gets our small [`WebSocketConfig`]
//! (warp's `ws()` gives each one a 128 KiB read buffer and offers no setting). Every other request
//! goes to the warp routes: `/`, the embedded dashboard assets, `/api/devices`, `/api/fields`,
//! `/healthz`, `/metrics`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use smart_proto::{Query, Serial};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tower_service::Service;
use tracing::{debug, info};
use warp::Filter;
use warp::http::header::{self, HeaderValue};
use warp::http::{Method, Request, StatusCode, Uri};
use warp::reply::{Reply, Response};

use crate::auth::{Denied, Grant};
use crate::conns::Slot;
use crate::dashboard::Asks;
use crate::fleet::Scope;
use crate::history::History;
use crate::lenient::Lenient;
use crate::liveness::{CONTROL_ROOM, FRAGMENT};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, TaskToken};
use crate::state::{Shared, SocketSlot};
use crate::{account, admin, dashboard, device, history};

/// Read buffer of a dashboard socket: dashboards only send FILT queries.
const DASHBOARD_READ_BUFFER: usize = 4 * 1024;
/// Dashboard writes are coalesced up to this before a `send`. With the `Sink` API the buffer never
/// holds more than this plus one frame (it is flushed before the next frame is accepted), and that
/// is what a dashboard that stops reading holds on to (with what it took from the hub and its read
/// buffer; its budget is 64 KiB). Every message larger than `liveness::FRAGMENT` goes out in fragments.
const DASHBOARD_WRITE_BUFFER: usize = 8 * 1024;
/// Kernel send buffer of a dashboard socket (`SO_SNDBUF`; Linux doubles it). Without it the kernel
/// grows it to megabytes for a peer that does not read, and the server keeps writing into it long
/// after the dashboard stopped: with this bound such a dashboard is stalled (and conflated) after
/// a few hundred KB. 64 KiB still carries a few MB/s on a LAN.
const DASHBOARD_SEND_BUFFER: usize = 64 * 1024;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// One embedded file of the dashboard. Add a line to [`ASSETS`] to serve another one.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/style.css"),
    },
    Asset {
        name: "fields.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/fields.js"),
    },
    Asset {
        name: "format.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/format.js"),
    },
    Asset {
        name: "query.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/query.js"),
    },
    Asset {
        name: "order.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/order.js"),
    },
    Asset {
        name: "wire.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/wire.js"),
    },
    Asset {
        name: "stale.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/stale.js"),
    },
    Asset {
        name: "grid.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/grid.js"),
    },
    Asset {
        name: "state.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/state.js"),
    },
    Asset {
        name: "filters.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/filters.js"),
    },
    Asset {
        name: "device.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/device.js"),
    },
    Asset {
        name: "columns.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/columns.js"),
    },
    Asset {
        name: "auth.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/auth.js"),
    },
    // uPlot 1.6.32 (MIT), unmodified from its npm package: assets/vendor/uplot/ (LICENSE, VERSION).
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
    },
];

/// A connection's byte stream: plain TCP, or TLS over TCP.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the stream is encrypted (cookies get `Secure`).
    const SECURE: bool;
    /// The stream as a device session holds it.
    type Device: device::DeviceIo;
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// The stream, to be handed to a device session.
    fn into_device(self) -> Self::Device;
}

impl Transport for TcpStream {
    const SECURE: bool = false;
    type Device = TcpStream;
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn into_device(self) -> TcpStream {
        self
    }
}

impl Transport for crate::tls::TlsSocket {
    const SECURE: bool = true;
    /// Boxed: the TLS state is 1.2 KiB, and the session's future would hold it inline (in a debug
    /// build, several times).
    type Device = Box<crate::tls::TlsSocket>;
    fn tcp(&self) -> &TcpStream {
        crate::tls::TlsSocket::tcp(self)
    }
    fn into_device(self) -> Box<crate::tls::TlsSocket> {
        Box::new(self)
    }
}

/// Who is connecting over a websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Device,
    Dashboard,
}

/// A dashboard socket's websocket settings (device sockets have their own codec: `device/codec.rs`).
fn ws_config(shared: &Shared) -> WebSocketConfig {
    let max = shared.config.max_frame_bytes;
    WebSocketConfig::default()
        .read_buffer_size(DASHBOARD_READ_BUFFER)
        .write_buffer_size(DASHBOARD_WRITE_BUFFER)
        // Bounded, so that a peer that never reads cannot make the server hold its pongs: beyond
        // this, pongs are replaced and writes fail with `WriteBufferFull` (the peer is dropped).
        // Dashboard messages go out in fragments of at most `FRAGMENT`.
        .max_write_buffer_size(DASHBOARD_WRITE_BUFFER + FRAGMENT + CONTROL_ROOM)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Serve one TCP connection until it closes, upgrades, or the server shuts down. `slot` is its
/// place in the descriptor budget.
pub(crate) async fn serve_connection<T, S>(
    stream: T,
    slot: Slot,
    shared: Arc<Shared>,
    routes: S,
    mut shutdown: Shutdown,
    token: TaskToken,
    parking: Option<device::Parking>,
) where
    T: Transport,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (Ok(local), Ok(remote)) = (stream.tcp().local_addr(), stream.tcp().peer_addr()) else {
        return;
    };
    let secure = T::SECURE;
    let slot = Arc::new(slot);
    let ctx = Ctx {
        shared,
        shutdown: shutdown.clone(),
        token,
        parking,
        local,
        remote: remote.ip(),
        slot: Arc::clone(&slot),
    };
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        let mut routes = routes.clone();
        async move {
            ctx.slot.busy();
            if let Some(peer) = websocket_peer(&req) {
                let admitted = match ctx.admit(&req, peer).await {
                    Ok(admitted) => admitted,
                    Err(res) => {
                        ctx.slot.idle();
                        return Ok(res);
                    }
                };
                let res = ctx.upgrade::<T>(req, peer, admitted);
                if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                    ctx.slot.idle();
                }
                return Ok(res);
            }
            if req.uri().path().starts_with("/api/admin/") || req.uri().path() == "/api/admin" {
                let (status, body) = admin::handle(req, &ctx.shared.auth, ctx.remote).await;
                ctx.slot.idle();
                return Ok(json_response(status, body.to_string()));
            }
            if account::is_account_path(req.uri().path()) {
                let mode = ctx.shared.config.auth_mode();
                let res = account::route(req, &ctx.shared.auth, mode, ctx.remote, secure).await;
                ctx.slot.idle();
                return Ok(res);
            }
            let mut req = req;
            if !is_public(req.uri().path()) {
                match ctx.admit(&req, Peer::Dashboard).await {
                    Ok(admitted)
                        if admitted.scope.is_limited() && !scope_serves(req.uri().path()) =>
                    {
                        ctx.slot.idle();
                        return Ok(error_json(
                            StatusCode::FORBIDDEN,
                            "this user sees one owner's devices only: fleet-wide figures are not for it",
                        ));
                    }
                    Ok(admitted) => {
                        req.extensions_mut().insert(admitted.scope);
                    }
                    Err(res) => {
                        ctx.slot.idle();
                        return Ok(res);
                    }
                }
            }
            let res = routes.call(req).await;
            ctx.slot.idle();
            res.map(json_errors)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(Lenient::new(stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%e, "http connection ended with an error");
            }
        }
        () = slot.evicted() => {
            debug!("closing an idle HTTP connection to make room for a new one");
        }
        () = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Errors the warp layer answers without a body (404 for an unknown path, 405…) get the JSON
/// error body of PROTOCOL.md §9.
fn json_errors(res: Response) -> Response {
    let status = res.status();
    if (status.is_client_error() || status.is_server_error())
        && !res.headers().contains_key(header::CONTENT_TYPE)
    {
        error_json(status, status.canonical_reason().unwrap_or("error"))
    } else {
        res
    }
}

fn websocket_peer(req: &Request<Incoming>) -> Option<Peer> {
    match req.uri().path() {
        "/update/" | "/update" => Some(Peer::Device),
        "/client/" | "/client" => Some(Peer::Dashboard),
        _ => None,
    }
}

/// What an admitted request may do.
struct Admitted {
    /// The serial a device connection may write (`None`: any).
    grant: Option<Grant>,
    /// The devices a person may see.
    scope: Scope,
}

/// What a request handler needs.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    token: TaskToken,
    /// Where idle device connections wait (`None`: they keep their tasks).
    parking: Option<device::Parking>,
    /// The address this connection reached (the server's own origin for `/client/`).
    local: SocketAddr,
    /// The peer's address (failed logins are rate-limited per user and address).
    remote: IpAddr,
    slot: Arc<Slot>,
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut res = Response::new(text.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Ctx {
    /// Check the request's credentials (`--auth`): a device token for a device, a user for anything
    /// else. `Ok` carries what the request may do; `Err` the answer (401, 429 or 503). Neither the
    /// token nor the query string is logged.
    async fn admit(&self, req: &Request<Incoming>, peer: Peer) -> Result<Admitted, Response> {
        let auth = &self.shared.auth;
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let cookie = req.headers().get(header::COOKIE).map(HeaderValue::as_bytes);
        let denied = match peer {
            Peer::Device => match auth.device(authorization, req.uri().query()) {
                Ok(grant) => {
                    return Ok(Admitted {
                        grant,
                        scope: Scope::ALL,
                    });
                }
                Err(denied) => denied,
            },
            Peer::Dashboard => match auth.person(authorization, cookie, self.remote).await {
                Ok(None) => {
                    return Ok(Admitted {
                        grant: None,
                        scope: Scope::ALL,
                    });
                }
                Ok(Some(user)) => {
                    debug!(user = %user.name, role = user.role.as_str(), "authenticated");
                    let scope = user.scope_owner.as_deref().map_or(Scope::ALL, Scope::owner);
                    return Ok(Admitted { grant: None, scope });
                }
                Err(denied) => denied,
            },
        };
        let person = peer == Peer::Dashboard;
        self.shared.metrics.auth_failure(person, denied);
        let who = if person { "person" } else { "device" };
        info!(who, reason = denied.label(), remote = %self.remote, path = req.uri().path(), "refused: credentials");
        let (status, message) = match denied {
            Denied::Missing if person => (
                StatusCode::UNAUTHORIZED,
                "log in: HTTP Basic credentials of a user are required",
            ),
            Denied::Missing => (
                StatusCode::UNAUTHORIZED,
                "a device token is required: Authorization: Bearer TOKEN, or ?token=TOKEN",
            ),
            Denied::Invalid if person => {
                (StatusCode::UNAUTHORIZED, "unknown user or wrong password")
            }
            Denied::Invalid => (StatusCode::UNAUTHORIZED, "unknown or revoked device token"),
            Denied::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins for this user from this address: wait a minute",
            ),
            Denied::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "credentials cannot be checked now",
            ),
        };
        let mut res = error_json(status, message);
        let challenge = if person {
            "Basic realm=\"SMART-OS\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"SMART-OS\""
        };
        // The page asks with `X-Requested-With` and shows its own login form: no browser prompt.
        let from_page = req.headers().contains_key("x-requested-with");
        if status == StatusCode::UNAUTHORIZED && !(person && from_page) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        Err(res)
    }

    /// Answer a request for `/update/` or `/client/`: 101 and a websocket session, or why not.
    /// `grant` is the serial a device connection may write (`None`: any).
    fn upgrade<T: Transport>(
        &self,
        mut req: Request<Incoming>,
        peer: Peer,
        admitted: Admitted,
    ) -> Response {
        let Admitted { grant, scope } = admitted;
        let shared = &self.shared;
        let is_upgrade = req.method() == Method::GET
            && header_has_token(&req, header::CONNECTION, "upgrade")
            && header_has_token(&req, header::UPGRADE, "websocket");
        if !is_upgrade {
            let mut res = plain(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks websocket only\n",
            );
            res.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return res;
        }
        if req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut res = plain(
                StatusCode::BAD_REQUEST,
                "unsupported websocket version: use 13\n",
            );
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return res;
        }
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
        };
        let accept = derive_accept_key(key.as_bytes());
        if !origin_allowed(&req, peer, &shared.config.allowed_origins, self.local) {
            Metrics::inc(&shared.metrics.connections_refused_origin);
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
        if self.shutdown.is_shutdown() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
        }
        let admission = match peer {
            Peer::Dashboard => {
                let max = shared.config.max_dashboards;
                let Some(admission) = shared.hub.admit(max) else {
                    Metrics::inc(&shared.metrics.connections_refused_dashboards);
                    info!(max, "dashboard refused: --max-dashboards reached");
                    let reason = format!("too many dashboards: at most {max} may be connected");
                    return error_json(StatusCode::SERVICE_UNAVAILABLE, &reason);
                };
                Some(admission)
            }
            Peer::Device => None,
        };
        let Some(slot) = SocketSlot::take(shared) else {
            Metrics::inc(&shared.metrics.connections_refused_limit);
            return plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
        };
        let Ok(accept) = HeaderValue::from_str(&accept) else {
            return plain(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n");
        };

        // `/client/?batch=1&stale=1`: protocol extensions (PROTOCOL.md §7).
        let asks = Asks::of(req.uri().query());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let shared = Arc::clone(shared);
        let shutdown = self.shutdown.clone();
        let token = self.token.clone();
        // The socket lives on in the websocket session.
        let conn_slot = Arc::clone(&self.slot);
        // One task per kind of session, each only as large as its own state: a device task does
        // not carry room for a dashboard session over the concrete stream type (with TLS that
        // room was 8.5 KiB per idle device).
        match peer {
            Peer::Device => {
                // What the session holds until it ends: its places in the budgets, the shutdown
                // tracker.
                let held = device::Held {
                    token,
                    slot,
                    socket: conn_slot,
                };
                let parking = self.parking.clone();
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(upgraded) => {
                            if let Ok(parts) = upgraded.downcast::<TokioIo<Lenient<T>>>() {
                                let (io, preread) = upgraded_parts(parts);
                                let io = io.into_device();
                                // A task of its own, as small as the session: this one, which
                                // waited for the upgrade, ends here.
                                tokio::spawn(device::session(
                                    io, preread, shared, shutdown, grant, held, parking,
                                ));
                            } else {
                                debug!("websocket upgrade over an unexpected stream type");
                            }
                        }
                        Err(e) => debug!(%e, "websocket upgrade failed"),
                    }
                });
            }
            Peer::Dashboard => {
                let config = ws_config(&shared);
                let held = (token, slot, conn_slot, admission);
                tokio::spawn(async move {
                    let _held = held;
                    match on_upgrade.await {
                        Ok(upgraded) => {
                            dashboard_session::<T>(upgraded, config, shared, scope, asks, shutdown)
                                .await;
                        }
                        Err(e) => debug!(%e, "websocket upgrade failed"),
                    }
                });
            }
        }

        let mut res = Response::new("".into());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        res
    }
}

/// The socket of an upgraded connection, and the bytes read past the upgrade request (the first
/// frames). hyper's `read_buf` is dropped here: it may be a view of the connection's whole HTTP read
/// buffer (8 KiB and more), which a session holding it would keep for its life.
fn upgraded_parts<T>(parts: hyper::upgrade::Parts<TokioIo<Lenient<T>>>) -> (T, Vec<u8>) {
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let (io, pending) = io.into_inner().into_parts();
    let mut preread = read_buf.to_vec();
    preread.extend_from_slice(&pending);
    (io, preread)
}

/// A dashboard's websocket session on its upgraded connection: its socket's send buffer is bounded
/// first (see [`DASHBOARD_SEND_BUFFER`]).
async fn dashboard_session<T: Transport>(
    upgraded: hyper::upgrade::Upgraded,
    config: WebSocketConfig,
    shared: Arc<Shared>,
    scope: Scope,
    asks: Asks,
    shutdown: Shutdown,
) {
    match upgraded.downcast::<TokioIo<Lenient<T>>>() {
        Ok(parts) => {
            let (stream, preread) = upgraded_parts(parts);
            if let Err(e) =
                socket2::SockRef::from(stream.tcp()).set_send_buffer_size(DASHBOARD_SEND_BUFFER)
            {
                debug!(%e, "could not bound a dashboard's send buffer");
            }
            let ws =
                WebSocketStream::from_partially_read(stream, preread, WsRole::Server, Some(config))
                    .await;
            dashboard::session(ws, shared, scope, asks, shutdown).await;
        }
        Err(upgraded) => {
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                WsRole::Server,
                Some(config),
            )
            .await;
            dashboard::session(ws, shared, scope, asks, shutdown).await;
        }
    }
}

/// What anyone may fetch when auth is required: the page itself (it shows the login form), the
/// field table it is built from, and `/healthz`.
fn is_public(path: &str) -> bool {
    path == "/"
        || path == "/healthz"
        // The page's known columns (no device data): it loads them before anyone logs in.
        || path == "/api/fields"
        || ASSETS
            .iter()
            .any(|a| path.strip_prefix('/') == Some(a.name))
}

/// Whether a user limited to one owner's devices (`--scope-owner`) may ask for `path`: the device
/// API, which answers within the scope. Anything fleet-wide (`/metrics`) is refused (403).
fn scope_serves(path: &str) -> bool {
    path == "/api/devices" || path.starts_with("/api/devices/")
}

/// Devices send no `Origin`; browsers always do. A browser may open `/update/` only from a listed
/// origin (so no web page can forge device data), and `/client/` from a listed origin or the
/// server's own: the address the connection reached (`local`), or a loopback name with its port
/// when that address is loopback. Never the Host header: with DNS rebinding, a hostile page's
/// origin and Host agree.
fn origin_allowed(
    req: &Request<Incoming>,
    peer: Peer,
    allowed: &[String],
    local: SocketAddr,
) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    peer == Peer::Dashboard && own_origin(origin, local)
}

/// Whether `origin` (`scheme://host[:port]`) names `local`.
fn own_origin(origin: &str, local: SocketAddr) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, rest)) = v6.split_once(']') else {
            return false;
        };
        (host, rest)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, authority.get(host.len()..).unwrap_or(port)),
            None => (authority, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        Some(p) => p.parse::<u16>().ok(),
        None if port.is_empty() => Some(default_port),
        None => None,
    };
    if port != Some(local.port()) {
        return false;
    }
    let local_ip = local.ip().to_canonical();
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip == local_ip || (ip.is_loopback() && local_ip.is_loopback())
        }
        Err(_) => host.eq_ignore_ascii_case("localhost") && local_ip.is_loopback(),
    }
}

/// The warp routes for everything that is not a websocket.
pub(crate) fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let with_shared = warp::any().map(move || Arc::clone(&shared));
    let root = warp::path::end()
        .map(|| warp::redirect::found(Uri::from_static("/index.html")).into_response());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    // The devices the user may see (set by the credentials check; every device when auth is off).
    let scope = warp::ext::optional::<Scope>().map(Option::unwrap_or_default);
    let list = warp::path!("api" / "devices")
        .and(raw_query)
        .and(scope)
        .and(with_shared.clone())
        // Filtering and sorting the whole fleet is CPU work: on a blocking thread, so that neither
        // the runtime's workers (device sessions) nor the fleet (the writer) wait for it.
        .then(|raw: String, scope: Scope, shared: Arc<Shared>| {
            blocking(move || list_devices(&raw, &scope, &shared))
        });
    let history = warp::path!("api" / "devices" / String / "history")
        .and(raw_query)
        .and(scope)
        .and(with_shared.clone())
        // Reading and bucketing a range is CPU and disk work: on a blocking thread.
        .then(
            |serial: String, raw: String, scope: Scope, shared: Arc<Shared>| {
                blocking(move || device_history(&serial, &raw, &scope, &shared))
            },
        );
    let energy = warp::path!("api" / "devices" / String / "energy")
        .and(raw_query)
        .and(scope)
        .and(with_shared.clone())
        .then(
            |serial: String, raw: String, scope: Scope, shared: Arc<Shared>| {
                blocking(move || device_energy(&serial, &raw, &scope, &shared))
            },
        );
    let one = warp::path!("api" / "devices" / String)
        .and(scope)
        .and(with_shared.clone())
        .map(|serial: String, scope: Scope, shared: Arc<Shared>| {
            one_device(&serial, &scope, &shared)
        });
    // The known fields of PROTOCOL.md §6 (smart-proto's table): the dashboard's known columns.
    let fields = warp::path!("api" / "fields")
        .map(|| json_response(StatusCode::OK, smart_proto::Record::fields_json()));
    let healthz = warp::path!("healthz")
        .and(with_shared.clone())
        .map(|shared: Arc<Shared>| healthz(&shared));
    let metrics = warp::path!("metrics")
        .and(with_shared)
        .map(|shared: Arc<Shared>| metrics(&shared));
    let asset = warp::path::param::<String>()
        .and(warp::path::end())
        .and_then(asset);
    warp::get().and(
        root.or(list)
            .unify()
            .or(history)
            .unify()
            .or(energy)
            .unify()
            .or(one)
            .unify()
            .or(fields)
            .unify()
            .or(healthz)
            .unify()
            .or(metrics)
            .unify()
            .or(asset)
            .unify(),
    )
}

/// Answer with `f` run on a blocking thread (CPU or disk work the runtime's workers must not wait for).
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!(%e, "query task failed");
        error_json(StatusCode::INTERNAL_SERVER_ERROR, "query failed")
    })
}

fn error_json(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }).to_string())
}

/// `/api/devices?q=CLAUSE&q=CLAUSE…`: the FILT of PROTOCOL.md §8 over HTTP.
fn list_devices(raw_query: &str, scope: &Scope, shared: &Shared) -> Response {
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(raw_query) {
        Ok(pairs) => pairs,
        Err(e) => return error_json(StatusCode::BAD_REQUEST, &format!("bad query string: {e}")),
    };
    let clauses: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "q")
        .map(|(_, v)| v.as_str())
        .collect();
    match Query::parse(&clauses) {
        Ok(query) => json_response(StatusCode::OK, shared.fleet.query_json(&query, scope)),
        Err(e) => error_json(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// One device's record; a device outside the user's scope is unknown to it (404, not 403: a scoped
/// user learns nothing about other owners' serials).
fn one_device(serial: &str, scope: &Scope, shared: &Shared) -> Response {
    match shared.fleet.device_json(serial, scope) {
        Some(json) => json_response(StatusCode::OK, json.to_string()),
        None => error_json(StatusCode::NOT_FOUND, &format!("unknown device {serial:?}")),
    }
}

/// `/api/devices/{serial}/history`: see [`crate::history::api`].
fn device_history(serial: &str, raw_query: &str, scope: &Scope, shared: &Shared) -> Response {
    history_route(serial, raw_query, scope, shared, history::api::answer)
}

/// `/api/devices/{serial}/energy`: see [`crate::history::energy`].
fn device_energy(serial: &str, raw_query: &str, scope: &Scope, shared: &Shared) -> Response {
    history_route(
        serial,
        raw_query,
        scope,
        shared,
        |history, serial, pairs, now_ms| {
            let (status, body) = history::energy::answer(history, serial, pairs, now_ms);
            (status, "application/json", body)
        },
    )
}

/// A history route for one visible device: `answer` gets the history, the serial, the query's pairs
/// and the time now (ms).
fn history_route(
    serial: &str,
    raw_query: &str,
    scope: &Scope,
    shared: &Shared,
    answer: impl FnOnce(&History, &Serial, &[(String, String)], i64) -> history::api::Answer,
) -> Response {
    let Some(history) = shared.history() else {
        return error_json(
            StatusCode::NOT_FOUND,
            "this server keeps no history (--history off)",
        );
    };
    // Unknown, or another owner's: the same 404.
    let serial = match Serial::new(serial) {
        Ok(serial) if shared.fleet.device_json(serial.as_str(), scope).is_some() => serial,
        _ => return error_json(StatusCode::NOT_FOUND, &format!("unknown device {serial:?}")),
    };
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(raw_query) {
        Ok(pairs) => pairs,
        Err(e) => return error_json(StatusCode::BAD_REQUEST, &format!("bad query string: {e}")),
    };
    let now = smart_proto::Timestamp::from(std::time::SystemTime::now());
    let (status, content_type, body) =
        answer(history, &serial, &pairs, history::samples::millis(now));
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn healthz(shared: &Shared) -> Response {
    let healthy = shared.store_healthy();
    let mut body = json!({
        "status": if healthy { "ok" } else { "store not writable" },
        "devices": shared.fleet.len(),
        "devices_online": shared.fleet.online(),
    });
    // With `--redis --ack local`, Redis away is "degraded" (still 200: devices are acked, the
    // backlog ships on its return); with `--ack cluster` it is unhealthy (devices get ERROR).
    let mut healthy = healthy;
    if let Some(cluster) = shared.cluster_health() {
        body["redis"] = json!(if cluster.redis_up { "ok" } else { "down" });
        body["redis_backlog"] = json!(cluster.backlog);
        if cluster.acks_wait {
            body["acks_waiting_for_redis"] = json!(cluster.acks_waiting);
        }
        if healthy && !cluster.redis_up {
            if cluster.acks_wait {
                healthy = false;
                body["status"] = json!("redis down (--ack cluster): writes refused");
            } else {
                body["status"] = json!("degraded");
            }
        }
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string())
}

fn metrics(shared: &Shared) -> Response {
    let mut res = Response::new(shared.metrics.render(shared.gauges()).into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

async fn asset(name: String) -> Result<Response, warp::Rejection> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(warp::reject::not_found)?;
    let mut res = Response::new(asset.body.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}
