"""Funds become available: a balance transaction stays pending for
[balance] available_after_seconds (Stripe: 2 days; 3 s here), then the
balance sweep shows it available and moves its amount from the pending to
the available balance by a balanced ledger transaction, once, also across a
restart (its cursor commits with the funds it moves). Stripe's
bypass-pending test card (4000000000000077) is available at once, and so is
a refund, which comes out of the available balance. At every
point the balance equals the sum of the balance transactions in each
status."""
import time

from harness import DaemonTestCase, main, open_db_ro

PI = "/v1/payment_intents"


class BalanceAvailability(DaemonTestCase):
    MERCHANTS = ("m", "n", "many", "busy", "quiet", "raised")

    @classmethod
    def config(cls):
        return "[balance]\navailable_after_seconds = 3\n[idempotency]\npurge_interval_ms = 100\n"

    def pay(self, amount, pm="pm_card_visa", merchant=None, currency="usd"):
        r = self.c(merchant).post(PI, {"amount": amount, "currency": currency, "confirm": "true",
                                       "payment_method": pm})
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        return r.json

    def balance(self, merchant=None, currency="usd"):
        b = self.c(merchant).get("/v1/balance").json
        pick = lambda k: sum(x["amount"] for x in b[k] if x["currency"] == currency)
        return pick("available"), pick("pending")

    def bts(self, merchant=None):
        return self.c(merchant).list_all("/v1/balance_transactions")

    def test_balance_transactions_are_described_as_stripe_does(self):
        """A charge's is the charge's description; a refund's REFUND FOR
        CHARGE (that description), or REFUND FOR PAYMENT without one; a
        returned refund's REFUND FAILURE."""
        c = self.c("n")
        for desc, want in (("Order 42 \u00e9", "REFUND FOR CHARGE (Order 42 \u00e9)"), (None, "REFUND FOR PAYMENT")):
            body = {"amount": 900, "currency": "usd", "confirm": "true", "payment_method": "pm_card_refundFail"}
            if desc:
                body["description"] = desc
            pi = c.post(PI, body).json
            ch = c.get("/v1/charges/" + pi["latest_charge"]).json
            bt = c.get("/v1/balance_transactions/" + ch["balance_transaction"]).json
            self.assertEqual(bt["description"], desc, bt)
            re = c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 300}).json
            bt = c.get("/v1/balance_transactions/" + re["balance_transaction"]).json
            self.assertEqual((bt["type"], bt["description"]), ("refund", want), bt)
            re = c.get("/v1/refunds/" + re["id"]).json
            bt = c.get("/v1/balance_transactions/" + re["failure_balance_transaction"]).json
            self.assertEqual((bt["type"], bt["description"]), ("refund_failure", "REFUND FAILURE"), bt)
        # the older path of balance transactions (stripe-php 6, stripe-python
        # 2 build it) answers the same
        self.assertEqual(c.get("/v1/balance/history/" + bt["id"]).json, bt)
        self.assertEqual(c.get("/v1/balance/history", {"limit": 3}).json["data"],
                         c.get("/v1/balance_transactions", {"limit": 3}).json["data"])

    def test_the_balance_names_every_currency_held(self):
        """One entry per currency, however many (64 were shown at most)."""
        curs = ("aed aud bgn brl cad chf czk dkk eur gbp hkd huf inr jpy krw mxn myr nok nzd pln ron sek sgd "
                "thb usd all amd ang aoa ars awg azn bam bbd bdt bmd bnd bob bsd bwp bzd cny cop crc cve dop "
                "dzd egp etb fjd gel gip gmd gtq gyd hnl htg idr ils jmd kes kgs khr kyd kzt lak lkr lrd").split()
        self.assertGreater(len(curs), 64)
        for cur in curs:
            self.pay(500000, merchant="many", currency=cur)
        b = self.c("many").get("/v1/balance").json
        self.assertEqual(sorted(x["currency"] for x in b["pending"]), sorted(curs))
        self.assertEqual(sorted(x["currency"] for x in b["available"]), sorted(curs))

    def assertBalanceMatchesTransactions(self, merchant=None):
        """available / pending equal the balance transactions in that status,
        every ledger transaction sums to zero."""
        bts = self.bts(merchant)
        for cur in {t["currency"] for t in bts}:
            want = tuple(sum(t["amount"] for t in bts if t["currency"] == cur and t["status"] == s)
                         for s in ("available", "pending"))
            self.assertEqual(self.balance(merchant, cur), want, cur)
        db = open_db_ro(self.daemon)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id, "
                                        "currency HAVING sum(amount) != 0)").fetchone()[0], 0)
        finally:
            db.close()

    def wait_available(self, bt_id, merchant=None, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            bt = self.c(merchant).get("/v1/balance_transactions/" + bt_id).json
            if bt["status"] == "available":
                return bt
            self.assertLess(time.monotonic(), deadline, bt)
            time.sleep(0.2)

    def test_one_merchant_in_many_currencies_holds_up_no_one(self):
        """A sweep's change set takes 8 currencies: a merchant paid in 9,
        interleaved, filled one with 8 rows, so its funds became available
        at ~8 a second and every merchant after it waited behind. Now a
        sweep commits set after set, and a merchant not done when they run
        out lets the others go first."""
        curs = ["usd", "eur", "gbp", "jpy", "cad", "aud", "chf", "sek", "nok"]
        for i in range(162):
            self.pay(1000, merchant="busy", currency=curs[i % len(curs)])
        quiet = self.pay(700, merchant="quiet")
        ch = self.c("quiet").get("/v1/charges/" + quiet["latest_charge"]).json
        t0 = time.monotonic()
        self.wait_available(ch["balance_transaction"], merchant="quiet", timeout=10)
        deadline = time.monotonic() + 10
        while True:
            b = self.c("busy").get("/v1/balance").json
            if not any(x["amount"] for x in b["pending"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual([x for x in b["pending"] if x["amount"]], [], b)
        self.assertEqual(sorted((x["currency"], x["amount"]) for x in b["available"]),
                         sorted((c, 18000) for c in curs))
        self.assertLess(time.monotonic() - t0, 10)
        self.assertBalanceMatchesTransactions("busy")

    def test_payouts_are_an_empty_list_and_refused(self):
        """No payouts (payouts_enabled: false): the list is empty, not an
        unknown URL; a payout is refused with payouts_not_allowed; an id or
        a cursor names nothing. /v1/balance/history names its own url."""
        c = self.c("n")
        r = c.get("/v1/payouts", {"limit": 3, "status": "paid", "expand[]": "data.destination"})
        self.assertEqual((r.status, r.json), (200, {"object": "list", "data": [], "has_more": False,
                                                    "url": "/v1/payouts"}), r)
        self.assertStripeError(c.get("/v1/payouts", {"limit": 0}), 400, "invalid_request_error")
        self.assertStripeError(c.get("/v1/payouts", {"bogus": 1}), 400, "invalid_request_error")
        err = self.assertStripeError(c.get("/v1/payouts", {"starting_after": "po_1"}), 400, "invalid_request_error")
        self.assertEqual(err["param"], "starting_after")
        err = self.assertStripeError(c.post("/v1/payouts", {"amount": 100, "currency": "usd"}), 400,
                                     "invalid_request_error", "payouts_not_allowed")
        for r in (c.get("/v1/payouts/po_123"), c.post("/v1/payouts/po_123/cancel", {}),
                  c.post("/v1/payouts/po_123", {"metadata[a]": "b"})):
            err = self.assertStripeError(r, 404, "invalid_request_error", "resource_missing")
            self.assertEqual(err["message"], "No such payout: 'po_123'", err)
        self.assertEqual(c.get("/v1/balance/history").json["url"], "/v1/balance/history")
        self.assertEqual(c.get("/v1/balance_transactions").json["url"], "/v1/balance_transactions")

    def test_funds_move_from_pending_to_available_once(self):
        a0, p0 = self.balance()
        pi = self.pay(1000)
        ch = self.c().get("/v1/charges/" + pi["latest_charge"]).json
        bt = self.c().get("/v1/balance_transactions/" + ch["balance_transaction"]).json
        self.assertEqual((bt["status"], bt["available_on"] - bt["created"]), ("pending", 3), bt)  # (3 s: with created in whole seconds, 2 left as little as 1 s to read it pending)
        self.assertEqual(self.balance(), (a0, p0 + 1000))
        self.wait_available(bt["id"])
        self.assertEqual(self.balance(), (a0 + 1000, p0))
        # announced (Stripe's balance.available) with the Balance as it left it
        ev = self.c().get("/v1/events", {"type": "balance.available", "limit": 1}).json["data"]
        self.assertEqual(len(ev), 1)
        obj = ev[0]["data"]["object"]
        self.assertEqual(obj["object"], "balance")
        usd = lambda side: sum(f["amount"] for f in obj[side] if f["currency"] == "usd")
        self.assertEqual((usd("available"), usd("pending")), (a0 + 1000, p0), obj)
        self.assertIsNone(ev[0]["request"]["id"])
        # The balance is reports:read's: a payments:read key, which reads
        # events, does not see these (list or by id).
        import json as _json
        import subprocess
        from harness import BIN
        p = subprocess.run([BIN, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes", "payments:read", "--data", self.daemon.data],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        rk = self.c()
        rk.key = _json.loads(p.stdout)["restricted_key"]
        self.assertEqual(rk.get("/v1/events", {"type": "balance.available"}).json["data"], [])
        listed = rk.get("/v1/events", {"limit": 100}).json["data"]
        self.assertFalse(any(e["type"].startswith("balance.") for e in listed), listed)
        # page by page (as the SDKs' auto-pagination does): every page that
        # says has_more holds an event to go on from, and all are there
        seen, after = [], None
        for _ in range(200):
            page = rk.get("/v1/events", dict({"limit": 1}, **({"starting_after": after} if after else {}))).json
            self.assertTrue(page["data"] or not page["has_more"], page)
            seen += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        self.assertEqual(seen, [e["id"] for e in listed])
        self.assertStripeError(rk.get("/v1/events/" + ev[0]["id"]), 403, "permission_error")
        self.assertEqual(rk.get("/v1/events", {"type": "charge.succeeded", "limit": 1}).status, 200)
        # a refund comes out of the available balance at once (Stripe: "refunds
        # use your available balance"); the sweep leaves it alone
        refund = self.c().post("/v1/refunds", {"payment_intent": pi["id"], "amount": 300}).json
        rbt = self.c().get("/v1/balance_transactions/" + refund["balance_transaction"]).json
        self.assertEqual((rbt["amount"], rbt["status"], rbt["available_on"]), (-300, "available", rbt["created"]))
        self.assertEqual(self.balance(), (a0 + 700, p0))
        self.assertBalanceMatchesTransactions()
        time.sleep(1.0)  # more sweeps find nothing more to move
        a1, p1 = self.balance()
        self.assertEqual(a1 - a0 + p1 - p0, 700)
        self.assertBalanceMatchesTransactions()
        # across a restart the cursor holds: nothing is moved twice
        later = self.pay(450)
        self.daemon.stop()
        self.daemon.start(config=self.config())
        ch = self.c().get("/v1/charges/" + later["latest_charge"]).json
        self.wait_available(ch["balance_transaction"])
        time.sleep(1.0)
        self.assertBalanceMatchesTransactions()
        a2, p2 = self.balance()
        self.assertEqual(a2 - a0 + p2 - p0, 1150)

    def test_raising_the_delay_does_not_hold_funds_already_due(self):
        """A row made under the old delay comes due at its own available_on:
        after the delay was raised the sweep held it (and every later one)
        for the new delay, two days after a test value of seconds."""
        a0, p0 = self.balance("raised")
        pi = self.pay(1300, merchant="raised")
        ch = self.c("raised").get("/v1/charges/" + pi["latest_charge"]).json
        self.daemon.stop()
        try:
            self.daemon.start(config=self.config().replace("available_after_seconds = 3",
                                                           "available_after_seconds = 600"))
            bt = self.wait_available(ch["balance_transaction"], "raised", timeout=15)
            self.assertEqual(bt["available_on"] - bt["created"], 3, bt)
            self.assertEqual(self.balance("raised"), (a0 + 1300, p0))
            # one made now waits for the new delay
            later = self.pay(700, merchant="raised")
            lbt = self.c("raised").get("/v1/charges/" + later["latest_charge"],
                                       {"expand[]": "balance_transaction"}).json["balance_transaction"]
            self.assertEqual((lbt["status"], lbt["available_on"] - lbt["created"]), ("pending", 600), lbt)
            time.sleep(3)
            self.assertEqual(self.balance("raised"), (a0 + 1300, p0 + 700))
            self.assertBalanceMatchesTransactions("raised")
        finally:
            self.daemon.stop()
            self.daemon.start(config=self.config())

    def test_the_bypass_pending_card_is_available_at_once(self):
        a0, p0 = self.balance("n", "eur")
        pi = self.pay(2500, pm="pm_card_bypassPending", merchant="n", currency="eur")
        ch = self.c("n").get("/v1/charges/" + pi["latest_charge"], {"expand[]": "balance_transaction"}).json
        bt = ch["balance_transaction"]
        self.assertEqual((bt["status"], bt["available_on"]), ("available", bt["created"]), bt)
        self.assertEqual(self.balance("n", "eur"), (a0 + 2500, p0))
        self.assertBalanceMatchesTransactions("n")


if __name__ == "__main__":
    main()
