"""3-D Secure challenge: the redirect page, approve and fail, with and without
return_url, manual capture, bad tokens, and the events it leaves."""
import html.parser
import json
import time
import urllib.parse

import threading
import unittest

from harness import (Daemon, DaemonTestCase, PAN_3DS, PAN_3DS_2, PAN_OK, Sim, card, main)

PI = "/v1/payment_intents"
RETURN_URL = "https://shop.example/return?order=17"


class ChallengePage(html.parser.HTMLParser):
    """Collects the forms of the challenge page: method, action, hidden
    inputs and the values of submit buttons named result."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"method": (a.get("method") or "").lower(),
                               "action": a.get("action"), "hidden": {}, "results": []})
        elif self.forms and tag in ("input", "button"):
            f = self.forms[-1]
            if (a.get("type") or "").lower() == "hidden" and a.get("name"):
                f["hidden"][a["name"]] = a.get("value", "")
            if a.get("name") == "result":
                f["results"].append(a.get("value"))


class ThreeDSTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def start_challenge(self, return_url=RETURN_URL, pan=PAN_3DS, **extra):
        params = {"amount": 3100, "currency": "eur", "confirm": "true",
                  "payment_method_data": card(pan)}
        if return_url:
            params["return_url"] = return_url
        params.update(extra)
        r = self.c().post(PI, params)
        self.assertEqual(r.status, 200, r)
        pi = r.json
        self.assertEqual(pi["status"], "requires_action", r)
        na = pi["next_action"]
        self.assertEqual(na["type"], "redirect_to_url", r)
        url = na["redirect_to_url"]["url"]
        if return_url:
            self.assertEqual(na["redirect_to_url"].get("return_url"), return_url, r)
        u = urllib.parse.urlsplit(url)
        self.assertEqual(u.scheme, "http", url)
        self.assertTrue(u.path.startswith("/v1/turnpike/3ds/" + pi["id"]), url)
        token = urllib.parse.parse_qs(u.query).get("token", [""])[0]
        self.assertTrue(token, url)
        return pi, url, token

    def fetch_page(self, url):
        """GET the challenge page (no auth) and check its two forms."""
        u = urllib.parse.urlsplit(url)
        r = self.c().get(u.path + "?" + u.query, key=None)
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("Content-Type", ""), r)
        page = ChallengePage()
        page.feed(r.body.decode("utf-8"))
        self.assertEqual(len(page.forms), 2, r.body[:2000])
        results = set()
        for f in page.forms:
            self.assertEqual(f["method"], "post", f)
            if f["action"]:
                # relative to the page (a proxy may serve the gateway under a prefix)
                self.assertFalse(f["action"].startswith("/"), f)
                self.assertEqual(urllib.parse.urlsplit(urllib.parse.urljoin(url, f["action"])).path, u.path, f)
            self.assertIn("token", f["hidden"], f)
            results.update(f["results"])
        self.assertEqual(results, {"approve", "fail"})
        return u.path, page.forms[0]["hidden"]["token"]

    def submit(self, path, token, result):
        return self.c().post(path, {"token": token, "result": result}, key=None)

    def approve_redirected(self, pi, url, token):
        """Walk the page, approve, check the redirect; the PI afterwards."""
        path, _ = self.fetch_page(url)
        self.assertRedirect(self.submit(path, token, "approve"), pi, "succeeded")
        return self.get_pi(pi["id"])

    def get_pi(self, pi_id):
        r = self.c().get(PI + "/" + pi_id)
        self.assertEqual(r.status, 200, r)
        return r.json

    def assertRedirect(self, r, pi, status):
        self.assertEqual(r.status, 303, r)
        loc = r.headers.get("Location")
        self.assertTrue(loc, r)
        self.assertTrue(loc.startswith("https://shop.example/return?"), loc)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertEqual(q.get("order"), ["17"], loc)
        self.assertEqual(q.get("payment_intent"), [pi["id"]], loc)
        self.assertEqual(q.get("payment_intent_client_secret"), [pi["client_secret"]], loc)
        self.assertEqual(q.get("redirect_status"), [status], loc)

    def events_for(self, pi_id, want, timeout=5.0):
        """Types of this PI's events, oldest first, once `want` are all there."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.c().list_all("/v1/events")
            types = [e["type"] for e in reversed(evs)
                     if e["data"]["object"].get("id") == pi_id]
            if set(want) <= set(types) or time.monotonic() > deadline:
                return types
            time.sleep(0.2)

    def assertAuthenticationRequired(self, r, amount, issuer_declined):
        """402 card_error authentication_required, the PaymentIntent back to
        requires_payment_method (in the error and stored), nothing charged.
        Off-session the issuer declines it soft: a failed charge, named by
        the error and the PaymentIntent, as Stripe records it; with
        error_on_requires_action nothing is sent, and there is none."""
        self.assertEqual(r.status, 402, r)
        e = r.json["error"]
        self.assertEqual(e["type"], "card_error", r)
        self.assertEqual(e["code"], "authentication_required", r)
        self.assertEqual(e["decline_code"], "authentication_required", r)
        # Stripe's words and page (integrations compare the message)
        self.assertEqual(e["message"], "Your card was declined. This transaction requires authentication.", r)
        self.assertEqual(e["doc_url"], "https://stripe.com/docs/error-codes/authentication-required", r)
        self.assertTrue(e["payment_method"]["id"].startswith("pm_"), r)
        pi = e["payment_intent"]
        self.assertEqual(pi["status"], "requires_payment_method", r)
        self.assertEqual(pi["last_payment_error"]["code"], "authentication_required", r)
        got = self.get_pi(pi["id"])
        self.assertEqual(got["status"], "requires_payment_method", got)
        self.assertEqual(got["amount_received"], 0, got)
        self.assertEqual(got["amount"], amount, got)
        self.assertIn("payment_intent.payment_failed", self.events_for(pi["id"], ["payment_intent.payment_failed"]))
        if not issuer_declined:
            self.assertIsNone(got["latest_charge"], got)
            self.assertNotIn("charge", e, r)
            return got
        self.assertEqual(e.get("charge"), got["latest_charge"], r)
        self.assertEqual(got["last_payment_error"]["charge"], got["latest_charge"], got)
        ch = self.c().get("/v1/charges/" + got["latest_charge"]).json
        self.assertEqual((ch["status"], ch["paid"], ch["captured"], ch["amount"], ch["amount_captured"]),
                         ("failed", False, False, amount, 0), ch)
        self.assertEqual((ch["failure_code"], ch["outcome"]["type"], ch["outcome"]["reason"]),
                         ("authentication_required", "issuer_declined", "authentication_required"), ch)
        self.assertEqual(ch["failure_message"], e["message"], ch)
        self.assertEqual((ch["payment_intent"], ch["payment_method"], ch["balance_transaction"]),
                         (pi["id"], e["payment_method"]["id"], None), ch)
        self.assertNotIn("processor", ch.get("turnpike", {}), ch)
        # built as every charge is: the merchant's statement descriptor
        self.assertTrue(ch["calculated_statement_descriptor"], ch)
        self.assertIn("charge.failed", self.events_for(ch["id"], ["charge.failed"]))
        return got

    def test_off_session_3ds_card_fails_with_authentication_required(self):
        r = self.c().post(PI, {"amount": 3300, "currency": "eur", "confirm": "true", "off_session": "true",
                               "payment_method_data": card(PAN_3DS)})
        self.assertAuthenticationRequired(r, 3300, issuer_declined=True)

    def test_stripes_us_card_and_processing_error_ids_behave_as_documented(self):
        """Stripe's testing page: 4000008400000027 (US) requires 3-D Secure
        (it paid with no challenge, off-session too);
        pm_card_threeDSecureRequiredProcessingError and ...Optional... exist
        (they were unknown ids: 404)."""
        r = self.c().post(PI, {"amount": 3500, "currency": "usd", "confirm": "true",
                               "return_url": "https://shop.example/r",
                               "payment_method_data": card("4000008400000027")})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        pm = self.c().get("/v1/payment_methods/" + r.json["payment_method"]).json
        self.assertEqual(pm["card"]["country"], "US", pm)
        r = self.c().post(PI, {"amount": 3500, "currency": "usd", "confirm": "true", "off_session": "true",
                               "payment_method_data": card("4000008400000027")})
        self.assertAuthenticationRequired(r, 3500, issuer_declined=True)
        r = self.c().post(PI, {"amount": 3600, "currency": "usd", "confirm": "true",
                               "return_url": "https://shop.example/r",
                               "payment_method": "pm_card_threeDSecureRequiredProcessingError"})
        self.assertEqual((r.status, r.json["error"]["code"]), (402, "card_declined"), r)
        r = self.c().post(PI, {"amount": 3700, "currency": "usd", "confirm": "true",
                               "return_url": "https://shop.example/r",
                               "payment_method_options[card][request_three_d_secure]": "any",
                               "payment_method": "pm_card_threeDSecureOptionalProcessingError"})
        self.assertEqual(r.status // 100, 4, r)
        self.assertEqual(r.json["error"]["code"], "processing_error", r)
        for tok in ("tok_threeDSecureRequiredProcessingError", "tok_threeDSecureOptionalProcessingError"):
            self.assertEqual(self.c().post("/v1/payment_methods", {"type": "card", "card[token]": tok}).status, 200,
                             tok)

    def test_error_on_requires_action_fails_instead_of_asking(self):
        r = self.c().post(PI, {"amount": 3400, "currency": "eur", "confirm": "true",
                               "error_on_requires_action": "true", "payment_method_data": card(PAN_3DS_2)})
        self.assertAuthenticationRequired(r, 3400, issuer_declined=False)

    def test_request_three_d_secure_any_challenges_a_card_that_does_not_ask(self):
        # 5555... needs no authentication by itself; the merchant asks for it.
        pi, url, token = self.start_challenge(pan="5555555555554444", **{
            "payment_method_options[card][request_three_d_secure]": "any"})
        self.assertEqual(pi["payment_method_options"]["card"]["request_three_d_secure"], "any", pi)
        got = self.approve_redirected(pi, url, token)
        self.assertEqual(got["status"], "succeeded", got)
        self.assertEqual(got["amount_received"], 3100, got)
        # automatic (the default) leaves such a card alone
        r = self.c().post(PI, {"amount": 3500, "currency": "eur", "confirm": "true",
                               "payment_method_options[card][request_three_d_secure]": "automatic",
                               "payment_method_data": card("5555555555554444")})
        self.assertEqual(r.json["status"], "succeeded", r)
        # Stripe's cards 3-D Secure cannot run on are not challenged even
        # when asked: 4242 (not enrolled) and 378282246310005 (not supported)
        for pan in (PAN_OK, "378282246310005"):
            for rq in ("any", "challenge"):
                r = self.c().post(PI, {"amount": 3500, "currency": "eur", "confirm": "true",
                                       "return_url": RETURN_URL,
                                       "payment_method_data": card(pan, cvc="1234" if pan[0] == "3" else "123"),
                                       "payment_method_options[card][request_three_d_secure]": rq})
                self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), (pan, rq, r))
        # 4000000000003097: 3-D Secure supported, not required; when asked for, the attempt fails
        r = self.c().post(PI, {"amount": 3500, "currency": "eur", "confirm": "true", "return_url": RETURN_URL,
                               "payment_method_data": card("4000000000003097")})
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)
        r = self.c().post(PI, {"amount": 3500, "currency": "eur", "confirm": "true", "return_url": RETURN_URL,
                               "payment_method_data": card("4000000000003097"),
                               "payment_method_options[card][request_three_d_secure]": "any"})
        self.assertEqual((r.status, r.json["error"]["code"], r.json["error"]["payment_intent"]["status"]),
                         (402, "processing_error", "requires_payment_method"), r)
        # 4000008400001280: 3-D Secure required, the lookup fails: declined, no challenge
        r = self.c().post(PI, {"amount": 3500, "currency": "eur", "confirm": "true", "return_url": RETURN_URL,
                               "payment_method_data": card("4000008400001280")})
        self.assertEqual((r.status, r.json["error"]["code"]), (402, "card_declined"), r)

    def test_bad_request_three_d_secure_and_automatic_payment_methods_change_nothing(self):
        before = len(self.c().list_all(PI))
        for extra, param in (({"payment_method_options[card][request_three_d_secure]": "sometimes"},
                              "payment_method_options[card][request_three_d_secure]"),
                             ({"automatic_payment_methods[allow_redirects]": "never"},
                              "automatic_payment_methods[enabled]"),
                             ({"automatic_payment_methods[enabled]": "true",
                               "automatic_payment_methods[allow_redirects]": "sometimes"},
                              "automatic_payment_methods[allow_redirects]"),
                             ({"automatic_payment_methods[colour]": "red"}, "automatic_payment_methods[colour]"),
                             ({"automatic_payment_methods[enabled]": "true", "payment_method_types[]": "card"},
                              "automatic_payment_methods")):
            params = {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)}
            params.update(extra)
            r = self.c().post(PI, params)
            self.assertStripeError(r, 400, "invalid_request_error", param=param)
        self.assertEqual(len(self.c().list_all(PI)), before)

    def test_automatic_payment_methods_are_shown_as_stripe_does(self):
        r = self.c().post(PI, {"amount": 1000, "currency": "usd", "automatic_payment_methods[enabled]": "true"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["automatic_payment_methods"], {"allow_redirects": "always", "enabled": True})
        self.assertEqual(r.json["payment_method_types"], ["card"])
        r = self.c().post(PI, {"amount": 1000, "currency": "usd", "automatic_payment_methods[enabled]": "true",
                               "automatic_payment_methods[allow_redirects]": "never", "confirm": "true",
                               "payment_method": "pm_card_visa", "confirmation_method": "manual"})
        self.assertEqual(r.json["status"], "succeeded", r)
        self.assertEqual(r.json["automatic_payment_methods"], {"allow_redirects": "never", "enabled": True})
        self.assertEqual(r.json["confirmation_method"], "manual")
        self.assertEqual(self.get_pi(r.json["id"])["automatic_payment_methods"]["allow_redirects"], "never")

    def test_challenge_url_points_at_this_daemon(self):
        _, url, _ = self.start_challenge()
        self.assertEqual(urllib.parse.urlsplit(url).netloc, self.daemon.addr, url)

    def test_approve_with_return_url_redirects_and_succeeds(self):
        pi, url, token = self.start_challenge()
        path, form_token = self.fetch_page(url)
        self.assertEqual(form_token, token)
        r = self.submit(path, token, "approve")
        self.assertRedirect(r, pi, "succeeded")
        got = self.get_pi(pi["id"])
        self.assertEqual(got["status"], "succeeded", got)
        self.assertEqual(got["amount_received"], 3100, got)
        self.assertIsNone(got.get("next_action"), got)
        # a second submission does not move the payment again
        r = self.submit(path, token, "fail")
        self.assertLess(r.status, 500, r)
        again = self.get_pi(pi["id"])
        self.assertEqual(again["status"], "succeeded", again)
        self.assertEqual(again["amount_received"], 3100, again)

    def test_approvals_at_once_authorize_once(self):
        """Twelve approvals of one challenge at once (a double-clicked
        button, a retrying browser): one authorization, one charge; the
        others wait for the first and find the payment moved on."""
        import threading
        for _ in range(3):
            pi, url, token = self.start_challenge()
            path, _ = self.fetch_page(url)
            go, out = threading.Barrier(12), []

            def approve():
                go.wait()
                out.append(self.submit(path, token, "approve").status)
            ts = [threading.Thread(target=approve) for _ in range(12)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            charges = self.c().get("/v1/charges", {"payment_intent": pi["id"]}).json["data"]
            self.assertEqual(len(charges), 1, (out, [c["id"] for c in charges]))
            self.assertEqual(out.count(303), 1, out)
            got = self.get_pi(pi["id"])
            self.assertEqual((got["status"], got["amount_received"]), ("succeeded", 3100), got)

    def test_one_unattached_card_waiting_on_several_challenges_pays_once(self):
        """A PaymentMethod attached to no customer pays once, also when
        several PaymentIntents wait on its challenge at the same time (each
        paid when approved): the first approval pays, the others fail with
        payment_method_consumed; so does an inline one a second
        PaymentIntent paid with while its own waited."""
        pm = self.c().post("/v1/payment_methods", {"type": "card", "card": card(PAN_3DS)["card"]}).json["id"]
        waiting = []
        for _ in range(3):
            r = self.c().post(PI, {"amount": 3100, "currency": "eur", "confirm": "true", "payment_method": pm,
                                   "return_url": RETURN_URL})
            self.assertEqual(r.json["status"], "requires_action", r)
            u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
            waiting.append((r.json["id"], u.path, urllib.parse.parse_qs(u.query)["token"][0]))
        outcomes = []
        for pi_id, path, token in waiting:
            a = self.submit(path, token, "approve")
            self.assertEqual(a.status, 303, a)
            got = self.get_pi(pi_id)
            outcomes.append((got["status"], (got["last_payment_error"] or {}).get("tp_code")))
        self.assertEqual(outcomes, [("succeeded", None), ("requires_payment_method", 1104),
                                    ("requires_payment_method", 1104)])
        # inline: made by PI1, which waits; PI2 pays with it; PI1's approval then finds it spent
        pi1, url, token = self.start_challenge(pan="4000000000003055", **{
            "payment_method_options[card][request_three_d_secure]": "any"})
        made = pi1["payment_method"]
        r = self.c().post(PI, {"amount": 500, "currency": "eur", "confirm": "true", "payment_method": made})
        self.assertEqual(r.json["status"], "succeeded", r)
        path, _ = self.fetch_page(url)
        self.assertEqual(self.submit(path, token, "approve").status, 303)
        self.assertEqual(self.get_pi(pi1["id"])["status"], "requires_payment_method")

    def test_a_return_url_must_be_an_absolute_url(self):
        """Stripe: 400 url_invalid for a return_url that is not a URL; never a
        script (javascript:, data:), a scheme-relative //host or a CR/LF that
        would split the Location header. App schemes are fine."""
        for bad in ("not a url", "javascript:alert(1)//", "data:text/html,<b>x</b>", "//evil.example/x",
                    "https://shop.example/r\r\nSet-Cookie: a=b", "https:///path", "/relative/path",
                    "https://shop.example/" + "x" * 2100):
            r = self.c().post(PI, {"amount": 3100, "currency": "eur", "confirm": "true",
                                   "payment_method_data": card(PAN_3DS), "return_url": bad})
            self.assertEqual((r.status, r.json["error"]["code"], r.json["error"].get("param")),
                             (400, "url_invalid", "return_url"), (bad[:40], r))
            r = self.c().post("/v1/setup_intents", {"confirm": "true", "payment_method_data": card(PAN_3DS),
                                                    "payment_method_data[type]": "card", "return_url": bad})
            self.assertEqual((r.status, r.json["error"]["code"]), (400, "url_invalid"), (bad[:40], r))
        self.assertEqual(self.c().get(PI, {"limit": 100}).json["data"][:1] and
                         [p for p in self.c().get(PI, {"limit": 100}).json["data"]
                          if p.get("next_action") and "javascript" in json.dumps(p)], [])
        pi, url, token = self.start_challenge(return_url="myapp://checkout/done")
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "approve")
        self.assertEqual(r.status, 303, r)
        self.assertTrue(r.headers["Location"].startswith("myapp://checkout/done?payment_intent=" + pi["id"]), r)

    def test_the_redirect_keeps_a_fragment_last_and_the_merchants_own_query(self):
        """RFC 3986: the parameters go into the query, before a #fragment; a
        redirect_status in the merchant's own query is left alone."""
        ret = "https://shop.example/return?next=/done?redirect_status=succeeded&order=17#/checkout/done"
        pi, url, token = self.start_challenge(return_url=ret, pan=PAN_3DS)
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "approve")
        self.assertEqual(r.status, 303, r)
        loc = r.headers["Location"]
        u = urllib.parse.urlsplit(loc)
        self.assertEqual(u.fragment, "/checkout/done", loc)
        q = urllib.parse.parse_qs(u.query)
        self.assertEqual((q["next"], q["order"], q["payment_intent"], q["payment_intent_client_secret"]),
                         (["/done?redirect_status=succeeded"], ["17"], [pi["id"]], [pi["client_secret"]]), loc)
        self.assertEqual(q["redirect_status"], ["succeeded"], loc)
        # a long return_url (2 KB) keeps every parameter
        ret = "https://shop.example/return?pad=" + "p" * 1950
        pi, url, token = self.start_challenge(return_url=ret, pan=PAN_3DS)
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "fail")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["Location"]).query)
        self.assertEqual((q["payment_intent_client_secret"], q["redirect_status"]),
                         ([pi["client_secret"]], ["failed"]), r)

    def test_a_return_url_in_another_script_is_sent_back_percent_encoded(self):
        """RFC 9110 10.2.2: Location is a URI, ASCII. A return_url with UTF-8
        (an IRI) or characters a URI may not hold goes back percent-encoded,
        as a browser would send it; what it says is unchanged."""
        ret = "https://shop.example/caf\u00e9/\u6ce8\u6587?q={a|b}&n=\u00fc#sch\u00f6n"
        pi, url, token = self.start_challenge(return_url=ret, pan=PAN_3DS)
        self.assertEqual(pi["next_action"]["redirect_to_url"]["return_url"], ret)  # the object keeps it as given
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "approve")
        self.assertEqual(r.status, 303, r)
        loc = r.headers["Location"]
        self.assertTrue(loc.isascii(), loc)
        self.assertTrue(loc.startswith("https://shop.example/caf%C3%A9/%E6%B3%A8%E6%96%87?q=%7Ba%7Cb%7D&n=%C3%BC&"
                                       "payment_intent=" + pi["id"]), loc)
        u = urllib.parse.urlsplit(loc)
        self.assertEqual(urllib.parse.unquote(u.fragment), "sch\u00f6n", loc)
        self.assertEqual(urllib.parse.parse_qs(u.query)["redirect_status"], ["succeeded"], loc)

    def test_the_challenge_page_cannot_be_framed_or_leak_its_link(self):
        # framed only by the merchant's own page: the origin of its return_url
        # (Stripe's "3D Secure in an iframe"), by no other, and by none
        # without an http(s) return_url
        for ret, ancestors in ((RETURN_URL, "https://shop.example"),
                               ("http://127.0.0.1:8123/back?x=1", "http://127.0.0.1:8123"),
                               ("myapp://done", "'none'"), ("https://a.example;script-src/x", "'none'"),
                               # an origin has no userinfo, and its scheme and host are any case
                               ("https://user:pw@shop.example/r", "https://shop.example"),
                               ("HTTPS://Shop.Example:8443/R", "https://shop.example:8443"),
                               ("https://shop.ex%61mple/r", "'none'"),
                               # a backslash ends the authority, as browsers read it
                               ("https://shop.example\\@attacker.example/r", "https://shop.example"),
                               (None, "'none'")):
            with self.subTest(ret=ret):
                pi, url, token = self.start_challenge(return_url=ret)
                u = urllib.parse.urlsplit(url)
                r = self.c().get(u.path + "?" + u.query, key=None)
                self.assertEqual(r.status, 200, r)
                csp = r.headers.get("Content-Security-Policy", "")
                self.assertIn("frame-ancestors %s;" % ancestors, csp)
                self.assertEqual(r.headers.get("X-Frame-Options"), "DENY" if ancestors == "'none'" else None)
        pi, url, token = self.start_challenge(return_url=None)
        u = urllib.parse.urlsplit(url)
        r = self.c().get(u.path + "?" + u.query, key=None)
        csp = r.headers.get("Content-Security-Policy", "")
        self.assertIn("default-src 'none'", csp)
        self.assertEqual(r.headers.get("Referrer-Policy"), "no-referrer")
        self.assertEqual(r.headers.get("X-Content-Type-Options"), "nosniff")
        self.assertNotIn("Strict-Transport-Security", r.headers)  # RFC 6797 7.2: not over plain HTTP
        self.assertNotIn("Access-Control-Allow-Origin", r.headers)  # no other origin's script reads it

    def test_manual_confirmation_returns_to_the_server_after_the_challenge(self):
        """confirmation_method=manual (Stripe): the approved challenge puts
        the PaymentIntent back in requires_confirmation, nothing charged; the
        server's confirmation then authorizes without a second challenge;
        a publishable key cannot confirm it at all."""
        pi, url, token = self.start_challenge(confirmation_method="manual")
        path, _ = self.fetch_page(url)
        self.assertRedirect(self.submit(path, token, "approve"), pi, "succeeded")
        got = self.get_pi(pi["id"])
        self.assertEqual(got["status"], "requires_confirmation", got)
        self.assertIsNone(got["next_action"], got)
        self.assertEqual((got["amount_received"], got["latest_charge"]), (0, None), got)
        pk = self.daemon.merchants["m"]["publishable_key"]
        r = self.c().post(PI + "/" + pi["id"] + "/confirm", {"client_secret": pi["client_secret"]}, key=pk)
        self.assertStripeError(r, 400, "invalid_request_error")
        self.assertIn("confirmation_method", r.json["error"]["message"], r)
        self.assertEqual(self.get_pi(pi["id"])["status"], "requires_confirmation")
        r = self.c().post(PI + "/" + pi["id"] + "/confirm", {"expand[]": "latest_charge"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["status"], r.json["amount_received"]), ("succeeded", 3100), r)
        tds = r.json["latest_charge"]["payment_method_details"]["card"]["three_d_secure"]
        self.assertEqual(tds["result"], "authenticated", r)
        # the authentication's id (EMV 3DS: a UUID); it was null
        self.assertRegex(tds["transaction_id"] or "", r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        self.assertNotIn("turnpike", self.get_pi(pi["id"]))

    def test_manual_confirmation_challenges_again_for_another_amount(self):
        pi, url, token = self.start_challenge(confirmation_method="manual")
        path, _ = self.fetch_page(url)
        self.assertRedirect(self.submit(path, token, "approve"), pi, "succeeded")
        r = self.c().post(PI + "/" + pi["id"], {"amount": 3300})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_confirmation"), r)
        r = self.c().post(PI + "/" + pi["id"] + "/confirm", {"return_url": RETURN_URL})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        self.assertEqual(self.get_pi(pi["id"])["amount_received"], 0)

    def test_cvc_check_after_the_challenge_says_whether_a_cvc_came(self):
        """The CVC is not kept past the confirmation that brought it, but
        the charge made after the challenge still says whether one came:
        pass with one, null without (as without a challenge)."""
        for cvc, want in (("314", "pass"), (None, None)):
            pi, url, token = self.start_challenge(payment_method_data=card(PAN_3DS, cvc=cvc))
            path, _ = self.fetch_page(url)
            self.assertRedirect(self.submit(path, token, "approve"), pi, "succeeded")
            got = self.c().get(PI + "/" + pi["id"], {"expand[]": "latest_charge"}).json
            self.assertEqual(got["status"], "succeeded", got)
            self.assertEqual(got["latest_charge"]["payment_method_details"]["card"]["checks"]["cvc_check"], want,
                             (cvc, got["latest_charge"]))

    def test_fail_with_return_url_redirects_and_requires_payment_method(self):
        pi, url, token = self.start_challenge()
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "fail")
        self.assertRedirect(r, pi, "failed")
        got = self.get_pi(pi["id"])
        self.assertEqual(got["status"], "requires_payment_method", got)
        self.assertEqual(got["last_payment_error"]["code"],
                         "payment_intent_authentication_failure", got)
        # Stripe's shape for a failed challenge: not a card_error
        self.assertEqual(got["last_payment_error"]["type"], "invalid_request_error", got)
        self.assertTrue(got["last_payment_error"]["message"].startswith(
            "The provided PaymentMethod has failed authentication."), got)
        self.assertEqual(got["amount_received"], 0, got)

    def test_each_challenge_has_its_own_link(self):
        """A failed challenge's link, used again once the PaymentIntent is
        confirmed with a new challenge, approves nothing (the link was the
        same for every challenge of a PaymentIntent)."""
        pi, url, token = self.start_challenge()
        path, _ = self.fetch_page(url)
        self.assertRedirect(self.submit(path, token, "fail"), pi, "failed")
        r = self.c().post(PI + "/%s/confirm" % pi["id"], {"payment_method_data": card(PAN_3DS),
                                                          "return_url": RETURN_URL})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        new_url = r.json["next_action"]["redirect_to_url"]["url"]
        self.assertNotEqual(new_url, url)
        r = self.submit(path, token, "approve")
        self.assertEqual(r.status, 409, r)
        self.assertEqual(self.get_pi(pi["id"])["status"], "requires_action")
        new_token = urllib.parse.parse_qs(urllib.parse.urlsplit(new_url).query)["token"][0]
        self.assertEqual(self.approve_redirected(pi, new_url, new_token)["status"], "succeeded")

    def test_changing_what_was_authenticated_ends_the_challenge(self):
        """amount, currency or the card changed in requires_action: back to
        requires_confirmation with no next_action, and the challenge link
        approves nothing (it authorized the new amount)."""
        for change in ({"amount": 9999}, {"currency": "usd"}, {"payment_method": "pm_card_visa"}):
            pi, url, token = self.start_challenge(capture_method="manual")
            r = self.c().post(PI + "/" + pi["id"], change)
            self.assertEqual((r.status, r.json["status"], r.json["next_action"]),
                             (200, "requires_confirmation", None), (change, r))
            path, _ = self.fetch_page(url)
            self.assertEqual(self.submit(path, token, "approve").status, 409, change)
            got = self.get_pi(pi["id"])
            self.assertEqual((got["status"], got["amount_capturable"]), ("requires_confirmation", 0), change)
        # what only describes the payment leaves the challenge as it is
        pi, url, token = self.start_challenge()
        r = self.c().post(PI + "/" + pi["id"], {"metadata[order]": "7", "description": "d"})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        self.assertEqual(self.approve_redirected(pi, url, token)["status"], "succeeded")

    def test_state_errors_name_the_payment_intent(self):
        pi, url, token = self.start_challenge()
        self.approve_redirected(pi, url, token)
        for path, params in (("/confirm", {}), ("/capture", {}), ("/cancel", {}), ("", {"amount": 5000})):
            r = self.c().post(PI + "/" + pi["id"] + path, params)
            self.assertEqual(r.status, 400, (path, r))
            self.assertEqual(r.json["error"]["payment_intent"]["id"], pi["id"], (path, r))
            self.assertEqual(r.json["error"]["payment_intent"]["status"], "succeeded")

    def test_a_publishable_key_expands_the_payment_method_only(self):
        c = self.c()
        cus = c.post("/v1/customers", {"email": "x@example.com", "metadata[secret]": "s"}).json
        pm = c.post("/v1/payment_methods/pm_card_visa/attach", {"customer": cus["id"]}).json
        pi = c.post(PI, {"amount": 1000, "currency": "usd", "customer": cus["id"], "payment_method": pm["id"]}).json
        pk = self.daemon.merchants["m"]["publishable_key"]
        base = {"client_secret": pi["client_secret"]}
        r = c.get(PI + "/" + pi["id"], dict(base, **{"expand[]": "payment_method"}), key=pk)
        self.assertEqual((r.status, r.json["payment_method"]["id"]), (200, pm["id"]), r)
        # the customer id and the merchant's metadata are the merchant's
        # (public_redact, as at the top level)
        self.assertEqual((r.json["payment_method"]["customer"], r.json["payment_method"]["metadata"]), (None, {}))
        for path in ("payment_method.customer", "customer", "latest_charge"):
            r = c.get(PI + "/" + pi["id"], dict(base, **{"expand[]": path}), key=pk)
            self.assertEqual((r.status, r.json["error"]["param"]), (400, "expand"), (path, r))
            self.assertNotIn("x@example.com", json.dumps(r.json))
        # an Idempotency-Key does not let a publishable key replay a secret key's confirm
        r = c.post(PI + "/" + pi["id"] + "/confirm", {}, headers={"Idempotency-Key": "order-2002"})
        self.assertEqual(r.status, 200, r)
        # (its keys are its own: the request runs, and without the secret is refused)
        r = c.post(PI + "/" + pi["id"] + "/confirm", {}, key=pk, headers={"Idempotency-Key": "order-2002"})
        self.assertEqual(r.status, 400, r)
        self.assertIsNone(r.headers.get("Idempotent-Replayed"))
        self.assertNotIn(pi["client_secret"], json.dumps(r.json))
        self.assertNotIn('"client_secret": "', json.dumps(r.json))

    def test_a_card_deleted_while_its_challenge_is_out_fails_the_payment(self):
        """The card source (or its customer) deleted before the page is
        approved: the payment fails and the customer goes back, as for a
        spent card; it answered 500 at every try, the payment stuck."""
        c = self.c()
        for kind in ("payment", "setup"):
            with self.subTest(kind=kind):
                cus = c.post("/v1/customers", {"source": "tok_threeDSecure2Required"}).json
                card = cus["default_source"]
                if kind == "payment":
                    r = c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "customer": cus["id"],
                                    "payment_method": card, "return_url": RETURN_URL})
                    path_kind = "payment_intent"
                else:
                    r = c.post("/v1/setup_intents", {"confirm": "true", "customer": cus["id"],
                                                     "payment_method": card, "return_url": RETURN_URL})
                    path_kind = "setup_intent"
                self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
                url = r.json["next_action"]["redirect_to_url"]["url"]
                u = urllib.parse.urlsplit(url)
                token = urllib.parse.parse_qs(u.query)["token"][0]
                self.assertEqual(c.delete("/v1/customers/%s/sources/%s" % (cus["id"], card)).status, 200)
                got = self.submit(u.path, token, "approve")
                self.assertEqual(got.status, 303, got)
                self.assertIn("redirect_status=failed", got.headers.get("Location", ""))
                obj = c.get(("/v1/payment_intents/" if kind == "payment" else "/v1/setup_intents/")
                            + r.json["id"]).json
                self.assertEqual(obj["status"], "requires_payment_method", obj)
                self.assertIn(path_kind, got.headers.get("Location", ""))
                if kind == "setup":  # the failed attempt still names the card
                    att = c.get("/v1/setup_attempts", {"setup_intent": r.json["id"]}).json["data"]
                    self.assertEqual([(a["status"], a["payment_method"]) for a in att][:1], [("failed", card)], att)

    def test_a_card_attached_elsewhere_while_its_challenge_is_out_does_not_pay(self):
        """A confirmation with a card another customer holds is refused; so
        is the approval of a challenge whose card was attached to a customer
        (one made with it) while the challenge was out."""
        c = self.c()
        pm = c.post("/v1/payment_methods", {"type": "card", "card[token]": "tok_threeDSecure2Required"}).json["id"]
        r = c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": pm,
                        "return_url": RETURN_URL})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query)["token"][0]
        self.assertEqual(c.post("/v1/customers", {"payment_method": pm}).status, 200)
        got = self.submit(u.path, token, "approve")
        self.assertEqual(got.status, 303, got)
        self.assertIn("redirect_status=failed", got.headers.get("Location", ""))
        self.assertEqual(c.get(PI + "/" + r.json["id"]).json["status"], "requires_payment_method")
        # a customer's card detached during its challenge pays no more, even
        # when the payment was to save it (setup_future_usage)
        cus = c.post("/v1/customers", {}).json["id"]
        pm = c.post("/v1/payment_methods", {"type": "card", "card[token]": "tok_threeDSecure2Required"}).json["id"]
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
        r = c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "customer": cus, "payment_method": pm,
                        "setup_future_usage": "off_session", "return_url": RETURN_URL})
        self.assertEqual(r.json["status"], "requires_action", r)
        u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
        self.assertEqual(c.post("/v1/payment_methods/%s/detach" % pm, {}).status, 200)
        got = self.submit(u.path, urllib.parse.parse_qs(u.query)["token"][0], "approve")
        self.assertIn("redirect_status=failed", got.headers.get("Location", ""), got)
        self.assertEqual(c.get(PI + "/" + r.json["id"]).json["status"], "requires_payment_method")
        # a SetupIntent's challenge alike, with its card detached or taken by
        # another customer meanwhile: it does not succeed with a card its
        # customer cannot use
        for how in ("detach", "elsewhere"):
            with self.subTest(how=how):
                cus = c.post("/v1/customers", {}).json["id"]
                pm = c.post("/v1/payment_methods", {"type": "card",
                                                    "card[token]": "tok_threeDSecure2Required"}).json["id"]
                if how == "detach":
                    self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
                si = c.post("/v1/setup_intents", {"customer": cus, "payment_method": pm, "confirm": "true",
                                                  "return_url": RETURN_URL}).json
                self.assertEqual(si["status"], "requires_action", si)
                u = urllib.parse.urlsplit(si["next_action"]["redirect_to_url"]["url"])
                token = urllib.parse.parse_qs(u.query)["token"][0]
                if how == "detach":
                    self.assertEqual(c.post("/v1/payment_methods/%s/detach" % pm, {}).status, 200)
                else:
                    other = c.post("/v1/customers", {}).json["id"]
                    self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": other}).status,
                                     200)
                got = self.submit(u.path, token, "approve")
                self.assertEqual(got.status, 303, got)
                self.assertIn("redirect_status=failed", got.headers.get("Location", ""))
                self.assertEqual(c.get("/v1/setup_intents/" + si["id"]).json["status"], "requires_payment_method")

    def test_approve_without_return_url_shows_a_page(self):
        pi, url, token = self.start_challenge(return_url=None, pan=PAN_3DS_2)
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "approve")
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("Content-Type", ""), r)
        self.assertEqual(self.get_pi(pi["id"])["status"], "succeeded")

    def test_fail_without_return_url_shows_a_page(self):
        pi, url, token = self.start_challenge(return_url=None)
        path, _ = self.fetch_page(url)
        r = self.submit(path, token, "fail")
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("Content-Type", ""), r)
        got = self.get_pi(pi["id"])
        self.assertEqual(got["status"], "requires_payment_method", got)
        self.assertEqual(got["last_payment_error"]["code"],
                         "payment_intent_authentication_failure", got)

    def test_approve_with_manual_capture_requires_capture_then_captures(self):
        pi, url, token = self.start_challenge(capture_method="manual")
        got = self.approve_redirected(pi, url, token)
        self.assertEqual(got["status"], "requires_capture", got)
        self.assertEqual(got["amount_capturable"], 3100, got)
        self.assertEqual(got["amount_received"], 0, got)
        r = self.c().post(PI + "/" + pi["id"] + "/capture")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        self.assertEqual(r.json["amount_received"], 3100, r)

    def test_wrong_token_is_refused_and_changes_nothing(self):
        pi, url, token = self.start_challenge()
        path, _ = self.fetch_page(url)
        for bad in ("", "x" * 64, token[:-1] + ("A" if token[-1] != "A" else "B")):
            with self.subTest(bad=bad[:8]):
                r = self.submit(path, bad, "approve")
                self.assertGreaterEqual(r.status, 400, r)
                self.assertLess(r.status, 500, r)
                self.assertEqual(self.get_pi(pi["id"])["status"], "requires_action")
        u = urllib.parse.urlsplit(url)
        r = self.c().get(u.path + "?token=wrong", key=None)
        self.assertGreaterEqual(r.status, 400, r)
        self.assertLess(r.status, 500, r)
        # the token of another payment does not open this one
        _, _, other_token = self.start_challenge()
        r = self.submit(path, other_token, "approve")
        self.assertGreaterEqual(r.status, 400, r)
        self.assertLess(r.status, 500, r)
        self.assertEqual(self.get_pi(pi["id"])["status"], "requires_action")
        # the right token still works afterwards
        r = self.submit(path, token, "approve")
        self.assertRedirect(r, pi, "succeeded")
        self.assertEqual(self.get_pi(pi["id"])["status"], "succeeded")

    def test_link_names_the_account_and_the_page_passes_it_on(self):
        # The link carries account= (the PaymentIntent is found by its
        # primary key (merchant, id)); the page's forms pass it on; a link
        # without it still works; a wrong account finds nothing and changes
        # nothing.
        acct = self.daemon.merchants["m"]["id"]
        pi, url, token = self.start_challenge()
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        self.assertEqual(q.get("account"), [acct], url)
        u = urllib.parse.urlsplit(url)
        page = self.c().get(u.path + "?" + u.query, key=None)
        self.assertIn(('name="account" value="%s"' % acct).encode(), page.body)
        # a malformed account is a bad link, never written into the page
        r = self.c().get(u.path + "?token=%s&account=%s" % (token, urllib.parse.quote("<script>")), key=None)
        self.assertEqual(r.status, 404, r)
        self.assertNotIn(b"<script>", r.body)
        for wrong in ("acct_nobody", "<script>", "x" * 300):
            with self.subTest(wrong=wrong[:12]):
                r = self.c().post(u.path, {"token": token, "result": "approve", "account": wrong}, key=None)
                self.assertGreaterEqual(r.status, 400, r)
                self.assertLess(r.status, 500, r)
                self.assertEqual(self.get_pi(pi["id"])["status"], "requires_action")
        r = self.c().post(u.path, {"token": token, "result": "approve", "account": acct}, key=None)
        self.assertRedirect(r, pi, "succeeded")
        self.assertEqual(self.get_pi(pi["id"])["status"], "succeeded")

    def test_events_show_requires_action_then_succeeded(self):
        pi, url, token = self.start_challenge()
        path, _ = self.fetch_page(url)
        self.assertRedirect(self.submit(path, token, "approve"), pi, "succeeded")
        want = ["payment_intent.requires_action", "payment_intent.succeeded"]
        types = self.events_for(pi["id"], want)
        for t in want:
            self.assertIn(t, types)
        self.assertLess(types.index("payment_intent.requires_action"),
                        types.index("payment_intent.succeeded"), types)

    def test_events_of_the_customers_answer_name_no_request(self):
        # Stripe: an event caused by the customer (the challenge answered on
        # the page), not by an API call, has request {id: null}.
        for result, final in (("approve", "payment_intent.succeeded"), ("fail", "payment_intent.payment_failed")):
            pi, url, token = self.start_challenge()
            path, _ = self.fetch_page(url)
            self.submit(path, token, result)
            self.events_for(pi["id"], [final])
            evs = [e for e in self.c().list_all("/v1/events") if e["data"]["object"].get("id") == pi["id"]
                   or e["data"]["object"].get("payment_intent") == pi["id"]]
            by_type = {e["type"]: e for e in evs}
            self.assertIn(final, by_type, [e["type"] for e in evs])
            self.assertTrue(by_type["payment_intent.requires_action"]["request"]["id"], evs)
            for e in evs:
                if e["type"] not in ("payment_intent.created", "payment_intent.requires_action"):
                    self.assertEqual(e["request"], {"id": None, "idempotency_key": None}, e["type"])


class UnknownOutcomeRedirectTest(unittest.TestCase):
    """An approved challenge whose authorization's outcome is not known when
    the page answers (the processor held its answer past the timeout, then
    went down): the customer is sent back with redirect_status=processing,
    not failed, since recovery may still find the card charged, and does."""

    def test_an_unknown_outcome_redirects_as_processing(self):
        sim = Sim()
        self.addCleanup(sim.stop)
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config=("[routing]\ndeadline_ms = 3000\nrecovery_interval_ms = 300\nbackoff_base_ms = 20\n\n"
                        "[processor.a]\ntype = restjson\nendpoint = http://%s/p/a\ntimeout_ms = 400\n"
                        "health_interval_ms = 0\n") % sim.rest)
        c = d.client("m")
        r = c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "return_url": RETURN_URL,
                        "payment_method_data": card(PAN_3DS)})
        self.assertEqual((r.status, r.json["status"]), (200, "requires_action"), r)
        pi = r.json
        u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
        q = dict(urllib.parse.parse_qsl(u.query))
        sim.faults("a", timeout_rate=1.0, timeout_mode="after", timeout_hold_ms=5000, timeout_operations="all")
        # the status queries that would settle it at once fail too: a goes
        # down once it has the authorization (journalled before its answer
        # is held)
        def outage_once_called():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    e["operation"] == "authorize" for e in sim.journal(payment=pi["id"])["entries"]):
                time.sleep(0.01)
            sim.faults("a", outage=True)
        t = threading.Thread(target=outage_once_called)
        t.start()
        r = c.post(u.path, {"token": q["token"], "account": q["account"], "result": "approve"}, key=None)
        t.join()
        self.assertEqual(r.status, 303, r)
        loc = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["Location"]).query)
        self.assertEqual((loc["payment_intent"], loc["redirect_status"]), ([pi["id"]], ["processing"]), r)
        self.assertEqual(c.get(PI + "/" + pi["id"]).json["status"], "processing")
        sim.faults("a", timeout_rate=0.0, outage=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.get(PI + "/" + pi["id"]).json["status"] == "processing":
            time.sleep(0.2)
        self.assertEqual(c.get(PI + "/" + pi["id"]).json["status"], "succeeded")



class PublicUrlTest(unittest.TestCase):
    """[server] public_url is the base of the links the gateway makes: one
    written with a trailing '/' made challenge links ".../" + "/v1/..."
    (404); one that is not an http(s) URL is refused at start."""

    def test_a_trailing_slash_is_not_doubled_and_a_bad_url_is_refused(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(extra_env={"TURNPIKE_SERVER_PUBLIC_URL": "http://gw.example/pay//"})
        pi = d.client("m").post(PI, {"amount": 1000, "currency": "usd", "confirm": "true",
                                     "payment_method": "pm_card_threeDSecure2Required",
                                     "return_url": "https://shop.example/r"}).json
        url = pi["next_action"]["redirect_to_url"]["url"]
        self.assertTrue(url.startswith("http://gw.example/pay/v1/turnpike/3ds/"), url)
        self.assertEqual(d.stop(), 0)
        for url in ("gw.example/pay", "http://", "https:///x", "http://a b", "http://x/?q=1", "http://x/#f"):
            bad = Daemon()
            self.addCleanup(bad.cleanup)
            with self.assertRaises(Exception, msg=url):
                bad.start(extra_env={"TURNPIKE_SERVER_PUBLIC_URL": url})
            self.assertIn("config_invalid", bad.log_text(), url)

if __name__ == "__main__":
    main()
