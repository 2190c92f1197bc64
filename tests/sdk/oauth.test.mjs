// OAuth 2.0 with third-party clients: openid-client (client credentials grant,
// discovery through RFC 8414 metadata, introspection, revocation) and jose
// (the access token verified against the published JWKS, RFC 9068 typ), then
// the token used as the Stripe SDK's key.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import * as client from 'openid-client';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { BASE, client as stripeClient, errors } from './lib.mjs';

const BIN = process.env.TURNPIKE_BIN;
const DATA = process.env.TP_DATA;
const MERCHANT = process.env.TP_MERCHANT_ID;

function createClient(scopes) {
  const out = execFileSync(BIN, ['oauth-client', 'create', '--data', DATA, '--merchant', MERCHANT,
    '--scopes', scopes], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 });
  return JSON.parse(out.trim());
}

async function discover(cred, auth) {
  return client.discovery(new URL(BASE), cred.client_id, cred.client_secret, auth,
    { execute: [client.allowInsecureRequests], algorithm: 'oauth2' });
}

test('client credentials grant with openid-client, token verified with jose against the JWKS', async (t) => {
  if (!BIN || !DATA || !MERCHANT) return t.skip('needs TURNPIKE_BIN, TP_DATA and TP_MERCHANT_ID from run.mjs');
  const cred = createClient('payments:read payments:write');
  const config = await discover(cred);
  const meta = config.serverMetadata();
  assert.equal(meta.issuer, BASE);
  assert.equal(meta.token_endpoint, `${BASE}/oauth/token`);

  const tokens = await client.clientCredentialsGrant(config, { scope: 'payments:read payments:write' });
  assert.equal(tokens.token_type.toLowerCase(), 'bearer');
  assert.ok(tokens.expiresIn() > 0);

  const jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(tokens.access_token, jwks, {
    issuer: BASE, audience: 'turnpike', typ: 'at+jwt', algorithms: ['ES256'],
  });
  assert.equal(protectedHeader.alg, 'ES256');
  assert.equal(payload.client_id, cred.client_id);
  assert.equal(payload.sub, cred.client_id);
  assert.equal(payload.scope, 'payments:read payments:write');
  assert.equal(payload.merchant, MERCHANT);
  assert.ok(payload.jti && payload.iat && payload.exp > payload.iat);

  // The token works where an API key does, through the Stripe SDK.
  const s = stripeClient(tokens.access_token);
  const pi = await s.paymentIntents.create({ amount: 2500, currency: 'usd', confirm: true,
    payment_method: 'pm_card_visa' });
  assert.equal(pi.status, 'succeeded');
  const list = await s.paymentIntents.list({ limit: 3 });
  assert.ok(list.data.some((p) => p.id === pi.id));
  // ... but not beyond its scopes.
  await assert.rejects(s.refunds.create({ payment_intent: pi.id }), (err) => {
    assert.ok(err instanceof errors.StripePermissionError, err.type);
    assert.equal(err.statusCode, 403);
    assert.match(err.message, /refunds:write/);
    return true;
  });

  // Introspection and revocation through openid-client.
  const info = await client.tokenIntrospection(config, tokens.access_token);
  assert.equal(info.active, true);
  assert.equal(info.client_id, cred.client_id);
  await client.tokenRevocation(config, tokens.access_token);
  const after = await client.tokenIntrospection(config, tokens.access_token);
  assert.equal(after.active, false);
  await assert.rejects(s.paymentIntents.list({ limit: 1 }), (err) => err.statusCode === 401);
});

test('client_secret_basic, narrower scope, and RFC 6749 errors seen by openid-client', async (t) => {
  if (!BIN || !DATA || !MERCHANT) return t.skip('needs TURNPIKE_BIN, TP_DATA and TP_MERCHANT_ID from run.mjs');
  const cred = createClient('payments:read refunds:write');
  const config = await discover(cred, client.ClientSecretBasic(cred.client_secret));
  const tokens = await client.clientCredentialsGrant(config, { scope: 'payments:read' });
  assert.equal(tokens.scope, 'payments:read');
  const header = decodeProtectedHeader(tokens.access_token);
  assert.equal(header.typ, 'at+jwt');

  // client_secret_post with a wrong secret: 401 invalid_client, no challenge.
  const wrongPost = await discover({ client_id: cred.client_id, client_secret: 'ocs_not_the_secret' });
  await assert.rejects(client.clientCredentialsGrant(wrongPost), (err) => {
    assert.equal(err.error, 'invalid_client');
    return true;
  });
  await assert.rejects(client.clientCredentialsGrant(config, { scope: 'admin' }), (err) => {
    assert.equal(err.error, 'invalid_scope');
    return true;
  });
  const wrong = await discover({ client_id: cred.client_id, client_secret: 'ocs_not_the_secret' },
    client.ClientSecretBasic('ocs_not_the_secret'));
  await assert.rejects(client.clientCredentialsGrant(wrong), (err) => {
    // RFC 6749 §5.2: 401 with a Basic challenge when Basic auth failed;
    // openid-client reports the challenge.
    assert.equal(err.status, 401);
    assert.equal(err.cause[0].scheme, 'basic');
    return true;
  });
});
