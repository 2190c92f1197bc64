"""A wall clock stepped back across a restart (an NTP step, a VM restored
from a snapshot). Ids carry their creation time and sort by it: lists page
by id, the event stream resumes after `last_event_id`, webhook scans start
from a floor id. So ids made after the restart must still sort above every
stored one, or new events would hide behind old ones. The daemon is
restarted with tests/integration/clockshift.c preloaded, its clock an hour
behind: the newest payment and its events must come first in the lists, and
"newer than the last event seen before" must find them."""
import os
import unittest

from harness import Daemon, new_key, preload_env, main

PI = "/v1/payment_intents"
SO = os.environ.get("TP_CLOCKSHIFT_SO", "")


@unittest.skipUnless(SO, "TP_CLOCKSHIFT_SO (the clockshift.so test shim; meson passes it) not set")
class ClockStepTest(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon()
        self.daemon.create_merchant("m")

    def tearDown(self):
        self.daemon.cleanup()

    def pay(self, c, amount):
        r = c.post(PI, {"amount": amount, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"},
                   idem=new_key("clk"))
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r.json)
        return r.json

    def test_a_card_source_is_valid_through_its_last_month_and_updates_after(self):
        """A card source's update checked the stored expiry, whatever was sent,
        against an average-length year: in the last hours of December a card
        valid through 12/YYYY could not even be renamed, and an expired one
        took no name or metadata (refused naming exp_year)."""
        import calendar
        import time
        d = self.daemon
        year = time.gmtime().tm_year
        eve = calendar.timegm((year, 12, 31, 22, 0, 0))  # two hours before New Year, UTC
        d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=int(eve - time.time())))
        c = d.client("m")
        tok = c.post("/v1/tokens", {"card[number]": "4242424242424242", "card[exp_month]": "12",
                                    "card[exp_year]": str(year), "card[cvc]": "123"})
        self.assertEqual(tok.status, 200, tok)
        cus = c.post("/v1/customers", {"source": tok.json["id"]}).json
        src = "/v1/customers/%s/sources/%s" % (cus["id"], cus["default_source"])
        r = c.post(src, {"name": "Jo"})
        self.assertEqual((r.status, r.json.get("name")), (200, "Jo"), r)
        self.assertEqual(d.stop(), 0)
        d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=int(eve + 60 * 86400 - time.time())))
        c = d.client("m")
        r = c.post(src, {"name": "Jo Later", "metadata[k]": "v"})
        self.assertEqual((r.status, r.json.get("name"), r.json.get("metadata")), (200, "Jo Later", {"k": "v"}), r)
        r = c.post(src, {"exp_year": str(year)})
        self.assertEqual((r.status, r.json["error"]["code"], r.json["error"]["param"]),
                         (402, "invalid_expiry_year", "exp_year"), r)
        r = c.post(src, {"exp_month": "13"})
        self.assertEqual((r.status, r.json["error"]["param"]), (402, "exp_month"), r)
        r = c.post(src, {"exp_month": "3", "exp_year": str(year + 3)})
        self.assertEqual((r.status, r.json["exp_month"], r.json["exp_year"]), (200, 3, year + 3), r)

    def test_a_revoked_token_stays_revoked_across_a_clock_stepped_forward_and_back(self):
        """A revocation clears the rows of tokens past their expiry; on a
        clock two hours ahead that cleared a token still live, which came
        back once the clock was right again. Rows now go a week after."""
        import base64
        import json
        import subprocess
        import urllib.parse
        from harness import BIN, Client
        d = self.daemon
        cl = json.loads(subprocess.run([BIN, "oauth-client", "create", "--data", d.data, "--merchant",
                                        d.merchants["m"]["id"], "--scopes", "payments:read"],
                                       capture_output=True, text=True, check=True).stdout)
        q = urllib.parse.quote_plus
        h = {"Authorization": "Basic " + base64.b64encode(
            ("%s:%s" % (q(cl["client_id"]), q(cl["client_secret"]))).encode()).decode()}
        cfg = "[oauth]\nissuer = https://tp.test\n"

        def token(anon):
            r = anon.post("/oauth/token", {"grant_type": "client_credentials"}, headers=h, key=None)
            self.assertEqual(r.status, 200, r)
            return r.json["access_token"]
        d.start(config=cfg)
        anon = Client(d.host, d.port, key=None)
        t1 = token(anon)
        self.assertEqual(anon.post("/oauth/revoke", {"token": t1}, headers=h, key=None).status, 200)
        self.assertEqual(Client(d.host, d.port, key=t1).get(PI).status, 401)
        self.assertEqual(d.stop(), 0)
        d.start(config=cfg, extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=7200))
        anon = Client(d.host, d.port, key=None)
        self.assertEqual(anon.post("/oauth/revoke", {"token": token(anon)}, headers=h, key=None).status, 200)
        self.assertEqual(d.stop(), 0)
        d.start(config=cfg)
        self.assertEqual(Client(d.host, d.port, key=t1).get(PI).status, 401)
        self.assertEqual(d.stop(), 0)

    def test_a_saved_card_that_has_lapsed_since_is_declined_expired(self):
        """A card saved in its last month is declined expired_card once that
        month is over, as its issuer would (it was approved)."""
        import time
        from harness import card
        d = self.daemon
        d.start()
        c = d.client("m")
        t = time.gmtime()
        cus = c.post("/v1/customers", {"name": "lapse"}).json
        pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                            "card[exp_month]": t.tm_mon, "card[exp_year]": t.tm_year,
                                            "card[cvc]": "123"})
        self.assertEqual(pm.status, 200, pm)
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm.json["id"], {"customer": cus["id"]}).status, 200)
        params = {"amount": 1000, "currency": "usd", "customer": cus["id"], "payment_method": pm.json["id"],
                  "confirm": "true", "off_session": "true"}
        self.assertEqual(c.post(PI, params).json["status"], "succeeded")
        self.assertEqual(d.stop(), 0)
        d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=40 * 86400))
        c = d.client("m")
        r = c.post(PI, params)
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"]["code"], "expired_card", r.json)
        # nor does a SetupIntent's check of it pass (it succeeded, and every payment after it failed)
        si = c.post("/v1/setup_intents", {"customer": cus["id"], "payment_method": pm.json["id"], "confirm": "true"})
        self.assertEqual(si.status, 402, si)
        self.assertEqual(si.json["error"]["code"], "expired_card", si.json)
        self.assertEqual(si.json["error"]["setup_intent"]["status"], "requires_payment_method", si.json)
        self.assertEqual(d.stop(), 0)

    def test_evidence_submitted_after_due_by_is_past_due(self):
        """Stripe's evidence_details.past_due: "whether the last evidence
        submission was submitted past the due date" (7 days here)."""
        d = self.daemon
        d.start()
        c = d.client("m")
        dps = []
        for _ in range(2):
            r = c.post(PI, {"amount": 2000, "currency": "usd", "confirm": "true",
                            "payment_method": "pm_card_createDispute"})
            self.assertEqual(r.status, 200, r)
            dps.append(c.get("/v1/disputes", {"charge": r.json["latest_charge"]}).json["data"][0])
        r = c.post("/v1/disputes/" + dps[0]["id"], {"evidence[uncategorized_text]": "on time"})
        self.assertEqual((r.status, r.json["evidence_details"]["past_due"]), (200, False), r)
        self.assertEqual(d.stop(), 0)
        d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=8 * 86400))
        c = d.client("m")
        r = c.post("/v1/disputes/" + dps[1]["id"], {"evidence[uncategorized_text]": "late"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "under_review", r)
        self.assertTrue(r.json["evidence_details"]["past_due"], r)
        self.assertEqual(r.json["evidence_details"]["submission_count"], 1, r)
        self.assertFalse(c.get("/v1/disputes/" + dps[0]["id"]).json["evidence_details"]["past_due"])
        self.assertEqual(d.stop(), 0)

    def test_funds_made_ahead_of_the_clock_do_not_hold_later_ones(self):
        """A balance transaction made while the clock was an hour ahead is
        due an hour from now once the clock is right again; one made after
        it becomes available at its own available_on, not behind it (the
        sweep went by the time in the ids, which ran ahead)."""
        import time
        d = self.daemon
        cfg = "[balance]\navailable_after_seconds = 2\n[idempotency]\npurge_interval_ms = 100\n"
        d.start(config=cfg, extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=3600))
        ahead = self.pay(d.client("m"), 777)
        self.assertEqual(d.stop(), 0)
        d.start(config=cfg)
        c = d.client("m")
        now = self.pay(c, 1000)
        # more than a sweep's page (500) after it: the row made ahead holds none of them
        import threading
        def payer():
            cc = d.client("m")
            for _ in range(130):
                r = cc.post(PI, {"amount": 100, "currency": "usd", "confirm": "true",
                                 "payment_method": "pm_card_visa"})
                self.assertEqual(r.status, 200, r)
        threads = [threading.Thread(target=payer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        def bt_of(pi):
            ch = c.get("/v1/charges/" + pi["latest_charge"]).json
            return c.get("/v1/balance_transactions/" + ch["balance_transaction"]).json
        deadline = time.monotonic() + 20
        want = ([1000 + 520 * 100], [777])
        while time.monotonic() < deadline:
            bal = c.get("/v1/balance").json
            got = ([b["amount"] for b in bal["available"]], [b["amount"] for b in bal["pending"]])
            if got == want:
                break
            time.sleep(0.3)
        self.assertEqual(got, want, bal)
        b = bt_of(now)
        self.assertEqual(b["status"], "available", b)
        self.assertLessEqual(b["available_on"], time.time() + 1, b)
        self.assertEqual(bt_of(ahead)["status"], "pending")
        self.assertEqual(d.stop(), 0)

    def test_periodic_work_waits_on_the_monotonic_clock(self):
        """The shim moves the process's wall clock and not the kernel's: to
        a thread that waits for a wall-clock deadline that is the clock
        stepped back while it waited. The heartbeat (and with it /readyz),
        the log buffer and housekeeping wait on the monotonic clock, so a
        step changes nothing for them: /readyz stays ready, no heartbeat
        busy loop."""
        import time
        d = self.daemon
        for shift in (3600, -3600):
            d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=shift))
            c = d.client("m")
            deadline = time.monotonic() + 7
            while time.monotonic() < deadline:
                r = c.get("/readyz", key=None)
                self.assertEqual(r.status, 200, (shift, r))
                time.sleep(0.5)
            m = c.get("/metrics", key=None).body.decode()
            commits = sum(float(l.split()[-1]) for l in m.splitlines()
                          if l.startswith("turnpike_store_commit_duration_seconds_count"))
            self.assertLess(commits, 200, (shift, "the heartbeat spun"))
            self.assertEqual(d.stop(), 0)

    def test_ids_after_a_restart_on_a_clock_stepped_back_sort_above_the_stored_ones(self):
        d = self.daemon
        d.start()
        c = d.client("m")
        old = self.pay(c, 500)
        last_seen = c.get("/v1/events", {"limit": 1}).json["data"][0]["id"]
        self.assertEqual(d.stop(), 0)

        d.start(extra_env=preload_env(SO, TP_CLOCK_SHIFT_S=-3600))
        c = d.client("m")
        new = self.pay(c, 600)
        self.assertLess(new["created"], old["created"] - 3000)  # the clock really is an hour behind
        self.assertGreater(new["id"], old["id"])
        self.assertEqual(c.get(PI, {"limit": 1}).json["data"][0]["id"], new["id"])

        # Events newer than the last one seen before the restart: the new
        # payment's, and they come first in the list.
        newer = c.get("/v1/events", {"ending_before": last_seen, "limit": 100}).json["data"]
        objs = {e["data"]["object"]["id"] for e in newer}
        self.assertIn(new["id"], objs, [e["type"] for e in newer])
        self.assertNotIn(old["id"], objs)
        self.assertTrue(all(e["id"] > last_seen for e in newer))
        first = c.get("/v1/events", {"limit": 1}).json["data"][0]
        self.assertEqual(first["data"]["object"]["id"] if first["type"].startswith("payment_intent")
                         else first["data"]["object"].get("payment_intent"), new["id"], first)
        # A created range bounds the ids from below (src/store/sqlite/sqlite.c,
        # list_id_floor): the payments made behind the clock carry ids ahead
        # of their created, and both still answer a range that holds them.
        for since, want in [(new["created"], {new["id"], old["id"]}), (old["created"], {old["id"]}),
                            (new["created"] + 1, {old["id"]}), (old["created"] + 1, set())]:
            got = {p["id"] for p in c.get(PI, {"created[gte]": since, "limit": 100}).json["data"]}
            self.assertEqual(got, want, since)
        both = c.get("/v1/events", {"created[gte]": new["created"], "limit": 100}).json["data"]
        self.assertEqual({e["data"]["object"].get("id") for e in both if e["type"] == "payment_intent.succeeded"},
                         {new["id"], old["id"]})
        self.assertIn('"clock_behind_store"', d.log_text())
        # An upper created bound: ids ran ahead of the clock here, so they
        # no longer bound it (the mark is kept in the store's meta table).
        def upto(client, t):
            return {p["id"] for p in client.get(PI, {"created[lte]": t, "limit": 100}).json["data"]}
        self.assertEqual(upto(c, new["created"]), {new["id"]})
        self.assertEqual(upto(c, old["created"]), {new["id"], old["id"]})
        self.assertEqual(upto(c, new["created"] - 1), set())
        # ... and after a restart on a clock that is right again, the mark is
        # read back: the payment made behind the clock is still found.
        self.assertEqual(d.stop(), 0)
        d.start()
        c = d.client("m")
        self.assertEqual(upto(c, new["created"]), {new["id"]})
        self.assertEqual(upto(c, old["created"]), {new["id"], old["id"]})


if __name__ == "__main__":
    main()
