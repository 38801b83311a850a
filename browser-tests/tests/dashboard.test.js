// The dashboard in a real headless Chromium against the real smart-server and real device websockets.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  DeviceLink,
  Server,
  TARGET_DIR,
  allSerials,
  cellSelector,
  deviceInit,
  openBrowser,
  registerFleet,
  renderedSerials,
  resultCount,
  rowSelector,
  serialOf,
  sleep,
  waitLive,
  waitUntil,
} from '../lib/harness.js';

const range = (n) => Array.from({ length: n }, (_, k) => k + 1);
const batteryOf = (i) => deviceInit(i)._battery;

/** Start a server with `n` registered devices and a page showing them. */
async function setup(t, n, { browser = {} } = {}) {
  const server = await Server.start();
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server);
  t.after(() => link.close());
  await registerFleet(link, n);
  const b = await openBrowser(browser);
  t.after(() => b.close());
  await b.page.goto(`${server.origin}/`);
  await waitLive(b.page);
  await waitForCount(b.page, n);
  return { server, link, page: b.page, problems: b.problems };
}

function waitForCount(page, n, timeout = 5000) {
  return page.waitForFunction((want) => document.getElementById('result-count').textContent.replace(/\D/g, '') === String(want), n, { timeout });
}

function waitForCell(page, serial, field, expected, timeout = 1000) {
  return page.waitForFunction(
    ([sel, want]) => {
      const text = document.querySelector(sel)?.textContent ?? null;
      return want instanceof RegExp ? want.test(text ?? '') : text === want;
    },
    [cellSelector(serial, field), expected],
    { timeout },
  );
}

async function addFilter(page, field, op, value) {
  await page.click('#add-filter');
  const row = page.locator('#filter-rows .filter-row').last();
  await row.locator('select.field').selectOption(field);
  await row.locator('select.op').selectOption(op);
  await row.locator('input.value').fill(value);
}

async function addSort(page, field, dir) {
  await page.click('#add-sort');
  const row = page.locator('#sort-rows .sort-row').last();
  await row.locator('select.field').selectOption(field);
  await row.locator('select.dir').selectOption(dir);
}

function assertNoPageErrors(problems) {
  // A refused websocket during a server restart is logged by Chromium itself; nothing else may be.
  const real = problems.filter((p) => !/WebSocket connection to .* failed/.test(p));
  assert.deepEqual(real, [], 'the page logged errors');
}

test('every device gets a row, with readable headers, formats and status; screenshot of 50 devices', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const online = await DeviceLink.connect(server);
  t.after(() => online.close());
  // Devices 47..50 speak over a link that then closes, so the page has offline devices to show.
  const leaving = await DeviceLink.connect(server);
  await Promise.all(range(50).map((i) => (i > 46 ? leaving : online).send('INIT', serialOf(i), deviceInit(i))));
  await leaving.close();

  const b = await openBrowser();
  t.after(() => b.close());
  const { page } = b;
  await page.goto(`${server.origin}/`);
  await waitLive(page);
  await waitForCount(page, 50);

  const rendered = (await renderedSerials(page)).length;
  assert.ok(rendered > 10 && rendered < 50, `only the visible window is rendered (${rendered} rows)`);
  assert.deepEqual(await allSerials(page), range(50).map(serialOf), 'all 50 serials, ascending');
  await page.waitForFunction(() => document.getElementById('offline-count').textContent.startsWith('4 '), null, { timeout: 5000 });
  assert.equal(await page.textContent('#online-count'), '46 online');

  // Headers: readable labels, the battery's unit in its header (power and capacity carry theirs in the
  // cells); extra fields the devices sent are columns the picker offers, hidden until picked.
  const header = async (field) => (await page.textContent(`th[data-field="${field}"]`)).replace(/[▲▼\d]/g, '').trim();
  assert.equal(await header('battery'), 'Battery%');
  assert.equal(await header('power_income'), 'Income');
  assert.equal(await header('power_consumption'), 'Consumption');
  for (const extra of ['charging', 'injecting', 'meassuring']) {
    assert.equal(await page.$(`th[data-field="${extra}"]`), null, `extra field ${extra} hidden by default`);
    assert.ok(await page.$(`#column-list input[data-field="${extra}"]`), `the picker offers ${extra}`);
  }
  await page.click('#columns-button');
  await page.check('#column-list input[data-field="charging"]');
  await page.click('#columns-button');
  await page.waitForSelector('th[data-field="charging"]');
  for (const gone of ['server_url', 'websocket', 'message_queue', '_battery']) {
    assert.equal(await page.$(`th[data-field="${gone}"]`), null, `no column for ${gone}`);
  }

  // Cells: numbers right-aligned, timestamps in local time, time since last update, status.
  const battery = await page.$(cellSelector('0002', 'battery'));
  assert.equal(await battery.textContent(), String(batteryOf(2)));
  assert.equal(await battery.evaluate((el) => getComputedStyle(el).textAlign), 'right');
  const record = await server.getJson('/api/devices/0002');
  const expectedLocal = await page.evaluate((iso) => {
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }, record.manufacturing_date);
  assert.equal(await page.textContent(cellSelector('0002', 'manufacturing_date')), expectedLocal);
  assert.match(await page.textContent(cellSelector('0002', 'last_status_update')), /^\d+ s ago$/);
  assert.equal(await page.textContent(cellSelector('0002', 'online')), 'Online');
  assert.equal(await page.textContent(cellSelector('0002', 'charging')), String(deviceInit(2).charging));

  // "N s ago" moves on by itself.
  const before = await page.textContent(cellSelector('0001', 'last_status_update'));
  await page.waitForFunction(
    ([sel, old]) => document.querySelector(sel).textContent !== old,
    [cellSelector('0001', 'last_status_update'), before],
    { timeout: 2500 },
  );

  await page.$eval('#scroller', (el) => {
    el.scrollTop = el.scrollHeight;
  });
  await page.waitForSelector(rowSelector('0050'), { timeout: 2000 });
  assert.equal(await page.textContent(cellSelector('0050', 'online')), 'Offline');
  await page.$eval('#scroller', (el) => {
    el.scrollTop = 0;
  });
  await page.waitForSelector(rowSelector('0001'), { timeout: 2000 });

  // For the picture: a query in the builder (it keeps all 50) and a few fresh updates flashing.
  await addFilter(page, 'power_income', '>', '100');
  await addSort(page, 'power_consumption', '>');
  await page.click('#apply');
  await page.waitForSelector('th[data-field="power_consumption"][aria-sort="descending"]', { timeout: 2000 });
  await waitForCount(page, 50);
  await sleep(300);
  const top = await renderedSerials(page);
  await Promise.all([top[1], top[4], top[9]].map((s, k) => online.update(s, { battery: 71 + k * 9 })));
  await sleep(350);
  fs.mkdirSync(TARGET_DIR, { recursive: true });
  await page.screenshot({ path: path.join(TARGET_DIR, 'dashboard-screenshot.png') });
  await page.emulateMedia({ colorScheme: 'dark' });
  await sleep(100);
  await page.screenshot({ path: path.join(TARGET_DIR, 'dashboard-screenshot-dark.png') });
  assertNoPageErrors(b.problems);
});

test('a device update changes the right cell within 1 s; a new device appears at once', async (t) => {
  const { link, page, problems } = await setup(t, 10);
  const other = await page.textContent(cellSelector('0004', 'battery'));

  const cell = await page.$(cellSelector('0003', 'battery'));
  const started = Date.now();
  const shown = waitForCell(page, '0003', 'battery', '77', 1000);
  await link.update('0003', { battery: 77, power_consumption: 1234 });
  await shown;
  const elapsed = Date.now() - started;
  assert.ok(elapsed <= 1000, `update shown after ${elapsed} ms`);
  // The cell was updated in place, not rebuilt with the table.
  assert.deepEqual(await cell.evaluate((el) => [el.isConnected, el.textContent]), [true, '77']);
  await waitForCell(page, '0003', 'power_consumption', '1.23 kW', 1000);
  assert.equal(await page.textContent(cellSelector('0004', 'battery')), other, 'neighbour untouched');
  assert.equal(await page.textContent(cellSelector('0002', 'battery')), String(batteryOf(2)), 'neighbour untouched');

  const newcomer = waitForCell(page, '0011', 'battery', String(batteryOf(11)), 1000);
  await link.send('INIT', '0011', deviceInit(11));
  await newcomer;
  await waitForCount(page, 11, 1000);
  assert.deepEqual((await renderedSerials(page)).slice(-2), ['0010', '0011'], 'new device in serial order');

  // A field nobody sent before becomes a column the picker offers (extra fields start hidden).
  await link.update('0005', { inverter_temp: 41.5 });
  await page.waitForSelector('#column-list input[data-field="inverter_temp"]', { state: 'attached', timeout: 1000 });
  assert.equal(await page.$('th[data-field="inverter_temp"]'), null);
  await page.click('#columns-button');
  await page.check('#column-list input[data-field="inverter_temp"]');
  await waitForCell(page, '0005', 'inverter_temp', '41.5', 1000);
  assert.match(await page.textContent('th[data-field="inverter_temp"]'), /Inverter temp/);
  assertNoPageErrors(problems);
});

test('a filter leaves only matching rows, and live updates keep respecting it', async (t) => {
  const n = 20;
  const { server, link, page, problems } = await setup(t, n);
  const battery = new Map(range(n).map((i) => [serialOf(i), batteryOf(i)]));
  const expected = () => [...battery].filter(([, b]) => b > 50).map(([s]) => s).sort();

  await addFilter(page, 'battery', '>', '50');
  await page.click('#apply');
  await waitForCount(page, expected().length);
  assert.ok(expected().length > 3 && expected().length < n - 3, 'the filter is selective');
  assert.deepEqual(await allSerials(page), expected());
  assert.equal(await page.isVisible('#filtered-badge'), true);
  assert.match(decodeURIComponent(await page.evaluate(() => location.hash)), /q=filter:battery:>:50/, 'query kept in the URL');

  const outside = expected().length ? range(n).map(serialOf).find((s) => battery.get(s) <= 50) : null;
  const inside = expected()[0];
  const stillOutside = range(n).map(serialOf).filter((s) => battery.get(s) <= 40 && s !== outside)[0];

  // Enters the view.
  await link.update(outside, { battery: 90 });
  battery.set(outside, 90);
  await waitForCell(page, outside, 'battery', '90', 1500);
  // Leaves the view.
  await link.update(inside, { battery: 10 });
  battery.set(inside, 10);
  await page.waitForSelector(rowSelector(inside), { state: 'detached', timeout: 1500 });
  // Changes but stays outside: never shown.
  await link.update(stillOutside, { battery: 45, power_income: 999 });
  battery.set(stillOutside, 45);
  // A matching device's change still arrives (and proves the one above had time to land).
  const kept = expected().find((s) => s !== outside);
  await link.update(kept, { power_income: 4321 });
  await waitForCell(page, kept, 'power_income', '4.32 kW', 1500);
  await waitForCount(page, expected().length, 1500);
  assert.deepEqual(await allSerials(page), expected());
  assert.equal(await page.$(rowSelector(stillOutside)), null);

  // The server agrees with what the page shows.
  const api = await server.getJson('/api/devices?q=filter:battery:>:50');
  assert.deepEqual(api.map((r) => r.serial_number), expected());

  // The query lives in the URL: a reload shows the same view and the same builder rows.
  await page.reload();
  await waitLive(page);
  await waitForCount(page, expected().length);
  assert.equal(await page.locator('#filter-rows .filter-row select.field').inputValue(), 'battery');
  assert.equal(await page.locator('#filter-rows .filter-row input.value').inputValue(), '50');

  // Remove the filter: everything is back.
  await page.click('#filter-rows .filter-row .remove');
  await page.click('#apply');
  await waitForCount(page, n);
  assert.equal(await page.isVisible('#filtered-badge'), false);
  assertNoPageErrors(problems);
});

test('clicking a column header sorts the rows; the sort builder takes several keys', async (t) => {
  const n = 30;
  const { page, problems } = await setup(t, n);
  const records = range(n).map((i) => ({ serial: serialOf(i), battery: batteryOf(i), country: deviceInit(i)._country }));
  const bySerial = (a, b) => (a.serial < b.serial ? -1 : 1);
  const ascBattery = [...records].sort((a, b) => a.battery - b.battery || bySerial(a, b)).map((r) => r.serial);
  const descBattery = [...records].sort((a, b) => b.battery - a.battery || bySerial(a, b)).map((r) => r.serial);

  await page.click('th[data-field="battery"] button');
  await page.waitForSelector('th[data-field="battery"][aria-sort="ascending"]', { timeout: 2000 });
  await waitUntil(async () => (await renderedSerials(page))[0] === ascBattery[0], { timeout: 3000, what: 'ascending order' });
  assert.deepEqual(await allSerials(page), ascBattery);

  await page.click('th[data-field="battery"] button');
  await page.waitForSelector('th[data-field="battery"][aria-sort="descending"]', { timeout: 2000 });
  await waitUntil(async () => (await renderedSerials(page))[0] === descBattery[0], { timeout: 3000, what: 'descending order' });
  assert.deepEqual(await allSerials(page), descBattery);
  // The builder shows what the click did.
  assert.equal(await page.locator('#sort-rows .sort-row select.field').inputValue(), 'battery');
  assert.equal(await page.locator('#sort-rows .sort-row select.dir').inputValue(), '>');

  // Two keys: country ascending, then battery descending.
  await page.click('#sort-rows .sort-row .remove');
  await addSort(page, 'country', '<');
  await addSort(page, 'battery', '>');
  await page.click('#apply');
  const twoKeys = [...records]
    .sort((a, b) => (a.country < b.country ? -1 : a.country > b.country ? 1 : 0) || b.battery - a.battery || bySerial(a, b))
    .map((r) => r.serial);
  await page.waitForSelector('th[data-field="country"][aria-sort="ascending"]', { timeout: 2000 });
  await waitUntil(async () => (await renderedSerials(page))[0] === twoKeys[0], { timeout: 3000, what: 'two-key order' });
  assert.deepEqual(await allSerials(page), twoKeys);
  assertNoPageErrors(problems);
});

test('filters are typed and checked before sending; a refused clause is explained next to it', async (t) => {
  const { server, page, problems } = await setup(t, 8);
  const frames = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))));
  await page.click('#add-filter');
  const row = page.locator('#filter-rows .filter-row').last();
  await row.locator('select.field').selectOption('battery');
  await row.locator('select.op').selectOption('>');
  // A comparison takes a number input: text cannot even be typed into it.
  assert.equal(await row.locator('input.value').getAttribute('type'), 'number');
  await assert.rejects(row.locator('input.value').fill('abc'), /Cannot type text into input\[type=number\]/);
  // Checked before sending: an empty value is explained next to its clause and nothing is sent.
  await page.click('#apply');
  await row.locator('.clause-error').waitFor();
  assert.equal(await row.locator('.clause-error').textContent(), 'Enter a value.');
  assert.equal(await row.locator('input.value').getAttribute('aria-invalid'), 'true');
  await sleep(300);
  assert.deepEqual(frames.filter((f) => f.includes('FILT')), [], 'no FILT sent');
  assert.equal(await resultCount(page), 8);

  // Contains / starts with take text, and the listed fields offer the fleet's values.
  await row.locator('select.field').selectOption('country');
  await row.locator('select.op').selectOption('=');
  assert.equal(await row.locator('input.value').getAttribute('type'), 'text');
  assert.equal(await row.locator('.clause-error').isHidden(), true, 'changing the clause clears its message');
  const listed = await page.$eval(`#${await row.locator('input.value').getAttribute('list')}`, (l) => [...l.options].map((o) => o.value));
  assert.deepEqual(listed, [...new Set(range(8).map((i) => deviceInit(i)._country))].sort());

  // A refused clause (here from the URL, which skips the form's checks): the server's reason in plain
  // words next to the clause, a note above, and the page falls back to all devices.
  await page.goto('about:blank');
  await page.goto(`${server.origin}/index.html#q=${encodeURIComponent('filter:battery:>=:lots')}`);
  const clauseError = page.locator('#filter-rows .filter-row .clause-error');
  await clauseError.waitFor({ timeout: 3000 });
  assert.equal(await clauseError.textContent(), '“lots” is not a number, and “>=” compares numbers.');
  assert.equal(await page.textContent('#query-error'), 'Query rejected: see the filter marked below.');
  assert.equal(await page.$eval('#query-error', (el) => el.closest('form')?.id), 'query');
  await waitLive(page);
  await waitForCount(page, 8);
  assert.equal(await page.isVisible('#filtered-badge'), false);

  // Fixing the value clears the errors.
  await page.locator('#filter-rows .filter-row input.value').fill('1000');
  await page.click('#apply');
  await page.waitForSelector('#query-error', { state: 'hidden', timeout: 3000 });
  assert.equal(await clauseError.isHidden(), true);
  await waitForCount(page, 0);
  assert.equal(await page.textContent('#empty-title'), 'No device matches this filter');
  assertNoPageErrors(problems);
});

test('after the server restarts, the page reconnects by itself, re-sends its query and shows fresh data', async (t) => {
  const n = 12;
  const { server, link, page, problems } = await setup(t, n);
  await addFilter(page, 'battery', '>=', '30');
  await addSort(page, 'battery', '>');
  await page.click('#apply');
  const expected = range(n)
    .filter((i) => batteryOf(i) >= 30)
    .sort((a, b) => batteryOf(b) - batteryOf(a) || a - b)
    .map(serialOf);
  await waitForCount(page, expected.length);
  assert.deepEqual(await allSerials(page), expected);

  await link.close();
  await server.kill();
  await page.waitForSelector('#conn[data-state="offline"]', { timeout: 5000 });
  assert.match(await page.textContent('#conn-text'), /Disconnected/);
  assert.equal(await page.isVisible('#stale-badge'), true, 'old values are marked as such');

  await server.restart();
  const device = await DeviceLink.connect(server);
  t.after(() => device.close());
  // Fresh data after the restart: a value that did not exist before, which also moves the row to the top.
  const target = expected[expected.length - 1];
  await device.update(target, { battery: 100, power_income: 777 });
  await waitLive(page, 15000);
  await waitForCell(page, target, 'power_income', '777 W', 10000);
  await waitUntil(async () => (await renderedSerials(page))[0] === target, { timeout: 3000, what: 'updated device first' });
  // The filter and sort came back with the reconnect: still only matching rows, in battery order.
  await waitForCount(page, expected.length);
  assert.equal(await page.isVisible('#stale-badge'), false);
  assert.deepEqual(await allSerials(page), [target, ...expected.filter((s) => s !== target)]);
  assert.equal(await page.locator('#filter-rows .filter-row').count(), 1);
  assert.equal(await page.textContent(cellSelector(target, 'online')), 'Online');
  // The other devices have no connection after the restart.
  assert.equal(await page.textContent(cellSelector(expected[0], 'online')), 'Offline');
  assertNoPageErrors(problems);
});

test('export downloads the current view as CSV', async (t) => {
  const n = 15;
  const { page, problems } = await setup(t, n);
  await addFilter(page, 'country', '=', 'at');
  await page.click('#apply');
  const want = range(n).filter((i) => deviceInit(i)._country === 'AT').map(serialOf);
  await waitForCount(page, want.length);

  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 5000 }), page.click('#export-csv')]);
  assert.match(download.suggestedFilename(), /^smart-os-devices-\d{8}-\d{6}\.csv$/);
  const file = await download.path();
  const lines = fs.readFileSync(file, 'utf8').trimEnd().split('\r\n');
  const head = lines[0].split(',');
  assert.equal(head[0], 'serial_number');
  for (const col of ['battery', 'power_income', 'last_status_update', 'online', 'charging']) assert.ok(head.includes(col), `CSV has ${col}`);
  const rows = lines.slice(1).map((l) => l.split(','));
  assert.deepEqual(
    rows.map((r) => r[0]),
    want,
  );
  const bat = head.indexOf('battery');
  assert.deepEqual(
    rows.map((r) => Number(r[bat])),
    want.map((s) => batteryOf(Number(s))),
  );
  assert.match(rows[0][head.indexOf('last_status_update')], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  assertNoPageErrors(problems);
});

test('on a phone each device is a card, the filters sit behind "Filters (n)", a card opens its page', async (t) => {
  const { page, problems } = await setup(t, 50, {
    browser: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
  });
  const widths = await page.evaluate(() => ({ page: document.documentElement.scrollWidth, viewport: window.innerWidth }));
  assert.ok(widths.page <= widths.viewport, `page does not scroll sideways: ${JSON.stringify(widths)}`);
  // A card: serial, status, battery, income / inject / consumption, with labels; nothing else.
  const card = await page.$eval(rowSelector('0002'), (tr) => ({
    width: tr.getBoundingClientRect().width,
    shown: [...tr.cells].filter((td) => getComputedStyle(td).display !== 'none').map((td) => td.dataset.field),
    income: tr.querySelector('td[data-field="power_income"]').textContent,
    label: getComputedStyle(tr.querySelector('td[data-field="power_income"]'), '::before').content,
  }));
  assert.deepEqual(card.shown, ['serial_number', 'online', 'battery', 'power_income', 'power_inject', 'power_consumption']);
  assert.ok(card.width <= 390, `card fits the screen (${card.width} px)`);
  assert.equal(card.income, `${deviceInit(2)._power_income} W`);
  assert.equal(card.label, '"Income"');
  assert.equal(await page.isVisible('th[data-field="battery"]'), false, 'no table header on a phone');
  // Cards are windowed like rows: every serial is reachable by scrolling.
  assert.deepEqual(await allSerials(page), range(50).map(serialOf));

  // The query form is behind the "Filters (n)" button.
  assert.equal(await page.isVisible('#query'), false);
  assert.equal((await page.textContent('#filters-toggle')).replace(/\s+/g, ''), 'Filters(0)');
  await page.click('#filters-toggle');
  assert.equal(await page.isVisible('#query'), true);
  await addFilter(page, 'power_consumption', '>=', '100');
  const boxes = await page.$$eval('#filter-rows .filter-row > *', (els) => els.map((e) => e.getBoundingClientRect().right));
  assert.ok(Math.max(...boxes) <= 390, 'filter row fits the screen');
  await page.click('#apply');
  await page.waitForFunction(() => document.getElementById('filters-count').textContent === '1', null, { timeout: 3000 });
  await page.click('#filters-toggle');
  assert.equal(await page.isVisible('#query'), false);
  await page.screenshot({ path: path.join(TARGET_DIR, 'dashboard-phone.png') });

  // A tap on a card opens the device's page; its range buttons sit at the bottom, in thumb reach.
  await page.tap(`${rowSelector('0002')} td[data-field="battery"]`);
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  const ranges = await page.$$eval('#device-page [data-range]', (els) => els.map((e) => e.getBoundingClientRect()).map((r) => ({ bottom: r.bottom, height: r.height })));
  for (const r of ranges) {
    assert.ok(r.bottom <= 844 && r.bottom >= 844 - 80, `range button at the bottom of the screen: ${JSON.stringify(r)}`);
    assert.ok(r.height >= 44, `range button big enough to tap: ${r.height} px`);
  }
  const pageWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(pageWidth <= 390, `device page does not scroll sideways (${pageWidth} px)`);
  await page.screenshot({ path: path.join(TARGET_DIR, 'device-phone.png') });
  assertNoPageErrors(problems);
});
