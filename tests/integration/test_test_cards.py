"""Stripe's documented test cards behave as Stripe documents them: the test
PaymentMethods by name, the 3-D Secure cards by when their issuer asks
(always; until the card is set up by an authenticated payment; only
on-session), the cards declined after authentication or after attaching,
the fraud-risk cards (highest risk is blocked, elevated passes with its
level shown) and the address and CVC checks."""
import urllib.parse

from harness import DaemonTestCase, card, main

PI = "/v1/payment_intents"
RETURN = "https://shop.example/return"


class TestCards(DaemonTestCase):

    def pay(self, status=200, **params):
        body = {"amount": 1000, "currency": "usd", "confirm": "true"}
        body.update(params)
        r = self.c().post(PI, body)
        self.assertEqual(r.status, status, r)
        return r.json

    def authenticate(self, pi):
        """Pass the 3-D Secure challenge of a requires_action PaymentIntent;
        the PaymentIntent afterwards."""
        self.assertEqual(pi["status"], "requires_action", pi)
        u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        r = self.c().post(u.path, {"token": token, "result": "approve"}, key=None)
        self.assertEqual(r.status, 303, r)
        return self.c().get(PI + "/" + pi["id"], {"expand[]": "latest_charge"}).json

    def save_with_authentication(self, pan):
        """A customer and the card saved to it by an on-session payment that
        passed 3-D Secure; (customer, PaymentMethod id)."""
        cus = self.c().post("/v1/customers", {}).json["id"]
        pi = self.pay(customer=cus, setup_future_usage="off_session", payment_method_data=card(pan),
                      return_url=RETURN)
        done = self.authenticate(pi)
        self.assertEqual(done["status"], "succeeded", done)
        pm = self.c().get("/v1/payment_methods/" + done["payment_method"]).json
        self.assertEqual(pm["customer"], cus)
        return cus, pm

    def off_session(self, cus, pm_id, status):
        return self.pay(status, customer=cus, payment_method=pm_id, off_session="true")

    def test_test_payment_methods_by_name(self):
        want = {
            "pm_card_riskLevelElevated": "succeeded", "pm_card_avsFail": "succeeded",
            "pm_card_avsLine1Fail": "succeeded", "pm_card_avsZipFail": "succeeded",
            "pm_card_avsUnchecked": "succeeded", "pm_card_threeDSecureOptional": "succeeded",
            "pm_card_amex_threeDSecureNotSupported": "succeeded",
            "pm_card_threeDSecureRequired": "requires_action", "pm_card_threeDSecure2Required": "requires_action",
            "pm_card_threeDSecureRequiredChargeDeclined": "requires_action",
            "pm_card_authenticationRequired": "requires_action",
            "pm_card_authenticationRequiredOnSetup": "requires_action",
            "pm_card_authenticationRequiredSetupForOffSession": "requires_action",
            "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "requires_action",
            "pm_card_riskLevelHighest": "fraudulent", "pm_card_radarBlock": "fraudulent",
            "pm_card_cvcCheckFail": "incorrect_cvc", "pm_card_chargeCustomerFail": "generic_decline",
            "pm_card_visa_chargeDeclinedVelocityLimitExceeded": "card_velocity_exceeded",
        }
        for name, outcome in want.items():
            r = self.c().post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": name,
                                   "return_url": RETURN})
            got = r.json["status"] if r.status == 200 else r.json["error"].get("decline_code")
            self.assertEqual(got, outcome, (name, r))
        # the address-check ones carry an address, so their checks say what their names promise
        checks = {"pm_card_avsFail": ("fail", "fail"), "pm_card_avsLine1Fail": ("fail", "pass"),
                  "pm_card_avsZipFail": ("pass", "fail"), "pm_card_avsUnchecked": ("unavailable", "unavailable")}
        for name, (line1, zip_) in checks.items():
            r = self.c().post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": name,
                                   "expand[]": "latest_charge"})
            got = r.json["latest_charge"]["payment_method_details"]["card"]["checks"]
            self.assertEqual((got["address_line1_check"], got["address_postal_code_check"]), (line1, zip_), (name, got))

    def test_a_card_set_up_with_authentication_pays_off_session_without_it(self):
        pan = "4000002500003155"
        # Not set up: off-session asks for authentication, which nobody can give.
        cus = self.c().post("/v1/customers", {}).json["id"]
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
        err = self.off_session(cus, pm, 402)["error"]
        self.assertEqual(err["code"], "authentication_required", err)
        self.assertFalse(self.c().get("/v1/payment_methods/" + pm).json.get("turnpike"))
        # Set up by an authenticated payment: off-session goes through, again and again.
        cus, pm = self.save_with_authentication(pan)
        self.assertTrue(pm["turnpike"]["off_session_authenticated"], pm)
        for _ in range(2):
            self.assertEqual(self.off_session(cus, pm["id"], 200)["status"], "succeeded")
        # On-session, the issuer still asks.
        self.assertEqual(self.pay(customer=cus, payment_method=pm["id"], return_url=RETURN)["status"],
                         "requires_action")

    def test_a_card_set_up_by_an_earlier_attach_is_marked_by_its_authenticated_payment(self):
        pan = "4000002500003155"
        cus = self.c().post("/v1/customers", {}).json["id"]
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus})
        done = self.authenticate(self.pay(customer=cus, payment_method=pm, setup_future_usage="off_session",
                                          return_url=RETURN))
        self.assertEqual(done["status"], "succeeded")
        self.assertEqual(self.off_session(cus, pm, 200)["status"], "succeeded")
        # Without setup_future_usage an authenticated payment sets nothing up.
        pm2 = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        self.c().post("/v1/payment_methods/%s/attach" % pm2, {"customer": cus})
        self.authenticate(self.pay(customer=cus, payment_method=pm2, return_url=RETURN))
        self.assertEqual(self.off_session(cus, pm2, 402)["error"]["code"], "authentication_required")

    def test_a_card_that_always_asks_fails_off_session_even_when_set_up(self):
        cus, pm = self.save_with_authentication("4000002760003184")
        err = self.off_session(cus, pm["id"], 402)["error"]
        self.assertEqual(err["code"], "authentication_required", err)

    def test_a_card_that_asks_only_on_session(self):
        pan = "4000003800000446"
        self.assertEqual(self.pay(payment_method_data=card(pan), return_url=RETURN)["status"], "requires_action")
        cus = self.c().post("/v1/customers", {}).json["id"]
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus})
        self.assertEqual(self.off_session(cus, pm, 200)["status"], "succeeded")

    def test_cards_declined_after_authentication(self):
        for pan, code in [("4000008400001629", "generic_decline"), ("4000008260003178", "insufficient_funds")]:
            done = self.authenticate(self.pay(payment_method_data=card(pan), return_url=RETURN))
            self.assertEqual(done["status"], "requires_payment_method", done)
            self.assertEqual(done["last_payment_error"]["decline_code"], code)
            ch = done["latest_charge"]
            self.assertEqual(ch["status"], "failed")
            self.assertEqual(ch["payment_method_details"]["card"]["three_d_secure"]["result"], "authenticated")

    def test_a_card_authenticated_to_be_saved_without_a_customer_is_set_up(self):
        """setup_future_usage with no customer: the card that passed its
        challenge is set up all the same (it may be attached later), as a
        SetupIntent's without a customer is; it paid off-session only after
        a SetupIntent, not after such a payment."""
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        done = self.authenticate(self.pay(payment_method=pm, setup_future_usage="off_session", return_url=RETURN))
        self.assertEqual(done["status"], "succeeded", done)
        cus = self.c().post("/v1/customers", {}).json["id"]
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
        self.assertEqual(self.off_session(cus, pm, 200)["status"], "succeeded")

    def test_a_card_set_up_then_declined_for_insufficient_funds(self):
        """4000008260003178: Stripe declines every payment insufficient_funds
        "even after being successfully authenticated or previously set up".
        A SetupIntent sets it up after its challenge; an off-session payment
        then declines insufficient_funds without asking (it answered
        authentication_required, so the decline could never be tested)."""
        pan = "4000008260003178"
        cus = self.c().post("/v1/customers", {}).json["id"]
        si = self.c().post("/v1/setup_intents", {"customer": cus, "confirm": "true", "usage": "off_session",
                                                 "payment_method_data[type]": "card",
                                                 "payment_method_data[card][number]": pan,
                                                 "payment_method_data[card][exp_month]": "12",
                                                 "payment_method_data[card][exp_year]": "2034",
                                                 "payment_method_data[card][cvc]": "123", "return_url": RETURN}).json
        self.assertEqual(si["status"], "requires_action", si)
        u = urllib.parse.urlsplit(si["next_action"]["redirect_to_url"]["url"])
        r = self.c().post(u.path, {"token": urllib.parse.parse_qs(u.query)["token"][0], "result": "approve"},
                          key=None)
        self.assertEqual(r.status, 303, r)
        si = self.c().get("/v1/setup_intents/" + si["id"]).json
        self.assertEqual(si["status"], "succeeded", si)
        err = self.off_session(cus, si["payment_method"], 402)["error"]
        self.assertEqual((err["code"], err["decline_code"]), ("card_declined", "insufficient_funds"), err)

    def test_a_card_that_attaches_but_is_never_charged(self):
        pan = "4000000000000341"
        cus = self.c().post("/v1/customers", {}).json["id"]
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
        err = self.pay(402, customer=cus, payment_method=pm)["error"]
        self.assertEqual((err["code"], err["decline_code"]), ("card_declined", "generic_decline"))
        self.assertEqual(err["doc_url"], "https://stripe.com/docs/error-codes/card-declined")  # Stripe's page
        self.assertIn("/v1/turnpike/requests/req_", err["request_log_url"])  # as every other error
        # saved through a SetupIntent too (the card check passes), then declined
        si = self.c().post("/v1/setup_intents", {"customer": cus, "confirm": "true", "usage": "off_session",
                                                 "payment_method_data[type]": "card",
                                                 "payment_method_data[card][number]": pan,
                                                 "payment_method_data[card][exp_month]": "12",
                                                 "payment_method_data[card][exp_year]": "2034"})
        self.assertEqual((si.status, si.json.get("status")), (200, "succeeded"), si)
        err = self.pay(402, customer=cus, payment_method=si.json["payment_method"], off_session="true")["error"]
        self.assertEqual(err["decline_code"], "generic_decline")

    def test_a_refund_to_a_closed_card_fails_and_the_money_comes_back(self):
        pi = self.pay(payment_method="pm_card_refundFail", amount=2500)
        self.assertEqual(pi["status"], "succeeded")
        bal = lambda: sum(b["amount"] for b in self.c().get("/v1/balance").json["pending"] if b["currency"] == "usd")
        before = bal()
        r = self.c().post("/v1/refunds", {"payment_intent": pi["id"], "amount": 1000})
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"))  # as first answered
        re = self.c().get("/v1/refunds/" + r.json["id"]).json
        self.assertEqual((re["status"], re["failure_reason"]), ("failed", "expired_or_canceled_card"))
        bt = self.c().get("/v1/balance_transactions/" + re["failure_balance_transaction"]).json
        self.assertEqual((bt["amount"], bt["type"], bt["source"]), (1000, "refund_failure", re["id"]))
        self.assertEqual(bal(), before)  # -1000 refunded, +1000 returned
        ch = self.c().get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual((ch["amount_refunded"], ch["refunded"]), (0, False))
        evs = [e for e in reversed(self.c().get("/v1/events", {"limit": 100}).json["data"])
               if e["data"]["object"]["id"] == re["id"]]
        self.assertEqual([e["type"] for e in evs],
                         ["refund.created", "refund.updated", "charge.refund.updated", "refund.failed"])
        # the failure comes later, from the card network: no request made it
        self.assertEqual([e["request"]["id"] is None for e in evs], [False, True, True, True])
        self.assertEqual(evs[1]["data"]["previous_attributes"]["status"], "succeeded")
        # the whole amount can still be refunded (and fails again)
        r = self.c().post("/v1/refunds", {"payment_intent": pi["id"]})
        self.assertEqual((r.status, r.json["amount"]), (200, 2500))

    def test_fraud_risk_levels(self):
        for name in ("pm_card_riskLevelHighest", "pm_card_radarBlock"):
            err = self.pay(402, payment_method=name)["error"]
            self.assertEqual(err["decline_code"], "fraudulent")
            ch = self.c().get("/v1/charges/" + err["charge"]).json
            o = ch["outcome"]
            self.assertEqual((o["type"], o["reason"], o["risk_level"], o["network_status"]),
                             ("blocked", "highest_risk_level", "highest", "not_sent_to_network"), name)
            self.assertEqual((ch["status"], ch["failure_code"]), ("failed", "card_declined"))
        ch = self.pay(payment_method="pm_card_riskLevelElevated", **{"expand[]": "latest_charge"})["latest_charge"]
        self.assertEqual((ch["outcome"]["type"], ch["outcome"]["risk_level"]), ("authorized", "elevated"))
        self.assertGreater(ch["outcome"]["risk_score"], 20)
        ch = self.pay(payment_method="pm_card_visa", **{"expand[]": "latest_charge"})["latest_charge"]
        self.assertEqual((ch["outcome"]["risk_level"], ch["outcome"]["risk_score"]), ("normal", 20))
        # an ordinary decline is the issuer's, not a block
        err = self.pay(402, payment_method="pm_card_chargeDeclined")["error"]
        o = self.c().get("/v1/charges/" + err["charge"]).json["outcome"]
        self.assertEqual((o["type"], o["network_status"]), ("issuer_declined", "declined_by_network"))
        # Stripe's seller_message names the issuer's reason, unless it gave none
        self.assertEqual(o["seller_message"], "The bank did not return any further details with this decline.")
        self.assertEqual(err["message"], "Your card was declined.")
        err = self.pay(402, payment_method="pm_card_chargeDeclinedInsufficientFunds")["error"]
        o = self.c().get("/v1/charges/" + err["charge"]).json["outcome"]
        self.assertEqual(o["seller_message"], "The bank returned the decline code `insufficient_funds`.")
        self.assertEqual(err["message"], "Your card has insufficient funds.")

    def test_address_and_cvc_checks(self):
        address = {"line1": "1 Main St", "postal_code": "12345"}
        for pan, line1, zip_ in [("4242424242424242", "pass", "pass"), ("4000000000000010", "fail", "fail"),
                                 ("4000000000000028", "fail", "pass"), ("4000000000000036", "pass", "fail"),
                                 ("4000000000000044", "unavailable", "unavailable")]:
            pmd = dict(card(pan), billing_details={"address": address})
            pi = self.pay(payment_method_data=pmd, **{"expand[]": "latest_charge"})
            self.assertEqual(pi["status"], "succeeded", pan)  # address checks alone decline nothing
            checks = pi["latest_charge"]["payment_method_details"]["card"]["checks"]
            self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"],
                              checks["cvc_check"]), (line1, zip_, "pass"), pan)
        # the PaymentMethod shows what came with its card, unchecked (Stripe checks at the charge)
        pmd = dict(card("4242424242424242"), billing_details={"address": address})
        pm = self.c().post("/v1/payment_methods", pmd).json
        self.assertEqual((pm["card"]["checks"]["address_line1_check"], pm["card"]["checks"]["address_postal_code_check"],
                          pm["card"]["checks"]["cvc_check"]), ("unchecked", "unchecked", "unchecked"), pm)
        cus = self.c().post("/v1/customers", {}).json["id"]  # only a saved card is updated
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus}).status, 200)
        pm = self.c().post("/v1/payment_methods/" + pm["id"], {"billing_details": {"address": {"line1": ""}}}).json
        self.assertEqual((pm["card"]["checks"]["address_line1_check"], pm["card"]["checks"]["address_postal_code_check"]),
                         (None, "unchecked"), pm)
        bare = self.c().post("/v1/payment_methods", card("4242424242424242")).json
        self.assertEqual((bare["card"]["checks"]["address_line1_check"],
                          bare["card"]["checks"]["address_postal_code_check"]), (None, None), bare)
        # no address given: nothing to check
        pi = self.pay(payment_method_data=card("4000000000000010"), **{"expand[]": "latest_charge"})
        checks = pi["latest_charge"]["payment_method_details"]["card"]["checks"]
        self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"]), (None, None))
        # only the postal code given: only it is checked
        pmd = dict(card("4000000000000036"), billing_details={"address": {"postal_code": "12345"}})
        checks = self.pay(payment_method_data=pmd, **{"expand[]": "latest_charge"})["latest_charge"][
            "payment_method_details"]["card"]["checks"]
        self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"]), (None, "fail"))
        # Stripe's test PaymentMethods carry a CVC, which the issuer checks
        checks = self.pay(payment_method="pm_card_visa", **{"expand[]": "latest_charge"})["latest_charge"][
            "payment_method_details"]["card"]["checks"]
        self.assertEqual(checks["cvc_check"], "pass")
        # a wrong CVC fails the check and the payment
        for pan in ("4000000000000127", "4000000000000101"):
            err = self.pay(402, payment_method_data=card(pan))["error"]
            self.assertEqual(err["code"], "incorrect_cvc")
            ch = self.c().get("/v1/charges/" + err["charge"]).json
            self.assertEqual(ch["payment_method_details"]["card"]["checks"]["cvc_check"], "fail")

    def test_the_cvc_check_card_fails_only_with_a_cvc(self):
        """4000000000000101: "charge will succeed unless a CVC is entered, in
        which case cvc_check will fail and the charge will be declined"; a
        PaymentMethod's checks.cvc_check is "unchecked" when a CVC came with
        its card and null otherwise, and a saved card's CVC is checked when
        it is charged."""
        pan = "4000000000000101"
        # no CVC now: approved, nothing checked
        pi = self.pay(payment_method_data=card(pan, cvc=None), **{"expand[]": "latest_charge"})
        self.assertEqual(pi["status"], "succeeded", pi)
        self.assertIsNone(pi["latest_charge"]["payment_method_details"]["card"]["checks"]["cvc_check"])
        self.assertIsNone(self.c().get("/v1/payment_methods/" + pi["payment_method"]).json[
            "card"]["checks"]["cvc_check"])
        # an ordinary card without a CVC: null too, and with one: pass
        pi = self.pay(payment_method_data=card("4242424242424242", cvc=None), **{"expand[]": "latest_charge"})
        self.assertIsNone(pi["latest_charge"]["payment_method_details"]["card"]["checks"]["cvc_check"])
        # saved without a CVC, charged later: approved
        bare = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034}}).json
        self.assertIsNone(bare["card"]["checks"]["cvc_check"], bare)
        self.assertEqual(self.pay(payment_method=bare["id"])["status"], "succeeded")
        # saved with a CVC: unchecked until charged, then the charge fails the check
        held = self.c().post("/v1/payment_methods", {"type": "card", "card": {
            "number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json
        self.assertEqual(held["card"]["checks"]["cvc_check"], "unchecked", held)
        err = self.pay(402, payment_method=held["id"])["error"]
        self.assertEqual((err["code"], err["decline_code"], err["param"]), ("incorrect_cvc", "incorrect_cvc", "cvc"),
                         err)
        pi = self.c().get(PI + "/" + err["payment_intent"]["id"]).json
        self.assertEqual(pi["last_payment_error"]["param"], "cvc")
        # the card field a decline is about is its param, as on Stripe; none for the others
        for other, param in (("4000000000000069", "exp_month"), ("4000000000000002", None),
                             ("4000000000009995", None)):
            self.assertEqual(self.pay(402, payment_method_data=card(other))["error"].get("param"), param, other)
        ch = self.c().get("/v1/charges/" + err["charge"]).json
        self.assertEqual(ch["payment_method_details"]["card"]["checks"]["cvc_check"], "fail")
        # Stripe's test objects carry one: the test PaymentMethod and the test token decline
        for name in ("pm_card_cvcCheckFail",):
            self.assertEqual(self.pay(402, payment_method=name)["error"]["code"], "incorrect_cvc")
        tok = {"type": "card", "card": {"token": "tok_cvcCheckFail"}}
        self.assertEqual(self.pay(402, payment_method_data=tok)["error"]["code"], "incorrect_cvc")
        # a card token keeps whether a CVC came with it
        for cvc, want in ((None, 200), ("123", 402)):
            c = {"number": pan, "exp_month": 12, "exp_year": 2034}
            if cvc:
                c["cvc"] = cvc
            t = self.c().post("/v1/tokens", {"card": c}).json["id"]
            self.pay(want, payment_method_data={"type": "card", "card": {"token": t}})
        # a SetupIntent verifies the card the same way
        for cvc, want in ((None, "succeeded"), ("123", "requires_payment_method")):
            c = {"number": pan, "exp_month": 12, "exp_year": 2034}
            if cvc:
                c["cvc"] = cvc
            r = self.c().post("/v1/setup_intents", {"confirm": "true", "payment_method_data": {"type": "card",
                                                                                             "card": c}})
            si = r.json if r.status == 200 else r.json["error"]["setup_intent"]
            self.assertEqual(si["status"], want, r)
            if r.status != 200:
                self.assertEqual((r.json["error"]["code"], r.json["error"]["param"]), ("incorrect_cvc", "cvc"))


if __name__ == "__main__":
    main()
