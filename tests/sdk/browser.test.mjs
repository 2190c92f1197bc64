// A real browser: Debian's Chromium, headless, driven by playwright-core.
// The merchant's checkout page is served from another origin (another port)
// than the API, as on a real site, so every call it makes goes through the
// browser's CORS checks. The page does what Stripe.js does: tokenise the
// card with the publishable key, confirm the PaymentIntent with its
// client_secret, follow next_action to Turnpike's 3-D Secure page, where the
// test clicks the button, and read the outcome back on the return page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import { stripe, BASE, PUBLISHABLE_KEY, CARDS, EXP_YEAR } from './lib.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PAGE = '<!doctype html><html><head><meta charset="utf-8"><title>Shop</title></head>' +
  '<body><h1>Checkout</h1><div id="out"></div></body></html>';

let server;
let origin;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: scripts/deps.sh installs Debian's chromium`);
  assert.ok(PUBLISHABLE_KEY, 'run.mjs hands over the publishable key');
  server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://shop');
    if (u.pathname === '/checkout' || u.pathname === '/return') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  assert.notEqual(origin, new URL(BASE).origin);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) await new Promise((resolve) => server.close(resolve));
});

// Runs in the page: the card goes from the page to the gateway, never to the
// merchant's server, then the PaymentIntent is confirmed with it.
async function tokeniseAndConfirm({ api, pk, number, expYear, pi, secret, returnUrl, idem }) {
  const auth = { Authorization: `Bearer ${pk}`, 'Content-Type': 'application/x-www-form-urlencoded' };
  const pmRes = await fetch(`${api}/v1/payment_methods`, {
    method: 'POST',
    headers: { ...auth, 'Idempotency-Key': idem },
    body: new URLSearchParams({
      type: 'card', 'card[number]': number, 'card[exp_month]': '12', 'card[exp_year]': String(expYear),
      'card[cvc]': '123', 'billing_details[name]': 'Ada Lovelace',
    }),
  });
  const pm = await pmRes.json();
  const confirmRes = await fetch(`${api}/v1/payment_intents/${pi}/confirm`, {
    method: 'POST',
    headers: auth,
    body: new URLSearchParams({ client_secret: secret, payment_method: pm.id, return_url: returnUrl }),
  });
  return {
    pmStatus: pmRes.status,
    pm,
    requestId: pmRes.headers.get('Request-Id'),
    confirmStatus: confirmRes.status,
    confirmed: await confirmRes.json(),
  };
}

async function retrieveAsClient({ api, pk, pi, secret }) {
  const r = await fetch(`${api}/v1/payment_intents/${pi}?client_secret=${encodeURIComponent(secret)}`, {
    headers: { Authorization: `Bearer ${pk}` },
  });
  return { status: r.status, body: await r.json() };
}

async function checkout(page, number, button) {
  const pi = await stripe.paymentIntents.create({ amount: 3100, currency: 'eur', metadata: { order: 'b-1' } });
  await page.goto(`${origin}/checkout`);
  const returnUrl = `${origin}/return?order=b-1`;
  const got = await page.evaluate(tokeniseAndConfirm, {
    api: BASE, pk: PUBLISHABLE_KEY, number, expYear: EXP_YEAR, pi: pi.id, secret: pi.client_secret, returnUrl,
    idem: `browser-${randomBytes(6).toString('hex')}`,
  });
  assert.equal(got.pmStatus, 200, JSON.stringify(got.pm));
  assert.match(got.pm.id, /^pm_/);
  assert.equal(got.pm.card.last4, number.slice(-4));
  assert.match(got.requestId || '', /^req_/, 'Request-Id is exposed to the page');
  assert.equal(got.confirmStatus, 200, JSON.stringify(got.confirmed));
  assert.equal(got.confirmed.status, 'requires_action');
  assert.equal(got.confirmed.metadata, undefined, 'the page sees the client view only');
  // Stripe.js follows next_action: the browser goes to the challenge page
  await page.goto(got.confirmed.next_action.redirect_to_url.url);
  await page.click(button);
  await page.waitForURL((u) => u.href.startsWith(`${origin}/return`), { timeout: 10000 });
  const back = new URL(page.url());
  assert.equal(back.searchParams.get('order'), 'b-1');
  assert.equal(back.searchParams.get('payment_intent'), pi.id);
  const seen = await page.evaluate(retrieveAsClient, {
    api: BASE, pk: PUBLISHABLE_KEY, pi: pi.id, secret: back.searchParams.get('payment_intent_client_secret'),
  });
  assert.equal(seen.status, 200, JSON.stringify(seen.body));
  return { pi, pm: got.pm, back, seen: seen.body };
}

test('a page on another origin tokenises the card, confirms and passes 3-D Secure in a real browser', async () => {
  const page = await browser.newPage();
  try {
    const ok = await checkout(page, CARDS.threeds_required, '#approve');
    assert.equal(ok.back.searchParams.get('redirect_status'), 'succeeded');
    assert.equal(ok.seen.status, 'succeeded');
    const full = await stripe.paymentIntents.retrieve(ok.pi.id);
    assert.equal(full.amount_received, 3100);
    assert.deepEqual(full.metadata, { order: 'b-1' });
    const ch = await stripe.charges.retrieve(full.latest_charge);
    assert.equal(ch.payment_method, ok.pm.id);
    assert.equal(ch.billing_details.name, 'Ada Lovelace');

    const failed = await checkout(page, CARDS.threeds_required, '#fail');
    assert.equal(failed.back.searchParams.get('redirect_status'), 'failed');
    assert.equal(failed.seen.status, 'requires_payment_method');
    assert.equal(failed.seen.last_payment_error.code, 'payment_intent_authentication_failure');
  } finally {
    await page.close();
  }
});

// Stripe's "3D Secure in an iframe": the merchant's page frames the
// challenge and its return_url (on the page's own origin) ends in the frame.
async function framedChallenge(page, pageOrigin, returnOrigin) {
  const pi = await stripe.paymentIntents.create({ amount: 1500, currency: 'eur' });
  await page.goto(`${pageOrigin}/checkout`);
  const got = await page.evaluate(tokeniseAndConfirm, {
    api: BASE, pk: PUBLISHABLE_KEY, number: CARDS.threeds_required, expYear: EXP_YEAR, pi: pi.id,
    secret: pi.client_secret, returnUrl: `${returnOrigin}/return?order=f-1`,
    idem: `browser-${randomBytes(6).toString('hex')}`,
  });
  assert.equal(got.confirmed.status, 'requires_action', JSON.stringify(got.confirmed));
  await page.evaluate((u) => {
    const f = document.createElement('iframe');
    f.id = 'tds';
    f.src = u;
    document.body.appendChild(f);
  }, got.confirmed.next_action.redirect_to_url.url);
  return pi;
}

test('the 3-D Secure page shows in an iframe of the merchant\'s own page, and of no other', async () => {
  const page = await browser.newPage();
  try {
    const pi = await framedChallenge(page, origin, origin);
    await page.frameLocator('#tds').locator('#approve').click({ timeout: 10000 });
    await page.waitForFunction(() => {
      try {
        return document.getElementById('tds').contentWindow.location.pathname === '/return';
      } catch {
        return false;
      }
    }, null, { timeout: 10000 });
    assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'succeeded');
    // another origin's page (localhost is not 127.0.0.1) cannot lay it under a click
    const other = origin.replace('127.0.0.1', 'localhost');
    const pi2 = await framedChallenge(page, other, origin);
    await page.waitForTimeout(1500);
    assert.equal(await page.frameLocator('#tds').locator('#approve').count(), 0, 'framed by another origin');
    assert.equal((await stripe.paymentIntents.retrieve(pi2.id)).status, 'requires_action');
  } finally {
    await page.close();
  }
});

test('the browser enforces CORS here: a route without it cannot be read by the page', async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${origin}/checkout`);
    const outcome = await page.evaluate(async (api) => {
      const read = async (path) => {
        try {
          const r = await fetch(api + path);
          return `status ${r.status}`;
        } catch (e) {
          return `blocked: ${e.name}`;
        }
      };
      return { metrics: await read('/metrics'), api: await read('/v1/balance') };
    }, BASE);
    assert.equal(outcome.metrics, 'blocked: TypeError', 'no CORS headers outside /v1: the browser refuses');
    assert.equal(outcome.api, 'status 401', '/v1 answers any origin (here: no key)');
  } finally {
    await page.close();
  }
});
