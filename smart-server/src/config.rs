//! Command-line flags and environment (`SMART_*`): everything an operator may tune.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Whether unknown serials may register by sending their first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Any serial that sends a valid INIT or UPDT becomes a device (the default, as in the original).
    Open,
    /// Only devices already in the store are accepted; unknown serials get ERROR.
    Closed,
}

/// SMART-OS server: durable device ingest over websockets, live dashboards, HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "smart-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, env = "SMART_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Directory of the store: `sled/` (the latest record of every device) and `wal/` (the
    /// write-ahead log of recent commits).
    #[arg(long, env = "SMART_DATA_DIR", default_value = "./smart-data")]
    pub data_dir: PathBuf,

    /// Owner written into the records of newly registered devices.
    #[arg(long, env = "SMART_OWNER", default_value = "EET")]
    pub owner: String,

    /// Whether unknown serials may register.
    #[arg(long, env = "SMART_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Largest websocket message accepted, in bytes; larger frames close the connection with 1009.
    #[arg(long, env = "SMART_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Most websocket connections (devices and dashboards) open at once; upgrades beyond get 503.
    #[arg(long, env = "SMART_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Browser origin allowed to open `/update/` (and `/client/`), e.g. `https://ops.example.com`.
    /// Repeatable; with `SMART_ALLOWED_ORIGIN` separate origins by commas. Devices send no Origin and
    /// are always allowed; the server's own origin may always open `/client/`.
    #[arg(
        long = "allowed-origin",
        env = "SMART_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Recent changes kept for dashboards (one ring shared by all of them); a dashboard further behind
    /// is conflated: it gets the current record of each device changed since, once.
    #[arg(long, env = "SMART_DASHBOARD_QUEUE", default_value_t = 1024)]
    pub dashboard_queue: usize,

    /// Devices a conflated dashboard may owe before it is resynchronised with a fresh INIT of its
    /// view instead.
    #[arg(long, env = "SMART_DASHBOARD_CONFLATE", default_value_t = 4096)]
    pub dashboard_conflate: usize,

    /// Most dashboards (`/client/` connections) open at once; upgrades beyond get 503 with a JSON
    /// error.
    #[arg(long, env = "SMART_MAX_DASHBOARDS", default_value_t = 1000)]
    pub max_dashboards: usize,

    /// Messages one device connection may have waiting for their ack before the server stops reading
    /// from it.
    #[arg(long, env = "SMART_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Seconds graceful shutdown waits for connections to finish before giving up on them.
    #[arg(
        long = "shutdown-grace",
        env = "SMART_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// The defaults, listening on `127.0.0.1:0` and storing in `data_dir`: what integration tests use.
    /// Environment variables are ignored so that tests do not depend on the caller's shell.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            owner: "EET".to_owned(),
            registration: Registration::Open,
            max_frame_bytes: 65_536,
            max_connections: 100_000,
            allowed_origins: Vec::new(),
            dashboard_queue: 1024,
            dashboard_conflate: 4096,
            max_dashboards: 1000,
            max_in_flight: 256,
            shutdown_grace_secs: 10,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let parsed = Config::try_parse_from(["smart-server"]).unwrap();
        let tests = Config::for_tests(PathBuf::from("./smart-data"));
        assert_eq!(parsed.data_dir, tests.data_dir);
        assert_eq!(parsed.owner, "EET");
        assert_eq!(parsed.registration, Registration::Open);
        assert_eq!(parsed.max_frame_bytes, 65_536);
        assert_eq!(parsed.max_connections, tests.max_connections);
        assert_eq!(parsed.dashboard_queue, tests.dashboard_queue);
        assert_eq!(parsed.max_dashboards, tests.max_dashboards);
        assert_eq!(parsed.max_in_flight, tests.max_in_flight);
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "smart-server",
            "--listen",
            "127.0.0.1:0",
            "--registration",
            "closed",
            "--allowed-origin",
            "http://a",
            "--allowed-origin",
            "http://b",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.registration, Registration::Closed);
        assert_eq!(c.allowed_origins, ["http://a", "http://b"]);
    }
}
