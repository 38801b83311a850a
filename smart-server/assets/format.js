// Formatting of values for cells, cards, the device page and CSV.


export const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
export const pad2 = (n) => (n < 10 ? '0' : '') + n;

export function parseTimestamp(text) {
  return typeof text === 'string' ? Date.parse(text) : Number.NaN;
}

// Local time as YYYY-MM-DD HH:MM:SS: unambiguous in every locale and sorts as text.
export function formatLocal(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function formatAgo(ms, now) {
  const s = Math.max(0, Math.floor((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function formatPlain(v) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'number') return numberFormat.format(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// Units and meaning. Power in W, shown in kW from 1,000 W; capacity is reported in watt-seconds and
// shown in kWh; battery in %. Outside a field's plausible range a value is marked, never hidden (the
// ranges are this page's choice: a SolMate and the household behind it, generously bounded).
export const PLAUSIBLE = {
  battery: [0, 100],
  power_income: [0, 3000],
  power_inject: [0, 3000],
  power_consumption: [0, 30000],
  capacity: [0, 360000000],
  pv_connectors: [0, 4],
};

const WS_PER_KWH = 3600000;
const unitFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

/** `350 W`, `1.23 kW`. */
export function formatPower(w) {
  return Math.abs(w) >= 1000 ? `${unitFormat.format(w / 1000)} kW` : `${unitFormat.format(w)} W`;
}

/** Watt-seconds as `1.44 kWh`. */
export function formatWattSeconds(ws) {
  return `${unitFormat.format(ws / WS_PER_KWH)} kWh`;
}

/** A field's value with its unit, for the device page and cards; `—` when missing. */
export function formatValue(key, v) {
  if (typeof v !== 'number') return formatPlain(v);
  if (key.startsWith('power_')) return formatPower(v);
  if (key === 'capacity') return formatWattSeconds(v);
  if (key === 'battery') return `${numberFormat.format(v)} %`;
  return numberFormat.format(v);
}

/** The plausible range of `key` as text, when `v` is outside it; else ''. */
export function implausible(key, v) {
  const range = PLAUSIBLE[key];
  if (!range || typeof v !== 'number' || (v >= range[0] && v <= range[1])) return '';
  const [lo, hi] = range;
  const show = (x) => formatValue(key, x);
  return `outside the plausible range ${show(lo)} – ${show(hi)}`;
}

// Returns [text, className, title, barPercent] for one cell; the last three may be undefined.
export function formatCell(col, v, now) {
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
    case 'battery': {
      const bad = implausible(col.key, v);
      if (typeof v !== 'number') return [formatPlain(v), 'num'];
      return [formatPlain(v), bad ? 'num bat implausible' : 'num bat', bad, Math.max(0, Math.min(100, v))];
    }
    case 'power':
    case 'energy': {
      const bad = implausible(col.key, v);
      return [formatValue(col.key, v), bad ? 'num implausible' : 'num', bad];
    }
    case 'num': {
      const bad = implausible(col.key, v);
      return [formatPlain(v), bad ? 'num implausible' : 'num', bad];
    }
    default:
      return [formatPlain(v), col.numeric ? 'num' : undefined];
  }
}

export function csvCell(v) {
  if (v === null || v === undefined) return '';
  let s = typeof v === 'object' ? JSON.stringify(v) : String(v);
  // Spreadsheets execute cells starting with these characters as formulas.
  if (typeof v === 'string' && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) || s !== s.trim() ? `"${s.replaceAll('"', '""')}"` : s;
}

