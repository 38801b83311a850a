//! [`TlsSocket`] against tokio-rustls clients: both protocol versions, large transfers both ways
//! at once, key updates, clean and unclean closes, garbage, and no buffer held while idle.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion, version};

use super::*;

/// A server acceptor and a client configuration that trusts it, for `versions`.
fn pair(versions: &[&'static SupportedProtocolVersion]) -> (Acceptor, Arc<ClientConfig>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = vec![CertificateDer::from(generated.cert.der().to_vec())];
    let key =
        PrivateKeyDer::from_pem_slice(generated.signing_key.serialize_pem().as_bytes()).unwrap();
    let server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Acceptor::new(server), Arc::new(client))
}

/// A listener, and a server task that accepts one connection and runs `serve` on it.
async fn serve<F, Fut>(acceptor: Acceptor, serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(io::Result<TlsSocket>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(acceptor.accept(tcp).await).await;
    });
    (addr, task)
}

async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> ClientStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Echoes until the peer's `close_notify`, then closes with its own.
async fn echo(socket: io::Result<TlsSocket>) {
    let mut socket = socket.unwrap();
    let mut buf = vec![0u8; 2048];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        socket.write_all(&buf[..n]).await.unwrap();
    }
    socket.shutdown().await.unwrap();
}

async fn echo_both_ways(versions: &[&'static SupportedProtocolVersion]) {
    let (acceptor, config) = pair(versions);
    let (addr, server) = serve(acceptor, echo).await;
    let client = connect(addr, &config).await;
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // More than the kernel's socket buffers hold: both sides wait on each other at times.
    let sent: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = tokio::io::split(client);
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        for piece in expected.chunks(10_007) {
            write.write_all(piece).await.unwrap();
        }
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::new();
    read.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();
    server.await.unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the echo differs from what was sent");
}

#[tokio::test]
async fn tls13_carries_large_transfers_both_ways_and_closes_cleanly() {
    echo_both_ways(&[&version::TLS13]).await;
}

#[tokio::test]
async fn tls12_carries_large_transfers_both_ways_and_closes_cleanly() {
    echo_both_ways(&[&version::TLS12]).await;
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffer() {
    for versions in [&[&version::TLS13][..], &[&version::TLS12][..]] {
        let (acceptor, config) = pair(versions);
        let (addr, server) = serve(acceptor, |socket| async move {
            let mut socket = socket.unwrap();
            assert!(socket.holds_no_buffer(), "after the handshake");
            let mut request = [0u8; 300];
            socket.read_exact(&mut request).await.unwrap();
            socket.write_all(&[b'y'; 40]).await.unwrap();
            socket.flush().await.unwrap();
            assert!(socket.holds_no_buffer(), "after an exchange");
            // Parked in a read, as an idle device is: the next byte arrives.
            let mut one = [0u8; 1];
            socket.read_exact(&mut one).await.unwrap();
            assert!(socket.holds_no_buffer(), "after the read");
        })
        .await;
        let mut client = connect(addr, &config).await;
        client.write_all(&[b'x'; 300]).await.unwrap();
        let mut reply = [0u8; 40];
        client.read_exact(&mut reply).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"z").await.unwrap();
        server.await.unwrap();
    }
}

#[tokio::test]
async fn key_updates_from_the_client_are_followed() {
    let (acceptor, config) = pair(&[&version::TLS13]);
    let (addr, server) = serve(acceptor, echo).await;
    let mut client = connect(addr, &config).await;
    for round in 0..3u8 {
        client.write_all(&[round; 100]).await.unwrap();
        let mut back = [0u8; 100];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round; 100]);
        // Asks the server to update its keys too: its reply must come under the new keys.
        client.get_mut().1.refresh_traffic_keys().unwrap();
    }
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    server.await.unwrap();
}

#[tokio::test]
async fn a_connection_cut_without_close_notify_is_an_error_not_an_end() {
    let (acceptor, config) = pair(&[&version::TLS13]);
    let (addr, server) = serve(acceptor, |socket| async move {
        let mut socket = socket.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(socket.read(&mut buf).await.unwrap(), 5);
        socket.write_all(b"ok").await.unwrap();
        let e = socket.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    })
    .await;
    let mut client = connect(addr, &config).await;
    client.write_all(b"hello").await.unwrap();
    // Reading the answer also reads the session tickets: the socket closes with a FIN, not a reset.
    let mut ok = [0u8; 2];
    client.read_exact(&mut ok).await.unwrap();
    // Close the TCP socket under TLS.
    let (tcp, _) = client.into_inner();
    drop(tcp);
    server.await.unwrap();
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_fails_the_handshake() {
    let (acceptor, _) = pair(&[&version::TLS13]);
    let (addr, server) = serve(acceptor, |socket| async move {
        assert!(socket.is_err());
    })
    .await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The server answers with an alert, or just closes.
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    server.await.unwrap();
}

#[tokio::test]
async fn writes_after_our_close_fail() {
    let (acceptor, config) = pair(&[&version::TLS13]);
    let (addr, server) = serve(acceptor, |socket| async move {
        let mut socket = socket.unwrap();
        socket.shutdown().await.unwrap();
        let e = socket.write_all(b"late").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    })
    .await;
    let mut client = connect(addr, &config).await;
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    server.await.unwrap();
}
