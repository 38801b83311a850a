// SMART-OS dashboard: ES modules, no dependencies but the vendored uPlot (device page), no build step.
// This module wires the fleet table: the websocket, the windowed grid, the summary, the boot.
//
// Data flow: websocket frames only mutate records and mark what is dirty; all DOM writes happen
// in one requestAnimationFrame flush, and only for the rows in the visible window. That keeps the page
// smooth with 10,000 devices and 1,000 updates/s, where touching the DOM per message would not be.

import { KNOWN_COLUMNS, KNOWN_KEYS, humanize } from './fields.js';
import { csvCell, formatCell, numberFormat, pad2 } from './format.js';
import { isEmptyQuery, matches, queryFromHash, queryToHash, sameQuery, toClauses } from './query.js';
import { resorted } from './order.js';
import { clientUrl, readUpdt, updtIds, updtMessages } from './wire.js';
import { applyNotice, bannerText, forget, isStale, noteChange, readNotice } from './stale.js';
import { state, setActiveQuery } from './state.js';
import { onApply, setApplying, showClauseError, showError, writeForm } from './filters.js';
import { buildColumns, drawnWindow, readThemeColors, remeasure, renderGrid, runFlashes } from './grid.js';
import { closeDevice, deviceLeftView, deviceUpdate, openDevice, setDeviceStale } from './device.js';
import { account, onLogin, showAccount, showLoginForm, whoAmI } from './auth.js';

const RESORT_INTERVAL_MS = 500;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 8000;
const CONNECT_TIMEOUT_MS = 10000;
const MAX_PENDING_FLASH = 5000;
// While paused, frames wait (in order) up to this many changes and INITs (a batched UPDT counts its
// changes); beyond it they are dropped and the view is asked for again on resume (a fresh INIT).
const MAX_HELD = 20000;
const RESORT_CUE_MS = 1200;
// After a finger leaves the rows (a tap, or the end of a swipe), the order holds this long more: what
// was being read does not jump away the moment the finger lifts.
const TOUCH_HOLD_MS = 1500;
// A touch holds the order at most this long: the lift of a finger whose row left the DOM meanwhile (the
// table is windowed) may never reach the window, and must not freeze the order.
const TOUCH_HOLD_MAX_MS = 10000;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------
// Applying protocol messages

// Field names come from devices, so they may be `__proto__`, `constructor` or `hasOwnProperty`. A record's
// prototype is an empty, frozen object with no prototype itself: nothing is inherited, so every field is
// an own data property (assigning `__proto__` cannot re-parent a record) and a field a record lacks reads
// as undefined, never as a member of Object.prototype. (Not Object.create(null): V8 keeps such objects in
// dictionary mode, which makes sorting 10,000 records several times slower.)
const RECORD_PROTO = Object.freeze(Object.create(null));

function newRecord(...sources) {
  return Object.assign(Object.create(RECORD_PROTO), ...sources);
}

function noteExtraKeys(rec) {
  for (const key of Object.keys(rec)) {
    if (!KNOWN_KEYS.has(key) && !state.extraKeys.has(key)) addExtraColumn(key, rec[key]);
  }
}

function addExtraColumn(key, sample) {
  state.extraKeys.add(key);
  const label = humanize(key);
  const col = { key, label, kind: 'auto', extra: true, numeric: typeof sample === 'number', width: Math.max(96, Math.min(220, label.length * 8 + 44)) };
  // Extra fields follow the known ones, in key order, as the server serializes them.
  let at = state.columns.length;
  while (at > KNOWN_COLUMNS.length && state.columns[at - 1].key > key) at -= 1;
  state.columns.splice(at, 0, col);
  state.columnIndex = new Map(state.columns.map((c, i) => [c.key, i]));
  state.dirty.columns = true;
}

function insertRow(rec) {
  const rows = state.rows;
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (state.compare(rows[mid], rec) <= 0) lo = mid + 1;
    else hi = mid;
  }
  rows.splice(lo, 0, rec);
  state.shown.add(rec);
  // Placed among rows that may be out of order until the pending re-sort: it takes part in it.
  if (state.resortPending) state.moved.add(rec);
}

function removeRow(rec) {
  const i = state.rows.indexOf(rec);
  if (i >= 0) state.rows.splice(i, 1);
  state.shown.delete(rec);
}

function handleInit(list, answered) {
  if (!Array.isArray(list)) return;
  const records = new Map();
  const rows = [];
  for (const item of list) {
    if (!item || typeof item !== 'object' || Array.isArray(item) || typeof item.serial_number !== 'string') continue;
    const rec = newRecord(item);
    records.set(rec.serial_number, rec);
    noteExtraKeys(rec);
    rows.push(rec);
  }
  const changedView = answered !== undefined && !sameQuery(answered, state.accepted);
  if (answered !== undefined) setActiveQuery(answered);
  state.records = records;
  state.rows = rows.filter((r) => matches(state.accepted, r));
  state.shown = new Set(state.rows);
  state.flashQueue.clear();
  state.newRows.clear();
  state.resortPending = false;
  state.moved.clear();
  state.hadInit = true;
  if (openSerial !== null && !records.has(openSerial)) deviceLeftView(openSerial);
  if (changedView && openSerial === null) scroller.scrollTop = 0;
  markDirty('grid', 'summary', 'header');
}

// What applying one change left to draw.
const DRAW_NOTHING = 0;
const DRAW_GRID = 1;
const DRAW_SUMMARY = 2; // and the grid

// An UPDT's changes (its one string, or a batched UPDT's list), applied in order; what they changed
// is marked dirty once, for the next animation frame.
function handleUpdt(message) {
  let draw = DRAW_NOTHING;
  for (const m of updtMessages(message)) draw = Math.max(draw, applyUpdate(m));
  if (draw === DRAW_SUMMARY) markDirty('grid', 'summary');
  else if (draw === DRAW_GRID) markDirty('grid');
}

function applyUpdate(message) {
  const updt = readUpdt(message);
  if (updt === null) return DRAW_NOTHING;
  const { serial, body } = updt;
  state.updatesThisSecond += 1;

  let rec = state.records.get(serial);
  if (!rec) {
    rec = newRecord({ serial_number: serial }, body);
    state.records.set(serial, rec);
    noteExtraKeys(rec);
    if (matches(state.accepted, rec)) {
      insertRow(rec);
      state.newRows.add(rec);
    }
    return DRAW_SUMMARY;
  }

  let sortTouched = false;
  let filterTouched = false;
  let draw = DRAW_GRID;
  let flashFields = null;
  // Own keys only: JSON.parse makes `__proto__` an own property of `body`, and nothing inherited counts.
  for (const key of Object.keys(body)) {
    const value = body[key];
    const old = rec[key];
    if (old === value) continue;
    rec[key] = value;
    touched.add(rec);
    if (!KNOWN_KEYS.has(key) && !state.extraKeys.has(key)) addExtraColumn(key, value);
    if (state.sortFields.has(key)) sortTouched = true;
    if (state.filterFields.has(key)) filterTouched = true;
    // last_status_update changes with every message; flashing it would only add noise.
    if (state.flash && key !== 'last_status_update') {
      flashFields ??= state.flashQueue.get(rec) ?? new Set();
      flashFields.add(key);
    }
  }
  if (flashFields && state.flashQueue.size < MAX_PENDING_FLASH) state.flashQueue.set(rec, flashFields);
  if (filterTouched) {
    const want = matches(state.accepted, rec);
    const has = state.shown.has(rec);
    if (want && !has) insertRow(rec);
    else if (!want && has) removeRow(rec);
    draw = DRAW_SUMMARY;
  }
  if (sortTouched && state.shown.has(rec)) {
    state.resortPending = true;
    state.moved.add(rec);
  }
  if (Object.hasOwn(body, 'online')) draw = DRAW_SUMMARY;
  return draw;
}

// ---------------------------------------------------------------------------------------------------
// Connection: one websocket to /client/, reconnecting with capped, jittered exponential backoff.

const link = {
  ws: null,
  attempt: 0,
  retryAt: 0,
  retryTimer: 0,
  connectTimer: 0,
  skipInit: false,
  gotInit: false,
  status: 'connecting',
};

function connect() {
  clearTimeout(link.retryTimer);
  link.retryTimer = 0;
  if (link.ws) return;
  setStatus('connecting');
  let ws;
  try {
    ws = new WebSocket(clientUrl());
  } catch {
    scheduleReconnect();
    return;
  }
  link.ws = ws;
  link.gotInit = false;
  // A new connection (maybe to another instance) says again what is stale, if anything is.
  if (forget(state.remote)) renderStale();
  // A new connection starts with a fresh INIT: frames held from the old one are moot.
  state.held = [];
  state.heldCount = 0;
  state.heldOverflow = false;
  link.connectTimer = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
  ws.onopen = () => {
    clearTimeout(link.connectTimer);
    state.pending = [];
    // The server greets with INIT of everything; when a query is set we skip that and wait for its answer.
    link.skipInit = !isEmptyQuery(state.desired);
    if (link.skipInit) sendQuery(state.desired);
  };
  ws.onmessage = (ev) => onFrame(ev.data);
  ws.onclose = () => {
    clearTimeout(link.connectTimer);
    if (link.ws !== ws) return;
    link.ws = null;
    state.pending = [];
    setApplying(false);
    // What this connection said was stale: the next one says it again if it still is (after its INIT).
    if (forget(state.remote)) renderStale();
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  if (account.required) {
    // A refused upgrade may mean the session ended: ask before retrying.
    whoAmI().then((me) => {
      if (me && me.auth === 'required' && !me.user) showLogin('Your session ended: log in again.');
    });
  }
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** link.attempt);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  link.attempt = Math.min(link.attempt + 1, 10);
  link.retryAt = Date.now() + delay;
  link.retryTimer = setTimeout(connect, delay);
  setStatus('offline');
}

function onFrame(data) {
  let env;
  try {
    env = JSON.parse(data);
  } catch {
    return;
  }
  if (!env || typeof env !== 'object') return;
  // Devices writing to this instance are current even while others' may be stale (paused or not).
  if (env.type === 'UPDT' && state.remote.since !== null) noteWrites(env.message);
  // The open device page takes its device's changes from here (paused or not).
  if (openSerial !== null && env.type === 'UPDT' && link.gotInit) feedDevice(env.message);
  // Paused: the table stays as it is; changes and view INITs wait, unless one answers a query.
  if (state.paused && (env.type === 'UPDT' || (env.type === 'INIT' && !link.skipInit && state.pending.length === 0))) {
    if (!state.heldOverflow && state.heldCount < MAX_HELD) {
      state.held.push(env);
      state.heldCount += env.type === 'UPDT' ? updtMessages(env.message).length : 1;
    } else state.heldOverflow = true;
    noteHeld();
    return;
  }
  onMessage(env);
}

function feedDevice(message) {
  for (const m of updtMessages(message)) {
    const updt = readUpdt(m, openSerial);
    if (updt !== null) deviceUpdate(openSerial, updt.body);
  }
}

function onMessage(env) {
  if (env.type === 'UPDT') {
    if (link.gotInit) handleUpdt(env.message);
  } else if (env.type === 'INIT') {
    if (link.skipInit) {
      link.skipInit = false;
      return;
    }
    link.gotInit = true;
    link.attempt = 0;
    const answered = state.pending.shift();
    handleInit(env.message, answered?.query);
    if (answered !== undefined) {
      if (!answered.keepError) showError('');
      setApplying(state.pending.length > 0);
      writeHash(state.accepted);
    }
    setStatus('live');
  } else if (env.type === 'INFO') {
    const notice = readNotice(env);
    if (notice !== null) {
      if (applyNotice(state.remote, notice)) renderStale();
    } else if (env.message === 'ERROR') onQueryError(env.reason);
    else if (link.status !== 'live') setStatus('open');
  }
}

// ---------------------------------------------------------------------------------------------------
// Stale remote devices (`?stale=1`, stale.js): while this instance cannot read the cluster's change
// stream, a banner at the top and a "stale" badge on every device not connected here (grid.js draws it
// from `state.remote`; the device page has its own). Drawn on each change of what is stale, not per frame.

const banner = $('cluster-banner');

function renderStale() {
  const { since, reason } = state.remote;
  banner.hidden = since === null;
  setText(banner, since === null ? '' : bannerText(since));
  banner.title = reason;
  if (openSerial !== null) setDeviceStale(isStale(state.remote, openSerial));
  markDirty('grid');
}

// An UPDT's changes (one or a batch) while stale: a device whose change carries its own message id
// wrote here, so it is current from now on.
function noteWrites(message) {
  let changed = false;
  for (const m of updtMessages(message)) {
    const ids = updtIds(m);
    if (ids !== null && noteChange(state.remote, ids[0], ids[1])) changed = true;
  }
  if (changed) renderStale();
}

function onQueryError(reason) {
  state.pending.shift();
  setApplying(state.pending.length > 0);
  // In plain words next to the clause it is about when that clause is in the form, else above it.
  if (showClauseError(reason)) showError('Query rejected: see the filter marked below.');
  else showError(`Query rejected: ${reason || 'the server gave no reason'}`);
  // The server keeps the previous view; so do we, and that is what a reconnect will ask for again.
  state.desired = state.accepted;
  markDirty('header');
  if (!link.gotInit && state.pending.length === 0) {
    // The query sent in place of the greeting INIT (from the URL or before a reconnect) was refused:
    // ask for the accepted view instead, so the table is not left empty.
    sendQuery(state.accepted, { keepError: true });
  }
}

function sendQuery(query, { keepError = false } = {}) {
  if (!link.ws || link.ws.readyState !== WebSocket.OPEN) return false;
  link.ws.send(JSON.stringify({ type: 'FILT', message: toClauses(query) }));
  state.pending.push({ query, keepError });
  setApplying(true);
  return true;
}

function applyQuery(q) {
  setPaused(false);
  state.desired = q;
  markDirty('header');
  if (!sendQuery(q)) {
    showError('Not connected: the query will be sent when the connection is back.', 'note');
    writeHash(q);
  }
}

function writeHash(q) {
  // The device page owns the hash while it is open; the table's query is written back on return.
  if (deviceSerial()) return;
  const hash = queryToHash(q);
  if (hash !== location.hash) {
    history.replaceState(null, '', `${location.pathname}${location.search}${hash}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Header status

const connEl = $('conn');
const connText = $('conn-text');
const rateEl = $('rate');

function setStatus(status) {
  link.status = status;
  connEl.dataset.state = status;
  renderStatusText();
  document.body.classList.toggle('disconnected', status === 'offline');
  // Together with the status pill, not a frame later: the two must never disagree.
  $('stale-badge').hidden = !(state.hadInit && status === 'offline');
  markDirty('summary');
}

function renderStatusText() {
  let text;
  switch (link.status) {
    case 'live':
      text = 'Live';
      break;
    case 'open':
      text = 'Loading…';
      break;
    case 'offline': {
      const s = Math.max(0, Math.ceil((link.retryAt - Date.now()) / 1000));
      text = s > 0 ? `Disconnected · retry in ${s} s` : 'Disconnected · retrying…';
      break;
    }
    default:
      text = 'Connecting…';
  }
  if (connText.textContent !== text) connText.textContent = text;
}

// ---------------------------------------------------------------------------------------------------
// Grid: drawn by grid.js (only the rows in and near the viewport); the header's sort marks here.

const scroller = $('scroller');
const headRow = $('head-row');
const tbody = $('body');
// Records whose values changed since the last draw: only their drawn cells are formatted again.
const touched = new Set();

function renderHeader() {
  renderFilterCount();
  const sorts = state.desired.sorts;
  for (const th of headRow.children) {
    const i = sorts.findIndex((s) => s.field === th.dataset.field);
    const ind = th.querySelector('.sort-ind');
    if (i < 0) {
      th.removeAttribute('aria-sort');
      th.classList.remove('sorted');
      ind.textContent = '';
    } else {
      const asc = sorts[i].dir === '<';
      if (i === 0) th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
      th.classList.add('sorted');
      ind.textContent = (asc ? '▲' : '▼') + (sorts.length > 1 ? String(i + 1) : '');
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Summary line and empty state

const countEl = $('result-count');
const nounEl = $('result-noun');
const onlineEl = $('online-count');
const offlineEl = $('offline-count');
const filteredEl = $('filtered-badge');
const emptyEl = $('empty-state');

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderSummary() {
  const rows = state.rows;
  let online = 0;
  for (const r of rows) if (r.online === true) online += 1;
  const offline = rows.length - online;
  const filtered = state.accepted.filters.length > 0;
  setText(countEl, numberFormat.format(rows.length));
  setText(nounEl, `${filtered ? 'matching ' : ''}device${rows.length === 1 ? '' : 's'}`);
  setText(onlineEl, `${numberFormat.format(online)} online`);
  setText(offlineEl, `${numberFormat.format(offline)} offline`);
  filteredEl.hidden = !filtered;
  $('stale-badge').hidden = !(state.hadInit && link.status === 'offline');

  const empty = rows.length === 0;
  emptyEl.hidden = !empty;
  if (empty) {
    let title;
    let sub = '';
    if (!state.hadInit) {
      title = link.status === 'offline' ? 'Cannot reach the server' : 'Connecting to the server…';
      if (link.status === 'offline') sub = 'The dashboard keeps retrying on its own.';
    } else if (filtered) {
      title = 'No device matches this filter';
      sub = 'Change or remove a filter and press Apply.';
    } else {
      title = 'No devices yet';
      sub = 'Devices appear here as soon as they connect to /update/.';
    }
    setText($('empty-title'), title);
    setText($('empty-sub'), sub);
  }
}

// ---------------------------------------------------------------------------------------------------
// Frame scheduling

let frameRequested = false;
let resortTimer = 0;

function markDirty(...parts) {
  for (const p of parts) state.dirty[p] = true;
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameRequested = false;
  const now = Date.now();
  // Re-sorting 10,000 rows on every frame would eat the frame budget; values that move a row
  // re-sort at most twice a second, new rows are inserted in place at once.
  // Rows do not move under a mouse pointer resting on them, nor under a finger touching them (and for a
  // moment after it lifts): the re-sort waits.
  if (state.resortPending && !state.pointerOnRows && now >= state.touchHoldUntil) {
    if (now - state.lastSort >= RESORT_INTERVAL_MS) {
      // The rows drawn now (the visible window and its overscan): the cue shows when they moved.
      const { at, recs: drawn } = drawnWindow();
      state.rows = resorted(state.rows, state.moved, state.compare);
      state.moved.clear();
      state.resortPending = false;
      state.lastSort = now;
      state.dirty.grid = true;
      if (drawn.some((rec, k) => state.rows[at + k] !== rec)) showResortCue();
    } else if (!resortTimer) {
      resortTimer = setTimeout(() => {
        resortTimer = 0;
        markDirty('grid');
      }, RESORT_INTERVAL_MS - (now - state.lastSort));
    }
  }
  const d = state.dirty;
  if (d.columns) {
    d.columns = false;
    buildColumns(() => markDirty('columns'));
    d.grid = true;
  }
  if (d.header) {
    d.header = false;
    renderHeader();
  }
  // The table is not drawn while the device page covers it (it stays marked dirty until it returns).
  if (d.grid && openSerial === null) {
    d.grid = false;
    runFlashes(renderGrid(now, touched));
    touched.clear();
  }
  if (d.summary) {
    d.summary = false;
    renderSummary();
  }
}

// ---------------------------------------------------------------------------------------------------
// CSV export of the current view (all rows, not only the visible window), raw values, UTC timestamps.

function exportCsv() {
  const cols = state.columns;
  const lines = [cols.map((c) => csvCell(c.key)).join(',')];
  for (const rec of state.rows) lines.push(cols.map((c) => csvCell(rec[c.key])).join(','));
  const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv;charset=utf-8' });
  const d = new Date();
  const stamp = `${d.getFullYear()}${pad2(d.getMonth() + 1)}${pad2(d.getDate())}-${pad2(d.getHours())}${pad2(d.getMinutes())}${pad2(d.getSeconds())}`;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `smart-os-devices-${stamp}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---------------------------------------------------------------------------------------------------
// Boot

const reducedMotion = matchMedia('(prefers-reduced-motion: reduce)');
const flashToggle = $('flash-toggle');
const storedFlash = localStorage.getItem('smart-os.flash');
state.flash = storedFlash === null ? !reducedMotion.matches : storedFlash === '1';
flashToggle.checked = state.flash;
flashToggle.addEventListener('change', () => {
  state.flash = flashToggle.checked;
  localStorage.setItem('smart-os.flash', state.flash ? '1' : '0');
  if (!state.flash) state.flashQueue.clear();
});
$('export-csv').addEventListener('click', exportCsv);

scroller.addEventListener('scroll', () => markDirty('grid'), { passive: true });
new ResizeObserver(() => {
  remeasure();
  markDirty('grid');
}).observe(scroller);
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', readThemeColors);
window.addEventListener('online', () => {
  if (!link.ws) {
    link.attempt = 0;
    connect();
  }
});
window.addEventListener('hashchange', route);

// A short cue that rows changed places (the "re-sorted" pill).
let cueTimer = 0;
function showResortCue() {
  const cue = $('resort-cue');
  cue.hidden = false;
  clearTimeout(cueTimer);
  cueTimer = setTimeout(() => {
    cue.hidden = true;
  }, RESORT_CUE_MS);
}

tbody.addEventListener('pointerenter', (ev) => {
  if (ev.pointerType === 'mouse') state.pointerOnRows = true;
});
tbody.addEventListener('pointerleave', () => {
  state.pointerOnRows = false;
  if (state.resortPending) markDirty('grid');
});
// A touch (or pen) has no hover: the order holds from the moment it lands on the rows until
// TOUCH_HOLD_MS after it lifts (TOUCH_HOLD_MAX_MS at most).
let touching = false;
function holdOrderFor(ms) {
  state.touchHoldUntil = Date.now() + ms;
  setTimeout(() => {
    if (state.resortPending) markDirty('grid');
  }, ms + 20);
}
tbody.addEventListener('pointerdown', (ev) => {
  if (ev.pointerType === 'mouse') return;
  touching = true;
  holdOrderFor(TOUCH_HOLD_MAX_MS);
});
function touchLifted(ev) {
  if (ev.pointerType === 'mouse' || !touching) return;
  // A touch the browser takes over for scrolling is cancelled as a pointer but goes on as a touch
  // until the finger lifts (touchend); another finger may still be down.
  if (ev.type === 'pointercancel' && ev.pointerType === 'touch') return;
  if (ev.touches && ev.touches.length > 0) return;
  touching = false;
  holdOrderFor(TOUCH_HOLD_MS);
}
for (const type of ['pointerup', 'pointercancel', 'touchend', 'touchcancel']) window.addEventListener(type, touchLifted, { passive: true });

// ---------------------------------------------------------------------------------------------------
// Pause live: the table freezes; what arrives waits in order and is applied on resume.

const pauseToggle = $('pause-toggle');

function setPaused(on) {
  if (state.paused === on) return;
  state.paused = on;
  pauseToggle.checked = on;
  document.body.classList.toggle('paused', on);
  if (!on) {
    const held = state.held;
    const overflow = state.heldOverflow;
    state.held = [];
    state.heldCount = 0;
    state.heldOverflow = false;
    for (const env of held) onMessage(env);
    // Too much arrived to keep: ask for the view again (the answer is a fresh INIT).
    if (overflow && state.pending.length === 0) sendQuery(state.desired);
  }
  noteHeld();
}

function noteHeld() {
  const n = state.heldCount;
  setText($('paused-badge'), state.heldOverflow ? 'paused · many changes waiting' : `paused · ${numberFormat.format(n)} waiting`);
  $('paused-badge').hidden = !state.paused;
}

pauseToggle.addEventListener('change', () => setPaused(pauseToggle.checked));

// ---------------------------------------------------------------------------------------------------
// Navigation: `#/device/SERIAL` is a device's page; any other hash is the table's query.

const tableView = { scrollTop: 0, fromTable: false };
let openSerial = null; // the device whose page is open

function deviceSerial() {
  const m = /^#\/device\/(.+)$/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

function route() {
  const serial = deviceSerial();
  if (serial !== null) {
    $('layout').hidden = true;
    document.body.classList.add('on-device');
    openSerial = serial;
    openDevice(serial, { onBack: leaveDevice, inView: link.gotInit && state.records.has(serial), onUpdt: noteWrites });
    setDeviceStale(isStale(state.remote, serial));
    return;
  }
  if (document.body.classList.contains('on-device')) {
    openSerial = null;
    closeDevice();
    document.body.classList.remove('on-device');
    $('layout').hidden = false;
    // Where the user was: the same query (the hash) and the same scroll position.
    scroller.scrollTop = tableView.scrollTop;
    markDirty('grid', 'summary');
  }
  const q = queryFromHash();
  if (!sameQuery(q, state.desired)) {
    writeForm(q);
    applyQuery(q);
  } else {
    writeHash(state.desired);
  }
}

function leaveDevice() {
  if (tableView.fromTable) {
    tableView.fromTable = false;
    history.back();
  } else {
    location.hash = queryToHash(state.desired) || '#';
  }
}

tbody.addEventListener('click', (ev) => {
  const tr = ev.target.closest('tr[data-serial]');
  if (!tr || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
  // Selecting text in a row is not a click on it.
  if (String(getSelection()) !== '' && !ev.target.closest('a')) return;
  ev.preventDefault();
  tableView.scrollTop = scroller.scrollTop;
  tableView.fromTable = true;
  location.hash = `#/device/${encodeURIComponent(tr.dataset.serial)}`;
});

// ---------------------------------------------------------------------------------------------------
// Phone: the query form sits behind a "Filters (n)" button.

$('filters-toggle').addEventListener('click', () => {
  const open = document.body.classList.toggle('filters-open');
  $('filters-toggle').setAttribute('aria-expanded', String(open));
});
matchMedia('(max-width: 720px)').addEventListener('change', () => {
  remeasure({ rows: true });
  markDirty('grid');
});

function renderFilterCount() {
  const n = state.desired.filters.length;
  setText($('filters-count'), String(n));
}

setInterval(() => {
  setText(rateEl, `${numberFormat.format(state.updatesThisSecond)} upd/s`);
  state.updatesThisSecond = 0;
  renderStatusText();
  // "12 s ago" moves on even when no message arrives.
  markDirty('grid');
}, 1000);

onApply(applyQuery);
readThemeColors();
writeForm(state.desired);
markDirty('columns', 'grid', 'summary', 'header');
// ---------------------------------------------------------------------------------------------------
// Login (when the server runs with --auth required): the form and the account are in auth.js.

function showLogin(message) {
  clearTimeout(link.retryTimer);
  link.retryTimer = 0;
  // Detached first, so that its close does not schedule a reconnect.
  const ws = link.ws;
  link.ws = null;
  if (ws) ws.close();
  setStatus('offline');
  // A device page open underneath closes too (its address stays, and opens again after the login).
  openSerial = null;
  closeDevice();
  document.body.classList.remove('on-device');
  $('layout').hidden = true;
  showLoginForm(message);
}

onLogin(() => {
  $('layout').hidden = false;
  if (deviceSerial() !== null) route();
  link.attempt = 0;
  connect();
}, showLogin);

async function start() {
  const me = await whoAmI();
  if (me?.auth === 'required' && !me.user) {
    account.required = true;
    showLogin();
    return;
  }
  showAccount(me);
  // Opened at a device's address: its page (once it is known that no login is needed first).
  if (deviceSerial() !== null) route();
  connect();
}

start();
