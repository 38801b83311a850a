//! The server's lifecycle: open the shared state ([`crate::state`]), bind, accept connections and
//! hand each to [`crate::http`], then shut down gracefully.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::conns::Budget;
use crate::http;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Tracker};
use crate::state::Shared;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    shutdown: Shutdown,
    tracker: Tracker,
    /// `--tls-cert`/`--tls-key`, loaded.
    tls: Option<crate::tls::Acceptor>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Open the store, load the fleet from it (every device offline) and bind the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let budget = Budget::of_process(config.max_connections);
        let max_connections = config.max_connections;
        let shared = Arc::new(Shared::open(config, budget).await?);
        let listen = shared.config.listen;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        if let Err(e) = shared
            .auth
            .write_admin_file(&shared.config.data_dir, local_addr)
        {
            warn!(%e, "cannot write the admin file: `token`/`user` commands will not reach this server");
        }
        let (shutdown_tx, shutdown) = Shutdown::new();
        log_budget(&budget, max_connections);
        Ok(Server {
            listener,
            local_addr,
            shared,
            shutdown_tx,
            shutdown,
            tracker: Tracker::new(),
            tls,
        })
    }

    /// The address the listener is bound to (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` resolves, then shut down gracefully: stop accepting, let every
    /// connection finish and ack what it has in flight, close websockets with 1001, flush the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            local_addr,
            shared,
            shutdown_tx,
            shutdown: watcher,
            mut tracker,
            tls,
        } = self;
        info!(%local_addr, tls = tls.is_some(), "serving");
        let routes = warp::service(http::routes(Arc::clone(&shared)));
        // Idle plain-TCP device connections wait here without a task (device/park.rs).
        let parking = crate::device::parking(&shared, &watcher);
        tokio::pin!(shutdown);
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = async {
                    shared.conns.room().await;
                    listener.accept().await
                } => match accepted {
                    Ok((stream, _peer)) => {
                        // Acks are tiny and latency-bound: never let Nagle hold them back.
                        let _ = stream.set_nodelay(true);
                        let Some(token) = tracker.token() else { break };
                        let Some(slot) = shared.conns.admit() else {
                            refuse(stream, &shared, &mut last_refusal_log);
                            continue;
                        };
                        let (shared, routes, watcher, parking) = (Arc::clone(&shared), routes.clone(), watcher.clone(), parking.clone());
                        match tls.clone() {
                            None => {
                                tokio::spawn(http::serve_connection(stream, slot, shared, routes, watcher, token, parking));
                            }
                            Some(acceptor) => {
                                tokio::spawn(async move {
                                    // The handshake runs in the connection's own task, bounded in time.
                                    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => {
                                            http::serve_connection(stream, slot, shared, routes, watcher, token, parking).await;
                                        }
                                        Ok(Err(e)) => debug!(%e, "TLS handshake failed"),
                                        Err(_) => debug!("TLS handshake timed out"),
                                    }
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        warn!(%e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        info!("shutting down: finishing open connections");
        let _ = shutdown_tx.send(true);
        let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                ?grace,
                "connections still open after the grace period; closing anyway"
            );
        }
        shared.close().await?;
        info!("shut down cleanly");
        Ok(())
    }
}

/// Say at start what the connection caps are, and whether the descriptor limit lowered them.
fn log_budget(budget: &Budget, max_connections: usize) {
    let fd_limit = budget
        .fd_limit
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    info!(
        fd_limit,
        max_sockets = budget.sockets,
        max_websockets = budget.websockets,
        "connection caps (the descriptor limit minus {} for the store and {} for plain HTTP)",
        crate::conns::STORE_RESERVE,
        crate::conns::HTTP_RESERVE,
    );
    if budget.websockets < max_connections {
        warn!(
            "--max-connections {max_connections} lowered to {} by the file-descriptor limit \
             {fd_limit}; raise `ulimit -n` to allow more",
            budget.websockets
        );
    }
}

/// No room for another socket, not even by closing an idle one: a 503 if the socket takes it at
/// once, then close. Logged at most once a second.
fn refuse(stream: TcpStream, shared: &Shared, last_log: &mut Option<Instant>) {
    const REFUSAL: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
        content-length: 32\r\nconnection: close\r\n\r\n{\"error\":\"too many connections\"}";
    Metrics::inc(&shared.metrics.connections_refused_fd);
    // Take in what the client has sent already: closing with unread data resets the connection,
    // and the client might lose the answer.
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
    let _ = stream.try_write(REFUSAL);
    drop(stream);
    if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
        *last_log = Some(Instant::now());
        warn!(
            open = shared.conns.open(),
            max_sockets = shared.conns.budget().sockets,
            "refusing connections: the descriptor budget is spent by active ones"
        );
    }
}
