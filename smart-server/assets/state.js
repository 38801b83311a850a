// The dashboard's state, shared by its modules.

import { KNOWN_COLUMNS } from './fields.js';
import { comparator, emptyQuery, queryFromHash } from './query.js';
import { remoteState } from './stale.js';


export const state = {
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
  moved: new Set(), // rows whose sort keys changed since the last re-sort (order.js)
  lastSort: 0,
  hadInit: false,
  dirty: { grid: true, columns: true, summary: true, header: true },
  updatesThisSecond: 0,
  visible: [], // the columns shown (columns.js), in order
  visibleIndex: new Map(),
  paused: false,
  held: [], // frames that arrived while paused, in order
  heldCount: 0, // the changes and INITs in held (a batched UPDT counts each of its changes)
  heldOverflow: false,
  pointerOnRows: false, // a mouse rests on the rows (app.js: no re-sort meanwhile)
  touchHoldUntil: 0, // no re-sort before this time (ms): a touch on the rows holds the order (app.js)
  remote: remoteState(), // which devices may be out of date while Redis is unreachable (stale.js)
};
state.columns.forEach((c, i) => state.columnIndex.set(c.key, i));

export function setActiveQuery(q) {
  state.accepted = q;
  state.compare = comparator(q.sorts);
  state.sortFields = new Set(q.sorts.map((s) => s.field));
  state.filterFields = new Set(q.filters.map((f) => f.field));
}
