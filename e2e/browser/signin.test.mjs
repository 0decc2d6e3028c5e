// Real-browser test of `portcullis dev`: headless Chromium opens the proxy,
// is sent to the embedded identity provider's sign-in form, signs in as
// alice, sees the demo app with alice's identity and a verified assertion,
// is refused /admin, signs out, and is sent to sign in again on the next
// visit. A screenshot of every step goes to ARTIFACTS_DIR.
//
// Environment:
//   PORTCULLIS_URL       base URL of a running `portcullis dev` (default https://localhost:8443)
//   PORTCULLIS_CA        PEM file of the CA (or certificate) to trust: the server's
//                        certificate must verify against it; without it, certificate
//                        errors are ignored
//   EXPECT_ADMIN_DENIED  1 (default): /admin must answer 403 for alice; 0: must answer 200
//   ARTIFACTS_DIR        where screenshots go (default: a new temporary directory)
//   CHROMIUM             browser binary (default /usr/bin/chromium)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import tls from 'node:tls';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const baseURL = (process.env.PORTCULLIS_URL || 'https://localhost:8443').replace(/\/+$/, '');
const expectAdminDenied = (process.env.EXPECT_ADMIN_DENIED ?? '1') !== '0';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// Flags from shared/TESTING.md (§Browser); --headless comes from `headless: true`
// and --user-data-dir from launchPersistentContext.
const chromiumFlags = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// spkiHashes reads a PEM file and returns it with the base64 SHA-256 of each
// certificate's public key, the form Chromium's
// --ignore-certificate-errors-spki-list takes.
async function spkiHashes(pemFile) {
  const pem = await readFile(pemFile, 'utf8');
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) || [];
  assert.ok(blocks.length > 0, `no certificate in PORTCULLIS_CA=${pemFile}`);
  return { pem, hashes: blocks.map(spkiHash) };
}

function spkiHash(der) {
  const spki = new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

// trustedLeafHash connects to the server with Node's TLS, which verifies the
// chain against the CA file, and returns the SPKI hash of the certificate the
// server presented. Chromium matches the list against the presented chain,
// so this makes a CA-signed leaf trusted even when the server omits the CA.
async function trustedLeafHash(url, caPEM, deadlineMs = 30_000) {
  const u = new URL(url);
  const until = Date.now() + deadlineMs;
  for (;;) {
    try {
      return await new Promise((resolve, reject) => {
        const sock = tls.connect({
          host: u.hostname, port: Number(u.port || 443), servername: u.hostname, ca: caPEM,
        }, () => {
          const der = sock.getPeerCertificate().raw;
          sock.end();
          resolve(spkiHash(der));
        });
        sock.on('error', reject);
      });
    } catch (err) {
      if (Date.now() > until || err.code !== 'ECONNREFUSED') {
        throw new Error(`TLS to ${u.host} with PORTCULLIS_CA: ${err.message}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

// gotoWhenUp retries while the server is still starting.
async function gotoWhenUp(page, url, deadlineMs = 30_000) {
  const until = Date.now() + deadlineMs;
  for (;;) {
    try {
      return await page.goto(url, { waitUntil: 'domcontentloaded' });
    } catch (err) {
      if (Date.now() > until || !/ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE/.test(String(err))) {
        throw err;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function expectSignInForm(page) {
  await page.getByLabel('Username').waitFor({ state: 'visible' });
  await page.getByLabel('Password').waitFor({ state: 'visible' });
  await page.getByRole('button', { name: 'Sign in' }).waitFor({ state: 'visible' });
  assert.ok(!page.url().startsWith(baseURL + '/') || new URL(page.url()).pathname !== '/',
    `expected to be sent to the sign-in form, still at ${page.url()}`);
}

test('portcullis dev: sign in as alice, see the demo app, sign out', { timeout: 180_000 }, async (t) => {
  const artifacts = process.env.ARTIFACTS_DIR || (await mkdtemp(path.join(tmpdir(), 'portcullis-browser-')));
  await mkdir(artifacts, { recursive: true });
  const userDataDir = await mkdtemp(path.join(tmpdir(), 'portcullis-chromium-'));
  t.diagnostic(`base URL ${baseURL}; screenshots in ${artifacts}`);

  const args = [...chromiumFlags];
  let ignoreHTTPSErrors = true;
  if (process.env.PORTCULLIS_CA) {
    const { pem, hashes } = await spkiHashes(process.env.PORTCULLIS_CA);
    hashes.push(await trustedLeafHash(baseURL, pem));
    args.push(`--ignore-certificate-errors-spki-list=${hashes.join(',')}`);
    ignoreHTTPSErrors = false;
  }
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args,
    ignoreHTTPSErrors,
    viewport: { width: 1280, height: 860 },
    locale: 'en-US',
  });
  t.after(async () => {
    await context.close();
    await rm(userDataDir, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const shot = (name) => page.screenshot({ path: path.join(artifacts, name), fullPage: true });

  // Every step screenshots on failure too, so a red run shows what was on screen.
  const step = (name, fn) => t.test(name, async () => {
    try {
      await fn();
    } catch (err) {
      await shot(`failed-${name.replace(/[^a-z0-9]+/gi, '-')}.png`).catch(() => {});
      throw err;
    }
  });

  await step('opening the app redirects to the sign-in form', async () => {
    await gotoWhenUp(page, baseURL + '/');
    await expectSignInForm(page);
    const body = await page.locator('body').innerText();
    assert.match(body, /alice/, 'the demo accounts are listed on the form');
    await shot('01-sign-in.png');
  });

  await step('a wrong password is refused on the form', async () => {
    await page.getByLabel('Username').fill('alice');
    await page.getByLabel('Password').fill('not-alice');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').waitFor({ state: 'visible' });
    assert.match(await page.getByRole('alert').innerText(), /do not match/);
    assert.equal(await page.getByLabel('Username').inputValue(), 'alice', 'the user name is kept');
    await shot('02-wrong-password.png');
  });

  await step('signing in as alice shows the demo app with her identity', async () => {
    await page.getByLabel('Password').fill('alice');
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(baseURL + '/') && !u.pathname.startsWith('/.portcullis/'), { waitUntil: 'domcontentloaded' }),
      page.getByRole('button', { name: 'Sign in' }).click(),
    ]);
    await page.getByText('alice@example.com').first().waitFor({ state: 'visible' });
    const body = await page.locator('body').innerText();
    assert.match(body, /alice@example\.com/);
    assert.match(body, /engineering/);
    assert.doesNotMatch(body, /\badmins\b/, 'alice is not in admins');
    assert.match(body, /Assertion verified/, 'the demo app verified X-Portcullis-Assertion');
    await page.getByText(/tick #\d+/).waitFor({ state: 'visible' }).catch(() => {}); // live events, if streaming works
    await shot('03-demo-app.png');
  });

  await step(`/admin is ${expectAdminDenied ? 'refused' : 'allowed'} for alice`, async () => {
    const resp = await page.goto(baseURL + '/admin', { waitUntil: 'domcontentloaded' });
    if (expectAdminDenied) {
      assert.equal(resp.status(), 403, `GET /admin answered ${resp.status()}, want 403`);
      assert.doesNotMatch(await page.locator('body').innerText(), /Admin area/);
      await shot('04-admin-denied.png');
    } else {
      assert.equal(resp.status(), 200, `GET /admin answered ${resp.status()}, want 200`);
      await page.getByRole('heading', { name: 'Admin area' }).waitFor({ state: 'visible' });
      await shot('04-admin.png');
    }
  });

  await step('signing out lands on a signed-out page', async () => {
    await page.goto(baseURL + '/', { waitUntil: 'domcontentloaded' });
    await page.getByText('alice@example.com').first().waitFor({ state: 'visible' });
    await page.getByRole('link', { name: 'Sign out' }).click();
    await page.getByText(/signed out/i).first().waitFor({ state: 'visible' });
    assert.doesNotMatch(await page.locator('body').innerText(), /Assertion verified/);
    await shot('05-signed-out.png');
  });

  await step('a new visit is sent to sign in again', async () => {
    await page.goto(baseURL + '/', { waitUntil: 'domcontentloaded' });
    await expectSignInForm(page);
    await shot('06-sign-in-again.png');
  });
});
