"""Webhooks: the endpoints API, signed deliveries from the outbox, retries
with backoff, per-endpoint isolation, manual resend, auto-disable and
delivery after a kill -9.

The receiving endpoints are a threaded http.server on 127.0.0.1 in this
process; each test uses its own merchant (and URL path) so deliveries of one
test never reach another's endpoint."""
import hashlib
import hmac
import ipaddress
import http.server
import json
import os
import socket
import threading
import time
import unittest

from harness import Daemon, DaemonTestCase, all_stored_text, main, new_key, preload_env

WE = "/v1/webhook_endpoints"
PI = "/v1/payment_intents"
BASE_CONFIG = """[webhooks]
retry_base_ms = 100
retry_max_ms = 400
scan_interval_ms = 300
timeout_ms = 1500
connect_timeout_ms = 1000
stop_wait_ms = 1000
"""


def verify_signature(body, header, secret, tolerance=300):
    """Stripe's scheme: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>."""
    parts = {}
    for item in header.split(","):
        k, _, v = item.partition("=")
        parts.setdefault(k, []).append(v)
    t = parts["t"][0]
    want = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    if abs(time.time() - int(t)) > tolerance:
        return False
    return any(hmac.compare_digest(want, v) for v in parts.get("v1", []))


class Receiver:
    """A webhook receiver. behaviour[path] is a function (event, n) -> (status,
    sleep_s), n counting that event's earlier requests on that path.
    listen=False binds its port and refuses connections until listen()."""

    def __init__(self, port=0, listen=True):
        self.lock = threading.Lock()
        self.got = []           # dicts: path, headers, body, event, t
        self.behaviour = {}
        recv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                try:
                    ev = json.loads(body.decode("utf-8"))
                except ValueError:
                    ev = None
                with recv.lock:
                    seen = sum(1 for g in recv.got if g["path"] == self.path and g["event"] and ev
                               and g["event"].get("id") == ev.get("id"))
                    recv.got.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                     "event": ev, "t": time.monotonic()})
                    fn = recv.behaviour.get(self.path)
                status, sleep_s = fn(ev, seen) if fn else (200, 0)
                if sleep_s:
                    time.sleep(sleep_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        class S(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = S(("127.0.0.1", port), H, bind_and_activate=False)
        try:
            self.server.server_bind()
        except OSError:
            self.server.server_close()
            raise
        self.port = self.server.server_address[1]
        self.thread = None
        if listen:
            self.listen()

    def listen(self):
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def on(self, path):
        with self.lock:
            return [g for g in self.got if g["path"] == path]

    def wait_for(self, path, pred, timeout=10.0):
        """Wait until pred(requests on path) is true; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.on(path)
            if pred(got):
                return got
            if time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self):
        if self.thread:
            self.server.shutdown()
        self.server.server_close()


def event_ids(got, types=None):
    return {g["event"]["id"] for g in got if g["event"] and (types is None or g["event"]["type"] in types)}


def pay(c, amount=1000):
    r = c.post(PI, {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
    assert r.status == 200, r
    return r.json


def pi_events(c, pi_id):
    """Every event about a PaymentIntent or its charge, from /v1/events."""
    out = []
    for e in c.list_all("/v1/events"):
        o = e["data"]["object"]
        if o.get("id") == pi_id or o.get("payment_intent") == pi_id:
            out.append(e)
    return out


class WebhooksTest(DaemonTestCase):
    MERCHANTS = ("crud", "other", "pay", "filter", "retry", "slow", "resend", "pending", "version", "idem")

    @classmethod
    def setUpClass(cls):
        cls.recv = Receiver()
        cls.daemon = Daemon()
        try:
            for name in cls.MERCHANTS:
                cls.daemon.create_merchant(name)
            cls.daemon.start(config=BASE_CONFIG + "disable_after_s = 3600\n")
        except Exception:
            cls.daemon.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        cls.recv.close()
        cls.daemon.cleanup()
        assert rc == 0, "daemon exit %r" % rc

    def endpoint(self, merchant, path, events=("*",)):
        r = self.c(merchant).post(WE, {"url": self.recv.url(path), "enabled_events": list(events)})
        self.assertEqual(r.status, 200, r)
        return r.json

    # ---- API ---------------------------------------------------------------
    def test_a_replayed_create_shows_the_secret_and_the_store_never_kept_it_plain(self):
        """An Idempotency-Key keeps the create's reply for a retry, secret and
        all (stripe-node keys every POST): the retry gets the same bytes, and
        the stored reply holds the secret sealed, never as written."""
        c = self.c("idem")
        key = new_key("we")
        r = c.post(WE, {"url": "https://example.test/idem", "enabled_events[]": "charge.succeeded"}, idem=key)
        self.assertEqual(r.status, 200, r)
        again = c.post(WE, {"url": "https://example.test/idem", "enabled_events[]": "charge.succeeded"}, idem=key)
        self.assertEqual((again.status, again.headers.get("Idempotent-Replayed"), again.body),
                         (200, "true", r.body))
        secret = r.json["secret"].encode()
        self.assertNotIn(secret, all_stored_text(self.daemon.db_path()))
        self.assertNotIn(secret[6:], all_stored_text(self.daemon.db_path()))
        # only that reply: another's metadata named secret replays as it was
        for value in ("whsec_" + "x" * 300, 'whsec_a"b', "whsec_abc"):
            key = new_key("cus")
            first = c.post("/v1/customers", {"email": "x@example.com", "metadata[secret]": value}, idem=key)
            self.assertEqual(first.status, 200, first)
            again = c.post("/v1/customers", {"email": "x@example.com", "metadata[secret]": value}, idem=key)
            self.assertEqual((again.status, again.body), (200, first.body), value)
        # and an endpoint whose metadata has a secret keeps its own sealed, the metadata as given
        key = new_key("we")
        r = c.post(WE, {"url": "https://example.test/idem2", "enabled_events[]": "charge.succeeded",
                        "metadata[secret]": "whsec_mine"}, idem=key)
        again = c.post(WE, {"url": "https://example.test/idem2", "enabled_events[]": "charge.succeeded",
                            "metadata[secret]": "whsec_mine"}, idem=key)
        self.assertEqual((again.status, again.body), (200, r.body))
        self.assertNotIn(r.json["secret"][6:].encode(), all_stored_text(self.daemon.db_path()))

    def test_crud_secret_only_on_create(self):
        c = self.c("crud")
        r = c.post(WE, {"url": "https://example.test/hook", "enabled_events": ["charge.succeeded", "charge.failed"],
                        "description": "orders", "metadata": {"team": "pay"}})
        self.assertEqual(r.status, 200, r)
        ep = r.json
        self.assertTrue(ep["id"].startswith("we_"), ep)
        self.assertEqual(ep["object"], "webhook_endpoint")
        self.assertTrue(ep["secret"].startswith("whsec_") and len(ep["secret"]) >= 38, ep)
        self.assertEqual(ep["status"], "enabled")
        self.assertEqual(ep["enabled_events"], ["charge.succeeded", "charge.failed"])
        self.assertEqual(ep["metadata"], {"team": "pay"})
        self.assertEqual(ep["description"], "orders")
        self.assertIs(ep["livemode"], False)
        self.assertIsNone(ep["application"])
        self.assertIsInstance(ep["created"], int)

        got = c.get(WE + "/" + ep["id"])
        self.assertEqual(got.status, 200, got)
        self.assertNotIn("secret", got.json)
        self.assertNotIn(ep["secret"].encode(), got.body)
        self.assertEqual(got.json["url"], "https://example.test/hook")

        up = c.post(WE + "/" + ep["id"], {"url": "http://example.test/v2", "enabled_events": ["*"],
                                          "disabled": "true", "metadata": {"team": "", "x": "1"}})
        self.assertEqual(up.status, 200, up)
        self.assertEqual(up.json["status"], "disabled")
        self.assertEqual(up.json["url"], "http://example.test/v2")
        self.assertEqual(up.json["enabled_events"], ["*"])
        self.assertEqual(up.json["metadata"], {"x": "1"})
        self.assertNotIn("secret", up.json)
        self.assertEqual(c.get(WE + "/" + ep["id"]).json["status"], "disabled")
        again = c.post(WE + "/" + ep["id"], {"disabled": "false"})
        self.assertEqual(again.json["status"], "enabled", again)

        # Another merchant sees nothing of it.
        self.assertStripeError(self.c("other").get(WE + "/" + ep["id"]), 404, code="resource_missing")
        self.assertEqual(self.c("other").get(WE).json["data"], [])

        # List with Stripe's cursors.
        ids = [ep["id"]] + [c.post(WE, {"url": "https://example.test/%d" % i, "enabled_events": ["*"]}).json["id"]
                            for i in range(3)]
        lst = c.get(WE, {"limit": 2})
        self.assertEqual(lst.status, 200, lst)
        self.assertEqual(lst.json["object"], "list")
        self.assertEqual(lst.json["url"], WE)
        self.assertTrue(lst.json["has_more"])
        self.assertEqual([e["id"] for e in lst.json["data"]], ids[::-1][:2])
        rest = c.get(WE, {"limit": 10, "starting_after": lst.json["data"][-1]["id"]})
        self.assertEqual([e["id"] for e in rest.json["data"]], ids[::-1][2:])
        self.assertFalse(rest.json["has_more"])
        before = c.get(WE, {"limit": 1, "ending_before": ids[0]})
        self.assertEqual([e["id"] for e in before.json["data"]], [ids[1]])
        self.assertTrue(before.json["has_more"])
        for e in lst.json["data"] + rest.json["data"]:
            self.assertNotIn("secret", e)
        self.assertStripeError(c.get(WE, {"starting_after": "we_nope"}), 400)
        self.assertStripeError(c.get(WE, {"limit": 0}), 400, param="limit")

        d = c.delete(WE + "/" + ep["id"])
        self.assertEqual(d.status, 200, d)
        self.assertEqual(d.json, {"id": ep["id"], "object": "webhook_endpoint", "deleted": True})
        self.assertStripeError(c.get(WE + "/" + ep["id"]), 404, code="resource_missing")
        self.assertStripeError(c.delete(WE + "/" + ep["id"]), 404)
        for i in ids[1:]:
            self.assertEqual(c.delete(WE + "/" + i).status, 200)

    def test_validation_errors(self):
        c = self.c("crud")
        self.assertStripeError(c.post(WE, {"enabled_events": ["*"]}), 400, param="url")
        for bad in ("ftp://example.test/x", "not a url", "http://", "https:///path", "http://exa mple.test/",
                    "javascript:alert(1)", "http://example.test/" + "a" * 2100, "//example.test/x",
                    "http://example.test:0/", "https://example.test\\@evil.test/", "https://example.test/a\\b",
                    "http://\u2603.example/", "https://b\u00fccher.example/hook"):  # not ASCII: its xn-- form
            self.assertStripeError(c.post(WE, {"url": bad, "enabled_events": ["*"]}), 400, param="url")
        ok = c.post(WE, {"url": "https://xn--bcher-kva.example/hook", "enabled_events": ["*"]})
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(c.delete(WE + "/" + ok.json["id"]).status, 200)
        self.assertStripeError(c.post(WE, {"url": "https://example.test/"}), 400, param="enabled_events")
        err = self.assertStripeError(c.post(WE, {"url": "https://example.test/",
                                                 "enabled_events": ["charge.succeeded", "charge.exploded"]}),
                                     400, param="enabled_events[1]")
        self.assertIn("charge.exploded", err["message"])
        self.assertStripeError(c.post(WE, {"url": "https://example.test/", "enabled_events": ["*"],
                                           "colour": "red"}), 400, param="colour")
        self.assertStripeError(c.post(WE, {"url": "https://example.test/", "enabled_events": ["*"],
                                           "description": "x" * 5001}), 400, param="description")
        # connect=true asks for connected accounts' events, which there are none of
        before = len(c.get(WE).json["data"])
        err = self.assertStripeError(c.post(WE, {"url": "https://example.test/c", "enabled_events": ["*"],
                                                 "connect": "true"}), 400, param="connect")
        self.assertEqual(err["tp_code"], 1101, err)  # parameter_unsupported
        self.assertEqual(len(c.get(WE).json["data"]), before)
        self.assertStripeError(c.post(WE + "/we_missing", {"disabled": "true"}), 404)
        self.assertStripeError(c.post(WE + "/we_missing", {"disabled": "maybe"}), 400, param="disabled")
        # 16 endpoints per merchant, like Stripe.
        made = []
        try:
            for i in range(16):
                r = c.post(WE, {"url": "https://example.test/%d" % i, "enabled_events": ["*"]})
                if r.status != 200:
                    break
                made.append(r.json["id"])
            self.assertEqual(len(made), 16)
            self.assertStripeError(c.post(WE, {"url": "https://example.test/x", "enabled_events": ["*"]}), 400)
        finally:
            for i in made:
                c.delete(WE + "/" + i)

    # ---- delivery --------------------------------------------------------------
    def test_payment_events_are_delivered_signed(self):
        ep = self.endpoint("pay", "/pay")
        c = self.c("pay")
        pi = pay(c)
        want = {"payment_intent.created", "payment_intent.succeeded", "charge.succeeded"}
        got = self.recv.wait_for("/pay", lambda g: want <= {x["event"]["type"] for x in g})
        types = {g["event"]["type"] for g in got}
        self.assertTrue(want <= types, types)
        stored = {e["id"]: e for e in pi_events(c, pi["id"])}
        for g in got:
            h = {k.lower(): v for k, v in g["headers"].items()}
            self.assertTrue(verify_signature(g["body"], h["stripe-signature"], ep["secret"]), h)
            self.assertFalse(verify_signature(g["body"], h["stripe-signature"], ep["secret"] + "x"))
            self.assertTrue(h["content-type"].startswith("application/json"), h)
            self.assertEqual(h["user-agent"], "Turnpike/1.0 (+webhooks)")
            ev = g["event"]
            self.assertIn(ev["id"], stored)
            # the stored event, but for the count of endpoints owed it when sent (this one)
            self.assertEqual(ev["pending_webhooks"], 1, ev)
            self.assertEqual(dict(ev, pending_webhooks=0), dict(stored[ev["id"]], pending_webhooks=0),
                             "delivered body is the stored event")
            self.assertEqual(ev["object"], "event")
        # Stable ids: every delivered id is a stored event, each delivered once.
        ids = [g["event"]["id"] for g in got]
        self.assertEqual(len(ids), len(set(ids)), ids)
        # The attempts are visible through the API. An attempt's outcome is
        # committed once its answer is read, which may be just after the
        # receiver above recorded the body: wait for it, bounded.
        deadline = time.monotonic() + 10
        while True:
            dl = c.get(WE + "/" + ep["id"] + "/deliveries", {"limit": 100})
            self.assertEqual(dl.status, 200, dl)
            ok = [a for a in dl.json["data"] if a["outcome"] == "success"]
            if set(ids) <= {a["event"] for a in ok} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual({a["event"] for a in ok}, set(ids))
        for a in ok:
            self.assertEqual(a["status_code"], 200)
            self.assertEqual(a["attempt"], 1)
            self.assertEqual(a["object"], "webhook_delivery_attempt")
            self.assertIsNone(a["next_retry_at"])
        # And counted in the metrics (loopback may read /metrics).
        m = self.daemon.client(None).get("/metrics")
        self.assertEqual(m.status, 200, m)
        self.assertRegex(m.body.decode(), r'(?m)^turnpike_webhook_deliveries_total\{outcome="success"\} [1-9]')
        self.assertIn("turnpike_webhook_delivery_duration_seconds_count", m.body.decode())

    def test_an_endpoint_s_api_version_is_the_version_its_events_say(self):
        """Events say the API version Turnpike's objects have; an endpoint
        created with its own api_version gets them saying that one (as
        stripe-go and Stripe.net check), signed as sent."""
        c = self.c("version")
        r = c.post(WE, {"url": self.recv.url("/v-own"), "enabled_events": ["charge.succeeded"],
                        "api_version": "2025-09-30.clover"})
        self.assertEqual((r.status, r.json["api_version"]), (200, "2025-09-30.clover"), r)
        own = r.json
        plain = c.post(WE, {"url": self.recv.url("/v-plain"), "enabled_events": ["charge.succeeded"]}).json
        self.assertIsNone(plain["api_version"])
        for bad in ("latest", "2025-09-30.", "2025/09/30"):
            self.assertStripeError(c.post(WE, {"url": self.recv.url("/v-bad"), "enabled_events": ["*"],
                                               "api_version": bad}), 400, param="api_version")
        pi = pay(c)
        got_own = self.recv.wait_for("/v-own", lambda g: len(g) >= 1)[0]
        got_plain = self.recv.wait_for("/v-plain", lambda g: len(g) >= 1)[0]
        stored = c.get("/v1/events/" + got_own["event"]["id"]).json
        self.assertEqual(stored["api_version"], "2026-10-28.endive")
        self.assertEqual(got_plain["event"]["api_version"], "2026-10-28.endive")
        self.assertEqual(got_own["event"]["api_version"], "2025-09-30.clover")
        self.assertEqual(dict(got_own["event"], api_version=None, pending_webhooks=0),
                         dict(stored, api_version=None, pending_webhooks=0))
        self.assertEqual(got_own["event"]["data"]["object"]["payment_intent"], pi["id"])
        h = {k.lower(): v for k, v in got_own["headers"].items()}
        self.assertTrue(verify_signature(got_own["body"], h["stripe-signature"], own["secret"]), h)

    def test_enabled_events_filter(self):
        self.endpoint("filter", "/only-charges", events=["charge.succeeded"])
        self.endpoint("filter", "/all", events=["*"])
        c = self.c("filter")
        pi = pay(c)
        self.recv.wait_for("/all", lambda g: len(event_ids(g)) >= 3)
        got = self.recv.wait_for("/only-charges", lambda g: len(g) >= 1)
        time.sleep(0.5)  # anything else would have arrived by now
        got = self.recv.on("/only-charges")
        self.assertEqual([g["event"]["type"] for g in got], ["charge.succeeded"], got)
        self.assertEqual(got[0]["event"]["data"]["object"]["payment_intent"], pi["id"])

    def test_pending_webhooks_counts_the_endpoints_still_owed_an_event(self):
        c = self.c("pending")
        before = c.post(PI, {"amount": 700, "currency": "usd"}).json  # older than every endpoint
        self.recv.behaviour["/pend-fail"] = lambda ev, n: (500, 0)
        self.endpoint("pending", "/pend-fail", events=["payment_intent.succeeded"])
        self.endpoint("pending", "/pend-ok", events=["payment_intent.succeeded", "charge.succeeded"])
        pi = pay(c)
        self.recv.wait_for("/pend-ok", lambda g: len(event_ids(g)) >= 2)
        self.recv.wait_for("/pend-fail", lambda g: len(g) >= 2)  # failing, and retried
        evs = {e["type"]: e["id"] for e in pi_events(c, pi["id"])}
        old = [e["id"] for e in pi_events(c, before["id"])]
        self.assertEqual(len(old), 1)

        def pending(ev_id):
            r = c.get("/v1/events/" + ev_id)
            self.assertEqual(r.status, 200, r)
            return r.json["pending_webhooks"]
        want = {evs["payment_intent.succeeded"]: 1,  # the failing endpoint still owes it
                evs["charge.succeeded"]: 0,          # its only endpoint has it
                evs["payment_intent.created"]: 0,    # no endpoint wants it
                old[0]: 0}                           # older than the endpoints
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pending(e) != n for e, n in want.items()):
            time.sleep(0.05)  # the successful deliveries' rows commit just after the POSTs
        self.assertEqual({e: pending(e) for e in want}, want)
        listed = {e["id"]: e["pending_webhooks"] for e in c.list_all("/v1/events")}
        self.assertEqual({e: listed[e] for e in want}, want)
        wild = c.get("/v1/events", {"type": "payment_intent.*", "limit": 100}).json["data"]
        self.assertEqual({e["id"]: e["pending_webhooks"] for e in wild if e["id"] in want},
                         {e: n for e, n in want.items() if e != evs["charge.succeeded"]})
        # A delivered payload carries the count when it was sent, the
        # receiving endpoint included (Stripe's payloads say at least 1).
        sent = {g["event"]["type"]: g["event"]["pending_webhooks"] for g in self.recv.on("/pend-ok")}
        self.assertEqual(sent, {"charge.succeeded": 1, "payment_intent.succeeded": 2})
        # A retry made after /pend-ok's success was committed counts only
        # itself (an early retry may still count 2: the success commits
        # just after the answer); retries come 100 ms apart, doubling.
        self.recv.wait_for("/pend-fail", lambda g: g[-1]["event"]["pending_webhooks"] == 1)
        fails = [g["event"]["pending_webhooks"] for g in self.recv.on("/pend-fail")]
        self.assertLessEqual(set(fails), {1, 2}, fails)
        self.assertIn(1, fails)
        # delivery_success (Stripe): false is what some endpoint is still owed
        # or failed, true the rest; with the other filters and both cursors
        undelivered = [e["id"] for e in c.get("/v1/events", {"delivery_success": "false"}).json["data"]]
        self.assertEqual(undelivered, [evs["payment_intent.succeeded"]])
        for params in ({"type": "payment_intent.*"}, {"types": ["payment_intent.succeeded"]},
                       {"type": "payment_intent.succeeded"}):
            got = c.get("/v1/events", dict(params, delivery_success="false")).json["data"]
            self.assertEqual([e["id"] for e in got], undelivered, params)
        self.assertEqual(c.get("/v1/events", {"delivery_success": "false", "type": "charge.succeeded"})
                         .json["data"], [])
        delivered = [e["id"] for e in c.list_all("/v1/events", {"delivery_success": "true"})]
        self.assertEqual(delivered, [e for e in listed if e not in undelivered])
        self.assertNotIn(evs["payment_intent.succeeded"], delivered)
        self.assertIn(evs["charge.succeeded"], delivered)
        page = c.get("/v1/events", {"delivery_success": "true", "limit": 2}).json
        self.assertEqual(([e["id"] for e in page["data"]], page["has_more"]), (delivered[:2], len(delivered) > 2))
        back = c.get("/v1/events", {"delivery_success": "true", "limit": 2, "ending_before": delivered[2]}).json
        self.assertEqual([e["id"] for e in back["data"]], delivered[:2])
        wild = c.get("/v1/events", {"delivery_success": "true", "type": "payment_intent.*", "limit": 100}).json
        self.assertEqual([e["id"] for e in wild["data"]],
                         [e for e in delivered if e in {evs["payment_intent.created"], old[0]}])

    def test_failures_are_retried_with_backoff(self):
        # Two 500s, then 200, for every event.
        self.recv.behaviour["/flaky"] = lambda ev, n: (500 if n < 2 else 200, 0)
        ep = self.endpoint("retry", "/flaky", events=["payment_intent.succeeded"])
        c = self.c("retry")
        pay(c)
        got = self.recv.wait_for("/flaky", lambda g: len(g) >= 3)
        self.assertEqual(len(got), 3, got)
        self.assertEqual(len(event_ids(got)), 1)
        gaps = [b["t"] - a["t"] for a, b in zip(got, got[1:])]
        for gap in gaps:
            self.assertGreaterEqual(gap, 0.07, gaps)  # 100 ms base, -20% jitter
        evid = got[0]["event"]["id"]

        def attempts():
            r = c.get(WE + "/" + ep["id"] + "/deliveries", {"event": evid})
            return r.json["data"] if r.status == 200 else []
        deadline = time.monotonic() + 5
        while len(attempts()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        a = sorted(attempts(), key=lambda x: x["attempt"])
        self.assertEqual([x["attempt"] for x in a], [1, 2, 3], a)
        self.assertEqual([x["status_code"] for x in a], [500, 500, 200])
        self.assertEqual([x["outcome"] for x in a], ["failure", "failure", "success"])
        self.assertIsNotNone(a[0]["next_retry_at"])
        self.assertIn("500", a[0]["error"])
        self.assertIsNone(a[2]["error"])
        for x in a:
            self.assertIsInstance(x["duration_ms"], int)
            self.assertIsInstance(x["created"], int)
        self.assertEqual(c.get(WE + "/" + ep["id"]).json["status"], "enabled")
        # a failing endpoint logs one line a minute, not one per attempt
        lines = [json.loads(l) for l in self.daemon.log_text().splitlines()
                 if '"webhook_delivery_failed"' in l and ep["id"] in l]
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0]["failures_not_logged"], 0, lines)

    def test_slow_endpoint_does_not_delay_a_healthy_one(self):
        self.recv.behaviour["/slow"] = lambda ev, n: (200, 4.0)  # past the 1.5 s timeout
        self.endpoint("slow", "/slow")
        self.endpoint("slow", "/fast")
        c = self.c("slow")
        pis = [pay(c, 1000 + i) for i in range(4)]   # 12 events: more than the slow one's slots
        t0 = time.monotonic()
        got = self.recv.wait_for("/fast", lambda g: len(event_ids(g)) >= 12, timeout=10)
        self.assertGreaterEqual(len(event_ids(got)), 12)
        # Waiting behind the slow endpoint would take its 1.5 s timeout at least.
        last = max(g["t"] for g in got)
        self.assertLess(last - t0, 1.2, "healthy endpoint done %.2f s after the last payment" % (last - t0))
        # None of the slow endpoint's requests ends before the 1.5 s timeout,
        # so whatever it got before then was in flight at once: at least 2,
        # at most its bound of 4 (without the bound it would be all 12).
        slow = self.recv.wait_for("/slow", lambda g: len(g) >= 4, timeout=5)
        first = min(g["t"] for g in slow)
        # (1.0 s: the timeout runs from the gateway's send, which a request
        # recorded late here can trail by a moment)
        early = [g for g in self.recv.on("/slow") if g["t"] < first + 1.0]
        self.assertGreaterEqual(len(early), 2)
        self.assertLessEqual(len(early), 4)
        self.assertTrue(pis)

    def test_manual_resend(self):
        ep = self.endpoint("resend", "/resend", events=["payment_intent.created"])
        c = self.c("resend")
        pay(c)
        got = self.recv.wait_for("/resend", lambda g: len(g) >= 1)
        evid = got[0]["event"]["id"]
        r = c.post(WE + "/" + ep["id"] + "/deliveries/" + evid + "/resend")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "pending")
        got = self.recv.wait_for("/resend", lambda g: len(g) >= 2)
        self.assertEqual([g["event"]["id"] for g in got], [evid, evid])
        h = {k.lower(): v for k, v in got[1]["headers"].items()}
        self.assertTrue(verify_signature(got[1]["body"], h["stripe-signature"], ep["secret"]))
        self.assertStripeError(c.post(WE + "/" + ep["id"] + "/deliveries/evt_nope/resend"), 404)
        # an event the endpoint was never sent and does not select is not
        # sent to it (it went out signed, to an endpoint that never asked)
        other_types = [e for e in c.get("/v1/events", {"limit": 20}).json["data"]
                       if e["type"] != "payment_intent.created"]
        self.assertTrue(other_types)
        err = self.assertStripeError(
            c.post(WE + "/" + ep["id"] + "/deliveries/" + other_types[0]["id"] + "/resend"), 400, param="event")
        self.assertEqual(err["tp_code"], 1117)
        time.sleep(0.5)
        self.assertEqual(len(self.recv.on("/resend")), 2)
        self.assertStripeError(c.post(WE + "/we_nope/deliveries/" + evid + "/resend"), 404)
        self.assertStripeError(self.c("other").post(WE + "/" + ep["id"] + "/deliveries/" + evid + "/resend"), 404)
        c.post(WE + "/" + ep["id"], {"disabled": "true"})
        self.assertStripeError(c.post(WE + "/" + ep["id"] + "/deliveries/" + evid + "/resend"), 400)


class ReceiverCase(DaemonTestCase):
    """The MERCHANTS ("m"), a Receiver, and a daemon started with
    daemon_config() (BASE_CONFIG plus EXTRA)."""
    MERCHANTS = ("m",)
    EXTRA = ""

    @classmethod
    def daemon_config(cls):
        return BASE_CONFIG + cls.EXTRA

    @classmethod
    def setUpClass(cls):
        cls.recv = Receiver()
        cls.daemon = Daemon()
        try:
            for name in cls.MERCHANTS:
                cls.daemon.create_merchant(name)
            cls.daemon.start(config=cls.daemon_config())
        except Exception:
            cls.daemon.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.recv.close()
        cls.daemon.cleanup()


class EndpointChangesTest(ReceiverCase):
    """What an endpoint's changes do to deliveries: a delete under load
    leaves no delivery rows behind (they stayed pending for good, and the
    outbox lag grew without end); a new enabled_events applies from now on
    (the scan sent the last minute's events of a newly wanted type); events
    of a disabled period are not owed (pending_webhooks said 1 for good);
    and endpoints that hang until the timeout do not keep a healthy one of
    another merchant waiting (the global in-flight bound was theirs)."""
    MERCHANTS = ("m", "h0", "h1", "h2", "h3", "good", "off")

    @classmethod
    def daemon_config(cls):
        return BASE_CONFIG.replace("timeout_ms = 1500\n", "timeout_ms = 8000\n")

    def db(self):
        import sqlite3
        return sqlite3.connect("file:%s?mode=ro" % self.daemon.db_path(), uri=True)

    def test_a_deleted_endpoint_leaves_no_delivery_rows(self):
        c = self.c("m")
        self.recv.behaviour["/del"] = lambda ev, n: (200, 0.05)
        ep = c.post(WE, {"url": self.recv.url("/del"), "enabled_events[]": "*"}).json
        stop = []

        def load():
            while not stop:
                pay(c)

        ths = [threading.Thread(target=load) for _ in range(6)]
        for t in ths:
            t.start()
        try:
            time.sleep(1.0)
            self.assertEqual(c.delete(WE + "/" + ep["id"]).status, 200)
            time.sleep(0.5)
        finally:
            stop.append(1)
            for t in ths:
                t.join(30)
        time.sleep(1.5)  # the webhook thread has taken the delete by now
        db = self.db()
        try:
            rows = db.execute("SELECT state, count(*) FROM webhook_deliveries WHERE endpoint=? GROUP BY state",
                              (ep["id"],)).fetchall()
            attempts = db.execute("SELECT count(*) FROM webhook_attempts WHERE endpoint=?", (ep["id"],)).fetchone()
        finally:
            db.close()
        self.assertEqual((rows, attempts[0]), ([], 0))

    def with_payers(self, body, made=None):
        """body() while three clients pay in a loop (their PaymentIntent ids
        go into made, if given); the payers stop however body ends."""
        stop = threading.Event()

        def payer():
            cc = self.daemon.client("m")
            while not stop.is_set():
                pi = pay(cc)
                if made is not None:
                    made.append(pi["id"])

        threads = [threading.Thread(target=payer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            body()
        finally:
            stop.set()
            for t in threads:
                t.join()

    def assertAllDelivered(self, path, want, why):
        got = self.recv.wait_for(path, lambda g: {x["event"]["data"]["object"]["id"] for x in g} >= want,
                                 timeout=30)
        have = {x["event"]["data"]["object"]["id"] for x in got}
        self.assertEqual(want - have, set(), why)

    def test_changing_enabled_events_loses_no_event_both_filters_want(self):
        """Payments go on while the filter changes (back and forth between
        two lists that both want payment_intent.succeeded): every payment's
        event is delivered. Moving the scan floor to the change dropped the
        events committed just before it whose rows were not in yet."""
        c = self.c("m")
        ep = c.post(WE, {"url": self.recv.url("/refilter"),
                         "enabled_events[]": "payment_intent.succeeded"}).json
        made = []

        def refilter():
            for i in range(12):
                time.sleep(0.25)
                lists = ["payment_intent.succeeded"] + (["charge.refunded"] if i % 2 == 0 else [])
                r = c.post(WE + "/" + ep["id"], {"enabled_events[%d]" % k: v for k, v in enumerate(lists)})
                self.assertEqual(r.status, 200, r)
        self.with_payers(refilter, made)
        self.assertAllDelivered("/refilter", set(made), "payments whose event was never delivered")

    def test_disabling_right_after_an_event_loses_no_event(self):
        """An event committed while the endpoint was enabled is delivered even
        if the endpoint is disabled moments later (the row the webhooks thread
        adds after the commit was refused once the endpoint was disabled, and
        re-enabling moved the scan's floor past it): once enabled again, every
        such event arrives. Payments meanwhile keep the webhooks thread busy,
        so its rows come later."""
        c = self.c("m")
        ep = c.post(WE, {"url": self.recv.url("/toggle"), "enabled_events[]": "customer.created"}).json
        made = []

        def toggle():
            for _ in range(150):
                cus = c.post("/v1/customers", {"name": "t"})
                self.assertEqual(cus.status, 200, cus)
                made.append(cus.json["id"])
                self.assertEqual(c.post(WE + "/" + ep["id"], {"disabled": "true"}).status, 200)
                self.assertEqual(c.post(WE + "/" + ep["id"], {"disabled": "false"}).status, 200)
        self.with_payers(toggle)
        self.assertAllDelivered("/toggle", set(made), "events committed while enabled, never delivered")

    def test_new_enabled_events_apply_from_now_on(self):
        c = self.c("m")
        ep = c.post(WE, {"url": self.recv.url("/widen"), "enabled_events[]": "charge.succeeded"}).json
        pi = pay(c)
        self.recv.wait_for("/widen", lambda g: len(g) >= 1)
        time.sleep(0.7)  # a scan or two with the narrow filter
        r = c.post(WE + "/" + ep["id"], {"enabled_events[]": "*"})
        self.assertEqual(r.status, 200, r)
        time.sleep(1.5)  # several scans with the wide one
        got = self.recv.on("/widen")
        self.assertEqual([g["event"]["type"] for g in got], ["charge.succeeded"], got)
        # the payment's other events are not owed to it either
        evs = c.get("/v1/events", {"limit": 10}).json["data"]
        mine = [e for e in evs if e["data"]["object"].get("id") == pi["id"]]
        self.assertTrue(mine)
        self.assertEqual({e["type"]: e["pending_webhooks"] for e in mine},
                         {e["type"]: 0 for e in mine})
        # and the next payment's are delivered
        pay(c)
        got = self.recv.wait_for("/widen", lambda g: len(g) >= 4)
        self.assertGreaterEqual(len(got), 4, got)

    def test_events_of_a_disabled_period_are_not_owed(self):
        # a merchant of its own: another test's endpoint, still delivering a
        # payment's events under a slow build, would count in pending_webhooks
        c = self.c("off")
        ep = c.post(WE, {"url": self.recv.url("/off"), "enabled_events[]": "*"}).json
        self.assertEqual(c.post(WE + "/" + ep["id"], {"disabled": "true"}).status, 200)
        pi = pay(c)
        self.assertEqual(c.post(WE + "/" + ep["id"], {"disabled": "false"}).status, 200)
        time.sleep(1.0)
        self.assertEqual([g["event"]["type"] for g in self.recv.on("/off")], [])
        evs = [e for e in c.get("/v1/events", {"limit": 20}).json["data"]
               if e["data"]["object"].get("id") == pi["id"]]
        self.assertTrue(evs)
        self.assertEqual([e["pending_webhooks"] for e in evs], [0] * len(evs))
        undelivered = c.get("/v1/events", {"delivery_success": "false", "limit": 100}).json["data"]
        self.assertFalse([e for e in undelivered if e["id"] in {x["id"] for x in evs}])

    def test_endpoints_that_hang_do_not_hold_up_a_healthy_one(self):
        # 4 merchants x 16 endpoints x 4 slots: the whole global bound (256)
        self.recv.behaviour["/hang"] = lambda ev, n: (200, 9)
        for m in ("h0", "h1", "h2", "h3"):
            for _ in range(16):
                self.assertEqual(self.c(m).post(WE, {"url": self.recv.url("/hang"),
                                                     "enabled_events[]": "*"}).status, 200)
            for _ in range(2):
                pay(self.c(m))
        self.recv.wait_for("/hang", lambda g: len(g) >= 256, timeout=15)
        g = self.c("good")
        self.assertEqual(g.post(WE, {"url": self.recv.url("/healthy"), "enabled_events[]": "*"}).status, 200)
        t0 = time.monotonic()
        pay(g)
        got = self.recv.wait_for("/healthy", lambda x: len(x) >= 1, timeout=15)
        self.assertTrue(got)
        self.assertLess(got[0]["t"] - t0, 3.0, "the healthy endpoint waited for the hanging ones")


class GivenUpTest(ReceiverCase):
    """delivery_success=true never lists an event whose delivery was given
    up (failed), however far the list reaches: a page of one type, an upper
    created bound or ending_before walk below the newest 1,000 delivery
    rows the undelivered ones were read from, and failed rows are not in
    pending_webhooks, so the three failures were listed by both true and
    false."""
    EXTRA = "max_age_s = 1\n"

    def test_a_failed_delivery_is_never_listed_as_delivered(self):
        c = self.c("m")
        self.recv.behaviour["/given-up"] = lambda ev, n: (
            (500, 0) if ev["data"]["object"].get("name") == "bad" else (200, 0))
        self.assertEqual(c.post(WE, {"url": self.recv.url("/given-up"), "enabled_events[]": "*"}).status, 200)
        bad = [c.post("/v1/customers", {"name": "bad"}).json["id"] for _ in range(3)]

        def failed():
            got = c.get("/v1/events", {"delivery_success": "false", "limit": 100}).json["data"]
            return sorted(e["data"]["object"]["id"] for e in got if e["pending_webhooks"] == 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and failed() != sorted(bad):
            time.sleep(0.2)
        self.assertEqual(failed(), sorted(bad), "the three deliveries were not given up")
        ok = c.post("/v1/customers", {"name": "ok"}).json["id"]
        for i in range(1010):  # other events after them: a page of customer.created reaches past 1,000 rows
            self.assertEqual(c.post("/v1/customers/" + ok, {"metadata[n]": str(i)}).status, 200)
        self.recv.wait_for("/given-up", lambda g: len({x["event"]["id"] for x in g
                                                      if x["event"]["data"]["object"].get("name") == "ok"}) >= 1011,
                           timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.get("/v1/events", {"limit": 1}).json["data"][0]["pending_webhooks"]:
            time.sleep(0.1)
        evs = {e["data"]["object"]["id"]: e for e in c.list_all("/v1/events", {"type": "customer.created"})}
        bad_ev = sorted(evs[b]["id"] for b in bad)
        undelivered = c.list_all("/v1/events", {"delivery_success": "false", "type": "customer.created"})
        self.assertEqual(sorted(e["id"] for e in undelivered), bad_ev)
        for params in ({"type": "customer.created"}, {"types[]": "customer.created"}, {"type": "customer.*"},
                       {"created[lte]": str(evs[bad[-1]]["created"])}):
            got = [e["id"] for e in c.list_all("/v1/events", dict(params, delivery_success="true"))]
            self.assertFalse(set(got) & set(bad_ev), params)
            if "created[lte]" not in params:
                self.assertIn(evs[ok]["id"], got, params)
        back = c.get("/v1/events", {"delivery_success": "true", "ending_before": bad_ev[0], "limit": 10}).json
        self.assertEqual(len(back["data"]), 10, back)
        self.assertFalse({e["id"] for e in back["data"]} & set(bad_ev), back)


class PrivateNetworksTest(ReceiverCase):
    """[webhooks] private_networks = deny: a merchant cannot make the
    gateway call into its own network (SSRF). Address literals and
    localhost are refused when the endpoint is saved; a name is checked at
    delivery against every address libcurl would connect to."""
    EXTRA = "private_networks = deny\n"

    def test_private_destinations_are_refused(self):
        c = self.c()
        before = c.get(WE).json["data"]
        for url in (self.recv.url("/x"), "http://[::1]:%d/x" % self.recv.port, "http://localhost:%d/x"
                    % self.recv.port, "http://LOCALHOST./x", "https://api.localhost/x", "http://10.0.0.7/x",
                    "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/x",
                    "http://[::ffff:127.0.0.1]:%d/x" % self.recv.port, "http://0.0.0.0:%d/x" % self.recv.port):
            r = c.post(WE, {"url": url, "enabled_events": ["*"]})
            self.assertStripeError(r, 400, "invalid_request_error", "url_invalid", param="url")
            self.assertIn("publicly accessible", r.json["error"]["message"], url)
        self.assertEqual(c.get(WE).json["data"], before)
        ok = c.post(WE, {"url": "https://hooks.example.com/turnpike", "enabled_events": ["*"]})
        self.assertEqual(ok.status, 200, ok)
        r = c.post(WE + "/" + ok.json["id"], {"url": "http://192.168.0.10/x"})
        self.assertStripeError(r, 400, "invalid_request_error", "url_invalid", param="url")
        self.assertEqual(c.get(WE + "/" + ok.json["id"]).json["url"], "https://hooks.example.com/turnpike")
        self.assertEqual(c.delete(WE + "/" + ok.json["id"]).status, 200)

    def test_a_name_that_resolves_to_a_private_address_is_not_called(self):
        host = socket.gethostname()
        try:
            addrs = {ai[4][0] for ai in socket.getaddrinfo(host, self.recv.port, type=socket.SOCK_STREAM)}
        except OSError:
            self.skipTest("%s does not resolve" % host)
        if not all(ipaddress.ip_address(a.split("%")[0]).is_private for a in addrs):
            self.skipTest("%s resolves to a public address: %s" % (host, addrs))
        c = self.c()
        ep = c.post(WE, {"url": "http://%s:%d/named" % (host, self.recv.port), "enabled_events": ["*"]})
        self.assertEqual(ep.status, 200, ep)
        pay(c)
        deadline = time.monotonic() + 10
        attempts = []
        while time.monotonic() < deadline:
            attempts = c.get(WE + "/" + ep.json["id"] + "/deliveries", {"limit": 100}).json["data"]
            if len(attempts) >= 2:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(len(attempts), 2, attempts)
        for a in attempts:
            self.assertEqual(a["outcome"], "failure", a)
            self.assertIsNone(a["status_code"], a)
            self.assertTrue(a["error"].startswith("destination_blocked: "), a)
            self.assertIn("private_networks = deny", a["error"])
        self.assertEqual(self.recv.on("/named"), [])
        self.assertEqual(c.delete(WE + "/" + ep.json["id"]).status, 200)


@unittest.skipUnless(os.environ.get("TP_DISKFAULT_SO"), "TP_DISKFAULT_SO (the diskfault.so test shim) not set")
class SlowDisableCommitTest(ReceiverCase):
    """An endpoint is disabled once, however long the commit of its disable
    takes: the endpoints are reloaded from their rows every scan, and one
    reload before the disable was committed turned the endpoint back on; its
    next failure disabled it again, with a second disabled event (and a
    delivery made after the decision). Fsyncs are held 0.7 s about the time
    it has failed for a second."""
    EXTRA = "disable_after_s = 1\n"

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.ctl = tempfile.mkdtemp(prefix="tp-wh-ctl-")
        cls.recv = Receiver()
        cls.daemon = Daemon()
        try:
            for name in cls.MERCHANTS:
                cls.daemon.create_merchant(name)
            cls.daemon.start(config=cls.daemon_config(),
                             extra_env=preload_env(os.environ["TP_DISKFAULT_SO"],
                                                   TP_DISKFAULT_DATA=os.path.realpath(cls.daemon.data),
                                                   TP_DISKFAULT_CTL=cls.ctl))
        except Exception:
            cls.daemon.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        import shutil
        super().tearDownClass()
        shutil.rmtree(cls.ctl, ignore_errors=True)

    def test_a_disable_whose_commit_is_slow_is_made_once(self):
        hold = os.path.join(self.ctl, "hold_sync")
        self.addCleanup(lambda: os.path.exists(hold) and os.unlink(hold))
        c = self.c()
        for k in range(2):
            self.recv.behaviour["/dead%d" % k] = lambda ev, n: (500, 0)
            dead = c.post(WE, {"url": self.recv.url("/dead%d" % k), "enabled_events": ["*"]}).json
            watch = "/watch%d" % k
            c.post(WE, {"url": self.recv.url(watch), "enabled_events": ["turnpike.webhook_endpoint.disabled"]})
            pay(c)
            first = self.recv.wait_for("/dead%d" % k, lambda g: len(g) >= 1)[0]["t"]
            time.sleep(max(0.0, first + 0.9 - time.monotonic()))
            open(hold, "w").close()
            time.sleep(0.7)
            os.unlink(hold)
            deadline = time.monotonic() + 10
            while c.get(WE + "/" + dead["id"]).json["status"] != "disabled" and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(c.get(WE + "/" + dead["id"]).json["status"], "disabled")
            time.sleep(1.5)  # a second disable came within the next few retries
            evs = [e for e in c.list_all("/v1/events") if e["type"] == "turnpike.webhook_endpoint.disabled"
                   and e["data"]["object"]["id"] == dead["id"]]
            self.assertEqual(len(evs), 1, evs)
            self.recv.wait_for(watch, lambda g: len(g) >= 1)
            self.assertEqual([g["event"]["id"] for g in self.recv.on(watch)], [evs[0]["id"]])


class DisableTest(ReceiverCase):
    EXTRA = "disable_after_s = 1\n"

    def test_endpoint_failing_too_long_is_disabled_with_an_event(self):
        self.recv.behaviour["/dead"] = lambda ev, n: (500, 0)
        c = self.c()
        dead = c.post(WE, {"url": self.recv.url("/dead"), "enabled_events": ["*"]}).json
        watcher = c.post(WE, {"url": self.recv.url("/watch"),
                              "enabled_events": ["turnpike.webhook_endpoint.disabled"]}).json
        pay(c)
        deadline = time.monotonic() + 15
        while c.get(WE + "/" + dead["id"]).json["status"] != "disabled" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(c.get(WE + "/" + dead["id"]).json["status"], "disabled")
        evs = [e for e in c.list_all("/v1/events") if e["type"] == "turnpike.webhook_endpoint.disabled"]
        self.assertEqual(len(evs), 1, evs)
        self.assertEqual(evs[0]["data"]["object"]["id"], dead["id"])
        self.assertEqual(evs[0]["data"]["object"]["status"], "disabled")
        self.assertNotIn("secret", evs[0]["data"]["object"])
        got = self.recv.wait_for("/watch", lambda g: len(g) >= 1)
        self.assertEqual([g["event"]["id"] for g in got], [evs[0]["id"]])
        h = {k.lower(): v for k, v in got[0]["headers"].items()}
        self.assertTrue(verify_signature(got[0]["body"], h["stripe-signature"], watcher["secret"]))
        # No more attempts once disabled.
        n = len(self.recv.on("/dead"))
        self.assertGreaterEqual(n, 2)
        time.sleep(0.6)
        self.assertEqual(len(self.recv.on("/dead")), n)
        # Its deliveries still pending are not due: the outbox lag leaves them out
        # (counted, one dead endpoint raised the lag for ever).
        time.sleep(1.5)
        from harness import Client, HOST
        body = Client(HOST, self.daemon.port).get("/metrics").body.decode()
        lag = [l for l in body.splitlines() if l.startswith("turnpike_outbox_lag_seconds ")]
        self.assertEqual(lag, ["turnpike_outbox_lag_seconds 0"], lag)

        # Events of the disabled period are not delivered after re-enabling
        # (like Stripe); new ones are. The failing ones whose retry fell due
        # while it was disabled are not retried (Stripe: "If your endpoint
        # has been disabled or deleted when we attempt a retry, future
        # retries of that event are prevented"): they failed.
        failing = event_ids(self.recv.on("/dead"))
        self.assertTrue(failing)
        self.recv.behaviour["/dead"] = lambda ev, n: (200, 0)
        during = pay(c)
        time.sleep(0.8)   # a few scans
        self.assertEqual(c.post(WE + "/" + dead["id"], {"disabled": "false"}).json["status"], "enabled")
        t_on = time.monotonic()
        after = pay(c)
        want = {e["id"] for e in pi_events(c, after["id"])}
        self.assertGreaterEqual(len(want), 3)
        got = self.recv.wait_for("/dead", lambda g: want <= event_ids(g))
        self.assertTrue(want <= event_ids(got), want - event_ids(got))
        time.sleep(0.8)
        later = event_ids([g for g in self.recv.on("/dead") if g["t"] >= t_on])
        self.assertFalse(later & {e["id"] for e in pi_events(c, during["id"])}, "disabled-period events delivered")
        self.assertFalse(later & failing, "retries that fell due while disabled were made")
        undelivered = {e["id"] for e in c.list_all("/v1/events", {"delivery_success": "false"})}
        self.assertTrue(failing <= undelivered, failing - undelivered)
        self.assertEqual(c.get(WE + "/" + dead["id"]).json["status"], "enabled")
        # and their last attempts name no retry: none will be made (a
        # retry time left in the past told monitoring one was overdue)
        for ev in failing:
            atts = c.get(WE + "/" + dead["id"] + "/deliveries", {"event": ev, "limit": 100}).json["data"]
            atts.sort(key=lambda a: a["attempt"])
            self.assertIsNone(atts[-1]["next_retry_at"], (ev, atts))
            self.assertTrue(all(a["next_retry_at"] for a in atts[:-1]), atts)  # the earlier ones' stay


class KillTest(DaemonTestCase):
    MERCHANTS = ("m",)

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(config=BASE_CONFIG + "disable_after_s = 3600\n")
        except Exception:
            cls.daemon.cleanup()
            raise

    def test_undelivered_events_are_delivered_after_kill9(self):
        # A port bound but not listening (held, so no other test takes it
        # meanwhile): every delivery is refused until the receiver listens.
        recv = Receiver(listen=False)
        try:
            c = self.c()
            ep = c.post(WE, {"url": recv.url("/hook"), "enabled_events": ["*"]}).json
            self.assertIn("secret", ep)
            pis = [pay(c, 500 + i) for i in range(5)]
            self.daemon.kill9()   # right after the payments: deliveries not done, some rows maybe not even written
            recv.listen()
            self.daemon.start(config=BASE_CONFIG + "disable_after_s = 3600\n")
            c = self.c()
            want = set()
            for p in pis:
                want |= {e["id"] for e in pi_events(c, p["id"])}
            self.assertGreaterEqual(len(want), 15)
            got = recv.wait_for("/hook", lambda g: want <= event_ids(g), timeout=20)
            self.assertEqual(event_ids(got) & want, want, "missing %r" % (want - event_ids(got)))
            for g in got:
                h = {k.lower(): v for k, v in g["headers"].items()}
                self.assertTrue(verify_signature(g["body"], h["stripe-signature"], ep["secret"]))
        finally:
            recv.close()

    def test_stop_abandons_a_hanging_delivery_which_is_retried_after_restart(self):
        recv = Receiver()
        recv.behaviour["/hang"] = lambda ev, n: (200, 30.0 if n == 0 else 0)
        config = BASE_CONFIG.replace("timeout_ms = 1500", "timeout_ms = 60000")
        try:
            self.daemon.stop()
            self.daemon.start(config=config)
            c = self.c()
            ep = c.post(WE, {"url": recv.url("/hang"), "enabled_events": ["payment_intent.created"]}).json
            pi = pay(c)
            recv.wait_for("/hang", lambda g: len(g) >= 1)
            t0 = time.monotonic()
            rc = self.daemon.stop()
            took = time.monotonic() - t0
            self.assertEqual(rc, 0)
            self.assertLess(took, 6.0, "stop took %.1f s with a hanging delivery" % took)
            self.assertIn("webhooks_abandoned", self.daemon.log_text())
            self.daemon.start(config=config)
            got = recv.wait_for("/hang", lambda g: len(g) >= 2)
            self.assertEqual(len(got), 2)
            self.assertEqual(got[0]["event"]["id"], got[1]["event"]["id"])
            self.assertEqual(got[1]["event"]["data"]["object"]["id"], pi["id"])
            c = self.c()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                a = c.get(WE + "/" + ep["id"] + "/deliveries").json["data"]
                if a:
                    break
                time.sleep(0.05)
            # The abandoned attempt left no record; the one after the restart did.
            self.assertEqual([(x["attempt"], x["outcome"]) for x in a], [(1, "success")])
        finally:
            recv.close()

    def test_events_without_delivery_rows_are_found_by_the_scan(self):
        # With delivery off, events commit but no delivery row is ever
        # written: exactly what a crash right after the commit leaves.
        recv = Receiver()
        try:
            self.daemon.stop()
            self.daemon.start(config=BASE_CONFIG + "enabled = false\n")
            c = self.c()
            ep = c.post(WE, {"url": recv.url("/scan"), "enabled_events": ["charge.succeeded"]}).json
            pis = [pay(c, 700 + i) for i in range(3)]
            time.sleep(0.5)
            self.assertEqual(recv.on("/scan"), [])
            self.daemon.kill9()
            self.daemon.start(config=BASE_CONFIG)
            got = recv.wait_for("/scan", lambda g: len(event_ids(g)) >= 3, timeout=15)
            self.assertEqual({g["event"]["data"]["object"]["payment_intent"] for g in got},
                             {p["id"] for p in pis})
            self.assertEqual({g["event"]["type"] for g in got}, {"charge.succeeded"})
            for g in got:
                h = {k.lower(): v for k, v in g["headers"].items()}
                self.assertTrue(verify_signature(g["body"], h["stripe-signature"], ep["secret"]))
        finally:
            recv.close()


if __name__ == "__main__":
    main()
