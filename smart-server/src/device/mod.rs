//! The `/update/` session: the socket and the reply order. Each text frame goes to the connection's
//! [`Intake`] (parse, admission, queue for the writer: [`crate::ingest`]); its reply, an ERROR now
//! or an OK/ERROR once the writer answered, leaves in arrival order.
//!
//! A connection may have several messages waiting for their group commit at once (up to
//! `--max-in-flight`); their replies, OK or ERROR, leave in the order the frames arrived. An ERROR for
//! a bad frame therefore waits behind the OKs of earlier good frames, and nothing of the bad frame is
//! applied.
//!
//! A plain-TCP connection is parked (`park.rs`) right after its welcome, and again once silent for
//! `--park-after` with nothing in flight: its task ends, its buffers are freed and its socket leaves
//! the runtime; what is left is its session state in the lot's slab, a few hundred bytes. The lot's
//! thread serves a parked connection's simple frames itself (`attend.rs`: whole text frames, pings,
//! pongs; their replies written when the writer answers), so a device that only reports never needs
//! a task. Anything else (a frame in pieces, a close, a reply the socket cannot take at once), its
//! liveness deadline, a revoked token or shutdown brings it back as a new task, where the session
//! goes on as before.

mod attend;
mod codec;
mod park;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::FutureExt as _;
use smart_proto::{DEVICE_WELCOME, Header, Kind, ServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::{debug, info, warn};

use crate::acks::{Ack, AckQueue, Refusal};
use crate::auth::{Grant, Revoked};
use crate::conns::Slot;
use crate::ingest::{Intake, ParkedIntake, Queued};
use crate::liveness::{CONTROL_ROOM, Due, Liveness};
use crate::metrics::{Metrics, RejectClass};
use crate::shutdown::{Shutdown, TaskToken};
use crate::state::{Shared, SocketSlot};
use crate::ws::{self, CLOSE_GRACE, End, WRITE_TIMEOUT};
use codec::{Event, Inbound, Outbound, Violation};

/// Room for unsent replies beyond the largest one: a device that lets more pile up does not read.
const WRITE_ROOM: usize = 64 * 1024;

/// A device connection's socket: plain TCP (which can be parked) or TLS (which cannot: its session
/// state lives in rustls and its task).
pub(crate) trait DeviceIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether an idle connection over this socket can be parked.
    const PARKS: bool;
    /// The socket, out of the runtime (only called when [`DeviceIo::PARKS`]).
    fn into_std(self) -> io::Result<std::net::TcpStream>;
}

impl DeviceIo for TcpStream {
    const PARKS: bool = true;
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        TcpStream::into_std(self)
    }
}

impl DeviceIo for Box<crate::tls::TlsSocket> {
    const PARKS: bool = false;
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        Err(io::Error::other("TLS connections are not parked"))
    }
}

/// What a device connection holds until it closes: its places in the budgets, and the token that
/// keeps shutdown waiting for it.
#[allow(dead_code, reason = "held for what dropping them does")]
pub(crate) struct Held {
    pub(crate) token: TaskToken,
    pub(crate) slot: SocketSlot,
    pub(crate) socket: Arc<Slot>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

/// A reply owed to the device, in arrival order.
#[derive(Debug)]
enum Reply {
    /// Known now (an ERROR).
    Ready(String),
    /// OK once the group commit covering the write is done: the session's write number
    /// `ordinal` (see [`AckQueue`]).
    Waiting {
        header: Header,
        kind: Kind,
        ordinal: u64,
    },
}

/// The parking lots of device connections (cheap to clone): `--device-threads` of them.
#[derive(Debug, Clone)]
pub(crate) struct Parking {
    lots: Arc<Lots>,
}

#[derive(Debug)]
struct Lots {
    lots: Vec<park::Lot<Parked>>,
    /// Where the next connection parks: the lots in turn.
    next: AtomicUsize,
}

impl Parking {
    /// The lot the next connection to park goes to.
    fn lot(&self) -> &park::Lot<Parked> {
        let lots = &self.lots.lots;
        &lots[self.lots.next.fetch_add(1, Ordering::Relaxed) % lots.len()]
    }
}

/// Start the parking lots; `None` (connections then stay in their tasks) if a thread cannot start.
pub(crate) fn parking(shared: &Arc<Shared>, shutdown: &Shutdown) -> Option<Parking> {
    if shared.config.park_after_ms == 0 {
        return None;
    }
    let idle = Duration::from_secs(shared.config.idle_timeout_secs);
    // Liveness deadlines (and revoked tokens) of parked connections are checked this often: an
    // eighth of the idle timeout, between 50 ms and 1 s (1 s without a timeout).
    let scan = if idle.is_zero() {
        Duration::from_secs(1)
    } else {
        (idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
    };
    // Weak handles: the lots' threads (which own their keepers) must not keep the server's state,
    // or the lots themselves, alive once the server is gone.
    let itself: Arc<OnceLock<Weak<Lots>>> = Arc::new(OnceLock::new());
    let mut lots = Vec::new();
    for _ in 0..shared.config.device_threads.max(1) {
        let keeper = attend::Attendant::new(
            Arc::downgrade(shared),
            shutdown.clone(),
            tokio::runtime::Handle::current(),
            Arc::clone(&itself),
            shared.config.max_frame_bytes,
        );
        match park::Lot::start(scan, keeper) {
            Ok(lot) => lots.push(lot),
            Err(e) => {
                warn!(%e, "cannot start a parking lot: idle device connections keep their tasks");
                for lot in &lots {
                    lot.shut();
                }
                return None;
            }
        }
    }
    let parking = Parking {
        lots: Arc::new(Lots {
            lots,
            next: AtomicUsize::new(0),
        }),
    };
    let _ = itself.set(Arc::downgrade(&parking.lots));
    let (mut shutdown, lots) = (shutdown.clone(), Arc::downgrade(&parking.lots));
    tokio::spawn(async move {
        shutdown.recv().await;
        if let Some(lots) = lots.upgrade() {
            for lot in &lots.lots {
                lot.shut();
            }
        }
    });
    Some(parking)
}

/// What a session keeps from one active spell to the next.
#[derive(Debug)]
struct Kept {
    intake: ParkedIntake,
    liveness: Liveness,
    /// Set when the connection's device token is revoked or replaced (`--auth required`).
    revoked: Option<Revoked>,
    /// Replies owed, in arrival order (only while the lot's thread serves the connection).
    replies: VecDeque<Reply>,
}

/// A parked connection: its socket, its places in the budgets and what its session keeps.
#[derive(Debug)]
struct Parked {
    socket: mio::net::TcpStream,
    held: Held,
    kept: Kept,
    /// What the lot's thread read and did not take, or could not write, when the connection left it.
    handover: Option<Box<Handover>>,
}

/// Bytes a connection leaving the lot carries to its task.
#[derive(Debug)]
struct Handover {
    /// Read and not taken (the task's codec reads them first).
    unread: Vec<u8>,
    /// Formatted and not written (the task writes them first).
    unsent: Vec<u8>,
}

impl park::Park for Parked {
    fn socket(&mut self) -> &mut mio::net::TcpStream {
        &mut self.socket
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.kept.liveness.deadline().map(Instant::into_std)
    }

    fn must_wake(&mut self) -> bool {
        self.kept.revoked.as_ref().is_some_and(Revoked::is_revoked)
    }
}

/// Serve one device connection until it closes or the server shuts down. `preread`: bytes read
/// past the upgrade request.
pub(crate) fn session<T: DeviceIo>(
    io: T,
    preread: Vec<u8>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    grant: Option<Grant>,
    held: Held,
    parking: Option<Parking>,
) -> impl Future<Output = ()> {
    Metrics::inc(&shared.metrics.device_connections);
    let (binding, revoked) = match grant {
        Some(Grant {
            serial,
            owner,
            revoked,
        }) => (Some((serial, owner)), Some(revoked)),
        None => (None, None),
    };
    let mut conn = Conn::new(io, &shared);
    conn.inbound.preload(preread);
    let welcome = ServerMessage::Info(DEVICE_WELCOME.to_owned()).to_frame();
    // The write buffer is empty and far larger than the welcome: this cannot be refused.
    let _ = conn.outbound.text(&welcome);
    let kept = Kept {
        intake: ParkedIntake::new(binding),
        liveness: Liveness::new(Duration::from_secs(shared.config.idle_timeout_secs)),
        revoked,
        replies: VecDeque::new(),
    };
    // A new connection parks once welcomed (unless its first bytes came with the upgrade request):
    // the lot serves a reporting device, and after a restart, when every device reconnects at once,
    // no storm of tasks holds memory (the peak of such a storm stays in the allocator).
    live(conn, shared, kept, shutdown, held, parking, Fresh::Yes)
}

/// A parked connection is back (called on the lot's thread, inside the runtime's context): serve
/// it on in a new task.
fn resume(parked: Box<Parked>, shared: Arc<Shared>, shutdown: Shutdown, parking: Option<Parking>) {
    let Parked {
        socket,
        held,
        kept,
        handover,
    } = *parked;
    match TcpStream::from_std(socket.into()) {
        Ok(io) => {
            let mut conn = Conn::new(io, &shared);
            if let Some(handover) = handover {
                conn.inbound.preload(handover.unread);
                conn.outbound.preload(&handover.unsent);
            }
            tokio::spawn(live(conn, shared, kept, shutdown, held, parking, Fresh::No));
        }
        Err(e) => {
            debug!(%e, "cannot resume a parked device connection");
            parked_end(&shared, kept.intake);
        }
    }
}

/// Serve a spell (the welcome first, if one is queued) until the connection closes (then close it)
/// or is idle (then park it).
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn` keeps
/// its arguments in the task's future twice (as arguments and as the locals they are moved into).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in the future"
)]
fn live<T: DeviceIo>(
    mut conn: Conn<T>,
    shared: Arc<Shared>,
    kept: Kept,
    mut shutdown: Shutdown,
    held: Held,
    parking: Option<Parking>,
    fresh: Fresh,
) -> impl Future<Output = ()> {
    async move {
        let mut state = Session {
            shared: &shared,
            intake: shared.resume_intake(kept.intake),
            liveness: kept.liveness,
            revoked: kept.revoked,
            scratch: String::new(),
        };
        let mut replies = kept.replies;
        if !conn.outbound.is_empty()
            && !matches!(
                tokio::time::timeout(WRITE_TIMEOUT, conn.flush()).await,
                Ok(Ok(()))
            )
        {
            return close(conn, state, End::Broken).await;
        }
        let parks = T::PARKS && parking.is_some();
        // A new connection goes to the lot as soon as it is welcomed, even if its first frame is
        // there already: the lot serves it (and, as long as it only reports, everything after).
        let step = if parks && fresh == Fresh::Yes && conn.inbound.is_clean() {
            Step::Park
        } else {
            let step = state
                .serve(&mut conn, &mut shutdown, &mut replies, parks, fresh)
                .await;
            if matches!(step, Step::Park) {
                conn.inbound.release();
                conn.outbound.release();
            }
            step
        };
        let end = match step {
            Step::End(end) => end,
            Step::Park => match conn.io.into_std() {
                Ok(socket) => {
                    let parked = Box::new(Parked {
                        socket: mio::net::TcpStream::from_std(socket),
                        held,
                        kept: Kept {
                            intake: state.intake.park_idle(),
                            liveness: state.liveness,
                            revoked: state.revoked,
                            replies,
                        },
                        handover: None,
                    });
                    Metrics::inc(&shared.metrics.device_parked);
                    if let Some(Err(parked)) = parking.map(|p| p.lot().park(parked)) {
                        // The lot's thread is gone: the connection can only close.
                        Metrics::dec(&shared.metrics.device_parked);
                        warn!("the parking lot is gone; closing an idle device connection");
                        parked_end(&shared, parked.kept.intake);
                    }
                    return;
                }
                Err(e) => {
                    debug!(%e, "cannot park a device connection");
                    return state.end();
                }
            },
        };
        close(conn, state, end).await;
    }
}

/// Close the connection for `end`, then let go of its serials.
async fn close<T: DeviceIo>(mut conn: Conn<T>, state: Session<'_>, end: End) {
    conn.finish(end).await;
    state.end();
}

fn intake_end(shared: &Shared, mut intake: Intake<'_>) {
    intake.detach_all();
    Metrics::dec(&shared.metrics.device_connections);
}

/// A connection that cannot go on from where it was parked is gone: let go of its serials.
fn parked_end(shared: &Shared, intake: ParkedIntake) {
    intake_end(shared, shared.resume_intake(intake));
}

/// Whether a connection has just been welcomed (it may park at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    Yes,
    No,
}

/// How a session's active spell ended.
enum Step {
    End(End),
    /// Idle with nothing in flight: park it.
    Park,
}

/// Resolves when the token behind `revoked` is revoked or replaced (never for `None`).
async fn token_revoked(revoked: Option<&Revoked>) {
    match revoked {
        Some(revoked) => revoked.wait().await,
        None => std::future::pending().await,
    }
}

/// The socket with the frames read from it and those to write to it.
struct Conn<T> {
    io: T,
    inbound: Inbound,
    outbound: Outbound,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    fn new(io: T, shared: &Shared) -> Conn<T> {
        let max = shared.config.max_frame_bytes;
        Conn {
            io,
            inbound: Inbound::new(max),
            // The largest reply echoes at most a frame's header and adds a reason.
            outbound: Outbound::new(max.saturating_mul(2) + WRITE_ROOM),
        }
    }

    /// Read more bytes (cancel-safe: nothing read is lost if the future is dropped).
    async fn fill(&mut self) -> io::Result<usize> {
        self.io.read_buf(self.inbound.space()).await
    }

    /// Write everything queued.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.outbound.is_empty() {
            let n = self.io.write(self.outbound.bytes()).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.outbound.written(n);
        }
        self.io.flush().await
    }

    /// One attempt to write what is queued without waiting: whether all of it went out.
    fn try_flush(&mut self) -> io::Result<bool> {
        match self.flush().now_or_never() {
            Some(result) => result.map(|()| true),
            None => Ok(false),
        }
    }

    /// Complete the closing handshake for `end`, within [`CLOSE_GRACE`] (then shut the socket's
    /// writing side down).
    async fn finish(&mut self, end: End) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            match end {
                End::Broken => {}
                // The close reply, if one is owed, is queued already.
                End::PeerClosed => {
                    let _ = self.flush().await;
                }
                End::Close(frame) => {
                    if self.outbound.close(Some(&frame)).is_err() || self.flush().await.is_err() {
                        return;
                    }
                    // Read on until the peer's close frame, or the end of the stream.
                    loop {
                        loop {
                            match self.inbound.next() {
                                Ok(Some(Event::Close(_))) | Err(_) => return,
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                            }
                        }
                        match self.fill().await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                }
            }
        })
        .await;
        let _ = self.io.shutdown().now_or_never();
    }
}

struct Session<'a> {
    shared: &'a Shared,
    /// This connection's side of the ingest path (its serials, its writes and their answers).
    intake: Intake<'a>,
    liveness: Liveness,
    /// Set when the connection's device token is revoked or replaced (`--auth required`).
    revoked: Option<Revoked>,
    /// Where acks are written before they are framed (kept for the spell: no allocation per ack).
    scratch: String,
}

/// What to do after a frame.
enum Then {
    Go,
    Stop(Option<CloseFrame>),
    End(End),
}

impl Session<'_> {
    /// The connection is gone: let go of its serials.
    fn end(self) {
        intake_end(self.shared, self.intake);
    }

    /// The read/ack loop, until the connection ends or (`parks`) is idle long enough to park.
    async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        shutdown: &mut Shutdown,
        replies: &mut VecDeque<Reply>,
        parks: bool,
        fresh: Fresh,
    ) -> Step {
        let max_in_flight = self.shared.config.max_in_flight.max(1);
        let park_after = Duration::from_millis(self.shared.config.park_after_ms);
        let mut reading = true;
        let mut close = None;
        // The last sign of activity: the spell's start (long ago for a fresh connection, which
        // parks at once when nothing is there to read), a frame, a reply or a ping sent.
        let now = Instant::now();
        let mut active_at = match fresh {
            Fresh::Yes => now.checked_sub(park_after).unwrap_or(now),
            Fresh::No => now,
        };
        // One timer for the whole spell (liveness and parking), moved as the deadline moves: a
        // later deadline only updates the registered entry, where a timer created per turn of the
        // loop would be registered and cancelled around every message.
        let idle = tokio::time::sleep_until(active_at + park_after);
        tokio::pin!(idle);
        loop {
            // Most turns of this loop (a frame just arrived) have nothing to send: skip the timer.
            let sendable = match replies.front() {
                Some(Reply::Ready(_)) => true,
                Some(Reply::Waiting { ordinal, .. }) => *ordinal <= self.acks().answered(),
                None => false,
            };
            if sendable {
                active_at = Instant::now();
                match tokio::time::timeout(WRITE_TIMEOUT, self.send_ready(conn, replies)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Step::End(self.not_reading()),
                    Ok(Err(e)) => {
                        debug!(%e, "device socket write failed");
                        return Step::End(End::Broken);
                    }
                    Err(_) => {
                        debug!("device stopped reading its acks; dropping it");
                        return Step::End(End::Broken);
                    }
                }
            }
            if !reading && replies.is_empty() {
                return Step::End(close.map_or(End::PeerClosed, End::Close));
            }
            // Frames already read go first (one per turn, so that replies leave in between).
            if reading && replies.len() < max_in_flight {
                let taken = self.take_frame(conn, replies);
                if taken.is_some() {
                    active_at = Instant::now();
                }
                match taken {
                    None => {}
                    Some(Then::Go) => continue,
                    Some(Then::Stop(frame)) => {
                        reading = false;
                        close = frame;
                        continue;
                    }
                    Some(Then::End(end)) => return Step::End(end),
                }
            }
            let waiting = match replies.front() {
                Some(Reply::Waiting { ordinal, .. }) => Some(*ordinal),
                _ => None,
            };
            // Silence only counts while the device owes nothing and is owed nothing.
            let quiet = reading && replies.is_empty();
            let idle_at = quiet.then(|| {
                let live = self.liveness.deadline();
                let park = parks.then(|| active_at + park_after);
                match (live, park) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            });
            let idle_at = idle_at.flatten();
            if let Some(at) = idle_at
                && idle.deadline() != at
            {
                idle.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| self.intake.acks().poll_answered(waiting.unwrap_or(u64::MAX), cx)), if waiting.is_some() => {
                    // `send_ready` at the top of the loop takes every answered reply.
                }
                () = shutdown.recv(), if reading => {
                    reading = false;
                    close = Some(ws::shutting_down());
                }
                () = token_revoked(self.revoked.as_ref()), if reading && self.revoked.is_some() => {
                    // Replies to what was read still go out; nothing more is read.
                    self.revoked = None;
                    info!("closing a device connection: its token was revoked");
                    reading = false;
                    close = Some(ws::token_revoked());
                }
                read = conn.fill(), if reading && replies.len() < max_in_flight => match read {
                    Ok(0) => {
                        // The peer is leaving: writes already queued still complete, but there
                        // is nobody left to ack.
                        return Step::End(if conn.inbound.is_clean() { End::PeerClosed } else { End::Broken });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(%e, "device socket read failed");
                        return Step::End(End::Broken);
                    }
                },
                () = &mut idle, if idle_at.is_some() => {
                    let live_due = self.liveness.deadline().is_some_and(|at| at <= Instant::now());
                    if !live_due {
                        if parks && conn.inbound.is_clean() && conn.outbound.is_empty() {
                            return Step::Park;
                        }
                        // Something is half read or unsent: wait for it a spell more.
                        active_at = Instant::now();
                        continue;
                    }
                    match self.liveness.due() {
                        Due::Ping => {
                            active_at = Instant::now();
                            if conn.outbound.ping().is_err() {
                                return Step::End(self.not_reading());
                            }
                            match tokio::time::timeout(WRITE_TIMEOUT, conn.flush()).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) | Err(_) => return Step::End(End::Broken),
                            }
                        }
                        Due::Idle => {
                            Metrics::inc(&self.shared.metrics.shed_idle);
                            info!(timeout = ?self.liveness.timeout(), "closing a silent device connection");
                            reading = false;
                            close = Some(ws::idle_timeout());
                        }
                    }
                }
            }
        }
    }

    /// Act on the next whole frame already read, if any.
    fn take_frame<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        replies: &mut VecDeque<Reply>,
    ) -> Option<Then> {
        let event = match conn.inbound.next() {
            Ok(None) => return None,
            Ok(Some(event)) => event,
            Err(Violation::TooLarge { size, max }) => {
                self.shared.metrics.reject(RejectClass::Oversize);
                debug!(size, max, "device frame too large");
                return Some(Then::Stop(Some(ws::too_large())));
            }
            Err(Violation::NotUtf8) => {
                info!("closing a device connection: text frame is not UTF-8");
                return Some(Then::Stop(Some(ws::not_utf8())));
            }
            Err(Violation::Protocol(why)) => {
                debug!(why, "device broke the websocket protocol");
                return Some(Then::End(End::Broken));
            }
        };
        self.liveness.heard();
        Some(match event {
            Event::Text(text) => {
                let reply = handle(&mut self.intake, text);
                replies.push_back(reply);
                Then::Go
            }
            Event::Binary => {
                self.shared.metrics.reject(RejectClass::Binary);
                info!("device message rejected: binary frame");
                let reply = ServerMessage::Error {
                    header: None,
                    reason:
                        "binary frames are not accepted: send the JSON envelope as a text frame"
                            .to_owned(),
                };
                replies.push_back(Reply::Ready(reply.to_frame()));
                Then::Go
            }
            Event::Ping(payload) => {
                // A peer that pings but never reads the pongs is dropped before they pile up.
                let payload = payload.to_vec();
                let queued =
                    conn.outbound.len() <= CONTROL_ROOM && conn.outbound.pong(&payload).is_ok();
                let written = match conn.try_flush() {
                    Ok(written) => queued && written,
                    Err(e) => {
                        debug!(%e, "device socket write failed");
                        return Some(Then::End(End::Broken));
                    }
                };
                if self.liveness.pong_written(written) {
                    Then::Go
                } else {
                    Then::End(self.not_reading())
                }
            }
            Event::Pong => Then::Go,
            Event::Close(reply) => {
                // The peer is leaving: its close is answered, and nobody is left to ack.
                let _ = conn.outbound.close(reply.as_ref());
                Then::End(End::PeerClosed)
            }
        })
    }

    /// The device does not read what the server sends: drop it.
    fn not_reading(&self) -> End {
        Metrics::inc(&self.shared.metrics.shed_not_reading);
        info!("dropping a device connection that does not read (its write buffer is full)");
        End::Broken
    }

    /// Send every reply at the front of the queue that is known, then flush once. `false`: the
    /// device does not read (its unsent replies fill the write buffer).
    async fn send_ready<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        replies: &mut VecDeque<Reply>,
    ) -> io::Result<bool> {
        let queued = queue_ready(
            replies,
            self.intake.acks(),
            &self.shared.metrics,
            &mut self.scratch,
            &mut conn.outbound,
        );
        if queued.is_err() {
            return Ok(false);
        }
        conn.flush().await?;
        Ok(true)
    }

    /// The answers to this connection's writes.
    fn acks(&self) -> &AckQueue {
        self.intake.acks()
    }
}

/// Hand one text frame to the ingest path; the reply it is owed.
fn handle(intake: &mut Intake<'_>, text: &str) -> Reply {
    match intake.submit(text) {
        Ok(Queued {
            header,
            kind,
            ordinal,
        }) => Reply::Waiting {
            header,
            kind,
            ordinal,
        },
        Err(frame) => Reply::Ready(frame),
    }
}

/// Queue every reply at the front of `replies` that is known (an ERROR, or a write `acks` has
/// answered) into `out`, in order; an OK is framed in `scratch` (no allocation). `Err`: `out` is
/// full (the device does not read).
fn queue_ready(
    replies: &mut VecDeque<Reply>,
    acks: &AckQueue,
    metrics: &Metrics,
    scratch: &mut String,
    out: &mut Outbound,
) -> Result<(), codec::Full> {
    let mut answered = acks.answered();
    loop {
        match replies.front() {
            // Acks that completed meanwhile are taken without another trip through the loop.
            Some(Reply::Waiting { ordinal, .. }) => {
                let ordinal = *ordinal;
                if ordinal > answered {
                    answered = acks.answered();
                    if ordinal > answered {
                        return Ok(());
                    }
                }
                let Some(Reply::Waiting { header, kind, .. }) = replies.pop_front() else {
                    return Ok(());
                };
                scratch.clear();
                answer(metrics, header, kind, acks.result(ordinal)).write_frame(scratch);
                out.text(scratch)?;
            }
            Some(Reply::Ready(_)) => {
                if let Some(Reply::Ready(frame)) = replies.pop_front() {
                    out.text(&frame)?;
                }
            }
            None => return Ok(()),
        }
    }
}

/// The answer to a write the writer answered with `ack` (counted).
fn answer(metrics: &Metrics, header: Header, kind: Kind, ack: Ack) -> ServerMessage {
    match ack {
        Ok(()) => {
            Metrics::inc(&metrics.acks);
            Metrics::inc(if kind == Kind::Init {
                &metrics.accepted_init
            } else {
                &metrics.accepted_updt
            });
            ServerMessage::Ok(header)
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
        }
    }
}
