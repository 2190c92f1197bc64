// Card tokens through stripe-node: tokens.create (with the publishable key,
// as Stripe.js's createToken does, and with the secret key), a Charges API
// charge with the token as its source, tokens.retrieve showing it used, and
// the SDK's error for a second use; and accounts.retrieve(), the merchant
// behind the key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, client, errors, expectError, PUBLISHABLE_KEY, EXP_YEAR } from './lib.mjs';

test('a token made with the publishable key pays one charge', async () => {
  const browser = client(PUBLISHABLE_KEY);
  const tok = await browser.tokens.create({ card: { number: '4242424242424242', exp_month: '12',
    exp_year: String(EXP_YEAR), cvc: '314', name: 'Ada Lovelace', address_zip: '94107' } });
  assert.equal(tok.object, 'token');
  assert.equal(tok.type, 'card');
  assert.equal(tok.used, false);
  assert.equal(tok.card.brand, 'Visa');
  assert.equal(tok.card.last4, '4242');
  assert.equal(tok.card.cvc_check, 'unchecked');
  const charge = await stripe.charges.create({ amount: 2500, currency: 'usd', source: tok.id,
    description: 'token charge' });
  assert.equal(charge.status, 'succeeded');
  assert.equal(charge.billing_details.name, 'Ada Lovelace');
  assert.equal(charge.payment_method_details.card.last4, '4242');
  const used = await stripe.tokens.retrieve(tok.id);
  assert.equal(used.used, true);
  const err = await expectError(stripe.charges.create({ amount: 2500, currency: 'usd', source: tok.id }),
    errors.StripeInvalidRequestError);
  assert.equal(err.code, 'token_already_used');
  assert.equal(err.param, 'source');
});

test('a token becomes a PaymentMethod that pays a PaymentIntent', async () => {
  const tok = await stripe.tokens.create({ card: { number: '5555555555554444', exp_month: '3',
    exp_year: String(EXP_YEAR) } });
  assert.equal(tok.card.brand, 'MasterCard');
  const pm = await stripe.paymentMethods.create({ type: 'card', card: { token: tok.id } });
  assert.equal(pm.card.brand, 'mastercard');
  const pi = await stripe.paymentIntents.create({ amount: 1200, currency: 'eur', confirm: true,
    payment_method: pm.id });
  assert.equal(pi.status, 'succeeded');
});

test('accounts.retrieve() names the account the key belongs to', async () => {
  const acct = await stripe.accounts.retrieve();
  assert.equal(acct.object, 'account');
  assert.equal(acct.id, process.env.TP_MERCHANT_ID);
  assert.equal(acct.charges_enabled, true);
  assert.equal(acct.payouts_enabled, false);
  assert.equal(acct.capabilities.card_payments, 'active');
  const same = await stripe.accounts.retrieve(acct.id);
  assert.equal(same.id, acct.id);
  const err = await expectError(stripe.accounts.retrieve('acct_someoneelse'), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'resource_missing');
});
