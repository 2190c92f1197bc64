"""Start and drive a real `turnpike serve` for the integration tests.

Standard library only. The daemon binary comes from TURNPIKE_BIN; every
daemon gets its own temporary data directory and listens on 127.0.0.1 with a
port the kernel picks (the daemon reports it in DATA/serve.addr).
"""
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
import uuid

BIN = os.environ.get("TURNPIKE_BIN", "/work/main/build/turnpike")
HOST = "127.0.0.1"


def hostport(host, port):
    """HOST:PORT as Turnpike writes and reads it: [HOST]:PORT for IPv6;
    port None gives the host part alone."""
    h = "[%s]" % host if ":" in host else host
    return h if port is None else "%s:%d" % (h, port)
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

# Test cards of the sandbox processor (contract).
PAN_OK = "4242424242424242"
PAN_DECLINE = "4000000000000002"
PAN_INSUFFICIENT = "4000000000009995"
PAN_EXPIRED = "4000000000000069"
PAN_3DS = "4000002760003184"
PAN_3DS_2 = "4000000000003220"
PAN_BAD_LUHN = "4242424242424241"
TEST_PANS = [PAN_OK, PAN_DECLINE, PAN_INSUFFICIENT, PAN_EXPIRED, PAN_3DS,
             PAN_3DS_2, PAN_BAD_LUHN]


def card(number, exp_month=12, exp_year=2034, cvc="123"):
    """payment_method_data for a raw card."""
    c = {"number": number, "exp_month": exp_month, "exp_year": exp_year}
    if cvc is not None:
        c["cvc"] = cvc
    return {"type": "card", "card": c}


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_key(prefix="it"):
    """A fresh Idempotency-Key: letters only, so that no run of its digits
    is ever a Luhn-valid card number that errors and logs mask (a key echoed
    in a message then failed a test now and then)."""
    return "%s-%s" % (prefix, uuid.uuid4().hex.translate(_NO_DIGITS))


def _flatten(prefix, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten("%s[%s]" % (prefix, k) if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten("%s[%d]" % (prefix, i), v, out)
    elif value is None:
        out.append((prefix, ""))
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    else:
        out.append((prefix, str(value)))


def form_pairs(params):
    """Bracket-encode nested dicts and lists the way Stripe's SDKs do.

    A list of (name, value) pairs is taken as already flat, so a test can
    send exactly the names it means (expand[]=..., duplicated keys)."""
    if params is None:
        return []
    if isinstance(params, (list, tuple)):
        return [(str(k), v if isinstance(v, str) else str(v)) for k, v in params]
    out = []
    _flatten("", params, out)
    return out


def form_encode(params):
    """application/x-www-form-urlencoded body or query string."""
    return urllib.parse.urlencode(form_pairs(params))


class Response(tuple):
    """(status, headers, json) that also keeps the raw body bytes."""

    def __new__(cls, status, headers, js, body):
        self = tuple.__new__(cls, (status, headers, js))
        self.body = body
        return self

    @property
    def status(self):
        return self[0]

    @property
    def headers(self):
        return self[1]

    @property
    def json(self):
        return self[2]

    def __repr__(self):
        text = self.body[:600].decode("utf-8", "replace")
        return "<HTTP %d %s>" % (self[0], text)


class Client:
    """One merchant's view of the API. A new TCP connection per request keeps
    threads independent and makes connection errors attributable."""

    def __init__(self, host, port, key=None, auth="bearer", timeout=30.0, ssl_context=None):
        self.host, self.port, self.key, self.auth = host, port, key, auth
        self.timeout = timeout
        self.ssl_context = ssl_context  # an ssl.SSLContext: talk HTTPS

    def _auth_header(self, key, auth):
        if key is None or auth is None:
            return None
        if auth == "bearer":
            return "Bearer " + key
        if auth == "basic":
            import base64
            return "Basic " + base64.b64encode((key + ":").encode()).decode()
        raise ValueError(auth)

    def request(self, method, path, params=None, *, body=None,
                content_type=None, headers=None, key=Ellipsis, auth=Ellipsis,
                idem=None, timeout=None):
        """Send one request and return Response(status, headers, json).

        params go in the query for GET/DELETE and in a form body otherwise;
        body (bytes or str) overrides that and is sent exactly as given."""
        key = self.key if key is Ellipsis else key
        auth = self.auth if auth is Ellipsis else auth
        hdrs = {}
        authz = self._auth_header(key, auth)
        if authz:
            hdrs["Authorization"] = authz
        if idem is not None:
            hdrs["Idempotency-Key"] = idem
        if body is None and params is not None:
            enc = form_encode(params)
            if method in ("GET", "DELETE"):
                if enc:
                    path += ("&" if "?" in path else "?") + enc
            else:
                body = enc
        if body is not None and method != "GET":  # a DELETE's body: stripe-go sends one
            if isinstance(body, str):
                body = body.encode("utf-8")
            hdrs["Content-Type"] = content_type or "application/x-www-form-urlencoded"
        elif method == "POST":
            body = b""
            hdrs["Content-Type"] = content_type or "application/x-www-form-urlencoded"
        if headers:
            hdrs.update(headers)
        if self.ssl_context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout or self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port,
                                              timeout=timeout or self.timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            js = None
            if data:
                try:
                    js = json.loads(data.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    js = None
            return Response(resp.status, resp.headers, js, data)
        finally:
            conn.close()

    def get(self, path, params=None, **kw):
        return self.request("GET", path, params, **kw)

    def post(self, path, params=None, **kw):
        return self.request("POST", path, params, **kw)

    def delete(self, path, params=None, **kw):
        return self.request("DELETE", path, params, **kw)

    def list_all(self, path, params=None, max_pages=500):
        """Every object of a list endpoint, newest first, following
        starting_after; bounded by max_pages."""
        params = dict(params or {})
        params.setdefault("limit", 100)
        out = []
        for _ in range(max_pages):
            r = self.get(path, params)
            if r.status != 200:
                raise AssertionError("list %s failed: %r" % (path, r))
            out.extend(r.json["data"])
            if not r.json.get("has_more") or not r.json["data"]:
                return out
            params["starting_after"] = r.json["data"][-1]["id"]
        raise AssertionError("list %s did not end after %d pages" % (path, max_pages))


class Daemon:
    """A `turnpike serve` process on its own data directory."""

    def __init__(self, root=None, host=HOST):
        self.host = host  # the loopback address it listens on: 127.0.0.1 or ::1
        self.root = root or tempfile.mkdtemp(prefix="tp-it-")
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.data, exist_ok=True)
        self.log_path = os.path.join(self.root, "daemon.log")
        self.proc = None
        self.port = None
        self.addr = None
        self.merchants = {}
        self.ssl_context = None  # set by start(ssl_context=...) for a daemon serving HTTPS

    # -- admin -----------------------------------------------------------
    def create_merchant(self, name):
        """Run `turnpike merchant create` and return its JSON object."""
        p = subprocess.run([BIN, "merchant", "create", "--data", self.data,
                            "--name", name], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60,
                           stdin=subprocess.DEVNULL)
        with open(self.log_path, "ab") as f:
            f.write(p.stderr)
        if p.returncode != 0:
            raise RuntimeError("merchant create failed (%d): %s" %
                               (p.returncode, p.stderr.decode("utf-8", "replace")[-2000:]))
        m = json.loads(p.stdout.decode("utf-8"))
        for field in ("id", "secret_key", "publishable_key"):
            if field not in m:
                raise RuntimeError("merchant create output lacks %s: %r" % (field, m))
        self.merchants[name] = m
        return m

    # -- lifecycle -------------------------------------------------------
    def start(self, extra_env=None, config=None, args=None, ssl_context=None):
        """Start serve on self.host (127.0.0.1) port 0 and wait for
        DATA/serve.addr and /healthz.
        config: INI text, written to ROOT/turnpike.ini and passed as --config;
        args: more command-line arguments; ssl_context: the daemon serves
        HTTPS (--tls-cert in args): probe and build clients with it."""
        self.ssl_context = ssl_context
        addr_file = os.path.join(self.data, "serve.addr")
        try:
            os.unlink(addr_file)
        except FileNotFoundError:
            pass
        env = dict(os.environ)
        if extra_env:
            env.update(extra_env)
        cmd = [BIN, "serve", "--listen", hostport(self.host, 0), "--data", self.data]
        if config is not None:
            ini = os.path.join(self.root, "turnpike.ini")
            with open(ini, "w") as f:
                f.write(config)
            cmd += ["--config", ini]
        cmd += list(args or [])
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("turnpike serve exited with %d before ready:\n%s" %
                                   (self.proc.returncode, self.log_tail()))
            try:
                with open(addr_file) as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            if text.endswith("\n"):
                host, _, port = text.strip().rpartition(":")
                if host != hostport(self.host, None):
                    raise RuntimeError("serve.addr names %r, not %s" % (text, self.host))
                self.port = int(port)
                self.addr = hostport(self.host, self.port)
                break
            time.sleep(0.05)
        else:
            self.kill9()
            raise RuntimeError("serve.addr did not appear within %.0f s:\n%s" %
                               (READY_TIMEOUT_S, self.log_tail()))
        while time.monotonic() < deadline:
            try:
                r = Client(self.host, self.port, timeout=5, ssl_context=self.ssl_context).get("/healthz")
                if r.status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError("/healthz not 200 within %.0f s:\n%s" %
                           (READY_TIMEOUT_S, self.log_tail()))

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM and wait; returns the exit code (SIGKILL after timeout,
        then the code is negative)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if rc is not None and (rc < 0 or rc > 2):  # a sanitizer's report (abort_on_error: -6), a hang: show why
            sys.stderr.write("turnpike serve stopped with %s; its log ends:\n%s\n" % (rc, self.log_text()[-8000:]))
        return rc

    def kill9(self):
        """SIGKILL the daemon (only the process we started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def cleanup(self):
        """Stop if running and delete the temp dir (TP_KEEP_TMP=1 keeps it)."""
        if self.proc is not None:
            self.stop()
        if os.environ.get("TP_KEEP_TMP"):
            sys.stderr.write("kept %s\n" % self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- access ----------------------------------------------------------
    def client(self, merchant=None, auth="bearer", timeout=30.0):
        """A Client for a merchant created by name (None: no key)."""
        key = self.merchants[merchant]["secret_key"] if merchant else None
        return Client(self.host, self.port, key=key, auth=auth, timeout=timeout, ssl_context=self.ssl_context)

    def db_path(self):
        return os.path.join(self.data, "turnpike.db")

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=10.0):
        """Wait (bounded) until text is in the log (request lines are
        buffered up to [log] buffer_ms); returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.02)

    def log_tail(self, n=4000):
        return self.log_text()[-n:]


REGISTRY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "errors", "registry.tsv")
_registry = None


def registry():
    """errors/registry.tsv as {number: row dict}."""
    global _registry
    if _registry is None:
        # Built whole, then published: the fuzz walk's threads call this at
        # once, and one of them saw a half-filled table (a tp_code "not in
        # the registry" that was).
        rows = {}
        cols = None
        with open(REGISTRY_PATH, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("#"):
                    continue
                cells = line.split("\t")
                if cols is None:
                    cols = cells
                    continue
                row = dict(zip(cols, cells))
                rows[int(row["number"])] = row
        _registry = rows
    return _registry


def check_registry(tc, r, err):
    """An error reply matches the registry row named by its tp_code."""
    tc.assertIn("tp_code", err, r)
    row = registry().get(err["tp_code"])
    tc.assertIsNotNone(row, "tp_code %r is not in errors/registry.tsv: %r" % (err["tp_code"], r))
    tc.assertEqual(r.status, int(row["http_status"]), "status differs from registry row %s: %r" % (row["name"], r))
    tc.assertEqual(err["type"], row["type"], "type differs from registry row %s: %r" % (row["name"], r))
    if row["code"] != "-":
        tc.assertEqual(err.get("code"), row["code"], "code differs from registry row %s: %r" % (row["name"], r))
    if row["decline_code"] != "-":
        tc.assertEqual(err.get("decline_code"), row["decline_code"],
                       "decline_code differs from registry row %s: %r" % (row["name"], r))


# -- the processor simulator ------------------------------------------------

class Sim:
    """A `turnpike sim` process with its own data directory."""

    def __init__(self, host=HOST, env_for=None):
        """env_for(data_dir): more environment for the process (a test shim)."""
        self.host = host
        self.root = tempfile.mkdtemp(prefix="tp-sim-")
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.data)
        self.env = dict(os.environ, **env_for(self.data)) if env_for else None
        self.log = open(os.path.join(self.root, "sim.log"), "ab")
        if not self._spawn(hostport(host, 0), hostport(host, 0)):
            self.stop()
            raise RuntimeError("no sim.addr within 20 s")

    def _spawn(self, rest, iso):
        """Start the process on these addresses; False if it did not come up."""
        addr = os.path.join(self.data, "sim.addr")
        try:
            os.unlink(addr)
        except FileNotFoundError:
            pass
        self.proc = subprocess.Popen(
            [BIN, "sim", "--listen", rest, "--iso-listen", iso, "--data", self.data],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True, env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with open(addr) as f:
                    lines = f.read().split("\n")
                if len(lines) >= 3:
                    self.rest, self.iso = lines[0], lines[1]
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        return False

    def kill9(self):
        """SIGKILL the simulator (a processor crashing) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, seconds=15, env=Ellipsis):
        """Start again on the same addresses and data directory (its journal),
        retrying while the ports are still being released; env (None: the
        test's own) replaces the environment given at construction."""
        if env is not Ellipsis:
            self.env = env
        rest, iso = self.rest, self.iso
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._spawn(rest, iso):
                return
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            time.sleep(0.2)
        raise RuntimeError("sim did not come back on %s / %s" % (rest, iso))

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://%s%s" % (self.rest, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read().decode())

    def faults(self, processor, **kw):
        kw["processor"] = processor
        return self._call("POST", "/_sim/faults", kw)

    def journal(self, **query):
        qs = "&".join("%s=%s" % kv for kv in query.items())
        return self._call("GET", "/_sim/journal" + ("?" + qs if qs else ""))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if os.environ.get("TP_KEEP_TMP"):
            sys.stderr.write("kept %s\n" % self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def iso_rrn(ref):
    """The RRN (field 37) the ISO connector derives from an attempt's
    reference (tp_iso_rrn): 12 of [0-9A-Z] from its SHA-256."""
    import hashlib
    alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(alnum[b % 36] for b in hashlib.sha256(ref.encode()).digest()[:12])


def start_beside(sim, daemon, **start_kw):
    """daemon.start(**start_kw) for a test class that runs a sim: if the
    daemon does not come up, the sim is stopped before the error goes on
    (tearDownClass does not run after a failed setUpClass)."""
    try:
        daemon.start(**start_kw)
    except Exception:
        sim.stop()
        raise
    return daemon


def preload_env(so, **variables):
    """Environment for a daemon with the test shim `so` LD_PRELOADed (one of
    tests/integration/*.c: diskfault, powercut, clockshift) and its control
    variables. The shim loads before the sanitizer runtime of a test build,
    which would otherwise refuse to start."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"LD_PRELOAD": so, "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}
    env.update({k: str(v) for k, v in variables.items()})
    return env


def open_db_ro(daemon):
    """The daemon's SQLite file, read-only (never writes, never checkpoints)."""
    import sqlite3
    uri = "file:%s?mode=ro" % urllib.parse.quote(daemon.db_path())
    return sqlite3.connect(uri, uri=True, timeout=10)


ZDICT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "store", "zdict")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def stored_json(value):
    """A value as the store keeps it, as text: objects and replies are zstd
    frames (BLOB) made with one of the dictionaries in src/store/zdict
    (src/store/zjson.h); anything else is returned unchanged."""
    if not isinstance(value, bytes) or not value.startswith(ZSTD_MAGIC):
        return value
    try:
        import zstandard
    except ImportError:  # a python3 other than Debian's: use Debian's module (scripts/deps.sh)
        sys.path.append("/usr/lib/python3/dist-packages")
        import zstandard
    for name in sorted(os.listdir(ZDICT_DIR)):
        with open(os.path.join(ZDICT_DIR, name), "rb") as f:
            d = zstandard.ZstdCompressionDict(f.read())
        if d.dict_id() == zstandard.get_frame_parameters(value).dict_id:
            # An event is stored as frames in a row (its envelope around its
            # object's frame): read across them, as the zstd format says.
            reader = zstandard.ZstdDecompressor(dict_data=d).stream_reader(io.BytesIO(value),
                                                                           read_across_frames=True)
            return reader.read().decode()
    raise ValueError("stored value names an unknown dictionary")


def all_stored_text(db_path):
    """Every value of every table, compressed ones expanded, as bytes: what
    a search of the database for a string must look through."""
    import sqlite3
    out = []
    con = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(db_path), uri=True, timeout=10)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in con.execute('SELECT * FROM "%s"' % t):
                for v in row:
                    v = stored_json(v)
                    out.append(v if isinstance(v, bytes) else str(v).encode())
    finally:
        con.close()
    return b"\n".join(out)


class DaemonTestCase(unittest.TestCase):
    """One daemon per test class, with the merchants named in MERCHANTS,
    configured by config(); with WITH_SIM a `turnpike sim` (cls.sim) is
    started first, so config() can point processors at it."""

    MERCHANTS = ("m",)
    WITH_SIM = False
    daemon = None
    sim = None

    @classmethod
    def config(cls):
        """INI text for the daemon; None: its embedded defaults."""
        return None

    @classmethod
    def setUpClass(cls):
        cls.sim = Sim() if cls.WITH_SIM else None
        cls.daemon = Daemon()
        try:
            for name in cls.MERCHANTS:
                cls.daemon.create_merchant(name)
            cls.daemon.start(config=cls.config())
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.daemon is not None:
            cls.daemon.cleanup()
        if cls.sim is not None:
            cls.sim.stop()

    def c(self, merchant=None, **kw):
        return self.daemon.client(merchant or self.MERCHANTS[0], **kw)

    def assertStripeError(self, r, status, type_=None, code=None, param=None):
        """The reply is a Stripe-shaped error with a Request-Id header, and
        agrees with its row of errors/registry.tsv (status, type, code,
        decline code), so the registry, the docs and the API cannot drift."""
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("Request-Id"), "no Request-Id header: %r" % (r,))
        self.assertIsInstance(r.json, dict, r)
        self.assertIn("error", r.json, r)
        err = r.json["error"]
        self.assertIsInstance(err.get("type"), str, r)
        self.assertIsInstance(err.get("message"), str, r)
        self.assertTrue(err["message"], r)
        if type_ is not None:
            self.assertEqual(err["type"], type_, r)
        if code is not None:
            self.assertEqual(err.get("code"), code, r)
        if param is not None:
            self.assertEqual(err.get("param"), param, r)
        check_registry(self, r, err)
        return err


def main():
    if not os.path.exists(BIN):
        sys.stderr.write("TURNPIKE_BIN %s does not exist\n" % BIN)
        sys.exit(1)
    unittest.main(verbosity=2)


# -- payment load shared by the crash and shutdown tests --------------------

# (weight, params, expected outcomes) - each request is create+confirm in one call.
LOAD_MIX = (
    ("auto", {"payment_method": "pm_card_visa"}),
    ("auto_mc", {"payment_method": "pm_card_mastercard"}),
    ("manual", {"payment_method": "pm_card_visa", "capture_method": "manual"}),
    ("decline", {"payment_method_data": card(PAN_DECLINE)}),
    ("insufficient", {"payment_method_data": card(PAN_INSUFFICIENT)}),
    ("auto2", {"payment_method": "pm_card_visa"}),
)


class Ack:
    """One acknowledged create+confirm: what was sent and what came back."""

    def __init__(self, key, params, status, js, t_sent, t_done=None):
        self.key, self.params, self.status, self.js = key, params, status, js
        self.t_sent = t_sent
        self.t_done = t_done  # monotonic time the reply was read

    def pi(self):
        """The PaymentIntent the reply acknowledged."""
        if self.status == 200:
            return self.js
        return self.js["error"]["payment_intent"]


class PaymentLoad:
    """threads x (POST /v1/payment_intents confirm=true) with a unique
    Idempotency-Key each, for at most `seconds`. Records acknowledged
    replies (200 or 402), other replies, and requests whose connection broke
    after the request was sent."""

    def __init__(self, client, threads=8, seconds=4.0, tag="load"):
        import threading
        self.client, self.nthreads, self.seconds, self.tag = client, threads, seconds, tag
        self.lock = threading.Lock()
        self.acks = []
        self.other = []          # (key, params, Response) non-200/402 replies
        self.unacked = []        # (key, params, exception, t) no reply
        self.sent_then_broken = []  # connection broke after the request was sent
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]
        self.counter = 0

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout=60):
        for t in self.threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self.threads)

    def _next(self):
        with self.lock:
            self.counter += 1
            return self.counter

    def _run(self, i):
        while not self.stop_flag.is_set() and time.monotonic() - self.t0 < self.seconds:
            n = self._next()
            name, extra = LOAD_MIX[n % len(LOAD_MIX)]
            params = {"amount": 1000 + n, "currency": "usd", "confirm": "true",
                      "description": "%s-%s-%d" % (self.tag, name, n)}
            params.update(extra)
            key = "%s-%d-%s" % (self.tag, n, uuid.uuid4().hex[:12])
            outcome = self.send(key, params)
            if outcome == "refused":
                time.sleep(0.02)

    def send(self, key, params):
        """One request with phase tracking: 'refused' (never connected),
        'broken' (connected, no reply), or 'reply'."""
        body = form_encode(params).encode()
        hdrs = {"Authorization": "Bearer " + self.client.key,
                "Content-Type": "application/x-www-form-urlencoded",
                "Idempotency-Key": key}
        conn = http.client.HTTPConnection(self.client.host, self.client.port, timeout=30)
        try:
            try:
                conn.connect()
            except OSError:
                return "refused"
            t_sent = None
            try:
                conn.request("POST", "/v1/payment_intents", body=body, headers=hdrs)
                t_sent = time.monotonic()
                resp = conn.getresponse()
                data = resp.read()
                t_done = time.monotonic()
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.unacked.append((key, params, e, time.monotonic()))
                    if t_sent is not None:
                        self.sent_then_broken.append((key, params, e, t_sent))
                return "broken"
            try:
                js = json.loads(data.decode("utf-8"))
            except ValueError:
                js = None
            with self.lock:
                if resp.status in (200, 402) and js is not None:
                    self.acks.append(Ack(key, params, resp.status, js, t_sent, t_done))
                else:
                    self.other.append((key, params, Response(resp.status, resp.headers, js, data)))
            return "reply"
        finally:
            conn.close()


def big_customers(client, n):
    """n customers of ~26 KB each (50 metadata values of 500 characters):
    a list of them is a reply of n x 26 KB."""
    md = {"metadata[k%02d]" % i: "v" * 500 for i in range(50)}
    for i in range(n):
        r = client.post("/v1/customers", dict(md, name="big %d" % i))
        assert r.status == 200, r


def unread_requests(daemon, raw, connections, copies):
    """Sockets that each send raw copies times (pipelined) and never read,
    their receive buffer tiny so the replies stay with the server. The
    caller closes them."""
    import socket
    out = []
    for _ in range(connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((daemon.host, daemon.port))
        s.sendall(raw * copies)
        out.append(s)
    return out


def connect_many(daemon, n):
    """n connections opened at once (non-blocking: a loaded machine made a
    blocking loop take past the 10 s a connection may stay silent, and the
    first ones were closed, rightly, before they asked). The caller closes
    them."""
    import socket
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((daemon.host, daemon.port))
        except BlockingIOError:
            pass
        out.append(s)
    return out
