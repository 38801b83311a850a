// Which devices may be out of date because this server instance cannot read the cluster's change stream
// (`--redis` and Redis unreachable): the `/client/?stale=1` notices (PROTOCOL.md §7), the devices that are
// current anyway, and the banner's wording. No DOM: tested in node (browser-tests/tests/stale.test.js).
//
// The server says `{"type":"INFO","message":"STALE","since_ms":T,"local":[SERIAL…]}` while other instances'
// devices may be out of date here (`local`: the devices connected to this instance, which stay current),
// and `{"type":"INFO","message":"LIVE"}` once they are current again. A device whose change arrives with a
// message id other than `0000` just wrote to this instance (changes from other instances carry `0000`), so
// it is current too from then on.

const REMOTE_MID = '0000';

/** The page's view of it: `since` (ms) while stale, else null. */
export function remoteState() {
  return { since: null, reason: '', local: new Set(), wrote: new Set() };
}

/**
 * An envelope as a notice: `{stale: true, since, reason, local}` for STALE, `{stale: false}` for LIVE,
 * null for anything else (other INFO frames, a STALE without a usable time).
 */
export function readNotice(env) {
  if (!env || env.type !== 'INFO') return null;
  if (env.message === 'LIVE') return { stale: false };
  if (env.message !== 'STALE') return null;
  const since = Number(env.since_ms);
  if (!Number.isFinite(since) || since <= 0) return null;
  const local = Array.isArray(env.local) ? env.local.filter((s) => typeof s === 'string') : [];
  return { stale: true, since, reason: typeof env.reason === 'string' ? env.reason : '', local };
}

/** Apply a notice; true when what is stale changed (the page then draws again, once). */
export function applyNotice(remote, notice) {
  if (notice.stale) {
    const sameEpisode = remote.since === notice.since;
    const local = new Set(notice.local);
    const changed = !sameEpisode || !sameSet(local, remote.local);
    remote.since = notice.since;
    remote.reason = notice.reason;
    remote.local = local;
    // A new outage starts afresh: who wrote here during the last one may be elsewhere now.
    if (!sameEpisode) remote.wrote = new Set();
    return changed;
  }
  return forget(remote);
}

/** Back to "nothing is stale" (LIVE, or the connection that said STALE is gone); true if it was. */
export function forget(remote) {
  if (remote.since === null) return false;
  remote.since = null;
  remote.reason = '';
  remote.local = new Set();
  remote.wrote = new Set();
  return true;
}

/**
 * A change of `serial` arrived with message id `mid`: while stale, one with an id other than `0000` means
 * the device is connected here. True when that made a stale device current.
 */
export function noteChange(remote, mid, serial) {
  if (remote.since === null || mid === REMOTE_MID || typeof serial !== 'string') return false;
  if (remote.local.has(serial) || remote.wrote.has(serial)) return false;
  remote.wrote.add(serial);
  return true;
}

/** Whether the values shown for `serial` may be out of date. */
export function isStale(remote, serial) {
  return remote.since !== null && !remote.local.has(serial) && !remote.wrote.has(serial);
}

const pad2 = (n) => String(n).padStart(2, '0');

/** `HH:MM:SS` of `ms`, local time. */
export function clockTime(ms) {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** The banner's text while stale. */
export function bannerText(since) {
  return `Redis unreachable since ${clockTime(since)} — devices on other instances may be out of date`;
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
