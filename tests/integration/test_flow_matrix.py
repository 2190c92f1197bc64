"""Every test card x capture method x confirmation option, then every
follow-up (capture, partial capture, cancel, confirm again, update, refunds
within and beyond the captured amount), against the sandbox and against
`turnpike sim` (REST/JSON for usd/jpy, ISO 8583 for eur/kwd).

What must hold whatever the order: no 5xx; every error is Stripe-shaped
with a Request-Id; each PaymentIntent's amount_received is its charge's
amount_captured; a captured charge's amount_refunded is the sum of its
succeeded refunds: the money ones, never more than it captured, plus the
uncaptured rest a partial capture refunds (Stripe), which moves no money (a
released authorization shows refunded in full, with no refund); the balance transactions add up
to /v1/balance per currency; the simulator's journal has no double charge.
Written after a matrix like this found an off-session 3-D Secure
confirmation answering 500 and test cards opening the only breaker."""
import collections
import itertools

from harness import DaemonTestCase, card, main, new_key

PI = "/v1/payment_intents"
CARDS = ["4242424242424242", "5555555555554444", "4000000000000002", "4000000000009995",
         "4000000000009987", "4000000000000069", "4000000000000127", "4000000000000119",
         "4100000000000019", "4000002760003184", "4000000000003220"]
CAPTURE = ["automatic", "manual", "automatic_async"]
OPTIONS = [{}, {"off_session": "true"}, {"error_on_requires_action": "true"},
           {"payment_method_options[card][request_three_d_secure]": "any"},
           {"return_url": "https://shop.example/r", "expand[]": ["latest_charge", "payment_method"]}]
FOLLOW_UPS = [("capture", {"amount_to_capture": "600"}), ("capture", {}), ("refund", {"amount": "100"}),
              ("cancel", {"cancellation_reason": "duplicate"}), ("confirm", {"payment_method": "pm_card_visa"}),
              ("update", {"metadata[k]": "v", "amount": "1500"}), ("refund", {}), ("refund", {"amount": "99999"})]


class Matrix:
    currencies = ("usd",)

    def check(self, r, what):
        self.assertLess(r.status, 500, "%s: %r" % (what, r))
        self.assertTrue(r.headers.get("Request-Id", "").startswith("req_"), "%s: %r" % (what, r))
        if r.status >= 400:
            e = (r.json or {}).get("error")
            self.assertIsInstance(e, dict, "%s: %r" % (what, r))
            self.assertIn(e.get("type"), ("invalid_request_error", "card_error", "idempotency_error",
                                          "rate_limit_error", "api_error"), "%s: %r" % (what, r))
            self.assertTrue(e.get("message"), "%s: %r" % (what, r))
        return r

    def follow_up(self, c, pi_id, op, params):
        if op == "refund":
            p = {"payment_intent": pi_id}
            p.update(params)
            return c.post("/v1/refunds", p, headers={"Idempotency-Key": new_key()})
        if op == "update":
            return c.post("%s/%s" % (PI, pi_id), params)
        return c.post("%s/%s/%s" % (PI, pi_id, op), params)

    def test_matrix(self):
        c = self.daemon.client("m")
        pis = []
        # Cards vary fastest: processing_error answers stay a small share of
        # a processor's recent calls, as in real traffic (a run of them would
        # trip the failure-rate rule of a networked processor's breaker).
        combos = [(pan, cm, oi) for cm, oi, pan in itertools.product(CAPTURE, range(len(OPTIONS)), CARDS)]
        for i, (pan, cm, oi) in enumerate(combos):
            cur = self.currencies[i % len(self.currencies)]
            params = {"amount": "2000", "currency": cur, "confirm": "true", "capture_method": cm,
                      "payment_method_data": card(pan)}
            params.update(OPTIONS[oi])
            r = self.check(c.post(PI, params, headers={"Idempotency-Key": new_key()}), (pan, cm, oi))
            pi = r.json if r.status == 200 else (r.json["error"].get("payment_intent") or {})
            if not pi.get("id"):
                continue
            pis.append(pi["id"])
            # a different slice of the follow-ups for each payment
            for op, p in FOLLOW_UPS[i % 3:] if i % 2 else FOLLOW_UPS[::-1][i % 4:]:
                self.check(self.follow_up(c, pi["id"], op, p), (pan, cm, oi, op, p))
        self.assertGreater(len(pis), len(combos) // 2)

        refunds = collections.defaultdict(int)
        moved = collections.defaultdict(int)  # refunds with a balance transaction
        for re in c.list_all("/v1/refunds"):
            if re["status"] == "succeeded":
                refunds[re["charge"]] += re["amount"]
                if re["balance_transaction"]:
                    moved[re["charge"]] += re["amount"]
        for pid in pis:
            pi = self.check(c.get("%s/%s" % (PI, pid)), pid).json
            ch_id = pi["latest_charge"]
            if not ch_id:
                self.assertEqual(pi["amount_received"], 0, pi)
                continue
            ch = self.check(c.get("/v1/charges/%s" % ch_id), ch_id).json
            self.assertEqual(pi["amount_received"], ch["amount_captured"], (pi, ch))
            if ch["captured"]:
                self.assertEqual(ch["amount_refunded"], refunds[ch_id], ch)
                # a partial capture refunds the uncaptured rest (Stripe), with no money moved
                self.assertEqual(ch["amount_refunded"] - moved[ch_id], ch["amount"] - ch["amount_captured"], ch)
                self.assertLessEqual(moved[ch_id], ch["amount_captured"], ch)
                self.assertEqual(ch["refunded"], moved[ch_id] == ch["amount_captured"], ch)
            else:
                # a released authorization is refunded in full by a Refund
                # that moved no money (Stripe: "the remaining
                # amount_capturable is automatically refunded")
                self.assertIn(ch["amount_refunded"], (0, ch["amount"]), ch)
                self.assertEqual(refunds[ch_id], ch["amount_refunded"], ch)
                self.assertEqual(moved[ch_id], 0, ch)
                self.assertEqual(ch["refunded"], ch["amount_refunded"] > 0, ch)
            if pi["status"] == "succeeded":
                self.assertTrue(ch["captured"], ch)

        # The ledger as the API shows it: transactions add up to the balance.
        sums = collections.Counter()
        for bt in c.list_all("/v1/balance_transactions"):
            sums[bt["currency"]] += bt["net"]
        bal = self.check(c.get("/v1/balance"), "balance").json
        shown = collections.Counter()
        for part in ("available", "pending"):
            for b in bal[part]:
                shown[b["currency"]] += b["amount"]
        for cur in set(sums) | set(shown):
            self.assertEqual(sums[cur], shown[cur], (cur, dict(sums), dict(shown)))
        if self.sim is not None:
            self.assertEqual(self.sim.journal()["summary"]["double_charges"], 0)


class SandboxMatrix(Matrix, DaemonTestCase):
    pass


class SimMatrix(Matrix, DaemonTestCase):
    currencies = ("usd", "eur", "jpy", "kwd")
    WITH_SIM = True

    @classmethod
    def config(cls):
        return ("[processor.rest]\ntype = restjson\nendpoint = http://%s/p/rest\ncurrencies = usd,jpy\n"
                "[processor.iso]\ntype = iso8583\nendpoint = %s\ncurrencies = eur,kwd\n"
                "terminal_id = TERM0001\nmerchant_id = TURNPIKE0000001\n") % (cls.sim.rest, cls.sim.iso)


if __name__ == "__main__":
    main()
