// Wire details the SDK does not exercise by itself but other Stripe clients
// rely on: JSON bodies, HTTP Basic auth, body size limit, Request-Id.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, BASE, SECRET_KEY } from './lib.mjs';

const bearer = { authorization: `Bearer ${SECRET_KEY}` };

test('a JSON body creates a PaymentIntent like a form body does', async () => {
  const res = await fetch(`${BASE}/v1/payment_intents`, {
    method: 'POST',
    headers: { ...bearer, 'content-type': 'application/json' },
    body: JSON.stringify({ amount: 1250, currency: 'usd', metadata: { via: 'json' }, payment_method: 'pm_card_visa', confirm: true }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.status, 'succeeded');
  assert.equal(body.amount, 1250);
  assert.deepEqual(body.metadata, { via: 'json' });
  const pi = await stripe.paymentIntents.retrieve(body.id);
  assert.equal(pi.amount_received, 1250);
});

test('HTTP Basic auth with the secret key as user is accepted', async () => {
  const basic = Buffer.from(`${SECRET_KEY}:`).toString('base64');
  const res = await fetch(`${BASE}/v1/payment_intents?limit=1`, { headers: { authorization: `Basic ${basic}` } });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.object, 'list');
  assert.ok(res.headers.get('request-id'), 'Request-Id header');
});

test('every response carries a distinct Request-Id', async () => {
  const a = await fetch(`${BASE}/v1/customers?limit=1`, { headers: bearer });
  const b = await fetch(`${BASE}/v1/customers/cus_nope000000000`, { headers: bearer });
  await a.arrayBuffer();
  await b.arrayBuffer();
  assert.equal(b.status, 404);
  const ra = a.headers.get('request-id');
  const rb = b.headers.get('request-id');
  assert.ok(ra && rb);
  assert.notEqual(ra, rb);
});

test('a body over 256 KiB is refused with 413 and the daemon keeps serving', async () => {
  const big = 'x'.repeat(300 * 1024);
  let status;
  try {
    const res = await fetch(`${BASE}/v1/customers`, {
      method: 'POST',
      headers: { ...bearer, 'content-type': 'application/x-www-form-urlencoded' },
      body: `description=${big}`,
    });
    status = res.status;
    await res.arrayBuffer();
  } catch (err) {
    // A server may close the connection after answering 413 mid-upload;
    // then fetch cannot read the answer. That is not a pass by itself.
    assert.fail(`request failed without a readable answer: ${err.cause ? err.cause.code : err.message}`);
  }
  assert.equal(status, 413);
  const ok = await stripe.customers.list({ limit: 1 });
  assert.equal(ok.object, 'list');
});
