// SMART-OS dashboard: one self-contained ES module, no dependencies, no build step.
//
// Data flow: websocket frames only mutate records and mark what is dirty; all DOM writes happen
// in one requestAnimationFrame flush, and only for the rows in the visible window. That keeps the page
// smooth with 10,000 devices and 1,000 updates/s, where touching the DOM per message would not be.

const FLASH_MS = 900;
const OVERSCAN = 10;
const RESORT_INTERVAL_MS = 500;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 8000;
const CONNECT_TIMEOUT_MS = 10000;
const MAX_FILTERS = 32;
const MAX_SORTS = 8;
const MAX_PENDING_FLASH = 5000;

// Which fields are known, and their types, comes from the server: GET /api/fields, generated from
// smart-proto's one table of PROTOCOL.md §6 (`record_fields!`). This page only says how to show them:
// labels, units, widths and display order. Units in headers, not in cells, so cells stay numbers. A field
// the server lists that has no entry here is shown after these, labelled from its name and typed from
// the list; an entry for a field the server does not list is dropped.
const COLUMN_LOOKS = [
  { key: 'serial_number', label: 'Serial', kind: 'text', width: 104 },
  { key: 'online', label: 'Status', kind: 'status', width: 100 },
  { key: 'last_status_update', label: 'Last update', kind: 'ago', width: 120 },
  { key: 'battery', label: 'Battery', unit: '%', kind: 'num', width: 104 },
  { key: 'power_income', label: 'Income', unit: 'W', kind: 'num', width: 108 },
  { key: 'power_inject', label: 'Inject', unit: 'W', kind: 'num', width: 104 },
  { key: 'power_consumption', label: 'Consumption', unit: 'W', kind: 'num', width: 150 },
  { key: 'capacity', label: 'Capacity', kind: 'num', width: 116 },
  { key: 'pv_connectors', label: 'PV conn.', kind: 'num', width: 96 },
  { key: 'software_version', label: 'Software', kind: 'text', width: 100 },
  { key: 'solmate_version', label: 'SolMate', kind: 'text', width: 88 },
  { key: 'country', label: 'Country', kind: 'text', width: 84 },
  { key: 'postcode', label: 'Postcode', kind: 'text', width: 96 },
  { key: 'owner', label: 'Owner', kind: 'text', width: 84 },
  { key: 'local_time', label: 'Device time', kind: 'devtime', width: 164 },
  { key: 'manufacturing_date', label: 'First seen', kind: 'time', width: 164 },
];
const FIELD_LIST_RETRY_MS = 1000;

// [{name, type, null, device}], in the order of §6. The page cannot show a record without it, so it
// waits for it (the server that served this page serves it too; a failed fetch is retried).
async function loadFields() {
  for (;;) {
    try {
      const res = await fetch('/api/fields', { cache: 'no-store' });
      if (res.ok) {
        const fields = await res.json();
        if (Array.isArray(fields) && fields.every((f) => f && typeof f.name === 'string')) return fields;
      }
    } catch {
      // Not reachable yet: retried below.
    }
    await new Promise((resolve) => setTimeout(resolve, FIELD_LIST_RETRY_MS));
  }
}

const FIELDS = await loadFields();
const isNumericType = (type) => type === 'number' || type === 'integer';
const KNOWN_KEYS = new Set(FIELDS.map((f) => f.name));
const KNOWN_COLUMNS = [
  ...COLUMN_LOOKS.filter((c) => KNOWN_KEYS.has(c.key)),
  ...FIELDS.filter((f) => !COLUMN_LOOKS.some((c) => c.key === f.name)).map((f) => ({
    key: f.name,
    label: humanize(f.name),
    kind: isNumericType(f.type) ? 'num' : f.type === 'timestamp' ? 'time' : 'text',
    width: Math.max(96, Math.min(220, humanize(f.name).length * 8 + 44)),
  })),
];
const NUMERIC_FIELDS = new Set(FIELDS.filter((f) => isNumericType(f.type)).map((f) => f.name));

// Operator labels of PROTOCOL.md §8: the wire symbol first, then what it means.
const OPERATORS = [
  { op: '=', label: '= contains' },
  { op: '==', label: '== equals' },
  { op: '<', label: '< less than' },
  { op: '>', label: '> greater than' },
  { op: '<=', label: '<= at most' },
  { op: '>=', label: '>= at least' },
  { op: '^', label: '^ starts with' },
];
const NUMERIC_OPS = new Set(['==', '<', '>', '<=', '>=']);
const DIRECTIONS = [
  { dir: '<', label: 'Ascending' },
  { dir: '>', label: 'Descending' },
];

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------
// Formatting

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const pad2 = (n) => (n < 10 ? '0' : '') + n;

function parseTimestamp(text) {
  return typeof text === 'string' ? Date.parse(text) : Number.NaN;
}

// Local time as YYYY-MM-DD HH:MM:SS: unambiguous in every locale and sorts as text.
function formatLocal(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function formatAgo(ms, now) {
  const s = Math.max(0, Math.floor((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function formatPlain(v) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'number') return numberFormat.format(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// Returns [text, className, title] for one cell; className and title may be undefined.
function formatCell(col, v, now) {
  switch (col.kind) {
    case 'status':
      if (v === true) return ['Online', 'st on'];
      if (v === false) return ['Offline', 'st off'];
      return ['—', 'st'];
    case 'ago': {
      const ms = parseTimestamp(v);
      if (Number.isNaN(ms)) return [formatPlain(v), 'ago'];
      const age = now - ms;
      return [formatAgo(ms, now), age > 300000 ? 'ago stale' : 'ago', formatLocal(ms)];
    }
    case 'time': {
      const ms = parseTimestamp(v);
      return Number.isNaN(ms) ? [formatPlain(v), 'time'] : [formatLocal(ms), 'time', String(v)];
    }
    case 'devtime':
      // Kept as the device sent it (no zone); the fraction of a second is noise on screen.
      return typeof v === 'string' ? [v.replace(/\.\d+$/, '').replace('T', ' '), 'time', v] : [formatPlain(v), 'time'];
    case 'num':
      return [formatPlain(v), 'num'];
    default:
      return [formatPlain(v), col.numeric ? 'num' : undefined];
  }
}

function humanize(key) {
  const words = key.replace(/^_+/, '').split('_').filter(Boolean).join(' ');
  return words ? words[0].toUpperCase() + words.slice(1) : key;
}

// ---------------------------------------------------------------------------------------------------
// Queries (PROTOCOL.md §8): {filters: [{field, op, value}], sorts: [{field, dir}]}

const emptyQuery = () => ({ filters: [], sorts: [] });

function toClauses(q) {
  return [
    ...q.filters.map((f) => `filter:${f.field}:${f.op}:${f.value}`),
    ...q.sorts.map((s) => `sort:${s.field}:${s.dir}:${NUMERIC_FIELDS.has(s.field) ? '123' : 'abc'}`),
  ];
}

function fromClauses(clauses) {
  const q = emptyQuery();
  for (const clause of clauses) {
    const parts = clause.split(':');
    const command = parts[0].toLowerCase();
    if (command === 'filter' && parts.length >= 4) {
      q.filters.push({ field: parts[1], op: parts[2], value: parts.slice(3).join(':') });
    } else if (command === 'sort' && parts.length >= 3 && (parts[2] === '<' || parts[2] === '>')) {
      q.sorts.push({ field: parts[1], dir: parts[2] });
    }
  }
  return q;
}

const sameQuery = (a, b) => JSON.stringify(toClauses(a)) === JSON.stringify(toClauses(b));
const isEmptyQuery = (q) => q.filters.length === 0 && q.sorts.length === 0;

const NUMBER_TEXT = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function textForm(v) {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

function numericValue(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && NUMBER_TEXT.test(v.trim())) return Number(v);
  return null;
}

// The server is the authority on the view; this local check only hides a row at once when an update
// takes it out of the view, instead of waiting for the server's fresh INIT.
function matches(q, rec) {
  for (const f of q.filters) {
    const v = rec[f.field];
    if (v === null || v === undefined) return false;
    if (f.op === '=') {
      if (!textForm(v).toLowerCase().includes(f.value.toLowerCase())) return false;
    } else if (f.op === '^') {
      if (!textForm(v).startsWith(f.value)) return false;
    } else {
      const a = numericValue(v);
      const b = numericValue(f.value);
      if (a === null || b === null) return false;
      if (f.op === '==' && !(a === b)) return false;
      if (f.op === '<' && !(a < b)) return false;
      if (f.op === '>' && !(a > b)) return false;
      if (f.op === '<=' && !(a <= b)) return false;
      if (f.op === '>=' && !(a >= b)) return false;
    }
  }
  return true;
}

const typeRank = (v) => (typeof v === 'number' ? 0 : typeof v === 'string' ? 1 : typeof v === 'boolean' ? 2 : 3);

function compareValues(a, b) {
  const ra = typeRank(a);
  const rb = typeRank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 0) return a - b;
  if (ra === 1 || ra === 2) return a < b ? -1 : a > b ? 1 : 0;
  const ja = JSON.stringify(a);
  const jb = JSON.stringify(b);
  return ja < jb ? -1 : ja > jb ? 1 : 0;
}

// Same order as the server: keys in turn, missing/null last in both directions, ties by serial.
function comparator(sorts) {
  return (x, y) => {
    for (const s of sorts) {
      const a = x[s.field];
      const b = y[s.field];
      const na = a === null || a === undefined;
      const nb = b === null || b === undefined;
      if (na || nb) {
        if (na && nb) continue;
        return na ? 1 : -1;
      }
      const c = compareValues(a, b);
      if (c !== 0) return s.dir === '>' ? -c : c;
    }
    const sa = x.serial_number;
    const sb = y.serial_number;
    return sa < sb ? -1 : sa > sb ? 1 : 0;
  };
}

function queryToHash(q) {
  const params = new URLSearchParams();
  for (const c of toClauses(q)) params.append('q', c);
  const text = params.toString();
  return text ? `#${text}` : '';
}

function queryFromHash() {
  try {
    return fromClauses(new URLSearchParams(location.hash.slice(1)).getAll('q'));
  } catch {
    return emptyQuery();
  }
}

// ---------------------------------------------------------------------------------------------------
// State

const state = {
  records: new Map(), // serial -> record, everything the server says is in this dashboard's view
  rows: [], // records shown, in view order
  shown: new Set(), // records present in rows
  columns: KNOWN_COLUMNS.map((c) => ({ ...c })),
  columnIndex: new Map(),
  extraKeys: new Set(),
  accepted: emptyQuery(), // last query the server answered with INIT
  desired: queryFromHash(), // what the user asked for; sent on every (re)connect
  pending: [], // {query, keepError} sent and not yet answered, oldest first
  compare: comparator([]),
  sortFields: new Set(),
  filterFields: new Set(),
  flash: true,
  flashQueue: new Map(), // record -> Set(field)
  newRows: new Set(),
  resortPending: false,
  lastSort: 0,
  hadInit: false,
  dirty: { grid: true, columns: true, summary: true, header: true },
  updatesThisSecond: 0,
};
state.columns.forEach((c, i) => state.columnIndex.set(c.key, i));

function setActiveQuery(q) {
  state.accepted = q;
  state.compare = comparator(q.sorts);
  state.sortFields = new Set(q.sorts.map((s) => s.field));
  state.filterFields = new Set(q.filters.map((f) => f.field));
}

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
  const col = { key, label, kind: 'auto', numeric: typeof sample === 'number', width: Math.max(96, Math.min(220, label.length * 8 + 44)) };
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
  state.hadInit = true;
  if (changedView) scroller.scrollTop = 0;
  markDirty('grid', 'summary', 'header');
}

function handleUpdate(message) {
  if (typeof message !== 'string') return;
  const c1 = message.indexOf(':');
  const c2 = c1 < 0 ? -1 : message.indexOf(':', c1 + 1);
  if (c2 < 0) return;
  const serial = message.slice(c1 + 1, c2);
  let body;
  try {
    body = JSON.parse(message.slice(c2 + 1));
  } catch {
    return;
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) return;
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
    markDirty('grid', 'summary');
    return;
  }

  let sortTouched = false;
  let filterTouched = false;
  let flashFields = null;
  // Own keys only: JSON.parse makes `__proto__` an own property of `body`, and nothing inherited counts.
  for (const key of Object.keys(body)) {
    const value = body[key];
    const old = rec[key];
    if (old === value) continue;
    rec[key] = value;
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
    markDirty('summary');
  } else if (sortTouched && state.shown.has(rec)) {
    state.resortPending = true;
  }
  if (Object.hasOwn(body, 'online')) markDirty('summary');
  markDirty('grid');
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

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/client/`;
}

function connect() {
  clearTimeout(link.retryTimer);
  link.retryTimer = 0;
  if (link.ws) return;
  setStatus('connecting');
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch {
    scheduleReconnect();
    return;
  }
  link.ws = ws;
  link.gotInit = false;
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
  if (env.type === 'UPDT') {
    if (link.gotInit) handleUpdate(env.message);
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
    if (env.message === 'ERROR') onQueryError(env.reason);
    else if (link.status !== 'live') setStatus('open');
  }
}

function onQueryError(reason) {
  state.pending.shift();
  setApplying(state.pending.length > 0);
  showError(`Query rejected: ${reason || 'the server gave no reason'}`);
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
  state.desired = q;
  markDirty('header');
  if (!sendQuery(q)) {
    showError('Not connected: the query will be sent when the connection is back.', 'note');
    writeHash(q);
  }
}

function writeHash(q) {
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
// Query form

const form = $('query');
const filterRows = $('filter-rows');
const sortRows = $('sort-rows');
const errorEl = $('query-error');
const applyBtn = $('apply');

function option(value, label) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = label;
  return o;
}

function fieldLabel(col) {
  return col.unit ? `${col.label} (${col.unit})` : col.label;
}

function fillFieldSelect(select, value) {
  select.replaceChildren(...state.columns.map((c) => option(c.key, fieldLabel(c))));
  if (value && !state.columnIndex.has(value)) select.append(option(value, humanize(value)));
  if (value) select.value = value;
}

function removeButton(label) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'icon-btn remove';
  b.title = label;
  b.setAttribute('aria-label', label);
  b.textContent = '×';
  return b;
}

function addFilterRow(f = { field: 'serial_number', op: '=', value: '' }) {
  if (filterRows.children.length >= MAX_FILTERS) return null;
  const row = document.createElement('div');
  row.className = 'qrow filter-row';
  const field = document.createElement('select');
  field.className = 'field';
  field.setAttribute('aria-label', 'Filter field');
  fillFieldSelect(field, f.field);
  const op = document.createElement('select');
  op.className = 'op';
  op.setAttribute('aria-label', 'Operator');
  op.append(...OPERATORS.map((o) => option(o.op, o.label)));
  if (!OPERATORS.some((o) => o.op === f.op)) op.append(option(f.op, f.op));
  op.value = f.op;
  const value = document.createElement('input');
  value.className = 'value';
  value.type = 'text';
  value.placeholder = 'value';
  value.setAttribute('aria-label', 'Value');
  value.value = f.value;
  const syncMode = () => {
    value.inputMode = NUMERIC_OPS.has(op.value) ? 'decimal' : 'text';
  };
  op.addEventListener('change', syncMode);
  syncMode();
  const remove = removeButton('Remove filter');
  remove.addEventListener('click', () => {
    row.remove();
    syncEmptyHints();
  });
  row.append(field, op, value, remove);
  filterRows.append(row);
  syncEmptyHints();
  return row;
}

function addSortRow(s) {
  if (sortRows.children.length >= MAX_SORTS) return null;
  const used = new Set([...sortRows.querySelectorAll('select.field')].map((el) => el.value));
  const sort = s ?? { field: (state.columns.find((c) => !used.has(c.key)) ?? state.columns[0]).key, dir: '<' };
  const row = document.createElement('div');
  row.className = 'qrow sort-row';
  const rank = document.createElement('span');
  rank.className = 'rank';
  const field = document.createElement('select');
  field.className = 'field';
  field.setAttribute('aria-label', 'Sort field');
  fillFieldSelect(field, sort.field);
  const dir = document.createElement('select');
  dir.className = 'dir';
  dir.setAttribute('aria-label', 'Direction');
  dir.append(...DIRECTIONS.map((d) => option(d.dir, d.label)));
  dir.value = sort.dir;
  const remove = removeButton('Remove sort key');
  remove.addEventListener('click', () => {
    row.remove();
    syncEmptyHints();
  });
  row.append(rank, field, dir, remove);
  sortRows.append(row);
  syncEmptyHints();
  return row;
}

function syncEmptyHints() {
  $('filter-empty').hidden = filterRows.children.length > 0;
  $('sort-empty').hidden = sortRows.children.length > 0;
  [...sortRows.children].forEach((row, i) => {
    row.querySelector('.rank').textContent = `${i + 1}.`;
  });
  $('add-filter').disabled = filterRows.children.length >= MAX_FILTERS;
  $('add-sort').disabled = sortRows.children.length >= MAX_SORTS;
}

function readForm() {
  const q = emptyQuery();
  for (const row of filterRows.children) {
    q.filters.push({
      field: row.querySelector('.field').value,
      op: row.querySelector('.op').value,
      value: row.querySelector('.value').value.trim(),
    });
  }
  for (const row of sortRows.children) {
    q.sorts.push({ field: row.querySelector('.field').value, dir: row.querySelector('.dir').value });
  }
  return q;
}

function writeForm(q) {
  filterRows.replaceChildren();
  sortRows.replaceChildren();
  q.filters.forEach((f) => addFilterRow(f));
  q.sorts.forEach((s) => addSortRow(s));
  syncEmptyHints();
}

function writeSorts(sorts) {
  sortRows.replaceChildren();
  sorts.forEach((s) => addSortRow(s));
  syncEmptyHints();
}

function refreshFieldSelects() {
  for (const select of form.querySelectorAll('select.field')) fillFieldSelect(select, select.value);
}

function showError(text, kind = 'error') {
  errorEl.textContent = text;
  errorEl.hidden = !text;
  errorEl.dataset.kind = kind;
}

function setApplying(on) {
  applyBtn.classList.toggle('busy', on);
  document.body.classList.toggle('applying', on);
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  showError('');
  applyQuery(readForm());
});
$('add-filter').addEventListener('click', () => addFilterRow()?.querySelector('.value').focus());
$('add-sort').addEventListener('click', () => addSortRow()?.querySelector('.field').focus());
$('reset').addEventListener('click', () => {
  writeForm(emptyQuery());
  showError('');
  applyQuery(emptyQuery());
});

// Clicking a header sorts by it (again: reverses); shift-click adds or flips a secondary key.
function onHeaderClick(field, additive) {
  let sorts = readForm().sorts;
  const at = sorts.findIndex((s) => s.field === field);
  if (additive) {
    if (at >= 0) sorts[at].dir = sorts[at].dir === '<' ? '>' : '<';
    else sorts.push({ field, dir: '<' });
  } else if (sorts.length === 1 && at === 0) {
    sorts[0].dir = sorts[0].dir === '<' ? '>' : '<';
  } else {
    sorts = [{ field, dir: '<' }];
  }
  writeSorts(sorts);
  showError('');
  applyQuery(readForm());
}

// ---------------------------------------------------------------------------------------------------
// Grid: a real <table> whose body holds only the visible window of rows between two spacer rows.

const scroller = $('scroller');
const grid = $('grid');
const colsEl = $('cols');
const headRow = $('head-row');
const tbody = $('body');
const spacerTop = $('spacer-top');
const spacerBottom = $('spacer-bottom');
const pool = []; // <tr> elements reused for whatever rows are visible
let rowHeight = 0;
let headHeight = 0;
let flashColor = '';
let newRowColor = '';

function readThemeColors() {
  const css = getComputedStyle(document.documentElement);
  flashColor = css.getPropertyValue('--flash').trim() || 'rgba(250, 204, 21, 0.45)';
  newRowColor = css.getPropertyValue('--new-row').trim() || 'rgba(34, 197, 94, 0.25)';
}

function buildColumns() {
  colsEl.replaceChildren(
    ...state.columns.map((c) => {
      const col = document.createElement('col');
      col.style.width = `${c.width}px`;
      return col;
    }),
  );
  headRow.replaceChildren(
    ...state.columns.map((c) => {
      const th = document.createElement('th');
      th.scope = 'col';
      th.dataset.field = c.key;
      th.title = c.key;
      if (c.kind === 'num' || c.numeric) th.classList.add('num');
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'th-btn';
      const label = document.createElement('span');
      label.className = 'th-label';
      label.textContent = c.label;
      btn.append(label);
      if (c.unit) {
        const unit = document.createElement('span');
        unit.className = 'unit';
        unit.textContent = c.unit;
        btn.append(unit);
      }
      const ind = document.createElement('span');
      ind.className = 'sort-ind';
      ind.setAttribute('aria-hidden', 'true');
      btn.append(ind);
      btn.addEventListener('click', (ev) => onHeaderClick(c.key, ev.shiftKey));
      th.append(btn);
      return th;
    }),
  );
  grid.style.width = `${state.columns.reduce((sum, c) => sum + c.width, 0)}px`;
  spacerTop.firstElementChild.colSpan = state.columns.length;
  spacerBottom.firstElementChild.colSpan = state.columns.length;
  for (const tr of pool) tr.remove();
  pool.length = 0;
  refreshFieldSelects();
  state.dirty.header = true;
}

function renderHeader() {
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

function makeRow() {
  const tr = document.createElement('tr');
  for (const c of state.columns) {
    const td = document.createElement('td');
    td.dataset.field = c.key;
    tr.append(td);
  }
  tr.rec = null;
  return tr;
}

function measure() {
  headHeight = headRow.offsetHeight || 38;
  if (!rowHeight) {
    const probe = pool[0] ?? makeRow();
    if (!probe.isConnected) tbody.insertBefore(probe, spacerBottom);
    rowHeight = probe.getBoundingClientRect().height || 34;
    if (!pool.includes(probe)) probe.remove();
  }
}

function renderGrid(now) {
  const rows = state.rows;
  const total = rows.length;
  if (!rowHeight || !headHeight) measure();
  const top = Math.max(0, scroller.scrollTop - headHeight);
  const view = scroller.clientHeight || window.innerHeight;
  const first = Math.max(0, Math.min(total, Math.floor(top / rowHeight) - OVERSCAN));
  const last = Math.min(total, Math.ceil((top + view) / rowHeight) + OVERSCAN);
  const count = last - first;

  while (pool.length < count) {
    const tr = makeRow();
    tbody.insertBefore(tr, spacerBottom);
    pool.push(tr);
  }
  while (pool.length > count) pool.pop().remove();

  setSpacer(spacerTop, first * rowHeight);
  setSpacer(spacerBottom, (total - last) * rowHeight);
  grid.setAttribute('aria-rowcount', String(total + 1));

  const visible = new Map();
  const columns = state.columns;
  for (let i = 0; i < count; i += 1) {
    const index = first + i;
    const rec = rows[index];
    const tr = pool[i];
    visible.set(rec, tr);
    if (tr.rec !== rec) {
      tr.rec = rec;
      tr.dataset.serial = rec.serial_number;
    }
    const cls = `${index % 2 ? 'odd' : 'even'}${rec.online === false ? ' offline' : ''}`;
    if (tr.cls !== cls) {
      tr.className = cls;
      tr.cls = cls;
    }
    if (tr.idx !== index) {
      tr.setAttribute('aria-rowindex', String(index + 2));
      tr.idx = index;
    }
    const cells = tr.cells;
    for (let j = 0; j < columns.length; j += 1) {
      const [text, cellCls = '', title = ''] = formatCell(columns[j], rec[columns[j].key], now);
      const td = cells[j];
      if (td.t !== text) {
        td.textContent = text;
        td.t = text;
      }
      if (td.c !== cellCls) {
        td.className = cellCls;
        td.c = cellCls;
      }
      if (td.ti !== title) {
        td.title = title;
        td.ti = title;
      }
    }
  }
  return visible;
}

function setSpacer(tr, px) {
  const hide = px <= 0;
  if (tr.hidden !== hide) tr.hidden = hide;
  const h = `${px}px`;
  if (tr.h !== h) {
    tr.firstElementChild.style.height = h;
    tr.h = h;
  }
}

function runFlashes(visible) {
  // Reduced motion only sets the default (see boot); a user who turns flashing on gets it.
  if (!state.flash) {
    state.flashQueue.clear();
    state.newRows.clear();
    return;
  }
  for (const rec of state.newRows) {
    visible.get(rec)?.animate([{ backgroundColor: newRowColor }, { backgroundColor: 'transparent' }], { duration: FLASH_MS * 2, easing: 'ease-out' });
  }
  state.newRows.clear();
  for (const [rec, fields] of state.flashQueue) {
    const tr = visible.get(rec);
    if (!tr) continue;
    for (const key of fields) {
      const j = state.columnIndex.get(key);
      if (j !== undefined) tr.cells[j].animate([{ backgroundColor: flashColor }, { backgroundColor: 'transparent' }], { duration: FLASH_MS, easing: 'ease-out' });
    }
  }
  state.flashQueue.clear();
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
  if (state.resortPending) {
    if (now - state.lastSort >= RESORT_INTERVAL_MS) {
      state.rows.sort(state.compare);
      state.resortPending = false;
      state.lastSort = now;
      state.dirty.grid = true;
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
    buildColumns();
    d.grid = true;
  }
  if (d.header) {
    d.header = false;
    renderHeader();
  }
  if (d.grid) {
    d.grid = false;
    runFlashes(renderGrid(now));
  }
  if (d.summary) {
    d.summary = false;
    renderSummary();
  }
}

// ---------------------------------------------------------------------------------------------------
// CSV export of the current view (all rows, not only the visible window), raw values, UTC timestamps.

function csvCell(v) {
  if (v === null || v === undefined) return '';
  let s = typeof v === 'object' ? JSON.stringify(v) : String(v);
  // Spreadsheets execute cells starting with these characters as formulas.
  if (typeof v === 'string' && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) || s !== s.trim() ? `"${s.replaceAll('"', '""')}"` : s;
}

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
  headHeight = 0;
  markDirty('grid');
}).observe(scroller);
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', readThemeColors);
window.addEventListener('online', () => {
  if (!link.ws) {
    link.attempt = 0;
    connect();
  }
});
window.addEventListener('hashchange', () => {
  const q = queryFromHash();
  if (!sameQuery(q, state.desired)) {
    writeForm(q);
    applyQuery(q);
  }
});

setInterval(() => {
  setText(rateEl, `${numberFormat.format(state.updatesThisSecond)} upd/s`);
  state.updatesThisSecond = 0;
  renderStatusText();
  // "12 s ago" moves on even when no message arrives.
  markDirty('grid');
}, 1000);

readThemeColors();
writeForm(state.desired);
markDirty('columns', 'grid', 'summary', 'header');
// ---------------------------------------------------------------------------------------------------
// Login (when the server runs with --auth required)

// The page's own requests: the server answers 401 without a Basic challenge, so no browser prompt.
const PAGE_HEADERS = { 'X-Requested-With': 'smartos-page' };
const account = { required: false, user: null };

/** `{auth: 'off'}`, `{auth: 'required', user, role, scope_owner}`, `{auth: 'required'}` (not logged in) or null. */
async function whoAmI() {
  try {
    const res = await fetch('/api/me', { headers: PAGE_HEADERS, credentials: 'same-origin' });
    if (res.status === 401) return { auth: 'required' };
    if (!res.ok) return null;
    return await res.json();
  } catch {
    return null;
  }
}

function showAccount(me) {
  account.required = me?.auth === 'required';
  account.user = me?.user ?? null;
  $('account').hidden = !account.user;
  setText($('account-name'), account.user ?? '');
  // A user limited to one owner's devices sees which (the server shows it nothing else).
  const scope = me?.scope_owner ? ` · ${me.scope_owner} only` : '';
  setText($('account-role'), me?.role ? `${me.role}${scope}` : '');
}

function showLogin(message) {
  clearTimeout(link.retryTimer);
  link.retryTimer = 0;
  // Detached first, so that its close does not schedule a reconnect.
  const ws = link.ws;
  link.ws = null;
  if (ws) ws.close();
  setStatus('offline');
  account.user = null;
  $('account').hidden = true;
  $('layout').hidden = true;
  $('login').hidden = false;
  const error = $('login-error');
  error.hidden = !message;
  setText(error, message ?? '');
  $('login-user').focus();
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const error = $('login-error');
  $('login-submit').disabled = true;
  try {
    const res = await fetch('/login', {
      method: 'POST',
      headers: { ...PAGE_HEADERS, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(new FormData(form)),
      credentials: 'same-origin',
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      error.hidden = false;
      setText(error, body.error ?? `login failed (${res.status})`);
      return;
    }
    $('login-password').value = '';
    $('login').hidden = true;
    $('layout').hidden = false;
    showAccount({ auth: 'required', user: body.user, role: body.role, scope_owner: body.scope_owner });
    link.attempt = 0;
    connect();
  } catch {
    error.hidden = false;
    setText(error, 'the server cannot be reached');
  } finally {
    $('login-submit').disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  try {
    await fetch('/logout', { method: 'POST', headers: PAGE_HEADERS, credentials: 'same-origin' });
  } finally {
    showLogin();
  }
});

async function start() {
  const me = await whoAmI();
  if (me?.auth === 'required' && !me.user) {
    account.required = true;
    showLogin();
    return;
  }
  showAccount(me);
  connect();
}

start();
