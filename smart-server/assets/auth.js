// The login (when the server runs with --auth required): the form, who is logged in, Log out.

// The page's own requests: the server answers 401 without a Basic challenge, so no browser prompt.
export const PAGE_HEADERS = { 'X-Requested-With': 'smartos-page' };
export const account = { required: false, user: null };

const $ = (id) => document.getElementById(id);

/** `{auth: 'off'}`, `{auth: 'required', user, role, scope_owner}`, `{auth: 'required'}` (not logged in) or null. */
export async function whoAmI() {
  try {
    const res = await fetch('/api/me', { headers: PAGE_HEADERS, credentials: 'same-origin' });
    if (res.status === 401) return { auth: 'required' };
    if (!res.ok) return null;
    return await res.json();
  } catch {
    return null;
  }
}

/** The user and role in the top bar (hidden when no one is logged in). */
export function showAccount(me) {
  account.required = me?.auth === 'required';
  account.user = me?.user ?? null;
  $('account').hidden = !account.user;
  $('account-name').textContent = account.user ?? '';
  // A user limited to one owner's devices sees which (the server shows it nothing else).
  const scope = me?.scope_owner ? ` · ${me.scope_owner} only` : '';
  $('account-role').textContent = me?.role ? `${me.role}${scope}` : '';
}

/** The login form, with `message` above it (if any). */
export function showLoginForm(message) {
  account.user = null;
  $('account').hidden = true;
  $('login').hidden = false;
  const error = $('login-error');
  error.hidden = !message;
  error.textContent = message ?? '';
  $('login-user').focus();
}

let loggedIn = () => {};
let loggedOut = () => {};

/** What the page does after a login, and after a logout (set once by app.js). */
export function onLogin(afterLogin, afterLogout) {
  loggedIn = afterLogin;
  loggedOut = afterLogout;
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const error = $('login-error');
  $('login-submit').disabled = true;
  try {
    const res = await fetch('/login', {
      method: 'POST',
      headers: { ...PAGE_HEADERS, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(new FormData(form)),
      credentials: 'same-origin',
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      error.hidden = false;
      error.textContent = body.error ?? `login failed (${res.status})`;
      return;
    }
    $('login-password').value = '';
    $('login').hidden = true;
    showAccount({ auth: 'required', user: body.user, role: body.role, scope_owner: body.scope_owner });
    loggedIn();
  } catch {
    error.hidden = false;
    error.textContent = 'the server cannot be reached';
  } finally {
    $('login-submit').disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  try {
    await fetch('/logout', { method: 'POST', headers: PAGE_HEADERS, credentials: 'same-origin' });
  } finally {
    loggedOut();
  }
});
