// Portcullis edge Worker (SPEC §7): admits a request only when its
// X-Portcullis-Assertion verifies against Portcullis's JWKS, then streams it to
// the origin with identity headers taken from the verified claims. Anything
// else gets 401 {"error":"unauthorized","reason":...} and the origin is never
// contacted. Settings come from Worker variables and secrets (see config.js
// and README.md).

import { ConfigError, normalizeOrigin, parseConfig } from './config.js';
import { EdgePublisher } from './edge.js';
import { ASSERTION_HEADER, buildClientResponse, buildOriginRequest, HeaderValueError } from './forward.js';
import { AssertionError, JwksCache, verifyAssertion } from './verify.js';

const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;

function jsonResponse(status, body, requestId, extra = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      'x-request-id': requestId,
      ...extra,
    },
  });
}

/** The URL's path, or null when it does not parse (a "*" target). */
function pathOf(url) {
  try {
    return new URL(url).pathname;
  } catch {
    return null;
  }
}

function unauthorized(state, reason) {
  state.verdict = 'unauthorized';
  state.reason = reason;
  return jsonResponse(401, { error: 'unauthorized', reason }, state.requestId, {
    'www-authenticate': 'Bearer realm="portcullis"',
  });
}

/**
 * Creates the Worker's handler. State that must outlive a request (the JWKS
 * cache, the edge publisher) lives in this closure, one per isolate, keyed by
 * the settings it depends on.
 *
 * @param {{now?: () => number, log?: Console}} [deps]
 */
export function createWorker(deps = {}) {
  const now = deps.now ?? (() => Date.now());
  const log = deps.log ?? console;
  const jwksCaches = new Map();
  const publishers = new Map();

  function jwksFor(cfg) {
    const k = `${cfg.jwksURL}|${cfg.refreshMinMs}|${cfg.cacheTtlMs}`;
    let c = jwksCaches.get(k);
    if (!c) {
      c = new JwksCache({ url: cfg.jwksURL, refreshMinMs: cfg.refreshMinMs, cacheTtlMs: cfg.cacheTtlMs, now, log });
      jwksCaches.set(k, c);
    }
    return c;
  }

  function publisherFor(cfg) {
    if (!cfg?.pulsar) return null;
    const k = `${cfg.pulsar.produceURL}|${cfg.pulsar.producerName}|${cfg.pulsar.token ?? ''}`;
    let p = publishers.get(k);
    if (!p) {
      p = new EdgePublisher(cfg.pulsar, { log, now });
      publishers.set(k, p);
    }
    return p;
  }

  async function handle(request, env, state) {
    let cfg;
    try {
      cfg = parseConfig(env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      log.error(JSON.stringify({ msg: 'misconfigured', problems: err.problems, request_id: state.requestId }));
      state.verdict = 'error';
      state.reason = 'misconfigured';
      return jsonResponse(500, { error: 'misconfigured' }, state.requestId);
    }
    state.cfg = cfg;
    if (state.path === null) {
      state.reason = 'bad request target';
      return jsonResponse(400, { error: 'bad_request', reason: state.reason, request_id: state.requestId }, state.requestId);
    }

    const audiences = cfg.audiences;
    let claims;
    try {
      claims = await verifyAssertion(request.headers.get(ASSERTION_HEADER), {
        jwks: jwksFor(cfg),
        issuer: cfg.issuer,
        audiences,
        normalizeAudience: normalizeOrigin,
        skewMs: cfg.skewMs,
        now,
        method: request.method,
        path: state.path,
      });
    } catch (err) {
      if (!(err instanceof AssertionError)) throw err;
      return unauthorized(state, err.reason);
    }
    state.sub = claims.sub;
    state.route = claims.route ?? '';
    if (!state.clientRequestId && claims.jti && REQUEST_ID.test(claims.jti)) state.requestId = claims.jti;

    let originRequest;
    try {
      originRequest = buildOriginRequest(request, { originURL: cfg.originURL?.href, claims, requestId: state.requestId });
    } catch (err) {
      if (!(err instanceof HeaderValueError)) throw err;
      return unauthorized(state, 'claims not representable as headers');
    }
    try {
      const resp = cfg.originBinding ? await cfg.originBinding.fetch(originRequest) : await fetch(originRequest);
      state.verdict = 'allow';
      return buildClientResponse(resp, state.requestId);
    } catch (err) {
      log.error(JSON.stringify({ msg: 'origin unreachable', request_id: state.requestId, error: String(err?.message ?? err) }));
      state.verdict = 'error';
      state.reason = 'origin unreachable';
      return jsonResponse(502, { error: 'bad_gateway', request_id: state.requestId }, state.requestId);
    }
  }

  return {
    async fetch(request, env, ctx) {
      const started = new Date(now());
      const clientId = request.headers.get('x-request-id');
      const clientRequestId = clientId !== null && REQUEST_ID.test(clientId) ? clientId : null;
      const state = {
        requestId: clientRequestId ?? crypto.randomUUID(),
        clientRequestId,
        verdict: 'error',
        reason: undefined,
        sub: '',
        route: '',
        cfg: null,
        // null for a target that is no URL (OPTIONS *): refused with 400.
        path: pathOf(request.url),
      };
      let response;
      try {
        response = await handle(request, env, state);
      } catch (err) {
        log.error(JSON.stringify({ msg: 'internal error', request_id: state.requestId, error: String(err?.stack ?? err) }));
        state.verdict = 'error';
        state.reason = 'internal error';
        response = jsonResponse(500, { error: 'internal', request_id: state.requestId }, state.requestId);
      }
      const publisher = publisherFor(state.cfg);
      if (publisher) {
        const event = {
          time: started.toISOString(),
          request_id: state.requestId,
          sub: state.sub,
          route: state.route,
          method: request.method,
          // workerd hands a "*" target over as "http://host*".
          path: state.path ?? String(request.url).replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#*]*/i, '').slice(0, 200),
          status: response.status,
          verdict: state.verdict,
        };
        if (state.reason) event.reason = state.reason;
        ctx.waitUntil(publisher.publish(event));
      }
      return response;
    },
  };
}

export default createWorker();
