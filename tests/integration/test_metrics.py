"""GET /metrics after real traffic: promtool accepts the exposition, request
and payment counters move by exactly what was done, the endpoint is
loopback-only or token-protected; the log level changes at run time; request
log lines carry their fields and no card number ever reaches the log."""
import json
import random
import re
import shutil
import subprocess
import time

from harness import (PAN_DECLINE, PAN_OK, TEST_PANS, Client, Daemon, DaemonTestCase, HOST, card,
                     main)

PI = "/v1/payment_intents"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')


def parse(text):
    """{(name, labels-text): float} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "unparsable sample line: %r" % line
        out[(m.group(1), m.group(3) or "")] = float(m.group(4))
    return out


class MetricsTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def scrape(self):
        r = Client(HOST, self.daemon.port).get("/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers)
        return r.body.decode("utf-8")

    def wait_value(self, key, want, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            got = parse(self.scrape()).get(key, 0)
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def test_promtool_accepts_the_output_and_counts_are_exact(self):
        c = self.c()
        before = parse(self.scrape())
        # counters a fresh gateway has not moved yet are there at 0 (absent
        # until first used, rate() and absence alerts had nothing to read)
        for key in (("turnpike_payment_retries_total", ""), ("turnpike_payment_cascades_total", ""),
                    ("turnpike_processor_breaker_opens_total", 'processor="sandbox"'),
                    ("turnpike_stream_rejected_total", 'reason="credential"'),
                    ("turnpike_stream_rejected_total", 'reason="connection_limit"')):
            self.assertIn(key, before, key)
        ok_key = ("turnpike_http_requests_total", 'route="/v1/payment_intents",method="POST",code="2xx"')
        dec_key = ("turnpike_http_requests_total", 'route="/v1/payment_intents",method="POST",code="4xx"')
        hist_key = ("turnpike_http_request_duration_seconds_count", 'route="/v1/payment_intents",method="POST"')
        paid_key = ("turnpike_payments_total",
                    'status="succeeded",processor="sandbox",brand="visa",currency="usd"')
        failed_key = ("turnpike_payments_total",
                      'status="failed",processor="sandbox",brand="visa",currency="usd"')
        n_ok, n_dec = 7, 2
        for i in range(n_ok):
            r = c.post(PI, {"amount": 1000 + i, "currency": "usd", "confirm": "true",
                            "payment_method_data": card(PAN_OK)})
            self.assertEqual(r.status, 200, r)
        for i in range(n_dec):
            r = c.post(PI, {"amount": 500, "currency": "usd", "confirm": "true",
                            "payment_method_data": card(PAN_DECLINE)})
            self.assertEqual(r.status, 402, r)
        text = self.scrape()
        after = parse(text)
        self.assertEqual(after.get(ok_key, 0) - before.get(ok_key, 0), n_ok)
        self.assertEqual(after.get(dec_key, 0) - before.get(dec_key, 0), n_dec)
        self.assertEqual(after.get(hist_key, 0) - before.get(hist_key, 0), n_ok + n_dec)
        # Payment outcomes are counted from the committed events (asynchronously).
        self.assertEqual(self.wait_value(paid_key, before.get(paid_key, 0) + n_ok), before.get(paid_key, 0) + n_ok)
        self.assertEqual(self.wait_value(failed_key, before.get(failed_key, 0) + n_dec),
                         before.get(failed_key, 0) + n_dec)
        text = self.scrape()
        after = parse(text)
        self.assertGreater(after[("turnpike_store_batch_size_count", "")], 0)
        self.assertGreater(after[("turnpike_store_commit_duration_seconds_count", "")], 0)
        self.assertIn(("turnpike_writer_queue_depth", ""), after)
        # SQLite's page cache behind store/sqlite/pcache.c: every commit truncates it
        self.assertGreater(after[("turnpike_store_pcache_truncations", 'outcome="spared"')] +
                           after[("turnpike_store_pcache_truncations", 'outcome="passed"')] +
                           after[("turnpike_store_pcache_truncations", 'outcome="scan_saved"')], 0)
        self.assertIn(("turnpike_stream_connections", ""), after)
        # histogram buckets are cumulative and end at _count
        inf = after[("turnpike_http_request_duration_seconds_bucket",
                     'route="/v1/payment_intents",method="POST",le="+Inf"')]
        self.assertEqual(inf, after[hist_key])
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian package prometheus) is needed")
        p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode())

    def test_a_request_whose_client_half_closed_is_still_counted_and_logged(self):
        """A client that sends its request and half-closes (shutdown SHUT_WR)
        may get no reply: libmicrohttpd 0.9.75 takes the FIN read with the
        request as an abort. The payment is made all the same, so it is
        counted and logged, as 499 with the reply it did not get: every
        payment made has its request line (there were ~100 of 400 without
        one, and the metrics missed them too)."""
        import socket
        import threading
        mark = "hc%d" % int(time.time() * 1000)
        key = self.daemon.merchants["m"]["secret_key"]
        before = parse(self.scrape())
        codes = [("turnpike_http_requests_total", 'route="/v1/payment_intents",method="POST",code="%s"' % c)
                 for c in ("2xx", "4xx")]

        def one(i):
            b = ("amount=1505&currency=usd&confirm=true&payment_method=pm_card_visa&metadata[hc]=%s"
                 % mark).encode()
            head = ("POST /v1/payment_intents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
                    % (key, len(b))).encode()
            s = socket.create_connection((HOST, self.daemon.port), timeout=30)
            try:
                s.sendall(head + b)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            finally:
                s.close()

        def worker(t):
            for k in range(25):
                one(t * 100 + k)
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        made = [p["id"] for p in self.c().list_all(PI, {"limit": 100})
                if p["metadata"].get("hc") == mark]
        self.assertEqual(len(made), 200)
        deadline = time.monotonic() + 10
        while True:
            logged = {json.loads(l)["object"]: json.loads(l) for l in self.daemon.log_text().splitlines()
                      if '"event":"request"' in l and '"route":"/v1/payment_intents"' in l
                      and '"method":"POST"' in l}
            missing = [p for p in made if p not in logged]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(missing, [], "payments made without a request line")
        for p in made:
            line = logged[p]
            self.assertIn(line["status"], (200, 499), line)
            if line["status"] == 499:
                self.assertEqual(line["reply_status"], 200, line)
        after = parse(self.scrape())
        self.assertGreaterEqual(sum(after.get(k, 0) - before.get(k, 0) for k in codes), 200)

    def test_odd_methods_and_paths_neither_break_nor_fill_the_output(self):
        """Any method token and any bytes in a path (libmicrohttpd takes both):
        the method label is one of a fixed set, and log lines and the request
        log stay valid UTF-8 JSON."""
        import socket
        key = self.daemon.merchants["m"]["secret_key"]
        for i, method in enumerate([b'G"T', b"G\\T", b"\xffX"] + [b"Z%03d" % n for n in range(60)]):
            s = socket.create_connection((self.daemon.host, self.daemon.port), timeout=5)
            try:
                s.sendall(method + b" /v1/charges/ch_%ff%c3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Authorization: Bearer " + key.encode() + b"\r\n\r\n")
                while s.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                s.close()
        r = self.c().get("/v1/charges/ch_%ff%c3")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(self.c().get("/v1/turnpike/requests/" + r.headers["Request-Id"]).status, 200)
        text = self.scrape()
        methods = set(re.findall(r'method="([^"]*)"', text))
        self.assertLessEqual(methods, {"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH", "other"}, methods)
        p = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        with open(self.daemon.log_path, "rb") as f:
            raw = f.read()
        for line in raw.splitlines():
            if line.startswith(b"{"):
                json.loads(line.decode("utf-8"))  # strict: raises on invalid UTF-8

    def test_health_probes_answer_without_credentials(self):
        anon = Client(HOST, self.daemon.port)
        r = anon.get("/healthz")
        self.assertEqual((r.status, r.json["status"]), (200, "ok"))
        r = anon.get("/readyz")
        self.assertEqual((r.status, r.json["status"]), (200, "ready"), r)

    def test_ready_as_soon_as_it_listens(self):
        """/readyz asked the moment the listener is up is ready: the first
        heartbeat commits before it listens (a probe there saw 503
        store_not_writable until that commit landed, a few ms, 1 start in
        20 on a loaded machine). Asked in the same breath as the start."""
        from harness import Daemon
        for _ in range(3):
            d = Daemon()
            d.create_merchant("m")
            try:
                d.start()
                r = Client(HOST, d.port).get("/readyz")
                self.assertEqual((r.status, r.json["status"]), (200, "ready"), r)
            finally:
                d.cleanup()

    def test_log_level_changes_at_run_time(self):
        c = self.c()
        r = c.post("/v1/turnpike/log_level", {"level": "debug"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["level"], "debug")
        self.assertEqual(r.json["previous"], "info")
        r = c.post("/v1/turnpike/log_level", {"level": "loud"})
        self.assertStripeError(r, 400, param="level")
        r = c.post("/v1/turnpike/log_level", {"level": "warn"})
        self.assertEqual(r.json["previous"], "debug")
        mark = "lvl-" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(16))
        c.get("/v1/payment_intents/pi_%s" % mark.replace("-", ""))
        r = Client(HOST, self.daemon.port).post("/v1/turnpike/log_level", {"level": "debug"})
        self.assertStripeError(r, 401)
        r = c.post("/v1/turnpike/log_level", {"level": "info"})
        self.assertEqual(r.status, 200, r)
        c.get("/v1/payment_intents/pi_%s" % mark.replace("-", ""))
        # the request at info is written (within [log] buffer_ms, bounded
        # here); the same one at warn, made before it, was not
        self.daemon.wait_log(mark.replace("-", ""))
        lines = [l for l in self.daemon.log_text().splitlines() if mark.replace("-", "") in l]
        self.assertEqual(len(lines), 1, lines)

    def test_buffered_request_lines_keep_their_order_and_are_written(self):
        c = self.c()
        # A request line alone reaches the log within [log] buffer_ms (100).
        lone = "pi_lone%s" % "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12))
        c.get("/v1/payment_intents/%s" % lone)
        deadline = time.time() + 5
        while lone not in self.daemon.log_text() and time.time() < deadline:
            time.sleep(0.02)
        self.assertIn(lone, self.daemon.log_text())
        # A warn line (the level change) writes the buffered request lines
        # first, at once: each before it, in the order they were made.
        marks = ["pi_ord%d%s" % (i, "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12)))
                 for i in range(5)]
        for m in marks:
            c.get("/v1/payment_intents/%s" % m)
        r = c.post("/v1/turnpike/log_level", {"level": "info"})
        self.assertEqual(r.status, 200, r)
        lines = [json.loads(l) for l in self.daemon.log_text().splitlines() if l.startswith("{")]
        pos = {}
        for i, l in enumerate(lines):
            if l.get("event") == "request" and l.get("path", "").split("/")[-1] in marks:
                pos[l["path"].split("/")[-1]] = i
        change = max(i for i, l in enumerate(lines) if l.get("event") == "log_level_changed")
        self.assertEqual(sorted(pos), sorted(marks), "request lines missing before the warn line")
        self.assertEqual([pos[m] for m in marks], sorted(pos[m] for m in marks))
        self.assertTrue(all(p < change for p in pos.values()), (pos, change))

    def test_request_log_lines_have_their_fields_and_no_card_numbers(self):
        c = self.c()
        r = c.post(PI, {"amount": 4200, "currency": "usd", "confirm": "true",
                        "payment_method_data": card(PAN_OK)})
        self.assertEqual(r.status, 200, r)
        pi = r.json["id"]
        for pan in TEST_PANS:
            c.post(PI, {"amount": 4300, "currency": "usd", "confirm": "true",
                        "payment_method_data": card(pan)})
            c.post("/v1/payment_methods", {"type": "card", "card[number]": pan, "card[exp_month]": "12",
                                           "card[exp_year]": "2034", "card[cvc]": "123"})
            r_last = c.get("/v1/payment_methods/%s" % pan)  # a card number in a URL path
        self.daemon.wait_log(r_last.headers["Request-Id"])  # lines are written in order: all before it too
        log = self.daemon.log_text()
        lines = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
        reqs = [l for l in lines if l.get("event") == "request" and l.get("object") == pi]
        self.assertTrue(reqs, "no request line for %s" % pi)
        line = reqs[0]
        for field in ("ts", "level", "request_id", "merchant", "object", "latency_us", "status", "route", "ip"):
            self.assertIn(field, line)
        self.assertEqual(line["ip"], "127.0.0.1")
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["merchant"], self.daemon.merchants["m"]["id"])
        self.assertEqual(line["request_id"], r.headers["Request-Id"])
        for pan in TEST_PANS:
            self.assertNotIn(pan, log, "a card number reached the log")
        # A decline names the PaymentIntent it made; a replay says it is one.
        d = c.post(PI, {"amount": 4400, "currency": "usd", "confirm": "true",
                        "payment_method": "pm_card_chargeDeclined"}, idem="decline-log-1")
        self.assertEqual(d.status, 402, d)
        again = c.post(PI, {"amount": 4400, "currency": "usd", "confirm": "true",
                            "payment_method": "pm_card_chargeDeclined"}, idem="decline-log-1")
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true")
        self.daemon.wait_log(again.headers["Request-Id"])
        lines = [json.loads(l) for l in self.daemon.log_text().splitlines() if l.startswith("{")]
        by_id = {l.get("request_id"): l for l in lines if l.get("event") == "request"}
        first = by_id[d.headers["Request-Id"]]
        self.assertEqual(first["object"], d.json["error"]["payment_intent"]["id"], first)
        self.assertNotIn("replayed", first)
        self.assertTrue(by_id[again.headers["Request-Id"]].get("replayed"), by_id[again.headers["Request-Id"]])


class OperatorRoutesBehindAProxyTest(DaemonTestCase):
    """Behind a trusted proxy the client is the one X-Forwarded-For names:
    the process-wide log level is changed from the gateway's own host
    only, not by a merchant's key from elsewhere (every tenant's request
    log would go quiet)."""
    @classmethod
    def config(cls):
        return "[server]\ntrusted_proxies = 127.0.0.1, ::1\n"

    def test_the_log_level_is_the_operator_s(self):
        c = self.c()
        r = c.post("/v1/turnpike/log_level", {"level": "error"}, headers={"X-Forwarded-For": "203.0.113.9"})
        err = self.assertStripeError(r, 403, "permission_error")
        self.assertEqual(err["tp_code"], 2009, r)
        r = c.post("/v1/turnpike/log_level", {"level": "warn"}, headers={"X-Forwarded-For": "127.0.0.1"})
        self.assertEqual((r.status, r.json.get("previous")), (200, "info"), r)

    def test_the_processors_figures_are_the_operator_s(self):
        """GET /v1/turnpike/processors counts every tenant's payments: from
        elsewhere a merchant's key watched another's volume and declines;
        now it is read from the gateway's own host only."""
        c = self.c()
        r = c.get("/v1/turnpike/processors", headers={"X-Forwarded-For": "203.0.113.9"})
        err = self.assertStripeError(r, 403, "permission_error")
        self.assertEqual(err["tp_code"], 2009, r)
        self.assertNotIn(b'"calls"', r.body)
        r = c.get("/v1/turnpike/processors", headers={"X-Forwarded-For": "127.0.0.1"})
        self.assertEqual(r.status, 200, r)
        self.assertIn("calls", r.json["data"][0])


class MetricsTokenTest(DaemonTestCase):
    MERCHANTS = ("m",)

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(config="[metrics]\ntoken = s3cret-scrape\n")
        except Exception:
            cls.daemon.cleanup()
            raise

    def test_token_is_required_when_configured(self):
        anon = Client(HOST, self.daemon.port)
        self.assertStripeError(anon.get("/metrics"), 401)
        wrong = Client(HOST, self.daemon.port, key="s3cret-scrapX")
        self.assertStripeError(wrong.get("/metrics"), 401)
        # a merchant's Stripe key is not the scrape token
        self.assertStripeError(self.c().get("/metrics"), 401)
        ok = Client(HOST, self.daemon.port, key="s3cret-scrape").get("/metrics")
        self.assertEqual(ok.status, 200, ok)
        self.assertIn(b"# TYPE turnpike_http_requests_total counter", ok.body)
        # RFC 9110 15.5.2: the 401 names its scheme
        self.assertEqual(wrong.get("/metrics").headers.get("WWW-Authenticate"), 'Bearer realm="turnpike-metrics"')

    def test_token_guesses_count_as_failed_logins(self):
        """Guesses at the scrape token were not limited ([ratelimit]
        auth_failures covers bad keys and client secrets)."""
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config="[metrics]\ntoken = s3cret-scrape\n[ratelimit]\nauth_failures = 3\nauth_window = 60\n")
            wrong = Client(HOST, d.port, key="guess")
            got = [wrong.get("/metrics").status for _ in range(5)]
            self.assertEqual(got[:3], [401, 401, 401], got)
            self.assertEqual(got[-1], 429, got)
            # the right token too, from that address, until the window ends
            self.assertEqual(Client(HOST, d.port, key="s3cret-scrape").get("/metrics").status, 429)
            # in a bucket of their own: the address's API clients go on (a
            # scraper left on a rotated token locked them out)
            self.assertEqual(d.client("m").get("/v1/balance").status, 200)
            bad = Client(HOST, d.port, key="sk_test_nope")
            self.assertEqual([bad.get("/v1/balance").status for _ in range(4)][-1], 429)
        finally:
            d.cleanup()
        # behind a trusted proxy an IPv6 /64 is one client, as for API keys
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config="[metrics]\ntoken = s3cret-scrape\n[ratelimit]\nauth_failures = 3\nauth_window = 60\n"
                           "[server]\ntrusted_proxies = 127.0.0.1\n")
            wrong = Client(HOST, d.port, key="guess")
            got = [wrong.get("/metrics", headers={"X-Forwarded-For": "2001:db8:0:1::%d" % i}).status
                   for i in range(1, 6)]
            self.assertEqual(got, [401, 401, 401, 429, 429], got)
        finally:
            d.cleanup()

    def test_payments_are_counted_with_alerts_off(self):
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config="[alerts]\nenabled = false\n")
            c = d.client("m")
            for pm in ("pm_card_visa", "pm_card_visa", "pm_card_chargeDeclined"):
                c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": pm})
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                text = Client(HOST, d.port).get("/metrics").body.decode()
                got = {k: v for k, v in parse(text).items() if k[0] == "turnpike_payments_total"}
                if sum(got.values()) >= 3:
                    break
                time.sleep(0.1)
            self.assertEqual(sum(v for k, v in got.items() if 'status="succeeded"' in k[1]), 2, got)
            self.assertEqual(sum(v for k, v in got.items() if 'status="failed"' in k[1]), 1, got)
            self.assertNotIn("alert_opened", d.log_text())
        finally:
            d.cleanup()


if __name__ == "__main__":
    main()
