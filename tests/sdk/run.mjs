#!/usr/bin/env node
// Runs the SDK suite against a real daemon: creates a data dir and two
// merchants, starts `turnpike serve` on a random port, runs every
// *.test.mjs with node:test, then stops the daemon with SIGTERM and requires
// a clean exit. Exit code is the suite's result.
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.TURNPIKE_BIN || path.resolve(HERE, '../../build/turnpike');
const ADDR_WAIT_MS = 20000;
const STOP_WAIT_MS = 10000;
const STDERR_KEEP = 512 * 1024;
// Full test card numbers that must never appear in the daemon's logs.
const PANS = ['4242424242424242', '5555555555554444', '4000000000000002', '4000000000009995',
  '4000002760003184', '4000000000003220', '4100000000000019'];

function log(msg) {
  process.stdout.write(`[sdk] ${msg}\n`);
}

function ensureDeps() {
  if (existsSync(path.join(HERE, 'node_modules', 'stripe', 'package.json'))) return;
  log('node_modules missing; running npm ci in tests/sdk');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: HERE, stdio: 'inherit' });
}

function merchant(dataDir, name) {
  const out = execFileSync(BIN, ['merchant', 'create', '--data', dataDir, '--name', name],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 });
  const m = JSON.parse(out.trim());
  for (const k of ['id', 'secret_key', 'publishable_key']) {
    if (typeof m[k] !== 'string') throw new Error(`merchant create output lacks ${k}: ${out}`);
  }
  if (!m.secret_key.startsWith('sk_test_') || !m.publishable_key.startsWith('pk_test_')) {
    throw new Error(`unexpected key shapes from merchant create: ${out}`);
  }
  return m;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  if (!existsSync(BIN)) {
    log(`turnpike binary not found at ${BIN} (set TURNPIKE_BIN)`);
    return 1;
  }
  ensureDeps();

  const dataDir = mkdtempSync(path.join(tmpdir(), 'turnpike-sdk-'));
  let stderr = '';
  let daemon = null;
  let exitInfo = null;
  let exited = null;
  let result = 1;
  const dumpStderr = () => {
    process.stdout.write('----- daemon stderr (tail) -----\n');
    process.stdout.write(stderr.slice(-64 * 1024));
    process.stdout.write(`\n----- end daemon stderr (full log: ${path.join(dataDir, 'daemon.log')}) -----\n`);
  };

  try {
    const m1 = merchant(dataDir, 'SDK Merchant One');
    const m2 = merchant(dataDir, 'SDK Merchant Two');
    log(`merchants ${m1.id}, ${m2.id} in ${dataDir}`);

    const addrFile = path.join(dataDir, 'serve.addr');
    try { unlinkSync(addrFile); } catch { /* not there yet */ }
    daemon = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data', dataDir],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    daemon.stderr.setEncoding('utf8');
    // The whole log also goes to DATA/daemon.log, kept when the run fails.
    const logFile = createWriteStream(path.join(dataDir, 'daemon.log'));
    daemon.stderr.pipe(logFile);
    daemon.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > STDERR_KEEP * 2) stderr = stderr.slice(-STDERR_KEEP);
    });
    exited = new Promise((resolve) => {
      daemon.on('exit', (code, signal) => { exitInfo = { code, signal }; resolve(exitInfo); });
    });

    const deadline = Date.now() + ADDR_WAIT_MS;
    let addr = '';
    while (!addr) {
      if (exitInfo) throw new Error(`daemon exited before listening: ${JSON.stringify(exitInfo)}`);
      if (Date.now() > deadline) throw new Error(`no ${addrFile} after ${ADDR_WAIT_MS} ms`);
      try { addr = readFileSync(addrFile, 'utf8').trim(); } catch { /* not yet */ }
      if (!addr) await sleep(50);
    }
    const port = Number(addr.split(':').pop());
    if (!Number.isInteger(port) || port <= 0) throw new Error(`bad serve.addr content: ${JSON.stringify(addr)}`);
    log(`daemon pid ${daemon.pid} listening on ${addr}`);

    const files = readdirSync(HERE).filter((f) => f.endsWith('.test.mjs')).sort().map((f) => path.join(HERE, f));
    const only = process.argv.slice(2);
    const selected = only.length ? files.filter((f) => only.some((o) => f.includes(o))) : files;
    const tests = spawn(process.execPath, [
      '--test', '--test-concurrency=1', '--test-timeout=30000', '--test-reporter=spec', ...selected,
    ], {
      cwd: HERE,
      stdio: 'inherit',
      env: {
        ...process.env,
        TP_PORT: String(port),
        TP_SECRET_KEY: m1.secret_key,
        TP_PUBLISHABLE_KEY: m1.publishable_key,
        TP_SECRET_KEY_2: m2.secret_key,
        TP_DATA: dataDir,
        TP_MERCHANT_ID: m1.id,
      },
    });
    const testCode = await new Promise((resolve) => tests.on('exit', (code, sig) => resolve(sig ? 1 : code)));
    result = testCode === 0 ? 0 : 1;
    if (result !== 0) log(`node --test exited ${testCode}`);

    if (exitInfo) {
      log(`daemon died during the tests: ${JSON.stringify(exitInfo)}`);
      result = 1;
    } else {
      daemon.kill('SIGTERM');
      let timer;
      const timeout = new Promise((r) => { timer = setTimeout(() => r(null), STOP_WAIT_MS); });
      const info = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (!info) {
        log(`daemon did not exit within ${STOP_WAIT_MS} ms of SIGTERM; killing`);
        daemon.kill('SIGKILL');
        await exited;
        result = 1;
      } else if (info.code !== 0) {
        log(`daemon exit after SIGTERM: ${JSON.stringify(info)} (want code 0)`);
        result = 1;
      } else {
        log('daemon exited 0 after SIGTERM');
      }
    }

    const leaked = PANS.filter((p) => stderr.includes(p));
    if (leaked.length) {
      log(`card numbers found in daemon logs (${leaked.length} distinct PANs)`);
      result = 1;
    }
  } catch (err) {
    log(`harness error: ${err && err.stack ? err.stack : err}`);
    if (err && err.stderr) process.stdout.write(String(err.stderr));
    result = 1;
  } finally {
    if (daemon && !exitInfo) {
      daemon.kill('SIGKILL');
      await exited;
    }
    if (result !== 0) dumpStderr();
    if (result === 0 && !process.env.TP_KEEP_DATA) rmSync(dataDir, { recursive: true, force: true });
    else log(`data dir kept: ${dataDir}`);
  }
  return result;
}

process.exitCode = await main();
