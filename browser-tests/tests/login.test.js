// With `--auth required` the page shows its login form (no browser prompt), shows who is logged in after
// the login, streams the fleet over the cookie session, and logs out back to the form.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DeviceLink, Server, deviceInit, openBrowser, rowSelector, serialOf, waitLive } from '../lib/harness.js';

test('the page logs in with its form, shows the user, streams the fleet, and logs out', async (t) => {
  let token = '';
  const server = await Server.start(undefined, {
    env: { SMART_AUTH: 'required' },
    before: (dir) => {
      Server.cli(dir, ['user', 'add', 'ops', '--role', 'viewer'], 'pass word\n');
      token = Server.cli(dir, ['token', 'issue', serialOf(1)]).trim().split('\n').pop();
    },
  });
  t.after(() => server.stop());
  const link = await DeviceLink.connect(server, { token });
  t.after(() => link.close());
  await link.send('INIT', serialOf(1), deviceInit(1));

  const b = await openBrowser();
  t.after(() => b.close());
  const { page } = b;
  // A Basic prompt would show up as a dialog (or a failed navigation); the page must show its own form.
  page.on('dialog', (d) => {
    throw new Error(`unexpected browser dialog: ${d.message()}`);
  });
  await page.goto(`${server.origin}/`);
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.isHidden('#layout'), true, 'the fleet stays hidden before the login');

  await page.fill('#login-user', 'ops');
  await page.fill('#login-password', 'wrong');
  await page.click('#login-submit');
  await page.waitForSelector('#login-error:not([hidden])');
  assert.match(await page.textContent('#login-error'), /wrong password/);

  await page.fill('#login-password', 'pass word');
  await page.click('#login-submit');
  await waitLive(page);
  await page.waitForSelector(rowSelector('0001'));
  assert.equal(await page.textContent('#account-name'), 'ops');
  assert.equal(await page.textContent('#account-role'), 'viewer');

  // Live updates arrive over the cookie session.
  await link.update(serialOf(1), { battery: 0.42 });
  await page.waitForFunction(() => document.querySelector('#body tr[data-serial="0001"] td[data-field="battery"]')?.textContent.includes('42'));

  // The device page works over the same session (the history API and its own live socket); the
  // account stays shown there.
  await page.click(`${rowSelector('0001')} td[data-field="serial_number"]`);
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  assert.equal(await page.isVisible('#account'), true);
  await link.update(serialOf(1), { battery: 0.5 });
  await page.waitForFunction(() => document.querySelector('#device-fields .field[data-field="battery"] dd')?.textContent.includes('0.5'));
  assert.deepEqual(b.problems.filter((p) => !/status of 401/.test(p)), [], 'no console errors but the 401s of the login itself');

  // Logging out from the device page shows the login form only.
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.isHidden('#device-page'), true, 'the device page closes with the session');
  // Logging in again at the device's address opens its page again.
  await page.fill('#login-user', 'ops');
  await page.fill('#login-password', 'pass word');
  await page.click('#login-submit');
  await page.waitForSelector('#device-page[data-state="ready"]', { timeout: 10000 });
  await page.click('#device-back');
  await page.waitForSelector('#layout:not([hidden])');
  await page.waitForSelector(rowSelector('0001'));

  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.isHidden('#account'), true);
  // The session is gone on the server too.
  const status = await page.evaluate(async () => (await fetch('/api/devices', { headers: { 'X-Requested-With': 'smartos-page' } })).status);
  assert.equal(status, 401);
});
