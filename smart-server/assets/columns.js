// The column picker: which columns the table shows. Known fields are shown and extra fields (whatever
// else devices send, e.g. runtime flags like `charging`) hidden until picked; every choice the user
// makes is kept in localStorage, per field name, so it survives reloads and applies to fields that
// appear later. The filter and sort lists always offer every column.

const STORAGE_KEY = 'smart-os.columns';
const $ = (id) => document.getElementById(id);

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}');
    if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
      // Only own boolean entries: field names come from devices (`__proto__` included).
      return new Map(Object.entries(saved).filter(([, v]) => typeof v === 'boolean'));
    }
  } catch {
    // Unreadable: the defaults.
  }
  return new Map();
}

const choices = load();

function save() {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(Object.fromEntries(choices)));
  } catch {
    // Storage full or denied: the choice holds for this page only.
  }
}

/** Whether `col` is shown: the user's choice, else known fields yes and extra fields no. */
export function isShown(col) {
  return choices.get(col.key) ?? !col.extra;
}

let onChange = () => {};
let columns = [];

/** (Re)draw the picker's list of `cols`; `changed` is called after the user changes a choice. */
export function renderPicker(cols, changed) {
  columns = cols;
  onChange = changed;
  const list = $('column-list');
  const items = cols.map((c) => {
    const label = document.createElement('label');
    label.className = 'column-choice';
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.dataset.field = c.key;
    box.checked = isShown(c);
    box.addEventListener('change', () => {
      choices.set(c.key, box.checked);
      save();
      onChange();
    });
    const name = document.createElement('span');
    name.textContent = c.unit ? `${c.label} (${c.unit})` : c.label;
    label.append(box, name);
    if (c.extra) {
      const tag = document.createElement('span');
      tag.className = 'column-tag';
      tag.textContent = 'extra';
      label.append(tag);
    }
    return label;
  });
  list.replaceChildren(...items);
  const hidden = cols.filter((c) => !isShown(c)).length;
  $('columns-hidden').textContent = hidden ? ` (${hidden} hidden)` : '';
}

function setAll(pick) {
  for (const c of columns) choices.set(c.key, pick(c));
  save();
  onChange();
}

$('columns-all').addEventListener('click', () => setAll(() => true));
$('columns-default').addEventListener('click', () => {
  choices.clear();
  save();
  onChange();
});

const button = $('columns-button');
const panel = $('columns-panel');
button.addEventListener('click', () => {
  panel.hidden = !panel.hidden;
  button.setAttribute('aria-expanded', String(!panel.hidden));
});
document.addEventListener('click', (ev) => {
  if (!panel.hidden && !panel.contains(ev.target) && !button.contains(ev.target)) {
    panel.hidden = true;
    button.setAttribute('aria-expanded', 'false');
  }
});
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !panel.hidden) {
    panel.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    button.focus();
  }
});
