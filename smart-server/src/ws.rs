//! Websocket plumbing both sessions (`device`, `dashboard`) share: how a session ends ([`End`]), the
//! close frames the server sends, the time a closing handshake may take, and the write timeout after
//! which a peer that accepts nothing is dropped. For the dashboard, which speaks through tungstenite
//! (devices have their own codec, `device/codec.rs`): what a frame read is ([`Frame`]) and the closing
//! handshake ([`finish`]).
//!
//! One rule for both kinds of peer: a text frame that is not UTF-8 closes that connection with 1007
//! (RFC 6455 §8.1; PROTOCOL.md, "Frames"), after the replies it is owed; no other connection is touched.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// How long a closing handshake may take before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A peer that accepts nothing for this long has stopped reading (its socket buffers are full): it
/// is dropped.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one read from the peer gave, as the sessions act on it.
pub(crate) enum Frame {
    /// A text message (a device message, or a dashboard's FILT).
    Text(Utf8Bytes),
    /// A binary message: answered with an ERROR, the connection stays open.
    Binary,
    /// A ping: tungstenite queues the pong.
    Ping,
    /// A pong (or a raw frame): only proves the peer is alive.
    Pong,
    /// The peer sent a close frame, or the stream ended.
    Closed,
    /// A frame or message over `--max-frame-bytes`: close with 1009.
    TooLarge,
    /// A text frame that is not UTF-8: close with 1007.
    NotUtf8,
    /// The socket failed; nothing more can be sent.
    Failed(WsError),
}

impl Frame {
    /// Classify what `WebSocketStream::next` returned.
    #[inline]
    pub(crate) fn of(read: Option<Result<Message, WsError>>) -> Frame {
        match read {
            Some(Ok(Message::Text(text))) => Frame::Text(text),
            Some(Ok(Message::Binary(_))) => Frame::Binary,
            Some(Ok(Message::Ping(_))) => Frame::Ping,
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Frame::Pong,
            Some(Ok(Message::Close(_))) | None => Frame::Closed,
            Some(Err(WsError::Capacity(_))) => Frame::TooLarge,
            Some(Err(WsError::Utf8(_))) => Frame::NotUtf8,
            Some(Err(e)) => Frame::Failed(e),
        }
    }
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

/// 1001: the server is shutting down.
pub(crate) fn shutting_down() -> CloseFrame {
    away("server shutting down")
}

/// 1008: the device token of the connection was revoked or replaced.
pub(crate) fn token_revoked() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Policy,
        reason: "device token revoked".into(),
    }
}

/// 1001: the peer was silent for longer than `--idle-timeout-secs`.
pub(crate) fn idle_timeout() -> CloseFrame {
    away("idle timeout")
}

fn away(reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Away,
        reason: reason.into(),
    }
}

/// 1009: a frame over `--max-frame-bytes`.
pub(crate) fn too_large() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Size,
        reason: "frame too large".into(),
    }
}

/// 1007: a text frame that is not UTF-8.
pub(crate) fn not_utf8() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Invalid,
        reason: "text frame is not UTF-8".into(),
    }
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
