// 3-D Secure: a challenge card stops in requires_action with a redirect URL;
// the challenge page is walked with plain fetch() like a browser would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stripe, client, BASE, CARDS, PUBLISHABLE_KEY, card, cardData, submitChallenge, parseChallengeForms } from './lib.mjs';

const RETURN_URL = 'https://merchant.example/checkout/return?cart=9';

async function challenged(number, extra = {}) {
  const pi = await stripe.paymentIntents.create({
    amount: 6400, currency: 'usd', confirm: true, payment_method_data: cardData(number),
    return_url: RETURN_URL, ...extra,
  });
  assert.equal(pi.status, 'requires_action');
  assert.equal(pi.next_action.type, 'redirect_to_url');
  const url = pi.next_action.redirect_to_url.url;
  assert.ok(url.startsWith(`${BASE}/`), `challenge url ${url} is absolute on the daemon`);
  return pi;
}

function checkRedirect(res, pi, status) {
  assert.equal(res.status, 303);
  const loc = res.headers.get('location');
  assert.ok(loc, 'Location header');
  const u = new URL(loc);
  const ret = new URL(RETURN_URL);
  assert.equal(u.origin + u.pathname, ret.origin + ret.pathname);
  assert.equal(u.searchParams.get('cart'), '9', 'return_url query kept');
  assert.equal(u.searchParams.get('payment_intent'), pi.id);
  assert.equal(u.searchParams.get('payment_intent_client_secret'), pi.client_secret);
  assert.equal(u.searchParams.get('redirect_status'), status);
}

test('3DS card 4000002760003184 requires_action with redirect_to_url and approve makes it succeeded', async () => {
  const pi = await challenged(CARDS.threeds_required);
  assert.equal(pi.next_action.redirect_to_url.return_url, RETURN_URL);
  assert.equal(pi.latest_charge, null);
  assert.equal(pi.amount_received, 0);

  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'approve');
  checkRedirect(res, pi, 'succeeded');

  const done = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(done.status, 'succeeded');
  assert.equal(done.amount_received, 6400);
  assert.equal(done.next_action, null);
  const ch = await stripe.charges.retrieve(done.latest_charge);
  assert.equal(ch.captured, true);
  assert.equal(ch.amount, 6400);
});

test('3DS2 card 4000000000003220 requires_action and approve succeeds', async () => {
  const pi = await challenged(CARDS.threeds2_required);
  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'approve');
  checkRedirect(res, pi, 'succeeded');
  assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'succeeded');
});

test('3DS fail path returns redirect_status=failed and requires_payment_method with authentication failure', async () => {
  const pi = await challenged(CARDS.threeds_required);
  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'fail');
  checkRedirect(res, pi, 'failed');
  const after = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(after.status, 'requires_payment_method');
  assert.equal(after.amount_received, 0);
  assert.ok(after.last_payment_error, 'last_payment_error set');
  assert.equal(after.last_payment_error.code, 'payment_intent_authentication_failure');
});

test('3DS approve on a manual-capture intent leaves it in requires_capture', async () => {
  const pi = await challenged(CARDS.threeds_required, { capture_method: 'manual' });
  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'approve');
  checkRedirect(res, pi, 'succeeded');
  const after = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(after.status, 'requires_capture');
  assert.equal(after.amount_capturable, 6400);
  const cap = await stripe.paymentIntents.capture(pi.id);
  assert.equal(cap.status, 'succeeded');
});

test('3DS challenge with a wrong token is refused and the intent stays requires_action', async () => {
  const pi = await challenged(CARDS.threeds_required);
  const url = pi.next_action.redirect_to_url.url;
  const html = await (await fetch(url)).text();
  const form = parseChallengeForms(html, url).find((f) => f.result === 'approve');
  assert.ok(form);
  const res = await fetch(form.action, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: 'forged' + form.token.slice(6), result: 'approve' }).toString(),
    redirect: 'manual',
  });
  assert.ok(res.status >= 400 && res.status < 500, `forged token got HTTP ${res.status}`);
  assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'requires_action');
});

test('3DS challenge cannot be replayed after it was completed', async () => {
  const pi = await challenged(CARDS.threeds_required);
  const url = pi.next_action.redirect_to_url.url;
  const res = await submitChallenge(url, 'approve');
  checkRedirect(res, pi, 'succeeded');
  // A second submission (fail this time) must not move a succeeded payment.
  const html = await (await fetch(url)).text().catch(() => '');
  const forms = parseChallengeForms(html, url);
  const token = new URL(url).searchParams.get('token') || (forms[0] && forms[0].token) || '';
  const again = await fetch(new URL(url).origin + new URL(url).pathname, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token, result: 'fail' }).toString(),
    redirect: 'manual',
  });
  await again.arrayBuffer();
  assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'succeeded');
});

test('3DS without return_url approves to a 200 HTML page', async () => {
  const pi = await stripe.paymentIntents.create({
    amount: 3300, currency: 'usd', confirm: true, payment_method_data: cardData(CARDS.threeds_required),
  });
  assert.equal(pi.status, 'requires_action');
  assert.equal(pi.next_action.type, 'redirect_to_url');
  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'approve');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') || '', /text\/html/i);
  await res.text();
  assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, 'succeeded');
});

test('off_session confirmation of a 3DS card throws StripeCardError authentication_required with the PaymentIntent', async () => {
  await assert.rejects(
    stripe.paymentIntents.create({
      amount: 6500, currency: 'usd', confirm: true, off_session: true,
      payment_method_data: cardData(CARDS.threeds_required),
    }),
    (err) => {
      assert.equal(err.type, 'StripeCardError');
      assert.equal(err.statusCode, 402);
      assert.equal(err.code, 'authentication_required');
      assert.equal(err.decline_code, 'authentication_required');
      assert.equal(err.payment_intent.status, 'requires_payment_method');
      assert.equal(err.payment_intent.last_payment_error.code, 'authentication_required');
      assert.ok(err.payment_method.id.startsWith('pm_'));
      return true;
    });
});

test('request_three_d_secure=any challenges a card that does not ask, and error_on_requires_action fails it instead', async () => {
  const pi = await challenged(CARDS.mastercard, {
    payment_method_options: { card: { request_three_d_secure: 'any' } },
  });
  assert.equal(pi.payment_method_options.card.request_three_d_secure, 'any');
  const res = await submitChallenge(pi.next_action.redirect_to_url.url, 'approve');
  checkRedirect(res, pi, 'succeeded');
  await assert.rejects(
    stripe.paymentIntents.create({
      amount: 6600, currency: 'usd', confirm: true, error_on_requires_action: true,
      payment_method_data: cardData(CARDS.mastercard),
      payment_method_options: { card: { request_three_d_secure: 'challenge' } },
    }),
    (err) => err.type === 'StripeCardError' && err.code === 'authentication_required');
  // Stripe's 4242: 3-D Secure supported, the card not enrolled: asked for, it pays without a challenge
  const visa = await stripe.paymentIntents.create({
    amount: 6600, currency: 'usd', confirm: true, payment_method: 'pm_card_visa', return_url: 'https://shop.example/r',
    payment_method_options: { card: { request_three_d_secure: 'any' } },
  });
  assert.equal(visa.status, 'succeeded');
});

// The browser's half of the flow, as Stripe.js does it: the server creates
// the PaymentIntent and hands the client_secret over; the page, holding only
// the publishable key, confirms it, follows the challenge and reads the
// outcome back with the secret.
test('publishable key with client_secret confirms through 3DS and retrieves the client view', async () => {
  assert.ok(PUBLISHABLE_KEY, 'run.mjs hands over the publishable key');
  const browser = client(PUBLISHABLE_KEY);
  const pi = await stripe.paymentIntents.create({ amount: 4100, currency: 'usd', metadata: { cart: '9' } });
  const secret = pi.client_secret;
  const err = await browser.paymentIntents.retrieve(pi.id).catch((e) => e);
  assert.equal(err.type, 'StripeInvalidRequestError');
  assert.equal(err.param, 'client_secret');

  const acted = await browser.paymentIntents.confirm(pi.id, {
    client_secret: secret, payment_method_data: cardData(CARDS.threeds_required), return_url: RETURN_URL,
  });
  assert.equal(acted.status, 'requires_action');
  assert.equal(acted.metadata, undefined, 'metadata is the merchant\'s');
  const res = await submitChallenge(acted.next_action.redirect_to_url.url, 'approve');
  checkRedirect(res, pi, 'succeeded');

  const seen = await browser.paymentIntents.retrieve(pi.id, { client_secret: secret });
  assert.equal(seen.status, 'succeeded');
  assert.equal(seen.amount, 4100);
  assert.equal(seen.latest_charge, undefined);
  const full = await stripe.paymentIntents.retrieve(pi.id);
  assert.equal(full.amount_received, 4100);
  assert.deepEqual(full.metadata, { cart: '9' });

  // the publishable key reaches nothing else
  const denied = await browser.paymentIntents.capture(pi.id).catch((e) => e);
  assert.equal(denied.type, 'StripePermissionError');
  assert.equal(denied.code, 'secret_key_required');
});

// Stripe.js's other half: the page tokenises the card with the publishable
// key (the number never reaches the merchant's server), the server charges
// the pm_ id with its secret key.
test('publishable key creates a PaymentMethod that the secret key charges', async () => {
  assert.ok(PUBLISHABLE_KEY, 'run.mjs hands over the publishable key');
  const browser = client(PUBLISHABLE_KEY);
  const pm = await browser.paymentMethods.create({
    type: 'card', card: card(CARDS.mastercard), billing_details: { email: 'ada@example.test' },
  });
  assert.match(pm.id, /^pm_/);
  assert.equal(pm.card.brand, 'mastercard');
  assert.equal(pm.card.last4, '4444');
  assert.equal(pm.billing_details.email, 'ada@example.test');
  assert.ok(!JSON.stringify(pm).includes(CARDS.mastercard), 'no card number in the reply');
  const denied = await browser.paymentMethods.retrieve(pm.id).catch((e) => e);
  assert.equal(denied.type, 'StripePermissionError');
  assert.equal(denied.code, 'secret_key_required');

  const pi = await stripe.paymentIntents.create({ amount: 1250, currency: 'eur', payment_method: pm.id, confirm: true });
  assert.equal(pi.status, 'succeeded');
  const ch = await stripe.charges.retrieve(pi.latest_charge);
  assert.equal(ch.payment_method, pm.id);
  assert.equal(ch.payment_method_details.card.last4, '4444');
});
