// The `/client/` websocket as both the table (app.js) and the device page (device.js) use it: its
// address, and reading an UPDT's message (no DOM, no fetch: tested in node).

// `?batch=1` (PROTOCOL.md §7, an extension): consecutive UPDTs arrive as one frame whose message is a
// list of `MID:SERIAL:BODY` strings, so the page handles one websocket message (one task, one
// JSON.parse) per batch instead of one per change.
// `&stale=1` (an extension too): with several instances sharing the fleet through Redis, INFO `STALE`
// and `LIVE` say when other instances' devices may be out of date here (stale.js).
// `extra`: more `&`-separated pairs, e.g. `empty=1` (the view starts empty: no greeting INIT of the
// whole fleet before the first FILT; the device page's view of one device asks for it).
export function clientUrl(extra = '') {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/client/?batch=1&stale=1${extra ? `&${extra}` : ''}`;
}

const NONE = Object.freeze([]);

// An UPDT's message as the list of its `MID:SERIAL:BODY` strings, in order: a batched UPDT's list as
// it is, a plain UPDT's string as a list of one; an empty list for anything else. (Items that are not
// strings stay in the list: `readUpdt` turns them into null.)
export function updtMessages(message) {
  if (typeof message === 'string') return [message];
  return Array.isArray(message) ? message : NONE;
}

// The message id and serial of an UPDT's `MID:SERIAL:BODY` as `[mid, serial]` (the id is `0000` for
// changes from another instance and for online/offline); null for anything else. The body is not parsed.
export function updtIds(message) {
  if (typeof message !== 'string') return null;
  const c1 = message.indexOf(':');
  const c2 = c1 < 0 ? -1 : message.indexOf(':', c1 + 1);
  return c2 < 0 ? null : [message.slice(0, c1), message.slice(c1 + 1, c2)];
}

// An UPDT's `MID:SERIAL:BODY` as `{serial, body}` when the body is a JSON object; null for anything
// else, and for another serial than `only` when it is given (its body is then not parsed).
export function readUpdt(message, only) {
  if (typeof message !== 'string') return null;
  const c1 = message.indexOf(':');
  const c2 = c1 < 0 ? -1 : message.indexOf(':', c1 + 1);
  if (c2 < 0) return null;
  const serial = message.slice(c1 + 1, c2);
  if (only !== undefined && serial !== only) return null;
  let body;
  try {
    body = JSON.parse(message.slice(c2 + 1));
  } catch {
    return null;
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) return null;
  return { serial, body };
}
