//! The `/update/` session: frame → smart-proto → fleet → store → ack, replies in arrival order.
//!
//! A connection may have several messages waiting for their group commit at once (up to
//! `--max-in-flight`); their replies, OK or ERROR, leave in the order the frames arrived. An ERROR for
//! a bad frame therefore waits behind the OKs of earlier good frames, and nothing of the bad frame is
//! applied.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use smart_proto::{DEVICE_WELCOME, Header, Kind, Rejection, Serial, ServerMessage, Timestamp};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::acks::{Ack, AckQueue, AckTicket, Refusal};
use crate::ingest::{Job, Write};
use crate::liveness::{Due, Liveness, is_not_reading};
use crate::metrics::{Metrics, RejectClass};
use crate::server::Shared;
use crate::shutdown::Shutdown;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A device that accepts nothing for this long has stopped reading its acks: it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply owed to the device, in arrival order.
enum Reply {
    /// Known now (an ERROR).
    Ready(Utf8Bytes),
    /// OK once the group commit covering the write is done: the session's write number
    /// `ordinal` (see [`AckQueue`]).
    Waiting {
        header: Header,
        kind: Kind,
        ordinal: u64,
    },
}

/// The current time as a record timestamp.
pub(crate) fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

fn info_text(text: String) -> Message {
    Message::Text(Utf8Bytes::from(text))
}

/// Serve one device connection until it closes or the server shuts down.
pub(crate) async fn session<S>(
    mut ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &shared.metrics;
    Metrics::inc(&metrics.device_connections);
    let mut state = Session {
        shared: &shared,
        attached: HashSet::new(),
        acks: Arc::new(AckQueue::default()),
        submitted: 0,
    };
    let welcome = ServerMessage::Info(DEVICE_WELCOME.to_owned()).to_frame();
    let end = match ws.send(info_text(welcome)).await {
        Ok(()) => state.serve(&mut ws, &mut shutdown).await,
        Err(_) => End::Broken,
    };
    finish(&mut ws, end).await;
    state.detach_all();
    Metrics::dec(&metrics.device_connections);
}

/// How a session ended.
pub(crate) enum End {
    /// The peer sent a close frame (or the stream ended).
    PeerClosed,
    /// The server closes with this frame.
    Close(CloseFrame),
    /// The socket failed; nothing more can be sent.
    Broken,
}

/// Complete the closing handshake for `end`, within [`CLOSE_GRACE`].
pub(crate) async fn finish<S>(ws: &mut WebSocketStream<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let closing = match end {
            End::Broken => return,
            End::PeerClosed => true,
            End::Close(frame) => ws.close(Some(frame)).await.is_ok(),
        };
        if closing {
            // Reading on lets tungstenite send its close reply and see the peer's; the stream then
            // ends.
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

struct Session<'a> {
    shared: &'a Shared,
    /// Serials this connection has sent a valid message for (it keeps them online); at most
    /// `--max-serials-per-connection`.
    attached: HashSet<Serial>,
    /// Where the writer answers this connection's writes.
    acks: Arc<AckQueue>,
    /// Writes submitted so far (the ordinal of the latest).
    submitted: u64,
}

impl Session<'_> {
    /// The read/ack loop.
    async fn serve<S>(&mut self, ws: &mut WebSocketStream<S>, shutdown: &mut Shutdown) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max_in_flight = self.shared.config.max_in_flight.max(1);
        let mut replies: VecDeque<Reply> = VecDeque::new();
        let mut reading = true;
        let mut close = None;
        let mut liveness = Liveness::new(Duration::from_secs(self.shared.config.idle_timeout_secs));
        loop {
            // Most turns of this loop (a frame just arrived) have nothing to send: skip the timer.
            let sendable = match replies.front() {
                Some(Reply::Ready(_)) => true,
                Some(Reply::Waiting { ordinal, .. }) => *ordinal <= self.acks.answered(),
                None => false,
            };
            let sent = if sendable {
                tokio::time::timeout(WRITE_TIMEOUT, self.send_ready(ws, &mut replies)).await
            } else {
                Ok(Ok(()))
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) if is_not_reading(&e) => return self.not_reading(),
                Ok(Err(e)) => {
                    debug!(%e, "device socket write failed");
                    return End::Broken;
                }
                Err(_) => {
                    debug!("device stopped reading its acks; dropping it");
                    return End::Broken;
                }
            }
            if !reading && replies.is_empty() {
                return close.map_or(End::PeerClosed, End::Close);
            }
            let waiting = match replies.front() {
                Some(Reply::Waiting { ordinal, .. }) => Some(*ordinal),
                _ => None,
            };
            // Silence only counts while the device owes nothing and is owed nothing.
            let idle_at = liveness
                .deadline()
                .filter(|_| reading && replies.is_empty());
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| self.acks.poll_answered(waiting.unwrap_or(u64::MAX), cx)), if waiting.is_some() => {
                    // `send_ready` at the top of the loop takes every answered reply.
                }
                () = shutdown.recv(), if reading => {
                    reading = false;
                    close = Some(CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() });
                }
                () = tokio::time::sleep_until(idle_at.unwrap_or_else(tokio::time::Instant::now)), if idle_at.is_some() => {
                    match liveness.due() {
                        Due::Ping => {
                            let ping = ws.send(Message::Ping(Bytes::new()));
                            match tokio::time::timeout(WRITE_TIMEOUT, ping).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) if is_not_reading(&e) => return self.not_reading(),
                                Ok(Err(_)) | Err(_) => return End::Broken,
                            }
                        }
                        Due::Idle => {
                            Metrics::inc(&self.shared.metrics.shed_idle);
                            info!(timeout = ?liveness.timeout(), "closing a silent device connection");
                            reading = false;
                            close = Some(CloseFrame { code: CloseCode::Away, reason: "idle timeout".into() });
                        }
                    }
                }
                frame = ws.next(), if reading && replies.len() < max_in_flight => match frame {
                    Some(Ok(Message::Text(text))) => {
                        liveness.heard();
                        replies.push_back(self.handle(&text));
                    }
                    Some(Ok(Message::Binary(_))) => {
                        liveness.heard();
                        self.shared.metrics.reject(RejectClass::Binary);
                        info!("device message rejected: binary frame");
                        let reply = ServerMessage::Error {
                            header: None,
                            reason: "binary frames are not accepted: send the JSON envelope as a text frame".to_owned(),
                        };
                        replies.push_back(Reply::Ready(reply.to_frame().into()));
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        // The peer is leaving: writes already queued still complete, but there
                        // is nobody left to ack.
                        return End::PeerClosed;
                    }
                    Some(Ok(Message::Ping(_))) => {
                        // Answered by tungstenite; a peer that pings but never reads the pongs
                        // is dropped before they pile up.
                        liveness.heard();
                        match liveness.peer_pinged(ws) {
                            Ok(true) => {}
                            Ok(false) => return self.not_reading(),
                            Err(e) => {
                                debug!(%e, "device socket write failed");
                                return End::Broken;
                            }
                        }
                    }
                    Some(Ok(_)) => liveness.heard(), // pong
                    Some(Err(WsError::Capacity(e))) => {
                        self.shared.metrics.reject(RejectClass::Oversize);
                        debug!(%e, "device frame too large");
                        reading = false;
                        close = Some(CloseFrame { code: CloseCode::Size, reason: "frame too large".into() });
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        reading = false;
                        close = Some(CloseFrame { code: CloseCode::Invalid, reason: "text frame is not UTF-8".into() });
                    }
                    Some(Err(e)) => {
                        debug!(%e, "device socket read failed");
                        return End::Broken;
                    }
                },
            }
        }
    }

    /// The device does not read what the server sends: drop it.
    fn not_reading(&self) -> End {
        Metrics::inc(&self.shared.metrics.shed_not_reading);
        info!("dropping a device connection that does not read (its write buffer is full)");
        End::Broken
    }

    /// Send every reply at the front of the queue that is known, then flush once.
    async fn send_ready<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        replies: &mut VecDeque<Reply>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut sent = false;
        let mut answered = self.acks.answered();
        loop {
            // Acks that completed meanwhile are taken without another trip through the loop.
            if let Some(Reply::Waiting { ordinal, .. }) = replies.front() {
                let ordinal = *ordinal;
                if ordinal > answered {
                    answered = self.acks.answered();
                    if ordinal > answered {
                        break;
                    }
                }
                let ack = self.acks.result(ordinal);
                self.resolve_front(replies, ack);
            }
            match replies.front() {
                Some(Reply::Ready(_)) => {
                    if let Some(Reply::Ready(frame)) = replies.pop_front() {
                        ws.feed(Message::Text(frame)).await?;
                        sent = true;
                    }
                }
                _ => break,
            }
        }
        if sent {
            ws.flush().await?;
        }
        Ok(())
    }

    /// Turn the front `Waiting` reply into the `Ready` frame for its ack.
    fn resolve_front(&self, replies: &mut VecDeque<Reply>, ack: Ack) {
        let Some(Reply::Waiting { header, kind, .. }) = replies.pop_front() else {
            return;
        };
        let metrics = &self.shared.metrics;
        let frame = match ack {
            Ok(()) => {
                Metrics::inc(&metrics.acks);
                Metrics::inc(if kind == Kind::Init {
                    &metrics.accepted_init
                } else {
                    &metrics.accepted_updt
                });
                ServerMessage::Ok(header).to_frame()
            }
            Err(refusal) => {
                metrics.reject(match refusal {
                    Refusal::Store => RejectClass::Storage,
                    Refusal::RecordTooLarge { .. } | Refusal::TooManyExtras { .. } => {
                        RejectClass::Limit
                    }
                });
                info!(%header, reason = %refusal, "device message refused");
                ServerMessage::Error {
                    header: Some(header),
                    reason: refusal.to_string(),
                }
                .to_frame()
            }
        };
        replies.push_front(Reply::Ready(frame.into()));
    }

    /// Parse one text frame and queue it for the writer; the reply it is owed.
    fn handle(&mut self, text: &str) -> Reply {
        let message = match smart_proto::parse_device_message(text) {
            Ok(message) => message,
            Err(rejection) => return self.reject(&rejection),
        };
        let shared = self.shared;
        let serial = &message.header.serial;
        let attach = !self.attached.contains(serial);
        let max_serials = shared.config.max_serials_per_connection;
        if attach && self.attached.len() >= max_serials {
            shared.metrics.reject(RejectClass::Serials);
            info!(header = %message.header, max_serials, "device message rejected: too many serials on one connection");
            let reply = ServerMessage::Error {
                header: Some(message.header),
                reason: format!(
                    "this connection already carries {max_serials} serials (--max-serials-per-connection): send for more serials over another connection"
                ),
            };
            return Reply::Ready(reply.to_frame().into());
        }
        let limits = smart_proto::Limits {
            max_extras: shared.config.max_extras,
            max_extra_bytes: shared.config.max_extra_bytes,
        };
        if let Err(e) = limits.check(&message.update) {
            let rejection = Rejection {
                header: Some(message.header),
                error: e,
            };
            return self.reject(&rejection);
        }
        if let Err(e) = shared.fleet.admit(serial) {
            shared.metrics.reject(RejectClass::Unregistered);
            info!(header = %message.header, reason = %e, "device message rejected");
            let reply = ServerMessage::Error {
                header: Some(message.header),
                reason: e.to_string(),
            };
            return Reply::Ready(reply.to_frame().into());
        }
        let ordinal = self.submitted + 1;
        let job = Job::Write(Box::new(Write {
            header: message.header.clone(),
            update: message.update,
            now: now(),
            ack: AckTicket::new(Arc::clone(&self.acks), ordinal),
        }));
        if attach {
            // The first message of this connection for the serial: counted under the same lock
            // that queues the device's "offline", so the two can never be queued swapped.
            shared.fleet.attach(serial, || shared.ingest.submit(job));
            self.attached.insert(serial.clone());
        } else {
            shared.ingest.submit(job);
        }
        self.submitted = ordinal;
        Reply::Waiting {
            header: message.header,
            kind: message.kind,
            ordinal,
        }
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let class = RejectClass::of(&rejection.error);
        self.shared.metrics.reject(class);
        if let Some(header) = &rejection.header {
            info!(%header, reason = %rejection.error, "device message rejected");
        } else {
            info!(reason = %rejection.error, "device message rejected");
        }
        Reply::Ready(rejection.reply().into())
    }

    /// The connection is over: it no longer keeps its devices online.
    fn detach_all(&mut self) {
        let shared = self.shared;
        for serial in self.attached.drain() {
            shared.fleet.detach(&serial, |last| {
                if last {
                    // Through the writer, so it is applied after this device's pending writes.
                    shared.ingest.submit(Job::Offline(serial.clone()));
                }
            });
        }
    }
}
