// Shared helpers for the SDK suite: one configured Stripe client per merchant,
// card fixtures from the contract, and the 3-D Secure challenge walker.
// run.mjs starts the daemon and hands its address and keys over in TP_* env.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import Stripe from 'stripe';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run the suite through tests/sdk/run.mjs`);
  return v;
}

export const PORT = Number(need('TP_PORT'));
export const BASE = `http://127.0.0.1:${PORT}`;
export const SECRET_KEY = need('TP_SECRET_KEY');
export const SECRET_KEY_2 = process.env.TP_SECRET_KEY_2 || '';
export const PUBLISHABLE_KEY = process.env.TP_PUBLISHABLE_KEY || '';

// The official SDK pointed at the local daemon; no retries so every request
// in a test is exactly one request on the wire.
export function client(key) {
  return new Stripe(key, {
    host: '127.0.0.1',
    port: PORT,
    protocol: 'http',
    maxNetworkRetries: 0,
    telemetry: false,
    timeout: 15000,
  });
}

export const stripe = client(SECRET_KEY);
export const stripe2 = SECRET_KEY_2 ? client(SECRET_KEY_2) : null;
export const errors = Stripe.errors;

export const CARDS = {
  visa: '4242424242424242',
  mastercard: '5555555555554444',
  generic_decline: '4000000000000002',
  insufficient_funds: '4000000000009995',
  lost_card: '4000000000009987',
  stolen_card: '4000000000009979',
  expired_card: '4000000000000069',
  incorrect_cvc: '4000000000000127',
  processing_error: '4000000000000119',
  fraudulent: '4100000000000019',
  threeds_required: '4000002760003184',
  threeds2_required: '4000000000003220',
  bad_luhn: '4242424242424241',
};

export const EXP_YEAR = new Date().getUTCFullYear() + 3;

// Raw card fields as Stripe takes them under payment_method_data / card.
export function card(number, cvc = '123') {
  return { number, exp_month: 12, exp_year: EXP_YEAR, cvc };
}

export function cardData(number, cvc) {
  return { type: 'card', card: card(number, cvc) };
}

// A tag unique to this run, so tests can find their own objects in lists.
export function tag(prefix = 't') {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
}

// Awaits a promise that must reject with a Stripe error of the given class;
// returns the error so the caller can look at its fields.
export async function expectError(promise, ErrorClass) {
  let value;
  try {
    value = await promise;
  } catch (err) {
    if (ErrorClass && !(err instanceof ErrorClass)) {
      assert.fail(`expected ${ErrorClass.name}, got ${err && err.constructor && err.constructor.name}: ` +
        `${err && err.message} (status ${err && err.statusCode}, raw ${JSON.stringify(err && err.raw)})`);
    }
    return err;
  }
  assert.fail(`expected ${ErrorClass ? ErrorClass.name : 'an error'}, request succeeded: ` +
    JSON.stringify(value).slice(0, 500));
}

// Sum of one currency's amounts across a balance's pending or available list.
export function balanceAmount(balance, bucket, currency = 'usd') {
  const list = balance[bucket] || [];
  let sum = 0;
  for (const b of list) if (b.currency === currency) sum += b.amount;
  return sum;
}

// Polls fn until it returns a truthy value, for the few things (event fan-out)
// a daemon may legitimately publish just after answering.
export async function eventually(fn, { timeoutMs = 3000, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

function decodeEntities(s) {
  return s
    .replace(/&quot;/g, '"')
    .replace(/&#39;|&#x27;|&apos;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

function attrs(tagText) {
  const out = {};
  const re = /([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*("([^"]*)"|'([^']*)'|([^\s"'>]+))/g;
  let m;
  while ((m = re.exec(tagText)) !== null) {
    out[m[1].toLowerCase()] = decodeEntities(m[3] ?? m[4] ?? m[5] ?? '');
  }
  return out;
}

// Reads the challenge page's forms: each has an action, a hidden token and a
// submit button named "result" whose value says what submitting it does.
export function parseChallengeForms(html, pageUrl) {
  const forms = [];
  const formRe = /<form\b([^>]*)>([\s\S]*?)<\/form>/gi;
  let m;
  while ((m = formRe.exec(html)) !== null) {
    const fa = attrs(m[1]);
    const form = { method: (fa.method || 'get').toLowerCase(), action: new URL(fa.action || pageUrl, pageUrl).href };
    const fieldRe = /<(input|button)\b([^>]*)>/gi;
    let f;
    while ((f = fieldRe.exec(m[2])) !== null) {
      const a = attrs(f[2]);
      if (a.name === 'token') form.token = a.value;
      if (a.name === 'result') form.result = a.value;
    }
    forms.push(form);
  }
  return forms;
}

// Opens the challenge page as a browser would (no API key) and submits the
// form for `result` ("approve" or "fail"); returns the raw POST response.
export async function submitChallenge(url, result) {
  const page = await fetch(url);
  assert.equal(page.status, 200, 'challenge page GET status');
  assert.match(page.headers.get('content-type') || '', /text\/html/i);
  const html = await page.text();
  const forms = parseChallengeForms(html, url);
  assert.equal(forms.length, 2, `challenge page should have two forms, got ${forms.length}`);
  const form = forms.find((f) => f.result === result);
  assert.ok(form, `no form with result=${result} on the challenge page`);
  assert.equal(form.method, 'post');
  assert.ok(form.token, 'form has a token');
  return fetch(form.action, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: form.token, result }).toString(),
    redirect: 'manual',
  });
}
