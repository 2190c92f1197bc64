"""SetupIntents: a card saved for later payments without a charge. The status
machine, 3-D Secure on setup through the challenge page (approve and fail),
the issuer's verification (a declined card is not saved), the card saved to
the customer and recorded as authenticated so that a card that asks until
it is set up (4000002500003155) then pays off-session without a challenge,
cancel, update, list filters, the publishable key's view, and bad input
that changes nothing."""
import urllib.parse

from harness import DaemonTestCase, card, main, new_key, open_db_ro

SI = "/v1/setup_intents"
RETURN = "https://shop.example/saved?x=1"


class SetupIntents(DaemonTestCase):

    def customer(self):
        return self.c().post("/v1/customers", {"email": "si@example.test"}).json["id"]

    def events(self, object_id):
        r = self.c().get("/v1/events", {"limit": 100})
        return [e["type"] for e in reversed(r.json["data"]) if e["data"]["object"]["id"] == object_id]

    def count(self, table):
        db = open_db_ro(self.daemon)
        try:
            return db.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
        finally:
            db.close()

    def challenge(self, si, result):
        """Answer si's challenge page; the redirect's query."""
        self.assertEqual(si["status"], "requires_action", si)
        u = urllib.parse.urlsplit(si["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        page = self.c().get(u.path + "?" + u.query, key=None)
        self.assertEqual(page.status, 200, page)
        self.assertIn(b"saving a card", page.body)
        r = self.c().post(u.path, {"token": token, "result": result}, key=None)
        self.assertEqual(r.status, 303, r)
        loc = r.headers["Location"]
        self.assertTrue(loc.startswith(RETURN + "&"), loc)
        return urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)


    def test_a_card_set_up_while_its_customer_is_deleted_is_not_left_on_the_deleted_customer(self):
        """The confirmation saves the card to the customer under the
        customer's lock, which the deletion holds while it detaches the
        customer's cards: whichever goes first, no card stays attached to a
        deleted customer (it was read without the lock)."""
        import threading
        c = self.c("m")
        stuck = []
        for i in range(30):
            cus = c.post("/v1/customers", {"name": "race %d" % i}).json["id"]
            pm = c.post("/v1/payment_methods", {"type": "card", "card[token]": "tok_visa"}).json["id"]
            si = c.post("/v1/setup_intents", {"customer": cus, "payment_method": pm}).json["id"]
            res = {}
            ta = threading.Thread(target=lambda: res.setdefault("c", self.daemon.client("m").post(
                "/v1/setup_intents/%s/confirm" % si, {})))
            tb = threading.Thread(target=lambda: res.setdefault("d", self.daemon.client("m").delete(
                "/v1/customers/" + cus)))
            ta.start()
            tb.start()
            ta.join()
            tb.join()
            self.assertEqual(res["d"].status, 200, res["d"])
            got = c.get("/v1/payment_methods/" + pm).json
            if got.get("customer") == cus:
                stuck.append((si, pm, res["c"].status))
        self.assertEqual(stuck, [], "cards left attached to a deleted customer")

    def test_a_setup_intent_whose_customer_was_deleted_does_not_confirm(self):
        """Its customer went after it was made: confirming it names the
        missing customer and changes nothing (it succeeded, the card saved
        to no one)."""
        c = self.c("m")
        cus = c.post("/v1/customers", {"name": "gone"}).json["id"]
        si = c.post("/v1/setup_intents", {"customer": cus, "payment_method": "pm_card_visa"}).json
        self.assertEqual(c.delete("/v1/customers/" + cus).status, 200)
        r = c.post("/v1/setup_intents/%s/confirm" % si["id"], {})
        err = self.assertStripeError(r, 404, "invalid_request_error", "resource_missing", param="customer")
        self.assertIn(cus, err["message"])
        self.assertEqual(c.get("/v1/setup_intents/" + si["id"]).json["status"], "requires_confirmation")
        # nor through its challenge, its customer deleted while the challenge was out
        cus = c.post("/v1/customers", {"name": "gone later"}).json["id"]
        si = c.post("/v1/setup_intents", {"customer": cus, "payment_method": "pm_card_authenticationRequired",
                                          "confirm": "true", "return_url": RETURN}).json
        self.assertEqual(c.delete("/v1/customers/" + cus).status, 200)
        q = self.challenge(si, "approve")
        self.assertEqual(q["redirect_status"], ["failed"], q)
        got = c.get("/v1/setup_intents/" + si["id"]).json
        self.assertEqual(got["status"], "requires_payment_method", got)
        self.assertEqual((got["last_setup_error"]["code"], got["last_setup_error"]["param"]),
                         ("resource_missing", "customer"), got)

    def test_a_payment_method_id_no_payment_method_can_have_is_missing(self):
        """The SetupIntent's own id, or one too long for any PaymentMethod, as
        payment_method: 404 at once (it waited 2 s on its own lock, then 429)."""
        import time
        si = self.c().post("/v1/setup_intents", {}).json
        for bad in (si["id"], "pm_" + "x" * 70):
            t0 = time.monotonic()
            r = self.c().post("/v1/setup_intents/%s/confirm" % si["id"], {"payment_method": bad})
            self.assertEqual((r.status, r.json["error"]["code"]), (404, "resource_missing"), r)
            self.assertLess(time.monotonic() - t0, 1.5, r)

    def test_the_status_machine_and_its_events(self):
        c = self.c()
        cus = self.customer()
        si = c.post(SI, {"customer": cus, "metadata": {"order": "7"}, "description": "save"}).json
        self.assertEqual((si["status"], si["usage"], si["payment_method"]), ("requires_payment_method",
                                                                               "off_session", None))
        self.assertTrue(si["client_secret"].startswith(si["id"] + "_secret_"))
        si = c.post(SI + "/" + si["id"], {"payment_method": "pm_card_mastercard"}).json
        self.assertEqual(si["status"], "requires_confirmation")
        pm_id = si["payment_method"]
        si = c.post(SI + "/%s/confirm" % si["id"], {"expand[]": "payment_method"}).json
        self.assertEqual(si["status"], "succeeded", si)
        self.assertEqual(si["payment_method"]["id"], pm_id)
        self.assertEqual(si["payment_method"]["customer"], cus)
        self.assertEqual(si["metadata"], {"order": "7"})
        self.assertEqual(self.events(si["id"]), ["setup_intent.created", "setup_intent.succeeded"])
        # expandable as on Stripe, though no mandate is made for a card here
        got = c.get(SI + "/" + si["id"] + "?expand[]=mandate&expand[]=single_use_mandate")
        self.assertEqual((got.status, got.json["mandate"], got.json["single_use_mandate"]), (200, None, None), got)
        self.assertEqual(self.events(pm_id), ["payment_method.attached"])
        # the saved card pays off-session
        pi = c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "customer": cus,
                                            "payment_method": pm_id, "off_session": "true",
                                            "confirm": "true"}).json
        self.assertEqual(pi["status"], "succeeded", pi)
        # nothing more to do with it
        for action in ("confirm", "cancel"):
            r = c.post(SI + "/%s/%s" % (si["id"], action), {})
            self.assertStripeError(r, 400, "invalid_request_error", "setup_intent_unexpected_state")
        r = c.post(SI + "/" + si["id"], {"payment_method": "pm_card_visa"})
        self.assertStripeError(r, 400, "invalid_request_error", "setup_intent_unexpected_state")
        self.assertEqual(c.post(SI + "/" + si["id"], {"metadata": {"order": "8"}}).json["metadata"], {"order": "8"})

    def test_a_card_that_asks_on_setup_is_authenticated_then_pays_off_session(self):
        c = self.c()
        cus = self.customer()
        si = c.post(SI, {"customer": cus, "payment_method_data": card("4000002500003155"), "confirm": "true",
                         "return_url": RETURN}).json
        self.assertEqual(si["next_action"]["redirect_to_url"]["return_url"], RETURN)
        q = self.challenge(si, "approve")
        self.assertEqual(q["setup_intent"], [si["id"]])
        self.assertEqual(q["setup_intent_client_secret"], [si["client_secret"]])
        self.assertEqual(q["redirect_status"], ["succeeded"])
        done = c.get(SI + "/" + si["id"]).json
        self.assertEqual((done["status"], done["next_action"]), ("succeeded", None))
        pm = c.get("/v1/payment_methods/" + done["payment_method"]).json
        self.assertEqual(pm["customer"], cus)
        self.assertEqual(pm["turnpike"], {"off_session_authenticated": True})
        self.assertEqual(self.events(si["id"]), ["setup_intent.created", "setup_intent.requires_action",
                                                 "setup_intent.succeeded"])
        pi = c.post("/v1/payment_intents", {"amount": 900, "currency": "eur", "customer": cus,
                                            "payment_method": pm["id"], "off_session": "true",
                                            "confirm": "true"}).json
        self.assertEqual(pi["status"], "succeeded", pi)
        # the page cannot be answered twice
        u = urllib.parse.urlsplit(si["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        self.assertEqual(c.post(u.path, {"token": token, "result": "fail"}, key=None).status, 409)

    def test_a_card_set_up_for_on_session_use_still_asks_off_session(self):
        """usage=on_session (and setup_future_usage=on_session) saves the card
        for payments the customer is present for: an off-session payment of
        a card that asks until set up still asks (it paid without)."""
        c = self.c()
        cus = self.customer()
        si = c.post(SI, {"customer": cus, "payment_method_data": card("4000002500003155"), "confirm": "true",
                         "usage": "on_session", "return_url": RETURN}).json
        self.challenge(si, "approve")
        done = c.get(SI + "/" + si["id"]).json
        self.assertEqual(done["status"], "succeeded", done)
        pm = c.get("/v1/payment_methods/" + done["payment_method"]).json
        self.assertEqual(pm["customer"], cus)
        self.assertNotIn("turnpike", pm)
        r = c.post("/v1/payment_intents", {"amount": 900, "currency": "eur", "customer": cus,
                                           "payment_method": pm["id"], "off_session": "true", "confirm": "true"})
        self.assertEqual((r.status, r.json["error"]["code"]), (402, "authentication_required"), r)
        # the same through a payment saving it for on-session use
        pi = c.post("/v1/payment_intents", {"amount": 900, "currency": "eur", "customer": cus, "confirm": "true",
                                            "payment_method_data": card("4000002500003155"),
                                            "setup_future_usage": "on_session", "return_url": RETURN}).json
        self.assertEqual(pi["status"], "requires_action", pi)
        u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        self.assertEqual(c.post(u.path, {"token": token, "result": "approve"}, key=None).status, 303)
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["status"], "succeeded")
        pm2 = c.get("/v1/payment_methods/" + c.get("/v1/payment_intents/" + pi["id"]).json["payment_method"]).json
        self.assertEqual(pm2["customer"], cus)
        r = c.post("/v1/payment_intents", {"amount": 900, "currency": "eur", "customer": cus,
                                           "payment_method": pm2["id"], "off_session": "true", "confirm": "true"})
        self.assertEqual((r.status, r.json["error"]["code"]), (402, "authentication_required"), r)

    def test_state_errors_carry_the_setup_intent_in_stripes_words(self):
        """Stripe's error has the SetupIntent (error.setup_intent) and its
        own wording; integrations check a retried setup that succeeded by
        both (Turnpike gave neither)."""
        c = self.c()
        si = c.post(SI, {"payment_method": "pm_card_visa", "confirm": "true"}).json
        self.assertEqual(si["status"], "succeeded", si)
        for path, params, msg in (
                ("/confirm", {}, "You cannot confirm this SetupIntent because it has already succeeded."),
                ("/confirm", {"payment_method": "pm_card_visa"},
                 "You cannot update this SetupIntent because it has already succeeded."),
                ("/cancel", {}, "You cannot cancel this SetupIntent because it has a status of succeeded. Only a "
                                "SetupIntent with one of the following statuses may be canceled: "
                                "`requires_payment_method`, `requires_confirmation`, or `requires_action`.")):
            r = c.post(SI + "/" + si["id"] + path, params)
            err = self.assertStripeError(r, 400, "invalid_request_error", "setup_intent_unexpected_state")
            self.assertEqual(err["message"], msg, path)
            self.assertEqual((err["setup_intent"]["id"], err["setup_intent"]["status"]), (si["id"], "succeeded"))
        gone = c.post(SI, {}).json
        self.assertEqual(c.post(SI + "/" + gone["id"] + "/cancel", {}).status, 200)
        err = self.assertStripeError(c.post(SI + "/" + gone["id"] + "/cancel", {}), 400, "invalid_request_error",
                                     "setup_intent_unexpected_state")
        self.assertEqual(err["message"], "You cannot cancel this SetupIntent because it is already canceled.")
        bare = c.post(SI, {}).json
        err = self.assertStripeError(c.post(SI + "/" + bare["id"] + "/confirm", {}), 400, "invalid_request_error")
        self.assertIn("You can either update the SetupIntent with a payment method", err["message"])
        self.assertEqual(err["setup_intent"]["id"], bare["id"])
        pi = c.post("/v1/payment_intents", {"amount": 500, "currency": "usd"}).json
        err = self.assertStripeError(c.post("/v1/payment_intents/%s/confirm" % pi["id"], {}), 400,
                                     "invalid_request_error", "payment_intent_unexpected_state")
        self.assertEqual(err["message"], "You cannot confirm this PaymentIntent because it's missing a payment "
                                         "method. You can either update the PaymentIntent with a payment method and "
                                         "then confirm it again, or confirm it again directly with a payment method.")
        self.assertEqual(err["payment_intent"]["amount"], 500)
        # of an intent that exists, the refusal is its result under its key, as
        # a SetupIntent's is (it was not kept)
        for path in ("/v1/payment_intents/%s/confirm" % pi["id"], SI + "/" + bare["id"] + "/confirm"):
            idem = new_key()
            first = c.post(path, {}, headers={"Idempotency-Key": idem})
            again = c.post(path, {}, headers={"Idempotency-Key": idem})
            self.assertEqual((first.status, again.status, again.headers.get("Idempotent-Replayed")),
                             (400, 400, "true"), (path, again.headers))
        # created and confirmed in one request: the intent is not saved, so
        # the error names none (it named an id that 404s) and keeps nothing
        # under the Idempotency-Key (its retry replayed that id)
        for path, params, key in ((SI, {"confirm": "true"}, "setup_intent"),
                                  ("/v1/payment_intents", {"amount": 500, "currency": "usd", "confirm": "true"},
                                   "payment_intent")):
            idem = new_key()
            r = c.post(path, params, headers={"Idempotency-Key": idem})
            err = self.assertStripeError(r, 400, "invalid_request_error", key + "_unexpected_state"
                                         if key == "setup_intent" else "payment_intent_unexpected_state")
            self.assertIn("missing a payment method", err["message"])
            self.assertNotIn(key, err, err)
            r2 = c.post(path, params, headers={"Idempotency-Key": idem})
            self.assertNotEqual(r2.headers.get("Idempotent-Replayed"), "true", r2.headers)

    def test_a_failed_challenge_saves_nothing(self):
        c = self.c()
        cus = self.customer()
        si = c.post(SI, {"customer": cus, "payment_method": "pm_card_authenticationRequired", "confirm": "true",
                         "return_url": RETURN}).json
        pm_id = si["payment_method"]
        q = self.challenge(si, "fail")
        self.assertEqual(q["redirect_status"], ["failed"])
        si = c.get(SI + "/" + si["id"]).json
        self.assertEqual((si["status"], si["payment_method"]), ("requires_payment_method", None))
        self.assertEqual(si["last_setup_error"]["code"], "setup_intent_authentication_failure")
        self.assertEqual(si["last_setup_error"]["payment_method"]["id"], pm_id)
        self.assertIsNone(c.get("/v1/payment_methods/" + pm_id).json["customer"])
        self.assertEqual(self.events(si["id"])[-1], "setup_intent.setup_failed")
        # another card then goes through
        si = c.post(SI + "/%s/confirm" % si["id"], {"payment_method": "pm_card_visa"}).json
        self.assertEqual((si["status"], si["last_setup_error"]), ("succeeded", None))

    def attempts(self, si_id, **params):
        r = self.c().get("/v1/setup_attempts", dict(params, setup_intent=si_id))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["url"], "/v1/setup_attempts")
        return r.json["data"]

    def test_each_confirmation_is_a_setup_attempt(self):
        c = self.c()
        cus = self.customer()
        # a challenge, failed; a decline; a challenge left for another card; a success
        si = c.post(SI, {"customer": cus, "payment_method": "pm_card_authenticationRequired", "confirm": "true",
                         "return_url": RETURN}).json
        first = si["latest_attempt"]
        self.assertTrue(first.startswith("setatt_"), si)
        a = c.get("/v1/setup_attempts", {"setup_intent": si["id"]}).json["data"]
        self.assertEqual([(x["id"], x["status"]) for x in a], [(first, "requires_action")])
        self.challenge(si, "fail")
        r = c.post(SI + "/%s/confirm" % si["id"], {"payment_method": "pm_card_chargeDeclined"})
        self.assertEqual(r.status, 402, r)
        declined = r.json["error"]["setup_intent"]["latest_attempt"]
        si = c.post(SI + "/%s/confirm" % si["id"], {"payment_method": "pm_card_threeDSecure2Required",
                                                     "return_url": RETURN}).json
        left = si["latest_attempt"]
        si = c.post(SI + "/%s/confirm" % si["id"], {"payment_method": "pm_card_visa",
                                                     "expand[]": "latest_attempt"}).json
        self.assertEqual(si["status"], "succeeded", si)
        last = si["latest_attempt"]
        self.assertEqual((last["object"], last["status"], last["setup_intent"], last["customer"]),
                         ("setup_attempt", "succeeded", si["id"], cus))
        self.assertEqual(last["payment_method"], si["payment_method"])
        self.assertEqual((last["payment_method_details"]["type"],
                          last["payment_method_details"]["card"]["last4"]), ("card", "4242"))
        self.assertIsNone(last["payment_method_details"]["card"]["three_d_secure"])
        got = self.attempts(si["id"])
        self.assertEqual([(x["id"], x["status"]) for x in got],
                         [(last["id"], "succeeded"), (left, "abandoned"), (declined, "failed"), (first, "failed")])
        by_id = {x["id"]: x for x in got}
        self.assertEqual(by_id[declined]["setup_error"]["decline_code"], "generic_decline")
        self.assertEqual(by_id[first]["setup_error"]["code"], "setup_intent_authentication_failure")
        self.assertIsNone(by_id[last["id"]]["setup_error"])
        # paging
        page = self.attempts(si["id"], limit=2)
        rest = self.attempts(si["id"], starting_after=page[-1]["id"])
        self.assertEqual([x["id"] for x in page + rest], [x["id"] for x in got])
        # an authenticated setup records its 3-D Secure result
        si = c.post(SI, {"customer": cus, "payment_method_data": card("5555555555554444"), "confirm": "true",
                         "return_url": RETURN, "payment_method_options[card][request_three_d_secure]": "any"}).json
        self.challenge(si, "approve")
        a = self.attempts(si["id"])[0]
        self.assertEqual(a["status"], "succeeded")
        tds = a["payment_method_details"]["card"]["three_d_secure"]
        self.assertRegex(tds["transaction_id"] or "", r"^[0-9a-f-]{36}$")  # it was null
        self.assertEqual((tds["result"], tds["electronic_commerce_indicator"]), ("authenticated", "02"))
        # canceling abandons an attempt that waits for its challenge
        si = c.post(SI, {"payment_method": "pm_card_threeDSecure2Required", "confirm": "true",
                         "return_url": RETURN}).json
        c.post(SI + "/%s/cancel" % si["id"], {})
        self.assertEqual(self.attempts(si["id"])[0]["status"], "abandoned")
        # and so does another card given while the challenge is out
        si = c.post(SI, {"payment_method": "pm_card_threeDSecure2Required", "confirm": "true",
                         "return_url": RETURN}).json
        r = c.post(SI + "/" + si["id"], {"payment_method": "pm_card_visa"})
        self.assertEqual(r.json["status"], "requires_confirmation", r)
        self.assertEqual([a["status"] for a in self.attempts(si["id"])], ["abandoned"])
        # setup_intent is required, and must name one of the merchant's SetupIntents
        self.assertStripeError(c.get("/v1/setup_attempts"), 400, code="parameter_missing", param="setup_intent")
        self.assertStripeError(c.get("/v1/setup_attempts", {"setup_intent": "seti_nope"}), 404,
                               code="resource_missing", param="setup_intent")

    def test_the_merchant_can_ask_for_3ds_on_any_card(self):
        # but not on Stripe's 4242 (not enrolled), and on 3097 the attempt fails
        si = self.c().post(SI, {"payment_method": "pm_card_visa", "confirm": "true", "return_url": RETURN,
                                "payment_method_options[card][request_three_d_secure]": "any"}).json
        self.assertEqual(si["status"], "succeeded", si)
        r = self.c().post(SI, {"payment_method_data": card("4000000000003097"), "confirm": "true",
                               "return_url": RETURN, "payment_method_options[card][request_three_d_secure]": "any"})
        self.assertEqual((r.status, r.json["error"]["code"], r.json["error"]["setup_intent"]["status"]),
                         (402, "processing_error", "requires_payment_method"), r)
        si = self.c().post(SI, {"payment_method": "pm_card_mastercard", "confirm": "true", "return_url": RETURN,
                                "payment_method_options[card][request_three_d_secure]": "any"}).json
        self.assertEqual(si["status"], "requires_action", si)
        self.assertEqual(si["payment_method_options"]["card"]["request_three_d_secure"], "any")
        self.challenge(si, "approve")
        self.assertEqual(self.c().get(SI + "/" + si["id"]).json["status"], "succeeded")

    def test_a_declined_card_is_not_saved(self):
        c = self.c()
        cus = self.customer()
        for pan, code, decline in [("4000000000000002", "card_declined", "generic_decline"),
                                   ("4000000000009995", "card_declined", "insufficient_funds"),
                                   ("4000000000000127", "incorrect_cvc", "incorrect_cvc")]:
            r = c.post(SI, {"customer": cus, "payment_method_data": card(pan), "confirm": "true"})
            err = self.assertStripeError(r, 402, "card_error", code)
            self.assertEqual(err["decline_code"], decline)
            si = err["setup_intent"]
            self.assertEqual((si["status"], si["payment_method"]), ("requires_payment_method", None))
            self.assertEqual(si["last_setup_error"]["decline_code"], decline)
            pm = si["last_setup_error"]["payment_method"]
            self.assertIsNone(c.get("/v1/payment_methods/" + pm["id"]).json["customer"])
            self.assertEqual(c.get(SI + "/" + si["id"]).json["status"], "requires_payment_method")
            self.assertEqual(self.events(si["id"]), ["setup_intent.created", "setup_intent.setup_failed"])
        self.assertEqual(c.get("/v1/customers/%s/payment_methods" % cus).json["data"], [])

    def test_a_setup_reports_the_checks_it_made(self):
        """A setup verifies the card with its issuer: the CVC and address it
        was given read pass on the PaymentMethod and the SetupAttempt, not
        unchecked; a check the issuer fails (4000000000000010's address)
        reads fail; what was not given stays null."""
        c = self.c()
        cus = self.customer()
        for pan, want in (("4242424242424242", ("pass", "pass", "pass")),
                          ("4000000000000010", ("fail", "fail", "pass"))):
            pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": pan, "card[exp_month]": "12",
                                                "card[exp_year]": "2034", "card[cvc]": "123",
                                                "billing_details[address][line1]": "1 Main St",
                                                "billing_details[address][postal_code]": "94103"}).json
            checks = pm["card"]["checks"]
            self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"],
                              checks["cvc_check"]), ("unchecked",) * 3, pm)
            si = c.post(SI, {"customer": cus, "payment_method": pm["id"], "confirm": "true"})
            self.assertEqual((si.status, si.json.get("status")), (200, "succeeded"), si)
            checks = c.get("/v1/payment_methods/" + pm["id"]).json["card"]["checks"]
            got = (checks["address_line1_check"], checks["address_postal_code_check"], checks["cvc_check"])
            self.assertEqual(got, want, checks)
            att = c.get("/v1/setup_attempts", {"setup_intent": si.json["id"]}).json["data"][0]
            checks = att["payment_method_details"]["card"]["checks"]
            self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"],
                              checks["cvc_check"]), want, att)
        # a CVC the issuer refuses reads fail (4000000000000101), on the card and in the error
        pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4000000000000101",
                                            "card[exp_month]": "12", "card[exp_year]": "2034",
                                            "card[cvc]": "123"}).json
        err = self.assertStripeError(c.post(SI, {"customer": cus, "payment_method": pm["id"], "confirm": "true"}),
                                     402, "card_error", "incorrect_cvc")
        self.assertEqual(err["payment_method"]["card"]["checks"]["cvc_check"], "fail", err)
        self.assertEqual(c.get("/v1/payment_methods/" + pm["id"]).json["card"]["checks"]["cvc_check"], "fail")
        pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                            "card[exp_month]": "12", "card[exp_year]": "2034"}).json
        self.assertEqual(c.post(SI, {"customer": cus, "payment_method": pm["id"], "confirm": "true"}).status, 200)
        checks = c.get("/v1/payment_methods/" + pm["id"]).json["card"]["checks"]
        self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"], checks["cvc_check"]),
                         (None, None, None), checks)

    def test_missing_things_are_404s_and_every_key_is_there(self):
        c = self.c()
        si = c.post(SI, {}).json
        self.assertIn("flow_directions", si)  # Stripe's SetupIntent has the key, null by default
        self.assertIsNone(si["flow_directions"])
        err = self.assertStripeError(c.get("/v1/setup_attempts", {"setup_intent": "seti_nope"}), 404,
                                     "invalid_request_error", "resource_missing")
        self.assertEqual((err["param"], err["message"]), ("setup_intent", "No such setupintent: 'seti_nope'"), err)
        self.assertEqual(c.get("/v1/setup_attempts", {"setup_intent": si["id"]}).json["data"], [])
        cus = self.customer()
        err = self.assertStripeError(c.post("/v1/customers/" + cus,
                                            {"invoice_settings[default_payment_method]": "pm_nope"}),
                                     404, "invalid_request_error", "resource_missing")
        self.assertEqual(err["param"], "invoice_settings[default_payment_method]", err)

    def test_cancel_list_and_retrieve(self):
        c = self.c()
        cus = self.customer()
        a = c.post(SI, {"customer": cus}).json
        b = c.post(SI, {"customer": cus, "payment_method": "pm_card_visa", "confirm": "true"}).json
        other = c.post(SI, {}).json
        r = c.post(SI + "/%s/cancel" % a["id"], {"cancellation_reason": "requested_by_customer"})
        self.assertEqual((r.json["status"], r.json["cancellation_reason"]), ("canceled", "requested_by_customer"))
        self.assertEqual(self.events(a["id"]), ["setup_intent.created", "setup_intent.canceled"])
        ids = [s["id"] for s in c.get(SI, {"customer": cus}).json["data"]]
        self.assertEqual(ids, [b["id"], a["id"]])
        ids = [s["id"] for s in c.get(SI, {"payment_method": b["payment_method"]}).json["data"]]
        self.assertEqual(ids, [b["id"]])
        page = c.get(SI, {"limit": 2}).json
        self.assertEqual((page["url"], page["has_more"], page["data"][0]["id"]), (SI, True, other["id"]))
        r = c.get(SI + "/seti_nothere")
        self.assertStripeError(r, 404, "invalid_request_error", "resource_missing")
        # another merchant's SetupIntent is not found
        self.assertEqual(self.c("n").get(SI + "/" + b["id"]).status, 404)

    MERCHANTS = ("m", "n")

    def test_a_card_of_another_customer_is_refused(self):
        c = self.c()
        cus1, cus2 = self.customer(), self.customer()
        si = c.post(SI, {"customer": cus1, "payment_method": "pm_card_visa", "confirm": "true"}).json
        r = c.post(SI, {"customer": cus2, "payment_method": si["payment_method"], "confirm": "true"})
        self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unexpected_state")

    def test_another_customers_card_is_refused_when_it_is_set_not_only_at_confirmation(self):
        """Stripe checks whose card it is when payment_method (or customer)
        is set on a PaymentIntent or SetupIntent: at create and update, not
        only at confirmation. A saved card with the customer left out names
        the customer to include. Nothing is written."""
        c = self.c()
        cus1, cus2 = self.customer(), self.customer()
        pm = c.post("/v1/payment_methods", {"type": "card", "card[token]": "tok_visa"}).json["id"]
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus1}).status, 200)
        written = lambda: sum(self.count(t) for t in ("events", "payment_intents", "setup_intents"))
        before = written()
        for path, extra in (("/v1/payment_intents", {"amount": 1000, "currency": "usd"}), (SI, {})):
            with self.subTest(path=path):
                r = c.post(path, dict(extra, customer=cus2, payment_method=pm))
                self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unexpected_state")
                self.assertEqual(r.json["error"]["param"], "payment_method")
                r = c.post(path, dict(extra, payment_method=pm))
                self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unexpected_state")
                self.assertIn("belongs to the Customer " + cus1, r.json["error"]["message"])
                self.assertEqual(written(), before)
                # an update that sets another customer's card, or a customer
                # the card is not saved to, is refused and changes nothing
                obj = c.post(path, dict(extra, customer=cus2)).json
                before = written()
                r = c.post(path + "/" + obj["id"], {"payment_method": pm})
                self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unexpected_state")
                self.assertIsNone(c.get(path + "/" + obj["id"]).json["payment_method"])
                # its own customer's card is accepted
                ok = c.post(path, dict(extra, customer=cus1, payment_method=pm))
                self.assertEqual((ok.status, ok.json["payment_method"]), (200, pm), ok)
                before = written()
        pi = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}).json
        r = c.post("/v1/payment_intents/" + pi["id"], {"payment_method": pm})
        self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unexpected_state")
        r = c.post("/v1/payment_intents/" + pi["id"], {"payment_method": pm, "customer": cus1})
        self.assertEqual((r.status, r.json["payment_method"], r.json["customer"]), (200, pm, cus1), r)

    def test_the_publishable_key_sees_the_client_view(self):
        pk = self.daemon.merchants["m"]["publishable_key"]
        si = self.c().post(SI, {"customer": self.customer(), "metadata": {"secret": "yes"}}).json
        pc = self.daemon.client("m")
        r = pc.get(SI + "/" + si["id"], {"client_secret": si["client_secret"]}, key=pk)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("metadata", r.json)
        self.assertNotIn("customer", r.json)
        self.assertEqual(r.json["status"], "requires_payment_method")
        r = pc.get(SI + "/" + si["id"], {"client_secret": "seti_x_secret_y"}, key=pk)
        self.assertEqual(r.status, 400, r)
        r = pc.post(SI + "/%s/confirm" % si["id"], {"client_secret": si["client_secret"],
                                                     "payment_method": "pm_card_visa"}, key=pk)
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"))
        self.assertNotIn("metadata", r.json)
        # creating one takes the secret key
        self.assertEqual(pc.post(SI, {}, key=pk).status, 403)

    def test_bad_input_changes_nothing(self):
        c = self.c()
        before = self.count("setup_intents")
        for params, param in [({"payment_method_types[]": "sepa_debit"}, "payment_method_types"),
                              ({"usage": "sometimes"}, "usage"),
                              ({"customer": "cus_missing"}, "customer"),
                              ({"payment_method": "pm_missing"}, "payment_method"),
                              ({"flow_directions[]": "sideways"}, "flow_directions"),
                              ({"excluded_payment_method_types[]": "card"}, "excluded_payment_method_types"),
                              ({"payment_method": "pm_card_visa", "payment_method_data": card("4242424242424242")},
                               "payment_method_data"),
                              ({"single_use[amount]": "100"}, "single_use"),
                              ({"on_behalf_of": "acct_x"}, "on_behalf_of"),
                              ({"confirm": "true"}, "payment_method"),
                              ({"payment_method_data": card("4242424242424241"), "confirm": "true"},
                               "payment_method_data[card][number]")]:
            r = c.post(SI, params)
            self.assertIn(r.status, (400, 402, 404), (params, r))
            self.assertEqual(r.json["error"].get("param"), param, (params, r))
        self.assertEqual(self.count("setup_intents"), before)
        self.assertEqual(c.post(SI + "/seti_x/verify_microdeposits", {"amounts[]": "32"}).status, 404)
        mine = c.post(SI, {}).json["id"]
        before += 1
        r = c.post(SI + "/%s/verify_microdeposits" % mine, {"amounts[]": "32"})
        err = self.assertStripeError(r, 400, "invalid_request_error")
        self.assertEqual(err["tp_code"], 1101)
        # automatic payment methods need a return_url for a confirmation, as on PaymentIntents
        r = c.post(SI, {"automatic_payment_methods[enabled]": "true", "payment_method": "pm_card_visa",
                        "confirm": "true"})
        self.assertStripeError(r, 400, "invalid_request_error", "parameter_missing", "return_url")
        self.assertEqual(self.count("setup_intents"), before)


if __name__ == "__main__":
    main()
