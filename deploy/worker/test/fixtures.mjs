// Test fixtures: ES256 keys and tokens, a JWKS server, an origin server and a
// fake Pulsar REST produce endpoint, all on 127.0.0.1 with kernel-chosen ports.

import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';

export function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

/** RFC 7638 thumbprint of an EC public JWK. */
export function thumbprint(jwk) {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return crypto.createHash('sha256').update(canonical).digest('base64url');
}

/** A fresh ES256 key pair with its public JWK (kid = RFC 7638 thumbprint). */
export function newES256Key() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = thumbprint(jwk);
  return { privateKey, publicKey, kid, jwk: { ...jwk, kid, alg: 'ES256', use: 'sig' } };
}

/** Signs a JWT. alg: ES256 (default), HS256 (secret), RS256 (rsa key) or none. */
export function signJWT(claims, { key, kid, alg = 'ES256', header = {}, secret, rsaKey } = {}) {
  const h = { alg, typ: 'JWT', ...(kid ?? key?.kid ? { kid: kid ?? key.kid } : {}), ...header };
  const input = `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(claims))}`;
  let sig;
  switch (alg) {
    case 'ES256':
      sig = crypto.sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
      break;
    case 'HS256':
      sig = crypto.createHmac('sha256', secret).update(input).digest();
      break;
    case 'RS256':
      sig = crypto.sign('sha256', Buffer.from(input), rsaKey);
      break;
    case 'none':
      return `${input}.`;
    default:
      throw new Error(`unknown alg ${alg}`);
  }
  return `${input}.${b64url(sig)}`;
}

/** Standard claims for an assertion valid now. */
export function claimsFor({ issuer, audience, sub = 'alice', now = Math.floor(Date.now() / 1000), ...rest }) {
  return {
    iss: issuer,
    aud: audience,
    sub,
    email: `${sub}@example.com`,
    groups: ['engineering', 'admins'],
    route: 'app',
    iat: now,
    exp: now + 60,
    jti: `req-${crypto.randomUUID()}`,
    ...rest,
  };
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

function close(server) {
  return new Promise((resolve) => {
    server.closeAllConnections?.();
    server.close(() => resolve());
  });
}

/**
 * A self-signed certificate for 127.0.0.1 (made with the openssl CLI), for
 * HTTPS test servers: {key, cert} in PEM.
 */
export async function selfSignedCert() {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'portcullis-cert-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
      '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-addext', 'basicConstraints=critical,CA:TRUE',
    ], { stdio: 'pipe' });
    return {
      key: await readFile(path.join(dir, 'key.pem'), 'utf8'),
      cert: await readFile(path.join(dir, 'cert.pem'), 'utf8'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Serves {keys: [...]} at /jwks.json and counts fetches; over HTTPS when
 * tls ({key, cert}) is given.
 */
export async function startJwksServer(initialKeys, { tls } = {}) {
  // state.redirect: answer 302 to that URL instead of the keys.
  const state = { keys: [...initialKeys], fetches: 0, status: 200, redirect: null };
  const handler = (req, res) => {
    if (req.url !== '/jwks.json') {
      res.writeHead(404).end();
      return;
    }
    state.fetches++;
    if (state.redirect) {
      res.writeHead(302, { location: state.redirect }).end();
      return;
    }
    res.writeHead(state.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: state.keys.map((k) => k.jwk) }));
  };
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  const port = await listen(server);
  return { state, url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}/jwks.json`, close: () => close(server) };
}

/** Deterministic pseudo-random bytes: block i of a stream seeded by `seed`. */
export function patternBlock(seed, i, size) {
  const out = Buffer.alloc(size);
  let x = (seed * 2654435761 + i * 40503 + 1) >>> 0;
  for (let j = 0; j < size; j += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, j);
  }
  return out;
}

/**
 * The origin: records every request it sees; /upload answers the sha256 and
 * length of the request body; /download?bytes=N streams N pattern bytes;
 * anything else echoes the request as JSON.
 */
export async function startOrigin() {
  const state = { requests: [] };
  const server = http.createServer((req, res) => {
    const seen = { method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders };
    state.requests.push(seen);
    const u = new URL(req.url, 'http://origin');
    if (u.pathname.endsWith('/upload')) {
      const h = crypto.createHash('sha256');
      let n = 0;
      req.on('data', (c) => {
        h.update(c);
        n += c.length;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ bytes: n, sha256: h.digest('hex') }));
      });
      return;
    }
    if (u.pathname.endsWith('/trickle-down')) {
      // First chunk now, the rest only once the test calls state.release().
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first;');
      new Promise((resolve) => {
        state.release = resolve;
      }).then(() => res.end('second'));
      return;
    }
    if (u.pathname.endsWith('/trickle-up')) {
      // Reports the first body bytes as soon as they arrive.
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c) => {
        if (body === '') state.onFirstUpload?.(c);
        body += c;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(body);
      });
      return;
    }
    if (u.pathname.endsWith('/download')) {
      const total = Number(u.searchParams.get('bytes'));
      const block = 64 * 1024;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-origin': 'yes' });
      let i = 0;
      let sent = 0;
      const pump = () => {
        while (sent < total) {
          const chunk = patternBlock(7, i++, block).subarray(0, Math.min(block, total - sent));
          sent += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      res.writeHead(u.pathname === '/teapot' ? 418 : 200, {
        'content-type': 'application/json',
        'set-cookie': ['a=1; Path=/', 'b=2; Path=/'],
        connection: 'x-hop',
        'x-hop': 'should not reach the client',
      });
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
    });
  });
  // WebSocket: answer the handshake, then reply "pong:<text>" to each frame.
  const upgraded = new Set();
  server.on('upgrade', (req, sock) => {
    upgraded.add(sock);
    sock.on('close', () => upgraded.delete(sock));
    state.requests.push({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders });
    const accept = crypto
      .createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    sock.on('data', (d) => sock.write(wsFrame(`pong:${wsUnframe(d)}`, false)));
    sock.on('error', () => sock.destroy());
  });
  const port = await listen(server);
  return {
    state,
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => {
      for (const sock of upgraded) sock.destroy();
      return close(server);
    },
  };
}

/**
 * A fake Pulsar REST produce endpoint: records POSTs to /topics/...;
 * state.errorCode makes it report a failed message (still with 200, as
 * Pulsar does).
 */
export async function startFakePulsar() {
  const state = { posts: [], errorCode: 0, waiters: [] };
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      const post = { method: req.method, url: req.url, headers: req.headers, body: JSON.parse(body || 'null') };
      state.posts.push(post);
      const n = post.body?.messages?.length ?? 0;
      const results = Array.from({ length: n }, (_, i) =>
        state.errorCode
          ? { messageId: null, errorCode: state.errorCode, errorMsg: 'simulated failure' }
          : { messageId: `1:${state.posts.length}:${i}`, errorCode: 0, errorMsg: null },
      );
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ messagePublishResults: results, schemaVersion: 0 }));
      for (const w of state.waiters.splice(0)) w();
    });
  });
  const port = await listen(server);
  return {
    state,
    url: `http://127.0.0.1:${port}`,
    close: () => close(server),
    /**
     * Resolves with {post, msg} once a message matching pred(msg, post) has
     * arrived (a post may carry several), or rejects after timeoutMs.
     */
    async waitFor(pred, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        for (const post of state.posts) {
          const msg = (post.body?.messages ?? []).find((m) => pred(m, post));
          if (msg) return { post, msg };
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new Error('timed out waiting for an edge event');
        await new Promise((resolve) => {
          const t = setTimeout(resolve, Math.min(left, 200));
          state.waiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    },
  };
}

/** One short (< 126 bytes) WebSocket text frame; clients must mask. */
export function wsFrame(text, mask) {
  const payload = Buffer.from(text);
  if (payload.length > 125) throw new Error('wsFrame: short frames only');
  const head = Buffer.from([0x81, (mask ? 0x80 : 0) | payload.length]);
  if (!mask) return Buffer.concat([head, payload]);
  const m = crypto.randomBytes(4);
  return Buffer.concat([head, m, Buffer.from(payload.map((b, i) => b ^ m[i % 4]))]);
}

/** Decodes one short WebSocket text frame. */
export function wsUnframe(buf) {
  const masked = (buf[1] & 0x80) !== 0;
  const len = buf[1] & 0x7f;
  const off = masked ? 6 : 2;
  const p = Buffer.from(buf.subarray(off, off + len));
  if (masked) for (let i = 0; i < p.length; i++) p[i] ^= buf[2 + (i % 4)];
  return p.toString();
}
