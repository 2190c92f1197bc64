// List endpoints: cursor pagination, the SDK's auto-pagination, created
// filters and expand.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, tag } from './lib.mjs';

const N = 7;
const TAG = tag('list');
let customer;
let created = []; // oldest first

before(async () => {
  // A customer of our own scopes the list to this test's intents, since
  // other files create intents for the same merchant.
  customer = await stripe.customers.create({ description: TAG });
  for (let i = 0; i < N; i++) {
    created.push(await stripe.paymentIntents.create({
      amount: 100 + i, currency: 'usd', customer: customer.id, metadata: { tag: TAG, seq: String(i) },
    }));
  }
});

test('list with limit 3 pages newest first with correct has_more and no duplicates', async () => {
  const newestFirst = created.map((p) => p.id).reverse();
  const p1 = await stripe.paymentIntents.list({ customer: customer.id, limit: 3 });
  assert.equal(p1.object, 'list');
  assert.equal(typeof p1.url, 'string');
  assert.equal(p1.url, '/v1/payment_intents');
  assert.deepEqual(p1.data.map((p) => p.id), newestFirst.slice(0, 3));
  assert.equal(p1.has_more, true);

  const p2 = await stripe.paymentIntents.list({ customer: customer.id, limit: 3, starting_after: p1.data[2].id });
  assert.deepEqual(p2.data.map((p) => p.id), newestFirst.slice(3, 6));
  assert.equal(p2.has_more, true);

  const p3 = await stripe.paymentIntents.list({ customer: customer.id, limit: 3, starting_after: p2.data[2].id });
  assert.deepEqual(p3.data.map((p) => p.id), newestFirst.slice(6));
  assert.equal(p3.has_more, false);

  // ending_before walks back towards the newest.
  const back = await stripe.paymentIntents.list({ customer: customer.id, limit: 3, ending_before: p3.data[0].id });
  assert.deepEqual(back.data.map((p) => p.id), newestFirst.slice(3, 6));
  assert.equal(back.has_more, true);
});

test('auto-pagination with for await yields every intent once, newest first', async () => {
  const seen = [];
  for await (const pi of stripe.paymentIntents.list({ customer: customer.id, limit: 3 })) {
    seen.push(pi.id);
    assert.equal(pi.metadata.tag, TAG);
  }
  assert.deepEqual(seen, created.map((p) => p.id).reverse());
  assert.equal(new Set(seen).size, N);
});

test('autoPagingToArray on the metadata-tagged intents returns all seven in order', async () => {
  const all = await stripe.paymentIntents.list({ customer: customer.id, limit: 3 }).autoPagingToArray({ limit: 100 });
  assert.equal(all.length, N);
  assert.deepEqual(all.map((p) => p.metadata.seq), ['6', '5', '4', '3', '2', '1', '0']);
  for (let i = 1; i < all.length; i++) assert.ok(all[i - 1].created >= all[i].created, 'created is non-increasing');
});

test('unfiltered list with limit 3 returns three and has_more', async () => {
  const page = await stripe.paymentIntents.list({ limit: 3 });
  assert.equal(page.data.length, 3);
  assert.equal(page.has_more, true);
  assert.equal(page.data[0].id, created[N - 1].id, 'the newest intent of the merchant comes first');
});

test('created[gte] and created[lte] filter by creation time', async () => {
  const minC = Math.min(...created.map((p) => p.created));
  const maxC = Math.max(...created.map((p) => p.created));
  const inRange = await stripe.paymentIntents.list({ customer: customer.id, limit: 100, created: { gte: minC } });
  assert.equal(inRange.data.length, N);
  const future = await stripe.paymentIntents.list({ customer: customer.id, limit: 100, created: { gte: maxC + 1 } });
  assert.equal(future.data.length, 0);
  const past = await stripe.paymentIntents.list({ customer: customer.id, limit: 100, created: { lte: minC - 1 } });
  assert.equal(past.data.length, 0);
  const upToMax = await stripe.paymentIntents.list({ customer: customer.id, limit: 100, created: { gte: minC, lte: maxC } });
  assert.equal(upToMax.data.length, N);
  // Nothing of this merchant is created an hour from now.
  const now = Math.floor(Date.now() / 1000);
  const all = await stripe.paymentIntents.list({ limit: 100, created: { gte: now + 3600 } });
  assert.equal(all.data.length, 0);
});

test('expand latest_charge and customer returns objects instead of ids', async () => {
  const cus = await stripe.customers.create({ name: 'Expand Me' });
  const pi = await stripe.paymentIntents.create({
    amount: 1300, currency: 'usd', customer: cus.id, payment_method: 'pm_card_visa', confirm: true,
  });
  assert.equal(typeof pi.latest_charge, 'string');
  assert.equal(pi.customer, cus.id);
  const ex = await stripe.paymentIntents.retrieve(pi.id, { expand: ['latest_charge', 'customer'] });
  assert.equal(typeof ex.latest_charge, 'object');
  assert.equal(ex.latest_charge.object, 'charge');
  assert.equal(ex.latest_charge.id, pi.latest_charge);
  assert.equal(ex.latest_charge.amount, 1300);
  assert.equal(ex.customer.object, 'customer');
  assert.equal(ex.customer.id, cus.id);
  assert.equal(ex.customer.name, 'Expand Me');
});

test('charges list includes the charge of a payment', async () => {
  const pi = await stripe.paymentIntents.create({ amount: 1400, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
  const list = await stripe.charges.list({ limit: 10 });
  assert.equal(list.object, 'list');
  assert.equal(list.data[0].id, pi.latest_charge, 'newest charge first');
});

test('customers list pages with limit and starting_after without duplicates', async () => {
  const mine = [];
  const t = tag('cl');
  for (let i = 0; i < 4; i++) mine.push((await stripe.customers.create({ description: t })).id);
  const all = await stripe.customers.list({ limit: 2 }).autoPagingToArray({ limit: 1000 });
  const ids = all.map((c) => c.id);
  assert.equal(new Set(ids).size, ids.length, 'no duplicates across pages');
  const order = mine.map((id) => ids.indexOf(id));
  assert.ok(order.every((i) => i >= 0), 'all new customers listed');
  assert.deepEqual(order, [...order].sort((a, b) => b - a), 'newest first');
});
