// Disputes through stripe-node: the test card's chargeback, evidence
// submitted with the SDK, won back; list by charge with auto-paging.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, errors, expectError } from './lib.mjs';

test('a chargeback from the dispute test card is fought and won with the SDK', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 4200, currency: 'usd', confirm: true,
    payment_method: 'pm_card_createDispute' });
  const charge = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(charge.disputed, true);
  const disputes = [];
  for await (const d of stripe.disputes.list({ charge: charge.id, limit: 1 })) disputes.push(d);
  assert.equal(disputes.length, 1);
  const dp = disputes[0];
  assert.equal(dp.status, 'needs_response');
  assert.equal(dp.balance_transactions[0].amount, -4200);
  assert.equal(dp.balance_transactions[0].fee, 1500); // the dispute fee, 15.00 usd
  assert.equal(dp.balance_transactions[0].net, -5700);
  const err = await expectError(stripe.refunds.create({ charge: charge.id }), errors.StripeInvalidRequestError);
  assert.equal(err.code, 'charge_disputed');
  const won = await stripe.disputes.update(dp.id, { evidence: { uncategorized_text: 'winning_evidence',
    customer_email_address: 'ada@example.test' }, metadata: { ticket: '9' } });
  assert.equal(won.status, 'won');
  assert.equal(won.evidence.customer_email_address, 'ada@example.test');
  assert.deepEqual(won.balance_transactions.map((b) => b.amount), [-4200, 4200]);
  assert.deepEqual(won.balance_transactions.map((b) => b.net), [-5700, 5700]);
  const again = await stripe.disputes.retrieve(dp.id);
  assert.equal(again.metadata.ticket, '9');
});

test('closing a dispute accepts it: lost', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 900, currency: 'eur', confirm: true,
    payment_method: 'pm_card_createDisputeProductNotReceived' });
  const [dp] = (await stripe.disputes.list({ payment_intent: pi.id })).data;
  assert.equal(dp.reason, 'product_not_received');
  const closed = await stripe.disputes.close(dp.id);
  assert.equal(closed.status, 'lost');
});

test('an early fraud warning is listed through stripe.radar and settled by a full refund', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 1300, currency: 'usd', confirm: true,
    payment_method: 'pm_card_createIssuerFraudRecord' });
  const { data } = await stripe.radar.earlyFraudWarnings.list({ payment_intent: pi.id });
  assert.equal(data.length, 1);
  assert.equal(data[0].actionable, true);
  assert.equal(data[0].charge, pi.latest_charge);
  await stripe.refunds.create({ payment_intent: pi.id });
  const w = await stripe.radar.earlyFraudWarnings.retrieve(data[0].id, { expand: ['charge'] });
  assert.equal(w.actionable, false);
  assert.equal(w.charge.refunded, true);
});
