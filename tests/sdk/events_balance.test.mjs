// Events written with each state change, and the merchant balance and
// balance transactions that money movements produce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, errors, CARDS, cardData, balanceAmount, eventually, expectError } from './lib.mjs';

// Newest-first scan of the event log for one type about one object.
async function findEvent(type, objectId) {
  return eventually(async () => {
    let startingAfter;
    for (let page = 0; page < 5; page++) {
      const list = await stripe.events.list({ limit: 100, ...(startingAfter ? { starting_after: startingAfter } : {}) });
      const hit = list.data.find((e) => e.type === type && e.data && e.data.object && e.data.object.id === objectId);
      if (hit) return hit;
      if (!list.has_more || list.data.length === 0) return null;
      startingAfter = list.data[list.data.length - 1].id;
    }
    return null;
  });
}

test('a successful payment emits payment_intent.succeeded and charge.succeeded about its objects', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 2600, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const piEvt = await findEvent('payment_intent.succeeded', pi.id);
  assert.ok(piEvt, 'payment_intent.succeeded event listed');
  assert.match(piEvt.id, /^evt_/);
  assert.equal(piEvt.object, 'event');
  assert.equal(typeof piEvt.created, 'number');
  assert.equal(piEvt.livemode, false);
  assert.equal(piEvt.data.object.object, 'payment_intent');
  assert.equal(piEvt.data.object.status, 'succeeded');
  assert.equal(piEvt.data.object.amount_received, 2600);

  const chEvt = await findEvent('charge.succeeded', pi.latest_charge);
  assert.ok(chEvt, 'charge.succeeded event listed');
  assert.equal(chEvt.data.object.object, 'charge');
  assert.equal(chEvt.data.object.payment_intent, pi.id);
  assert.equal(chEvt.data.object.amount, 2600);

  const createdEvt = await findEvent('payment_intent.created', pi.id);
  assert.ok(createdEvt, 'payment_intent.created event listed');
  // as created (not yet confirmed), naming the PaymentMethod that paid:
  // pm_card_visa stands for a new one, which the event must not hide
  assert.equal(createdEvt.data.object.status, 'requires_confirmation');
  assert.equal(createdEvt.data.object.payment_method, pi.payment_method);
  assert.match(pi.payment_method, /^pm_(?!card_)/);

  const got = await stripe.events.retrieve(piEvt.id);
  assert.equal(got.id, piEvt.id);
  assert.equal(got.type, 'payment_intent.succeeded');
  assert.equal(got.data.object.id, pi.id);
});

test('a decline emits payment_intent.payment_failed', async () => {
  const err = await expectError(stripe.paymentIntents.create({
    amount: 2700, currency: 'usd', confirm: true, payment_method_data: cardData(CARDS.generic_decline),
  }), errors.StripeCardError);
  const evt = await findEvent('payment_intent.payment_failed', err.raw.payment_intent.id);
  assert.ok(evt, 'payment_intent.payment_failed event listed');
  assert.equal(evt.data.object.last_payment_error.decline_code, 'generic_decline');
});

test('manual capture, refund and cancel emit their events', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 2800, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  assert.ok(await findEvent('payment_intent.amount_capturable_updated', pi.id), 'amount_capturable_updated');
  await stripe.paymentIntents.capture(pi.id);
  assert.ok(await findEvent('charge.captured', pi.latest_charge), 'charge.captured');
  const re = await stripe.refunds.create({ payment_intent: pi.id, amount: 800 });
  assert.ok(await findEvent('charge.refunded', pi.latest_charge), 'charge.refunded');
  assert.ok(await findEvent('refund.created', re.id), 'refund.created');
  // Stripe sends charge.refund.updated for every refund update (refund.updated
  // only for some payment methods): a metadata change sends both.
  await stripe.refunds.update(re.id, { metadata: { note: 'x' } });
  for (const type of ['refund.updated', 'charge.refund.updated']) {
    const evt = await findEvent(type, re.id);
    assert.ok(evt, type);
    assert.deepEqual(evt.data.previous_attributes, { metadata: { note: null } }, type);
  }

  const other = await stripe.paymentIntents.create({ amount: 2900, currency: 'usd' });
  await stripe.paymentIntents.cancel(other.id);
  assert.ok(await findEvent('payment_intent.canceled', other.id), 'payment_intent.canceled');

  const cus = await stripe.customers.create({ name: 'Evented' });
  assert.ok(await findEvent('customer.created', cus.id), 'customer.created');
});

test('canceling an authorization releases it: no Refund, the charge not refunded (API 2025-03-31.basil)', async () => {
  const b0 = await stripe.balance.retrieve();
  const pi = await stripe.paymentIntents.create({
    amount: 3100, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  const canceled = await stripe.paymentIntents.cancel(pi.id, { cancellation_reason: 'requested_by_customer' });
  assert.equal(canceled.status, 'canceled');
  assert.equal(canceled.amount_capturable, 0);
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.captured, false);
  assert.equal(ch.refunded, false);
  assert.equal(ch.amount_refunded, 0);
  assert.equal(ch.amount_captured, 0);
  const refunds = await stripe.refunds.list({ payment_intent: pi.id });
  assert.equal(refunds.data.length, 0);
  assert.ok(await findEvent('payment_intent.canceled', pi.id), 'payment_intent.canceled');
  const recent = await stripe.events.list({ limit: 20 });
  assert.ok(!recent.data.some((e) => e.type === 'charge.refunded' && e.data.object.id === ch.id), 'no charge.refunded');
  assert.equal(usdTotal(await stripe.balance.retrieve()), usdTotal(b0), 'no money moved');
  await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 100 }), errors.StripeInvalidRequestError);
});

test('unknown event id is 404 resource_missing', async () => {
  const err = await expectError(stripe.events.retrieve('evt_doesnotexist000000'), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 404);
  assert.equal(err.code, 'resource_missing');
});

function usdTotal(b) {
  return balanceAmount(b, 'pending') + balanceAmount(b, 'available');
}

test('balance grows by exactly the captured amount and shrinks by a refund', async () => {
  const b0 = await stripe.balance.retrieve();
  assert.equal(b0.object, 'balance');
  assert.ok(Array.isArray(b0.pending) && Array.isArray(b0.available));

  const pi = await stripe.paymentIntents.create({ amount: 2345, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const b1 = await stripe.balance.retrieve();
  assert.equal(usdTotal(b1) - usdTotal(b0), 2345, 'balance up by the captured amount');

  // An authorization alone moves no money; only the captured part does.
  const auth = await stripe.paymentIntents.create({
    amount: 5000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  const b2 = await stripe.balance.retrieve();
  assert.equal(usdTotal(b2), usdTotal(b1), 'authorization does not touch the balance');
  await stripe.paymentIntents.capture(auth.id, { amount_to_capture: 1200 });
  const b3 = await stripe.balance.retrieve();
  assert.equal(usdTotal(b3) - usdTotal(b2), 1200, 'balance up by the captured part only');

  // A declined payment moves nothing.
  await expectError(stripe.paymentIntents.create({
    amount: 999, currency: 'usd', confirm: true, payment_method_data: cardData(CARDS.insufficient_funds),
  }), errors.StripeCardError);
  const b4 = await stripe.balance.retrieve();
  assert.equal(usdTotal(b4), usdTotal(b3), 'decline does not touch the balance');

  const re = await stripe.refunds.create({ payment_intent: pi.id, amount: 345 });
  assert.equal(re.status, 'succeeded');
  const b5 = await stripe.balance.retrieve();
  assert.ok(usdTotal(b5) < usdTotal(b4), 'balance goes down after a refund');
  assert.equal(usdTotal(b4) - usdTotal(b5), 345, 'balance down by the refunded amount');
});

test('balance in jpy changes by the zero-decimal amount as is', async () => {
  const b0 = await stripe.balance.retrieve();
  await stripe.paymentIntents.create({ amount: 777, currency: 'jpy', payment_method: 'pm_card_visa', confirm: true });
  const b1 = await stripe.balance.retrieve();
  const jpy = (b) => balanceAmount(b, 'pending', 'jpy') + balanceAmount(b, 'available', 'jpy');
  assert.equal(jpy(b1) - jpy(b0), 777);
  assert.equal(usdTotal(b1), usdTotal(b0), 'usd untouched by a jpy payment');
});

test('balance_transactions list includes the charge and the refund', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 3456, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const re = await stripe.refunds.create({ payment_intent: pi.id, amount: 456 });
  const list = await stripe.balanceTransactions.list({ limit: 100 });
  assert.equal(list.object, 'list');
  const ch = list.data.find((t) => t.source === pi.latest_charge);
  assert.ok(ch, 'charge balance transaction listed');
  assert.equal(ch.object, 'balance_transaction');
  assert.equal(ch.type, 'charge');
  assert.equal(ch.amount, 3456);
  assert.equal(ch.currency, 'usd');
  assert.equal(typeof ch.net, 'number');
  const rt = list.data.find((t) => t.source === re.id);
  assert.ok(rt, 'refund balance transaction listed');
  assert.equal(rt.type, 'refund');
  assert.equal(rt.amount, -456);
  const charge = await stripe.charges.retrieve(pi.latest_charge);
  if (charge.balance_transaction) assert.equal(charge.balance_transaction, ch.id);
});
