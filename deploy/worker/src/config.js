// Settings of the Worker, read from its variables and secrets (wrangler.toml
// [vars], `wrangler secret put`) and never from code. parseConfig reports every
// problem at once so that a misconfigured deployment says all that is wrong.

/** The most clock skew the Worker tolerates on exp, nbf and iat (SPEC §7). */
export const MAX_CLOCK_SKEW_MS = 30_000;

const DEFAULTS = Object.freeze({
  JWKS_REFRESH_MIN_INTERVAL: '30s',
  JWKS_CACHE_TTL: '10m',
  CLOCK_SKEW: '30s',
  PULSAR_TOPIC: 'persistent://public/default/portcullis-edge',
  PULSAR_PRODUCER_NAME: 'portcullis-worker',
});

/** Thrown by parseConfig; `problems` lists every bad setting. */
export class ConfigError extends Error {
  constructor(problems) {
    super(`worker: bad configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * Parses a duration: "500ms", "30s", "10m", "1h", or a bare number of seconds.
 * Returns milliseconds, or NaN when the text is not a duration.
 */
export function parseDuration(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(String(text));
  if (!m) return NaN;
  const n = Number(m[1]);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'];
  return n * unit;
}

function httpURL(value, name, problems) {
  let u;
  try {
    u = new URL(value);
  } catch {
    problems.push(`${name}: not a URL: ${JSON.stringify(value)}`);
    return null;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    problems.push(`${name}: scheme must be http or https, got ${u.protocol}`);
    return null;
  }
  return u;
}

/** Whether a URL's hostname is a loopback address or localhost. */
function isLoopback(hostname) {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

function duration(env, name, problems) {
  const raw = env[name] ?? DEFAULTS[name];
  const ms = parseDuration(raw);
  if (!Number.isFinite(ms)) {
    problems.push(`${name}: not a duration (want e.g. 30s, 500ms, 10m): ${JSON.stringify(raw)}`);
    return 0;
  }
  return ms;
}

/**
 * Normalizes an origin ("scheme://host[:port]") the way URL does: lower-case
 * host, default port dropped. Returns the input unchanged when it is not a URL,
 * so that odd audiences still compare exactly.
 */
export function normalizeOrigin(value) {
  try {
    const u = new URL(value);
    if (u.origin !== 'null') return u.origin;
  } catch {
    // not a URL: compared verbatim
  }
  return value;
}

/** Splits the Pulsar topic into its REST path "persistent/tenant/ns/topic". */
export function topicRestPath(topic) {
  const m = /^(persistent|non-persistent):\/\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(topic) ??
    /^()([^/]+)\/([^/]+)\/([^/]+)$/.exec(topic);
  if (!m) return null;
  const domain = m[1] || 'persistent';
  return [domain, m[2], m[3], m[4]].map(encodeURIComponent).join('/');
}

/**
 * Reads the Worker's env into a typed, frozen config. Throws ConfigError
 * listing every problem. Pure: no network, no global changes.
 *
 * Variables: JWKS_URL, EXPECTED_ISSUER (required); ORIGIN_URL (required
 * unless a service binding ORIGIN exists); EXPECTED_AUDIENCE (required,
 * comma-separated origins); JWKS_REFRESH_MIN_INTERVAL (>= 1s),
 * JWKS_CACHE_TTL, CLOCK_SKEW (<= 30s); PULSAR_REST_URL, PULSAR_TOPIC,
 * PULSAR_PRODUCER_NAME; secret PULSAR_TOKEN.
 */
export function parseConfig(env) {
  const problems = [];
  const str = (name) => {
    const v = env[name];
    return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
  };

  const jwksRaw = str('JWKS_URL');
  let jwksURL = null;
  if (!jwksRaw) problems.push('JWKS_URL: required (Portcullis\'s /.well-known/portcullis/jwks.json)');
  else jwksURL = httpURL(jwksRaw, 'JWKS_URL', problems);
  if (jwksURL && jwksURL.protocol !== 'https:' && !isLoopback(jwksURL.hostname)) {
    // Whoever can answer for the JWKS decides who the users are.
    problems.push(`JWKS_URL: must be https (plain http only to a loopback address), got ${jwksURL.href}`);
  }

  const issuer = str('EXPECTED_ISSUER');
  if (!issuer) problems.push('EXPECTED_ISSUER: required (Portcullis\'s identity.external_url)');

  const originBinding = env.ORIGIN && typeof env.ORIGIN.fetch === 'function' ? env.ORIGIN : null;
  const originRaw = str('ORIGIN_URL');
  let originURL = null;
  if (originRaw) {
    originURL = httpURL(originRaw, 'ORIGIN_URL', problems);
    if (originURL && (originURL.search || originURL.hash)) {
      problems.push('ORIGIN_URL: must not carry a query or fragment');
    }
  } else if (!originBinding) {
    problems.push('ORIGIN_URL: required unless a service binding named ORIGIN is configured');
  }

  // Required: taken from the request instead, the audience would be
  // whatever Host a client sends (self-hosted workerd answers any), and an
  // assertion Portcullis signed for another upstream would pass here.
  const audRaw = str('EXPECTED_AUDIENCE');
  const audiences = audRaw ? audRaw.split(',').map((s) => s.trim()).filter(Boolean).map(normalizeOrigin) : [];
  if (audiences.length === 0) {
    problems.push('EXPECTED_AUDIENCE: required: the origin Portcullis\'s route upstream names for this Worker (e.g. https://app-origin.example.com; several comma-separated)');
  }

  const refreshMinMs = duration(env, 'JWKS_REFRESH_MIN_INTERVAL', problems);
  if (refreshMinMs < 1000) {
    // It is what keeps requests with made-up kids from fetching the JWKS each.
    problems.push(`JWKS_REFRESH_MIN_INTERVAL: at least 1s, got ${env.JWKS_REFRESH_MIN_INTERVAL}`);
  }
  const cacheTtlMs = duration(env, 'JWKS_CACHE_TTL', problems);
  const skewMs = duration(env, 'CLOCK_SKEW', problems);
  if (skewMs > MAX_CLOCK_SKEW_MS) problems.push(`CLOCK_SKEW: at most 30s, got ${env.CLOCK_SKEW}`);
  if (cacheTtlMs < refreshMinMs) problems.push('JWKS_CACHE_TTL: must not be shorter than JWKS_REFRESH_MIN_INTERVAL');

  let pulsar = null;
  const pulsarRaw = str('PULSAR_REST_URL');
  if (pulsarRaw) {
    const base = httpURL(pulsarRaw, 'PULSAR_REST_URL', problems);
    const topic = str('PULSAR_TOPIC') ?? DEFAULTS.PULSAR_TOPIC;
    const path = topicRestPath(topic);
    if (!path) problems.push(`PULSAR_TOPIC: want persistent://tenant/namespace/topic, got ${JSON.stringify(topic)}`);
    if (base && path) {
      pulsar = Object.freeze({
        produceURL: `${base.href.replace(/\/+$/, '')}/topics/${path}`,
        topic,
        token: str('PULSAR_TOKEN') ?? null,
        producerName: str('PULSAR_PRODUCER_NAME') ?? DEFAULTS.PULSAR_PRODUCER_NAME,
      });
    }
  }

  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    jwksURL: jwksURL.href,
    issuer,
    audiences: Object.freeze(audiences),
    originURL,
    originBinding,
    refreshMinMs,
    cacheTtlMs,
    skewMs,
    pulsar,
  });
}
