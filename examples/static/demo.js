// The demo page: a token from tokenreq.js, then publish and list events on the
// provider's channel resource with it. Runs only when a user is signed in.
//
// Besides doing the work, the page shows how it happens: every request goes
// through `observedFetch`, which shows the TokenRequest the issuer signed, the
// exchange at the provider, the token's claims, the Authorization header sent
// with each call, and each refusal with its Ably code.
import { createTokenClient, errorFrom } from '/api/tokenreq/tokenreq.js';

const settings = JSON.parse(document.getElementById('demo-settings').textContent);
const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(window.location.search);

// ?ttl=<ms> asks the issuer for shorter tokens (never longer than it allows);
// ?poll=<ms> changes how often the event list refreshes (0: only on demand).
const authParams = {};
if (query.get('ttl')) authParams.ttl = query.get('ttl');
const pollMs = query.has('poll') ? Number(query.get('poll')) : settings.pollMs;
const providerUrl = settings.providerUrl.replace(/\/$/, '');
const authUrl = new URL(settings.authUrl, window.location.href);

// -- small helpers ---------------------------------------------------------------

/** `abcdefgh…`: enough of a secret-looking value to recognise it, not to use it. */
function short(text, keep = 8) {
  const value = String(text);
  return value.length > keep + 1 ? `${value.slice(0, keep)}…` : value;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

function duration(ms) {
  if (ms >= 60000 && ms % 60000 === 0) return `${ms / 60000} min`;
  return `${Math.round(ms / 100) / 10} s`;
}

/** Fill a <dl> with [term, value] pairs (text only, never HTML). */
function fillFields(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    const code = document.createElement('code');
    code.textContent = value;
    dd.append(code);
    list.append(dt, dd);
  }
}

function base64urlJson(part) {
  const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(b64 + '==='.slice((b64.length + 3) % 4));
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** The JWT's header and claims, or null when the token is not a JWT. */
function decodeJwt(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    return { header: base64urlJson(parts[0]), claims: base64urlJson(parts[1]) };
  } catch (_) {
    return null;
  }
}

function pathOf(url) {
  const parsed = new URL(url, window.location.href);
  const shown = parsed.origin === window.location.origin ? '' : parsed.origin;
  return shown + parsed.pathname;
}

// -- messages --------------------------------------------------------------------

let errorSource = null;

function showError(text, source) {
  const box = $('error');
  box.textContent = text;
  box.hidden = false;
  errorSource = source;
}

function clearError(source) {
  if (sessionEnded) return; // that message stays until the user signs in again
  if (source && errorSource !== source) return;
  $('error').hidden = true;
  $('error').textContent = '';
  errorSource = null;
}

function showStatus(text) {
  $('status').textContent = text;
}

/** A human sentence for a refusal: what was refused, why, and the Ably code. */
function describe(err, action, channel) {
  if (err && err.network) {
    return (
      `Could not reach the provider at ${providerUrl}: network error, or it does not allow ` +
      `requests from this page's origin (${window.location.origin}). Add that origin to the ` +
      "provider's TOKENREQ_PROVIDER_CORS_ORIGINS."
    );
  }
  if (err instanceof TypeError) {
    return `Could not ${action}: the provider at ${providerUrl} is unreachable (network or CORS).`;
  }
  const code = err && err.code ? ` (${err.code})` : '';
  if (err && err.code === 40160 && channel !== undefined) {
    const operation = action.split(' ')[0];
    return `Refused: your token does not allow ${operation} on channel '${channel}'${code}`;
  }
  if (sessionEnded) return sessionEndedText;
  const message = err && err.message ? err.message : String(err);
  return `Refused: could not ${action}: ${message}${code}`;
}

// -- the session -----------------------------------------------------------------

let sessionEnded = false;
let sessionEndedText = '';
const timers = [];

/** The issuer said 401: the session is gone (signed out elsewhere, expired). Say so. */
function endSession(code) {
  if (sessionEnded) return;
  sessionEndedText = `Your session has ended: the issuer answered ${code}. Sign in again.`;
  showError(sessionEndedText, 'session');
  sessionEnded = true;
  tokens.close();
  for (const id of timers) clearInterval(id);
  $('signed-in').hidden = true;
  $('session-ended').hidden = false;
  $('publish-fields').disabled = true;
  $('renew-token').disabled = true;
  $('refresh').disabled = true;
  $('token-time-left').textContent = 'no new tokens without a session';
}

// -- what the page sees: every request, through observedFetch ------------------------

function logRequest(method, url, status, refusal) {
  const item = document.createElement('li');
  item.dataset.testid = 'log-entry';
  const time = document.createElement('time');
  time.textContent = clock(Date.now());
  const call = document.createElement('code');
  call.textContent = `${method} ${pathOf(url)}`;
  const result = document.createElement('span');
  result.className = refusal ? 'refused' : 'passed';
  result.textContent = status === 0 ? 'network error' : String(status);
  item.append(time, call, result);
  if (refusal) {
    const why = document.createElement('span');
    why.className = 'why';
    why.textContent = `${refusal.code} ${refusal.message}`;
    item.append(why);
  }
  $('log').prepend(item);
}

function showTokenRequest(method, url, body) {
  $('tr-call').textContent = `${method} ${pathOf(url)} → TokenRequest`;
  const pairs = [
    ['keyName', body.keyName],
    ['clientId', body.clientId ?? '(none)'],
    ['capability', body.capability ?? '(all the key allows)'],
  ];
  if (body.ttl !== undefined) pairs.push(['ttl', `${body.ttl} ms (${duration(body.ttl)})`]);
  pairs.push(
    ['timestamp', `${body.timestamp} (${clock(body.timestamp)})`],
    ['nonce', body.nonce],
    ['mac', short(body.mac)],
  );
  fillFields($('tr-fields'), pairs);
}

function showExchange(url, details) {
  $('ex-call').textContent = `POST ${pathOf(url)} → TokenDetails`;
  fillFields($('ex-fields'), [
    ['token', short(details.token, 16)],
    ['issued', `${details.issued} (${clock(details.issued)})`],
    ['expires', `${details.expires} (${clock(details.expires)})`],
    ['clientId', details.clientId ?? '(none)'],
  ]);
  const jwt = decodeJwt(details.token);
  if (!jwt) {
    $('jwt-header').textContent = 'not a JWT';
    return;
  }
  const { header, claims } = jwt;
  $('jwt-header').textContent = `alg ${header.alg} · typ ${header.typ} · kid ${short(header.kid, 20)}`;
  const pairs = [];
  for (const [name, value] of Object.entries(claims)) {
    if (['iat', 'nbf', 'exp'].includes(name) && typeof value === 'number') {
      pairs.push([name, `${value} (${clock(value * 1000)})`]);
    } else if (name === 'jti') {
      pairs.push([name, short(value, 12)]);
    } else {
      pairs.push([name, typeof value === 'string' ? value : JSON.stringify(value)]);
    }
  }
  fillFields($('claims'), pairs);
}

function showAuthorization(value) {
  const [scheme, credentials] = value.split(' ');
  $('auth-header').textContent = `Authorization: ${scheme} ${short(credentials, 20)}`;
  let token = '';
  try {
    token = atob(credentials);
  } catch (_) {
    token = credentials;
  }
  $('auth-header-plain').textContent =
    `The value after ${scheme} is the token in base64 (as Ably SDKs send it): ` +
    `base64 of ${short(token, 20)}, the token above.`;
}

async function refusalOf(response) {
  const error = await errorFrom(response);
  return { code: error.code, message: error.message };
}

/** What the page's requests did, shown as they happen. Never changes a response. */
async function observe(method, url, sent, response) {
  const target = new URL(url, window.location.href);
  const refusal = response.ok ? null : await refusalOf(response.clone());
  logRequest(method, url, response.status, refusal);
  if (target.origin === authUrl.origin && target.pathname === authUrl.pathname) {
    if (response.status === 401) endSession(refusal ? refusal.code : 401);
    const type = response.headers.get('content-type') || '';
    if (response.ok && type.startsWith('application/json')) {
      const body = await response.clone().json();
      if (body && body.keyName && body.mac) showTokenRequest(method, url, body);
    }
  } else if (target.pathname.endsWith('/requestToken')) {
    if (response.ok) showExchange(url, await response.clone().json());
  } else if (sent.has('authorization')) {
    showAuthorization(sent.get('authorization'));
  }
}

async function observedFetch(input, init = {}) {
  const url = typeof input === 'string' ? input : input.url;
  const method = (init.method || 'GET').toUpperCase();
  let response;
  try {
    response = await fetch(input, init);
  } catch (err) {
    logRequest(method, url, 0, { code: 'network', message: 'no answer (offline, or CORS)' });
    throw err;
  }
  try {
    await observe(method, url, new Headers(init.headers || {}), response);
  } catch (err) {
    console.warn('demo: could not show a response', err);
  }
  return response;
}

// -- the token -------------------------------------------------------------------

let tokensFetched = 0;
const tokens = createTokenClient({
  authUrl: settings.authUrl,
  providerUrl,
  authParams,
  autoRenew: true, // renew shortly before expiry, so the page always has a token
  onToken: showToken,
  onError: (err) => showError(describe(err, 'renew the token'), 'token'),
  fetch: observedFetch,
});

function showToken(details) {
  tokensFetched += 1;
  $('token-count').textContent = String(tokensFetched);
  $('token-client-id').textContent = details.clientId || '(none)';
  $('token-expires').textContent =
    typeof details.expires === 'number' ? clock(details.expires) : 'never';
  const list = $('token-capability');
  list.replaceChildren();
  let capability = {};
  try {
    capability = JSON.parse(details.capability || '{}');
  } catch (_) {
    capability = { '?': [String(details.capability)] };
  }
  for (const [resource, operations] of Object.entries(capability)) {
    const item = document.createElement('li');
    const name = document.createElement('code');
    name.textContent = resource;
    item.append(name, `: ${operations.join(', ')}`);
    list.append(item);
  }
  tick();
}

function tick() {
  if (sessionEnded) return;
  const left = tokens.timeLeft();
  const out = $('token-time-left');
  if (left === null) {
    out.textContent = tokensFetched ? 'does not expire' : '…';
    return;
  }
  const seconds = Math.ceil(left / 1000);
  const mm = Math.floor(seconds / 60);
  const ss = String(seconds % 60).padStart(2, '0');
  out.textContent = seconds > 0 ? `${mm}:${ss}` : 'expired (renewing…)';
  out.classList.toggle('low', seconds <= 10);
}

// -- the channel resource ----------------------------------------------------------

function channelName() {
  return $('channel').value.trim() || 'demo';
}

function messagesUrl(channel) {
  return `${providerUrl}/channels/${encodeURIComponent(channel)}/messages`;
}

function formatData(message) {
  if (message.data === undefined || message.data === null) return '';
  if (typeof message.data === 'string') return message.data;
  return JSON.stringify(message.data);
}

function renderEvents(messages) {
  const list = $('events');
  list.replaceChildren();
  for (const message of messages) {
    const item = document.createElement('li');
    item.dataset.testid = 'event';
    const time = document.createElement('time');
    const when = new Date(message.timestamp);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    const name = document.createElement('strong');
    name.className = 'event-name';
    name.textContent = message.name || '(no name)';
    const who = document.createElement('span');
    who.className = 'event-client';
    who.textContent = message.clientId ? `from ${message.clientId}` : '';
    const data = document.createElement('span');
    data.className = 'event-data';
    data.textContent = formatData(message);
    item.append(time, name, who, data);
    list.append(item);
  }
  $('events-empty').hidden = messages.length > 0;
}

let listing = null;

/** Load the channel's latest events; `user` says whether a click asked for it. */
async function refresh({ user = false } = {}) {
  if (sessionEnded && !user) return null;
  if (listing) return listing;
  const channel = channelName();
  $('events-channel').textContent = channel;
  if (user) clearError();
  listing = (async () => {
    try {
      const response = await tokens.fetch(`${messagesUrl(channel)}?limit=50`, {
        headers: { Accept: 'application/json' },
      });
      if (!response.ok) throw await errorFrom(response);
      renderEvents(await response.json());
      clearError('list');
      clearError('token');
    } catch (err) {
      showError(describe(err, 'read events', channel), 'list');
    } finally {
      listing = null;
    }
  })();
  return listing;
}

async function publish(event) {
  event.preventDefault();
  const channel = channelName();
  const name = $('event-name').value.trim();
  const data = $('event-data').value;
  clearError();
  showStatus('');
  const button = $('publish');
  button.disabled = true;
  try {
    const response = await tokens.fetch(messagesUrl(channel), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(name ? { name, data } : { data }),
    });
    if (!response.ok) throw await errorFrom(response);
    showStatus(`Published '${name || '(no name)'}' on channel '${channel}'.`);
    $('event-data').value = '';
    await refresh();
  } catch (err) {
    showError(describe(err, 'publish', channel), 'publish');
  } finally {
    button.disabled = false;
  }
}

async function renew() {
  clearError();
  try {
    await tokens.getToken({ force: true });
    showStatus('Got a new token.');
  } catch (err) {
    showError(describe(err, 'get a token'), 'token');
  }
}

// -- start -----------------------------------------------------------------------

$('publish-form').addEventListener('submit', publish);
$('refresh').addEventListener('click', () => refresh({ user: true }));
$('renew-token').addEventListener('click', renew);
$('channel').addEventListener('change', () => refresh({ user: true }));
timers.push(setInterval(tick, 1000));
if (pollMs > 0) {
  timers.push(
    setInterval(() => {
      if (!document.hidden) refresh();
    }, pollMs),
  );
}

tokens
  .getToken()
  .then(() => refresh())
  .catch((err) => {
    $('token-client-id').textContent = '—';
    $('token-capability').replaceChildren('—');
    if (!sessionEnded) $('token-time-left').textContent = 'no token';
    showError(describe(err, 'get a token'), 'token');
  });
document.body.dataset.ready = 'true';
