//! Presence: a device online on any instance is online everywhere.
//!
//! Each instance keeps in Redis (`id`: its random id, see [`super::Link`]):
//! - `smart:instance:<id>`: its heartbeat, a key with a TTL (`--redis-presence-ttl`, default 15 s),
//!   refreshed every third of the TTL;
//! - `smart:online:<id>`: the set of devices with a connection to it now (same TTL);
//! - its id in `smart:instances`: the instances every instance watches;
//!
//! and tells the others at once through the stream `smart:presence`, one entry per round trip that
//! changed something: `i` → its id, `k` → `d` followed by serial → `1`/`0` for each device that came
//! online or went offline here, or `k` → `r` ("read my whole set again": after a reconnect, or when
//! its heartbeat had expired).
//!
//! Two threads, neither on the device path:
//! - the publisher takes the changes the ingest path hands over ([`ingest::Presence::local`]: under
//!   the lock that counts a device's connections, a map insert and a wake-up, never Redis) and
//!   publishes them with the heartbeat in one round trip (one script call per [`CHUNK`] devices, in
//!   one `MULTI`);
//! - the watcher reads the stream (blocking `XREAD`s) and, every third of the TTL, asks Redis which
//!   instances are alive ([`REAP`]: an instance whose heartbeat expired is removed, with its set).
//!
//! What other instances have online is kept here ([`Remote`]); whenever a device's "online
//! elsewhere" changes, the writer thread is asked to decide its `online` again ([`Recheck`]): it
//! alone changes records, and it keeps a device online while a connection here keeps it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use smart_proto::Serial;
use tracing::{debug, info, warn};

use super::follow::{self, missed};
use super::{FIRST_BACKOFF, Link, MAX_BACKOFF};
use crate::ingest::{self, Recheck};
use crate::metrics::Metrics;

/// The ids of the instances to watch.
pub(crate) const INSTANCES: &str = "smart:instances";
/// Prefix of an instance's heartbeat key.
pub(crate) const HEARTBEAT: &str = "smart:instance:";
/// Prefix of the set of devices online on an instance.
pub(crate) const ONLINE: &str = "smart:online:";
/// The presence stream.
pub(crate) const STREAM: &str = "smart:presence";

/// Most devices one script call carries.
const CHUNK: usize = 500;
/// Entries one `XREAD` takes.
const COUNT: usize = 500;
/// How many instances found dead are remembered (their late entries ignored).
const DEAD_KEPT: usize = 1024;

/// `KEYS`: heartbeat, online set, instances, stream. `ARGV`: instance id, TTL (ms), stream cap,
/// `1` to empty the set first, the entry to add (`d`, `r`, or empty for none), then (serial,
/// `1`|`0`) pairs. Refreshes the heartbeat and the set's TTL, registers the instance, applies the
/// pairs to the set. Returns 1 if the heartbeat was there before (0: it had expired, or this is
/// the first call).
const PUBLISH: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
end
local entry = {'i', ARGV[1], 'k', ARGV[5]}
for k = 6, #ARGV - 1, 2 do
  if ARGV[k + 1] == '1' then
    redis.call('SADD', KEYS[2], ARGV[k])
  else
    redis.call('SREM', KEYS[2], ARGV[k])
  end
  if ARGV[5] == 'd' then
    entry[#entry + 1] = ARGV[k]
    entry[#entry + 1] = ARGV[k + 1]
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(entry))
end
return existed
";

/// `KEYS`: instances. `ARGV`: the heartbeat prefix, the online set prefix. Returns the instances
/// whose heartbeat is there; removes the others from the instances, and what is left of their sets.
/// (It reaches keys it was not handed, which one Redis allows; sharded over a Redis Cluster, the
/// presence keys would need one hash tag.)
const REAP: &str = r"
local alive = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    alive[#alive + 1] = id
  else
    redis.call('SREM', KEYS[1], id)
    redis.call('DEL', ARGV[2] .. id)
  end
end
return alive
";

/// This instance's devices, as the publisher sees them.
#[derive(Debug)]
struct Local {
    /// Devices with a connection here now.
    online: HashSet<Serial>,
    /// Changes not published yet: the latest of each device.
    pending: HashMap<Serial, bool>,
    /// Publish the whole set (replacing what Redis holds) on the next round trip.
    full: bool,
}

/// What the other instances have online.
#[derive(Debug, Default)]
struct Remote {
    by_instance: HashMap<Arc<str>, HashSet<Serial>>,
    /// On how many other instances each device is online (devices on none are not kept).
    count: HashMap<Serial, u32>,
    /// Instances found dead: their late `d` entries are ignored (an `r` entry revives one).
    dead: HashSet<Arc<str>>,
}

impl Remote {
    /// `serial` is online (or not) on `instance`; a device whose "online elsewhere" changed goes
    /// to `flipped`.
    fn set(&mut self, instance: &str, serial: Serial, online: bool, flipped: &mut Vec<Serial>) {
        if self.dead.contains(instance) {
            return;
        }
        let set = match self.by_instance.get_mut(instance) {
            Some(set) => set,
            None => self.by_instance.entry(Arc::from(instance)).or_default(),
        };
        if online {
            if set.insert(serial.clone()) {
                self.more(serial, flipped);
            }
        } else if set.remove(&serial) {
            self.less(serial, flipped);
        }
    }

    fn more(&mut self, serial: Serial, flipped: &mut Vec<Serial>) {
        let n = self.count.entry(serial.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            flipped.push(serial);
        }
    }

    fn less(&mut self, serial: Serial, flipped: &mut Vec<Serial>) {
        match self.count.get_mut(&serial) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.count.remove(&serial);
                flipped.push(serial);
            }
            None => {}
        }
    }

    /// `instance` has exactly `serials` online (it is alive).
    fn replace(&mut self, instance: &str, serials: HashSet<Serial>, flipped: &mut Vec<Serial>) {
        self.dead.remove(instance);
        let old = self.by_instance.remove(instance).unwrap_or_default();
        for serial in old.difference(&serials) {
            self.less(serial.clone(), flipped);
        }
        for serial in serials.difference(&old) {
            self.more(serial.clone(), flipped);
        }
        self.by_instance.insert(Arc::from(instance), serials);
    }

    /// Forget every instance not in `alive` (dead: its heartbeat expired). Returns how many.
    fn retain(&mut self, alive: &HashSet<String>, flipped: &mut Vec<Serial>) -> usize {
        let gone: Vec<Arc<str>> = self
            .by_instance
            .keys()
            .filter(|id| !alive.contains(&***id))
            .cloned()
            .collect();
        for id in &gone {
            for serial in self.by_instance.remove(id).unwrap_or_default() {
                self.less(serial, flipped);
            }
            if self.dead.len() >= DEAD_KEPT {
                self.dead.clear();
            }
            self.dead.insert(Arc::clone(id));
        }
        gone.len()
    }
}

/// Presence, shared by the ingest path (local changes, "online elsewhere?") and the two threads.
#[derive(Debug)]
pub(crate) struct Presence {
    local: Mutex<Local>,
    /// Signalled when `local` has something to publish.
    wake: Condvar,
    remote: Mutex<Remote>,
    publish: redis::Script,
    reap: redis::Script,
    /// The heartbeat's TTL.
    ttl: Duration,
    /// Whether the last round trip published and the stream is being read (`/healthz`).
    pub(crate) published: AtomicBool,
    pub(crate) watching: AtomicBool,
}

impl Presence {
    pub(crate) fn new(ttl: Duration) -> Presence {
        Presence {
            local: Mutex::new(Local {
                online: HashSet::new(),
                pending: HashMap::new(),
                full: true,
            }),
            wake: Condvar::new(),
            remote: Mutex::new(Remote::default()),
            publish: redis::Script::new(PUBLISH),
            reap: redis::Script::new(REAP),
            ttl,
            published: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        }
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_remote(&self) -> MutexGuard<'_, Remote> {
        self.remote.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How often the heartbeat is refreshed and the other instances' are checked.
    fn every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// A connection with the scripts loaded (a restarted Redis has forgotten them).
    fn connect(&self, link: &Link) -> redis::RedisResult<redis::Connection> {
        let mut conn = link.connect()?;
        self.publish.load(&mut conn)?;
        self.reap.load(&mut conn)?;
        Ok(conn)
    }

    /// The publishing thread: this instance's changes and heartbeat, until the process ends.
    pub(crate) fn run_publisher(&self, link: &Link, metrics: &Metrics) {
        let every = self.every();
        let mut conn: Option<redis::Connection> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut reported = false;
        let mut beat_at = Instant::now();
        loop {
            let (changes, full) = {
                let mut local = self.lock_local();
                loop {
                    let now = Instant::now();
                    if local.full || !local.pending.is_empty() || now >= beat_at {
                        break;
                    }
                    local = self
                        .wake
                        .wait_timeout(local, beat_at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                let full = std::mem::replace(&mut local.full, false);
                let changes: Vec<(Serial, bool)> = if full {
                    local.pending.clear();
                    local.online.iter().map(|s| (s.clone(), true)).collect()
                } else {
                    local.pending.drain().collect()
                };
                (changes, full)
            };
            let result = match conn.as_mut() {
                Some(c) => self.publish_once(c, link, full, &changes),
                None => self.connect(link).and_then(|mut c| {
                    let published = self.publish_once(&mut c, link, full, &changes);
                    conn = Some(c);
                    published
                }),
            };
            match result {
                Ok(existed) => {
                    Metrics::inc(&metrics.cluster_presence_published);
                    beat_at = Instant::now() + every;
                    backoff = FIRST_BACKOFF;
                    if !self.published.swap(true, Ordering::Relaxed) {
                        info!(ttl = ?self.ttl, "publishing this instance's heartbeat and devices online");
                    }
                    if !existed && !full {
                        warn!(
                            "this instance's heartbeat had expired (the others took its devices for offline): publishing them again"
                        );
                        self.lock_local().full = true;
                    }
                    debug!(changes = changes.len(), full, "presence published");
                }
                Err(e) => {
                    Metrics::inc(&metrics.cluster_presence_errors);
                    conn = None;
                    // Whatever Redis holds now, the next round trip replaces it with the whole set.
                    self.lock_local().full = true;
                    if self.published.swap(false, Ordering::Relaxed) || !reported {
                        reported = true;
                        warn!(%e, redis = %link.redacted, "cannot publish presence; other instances will take this instance's devices for offline once its heartbeat expires");
                    } else {
                        debug!(%e, "publishing presence failed again");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One round trip: the heartbeat, `changes` applied to the set (the whole set if `full`) and
    /// announced on the stream. Returns whether the heartbeat was still there.
    fn publish_once(
        &self,
        conn: &mut redis::Connection,
        link: &Link,
        full: bool,
        changes: &[(Serial, bool)],
    ) -> redis::RedisResult<bool> {
        let id = &*link.instance;
        let heartbeat = format!("{HEARTBEAT}{id}");
        let online = format!("{ONLINE}{id}");
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let chunks: Vec<&[(Serial, bool)]> = if changes.is_empty() {
            vec![&[]]
        } else {
            changes.chunks(CHUNK).collect()
        };
        let last = chunks.len() - 1;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (n, chunk) in chunks.iter().enumerate() {
            let entry = match (full, chunk.is_empty()) {
                // The whole set: announced once, after its last chunk.
                (true, _) if n == last => "r",
                (true, _) | (false, true) => "",
                (false, false) => "d",
            };
            let mut call = self.publish.prepare_invoke();
            call.key(&heartbeat)
                .key(&online)
                .key(INSTANCES)
                .key(STREAM)
                .arg(id)
                .arg(ttl_ms)
                .arg(link.stream_max_len)
                .arg(if full && n == 0 { "1" } else { "0" })
                .arg(entry);
            for (serial, on) in *chunk {
                call.arg(serial.as_str()).arg(if *on { "1" } else { "0" });
            }
            pipe.invoke_script(&call);
        }
        let existed: Vec<i64> = pipe.query(conn)?;
        Ok(existed.first() == Some(&1))
    }

    /// The watching thread: other instances' changes and deaths, until the process ends.
    pub(crate) fn run_watcher(&self, link: &Link, recheck: &Recheck, metrics: &Metrics) {
        let every = self.every();
        super::reconnecting(
            || self.connect(link),
            &self.watching,
            &metrics.cluster_presence_errors,
            |conn| {
                // Whatever happened while not watching: everything again.
                let mut position = self.load(conn, link, recheck, metrics)?;
                let mut reaped = Instant::now();
                self.watching.store(true, Ordering::Relaxed);
                loop {
                    // Read until the next check of the heartbeats is due (never `BLOCK 0`: forever).
                    let block = every
                        .saturating_sub(reaped.elapsed())
                        .clamp(Duration::from_millis(10), follow::BLOCK);
                    if self.read(conn, link, &mut position, block, recheck, metrics)? {
                        warn!(
                            "the presence stream was trimmed past this instance's position; loading every instance's devices again"
                        );
                        position = self.load(conn, link, recheck, metrics)?;
                    }
                    if reaped.elapsed() >= every {
                        self.reap(conn, recheck, metrics)?;
                        reaped = Instant::now();
                    }
                }
            },
            |e, news| {
                if news {
                    warn!(%e, redis = %link.redacted, "cannot watch the other instances' presence; their devices keep their last state until Redis is back");
                } else {
                    debug!(%e, "watching presence failed again");
                }
            },
        )
    }

    /// Note the stream's last entry, then the instances alive and every device online on each.
    /// Returns the entry.
    fn load(
        &self,
        conn: &mut redis::Connection,
        link: &Link,
        recheck: &Recheck,
        metrics: &Metrics,
    ) -> redis::RedisResult<String> {
        let position = follow::last_entry_id(conn, STREAM)?;
        let alive = self.alive(conn, metrics)?;
        let others: Vec<&String> = alive.iter().filter(|id| **id != *link.instance).collect();
        let sets: Vec<Vec<String>> = if others.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for id in &others {
                pipe.cmd("SMEMBERS").arg(format!("{ONLINE}{id}"));
            }
            pipe.query(conn)?
        };
        let mut flipped = Vec::new();
        let devices = {
            let mut remote = self.lock_remote();
            remote.retain(&alive, &mut flipped);
            for (id, members) in others.iter().zip(sets) {
                remote.replace(id, serials(members), &mut flipped);
            }
            metrics
                .cluster_online_elsewhere
                .store(remote.count.len() as u64, Ordering::Relaxed);
            remote.count.len()
        };
        info!(instances = alive.len(), devices, from = %position, "loaded the devices online on the other instances");
        for serial in flipped {
            recheck.device(serial);
        }
        Ok(position)
    }

    /// The instances whose heartbeat is there (the dead ones removed from Redis).
    fn alive(
        &self,
        conn: &mut redis::Connection,
        metrics: &Metrics,
    ) -> redis::RedisResult<HashSet<String>> {
        let alive: Vec<String> = self
            .reap
            .key(INSTANCES)
            .arg(HEARTBEAT)
            .arg(ONLINE)
            .invoke(conn)?;
        metrics
            .cluster_instances_alive
            .store(alive.len() as u64, Ordering::Relaxed);
        Ok(alive.into_iter().collect())
    }

    /// Forget the instances whose heartbeat expired: their devices go offline here, unless online
    /// on another instance or here.
    fn reap(
        &self,
        conn: &mut redis::Connection,
        recheck: &Recheck,
        metrics: &Metrics,
    ) -> redis::RedisResult<()> {
        let alive = self.alive(conn, metrics)?;
        let mut flipped = Vec::new();
        let lost = {
            let mut remote = self.lock_remote();
            let lost = remote.retain(&alive, &mut flipped);
            metrics
                .cluster_online_elsewhere
                .store(remote.count.len() as u64, Ordering::Relaxed);
            lost
        };
        if lost > 0 {
            metrics
                .cluster_instances_lost
                .fetch_add(lost as u64, Ordering::Relaxed);
            warn!(
                instances = lost,
                devices = flipped.len(),
                "instances stopped refreshing their heartbeat: their devices are offline here unless online elsewhere"
            );
        }
        for serial in flipped {
            recheck.device(serial);
        }
        Ok(())
    }

    /// One blocking read from `position`: apply the other instances' entries. Returns whether
    /// entries after the position had been trimmed before this read.
    fn read(
        &self,
        conn: &mut redis::Connection,
        link: &Link,
        position: &mut String,
        block: Duration,
        recheck: &Recheck,
        metrics: &Metrics,
    ) -> redis::RedisResult<bool> {
        let (first, entries) = follow::read_after(conn, STREAM, position, COUNT, block)?;
        // From `0-0` (the stream was empty at the last load) nothing can have been missed.
        let gap = position.as_str() != "0-0" && missed(&first, position);
        let mut flipped = Vec::new();
        let mut changes = 0u64;
        for (id, fields) in entries {
            *position = id;
            let mut fields = fields.into_iter();
            let (Some((i, instance)), Some((k, kind))) = (fields.next(), fields.next()) else {
                continue;
            };
            if i != "i" || k != "k" || instance == *link.instance {
                continue;
            }
            match kind.as_str() {
                "d" => {
                    let mut remote = self.lock_remote();
                    for (serial, state) in fields {
                        match Serial::new(&serial) {
                            Ok(serial) => {
                                changes += 1;
                                remote.set(&instance, serial, state == "1", &mut flipped);
                            }
                            Err(e) => {
                                warn!(%e, serial, "unreadable serial in the presence stream; ignored");
                            }
                        }
                    }
                }
                "r" => {
                    let members: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(format!("{ONLINE}{instance}"))
                        .query(conn)?;
                    changes += members.len() as u64;
                    self.lock_remote()
                        .replace(&instance, serials(members), &mut flipped);
                }
                other => debug!(kind = other, "unknown presence entry; ignored"),
            }
        }
        if !flipped.is_empty() {
            let count = self.lock_remote().count.len();
            metrics
                .cluster_online_elsewhere
                .store(count as u64, Ordering::Relaxed);
            for serial in flipped {
                recheck.device(serial);
            }
        }
        // Counted after the rechecks are queued: a write queued after a change is counted is
        // decided after them (the tests rely on it).
        metrics
            .cluster_presence_changes
            .fetch_add(changes, Ordering::Relaxed);
        Ok(gap)
    }
}

impl ingest::Presence for Presence {
    fn local(&self, serial: &Serial, online: bool) {
        let mut local = self.lock_local();
        if online {
            local.online.insert(serial.clone());
        } else {
            local.online.remove(serial);
        }
        local.pending.insert(serial.clone(), online);
        self.wake.notify_one();
    }

    fn elsewhere(&self, serial: &Serial) -> bool {
        self.lock_remote().count.contains_key(serial)
    }
}

/// The serials of an `SMEMBERS` reply (unreadable ones left out).
fn serials(members: Vec<String>) -> HashSet<Serial> {
    members
        .into_iter()
        .filter_map(|s| Serial::new(&s).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ingest::Presence as _;

    fn serial(s: &str) -> Serial {
        Serial::new(s).unwrap()
    }

    #[test]
    fn a_device_is_online_elsewhere_while_any_other_instance_has_it() {
        let mut remote = Remote::default();
        let mut flipped = Vec::new();
        remote.set("a", serial("0001"), true, &mut flipped);
        remote.set("b", serial("0001"), true, &mut flipped);
        remote.set("a", serial("0001"), true, &mut flipped);
        assert_eq!(
            flipped,
            [serial("0001")],
            "only the first instance flips it"
        );
        flipped.clear();
        remote.set("a", serial("0001"), false, &mut flipped);
        assert!(flipped.is_empty(), "still online on b");
        remote.set("a", serial("0001"), false, &mut flipped);
        assert!(flipped.is_empty(), "a had it offline already");
        remote.set("b", serial("0001"), false, &mut flipped);
        assert_eq!(flipped, [serial("0001")]);
        assert!(remote.count.is_empty());
    }

    #[test]
    fn a_dead_instance_takes_its_devices_offline_until_it_republishes() {
        let mut remote = Remote::default();
        let mut flipped = Vec::new();
        remote.set("a", serial("0001"), true, &mut flipped);
        remote.set("a", serial("0002"), true, &mut flipped);
        remote.set("b", serial("0002"), true, &mut flipped);
        flipped.clear();
        let alive: HashSet<String> = ["b".to_owned()].into();
        assert_eq!(remote.retain(&alive, &mut flipped), 1);
        assert_eq!(flipped, [serial("0001")], "0002 is still online on b");
        assert!(remote.count.contains_key(&serial("0002")));
        // A late delta of the dead instance changes nothing…
        flipped.clear();
        remote.set("a", serial("0003"), true, &mut flipped);
        assert!(flipped.is_empty());
        // …its whole set again (it republished) revives it.
        remote.replace("a", [serial("0003")].into(), &mut flipped);
        assert_eq!(flipped, [serial("0003")]);
        flipped.clear();
        remote.replace("b", HashSet::new(), &mut flipped);
        assert_eq!(flipped, [serial("0002")]);
        assert_eq!(remote.count.len(), 1);
    }

    #[test]
    fn local_changes_wait_for_the_publisher_latest_first() {
        let presence = Presence::new(Duration::from_secs(15));
        presence.lock_local().full = false;
        presence.local(&serial("0001"), true);
        presence.local(&serial("0002"), true);
        presence.local(&serial("0001"), false);
        let local = presence.lock_local();
        assert_eq!(local.pending.get(&serial("0001")), Some(&false));
        assert_eq!(local.pending.get(&serial("0002")), Some(&true));
        assert_eq!(local.online, [serial("0002")].into());
        drop(local);
        assert!(!presence.elsewhere(&serial("0002")));
        let mut flipped = Vec::new();
        presence
            .lock_remote()
            .set("a", serial("0002"), true, &mut flipped);
        assert!(presence.elsewhere(&serial("0002")));
    }
}
