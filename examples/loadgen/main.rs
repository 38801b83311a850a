//! The load generator behind BENCHMARKS.md: measures a SMART-OS server at the protocol level.
//!
//! N devices each send UPDTs as fast as their acks return (window W messages in flight per device),
//! while M dashboards count the UPDTs the server pushes to them. After a warm-up, a measured period gives
//! acks/s, ack latency percentiles, dashboard messages/s and the device→dashboard latency (from a
//! `sent_us` timestamp the devices put in every body; both ends are in this process, on one clock).
//!
//! ```text
//! loadgen --url ws://127.0.0.1:8000 --devices 100 --dashboards 10 --seconds 10 --json
//! loadgen --url ws://127.0.0.1:8000 --devices 100 --baseline        # also measure an echo-ack ceiling
//! loadgen --url ws://127.0.0.1:8000 --idle 10000 --server-pid PID    # memory per idle connection
//! loadgen --url ws://127.0.0.1:8000 --devices 100 --stalled-dashboards 1000 --server-pid PID \
//!     --against-no-dashboards --rounds 3 --warmup 5                   # dashboards that never read
//! ```
//!
//! `--baseline` starts a minimal websocket server as a child process (this binary with a hidden flag:
//! warp, reads only the message header, acks at once, stores nothing, pushes nothing) and measures it with
//! the same load in the same run, so the server is reported as a fraction of that ceiling on this machine.
//!
//! Loopback only. Every phase is bounded in time; one process holds at most as many sockets as its
//! open-files limit allows (about 19,900 here).

mod baseline;
#[path = "../common/mod.rs"]
mod common;
mod report;
mod run;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;

use baseline::{serve_baseline, spawn_baseline};
use report::RunReport;
use run::{check_frames, idle, measure};

/// Measure a SMART-OS server: ingest rate, ack latency, fan-out to dashboards, memory per connection.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
struct Args {
    /// Server URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// Devices, each on its own websocket, each sending as fast as its acks return.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Dashboards connected to `/client/`, counting what they receive.
    #[arg(long, default_value_t = 0)]
    dashboards: usize,
    /// Length of the measured period, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the measured period, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Messages in flight per device (1: each device waits for its ack before the next message).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Dashboards connected to `/client/` that never read anything (not even the welcome), as a
    /// browser tab that hangs would: what they cost the devices and the server's memory.
    #[arg(long, default_value_t = 0, value_name = "N")]
    stalled_dashboards: usize,
    /// Also measure, alternating round by round, the same devices against the same server with no
    /// dashboards at all (reading or stalled), and report the rate as a fraction of that.
    #[arg(long)]
    against_no_dashboards: bool,
    /// Serial number of the first device (serials are zero-padded to 4 digits).
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// Also measure a minimal echo-ack server (child process) with the same load, as the ceiling.
    #[arg(long)]
    baseline: bool,
    /// Measure this many times (alternating with the baseline) and report the run with the median
    /// rate: on a shared machine the spread shows how much other work disturbed the figures.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Instead of a load, open this many idle device connections and report the server's memory per
    /// connection (needs `--server-pid`).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    #[command(flatten)]
    flags: common::Flags,
    #[command(flatten)]
    access: common::AccessFlags,
    /// Run the baseline server (used by `--baseline`, which starts this binary as its child).
    #[arg(long, hide = true)]
    serve_baseline: bool,
    /// Address of the baseline server.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> Result<()> {
    let args = Args::parse();
    common::init_tracing();
    let runtime = args.flags.runtime()?;
    args.access.install()?;
    if args.serve_baseline {
        return runtime.block_on(serve_baseline(args.listen));
    }
    ensure!(
        common::is_loopback(&args.url),
        "loadgen only measures servers on the loopback interface, not {}",
        args.url
    );
    if let Some(connections) = args.idle {
        let report = runtime.block_on(idle(&args, connections))?;
        return report.print_report(args.flags.json, "device", "server");
    }
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(args.window > 0, "--window must be at least 1");
    common::check_socket_budget(args.devices + args.dashboards + args.stalled_dashboards)?;
    let report = runtime.block_on(load(&args))?;
    report.print_report(args.flags.json)
}

/// Everything one load run needs to know.
#[derive(Debug, Clone)]
struct Load {
    devices: usize,
    dashboards: usize,
    stalled_dashboards: usize,
    window: usize,
    first_serial: u64,
    warmup: Duration,
    measured: Duration,
    quiet: bool,
}

async fn load(args: &Args) -> Result<RunReport> {
    let load = Load {
        devices: args.devices,
        dashboards: args.dashboards,
        stalled_dashboards: args.stalled_dashboards,
        window: args.window,
        first_serial: args.first_serial,
        warmup: common::seconds(args.warmup, "--warmup")?,
        measured: common::seconds(args.seconds, "--seconds")?,
        quiet: args.flags.no_progress(),
    };
    check_frames(&load)?;
    let mut baseline = if args.baseline {
        Some(spawn_baseline().await?)
    } else {
        None
    };
    // Alternate server and baseline so that both see the same background load on a shared machine.
    let mut server_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let mut alone_runs = Vec::new();
    let alone = Load {
        dashboards: 0,
        stalled_dashboards: 0,
        ..load.clone()
    };
    let pid = args.flags.server_pid;
    for _ in 0..args.rounds.max(1) {
        server_runs.push(measure("smart-server", &args.url, pid, &load).await?);
        if args.against_no_dashboards {
            alone_runs.push(measure("no dashboards", &args.url, pid, &alone).await?);
        }
        if let Some((_, url, pid)) = &baseline {
            baseline_runs.push(measure("baseline", url, Some(*pid), &load).await?);
        }
    }
    let stalled_memory: Vec<f64> = server_runs
        .iter()
        .filter_map(|r| r.rss_per_stalled_dashboard_kib)
        .collect();
    if let Some((child, _, _)) = baseline.as_mut() {
        let _ = child.kill().await;
    }
    let mut report = common::report::median(server_runs).context("no run measured")?;
    report.set_stalled_memory(stalled_memory);
    if let Some(alone) = common::report::median(alone_runs) {
        report.set_no_dashboards(alone);
    }
    if let Some(baseline) = common::report::median(baseline_runs) {
        report.set_baseline(baseline);
    }
    Ok(report)
}
