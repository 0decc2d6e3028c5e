#!/usr/bin/env node
// Runs the Worker in workerd in front of an origin until killed; for
// end-to-end tests (e.g. the Go test: portcullis -> workerd -> origin).
//
//   node deploy/worker/test/run-workerd.mjs --port P --origin http://127.0.0.1:X \
//        --jwks URL --issuer I [--audience A] [--refresh-interval 30s]
//        [--pulsar-rest-url U] [--pulsar-topic T] [--pulsar-token TOKEN]
//        [--ca-file PEM]... [--stdin-lifeline]
//
// --ca-file adds a CA certificate (PEM file) that workerd trusts for outbound
// HTTPS, e.g. Portcullis's self-signed certificate when --jwks is https.
//
// Prints the line "ready" on stdout once 127.0.0.1:P accepts connections;
// workerd's own output (one JSON log line per event) goes to stderr. Exits on
// SIGTERM/SIGINT (stopping workerd and removing its temp dir), or non-zero if
// workerd cannot start or dies. A SIGKILL cannot be caught and would leave
// workerd running: callers that may be killed hard pass --stdin-lifeline and
// keep a pipe to our stdin open; when it closes (the caller died) we stop.

import { readFile } from 'node:fs/promises';
import process from 'node:process';
import { parseArgs } from 'node:util';

import { SELF_ORIGIN, startWorkerd } from './workerd.mjs';

const usage = `usage: run-workerd.mjs --port P --origin URL --jwks URL --issuer ISS [--audience AUD]
       [--refresh-interval DUR] [--pulsar-rest-url URL] [--pulsar-topic TOPIC] [--pulsar-token TOKEN]
       [--ca-file PEM]... [--stdin-lifeline]`;

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      port: { type: 'string' },
      origin: { type: 'string' },
      jwks: { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string' },
      'refresh-interval': { type: 'string' },
      'pulsar-rest-url': { type: 'string' },
      'pulsar-topic': { type: 'string' },
      'pulsar-token': { type: 'string' },
      'stdin-lifeline': { type: 'boolean' },
      'ca-file': { type: 'string', multiple: true },
      help: { type: 'boolean' },
    },
    strict: true,
  }));
} catch (err) {
  process.stderr.write(`run-workerd: ${err.message}\n${usage}\n`);
  process.exit(2);
}
if (opts.help) {
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}
const port = Number(opts.port);
const missing = ['port', 'origin', 'jwks', 'issuer'].filter((k) => !opts[k]);
if (missing.length > 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write(`run-workerd: need ${missing.length ? missing.map((m) => `--${m}`).join(', ') : 'a valid --port'}\n${usage}\n`);
  process.exit(2);
}

let worker;
try {
  const trustedCertificates = await Promise.all((opts['ca-file'] ?? []).map((f) => readFile(f, 'utf8')));
  worker = await startWorkerd({
    trustedCertificates,
    port,
    bindings: {
      JWKS_URL: opts.jwks,
      EXPECTED_ISSUER: opts.issuer,
      EXPECTED_AUDIENCE: opts.audience ?? SELF_ORIGIN,
      ORIGIN_URL: opts.origin,
      JWKS_REFRESH_MIN_INTERVAL: opts['refresh-interval'],
      PULSAR_REST_URL: opts['pulsar-rest-url'],
      PULSAR_TOPIC: opts['pulsar-topic'],
      PULSAR_TOKEN: opts['pulsar-token'],
    },
    onOutput: (line) => process.stderr.write(`${line}\n`),
  });
} catch (err) {
  process.stderr.write(`run-workerd: ${err.message}\n`);
  process.exit(1);
}
process.stdout.write('ready\n');

let stopping = false;
const stop = async (code) => {
  if (stopping) return;
  stopping = true;
  await worker.stop();
  process.exit(code);
};
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
if (opts['stdin-lifeline']) {
  process.stdin.on('end', () => stop(0));
  process.stdin.on('error', () => stop(0));
  process.stdin.resume();
}
// If workerd dies on its own, so do we.
worker.exited.then((code) => {
  if (!stopping) {
    process.stderr.write(`run-workerd: workerd exited (${code})\n`);
    stop(1);
  }
});
