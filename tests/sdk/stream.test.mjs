// The WebSocket event stream (GET /v1/turnpike/stream) with the npm `ws`
// client: live delivery in commit order and its latency, filters, resume
// from a last event id, browser tokens, a slow client closed with 1008,
// and refusals before the upgrade.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { stripe, PORT, SECRET_KEY, SECRET_KEY_2, cardData, CARDS, tag } from './lib.mjs';

const URL_ = `ws://127.0.0.1:${PORT}/v1/turnpike/stream`;

// An open, subscribed connection that collects every message it gets.
async function connect({ key = SECRET_KEY, query = '', sub = { type: 'subscribe', events: ['*'] } } = {}) {
  const ws = new WebSocket(URL_ + query, key ? { headers: { Authorization: `Bearer ${key}` } } : {});
  const msgs = [];
  const waiters = [];
  ws.on('message', (d) => {
    const m = JSON.parse(d.toString());
    m.at = performance.now();
    msgs.push(m);
    for (const w of waiters.splice(0)) w();
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
  // Resolves with the first message (after index from) matching pred.
  ws.waitFor = async (pred, { from = 0, timeoutMs = 5000 } = {}) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = msgs.slice(from).find(pred);
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching message within ${timeoutMs} ms; got ${JSON.stringify(msgs.map((m) => m.type + ':' + (m.event ? m.event.type : '')))}`);
      await new Promise((r) => { waiters.push(r); setTimeout(r, Math.min(left, 100)); });
    }
  };
  ws.msgs = msgs;
  if (sub) {
    ws.send(JSON.stringify(sub));
    await ws.waitFor((m) => m.type === 'subscribed' || m.type === 'error');
  }
  return ws;
}

// The HTTP status the server answers an upgrade attempt with (101 = accepted).
function upgradeStatus(url, headers = {}) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers });
    ws.on('open', () => { ws.terminate(); resolve(101); });
    ws.on('unexpected-response', (req, res) => { resolve(res.statusCode); req.destroy(); });
    ws.on('error', () => {});
  });
}

const events = (ws, objId) => ws.msgs.filter((m) => m.type === 'event' && (!objId || m.event.data.object.id === objId));

test('a payment streams payment_intent.created then .succeeded within milliseconds of its commit', async () => {
  const ws = await connect({ sub: { type: 'subscribe', events: ['payment_intent.*'] } });
  assert.equal(ws.msgs[0].type, 'subscribed');
  const t0 = performance.now();
  const pi = await stripe.paymentIntents.create({ amount: 1234, currency: 'usd', confirm: true, payment_method: 'pm_card_visa' });
  const tReply = performance.now();
  const ok = await ws.waitFor((m) => m.type === 'event' && m.event.type === 'payment_intent.succeeded' && m.event.data.object.id === pi.id);
  const mine = events(ws, pi.id);
  assert.deepEqual(mine.map((m) => m.event.type), ['payment_intent.created', 'payment_intent.succeeded']);
  assert.match(ok.event.id, /^evt_/);
  assert.equal(ok.event.object, 'event');
  assert.equal(ok.event.data.object.amount_received, 1234);
  // charge.* was not subscribed
  assert.ok(!ws.msgs.some((m) => m.type === 'event' && m.event.type.startsWith('charge.')));
  const sinceSend = ok.at - t0;
  const sinceReply = ok.at - tReply;
  console.log(`stream latency: payment_intent.succeeded ${sinceSend.toFixed(1)} ms after the request was sent, ` +
    `${sinceReply.toFixed(1)} ms relative to the HTTP reply (negative: before it)`);
  assert.ok(sinceReply < 500, `event arrived ${sinceReply} ms after the reply`);
  ws.close(1000);
  assert.equal((await ws.closed).code, 1000);
});

test('object and type filters deliver only what was asked for, and only the merchant\'s own events', async () => {
  const pi1 = await stripe.paymentIntents.create({ amount: 500, currency: 'usd' });
  const byObj = await connect({ sub: { type: 'subscribe', events: ['*'], objects: [pi1.id] } });
  const exact = await connect({ sub: { type: 'subscribe', events: ['payment_intent.canceled'] } });
  const other = SECRET_KEY_2 ? await connect({ key: SECRET_KEY_2 }) : null;
  const pi2 = await stripe.paymentIntents.create({ amount: 600, currency: 'usd' });
  await stripe.paymentIntents.cancel(pi2.id);
  await stripe.paymentIntents.cancel(pi1.id);
  await byObj.waitFor((m) => m.type === 'event' && m.event.type === 'payment_intent.canceled');
  await exact.waitFor((m) => m.type === 'event' && m.event.data.object.id === pi1.id);
  assert.deepEqual(events(byObj).map((m) => [m.event.type, m.event.data.object.id]), [['payment_intent.canceled', pi1.id]]);
  assert.deepEqual(events(exact).map((m) => m.event.data.object.id), [pi2.id, pi1.id]);
  if (other) {
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(!events(other).some((m) => [pi1.id, pi2.id].includes(m.event.data.object.id)), 'other merchant saw our events');
    other.close();
  }
  byObj.close();
  exact.close();
});

test('resume with last_event_id replays the missed events once, then continues live', async () => {
  const ws = await connect({ sub: { type: 'subscribe', events: ['payment_intent.*'] } });
  const a = await stripe.paymentIntents.create({ amount: 700, currency: 'usd' });
  const first = await ws.waitFor((m) => m.type === 'event' && m.event.data.object.id === a.id);
  ws.close();
  await ws.closed;
  // Missed while disconnected:
  const b = await stripe.paymentIntents.create({ amount: 800, currency: 'usd', confirm: true, payment_method: 'pm_card_visa' });
  const c = await stripe.paymentIntents.create({ amount: 900, currency: 'usd' });
  const ws2 = await connect({ sub: { type: 'subscribe', events: ['payment_intent.*'], last_event_id: first.event.id } });
  await ws2.waitFor((m) => m.type === 'event' && m.event.data.object.id === c.id);
  const live = await stripe.paymentIntents.create({ amount: 1000, currency: 'usd' });
  await ws2.waitFor((m) => m.type === 'event' && m.event.data.object.id === live.id);
  const got = events(ws2).map((m) => m.event);
  const ids = got.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, 'no event delivered twice');
  assert.ok(!ids.includes(first.event.id), 'the last seen event is not replayed');
  const mineTypes = got.filter((e) => [b.id, c.id, live.id].includes(e.data.object.id)).map((e) => `${e.data.object.id}:${e.type}`);
  assert.deepEqual(mineTypes, [`${b.id}:payment_intent.created`, `${b.id}:payment_intent.succeeded`,
    `${c.id}:payment_intent.created`, `${live.id}:payment_intent.created`]);
  ws2.close();
});

test('under concurrent payments events arrive in id order, and a resume from any of them replays exactly the rest', async () => {
  // Ids are given in commit order by the writer, so the stream (commit
  // order) sees them increasing, and "everything after id X" is exactly
  // what came after X, even for events built before X but committed after.
  const ws = await connect({ sub: { type: 'subscribe', events: ['*'] } });
  const from = ws.msgs.length;
  const pis = await Promise.all(Array.from({ length: 48 }, (_, i) => stripe.paymentIntents.create(
    { amount: 2000 + i, currency: 'usd', confirm: true, payment_method: 'pm_card_visa' })));
  for (const pi of pis) {
    await ws.waitFor((m) => m.type === 'event' && m.event.type === 'payment_intent.succeeded' && m.event.data.object.id === pi.id, { timeoutMs: 10000 });
  }
  const live = ws.msgs.slice(from).filter((m) => m.type === 'event').map((m) => m.event.id);
  assert.ok(live.length >= 48 * 3, `only ${live.length} events`); // created, charge.succeeded, succeeded
  for (let i = 1; i < live.length; i++) {
    assert.ok(live[i - 1] < live[i], `event ${i} (${live[i]}) arrived after ${live[i - 1]}, which sorts after it`);
  }
  ws.close();
  await ws.closed;
  for (const k of [0, Math.floor(live.length / 3), live.length - 2]) {
    const want = live.slice(k + 1);
    const ws2 = await connect({ sub: { type: 'subscribe', events: ['*'], last_event_id: live[k] } });
    await ws2.waitFor(() => events(ws2).length >= want.length, { timeoutMs: 10000 });
    assert.deepEqual(events(ws2).slice(0, want.length).map((m) => m.event.id), want, `resume after event ${k}`);
    ws2.close();
    await ws2.closed;
  }
});

test('a browser token from /v1/turnpike/stream_tokens opens the stream; bad or forged tokens do not', async () => {
  const res = await fetch(`http://127.0.0.1:${PORT}/v1/turnpike/stream_tokens`, {
    method: 'POST', headers: { Authorization: `Bearer ${SECRET_KEY}` },
  });
  assert.equal(res.status, 200);
  const tok = await res.json();
  assert.match(tok.token, /^wst_/);
  assert.ok(tok.expires_at > Date.now() / 1000 && tok.expires_at <= Date.now() / 1000 + 61);
  const ws = await connect({ key: null, query: `?token=${encodeURIComponent(tok.token)}`, sub: { type: 'subscribe', events: ['customer.created'] } });
  const cus = await stripe.customers.create({ email: `${tag('ws')}@example.com` });
  await ws.waitFor((m) => m.type === 'event' && m.event.data.object.id === cus.id);
  ws.close();
  const forged = tok.token.slice(0, -4) + (tok.token.endsWith('0000') ? '1111' : '0000');
  assert.equal(await upgradeStatus(`${URL_}?token=${encodeURIComponent(forged)}`), 401);
  assert.equal(await upgradeStatus(`${URL_}?token=wst_garbage`), 401);
  assert.equal(await upgradeStatus(URL_), 401); // no credentials at all
  assert.equal(await upgradeStatus(URL_, { Authorization: 'Bearer sk_test_not_a_key' }), 401);
});

test('a plain GET without an upgrade gets 426 and a Stripe-shaped error', async () => {
  const res = await fetch(`http://127.0.0.1:${PORT}/v1/turnpike/stream`, { headers: { Authorization: `Bearer ${SECRET_KEY}` } });
  assert.equal(res.status, 426);
  const body = await res.json();
  assert.equal(body.error.code, undefined);
  assert.equal(body.error.tp_code, 8100);
});

test('invalid subscribe messages get an error message and the connection stays usable', async () => {
  const ws = await connect({ sub: { type: 'subscribe', events: [] } });
  assert.equal(ws.msgs[0].type, 'error');
  assert.equal(ws.msgs[0].code, 'invalid_subscription');
  ws.send(JSON.stringify({ type: 'subscribe', events: ['pay*ment'] }));
  await ws.waitFor((m) => m.type === 'error', { from: 1 });
  ws.send('not json');
  await ws.waitFor((m) => m.type === 'error' && m.code === 'invalid_message');
  ws.send(JSON.stringify({ type: 'subscribe', events: ['customer.*'] }));
  await ws.waitFor((m) => m.type === 'subscribed');
  ws.close();
});

test('a client that stops reading is closed with 1008 instead of buffering without bound', async () => {
  const ws = await connect({ sub: { type: 'subscribe', events: ['customer.created'] } });
  ws._socket.pause(); // stop reading: the kernel buffers fill, then the server's queue
  const metadata = {};
  for (let i = 0; i < 50; i++) metadata[`k${i}`] = 'x'.repeat(500);
  let made = 0;
  let closed = null;
  ws.closed.then((c) => { closed = c; });
  // ~26 KB per event; the default bound is 1 MiB plus socket buffers.
  for (; made < 400 && !closed; made++) {
    await stripe.customers.create({ metadata });
    if (made % 20 === 19) {
      const m = await (await fetch(`http://127.0.0.1:${PORT}/metrics`)).text();
      const slow = /turnpike_stream_slow_client_closes_total (\d+)/.exec(m);
      if (slow && Number(slow[1]) > 0) break;
    }
  }
  ws._socket.resume(); // read what was buffered, then the close frame
  const c = await Promise.race([ws.closed, new Promise((r) => setTimeout(() => r(null), 8000))]);
  assert.ok(c, `connection not closed after ${made} large events`);
  assert.equal(c.code, 1008);
  assert.match(c.reason, /send buffer/);
  console.log(`slow client closed with ${c.code} after ${made} events of ~26 KB`);
});
