"""Processor orchestration against the real `turnpike sim`: cascading after
timeouts, status-query resolution, hard declines not cascaded, soft declines
retried, outage -> breaker -> reroute, the attempts API, kill -9 of the
gateway under load with recovery and the sim journal proving that no card was
charged twice, and kill -9 of the processor itself (REST and ISO 8583) under
load: nothing charged that the gateway shows unpaid, nothing paid uncharged."""
import collections
import http.client
import json
import os
import signal
import threading
import time
import unittest
import urllib.parse

from harness import (BIN, HOST, PAN_3DS, Client, Daemon, PaymentLoad, Sim, card, iso_rrn, new_key, open_db_ro,
                     start_beside, main)


def gateway_config(sim, names=("a", "b"), timeout_ms=400, extra=""):
    ini = ["[routing]", "deadline_ms = 8000", "recovery_interval_ms = 300", "backoff_base_ms = 20", ""]
    for i, n in enumerate(names):
        ini += ["[processor.%s]" % n, "type = restjson", "endpoint = http://%s/p/%s" % (sim.rest, n),
                "timeout_ms = %d" % timeout_ms, "priority = %d" % (i + 1), "breaker_consecutive = 3",
                "breaker_open_ms = 800", "breaker_half_open_probes = 1", "health_interval_ms = 0", ""]
    # jpy payments may only use z, which takes only eur: nothing to route to.
    ini += ["[processor.z]", "type = restjson", "endpoint = http://%s/p/z" % sim.rest, "currencies = eur",
            "health_interval_ms = 0", ""]
    ini += ["[route.nowhere]", "currency = jpy", "processors = z", ""]
    # A fixed order keeps the tests deterministic; the bandit has unit tests.
    ini += ["[route.all]", "merchant = *", "processors = %s" % ",".join(names), "strategy = ordered", ""]
    return "\n".join(ini) + extra



def one_iso_link_config(sim):
    """One ISO 8583 link (x) to the sim's host, quick recovery."""
    return "\n".join([
        "[routing]", "deadline_ms = 8000", "recovery_interval_ms = 300", "backoff_base_ms = 20",
        "reversal_backoff_max_ms = 1000", "",
        "[processor.x]", "type = iso8583", "endpoint = %s" % sim.iso, "timeout_ms = 600",
        "terminal_id = TERM0001", "merchant_id = TURNPIKE0000001", "health_interval_ms = 0", "",
        "[route.all]", "merchant = *", "processors = x", "strategy = ordered", ""])


class SimGatewayTest(unittest.TestCase):
    """One turnpike sim and one gateway (config(sim)) per test class, with
    the merchants in MERCHANTS; self.c is the first one's client."""
    MERCHANTS = ("m",)

    @classmethod
    def config(cls, sim):
        return gateway_config(sim)

    @classmethod
    def setUpClass(cls):
        cls.sim = Sim()
        cls.daemon = Daemon()
        for m in cls.MERCHANTS:
            cls.daemon.create_merchant(m)
        start_beside(cls.sim, cls.daemon, config=cls.config(cls.sim))
        cls.c = cls.daemon.client(cls.MERCHANTS[0])

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        cls.sim.stop()


class OrchestrationTest(SimGatewayTest):
    MERCHANTS = ("m", "n")

    def setUp(self):
        for n in ("a", "b"):
            self.sim.faults(n, outage=False, timeout_rate=0.0, error_rate=0.0, reset_rate=0.0,
                            decline_rate=0.0, latency_ms_min=0, latency_ms_max=0, timeout_operations="all")
        # Each test starts with closed breakers: after breaker_open_ms a
        # breaker is half-open and one good payment (the probe) closes it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = [p["breaker"] for p in self.c.get("/v1/turnpike/processors").json["data"]]
            if all(st == "closed" for st in states):
                return
            if any(st == "half_open" for st in states):
                self.pay()
            time.sleep(0.1)
        self.fail("breakers did not close: %r" % states)

    def pay(self, **params):
        p = {"amount": 1234, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        p.update(params)
        return self.c.post("/v1/payment_intents", p, idem=new_key("orch"))

    def attempts(self, pi_id):
        r = self.c.get("/v1/payment_intents/%s/attempts" % pi_id)
        self.assertEqual(r.status, 200, r.json)
        return r.json["data"]

    def test_a_card_of_the_highest_risk_is_blocked_before_any_processor(self):
        """Stripe's 4100000000000019 "is always blocked regardless of your
        rules": not sent to the network. It was sent and declined by the
        processor's own test-card table, which the processor's statistics
        and the router then learnt from."""
        def declined(name):
            for p in self.c.get("/v1/turnpike/processors").json["data"]:
                if p["name"] == name:
                    return p
        before = declined("a")
        for pm in ("pm_card_radarBlock", "pm_card_riskLevelHighest"):
            r = self.pay(payment_method=pm)
            self.assertEqual(r.status, 402, r.json)
            err = r.json["error"]
            self.assertEqual((err["code"], err.get("decline_code")), ("card_declined", "fraudulent"), r.json)
            pi = err["payment_intent"]
            n, j = self.charges_of(pi["id"])
            self.assertEqual(j["entries"], [], "the processor was called")
            ch = self.c.get("/v1/charges/" + err["charge"]).json
            self.assertEqual((ch["status"], ch["outcome"]["type"], ch["outcome"]["network_status"]),
                             ("failed", "blocked", "not_sent_to_network"), ch)
        after = declined("a")
        self.assertEqual((after["calls"], after["declined"]), (before["calls"], before["declined"]), after)
        self.assertEqual(self.pay().json["status"], "succeeded")

    def test_a_capture_learnt_by_recovery_keeps_what_it_was_sent_with(self):
        """The capture happens at the processor and its answer is lost (502
        processor_status_unknown): recovery settles it, and the capture's
        own metadata and statement descriptor suffix are on the objects as
        when the answer comes in time (they were dropped: recovery read the
        objects back as they were before the capture)."""
        pi = self.pay(amount=5000, capture_method="manual").json
        self.assertEqual(pi["status"], "requires_capture", pi)
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500,
                        timeout_operations="capture")
        key = new_key("cap")
        params = {"amount_to_capture": 3000, "metadata[order]": "A-17", "statement_descriptor_suffix": "ORDER17"}
        r = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], params, idem=key)
        self.assertEqual(r.status, 502, r.json)
        # while it is unresolved (status queries lost too), the objects are
        # updated: recovery must not undo that either
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=1500,
                        timeout_operations="all")
        up = self.c.post("/v1/payment_intents/" + pi["id"], {"metadata[later]": "yes"})
        self.assertEqual(up.status, 200, up.json)
        up = self.c.post("/v1/charges/" + pi["latest_charge"], {"metadata[chlater]": "1",
                                                                 "receipt_email": "x@example.com"})
        self.assertEqual(up.status, 200, up.json)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = self.c.get("/v1/payment_intents/" + pi["id"]).json
            if got["status"] == "succeeded":
                break
            time.sleep(0.2)
        self.assertEqual((got["status"], got["amount_received"], got["metadata"]),
                         ("succeeded", 3000, {"order": "A-17", "later": "yes"}), got)
        ch = self.c.get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual((ch["amount_captured"], ch["statement_descriptor_suffix"]), (3000, "ORDER17"), ch)
        self.assertEqual((ch["metadata"], ch["receipt_email"]), ({"chlater": "1"}, "x@example.com"), ch)
        self.assertIn("ORDER17", ch["calculated_statement_descriptor"], ch)
        again = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], params, idem=key)
        self.assertEqual((again.status, again.json.get("metadata")), (200, {"order": "A-17", "later": "yes"}),
                         again.json)
        # metadata="" (clear them all) on a capture learnt by recovery clears them too
        held = self.pay(amount=1500, capture_method="manual", **{"metadata[a]": "1"}).json
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500,
                        timeout_operations="capture")
        r = self.c.post("/v1/payment_intents/%s/capture" % held["id"], {"metadata": ""})
        self.assertEqual(r.status, 502, r.json)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = self.c.get("/v1/payment_intents/" + held["id"]).json
            if got["status"] == "succeeded":
                break
            time.sleep(0.2)
        self.assertEqual((got["status"], got["metadata"]), ("succeeded", {}), got)
        # a capture that fails at the processor names its PaymentIntent, as it was
        other = self.pay(amount=2000, capture_method="manual").json
        self.sim.faults("a", outage=True)
        try:
            f = self.c.post("/v1/payment_intents/%s/capture" % other["id"], {"metadata[x]": "y"})
        finally:
            self.sim.faults("a", outage=False)
        self.assertEqual(f.status, 402, f.json)
        self.assertEqual(f.json["error"]["payment_intent"]["id"], other["id"], f.json)
        self.assertEqual(f.json["error"]["payment_intent"]["status"], "requires_capture", f.json)
        self.assertEqual(f.json["error"]["payment_intent"]["metadata"], {}, f.json)

    def test_an_inquiry_is_not_escalated_over_a_refund_of_unknown_outcome(self):
        """A refund whose processor call timed out is not in amount_refunded
        until recovery settles it: escalating the inquiry meanwhile would
        take the money the cardholder may already have back. 409
        attempt_in_flight, as a second refund gets."""
        pi = self.pay(payment_method="pm_card_createDisputeInquiry", amount=3000).json
        self.assertEqual(pi["status"], "succeeded", pi)
        dp = self.c.get("/v1/disputes", {"charge": pi["latest_charge"]}).json["data"][0]
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500,
                        timeout_operations="refund")
        r = self.c.post("/v1/refunds", {"charge": pi["latest_charge"]}, idem=new_key("re"))
        self.assertGreaterEqual(r.status, 500, r.json)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        r = self.c.post("/v1/disputes/" + dp["id"], {"evidence[uncategorized_text]": "escalate_inquiry_evidence"})
        self.assertEqual((r.status, r.json["error"].get("tp_code")), (409, 3009), r.json)
        self.assertEqual(self.c.get("/v1/disputes/" + dp["id"]).json["status"], "warning_needs_response")

    def test_an_approval_that_cannot_be_sent_redirects_nowhere(self):
        """The customer approves a challenge, and nothing can take the
        payment (jpy routes only to z, which takes eur): 400, the
        PaymentIntent still waits for its challenge, and no Location tells
        the merchant's return page it succeeded."""
        import urllib.parse
        r = self.c.post("/v1/payment_intents", {"amount": 500, "currency": "jpy", "confirm": "true",
                                                "payment_method": "pm_card_threeDSecure2Required",
                                                "return_url": "https://shop.test/r"})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r.json)
        u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        a = self.c.post(u.path, {"token": token, "result": "approve"}, key=None)
        self.assertEqual((a.status, a.headers.get("Location")), (400, None), a.body[:300])
        self.assertEqual(self.c.get("/v1/payment_intents/" + r.json["id"]).json["status"], "requires_action")

    def charge_processor(self, pi):
        ch = self.c.get("/v1/charges/%s" % pi["latest_charge"]).json
        return ch["turnpike"]["processor"]

    def charges_of(self, pi_id):
        j = self.sim.journal(payment=pi_id)
        return j["summary"]["charges_by_payment"].get(pi_id, 0), j

    def wait_breaker(self, name, state, seconds=10):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = self.c.get("/v1/turnpike/processors")
            for p in r.json.get("data", []):
                if p.get("name") == name and p.get("breaker") == state:
                    return True
            time.sleep(0.1)
        return False

    def test_approval_goes_to_first_processor_and_route_is_recorded(self):
        r = self.pay()
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual(r.json["status"], "succeeded")
        self.assertEqual(self.charge_processor(r.json), "a")
        att = self.attempts(r.json["id"])
        self.assertEqual(len(att), 1)
        self.assertEqual(att[0]["processor"], "a")
        self.assertEqual(att[0]["state"], "succeeded")
        self.assertEqual(att[0]["route"]["rule"], "all")
        self.assertEqual(att[0]["route"]["rank"], 1)
        n, _ = self.charges_of(r.json["id"])
        self.assertEqual(n, 1)

    def test_timeout_before_processing_cascades_to_next_processor(self):
        # Authorizations to a are lost on the way in; its status queries and
        # voids get through, so the gateway can fence each lost reference
        # (void it, before_authorization) and go on.
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=1500,
                        timeout_operations="authorize")
        r = self.pay()
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual(r.json["status"], "succeeded")
        self.assertEqual(self.charge_processor(r.json), "b")
        att = self.attempts(r.json["id"])
        procs = [a["processor"] for a in att]
        # a: the call and one retry, each resolved by a status query (never
        # seen) before anything else went out; then b.
        self.assertEqual(procs, ["a", "a", "b"], att)
        self.assertEqual([a["state"] for a in att], ["failed", "failed", "succeeded"])
        self.assertEqual(att[0]["result_code"], "processor_timeout")
        n, j = self.charges_of(r.json["id"])
        self.assertEqual(n, 1, j)
        self.assertEqual(j["summary"]["double_charges"], 0)
        # each lost reference was fenced at a before the payment moved on
        for a in att[:2]:
            fences = [e for e in self.sim.journal(processor="a", reference=a["id"] + "-fence")["entries"]]
            self.assertEqual([(e["operation"], e["status"]) for e in fences], [("void", "voided")], a)

    def lost_capture(self, mode, hold_ms):
        """A manual-capture payment at a, then a capture whose answer a loses
        (timeout_mode `mode`): 502 processor_status_unknown. (pi, key)."""
        r = self.pay(capture_method="manual")
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r.json)
        pi = r.json
        self.assertEqual(self.charge_processor(pi), "a")
        self.sim.faults("a", timeout_rate=1.0, timeout_mode=mode, timeout_hold_ms=hold_ms,
                        timeout_operations="capture")
        key = new_key("cap")
        cap = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        self.assertEqual((cap.status, cap.json["error"].get("tp_code")), (502, 6018), cap.json)
        self.assertEqual(cap.json["error"]["payment_intent"]["id"], pi["id"], cap.json)
        return pi, key

    def test_a_refund_whose_void_is_lost_names_no_payment_intent(self):
        """A refund of an uncaptured charge is a void; its answer lost, the
        502 is a refund's error: no error.payment_intent (that is for the
        PaymentIntent's own requests)."""
        r = self.pay(capture_method="manual")
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r.json)
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500,
                        timeout_operations="void")
        try:
            ref = self.c.post("/v1/refunds", {"charge": r.json["latest_charge"]})
        finally:
            self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        self.assertEqual((ref.status, ref.json["error"].get("tp_code")), (502, 6018), ref.json)
        self.assertNotIn("payment_intent", ref.json["error"], ref.json)

    def test_capture_whose_answer_is_lost_is_settled_by_recovery(self):
        """The processor captures but its answer is lost (timeout after
        processing). The gateway must not report the capture as failed (the
        money moved); it answers 502 processor_status_unknown, and recovery
        finds the capture by status query and records it, ledger included;
        the client's retry with its key gets the settled answer."""
        pi, key = self.lost_capture("after", 1500)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = self.c.get("/v1/payment_intents/" + pi["id"]).json
            if now["status"] != "requires_capture":
                break
            time.sleep(0.1)
        self.assertEqual(now["status"], "succeeded", now)
        self.assertEqual(now["amount_received"], pi["amount"])
        ch = self.c.get("/v1/charges/" + pi["latest_charge"]).json
        self.assertTrue(ch["captured"], ch)
        again = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
        self.assertEqual((again.status, again.json.get("status")), (200, "succeeded"), again.json)
        _, j = self.charges_of(pi["id"])
        caps = [e for e in j["entries"] if e["operation"] == "capture" and e["status"] == "captured"]
        self.assertEqual(len(caps), 1, j)
        # the same for a refund
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500,
                        timeout_operations="refund")
        rkey = new_key("ref")
        ref = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 300}, idem=rkey)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        self.assertEqual((ref.status, ref.json["error"].get("tp_code")), (502, 6018), ref.json)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ch = self.c.get("/v1/charges/" + pi["latest_charge"]).json
            if ch["amount_refunded"]:
                break
            time.sleep(0.1)
        self.assertEqual(ch["amount_refunded"], 300, ch)
        again = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 300}, idem=rkey)
        self.assertEqual((again.status, again.json.get("status"), again.json.get("amount")), (200, "succeeded", 300),
                         again.json)
        _, j = self.charges_of(pi["id"])
        refunds = [e for e in j["entries"] if e["operation"] == "refund" and e["status"] == "succeeded"]
        self.assertEqual(len(refunds), 1, j)

    def test_capture_lost_on_the_way_is_fenced_by_recovery(self):
        """A capture that never reached the processor (lost on the way in):
        502 processor_status_unknown, then recovery finds nothing, fences the
        capture's reference (a late arrival would be refused) and records it
        as not done; the client's retry with its key gets that answer, and a
        new capture then captures once."""
        pi, key = self.lost_capture("before", 800)
        deadline = time.monotonic() + 20
        att = []
        while time.monotonic() < deadline:
            att = [a for a in self.attempts(pi["id"]) if a["kind"] == "capture"]
            if att and att[0]["state"] != "sent":
                break
            time.sleep(0.1)
        self.assertEqual([a["state"] for a in att], ["failed"], att)
        fence = self.sim.journal(processor="a", reference=att[0]["id"] + "-fence")["entries"]
        self.assertEqual([(e["operation"], e["status"]) for e in fence], [("void", "voided")])
        self.assertEqual(self.c.get("/v1/payment_intents/" + pi["id"]).json["status"], "requires_capture")
        again = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
        self.assertEqual(again.status, 402, again.json)
        ok = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=new_key("cap"))
        self.assertEqual((ok.status, ok.json.get("status")), (200, "succeeded"), ok.json)
        _, j = self.charges_of(pi["id"])
        self.assertEqual(len([e for e in j["entries"] if e["operation"] == "capture" and e["status"] == "captured"]), 1)

    def test_lost_authorization_that_cannot_be_fenced_waits_for_recovery(self):
        """Every request to a is lost: the status query finds nothing, but the
        void that would fence the reference is lost too. The payment does not
        move to b (the authorization might still arrive at a): it stays
        processing, and once a answers again the recovery timer fences the
        reference and settles the payment, uncharged."""
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=600)
        key = new_key("orch")
        params = {"amount": 1234, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        r = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertEqual((r.status, r.json["error"].get("tp_code") if r.status != 200 else None), (502, 6018), r.json)
        pi_id = self.c.get("/v1/payment_intents", {"limit": 1}).json["data"][0]["id"]
        self.assertEqual(self.c.get("/v1/payment_intents/" + pi_id).json["status"], "processing")
        att = self.attempts(pi_id)
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("a", "sent")], att)
        self.assertEqual(self.charges_of(pi_id)[0], 0)
        self.sim.faults("a", timeout_rate=0.0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = self.c.get("/v1/payment_intents/" + pi_id).json["status"]
            if st != "processing":
                break
            time.sleep(0.1)
        self.assertEqual(st, "requires_payment_method")
        self.assertEqual([(a["processor"], a["state"], a["result_code"]) for a in self.attempts(pi_id)],
                         [("a", "failed", "processing_error")])  # as the PaymentIntent's error says
        fence = self.sim.journal(processor="a", reference=att[0]["id"] + "-fence")["entries"]
        self.assertEqual([(e["operation"], e["status"]) for e in fence], [("void", "voided")])
        n, j = self.charges_of(pi_id)
        self.assertEqual(n, 0, j)
        # the client's retry gets the settled answer and charges nothing
        again = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertIn(again.status, (402, 502), again.json)
        self.assertEqual(again.json["error"]["payment_intent"]["id"], pi_id, again.json)
        self.assertEqual(self.charges_of(pi_id)[0], 0)

    def stuck_payment(self, amount):
        """A payment whose authorization to a was lost and cannot be settled
        by the gateway: a loses every request (so the fence is lost too),
        then refuses connections, so recovery learns nothing either. Returns
        (PaymentIntent id, attempt id, idempotency key, params)."""
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=600)
        key = new_key("stuck")
        params = {"amount": amount, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        r = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertEqual((r.status, r.json["error"].get("tp_code") if r.status != 200 else None), (502, 6018), r.json)
        self.sim.faults("a", outage=True, timeout_rate=0.0)
        pi_id = self.c.get("/v1/payment_intents", {"limit": 1}).json["data"][0]["id"]
        att = self.attempts(pi_id)
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("a", "sent")], att)
        return pi_id, att[0]["id"], key, params

    def resolve(self, att_id, **params):
        """POST .../resolve, again while the attempt is busy (recovery's
        status query out, 409) for up to 10 s."""
        deadline = time.monotonic() + 10
        while True:
            r = self.c.post("/v1/turnpike/attempts/%s/resolve" % att_id, params)
            if r.status != 409 or time.monotonic() > deadline:
                return r
            time.sleep(0.05)

    def audit_rows(self, att_id):
        with open_db_ro(self.daemon) as con:
            return [(a, json.loads(d)) for a, d in con.execute(
                "SELECT actor, details FROM audit_log WHERE action = 'attempt.resolved' AND object_id = ?",
                (att_id,))]

    def test_operator_settles_a_stuck_authorization_as_processed(self):
        """The processor told the operator it charged the card: the payment
        succeeds with the charge, the ledger and the events recovery would
        have written, the client's retry gets that answer, the audit log
        names who did it and why, and the attempt cannot be settled twice."""
        pi_id, att_id, key, params = self.stuck_payment(2345)
        before = self.c.get("/v1/balance").json["pending"][0]["amount"]
        listed = self.c.get("/v1/turnpike/attempts", {"state": "sent", "processor": "a"})
        self.assertEqual(listed.status, 200, listed.json)
        self.assertIn(att_id, [a["id"] for a in listed.json["data"]])
        # what it does not know yet is null, as in the PaymentIntent's attempts ("" before)
        mine = [a for a in listed.json["data"] if a["id"] == att_id][0]
        self.assertEqual((mine["authorization_code"], mine["processor_reference"], mine["refund"]),
                         (None, None, None), mine)
        r = self.resolve(att_id, outcome="processed", authorization_code="A1B2C3",
                         processor_reference="proc-778", reason="acquirer portal shows it approved")
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual((r.json["object"], r.json["id"], r.json["state"], r.json["authorization_code"],
                          r.json["processor_reference"]),
                         ("turnpike.attempt", att_id, "succeeded", "A1B2C3", "proc-778"), r.json)
        pi = self.c.get("/v1/payment_intents/" + pi_id).json
        self.assertEqual((pi["status"], pi["amount_received"]), ("succeeded", 2345), pi)
        ch = self.c.get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual((ch["captured"], ch["amount_captured"], ch["turnpike"]["processor"]), (True, 2345, "a"), ch)
        self.assertTrue(ch["balance_transaction"], ch)
        self.assertEqual(self.c.get("/v1/balance").json["pending"][0]["amount"], before + 2345)
        types = [e["type"] for e in self.c.get("/v1/events", {"limit": 10}).json["data"]
                 if e["data"]["object"]["id"] in (pi_id, ch["id"])]
        self.assertIn("payment_intent.succeeded", types)
        self.assertIn("charge.succeeded", types)
        again = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertEqual((again.status, again.json.get("id"), again.json.get("status")), (200, pi_id, "succeeded"),
                         again.json)
        self.assertNotIn(att_id, [a["id"] for a in self.c.get("/v1/turnpike/attempts").json["data"]])
        rows = self.audit_rows(att_id)
        self.assertEqual(len(rows), 1, rows)
        actor, d = rows[0]
        self.assertTrue(actor.startswith("key:sk_test_"), actor)
        self.assertEqual((d["outcome"], d["reason"], d["kind"], d["payment_intent"], d["state_before"]),
                         ("processed", "acquirer portal shows it approved", "authorize", pi_id, "sent"), d)
        twice = self.resolve(att_id, outcome="not_processed", reason="again")
        self.assertEqual((twice.status, twice.json["error"]["tp_code"]), (400, 1100), twice.json)
        self.assertEqual(len(self.audit_rows(att_id)), 1)
        # Recovery, once a answers, leaves the settled attempt alone.
        self.sim.faults("a", outage=False)
        time.sleep(1.0)
        self.assertEqual([a["state"] for a in self.attempts(pi_id)], ["succeeded"])
        self.assertEqual(self.c.get("/v1/payment_intents/" + pi_id).json["status"], "succeeded")

    def test_the_unsettled_attempts_list_pages_with_starting_after(self):
        """GET /v1/turnpike/attempts said has_more and refused starting_after:
        attempts past the first page could not be reached."""
        stuck = [self.stuck_payment(1111)[1]]
        self.sim.faults("a", outage=False)
        stuck.append(self.stuck_payment(1112)[1])
        try:
            whole = self.c.get("/v1/turnpike/attempts", {"processor": "a"}).json["data"]
            self.assertTrue(set(stuck) <= {a["id"] for a in whole}, whole)
            walked, cur = [], None
            for _ in range(len(whole) + 1):
                page = self.c.get("/v1/turnpike/attempts", dict({"processor": "a", "limit": 1},
                                                                 **({"starting_after": cur} if cur else {})))
                self.assertEqual(page.status, 200, page.json)
                walked += page.json["data"]
                if not page.json["has_more"]:
                    break
                cur = page.json["data"][-1]["id"]
            self.assertEqual([a["id"] for a in walked], [a["id"] for a in whole])
            r = self.c.get("/v1/turnpike/attempts", {"starting_after": "att_nope"})
            self.assertEqual((r.status, r.json["error"].get("param")), (400, "starting_after"), r.json)
            # a cursor settled since its page still pages from where it stood
            first = self.resolve(stuck[0], outcome="not_processed", reason="settled between pages")
            self.assertEqual(first.status, 200, first.json)
            r = self.c.get("/v1/turnpike/attempts", {"processor": "a", "starting_after": stuck[0]})
            self.assertEqual(r.status, 200, r.json)
            self.assertIn(stuck[1], [a["id"] for a in r.json["data"]])
            self.assertNotIn(stuck[0], [a["id"] for a in r.json["data"]])
            stuck.pop(0)
        finally:
            for att_id in stuck:
                self.resolve(att_id, outcome="not_processed", reason="test cleanup")
            self.sim.faults("a", outage=False)

    def test_operator_settles_a_stuck_authorization_as_not_processed(self):
        pi_id, att_id, key, params = self.stuck_payment(3456)
        before = self.c.get("/v1/balance").json["pending"][0]["amount"]
        r = self.resolve(att_id, outcome="not_processed", reason="processor confirms no such reference")
        self.assertEqual((r.status, r.json.get("state")), (200, "failed"), r.json)
        pi = self.c.get("/v1/payment_intents/" + pi_id).json
        self.assertEqual((pi["status"], pi["amount_received"]), ("requires_payment_method", 0), pi)
        self.assertEqual(pi["last_payment_error"]["decline_code"], "processing_error", pi)
        self.assertEqual(self.c.get("/v1/charges/" + pi["latest_charge"]).json["status"], "failed")
        self.assertEqual(self.c.get("/v1/balance").json["pending"][0]["amount"], before)
        again = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertEqual((again.status, again.json["error"]["payment_intent"]["id"]), (402, pi_id), again.json)
        self.sim.faults("a", outage=False)
        # The PaymentIntent can be paid again, now through a.
        r2 = self.c.post("/v1/payment_intents/%s/confirm" % pi_id, {"payment_method": "pm_card_visa"})
        self.assertEqual((r2.status, r2.json.get("status")), (200, "succeeded"), r2.json)
        self.assertEqual(self.charges_of(pi_id)[0], 1)

    def test_operator_settles_a_stuck_capture_and_refund(self):
        """A capture whose answer was lost, at a processor that then stays
        down: until it is settled no other capture, cancel or refund may
        start on the payment (409 attempt_in_flight: the lost call decides
        what is left); settled by hand as processed, the capture is recorded
        with its ledger entry and the client's retry gets it; the same for a
        refund settled as not processed (refund failed, no ledger entry),
        after which a new refund goes through."""
        pi, key = self.lost_capture("after", 600)  # a did capture
        self.sim.faults("a", outage=True)
        before = self.c.get("/v1/balance").json["pending"][0]["amount"]
        caps = [a for a in self.attempts(pi["id"]) if a["kind"] == "capture"]
        self.assertEqual([a["state"] for a in caps], ["sent"], caps)
        # Nothing else may move the money while that capture is unknown:
        # not another capture (new key), not a cancel (void).
        for path in ("capture", "cancel"):
            other = self.c.post("/v1/payment_intents/%s/%s" % (pi["id"], path), {}, idem=new_key(path))
            self.assertEqual((other.status, other.json["error"].get("tp_code")), (409, 3009), (path, other.json))
        self.assertEqual(self.c.get("/v1/payment_intents/" + pi["id"]).json["status"], "requires_capture")
        r = self.resolve(caps[0]["id"], outcome="processed", reason="captured per settlement file")
        self.assertEqual((r.status, r.json.get("kind"), r.json.get("state")), (200, "capture", "succeeded"), r.json)
        now = self.c.get("/v1/payment_intents/" + pi["id"]).json
        self.assertEqual((now["status"], now["amount_received"]), ("succeeded", pi["amount"]), now)
        self.assertEqual(self.c.get("/v1/balance").json["pending"][0]["amount"], before + pi["amount"])
        again = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
        self.assertEqual((again.status, again.json.get("status")), (200, "succeeded"), again.json)
        # a refund lost the same way, settled as not processed
        self.sim.faults("a", outage=False, timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=600,
                        timeout_operations="refund")
        rkey = new_key("ref")
        ref = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100}, idem=rkey)
        self.sim.faults("a", outage=True, timeout_rate=0.0, timeout_operations="all")
        self.assertEqual((ref.status, ref.json["error"].get("tp_code")), (502, 6018), ref.json)
        refs = [a for a in self.attempts(pi["id"]) if a["kind"] == "refund"]
        self.assertEqual([a["state"] for a in refs], ["sent"], refs)
        other = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100}, idem=new_key("ref2"))
        self.assertEqual((other.status, other.json["error"].get("tp_code")), (409, 3009), other.json)
        r = self.resolve(refs[0]["id"], outcome="not_processed", reason="processor has no such refund")
        self.assertEqual((r.status, r.json.get("state")), (200, "failed"), r.json)
        re = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100}, idem=rkey)
        self.assertEqual((re.status, re.json.get("status")), (200, "failed"), re.json)
        self.assertEqual(self.c.get("/v1/balance").json["pending"][0]["amount"], before + pi["amount"])
        self.assertEqual(self.c.get("/v1/charges/" + pi["latest_charge"]).json["amount_refunded"], 0)
        self.sim.faults("a", outage=False)
        ok = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 100}, idem=new_key("ref3"))
        self.assertEqual((ok.status, ok.json.get("status")), (200, "succeeded"), ok.json)
        self.assertEqual(self.c.get("/v1/charges/" + pi["latest_charge"]).json["amount_refunded"], 100)

    def test_operator_resolution_refuses_bad_requests_and_changes_nothing(self):
        pi_id, att_id, key, params = self.stuck_payment(4567)
        cases = [
            ({"outcome": "processed"}, 400, "parameter_missing", "reason"),
            ({"reason": "x"}, 400, "parameter_missing", "outcome"),
            ({"outcome": "maybe", "reason": "x"}, 400, "parameter_invalid_string", "outcome"),
            ({"outcome": "not_processed", "reason": "x", "authorization_code": "123456"}, 400,
             "parameter_invalid_string", "authorization_code"),
            ({"outcome": "processed", "reason": "x", "authorization_code": "12 34"}, 400,
             "parameter_invalid_string", "authorization_code"),
            ({"outcome": "processed", "reason": "x" * 501}, 400, "parameter_invalid_string", "reason"),
            ({"outcome": "processed", "reason": "x", "amount": "5"}, 400, "parameter_unknown", "amount"),
        ]
        for body, status, code, param in cases:
            r = self.resolve(att_id, **body)
            self.assertEqual((r.status, r.json["error"].get("code"), r.json["error"].get("param")),
                             (status, code, param), (body, r.json))
        r = self.resolve("att_doesnotexist", outcome="processed", reason="x")
        self.assertEqual((r.status, r.json["error"]["code"]), (404, "resource_missing"), r.json)
        other = self.daemon.client("n")
        r = other.post("/v1/turnpike/attempts/%s/resolve" % att_id, {"outcome": "processed", "reason": "x"})
        self.assertEqual((r.status, r.json["error"]["code"]), (404, "resource_missing"), r.json)
        self.assertNotIn(att_id, [a["id"] for a in other.get("/v1/turnpike/attempts").json["data"]])
        r = self.c.get("/v1/turnpike/attempts", {"limit": 0})
        self.assertEqual(r.status, 400, r.json)
        self.assertEqual([a["state"] for a in self.attempts(pi_id)], ["sent"])
        self.assertEqual(self.c.get("/v1/payment_intents/" + pi_id).json["status"], "processing")
        self.assertEqual(self.audit_rows(att_id), [])
        # a is back: recovery settles it by itself (fence, then not charged).
        self.sim.faults("a", outage=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.attempts(pi_id)[0]["state"] == "sent":
            time.sleep(0.1)
        self.assertEqual(self.attempts(pi_id)[0]["state"], "failed")

    def test_timeout_after_processing_is_resolved_by_status_query(self):
        # The sim charges, then answers too late: the status query finds the
        # approval, and no other processor is tried.
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1500)
        r = self.pay()
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual(self.charge_processor(r.json), "a")
        att = self.attempts(r.json["id"])
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("a", "succeeded")])
        n, j = self.charges_of(r.json["id"])
        self.assertEqual(n, 1, j)
        self.assertEqual(len([e for e in j["entries"] if e["processor"] == "b"]), 0)

    def test_unknown_outcome_stops_and_the_recovery_timer_settles_it(self):
        # a charges and answers too late; by the time we ask, a is down, so
        # the outcome is unknown: nothing else may be tried.
        import threading
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=1000)
        key = new_key("unknown")
        box = {}
        params = {"amount": 4321, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        t = threading.Thread(target=lambda: box.update(
            r=self.c.post("/v1/payment_intents", params, idem=key)))
        n0 = len(self.sim.journal(processor="a", limit=100000)["entries"])
        t.start()
        # a has the call (the sim journals it before holding its answer):
        # now down, so the status query that follows fails too
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                e["operation"] == "authorize" and e["amount"] == 4321
                for e in self.sim.journal(processor="a", limit=100000)["entries"][n0:]):
            time.sleep(0.01)
        self.sim.faults("a", outage=True)
        t.join(30)
        r = box["r"]
        self.assertEqual(r.status, 502, r.json)
        self.assertEqual(r.json["error"]["tp_code"], 6018)  # processor_status_unknown
        # It names the PaymentIntent it made (Stripe: error.payment_intent), as committed.
        made = r.json["error"].get("payment_intent") or {}
        self.assertEqual((made.get("object"), made.get("status")), ("payment_intent", "processing"), r.json)
        self.assertEqual(self.c.get("/v1/payment_intents/" + made["id"]).status, 200)
        # and says so as Stripe does, for integrations driven by webhooks
        evs = self.c.get("/v1/events", {"type": "payment_intent.processing", "limit": 10}).json["data"]
        self.assertEqual([(e["data"]["object"]["id"], e["data"]["object"]["status"]) for e in evs
                          if e["data"]["object"]["id"] == made["id"]], [(made["id"], "processing")])
        # The client's retry is told the key is still in use, not charged again.
        r2 = self.c.post("/v1/payment_intents", params, idem=key)
        self.assertEqual(r2.status, 409, r2.json)
        # An update is refused in Stripe's words, naming the field and where it may change.
        for field, value, statuses in (
                ("metadata[k]", "v", "requires_action, requires_capture, succeeded."),
                ("amount", "100", "requires_action.")):
            r4 = self.c.post("/v1/payment_intents/" + made["id"], {field: value})
            self.assertEqual(r4.status, 400, r4.json)
            self.assertEqual((r4.json["error"]["code"], r4.json["error"]["param"]),
                             ("payment_intent_unexpected_state", field.split("[")[0]), r4.json)
            self.assertTrue(r4.json["error"]["message"].startswith(
                "This PaymentIntent's %s could not be updated because it has a status of processing."
                % field.split("[")[0]), r4.json)
            self.assertTrue(r4.json["error"]["message"].endswith(statuses), r4.json)
        self.sim.faults("a", outage=False, timeout_rate=0.0)
        # The recovery timer (300 ms; attempts older than 2 x 400 ms + 1 s)
        # asks a, finds the approval and completes the PaymentIntent.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r3 = self.c.post("/v1/payment_intents", params, idem=key)
            if r3.status == 200:
                break
            time.sleep(0.3)
        self.assertEqual(r3.status, 200, r3.json)
        self.assertEqual((r3.json["id"], r3.json["status"]), (made["id"], "succeeded"))
        self.assertEqual(r3.headers.get("Idempotent-Replayed"), "true")
        att = self.attempts(r3.json["id"])
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("a", "succeeded")])
        n, j = self.charges_of(r3.json["id"])
        self.assertEqual(n, 1, j)

    def test_saving_a_card_does_not_overwrite_an_attach_made_during_the_call(self):
        # setup_future_usage saves the card to the payment's customer once it
        # is authorized. The payment holds the card from its confirmation to
        # its outcome (session 41: an attach to another customer during the
        # call used to win, and the payment succeeded without the card it
        # was asked to save): the attach waits for it, then finds the card
        # saved to the payer.
        import threading
        c = self.c
        pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                            "card[exp_month]": "12", "card[exp_year]": "2040",
                                            "card[cvc]": "123"}).json
        payer = c.post("/v1/customers", {"email": "payer@example.com"}).json
        other = c.post("/v1/customers", {"email": "other@example.com"}).json
        self.sim.faults("a", latency_ms_min=300, latency_ms_max=300)  # under timeout_ms (400)
        box = {}
        params = {"amount": 2500, "currency": "usd", "confirm": "true", "payment_method": pm["id"],
                  "customer": payer["id"], "setup_future_usage": "off_session"}
        t = threading.Thread(target=lambda: box.update(
            r=c.post("/v1/payment_intents", params, idem=new_key("sfu"))))
        t.start()
        time.sleep(0.1)
        att = c.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": other["id"]})
        t.join(30)
        r = box["r"]
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual(r.json["status"], "succeeded", r.json)
        got = c.get("/v1/payment_methods/%s" % pm["id"]).json
        self.assertEqual(got["customer"], payer["id"], got)
        self.assertIn(att.status, (400, 429), att.json)  # refused: saved to the payer, or still held
        self.assertEqual(c.get("/v1/customers/%s/payment_methods" % other["id"]).json["data"], [])
        # Without a concurrent attach the card is saved to the payer.
        self.sim.faults("a", latency_ms_min=0, latency_ms_max=0)
        pm2 = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                             "card[exp_month]": "12", "card[exp_year]": "2040"}).json
        params["payment_method"] = pm2["id"]
        r2 = c.post("/v1/payment_intents", params, idem=new_key("sfu"))
        self.assertEqual(r2.json["status"], "succeeded", r2.json)
        self.assertEqual(c.get("/v1/payment_methods/%s" % pm2["id"]).json["customer"], payer["id"])

    def test_hard_decline_is_not_cascaded(self):
        r = self.pay(payment_method="pm_card_chargeDeclinedInsufficientFunds")
        self.assertEqual(r.status, 402, r.json)
        self.assertEqual(r.json["error"]["decline_code"], "insufficient_funds")
        pi = r.json["error"]["payment_intent"]
        self.assertEqual(pi["status"], "requires_payment_method")
        att = self.attempts(pi["id"])
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("a", "declined")])
        _, j = self.charges_of(pi["id"])
        self.assertEqual(len(j["entries"]), 1, j)

    def test_soft_decline_is_retried_then_cascaded(self):
        r = self.pay(payment_method="pm_card_chargeDeclinedProcessingError")
        self.assertEqual(r.status, 402, r.json)
        self.assertEqual(r.json["error"]["code"], "processing_error")
        pi = r.json["error"]["payment_intent"]
        att = self.attempts(pi["id"])
        self.assertEqual([a["processor"] for a in att], ["a", "a", "b", "b"], att)
        self.assertTrue(all(a["state"] == "declined" for a in att))
        self.assertEqual(att[1]["route"].get("try"), 2)

    def test_transport_errors_everywhere_exhaust_and_keep_the_intent(self):
        """Every call answered 500, 502 or 503 (the sim's error_rate). A 503
        says the call was not handled; a 500 or 502 may come after the
        processor acted, so its reference is asked for and fenced, and when
        those calls fail too the outcome is unknown: the request ends either
        with every processor tried (6024) or with the payment left to
        recovery (6018). Nothing is charged either way, and once the
        processors answer, the PaymentIntent can be confirmed."""
        self.sim.faults("a", error_rate=1.0)
        self.sim.faults("b", error_rate=1.0)
        r = self.pay()
        self.assertEqual(r.status, 502, r.json)
        code = r.json["error"]["tp_code"]
        self.assertIn(code, (6024, 6018), r.json)  # processor_retries_exhausted / processor_status_unknown
        if code == 6024:
            # final for this request (the key would replay it): SDKs must not retry
            self.assertEqual(r.headers.get("Stripe-Should-Retry"), "false", r)
            pi = r.json["error"]["payment_intent"]
            self.assertEqual(pi["status"], "requires_confirmation")
        else:
            pi = self.c.get("/v1/payment_intents", {"limit": 1}).json["data"][0]
        # Nothing charged; a plain confirm works once a processor is back
        # (after recovery has settled the unknown call, if there was one).
        self.sim.faults("a", error_rate=0.0)
        self.sim.faults("b", error_rate=0.0)
        time.sleep(1.0)  # breakers: open_ms 800 -> half-open probes
        deadline = time.monotonic() + 20
        while (st := self.c.get("/v1/payment_intents/%s" % pi["id"]).json["status"]) == "processing":
            self.assertLess(time.monotonic(), deadline, "recovery did not settle the payment")
            time.sleep(0.2)
        self.assertEqual(self.charges_of(pi["id"])[0], 0)
        # settled by recovery as not charged, it asks for a payment method again
        self.assertIn(st, ("requires_confirmation", "requires_payment_method"))
        r2 = self.c.post("/v1/payment_intents/%s/confirm" % pi["id"],
                         {"payment_method": "pm_card_visa"} if st == "requires_payment_method" else {})
        self.assertEqual(r2.status, 200, r2.json)
        self.assertEqual(r2.json["status"], "succeeded")
        n, _ = self.charges_of(pi["id"])
        self.assertEqual(n, 1)

    def test_capture_and_refund_go_to_the_authorizing_processor(self):
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=1500,
                        timeout_operations="authorize")
        r = self.pay(capture_method="manual")
        self.assertEqual(r.status, 200, r.json)
        self.assertEqual(r.json["status"], "requires_capture")
        pi = r.json
        self.assertEqual(self.charge_processor(pi), "b")
        self.sim.faults("a", timeout_rate=0.0)
        cap = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {})
        self.assertEqual(cap.status, 200, cap.json)
        self.assertEqual(cap.json["status"], "succeeded")
        ref = self.c.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 234})
        self.assertEqual(ref.status, 200, ref.json)
        self.assertEqual(ref.json["status"], "succeeded")
        _, j = self.charges_of(pi["id"])
        ops = sorted((e["processor"], e["operation"]) for e in j["entries"] if e["status"] != "not_found")
        self.assertIn(("b", "capture"), ops)
        self.assertIn(("b", "refund"), ops)
        self.assertNotIn(("a", "capture"), ops)
        att = self.attempts(pi["id"])
        self.assertEqual([(a["kind"], a["processor"]) for a in att if a["kind"] != "authorize"],
                         [("capture", "b"), ("refund", "b")])

    def test_no_processor_available_leaves_nothing_behind(self):
        # no processor takes jpy: that will not change on a retry, so a
        # 400 (a 503 was retried by the SDKs), nothing committed
        r = self.pay(currency="jpy", amount=500)
        self.assertEqual(r.status, 400, r.json)
        self.assertEqual(r.json["error"]["tp_code"], 6028)  # no_processor_route
        self.assertEqual(r.json["error"]["type"], "invalid_request_error")
        self.assertIsNone(r.headers.get("Stripe-Should-Retry"))
        # An existing PaymentIntent keeps its state.
        pi = self.c.post("/v1/payment_intents", {"amount": 500, "currency": "jpy",
                                                 "payment_method": "pm_card_visa"}).json
        self.assertEqual(pi["status"], "requires_confirmation")
        r = self.c.post("/v1/payment_intents/%s/confirm" % pi["id"], {})
        self.assertEqual(r.status, 400, r.json)
        now = self.c.get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual(now["status"], "requires_confirmation")
        self.assertEqual(self.attempts(pi["id"]), [])

    def test_a_payments_attempts_page_as_every_list_does(self):
        """GET /v1/payment_intents/{id}/attempts: limit 1..100, starting_after
        and ending_before walk every attempt exactly once (it said has_more
        and handed the same first 100 back for any cursor), oldest first;
        an unknown parameter or another payment's attempt is a 400."""
        r = self.pay(amount=5000)
        self.assertEqual(r.status, 200, r.json)
        pi = r.json["id"]
        for _ in range(11):
            self.assertEqual(self.c.post("/v1/refunds", {"payment_intent": pi, "amount": 1}).status, 200)
        whole = self.attempts(pi)
        self.assertEqual(len(whole), 12)
        self.assertEqual(sorted(whole, key=lambda a: (a["created"], a["id"])), whole)
        url = "/v1/payment_intents/%s/attempts" % pi
        seen, cur = [], None
        for _ in range(5):
            page = self.c.get(url, dict({"limit": 5}, **({"starting_after": cur} if cur else {}))).json
            seen += page["data"]
            cur = page["data"][-1]["id"]
            if not page["has_more"]:
                break
        self.assertEqual([a["id"] for a in seen], [a["id"] for a in whole])
        back, cur = [], whole[-1]["id"]
        page = {"has_more": True}
        while page["has_more"] and len(back) < 20:
            page = self.c.get(url, {"limit": 4, "ending_before": cur}).json
            back = page["data"] + back
            cur = page["data"][0]["id"]
        self.assertEqual([a["id"] for a in back], [a["id"] for a in whole[:-1]])
        for bad in ({"limit": 0}, {"limit": 101}, {"foo": "bar"}, {"starting_after": "att_nope"},
                    {"starting_after": whole[0]["id"], "ending_before": whole[1]["id"]}):
            self.assertEqual(self.c.get(url, bad).status, 400, bad)
        other = self.pay(amount=700).json["id"]
        r = self.c.get("/v1/payment_intents/%s/attempts" % other, {"starting_after": whole[0]["id"]})
        self.assertEqual((r.status, r.json["error"].get("param")), (400, "starting_after"), r.json)

    def test_a_status_refusal_says_what_stripe_says(self):
        pi = self.pay().json
        self.assertEqual(pi["status"], "succeeded")
        r = self.c.post("/v1/payment_intents/%s/confirm" % pi["id"], {})
        self.assertEqual((r.status, r.json["error"]["code"], r.json["error"]["message"]),
                         (400, "payment_intent_unexpected_state", "You cannot confirm this PaymentIntent because it "
                          "has already succeeded after being previously confirmed."), r.json)
        r = self.c.post("/v1/payment_intents/%s/capture" % pi["id"], {})
        self.assertEqual(r.json["error"]["message"], "This PaymentIntent could not be captured because it has a "
                         "status of succeeded. Only a PaymentIntent with one of the following statuses may be "
                         "captured: requires_capture.", r.json)
        c = self.c.post("/v1/payment_intents", {"amount": 500, "currency": "usd"}).json
        self.c.post("/v1/payment_intents/%s/cancel" % c["id"], {})
        r = self.c.post("/v1/payment_intents/%s/confirm" % c["id"], {"payment_method": "pm_card_visa"})
        self.assertEqual(r.json["error"]["message"], "You cannot confirm this PaymentIntent because it has a status "
                         "of canceled. Only a PaymentIntent with one of the following statuses may be confirmed: "
                         "requires_payment_method, requires_confirmation, requires_action.", r.json)
        r = self.c.post("/v1/payment_intents/pi_nope/increment_authorization", {"amount": 5})
        self.assertEqual((r.status, r.json["error"]["param"]), (404, "intent"), r.json)

    def test_no_processor_after_3ds_answers_the_browser_with_a_page(self):
        """A challenge approved for a payment no processor takes: the
        customer's browser gets a page (not the API's JSON error), nothing is
        committed, and the challenge can be approved again."""
        r = self.c.post("/v1/payment_intents", {"amount": 500, "currency": "jpy", "confirm": "true",
                                                "payment_method_data": card(PAN_3DS),
                                                "return_url": "https://shop.example/r"})
        self.assertEqual((r.status, r.json.get("status")), (200, "requires_action"), r.json)
        u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        for _ in range(2):
            page = self.c.post(u.path, {"token": token, "result": "approve"}, key=None)
            self.assertEqual(page.status, 400, page.body[:300])  # no processor takes jpy: will not change
            self.assertTrue(page.headers.get("Content-Type", "").startswith("text/html"), page.headers)
            self.assertIn(b'id="result"', page.body)
            self.assertNotIn(b"api_error", page.body)
        self.assertEqual(self.c.get("/v1/payment_intents/" + r.json["id"]).json["status"], "requires_action")
        self.assertEqual(self.attempts(r.json["id"]), [])

    def test_outage_opens_breaker_and_reroutes(self):
        self.sim.faults("a", outage=True)
        t_outage = time.monotonic()
        rerouted_at = None
        for _ in range(20):
            r = self.pay()
            self.assertEqual(r.status, 200, r.json)
            self.assertEqual(self.charge_processor(r.json), "b")
            att = self.attempts(r.json["id"])
            if [a["processor"] for a in att] == ["b"]:
                rerouted_at = time.monotonic()
                break
        self.assertIsNotNone(rerouted_at, "a's breaker never opened")
        # Once open, a is not even tried.
        for _ in range(3):
            r = self.pay()
            att = self.attempts(r.json["id"])
            self.assertEqual([a["processor"] for a in att], ["b"])
        # a comes back: half-open probes close the breaker and traffic returns.
        self.sim.faults("a", outage=False)
        back = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not back:
            r = self.pay()
            self.assertEqual(r.status, 200, r.json)
            back = self.charge_processor(r.json) == "a"
            time.sleep(0.1)
        self.assertTrue(back, "traffic never returned to a")
        self.assertLess(rerouted_at - t_outage, 10)


class DeadlineTest(SimGatewayTest):
    """routing.md §2: nothing new is sent past a payment's deadline, so a
    request ends by the deadline plus one call's timeout
    (tp_payflow_longest_ms, which the graceful stop waits for). An
    authorization lost past the deadline is not followed by a status query
    and a fence (each up to another timeout): it is left to recovery."""

    @classmethod
    def config(cls, sim):
        return gateway_config(sim, timeout_ms=1500).replace("deadline_ms = 8000", "deadline_ms = 1000")

    def test_a_lost_answer_past_the_deadline_is_left_to_recovery(self):
        # a loses authorizations; its answers to status queries and voids are slow
        self.sim.faults("a", timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=20000,
                        timeout_operations="authorize", latency_ms_min=1400, latency_ms_max=1400)
        t0 = time.monotonic()
        r = self.c.post("/v1/payment_intents", {"amount": 1234, "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa"}, idem=new_key("dl"))
        took = time.monotonic() - t0
        self.assertEqual((r.status, r.json["error"].get("tp_code")), (502, 6018), r.json)
        # the bound is 1.0 + 1.5 s; a status query and a fence after it took 4.4 s
        self.assertLess(took, 3.2, r.json)
        self.sim.faults("a", timeout_rate=0.0, timeout_operations="all", latency_ms_min=0, latency_ms_max=0)
        pi = self.c.get("/v1/payment_intents", {"limit": 1}).json["data"][0]["id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            atts = self.c.get("/v1/payment_intents/%s/attempts" % pi).json["data"]
            if all(a["state"] not in ("sent", "pending") for a in atts):
                break
            time.sleep(0.1)
        self.assertEqual([a["state"] for a in atts], ["failed"], atts)  # fenced by recovery
        fences = self.sim.journal(processor="a", reference=atts[0]["id"] + "-fence")["entries"]
        self.assertEqual([(e["operation"], e["status"]) for e in fences], [("void", "voided")])


class HalfOpenNoProbeTest(SimGatewayTest):
    """A half-open breaker whose probe slot is taken refuses the call: with
    no other processor nothing was tried, which is no_processor_available
    (503, as when routing finds none), not a failed payment (502 retries
    exhausted with a payment_failed event and a last_payment_error)."""

    @classmethod
    def config(cls, sim):
        return gateway_config(sim, names=("a",), timeout_ms=3000)

    def pay(self):
        return self.c.post("/v1/payment_intents", {"amount": 1234, "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_visa"}, idem=new_key("ho"))

    def test_no_free_probe_is_no_processor_available(self):
        import threading
        self.sim.faults("a", outage=True)
        for _ in range(3):
            self.pay()
        procs = {x["name"]: x for x in self.c.get("/v1/turnpike/processors").json["data"]}
        self.assertEqual(procs["a"]["breaker"], "open")
        self.sim.faults("a", outage=False, latency_ms_min=1500, latency_ms_max=1500)
        time.sleep(1.0)  # open_ms 800: half-open, one probe
        probe = {}
        t = threading.Thread(target=lambda: probe.setdefault("r", self.pay()))
        t.start()
        try:
            time.sleep(0.4)
            r = self.pay()
            self.assertEqual((r.status, r.json["error"].get("tp_code")), (503, 6027), r.json)
            # stored under its key (the write-ahead was committed): SDKs must not retry it
            self.assertEqual(r.headers.get("Stripe-Should-Retry"), "false", r.headers)
            pi = r.json["error"]["payment_intent"]
            self.assertEqual((pi["status"], pi["last_payment_error"]), ("requires_confirmation", None), pi)
            types = [e["type"] for e in self.c.get("/v1/events", {"limit": 20}).json["data"]
                     if e["data"]["object"]["id"] == pi["id"]]
            self.assertEqual(types, ["payment_intent.created"])
        finally:
            t.join(10)
        self.assertEqual((probe["r"].status, probe["r"].json["status"]), (200, "succeeded"), probe["r"].json)
        self.sim.faults("a", latency_ms_min=0, latency_ms_max=0)


def crash_during_void(test, make, request, settled):
    """Against a sim processor: make(c) an object, then request(c, obj) on a
    thread, the processor doing the void it sends and holding its answer;
    kill -9 once the void is in the sim's journal, restart, and poll
    settled(c, obj) (a value once recovery has finished, else None) for 15 s:
    its value."""
    sim, d = Sim(), Daemon()
    try:
        d.create_merchant("m")
        cfg = gateway_config(sim, names=("a",), timeout_ms=3000)
        start_beside(sim, d, config=cfg)
        c = d.client("m")
        obj = make(c)
        sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=20000, timeout_operations="void")

        def run():
            try:
                request(c, obj)
            except Exception:  # the daemon dies under it
                pass
        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not [
                e for e in sim.journal(processor="a")["entries"] if e["operation"] == "void"]:
            time.sleep(0.1)
        d.kill9()
        t.join(10)
        sim.faults("a", timeout_rate=0.0, timeout_operations="all")
        d.start(config=cfg)
        c = d.client("m")
        deadline = time.monotonic() + 15
        got = settled(c, obj)
        while got is None and time.monotonic() < deadline:
            time.sleep(0.1)
            got = settled(c, obj)
        test.assertIsNotNone(got, "recovery did not settle it")
        return c, obj, got
    finally:
        d.cleanup()
        sim.stop()


class SoftDeclineRetryKeepsItsProbeTest(SimGatewayTest):
    """A soft decline in half-open gives its probe slot back; its retry,
    sent after the backoff, found the slot taken by another payment,
    was refused at send, and the payment ended 502 processor_retries_
    exhausted in place of the issuer's 402 processing_error (reviewer 21's
    reproduction). The retry now takes its admission when it is planned."""

    @classmethod
    def config(cls, sim):
        ini = gateway_config(sim, names=("a",), timeout_ms=3000)
        ini = ini.replace("backoff_base_ms = 20", "backoff_base_ms = 1000\nbackoff_cap_ms = 1000\nmax_retries = 1")
        return ini.replace("breaker_half_open_probes = 1", "breaker_half_open_probes = 2")

    def pay(self, pm="pm_card_visa"):
        return self.c.post("/v1/payment_intents", {"amount": 1234, "currency": "usd", "confirm": "true",
                                                   "payment_method": pm}, idem=new_key("sd"))

    def test_the_soft_decline_is_the_answer(self):
        self.sim.faults("a", outage=True, latency_ms_min=0, latency_ms_max=0)
        for _ in range(3):
            self.pay()
        self.assertEqual({x["name"]: x["breaker"] for x in self.c.get("/v1/turnpike/processors").json["data"]}["a"],
                         "open")
        self.sim.faults("a", outage=False, latency_ms_min=1500, latency_ms_max=1500)
        time.sleep(1.0)  # half-open: two probe slots
        out = {}
        tx = threading.Thread(target=lambda: out.setdefault("x", self.pay("pm_card_chargeDeclinedProcessingError")))
        ty = threading.Thread(target=lambda: out.setdefault("y", self.pay()))
        tx.start()
        ty.start()
        time.sleep(1.55)  # X soft-declined (its retry waiting 1 s), Y approved
        tz = threading.Thread(target=lambda: out.setdefault("z", self.pay()))
        tz.start()
        for t in (tx, ty, tz):
            t.join(20)
        x = out["x"]
        self.assertEqual((x.status, x.json["error"].get("code")), (402, "processing_error"), x)
        pid = x.json["error"]["payment_intent"]["id"]
        atts = self.c.get("/v1/payment_intents/%s/attempts" % pid).json["data"]
        self.assertEqual([(a["state"], a["result_code"]) for a in atts],
                         [("declined", "processing_error"), ("declined", "processing_error")], atts)
        self.assertEqual(out["y"].status, 200, out["y"])
        self.assertIn(out["z"].status, (200, 503), out["z"])  # a slot free, or none: never a failed payment


class ExpiryVoidRecoveryTest(unittest.TestCase):
    """An authorization's expiry is a void; if the gateway dies while the
    void is out, recovery finishes it as the expiry it was: the
    PaymentIntent canceled with reason expired and charge.expired (it was a
    plain cancel with no reason)."""

    def test_a_crash_during_the_expiry_void(self):
        sim, d = Sim(), Daemon()
        try:
            d.create_merchant("m")
            cfg = gateway_config(sim, names=("a",), timeout_ms=3000) + (
                "\n[authorizations]\nexpire_after_seconds = 2\nscan_interval_ms = 300\n")
            start_beside(sim, d, config=cfg)
            c = d.client("m")
            pi = c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa", "capture_method": "manual"},
                        idem=new_key("exp")).json
            self.assertEqual(pi["status"], "requires_capture", pi)
            # the void is done at the processor, its answer held back
            sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=20000, timeout_operations="void")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not [
                    e for e in sim.journal(processor="a")["entries"] if e["operation"] == "void"]:
                time.sleep(0.1)
            d.kill9()
            sim.faults("a", timeout_rate=0.0, timeout_operations="all")
            d.start(config=cfg)
            c = d.client("m")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                got = c.get("/v1/payment_intents/" + pi["id"]).json
                if got["status"] == "canceled":
                    break
                time.sleep(0.1)
            self.assertEqual((got["status"], got["cancellation_reason"]), ("canceled", "expired"), got)
            types = [e["type"] for e in c.get("/v1/events", {"limit": 20}).json["data"]
                     if e["data"]["object"]["id"] in (pi["id"], pi["latest_charge"])]
            self.assertIn("charge.expired", types)
        finally:
            d.cleanup()
            sim.stop()

    def test_a_crash_during_a_cancel_keeps_its_reason(self):
        """A cancel's void cut by SIGKILL is finished by recovery with the
        cancellation_reason the request gave (kept on the attempt,
        migration 0023); it used to come back null."""
        def make(c):
            pi = c.post("/v1/payment_intents", {"amount": 1600, "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa", "capture_method": "manual"},
                        idem=new_key("can")).json
            self.assertEqual(pi["status"], "requires_capture", pi)
            return pi

        def settled(c, pi):
            got = c.get("/v1/payment_intents/" + pi["id"]).json
            return got if got["status"] == "canceled" else None
        _, _, got = crash_during_void(self, make, lambda c, pi: c.post(
            "/v1/payment_intents/%s/cancel" % pi["id"], {"cancellation_reason": "fraudulent"},
            idem=new_key("cancel")), settled)
        self.assertEqual((got["status"], got["cancellation_reason"]), ("canceled", "fraudulent"), got)


class ReleaseByRefundRecoveryTest(unittest.TestCase):
    """A refund that releases an uncaptured charge is a void; cut by SIGKILL
    while the void is out, recovery finishes it as that refund (the Refund
    succeeded, the charge refunded, the PaymentIntent canceled), not as a
    plain cancel that leaves the Refund pending for good."""

    def test_a_crash_during_the_release(self):
        def make(c):
            ch = c.post("/v1/charges", {"amount": 1700, "currency": "usd", "source": "tok_visa", "capture": "false"},
                        idem=new_key("rel")).json
            self.assertEqual(ch["captured"], False, ch)
            return ch

        def settled(c, ch):
            res = c.get("/v1/refunds", {"charge": ch["id"]}).json["data"]
            if not res or res[0]["status"] == "pending":
                return None
            got = c.get("/v1/charges/" + ch["id"]).json
            return ([(x["status"], x["amount"]) for x in res], got["refunded"], got["amount_refunded"],
                    c.get("/v1/payment_intents/" + ch["payment_intent"]).json["status"])
        _, _, got = crash_during_void(self, make, lambda c, ch: c.post(
            "/v1/charges/%s/refunds" % ch["id"], {}, idem=new_key("relr")), settled)
        self.assertEqual(got, ([("succeeded", 1700)], True, 1700, "canceled"))


class IsoCascadeTest(SimGatewayTest):
    """An ISO 8583 processor first, a REST one behind it."""

    @classmethod
    def config(cls, sim):
        return "\n".join([
            "[routing]", "deadline_ms = 8000", "backoff_base_ms = 20", "",
            "[processor.iso]", "type = iso8583", "endpoint = %s" % sim.iso, "timeout_ms = 400",
            "terminal_id = TERM0001", "merchant_id = TURNPIKE0000001", "health_interval_ms = 0",
            "breaker_consecutive = 50", "",
            "[processor.b]", "type = restjson", "endpoint = http://%s/p/b" % sim.rest, "timeout_ms = 400",
            "health_interval_ms = 0", "",
            "[route.all]", "merchant = *", "processors = iso,b", "strategy = ordered", ""])

    def pay(self, **params):
        p = {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"}
        p.update(params)
        return self.c.post("/v1/payment_intents", p, idem=new_key("iso"))

    def test_iso_approval_and_hard_decline(self):
        self.sim.faults("iso", timeout_rate=0.0, error_rate=0.0)
        r = self.pay()
        self.assertEqual(r.status, 200, r.json)
        ch = self.c.get("/v1/charges/%s" % r.json["latest_charge"]).json
        self.assertEqual(ch["turnpike"]["processor"], "iso")
        r = self.pay(payment_method="pm_card_chargeDeclinedStolenCard")
        self.assertEqual(r.status, 402, r.json)
        pi = r.json["error"]["payment_intent"]
        att = self.c.get("/v1/payment_intents/%s/attempts" % pi["id"]).json["data"]
        self.assertEqual([(a["processor"], a["state"]) for a in att], [("iso", "declined")])

    def test_iso_error_cascades_to_rest(self):
        # Field 39 = 96 (processing error) on every ISO request: transient,
        # retried once, then the REST processor approves.
        self.sim.faults("iso", error_rate=1.0)
        try:
            r = self.pay()
        finally:
            self.sim.faults("iso", error_rate=0.0)
        self.assertEqual(r.status, 200, r.json)
        att = self.c.get("/v1/payment_intents/%s/attempts" % r.json["id"]).json["data"]
        self.assertEqual([a["processor"] for a in att], ["iso", "iso", "b"], att)
        j = self.sim.journal(payment=r.json["id"])
        self.assertEqual(j["summary"]["charges_by_payment"].get(r.json["id"]), 1, j)


class CrashRecoveryTest(unittest.TestCase):
    """kill -9 with attempts in flight; restart; every attempt resolved by
    status query, no double charge, every acknowledged reply still true."""

    def test_kill9_under_load_recovers_without_double_charge(self):
        sim = Sim()
        d = Daemon()
        try:
            d.create_merchant("m")
            # Slow processors so that calls are in flight when we kill.
            for n in ("a", "b"):
                sim.faults(n, latency_ms_min=30, latency_ms_max=250)
            sim.faults("a", error_rate=0.1, timeout_rate=0.05, timeout_mode="after", timeout_hold_ms=800)
            d.start(config=gateway_config(sim, timeout_ms=400))
            load = PaymentLoad(d.client("m"), threads=8, seconds=30, tag="orch-crash").start()
            time.sleep(2.5)
            d.kill9()
            load.stop_flag.set()
            self.assertTrue(load.join(60))
            self.assertGreater(len(load.acks), 10)
            with open_db_ro(d) as db:
                sent_before = db.execute("SELECT COUNT(*) FROM attempts WHERE state='sent'").fetchone()[0]
            # Restart: start-up recovery resolves every 'sent' attempt before listening.
            sim.faults("a", error_rate=0.0, timeout_rate=0.0)
            d.start(config=gateway_config(sim, timeout_ms=400))
            left = self.wait_settled(d, 30)
            self.assertEqual(left, 0, "attempts still 'sent' after recovery (had %d)" % sent_before)
            j = sim.journal(limit=100000)
            self.assertEqual(j["summary"]["double_charges"], 0, j["summary"])
            c = d.client("m")
            charged = j["summary"]["charges_by_payment"]
            for ack in load.acks:
                pi = ack.pi()
                now = c.get("/v1/payment_intents/%s" % pi["id"]).json
                self.assertEqual(now["status"], pi["status"], pi["id"])
                if pi["status"] in ("succeeded", "requires_capture"):
                    self.assertEqual(charged.get(pi["id"]), 1, pi["id"])
                else:
                    self.assertIsNone(charged.get(pi["id"]), pi["id"])
            # Every PaymentIntent the store thinks is paid was charged exactly once.
            with open_db_ro(d) as db:
                rows = db.execute("SELECT id, status FROM payment_intents").fetchall()
            for pid, status in rows:
                if status in ("succeeded", "requires_capture"):
                    self.assertEqual(charged.get(pid), 1, pid)
                else:
                    self.assertNotEqual(status, "processing", pid)
                    self.assertIsNone(charged.get(pid), (pid, status))
            print("kill9: acks=%d sent_at_kill=%d charges=%d" % (len(load.acks), sent_before,
                                                                 j["summary"]["charges"]))
        finally:
            d.cleanup()
            sim.stop()

    def test_processor_crash_under_load_charges_once_and_settles_every_payment(self):
        """kill -9 of the processor (the sim) with calls in flight, then a
        restart on the same ports with its journal: the gateway resolves the
        calls whose answer was lost by status query (never by sending them
        again), a client retrying with its Idempotency-Key gets the settled
        answer, and every paid PaymentIntent was charged exactly once."""
        self.processor_crash(lambda sim: gateway_config(sim, timeout_ms=2000), ("a", "b"))

    def test_iso_host_crash_under_load_charges_once_and_settles_every_payment(self):
        """The same through two ISO 8583 links to the sim's host: calls on
        the wire when the link dies are reversed once it is back."""
        def config(sim):
            ini = ["[routing]", "deadline_ms = 8000", "recovery_interval_ms = 300", "backoff_base_ms = 20",
                   "reversal_backoff_max_ms = 1000", ""]
            for i, n in enumerate(("x", "y")):
                ini += ["[processor.%s]" % n, "type = iso8583", "endpoint = %s" % sim.iso, "timeout_ms = 2000",
                        "terminal_id = TERM000%d" % i, "merchant_id = TURNPIKE000000%d" % i,
                        "priority = %d" % (i + 1), "breaker_consecutive = 3", "breaker_open_ms = 800",
                        "health_interval_ms = 0", ""]
            ini += ["[route.all]", "merchant = *", "processors = x,y", "strategy = ordered", ""]
            return "\n".join(ini)
        self.processor_crash(config, ("iso",), iso=True)

    def wait_settled(self, d, seconds):
        """Attempts still 'sent' (or owing an ISO reversal) once recovery had up
        to `seconds` to settle them."""
        deadline = time.monotonic() + seconds
        while True:
            with open_db_ro(d) as db:
                left = db.execute("SELECT COUNT(*) FROM attempts WHERE state IN ('sent', 'reversal_pending')"
                                  ).fetchone()[0]
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def charges_by_pi(self, d, journal, iso):
        """The sim's charges per PaymentIntent. A REST call names the payment;
        an ISO 8583 message only its RRN (field 37), which the connector
        derives from the attempt's reference (tp_iso_rrn): map it back
        through the attempts table."""
        by_payment = journal["summary"]["charges_by_payment"]
        if not iso:
            return dict(by_payment)
        with open_db_ro(d) as db:
            rows = db.execute("SELECT payment_intent, idem_ref FROM attempts").fetchall()
        out = {}
        for pi, ref in rows:
            n = by_payment.pop(iso_rrn(ref), 0)
            if n:
                out[pi] = out.get(pi, 0) + n
        self.assertEqual(by_payment, {}, "charges for RRNs no attempt made")
        return out

    def test_processor_hang_under_load_charges_once_and_settles_every_payment(self):
        """The processor stops answering (SIGSTOP) for longer than the call
        timeout, with calls in flight, then wakes up: timed-out calls are
        settled by status query, never sent again blindly."""
        self.processor_crash(lambda sim: gateway_config(sim, timeout_ms=600), ("a", "b"), hang=True)

    def test_iso_host_hang_under_load_charges_once_and_settles_every_payment(self):
        self.processor_crash(one_iso_link_config, ("iso",), iso=True, hang=True)

    def test_captures_during_a_processor_hang_match_the_processor(self):
        """Captures in flight when the processor stops answering: once it is
        back and recovery has run, a PaymentIntent is succeeded exactly when
        the processor holds its capture, and the balance holds exactly the
        captured amounts."""
        self.captures_during_hang(lambda sim: gateway_config(sim, names=("a",), timeout_ms=600), "a", iso=False)

    def test_iso_captures_during_a_host_hang_match_the_host(self):
        """The same through an ISO 8583 link: a capture (0220) whose answer
        is lost is reversed, so it is not captured on either side."""
        self.captures_during_hang(one_iso_link_config, "iso", iso=True)

    def test_captures_during_a_gateway_kill_match_the_processor(self):
        """kill -9 of the gateway with captures in flight to a REST processor:
        after the restart every PaymentIntent matches the processor, and a
        client retrying with its key gets what happened (or, for a capture
        the gateway never committed, makes it now, once)."""
        self.captures_during_hang(lambda sim: gateway_config(sim, names=("a",), timeout_ms=600), "a", iso=False,
                                  kill_gateway=True)

    def captures_during_hang(self, config, sim_name, iso, kill_gateway=False):
        import threading
        sim = Sim()
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config=config(sim))
            c = d.client("m")
            pis = []
            for i in range(40):
                r = c.post("/v1/payment_intents", {"amount": 2000 + i, "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_visa", "capture_method": "manual"})
                self.assertEqual(r.status, 200, r.json)
                pis.append(r.json)
            sim.faults(sim_name, latency_ms_min=30, latency_ms_max=200)
            answers = {}

            def capture(pi):
                key = new_key("cap")
                try:
                    resp = c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
                except (OSError, http.client.HTTPException):
                    resp = None  # the gateway died with it
                answers[pi["id"]] = (key, resp)

            threads = [threading.Thread(target=capture, args=(pi,)) for pi in pis]
            for t in threads:
                t.start()
                time.sleep(0.01)
            if kill_gateway:
                d.kill9()
            else:
                os.kill(sim.proc.pid, signal.SIGSTOP)
                time.sleep(1.5)
                os.kill(sim.proc.pid, signal.SIGCONT)
            for t in threads:
                t.join(30)
            unanswered = sum(1 for _, v in answers.values() if v is None)
            if kill_gateway:
                with open_db_ro(d) as db:
                    in_flight = db.execute("SELECT COUNT(*) FROM attempts WHERE kind='capture' AND state='sent'"
                                           ).fetchone()[0]
                d.start(config=config(sim))
                c = d.client("m")
                # a capture with no answer: the retry replays what the gateway
                # committed, or (nothing committed) captures now
                for pi in pis:
                    key, first = answers[pi["id"]]
                    if first is None:
                        answers[pi["id"]] = (key, c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key))
            self.assertEqual(self.wait_settled(d, 30), 0)
            statuses = {k: (v.status if v else None) for k, (_, v) in answers.items()}
            self.assertTrue(set(statuses.values()) <= {200, 402, 502}, statuses)
            j = sim.journal(limit=100000)
            # the journal names the payment (REST) or the authorization's RRN (ISO)
            pi_of = {}
            if iso:
                with open_db_ro(d) as db:
                    for pid, ref in db.execute("SELECT payment_intent, idem_ref FROM attempts WHERE kind='authorize'"):
                        pi_of[iso_rrn(ref)] = pid
            undone = {e["reference"] for e in j["entries"] if e["operation"] == "reversal"
                      and e["status"] == "capture_reversed"}
            captured = {}
            for e in j["entries"]:
                if e["operation"] == "capture" and e["status"] == "captured" and e["reference"] not in undone:
                    pid = pi_of.get(e["payment"], e["payment"])
                    captured[pid] = captured.get(pid, 0) + e["amount"]
            total = 0
            for pi in pis:
                now = c.get("/v1/payment_intents/" + pi["id"]).json
                if now["status"] == "succeeded":
                    self.assertEqual(captured.get(pi["id"]), pi["amount"], pi["id"])
                    total += pi["amount"]
                else:
                    self.assertEqual(now["status"], "requires_capture", now)
                    self.assertIsNone(captured.get(pi["id"]), pi["id"])
                # the client's retry with its key answers what happened
                key, first = answers[pi["id"]]
                again = c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=key)
                if now["status"] == "succeeded":
                    self.assertEqual((again.status, again.json["status"]), (200, "succeeded"), (first, again))
                else:
                    self.assertEqual(again.status, 402, (first, again))
            bal = c.get("/v1/balance").json
            pending = sum(x["amount"] for x in bal["pending"] if x["currency"] == "usd")
            self.assertEqual(pending, total, bal)
            print("captures during %s: %r, %d unanswered%s, captured %d of %d" % (
                "gateway kill" if kill_gateway else "hang", sorted(collections.Counter(statuses.values()).items()),
                unanswered, " (%d in flight at the kill)" % in_flight if kill_gateway else "", len(captured),
                len(pis)))
        finally:
            d.cleanup()
            sim.stop()

    def processor_crash(self, config, sim_names, iso=False, hang=False):
        sim = Sim()
        d = Daemon()
        try:
            d.create_merchant("m")
            for n in sim_names:
                sim.faults(n, latency_ms_min=30, latency_ms_max=200)
            d.start(config=config(sim))
            c = d.client("m")
            load = PaymentLoad(c, threads=8, seconds=30, tag="sim-crash").start()
            time.sleep(2.0)
            if hang:
                os.kill(sim.proc.pid, signal.SIGSTOP)
                time.sleep(2.0)  # calls time out; new ones meet a processor that does not answer
            else:
                sim.kill9()
                time.sleep(1.0)  # payments meet a processor that is gone
            load.stop_flag.set()
            if hang:
                os.kill(sim.proc.pid, signal.SIGCONT)
            self.assertTrue(load.join(60))
            self.assertGreater(len(load.acks), 10)
            with open_db_ro(d) as db:
                sent_at_crash = db.execute("SELECT COUNT(*) FROM attempts WHERE state='sent'").fetchone()[0]
            if not hang:
                sim.restart()
            left = self.wait_settled(d, 40)
            self.assertEqual(left, 0, "attempts still unsettled after the processor came back (had %d)" % sent_at_crash)
            j = sim.journal(limit=100000)
            self.assertEqual(j["summary"]["double_charges"], 0, j["summary"])
            charged = self.charges_by_pi(d, j, iso)
            with open_db_ro(d) as db:
                rows = db.execute("SELECT id, status FROM payment_intents").fetchall()
            statuses = dict(rows)
            for pid, status in rows:
                self.assertNotEqual(status, "processing", pid)
                if status in ("succeeded", "requires_capture"):
                    self.assertEqual(charged.get(pid), 1, (pid, status, c.get("/v1/payment_intents/%s/attempts" % pid).json,
                                                           sim.journal(payment=pid), [a.status for a in load.acks if a.pi()["id"] == pid]))
                else:
                    self.assertIsNone(charged.get(pid), (pid, status, c.get("/v1/payment_intents/%s/attempts" % pid).json))
            # Nothing charged that the gateway does not know as paid.
            for pid in charged:
                self.assertIn(statuses.get(pid), ("succeeded", "requires_capture"), pid)
            for ack in load.acks:
                pi = ack.pi()
                self.assertEqual(statuses[pi["id"]], pi["status"], pi["id"])
            # Answers that were not final replay, with the same key, as what
            # the store now says, and never charge again: an unknown outcome
            # settled by recovery, an exhausted route as the stored 502. A
            # request refused before anything was committed (no processor
            # available: both breakers open) stored nothing, so its retry
            # runs as a new request, once.
            retried = fresh = 0
            for key, params, resp in load.other:
                unstored = resp.json and resp.json.get("error", {}).get("tp_code") == 6027
                if unstored and fresh == 100:
                    continue  # enough of these: each retry is a new payment
                r = c.post("/v1/payment_intents", params, idem=key)
                if unstored and r.status == 503 and r.json["error"].get("tp_code") == 6027:
                    continue  # the breaker has not closed again yet: still nothing stored
                if unstored:
                    self.assertIn(r.status, (200, 402), (key, r))
                    self.assertNotEqual(r.headers.get("Idempotent-Replayed"), "true", key)
                    again = c.post("/v1/payment_intents", params, idem=key)
                    self.assertEqual((again.status, again.headers.get("Idempotent-Replayed")), (r.status, "true"))
                    self.assertEqual(again.json, r.json)
                    fresh += 1
                elif r.status in (200, 402):
                    pi = r.json if r.status == 200 else r.json["error"]["payment_intent"]
                    self.assertEqual(statuses.get(pi["id"]), pi["status"], (key, resp))
                    retried += 1
                else:
                    self.assertIn(r.status, (502, 504), (key, r))
                    self.assertEqual(r.json, resp.json, key)
            after = sim.journal(limit=100000)["summary"]
            self.assertEqual(after["double_charges"], 0, after)
            import collections
            self.assertLessEqual(after["charges"], j["summary"]["charges"] + fresh,
                                 (fresh, retried, len(load.acks), collections.Counter(
                                     (resp.status, (resp.json or {}).get("error", {}).get("tp_code")) for _, _, resp in load.other)))
            print("sim kill9: acks=%d other=%d (settled on retry %d, new on retry %d) sent_at_crash=%d charges=%d" %
                  (len(load.acks), len(load.other), retried, fresh, sent_at_crash, j["summary"]["charges"]))
        finally:
            d.cleanup()
            sim.stop()


class ScreenedRecoveryTest(unittest.TestCase):
    """Highest-risk cards paid by 12 clients while the gateway is killed
    (kill -9) four times: an authorization left between its write-ahead
    and its outcome is settled by recovery as the screening would have
    (declined fraudulent), never asked of nor fenced at the processor (it
    was queried, fenced, and ended processing_error)."""

    def test_screened_authorizations_survive_a_crash_unsent(self):
        sim, d = Sim(), Daemon()
        try:
            d.create_merchant("m")
            cfg = "\n".join(["[routing]", "recovery_interval_ms = 300",
                             "[processor.a]", "type = restjson", "endpoint = http://%s/p/a" % sim.rest,
                             "timeout_ms = 300", "health_interval_ms = 0",
                             "[route.all]", "merchant = *", "processors = a", "strategy = ordered", ""])
            start_beside(sim, d, config=cfg)
            sk = d.merchants["m"]["secret_key"]
            stop, keys = threading.Event(), []

            def payer():
                while not stop.is_set():
                    k = new_key("scr")
                    keys.append(k)
                    try:
                        Client(d.host, d.port, key=sk, timeout=5).post(
                            "/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                    "payment_method": "pm_card_radarBlock"}, idem=k)
                    except OSError:
                        pass
            threads = [threading.Thread(target=payer) for _ in range(12)]
            for t in threads:
                t.start()
            try:
                for _ in range(4):
                    time.sleep(0.8)
                    d.kill9()
                    d.start(config=cfg)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            time.sleep(1.5)  # recovery ticks every 300 ms
            self.assertEqual(sim.journal(limit=100000)["entries"], [], "a screened card reached the processor")
            with open_db_ro(d) as con:
                states = dict(con.execute("SELECT state, count(*) FROM attempts GROUP BY state").fetchall())
            self.assertEqual(list(states), ["declined"], states)
            c = d.client("m")
            for k in keys[:: max(1, len(keys) // 200)]:
                r = c.post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_radarBlock"}, idem=k)
                self.assertEqual((r.status, r.json["error"].get("decline_code")), (402, "fraudulent"), r.json)
        finally:
            d.cleanup()
            sim.stop()


if __name__ == "__main__":
    main()
