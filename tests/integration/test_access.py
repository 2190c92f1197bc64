"""Tenant isolation and key permissions.

Merchant A creates one object of every kind (payment intents in each state, a
charge, a refund, a customer, payment methods, events, balance transactions,
a webhook endpoint). Then EVERY authenticated route of src/api/routes.c
(parsed from the source, so routes added later are walked too) is called with
merchant B's key and A's ids: object routes answer 404 resource_missing, list
routes never show an id of A, creates that reference A's objects fail, and
A's objects are byte-for-byte the same afterwards.

Also: restricted keys (rk_) without the route's scope get 403
permission_error, an expired key gets 401 api_key_expired, and
`turnpike api-key roll` keeps the old key valid only for the overlap."""
import json
import os
import re
import subprocess
import time

from harness import BIN, PAN_3DS, DaemonTestCase, card, main

PI = "/v1/payment_intents"
ROUTES_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "api", "routes.c")
ROUTE_RE = re.compile(r'\{\s*"(GET|POST|DELETE)"\s*,\s*"([^"]+)"\s*,\s*(\w+)\s*,\s*([^}]+)\}')
# Parameters of a create that point at another object: B must not reach A's.
REF_PARAMS = ("payment_intent", "charge", "customer", "payment_method")


def routes():
    """(method, pattern, authenticated) for every row of the route table."""
    with open(ROUTES_C) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = [(m, p, bool({"A", "B", "C"} & set(re.split(r"[\s|]+", flags.strip()))) or "TP_R_AUTH" in flags)
           for m, p, _, flags in ROUTE_RE.findall(text)]
    if len(out) < 20:
        raise AssertionError("parsed only %d routes from %s" % (len(out), ROUTES_C))
    return out


def family(pattern):
    """/v1/customers/{id}/payment_methods -> /v1/customers"""
    return pattern.split("/{", 1)[0]


def admin(daemon, *args):
    p = subprocess.run([BIN] + list(args) + ["--data", daemon.data], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError("%s: %s" % (args, p.stderr.decode()))
    return json.loads(p.stdout)


class AccessTest(DaemonTestCase):
    MERCHANTS = ("A", "B")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ids = {}       # family -> [A's ids]
        cls.made = {}      # what A created, by name
        a = cls.daemon.client("A")

        def ok(r):
            if r.status != 200:
                raise AssertionError(repr(r))
            return r.json

        pi = "/v1/payment_intents"
        cus = ok(a.post("/v1/customers", {"email": "a@example.com", "name": "A's customer"}))
        pm = ok(a.post("/v1/payment_methods", {"type": "card", "card": {"number": "4242424242424242",
                                                                          "exp_month": 12, "exp_year": 2034,
                                                                          "cvc": "123"}}))
        ok(a.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus["id"]}))
        made = {
            "customer": cus["id"], "pm": pm["id"],
            "pi_open": ok(a.post(pi, {"amount": 1000, "currency": "usd"}))["id"],
            "pi_manual": ok(a.post(pi, {"amount": 1100, "currency": "usd", "confirm": "true",
                                        "capture_method": "manual", "payment_method": "pm_card_visa"}))["id"],
            "pi_3ds": ok(a.post(pi, {"amount": 1200, "currency": "usd", "confirm": "true",
                                     "payment_method_data": card(PAN_3DS)}))["id"],
            "pi_declined": a.post(pi, {"amount": 1300, "currency": "usd", "confirm": "true",
                                       "payment_method": "pm_card_chargeDeclined"}).json,
        }
        if "error" in (made["pi_declined"] or {}):
            made["pi_declined"] = made["pi_declined"]["error"].get("payment_intent", {}).get("id")
        else:
            made["pi_declined"] = (made["pi_declined"] or {}).get("id")
        canceled = ok(a.post(pi, {"amount": 1400, "currency": "usd"}))
        ok(a.post("%s/%s/cancel" % (pi, canceled["id"])))
        made["pi_canceled"] = canceled["id"]
        paid = ok(a.post(pi, {"amount": 5000, "currency": "usd", "confirm": "true", "customer": cus["id"],
                              "payment_method": "pm_card_visa"}))
        made["pi_paid"] = paid["id"]
        made["charge"] = paid["latest_charge"]
        made["refund"] = ok(a.post("/v1/refunds", {"payment_intent": paid["id"], "amount": 700}))["id"]
        r = a.post("/v1/webhook_endpoints", [("url", "http://127.0.0.1:9/hook"), ("enabled_events[]", "*")])
        if r.status == 200:
            made["webhook_endpoint"] = r.json["id"]
        cls.made = made
        # Every id A can list, by family (events, balance transactions ...).
        for m, p, auth in routes():
            if m == "GET" and auth and "{" not in p:
                r = a.get(p, {"limit": 100})
                if r.status == 200 and isinstance(r.json, dict) and isinstance(r.json.get("data"), list):
                    cls.ids[p] = [o["id"] for o in r.json["data"] if isinstance(o, dict) and "id" in o]
        cls.all_ids = sorted({i for v in cls.ids.values() for i in v} |
                             {v for v in made.values() if isinstance(v, str)})

    def snapshot(self):
        """A's view of everything: every list and every object, as JSON
        (error replies without their per-request fields)."""
        a = self.daemon.client("A")
        snap = {}

        def norm(r):
            js = r.json
            if isinstance(js, dict) and isinstance(js.get("error"), dict):
                js["error"].pop("request_log_url", None)
            return (r.status, js)

        for m, p, auth in routes():
            if m == "GET" and auth and "{" not in p and "/turnpike/" not in p:
                r = a.get(p, {"limit": 100})
                if r.status == 400:
                    r = a.get(p)
                snap[p] = norm(r)
        for fam, ids in self.ids.items():
            for i in ids:
                snap["%s/%s" % (fam, i)] = norm(a.get("%s/%s" % (fam, i)))
        return snap

    def b_values(self):
        """Plausible values of B's own for parameters a handler requires
        before it looks the object up."""
        b = self.daemon.client("B")
        if not hasattr(self.__class__, "_bvals"):
            cus = b.post("/v1/customers", {"email": "b@example.com"})
            self.assertEqual(cus.status, 200, cus)
            self.__class__._bvals = {"customer": cus.json["id"], "amount": "500", "currency": "usd",
                                     "url": "http://127.0.0.1:9/hook", "payment_method": "pm_card_visa",
                                     "enabled_events": ["*"], "email": "b2@example.com"}
        return self._bvals

    def call_until_lookup(self, client, method, url):
        """Call with no parameters; while the handler asks for a missing one,
        add a value of B's own, so the call has to reach the object lookup."""
        params = {}
        for _ in range(5):
            r = client.request(method, url, params if method != "GET" else None)
            err = (r.json or {}).get("error") if isinstance(r.json, dict) else None
            if r.status != 400 or not err or err.get("code") != "parameter_missing":
                return r
            name = (err.get("param") or "").split("[")[0]
            vals = self.b_values()
            if name not in vals or name in params:
                return r
            params[name] = vals[name]
        return r

    def ids_for(self, fam):
        if self.ids.get(fam):
            return self.ids[fam]
        if fam == "/v1/payment_intents":
            return [v for k, v in self.made.items() if k.startswith("pi_") and v]
        return ["%s_notlisted0000000000" % fam.rsplit("/", 1)[-1][:3]]

    def fill(self, pattern):
        """Every concrete URL of pattern with A's ids ({id} and any {sub})."""
        fam = family(pattern)
        urls = []
        for i in self.ids_for(fam):
            u = pattern.replace("{id}", i)
            for sub in re.findall(r"\{(\w+)\}", u):
                fam = {"event": "/v1/events", "pm": "/v1/payment_methods"}.get(sub)
                sub_id = (self.ids.get(fam) or ["x"])[0] if fam else "x"
                u = u.replace("{%s}" % sub, sub_id)
            urls.append(u)
        return urls

    def test_second_merchant_cannot_see_or_touch_first_merchants_objects(self):
        self.walk_as(self.daemon.client("B"))

    def test_second_merchants_oauth_token_cannot_either(self):
        """The same walk with an access token of B holding every scope."""
        cl = admin(self.daemon, "oauth-client", "create", "--merchant", self.daemon.merchants["B"]["id"],
                   "--scopes", "payments:read payments:write refunds:write customers:write reports:read admin")
        r = self.daemon.client(None).post("/oauth/token", {"grant_type": "client_credentials",
                                                           "client_id": cl["client_id"],
                                                           "client_secret": cl["client_secret"]})
        self.assertEqual(r.status, 200, r)
        b = self.daemon.client(None)
        b.key = r.json["access_token"]
        self.walk_as(b)

    def walk_as(self, b):
        self.assertIn("/v1/events", self.ids)
        self.assertTrue(self.ids["/v1/events"], "A has no events")
        self.assertTrue(self.ids.get("/v1/balance_transactions"), "A has no balance transactions")
        before = self.snapshot()
        walked = 0
        echoed = set()  # A's ids that B itself sent in a create that succeeded
        # Creates first, so every list below already holds what B made.
        walk = sorted(routes(), key=lambda rt: not (rt[0] == "POST" and "{" not in rt[1]))
        for method, pattern, auth in walk:
            if not auth:
                continue
            if "{" in pattern:
                for url in self.fill(pattern):
                    with self.subTest(method=method, url=url):
                        r = self.call_until_lookup(b, method, url)
                        self.assertStripeError(r, 404, "invalid_request_error", "resource_missing")
                        walked += 1
            elif method == "GET":
                with self.subTest(method=method, url=pattern):
                    r = b.get(pattern, {"limit": 100})
                    self.assertLess(r.status, 500, r)
                    text = r.body.decode("utf-8", "replace")
                    for i in self.all_ids:
                        if i not in echoed:
                            self.assertNotIn(i, text, "%s shows A's %s" % (pattern, i))
                    walked += 1
            else:
                # Creates: every reference to one of A's objects is refused.
                refs = {"payment_intent": self.made["pi_paid"], "charge": self.made["charge"],
                        "customer": self.made["customer"], "payment_method": self.made["pm"]}
                for name in REF_PARAMS:
                    params = {"amount": 500, "currency": "usd", name: refs[name]}
                    with self.subTest(method=method, url=pattern, ref=name):
                        r = b.request(method, pattern, params)
                        self.assertLess(r.status, 500, r)
                        if pattern == "/v1/payment_intents" and name in ("customer", "payment_method"):
                            # a reference to another merchant's object is
                            # refused outright, as Stripe does
                            self.assertStripeError(r, 404, "invalid_request_error", "resource_missing",
                                                   param=name)
                        if r.status == 200:
                            # Only the id B sent may come back (B knew it
                            # already); nothing else of A's.
                            echoed.add(refs[name])
                            text = r.body.decode("utf-8", "replace")
                            for i in self.all_ids:
                                if i != refs[name]:
                                    self.assertNotIn(i, text, "%s %s reached A's %s" % (method, pattern, i))
                            # ... and the reference cannot be used: confirming
                            # with A's payment method never charges it.
                            if r.json.get("object") == "payment_intent":
                                c = b.post("/v1/payment_intents/%s/confirm" % r.json["id"])
                                self.assertIn(c.status, (400, 402, 404), c)
                                self.assertNotIn(c.json.get("status"), ("succeeded", "processing",
                                                                        "requires_capture"), c)
                        else:
                            self.assertGreaterEqual(r.status, 400, r)
                        walked += 1
        self.assertGreater(walked, 60)
        after = self.snapshot()
        self.assertEqual(sorted(before), sorted(after))
        for k in before:
            self.assertEqual(before[k], after[k], "A's %s changed" % k)

    def test_no_key_is_401_on_every_authenticated_route(self):
        anon = self.daemon.client(None)
        for method, pattern, auth in routes():
            if auth:
                url = re.sub(r"\{\w+\}", "x", pattern)
                with self.subTest(method=method, url=url):
                    r = anon.request(method, url)
                    self.assertStripeError(r, 401, "invalid_request_error")
                    # RFC 9110 11.6.1: a 401 names its scheme
                    self.assertTrue(r.headers.get("WWW-Authenticate"), r.headers)


class KeysTest(DaemonTestCase):
    MERCHANTS = ("K", "R")

    @classmethod
    def setUpClass(cls):
        # Keys changed by an admin command are re-read after 1 s, not 30 s.
        from harness import Daemon
        cls.daemon = Daemon()
        try:
            for name in cls.MERCHANTS:
                cls.daemon.create_merchant(name)
            cls.daemon.start(config="[auth]\ncache_seconds = 1\n")
        except Exception:
            cls.daemon.cleanup()
            raise

    def mid(self, name):
        return self.daemon.merchants[name]["id"]

    def key_client(self, key):
        c = self.daemon.client(None)
        c.key = key
        return c

    def test_restricted_key_is_limited_to_its_scopes(self):
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                   "payments:read refunds:write")
        self.assertTrue(rk["restricted_key"].startswith("rk_test_"))
        self.assertEqual(rk["scopes"], "payments:read refunds:write")
        c = self.key_client(rk["restricted_key"])
        self.assertEqual(c.get("/v1/payment_intents").status, 200)
        err = self.assertStripeError(c.post("/v1/payment_intents", {"amount": 100, "currency": "usd"}), 403,
                                     "permission_error")
        self.assertIn("payments:write", err["message"])
        self.assertEqual(err["tp_code"], 2007)
        self.assertStripeError(c.post("/v1/customers"), 403, "permission_error")
        self.assertStripeError(c.get("/v1/balance"), 403, "permission_error")
        # Its scopes do allow a refund of a payment made with the secret key.
        pi = self.c("K").post("/v1/payment_intents", {"amount": 900, "currency": "usd", "confirm": "true",
                                                      "payment_method": "pm_card_visa"})
        self.assertEqual(pi.status, 200, pi)
        r = c.post("/v1/refunds", {"payment_intent": pi.json["id"]})
        self.assertEqual(r.status, 200, r)
        # An expansion reads what it expands: a balance transaction needs reports:read
        self.assertStripeError(c.get("/v1/payment_intents/" + pi.json["id"],
                                     {"expand[]": "latest_charge.balance_transaction"}), 403, "permission_error")
        self.assertEqual(c.get("/v1/payment_intents/" + pi.json["id"], {"expand[]": "latest_charge"}).status, 200)
        # and a reports:read key cannot read charges or customers through a transaction's source
        rep = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                    "reports:read")["restricted_key"])
        self.assertEqual(rep.get("/v1/balance_transactions").status, 200)
        self.assertStripeError(rep.get("/v1/balance_transactions", {"expand[]": "data.source"}), 403,
                               "permission_error")
        # A replay does not expand past the key's scopes either: the secret
        # key's reply under the same Idempotency-Key holds the balance
        # transaction (reports:read), which a payments:write key may not read.
        body = {"amount": 700, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa",
                "expand[]": "latest_charge.balance_transaction"}
        r = self.c("K").post("/v1/payment_intents", body, idem="rk-replay-1")
        self.assertEqual(r.json["latest_charge"]["balance_transaction"]["object"], "balance_transaction", r)
        w = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                  "payments:write")["restricted_key"])
        self.assertStripeError(w.post("/v1/payment_intents", body), 403, "permission_error")
        r = w.post("/v1/payment_intents", body, idem="rk-replay-1")
        self.assertNotIn(b'"balance_transaction","amount"', r.body)
        self.assertNotIn(b"txn_", r.body)
        self.assertIsNone(r.headers.get("Idempotent-Replayed"), r.headers)
        self.assertEqual(r.status // 100, 4, r)
        # payments:write includes payments:read, as Stripe's Write includes Read
        # (the reply of an update that changed nothing showed it anyway)
        self.assertEqual(w.get("/v1/payment_intents").status, 200)
        cw = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                   "customers:write")["restricted_key"])
        self.assertStripeError(cw.get("/v1/payment_intents"), 403, "permission_error")
        # a restricted key's scopes are part of its requests, expand[] or
        # not: a handler may check a scope itself (a webhook endpoint's
        # secret needs reports:read) after a replay would have answered, so
        # the secret key's reply is not replayed to it (it was without
        # expand[]: the restricted key got the endpoint's secret), nor its
        # reply to the secret key; the same restricted key replays its own
        plain = {"amount": 710, "currency": "usd"}
        first = w.post("/v1/payment_intents", plain, idem="rk-replay-2")
        self.assertEqual(first.status, 200, first)
        again = w.post("/v1/payment_intents", plain, idem="rk-replay-2")
        self.assertEqual((again.headers.get("Idempotent-Replayed"), again.json["id"]), ("true", first.json["id"]))
        other = self.c("K").post("/v1/payment_intents", plain, idem="rk-replay-2")
        self.assertStripeError(other, 400, "idempotency_error")
        ep = {"url": "http://127.0.0.1:9/h", "enabled_events[]": "*"}
        made = self.c("K").post("/v1/webhook_endpoints", ep, idem="rk-replay-3")
        self.assertTrue(made.json["secret"].startswith("whsec_"), made)
        pr = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                   "admin payments:read")["restricted_key"])
        stolen = pr.post("/v1/webhook_endpoints", ep, idem="rk-replay-3")
        self.assertNotIn(made.json["secret"], stolen.body.decode())
        self.assertIsNone(stolen.headers.get("Idempotent-Replayed"), stolen.headers)
        self.assertEqual(stolen.status // 100, 4, stolen)
        self.assertEqual(self.c("K").delete("/v1/webhook_endpoints/" + made.json["id"]).status, 200)
        # A webhook endpoint reads events: admin alone may not make one (its
        # deliveries carried every event the key could not list), and the
        # balance's events need reports:read as /v1/balance does
        url = "http://127.0.0.1:9/h"
        ad = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                   "admin")["restricted_key"])
        err = self.assertStripeError(ad.post("/v1/webhook_endpoints", {"url": url, "enabled_events[]":
                                                                       "charge.succeeded"}), 403, "permission_error")
        self.assertIn("payments:read", err["message"])
        self.assertStripeError(ad.get("/v1/webhook_endpoints"), 403, "permission_error")
        ap = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                   "admin payments:read")["restricted_key"])
        we = ap.post("/v1/webhook_endpoints", {"url": url, "enabled_events[]": "charge.succeeded"})
        self.assertEqual(we.status, 200, we)
        for evs in (["*"], ["charge.succeeded", "balance.available"]):
            err = self.assertStripeError(ap.post("/v1/webhook_endpoints", {"url": url, "enabled_events": evs}),
                                         403, "permission_error")
            self.assertIn("reports:read", err["message"])
            self.assertStripeError(ap.post("/v1/webhook_endpoints/" + we.json["id"], {"enabled_events": evs}),
                                   403, "permission_error")
        self.assertEqual(ap.get("/v1/webhook_endpoints/" + we.json["id"]).json["enabled_events"],
                         ["charge.succeeded"])
        # a charge.succeeded after the endpoint: one it is owed, resent
        self.assertEqual(self.c("K").post("/v1/payment_intents", {"amount": 720, "currency": "usd", "confirm": "true",
                                                                  "payment_method": "pm_card_visa"}).status, 200)
        evs = self.c("K").get("/v1/events", {"limit": 100}).json["data"]
        bal = [e for e in evs if e["type"].startswith("balance.")]
        other = [e for e in evs if e["type"] == "charge.succeeded"]
        self.assertEqual(ap.post("/v1/webhook_endpoints/%s/deliveries/%s/resend" % (we.json["id"], other[0]["id"]))
                         .status, 200)
        if bal:
            self.assertStripeError(ap.post("/v1/webhook_endpoints/%s/deliveries/%s/resend"
                                           % (we.json["id"], bal[0]["id"])), 403, "permission_error")
        full = self.key_client(admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes",
                                     "admin payments:read reports:read")["restricted_key"])
        star = full.post("/v1/webhook_endpoints", {"url": url, "enabled_events[]": "*"})
        self.assertEqual(star.status, 200, star)
        # an endpoint that takes them is not the lesser key's to point elsewhere,
        # enable again, or read the deliveries of (it redirected a "*" endpoint);
        # but it may pause it and edit its metadata, as it may delete it (every
        # update was refused: in an incident it could only delete it)
        sid = "/v1/webhook_endpoints/" + star.json["id"]
        self.assertStripeError(ap.post(sid, {"url": "http://127.0.0.1:9/stolen"}), 403, "permission_error")
        self.assertEqual(ap.post(sid, {"disabled": "false"}).status, 200)  # enabled already: nothing to read more
        paused = ap.post(sid, {"disabled": "true", "metadata[paused_by]": "oncall"})
        self.assertEqual((paused.status, paused.json.get("status")), (200, "disabled"), paused)
        self.assertStripeError(ap.post(sid, {"disabled": "false"}), 403, "permission_error")
        self.assertStripeError(ap.post(sid, {"url": "http://127.0.0.1:9/stolen", "disabled": "true"}), 403,
                               "permission_error")
        # narrowing it, alone or with a new URL: its pending deliveries of the
        # old list went to the new URL
        self.assertStripeError(ap.post(sid, {"url": "http://127.0.0.1:9/stolen",
                                             "enabled_events[]": "charge.succeeded"}), 403, "permission_error")
        self.assertStripeError(ap.post(sid, {"enabled_events[]": "charge.succeeded"}), 403, "permission_error")
        self.assertEqual(ap.get(sid).json["enabled_events"], ["*"])
        self.assertEqual(full.post(sid, {"disabled": "false"}).json["status"], "enabled")
        self.assertStripeError(ap.get("/v1/webhook_endpoints/%s/deliveries" % star.json["id"]), 403,
                               "permission_error")
        self.assertEqual(ap.get("/v1/webhook_endpoints/" + star.json["id"]).json["url"], url)
        self.assertEqual(full.post("/v1/webhook_endpoints/" + star.json["id"], {"metadata[a]": "b"}).status, 200)
        # Basic auth works the same way.
        c.auth = "basic"
        self.assertEqual(c.get("/v1/payment_intents").status, 200)
        # Unknown scopes are refused by the command.
        with self.assertRaises(RuntimeError):
            admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes", "payments:all")

    def test_expired_key_is_401_api_key_expired(self):
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.mid("K"), "--scopes", "payments:read",
                   "--expires-in", "3")  # 1 s flaked: the admin command alone can take that long under ASan
        c = self.key_client(rk["restricted_key"])
        self.assertEqual(c.get("/v1/payment_intents").status, 200)  # now cached with its expiry
        time.sleep(max(0.0, rk["expires_at"] - time.time()) + 1.1)
        self.assertStripeError(c.get("/v1/payment_intents"), 401, "invalid_request_error", "api_key_expired")
        # a real key past its expiry is not a guess: it locks no one out
        for _ in range(40):
            c.get("/v1/payment_intents")
        self.assertEqual(self.c("K").get("/v1/payment_intents").status, 200)
        self.assertEqual(self.key_client(self.daemon.merchants["K"]["publishable_key"])
                         .get("/v1/turnpike/encryption_key").status, 200)

    def test_roll_keeps_the_old_key_for_the_overlap_only(self):
        old = self.daemon.merchants["R"]["secret_key"]
        oc = self.key_client(old)
        self.assertEqual(oc.get("/v1/payment_intents").status, 200)
        out = admin(self.daemon, "api-key", "roll", "--merchant", self.mid("R"), "--overlap", "4")
        new = out["secret_key"]
        self.assertTrue(new.startswith("sk_test_"))
        self.assertNotEqual(new, old)
        nc = self.key_client(new)
        self.assertEqual(nc.get("/v1/payment_intents").status, 200)
        self.assertEqual(oc.get("/v1/payment_intents").status, 200)
        time.sleep(max(0.0, out["previous_keys_expire_at"] - time.time()) + 1.1)
        self.assertStripeError(oc.get("/v1/payment_intents"), 401, "invalid_request_error", "api_key_expired")
        self.assertEqual(nc.get("/v1/payment_intents").status, 200)
        # Keys are stored hashed only.
        with open(self.daemon.db_path(), "rb") as f:
            self.assertNotIn(new.encode(), f.read())

    def test_a_restricted_or_publishable_key_can_be_revoked_and_a_publishable_key_rolled(self):
        """A leaked rk_ or pk_ key is ended by `api-key revoke` (by the key,
        or by its hint), with an audit entry; `api-key roll --publishable`
        makes a new pk_ with the old one kept for the overlap. Before, only
        the secret key could be rolled and nothing could be revoked."""
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.mid("R"), "--scopes", "payments:read")
        rk2 = admin(self.daemon, "api-key", "create", "--merchant", self.mid("R"), "--scopes", "payments:read")
        c, c2 = self.key_client(rk["restricted_key"]), self.key_client(rk2["restricted_key"])
        self.assertEqual((c.get("/v1/payment_intents").status, c2.get("/v1/payment_intents").status), (200, 200))
        out = admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("R"), "--hint", rk["hint"])
        self.assertEqual((out["hint"], out["kind"]), (rk["hint"], "restricted"))
        out = admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("R"), "--key", rk2["restricted_key"])
        self.assertEqual(out["hint"], rk2["hint"])
        time.sleep(1.2)  # the running server's cached lookup ages out ([auth] cache_seconds = 1)
        for k in (c, c2):
            self.assertStripeError(k.get("/v1/payment_intents"), 401, "invalid_request_error", "api_key_expired")
        # revoked once: no live key is named so any more; nor is another merchant's key
        with self.assertRaises(RuntimeError):
            admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("R"), "--hint", rk["hint"])
        with self.assertRaises(RuntimeError):
            admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("K"),
                  "--key", self.daemon.merchants["R"]["secret_key"])
        with self.assertRaises(RuntimeError):  # one of --key and --hint
            admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("R"))
        self.assertEqual(self.c("R").get("/v1/payment_intents").status, 200)
        # a publishable key rolled: the new one works, the old one for the overlap only
        old_pk = self.key_client(self.daemon.merchants["R"]["publishable_key"])
        self.assertEqual(old_pk.get("/v1/turnpike/encryption_key").status, 200)
        rolled = admin(self.daemon, "api-key", "roll", "--publishable", "--merchant", self.mid("R"), "--overlap", "1")
        self.assertTrue(rolled["publishable_key"].startswith("pk_test_"), rolled)
        new_pk = self.key_client(rolled["publishable_key"])
        self.assertEqual(new_pk.get("/v1/turnpike/encryption_key").status, 200)
        time.sleep(max(0.0, rolled["previous_keys_expire_at"] - time.time()) + 1.2)
        self.assertStripeError(old_pk.get("/v1/turnpike/encryption_key"), 401, "invalid_request_error",
                               "api_key_expired")
        self.assertEqual(new_pk.get("/v1/turnpike/encryption_key").status, 200)
        self.assertEqual(self.c("R").get("/v1/payment_intents").status, 200)  # the secret key untouched
        # rolled again with a long overlap, the previous one revoked by its
        # hint all the same (a leak ends now, not after the overlap)
        third = admin(self.daemon, "api-key", "roll", "--publishable", "--merchant", self.mid("R"))
        admin(self.daemon, "api-key", "revoke", "--merchant", self.mid("R"), "--hint", rolled["hint"])
        time.sleep(1.2)
        self.assertEqual(new_pk.get("/v1/turnpike/encryption_key").status, 401)
        self.assertEqual(self.key_client(third["publishable_key"]).get("/v1/turnpike/encryption_key").status, 200)
        self.daemon.merchants["R"]["publishable_key"] = third["publishable_key"]

    def test_publishable_key_is_refused_on_secret_routes(self):
        c = self.key_client(self.daemon.merchants["K"]["publishable_key"])
        self.assertStripeError(c.get("/v1/payment_intents"), 403, "invalid_request_error")
        # every authenticated route but the browser ones (retrieve and
        # confirm a PaymentIntent or SetupIntent with its client_secret,
        # tokenise a card as a PaymentMethod or a token)
        client_routes = {("GET", "/v1/payment_intents/{id}"), ("POST", "/v1/payment_intents/{id}/confirm"),
                         ("GET", "/v1/setup_intents/{id}"), ("POST", "/v1/setup_intents/{id}/confirm"),
                         ("POST", "/v1/payment_methods"), ("POST", "/v1/tokens")}
        for method, pattern, authed in routes():
            if not authed or (method, pattern) in client_routes:
                continue
            path = re.sub(r"\{\w+\}", "x", pattern.replace("{id}", "pi_x"))
            r = c.request(method, path, {})
            self.assertEqual(r.status, 403, (method, pattern, r))
            self.assertEqual(r.json["error"]["code"], "secret_key_required", (method, pattern))

    def test_publishable_key_with_client_secret_retrieves_and_confirms(self):
        sk = self.key_client(self.daemon.merchants["K"]["secret_key"])
        pk = self.key_client(self.daemon.merchants["K"]["publishable_key"])
        other_pk = self.key_client(self.daemon.merchants["R"]["publishable_key"])
        cus = sk.post("/v1/customers", {"email": "pk@example.test"}).json
        pi = sk.post(PI, {"amount": 1500, "currency": "eur", "customer": cus["id"],
                          "metadata": {"order": "o-17"}, "description": "shoes"}).json
        other = sk.post(PI, {"amount": 900, "currency": "eur"}).json
        url = PI + "/" + pi["id"]
        # no secret, another PaymentIntent's secret, another merchant's key: refused
        self.assertStripeError(pk.get(url), 400, "invalid_request_error", param="client_secret")
        self.assertStripeError(pk.get(url, {"client_secret": other["client_secret"]}), 400,
                               "invalid_request_error", param="client_secret")
        self.assertStripeError(pk.post(url + "/confirm", {"client_secret": other["client_secret"],
                                                          "payment_method": "pm_card_visa"}),
                               400, "invalid_request_error", param="client_secret")
        self.assertStripeError(other_pk.get(url, {"client_secret": pi["client_secret"]}), 404,
                               "invalid_request_error", "resource_missing")
        self.assertEqual(sk.get(url).json["status"], "requires_payment_method")
        # the client's view: what Stripe shows a publishable key, no more
        got = pk.get(url, {"client_secret": pi["client_secret"]})
        self.assertEqual(got.status, 200, got)
        self.assertEqual((got.json["id"], got.json["amount"], got.json["currency"], got.json["status"],
                          got.json["client_secret"], got.json["description"]),
                         (pi["id"], 1500, "eur", "requires_payment_method", pi["client_secret"], "shoes"))
        for hidden in ("metadata", "customer", "latest_charge", "amount_received", "amount_capturable"):
            self.assertNotIn(hidden, got.json)
        # confirm from the browser: the payment goes through, the merchant sees all
        done = pk.post(url + "/confirm", {"client_secret": pi["client_secret"], "payment_method": "pm_card_visa"},
                       idem="pk-confirm-" + pi["id"])
        self.assertEqual(done.status, 200, done)
        self.assertEqual(done.json["status"], "succeeded")
        self.assertNotIn("latest_charge", done.json)
        self.assertNotIn("metadata", done.json)
        again = pk.post(url + "/confirm", {"client_secret": pi["client_secret"], "payment_method": "pm_card_visa"},
                        idem="pk-confirm-" + pi["id"])
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true", again)
        self.assertEqual(again.json, done.json)
        full = sk.get(url).json
        self.assertEqual((full["status"], full["amount_received"], full["customer"], full["metadata"]),
                         ("succeeded", 1500, cus["id"], {"order": "o-17"}))
        self.assertTrue(full["latest_charge"].startswith("ch_"))
        # a decline: Stripe's card error, its PaymentIntent cut the same way
        d = sk.post(PI, {"amount": 700, "currency": "eur", "metadata": {"k": "v"}}).json
        err = pk.post(PI + "/" + d["id"] + "/confirm",
                      {"client_secret": d["client_secret"], "payment_method_data[type]": "card",
                       "payment_method_data[card][number]": "4000000000000002",
                       "payment_method_data[card][exp_month]": "12",
                       "payment_method_data[card][exp_year]": "2034",
                       "payment_method_data[card][cvc]": "123"})
        self.assertStripeError(err, 402, "card_error", "card_declined")
        epi = err.json["error"]["payment_intent"]
        self.assertEqual((epi["id"], epi["status"]), (d["id"], "requires_payment_method"))
        self.assertNotIn("metadata", epi)
        self.assertEqual(epi["last_payment_error"]["decline_code"], "generic_decline")
        # the gateway's own marks on the PaymentMethod (which payment made
        # it) stay the merchant's too (review, session 41)
        self.assertIn("turnpike", sk.get("/v1/payment_methods/" + err.json["error"]["payment_method"]["id"]).json)
        self.assertNotIn('"turnpike"', err.body.decode())

    def test_a_saved_cards_metadata_and_customer_stay_the_merchants(self):
        """A declined saved card comes back nested (the PaymentIntent's
        last_payment_error.payment_method, the 402's error.payment_method,
        an expanded payment_method): to a publishable key with the
        client_secret its metadata is redacted and its customer hidden, as
        at the top level (they reached the shopper's browser whole)."""
        sk = self.key_client(self.daemon.merchants["K"]["secret_key"])
        pk = self.key_client(self.daemon.merchants["K"]["publishable_key"])
        cus = sk.post("/v1/customers", {"email": "v@example.test"}).json
        pm = sk.post("/v1/payment_methods", dict(card("4000000000000341"),
                                                **{"metadata[crm_note]": "merchant-only"})).json
        self.assertEqual(sk.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus["id"]}).status, 200)
        pi = sk.post(PI, {"amount": 1000, "currency": "usd", "customer": cus["id"]}).json
        err = pk.post(PI + "/" + pi["id"] + "/confirm",
                      {"client_secret": pi["client_secret"], "payment_method": pm["id"]})
        self.assertStripeError(err, 402, "card_error", "card_declined")
        seen = [err.json["error"]["payment_method"], err.json["error"]["payment_intent"]["last_payment_error"]
                ["payment_method"]]
        got = pk.get(PI + "/" + pi["id"], {"client_secret": pi["client_secret"]})
        self.assertEqual(got.status, 200, got)
        seen.append(got.json["last_payment_error"]["payment_method"])
        pi2 = sk.post(PI, {"amount": 1000, "currency": "usd", "customer": cus["id"], "payment_method": pm["id"]}).json
        exp = pk.get(PI + "/" + pi2["id"], {"client_secret": pi2["client_secret"], "expand[]": "payment_method"})
        self.assertEqual(exp.status, 200, exp)
        seen.append(exp.json["payment_method"])
        for v in seen:
            self.assertIsNotNone(v, seen)
            self.assertEqual((v["id"], v["metadata"], v["customer"]), (pm["id"], {}, None), v)
            self.assertNotIn("fingerprint", v["card"])
        self.assertNotIn("merchant-only", err.body.decode() + got.body.decode() + exp.body.decode())
        self.assertNotIn(cus["id"], err.body.decode() + got.body.decode() + exp.body.decode())
        # the merchant's own key sees both
        full = sk.get(PI + "/" + pi2["id"], {"expand[]": "payment_method"}).json
        self.assertEqual((full["payment_method"]["metadata"], full["payment_method"]["customer"]),
                         ({"crm_note": "merchant-only"}, cus["id"]))

    def test_publishable_key_tokenises_a_card_the_server_then_charges(self):
        """Stripe.js's flow: the browser creates the PaymentMethod with the
        publishable key, so the card number never reaches the merchant's
        server, which charges the pm_ id with its secret key."""
        sk = self.key_client(self.daemon.merchants["K"]["secret_key"])
        pk = self.key_client(self.daemon.merchants["K"]["publishable_key"])
        other_sk = self.key_client(self.daemon.merchants["R"]["secret_key"])
        pm = pk.post("/v1/payment_methods", dict(card("5555555555554444"),
                                                billing_details={"name": "Ada"}), idem="pk-pm-1")
        self.assertEqual(pm.status, 200, pm)
        self.assertEqual((pm.json["object"], pm.json["card"]["brand"], pm.json["card"]["last4"],
                          pm.json["billing_details"]["name"], pm.json["customer"]),
                         ("payment_method", "mastercard", "4444", "Ada", None))
        self.assertNotIn("5555555555554444", json.dumps(pm.json))
        again = pk.post("/v1/payment_methods", dict(card("5555555555554444"),
                                                   billing_details={"name": "Ada"}), idem="pk-pm-1")
        self.assertEqual((again.headers.get("Idempotent-Replayed"), again.json), ("true", pm.json))
        # The publishable key is public: its keys live apart from the secret
        # key's, or anyone could take the merchant's next server-side key
        # (an order number) first and have it refused for a day.
        mine = sk.post(PI, {"amount": 700, "currency": "usd"}, idem="pk-pm-1")
        self.assertEqual(mine.status, 200, mine)
        self.assertIsNone(mine.headers.get("Idempotent-Replayed"), mine.headers)
        self.assertEqual(mine.json["object"], "payment_intent")
        self.assertEqual(sk.post(PI, {"amount": 700, "currency": "usd"}, idem="pk-pm-1").json["id"],
                         mine.json["id"])
        # the browser's key does nothing else with it
        self.assertStripeError(pk.get("/v1/payment_methods/" + pm.json["id"]), 403, "invalid_request_error",
                               "secret_key_required")
        self.assertStripeError(pk.post("/v1/payment_methods/" + pm.json["id"] + "/attach", {"customer": "cus_x"}),
                               403, "invalid_request_error", "secret_key_required")
        self.assertStripeError(pk.post("/v1/payment_methods", dict(card("4242424242424242"),
                                                                  customer="cus_x")),
                               400, "invalid_request_error", None, param="customer")  # Connect's, unsupported
        # metadata is kept as set and redacted from the publishable key's
        # reply (Stripe: "We redact metadata from objects in response to
        # publishable key requests"); a card's fingerprint is hidden
        md = pk.post("/v1/payment_methods", dict(card("4242424242424242"), **{"metadata[last4]": "1",
                                                                               "metadata[fingerprint]": "keep"}))
        self.assertEqual(md.json["metadata"], {}, md)
        self.assertNotIn("fingerprint", md.json["card"])
        self.assertEqual(sk.get("/v1/payment_methods/" + md.json["id"]).json["metadata"],
                         {"last4": "1", "fingerprint": "keep"})
        # card validation is the same as for a secret key
        self.assertStripeError(pk.post("/v1/payment_methods", dict(card("4242424242424241"))),
                               402, "card_error", "incorrect_number")
        # the merchant's server sees it and charges it; another merchant cannot
        # the server's key sees the same card, with the fingerprint that is
        # never shown to the publishable key
        full = sk.get("/v1/payment_methods/" + pm.json["id"]).json
        self.assertEqual(len(full["card"].pop("fingerprint")), 16)
        self.assertEqual(full, pm.json)
        self.assertStripeError(other_sk.get("/v1/payment_methods/" + pm.json["id"]), 404, "invalid_request_error",
                               "resource_missing")
        pi = sk.post(PI, {"amount": 2500, "currency": "usd", "payment_method": pm.json["id"], "confirm": "true"})
        self.assertEqual((pi.status, pi.json["status"], pi.json["amount_received"]), (200, "succeeded", 2500), pi)
        ch = sk.get("/v1/charges/" + pi.json["latest_charge"]).json
        self.assertEqual((ch["payment_method"], ch["payment_method_details"]["card"]["last4"]),
                         (pm.json["id"], "4444"))
        # paid without a customer, it is spent (as on Stripe)
        again = sk.post(PI, {"amount": 2500, "currency": "usd", "payment_method": pm.json["id"], "confirm": "true"})
        self.assertStripeError(again, 400, "invalid_request_error", param="payment_method")
        # or the browser confirms with a card it tokenised, holding the client_secret
        pm2 = pk.post("/v1/payment_methods", dict(card("5555555555554444"))).json
        pi2 = sk.post(PI, {"amount": 900, "currency": "usd"}).json
        done = pk.post(PI + "/" + pi2["id"] + "/confirm",
                       {"client_secret": pi2["client_secret"], "payment_method": pm2["id"]})
        self.assertEqual((done.status, done.json["status"]), (200, "succeeded"), done)

    def test_basic_credentials_from_another_site_s_page_are_refused(self):
        """A browser keeps Basic credentials typed at the 401 prompt and
        sends them on any other site's form POST to the gateway: such a
        request (another Origin, or Sec-Fetch-Site cross-site/same-site) is
        refused 403 cross_site_basic_auth and changes nothing. (One forged
        POST made a webhook endpoint taking every later event, or a
        refund.) Server-side clients, Bearer keys and the gateway's own
        origin are not refused."""
        sk = self.daemon.merchants["K"]["secret_key"]
        c = self.key_client(sk)
        before = len(c.list_all("/v1/customers"))
        host = "%s:%d" % (self.daemon.host, self.daemon.port)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            with self.subTest(headers=headers):
                r = c.post("/v1/customers", {"name": "forged"}, auth="basic", headers=headers)
                self.assertStripeError(r, 403, "permission_error")
                self.assertEqual(r.json["error"].get("tp_code"), 2037, r)
                g = c.get("/v1/customers", auth="basic", headers=headers)
                self.assertEqual(g.status, 403, g)
        self.assertEqual(len(c.list_all("/v1/customers")), before)
        # not refused: Basic from a server (no Origin), or naming the
        # gateway itself; a Bearer key from a page (Stripe.js's way)
        for auth, headers in (("basic", {}), ("basic", {"Origin": "http://" + host}),
                              ("basic", {"Sec-Fetch-Site": "same-origin"}),
                              ("bearer", {"Origin": "https://shop.example"})):
            with self.subTest(auth=auth, headers=headers):
                r = c.post("/v1/customers", {"name": "ok"}, auth=auth, headers=headers)
                self.assertEqual(r.status, 200, r)

    def test_cors_lets_a_page_on_another_origin_call_the_api(self):
        """The CORS protocol of the Fetch standard, as Stripe's API answers
        it: preflights need no key and create nothing; every /v1 reply,
        errors included, may be read by any origin."""
        pk = self.key_client(self.daemon.merchants["K"]["publishable_key"])
        sk = self.key_client(self.daemon.merchants["K"]["secret_key"])
        before = len(sk.list_all("/v1/payment_methods", {"type": "card"}))
        origin = {"Origin": "https://shop.example"}
        pre = pk.request("OPTIONS", "/v1/payment_methods", key=None, headers=dict(origin, **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}))
        self.assertEqual(pre.status, 204, pre)
        h = {k.lower(): v for k, v in pre.headers.items()}
        self.assertEqual(h.get("access-control-allow-origin"), "*")
        self.assertEqual(set(h["access-control-allow-methods"].split(", ")), {"GET", "HEAD", "POST"})
        allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
        # every header stripe-node's browser build sends (telemetry from its
        # second request on; User-Agent where the browser lets a page set it)
        self.assertLessEqual({"authorization", "content-type", "idempotency-key", "stripe-version",
                              "stripe-account", "x-stripe-client-user-agent", "x-stripe-client-telemetry",
                              "user-agent"}, allowed)
        self.assertEqual(h.get("access-control-max-age"), "300")
        pre = pk.request("OPTIONS", "/v1/customers/cus_x", key=None, headers=origin)
        self.assertEqual(pre.status, 204, pre)
        self.assertEqual(set(pre.headers["Access-Control-Allow-Methods"].split(", ")),
                         {"GET", "HEAD", "POST", "DELETE"})
        self.assertStripeError(pk.request("OPTIONS", "/v1/nothing_here", key=None, headers=origin), 404,
                               "invalid_request_error")
        self.assertEqual(len(sk.list_all("/v1/payment_methods", {"type": "card"})), before)
        # the real requests carry the origin header and expose theirs
        ok = pk.post("/v1/payment_methods", dict(card("4242424242424242")), headers=origin)
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(ok.headers.get("Access-Control-Allow-Origin"), "*")
        self.assertIn("Request-Id", ok.headers.get("Access-Control-Expose-Headers", ""))
        bad = pk.get("/v1/payment_methods/" + ok.json["id"], headers=origin)
        self.assertEqual((bad.status, bad.headers.get("Access-Control-Allow-Origin")), (403, "*"))
        # outside /v1 (OAuth, metrics) no origin is allowed
        tok = pk.request("OPTIONS", "/oauth/token", key=None, headers=origin)
        self.assertEqual(tok.status, 405, tok)
        self.assertIsNone(tok.headers.get("Access-Control-Allow-Origin"))


if __name__ == "__main__":
    main()
