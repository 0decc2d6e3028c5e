// The Worker in the real workerd runtime: assertion verification, forwarding,
// streaming, JWKS caching and edge events.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import {
  claimsFor,
  newES256Key,
  patternBlock,
  selfSignedCert,
  signJWT,
  startFakePulsar,
  startJwksServer,
  startOrigin,
  wsFrame,
  wsUnframe,
} from './fixtures.mjs';
import { SELF_ORIGIN, startWorkerd } from './workerd.mjs';

const ISSUER = 'https://auth.portcullis.test';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nowSec = () => Math.floor(Date.now() / 1000);

/** GET through node:http so that hop-by-hop headers can be sent. */
function rawRequest(url, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('worker (EXPECTED_AUDIENCE = its own origin, ORIGIN_URL, edge events)', () => {
  let key;
  let otherKey;
  let jwks;
  let origin;
  let pulsar;
  let worker;
  const REFRESH_MS = 1000;

  before(async () => {
    key = newES256Key();
    otherKey = newES256Key();
    jwks = await startJwksServer([key]);
    origin = await startOrigin();
    pulsar = await startFakePulsar();
    worker = await startWorkerd({
      bindings: {
        JWKS_URL: jwks.url,
        EXPECTED_ISSUER: ISSUER,
        ORIGIN_URL: origin.url,
        JWKS_REFRESH_MIN_INTERVAL: `${REFRESH_MS}ms`,
        EXPECTED_AUDIENCE: SELF_ORIGIN,
        PULSAR_REST_URL: pulsar.url,
        PULSAR_TOPIC: 'persistent://public/default/portcullis-edge',
        PULSAR_TOKEN: 'edge-token',
      },
    });
  });

  after(async () => {
    if (process.env.WORKER_TEST_LOG) console.log(worker?.output());
    await worker?.stop();
    await Promise.all([jwks?.close(), origin?.close(), pulsar?.close()]);
  });

  const good = (extra = {}, opts = {}) =>
    signJWT(claimsFor({ issuer: ISSUER, audience: worker.url, ...extra }), { key, ...opts });

  it('forwards a valid assertion with identity headers from the verified claims', async () => {
    const token = good({ sub: 'alice', email: 'alice@example.com', groups: ['engineering', 'admins'] });
    const before = origin.state.requests.length;
    const resp = await rawRequest(`${worker.url}/reports/q3?k=v&x=1`, {
      headers: {
        'x-portcullis-assertion': token,
        'x-portcullis-user': 'mallory',
        'X-Portcullis-Groups': 'root',
        'x-portcullis-extra': 'spoofed',
        x_portcullis_groups: 'admins',
        X_Portcullis_User: 'root',
        'remote-user': 'root',
        'remote-groups': 'admins',
        'x-forwarded-user': 'root',
        'x-auth-request-groups': 'admins',
        'cf-access-authenticated-user-email': 'root@example.com',
        'x-original-url': '/admin',
        'x-request-id': 'client-req-1',
        connection: 'keep-alive, x-secret-hop',
        'x-secret-hop': 'must not reach origin',
        'x-custom': 'kept',
      },
    });
    assert.equal(resp.status, 200, resp.body);
    assert.equal(origin.state.requests.length, before + 1);
    const seen = origin.state.requests.at(-1);
    const checks = {
      method: [seen.method, 'GET'],
      url: [seen.url, '/reports/q3?k=v&x=1'],
      user: [seen.headers['x-portcullis-user'], 'alice'],
      email: [seen.headers['x-portcullis-email'], 'alice@example.com'],
      groups: [seen.headers['x-portcullis-groups'], 'engineering,admins'],
      assertion: [seen.headers['x-portcullis-assertion'], token],
      extra: [seen.headers['x-portcullis-extra'], undefined],
      underscoreGroups: [seen.headers.x_portcullis_groups, undefined],
      underscoreUser: [seen.headers.x_portcullis_user, undefined],
      remoteUser: [seen.headers['remote-user'], undefined],
      remoteGroups: [seen.headers['remote-groups'], undefined],
      forwardedUser: [seen.headers['x-forwarded-user'], undefined],
      authRequest: [seen.headers['x-auth-request-groups'], undefined],
      cfAccess: [seen.headers['cf-access-authenticated-user-email'], undefined],
      originalURL: [seen.headers['x-original-url'], undefined],
      requestId: [seen.headers['x-request-id'], 'client-req-1'],
      hop: [seen.headers['x-secret-hop'], undefined],
      custom: [seen.headers['x-custom'], 'kept'],
      originHost: [seen.headers.host, new URL(origin.url).host],
      responseRequestId: [resp.headers['x-request-id'], 'client-req-1'],
      responseHop: [resp.headers['x-hop'], undefined],
      cookies: [JSON.stringify(resp.headers['set-cookie']), JSON.stringify(['a=1; Path=/', 'b=2; Path=/'])],
    };
    for (const [name, [got, want]] of Object.entries(checks)) {
      assert.equal(got, want, `${name}: got ${got}, want ${want}`);
    }
    // Exactly one copy of each identity header.
    const userCopies = seen.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-portcullis-user');
    assert.equal(userCopies.length, 1, `x-portcullis-user copies: got ${userCopies.length}, want 1`);
  });

  it('adds X-Request-Id from the assertion jti when the client sent none', async () => {
    const claims = claimsFor({ issuer: ISSUER, audience: worker.url, jti: 'req-from-jti' });
    const resp = await fetch(`${worker.url}/x`, { headers: { 'x-portcullis-assertion': signJWT(claims, { key }) } });
    await resp.text();
    assert.equal(resp.status, 200);
    assert.equal(origin.state.requests.at(-1).headers['x-request-id'], 'req-from-jti');
    assert.equal(resp.headers.get('x-request-id'), 'req-from-jti');
  });

  it('passes method, body, non-2xx status and UTF-8 identity through', async () => {
    const token = good({ sub: 'zoë', email: 'zoë@example.com', groups: ['ingénierie'] });
    const resp = await fetch(`${worker.url}/teapot?q=1`, {
      method: 'PUT',
      headers: { 'x-portcullis-assertion': token, 'content-type': 'text/plain' },
      body: 'hello origin',
    });
    const echoed = await resp.json();
    assert.equal(resp.status, 418);
    assert.equal(echoed.method, 'PUT');
    assert.equal(echoed.body, 'hello origin');
    const seen = origin.state.requests.at(-1);
    const userRaw = seen.rawHeaders[seen.rawHeaders.findIndex((h) => h.toLowerCase() === 'x-portcullis-user') + 1];
    // Node decodes header bytes as latin1; re-encode to compare the UTF-8 bytes.
    assert.equal(Buffer.from(userRaw, 'latin1').toString('utf8'), 'zoë');
  });

  it('accepts times within the 30 s skew and aud as an array', async () => {
    const n = nowSec();
    const cases = {
      'exp 20s ago': { exp: n - 20, iat: n - 80 },
      'nbf 20s ahead': { nbf: n + 20 },
      'iat 20s ahead': { iat: n + 20, exp: n + 80 },
      'aud array': { aud: ['https://someone-else.example', worker.url] },
    };
    for (const [name, extra] of Object.entries(cases)) {
      const resp = await fetch(`${worker.url}/ok`, { headers: { 'x-portcullis-assertion': good(extra) } });
      const body = await resp.text();
      assert.equal(resp.status, 200, `${name}: got ${resp.status} ${body}, want 200`);
    }
  });

  it('rejects every bad assertion with 401 JSON and never contacts the origin', async () => {
    const n = nowSec();
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pubPem = key.publicKey.export({ format: 'pem', type: 'spki' });
    const claims = claimsFor({ issuer: ISSUER, audience: worker.url });
    const valid = good();
    const [h, p, s] = valid.split('.');
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: 'root' })).toString('base64url')}.${s}`;
    const cases = [
      { name: 'missing', token: null, reason: 'missing assertion' },
      { name: 'empty', token: '', reason: 'missing assertion' },
      { name: 'garbage', token: 'not-a-jwt', reason: 'malformed assertion' },
      { name: 'two parts', token: `${h}.${p}`, reason: 'malformed assertion' },
      { name: 'bad base64', token: `${h}.%%%.${s}`, reason: 'malformed assertion' },
      { name: 'payload not JSON', token: `${h}.${Buffer.from('nope').toString('base64url')}.${s}`, reason: 'malformed assertion' },
      { name: 'forged with other key, real kid', token: signJWT(claims, { key: otherKey, kid: key.kid }), reason: 'bad signature' },
      { name: 'tampered payload', token: tampered, reason: 'bad signature' },
      { name: 'truncated signature', token: `${h}.${p}.${s.slice(0, 40)}`, reason: 'bad signature' },
      { name: 'alg HS256 keyed with the public key', token: signJWT(claims, { alg: 'HS256', kid: key.kid, secret: pubPem }), reason: 'unsupported alg' },
      { name: 'alg none', token: signJWT(claims, { alg: 'none', kid: key.kid }), reason: 'unsupported alg' },
      { name: 'alg RS256', token: signJWT(claims, { alg: 'RS256', kid: key.kid, rsaKey: rsa.privateKey }), reason: 'unsupported alg' },
      { name: 'crit header', token: good({}, { header: { crit: ['exp'] } }), reason: 'unsupported crit header' },
      { name: 'no kid', token: good({}, { header: { kid: undefined } }), reason: 'missing kid' },
      { name: 'unknown kid', token: signJWT(claims, { key: otherKey }), reason: 'unknown kid' },
      { name: 'expired beyond skew', token: good({ iat: n - 120, exp: n - 40 }), reason: 'expired' },
      { name: 'no exp', token: good({ exp: undefined }), reason: 'missing exp' },
      { name: 'not yet valid', token: good({ nbf: n + 40 }), reason: 'not yet valid' },
      { name: 'iat in the future', token: good({ iat: n + 40, exp: n + 100 }), reason: 'issued in the future' },
      { name: 'no iat', token: good({ iat: undefined }), reason: 'missing iat' },
      { name: 'wrong iss', token: good({ iss: 'https://evil.example' }), reason: 'wrong issuer' },
      { name: 'wrong aud', token: good({ aud: 'http://127.0.0.1:1' }), reason: 'wrong audience' },
      { name: 'aud array without us', token: good({ aud: ['https://a.example', 'https://b.example'] }), reason: 'wrong audience' },
      { name: 'no aud', token: good({ aud: undefined }), reason: 'wrong audience' },
      { name: 'no sub', token: good({ sub: null }), reason: 'missing sub' },
      // Bound to another request (the test sends POST /secret?q=1).
      { name: 'for another method', token: good({ htm: 'GET', htu: `${worker.url}/secret` }), reason: 'wrong method' },
      { name: 'for another path', token: good({ htm: 'POST', htu: `${worker.url}/public` }), reason: 'wrong path' },
      { name: 'for a path prefix', token: good({ htm: 'POST', htu: `${worker.url}/secre` }), reason: 'wrong path' },
      { name: 'htu not a URL', token: good({ htm: 'POST', htu: '/secret' }), reason: 'wrong path' },
      { name: 'htm not a string', token: good({ htm: ['POST'] }), reason: 'wrong method' },
      { name: 'groups not strings', token: good({ groups: [1, 2] }), reason: 'bad groups claim' },
      { name: 'CRLF in email', token: good({ email: 'a@b.c\r\nx-portcullis-user: root' }), reason: 'claims not representable as headers' },
    ];
    for (const tc of cases) {
      const before = origin.state.requests.length;
      const headers = tc.token === null ? {} : { 'x-portcullis-assertion': tc.token };
      const resp = await fetch(`${worker.url}/secret?q=1`, { method: 'POST', headers, body: 'payload' });
      const text = await resp.text();
      assert.equal(resp.status, 401, `${tc.name}: status got ${resp.status} (${text}), want 401`);
      assert.equal(resp.headers.get('content-type'), 'application/json', `${tc.name}: content-type`);
      assert.deepEqual(JSON.parse(text), { error: 'unauthorized', reason: tc.reason }, `${tc.name}: body`);
      assert.ok(resp.headers.get('x-request-id'), `${tc.name}: X-Request-Id missing`);
      assert.equal(origin.state.requests.length, before, `${tc.name}: the origin was contacted`);
    }
  });

  it('admits an assertion bound to this method and path, whatever the query and equivalent encodings', async () => {
    const token = good({ htm: 'PUT', htu: `${worker.url}/a%7Eb/~c%2fd` });
    const resp = await fetch(`${worker.url}/a~b/%7Ec%2Fd?x=1`, { method: 'PUT', headers: { 'x-portcullis-assertion': token }, body: 'x' });
    assert.equal(resp.status, 200, await resp.text());
  });

  it('publishes an edge event per request without the query, with key and token', async () => {
    const claims = claimsFor({ issuer: ISSUER, audience: worker.url, sub: 'edge-user', route: 'reports', jti: `edge-${crypto.randomUUID()}` });
    const resp = await fetch(`${worker.url}/edge/path?secret=1`, { headers: { 'x-portcullis-assertion': signJWT(claims, { key }) } });
    await resp.text();
    assert.equal(resp.status, 200);
    const { post, msg } = await pulsar.waitFor((m) => m.payload.includes(claims.jti));
    assert.equal(post.method, 'POST');
    assert.equal(post.url, '/topics/persistent/public/default/portcullis-edge');
    assert.equal(post.headers.authorization, 'Bearer edge-token');
    const event = JSON.parse(msg.payload);
    assert.equal(msg.key, 'edge-user');
    assert.match(msg.eventTime, /^\d+$/);
    assert.equal(Number(msg.eventTime), Date.parse(event.time));
    assert.ok(post.body.producerName.startsWith('portcullis-worker-'), post.body.producerName);
    const want = { request_id: claims.jti, sub: 'edge-user', route: 'reports', method: 'GET', path: '/edge/path', status: 200, verdict: 'allow' };
    for (const [k, v] of Object.entries(want)) assert.equal(event[k], v, `event.${k}: got ${event[k]}, want ${v}`);

    const rid = `denied-${crypto.randomUUID()}`;
    const denied = await fetch(`${worker.url}/edge/denied?x=y`, { headers: { 'x-request-id': rid } });
    await denied.text();
    const { msg: msg2 } = await pulsar.waitFor((m) => m.payload.includes(rid));
    const ev2 = JSON.parse(msg2.payload);
    assert.deepEqual(
      { verdict: ev2.verdict, status: ev2.status, reason: ev2.reason, path: ev2.path, sub: ev2.sub, key: msg2.key },
      { verdict: 'unauthorized', status: 401, reason: 'missing assertion', path: '/edge/denied', sub: '', key: 'anonymous' },
    );
    // Sequence ids increase in the order they arrive, so broker
    // de-duplication keeps every message.
    const seqs = pulsar.state.posts.filter((p) => p.body.producerName === post.body.producerName).flatMap((p) => p.body.messages.map((m) => m.sequenceId));
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `sequence ids not increasing: ${seqs}`);
  });

  it('keeps edge events of concurrent requests in sequence-id order, without cross-request continuations', async () => {
    const tag = `burst-${crypto.randomUUID()}`;
    const rids = Array.from({ length: 30 }, (_, i) => `${tag}-${i}`);
    const resps = await Promise.all(rids.map((rid) => fetch(`${worker.url}/burst`, { headers: { 'x-request-id': rid, 'x-portcullis-assertion': good() } })));
    await Promise.all(resps.map((r) => r.text()));
    for (const rid of rids) await pulsar.waitFor((m) => m.payload.includes(`"${rid}"`));
    const msgs = pulsar.state.posts.flatMap((p) => p.body.messages.map((m) => ({ producer: p.body.producerName, m })));
    const mine = msgs.filter(({ m }) => m.payload.includes(tag));
    assert.equal(mine.length, rids.length, 'an event was published twice');
    for (const producer of new Set(mine.map((x) => x.producer))) {
      const seqs = msgs.filter((x) => x.producer === producer).map(({ m }) => m.sequenceId);
      for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `sequence ids of ${producer} not increasing: ${seqs}`);
    }
    assert.doesNotMatch(worker.output(), /different request|cross-request|never generate a response/i);
  });

  it('answers 400 to a request target that is no URL, and still publishes its edge event', async () => {
    const rid = `star-${crypto.randomUUID()}`;
    const { port } = new URL(worker.url);
    const head = await new Promise((resolve, reject) => {
      const sock = net.connect(Number(port), '127.0.0.1', () => {
        sock.write(`OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Request-Id: ${rid}\r\nConnection: close\r\n\r\n`);
      });
      let got = '';
      sock.on('data', (c) => {
        got += c;
      });
      sock.on('end', () => resolve(got));
      sock.on('error', reject);
      sock.setTimeout(5000, () => sock.destroy(new Error('timeout')));
    });
    assert.match(head, /^HTTP\/1\.1 400 /, head.slice(0, 200));
    const { msg } = await pulsar.waitFor((m) => m.payload.includes(rid));
    const ev = JSON.parse(msg.payload);
    assert.deepEqual({ status: ev.status, path: ev.path, method: ev.method }, { status: 400, path: '*', method: 'OPTIONS' });
  });

  it('never takes the audience from the Host header', async () => {
    const token = good({ aud: 'http://billing.internal.example.com' });
    const before = origin.state.requests.length;
    const status = await new Promise((resolve, reject) => {
      const { port } = new URL(worker.url);
      const req = http.request({ host: '127.0.0.1', port, path: '/admin', headers: { host: 'billing.internal.example.com', 'x-portcullis-assertion': token } }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 401);
    assert.equal(origin.state.requests.length, before, 'the origin was contacted');
  });

  it('logs an edge event the broker reports as failed (errorCode)', async () => {
    pulsar.state.errorCode = 2;
    try {
      const rid = `failing-${crypto.randomUUID()}`;
      const resp = await fetch(`${worker.url}/edge/fail`, { headers: { 'x-request-id': rid, 'x-portcullis-assertion': good() } });
      await resp.text();
      assert.equal(resp.status, 200, 'a failing edge publish must not change the response');
      await pulsar.waitFor((m) => m.payload.includes(rid));
      const deadline = Date.now() + 5000;
      while (!worker.output().includes(`"request_id":"${rid}"`) && Date.now() < deadline) await sleep(50);
      const line = worker.output().split('\n').find((l) => l.includes(rid));
      assert.ok(line, `no log line for the failed edge event ${rid}`);
      assert.match(line, /edge event not published/);
      assert.match(line, /errorCode 2/);
    } finally {
      pulsar.state.errorCode = 0;
    }
  });

  it('fetches the JWKS at most once per interval under a storm of unknown kids', async () => {
    await sleep(REFRESH_MS + 100); // let any earlier refresh interval lapse
    const before = jwks.state.fetches;
    const claims = claimsFor({ issuer: ISSUER, audience: worker.url });
    const storm = Array.from({ length: 60 }, () => signJWT(claims, { key: otherKey, kid: crypto.randomBytes(32).toString('base64url') }));
    const started = Date.now();
    const statuses = await Promise.all(
      storm.map(async (token) => {
        const r = await fetch(`${worker.url}/storm`, { headers: { 'x-portcullis-assertion': token } });
        await r.text();
        return r.status;
      }),
    );
    const elapsed = Date.now() - started;
    assert.deepEqual([...new Set(statuses)], [401]);
    const fetched = jwks.state.fetches - before;
    const allowed = Math.floor(elapsed / REFRESH_MS) + 1;
    assert.ok(fetched >= 1, `JWKS fetches during storm: got ${fetched}, want at least the one refresh`);
    assert.ok(fetched <= allowed, `JWKS fetches during a ${elapsed} ms storm: got ${fetched}, want <= ${allowed}`);
  });

  it('accepts a rotated-in key without restarting the worker', async () => {
    const rotated = newES256Key();
    jwks.state.keys = [rotated, key];
    const token = signJWT(claimsFor({ issuer: ISSUER, audience: worker.url, sub: 'rotated' }), { key: rotated });
    const deadline = Date.now() + 5 * REFRESH_MS;
    let status;
    let body;
    do {
      const resp = await fetch(`${worker.url}/rotated`, { headers: { 'x-portcullis-assertion': token } });
      status = resp.status;
      body = await resp.text();
      if (status !== 200) await sleep(100);
    } while (status !== 200 && Date.now() < deadline);
    assert.equal(status, 200, `new key: got ${status} ${body}, want 200`);
    assert.equal(origin.state.requests.at(-1).headers['x-portcullis-user'], 'rotated');

    // The old key is removed from the JWKS: after the next refresh it is gone.
    jwks.state.keys = [rotated];
    await sleep(REFRESH_MS + 100);
    // An unknown kid triggers the refresh that drops the retired key.
    await (await fetch(`${worker.url}/x`, { headers: { 'x-portcullis-assertion': signJWT(claimsFor({ issuer: ISSUER, audience: worker.url }), { key: otherKey }) } })).text();
    const old = await fetch(`${worker.url}/old`, { headers: { 'x-portcullis-assertion': good() } });
    assert.deepEqual(await old.json(), { error: 'unauthorized', reason: 'unknown kid' });
    jwks.state.keys = [rotated, key];
    await sleep(REFRESH_MS + 100);
  });

  it('streams without buffering: the first chunk passes before the last is sent', async () => {
    const signal = AbortSignal.timeout(10_000);
    // Download: the origin holds back its end until we have read its start.
    const down = await fetch(`${worker.url}/s/trickle-down`, { headers: { 'x-portcullis-assertion': good() }, signal });
    const reader = down.body.getReader();
    const first = await reader.read();
    assert.equal(Buffer.from(first.value).toString(), 'first;', 'first download chunk');
    origin.state.release();
    let rest = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += Buffer.from(r.value).toString();
    assert.equal(rest, 'second');

    // Upload: we hold back the end of the body until the origin has its start.
    const originGotFirst = new Promise((resolve) => {
      origin.state.onFirstUpload = resolve;
    });
    let sentFirst = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (!sentFirst) {
          sentFirst = true;
          controller.enqueue(new TextEncoder().encode('up-first;'));
          return;
        }
        await originGotFirst;
        controller.enqueue(new TextEncoder().encode('up-second'));
        controller.close();
      },
    });
    const up = await fetch(`${worker.url}/s/trickle-up`, {
      method: 'POST',
      headers: { 'x-portcullis-assertion': good() },
      body,
      duplex: 'half',
      signal,
    });
    assert.equal(await up.text(), 'up-first;up-second');
  });

  it('passes a WebSocket through after verifying the handshake', async () => {
    const cases = [
      { name: 'valid assertion', token: good({ sub: 'ws-user' }), want: 101 },
      { name: 'no assertion', token: null, want: 401 },
    ];
    for (const tc of cases) {
      const before = origin.state.requests.length;
      const headers = {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': crypto.randomBytes(16).toString('base64'),
      };
      if (tc.token) headers['x-portcullis-assertion'] = tc.token;
      const got = await new Promise((resolve, reject) => {
        const req = http.request(`${worker.url}/ws`, { headers, agent: false, signal: AbortSignal.timeout(10_000) });
        req.on('error', reject);
        req.on('response', (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode }));
        });
        req.on('upgrade', (res, sock) => {
          sock.write(wsFrame('ping', true));
          sock.once('data', (d) => {
            sock.destroy();
            resolve({ status: res.statusCode, reply: wsUnframe(d) });
          });
        });
        req.end();
      });
      assert.equal(got.status, tc.want, `${tc.name}: status`);
      if (tc.want === 101) {
        assert.equal(got.reply, 'pong:ping', `${tc.name}: echoed frame`);
        assert.equal(origin.state.requests.at(-1).headers['x-portcullis-user'], 'ws-user');
      } else {
        assert.equal(origin.state.requests.length, before, `${tc.name}: the origin was contacted`);
      }
    }
  });

  it('streams a 50 MB upload to the origin intact', async () => {
    const total = 50 * 1024 * 1024;
    const block = 256 * 1024;
    const hash = crypto.createHash('sha256');
    let i = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (i * block >= total) {
          controller.close();
          return;
        }
        const chunk = patternBlock(3, i++, block);
        hash.update(chunk);
        controller.enqueue(chunk);
      },
    });
    const resp = await fetch(`${worker.url}/big/upload`, {
      method: 'POST',
      headers: { 'x-portcullis-assertion': good(), 'content-type': 'application/octet-stream' },
      body,
      duplex: 'half',
    });
    const got = await resp.json();
    assert.equal(resp.status, 200);
    assert.deepEqual(got, { bytes: total, sha256: hash.digest('hex') });
  });

  it('streams a 50 MB download to the client intact', async () => {
    const total = 50 * 1024 * 1024;
    const resp = await fetch(`${worker.url}/big/download?bytes=${total}`, { headers: { 'x-portcullis-assertion': good() } });
    assert.equal(resp.status, 200);
    const want = crypto.createHash('sha256');
    for (let i = 0, sent = 0; sent < total; i++) {
      const chunk = patternBlock(7, i, 64 * 1024).subarray(0, Math.min(64 * 1024, total - sent));
      want.update(chunk);
      sent += chunk.length;
    }
    const got = crypto.createHash('sha256');
    let n = 0;
    for await (const chunk of resp.body) {
      got.update(chunk);
      n += chunk.length;
    }
    assert.equal(n, total, `bytes: got ${n}, want ${total}`);
    assert.equal(got.digest('hex'), want.digest('hex'));
  });
});

describe('worker (EXPECTED_AUDIENCE, ORIGIN service binding)', () => {
  let key;
  let jwks;
  let origin;
  let worker;

  before(async () => {
    key = newES256Key();
    jwks = await startJwksServer([key]);
    origin = await startOrigin();
    worker = await startWorkerd({
      bindings: {
        JWKS_URL: jwks.url,
        EXPECTED_ISSUER: ISSUER,
        EXPECTED_AUDIENCE: 'https://app.example.com, https://APP2.example.com:443',
        ORIGIN_URL: 'https://app.example.com/base/',
      },
      originService: `127.0.0.1:${origin.port}`,
    });
  });

  after(async () => {
    await worker?.stop();
    await Promise.all([jwks?.close(), origin?.close()]);
  });

  it('checks aud against EXPECTED_AUDIENCE and forwards through the ORIGIN binding', async () => {
    const cases = [
      { name: 'first audience', aud: 'https://app.example.com', want: 200 },
      { name: 'second audience, normalized', aud: 'https://app2.example.com', want: 200 },
      { name: 'explicit default port', aud: 'https://app.example.com:443', want: 200 },
      { name: "the worker's own origin", aud: worker.url, want: 401 },
      { name: 'other scheme', aud: 'http://app.example.com', want: 401 },
    ];
    for (const tc of cases) {
      const before = origin.state.requests.length;
      const token = signJWT(claimsFor({ issuer: ISSUER, audience: tc.aud }), { key });
      const resp = await fetch(`${worker.url}/p?a=b`, { headers: { 'x-portcullis-assertion': token } });
      const text = await resp.text();
      assert.equal(resp.status, tc.want, `${tc.name}: got ${resp.status} ${text}, want ${tc.want}`);
      const reached = origin.state.requests.length - before;
      assert.equal(reached, tc.want === 200 ? 1 : 0, `${tc.name}: origin requests got ${reached}`);
      if (tc.want === 200) {
        const seen = origin.state.requests.at(-1);
        assert.equal(seen.url, '/base/p?a=b', `${tc.name}: path below ORIGIN_URL`);
        assert.equal(seen.headers.host, 'app.example.com', `${tc.name}: Host from ORIGIN_URL`);
      }
    }
  });
});

describe('worker (failure modes)', () => {
  it('answers 500 when misconfigured, and 401 when the JWKS is unreachable', async () => {
    const origin = await startOrigin();
    const key = newES256Key();
    const jwks = await startJwksServer([key]);
    jwks.state.status = 503;
    const misconfigured = await startWorkerd({ bindings: { ORIGIN_URL: origin.url, CLOCK_SKEW: '5m' } });
    const noJwks = await startWorkerd({
      bindings: { JWKS_URL: jwks.url, EXPECTED_ISSUER: ISSUER, ORIGIN_URL: origin.url, JWKS_REFRESH_MIN_INTERVAL: '10m', EXPECTED_AUDIENCE: SELF_ORIGIN },
    });
    try {
      const r1 = await fetch(`${misconfigured.url}/x`);
      assert.equal(r1.status, 500);
      assert.deepEqual(await r1.json(), { error: 'misconfigured' });
      const log = misconfigured.output();
      for (const want of ['JWKS_URL', 'EXPECTED_ISSUER', 'CLOCK_SKEW']) assert.ok(log.includes(want), `log lacks ${want}: ${log}`);

      const token = signJWT(claimsFor({ issuer: ISSUER, audience: noJwks.url }), { key });
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`${noJwks.url}/x`, { headers: { 'x-portcullis-assertion': token } });
        assert.equal(r.status, 401);
        assert.deepEqual(await r.json(), { error: 'unauthorized', reason: 'jwks unavailable' });
      }
      assert.equal(jwks.state.fetches, 1, `JWKS fetches while failing: got ${jwks.state.fetches}, want 1 (rate limited)`);
      assert.equal(origin.state.requests.length, 0, 'the origin was contacted');
    } finally {
      await misconfigured.stop();
      await noJwks.stop();
      await jwks.close();
      await origin.close();
    }
  });

  it('does not follow a redirect of the JWKS URL (whoever it points to would choose the keys)', async () => {
    const origin = await startOrigin();
    const attacker = newES256Key();
    const evil = await startJwksServer([attacker]);
    const jwks = await startJwksServer([newES256Key()]);
    jwks.state.redirect = evil.url.replace('127.0.0.1', 'localhost');
    const worker = await startWorkerd({ bindings: { JWKS_URL: jwks.url, EXPECTED_ISSUER: ISSUER, ORIGIN_URL: origin.url, EXPECTED_AUDIENCE: SELF_ORIGIN } });
    try {
      const forged = signJWT(claimsFor({ issuer: ISSUER, audience: worker.url, sub: 'forged-admin' }), { key: attacker });
      const r = await fetch(`${worker.url}/x`, { headers: { 'x-portcullis-assertion': forged } });
      assert.equal(r.status, 401, await r.text());
      assert.equal(evil.state.fetches, 0, 'the redirect was followed');
      assert.equal(origin.state.requests.length, 0, 'the origin was contacted');
      assert.match(worker.output(), /a redirect, not followed/);
    } finally {
      await worker.stop();
      await jwks.close();
      await evil.close();
      await origin.close();
    }
  });

  it('fetches an HTTPS JWKS only from a trusted certificate', async () => {
    const tls = await selfSignedCert();
    const key = newES256Key();
    const jwks = await startJwksServer([key], { tls });
    const origin = await startOrigin();
    const bindings = { JWKS_URL: jwks.url, EXPECTED_ISSUER: ISSUER, ORIGIN_URL: origin.url, EXPECTED_AUDIENCE: SELF_ORIGIN };
    const trusting = await startWorkerd({ bindings, trustedCertificates: [tls.cert] });
    const untrusting = await startWorkerd({ bindings });
    try {
      const cases = [
        { name: 'CA trusted', worker: trusting, want: 200 },
        { name: 'CA not trusted', worker: untrusting, want: 401 },
      ];
      for (const tc of cases) {
        const token = signJWT(claimsFor({ issuer: ISSUER, audience: tc.worker.url }), { key });
        const r = await fetch(`${tc.worker.url}/x`, { headers: { 'x-portcullis-assertion': token } });
        const body = await r.text();
        assert.equal(r.status, tc.want, `${tc.name}: got ${r.status} ${body}, want ${tc.want}`);
      }
      assert.match(untrusting.output(), /jwks fetch failed/);
    } finally {
      await trusting.stop();
      await untrusting.stop();
      await jwks.close();
      await origin.close();
    }
  });

  it('answers 502 when the origin is down', async () => {
    const key = newES256Key();
    const jwks = await startJwksServer([key]);
    const origin = await startOrigin();
    const deadURL = origin.url;
    await origin.close();
    const worker = await startWorkerd({ bindings: { JWKS_URL: jwks.url, EXPECTED_ISSUER: ISSUER, ORIGIN_URL: deadURL, EXPECTED_AUDIENCE: SELF_ORIGIN } });
    try {
      const token = signJWT(claimsFor({ issuer: ISSUER, audience: worker.url }), { key });
      const r = await fetch(`${worker.url}/x`, { headers: { 'x-portcullis-assertion': token, 'x-request-id': 'r-502' } });
      assert.equal(r.status, 502);
      assert.deepEqual(await r.json(), { error: 'bad_gateway', request_id: 'r-502' });
    } finally {
      await worker.stop();
      await jwks.close();
    }
  });
});
