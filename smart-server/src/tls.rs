//! TLS (`--tls-cert`, `--tls-key`): https and wss on the listener, with rustls (ring), no OpenSSL.
//!
//! Connections run on rustls's unbuffered API behind [`TlsSocket`], which holds no buffer while a
//! connection is idle: received bytes are read into a buffer on the stack and decrypted in place;
//! only what is left over (a partial record, decrypted data the reader has not taken yet, encrypted
//! data the socket has not accepted yet) is kept on the heap, and freed once it is used up. With
//! `tokio-rustls` every connection kept rustls's 4 KiB receive buffer for its lifetime, a third of
//! what an idle device connection cost the server.

use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio_rustls::rustls::{self, ServerConfig};

/// How long a client may take to complete its TLS handshake before the socket is closed.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One read from the socket: a whole record of the largest size (16 KiB of data plus the
/// overhead TLS 1.2 allows) fits. It lives on the stack, for the duration of one poll.
const READ_CHUNK: usize = 16 * 1024 + 2048 + 5;
/// Received bytes kept while they do not form a whole message: a record, or a handshake message
/// spread over several records (rustls allows them up to 64 KiB).
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;
/// Plaintext taken per write call: one full record.
const MAX_WRITE: usize = 16 * 1024;

/// Accepts TLS connections with one server configuration.
#[derive(Clone)]
pub(crate) struct Acceptor {
    config: Arc<ServerConfig>,
}

/// The acceptor for a PEM certificate chain and its PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<Acceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not form a usable pair")?;
    Ok(Acceptor::new(config))
}

impl Acceptor {
    fn new(mut config: ServerConfig) -> Acceptor {
        // Websocket upgrades are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Acceptor {
            config: Arc::new(config),
        }
    }

    /// Runs the server side of a handshake on `tcp` (unbounded in time: the caller bounds it).
    pub(crate) async fn accept(&self, tcp: TcpStream) -> io::Result<TlsSocket> {
        let conn = UnbufferedServerConnection::new(Arc::clone(&self.config)).map_err(tls_error)?;
        let mut socket = TlsSocket {
            tcp,
            incoming: Vec::new(),
            session: Session {
                conn,
                outgoing: Vec::new(),
                sent: 0,
                plaintext: Vec::new(),
                taken: 0,
                peer_closed: false,
                closed: false,
            },
        };
        poll_fn(|cx| socket.poll_handshake(cx)).await?;
        Ok(socket)
    }
}

/// A TLS connection over TCP, after its handshake.
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    /// Received bytes that do not form a whole record yet (unallocated while there are none).
    incoming: Vec<u8>,
    session: Session,
}

/// A TLS connection's state apart from the socket and the received bytes.
struct Session {
    conn: UnbufferedServerConnection,
    /// Encrypted bytes to send, from `sent` on (unallocated once the socket took them all).
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes not read yet, from `taken` on (unallocated once the reader took them all).
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer sent its `close_notify`: reads end.
    peer_closed: bool,
    /// We sent our `close_notify`: writes end.
    closed: bool,
}

/// What the caller wants done once rustls has processed what it was given.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// Nothing: process the received records.
    Nothing,
    /// Encrypt this application data.
    Write(&'a [u8]),
    /// Send our `close_notify`.
    Close,
}

impl Session {
    /// Processes the records at the start of `incoming` and carries out `request`; returns how
    /// many bytes of `incoming` were used up (they are to be dropped from its front).
    fn process(&mut self, incoming: &mut [u8], mut request: Request<'_>) -> io::Result<usize> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[used..]);
            let mut extra = 0;
            let done = match state {
                Err(e) => return Err(self.fatal(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        extra += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    false
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    grow_into(
                        &mut self.outgoing,
                        |buf| data.encode(buf),
                        |e| match e {
                            EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            }) => Ok(required_size),
                            e @ EncodeError::AlreadyEncoded => Err(io::Error::other(e)),
                        },
                    )?;
                    false
                }
                // The encoded bytes wait in `outgoing`, in order, until the socket takes them.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    false
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match request {
                    Request::Nothing => true,
                    Request::Write(data) => {
                        grow_into(
                            &mut self.outgoing,
                            |buf| traffic.encrypt(data, buf),
                            encrypt_size,
                        )?;
                        request = Request::Nothing;
                        false
                    }
                    Request::Close => {
                        grow_into(
                            &mut self.outgoing,
                            |buf| traffic.queue_close_notify(buf),
                            encrypt_size,
                        )?;
                        self.closed = true;
                        request = Request::Nothing;
                        false
                    }
                },
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    false
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::Closed) => true,
                // Early data is off (the default), so rustls does not offer it.
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS connection state",
                    ));
                }
            };
            used += discard + extra;
            if done {
                break;
            }
        }
        match request {
            Request::Nothing => Ok(used),
            // The handshake is not over, or we or the peer closed the connection.
            Request::Write(_) | Request::Close if self.closed => {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            Request::Write(_) | Request::Close => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The error `e` ends the connection: queue the alert rustls has for the peer, if any.
    fn fatal(&mut self, e: rustls::Error) -> io::Error {
        if let Ok(ConnectionState::EncodeTlsData(mut data)) =
            self.conn.process_tls_records(&mut []).state
        {
            let _ = grow_into(
                &mut self.outgoing,
                |buf| data.encode(buf),
                |_| Err(io::Error::other("alert")),
            );
        }
        self.closed = true;
        tls_error(e)
    }
}

/// Appends to `out` what `fill` writes into a buffer, growing it as `needed` says.
fn grow_into<E>(
    out: &mut Vec<u8>,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: impl Fn(E) -> io::Result<usize>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 256;
    loop {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                let required = needed(e)?;
                if required <= room {
                    return Err(io::Error::other(
                        "TLS encoder asked for less room than it had",
                    ));
                }
                room = required;
            }
        }
    }
}

fn encrypt_size(e: EncryptError) -> io::Result<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Ok(required_size)
        }
        e @ EncryptError::EncryptExhausted => Err(io::Error::other(e)),
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSocket {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the socket holds no buffer (an idle connection).
    #[cfg(test)]
    fn holds_no_buffer(&self) -> bool {
        self.incoming.capacity() == 0
            && self.session.outgoing.capacity() == 0
            && self.session.plaintext.capacity() == 0
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.session.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.session.closed || self.session.peer_closed {
                return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// Writes the queued encrypted bytes to the socket; ready once they are all out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let session = &mut self.session;
        while session.sent < session.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &session.outgoing[session.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            session.sent += n;
        }
        session.outgoing = Vec::new();
        session.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads once from the socket and processes what came.
    // The chunk is on the stack for one poll only (tokio's worker threads have 2 MiB stacks):
    // a connection holds no receive buffer between reads.
    #[allow(clippy::large_stack_arrays)]
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            // The peer closed its side without a close_notify: the data may have been cut short.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection without sending TLS close_notify",
            )));
        }
        let processed = if self.incoming.is_empty() {
            self.session
                .process(&mut chunk[..n], Request::Nothing)
                .map(|used| {
                    if used < n {
                        self.incoming.extend_from_slice(&chunk[used..n]);
                    }
                })
        } else if self.incoming.len() + n > MAX_INCOMING {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            ))
        } else {
            self.incoming.extend_from_slice(&chunk[..n]);
            self.session
                .process(&mut self.incoming, Request::Nothing)
                .map(|used| {
                    self.incoming.drain(..used);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                })
        };
        if processed.is_err() {
            // Best effort: the peer learns why (an alert), if the socket takes it right away.
            let session = &self.session;
            let _ = self.tcp.try_write(&session.outgoing[session.sent..]);
        }
        Poll::Ready(processed)
    }

    /// Carries out `request` (a write or a close) on the established connection.
    fn request(&mut self, request: Request<'_>) -> io::Result<()> {
        let used = self.session.process(&mut self.incoming, request)?;
        if used > 0 {
            self.incoming.drain(..used);
        }
        Ok(())
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let session = &mut this.session;
            if session.taken < session.plaintext.len() {
                let n = buf.remaining().min(session.plaintext.len() - session.taken);
                buf.put_slice(&session.plaintext[session.taken..session.taken + n]);
                session.taken += n;
                if session.taken == session.plaintext.len() {
                    session.plaintext = Vec::new();
                    session.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if session.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // What rustls queued while reading (a key update, an alert) goes out without holding
            // up the read; if the socket is full it goes with the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.session.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One batch at a time: what was encrypted before goes out first.
        ready!(this.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &buf[..buf.len().min(MAX_WRITE)];
        this.request(Request::Write(data))?;
        // The bytes are taken; if the socket is full they go with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.session.closed {
            ready!(this.poll_send(cx))?;
            this.request(Request::Close)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
