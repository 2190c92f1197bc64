// Search through the SDK: paymentIntents.search, charges.search and
// customers.search, with the SDK's own paging over next_page.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, tag } from './lib.mjs';

const TAG = tag('search');
const N = 7;
let created = []; // oldest first

before(async () => {
  for (let i = 0; i < N; i++) {
    created.push(await stripe.paymentIntents.create({
      amount: 500 + i, currency: 'usd', confirm: true, payment_method: 'pm_card_visa',
      metadata: { tag: TAG, seq: String(i) },
    }));
  }
});

test('paymentIntents.search finds the tagged intents, newest first, and pages with next_page', async () => {
  const q = `metadata['tag']:'${TAG}' AND status:'succeeded'`;
  const first = await stripe.paymentIntents.search({ query: q, limit: 3 });
  assert.equal(first.object, 'search_result');
  assert.equal(first.url, '/v1/payment_intents/search');
  assert.equal(first.has_more, true);
  assert.equal(typeof first.next_page, 'string');
  assert.deepEqual(first.data.map((p) => p.id), created.map((p) => p.id).reverse().slice(0, 3));
  const second = await stripe.paymentIntents.search({ query: q, limit: 3, page: first.next_page });
  assert.deepEqual(second.data.map((p) => p.id), created.map((p) => p.id).reverse().slice(3, 6));

  const all = [];
  for await (const pi of stripe.paymentIntents.search({ query: q, limit: 2 })) all.push(pi.metadata.seq);
  assert.deepEqual(all, ['6', '5', '4', '3', '2', '1', '0']);

  const counted = await stripe.paymentIntents.search({ query: q, limit: 1, expand: ['total_count'] });
  assert.equal(counted.total_count, N);
  assert.equal(counted.data.length, 1);

  const some = await stripe.paymentIntents.search({ query: `metadata['tag']:'${TAG}' amount>=504` })
    .autoPagingToArray({ limit: 100 });
  assert.deepEqual(some.map((p) => p.amount), [506, 505, 504]);
});

test('charges.search by payment_intent and last4; customers.search by email substring', async () => {
  const pi = created[2];
  const res = await stripe.charges.search({ query: `payment_intent:'${pi.id}' AND payment_method_details.card.last4:'4242'` });
  assert.equal(res.data.length, 1);
  assert.equal(res.data[0].id, pi.latest_charge);
  assert.equal(res.data[0].disputed, false);

  const email = `${TAG.toLowerCase()}@search.example`;
  const cus = await stripe.customers.create({ email, name: 'Search Person' });
  const found = await stripe.customers.search({ query: `email~'${TAG.toLowerCase()}' name:'search person'` });
  assert.deepEqual(found.data.map((c) => c.id), [cus.id]);
  const exact = await stripe.customers.search({ query: `email:'${email.toUpperCase()}'` });
  assert.deepEqual(exact.data.map((c) => c.id), [cus.id]);
});

test('a malformed query raises StripeInvalidRequestError on param query', async () => {
  await assert.rejects(
    stripe.paymentIntents.search({ query: 'amount:1 OR amount:2 AND amount:3' }),
    (e) => e.type === 'StripeInvalidRequestError' && e.param === 'query' && e.statusCode === 400,
  );
});
