// The demo page: a token from tokenreq.js, then publish and list events on the
// provider's channel resource with it. Runs only when a user is signed in.
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

let tokensFetched = 0;
const tokens = createTokenClient({
  authUrl: settings.authUrl,
  providerUrl,
  authParams,
  autoRenew: true, // renew shortly before expiry, so the page always has a token
  onToken: showToken,
  onError: (err) => showError(describe(err, 'renew the token'), 'token'),
});

// -- messages --------------------------------------------------------------------

let errorSource = null;

function showError(text, source) {
  const box = $('error');
  box.textContent = text;
  box.hidden = false;
  errorSource = source;
}

function clearError(source) {
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
      'provider\'s TOKENREQ_PROVIDER_CORS_ORIGINS.'
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
  if (err && err.code === 40100 && /sign in/i.test(err.message || '')) {
    return `Your session has ended: sign in again${code}.`;
  }
  const message = err && err.message ? err.message : String(err);
  return `Refused: could not ${action}: ${message}${code}`;
}

// -- the token -------------------------------------------------------------------

function showToken(details) {
  tokensFetched += 1;
  $('token-count').textContent = String(tokensFetched);
  $('token-client-id').textContent = details.clientId || '(none)';
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
setInterval(tick, 1000);
if (pollMs > 0) {
  setInterval(() => {
    if (!document.hidden) refresh();
  }, pollMs);
}

tokens
  .getToken()
  .then(() => refresh())
  .catch((err) => {
    $('token-client-id').textContent = '—';
    $('token-capability').replaceChildren('—');
    $('token-time-left').textContent = 'no token';
    showError(describe(err, 'get a token'), 'token');
  });
document.body.dataset.ready = 'true';
