// Real ably-js (Ably.Rest) against the example issuer (authUrl) and provider.
//
// stdin: one JSON object, the scenario and its settings (see test_ablyjs_rest.py):
//   {scenario, authUrl, issuerUrl, endpoint, port, cookie, channel, options, ...}
// stdout: one JSON object, the outcome. A step that fails does not throw: the
// outcome names the step and carries ably-js's ErrorInfo (code, statusCode,
// message), so pytest asserts on exactly what an app would see.
'use strict';

// An injectable clock. ably-js reads Date.now (captured when it loads), so the
// renewal scenario moves ably-js's clock forward together with the provider's
// injected clock instead of waiting for a token to expire in real time.
const realNow = Date.now;
let clockShift = 0;
Date.now = () => realNow() + clockShift;

const Ably = require('ably');

// The ErrorInfo fields an application would look at.
function errorOf(err) {
  return {
    code: err && err.code !== undefined ? err.code : null,
    statusCode: err && err.statusCode !== undefined ? err.statusCode : null,
    message: String((err && err.message) || err),
  };
}

// Message fields as an app reads them; Buffers (binary data) as {base64}.
function messageOf(m) {
  const data = Buffer.isBuffer(m.data) ? { base64: m.data.toString('base64') } : m.data;
  return {
    id: m.id,
    name: m.name,
    data,
    clientId: m.clientId,
    encoding: m.encoding === undefined ? null : m.encoding,
    timestamp: m.timestamp,
  };
}

function tokenOf(details) {
  if (!details) return null;
  return {
    token: details.token,
    clientId: details.clientId === undefined ? null : details.clientId,
    capability: details.capability === undefined ? null : details.capability,
    issued: details.issued === undefined ? null : details.issued,
    expires: details.expires === undefined ? null : details.expires,
  };
}

// GET the issuer's token endpoint as an authCallback would (the cookie is the login).
async function fetchFromIssuer(cfg, params) {
  const url = new URL(cfg.issuerUrl);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null) url.searchParams.set(k, typeof v === 'string' ? v : JSON.stringify(v));
  }
  const response = await fetch(url, { headers: { cookie: cfg.cookie } });
  const type = response.headers.get('content-type') || '';
  const text = await response.text();
  if (!response.ok) {
    const body = JSON.parse(text);
    throw new Ably.ErrorInfo(body.error.message, body.error.code, body.error.statusCode);
  }
  return type.startsWith('application/json') ? JSON.parse(text) : text;
}

// The client options: our provider on loopback, plain HTTP, the issuer as authUrl.
function restOptions(cfg, extra) {
  const options = {
    endpoint: cfg.endpoint || '127.0.0.1',
    port: cfg.port,
    tls: false,
    logLevel: 0,
  };
  if (cfg.authUrl) {
    options.authUrl = cfg.authUrl;
    options.authHeaders = { cookie: cfg.cookie };
  }
  return Object.assign(options, cfg.options || {}, extra || {});
}

// authCallback variants: the issuer's answer in each format, as the app returns it.
function callbackFor(cfg, calls) {
  return (tokenParams, callback) => {
    calls.push(Object.assign({}, tokenParams));
    const params = Object.assign({}, cfg.callbackParams || {}, { format: cfg.callbackFormat });
    fetchFromIssuer(cfg, params).then(
      (result) => callback(null, result),
      (err) => callback(err, null),
    );
  };
}

// The payloads every round trip publishes: a string, binary data and an object.
function payloads(tag) {
  return [
    { name: 'text', data: `hello ${tag} ✓` },
    { name: 'binary', data: Buffer.from([0, 1, 2, 255]) },
    { name: 'object', data: { tag, list: [1, 'two', null], nested: { ok: true } } },
  ];
}

// Moves the provider's injected clock (test-only route) and, unless providerOnly,
// this process's clock forward by cfg.advanceMs.
async function advanceClocks(cfg, { providerOnly = false } = {}) {
  const response = await fetch(`${cfg.advanceUrl}?ms=${cfg.advanceMs}`, { method: 'POST' });
  if (!response.ok) throw new Error(`advance failed: ${response.status}`);
  if (!providerOnly) clockShift += cfg.advanceMs;
  return (await response.json()).now;
}

// Runs steps in order; the first failure ends the scenario with {failedStep, error}.
async function steps(out, list) {
  for (const [name, fn] of list) {
    try {
      out[name] = await fn();
    } catch (err) {
      out.failedStep = name;
      out.error = errorOf(err);
      return out;
    }
  }
  return out;
}

const scenarios = {
  // authorize, publish (string, binary, object), then history.
  async roundtrip(cfg) {
    const calls = [];
    const extra = cfg.callbackFormat ? { authCallback: callbackFor(cfg, calls) } : {};
    if (extra.authCallback) delete cfg.authUrl;
    const rest = new Ably.Rest(restOptions(cfg, extra));
    const channel = rest.channels.get(cfg.channel);
    const out = { callbackCalls: calls };
    await steps(out, [
      ['authorize', async () => tokenOf(await rest.auth.authorize())],
      ['publish', async () => channel.publish(payloads(cfg.channel))],
      ['history', async () => (await channel.history({ direction: 'forwards' })).items.map(messageOf)],
      ['time', async () => rest.time()],
      ['requestTime', async () => (await rest.request('get', '/time', 3, null, null, null)).items],
    ]);
    out.clientId = rest.auth.clientId === undefined ? null : rest.auth.clientId;
    out.useBinaryProtocol = rest.options.useBinaryProtocol;
    return out;
  },

  // One TokenRequest, handed to ably-js twice (say, from a cache): the second
  // exchange must be refused with 40105.
  async replay(cfg) {
    const tokenRequest = await fetchFromIssuer(cfg, {});
    const callback = (tokenParams, cb) => cb(null, JSON.parse(JSON.stringify(tokenRequest)));
    const first = new Ably.Rest(restOptions(cfg, { authCallback: callback }));
    const second = new Ably.Rest(restOptions(cfg, { authCallback: callback }));
    const out = { tokenRequest };
    await steps(out, [
      ['first', async () => tokenOf(await first.auth.authorize())],
      ['second', async () => tokenOf(await second.auth.authorize())],
    ]);
    // The first client's token keeps working.
    try {
      out.publishAfter = await first.channels.get(cfg.channel).publish('after-replay', 'still valid');
    } catch (err) {
      out.publishAfterError = errorOf(err);
    }
    return out;
  },

  // Renewal: publish, let the token expire, publish again; ably-js must fetch a
  // new token through authUrl by itself. ably-js checks a token's expiry before
  // each request once it knows the server's time (rest.time() sets the offset;
  // `queryTime` only applies to key-signed TokenRequests). The expiry is reached
  // by moving both injected clocks (the provider's and this process's Date.now)
  // forward by `advanceMs`: no real time has to pass.
  async renewal(cfg) {
    const rest = new Ably.Rest(restOptions(cfg));
    const channel = rest.channels.get(cfg.channel);
    const out = {};
    await steps(out, [
      ['serverTime', async () => rest.time()],
      ['firstToken', async () => tokenOf(await rest.auth.authorize())],
      ['firstPublish', async () => channel.publish('before', 'first token')],
      ['advance', async () => advanceClocks(cfg)],
      ['secondPublish', async () => channel.publish('after', 'renewed token')],
      ['secondToken', async () => tokenOf(rest.auth.tokenDetails)],
      ['history', async () => (await channel.history({ direction: 'forwards' })).items.map(messageOf)],
    ]);
    return out;
  },

  // Renewal the other way: the provider refuses the expired token with 40142 and
  // ably-js is expected to renew once and retry (RSA4b). Only the provider's clock
  // moves, so ably-js does not know the token expired. The authCallback (the
  // issuer, in the given format) gives up after `maxCallbackCalls`, which bounds
  // ably-js's retry loop (ably-js 2.28 retries with the stale token, unbounded:
  // ably/ably-js#2193).
  async renewalOnTokenError(cfg) {
    const calls = [];
    const fetchToken = callbackFor(cfg, calls);
    const authCallback = (tokenParams, callback) => {
      if (calls.length >= cfg.maxCallbackCalls) {
        callback(new Ably.ErrorInfo('test: authCallback call limit reached', 40170, 401), null);
        return;
      }
      fetchToken(tokenParams, callback);
    };
    delete cfg.authUrl;
    const rest = new Ably.Rest(restOptions(cfg, { authCallback }));
    const channel = rest.channels.get(cfg.channel);
    const out = { callbackCalls: calls };
    await steps(out, [
      ['firstToken', async () => tokenOf(await rest.auth.authorize())],
      ['firstPublish', async () => channel.publish('before', 'first token')],
      ['advance', async () => advanceClocks(cfg, { providerOnly: true })],
      ['secondPublish', async () => channel.publish('after', 'renewed token')],
    ]);
    out.lastToken = tokenOf(rest.auth.tokenDetails);
    return out;
  },

  // Ably's token revocation against our provider: a client with the key gets
  // tokens for clientIds (ably-js signs and exchanges them), revokes one
  // clientId's tokens with rest.auth.revokeTokens, then publishes with each
  // token. A client holding only a revoked token cannot renew it (ably-js
  // reports 40171 after the provider's 4014x). (A renewing client is not used
  // here: ably-js 2.28 retries with the stale token after renewing,
  // ably/ably-js#2193.)
  async revokeTokens(cfg) {
    const options = { ...cfg, authUrl: null };
    const keyRest = new Ably.Rest(restOptions(options, { key: cfg.key }));
    const publish = async (details, name) => {
      const rest = new Ably.Rest(restOptions(options, { tokenDetails: details }));
      try {
        await rest.channels.get(cfg.channel).publish(name, 'hello');
        return { ok: true };
      } catch (err) {
        return { ok: false, error: errorOf(err) };
      }
    };
    const request = (clientId) => keyRest.auth.requestToken({ clientId });
    const out = {};
    const tokens = {};
    await steps(out, [
      ['revoked', async () => tokenOf((tokens.revoked = await request(cfg.clientId)))],
      ['other', async () => tokenOf((tokens.other = await request(cfg.otherClientId)))],
      ['publishBefore', async () => publish(tokens.revoked, 'before')],
      ['result', async () => keyRest.auth.revokeTokens([{ type: 'clientId', value: cfg.clientId }])],
      ['fresh', async () => tokenOf((tokens.fresh = await request(cfg.clientId)))],
      ['publishRevoked', async () => publish(tokens.revoked, 'after')],
      ['publishOther', async () => publish(tokens.other, 'other')],
      ['publishFresh', async () => publish(tokens.fresh, 'fresh')],
      // A client using a token cannot revoke tokens (ably-js refuses it itself, 40162).
      ['withToken', async () => {
        const rest = new Ably.Rest(restOptions(options, { tokenDetails: tokens.other }));
        try {
          await rest.auth.revokeTokens([{ type: 'clientId', value: 'x' }]);
          return { ok: true };
        } catch (err) {
          return { ok: false, error: errorOf(err) };
        }
      }],
    ]);
    out.useBinaryProtocol = keyRest.options.useBinaryProtocol;
    return out;
  },
};

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const cfg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const run = scenarios[cfg.scenario];
  if (!run) throw new Error(`unknown scenario ${cfg.scenario}`);
  const out = await run(cfg);
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
