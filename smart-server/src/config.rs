//! Command-line flags and environment (`SMART_*`): everything an operator may tune.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::{AuthMode, Role};

/// Whether unknown serials may register by sending their first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Any serial that sends a valid INIT or UPDT becomes a device (the default, as in the original).
    Open,
    /// Only devices already in the store are accepted; unknown serials get ERROR.
    Closed,
}

/// What an OK promises when instances share a fleet (`--ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// After the local write-ahead log's fdatasync; shipped to Redis asynchronously.
    Local,
    /// After both the local sync and Redis's reply (ERROR while Redis cannot be reached).
    Cluster,
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
    /// Clamped at start to the file-descriptor limit (`ulimit -n`) minus 128: 64 descriptors stay
    /// reserved for the store and the process, 64 for plain HTTP (`/healthz`, `/api`). Every accepted
    /// socket counts against the limit minus 64; when those are spent, the HTTP connection that has
    /// waited longest for a request is closed to make room, or the new one gets 503.
    #[arg(long, env = "SMART_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds a websocket peer (device or dashboard) may stay silent: after half of it the server
    /// pings, and closes the connection (1001 "idle timeout") when nothing, not even a pong, has
    /// arrived by the end. 0 disables the timeout.
    #[arg(
        long = "idle-timeout",
        env = "SMART_IDLE_TIMEOUT",
        default_value_t = 120
    )]
    pub idle_timeout_secs: u64,

    /// Milliseconds a plain-TCP device connection that went to a task waits, silent with nothing in
    /// flight, before it is parked again. Parked, it has no task and no buffer (~0.8 KiB per idle
    /// connection), and the parking lot's thread serves what a reporting device sends (whole text
    /// frames, pings, pongs) itself; anything else (a frame in pieces, binary, a close, a reply the
    /// socket does not take at once, a liveness deadline) gives it a task again. A new connection
    /// parks right after its welcome. 0 never parks: every connection keeps its task.
    #[arg(
        long = "park-after",
        env = "SMART_PARK_AFTER",
        default_value_t = 10_000
    )]
    pub park_after_ms: u64,

    /// Parking-lot threads: each polls its share of the parked device sockets and serves their
    /// frames; new connections are spread over them in turn. One thread serves ~100k acks/s here
    /// (2 cores, where a second one measured 1.17× the CPU per ack); on a machine with more cores
    /// and more devices, raise it.
    #[arg(
        long = "device-threads",
        env = "SMART_DEVICE_THREADS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub device_threads: u16,

    /// Most distinct serials one device connection may send for; messages for further serials get
    /// `MID:SERIAL:ERROR` (the connection stays open and its serials keep working).
    #[arg(long, env = "SMART_MAX_SERIALS_PER_CONNECTION", default_value_t = 1000)]
    pub max_serials_per_connection: usize,

    /// Browser origin allowed to open `/update/` (and `/client/`), e.g. `https://ops.example.com`.
    /// Repeatable; with `SMART_ALLOWED_ORIGIN` separate origins by commas. Devices send no Origin and
    /// are always allowed; the server's own origin may always open `/client/`.
    #[arg(
        long = "allowed-origin",
        env = "SMART_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Recent changes kept for dashboards (one ring shared by all of them, a few hundred bytes each);
    /// a dashboard further behind is conflated: it gets the current record of each device changed
    /// since, once. Size it to a second or two of the fleet's changes.
    #[arg(long, env = "SMART_DASHBOARD_QUEUE", default_value_t = 16_384)]
    pub dashboard_queue: usize,

    /// Devices a conflated dashboard may owe before it is resynchronised with a fresh INIT of its
    /// view instead.
    #[arg(long, env = "SMART_DASHBOARD_CONFLATE", default_value_t = 16_384)]
    pub dashboard_conflate: usize,

    /// Most extra fields (keys outside PROTOCOL.md §6's table) one device record may hold; a message
    /// that would add more gets ERROR and is not stored.
    #[arg(long, env = "SMART_MAX_EXTRAS", default_value_t = 256)]
    pub max_extras: usize,

    /// Largest value of one extra field, in bytes of compact JSON; a message carrying a larger one gets
    /// ERROR and is not stored. 256 extras of 4 KiB make the default `--max-record-bytes`.
    #[arg(long, env = "SMART_MAX_EXTRA_BYTES", default_value_t = 4096)]
    pub max_extra_bytes: usize,

    /// Most dashboards (`/client/` connections) open at once; upgrades beyond get 503 with a JSON
    /// error.
    #[arg(long, env = "SMART_MAX_DASHBOARDS", default_value_t = 1000)]
    pub max_dashboards: usize,

    /// Messages one device connection may have waiting for their ack before the server stops reading
    /// from it.
    #[arg(long, env = "SMART_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Largest stored record (a device's full record JSON, extras included), in bytes; an update that
    /// would make a record larger gets ERROR. At most the write-ahead log's frame limit (64 MiB).
    #[arg(
        long,
        env = "SMART_MAX_RECORD_BYTES",
        default_value_t = DEFAULT_MAX_RECORD_BYTES,
        value_parser = parse_record_cap
    )]
    pub max_record_bytes: usize,

    /// Seconds between checkpoints: the latest records and the history's new samples are written to
    /// sled and the write-ahead log behind them retired (sooner when 64 MiB of log are waiting). Acks
    /// do not wait for checkpoints; longer means fewer, larger sled writes (a device changing every
    /// few seconds gets one history part per checkpoint), a longer log to replay after a crash.
    #[arg(
        long = "checkpoint-seconds",
        env = "SMART_CHECKPOINT_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=300)
    )]
    pub checkpoint_seconds: u32,

    /// Keep the history of every numeric field (`on`, the default) or only the latest records (`off`).
    #[arg(long, env = "SMART_HISTORY", value_enum, default_value_t = Switch::On)]
    pub history: Switch,

    /// Hours raw history samples are kept (then deleted, a whole hour at a time).
    #[arg(
        long,
        env = "SMART_HISTORY_RAW_HOURS",
        default_value_t = 48,
        value_parser = clap::value_parser!(u32).range(1..=87_600)
    )]
    pub history_raw_hours: u32,

    /// Days the 5-minute rollups of the history (min, max, average, last, count) are kept.
    #[arg(
        long = "history-5m-days",
        env = "SMART_HISTORY_5M_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=36_500)
    )]
    pub history_5m_days: u32,

    /// Days the hourly rollups of the history are kept.
    #[arg(
        long = "history-1h-days",
        env = "SMART_HISTORY_1H_DAYS",
        default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..=36_500)
    )]
    pub history_1h_days: u32,

    /// Power samples further apart than this many minutes are not bridged when the history integrates
    /// energy (`/api/devices/{serial}/energy`); such time counts as not covered.
    #[arg(
        long = "history-energy-gap-minutes",
        env = "SMART_HISTORY_ENERGY_GAP_MINUTES",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=60)
    )]
    pub history_energy_gap_minutes: u32,

    /// Seconds graceful shutdown waits for connections to finish before giving up on them.
    #[arg(
        long = "shutdown-grace",
        env = "SMART_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    /// Whether devices need a token and people a login: `off` or `required`. Default: `off` when
    /// `--listen` is a loopback address (the zero-config first run), `required` otherwise; `off` on
    /// another address must be asked for and logs a warning.
    #[arg(long, env = "SMART_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// PEM certificate chain: serve https and wss (with `--tls-key`) instead of http and ws.
    #[arg(long, env = "SMART_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SMART_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Redis URL (`redis://[:PASSWORD@]HOST:PORT[/DB]`): several instances share one fleet through it.
    /// Each committed batch is shipped to Redis (latest record per device, a change stream), and
    /// every instance applies the others' changes. Unset: one instance, nothing shared.
    #[arg(long, env = "SMART_REDIS")]
    pub redis: Option<String>,

    /// When a device gets its OK with `--redis`: `local` (after the local fdatasync; shipped to
    /// Redis right after, kept in the log until shipped) or `cluster` (after the local sync and Redis's
    /// reply; new writes get ERROR while Redis cannot be reached). `cluster` needs `--redis`.
    #[arg(long, env = "SMART_ACK", value_enum, default_value_t = AckMode::Local)]
    pub ack: AckMode,

    /// Approximate length the change stream (and the presence stream) is trimmed to
    /// (`XADD MAXLEN ~`), with `--redis`.
    #[arg(
        long = "redis-stream-max-len",
        env = "SMART_REDIS_STREAM_MAX_LEN",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub redis_stream_max_len: u64,

    /// With `--redis --ack local`: the shortest time between two shipping round trips, in
    /// milliseconds. What devices write meanwhile is conflated (the latest record of each device
    /// ships), so a device that writes faster than this costs Redis and the other instances no more
    /// than one that writes at this rate; the other instances see a change this much later at most.
    /// 0 ships as soon as the previous round trip is answered. `--ack cluster` never waits.
    #[arg(
        long = "redis-ship-interval",
        env = "SMART_REDIS_SHIP_INTERVAL",
        value_name = "MS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(0..=10_000)
    )]
    pub redis_ship_interval: u64,

    /// With `--redis`: the TTL of this instance's heartbeat in Redis, in seconds (refreshed every
    /// third of it). When an instance stops refreshing it (killed, cut off from Redis), the others
    /// take its devices for offline within about this time plus a third.
    #[arg(
        long = "redis-presence-ttl",
        env = "SMART_REDIS_PRESENCE_TTL",
        value_name = "SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub redis_presence_ttl: u64,

    /// Manage device tokens or users instead of serving (see `smart-server token --help`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `smart-server` does besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Device tokens: a device presents its token on `/update/` when auth is required.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Users: people and scripts log in with a name and password when auth is required.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Benchmark the history: fill an empty data dir with simulated hours of a fleet (ending now) and
    /// print bytes per sample, fill, rollup, query and retention times as one JSON line.
    HistoryFill {
        /// Simulated devices.
        #[arg(long, default_value_t = 10_000)]
        devices: u32,
        /// Simulated hours, ending now.
        #[arg(long, default_value_t = 48)]
        hours: u32,
        /// Seconds between a device's messages.
        #[arg(long, default_value_t = 5)]
        interval_secs: u32,
    },
}

/// `smart-server token …`
#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Issue a new token for SERIAL (replacing any earlier one) and print it as the last line.
    Issue {
        serial: String,
        /// The owner the device gets (its record's `owner`, what users with `--scope-owner` see
        /// by), from its next accepted message; without it, new devices get `--owner`.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Revoke SERIAL's token.
    Revoke { serial: String },
    /// List the serials that have a token, when each was created and last used (never the tokens).
    List,
    /// Issue tokens for many serials (given, or one per line on stdin) and write `SERIAL TOKEN`
    /// lines to FILE (created with permissions 0600).
    Bulk {
        /// Where the `SERIAL TOKEN` lines go; must not exist yet.
        #[arg(long)]
        out: PathBuf,
        /// Serials; read from stdin, one per line, when none are given.
        serials: Vec<String>,
        /// The owner these devices get (see `token issue --owner`).
        #[arg(long)]
        owner: Option<String>,
    },
}

/// `smart-server user …`
#[derive(Debug, Clone, Subcommand)]
pub enum UserAction {
    /// Add (or replace) user NAME; the password is read from stdin (one line).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Only devices whose `owner` is this are visible to the user.
        #[arg(long)]
        scope_owner: Option<String>,
    },
    /// Remove user NAME.
    Remove { name: String },
    /// List the users with their role and scope.
    List,
}

/// Default of `--max-record-bytes`: 1 MiB, far below the log's frame limit.
pub(crate) const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The largest `--max-record-bytes` accepted: the write-ahead log cannot read back a larger record.
pub(crate) const MAX_RECORD_BYTES_LIMIT: usize = crate::wal::MAX_PAYLOAD;

fn parse_record_cap(text: &str) -> Result<usize, String> {
    let value: usize = text.parse().map_err(|e| format!("{e}"))?;
    if (1..=MAX_RECORD_BYTES_LIMIT).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between 1 and {MAX_RECORD_BYTES_LIMIT} (the write-ahead log's frame limit)"
        ))
    }
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
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
            idle_timeout_secs: 120,
            // Shorter than the default (10 s), so that the tests' devices park and resume often.
            park_after_ms: 500,
            device_threads: 1,
            max_serials_per_connection: 1000,
            allowed_origins: Vec::new(),
            dashboard_queue: 16_384,
            dashboard_conflate: 16_384,
            max_dashboards: 1000,
            max_in_flight: 256,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_extras: 256,
            max_extra_bytes: 4096,
            shutdown_grace_secs: 10,
            checkpoint_seconds: 60,
            history: Switch::On,
            history_raw_hours: 48,
            history_5m_days: 30,
            history_1h_days: 365,
            history_energy_gap_minutes: 10,
            auth: None,
            tls_cert: None,
            tls_key: None,
            redis: None,
            ack: AckMode::Local,
            redis_stream_max_len: 100_000,
            redis_ship_interval: 20,
            redis_presence_ttl: 15,
            command: None,
        }
    }

    /// What the store keeps of the past (`--history`, `--history-raw-hours`).
    pub(crate) fn history(&self) -> crate::history::HistoryOptions {
        const HOUR_MS: i64 = 3_600_000;
        crate::history::HistoryOptions {
            enabled: self.history == Switch::On,
            raw_ms: i64::from(self.history_raw_hours) * HOUR_MS,
            five_minutes_ms: i64::from(self.history_5m_days) * 24 * HOUR_MS,
            hour_ms: i64::from(self.history_1h_days) * 24 * HOUR_MS,
            energy_gap_ms: i64::from(self.history_energy_gap_minutes) * 60_000,
        }
    }

    /// `--auth`, or its default for the listen address: off on loopback, required elsewhere.
    pub fn auth_mode(&self) -> AuthMode {
        self.auth.unwrap_or(if self.listen.ip().is_loopback() {
            AuthMode::Off
        } else {
            AuthMode::Required
        })
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
        assert_eq!(parsed.dashboard_conflate, tests.dashboard_conflate);
        assert_eq!(parsed.max_dashboards, tests.max_dashboards);
        assert_eq!(parsed.max_in_flight, tests.max_in_flight);
        assert_eq!(parsed.idle_timeout_secs, tests.idle_timeout_secs);
        assert_eq!(parsed.park_after_ms, 10_000);
        assert_eq!(parsed.device_threads, 1);
        assert_eq!(
            parsed.max_serials_per_connection,
            tests.max_serials_per_connection
        );
        assert_eq!(parsed.max_extras, tests.max_extras);
        assert_eq!(parsed.max_extra_bytes, tests.max_extra_bytes);
        assert_eq!(parsed.max_record_bytes, 1024 * 1024);
        assert_eq!(parsed.max_record_bytes, tests.max_record_bytes);
    }

    /// No record cap beyond what the log can read back (issue 9, item 1).
    #[test]
    fn the_record_cap_stays_within_the_log_frame_limit() {
        let at_limit = MAX_RECORD_BYTES_LIMIT.to_string();
        let c = Config::try_parse_from(["smart-server", "--max-record-bytes", &at_limit]).unwrap();
        assert_eq!(c.max_record_bytes, crate::wal::MAX_PAYLOAD);
        let beyond = (MAX_RECORD_BYTES_LIMIT + 1).to_string();
        assert!(Config::try_parse_from(["smart-server", "--max-record-bytes", &beyond]).is_err());
        assert!(Config::try_parse_from(["smart-server", "--max-record-bytes", "0"]).is_err());
    }

    #[test]
    fn auth_defaults_to_off_on_loopback_only() {
        let local = Config::try_parse_from(["smart-server"]).unwrap();
        assert_eq!(local.auth_mode(), AuthMode::Off);
        let any = Config::try_parse_from(["smart-server", "--listen", "0.0.0.0:8000"]).unwrap();
        assert_eq!(any.auth_mode(), AuthMode::Required);
        let v6 = Config::try_parse_from(["smart-server", "--listen", "[::1]:8000"]).unwrap();
        assert_eq!(v6.auth_mode(), AuthMode::Off);
        let forced = Config::try_parse_from(["smart-server", "--auth", "required"]).unwrap();
        assert_eq!(forced.auth_mode(), AuthMode::Required);
        let open =
            Config::try_parse_from(["smart-server", "--listen", "0.0.0.0:0", "--auth", "off"])
                .unwrap();
        assert_eq!(open.auth_mode(), AuthMode::Off);
        let cmd =
            Config::try_parse_from(["smart-server", "--data-dir", "d", "token", "issue", "0001"])
                .unwrap();
        assert!(matches!(
            cmd.command,
            Some(Command::Token { action: TokenAction::Issue { ref serial, .. } }) if serial == "0001"
        ));
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

    #[test]
    fn redis_flags_parse() {
        let none = Config::try_parse_from(["smart-server"]).unwrap();
        assert_eq!(none.redis, None);
        assert_eq!(none.ack, AckMode::Local);
        let c = Config::try_parse_from([
            "smart-server",
            "--redis",
            "redis://127.0.0.1:6379",
            "--ack",
            "cluster",
            "--redis-stream-max-len",
            "500",
            "--redis-presence-ttl",
            "2",
            "--redis-ship-interval",
            "0",
        ])
        .unwrap();
        assert_eq!(c.redis.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.ack, AckMode::Cluster);
        assert_eq!(c.redis_stream_max_len, 500);
        assert_eq!(c.redis_presence_ttl, 2);
        assert_eq!(none.redis_presence_ttl, 15);
        assert_eq!((c.redis_ship_interval, none.redis_ship_interval), (0, 20));
        assert!(
            Config::try_parse_from(["smart-server", "--redis-ship-interval", "10001"]).is_err()
        );
        assert!(Config::try_parse_from(["smart-server", "--redis-stream-max-len", "0"]).is_err());
        assert!(Config::try_parse_from(["smart-server", "--redis-presence-ttl", "0"]).is_err());
    }
}
