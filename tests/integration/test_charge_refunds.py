"""Refunds through the Charges API's own routes, as ActiveMerchant (Spree,
Solidus) and other Charges-era integrations call them: POST
/v1/charges/{id}/refunds (answers the Refund), POST /v1/charges/{id}/refund
(Stripe's older "refund a charge": answers the Charge) and POST
/v1/charges/{id}/refunds/{refund} (metadata); each is the same refund as
POST /v1/refunds, with its limits, events and ledger entry; another
charge's refund is missing there. Also: a metadata key sent empty on a
refund's create is not kept, and instructions_email must be an address."""
import threading
import time
import unittest

from harness import Daemon, DaemonTestCase, Sim, main, new_key

CH = "/v1/charges"


class ChargeRefunds(DaemonTestCase):
    MERCHANTS = ("m", "n")

    def charge(self, amount=2000):
        r = self.c().post(CH, {"amount": amount, "currency": "usd", "source": "tok_visa"})
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        return r.json

    def events_about(self, object_id):
        r = self.c().get("/v1/events", {"limit": 50})
        return [e["type"] for e in reversed(r.json["data"]) if e["data"]["object"]["id"] == object_id]

    def test_a_refund_for_fraud_reports_the_charge_fraudulent(self):
        """Stripe: reason fraudulent reports the charge as fraudulent
        (fraud_details.user_report); it stayed empty."""
        ch = self.charge()
        self.assertEqual(ch["fraud_details"], {}, ch)
        r = self.c().post("/v1/refunds", {"charge": ch["id"], "amount": 500, "reason": "fraudulent"})
        self.assertEqual(r.status, 200, r)
        got = self.c().get(CH + "/" + ch["id"]).json
        self.assertEqual(got["fraud_details"], {"user_report": "fraudulent"}, got)
        other = self.charge()
        self.c().post("/v1/refunds", {"charge": other["id"], "reason": "requested_by_customer"})
        self.assertEqual(self.c().get(CH + "/" + other["id"]).json["fraud_details"], {})
        held = self.c().post(CH, {"amount": 900, "currency": "usd", "source": "tok_visa", "capture": "false"}).json
        self.assertEqual(self.c().post("/v1/refunds", {"charge": held["id"], "reason": "fraudulent"}).status, 200)
        self.assertEqual(self.c().get(CH + "/" + held["id"]).json["fraud_details"], {"user_report": "fraudulent"})

    def test_charge_refunded_carries_what_was_refunded_before(self):
        """Stripe's charge.refunded has data.previous_attributes
        (amount_refunded, refunded before): a webhook handler takes the
        refund's amount as the difference. It had none."""
        ch = self.charge(2000)
        for amount, before, after in ((500, 0, 500), (1500, 500, 2000)):
            self.assertEqual(self.c().post("/v1/refunds", {"charge": ch["id"], "amount": amount}).status, 200)
            evs = [e for e in self.c().get("/v1/events", {"type": "charge.refunded", "limit": 10}).json["data"]
                   if e["data"]["object"]["id"] == ch["id"]]
            ev = evs[0]
            self.assertEqual(ev["data"]["object"]["amount_refunded"], after, ev)
            prev = ev["data"].get("previous_attributes")
            self.assertIsNotNone(prev, ev)
            self.assertEqual(prev.get("amount_refunded"), before, prev)
            self.assertEqual(after - prev["amount_refunded"], amount)
        self.assertEqual(prev.get("refunded"), False, prev)
        # inside an object, only what changed there (as an update's)
        fr = self.charge(1000)
        self.assertEqual(self.c().post("/v1/refunds", {"charge": fr["id"], "amount": 100,
                                                      "reason": "fraudulent"}).status, 200)
        ev = [e for e in self.c().get("/v1/events", {"type": "charge.refunded", "limit": 10}).json["data"]
              if e["data"]["object"]["id"] == fr["id"]][0]
        self.assertEqual(ev["data"]["previous_attributes"].get("fraud_details"), {"user_report": None}, ev)

    def test_a_refund_under_the_charge(self):
        ch = self.charge()
        r = self.c().post("%s/%s/refunds" % (CH, ch["id"]), {"amount": 500, "reason": "requested_by_customer",
                                                             "metadata[order]": "A-1"})
        self.assertEqual(r.status, 200, r)
        re = r.json
        self.assertEqual((re["object"], re["charge"], re["amount"], re["status"], re["reason"], re["metadata"]),
                         ("refund", ch["id"], 500, "succeeded", "requested_by_customer", {"order": "A-1"}))
        self.assertEqual(self.events_about(re["id"]), ["refund.created"])
        got = self.c().get("%s/%s" % (CH, ch["id"])).json
        self.assertEqual((got["amount_refunded"], got["refunded"]), (500, False))
        bt = self.c().get("/v1/balance_transactions/" + re["balance_transaction"]).json
        self.assertEqual((bt["type"], bt["amount"], bt["source"]), ("refund", -500, re["id"]))
        # the same limits as POST /v1/refunds
        self.assertStripeError(self.c().post("%s/%s/refunds" % (CH, ch["id"]), {"amount": 1501}), 400,
                               code="amount_too_large", param="amount")
        # the charge is the path's: a charge parameter is not one of this route's
        self.assertStripeError(self.c().post("%s/%s/refunds" % (CH, ch["id"]), {"charge": ch["id"]}), 400,
                               code="parameter_unknown", param="charge")
        # listed under the charge
        listed = self.c().get("%s/%s/refunds" % (CH, ch["id"])).json
        self.assertEqual([x["id"] for x in listed["data"]], [re["id"]])

    def test_the_older_refund_of_a_charge_answers_the_charge(self):
        ch = self.charge(1200)
        r = self.c().post("%s/%s/refund" % (CH, ch["id"]), {"expand[]": "refunds"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["object"], r.json["id"], r.json["amount_refunded"], r.json["refunded"]),
                         ("charge", ch["id"], 1200, True))
        [re] = r.json["refunds"]["data"]
        self.assertEqual((re["amount"], re["status"]), (1200, "succeeded"))
        self.assertStripeError(self.c().post("%s/%s/refund" % (CH, ch["id"]), {}), 400,
                               code="charge_already_refunded")
        # an Idempotency-Key replays the charge it answered
        ch2 = self.charge(900)
        k = {"Idempotency-Key": "legacy-refund-" + ch2["id"]}
        a = self.c().post("%s/%s/refund" % (CH, ch2["id"]), {"amount": 400}, headers=k)
        b = self.c().post("%s/%s/refund" % (CH, ch2["id"]), {"amount": 400}, headers=k)
        self.assertEqual((a.status, b.status, b.headers.get("Idempotent-Replayed")), (200, 200, "true"))
        self.assertEqual((a.json["object"], a.json["amount_refunded"]), ("charge", 400))
        self.assertEqual(b.json, a.json)
        self.assertEqual(len(self.c().get("/v1/refunds", {"charge": ch2["id"]}).json["data"]), 1)
        # another merchant's charge is missing
        self.assertStripeError(self.c("n").post("%s/%s/refund" % (CH, ch2["id"]), {}), 404,
                               code="resource_missing")
        self.assertEqual(self.c().get("%s/%s" % (CH, ch2["id"])).json["amount_refunded"], 400)

    def test_a_refund_s_metadata_under_its_charge(self):
        ch, other = self.charge(), self.charge()
        re = self.c().post("%s/%s/refunds" % (CH, ch["id"]), {"amount": 100}).json
        u = self.c().post("%s/%s/refunds/%s" % (CH, ch["id"], re["id"]), {"metadata[k]": "v"})
        self.assertEqual((u.status, u.json["id"], u.json["metadata"]), (200, re["id"], {"k": "v"}), u)
        self.assertEqual(self.events_about(re["id"]), ["refund.created", "refund.updated", "charge.refund.updated"])
        # through another charge, or by another merchant, it is missing and unchanged
        self.assertStripeError(self.c().post("%s/%s/refunds/%s" % (CH, other["id"], re["id"]), {"metadata[k]": "w"}),
                               404, code="resource_missing")
        self.assertStripeError(self.c("n").post("%s/%s/refunds/%s" % (CH, ch["id"], re["id"]),
                                                {"metadata[k]": "w"}), 404, code="resource_missing")
        self.assertEqual(self.c().get("/v1/refunds/" + re["id"]).json["metadata"], {"k": "v"})
        # an update that changes nothing (no parameters, the same metadata,
        # expand only) sends no *.updated event, on a refund or a charge
        for body in ({}, {"metadata[k]": "v"}, {"expand[]": "charge"}):
            self.assertEqual(self.c().post("/v1/refunds/" + re["id"], body).status, 200)
        self.assertEqual(self.events_about(re["id"]), ["refund.created", "refund.updated", "charge.refund.updated"])
        before = self.events_about(ch["id"])
        for body in ({}, {"metadata[a]": "1"}, {"metadata[a]": "1"}, {"description": ""}):
            self.assertEqual(self.c().post("%s/%s" % (CH, ch["id"]), body).status, 200)
        self.assertEqual(self.events_about(ch["id"]), before + ["charge.updated"])

    def test_a_refund_of_an_uncaptured_charge_releases_it(self):
        """ActiveMerchant's void and verify, omnipay's void: a refund of a
        charge made with capture=false voids its authorization. The Refund
        shows the release (no balance transaction: no money moved), the
        charge is refunded, its PaymentIntent canceled; only the whole hold
        can go; a second time there is nothing left."""
        b0 = self.c().get("/v1/balance").json
        held = self.c().post(CH, {"amount": 1500, "currency": "usd", "source": "tok_visa", "capture": "false"}).json
        self.assertEqual((held["captured"], held["status"]), (False, "succeeded"), held)
        self.assertStripeError(self.c().post("%s/%s/refunds" % (CH, held["id"]), {"amount": 500}), 400,
                               param="amount")
        for bad in (0, -5):  # as for a captured charge (it was told to release the whole -$0.05)
            err = self.assertStripeError(self.c().post("/v1/refunds", {"charge": held["id"], "amount": bad}), 400,
                                         code="amount_too_small", param="amount")
            self.assertEqual(err["message"], "Refund amount must be positive.")
        r = self.c().post("%s/%s/refunds" % (CH, held["id"]), {"expand[]": "charge"})
        self.assertEqual(r.status, 200, r)
        re = r.json
        self.assertEqual((re["status"], re["amount"], re["balance_transaction"], re["charge"]["refunded"],
                          re["charge"]["amount_refunded"], re["charge"]["captured"]),
                         ("succeeded", 1500, None, True, 1500, False), re)
        pi = self.c().get("/v1/payment_intents/" + held["payment_intent"]).json
        self.assertEqual((pi["status"], pi["amount_capturable"]), ("canceled", 0), pi)
        self.assertEqual(self.events_about(re["id"]), ["refund.created"])
        self.assertIn("charge.refunded", self.events_about(held["id"]))
        self.assertStripeError(self.c().post("%s/%s/refund" % (CH, held["id"]), {}), 400,
                               code="charge_already_refunded")
        self.assertEqual(self.c().get("/v1/balance").json, b0)  # no money moved
        # the older route answers the charge
        held2 = self.c().post(CH, {"amount": 700, "currency": "usd", "source": "tok_visa", "capture": "false"}).json
        ch = self.c().post("%s/%s/refund" % (CH, held2["id"]), {})
        self.assertEqual((ch.status, ch.json["object"], ch.json["refunded"], ch.json["amount_refunded"]),
                         (200, "charge", True, 700), ch)
        self.assertStripeError(self.c().post("%s/%s/capture" % (CH, held2["id"]), {}), 400)

    def test_a_failed_earlier_charge_releases_nothing(self):
        """A PaymentIntent whose first charge was declined and whose second
        holds the money: a refund of the first is refused (it released
        nothing, canceled the PaymentIntent and left the live hold at the
        processor, out of reach of capture, cancel and expiry)."""
        pi = self.c().post("/v1/payment_intents", {"amount": 2500, "currency": "usd", "capture_method": "manual"}).json
        d = self.c().post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_chargeDeclined"})
        self.assertEqual(d.status, 402, d)
        failed = d.json["error"]["charge"]
        ok = self.c().post("/v1/payment_intents/%s/confirm" % pi["id"], {"payment_method": "pm_card_visa"}).json
        self.assertEqual(ok["status"], "requires_capture", ok)
        self.assertStripeError(self.c().post("%s/%s/refunds" % (CH, failed), {}), 400, code="charge_not_refundable")
        got = self.c().get("/v1/payment_intents/" + pi["id"]).json
        self.assertEqual((got["status"], got["amount_capturable"]), ("requires_capture", 2500), got)
        self.assertEqual(self.c().get("/v1/refunds", {"charge": failed}).json["data"], [])
        cap = self.c().post("/v1/payment_intents/%s/capture" % pi["id"], {})
        self.assertEqual((cap.status, cap.json["status"]), (200, "succeeded"), cap)

    def test_an_old_version_s_charges_list_counts_past_its_page(self):
        """Before 2022-11-15 a PaymentIntent carries its charges as a list.
        Past ten charges (declines retried) its total_count was left out,
        while a charge's refunds list counted past the page: merchant code
        reading charges.total_count raised (stripe-python's AttributeError)."""
        old = {"Stripe-Version": "2020-08-27"}
        c = self.c()
        pi = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd"}).json["id"]
        for _ in range(11):
            r = c.post("/v1/payment_intents/%s/confirm" % pi, {"payment_method": "pm_card_chargeDeclined"})
            self.assertEqual(r.status, 402, r)
        r = c.post("/v1/payment_intents/%s/confirm" % pi, {"payment_method": "pm_card_visa"}, headers=old)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((len(r.json["charges"]["data"]), r.json["charges"]["has_more"],
                          r.json["charges"].get("total_count")), (10, True, 12), r.json["charges"])
        got = c.get("/v1/payment_intents/" + pi, headers=old).json["charges"]
        self.assertEqual((len(got["data"]), got["has_more"], got.get("total_count")), (10, True, 12), got)

    def test_a_metadata_key_sent_empty_is_not_kept(self):
        ch = self.charge()
        re = self.c().post("/v1/refunds", {"charge": ch["id"], "amount": 100, "metadata[a]": "", "metadata[b]": "x"})
        self.assertEqual((re.status, re.json["metadata"]), (200, {"b": "x"}), re)

    def test_instructions_email_must_be_an_address(self):
        ch = self.charge()
        self.assertStripeError(self.c().post("/v1/refunds", {"charge": ch["id"], "instructions_email": "nope"}),
                               400, code="email_invalid", param="instructions_email")
        self.assertEqual(self.c().get("/v1/refunds", {"charge": ch["id"]}).json["data"], [])
        ok = self.c().post("/v1/refunds", {"charge": ch["id"], "amount": 100, "instructions_email": "a@example.com"})
        self.assertEqual(ok.status, 200, ok)



class RefundDuringCaptureTest(unittest.TestCase):
    """A refund by payment_intent sent while that PaymentIntent's capture
    is still at the processor waits for the capture, as a refund by the
    charge does, and refunds the captured charge. It was answered 409
    attempt_in_flight, "an unknown outcome that is being settled", while
    the capture simply took 1.5 s."""

    def test_a_refund_by_payment_intent_waits_for_a_capture_in_flight(self):
        sim = Sim()
        self.addCleanup(sim.stop)
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config="[processor.slow]\ntype = restjson\nendpoint = http://%s/p/slow\n"
                       "timeout_ms = 10000\nhealth_interval_ms = 0\n" % sim.rest)
        c = d.client("m")
        for via in ("payment_intent", "charge"):
            pi = c.post("/v1/payment_intents", {"amount": 10000, "currency": "usd", "payment_method": "pm_card_visa",
                                                "confirm": "true", "capture_method": "manual"}).json
            self.assertEqual(pi["status"], "requires_capture", pi)
            sim.faults("slow", latency_ms_min=1500, latency_ms_max=1500)
            got = {}

            def capture():
                got["capture"] = c.post("/v1/payment_intents/%s/capture" % pi["id"], {"amount_to_capture": 6000},
                                        idem=new_key("cap"))
            t = threading.Thread(target=capture)
            t.start()
            time.sleep(0.4)  # the capture is at the processor
            target = pi["id"] if via == "payment_intent" else pi["latest_charge"]
            refund = c.post("/v1/refunds", {via: target, "amount": 1000}, idem=new_key("re"))
            t.join()
            sim.faults("slow", latency_ms_min=0, latency_ms_max=0)
            self.assertEqual(got["capture"].status, 200, got["capture"])
            self.assertEqual((refund.status, refund.json.get("status"), refund.json.get("amount")),
                             (200, "succeeded", 1000), (via, refund))
            ch = c.get("/v1/charges/" + pi["latest_charge"]).json
            self.assertEqual((ch["amount_captured"], ch["amount_refunded"]), (6000, 1000), ch)


if __name__ == "__main__":
    main()
