//! Several instances sharing one fleet through Redis (`--redis`).
//!
//! Each instance keeps its own write-ahead log and sled, and acks devices as without Redis
//! (`--ack local`: after the local fdatasync), or only once Redis has the write too (`--ack
//! cluster`: the shipper answers them). Data flows one way through three parts:
//! - [`ship`]: the writer hands every committed batch over (the store's [`Shipping`] hook); a thread
//!   ships it to Redis in one round trip. Log segments are retired only once shipped, and at start
//!   the segments a previous run kept are shipped first ([`leftovers`]);
//! - [`scripts`]: the keys, the stream, and the Lua script that writes a record only if its version
//!   is newer than Redis's;
//! - [`follow`]: a thread reads the change stream and applies the other instances' changes to the
//!   fleet and the hub;
//! - [`presence`]: each instance's heartbeat and the devices connected to it; a device online on
//!   any instance is online everywhere, and an instance whose heartbeat expires takes its devices
//!   offline on the others (two threads of its own; the writer decides, through `ingest::Recheck`);
//! - [`credentials`]: device tokens and users live in Redis; changes go there first (the auth
//!   module's `Share` hook) and a thread copies the others' into this instance's store.
//!
//! Without `--redis` none of this exists: no thread, no hook, no key.

mod credentials;
mod follow;
mod leftovers;
mod presence;
mod scripts;
mod ship;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::info;

use crate::auth::{Auth, Share};
use crate::config::{AckMode, Config};
use crate::fleet::Fleet;
use crate::history::remote::Remote;
use crate::hub::Hub;
use crate::ingest::{self, Recheck};
use crate::metrics::Metrics;
use crate::store::Shipping;
use crate::wal;

/// A round trip to Redis, or a stream entry's way to this instance, that took longer than this is
/// logged (info): what a latency tail across instances is made of, without a debug log.
pub(crate) const SLOW: Duration = Duration::from_millis(200);

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reply may take (a blocking `XREAD` waits [`follow::BLOCK`] on top).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What both threads need to talk to Redis.
#[derive(Debug)]
pub(crate) struct Link {
    client: redis::Client,
    /// The shipping script (loaded on every new connection: a restarted Redis has forgotten it).
    script: redis::Script,
    /// This process's id in the stream's entries: random per start.
    instance: Arc<str>,
    stream_max_len: u64,
    /// The URL without its password, for logs.
    redacted: String,
}

impl Link {
    /// A new connection, with timeouts, the script loaded.
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let mut conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT + follow::BLOCK))?;
        conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
        self.script.load(&mut conn)?;
        Ok(conn)
    }
}

/// First and longest wait between two attempts of any thread whose session with Redis failed (the
/// shipper, the presence publisher, the readers): the longest is short enough that instances
/// converge within 2 s of Redis's return; a refused connection costs next to nothing meanwhile.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Keep a reading thread's session with Redis going until the process ends: `session` runs on each
/// new connection (from `connect`) and returns only with an error; it stores `true` in `up` once it
/// works. Between attempts the thread waits 50 ms, doubling to 500 ms, from the first failure after
/// `up` was true. Each failure is counted in `errors` and handed to `failed` with whether it is news
/// (the first since the start, or since `up` was true: worth a WARN; the others are not).
fn reconnecting(
    connect: impl Fn() -> redis::RedisResult<redis::Connection>,
    up: &AtomicBool,
    errors: &std::sync::atomic::AtomicU64,
    mut session: impl FnMut(&mut redis::Connection) -> redis::RedisResult<()>,
    mut failed: impl FnMut(&redis::RedisError, bool),
) -> ! {
    let mut backoff = FIRST_BACKOFF;
    let mut reported = false;
    loop {
        let result = connect().and_then(|mut conn| session(&mut conn));
        let worked = up.swap(false, Ordering::Relaxed);
        if worked {
            backoff = FIRST_BACKOFF;
        }
        if let Err(e) = result {
            Metrics::inc(errors);
            failed(&e, worked || !reported);
            reported = true;
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The cluster side of an instance: built before the store opens (the store needs its shipper),
/// started once the fleet and the hub exist.
#[derive(Debug)]
pub(crate) struct Cluster {
    link: Arc<Link>,
    shipper: Arc<ship::Shipper>,
    following: Arc<AtomicBool>,
    presence: Arc<presence::Presence>,
    credentials: Arc<credentials::Credentials>,
}

/// What `/healthz` and `/metrics` show of the cluster.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Health {
    /// The last round trip to Redis shipped, the change stream is being read, and presence is
    /// published and watched.
    pub redis_up: bool,
    /// Records committed here and not shipped yet.
    pub backlog: usize,
    /// `--ack cluster`: devices get OK only once Redis has their write (Redis away: unhealthy).
    pub acks_wait: bool,
    /// `--ack cluster`: answers waiting for Redis.
    pub acks_waiting: usize,
}

impl Cluster {
    /// `None` without `--redis`. Refuses `--ack cluster` without `--redis`, and a URL the client
    /// cannot read; does not connect (Redis may come later: with `--ack local` devices are acked
    /// meanwhile).
    pub(crate) fn new(config: &Config) -> anyhow::Result<Option<Cluster>> {
        let Some(url) = config.redis.as_deref() else {
            if config.ack == AckMode::Cluster {
                bail!("--ack cluster needs --redis");
            }
            return Ok(None);
        };
        let redacted = redact(url);
        let client = redis::Client::open(url)
            .with_context(|| format!("reading the --redis URL {redacted}"))?;
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).context("a random instance id")?;
        let instance = id.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
        let acks_wait = config.ack == AckMode::Cluster;
        let mode = if acks_wait { "cluster" } else { "local" };
        info!(redis = %redacted, instance, ack = mode, "sharing the fleet through Redis");
        let link = Arc::new(Link {
            client,
            script: redis::Script::new(scripts::SHIP),
            instance: Arc::from(instance),
            stream_max_len: config.redis_stream_max_len,
            redacted,
        });
        Ok(Some(Cluster {
            credentials: Arc::new(credentials::Credentials::new(Arc::clone(&link))),
            link,
            shipper: Arc::new(ship::Shipper::new(
                acks_wait,
                Duration::from_millis(config.redis_ship_interval),
            )),
            following: Arc::new(AtomicBool::new(false)),
            presence: Arc::new(presence::Presence::new(Duration::from_secs(
                config.redis_presence_ttl,
            ))),
        }))
    }

    /// The Redis URL without its password.
    pub(crate) fn redis(&self) -> &str {
        &self.link.redacted
    }

    /// The ingest path's hook: devices coming online here or going offline, and whether another
    /// instance has a device online.
    pub(crate) fn presence(&self) -> Arc<dyn ingest::Presence> {
        Arc::clone(&self.presence) as Arc<dyn ingest::Presence>
    }

    /// The store's hook: committed batches, and how far shipping got.
    pub(crate) fn shipping(&self) -> Arc<dyn Shipping> {
        Arc::clone(&self.shipper) as Arc<dyn Shipping>
    }

    /// Start shipping (first what the log segments in `wal_dir` hold: call before the writer
    /// starts, so they are exactly the ones a previous run kept) and following (other instances'
    /// numeric changes go to `history`, unless `--history off`).
    pub(crate) fn start(
        &self,
        wal_dir: &Path,
        fleet: Arc<Fleet>,
        hub: Arc<Hub>,
        history: Option<Arc<Remote>>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<()> {
        let kept = wal::segments(wal_dir)
            .with_context(|| format!("listing the log segments in {}", wal_dir.display()))?;
        let shipper = Arc::clone(&self.shipper);
        let link = Arc::clone(&self.link);
        let ship_metrics = Arc::clone(metrics);
        thread::Builder::new()
            .name("smart-cluster-ship".to_owned())
            .spawn(move || shipper.run(&link, &kept, &ship_metrics))
            .context("starting the shipping thread")?;
        let follower = follow::Follower {
            link: Arc::clone(&self.link),
            fleet,
            hub,
            metrics: Arc::clone(metrics),
            presence: Arc::clone(&self.presence),
            up: Arc::clone(&self.following),
            history,
        };
        thread::Builder::new()
            .name("smart-cluster-follow".to_owned())
            .spawn(move || follower.run())
            .context("starting the following thread")?;
        Ok(())
    }

    /// Start presence: publishing this instance's heartbeat and devices, and watching the others'
    /// (`recheck`: the writer decides a device's `online` again when other instances change it).
    pub(crate) fn start_presence(
        &self,
        recheck: Recheck,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<()> {
        let (presence, link, publish_metrics) = (
            Arc::clone(&self.presence),
            Arc::clone(&self.link),
            Arc::clone(metrics),
        );
        thread::Builder::new()
            .name("smart-presence".to_owned())
            .spawn(move || presence.run_publisher(&link, &publish_metrics))
            .context("starting the presence publishing thread")?;
        let (presence, link, watch_metrics) = (
            Arc::clone(&self.presence),
            Arc::clone(&self.link),
            Arc::clone(metrics),
        );
        thread::Builder::new()
            .name("smart-presence-watch".to_owned())
            .spawn(move || presence.run_watcher(&link, &recheck, &watch_metrics))
            .context("starting the presence watching thread")?;
        Ok(())
    }

    /// Share credentials with the other instances: `auth`'s changes go to Redis first from now on,
    /// and a thread copies the others' changes into it.
    pub(crate) fn start_credentials(
        &self,
        auth: Arc<Auth>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<()> {
        auth.share_with(Arc::clone(&self.credentials) as Arc<dyn Share>);
        let (credentials, metrics) = (Arc::clone(&self.credentials), Arc::clone(metrics));
        thread::Builder::new()
            .name("smart-credentials".to_owned())
            .spawn(move || credentials.run(&auth, &metrics))
            .context("starting the credentials thread")?;
        Ok(())
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            redis_up: self.shipper.up.load(Ordering::Relaxed)
                && self.following.load(Ordering::Relaxed)
                && self.credentials.following.load(Ordering::Relaxed)
                && self.presence.published.load(Ordering::Relaxed)
                && self.presence.watching.load(Ordering::Relaxed),
            backlog: self.shipper.backlog(),
            acks_wait: self.shipper.acks_wait(),
            acks_waiting: self.shipper.acks_waiting(),
        }
    }
}

/// `url` without the password (and user name) it may hold, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unreadable URL)".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:s3cret@db.example:6379/2"),
            "redis://***@db.example:6379/2"
        );
        assert_eq!(
            redact("rediss://user:p@ss@db.example"),
            "rediss://***@db.example"
        );
        assert_eq!(redact("s3cret"), "(unreadable URL)");
    }
}
