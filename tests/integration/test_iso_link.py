"""The gateway's ISO 8583 connector against an acquirer host written here in
Python: an independent implementation of the wire format of docs/iso8583.md
(2-byte big-endian length, ASCII MTI, binary bitmaps, ASCII fields with
LL/LLL prefixes), so a mistake shared by the C codec and its own unit tests
would show up here.

- sign-on (0800 70=001) and echo (70=301) reach the host; a payment goes out
  as 0200 with the documented fields and its answer drives the PaymentIntent;
- an authorization the host does not answer in time is reversed (0400 with
  the same RRN and field 90 naming the original), the late approval is
  ignored, and the payment is not reported as succeeded;
- malformed and truncated messages from the host are logged clearly, the
  link reconnects, and the next payment works; no PAN reaches the log.
"""
import os
import re
import socket
import struct
import threading
import time
import unittest

import harness
from harness import HOST, PAN_OK, PAN_INSUFFICIENT, Daemon, card, new_key

WAIT_S = 15.0

# field: (kind, prefix digits (0 = fixed), length) for the fields this test meets
FIELDS = {
    2: ("n", 2, 19), 3: ("n", 0, 6), 4: ("n", 0, 12), 7: ("n", 0, 10), 11: ("n", 0, 6),
    12: ("n", 0, 6), 13: ("n", 0, 4), 14: ("n", 0, 4), 18: ("n", 0, 4), 22: ("n", 0, 3),
    25: ("n", 0, 2), 37: ("an", 0, 12), 38: ("an", 0, 6), 39: ("an", 0, 2), 41: ("ans", 0, 8),
    42: ("ans", 0, 15), 48: ("ans", 3, 999), 49: ("an", 0, 3), 70: ("n", 0, 3), 90: ("n", 0, 42),
}

DECLINES = {"4000000000009995": "51", "4000000000000002": "05"}


def unpack(body):
    """Parse a message body; raise ValueError on anything off."""
    if len(body) < 12 or not body[:4].isdigit():
        raise ValueError("short or bad MTI")
    mti = body[:4].decode()
    bits = int.from_bytes(body[4:12], "big")
    pos, nbits = 12, 64
    if bits >> 63:
        bits = (bits << 64) | int.from_bytes(body[12:20], "big")
        pos, nbits = 20, 128
        if len(body) < 20:
            raise ValueError("short secondary bitmap")
    fields = {}
    for f in range(2, nbits + 1):
        if not (bits >> (nbits - f)) & 1:
            continue
        if f not in FIELDS:
            raise ValueError("field %d not expected" % f)
        kind, prefix, size = FIELDS[f]
        if prefix:
            ln = body[pos:pos + prefix]
            if len(ln) != prefix or not ln.isdigit():
                raise ValueError("field %d: bad length prefix" % f)
            size = int(ln)
            pos += prefix
        v = body[pos:pos + size]
        if len(v) != size:
            raise ValueError("field %d truncated" % f)
        v = v.decode("ascii")
        if kind == "n" and not v.isdigit():
            raise ValueError("field %d not numeric" % f)
        fields[f] = v
        pos += size
    if pos != len(body):
        raise ValueError("trailing bytes")
    return mti, fields


def pack(mti, fields):
    """Build a message body; secondary bitmap only when a field > 64 is set."""
    high = any(f > 64 for f in fields)
    nbits = 128 if high else 64
    bits = (1 << 127) if high else 0
    out = b""
    for f in sorted(fields):
        kind, prefix, size = FIELDS[f]
        v = fields[f].encode("ascii")
        if prefix:
            out += b"%0*d" % (prefix, len(v))
        else:
            assert len(v) == size, (f, v)
        out += v
        bits |= 1 << (nbits - f)
    return mti.encode() + bits.to_bytes(nbits // 8, "big") + out


def frame(body):
    return struct.pack(">H", len(body)) + body


class IsoHost:
    """A single-connection acquirer host on 127.0.0.1:0."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(4)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.seen = []          # (mti, fields), in arrival order
        self.errors = []        # what this host could not parse (a connector bug)
        self.connections = 0
        self.hold = 0           # this many 0100/0200 get no answer until their reversal
        self.tamper = {}        # fields the next approval of a 0100/0200 answers with instead
        self.reset_on = set()   # MTIs this host answers by closing the connection
        self.held = []
        self.rev_code = "00"    # field 39 of the 0410s
        self.echo_code = "00"   # field 39 of the 0810s answering echoes (70 = 301)
        self.mti_override = None  # the MTI the next approval of a 0100/0200 is sent as
        self.unlocated_first = 0  # this many 0400s answered 25 while the held calls stay held...
        self.late_s = 0.3         # ...which are approved this long after
        self.late_at = None       # len(seen) when those late approvals went out
        self.rev_silent = False   # 0400/0401 get no answer
        self.late_copies = 1      # each late approval sent this many times
        self.rev25_copies = 1     # each such 25 sent this many times
        self.conn = None
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.lsock.close()

    def count(self, mti, f70=None):
        with self.lock:
            return sum(1 for m, f in self.seen if m == mti and (f70 is None or f.get(70) == f70))

    def last(self, mti):
        with self.lock:
            for m, f in reversed(self.seen):
                if m == mti:
                    return f
        return None

    def send_raw(self, data, then_close=False):
        with self.lock:
            c = self.conn
        c.sendall(data)
        if then_close:
            c.shutdown(socket.SHUT_RDWR)

    def reply(self, c, mti, q, f39):
        r = {k: q[k] for k in (3, 4, 7, 11, 37, 41, 42, 49, 70) if k in q}
        r[39] = f39
        if f39 == "00" and mti in ("0110", "0210"):
            r[38] = "PY0001"
            with self.lock:
                r.update(self.tamper)  # a None value leaves the field out
                self.tamper = {}
        r = {k: v for k, v in r.items() if v is not None}
        if mti in ("0110", "0210"):
            with self.lock:
                mti, self.mti_override = self.mti_override or mti, None
        c.sendall(frame(pack(mti, r)))

    def handle(self, c, body):
        try:
            mti, f = unpack(body)
        except ValueError as e:
            with self.lock:
                self.errors.append(str(e))
            return
        with self.lock:
            self.seen.append((mti, f))
            if mti in self.reset_on:
                c.shutdown(socket.SHUT_RDWR)
                return
            hold = mti in ("0100", "0200") and self.hold > 0
            if hold:
                self.hold -= 1
                self.held.append((mti, f))
        if mti == "0800":
            with self.lock:
                code = self.echo_code if f.get(70) == "301" else "00"
            self.reply(c, "0810", f, code)
        elif mti in ("0100", "0200") and not hold:
            f39 = DECLINES.get(f.get(2, ""), "00")
            self.reply(c, mti[:2] + "10", f, f39)
        elif mti in ("0400", "0401") and self.rev_silent:
            pass
        elif mti in ("0400", "0401") and self.unlocated_first > 0:
            # the calls are still at the issuer: not found now, approved later
            with self.lock:
                self.unlocated_first -= 1
                held, self.held = self.held, []
            for _ in range(self.rev25_copies):
                self.reply(c, "0410", f, "25")
            if self.late_s is None:
                return  # never approved

            def late():
                with self.lock:
                    self.late_at = len(self.seen)  # what the host had seen by then
                for _ in range(self.late_copies):
                    for hm, hf in held:
                        self.reply(c, hm[:2] + "10", hf, "00")
            threading.Timer(self.late_s, late).start()
        elif mti in ("0400", "0401"):
            with self.lock:
                held, self.held = self.held, []
            for hm, hf in held:  # the late approval comes first, then the 0410
                self.reply(c, hm[:2] + "10", hf, "00")
            self.reply(c, "0410", f, self.rev_code)

    def run(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            with self.lock:
                self.conn = c
                self.connections += 1
            c.settimeout(0.1)
            buf = b""
            while not self.stop:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not d:
                    break
                buf += d
                while len(buf) >= 2:
                    n = struct.unpack(">H", buf[:2])[0]
                    if len(buf) < 2 + n:
                        break
                    body, buf = buf[2:2 + n], buf[2 + n:]
                    self.handle(c, body)
            c.close()


def wait_for(pred, timeout=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


class IsoLink(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.host = IsoHost()
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(config=(
                "[processor.acq]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 700\n"
                "terminal_id = TERM0042\nmerchant_id = MERCHANT4200001\n"
                "echo_interval_ms = 200\nhealth_interval_ms = 0\n") % (HOST, cls.host.port))
        except Exception:
            cls.daemon.cleanup()
            cls.host.close()
            raise
        wait_for(lambda: cls.host.count("0800", "001") >= 1, what="sign-on")

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        cls.host.close()

    def pay(self, pan=PAN_OK, amount=1999):
        return self.daemon.client("m").post(
            "/v1/payment_intents",
            {"amount": amount, "currency": "usd", "confirm": "true", "payment_method_data": card(pan)},
            idem=new_key())

    def test_1_signon_echo_and_a_payment(self):
        wait_for(lambda: self.host.count("0800", "301") >= 2, what="two echoes")
        r = self.pay(amount=1234)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        f = self.host.last("0200")
        self.assertIsNotNone(f)
        self.assertEqual(f[2], PAN_OK)
        self.assertEqual(f[3], "000000")
        self.assertEqual(f[4], "000000001234")
        self.assertEqual(f[49], "840")
        self.assertEqual(f[41], "TERM0042")
        self.assertEqual(f[42], "MERCHANT4200001")
        self.assertRegex(f[37], r"^[0-9A-Z]{12}$")
        self.assertRegex(f[7], r"^\d{10}$")
        r = self.pay(pan=PAN_INSUFFICIENT)
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"]["decline_code"], "insufficient_funds", r)
        self.assertEqual(self.host.errors, [])

    def test_2_timed_out_authorization_is_reversed(self):
        before_rev = self.host.count("0400")
        with self.host.lock:
            self.host.hold = 1
        r = self.pay()
        # Whatever the gateway does next, the timed-out request was reversed.
        wait_for(lambda: self.host.count("0400") > before_rev, what="0400 reversal")
        with self.host.lock:
            orig = [f for m, f in self.host.seen if m == "0200"][-1] if r.status == 200 else None
            held_all = [f for m, f in self.host.seen if m in ("0100", "0200")]
        rev = self.host.last("0400")
        timed_out = [f for f in held_all if f[37] == rev[37]]
        self.assertTrue(timed_out, "the 0400 names no request's RRN")
        t = timed_out[0]
        self.assertEqual(rev[90][:4], "0200")
        self.assertEqual(rev[90][4:10], t[11])
        self.assertEqual(rev[90][10:20], t[7])
        self.assertEqual(rev[4], t[4])
        self.assertNotEqual(rev[11], t[11])
        wait_for(lambda: "iso_late_response_ignored" in self.daemon.log_text(), what="late answer log")
        # The late approval did not make the first attempt succeed; if the
        # gateway retried, that retry is a different request with its own RRN.
        if r.status == 200 and r.json.get("status") == "succeeded":
            self.assertNotEqual(orig[37], rev[37])
        self.assertEqual(self.host.errors, [])

    def test_2g_an_approval_after_the_reversal_was_answered_25_is_reversed_again(self):
        """The host answers the reversal 25 (unable to locate) while the
        call is still at its issuer, then approves the call: it stands. The
        gateway took 25 as final and only logged the late approval, so the
        host kept the charge while the payment failed or went elsewhere
        (review, session 41). Now the approval is reversed again."""
        n0 = len(self.host.seen)
        with self.host.lock:
            self.host.hold = 1
            self.host.unlocated_first = 1
            self.host.late_copies = 50
            self.host.late_at = None
        try:
            self.pay()  # (retried on the link as a new call, it may succeed: that one stands alone)
            wait_for(lambda: self.host.late_at is not None, what="the late approval")
            with self.host.lock:
                held = [f for m, f in self.host.seen[n0:] if m == "0200"][0]

            def reversed_after():
                # a new reversal (0400, not the 25's repeat 0401) after the approval
                with self.host.lock:
                    return [f for m, f in self.host.seen[self.host.late_at:] if m == "0400" and
                            f.get(37) == held[37]]
            revs = wait_for(reversed_after, what="a reversal after the late approval")
            self.assertEqual(revs[-1][90][:10], "0200" + held[11])  # it names the call in field 90
            self.assertEqual(revs[-1][90][10:20], held[7])
            self.assertEqual(revs[-1][4], held[4])
            # the approval sent 50 times is reversed once, not 50 times (a
            # host repeating it made a reversal each, without end)
            time.sleep(1.5)
            self.assertEqual(len(reversed_after()), 1, reversed_after())
        finally:
            with self.host.lock:
                self.host.unlocated_first = 0
                self.host.late_copies = 1
                self.host.hold = 0
        self.assertEqual(self.host.errors, [])

    def test_2i_a_25_sent_twice_is_still_asked_again(self):
        """The first 25 to a reversal is asked again (0401) before it is
        believed; a host that sent that 0410 twice had its copy taken as
        the answer to the re-ask, which then never went out."""
        n0 = len(self.host.seen)
        with self.host.lock:
            self.host.hold = 1
            self.host.unlocated_first = 1
            self.host.rev25_copies = 2
            self.host.late_s = None
        try:
            self.pay()
            with self.host.lock:
                held = [f for m, f in self.host.seen[n0:] if m == "0200"][0]
            wait_for(lambda: [f for m, f in list(self.host.seen)[n0:] if m == "0401" and f.get(37) == held[37]],
                     what="the 25 asked again")
        finally:
            with self.host.lock:
                self.host.unlocated_first = 0
                self.host.rev25_copies = 1
                self.host.late_s = 0.3
                self.host.hold = 0
        self.assertEqual(self.host.errors, [])

    def test_2h_a_late_approval_reopens_an_attempt_closed_as_reversed(self):
        """The late approval comes after recovery closed the attempt as
        reversed, and the host does not answer the new reversal at once:
        the link's repeats gave up and nothing owed it any more, with the
        sale standing at the host (review of the day's fix, session 41).
        The attempt owes its reversal again, durably, until acknowledged."""
        c = self.daemon.client("m")
        n0 = len(self.host.seen)
        with self.host.lock:
            self.host.hold = 1
            self.host.unlocated_first = 1
            self.host.late_s = 12.0
            self.host.late_at = None
        try:
            r = self.pay()
            pi = r.json["id"] if r.status == 200 else r.json["error"]["payment_intent"]["id"]
            with self.host.lock:
                held = [f for m, f in self.host.seen[n0:] if m == "0200"][0]

            def first_attempt():
                return [a for a in c.get("/v1/payment_intents/%s/attempts" % pi).json["data"]
                        if a["kind"] == "authorize"][0]
            # its reversal acknowledged (the 0401 after the 25), recovery closes it
            wait_for(lambda: first_attempt()["state"] == "reversed", timeout=11, what="the attempt reversed")
            with self.host.lock:
                self.host.rev_silent = True  # the new reversal is not answered for now
            wait_for(lambda: self.host.late_at is not None, timeout=15, what="the late approval")
            wait_for(lambda: first_attempt()["state"] == "reversal_pending", timeout=5, what="the attempt reopened")
            with self.host.lock:
                self.host.rev_silent = False
            wait_for(lambda: first_attempt()["state"] == "reversed", timeout=30, what="reversed again")
            with self.host.lock:
                revs = [f for m, f in self.host.seen[self.host.late_at:] if m in ("0400", "0401")
                        and f.get(37) == held[37]]
            self.assertTrue(revs)
        finally:
            with self.host.lock:
                self.host.unlocated_first = 0
                self.host.hold = 0
                self.host.rev_silent = False
                self.host.late_s = 0.3
        self.assertEqual(self.host.errors, [])

    def test_2b_a_void_names_its_authorization_in_field_90(self):
        """ISO 8583:1987 field 90 = the original MTI, STAN and field 7: a
        host that finds the original by them (not by field 37) finds the
        authorization a void reverses."""
        r = self.daemon.client("m").post("/v1/payment_intents", {
            "amount": 2100, "currency": "usd", "confirm": "true", "capture_method": "manual",
            "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
        auth = self.host.last("0100")
        r = self.daemon.client("m").post("/v1/payment_intents/%s/cancel" % r.json["id"], {})
        self.assertEqual((r.status, r.json["status"]), (200, "canceled"), r)
        rev = self.host.last("0400")
        self.assertEqual(rev[37], auth[37])
        self.assertEqual(rev[90], "0100" + auth[11] + auth[7] + "0" * 22)
        self.assertEqual(self.host.errors, [])

    def test_2c_an_approval_for_another_amount_or_currency_is_reversed(self):
        """Fields 4 and 49 of an answer echo the request's (ISO 8583:1987):
        an approval naming another amount or currency is never recorded as
        the payment's; its hold is reversed (0400 under its RRN)."""
        for tamper in ({4: "000000000100"}, {49: "978"}):
            before = self.host.count("0400")
            with self.host.lock:
                self.host.tamper = dict(tamper)
            r = self.pay(amount=4321)
            wait_for(lambda: self.host.count("0400") > before, what="0400 reversal")
            with self.host.lock:
                tampered = [f for m, f in self.host.seen if m == "0200"][-1 if r.status != 200 else -2]
            rev = self.host.last("0400")
            self.assertEqual((rev[37], rev[4], rev[90][:4]), (tampered[37], "000000004321", "0200"), tamper)
            if r.status == 200:  # a retry, with a new RRN, was approved for the amount asked
                last = self.host.last("0200")
                self.assertNotEqual(last[37], tampered[37])
                self.assertEqual((r.json["status"], r.json["amount_received"]), ("succeeded", 4321), r)
            else:
                self.assertNotEqual(r.json.get("status"), "succeeded", r)
            self.assertIn("iso_approval_mismatch", self.daemon.log_text())
        self.assertEqual(self.host.errors, [])

    def test_2d_a_garbled_or_in_progress_code_is_reversed_not_declined(self):
        """A field 39 that is no code ("0 ") or says the request is still in
        progress (09) tells nothing of the hold: it is reversed like an
        answer that never came, never taken as a soft decline and left."""
        for f39 in ("0 ", "09"):
            before = self.host.count("0400")
            with self.host.lock:
                self.host.tamper = {39: f39}
            r = self.pay(amount=2468)
            wait_for(lambda: self.host.count("0400") > before, what="0400 reversal of %r" % f39)
            with self.host.lock:
                tampered = [f for m, f in self.host.seen if m == "0200"][-1 if r.status != 200 else -2]
            rev = self.host.last("0400")
            self.assertEqual((rev[37], rev[4]), (tampered[37], "000000002468"), f39)
            if r.status == 200:
                self.assertEqual((r.json["status"], r.json["amount_received"]), ("succeeded", 2468), r)
        self.assertIn("field 39 malformed", self.daemon.log_text())
        self.assertEqual(self.host.errors, [])

    def test_2da_an_approval_without_an_authorization_code_is_reversed(self):
        """Field 38 is mandatory in an approval of an authorization: one
        without it (or all spaces) was booked with an empty authorization
        code; it is an unusable answer, reversed like one that never came."""
        for tamper in ({38: None}, {38: "      "}, {37: None}, {41: "OTHERTID"}, {4: None}, {49: None}):
            before = self.host.count("0400")
            with self.host.lock:
                self.host.tamper = dict(tamper)
            r = self.pay(amount=1357)
            wait_for(lambda: self.host.count("0400") > before, what="0400 reversal of %r" % tamper)
            with self.host.lock:
                tampered = [f for m, f in self.host.seen if m == "0200"][-1 if r.status != 200 else -2]
            rev = self.host.last("0400")
            self.assertEqual((rev[37], rev[4], rev[90][:4]), (tampered[37], "000000001357", "0200"), tamper)
            if r.status == 200:  # a retry with a new RRN, approved with a code
                self.assertEqual((r.json["status"], r.json["amount_received"]), ("succeeded", 1357), r)
                ch = self.daemon.client("m").get("/v1/charges/" + r.json["latest_charge"]).json
                self.assertEqual(ch["authorization_code"], "PY0001", ch)
            else:
                self.assertNotEqual(r.json.get("status"), "succeeded", r)
        log = self.daemon.log_text()
        for why in ("field 38 missing on an approval", "field 37 missing", "field 41 names another terminal",
                    "iso_approval_mismatch"):
            self.assertIn(why, log)
        self.assertEqual(self.host.errors, [])

    def test_2dc_a_partial_approval_is_declined_insufficient_funds_and_reversed(self):
        """A partial approval (39 = 10) says the funds do not cover the
        amount: the hold is reversed (owed durably) and the merchant gets
        the issuer's answer, a card_error insufficient_funds, with no retry
        (it was a timeout: retried on the same account and cascaded, the
        merchant told 502 api_error after a second hold)."""
        before_auths, before_rev = self.host.count("0200"), self.host.count("0400")
        with self.host.lock:
            self.host.tamper = {39: "10", 4: "000000000500"}
        r = self.pay(amount=1000)
        self.assertEqual((r.status, r.json["error"]["code"], r.json["error"].get("decline_code")),
                         (402, "card_declined", "insufficient_funds"), r)
        self.assertEqual(self.host.count("0200"), before_auths + 1, "retried after a partial approval")
        wait_for(lambda: self.host.count("0400") > before_rev, what="the partial approval's reversal")
        sale = self.host.last("0200")
        rev = self.host.last("0400")
        self.assertEqual((rev[37], rev[90][:20]), (sale[37], "0200" + sale[11] + sale[7]))
        pid = r.json["error"]["payment_intent"]["id"]
        atts = self.daemon.client("m").get("/v1/payment_intents/%s/attempts" % pid).json["data"]
        self.assertEqual(len(atts), 1, atts)
        self.assertIn(atts[0]["state"], ("reversal_pending", "reversed"), atts)
        self.assertEqual(atts[0]["processor_reference"], sale[37], atts)  # the RRN the hold stands under
        wait_for(lambda: self.daemon.client("m").get("/v1/payment_intents/%s/attempts" % pid).json["data"][0]
                 ["state"] == "reversed", timeout=20, what="the reversal acknowledged")
        pi = self.daemon.client("m").get("/v1/payment_intents/" + pid).json
        self.assertEqual((pi["status"], pi["amount_received"]), ("requires_payment_method", 0), pi)
        ch = self.daemon.client("m").get("/v1/charges/" + pi["latest_charge"]).json
        self.assertEqual((ch["status"], ch["failure_code"], ch["outcome"]["reason"]),
                         ("failed", "card_declined", "insufficient_funds"), ch)

    def test_2db_a_reversal_approved_with_another_code_is_done(self):
        """A 0410 with an approval code other than 00 (11, 85) says the hold
        is released: the cancel is done (it was read as a decline with an
        empty code: 502, the PaymentIntent left requires_capture)."""
        for code in ("11", "85"):
            r = self.daemon.client("m").post("/v1/payment_intents", {
                "amount": 2100, "currency": "usd", "confirm": "true", "capture_method": "manual",
                "payment_method_data": card(PAN_OK)}, idem=new_key())
            self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
            with self.host.lock:
                self.host.rev_code = code
            try:
                c = self.daemon.client("m").post("/v1/payment_intents/%s/cancel" % r.json["id"], {})
            finally:
                with self.host.lock:
                    self.host.rev_code = "00"
            self.assertEqual((c.status, c.json.get("status")), (200, "canceled"), (code, c))
        # a partial reversal (10) is no done one, nor a decline with an empty
        # code: the outcome is unknown (502), for recovery to reverse again
        r = self.daemon.client("m").post("/v1/payment_intents", {
            "amount": 2100, "currency": "usd", "confirm": "true", "capture_method": "manual",
            "payment_method_data": card(PAN_OK)}, idem=new_key())
        with self.host.lock:
            self.host.rev_code = "10"
        try:
            c = self.daemon.client("m").post("/v1/payment_intents/%s/cancel" % r.json["id"], {})
        finally:
            with self.host.lock:
                self.host.rev_code = "00"
        self.assertEqual((c.status, c.json["error"].get("tp_code")), (502, 6018), c)
        got = wait_for(lambda: (lambda x: x if x["status"] == "canceled" else None)(
            self.daemon.client("m").get("/v1/payment_intents/" + r.json["id"]).json), timeout=30,
            what="the cancel settled by recovery")
        self.assertEqual(got["status"], "canceled")

    def test_2dd_completed_partially_is_declined_and_reversed(self):
        """39 = 32, completed partially: part of the sale stands at the
        host. It was a plain decline with no reversal; now the sale is
        reversed (0400 under its RRN) and the merchant gets a decline
        (generic_decline), with nothing tried again."""
        before_sales, before_rev = self.host.count("0200"), self.host.count("0400")
        with self.host.lock:
            self.host.tamper = {39: "32"}
        r = self.pay(amount=3200)
        self.assertEqual((r.status, r.json["error"].get("decline_code")), (402, "generic_decline"), r)
        self.assertEqual(self.host.count("0200"), before_sales + 1, "tried again after a partial completion")
        wait_for(lambda: self.host.count("0400") > before_rev, what="the partial completion's reversal")
        sale, rev = self.host.last("0200"), self.host.last("0400")
        self.assertEqual((rev[37], rev[4], rev[90][:20]), (sale[37], "000000003200", "0200" + sale[11] + sale[7]))

    def test_2de_an_answer_for_another_processing_code_or_origin_is_not_the_request_s(self):
        """Field 3 of an answer echoes the request's, and an MTI's last
        digit is an origin (0-5): a sale approved as a refund (200000), or
        answered 0219, is no answer to it; the sale is reversed, never
        booked on that answer."""
        for tamper, override in (({3: "200000"}, None), ({}, "0219")):
            before = self.host.count("0400")
            with self.host.lock:
                self.host.tamper = dict(tamper)
                self.host.mti_override = override
            r = self.pay(amount=2222)
            wait_for(lambda: self.host.count("0400") > before, what="the reversal (%r %r)" % (tamper, override))
            with self.host.lock:
                tampered = [f for m, f in self.host.seen if m == "0200"][-1 if r.status != 200 else -2]
            rev = self.host.last("0400")
            self.assertEqual((rev[37], rev[4]), (tampered[37], "000000002222"))
            if r.status == 200:  # a retry under a new RRN, answered properly
                self.assertEqual(r.json["amount_received"], 2222, r)
        log = self.daemon.log_text()
        self.assertIn("field 3 does not match the request", log)
        self.assertIn('"mti":"0219"', log.replace(" ", ""))

    def test_2df_a_reversal_answered_already_reversed_is_done(self):
        """39 = 79 in a 0410, already reversed: an earlier send of the same
        reversal got there. The cancel is done (it was read as a refusal:
        the void declined duplicate_transaction, the PaymentIntent left
        requires_capture with its hold released at the host)."""
        r = self.daemon.client("m").post("/v1/payment_intents", {
            "amount": 7900, "currency": "usd", "confirm": "true", "capture_method": "manual",
            "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual((r.status, r.json["status"]), (200, "requires_capture"), r)
        with self.host.lock:
            self.host.rev_code = "79"
        try:
            c = self.daemon.client("m").post("/v1/payment_intents/%s/cancel" % r.json["id"], {})
        finally:
            with self.host.lock:
                self.host.rev_code = "00"
        self.assertEqual((c.status, c.json.get("status")), (200, "canceled"), c)

    def test_2e_a_cancel_answers_while_the_host_resets_every_reversal(self):
        """A host that drops the link at each 0400: every resend moved the
        call's deadline, so the cancel got no answer for 10 minutes and its
        PaymentIntent stayed locked. The caller is told at its own deadline
        (502, outcome unknown, for recovery), and the lock is released."""
        c = self.daemon.client("m")
        pi = c.post("/v1/payment_intents", {"amount": 1200, "currency": "usd", "confirm": "true",
                                            "capture_method": "manual", "payment_method_data": card(PAN_OK)},
                    idem=new_key()).json
        self.assertEqual(pi["status"], "requires_capture", pi)
        with self.host.lock:
            self.host.reset_on = {"0400", "0401"}
        try:
            t0 = time.monotonic()
            r = c.post("/v1/payment_intents/%s/cancel" % pi["id"], {}, idem=new_key(), timeout=30)
            took = time.monotonic() - t0
            self.assertEqual((r.status, r.json["error"].get("tp_code")), (502, 6018), r.json)
            self.assertLess(took, 10, "told at the call's deadline (timeout_ms 700), not after the resends")
        finally:
            with self.host.lock:
                self.host.reset_on = set()
        # the lock is free again: recovery settles the cancel, the PaymentIntent takes requests
        got = wait_for(lambda: (lambda x: x if x["status"] == "canceled" else None)(
            c.get("/v1/payment_intents/" + pi["id"]).json), timeout=30, what="the cancel settled by recovery")
        self.assertEqual(got["status"], "canceled")
        self.assertEqual(c.post("/v1/payment_intents/" + pi["id"], {"metadata[k]": "v"}).status, 200)

    def signed_on(self):
        for p in self.daemon.client("m").get("/v1/turnpike/processors").json["data"]:
            if p.get("type") == "iso8583" and not p.get("link", {}).get("signed_on"):
                return False
        return True

    def test_3_bad_and_truncated_messages_link_recovers(self):
        conns = self.host.connections
        # well framed, malformed body: logged and dropped, link stays
        self.host.send_raw(frame(b"0110" + bytes([0x20]) + bytes(7) + b"XY"))
        wait_for(lambda: "iso_bad_message" in self.daemon.log_text(), what="bad message log")
        self.assertEqual(self.pay().json["status"], "succeeded")
        self.assertEqual(self.host.connections, conns)
        # a zero frame length: the stream is out of step, the link restarts
        signons = self.host.count("0800", "001")
        self.host.send_raw(b"\x00\x00")
        wait_for(lambda: self.host.count("0800", "001") > signons, what="re-sign-on")
        wait_for(self.signed_on, what="the gateway to read the 0810")  # the host sent it; read is later
        self.assertEqual(self.pay().json["status"], "succeeded")
        # truncated: 200 bytes announced, 10 sent, then the host hangs up
        signons = self.host.count("0800", "001")
        self.host.send_raw(b"\x00\xc8" + b"0110" + bytes(6), then_close=True)
        wait_for(lambda: self.host.count("0800", "001") > signons, what="re-sign-on after truncation")
        wait_for(self.signed_on, what="the gateway to read the 0810")
        self.assertEqual(self.pay().json["status"], "succeeded")
        log = self.daemon.log_text()
        self.assertIn("bad frame length 0", log)
        self.assertIn("iso_link_down", log)
        for pan in (PAN_OK, PAN_INSUFFICIENT):
            self.assertNotIn(pan, log)
        self.assertNotIn("runtime error", log)  # UBSan reports
        self.assertEqual(self.host.errors, [])


    def test_4_an_echo_refused_takes_the_link_down(self):
        """An echo answered 91 (switch inoperative): the host cannot take
        payments now. The link is dropped and signed on again (the answer
        was not looked at, and payments went on to a host that had said
        so)."""
        signons = self.host.count("0800", "001")
        with self.host.lock:
            self.host.echo_code = "91"
        try:
            wait_for(lambda: "echo refused" in self.daemon.log_text(), what="the refused echo")
        finally:
            with self.host.lock:
                self.host.echo_code = "00"
        wait_for(lambda: self.host.count("0800", "001") > signons, what="a new sign-on")
        wait_for(self.signed_on, what="the gateway to read the 0810")
        self.assertEqual(self.pay().json["status"], "succeeded")

    def test_5_a_host_s_network_request_is_answered_by_what_it_asks(self):
        """A host's 0800 is answered 00 for an echo (301) or a cutover
        (201), 12 (invalid transaction) for what the connector does not do,
        such as a key exchange (161): a 00 claimed a key change that never
        happened."""
        for stan, f70, want in (("900001", "301", "00"), ("900002", "201", "00"), ("900003", "161", "12")):
            self.host.send_raw(frame(pack("0800", {7: "1207120000", 11: stan, 70: f70})))
            got = wait_for(lambda: [f for m, f in list(self.host.seen) if m == "0810" and f.get(11) == stan],
                           what="the answer to %s" % f70)
            self.assertEqual((got[0].get(70), got[0].get(39)), (f70, want))
        # every other request or advice gets its response too (ISO 8583: an
        # x0 or x2 expects one; a host repeats it or drops the link): a
        # cutover advice 0820 by its field 70, a financial request from the
        # host 12, as this terminal takes none; a 0830 answer is not answered
        for mti, stan, f70, resp, want in (("0820", "900004", "201", "0830", "00"),
                                           ("0200", "900005", None, "0210", "12")):
            fields = {7: "1207120000", 11: stan}
            if f70:
                fields[70] = f70
            else:
                fields.update({3: "000000", 4: "000000000100", 37: "HOSTREQ00001", 41: "TERM0042", 49: "840"})
            self.host.send_raw(frame(pack(mti, fields)))
            got = wait_for(lambda: [f for m, f in list(self.host.seen) if m == resp and f.get(11) == stan],
                           what="the answer to %s" % mti)
            self.assertEqual(got[0].get(39), want, got)
            if not f70:
                self.assertEqual(got[0].get(37), "HOSTREQ00001")
        # a sign-off sent as a repeat (0801) is a sign-off: answered, the
        # link dropped and signed on again (it was answered 00 and ignored)
        with self.host.lock:
            conns = self.host.connections
        self.host.send_raw(frame(pack("0801", {7: "1207120000", 11: "900006", 70: "002"})))
        wait_for(lambda: [f for m, f in list(self.host.seen) if m == "0810" and f.get(11) == "900006"],
                 what="the answer to the repeated sign-off")
        wait_for(lambda: self.host.connections > conns, what="the link signed on again")
        wait_for(lambda: self.pay().json.get("status") == "succeeded", what="a payment on the new link")


class StalledFrame(unittest.TestCase):
    """A frame the host begins and never finishes, with echoes off: the
    link is dropped after timeout_ms and signed on again (only the echo
    timeout caught it, so with echoes off every payment behind it timed
    out)."""

    def test_a_stalled_frame_drops_the_link(self):
        host = IsoHost()
        self.addCleanup(host.close)
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config=("[processor.acq]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 700\n"
                        "echo_interval_ms = 0\nhealth_interval_ms = 0\n") % (HOST, host.port))
        wait_for(lambda: host.count("0800", "001") >= 1, what="sign-on")
        host.send_raw(b"\x00\xc8" + b"0110" + bytes(6))  # 200 bytes announced, 10 sent
        wait_for(lambda: "a frame stalled" in d.log_text(), timeout=10, what="the stalled frame")
        wait_for(lambda: host.count("0800", "001") >= 2, what="a new sign-on")
        r = d.client("m").post("/v1/payment_intents", {"amount": 1000, "currency": "usd", "confirm": "true",
                                                       "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)


class TwoLinksOneTerminal(unittest.TestCase):
    """Two links with one terminal id (field 41): a host that tells
    duplicates by terminal, STAN and date sees no STAN twice. Both links
    drew from one clock-seeded counter each, so their first STANs were
    equal."""

    def test_stans_are_unique_per_terminal(self):
        hosts = [IsoHost(), IsoHost()]
        daemon = Daemon()
        try:
            daemon.create_merchant("m")
            daemon.start(config="".join(
                "[processor.acq%d]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 2000\n"
                "terminal_id = TERM0007\necho_interval_ms = 100\nhealth_interval_ms = 0\n\n" % (i, HOST, h.port)
                for i, h in enumerate(hosts)) + "[route.all]\nmerchant = *\nprocessors = acq0,acq1\n"
                "split = acq0:50,acq1:50\n")
            wait_for(lambda: all(h.count("0800", "001") >= 1 for h in hosts), what="sign-on of both links")
            for _ in range(16):
                r = daemon.client("m").post("/v1/payment_intents", {
                    "amount": 1000, "currency": "usd", "confirm": "true",
                    "payment_method_data": card(PAN_OK)}, idem=new_key())
                self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
            wait_for(lambda: all(h.count("0800", "301") >= 3 for h in hosts), what="echoes on both links")
            stans = []
            for h in hosts:
                with h.lock:
                    stans += [f[11] for m, f in h.seen]
            self.assertGreater(min(h.count("0200") for h in hosts), 0, "the split used one link only")
            dup = sorted({s for s in stans if stans.count(s) > 1})
            self.assertEqual(dup, [], "STANs sent twice by terminal TERM0007")
        finally:
            daemon.cleanup()
            for h in hosts:
                h.close()


class StansAfterARestart(unittest.TestCase):
    """A restart does not hand out the STANs the last process sent: the
    sequence started at eleven a second since midnight, so a terminal that
    had sent faster than that since its start (any burst) reused them, and
    a host that tells duplicates by terminal, STAN and date declined the
    payments (94) after the restart. The mark is kept on disk."""

    def test_no_stan_twice_across_a_restart(self):
        host = IsoHost()
        daemon = Daemon()
        conf = ("[processor.acq]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 2000\n"
                "terminal_id = TERM/009\necho_interval_ms = 10\nhealth_interval_ms = 0\n" % (HOST, host.port))
        try:
            daemon.create_merchant("m")
            stans = []
            for run in range(2):
                daemon.start(config=conf)
                # echoes every 10 ms: ~100 STANs a second, far past eleven
                wait_for(lambda: host.count("0800", "301") >= 60 * (run + 1), what="echoes")
                for _ in range(3):
                    r = daemon.client("m").post("/v1/payment_intents", {
                        "amount": 1000, "currency": "usd", "confirm": "true",
                        "payment_method_data": card(PAN_OK)}, idem=new_key())
                    self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
                daemon.stop()
            with host.lock:
                stans = [f[11] for m, f in host.seen]
            dup = sorted({s for s in stans if stans.count(s) > 1})
            self.assertEqual(dup, [], "STANs sent twice by terminal TERM/009 across a restart")
            marks = [n for n in os.listdir(daemon.data) if n.startswith("iso-stan-")]
            self.assertEqual(marks, ["iso-stan-5445524d2f303039"], marks)  # the id hex-encoded (it may hold '/')
        finally:
            daemon.cleanup()
            host.close()


class RecoveryAsksA25Again(unittest.TestCase):
    """kill -9 while an authorization is at the host, unanswered. After the
    restart recovery reverses it; the host, whose issuer still has the
    sale, answers 25 and approves the sale a moment later. Recovery
    believed the first 25 and closed the attempt, with the sale standing at
    the host (review, session 41); it asks again at its next tick."""

    def test_recovery_reverses_again_after_a_first_25(self):
        host = IsoHost()
        daemon = Daemon()
        conf = ("[processor.acq]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 3000\n"
                "terminal_id = TERM0043\necho_interval_ms = 60000\nhealth_interval_ms = 0\n"
                "[routing]\nrecovery_interval_ms = 500\nstartup_settle_ms = 0\n" % (HOST, host.port))
        try:
            daemon.create_merchant("m")
            daemon.start(config=conf)
            with host.lock:
                host.hold = 1
            t = threading.Thread(target=lambda: daemon.client("m").post("/v1/payment_intents", {
                "amount": 1000, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)},
                idem=new_key()))
            t.daemon = True
            t.start()
            wait_for(lambda: host.count("0200") >= 1, what="the sale at the host")
            daemon.kill9()
            t.join(10)
            with host.lock:
                held = [f for m, f in host.seen if m == "0200"][0]
                host.unlocated_first = 1  # the first reversal: 25, then the sale is approved
                host.late_s = 0.3
            daemon.start(config=conf)
            wait_for(lambda: host.late_at is not None, what="the late approval")

            def reversed_after():
                with host.lock:
                    return [f for m, f in host.seen[host.late_at:] if m in ("0400", "0401") and
                            f.get(37) == held[37]]
            wait_for(reversed_after, timeout=20, what="recovery's reversal after the first 25")
            self.assertEqual(host.errors, [])
        finally:
            daemon.cleanup()
            host.close()


class WithSimulator(unittest.TestCase):
    """The connector against the real `turnpike sim` ISO host (written by
    another hand from the same docs): payments, declines, a void by
    reversal, and the sim journal shows every charge once."""

    @classmethod
    def setUpClass(cls):
        from test_sim import Sim
        cls.sim = Sim(config="[sim.acqsim]\nprotocol = iso\n").start()
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(config=(
                "[processor.acqsim]\ntype = iso8583\nendpoint = %s:%d\ntimeout_ms = 2000\n"
                "terminal_id = TERM0007\nmerchant_id = MERCHANT0000007\n") % cls.sim.iso)
        except Exception:
            cls.daemon.cleanup()
            cls.sim.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        cls.sim.stop()

    def test_payments_declines_and_void_through_the_sim(self):
        c = self.daemon.client("m")
        ok = c.post("/v1/payment_intents", {"amount": 2500, "currency": "eur", "confirm": "true",
                                            "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(ok.json["status"], "succeeded", ok)
        bad = c.post("/v1/payment_intents", {"amount": 2500, "currency": "usd", "confirm": "true",
                                             "payment_method_data": card(PAN_INSUFFICIENT)}, idem=new_key())
        self.assertEqual(bad.status, 402, bad)
        self.assertEqual(bad.json["error"]["decline_code"], "insufficient_funds", bad)
        held = c.post("/v1/payment_intents", {"amount": 700, "currency": "usd", "confirm": "true",
                                              "capture_method": "manual",
                                              "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual(held.json["status"], "requires_capture", held)
        cancel = c.post("/v1/payment_intents/%s/cancel" % held.json["id"], {}, idem=new_key())
        self.assertEqual(cancel.status, 200, cancel)
        self.assertEqual(cancel.json["status"], "canceled", cancel)
        j = self.sim.journal(processor="acqsim")
        ops = [e["operation"] for e in j["entries"]]
        self.assertEqual(ops.count("authorize"), 3, j)
        self.assertEqual(ops.count("reversal"), 1, j)
        self.assertEqual(j["summary"]["double_charges"], 0, j)
        # (which, ISO 8583 having no payment id, counts RRNs: each
        # PaymentIntent's own attempts are mapped to the journal's charges)
        charged = j["summary"]["charges_by_payment"]
        for pi, want in ((ok.json["id"], 1), (bad.json["error"]["payment_intent"]["id"], 0),
                         (held.json["id"], 0)):
            rrns = {a["processor_reference"] for a in c.get("/v1/payment_intents/%s/attempts" % pi).json["data"]
                    if a["processor_reference"]}
            self.assertEqual(sum(charged.get(r, 0) for r in rrns), want, (pi, rrns, charged))
        self.assertNotIn("runtime error", self.daemon.log_text())

    # Named to run after the test above, which counts the sim's authorizations.
    def test_refunds_after_manual_capture_through_the_sim(self):
        c = self.daemon.client("m")
        held = c.post("/v1/payment_intents", {"amount": 5000, "currency": "usd", "confirm": "true",
                                              "capture_method": "manual",
                                              "payment_method_data": card(PAN_OK)}, idem=new_key())
        self.assertEqual(held.json["status"], "requires_capture", held)
        cap = c.post("/v1/payment_intents/%s/capture" % held.json["id"], {"amount_to_capture": 4000},
                     idem=new_key())
        self.assertEqual(cap.status, 200, cap)
        self.assertEqual((cap.json["status"], cap.json["amount_received"]), ("succeeded", 4000), cap)
        rf1 = c.post("/v1/refunds", {"payment_intent": held.json["id"], "amount": 1500}, idem=new_key())
        self.assertEqual((rf1.status, rf1.json.get("status")), (200, "succeeded"), rf1)
        rf2 = c.post("/v1/refunds", {"payment_intent": held.json["id"]}, idem=new_key())
        self.assertEqual((rf2.status, rf2.json.get("status"), rf2.json.get("amount")), (200, "succeeded", 2500), rf2)
        # The sim saw one authorization, its capture and both refunds, linked by RRN.
        entries = self.sim.journal(processor="acqsim")["entries"]
        caps = [e for e in entries if e["operation"] == "capture"]
        self.assertEqual([(e["amount"], e["status"], e["terminal"]) for e in caps],
                         [(4000, "captured", "TERM0007")], entries)
        auth_rrn = caps[0]["authorization"]
        j = self.sim.journal(processor="acqsim", payment=auth_rrn)
        self.assertEqual([(e["operation"], e["amount"], e["status"]) for e in j["entries"]],
                         [("authorize", 5000, "approved"), ("capture", 4000, "captured"),
                          ("refund", 1500, "succeeded"), ("refund", 2500, "succeeded")], j)
        self.assertEqual(j["summary"]["charges_by_payment"], {auth_rrn: 1}, j)
        self.assertEqual(self.sim.journal(processor="acqsim")["summary"]["double_charges"], 0)
        self.assertNotIn("runtime error", self.daemon.log_text())


if __name__ == "__main__":
    harness.main()
