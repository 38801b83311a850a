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

use super::presence::Presence;
use super::scripts::{DEVICES, INSTANCE_FIELD, RECORDS_FIELD, STREAM};
use super::{Link, SLOW};
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
                    Some(at) => missed(&first_id(STREAM).query(conn)?, at),
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
            loaded += self.apply(
                page.iter().map(|(s, r)| (Some(s.as_str()), r.as_str())),
                tell,
            );
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
        let started = std::time::Instant::now();
        // How long the oldest entry read waited in the stream (its id is Redis's clock when it was
        // added; instances on one machine share that clock, others should run NTP).
        if let Some(lag) = entries.first().and_then(|(id, _)| stream_age(id))
            && lag >= SLOW
        {
            info!(
                ms = lag.as_millis(),
                entries = entries.len(),
                "read a stream entry late (following)"
            );
        }
        let count = entries.len();
        for (id, fields) in entries {
            *position = id;
            let mut fields = fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            if fields.next() == Some((INSTANCE_FIELD, &*self.link.instance)) {
                continue;
            }
            let records = fields
                .filter(|(key, _)| *key == RECORDS_FIELD)
                .flat_map(|(_, lines)| lines.split('\n'))
                .map(|json| (None, json));
            self.apply(records, true);
        }
        let took = started.elapsed();
        if took >= SLOW {
            info!(
                ms = took.as_millis(),
                entries = count,
                "slow apply of other instances' changes (following)"
            );
        }
        Ok(gap)
    }

    /// Apply remote records (JSON, with the serial it must have if known) newer than the fleet's,
    /// and hand their changes to the hub if `tell`. Returns how many were applied.
    fn apply<'a>(
        &self,
        records: impl Iterator<Item = (Option<&'a str>, &'a str)>,
        tell: bool,
    ) -> usize {
        // Each record, its JSON, and its `online` as that JSON has it.
        let mut remote = Vec::new();
        for (serial, json) in records {
            match Record::from_json(json) {
                Ok(record) if serial.is_none_or(|s| record.serial_number.as_str() == s) => {
                    let online = record.online;
                    remote.push((record, json, online));
                }
                Ok(record) => {
                    warn!(?serial, found = %record.serial_number, "remote record under another serial; ignored");
                }
                Err(e) => warn!(%e, ?serial, "unreadable remote record; ignored"),
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
                    .map(|(record, _, _)| {
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
        // The shipped JSON is what `Record::to_json` writes on the shipping instance (the same
        // code): kept as the entry's text unless `online` differs here.
        let entries: Vec<(Serial, Entry)> = remote
            .into_iter()
            .map(|(record, json, online)| {
                let serial = record.serial_number.clone();
                if record.online == online {
                    (serial, Entry::with_json(record, json))
                } else {
                    (serial, Entry::new(record))
                }
            })
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

/// The id of `stream`'s first entry (nil for an empty or missing stream). A script, so that only
/// the id crosses the network: an entry of the change stream may hold hundreds of records, and
/// this is asked with every read.
pub(super) fn first_id(stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(FIRST_ID).arg(1).arg(stream);
    cmd
}

/// `KEYS`: a stream. Returns its first entry's id, or nil.
const FIRST_ID: &str = r"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if first then return first[1] end
return false
";

/// A stream entry: its id, and its field-value pairs as text, in order.
pub(super) type StreamEntry = (String, Vec<(String, String)>);

/// One blocking read of `stream` after `position` (at most `count` entries, waiting up to `block`),
/// with the stream's first entry asked in the same round trip, just before it (the reply of
/// [`first_id`], for [`missed`]): that first entry, and the entries read.
pub(super) fn read_after(
    conn: &mut redis::Connection,
    stream: &str,
    position: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<(redis::Value, Vec<StreamEntry>)> {
    let (first, reply): (redis::Value, redis::Value) = redis::pipe()
        .add_command(first_id(stream))
        .cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(stream)
        .arg(position)
        .query(conn)?;
    Ok((first, read_entries(reply)))
}

/// How long ago (by this machine's clock) the stream entry `id` (`MILLIS-SEQ`) was added; `None`
/// for an id that does not read or lies in the future.
fn stream_age(id: &str) -> Option<Duration> {
    let millis: u64 = id.split_once('-')?.0.parse().ok()?;
    let added = std::time::UNIX_EPOCH + Duration::from_millis(millis);
    std::time::SystemTime::now().duration_since(added).ok()
}

/// The entries of an `XREAD` reply, of every stream it read (taken out of the reply, not copied).
pub(super) fn read_entries(reply: redis::Value) -> Vec<StreamEntry> {
    let redis::Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|stream| match stream {
            redis::Value::Array(parts) => parts.into_iter().nth(1),
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
    Ok(entries(last)
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// Whether entries after `position` may be gone: the stream's first entry (`first`, its id as
/// [`first_id`] answers) is later. (Approximate trimming drops whole nodes of entries, so the entry at
/// `position` goes with those after it in its node; it goes alone only if this instance had read
/// its whole node, which costs a needless reload at worst.)
pub(super) fn missed(first: &redis::Value, position: &str) -> bool {
    let first = match first {
        redis::Value::BulkString(id) => std::str::from_utf8(id).ok(),
        redis::Value::SimpleString(id) => Some(id.as_str()),
        _ => None,
    };
    first.is_some_and(|id| stream_id(id) > stream_id(position))
}

/// A stream entry id `MS-SEQ` as numbers (unreadable: the smallest).
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The fields of `remote` that differ from `local`, and always `last_status_update`; every field
/// for a device not seen here.
fn changed(local: Option<&Record>, remote: &Record) -> Map<String, serde_json::Value> {
    match local {
        Some(local) => remote.changed_since(local),
        None => remote.to_map(),
    }
}

/// The entries of an `XRANGE`/`XREAD` list: (id, field-value pairs as text, in order), taken out
/// of the reply.
pub(super) fn entries(list: redis::Value) -> Vec<StreamEntry> {
    let redis::Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let redis::Value::Array(parts) = item else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = text(parts.next()?)?;
            let redis::Value::Array(flat) = parts.next()? else {
                return None;
            };
            let mut flat = flat.into_iter().map(text);
            let mut fields = Vec::with_capacity(flat.len() / 2);
            while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                if let (Some(key), Some(value)) = (key, value) {
                    fields.push((key, value));
                }
            }
            Some((id, fields))
        })
        .collect()
}

fn text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::SimpleString(s) => Some(s),
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
        let got = entries(list);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(
            got[0].1,
            [
                ("i".to_owned(), "a".to_owned()),
                ("0001".to_owned(), "{}".to_owned())
            ]
        );
        assert!(entries(Value::Nil).is_empty());
    }

    #[test]
    fn a_remote_record_tells_only_what_differs_from_the_one_here() {
        let mut here = Record::new(
            Serial::new("0001").unwrap(),
            "EET",
            smart_proto::Timestamp::UNIX_EPOCH,
        );
        here.battery = Some(0.5);
        here.country = "AT".into();
        here.extra
            .insert("mode".into(), serde_json::json!({"a": [1, 2]}));
        here.extra.insert("flag".into(), serde_json::json!(true));
        let mut remote = here.clone();
        assert_eq!(
            changed(Some(&here), &remote)
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["last_status_update"]
        );
        remote.battery = None;
        remote.power_income = Some(350.0);
        remote.country = "DE".into();
        remote
            .extra
            .insert("mode".into(), serde_json::json!({"a": [1, 3]}));
        remote.extra.insert("new".into(), serde_json::json!(null));
        let mut keys: Vec<String> = changed(Some(&here), &remote).keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "battery",
                "country",
                "last_status_update",
                "mode",
                "power_income"
            ]
        );
        assert_eq!(changed(None, &remote), remote.to_map());
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("9-10") > stream_id("9-9"));
        assert_eq!(stream_id("junk"), (0, 0));
        assert!(missed(&bulk("5-1"), "5-0"));
        assert!(!missed(&bulk("5-0"), "5-0"));
        assert!(!missed(&bulk("4-9"), "5-0"));
        assert!(missed(&bulk("1-0"), "0-0"));
        assert!(!missed(&Value::Nil, "0-0"));
    }
}
