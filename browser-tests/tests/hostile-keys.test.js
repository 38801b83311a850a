// Device-controlled keys that name JavaScript internals (`__proto__`, `constructor`, `hasOwnProperty`)
// must reach the page as ordinary extra columns: no record's prototype changes, nothing is polluted, and
// the cells of records that lack such a key show "—" (not whatever Object.prototype holds under that name).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DeviceLink, Server, cellSelector, deviceInit, openBrowser, rowSelector, serialOf, waitLive } from '../lib/harness.js';

const EMPTY = '—';

function waitForCount(page, n, timeout = 5000) {
  return page.waitForFunction((want) => document.getElementById('result-count').textContent.replace(/\D/g, '') === String(want), n, { timeout });
}

const cellText = (page, serial, field) => page.textContent(cellSelector(serial, field));

test('device keys __proto__, constructor and hasOwnProperty are plain extra columns; nothing is polluted', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server);
  t.after(() => link.close());

  // 0001 carries the hostile keys from its INIT (`___proto__` loses one underscore: `__proto__`);
  // 0002 and 0003 do not, and get them later through live updates.
  // A computed key makes `__proto__` an own property (so JSON.stringify sends it), not the prototype.
  const first = deviceInit(1, { colour: 'red', constructor: 'ctor-1', hasOwnProperty: 'own-1' });
  first.___proto__ = { inner: { ['__proto__']: { polluted: 'nested' } } };
  await link.send('INIT', serialOf(1), first);
  await link.send('INIT', serialOf(2), deviceInit(2));
  await link.send('INIT', serialOf(3), deviceInit(3));

  const b = await openBrowser();
  t.after(() => b.close());
  const { page, problems } = b;
  await page.goto(`${server.origin}/`);
  await waitLive(page);
  await waitForCount(page, 3);
  await page.waitForSelector(rowSelector('0003'));

  // Extra fields start hidden; "Show all" in the column picker shows them (the choice is stored per
  // field name, `__proto__` included, and survives a reload).
  assert.equal(await page.$('th[data-field="colour"]'), null);
  await page.click('#columns-button');
  await page.click('#columns-all');
  await page.reload();
  await waitLive(page);
  await page.waitForSelector(rowSelector('0003'));

  // Normal extra columns, one per key, with the key as their field.
  for (const key of ['__proto__', 'constructor', 'hasOwnProperty', 'colour']) {
    assert.ok(await page.$(`th[data-field="${key}"]`), `a column for ${key}`);
  }
  const api1 = await server.getJson('/api/devices/0001');
  assert.ok(Object.hasOwn(api1, '__proto__'), 'the server stores __proto__ as a field');
  assert.equal(await cellText(page, '0001', '__proto__'), JSON.stringify(api1.__proto__));
  assert.equal(await cellText(page, '0001', 'constructor'), 'ctor-1');
  assert.equal(await cellText(page, '0001', 'hasOwnProperty'), 'own-1');
  // Records without those keys show an empty cell, not Object.prototype's members.
  for (const serial of ['0002', '0003']) {
    for (const key of ['__proto__', 'constructor', 'hasOwnProperty', 'colour']) {
      assert.equal(await cellText(page, serial, key), EMPTY, `${serial}.${key} is empty`);
    }
  }

  await page.evaluate(() => {
    window.__protoBefore = {};
    for (const s of ['0001', '0002', '0003']) {
      window.__protoBefore[s] = Object.getPrototypeOf(document.querySelector(`#body tr[data-serial="${s}"]`).rec);
    }
  });

  // Live updates that add the keys to records that did not have them: an object (which a plain-object
  // record would take as its new prototype) and a number (which it would silently drop).
  await link.update(serialOf(2), { ___proto__: { colour: 'INJECTED', polluted: 'yes' }, _battery: 7, constructor: { polluted: 'ctor' } });
  await link.update(serialOf(3), { ___proto__: 5, hasOwnProperty: 'own-3', _battery: 9 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '9', cellSelector('0003', 'battery'), { timeout: 2000 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '7', cellSelector('0002', 'battery'), { timeout: 2000 });

  const api2 = await server.getJson('/api/devices/0002');
  assert.deepEqual(api2.__proto__, { colour: 'INJECTED', polluted: 'yes' });
  assert.equal(await cellText(page, '0002', '__proto__'), JSON.stringify(api2.__proto__));
  assert.equal(await cellText(page, '0002', 'constructor'), JSON.stringify(api2.constructor));
  assert.equal(await cellText(page, '0002', 'colour'), EMPTY, 'the __proto__ value did not become a fallback for other fields');
  assert.equal(await cellText(page, '0002', 'hasOwnProperty'), EMPTY);
  assert.equal(await cellText(page, '0003', '__proto__'), '5');
  assert.equal(await cellText(page, '0003', 'hasOwnProperty'), 'own-3');
  assert.equal(await cellText(page, '0003', 'constructor'), EMPTY);
  // The other cells stay right.
  assert.equal(await cellText(page, '0001', 'colour'), 'red');
  assert.equal(await cellText(page, '0001', 'battery'), String(deviceInit(1)._battery));
  assert.equal(await cellText(page, '0002', 'serial_number'), '0002');
  assert.equal(await cellText(page, '0002', 'country'), deviceInit(2)._country);
  assert.equal(await cellText(page, '0003', 'postcode'), String(deviceInit(3)._postcode));

  // A device that registers while the page is open arrives as one UPDT with its whole record.
  const fourth = deviceInit(4);
  fourth.___proto__ = { colour: 'NEW' };
  await link.send('INIT', serialOf(4), fourth);
  await waitForCount(page, 4);
  await page.waitForSelector(rowSelector('0004'));
  assert.equal(await cellText(page, '0004', '__proto__'), JSON.stringify({ colour: 'NEW' }));
  assert.equal(await cellText(page, '0004', 'colour'), EMPTY);
  assert.equal(await cellText(page, '0004', 'battery'), String(fourth._battery));

  const integrity = await page.evaluate(() => {
    const probe = {};
    const inherited = [];
    for (const k in probe) inherited.push(k);
    const protoOf = (s) => Object.getPrototypeOf(document.querySelector(`#body tr[data-serial="${s}"]`).rec);
    const sameProto = ['0001', '0002', '0003'].every((s) => protoOf(s) === window.__protoBefore[s]) && protoOf('0004') === window.__protoBefore['0001'];
    return { polluted: probe.polluted, colour: probe.colour, inherited, sameProto };
  });
  assert.deepEqual(integrity, { polluted: undefined, colour: undefined, inherited: [], sameProto: true });

  // A filter and a sort on those fields work like on any other field (server and page agree).
  await page.goto(`${server.origin}/#q=${encodeURIComponent('filter:hasOwnProperty:^:own')}&q=${encodeURIComponent('sort:hasOwnProperty:>:abc')}`);
  await waitLive(page);
  await waitForCount(page, 2);
  assert.deepEqual(
    await page.$$eval('#body tr[data-serial]', (rows) => rows.map((r) => r.dataset.serial)),
    ['0003', '0001'],
  );
  assert.equal(await cellText(page, '0003', 'hasOwnProperty'), 'own-3');

  assert.deepEqual(problems, [], 'the page logged errors');
});
