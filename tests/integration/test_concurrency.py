"""Many requests at once on one object, each with its own Idempotency-Key
(so none is a replay): whatever the interleaving, money moves once. Each
answer is a success, a state error (400) or Stripe's 429 lock_timeout
(another request holds the object); refunds never exceed the charge and
add up to what the charge shows; one capture wins; one confirmation
charges. Then every route, every method, random parameters: no 5xx."""
import json
import random
import threading
import urllib.parse

from harness import DaemonTestCase, main, new_key

PI = "/v1/payment_intents"


class ConcurrencyTest(DaemonTestCase):
    MERCHANTS = ("m", "other")

    def at_once(self, n, fn):
        """fn(i) on n threads released together; the answers in order of i."""
        out = [None] * n
        gate = threading.Barrier(n)

        def run(i):
            gate.wait(10)
            out[i] = fn(i)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out

    def assert_settled(self, answers, ok_statuses=(200,)):
        for r in answers:
            self.assertIsNotNone(r)
            self.assertIn(r.status, ok_statuses + (400, 429), r)
            if r.status == 429:
                self.assertEqual(r.json["error"]["code"], "lock_timeout", r)
                self.assertEqual(r.headers.get("Stripe-Should-Retry"), "true", r)

    def pay(self, **extra):
        r = self.c("m").post(PI, dict({"amount": 1000, "currency": "usd", "confirm": "true",
                                       "payment_method": "pm_card_visa"}, **extra))
        self.assertEqual(r.status, 200, r)
        return r.json


    def test_concurrent_payments_saving_cards_to_one_customer_save_them_all(self):
        """setup_future_usage attaches each card to the customer, however
        many payments of that customer finish at once (a busy customer
        lock made most of them skip the save)."""
        c = self.c("m")
        cus = c.post("/v1/customers", {"name": "many saves"}).json["id"]
        res = []

        def pay():
            r = self.daemon.client("m").post("/v1/payment_intents", {
                "amount": 1000, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
                "customer": cus, "setup_future_usage": "off_session"})
            res.append(r)
        def update(i):
            self.daemon.client("m").post("/v1/customers/" + cus, {"description": "busy %d" % i})
        threads = [threading.Thread(target=pay) for _ in range(32)]
        threads += [threading.Thread(target=update, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r.status for r in res], [200] * 32, [r.json for r in res if r.status != 200])
        made = {r.json["payment_method"] for r in res}
        saved = {pm["id"] for pm in c.list_all("/v1/customers/%s/payment_methods" % cus)}
        self.assertEqual(made - saved, set(), "cards not saved")
    def test_one_new_card_saved_by_two_payments_at_once_pays_once(self):
        """One unattached card, confirmed at the same moment by two
        payments with setup_future_usage for two customers (or by one that
        saves it and one that spends it): both paid, and it was saved to
        one customer or to none (review, session 41). Sent one after the
        other the second is refused; at once, one pays and saves it, the
        other is refused or told to retry (429 lock_timeout)."""
        c = self.c("m")
        for rnd in range(3):
            pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                 "card[exp_month]": "12", "card[exp_year]": "2034",
                                                 "card[cvc]": "123"}).json["id"]
            cus = [c.post("/v1/customers", {"name": "saver %d %d" % (rnd, i)}).json["id"] for i in range(2)]
            spend_one = rnd == 2  # the first pays without saving it, the second saves it

            def confirm(i):
                params = {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": pm}
                if not (spend_one and i == 0):
                    params.update(customer=cus[i], setup_future_usage="off_session")
                return self.daemon.client("m").post(PI, params, idem=new_key())
            answers = self.at_once(2, confirm)
            self.assert_settled(answers)
            paid = [i for i, r in enumerate(answers) if r.status == 200 and r.json["status"] == "succeeded"]
            self.assertEqual(len(paid), 1, [(r.status, r.json) for r in answers])
            owner = c.get("/v1/payment_methods/" + pm).json["customer"]
            if spend_one and paid == [0]:
                self.assertIsNone(owner)
            else:
                self.assertEqual(owner, cus[paid[0]], "the paying customer's card was not saved")

    def test_parallel_refunds_wait_for_each_other(self):
        """Twelve refunds of one PaymentIntent at once, room for all of them:
        each waits for the object the one before holds (as Stripe does), so
        all twelve succeed, none is turned away with 429 lock_timeout."""
        pi = self.pay()
        answers = self.at_once(12, lambda i: self.c("m").post(
            "/v1/refunds", {"payment_intent": pi["id"], "amount": 70}, idem=new_key()))
        self.assertEqual([r.status for r in answers], [200] * 12, [r for r in answers if r.status != 200][:2])
        ch = self.c("m").get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual(ch["amount_refunded"], 840)

    def test_parallel_refunds_never_exceed_the_charge(self):
        pi = self.pay()
        answers = self.at_once(25, lambda i: self.c("m").post(
            "/v1/refunds", {"payment_intent": pi["id"], "amount": 70}, idem=new_key()))
        self.assert_settled(answers)
        won = [r for r in answers if r.status == 200]
        self.assertGreaterEqual(len(won), 1)
        self.assertLessEqual(70 * len(won), 1000)
        ch = self.c("m").get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual(ch["amount_refunded"], 70 * len(won))
        refunds = self.c("m").list_all("/v1/refunds", {"payment_intent": pi["id"]})
        self.assertEqual(sorted(r["id"] for r in refunds), sorted(r.json["id"] for r in won))
        # and what is left can still be refunded, exactly
        rest = self.c("m").post("/v1/refunds", {"payment_intent": pi["id"]}, idem=new_key())
        self.assertEqual(rest.status, 200, rest)
        self.assertEqual(rest.json["amount"], 1000 - 70 * len(won))
        over = self.c("m").post("/v1/refunds", {"payment_intent": pi["id"], "amount": 1}, idem=new_key())
        self.assertEqual(over.status, 400, over)

    def test_another_merchants_requests_on_an_id_do_not_unlock_it(self):
        """Another merchant's request naming this merchant's charge takes its
        lock (locks are by id) before its reads find nothing; this
        merchant's requests finding the charge held by another merchant's
        request ran on past the lock, so two refunds of 600 of one 1000
        charge both succeeded (1200 refunded) while the other merchant sent
        refunds of that id. Bounded: 40 rounds, 6 threads."""
        stop = threading.Event()
        target = [None]

        def hammer():
            c = self.daemon.client("other")
            while not stop.is_set():
                t = target[0]
                if t:
                    r = c.post("/v1/refunds", {"charge": t})
                    assert r.status in (404, 429), r
                else:
                    stop.wait(0.005)
        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            for i in range(40):
                ch = self.pay()["latest_charge"]
                target[0] = ch
                answers = self.at_once(2, lambda j: self.daemon.client("m").post(
                    "/v1/refunds", {"charge": ch, "amount": 600}, idem=new_key()))
                target[0] = None
                got = self.c("m").get("/v1/charges/" + ch).json
                self.assertLessEqual(got["amount_refunded"], 1000, (i, got))
                self.assertEqual(sorted(r.status for r in answers), [200, 400], (i, answers))
                self.assertEqual(got["amount_refunded"], 600, (i, got))
        finally:
            stop.set()
            for t in threads:
                t.join(10)

    def test_parallel_captures_capture_once(self):
        pi = self.pay(capture_method="manual")
        self.assertEqual(pi["status"], "requires_capture")
        answers = self.at_once(10, lambda i: self.c("m").post(
            PI + "/%s/capture" % pi["id"], {"amount_to_capture": 600}, idem=new_key()))
        self.assert_settled(answers)
        self.assertEqual(sum(r.status == 200 for r in answers), 1, [r.status for r in answers])
        got = self.c("m").get(PI + "/" + pi["id"]).json
        self.assertEqual((got["status"], got["amount_received"]), ("succeeded", 600))
        txns = self.c("m").list_all("/v1/balance_transactions", {"source": got["latest_charge"]})
        self.assertEqual(sum(t["amount"] for t in txns if t["type"] == "charge"), 600)

    def test_parallel_confirmations_charge_once(self):
        pi = self.c("m").post(PI, {"amount": 1000, "currency": "usd"}).json
        answers = self.at_once(10, lambda i: self.c("m").post(
            PI + "/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa"}, idem=new_key()))
        self.assert_settled(answers)
        self.assertEqual(sum(r.status == 200 for r in answers), 1, [r.status for r in answers])
        charges = self.c("m").list_all("/v1/charges", {"payment_intent": pi["id"]})
        self.assertEqual(len(charges), 1)
        self.assertEqual(self.c("m").get(PI + "/" + pi["id"]).json["amount_received"], 1000)

    def test_parallel_cancel_and_capture_leave_one_outcome(self):
        pi = self.pay(capture_method="manual")
        answers = self.at_once(8, lambda i: self.c("m").post(
            PI + "/%s/%s" % (pi["id"], "cancel" if i % 2 else "capture"), {}, idem=new_key()))
        self.assert_settled(answers)
        self.assertEqual(sum(r.status == 200 for r in answers), 1, [r.status for r in answers])
        got = self.c("m").get(PI + "/" + pi["id"]).json
        self.assertIn(got["status"], ("succeeded", "canceled"))
        self.assertEqual(got["amount_received"], 1000 if got["status"] == "succeeded" else 0)

    def test_every_route_with_random_parameters_answers_below_500(self):
        c = self.c("m")
        pi = self.pay()
        cus = c.post("/v1/customers", {"email": "r@example.com"}).json["id"]
        ref = c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 10}).json["id"]
        we = c.post("/v1/webhook_endpoints", {"url": "https://example.com/h", "enabled_events[]": "*"}).json["id"]
        ev = c.get("/v1/events", {"limit": 1}).json["data"][0]["id"]
        txn = c.get("/v1/balance_transactions", {"limit": 1}).json["data"][0]["id"]
        pm = pi["payment_method"]
        routes = ["/v1/balance", "/v1/balance_transactions", "/v1/balance_transactions/" + txn, "/v1/charges",
                  "/v1/charges/search", "/v1/charges/" + pi["latest_charge"],
                  "/v1/charges/%s/capture" % pi["latest_charge"], "/v1/customers", "/v1/customers/search",
                  "/v1/customers/" + cus, "/v1/customers/%s/payment_methods" % cus,
                  "/v1/customers/%s/payment_methods/%s" % (cus, pm), "/v1/events", "/v1/events/" + ev, PI,
                  PI + "/search", PI + "/" + pi["id"], PI + "/%s/attempts" % pi["id"], PI + "/%s/cancel" % pi["id"],
                  PI + "/%s/capture" % pi["id"], PI + "/%s/confirm" % pi["id"],
                  PI + "/%s/increment_authorization" % pi["id"], "/v1/payment_methods", "/v1/payment_methods/" + pm,
                  "/v1/payment_methods/%s/attach" % pm, "/v1/payment_methods/%s/detach" % pm, "/v1/refunds",
                  "/v1/refunds/" + ref, "/v1/refunds/%s/cancel" % ref, "/v1/turnpike/encryption_key",
                  "/v1/turnpike/processors", "/v1/turnpike/stream_tokens", "/v1/webhook_endpoints",
                  "/v1/webhook_endpoints/" + we, "/v1/webhook_endpoints/%s/deliveries" % we,
                  "/v1/webhook_endpoints/%s/deliveries/%s/resend" % (we, ev)]
        values = ["", "x", "-1", "0", "1", "99999999999999999999", "true", "null", "\x00", "\u00e9", "a" * 3000,
                  "[]", "{}", "1.5", "pm_card_visa", "tok_visa", cus, pi["id"], "data.latest_charge",
                  "latest_charge.payment_intent.latest_charge.payment_intent.customer"]
        names = ["amount", "currency", "customer", "payment_method", "limit", "starting_after", "expand[]",
                 "metadata[a]", "query", "type", "url", "enabled_events[]", "email", "description",
                 "amount_to_capture", "charge", "payment_intent", "reason", "created[gte]", "page", "card[token]"]
        rnd = random.Random(11)
        n = 0
        for route in routes:
            for method in ("GET", "POST", "DELETE"):
                for k in range(6):
                    params = [(rnd.choice(names), rnd.choice(values)) for _ in range(rnd.randint(0, 4))]
                    if method == "POST" and k % 3 == 2:
                        r = c.request("POST", route, body=json.dumps(dict(params)), content_type="application/json")
                    elif method == "POST":
                        r = c.request("POST", route, body=urllib.parse.urlencode(params))
                    else:
                        r = c.request(method, route, params)
                    n += 1
                    self.assertLess(r.status, 500, "%s %s %r: %r" % (method, route, params, r))
                    self.assertTrue(r.headers.get("Request-Id"), r)
        self.assertEqual(n, len(routes) * 18)
        self.assertIsNone(self.daemon.proc.poll(), "daemon died")
        self.assertEqual(c.get("/healthz", key=None).status, 200)


if __name__ == "__main__":
    main()
