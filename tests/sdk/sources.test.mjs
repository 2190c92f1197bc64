// The legacy Cards API through stripe-node, as older integrations use it:
// a token from the browser, customers.create({ source }), charges.create({
// customer }), then createSource / listSources / updateSource /
// deleteSource on the customer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, client, errors, expectError, PUBLISHABLE_KEY, EXP_YEAR } from './lib.mjs';

test('a customer saved from a token is charged with the Charges API', async () => {
  const tok = await client(PUBLISHABLE_KEY).tokens.create({ card: { number: '4242424242424242',
    exp_month: '7', exp_year: String(EXP_YEAR), cvc: '123', name: 'Ada Lovelace' } });
  const customer = await stripe.customers.create({ email: 'ada@example.test', source: tok.id });
  assert.match(customer.default_source, /^card_/);
  const charge = await stripe.charges.create({ amount: 4200, currency: 'usd', customer: customer.id });
  assert.equal(charge.status, 'succeeded');
  assert.equal(charge.source.object, 'card');
  assert.equal(charge.source.id, customer.default_source);
  assert.equal(charge.source.name, 'Ada Lovelace');
  const refund = await stripe.refunds.create({ charge: charge.id, amount: 200 });
  assert.equal(refund.status, 'succeeded');
});

test('cards are added, listed, updated and deleted on the customer', async () => {
  const customer = await stripe.customers.create({ source: 'tok_visa' });
  const mc = await stripe.customers.createSource(customer.id, { source: 'tok_mastercard' });
  assert.equal(mc.brand, 'MasterCard');
  const cards = [];
  for await (const c of stripe.customers.listSources(customer.id, { object: 'card', limit: 1 })) cards.push(c.id);
  assert.deepEqual(cards.sort(), [customer.default_source, mc.id].sort());
  const upd = await stripe.customers.updateSource(customer.id, mc.id, { name: 'Grace Hopper', exp_month: 4 });
  assert.equal(upd.name, 'Grace Hopper');
  assert.equal(upd.exp_month, 4);
  const one = await stripe.customers.retrieveSource(customer.id, mc.id);
  assert.equal(one.name, 'Grace Hopper');
  await stripe.customers.update(customer.id, { default_source: mc.id });
  const charge = await stripe.charges.create({ amount: 999, currency: 'eur', customer: customer.id });
  assert.equal(charge.payment_method, mc.id);
  const gone = await stripe.customers.deleteSource(customer.id, mc.id);
  assert.equal(gone.deleted, true);
  const err = await expectError(stripe.customers.retrieveSource(customer.id, mc.id), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'resource_missing');
  const after = await stripe.customers.retrieve(customer.id);
  assert.notEqual(after.default_source, mc.id);
});

test('a PaymentIntent confirmed with only a customer is paid by its default card source', async () => {
  // Stripe, for integrations moving from the Charges API: with confirm=true
  // and no payment_method or source, customer.default_source pays.
  const customer = await stripe.customers.create({ source: 'tok_visa' });
  const pi = await stripe.paymentIntents.create({ amount: 1300, currency: 'usd', customer: customer.id, confirm: true });
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.payment_method, customer.default_source);
  // the card is still the customer's, and pays again
  const again = await stripe.paymentIntents.create({ amount: 700, currency: 'usd', customer: customer.id, confirm: true });
  assert.equal(again.status, 'succeeded');
  // a customer without a default card source: the payment method is missing
  const bare = await stripe.customers.create({});
  const err = await expectError(stripe.paymentIntents.create({ amount: 700, currency: 'usd', customer: bare.id, confirm: true }),
    errors.StripeInvalidRequestError);
  assert.equal(err.param, 'payment_method');
});
