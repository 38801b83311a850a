// The `/client/` websocket as both the table (app.js) and the device page (device.js) use it: its
// address, and reading an UPDT's message (no DOM, no fetch: tested in node).

export function clientUrl() {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/client/`;
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
