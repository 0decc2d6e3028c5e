// Starts the Worker in the real workerd runtime (from the workerd npm package)
// with a generated config.capnp. Used by the Node tests and by run-workerd.mjs
// (which the Go end-to-end test drives).

import { spawn } from 'node:child_process';
import { cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
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
 * originService: "127.0.0.1:PORT" binds an external HTTP service as ORIGIN.
 */
export function renderConfig({ port, modules, bindings, originService }) {
  const bindingLines = Object.entries(bindings)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `    (name = ${capnpString(k)}, text = ${capnpString(v)}),`);
  const services = [
    '    (name = "main", worker = .worker),',
    '    (name = "internet", network = (allow = ["public", "private", "local"], tlsOptions = (trustBrowserCas = true))),',
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

function waitForPort(port, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    let exited = false;
    const onExit = (code, signal) => {
      exited = true;
      reject(new Error(`workerd exited before listening (code ${code}, signal ${signal})`));
    };
    child.once('exit', onExit);
    const attempt = () => {
      if (exited) return;
      const sock = net.connect({ host: '127.0.0.1', port });
      sock.once('connect', () => {
        sock.destroy();
        child.off('exit', onExit);
        resolve();
      });
      sock.once('error', () => {
        sock.destroy();
        if (Date.now() > deadline) {
          child.off('exit', onExit);
          reject(new Error(`workerd did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`));
          return;
        }
        setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

/**
 * Starts workerd serving the Worker on 127.0.0.1:port (a free port if
 * omitted). Resolves once the socket accepts connections.
 *
 * @param {{port?: number, bindings: Record<string,string|undefined>,
 *          originService?: string, onOutput?: (line: string) => void,
 *          startTimeoutMs?: number}} opts
 * @returns {Promise<{url: string, port: number, output: () => string, stop: () => Promise<void>}>}
 */
export async function startWorkerd({ port, bindings, originService, onOutput, startTimeoutMs = 30_000 }) {
  const listenPort = port ?? (await freePort());
  const dir = await mkdtemp(path.join(os.tmpdir(), 'portcullis-workerd-'));
  await cp(SRC_DIR, path.join(dir, 'src'), { recursive: true });
  const modules = (await readdir(SRC_DIR)).filter((f) => f.endsWith('.js')).sort();
  // index.js first: workerd treats the first module as the main module.
  modules.sort((a, b) => (a === 'index.js' ? -1 : b === 'index.js' ? 1 : 0));
  await writeFile(path.join(dir, 'config.capnp'), renderConfig({ port: listenPort, modules, bindings, originService }));

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
    await waitForPort(listenPort, child, startTimeoutMs);
  } catch (err) {
    await stop();
    throw new Error(`${err.message}\n--- workerd output ---\n${output}`);
  }
  return { url: `http://127.0.0.1:${listenPort}`, port: listenPort, output: () => output, stop, exited };
}
