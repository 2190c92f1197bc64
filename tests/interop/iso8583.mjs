#!/usr/bin/env node
// Turnpike's ISO 8583 against an implementation it did not write: the
// iso_8583 npm package (zemuldo/iso_8583, pinned in package.json) packs and
// unpacks every message here.
//
//  1. A terminal built on iso_8583 talks to `turnpike sim`'s acquirer host:
//     sign-on, echo, authorizations approved and declined by the test-card
//     table, a sale and its reversal, a repeated authorization. iso_8583
//     always sends a secondary bitmap (16 bytes), which the host must accept;
//     the host answers with a primary bitmap only, which iso_8583 must read.
//  2. An acquirer host built on iso_8583 behind the gateway's iso8583
//     connector: payments made through the REST API reach it as 0200, 0100,
//     0220 and refunds, with the fields docs/iso8583.md lists, and its
//     answers (again with a secondary bitmap) settle the payments.
//
// Everything listens on 127.0.0.1 with ports the kernel picks. Exit code is
// the suite's result.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.TURNPIKE_BIN || path.resolve(HERE, '../../build/turnpike');
const require = createRequire(import.meta.url);

function loadIso() {
  if (!existsSync(path.join(HERE, 'node_modules', 'iso_8583', 'package.json'))) {
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: HERE, stdio: 'inherit' });
  }
  return require('iso_8583');
}
const Iso = loadIso();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- messages, by the other implementation --------------------------------
function pack(fields) {
  const m = new Iso(fields);
  const buf = m.getBufferMessage();
  assert.ok(Buffer.isBuffer(buf), `iso_8583 could not pack ${JSON.stringify(fields)}: ${JSON.stringify(buf)}`);
  return buf;
}

function unpack(frame) {
  const j = new Iso().getIsoJSON(frame, {});
  assert.ok(j && !j.error, `iso_8583 could not unpack ${frame.toString('hex')}: ${JSON.stringify(j)}`);
  return j;
}

const pad2 = (n) => String(n).padStart(2, '0');
function f7(d = new Date()) {
  return pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) + pad2(d.getUTCHours()) + pad2(d.getUTCMinutes()) +
    pad2(d.getUTCSeconds());
}

// Frames of a TCP stream: 2-byte big-endian length, then the body.
function frames(sock) {
  let acc = Buffer.alloc(0);
  const queue = [];
  const waiters = [];
  sock.on('data', (d) => {
    acc = Buffer.concat([acc, d]);
    while (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) {
      const n = 2 + acc.readUInt16BE(0);
      const f = acc.subarray(0, n);
      acc = acc.subarray(n);
      if (waiters.length) waiters.shift()(f);
      else queue.push(f);
    }
  });
  let closed = false;
  sock.on('close', () => {
    closed = true;
    while (waiters.length) waiters.shift()(null);
  });
  // Resolves with the next frame; rejects after ms, or once the stream ends.
  return (ms = 5000) => new Promise((resolve, reject) => {
    if (queue.length) return resolve(queue.shift());
    if (closed) return reject(new Error('connection closed'));
    const t = setTimeout(() => reject(new Error('no ISO 8583 answer within ' + ms + ' ms')), ms);
    waiters.push((f) => {
      clearTimeout(t);
      if (f) resolve(f);
      else reject(new Error('connection closed'));
    });
  });
}

function connect(addr) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(port), host, () => resolve(s));
    s.on('error', reject);
  });
}

// ---- processes -------------------------------------------------------------
const children = [];
const dirs = [];

function tempDir(tag) {
  const d = mkdtempSync(path.join(tmpdir(), `turnpike-interop-${tag}-`));
  dirs.push(d);
  return d;
}

async function waitLines(file, n, child) {
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`${path.basename(file)}: the process exited (${child.exitCode})`);
    if (existsSync(file)) {
      const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
      if (lines.length >= n) return lines;
    }
    await sleep(50);
  }
  throw new Error(`no ${file} after 20 s`);
}

function run(args, tag) {
  const log = [];
  const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', (d) => { log.push(d); });
  child.log = () => Buffer.concat(log).toString('utf8').slice(-4000);
  child.tag = tag;
  children.push(child);
  return child;
}

async function startSim() {
  const dir = tempDir('sim');
  const child = run(['sim', '--listen', '127.0.0.1:0', '--iso-listen', '127.0.0.1:0', '--data', dir], 'sim');
  const [rest, iso] = await waitLines(path.join(dir, 'sim.addr'), 2, child);
  return { rest, iso, child };
}

async function startGateway(config) {
  const dir = tempDir('gw');
  const m = JSON.parse(execFileSync(BIN, ['merchant', 'create', '--data', dir, '--name', 'interop'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 }));
  const ini = path.join(dir, 'gw.ini');
  execFileSync('sh', ['-c', 'cat > "$1"', 'sh', ini], { input: config });
  const child = run(['serve', '--listen', '127.0.0.1:0', '--data', dir, '--config', ini], 'serve');
  const [addr] = await waitLines(path.join(dir, 'serve.addr'), 1, child);
  return { addr, key: m.secret_key, child };
}

async function stopAll() {
  for (const c of children) {
    if (c.exitCode === null) {
      c.kill('SIGTERM');
      for (let i = 0; i < 100 && c.exitCode === null; i++) await sleep(50);
      if (c.exitCode === null) c.kill('SIGKILL');
    }
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}

// ---- 1. a terminal on iso_8583 against the sim's acquirer host -------------
describe('iso_8583 terminal -> turnpike sim acquirer host', () => {
  let sim, sock, next;
  let stan = 100;
  const TID = 'TERM0007';
  const MID = 'INTEROP00000007';

  before(async () => {
    sim = await startSim();
    sock = await connect(sim.iso);
    next = frames(sock);
  });
  after(() => sock && sock.destroy());

  async function call(fields) {
    sock.write(pack(fields));
    return unpack(await next());
  }

  function auth(mti, pan, rrn, amount = '000000001999') {
    const s = String(++stan).padStart(6, '0');
    return {
      0: mti, 2: pan, 3: '000000', 4: amount, 7: f7(), 11: s, 12: '101010', 13: '1204', 14: '3012', 18: '5999',
      22: '012', 25: '59', 37: rrn, 41: TID, 42: MID, 49: '840',
    };
  }

  async function journal(reference) {
    const r = await fetch(`http://${sim.rest}/_sim/journal?reference=${reference}`);
    assert.equal(r.status, 200);
    return r.json();
  }

  test('sign-on and echo (0800, field 70 in the secondary bitmap) are answered 0810 00', async () => {
    for (const code of ['001', '301']) {
      const req = { 0: '0800', 7: f7(), 11: String(++stan).padStart(6, '0'), 70: code };
      const a = await call(req);
      assert.equal(a[0], '0810');
      assert.equal(a[39], '00');
      assert.equal(a[11], req[11]);
      assert.equal(a[70], code);
    }
  });

  test('an approved authorization: 0110 with 38 and 39 00, echoes, no PAN, one charge in the journal', async () => {
    const req = auth('0100', '4242424242424242', 'IOP000000001');
    const a = await call(req);
    assert.equal(a[0], '0110');
    assert.equal(a[39], '00');
    assert.match(a[38], /^[0-9A-Z ]{6}$/);
    for (const f of [3, 4, 11, 37, 41, 42, 49]) assert.equal(a[f], req[f], `field ${f} echoed`);
    assert.equal(a[2], undefined, 'the PAN is never echoed');
    const j = await journal('IOP000000001');
    assert.equal(j.summary.charges_by_payment.IOP000000001, 1, JSON.stringify(j));
    assert.equal(j.entries[0].protocol, 'iso');
    assert.equal(j.entries[0].amount, 1999);
    assert.equal(j.entries[0].currency, 'usd');

    // The same RRN again (a terminal's retry): the first answer, no second charge.
    const again = await call({ ...req, 0: '0101', 11: String(++stan).padStart(6, '0') });
    assert.equal(again[0], '0110');
    assert.equal(again[38], a[38]);
    assert.equal((await journal('IOP000000001')).summary.charges_by_payment.IOP000000001, 1);
  });

  test('declines follow the test-card table (05, 51, 54, 43)', async () => {
    const cases = [['4000000000000002', '05'], ['4000000000009995', '51'], ['4000000000000069', '54'],
      ['4000000000009979', '43']];
    let i = 10;
    for (const [pan, code] of cases) {
      const a = await call(auth('0100', pan, `IOP0000000${i++}`));
      assert.equal(a[0], '0110');
      assert.equal(a[39], code, `${pan} -> ${code}`);
      assert.equal(a[38], undefined, 'no approval code on a decline');
    }
  });

  test('a sale (0200) reversed by 0400 with field 90 leaves no charge', async () => {
    const sale = auth('0200', '5555555555554444', 'IOP000000020', '000000004200');
    const a = await call(sale);
    assert.equal(a[0], '0210');
    assert.equal(a[39], '00');
    const orig = '0200' + sale[11] + sale[7] + '00000000000' + '00000000000';
    const rev = await call({ 0: '0400', 3: '000000', 4: sale[4], 7: f7(), 11: String(++stan).padStart(6, '0'),
      37: sale[37], 41: TID, 42: MID, 49: '840', 90: orig });
    assert.equal(rev[0], '0410');
    assert.equal(rev[39], '00');
    const j = await journal('IOP000000020');
    assert.ok(j.entries.some((e) => e.operation === 'reversal'), JSON.stringify(j));
    assert.equal(j.summary.double_charges, 0);
    assert.ok(!j.summary.charges_by_payment.IOP000000020, `reversed sale still charged: ${JSON.stringify(j)}`);
  });
});

// ---- 2. the gateway's connector against an acquirer host on iso_8583 --------
describe('turnpike iso8583 connector -> iso_8583 acquirer host', () => {
  const seen = [];
  const conns = new Set();
  let server, gw;
  const DECLINE = '4000000000000002';

  function answer(j) {
    const base = { 7: j[7] || f7(), 11: j[11] };
    switch (j[0]) {
      case '0800':
        return { 0: '0810', ...base, 39: '00', 70: j[70] };
      case '0100':
      case '0200': {
        const approved = j[2] !== DECLINE;
        const out = { 0: j[0] === '0100' ? '0110' : '0210', ...base, 3: j[3], 4: j[4], 37: j[37], 39: approved ? '00' : '05',
          41: j[41], 42: j[42], 49: j[49] };
        if (approved) out[38] = 'JS' + String(j[11]).slice(-4);
        return out;
      }
      case '0220':
        return { 0: '0230', ...base, 3: j[3], 4: j[4], 37: j[37], 39: '00', 41: j[41], 42: j[42], 49: j[49] };
      case '0400':
      case '0401':
        return { 0: '0410', ...base, 37: j[37], 39: '00', 41: j[41], 42: j[42] };
      default:
        return { 0: String(Number(j[0]) + 10).padStart(4, '0'), ...base, 39: '12' };
    }
  }

  before(async () => {
    server = net.createServer((sock) => {
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
      const next = frames(sock);
      (async () => {
        for (;;) {
          let f;
          try { f = await next(120000); } catch { return; }
          const j = unpack(f);
          seen.push(j);
          sock.write(pack(answer(j)));
        }
      })().catch(() => sock.destroy());
      sock.on('error', () => {});
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const port = server.address().port;
    gw = await startGateway([
      '[processor.jshost]', 'type = iso8583', `endpoint = 127.0.0.1:${port}`, 'timeout_ms = 3000',
      'terminal_id = TERM0042', 'merchant_id = INTEROP00000042', 'echo_interval_ms = 60000', '',
    ].join('\n'));
  });
  after(() => {
    for (const c of conns) c.destroy();
    if (server) server.close();
  });

  async function api(method, p, params) {
    const r = await fetch(`http://${gw.addr}${p}`, {
      method,
      headers: { Authorization: `Bearer ${gw.key}`, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: params ? new URLSearchParams(params).toString() : undefined,
    });
    return { status: r.status, body: await r.json() };
  }

  const card = (number) => ({ 'payment_method_data[type]': 'card', 'payment_method_data[card][number]': number,
    'payment_method_data[card][exp_month]': '12', 'payment_method_data[card][exp_year]': '2040',
    'payment_method_data[card][cvc]': '123' });

  test('a payment with automatic capture is one 0200 with the documented fields', async () => {
    const r = await api('POST', '/v1/payment_intents', { amount: '1999', currency: 'usd', confirm: 'true',
      ...card('4242424242424242') });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.status, 'succeeded');
    const m = seen.filter((j) => j[0] === '0200' && j[4] === '000000001999');
    assert.equal(m.length, 1, JSON.stringify(seen));
    const j = m[0];
    assert.equal(j[2], '4242424242424242');
    assert.equal(j[3], '000000');
    assert.equal(j[14], '4012', 'expiry as YYMM');
    assert.equal(j[49], '840', 'numeric currency');
    assert.equal(j[41], 'TERM0042');
    assert.equal(j[42], 'INTEROP00000042');
    assert.match(j[11], /^\d{6}$/);
    assert.match(j[37], /^[0-9A-Za-z ]{12}$/);
    assert.match(j[7], /^\d{10}$/);
    const ch = await api('GET', `/v1/charges/${r.body.latest_charge}`);
    assert.equal(ch.body.turnpike.processor, 'jshost');
    assert.equal(ch.body.captured, true);
  });

  test('field 39 05 from the host is a card decline (do_not_honor), not retried', async () => {
    const before = seen.length;
    const r = await api('POST', '/v1/payment_intents', { amount: '2500', currency: 'usd', confirm: 'true',
      ...card(DECLINE) });
    assert.equal(r.status, 402, JSON.stringify(r.body));
    assert.equal(r.body.error.type, 'card_error');
    assert.equal(r.body.error.decline_code, 'do_not_honor');
    assert.equal(r.body.error.payment_intent.status, 'requires_payment_method');
    assert.equal(seen.slice(before).filter((j) => j[2] === DECLINE).length, 1, 'a hard decline is sent once');
  });

  test('manual capture is 0100 then 0220 naming the authorization in 48; a refund is 0200 with 3 = 200000', async () => {
    const r = await api('POST', '/v1/payment_intents', { amount: '3000', currency: 'eur', confirm: 'true',
      capture_method: 'manual', ...card('5555555555554444') });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.status, 'requires_capture');
    const a = seen.filter((j) => j[0] === '0100' && j[4] === '000000003000');
    assert.equal(a.length, 1, JSON.stringify(seen));
    assert.equal(a[0][49], '978');
    const c = await api('POST', `/v1/payment_intents/${r.body.id}/capture`, { amount_to_capture: '2000' });
    assert.equal(c.status, 200, JSON.stringify(c.body));
    assert.equal(c.body.status, 'succeeded');
    assert.equal(c.body.amount_received, 2000);
    const cap = seen.filter((j) => j[0] === '0220' && j[48] === a[0][37]);
    assert.equal(cap.length, 1, JSON.stringify(seen.slice(-3)));
    assert.equal(cap[0][4], '000000002000');
    assert.equal(cap[0][2], undefined, 'no PAN on a capture');
    const rf = await api('POST', '/v1/refunds', { payment_intent: r.body.id, amount: '500' });
    assert.equal(rf.status, 200, JSON.stringify(rf.body));
    assert.equal(rf.body.status, 'succeeded');
    const ref = seen.filter((j) => j[0] === '0200' && j[3] === '200000');
    assert.equal(ref.length, 1, JSON.stringify(seen.slice(-3)));
    assert.equal(ref[0][4], '000000000500');
    assert.equal(ref[0][48], a[0][37]);
  });

  test('the link signed on first (0800, 70 = 001)', () => {
    const i = seen.findIndex((j) => j[0] === '0800' && j[70] === '001');
    assert.ok(i >= 0, JSON.stringify(seen.map((j) => j[0])));
    assert.ok(seen.slice(0, i).every((j) => j[0] === '0800'), 'no payment before sign-on');
  });
});

after(stopAll);
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});
