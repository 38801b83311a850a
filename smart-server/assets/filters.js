// The query form: filter and sort rows, reading and writing them, header clicks.

import { humanize } from './fields.js';
import { DIRECTIONS, NUMERIC_OPS, OPERATORS, emptyQuery } from './query.js';
import { state } from './state.js';

const MAX_FILTERS = 32;
const MAX_SORTS = 8;
const $ = (id) => document.getElementById(id);
let applyQuery = () => {};

/** The page's "apply this query" (set once by app.js). */
export function onApply(fn) {
  applyQuery = fn;
}


const form = $('query');
const filterRows = $('filter-rows');
const sortRows = $('sort-rows');
const errorEl = $('query-error');
const applyBtn = $('apply');

export function option(value, label) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = label;
  return o;
}

export function fieldLabel(col) {
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

export function readForm() {
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

export function writeForm(q) {
  filterRows.replaceChildren();
  sortRows.replaceChildren();
  q.filters.forEach((f) => addFilterRow(f));
  q.sorts.forEach((s) => addSortRow(s));
  syncEmptyHints();
}

export function writeSorts(sorts) {
  sortRows.replaceChildren();
  sorts.forEach((s) => addSortRow(s));
  syncEmptyHints();
}

export function refreshFieldSelects() {
  for (const select of form.querySelectorAll('select.field')) fillFieldSelect(select, select.value);
}

export function showError(text, kind = 'error') {
  errorEl.textContent = text;
  errorEl.hidden = !text;
  errorEl.dataset.kind = kind;
}

export function setApplying(on) {
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
export function onHeaderClick(field, additive) {
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

