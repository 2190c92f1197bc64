"""A customer's cards through Stripe's legacy Cards API: a customer created
with a card token source gets a card and its default_source; POST
/v1/charges with only the customer charges it, and the charge shows the
card as its source; more cards by POST /v1/customers/{id}/sources, listed,
retrieved, updated (customer.source.updated with previous_attributes) and
deleted (the default moves to the newest other card); an update's source
replaces the default card, default_source picks another; the cards pay
PaymentIntents and show in the PaymentMethods API; another customer's or
merchant's card is missing; deleting the customer deletes its cards (and
their vault records) and detaches its PaymentMethods, which then pay no
more; bad input changes nothing."""
import json

from harness import DaemonTestCase, main, open_db_ro

CUS = "/v1/customers"
CH = "/v1/charges"


class Sources(DaemonTestCase):
    MERCHANTS = ("m", "n")

    def customer(self, **params):
        r = self.c().post(CUS, params)
        self.assertEqual(r.status, 200, r)
        return r.json

    def srcs(self, cus):
        return "%s/%s/sources" % (CUS, cus)

    def at_once(self, **calls):
        """Run the calls together (a barrier between threads); their replies by name."""
        import threading
        out, go = {}, threading.Barrier(len(calls))

        def run(name, f):
            go.wait()
            out[name] = f()
        ts = [threading.Thread(target=run, args=kv) for kv in calls.items()]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        return out

    def events_about(self, object_id, prefix="customer.source."):
        r = self.c().get("/v1/events", {"limit": 100})
        return [e["type"] for e in reversed(r.json["data"])
                if e["type"].startswith(prefix) and e["data"]["object"]["id"] == object_id]


    def test_a_decline_card_is_refused_as_a_source_and_0341_attaches(self):
        """Stripe checks a card attached to a Customer with its issuer: the
        decline test cards fail there (4000000000000341: "attaching this
        card to a Customer object succeeds, but attempts to charge the
        customer fail"). A refused source makes nothing."""
        c = self.c("m")
        before = c.get("/v1/customers", {"limit": 100}).json["data"]
        for tok, code in (("tok_chargeDeclined", "generic_decline"),
                          ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")):
            r = c.post("/v1/customers", {"source": tok})
            self.assertStripeError(r, 402, "card_error", "card_declined")
            self.assertEqual(r.json["error"]["decline_code"], code, r.json)
        self.assertEqual(c.get("/v1/customers", {"limit": 100}).json["data"], before, "a refused source made nothing")
        cus = c.post("/v1/customers", {"name": "src"}).json
        r = c.post("/v1/customers/%s/sources" % cus["id"], {"source": "tok_chargeDeclinedFraudulent"})
        self.assertStripeError(r, 402, "card_error", "card_declined")
        self.assertEqual(c.get("/v1/customers/%s/sources" % cus["id"]).json["data"], [])
        ok = c.post("/v1/customers", {"source": "tok_chargeCustomerFail"})
        self.assertEqual(ok.status, 200, ok)
        ch = c.post("/v1/charges", {"amount": 1000, "currency": "usd", "customer": ok.json["id"]})
        self.assertStripeError(ch, 402, "card_error", "card_declined")

    def test_a_decline_card_payment_method_cannot_be_attached_and_0341_can(self):
        """Stripe's testing page: "The cards in the previous table can't be
        attached to a Customer object" (PaymentMethods as well as sources);
        4000000000000341 attaches. Nothing is attached by a refusal."""
        c = self.c("m")
        cus = c.post("/v1/customers", {"name": "pm"}).json
        for pm, code in (("pm_card_chargeDeclined", "generic_decline"),
                         ("pm_card_chargeDeclinedExpiredCard", "expired_card")):
            r = c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus["id"]})
            self.assertStripeError(r, 402, "card_error", "card_declined" if code == "generic_decline" else code)
            self.assertEqual(r.json["error"].get("decline_code"), code, r.json)
        made = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4000000000009995",
                                              "card[exp_month]": "12", "card[exp_year]": "2034",
                                              "card[cvc]": "123"}).json
        r = c.post("/v1/payment_methods/%s/attach" % made["id"], {"customer": cus["id"]})
        self.assertStripeError(r, 402, "card_error", "card_declined")
        self.assertEqual(r.json["error"]["decline_code"], "insufficient_funds", r.json)
        self.assertIsNone(c.get("/v1/payment_methods/" + made["id"]).json["customer"])
        r = c.post("/v1/customers", {"payment_method": "pm_card_chargeDeclinedFraudulent"})
        self.assertStripeError(r, 402, "card_error", "card_declined")
        self.assertEqual(c.get("/v1/customers/%s/payment_methods" % cus["id"]).json["data"], [])
        ok = c.post("/v1/payment_methods/pm_card_chargeCustomerFail/attach", {"customer": cus["id"]})
        self.assertEqual((ok.status, ok.json.get("customer")), (200, cus["id"]), ok)
        r = c.post("/v1/payment_methods/pm_card_visa/attach", {"customer": cus["id"]})
        self.assertEqual(r.status, 200, r)
        ok = c.post("/v1/customers", {"payment_method": "pm_card_chargeCustomerFail"})
        self.assertEqual(ok.status, 200, ok)
    def test_a_customer_made_with_a_source_is_charged_by_its_default_card(self):
        tok = self.c().post("/v1/tokens", {"card": {"number": "4242424242424242", "exp_month": 8,
                                                    "exp_year": 2031, "name": "Ada L"}}).json
        cus = self.customer(email="ada@example.test", source=tok["id"])
        card_id = cus["default_source"]
        self.assertTrue(card_id.startswith("card_"), cus)
        self.assertTrue(self.c().get("/v1/tokens/" + tok["id"]).json["used"])
        ch = self.c().post(CH, {"amount": 1800, "currency": "usd", "customer": cus["id"]})
        self.assertEqual(ch.status, 200, ch)
        self.assertEqual((ch.json["status"], ch.json["customer"], ch.json["payment_method"]),
                         ("succeeded", cus["id"], card_id))
        src = ch.json["source"]
        self.assertEqual((src["object"], src["id"], src["brand"], src["last4"], src["name"], src["customer"]),
                         ("card", card_id, "Visa", "4242", "Ada L", cus["id"]))
        self.assertEqual(self.events_about(card_id), ["customer.source.created"])
        # the card is a PaymentMethod too, and pays a PaymentIntent
        pms = self.c().get("/v1/payment_methods", {"customer": cus["id"]}).json["data"]
        self.assertEqual([p["id"] for p in pms], [card_id])
        pi = self.c().post("/v1/payment_intents", {"amount": 500, "currency": "usd", "customer": cus["id"],
                                                   "payment_method": card_id, "confirm": "true"})
        self.assertEqual((pi.status, pi.json["status"]), (200, "succeeded"), pi)
        # expanded: the default card and the cards as Card objects, the
        # PaymentIntent's payment_method as the PaymentMethod it also is
        got = self.c().get(CUS + "/" + cus["id"], {"expand": ["default_source", "sources"]}).json
        self.assertEqual((got["default_source"]["object"], got["default_source"]["id"]), ("card", card_id))
        self.assertEqual((got["sources"]["url"], [c["id"] for c in got["sources"]["data"]]),
                         (self.srcs(cus["id"]), [card_id]))
        self.assertEqual(got["sources"]["data"][0]["object"], "card")
        pm = self.c().get("/v1/payment_intents/" + pi.json["id"], {"expand[]": "payment_method"}).json
        self.assertEqual((pm["payment_method"]["object"], pm["payment_method"]["id"]), ("payment_method", card_id))
        # and an explicit source with the customer
        ch2 = self.c().post(CH, {"amount": 700, "currency": "usd", "customer": cus["id"], "source": card_id})
        self.assertEqual(ch2.status, 200, ch2)
        # detached through the PaymentMethods API, the card is no longer the customer's to charge
        self.assertEqual(self.c().post("/v1/payment_methods/%s/detach" % card_id, {}).status, 200)
        self.assertIsNone(self.c().get(CUS + "/" + cus["id"]).json["default_source"])
        err = self.assertStripeError(self.c().post(CH, {"amount": 100, "currency": "usd", "source": card_id}), 400,
                                     param="source")
        self.assertEqual(err["tp_code"], 1104, err)  # payment_method_consumed
        self.assertStripeError(self.c().post(CH, {"amount": 100, "currency": "usd", "customer": cus["id"]}),
                               402, "card_error", "missing", param="card")

    def test_the_older_request_shapes_of_charges_era_libraries(self):
        """What ActiveMerchant's Stripe gateway and omnipay send: `card` (the
        older name of `source`) as a token or card id on charges, customers
        and a customer's cards; its fraud-signal parameters on every charge;
        validate on a customer. A card hash as `card` is refused clearly."""
        ch = self.c().post(CH, {"amount": 900, "currency": "usd", "card": "tok_visa",
                                "payment_user_agent": "Stripe/v1 ActiveMerchantBindings/1.0", "ip": "127.0.0.1",
                                "user_agent": "Mozilla/5.0", "referrer": "https://shop.example/checkout",
                                "external_id": "R123456", "recurring": "true"})
        self.assertEqual((ch.status, ch.json["status"], ch.json["source"]["object"]), (200, "succeeded", "card"), ch)
        self.assertTrue(ch.json["captured"], ch)
        # uncaptured=true, capture=false's older name (its authorize): a hold, not a charge
        held = self.c().post(CH, {"amount": 900, "currency": "usd", "card": "tok_visa", "uncaptured": "true"})
        self.assertEqual((held.status, held.json["captured"], held.json["balance_transaction"]), (200, False, None),
                         held)
        self.assertEqual(self.c().post("%s/%s/capture" % (CH, held.json["id"]), {}).json["captured"], True)
        self.assertStripeError(self.c().post(CH, {"amount": 900, "currency": "usd", "card": "tok_visa",
                                                  "uncaptured": "true", "capture": "true"}), 400, param="uncaptured")
        cus = self.customer(card="tok_visa", validate="true", email="am@example.test")
        self.assertTrue(cus["default_source"].startswith("card_"), cus)
        more = self.c().post("%s/%s/cards" % (CUS, cus["id"]), {"card": "tok_mastercard"})
        self.assertEqual((more.status, more.json["brand"]), (200, "MasterCard"), more)
        paid = self.c().post(CH, {"amount": 400, "currency": "usd", "customer": cus["id"], "card": more.json["id"]})
        self.assertEqual((paid.status, paid.json["payment_method"]), (200, more.json["id"]), paid)
        # default_card, default_source's older name (store with set_default)
        upd = self.c().post("%s/%s" % (CUS, cus["id"]), {"default_card": more.json["id"]})
        self.assertEqual((upd.status, upd.json["default_source"]), (200, more.json["id"]), upd)
        self.assertStripeError(self.c().post("%s/%s" % (CUS, cus["id"]), {"default_card": more.json["id"],
                                                                          "default_source": more.json["id"]}),
                               400, param="default_card")
        # an error about it names it as it was sent
        self.assertStripeError(self.c().post("%s/%s" % (CUS, cus["id"]), {"default_card": "card_nope"}),
                               404, param="default_card")
        self.assertStripeError(self.c().post("%s/%s" % (CUS, cus["id"]), {"default_source": "card_nope"}),
                               404, param="default_source")
        err = self.assertStripeError(self.c().post(CH, {"amount": 400, "currency": "usd", "card": "tok_visa",
                                                        "source": "tok_visa"}), 400, param="card")
        self.assertEqual(err["tp_code"], 1003, err)  # parameter_invalid_string
        err = self.assertStripeError(self.c().post(CH, {"amount": 400, "currency": "usd",
                                                        "card": {"number": "4242424242424242", "exp_month": 12,
                                                                 "exp_year": 2031}}), 400, param="card")
        self.assertEqual(err["tp_code"], 1101, err)  # parameter_unsupported
        self.assertNotIn("4242424242424242", json.dumps(err))

    def test_a_request_pinned_to_an_older_api_version_gets_its_lists(self):
        """Libraries that pin an older Stripe-Version read lists later left to
        expand[]: a PaymentIntent's charges and a charge's refunds (before
        2022-11-15), a customer's sources (before 2020-08-27). ActiveMerchant
        refunds a PaymentIntent by its charges.data[0] and stores a card by
        sources.data[0]; without them it failed."""
        old = {"Stripe-Version": "2020-08-27"}
        pi = self.c().post("/v1/payment_intents", {"amount": 1200, "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_visa"}, headers=old)
        self.assertEqual(pi.status, 200, pi)
        charges = pi.json["charges"]
        self.assertEqual((charges["object"], [c["id"] for c in charges["data"]], charges["total_count"], charges["url"]),
                         ("list", [pi.json["latest_charge"]], 1, "/v1/charges?payment_intent=" + pi.json["id"]))
        self.assertEqual(charges["data"][0]["status"], "succeeded")
        re = self.c().post("/v1/refunds", {"charge": charges["data"][0]["id"], "amount": 200}).json
        ch = self.c().get(CH + "/" + pi.json["latest_charge"], headers=old).json
        self.assertEqual([r["id"] for r in ch["refunds"]["data"]], [re["id"]])
        self.assertEqual(ch["refunds"]["total_count"], 1, ch["refunds"])  # as Stripe's embedded lists have it
        got = self.c().get("/v1/payment_intents/" + pi.json["id"], headers=old).json
        self.assertEqual(got["charges"]["data"][0]["amount_refunded"], 200)
        self.assertEqual([r["id"] for r in got["charges"]["data"][0]["refunds"]["data"]], [re["id"]])
        listed = self.c().get("/v1/payment_intents", {"limit": 1}, headers=old).json
        self.assertIn("charges", listed["data"][0])
        # and expanded inside, as those versions allowed (the fee read from
        # charges.data[0].balance_transaction), also on the create and in a list
        exp = {"expand[]": "charges.data.balance_transaction"}
        got = self.c().get("/v1/payment_intents/" + pi.json["id"], exp, headers=old).json
        bt = got["charges"]["data"][0]["balance_transaction"]
        self.assertEqual((bt["object"], bt["amount"], bt["source"]), ("balance_transaction", 1200,
                                                                      pi.json["latest_charge"]), got)
        made = self.c().post("/v1/payment_intents", dict(exp, amount=700, currency="usd", confirm="true",
                                                          payment_method="pm_card_visa"), headers=old).json
        self.assertEqual(made["charges"]["data"][0]["balance_transaction"]["amount"], 700, made)
        listed = self.c().get("/v1/payment_intents", {"limit": 2, "expand[]": "data.charges.data.balance_transaction"},
                              headers=old).json
        self.assertEqual([p["charges"]["data"][0]["balance_transaction"]["amount"] for p in listed["data"]],
                         [700, 1200], listed)
        # an expanded object shows its lists as the version did too: the
        # charge of a refund made with expand[]=charge (ActiveMerchant's
        # refund and void), a charge's expanded customer's cards
        pinned = {"Stripe-Version": "2015-04-07"}
        re2 = self.c().post("%s/%s/refunds" % (CH, pi.json["latest_charge"]), {"amount": 100, "expand[]": "charge"},
                            headers=pinned).json
        self.assertEqual([x["id"] for x in re2["charge"]["refunds"]["data"]][:1], [re2["id"]], re2)
        buyer = self.c().post(CUS, {"source": "tok_visa"}).json
        ch3 = self.c().post(CH, {"amount": 300, "currency": "usd", "customer": buyer["id"], "expand[]": "customer"},
                            headers=pinned).json
        self.assertEqual([c["id"] for c in ch3["customer"]["sources"]["data"]], [buyer["default_source"]], ch3)
        # a decline's error.payment_intent as the version showed it too, with
        # its (failed) charge
        r = self.c().post("/v1/payment_intents", {"amount": 900, "currency": "usd", "confirm": "true",
                                                  "payment_method": "pm_card_chargeDeclined"}, headers=old)
        self.assertEqual(r.status, 402, r)
        epi = r.json["error"]["payment_intent"]
        self.assertEqual([c["id"] for c in epi["charges"]["data"]], [r.json["error"]["charge"]], epi)
        self.assertEqual(epi["charges"]["data"][0]["outcome"]["type"], "issuer_declined")
        # the served version has no charges on a PaymentIntent to expand
        r = self.c().get("/v1/payment_intents/" + pi.json["id"], exp)
        self.assertEqual((r.status, r.json["error"]["tp_code"], r.json["error"]["param"]), (400, 1041, "expand"), r)
        # the served version (or none): the current shape
        for h in ({}, {"Stripe-Version": "2026-10-28.endive"}):
            cur = self.c().get("/v1/payment_intents/" + pi.json["id"], headers=h).json
            self.assertNotIn("charges", cur)
            self.assertNotIn("refunds", self.c().get(CH + "/" + pi.json["latest_charge"], headers=h).json)
        # a customer's sources before 2020-08-27 (ActiveMerchant pins 2015-04-07)
        cus = self.c().post(CUS, {"source": "tok_visa"}, headers={"Stripe-Version": "2015-04-07"}).json
        self.assertEqual([c["id"] for c in cus["sources"]["data"]], [cus["default_source"]])
        self.assertEqual(cus["sources"]["total_count"], 1, cus["sources"])
        self.assertNotIn("sources", self.c().get(CUS + "/" + cus["id"], headers=old).json)
        # and expanded on the create that made the card (it is not in the store yet)
        made = self.c().post(CUS, {"source": "tok_visa", "expand": ["default_source", "sources"]}).json
        self.assertEqual((made["default_source"]["object"], [c["id"] for c in made["sources"]["data"]]),
                         ("card", [made["default_source"]["id"]]), made)
        # and on the update whose source replaces the default card (the old one deleted)
        upd = self.c().post(CUS + "/" + made["id"], {"source": "tok_mastercard",
                                                     "expand": ["default_source", "sources"]}).json
        self.assertEqual((upd["default_source"]["brand"], [c["id"] for c in upd["sources"]["data"]]),
                         ("MasterCard", [upd["default_source"]["id"]]), upd)

    def test_an_embedded_list_past_one_page_counts_them_all(self):
        """A charge's refunds shown by an older API version: ten on the page,
        has_more, and total_count the count of them all (it was left out,
        and `refunds.total_count` raised in stripe-python)."""
        old = {"Stripe-Version": "2019-12-03"}
        many = self.c().post(CH, {"amount": 5000, "currency": "usd", "source": "tok_visa"}).json
        for _ in range(12):
            self.assertEqual(self.c().post("/v1/refunds", {"charge": many["id"], "amount": 100}).status, 200)
        got = self.c().get(CH + "/" + many["id"], headers=old).json["refunds"]
        self.assertEqual((len(got["data"]), got["has_more"], got["total_count"]), (10, True, 12), got)
        # the count of the store as this request leaves it: a new default
        # card replacing the old one (deleted) leaves twelve, not thirteen
        cus = self.c().post(CUS, {"source": "tok_visa"}).json["id"]
        for _ in range(11):
            self.assertEqual(self.c().post(self.srcs(cus), {"source": "tok_visa"}).status, 200)
        upd = self.c().post(CUS + "/" + cus, {"source": "tok_mastercard", "expand[]": "sources"}).json["sources"]
        self.assertEqual((upd["has_more"], upd["total_count"]), (True, 12), upd)
        self.assertEqual(self.c().get(CUS + "/" + cus, {"expand[]": "sources"}).json["sources"]["total_count"], 12)

    def test_a_charge_with_a_customer_takes_only_its_cards(self):
        """customer with a token, or with another customer's card: Stripe's
        "does not have a linked source" (the card was charged and shown as
        the customer's while not saved to it)."""
        a, b = self.customer(source="tok_visa"), self.customer(source="tok_visa")
        n = len(self.c().get(CH, {"limit": 100}).json["data"])
        for src in ("tok_mastercard", b["default_source"]):
            err = self.assertStripeError(self.c().post(CH, {"amount": 300, "currency": "usd", "customer": a["id"],
                                                            "source": src}), 404, param="source")
            self.assertIn("does not have a linked source with ID " + src, err["message"])
        self.assertEqual(len(self.c().get(CH, {"limit": 100}).json["data"]), n)
        ok = self.c().post(CH, {"amount": 300, "currency": "usd", "customer": a["id"], "source": a["default_source"]})
        self.assertEqual(ok.status, 200, ok)
        # the Charges API's errors name its own parameter, source
        err = self.assertStripeError(self.c().post(CH, {"amount": 300, "currency": "usd",
                                                        "source": a["default_source"]}), 400, param="source")
        self.assertIn("belongs to a customer", err["message"])
        err = self.assertStripeError(self.c().post(CH, {"amount": 300, "currency": "usd", "source": "card_nope"}),
                                     404, param="source")
        self.assertIn("No such source", err["message"])
        # a customer with no card: Stripe's CardError (402, code missing,
        # param card), which "add a card first" handlers catch
        empty = self.c().post(CUS, {"email": "nocard@example.test"}).json
        err = self.assertStripeError(self.c().post(CH, {"amount": 300, "currency": "usd", "customer": empty["id"]}),
                                     402, "card_error", "missing", param="card")
        self.assertEqual(err["message"], "Cannot charge a customer that has no active card")
        self.assertEqual(len(self.c().get(CH, {"limit": 100}).json["data"]), n + 1)

    def test_a_charge_s_source_shows_what_its_checks_found(self):
        """ActiveMerchant reads AVS and CVC results from the charge's source
        card: they are the charge's checks, not the card's "unchecked"."""
        tok = self.c().post("/v1/tokens", {"card": {"number": "4000000000000010", "exp_month": 8, "exp_year": 2031,
                                                    "cvc": "123", "address_line1": "1 Main St",
                                                    "address_zip": "94107"}}).json
        ch = self.c().post(CH, {"amount": 800, "currency": "usd", "source": tok["id"]}).json
        checks = ch["payment_method_details"]["card"]["checks"]
        self.assertEqual((checks["address_line1_check"], checks["address_postal_code_check"]), ("fail", "fail"), ch)
        src = ch["source"]
        self.assertEqual((src["address_line1_check"], src["address_zip_check"], src["cvc_check"]),
                         (checks["address_line1_check"], checks["address_postal_code_check"], checks["cvc_check"]))

    def test_cards_are_added_listed_retrieved_updated_and_deleted(self):
        cus = self.customer()
        self.assertIsNone(cus["default_source"])
        first = self.c().post(self.srcs(cus["id"]), {"source": "tok_visa", "metadata": {"k": "1"}})
        self.assertEqual(first.status, 200, first)
        self.assertEqual((first.json["object"], first.json["brand"], first.json["metadata"]),
                         ("card", "Visa", {"k": "1"}))
        second = self.c().post(self.srcs(cus["id"]), {"source": "tok_mastercard"}).json
        got = self.c().get(CUS + "/" + cus["id"]).json
        self.assertEqual(got["default_source"], first.json["id"])  # the first card stays the default
        lst = self.c().get(self.srcs(cus["id"]), {"object": "card", "limit": 1})
        self.assertEqual(lst.status, 200, lst)
        self.assertEqual((lst.json["url"], lst.json["has_more"], [c["id"] for c in lst.json["data"]]),
                         (self.srcs(cus["id"]), True, [second["id"]]))
        rest = self.c().get(self.srcs(cus["id"]), {"starting_after": second["id"]}).json
        self.assertEqual([c["id"] for c in rest["data"]], [first.json["id"]])
        # object filters any type: other kinds of source are none here
        for other in ("bank_account", "source"):
            lst = self.c().get(self.srcs(cus["id"]), {"object": other})
            self.assertEqual((lst.status, lst.json["data"], lst.json["has_more"]), (200, [], False), lst)
        # the Cards API's paths reach the same cards
        cards = "%s/%s/cards" % (CUS, cus["id"])
        lst = self.c().get(cards).json
        self.assertEqual((lst["url"], [c["id"] for c in lst["data"]]), (cards, [second["id"], first.json["id"]]))
        self.assertEqual(self.c().get(cards + "/" + second["id"]).json, second)
        self.assertStripeError(self.c("n").get(cards + "/" + second["id"]), 404, code="resource_missing")
        one = self.c().get(self.srcs(cus["id"]) + "/" + second["id"])
        self.assertEqual((one.status, one.json), (200, second))
        upd = self.c().post(self.srcs(cus["id"]) + "/" + second["id"],
                            {"name": "Grace H", "address_zip": "10001", "exp_month": 3, "exp_year": 2033})
        self.assertEqual(upd.status, 200, upd)
        self.assertEqual((upd.json["name"], upd.json["address_zip"], upd.json["exp_month"], upd.json["exp_year"]),
                         ("Grace H", "10001", 3, 2033))
        r = self.c().get("/v1/events", {"type": "customer.source.updated", "limit": 1}).json["data"][0]
        self.assertEqual(r["data"]["object"]["id"], second["id"])
        self.assertEqual(r["data"]["previous_attributes"]["exp_month"], 12)
        self.assertIsNone(r["data"]["previous_attributes"]["name"])
        # metadata alone is a change: stored, announced with its old value
        upd = self.c().post(self.srcs(cus["id"]) + "/" + first.json["id"], {"metadata[k]": "2", "metadata[o]": "42"})
        self.assertEqual((upd.status, upd.json["metadata"]), (200, {"k": "2", "o": "42"}), upd)
        self.assertEqual(self.c().get(self.srcs(cus["id"]) + "/" + first.json["id"]).json["metadata"],
                         {"k": "2", "o": "42"})
        r = self.c().get("/v1/events", {"type": "customer.source.updated", "limit": 1}).json["data"][0]
        self.assertEqual((r["data"]["object"]["id"], r["data"]["previous_attributes"]),
                         (first.json["id"], {"metadata": {"k": "1", "o": None}}))
        # deleting the default moves it to the other card
        gone = self.c().delete(self.srcs(cus["id"]) + "/" + first.json["id"])
        self.assertEqual(gone.status, 200, gone)
        self.assertEqual((gone.json["id"], gone.json["deleted"]), (first.json["id"], True))
        self.assertEqual(self.c().get(CUS + "/" + cus["id"]).json["default_source"], second["id"])
        self.assertStripeError(self.c().get(self.srcs(cus["id"]) + "/" + first.json["id"]), 404,
                               code="resource_missing")
        db = open_db_ro(self.daemon)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM vault WHERE token=?", (first.json["id"],))
                             .fetchone()[0], 0)
        finally:
            db.close()
        self.assertEqual(self.events_about(first.json["id"]), ["customer.source.created",
                                                               "customer.source.updated",
                                                               "customer.source.deleted"])
        self.c().delete(self.srcs(cus["id"]) + "/" + second["id"])
        self.assertIsNone(self.c().get(CUS + "/" + cus["id"]).json["default_source"])
        self.assertStripeError(self.c().post(CH, {"amount": 100, "currency": "usd", "customer": cus["id"]}),
                               402, "card_error", "missing", param="card")

    def test_a_payment_method_used_without_a_customer_is_spent(self):
        """Stripe: a PaymentMethod that paid without being attached to a
        customer may not pay again nor be attached (it would on Stripe fail
        the integration that relies on it)."""
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                   "card[exp_month]": "12", "card[exp_year]": "2034"}).json["id"]
        pay = lambda: self.c().post("/v1/payment_intents", {"amount": 800, "currency": "usd", "confirm": "true",
                                                            "payment_method": pm})
        r = pay()
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        self.assertStripeError(pay(), 400, "invalid_request_error", param="payment_method")
        cus = self.customer()["id"]
        self.assertStripeError(self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}),
                               400, "invalid_request_error")
        # setup_future_usage without a customer: it may still be attached afterwards (Stripe)
        pm3 = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                    "card[exp_month]": "12", "card[exp_year]": "2034"}).json["id"]
        r = self.c().post("/v1/payment_intents", {"amount": 800, "currency": "usd", "confirm": "true",
                                                  "payment_method": pm3, "setup_future_usage": "off_session"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm3, {"customer": cus}).status, 200)
        # confirmations at once with one unattached card: one pays
        import threading
        pm4 = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                    "card[exp_month]": "12", "card[exp_year]": "2034"}).json["id"]
        out, go = [], threading.Barrier(6)

        def one():
            go.wait()
            out.append(self.c().post("/v1/payment_intents", {"amount": 800, "currency": "usd", "confirm": "true",
                                                             "payment_method": pm4}))
        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(sum(1 for x in out if x.status == 200), 1, [x.status for x in out])
        # attached first, it pays again and again
        pm2 = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                    "card[exp_month]": "12", "card[exp_year]": "2034"}).json["id"]
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm2, {"customer": cus}).status, 200)
        for _ in range(2):
            r = self.c().post("/v1/payment_intents", {"amount": 800, "currency": "usd", "confirm": "true",
                                                      "customer": cus, "payment_method": pm2})
            self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)

    def test_a_card_a_payment_made_for_itself_is_spent_with_it(self):
        """A PaymentMethod made by the paying request itself (a token's card,
        payment_method_data, a test id) pays only that PaymentIntent: reused
        by id afterwards it is refused as spent, as Stripe refuses it,
        unless it was set up for later or has not paid yet."""
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034}
        pmd = {"type": "card", "card": card}
        pi = lambda **kw: self.c().post("/v1/payment_intents", dict({"amount": 800, "currency": "usd"}, **kw))
        # a token's card, by the Charges API: the card id charges no more
        tok = self.c().post("/v1/tokens", {"card": card}).json["id"]
        ch = self.c().post(CH, {"amount": 500, "currency": "usd", "source": tok})
        self.assertEqual(ch.status, 200, ch)
        card_id = ch.json["source"]["id"]
        err = self.assertStripeError(self.c().post(CH, {"amount": 500, "currency": "usd", "source": card_id}),
                                     400, "invalid_request_error", param="source")
        self.assertEqual(err["tp_code"], 1104, err)  # payment_method_consumed
        self.assertStripeError(pi(confirm="true", payment_method=card_id), 400, param="payment_method")
        # payment_method_data and a test id: the PaymentMethod made pays no other PaymentIntent, nor is attached
        cus = self.customer()["id"]
        for kw in ({"payment_method_data": pmd}, {"payment_method": "pm_card_visa"}):
            r = pi(confirm="true", **kw)
            self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
            made = r.json["payment_method"]
            self.assertStripeError(pi(confirm="true", payment_method=made), 400, param="payment_method")
            self.assertStripeError(self.c().post("/v1/payment_methods/%s/attach" % made, {"customer": cus}),
                                   400, "invalid_request_error")
        # made at create, confirmed later: it pays its own PaymentIntent
        r = pi(payment_method_data=pmd)
        self.assertEqual(r.json["status"], "requires_confirmation", r)
        made = r.json["payment_method"]
        c = self.c().post("/v1/payment_intents/%s/confirm" % r.json["id"], {})
        self.assertEqual((c.status, c.json["status"], c.json["payment_method"]), (200, "succeeded", made), c)
        self.assertStripeError(pi(confirm="true", payment_method=made), 400, param="payment_method")
        # declined, it paid nothing: tried again on its PaymentIntent, and on another
        r = pi(confirm="true", payment_method_data={"type": "card", "card": dict(card, number="4000000000000002")})
        self.assertEqual(r.status, 402, r)
        failed = r.json["error"]["payment_intent"]
        made = failed["last_payment_error"]["payment_method"]["id"]
        again = self.c().post("/v1/payment_intents/%s/confirm" % failed["id"], {"payment_method": made})
        self.assertEqual((again.status, again.json["error"]["decline_code"]), (402, "generic_decline"), again)
        self.assertEqual(pi(confirm="true", payment_method=made).status, 402)
        # after a decline, a new card given by an update pays (its latest charge, failed, stays)
        for first, then in (({"payment_method_data": {"type": "card", "card": dict(card, number="4000000000000002")}},
                             {"payment_method_data": pmd}),
                            ({"payment_method": "pm_card_chargeDeclined"}, {"payment_method": "pm_card_visa"})):
            r = pi(**first)
            c = self.c().post("/v1/payment_intents/%s/confirm" % r.json["id"], {})
            self.assertEqual(c.status, 402, c)
            u = self.c().post("/v1/payment_intents/" + r.json["id"], then)
            self.assertEqual(u.status, 200, u)
            c = self.c().post("/v1/payment_intents/%s/confirm" % r.json["id"], {})
            self.assertEqual((c.status, c.json.get("status")), (200, "succeeded"), c)
        # and its own declined card given back is declined again, not refused as spent
        r = pi(payment_method_data={"type": "card", "card": dict(card, number="4000000000009995")})
        own = r.json["payment_method"]
        self.assertEqual(self.c().post("/v1/payment_intents/%s/confirm" % r.json["id"], {}).status, 402)
        self.assertEqual(self.c().post("/v1/payment_intents/" + r.json["id"], {"payment_method": own}).status, 200)
        c = self.c().post("/v1/payment_intents/%s/confirm" % r.json["id"], {})
        self.assertEqual((c.status, c.json["error"]["decline_code"]), (402, "insufficient_funds"), c)
        # set up for later without a customer: attached afterwards, it pays again
        r = pi(confirm="true", payment_method_data=pmd, setup_future_usage="off_session")
        self.assertEqual(r.status, 200, r)
        made = r.json["payment_method"]
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % made, {"customer": cus}).status, 200)
        r = pi(confirm="true", payment_method=made, customer=cus)
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)

    def test_a_payment_method_list_takes_any_stripe_type(self):
        """An integration that lists several types gets an empty list for
        the ones Turnpike does not hold, not a 400."""
        cus = self.customer(source="tok_visa")["id"]
        for t in ("us_bank_account", "sepa_debit", "link"):
            for path in ("/v1/payment_methods?customer=%s&type=%s" % (cus, t),
                         "%s/%s/payment_methods?type=%s" % (CUS, cus, t)):
                r = self.c().get(path)
                self.assertEqual((r.status, r.json["data"]), (200, []), (path, r))
        self.assertStripeError(self.c().get("/v1/payment_methods?type=floppy_disk"), 400, "invalid_request_error",
                               param="type")
        self.assertEqual(len(self.c().get("%s/%s/payment_methods?type=card" % (CUS, cus)).json["data"]), 1)
        # a customer's default payment method expands through invoice_settings
        pm = self.c().post("/v1/payment_methods/pm_card_visa/attach", {"customer": cus}).json["id"]
        self.c().post(CUS + "/" + cus, {"invoice_settings[default_payment_method]": pm})
        r = self.c().get(CUS + "/" + cus, {"expand[]": "invoice_settings.default_payment_method"})
        self.assertEqual((r.status, r.json["invoice_settings"]["default_payment_method"]["id"]), (200, pm), r)

    def test_an_update_racing_a_delete_never_brings_the_card_back(self):
        """The delete takes the card's lock too: an update that overlaps it
        either lands before it or is refused (or finds no card), never
        writes the card back after it."""
        for _ in range(15):
            cus = self.customer()
            card = self.c().post(self.srcs(cus["id"]), {"source": "tok_visa"}).json["id"]
            out = self.at_once(u=lambda: self.c().post(self.srcs(cus["id"]) + "/" + card, {"name": "Ada"}),
                               d=lambda: self.c().delete(self.srcs(cus["id"]) + "/" + card))
            if out["d"].status == 200:
                listed = [x["id"] for x in self.c().get(self.srcs(cus["id"])).json["data"]]
                self.assertNotIn(card, listed, (out["u"], out["d"]))
                self.assertEqual(self.c().get(self.srcs(cus["id"]) + "/" + card).status, 404)

    def test_a_source_replacing_the_default_never_brings_the_old_card_back(self):
        """source= on a customer update deletes the old default card: under
        the card's lock, so an update or a detach of that card at the same
        moment lands before it or finds it gone. Before, it wrote back the
        copy it had read: a "ghost" card listed on the customer whose vault
        record was gone (500 when charged). And default_source set while
        that card is detached never names a detached card."""
        for i in range(12):
            cus = self.customer(source="tok_visa")
            old = cus["default_source"]
            other = [lambda: self.c().post(self.srcs(cus["id"]) + "/" + old, {"metadata[b]": "1"}),
                     lambda: self.c().post("/v1/payment_methods/" + old, {"metadata[b]": "1"}),
                     lambda: self.c().post("/v1/payment_methods/%s/detach" % old, {})][i % 3]
            out = self.at_once(a=lambda: self.c().post(CUS + "/" + cus["id"], {"source": "tok_mastercard"}),
                               b=other)
            self.assertEqual(out["a"].status, 200, out["a"])
            self.assertLess(out["b"].status, 500, out["b"])
            listed = [x["id"] for x in self.c().get(self.srcs(cus["id"])).json["data"]]
            self.assertNotIn(old, listed, (out["a"], out["b"]))
            r = self.c().post(CH, {"amount": 300, "currency": "usd", "customer": cus["id"]})
            self.assertEqual(r.status, 200, r)
        for _ in range(12):
            cus = self.customer(source="tok_visa")
            b = self.c().post(self.srcs(cus["id"]), {"source": "tok_amex"}).json["id"]
            out = self.at_once(u=lambda: self.c().post(CUS + "/" + cus["id"], {"default_source": b}),
                               d=lambda: self.c().post("/v1/payment_methods/%s/detach" % b, {}))
            got = self.c().get(CUS + "/" + cus["id"]).json
            if out["d"].status == 200:
                self.assertNotEqual(got["default_source"], b, (out["u"], out["d"]))

    def test_a_source_id_that_is_the_customer_is_missing_at_once(self):
        import time
        cus = self.customer(source="tok_visa")["id"]
        t0 = time.monotonic()
        self.assertStripeError(self.c().delete(self.srcs(cus) + "/" + cus), 404, "invalid_request_error",
                               "resource_missing")
        self.assertStripeError(self.c().post(CUS + "/" + cus, {"default_source": cus}), 404,
                               "invalid_request_error", "resource_missing")
        self.assertLess(time.monotonic() - t0, 1.5)  # not a wait on the lock the request holds itself

    def test_no_default_names_a_deleted_card(self):
        for how in ("delete", "replace"):
            with self.subTest(how=how):
                cus = self.customer(source="tok_visa")
                card = cus["default_source"]
                self.c().post(self.srcs(cus["id"]), {"source": "tok_mastercard"})
                r = self.c().post(CUS + "/" + cus["id"], {"invoice_settings[default_payment_method]": card})
                self.assertEqual(r.status, 200, r)
                if how == "delete":
                    self.assertEqual(self.c().delete(self.srcs(cus["id"]) + "/" + card).status, 200)
                else:
                    self.assertEqual(self.c().post(CUS + "/" + cus["id"], {"source": "tok_amex"}).status, 200)
                got = self.c().get(CUS + "/" + cus["id"]).json
                self.assertIsNone(got["invoice_settings"]["default_payment_method"], got)
                self.assertNotEqual(got["default_source"], card)

    def test_no_card_is_left_on_a_deleted_customer(self):
        """An attach racing the customer's deletion lands before it (and is
        detached by it) or finds the customer gone; a SetupIntent or a
        setup_future_usage payment confirmed after the deletion saves
        nothing to it."""
        for _ in range(15):
            cus = self.customer()["id"]
            pm = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                       "card[exp_month]": "12", "card[exp_year]": "2034"}).json["id"]
            out = self.at_once(a=lambda: self.c().post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}),
                               d=lambda: self.c().delete(CUS + "/" + cus))
            if out["d"].status == 200:
                got = self.c().get("/v1/payment_methods/" + pm).json
                self.assertIsNone(got["customer"], (out["a"], out["d"]))
        cus = self.customer()["id"]
        si = self.c().post("/v1/setup_intents", {"customer": cus}).json
        pi = self.c().post("/v1/payment_intents", {"amount": 900, "currency": "usd", "customer": cus,
                                                   "setup_future_usage": "off_session"}).json
        self.assertEqual(self.c().delete(CUS + "/" + cus).status, 200)
        r = self.c().post("/v1/setup_intents/%s/confirm" % si["id"], {"payment_method": "pm_card_visa"})
        if r.status == 200:
            self.assertIsNone(self.c().get("/v1/payment_methods/" + r.json["payment_method"]).json["customer"])
        r = self.c().post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa"})
        if r.status == 200:
            self.assertIsNone(self.c().get("/v1/payment_methods/" + r.json["payment_method"]).json["customer"])

    def test_an_update_s_source_replaces_the_default_and_default_source_picks_one(self):
        cus = self.customer(source="tok_visa")
        old = cus["default_source"]
        extra = self.c().post(self.srcs(cus["id"]), {"source": "tok_amex"}).json
        up = self.c().post(CUS + "/" + cus["id"], {"source": "tok_mastercard"})
        self.assertEqual(up.status, 200, up)
        new = up.json["default_source"]
        self.assertNotIn(new, (old, extra["id"]))
        ids = [c["id"] for c in self.c().get(self.srcs(cus["id"])).json["data"]]
        self.assertEqual(sorted(ids), sorted([new, extra["id"]]))  # the old default went
        up = self.c().post(CUS + "/" + cus["id"], {"default_source": extra["id"]})
        self.assertEqual(up.json["default_source"], extra["id"])
        ch = self.c().post(CH, {"amount": 300, "currency": "usd", "customer": cus["id"]}).json
        self.assertEqual(ch["source"]["brand"], "American Express")

    def test_deleting_the_customer_deletes_its_cards_and_detaches_its_payment_methods(self):
        tok = self.c().post("/v1/tokens", {"card": {"number": "4242424242424242", "exp_month": 8,
                                                    "exp_year": 2031}}).json
        cus = self.customer(source=tok["id"])
        card_id = cus["default_source"]
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card[number]": "5555555555554444",
                                                   "card[exp_month]": "9", "card[exp_year]": "2032"}).json
        self.assertEqual(self.c().post("/v1/payment_methods/%s/attach" % pm["id"],
                                       {"customer": cus["id"]}).status, 200)
        keep = self.customer()  # another customer's card stays
        other = self.c().post(self.srcs(keep["id"]), {"source": "tok_visa"}).json["id"]
        r = self.c().delete(CUS + "/" + cus["id"])
        self.assertEqual((r.status, r.json), (200, {"id": cus["id"], "object": "customer", "deleted": True}))
        # its stub is all a retrieve shows, expanded or not
        for params in ({}, {"expand[]": "sources"}):
            got = self.c().get(CUS + "/" + cus["id"], params)
            self.assertEqual((got.status, got.json), (200, {"id": cus["id"], "object": "customer", "deleted": True}))
        self.assertStripeError(self.c().get(self.srcs(cus["id"]) + "/" + card_id), 404, "invalid_request_error")
        self.assertStripeError(self.c().get("/v1/payment_methods/" + card_id), 404, "invalid_request_error")
        got = self.c().get("/v1/payment_methods/" + pm["id"])
        self.assertEqual((got.status, got.json["customer"]), (200, None), got)
        self.assertEqual(self.events_about(card_id), ["customer.source.created", "customer.source.deleted"])
        self.assertEqual(self.events_about(pm["id"], "payment_method."),
                         ["payment_method.attached", "payment_method.detached"])
        ev = self.c().get("/v1/events", {"type": "payment_method.detached", "limit": 1}).json["data"][0]
        self.assertEqual((ev["data"]["object"]["id"], ev["data"]["object"]["customer"],
                          ev["data"].get("previous_attributes")), (pm["id"], None, {"customer": cus["id"]}), ev)
        # a detached PaymentMethod is used up, and the deleted card is gone
        r = self.c().post("/v1/payment_intents", {"amount": 500, "currency": "usd", "payment_method": pm["id"],
                                                  "confirm": "true"})
        err = self.assertStripeError(r, 400, "invalid_request_error")
        self.assertEqual(err["tp_code"], 1104, err)  # payment_method_consumed
        db = open_db_ro(self.daemon)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM vault WHERE token = ?", (card_id,)).fetchone()[0], 0)
            self.assertEqual(db.execute("SELECT count(*) FROM vault WHERE token = ?", (other,)).fetchone()[0], 1)
        finally:
            db.close()
        self.assertEqual(self.c().get(self.srcs(keep["id"]) + "/" + other).status, 200)

    def test_other_customers_and_merchants_do_not_see_a_card(self):
        a, b = self.customer(source="tok_visa"), self.customer()
        card = a["default_source"]
        self.assertStripeError(self.c().get(self.srcs(b["id"]) + "/" + card), 404, code="resource_missing")
        self.assertStripeError(self.c().post(CUS + "/" + b["id"], {"default_source": card}), 404,
                               code="resource_missing", param="default_source")
        self.assertStripeError(self.c().delete(self.srcs(b["id"]) + "/" + card), 404)
        self.assertStripeError(self.c("n").get(self.srcs(a["id"])), 404, code="resource_missing")
        self.assertStripeError(self.c("n").post(CH, {"amount": 100, "currency": "usd", "source": card}), 404)
        self.assertEqual(self.c().get(CUS + "/" + a["id"]).json["default_source"], card)

    def test_bad_input_changes_nothing(self):
        cus = self.customer(source="tok_visa")
        before = self.c().get(self.srcs(cus["id"])).json["data"]
        c = self.c()
        self.assertStripeError(c.post(self.srcs(cus["id"]), {}), 400, code="parameter_missing", param="source")
        self.assertStripeError(c.post(self.srcs(cus["id"]), {"source": "tok_nope"}), 404, param="source")
        self.assertStripeError(c.post(self.srcs(cus["id"]), {"source": "pm_card_visa"}), 404, param="source")
        self.assertStripeError(c.post(self.srcs("cus_nope"), {"source": "tok_visa"}), 404, param="customer")
        self.assertStripeError(c.post(CUS, {"source": "tok_nope"}), 404, param="source")
        card = cus["default_source"]
        self.assertStripeError(c.post(self.srcs(cus["id"]) + "/" + card, {"exp_month": 13}), 402,
                               param="exp_month")
        self.assertStripeError(c.post(self.srcs(cus["id"]) + "/" + card, {"name": "x" * 501}), 400,
                               param="name")
        err = self.assertStripeError(c.post(self.srcs(cus["id"]) + "/" + card, {"owner": {"name": "x"}}), 400)
        self.assertEqual(err["tp_code"], 1101, err)
        self.assertEqual(self.c().get(self.srcs(cus["id"])).json["data"], before)
        self.assertEqual(self.c().get(CUS + "/" + cus["id"]).json["default_source"], card)


if __name__ == "__main__":
    main()
