// Error classes the SDK raises for the daemon's answers, and merchant
// isolation: one merchant's key never reaches another merchant's objects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, stripe2, client, errors, BASE, SECRET_KEY, PUBLISHABLE_KEY, expectError } from './lib.mjs';

test('unknown parameter raises StripeInvalidRequestError parameter_unknown naming the param', async () => {
  const err = await expectError(stripe.paymentIntents.create({ amount: 1000, currency: 'usd', frobnicate: 'yes' }),
    errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  assert.equal(err.rawType, 'invalid_request_error');
  assert.equal(err.code, 'parameter_unknown');
  assert.equal(err.param, 'frobnicate');
  assert.equal(typeof err.raw.tp_code, 'number');
  assert.ok(err.requestId, 'Request-Id header on errors');
});

test('unknown nested parameter names the bracketed path', async () => {
  const err = await expectError(stripe.paymentIntents.create({
    amount: 1000, currency: 'usd', confirm: true,
    payment_method_data: { type: 'card', card: { number: '4242424242424242', exp_month: 12, exp_year: 2040, cvc: '123', colour: 'red' } },
  }), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'parameter_unknown');
  assert.equal(err.param, 'payment_method_data[card][colour]');
});

test('bad API key raises StripeAuthenticationError', async () => {
  const bad = client('sk_test_thisisnotarealkey0000000000');
  const err = await expectError(bad.paymentIntents.list({ limit: 1 }), errors.StripeAuthenticationError);
  assert.equal(err.statusCode, 401);
  assert.ok(!err.message.includes('thisisnotarealkey'), 'message should not echo the full key');
});

test('a key of the right shape but tampered is refused', async () => {
  const tampered = SECRET_KEY.slice(0, -1) + (SECRET_KEY.endsWith('a') ? 'b' : 'a');
  await expectError(client(tampered).customers.list({ limit: 1 }), errors.StripeAuthenticationError);
});

test('publishable key cannot create a PaymentIntent', async () => {
  if (!PUBLISHABLE_KEY) return;
  const err = await expectError(client(PUBLISHABLE_KEY).paymentIntents.create({ amount: 1000, currency: 'usd' }),
    errors.StripeError);
  assert.ok([401, 403].includes(err.statusCode), `status ${err.statusCode}`);
});

test('amount 0 raises amount_too_small on param amount', async () => {
  const err = await expectError(stripe.paymentIntents.create({ amount: 0, currency: 'usd' }), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  assert.equal(err.code, 'amount_too_small');
  assert.equal(err.param, 'amount');
});

test('negative and non-integer amounts are rejected on param amount', async () => {
  for (const amount of [-100, '12.50', 'abc']) {
    const err = await expectError(stripe.paymentIntents.create({ amount, currency: 'usd' }), errors.StripeInvalidRequestError);
    assert.equal(err.param, 'amount', `amount ${amount}`);
  }
});

test('missing amount raises parameter_missing', async () => {
  const err = await expectError(stripe.paymentIntents.create({ currency: 'usd' }), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'parameter_missing');
  assert.equal(err.param, 'amount');
});

test('unknown currency raises StripeInvalidRequestError on param currency', async () => {
  const err = await expectError(stripe.paymentIntents.create({ amount: 1000, currency: 'xyz' }), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  assert.equal(err.param, 'currency');
});

test('unknown PaymentIntent id is 404 resource_missing', async () => {
  const err = await expectError(stripe.paymentIntents.retrieve('pi_doesnotexist000000'), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 404);
  assert.equal(err.code, 'resource_missing');
});

test('healthz answers without auth and API calls without a key are 401', async () => {
  const h = await fetch(`${BASE}/healthz`);
  assert.equal(h.status, 200);
  assert.deepEqual(await h.json(), { status: 'ok' });
  const r = await fetch(`${BASE}/v1/payment_intents`);
  assert.equal(r.status, 401);
  assert.ok(r.headers.get('request-id'), 'Request-Id on 401');
  const body = await r.json();
  assert.equal(body.error.type, 'invalid_request_error');
});

test('second merchant cannot retrieve, refund, capture, cancel or list the first merchant intent', async (t) => {
  if (!stripe2) {
    t.skip('TP_SECRET_KEY_2 not set');
    return;
  }
  const pi = await stripe.paymentIntents.create({ amount: 1500, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const auth = await stripe.paymentIntents.create({
    amount: 1600, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });

  const e1 = await expectError(stripe2.paymentIntents.retrieve(pi.id), errors.StripeInvalidRequestError);
  assert.equal(e1.statusCode, 404);
  assert.equal(e1.code, 'resource_missing');

  const e2 = await expectError(stripe2.refunds.create({ payment_intent: pi.id }), errors.StripeInvalidRequestError);
  assert.ok([400, 404].includes(e2.statusCode), `refund status ${e2.statusCode}`);
  await expectError(stripe2.refunds.create({ charge: pi.latest_charge }), errors.StripeInvalidRequestError);
  await expectError(stripe2.charges.retrieve(pi.latest_charge), errors.StripeInvalidRequestError);

  await expectError(stripe2.paymentIntents.capture(auth.id), errors.StripeInvalidRequestError);
  await expectError(stripe2.paymentIntents.cancel(auth.id), errors.StripeInvalidRequestError);
  await expectError(stripe2.paymentIntents.update(auth.id, { metadata: { pwned: '1' } }), errors.StripeInvalidRequestError);

  const list = await stripe2.paymentIntents.list({ limit: 100 });
  assert.ok(!list.data.some((p) => p.id === pi.id || p.id === auth.id), 'not in the other merchant list');

  // The first merchant's objects are untouched.
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 0);
  const a = await stripe.paymentIntents.retrieve(auth.id);
  assert.equal(a.status, 'requires_capture');
  assert.deepEqual(a.metadata, {});
});

test('second merchant cannot see or use the first merchant customers and payment methods', async (t) => {
  if (!stripe2) {
    t.skip('TP_SECRET_KEY_2 not set');
    return;
  }
  const cus = await stripe.customers.create({ name: 'Merchant One Customer' });
  const pm = await stripe.paymentMethods.create({ type: 'card', card: { number: '4242424242424242', exp_month: 12, exp_year: 2040, cvc: '123' } });
  await expectError(stripe2.customers.retrieve(cus.id), errors.StripeInvalidRequestError);
  await expectError(stripe2.paymentMethods.retrieve(pm.id), errors.StripeInvalidRequestError);
  await expectError(stripe2.paymentIntents.create({
    amount: 1000, currency: 'usd', payment_method: pm.id, confirm: true,
  }), errors.StripeInvalidRequestError);
  await expectError(stripe2.paymentMethods.attach(pm.id, { customer: cus.id }), errors.StripeInvalidRequestError);
  const events = await stripe2.events.list({ limit: 100 });
  assert.ok(!events.data.some((e) => e.data.object.id === cus.id), 'no events leak across merchants');
});
