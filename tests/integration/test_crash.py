"""Durability: kill -9 under payment load (confirmations; and captures,
refunds and cancels), restart on the same data, and every acknowledged
operation is there exactly as acknowledged, replays return it, no attempt
stays 'sent', the ledger balances and the balance agrees."""
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

from harness import (HOST, Client, Daemon, DaemonTestCase, PaymentLoad, Sim, main, new_key, open_db_ro)

PI = "/v1/payment_intents"
CYCLES = 3
LOAD_SECONDS = 4.0
# fields that must survive exactly as acknowledged
FIELDS = ("id", "status", "amount", "amount_received", "amount_capturable",
          "currency", "capture_method")


def parallel(items, fn, threads=8):
    """fn(item) for every item on a few threads; returns the failures."""
    items = list(items)
    lock = threading.Lock()
    failures = []
    idx = [0]

    def run():
        while True:
            with lock:
                if idx[0] >= len(items):
                    return
                item = items[idx[0]]
                idx[0] += 1
            try:
                msg = fn(item)
            except Exception as e:  # reported as a failure of this item
                msg = "%s: %r" % (type(e).__name__, e)
            if msg:
                with lock:
                    failures.append(msg)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    return failures


class CrashTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def check_ack(self, c, ack):
        want = ack.pi()
        r = c.get(PI + "/" + want["id"])
        if r.status != 200:
            return "%s: retrieve -> %r" % (want["id"], r)
        for f in FIELDS:
            if r.json.get(f) != want.get(f):
                return "%s: %s acknowledged %r, now %r" % (want["id"], f, want.get(f), r.json.get(f))
        again = c.post(PI, ack.params, idem=ack.key)
        if again.status != ack.status:
            return "%s: replay status %d, acknowledged %d (%r)" % (want["id"], again.status, ack.status, again)
        got = again.json if again.status == 200 else (again.json or {}).get("error", {}).get("payment_intent", {})
        if not isinstance(got, dict) or got.get("id") != want["id"]:
            return "%s: replay answered another PI: %r" % (want["id"], again)
        if again.headers.get("Idempotent-Replayed") != "true":
            return "%s: replay lacks Idempotent-Replayed: true" % want["id"]
        return None

    def check_unacked(self, c, item):
        """A request that got no reply, retried after recovery with its key,
        gets a definite answer (it ran once, or now runs once)."""
        key, params = item[0], item[1]
        for _ in range(20):
            r = c.post(PI, params, idem=key)
            if r.status == 409:
                time.sleep(0.5)
                continue
            if r.status not in (200, 402):
                return "retry of unacknowledged %s: %r" % (key, r)
            return None
        return "retry of unacknowledged %s still 409 after 10 s" % key

    def count_sent(self):
        """Attempts in 'sent' while the daemon is down: shows whether the
        restart had anything to recover (informational)."""
        try:
            db = open_db_ro(self.daemon)
            try:
                return db.execute("SELECT count(*) FROM attempts WHERE state = 'sent'").fetchone()[0]
            finally:
                db.close()
        except Exception as e:  # only a diagnostic
            return "unreadable (%s)" % e

    def check_store(self):
        db = open_db_ro(self.daemon)
        try:
            deadline = time.monotonic() + 10
            while True:
                sent = db.execute("SELECT count(*) FROM attempts WHERE state = 'sent'").fetchone()[0]
                if sent == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self.assertEqual(sent, 0, "attempts still 'sent' 10 s after restart")
            bad = db.execute("SELECT txn_id, sum(amount) FROM ledger_entries GROUP BY txn_id "
                             "HAVING sum(amount) != 0 LIMIT 10").fetchall()
            self.assertEqual(bad, [], "unbalanced ledger transactions")
            states = dict(db.execute("SELECT state, count(*) FROM attempts GROUP BY state").fetchall())
            return states
        finally:
            db.close()

    def check_balance(self, c):
        pis = c.list_all(PI, max_pages=2000)
        captured = sum(p["amount_received"] for p in pis
                       if p["status"] == "succeeded" and p["currency"] == "usd")
        refunds = c.list_all("/v1/refunds", max_pages=2000)
        refunded = sum(rf["amount"] for rf in refunds
                       if rf.get("status") in ("succeeded", "pending") and rf["currency"] == "usd")
        r = c.get("/v1/balance")
        self.assertEqual(r.status, 200, r)
        total = sum(b["amount"] for kind in ("available", "pending")
                    for b in r.json.get(kind, []) if b["currency"] == "usd")
        self.assertEqual(total, captured - refunded,
                         "balance %r vs captured %d - refunded %d" % (r.json, captured, refunded))
        return len(pis), captured

    def test_acknowledged_payments_survive_kill_9(self):
        rng = random.Random(1234)
        all_acks = []
        for cycle in range(1, CYCLES + 1):
            c = self.c()
            load = PaymentLoad(c, threads=8, seconds=LOAD_SECONDS, tag="crash%d" % cycle).start()
            kill_at = rng.uniform(1.5, LOAD_SECONDS - 1.0)
            time.sleep(kill_at)
            self.daemon.kill9()
            self.assertTrue(load.join(60), "load threads hung after kill -9")
            with load.lock:
                acks = list(load.acks)
                unacked = list(load.unacked)
                other = list(load.other)
            statuses = {}
            for a in acks:
                statuses[a.pi()["status"]] = statuses.get(a.pi()["status"], 0) + 1
            print("cycle %d: killed at %.2f s, %d acknowledged %s, %d without reply, %d other replies"
                  % (cycle, kill_at, len(acks), statuses, len(unacked), len(other)),
                  file=sys.stderr)
            self.assertGreater(len(acks), 0, "no payment acknowledged before the kill")
            self.assertEqual([o[2] for o in other if o[2].status not in (429, 503)][:10], [],
                             "unexpected replies during load")
            all_acks.extend(acks)
            print("cycle %d: attempts left 'sent' by the kill: %s" % (cycle, self.count_sent()),
                  file=sys.stderr)

            t0 = time.monotonic()
            self.daemon.start()
            print("cycle %d: restarted on %s in %.2f s" % (cycle, self.daemon.addr,
                                                         time.monotonic() - t0), file=sys.stderr)
            c = self.c()
            states = self.check_store()
            print("cycle %d: attempts by state %s" % (cycle, states), file=sys.stderr)
            failures = parallel(all_acks, lambda a: self.check_ack(c, a))
            self.assertEqual(failures[:20], [], "%d acknowledged payments wrong after restart"
                             % len(failures))
            failures = parallel(unacked[:40], lambda u: self.check_unacked(c, u))
            self.assertEqual(failures[:20], [])
            n, captured = self.check_balance(c)
            print("cycle %d: %d PaymentIntents, %d captured, store consistent"
                  % (cycle, n, captured), file=sys.stderr)
        # keys of unacknowledged requests were retried above; ledger must still balance
        self.check_store()


class MixedCrashTest(DaemonTestCase):
    """kill -9 while captures, partial refunds and cancels are in flight, not
    only confirmations: after the restart every acknowledged capture, refund
    and cancel is there as acknowledged, each charge's amount_refunded is the
    sum of its succeeded refunds, nothing is left 'sent', and the balance is
    what was captured less what was refunded."""
    MERCHANTS = ("mix",)
    WORKERS = 6

    def worker(self, wid, stop, acks, lock):
        c = self.c("mix", timeout=10)
        n = 0
        while not stop.is_set():
            n += 1
            tag = "w%d-%d-%s" % (wid, n, uuid.uuid4().hex[:8])
            try:
                r = c.post(PI, {"amount": 5000 + n, "currency": "usd", "payment_method": "pm_card_visa",
                                "confirm": "true", "capture_method": "manual"}, idem=tag + "-c")
                if r.status != 200:
                    continue
                pi = r.json
                with lock:
                    acks.append(("authorized", pi["id"], None, pi["amount"]))
                if n % 4 == 0:
                    r = c.post(PI + "/" + pi["id"] + "/cancel", {}, idem=tag + "-x")
                    if r.status == 200:
                        with lock:
                            acks.append(("canceled", pi["id"], None, 0))
                    continue
                amt = pi["amount"] - (n % 3) * 100
                r = c.post(PI + "/" + pi["id"] + "/capture", {"amount_to_capture": amt}, idem=tag + "-k")
                if r.status != 200:
                    continue
                with lock:
                    acks.append(("captured", pi["id"], r.json["latest_charge"], amt))
                for k in range(n % 3):
                    r = c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 700 + k}, idem=tag + "-r%d" % k)
                    if r.status == 200:
                        with lock:
                            acks.append(("refund", pi["id"], r.json["id"], r.json["amount"], r.json["status"]))
            except OSError:
                time.sleep(0.05)  # the daemon is down: wait for the restart

    def test_captures_refunds_and_cancels_survive_kill_9(self):
        rng = random.Random(99)
        acks, lock = [], threading.Lock()
        for cycle in range(2):
            stop = threading.Event()
            ts = [threading.Thread(target=self.worker, args=(i, stop, acks, lock), daemon=True)
                  for i in range(self.WORKERS)]
            for t in ts:
                t.start()
            time.sleep(rng.uniform(1.5, 3.0))
            self.daemon.kill9()
            stop.set()
            for t in ts:
                t.join(30)
            self.daemon.start()
            c = self.c("mix")
            db = open_db_ro(self.daemon)
            try:
                deadline = time.monotonic() + 15
                while db.execute("SELECT count(*) FROM attempts WHERE state='sent'").fetchone()[0] and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
                self.assertEqual(db.execute("SELECT count(*) FROM attempts WHERE state='sent'").fetchone()[0], 0)
                self.assertEqual(db.execute("SELECT txn_id FROM ledger_entries GROUP BY txn_id "
                                            "HAVING sum(amount) != 0 LIMIT 5").fetchall(), [])
            finally:
                db.close()
            with lock:
                seen = list(acks)
            kinds = collections.Counter(a[0] for a in seen)
            print("mixed cycle %d: %s acknowledged" % (cycle, dict(kinds)), file=sys.stderr)
            self.assertGreater(kinds["captured"], 0)
            final = {}
            for a in seen:
                if a[0] in ("captured", "canceled"):
                    final[a[1]] = a
            for pid, a in final.items():
                got = c.get(PI + "/" + pid).json
                if a[0] == "canceled":
                    self.assertEqual(got["status"], "canceled", got)
                else:
                    self.assertEqual((got["status"], got["amount_received"]), ("succeeded", a[3]), got)
            refunds = [a for a in seen if a[0] == "refund"]
            for a in refunds:
                got = c.get("/v1/refunds/" + a[2])
                self.assertEqual(got.status, 200, got)
                self.assertEqual((got.json["amount"], got.json["status"]), (a[3], a[4]))
            # every charge's amount_refunded is the sum of its succeeded
            # refunds, each of which moved money (a partial capture or a
            # cancel releases the rest with no Refund: Stripe since
            # 2025-03-31.basil)
            by_charge = collections.defaultdict(int)
            moved = collections.defaultdict(int)
            for rf in c.list_all("/v1/refunds", max_pages=500):
                if rf["status"] == "succeeded":
                    by_charge[rf["charge"]] += rf["amount"]
                    if rf["balance_transaction"]:
                        moved[rf["charge"]] += rf["amount"]
            captured = 0
            for ch in c.list_all("/v1/charges", max_pages=500):
                if not ch["captured"]:
                    # a canceled authorization: nothing refunded
                    self.assertEqual((ch["amount_refunded"], ch["refunded"]), (0, False), ch["id"])
                    self.assertNotIn(ch["id"], by_charge)
                    continue
                self.assertEqual(ch["amount_refunded"], by_charge.get(ch["id"], 0), ch["id"])
                self.assertEqual(ch["amount_refunded"], moved.get(ch["id"], 0), ch["id"])
                self.assertLessEqual(moved.get(ch["id"], 0), ch["amount_captured"], ch["id"])
                captured += ch["amount_captured"]
            bal = c.get("/v1/balance").json
            total = sum(b["amount"] for k in ("available", "pending") for b in bal.get(k, [])
                        if b["currency"] == "usd")
            self.assertEqual(total, captured - sum(moved.values()), bal)


class ChargesApiRecoveryTest(unittest.TestCase):
    """A Charges API request (POST /v1/charges, POST /v1/charges/{id}/capture)
    whose processor call is in flight when the daemon is SIGKILLed: recovery
    settles it, and the client's retry with its Idempotency-Key replays what
    the request would have answered, a charge (the attempt keeps the reply's
    shape), not the PaymentIntent behind it."""

    def test_a_recovered_charge_is_replayed_as_a_charge(self):
        sim = Sim()
        self.addCleanup(sim.stop)
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        ini = ("[routing]\ndeadline_ms = 20000\nrecovery_interval_ms = 300\n\n"
               "[processor.slow]\ntype = restjson\nendpoint = http://%s/p/slow\n"
               "timeout_ms = 10000\nhealth_interval_ms = 0\n") % sim.rest
        d.start(config=ini)
        c = d.client("m")
        auth = c.post("/v1/charges", {"amount": 1500, "currency": "usd", "source": "tok_visa", "capture": "false"})
        self.assertEqual((auth.status, auth.json["captured"]), (200, False), auth)
        sim.faults("slow", latency_ms_min=4000, latency_ms_max=4000)
        # the reply each would have had: expanded, and with the lists a
        # pinned old Stripe-Version shows (the recovered replay was the bare
        # object: a retry broke code reading charge.balance_transaction.fee)
        old = {"Stripe-Version": "2020-08-27"}
        calls = [("/v1/charges", {"amount": 2000, "currency": "usd", "source": "tok_visa",
                                  "expand[]": "balance_transaction"}, new_key("ch"), None),
                 ("/v1/charges/%s/capture" % auth.json["id"], {"amount": 1000}, new_key("cap"), None),
                 ("/v1/payment_intents", {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
                       "expand[]": "latest_charge"}, new_key("pi"), old)]

        def fire(path, params, key, headers):
            try:
                c.request("POST", path, params, idem=key, timeout=15, headers=headers)
            except Exception:
                pass  # the kill cuts it
        threads = [threading.Thread(target=fire, args=call) for call in calls]
        for t in threads:
            t.start()
        def sent():
            db = open_db_ro(d)
            try:
                return db.execute("SELECT count(*) FROM attempts WHERE state='sent'").fetchone()[0]
            finally:
                db.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sent() < 3:  # the calls recorded as sent
            time.sleep(0.05)
        self.assertEqual(sent(), 3)
        # recorded as sent is not yet on the wire: on a loaded machine the
        # kill could come first, the processor then never saw the call, and
        # recovery rightly failed it (processing_error). The calls are held
        # there 4 s: a moment lets both arrive.
        time.sleep(1.0)
        d.kill9()
        for t in threads:
            t.join(20)
        sim.faults("slow", latency_ms_min=0, latency_ms_max=0)
        d.start(config=ini)
        c = d.client("m")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sent() > 0:  # recovery settles them
            time.sleep(0.1)
        r = c.post(*calls[0][:2], idem=calls[0][2])
        self.assertEqual((r.status, r.headers.get("Idempotent-Replayed"), r.json.get("object")),
                         (200, "true", "charge"), r)
        self.assertTrue(r.json["id"].startswith("ch_") and r.json["captured"] and r.json["paid"], r)
        bt = r.json["balance_transaction"]
        self.assertIsInstance(bt, dict, r)
        self.assertEqual((bt["object"], bt["amount"], bt["source"]), ("balance_transaction", 2000, r.json["id"]), bt)
        # the merchant's name, as on the live charge (recovery's had null)
        self.assertTrue(auth.json["calculated_statement_descriptor"], auth)
        self.assertEqual(r.json["calculated_statement_descriptor"], auth.json["calculated_statement_descriptor"], r)
        r = c.post(*calls[1][:2], idem=calls[1][2])
        self.assertEqual((r.status, r.headers.get("Idempotent-Replayed"), r.json.get("object")),
                         (200, "true", "charge"), r)
        self.assertEqual((r.json["id"], r.json["captured"], r.json["amount_captured"]),
                         (auth.json["id"], True, 1000), r)
        r = c.post(*calls[2][:2], idem=calls[2][2], headers=old)
        self.assertEqual((r.status, r.headers.get("Idempotent-Replayed"), r.json.get("status")),
                         (200, "true", "succeeded"), r)
        self.assertIsInstance(r.json["latest_charge"], dict, r)
        self.assertEqual(r.json["latest_charge"]["amount_captured"], 2500, r)
        self.assertEqual([ch["id"] for ch in r.json["charges"]["data"]], [r.json["latest_charge"]["id"]], r)


class DiskFullTest(unittest.TestCase):
    """The disk fills under load (a 48 MB tmpfs; root only): payments get a
    clean 503 store_full, /readyz says why, the daemon stays up, nothing acknowledged
    is lost; once space is back it takes payments again and recovery
    resolves the attempts whose outcome could not be written."""

    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="tp-full-")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", self.mnt],
                                               stderr=subprocess.DEVNULL).returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest("needs root to mount a small tmpfs")
        self.daemon = Daemon(root=self.mnt)

    def tearDown(self):
        self.daemon.kill9()
        subprocess.run(["umount", "-l", self.mnt])
        shutil.rmtree(self.mnt, ignore_errors=True)

    def test_full_disk_refuses_cleanly_and_recovers(self):
        d = self.daemon
        d.create_merchant("m")
        # The space guard off: this is the disk actually filling (with the
        # guard, test_disk_full.py).
        d.start(config="[store]\nmin_free_mb = 0\n")
        c = d.client("m")
        filler = os.path.join(self.mnt, "filler")
        free = shutil.disk_usage(self.mnt).free
        with open(filler, "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(0, free - 6 * 1024 * 1024))
        load = PaymentLoad(c, threads=8, seconds=30.0, tag="full").start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(o[2].status == 503 for o in list(load.other)):
            time.sleep(0.1)
        # Readiness says so while writes fail. Asked under the load: once it
        # stops, a one-page heartbeat may fit in WAL space a checkpoint freed,
        # and then the store is, truthfully, writable again for it.
        ready = None
        until = time.monotonic() + 5
        while time.monotonic() < until:
            r = Client(HOST, d.port).get("/readyz")
            ready = (r.status, (r.json or {}).get("reason"))
            if ready == (503, "store_not_writable"):
                break
            time.sleep(0.05)
        load.stop_flag.set()
        load.join()
        statuses = collections.Counter(o[2].status for o in load.other)
        self.assertGreater(statuses[503], 0, "the disk never filled: %r" % statuses)
        self.assertEqual(set(statuses), {503}, statuses)
        for o in load.other[:20]:
            self.assertEqual(o[2].json["error"]["type"], "api_error", o[2])
            self.assertEqual(o[2].json["error"].get("tp_code"), 8009, o[2])  # store_full
        self.assertIsNone(d.proc.poll(), "the daemon died")
        self.assertEqual(ready, (503, "store_not_writable"))

        os.unlink(filler)
        wait = time.monotonic() + 20
        while Client(HOST, d.port).get("/readyz").status != 200 and time.monotonic() < wait:
            time.sleep(0.2)
        r = c.post(PI, {"amount": 4100, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        self.assertEqual(r.json.get("status"), "succeeded", r)
        for a in load.acks:
            pi = a.pi()
            got = c.get("%s/%s" % (PI, pi["id"])).json
            self.assertEqual(got["status"], pi["status"], (pi["id"], got))
        # attempts sent while outcomes could not be written: resolved by recovery
        wait = time.monotonic() + 30
        while time.monotonic() < wait:
            db = open_db_ro(d)
            try:
                left = db.execute("SELECT count(*) FROM attempts WHERE state = 'sent'").fetchone()[0]
                stuck = db.execute("SELECT count(*) FROM payment_intents WHERE status = 'processing'").fetchone()[0]
            finally:
                db.close()
            if left == 0 and stuck == 0:
                break
            time.sleep(0.5)
        self.assertEqual((left, stuck), (0, 0))


if __name__ == "__main__":
    main()
