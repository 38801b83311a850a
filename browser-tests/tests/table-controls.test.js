// The table's units and meaning (W/kW, kWh, the battery bar, implausible values marked), the column
// picker and its persistence, and the calm live updates: Pause live, no re-sort under the mouse, the
// re-sort cue.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DeviceLink, Server, cellSelector, deviceInit, openBrowser, registerFleet, renderedSerials, rowSelector, sleep, waitLive, waitUntil } from '../lib/harness.js';

async function setup(t, n, overrides, hash = '', browser = {}) {
  const server = await Server.start();
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server);
  t.after(() => link.close());
  await registerFleet(link, n, overrides);
  const b = await openBrowser(browser);
  t.after(() => b.close());
  await b.page.goto(`${server.origin}/${hash}`);
  await waitLive(b.page);
  await b.page.waitForFunction((want) => document.getElementById('result-count').textContent === String(want), n);
  return { server, link, page: b.page, problems: b.problems };
}

const cell = (page, serial, field) =>
  page.$eval(cellSelector(serial, field), (td) => ({
    text: td.textContent,
    cls: td.className,
    title: td.title,
    bar: td.style.getPropertyValue('--bar'),
    image: getComputedStyle(td).backgroundImage,
  }));

const headers = (page) => page.$$eval('#head-row th', (ths) => ths.map((th) => th.dataset.field));
// A column choice is drawn on the next animation frame (a loaded CI machine may delay it): wait for the
// header to show (or not show) each field, failing after the timeout.
const headerHas = (page, want) =>
  page.waitForFunction(
    (want) => {
      const shown = new Set([...document.querySelectorAll('#head-row th')].map((th) => th.dataset.field));
      return Object.entries(want).every(([f, on]) => shown.has(f) === on);
    },
    want,
    { timeout: 5000 },
  );

test('units and meaning in cells; the column picker hides extras by default and keeps the choice', async (t) => {
  const { page, problems } = await setup(t, 6, (i) =>
    ({
      2: { _power_consumption: 1234 },
      3: { _battery: 140, _power_income: -5 },
      4: { _capacity: 3600000 },
    })[i] ?? {},
  );

  // W below 1,000, kW from there; capacity (watt-seconds) in kWh.
  assert.equal((await cell(page, '0001', 'power_income')).text, `${deviceInit(1)._power_income} W`);
  assert.equal((await cell(page, '0002', 'power_consumption')).text, '1.23 kW');
  assert.equal((await cell(page, '0001', 'capacity')).text, '1.44 kWh');
  assert.equal((await cell(page, '0004', 'capacity')).text, '1 kWh');
  // The battery: its number, and a bar as wide as the charge.
  const battery = await cell(page, '0001', 'battery');
  assert.equal(battery.text, String(deviceInit(1)._battery));
  assert.equal(battery.bar, `${deviceInit(1)._battery}%`);
  assert.match(battery.image, /linear-gradient/);
  // Values outside a plausible range are shown, and marked with the range.
  const full = await cell(page, '0003', 'battery');
  assert.equal(full.text, '140');
  assert.match(full.cls, /\bimplausible\b/);
  assert.equal(full.title, 'outside the plausible range 0 % – 100 %');
  assert.equal(full.bar, '100%');
  const negative = await cell(page, '0003', 'power_income');
  assert.equal(negative.text, '-5 W');
  assert.match(negative.cls, /\bimplausible\b/);
  assert.doesNotMatch((await cell(page, '0002', 'battery')).cls, /implausible/);

  // Extra fields (the device's runtime flags) are hidden until picked.
  assert.equal((await headers(page)).includes('charging'), false);
  assert.equal(await page.textContent('#columns-button'), 'Columns (3 hidden)');
  await page.click('#columns-button');
  const offered = await page.$$eval('#column-list input', (els) => els.map((e) => [e.dataset.field, e.checked]));
  assert.deepEqual(
    offered.filter(([, on]) => !on).map(([f]) => f),
    ['charging', 'injecting', 'meassuring'],
  );
  await page.check('#column-list input[data-field="charging"]');
  await page.uncheck('#column-list input[data-field="postcode"]');
  await page.keyboard.press('Escape');
  assert.equal(await page.isHidden('#columns-panel'), true);
  await headerHas(page, { charging: true, postcode: false });
  assert.equal((await cell(page, '0001', 'charging')).text, String(deviceInit(1).charging));
  assert.deepEqual(JSON.parse(await page.evaluate(() => localStorage.getItem('smart-os.columns'))), { charging: true, postcode: false });

  // Kept across a reload.
  await page.reload();
  await waitLive(page);
  await page.waitForSelector(rowSelector('0001'));
  await headerHas(page, { charging: true, postcode: false });
  assert.equal(await page.textContent('#columns-button'), 'Columns (3 hidden)');
  // The filter builder still offers every field.
  await page.click('#add-filter');
  const choices = await page.$$eval('#filter-rows select.field option', (os) => os.map((o) => o.value));
  assert.ok(choices.includes('postcode') && choices.includes('meassuring'));

  // Defaults: known fields shown, extras hidden.
  await page.click('#columns-button');
  await page.click('#columns-default');
  await headerHas(page, { charging: false, postcode: true });
  assert.equal(await page.evaluate(() => localStorage.getItem('smart-os.columns')), '{}');
  assert.deepEqual(problems, [], 'the page logged errors');
});

test('Pause live holds changes until resumed; rows do not re-sort under the mouse; a cue after a re-sort', async (t) => {
  const n = 10;
  const { link, page, problems } = await setup(t, n, undefined, `#q=${encodeURIComponent('sort:battery:>:123')}`);
  const order = () => renderedSerials(page);
  const byBattery = Array.from({ length: n }, (_, k) => k + 1)
    .sort((a, b) => deviceInit(b)._battery - deviceInit(a)._battery || a - b)
    .map((i) => String(i).padStart(4, '0'));
  assert.deepEqual(await order(), byBattery);

  // Paused: the table stays as it is, and says how much is waiting.
  await page.click('label:has(#pause-toggle)');
  await link.update('0001', { power_income: 999 });
  await link.update('0002', { power_income: 998 });
  await page.waitForFunction(() => document.getElementById('paused-badge').textContent === 'paused · 2 waiting', null, { timeout: 2000 });
  await sleep(300);
  assert.equal(await page.textContent(cellSelector('0001', 'power_income')), `${deviceInit(1)._power_income} W`);
  // Resumed: everything that waited is applied, in order.
  await page.click('label:has(#pause-toggle)');
  await page.waitForFunction(() => document.querySelector('#body tr[data-serial="0001"] td[data-field="power_income"]').textContent === '999 W', null, { timeout: 1000 });
  assert.equal(await page.textContent(cellSelector('0002', 'power_income')), '998 W');
  assert.equal(await page.isHidden('#paused-badge'), true);

  // The mouse rests on a row: a change that moves the last row to the top shows in place, but the
  // rows keep their places until the mouse leaves them.
  const last = byBattery[n - 1];
  await page.hover(`${rowSelector(byBattery[2])} td[data-field="country"]`);
  await link.update(last, { battery: 100 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '100', cellSelector(last, 'battery'), { timeout: 1000 });
  await sleep(1200);
  assert.deepEqual(await order(), byBattery, 'no re-sort under the mouse');
  await page.mouse.move(5, 5);
  await waitUntil(async () => (await order())[0] === last, { timeout: 2000, what: 're-sort after the mouse left' });
  assert.equal(await page.isVisible('#resort-cue'), true, 'a short cue after the re-sort');
  await page.waitForSelector('#resort-cue', { state: 'hidden', timeout: 3000 });
  assert.deepEqual(problems, [], 'the page logged errors');
});

test('on a touch screen rows do not re-sort under a finger, nor just after it lifts', async (t) => {
  const n = 10;
  const phone = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };
  const { link, page, problems } = await setup(t, n, undefined, `#q=${encodeURIComponent('sort:battery:>:123')}`, phone);
  const order = () => renderedSerials(page);
  const byBattery = Array.from({ length: n }, (_, k) => k + 1)
    .sort((a, b) => deviceInit(b)._battery - deviceInit(a)._battery || a - b)
    .map((i) => String(i).padStart(4, '0'));
  assert.deepEqual(await order(), byBattery);

  // A finger lands on the third card and swipes a little (a real touch, through the browser's input
  // pipeline: the browser takes it over for scrolling), then rests there.
  const box = await page.locator(`${rowSelector(byBattery[2])} td[data-field="battery"]`).boundingBox();
  const point = { x: Math.round(box.x + box.width / 2), y: Math.round(box.y + box.height / 2) };
  const cdp = await page.context().newCDPSession(page);
  t.after(() => cdp.detach().catch(() => {}));
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [point] });
  for (let k = 1; k <= 5; k += 1) {
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: [{ x: point.x, y: point.y - 6 * k }] });
    await sleep(30);
  }
  const last = byBattery[n - 1];
  await link.update(last, { battery: 100 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === '100', cellSelector(last, 'battery'), { timeout: 1000 });
  await sleep(1200);
  assert.deepEqual(await order(), byBattery, 'no re-sort under a finger');

  // Lifted: the order holds a moment longer (1.5 s), then the re-sort comes, with its cue.
  const lifted = Date.now();
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  await sleep(500);
  assert.deepEqual(await order(), byBattery, 'no re-sort the moment the finger lifts');
  await waitUntil(async () => (await order())[0] === last, { timeout: 4000, what: 're-sort after the finger lifted' });
  assert.ok(Date.now() - lifted >= 1400, `the re-sort waited for the hold after the touch (${Date.now() - lifted} ms)`);
  assert.equal(await page.evaluate(() => location.hash.startsWith('#/device/')), false, 'a swipe opens no device page');

  // A finger lands and the page never hears it lift (its row may have left the windowed table): the
  // order holds 10 s at most.
  const resorted = await order();
  const top = resorted[n - 1];
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [point] });
  const touched = Date.now();
  await link.update(top, { battery: 101 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.startsWith('101'), cellSelector(top, 'battery'), { timeout: 1000 });
  await sleep(1200);
  assert.deepEqual(await order(), resorted, 'no re-sort under a finger that rests');
  await waitUntil(async () => (await order())[0] === top, { timeout: 13000, what: 're-sort after the longest hold' });
  assert.ok(Date.now() - touched >= 9500, `the hold lasted until its cap (${Date.now() - touched} ms)`);
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  assert.deepEqual(problems, [], 'the page logged errors');
});
