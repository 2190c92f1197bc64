// Client-side card encryption: the card is encrypted with the npm `jose`
// package against the JWK set of GET /v1/turnpike/encryption_key and sent as
// payment_method_data[card][encrypted]; Turnpike decrypts it in the vault path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CompactEncrypt, importJWK } from 'jose';
import { stripe, BASE, SECRET_KEY, PUBLISHABLE_KEY, CARDS, EXP_YEAR } from './lib.mjs';

async function jwks(key) {
  const res = await fetch(`${BASE}/v1/turnpike/encryption_key`, { headers: { Authorization: `Bearer ${key}` } });
  assert.equal(res.status, 200);
  return res.json();
}

async function encrypt(alg, card, { kid } = {}) {
  const { keys } = await jwks(SECRET_KEY);
  const jwk = keys.find((k) => k.alg === alg);
  assert.ok(jwk, `a ${alg} key is published`);
  const pub = await importJWK(jwk, alg);
  return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(card)))
    .setProtectedHeader({ alg, enc: 'A256GCM', kid: kid ?? jwk.kid })
    .encrypt(pub);
}

const plain = (number) => ({ number, exp_month: 12, exp_year: EXP_YEAR, cvc: '123' });

async function form(path, params, key = SECRET_KEY) {
  const res = await fetch(`${BASE}${path}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params).toString(),
  });
  return { status: res.status, body: await res.json() };
}

test('the encryption key is a JWK set with RSA-OAEP-256 and ECDH-ES P-256 keys, also for pk_ keys', async () => {
  const { keys } = await jwks(SECRET_KEY);
  const rsa = keys.find((k) => k.kty === 'RSA');
  const ec = keys.find((k) => k.kty === 'EC');
  assert.equal(rsa.alg, 'RSA-OAEP-256');
  assert.equal(rsa.use, 'enc');
  assert.ok(Buffer.from(rsa.n, 'base64url').length >= 256, 'RSA modulus of 2048 bits or more');
  assert.equal(ec.alg, 'ECDH-ES');
  assert.equal(ec.crv, 'P-256');
  for (const k of keys) assert.equal(k.d, undefined, 'no private part');
  if (PUBLISHABLE_KEY) assert.deepEqual((await jwks(PUBLISHABLE_KEY)).keys, keys);
  const anon = await fetch(`${BASE}/v1/turnpike/encryption_key`);
  assert.equal(anon.status, 401);
});

for (const alg of ['RSA-OAEP-256', 'ECDH-ES']) {
  test(`a payment confirmed with a ${alg} encrypted card succeeds and shows last4`, async () => {
    const jwe = await encrypt(alg, plain(CARDS.visa));
    const r = await form('/v1/payment_intents', {
      amount: '1999', currency: 'usd', confirm: 'true',
      'payment_method_data[type]': 'card', 'payment_method_data[card][encrypted]': jwe,
      'expand[]': 'latest_charge',
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.status, 'succeeded');
    const ch = r.body.latest_charge;
    assert.equal(ch.payment_method_details.card.last4, '4242');
    const pm = await stripe.paymentMethods.retrieve(r.body.payment_method);
    assert.equal(pm.card.last4, '4242');
    assert.equal(pm.card.exp_year, EXP_YEAR);
  });
}

test('POST /v1/payment_methods takes card[encrypted]; a declined encrypted card is declined', async () => {
  const jwe = await encrypt('ECDH-ES', plain(CARDS.mastercard));
  const r = await form('/v1/payment_methods', { type: 'card', 'card[encrypted]': jwe });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.card.last4, '4444');
  assert.equal(r.body.card.brand, 'mastercard');
  const pi = await stripe.paymentIntents.create({ amount: 700, currency: 'eur', confirm: true, payment_method: r.body.id });
  assert.equal(pi.status, 'succeeded');
  const d = await form('/v1/payment_intents', {
    amount: '500', currency: 'usd', confirm: 'true', 'payment_method_data[type]': 'card',
    'payment_method_data[card][encrypted]': await encrypt('RSA-OAEP-256', plain(CARDS.generic_decline)),
  });
  assert.equal(d.status, 402);
  assert.equal(d.body.error.decline_code, 'generic_decline');
  // clear card fields beside the encrypted ones are refused, not dropped unseen
  for (const [k, v] of [['card[number]', CARDS.visa], ['card[cvc]', '999'], ['card[exp_month]', '1']]) {
    const both = await form('/v1/payment_methods', { type: 'card', 'card[encrypted]': jwe, [k]: v });
    assert.equal(both.status, 400, JSON.stringify(both.body));
    assert.equal(both.body.error.code, 'parameters_exclusive');
    assert.equal(both.body.error.param, 'card[encrypted]');
  }
});

test('a tampered, wrongly keyed or malformed JWE is refused with 400 and no echo', async () => {
  const jwe = await encrypt('RSA-OAEP-256', plain(CARDS.visa));
  const parts = jwe.split('.');
  const ct = Buffer.from(parts[3], 'base64url');
  ct[0] ^= 1;
  const tampered = [parts[0], parts[1], parts[2], ct.toString('base64url'), parts[4]].join('.');
  const cases = [
    tampered,
    await encrypt('ECDH-ES', plain(CARDS.visa), { kid: 'ec-not-ours' }),
    'not.a.jwe',
    jwe.slice(0, -3),
  ];
  for (const bad of cases) {
    const r = await form('/v1/payment_methods', { type: 'card', 'card[encrypted]': bad });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.type, 'invalid_request_error');
    assert.equal(r.body.error.param, 'card[encrypted]');
    assert.ok(!JSON.stringify(r.body).includes(bad.slice(0, 20)), 'the error does not echo the JWE');
    assert.ok(!JSON.stringify(r.body).includes('4242'), 'no card digits');
  }
  // A JWE of something that is not a card.
  const { keys } = await jwks(SECRET_KEY);
  const jwk = keys.find((k) => k.alg === 'ECDH-ES');
  const junk = await new CompactEncrypt(new TextEncoder().encode('[1,2]'))
    .setProtectedHeader({ alg: 'ECDH-ES', enc: 'A256GCM', kid: jwk.kid })
    .encrypt(await importJWK(jwk, 'ECDH-ES'));
  const r = await form('/v1/payment_methods', { type: 'card', 'card[encrypted]': junk });
  assert.equal(r.status, 400);
});
