// Queries (PROTOCOL.md §8): {filters: [{field, op, value}], sorts: [{field, dir}]}, their clauses, the
// page's URL hash, and the local matching and ordering that mirror the server's.

import { NUMERIC_FIELDS } from './fields.js';

// Operator labels of PROTOCOL.md §8: the wire symbol first, then what it means.
export const OPERATORS = [
  { op: '=', label: '= contains' },
  { op: '==', label: '== equals' },
  { op: '<', label: '< less than' },
  { op: '>', label: '> greater than' },
  { op: '<=', label: '<= at most' },
  { op: '>=', label: '>= at least' },
  { op: '^', label: '^ starts with' },
];
export const NUMERIC_OPS = new Set(['==', '<', '>', '<=', '>=']);
export const DIRECTIONS = [
  { dir: '<', label: 'Ascending' },
  { dir: '>', label: 'Descending' },
];




export const emptyQuery = () => ({ filters: [], sorts: [] });

export function toClauses(q) {
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

export const sameQuery = (a, b) => JSON.stringify(toClauses(a)) === JSON.stringify(toClauses(b));
export const isEmptyQuery = (q) => q.filters.length === 0 && q.sorts.length === 0;

export const NUMBER_TEXT = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

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
export function matches(q, rec) {
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
export function comparator(sorts) {
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

export function queryToHash(q) {
  const params = new URLSearchParams();
  for (const c of toClauses(q)) params.append('q', c);
  const text = params.toString();
  return text ? `#${text}` : '';
}

export function queryFromHash() {
  try {
    return fromClauses(new URLSearchParams(location.hash.slice(1)).getAll('q'));
  } catch {
    return emptyQuery();
  }
}
