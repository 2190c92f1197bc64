// Refunds: full, partial, over-refund, by payment_intent or by charge, and
// the charge's refunded totals that follow.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, errors, expectError } from './lib.mjs';

async function paid(amount, currency = 'usd') {
  const pi = await stripe.paymentIntents.create({ amount, currency, payment_method: 'pm_card_visa', confirm: true });
  assert.equal(pi.status, 'succeeded');
  return pi;
}

test('full refund by payment_intent refunds the whole charge and marks it refunded', async () => {
  const pi = await paid(2200);
  const re = await stripe.refunds.create({ payment_intent: pi.id, reason: 'requested_by_customer' });
  assert.match(re.id, /^re_/);
  assert.equal(re.object, 'refund');
  assert.equal(re.amount, 2200);
  assert.equal(re.currency, 'usd');
  assert.equal(re.status, 'succeeded');
  assert.equal(re.reason, 'requested_by_customer');
  assert.equal(re.payment_intent, pi.id);
  assert.equal(re.charge, pi.latest_charge);

  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 2200);
  assert.equal(ch.refunded, true);

  const got = await stripe.refunds.retrieve(re.id);
  assert.equal(got.id, re.id);
  assert.equal(got.amount, 2200);

  // Nothing left: a further refund is refused.
  const err = await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 1 }),
    errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
});

test('partial refunds add up on the charge and a refund past the remainder is rejected', async () => {
  const pi = await paid(1000);
  const r1 = await stripe.refunds.create({ payment_intent: pi.id, amount: 300 });
  assert.equal(r1.amount, 300);
  let ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 300);
  assert.equal(ch.refunded, false);

  const r2 = await stripe.refunds.create({ charge: pi.latest_charge, amount: 200 });
  assert.equal(r2.amount, 200);
  assert.equal(r2.payment_intent, pi.id);
  ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 500);
  assert.equal(ch.refunded, false);

  const err = await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 501 }),
    errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 500, 'rejected refund changed nothing');

  const r3 = await stripe.refunds.create({ payment_intent: pi.id });
  assert.equal(r3.amount, 500, 'refund without amount takes the remainder');
  ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 1000);
  assert.equal(ch.refunded, true);

  const list = await stripe.refunds.list({ payment_intent: pi.id, limit: 10 });
  assert.equal(list.object, 'list');
  assert.equal(list.has_more, false);
  const ids = list.data.map((r) => r.id);
  assert.deepEqual(new Set(ids), new Set([r1.id, r2.id, r3.id]));
  assert.equal(ids.length, 3);
  assert.deepEqual(ids, [r3.id, r2.id, r1.id], 'refunds listed newest first');
  assert.equal(list.data.reduce((s, r) => s + r.amount, 0), 1000);
});

test('refund list by payment_intent holds only that intent refunds', async () => {
  const a = await paid(800);
  const b = await paid(900);
  const ra = await stripe.refunds.create({ payment_intent: a.id, amount: 100 });
  await stripe.refunds.create({ payment_intent: b.id, amount: 100 });
  const list = await stripe.refunds.list({ payment_intent: a.id });
  assert.deepEqual(list.data.map((r) => r.id), [ra.id]);
});

test('refund of an amount of zero or below is rejected', async () => {
  const pi = await paid(600);
  await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 0 }), errors.StripeInvalidRequestError);
  await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: -5 }), errors.StripeInvalidRequestError);
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount_refunded, 0);
});

test('refund of an intent that never paid is rejected', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 600, currency: 'usd' });
  await expectError(stripe.refunds.create({ payment_intent: pi.id }), errors.StripeInvalidRequestError);
});

test('refund of a partially captured payment is bounded by the captured amount', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 4000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  await stripe.paymentIntents.capture(pi.id, { amount_to_capture: 2500 });
  await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 2501 }), errors.StripeInvalidRequestError);
  const re = await stripe.refunds.create({ payment_intent: pi.id });
  assert.equal(re.amount, 2500);
});

test('charges.update sets description, metadata and receipt_email, emits charge.updated, keeps the money', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 2600, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
  });
  const up = await stripe.charges.update(pi.latest_charge, {
    description: 'order 1138', metadata: { order: '1138', gift: 'yes' }, receipt_email: 'r@example.test',
    fraud_details: { user_report: 'safe' },
  });
  assert.equal(up.id, pi.latest_charge);
  assert.equal(up.description, 'order 1138');
  assert.deepEqual(up.metadata, { order: '1138', gift: 'yes' });
  assert.equal(up.receipt_email, 'r@example.test');
  assert.equal(up.fraud_details.user_report, 'safe');
  assert.equal(up.amount_captured, 2600);
  const again = await stripe.charges.update(pi.latest_charge, { metadata: { gift: '' } });
  assert.deepEqual(again.metadata, { order: '1138' });
  const got = await stripe.charges.retrieve(pi.latest_charge);
  assert.deepEqual(got.metadata, { order: '1138' });
  assert.equal(got.description, 'order 1138');
  const ev = await stripe.events.list({ type: 'charge.updated', limit: 5 });
  const mine = ev.data.filter((e) => e.data.object.id === pi.latest_charge);
  assert.equal(mine.length, 2, 'a charge.updated event per update');
  // newest first: the second update removed gift, the first set four fields
  assert.deepEqual(mine[0].data.previous_attributes, { metadata: { gift: 'yes' } });
  assert.deepEqual(mine[1].data.previous_attributes, {
    description: null, metadata: { order: null, gift: null }, receipt_email: null, fraud_details: { user_report: null },
  });
  // a refund still sees the whole captured amount
  const re = await stripe.refunds.create({ charge: pi.latest_charge });
  assert.equal(re.amount, 2600);
  const bad = await expectError(stripe.charges.update(pi.latest_charge, { amount: 5 }),
    errors.StripeInvalidRequestError);
  assert.equal(bad.param, 'amount');
  const missing = await expectError(stripe.charges.update('ch_nope', { description: 'x' }),
    errors.StripeInvalidRequestError);
  assert.equal(missing.statusCode, 404);
});

test('refunds.cancel of a card refund is refused: only requires_action refunds can be canceled', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 900, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const re = await stripe.refunds.create({ payment_intent: pi.id, amount: 100 });
  const err = await expectError(stripe.refunds.cancel(re.id), errors.StripeInvalidRequestError);
  assert.match(err.message, /requires_action/);
  assert.equal((await stripe.refunds.retrieve(re.id)).status, 'succeeded');
  await expectError(stripe.refunds.cancel('re_nope'), errors.StripeInvalidRequestError);
});

test('paymentIntents.incrementAuthorization answers clearly that no processor offers it, and changes nothing', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 1000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  const err = await expectError(stripe.paymentIntents.incrementAuthorization(pi.id, { amount: 1500 }),
    errors.StripeInvalidRequestError);
  assert.match(err.message, /Incremental authorization/);
  const same = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(same.amount, 1000);
  assert.equal(same.amount_capturable, 1000);
  const done = await stripe.paymentIntents.create({ amount: 500, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const st = await expectError(stripe.paymentIntents.incrementAuthorization(done.id, { amount: 900 }),
    errors.StripeInvalidRequestError);
  assert.equal(st.code, 'payment_intent_unexpected_state');
});

test("a charge's refunds come as a list only when expanded, newest first, ten at a time", async () => {
  const pi = await paid(5000);
  const made = [];
  for (let i = 0; i < 11; i++)
    made.push((await stripe.refunds.create({ payment_intent: pi.id, amount: 100 + i })).id);
  // API 2022-11-15 on: not there unless asked for.
  assert.equal('refunds' in await stripe.charges.retrieve(pi.latest_charge), false);

  const ch = await stripe.charges.retrieve(pi.latest_charge, { expand: ['refunds'] });
  assert.equal(ch.refunds.object, 'list');
  assert.equal(ch.refunds.url, `/v1/charges/${ch.id}/refunds`);
  assert.equal(ch.refunds.has_more, true);
  assert.deepEqual(ch.refunds.data.map((r) => r.id), made.slice(1).reverse());
  assert.ok(ch.refunds.data.every((r) => r.object === 'refund' && r.charge === ch.id));

  // Through the PaymentIntent, and on every item of a charge list.
  const got = await stripe.paymentIntents.retrieve(pi.id, { expand: ['latest_charge.refunds'] });
  assert.deepEqual(got.latest_charge.refunds.data.map((r) => r.amount), [110, 109, 108, 107, 106, 105, 104, 103, 102, 101]);
  const other = await paid(700);
  const list = await stripe.charges.list({ limit: 2, expand: ['data.refunds'] });
  assert.equal(list.data[0].id, other.latest_charge);
  assert.deepEqual(list.data[0].refunds.data, []);
  assert.equal(list.data[0].refunds.has_more, false);
  assert.equal(list.data[1].refunds.data.length, 10);

  // A path through the list expands the list too (Stripe: nested fields after a dot).
  const deep = await stripe.charges.retrieve(pi.latest_charge, { expand: ['refunds.data.balance_transaction'] });
  assert.equal(deep.refunds.data.length, 10);
  assert.ok(deep.refunds.data.every((r) => r.balance_transaction.object === 'balance_transaction'));
  const either = await stripe.charges.retrieve(pi.latest_charge, { expand: ['refunds.data.balance_transaction', 'refunds'] });
  assert.equal(either.refunds.data[0].balance_transaction.object, 'balance_transaction'); // order does not matter
  const viaPi = await stripe.paymentIntents.retrieve(pi.id, { expand: ['latest_charge.refunds.data.balance_transaction'] });
  assert.equal(viaPi.latest_charge.refunds.data[0].balance_transaction.amount, -110);
  const deepList = await stripe.charges.list({ limit: 2, expand: ['data.refunds.data.balance_transaction'] });
  assert.equal(deepList.data[1].refunds.data[0].balance_transaction.type, 'refund');

  // The list's url answers too, and pages like /v1/refunds?charge=.
  const page = await stripe.rawRequest('GET', `${ch.refunds.url}?limit=3`);
  assert.equal(page.url, ch.refunds.url);
  assert.deepEqual(page.data.map((r) => r.id), made.slice(-3).reverse());
  assert.equal(page.has_more, true);
  const next = await stripe.rawRequest('GET', `${ch.refunds.url}?limit=100&starting_after=${made[8]}`);
  assert.deepEqual(next.data.map((r) => r.id), made.slice(0, 8).reverse());
  assert.equal(next.has_more, false);
  const one = await stripe.rawRequest('GET', `${ch.refunds.url}/${made[0]}`);
  assert.equal(one.id, made[0]);
  // A refund of another charge, or a charge that is not there, is missing.
  const elsewhere = await stripe.refunds.create({ payment_intent: (await paid(900)).id, amount: 100 });
  let err = await expectError(stripe.rawRequest('GET', `${ch.refunds.url}/${elsewhere.id}`), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 404);
  err = await expectError(stripe.rawRequest('GET', '/v1/charges/ch_missing/refunds'), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 404);

  // Fields Turnpike always leaves empty expand to what they are, as on Stripe.
  const c = await stripe.charges.retrieve(other.latest_charge, { expand: ['review', 'application_fee'] });
  assert.equal(c.id, other.latest_charge);
  const cus = await stripe.customers.retrieve((await stripe.customers.create({})).id, { expand: ['sources', 'default_source'] });
  assert.equal(cus.default_source, null);
  // an embedded list carries its total_count, as Stripe's do
  assert.deepEqual(cus.sources, { object: 'list', data: [], has_more: false, total_count: 0, url: `/v1/customers/${cus.id}/sources` });
});

test('the Charges API: charges.create with a test token, capture later, a decline as StripeCardError naming the charge, then a refund', async () => {
  const ch = await stripe.charges.create({ amount: 2600, currency: 'usd', source: 'tok_visa', description: 'legacy' });
  assert.equal(ch.object, 'charge');
  assert.equal(ch.status, 'succeeded');
  assert.equal(ch.captured, true);
  assert.equal(ch.description, 'legacy');

  const held = await stripe.charges.create({ amount: 1800, currency: 'usd', source: 'tok_mastercard', capture: false });
  assert.equal(held.captured, false);
  const captured = await stripe.charges.capture(held.id, { amount: 1000 });
  assert.equal(captured.amount_captured, 1000);

  const err = await expectError(stripe.charges.create({ amount: 2600, currency: 'usd', source: 'tok_chargeDeclined' }),
    errors.StripeCardError);
  assert.equal(err.code, 'card_declined');
  assert.match(err.raw.charge, /^ch_/);
  const failed = await stripe.charges.retrieve(err.raw.charge);
  assert.equal(failed.status, 'failed');

  const re = await stripe.refunds.create({ charge: ch.id, amount: 600 });
  assert.equal(re.status, 'succeeded');
  assert.equal((await stripe.charges.retrieve(ch.id)).amount_refunded, 600);
});
