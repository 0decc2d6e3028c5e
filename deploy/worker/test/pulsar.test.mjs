// Edge events arriving on a real Pulsar topic through the broker's REST
// produce API. Runs when PULSAR_WEB_URL names a broker's web service (e.g.
// http://127.0.0.1:18080, see deploy/pulsar/). With CI=true and
// PULSAR_WEB_URL set, an unreachable broker fails the test.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { claimsFor, newES256Key, signJWT, startJwksServer, startOrigin } from './fixtures.mjs';
import { SELF_ORIGIN, startWorkerd } from './workerd.mjs';

const WEB = process.env.PULSAR_WEB_URL?.replace(/\/+$/, '');
const CI = process.env.CI === 'true';
const TOPIC_PATH = 'public/default/portcullis-edge';
const ISSUER = 'https://auth.portcullis.test';

async function call(method, path, { body, timeoutMs = 10_000, accept } = {}) {
  return fetch(`${WEB}${path}`, {
    method,
    headers: body === undefined ? { accept: accept ?? 'application/json' } : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
}

async function reachable() {
  try {
    const r = await call('GET', '/admin/v2/brokers/health', { timeoutMs: 5_000 });
    await r.text();
    return r.status === 200;
  } catch {
    return false;
  }
}

describe('edge events on a real Pulsar broker', { skip: WEB ? false : 'set PULSAR_WEB_URL=http://127.0.0.1:18080 (a running broker, see deploy/pulsar/) to run' }, () => {
  let up = false;
  let key;
  let jwks;
  let origin;
  let worker;
  const sub = `worker-test-${crypto.randomUUID()}`;

  before(async () => {
    up = await reachable();
    if (!up) return;
    const topic = await call('PUT', `/admin/v2/persistent/${TOPIC_PATH}`);
    assert.ok([204, 409].includes(topic.status), `create topic: got ${topic.status} ${await topic.text()}`);
    // The REST produce API fails every message (errorCode 2, NPE) on a topic
    // with de-duplication on, which the audit namespace wants; switch it off
    // for the edge topic (topic-level policy) and wait until it applies.
    const dedup = await call('POST', `/admin/v2/persistent/${TOPIC_PATH}/deduplicationEnabled`, { body: false });
    assert.equal(dedup.status, 204, `disable dedup on the edge topic: ${await dedup.text()}`);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const stats = await (await call('GET', `/admin/v2/persistent/${TOPIC_PATH}/stats`)).json();
      if (stats.deduplicationStatus === 'Disabled') break;
      assert.ok(Date.now() < deadline, `dedup still ${stats.deduplicationStatus} on the edge topic`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // A subscription at the end of the topic, made before our request: the
    // messages behind it are the ones this test caused.
    const s = await call('PUT', `/admin/v2/persistent/${TOPIC_PATH}/subscription/${sub}`);
    assert.ok([204, 200].includes(s.status), `create subscription: got ${s.status} ${await s.text()}`);
    key = newES256Key();
    jwks = await startJwksServer([key]);
    origin = await startOrigin();
    worker = await startWorkerd({
      bindings: {
        JWKS_URL: jwks.url,
        EXPECTED_ISSUER: ISSUER,
        ORIGIN_URL: origin.url,
        PULSAR_REST_URL: WEB,
        EXPECTED_AUDIENCE: SELF_ORIGIN,
        PULSAR_TOPIC: `persistent://${TOPIC_PATH}`,
      },
    });
  });

  after(async () => {
    if (up) await call('DELETE', `/admin/v2/persistent/${TOPIC_PATH}/subscription/${sub}`).then((r) => r.text()).catch(() => {});
    await worker?.stop();
    await Promise.all([jwks?.close(), origin?.close()]);
  });

  it('publishes allowed and rejected requests to the topic', async (t) => {
    if (!up) {
      if (CI) assert.fail(`Pulsar is not reachable at ${WEB} (CI=true)`);
      t.skip(`Pulsar is not reachable at ${WEB}; start it (deploy/pulsar/) or unset PULSAR_WEB_URL`);
      return;
    }
    const jti = `pulsar-${crypto.randomUUID()}`;
    const token = signJWT(claimsFor({ issuer: ISSUER, audience: worker.url, sub: 'pulsar-user', route: 'edge', jti }), { key });
    const ok = await fetch(`${worker.url}/via/pulsar?q=secret`, { headers: { 'x-portcullis-assertion': token } });
    await ok.text();
    assert.equal(ok.status, 200);
    const deniedId = `pulsar-denied-${crypto.randomUUID()}`;
    const denied = await fetch(`${worker.url}/via/pulsar`, { headers: { 'x-request-id': deniedId } });
    await denied.text();
    assert.equal(denied.status, 401);

    // Peek the subscription's backlog until both events are there.
    const found = new Map();
    const deadline = Date.now() + 20_000;
    while (found.size < 2 && Date.now() < deadline) {
      found.clear();
      for (let n = 1; n <= 50; n++) {
        const r = await call('GET', `/admin/v2/persistent/${TOPIC_PATH}/subscription/${sub}/position/${n}`, { accept: '*/*' });
        const body = await r.text();
        if (r.status !== 200) break;
        let event;
        try {
          event = JSON.parse(body);
        } catch {
          continue;
        }
        if (event.request_id === jti || event.request_id === deniedId) found.set(event.request_id, { event, headers: r.headers });
      }
      if (found.size < 2) await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.ok(found.has(jti), `allowed request's edge event not on the topic (found ${[...found.keys()]})`);
    assert.ok(found.has(deniedId), `rejected request's edge event not on the topic (found ${[...found.keys()]})`);
    const allowMsg = found.get(jti);
    assert.equal(allowMsg.headers.get('x-pulsar-partition-key'), 'pulsar-user', 'message key');
    assert.equal(found.get(deniedId).headers.get('x-pulsar-partition-key'), 'anonymous', 'message key of a rejected request');
    assert.equal(
      new Date(allowMsg.headers.get('x-pulsar-event-time')).toISOString(),
      allowMsg.event.time,
      'event time = the event\'s time',
    );
    const allow = allowMsg.event;
    assert.deepEqual(
      { sub: allow.sub, route: allow.route, method: allow.method, path: allow.path, status: allow.status, verdict: allow.verdict },
      { sub: 'pulsar-user', route: 'edge', method: 'GET', path: '/via/pulsar', status: 200, verdict: 'allow' },
    );
    const deny = found.get(deniedId).event;
    assert.equal(deny.verdict, 'unauthorized');
    assert.equal(deny.status, 401);
    assert.ok(!worker.output().includes('edge event not published'), `publish failures logged:\n${worker.output()}`);
  });
});
