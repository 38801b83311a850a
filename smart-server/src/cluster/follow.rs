//! Following: every instance reads the change stream on its own connection and applies the other
//! instances' changes to its fleet and hub, so dashboards (INIT, UPDT, filters, conflation) and the
//! REST API see remote devices like local ones.
//!
//! At start (and whenever it has not loaded yet): note the stream's last entry, load the latest
//! records (`HSCAN` of the devices hash), then read on from the noted entry with blocking `XREAD`s.
//! An entry the instance shipped itself is skipped. A remote record is applied only if it is newer
//! (`last_status_update`) than the device's entry here ([`Fleet::publish_newer`]); the version rule
//! in Redis orders equal times by instance, and an equal time is the same change seen twice.
//!
//! If the stream was trimmed past the instance's position, it loads the latest records again
//! without telling dashboards each change, then makes every dashboard resync ([`Hub::resync_all`]):
//! each gets a fresh INIT of its view that holds the reloaded records.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Map;
use smart_proto::{Header, MessageId, Record, Serial};
use tracing::{debug, info, warn};

use super::Link;
use super::presence::Presence;
use super::scripts::{DEVICES, INSTANCE_FIELD, STREAM};
use crate::fleet::{Entry, Fleet};
use crate::history::remote::Remote;
use crate::history::samples as history;
use crate::hub::{Change, Hub};
use crate::ingest::Presence as _;
use crate::metrics::Metrics;

/// How long one `XREAD` blocks (the connection's read timeout is longer).
pub(crate) const BLOCK: Duration = Duration::from_secs(2);
/// Entries one `XREAD` takes, and hash fields one `HSCAN` asks for.
const COUNT: usize = 500;

/// The following thread's state.
pub(crate) struct Follower {
    pub(crate) link: Arc<Link>,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    /// Which devices other instances have online: a device new here takes its `online` from it.
    pub(crate) presence: Arc<Presence>,
    /// Whether the stream is being read (`/healthz`).
    pub(crate) up: Arc<AtomicBool>,
    /// Where other instances' numeric changes go for the history (`None`: `--history off`).
    pub(crate) history: Option<Arc<Remote>>,
}

impl Follower {
    /// Follow until the process ends.
    pub(crate) fn run(self) {
        // The last entry read; `None` until the latest records are loaded.
        let mut position: Option<String> = None;
        // A reload after a gap is under way (kept across reconnects until one completes): its
        // records reach dashboards as a resync INIT once loaded, not as UPDTs.
        let mut resync = false;
        super::reconnecting(
            || self.link.connect(),
            &self.up,
            &self.metrics.cluster_follow_errors,
            |conn| {
                // Whether entries this instance has not read may be gone (trimmed, or lost by a
                // restarted Redis): checked on every (re)connect and with every read.
                let mut gap = match &position {
                    Some(at) => missed(&first_entry(STREAM).query(conn)?, at),
                    None => false,
                };
                loop {
                    let at = match position.take() {
                        Some(at) if !gap => at,
                        Some(at) => {
                            Metrics::inc(&self.metrics.cluster_resyncs);
                            warn!(from = %at, "the change stream was trimmed past this instance's position; loading the latest records again");
                            resync = true;
                            self.load(conn, false)?
                        }
                        None => self.load(conn, !resync)?,
                    };
                    if std::mem::take(&mut resync) {
                        self.hub.resync_all();
                        info!("dashboards resync with the reloaded records");
                    }
                    let at = position.insert(at);
                    self.up.store(true, Ordering::Relaxed);
                    self.hub.set_remote_stale(false);
                    gap = self.read(conn, at)?;
                }
            },
            |e, news| {
                self.hub.set_remote_stale(true);
                if news {
                    warn!(%e, redis = %self.link.redacted, "cannot read the change stream; remote devices may be stale until Redis is back");
                } else {
                    debug!(%e, "following failed again");
                }
            },
        )
    }

    /// Note the stream's last entry, then apply every device's latest record (handing dashboards
    /// their changes if `tell`). Returns the entry.
    fn load(&self, conn: &mut redis::Connection, tell: bool) -> redis::RedisResult<String> {
        let position = last_entry_id(conn, STREAM)?;
        let mut cursor = "0".to_owned();
        let mut loaded = 0;
        loop {
            let (next, page): (String, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(DEVICES)
                .arg(&cursor)
                .arg("COUNT")
                .arg(COUNT)
                .query(conn)?;
            loaded += self.apply(page.iter().map(|(s, r)| (s.as_str(), r.as_str())), tell);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        info!(applied = loaded, from = %position, "loaded the fleet's latest records from Redis");
        Ok(position)
    }

    /// One blocking read from `position`: apply the other instances' entries, move on. Returns
    /// whether entries after the position had been trimmed before this read (asked in the same
    /// round trip, just before it).
    fn read(
        &self,
        conn: &mut redis::Connection,
        position: &mut String,
    ) -> redis::RedisResult<bool> {
        let (first, entries) = read_after(conn, STREAM, position, COUNT, BLOCK)?;
        let gap = missed(&first, position);
        for (id, fields) in entries {
            *position = id;
            if fields.first().map(|(k, v)| (k.as_str(), v.as_str()))
                == Some((INSTANCE_FIELD, &*self.link.instance))
            {
                continue;
            }
            self.apply(
                fields.iter().skip(1).map(|(s, r)| (s.as_str(), r.as_str())),
                true,
            );
        }
        Ok(gap)
    }

    /// Apply remote records (serial, JSON) newer than the fleet's, and hand their changes to the
    /// hub if `tell`. Returns how many were applied.
    fn apply<'a>(&self, records: impl Iterator<Item = (&'a str, &'a str)>, tell: bool) -> usize {
        let mut remote = Vec::new();
        for (serial, json) in records {
            match Record::from_json(json) {
                Ok(record) if record.serial_number.as_str() == serial => remote.push(record),
                Ok(_) => warn!(serial, "remote record under another serial; ignored"),
                Err(e) => warn!(%e, serial, "unreadable remote record; ignored"),
            }
        }
        if remote.is_empty() {
            return 0;
        }
        // `online` is presence, not the record's: the entry's here, or for a device new here
        // whether another instance has it (`Fleet::publish_newer` checks again under its lock).
        // What dashboards are told: what differs from the entry here (all of it for a new device).
        // The history (`--history`) gets the numeric fields that differ, at the record's time; not
        // at a (re)load, whose records are no changes seen here.
        let listening = tell && self.hub.has_listeners();
        let history = self.history.as_ref().filter(|_| tell);
        let mut numbers = std::collections::HashMap::new();
        let bodies: Vec<Option<Map<String, serde_json::Value>>> =
            self.fleet.with_records(|local| {
                remote
                    .iter_mut()
                    .map(|record| {
                        let here = local.get(&record.serial_number);
                        record.online = here.map_or_else(
                            || self.presence.elsewhere(&record.serial_number),
                            |here| here.online,
                        );
                        if history.is_some() {
                            let values = history::between(here, record);
                            if !values.is_empty() {
                                numbers.insert(
                                    record.serial_number.clone(),
                                    history::Change {
                                        serial: record.serial_number.clone(),
                                        ts_ms: history::millis(record.last_status_update),
                                        values,
                                    },
                                );
                            }
                        }
                        listening.then(|| changed(here, record))
                    })
                    .collect()
            });
        let entries: Vec<(Serial, Entry)> = remote
            .into_iter()
            .map(|record| (record.serial_number.clone(), Entry::new(record)))
            .collect();
        let mut retired = Vec::new();
        let bodies: std::collections::HashMap<Serial, Map<String, serde_json::Value>> = entries
            .iter()
            .zip(bodies)
            .filter_map(|((serial, _), body)| body.map(|b| (serial.clone(), b)))
            .collect();
        let applied = self.fleet.publish_newer(entries, &mut retired, |serial| {
            self.presence.elsewhere(serial)
        });
        drop(retired);
        if let Some(history) = history
            && !numbers.is_empty()
        {
            history.add(applied.iter().filter_map(|serial| numbers.remove(serial)));
        }
        self.metrics
            .cluster_remote_applied
            .fetch_add(applied.len() as u64, Ordering::Relaxed);
        if listening {
            let changes: Vec<Arc<Change>> = applied
                .iter()
                .filter_map(|serial| {
                    let body = bodies.get(serial)?;
                    let header = Header {
                        id: MessageId::zero(),
                        serial: serial.clone(),
                    };
                    Some(Arc::new(Change::new(header, body)))
                })
                .collect();
            self.hub.publish(&changes);
        }
        applied.len()
    }
}

/// `XRANGE` of `stream`'s first entry.
pub(super) fn first_entry(stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg("-").arg("+").arg("COUNT").arg(1);
    cmd
}

/// A stream entry: its id, and its field-value pairs as text, in order.
pub(super) type StreamEntry = (String, Vec<(String, String)>);

/// One blocking read of `stream` after `position` (at most `count` entries, waiting up to `block`),
/// with the stream's first entry asked in the same round trip, just before it (the reply of
/// [`first_entry`], for [`missed`]): that first entry, and the entries read.
pub(super) fn read_after(
    conn: &mut redis::Connection,
    stream: &str,
    position: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<(redis::Value, Vec<StreamEntry>)> {
    let (first, reply): (redis::Value, redis::Value) = redis::pipe()
        .add_command(first_entry(stream))
        .cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(stream)
        .arg(position)
        .query(conn)?;
    Ok((first, read_entries(&reply)))
}

/// The entries of an `XREAD` reply, of every stream it read.
pub(super) fn read_entries(reply: &redis::Value) -> Vec<(String, Vec<(String, String)>)> {
    let streams = match reply {
        redis::Value::Array(streams) => streams.as_slice(),
        _ => &[],
    };
    streams
        .iter()
        .filter_map(|stream| match stream {
            redis::Value::Array(parts) => parts.get(1),
            _ => None,
        })
        .flat_map(entries)
        .collect()
}

/// The id of `stream`'s last entry, `0-0` for an empty or missing stream: where a reader that has
/// just loaded the current state goes on from.
pub(super) fn last_entry_id(
    conn: &mut redis::Connection,
    stream: &str,
) -> redis::RedisResult<String> {
    let last: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(conn)?;
    Ok(entries(&last)
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// Whether entries after `position` may be gone: the stream's first entry (`first`, the reply of
/// [`first_entry`]) is later. (Approximate trimming drops whole nodes of entries, so the entry at
/// `position` goes with those after it in its node; it goes alone only if this instance had read
/// its whole node, which costs a needless reload at worst.)
pub(super) fn missed(first: &redis::Value, position: &str) -> bool {
    entries(first)
        .first()
        .is_some_and(|(id, _)| stream_id(id) > stream_id(position))
}

/// A stream entry id `MS-SEQ` as numbers (unreadable: the smallest).
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The fields of `remote` that differ from `local`, and always `last_status_update`; every field
/// for a device not seen here.
fn changed(local: Option<&Record>, remote: &Record) -> Map<String, serde_json::Value> {
    let remote = remote.to_map();
    let Some(local) = local else {
        return remote;
    };
    let local = local.to_map();
    remote
        .into_iter()
        .filter(|(key, value)| key == "last_status_update" || local.get(key) != Some(value))
        .collect()
}

/// The entries of an `XRANGE`/`XREAD` list: (id, field-value pairs as text, in order).
pub(super) fn entries(list: &redis::Value) -> Vec<(String, Vec<(String, String)>)> {
    let redis::Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let redis::Value::Array(parts) = item else {
                return None;
            };
            let id = text(parts.first()?)?;
            let redis::Value::Array(flat) = parts.get(1)? else {
                return None;
            };
            let fields = flat
                .chunks_exact(2)
                .filter_map(|pair| Some((text(&pair[0])?, text(&pair[1])?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_keep_their_fields_in_order() {
        let list = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("i"), bulk("a"), bulk("0001"), bulk("{}")]),
            ]),
            Value::Nil,
        ]);
        let got = entries(&list);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(
            got[0].1,
            [
                ("i".to_owned(), "a".to_owned()),
                ("0001".to_owned(), "{}".to_owned())
            ]
        );
        assert!(entries(&Value::Nil).is_empty());
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("9-10") > stream_id("9-9"));
        assert_eq!(stream_id("junk"), (0, 0));
        let first =
            |id: &str| Value::Array(vec![Value::Array(vec![bulk(id), Value::Array(vec![])])]);
        assert!(missed(&first("5-1"), "5-0"));
        assert!(!missed(&first("5-0"), "5-0"));
        assert!(!missed(&first("4-9"), "5-0"));
        assert!(missed(&first("1-0"), "0-0"));
        assert!(!missed(&Value::Array(vec![]), "0-0"));
    }
}
