// The fleet table's drawing: only the rows in (and near) the viewport are in the DOM (the rows above the
// window are the body's top padding), each a size- and layout-contained block of fixed-width cells that
// stays bound to its record while that record remains in the window.
//
// Why (measured with 10,000 devices, 1,000 updates/s, sorted by a field the updates change; figures in
// docs/server.md, "the dashboard page assets"): as a real table with rows bound to positions, every
// re-sort rewrote every drawn cell (a row shifting by one place changes all the rows below it) and every
// changed cell laid out the whole table again; the page's longest tasks were that layout and the text
// shaping of ~460 cells. Here a row that shifts keeps its cells (at most a class changes and its place in
// the body), a changed cell lays out its own row only, and cells are formatted again only for rows whose
// record changed (plus the time-relative "N s ago" column). Placing rows by `transform` instead measured
// worse: a paint property node per row made style and compositing updates cost more than layout saved.

import { formatCell } from './format.js';
import { state } from './state.js';
import { isStale } from './stale.js';
import { isShown, renderPicker } from './columns.js';
import { onHeaderClick, refreshFieldSelects } from './filters.js';

const OVERSCAN = 10;
const SPARE_ROWS = 40;

const $ = (id) => document.getElementById(id);
const scroller = $('scroller');
const grid = $('grid');
const headRow = $('head-row');
const tbody = $('body');

let drawn = []; // <tr>s in the window, top to bottom (DOM order = view order)
const spare = []; // detached <tr>s of the current columns, for rows coming into view
let first = 0; // view index of drawn[0]
let rowHeight = 0;
let headHeight = 0;
let bodyHeight = -1;
let bodyPad = -1;
let flashColor = '';
let newRowColor = '';

export function readThemeColors() {
  const css = getComputedStyle(document.documentElement);
  flashColor = css.getPropertyValue('--flash').trim() || 'rgba(250, 204, 21, 0.45)';
  newRowColor = css.getPropertyValue('--new-row').trim() || 'rgba(34, 197, 94, 0.25)';
}

/** Sizes change (a resize, the phone layout): measured again on the next draw. */
export function remeasure({ rows = false } = {}) {
  headHeight = 0;
  if (rows) rowHeight = 0;
}

/** The records drawn now, top to bottom, and the view index of the first. */
export function drawnWindow() {
  return { at: first, recs: drawn.map((tr) => tr.rec) };
}

/** (Re)build the header and drop the drawn rows, after the shown columns changed. */
export function buildColumns(changed) {
  // Shown columns: the picker's choice (columns.js); the filter and sort lists keep every column.
  state.visible = state.columns.filter(isShown);
  state.visibleIndex = new Map(state.visible.map((c, i) => [c.key, i]));
  renderPicker(state.columns, changed);
  headRow.replaceChildren(
    ...state.visible.map((c) => {
      const th = document.createElement('th');
      th.scope = 'col';
      th.setAttribute('role', 'columnheader');
      th.dataset.field = c.key;
      th.title = c.key;
      th.style.width = `${c.width}px`;
      if (c.numeric || ['num', 'battery', 'power', 'energy'].includes(c.kind)) th.classList.add('num');
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
  grid.style.width = `${state.visible.reduce((sum, c) => sum + c.width, 0)}px`;
  for (const tr of drawn) tr.remove();
  drawn = [];
  spare.length = 0;
  refreshFieldSelects();
}

function makeRow() {
  const tr = document.createElement('tr');
  tr.setAttribute('role', 'row');
  for (const c of state.visible) {
    const td = document.createElement('td');
    td.setAttribute('role', 'cell');
    td.dataset.field = c.key;
    td.style.width = `${c.width}px`;
    // The label of the phone's cards (style.css shows it before the value there).
    td.dataset.label = c.unit ? `${c.label} (${c.unit})` : c.label;
    if (c.key === 'serial_number') {
      // A link to the device's page: reachable with Tab and Enter, and openable in a new tab.
      td.link = document.createElement('a');
      td.link.className = 'row-link';
      // Shown (style.css) while the row is `remote-stale`: Redis is unreachable and the device is not
      // connected to this instance (stale.js).
      const tag = document.createElement('span');
      tag.className = 'row-stale';
      // The word is the stylesheet's (`::after`): the cell's text stays the serial.
      tag.title = 'Redis is unreachable: this device is not connected to this server, its values may be out of date';
      td.append(td.link, tag);
    }
    tr.append(td);
  }
  tr.rec = null;
  tr.idx = -1;
  return tr;
}

function measure() {
  headHeight = headRow.offsetHeight;
  if (!rowHeight) {
    const probe = drawn[0] ?? makeRow();
    // Styled as a device's row (the phone's cards are `tr[data-serial]`).
    if (!probe.isConnected) {
      probe.dataset.serial = '';
      tbody.append(probe);
    }
    rowHeight = probe.getBoundingClientRect().height || 34;
    if (!drawn.includes(probe)) {
      probe.remove();
      delete probe.dataset.serial;
    }
  }
}

/**
 * Draw the window of `state.rows` around the viewport; `touched` holds the records whose values
 * changed since the last draw (the others keep their cells, but for "N s ago").
 * Returns record -> <tr> for the drawn rows (for the flashes).
 */
export function renderGrid(now, touched) {
  const rows = state.rows;
  const total = rows.length;
  // Read every size before the first write of this frame: no layout forced in between.
  if (!rowHeight || !headHeight) measure();
  const top = Math.max(0, scroller.scrollTop - headHeight);
  const view = scroller.clientHeight || window.innerHeight;
  const from = Math.max(0, Math.min(total, Math.floor(top / rowHeight) - OVERSCAN));
  const to = Math.min(total, Math.ceil((top + view) / rowHeight) + OVERSCAN);

  // Rows whose record stays in the window keep their <tr>; the others are reused for the newcomers.
  const byRec = new Map();
  for (const tr of drawn) byRec.set(tr.rec, tr);
  const next = new Array(to - from);
  const kept = new Set();
  for (let i = from; i < to; i += 1) {
    const tr = byRec.get(rows[i]);
    if (tr) {
      next[i - from] = tr;
      kept.add(tr);
    }
  }
  const free = drawn.filter((tr) => !kept.has(tr));
  for (let k = 0; k < next.length; k += 1) {
    if (next[k]) continue;
    const tr = free.pop() ?? spare.pop() ?? makeRow();
    tr.rec = null;
    next[k] = tr;
  }
  for (const tr of free) {
    tr.remove();
    tr.rec = null;
    if (spare.length < SPARE_ROWS) spare.push(tr);
  }
  placeInOrder(next);
  drawn = next;
  first = from;

  // The rows before the window are the body's top padding, those after it the rest of its height.
  const height = total * rowHeight;
  if (bodyHeight !== height) {
    tbody.style.height = `${height}px`;
    bodyHeight = height;
  }
  const pad = from * rowHeight;
  if (bodyPad !== pad) {
    tbody.style.paddingTop = `${pad}px`;
    bodyPad = pad;
  }
  grid.setAttribute('aria-rowcount', String(total + 1));

  const visible = new Map();
  const columns = state.visible;
  for (let k = 0; k < next.length; k += 1) {
    const index = from + k;
    const rec = rows[index];
    const tr = next[k];
    visible.set(rec, tr);
    const fresh = tr.rec !== rec;
    if (fresh) {
      tr.rec = rec;
      tr.dataset.serial = rec.serial_number;
    }
    if (tr.idx !== index) {
      tr.setAttribute('aria-rowindex', String(index + 2));
      tr.idx = index;
    }
    // Zebra stripes by view index: a row shifted by one place changes its background only (no layout).
    // While Redis is unreachable, a device not connected here is `remote-stale` (its badge shows).
    const cls = `${index % 2 ? 'odd' : 'even'}${rec.online === false ? ' offline' : ''}${isStale(state.remote, rec.serial_number) ? ' remote-stale' : ''}`;
    if (tr.cls !== cls) {
      tr.className = cls;
      tr.cls = cls;
    }
    const cells = tr.cells;
    const every = fresh || touched.has(rec);
    for (let j = 0; j < columns.length; j += 1) {
      if (every || columns[j].kind === 'ago') writeCell(cells[j], columns[j], rec, now);
    }
  }
  return visible;
}

function writeCell(td, col, rec, now) {
  const [text, cellCls = '', title = '', bar = -1] = formatCell(col, rec[col.key], now);
  if (td.t !== text) {
    if (td.link) {
      td.link.textContent = text;
      td.link.href = `#/device/${encodeURIComponent(rec.serial_number)}`;
    } else td.textContent = text;
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
  // The battery bar: a background sized by a custom property, no extra element.
  if (td.b !== bar) {
    if (bar < 0) td.style.removeProperty('--bar');
    else td.style.setProperty('--bar', `${bar}%`);
    td.b = bar;
  }
}

// Put the <tr>s of `next` into the body in that order, moving as few as possible: the ones already in
// the body in a longest increasing run of their old places stay, the others are inserted (a moved row
// is taken out of layout and put back, so one row jumping ten places should cost one move, not ten).
function placeInOrder(next) {
  const at = new Map();
  let k = 0;
  for (let el = tbody.firstElementChild; el; el = el.nextElementSibling) at.set(el, k++);
  const stay = new Set(longestIncreasing(next.map((tr) => at.get(tr) ?? -1)).map((i) => next[i]));
  let after = null;
  for (let i = next.length - 1; i >= 0; i -= 1) {
    if (!stay.has(next[i])) tbody.insertBefore(next[i], after);
    after = next[i];
  }
}

/** Indices into `seq` of a longest strictly increasing subsequence of its non-negative values. */
export function longestIncreasing(seq) {
  const tails = []; // tails[l]: index of the smallest tail of an increasing run of length l + 1
  const prev = new Array(seq.length).fill(-1);
  for (let i = 0; i < seq.length; i += 1) {
    const v = seq[i];
    if (v < 0) continue;
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (seq[tails[mid]] < v) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) prev[i] = tails[lo - 1];
    tails[lo] = i;
  }
  const out = [];
  for (let i = tails.length ? tails[tails.length - 1] : -1; i >= 0; i = prev[i]) out.push(i);
  return out.reverse();
}

export function runFlashes(visible) {
  // Reduced motion only sets the default (see boot); a user who turns flashing on gets it.
  if (!state.flash) {
    state.flashQueue.clear();
    state.newRows.clear();
    return;
  }
  for (const rec of state.newRows) {
    visible.get(rec)?.animate([{ backgroundColor: newRowColor }, { backgroundColor: 'transparent' }], { duration: 1800, easing: 'ease-out' });
  }
  state.newRows.clear();
  for (const [rec, fields] of state.flashQueue) {
    const tr = visible.get(rec);
    if (!tr) continue;
    for (const key of fields) {
      const j = state.visibleIndex.get(key);
      if (j !== undefined) tr.cells[j].animate([{ backgroundColor: flashColor }, { backgroundColor: 'transparent' }], { duration: 900, easing: 'ease-out' });
    }
  }
  state.flashQueue.clear();
}
