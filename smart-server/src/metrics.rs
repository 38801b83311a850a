//! Counters for `/metrics`: plain atomics bumped on the hot paths, rendered as Prometheus text on
//! scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use smart_proto::Error;

/// Why a device frame was refused: a small fixed set so that the metric has bounded labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectClass {
    /// Not a JSON object or Python dict, no `type`, no `message`, bad payload type.
    Envelope,
    /// A type other than INIT/UPDT (unknown, or INFO/FILT from a device).
    Kind,
    /// The `MID:SERIAL:` cap is missing or malformed.
    Header,
    /// The body is not an object or does not parse.
    Body,
    /// A known field has the wrong type.
    Field,
    /// `serial_number` in the body differs from the header.
    Serial,
    /// A binary websocket frame.
    Binary,
    /// A serial other than the one the connection's device token is for.
    Token,
    /// A frame above `--max-frame-bytes` (the connection is closed with 1009).
    Oversize,
    /// Registration is closed and the serial is unknown.
    Unregistered,
    /// The store failed to make the write durable.
    Storage,
    /// The message or the record would break `--max-record-bytes`, `--max-extras` or
    /// `--max-extra-bytes`.
    Limit,
    /// The connection already carries `--max-serials-per-connection` serials.
    Serials,
}

impl RejectClass {
    const ALL: [RejectClass; 13] = [
        RejectClass::Envelope,
        RejectClass::Kind,
        RejectClass::Header,
        RejectClass::Body,
        RejectClass::Field,
        RejectClass::Serial,
        RejectClass::Binary,
        RejectClass::Oversize,
        RejectClass::Unregistered,
        RejectClass::Storage,
        RejectClass::Limit,
        RejectClass::Serials,
        RejectClass::Token,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectClass::Envelope => "envelope",
            RejectClass::Kind => "kind",
            RejectClass::Header => "header",
            RejectClass::Body => "body",
            RejectClass::Field => "field",
            RejectClass::Serial => "serial",
            RejectClass::Binary => "binary",
            RejectClass::Oversize => "oversize",
            RejectClass::Unregistered => "unregistered",
            RejectClass::Storage => "storage",
            RejectClass::Limit => "limit",
            RejectClass::Serials => "serials",
            RejectClass::Token => "token",
        }
    }

    /// The class of a protocol error.
    pub(crate) fn of(error: &Error) -> RejectClass {
        match error {
            Error::UnknownKind(_) | Error::UnexpectedKind { .. } => RejectClass::Kind,
            Error::Header(_) => RejectClass::Header,
            Error::BodyNotObject { .. } | Error::BodySyntax { .. } => RejectClass::Body,
            Error::FieldType { .. } | Error::UnsafeInteger { .. } => RejectClass::Field,
            Error::TooManyExtras { .. } | Error::ExtraTooLarge { .. } => RejectClass::Limit,
            Error::SerialMismatch { .. } => RejectClass::Serial,
            _ => RejectClass::Envelope,
        }
    }
}

/// Every counter and gauge the server keeps.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub device_connections: AtomicU64,
    /// Idle device connections waiting in the parking lot (counted in `device_connections` too).
    pub device_parked: AtomicU64,
    pub dashboard_connections: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    pub connections_refused_origin: AtomicU64,
    /// Accepted sockets answered 503 and closed: the descriptor budget was spent.
    pub connections_refused_fd: AtomicU64,
    /// Websockets closed after `--idle-timeout` of silence.
    pub shed_idle: AtomicU64,
    /// Websockets dropped because the peer stopped reading (its write buffer stayed full).
    pub shed_not_reading: AtomicU64,
    /// Idle HTTP connections closed to make room for a new socket.
    pub shed_evicted: AtomicU64,
    pub connections_refused_dashboards: AtomicU64,
    pub accepted_init: AtomicU64,
    pub accepted_updt: AtomicU64,
    rejected: [AtomicU64; RejectClass::ALL.len()],
    pub acks: AtomicU64,
    /// Group commits (one log append + `fdatasync` each). The metric names keep the word "flush"
    /// of the first version, which flushed sled per commit, so that scrapes and dashboards go on.
    pub commits: AtomicU64,
    /// Records the group commits made durable.
    pub committed_writes: AtomicU64,
    /// Time spent in group commits.
    pub commit_micros: AtomicU64,
    /// Numeric changes noted for the history (durable in the log; in the history's trees from the
    /// next checkpoint).
    pub history_samples: AtomicU64,
    /// Runs of the history's retention, and the parts they deleted.
    pub history_retention_runs: AtomicU64,
    pub history_parts_removed: AtomicU64,
    /// Size of each history tier (raw, 5-minute, hourly): bytes of keys and values, and keys, as of
    /// the last checkpoint.
    pub history_bytes: [AtomicU64; 3],
    pub history_keys: [AtomicU64; 3],
    /// History changes handed over and waiting for the next checkpoint.
    pub history_held: AtomicU64,
    /// `--redis`: round trips that shipped a backlog, the records they carried, failed round
    /// trips, failed stream reads, and other instances' records applied here.
    pub cluster_shipped_batches: AtomicU64,
    pub cluster_shipped_records: AtomicU64,
    pub cluster_ship_errors: AtomicU64,
    pub cluster_follow_errors: AtomicU64,
    pub cluster_remote_applied: AtomicU64,
    /// Times the change stream had been trimmed past this instance's position (latest records
    /// loaded again).
    pub cluster_resyncs: AtomicU64,
    /// Presence (`--redis`): instances whose heartbeat was there at the last check (this one
    /// included), devices online on another instance, round trips that published this instance's
    /// heartbeat and devices, other instances' device changes applied, instances found dead, and
    /// failed round trips (publishing or watching).
    pub cluster_instances_alive: AtomicU64,
    pub cluster_online_elsewhere: AtomicU64,
    pub cluster_presence_published: AtomicU64,
    pub cluster_presence_changes: AtomicU64,
    pub cluster_instances_lost: AtomicU64,
    pub cluster_presence_errors: AtomicU64,
    /// Shared credentials (`--redis`): token and user changes of the cluster copied here (a
    /// reload counts each difference), failed reads or copies, and reloads after the credentials
    /// stream was trimmed past this instance's position or reseeded.
    pub cluster_credentials_applied: AtomicU64,
    pub cluster_credential_errors: AtomicU64,
    pub cluster_credential_resyncs: AtomicU64,
    pub dashboard_frames: AtomicU64,
    pub dashboard_conflated: AtomicU64,
    pub dashboard_resyncs: AtomicU64,
    pub queries: AtomicU64,
    pub queries_rejected: AtomicU64,
    /// Refused credentials: `[device, person][missing, invalid, rate_limited, unavailable]`.
    auth_failures: [[AtomicU64; 4]; 2],
}

/// Values only known at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    pub devices: usize,
    pub devices_online: usize,
    pub dashboard_pending_max: usize,
    pub dashboard_pending_total: usize,
    pub store_healthy: bool,
    /// Stored records kept in quarantine (unreadable at start).
    pub store_quarantined: u64,
    /// Accepted sockets open now (plain HTTP and websockets).
    pub sockets_open: usize,
    /// Most sockets open at once (the descriptor limit minus the reserve).
    pub sockets_limit: usize,
    /// Most websockets open at once (`--max-connections`, clamped).
    pub websockets_limit: usize,
    /// With `--redis`: records committed and not shipped yet, and whether Redis answers.
    pub cluster: Option<(u64, bool)>,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn reject(&self, class: RejectClass) {
        let i = RejectClass::ALL
            .iter()
            .position(|c| *c == class)
            .unwrap_or(0);
        inc(&self.rejected[i]);
    }

    /// Count a refused credential (`person`: a user, else a device token).
    pub(crate) fn auth_failure(&self, person: bool, denied: crate::auth::Denied) {
        inc(&self.auth_failures[usize::from(person)][denied.index()]);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        inc(counter);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub(crate) fn render(&self, gauges: Gauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "smart_connections",
            "gauge",
            "Open websocket connections.",
            &[
                ("{role=\"device\"}", get(&self.device_connections)),
                ("{role=\"dashboard\"}", get(&self.dashboard_connections)),
            ],
        );
        metric(
            "smart_connections_parked",
            "gauge",
            "Idle device connections parked without a task or buffer (counted in smart_connections too).",
            &[("", get(&self.device_parked))],
        );
        metric(
            "smart_connections_refused_total",
            "counter",
            "Connections refused: websocket upgrades (limit, origin, dashboards) and sockets beyond the descriptor budget (fd_limit).",
            &[
                ("{reason=\"limit\"}", get(&self.connections_refused_limit)),
                ("{reason=\"origin\"}", get(&self.connections_refused_origin)),
                ("{reason=\"fd_limit\"}", get(&self.connections_refused_fd)),
                (
                    "{reason=\"dashboards\"}",
                    get(&self.connections_refused_dashboards),
                ),
            ],
        );
        let mut auth = Vec::new();
        let labels = crate::auth::Denied::ALL.map(|d| {
            [
                format!("{{who=\"device\",reason=\"{}\"}}", d.label()),
                format!("{{who=\"person\",reason=\"{}\"}}", d.label()),
            ]
        });
        for (who, person) in [(0, false), (1, true)] {
            for d in crate::auth::Denied::ALL {
                auth.push((
                    labels[d.index()][who].as_str(),
                    get(&self.auth_failures[usize::from(person)][d.index()]),
                ));
            }
        }
        metric(
            "smart_auth_failures_total",
            "counter",
            "Requests refused for their credentials (devices: token on /update/; people: user login).",
            &auth,
        );
        metric(
            "smart_connections_shed_total",
            "counter",
            "Connections the server closed to protect the others.",
            &[
                ("{reason=\"idle\"}", get(&self.shed_idle)),
                ("{reason=\"not_reading\"}", get(&self.shed_not_reading)),
                ("{reason=\"evicted\"}", get(&self.shed_evicted)),
            ],
        );
        metric(
            "smart_sockets_open",
            "gauge",
            "Accepted sockets open now (plain HTTP and websockets).",
            &[("", gauges.sockets_open as u64)],
        );
        metric(
            "smart_connections_limit",
            "gauge",
            "Connection caps in force (after clamping to the descriptor limit).",
            &[
                ("{kind=\"socket\"}", gauges.sockets_limit as u64),
                ("{kind=\"websocket\"}", gauges.websockets_limit as u64),
            ],
        );
        metric(
            "smart_messages_accepted_total",
            "counter",
            "Device messages applied and stored.",
            &[
                ("{type=\"INIT\"}", get(&self.accepted_init)),
                ("{type=\"UPDT\"}", get(&self.accepted_updt)),
            ],
        );
        let rejected: Vec<(String, u64)> = RejectClass::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(class, n)| (format!("{{reason=\"{}\"}}", class.label()), get(n)))
            .collect();
        let rejected: Vec<(&str, u64)> = rejected.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "smart_messages_rejected_total",
            "counter",
            "Device frames refused, by reason class.",
            &rejected,
        );
        metric(
            "smart_acks_total",
            "counter",
            "OK replies sent after a durable write.",
            &[("", get(&self.acks))],
        );
        metric(
            "smart_store_flushes_total",
            "counter",
            "Group commits (one write-ahead log append + fdatasync each).",
            &[("", get(&self.commits))],
        );
        metric(
            "smart_store_writes_total",
            "counter",
            "Record writes made durable by group commits.",
            &[("", get(&self.committed_writes))],
        );
        metric(
            "smart_history_samples_total",
            "counter",
            "Numeric changes recorded in the history (raw samples).",
            &[("", get(&self.history_samples))],
        );
        metric(
            "smart_history_retention_runs_total",
            "counter",
            "Runs of the history's retention (deleting raw samples older than --history-raw-hours).",
            &[("", get(&self.history_retention_runs))],
        );
        metric(
            "smart_history_parts_removed_total",
            "counter",
            "Stored history parts (one device, one hour, up to 256 changes) deleted by retention.",
            &[("", get(&self.history_parts_removed))],
        );
        let tiers = |values: &[AtomicU64; 3]| {
            let [raw, five, hour] = values.each_ref().map(get);
            [
                ("{tier=\"raw\"}", raw),
                ("{tier=\"5m\"}", five),
                ("{tier=\"1h\"}", hour),
            ]
        };
        metric(
            "smart_history_bytes",
            "gauge",
            "Bytes of each history tier's keys and values (sled's own overhead not included), as of the last checkpoint.",
            &tiers(&self.history_bytes),
        );
        metric(
            "smart_history_keys",
            "gauge",
            "Keys of each history tier (raw: parts of up to 256 changes of one device's hour; 5m: one device's hour; 1h: one device's day), as of the last checkpoint.",
            &tiers(&self.history_keys),
        );
        metric(
            "smart_history_held_changes",
            "gauge",
            "History changes handed over by the writer and answered by the history API, waiting for the next checkpoint to write them to sled (--checkpoint-seconds).",
            &[("", get(&self.history_held))],
        );
        metric(
            "smart_store_flush_seconds_total",
            "counter",
            "Time spent in group commits (encoding the batch, log append, fdatasync).",
            &[],
        );
        let _ = writeln!(
            out,
            "smart_store_flush_seconds_total {:.6}",
            get(&self.commit_micros) as f64 / 1e6
        );
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        if let Some((backlog, up)) = gauges.cluster {
            metric(
                "smart_cluster_redis_up",
                "gauge",
                "1 while shipping, reading the change stream, and publishing and watching presence all reach Redis.",
                u64::from(up),
            );
            metric(
                "smart_cluster_instances_alive",
                "gauge",
                "Instances whose presence heartbeat was in Redis at the last check, this one included.",
                get(&self.cluster_instances_alive),
            );
            metric(
                "smart_cluster_devices_online_elsewhere",
                "gauge",
                "Devices another instance has online (shown online here whether or not they have a connection here).",
                get(&self.cluster_online_elsewhere),
            );
            metric(
                "smart_cluster_backlog_records",
                "gauge",
                "Records committed here and not shipped to Redis yet (the latest of each device).",
                backlog,
            );
            for (name, help, counter) in [
                (
                    "smart_cluster_shipped_batches_total",
                    "Round trips that shipped committed records to Redis.",
                    &self.cluster_shipped_batches,
                ),
                (
                    "smart_cluster_shipped_records_total",
                    "Records shipped to Redis (the latest of each device per round trip).",
                    &self.cluster_shipped_records,
                ),
                (
                    "smart_cluster_ship_errors_total",
                    "Failed round trips to Redis (retried; the log keeps what they held).",
                    &self.cluster_ship_errors,
                ),
                (
                    "smart_cluster_follow_errors_total",
                    "Failed reads of the change stream (retried).",
                    &self.cluster_follow_errors,
                ),
                (
                    "smart_cluster_remote_applied_total",
                    "Other instances' records applied to this instance's fleet.",
                    &self.cluster_remote_applied,
                ),
                (
                    "smart_cluster_resyncs_total",
                    "Times the change stream had been trimmed past this instance's position (the latest records were loaded again).",
                    &self.cluster_resyncs,
                ),
                (
                    "smart_cluster_presence_published_total",
                    "Round trips that refreshed this instance's heartbeat and published its devices' online changes.",
                    &self.cluster_presence_published,
                ),
                (
                    "smart_cluster_presence_changes_total",
                    "Other instances' device online/offline changes applied here (a whole set read again counts each device).",
                    &self.cluster_presence_changes,
                ),
                (
                    "smart_cluster_instances_lost_total",
                    "Instances found dead here (their heartbeat expired): their devices went offline unless online elsewhere.",
                    &self.cluster_instances_lost,
                ),
                (
                    "smart_cluster_presence_errors_total",
                    "Failed presence round trips to Redis (publishing or watching; retried).",
                    &self.cluster_presence_errors,
                ),
                (
                    "smart_cluster_credentials_applied_total",
                    "Token and user changes of the cluster copied into this instance's store.",
                    &self.cluster_credentials_applied,
                ),
                (
                    "smart_cluster_credential_errors_total",
                    "Failed reads of the cluster's credentials, or copies of them here (retried).",
                    &self.cluster_credential_errors,
                ),
                (
                    "smart_cluster_credential_resyncs_total",
                    "Times all of the cluster's credentials were read again (stream trimmed past this instance, or reseeded).",
                    &self.cluster_credential_resyncs,
                ),
            ] {
                metric(name, "counter", help, get(counter));
            }
        }
        metric(
            "smart_store_healthy",
            "gauge",
            "1 while the store accepts durable writes.",
            u64::from(gauges.store_healthy),
        );
        metric(
            "smart_store_quarantined_records",
            "gauge",
            "Stored records that could not be read at start, kept in quarantine (not served).",
            gauges.store_quarantined,
        );
        metric(
            "smart_devices",
            "gauge",
            "Devices known to the fleet.",
            gauges.devices as u64,
        );
        metric(
            "smart_devices_online",
            "gauge",
            "Devices with an open connection that has sent.",
            gauges.devices_online as u64,
        );
        metric(
            "smart_dashboard_frames_total",
            "counter",
            "Frames sent to dashboards.",
            get(&self.dashboard_frames),
        );
        metric(
            "smart_dashboard_conflated_total",
            "counter",
            "Times a dashboard fell behind the ring of recent changes and was conflated (current record per changed device).",
            get(&self.dashboard_conflated),
        );
        metric(
            "smart_dashboard_resyncs_total",
            "counter",
            "Dashboards that fell too far behind and were sent a fresh INIT instead.",
            get(&self.dashboard_resyncs),
        );
        metric(
            "smart_dashboard_queries_total",
            "counter",
            "FILT queries answered.",
            get(&self.queries),
        );
        metric(
            "smart_dashboard_queries_rejected_total",
            "counter",
            "FILT queries refused.",
            get(&self.queries_rejected),
        );
        metric(
            "smart_dashboard_lag_max",
            "gauge",
            "Most changes published that one dashboard has not taken yet.",
            gauges.dashboard_pending_max as u64,
        );
        metric(
            "smart_dashboard_lag_total",
            "gauge",
            "Changes published that dashboards have not taken yet, summed over dashboards.",
            gauges.dashboard_pending_total as u64,
        );
        out
    }
}
