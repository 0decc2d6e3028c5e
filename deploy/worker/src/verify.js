// Verification of the X-Portcullis-Assertion JWT (SPEC §4, §7) with WebCrypto.
//
// Only ES256 is accepted: the algorithm is pinned and checked before any key
// is looked up, so "none", HS256 (with the public key as an HMAC secret) and
// RS256 tokens are rejected without touching the JWKS. Header parameters that
// point at keys (jku, jwk, x5u, x5c) are ignored: keys come only from JWKS_URL.

const MAX_TOKEN_LENGTH = 16 * 1024;
const MAX_KID_LENGTH = 256;
const MAX_JWKS_BYTES = 256 * 1024;
const JWKS_FETCH_TIMEOUT_MS = 5_000;
const B64URL = /^[A-Za-z0-9_-]+$/;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/**
 * A rejected assertion. `reason` is a short, stable, human-readable phrase
 * that is returned to the client in the 401 body; it never contains secrets.
 */
export class AssertionError extends Error {
  constructor(reason) {
    super(`worker: assertion rejected: ${reason}`);
    this.name = 'AssertionError';
    this.reason = reason;
  }
}

/** Decodes unpadded base64url; throws on any other alphabet. */
export function base64UrlDecode(text) {
  if (!B64URL.test(text) || text.length % 4 === 1) throw new TypeError('not base64url');
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function decodeJSONObject(part) {
  const value = JSON.parse(textDecoder.decode(base64UrlDecode(part)));
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError('not a JSON object');
  }
  return value;
}

/**
 * Caches Portcullis's signing keys from a JWKS URL.
 *
 * Every fetch (the first, a refresh after cacheTtlMs, and a refresh for an
 * unknown kid) is rate-limited to one per refreshMinMs, whether it succeeds
 * or fails, so a flood of tokens with forged kids causes at most one fetch
 * per interval. Requests that arrive while a fetch is in flight wait for it.
 * A failed refresh keeps the keys already known.
 */
export class JwksCache {
  #url;
  #refreshMinMs;
  #cacheTtlMs;
  #fetch;
  #now;
  #log;
  #keys = null; // Map kid -> CryptoKey
  #fetchedAt = -Infinity;
  #lastAttempt = -Infinity;
  #inflight = null;

  /**
   * @param {{url: string, refreshMinMs: number, cacheTtlMs: number,
   *          fetch?: typeof fetch, now?: () => number, log?: Console}} opts
   */
  constructor({ url, refreshMinMs, cacheTtlMs, fetch: fetchFn, now, log }) {
    this.#url = url;
    this.#refreshMinMs = refreshMinMs;
    this.#cacheTtlMs = cacheTtlMs;
    this.#fetch = fetchFn ?? ((...a) => fetch(...a));
    this.#now = now ?? (() => Date.now());
    this.#log = log ?? console;
  }

  /**
   * Returns the verification key for kid, or null when the JWKS does not
   * hold it (after at most one rate-limited refresh). Throws AssertionError
   * "jwks unavailable" only when no key set was ever loaded.
   */
  async getKey(kid) {
    if (this.#keys === null || this.#now() - this.#fetchedAt >= this.#cacheTtlMs) {
      await this.#maybeRefresh(this.#keys === null ? 'initial' : 'cache ttl');
    }
    let key = this.#keys?.get(kid);
    if (key) return key;
    if (this.#keys !== null) {
      await this.#maybeRefresh('unknown kid');
      key = this.#keys.get(kid);
      if (key) return key;
    }
    if (this.#keys === null) throw new AssertionError('jwks unavailable');
    return null;
  }

  async #maybeRefresh(why) {
    if (this.#inflight) return this.#inflight;
    if (this.#now() - this.#lastAttempt < this.#refreshMinMs) return undefined;
    this.#lastAttempt = this.#now();
    this.#inflight = this.#load(why).finally(() => {
      this.#inflight = null;
    });
    return this.#inflight;
  }

  async #load(why) {
    try {
      const resp = await this.#fetch(this.#url, {
        headers: { accept: 'application/json' },
        signal: AbortSignal.timeout(JWKS_FETCH_TIMEOUT_MS),
        // A redirect is not followed: wherever it points could hand out
        // signing keys of its own.
        redirect: 'manual',
      });
      if (resp.status !== 200) {
        await resp.body?.cancel();
        const where = resp.headers.get('location');
        throw new Error(where ? `status ${resp.status} (a redirect, not followed, to ${where.slice(0, 200)})` : `status ${resp.status}`);
      }
      const doc = JSON.parse(await readLimited(resp, MAX_JWKS_BYTES));
      if (!doc || !Array.isArray(doc.keys)) throw new Error('no "keys" array');
      const keys = new Map();
      for (const jwk of doc.keys) {
        const imported = await importES256(jwk, this.#log);
        if (imported) keys.set(jwk.kid, imported);
      }
      this.#keys = keys;
      this.#fetchedAt = this.#now();
      this.#log.log(JSON.stringify({ msg: 'jwks loaded', url: this.#url, why, kids: [...keys.keys()] }));
    } catch (err) {
      this.#log.error(JSON.stringify({ msg: 'jwks fetch failed', url: this.#url, why, error: String(err?.message ?? err) }));
    }
  }
}

/** Reads a response body as text, failing as soon as it passes max bytes. */
async function readLimited(resp, max) {
  if (!resp.body) return '';
  const reader = resp.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel();
      throw new Error('JWKS too large');
    }
    chunks.push(value);
  }
  const all = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

async function importES256(jwk, log) {
  if (!jwk || typeof jwk !== 'object') return null;
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256') return null;
  if (jwk.alg !== undefined && jwk.alg !== 'ES256') return null;
  if (jwk.use !== undefined && jwk.use !== 'sig') return null;
  if (typeof jwk.kid !== 'string' || jwk.kid === '' || jwk.kid.length > MAX_KID_LENGTH) return null;
  if (typeof jwk.x !== 'string' || typeof jwk.y !== 'string') return null;
  try {
    return await crypto.subtle.importKey(
      'jwk',
      { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, ext: true },
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['verify'],
    );
  } catch (err) {
    log.error(JSON.stringify({ msg: 'jwks key skipped', kid: jwk.kid, error: String(err?.message ?? err) }));
    return null;
  }
}

/**
 * A path with equivalent percent-encodings made equal (RFC 3986 §6.2.2):
 * hex digits upper case, unreserved characters decoded, as an edge that
 * normalizes URLs may have rewritten them.
 */
export function canonicalPath(p) {
  return p.replace(/%([0-9a-fA-F]{2})/g, (m, hex) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return /[A-Za-z0-9\-._~]/.test(c) ? c : `%${hex.toUpperCase()}`;
  });
}

function audienceMatches(aud, expected, normalize) {
  const list = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : null;
  if (!list || list.length === 0 || !list.every((a) => typeof a === 'string')) return false;
  return list.some((a) => expected.includes(normalize(a)));
}

function isStringArray(v) {
  return Array.isArray(v) && v.every((g) => typeof g === 'string');
}

/**
 * Verifies a compact JWS assertion and returns its claims.
 *
 * @param {string|null} token the X-Portcullis-Assertion header value
 * @param {{jwks: JwksCache, issuer: string, audiences: string[],
 *          normalizeAudience: (s: string) => string, skewMs: number,
 *          now: () => number, method?: string, path?: string}} opts
 *          audiences must already be normalized; method and path are the
 *          request's, checked against the htm and htu claims when the
 *          assertion has them
 * @returns {Promise<{sub: string, email?: string, groups: string[], route?: string, jti?: string}>}
 * @throws {AssertionError} with a reason for every way the token can fail
 */
export async function verifyAssertion(token, { jwks, issuer, audiences, normalizeAudience, skewMs, now, method, path }) {
  if (typeof token !== 'string' || token.trim() === '') throw new AssertionError('missing assertion');
  token = token.trim();
  if (token.length > MAX_TOKEN_LENGTH) throw new AssertionError('malformed assertion');
  const parts = token.split('.');
  if (parts.length !== 3) throw new AssertionError('malformed assertion');

  let header;
  let claims;
  try {
    header = decodeJSONObject(parts[0]);
    claims = decodeJSONObject(parts[1]);
  } catch {
    throw new AssertionError('malformed assertion');
  }

  // Pinned algorithm, checked before any key is touched.
  if (header.alg !== 'ES256') throw new AssertionError('unsupported alg');
  if (header.crit !== undefined) throw new AssertionError('unsupported crit header');
  const kid = header.kid;
  if (typeof kid !== 'string' || kid === '' || kid.length > MAX_KID_LENGTH) throw new AssertionError('missing kid');
  let signature;
  try {
    signature = base64UrlDecode(parts[2]);
  } catch {
    throw new AssertionError('bad signature');
  }
  if (signature.length !== 64) throw new AssertionError('bad signature');

  const key = await jwks.getKey(kid);
  if (!key) throw new AssertionError('unknown kid');
  const ok = await crypto.subtle.verify(
    { name: 'ECDSA', hash: 'SHA-256' },
    key,
    signature,
    textEncoder.encode(`${parts[0]}.${parts[1]}`),
  );
  if (!ok) throw new AssertionError('bad signature');

  if (claims.iss !== issuer) throw new AssertionError('wrong issuer');
  if (!audienceMatches(claims.aud, audiences, normalizeAudience)) throw new AssertionError('wrong audience');

  const t = now();
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) throw new AssertionError('missing exp');
  if (t >= claims.exp * 1000 + skewMs) throw new AssertionError('expired');
  if (claims.nbf !== undefined) {
    if (typeof claims.nbf !== 'number' || !Number.isFinite(claims.nbf)) throw new AssertionError('bad nbf');
    if (t + skewMs < claims.nbf * 1000) throw new AssertionError('not yet valid');
  }
  if (typeof claims.iat !== 'number' || !Number.isFinite(claims.iat)) throw new AssertionError('missing iat');
  if (claims.iat * 1000 > t + skewMs) throw new AssertionError('issued in the future');

  if (typeof claims.sub !== 'string' || claims.sub === '') throw new AssertionError('missing sub');
  if (claims.email !== undefined && claims.email !== null && typeof claims.email !== 'string') {
    throw new AssertionError('bad email claim');
  }
  if (claims.groups !== undefined && claims.groups !== null && !isStringArray(claims.groups)) {
    throw new AssertionError('bad groups claim');
  }
  // Portcullis binds each assertion to the request it was made for (htm,
  // htu, as in RFC 9449): a copy serves no other method or path.
  if (claims.htm !== undefined && (typeof claims.htm !== 'string' || claims.htm !== method)) {
    throw new AssertionError('wrong method');
  }
  if (claims.htu !== undefined) {
    let want;
    try {
      want = new URL(claims.htu).pathname;
    } catch {
      throw new AssertionError('wrong path');
    }
    if (typeof path !== 'string' || canonicalPath(want) !== canonicalPath(path)) throw new AssertionError('wrong path');
  }
  return {
    sub: claims.sub,
    email: typeof claims.email === 'string' && claims.email !== '' ? claims.email : undefined,
    groups: Array.isArray(claims.groups) ? claims.groups : [],
    route: typeof claims.route === 'string' ? claims.route : undefined,
    jti: typeof claims.jti === 'string' ? claims.jti : undefined,
  };
}
