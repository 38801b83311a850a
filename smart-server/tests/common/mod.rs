//! Shared helpers: start the real server on 127.0.0.1 port 0, talk to it over websockets and HTTP,
//! every wait bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use smart_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

mod http;
pub use http::*;

/// Every single wait in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const DEVICE_WELCOME: &str = r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']"}"#;
pub const DASHBOARD_WELCOME: &str = r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']"}"#;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running in this process, stopped gracefully by [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let server = tokio::time::timeout(TIMEOUT, Server::bind(config))
            .await
            .unwrap()
            .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn start_in(dir: &Path) -> TestServer {
        TestServer::start(Config::for_tests(dir.to_path_buf())).await
    }

    /// Graceful shutdown; returns once the server has flushed and released the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn device(&self) -> Ws {
        device(self.addr).await
    }

    /// A dashboard past its welcome; returns it with the records of the first INIT.
    pub async fn dashboard(&self) -> (Ws, Vec<Value>) {
        dashboard(self.addr).await
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[]).await
    }
}

pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(TIMEOUT, connect_async(url))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// A device connection past the welcome.
pub async fn device(addr: SocketAddr) -> Ws {
    let mut ws = connect(addr, "/update/").await;
    assert_eq!(recv_text(&mut ws).await, DEVICE_WELCOME);
    ws
}

/// A device connection to `path` past the welcome, presenting `bearer` (a device token) if given.
pub async fn device_with(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, connect_async(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, DEVICE_WELCOME);
    ws
}

/// A dashboard connection past the welcome and the first INIT (whose records are returned).
pub async fn dashboard(addr: SocketAddr) -> (Ws, Vec<Value>) {
    let mut ws = connect(addr, "/client/").await;
    assert_eq!(recv_text(&mut ws).await, DASHBOARD_WELCOME);
    let init = recv_json(&mut ws).await;
    assert_eq!(init["type"], "INIT", "{init}");
    let records = init["message"].as_array().unwrap().clone();
    (ws, records)
}

pub async fn send(ws: &mut Ws, text: &str) {
    tokio::time::timeout(TIMEOUT, ws.send(Message::text(text)))
        .await
        .unwrap()
        .unwrap();
}

/// The next message of any kind (pings are answered by tungstenite and skipped).
pub async fn recv(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("websocket error");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

pub async fn recv_text(ws: &mut Ws) -> String {
    match recv(ws).await {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn recv_json(ws: &mut Ws) -> Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("server sent non-JSON {text:?}: {e}"))
}

/// Nothing arrives within `within`.
pub async fn assert_silent(ws: &mut Ws, within: Duration) {
    if let Ok(Some(msg)) = tokio::time::timeout(within, ws.next()).await {
        panic!("expected silence, got {msg:?}");
    }
}

/// Send a device frame and return the reply.
pub async fn exchange(ws: &mut Ws, frame: &str) -> Value {
    send(ws, frame).await;
    recv_json(ws).await
}

/// `{"type":"UPDT","message":"MID:SERIAL:BODY"}` with a JSON body.
pub fn updt(mid: &str, serial: &str, body: &Value) -> String {
    serde_json::json!({"type": "UPDT", "message": format!("{mid}:{serial}:{body}")}).to_string()
}

/// Send a valid UPDT and assert its OK.
pub async fn send_ok(ws: &mut Ws, mid: &str, serial: &str, body: &Value) {
    let reply = exchange(ws, &updt(mid, serial, body)).await;
    assert_eq!(
        reply,
        serde_json::json!({"type": "INFO", "message": format!("{mid}:{serial}:OK")})
    );
}

/// The body of an UPDT frame to a dashboard: `(MID, SERIAL, body)`.
pub fn parse_updt(frame: &Value) -> (String, String, Value) {
    assert_eq!(frame["type"], "UPDT", "{frame}");
    let message = frame["message"].as_str().unwrap();
    let mut parts = message.splitn(3, ':');
    let mid = parts.next().unwrap().to_owned();
    let serial = parts.next().unwrap().to_owned();
    let body = serde_json::from_str(parts.next().unwrap()).unwrap();
    (mid, serial, body)
}

/// The next frame that is not an UPDT for another serial than `serial`.
pub async fn next_updt_for(ws: &mut Ws, serial: &str) -> (String, Value) {
    for _ in 0..1000 {
        let frame = recv_json(ws).await;
        if frame["type"] != "UPDT" {
            continue;
        }
        let (mid, s, body) = parse_updt(&frame);
        if s == serial {
            return (mid, body);
        }
    }
    panic!("no UPDT for {serial}");
}

/// A device record from the HTTP API.
pub async fn record(server: &TestServer, serial: &str) -> Value {
    let res = server.get(&format!("/api/devices/{serial}")).await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()
}

/// Start the real `smart-server` binary on 127.0.0.1 port 0 with `dir` as its data dir; returns the
/// child (killed on drop) and the address from its first stdout line.
pub async fn spawn_binary(dir: &Path) -> (tokio::process::Child, SocketAddr) {
    spawn_binary_with(dir, &[], &[]).await
}

/// Start the real binary as [`spawn_binary`] does, run through `wrapper` (e.g.
/// `["prlimit", "--nofile=1024:1024", "--"]`, which execs it: the child's pid is the server's) and
/// with `args` added.
pub async fn spawn_binary_with(
    dir: &Path,
    wrapper: &[&str],
    args: &[&str],
) -> (tokio::process::Child, SocketAddr) {
    let server = env!("CARGO_BIN_EXE_smart-server");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(rest).arg(server);
            c
        }
        None => tokio::process::Command::new(server),
    };
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null());
    spawn_listening(command, None).await
}

/// Like [`spawn_binary`], with extra environment variables (e.g. `LD_PRELOAD`) and `RUST_LOG=info`
/// output appended to `log` instead of discarded.
pub async fn spawn_binary_env(
    dir: &Path,
    envs: &[(&str, &std::ffi::OsStr)],
    log: &Path,
) -> (tokio::process::Child, SocketAddr) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_smart-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stderr(stderr);
    spawn_listening(command, Some(log)).await
}

/// Spawn `command` (a server; killed on drop) and read the bound address from its first stdout line
/// (`listening on ADDR`); a wrong first line panics with `log`'s content if given.
async fn spawn_listening(
    mut command: tokio::process::Command,
    log: Option<&Path>,
) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap()
    .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let log = log.map(|l| std::fs::read_to_string(l).unwrap_or_default());
            panic!("unexpected first line {line:?}; log: {log:?}")
        })
        .trim()
        .parse()
        .unwrap();
    (child, addr)
}

/// A hand-made websocket handshake on a raw socket: the response status and the socket (past the
/// response head). `host` replaces the Host header (default: `addr`).
pub async fn upgrade_raw(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> (u16, TcpStream) {
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in extra_headers {
        let _ = write!(request, "{k}: {v}\r\n");
    }
    request.push_str("\r\n");
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte so that nothing past the head is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let status = status_of(&String::from_utf8_lossy(&head));
        if status != 101 {
            // Not upgraded: read the rest of the response so that the socket is done.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            })
            .await;
        }
        (status, stream)
    })
    .await
    .unwrap()
}

/// A masked client frame (FIN set) with `opcode` and `payload` (at most 125 bytes).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Read until the server closes the socket (EOF or reset) within `within`: the bytes read, or
/// `None` if it was still open.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| all)
}

/// The opcodes of the (unmasked) server frames in `bytes`, in order; a truncated last frame is
/// ignored.
pub fn server_opcodes(bytes: &[u8]) -> Vec<u8> {
    server_frames(bytes).into_iter().map(|(op, _)| op).collect()
}

/// The (unmasked) server frames in `bytes`, in order, as opcode and payload; a truncated last frame
/// is ignored.
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if bytes.len() < head + len {
            break;
        }
        frames.push((opcode, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    frames
}

/// A text frame that is not UTF-8 closes that connection only, with 1007 after what it was owed
/// (PROTOCOL.md, "Frames"), on the real binary for `path` (`/update/` or `/client/`); the frames
/// the server sent before the close are returned as text, for the caller to check.
pub async fn not_utf8_closes_with_1007(
    addr: SocketAddr,
    path: &str,
    before: &[&str],
) -> Vec<String> {
    let (status, mut raw) = upgrade_raw(addr, path, None, &[]).await;
    assert_eq!(status, 101);
    let mut frames = Vec::new();
    for text in before {
        frames.extend(client_frame(0x1, text.as_bytes()));
    }
    frames.extend(client_frame(0x1, b"{\"type\":\"\xff\xfe\"}"));
    tokio::time::timeout(TIMEOUT, raw.write_all(&frames))
        .await
        .unwrap()
        .unwrap();
    let bytes = read_until_closed(&mut raw, TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("{path}: still open after a text frame that is not UTF-8"));
    let mut got = server_frames(&bytes);
    let (opcode, payload) = got
        .pop()
        .unwrap_or_else(|| panic!("{path}: no frame at all"));
    assert_eq!(opcode, 0x8, "{path}: the last frame is not a close frame");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        1007,
        "{path}: close code"
    );
    assert_eq!(
        &payload[2..],
        b"text frame is not UTF-8",
        "{path}: close reason"
    );
    got.into_iter()
        .map(|(opcode, payload)| {
            assert_eq!(opcode, 0x1, "{path}: a non-text frame before the close");
            String::from_utf8(payload).unwrap()
        })
        .collect()
}

/// A counter or gauge from the `/metrics` text (0 when absent).
pub fn metric_or_zero(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.parse().unwrap())
}

/// `smart_connections_parked`: idle device connections in the parking lot (`auth`: an
/// `Authorization` header, when the server requires one).
pub async fn parked(addr: SocketAddr, auth: &[(&str, &str)]) -> u64 {
    let metrics = http_get(addr, "/metrics", auth).await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    metric_or_zero(&metrics.body, "smart_connections_parked")
}

/// Run `probe` every `every` until it gives `Ok`; fail with its last `Err` once `within` has gone by.
pub async fn poll_until<F, Fut>(within: Duration, every: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Err(why) = probe().await else {
            return;
        };
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(every).await;
    }
}

/// Wait (at most [`TIMEOUT`]) until exactly `n` device connections are parked.
pub async fn until_parked(addr: SocketAddr, n: u64, auth: &[(&str, &str)]) {
    poll_until(TIMEOUT, Duration::from_millis(50), || async move {
        let now = parked(addr, auth).await;
        if now == n {
            Ok(())
        } else {
            Err(format!("{now} connections parked, not {n}"))
        }
    })
    .await;
}

/// `smart-server token issue SERIAL` on `dir` (through the running server if one holds it): the token.
pub fn issue(dir: &std::path::Path, serial: &str) -> String {
    let (out, err, ok) = cli(dir, &["token", "issue", serial], "");
    assert!(ok, "{err}");
    out.lines().last().unwrap().to_owned()
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `smart-server --data-dir DIR ARGS…` with `stdin`; its stdout, stderr and success.
pub fn cli(dir: &std::path::Path, args: &[&str], stdin: &str) -> (String, String, bool) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smart-server"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Resident set of a process, in bytes.
pub fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}
