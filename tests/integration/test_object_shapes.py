"""Every object the API returns has the shape the official SDK's types give
it (tests/integration/sdk_types.py reads them from stripe-node's .d.ts): each
field the type declares as always present is there (null where Turnpike has
no such feature), nulls only where the type allows them, strings, numbers
and booleans of the declared kind, enum values the type lists. Clients index
fields unconditionally: stripe-python raises AttributeError and stripe-ruby
NoMethodError on a key the object lacks, where Stripe would send null; a
typed client generated from the same types rejects the object.

The objects come from real flows (succeeded, held, declined, 3-D Secure,
canceled, refunded, deleted), by retrieve, list, search, expand and from
the events their changes left, whose data.object is checked against the
type its "object" names. No reply may repeat a key."""
import json
import os
import urllib.parse

from harness import PAN_3DS, PAN_DECLINE, DaemonTestCase, card, main
from sdk_types import Types

FILES = ["Charges.d.ts", "PaymentIntents.d.ts", "PaymentMethods.d.ts", "Customers.d.ts", "Refunds.d.ts",
         "Events.d.ts", "BalanceTransactions.d.ts", "Balance.d.ts", "WebhookEndpoints.d.ts", "SetupIntents.d.ts",
         "Disputes.d.ts", "Tokens.d.ts", "Cards.d.ts", "Accounts.d.ts", "SetupAttempts.d.ts",
         "Radar/EarlyFraudWarnings.d.ts"]
TYPE_OF = {"payment_intent": "PaymentIntent", "charge": "Charge", "payment_method": "PaymentMethod",
           "customer": "Customer", "refund": "Refund", "balance_transaction": "BalanceTransaction",
           "balance": "Balance", "webhook_endpoint": "WebhookEndpoint", "event": "EventBase",
           "setup_intent": "SetupIntent", "dispute": "Dispute", "token": "Token",
           "account": "Account", "card": "Card",
           "setup_attempt": "SetupAttempt", "radar.early_fraud_warning": "EarlyFraudWarning"}
# Turnpike's own additions, documented in docs/architecture.md §11.
OWN = {"turnpike", "tp_code"}


def no_repeated_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise AssertionError("repeated keys %s in one object" % dup)
    return dict(pairs)


class ObjectShapes(DaemonTestCase):

    @classmethod
    def setUpClass(cls):
        cls.types = Types(FILES)  # before the daemon starts: a failure here leaves none running
        cls.seen = {}
        super().setUpClass()

    def get(self, path, params=None):
        r = self.c().get(path, params)
        self.assertEqual(r.status, 200, r)
        return json.loads(r.body, object_pairs_hook=no_repeated_keys)

    def post(self, path, params, status=200):
        r = self.c().post(path, params)
        self.assertEqual(r.status, status, r)
        return json.loads(r.body, object_pairs_hook=no_repeated_keys)

    def assertShape(self, obj, where):
        """obj agrees with the SDK type its "object" names; the events and
        lists inside are followed."""
        kind = obj.get("object")
        if kind in ("list", "search_result"):
            self.assertShape_list(obj, where)
            return
        if kind == "customer" and obj.get("deleted"):
            name = "DeletedCustomer"
        else:
            self.assertIn(kind, TYPE_OF, where)
            name = TYPE_OF[kind]
        problems, extras = [], set()
        self.types.check(obj, name, where, problems, extras)
        extras = {e for e in extras if e.rsplit(".", 1)[1] not in OWN and ".data.object" not in e
                  and ".previous_attributes" not in e}
        if os.environ.get("SHAPES_LIST"):  # list every disagreement instead of stopping at the first
            print("\n".join(problems + ["%s: not in the SDK's type" % e for e in sorted(extras)]))
            problems, extras = [], set()
        self.assertEqual(problems, [], "%s (%s) disagrees with the SDK's %s" % (where, obj.get("id"), name))
        self.assertFalse(extras, "%s: keys the SDK's %s does not have" % (where, name))
        self.seen[name] = self.seen.get(name, 0) + 1
        if kind == "event":
            inner = obj["data"]["object"]
            self.assertShape(inner, where + ".data.object")

    def assertShape_list(self, lst, where):
        fields = {"object", "data", "has_more", "url"}
        if lst["object"] == "search_result":
            fields |= {"next_page"}
        self.assertLessEqual(fields, set(lst), where)
        for i, item in enumerate(lst["data"]):
            self.assertShape(item, "%s.data[%d]" % (where, i))

    def test_the_sdk_types_are_read(self):
        """The parser finds what the checks below rely on (else they would
        pass on nothing)."""
        t = self.types.types
        for name, field in [("PaymentIntent", "latest_charge"), ("Charge", "receipt_url"),
                            ("Charge.PaymentMethodDetails.Card", "amount_authorized"),
                            ("PaymentMethod.Card", "regulated_status"), ("Refund", "payment_method"),
                            ("BalanceTransaction", "balance_type"), ("EventBase", "pending_webhooks"),
                            ("DeletedCustomer", "deleted"), ("WebhookEndpoint", "enabled_events")]:
            self.assertIn(field, [f[0] for f in t.get(name, [])], name)
        self.assertIn("'requires_capture'", self.types.aliases["PaymentIntent.Status"])
        problems = self.types.check({"id": 1, "object": "charge"}, "Charge", "probe", [])
        self.assertIn("probe.id = 1; the type is string", problems)
        self.assertTrue(any(p.startswith("probe.receipt_url missing") for p in problems), problems)

    def test_payment_flows(self):
        cus = self.post("/v1/customers", {"email": "shape@example.test", "name": "Shape"})
        self.assertShape(cus, "customer")
        paid = self.post("/v1/payment_intents", {
            "amount": 2000, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
            "customer": cus["id"], "setup_future_usage": "off_session", "shipping[name]": "A",
            "shipping[address][line1]": "1 Road", "statement_descriptor_suffix": "ORDER 1",
            "transfer_group": "g1", "expand[]": "latest_charge.balance_transaction"})
        self.assertEqual(paid["status"], "succeeded")
        self.assertShape(paid, "pi(succeeded, expanded)")
        ch = paid["latest_charge"]
        self.assertEqual(ch["payment_method_details"]["card"]["amount_authorized"], 2000)
        self.assertEqual(ch["transfer_group"], "g1")
        self.assertEqual(ch["statement_descriptor_suffix"], "ORDER 1")
        self.assertEqual(ch["shipping"]["name"], "A")
        self.assertEqual(ch["balance_transaction"]["balance_type"], "payments")
        held = self.post("/v1/payment_intents", {"amount": 1500, "currency": "eur", "confirm": "true",
                                                 "payment_method": "pm_card_mastercard",
                                                 "capture_method": "manual"})
        self.assertShape(held, "pi(requires_capture)")
        self.assertShape(self.get("/v1/charges/" + held["latest_charge"]), "charge(uncaptured)")
        self.assertShape(self.post("/v1/payment_intents/%s/capture" % held["id"], {"amount_to_capture": 1000}),
                         "pi(partially captured)")
        r = self.c().post("/v1/payment_intents", {"amount": 900, "currency": "usd", "confirm": "true",
                                                  "payment_method_data": card(PAN_DECLINE)})
        self.assertEqual(r.status, 402, r)
        declined = json.loads(r.body, object_pairs_hook=no_repeated_keys)["error"]["payment_intent"]
        self.assertShape(declined, "error.payment_intent")
        failed = self.get("/v1/charges/" + declined["latest_charge"])
        self.assertEqual(failed["status"], "failed")
        self.assertIsNone(failed["payment_method_details"]["card"]["amount_authorized"])
        self.assertShape(failed, "charge(failed)")
        self.assertShape(self.post("/v1/payment_intents", {"amount": 700, "currency": "usd"}),
                         "pi(requires_payment_method)")
        open_ = self.post("/v1/payment_intents", {"amount": 700, "currency": "usd",
                                                  "payment_method": "pm_card_visa"})
        self.assertShape(open_, "pi(requires_confirmation)")
        self.assertShape(self.post("/v1/payment_intents/%s/cancel" % open_["id"],
                                   {"cancellation_reason": "abandoned"}), "pi(canceled)")
        action = self.post("/v1/payment_intents", {
            "amount": 3100, "currency": "eur", "confirm": "true", "payment_method_data": card(PAN_3DS),
            "return_url": "https://shop.example/return"})
        self.assertEqual(action["status"], "requires_action")
        self.assertShape(action, "pi(requires_action)")
        url = urllib.parse.urlsplit(action["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(url.query)["token"][0]
        r = self.c().post(url.path, {"token": token, "result": "approve"}, key=None)
        self.assertEqual(r.status, 303, r)
        done = self.get("/v1/payment_intents/" + action["id"], {"expand[]": "latest_charge"})
        self.assertEqual(done["status"], "succeeded")
        self.assertIsInstance(done["latest_charge"]["payment_method_details"]["card"]["three_d_secure"], dict)
        self.assertShape(done, "pi(after 3-D Secure, expanded)")
        charges_api = self.post("/v1/charges", {"amount": 1200, "currency": "usd", "source": "tok_visa"})
        self.assertShape(charges_api, "charge(Charges API)")
        # the token's card is the charge's source, as Stripe shows it
        src = charges_api["source"]
        self.assertEqual((src["object"], src["last4"], src["brand"], src["id"]),
                         ("card", "4242", "Visa", charges_api["payment_method"]), src)
        self.assertTrue(src["id"].startswith("card_"), src)
        tok = self.post("/v1/tokens", {"card[number]": "5555555555554444", "card[exp_month]": "12",
                                       "card[exp_year]": "2040", "card[cvc]": "123"})
        ch = self.post("/v1/charges", {"amount": 1300, "currency": "usd", "source": tok["id"]})
        self.assertEqual((ch["source"]["id"], ch["payment_method"], ch["source"]["last4"]),
                         (tok["card"]["id"], tok["card"]["id"], "4444"), ch)
        refund = self.post("/v1/refunds", {"payment_intent": paid["id"], "amount": 500})
        self.assertEqual(refund["payment_method"], paid["payment_method"])
        self.assertEqual(refund["customer"], cus["id"])
        self.assertShape(refund, "refund")
        self.assertShape(self.get("/v1/balance_transactions/" + refund["balance_transaction"]),
                         "balance_transaction(refund)")
        self.assertShape(self.post("/v1/refunds", {"charge": held["latest_charge"]}), "refund(whole)")
        closed = self.post("/v1/payment_intents", {"amount": 800, "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_refundFail"})
        failed = self.post("/v1/refunds", {"payment_intent": closed["id"]})
        self.assertShape(self.get("/v1/refunds/" + failed["id"]), "refund(failed)")
        self.assertShape(self.get("/v1/charges/" + paid["latest_charge"]["id"]), "charge(refunded in part)")
        pm = self.get("/v1/payment_methods/" + paid["payment_method"])
        self.assertEqual(pm["customer"], cus["id"])
        self.assertShape(pm, "payment_method(attached)")
        self.assertShape(self.post("/v1/payment_methods", {"type": "card", "card": {
            "number": "5555555555554444", "exp_month": 1, "exp_year": 2040, "cvc": "321"},
            "billing_details": {"name": "N", "address": {"country": "FR"}}}), "payment_method(new)")
        self.assertShape(self.get("/v1/customers/%s/payment_methods" % cus["id"]), "customer.payment_methods")

        for path in ["/v1/payment_intents", "/v1/charges", "/v1/refunds", "/v1/customers",
                     "/v1/balance_transactions", "/v1/events"]:
            self.assertShape(self.get(path, {"limit": 100}), path)
        self.assertShape(self.get("/v1/payment_intents/search", {"query": "status:'succeeded'"}), "pi search")
        self.assertShape(self.get("/v1/charges/search", {"query": "amount>0"}), "charge search")
        self.assertShape(self.get("/v1/customers/search", {"query": "email:'shape@example.test'"}),
                         "customer search")
        self.assertShape(self.get("/v1/charges/%s/refunds" % paid["latest_charge"]["id"]), "charge.refunds")
        self.assertShape(self.get("/v1/balance"), "balance")
        self.assertShape(self.post("/v1/webhook_endpoints", {"url": "https://example.com/h",
                                                             "enabled_events[]": "*"}), "webhook_endpoint")
        self.assertShape(self.get("/v1/webhook_endpoints"), "webhook_endpoints")
        self.assertShape(self.c().delete("/v1/customers/" + cus["id"]).json, "deleted customer")
        # every kind was seen, events among them (with their objects)
        for name in ["PaymentIntent", "Charge", "PaymentMethod", "Customer", "DeletedCustomer", "Refund",
                     "BalanceTransaction", "Balance", "WebhookEndpoint", "EventBase"]:
            self.assertGreater(self.seen.get(name, 0), 0, name)
        self.assertGreater(self.seen["EventBase"], 10)

    def test_the_created_event_is_the_object_as_created(self):
        """A create with confirm=true is a creation and a confirmation:
        payment_intent.created shows the PaymentIntent before the
        confirmation changed it (no charge, nothing received), the later
        events and the reply after."""
        for body, status in (({"payment_method": "pm_card_visa"}, "requires_confirmation"),
                             ({"payment_method": "pm_card_chargeDeclined"}, "requires_confirmation"),
                             ({"payment_method_data[type]": "card", "payment_method_data[card][number]":
                               "4000002760003184", "payment_method_data[card][exp_month]": "12",
                               "payment_method_data[card][exp_year]": "2040"}, "requires_payment_method")):
            r = self.c().post("/v1/payment_intents", dict(body, amount=1000, currency="usd", confirm="true"))
            pi = r.json.get("error", {}).get("payment_intent") or r.json
            evs = {e["type"]: e["data"]["object"]
                   for e in self.get("/v1/events", {"limit": 20})["data"] if e["data"]["object"]["id"] == pi["id"]}
            created = evs["payment_intent.created"]
            self.assertShape(created, "payment_intent.created")
            self.assertEqual((created["status"], created["latest_charge"], created["amount_received"]),
                             (status, None, 0), created)
            self.assertNotEqual(pi["status"], created["status"], pi)
            self.assertEqual(len(evs), 2, sorted(evs))  # created, then succeeded, payment_failed or requires_action

    def test_asynchronous_capture_announces_the_balance_transaction(self):
        """capture_method=automatic_async (Stripe): charge.succeeded and
        payment_intent.succeeded may come without the balance transaction;
        a charge.updated after them brings it (previous_attributes null)."""
        r = self.c().post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                  "payment_method": "pm_card_visa",
                                                  "capture_method": "automatic_async"})
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        ch = self.get("/v1/charges/" + r.json["latest_charge"])
        self.assertTrue(ch["balance_transaction"].startswith("txn_"), ch)
        evs = [e for e in self.get("/v1/events", {"limit": 20})["data"]
               if e["data"]["object"]["id"] in (r.json["id"], ch["id"])][::-1]
        self.assertEqual([e["type"] for e in evs], ["payment_intent.created", "charge.succeeded",
                                                    "payment_intent.succeeded", "charge.updated"])
        self.assertIsNone(evs[1]["data"]["object"]["balance_transaction"])
        self.assertEqual(evs[3]["data"]["object"]["balance_transaction"], ch["balance_transaction"])
        self.assertEqual(evs[3]["data"]["previous_attributes"], {"balance_transaction": None})
        self.assertShape(evs[3], "charge.updated")
        # automatic (Turnpike's default) keeps them in charge.succeeded
        r = self.c().post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                  "payment_method": "pm_card_visa"})
        evs = [e for e in self.get("/v1/events", {"limit": 20})["data"]
               if e["data"]["object"]["id"] == r.json["latest_charge"]]
        self.assertEqual([e["type"] for e in evs], ["charge.succeeded"])
        self.assertIsNotNone(evs[0]["data"]["object"]["balance_transaction"])

    def test_setup_intents(self):
        cus = self.post("/v1/customers", {})["id"]
        self.assertShape(self.post("/v1/setup_intents", {"customer": cus}), "setup_intent(new)")
        self.assertShape(self.post("/v1/setup_intents", {"customer": cus, "payment_method": "pm_card_visa",
                                                         "confirm": "true", "expand[]": "payment_method"}),
                         "setup_intent(succeeded, expanded)")
        self.assertShape(self.post("/v1/setup_intents", {"payment_method": "pm_card_threeDSecure2Required",
                                                         "confirm": "true", "return_url": "https://x.test/r"}),
                         "setup_intent(requires_action)")
        r = self.c().post("/v1/setup_intents", {"payment_method": "pm_card_chargeDeclined", "confirm": "true"})
        self.assertEqual(r.status, 402, r)
        self.assertShape(json.loads(r.body, object_pairs_hook=no_repeated_keys)["error"]["setup_intent"],
                         "error.setup_intent")
        open_ = self.post("/v1/setup_intents", {"payment_method": "pm_card_visa"})
        self.assertShape(self.post("/v1/setup_intents/%s/cancel" % open_["id"], {"cancellation_reason": "abandoned"}),
                         "setup_intent(canceled)")
        self.assertShape(self.get("/v1/setup_intents", {"limit": 100}), "/v1/setup_intents")
        for si in self.get("/v1/setup_intents", {"limit": 100})["data"]:
            if si["latest_attempt"]:
                self.assertShape(self.get("/v1/setup_attempts", {"setup_intent": si["id"]}), "/v1/setup_attempts")
        self.assertGreaterEqual(self.seen.get("SetupAttempt", 0), 3)
        self.assertGreaterEqual(self.seen.get("SetupIntent", 0), 10)

    def test_disputes(self):
        for pm in ("pm_card_createDispute", "pm_card_createDisputeInquiry"):
            ch = self.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                   "payment_method": pm})["latest_charge"]
            dp = self.get("/v1/disputes", {"charge": ch})["data"][0]
            self.assertShape(dp, "dispute(open)")
            self.assertShape(self.post("/v1/disputes/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"}),
                             "dispute(won)")
        self.assertShape(self.get("/v1/disputes", {"limit": 100}), "/v1/disputes")
        self.assertShape(self.get("/v1/events", {"limit": 100, "type": "charge.dispute.*"}), "dispute events")
        self.assertGreaterEqual(self.seen.get("Dispute", 0), 8)
        ch = self.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                               "payment_method": "pm_card_createIssuerFraudRecord"})["latest_charge"]
        self.assertShape(self.get("/v1/radar/early_fraud_warnings", {"charge": ch}), "/v1/radar/early_fraud_warnings")
        self.post("/v1/refunds", {"charge": ch})
        self.assertShape(self.get("/v1/events", {"type": "radar.early_fraud_warning.*"}), "early fraud warning events")
        self.assertGreaterEqual(self.seen.get("EarlyFraudWarning", 0), 3)

    def test_tokens(self):
        card = {"number": "4000056655665556", "exp_month": 4, "exp_year": 2033}
        self.assertShape(self.post("/v1/tokens", {"card": card}), "token(bare)")
        full = dict(card, cvc="123", name="A B", address_line1="1 Road", address_zip="1000", address_country="US")
        tok = self.post("/v1/tokens", {"card": full})
        self.assertShape(tok, "token(new)")
        self.assertShape(self.post("/v1/charges", {"amount": 100, "currency": "usd", "source": tok["id"]}),
                         "charge(from a token)")
        self.assertShape(self.get("/v1/tokens/" + tok["id"]), "token(used)")
        self.assertGreaterEqual(self.seen.get("Token", 0), 3)

    def test_card_sources(self):
        cus = self.post("/v1/customers", {"source": "tok_visa"})
        self.assertShape(cus, "customer(with a card)")
        card = self.post("/v1/customers/%s/sources" % cus["id"], {"source": "tok_amex"})
        self.types.check(card, "Card", "card source", problems := [], extras := set())
        self.assertEqual((problems, extras), ([], set()), card)
        for c in self.get("/v1/customers/%s/sources" % cus["id"])["data"]:
            self.types.check(c, "Card", "listed card source", problems, extras)
        self.assertEqual((problems, extras), ([], set()))
        self.assertShape(self.post("/v1/charges", {"amount": 100, "currency": "usd", "customer": cus["id"]}),
                         "charge(a customer's card)")
        self.assertShape(self.get("/v1/events", {"limit": 10, "type": "customer.source.created"}),
                         "customer.source events")

    def test_account(self):
        acct = self.get("/v1/account")
        self.assertShape(acct, "/v1/account")
        self.assertEqual(acct["id"], self.daemon.merchants["m"]["id"])
        self.assertShape(self.get("/v1/accounts/" + acct["id"]), "/v1/accounts/{id}")


if __name__ == "__main__":
    main()
