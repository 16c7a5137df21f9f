// The two ways Ably's "Vite + React" article gives ably-js its tokens, against
// flask-tokenreq: an authUrl, or an authCallback that fetches the same route.
// The route answers a TokenRequest signed on the server for the signed-in
// user; ably-js exchanges it at this app's provider and uses the token.
const Ably = globalThis.Ably;
const query = new URLSearchParams(location.search);
const flow = query.get('flow') === 'authCallback' ? 'authCallback' : 'authUrl';
const channelName = query.get('channel') || 'get-started';
const TOKEN_ROUTE = '/api/ably/token';
const $ = (id) => document.getElementById(id);

/** authCallback: fetch the TokenRequest ourselves (the session cookie goes along). */
function authCallback(tokenParams, callback) {
  fetch(TOKEN_ROUTE, { headers: { Accept: 'application/json' }, cache: 'no-store' })
    .then(async (response) => {
      const body = await response.json();
      if (!response.ok) {
        throw new Ably.ErrorInfo(body.error.message, body.error.code, body.error.statusCode);
      }
      return body;
    })
    .then(
      (tokenRequest) => callback(null, tokenRequest),
      (error) => callback(error, null),
    );
}

const rest = new Ably.Rest({
  // This app is the ably-js endpoint: the provider and the channels live here.
  endpoint: location.hostname,
  port: Number(location.port) || 80,
  tls: false,
  ...(flow === 'authUrl' ? { authUrl: TOKEN_ROUTE } : { authCallback }),
});
const channel = rest.channels.get(channelName);

const seen = new Set();
function showToken() {
  const details = rest.auth.tokenDetails;
  if (!details) return;
  seen.add(details.token);
  $('token-count').textContent = String(seen.size);
  $('client-id').textContent = details.clientId || '–';
  $('capability').textContent = details.capability || '–';
  $('issued').textContent = String(details.issued);
  $('expires').textContent = String(details.expires);
}

function showError(error) {
  $('error').textContent = `Error ${error.code}: ${error.message}`;
}

async function showHistory() {
  const page = await channel.history({ direction: 'forwards' });
  $('messages').replaceChildren(
    ...page.items.map((message) => {
      const item = document.createElement('li');
      item.textContent = `${message.clientId}: ${message.data}`;
      return item;
    }),
  );
  showToken();
}

$('publish').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = event.target.elements.text.value;
  $('error').textContent = '';
  $('status').textContent = 'publishing…';
  try {
    await channel.publish('message', text);
    await showHistory();
    $('status').textContent = `published "${text}"`;
  } catch (error) {
    $('status').textContent = '';
    showError(error);
  }
});

$('history').addEventListener('click', () => showHistory().catch(showError));

$('flow').textContent = flow;
$('channel').textContent = channelName;
try {
  // ably-js now knows the server's time: it renews a token through the same
  // flow once the token has expired, before using it again.
  await rest.time();
  $('status').textContent = 'ready';
} catch (error) {
  showError(error);
}
