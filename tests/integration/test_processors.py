"""Processor registry, REST/JSON connector, circuit breakers and health checks.

Two parts:
- ConnectorContract: the gateway against a tiny REST processor written here
  (the documented contract), to see the exact requests the connector sends
  and how it maps broken answers (garbage, oversized body, 5xx).
- WithSimulator: the real `turnpike sim` with two REST processors /p/a and
  /p/b; payments go through REST; an outage of a opens its breaker (visible
  in GET /v1/turnpike/processors), health checks bring it back half-open
  and then closed once the outage ends.
"""
import email.utils
import http.server
import json
import socket
import os
import shutil
import tempfile
import threading
import time
import unittest

import harness
from harness import BIN, HOST, PAN_OK, PAN_INSUFFICIENT, Client, Daemon, Sim, card, new_key

WAIT_S = 15.0


def wait_for(pred, timeout=WAIT_S, step=0.05, what="condition"):
    """Poll pred() until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def processors(client):
    r = client.get("/v1/turnpike/processors")
    assert r.status == 200, r
    return {p["name"]: p for p in r.json["data"]}


# -- a tiny processor implementing the contract ------------------------------

DECLINES = {"4000000000000002": "generic_decline", "4000000000009995": "insufficient_funds"}


class FakeProcessor:
    """POST /v1/authorizations etc. Modes: ok, garbage, huge, 500, 401;
    mismatch (approves ten times the amount asked, keeps the answer for the
    status query, voids it when told); 502 and 503 on authorizations (a
    status query then finds nothing, a void of the reference succeeds);
    stall_void (a void is held stall_s and then acted on unless its
    reference was fenced meanwhile)."""

    def __init__(self):
        self.mode = "ok"
        self.refund_decline = "generic_decline"  # decline_refund's decline_code
        self.kept = {}  # reference -> answer, for status queries (mode mismatch)
        self.fenced, self.applied, self.stall_s = set(), [], 0.0  # mode stall_void
        self.retry_after = None  # mode 429: the Retry-After of the next authorization's 429
        self.status_bare = False  # status answers leave out amount and currency
        self.void_500 = False  # every void answered 500 (not done)
        self.requests = []  # (method, path, headers, body-json-or-None)
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                js = json.loads(raw) if raw else None
                with outer.lock:
                    outer.requests.append((method, self.path, dict(self.headers), js, time.monotonic()))
                    mode = outer.mode
                path = self.path
                if path.endswith("/v1/health"):
                    return self._reply(200 if mode != "500" else 503, {"status": "ok"})
                if mode == "garbage":
                    return self._reply(200, b"<html>not json</html>")
                if mode == "huge":
                    return self._reply(200, b"[" + b"1," * 40000 + b"1]")
                if mode == "500":
                    return self._reply(500, {"error": "boom"})
                if mode == "401":
                    return self._reply(401, {"error": "bad key"})
                if mode == "stall_void" and method == "POST" and path.endswith("/void"):
                    ref = js["reference"]
                    if ref.endswith("-fence"):
                        with outer.lock:
                            outer.fenced.add(ref[:-len("-fence")])
                        return self._reply(200, {"status": "voided", "reference": ref})
                    time.sleep(outer.stall_s)  # held past the gateway's timeout, then acted on...
                    with outer.lock:
                        if ref in outer.fenced:  # ...unless the reference was fenced meanwhile
                            return self._reply(409, {"error": "reference already used"})
                        outer.applied.append(ref)
                    return self._reply(200, {"status": "voided", "reference": ref})
                if mode == "fence_capture_lost" and method == "POST" and path.endswith("/capture"):
                    return self._reply(500, {"error": "boom"})  # not done here
                if mode == "fence_capture_lost" and method == "POST" and path.endswith("/void") and \
                        js["reference"].endswith("-fence"):
                    # the fence takes the capture's reference as a voided
                    # authorization; its answer is lost, and the status
                    # answer then names no operation (the contract allows it)
                    ref = path.rsplit("/", 2)[1]
                    with outer.lock:
                        again = ref in outer.kept
                        outer.kept[ref] = {"status": "voided", "reference": ref}
                    if again:  # a repeated reference: its first answer
                        return self._reply(200, {"status": "voided", "reference": js["reference"]})
                    return self._reply(500, {"error": "boom"})
                if mode in ("502", "503") and method == "POST" and path.endswith("/v1/authorizations"):
                    return self._reply(int(mode), {"error": "upstream"})
                if mode == "429" and method == "POST" and path.endswith("/v1/authorizations"):
                    with outer.lock:  # the first answer asks to wait; the next call is served
                        first = outer.retry_after is not None
                        wait, outer.retry_after = outer.retry_after, None
                    if first:
                        if callable(wait):  # an HTTP-date made as the answer goes out
                            wait = wait()
                        data = b'{"error":"slow down"}'
                        self.send_response(429)
                        self.send_header("Retry-After", wait)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        return self.wfile.write(data)
                if outer.void_500 and method == "POST" and path.endswith("/void"):
                    return self._reply(500, {"error": "boom"})  # not done here
                if mode == "mismatch_lost" and method == "POST" and path.endswith("/v1/authorizations"):
                    # approved here for ten times the amount, the answer lost
                    with outer.lock:
                        outer.kept[js["reference"]] = {
                            "id": "auth_" + js["reference"], "operation": "authorize",
                            "reference": js["reference"], "status": "approved", "auth_code": "A1B2C3",
                            "amount": js["amount"] * 10, "currency": js["currency"], "captured": False}
                    return self._reply(500, {"error": "boom"})
                if mode == "mismatch" and method == "POST" and path.endswith("/v1/authorizations"):
                    a = {"id": "auth_" + js["reference"], "operation": "authorize", "reference": js["reference"],
                         "status": "approved", "auth_code": "A1B2C3", "amount": js["amount"] * 10,
                         "currency": js["currency"], "captured": False}
                    with outer.lock:
                        outer.kept[js["reference"]] = a
                    return self._reply(200, a)
                if method == "GET" and "/v1/transactions/" in path:
                    with outer.lock:
                        a = outer.kept.get(path.rsplit("/", 1)[1])
                        if a and outer.status_bare:  # the contract lets a status answer leave these out
                            a = {k: v for k, v in a.items() if k not in ("amount", "currency")}
                    if a:
                        return self._reply(200, a)
                if method == "POST" and path.endswith("/void"):
                    ref = path.rsplit("/", 2)[1]
                    with outer.lock:
                        if ref in outer.kept:
                            outer.kept[ref] = dict(outer.kept[ref], status="voided")
                if mode == "wrong_ref" and method == "POST" and path.endswith("/v1/authorizations"):
                    with outer.lock:
                        outer.mode = "ok"  # once
                    return self._reply(200, {"id": "auth_x", "reference": "att_someoneelse", "status": "approved",
                                             "auth_code": "A1B2C3", "amount": js["amount"],
                                             "currency": js["currency"], "captured": False})
                if mode == "voided_then_500" and method == "POST" and path.endswith("/v1/authorizations"):
                    # voided here at once, its answer lost; the status answer names no operation
                    with outer.lock:
                        outer.kept[js["reference"]] = {"id": "auth_" + js["reference"], "reference": js["reference"],
                                                       "status": "voided", "amount": js["amount"],
                                                       "currency": js["currency"]}
                        outer.mode = "ok"  # once
                    return self._reply(500, {"error": "boom"})
                if method == "POST" and path.endswith("/v1/authorizations"):
                    d = DECLINES.get(js["card"]["number"])
                    return self._reply(200, {
                        "id": "auth_" + js["reference"], "reference": js["reference"],
                        "status": "declined" if d else ("captured" if mode == "say_captured" and js["capture"]
                                                        else "approved"), "decline_code": d,
                        "auth_code": None if d else "A1B2C3", "amount": js["amount"],
                        "currency": js["currency"], "captured": bool(js["capture"]) and not d})
                if mode in ("capture_mismatch", "refund_mismatch") and method == "POST" and (
                        path.endswith("/capture") if mode == "capture_mismatch" else path.endswith("/v1/refunds")):
                    # done here for the whole authorization (capture) or in
                    # another currency (refund), kept for the status query
                    op = "capture" if mode == "capture_mismatch" else "refund"
                    a = {"id": op + "_" + js["reference"], "operation": op, "reference": js["reference"],
                         "status": "captured" if op == "capture" else "succeeded",
                         "amount": 2000 if op == "capture" else js["amount"],
                         "currency": "usd" if op == "capture" else "jpy"}
                    with outer.lock:
                        outer.kept[js["reference"]] = a
                    return self._reply(200, a)
                if method == "POST" and path.endswith("/capture"):
                    if mode == "reset_capture":  # done here, then the connection dies unanswered
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return None
                    return self._reply(200, {"status": "captured", "reference": js["reference"]})
                if method == "POST" and path.endswith("/void"):
                    if mode == "decline_void" and not js["reference"].endswith("-fence"):
                        return self._reply(200, {"status": "declined", "decline_code": "do_not_honor",
                                                 "reference": js["reference"]})
                    return self._reply(200, {"status": "voided", "reference": js["reference"]})
                if method == "POST" and path.endswith("/v1/refunds"):
                    if mode == "slow_refund":
                        time.sleep(0.3)
                    elif mode == "slow_refund_long":
                        time.sleep(2.0)
                    elif mode == "decline_refund":
                        return self._reply(200, {"status": "declined", "decline_code": outer.refund_decline,
                                                 "reference": js["reference"]})
                    return self._reply(200, {"status": "succeeded", "reference": js["reference"]})
                if method == "GET" and "/v1/transactions/" in path:
                    return self._reply(404, {"error": "not found"})
                return self._reply(404, {"error": "no route"})

            def do_POST(self):
                self._handle("POST")

            def do_GET(self):
                self._handle("GET")

        self.server = http.server.ThreadingHTTPServer((HOST, 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def calls(self, suffix, method="POST"):
        with self.lock:
            return [r for r in self.requests if r[0] == method and r[1].endswith(suffix)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ConnectorContract(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = FakeProcessor()
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.create_merchant("n")
            cls.daemon.start(config=(
                "[server]\n"
                "lock_wait_ms = 1000\n"
                "[processor.fake]\n"
                "type = restjson\n"
                "endpoint = http://127.0.0.1:%d/p/fake\n"
                "api_key = sk_fake_processor_credential\n"
                "timeout_ms = 3000\n"
                "health_interval_ms = 200\n"
                "fee_percent = 2.9\n"
                "fee_fixed = 30\n"
                "fee_fixed.eur = 25\n"
                "brands = visa, mastercard\n"
                "currencies = usd,eur\n"
                "[routing]\n"
                "recovery_interval_ms = 1000\n") % cls.fake.port)
        except Exception:
            cls.daemon.cleanup()
            cls.fake.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        cls.fake.close()

    def setUp(self):
        self.fake.mode = "ok"
        self.c = self.daemon.client("m")
        # a test that made the processor fail may have left its breaker open
        wait_for(lambda: processors(self.c)["fake"]["breaker"] == "closed", what="breaker closed")

    def pay(self, pan, **extra):
        params = {"amount": 2000, "currency": "usd", "confirm": "true",
                  "payment_method_data": card(pan)}
        params.update(extra)
        params = {k: v for k, v in params.items() if v is not None}
        return self.c.post("/v1/payment_intents", params, headers={"Idempotency-Key": new_key()})

    def test_list_shows_config_without_credentials(self):
        r = self.c.get("/v1/turnpike/processors")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["object"], "list")
        self.assertNotIn("sk_fake_processor_credential", json.dumps(r.json))
        [p] = r.json["data"]
        self.assertEqual(p["object"], "processor")
        self.assertEqual(p["name"], "fake")
        self.assertEqual(p["type"], "restjson")
        self.assertEqual(p["endpoint"], "http://127.0.0.1:%d/p/fake" % self.fake.port)
        self.assertEqual(p["brands"], ["visa", "mastercard"])
        self.assertEqual(p["currencies"], ["usd", "eur"])
        self.assertEqual(p["fees"], {"percent": "2.9", "fixed": 30, "fixed_by_currency": {"eur": 25}})
        self.assertIn(p["breaker"], ("closed", "half_open", "open"))
        for k in ("p50", "p90", "p99"):
            self.assertIn(k, p["latency_ms"])
        # the health checker reaches GET {endpoint}/v1/health with the key
        wait_for(lambda: processors(self.c)["fake"]["health"] == "up", what="health up")
        h = self.fake.calls("/p/fake/v1/health", "GET")
        self.assertTrue(h)
        self.assertEqual(h[-1][2].get("Authorization"), "Bearer sk_fake_processor_credential")

    def test_unauthenticated_list_is_refused(self):
        r = Client(HOST, self.daemon.port).get("/v1/turnpike/processors")
        self.assertEqual(r.status, 401, r)

    def test_approved_payment_sends_the_contract_request(self):
        r = self.pay(PAN_OK)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        auths = [x for x in self.fake.calls("/p/fake/v1/authorizations")
                 if x[3]["amount"] == 2000 and x[3]["card"]["number"] == PAN_OK]
        self.assertTrue(auths)
        method, path, headers, body = auths[-1][:4]
        self.assertEqual(path, "/p/fake/v1/authorizations")
        self.assertEqual(headers.get("Authorization"), "Bearer sk_fake_processor_credential")
        self.assertEqual(headers.get("Content-Type"), "application/json")
        self.assertEqual(body["currency"], "usd")
        self.assertIs(body["capture"], True)
        self.assertEqual(body["card"]["exp_month"], 12)
        self.assertEqual(body["card"]["exp_year"], 2034)
        self.assertEqual(body["card"]["cvc"], "123")
        self.assertTrue(body["reference"])
        # the PAN never reaches the gateway's log
        self.assertNotIn(PAN_OK, self.daemon.log_text())

    def test_the_cvc_is_sent_null_when_none_was_ever_given_and_omitted_when_saved_with_the_card(self):
        def sent(amount, **params):
            body = {"amount": amount, "currency": "usd", "confirm": "true"}
            body.update(params)
            r = self.c.post("/v1/payment_intents", body, headers={"Idempotency-Key": new_key()})
            self.assertEqual(r.status, 200, r)
            return [x[3] for x in self.fake.calls("/p/fake/v1/authorizations") if x[3]["amount"] == amount][-1]
        body = sent(2101, payment_method_data=card(PAN_OK, cvc=None))
        self.assertIn("cvc", body["card"])
        self.assertIsNone(body["card"]["cvc"])
        pm = self.c.post("/v1/payment_methods", {"type": "card", "card": {
            "number": PAN_OK, "exp_month": 12, "exp_year": 2034, "cvc": "321"}}).json["id"]
        body = sent(2102, payment_method=pm)
        self.assertNotIn("cvc", body["card"])  # the CVC is never kept; the issuer had it

    def test_decline_maps_to_card_declined(self):
        r = self.pay(PAN_INSUFFICIENT)
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"]["code"], "card_declined")
        self.assertEqual(r.json["error"]["decline_code"], "insufficient_funds")

    def test_manual_capture_goes_to_the_capture_endpoint(self):
        r = self.pay(PAN_OK, capture_method="manual")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "requires_capture", r)
        pi = r.json["id"]
        auth = [x for x in self.fake.calls("/p/fake/v1/authorizations") if x[3]["capture"] is False]
        self.assertTrue(auth)
        ref = auth[-1][3]["reference"]
        r = self.c.post("/v1/payment_intents/%s/capture" % pi, {}, headers={"Idempotency-Key": new_key()})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        caps = self.fake.calls("/p/fake/v1/authorizations/%s/capture" % ref)
        self.assertEqual(len(caps), 1)
        self.assertEqual(caps[0][3]["amount"], 2000)

    def recovery_asked(self, n0, suffix):
        """Wait (bounded) until recovery has asked the status of the call
        made after request n0 whose path ends with suffix twice: its
        reference's GET /v1/transactions/ after it (the first answer was
        acted on: a settled call is not asked again). Recovery acts on a
        call left alone twice its timeout (6 s here) plus a second, on its
        1 s tick, and asks again after 1 s, doubling."""
        with self.fake.lock:
            reqs = list(enumerate(self.fake.requests))[n0:]
        [(i, ref)] = [(i, q[3]["reference"]) for i, q in reqs if q[0] == "POST" and q[1].endswith(suffix)]

        def asked():
            with self.fake.lock:
                return sum(q[0] == "GET" and q[1].endswith("/v1/transactions/" + ref)
                           for q in self.fake.requests[i + 1:]) >= 2
        wait_for(asked, timeout=30, what="recovery's status query of " + ref)

    def mismatched_payment_not_paid(self):
        """A payment the processor approves for ten times its amount: not
        paid, nothing received. The processor's requests it made."""
        n0 = len(self.fake.requests)
        self.fake.mode = "mismatch"
        r = self.pay(PAN_OK)
        self.fake.mode = "ok"
        self.assertGreaterEqual(r.status, 400, r)
        pi = self.c.get("/v1/payment_intents", {"limit": 1}).json["data"][0]
        self.assertNotIn(pi["status"], ("succeeded", "requires_capture"), pi)
        self.assertEqual(pi["amount_received"], 0, pi)
        with self.fake.lock:
            return self.fake.requests[n0:]

    def test_an_approval_for_another_amount_is_voided_never_kept(self):
        """The processor approves ten times the amount: neither its answer
        nor the status query that follows makes the payment succeed; every
        such authorization is voided by its reference before the payment
        goes on, and the payment fails."""
        reqs = self.mismatched_payment_not_paid()
        auths = [q[3]["reference"] for q in reqs if q[0] == "POST" and q[1].endswith("/v1/authorizations")]
        statuses = [q[1].rsplit("/", 1)[1] for q in reqs if q[0] == "GET" and "/v1/transactions/" in q[1]]
        fences = [q[1].rsplit("/", 2)[1] for q in reqs if q[0] == "POST" and q[1].endswith("/void")
                  and q[3]["reference"].endswith("-fence")]
        self.assertTrue(auths, reqs)
        self.assertEqual(sorted(fences), sorted(auths), reqs)
        # voided at once: a status query would only repeat the answer
        # (recovery may meanwhile ask about calls earlier tests left open)
        self.assertFalse(set(statuses) & set(auths), reqs)
        with self.fake.lock:
            self.assertTrue(all(self.fake.kept[a]["status"] == "voided" for a in auths))

    def test_a_mismatch_a_status_query_found_is_kept_for_recovery(self):
        """The authorization's answer is lost; the status query finds it
        approved for ten times the amount; every void of it fails, so the
        payment is left to recovery. The mismatch was not kept on the
        attempt, and recovery's status answer, leaving the amount out, was
        taken as the approval asked: succeeded for 2000 while the
        processor held 20000, never voided (review, session 41)."""
        n0 = len(self.fake.requests)
        self.fake.void_500 = True
        try:
            self.fake.mode = "mismatch_lost"
            r = self.pay(PAN_OK)
            self.fake.mode = "ok"
            self.assertEqual(r.status, 502, r)
            pi = r.json["error"]["payment_intent"]["id"]
            att = self.c.get("/v1/payment_intents/%s/attempts" % pi).json["data"]
            self.assertEqual([(a["state"], a["result_code"]) for a in att], [("sent", "processor_amount_mismatch")])
        finally:
            self.fake.void_500 = False
            self.fake.mode = "ok"
        self.fake.status_bare = True
        try:
            with self.fake.lock:
                ref = [q[3]["reference"] for q in self.fake.requests[n0:] if q[0] == "POST" and
                       q[1].endswith("/v1/authorizations")][0]
            wait_for(lambda: self.fake.kept[ref]["status"] == "voided", timeout=30, what="recovery's void")
            got = wait_for(lambda: (lambda g: g["status"] != "processing" and g)(
                self.c.get("/v1/payment_intents/" + pi).json), timeout=10, what="the payment settled")
            self.assertNotIn(got["status"], ("succeeded", "requires_capture", "processing"), got)
            self.assertEqual(got["amount_received"], 0, got)
        finally:
            self.fake.status_bare = False

    def test_a_status_answer_without_the_amount_does_not_undo_a_mismatch(self):
        """The contract lets a status answer leave amount and currency out.
        After an approval for ten times the amount, such an answer was
        taken as the approval of the amount asked: the payment succeeded
        for 1000 while the processor held 10000, nothing voided (review,
        session 41). A capture and a refund answered for another amount
        were recorded as asked by recovery's status query the same way."""
        self.fake.status_bare = True
        try:
            reqs = self.mismatched_payment_not_paid()
            with self.fake.lock:
                auths = [q[3]["reference"] for q in reqs if q[0] == "POST" and q[1].endswith("/v1/authorizations")]
                self.assertTrue(auths and all(self.fake.kept[a]["status"] == "voided" for a in auths), reqs)
            # a capture made for more than asked, then status answers without the amount
            r = self.pay(PAN_OK, capture_method="manual")
            self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
            bal0 = self.c.get("/v1/balance").json
            self.fake.mode = "capture_mismatch"
            n0 = len(self.fake.requests)
            cap = self.c.post("/v1/payment_intents/%s/capture" % r.json["id"], {"amount_to_capture": 700},
                              headers={"Idempotency-Key": new_key()})
            self.fake.mode = "ok"
            self.assertEqual(cap.status, 502, cap)
            att = [a for a in self.c.get("/v1/payment_intents/%s/attempts" % r.json["id"]).json["data"]
                   if a["kind"] == "capture"]
            self.assertEqual([(a["state"], a["result_code"]) for a in att], [("sent", "processor_amount_mismatch")])
            self.recovery_asked(n0, "/capture")  # its status answers leave the amount out
            got = self.c.get("/v1/payment_intents/" + r.json["id"]).json
            self.assertNotEqual(got["status"], "succeeded", got)
            self.assertEqual(got["amount_received"], 0, got)
            self.assertEqual(self.c.get("/v1/balance").json, bal0)
            self.refund_in_another_currency_is_never_recorded()
        finally:
            self.fake.status_bare = False
            self.fake.mode = "ok"

    def test_a_void_the_processor_declines_is_no_card_error(self):
        """The processor keeps the hold (it declines the void): the cancel
        answers a processor error (502 processor_void_declined, with the
        unchanged PaymentIntent and the processor's code), not a 402
        card_error, which a cancel never is on Stripe; the payment still
        requires capture, and a later cancel goes through."""
        r = self.pay(PAN_OK, capture_method="manual")
        self.assertEqual(r.json["status"], "requires_capture", r)
        self.fake.mode = "decline_void"
        c = self.c.post("/v1/payment_intents/%s/cancel" % r.json["id"], {}, headers={"Idempotency-Key": new_key()})
        self.fake.mode = "ok"
        self.assertEqual((c.status, c.json["error"]["type"], c.json["error"]["tp_code"]), (502, "api_error", 6034), c)
        self.assertEqual(c.json["error"]["payment_intent"]["status"], "requires_capture", c)
        self.assertEqual(c.json["error"]["processor_code"], "do_not_honor", c)
        self.assertEqual(self.c.get("/v1/payment_intents/" + r.json["id"]).json["status"], "requires_capture")
        again = self.c.post("/v1/payment_intents/%s/cancel" % r.json["id"], {}, headers={"Idempotency-Key": new_key()})
        self.assertEqual((again.status, again.json["status"]), (200, "canceled"), again)

    def test_a_capture_or_refund_answered_for_another_amount_is_never_recorded(self):
        """A capture the processor says it made for the whole authorization
        (2000 of a 700 capture asked), a refund it says it made in another
        currency: moved money that was not asked for. Neither is recorded
        as done (the ledger would say 700 captured, 100 USD refunded): the
        call is left unresolved (502 processor_status_unknown), and the
        recovery's status query, reading the same answer, does not settle
        it either. Until session 33 only authorizations were checked."""
        r = self.pay(PAN_OK, capture_method="manual")
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
        pi = r.json["id"]
        bal0 = self.c.get("/v1/balance").json
        self.fake.mode = "capture_mismatch"
        n0 = len(self.fake.requests)
        cap = self.c.post("/v1/payment_intents/%s/capture" % pi, {"amount_to_capture": 700},
                          headers={"Idempotency-Key": new_key()})
        self.assertEqual(cap.status, 502, cap)
        self.assertEqual(cap.json["error"]["tp_code"], 6018, cap)  # processor_status_unknown
        self.recovery_asked(n0, "/capture")  # recovery read the kept answer: still not settled
        got = self.c.get("/v1/payment_intents/" + pi).json
        self.assertNotEqual(got["status"], "succeeded", got)
        self.assertEqual(got["amount_received"], 0, got)
        self.assertEqual(self.c.get("/v1/balance").json, bal0)
        # a refund answered in another currency
        self.fake.mode = "ok"
        self.refund_in_another_currency_is_never_recorded()

    def refund_in_another_currency_is_never_recorded(self):
        """A refund the processor says it made in another currency: the
        call is left unresolved, recovery (whatever its status answers
        say) does not settle it, and no money moves in the ledger."""
        paid = self.pay(PAN_OK)
        self.assertEqual(paid.json["status"], "succeeded", paid)
        bal1 = self.c.get("/v1/balance").json
        self.fake.mode = "refund_mismatch"
        n0 = len(self.fake.requests)
        re = self.c.post("/v1/refunds", {"payment_intent": paid.json["id"], "amount": 100},
                         headers={"Idempotency-Key": new_key()})
        self.fake.mode = "ok"
        self.assertNotEqual(re.json.get("status"), "succeeded", re)
        self.recovery_asked(n0, "/v1/refunds")
        refunds = self.c.get("/v1/refunds", {"payment_intent": paid.json["id"]}).json["data"]
        self.assertNotIn("succeeded", [x["status"] for x in refunds], refunds)
        self.assertEqual(self.c.get("/v1/charges/" + paid.json["latest_charge"]).json["amount_refunded"], 0)
        self.assertEqual(self.c.get("/v1/balance").json, bal1)

    def test_a_capture_whose_reference_was_fenced_is_not_made(self):
        """A capture's answer lost, the status query finding nothing, the
        fence's answer lost too: the next status answer is the fence's,
        `voided` with no operation. The capture never happened (the fence
        took its reference); it was read as the capture made, and the
        merchant shown 700 captured that the processor never captured."""
        r = self.pay(PAN_OK, capture_method="manual")
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
        pi = r.json["id"]
        bal0 = self.c.get("/v1/balance").json
        self.fake.mode = "fence_capture_lost"
        key = new_key()
        cap = self.c.post("/v1/payment_intents/%s/capture" % pi, {"amount_to_capture": 700},
                          headers={"Idempotency-Key": key})
        self.assertGreaterEqual(cap.status, 500, cap)
        # meanwhile a refund by the PaymentIntent waits, as one by the charge
        # does (a final-looking 400 said it had no successful charge)
        ref = self.c.post("/v1/refunds", {"payment_intent": pi, "amount": 100}, headers={"Idempotency-Key": new_key()})
        self.assertEqual((ref.status, ref.json["error"].get("tp_code")), (409, 3009), ref)
        fenced = lambda: [q for q in self.fake.requests if q[0] == "GET" and "/v1/transactions/" in q[1]
                          and q[1].rsplit("/", 1)[1] in self.fake.kept]
        wait_for(lambda: len(fenced()) >= 1 and self.c.post("/v1/payment_intents/%s/capture" % pi,
                                                             {"amount_to_capture": 700},
                                                             headers={"Idempotency-Key": key}).status in (200, 402),
                 what="the capture settled", timeout=20)
        self.fake.mode = "ok"
        got = self.c.get("/v1/payment_intents/" + pi).json
        self.assertEqual((got["status"], got["amount_received"]), ("requires_capture", 0), got)
        self.assertFalse(self.c.get("/v1/charges/" + got["latest_charge"]).json["captured"])
        self.assertEqual(self.c.get("/v1/balance").json, bal0)
        # a capture with a new key is made
        again = self.c.post("/v1/payment_intents/%s/capture" % pi, {"amount_to_capture": 700},
                            headers={"Idempotency-Key": new_key()})
        self.assertEqual((again.status, again.json.get("amount_received")), (200, 700), (again, again.json))

    def test_a_502_is_resolved_before_going_on_and_a_503_is_not(self):
        """A 502 (or 500, 504) may come from a proxy after the processor
        acted: the gateway asks for the reference's status and, finding
        nothing, voids it before trying again. A 503 says the request was
        not handled: nothing to void."""
        for mode, settled in (("502", True), ("503", False)):
            n0 = len(self.fake.requests)
            self.fake.mode = mode
            r = self.pay(PAN_OK)
            self.fake.mode = "ok"
            self.assertGreaterEqual(r.status, 400, (mode, r))
            with self.fake.lock:
                reqs = self.fake.requests[n0:]
            auths = [q[3]["reference"] for q in reqs if q[0] == "POST" and q[1].endswith("/v1/authorizations")]
            # (recovery may meanwhile ask about calls earlier tests left open)
            statuses = [q[1].rsplit("/", 1)[1] for q in reqs if q[0] == "GET" and "/v1/transactions/" in q[1]
                        and q[1].rsplit("/", 1)[1] in auths]
            fences = [q[1].rsplit("/", 2)[1] for q in reqs if q[0] == "POST" and q[1].endswith("/void")
                      and q[1].rsplit("/", 2)[1] in auths]
            self.assertTrue(auths, (mode, reqs))
            self.assertEqual(sorted(statuses), sorted(auths), (mode, reqs))
            self.assertEqual(sorted(fences), sorted(auths) if settled else [], (mode, reqs))
            wait_for(lambda: processors(self.c)["fake"]["breaker"] == "closed", what="breaker closed")

    def test_an_updated_expiry_is_what_the_processor_gets(self):
        """A reissued card's new expiry (POST /v1/payment_methods/{id}) goes
        to the processor; the vault keeps the card as it was saved."""
        cus = self.c.post("/v1/customers", {}).json
        pm = self.c.post("/v1/payment_methods", {"type": "card", **{"card[%s]" % k: v for k, v in (
            ("number", PAN_OK), ("exp_month", "12"), ("exp_year", "2031"), ("cvc", "123"))}}).json
        self.assertEqual(self.c.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus["id"]}).status, 200)
        r = self.c.post("/v1/payment_methods/" + pm["id"], {"card[exp_month]": "7", "card[exp_year]": "2033"})
        self.assertEqual((r.status, r.json["card"]["exp_month"], r.json["card"]["exp_year"]), (200, 7, 2033), r)
        r = self.pay(PAN_OK, payment_method=pm["id"], customer=cus["id"], payment_method_data=None)
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        body = [x[3] for x in self.fake.calls("/p/fake/v1/authorizations") if x[3]["payment"] == r.json["id"]][-1]
        self.assertEqual((body["card"]["exp_month"], body["card"]["exp_year"]), (7, 2033), body["card"].keys())

    def test_retry_after_of_a_429_is_waited_for_or_left_to_another_processor(self):
        """A 429's Retry-After (RFC 9110 10.2.3) is honoured: the retry on
        the same processor waits that long (seconds, or an HTTP-date); one
        past the payment's deadline is not waited for (no second call)."""
        # The date is made when the 429 goes out: made before the payment, a
        # slow machine could reach it (whole seconds) before the answer did.
        for wait in ("1", lambda: email.utils.formatdate(time.time() + 2.5, usegmt=True)):
            n0 = len(self.fake.requests)
            self.fake.mode, self.fake.retry_after = "429", wait
            r = self.pay(PAN_OK)
            self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), (wait, r))
            with self.fake.lock:
                t = [q[4] for q in self.fake.requests[n0:] if q[1].endswith("/v1/authorizations")]
            self.assertEqual(len(t), 2, wait)
            self.assertGreaterEqual(t[1] - t[0], 0.9, wait)
        n0 = len(self.fake.requests)
        self.fake.mode, self.fake.retry_after = "429", "3600"
        t0 = time.monotonic()
        r = self.pay(PAN_OK)
        self.assertGreaterEqual(r.status, 400, r)
        self.assertLess(time.monotonic() - t0, 5.0, r)
        self.assertEqual(len([q for q in self.fake.requests[n0:] if q[1].endswith("/v1/authorizations")]), 1)

    def refund_held(self, mode):
        """A paid charge's refund of 300 started on a thread while the fake
        processor holds refunds (mode): (its answer dict, the thread, the
        pending refund's id)."""
        r = self.pay(PAN_OK)
        self.assertEqual(r.status, 200, r)
        ch = r.json["latest_charge"]
        self.fake.mode = mode
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", self.c.post("/v1/refunds", {"charge": ch,
                                                                                          "amount": 300})))
        t.start()
        re_id = wait_for(lambda: ([x["id"] for x in self.c.get("/v1/refunds", {"charge": ch}).json["data"]]
                                  or [None])[0], what="the pending refund")
        return out, t, re_id

    def test_a_refund_is_not_updated_while_its_processor_call_runs(self):
        """The refund's outcome is written under its charge's lock; an update
        of its metadata meanwhile waits for that lock (as Stripe waits for an
        object another request holds) and then applies to the refund as the
        outcome left it, instead of writing back the pending refund it read
        before (it stayed pending for good)."""
        out, t, re_id = self.refund_held("slow_refund")
        try:
            u = self.c.post("/v1/refunds/" + re_id, {"metadata[note]": "x"})
        finally:
            t.join(10)
            self.fake.mode = "ok"
        self.assertEqual((out["r"].status, out["r"].json["status"]), (200, "succeeded"), out["r"])
        self.assertEqual((u.status, u.json["status"], u.json["metadata"]), (200, "succeeded", {"note": "x"}), u)
        self.assertIsNotNone(u.json["balance_transaction"])
        u = self.c.get("/v1/refunds/" + re_id)
        self.assertEqual((u.status, u.json["status"], u.json["metadata"]), (200, "succeeded", {"note": "x"}), u)

    def test_a_refund_not_yet_announced_is_updated_without_an_event(self):
        """A refund whose processor answer was lost stays pending with no
        event; a metadata update then sends none (it was a refund.updated
        about a refund its listeners had never heard of), and the
        refund.created that recovery sends later shows the update."""
        r = self.pay(PAN_OK)
        self.assertEqual(r.status, 200, r)
        self.fake.mode = "500"
        try:
            re = self.c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 300})
            self.assertEqual(re.status, 502, re)
            [pending] = self.c.get("/v1/refunds", {"payment_intent": r.json["id"]}).json["data"]
            self.assertEqual(pending["status"], "pending")
            u = self.c.post("/v1/refunds/" + pending["id"], {"metadata[note]": "x"})
            self.assertEqual((u.status, u.json["metadata"]), (200, {"note": "x"}), u)
        finally:
            self.fake.mode = "ok"

        def about():
            return [e for e in reversed(self.c.get("/v1/events", {"limit": 30}).json["data"])
                    if e["data"]["object"]["id"] == pending["id"]]
        self.assertEqual(about(), [])
        evs = wait_for(lambda: [e for e in about() if e["type"] == "refund.failed"] and about(),
                       timeout=30, what="recovery settles the refund")
        self.assertEqual(evs[0]["type"], "refund.created", [e["type"] for e in evs])
        self.assertEqual(evs[0]["data"]["object"]["metadata"], {"note": "x"})

    def test_another_merchant_naming_a_busy_object_is_told_it_is_missing_at_once(self):
        """Locks are by id for the whole gateway: merchant n naming m's
        charge while m's refund holds it used to wait lock_wait_ms and get
        429 (an id that never existed: 404 at once), telling n the id exists
        and is busy. Now the same 404, at once, and m's refund unharmed."""
        out, t, re_id = self.refund_held("slow_refund_long")
        n = self.daemon.client("n")
        ch = self.c.get("/v1/refunds/" + re_id).json["charge"]
        try:
            t0 = time.monotonic()
            got = n.post("/v1/refunds", {"charge": ch, "amount": 100})
            waited = time.monotonic() - t0
            none = n.post("/v1/refunds", {"charge": "ch_" + "Zq" * 12, "amount": 100})
            cus = n.post("/v1/customers/%s" % ch, {"metadata[x]": "y"})
        finally:
            t.join(10)
            self.fake.mode = "ok"
        self.assertLess(waited, 0.5, got)
        self.assertEqual((got.status, got.json["error"]["code"]), (404, "resource_missing"), got)
        self.assertEqual(got.json["error"]["message"].replace(ch, "X"),
                         none.json["error"]["message"].replace("ch_" + "Zq" * 12, "X"))
        self.assertEqual(cus.status, 404, cus)
        self.assertEqual((out["r"].status, out["r"].json["status"]), (200, "succeeded"), out["r"])

    def test_a_call_whose_connection_dies_unanswered_is_not_sent_again(self):
        """A capture that goes out on a kept-alive connection which then
        dies before any answer: libcurl would send it again on a fresh one
        (same reference), which a processor that refuses used references
        answers 409 and one that does not deduplicate repeats. Sent once;
        its outcome is unknown and is asked for, not re-sent."""
        r = self.pay(PAN_OK, capture_method="manual")
        self.assertEqual(r.status, 200, r)
        before = len(self.fake.calls("/capture"))
        self.fake.mode = "reset_capture"
        try:
            cap = self.c.post("/v1/payment_intents/%s/capture" % r.json["id"], {})
        finally:
            self.fake.mode = "ok"
        sent = self.fake.calls("/capture")[before:]
        self.assertEqual(len(sent), 1, [(m, p) for m, p, *_ in sent])
        self.assertNotEqual(cap.status, 200, cap)

    def test_an_authorization_that_captured_may_say_captured(self):
        """An authorization sent with capture: true answered "captured" is
        an approval (it counted as a bad response, asked its status, and
        five of them opened the breaker)."""
        before = processors(self.c)["fake"]
        self.fake.mode = "say_captured"
        try:
            for _ in range(6):
                r = self.pay(PAN_OK)
                self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        finally:
            self.fake.mode = "ok"
        after = processors(self.c)["fake"]
        self.assertEqual(after["breaker"], "closed", after)
        self.assertEqual(after["errors"], before["errors"], after)

    def test_an_answer_about_another_reference_is_no_answer(self):
        """An approval naming another reference than the one sent is not
        this payment's: its outcome is asked for, the reference fenced, and
        the payment made by a call of its own."""
        n0 = len(self.fake.calls("/v1/authorizations"))
        self.fake.mode = "wrong_ref"
        try:
            r = self.pay(PAN_OK)
        finally:
            self.fake.mode = "ok"
        self.assertEqual(r.status, 200, r)
        auths = self.fake.calls("/v1/authorizations")[n0:]
        self.assertEqual(len(auths), 2, [a[1] for a in auths])
        first = auths[0][3]["reference"]
        ch = self.c.get("/v1/charges/" + r.json["latest_charge"]).json
        self.assertNotEqual(ch["turnpike"]["attempt"], first, ch)

    def test_a_status_answer_without_operation_is_read_by_what_was_asked(self):
        """An authorization voided at the processor whose answer was lost:
        its status answer says voided and names no operation. It is about
        the authorization the gateway asked for, so it charged nothing: the
        reference is fenced and the payment goes on (it was taken as an
        approval: a payment succeeded with nothing charged)."""
        n0 = len(self.fake.calls("/v1/authorizations"))
        self.fake.mode = "voided_then_500"
        try:
            r = self.pay(PAN_OK)
        finally:
            self.fake.mode = "ok"
        auths = self.fake.calls("/v1/authorizations")[n0:]
        self.assertEqual(r.status, 200, r)
        first = auths[0][3]["reference"]
        self.assertEqual(len(auths), 2, [a[1] for a in auths])  # asked, fenced, then authorized again
        self.assertTrue(any(c[1].endswith("/%s/void" % first) for c in self.fake.calls("/void")))
        ch = self.c.get("/v1/charges/" + r.json["latest_charge"]).json
        self.assertNotEqual(ch["turnpike"]["attempt"], first, ch)

    def test_a_wait_for_a_busy_object_ends_in_lock_timeout(self):
        """An object held for longer than [server] lock_wait_ms (1000 here):
        the waiting request gets 429 lock_timeout when the wait ends, not at
        once, with Stripe-Should-Retry: true, and changed nothing."""
        out, t, re_id = self.refund_held("slow_refund_long")
        try:
            t0 = time.monotonic()
            u = self.c.post("/v1/refunds/" + re_id, {"metadata[note]": "x"})
            waited = time.monotonic() - t0
            self.assertEqual((u.status, u.json["error"]["code"]), (429, "lock_timeout"), u)
            self.assertEqual(u.headers.get("Stripe-Should-Retry"), "true", u)
            self.assertGreaterEqual(waited, 0.9, u)
        finally:
            t.join(10)
            self.fake.mode = "ok"
        self.assertEqual((out["r"].status, out["r"].json["status"]), (200, "succeeded"), out["r"])
        self.assertEqual(self.c.get("/v1/refunds/" + re_id).json["metadata"], {})

    def test_a_declined_refund_is_announced_created_then_failed(self):
        """Stripe announces every refund it creates: refund.created (as it
        stood while the processor was asked), then refund.updated,
        charge.refund.updated (sent for every refund update) and
        refund.failed; the charge keeps its money."""
        r = self.pay(PAN_OK)
        self.assertEqual(r.status, 200, r)
        self.fake.mode = "decline_refund"
        try:
            re = self.c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 400})
        finally:
            self.fake.mode = "ok"
        self.assertEqual((re.status, re.json["status"]), (200, "failed"), re)
        evs = [e for e in reversed(self.c.get("/v1/events", {"limit": 20}).json["data"])
               if e["data"]["object"]["id"] == re.json["id"]]
        self.assertEqual([(e["type"], e["data"]["object"]["status"]) for e in evs],
                         [("refund.created", "pending"), ("refund.updated", "failed"),
                          ("charge.refund.updated", "failed"), ("refund.failed", "failed")])
        self.assertEqual(evs[1]["data"]["previous_attributes"]["status"], "pending")
        self.assertEqual(evs[2]["data"]["previous_attributes"]["status"], "pending")
        ch = self.c.get("/v1/charges/" + r.json["latest_charge"]).json
        self.assertEqual((ch["amount_refunded"], ch["refunded"]), (0, False))
        # the issuer's reason, in Stripe's failure_reason words
        self.assertEqual(re.json["failure_reason"], "declined", re)
        self.fake.mode = "decline_refund"
        try:
            for code, reason in (("stolen_card", "lost_or_stolen_card"), ("expired_card", "expired_or_canceled_card"),
                                 ("insufficient_funds", "insufficient_funds")):
                self.fake.refund_decline = code
                got = self.c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 100})
                self.assertEqual((got.json["status"], got.json["failure_reason"]), ("failed", reason), got)
        finally:
            self.fake.mode, self.fake.refund_decline = "ok", "generic_decline"

    def test_broken_answers_fail_the_call_not_the_gateway(self):
        before = processors(self.c)["fake"]
        for mode in ("garbage", "huge", "500"):
            self.fake.mode = mode
            r = self.pay(PAN_OK)
            self.assertGreaterEqual(r.status, 400, (mode, r))
            self.assertNotEqual(r.json.get("status"), "succeeded", (mode, r))
        self.fake.mode = "ok"
        after = processors(self.c)["fake"]
        self.assertGreaterEqual(after["errors"] - before["errors"], 3, after)
        self.assertGreaterEqual(after["failures"] - before["failures"], 3, after)
        # the daemon still serves payments once the processor behaves
        wait_for(lambda: processors(self.c)["fake"]["breaker"] == "closed", what="breaker closed")
        r = self.pay(PAN_OK)
        self.assertEqual(r.json.get("status"), "succeeded", r)


class LostVoidIsFenced(unittest.TestCase):
    """A cancel's void whose answer is lost (held by the processor past the
    timeout) is settled by recovery only after its reference is fenced: the
    void, arriving late, then moves nothing, so the PaymentIntent that stays
    requires_capture really still holds the card. (Settled as "not done"
    without the fence, the late void released the hold under a capturable
    PaymentIntent.)"""

    def test_a_lost_void_is_fenced_before_it_is_settled_as_not_done(self):
        fake = FakeProcessor()
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config=("[routing]\nrecovery_interval_ms = 200\n\n"
                            "[processor.fake]\ntype = restjson\nendpoint = http://127.0.0.1:%d/p/fake\n"
                            "timeout_ms = 300\nhealth_interval_ms = 0\n") % fake.port)
            c = d.client("m")
            r = c.post("/v1/payment_intents", {"amount": 2000, "currency": "usd", "confirm": "true",
                                               "capture_method": "manual", "payment_method": "pm_card_visa"})
            self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
            pi = r.json["id"]
            fake.stall_s, fake.mode = 4.0, "stall_void"
            key = new_key()
            r = c.post("/v1/payment_intents/%s/cancel" % pi, {}, headers={"Idempotency-Key": key})
            self.assertEqual(r.status, 502, r)  # unknown for now
            voids = wait_for(lambda: [q[3]["reference"] for q in fake.calls("/void")
                                      if not q[3]["reference"].endswith("-fence")], what="the void")
            wait_for(lambda: voids[0] in fake.fenced, timeout=20, what="the void's reference fenced")
            # settled as not done; the client's retry gets that answer
            r = wait_for(lambda: (lambda x: x if x.status != 409 and x.json["error"].get("tp_code") != 6018
                                  else None)(
                c.post("/v1/payment_intents/%s/cancel" % pi, {}, headers={"Idempotency-Key": key})),
                timeout=20, what="the cancel settled")
            # not released: a processor's answer (processor_void_declined), not a card's
            self.assertEqual((r.status, r.json["error"]["tp_code"]), (502, 6034), r)
            self.assertEqual(r.json["error"]["payment_intent"]["status"], "requires_capture", r)
            time.sleep(fake.stall_s)  # the held void has come through by now: refused
            self.assertEqual(fake.applied, [])
            fake.mode = "ok"
            r = c.post("/v1/payment_intents/%s/capture" % pi, {})
            self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)
        finally:
            d.cleanup()
            fake.close()


# -- the real simulator -------------------------------------------------------

class WithSimulator(harness.DaemonTestCase):
    WITH_SIM = True

    @classmethod
    def config(cls):
        base = "http://%s/p" % cls.sim.rest
        ini = ""
        for name, prio in (("a", 1), ("b", 2)):
            ini += ("[processor.%s]\ntype = restjson\nendpoint = %s/%s\ntimeout_ms = 2000\n"
                    "priority = %d\nhealth_interval_ms = 100\nbreaker_consecutive = 3\n"
                    "breaker_open_ms = 60000\nbreaker_half_open_probes = 2\n\n") % (name, base, name, prio)
        return ini

    def setUp(self):
        self.c = self.daemon.client("m")
        self.sim.faults(processor="a", outage=False)
        self.sim.faults(processor="b", outage=False)
        wait_for(lambda: all(p["breaker"] == "closed" for p in processors(self.c).values()),
                 what="all breakers closed")

    def pay(self, pan):
        return self.c.post("/v1/payment_intents",
                           {"amount": 1500, "currency": "usd", "confirm": "true",
                            "payment_method_data": card(pan)},
                           headers={"Idempotency-Key": new_key()})

    def charged_payments(self):
        return self.sim.journal()["summary"]

    def test_a_card_retried_with_processing_error_does_not_open_the_breaker(self):
        # breaker_consecutive = 3: soft declines (each payment is tried on a,
        # retried, then cascaded to b) must not count toward it; nor, past
        # breaker_min_calls (20), toward the failure rate more than once a
        # minute per card: ten confirms of this one card opened both
        # breakers, and one merchant sending it shut every merchant out.
        for _ in range(14):
            r = self.pay("4000000000000119")
            self.assertEqual(r.status, 402, r)
            self.assertEqual(r.json["error"]["decline_code"], "processing_error", r)
        ps = processors(self.c)
        self.assertEqual((ps["a"]["breaker"], ps["b"]["breaker"]), ("closed", "closed"), ps)
        r = self.pay(PAN_OK)
        self.assertEqual(r.json.get("status"), "succeeded", r)
        att = self.c.get("/v1/payment_intents/%s/attempts" % r.json["id"]).json["data"]
        self.assertEqual(len(att), 1, att)  # the first processor the router chose took it

    def test_the_cvc_check_card_through_the_simulator(self):
        # 4000000000000101 declines only when a CVC is given (Stripe's test card)
        r = self.c.post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "confirm": "true",
                                                "payment_method_data": card("4000000000000101", cvc=None)},
                        headers={"Idempotency-Key": new_key()})
        self.assertEqual(r.json.get("status"), "succeeded", r)
        r = self.pay("4000000000000101")
        self.assertEqual((r.status, r.json["error"]["decline_code"]), (402, "incorrect_cvc"), r)

    def test_payments_go_through_rest(self):
        before = self.charged_payments()["charges"]
        r = self.pay(PAN_OK)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        r = self.pay(PAN_INSUFFICIENT)
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"]["decline_code"], "insufficient_funds")
        s = self.charged_payments()
        self.assertEqual(s["charges"], before + 1, s)
        self.assertEqual(s["double_charges"], 0, s)
        ps = processors(self.c)
        self.assertEqual(sorted(ps), ["a", "b"])
        self.assertGreaterEqual(sum(p["calls"] for p in ps.values()), 2, ps)
        entries = self.sim.journal()["entries"]
        self.assertTrue(any(e["status"] == "declined" and e["decline_code"] == "insufficient_funds"
                            for e in entries), entries)

    def test_outage_opens_breaker_health_checks_close_it(self):
        self.sim.faults(processor="a", outage=True)
        t0 = time.monotonic()
        a = wait_for(lambda: (lambda p: p if p["breaker"] == "open" else None)(processors(self.c)["a"]),
                     what="breaker of a open")
        opened_after = time.monotonic() - t0
        self.assertEqual(a["health"], "down", a)
        self.assertGreaterEqual(a["breaker_opens"], 1, a)
        # 3 failed checks 100 ms apart: well under 2 s
        self.assertLess(opened_after, 2.0)
        # b still takes payments; readiness holds with one usable processor
        r = self.pay(PAN_OK)
        self.assertEqual(r.json.get("status"), "succeeded", r)
        self.assertEqual(Client(HOST, self.daemon.port).get("/readyz").status, 200)
        # while the outage lasts the breaker stays open (open_ms is long and
        # failing checks keep it open)
        time.sleep(0.5)
        self.assertEqual(processors(self.c)["a"]["breaker"], "open")
        self.sim.faults(processor="a", outage=False)
        wait_for(lambda: processors(self.c)["a"]["breaker"] == "closed", what="breaker of a closed")
        self.assertEqual(processors(self.c)["a"]["health"], "up")

        def transitions():  # logged just after the move the API shows
            seq = [json.loads(l) for l in self.daemon.log_text().splitlines()
                   if '"processor_breaker"' in l and '"a"' in l]
            return [(e["from"], e["to"]) for e in seq]
        wait_for(lambda: ("half_open", "closed") in transitions(), what="the breaker's closing logged")
        trans = transitions()
        self.assertIn(("closed", "open"), trans)
        self.assertIn(("open", "half_open"), trans)
        self.assertIn(("half_open", "closed"), trans)

    def test_all_processors_down_makes_readyz_fail(self):
        ready = Client(HOST, self.daemon.port)
        self.assertEqual(ready.get("/readyz").status, 200)
        self.sim.faults(processor="a", outage=True)
        self.sim.faults(processor="b", outage=True)
        r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(ready.get("/readyz")),
                     what="readyz 503")
        self.assertEqual(r.json["reason"], "no_processor_available")
        self.sim.faults(processor="a", outage=False)
        self.sim.faults(processor="b", outage=False)
        wait_for(lambda: ready.get("/readyz").status == 200, what="readyz 200")


class IsoProcessorInRegistry(unittest.TestCase):
    """An iso8583 processor: its connector starts, health follows the link."""

    def test_iso_link_health_and_payment(self):
        sim = Sim()
        d = Daemon()
        try:
            iso = sim.iso
            d.create_merchant("m")
            d.start(config=("[processor.acq]\ntype = iso8583\nendpoint = %s\n"
                            "terminal_id = TERM0001\nmerchant_id = TURNPIKE0000001\n"
                            "health_interval_ms = 100\n") % iso)
            c = d.client("m")
            p = wait_for(lambda: (lambda p: p if p["health"] == "up" else None)(processors(c)["acq"]),
                         what="iso health up")
            self.assertEqual(p["type"], "iso8583")
            self.assertIs(p["can_query_status"], False)
            self.assertEqual(p["link"]["link"], "up", p)
            r = c.post("/v1/payment_intents", {"amount": 1200, "currency": "usd", "confirm": "true",
                                               "payment_method_data": card(PAN_OK)},
                       headers={"Idempotency-Key": new_key()})
            self.assertEqual(r.json.get("status"), "succeeded", r)
        finally:
            d.cleanup()
            sim.stop()


class SandboxTestCardsKeepTheBreakerClosed(unittest.TestCase):
    """processing_error is a test card's answer in the sandbox (as in
    Stripe's test mode), not the processor failing: a run of them must not
    open the breaker of the only processor and refuse every payment."""

    def test_processing_error_cards_then_a_good_card(self):
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start()
            c = d.client("m")
            for _ in range(8):
                r = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd", "confirm": "true",
                                                   "payment_method_data": card("4000000000000119")})
                self.assertEqual(r.status, 402, r)
                self.assertEqual(r.json["error"]["decline_code"], "processing_error", r)
            p = processors(c)["sandbox"]
            self.assertEqual(p["breaker"], "closed", p)
            self.assertGreaterEqual(p["declined"], 8, p)
            r = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd", "confirm": "true",
                                               "payment_method_data": card(PAN_OK)})
            self.assertEqual(r.json.get("status"), "succeeded", r)
        finally:
            d.cleanup()


class OverIPv6(unittest.TestCase):
    """Everything on ::1: the gateway's API, the simulator's REST and ISO 8583
    listeners, and both connectors reaching them ([::1]:PORT endpoints)."""

    def test_gateway_and_processors_on_ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback on this machine")
        sim = Sim(host="::1")
        d = Daemon(host="::1")
        try:
            self.assertTrue(sim.rest.startswith("[::1]:") and sim.iso.startswith("[::1]:"), (sim.rest, sim.iso))
            d.create_merchant("m")
            d.start(config=("[processor.rest]\ntype = restjson\nendpoint = http://%s/p/rest\npriority = 1\n"
                            "currencies = usd\n"
                            "[processor.acq]\ntype = iso8583\nendpoint = %s\npriority = 1\ncurrencies = eur\n"
                            "terminal_id = TERM0001\nmerchant_id = TURNPIKE0000001\n"
                            "health_interval_ms = 100\n") % (sim.rest, sim.iso))
            self.assertTrue(d.addr.startswith("[::1]:"), d.addr)
            c = d.client("m")
            wait_for(lambda: processors(c)["acq"]["health"] == "up", what="iso link up over IPv6")
            for cur, protocol in (("usd", "rest"), ("eur", "iso")):
                r = c.post("/v1/payment_intents", {"amount": 1300, "currency": cur, "confirm": "true",
                                                   "payment_method_data": card(PAN_OK)},
                           headers={"Idempotency-Key": new_key()})
                self.assertEqual(r.json.get("status"), "succeeded", r)
                auths = [e for e in sim.journal()["entries"]
                         if e["protocol"] == protocol and e["amount"] == 1300 and e["currency"].lower() in (cur, "978")]
                self.assertTrue(auths, (protocol, sim.journal()))
        finally:
            d.cleanup()
            sim.stop()


class BadConfig(unittest.TestCase):
    def start_fails(self, ini, needle):
        d = Daemon()
        try:
            with self.assertRaises(RuntimeError):
                d.start(config=ini)
            self.assertIn("processor_config_invalid", d.log_text())
            self.assertIn(needle, d.log_text())
        finally:
            d.cleanup()

    def test_unknown_type(self):
        self.start_fails("[processor.x]\ntype = telex\n", "unknown type")

    def test_bad_endpoint(self):
        self.start_fails("[processor.x]\ntype = restjson\nendpoint = gopher://h/x\n", "scheme")

    def test_credentials_in_url(self):
        self.start_fails("[processor.x]\ntype = restjson\nendpoint = http://u:p@127.0.0.1:1/x\n",
                         "credentials in the URL")

    def test_a_bad_route_rule_stops_serve(self):
        """A [route.*] value that cannot be read was dropped (amount_min =
        10.00: the bound gone, the rule took every amount), cut short
        (currency = usd,eur: only usd), ignored (an unknown key, a ninth
        metadata condition) or left to fail every payment later (an unknown
        processor): each now stops serve, naming section and key."""
        procs = ("[processor.a]\ntype = restjson\nendpoint = http://127.0.0.1:9/a\nhealth_interval_ms = 0\n"
                 "[processor.Bee]\ntype = restjson\nendpoint = http://127.0.0.1:9/b\nhealth_interval_ms = 0\n")
        nine = "".join("metadata.k%d = v\n" % i for i in range(9))
        for rule, key in (("amount_min = 10.00", "amount_min"), ("currency = usd,eur", "currency"),
                          ("currencies = eur", "currencies"), ("brand = vsa", "brand"), ("country = usa", "country"),
                          ("amount_min = 5000\namount_max = 100", "amount_min"), ("processors = nosuch", "processors"),
                          ("processors = a;bee", "processors"), ("split = a:70,bee:70", "split"),
                          ("split = a:70;bee:30", "split"), ("strategy = orderd", "strategy"),
                          (nine, "metadata.k8"), ("metadata.%s = x" % ("k" * 41), "metadata."),
                          ("merchant = nosuch", "merchant"), ("processors =", "processors"),
                          ("metadata.tier =", "metadata.tier")):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError, msg=rule):
                    d.start(config=procs + "[route.r]\n" + rule + "\n")
                line = [x for x in d.log_text().splitlines() if "route_config_invalid" in x]
                self.assertEqual(len(line), 1, (rule, d.log_text()[-2000:]))
                self.assertIn('"section":"route.r"', line[0])
                self.assertIn('"key":"%s' % key, line[0], rule)
            finally:
                d.cleanup()
        # names of processors are read as their sections are: in any case
        d = Daemon()
        try:
            d.start(config=procs + "[route.r]\nprocessors = A, bee\nsplit = bee:60, A:40\nstrategy = ordered\n")
        finally:
            d.cleanup()

    def test_a_client_key_others_can_read_is_refused(self):
        """The mutual-TLS key of a processor is a secret: 0644 stops serve."""
        d = tempfile.mkdtemp(prefix="tp-ck-")
        try:
            key = os.path.join(d, "client.key")
            with open(key, "w") as f:
                f.write("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
            os.chmod(key, 0o644)
            self.start_fails("[processor.x]\ntype = restjson\nendpoint = https://127.0.0.1:1/x\nclient_cert = %s\n"
                             "client_key = %s\n" % (key, key), "can be read by any user")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_a_plaintext_endpoint_off_this_host_is_warned_about(self):
        d = Daemon()
        try:
            d.start(config="[processor.far]\ntype = restjson\nendpoint = http://192.0.2.7:80/x\n"
                           "health_interval_ms = 0\n[processor.near]\ntype = restjson\n"
                           "endpoint = http://127.0.0.1:9/y\nhealth_interval_ms = 0\n")
            warned = [x for x in d.log_text().splitlines() if "processor_plaintext_endpoint" in x]
            self.assertEqual(len(warned), 1, warned)
            self.assertIn('"section":"processor.far"', warned[0])
        finally:
            d.cleanup()

    def test_a_setting_that_cannot_be_read_stops_serve(self):
        """A value or key serve could not read fell back to a default that is
        weaker than written: a processor with no (or an empty) type became
        the sandbox that approves everything, a misspelt webhooks key left
        private destinations allowed, an unreadable rate limit turned it off,
        a dispute fee in the wrong currency charged 0, an empty TLS
        certificate served plain HTTP. Each now stops serve."""
        for ini, needle in (
                ("[processor.acq]\nendpoint = http://127.0.0.1:9/p\n", "missing"),
                ("[processor.acq]\ntype =\nendpoint = http://127.0.0.1:9/p\n", "empty"),
                ("[processor.acq]\ntype = restjson\nendpoint = http://127.0.0.1:9/p\nhealth_intervall_ms = 0\n",
                 "unknown key"),
                ("[processor.acq]\ntype = sandbox\napi_key = k\n", "in-process"),
                ("[webhooks]\nprivate_network = deny\n", "config_unknown_key"),
                # a setting above every section (its section line lost): it ran on the default
                ("available_after_seconds = 2\n[balance]\n", "config_outside_section"),
                # each read before serve listens, each weaker than written when read as its default
                ("[auth]\ncache_seconds = -5\n", "config_invalid_stop"),
                ("[audit]\ncheckpoint_entries = abc\n", "config_invalid_stop"),
                ("[oauth]\ntoken_ttl = 5\n", "config_invalid_stop"),
                ("[search]\nmax_scan_rows = lots\n", "config_invalid_stop"),
                ("[search]\nmax_concurrent = 0\n", "config_invalid_stop"),
                ("[routing]\nstartup_settle_ms = soon\n", "config_invalid_stop"),
                ("[store]\ncompress = maybe\n", "config_invalid_stop"),
                ("[alerts]\nalpha = 7\n", "config_invalid_stop"),
                ("[alerts]\nmerchants = nope\n", "config_invalid_stop"),
                ("[webhooks]\nretry_schedule = a,b\n", "config_invalid_stop"),
                ("[log]\nbuffer_ms = 5000\n", "config_invalid_stop"),
                ("[log]\nrequests = maybe\n", "config_invalid_stop"),
                ("[metrics]\npublic = 2\n", "config_invalid_stop"),
                ("[server]\nthreads = 4abc\n", "config_invalid"),
                ("[ratelimit]\nrate = 2/s\n", "config_invalid_stop"),
                ("[balance]\navailable_after_seconds = 7d\n", "config_invalid_stop"),
                ("[disputes]\nfee = 15.50\n", "config_invalid"),
                # a fee of every currency that is too large in one (CLF, 4 decimals): 0 there
                ("[disputes]\nfee = 1000000\n", "config_invalid"),
                ("[tls]\ncert =\nkey =\n", "tls_config")):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError, msg=ini):
                    d.start(config=ini)
                self.assertIn(needle, d.log_text(), ini)
            finally:
                d.cleanup()

    def test_a_blank_environment_variable_is_not_set(self):
        # a container's empty variables: neither refused nor hiding the file's value
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config="[balance]\navailable_after_seconds = 7\n",
                    extra_env={"TURNPIKE_LOG_LEVEL": "", "TURNPIKE_SERVER_THREADS": "",
                               "TURNPIKE_BALANCE_AVAILABLE_AFTER_SECONDS": ""})
            c = d.client("m")
            pi = c.post("/v1/payment_intents", {"amount": 900, "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa"}).json
            ch = c.get("/v1/charges/" + pi["latest_charge"]).json
            bt = c.get("/v1/balance_transactions/" + ch["balance_transaction"]).json
            self.assertEqual(bt["available_on"] - bt["created"], 7, bt)  # the file's value held
        finally:
            d.cleanup()

    def test_an_environment_override_that_is_not_valid_stops_serve(self):
        for var, val in (("TURNPIKE_SERVER_THREADS", "abc"), ("TURNPIKE_LOG_LEVEL", "verbose")):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError):
                    d.start(extra_env={var: val})
                self.assertIn('"variable":"%s"' % var, d.log_text())
            finally:
                d.cleanup()
        # a dispute fee that is no amount started, and every chargeback was free
        for var, val in (("TURNPIKE_DISPUTES_FEE", "abc"), ("TURNPIKE_DISPUTES_FEE", "15.5"),
                         ("TURNPIKE_DISPUTES_FEE_KWD", "1.2345"), ("TURNPIKE_DISPUTES_FEE_USD", "abc"),
                         ("TURNPIKE_DISPUTES_FEE_XYZ", "1"), ("TURNPIKE_DISPUTES_FEE_usd", "20")):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError, msg=var + "=" + val):
                    d.start(extra_env={var: val})
                self.assertIn('"event":"config_invalid"', d.log_text())
            finally:
                d.cleanup()

    def test_a_config_line_not_in_utf8_is_logged_with_its_fields(self):
        """A Latin-1 byte in a value: the config_invalid line kept none of its
        fields (section, key), the whole line refused for one byte."""
        import json as _json
        d = Daemon()
        try:
            ini = os.path.join(d.root, "latin1.ini")
            with open(ini, "wb") as f:
                f.write(b"[alerts]\nk = 4\xff\n")
            with self.assertRaises(RuntimeError):
                d.start(args=["--config", ini])
            lines = [_json.loads(x) for x in d.log_text().splitlines() if '"config_invalid"' in x]
            self.assertTrue(lines, d.log_text())
            self.assertEqual((lines[0].get("section"), lines[0].get("key")), ("alerts", "k"), lines[0])
        finally:
            d.cleanup()

    def test_a_misspelled_section_is_refused(self):
        """[procesor.acq] was ignored and the sandbox took every payment."""
        for ini in ("[procesor.acq]\ntype = restjson\nendpoint = http://127.0.0.1:1/x\n", "[serer]\nthreads = 2\n"):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError):
                    d.start(config=ini)
                self.assertIn('"event":"config_unknown_section"', d.log_text())
            finally:
                d.cleanup()


if __name__ == "__main__":
    harness.main()
