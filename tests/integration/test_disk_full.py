"""A full disk, against the real gateway and the real `turnpike sim`.

The daemon runs with tests/integration/diskfault.c preloaded, which makes its
data directory look short of space (statvfs) or full (every write ENOSPC) on
the test's word, without filling a real file system.

- The space guard: below [store] min_free_mb, new work is refused with 503
  store_full before anything is written, /readyz says store_space_low, reads
  and the operator's settlement go on, and a payment whose processor call was
  already sent still commits its outcome. With space back, all is as before.
- The disk itself full: every commit fails, clients hear 503 store_full and
  nothing is stored; a payment whose card the processor charged before the
  disk filled is settled by recovery once space is back (one charge in the
  processor's journal), and the client's retry with its Idempotency-Key gets
  that settled payment."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from harness import BIN, Client, Daemon, Sim, new_key, open_db_ro, preload_env, start_beside, main

PI = "/v1/payment_intents"
SO = os.environ.get("TP_DISKFAULT_SO", "")
MIN_FREE_MB = 64


def config(sim):
    return "\n".join([
        "[store]", "min_free_mb = %d" % MIN_FREE_MB, "",
        "[routing]", "deadline_ms = 20000", "recovery_interval_ms = 300", "backoff_base_ms = 20", "",
        "[processor.a]", "type = restjson", "endpoint = http://%s/p/a" % sim.rest, "timeout_ms = 5000",
        "health_interval_ms = 0", "breaker_consecutive = 50", "",
        "[route.all]", "merchant = *", "processors = a", "strategy = ordered", ""])


@unittest.skipUnless(SO, "TP_DISKFAULT_SO (the diskfault.so test shim; meson passes it) not set")
class DiskFullTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sim = Sim()
        cls.ctl = tempfile.mkdtemp(prefix="tp-diskfault-")
        cls.daemon = Daemon()
        cls.daemon.create_merchant("m")
        env = preload_env(SO, TP_DISKFAULT_DATA=os.path.realpath(cls.daemon.data), TP_DISKFAULT_CTL=cls.ctl)
        start_beside(cls.sim, cls.daemon, config=config(cls.sim), extra_env=env)
        cls.c = cls.daemon.client("m")

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        cls.sim.stop()
        shutil.rmtree(cls.ctl, ignore_errors=True)

    def setUp(self):
        self.set_fault(free_bytes=None, enospc=False)
        self.sim.faults("a", outage=False, timeout_rate=0.0, error_rate=0.0, reset_rate=0.0, decline_rate=0.0,
                        latency_ms_min=0, latency_ms_max=0)
        self.assertTrue(self.wait_ready("ready", 15), self.daemon.log_tail())

    def tearDown(self):
        self.set_fault(free_bytes=None, enospc=False)

    # -- helpers -----------------------------------------------------------
    def set_fault(self, free_bytes=None, enospc=False):
        fb = os.path.join(self.ctl, "free_bytes")
        if free_bytes is None:
            if os.path.exists(fb):
                os.unlink(fb)
        else:
            with open(fb + ".tmp", "w") as f:
                f.write(str(free_bytes))
            os.replace(fb + ".tmp", fb)
        flag = os.path.join(self.ctl, "enospc")
        if enospc:
            open(flag, "w").close()
        elif os.path.exists(flag):
            os.unlink(flag)

    def readyz(self):
        r = self.c.get("/readyz", key=None)
        return (r.json or {}).get("reason") or (r.json or {}).get("status")

    def wait_ready(self, want, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.readyz() == want:
                return True
            time.sleep(0.1)
        return False

    def pay_params(self, amount):
        return {"amount": amount, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}

    def pay_in_thread(self, key, amount):
        out = {}

        def run():
            out["r"] = self.c.post(PI, self.pay_params(amount), idem=key, timeout=60)
        t = threading.Thread(target=run)
        t.start()
        return t, out

    def wait_sent(self, amount, seconds=10):
        """The attempt of the payment for amount, once it is committed as sent
        (its write-ahead is durable and the processor call is on its way)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = self.c.get("/v1/turnpike/attempts", {"state": "sent"})
            if r.status == 200:
                for a in r.json["data"]:
                    if a["amount"] == amount:
                        return a
            time.sleep(0.05)
        self.fail("no sent attempt for %d within %d s" % (amount, seconds))

    def count_rows(self, table):
        db = open_db_ro(self.daemon)
        try:
            return db.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
        finally:
            db.close()

    def charges_at_sim(self, pi_id):
        j = self.sim.journal(payment=pi_id)
        return j["summary"]["charges_by_payment"].get(pi_id, 0)

    def assertStoreFull(self, r):
        self.assertEqual(r.status, 503, r.json)
        err = r.json["error"]
        self.assertEqual(err["type"], "api_error", err)
        self.assertEqual(err.get("tp_code"), 8009, err)

    # -- the space guard ---------------------------------------------------
    def test_an_admin_command_whose_commit_fails_says_so(self):
        """The disk full at the COMMIT of `api-key create`/`revoke`: the
        command exits 1 and prints no key (it exited 0 and printed a key
        never stored, or a revoke never made: the leaked key went on
        working)."""
        mid = self.daemon.merchants["m"]["id"]
        env = dict(os.environ, **preload_env(SO, TP_DISKFAULT_DATA=os.path.realpath(self.daemon.data),
                                                 TP_DISKFAULT_CTL=self.ctl))

        def run(*args):
            return subprocess.run([BIN] + list(args) + ["--data", self.daemon.data], env=env, timeout=60,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        made = run("api-key", "create", "--merchant", mid, "--scopes", "payments:read")
        self.assertEqual(made.returncode, 0, made.stderr)
        key = json.loads(made.stdout)["restricted_key"]
        self.set_fault(enospc=True)
        p = run("api-key", "create", "--merchant", mid, "--scopes", "payments:read")
        self.assertEqual((p.returncode, p.stdout), (1, b""), p.stderr)
        p = run("api-key", "revoke", "--merchant", mid, "--key", key)
        self.assertEqual((p.returncode, p.stdout), (1, b""), p.stderr)
        self.set_fault(enospc=False)
        # the revoke was not made, and the command said so: the key works
        self.assertEqual(Client(self.daemon.host, self.daemon.port, key=key).get(PI).status, 200)

    def test_space_guard_refuses_new_work_and_lets_sent_calls_finish(self):
        r = self.c.post(PI, self.pay_params(1100), idem=new_key("df"))
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r.json)

        # A payment whose call is at the processor (1.5 s) when space runs low.
        self.sim.faults("a", latency_ms_min=1500, latency_ms_max=1500)
        key = new_key("df-inflight")
        t, out = self.pay_in_thread(key, 1101)
        self.wait_sent(1101)
        self.set_fault(free_bytes=(MIN_FREE_MB - 1) * 1024 * 1024)
        self.assertTrue(self.wait_ready("store_space_low", 5), "readyz: %s" % self.readyz())
        pis, customers = self.count_rows("payment_intents"), self.count_rows("customers")

        # New work is refused, whatever its kind, with nothing written.
        r = self.c.post(PI, self.pay_params(1102), idem=new_key("df"))
        self.assertStoreFull(r)
        self.assertIn("space", r.json["error"]["message"])
        self.assertStoreFull(self.c.post("/v1/customers", {"email": "a@example.com"}))
        self.assertStoreFull(self.c.post("/v1/refunds", {"payment_intent": "pi_nothing"}))
        # Reads, and the operator's settlement of calls already made, go on.
        self.assertEqual(self.c.get(PI, {"limit": 3}).status, 200)
        r = self.c.post("/v1/turnpike/attempts/att_doesnotexist/resolve",
                        {"outcome": "not_processed", "reason": "test"})
        self.assertEqual(r.status, 404, r.json)

        # The payment already at the processor still commits its outcome.
        t.join(30)
        self.assertFalse(t.is_alive())
        self.assertEqual(out["r"].status, 200, out["r"].json)
        pi = out["r"].json
        self.assertEqual(pi["status"], "succeeded")
        self.assertEqual(self.charges_at_sim(pi["id"]), 1)
        self.assertEqual(self.c.get("/v1/turnpike/attempts", {"state": "sent"}).json["data"], [])
        # its PaymentIntent was written with the call; nothing else was
        self.assertEqual(self.count_rows("payment_intents"), pis)
        self.assertEqual(self.count_rows("customers"), customers)
        m = self.c.get("/metrics", key=None).body.decode()
        self.assertIn("turnpike_store_free_bytes %d" % ((MIN_FREE_MB - 1) * 1024 * 1024), m)

        # Space back: ready again, and payments go through.
        self.set_fault(free_bytes=None)
        self.assertTrue(self.wait_ready("ready", 5), "readyz: %s" % self.readyz())
        self.sim.faults("a", latency_ms_min=0, latency_ms_max=0)
        r = self.c.post(PI, self.pay_params(1103), idem=new_key("df"))
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r.json)
        log = self.daemon.log_text()
        self.assertIn('"store_space_low"', log)
        self.assertIn('"store_space_ok"', log)

    # -- the disk itself full ---------------------------------------------
    def test_full_disk_fails_cleanly_and_recovery_settles_the_charge(self):
        self.sim.faults("a", latency_ms_min=1500, latency_ms_max=1500)
        key = new_key("df-charged")
        t, out = self.pay_in_thread(key, 2201)
        self.wait_sent(2201)
        # The disk fills while the processor authorizes the card.
        self.set_fault(enospc=True)
        pis = self.count_rows("payment_intents")

        # A new payment cannot write its processor call ahead: 503, nothing sent.
        key_new = new_key("df-new")
        r = self.c.post(PI, self.pay_params(2202), idem=key_new)
        self.assertStoreFull(r)
        t.join(30)
        self.assertFalse(t.is_alive())
        # The charged payment's outcome cannot be committed either: its client
        # hears store_full, never a success that is not stored.
        self.assertStoreFull(out["r"])
        self.assertTrue(self.wait_ready("store_not_writable", 10), "readyz: %s" % self.readyz())
        self.assertEqual(self.count_rows("payment_intents"), pis)

        # Space back: recovery asks the processor and settles the charge; the
        # client's retry with its key gets the settled payment.
        self.set_fault(enospc=False)
        self.sim.faults("a", latency_ms_min=0, latency_ms_max=0)
        deadline = time.monotonic() + 20
        while True:
            r = self.c.post(PI, self.pay_params(2201), idem=key)
            if r.status == 200 or time.monotonic() > deadline:
                break
            # until recovery commits, the key's call is still in flight
            self.assertIn(r.status, (409, 503), r.json)
            time.sleep(0.2)
        self.assertEqual(r.status, 200, r.json)
        pi = r.json
        self.assertEqual((pi["status"], pi["amount_received"]), ("succeeded", 2201), pi)
        self.assertEqual(self.charges_at_sim(pi["id"]), 1)
        ch = self.c.get("/v1/charges/%s" % pi["latest_charge"]).json
        self.assertEqual((ch["amount"], ch["captured"]), (2201, True), ch)
        again = self.c.post(PI, self.pay_params(2201), idem=key)
        self.assertEqual((again.status, again.json["id"]), (200, pi["id"]))
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true")
        self.assertEqual(self.c.get("/v1/turnpike/attempts", {"state": "sent"}).json["data"], [])

        # The refused payment left nothing behind: its key runs afresh, once.
        r = self.c.post(PI, self.pay_params(2202), idem=key_new)
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r.json)
        self.assertEqual(self.charges_at_sim(r.json["id"]), 1)
        self.assertTrue(self.wait_ready("ready", 10), "readyz: %s" % self.readyz())
        self.assertIn("database or disk is full", self.daemon.log_text())


@unittest.skipUnless(SO, "TP_DISKFAULT_SO (the diskfault.so test shim; meson passes it) not set")
class FirstStartKeyFilesTest(unittest.TestCase):
    """A first start on a full disk that cannot write one of the key files
    it makes (the store itself written): it exits non-zero, and the next
    start, with space again, comes up. A part-written key file was left,
    and every later start refused it (vault_key_bad; store_missing for a
    KEK file)."""

    def test_a_key_file_not_written_is_not_left(self):
        # (the JWE keys are written through stdio, which the shim does not
        # see: the same unlink is there, untested)
        for name in ("vault.key", "kek-v1.key"):
            with self.subTest(name=name):
                ctl = tempfile.mkdtemp(prefix="tp-diskfault-")
                d = Daemon()
                try:
                    os.makedirs(d.data, exist_ok=True)
                    with open(os.path.join(ctl, "only"), "w") as f:
                        f.write(name)
                    open(os.path.join(ctl, "enospc"), "w").close()
                    env = dict(os.environ, **preload_env(SO, TP_DISKFAULT_DATA=os.path.realpath(d.data),
                                                         TP_DISKFAULT_CTL=ctl))
                    p = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--data", d.data], env=env,
                                       timeout=60, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
                    self.assertNotEqual(p.returncode, 0, p.stderr[-2000:])
                    self.assertFalse(os.path.exists(os.path.join(d.data, name)) and
                                     os.path.getsize(os.path.join(d.data, name)) == 0, "an empty %s was left" % name)
                    os.unlink(os.path.join(ctl, "enospc"))
                    d.start()  # space again: it comes up
                    self.assertEqual(d.client(None).get("/healthz").status, 200)
                finally:
                    d.cleanup()
                    shutil.rmtree(ctl, ignore_errors=True)


@unittest.skipUnless(SO, "TP_DISKFAULT_SO (the diskfault.so test shim; meson passes it) not set")
class CommitSyncFailsTest(unittest.TestCase):
    """The fsync of a COMMIT fails (EIO): its frames are in the WAL, whole,
    and the next start's recovery may replay them, so the outcome is not
    known. The gateway stops (75) instead of answering 503 "nothing sent"
    (after a crash that request's payment was there, and its key replayed
    it); after a restart a retry with the key gets one payment."""

    def test_a_commit_whose_sync_fails_stops_the_gateway(self):
        ctl = tempfile.mkdtemp(prefix="tp-diskfault-")
        self.addCleanup(shutil.rmtree, ctl, True)
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        env = preload_env(SO, TP_DISKFAULT_DATA=os.path.realpath(d.data), TP_DISKFAULT_CTL=ctl)
        d.start(extra_env=env)
        c = d.client("m", timeout=10)
        params = {"amount": 4321, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        open(os.path.join(ctl, "fsync_eio"), "w").close()
        key = new_key("eio")
        try:
            r = c.post(PI, params, idem=key)
            answered = r.status
        except OSError:
            answered = None  # the process went before it answered
        self.assertNotEqual(answered, 200)
        self.assertNotEqual(answered, 503, "answered 503 store_unavailable: the commit's outcome is not known")
        rc = d.proc.wait(timeout=30)
        self.assertEqual(rc, 75, d.log_tail())
        self.assertIn("store_commit_sync_failed_exiting", d.log_text())
        os.unlink(os.path.join(ctl, "fsync_eio"))
        d.proc = None
        d.start(extra_env=env)
        again = d.client("m").post(PI, params, idem=key)
        self.assertEqual((again.status, again.json.get("status")), (200, "succeeded"), again)
        listed = [p for p in d.client("m").list_all(PI) if p["amount"] == 4321]
        self.assertEqual(len(listed), 1, listed)


if __name__ == "__main__":
    main()
