// Starts the Worker in the real workerd runtime (from the workerd npm package)
// with a generated config.capnp. Used by the Node tests and by run-workerd.mjs
// (which the Go end-to-end test drives).

import { spawn } from 'node:child_process';
import { cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The Worker's source directory. */
export const SRC_DIR = path.resolve(here, '..', 'src');
/** Must match wrangler.toml's compatibility_date. */
export const COMPATIBILITY_DATE = '2025-09-01';

/** Path of the workerd binary shipped in the workerd npm package. */
export function workerdBinary() {
  const require = createRequire(import.meta.url);
  const mod = require('workerd');
  return mod.default ?? mod;
}

/** Asks the kernel for a free 127.0.0.1 port (closed again before returning). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function capnpString(s) {
  return JSON.stringify(String(s));
}

/**
 * Renders config.capnp. bindings: {NAME: string} text bindings;
 * originService: "127.0.0.1:PORT" binds an external HTTP service as ORIGIN;
 * trustedCertificates: extra CA certificates (PEM) for outbound HTTPS, e.g.
 * Portcullis's self-signed certificate serving the JWKS.
 */
export function renderConfig({ port, modules, bindings, originService, trustedCertificates = [] }) {
  const bindingLines = Object.entries(bindings)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `    (name = ${capnpString(k)}, text = ${capnpString(v)}),`);
  const services = [
    '    (name = "main", worker = .worker),',
    `    (name = "internet", network = (allow = ["public", "private", "local"], tlsOptions = (trustBrowserCas = true${
      trustedCertificates.length ? `, trustedCertificates = [${trustedCertificates.map(capnpString).join(', ')}]` : ''
    }))),`,
  ];
  if (originService) {
    services.push(`    (name = "origin", external = (address = ${capnpString(originService)}, http = ())),`);
    bindingLines.push('    (name = "ORIGIN", service = "origin"),');
  }
  const moduleLines = modules.map((m) => `    (name = ${capnpString(m)}, esModule = embed ${capnpString(`src/${m}`)}),`);
  return `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
${services.join('\n')}
  ],
  sockets = [
    (name = "http", address = ${capnpString(`127.0.0.1:${port}`)}, http = (), service = "main"),
  ],
);

const worker :Workerd.Worker = (
  modules = [
${moduleLines.join('\n')}
  ],
  compatibilityDate = ${capnpString(COMPATIBILITY_DATE)},
  bindings = [
${bindingLines.join('\n')}
  ],
  globalOutbound = "internet",
);
`;
}

/**
 * A binding value startWorkerd replaces with the Worker's own origin
 * (http://127.0.0.1:PORT), for EXPECTED_AUDIENCE in tests that sign
 * assertions for the Worker itself.
 */
export const SELF_ORIGIN = Symbol('the Worker\'s own origin');

/** The path the readiness probe requests (answered 401 by the Worker). */
export const PROBE_PATH = '/__portcullis_worker_probe';

function probe(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: PROBE_PATH, agent: false, timeout: 2000 }, (res) => {
      res.resume();
      // Our Worker answers every request with X-Request-Id; anything else on
      // this port is not us.
      res.on('end', () => resolve(Boolean(res.headers['x-request-id'])));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

async function waitUntilServing(port, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let exitInfo = null;
  const onExit = (code, signal) => {
    exitInfo = { code, signal };
  };
  child.once('exit', onExit);
  try {
    for (;;) {
      if (exitInfo) throw new Error(`workerd exited before serving (code ${exitInfo.code}, signal ${exitInfo.signal})`);
      if (await probe(port)) return;
      if (Date.now() > deadline) throw new Error(`workerd did not serve on 127.0.0.1:${port} within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    child.off('exit', onExit);
  }
}

/**
 * Starts workerd serving the Worker on 127.0.0.1:port (a free port if
 * omitted). Resolves once the Worker answers a probe request (GET
 * PROBE_PATH without an assertion, so it is a 401 and, with PULSAR_REST_URL
 * set, an edge event); rejects with workerd's output if it exits or does not
 * serve within startTimeoutMs. `exited` resolves with workerd's exit code.
 *
 * @param {{port?: number, bindings: Record<string,string|undefined>,
 *          originService?: string, trustedCertificates?: string[],
 *          onOutput?: (line: string) => void,
 *          startTimeoutMs?: number}} opts
 * @returns {Promise<{url: string, port: number, output: () => string, stop: () => Promise<void>}>}
 */
export async function startWorkerd({ port, bindings, originService, trustedCertificates, onOutput, startTimeoutMs = 30_000 }) {
  const listenPort = port ?? (await freePort());
  bindings = Object.fromEntries(
    Object.entries(bindings).map(([k, v]) => [k, v === SELF_ORIGIN ? `http://127.0.0.1:${listenPort}` : v]),
  );
  const dir = await mkdtemp(path.join(os.tmpdir(), 'portcullis-workerd-'));
  await cp(SRC_DIR, path.join(dir, 'src'), { recursive: true });
  const modules = (await readdir(SRC_DIR)).filter((f) => f.endsWith('.js')).sort();
  // index.js first: workerd treats the first module as the main module.
  modules.sort((a, b) => (a === 'index.js' ? -1 : b === 'index.js' ? 1 : 0));
  await writeFile(path.join(dir, 'config.capnp'), renderConfig({ port: listenPort, modules, bindings, originService, trustedCertificates }));

  const child = spawn(workerdBinary(), ['serve', 'config.capnp'], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk) => {
    const text = chunk.toString();
    output += text;
    if (output.length > 4_000_000) output = output.slice(-2_000_000);
    if (onOutput) for (const line of text.split('\n')) if (line) onOutput(line);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise((resolve) => child.once('exit', resolve));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  try {
    await waitUntilServing(listenPort, child, startTimeoutMs);
  } catch (err) {
    await stop();
    throw new Error(`${err.message}\n--- workerd output ---\n${output}`);
  }
  return { url: `http://127.0.0.1:${listenPort}`, port: listenPort, output: () => output, stop, exited };
}
