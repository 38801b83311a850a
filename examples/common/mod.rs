//! What the examples share: the flags of the measuring examples, logging and runtime setup, endpoint
//! URLs, websocket setup, a latency histogram, the first errors of a run, readings from `/proc`, progress
//! bars and small numeric and clock helpers; the frame of a measured run (`run`), the idle measurement
//! (`idle`) and the report helpers (`report`) that loadgen and `mqtt_load` share.
//!
//! Each example includes this module with `mod common;`, and none uses all of it.
#![allow(dead_code)]

mod access;
pub mod idle;
pub mod report;
pub mod run;

#[allow(
    unused_imports,
    reason = "tests/examples_smoke.rs includes this module and uses part of it"
)]
pub use access::{AccessFlags, connect_as};

use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use smart_proto::Timestamp;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client websocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `/proc/PID/stat` counts CPU time in clock ticks; Linux fixes `USER_HZ` at 100 on every platform
/// this runs on, and reading `sysconf` would need a libc binding for one constant.
pub const CLOCK_TICKS_PER_S: f64 = 100.0;

/// The flags the measuring examples (`loadgen`, `solmate_sim`) share, flattened into their arguments
/// with `#[command(flatten)]`. The help texts are loadgen's; [`parse_args`] gives another example its
/// own wording.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Pid of the (local) server, to report its CPU use and resident memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker threads of this process's runtime (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

impl Flags {
    /// Whether progress bars stay hidden: asked for, or the output is JSON.
    pub fn no_progress(&self) -> bool {
        self.quiet || self.json
    }

    /// A multi-threaded runtime with `--threads` workers (default: one per core).
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = self.threads {
            runtime.worker_threads(threads.max(1));
        }
        runtime.enable_all().build().context("starting the runtime")
    }
}

/// Parse the command line as `Parser::parse` does, with the help text of each named argument
/// (`(id, help)`, the id being the field's name) replaced: flattened [`Flags`] in an example that
/// words them its own way. An id that names no argument panics at start (clap's `mut_arg`).
pub fn parse_args<T: clap::Parser>(help: &[(&'static str, &'static str)]) -> T {
    let mut command = T::command();
    for &(id, text) in help {
        command = command.mut_arg(id, |arg| arg.help(text));
    }
    let mut matches = command.get_matches_mut();
    T::from_arg_matches_mut(&mut matches).unwrap_or_else(|err| err.format(&mut command).exit())
}

/// Log to stderr, filtered by `RUST_LOG` (nothing by default).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
}

/// The URL of an endpoint (`/update/` or `/client/`) on the server at `base`
/// (`ws://127.0.0.1:8000` or `wss://…`, with or without a trailing slash or an endpoint path already).
pub fn endpoint(base: &str, path: &str) -> Result<String> {
    let (scheme, rest) = split_scheme(base)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("server URL {base:?} has no host");
    }
    Ok(format!("{scheme}{authority}{path}"))
}

/// `ws://` or `wss://`, and the rest of the URL.
fn split_scheme(base: &str) -> Result<(&'static str, &str)> {
    ["wss://", "ws://"]
        .into_iter()
        .find_map(|scheme| base.strip_prefix(scheme).map(|rest| (scheme, rest)))
        .with_context(|| format!("server URL {base:?} must start with ws:// or wss://"))
}

/// The `host:port` part of a `ws://` or `wss://` URL.
pub fn authority(base: &str) -> Result<&str> {
    let (_, rest) = split_scheme(base)?;
    Ok(rest.split('/').next().unwrap_or_default())
}

/// Whether the URL names the loopback interface: the load generator refuses anything else.
pub fn is_loopback(base: &str) -> bool {
    let Ok(authority) = authority(base) else {
        return false;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A websocket configuration for sockets that carry small frames: tungstenite allocates its read buffer
/// eagerly (128 KiB by default), which would cost a simulator with 10,000 devices over a gigabyte.
/// Larger messages still arrive whole; they are assembled outside this buffer.
pub fn small_frames_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// Connect a websocket with Nagle disabled (replies are small and latency is what is measured), within
/// `limit`.
pub async fn connect(url: &str, config: WebSocketConfig, limit: Duration) -> Result<Ws> {
    connect_as(url, None, config, limit).await
}

/// Microseconds since a process-wide monotonic origin: the load generator stamps device messages with it
/// and its dashboards, in the same process, subtract it from their own clock.
pub fn monotonic_micros() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A duration from a number of seconds given on the command line.
pub fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{what} must be a number of seconds ≥ 0, not {value}"))
}

/// The current time as the protocol writes timestamps (`2024-03-17T14:59:13.047108Z`).
pub fn now_text() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    Timestamp::from_unix_micros(micros).to_string()
}

/// The first errors of a run, for its report; the others are only logged (at debug level).
#[derive(Debug, Default)]
pub struct FirstErrors(Mutex<Vec<String>>);

impl FirstErrors {
    /// How many errors a report shows.
    const KEPT: usize = 5;

    /// Log an error, and keep it if it is one of the first.
    pub fn note(&self, what: String) {
        tracing::debug!("{what}");
        let mut first = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if first.len() < Self::KEPT {
            first.push(what);
        }
    }

    /// The errors kept so far.
    pub fn to_vec(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A latency histogram with bounded memory and about 3 % relative error: 32 linear buckets per power
/// of two (the scheme of `HdrHistogram`, reduced to what the examples need). Values are microseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB_BUCKETS as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < SUB_BUCKETS {
            return value as usize;
        }
        let exponent = value.ilog2();
        let shift = exponent - SUB_BITS;
        let sub = (value >> shift) & (SUB_BUCKETS - 1);
        ((u64::from(shift) + 1) * SUB_BUCKETS + sub) as usize
    }

    /// The smallest value of bucket `index`, and the bucket's width.
    fn bucket(index: usize) -> (u64, u64) {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return (index, 1);
        }
        let shift = index / SUB_BUCKETS - 1;
        let sub = index % SUB_BUCKETS;
        ((SUB_BUCKETS + sub) << shift, 1 << shift)
    }

    /// Count one value.
    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Add another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0..=1), as the middle of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = Self::bucket(index);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    /// The value at quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile(q) as f64 / 1000.0
    }

    /// The largest value, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max as f64 / 1000.0
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU time (user + system) a process has used, in clock ticks (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let mut fields = after_comm.split_whitespace().skip(11);
    let mut next = || -> Result<u64> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    Ok(next()? + next()?)
}

/// CPU use of a process over a period, sampled at its start and end.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    /// Start measuring `pid`.
    pub fn start(pid: u32) -> Result<CpuSample> {
        Ok(CpuSample {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// Average CPU use since the start, in percent of one core.
    pub fn percent(&self) -> Result<f64> {
        let ticks = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        let elapsed = self.at.elapsed().as_secs_f64().max(1e-3);
        Ok(ticks as f64 / CLOCK_TICKS_PER_S / elapsed * 100.0)
    }
}

/// The 1-minute load average of the machine (`/proc/loadavg`): above the core count, other work was
/// competing for the CPU during a measurement.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit on open files of this process (`/proc/self/limits`), which bounds the sockets it
/// can hold.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Refuse to open more sockets than the open-files limit allows, with advice instead of a failure
/// halfway through the run.
pub fn check_socket_budget(sockets: usize) -> Result<()> {
    // Leave room for the runtime, stdio, the progress bar and a child process's pipes.
    const RESERVED: u64 = 100;
    if let Some(limit) = open_files_limit()
        && sockets as u64 + RESERVED > limit
    {
        bail!(
            "{sockets} sockets do not fit in this process: its open-files limit is {limit} (`ulimit -n`), so one \
             process holds at most {} sockets; raise the limit or run several processes on disjoint serials",
            limit.saturating_sub(RESERVED)
        );
    }
    Ok(())
}

/// A progress bar over a run of `seconds`, on stderr (hidden when stderr is not a terminal or `quiet`).
pub fn progress_bar(seconds: u64, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(4)
    };
    let bar = ProgressBar::with_draw_target(Some(seconds.max(1)), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} s  {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A number with at most `decimals` decimals, for JSON output that stays readable.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
