"""[store] commit_sync = pipelined keeps every guarantee of the default: the
crash test's kill -9 cycles run with the writer committing without waiting
for the disk and a second thread fdatasyncing the WAL before any reply, and
the daemon really runs in that mode."""
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import unittest
import urllib.request

# Before the daemon starts: the harness hands os.environ to it.
os.environ["TURNPIKE_STORE_COMMIT_SYNC"] = "pipelined"

import test_crash  # noqa: E402  (after the environment is set)
from harness import Daemon, main, open_db_ro, preload_env  # noqa: E402
from test_stream import RawWS  # noqa: E402


def held_commit(tc):
    """A daemon (pipelined, diskfault.so) with one customer on disk, then a
    second customer's commit made and its sync held: (daemon, the held
    POST's thread, its result dict, the hold_sync flag path, the newest
    event id before the hold)."""
    ctl = tempfile.mkdtemp(prefix="tp-hold-")
    tc.addCleanup(shutil.rmtree, ctl, True)
    d = Daemon()
    tc.addCleanup(d.cleanup)
    d.create_merchant("m")
    d.start(extra_env=preload_env(os.environ["TP_DISKFAULT_SO"], TP_DISKFAULT_DATA=os.path.realpath(d.data),
                                  TP_DISKFAULT_CTL=ctl))
    c = d.client("m")
    tc.assertEqual(c.post("/v1/customers", {"name": "before"}).status, 200)
    tc.assertEqual(len(c.get("/v1/customers").json["data"]), 1)  # nothing held: answered at once
    since = c.get("/v1/events", {"limit": 1}).json["data"][0]["id"]
    hold = os.path.join(ctl, "hold_sync")
    open(hold, "w").close()
    tc.addCleanup(lambda: os.path.exists(hold) and os.unlink(hold))
    got = {}
    t = threading.Thread(target=lambda: got.update(r=d.client("m").post("/v1/customers", {"name": "held"})))
    t.start()

    def committed():
        db = open_db_ro(d)
        try:
            return db.execute("SELECT count(*) FROM customers").fetchone()[0] >= 2
        finally:
            db.close()
    deadline = time.monotonic() + 20
    while not committed() and time.monotonic() < deadline:
        time.sleep(0.05)
    tc.assertTrue(committed(), "the held commit never showed")
    return d, t, got, hold, since


class PipelinedCrashTest(test_crash.CrashTest):

    def test_mode_is_pipelined(self):
        c = self.c()
        r = c.post("/v1/payment_intents", {"amount": 1234, "currency": "usd", "confirm": "true",
                                           "payment_method": "pm_card_visa"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded")
        with urllib.request.urlopen("http://%s/metrics" % self.daemon.addr, timeout=10) as resp:
            text = resp.read().decode()
        counts = [line for line in text.splitlines()
                  if line.startswith("turnpike_store_sync_duration_seconds_count")]
        self.assertTrue(counts, "no sync metric: not running pipelined")
        self.assertGreater(float(counts[0].split()[-1]), 0)


@unittest.skipUnless(os.environ.get("TP_DISKFAULT_SO"), "TP_DISKFAULT_SO (the diskfault.so test shim) not set")
class UnsyncedEventsAreNotSent(unittest.TestCase):
    """Readers see a pipelined commit before its fdatasync. The stream's
    resume sent such events, and a power cut then erased events already
    sent (a subscriber held a customer, charge or payment that never
    existed); they come live, once on disk. The disk is held slow with
    diskfault.so's hold_sync."""

    def test_a_resume_sends_no_event_before_it_is_on_disk(self):
        d, t, got, hold, since = held_commit(self)
        ws = RawWS(d.port, d.merchants["m"]["secret_key"])
        self.addCleanup(ws.close)
        ws.send(0x1, ('{"type":"subscribe","events":["*"],"last_event_id":"%s"}' % since).encode())
        seen = []
        ws.sock.settimeout(0.3)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                op, payload = ws.frame()
            except (socket.timeout, TimeoutError):
                continue
            if op == 0x1:
                m = json.loads(payload)
                if m.get("type") == "event":
                    seen.append(m["event"]["type"])
        self.assertEqual(seen, [], "events sent while not on disk")
        os.unlink(hold)
        t.join(30)
        self.assertEqual(got["r"].status, 200, got)
        ws.sock.settimeout(10)
        m = json.loads(ws.until(0x1))
        while m.get("type") != "event":
            m = json.loads(ws.until(0x1))
        self.assertEqual((m["event"]["type"], m["event"]["data"]["object"]["id"]),
                         ("customer.created", got["r"].json["id"]), m)


@unittest.skipUnless(os.environ.get("TP_DISKFAULT_SO"), "TP_DISKFAULT_SO (the diskfault.so test shim) not set")
class UnsyncedReadsAreHeld(unittest.TestCase):
    """A reply built from reads (a GET, a list, the events) is held until
    every commit it may have seen is on disk: a GET showed a customer, a
    payment, its charge and events that a power cut then erased. The disk
    is held slow with diskfault.so's hold_sync."""

    def test_a_read_waits_for_the_sync_of_what_it_saw(self):
        d, t, got, hold, _ = held_commit(self)
        reads = {}

        def read(name, path):
            reads[name] = d.client("m", timeout=30).get(path)
        readers = [threading.Thread(target=read, args=(n, p))
                   for n, p in (("list", "/v1/customers"), ("events", "/v1/events"))]
        for r in readers:
            r.start()
        time.sleep(1.0)
        self.assertEqual(reads, {}, "a read answered with a commit not on disk")
        # what shows no account's data is not held: the liveness and
        # readiness probes, and a request refused before its key is taken
        quick = d.client(None, timeout=3)
        self.assertEqual(quick.get("/healthz").status, 200)
        self.assertIn(quick.get("/readyz").status, (200, 503))
        self.assertEqual(quick.get("/v1/customers").status, 401)
        os.unlink(hold)
        for r in readers + [t]:
            r.join(30)
        self.assertEqual(got["r"].status, 200, got)
        names = [x["name"] for x in reads["list"].json["data"]]
        self.assertIn("held", names)
        self.assertEqual(reads["events"].status, 200, reads["events"])


if __name__ == "__main__":
    main()
