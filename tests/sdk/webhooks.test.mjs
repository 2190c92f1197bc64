// Webhook endpoints through the official SDK, and a real delivery to a local
// http server that stripe.webhooks.constructEvent verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import Stripe from 'stripe';
import { stripe, stripe2, errors, expectError } from './lib.mjs';

test('webhook endpoints: create, retrieve, update, list, delete', async () => {
  const ep = await stripe.webhookEndpoints.create({
    url: 'https://example.test/hooks',
    enabled_events: ['charge.succeeded', 'charge.failed'],
    description: 'sdk test',
    metadata: { team: 'payments' },
  });
  assert.match(ep.id, /^we_/);
  assert.equal(ep.object, 'webhook_endpoint');
  assert.match(ep.secret, /^whsec_/);
  assert.equal(ep.status, 'enabled');
  assert.deepEqual(ep.enabled_events, ['charge.succeeded', 'charge.failed']);
  assert.deepEqual(ep.metadata, { team: 'payments' });

  const got = await stripe.webhookEndpoints.retrieve(ep.id);
  assert.equal(got.id, ep.id);
  assert.equal(got.secret, undefined, 'the secret is shown only on create');
  assert.equal(got.url, 'https://example.test/hooks');

  const up = await stripe.webhookEndpoints.update(ep.id, { disabled: true, enabled_events: ['*'], url: 'https://example.test/v2' });
  assert.equal(up.status, 'disabled');
  assert.deepEqual(up.enabled_events, ['*']);
  assert.equal(up.url, 'https://example.test/v2');
  const back = await stripe.webhookEndpoints.update(ep.id, { disabled: false });
  assert.equal(back.status, 'enabled');

  const list = await stripe.webhookEndpoints.list({ limit: 100 });
  assert.equal(list.object, 'list');
  assert.ok(list.data.some((e) => e.id === ep.id));
  assert.ok(list.data.every((e) => e.secret === undefined));
  if (stripe2) {
    await expectError(stripe2.webhookEndpoints.retrieve(ep.id), errors.StripeInvalidRequestError);
  }

  const del = await stripe.webhookEndpoints.del(ep.id);
  assert.deepEqual(del, { id: ep.id, object: 'webhook_endpoint', deleted: true });
  const gone = await expectError(stripe.webhookEndpoints.retrieve(ep.id), errors.StripeInvalidRequestError);
  assert.equal(gone.statusCode, 404);

  const bad = await expectError(stripe.webhookEndpoints.create({ url: 'ftp://example.test/', enabled_events: ['*'] }),
    errors.StripeInvalidRequestError);
  assert.equal(bad.param, 'url');
  const badType = await expectError(stripe.webhookEndpoints.create({ url: 'https://example.test/', enabled_events: ['nope.nothing'] }),
    errors.StripeInvalidRequestError);
  assert.equal(badType.param, 'enabled_events[0]');
});

test('a delivered event verifies with stripe.webhooks.constructEvent', async () => {
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  let ep;
  try {
    ep = await stripe.webhookEndpoints.create({ url: `http://127.0.0.1:${port}/hook`, enabled_events: ['payment_intent.succeeded'] });
    const pi = await stripe.paymentIntents.create({ amount: 4242, currency: 'usd', payment_method: 'pm_card_visa', confirm: true });
    assert.equal(pi.status, 'succeeded');

    const deadline = Date.now() + 10000;
    let hit;
    while (!hit && Date.now() < deadline) {
      hit = received.find((r) => JSON.parse(r.body.toString('utf8')).data.object.id === pi.id);
      if (!hit) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(hit, `no delivery for ${pi.id} within 10 s (${received.length} others)`);
    const header = hit.headers['stripe-signature'];
    assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
    assert.equal(hit.headers['user-agent'], 'Turnpike/1.0 (+webhooks)');

    const event = stripe.webhooks.constructEvent(hit.body, header, ep.secret);
    assert.equal(event.type, 'payment_intent.succeeded');
    assert.equal(event.data.object.id, pi.id);
    assert.equal(event.data.object.amount_received, 4242);
    const again = await stripe.webhooks.constructEventAsync(hit.body.toString('utf8'), header, ep.secret);
    assert.equal(again.id, event.id);
    const stored = await stripe.events.retrieve(event.id);
    assert.equal(stored.type, event.type, 'the delivered id is the stored event');

    assert.throws(() => stripe.webhooks.constructEvent(hit.body, header, 'whsec_not_the_secret'),
      Stripe.errors.StripeSignatureVerificationError);
    const tampered = Buffer.from(hit.body.toString('utf8').replace('4242', '4243'));
    assert.throws(() => stripe.webhooks.constructEvent(tampered, header, ep.secret),
      Stripe.errors.StripeSignatureVerificationError);
  } finally {
    if (ep) await stripe.webhookEndpoints.del(ep.id);
    await new Promise((resolve) => server.close(resolve));
  }
});
