// PaymentIntent lifecycle through the official SDK: automatic and manual
// capture, cancel, update-then-confirm, declines, zero-decimal currencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, errors, CARDS, card, cardData, tag, expectError } from './lib.mjs';

test('create with confirm and pm_card_visa succeeds and leaves a captured visa charge', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 2000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
  });
  assert.match(pi.id, /^pi_/);
  assert.equal(pi.object, 'payment_intent');
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.amount, 2000);
  assert.equal(pi.amount_received, 2000);
  assert.equal(pi.currency, 'usd');
  assert.equal(pi.capture_method, 'automatic');
  assert.equal(typeof pi.created, 'number');
  assert.equal(pi.livemode, false);
  assert.ok(pi.client_secret && pi.client_secret.startsWith(`${pi.id}_secret_`), `client_secret ${pi.client_secret}`);
  assert.equal(typeof pi.latest_charge, 'string');
  assert.match(pi.latest_charge, /^ch_/);
  assert.match(String(pi.payment_method), /^pm_/);
  assert.ok(pi.lastResponse.requestId, 'Request-Id header present');

  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.object, 'charge');
  assert.equal(ch.id, pi.latest_charge);
  assert.equal(ch.payment_intent, pi.id);
  assert.equal(ch.amount, 2000);
  assert.equal(ch.amount_captured, 2000);
  assert.equal(ch.currency, 'usd');
  assert.equal(ch.captured, true);
  assert.equal(ch.paid, true);
  assert.equal(ch.status, 'succeeded');
  assert.equal(ch.refunded, false);
  assert.equal(ch.amount_refunded, 0);
  assert.equal(ch.payment_method_details.type, 'card');
  assert.equal(ch.payment_method_details.card.brand, 'visa');
  assert.equal(ch.payment_method_details.card.last4, '4242');
});

test('pm_card_mastercard and pm_card_amex charge with their brand and last4', async () => {
  for (const [pm, brand, last4] of [['pm_card_mastercard', 'mastercard', '4444'], ['pm_card_amex', 'amex', '8431']]) {
    const pi = await stripe.paymentIntents.create({ amount: 1500, currency: 'usd', payment_method: pm, confirm: true });
    assert.equal(pi.status, 'succeeded', pm);
    const ch = await stripe.charges.retrieve(pi.latest_charge);
    assert.equal(ch.payment_method_details.card.brand, brand, pm);
    assert.equal(ch.payment_method_details.card.last4, last4, pm);
  }
});

test("Stripe's test PaymentMethods by country, decline and 3-D Secure behave as named", async () => {
  for (const [pm, country, last4] of [['pm_card_us', 'US', '4242'], ['pm_card_gb', 'GB', '0000'],
    ['pm_card_de', 'DE', '0016'], ['pm_card_ca', 'CA', '0000'], ['pm_card_threeDSecureOptional', 'US', '3055']]) {
    const pi = await stripe.paymentIntents.create({ amount: 1500, currency: 'usd', payment_method: pm, confirm: true });
    assert.equal(pi.status, 'succeeded', pm);
    const m = await stripe.paymentMethods.retrieve(pi.payment_method);
    assert.equal(m.card.country, country, pm);
    assert.equal(m.card.last4, last4, pm);
  }
  for (const [pm, declineCode] of [['pm_card_visa_chargeDeclined', 'generic_decline'],
    ['pm_card_visa_chargeDeclinedInsufficientFunds', 'insufficient_funds'],
    ['pm_card_visa_chargeDeclinedVelocityLimitExceeded', 'card_velocity_exceeded'],
    ['pm_card_radarBlock', 'fraudulent']]) {
    const err = await expectError(stripe.paymentIntents.create({
      amount: 1500, currency: 'usd', payment_method: pm, confirm: true,
    }), errors.StripeCardError);
    assert.equal(err.code, 'card_declined', pm);
    assert.equal(err.decline_code, declineCode, pm);
  }
  const err = await expectError(stripe.paymentIntents.create({
    amount: 1500, currency: 'usd', payment_method: 'pm_card_nosuchthing', confirm: true,
  }), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'resource_missing');
  assert.equal(err.param, 'payment_method');
});

test('expansions on a confirming create are made from the payment just committed, and bad ones refuse it whole', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 2100, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
    expand: ['latest_charge.payment_intent', 'latest_charge.balance_transaction'],
  }, { idempotencyKey: tag('expand-confirm') });
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.latest_charge.object, 'charge');
  assert.equal(pi.latest_charge.payment_intent.id, pi.id);
  assert.equal(pi.latest_charge.payment_intent.latest_charge, pi.latest_charge.id);
  assert.equal(pi.latest_charge.balance_transaction.amount, 2100);
  const before = (await stripe.paymentIntents.list({ limit: 100 })).data.length;
  const err = await expectError(stripe.paymentIntents.create({
    amount: 2100, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, expand: ['latest_charge.amount'],
  }), errors.StripeInvalidRequestError);
  assert.equal(err.param, 'expand');
  const deep = await expectError(stripe.paymentIntents.create({
    amount: 2100, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
    expand: ['latest_charge.payment_intent.latest_charge.payment_intent.customer'],
  }), errors.StripeInvalidRequestError);
  assert.match(deep.message, /4 levels/);
  assert.equal((await stripe.paymentIntents.list({ limit: 100 })).data.length, before, 'nothing was created');
});

test('card tokens (tok_visa ...) make PaymentMethods; unknown or mixed with card details are refused', async () => {
  const pm = await stripe.paymentMethods.create({ type: 'card', card: { token: 'tok_mastercard' } });
  assert.match(pm.id, /^pm_/);
  assert.equal(pm.card.brand, 'mastercard');
  assert.equal(pm.card.last4, '4444');
  assert.ok(pm.card.exp_year > new Date().getUTCFullYear(), 'a token card expires in the future');
  const pi = await stripe.paymentIntents.create({ amount: 1200, currency: 'eur', payment_method: pm.id, confirm: true });
  assert.equal(pi.status, 'succeeded');
  // Same card, same fingerprint, however it arrived.
  const raw = await stripe.paymentMethods.create({ type: 'card', card: card('5555555555554444') });
  assert.equal(raw.card.fingerprint, pm.card.fingerprint);

  const declined = await expectError(stripe.paymentIntents.create({
    amount: 1200, currency: 'usd', confirm: true,
    payment_method_data: { type: 'card', card: { token: 'tok_chargeDeclinedInsufficientFunds' } },
  }), errors.StripeCardError);
  assert.equal(declined.decline_code, 'insufficient_funds');

  const unknown = await expectError(stripe.paymentMethods.create({ type: 'card', card: { token: 'tok_nope' } }),
    errors.StripeInvalidRequestError);
  assert.equal(unknown.code, 'resource_missing');
  assert.equal(unknown.param, 'card[token]');
  const mixed = await expectError(stripe.paymentMethods.create({
    type: 'card', card: { token: 'tok_visa', number: '4242424242424242' },
  }), errors.StripeInvalidRequestError);
  assert.equal(mixed.code, 'parameters_exclusive');
  assert.equal(mixed.param, 'card[token]');
});

test('confirm with payment_method_data raw card 4242 succeeds and never echoes the number', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 1234, currency: 'usd', confirm: true, payment_method_data: cardData(CARDS.visa),
  });
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.amount_received, 1234);
  assert.ok(!JSON.stringify(pi).includes(CARDS.visa), 'response must not contain the PAN');
  const pm = await stripe.paymentMethods.retrieve(pi.payment_method);
  assert.equal(pm.type, 'card');
  assert.equal(pm.card.brand, 'visa');
  assert.equal(pm.card.last4, '4242');
  assert.equal(pm.card.exp_month, 12);
  assert.ok(!JSON.stringify(pm).includes(CARDS.visa), 'payment method must not contain the PAN');
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.payment_method_details.card.last4, '4242');
});

test("the CVC-check card 4000000000000101 declines only when a CVC is given, as Stripe's does", async () => {
  const noCvc = { type: 'card', card: { number: '4000000000000101', exp_month: 12, exp_year: card('1').exp_year } };
  const ok = await stripe.paymentIntents.create({
    amount: 1100, currency: 'usd', confirm: true, payment_method_data: noCvc, expand: ['latest_charge'],
  });
  assert.equal(ok.status, 'succeeded');
  assert.equal(ok.latest_charge.payment_method_details.card.checks.cvc_check, null);
  const err = await expectError(stripe.paymentIntents.create({
    amount: 1100, currency: 'usd', confirm: true, payment_method_data: cardData('4000000000000101'),
  }), errors.StripeCardError);
  assert.equal(err.code, 'incorrect_cvc');
  const ch = await stripe.charges.retrieve(err.raw.charge);
  assert.equal(ch.payment_method_details.card.checks.cvc_check, 'fail');
  // a PaymentMethod shows whether a CVC came with its card
  const withCvc = await stripe.paymentMethods.create(cardData(CARDS.visa));
  assert.equal(withCvc.card.checks.cvc_check, 'unchecked');
  const without = await stripe.paymentMethods.create({ type: 'card', card: { number: CARDS.visa, exp_month: 12, exp_year: card('1').exp_year } });
  assert.equal(without.card.checks.cvc_check, null);
});

test('manual capture authorizes to requires_capture and a partial capture succeeds with amount_received', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 5000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  assert.equal(pi.status, 'requires_capture');
  assert.equal(pi.capture_method, 'manual');
  assert.equal(pi.amount_capturable, 5000);
  assert.equal(pi.amount_received, 0);
  const auth = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(auth.captured, false);
  assert.equal(auth.status, 'succeeded');

  const captured = await stripe.paymentIntents.capture(pi.id, { amount_to_capture: 3000 });
  assert.equal(captured.status, 'succeeded');
  assert.equal(captured.amount_received, 3000);
  assert.equal(captured.amount_capturable, 0);
  assert.equal(captured.amount, 5000);
  const ch = await stripe.charges.retrieve(captured.latest_charge);
  assert.equal(ch.captured, true);
  assert.equal(ch.amount_captured, 3000);
  // The uncaptured 2000 is released: since API 2025-03-31.basil Stripe
  // makes no Refund of it and the charge's amount_refunded stays 0.
  assert.equal(ch.amount_refunded, 0);
  assert.equal(ch.refunded, false);
  const rest = await stripe.refunds.list({ payment_intent: pi.id });
  assert.equal(rest.data.length, 0);

  // A second capture has nothing left to capture.
  await expectError(stripe.paymentIntents.capture(pi.id), errors.StripeInvalidRequestError);

  // Only what was captured can be refunded: 3000.
  const over = await expectError(stripe.refunds.create({ payment_intent: pi.id, amount: 3001 }),
    errors.StripeInvalidRequestError);
  assert.equal(over.param, 'amount');
  const bal0 = await stripe.balance.retrieve();
  const usd0 = bal0.pending.concat(bal0.available).filter((b) => b.currency === 'usd').reduce((a, b) => a + b.amount, 0);
  const all = await stripe.refunds.create({ payment_intent: pi.id });
  assert.equal(all.amount, 3000);
  const bal1 = await stripe.balance.retrieve();
  const usd1 = bal1.pending.concat(bal1.available).filter((b) => b.currency === 'usd').reduce((a, b) => a + b.amount, 0);
  assert.equal(usd0 - usd1, 3000);
  const done = await stripe.charges.retrieve(ch.id);
  assert.equal(done.amount_refunded, 3000);
  assert.equal(done.refunded, true);
});

test('capturing more than amount_capturable is rejected and leaves the intent capturable', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 1000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  const err = await expectError(stripe.paymentIntents.capture(pi.id, { amount_to_capture: 1001 }),
    errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  const again = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(again.status, 'requires_capture');
  assert.equal(again.amount_capturable, 1000);
  const full = await stripe.paymentIntents.capture(pi.id);
  assert.equal(full.status, 'succeeded');
  assert.equal(full.amount_received, 1000);
});

test('cancel of a requires_capture intent with cancellation_reason makes it canceled', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 2500, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  assert.equal(pi.status, 'requires_capture');
  const canceled = await stripe.paymentIntents.cancel(pi.id, { cancellation_reason: 'requested_by_customer' });
  assert.equal(canceled.status, 'canceled');
  assert.equal(canceled.cancellation_reason, 'requested_by_customer');
  assert.equal(typeof canceled.canceled_at, 'number');
  assert.equal(canceled.amount_received, 0);
  const retrieved = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(retrieved.status, 'canceled');
  // A canceled intent cannot be captured any more.
  await expectError(stripe.paymentIntents.capture(pi.id), errors.StripeInvalidRequestError);
});

test('a succeeded intent cannot be canceled', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 700, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  assert.equal(pi.status, 'succeeded');
  const err = await expectError(stripe.paymentIntents.cancel(pi.id), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'succeeded');
});

test('create without confirm waits in requires_payment_method, takes updates, and confirms later', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 1000, currency: 'usd', metadata: { step: 'one' } });
  assert.equal(pi.status, 'requires_payment_method');
  assert.equal(pi.latest_charge, null);
  assert.equal(pi.amount_received, 0);
  assert.deepEqual(pi.metadata, { step: 'one' });

  const updated = await stripe.paymentIntents.update(pi.id, {
    amount: 1750, metadata: { step: 'two', order: 'A-17' }, description: 'updated by sdk test',
  });
  assert.equal(updated.id, pi.id);
  assert.equal(updated.amount, 1750);
  assert.equal(updated.status, 'requires_payment_method');
  assert.deepEqual(updated.metadata, { step: 'two', order: 'A-17' });
  assert.equal(updated.description, 'updated by sdk test');

  const withPm = await stripe.paymentIntents.update(pi.id, { payment_method: 'pm_card_visa' });
  assert.equal(withPm.status, 'requires_confirmation');

  const confirmed = await stripe.paymentIntents.confirm(pi.id);
  assert.equal(confirmed.status, 'succeeded');
  assert.equal(confirmed.amount_received, 1750);
  const ch = await stripe.charges.retrieve(confirmed.latest_charge);
  assert.equal(ch.amount, 1750);
  assert.deepEqual((await stripe.paymentIntents.retrieve(pi.id)).metadata, { step: 'two', order: 'A-17' });
});

test('a succeeded payment takes metadata and a description, not a new amount', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 1200, currency: 'usd', confirm: true,
    payment_method: 'pm_card_visa', metadata: { cart: 'c1' } });
  assert.equal(pi.status, 'succeeded');
  const updated = await stripe.paymentIntents.update(pi.id, {
    metadata: { order_id: '6735' }, description: 'order 6735', receipt_email: 'buyer@example.com',
  });
  assert.equal(updated.status, 'succeeded');
  assert.deepEqual(updated.metadata, { cart: 'c1', order_id: '6735' });
  assert.equal(updated.description, 'order 6735');
  assert.equal(updated.receipt_email, 'buyer@example.com');
  assert.equal(updated.amount_received, 1200);
  assert.deepEqual((await stripe.paymentIntents.retrieve(pi.id)).metadata, { cart: 'c1', order_id: '6735' });

  const e = await expectError(stripe.paymentIntents.update(pi.id, { amount: 1500, metadata: { x: 'y' } }),
    errors.StripeInvalidRequestError);
  assert.equal(e.code, 'payment_intent_unexpected_state');
  assert.equal(e.param, 'amount');
  assert.equal(e.raw.tp_code, 1055);
  const after = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(after.amount, 1200);
  assert.equal(after.metadata.x, undefined, 'a refused update changes nothing');

  const canceled = await stripe.paymentIntents.cancel(
    (await stripe.paymentIntents.create({ amount: 300, currency: 'usd' })).id);
  const c2 = await stripe.paymentIntents.update(canceled.id, { metadata: { why: 'dup' } });
  assert.equal(c2.status, 'canceled');
  assert.equal(c2.metadata.why, 'dup');
  await expectError(stripe.paymentIntents.update(canceled.id, { payment_method: 'pm_card_visa' }),
    errors.StripeInvalidRequestError);
});

test('confirm passes payment_method on the confirm call itself', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 900, currency: 'eur' });
  const confirmed = await stripe.paymentIntents.confirm(pi.id, { payment_method: 'pm_card_visa' });
  assert.equal(confirmed.status, 'succeeded');
  assert.equal(confirmed.currency, 'eur');
  assert.equal(confirmed.amount_received, 900);
});

test('metadata key set to empty string is removed on update', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 500, currency: 'usd', metadata: { a: '1', b: '2' } });
  const updated = await stripe.paymentIntents.update(pi.id, { metadata: { a: '' } });
  assert.deepEqual(updated.metadata, { b: '2' });
});

const DECLINES = [
  ['generic_decline', CARDS.generic_decline, 'card_declined', 'generic_decline'],
  ['insufficient_funds', CARDS.insufficient_funds, 'card_declined', 'insufficient_funds'],
  ['lost_card', CARDS.lost_card, 'card_declined', 'lost_card'],
  ['stolen_card', CARDS.stolen_card, 'card_declined', 'stolen_card'],
  ['fraudulent', CARDS.fraudulent, 'card_declined', 'fraudulent'],
  ['expired_card', CARDS.expired_card, 'expired_card', null],
  ['incorrect_cvc', CARDS.incorrect_cvc, 'incorrect_cvc', null],
  ['processing_error', CARDS.processing_error, 'processing_error', null],
];

for (const [name, number, code, declineCode] of DECLINES) {
  test(`decline card ${name} raises StripeCardError code ${code} and leaves requires_payment_method with last_payment_error`, async () => {
    const err = await expectError(stripe.paymentIntents.create({
      amount: 3100, currency: 'usd', confirm: true, payment_method_data: cardData(number),
    }), errors.StripeCardError);
    assert.equal(err.statusCode, 402);
    assert.equal(err.rawType, 'card_error');
    assert.equal(err.code, code);
    if (declineCode) assert.equal(err.decline_code, declineCode);
    assert.ok(err.message && !err.message.includes(number), 'message present and free of the PAN');
    assert.ok(err.requestId, 'Request-Id on error responses');

    const epi = err.raw.payment_intent;
    assert.ok(epi && typeof epi === 'object', 'error.payment_intent carries the intent');
    assert.match(epi.id, /^pi_/);
    assert.equal(epi.status, 'requires_payment_method');
    assert.equal(epi.last_payment_error.code, code);
    assert.ok(!JSON.stringify(err.raw).includes(number), 'error body must not contain the PAN');

    const pi = await stripe.paymentIntents.retrieve(epi.id);
    assert.equal(pi.status, 'requires_payment_method');
    assert.equal(pi.amount_received, 0);
    assert.ok(pi.last_payment_error, 'last_payment_error set');
    assert.equal(pi.last_payment_error.type, 'card_error');
    assert.equal(pi.last_payment_error.code, code);
    if (declineCode) assert.equal(pi.last_payment_error.decline_code, declineCode);
  });
}

test('after a decline the same intent can be confirmed with a good card', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 4200, currency: 'usd' });
  const err = await expectError(stripe.paymentIntents.confirm(pi.id, {
    payment_method_data: cardData(CARDS.insufficient_funds),
  }), errors.StripeCardError);
  assert.equal(err.decline_code, 'insufficient_funds');
  assert.equal(err.raw.payment_intent.id, pi.id);
  const ok = await stripe.paymentIntents.confirm(pi.id, { payment_method: 'pm_card_visa' });
  assert.equal(ok.status, 'succeeded');
  assert.equal(ok.last_payment_error, null);
  assert.equal(ok.amount_received, 4200);
});

test('a card number failing Luhn is rejected with incorrect_number and stores no intent', async () => {
  const cus = await stripe.customers.create({ description: tag('luhn') });
  const err = await expectError(stripe.paymentIntents.create({
    amount: 1000, currency: 'usd', confirm: true, customer: cus.id,
    payment_method_data: { type: 'card', card: card(CARDS.bad_luhn) },
  }), errors.StripeCardError);
  assert.equal(err.statusCode, 402);
  assert.equal(err.code, 'incorrect_number');
  assert.ok(!JSON.stringify(err.raw).includes(CARDS.bad_luhn));
  const list = await stripe.paymentIntents.list({ customer: cus.id, limit: 10 });
  assert.equal(list.data.length, 0, 'no PaymentIntent stored for an invalid card number');
});

test('JPY zero-decimal amount is taken as is', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 500, currency: 'jpy', payment_method: 'pm_card_visa', confirm: true });
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.currency, 'jpy');
  assert.equal(pi.amount, 500);
  assert.equal(pi.amount_received, 500);
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.amount, 500);
  assert.equal(ch.currency, 'jpy');
});

test('uppercase currency is normalised to lowercase', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 800, currency: 'USD' });
  assert.equal(pi.currency, 'usd');
});

test('charges.capture captures a manual PaymentIntent through its charge, partially, once', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 1500, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  assert.equal(pi.status, 'requires_capture');
  const ch = await stripe.charges.capture(pi.latest_charge, { amount: 600, expand: ['balance_transaction'] });
  assert.equal(ch.object, 'charge');
  assert.equal(ch.id, pi.latest_charge);
  assert.equal(ch.captured, true);
  assert.equal(ch.amount_captured, 600);
  assert.equal(ch.balance_transaction.amount, 600);
  const after = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(after.status, 'succeeded');
  assert.equal(after.amount_received, 600);
  const again = await expectError(stripe.charges.capture(pi.latest_charge), errors.StripeInvalidRequestError);
  assert.equal(again.code, 'charge_already_captured');
  const too = await stripe.paymentIntents.create({
    amount: 700, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, capture_method: 'manual',
  });
  const big = await expectError(stripe.charges.capture(too.latest_charge, { amount: 701 }),
    errors.StripeInvalidRequestError);
  assert.equal(big.param, 'amount');
  assert.equal((await stripe.paymentIntents.retrieve(too.id)).status, 'requires_capture');
});

test('a test token set without confirming becomes a real PaymentMethod, on create and on update', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 1100, currency: 'usd', payment_method: 'pm_card_visa' });
  assert.equal(pi.status, 'requires_confirmation');
  assert.match(pi.payment_method, /^pm_/);
  assert.notEqual(pi.payment_method, 'pm_card_visa');
  const pm = await stripe.paymentMethods.retrieve(pi.payment_method);
  assert.equal(pm.card.last4, '4242');
  const upd = await stripe.paymentIntents.update(pi.id, { payment_method: 'pm_card_mastercard' });
  assert.notEqual(upd.payment_method, pi.payment_method);
  assert.equal((await stripe.paymentMethods.retrieve(upd.payment_method)).card.last4, '4444');
  const done = await stripe.paymentIntents.confirm(pi.id);
  assert.equal(done.status, 'succeeded');
  assert.equal(done.payment_method, upd.payment_method);
  const ch = await stripe.charges.retrieve(done.latest_charge);
  assert.equal(ch.payment_method_details.card.last4, '4444');
});

test("parameters of the pinned API version the SDK types: allowed types, payment_details, allow_redisplay; a missing feature is named", async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 1800, currency: 'usd', confirm: true, payment_method: 'pm_card_visa',
    allowed_payment_method_types: ['card'], excluded_payment_method_types: ['klarna'],
    payment_details: { order_reference: 'ord-42' }, transfer_group: 'grp-42',
  });
  assert.equal(pi.status, 'succeeded');
  assert.deepEqual(pi.allowed_payment_method_types, ['card']);
  assert.deepEqual(pi.excluded_payment_method_types, ['klarna']);
  assert.equal(pi.payment_details.order_reference, 'ord-42');
  assert.equal(pi.payment_details.customer_reference, null);
  assert.equal(pi.transfer_group, 'grp-42');

  const pm = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa), allow_redisplay: 'always' });
  assert.equal(pm.allow_redisplay, 'always');

  const err = await expectError(stripe.paymentIntents.create({
    amount: 1800, currency: 'usd', application_fee_amount: 100,
  }), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 400);
  assert.equal(err.param, 'application_fee_amount');
  assert.match(err.message, /Connect/);
});
