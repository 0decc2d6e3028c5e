// Settings parsing (pure code, so plain Node runs it; the behaviour that
// depends on it is tested in workerd in worker.test.mjs).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError, normalizeOrigin, parseConfig, parseDuration, topicRestPath } from '../src/config.js';

const base = {
  JWKS_URL: 'https://auth.example.com/.well-known/portcullis/jwks.json',
  EXPECTED_ISSUER: 'https://auth.example.com',
  ORIGIN_URL: 'https://origin.example.com',
  EXPECTED_AUDIENCE: 'https://app-origin.example.com',
};

describe('parseDuration', () => {
  const cases = { '30s': 30_000, '500ms': 500, '10m': 600_000, '1h': 3_600_000, 30: 30_000, '2.5s': 2_500, '': NaN, '30x': NaN, '-1s': NaN };
  for (const [input, want] of Object.entries(cases)) {
    it(JSON.stringify(input), () => assert.deepEqual(parseDuration(input), want, `parseDuration(${input}): want ${want}`));
  }
});

describe('topicRestPath', () => {
  const cases = {
    'persistent://public/default/portcullis-edge': 'persistent/public/default/portcullis-edge',
    'non-persistent://t/n/x': 'non-persistent/t/n/x',
    'public/default/edge': 'persistent/public/default/edge',
    'persistent://public/default': null,
    'kafka://a/b/c': null,
  };
  for (const [input, want] of Object.entries(cases)) {
    it(input, () => assert.equal(topicRestPath(input), want));
  }
});

describe('normalizeOrigin', () => {
  const cases = {
    'https://App.Example.com:443': 'https://app.example.com',
    'http://127.0.0.1:8080/': 'http://127.0.0.1:8080',
    'not a url': 'not a url',
  };
  for (const [input, want] of Object.entries(cases)) {
    it(input, () => assert.equal(normalizeOrigin(input), want));
  }
});

describe('parseConfig', () => {
  it('fills defaults', () => {
    const cfg = parseConfig(base);
    const got = { refresh: cfg.refreshMinMs, ttl: cfg.cacheTtlMs, skew: cfg.skewMs, aud: cfg.audiences, pulsar: cfg.pulsar };
    assert.deepEqual(got, { refresh: 30_000, ttl: 600_000, skew: 30_000, aud: ['https://app-origin.example.com'], pulsar: null });
  });

  it('reads the audience list and Pulsar settings', () => {
    const cfg = parseConfig({
      ...base,
      EXPECTED_AUDIENCE: 'https://a.example.com, https://B.example.com:443',
      PULSAR_REST_URL: 'http://127.0.0.1:18080/',
      PULSAR_TOKEN: 'tok',
    });
    assert.deepEqual(cfg.audiences, ['https://a.example.com', 'https://b.example.com']);
    assert.deepEqual({ ...cfg.pulsar }, {
      produceURL: 'http://127.0.0.1:18080/topics/persistent/public/default/portcullis-edge',
      topic: 'persistent://public/default/portcullis-edge',
      token: 'tok',
      producerName: 'portcullis-worker',
    });
  });

  it('accepts plain http for a loopback JWKS only', () => {
    for (const u of ['http://127.0.0.1:9/j', 'http://localhost:9/j', 'http://[::1]:9/j']) {
      assert.equal(parseConfig({ ...base, JWKS_URL: u }).jwksURL, new URL(u).href);
    }
  });

  it('accepts a service binding instead of ORIGIN_URL', () => {
    const binding = { fetch: () => {} };
    const cfg = parseConfig({ ...base, ORIGIN_URL: undefined, ORIGIN: binding });
    assert.equal(cfg.originBinding, binding);
    assert.equal(cfg.originURL, null);
  });

  it('reports every problem at once', () => {
    const cases = [
      { name: 'empty env', env: {}, want: ['JWKS_URL', 'EXPECTED_ISSUER', 'ORIGIN_URL', 'EXPECTED_AUDIENCE'] },
      // The audience is never taken from the request's Host.
      { name: 'no audience', env: { ...base, EXPECTED_AUDIENCE: undefined }, want: ['EXPECTED_AUDIENCE'] },
      { name: 'blank audience list', env: { ...base, EXPECTED_AUDIENCE: ' , ' }, want: ['EXPECTED_AUDIENCE'] },
      // Whoever answers for the JWKS decides who the users are.
      { name: 'plain http JWKS', env: { ...base, JWKS_URL: 'http://auth.example.com/jwks.json' }, want: ['JWKS_URL'] },
      { name: 'no JWKS rate limit', env: { ...base, JWKS_REFRESH_MIN_INTERVAL: '0' }, want: ['JWKS_REFRESH_MIN_INTERVAL'] },
      { name: 'bad urls', env: { ...base, JWKS_URL: 'ftp://x', ORIGIN_URL: 'https://o.example.com/?q=1' }, want: ['JWKS_URL', 'ORIGIN_URL'] },
      { name: 'skew over 30s', env: { ...base, CLOCK_SKEW: '31s' }, want: ['CLOCK_SKEW'] },
      { name: 'bad durations', env: { ...base, JWKS_REFRESH_MIN_INTERVAL: 'soon', JWKS_CACHE_TTL: '1s', CLOCK_SKEW: 'x' }, want: ['JWKS_REFRESH_MIN_INTERVAL', 'CLOCK_SKEW'] },
      { name: 'ttl below interval', env: { ...base, JWKS_CACHE_TTL: '10s' }, want: ['JWKS_CACHE_TTL'] },
      { name: 'bad topic', env: { ...base, PULSAR_REST_URL: 'http://p', PULSAR_TOPIC: 'edge' }, want: ['PULSAR_TOPIC'] },
    ];
    for (const tc of cases) {
      assert.throws(
        () => parseConfig(tc.env),
        (err) => {
          assert.ok(err instanceof ConfigError, `${tc.name}: got ${err}`);
          for (const name of tc.want) {
            assert.ok(err.problems.some((p) => p.startsWith(`${name}:`)), `${tc.name}: no problem for ${name} in ${JSON.stringify(err.problems)}`);
          }
          return true;
        },
      );
    }
  });
});
