// Keeping the table's rows in order while values change (no DOM, no fetch: tested in node).

// `rows` in `compare`'s order again, after the rows in `moved` (a Set) changed their sort keys while
// the others kept their order: the moved rows are taken out, sorted, and merged back in one pass —
// a few hundred moved rows among 10,000 cost a fraction of a full sort. Rows in `moved` that are not
// in `rows` are ignored. Most rows moved: a full sort. Returns the new array.
export function resorted(rows, moved, compare) {
  if (moved.size * 4 > rows.length) return rows.slice().sort(compare);
  const stay = [];
  const out = [];
  for (const row of rows) (moved.has(row) ? out : stay).push(row);
  out.sort(compare);
  const merged = new Array(rows.length);
  let i = 0;
  let j = 0;
  let k = 0;
  while (i < stay.length && j < out.length) merged[k++] = compare(stay[i], out[j]) <= 0 ? stay[i++] : out[j++];
  while (i < stay.length) merged[k++] = stay[i++];
  while (j < out.length) merged[k++] = out[j++];
  return merged;
}
