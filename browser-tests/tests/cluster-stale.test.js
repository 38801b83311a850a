// Two instances sharing one fleet through a Redis of the test's own: while instance B cannot read the
// cluster's change stream (Redis killed), B's page says so at the top and marks every device not connected
// to B "stale" (rows, phone cards, the device page); a device that writes to B meanwhile is current again;
// once Redis is back, banner and badges go. PROTOCOL.md §7 (`/client/?stale=1`), docs/cluster.md.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';

import { DeviceLink, RedisServer, Server, TARGET_DIR, deviceInit, openBrowser, rowSelector, serialOf, sleep, waitLive, waitUntil } from '../lib/harness.js';

// How long B may take to notice that Redis is gone (its follower's read fails at once, but the machine is
// shared), and to be live again once Redis is back (the follower retries with a backoff of at most 2 s).
const NOTICE_MS = 20000;
const BACK_MS = 10000;

const ON_A = serialOf(1);
const ON_B = serialOf(2);
const BANNER = /^Redis unreachable since \d\d:\d\d:\d\d — devices on other instances may be out of date$/;

const badgeShown = (page, serial) => page.isVisible(`${rowSelector(serial)} .row-stale`);

test('while Redis is down, the page marks the devices on other instances stale, and unmarks them when it is back', async (t) => {
  if (!RedisServer.available()) {
    assert.ok(!process.env.CI || process.env.CI === 'false', 'redis-server is not installed: CI must install it (scripts/test.sh)');
    t.skip('redis-server is not installed (apt-get install redis-server)');
    return;
  }
  // Stopped in reverse order, each whatever became of the others: the devices and the page first, Redis
  // last (an instance stopping with Redis gone would wait for it to ship its backlog).
  const undo = [];
  t.after(async () => {
    for (const step of undo.reverse()) await Promise.resolve().then(step).catch((err) => console.error(`cleanup: ${err.message}`));
  });
  const redis = await RedisServer.start();
  undo.push(() => redis.stop());
  const env = { SMART_REDIS: redis.url };
  const a = await Server.start(undefined, { env });
  undo.push(() => a.stop());
  const b = await Server.start(undefined, { env });
  undo.push(() => b.stop());

  const onA = await DeviceLink.connect(a);
  undo.push(() => onA.close());
  const onB = await DeviceLink.connect(b);
  undo.push(() => onB.close());
  await onA.send('INIT', ON_A, deviceInit(1));
  await onB.send('INIT', ON_B, deviceInit(2));
  // Both devices keep sending, as devices do (each to its own instance).
  let sending = true;
  const keepSending = async (link, serial) => {
    for (let n = 0; sending; n += 1) {
      await link.update(serial, { battery: n % 100 }).catch(() => {});
      await sleep(250);
    }
  };
  const senders = [keepSending(onA, ON_A), keepSending(onB, ON_B)];
  undo.push(async () => {
    sending = false;
    await Promise.all(senders);
  });
  await waitUntil(() => b.getJson(`/api/devices/${ON_A}`).then(() => true, () => false), { timeout: NOTICE_MS, what: `B to know ${ON_A} (on A)` });

  const browser = await openBrowser();
  undo.push(() => browser.close());
  const { page } = browser;
  await page.goto(`${b.origin}/`);
  await waitLive(page);
  await page.waitForSelector(rowSelector(ON_A));
  await page.waitForSelector(rowSelector(ON_B));
  assert.equal(await page.isVisible('#cluster-banner'), false, 'no banner while Redis is up');
  assert.equal(await badgeShown(page, ON_A), false);

  // Redis goes away: B's page says since when, and marks A's device only.
  await redis.kill();
  const down = Date.now();
  await page.waitForSelector('#cluster-banner', { state: 'visible', timeout: NOTICE_MS });
  console.log(`banner shown ${Date.now() - down} ms after Redis was killed`);
  assert.match(await page.textContent('#cluster-banner'), BANNER);
  await page.waitForSelector(`${rowSelector(ON_A)} .row-stale`, { state: 'visible', timeout: 5000 });
  assert.equal(await page.$eval(`${rowSelector(ON_A)} .row-stale`, (el) => getComputedStyle(el, '::after').content), '"stale"');
  assert.equal(await badgeShown(page, ON_B), false, `${ON_B} is connected to B: current`);
  // B's device stays live meanwhile.
  const batteryOfB = `${rowSelector(ON_B)} td[data-field="battery"]`;
  const shown = await page.textContent(batteryOfB);
  await page.waitForFunction(([sel, old]) => document.querySelector(sel)?.textContent !== old, [batteryOfB, shown], { timeout: 5000 });
  assert.equal(await page.isVisible('#conn[data-state="live"]'), true, 'the page itself stays connected');
  await page.screenshot({ path: path.join(TARGET_DIR, 'dashboard-stale.png') });

  // On a phone, the cards carry the badge too.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.getBoundingClientRect().width > 0, `${rowSelector(ON_A)} .row-stale`);
  assert.equal(await badgeShown(page, ON_A), true, 'the card of the device on A');
  assert.equal(await badgeShown(page, ON_B), false, 'the card of the device on B');
  await page.screenshot({ path: path.join(TARGET_DIR, 'dashboard-stale-phone.png') });
  await page.setViewportSize({ width: 1440, height: 900 });

  // The device pages: A's device is stale, B's is not.
  await page.click(`${rowSelector(ON_A)} .row-link`);
  await page.waitForSelector('#device-page:not([hidden])');
  await page.waitForSelector('#device-stale', { state: 'visible', timeout: 5000 });
  assert.equal(await page.isVisible('#cluster-banner'), true, 'the banner stays on the device page');
  await page.screenshot({ path: path.join(TARGET_DIR, 'device-stale.png') });
  await page.click('#device-back');
  await page.click(`${rowSelector(ON_B)} .row-link`);
  await page.waitForSelector('#device-page:not([hidden])');
  await page.waitForFunction((serial) => document.getElementById('device-serial').textContent === serial, ON_B);
  assert.equal(await page.isVisible('#device-stale'), false);
  await page.click('#device-back');
  await page.waitForSelector(rowSelector(ON_A));

  // A device registered on A meanwhile: B does not know it until Redis is back.
  const third = serialOf(3);
  await onA.send('INIT', third, deviceInit(3));
  // A device that writes to B now (it moved, say) is current: its message carries its own id.
  const moved = await DeviceLink.connect(b);
  undo.push(() => moved.close());
  await moved.update(ON_A, { battery: 77 });
  await page.waitForSelector(`${rowSelector(ON_A)} .row-stale`, { state: 'hidden', timeout: 5000 });
  await moved.close();

  // Redis is back (same port, same directory): banner and badges go.
  await redis.restart();
  const up = Date.now();
  await page.waitForSelector('#cluster-banner', { state: 'hidden', timeout: BACK_MS });
  console.log(`banner gone ${Date.now() - up} ms after Redis answered again`);
  await page.waitForSelector(rowSelector(third), { timeout: BACK_MS });
  const badges = await page.$$eval('#body tr .row-stale', (tags) => tags.filter((el) => el.getBoundingClientRect().width > 0).length);
  assert.equal(badges, 0, 'no badge once the other instances are current');
  assert.deepEqual(browser.problems, [], 'no console errors');
});
