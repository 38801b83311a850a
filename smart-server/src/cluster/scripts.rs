//! What the instances keep in Redis, and the one script that writes it.
//!
//! - `smart:devices`: hash, serial → the latest record's JSON (as the instance that wrote it stores it);
//! - `smart:versions`: hash, serial → the version of that record (see [`version`]);
//! - `smart:changes`: stream, one entry per shipped chunk: `i` → the shipping instance's id, `r` →
//!   the JSON of every record the chunk changed, one per line (trimmed with `MAXLEN ~`). One field
//!   for the whole chunk: Redis stores, logs and serves it as one string, and a follower parses one
//!   reply element per entry, not two per record.
//!
//! Presence has keys and scripts of its own (`smart:instance:<id>`, `smart:online:<id>`,
//! `smart:instances`, the stream `smart:presence`): see [`super::presence`].
//!
//! The script compares versions server-side, so an older record shipped late (an instance's backlog
//! after Redis was away, or its log replayed after a crash) never replaces a newer one, and the
//! stream carries only what was accepted.

use smart_proto::Timestamp;

/// The latest record of every device.
pub(crate) const DEVICES: &str = "smart:devices";
/// The version of each record in [`DEVICES`].
pub(crate) const VERSIONS: &str = "smart:versions";
/// The change stream the instances follow.
pub(crate) const STREAM: &str = "smart:changes";
/// Field of a stream entry naming the instance that shipped it (the first field of every entry).
pub(crate) const INSTANCE_FIELD: &str = "i";
/// Field of a stream entry holding its records: compact JSON (which never holds a raw newline),
/// one per line.
pub(crate) const RECORDS_FIELD: &str = "r";

/// Most devices one script call carries (Lua's `unpack` and the stream entry stay small).
pub(crate) const CHUNK: usize = 500;

/// `KEYS`: devices, versions, stream. `ARGV`: instance id, stream cap, then (serial, version,
/// record) triples (distinct serials, at most [`CHUNK`]). Writes each record whose version is
/// greater than the stored one, adds one stream entry with the accepted records (one per line),
/// returns how many were accepted. Four commands per call whatever its size (one `HMGET` of the
/// versions, one `HSET` of each hash, the `XADD`): a call per record costs Redis about 1.5× the CPU.
pub(crate) const SHIP: &str = r"
local serials = {}
for k = 3, #ARGV - 2, 3 do
  serials[#serials + 1] = ARGV[k]
end
if #serials == 0 then
  return 0
end
local current = redis.call('HMGET', KEYS[2], unpack(serials))
local versions, records, accepted = {}, {}, {}
local i = 0
for k = 3, #ARGV - 2, 3 do
  i = i + 1
  local serial, version = ARGV[k], ARGV[k + 1]
  if (not current[i]) or current[i] < version then
    versions[#versions + 1] = serial
    versions[#versions + 1] = version
    records[#records + 1] = serial
    records[#records + 1] = ARGV[k + 2]
    accepted[#accepted + 1] = ARGV[k + 2]
  end
end
if #accepted > 0 then
  redis.call('HSET', KEYS[2], unpack(versions))
  redis.call('HSET', KEYS[1], unpack(records))
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'i', ARGV[1], 'r', table.concat(accepted, '\n'))
end
return #accepted
";

/// A record's version: its `last_status_update` (the receive time the writing instance stamped,
/// RFC 3339 with microseconds: fixed width, so text order is time order), then the instance id
/// breaking ties. `None` if the JSON holds no readable timestamp.
pub(crate) fn version(record_json: &str, instance: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        last_status_update: &'a str,
    }
    let stamp: Stamp<'_> = serde_json::from_str(record_json).ok()?;
    let ts = Timestamp::parse(stamp.last_status_update).ok()?;
    Some(format!("{} {instance}", ts.as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_time_then_instance() {
        let at = |ts: &str, i: &str| {
            version(
                &format!(r#"{{"battery":1,"last_status_update":"{ts}"}}"#),
                i,
            )
            .unwrap()
        };
        let a = at("2024-03-11T00:43:33.256667Z", "b");
        let b = at("2024-03-11T00:43:33.256668Z", "a");
        let c = at("2024-03-11T10:00:00.000000Z", "a");
        let d = at("2025-01-01T00:00:00.000000Z", "a");
        assert!(a < b && b < c && c < d);
        assert!(at("2024-03-11T00:43:33.256667Z", "a") < a);
        assert_eq!(version(r#"{"battery":1}"#, "a"), None);
        assert_eq!(version(r#"{"last_status_update":"soon"}"#, "a"), None);
    }
}
