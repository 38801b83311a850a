// Reading an UPDT's message (smart-server/assets/wire.js, no DOM), in node: what the table and the
// device page both take from the `/client/` websocket.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readUpdt } from '../../smart-server/assets/wire.js';

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
