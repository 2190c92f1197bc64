// Idempotency-Key through the SDK's request options: replays are byte-for-byte
// the first answer, flagged by Idempotent-Replayed, and never pay twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { stripe, errors, CARDS, cardData, tag, expectError } from './lib.mjs';

test('same idempotency key twice returns the same intent and flags the replay', async () => {
  const idempotencyKey = randomUUID();
  const cus = await stripe.customers.create({ description: tag('idem') });
  const params = { amount: 2750, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, customer: cus.id };
  const first = await stripe.paymentIntents.create(params, { idempotencyKey });
  const second = await stripe.paymentIntents.create(params, { idempotencyKey });
  assert.equal(first.status, 'succeeded');
  assert.equal(second.id, first.id);
  assert.equal(second.latest_charge, first.latest_charge);
  assert.deepEqual(JSON.parse(JSON.stringify(second)), JSON.parse(JSON.stringify(first)));
  assert.notEqual(first.lastResponse.headers['idempotent-replayed'], 'true', 'first answer is not a replay');
  assert.equal(second.lastResponse.headers['idempotent-replayed'], 'true');

  const list = await stripe.paymentIntents.list({ customer: cus.id });
  assert.equal(list.data.length, 1, 'only one PaymentIntent exists');
  const ch = await stripe.charges.retrieve(first.latest_charge);
  assert.equal(ch.amount, 2750);
});

test('same idempotency key with different parameters raises StripeIdempotencyError', async () => {
  const idempotencyKey = randomUUID();
  const first = await stripe.paymentIntents.create({ amount: 1000, currency: 'usd' }, { idempotencyKey });
  const err = await expectError(
    stripe.paymentIntents.create({ amount: 1001, currency: 'usd' }, { idempotencyKey }),
    errors.StripeIdempotencyError);
  assert.equal(err.statusCode, 400);
  assert.equal(err.rawType, 'idempotency_error');
  assert.equal((await stripe.paymentIntents.retrieve(first.id)).amount, 1000);
});

test('a replayed decline returns the same 402 and the same PaymentIntent', async () => {
  const idempotencyKey = randomUUID();
  const params = { amount: 1900, currency: 'usd', confirm: true, payment_method_data: cardData(CARDS.generic_decline) };
  const e1 = await expectError(stripe.paymentIntents.create(params, { idempotencyKey }), errors.StripeCardError);
  const e2 = await expectError(stripe.paymentIntents.create(params, { idempotencyKey }), errors.StripeCardError);
  assert.equal(e2.statusCode, 402);
  assert.equal(e2.decline_code, 'generic_decline');
  assert.equal(e2.raw.payment_intent.id, e1.raw.payment_intent.id);
  assert.equal(e2.headers['idempotent-replayed'], 'true');
});

test('different idempotency keys with equal parameters create distinct intents', async () => {
  const p = { amount: 1111, currency: 'usd' };
  const a = await stripe.paymentIntents.create(p, { idempotencyKey: randomUUID() });
  const b = await stripe.paymentIntents.create(p, { idempotencyKey: randomUUID() });
  assert.notEqual(a.id, b.id);
});

test('idempotent refund replays instead of refunding twice', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 3000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const idempotencyKey = randomUUID();
  const r1 = await stripe.refunds.create({ payment_intent: pi.id, amount: 1000 }, { idempotencyKey });
  const r2 = await stripe.refunds.create({ payment_intent: pi.id, amount: 1000 }, { idempotencyKey });
  assert.equal(r2.id, r1.id);
  assert.equal(r2.lastResponse.headers['idempotent-replayed'], 'true');
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 1000);
});
