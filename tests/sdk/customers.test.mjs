// Customers and card PaymentMethods: CRUD, attach/list/detach, fingerprints,
// and paying with a saved card.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, stripe2, errors, CARDS, card, tag, expectError } from './lib.mjs';

test('customer create, retrieve, update, list, delete, then retrieve is gone', async () => {
  const email = `${tag('c')}@example.test`;
  const cus = await stripe.customers.create({ email, name: 'Ada Lovelace', metadata: { tier: 'gold' } });
  assert.match(cus.id, /^cus_/);
  assert.equal(cus.object, 'customer');
  assert.equal(cus.email, email);
  assert.equal(cus.name, 'Ada Lovelace');
  assert.deepEqual(cus.metadata, { tier: 'gold' });
  assert.equal(typeof cus.created, 'number');

  const got = await stripe.customers.retrieve(cus.id);
  assert.equal(got.id, cus.id);
  assert.equal(got.email, email);

  const upd = await stripe.customers.update(cus.id, { name: 'Ada King', metadata: { tier: 'platinum', since: '1843' } });
  assert.equal(upd.name, 'Ada King');
  assert.equal(upd.email, email, 'untouched fields stay');
  assert.deepEqual(upd.metadata, { tier: 'platinum', since: '1843' });
  // the customer.updated event says what it was before (data.previous_attributes)
  const ev = (await stripe.events.list({ type: 'customer.updated', limit: 20 })).data
    .find((e) => e.data.object.id === cus.id);
  assert.ok(ev, 'customer.updated event');
  assert.deepEqual(ev.data.previous_attributes, { name: 'Ada Lovelace', metadata: { tier: 'gold', since: null } });
  assert.equal(ev.data.object.name, 'Ada King');

  const list = await stripe.customers.list({ limit: 100 });
  assert.equal(list.object, 'list');
  assert.ok(list.data.some((c) => c.id === cus.id), 'new customer is listed');

  const del = await stripe.customers.del(cus.id);
  assert.equal(del.id, cus.id);
  assert.equal(del.object, 'customer');
  assert.equal(del.deleted, true);

  // The contract answers 404 resource_missing; Stripe documents a stub with
  // deleted:true. Either way it must no longer read as a live customer.
  let after;
  try {
    after = await stripe.customers.retrieve(cus.id);
  } catch (err) {
    assert.ok(err instanceof errors.StripeInvalidRequestError, `got ${err.constructor.name}`);
    assert.equal(err.statusCode, 404);
    assert.equal(err.code, 'resource_missing');
    after = null;
  }
  if (after) assert.equal(after.deleted, true, 'deleted customer must read as deleted');
  const list2 = await stripe.customers.list({ limit: 100 });
  assert.ok(!list2.data.some((c) => c.id === cus.id), 'deleted customer is not listed');
});

test('a PaymentIntent may name a live customer, not a deleted or unknown one', async () => {
  const cus = await stripe.customers.create({ email: `${tag('live')}@example.test` });
  const pi = await stripe.paymentIntents.create({ amount: 500, currency: 'usd', customer: cus.id });
  assert.equal(pi.customer, cus.id);
  await stripe.customers.del(cus.id);
  for (const id of [cus.id, 'cus_doesnotexist000000']) {
    const err = await expectError(stripe.paymentIntents.create({ amount: 500, currency: 'usd', customer: id }),
      errors.StripeInvalidRequestError);
    assert.equal(err.statusCode, 404);
    assert.equal(err.code, 'resource_missing');
    assert.equal(err.param, 'customer');
    const upd = await expectError(stripe.paymentIntents.update(pi.id, { customer: id }),
      errors.StripeInvalidRequestError);
    assert.equal(upd.param, 'customer');
  }
});

test('a PaymentIntent may name an existing PaymentMethod, not an unknown or another merchant\'s', async () => {
  const pm = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  const pi = await stripe.paymentIntents.create({ amount: 700, currency: 'usd', payment_method: pm.id });
  assert.equal(pi.payment_method, pm.id);
  const ids = ['pm_doesnotexist000000'];
  if (stripe2) ids.push((await stripe2.paymentMethods.create({ type: 'card', card: card(CARDS.visa) })).id);
  for (const id of ids) {
    const err = await expectError(stripe.paymentIntents.create({ amount: 700, currency: 'usd', payment_method: id }),
      errors.StripeInvalidRequestError);
    assert.equal(err.statusCode, 404);
    assert.equal(err.code, 'resource_missing');
    assert.equal(err.param, 'payment_method');
    const upd = await expectError(stripe.paymentIntents.update(pi.id, { payment_method: id }),
      errors.StripeInvalidRequestError);
    assert.equal(upd.param, 'payment_method');
  }
});

test('retrieving an unknown customer is 404 resource_missing', async () => {
  const err = await expectError(stripe.customers.retrieve('cus_doesnotexist000000'), errors.StripeInvalidRequestError);
  assert.equal(err.statusCode, 404);
  assert.equal(err.code, 'resource_missing');
});

test('payment method created from a card attaches, lists by customer, and detaches', async () => {
  const cus = await stripe.customers.create({ email: `${tag('pm')}@example.test` });
  const pm = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.mastercard) });
  assert.match(pm.id, /^pm_/);
  assert.equal(pm.object, 'payment_method');
  assert.equal(pm.type, 'card');
  assert.equal(pm.card.brand, 'mastercard');
  assert.equal(pm.card.last4, '4444');
  assert.equal(pm.card.exp_month, 12);
  assert.equal(typeof pm.card.fingerprint, 'string');
  assert.equal(pm.customer, null);
  assert.ok(!JSON.stringify(pm).includes(CARDS.mastercard), 'no PAN in the payment method');
  assert.ok(!('cvc' in pm.card) && !('number' in pm.card), 'no number or cvc echoed');

  const att = await stripe.paymentMethods.attach(pm.id, { customer: cus.id });
  assert.equal(att.id, pm.id);
  assert.equal(att.customer, cus.id);

  const pm2 = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  await stripe.paymentMethods.attach(pm2.id, { customer: cus.id });

  const list = await stripe.paymentMethods.list({ customer: cus.id, type: 'card' });
  assert.equal(list.object, 'list');
  assert.deepEqual(new Set(list.data.map((p) => p.id)), new Set([pm.id, pm2.id]));
  assert.equal(list.data.length, 2);

  // one of them through the customer (customers.retrievePaymentMethod)
  const one = await stripe.customers.retrievePaymentMethod(cus.id, pm2.id);
  assert.equal(one.id, pm2.id);
  assert.equal(one.customer, cus.id);
  assert.equal(one.card.last4, '4242');
  const stray = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  const notHis = await expectError(stripe.customers.retrievePaymentMethod(cus.id, stray.id),
    errors.StripeInvalidRequestError);
  assert.equal(notHis.statusCode, 404);
  assert.equal(notHis.code, 'resource_missing');

  const det = await stripe.paymentMethods.detach(pm.id);
  assert.equal(det.id, pm.id);
  assert.equal(det.customer, null);
  const list2 = await stripe.paymentMethods.list({ customer: cus.id, type: 'card' });
  assert.deepEqual(list2.data.map((p) => p.id), [pm2.id]);
  assert.equal((await stripe.paymentMethods.retrieve(pm.id)).customer, null);
  // detached for good, as on Stripe: it pays no more and is not attached again
  const reuse = await expectError(stripe.paymentIntents.create({ amount: 500, currency: 'usd', confirm: true,
    payment_method: pm.id }), errors.StripeInvalidRequestError);
  assert.match(reuse.message, /detached from a Customer, and may not be used again/);
  assert.equal(reuse.param, 'payment_method');
  await expectError(stripe.paymentMethods.attach(pm.id, { customer: cus.id }), errors.StripeInvalidRequestError);
  await expectError(stripe.customers.create({ payment_method: pm.id }), errors.StripeInvalidRequestError);
});

test('card fingerprint is equal for the same number and differs for another number', async () => {
  const a = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  const b = await stripe.paymentMethods.create({ type: 'card', card: { ...card(CARDS.visa), exp_month: 3, cvc: '999' } });
  const c = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.mastercard) });
  assert.notEqual(a.id, b.id);
  assert.ok(a.card.fingerprint && a.card.fingerprint.length >= 8, `fingerprint ${a.card.fingerprint}`);
  assert.equal(a.card.fingerprint, b.card.fingerprint);
  assert.notEqual(a.card.fingerprint, c.card.fingerprint);
  assert.ok(!a.card.fingerprint.includes('4242424242'), 'fingerprint does not reveal the number');
});

test('paying with a saved card of a customer sets customer and payment_method on the intent', async () => {
  const cus = await stripe.customers.create({ name: 'Saved Card' });
  const pm = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  await stripe.paymentMethods.attach(pm.id, { customer: cus.id });
  const pi = await stripe.paymentIntents.create({
    amount: 4100, currency: 'usd', customer: cus.id, payment_method: pm.id, confirm: true,
  });
  assert.equal(pi.status, 'succeeded');
  assert.equal(pi.customer, cus.id);
  assert.equal(pi.payment_method, pm.id);
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.customer, cus.id);
  assert.equal(ch.payment_method, pm.id);
});

test('a payment method with an expired date is rejected', async () => {
  const err = await expectError(stripe.paymentMethods.create({
    type: 'card', card: { number: CARDS.visa, exp_month: 1, exp_year: 2001, cvc: '123' },
  }), errors.StripeError);
  assert.ok(err instanceof errors.StripeCardError || err instanceof errors.StripeInvalidRequestError,
    `got ${err.constructor.name}`);
  assert.ok(!JSON.stringify(err.raw).includes(CARDS.visa));
});

test('setup_future_usage with a customer saves the card to the customer, then an off-session payment uses it', async () => {
  const cus = await stripe.customers.create({ email: `${tag('sfu')}@example.com` });
  const first = await stripe.paymentIntents.create({
    amount: 1800, currency: 'usd', customer: cus.id, setup_future_usage: 'off_session',
    payment_method: 'pm_card_visa', confirm: true,
  });
  assert.equal(first.status, 'succeeded');
  assert.equal(first.setup_future_usage, 'off_session');
  const saved = await stripe.customers.listPaymentMethods(cus.id);
  assert.deepEqual(saved.data.map((pm) => pm.id), [first.payment_method]);
  assert.equal(saved.data[0].customer, cus.id);
  const attached = await stripe.events.list({ type: 'payment_method.attached', limit: 20 });
  assert.ok(attached.data.some((e) => e.data.object.id === first.payment_method && e.data.object.customer === cus.id));

  const later = await stripe.paymentIntents.create({
    amount: 900, currency: 'usd', customer: cus.id, payment_method: saved.data[0].id, off_session: true, confirm: true,
  });
  assert.equal(later.status, 'succeeded');

  // a declined card is not saved; without setup_future_usage nothing is saved
  await expectError(stripe.paymentIntents.create({
    amount: 500, currency: 'usd', customer: cus.id, setup_future_usage: 'on_session', confirm: true,
    payment_method_data: { type: 'card', card: card(CARDS.generic_decline) },
  }), errors.StripeCardError);
  await stripe.paymentIntents.create({
    amount: 700, currency: 'usd', customer: cus.id, payment_method: 'pm_card_mastercard', confirm: true,
  });
  const still = await stripe.customers.listPaymentMethods(cus.id);
  assert.deepEqual(still.data.map((pm) => pm.id), [first.payment_method]);
});

test('a customer created with a saved PaymentMethod that is also its default (a use-after-free the fuzz walk found under ThreadSanitizer)', async () => {
  const pm = await stripe.paymentMethods.create({ type: 'card', card: card(CARDS.visa) });
  const cus = await stripe.customers.create({
    payment_method: pm.id, invoice_settings: { default_payment_method: pm.id },
  });
  assert.equal(cus.invoice_settings.default_payment_method, pm.id);
  assert.equal((await stripe.paymentMethods.retrieve(pm.id)).customer, cus.id);
});

test('retrieving a test PaymentMethod (pm_card_visa) gives a new one of its card, kept', async () => {
  const a = await stripe.paymentMethods.retrieve('pm_card_mastercard');
  const b = await stripe.paymentMethods.retrieve('pm_card_mastercard');
  assert.match(a.id, /^pm_/);
  assert.notEqual(a.id, 'pm_card_mastercard');
  assert.notEqual(a.id, b.id);
  assert.equal(a.card.brand, 'mastercard');
  assert.equal(a.card.last4, '4444');
  assert.equal(a.card.fingerprint, b.card.fingerprint);
  assert.equal(a.customer, null);
  // committed: retrievable by its id, and it pays
  assert.deepEqual(await stripe.paymentMethods.retrieve(a.id), a);
  const pi = await stripe.paymentIntents.create({ amount: 700, currency: 'usd', confirm: true, payment_method: a.id });
  assert.equal(pi.status, 'succeeded');
  const gone = await expectError(stripe.paymentMethods.retrieve('pm_card_nosuchcard'), errors.StripeInvalidRequestError);
  assert.equal(gone.statusCode, 404);
});
