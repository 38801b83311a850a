// Which fields the dashboard knows: the server's field table (GET /api/fields) and how to show each.

// Which fields are known, and their types, comes from the server: GET /api/fields, generated from
// smart-proto's one table of PROTOCOL.md §6 (`record_fields!`). This page only says how to show them:
// labels, units, widths and display order. Power and capacity carry their unit in the cell (W or kW, kWh:
// format.js), other units are in the header. A field
// the server lists that has no entry here is shown after these, labelled from its name and typed from
// the list; an entry for a field the server does not list is dropped.
const COLUMN_LOOKS = [
  { key: 'serial_number', label: 'Serial', kind: 'text', width: 104 },
  { key: 'online', label: 'Status', kind: 'status', width: 100 },
  { key: 'last_status_update', label: 'Last update', kind: 'ago', width: 120 },
  { key: 'battery', label: 'Battery', unit: '%', kind: 'battery', width: 104 },
  { key: 'power_income', label: 'Income', kind: 'power', width: 108 },
  { key: 'power_inject', label: 'Inject', kind: 'power', width: 104 },
  { key: 'power_consumption', label: 'Consumption', kind: 'power', width: 136 },
  { key: 'capacity', label: 'Capacity', kind: 'energy', width: 116 },
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

export const FIELDS = await loadFields();
const isNumericType = (type) => type === 'number' || type === 'integer';
export const KNOWN_KEYS = new Set(FIELDS.map((f) => f.name));
export const KNOWN_COLUMNS = [
  ...COLUMN_LOOKS.filter((c) => KNOWN_KEYS.has(c.key)),
  ...FIELDS.filter((f) => !COLUMN_LOOKS.some((c) => c.key === f.name)).map((f) => ({
    key: f.name,
    label: humanize(f.name),
    kind: isNumericType(f.type) ? 'num' : f.type === 'timestamp' ? 'time' : 'text',
    width: Math.max(96, Math.min(220, humanize(f.name).length * 8 + 44)),
  })),
];
export const NUMERIC_FIELDS = new Set(FIELDS.filter((f) => isNumericType(f.type)).map((f) => f.name));

export function humanize(key) {
  const words = key.replace(/^_+/, '').split('_').filter(Boolean).join(' ');
  return words ? words[0].toUpperCase() + words.slice(1) : key;
}
