// The device page (`#/device/SERIAL`): opened from a row, every field with its unit, charts from the
// history API that keep appending live, daily kWh bars, the CSV of the shown range, and Back to the same
// query and scroll position. Then its render time with 30 days of hourly and 48 h of raw history.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { DeviceLink, Server, TARGET_DIR, deviceInit, openBrowser, registerFleet, rowSelector, sleep, waitLive, waitUntil } from '../lib/harness.js';

function assertNoPageErrors(problems) {
  assert.deepEqual(problems, [], 'the page logged errors');
}

const fieldText = (page, key) => page.textContent(`#device-fields .field[data-field="${key}"] dd`);
const chartInfo = (page, key) =>
  page.$eval(`#device-charts .chart[data-field="${key}"]`, (el) => ({ points: Number(el.dataset.points), last: el.dataset.last, canvas: !!el.querySelector('canvas') }));

/** Click a range button and wait until its charts are drawn; the page's own load-to-drawn time in ms. */
async function showRange(page, range) {
  await page.click(`#device-page [data-range="${range}"]`);
  await page.waitForSelector(`#device-page [data-range="${range}"][aria-pressed="true"]`);
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  return Number(await page.getAttribute('#device-page', 'data-render-ms'));
}

const pageFigure = async (page, name) => Number(await page.getAttribute('#device-page', `data-${name}-ms`));

test('a row opens its device page: fields with units, live charts, energy bars, CSV; Back returns to the same query and scroll', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server);
  t.after(() => link.close());
  await registerFleet(link, 60);
  for (let k = 0; k < 5; k += 1) await link.update('0042', { battery: 50 + k, power_income: 1500 + k * 10 });
  // History is readable about a second after the ack.
  await waitUntil(
    async () => (await server.getJson(`/api/devices/0042/history?fields=battery&agg=raw&from=${Date.now() - 600000}`)).ts.length >= 6,
    { timeout: 5000, what: 'the history of 0042' },
  );

  const b = await openBrowser();
  t.after(() => b.close());
  const { page, problems } = b;
  // Each websocket the page opens, with the INITs it received (up to 4,000 characters of each).
  const sockets = [];
  page.on('websocket', (ws) => {
    const socket = { url: ws.url(), inits: [] };
    sockets.push(socket);
    ws.on('framereceived', ({ payload }) => {
      const text = String(payload);
      if (/^\{"type":"INIT"/.test(text)) socket.inits.push(text.slice(0, 4000));
    });
  });
  const query = `#q=${encodeURIComponent('filter:power_income:>:100')}`;
  await page.goto(`${server.origin}/${query}`);
  await waitLive(page);
  await page.waitForFunction(() => document.getElementById('result-count').textContent === '60');
  await page.$eval('#scroller', (el) => {
    el.scrollTop = 1200;
  });
  await page.waitForSelector(rowSelector('0042'));
  const scrollTop = await page.$eval('#scroller', (el) => el.scrollTop);
  assert.ok(scrollTop > 1000, `scrolled down (${scrollTop})`);

  await page.click(`${rowSelector('0042')} td[data-field="battery"]`);
  await page.waitForFunction(() => location.hash === '#/device/0042');
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  assert.equal(await page.isHidden('#layout'), true, 'the table is replaced by the device page');
  assert.equal(await page.textContent('#device-serial'), '0042');
  assert.equal(await page.textContent('#device-status'), 'Online');
  assert.match(await page.textContent('#device-seen'), /^last seen \d+ s ago · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);

  // Every field, with units: W → kW above 1,000, capacity (watt-seconds) in kWh, battery in %.
  assert.equal(await fieldText(page, 'power_income'), '1.54 kW');
  assert.equal(await fieldText(page, 'power_inject'), `${deviceInit(42)._power_inject} W`);
  assert.equal(await fieldText(page, 'capacity'), '1.44 kWh');
  assert.equal(await fieldText(page, 'battery'), '54 %');
  assert.equal(await fieldText(page, 'country'), deviceInit(42)._country);
  assert.equal(await fieldText(page, 'local_time'), deviceInit(42)._local_time.replace(/\.\d+$/, ''), 'device time as in the table');
  assert.equal(await fieldText(page, 'charging'), String(deviceInit(42).charging), 'extra fields are listed too');

  // The last hour: every change, one chart per numeric field (postcode is an identifier: no chart).
  await showRange(page, '1h');
  const charted = await page.$$eval('#device-charts .chart', (els) => els.map((e) => e.dataset.field));
  assert.deepEqual(charted, ['battery', 'power_income', 'power_inject', 'power_consumption', 'capacity', 'pv_connectors']);
  const before = await chartInfo(page, 'battery');
  assert.ok(before.canvas, 'uPlot drew a canvas');
  assert.ok(before.points >= 6, `INIT and 5 updates charted: ${JSON.stringify(before)}`);
  assert.equal(before.last, '54');

  // Live: a new value is appended to its chart while the page is open, and shows in the fields.
  await link.update('0042', { battery: 77, power_consumption: 2500 });
  await page.waitForFunction(() => document.querySelector('#device-charts .chart[data-field="battery"]').dataset.last === '77', null, { timeout: 2000 });
  const after = await chartInfo(page, 'battery');
  assert.equal(after.points, before.points + 1, 'one point appended');
  assert.equal((await chartInfo(page, 'power_consumption')).last, '2500');
  await page.waitForFunction(() => document.querySelector('#device-fields .field[data-field="battery"] dd').textContent === '77 %');
  assert.equal(await fieldText(page, 'power_consumption'), '2.5 kW');

  // Live values come over the table's websocket while the device is in its view; when a change takes
  // it out (the table's filter is power_income > 100), the page follows it over a view of its own.
  assert.equal(sockets.length, 1, 'only the table\'s websocket so far');
  await link.update('0042', { power_income: 50 });
  await page.waitForFunction(() => document.querySelector('#device-charts .chart[data-field="power_income"]').dataset.last === '50', null, { timeout: 3000 });
  assert.equal(await fieldText(page, 'power_income'), '50 W');
  assert.equal(sockets.length, 2, 'a view of its own');
  // That view asked to start empty (`empty=1`): no greeting INIT of the whole fleet, only the FILT's.
  assert.ok(!sockets[0].url.includes('empty=1') && sockets[1].url.includes('empty=1'), JSON.stringify(sockets.map((s) => s.url)));
  await waitUntil(async () => sockets[1].inits.length >= 2, { timeout: 3000, what: 'the view\'s INIT' });
  assert.equal(sockets[1].inits[0], '{"type":"INIT","message":[]}');
  assert.match(sockets[1].inits[1], /"serial_number":"0042"/);

  // The other ranges load, and keep appending too.
  await showRange(page, '24h');
  assert.ok((await chartInfo(page, 'battery')).points >= 1);
  await link.update('0042', { battery: 12 });
  await page.waitForFunction(() => document.querySelector('#device-charts .chart[data-field="battery"]').dataset.last === '12', null, { timeout: 2000 });

  // Daily kWh bars for the last 7 UTC days, newest first.
  const days = await page.$$eval('#device-energy .energy-day', (els) =>
    els.map((e) => ({ day: e.dataset.day, kwh: [...e.querySelectorAll('.energy-bar')].map((bar) => bar.dataset.kwh) })),
  );
  assert.equal(days.length, 7);
  assert.equal(days[0].day, new Date().toISOString().slice(0, 10));
  // What the energy API says (today's figures only grow as samples arrive: at least what the page showed).
  const energy = await server.getJson(`/api/devices/0042/energy?from=${days[6].day}&to=${days[0].day}`);
  ['power_income_kwh', 'power_inject_kwh', 'power_consumption_kwh'].forEach((key, k) => {
    assert.ok(days[0].kwh[k] !== '' && Number(days[0].kwh[k]) <= energy[key][6] + 1e-9, `today's ${key}: ${days[0].kwh[k]} vs ${energy[key][6]}`);
    for (let d = 1; d < 7; d += 1) assert.equal(days[d].kwh[k], String(energy[key][6 - d] ?? ''), `${days[d].day} ${key}`);
  });

  // The CSV of the range shown (24 h, 5-minute averages), from the history API.
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 5000 }), page.click('#device-csv')]);
  assert.equal(download.suggestedFilename(), '0042-24h.csv');
  const lines = fs.readFileSync(await download.path(), 'utf8').trim().split(/\r?\n/);
  assert.match(lines[0], /^ts_ms,time,"?battery"?,"?power_income"?/);
  assert.equal(lines.length - 1, 289, '24 h of 5-minute buckets (the current one included)');
  assert.ok(lines.slice(1).some((l) => l.split(',')[2] !== ''), 'a bucket holds the battery values');

  fs.mkdirSync(TARGET_DIR, { recursive: true });
  await page.screenshot({ path: path.join(TARGET_DIR, 'device-page.png'), fullPage: true });
  // Back into the table's view (for the return below).
  await link.update('0042', { power_income: 1540 });
  await page.waitForFunction(() => document.querySelector('#device-fields .field[data-field="power_income"] dd').textContent === '1.54 kW');

  // Back: the same query and the same scroll position, and the table is live again.
  await page.click('#device-back');
  await page.waitForSelector('#layout:not([hidden])');
  assert.equal(await page.evaluate(() => location.hash), query);
  assert.equal(await page.isHidden('#device-page'), true);
  await page.waitForSelector(rowSelector('0042'));
  assert.equal(await page.$eval('#scroller', (el) => el.scrollTop), scrollTop, 'same scroll position');
  await page.waitForFunction(() => document.querySelector('#body tr[data-serial="0042"] td[data-field="battery"]')?.textContent === '12');
  await link.update('0043', { battery: 99 });
  await page.waitForFunction(() => document.querySelector('#body tr[data-serial="0043"] td[data-field="battery"]')?.textContent === '99', null, { timeout: 2000 });

  // From the keyboard: the serial is a link (Tab, Enter); the browser's Back works like the page's.
  await page.focus(`${rowSelector('0043')} a.row-link`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  assert.equal(await page.textContent('#device-serial'), '0043');
  await page.goBack();
  await page.waitForSelector('#layout:not([hidden])');
  assert.equal(await page.evaluate(() => location.hash), query);
  assert.equal(await page.$eval('#scroller', (el) => el.scrollTop), scrollTop, 'same scroll position');
  assertNoPageErrors(problems);

  // A device page opened by its address; an unknown serial says so in words (Chromium itself logs the
  // 404 of that request, the only message allowed here).
  await page.goto(`${server.origin}/#/device/nope`);
  await page.waitForSelector('#device-error:not([hidden])');
  assert.match(await page.textContent('#device-error'), /There is no device nope/);
  await page.click('#device-back');
  await page.waitForSelector('#layout:not([hidden])');
  assertNoPageErrors(problems.filter((p) => !/status of 404/.test(p)));
});

test('the device page with 30 days hourly and 48 h raw history renders within 300 ms (best of 3), figures printed', async (t) => {
  const SERIAL = 'fill000000';
  const server = await Server.start(undefined, {
    // 30 days of one device's messages every 2 minutes (± 0.5 s), rolled up; the last 48 h stay raw.
    before: (dir) => Server.cli(dir, ['history-fill', '--devices', '1', '--hours', '720', '--interval-secs', '120']),
  });
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server);
  t.after(() => link.close());
  await link.send('INIT', SERIAL, deviceInit(1, { serial_number: SERIAL }));

  const b = await openBrowser();
  t.after(() => b.close());
  const { page, problems } = b;
  await page.goto(`${server.origin}/#/device/${SERIAL}`);
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 15000 });

  // Each range three times (the first may meet cold caches): the median is reported, the best of three
  // must be within 300 ms (the machine is shared: a run can wait for a core).
  const figures = {};
  for (const range of ['30d', '7d', '24h', '1h']) {
    const runs = [];
    const requests = [];
    const complete = [];
    for (let k = 0; k < 3; k += 1) {
      await showRange(page, range === '1h' ? '24h' : '1h');
      runs.push(await showRange(page, range));
      requests.push(await pageFigure(page, 'fetch'));
      complete.push(await pageFigure(page, 'complete'));
    }
    const sorted = [...runs].sort((x, y) => x - y);
    figures[range] = { median_ms: sorted[1], best_ms: sorted[0], runs, history_request_ms: requests, with_energy_bars_ms: complete };
    if (range === '30d') {
      const { points } = await chartInfo(page, 'battery');
      assert.ok(points >= 700, `30 days of hourly buckets charted (${points})`);
    }
    if (range === '24h') {
      const { points } = await chartInfo(page, 'power_income');
      // The fill changes 1 to 3 of the 4 fields per message: some buckets hold no change of a field.
      assert.ok(points >= 200, `24 h of 5-minute buckets charted (${points})`);
    }
  }
  const line = `device page render (click → history request → charts drawn), ms: ${JSON.stringify(figures)}`;
  console.log(line);
  t.diagnostic(line);
  for (const [range, f] of Object.entries(figures)) assert.ok(f.best_ms <= 300, `${range}: ${f.best_ms} ms > 300 ms`);
  await showRange(page, '7d');
  await sleep(100);
  fs.mkdirSync(TARGET_DIR, { recursive: true });
  await page.screenshot({ path: path.join(TARGET_DIR, 'device-page-history.png'), fullPage: true });
  assertNoPageErrors(problems);
});
