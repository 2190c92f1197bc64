"""Uncaptured authorizations lapse: past the charge's capture_before
([authorizations] expire_after_seconds, Stripe: 7 days) the authorization is
voided at its processor and the PaymentIntent is canceled with
cancellation_reason "expired" (Stripe since 2025-03-31.basil; "automatic" before), its charge expired (charge.expired). A
PaymentIntent captured in time is untouched, and nothing reaches the
ledger."""
import time
import unittest

from harness import DaemonTestCase, main

PI = "/v1/payment_intents"
TTL_S = 3  # whole seconds: an authorization at x.93 has 2.07 s, not 3, to be captured in time


class Expiry:
    def authorize(self, amount=4200):
        r = self.c().post(PI, {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa",
                               "confirm": "true", "capture_method": "manual"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "requires_capture")
        return r.json

    def wait_status(self, pi_id, status, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            got = self.c().get(PI + "/" + pi_id).json
            if got["status"] == status or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def check_expired(self, pi, kept):
        c = self.c()
        ch = c.get("/v1/charges/" + pi["latest_charge"]).json
        before = ch["payment_method_details"]["card"]["capture_before"]
        self.assertTrue(ch["created"] + TTL_S - 1 <= before <= ch["created"] + TTL_S + 1, ch)
        # capturing one in time keeps it
        cap = c.post(PI + "/" + kept["id"] + "/capture", {})
        self.assertEqual(cap.status, 200, cap)
        got = self.wait_status(pi["id"], "canceled")
        self.assertEqual((got["status"], got["cancellation_reason"], got["amount_capturable"]),
                         ("canceled", "expired", 0), got)
        self.assertGreaterEqual(time.time() + 1, before)
        ch = c.get("/v1/charges/" + pi["latest_charge"]).json
        # released, not refunded: no Refund (Stripe since 2025-03-31.basil)
        self.assertEqual((ch["captured"], ch["refunded"], ch["amount_refunded"]), (False, False, 0), ch)
        self.assertEqual(c.get("/v1/refunds", {"charge": ch["id"]}).json["data"], [])
        types = [e["type"] for e in c.list_all("/v1/events")
                 if e["data"]["object"]["id"] in (pi["id"], pi["latest_charge"])]
        self.assertIn("charge.expired", types)
        self.assertIn("payment_intent.canceled", types)
        atts = c.get(PI + "/" + pi["id"] + "/attempts").json["data"]
        self.assertIn("void", [a["kind"] for a in atts], atts)
        # too late to capture now; the one captured in time stays succeeded
        late = c.post(PI + "/" + pi["id"] + "/capture", {})
        self.assertEqual(late.status, 400, late)
        self.assertEqual(late.json["error"]["code"], "payment_intent_unexpected_state")
        time.sleep(TTL_S)
        self.assertEqual(c.get(PI + "/" + kept["id"]).json["status"], "succeeded")
        # only the capture reached the ledger
        bal = c.get("/v1/balance").json
        total = sum(b["amount"] for k in ("available", "pending") for b in bal.get(k, []) if b["currency"] == "usd")
        self.assertEqual(total, kept["amount"])


class SandboxExpiryTest(Expiry, DaemonTestCase):
    @classmethod
    def config(cls):
        return "[authorizations]\nexpire_after_seconds = %d\nscan_interval_ms = 200\n" % TTL_S

    def test_uncaptured_authorization_is_voided_and_canceled(self):
        self.check_expired(self.authorize(), self.authorize(3100))


class Iso8583ExpiryTest(Expiry, DaemonTestCase):
    """Through an ISO 8583 host: the lapse is a 0400 reversal the host
    journals, so the hold is released there too."""
    WITH_SIM = True

    @classmethod
    def config(cls):
        return "\n".join([
            "[authorizations]", "expire_after_seconds = %d" % TTL_S, "scan_interval_ms = 200", "",
            "[processor.iso]", "type = iso8583", "endpoint = %s" % cls.sim.iso, "timeout_ms = 2000",
            "terminal_id = TERM0001", "merchant_id = TURNPIKE0000001", "health_interval_ms = 0", ""])

    def test_lapsed_authorization_is_reversed_at_the_host(self):
        pi, kept = self.authorize(), self.authorize(3100)
        self.assertEqual(self.sim.journal(processor="iso")["summary"]["charges"], 2)
        self.check_expired(pi, kept)
        j = self.sim.journal(processor="iso")
        self.assertIn("reversal", [e["operation"] for e in j["entries"]])
        self.assertEqual(j["summary"]["charges"], 1, j["summary"])  # the captured one


class ScanCursorTest(Expiry, DaemonTestCase):
    """The scan walks every candidate page by page: more than a page (100)
    of authorizations that are not due yet at the head (made under a longer
    expiry, then the daemon restarted with a short one) do not hide a due
    one behind them, however often the other housekeeping runs."""

    @classmethod
    def config(cls):
        return cls.ini(3600)

    @staticmethod
    def ini(ttl):
        return ("[authorizations]\nexpire_after_seconds = %d\nscan_interval_ms = 50\n"
                "[events]\npurge_interval_ms = 10\n" % ttl)

    def test_a_due_authorization_behind_a_page_of_others_lapses(self):
        head = [self.authorize(100 + i) for i in range(105)]
        self.daemon.stop()
        self.daemon.start(config=self.ini(1))
        pi = self.authorize(999)
        got = self.wait_status(pi["id"], "canceled", timeout=20.0)
        self.assertEqual((got["status"], got["cancellation_reason"]), ("canceled", "expired"), got)
        for old in (head[0], head[-1]):
            self.assertEqual(self.c().get(PI + "/" + old["id"]).json["status"], "requires_capture")


class CaptureAfterDueTest(Expiry, DaemonTestCase):
    """Past capture_before a capture is refused even before the scan (here
    an hour apart) has voided the authorization, through the PaymentIntent
    and the Charges API alike, and the refusal voids it at once."""

    @classmethod
    def config(cls):
        return "[authorizations]\nexpire_after_seconds = %d\nscan_interval_ms = 3600000\n" % TTL_S

    def test_a_capture_past_capture_before_is_refused_and_voids(self):
        c = self.c()
        pi, other = self.authorize(), self.authorize(3300)
        time.sleep(TTL_S + 1.2)
        for path in (PI + "/" + pi["id"] + "/capture", "/v1/charges/" + other["latest_charge"] + "/capture"):
            late = c.post(path, {})
            self.assertStripeError(late, 400, "invalid_request_error", "charge_expired_for_capture")
        for p in (pi, other):
            got = self.wait_status(p["id"], "canceled", timeout=10.0)
            self.assertEqual((got["status"], got["cancellation_reason"], got["amount_received"]),
                             ("canceled", "expired", 0), got)
        bal = c.get("/v1/balance").json
        self.assertEqual(sum(b["amount"] for k in ("available", "pending") for b in bal.get(k, [])), 0, bal)


if __name__ == "__main__":
    main()
