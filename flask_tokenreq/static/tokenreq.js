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
// See docs/browser.md.

const DEFAULT_MARGIN_MS = 15000;
const MIN_RENEW_DELAY_MS = 1000;
/** After a failed background renewal: try again 1 s later, then 2, 4, ... up to 30 s apart. */
const MAX_RETRY_DELAY_MS = 30000;
/** Ably's "error requesting a token" code: what ably-js reports for auth failures. */
const AUTH_FAILED = 40170;

/** An Error carrying the Ably error code and HTTP status from a response. */
export class TokenError extends Error {
  constructor(message, code, statusCode, options) {
    super(message, options);
    this.name = 'TokenError';
    this.code = code;
    this.statusCode = statusCode;
    /** True when the server could not be reached at all (network down, or CORS refused). */
    this.network = Boolean(options && options.network);
  }
}

/** A TokenError from a non-2xx response: Ably's error body or X-Ably-Error* headers. */
export async function errorFrom(response) {
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

/** A JWT's {issued, expires} in ms, from its iat and exp claims (null when absent). */
function jwtTimes(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const claims = JSON.parse(json);
    const ms = (seconds) => (typeof seconds === 'number' ? seconds * 1000 : null);
    return { issued: ms(claims.iat), expires: ms(claims.exp) };
  } catch (_) {
    return { issued: null, expires: null };
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
 * @param {number} [options.refreshMarginMs] renew this long before expiry (default 15 s; at
 *   most a third of the token's lifetime, so short-lived tokens are still used)
 * @param {boolean} [options.autoRenew] renew in the background before expiry (default false)
 * @param {(details: object) => void} [options.onToken] called with each new token
 * @param {(error: Error) => void} [options.onError] called when a background renewal fails
 *   (autoRenew tries again 1 s later, then 2, 4, ... up to 30 s apart, until one succeeds)
 * @param {RequestCredentials} [options.credentials] credentials mode for the authUrl
 *   (default 'include': the session cookie goes along, also cross-origin)
 * @param {() => number} [options.now] clock in ms (for tests)
 * @param {typeof fetch} [options.fetch] fetch implementation (for tests)
 * @param {typeof setTimeout} [options.setTimeout] timer for background renewal (for tests)
 * @param {typeof clearTimeout} [options.clearTimeout] cancels those timers (for tests)
 */
export function createTokenClient(options) {
  const {
    authUrl,
    providerUrl = null,
    authParams = {},
    refreshMarginMs = DEFAULT_MARGIN_MS,
    autoRenew = false,
    onToken = null,
    onError = null,
    credentials = 'include',
    now = () => Date.now(),
  } = options || {};
  if (!authUrl) throw new TypeError('createTokenClient: authUrl is required');
  const fetchImpl = (options && options.fetch) || globalThis.fetch.bind(globalThis);
  const setTimer = (options && options.setTimeout) || globalThis.setTimeout.bind(globalThis);
  const clearTimer = (options && options.clearTimeout) || globalThis.clearTimeout.bind(globalThis);
  // The cached token: its TokenDetails and, by this browser's clock, when to renew it
  // and when it expires. Times come from the token's lifetime (expires - issued)
  // counted from when it arrived, so a skewed browser clock does not matter.
  let cached = null;
  let inflight = null;
  let timer = null;
  let retryDelay = 0; // after a failed background renewal: how long until the next try
  let closed = false;

  function authRequestUrl(extra) {
    const url = new URL(authUrl, globalThis.location ? globalThis.location.href : undefined);
    for (const [k, v] of Object.entries({ ...authParams, ...(extra || {}) })) {
      if (v === undefined || v === null) continue;
      url.searchParams.set(k, typeof v === 'object' ? JSON.stringify(v) : String(v));
    }
    return url.toString();
  }

  /** fetch(), with a network failure (offline, DNS, CORS refused) as a TokenError. */
  async function request(url, init, what) {
    try {
      return await fetchImpl(url, init);
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new TokenError(
        `Could not reach ${what} at ${url}: network error, or a cross-origin request ` +
          'the server does not allow (CORS)',
        AUTH_FAILED,
        0,
        { cause: err, network: true },
      );
    }
  }

  /** What the authUrl answers: a TokenRequest, TokenDetails, or a JWT string. */
  async function fetchAuth(extra) {
    const response = await request(
      authRequestUrl(extra),
      {
        credentials,
        // TokenDetails rather than a bare JWT: they carry `issued` (the issuer's clock).
        headers: { Accept: 'application/json, application/jwt;q=0.9, text/plain;q=0.8' },
        cache: 'no-store',
      },
      'the token issuer',
    );
    if (!response.ok) throw await errorFrom(response);
    const type = (response.headers.get('content-type') || '').split(';')[0].trim();
    if (type === 'application/json') return response.json();
    return response.text();
  }

  async function exchange(tokenRequest) {
    const base = providerUrl.replace(/\/$/, '');
    const url = `${base}/keys/${encodeURIComponent(tokenRequest.keyName)}/requestToken`;
    const response = await request(
      url,
      {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(tokenRequest),
        cache: 'no-store',
      },
      'the token provider',
    );
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  async function obtain() {
    const answer = await fetchAuth();
    if (typeof answer === 'string') {
      // A bare JWT: its iat and exp (the issuer's clock) play issued and expires.
      const { issued, expires } = jwtTimes(answer);
      return { token: answer, issued, expires };
    }
    if (answer && answer.issued !== undefined) return answer;
    if (answer && answer.keyName) {
      if (!providerUrl) {
        throw new TokenError('authUrl returned a TokenRequest but no providerUrl is set', AUTH_FAILED, 401);
      }
      return exchange(answer);
    }
    throw new TokenError('authUrl returned neither a TokenRequest nor TokenDetails', AUTH_FAILED, 401);
  }

  function remember(details) {
    const received = now();
    let lifetime = null;
    if (typeof details.expires === 'number') {
      const issued = typeof details.issued === 'number' ? details.issued : received;
      lifetime = Math.max(0, details.expires - issued);
    }
    const margin = lifetime === null ? 0 : Math.min(refreshMarginMs, lifetime / 3);
    cached = {
      details,
      expiresAt: lifetime === null ? null : received + lifetime,
      renewAt: lifetime === null ? null : received + lifetime - margin,
    };
    retryDelay = 0;
    schedule();
  }

  /** Renew in the background at renewAt, or `delay` ms from now (a retry). */
  function schedule(delay) {
    if (timer !== null) clearTimer(timer);
    timer = null;
    if (closed || !autoRenew || !cached || cached.renewAt === null) return;
    timer = setTimer(
      renewInBackground,
      // At least a second apart, even for tokens that live only a few milliseconds.
      delay ?? Math.max(MIN_RENEW_DELAY_MS, cached.renewAt - now()),
    );
  }

  function renewInBackground() {
    timer = null;
    getToken({ force: true }).catch((err) => {
      // A blip must not end autoRenew: try again, backing off, until it works or close().
      retryDelay = Math.min(MAX_RETRY_DELAY_MS, retryDelay ? retryDelay * 2 : MIN_RENEW_DELAY_MS);
      schedule(retryDelay);
      if (onError) onError(err);
    });
  }

  function fresh() {
    return cached !== null && (cached.renewAt === null || cached.renewAt > now());
  }

  /** TokenDetails, cached until shortly before expiry; one request in flight. */
  async function getToken({ force = false } = {}) {
    if (!force && fresh()) return cached.details;
    if (!inflight) {
      inflight = obtain().then(
        (details) => {
          inflight = null;
          remember(details);
          if (onToken) onToken(details);
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
    schedule();
  }

  /** Milliseconds until the cached token expires (this browser's clock), or null. */
  function timeLeft() {
    if (!cached || cached.expiresAt === null) return null;
    return Math.max(0, cached.expiresAt - now());
  }

  /** Stop background renewal, for good. */
  function close() {
    closed = true;
    if (timer !== null) clearTimer(timer);
    timer = null;
  }

  /** fetch() with `Authorization: Bearer <token>`; renews once on a token error (40140-40149). */
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

  return { getToken, invalidate, timeLeft, close, fetch: authorizedFetch, ablyAuthCallback, errorFrom };
}

export default createTokenClient;
