//! The `/client/` session: welcome, INIT, FILT, and the live stream of the dashboard's view, one
//! UPDT per frame or, for a dashboard that asked for it, batched ([`batch`]).

pub(crate) mod batch;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Map;
use smart_proto::{DASHBOARD_WELCOME, Header, Query, Record, Serial, ServerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::fleet::{Records, Scope};
use crate::hub::{Budget, Change, Latest, Owed, Subscription};
use crate::liveness::{Due, FRAGMENT, Liveness, feed_text, is_not_reading};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::state::Shared;
use crate::ws::{self, End, Frame, WRITE_TIMEOUT, finish};

/// At most one membership INIT per this interval (PROTOCOL.md §7).
pub(crate) const INIT_INTERVAL: Duration = Duration::from_millis(250);

/// What the dashboard is looking at.
struct View {
    query: Query,
    /// The devices this dashboard's user may see at all (whatever its query).
    scope: Scope,
    /// The serials in the view, tracked only when the query or the scope leaves devices out
    /// (otherwise every device is in view).
    members: Option<HashSet<Serial>>,
}

/// Most changes taken from the hub at once (their frames are shared with the hub's ring).
const TAKE_CHANGES: usize = 256;
/// About how many bytes of frames are taken from the hub at once: what a dashboard that stops
/// reading holds on to, besides its socket's write buffer.
const TAKE_BYTES: usize = 8 * 1024;
/// Most conflated devices taken at once (each is framed from its current record).
const TAKE_DEVICES: usize = 32;
/// A dashboard that keeps up sends at most once per this interval: what was published meanwhile
/// goes out in one write, which costs the server (and the dashboard) far fewer wake-ups and
/// syscalls than one write per group commit, for at most this much more latency.
const COALESCE: Duration = Duration::from_millis(2);
/// A batched UPDT frame grows to about this size, then a new one starts: one websocket frame (the
/// size beyond which messages are fragmented).
const BATCH_BYTES: usize = FRAGMENT;
/// INIT frames larger than this are sent as websocket fragments of this size, so that the socket's
/// write buffer never has to hold a whole INIT of a large fleet.
const INIT_FRAGMENT: usize = 4 * 1024;

/// The protocol extensions a dashboard asked for in its `/client/` query string (PROTOCOL.md §7):
/// without them it gets exactly what the original protocol describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Asks {
    /// Consecutive UPDTs as one list frame (`batch=1`, see [`batch`]).
    pub batched: bool,
    /// INFO `STALE`/`LIVE` notices while other instances' devices may be out of date here
    /// (`stale=1`; only with `--redis`).
    pub stale: bool,
    /// The view starts empty (`empty=1`): the greeting INIT is `[]` and nothing follows until the
    /// first FILT, for a client that only wants what its query selects (the device page).
    pub empty: bool,
}

impl Asks {
    /// From a query string: `&`-separated pairs, each exactly `batch=1`, `stale=1` or `empty=1`.
    pub(crate) fn of(query: Option<&str>) -> Asks {
        let has = |wanted: &str| query.is_some_and(|q| q.split('&').any(|pair| pair == wanted));
        Asks {
            batched: batch::wanted(query),
            stale: has("stale=1"),
            empty: has("empty=1"),
        }
    }
}

/// Serve one dashboard, which sees the devices of `scope`, until it closes or the server shuts down.
pub(crate) async fn session<S>(
    mut ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    scope: Scope,
    asks: Asks,
    mut shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Metrics::inc(&shared.metrics.dashboard_connections);
    let end = serve(&mut ws, &shared, scope, asks, &mut shutdown).await;
    finish(&mut ws, end).await;
    Metrics::dec(&shared.metrics.dashboard_connections);
}

/// Reused buffers for what is taken from the hub.
#[derive(Default)]
struct Taken {
    changes: Vec<Arc<Change>>,
    conflated: Vec<Latest>,
}

async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    scope: Scope,
    asks: Asks,
    shutdown: &mut Shutdown,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let welcome = ServerMessage::Info(DASHBOARD_WELCOME.to_owned()).to_frame();
    // Subscribe before the snapshot: a change racing with it is then sent twice, never lost.
    let mut subscription = shared.hub.subscribe();
    // What the dashboard's user may see; its view sees nothing before its first FILT if it asked.
    let granted = scope;
    let mut view = View {
        query: Query::default(),
        scope: if asks.empty {
            Scope::NOTHING
        } else {
            granted.clone()
        },
        members: None,
    };
    let mut out: Vec<Message> = vec![Message::Text(welcome.into())];
    let mut last_init = Instant::now();
    init(shared, &mut subscription, &mut view, &mut out);
    // `stale=1` with `--redis`: told now if other instances' devices are out of date, and of every
    // change of that (the follower's [`crate::hub::Hub::set_remote_stale`]).
    let mut stale = (asks.stale && shared.clustered()).then(|| shared.hub.remote_stale());
    if let Some(since) = stale.as_mut().and_then(|s| *s.borrow_and_update()) {
        out.push(stale_notice(shared, &granted, Some(since)));
    }
    let mut init_due: Option<Instant> = None;
    let mut taken = Taken::default();
    let budget = Budget {
        changes: TAKE_CHANGES,
        bytes: TAKE_BYTES,
        devices: TAKE_DEVICES,
    };
    let mut last_send = Instant::now();
    // A batching dashboard waits no longer than [`COALESCE`] either: waiting up to 16 ms (a display
    // frame) for fuller lists was measured and gave the page no more frames (BENCHMARKS.md, issue 13).
    let mut batcher = asks.batched.then(batch::Batcher::default);
    let mut catching_up = false;
    let mut liveness = Liveness::new(Duration::from_secs(shared.config.idle_timeout_secs));
    loop {
        if !out.is_empty() {
            last_send = Instant::now();
            if let Some(batcher) = batcher.as_mut() {
                batcher.merge(&mut out, BATCH_BYTES);
            }
            let sent = tokio::select! {
                sent = send_all(ws, &mut out) => sent,
                // A dashboard that does not read must not hold up shutdown: give up on it.
                () = shutdown.recv() => return End::Broken,
            };
            match sent {
                Ok(n) => {
                    shared
                        .metrics
                        .dashboard_frames
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) if is_not_reading(&e) => return not_reading(shared),
                Err(e) => {
                    debug!(%e, "dashboard socket write failed");
                    return End::Broken;
                }
            }
        }
        let due = init_due.unwrap_or_else(Instant::now);
        let idle_at = liveness.deadline();
        tokio::select! {
            biased;
            () = shutdown.recv() => {
                return End::Close(ws::shutting_down());
            }
            frame = ws.next() => match Frame::of(frame) {
                Frame::Text(text) => {
                    liveness.heard();
                    match smart_proto::parse_dashboard_message(&text) {
                        Ok(query) => {
                            Metrics::inc(&shared.metrics.queries);
                            view.query = query;
                            view.scope = granted.clone();
                            init(shared, &mut subscription, &mut view, &mut out);
                            last_init = Instant::now();
                            init_due = None;
                        }
                        Err(e) => {
                            Metrics::inc(&shared.metrics.queries_rejected);
                            info!(reason = %e, "dashboard query rejected");
                            let reply = ServerMessage::Error { header: None, reason: e.to_string() };
                            out.push(Message::Text(reply.to_frame().into()));
                        }
                    }
                }
                Frame::Binary => {
                    liveness.heard();
                    Metrics::inc(&shared.metrics.queries_rejected);
                    info!("dashboard query rejected: binary frame");
                    let reply = ServerMessage::Error {
                        header: None,
                        reason: "binary frames are not accepted: send FILT as a text frame".to_owned(),
                    };
                    out.push(Message::Text(reply.to_frame().into()));
                }
                Frame::Closed => return End::PeerClosed,
                Frame::Ping => {
                    liveness.heard();
                    match liveness.peer_pinged(ws) {
                        Ok(true) => {}
                        Ok(false) => return not_reading(shared),
                        Err(e) => {
                            debug!(%e, "dashboard socket write failed");
                            return End::Broken;
                        }
                    }
                }
                Frame::Pong => liveness.heard(),
                Frame::TooLarge => return End::Close(ws::too_large()),
                Frame::NotUtf8 => {
                    // As for a device (`ws`): 1007 for this connection only; nothing is owed (`out`
                    // was sent at the top of the loop).
                    info!("closing a dashboard connection: text frame is not UTF-8");
                    return End::Close(ws::not_utf8());
                }
                Frame::Failed(e) => {
                    debug!(%e, "dashboard socket read failed");
                    return End::Broken;
                }
            },
            () = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                match liveness.due() {
                    Due::Ping => out.push(Message::Ping(Bytes::new())),
                    Due::Idle => {
                        Metrics::inc(&shared.metrics.shed_idle);
                        info!(timeout = ?liveness.timeout(), "closing a silent dashboard connection");
                        return End::Close(ws::idle_timeout());
                    }
                }
            }
            changed = async { stale.as_mut()?.changed().await.ok() }, if stale.is_some() => {
                match changed {
                    Some(()) => {
                        let since = stale.as_mut().and_then(|s| *s.borrow_and_update());
                        out.push(stale_notice(shared, &granted, since));
                    }
                    None => stale = None,
                }
            }
            () = tokio::time::sleep_until(due), if init_due.is_some() => {
                init(shared, &mut subscription, &mut view, &mut out);
                last_init = Instant::now();
                init_due = None;
            }
            () = subscription.ready() => {
                if !catching_up && last_send.elapsed() < COALESCE {
                    tokio::time::sleep_until(last_send + COALESCE).await;
                }
                let owed = subscription.take(&mut taken.changes, &mut taken.conflated, budget);
                // More than one take's worth was waiting: send the rest without pausing.
                catching_up = subscription.behind();
                if owed == Owed::Resync {
                    init(shared, &mut subscription, &mut view, &mut out);
                    last_init = Instant::now();
                    init_due = None;
                } else {
                    let membership_changed = forward(shared, &mut view, &mut taken, &mut out);
                    if membership_changed && init_due.is_none() {
                        init_due = Some((last_init + INIT_INTERVAL).max(Instant::now()));
                    }
                }
            }
        }
    }
}

/// The INFO notice of `stale=1` (PROTOCOL.md §7): `STALE` with since when (ms) and the serials of
/// the devices connected here that the dashboard may see (current whatever the cluster does; it
/// counts a device whose UPDT carries a message id other than `0000` as connected here too), or
/// `LIVE` once the other instances' devices are current again.
fn stale_notice(shared: &Shared, scope: &Scope, since: Option<u64>) -> Message {
    let frame = match since {
        Some(since) => {
            let connected = shared.connected_here();
            let mut local: Vec<String> = shared.fleet.with_records(|records| {
                connected
                    .into_iter()
                    .filter(|serial| records.get(serial).is_some_and(|r| scope.allows(r)))
                    .map(|serial| serial.as_str().to_owned())
                    .collect()
            });
            local.sort_unstable();
            serde_json::json!({
                "type": "INFO",
                "message": "STALE",
                "reason": "this instance cannot reach Redis: devices connected to other instances may be out of date",
                "since_ms": since,
                "local": local,
            })
        }
        None => serde_json::json!({"type": "INFO", "message": "LIVE"}),
    };
    Message::Text(frame.to_string().into())
}

/// The dashboard does not read what the server sends: drop it.
fn not_reading(shared: &Shared) -> End {
    Metrics::inc(&shared.metrics.shed_not_reading);
    info!("dropping a dashboard connection that does not read (its write buffer is full)");
    End::Broken
}

/// A fresh INIT of the view (fragmented when large) into `out`; resets membership and skips the
/// subscription to the head (the INIT covers everything published so far).
fn init(shared: &Shared, subscription: &mut Subscription, view: &mut View, out: &mut Vec<Message>) {
    subscription.resync();
    let (frame, members) = shared.fleet.init_frame(&view.query, &view.scope);
    view.members = members;
    push_fragmented(frame, out);
}

/// `frame` as one text message, or as fragments of about [`INIT_FRAGMENT`] bytes (cut on character
/// boundaries) when larger: websocket clients reassemble them into the same message.
fn push_fragmented(frame: String, out: &mut Vec<Message>) {
    if frame.len() <= INIT_FRAGMENT {
        out.push(Message::Text(frame.into()));
        return;
    }
    let bytes = Bytes::from(frame);
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + INIT_FRAGMENT).min(bytes.len());
        // The frame is UTF-8: back up to the start of a character (at most 3 bytes).
        while end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        let opcode = if start == 0 {
            OpData::Text
        } else {
            OpData::Continue
        };
        let last = end == bytes.len();
        out.push(Message::Frame(WsFrame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            last,
        )));
        start = end;
    }
}

/// Turn what was taken from the hub into frames for this view (emptying `taken`). Returns whether
/// a device entered or left the view.
fn forward(shared: &Shared, view: &mut View, taken: &mut Taken, out: &mut Vec<Message>) -> bool {
    let mut membership_changed = false;
    match view.members.as_mut() {
        None => {
            out.extend(taken.changes.iter().map(|c| Message::Text(c.frame.clone())));
            if !taken.conflated.is_empty() {
                // Conflated devices get their current record, read now.
                shared.fleet.with_records(|records| {
                    for latest in &taken.conflated {
                        if let Some(record) = records.get(&latest.serial) {
                            out.push(updt(
                                Header {
                                    id: latest.id.clone(),
                                    serial: latest.serial.clone(),
                                },
                                record.to_map(),
                            ));
                        }
                    }
                });
            }
        }
        Some(members) => shared.fleet.with_records(|records| {
            for change in &taken.changes {
                let shared_frame = || Message::Text(change.frame.clone());
                membership_changed |= follow(
                    (&view.query, &view.scope),
                    members,
                    records,
                    &change.serial,
                    &change.id,
                    shared_frame,
                    out,
                );
            }
            for latest in &taken.conflated {
                let header = Header {
                    id: latest.id.clone(),
                    serial: latest.serial.clone(),
                };
                let frame = || {
                    let body = records
                        .get(&latest.serial)
                        .map(Record::to_map)
                        .unwrap_or_default();
                    updt(header, body)
                };
                membership_changed |= follow(
                    (&view.query, &view.scope),
                    members,
                    records,
                    &latest.serial,
                    &latest.id,
                    frame,
                    out,
                );
            }
        }),
    }
    taken.changes.clear();
    taken.conflated.clear();
    membership_changed
}

/// Apply one change of `serial` to a filtered view: forward it if the device stays in view, send
/// its full record if it enters, drop it from the members if it leaves. Returns whether membership
/// changed.
fn follow(
    (query, scope): (&Query, &Scope),
    members: &mut HashSet<Serial>,
    records: &Records<'_>,
    serial: &Serial,
    id: &smart_proto::MessageId,
    frame: impl FnOnce() -> Message,
    out: &mut Vec<Message>,
) -> bool {
    // The current record decides: it already holds this change and maybe later ones.
    let matches = records
        .get(serial)
        .is_some_and(|record| scope.allows(record) && query.matches(record));
    let member = members.contains(serial);
    match (matches, member) {
        (true, true) => {
            out.push(frame());
            false
        }
        (true, false) => {
            if let Some(record) = records.get(serial) {
                out.push(updt(
                    Header {
                        id: id.clone(),
                        serial: serial.clone(),
                    },
                    record.to_map(),
                ));
            }
            members.insert(serial.clone());
            true
        }
        (false, true) => {
            members.remove(serial);
            true
        }
        (false, false) => false,
    }
}

fn updt(header: Header, body: Map<String, serde_json::Value>) -> Message {
    Message::Text(Utf8Bytes::from(
        ServerMessage::Updt { header, body }.to_frame(),
    ))
}

/// Write `out` (emptying it) and flush once. Returns the number of frames.
async fn send_all<S>(ws: &mut WebSocketStream<S>, out: &mut Vec<Message>) -> Result<u64, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let n = out.len() as u64;
    let write = async {
        for message in out.drain(..) {
            match message {
                Message::Text(text) => feed_text(ws, text).await?,
                other => ws.feed(other).await?,
            }
        }
        ws.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result.map(|()| n),
        Err(_) => Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "dashboard stopped reading",
        ))),
    }
}
