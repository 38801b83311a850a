//! The report of a load run (that of an idle measurement is `common::report`'s): the line of JSON `--json` prints, and the text
//! printed otherwise.
//!
//! The fields are in alphabetical order, which is the order of the JSON keys: that of the report's
//! first form, a `serde_json::Value` (whose objects sort their keys). The text prints each number as
//! the JSON does (`2.0`, `null` for a figure that is missing).

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::common;
use crate::common::report::{Round, print_errors, print_json};

/// One measured run against a target; the report of a load is the median run against smart-server,
/// with the fields marked "report only" set.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    pub(crate) ack_max_ms: f64,
    pub(crate) ack_p50_ms: f64,
    pub(crate) ack_p999_ms: f64,
    pub(crate) ack_p99_ms: f64,
    pub(crate) acks: u64,
    pub(crate) acks_per_s: f64,
    /// The median run against the baseline server (`--baseline`; report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Box<RunReport>>,
    /// Devices and dashboards that connected.
    pub(crate) connected: usize,
    pub(crate) dashboard_msgs: u64,
    pub(crate) dashboard_msgs_per_s: f64,
    pub(crate) dashboards: usize,
    pub(crate) devices: usize,
    pub(crate) errors: u64,
    pub(crate) fanout_p50_ms: f64,
    pub(crate) fanout_p99_ms: f64,
    pub(crate) first_errors: Vec<String>,
    /// Acks/s as a fraction of the baseline's (report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fraction_of_baseline: Option<f64>,
    pub(crate) load_average: Option<f64>,
    pub(crate) loadgen_cpu_percent: f64,
    /// The median run with no dashboards (`--against-no-dashboards`; report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) no_dashboards: Option<Box<RunReport>>,
    /// Acks/s as a fraction of those with no dashboards (report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_to_no_dashboards: Option<f64>,
    pub(crate) resyncs: u64,
    /// Every round's acks/s, when there were several (set on the median run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rounds_acks_per_s: Option<Vec<f64>>,
    /// Every round's memory per stalled dashboard (report only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rounds_rss_per_stalled_dashboard_kib: Option<Vec<f64>>,
    /// Growth of the server's memory per stalled dashboard (in the report: the largest of the rounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_stalled_dashboard_kib: Option<f64>,
    /// Length of the measured period.
    pub(crate) seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_before_stalled_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_peak_kib: Option<u64>,
    pub(crate) stalled_dashboards: usize,
    /// `smart-server`, `no dashboards` or `baseline`.
    pub(crate) target: String,
    pub(crate) url: String,
    pub(crate) warmup_s: f64,
    pub(crate) window: usize,
}

impl Round for RunReport {
    fn acks_per_s(&self) -> f64 {
        self.acks_per_s
    }

    fn set_rounds_acks_per_s(&mut self, rates: Vec<f64>) {
        self.rounds_acks_per_s = Some(rates);
    }
}

impl RunReport {
    /// Report the memory each stalled dashboard cost, over the rounds of `memory`.
    pub(crate) fn set_stalled_memory(&mut self, memory: Vec<f64>) {
        if memory.is_empty() {
            return;
        }
        // Later rounds reuse memory the first one's dashboards left to the allocator: the largest
        // growth is the figure.
        self.rss_per_stalled_dashboard_kib = Some(memory.iter().copied().fold(0.0, f64::max));
        self.rounds_rss_per_stalled_dashboard_kib = Some(memory);
    }

    /// Report `alone`, the run without dashboards, and the rate as a fraction of its rate.
    pub(crate) fn set_no_dashboards(&mut self, alone: RunReport) {
        self.ratio_to_no_dashboards = Some(fraction(self.acks_per_s, alone.acks_per_s));
        self.no_dashboards = Some(Box::new(alone));
    }

    /// Report `baseline`, the run against the baseline server, and the rate as a fraction of its rate.
    pub(crate) fn set_baseline(&mut self, baseline: RunReport) {
        self.fraction_of_baseline = Some(fraction(self.acks_per_s, baseline.acks_per_s));
        self.baseline = Some(Box::new(baseline));
    }

    /// Print the report of a load: one line of JSON, or the run then the runs it is compared with.
    pub(crate) fn print_report(&self, json: bool) -> Result<()> {
        if json {
            return print_json(self);
        }
        self.print();
        if let Some(alone) = &self.no_dashboards {
            alone.print();
            println!(
                "with / without dashboards acks/s: {}",
                Value::from(self.ratio_to_no_dashboards)
            );
        }
        if let Some(baseline) = &self.baseline {
            baseline.print();
            println!(
                "smart-server / baseline acks/s: {}",
                Value::from(self.fraction_of_baseline)
            );
        }
        Ok(())
    }

    fn print(&self) {
        println!(
            "{}: {} devices (window {}), {} dashboards, {} stalled; {} s measured after {} s warm-up",
            self.target,
            self.devices,
            self.window,
            self.dashboards,
            self.stalled_dashboards,
            Value::from(self.seconds),
            Value::from(self.warmup_s)
        );
        println!(
            "  acks/s        {} ({} acks, {} errors)",
            Value::from(self.acks_per_s),
            self.acks,
            self.errors
        );
        println!(
            "  ack latency   p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            Value::from(self.ack_p50_ms),
            Value::from(self.ack_p99_ms),
            Value::from(self.ack_p999_ms),
            Value::from(self.ack_max_ms)
        );
        if let Some(per) = self.rss_per_stalled_dashboard_kib {
            println!(
                "  stalled       {} dashboards that never read: {} KiB of server RSS each (largest growth of the rounds {})",
                self.stalled_dashboards,
                Value::from(per),
                Value::from(self.rounds_rss_per_stalled_dashboard_kib.clone())
            );
        }
        if self.dashboards > 0 {
            println!(
                "  dashboards    {} msgs/s in all; device→dashboard p50 {} ms, p99 {} ms; {} resyncs",
                Value::from(self.dashboard_msgs_per_s),
                Value::from(self.fanout_p50_ms),
                Value::from(self.fanout_p99_ms),
                self.resyncs
            );
        }
        let mut cpu = format!(
            "  CPU           loadgen {} %",
            Value::from(self.loadgen_cpu_percent)
        );
        if let Some(server) = self.server_cpu_percent {
            let _ = write!(
                cpu,
                ", server {} % (RSS {} KiB)",
                Value::from(server),
                Value::from(self.server_rss_kib)
            );
        }
        let _ = write!(
            cpu,
            " of one core; machine load average {}",
            Value::from(self.load_average)
        );
        println!("{cpu}");
        if let Some(rounds) = &self.rounds_acks_per_s {
            println!(
                "  rounds        acks/s {} (this is the median one)",
                Value::from(rounds.clone())
            );
        }
        print_errors(&self.first_errors);
    }
}

/// `rate` as a fraction of `reference` (0 without a reference).
fn fraction(rate: f64, reference: f64) -> f64 {
    if reference > 0.0 {
        common::round(rate / reference, 3)
    } else {
        0.0
    }
}
