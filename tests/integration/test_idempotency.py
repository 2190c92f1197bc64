"""Idempotency-Key: replays are byte-identical, mismatches are refused,
concurrent duplicates create one payment, keys belong to one merchant."""
import sqlite3
import threading

from harness import (DaemonTestCase, PAN_DECLINE, card, check_registry, main, new_key)

PI = "/v1/payment_intents"


def confirm_params(amount=1500, **extra):
    p = {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa",
         "confirm": "true"}
    p.update(extra)
    return p


class IdempotencyTest(DaemonTestCase):
    MERCHANTS = ("main", "concurrent", "scope_a", "scope_b")

    def assertReplayOf(self, first, again):
        self.assertEqual(again.status, first.status, again)
        self.assertEqual(again.body, first.body, "replayed body differs")
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true", again)
        # a replay is final: Stripe's SDKs are told not to retry it
        self.assertEqual(again.headers.get("Stripe-Should-Retry"), "false", again)

    def test_replay_returns_identical_status_body_and_replayed_header(self):
        c = self.c("main")
        key = new_key()
        first = c.post(PI, confirm_params(description="replay"), idem=key)
        self.assertEqual(first.status, 200, first)
        self.assertEqual(first.json["status"], "succeeded", first)
        self.assertNotEqual(first.headers.get("Idempotent-Replayed"), "true", first)
        self.assertIsNone(first.headers.get("Stripe-Should-Retry"), first)
        again = c.post(PI, confirm_params(description="replay"), idem=key)
        self.assertReplayOf(first, again)
        self.assertTrue(again.headers.get("Request-Id"), again)
        # Stripe names the request whose reply this is; the replay has its own id
        self.assertEqual(again.headers.get("Original-Request"), first.headers.get("Request-Id"), again)
        self.assertNotEqual(again.headers.get("Request-Id"), first.headers.get("Request-Id"), again)
        self.assertIsNone(first.headers.get("Original-Request"), first)
        # a reply stored by the generic path (no processor call) names it too
        cus_key = new_key()
        cus = c.post("/v1/customers", {"email": "orig@example.com"}, idem=cus_key)
        self.assertEqual(cus.status, 200, cus)
        cus2 = c.post("/v1/customers", {"email": "orig@example.com"}, idem=cus_key)
        self.assertReplayOf(cus, cus2)
        self.assertEqual(cus2.headers.get("Original-Request"), cus.headers.get("Request-Id"), cus2)
        # a replay did not charge twice
        r = c.get(PI + "/" + first.json["id"])
        self.assertEqual(r.json["amount_received"], 1500, r)

    def test_retry_sent_the_moment_the_answer_arrives_is_a_replay(self):
        # The client can read the answer before the server's completion
        # callback has released the key: the stored reply must win (not 409).
        c = self.c("main")
        for i in range(40):
            key = new_key("fast")
            p = confirm_params(amount=1000 + i) if i % 2 else {"amount": 1000 + i, "currency": "usd",
                                                               "confirm": "true",
                                                               "payment_method_data": card(PAN_DECLINE)}
            first = c.post(PI, p, idem=key)
            again = c.post(PI, p, idem=key)
            self.assertIn(first.status, (200, 402), first)
            self.assertReplayOf(first, again)

    def test_keys_must_be_printable_ascii_and_at_most_255(self):
        c = self.c("main")
        before = c.get(PI, {"limit": 100}).json["data"]
        for key, code in (("caf\xe9-" + new_key(), 3004),  # idempotency_key_invalid
                          ("ctl\x01" + new_key(), 3004),
                          ("k" * 256, 3003)):  # idempotency_key_too_long
            r = c.post(PI, confirm_params(description="bad key"), idem=key)
            self.assertEqual(r.status, 400, r)
            self.assertEqual(r.json["error"]["tp_code"], code, r)
            check_registry(self, r, r.json["error"])
        self.assertEqual(c.get(PI, {"limit": 100}).json["data"], before, "a refused key stored nothing")
        ok = c.post(PI, confirm_params(), idem="k" * 255)
        self.assertEqual(ok.status, 200, ok)
        ev = c.get("/v1/events", {"limit": 3}).json["data"]
        self.assertTrue(any(e["request"]["idempotency_key"] == "k" * 255 for e in ev), ev)

    def test_replay_of_a_decline_is_replayed(self):
        c = self.c("main")
        key = new_key()
        params = {"amount": 2100, "currency": "usd", "confirm": "true",
                  "payment_method_data": card(PAN_DECLINE)}
        first = c.post(PI, params, idem=key)
        err = self.assertStripeError(first, 402, "card_error")
        self.assertEqual(err.get("decline_code"), "generic_decline", first)
        pi = err["payment_intent"]["id"]
        again = c.post(PI, params, idem=key)
        self.assertReplayOf(first, again)
        # the replay did not start a second attempt on the same intent
        r = c.get(PI + "/" + pi)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "requires_payment_method", r)
        self.assertEqual(r.json["last_payment_error"]["decline_code"], "generic_decline", r)

    def test_an_error_of_a_request_that_executed_is_replayed_and_validation_errors_are_not(self):
        """Stripe: results are saved once an endpoint started executing,
        errors included; a request that failed validation saves nothing."""
        c = self.c("main")
        pi = c.post(PI, confirm_params(amount=1700))
        self.assertEqual(pi.json["status"], "succeeded", pi)
        # a capture of a PaymentIntent that already succeeded: its state, not its parameters
        key = new_key("state")
        first = c.post(PI + "/" + pi.json["id"] + "/capture", {}, idem=key)
        err = self.assertStripeError(first, 400, "invalid_request_error")
        self.assertEqual(err["code"], "payment_intent_unexpected_state", first)
        self.assertNotEqual(first.headers.get("Idempotent-Replayed"), "true", first)
        again = c.post(PI + "/" + pi.json["id"] + "/capture", {}, idem=key)
        self.assertReplayOf(first, again)
        self.assertEqual(again.headers.get("Original-Request"), first.headers.get("Request-Id"), again)
        # the key is the first request's: other parameters with it are refused
        other = c.post(PI + "/" + pi.json["id"] + "/capture", {"amount_to_capture": 100}, idem=key)
        self.assertStripeError(other, 400, "idempotency_error")
        # a refund of a charge refunded in full: kept too
        full = c.post("/v1/refunds", {"payment_intent": pi.json["id"]})
        self.assertEqual(full.status, 200, full)
        rkey = new_key("refunded")
        r1 = c.post("/v1/refunds", {"payment_intent": pi.json["id"]}, idem=rkey)
        self.assertEqual(self.assertStripeError(r1, 400, "invalid_request_error")["code"],
                         "charge_already_refunded", r1)
        self.assertReplayOf(r1, c.post("/v1/refunds", {"payment_intent": pi.json["id"]}, idem=rkey))
        # a validation error stores nothing: the same key with the request fixed runs
        vkey = new_key("valid")
        bad = c.post(PI, {"amount": "12x", "currency": "usd"}, idem=vkey)
        self.assertStripeError(bad, 400, "invalid_request_error")
        good = c.post(PI, {"amount": 1200, "currency": "usd"}, idem=vkey)
        self.assertEqual(good.status, 200, good)
        self.assertNotEqual(good.headers.get("Idempotent-Replayed"), "true", good)
        # nor does a missing object: the client fixes the id and retries with the key
        mkey = new_key("missing")
        miss = c.post(PI + "/pi_doesnotexist/cancel", {}, idem=mkey)
        self.assertEqual(miss.status, 404, miss)
        live = c.post(PI, {"amount": 900, "currency": "usd"})
        ok = c.post(PI + "/" + live.json["id"] + "/cancel", {}, idem=mkey)
        self.assertEqual(ok.status, 200, ok)

    def test_same_key_with_different_params_is_idempotency_error(self):
        c = self.c("main")
        key = new_key()
        first = c.post(PI, {"amount": 1000, "currency": "usd"}, idem=key)
        self.assertEqual(first.status, 200, first)
        r = c.post(PI, {"amount": 2000, "currency": "usd"}, idem=key)
        err = self.assertStripeError(r, 400, "idempotency_error")
        self.assertEqual(err["message"], "Keys for idempotent requests can only be used with the same parameters they "
                         "were first used with. Try using a key other than '%s' if you meant to execute a different "
                         "request." % key, err)  # Stripe's wording
        long_key = "k" * 200 + new_key()
        self.assertEqual(c.post(PI, {"amount": 1000, "currency": "usd"}, idem=long_key).status, 200)
        err = self.assertStripeError(c.post(PI, {"amount": 1001, "currency": "usd"}, idem=long_key), 400,
                                     "idempotency_error")
        self.assertIn("other than '%s' if" % long_key, err["message"])  # named whole, not cut
        # still only the original object, unchanged
        r = c.get(PI + "/" + first.json["id"])
        self.assertEqual(r.json["amount"], 1000, r)
        # and the original request still replays
        self.assertReplayOf(first, c.post(PI, {"amount": 1000, "currency": "usd"}, idem=key))

    def test_an_update_that_changes_nothing_records_its_key(self):
        """Stripe stores the first result of every key: an update of a
        customer or PaymentMethod that changed nothing was answered without
        a commit, so the key was never recorded and a later request with
        it ran (a delayed retry could undo another's update)."""
        c = self.c("main")
        cus = c.post("/v1/customers", {"name": "same"}).json
        pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                            "card[exp_month]": "12", "card[exp_year]": "2040"}).json
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus["id"]}).status, 200)
        for path, same, other, field in (("/v1/customers/" + cus["id"], {"name": "same"}, {"name": "other"},
                                          ("name", "same")),
                                         ("/v1/payment_methods/" + pm["id"], {}, {"metadata[a]": "b"},
                                          ("metadata", {}))):
            key = new_key()
            first = c.post(path, same, idem=key)
            self.assertEqual(first.status, 200, first)
            self.assertReplayOf(first, c.post(path, same, idem=key))
            self.assertStripeError(c.post(path, other, idem=key), 400, "idempotency_error")
            self.assertEqual(c.get(path).json[field[0]], field[1], path)
            # without a key it is still answered at once, and nothing is emitted
            self.assertEqual(c.post(path, same).status, 200)
        # an attach to the customer it already has: the same (a retry after a
        # detach ran again and was refused)
        key = new_key()
        path = "/v1/payment_methods/%s/attach" % pm["id"]
        first = c.post(path, {"customer": cus["id"]}, idem=key)
        self.assertEqual(first.status, 200, first)
        self.assertEqual(c.post("/v1/payment_methods/%s/detach" % pm["id"]).status, 200)
        self.assertReplayOf(first, c.post(path, {"customer": cus["id"]}, idem=key))
        types = [e["type"] for e in c.get("/v1/events?limit=20").json["data"]]
        self.assertNotIn("customer.updated", types)
        self.assertNotIn("payment_method.updated", types)

    def test_same_key_on_another_endpoint_is_told_apart(self):
        """A key reused on another endpoint (or another object's path) gets
        Stripe's endpoint message (3005), not the parameters one; a record
        stored before endpoints were told apart is still replayed, and
        compared on the whole request."""
        c = self.c("main")
        key = new_key()
        first = c.post("/v1/customers", {"name": "Ada"}, idem=key)
        self.assertEqual(first.status, 200, first)
        before = c.get(PI, {"limit": 100}).json["data"]
        for path, params in ((PI, {"amount": 1000, "currency": "usd"}),
                             ("/v1/customers/" + first.json["id"], {"name": "Ada"})):
            r = c.post(path, params, idem=key)
            err = self.assertStripeError(r, 400, "idempotency_error")
            self.assertEqual(err["tp_code"], 3005, r)
            self.assertIn("same endpoint", err["message"])
            self.assertIn(path, err["message"])
        self.assertEqual(c.get(PI, {"limit": 100}).json["data"], before)
        r = c.post("/v1/customers", {"name": "Bo"}, idem=key)
        self.assertEqual(self.assertStripeError(r, 400, "idempotency_error")["tp_code"], 3001, r)
        self.assertReplayOf(first, c.post("/v1/customers", {"name": "Ada"}, idem=key))
        # a trailing slash is routed to the same endpoint: the same request
        self.assertReplayOf(first, c.post("/v1/customers/", {"name": "Ada"}, idem=key))

        # An older record: the fingerprint of the whole request alone.
        old = new_key()
        first = c.post("/v1/customers", {"name": "Cy"}, idem=old)
        con = sqlite3.connect(self.daemon.db_path(), timeout=10)
        with con:
            n = con.execute("UPDATE idempotency SET req_hash = substr(req_hash, 1, 64) WHERE key = ?",
                            (old,)).rowcount
        con.close()
        self.assertEqual(n, 1)
        self.assertReplayOf(first, c.post("/v1/customers", {"name": "Cy"}, idem=old))
        r = c.post(PI, {"amount": 1000, "currency": "usd"}, idem=old)
        self.assertEqual(self.assertStripeError(r, 400, "idempotency_error")["tp_code"], 3001, r)

    def test_concurrent_requests_with_one_key_create_exactly_one_payment(self):
        c = self.c("concurrent")
        key = new_key("conc")
        n = 10
        barrier = threading.Barrier(n)
        results = [None] * n

        def worker(i):
            try:
                barrier.wait(10)
                results[i] = c.post(PI, confirm_params(amount=4242, description="conc"), idem=key)
            except Exception as e:  # recorded and asserted below
                results[i] = e

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "a request hung")
        ids = set()
        originals = 0
        for r in results:
            self.assertNotIsInstance(r, Exception, r)
            if r.status == 200:
                ids.add(r.json["id"])
                if r.headers.get("Idempotent-Replayed") != "true":
                    originals += 1
            else:
                self.assertStripeError(r, 409, code="idempotency_key_in_use")
                # the key frees up in moments: SDKs retry it
                self.assertEqual(r.headers.get("Stripe-Should-Retry"), "true", r)
        self.assertEqual(originals, 1, results)
        self.assertEqual(len(ids), 1, results)
        listed = c.list_all(PI)
        self.assertEqual([p["id"] for p in listed], list(ids))
        self.assertEqual(listed[0]["status"], "succeeded")
        self.assertEqual(listed[0]["amount_received"], 4242)
        # once settled, the key replays the single original
        r = c.post(PI, confirm_params(amount=4242, description="conc"), idem=key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["id"], ids.pop(), r)
        self.assertEqual(r.headers.get("Idempotent-Replayed"), "true", r)

    def test_keys_are_scoped_per_merchant(self):
        key = new_key("scope")
        a = self.c("scope_a").post(PI, confirm_params(amount=777), idem=key)
        b = self.c("scope_b").post(PI, confirm_params(amount=777), idem=key)
        self.assertEqual(a.status, 200, a)
        self.assertEqual(b.status, 200, b)
        self.assertNotEqual(a.json["id"], b.json["id"])
        self.assertNotEqual(a.headers.get("Idempotent-Replayed"), "true", a)
        self.assertNotEqual(b.headers.get("Idempotent-Replayed"), "true", b)
        self.assertEqual(len(self.c("scope_a").list_all(PI)), 1)
        self.assertEqual(len(self.c("scope_b").list_all(PI)), 1)
        r = self.c("scope_a").get(PI + "/" + b.json["id"])
        self.assertStripeError(r, 404, code="resource_missing")


if __name__ == "__main__":
    main()
