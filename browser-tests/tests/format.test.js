// The page's value formatting (smart-server/assets/format.js, a module without DOM access), in node:
// unit boundaries and the plausible ranges. Numbers are formatted for the locale; node's default is en-US.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatCell, formatPower, formatValue, formatWattSeconds, implausible } from '../../smart-server/assets/format.js';

test('power in W below 1,000 and in kW from there; watt-seconds in kWh', () => {
  assert.equal(formatPower(0), '0 W');
  assert.equal(formatPower(999.4), '999.4 W');
  assert.equal(formatPower(1000), '1 kW');
  assert.equal(formatPower(1234), '1.23 kW');
  assert.equal(formatPower(-1500), '-1.5 kW');
  assert.equal(formatPower(25000), '25 kW');
  assert.equal(formatWattSeconds(5184000), '1.44 kWh');
  assert.equal(formatWattSeconds(0), '0 kWh');
  assert.equal(formatValue('capacity', 3600000), '1 kWh');
  assert.equal(formatValue('battery', 42.5), '42.5 %');
  assert.equal(formatValue('power_inject', 350), '350 W');
  assert.equal(formatValue('pv_connectors', 2), '2');
  assert.equal(formatValue('country', 'AT'), 'AT');
  assert.equal(formatValue('power_income', null), '—');
});

test('values outside a plausible range are marked with the range, never hidden', () => {
  assert.equal(implausible('battery', 100), '');
  assert.equal(implausible('battery', 0), '');
  assert.equal(implausible('battery', 100.5), 'outside the plausible range 0 % – 100 %');
  assert.equal(implausible('power_income', -1), 'outside the plausible range 0 W – 3 kW');
  assert.equal(implausible('capacity', 400000000), 'outside the plausible range 0 kWh – 100 kWh');
  assert.equal(implausible('battery', '140'), '', 'only numbers are judged');
  assert.equal(implausible('inverter_temp', 1e9), '', 'no range for fields without one');

  const [text, cls, title, bar] = formatCell({ key: 'battery', kind: 'battery' }, 140, Date.now());
  assert.deepEqual([text, cls, title, bar], ['140', 'num bat implausible', 'outside the plausible range 0 % – 100 %', 100]);
  assert.deepEqual(formatCell({ key: 'battery', kind: 'battery' }, 37, Date.now()), ['37', 'num bat', '', 37]);
  assert.deepEqual(formatCell({ key: 'power_consumption', kind: 'power' }, 1234, Date.now()), ['1.23 kW', 'num', '']);
  assert.deepEqual(formatCell({ key: 'power_consumption', kind: 'power' }, null, Date.now()), ['—', 'num', '']);
});
