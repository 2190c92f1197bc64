// SetupIntents through stripe-node: save a card to a customer without a
// charge, with and without 3-D Secure, then pay off-session with it; a
// declined card is a StripeCardError naming the SetupIntent; auto-paging
// lists; cancel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, errors, card, expectError, submitChallenge } from './lib.mjs';

test('a card saved by a SetupIntent pays off-session later', async () => {
  const cus = await stripe.customers.create({ email: 'setup@example.test' });
  const si = await stripe.setupIntents.create({ customer: cus.id, payment_method: 'pm_card_visa', confirm: true,
    usage: 'off_session' });
  assert.equal(si.object, 'setup_intent');
  assert.equal(si.status, 'succeeded');
  const pms = await stripe.customers.listPaymentMethods(cus.id);
  assert.deepEqual(pms.data.map((p) => p.id), [si.payment_method]);
  const pi = await stripe.paymentIntents.create({ amount: 2500, currency: 'usd', customer: cus.id,
    payment_method: si.payment_method, off_session: true, confirm: true });
  assert.equal(pi.status, 'succeeded');
});

test('a card that asks until it is set up: SetupIntent with 3-D Secure, then off-session', async () => {
  const cus = await stripe.customers.create({});
  let si = await stripe.setupIntents.create({ customer: cus.id,
    payment_method_data: { type: 'card', card: card('4000002500003155') } });
  assert.equal(si.status, 'requires_confirmation');
  si = await stripe.setupIntents.confirm(si.id, { return_url: 'https://shop.example/back' });
  assert.equal(si.status, 'requires_action');
  assert.equal(si.next_action.type, 'redirect_to_url');
  const res = await submitChallenge(si.next_action.redirect_to_url.url, 'approve');
  assert.equal(res.status, 303);
  const back = new URL(res.headers.get('location'));
  assert.equal(back.searchParams.get('setup_intent'), si.id);
  assert.equal(back.searchParams.get('redirect_status'), 'succeeded');
  si = await stripe.setupIntents.retrieve(si.id, { expand: ['payment_method'] });
  assert.equal(si.status, 'succeeded');
  assert.equal(si.payment_method.customer, cus.id);
  const pi = await stripe.paymentIntents.create({ amount: 800, currency: 'eur', customer: cus.id,
    payment_method: si.payment_method.id, off_session: true, confirm: true });
  assert.equal(pi.status, 'succeeded');
});

test('a declined card: StripeCardError with the SetupIntent, nothing saved', async () => {
  const cus = await stripe.customers.create({});
  const err = await expectError(stripe.setupIntents.create({ customer: cus.id, confirm: true,
    payment_method: 'pm_card_chargeDeclinedInsufficientFunds' }), errors.StripeCardError);
  assert.equal(err.decline_code, 'insufficient_funds');
  assert.equal(err.raw.setup_intent.status, 'requires_payment_method');
  assert.equal(err.raw.setup_intent.last_setup_error.decline_code, 'insufficient_funds');
  const pms = await stripe.customers.listPaymentMethods(cus.id);
  assert.equal(pms.data.length, 0);
});

test('list by customer with auto-paging, and cancel', async () => {
  const cus = await stripe.customers.create({});
  const made = [];
  for (let i = 0; i < 5; i++) made.push((await stripe.setupIntents.create({ customer: cus.id })).id);
  const seen = [];
  for await (const si of stripe.setupIntents.list({ customer: cus.id, limit: 2 })) seen.push(si.id);
  assert.deepEqual(seen, made.reverse());
  const canceled = await stripe.setupIntents.cancel(made[0], { cancellation_reason: 'abandoned' });
  assert.equal(canceled.status, 'canceled');
  const again = await expectError(stripe.setupIntents.cancel(made[0]), errors.StripeInvalidRequestError);
  assert.equal(again.code, 'setup_intent_unexpected_state');
});

test('setupAttempts.list shows each confirmation', async () => {
  const si = await stripe.setupIntents.create({ payment_method: 'pm_card_chargeDeclined', confirm: true })
    .catch((e) => e.raw.setup_intent);
  const ok = await stripe.setupIntents.confirm(si.id, { payment_method: 'pm_card_visa',
    expand: ['latest_attempt'] });
  assert.equal(ok.latest_attempt.status, 'succeeded');
  const seen = [];
  for await (const a of stripe.setupAttempts.list({ setup_intent: si.id, limit: 1 })) seen.push(a.status);
  assert.deepEqual(seen, ['succeeded', 'failed']);
});
