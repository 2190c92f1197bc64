"""Card tokens (POST /v1/tokens, Stripe's legacy Tokens API): a token holds
a card for one use and shows only what Stripe's Card object shows; used as a
charge's source, as card[token] of a PaymentMethod or payment_method_data,
it becomes a card PaymentMethod and is spent in that commit (shown used,
its vault record gone); a second use is 400 token_already_used, also when
requests race with one token; the publishable key makes tokens but cannot
read them; another merchant cannot see or use them; bad input stores
nothing."""
import threading
import time

from harness import DaemonTestCase, main, open_db_ro

TOK = "/v1/tokens"
CH = "/v1/charges"


def raw(number="4242424242424242", **extra):
    c = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    c.update(extra)
    return c


class Tokens(DaemonTestCase):
    MERCHANTS = ("m", "n")

    def token(self, merchant=None, **card):
        r = self.c(merchant).post(TOK, {"card": raw(**card)})
        self.assertEqual(r.status, 200, r)
        return r.json

    def db(self, sql, args=()):
        db = open_db_ro(self.daemon)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def count(self, table):
        return self.db("SELECT count(*) FROM %s" % table)[0][0]

    def test_a_token_shows_the_card_as_stripe_does_and_never_its_number(self):
        r = self.c().post(TOK, {"card": raw("5555555555554444", name="Ada Lovelace", address_line1="1 Main St",
                                            address_zip="94107", address_country="US")})
        self.assertEqual(r.status, 200, r)
        t = r.json
        self.assertTrue(t["id"].startswith("tok_"), t)
        self.assertEqual((t["object"], t["type"], t["used"], t["livemode"]), ("token", "card", False, False))
        self.assertEqual(t["client_ip"], "127.0.0.1")
        c = t["card"]
        self.assertTrue(c["id"].startswith("card_"), c)
        self.assertEqual((c["object"], c["brand"], c["last4"], c["exp_month"], c["exp_year"], c["funding"]),
                         ("card", "MasterCard", "4444", 12, 2034, "credit"))
        self.assertEqual((c["name"], c["address_line1"], c["address_zip"], c["address_country"]),
                         ("Ada Lovelace", "1 Main St", "94107", "US"))
        self.assertEqual((c["cvc_check"], c["address_line1_check"], c["address_zip_check"]),
                         ("unchecked", "unchecked", "unchecked"))
        self.assertIsNone(c["address_city"])
        self.assertEqual(len(c["fingerprint"]), 16)
        self.assertNotIn(b"5555555555554444", r.body)
        self.assertNotIn("number", c)
        # without a CVC or address nothing is to be checked
        bare = self.c().post(TOK, {"card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2035}}).json
        self.assertEqual((bare["card"]["cvc_check"], bare["card"]["address_zip_check"]), (None, None))
        self.assertEqual(bare["card"]["brand"], "Visa")
        got = self.c().get(TOK + "/" + t["id"])
        self.assertEqual((got.status, got.json), (200, t))
        # the same card gives the same fingerprint as its PaymentMethod
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": raw("5555555555554444")}).json
        self.assertEqual(pm["card"]["fingerprint"], c["fingerprint"])

    def test_a_charge_spends_the_token_once(self):
        t = self.token(name="Grace Hopper", address_zip="10001")
        charges = self.count("charges")
        r = self.c().post(CH, {"amount": 1500, "currency": "usd", "source": t["id"]})
        self.assertEqual(r.status, 200, r)
        ch = r.json
        self.assertEqual((ch["status"], ch["paid"], ch["amount"]), ("succeeded", True, 1500))
        # spent into its Card, whose id it already named (Stripe's)
        self.assertEqual((ch["payment_method"], ch["source"]["id"]), (t["card"]["id"], t["card"]["id"]), ch)
        self.assertEqual(ch["billing_details"]["name"], "Grace Hopper")
        self.assertEqual(ch["billing_details"]["address"]["postal_code"], "10001")
        self.assertEqual(ch["payment_method_details"]["card"]["last4"], "4242")
        self.assertTrue(self.c().get(TOK + "/" + t["id"]).json["used"])
        again = self.c().post(CH, {"amount": 1500, "currency": "usd", "source": t["id"]})
        self.assertStripeError(again, 400, "invalid_request_error", "token_already_used", "source")
        self.assertIn(t["id"], again.json["error"]["message"])
        self.assertEqual(self.count("charges"), charges + 1)
        # the card left the token's vault record for the PaymentMethod's
        self.assertEqual(self.db("SELECT count(*) FROM vault WHERE token=?", (t["id"],))[0][0], 0)
        self.assertEqual(self.db("SELECT count(*) FROM vault WHERE token=?", (ch["payment_method"],))[0][0], 1)
        self.assertEqual(self.db("SELECT payment_method FROM token_redemptions WHERE token=?", (t["id"],)),
                         [(ch["payment_method"],)])

    def test_a_declined_charge_spends_the_token_too(self):
        t = self.token(number="4000000000000002")
        r = self.c().post(CH, {"amount": 700, "currency": "usd", "source": t["id"]})
        err = self.assertStripeError(r, 402, "card_error", "card_declined")
        self.assertEqual(err["decline_code"], "generic_decline")
        self.assertTrue(self.c().get(TOK + "/" + t["id"]).json["used"])
        self.assertStripeError(self.c().post(CH, {"amount": 700, "currency": "usd", "source": t["id"]}),
                               400, code="token_already_used")

    def test_a_payment_method_and_payment_method_data_take_a_token(self):
        t = self.token(name="Alan Turing")
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {"token": t["id"]}})
        self.assertEqual(pm.status, 200, pm)
        self.assertEqual((pm.json["card"]["last4"], pm.json["billing_details"]["name"]), ("4242", "Alan Turing"))
        self.assertStripeError(self.c().post("/v1/payment_methods", {"type": "card", "card": {"token": t["id"]}}),
                               400, code="token_already_used", param="card[token]")
        # the PaymentMethod pays
        pi = self.c().post("/v1/payment_intents", {"amount": 900, "currency": "usd", "confirm": "true",
                                                   "payment_method": pm.json["id"]})
        self.assertEqual((pi.status, pi.json["status"]), (200, "succeeded"), pi)
        t2 = self.token()
        pi = self.c().post("/v1/payment_intents", {"amount": 901, "currency": "usd", "confirm": "true",
                                                   "payment_method_data": {"type": "card",
                                                                           "card": {"token": t2["id"]}}})
        self.assertEqual((pi.status, pi.json["status"]), (200, "succeeded"), pi)
        self.assertTrue(self.c().get(TOK + "/" + t2["id"]).json["used"])

    def test_requests_racing_with_one_token_use_it_once(self):
        # the losers are told the token is spent (400 token_already_used),
        # whether they read it before the winner committed or not (a
        # conflict at commit was a 503 store_unavailable); through the
        # Charges API, payment_method_data and a customer's sources alike
        cus = self.c().post("/v1/customers", {}).json["id"]
        for n in range(6):
            t = self.token()
            charges = self.count("charges")
            barrier = threading.Barrier(8)
            results = []

            def go(i):
                barrier.wait(timeout=10)
                way = (n + i) % 3
                if way == 0:
                    r = self.c().post(CH, {"amount": 300, "currency": "usd", "source": t["id"]})
                elif way == 1:
                    r = self.c().post("/v1/payment_intents", {"amount": 300, "currency": "usd", "confirm": "true",
                                                              "payment_method_data[type]": "card",
                                                              "payment_method_data[card][token]": t["id"]})
                else:
                    r = self.c().post("/v1/customers/%s/sources" % cus, {"source": t["id"]})
                results.append(r)

            threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=30)
            ok = [r for r in results if r.status == 200]
            self.assertEqual(len(results), 8)
            self.assertEqual(len(ok), 1, [(r.status, r.json) for r in results])
            for r in results:
                if r.status != 200:
                    self.assertEqual((r.status, r.json["error"].get("code")), (400, "token_already_used"), r)
            self.assertLessEqual(self.count("charges"), charges + 1)
            self.assertEqual(self.db("SELECT count(*) FROM token_redemptions WHERE token=?", (t["id"],))[0][0], 1)

    def test_a_token_s_card_is_locked_as_its_own_merchant_s(self):
        """Two customers made with one token, and updates of the token's card
        (card_…, named by the token before it exists) at once: the card is
        the merchant's own, held by the request that makes it, so the
        others wait for it, never run past its lock (which lost updates
        answered 200 and spent the token twice, a 503)."""
        lost = []
        for _ in range(12):
            t = self.token()
            card = t["card"]["id"]
            out = {}
            go = threading.Barrier(8)

            def create(i):
                go.wait(timeout=10)
                out["c%d" % i] = self.c().post("/v1/customers", {"payment_method": t["id"]})

            def update(k):
                go.wait(timeout=10)
                time.sleep(0.004)
                for _ in range(50):
                    r = self.c().post("/v1/payment_methods/" + card, {"metadata[k%d]" % k: "1"})
                    if r.status not in (404, 429):
                        break
                    time.sleep(0.001)
                out["u%d" % k] = r
            ts = [threading.Thread(target=create, args=(i,)) for i in range(2)] + \
                 [threading.Thread(target=update, args=(k,)) for k in range(6)]
            for th in ts:
                th.start()
            for th in ts:
                th.join(timeout=30)
            self.assertEqual(sorted(out[c].status for c in ("c0", "c1")), [200, 400], [out[c].json for c in ("c0", "c1")])
            md = self.c().get("/v1/payment_methods/" + card).json["metadata"]
            lost += [k for k in range(6) if out["u%d" % k].status == 200 and "k%d" % k not in md]
        self.assertEqual(lost, [])

    def test_the_publishable_key_makes_tokens_but_cannot_read_them(self):
        pk = self.daemon.merchants["m"]["publishable_key"]
        r = self.c(None).post(TOK, {"card": raw()}, headers={"Authorization": "Bearer " + pk})
        self.assertEqual(r.status, 200, r)
        got = self.c(None).get(TOK + "/" + r.json["id"], headers={"Authorization": "Bearer " + pk})
        self.assertIn(got.status, (401, 403), got)
        # the merchant's server charges it
        ch = self.c().post(CH, {"amount": 1200, "currency": "usd", "source": r.json["id"]})
        self.assertEqual(ch.status, 200, ch)

    def test_the_publishable_key_is_never_shown_a_fingerprint(self):
        """Stripe (API 2014-10-07): a card made or shown to the publishable
        key has no fingerprint. It is an HMAC of the number under the
        merchant's key: a public key that answered it for any number would
        recover a stored card's number from its last4 and fingerprint."""
        pk = self.daemon.merchants["m"]["publishable_key"]
        pc = self.daemon.client("m")
        tok = pc.post(TOK, {"card": raw()}, key=pk)
        pm = pc.post("/v1/payment_methods", {"type": "card", "card": raw("4000000000000002")}, key=pk)
        self.assertEqual((tok.status, pm.status), (200, 200), (tok, pm))
        self.assertNotIn("fingerprint", tok.json["card"])
        self.assertNotIn("fingerprint", pm.json["card"])
        self.assertNotIn(b"fingerprint", tok.body + pm.body)
        # the secret key sees it
        self.assertEqual(len(self.c().get("/v1/payment_methods/" + pm.json["id"]).json["card"]["fingerprint"]), 16)
        # nor through a PaymentIntent's client_secret: expanded, or in a decline
        pi = self.c().post("/v1/payment_intents", {"amount": 1000, "currency": "usd"}).json
        r = pc.post("/v1/payment_intents/%s/confirm" % pi["id"],
                    {"client_secret": pi["client_secret"], "payment_method": pm.json["id"],
                     "expand[]": "payment_method"}, key=pk)
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"]["payment_method"]["card"]["last4"], "0002")
        self.assertNotIn(b"fingerprint", r.body)
        ok = pc.post("/v1/payment_methods", {"type": "card", "card": raw()}, key=pk).json["id"]
        r = pc.post("/v1/payment_intents/%s/confirm" % pi["id"],
                    {"client_secret": pi["client_secret"], "payment_method": ok, "expand[]": "payment_method"}, key=pk)
        self.assertEqual((r.status, r.json["payment_method"]["card"]["last4"]), (200, "4242"), r)
        self.assertNotIn(b"fingerprint", r.body)
        r = pc.get("/v1/payment_intents/" + pi["id"], {"client_secret": pi["client_secret"],
                                                        "expand[]": "payment_method"}, key=pk)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn(b"fingerprint", r.body)

    def test_another_merchant_cannot_see_or_use_a_token(self):
        t = self.token()
        self.assertStripeError(self.c("n").get(TOK + "/" + t["id"]), 404, code="resource_missing")
        self.assertStripeError(self.c("n").post(CH, {"amount": 100, "currency": "usd", "source": t["id"]}),
                               404, code="resource_missing", param="source")
        self.assertFalse(self.c().get(TOK + "/" + t["id"]).json["used"])

    def test_test_tokens_and_unknown_tokens(self):
        ch = self.c().post(CH, {"amount": 100, "currency": "usd", "source": "tok_visa"})
        self.assertEqual((ch.status, ch.json["payment_method_details"]["card"]["brand"]), (200, "visa"), ch)
        # a test token is a name, not a token: it can be used again
        self.assertEqual(self.c().post(CH, {"amount": 100, "currency": "usd", "source": "tok_visa"}).status, 200)
        self.assertStripeError(self.c().post(CH, {"amount": 100, "currency": "usd", "source": "tok_nope"}),
                               404, code="resource_missing", param="source")
        self.assertStripeError(self.c().get(TOK + "/tok_nope"), 404, code="resource_missing")
        # an error about a token names the parameter it came in
        for path, body in (("/v1/payment_intents", {"amount": 500, "currency": "usd"}), ("/v1/setup_intents", {})):
            self.assertStripeError(self.c().post(path, dict(body, payment_method="tok_nope123")), 404,
                                   code="resource_missing", param="payment_method")
        self.assertStripeError(self.c().post(CH, {"amount": 500, "currency": "usd", "source": "tok_nope123"}), 404,
                               code="resource_missing", param="source")

    def test_bad_input_stores_nothing(self):
        tokens, vault = self.count("tokens"), self.count("vault")
        c = self.c()
        self.assertStripeError(c.post(TOK, {}), 400, code="parameter_missing", param="card")
        self.assertStripeError(c.post(TOK, {"card": raw("4242424242424241")}), 402, code="incorrect_number",
                               param="card[number]")
        # not a card number at all: invalid_number (ActiveMerchant's remote
        # test sends "-1" and expects it), not incorrect_number
        for bad in ("-1", "abc", "4242", "4" * 20):
            self.assertStripeError(c.post(TOK, {"card": raw(bad)}), 402, code="invalid_number", param="card[number]")
        self.assertStripeError(c.post(TOK, {"card": raw(exp_year=2001)}), 402, code="invalid_expiry_year",
                               param="card[exp_year]")
        self.assertStripeError(c.post(TOK, {"card": raw(cvc="1")}), 402, param="card[cvc]")
        self.assertStripeError(c.post(TOK, {"card": raw(name="x" * 501)}), 400, code="parameter_invalid_string",
                               param="card[name]")
        self.assertStripeError(c.post(TOK, {"card": raw(currency="zzz")}), 400, param="card[currency]")
        self.assertStripeError(c.post(TOK, {"card": {"token": "tok_visa"}}), 400)
        for other in ({"bank_account": {"account_number": "000123456789"}}, {"pii": {"id_number": "000000000"}}):
            err = self.assertStripeError(c.post(TOK, other), 400, param=list(other)[0])
            self.assertEqual(err["tp_code"], 1101, err)  # parameter_unsupported
        self.assertEqual((self.count("tokens"), self.count("vault")), (tokens, vault))

    def test_an_idempotent_retry_gives_the_same_token(self):
        r1 = self.c().post(TOK, {"card": raw()}, idem="tok-retry-1")
        r2 = self.c().post(TOK, {"card": raw()}, idem="tok-retry-1")
        self.assertEqual((r1.status, r2.status), (200, 200))
        self.assertEqual(r1.json["id"], r2.json["id"])
        self.assertEqual(r2.headers.get("Idempotent-Replayed"), "true")


class TokenExpiry(DaemonTestCase):
    """[tokens] ttl_seconds: a token unused that long loses its card."""

    @classmethod
    def config(cls):
        return "[tokens]\nttl_seconds = 1\n[idempotency]\npurge_interval_ms = 100\n"

    def test_an_unused_token_expires_and_its_card_is_deleted(self):
        t = self.c().post(TOK, {"card": raw()}).json
        db = open_db_ro(self.daemon)
        try:
            deadline = time.monotonic() + 15
            while db.execute("SELECT count(*) FROM vault WHERE token=?", (t["id"],)).fetchone()[0]:
                self.assertLess(time.monotonic(), deadline, "the token's card was not deleted")
                time.sleep(0.2)
        finally:
            db.close()
        r = self.c().post(CH, {"amount": 100, "currency": "usd", "source": t["id"]})
        self.assertStripeError(r, 400, "invalid_request_error", param="source")
        self.assertEqual(r.json["error"]["tp_code"], 1103, r)  # token_expired
        self.assertFalse(self.c().get(TOK + "/" + t["id"]).json["used"])


if __name__ == "__main__":
    main()
