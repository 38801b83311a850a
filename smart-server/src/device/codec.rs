//! The device websocket's frames (RFC 6455, server side), with every piece of state explicit: the
//! bytes of a frame not complete yet, a fragmented message being assembled, replies not written yet.
//! So a session can tell when nothing is in flight ([`Inbound::is_clean`], [`Outbound::is_empty`])
//! and hand its socket to the parking lot without a buffer (`park.rs`).
//!
//! Headers are parsed and formatted by tungstenite's frame API ([`FrameHeader`]); the rules are
//! tungstenite's for a server: client frames must be masked, no reserved bits or opcodes, control
//! frames final and at most 125 bytes, continuations only inside a fragmented message, a close
//! frame's code must be one a peer may send. A violation ends the connection without a close frame
//! (as tungstenite did); a frame or message over the size limit is refused with 1009, a text message
//! that is not UTF-8 with 1007.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// The read buffer's size while a connection is active: a device frame is 77–600 bytes, so an UPDT
/// takes one read; a larger frame grows it to the frame's size.
pub(crate) const READ_CHUNK: usize = 256;

/// A control frame's payload is at most this long (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One message (or control frame) read from the device.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A whole text message.
    Text(&'a str),
    /// A whole binary message (its content is not used).
    Binary,
    /// A ping, with its payload (the pong echoes it).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with the reply it is owed (the peer's code and reason echoed, or 1002 for a
    /// code a peer may not send; `None` for a close frame without a code).
    Close(Option<CloseFrame>),
}

/// Why the device's frames cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A frame or message over the size limit: close with 1009.
    TooLarge { size: u64, max: usize },
    /// A text message (or a close frame's reason) that is not UTF-8: close with 1007.
    NotUtf8,
    /// Not a websocket frame a client may send: the connection is dropped.
    Protocol(&'static str),
}

/// The device's bytes not taken yet, and the message being assembled from fragments.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Bytes read from the socket; those before `start` are taken.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message in progress: whether it is text, and its payload so far.
    partial: Option<(bool, Vec<u8>)>,
    /// The last message assembled from fragments (lent out by [`Inbound::next`]).
    assembled: Vec<u8>,
    /// `--max-frame-bytes`: the largest frame, and the largest message.
    max: usize,
}

impl Inbound {
    pub(crate) fn new(max: usize) -> Inbound {
        Inbound {
            buf: Vec::new(),
            start: 0,
            partial: None,
            assembled: Vec::new(),
            max,
        }
    }

    /// `bytes` arrived before the session took the socket (read past the HTTP upgrade).
    pub(crate) fn preload(&mut self, bytes: Vec<u8>) {
        if self.buf.is_empty() {
            self.buf = bytes;
            self.start = 0;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Nothing of a frame or message is pending: the connection can be parked without a buffer.
    pub(crate) fn is_clean(&self) -> bool {
        self.start == self.buf.len() && self.partial.is_none()
    }

    /// Free the buffers (only sensible when [`Inbound::is_clean`]).
    pub(crate) fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.assembled = Vec::new();
    }

    /// The buffer to read more bytes into, with room for at least [`READ_CHUNK`] bytes or the rest
    /// of the frame in progress (taken bytes are dropped first).
    pub(crate) fn space(&mut self) -> &mut Vec<u8> {
        if self.start == self.buf.len() && self.buf.capacity() > 4 * READ_CHUNK {
            // A large frame is done with: do not keep its room for the connection's life.
            self.buf = Vec::new();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let need = match parse_header(&self.buf) {
            Ok(Some((_, header_len, len))) if len <= self.max as u64 => {
                (header_len + len as usize).saturating_sub(self.buf.len())
            }
            _ => 0,
        };
        let want = need.max(READ_CHUNK);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Bytes read elsewhere (the parking lot's thread reads for its connections).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes not taken yet, leaving none (a fragment in progress stays: only sensible when
    /// there is none, as after [`Inbound::next_simple`]).
    pub(crate) fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }

    /// The next frame, taken, if it is whole and one of the simple kinds the parking lot's thread
    /// serves itself: a final text frame in UTF-8, a ping or a pong, outside any fragmented message.
    /// Anything else (nothing whole yet, a fragment, binary, close, a violation) is left untaken,
    /// for [`Inbound::next`] to read and judge.
    pub(crate) fn next_simple(&mut self) -> Option<Event<'_>> {
        if self.partial.is_some() {
            return None;
        }
        let rest = &self.buf[self.start..];
        let Ok(Some((header, header_len, len))) = parse_header(rest) else {
            return None;
        };
        let mask = header.mask?;
        let control = len <= MAX_CONTROL_PAYLOAD as u64;
        let simple = header.is_final
            && !(header.rsv1 || header.rsv2 || header.rsv3)
            && match header.opcode {
                OpCode::Data(Data::Text) => len <= self.max as u64,
                OpCode::Control(Control::Ping | Control::Pong) => control,
                _ => false,
            };
        if !simple || (rest.len() as u64) < header_len as u64 + len {
            return None;
        }
        let from = self.start + header_len;
        let to = from + len as usize;
        unmask(&mut self.buf[from..to], mask);
        if header.opcode == OpCode::Data(Data::Text)
            && std::str::from_utf8(&self.buf[from..to]).is_err()
        {
            // Masked again (the same XOR) and left untaken: `next` refuses it with 1007.
            unmask(&mut self.buf[from..to], mask);
            return None;
        }
        self.start = to;
        let payload = &self.buf[from..to];
        Some(match header.opcode {
            OpCode::Control(Control::Ping) => Event::Ping(payload),
            OpCode::Control(_) => Event::Pong,
            // Valid, as checked above (checking again costs little next to the socket's read).
            OpCode::Data(_) => Event::Text(std::str::from_utf8(payload).unwrap_or_default()),
        })
    }

    /// The next whole message or control frame among the bytes read, if one is complete.
    pub(crate) fn next(&mut self) -> Result<Option<Event<'_>>, Violation> {
        if !self.assembled.is_empty() {
            self.assembled = Vec::new();
        }
        loop {
            let rest = &self.buf[self.start..];
            let Some((header, header_len, len)) = parse_header(rest)? else {
                return Ok(None);
            };
            if len > self.max as u64 {
                return Err(Violation::TooLarge {
                    size: len,
                    max: self.max,
                });
            }
            let len = len as usize;
            if rest.len() < header_len + len {
                return Ok(None);
            }
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(Violation::Protocol("reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(Violation::Protocol("unmasked frame from a client"));
            };
            let from = self.start + header_len;
            let to = from + len;
            self.start = to;
            unmask(&mut self.buf[from..to], mask);
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final {
                        return Err(Violation::Protocol("fragmented control frame"));
                    }
                    if len > MAX_CONTROL_PAYLOAD {
                        return Err(Violation::Protocol("control frame too long"));
                    }
                    let payload = &self.buf[from..to];
                    return match control {
                        Control::Ping => Ok(Some(Event::Ping(payload))),
                        Control::Pong => Ok(Some(Event::Pong)),
                        Control::Close => {
                            close_reply(payload).map(|reply| Some(Event::Close(reply)))
                        }
                        Control::Reserved(_) => Err(Violation::Protocol("unknown control opcode")),
                    };
                }
                OpCode::Data(data) => {
                    let text = match (data, &mut self.partial) {
                        (Data::Continue, None) => {
                            return Err(Violation::Protocol("continuation outside a message"));
                        }
                        (Data::Continue, Some((text, so_far))) => {
                            if so_far.len() + len > self.max {
                                return Err(Violation::TooLarge {
                                    size: (so_far.len() + len) as u64,
                                    max: self.max,
                                });
                            }
                            so_far.extend_from_slice(&self.buf[from..to]);
                            if !header.is_final {
                                continue;
                            }
                            let text = *text;
                            if let Some((_, whole)) = self.partial.take() {
                                self.assembled = whole;
                            }
                            return message(text, &self.assembled);
                        }
                        (Data::Text, None) => true,
                        (Data::Binary, None) => false,
                        (Data::Text | Data::Binary, Some(_)) => {
                            return Err(Violation::Protocol("new message inside a fragmented one"));
                        }
                        (Data::Reserved(_), _) => {
                            return Err(Violation::Protocol("unknown data opcode"));
                        }
                    };
                    if header.is_final {
                        return message(text, &self.buf[from..to]);
                    }
                    self.partial = Some((text, self.buf[from..to].to_vec()));
                }
            }
        }
    }
}

/// The header at the start of `bytes` with its length and the payload's, once it is complete.
fn parse_header(bytes: &[u8]) -> Result<Option<(FrameHeader, usize, u64)>, Violation> {
    let mut cursor = Cursor::new(bytes);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((header, len))) => Ok(Some((header, cursor.position() as usize, len))),
        Ok(None) => Ok(None),
        Err(_) => Err(Violation::Protocol("bad frame header")),
    }
}

fn message(text: bool, payload: &[u8]) -> Result<Option<Event<'_>>, Violation> {
    if !text {
        return Ok(Some(Event::Binary));
    }
    match std::str::from_utf8(payload) {
        Ok(text) => Ok(Some(Event::Text(text))),
        Err(_) => Err(Violation::NotUtf8),
    }
}

/// The reply a close frame with `payload` is owed (tungstenite's rule: the peer's frame echoed, a
/// code a peer may not send answered with 1002).
fn close_reply(payload: &[u8]) -> Result<Option<CloseFrame>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
            Ok(Some(if code.is_allowed() {
                CloseFrame {
                    code,
                    reason: reason.to_owned().into(),
                }
            } else {
                CloseFrame {
                    code: CloseCode::Protocol,
                    reason: "Protocol violation".into(),
                }
            }))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Frames for the device, formatted and not written yet.
#[derive(Debug)]
pub(crate) struct Outbound {
    buf: Vec<u8>,
    /// Beyond this many bytes waiting, the device does not read: more is refused.
    max: usize,
}

/// The device's unread frames fill the write buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl Outbound {
    pub(crate) fn new(max: usize) -> Outbound {
        Outbound {
            buf: Vec::new(),
            max,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes to write.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// `n` bytes were written.
    pub(crate) fn written(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = Vec::new();
        }
    }

    /// Free the buffer (only sensible when empty).
    pub(crate) fn release(&mut self) {
        self.buf = Vec::new();
    }

    /// Bytes formatted elsewhere and not written yet (by the parking lot's thread), ahead of
    /// anything queued later; not bounded by the buffer's limit (they are owed already).
    pub(crate) fn preload(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queue a text frame.
    pub(crate) fn text(&mut self, text: &str) -> Result<(), Full> {
        self.frame(OpCode::Data(Data::Text), text.as_bytes())
    }

    /// Queue a ping without payload.
    pub(crate) fn ping(&mut self) -> Result<(), Full> {
        self.frame(OpCode::Control(Control::Ping), &[])
    }

    /// Queue the pong for a ping with `payload`.
    pub(crate) fn pong(&mut self, payload: &[u8]) -> Result<(), Full> {
        self.frame(OpCode::Control(Control::Pong), payload)
    }

    /// Queue a close frame (`None`: without a code).
    pub(crate) fn close(&mut self, frame: Option<&CloseFrame>) -> Result<(), Full> {
        let mut payload = Vec::new();
        if let Some(frame) = frame {
            payload.extend_from_slice(&u16::from(frame.code).to_be_bytes());
            payload.extend_from_slice(frame.reason.as_bytes());
        }
        self.frame(OpCode::Control(Control::Close), &payload)
    }

    fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Full> {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let len = payload.len() as u64;
        if self.buf.len() + header.len(len) + payload.len() > self.max {
            return Err(Full);
        }
        if header.format(len, &mut self.buf).is_err() {
            // Formatting into a Vec cannot fail.
            return Err(Full);
        }
        self.buf.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `first` is the first header byte (FIN, RSV, opcode).
    fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 0x7e);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 0x7f);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&MASK);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    fn text(payload: &str) -> Vec<u8> {
        client_frame(0x81, payload.as_bytes(), true)
    }

    fn events(inbound: &mut Inbound) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match inbound.next() {
                Ok(Some(event)) => out.push(format!("{event:?}")),
                Ok(None) => return out,
                Err(e) => {
                    out.push(format!("{e:?}"));
                    return out;
                }
            }
        }
    }

    #[test]
    fn a_text_frame_arriving_byte_by_byte_is_one_message_once_complete() {
        let frame = text(r#"{"hello":"world"}"#);
        let mut inbound = Inbound::new(1024);
        for (i, byte) in frame.iter().enumerate() {
            assert!(events(&mut inbound).is_empty(), "complete after {i} bytes?");
            assert_eq!(inbound.is_clean(), i == 0);
            inbound.space().push(*byte);
        }
        assert_eq!(events(&mut inbound), [r#"Text("{\"hello\":\"world\"}")"#]);
        assert!(inbound.is_clean());
    }

    #[test]
    fn several_frames_in_one_read_come_out_in_order() {
        let mut bytes = text("one");
        bytes.extend(client_frame(0x89, b"pp", true));
        bytes.extend(client_frame(0x82, &[1, 2, 3], true));
        bytes.extend(client_frame(0x8a, b"", true));
        bytes.extend(text("two"));
        let mut inbound = Inbound::new(1024);
        inbound.preload(bytes);
        assert_eq!(
            events(&mut inbound),
            [
                r#"Text("one")"#,
                "Ping([112, 112])",
                "Binary",
                "Pong",
                r#"Text("two")"#
            ]
        );
        assert!(inbound.is_clean());
    }

    #[test]
    fn fragments_are_assembled_with_control_frames_between_them() {
        let mut bytes = client_frame(0x01, b"he", true);
        bytes.extend(client_frame(0x89, b"", true));
        bytes.extend(client_frame(0x00, b"ll", true));
        let mut inbound = Inbound::new(1024);
        inbound.preload(bytes);
        assert_eq!(events(&mut inbound), ["Ping([])"]);
        assert!(!inbound.is_clean(), "a message is half assembled");
        inbound
            .space()
            .extend(client_frame(0x80, "o ✓".as_bytes(), true));
        assert_eq!(events(&mut inbound), [r#"Text("hello ✓")"#]);
        assert!(inbound.is_clean());
    }

    #[test]
    fn a_frame_or_message_over_the_limit_is_too_large_before_it_is_read() {
        let mut inbound = Inbound::new(100);
        // Only the header of a 1-MB frame: refused without waiting for the payload.
        inbound.preload(client_frame(0x81, &vec![b'a'; 1 << 20], true)[..14].to_vec());
        assert_eq!(
            inbound.next(),
            Err(Violation::TooLarge {
                size: 1 << 20,
                max: 100
            })
        );
        let mut inbound = Inbound::new(100);
        let mut bytes = client_frame(0x01, &[b'a'; 60], true);
        bytes.extend(client_frame(0x80, &[b'a'; 60], true));
        inbound.preload(bytes);
        assert_eq!(
            inbound.next(),
            Err(Violation::TooLarge {
                size: 120,
                max: 100
            })
        );
    }

    #[test]
    fn a_frame_at_the_limit_gets_room_to_be_read_whole() {
        let frame = client_frame(0x81, &[b'x'; 5000], true);
        let mut inbound = Inbound::new(5000);
        inbound.preload(frame[..10].to_vec());
        let space = inbound.space();
        assert!(space.capacity() - space.len() >= frame.len() - 10);
        space.extend_from_slice(&frame[10..]);
        assert_eq!(events(&mut inbound).len(), 1);
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_whole_or_fragmented() {
        let mut inbound = Inbound::new(100);
        inbound.preload(client_frame(0x81, &[0xff, 0xfe], true));
        assert_eq!(inbound.next(), Err(Violation::NotUtf8));
        // A character split between two fragments is fine.
        let mut inbound = Inbound::new(100);
        let check = "✓".as_bytes();
        let mut bytes = client_frame(0x01, &check[..1], true);
        bytes.extend(client_frame(0x80, &check[1..], true));
        inbound.preload(bytes);
        assert_eq!(events(&mut inbound), [r#"Text("✓")"#]);
    }

    #[test]
    fn protocol_violations_are_named() {
        let cases: [(Vec<u8>, &str); 8] = [
            (
                client_frame(0x81, b"x", false),
                "unmasked frame from a client",
            ),
            (client_frame(0xc1, b"x", true), "reserved bits set"),
            // tungstenite's header parser refuses reserved opcodes.
            (client_frame(0x83, b"x", true), "bad frame header"),
            (client_frame(0x8b, b"x", true), "bad frame header"),
            (client_frame(0x09, b"x", true), "fragmented control frame"),
            (
                client_frame(0x89, &[0; 126], true),
                "control frame too long",
            ),
            (
                client_frame(0x80, b"x", true),
                "continuation outside a message",
            ),
            (client_frame(0x88, &[3], true), "close frame of one byte"),
        ];
        for (bytes, why) in cases {
            let mut inbound = Inbound::new(1000);
            inbound.preload(bytes);
            assert_eq!(inbound.next(), Err(Violation::Protocol(why)));
        }
        let mut inbound = Inbound::new(1000);
        let mut bytes = client_frame(0x01, b"x", true);
        bytes.extend(text("y"));
        inbound.preload(bytes);
        assert_eq!(
            inbound.next(),
            Err(Violation::Protocol("new message inside a fragmented one"))
        );
    }

    #[test]
    fn a_close_frame_is_echoed_unless_its_code_is_not_for_peers() {
        let mut inbound = Inbound::new(1000);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut bytes = client_frame(0x88, &payload, true);
        bytes.extend(client_frame(0x88, &1005u16.to_be_bytes(), true));
        bytes.extend(client_frame(0x88, b"", true));
        inbound.preload(bytes);
        let Ok(Some(Event::Close(Some(reply)))) = inbound.next() else {
            panic!("a close frame");
        };
        assert_eq!(
            (u16::from(reply.code), reply.reason.as_str()),
            (1000, "bye")
        );
        let Ok(Some(Event::Close(Some(reply)))) = inbound.next() else {
            panic!("a close frame");
        };
        assert_eq!(u16::from(reply.code), 1002);
        assert_eq!(inbound.next(), Ok(Some(Event::Close(None))));
    }

    #[test]
    fn outbound_frames_are_unmasked_and_bounded() {
        let mut out = Outbound::new(64);
        out.text("OK").unwrap();
        out.pong(b"p").unwrap();
        out.close(Some(&CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .unwrap();
        assert_eq!(
            out.bytes(),
            [
                &[0x81, 2][..],
                b"OK",
                &[0x8a, 1],
                b"p",
                &[0x88, 5, 0x03, 0xe9],
                b"bye"
            ]
            .concat()
        );
        out.written(4);
        assert_eq!(out.len(), 10);
        assert_eq!(out.text(&"x".repeat(60)), Err(Full));
        assert_eq!(out.len(), 10, "a refused frame leaves nothing behind");
        let mut big = Outbound::new(1 << 20);
        big.text(&"y".repeat(70_000)).unwrap();
        assert_eq!(
            &big.bytes()[..10],
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn the_lot_takes_only_whole_simple_frames() {
        let mut inbound = Inbound::new(100);
        let bad_utf8 = client_frame(0x81, &[0x68, 0xff, 0x69], true);
        let mut bytes = [
            text("one"),
            client_frame(0x89, b"hi", true),
            client_frame(0x8a, b"", true),
            client_frame(0x82, b"bin", true),
        ]
        .concat();
        bytes.extend(&bad_utf8);
        inbound.push(&bytes);
        assert_eq!(inbound.next_simple(), Some(Event::Text("one")));
        assert_eq!(inbound.next_simple(), Some(Event::Ping(b"hi")));
        assert_eq!(inbound.next_simple(), Some(Event::Pong));
        assert_eq!(inbound.next_simple(), None, "binary is left to next");
        assert_eq!(inbound.next(), Ok(Some(Event::Binary)));
        assert_eq!(inbound.next_simple(), None, "not UTF-8");
        assert_eq!(inbound.take_rest(), bad_utf8, "left exactly as it came");
        assert!(inbound.is_clean());
        // A frame not whole yet, a fragment, a text over the limit: untaken.
        let whole = text("two");
        inbound.push(&whole[..whole.len() - 1]);
        assert_eq!(inbound.next_simple(), None);
        inbound.push(&whole[whole.len() - 1..]);
        assert_eq!(inbound.next_simple(), Some(Event::Text("two")));
        inbound.push(&client_frame(0x01, b"frag", true));
        assert_eq!(inbound.next_simple(), None);
        let _ = inbound.take_rest();
        inbound.push(&text(&"x".repeat(101)));
        assert_eq!(inbound.next_simple(), None);
        assert!(matches!(inbound.next(), Err(Violation::TooLarge { .. })));
    }

    mod split {
        use proptest::prelude::*;

        use super::*;

        /// What a client sends: a text message in `fragments` frames, a ping, or a binary message.
        #[derive(Debug, Clone)]
        enum Sent {
            Text { text: String, fragments: usize },
            Ping(Vec<u8>),
            Binary,
        }

        fn sent() -> impl Strategy<Value = Sent> {
            prop_oneof![
                ("[a-z0-9é✓ ]{0,300}", 1usize..4)
                    .prop_map(|(text, fragments)| Sent::Text { text, fragments }),
                proptest::collection::vec(any::<u8>(), 0..20).prop_map(Sent::Ping),
                Just(Sent::Binary),
            ]
        }

        /// The client's bytes for `messages`, and the events the server must read from them.
        fn encode(messages: &[Sent]) -> (Vec<u8>, Vec<String>) {
            let mut bytes = Vec::new();
            let mut events = Vec::new();
            for message in messages {
                match message {
                    Sent::Text { text, fragments } => {
                        let raw = text.as_bytes();
                        let size = raw.len().div_ceil(*fragments).max(1);
                        let chunks: Vec<&[u8]> = if raw.is_empty() {
                            vec![raw]
                        } else {
                            raw.chunks(size).collect()
                        };
                        for (i, chunk) in chunks.iter().enumerate() {
                            // Text first, continuations after.
                            let opcode = u8::from(i == 0);
                            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
                            bytes.extend(client_frame(fin | opcode, chunk, true));
                        }
                        events.push(format!("{:?}", Event::Text(text)));
                    }
                    Sent::Ping(payload) => {
                        bytes.extend(client_frame(0x89, payload, true));
                        events.push(format!("{:?}", Event::Ping(payload)));
                    }
                    Sent::Binary => {
                        bytes.extend(client_frame(0x82, b"\x00\x01", true));
                        events.push(format!("{:?}", Event::Binary));
                    }
                }
            }
            (bytes, events)
        }

        /// The client's bytes for `messages`, with bytes flipped (at each index, XOR the mask),
        /// then `noise`.
        fn damaged(
            messages: &[Sent],
            flips: &[(prop::sample::Index, u8)],
            noise: Vec<u8>,
        ) -> Vec<u8> {
            let (mut bytes, _) = encode(messages);
            if !bytes.is_empty() {
                for (at, mask) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                }
            }
            bytes.extend(noise);
            bytes
        }

        proptest! {
            /// However the bytes are cut into reads, the same messages come out, in order, and the
            /// codec is clean between them.
            #[test]
            fn any_split_of_the_stream_reads_the_same_messages(
                messages in proptest::collection::vec(sent(), 1..12),
                cuts in proptest::collection::vec(1usize..64, 1..200),
            ) {
                let (bytes, expected) = encode(&messages);
                let mut inbound = Inbound::new(1024);
                let mut got = Vec::new();
                let mut at = 0;
                let mut cut = cuts.iter().cycle();
                while at < bytes.len() {
                    let n = (*cut.next().unwrap_or(&1)).min(bytes.len() - at);
                    inbound.space().extend_from_slice(&bytes[at..at + n]);
                    at += n;
                    got.extend(events(&mut inbound));
                }
                prop_assert_eq!(got, expected);
                prop_assert!(inbound.is_clean());
            }

            /// The lot's way of reading — simple frames taken by `next_simple`, everything else by
            /// `next`, and at any point the untaken rest handed to a new codec (a task) — reads the
            /// same events, violations included, as `next` alone: what `next_simple` does not take
            /// it leaves exactly as it was (a text that is not UTF-8 is masked again).
            #[test]
            fn simple_frames_then_the_rest_read_as_next_alone(
                messages in proptest::collection::vec(sent(), 0..8),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
                noise in proptest::collection::vec(any::<u8>(), 0..16),
                handover in any::<prop::sample::Index>(),
            ) {
                let bytes = damaged(&messages, &flips, noise);
                let mut alone = Inbound::new(200);
                alone.push(&bytes);
                let expected = events(&mut alone);
                let mut lot = Inbound::new(200);
                lot.push(&bytes);
                let mut got = Vec::new();
                let handover = handover.index(expected.len() + 1);
                let mut stopped = false;
                while got.len() < handover && !stopped {
                    if let Some(event) = lot.next_simple() {
                        got.push(format!("{event:?}"));
                        continue;
                    }
                    match lot.next() {
                        Ok(Some(event)) => got.push(format!("{event:?}")),
                        Ok(None) => stopped = true,
                        Err(e) => {
                            got.push(format!("{e:?}"));
                            stopped = true;
                        }
                    }
                }
                if !stopped {
                    if lot.partial.is_none() {
                        // Handed over between messages, as the lot does.
                        let mut task = Inbound::new(200);
                        task.preload(lot.take_rest());
                        got.extend(events(&mut task));
                    } else {
                        got.extend(events(&mut lot));
                    }
                }
                prop_assert_eq!(got, expected);
            }

            /// Whatever arrives — valid frames with bytes flipped, then noise — in reads no larger
            /// than the room the codec offers (as a socket read is): reading never panics, gives
            /// whole messages within the limit until a violation (where the session stops reading),
            /// and never holds more than one frame's worth of bytes.
            #[test]
            fn any_bytes_are_read_or_refused_within_bounds(
                messages in proptest::collection::vec(sent(), 0..6),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                noise in proptest::collection::vec(any::<u8>(), 0..64),
                cuts in proptest::collection::vec(1usize..600, 1..50),
            ) {
                const MAX: usize = 200;
                let bytes = damaged(&messages, &flips, noise);
                let mut inbound = Inbound::new(MAX);
                let mut at = 0;
                let mut cut = cuts.iter().cycle();
                let mut refused = false;
                while at < bytes.len() && !refused {
                    let space = inbound.space();
                    let room = space.capacity() - space.len();
                    let n = (*cut.next().unwrap_or(&1)).min(bytes.len() - at).min(room);
                    prop_assert!(n > 0, "the codec offers no room to read into");
                    space.extend_from_slice(&bytes[at..at + n]);
                    at += n;
                    loop {
                        match inbound.next() {
                            Ok(Some(Event::Text(text))) => prop_assert!(text.len() <= MAX),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                refused = true;
                                break;
                            }
                        }
                    }
                    // One frame (header, at most MAX bytes of payload, one read's worth more), and
                    // at most MAX bytes of a fragmented message.
                    prop_assert!(inbound.buf.capacity() <= 2 * (14 + MAX + READ_CHUNK.max(600)));
                    prop_assert!(inbound.partial.as_ref().is_none_or(|(_, p)| p.len() <= MAX));
                }
            }
        }
    }
}
