"""Rate limits: a token bucket per API key ([ratelimit] rate, burst) answers
429 rate_limit with Retry-After, per key; repeated authentication failures
from one address ([ratelimit] auth_failures within auth_window seconds) are
answered 429 at once, for the API and the OAuth token endpoint alike.
Behind a trusted proxy ([server] trusted_proxies) the client address is the
one the proxy put in X-Forwarded-For; from anyone else the header counts for
nothing."""
import http.client
import socket
import time
import unittest

from harness import PAN_OK, DaemonTestCase, Daemon, card, form_encode, main

CONFIG = """[ratelimit]
rate = 2
burst = 4
auth_failures = 5
auth_window = 3
"""


def assert_refused_at_start(test, ini_text, *needles):
    """serve with this INI exits non-zero at start, naming each needle on stderr."""
    import subprocess
    from harness import BIN
    d = Daemon()
    try:
        ini = d.root + "/bad.ini"
        with open(ini, "w") as f:
            f.write(ini_text)
        p = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--data", d.data, "--config", ini],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
        test.assertNotEqual(p.returncode, 0)
        for n in needles:
            test.assertIn(n, p.stderr)
    finally:
        d.cleanup()


class RateLimitTest(DaemonTestCase):
    MERCHANTS = ("a", "b")

    @classmethod
    def config(cls):
        return CONFIG

    def test_key_bucket_gives_burst_then_429_with_retry_after(self):
        a, b = self.c("a"), self.c("b")
        statuses = [a.get("/v1/payment_intents").status for _ in range(4)]
        self.assertEqual(statuses, [200] * 4)
        r = a.get("/v1/payment_intents")
        err = self.assertStripeError(r, 429, "invalid_request_error", "rate_limit")
        self.assertEqual(err["tp_code"], 2026)
        wait = int(r.headers["Retry-After"])
        self.assertTrue(1 <= wait <= 2, r.headers)
        # Another key has its own bucket.
        self.assertEqual(b.get("/v1/payment_intents").status, 200)
        # Waiting as told is enough.
        time.sleep(wait)
        self.assertEqual(a.get("/v1/payment_intents").status, 200)
        # Writes count too, and a refused one does nothing.
        time.sleep(2.1)
        codes = [a.post("/v1/customers", {"email": "x%d@example.com" % i}).status for i in range(6)]
        self.assertEqual(codes[:4], [200] * 4)
        self.assertIn(429, codes[4:])
        time.sleep(2.1)
        n = len(a.list_all("/v1/customers"))
        self.assertEqual(n, codes.count(200))

    def test_all_tokens_of_one_oauth_client_share_its_bucket(self):
        import json
        import subprocess
        from harness import BIN
        time.sleep(2.1)
        out = subprocess.run([BIN, "oauth-client", "create", "--data", self.daemon.data, "--merchant",
                              self.daemon.merchants["b"]["id"], "--scopes", "payments:read"],
                             stdout=subprocess.PIPE, check=True, timeout=60, stdin=subprocess.DEVNULL).stdout
        cred = json.loads(out)
        anon = self.daemon.client(None)
        toks = []
        for _ in range(2):  # minting takes from the client's bucket too
            r = anon.post("/oauth/token", {"grant_type": "client_credentials", "client_id": cred["client_id"],
                                           "client_secret": cred["client_secret"]})
            self.assertEqual(r.status, 200, r)
            toks.append(r.json["access_token"])
        codes = []
        for i in range(6):
            c = self.daemon.client(None)
            c.key = toks[i % 2]
            codes.append(c.get("/v1/payment_intents").status)
        self.assertEqual(codes[:2], [200] * 2)
        self.assertIn(429, codes[2:])

    def test_an_oauth_clients_token_and_revoke_calls_take_from_its_bucket(self):
        """Minting and revoking went unlimited: each revocation of a live
        token is a write in the writer every merchant's commits wait on
        (a loop of them made another merchant's payments ~80 times
        slower), so they count in the client's bucket like its API calls;
        another client, and the merchant's own key, are not held back."""
        import json
        import subprocess
        from harness import BIN
        time.sleep(2.1)

        def client():
            out = subprocess.run([BIN, "oauth-client", "create", "--data", self.daemon.data, "--merchant",
                                  self.daemon.merchants["a"]["id"], "--scopes", "payments:read"],
                                 stdout=subprocess.PIPE, check=True, timeout=60, stdin=subprocess.DEVNULL).stdout
            return json.loads(out)
        cred, other = client(), client()
        anon = self.daemon.client(None)
        creds = {"client_id": cred["client_id"], "client_secret": cred["client_secret"]}
        codes, last = [], None
        for _ in range(5):
            r = anon.post("/oauth/token", dict(creds, grant_type="client_credentials"))
            codes.append(r.status)
            if r.status == 200:
                tok = r.json["access_token"]
                last = anon.post("/oauth/revoke", dict(creds, token=tok))
                codes.append(last.status)
            else:
                last = r
        self.assertEqual(codes[:4], [200] * 4, codes)
        self.assertEqual(codes.count(429), len(codes) - 4, codes)
        err = self.assertStripeError(last, 429, "invalid_request_error", "rate_limit")
        self.assertTrue(1 <= int(last.headers["Retry-After"]) <= 2, last.headers)
        self.assertEqual(err["tp_code"], 2026)
        ok = anon.post("/oauth/token", {"grant_type": "client_credentials", "client_id": other["client_id"],
                                        "client_secret": other["client_secret"]})
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(self.c("b").get("/v1/payment_intents").status, 200)

    def test_publishable_key_has_a_bucket_per_client_address(self):
        """A publishable key is public, so its tokens are counted per client
        address: one abuser cannot shut every shopper's checkout out."""
        time.sleep(2.1)
        pk = self.daemon.merchants["b"]["publishable_key"]
        body = form_encode(card(PAN_OK))

        def tokenise(src):
            conn = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=10,
                                              source_address=(src, 0))
            try:
                conn.request("POST", "/v1/payment_methods", body=body,
                             headers={"Authorization": "Bearer " + pk,
                                      "Content-Type": "application/x-www-form-urlencoded"})
                r = conn.getresponse()
                r.read()
                return r.status
            finally:
                conn.close()
        first = [tokenise("127.0.0.1") for _ in range(5)]
        self.assertEqual(first[:4], [200] * 4)
        self.assertEqual(first[4], 429)
        # another shopper of the same shop, and the shop's own server, are not shut out
        self.assertEqual(tokenise("127.0.0.2"), 200)
        self.assertEqual(self.c("b").get("/v1/payment_intents").status, 200)

    def test_repeated_auth_failures_are_answered_429(self):
        time.sleep(3.1)  # a fresh failure window
        bad = self.daemon.client(None)
        bad.key = "sk_test_wrong"
        for _ in range(5):
            self.assertStripeError(bad.get("/v1/payment_intents"), 401)
        r = bad.get("/v1/payment_intents")
        err = self.assertStripeError(r, 429, "invalid_request_error", "rate_limit")
        self.assertEqual(err["tp_code"], 2028)
        wait = int(r.headers["Retry-After"])
        self.assertTrue(1 <= wait <= 3, r.headers)
        # The address is slowed down whatever it sends, the token endpoint too ...
        self.assertEqual(self.c("b").get("/v1/payment_intents").status, 429)
        r = self.daemon.client(None).post("/oauth/token", {"grant_type": "client_credentials",
                                                           "client_id": "x", "client_secret": "y"})
        self.assertEqual(r.status, 429, r)
        # ... until the window is over; the answer came at once (no sleeping thread).
        t0 = time.monotonic()
        bad.get("/v1/payment_intents")
        self.assertLess(time.monotonic() - t0, 1.0)
        time.sleep(wait + 0.2)
        self.assertEqual(self.c("b").get("/v1/payment_intents").status, 200)
        # Failed client authentication at the token endpoint counts as well.
        time.sleep(3.1)
        anon = self.daemon.client(None)
        for _ in range(5):
            r = anon.post("/oauth/token", {"grant_type": "client_credentials", "client_id": "x",
                                           "client_secret": "y"})
            self.assertEqual(r.status, 401, r)
            self.assertEqual(r.json["error"], "invalid_client")
        self.assertEqual(self.c("b").get("/v1/payment_intents").status, 429)


class TrustedProxyTest(DaemonTestCase):
    """The daemon behind a reverse proxy at 127.0.0.1: every connection comes
    from the proxy, and the limits kept per client address follow the
    address it forwards. 127.0.0.2 plays a client that reaches the daemon
    directly and writes the header itself."""
    MERCHANTS = ("a", "b")

    @classmethod
    def config(cls):
        return CONFIG + "\n[server]\ntrusted_proxies = 127.0.0.1, ::1\n"

    def call(self, method, path, key, src="127.0.0.1", xff=None, body=None):
        conn = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=10,
                                          source_address=(src, 0))
        headers = {"Authorization": "Bearer " + key}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if xff is not None:
            headers["X-Forwarded-For"] = xff
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def test_publishable_key_buckets_follow_the_forwarded_address(self):
        pk = self.daemon.merchants["b"]["publishable_key"]
        body = form_encode(card(PAN_OK))

        def tokenise(**kw):
            return self.call("POST", "/v1/payment_methods", pk, body=body, **kw)
        # The shopper's own words to the left of the proxy's entry do not count.
        first = [tokenise(xff="198.51.100.%d, 203.0.113.5" % i) for i in range(5)]
        self.assertEqual(first, [200] * 4 + [429])
        # Another shopper behind the same proxy has a bucket of its own.
        self.assertEqual(tokenise(xff="203.0.113.6"), 200)
        self.assertEqual(tokenise(xff="203.0.113.5"), 429)
        # A client that is not a proxy cannot pick its bucket with the header:
        # every request from 127.0.0.2 is 127.0.0.2's, whatever it claims.
        direct = [tokenise(src="127.0.0.2", xff="192.0.2.%d" % i) for i in range(5)]
        self.assertEqual(direct, [200] * 4 + [429])
        # Nor borrow a forwarded shopper's: 203.0.113.7 still has its tokens.
        self.assertEqual(tokenise(xff="203.0.113.7"), 200)
        # The proxy's own requests (no header) are the proxy's.
        self.assertEqual(tokenise(), 200)

    def test_failed_logins_lock_out_the_forwarded_address_only(self):
        time.sleep(3.1)  # a fresh failure window
        for _ in range(5):
            self.assertEqual(self.call("GET", "/v1/payment_intents", "sk_test_wrong", xff="203.0.113.66"), 401)
        self.assertEqual(self.call("GET", "/v1/payment_intents", "sk_test_wrong", xff="203.0.113.66"), 429)
        sk = self.daemon.merchants["a"]["secret_key"]
        # The guesser is locked out even with the right key ...
        self.assertEqual(self.call("GET", "/v1/payment_intents", sk, xff="203.0.113.66"), 429)
        # ... the other clients behind the same proxy are not.
        self.assertEqual(self.call("GET", "/v1/payment_intents", sk, xff="203.0.113.67"), 200)
        self.assertEqual(self.call("GET", "/v1/payment_intents", sk), 200)

    def test_request_log_names_the_client_address(self):
        sk = self.daemon.merchants["a"]["secret_key"]

        def request_id(src, xff):
            conn = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=10,
                                              source_address=(src, 0))
            headers = {"Authorization": "Bearer " + sk}
            if xff:
                headers["X-Forwarded-For"] = xff
            try:
                conn.request("GET", "/v1/customers/cus_nope", headers=headers)
                r = conn.getresponse()
                r.read()
                self.assertEqual(r.status, 404)
                return r.getheader("Request-Id")
            finally:
                conn.close()
        time.sleep(2.1)  # tokens for the lookups below
        cases = [("127.0.0.1", "192.0.2.1, 203.0.113.80", "203.0.113.80"),
                 ("127.0.0.1", None, "127.0.0.1"),
                 ("127.0.0.2", "203.0.113.81", "127.0.0.2")]
        for src, xff, want in cases:
            rid = request_id(src, xff)
            log = self.c("a").get("/v1/turnpike/requests/" + rid)
            self.assertEqual(log.status, 200, log)
            self.assertEqual(log.json["ip"], want, (src, xff))
            time.sleep(1.0)  # the key's bucket ([ratelimit] rate = 2) refills
        lines = [l for l in self.daemon.log_text().splitlines() if '"event":"request"' in l]
        self.assertTrue(any('"ip":"203.0.113.80"' in l for l in lines), "the log line names the forwarded client")

    def test_metrics_stay_loopback_only_behind_a_local_proxy(self):
        """A reverse proxy on this host makes every client look like
        loopback; /metrics (loopback only by default) goes by the address
        the proxy forwards, and a client it does not disclose is refused."""
        def metrics(xff):
            conn = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=10)
            try:
                conn.request("GET", "/metrics", headers={"X-Forwarded-For": xff} if xff else {})
                r = conn.getresponse()
                r.read()
                return r.status
            finally:
                conn.close()
        self.assertEqual(metrics(None), 200)          # the proxy host itself, or a scraper on it
        self.assertEqual(metrics("127.0.0.1"), 200)   # a local client through the proxy
        self.assertEqual(metrics("203.0.113.5"), 403)  # a remote client through the proxy
        self.assertEqual(metrics("127.0.0.1, 203.0.113.5"), 403)
        self.assertEqual(metrics("unknown"), 403)     # not disclosed

    def test_a_bad_setting_stops_the_server_at_start(self):
        assert_refused_at_start(self, "[server]\ntrusted_proxies = 10.0.0.0/8, proxy.example\n",
                                b"server.trusted_proxies", b"proxy.example")


class ForwardedHeaderTest(DaemonTestCase):
    """[server] forwarded_header = Forwarded: the proxies write RFC 7239's
    header, so that one is read and X-Forwarded-For (which such a proxy
    passes on from the client untouched) is not."""
    MERCHANTS = ("a",)

    @classmethod
    def config(cls):
        return CONFIG + "\n[server]\ntrusted_proxies = 127.0.0.1\nforwarded_header = Forwarded\n"

    def logged_ip(self, headers):
        sk = self.daemon.merchants["a"]["secret_key"]
        conn = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=10)
        try:
            conn.request("GET", "/v1/customers/cus_nope", headers=dict(headers, Authorization="Bearer " + sk))
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 404)
            rid = r.getheader("Request-Id")
        finally:
            conn.close()
        time.sleep(1.0)  # the key's bucket ([ratelimit] rate = 2) refills
        log = self.c("a").get("/v1/turnpike/requests/" + rid)
        self.assertEqual(log.status, 200, log)
        time.sleep(0.5)
        return log.json["ip"]

    def test_forwarded_is_read_and_x_forwarded_for_is_not(self):
        self.assertEqual(self.logged_ip({"Forwarded": 'for=192.0.2.9, for="[2001:db8::7]:4711";proto=https'}),
                         "2001:db8::7")
        self.assertEqual(self.logged_ip({"X-Forwarded-For": "203.0.113.9"}), "127.0.0.1")
        self.assertEqual(self.logged_ip({"Forwarded": "for=_hidden", "X-Forwarded-For": "203.0.113.9"}),
                         "127.0.0.1")

    def test_a_bad_header_name_stops_the_server_at_start(self):
        assert_refused_at_start(self, "[server]\nforwarded_header = X-Real-IP\n", b"server.forwarded_header")


NGINX = "/usr/sbin/nginx"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxProxyTest(DaemonTestCase):
    """The README's set-up, for real: nginx on this host proxies to the
    daemon with `proxy_set_header X-Forwarded-For
    $proxy_add_x_forwarded_for`, the daemon trusts 127.0.0.1. Shoppers at
    127.0.0.2 and 127.0.0.3 (nginx sees their addresses) get their own
    publishable-key buckets and show up in the request log."""
    MERCHANTS = ("a",)

    @classmethod
    def config(cls):
        return CONFIG + "\n[server]\ntrusted_proxies = 127.0.0.1, ::1\n"

    @classmethod
    def setUpClass(cls):
        import os
        import shutil
        import subprocess
        import tempfile
        if not os.access(NGINX, os.X_OK):
            raise unittest.SkipTest("no nginx (scripts/deps.sh installs nginx-light)")
        super().setUpClass()
        cls.ngx = tempfile.mkdtemp(prefix="tp-nginx-")
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(cls.ngx, d))
        user = ""
        if os.getuid() == 0:
            import grp
            import pwd
            user = "user %s %s;" % (pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name)
        cls.nginx = None
        for _ in range(3):
            cls.port = free_port()
            conf = os.path.join(cls.ngx, "nginx.conf")
            with open(conf, "w") as f:
                f.write("""%s
worker_processes 1;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;
    server {
        listen 127.0.0.1:%d;
        location / {
            proxy_pass http://%s:%d;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
""" % ((user,) + (cls.ngx,) * 7 + (cls.port, cls.daemon.host, cls.daemon.port)))
            cls.nginx = subprocess.Popen([NGINX, "-p", cls.ngx, "-c", conf, "-e", cls.ngx + "/error.log"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL)
            for _ in range(100):
                if cls.nginx.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", cls.port), timeout=0.2):
                        break
                except OSError:
                    time.sleep(0.05)
            if cls.nginx.poll() is None:
                break
        if cls.nginx is None or cls.nginx.poll() is not None:
            shutil.rmtree(cls.ngx, ignore_errors=True)
            super().tearDownClass()
            raise RuntimeError("nginx did not start")

    @classmethod
    def tearDownClass(cls):
        import shutil
        if getattr(cls, "nginx", None) is not None and cls.nginx.poll() is None:
            cls.nginx.terminate()
            try:
                cls.nginx.wait(10)
            except Exception:
                cls.nginx.kill()
        shutil.rmtree(getattr(cls, "ngx", ""), ignore_errors=True)
        super().tearDownClass()

    def via_nginx(self, src, method, path, key, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(src, 0))
        h = dict(headers or {}, Authorization="Bearer " + key)
        if body is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, r.getheader("Request-Id"), r.read()
        finally:
            conn.close()

    def test_clients_behind_nginx_keep_their_own_address(self):
        pk = self.daemon.merchants["a"]["publishable_key"]
        body = form_encode(card(PAN_OK))
        # A shopper who also writes the header: nginx appends the real
        # address, and that is the one counted.
        first = [self.via_nginx("127.0.0.2", "POST", "/v1/payment_methods", pk, body,
                                {"X-Forwarded-For": "198.51.100.%d" % i})[0] for i in range(5)]
        self.assertEqual(first, [200] * 4 + [429])
        self.assertEqual(self.via_nginx("127.0.0.3", "POST", "/v1/payment_methods", pk, body)[0], 200)
        sk = self.daemon.merchants["a"]["secret_key"]
        time.sleep(1.0)
        status, rid, _ = self.via_nginx("127.0.0.3", "GET", "/v1/customers/cus_nope", sk)
        self.assertEqual(status, 404)
        time.sleep(1.0)
        log = self.c("a").get("/v1/turnpike/requests/" + rid)
        self.assertEqual(log.status, 200, log)
        self.assertEqual(log.json["ip"], "127.0.0.3")


if __name__ == "__main__":
    main()
