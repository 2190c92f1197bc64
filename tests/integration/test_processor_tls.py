"""Outbound TLS to a REST/JSON processor: certificates are verified.

A small https processor written here (http.server + ssl, a self-signed
P-256 certificate for 127.0.0.1 made with openssl in a temp dir) answers the
documented contract: POST /v1/authorizations approves, GET /v1/health is ok.

- Without ca_file the gateway must not trust the self-signed certificate:
  the payment fails with an api_error (never a charge), the processor never
  sees an authorization (the PAN never left), the health check says down.
- With ca_file = the certificate, the same payment succeeds.
- Mutual TLS: a processor that requires a client certificate accepts the
  gateway only when client_cert / client_key are configured.
- A ca_file that does not exist, or client_cert without client_key, stops
  serve at start.
"""
import http.server
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from harness import HOST, PAN_OK, Daemon, card, check_registry, new_key, open_db_ro

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


def make_cert(d, name, cn, san=None):
    """A self-signed P-256 certificate and key: (cert path, key path)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-days", "2", "-subj", "/CN=" + cn, "-keyout", key, "-out", cert]
    if san:
        cmd += ["-addext", "subjectAltName=" + san]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   stdin=subprocess.DEVNULL, timeout=30)
    return cert, key


class TlsProcessor:
    """An https processor on 127.0.0.1:0; client_ca set = mutual TLS."""

    def __init__(self, cert, key, client_ca=None):
        self.requests = []  # (method, path)
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                js = json.loads(self.rfile.read(n)) if n else {}
                with outer.lock:
                    outer.requests.append(("POST", self.path))
                if self.path == "/v1/authorizations":
                    return self._reply(200, {
                        "id": "auth_" + js["reference"], "reference": js["reference"],
                        "status": "approved", "auth_code": "TLS123", "amount": js["amount"],
                        "currency": js["currency"], "captured": bool(js["capture"])})
                return self._reply(404, {"error": "no route"})

            def do_GET(self):
                with outer.lock:
                    outer.requests.append(("GET", self.path))
                if self.path == "/v1/health":
                    return self._reply(200, {"status": "ok"})
                return self._reply(404, {"error": "not found"})

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # refused handshakes are the point of some tests

        self.server = Server((HOST, 0), H)
        # Handshakes happen in the handler thread, so a refused client cannot
        # stall the accept loop.
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True,
                                             do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, method, path):
        with self.lock:
            return [r for r in self.requests if r == (method, path)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def config(port, extra=""):
    return ("[processor.p]\n"
            "type = restjson\n"
            "endpoint = https://127.0.0.1:%d\n"
            "timeout_ms = 2000\n"
            "health_interval_ms = 100\n" % port) + extra


class ProcessorTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tp-ptls-")
        cls.cert, cls.key = make_cert(cls.tmp, "server", "127.0.0.1", "IP:127.0.0.1")
        cls.client_cert, cls.client_key = make_cert(cls.tmp, "client", "turnpike-gateway")
        cls.proc = TlsProcessor(cls.cert, cls.key)
        cls.mtls = TlsProcessor(cls.cert, cls.key, client_ca=cls.client_cert)

    @classmethod
    def tearDownClass(cls):
        cls.proc.close()
        cls.mtls.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start(self, cfg):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config=cfg)
        return d, d.client("m")

    def pay(self, c):
        return c.post("/v1/payment_intents",
                      {"amount": 1500, "currency": "usd", "confirm": "true",
                       "payment_method_data": card(PAN_OK)},
                      headers={"Idempotency-Key": new_key("tls")})

    def processor(self, c):
        r = c.get("/v1/turnpike/processors")
        self.assertEqual(r.status, 200, r)
        return r.json["data"][0]

    def assert_failed_without_charge(self, d, c, r):
        self.assertGreaterEqual(r.status, 500, r)
        err = r.json["error"]
        self.assertEqual(err["type"], "api_error", r)
        check_registry(self, r, err)
        self.assertNotEqual(r.json.get("status"), "succeeded", r)
        # nothing was charged: no succeeded charge exists for the merchant
        lst = c.get("/v1/charges", {"limit": 100})
        if lst.status == 200:
            self.assertFalse([x for x in lst.json["data"] if x.get("status") == "succeeded"], lst)
        pis = c.get("/v1/payment_intents", {"limit": 100})
        self.assertEqual(pis.status, 200, pis)
        self.assertFalse([x for x in pis.json["data"] if x["status"] == "succeeded"], pis)

    def test_untrusted_certificate_is_refused(self):
        before = len(self.proc.seen("POST", "/v1/authorizations"))
        # a breaker that stays closed, so every attempt really reaches the handshake
        d, c = self.start(config(self.proc.port, "breaker_consecutive = 100000\nbreaker_min_calls = 100000\n"))
        r = self.pay(c)
        self.assert_failed_without_charge(d, c, r)
        # each attempt ended with the registry's TLS code
        pi = r.json["error"]["payment_intent"]["id"]
        db = open_db_ro(d)
        try:
            codes = [row[0] for row in db.execute(
                "SELECT result_code FROM attempts WHERE payment_intent = ?", (pi,))]
        finally:
            db.close()
        self.assertTrue(codes, "no attempt recorded")
        self.assertEqual(set(codes), {"processor_tls_failed"}, codes)
        # the handshake failed before any request: the processor got no
        # authorization (and so never saw the card)
        self.assertEqual(len(self.proc.seen("POST", "/v1/authorizations")), before)
        # why, once, in the log (not only at debug level)
        self.assertIn('"event":"processor_tls_failed"', d.log_text())
        wait_for(lambda: self.processor(c)["health"] == "down", what="health down")
        p = self.processor(c)
        self.assertGreaterEqual(p["errors"], 1, p)

    def test_ca_file_makes_it_trusted(self):
        before = len(self.proc.seen("POST", "/v1/authorizations"))
        d, c = self.start(config(self.proc.port, "ca_file = %s\n" % self.cert))
        wait_for(lambda: self.processor(c)["health"] == "up", what="health up")
        r = self.pay(c)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        self.assertEqual(len(self.proc.seen("POST", "/v1/authorizations")), before + 1)
        self.assertNotIn(self.cert, json.dumps(self.processor(c)))

    def test_mutual_tls(self):
        # trusted server, but no client certificate: the processor refuses us
        d, c = self.start(config(self.mtls.port, "ca_file = %s\n" % self.cert))
        r = self.pay(c)
        self.assert_failed_without_charge(d, c, r)
        self.assertEqual(self.mtls.seen("POST", "/v1/authorizations"), [])
        d.cleanup()
        # with the client certificate the payment goes through
        d, c = self.start(config(self.mtls.port, "ca_file = %s\nclient_cert = %s\nclient_key = %s\n"
                                 % (self.cert, self.client_cert, self.client_key)))
        r = self.pay(c)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        self.assertEqual(len(self.mtls.seen("POST", "/v1/authorizations")), 1)
        wait_for(lambda: self.processor(c)["health"] == "up", what="health up")

    def test_a_handshake_that_never_ends_is_not_an_unknown_outcome(self):
        """A processor that accepts the connection and never answers the
        TLS ClientHello: nothing could have been sent, so the call fails as
        not sent (processor_connect_timeout), not as an unknown outcome that
        leaves the payment processing."""
        import socket
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        self.addCleanup(lsock.close)
        port = lsock.getsockname()[1]
        d, c = self.start(config(port, "ca_file = %s\ntimeout_ms = 800\n" % self.cert))
        r = self.pay(c)
        self.assertGreaterEqual(r.status, 500, r)
        pi = r.json["error"]["payment_intent"]
        self.assertNotEqual(pi["status"], "processing", r)
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["status"], pi["status"])
        db = open_db_ro(d)
        try:
            rows = list(db.execute("SELECT state, result_code FROM attempts WHERE payment_intent = ?", (pi["id"],)))
        finally:
            db.close()
        self.assertTrue(rows, "no attempt recorded")
        self.assertEqual({row for row in rows}, {("failed", "processor_connect_timeout")}, rows)

    def test_bad_tls_settings_stop_serve(self):
        for extra, key in (("ca_file = %s\n" % os.path.join(self.tmp, "missing.pem"), "ca_file"),
                           ("client_cert = %s\n" % self.client_cert, "client_key")):
            d = Daemon()
            self.addCleanup(d.cleanup)
            d.create_merchant("m")
            with self.assertRaises(RuntimeError, msg=extra):
                d.start(config=config(self.proc.port, extra))
            log = d.log_text()
            self.assertIn("processor_config_invalid", log)
            self.assertIn(key, log)


if __name__ == "__main__":
    import harness
    harness.main()
