// The key-management page of flask-tokenreq (KeyAdmin): a ticket becomes a
// session, then the JSON API under <body data-prefix> lists, creates, rotates
// and revokes keys. No framework, no build step; every change refetches the
// list (nothing optimistic), and a 401/403 anywhere closes the page behind the
// access gate. A new key's secret lives in the DOM only while its dialog is open.

const prefix = document.body.dataset.prefix || '';
const CSRF_HEADER = 'X-TokenReq-CSRF';

const $ = (id) => document.getElementById(id);

/** A refused or failed request: HTTP status (0: no answer), Ably code, message. */
class RequestError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** Worth trying again unchanged: no answer, a server error, or a rate limit. */
  get retryable() {
    return this.status === 0 || this.status >= 500 || this.status === 429 || this.status === 408;
  }

  get describe() {
    if (this.status === 0) return this.message;
    return this.code ? `${this.message} (${this.code})` : this.message;
  }
}

/** The session from the exchange or GET api/session: actor, scopes, csrf, expires. */
let session = null;
let gated = false;

// -- requests ---------------------------------------------------------------------

async function call(method, path, body, gate = true) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && session) headers[CSRF_HEADER] = session.csrf;
  let response;
  try {
    response = await fetch(prefix + path, init);
  } catch (_) {
    throw new RequestError(0, null, 'Could not reach the server. Check your connection, then retry.');
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.ok && data !== null) return data;
  const error = data && typeof data.error === 'object' && data.error ? data.error : {};
  const message =
    typeof error.message === 'string' && error.message
      ? error.message
      : `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
  const failure = new RequestError(response.status, error.code ?? null, message);
  if (gate && (response.status === 401 || response.status === 403)) showGate(failure);
  throw failure;
}

// -- the access gate ------------------------------------------------------------------

/** Block the page: no session (any more), or this session may not do that. */
function showGate(error, how = 'session') {
  if (gated) return;
  gated = true;
  // The server's message says what happened ("ticket expired: ..."); lead with it.
  const said = error.message.charAt(0).toUpperCase() + error.message.slice(1);
  const code = error.code ? ` (${error.code})` : '';
  let reason;
  if (how === 'start') {
    reason = 'You have no key-management session in this browser.';
  } else if (how === 'ticket') {
    reason = `This link cannot be used. ${said}${code}.`;
  } else if (error.status === 403) {
    reason = `Refused. ${said}${code}.`;
  } else {
    reason = `Your session has ended. ${said}${code}.`;
  }
  reason = reason.replace(/\.\.$/, '.');
  session = null;
  for (const id of ['create-dialog', 'rotate-dialog', 'revoke-dialog']) {
    const dialog = $(id);
    if (dialog.open) dialog.close();
  }
  // The secret dialog stays open if it is: its key is needed, and it leaves with it.
  $('gate-reason').textContent = reason;
  $('loading').hidden = true;
  $('app').hidden = true;
  $('who').hidden = true;
  $('gate').hidden = false;
}

// -- formatting -----------------------------------------------------------------------

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const thisYear = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: 'numeric',
  minute: '2-digit',
});
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });

/** Short in the tables: no year when it is this year's. */
function when(ms) {
  const date = new Date(ms);
  return date.getFullYear() === new Date().getFullYear() ? thisYear.format(date) : dateTime.format(date);
}

function timeCell(ms, none) {
  const cell = document.createElement('td');
  if (ms === null || ms === undefined) {
    cell.textContent = none;
    cell.className = 'muted';
    return cell;
  }
  const time = document.createElement('time');
  const date = new Date(ms);
  time.dateTime = date.toISOString();
  time.title = dateTime.format(date);
  time.textContent = when(ms);
  cell.append(time);
  return cell;
}

const STATUS_LABELS = { active: 'Active', revoked: 'Revoked', expired: 'Expired' };
const FILTER_EMPTY = {
  all: 'No keys yet.',
  active: 'No active keys.',
  revoked: 'No revoked keys.',
  expired: 'No expired keys.',
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function keyLabel(key) {
  return key.name ? `“${key.name}”` : key.keyName;
}

// -- notices and errors ---------------------------------------------------------------

function notice(text) {
  $('notice').textContent = text;
}

/** An error in `box` (the page's or a dialog's) with a Retry that runs `retry`. */
function showError(box, error, retry) {
  const text = box.querySelector('[role="alert"]');
  const button = box.querySelector('button');
  // A refusal's message says what to change; a failure's, that trying again may work.
  // The page's own checks (status null) say what to fix in a plain sentence.
  if (error.status === null) text.textContent = `${error.message}.`;
  else text.textContent = error.retryable ? error.describe : `Refused: ${error.describe}.`;
  button.hidden = !error.retryable || !retry;
  button.onclick = retry
    ? () => {
        hideError(box);
        retry();
      }
    : null;
  box.hidden = false;
}

function hideError(box) {
  box.hidden = true;
  box.querySelector('[role="alert"]').textContent = '';
}

// The key list and the activity load side by side and share the page's error box:
// each puts away only an error it showed itself, or a success would hide the other's.
let pageErrorSource = null;

function showPageError(source, error, retry) {
  const box = $('error');
  if (!box.hidden && pageErrorSource !== null && pageErrorSource !== source) {
    // Both failed: one Retry for both.
    source = 'both';
    retry = refreshAll;
  }
  pageErrorSource = source;
  showError(box, error, retry);
}

function hidePageError(source) {
  if (pageErrorSource === source) hideError($('error'));
}

// -- what this session may do -----------------------------------------------------

function canWrite() {
  return Boolean(session && session.scopes.includes('keys:write'));
}

function showSession() {
  $('actor').textContent = session.actor;
  $('access').textContent = canWrite() ? 'Can manage keys' : 'Read only';
  $('access').classList.toggle('read-only', !canWrite());
  $('session-ends').textContent = session.expires
    ? `Session ends at ${timeOnly.format(new Date(session.expires))}`
    : '';
  $('who').hidden = false;
  $('create-key').hidden = !canWrite();
  $('loading').hidden = true;
  $('app').hidden = false;
}

// -- in flight: one change at a time ----------------------------------------------------

let changing = false;

/** While a change is in flight, every button that could start another is disabled. */
function setChanging(flag) {
  changing = flag;
  for (const button of document.querySelectorAll('[data-mutates]')) button.disabled = flag;
  for (const id of ['create-dialog', 'rotate-dialog', 'revoke-dialog']) {
    const form = $(id).querySelector('form');
    form.setAttribute('aria-busy', String(flag));
    for (const control of form.querySelectorAll('button, input, select, textarea')) {
      control.disabled = flag;
    }
  }
}

// -- the key list -----------------------------------------------------------------------

let listSeq = 0;

async function loadKeys() {
  const seq = ++listSeq;
  const status = $('status-filter').value;
  $('keys-table').setAttribute('aria-busy', 'true');
  try {
    const data = await call('GET', `/api/keys?status=${encodeURIComponent(status)}`);
    if (seq !== listSeq) return;
    renderKeys(data.keys, status);
    hidePageError('keys');
  } catch (error) {
    if (seq !== listSeq || gated) return;
    showPageError('keys', error, loadKeys);
  } finally {
    if (seq === listSeq) $('keys-table').setAttribute('aria-busy', 'false');
  }
}

function renderKeys(keys, status) {
  const body = $('keys-body');
  const rows = keys.map((key, index) => keyRow(key, index));
  body.replaceChildren(...rows);
  $('keys-empty').textContent = FILTER_EMPTY[status] || 'No keys.';
  $('keys-empty').hidden = keys.length > 0;
  const active = keys.filter((key) => key.status === 'active').length;
  $('keys-count').textContent =
    keys.length === 1 ? '1 key' : `${keys.length} keys` + (status === 'all' ? `, ${active} active` : '');
}

function keyRow(key, index) {
  const row = element('tr');
  row.dataset.testid = 'key-row';
  row.dataset.keyName = key.keyName;

  const nameCell = element('th');
  nameCell.scope = 'row';
  nameCell.id = `key-name-${index}`;
  if (key.source === 'config') {
    nameCell.append(element('span', 'muted', key.name || 'Configured key'));
    nameCell.append(element('span', 'source', 'from configuration: read-only here'));
  } else {
    nameCell.textContent = key.name || 'Unnamed';
  }

  const keyCell = element('td');
  keyCell.append(element('code', 'display', key.display));

  const statusCell = element('td');
  const badge = element('span', `status status-${key.status}`, STATUS_LABELS[key.status] || key.status);
  badge.dataset.testid = 'key-status';
  statusCell.append(badge);
  if (key.status === 'revoked' && key.revokedReason) {
    statusCell.append(element('span', 'reason', key.revokedReason));
  }

  const actions = element('td', 'actions');
  if (canWrite() && key.source !== 'config') {
    if (key.status === 'active') actions.append(actionButton('Rotate', nameCell.id, () => openRotate(key)));
    if (key.status !== 'revoked') actions.append(actionButton('Revoke', nameCell.id, () => openRevoke(key)));
  }

  row.append(
    nameCell,
    keyCell,
    statusCell,
    timeCell(key.created, key.source === 'config' ? '—' : 'Unknown'),
    timeCell(key.expires, 'Never'),
    timeCell(key.lastUsed, 'Never'),
    actions,
  );
  return row;
}

function actionButton(label, describedBy, onClick) {
  const button = element('button', label === 'Revoke' ? 'small danger-outline' : 'small secondary', label);
  button.type = 'button';
  button.dataset.mutates = '';
  button.disabled = changing;
  button.setAttribute('aria-describedby', describedBy);
  button.addEventListener('click', onClick);
  return button;
}

// -- the audit view ---------------------------------------------------------------------

const EVENT_LABELS = {
  'key.created': 'Key created',
  'key.rotated': 'Key rotated',
  'key.revoked': 'Key revoked',
  'key.reencrypted': 'Key re-encrypted',
  'tokens.revoked': 'Tokens revoked',
  'token.issued': 'Token issued',
  'token.refused': 'Token refused',
  'ticket.issued': 'Link issued',
  'ticket.exchanged': 'Session opened',
  'ticket.refused': 'Link refused',
};

let auditSeq = 0;

/** Which events the "Show" filter keeps (token events can crowd out the rest). */
const AUDIT_FILTERS = {
  all: () => true,
  keys: (name) => name.startsWith('key.') || name === 'tokens.revoked',
  sessions: (name) => name.startsWith('ticket.'),
  tokens: (name) => name.startsWith('token.') || name === 'tokens.revoked',
};
let auditEvents = [];

async function loadAudit() {
  const seq = ++auditSeq;
  try {
    const data = await call('GET', '/api/audit?limit=200');
    if (seq !== auditSeq) return;
    auditEvents = data.events;
    renderAudit();
    hidePageError('audit');
  } catch (error) {
    if (seq !== auditSeq || gated) return;
    showPageError('audit', error, loadAudit);
  }
}

/** Details worth a glance; times as times, durations in words, no token ids. */
const HIDDEN_DETAIL = new Set(['jti']);
const TIME_DETAIL = new Set(['expires', 'graceUntil', 'issuedBefore', 'at']);

function duration(ms) {
  if (ms === 0) return 'none';
  const units = [['day', 86_400_000], ['hour', 3_600_000], ['minute', 60_000], ['second', 1000]];
  for (const [unit, size] of units) {
    if (ms % size === 0) return `${ms / size} ${unit}${ms / size === 1 ? '' : 's'}`;
  }
  return `${ms} ms`;
}

function detailText(event) {
  const parts = [];
  if (event.code) parts.push(`code ${event.code}`);
  if (event.client_id) parts.push(`client ${event.client_id}`);
  for (const [name, value] of Object.entries(event.detail || {})) {
    if (value === null || value === undefined || HIDDEN_DETAIL.has(name)) continue;
    let shown;
    if (TIME_DETAIL.has(name) && typeof value === 'number') shown = when(value);
    else if (name === 'grace' && typeof value === 'number') shown = duration(value);
    else if (Array.isArray(value) && value.every((v) => typeof v === 'string')) shown = value.join(', ');
    else shown = typeof value === 'object' ? JSON.stringify(value) : String(value);
    parts.push(`${name}: ${shown}`);
  }
  return parts.join(' · ');
}

function renderAudit() {
  const keep = AUDIT_FILTERS[$('audit-filter').value] || AUDIT_FILTERS.all;
  const events = auditEvents.filter((event) => keep(event.event)).slice(0, 50);
  const rows = events.map((event) => {
    const row = element('tr');
    row.dataset.testid = 'audit-row';
    const kind = event.event.endsWith('.refused') || event.event.endsWith('.revoked') ? 'bad' : 'neutral';
    const name = element('td');
    const label = element('span', `event event-${kind}`, EVENT_LABELS[event.event] || event.event);
    label.title = event.event;
    name.append(label, element('code', 'event-name', event.event));
    const key = element('td');
    if (event.key_name) key.append(element('code', '', event.key_name));
    else key.append(element('span', 'muted', '—'));
    row.append(
      timeCell(event.at, ''),
      name,
      key,
      element('td', event.actor ? '' : 'muted', event.actor || '—'),
      element('td', 'detail', detailText(event)),
    );
    return row;
  });
  $('audit-body').replaceChildren(...rows);
  $('audit-empty').hidden = events.length > 0;
}

function refreshAll() {
  return Promise.all([loadKeys(), loadAudit()]);
}

// -- dialogs ----------------------------------------------------------------------------

/** Open `dialog` for a change: reset it, wire Cancel, keep Escape off while in flight. */
function openDialog(dialog) {
  hideError(dialog.querySelector('[data-role="error"]'));
  dialog.showModal();
}

for (const id of ['create-dialog', 'rotate-dialog', 'revoke-dialog']) {
  const dialog = $(id);
  dialog.querySelector('[data-role="cancel"]').addEventListener('click', () => dialog.close());
  // An error is about what was sent: editing the form puts it away.
  dialog.querySelector('form').addEventListener('input', () => {
    if (!changing) hideError(dialog.querySelector('[data-role="error"]'));
  });
  dialog.addEventListener('cancel', (event) => {
    if (changing) event.preventDefault();
  });
}

/** Run one change from `dialog`: `send` returns the API's answer; `done` shows it. */
async function change(dialog, send, done) {
  if (changing) return;
  const box = dialog.querySelector('[data-role="error"]');
  hideError(box);
  setChanging(true);
  let result;
  try {
    result = await send();
  } catch (error) {
    setChanging(false);
    if (!gated) showError(box, error, () => change(dialog, send, done));
    // The list may have changed even so (another tab, a half-seen answer): refetch.
    if (!gated && error.status !== 0) refreshAll();
    return;
  }
  setChanging(false);
  dialog.close();
  done(result);
  refreshAll();
}

// Create

function openCreate() {
  if (!canWrite() || changing) return;
  $('create-form').reset();
  openDialog($('create-dialog'));
  $('create-name').focus();
}

$('create-key').dataset.mutates = '';
$('create-key').addEventListener('click', openCreate);

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const dialog = $('create-dialog');
  const box = dialog.querySelector('[data-role="error"]');
  const name = $('create-name').value.trim();
  if (!name) {
    showError(box, new RequestError(null, null, 'Give the key a name'), null);
    $('create-name').focus();
    return;
  }
  let capability;
  try {
    capability = JSON.parse($('create-capability').value);
  } catch (_) {
    showError(box, new RequestError(null, null, 'The capability must be JSON, such as {"*":["*"]}'), null);
    $('create-capability').focus();
    return;
  }
  const lifetime = $('create-expires').value;
  const body = { name, capability };
  if (lifetime) body.expires = Date.now() + Number(lifetime);
  change(
    dialog,
    () => call('POST', '/api/keys', body),
    (key) => {
      notice(`Key ${keyLabel(key)} created.`);
      showSecret(key, `New key ${keyLabel(key)}`);
    },
  );
});

// Rotate and Revoke: a dialog about one key, opened the same way

// Opens the `${name}-dialog` about `key` (its form reset, its label set) and
// focuses its first field; false when no change may start now.
function openKeyDialog(name, key, fieldId) {
  if (!canWrite() || changing) return false;
  $(`${name}-form`).reset();
  $(`${name}-dialog`).querySelector('[data-role="key-label"]').textContent = keyLabel(key);
  openDialog($(`${name}-dialog`));
  $(fieldId).focus();
  return true;
}

// Rotate

let rotating = null;

function openRotate(key) {
  if (openKeyDialog('rotate', key, 'rotate-grace')) rotating = key;
}

$('rotate-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const key = rotating;
  const grace = Number($('rotate-grace').value);
  change(
    $('rotate-dialog'),
    () => call('POST', `/api/keys/${encodeURIComponent(key.keyName)}/rotate`, { grace }),
    (rotated) => {
      notice(
        grace
          ? `Key ${keyLabel(rotated)} rotated: the previous secret keeps working for ${$('rotate-grace').selectedOptions[0].textContent}.`
          : `Key ${keyLabel(rotated)} rotated: the previous secret no longer works.`,
      );
      showSecret(rotated, `New secret for ${keyLabel(rotated)}`);
    },
  );
});

// Revoke

let revoking = null;

function openRevoke(key) {
  if (openKeyDialog('revoke', key, 'revoke-reason')) revoking = key;
}

$('revoke-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const key = revoking;
  const dialog = $('revoke-dialog');
  const reason = $('revoke-reason').value.trim();
  if (!reason) {
    showError(dialog.querySelector('[data-role="error"]'), new RequestError(null, null, 'Give a reason for the audit log'), null);
    $('revoke-reason').focus();
    return;
  }
  change(
    dialog,
    () => call('POST', `/api/keys/${encodeURIComponent(key.keyName)}/revoke`, { reason }),
    (revoked) => notice(`Key ${keyLabel(revoked)} revoked: it is refused from now on.`),
  );
});

// The new secret: shown once, gone from the DOM when its dialog closes.

function showSecret(key, title) {
  const dialog = $('secret-dialog');
  dialog.querySelector('[data-role="secret-for"]').textContent = title;
  const secret = element('code', 'secret', key.key);
  secret.id = 'secret-value';
  secret.dataset.testid = 'secret-value';
  $('secret-slot').replaceChildren(secret);
  $('secret-copied').checked = false;
  $('secret-done').disabled = true;
  $('copy-status').textContent = '';
  dialog.showModal();
  $('secret-copy').focus();
}

function forgetSecret() {
  $('secret-slot').replaceChildren();
  $('copy-status').textContent = '';
  $('secret-copied').checked = false;
  $('secret-done').disabled = true;
}

$('secret-copy').addEventListener('click', async () => {
  const secret = $('secret-value');
  if (!secret) return;
  try {
    await navigator.clipboard.writeText(secret.textContent);
    $('copy-status').textContent = 'Copied to the clipboard.';
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents(secret);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $('copy-status').textContent = 'Selected: press Ctrl+C (⌘C on a Mac) to copy it.';
  }
});

$('secret-copied').addEventListener('change', () => {
  $('secret-done').disabled = !$('secret-copied').checked;
});

$('secret-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!$('secret-copied').checked) return;
  forgetSecret(); // now, not when the (queued) close event fires
  $('secret-dialog').close();
});

$('secret-dialog').addEventListener('cancel', (event) => {
  if (!$('secret-copied').checked) {
    event.preventDefault();
    $('copy-status').textContent = 'Tick “I have copied this secret” first: it cannot be shown again.';
    return;
  }
  forgetSecret();
});

$('secret-dialog').addEventListener('close', () => {
  forgetSecret(); // whichever way it closed
  const target = canWrite() ? $('create-key') : $('refresh');
  if (!gated && target && !target.hidden) target.focus();
});

// -- toolbar --------------------------------------------------------------------------------

$('status-filter').addEventListener('change', loadKeys);
$('refresh').addEventListener('click', refreshAll);
$('audit-refresh').addEventListener('click', loadAudit);
$('audit-filter').addEventListener('change', renderAudit);

// -- start: a ticket in the URL, or an existing session -------------------------------------

function start() {
  const url = new URL(window.location.href);
  const ticket = url.searchParams.get('ticket');
  if (ticket !== null) {
    // Out of the address bar and the history before anything else happens.
    url.searchParams.delete('ticket');
    window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
  }
  open(ticket);
}

/** Trade the ticket (or find the session), then show the page or the gate. */
async function open(ticket) {
  try {
    session =
      ticket !== null
        ? await call('GET', `/session/ticket/exchange?ticket=${encodeURIComponent(ticket)}`, undefined, false)
        : await call('GET', '/api/session', undefined, false);
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      showGate(error, ticket !== null ? 'ticket' : 'start');
    } else {
      $('loading').hidden = true;
      $('app').hidden = false;
      showPageError('session', error, () => {
        $('app').hidden = true;
        $('loading').hidden = false;
        open(ticket);
      });
    }
    return;
  }
  showSession();
  await refreshAll();
}

start();
