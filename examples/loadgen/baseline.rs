//! The baseline of `--baseline`: a minimal echo-ack websocket server, run as a child process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use smart_proto::{Header, ServerMessage};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// Start the baseline server as a child process; its first stdout line says where it listens.
pub(crate) async fn spawn_baseline() -> Result<(tokio::process::Child, String, u32)> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--serve-baseline", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline server")?;
    let pid = child.id().context("baseline server exited at once")?;
    let stdout = child
        .stdout
        .take()
        .context("no stdout of the baseline server")?;
    let line = timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("baseline server did not start")??
    .context("baseline server exited")?;
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((child, format!("ws://{addr}"), pid))
}

/// The ceiling: a websocket server that reads the header of each device message and acks it, with no
/// parsing of the body, no storage and no fan-out. Dashboards get the welcome and an empty snapshot.
/// Its connections are served like smart-server's: hyper HTTP/1 with upgrades, Nagle off.
pub(crate) async fn serve_baseline(listen: SocketAddr) -> Result<()> {
    use tower_service::Service as _;
    use warp::Filter as _;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let route =
        warp::path::full()
            .and(warp::ws())
            .map(|path: warp::path::FullPath, ws: warp::ws::Ws| {
                let dashboard = path.as_str().starts_with("/client");
                ws.on_upgrade(move |socket| async move {
                    if dashboard {
                        baseline_dashboard(socket).await;
                    } else {
                        baseline_device(socket).await;
                    }
                })
            });
    let routes = warp::service(route);
    loop {
        let (stream, _peer) = listener.accept().await.context("accepting")?;
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |request| {
            let mut routes = routes;
            routes.call(request)
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!("baseline connection: {err}");
            }
        });
    }
}

/// The `MID:SERIAL` of a device frame, found without parsing the JSON.
fn baseline_header(frame: &str) -> Option<Header> {
    let at = frame.find("\"message\"")? + "\"message\"".len();
    let rest = frame[at..]
        .trim_start_matches([' ', ':'])
        .strip_prefix('"')?;
    Header::parse(rest).ok().map(|(header, _)| header)
}

async fn baseline_device(mut socket: warp::ws::WebSocket) {
    let welcome = ServerMessage::Info(smart_proto::DEVICE_WELCOME.to_owned()).to_frame();
    if socket.send(warp::ws::Message::text(welcome)).await.is_err() {
        return;
    }
    let reply = |message: &warp::ws::Message| {
        let frame = message.to_str().unwrap_or_default();
        match baseline_header(frame) {
            Some(header) => ServerMessage::Ok(header).to_frame(),
            None => ServerMessage::Error {
                header: None,
                reason: "no header".to_owned(),
            }
            .to_frame(),
        }
    };
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
        if !message.is_text() {
            continue;
        }
        if socket
            .feed(warp::ws::Message::text(reply(&message)))
            .await
            .is_err()
        {
            return;
        }
        // Answer everything already received with one write, as a server batching its acks would.
        while let Some(Some(Ok(message))) = socket.next().now_or_never() {
            if message.is_text()
                && socket
                    .feed(warp::ws::Message::text(reply(&message)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

async fn baseline_dashboard(mut socket: warp::ws::WebSocket) {
    let welcome = ServerMessage::Info(smart_proto::DASHBOARD_WELCOME.to_owned()).to_frame();
    let snapshot = smart_proto::write_init([]);
    for frame in [welcome, snapshot] {
        if socket.send(warp::ws::Message::text(frame)).await.is_err() {
            return;
        }
    }
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
    }
}
