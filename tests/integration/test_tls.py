"""HTTPS: `serve --tls-cert/--tls-key` negotiates TLS 1.3 (curl), accepts
TLS 1.2 by default and refuses 1.1 (openssl s_client), refuses 1.2 when 1.3
is required ([tls] min_version), and a payment works over HTTPS with the
public URL (OAuth issuer) in https."""
import os
import shutil
import ssl
import subprocess
import tempfile
import unittest

from harness import Daemon, HOST, main


def run(cmd, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=30, **kw)


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    p = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"])
    if p.returncode != 0:
        raise RuntimeError(p.stdout.decode())
    return cert, key


def s_client(port, version_flag, cafile, cipher="DEFAULT", extra=()):
    """Handshake with one protocol version; (ok, output). SECLEVEL=0 lets the
    client offer old versions, so a refusal comes from the server."""
    p = run(["openssl", "s_client", "-connect", "%s:%d" % (HOST, port), version_flag, "-CAfile", cafile,
             "-cipher", cipher + "@SECLEVEL=0", "-brief"] + list(extra))
    out = p.stdout.decode("utf-8", "replace")
    return p.returncode == 0 and "Protocol version" in out, out


class TLSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tp-tls-")
        cls.cert, cls.key = make_cert(cls.tmp)
        cls.ctx = ssl.create_default_context(cafile=cls.cert)
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(args=["--tls-cert", cls.cert, "--tls-key", cls.key], ssl_context=cls.ctx)
        except Exception:
            cls.daemon.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_curl_negotiates_tls13(self):
        url = "https://%s:%d/healthz" % (HOST, self.daemon.port)
        p = run(["curl", "-sS", "-v", "--tlsv1.3", "--cacert", self.cert, url])
        out = p.stdout.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("SSL connection using TLSv1.3", out)
        self.assertIn('"status":"ok"', out)

    def test_tls12_is_accepted_and_tls11_refused_by_default(self):
        ok, out = s_client(self.daemon.port, "-tls1_2", self.cert)
        self.assertTrue(ok, out)
        self.assertIn("TLSv1.2", out)
        ok, out = s_client(self.daemon.port, "-tls1_1", self.cert)
        self.assertFalse(ok, out)
        ok, out = s_client(self.daemon.port, "-tls1_3", self.cert)
        self.assertTrue(ok, out)
        self.assertIn("TLSv1.3", out)

    def test_weak_tls12_suites_and_sha1_signatures_are_refused(self):
        """RFC 9325: no CBC suites with SHA-1 MACs (nor static RSA: this
        certificate is ECDSA), RFC 9155: no SHA-1 handshake signatures;
        ECDHE with AES-GCM is what TLS 1.2 gets."""
        for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"):
            ok, out = s_client(self.daemon.port, "-tls1_2", self.cert, cipher=weak)
            self.assertFalse(ok, (weak, out))
        ok, out = s_client(self.daemon.port, "-tls1_2", self.cert, extra=("-sigalgs", "ECDSA+SHA1"))
        self.assertFalse(ok, out)
        ok, out = s_client(self.daemon.port, "-tls1_2", self.cert, cipher="ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertTrue(ok, out)

    def test_plain_http_gets_no_answer(self):
        import http.client
        conn = http.client.HTTPConnection(HOST, self.daemon.port, timeout=5)
        try:
            with self.assertRaises((OSError, http.client.HTTPException)):
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                if r.status:  # MHD may answer nothing useful; a 200 would be wrong
                    self.assertNotEqual(r.status, 200)
                    raise OSError("no HTTP over TLS port")
        finally:
            conn.close()

    def test_overlong_request_line_is_closed_at_once(self):
        """A request target past 12 KiB (test_api_errors has the plain-HTTP
        414) over TLS: the connection is closed as soon as the line is
        parsed, not left to the idle timeout (libmicrohttpd 0.9.75 answered
        nothing to a line of ~16,300 bytes)."""
        import socket
        import time
        for n in (13000, 16300):
            raw = socket.create_connection((HOST, self.daemon.port), timeout=5)
            s = self.ctx.wrap_socket(raw, server_hostname=HOST)
            try:
                t = time.monotonic()
                s.sendall(("GET /v1/customers?q=%s HTTP/1.1\r\nHost: t\r\n\r\n" % ("a" * n)).encode())
                try:
                    data = s.recv(4096)  # a timeout (5 s) here fails the test
                except (ConnectionResetError, ssl.SSLError):
                    data = b""
                self.assertEqual(data, b"", n)
                self.assertLess(time.monotonic() - t, 4, n)
            finally:
                s.close()
        self.assertEqual(self.daemon.client("m").get("/v1/customers").status, 200)

    def test_payment_over_https_and_https_public_url(self):
        c = self.daemon.client("m")
        r = c.post("/v1/payment_intents", {"amount": 2000, "currency": "usd", "confirm": "true",
                                           "payment_method": "pm_card_visa"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded")
        # RFC 6797: a host served over TLS tells browsers to stay on it.
        self.assertEqual(r.headers.get("Strict-Transport-Security"), "max-age=31536000", r.headers)
        r = c.get("/.well-known/oauth-authorization-server", key=None)
        self.assertEqual(r.json["issuer"], "https://%s:%d" % (HOST, self.daemon.port))
        # The certificate is checked: an untrusting client fails.
        from harness import Client
        bad = Client(HOST, self.daemon.port, ssl_context=ssl.create_default_context())
        with self.assertRaises(ssl.SSLError):
            bad.get("/healthz")


class TLS13OnlyTest(unittest.TestCase):
    """[tls] min_version = 1.3 in the config file (cert and key there too)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tp-tls13-")
        cls.cert, cls.key = make_cert(cls.tmp)
        cls.ctx = ssl.create_default_context(cafile=cls.cert)
        cls.daemon = Daemon()
        try:
            cls.daemon.start(config="[tls]\ncert = %s\nkey = %s\nmin_version = 1.3\n" % (cls.cert, cls.key),
                             ssl_context=cls.ctx)
        except Exception:
            cls.daemon.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_tls12_is_refused_and_tls13_accepted(self):
        ok, out = s_client(self.daemon.port, "-tls1_2", self.cert)
        self.assertFalse(ok, out)
        ok, out = s_client(self.daemon.port, "-tls1_3", self.cert)
        self.assertTrue(ok, out)
        self.assertIn("TLSv1.3", out)

    def test_bad_min_version_is_a_start_error(self):
        d = Daemon()
        try:
            with self.assertRaises(RuntimeError):
                d.start(args=["--tls-cert", self.cert, "--tls-key", self.key, "--tls-min-version", "1.1"],
                        ssl_context=self.ctx)
        finally:
            d.cleanup()


    def test_a_wrong_certificate_or_key_is_named_at_start(self):
        """A key of another certificate, an encrypted key, a file that is no
        certificate: serve exits 1 naming the file and why (it said
        listen_failed "No such file or directory")."""
        other_dir = tempfile.mkdtemp(prefix="tp-tls-other-", dir=self.tmp)
        _, other_key = make_cert(other_dir)
        enc_key = os.path.join(other_dir, "enc.pem")
        run(["openssl", "pkey", "-in", other_key, "-aes256", "-passout", "pass:x", "-out", enc_key])
        os.chmod(enc_key, 0o600)
        junk = os.path.join(other_dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        # the right key, readable by everyone (PostgreSQL's rule: 0600)
        open_key = os.path.join(other_dir, "open.pem")
        shutil.copy(self.key, open_key)
        os.chmod(open_key, 0o644)
        for cert, key, file, why in ((self.cert, other_key, other_key, "does not match"),
                                     (self.cert, enc_key, enc_key, "encrypted"),
                                     (junk, self.key, junk, "no PEM certificate"),
                                     (self.cert, open_key, open_key, "can be read by any user")):
            d = Daemon()
            try:
                with self.assertRaises(RuntimeError):
                    d.start(args=["--tls-cert", cert, "--tls-key", key], ssl_context=self.ctx)
                log = d.log_text()
                self.assertIn('"event":"tls_config"', log)
                self.assertIn(why, log)
                self.assertIn(file, log)
                self.assertNotIn("listen_failed", log)
                # refused before anything was made (a store and a demo merchant were)
                self.assertFalse(os.path.exists(os.path.join(d.data, "turnpike.db")), log)
                self.assertEqual(d.proc.returncode, 2, log)
            finally:
                d.cleanup()


if __name__ == "__main__":
    main()
