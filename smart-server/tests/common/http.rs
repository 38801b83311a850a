//! The tests' one HTTP client: a request through hyper's client connection (HTTP/1.1, `Connection:
//! close`), every wait bounded. Shared by `smart-server/tests/common` and the workspace's
//! `tests/examples_smoke.rs` (through `#[path]`).
//!
//! [`raw_get`] is for request targets hyper's client refuses to send (spaces, `<`, `"`, raw
//! non-ASCII): the server's leniency towards them is what such a test checks.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Every HTTP exchange of the tests is bounded by this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A response, read whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON {:?}: {e}", self.body))
    }
}

/// `GET path` with `extra_headers`, over a new connection (hyper's HTTP/1.1 client).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> HttpResponse {
    http_request(addr, "GET", path, extra_headers, "").await
}

/// `METHOD path` with `extra_headers` and `body`, over a new connection.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let stream = tokio::time::timeout(HTTP_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no connection within {HTTP_TIMEOUT:?}"))
        .unwrap();
    http_exchange(stream, &addr.to_string(), method, path, extra_headers, body).await
}

/// One request over `stream` (plain TCP, or TLS set up by the caller), `host` as its Host header,
/// with `Connection: close`.
pub async fn http_exchange<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host)
            .header(CONNECTION, "close");
        for (k, v) in extra_headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap_or_else(|e| {
                panic!("{method} {path}: hyper refuses the request ({e}); raw_get?")
            });
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let _ = conn.await;
        HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))
}

/// `GET target` written byte for byte as given (hyper's client would refuse it), with
/// `Connection: close`. The answer must have a `content-length` body (every answer of the server
/// does; a chunked one panics).
pub async fn raw_get(addr: SocketAddr, target: &str) -> HttpResponse {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    })
    .await
    .unwrap_or_else(|_| panic!("GET {target:?}: no answer within {HTTP_TIMEOUT:?}"));
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let response = HttpResponse {
        status: status_of(head),
        headers,
        body: body.to_owned(),
    };
    assert!(
        response.header("transfer-encoding").is_none(),
        "GET {target:?}: raw_get reads content-length bodies only"
    );
    response
}

/// The status code of a response head (`HTTP/1.1 101 Switching Protocols\r\n…`).
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"))
}
