//! Request targets as curl sends them. hyper refuses a request line whose target holds a space, `"`,
//! `<`, `>` or a non-ASCII byte with a bare 400 (no body, before any route sees it), yet
//! `curl '…/api/devices?q=sort:postcode:<:abc'` sends exactly that. This reader percent-encodes such
//! bytes in each request line before hyper parses it, so that the request reaches the API and gets
//! its answer, or a JSON error. Everything after a request head that announces a body or an upgrade
//! (the websocket frames) passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longer request or header lines are passed on as they are (hyper answers them).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a request line.
    Line,
    /// Inside a request head; whether it announced a body or an upgrade.
    Head { special: bool },
    /// Bytes pass through as they are.
    Through,
}

/// Wraps the socket of one HTTP connection.
#[derive(Debug)]
pub(crate) struct Lenient<S> {
    inner: S,
    state: State,
    line: Vec<u8>,
    out: Vec<u8>,
    taken: usize,
}

impl<S> Lenient<S> {
    /// The wrapped socket, and the bytes already read from it that were not handed on yet (after an
    /// upgrade: the first bytes of the new protocol).
    pub(crate) fn into_parts(mut self) -> (S, Vec<u8>) {
        let mut pending = self.out.split_off(self.taken);
        pending.append(&mut self.line);
        (self.inner, pending)
    }

    pub(crate) fn new(inner: S) -> Lenient<S> {
        Lenient {
            inner,
            state: State::Line,
            line: Vec::new(),
            out: Vec::new(),
            taken: 0,
        }
    }

    fn process(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some((&b, tail)) = rest.split_first() {
            if self.state == State::Through {
                self.out.extend_from_slice(rest);
                return;
            }
            rest = tail;
            self.line.push(b);
            if b != b'\n' {
                if self.line.len() > MAX_LINE {
                    self.out.append(&mut self.line);
                    self.state = State::Through;
                }
                continue;
            }
            let blank = self.line == b"\r\n" || self.line == b"\n";
            match self.state {
                State::Line => {
                    if !blank {
                        encode_target(&self.line, &mut self.out);
                        self.line.clear();
                        self.state = State::Head { special: false };
                        continue;
                    }
                }
                State::Head { special } => {
                    if blank {
                        self.state = if special { State::Through } else { State::Line };
                    } else if announces_body_or_upgrade(&self.line) {
                        self.state = State::Head { special: true };
                    }
                }
                State::Through => {}
            }
            self.out.append(&mut self.line);
        }
    }
}

fn announces_body_or_upgrade(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii();
    ["content-length", "transfer-encoding", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Bytes hyper accepts in a request target as they are.
fn plain(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\')
}

/// `METHOD SP TARGET SP HTTP/x.y CRLF` with the target percent-encoded where hyper would refuse
/// it; the target ends at the last space (it may hold spaces itself). Anything else is copied.
fn encode_target(line: &[u8], out: &mut Vec<u8>) {
    let first = line.iter().position(|&b| b == b' ');
    let last = line.iter().rposition(|&b| b == b' ');
    let (Some(first), Some(last)) = (first, last) else {
        out.extend_from_slice(line);
        return;
    };
    if last <= first || !line[last + 1..].starts_with(b"HTTP/") {
        out.extend_from_slice(line);
        return;
    }
    out.extend_from_slice(&line[..=first]);
    for &b in &line[first + 1..last] {
        if plain(b) {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out.extend_from_slice(&line[last..]);
}

impl<S: AsyncRead + Unpin> AsyncRead for Lenient<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.taken);
                buf.put_slice(&this.out[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.out.len() {
                    this.taken = 0;
                    if this.state == State::Through {
                        // An upgraded socket keeps nothing of its HTTP past.
                        this.out = Vec::new();
                        this.line = Vec::new();
                    } else {
                        this.out.clear();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Through && this.line.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: hand over what is left of a partial line, then the end.
                if this.line.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.append(&mut this.line);
                continue;
            }
            this.process(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lenient<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], split: usize) -> Vec<u8> {
        let mut l = Lenient::new(());
        let (a, b) = input.split_at(split.min(input.len()));
        l.process(a);
        l.process(b);
        l.out.append(&mut l.line);
        l.out
    }

    #[test]
    fn targets_are_encoded_in_every_request_line_and_nothing_else() {
        let input =
            b"GET /api/devices?q=sort:postcode:<:abc&q=a b\"\xc3\xa9 HTTP/1.1\r\nHost: x<y\r\n\r\n\
            GET /x> HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /raw< frames";
        let want = b"GET /api/devices?q=sort:postcode:%3C:abc&q=a%20b%22%C3%A9 HTTP/1.1\r\nHost: x<y\r\n\r\n\
            GET /x%3E HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /raw< frames";
        for split in 0..input.len() {
            assert_eq!(run(input, split), want, "split at {split}");
        }
    }

    #[test]
    fn a_body_ends_the_rewriting() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 9\r\n\r\nGET /< HTTP/1.1\r\n";
        assert_eq!(run(input, 5), input);
    }
}
