//! Websocket liveness, shared by device and dashboard sessions: a silent peer is pinged after half
//! of `--idle-timeout` and closed at its end (any frame, a pong too, counts as a sign of life); a
//! peer that stops reading while it keeps sending pings is dropped before their pongs pile up; large
//! messages are sent in fragments so that the bounded write buffer always has room for them.

use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

/// Pings received in a row while the socket could not take their pongs before the peer counts as
/// not reading (their pongs are at most this many small frames).
const PONG_BACKLOG: u32 = 64;

/// Messages longer than this are sent as several frames of at most this size: so the bounded write
/// buffer of a dashboard (`http.rs`) never has to hold a large INIT or full record at once.
pub(crate) const FRAGMENT: usize = 16 * 1024;

/// Room in the write buffer beyond the flush threshold and the largest frame: for queued pongs and
/// a close frame.
pub(crate) const CONTROL_ROOM: usize = 16 * 1024;

/// What a passed [`Liveness::deadline`] calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Silent for half the timeout: send a ping.
    Ping,
    /// Silent for the whole timeout, ping unanswered: close.
    Idle,
}

/// The idle clock and ping bookkeeping of one websocket.
#[derive(Debug)]
pub(crate) struct Liveness {
    timeout: Option<Duration>,
    last: Instant,
    pinged: Option<Instant>,
    blocked_pings: u32,
}

impl Liveness {
    /// `timeout` zero disables the idle timeout.
    pub(crate) fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout: (!timeout.is_zero()).then_some(timeout),
            last: Instant::now(),
            pinged: None,
            blocked_pings: 0,
        }
    }

    /// The idle timeout in force.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// A frame arrived.
    pub(crate) fn heard(&mut self) {
        self.last = Instant::now();
        self.pinged = None;
    }

    /// When the next [`Due`] falls (`None`: never).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeout = self.timeout?;
        Some(match self.pinged {
            None => self.last + timeout / 2,
            Some(at) => (self.last + timeout).max(at + timeout / 2),
        })
    }

    /// The deadline has passed.
    pub(crate) fn due(&mut self) -> Due {
        if self.pinged.is_some() {
            Due::Idle
        } else {
            self.pinged = Some(Instant::now());
            Due::Ping
        }
    }

    /// The peer sent a ping (tungstenite has queued its pong). Whether the peer still reads:
    /// `false` once [`PONG_BACKLOG`] pings in a row found the socket unable to take the pongs.
    pub(crate) fn peer_pinged<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<bool, WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // One non-blocking attempt to write the pongs out.
        match ws.flush().now_or_never() {
            Some(Ok(())) => Ok(self.pong_written(true)),
            Some(Err(e)) => Err(e),
            None => Ok(self.pong_written(false)),
        }
    }

    /// The pong for a ping from the peer was written out (`written`), or could not be. Whether the
    /// peer still reads: `false` once [`PONG_BACKLOG`] pongs in a row could not be written.
    pub(crate) fn pong_written(&mut self, written: bool) -> bool {
        if written {
            self.blocked_pings = 0;
        } else {
            self.blocked_pings += 1;
        }
        self.blocked_pings < PONG_BACKLOG
    }
}

/// Whether a write failed because the peer does not read (the bounded write buffer is full).
pub(crate) fn is_not_reading(e: &WsError) -> bool {
    matches!(e, WsError::WriteBufferFull(_))
}

/// Queue a text message, in fragments of [`FRAGMENT`] bytes if it is longer.
pub(crate) async fn feed_text<S>(
    ws: &mut WebSocketStream<S>,
    text: Utf8Bytes,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if text.len() <= FRAGMENT {
        return ws.feed(Message::Text(text)).await;
    }
    let bytes = Bytes::from(text);
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + FRAGMENT).min(bytes.len());
        let opcode = if start == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(bytes.slice(start..end), opcode, end == bytes.len());
        ws.feed(Message::Frame(frame)).await?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_at_half_then_idle() {
        let secs = Duration::from_secs;
        let mut l = Liveness::new(secs(10));
        let start = l.last;
        assert_eq!(l.deadline(), Some(start + secs(5)));
        assert_eq!(l.due(), Due::Ping);
        let pinged = l.pinged.unwrap_or(start);
        assert_eq!(l.deadline(), Some((start + secs(10)).max(pinged + secs(5))));
        assert_eq!(l.due(), Due::Idle);
        l.heard();
        assert_eq!(l.deadline(), Some(l.last + secs(5)));
        assert_eq!(l.due(), Due::Ping);
        assert_eq!(Liveness::new(Duration::ZERO).deadline(), None);
    }
}
