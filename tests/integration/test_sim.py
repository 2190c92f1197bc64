"""`turnpike sim`: the processor simulator, driven over its real wire protocols.

REST through http.client; ISO 8583 messages built here with struct, apart from
the C codec, so these tests also cross-check the wire format (2-byte
big-endian length, ASCII MTI, binary bitmap, ASCII fields with LL/LLL).
Standard library only; every socket is on 127.0.0.1 with a kernel-chosen port.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import uuid

BIN = os.environ.get("TURNPIKE_BIN", "/work/main/build/turnpike")
READY_TIMEOUT_S = 20.0

PAN_OK = "4242424242424242"
PAN_DECLINE = "4000000000000002"
PAN_INSUFFICIENT = "4000000000009995"
PAN_3DS = "4000002760003184"


class Sim:
    """One `turnpike sim` process with its own data directory."""

    def __init__(self, data=None, config=None):
        self.tmp = tempfile.mkdtemp(prefix="tp-sim-")
        self.data = data or os.path.join(self.tmp, "data")
        self.config = config
        self.proc = None

    def start(self):
        args = [BIN, "sim", "--listen", "127.0.0.1:0", "--iso-listen", "127.0.0.1:0",
                "--data", self.data, "--threads", "2"]
        if self.config:
            path = os.path.join(self.tmp, "sim.ini")
            with open(path, "w") as f:
                f.write(self.config)
            args += ["--config", path]
        addr = os.path.join(self.data, "sim.addr")
        if os.path.exists(addr):
            os.unlink(addr)
        if getattr(self, "log", None):
            self.log.close()
        self.log = open(os.path.join(self.tmp, "stderr.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sim exited with %s: %s" % (self.proc.returncode, self.stderr()))
            if os.path.exists(addr):
                with open(addr) as f:
                    lines = f.read().split()
                if len(lines) == 2:
                    h, p = lines[0].rsplit(":", 1)
                    self.rest = (h, int(p))
                    h, p = lines[1].rsplit(":", 1)
                    self.iso = (h, int(p))
                    return self
            time.sleep(0.05)
        raise RuntimeError("sim did not become ready")

    def stderr(self):
        try:
            with open(os.path.join(self.tmp, "stderr.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM; returns the exit status."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def cleanup(self):
        self.stop()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- REST ----
    def call(self, method, path, body=None, headers=None, timeout=10.0, raw=None):
        conn = http.client.HTTPConnection(self.rest[0], self.rest[1], timeout=timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            text = resp.read().decode()
            return resp.status, dict(resp.getheaders()), (json.loads(text) if text else None)
        finally:
            conn.close()

    def authorize(self, proc, ref, pan=PAN_OK, amount=1000, payment=None, capture=False, currency="usd",
                  headers=None, timeout=10.0):
        body = {"reference": ref, "amount": amount, "currency": currency, "capture": capture,
                "card": {"number": pan, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
        if payment:
            body["payment"] = payment
        return self.call("POST", "/p/%s/v1/authorizations" % proc, body, headers=headers, timeout=timeout)

    def faults(self, **kw):
        st, _, body = self.call("POST", "/_sim/faults", kw)
        assert st == 200, body
        return body

    def journal(self, **params):
        q = "&".join("%s=%s" % kv for kv in params.items())
        st, _, body = self.call("GET", "/_sim/journal?" + q)
        assert st == 200, body
        return body

    # ---- ISO 8583 ----
    def iso_connect(self, timeout=5.0):
        s = socket.create_connection(self.iso, timeout=timeout)
        return s


# ISO 8583:1987 ASCII layout of the fields these tests use: (kind, prefix, size).
ISO_FIELDS = {
    2: ("n", 2, 19), 3: ("n", 0, 6), 4: ("n", 0, 12), 7: ("n", 0, 10), 11: ("n", 0, 6),
    12: ("n", 0, 6), 13: ("n", 0, 4), 14: ("n", 0, 4), 18: ("n", 0, 4), 22: ("n", 0, 3),
    25: ("n", 0, 2), 37: ("an", 0, 12), 38: ("an", 0, 6), 39: ("an", 0, 2), 41: ("an", 0, 8),
    42: ("an", 0, 15), 48: ("ans", 3, 999), 49: ("an", 0, 3), 70: ("n", 0, 3), 90: ("n", 0, 42),
}


def iso_pack(mti, fields):
    """Message body (without the length) and its frame."""
    present = sorted(fields)
    secondary = any(n > 64 for n in present)
    bits = 0
    for n in present:
        bits |= 1 << (128 - n)
    if secondary:
        bits |= 1 << 127
    bitmap = bits.to_bytes(16, "big")
    if not secondary:
        bitmap = bitmap[:8]
    out = mti.encode() + bitmap
    for n in present:
        kind, prefix, size = ISO_FIELDS[n]
        v = str(fields[n])
        if prefix == 0:
            v = v.rjust(size, "0") if kind == "n" else v.ljust(size)
            assert len(v) == size
            out += v.encode()
        else:
            out += ("%0*d" % (prefix, len(v))).encode() + v.encode()
    return out


def iso_frame(mti, fields):
    body = iso_pack(mti, fields)
    return struct.pack(">H", len(body)) + body


def iso_unpack(body):
    mti = body[:4].decode()
    bits = int.from_bytes(body[4:12], "big")
    pos = 12
    nbits = 64
    if bits >> 63 & 1:
        bits = (bits << 64) | int.from_bytes(body[12:20], "big")
        pos = 20
        nbits = 128
    fields = {}
    for n in range(2, nbits + 1):
        if not (bits >> (nbits - n)) & 1:
            continue
        kind, prefix, size = ISO_FIELDS[n]
        if prefix:
            ln = int(body[pos:pos + prefix])
            pos += prefix
        else:
            ln = size
        fields[n] = body[pos:pos + ln].decode()
        pos += ln
    assert pos == len(body), "trailing bytes"
    return mti, fields


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def iso_recv(sock):
    (ln,) = struct.unpack(">H", recv_exact(sock, 2))
    return iso_unpack(recv_exact(sock, ln))


_stan = [0]


def auth_fields(pan, rrn, amount=1500, tid="TERM0001", stan=None):
    _stan[0] += 1
    return {2: pan, 3: "000000", 4: amount, 7: "1124123000", 11: stan or "%06d" % _stan[0],
            12: "123000", 13: "1124", 14: "3412", 18: "5999", 22: "012", 25: "00",
            37: rrn, 41: tid, 42: "MERCHANT0000001", 49: "840"}


def linked_fields(rrn, orig_rrn, amount, proc="000000", tid="TERM0001", stan=None, currency="840"):
    """A capture advice (0220) or refund (0200, proc 200000) as the gateway
    sends them: no PAN, field 48 = the authorization's RRN."""
    _stan[0] += 1
    return {3: proc, 4: amount, 7: "1124123000", 11: stan or "%06d" % _stan[0], 12: "123000", 13: "1124",
            37: rrn, 41: tid, 42: "MERCHANT0000001", 48: orig_rrn, 49: currency}


def new_rrn():
    return uuid.uuid4().hex[:12].upper()


def iso_call(sock, mti, fields):
    """Send one message, return (answer MTI, answer fields)."""
    sock.sendall(iso_frame(mti, fields))
    return iso_recv(sock)


def reversal_fields(rrn, orig_mti="0100", tid="TERM0001"):
    _stan[0] += 1
    return {7: "1124123100", 11: "%06d" % _stan[0], 37: rrn, 41: tid,
            90: orig_mti + "0" * 6 + "1124123000" + "0" * 22}


def new_name(prefix="p"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def closed_by_peer(sock, wait_s=5.0):
    """True when the peer closes the connection within wait_s."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class SimTest(unittest.TestCase):
    """Shared simulator; each test uses its own processor names."""

    @classmethod
    def setUpClass(cls):
        cls.sim = Sim(config="[sim.secure]\napi_key = sk_sim_123\n\n"
                             "[sim.slow]\nlatency_ms_min = 200\nlatency_ms_max = 200\n\n"
                             "[sim.iso]\nprotocol = iso\n").start()

    @classmethod
    def tearDownClass(cls):
        status = cls.sim.stop()
        cls.sim.cleanup()
        assert status == 0, "sim exit status %r" % status

    # ---- REST ----
    def test_approve_and_decline_by_test_card(self):
        p = new_name()
        st, _, b = self.sim.authorize(p, "r-ok", PAN_OK)
        self.assertEqual(st, 200)
        self.assertEqual(b["status"], "approved")
        self.assertTrue(b["id"].startswith("auth_"))
        self.assertEqual(len(b["auth_code"]), 6)
        self.assertIsNone(b["decline_code"])
        self.assertEqual((b["amount"], b["currency"], b["captured"]), (1000, "usd", False))
        st, _, b = self.sim.authorize(p, "r-dec", PAN_DECLINE)
        self.assertEqual((st, b["status"], b["decline_code"], b["auth_code"]),
                         (200, "declined", "generic_decline", None))
        st, _, b = self.sim.authorize(p, "r-nsf", PAN_INSUFFICIENT)
        self.assertEqual(b["decline_code"], "insufficient_funds")
        st, _, b = self.sim.authorize(p, "r-3ds", PAN_3DS)
        self.assertEqual(b["status"], "approved", "3DS cards approve at the processor")
        st, _, b = self.sim.authorize(p, "r-cap", PAN_OK, capture=True)
        self.assertTrue(b["captured"])

    def test_repeated_reference_returns_first_answer_and_charges_once(self):
        p = new_name()
        st, h1, b1 = self.sim.authorize(p, "ref-dup", payment="pi_dup1")
        self.assertNotIn("Idempotent-Replayed", h1)
        st, h2, b2 = self.sim.authorize(p, "ref-dup", payment="pi_dup1", amount=5555)
        self.assertEqual(st, 200)
        self.assertEqual(h2.get("Idempotent-Replayed"), "true")
        self.assertEqual(b1, b2, "the first answer, byte for byte")
        j = self.sim.journal(processor=p)
        self.assertEqual(len(j["entries"]), 1)
        self.assertEqual(j["summary"]["charges_by_payment"], {"pi_dup1": 1})
        self.assertEqual(j["summary"]["double_charges"], 0)

    def test_two_references_for_one_payment_count_as_a_double_charge(self):
        p = new_name()
        self.sim.authorize(p, "a1", payment="pi_twice")
        self.sim.authorize(p, "a2", payment="pi_twice")
        self.sim.authorize(p, "a3", payment="pi_once")
        self.sim.authorize(p, "a4", PAN_DECLINE, payment="pi_declined")
        s = self.sim.journal(processor=p)["summary"]
        self.assertEqual(s["charges_by_payment"], {"pi_twice": 2, "pi_once": 1})
        self.assertEqual(s["double_charges"], 1)
        self.assertEqual(s["charges"], 3)

    def test_capture_refund_and_their_idempotency(self):
        p = new_name()
        _, _, a = self.sim.authorize(p, "auth-1", amount=1000, payment="pi_c")
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth-1/capture" % p,
                                 {"reference": "cap-x", "amount": 1001})
        self.assertEqual((st, b["error"]["code"]), (400, "amount_too_large"))
        st, h, c1 = self.sim.call("POST", "/p/%s/v1/authorizations/%s/capture" % (p, a["id"]),
                                  {"reference": "cap-1", "amount": 600})
        self.assertEqual((st, c1["status"], c1["amount"], c1["authorization"]), (200, "captured", 600, a["id"]))
        st, h, c2 = self.sim.call("POST", "/p/%s/v1/authorizations/auth-1/capture" % p,
                                  {"reference": "cap-1", "amount": 600})
        self.assertEqual((c1, h.get("Idempotent-Replayed")), (c2, "true"))
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth-1/capture" % p,
                                 {"reference": "cap-2", "amount": 100})
        self.assertEqual((st, b["error"]["code"]), (409, "invalid_state"))
        st, _, r = self.sim.call("POST", "/p/%s/v1/refunds" % p,
                                 {"reference": "rf-1", "authorization": "auth-1", "amount": 700})
        self.assertEqual((st, r["status"]), (200, "failed"), "over the captured remainder")
        st, _, r = self.sim.call("POST", "/p/%s/v1/refunds" % p,
                                 {"reference": "rf-2", "authorization": "auth-1", "amount": 400})
        self.assertEqual((r["status"], r["amount"]), ("succeeded", 400))
        self.assertTrue(r["id"].startswith("rf_"))
        st, h, r2 = self.sim.call("POST", "/p/%s/v1/refunds" % p,
                                  {"reference": "rf-2", "authorization": "auth-1", "amount": 400})
        self.assertEqual((r2, h.get("Idempotent-Replayed")), (r, "true"))
        st, _, r = self.sim.call("POST", "/p/%s/v1/refunds" % p,
                                 {"reference": "rf-3", "authorization": "auth-1", "amount": 201})
        self.assertEqual(r["status"], "failed", "only 200 left")
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth-1/void" % p, {"reference": "v-1"})
        self.assertEqual((st, b["error"]["code"]), (409, "invalid_state"), "captured: refund, not void")
        st, _, b = self.sim.call("POST", "/p/%s/v1/refunds" % p,
                                 {"reference": "rf-4", "authorization": "nope", "amount": 1})
        self.assertEqual((st, b["error"]["code"]), (404, "not_found"))
        ops = [e["operation"] for e in self.sim.journal(processor=p, payment="pi_c")["entries"]]
        self.assertEqual(ops, ["authorize", "capture", "refund", "refund", "refund"])

    def test_void_removes_the_charge_and_is_idempotent(self):
        p = new_name()
        self.sim.authorize(p, "auth-v", payment="pi_v")
        st, _, v1 = self.sim.call("POST", "/p/%s/v1/authorizations/auth-v/void" % p, {"reference": "void-1"})
        self.assertEqual((st, v1["status"]), (200, "voided"))
        st, h, v2 = self.sim.call("POST", "/p/%s/v1/authorizations/auth-v/void" % p, {"reference": "void-1"})
        self.assertEqual((v1, h.get("Idempotent-Replayed")), (v2, "true"))
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth-v/capture" % p, {"reference": "cap-v"})
        self.assertEqual(st, 409)
        s = self.sim.journal(processor=p)["summary"]
        self.assertEqual((s["charges_by_payment"], s["double_charges"]), ({}, 0))
        # its status now says so: a gateway whose fence reached the
        # authorization after it arrived, and lost the fence's answer, learns
        # from the status query that the reference holds nothing
        st, _, t = self.sim.call("GET", "/p/%s/v1/transactions/auth-v" % p)
        self.assertEqual((st, t["operation"], t["status"], t.get("voided_after_authorization")),
                         (200, "authorize", "voided", True), t)
        # a declined authorization is not turned into a voided one
        self.sim.authorize(p, "auth-d", pan="4000000000000002")
        st, _, t = self.sim.call("GET", "/p/%s/v1/transactions/auth-d" % p)
        self.assertEqual((st, t["status"]), (200, "declined"), t)

    def test_void_of_an_unseen_reference_fences_it(self):
        """A gateway that lost an authorization's answer and found no trace
        of it voids the reference before going elsewhere: the sim records it
        as voided before it arrived, so the request, if it still arrives,
        charges nothing."""
        p = new_name()
        st, _, v = self.sim.call("POST", "/p/%s/v1/authorizations/late-1/void" % p, {"reference": "late-1-fence"})
        self.assertEqual((st, v["status"], v["authorization"], v.get("before_authorization")),
                         (200, "voided", None, True), v)
        st, h, v2 = self.sim.call("POST", "/p/%s/v1/authorizations/late-1/void" % p, {"reference": "late-1-fence"})
        self.assertEqual((v2, h.get("Idempotent-Replayed")), (v, "true"))
        st, _, a = self.sim.authorize(p, "late-1", payment="pi_late")
        self.assertEqual((st, a["status"], a["decline_code"]), (200, "voided", "voided_before_authorization"), a)
        st, _, t = self.sim.call("GET", "/p/%s/v1/transactions/late-1" % p)
        self.assertEqual((st, t["operation"], t["status"]), (200, "authorize", "voided"))
        s = self.sim.journal(processor=p)["summary"]
        self.assertEqual((s["charges"], s["double_charges"]), (0, 0))
        # an authorization id the sim never issued is still not found
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth_nope/void" % p, {"reference": "v-nope"})
        self.assertEqual((st, b["error"]["code"]), (404, "not_found"))
        # a capture's lost reference is fenced the same way: the capture, if
        # it still arrives, is refused and moves nothing
        self.sim.authorize(p, "auth-f", payment="pi_f")
        st, _, v = self.sim.call("POST", "/p/%s/v1/authorizations/cap-lost/void" % p, {"reference": "cap-lost-fence"})
        self.assertEqual((st, v["status"]), (200, "voided"))
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/auth-f/capture" % p, {"reference": "cap-lost"})
        self.assertEqual((st, b["error"]["code"]), (409, "invalid_state"), b)
        # a reference a capture already used cannot be fenced: that capture happened
        st, _, _ = self.sim.call("POST", "/p/%s/v1/authorizations/auth-f/capture" % p, {"reference": "cap-done"})
        self.assertEqual(st, 200)
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/cap-done/void" % p, {"reference": "cap-done-fence"})
        self.assertEqual(st, 409, b)
        caps = [e for e in self.sim.journal(processor=p, payment="pi_f")["entries"] if e["operation"] == "capture"]
        self.assertEqual([e["reference"] for e in caps], ["cap-done"])

    def test_status_query_for_seen_and_unseen_references(self):
        p = new_name()
        _, _, a = self.sim.authorize(p, "st-auth")
        _, _, c = self.sim.call("POST", "/p/%s/v1/authorizations/st-auth/capture" % p, {"reference": "st-cap"})
        st, _, b = self.sim.call("GET", "/p/%s/v1/transactions/st-auth" % p)
        self.assertEqual((st, b["operation"], b), (200, "authorize", a))
        st, _, b = self.sim.call("GET", "/p/%s/v1/transactions/st-cap" % p)
        self.assertEqual((st, b["operation"], b["amount"]), (200, "capture", 1000))
        st, _, b = self.sim.call("GET", "/p/%s/v1/transactions/never-seen" % p)
        self.assertEqual((st, b["error"]["code"]), (404, "not_found"))
        st, _, b = self.sim.call("GET", "/p/other-%s/v1/transactions/st-auth" % p)
        self.assertEqual(st, 404, "references are per processor")

    def test_bad_requests_are_rejected(self):
        p = new_name()
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations" % p, raw="{not json")
        self.assertEqual((st, b["error"]["code"]), (400, "invalid_request"))
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations" % p,
                                 {"reference": "x", "currency": "usd", "card": {"number": PAN_OK}})
        self.assertEqual((st, b["error"]["code"]), (400, "invalid_request"))
        self.assertIn("amount", b["error"]["message"])
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations" % p,
                                 {"reference": "x" * 65, "amount": 1, "currency": "usd"})
        self.assertEqual(st, 400)
        st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations" % p,
                                 raw=json.dumps({"reference": "big", "pad": "x" * 70000}))
        self.assertEqual((st, b["error"]["code"]), (400, "invalid_request"))
        st, _, b = self.sim.call("GET", "/p/%s/v1/authorizations" % p)
        self.assertEqual(st, 405)
        st, _, b = self.sim.call("GET", "/p/%s/v1/nothing" % p)
        self.assertEqual(st, 404)
        # a reference that could not be named in a status or fence path
        st, _, b = self.sim.authorize(p, "att/1")
        self.assertEqual((st, b["error"]["code"]), (400, "invalid_request"))
        self.assertEqual(self.sim.journal(processor=p)["entries"], [])

    def test_a_path_id_that_is_no_reference_is_refused_and_the_sim_lives(self):
        """A void with %FF in its path aborted the simulator (the fence's
        journal row was no JSON); "a b" was journaled as a fence."""
        p = new_name()
        for path in ("/p/%s/v1/authorizations/%%FF/void", "/p/%s/v1/authorizations/a%%20b/void",
                     "/p/%s/v1/authorizations/%%FF/capture"):
            st, _, b = self.sim.call("POST", path % p, {"reference": new_rrn(), "amount": 100})
            self.assertEqual((st, b["error"]["code"]), (400, "invalid_request"), path)
        self.assertEqual(self.sim.journal(processor=p)["entries"], [])
        self.assertEqual(self.sim.authorize(p, "alive-" + new_rrn())[0], 200)

    def test_a_rest_call_cannot_reach_an_iso_authorization_by_its_id(self):
        """A REST capture named an ISO authorization by its journal id and
        captured it; after a restart an ISO 0220 captured it again."""
        rrn = new_rrn()
        with self.sim.iso_connect() as s:
            mti, f = iso_call(s, "0100", auth_fields(PAN_OK, rrn, amount=5000))
            self.assertEqual(f[39], "00")
        entry = [e for e in self.sim.journal(payment=rrn)["entries"] if e.get("operation") == "authorize"][0]
        proc = entry["processor"]
        for op in ("capture", "void"):
            st, _, b = self.sim.call("POST", "/p/%s/v1/authorizations/%s/%s" % (proc, entry["id"], op),
                                     {"reference": new_rrn(), "amount": 5000})
            self.assertEqual(st, 404, (op, b))
        self.assertEqual(self.sim.journal(payment=rrn)["summary"]["charges"], 1)

    def test_names_only_seen_leave_room_for_a_configuration(self):
        """Every name in a URL took one of the 256 slots for good: past 256
        names only seen, no processor could be configured."""
        for i in range(260):
            self.sim.call("GET", "/p/%s/v1/health" % new_name("seen"))
        self.sim.faults(processor=new_name("cfg"), decline_rate=0.5)

    def test_api_key_is_checked_when_configured(self):
        st, _, b = self.sim.authorize("secure", new_name("r"))
        self.assertEqual((st, b["error"]["code"]), (401, "unauthorized"))
        st, _, b = self.sim.authorize("secure", new_name("r"), headers={"Authorization": "Bearer wrong"})
        self.assertEqual(st, 401)
        st, _, b = self.sim.authorize("secure", new_name("r"), headers={"Authorization": "Bearer sk_sim_123"})
        self.assertEqual((st, b["status"]), (200, "approved"))

    def test_faults_switched_at_run_time(self):
        p = new_name()
        self.assertEqual(self.sim.call("GET", "/p/%s/v1/health" % p)[0], 200)
        self.sim.faults(processor=p, outage=True)
        st, _, b = self.sim.authorize(p, "f-1")
        self.assertEqual((st, b["error"]["code"]), (503, "processor_unavailable"))
        st, _, b = self.sim.call("GET", "/p/%s/v1/health" % p)
        self.assertEqual((st, b["status"]), (503, "outage"))
        all_ = self.sim.call("GET", "/_sim/faults")[2]["processors"]
        self.assertTrue(all_[p]["outage"])
        self.sim.faults(processor=p, outage=False, error_rate=1.0)
        for i in range(5):
            st, _, b = self.sim.authorize(p, "f-err-%d" % i)
            self.assertIn(st, (500, 502, 503))
            self.assertEqual(b["error"]["code"], "processor_error")
        self.assertEqual(self.sim.call("GET", "/p/%s/v1/health" % p)[0], 200)
        self.sim.faults(processor=p, error_rate=0)
        st, _, b = self.sim.authorize(p, "f-ok")
        self.assertEqual((st, b["status"]), (200, "approved"))
        self.assertEqual(len(self.sim.journal(processor=p)["entries"]), 1, "faulted calls are not processed")
        # Bad fault settings change nothing.
        st, _, b = self.sim.call("POST", "/_sim/faults", {"processor": p, "error_rate": 2})
        self.assertEqual(st, 400)
        st, _, b = self.sim.call("POST", "/_sim/faults", {"processor": p, "bogus": 1})
        self.assertEqual(st, 400)
        st, _, b = self.sim.call("POST", "/_sim/faults", {"processor": p, "timeout_operations": "authorize,nap"})
        self.assertEqual(st, 400)
        # Timeouts for some operations only: an authorization is lost, a void is not.
        b = self.sim.faults(processor=p, timeout_rate=1.0, timeout_mode="before", timeout_hold_ms=10,
                            timeout_operations="authorize")
        self.assertEqual(b["processors"][p]["timeout_operations"], "authorize")
        with self.assertRaises((OSError, http.client.HTTPException)):
            self.sim.authorize(p, "f-lost")
        st, _, v = self.sim.call("POST", "/p/%s/v1/authorizations/f-lost/void" % p, {"reference": "f-lost-fence"})
        self.assertEqual((st, v["status"]), (200, "voided"))
        b = self.sim.faults(processor=p, timeout_rate=0, timeout_operations="all")
        self.assertEqual(b["processors"][p]["timeout_operations"], "authorize,capture,void,refund")

    def test_decline_rate_and_overrides(self):
        p = new_name()
        self.sim.faults(processor=p, decline_rate=1.0)
        st, _, b = self.sim.authorize(p, "d-1", "5555555555554444")
        self.assertEqual(b["status"], "declined")
        self.assertIn(b["decline_code"], ("generic_decline", "do_not_honor"))
        self.sim.faults(processor=p, **{"decline_rate.mastercard": 0.0})
        st, _, b = self.sim.authorize(p, "d-2", "5555555555554444")
        self.assertEqual(b["status"], "approved", "the brand override wins over the base rate")
        st, _, b = self.sim.authorize(p, "d-3", "4000056655665556")
        self.assertEqual(b["status"], "declined")
        # a misspelt brand is refused (it was taken and did nothing), and a
        # refused call names no processor
        fresh = new_name()
        for who in (p, fresh):
            st, _, b = self.sim.call("POST", "/_sim/faults", {"processor": who, "decline_rate.vias": 1.0})
            self.assertEqual(st, 400, b)
        self.assertNotIn(fresh, self.sim.call("GET", "/_sim/faults")[2]["processors"])

    def test_reset_closes_the_connection_without_an_answer(self):
        p = new_name()
        self.sim.faults(processor=p, reset_rate=1.0)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
            self.sim.authorize(p, "reset-1")
        self.sim.faults(processor=p, reset_rate=0.0)
        st, _, b = self.sim.call("GET", "/p/%s/v1/transactions/reset-1" % p)
        self.assertEqual(st, 404, "a reset request is not processed")

    def test_timeout_after_processing_is_journaled(self):
        p = new_name()
        self.sim.faults(processor=p, timeout_rate=1.0, timeout_hold_ms=3000, timeout_mode="after")
        t0 = time.monotonic()
        with self.assertRaises(socket.timeout):
            self.sim.authorize(p, "to-1", payment="pi_to", timeout=0.5)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.sim.faults(processor=p, timeout_rate=0.0)
        st, _, b = self.sim.call("GET", "/p/%s/v1/transactions/to-1" % p)
        self.assertEqual((st, b["status"]), (200, "approved"), "processed although the client gave up")
        self.assertEqual(self.sim.journal(processor=p)["summary"]["charges_by_payment"], {"pi_to": 1})
        # A patient client gets the held answer.
        self.sim.faults(processor=p, timeout_rate=1.0, timeout_hold_ms=700)
        t0 = time.monotonic()
        st, _, b = self.sim.authorize(p, "to-2", timeout=10)
        self.assertEqual((st, b["status"]), (200, "approved"))
        self.assertGreaterEqual(time.monotonic() - t0, 0.6)

    def test_timeout_before_processing_drops_the_request(self):
        p = new_name()
        self.sim.faults(processor=p, timeout_rate=1.0, timeout_hold_ms=500, timeout_mode="before")
        t0 = time.monotonic()
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
            self.sim.authorize(p, "tb-1", timeout=10)
        self.assertGreaterEqual(time.monotonic() - t0, 0.4)
        self.sim.faults(processor=p, timeout_rate=0.0)
        self.assertEqual(self.sim.call("GET", "/p/%s/v1/transactions/tb-1" % p)[0], 404)
        self.assertEqual(self.sim.journal(processor=p)["entries"], [])

    def test_latency_from_config(self):
        t0 = time.monotonic()
        st, _, b = self.sim.authorize("slow", new_name("r"))
        self.assertEqual(st, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.19)

    def test_journal_filters_and_limit(self):
        p = new_name()
        for i in range(5):
            self.sim.authorize(p, "jl-%d" % i, payment="pi_jl%d" % i)
        j = self.sim.journal(processor=p, limit=2)
        self.assertEqual([e["reference"] for e in j["entries"]], ["jl-0", "jl-1"])
        self.assertEqual(j["summary"]["charges"], 5)
        j = self.sim.journal(processor=p, reference="jl-3")
        self.assertEqual(len(j["entries"]), 1)
        e = j["entries"][0]
        for k in ("seq", "processor", "protocol", "operation", "reference", "payment", "amount", "currency",
                  "status", "decline_code", "created_ms"):
            self.assertIn(k, e)
        self.assertEqual((e["protocol"], e["payment"]), ("rest", "pi_jl3"))
        self.assertEqual(self.sim.call("GET", "/_sim/journal?limit=0")[0], 400)
        # a call with no payment field is its reference's payment, in the
        # summary and in the filter alike
        self.sim.authorize(p, "jl-nopay")
        j = self.sim.journal(processor=p, payment="jl-nopay")
        self.assertEqual(([e["reference"] for e in j["entries"]], j["summary"]["charges_by_payment"]),
                         (["jl-nopay"], {"jl-nopay": 1}))
        # The CLI reads the same store while the sim runs.
        out = subprocess.run([BIN, "sim", "journal", "--data", self.sim.data, "--reference", "jl-3"],
                             capture_output=True, timeout=30, check=True)
        cli = json.loads(out.stdout)
        self.assertEqual([x["reference"] for x in cli["entries"]], ["jl-3"])

    def test_concurrent_repeats_of_one_reference_charge_once(self):
        import threading
        p = new_name()
        results = []

        def go():
            results.append(self.sim.authorize(p, "conc", payment="pi_conc")[2])

        ts = [threading.Thread(target=go) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(len(results), 8)
        self.assertTrue(all(r == results[0] for r in results))
        self.assertEqual(self.sim.journal(processor=p)["summary"]["charges_by_payment"], {"pi_conc": 1})

    # ---- ISO 8583 ----
    def test_iso_sign_on_and_echo(self):
        with self.sim.iso_connect() as s:
            for code in ("001", "301"):
                s.sendall(iso_frame("0800", {7: "1124123000", 11: "000777", 70: code}))
                mti, f = iso_recv(s)
                self.assertEqual((mti, f[39], f[70], f[11]), ("0810", "00", code, "000777"))

    def test_iso_authorization_approve_decline_and_duplicate(self):
        rrn = uuid.uuid4().hex[:12].upper()
        with self.sim.iso_connect() as s:
            s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn, stan="000101")))
            mti, f = iso_recv(s)
            self.assertEqual((mti, f[39], f[11], f[37], f[41]), ("0110", "00", "000101", rrn, "TERM0001"))
            self.assertEqual(len(f[38]), 6)
            self.assertNotIn(2, f, "no PAN in the answer")
            code = f[38]
            # The same RRN and terminal again: the first answer, no second charge.
            s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn, stan="000102")))
            mti, f = iso_recv(s)
            self.assertEqual((f[39], f[38], f[11]), ("00", code, "000102"))
            first_amount, first_cur = f[4], f[49]
            # Again for another amount and currency: fields 4 and 49 say what
            # the host holds (the first), so the gateway can see the mismatch.
            again = auth_fields(PAN_OK, rrn, stan="000103")
            again[4], again[49] = "000000250000", "978"
            s.sendall(iso_frame("0100", again))
            mti, f = iso_recv(s)
            self.assertEqual((f[39], f[38], f[4], f[49]), ("00", code, first_amount, first_cur))
            self.assertNotEqual(f[4], "000000250000")
            rrn2 = uuid.uuid4().hex[:12].upper()
            s.sendall(iso_frame("0200", auth_fields(PAN_INSUFFICIENT, rrn2)))
            mti, f = iso_recv(s)
            self.assertEqual((mti, f[39]), ("0210", "51"))
            self.assertNotIn(38, f)
            # Field 3 names the transaction: a credit, balance inquiry or
            # cash is not a purchase, 12 and nothing charged.
            others = []
            for mti, proc in (("0100", "200000"), ("0100", "310000"), ("0200", "310000"), ("0200", "010000")):
                fields = auth_fields(PAN_OK, uuid.uuid4().hex[:12].upper())
                fields[3] = proc
                others.append(fields[37])
                s.sendall(iso_frame(mti, fields))
                rm, f = iso_recv(s)
                self.assertEqual((rm, f[39]), (mti[:2] + "10", "12"), proc)
                self.assertNotIn(38, f)
        j = self.sim.journal(processor="iso", payment=rrn)
        self.assertEqual(len(j["entries"]), 1)
        self.assertEqual(j["entries"][0]["protocol"], "iso")
        self.assertEqual(j["summary"]["charges_by_payment"], {rrn: 1})
        for other in others:
            self.assertEqual(self.sim.journal(processor="iso", payment=other)["summary"]["charges_by_payment"], {})

    def test_iso_reversal_removes_the_charge(self):
        rrn = uuid.uuid4().hex[:12].upper()
        with self.sim.iso_connect() as s:
            s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn, amount=2500, stan="000201")))
            self.assertEqual(iso_recv(s)[1][39], "00")
            self.assertEqual(self.sim.journal(payment=rrn)["summary"]["charges"], 1)
            f90 = "0100" + "000201" + "1124123000" + "0" * 11 + "0" * 11
            s.sendall(iso_frame("0400", {4: 2500, 7: "1124123100", 11: "000202", 37: rrn, 41: "TERM0001",
                                         49: "840", 90: f90}))
            mti, f = iso_recv(s)
            self.assertEqual((mti, f[39], f[37]), ("0410", "00", rrn))
            # A repeat (0401) is answered again without a second journal row.
            s.sendall(iso_frame("0401", {7: "1124123200", 11: "000203", 37: rrn, 41: "TERM0001", 90: f90}))
            mti, f = iso_recv(s)
            self.assertEqual((mti, f[39]), ("0410", "00"))
            unknown = uuid.uuid4().hex[:12].upper()
            s.sendall(iso_frame("0400", {7: "1124123300", 11: "000204", 37: unknown, 41: "TERM0001"}))
            mti, f = iso_recv(s)
            self.assertEqual((mti, f[39]), ("0410", "25"))
            # The reversal overtook its original (sent on a connection the
            # gateway gave up on): arriving now, the original is declined and
            # charges nothing, and the reversal's repeats still say 25.
            mti, f = iso_call(s, "0100", auth_fields(PAN_OK, unknown, amount=900, stan="000205"))
            self.assertEqual((mti, f[39]), ("0110", "05"))
            self.assertNotIn(38, f)
            mti, f = iso_call(s, "0401", {7: "1124123400", 11: "000206", 37: unknown, 41: "TERM0001"})
            self.assertEqual((mti, f[39]), ("0410", "25"))
        self.assertEqual(self.sim.journal(payment=unknown)["summary"]["charges"], 0)
        # on another terminal the RRN is another transaction
        with self.sim.iso_connect() as s:
            mti, f = iso_call(s, "0100", auth_fields(PAN_OK, unknown, amount=900, stan="000207", tid="TERM0002"))
            self.assertEqual((mti, f[39]), ("0110", "00"))
        j = self.sim.journal(payment=rrn)
        self.assertEqual([e["operation"] for e in j["entries"]], ["authorize", "reversal"])
        self.assertEqual((j["summary"]["charges"], j["summary"]["charges_by_payment"]), (0, {}))
        # Repeats of an authorization (0101, 0201) and a reversal advice
        # (0420, repeated 0421), as other acquirer software sends them.
        rrn3 = uuid.uuid4().hex[:12].upper()
        with self.sim.iso_connect() as s:
            mti, f = iso_call(s, "0101", auth_fields(PAN_OK, rrn3, amount=700, stan="000301"))
            self.assertEqual((mti, f[39], f[11]), ("0110", "00", "000301"))
            code = f[38]
            mti, f = iso_call(s, "0100", auth_fields(PAN_OK, rrn3, amount=700, stan="000302"))
            self.assertEqual((mti, f[39], f[38]), ("0110", "00", code))
            self.assertEqual(self.sim.journal(payment=rrn3)["summary"]["charges"], 1)
            for mti_in, stan in (("0420", "000303"), ("0421", "000304")):
                mti, f = iso_call(s, mti_in, {4: 700, 7: "1124123400", 11: stan, 37: rrn3, 41: "TERM0001",
                                              49: "840", 90: "0100000301" + "1124123000" + "0" * 22})
                self.assertEqual((mti, f[39], f[11]), ("0430", "00", stan))
            sale = uuid.uuid4().hex[:12].upper()
            mti, f = iso_call(s, "0201", auth_fields(PAN_OK, sale, stan="000305"))
            self.assertEqual((mti, f[39]), ("0210", "00"))
        j = self.sim.journal(payment=rrn3)
        self.assertEqual([e["operation"] for e in j["entries"]], ["authorize", "reversal"])
        self.assertEqual(j["summary"]["charges"], 0)
        self.assertEqual(self.sim.journal(payment=sale)["summary"]["charges"], 1)
        j = self.sim.journal(reference=unknown)
        # the reversal, and the other terminal's authorization (the fenced
        # original was answered from the fence, no row)
        self.assertEqual([(e["operation"], e["status"], e["terminal"]) for e in j["entries"]],
                         [("reversal", "not_found", "TERM0001"), ("authorize", "approved", "TERM0002")])

    def test_iso_capture_advice_its_idempotency_and_errors(self):
        a, declined, sale = new_rrn(), new_rrn(), new_rrn()
        c1, c2 = new_rrn(), new_rrn()
        with self.sim.iso_connect() as s:
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, a, amount=1500))[1][39], "00")
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_DECLINE, declined))[1][39], "05")
            self.assertEqual(iso_call(s, "0200", auth_fields(PAN_OK, sale))[1][39], "00")
            # Refusals: nothing stored, the authorization stays capturable.
            for f48, amount, tid, cur, want in ((new_rrn(), 1000, "TERM0001", "840", "25"),
                                                (a, 1000, "TERM0002", "840", "25"),  # another terminal's
                                                (a, 1501, "TERM0001", "840", "13"),
                                                (a, 0, "TERM0001", "840", "13"),
                                                (a, 1000, "TERM0001", "978", "12"),
                                                (declined, 1000, "TERM0001", "840", "12"),
                                                (sale, 1000, "TERM0001", "840", "12")):
                mti, f = iso_call(s, "0220", linked_fields(new_rrn(), f48, amount, tid=tid, currency=cur))
                self.assertEqual((mti, f[39]), ("0230", want), (f48, amount, tid, cur))
            no48 = linked_fields(new_rrn(), a, 1000)
            del no48[48]
            self.assertEqual(iso_call(s, "0220", no48)[1][39], "30")
            mti, f = iso_call(s, "0220", linked_fields(c1, a, 1000, stan="000411"))
            self.assertEqual((mti, f[39], f[37], f[11], f[4]), ("0230", "00", c1, "000411", "000000001000"))
            self.assertNotIn(2, f)
            # The same RRN again: the same answer, no second capture.
            mti, f = iso_call(s, "0221", linked_fields(c1, a, 1000, stan="000412"))
            self.assertEqual((mti, f[39], f[11]), ("0230", "00", "000412"))
            self.assertEqual(iso_call(s, "0220", linked_fields(c2, a, 200))[1][39], "12", "already captured")
        j = self.sim.journal(payment=a)
        self.assertEqual([(e["operation"], e["reference"], e["status"], e["amount"]) for e in j["entries"]],
                         [("authorize", a, "approved", 1500), ("capture", c1, "captured", 1000)])
        cap = j["entries"][1]
        self.assertEqual((cap["authorization"], cap["terminal"], cap["protocol"], cap["currency"]),
                         (a, "TERM0001", "iso", "usd"))
        self.assertEqual(j["summary"]["charges_by_payment"], {a: 1}, "a captured authorization is one charge")
        self.assertEqual(self.sim.journal(reference=c2)["entries"], [], "refusals are not journaled")

    def test_iso_refund_limits_and_idempotency(self):
        a, b, sale, c = new_rrn(), new_rrn(), new_rrn(), new_rrn()
        r1, r2, r3, r4 = new_rrn(), new_rrn(), new_rrn(), new_rrn()
        refund = "200000"
        with self.sim.iso_connect() as s:
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, a, amount=2000))[1][39], "00")
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, b, amount=2000))[1][39], "00")
            self.assertEqual(iso_call(s, "0200", auth_fields(PAN_OK, sale, amount=800))[1][39], "00")
            self.assertEqual(iso_call(s, "0220", linked_fields(c, a, 1500))[1][39], "00")
            mti, f = iso_call(s, "0200", linked_fields(r1, a, 600, proc=refund, stan="000501"))
            self.assertEqual((mti, f[39], f[3], f[37], f[11]), ("0210", "00", refund, r1, "000501"))
            self.assertEqual(iso_call(s, "0200", linked_fields(r1, a, 600, proc=refund))[1][39], "00", "repeat")
            mti, f = iso_call(s, "0200", linked_fields(r2, a, 901, proc=refund))
            self.assertEqual((mti, f[39]), ("0210", "13"), "only 900 of the capture left")
            self.assertEqual(iso_call(s, "0200", linked_fields(r2, a, 1, proc=refund))[1][39], "13",
                             "a refused refund is journaled: its repeat is refused again")
            self.assertEqual(iso_call(s, "0200", linked_fields(r3, a, 900, proc=refund))[1][39], "00")
            self.assertEqual(iso_call(s, "0200", linked_fields(r4, a, 1, proc=refund))[1][39], "13")
            self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), b, 1, proc=refund))[1][39], "13",
                             "nothing captured yet")
            self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), sale, 800, proc=refund))[1][39], "00",
                             "a 0200 sale is captured at once")
            self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), new_rrn(), 1, proc=refund))[1][39], "25")
            self.assertEqual(iso_call(s, "0200", linked_fields(c, a, 1, proc=refund))[1][39], "94",
                             "the capture's RRN reused for a refund")
            self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), a, 0, proc=refund))[1][39], "13")
        j = self.sim.journal(payment=a)
        self.assertEqual([(e["operation"], e["reference"], e["status"], e["amount"]) for e in j["entries"]],
                         [("authorize", a, "approved", 2000), ("capture", c, "captured", 1500),
                          ("refund", r1, "succeeded", 600), ("refund", r2, "failed", 901),
                          ("refund", r3, "succeeded", 900), ("refund", r4, "failed", 1)])
        self.assertEqual(j["summary"]["charges_by_payment"], {a: 1}, "refunds create no charge")
        for p in (b, sale):
            s_ = self.sim.journal(payment=p)["summary"]
            self.assertEqual((s_["charges"], s_["double_charges"]), (1, 0))

    def test_iso_reversal_of_captures_refunds_and_captured_authorizations(self):
        a, c, c2, r, r2, d, dc = (new_rrn() for _ in range(7))
        with self.sim.iso_connect() as s:
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, a, amount=1000))[1][39], "00")
            self.assertEqual(iso_call(s, "0220", linked_fields(c, a, 1000))[1][39], "00")
            # A timed-out capture is reversed by its own RRN: only the capture is undone.
            mti, f = iso_call(s, "0400", reversal_fields(c, "0220"))
            self.assertEqual((mti, f[39], f[37]), ("0410", "00", c))
            self.assertEqual(iso_call(s, "0401", reversal_fields(c, "0220"))[1][39], "00", "repeat")
            self.assertEqual(iso_call(s, "0220", linked_fields(c2, a, 1000))[1][39], "00", "capturable again")
            self.assertEqual(iso_call(s, "0200", linked_fields(r, a, 400, proc="200000"))[1][39], "00")
            self.assertEqual(iso_call(s, "0400", reversal_fields(r, "0200"))[1][39], "00")
            self.assertEqual(iso_call(s, "0200", linked_fields(r2, a, 1000, proc="200000"))[1][39], "00",
                             "the reversed refund gave its 400 back")
            # Refunded money cannot come back twice through a reversal.
            self.assertEqual(iso_call(s, "0400", reversal_fields(a))[1][39], "12")
            self.assertEqual(iso_call(s, "0400", reversal_fields(c2, "0220"))[1][39], "12")
            # A captured authorization without refunds is reversed whole, capture included.
            self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, d, amount=500))[1][39], "00")
            self.assertEqual(iso_call(s, "0220", linked_fields(dc, d, 500))[1][39], "00")
            self.assertEqual(iso_call(s, "0400", reversal_fields(d))[1][39], "00")
            self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), d, 1, proc="200000"))[1][39], "13")
            self.assertEqual(iso_call(s, "0220", linked_fields(new_rrn(), d, 500))[1][39], "12")
        j = self.sim.journal(payment=a)
        self.assertEqual([(e["operation"], e["reference"], e["status"]) for e in j["entries"]],
                         [("authorize", a, "approved"), ("capture", c, "captured"),
                          ("reversal", c, "capture_reversed"), ("capture", c2, "captured"),
                          ("refund", r, "succeeded"), ("reversal", r, "refund_reversed"),
                          ("refund", r2, "succeeded")])
        self.assertEqual(j["summary"]["charges_by_payment"], {a: 1},
                         "reversing a capture leaves the authorization charged")
        j = self.sim.journal(payment=d)
        self.assertEqual([(e["operation"], e["status"]) for e in j["entries"]],
                         [("authorize", "approved"), ("capture", "captured"), ("reversal", "reversed"),
                          ("refund", "failed")], "a refund over the remainder is journaled as failed")
        self.assertEqual((j["summary"]["charges"], j["summary"]["charges_by_payment"]), (0, {}))

    def test_iso_many_in_flight_on_one_connection(self):
        n = 40
        rrns = {"%06d" % (300 + i): uuid.uuid4().hex[:12].upper() for i in range(n)}
        with self.sim.iso_connect() as s:
            s.sendall(b"".join(iso_frame("0100", auth_fields(PAN_OK, rrn, stan=stan))
                               for stan, rrn in rrns.items()))
            got = {}
            for _ in range(n):
                mti, f = iso_recv(s)
                got[f[11]] = f[37]
        self.assertEqual(got, rrns, "every answer matched by STAN")

    def test_iso_malformed_frame_closes_only_that_connection(self):
        """A frame length out of range has lost the framing: that connection
        closes. A whole frame whose message is malformed is dropped and the
        connection goes on: an answer queued before it, and the messages
        after it, are answered (sent in one write)."""
        with self.sim.iso_connect() as s:
            s.sendall(struct.pack(">H", 3) + b"010")                          # shorter than MTI + bitmap
            self.assertTrue(closed_by_peer(s))
        bad = [
            struct.pack(">H", 20) + b"0100" + b"\xff" * 8 + b"12345678",  # bitmap promises fields never sent
            iso_frame("0800", {7: "1124123000", 11: "000777", 70: "001"}).replace(b"000777", b"0007A7"),
        ]
        for frame in bad:
            with self.sim.iso_connect() as s:
                s.sendall(iso_frame("0800", {7: "1124123000", 11: "000001", 70: "301"}) + frame +
                          iso_frame("0800", {7: "1124123000", 11: "000002", 70: "301"}))
                self.assertEqual([iso_recv(s)[1][11] for _ in range(2)], ["000001", "000002"], frame)
        # a card number under 12 digits is 14 (invalid card number), not an amount error
        with self.sim.iso_connect() as s:
            s.sendall(iso_frame("0100", auth_fields("42424242424", uuid.uuid4().hex[:12].upper())))
            self.assertEqual(iso_recv(s)[1][39], "14")
        self.assertIn("sim_iso_malformed", self.sim.stderr())

    def test_iso_faults(self):
        self.sim.faults(processor="iso", error_rate=1.0)
        try:
            with self.sim.iso_connect() as s:
                rrn = uuid.uuid4().hex[:12].upper()
                s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn)))
                self.assertEqual(iso_recv(s)[1][39], "96")
            self.sim.faults(processor="iso", error_rate=0.0, outage=True)
            with self.sim.iso_connect() as s:
                self.assertTrue(closed_by_peer(s), "outage: connections are refused")
            self.sim.faults(processor="iso", outage=False, timeout_rate=1.0, timeout_mode="after")
            with self.sim.iso_connect() as s:
                rrn = uuid.uuid4().hex[:12].upper()
                s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn)))
                s.settimeout(1.0)
                with self.assertRaises(socket.timeout):
                    s.recv(1)
            self.assertEqual(self.sim.journal(payment=rrn)["summary"]["charges"], 1,
                             "processed, never answered: the gateway must reverse it")
        finally:
            self.sim.faults(processor="iso", error_rate=0.0, outage=False, timeout_rate=0.0)


class SimRestartTest(unittest.TestCase):
    def test_kill9_keeps_journal_and_idempotency(self):
        sim = Sim().start()
        try:
            _, _, a = sim.authorize("acq", "k9-auth", payment="pi_k9")
            st, _, _ = sim.call("POST", "/p/acq/v1/authorizations/k9-fenced/void", {"reference": "k9-fence"})
            self.assertEqual(st, 200)
            _, _, c = sim.call("POST", "/p/acq/v1/authorizations/k9-auth/capture", {"reference": "k9-cap"})
            rrn = uuid.uuid4().hex[:12].upper()
            with sim.iso_connect() as s:
                s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn, stan="000901")))
                first = iso_recv(s)[1]
            sim.kill9()
            sim.start()
            st, h, a2 = sim.authorize("acq", "k9-auth", payment="pi_k9", amount=9)
            self.assertEqual((a2, h.get("Idempotent-Replayed")), (a, "true"))
            st, h, c2 = sim.call("POST", "/p/acq/v1/authorizations/k9-auth/capture", {"reference": "k9-cap"})
            self.assertEqual(c2, c)
            self.assertEqual(sim.call("GET", "/p/acq/v1/transactions/k9-cap")[2], c)
            # The captured state survived too: a second capture is refused.
            st, _, b = sim.call("POST", "/p/acq/v1/authorizations/k9-auth/capture", {"reference": "k9-cap2"})
            self.assertEqual(st, 409)
            with sim.iso_connect() as s:
                s.sendall(iso_frame("0100", auth_fields(PAN_OK, rrn, stan="000902")))
                again = iso_recv(s)[1]
            self.assertEqual(again[38], first[38])
            # the fence survived: the late authorization charges nothing
            st, _, late = sim.authorize("acq", "k9-fenced", payment="pi_k9_late")
            self.assertEqual((st, late["status"]), (200, "voided"))
            s = sim.journal()["summary"]
            self.assertEqual(s["charges_by_payment"], {"pi_k9": 1, rrn: 1})
            self.assertEqual(s["double_charges"], 0)
            self.assertEqual(sim.stop(), 0)
        finally:
            sim.cleanup()

    def test_kill9_keeps_iso_captures_refunds_and_their_reversals(self):
        sim = Sim().start()
        try:
            a, c, c2, r, r2 = (new_rrn() for _ in range(5))
            with sim.iso_connect() as s:
                self.assertEqual(iso_call(s, "0100", auth_fields(PAN_OK, a, amount=1000))[1][39], "00")
                self.assertEqual(iso_call(s, "0220", linked_fields(c, a, 1000))[1][39], "00")
                self.assertEqual(iso_call(s, "0400", reversal_fields(c, "0220"))[1][39], "00")
                self.assertEqual(iso_call(s, "0220", linked_fields(c2, a, 900))[1][39], "00")
                self.assertEqual(iso_call(s, "0200", linked_fields(r, a, 300, proc="200000"))[1][39], "00")
                self.assertEqual(iso_call(s, "0400", reversal_fields(r, "0200"))[1][39], "00")
            sim.kill9()
            sim.start()
            with sim.iso_connect() as s:
                # Repeats are answered from the journal; the state behind them survived.
                self.assertEqual(iso_call(s, "0220", linked_fields(c2, a, 900))[1][39], "00")
                self.assertEqual(iso_call(s, "0220", linked_fields(new_rrn(), a, 100))[1][39], "12")
                self.assertEqual(iso_call(s, "0200", linked_fields(r2, a, 901, proc="200000"))[1][39], "13")
                self.assertEqual(iso_call(s, "0200", linked_fields(new_rrn(), a, 900, proc="200000"))[1][39],
                                 "00", "the reversed refund is still given back after the restart")
            j = sim.journal(payment=a)
            self.assertEqual([e["operation"] for e in j["entries"]],
                             ["authorize", "capture", "reversal", "capture", "refund", "reversal", "refund",
                              "refund"])
            self.assertEqual((j["summary"]["charges_by_payment"], j["summary"]["double_charges"]), ({a: 1}, 0))
            self.assertEqual(sim.stop(), 0)
        finally:
            sim.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
