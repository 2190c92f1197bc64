"""Events are kept for [events] retention_seconds (Stripe keeps them 30
days), then deleted with the finished webhook deliveries about them. The
payments themselves, their charges and the ledger stay; an event a webhook
delivery is still owed for stays until the delivery is done."""
import http.server
import socket
import threading
import time
import unittest

from harness import Daemon, main, open_db_ro

PI = "/v1/payment_intents"
WE = "/v1/webhook_endpoints"
RETENTION_S = 3

CONFIG = """[events]
retention_seconds = %d
purge_interval_ms = 200
[webhooks]
retry_base_ms = 60000
retry_max_ms = 60000
scan_interval_ms = 200
timeout_ms = 1500
connect_timeout_ms = 1000
stop_wait_ms = 1000
""" % RETENTION_S


class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


_held = []


def closed_port():
    """A port that refuses connections for the whole run: bound, never
    listening, and held (closed, another process could take it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _held.append(s)
    return s.getsockname()[1]


def pay(c, amount):
    r = c.post(PI, {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
    assert r.status == 200, r
    return r.json


def event_ids(c):
    return [e["id"] for e in c.list_all("/v1/events")]


class EventRetentionTest(unittest.TestCase):
    def setUp(self):
        self.recv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=self.recv.serve_forever, daemon=True).start()
        self.addCleanup(self.recv.server_close)
        self.addCleanup(self.recv.shutdown)
        self.d = Daemon()
        for m in ("plain", "hooked", "owed"):
            self.d.create_merchant(m)
        self.d.start(config=CONFIG)
        self.addCleanup(self.d.cleanup)

    def db_count(self, sql, *args):
        db = open_db_ro(self.d)
        try:
            return db.execute(sql, args).fetchone()[0]
        finally:
            db.close()

    def wait(self, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.2)
        return pred()

    def test_old_events_go_and_payments_stay(self):
        plain, hooked, owed = self.d.client("plain"), self.d.client("hooked"), self.d.client("owed")
        ep = hooked.post(WE, {"url": "http://127.0.0.1:%d/ok" % self.recv.server_address[1],
                              "enabled_events": ["*"]})
        self.assertEqual(ep.status, 200, ep)
        dead = owed.post(WE, {"url": "http://127.0.0.1:%d/dead" % closed_port(),
                              "enabled_events": ["payment_intent.succeeded"]})
        self.assertEqual(dead.status, 200, dead)
        old = {m: [pay(c, 1000 + i) for i in range(3)]
               for m, c in (("plain", plain), ("hooked", hooked), ("owed", owed))}
        old_events = {m: event_ids(c) for m, c in (("plain", plain), ("hooked", hooked), ("owed", owed))}
        for m, ids in old_events.items():
            self.assertGreaterEqual(len(ids), 9, m)  # created, charge.succeeded, succeeded per payment
        # the delivered webhooks are on record, and the dead endpoint's are owed
        self.assertTrue(self.wait(lambda: self.db_count(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint=? AND state='succeeded'",
            ep.json["id"]) >= len(old_events["hooked"])), self.d.log_tail())
        self.assertTrue(self.wait(lambda: self.db_count(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint=? AND state='pending'", dead.json["id"]) == 3))
        balance_before = plain.get("/v1/balance").json
        time.sleep(RETENTION_S + 0.5)
        new = pay(plain, 5000)

        # the old events of both merchants without owed deliveries are deleted ...
        def gone(m, c):
            return all(c.get("/v1/events/" + e).status == 404 for e in old_events[m])
        self.assertTrue(self.wait(lambda: gone("plain", plain) and gone("hooked", hooked)), self.d.log_tail())
        left = event_ids(plain)
        self.assertTrue(left, "the new payment's events were deleted too")
        self.assertTrue(all(e not in old_events["plain"] for e in left))
        self.assertIn(new["id"], {e["data"]["object"].get("id") for e in plain.list_all("/v1/events")})
        # ... with the finished deliveries and attempts about them
        self.assertTrue(self.wait(lambda: self.db_count(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint=?", ep.json["id"]) == 0))
        self.assertTrue(self.wait(lambda: self.db_count(
            "SELECT count(*) FROM webhook_attempts WHERE endpoint=?", ep.json["id"]) == 0))
        # the payments, their charges and the ledger are untouched
        for m, c in (("plain", plain), ("hooked", hooked)):
            for pi in old[m]:
                got = c.get(PI + "/" + pi["id"])
                self.assertEqual(got.status, 200, got)
                self.assertEqual(got.json["status"], "succeeded")
                self.assertEqual(c.get("/v1/charges/" + pi["latest_charge"]).status, 200)
        bal = plain.get("/v1/balance").json
        def usd(b):
            return sum(x["amount"] for k in ("available", "pending") for x in b.get(k, []) if x["currency"] == "usd")
        self.assertGreater(usd(bal), usd(balance_before))  # the new payment, on top of the old ones
        self.assertEqual(len(plain.list_all("/v1/balance_transactions")), 4)
        # the merchant whose endpoint is still owed the old payment_intent.succeeded
        # events keeps every event from the first owed one on
        owed_ids = [e["id"] for e in owed.list_all("/v1/events", {"type": "payment_intent.succeeded"})]
        self.assertEqual(len(owed_ids), 3)
        first_owed = min(owed_ids)
        self.assertEqual(sorted(event_ids(owed)), sorted(e for e in old_events["owed"] if e >= first_owed))
        self.assertEqual(self.db_count(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint=? AND state='pending'", dead.json["id"]), 3)
        # the oldest owed event is found in the pending rows' own index, in
        # one lookup, not by walking every pending row of the endpoint (an
        # endpoint down for days owes millions; the purge asks every second)
        db = open_db_ro(self.d)
        try:
            plan = " ".join(r[-1] for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT MIN(d.event) FROM webhook_deliveries d WHERE d.endpoint = ? "
                "AND d.state = 'pending'", (dead.json["id"],)))
        finally:
            db.close()
        self.assertIn("webhook_deliveries_pending", plan)
        # until the endpoint goes: then nothing is owed and they are deleted too
        self.assertEqual(owed.delete(WE + "/" + dead.json["id"]).status, 200)
        self.assertTrue(self.wait(lambda: event_ids(owed) == []), self.d.log_tail())


if __name__ == "__main__":
    main()
