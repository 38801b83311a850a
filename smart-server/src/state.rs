//! The state every connection shares, behind one handle ([`Shared`]): what mini-redis's `Db` is to
//! its handlers. Sessions and routes get an `Arc<Shared>` and reach the config, the fleet (reads),
//! the hub (subscriptions), the metrics and the connection caps through it; the ingest path only as
//! a connection's [`Intake`], and the store only as its health. This module imports no session,
//! route or listener code, so none of those import each other through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::auth::{Auth, AuthMode};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::conns::{Budget, Conns};
use crate::fleet::Fleet;
use crate::history::History;
use crate::hub::{Hub, Limits};
use crate::ingest::{self, Ingest, Intake, ParkedIntake};
use crate::metrics::{Gauges, Metrics};
use crate::store::Store;

/// State every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    /// Device tokens and user logins (`--auth`).
    pub auth: Arc<Auth>,
    pub fleet: Arc<Fleet>,
    pub hub: Arc<Hub>,
    /// Reached through [`Shared::resume_intake`], [`Shared::free_spent`] and [`Shared::close`] only.
    ingest: Ingest,
    /// Reached through [`Shared::store_healthy`], the gauges, [`Shared::history`] and
    /// [`Shared::close`] only.
    store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Open websocket connections (for `--max-connections`), see [`SocketSlot`].
    sockets: AtomicUsize,
    /// Every accepted socket, against the descriptor budget.
    pub conns: Arc<Conns>,
    /// Sharing the fleet with other instances (`--redis`).
    cluster: Option<Cluster>,
}

impl Shared {
    /// Open the store, load the fleet from it (every device offline), start the writer thread and
    /// size the connection budget.
    pub(crate) async fn open(config: Config, budget: Budget) -> anyhow::Result<Shared> {
        let dir = config.data_dir.clone();
        let history = config.history();
        let every = std::time::Duration::from_secs(config.checkpoint_seconds.into());
        let cluster = Cluster::new(&config)?;
        let shipping = cluster.as_ref().map(Cluster::shipping);
        let (store, records) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let store = Store::open_shipping(&dir, history, shipping)
                .with_context(|| format!("opening the store in {}", dir.display()))?
                .checkpoint_every(every);
            let records = store
                .load()
                .with_context(|| format!("loading devices from {}", dir.display()))?;
            Ok((store, records))
        })
        .await
        .context("store open task failed")??;
        info!(devices = records.len(), dir = %config.data_dir.display(), "store opened");

        let auth_mode = config.auth_mode();
        let auth =
            Arc::new(Auth::new(auth_mode, store.db()).context("opening the credential store")?);
        if auth_mode == AuthMode::Off && !config.listen.ip().is_loopback() {
            warn!(listen = %config.listen, "auth is off on a non-loopback address: anyone who reaches it can write any device and read the fleet");
        }
        info!(auth = ?auth_mode, "credentials");
        crate::auth::mark_clustered(store.db(), cluster.as_ref().map(Cluster::redis))
            .context("noting in the store whether its credentials are the cluster's")?;
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            queue: config.dashboard_queue.max(1),
            conflate: config.dashboard_conflate.max(1),
        };
        let hub = Arc::new(Hub::new(limits, Arc::clone(&metrics)));
        let fleet = Arc::new(Fleet::new(
            config.owner.clone(),
            config.registration,
            records,
        ));
        // Before the writer starts: the log segments found now are the ones a previous run kept.
        if let Some(cluster) = &cluster {
            cluster.start(
                &config.data_dir.join("wal"),
                Arc::clone(&fleet),
                Arc::clone(&hub),
                store.history().map(|history| Arc::clone(&history.remote)),
                &metrics,
            )?;
        }
        // The writer hands every committed batch to the hub: the one place the two are wired.
        let ingest = Ingest::start(
            Arc::clone(&store),
            Arc::clone(&fleet),
            Arc::clone(&hub),
            cluster.as_ref().map(Cluster::presence),
            &metrics,
            ingest::Limits {
                record_bytes: config.max_record_bytes,
                extras: config.max_extras,
                extra_bytes: config.max_extra_bytes,
                serials_per_connection: config.max_serials_per_connection,
            },
        )
        .context("starting the store writer")?;
        // Presence changes the devices' `online` through the writer, so it starts after it.
        if let Some(cluster) = &cluster {
            cluster.start_presence(ingest.recheck(), &metrics)?;
            cluster.start_credentials(Arc::clone(&auth), &metrics)?;
        }
        let conns = Arc::new(Conns::new(budget, Arc::clone(&metrics)));
        Ok(Shared {
            config,
            auth,
            fleet,
            hub,
            ingest,
            store,
            metrics,
            sockets: AtomicUsize::new(0),
            conns,
            cluster,
        })
    }

    /// Whether this instance shares its fleet with others (`--redis`).
    pub(crate) fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The devices connected to this instance (they are current here whatever the cluster does).
    pub(crate) fn connected_here(&self) -> Vec<smart_proto::Serial> {
        self.ingest.connected()
    }

    /// A device connection's side of the ingest path, from what it kept (a new one's:
    /// [`ParkedIntake::new`]).
    pub(crate) fn resume_intake(&self, parked: ParkedIntake) -> Intake<'_> {
        self.ingest.resume(parked)
    }

    /// Free, on this thread, the parsed updates the writer is done with (`buffer`: an empty vector
    /// the caller keeps for the purpose).
    pub(crate) fn free_spent(&self, buffer: &mut Vec<smart_proto::Update>) {
        let _ = self.ingest.free_spent(buffer);
    }

    /// The history (reads only), unless `--history off`.
    pub(crate) fn history(&self) -> Option<&History> {
        self.store.history()
    }

    /// Whether the store accepts durable writes (`/healthz`).
    pub(crate) fn store_healthy(&self) -> bool {
        self.store.is_healthy()
    }

    /// With `--redis`: whether Redis answers, and what is not shipped yet (`/healthz`).
    pub(crate) fn cluster_health(&self) -> Option<cluster::Health> {
        self.cluster.as_ref().map(Cluster::health)
    }

    /// The gauges of `/metrics`, read now.
    pub(crate) fn gauges(&self) -> Gauges {
        let (lag_max, lag_total) = self.hub.lag();
        Gauges {
            devices: self.fleet.len(),
            devices_online: self.fleet.online(),
            dashboard_pending_max: lag_max,
            dashboard_pending_total: lag_total,
            store_healthy: self.store.is_healthy(),
            store_quarantined: self.store.quarantined(),
            sockets_open: self.conns.open(),
            sockets_limit: self.conns.budget().sockets,
            websockets_limit: self.conns.budget().websockets,
            cluster: self
                .cluster_health()
                .map(|h| (h.backlog as u64, h.redis_up)),
        }
    }

    /// Finish every queued write, checkpoint, and flush the store (the end of a graceful
    /// shutdown).
    pub(crate) async fn close(&self) -> anyhow::Result<()> {
        self.ingest.stop().await;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .context("final flush task failed")?
            .context("final flush")
    }
}

/// A counted websocket connection (`--max-connections`); released on drop.
pub(crate) struct SocketSlot {
    shared: Arc<Shared>,
}

impl SocketSlot {
    /// Count one more websocket, unless the budget's websocket cap is reached.
    pub(crate) fn take(shared: &Arc<Shared>) -> Option<SocketSlot> {
        let max = shared.conns.budget().websockets;
        shared
            .sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SocketSlot {
                shared: Arc::clone(shared),
            })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.shared.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}
