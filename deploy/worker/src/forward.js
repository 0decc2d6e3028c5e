// Forwarding an admitted request to the origin, streaming both bodies.

// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies
// still meet. Upgrade is kept only for WebSocket handshakes (see below).
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

/** Identity headers the Worker sets from verified claims (SPEC §4). */
export const IDENTITY_HEADERS = Object.freeze({
  user: 'x-portcullis-user',
  email: 'x-portcullis-email',
  groups: 'x-portcullis-groups',
});
export const ASSERTION_HEADER = 'x-portcullis-assertion';

/** Removes hop-by-hop headers, including those named in Connection. */
export function stripHopByHop(headers, { keepWebSocketUpgrade = false } = {}) {
  const listed = (headers.get('connection') ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const upgrade = headers.get('upgrade');
  const isWebSocket = keepWebSocketUpgrade && upgrade !== null && upgrade.trim().toLowerCase() === 'websocket';
  for (const name of [...HOP_BY_HOP, ...listed]) headers.delete(name);
  if (isWebSocket) headers.set('upgrade', 'websocket');
}

const CONTROL = /[\u0000-\u001f\u007f]/;

/** A verified claim that cannot be carried in a header (control characters). */
export class HeaderValueError extends Error {
  constructor(message) {
    super(`worker: ${message}`);
    this.name = 'HeaderValueError';
  }
}

/**
 * Checks that a claim string can travel as a header value. The runtime sends
 * header strings as UTF-8 (what Portcullis itself sends); control characters
 * (CR, LF, NUL, ...) cannot be carried and throw HeaderValueError.
 */
export function headerValue(text) {
  if (CONTROL.test(text)) throw new HeaderValueError('control character in header value');
  return text;
}

/**
 * The X-Portcullis-Groups value, written as Portcullis writes it: names
 * comma-separated, each with '%', ',', control characters and spaces at its
 * ends percent-encoded, so that a group named "engineering,admins" cannot read
 * as two groups to an origin that splits the header.
 */
export function joinGroups(groups) {
  const hex = (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`;
  return groups
    .map((g) =>
      g
        .replace(/[%,\u0000-\u001f\u007f]/g, hex)
        // Spaces at either end: parsers trim them around values and list items.
        .replace(/^ +| +$/g, (s) => '%20'.repeat(s.length)),
    )
    .join(',');
}

// Identity headers of other identity-aware proxies (oauth2-proxy, Pomerium,
// Cloudflare Access, Google IAP, AWS ALB, Azure, REMOTE_USER, Grafana,
// Authelia) and
// the path overrides some frameworks honour: an origin may still trust one
// of them, and nothing between Portcullis and the Worker is trusted. Names
// and prefixes, lower case, '_' read as '-' (as Portcullis strips them).
const SPOOFABLE = [
  'x-portcullis-', 'x-forwarded-user', 'x-forwarded-email', 'x-forwarded-groups',
  'x-forwarded-preferred-username', 'x-forwarded-access-token', 'x-auth-request-', 'x-pomerium-',
  'cf-access-', 'x-goog-authenticated-user-', 'x-goog-iap-', 'x-amzn-oidc-', 'x-ms-client-principal',
  'remote-user', 'x-remote-user', 'x-remote-group', 'x-remote-email', 'x-webauth-', 'x-authenticated-user',
  'x-authenticated-groups', 'x-original-url', 'x-rewrite-url', 'x-forwarded-uri', 'x-forwarded-path',
  'x-forwarded-prefix', 'x-original-uri', 'x-override-url',
  'remote-groups', 'remote-email', 'remote-name', 'x-email', 'x-preferred-username',
];

/**
 * Whether an incoming header name must not reach the origin: an identity
 * header (Portcullis's own, in any spelling: CGI and PHP read '_' as '-',
 * so x_portcullis_user would pass for X-Portcullis-User) or another's.
 */
export function spoofable(name) {
  const n = name.toLowerCase().replaceAll('_', '-');
  return SPOOFABLE.some((p) => n.startsWith(p));
}

/** Joins ORIGIN_URL's path prefix and the request path. */
export function joinPath(prefix, path) {
  const p = prefix.replace(/\/+$/, '');
  return p + (path.startsWith('/') ? path : `/${path}`);
}

/**
 * Builds the request for the origin: same method, path (below ORIGIN_URL's
 * path), query, headers and streamed body; hop-by-hop headers and Host are
 * dropped; every X-Portcullis-* header except the assertion is removed (in
 * any spelling, '_' for '-'), and so are other identity-aware proxies'
 * identity headers and path overrides (see spoofable); X-Portcullis-User,
 * Email and Groups are set from the verified claims, so the origin can
 * trust them; X-Request-Id is set to requestId.
 */
export function buildOriginRequest(request, { originURL, claims, requestId }) {
  const incoming = new URL(request.url);
  const target = new URL(originURL ?? incoming.origin);
  target.pathname = joinPath(originURL ? target.pathname : '', incoming.pathname);
  target.search = incoming.search;

  const headers = new Headers(request.headers);
  stripHopByHop(headers, { keepWebSocketUpgrade: true });
  headers.delete('host');
  for (const name of [...headers.keys()]) {
    if (name !== ASSERTION_HEADER && spoofable(name)) headers.delete(name);
  }
  headers.set(IDENTITY_HEADERS.user, headerValue(claims.sub));
  if (claims.email !== undefined) headers.set(IDENTITY_HEADERS.email, headerValue(claims.email));
  if (claims.groups.length > 0) headers.set(IDENTITY_HEADERS.groups, joinGroups(claims.groups));
  headers.set('x-request-id', requestId);

  const init = { method: request.method, headers, redirect: 'manual' };
  if (request.method !== 'GET' && request.method !== 'HEAD' && request.body !== null) {
    init.body = request.body;
  }
  return new Request(target.href, init);
}

/**
 * Re-wraps the origin's response for the client without reading its body:
 * hop-by-hop headers are removed and X-Request-Id is added when the origin
 * did not set one. A WebSocket handshake (101) is returned untouched.
 */
export function buildClientResponse(resp, requestId) {
  if (resp.status === 101) return resp;
  const headers = new Headers(resp.headers);
  stripHopByHop(headers);
  if (!headers.has('x-request-id')) headers.set('x-request-id', requestId);
  return new Response(resp.body, { status: resp.status, statusText: resp.statusText, headers });
}
