"""Every parameter the official stripe-node SDK (tests/sdk/node_modules, the
version `make test` installs) documents for the endpoints Turnpike serves is
either honoured or refused as a feature Turnpike does not have (400
parameter_unsupported, naming the feature), never "Received unknown
parameter": a client built on the SDK's types must not meet a parameter the
gateway has never heard of. The list comes from the SDK's own type
definitions, so an SDK upgrade that adds one fails here until it is handled.

Then the parameters added for that, one by one: what each changes, and that
each refusal changes nothing."""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "node_modules", "stripe",
                         "cjs", "resources")
PAGING = ["ending_before", "limit", "starting_after"]


def sdk_params(file_name, interface):
    """Top-level parameter names of `interface` in the SDK's .d.ts."""
    with open(os.path.join(RESOURCES, file_name), encoding="utf-8") as f:
        src = f.read()
    m = re.search(r"interface %s(?: extends ([\w.]+))? \{" % re.escape(interface), src)
    if not m:
        raise AssertionError("the SDK has no %s in %s" % (interface, file_name))
    i, depth, body = m.end(), 1, []
    while depth:
        c = src[i]
        depth += (c == "{") - (c == "}")
        body.append(c)
        i += 1
    names, depth = [], 0
    for line in "".join(body[:-1]).split("\n"):
        if depth == 0:
            mm = re.match(r"\s*(\w+)\??:", line)
            if mm:
                names.append(mm.group(1))
        depth += line.count("{") - line.count("}")
    if m.group(1) == "PaginationParams":
        names += PAGING
    return names


def _block(src, start):
    """(begin, end) of the braces block opening at or after start."""
    i = src.index("{", start) + 1
    depth, k = 1, i
    while depth:
        depth += (src[k] == "{") - (src[k] == "}")
        k += 1
    return i, k - 1


def _keys(text):
    names, depth = [], 0
    for line in text.split("\n"):
        if depth == 0:
            mm = re.match(r"\s*(\w+)\??:", line)
            if mm:
                names.append(mm.group(1))
        depth += line.count("{") - line.count("}")
    return names


def sdk_nested(file_name, namespace, interface):
    """Parameter names of the nested `interface` (e.g. Card) inside the
    SDK's `namespace` (e.g. PaymentIntentCreateParams): where the name
    occurs more than once there, the one with the most fields."""
    with open(os.path.join(RESOURCES, file_name), encoding="utf-8") as f:
        src = f.read()
    m = re.search(r"\bnamespace %s \{" % re.escape(namespace), src)
    if not m:
        raise AssertionError("the SDK has no namespace %s in %s" % (namespace, file_name))
    lo, hi = _block(src, m.start())
    best = []
    for mm in re.finditer(r"\binterface %s \{" % re.escape(interface), src[lo:hi]):
        i, k = _block(src, lo + mm.start())
        names = _keys(src[i:k])
        if len(names) > len(best):
            best = names
    if not best:
        raise AssertionError("the SDK has no %s.%s" % (namespace, interface))
    return best


class SdkParams(h.DaemonTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.daemon.client("m")
        cls.pi_open = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd"}).json["id"]
        held = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                              "payment_method": "pm_card_visa",
                                              "capture_method": "manual"}).json
        cls.pi_held, cls.ch_held = held["id"], held["latest_charge"]
        cls.cus = c.post("/v1/customers", {}).json["id"]
        cls.pm = c.post("/v1/payment_methods", {"type": "card", "card": {
            "number": h.PAN_OK, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json["id"]
        paid = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                              "payment_method": "pm_card_visa"}).json
        cls.pi_paid, cls.ch_paid = paid["id"], paid["latest_charge"]
        cls.refund = c.post("/v1/refunds", {"payment_intent": cls.pi_paid, "amount": 10}).json["id"]
        cls.we = c.post("/v1/webhook_endpoints", {"url": "https://example.com/h",
                                                  "enabled_events": ["*"]}).json["id"]
        cls.seti = c.post("/v1/setup_intents", {}).json["id"]
        disputed = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                  "payment_method": "pm_card_createDispute"}).json
        cls.dp = c.get("/v1/disputes", {"charge": disputed["latest_charge"]}).json["data"][0]["id"]

    def count(self, table):
        db = h.open_db_ro(self.daemon)
        try:
            return db.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
        finally:
            db.close()

    def test_every_documented_parameter_is_known(self):
        """One request per (endpoint, parameter) with the value "x": the
        answer may be a success or any error but "unknown parameter"."""
        s = type(self)
        endpoints = [
            ("PaymentIntents.d.ts", "PaymentIntentCreateParams", "POST", "/v1/payment_intents"),
            ("PaymentIntents.d.ts", "PaymentIntentRetrieveParams", "GET", "/v1/payment_intents/" + s.pi_open),
            ("PaymentIntents.d.ts", "PaymentIntentUpdateParams", "POST", "/v1/payment_intents/" + s.pi_open),
            ("PaymentIntents.d.ts", "PaymentIntentConfirmParams", "POST",
             "/v1/payment_intents/%s/confirm" % s.pi_open),
            ("PaymentIntents.d.ts", "PaymentIntentCaptureParams", "POST",
             "/v1/payment_intents/%s/capture" % s.pi_held),
            ("PaymentIntents.d.ts", "PaymentIntentCancelParams", "POST",
             "/v1/payment_intents/%s/cancel" % s.pi_open),
            ("PaymentIntents.d.ts", "PaymentIntentIncrementAuthorizationParams", "POST",
             "/v1/payment_intents/%s/increment_authorization" % s.pi_held),
            ("PaymentIntents.d.ts", "PaymentIntentListParams", "GET", "/v1/payment_intents"),
            ("PaymentIntents.d.ts", "PaymentIntentSearchParams", "GET", "/v1/payment_intents/search"),
            ("Charges.d.ts", "ChargeCreateParams", "POST", "/v1/charges"),
            ("Charges.d.ts", "ChargeRetrieveParams", "GET", "/v1/charges/" + s.ch_paid),
            ("Charges.d.ts", "ChargeUpdateParams", "POST", "/v1/charges/" + s.ch_paid),
            ("Charges.d.ts", "ChargeCaptureParams", "POST", "/v1/charges/%s/capture" % s.ch_held),
            ("Charges.d.ts", "ChargeListParams", "GET", "/v1/charges"),
            ("Charges.d.ts", "ChargeSearchParams", "GET", "/v1/charges/search"),
            ("Refunds.d.ts", "RefundCreateParams", "POST", "/v1/refunds"),
            ("Refunds.d.ts", "RefundRetrieveParams", "GET", "/v1/refunds/" + s.refund),
            ("Refunds.d.ts", "RefundUpdateParams", "POST", "/v1/refunds/" + s.refund),
            ("Refunds.d.ts", "RefundCancelParams", "POST", "/v1/refunds/%s/cancel" % s.refund),
            ("Refunds.d.ts", "RefundListParams", "GET", "/v1/refunds"),
            ("Customers.d.ts", "CustomerCreateParams", "POST", "/v1/customers"),
            ("Customers.d.ts", "CustomerRetrieveParams", "GET", "/v1/customers/" + s.cus),
            ("Customers.d.ts", "CustomerUpdateParams", "POST", "/v1/customers/" + s.cus),
            ("Customers.d.ts", "CustomerListParams", "GET", "/v1/customers"),
            ("Customers.d.ts", "CustomerSearchParams", "GET", "/v1/customers/search"),
            ("Customers.d.ts", "CustomerListPaymentMethodsParams", "GET",
             "/v1/customers/%s/payment_methods" % s.cus),
            ("Customers.d.ts", "CustomerRetrievePaymentMethodParams", "GET",
             "/v1/customers/%s/payment_methods/%s" % (s.cus, s.pm)),
            ("PaymentMethods.d.ts", "PaymentMethodCreateParams", "POST", "/v1/payment_methods"),
            ("PaymentMethods.d.ts", "PaymentMethodRetrieveParams", "GET", "/v1/payment_methods/" + s.pm),
            ("PaymentMethods.d.ts", "PaymentMethodUpdateParams", "POST", "/v1/payment_methods/" + s.pm),
            ("PaymentMethods.d.ts", "PaymentMethodAttachParams", "POST", "/v1/payment_methods/%s/attach" % s.pm),
            ("PaymentMethods.d.ts", "PaymentMethodDetachParams", "POST", "/v1/payment_methods/%s/detach" % s.pm),
            ("PaymentMethods.d.ts", "PaymentMethodListParams", "GET", "/v1/payment_methods"),
            ("Events.d.ts", "EventRetrieveParams", "GET", "/v1/events/evt_x"),
            ("Events.d.ts", "EventListParams", "GET", "/v1/events"),
            ("WebhookEndpoints.d.ts", "WebhookEndpointCreateParams", "POST", "/v1/webhook_endpoints"),
            ("WebhookEndpoints.d.ts", "WebhookEndpointRetrieveParams", "GET", "/v1/webhook_endpoints/" + s.we),
            ("WebhookEndpoints.d.ts", "WebhookEndpointUpdateParams", "POST", "/v1/webhook_endpoints/" + s.we),
            ("WebhookEndpoints.d.ts", "WebhookEndpointListParams", "GET", "/v1/webhook_endpoints"),
            ("BalanceTransactions.d.ts", "BalanceTransactionRetrieveParams", "GET",
             "/v1/balance_transactions/txn_x"),
            ("BalanceTransactions.d.ts", "BalanceTransactionListParams", "GET", "/v1/balance_transactions"),
            ("SetupIntents.d.ts", "SetupIntentCreateParams", "POST", "/v1/setup_intents"),
            ("SetupIntents.d.ts", "SetupIntentRetrieveParams", "GET", "/v1/setup_intents/" + s.seti),
            ("SetupIntents.d.ts", "SetupIntentUpdateParams", "POST", "/v1/setup_intents/" + s.seti),
            ("SetupIntents.d.ts", "SetupIntentConfirmParams", "POST", "/v1/setup_intents/%s/confirm" % s.seti),
            ("SetupIntents.d.ts", "SetupIntentCancelParams", "POST", "/v1/setup_intents/%s/cancel" % s.seti),
            ("SetupIntents.d.ts", "SetupIntentListParams", "GET", "/v1/setup_intents"),
            ("Disputes.d.ts", "DisputeRetrieveParams", "GET", "/v1/disputes/" + s.dp),
            ("Disputes.d.ts", "DisputeUpdateParams", "POST", "/v1/disputes/" + s.dp),
            ("Disputes.d.ts", "DisputeListParams", "GET", "/v1/disputes"),
            ("Disputes.d.ts", "DisputeCloseParams", "POST", "/v1/disputes/%s/close" % s.dp),
        ]
        c = self.c()
        unknown, probed = [], 0
        for file_name, interface, method, path in endpoints:
            for name in sdk_params(file_name, interface):
                r = c.request(method, path, [(name, "x")])
                probed += 1
                err = (r.json or {}).get("error") or {}
                if err.get("code") == "parameter_unknown" or "unknown parameter" in err.get("message", ""):
                    unknown.append("%s %s" % (interface, name))
        self.assertGreater(probed, 300)  # the SDK's lists were read
        self.assertEqual(unknown, [])

    def test_every_documented_nested_parameter_is_known(self):
        """The same for the nested hashes a card payment uses: card options,
        payment_method_data, billing details, shipping, cards, invoice
        settings."""
        s = type(self)
        pi_ns = ("PaymentIntentCreateParams", "POST", "/v1/payment_intents")
        nested = [
            ("PaymentIntents.d.ts", pi_ns, "Card", "payment_method_options[card]"),
            ("PaymentIntents.d.ts", pi_ns, "PaymentMethodData", "payment_method_data"),
            ("PaymentIntents.d.ts", pi_ns, "BillingDetails", "payment_method_data[billing_details]"),
            ("PaymentIntents.d.ts", pi_ns, "Shipping", "shipping"),
            ("PaymentIntents.d.ts", pi_ns, "AutomaticPaymentMethods", "automatic_payment_methods"),
            ("PaymentIntents.d.ts", pi_ns, "PaymentDetails", "payment_details"),
            ("PaymentIntents.d.ts", ("PaymentIntentConfirmParams", "POST",
                                     "/v1/payment_intents/%s/confirm" % s.pi_open), "Card",
             "payment_method_options[card]"),
            ("PaymentMethods.d.ts", ("PaymentMethodCreateParams", "POST", "/v1/payment_methods"), "Card", "card"),
            ("PaymentMethods.d.ts", ("PaymentMethodCreateParams", "POST", "/v1/payment_methods"),
             "BillingDetails", "billing_details"),
            ("PaymentMethods.d.ts", ("PaymentMethodUpdateParams", "POST", "/v1/payment_methods/" + s.pm), "Card",
             "card"),
            ("Customers.d.ts", ("CustomerCreateParams", "POST", "/v1/customers"), "InvoiceSettings",
             "invoice_settings"),
            ("Customers.d.ts", ("CustomerCreateParams", "POST", "/v1/customers"), "Shipping", "shipping"),
            ("Charges.d.ts", ("ChargeUpdateParams", "POST", "/v1/charges/" + s.ch_paid), "Shipping", "shipping"),
            ("SetupIntents.d.ts", ("SetupIntentCreateParams", "POST", "/v1/setup_intents"), "Card",
             "payment_method_options[card]"),
            ("SetupIntents.d.ts", ("SetupIntentCreateParams", "POST", "/v1/setup_intents"), "PaymentMethodData",
             "payment_method_data"),
            ("SetupIntents.d.ts", ("SetupIntentCreateParams", "POST", "/v1/setup_intents"),
             "AutomaticPaymentMethods", "automatic_payment_methods"),
            ("Disputes.d.ts", ("DisputeUpdateParams", "POST", "/v1/disputes/" + s.dp), "Evidence", "evidence"),
        ]
        c = self.c()
        unknown, probed = [], 0
        for file_name, (namespace, method, path), interface, prefix in nested:
            for name in sdk_nested(file_name, namespace, interface):
                r = c.request(method, path, [("%s[%s]" % (prefix, name), "x")])
                probed += 1
                err = (r.json or {}).get("error") or {}
                if err.get("code") == "parameter_unknown" or "unknown parameter" in err.get("message", ""):
                    unknown.append("%s %s[%s]" % (namespace, prefix, name))
        self.assertGreater(probed, 100)
        self.assertEqual(unknown, [])

    def test_unsupported_features_are_named_and_change_nothing(self):
        c = self.c()
        before = self.count("payment_intents")
        for name, feature in (("on_behalf_of", "Connect"), ("application_fee_amount", "Connect"),
                              ("mandate", "mandates"), ("confirmation_token", "ConfirmationTokens"),
                              ("amount_details[tip][amount]", "Level 2/3")):
            r = c.post("/v1/payment_intents", [("amount", "1000"), ("currency", "usd"), ("confirm", "true"),
                                               ("payment_method", "pm_card_visa"), (name, "acct_1")])
            self.assertStripeError(r, 400, "invalid_request_error")
            self.assertEqual(r.json["error"]["tp_code"], 1101, r)
            self.assertEqual(r.json["error"]["param"], name.split("[")[0])
            self.assertIn(feature, r.json["error"]["message"])
        self.assertEqual(self.count("payment_intents"), before)
        # An empty value asks for nothing, and is taken.
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "on_behalf_of": ""})
        self.assertEqual(r.status, 200, r)
        # Another payment method type's hash: refused as a type Turnpike lacks.
        r = c.post("/v1/payment_methods", {"type": "card", "sepa_debit": {"iban": "DE89370400440532013000"}})
        self.assertEqual(r.json["error"]["tp_code"], 1101, r)
        self.assertIn("cards only", r.json["error"]["message"])
        self.assertNotIn("DE89", r.json["error"]["message"])

    def test_payment_method_types_allowed_and_excluded(self):
        c = self.c()
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd",
                                           "allowed_payment_method_types": ["card"],
                                           "excluded_payment_method_types": ["klarna", "affirm"]})
        self.assertEqual(r.status, 200, r)
        pi = r.json
        self.assertEqual(pi["allowed_payment_method_types"], ["card"])
        self.assertEqual(pi["excluded_payment_method_types"], ["klarna", "affirm"])
        self.assertEqual(pi["payment_method_types"], ["card"])
        r = c.post("/v1/payment_intents/" + pi["id"], {"excluded_payment_method_types": ""})
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.json["excluded_payment_method_types"])
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["allowed_payment_method_types"], ["card"])
        before = self.count("payment_intents")
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd",
                                           "allowed_payment_method_types": ["card", "sepa_debit"]})
        self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unsupported_type",
                               "allowed_payment_method_types")
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd",
                                           "excluded_payment_method_types": ["card"]})
        self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unsupported_type",
                               "excluded_payment_method_types")
        self.assertEqual(self.count("payment_intents"), before)
        # Confirming with card excluded is refused too, and the intent stays open.
        r = c.post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa",
                                                                  "excluded_payment_method_types": ["card"]})
        self.assertEqual(r.status, 400, r)
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["status"], "requires_payment_method")
        r = c.post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa",
                                                                  "amount_to_confirm": 999})
        self.assertStripeError(r, 400, "invalid_request_error", None, "amount_to_confirm")
        r = c.post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa",
                                                                  "amount_to_confirm": 1000,
                                                                  "radar_options": {"session": "rs_1"}})
        self.assertEqual(r.json.get("status"), "succeeded", r)

    def test_payment_details_and_transfer_group(self):
        c = self.c()
        pi = c.post("/v1/payment_intents", {"amount": 2500, "currency": "usd", "confirm": "true",
                                            "payment_method": "pm_card_visa", "capture_method": "manual",
                                            "transfer_group": "order-77",
                                            "payment_details": {"customer_reference": "cust-9",
                                                                "order_reference": "ord-1"}}).json
        self.assertEqual(pi["status"], "requires_capture", pi)
        self.assertEqual(pi["transfer_group"], "order-77")
        self.assertEqual(pi["payment_details"], {"customer_reference": "cust-9", "order_reference": "ord-1"})
        r = c.post("/v1/payment_intents/%s/capture" % pi["id"], {
            "payment_details": {"order_reference": ""}, "statement_descriptor_suffix": "ORD 1"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded")
        self.assertEqual(r.json["payment_details"], {"customer_reference": "cust-9", "order_reference": None})
        ch = c.get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual(ch["statement_descriptor_suffix"], "ORD 1")
        self.assertTrue(ch["calculated_statement_descriptor"].endswith("* ORD 1"), ch)
        # A charge takes a transfer_group, and charges are listed by it.
        r = c.post("/v1/charges/" + ch["id"], {"transfer_group": "order-77"})
        self.assertEqual(r.json["transfer_group"], "order-77", r)
        listed = c.get("/v1/charges", {"transfer_group": "order-77"}).json["data"]
        self.assertEqual([x["id"] for x in listed], [ch["id"]])
        self.assertEqual(c.get("/v1/charges", {"transfer_group": "none-such"}).json["data"], [])

    def test_charges_api_create(self):
        """POST /v1/charges (the Charges API): a source (test token, test
        PaymentMethod, saved PaymentMethod) or the customer's default;
        capture=false holds it; a decline is a card_error naming the failed
        charge; a card that wants 3-D Secure is declined (nobody to answer a
        challenge); the Idempotency-Key replays the charge."""
        c = self.c()
        key = h.new_key("ch")
        r = c.post("/v1/charges", {"amount": 2000, "currency": "usd", "source": "tok_visa",
                                   "description": "legacy", "metadata": {"order": "7"},
                                   "statement_descriptor_suffix": "ORDER 7"}, idem=key)
        self.assertEqual(r.status, 200, r)
        ch = r.json
        self.assertEqual((ch["object"], ch["status"], ch["captured"], ch["paid"]), ("charge", "succeeded", True, True))
        self.assertEqual((ch["amount"], ch["amount_captured"], ch["description"]), (2000, 2000, "legacy"))
        self.assertEqual(ch["metadata"], {"order": "7"})
        self.assertEqual(ch["payment_method_details"]["card"]["last4"], "4242")
        self.assertTrue(ch["calculated_statement_descriptor"].endswith("ORDER 7"), ch)
        self.assertTrue(ch["balance_transaction"].startswith("txn_"))
        again = c.post("/v1/charges", {"amount": 2000, "currency": "usd", "source": "tok_visa",
                                       "description": "legacy", "metadata": {"order": "7"},
                                       "statement_descriptor_suffix": "ORDER 7"}, idem=key)
        self.assertEqual(again.json["id"], ch["id"])
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true")
        self.assertEqual(c.get("/v1/charges/" + ch["id"]).json["status"], "succeeded")
        # Held, then captured in part through the Charges API.
        held = c.post("/v1/charges", {"amount": 3000, "currency": "eur", "source": "pm_card_mastercard",
                                      "capture": "false"}).json
        self.assertEqual((held["captured"], held["status"], held["amount_captured"]), (False, "succeeded", 0))
        r = c.post("/v1/charges/%s/capture" % held["id"], {"amount": 2500})
        self.assertEqual((r.json["captured"], r.json["amount_captured"]), (True, 2500), r)
        # A decline names the failed charge; no PaymentIntent in the error.
        r = c.post("/v1/charges", {"amount": 2000, "currency": "usd", "source": "tok_chargeDeclined"})
        self.assertStripeError(r, 402, "card_error", "card_declined")
        failed = c.get("/v1/charges/" + r.json["error"]["charge"]).json
        self.assertEqual((failed["status"], failed["paid"]), ("failed", False))
        self.assertNotIn("payment_intent", r.json["error"])
        r = c.post("/v1/charges", {"amount": 2000, "currency": "usd", "source": "pm_card_threeDSecure2Required"})
        self.assertStripeError(r, 402, "card_error", "authentication_required")
        # The customer's default PaymentMethod, when no source is named.
        cus = c.post("/v1/customers", {"payment_method": "pm_card_visa",
                                       "invoice_settings": {"default_payment_method": "pm_card_visa"}}).json
        r = c.post("/v1/charges", {"amount": 1200, "currency": "usd", "customer": cus["id"]})
        self.assertEqual((r.json.get("customer"), r.json.get("status")), (cus["id"], "succeeded"), r)
        self.assertEqual(r.json["payment_method"], cus["invoice_settings"]["default_payment_method"])
        # Refused before anything is stored.
        before = (self.count("charges"), self.count("payment_intents"))
        bare = c.post("/v1/customers", {}).json["id"]
        for params, status, param in (({"amount": 2000, "currency": "usd"}, 400, "source"),
                                      ({"amount": 2000, "currency": "usd", "customer": bare}, 402, "card"),
                                      ({"amount": 2000, "currency": "usd", "source": "pm_nonesuch"}, 404, None),
                                      ({"amount": 2000, "currency": "usd", "source": "tok_visa",
                                        "destination": "acct_1"}, 400, "destination"),
                                      ({"currency": "usd", "source": "tok_visa"}, 400, "amount")):
            r = c.post("/v1/charges", params)
            self.assertEqual(r.status, status, (params, r))
            if param:
                self.assertEqual(r.json["error"].get("param"), param, r)
        self.assertEqual((self.count("charges"), self.count("payment_intents")), before)

    def test_charge_takes_a_customer_once(self):
        c = self.c()
        cus1 = c.post("/v1/customers", {"email": "one@example.com"}).json["id"]
        cus2 = c.post("/v1/customers", {}).json["id"]
        pi = c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "confirm": "true",
                                            "payment_method": "pm_card_visa"}).json
        chid = pi["latest_charge"]
        r = c.post("/v1/charges/" + chid, {"customer": "cus_nonesuch"})
        self.assertStripeError(r, 404, "invalid_request_error", "resource_missing", "customer")
        r = c.post("/v1/charges/" + chid, {"customer": cus1})
        self.assertEqual(r.json["customer"], cus1, r)
        self.assertEqual([x["id"] for x in c.get("/v1/charges", {"customer": cus1}).json["data"]], [chid])
        # its PaymentIntent, which had none, takes it too (the lists disagreed)
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["customer"], cus1)
        self.assertEqual([x["id"] for x in c.get("/v1/payment_intents", {"customer": cus1}).json["data"]],
                         [pi["id"]])
        # and a charge does not take a customer other than its PaymentIntent's
        bad = c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "confirm": "true",
                                             "payment_method": "pm_card_chargeDeclined"}).json["error"]
        self.assertEqual(c.post("/v1/payment_intents/" + bad["payment_intent"]["id"], {"customer": cus1}).status, 200)
        r = c.post("/v1/charges/" + bad["charge"], {"customer": cus2})
        self.assertStripeError(r, 400, "invalid_request_error", None, "customer")
        self.assertIsNone(c.get("/v1/charges/" + bad["charge"]).json["customer"])
        self.assertEqual(c.post("/v1/charges/" + bad["charge"], {"customer": cus1}).status, 200)
        r = c.post("/v1/charges/" + chid, {"customer": cus2})
        self.assertStripeError(r, 400, "invalid_request_error", None, "customer")
        self.assertEqual(c.get("/v1/charges/" + chid).json["customer"], cus1)

    def test_a_payment_intent_takes_a_customer_once(self):
        """Stripe: "You cannot modify `customer` on a PaymentIntent once it
        already has been set" (it moved to another customer)."""
        c = self.c()
        cus1 = c.post("/v1/customers", {}).json["id"]
        cus2 = c.post("/v1/customers", {}).json["id"]
        pi = c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd"}).json
        r = c.post("/v1/payment_intents/" + pi["id"], {"customer": cus1})
        self.assertEqual((r.status, r.json["customer"]), (200, cus1), r)
        self.assertEqual(c.post("/v1/payment_intents/" + pi["id"], {"customer": cus1}).status, 200)
        for other in (cus2, ""):
            err = self.assertStripeError(c.post("/v1/payment_intents/" + pi["id"], {"customer": other}), 400,
                                         "invalid_request_error", None, "customer")
            self.assertIn("once it already has been set", err["message"])
            self.assertEqual(err["tp_code"], 1115)
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["customer"], cus1)

    def test_empty_values_unset_at_a_payment_method_s_creation(self):
        """"" unsets an emptyable field (stripe-node types billing_details'
        fields Emptyable): it was stored as "", an address given as "" as
        the string ""; a metadata key set to "" is none."""
        c = self.c()
        base = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "12",
                "card[exp_year]": "2034"}
        pm = c.post("/v1/payment_methods", dict(base, **{
            "billing_details[name]": "", "billing_details[email]": "", "billing_details[address][line1]": "",
            "billing_details[address][country]": "", "metadata[a]": "", "metadata[b]": "1"})).json
        bd = pm["billing_details"]
        self.assertEqual((bd["name"], bd["email"], bd["address"]["line1"], bd["address"]["country"]),
                         (None, None, None, None), pm)
        self.assertEqual(pm["metadata"], {"b": "1"})
        pm = c.post("/v1/payment_methods", dict(base, **{"billing_details[address]": "",
                                                          "billing_details[name]": "X"})).json
        self.assertTrue(isinstance(pm["billing_details"]["address"], dict), pm)
        self.assertEqual(pm["billing_details"]["name"], "X")
        # a filter on a type of the served version is an empty list, not a 400
        for t in ("upi", "payto", "bizum", "custom"):
            r = c.get("/v1/payment_methods", {"type": t})
            self.assertEqual((r.status, r.json["data"]), (200, []), (t, r))

    def test_a_card_to_save_for_a_deleted_customer_is_refused(self):
        """A PaymentIntent with setup_future_usage whose customer was deleted
        succeeded and saved nothing; refused as a SetupIntent's confirm is."""
        c = self.c()
        cus = c.post("/v1/customers", {}).json["id"]
        pi = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd", "customer": cus,
                                            "setup_future_usage": "off_session"}).json
        self.assertEqual(c.delete("/v1/customers/" + cus).status, 200)
        r = c.post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa"})
        err = self.assertStripeError(r, 404, "invalid_request_error", "resource_missing", "customer")
        self.assertNotIn(cus, err["message"])  # a publishable key's view hides the customer
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["status"], "requires_payment_method")
        # nor is the card paid and left unsaved when the deletion comes during its challenge
        import urllib.parse
        cus = c.post("/v1/customers", {}).json["id"]
        pi = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd", "customer": cus, "confirm": "true",
                                            "setup_future_usage": "off_session", "return_url": "https://shop.example/r",
                                            "payment_method": "pm_card_threeDSecure2Required"}).json
        self.assertEqual(pi["status"], "requires_action", pi)
        self.assertEqual(c.delete("/v1/customers/" + cus).status, 200)
        u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        c.post(u.path, {"token": token, "result": "approve"}, key=None)
        got = c.get("/v1/payment_intents/" + pi["id"]).json
        self.assertEqual((got["status"], got["amount_received"]), ("requires_payment_method", 0), got)
        self.assertEqual(got["last_payment_error"]["param"], "customer", got)

    def test_allow_redisplay(self):
        c = self.c()
        cus = c.post("/v1/customers", {}).json["id"]
        plain = c.post("/v1/payment_methods", {"type": "card", "card": {
            "number": h.PAN_OK, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json
        self.assertEqual(plain["allow_redisplay"], "unspecified")
        always = c.post("/v1/payment_methods", {"type": "card", "allow_redisplay": "always", "card": {
            "number": h.PAN_OK, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}).json
        self.assertEqual(always["allow_redisplay"], "always")
        for pm in (plain, always):
            self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus}).status, 200)
        r = c.get("/v1/customers/%s/payment_methods" % cus, {"allow_redisplay": "always"})
        self.assertEqual([x["id"] for x in r.json["data"]], [always["id"]])
        r = c.get("/v1/payment_methods", {"customer": cus, "allow_redisplay": "unspecified"})
        self.assertEqual([x["id"] for x in r.json["data"]], [plain["id"]])
        r = c.post("/v1/payment_methods/" + plain["id"], {"allow_redisplay": "limited"})
        self.assertEqual(r.json["allow_redisplay"], "limited", r)
        r = c.get("/v1/payment_methods", {"customer": cus, "allow_redisplay": "unspecified"})
        self.assertEqual(r.json["data"], [])
        r = c.post("/v1/payment_methods", {"type": "card", "allow_redisplay": "sometimes", "card": {
            "number": h.PAN_OK, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
        self.assertStripeError(r, 400, "invalid_request_error", None, "allow_redisplay")
        # payment_method_data carries it to the PaymentMethod a payment makes.
        pi = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                            "payment_method_data": dict(h.card(h.PAN_OK),
                                                                        allow_redisplay="always")}).json
        self.assertEqual(c.get("/v1/payment_methods/" + pi["payment_method"]).json["allow_redisplay"], "always")

    def test_customer_names_and_invoice_fields(self):
        c = self.c()
        r = c.post("/v1/customers", {"business_name": "Acme GmbH", "individual_name": "Jo Doe",
                                     "invoice_prefix": "ACME01", "next_invoice_sequence": 7})
        self.assertEqual(r.status, 200, r)
        cus = r.json
        self.assertEqual((cus["business_name"], cus["individual_name"]), ("Acme GmbH", "Jo Doe"))
        self.assertEqual((cus["invoice_prefix"], cus["next_invoice_sequence"]), ("ACME01", 7))
        r = c.post("/v1/customers/" + cus["id"], {"business_name": ""})
        self.assertNotIn("business_name", r.json)  # optional and never null in the SDK's Customer
        self.assertEqual(c.get("/v1/customers/" + cus["id"]).json["individual_name"], "Jo Doe")
        before = self.count("customers")
        for params in ({"invoice_prefix": "ab"}, {"invoice_prefix": "lower1"}, {"next_invoice_sequence": 0},
                       {"business_name": "x" * 151}, {"tax_id_data": [{"type": "eu_vat", "value": "DE1"}]}):
            r = c.post("/v1/customers", params)
            self.assertEqual(r.status, 400, (params, r))
        self.assertEqual(self.count("customers"), before)

    def test_refund_destination_and_connect_flags(self):
        c = self.c()
        pi = c.post("/v1/payment_intents", {"amount": 3000, "currency": "usd", "confirm": "true",
                                            "payment_method": "pm_card_visa"}).json
        r = c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100, "reverse_transfer": "false",
                                   "refund_application_fee": "false"})
        self.assertEqual(r.status, 200, r)
        dd = r.json["destination_details"]
        self.assertEqual(dd["type"], "card")
        self.assertEqual(dd["card"]["type"], "refund")
        self.assertEqual(dd["card"]["reference_type"], "acquirer_reference_number")
        before = self.count("refunds")
        r = c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100, "reverse_transfer": "true"})
        self.assertStripeError(r, 400, "invalid_request_error", None, "reverse_transfer")
        self.assertEqual(r.json["error"]["tp_code"], 1101)
        r = c.post("/v1/refunds", {"customer": "cus_1", "amount": 100, "currency": "usd"})
        self.assertEqual(r.json["error"]["tp_code"], 1101, r)
        self.assertEqual(self.count("refunds"), before)

    def test_balance_transactions_by_currency(self):
        c = self.c()
        eur = c.post("/v1/payment_intents", {"amount": 1234, "currency": "eur", "confirm": "true",
                                             "payment_method": "pm_card_visa"}).json
        ch = c.get("/v1/charges/" + eur["latest_charge"]).json
        r = c.get("/v1/balance_transactions", {"currency": "EUR", "limit": 100})
        self.assertEqual(r.status, 200, r)
        self.assertIn(ch["balance_transaction"], [t["id"] for t in r.json["data"]])
        self.assertTrue(all(t["currency"] == "eur" for t in r.json["data"]), r.json["data"])
        usd = c.get("/v1/balance_transactions", {"currency": "usd", "limit": 100}).json["data"]
        self.assertTrue(usd and all(t["currency"] == "usd" for t in usd))
        r = c.get("/v1/balance_transactions", {"currency": "zzz"})
        self.assertStripeError(r, 400, "invalid_request_error", None, "currency")
        r = c.get("/v1/balance_transactions", {"payout": "po_123"})
        self.assertStripeError(r, 404, "invalid_request_error", "resource_missing", "payout")

    def test_empty_values_unset_only_what_stripe_lets_unset(self):
        """payment_method_options[card]="" clears the card options (Emptyable
        in the SDK's types); "" for what cannot be unset is refused and
        changes nothing (it was answered 200 and dropped, or deleted a key
        the object always has)."""
        c = self.c()
        pi = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd",
                                            "payment_method_options[card][capture_method]": "manual"})
        self.assertEqual(pi.status, 200, pi)
        pid = pi.json["id"]
        self.assertEqual(pi.json["payment_method_options"]["card"]["capture_method"], "manual", pi)
        for k in ("request_three_d_secure", "network", "request_overcapture"):
            r = c.post("/v1/payment_intents/" + pid, {"payment_method_options[card][%s]" % k: ""})
            self.assertStripeError(r, 400, "invalid_request_error")
            self.assertEqual(r.json["error"]["param"], "payment_method_options[card][%s]" % k, r)
        # network is one of Stripe's networks: any other text was kept and
        # echoed in the object, its events and webhooks (a card number too)
        for path in ("/v1/payment_intents/" + pid, "/v1/setup_intents"):
            r = c.post(path, {"payment_method_options[card][network]": "4242424242424242"})
            self.assertStripeError(r, 400, "invalid_request_error")
            self.assertEqual(r.json["error"]["param"], "payment_method_options[card][network]", r)
            self.assertNotIn(b"4242424242424242", r.body)
        ok = c.post("/v1/payment_intents/" + pid, {"payment_method_options[card][network]": "cartes_bancaires"})
        self.assertEqual((ok.status, ok.json["payment_method_options"]["card"]["network"]), (200, "cartes_bancaires"))
        self.assertEqual(c.post("/v1/setup_intents", {"payment_method_options[card][network]": "visa"}).status, 200)
        r = c.post("/v1/payment_intents/" + pid, {"payment_method_options": ""})
        self.assertStripeError(r, 400, "invalid_request_error", "parameter_invalid_empty", "payment_method_options")
        r = c.post("/v1/payment_intents/" + pid, {"payment_method": ""})
        self.assertStripeError(r, 400, "invalid_request_error", "parameter_invalid_empty", "payment_method")
        same = c.get("/v1/payment_intents/" + pid).json
        self.assertEqual(same["payment_method_options"]["card"]["capture_method"], "manual", same)
        self.assertIn("request_three_d_secure", same["payment_method_options"]["card"], same)
        # card="" clears: the payment captures automatically, as the PaymentIntent says
        r = c.post("/v1/payment_intents/" + pid, {"payment_method_options[card]": ""})
        self.assertEqual(r.status, 200, r)
        self.assertIsNone((r.json["payment_method_options"] or {}).get("card"), r)
        done = c.post("/v1/payment_intents/%s/confirm" % pid, {"payment_method": "pm_card_visa"})
        self.assertEqual(done.json["status"], "succeeded", done)
        self.assertEqual(done.json["amount_received"], 1000, done)

    def test_payment_method_data_type_and_setup_intent_create_checks(self):
        c = self.c()
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                           "payment_method_data[card][token]": "tok_visa"})
        self.assertStripeError(r, 400, "invalid_request_error", "parameter_missing", "payment_method_data[type]")
        r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                           "payment_method_data[type]": "sepa_debit"})
        self.assertStripeError(r, 400, "invalid_request_error", "payment_method_unsupported_type",
                               "payment_method_data[type]")
        before = c.get("/v1/setup_intents", {"limit": 100}).json["data"]
        for params, code, param in (
                ({"automatic_payment_methods[enabled]": "true", "payment_method_types[]": "card"},
                 "parameters_exclusive", "automatic_payment_methods"),
                ({"automatic_payment_methods[allow_redirects]": "never"},
                 "parameter_missing", "automatic_payment_methods[enabled]"),
                ({"return_url": "https://shop.example/back"}, None, "return_url")):
            r = c.post("/v1/setup_intents", params)
            err = self.assertStripeError(r, 400, "invalid_request_error")
            if code:
                self.assertEqual(err.get("code"), code, r)
            self.assertEqual(err.get("param"), param, r)
        self.assertEqual(c.get("/v1/setup_intents", {"limit": 100}).json["data"], before, "refusals made nothing")
        r = c.post("/v1/setup_intents", {"automatic_payment_methods[enabled]": "true", "confirm": "true",
                                         "payment_method": "pm_card_visa"})
        self.assertStripeError(r, 400, "invalid_request_error", "parameter_missing", "return_url")
        self.assertIn("Setup Intent", r.json["error"]["message"], r)


if __name__ == "__main__":
    unittest.main()
