//! SMART-OS server: devices stream their state over websockets (`/update/`), every accepted update is
//! made durable (a write-ahead log group commit, checkpointed into sled) before it is acked, and
//! dashboards (`/client/`, the embedded page at `/`) watch the fleet live. See `docs/server.md` for the architecture and PROTOCOL.md for the wire
//! format.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use smart_server::{Config, Server};
//!
//! let server = Server::bind(Config::for_tests("./smart-data".into())).await?;
//! println!("listening on {}", server.local_addr());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod account;
mod acks;
mod admin;
mod auth;
mod cli;
mod cluster;
mod config;
mod conns;
mod dashboard;
mod device;
mod fleet;
mod history;
mod http;
mod hub;
mod ingest;
mod lenient;
mod liveness;
mod metrics;
#[cfg(test)]
mod reopen;
mod server;
mod shutdown;
mod state;
mod store;
mod tls;
mod wakes;
mod wal;
mod ws;

pub use auth::{AuthMode, Role};
pub use cli::run_command;
pub use config::{AckMode, Command, Config, Registration, TokenAction, UserAction};
pub use server::Server;
pub use store::StoreError;
