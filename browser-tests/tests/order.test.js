// The table's incremental re-sort (smart-server/assets/order.js, no DOM), in node: after random rows
// change their keys, merging the moved rows back gives exactly what a full sort gives.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { resorted } from '../../smart-server/assets/order.js';

// Deterministic pseudo-random numbers (the run is the same every time).
function random(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const compare = (a, b) => a.v - b.v || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

test('re-sorting only the moved rows gives what a full sort gives', () => {
  const next = random(7);
  for (const [size, movedCount] of [[0, 0], [1, 1], [10, 3], [1000, 0], [1000, 17], [1000, 249], [1000, 600]]) {
    const rows = Array.from({ length: size }, (_, id) => ({ id, v: Math.floor(next() * 50) }));
    rows.sort(compare);
    const moved = new Set();
    while (moved.size < movedCount) {
      const row = rows[Math.floor(next() * size)];
      row.v = Math.floor(next() * 50);
      moved.add(row);
    }
    // A moved row that has left the rows in the meantime is not brought back.
    const gone = { id: -1, v: 0 };
    moved.add(gone);
    const expected = rows.slice().sort(compare);
    const got = resorted(rows, moved, compare);
    assert.deepEqual(got.map((r) => r.id), expected.map((r) => r.id), `${size} rows, ${movedCount} moved`);
    assert.ok(!got.includes(gone));
  }
});
