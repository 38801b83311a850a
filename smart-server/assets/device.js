// The device page (`#/device/SERIAL`): every field with its unit, status and last seen; a chart per
// numeric field over 1 h / 24 h / 7 d / 30 d from the history API, appended live; daily kWh bars from
// the energy API; the CSV of the range shown. Charts are uPlot (vendored, loaded as the global `uPlot`
// by index.html).
//
// Live values come from the table's own websocket while the device is in the table's view (app.js
// passes them on: `deviceUpdate`); when it is not, or leaves it, the page opens a `/client/` view of
// its own for this serial (`deviceLeftView`), asked to start empty (`empty=1`: no greeting INIT of the
// whole fleet, only its FILT's answer).

import { KNOWN_COLUMNS, NUMERIC_FIELDS, humanize } from './fields.js';
import { PAGE_HEADERS } from './auth.js';
import { formatAgo, formatCell, formatLocal, formatPower, formatValue, implausible, numberFormat, parseTimestamp } from './format.js';
import { clientUrl, readUpdt, updtMessages } from './wire.js';

const HOUR = 3600000;
const DAY = 24 * HOUR;
// Each range reads the tier that answers it cheaply: raw samples for the last hour, 5-minute buckets
// for a day, hourly ones beyond (168 and 720 points).
const RANGES = {
  '1h': { ms: HOUR, agg: 'raw', step: null, note: 'every change', energyDays: 7 },
  '24h': { ms: DAY, agg: 'avg', step: '5m', note: '5-minute averages', energyDays: 7 },
  '7d': { ms: 7 * DAY, agg: 'avg', step: '1h', note: 'hourly averages', energyDays: 7 },
  '30d': { ms: 30 * DAY, agg: 'avg', step: '1h', note: 'hourly averages', energyDays: 30 },
};
const RANGE_KEY = 'smart-os.device-range';
// Numeric, but an identifier: not charted.
const NOT_CHARTED = new Set(['postcode']);
const MAX_CHARTS = 16; // the history API's limit of fields per request
const MAX_LIVE = 20000;
const RETRY_MS = 2000;
const WS_PER_KWH = 3600000;
const COLORS = ['#2563eb', '#16a34a', '#ea580c', '#9333ea', '#0891b2', '#ca8a04', '#db2777', '#4b5563'];
const FIXED_COLORS = { battery: '#16a34a', power_income: '#f59e0b', power_inject: '#2563eb', power_consumption: '#dc2626' };

const $ = (id) => document.getElementById(id);
const LABELS = new Map(KNOWN_COLUMNS.map((c) => [c.key, c]));
const labelOf = (key) => LABELS.get(key)?.label ?? humanize(key);

const page = {
  serial: null,
  record: null,
  range: localStorage.getItem(RANGE_KEY) in RANGES ? localStorage.getItem(RANGE_KEY) : '24h',
  charts: new Map(), // field -> {u, data, el}
  from: 0,
  gen: 0,
  ws: null,
  retryTimer: 0,
  live: [], // [ms, field, value] received since the page opened (to fill what a slow fetch missed)
  frame: 0,
  ageTimer: 0,
  onBack: () => {},
  onUpdt: () => {}, // app.js: which devices write to this instance (the "stale" badge, stale.js)
};

/** Show the page of `serial` (a no-op if it is already shown); `inView` says whether the table's
 * websocket carries its updates; `onUpdt` gets the message of each UPDT of the page's own websocket. */
export function openDevice(serial, { onBack, inView, onUpdt = () => {} }) {
  page.onBack = onBack;
  page.onUpdt = onUpdt;
  if (page.serial === serial) return;
  closeDevice();
  page.serial = serial;
  page.record = null;
  page.live = [];
  $('device-page').hidden = false;
  $('device-serial').textContent = serial;
  $('device-fields').replaceChildren();
  // The list is rebuilt for the next record (renderFields rebuilds it only when its keys change).
  delete $('device-fields').dataset.keys;
  $('device-charts').replaceChildren();
  $('device-energy').replaceChildren();
  showError('');
  document.title = `${serial} · SMART-OS`;
  window.scrollTo(0, 0);
  if (!inView) connectLive();
  page.ageTimer = setInterval(renderHead, 1000);
  start(serial);
}

/** Whether the shown device's values may be out of date (Redis unreachable and the device not connected
 * to this instance: app.js decides, stale.js). */
export function setDeviceStale(stale) {
  const badge = $('device-stale');
  if (badge.hidden === stale) badge.hidden = !stale;
}

/** Leave the page: its socket closes, its charts go. */
export function closeDevice() {
  if (page.serial === null) return;
  page.serial = null;
  page.gen += 1;
  clearTimeout(page.retryTimer);
  page.retryTimer = 0;
  clearInterval(page.ageTimer);
  const ws = page.ws;
  page.ws = null;
  if (ws) ws.close();
  destroyCharts();
  $('device-page').hidden = true;
  document.title = 'SMART-OS · Fleet dashboard';
}

async function start(serial) {
  try {
    const res = await fetch(`/api/devices/${encodeURIComponent(serial)}`, { headers: PAGE_HEADERS });
    if (page.serial !== serial) return;
    if (res.status === 404) {
      showError(`There is no device ${serial} (or it is not yours to see).`);
      return;
    }
    if (!res.ok) throw new Error(await reason(res));
    const rec = await res.json();
    // The page's own live view may have been quicker: its record is as new or newer, and it loaded.
    if (page.serial !== serial || page.record !== null) return;
    page.record = rec;
    renderHead();
    renderFields();
    load();
  } catch (err) {
    if (page.serial === serial) showError(`Could not load device ${serial}: ${err.message}`);
  }
}

function showError(text) {
  const el = $('device-error');
  el.textContent = text;
  el.hidden = !text;
}

async function reason(res) {
  const body = await res.json().catch(() => null);
  return body?.error ?? `the server answered ${res.status}`;
}

// ---------------------------------------------------------------------------------------------------
// Live: from the table's websocket, or a /client/ view of this serial (FILT `serial_number ^ SERIAL`,
// then exact match here).

/** A change of `serial` that the table's websocket received. */
export function deviceUpdate(serial, body) {
  if (page.serial === serial && page.ws === null) onUpdate(body);
}

/** The table's view no longer holds `serial`: follow it over a websocket of the page's own. */
export function deviceLeftView(serial) {
  if (page.serial === serial && page.ws === null && !page.retryTimer) connectLive();
}

function connectLive() {
  const serial = page.serial;
  // `empty=1`: the greeting INIT is empty, not the whole fleet (this view wants one device).
  const ws = new WebSocket(clientUrl('empty=1'));
  page.ws = ws;
  let greeted = false;
  ws.onopen = () => ws.send(JSON.stringify({ type: 'FILT', message: [`filter:serial_number:^:${serial}`] }));
  ws.onmessage = (ev) => {
    if (page.ws !== ws) return;
    let env;
    try {
      env = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (env?.type === 'INIT') {
      // The first INIT is the server's greeting (empty, as asked); the second answers the FILT.
      if (!greeted) {
        greeted = true;
        return;
      }
      const rec = Array.isArray(env.message) ? env.message.find((r) => r?.serial_number === serial) : null;
      if (rec) {
        const old = page.record;
        page.record = rec;
        renderHead();
        renderFields();
        if (old === null) load();
        else {
          // What changed since the last value seen (e.g. the change that took it out of the table's view).
          const changed = {};
          for (const [key, v] of Object.entries(rec)) if (typeof v === 'number' && v !== old[key]) changed[key] = v;
          if (Object.keys(changed).length > 0) onUpdate(changed);
        }
      }
    } else if (env?.type === 'UPDT') {
      page.onUpdt(env.message);
      // One change, or a batch of them (`?batch=1`), in order; `onUpdate` draws once per frame.
      for (const m of updtMessages(env.message)) {
        const updt = readUpdt(m, serial);
        if (updt !== null) onUpdate(updt.body);
      }
    }
  };
  ws.onclose = () => {
    if (page.ws !== ws) return;
    page.ws = null;
    page.retryTimer = setTimeout(() => {
      page.retryTimer = 0;
      if (page.serial === serial) connectLive();
    }, RETRY_MS);
  };
}

function onUpdate(body) {
  const now = Date.now();
  // Before the record is loaded, changes only go to the charts (through `page.live`).
  if (page.record !== null) Object.assign(page.record, body);
  for (const key of Object.keys(body)) {
    const v = body[key];
    if (typeof v !== 'number') continue;
    if (page.live.length < MAX_LIVE) page.live.push([now, key, v]);
    const chart = page.charts.get(key);
    if (chart) {
      chart.data[0].push(now / 1000);
      chart.data[1].push(scaled(key, v));
      chart.dirty = true;
    }
  }
  schedule();
}

function schedule() {
  if (page.frame) return;
  page.frame = requestAnimationFrame(() => {
    page.frame = 0;
    if (page.serial === null) return;
    renderHead();
    renderFields();
    const from = (Date.now() - RANGES[page.range].ms) / 1000;
    for (const [key, chart] of page.charts) {
      if (!chart.dirty) continue;
      chart.dirty = false;
      // The range slides with the clock: points older than it leave on the left.
      let drop = 0;
      while (drop < chart.data[0].length - 1 && chart.data[0][drop] < from) drop += 1;
      if (drop) chart.data.forEach((col) => col.splice(0, drop));
      chart.u.setData(chart.data);
      noteChart(key, chart);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Head and fields

function renderHead() {
  const rec = page.record;
  if (!rec) return;
  const status = $('device-status');
  status.textContent = rec.online === true ? 'Online' : rec.online === false ? 'Offline' : '—';
  status.className = rec.online === true ? 'st on' : rec.online === false ? 'st off' : 'st';
  const seen = parseTimestamp(rec.last_status_update);
  $('device-seen').textContent = Number.isNaN(seen) ? '' : `last seen ${formatAgo(seen, Date.now())} · ${formatLocal(seen)}`;
}

function renderFields() {
  const rec = page.record;
  if (!rec) return;
  const known = KNOWN_COLUMNS.map((c) => c.key).filter((k) => k in rec);
  const extras = Object.keys(rec)
    .filter((k) => !LABELS.has(k))
    .sort();
  const list = $('device-fields');
  const rows = [];
  for (const key of [...known, ...extras]) {
    const v = rec[key];
    let text;
    const kind = LABELS.get(key)?.kind;
    if (key === 'online') text = v === true ? 'Online' : v === false ? 'Offline' : '—';
    else if (kind === 'ago' || kind === 'time') {
      const ms = parseTimestamp(v);
      text = Number.isNaN(ms) ? formatValue(key, v) : formatLocal(ms);
    } else if (kind === 'devtime') [text] = formatCell(LABELS.get(key), v, 0);
    else text = formatValue(key, v);
    const bad = implausible(key, v);
    rows.push([key, labelOf(key), text, bad, typeof v === 'number' && key === 'battery' ? Math.max(0, Math.min(100, v)) : -1]);
  }
  // Rebuilt only when the set of fields changes; otherwise values are updated in place.
  if (list.dataset.keys !== rows.map((r) => r[0]).join('\u0000')) {
    list.dataset.keys = rows.map((r) => r[0]).join('\u0000');
    list.replaceChildren(
      ...rows.map(([key, label]) => {
        const div = document.createElement('div');
        div.className = 'field';
        div.dataset.field = key;
        const dt = document.createElement('dt');
        dt.textContent = label;
        dt.title = key;
        const dd = document.createElement('dd');
        div.append(dt, dd);
        return div;
      }),
    );
  }
  rows.forEach(([, , text, bad, bar], i) => {
    const dd = list.children[i].lastElementChild;
    if (dd.textContent !== text) dd.textContent = text;
    dd.className = `${bad ? 'implausible' : ''}${bar >= 0 ? ' bat' : ''}`;
    dd.title = bad;
    if (bar >= 0) dd.style.setProperty('--bar', `${bar}%`);
  });
}

// ---------------------------------------------------------------------------------------------------
// History: one request for every charted field of the range, one uPlot per field.

function chartedFields() {
  const rec = page.record ?? {};
  const known = KNOWN_COLUMNS.map((c) => c.key).filter((k) => NUMERIC_FIELDS.has(k) && !NOT_CHARTED.has(k));
  const extras = Object.keys(rec)
    .filter((k) => !LABELS.has(k) && typeof rec[k] === 'number')
    .sort();
  return [...known, ...extras].slice(0, MAX_CHARTS);
}

const scaled = (key, v) => (v === null ? null : key === 'capacity' ? v / WS_PER_KWH : v);

function axisText(key, v) {
  if (key.startsWith('power_')) return formatPower(v);
  if (key === 'capacity') return `${numberFormat.format(v)} kWh`;
  if (key === 'battery') return `${numberFormat.format(v)} %`;
  return numberFormat.format(v);
}

function historyParams(fields, range, from, to) {
  const params = new URLSearchParams({ fields: fields.join(','), from: String(from), to: String(to), agg: range.agg });
  if (range.step) params.set('step', range.step);
  return params;
}

const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);

async function fetchJson(url) {
  const res = await fetch(url, { headers: PAGE_HEADERS });
  if (!res.ok) throw new Error(await reason(res));
  return res.json();
}

async function load() {
  const serial = page.serial;
  const gen = ++page.gen;
  const started = performance.now();
  const range = RANGES[page.range];
  for (const b of document.querySelectorAll('#device-page [data-range]')) b.setAttribute('aria-pressed', String(b.dataset.range === page.range));
  $('device-range-note').textContent = range.note;
  const fields = chartedFields();
  const to = Date.now() + 1000;
  const from = to - 1000 - range.ms;
  page.from = from;
  const base = `/api/devices/${encodeURIComponent(serial)}`;
  const params = historyParams(fields, range, from, to);
  const csv = new URLSearchParams(params);
  csv.set('format', 'csv');
  const link = $('device-csv');
  link.href = `${base}/history?${csv}`;
  link.download = `${serial}-${page.range}.csv`;
  const energyFrom = utcDay(to - (range.energyDays - 1) * DAY);
  const el = $('device-page');
  el.dataset.state = 'loading';
  // The charts do not wait for the energy bars (nor the bars for the charts).
  const energy = fetchJson(`${base}/energy?${new URLSearchParams({ from: energyFrom, to: utcDay(to) })}`).then(
    (answer) => {
      if (gen === page.gen) renderEnergy(answer);
      return '';
    },
    (err) => `Could not load the energy per day: ${err.message}`,
  );
  let history;
  let problem = '';
  try {
    history = await fetchJson(`${base}/history?${params}`);
  } catch (err) {
    problem = `Could not load the history: ${err.message}`;
  }
  if (gen !== page.gen) return;
  if (history) {
    const fetched = performance.now();
    buildCharts(fields, history, range);
    // Drawn: uPlot draws synchronously; the next frame is when the user sees it.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (gen !== page.gen) return;
    el.dataset.renderMs = String(Math.round(performance.now() - started));
    el.dataset.fetchMs = String(Math.round(fetched - started)); // of which the history request
  }
  problem ||= await energy;
  if (gen !== page.gen) return;
  showError(problem);
  el.dataset.completeMs = String(Math.round(performance.now() - started)); // energy bars included
  el.dataset.state = problem ? 'error' : 'ready';
}

function destroyCharts() {
  for (const { u } of page.charts.values()) u.destroy();
  page.charts.clear();
  if (page.frame) cancelAnimationFrame(page.frame);
  page.frame = 0;
}

function chartWidth() {
  const grid = $('device-charts');
  const cols = getComputedStyle(grid).gridTemplateColumns.split(' ').length || 1;
  return Math.max(240, Math.floor((grid.clientWidth - (cols - 1) * 16) / cols) - 2);
}

function buildCharts(fields, history, range) {
  destroyCharts();
  const container = $('device-charts');
  container.replaceChildren();
  const raw = range.agg === 'raw';
  const width = chartWidth();
  const css = getComputedStyle(document.documentElement);
  const axisColor = css.getPropertyValue('--muted').trim() || '#6b7280';
  const gridColor = css.getPropertyValue('--border').trim() || 'rgba(128,128,128,0.2)';
  const ts = Array.isArray(history.ts) ? history.ts : [];
  fields.forEach((key, i) => {
    const values = Array.isArray(history[key]) ? history[key] : [];
    const xs = [];
    const ys = [];
    for (let j = 0; j < ts.length; j += 1) {
      const v = values[j] ?? null;
      // Raw answers hold null where a message did not change the field: no point there. Buckets
      // keep their nulls: an empty bucket is a gap in the line.
      if (raw && v === null) continue;
      xs.push(ts[j] / 1000);
      ys.push(scaled(key, v));
    }
    const lastTs = xs.length ? xs[xs.length - 1] * 1000 : 0;
    // What arrived live while the request ran (or before it could see it).
    for (const [ms, field, v] of page.live) {
      if (field === key && ms > lastTs) {
        xs.push(ms / 1000);
        ys.push(scaled(key, v));
      }
    }
    // The last hour starts with the value the device holds now when nothing changed within it.
    if (raw && xs.length === 0 && typeof page.record?.[key] === 'number') {
      xs.push(Date.now() / 1000);
      ys.push(scaled(key, page.record[key]));
    }
    const el = document.createElement('div');
    el.className = 'chart';
    el.dataset.field = key;
    const title = document.createElement('h3');
    title.textContent = labelOf(key);
    el.append(title);
    container.append(el);
    const color = FIXED_COLORS[key] ?? COLORS[i % COLORS.length];
    const fmt = (v) => axisText(key, v);
    const u = new uPlot(
      {
        width,
        height: 150,
        legend: { show: true, live: true },
        cursor: { drag: { x: true, y: false } },
        scales: {
          x: { time: true, range: () => [page.from / 1000, Date.now() / 1000] },
        },
        series: [
          { value: (_, v) => (v === null ? '—' : formatLocal(v * 1000)) },
          {
            label: labelOf(key),
            stroke: color,
            fill: `${color}22`,
            width: 1.5,
            spanGaps: false,
            points: { show: xs.length < 3, size: 5 },
            paths: raw ? uPlot.paths.stepped({ align: 1 }) : undefined,
            value: (_, v) => (v === null || v === undefined ? '—' : fmt(v)),
          },
        ],
        axes: [
          { stroke: axisColor, grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor } },
          { stroke: axisColor, grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor }, size: 64, values: (_, vals) => vals.map(fmt) },
        ],
      },
      [xs, ys],
      el,
    );
    const chart = { u, data: [xs, ys], el, dirty: false };
    page.charts.set(key, chart);
    noteChart(key, chart);
  });
}

/** For tests and tooltips: how many points a chart holds and its newest value (raw units). */
function noteChart(key, chart) {
  const ys = chart.data[1];
  let n = 0;
  for (const v of ys) if (v !== null) n += 1;
  chart.el.dataset.points = String(n);
  const last = ys.length ? ys[ys.length - 1] : null;
  chart.el.dataset.last = last === null ? '' : String(key === 'capacity' ? last * WS_PER_KWH : last);
}

new ResizeObserver(() => {
  if (page.charts.size === 0) return;
  const width = chartWidth();
  for (const { u } of page.charts.values()) u.setSize({ width, height: 150 });
}).observe($('device-charts'));

// ---------------------------------------------------------------------------------------------------
// Energy: a row per UTC day, a bar per power field, the kWh written out.

const ENERGY = [
  ['power_income', 'income'],
  ['power_inject', 'inject'],
  ['power_consumption', 'consumption'],
];

function renderEnergy(energy) {
  const days = Array.isArray(energy.days) ? energy.days : [];
  let max = 0;
  for (const [key] of ENERGY) for (const v of energy[`${key}_kwh`] ?? []) max = Math.max(max, v ?? 0);
  const kwh = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const rows = days.map((day, i) => {
    const row = document.createElement('div');
    row.className = 'energy-day';
    row.dataset.day = day;
    const label = document.createElement('span');
    label.className = 'energy-date';
    label.textContent = day.slice(5);
    label.title = day;
    row.append(label);
    const bars = document.createElement('div');
    bars.className = 'energy-values';
    let covered = 24;
    for (const [key, cls] of ENERGY) {
      const v = energy[`${key}_kwh`]?.[i] ?? null;
      covered = Math.min(covered, energy[`${key}_covered_hours`]?.[i] ?? 24);
      const bar = document.createElement('div');
      bar.className = `energy-bar ${cls}`;
      bar.dataset.field = key;
      bar.dataset.kwh = v === null ? '' : String(v);
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.width = `${max > 0 && v ? (v / max) * 100 : 0}%`;
      const text = document.createElement('span');
      text.className = 'kwh';
      text.textContent = v === null ? '—' : kwh.format(v);
      bar.title = `${labelOf(key)}: ${v === null ? 'no data' : `${kwh.format(v)} kWh`}`;
      bar.append(fill, text);
      bars.append(bar);
    }
    row.append(bars);
    if (covered < 24) {
      row.classList.add('partial');
      row.title = `measured for ${numberFormat.format(covered)} of 24 h`;
    }
    return row;
  });
  $('device-energy').replaceChildren(...rows.reverse());
}

// ---------------------------------------------------------------------------------------------------
// Controls

for (const b of document.querySelectorAll('#device-page [data-range]')) {
  b.addEventListener('click', () => {
    if (page.range === b.dataset.range || page.serial === null) return;
    page.range = b.dataset.range;
    localStorage.setItem(RANGE_KEY, page.range);
    load();
  });
}
$('device-back').addEventListener('click', () => page.onBack());
