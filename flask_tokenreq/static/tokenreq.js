// flask-tokenreq browser helper (ES module), served by the issuer blueprint at
// <prefix>/tokenreq.js.
//
//   import { createTokenClient } from '/api/tokenreq/tokenreq.js';
//   const tokens = createTokenClient({ authUrl: '/api/tokenreq/token', providerUrl: '/provider' });
//   const details = await tokens.getToken();           // TokenDetails, cached
//   const res = await tokens.fetch('/provider/channels/news/messages');  // Bearer token added
//   new Ably.Realtime({ authCallback: tokens.ablyAuthCallback() });
//
// The authUrl answers with a signed TokenRequest (the secret stays on the
// server); with a providerUrl it is exchanged there for a token, otherwise it
// is handed to ably-js unchanged, which exchanges it with Ably itself.

const DEFAULT_MARGIN_MS = 15000;

/** An Error carrying the Ably error code and HTTP status from a response. */
export class TokenError extends Error {
  constructor(message, code, statusCode) {
    super(message);
    this.name = 'TokenError';
    this.code = code;
    this.statusCode = statusCode;
  }
}

async function errorFrom(response) {
  let message = `HTTP ${response.status}`;
  let code = Number(response.headers.get('x-ably-errorcode')) || response.status * 100;
  const headerMessage = response.headers.get('x-ably-errormessage');
  if (headerMessage) message = headerMessage;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || code;
    }
  } catch (_) {
    // not JSON: keep what the headers said
  }
  return new TokenError(message, code, response.status);
}

function jwtExpiry(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const claims = JSON.parse(json);
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

function base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/**
 * Create a token client.
 * @param {object} options
 * @param {string} options.authUrl   the issuer endpoint (e.g. '/api/tokenreq/token')
 * @param {string} [options.providerUrl] where to exchange TokenRequests for tokens
 * @param {object} [options.authParams] extra query parameters for the authUrl (capability, ttl, ...)
 * @param {number} [options.refreshMarginMs] renew this long before expiry (default 15 s)
 * @param {RequestCredentials} [options.credentials] fetch credentials mode (default 'include')
 * @param {() => number} [options.now] clock in ms (for tests)
 */
export function createTokenClient(options) {
  const {
    authUrl,
    providerUrl = null,
    authParams = {},
    refreshMarginMs = DEFAULT_MARGIN_MS,
    credentials = 'include',
    now = () => Date.now(),
  } = options || {};
  if (!authUrl) throw new TypeError('createTokenClient: authUrl is required');
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  let cached = null;
  let inflight = null;

  function authRequestUrl(extra) {
    const url = new URL(authUrl, globalThis.location ? globalThis.location.href : undefined);
    for (const [k, v] of Object.entries({ ...authParams, ...(extra || {}) })) {
      if (v === undefined || v === null) continue;
      url.searchParams.set(k, typeof v === 'object' ? JSON.stringify(v) : String(v));
    }
    return url.toString();
  }

  /** What the authUrl answers: a TokenRequest, TokenDetails, or a JWT string. */
  async function fetchAuth(extra) {
    const response = await fetchImpl(authRequestUrl(extra), {
      credentials,
      headers: { Accept: 'application/json, application/jwt, text/plain' },
      cache: 'no-store',
    });
    if (!response.ok) throw await errorFrom(response);
    const type = (response.headers.get('content-type') || '').split(';')[0].trim();
    if (type === 'application/json') return response.json();
    return response.text();
  }

  async function exchange(tokenRequest) {
    const base = providerUrl.replace(/\/$/, '');
    const url = `${base}/keys/${encodeURIComponent(tokenRequest.keyName)}/requestToken`;
    const response = await fetchImpl(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(tokenRequest),
      cache: 'no-store',
    });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  async function obtain() {
    const answer = await fetchAuth();
    if (typeof answer === 'string') {
      return { token: answer, expires: jwtExpiry(answer) };
    }
    if (answer && answer.issued !== undefined) return answer;
    if (answer && answer.keyName) {
      if (!providerUrl) {
        throw new TokenError('authUrl returned a TokenRequest but no providerUrl is set', 40170, 401);
      }
      return exchange(answer);
    }
    throw new TokenError('authUrl returned neither a TokenRequest nor TokenDetails', 40170, 401);
  }

  function fresh(details) {
    return details && (details.expires == null || details.expires - refreshMarginMs > now());
  }

  /** TokenDetails, cached until shortly before expiry; one request in flight. */
  async function getToken({ force = false } = {}) {
    if (!force && fresh(cached)) return cached;
    if (!inflight) {
      inflight = obtain().then(
        (details) => {
          cached = details;
          inflight = null;
          return details;
        },
        (err) => {
          inflight = null;
          throw err;
        },
      );
    }
    return inflight;
  }

  /** Forget the cached token (e.g. after a 401 from a resource). */
  function invalidate() {
    cached = null;
  }

  /** fetch() with `Authorization: Bearer <token>`; renews once on a token error. */
  async function authorizedFetch(url, init = {}) {
    for (let attempt = 0; ; attempt += 1) {
      const details = await getToken({ force: attempt > 0 });
      const headers = new Headers(init.headers || {});
      headers.set('Authorization', `Bearer ${base64(details.token)}`);
      const response = await fetchImpl(url, { ...init, headers });
      const code = Number(response.headers.get('x-ably-errorcode'));
      if (attempt === 0 && response.status === 401 && code >= 40140 && code < 40150) {
        invalidate();
        continue;
      }
      return response;
    }
  }

  /**
   * An ably-js authCallback. With a providerUrl it hands ably-js TokenDetails
   * from our provider; without one it hands over the signed TokenRequest.
   */
  function ablyAuthCallback() {
    return (tokenParams, callback) => {
      // ably-js asks only when it needs a new token, so never hand back the cached one.
      const work = providerUrl
        ? getToken({ force: true })
        : fetchAuth(tokenParams && tokenParams.capability ? { capability: tokenParams.capability } : null);
      work.then(
        (result) => callback(null, result),
        (err) => callback(err, null),
      );
    };
  }

  return { getToken, invalidate, fetch: authorizedFetch, ablyAuthCallback, errorFrom };
}

export default createTokenClient;
