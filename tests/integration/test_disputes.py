"""Disputes from Stripe's dispute test cards: a chargeback opened in the
commit that captures the charge takes the money back with the dispute fee
(a balanced ledger adjustment: the balance and the ledger agree; the fee
given back when won; [disputes] fee.CUR), the charge is disputed and
cannot be refunded; evidence is kept and submitted; "winning_evidence"
wins it back (a second adjustment), "losing_evidence" and close lose it;
an inquiry moves no money and leaves the charge refundable; a manual
capture opens the dispute at capture; events for each step; another
merchant sees none of it; bad input changes nothing."""
from harness import DaemonTestCase, card, main, open_db_ro

PI = "/v1/payment_intents"
DP = "/v1/disputes"
EFW = "/v1/radar/early_fraud_warnings"


class Disputes(DaemonTestCase):
    MERCHANTS = ("m", "n")

    @classmethod
    def config(cls):
        # usd keeps the default fee (15 in major units: 1500); jpy's is set
        return "[disputes]\nfee.jpy = 2000\n"

    def pay(self, pm="pm_card_createDispute", amount=2000, **extra):
        params = {"amount": amount, "currency": "usd", "confirm": "true"}
        if pm:
            params["payment_method"] = pm
        params.update(extra)
        r = self.c().post(PI, params)
        self.assertEqual(r.status, 200, r)
        return r.json

    def dispute_of(self, ch):
        r = self.c().get(DP, {"charge": ch})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 1, r)
        return r.json["data"][0]

    def balance(self):
        """(available, pending) in usd."""
        bal = self.c().get("/v1/balance").json
        return tuple(sum(b["amount"] for b in bal[k] if b["currency"] == "usd") for k in ("available", "pending"))

    def pending(self):
        return self.balance()[1]

    def available(self):
        return self.balance()[0]

    def ledger_sums(self):
        db = open_db_ro(self.daemon)
        try:
            per_txn = db.execute("SELECT count(*) FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id, currency "
                                 "HAVING sum(amount) != 0)").fetchone()[0]
            merchant = tuple(db.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE merchant=? AND "
                                        "account=? AND currency='usd'",
                                        (self.daemon.merchants["m"]["id"], a)).fetchone()[0]
                             for a in ("merchant:available", "merchant:pending"))
            return per_txn, merchant
        finally:
            db.close()

    def events(self, object_id):
        r = self.c().get("/v1/events", {"limit": 100})
        return [e["type"] for e in reversed(r.json["data"]) if e["data"]["object"]["id"] == object_id]

    def test_a_chargeback_takes_the_money_back_and_winning_evidence_returns_it(self):
        before, avail = self.pending(), self.available()
        pi = self.pay(amount=2000)
        ch = pi["latest_charge"]
        dp = self.dispute_of(ch)
        self.assertEqual((dp["status"], dp["reason"], dp["amount"], dp["payment_intent"]),
                         ("needs_response", "fraudulent", 2000, pi["id"]))
        self.assertFalse(dp["is_charge_refundable"])
        self.assertEqual(dp["payment_method_details"]["card"]["case_type"], "chargeback")
        bt = dp["balance_transactions"][0]
        self.assertEqual((bt["amount"], bt["type"], bt["reporting_category"], bt["source"], bt["status"]),
                         (-2000, "adjustment", "dispute", dp["id"], "available"))
        # Stripe's dispute fee, kept by the network: 15.00 usd
        self.assertEqual((bt["fee"], bt["net"], bt["description"]), (1500, -3500, "Chargeback withdrawal for " + ch))
        self.assertEqual(bt["fee_details"], [{"amount": 1500, "application": None, "currency": "usd",
                                              "description": "Dispute fee", "type": "stripe_fee"}])
        self.assertEqual(bt["available_on"], bt["created"])
        self.assertEqual(self.c().get("/v1/balance_transactions/" + bt["id"]).json, bt)
        self.assertTrue(self.c().get("/v1/charges/" + ch).json["disputed"])
        # +2000 captured (pending), -2000 and the fee withdrawn from the available balance at once
        self.assertEqual(self.balance(), (avail - 3500, before + 2000))
        unbalanced, merchant = self.ledger_sums()
        self.assertEqual(unbalanced, 0)
        self.assertEqual(tuple(-x for x in merchant), self.balance())  # the balance is the ledger's
        self.assertEqual(self.events(dp["id"]), ["charge.dispute.created", "charge.dispute.funds_withdrawn"])
        # the network opened it, not the payment's request: request is null
        # (a handler skipping events of its own Idempotency-Keys keeps it)
        for e in self.c().get("/v1/events", {"type": "charge.dispute.*", "limit": 100}).json["data"]:
            if e["data"]["object"]["id"] == dp["id"]:
                self.assertEqual(e["request"], {"id": None, "idempotency_key": None}, e["type"])
        # a charged-back charge cannot be refunded
        r = self.c().post("/v1/refunds", {"charge": ch})
        self.assertStripeError(r, 400, "invalid_request_error", "charge_disputed")
        # evidence kept without submitting, then submitted: won
        r = self.c().post(DP + "/" + dp["id"], {"evidence[customer_name]": "Ada", "submit": "false",
                                                "metadata[case]": "17"})
        self.assertEqual((r.json["status"], r.json["evidence"]["customer_name"]), ("needs_response", "Ada"))
        self.assertTrue(r.json["evidence_details"]["has_evidence"])
        self.assertEqual(r.json["metadata"], {"case": "17"})
        r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["status"], r.json["evidence_details"]["submission_count"]), ("won", 1))
        self.assertEqual([(b["amount"], b["fee"], b["net"]) for b in r.json["balance_transactions"]],
                         [(-2000, 1500, -3500), (2000, -1500, 3500)])
        self.assertEqual(r.json["balance_transactions"][1]["description"], "Chargeback reversal for " + ch)
        self.assertEqual([b["reporting_category"] for b in r.json["balance_transactions"]],
                         ["dispute", "dispute_reversal"])
        # won: the amount and the fee come back
        self.assertEqual(self.balance(), (avail, before + 2000))
        self.assertEqual(self.ledger_sums()[0], 0)
        # the evidence kept, then submitted (under review), then decided
        self.assertEqual(self.events(dp["id"])[2:], ["charge.dispute.updated", "charge.dispute.updated",
                                                     "charge.dispute.funds_reinstated", "charge.dispute.closed"])
        # closed: its evidence is final
        r = self.c().post(DP + "/" + dp["id"], {"evidence[customer_name]": "Bob"})
        self.assertEqual(self.assertStripeError(r, 400, "invalid_request_error")["tp_code"], 1087)
        self.assertEqual(self.assertStripeError(self.c().post(DP + "/%s/close" % dp["id"], {}), 400,
                                                "invalid_request_error")["tp_code"], 1087)  # dispute_already_closed

    def test_evidence_texts_take_20000_characters_each_and_150000_in_all(self):
        """Stripe's limits, in characters (not the 5,000 bytes of other values)."""
        dp = self.dispute_of(self.pay()["latest_charge"])
        log = "é" * 20000  # 40,000 bytes of UTF-8
        r = self.c().post(DP + "/" + dp["id"], {"evidence[access_activity_log]": log, "submit": "false"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["evidence"]["access_activity_log"]), 20000)
        r = self.c().post(DP + "/" + dp["id"], {"evidence[refund_policy_disclosure]": "x" * 20001, "submit": "false"})
        self.assertStripeError(r, 400, "invalid_request_error", param="evidence[refund_policy_disclosure]")
        big = {"evidence[%s]" % k: "y" * 19000 for k in (
            "product_description", "refund_refusal_explanation", "service_date", "shipping_address",
            "shipping_carrier", "cancellation_rebuttal", "uncategorized_text")}
        big["submit"] = "false"
        r = self.c().post(DP + "/" + dp["id"], big)
        self.assertStripeError(r, 400, "invalid_request_error", param="evidence")
        got = self.c().get(DP + "/" + dp["id"]).json
        self.assertIsNone(got["evidence"]["product_description"], "a refused update changed nothing")

    def test_losing_evidence_and_close_lose_it(self):
        ch = self.pay(pm="pm_card_createDisputeProductNotReceived")["latest_charge"]
        dp = self.dispute_of(ch)
        self.assertEqual((dp["reason"], dp["network_reason_code"]), ("product_not_received", "13.1"))
        r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "losing_evidence"})
        self.assertEqual((r.json["status"], len(r.json["balance_transactions"])), ("lost", 1))
        ch = self.pay()["latest_charge"]
        dp = self.dispute_of(ch)
        r = self.c().post(DP + "/" + dp["id"], {"evidence[product_description]": "a book"})
        self.assertEqual(r.json["status"], "under_review")
        r = self.c().post(DP + "/%s/close" % dp["id"], {})
        self.assertEqual(r.json["status"], "lost")
        self.assertEqual(self.events(dp["id"])[-1], "charge.dispute.closed")

    def test_balance_transactions_by_source_are_exactly_the_ones_their_source_names(self):
        BT = "/v1/balance_transactions"
        pi = self.pay()
        ch = pi["latest_charge"]
        dp = self.dispute_of(ch)
        others = [self.pay(pm="pm_card_visa")["latest_charge"] for _ in range(3)]  # between the two adjustments
        won = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"}).json
        self.assertEqual(won["status"], "won", won)
        self.assertEqual(len(won["balance_transactions"]), 2, won)
        want = [b["id"] for b in reversed(won["balance_transactions"])]  # newest first
        got = self.c().get(BT, {"source": dp["id"]}).json
        self.assertEqual(([b["id"] for b in got["data"]], got["has_more"]), (want, False))
        # by type: adjustments are the dispute's two; a type Stripe does not have is refused
        adj = self.c().get(BT, {"type": "adjustment", "limit": 100}).json["data"]
        self.assertTrue(set(want) <= {b["id"] for b in adj} and all(b["type"] == "adjustment" for b in adj), adj)
        self.assertStripeError(self.c().get(BT, {"type": "bogus"}), 400, "invalid_request_error", param="type")
        # paged one at a time, both ways
        p1 = self.c().get(BT, {"source": dp["id"], "limit": 1}).json
        self.assertEqual(([b["id"] for b in p1["data"]], p1["has_more"]), (want[:1], True))
        p2 = self.c().get(BT, {"source": dp["id"], "limit": 1, "starting_after": want[0]}).json
        self.assertEqual(([b["id"] for b in p2["data"]], p2["has_more"]), (want[1:], False))
        p0 = self.c().get(BT, {"source": dp["id"], "limit": 1, "ending_before": want[1]}).json
        self.assertEqual([b["id"] for b in p0["data"]], want[:1])
        # with type and created
        self.assertEqual(len(self.c().get(BT, {"source": dp["id"], "type": "adjustment"}).json["data"]), 2)
        self.assertEqual(self.c().get(BT, {"source": dp["id"], "type": "charge"}).json["data"], [])
        self.assertEqual(self.c().get(BT, {"source": dp["id"], "created[lt]": dp["created"] - 5}).json["data"], [])
        # a charge's: its own
        for c in [ch] + others:
            txn = self.c().get("/v1/charges/" + c).json["balance_transaction"]
            got = self.c().get(BT, {"source": c}).json["data"]
            self.assertEqual([(b["id"], b["source"], b["type"]) for b in got], [(txn, c, "charge")])
        # a refund's and its failure's (Stripe's refundFail card: it succeeds, then fails)
        pi = self.pay(pm="pm_card_refundFail")
        re = self.c().post("/v1/refunds", {"payment_intent": pi["id"], "amount": 500}).json
        re = self.c().get("/v1/refunds/" + re["id"]).json
        self.assertEqual(re["status"], "failed", re)
        got = self.c().get(BT, {"source": re["id"]}).json["data"]
        self.assertEqual([(b["id"], b["type"]) for b in got],
                         [(re["failure_balance_transaction"], "refund_failure"), (re["balance_transaction"], "refund")])
        # a missing object, another kind, another merchant's: nothing
        for src in ("ch_missing", "re_missing", "dp_missing", pi["id"], "txn_x"):
            r = self.c().get(BT, {"source": src})
            self.assertEqual((r.status, r.json["data"], r.json["has_more"]), (200, [], False), src)
        self.assertEqual(self.c("n").get(BT, {"source": dp["id"]}).json["data"], [])
        self.assertEqual(self.c("n").get(BT, {"source": ch}).json["data"], [])

    def test_a_lost_chargeback_keeps_the_fee_and_the_fee_is_in_the_disputes_currency(self):
        avail = self.available()
        ch = self.pay()["latest_charge"]
        dp = self.dispute_of(ch)
        r = self.c().post(DP + "/%s/close" % dp["id"], {})
        self.assertEqual((r.json["status"], [b["net"] for b in r.json["balance_transactions"]]), ("lost", [-3500]))
        self.assertEqual(self.available(), avail - 3500)
        # listed by type (the index of the rare types) and by source; a charge's is not among them
        bt = r.json["balance_transactions"][0]
        adj = self.c().get("/v1/balance_transactions", {"type": "adjustment", "limit": 100}).json["data"]
        self.assertIn(bt, adj)
        self.assertEqual({b["type"] for b in adj}, {"adjustment"})
        self.assertEqual(self.c().get("/v1/balance_transactions", {"type": "adjustment", "source": dp["id"]})
                         .json["data"], [bt])
        charges = self.c().get("/v1/balance_transactions", {"type": "charge", "limit": 100}).json["data"]
        self.assertIn(ch, [b["source"] for b in charges])
        self.assertEqual({b["type"] for b in charges}, {"charge"})
        # [disputes] fee.jpy = 2000 (a zero-decimal currency: 2000 yen)
        jpy = self.pay(amount=5000, currency="jpy")
        bt = self.dispute_of(jpy["latest_charge"])["balance_transactions"][0]
        self.assertEqual((bt["currency"], bt["amount"], bt["fee"], bt["net"]), ("jpy", -5000, 2000, -7000))
        self.assertEqual(bt["fee_details"][0]["currency"], "jpy")
        bal = self.c().get("/v1/balance").json
        self.assertIn({"amount": -7000, "currency": "jpy", "source_types": {"card": -7000}}, bal["available"])
        self.assertEqual(self.ledger_sums()[0], 0)

    def test_an_inquiry_moves_no_money_and_the_charge_stays_refundable(self):
        before = self.pending()
        ch = self.pay(pm="pm_card_createDisputeInquiry", amount=3000)["latest_charge"]
        dp = self.dispute_of(ch)
        self.assertEqual((dp["status"], dp["balance_transactions"], dp["is_charge_refundable"]),
                         ("warning_needs_response", [], True))
        self.assertEqual(dp["payment_method_details"]["card"]["case_type"], "inquiry")
        self.assertEqual(self.pending(), before + 3000)
        self.assertEqual(self.events(dp["id"]), ["charge.dispute.created"])
        r = self.c().post("/v1/refunds", {"charge": ch, "amount": 500})
        self.assertEqual(r.status, 200, r)
        r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"})
        self.assertEqual(r.json["status"], "warning_closed")

    def test_escalated_an_inquiry_becomes_a_chargeback(self):
        # Stripe's test mode: "escalate_inquiry_evidence" turns the inquiry
        # into a full dispute that takes the amount and the fee
        avail = self.available()
        ch = self.pay(pm="pm_card_createDisputeInquiry", amount=3000)["latest_charge"]
        dp = self.dispute_of(ch)
        r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "escalate_inquiry_evidence"})
        self.assertEqual(r.status, 200, r)
        got = r.json
        self.assertEqual((got["status"], got["is_charge_refundable"], got["payment_method_details"]["card"]["case_type"],
                          [bt["net"] for bt in got["balance_transactions"]]),
                         ("needs_response", False, "chargeback", [-4500]), got)
        self.assertEqual(self.available(), avail - 4500)
        self.assertEqual(self.events(dp["id"]), ["charge.dispute.created", "charge.dispute.updated",
                                                 "charge.dispute.updated", "charge.dispute.funds_withdrawn"])
        self.assertStripeError(self.c().post("/v1/refunds", {"charge": ch}), 400, "invalid_request_error",
                               "charge_disputed")
        # then answered as a chargeback: won, the money comes back
        r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"})
        self.assertEqual(r.json["status"], "won", r)
        self.assertEqual(self.available(), avail)
        self.assertEqual(self.ledger_sums()[0], 0)

    def test_an_escalated_inquiry_takes_only_what_was_not_refunded(self):
        # Stripe: "after the payment has been fully refunded, no further
        # funds are withdrawn"; a partial refund leaves the rest to take.
        for refund, taken in ((3000, 0), (1000, 2000)):
            avail = self.available()
            ch = self.pay(pm="pm_card_createDisputeInquiry", amount=3000)["latest_charge"]
            dp = self.dispute_of(ch)
            r = self.c().post("/v1/refunds", {"charge": ch, "amount": refund})
            self.assertEqual(r.json["status"], "succeeded", r)
            r = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "escalate_inquiry_evidence"})
            self.assertEqual(r.json["status"], "needs_response", r)
            want = [-(taken + 1500)] if taken else []
            self.assertEqual([bt["net"] for bt in r.json["balance_transactions"]], want, r)
            # the chargeback is for what was withdrawn, not the whole charge
            self.assertEqual(r.json["amount"], taken or 3000, r)
            self.assertEqual(self.available() - avail, -refund - (taken + 1500 if taken else 0))
            if taken:  # won: what was taken comes back, fee too
                won = self.c().post(DP + "/" + dp["id"], {"evidence[uncategorized_text]": "winning_evidence"}).json
                self.assertEqual([bt["net"] for bt in won["balance_transactions"]], [-(taken + 1500), taken + 1500])
        self.assertEqual(self.ledger_sums()[0], 0)

    def test_a_fraud_chargeback_after_3d_secure_is_the_issuers(self):
        # Liability shift: Stripe's 4000000000000259 is "protected after 3D
        # Secure authentication"; a product_not_received dispute is not.
        import urllib.parse
        for pan, disputed in (("4000000000000259", False), ("4000000000002685", True)):
            avail = self.available()
            pi = self.pay(pm=None, payment_method_data=card(pan), return_url="https://shop.example/back",
                          **{"payment_method_options[card][request_three_d_secure]": "any"})
            self.assertEqual(pi["status"], "requires_action", pi)
            u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
            token = urllib.parse.parse_qs(u.query)["token"][0]
            r = self.c().post(u.path, {"token": token, "result": "approve"}, key=None)
            self.assertEqual(r.status, 303, r)
            got = self.c().get(PI + "/" + pi["id"], {"expand[]": "latest_charge"}).json
            ch = got["latest_charge"]
            self.assertEqual((got["status"], ch["payment_method_details"]["card"]["three_d_secure"]["result"]),
                             ("succeeded", "authenticated"), got)
            self.assertEqual((ch["disputed"], len(self.c().get(DP, {"charge": ch["id"]}).json["data"])),
                             (disputed, int(disputed)), pan)
            self.assertEqual(self.available() - avail, -(2000 + 1500) if disputed else 0, pan)  # amount and fee

    def test_a_held_payment_is_disputed_once_captured(self):
        pi = self.pay(capture_method="manual", payment_method_data=card("4000000000000259"), pm=None)
        ch = pi["latest_charge"]
        self.assertEqual(self.c().get(DP, {"charge": ch}).json["data"], [])
        self.assertFalse(self.c().get("/v1/charges/" + ch).json["disputed"])
        r = self.c().post(PI + "/%s/capture" % pi["id"], {"amount_to_capture": 1500})
        self.assertEqual(r.status, 200, r)
        dp = self.dispute_of(ch)
        self.assertEqual(dp["amount"], 1500)
        self.assertEqual([d["id"] for d in self.c().get(DP, {"payment_intent": pi["id"]}).json["data"]], [dp["id"]])

    def test_no_dispute_without_the_card_and_none_for_another_merchant(self):
        ch = self.pay(pm="pm_card_visa")["latest_charge"]
        self.assertEqual(self.c().get(DP, {"charge": ch}).json["data"], [])
        self.assertFalse(self.c().get("/v1/charges/" + ch).json["disputed"])
        dp = self.dispute_of(self.pay()["latest_charge"])
        other = self.c("n")
        self.assertStripeError(other.get(DP + "/" + dp["id"]), 404, "invalid_request_error", "resource_missing")
        self.assertStripeError(other.post(DP + "/%s/close" % dp["id"], {}), 404, "invalid_request_error",
                               "resource_missing")
        self.assertEqual(other.get(DP).json["data"], [])

    def test_bad_input_changes_nothing(self):
        dp = self.dispute_of(self.pay()["latest_charge"])
        for params, param in [({"evidence[nonsense]": "x"}, "evidence[nonsense]"),
                              ({"evidence[receipt]": "file_123"}, "evidence[receipt]"),
                              ({"evidence[customer_name]": "x" * 20001}, "evidence[customer_name]"),
                              ({"submit": "maybe"}, "submit"),
                              ({"intended_submission_method": "fax"}, "intended_submission_method")]:
            r = self.c().post(DP + "/" + dp["id"], params)
            self.assertEqual(r.status, 400, (params, r))
            self.assertEqual(r.json["error"].get("param"), param, (params, r))
        self.assertEqual(self.c().get(DP + "/" + dp["id"]).json, dp)
        self.assertStripeError(self.c().get(DP + "/dp_nothere"), 404, "invalid_request_error", "resource_missing")


    def test_an_early_fraud_warning_moves_no_money_and_a_full_refund_settles_it(self):
        before = self.pending()
        pi = self.pay(pm="pm_card_createIssuerFraudRecord", amount=2600)
        ch = pi["latest_charge"]
        r = self.c().get(EFW, {"charge": ch})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["url"], EFW)
        self.assertEqual(len(r.json["data"]), 1, r)
        w = r.json["data"][0]
        self.assertTrue(w["id"].startswith("issfr_"), w)
        self.assertEqual((w["object"], w["actionable"], w["charge"], w["payment_intent"], w["livemode"]),
                         ("radar.early_fraud_warning", True, ch, pi["id"], False))
        self.assertEqual(self.c().get(EFW + "/" + w["id"]).json, w)
        self.assertEqual(self.c().get(EFW, {"payment_intent": pi["id"]}).json["data"], [w])
        # no dispute, no money moved, the charge refundable
        self.assertEqual(self.c().get(DP, {"charge": ch}).json["data"], [])
        self.assertFalse(self.c().get("/v1/charges/" + ch).json["disputed"])
        self.assertEqual(self.pending(), before + 2600)
        self.assertEqual(self.events(w["id"]), ["radar.early_fraud_warning.created"])
        [made] = [e for e in self.c().get("/v1/events", {"type": "radar.early_fraud_warning.created"}).json["data"]
                  if e["data"]["object"]["id"] == w["id"]]
        self.assertEqual(made["request"], {"id": None, "idempotency_key": None})  # the issuer's, not a request's
        # a partial refund leaves it actionable; the rest settles it
        self.assertEqual(self.c().post("/v1/refunds", {"charge": ch, "amount": 600}).status, 200)
        self.assertTrue(self.c().get(EFW + "/" + w["id"]).json["actionable"])
        self.assertEqual(self.c().post("/v1/refunds", {"charge": ch}).status, 200)
        self.assertFalse(self.c().get(EFW + "/" + w["id"]).json["actionable"])
        ev = self.c().get("/v1/events", {"type": "radar.early_fraud_warning.updated"}).json["data"][0]
        self.assertEqual((ev["data"]["object"]["id"], ev["data"]["previous_attributes"]), (w["id"],
                                                                                           {"actionable": True}))
        self.assertEqual(self.ledger_sums()[0], 0)
        # another merchant sees none of it; an unknown id is missing
        self.assertStripeError(self.c("n").get(EFW + "/" + w["id"]), 404, code="resource_missing")
        self.assertEqual(self.c("n").get(EFW).json["data"], [])
        self.assertStripeError(self.c().get(EFW + "/issfr_nope"), 404, code="resource_missing")


if __name__ == "__main__":
    main()
