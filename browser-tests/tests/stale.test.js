// Which devices the page marks "stale" while its server instance cannot read the cluster's change stream
// (smart-server/assets/stale.js, no DOM), in node: the `/client/?stale=1` notices, devices connected here,
// devices that write here meanwhile, and the banner's wording.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { applyNotice, bannerText, clockTime, forget, isStale, noteChange, readNotice, remoteState } from '../../smart-server/assets/stale.js';

const STALE = { type: 'INFO', message: 'STALE', reason: 'this instance cannot reach Redis', since_ms: 1764509000000, local: ['B1', 'B2'] };

test('STALE and LIVE are read; other frames are no notice', () => {
  assert.deepEqual(readNotice(STALE), { stale: true, since: 1764509000000, reason: 'this instance cannot reach Redis', local: ['B1', 'B2'] });
  assert.deepEqual(readNotice({ type: 'INFO', message: 'LIVE' }), { stale: false });
  assert.deepEqual(readNotice({ ...STALE, local: ['B1', 7, null], reason: 3 }), { stale: true, since: 1764509000000, reason: '', local: ['B1'] });
  assert.deepEqual(readNotice({ ...STALE, local: undefined }).local, [], 'no list: nothing is local');
  for (const other of [
    { type: 'INFO', message: 'ERROR', reason: 'bad' },
    { type: 'INFO', message: 'Welcome to SMART-Server' },
    { type: 'UPDT', message: 'STALE' },
    { ...STALE, since_ms: 'soon' },
    { ...STALE, since_ms: 0 },
    null,
    undefined,
  ]) {
    assert.equal(readNotice(other), null, JSON.stringify(other));
  }
});

test('while stale, every device but those connected here is stale; LIVE makes them all current', () => {
  const remote = remoteState();
  assert.equal(isStale(remote, 'A1'), false, 'nothing is stale before a notice');
  assert.equal(applyNotice(remote, readNotice(STALE)), true);
  assert.equal(isStale(remote, 'A1'), true);
  assert.equal(isStale(remote, 'B1'), false, 'connected here');
  assert.equal(applyNotice(remote, readNotice(STALE)), false, 'the same notice again changes nothing');
  assert.equal(applyNotice(remote, readNotice({ ...STALE, local: ['B1'] })), true, 'B2 left');
  assert.equal(isStale(remote, 'B2'), true);
  assert.equal(applyNotice(remote, { stale: false }), true);
  assert.equal(isStale(remote, 'A1'), false);
  assert.equal(applyNotice(remote, { stale: false }), false, 'LIVE when live changes nothing');
});

test('a device whose change carries its own message id wrote here: current until the next outage', () => {
  const remote = remoteState();
  assert.equal(noteChange(remote, '0007', 'A1'), false, 'not stale: nothing to note');
  applyNotice(remote, readNotice(STALE));
  assert.equal(noteChange(remote, '0000', 'A1'), false, 'another instance’s change (or online/offline)');
  assert.equal(isStale(remote, 'A1'), true);
  assert.equal(noteChange(remote, '0007', 'A1'), true);
  assert.equal(isStale(remote, 'A1'), false);
  assert.equal(noteChange(remote, '0008', 'A1'), false, 'already current');
  assert.equal(noteChange(remote, '0003', 'B1'), false, 'connected here already');
  // The same outage told again (a notice with the same time) keeps it; a new outage starts afresh.
  applyNotice(remote, readNotice(STALE));
  assert.equal(isStale(remote, 'A1'), false);
  applyNotice(remote, { stale: false });
  applyNotice(remote, readNotice({ ...STALE, since_ms: STALE.since_ms + 60000 }));
  assert.equal(isStale(remote, 'A1'), true);
  // The connection that said so closed: nothing is known to be stale any more.
  assert.equal(forget(remote), true);
  assert.equal(isStale(remote, 'A1'), false);
  assert.equal(forget(remote), false);
});

test('the banner says since when, in local time', () => {
  const at = new Date(2026, 10, 30, 9, 5, 7).getTime();
  assert.equal(clockTime(at), '09:05:07');
  assert.equal(bannerText(at), 'Redis unreachable since 09:05:07 — devices on other instances may be out of date');
});
