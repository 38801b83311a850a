// The query form: filter and sort rows, reading and writing them, header clicks.

import { humanize } from './fields.js';
import { DIRECTIONS, NUMBER_TEXT, NUMERIC_OPS, OPERATORS, emptyQuery, toClauses } from './query.js';
import { state } from './state.js';

const MAX_FILTERS = 32;
const MAX_SORTS = 8;
// Fields whose value input offers the fleet's values (a datalist, refreshed when the form is opened).
const LISTED_FIELDS = ['country', 'software_version', 'solmate_version', 'owner'];
const MAX_LISTED = 200;
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

function labelledSelect(className, label) {
  const el = document.createElement('select');
  el.className = className;
  el.setAttribute('aria-label', label);
  return el;
}

function addFilterRow(f = { field: 'serial_number', op: '=', value: '' }) {
  if (filterRows.children.length >= MAX_FILTERS) return null;
  const row = document.createElement('div');
  row.className = 'qrow filter-row';
  const field = labelledSelect('field', 'Filter field');
  fillFieldSelect(field, f.field);
  const op = labelledSelect('op', 'Operator');
  op.append(...OPERATORS.map((o) => option(o.op, o.label)));
  if (!OPERATORS.some((o) => o.op === f.op)) op.append(option(f.op, f.op));
  op.value = f.op;
  const value = document.createElement('input');
  value.className = 'value';
  value.placeholder = 'value';
  value.setAttribute('aria-label', 'Value');
  const error = document.createElement('p');
  error.className = 'clause-error';
  error.setAttribute('role', 'alert');
  error.hidden = true;
  // Typed by operator: the comparisons take numbers (a number input); contains and starts-with take
  // text, with the fleet's values offered for the listed fields. A value that does not fit the
  // number input (from the URL) keeps a text input, so the user sees what was refused.
  const syncMode = () => {
    const numeric = NUMERIC_OPS.has(op.value) && (value.value === '' || NUMBER_TEXT.test(value.value.trim()));
    const type = numeric ? 'number' : 'text';
    if (value.type !== type) {
      const text = value.value;
      value.type = type;
      value.value = text;
    }
    value.step = 'any';
    value.inputMode = NUMERIC_OPS.has(op.value) ? 'decimal' : 'text';
    if (!numeric && LISTED_FIELDS.includes(field.value)) value.setAttribute('list', listFor(field.value));
    else value.removeAttribute('list');
    setClauseError(row, '');
  };
  value.type = NUMERIC_OPS.has(f.op) && NUMBER_TEXT.test(f.value.trim()) ? 'number' : 'text';
  value.value = f.value;
  op.addEventListener('change', syncMode);
  field.addEventListener('change', syncMode);
  value.addEventListener('input', () => setClauseError(row, ''));
  const remove = removeButton('Remove filter');
  remove.addEventListener('click', () => {
    row.remove();
    syncEmptyHints();
  });
  row.append(field, op, value, remove, error);
  filterRows.append(row);
  syncMode();
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
  const field = labelledSelect('field', 'Sort field');
  fillFieldSelect(field, sort.field);
  const dir = labelledSelect('dir', 'Direction');
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

// A datalist of the fleet's values of `key` (the records this dashboard holds), made once per field.
function listFor(key) {
  const id = `values-${key}`;
  let list = document.getElementById(id);
  if (!list) {
    list = document.createElement('datalist');
    list.id = id;
    document.body.append(list);
  }
  const values = new Set();
  for (const rec of state.records.values()) {
    const v = rec[key];
    if (typeof v === 'string' && v !== '') values.add(v);
    if (values.size >= MAX_LISTED) break;
  }
  list.replaceChildren(...[...values].sort().map((v) => option(v, v)));
  return id;
}

function setClauseError(row, text) {
  const el = row.querySelector('.clause-error');
  el.textContent = text;
  el.hidden = !text;
  row.querySelector('.value').setAttribute('aria-invalid', String(Boolean(text)));
}

/** Check the form's filters before sending: a message next to each bad clause; whether all are fine. */
function checkForm() {
  let ok = true;
  for (const row of filterRows.children) {
    const op = row.querySelector('.op').value;
    const input = row.querySelector('.value');
    const value = input.value.trim();
    let problem = '';
    if (input.validity.badInput) problem = 'This is not a number.';
    else if (value === '') problem = 'Enter a value.';
    else if (NUMERIC_OPS.has(op) && !NUMBER_TEXT.test(value)) problem = `“${op}” compares numbers: enter a number.`;
    setClauseError(row, problem);
    if (problem && ok) input.focus();
    ok &&= !problem;
  }
  return ok;
}

// The server's reason for refusing a clause, in plain words, next to that clause when it is in the
// form; false when no row matches (the caller shows it above the form).
const PLAIN = [
  [/operator "(.*)" compares numbers, but "(.*)" is not a number/, (m) => `“${m[2]}” is not a number, and “${m[1]}” compares numbers.`],
  [/value is (\d+) bytes long, more than (\d+)/, (m) => `This value is too long: at most ${m[2]} bytes.`],
  [/field name "(.*)" may only contain/, () => 'A field name may only hold letters, digits and _.'],
  [/unknown operator "(.*)"/, (m) => `“${m[1]}” is not an operator.`],
];

export function showClauseError(reason) {
  const m = /^bad query clause "((?:[^"\\]|\\.)*)": (.*)$/.exec(reason ?? '');
  if (!m) return false;
  let clause;
  try {
    clause = JSON.parse(`"${m[1]}"`);
  } catch {
    return false; // Rust's escapes beyond JSON's (a control character in the clause): not matched.
  }
  const text = PLAIN.map(([re, say]) => [re.exec(m[2]), say]).find(([hit]) => hit);
  const words = text ? text[1](text[0]) : `${m[2][0].toUpperCase()}${m[2].slice(1)}.`;
  const rows = [...filterRows.children];
  const clauses = toClauses(readForm());
  const at = clauses.indexOf(clause);
  if (at < 0 || at >= rows.length) return false;
  setClauseError(rows[at], words);
  return true;
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
  if (!checkForm()) return;
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

