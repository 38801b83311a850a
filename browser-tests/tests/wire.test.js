// Reading an UPDT's message (smart-server/assets/wire.js, no DOM), in node: what the table and the
// device page both take from the `/client/` websocket.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { clientUrl, readUpdt, updtIds, updtMessages } from '../../smart-server/assets/wire.js';

test('an UPDT message gives its serial and object body; anything else gives nothing', () => {
  assert.deepEqual(readUpdt('0001:0042:{"battery":5}'), { serial: '0042', body: { battery: 5 } });
  assert.deepEqual(readUpdt('0001:0042:{"a":"x:y"}', '0042'), { serial: '0042', body: { a: 'x:y' } });
  assert.equal(readUpdt('0001:0042:{"battery":5}', '0043'), null, 'another serial');
  assert.equal(readUpdt('0001:0042:[1]'), null, 'not an object');
  assert.equal(readUpdt('0001:0042:null'), null);
  assert.equal(readUpdt('0001:0042:{bad'), null, 'not JSON');
  assert.equal(readUpdt('no colons'), null);
  assert.equal(readUpdt('one:colon'), null);
  assert.equal(readUpdt(42), null);
  assert.equal(readUpdt(undefined), null);
});

test('the page asks for batched UPDTs and stale notices, over wss: when the page is https:', () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'location');
  try {
    globalThis.location = { protocol: 'http:', host: '127.0.0.1:8000' };
    assert.equal(clientUrl(), 'ws://127.0.0.1:8000/client/?batch=1&stale=1');
    globalThis.location = { protocol: 'https:', host: 'fleet.example:8443' };
    assert.equal(clientUrl(), 'wss://fleet.example:8443/client/?batch=1&stale=1');
    assert.equal(clientUrl('empty=1'), 'wss://fleet.example:8443/client/?batch=1&stale=1&empty=1');
  } finally {
    if (saved) Object.defineProperty(globalThis, 'location', saved);
    else delete globalThis.location;
  }
});

test('an UPDT message, plain or batched, is the list of its strings in order', () => {
  const a = '0001:0042:{"battery":5}';
  const b = '0002:0043:{"battery":6}';
  assert.deepEqual(updtMessages(a), [a], 'a plain UPDT is a list of one');
  assert.deepEqual(updtMessages([a, b, a]), [a, b, a], 'a batch keeps its order and repeats');
  assert.deepEqual(updtMessages([]), []);
  for (const other of [undefined, null, 42, { a }, true]) assert.deepEqual(updtMessages(other), [], String(other));
  // Every string of a batch reads as a plain UPDT's message does; an item that is not one reads as null.
  assert.deepEqual(
    updtMessages([a, 7, 'bad', b]).map((m) => readUpdt(m)),
    [{ serial: '0042', body: { battery: 5 } }, null, null, { serial: '0043', body: { battery: 6 } }],
  );
  assert.deepEqual(updtMessages([a, b]).map((m) => readUpdt(m, '0043')), [null, { serial: '0043', body: { battery: 6 } }]);
});

test('an UPDT message gives its message id and serial without its body being read', () => {
  assert.deepEqual(updtIds('0007:0042:{"battery":5}'), ['0007', '0042']);
  assert.deepEqual(updtIds('0000:S:{bad'), ['0000', 'S'], 'the body is not parsed');
  assert.deepEqual(updtIds('0001:0042:{"a":"x:y"}'), ['0001', '0042']);
  for (const other of ['no colons', 'one:colon', 42, undefined, null]) assert.equal(updtIds(other), null, String(other));
});
