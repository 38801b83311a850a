//! The `/update/` session: the socket and the reply order. Each text frame goes to the connection's
//! [`Intake`] (parse, admission, queue for the writer: [`crate::ingest`]); its reply, an ERROR now
//! or an OK/ERROR once the writer answered, leaves in arrival order.
//!
//! A connection may have several messages waiting for their group commit at once (up to
//! `--max-in-flight`); their replies, OK or ERROR, leave in the order the frames arrived. An ERROR for
//! a bad frame therefore waits behind the OKs of earlier good frames, and nothing of the bad frame is
//! applied.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use smart_proto::{DEVICE_WELCOME, Header, Kind, ServerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::acks::{Ack, AckQueue, Refusal};
use crate::auth::Grant;
use crate::ingest::{Intake, Queued};
use crate::liveness::{Due, Liveness, is_not_reading};
use crate::metrics::{Metrics, RejectClass};
use crate::shutdown::Shutdown;
use crate::state::Shared;
use crate::ws::{self, End, Frame, WRITE_TIMEOUT, finish};

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

fn info_text(text: String) -> Message {
    Message::Text(Utf8Bytes::from(text))
}

/// Serve one device connection until it closes or the server shuts down.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn` keeps
/// its arguments in the session's future twice (as arguments and as the locals they are moved
/// into), ~420 bytes more per connection, idle or not.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in the future"
)]
pub(crate) fn session<S>(
    mut ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
    grant: Option<Grant>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        Metrics::inc(&shared.metrics.device_connections);
        let mut state = Session {
            shared: &shared,
            intake: shared.intake(),
        };
        let mut revoked = None;
        if let Some(Grant {
            serial,
            owner,
            revoked: watch,
        }) = grant
        {
            state.intake.bind(serial, owner);
            revoked = Some(watch);
        }
        let welcome = ServerMessage::Info(DEVICE_WELCOME.to_owned()).to_frame();
        let end = match ws.send(info_text(welcome)).await {
            Ok(()) => state.serve(&mut ws, &mut shutdown, &mut revoked).await,
            Err(_) => End::Broken,
        };
        finish(&mut ws, end).await;
        state.intake.detach_all();
        Metrics::dec(&shared.metrics.device_connections);
    }
}

/// Resolves when the token behind `revoked` is revoked or replaced (never for `None`).
async fn token_revoked(revoked: &mut Option<watch::Receiver<()>>) {
    match revoked {
        // Nothing is ever sent: the sender is dropped on revocation.
        Some(rx) => while rx.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

struct Session<'a> {
    shared: &'a Shared,
    /// This connection's side of the ingest path (its serials, its writes and their answers).
    intake: Intake<'a>,
}

impl Session<'_> {
    /// The read/ack loop.
    async fn serve<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        shutdown: &mut Shutdown,
        revoked: &mut Option<watch::Receiver<()>>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max_in_flight = self.shared.config.max_in_flight.max(1);
        let mut replies: VecDeque<Reply> = VecDeque::new();
        let mut reading = true;
        let mut close = None;
        let mut liveness = Liveness::new(Duration::from_secs(self.shared.config.idle_timeout_secs));
        // One idle timer for the whole session, moved as the deadline moves: a later deadline only
        // updates the registered entry (no lock, no re-insertion into the timer wheel), where a timer
        // created per turn of the loop would be registered and cancelled around every message.
        let idle = tokio::time::sleep_until(
            liveness
                .deadline()
                .unwrap_or_else(tokio::time::Instant::now),
        );
        tokio::pin!(idle);
        loop {
            // Most turns of this loop (a frame just arrived) have nothing to send: skip the timer.
            let sendable = match replies.front() {
                Some(Reply::Ready(_)) => true,
                Some(Reply::Waiting { ordinal, .. }) => *ordinal <= self.acks().answered(),
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
            if let Some(at) = idle_at
                && idle.deadline() != at
            {
                idle.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| self.acks().poll_answered(waiting.unwrap_or(u64::MAX), cx)), if waiting.is_some() => {
                    // `send_ready` at the top of the loop takes every answered reply.
                }
                () = shutdown.recv(), if reading => {
                    reading = false;
                    close = Some(ws::shutting_down());
                }
                () = token_revoked(revoked), if reading && revoked.is_some() => {
                    // Replies to what was read still go out; nothing more is read.
                    *revoked = None;
                    info!("closing a device connection: its token was revoked");
                    reading = false;
                    close = Some(ws::token_revoked());
                }
                () = &mut idle, if idle_at.is_some() => {
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
                            close = Some(ws::idle_timeout());
                        }
                    }
                }
                frame = ws.next(), if reading && replies.len() < max_in_flight => match Frame::of(frame) {
                    Frame::Text(text) => {
                        liveness.heard();
                        replies.push_back(self.handle(&text));
                    }
                    Frame::Binary => {
                        liveness.heard();
                        self.shared.metrics.reject(RejectClass::Binary);
                        info!("device message rejected: binary frame");
                        let reply = ServerMessage::Error {
                            header: None,
                            reason: "binary frames are not accepted: send the JSON envelope as a text frame".to_owned(),
                        };
                        replies.push_back(Reply::Ready(reply.to_frame().into()));
                    }
                    Frame::Closed => {
                        // The peer is leaving: writes already queued still complete, but there
                        // is nobody left to ack.
                        return End::PeerClosed;
                    }
                    Frame::Ping => {
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
                    Frame::Pong => liveness.heard(),
                    Frame::TooLarge(e) => {
                        self.shared.metrics.reject(RejectClass::Oversize);
                        debug!(%e, "device frame too large");
                        reading = false;
                        close = Some(ws::too_large());
                    }
                    Frame::NotUtf8 => {
                        info!("closing a device connection: text frame is not UTF-8");
                        reading = false;
                        close = Some(ws::not_utf8());
                    }
                    Frame::Failed(e) => {
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
        let mut answered = self.acks().answered();
        loop {
            // Acks that completed meanwhile are taken without another trip through the loop.
            if let Some(Reply::Waiting { ordinal, .. }) = replies.front() {
                let ordinal = *ordinal;
                if ordinal > answered {
                    answered = self.acks().answered();
                    if ordinal > answered {
                        break;
                    }
                }
                let ack = self.acks().result(ordinal);
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
                    Refusal::Store | Refusal::ClusterDown => RejectClass::Storage,
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

    /// The answers to this connection's writes.
    fn acks(&self) -> &AckQueue {
        self.intake.acks()
    }

    /// Hand one text frame to the ingest path; the reply it is owed.
    fn handle(&mut self, text: &str) -> Reply {
        match self.intake.submit(text) {
            Ok(Queued {
                header,
                kind,
                ordinal,
            }) => Reply::Waiting {
                header,
                kind,
                ordinal,
            },
            Err(frame) => Reply::Ready(frame.into()),
        }
    }
}
