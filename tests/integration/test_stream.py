"""Stream limits that need their own daemon settings, spoken at the byte
level: the connection limit answers 429 before any upgrade, the server pings
and closes a client that never answers (1001), a client that answers stays,
and shutdown closes clients with 1001; and the protocol as RFC 6455 says
(pings, fragments, the close handshake, invalid UTF-8, unmasked frames)."""
import base64
import json
import os
import socket
import struct
import threading
import time

from harness import DaemonTestCase, Daemon, HOST, main

CONFIG = """
[stream]
max_connections = 2
ping_interval_ms = 500
[balance]
available_after_seconds = 2
[idempotency]
purge_interval_ms = 100
"""


class RawWS:
    """A minimal RFC 6455 client: enough to see status codes and frames."""

    def __init__(self, port, key, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET6 if ":" in HOST else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connecting, so the window stays that small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((HOST, port))
        k = base64.b64encode(os.urandom(16)).decode()
        req = ("GET /v1/turnpike/stream HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "Authorization: Bearer %s\r\n\r\n" % (HOST, port, k, key))
        self.sock.sendall(req.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            d = self.sock.recv(4096)
            if not d:
                break
            self.buf += d
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.head = head.decode("latin-1")

    def error_body(self):
        """The whole JSON error body of a refused handshake."""
        while not self.buf.endswith(b"}}"):
            d = self.sock.recv(4096)
            if not d:
                break
            self.buf += d
        return self.buf

    def _need(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError
            self.buf += d

    def frame(self):
        """(opcode, payload) of the next frame from the server."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def send(self, opcode, payload, fin=True, masked=True):
        mask = os.urandom(4) if masked else b""
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
        assert len(payload) < 126
        self.sock.sendall(bytes([(0x80 if fin else 0) | opcode, (0x80 if masked else 0) | len(payload)]) + mask +
                          body)

    def until(self, opcode):
        """The payload of the next frame of this opcode (others skipped)."""
        while True:
            op, payload = self.frame()
            if op == opcode:
                return payload

    def close(self):
        self.sock.close()


class StreamLimitsTest(DaemonTestCase):
    MERCHANTS = ("m",)

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        try:
            cls.daemon.create_merchant("m")
            cls.daemon.start(config=CONFIG)
        except Exception:
            cls.daemon.cleanup()
            raise

    def key(self):
        return self.daemon.merchants["m"]["secret_key"]

    def test_connection_limit_answers_429_before_the_upgrade(self):
        # connections of an earlier test may take a moment to be reaped
        # (longer under ThreadSanitizer), and one may go between a and b
        deadline = time.monotonic() + 15
        while True:
            a, b = RawWS(self.daemon.port, self.key()), RawWS(self.daemon.port, self.key())
            if (a.status, b.status) == (101, 101) or time.monotonic() > deadline:
                break
            a.close()
            b.close()
            time.sleep(0.1)
        try:
            self.assertEqual((a.status, b.status), (101, 101))
            self.assertIn("Sec-WebSocket-Accept:", a.head)
            c = RawWS(self.daemon.port, self.key())
            self.assertEqual(c.status, 429, c.head)
            self.assertIn(b'"tp_code":2030', c.error_body())  # websocket_connection_limit
            c.close()
        finally:
            a.close()
            b.close()
        # slots come back once the connections are gone
        deadline = time.monotonic() + 5
        while True:
            d = RawWS(self.daemon.port, self.key())
            d.close()
            if d.status == 101 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(d.status, 101)

    def open_ws(self):
        """A connection once a slot is free (a closed one may take a moment
        to be reaped, longer under ThreadSanitizer)."""
        deadline = time.monotonic() + 15
        while True:
            ws = RawWS(self.daemon.port, self.key())
            if ws.status == 101 or time.monotonic() > deadline:
                self.assertEqual(ws.status, 101, ws.head)
                return ws
            ws.close()
            time.sleep(0.1)

    def close_code(self, ws):
        payload = ws.until(0x8)
        ws.close()
        return struct.unpack(">H", payload[:2])[0]

    def test_the_protocol_as_rfc_6455_says(self):
        """A ping is answered with its payload; a fragmented text message is
        put together; a close is echoed with its code; invalid UTF-8 in a
        text message fails the connection with 1007, an unmasked frame with
        1002, a binary message is refused with 1003."""
        ws = self.open_ws()
        ws.send(0x9, b"are you there")
        self.assertEqual(ws.until(0xA), b"are you there")
        ws.send(0x1, b'{"type":', fin=False)
        ws.send(0x0, b'"nonesuch"}')
        self.assertIn(b'"unknown_type"', ws.until(0x1))
        ws.send(0x8, struct.pack(">H", 1000) + b"bye")
        self.assertEqual(self.close_code(ws), 1000)
        for payload, opcode, masked, code in ((b'{"type":"\xff"}', 0x1, True, 1007),
                                              (b'{"type":"subscribe"}', 0x1, False, 1002),
                                              (b"\x00\x01", 0x2, True, 1003)):
            ws = self.open_ws()
            ws.send(opcode, payload, masked=masked)
            self.assertEqual(self.close_code(ws), code, payload)
        # every close is counted by its code: the client's echoed (1000),
        # wslay's own (1007) and the raw protocol-error one (1002) were not
        m = self.c().get("/metrics", key=None).body.decode()
        for code in (1000, 1002, 1003, 1007):
            self.assertRegex(m, r'turnpike_stream_closed_total\{code="%d"\} [1-9]' % code, code)

    def test_a_client_that_never_pongs_is_closed_and_one_that_does_stays(self):
        mute = RawWS(self.daemon.port, self.key())
        polite = RawWS(self.daemon.port, self.key())
        pongs = []

        def answer():
            """The polite client: answer pings, collect everything else."""
            try:
                while True:
                    op, payload = polite.frame()
                    if op == 0x9:
                        polite.send(0xA, payload)
                        pongs.append(payload)
                    else:
                        pongs.append((op, payload))
            except (OSError, EOFError):
                pass

        th = threading.Thread(target=answer, daemon=True)
        try:
            self.assertEqual((mute.status, polite.status), (101, 101))
            th.start()
            t0 = time.monotonic()
            seen = []
            while True:
                op, payload = mute.frame()
                seen.append(op)
                if op == 0x8:
                    break
                self.assertLess(time.monotonic() - t0, 5, seen)
            self.assertIn(0x9, seen, "no ping before the close")
            code = struct.unpack(">H", payload[:2])[0]
            self.assertEqual(code, 1001)
            self.assertIn(b"ping timeout", payload)
            time.sleep(1.6)  # three more ping intervals
            self.assertGreaterEqual(sum(1 for p in pongs if isinstance(p, bytes)), 3)
            self.assertFalse([p for p in pongs if not isinstance(p, bytes)], "polite client got a non-ping frame")
            polite.send(0x1, b'{"type":"subscribe","events":["*"]}')
            deadline = time.monotonic() + 5
            while not [p for p in pongs if not isinstance(p, bytes)] and time.monotonic() < deadline:
                time.sleep(0.05)
            op, payload = [p for p in pongs if not isinstance(p, bytes)][0]
            self.assertEqual(op, 0x1)
            self.assertIn(b'"subscribed"', payload)
        finally:
            mute.close()
            polite.sock.shutdown(socket.SHUT_RDWR)
            polite.close()
            th.join(5)



BOUNDS = """
[stream]
send_buffer_bytes = 16384
replay_max = 40
ping_interval_ms = 60000
token_ttl_s = 5
[balance]
available_after_seconds = 2
[idempotency]
purge_interval_ms = 100
"""


class StreamOverflowTest(DaemonTestCase):
    """The event queue overflows (events committed faster than the stream
    thread hands them out, queue_max = 16): every client gets the 1013
    close frame and may resume. A client that sent nothing had its close
    sit unsent until the 2 s close deadline, and saw only the connection
    end (1006), by then often past replay_max."""
    MERCHANTS = ("m",)

    @classmethod
    def config(cls):
        return "[stream]\nqueue_max = 16\nping_interval_ms = 60000\n[store]\ncommit_sync = pipelined\n"

    def test_an_overflow_closes_every_client_with_1013(self):
        key = self.daemon.merchants["m"]["secret_key"]
        c = self.c("m")

        def many_cards():
            cus = c.post("/v1/customers", {"name": "many"}).json["id"]
            for _ in range(80):
                pm = c.post("/v1/payment_methods", {"type": "card", "card[number]": "4242424242424242",
                                                    "card[exp_month]": "12", "card[exp_year]": "2034",
                                                    "card[cvc]": "123"}).json["id"]
                self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
            return cus
        customers = [many_cards() for _ in range(3)]
        clients = [RawWS(self.daemon.port, key) for _ in range(6)]
        for ws in clients:
            self.assertEqual(ws.status, 101, ws.head)
            ws.send(0x1, b'{"type":"subscribe","events":["*"]}')
        time.sleep(0.5)  # subscribed
        # one commit of 81 events (a customer deleted with its 80 cards
        # detached) comes faster than the stream thread hands them to six
        # clients; should it not, once more
        for cus in customers:
            self.assertEqual(c.delete("/v1/customers/" + cus).status, 200)
            deadline = time.monotonic() + 3
            while "stream_queue_overflow" not in self.daemon.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            if "stream_queue_overflow" in self.daemon.log_text():
                break
        self.assertTrue("stream_queue_overflow" in self.daemon.log_text(), "the queue did not overflow")
        for ws in clients:
            ws.sock.settimeout(10)
            payload = ws.until(0x8)  # EOFError here: the connection ended with no close frame
            self.assertEqual(struct.unpack(">H", payload[:2])[0], 1013, payload)
            ws.close()


class AccountStreamLimitTest(DaemonTestCase):
    """[stream] max_connections_per_account: one account cannot take every
    stream slot of the gateway (before, one merchant could hold all
    max_connections and every other account was answered 429)."""
    MERCHANTS = ("a", "b")

    @classmethod
    def config(cls):
        return "[stream]\nmax_connections = 4\nmax_connections_per_account = 2\n"

    def open_all(self, merchant, n, want):
        key = self.daemon.merchants[merchant]["secret_key"]
        got = []
        for _ in range(n):
            got.append(RawWS(self.daemon.port, key))
        self.assertEqual([w.status for w in got], want, [w.head for w in got])
        return got

    def test_one_account_takes_at_most_its_share(self):
        a = self.open_all("a", 3, [101, 101, 429])
        body = a[2].error_body()
        self.assertIn(b'"tp_code":2036', body)  # websocket_account_connection_limit
        self.assertIn(b'"code":"rate_limit"', body)
        a[2].close()
        # the other account still gets its two
        b = self.open_all("b", 2, [101, 101])
        # the gateway is full now (4): the gateway's limit answers
        c = self.open_all("b", 1, [429])
        self.assertIn(b'"tp_code":2030', c[0].error_body())
        c[0].close()
        # a closed stream gives its account's slot back
        a[0].close()
        deadline = time.monotonic() + 15
        while True:
            again = RawWS(self.daemon.port, self.daemon.merchants["a"]["secret_key"])
            if again.status == 101 or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.1)
        self.assertEqual(again.status, 101, again.head)
        for w in [again, a[1]] + b:
            w.close()


class AbortedHandshakeTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def test_handshakes_the_client_abandons_leak_nothing(self):
        """Upgrades whose client resets the connection before the 101 is
        written: the handshake record (with its copy of the key) was never
        freed, a leak LeakSanitizer reports at exit."""
        key = self.daemon.merchants["m"]["secret_key"]
        req = ("GET /v1/turnpike/stream HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
               % (HOST, self.daemon.port, key)).encode()
        for i in range(300):
            s = socket.create_connection((HOST, self.daemon.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(req)
            time.sleep((i % 7) / 2000)  # a reset, at once or while the request is served
            s.close()
        ws = RawWS(self.daemon.port, key)  # the slots came back
        self.assertEqual(ws.status, 101, ws.head)
        ws.close()
        rc = self.daemon.stop()
        log = self.daemon.log_text()
        self.daemon.start(config=self.config())
        for marker in ("LeakSanitizer", "AddressSanitizer", "runtime error:"):
            at = log.find(marker)
            self.assertEqual(at, -1, log[at:at + 2000])
        self.assertEqual(rc, 0)


class StreamBoundsTest(DaemonTestCase):
    """A client's queue bound (send_buffer_bytes) against what the server
    queues: a resume larger than the bound is sent as the client reads it; a
    resume past replay_max says so before the close; a client whose own
    messages fill its queue is not read any further; and the handshake,
    scopes and protocol errors as RFC 6455 and the REST API have them."""
    MERCHANTS = ("m", "n")

    @classmethod
    def config(cls):
        return BOUNDS

    def key(self):
        return self.daemon.merchants["m"]["secret_key"]

    def ws(self, key=None):
        deadline = time.monotonic() + 15
        while True:
            ws = RawWS(self.daemon.port, key or self.key())
            if ws.status != 429 or time.monotonic() > deadline:
                return ws
            ws.close()
            time.sleep(0.1)

    def last_event_id(self):
        r = self.c("m").get("/v1/events", {"limit": 1})
        self.assertEqual(r.status, 200, r)
        return r.json["data"][0]["id"]

    def subscribe(self, ws, last_id, events=("*",)):
        ws.send(0x1, json.dumps({"type": "subscribe", "events": list(events), "last_event_id": last_id}).encode())

    def test_a_resume_counts_only_the_events_it_subscribes_to(self):
        """A subscriber to a few types resumes from the last event it got,
        of its own type, however many of other types came since: all were
        counted against replay_max, so such a client was refused every
        reconnect on a busy account (review, session 41)."""
        c = self.c("m")
        self.assertEqual(c.post("/v1/customers", {"name": "rare"}).status, 200)
        since = self.last_event_id()
        for i in range(45):  # 45 payment_intent.created, past replay_max (40)
            self.assertEqual(c.post("/v1/payment_intents", {"amount": 500, "currency": "usd"}).status, 200)
        want = [c.post("/v1/customers", {"name": "rare %d" % i}).json["id"] for i in range(3)]
        ws = self.ws()
        try:
            self.subscribe(ws, since, ("customer.*", "charge.dispute.created"))
            got = []
            while len(got) < 3:
                op, payload = ws.frame()
                self.assertNotEqual(op, 0x8, payload)
                msg = json.loads(payload)
                self.assertNotEqual(msg.get("type"), "error", msg)
                if msg.get("type") == "event":
                    self.assertEqual(msg["event"]["type"], "customer.created", msg)
                    got.append(msg["event"]["data"]["object"]["id"])
            self.assertEqual(got, want)
        finally:
            ws.close()

    def test_a_resume_of_large_events_holds_no_more_than_the_bound(self):
        """A resuming client that does not read: the pages it is sent stop at
        the send buffer's bound in bytes (a page of up to 100 of the largest
        events, ~27 KB each, was queued whole: many bounds per connection); read
        afterwards, every event comes, in order."""
        c = self.c("m")
        self.assertEqual(c.post("/v1/customers", {"name": "big"}).status, 200)
        since = self.last_event_id()
        md = {"metadata[k%02d]" % i: "v" * 500 for i in range(50)}
        made = []
        for i in range(35):  # under replay_max (40), each event past the bound (16 KB)
            r = c.post("/v1/customers", dict(md, description="d" * 1000))
            self.assertEqual(r.status, 200, r)
            made.append(r.json["id"])

        def replayed():
            m = self.c("m").get("/metrics", key=None).body.decode()
            return sum(float(l.split()[-1]) for l in m.splitlines()
                       if l.startswith("turnpike_stream_replayed_events_total"))
        before = replayed()
        ws = RawWS(self.daemon.port, self.key(), rcvbuf=4096)
        try:
            self.assertEqual(ws.status, 101, ws.head)
            self.subscribe(ws, since)
            time.sleep(2.0)  # not reading
            queued = replayed() - before
            # the bound, the kernel's buffers (~70 KB), one event over
            self.assertLess(queued, 12, "a page past the bound was queued")
            got = []
            ws.sock.settimeout(10)
            while len(got) < len(made):
                op, payload = ws.frame()
                self.assertNotEqual(op, 0x8, payload)
                if op == 0x1:
                    ev = json.loads(payload).get("event")
                    if ev:
                        got.append(ev["data"]["object"]["id"])
            self.assertEqual(got, made)
        finally:
            ws.close()

    def test_a_resume_larger_than_the_queue_bound_is_sent_as_the_client_reads(self):
        c = self.c("m")
        self.assertEqual(c.post("/v1/customers", {"name": "mark"}).status, 200)
        since = self.last_event_id()
        made = []
        for i in range(30):  # ~1.2 KB each: twice the bound in all
            r = c.post("/v1/payment_intents", {"amount": 1000 + i, "currency": "usd",
                                               "description": "x" * 200})
            self.assertEqual(r.status, 200, r)
            made.append(r.json["id"])
        ws = self.ws()
        try:
            self.assertEqual(ws.status, 101, ws.head)
            self.subscribe(ws, since)
            self.assertIn(b'"subscribed"', ws.until(0x1))
            got = []
            while len(got) < 30:
                op, payload = ws.frame()
                self.assertNotEqual(op, 0x8, payload)  # not closed as a slow client
                if op == 0x1:
                    got.append(json.loads(payload)["event"]["data"]["object"]["id"])
            self.assertEqual(got, made)
            # and live from there on, nothing twice
            r = c.post("/v1/payment_intents", {"amount": 999, "currency": "usd"})
            self.assertEqual(json.loads(ws.until(0x1))["event"]["data"]["object"]["id"], r.json["id"])
        finally:
            ws.close()

    def test_a_resume_past_replay_max_says_why_before_it_closes(self):
        c = self.c("m")
        self.assertEqual(c.post("/v1/customers", {"name": "far"}).status, 200)
        since = self.last_event_id()
        for i in range(45):
            self.assertEqual(c.post("/v1/payment_intents", {"amount": 500, "currency": "usd"}).status, 200)
        ws = self.ws()
        try:
            self.subscribe(ws, since)
            texts = []
            while True:
                op, payload = ws.frame()
                if op == 0x8:
                    break
                texts.append(payload)
            self.assertEqual(struct.unpack(">H", payload[:2])[0], 1008)
            self.assertTrue(any(b'"resume_too_far"' in t for t in texts), texts)
        finally:
            ws.close()

    def rss_kb(self):
        with open("/proc/%d/status" % self.daemon.proc.pid) as f:
            return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])

    def test_a_client_that_sends_without_reading_is_not_read_past_its_bound(self):
        """Each 8-byte message gets a ~110-byte error answer: 24 MB of them
        (more than the kernel's socket buffers hold) would queue some 300 MB
        for a client that never reads. The server stops reading once its
        queue passes the bound, so the client's sending stalls and the
        daemon's memory stays put."""
        ws = self.ws()
        try:
            self.assertEqual(ws.status, 101)
            before = self.rss_kb()
            frame = bytes([0x81, 0x82]) + b"\0\0\0\0" + b"{}"
            chunk = frame * 8192
            ws.sock.settimeout(3)
            sent = 0
            try:
                while sent < 24 * 1024 * 1024:
                    ws.sock.sendall(chunk)
                    sent += len(chunk)
            except socket.timeout:
                pass
            time.sleep(0.5)
            grown = self.rss_kb() - before
            self.assertLess(sent, 24 * 1024 * 1024, "the server read everything the client sent")
            self.assertLess(grown, 16 * 1024, "RSS grew %d KB" % grown)
        finally:
            ws.close()

    def test_a_client_flooding_frames_that_need_no_answer_holds_up_no_one(self):
        """Empty pongs queue nothing, so no bound stopped reading them: a
        client sending them without pause held the stream thread, and every
        other client's events waited until it stopped. Each client now gets
        at most 64 KiB a turn of the loop."""
        flooder = RawWS(self.daemon.port, self.key())
        sub = RawWS(self.daemon.port, self.key())
        stop = threading.Event()

        def flood():
            blob = bytes([0x8A, 0x80, 0, 0, 0, 0]) * 8192  # masked empty pongs
            try:
                while not stop.is_set():
                    flooder.sock.sendall(blob)
            except OSError:
                pass
        th = threading.Thread(target=flood, daemon=True)
        try:
            self.assertEqual((flooder.status, sub.status), (101, 101))
            sub.send(0x1, b'{"type":"subscribe","events":["customer.created"]}')
            self.assertIn(b'"subscribed"', sub.until(0x1))
            th.start()
            time.sleep(0.5)
            c = self.c("m")
            for i in range(3):
                made = time.monotonic()
                cus = c.post("/v1/customers", {"email": "flood%d@example.com" % i}).json
                while True:
                    op, payload = sub.frame()
                    if op == 0x9:
                        sub.send(0xA, payload)
                    elif op == 0x1 and cus["id"].encode() in payload:
                        break
                waited = time.monotonic() - made
                self.assertLess(waited, 1.5, "the event waited %.2f s behind the flood" % waited)
        finally:
            stop.set()
            th.join(10)
            flooder.close()
            sub.close()

    def test_handshake_errors_scopes_and_protocol_errors(self):
        # a version other than 13: 426 naming the version and protocol to use
        s = socket.create_connection((HOST, self.daemon.port), timeout=5)
        s.sendall(("GET /v1/turnpike/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 8\r\nAuthorization: Bearer %s\r\n\r\n"
                   % (base64.b64encode(os.urandom(16)).decode(), self.key())).encode())
        head = s.recv(4096).decode("latin-1")
        s.close()
        self.assertTrue(head.startswith("HTTP/1.1 426"), head)
        self.assertIn("Sec-WebSocket-Version: 13", head)
        self.assertRegex(head, "(?i)upgrade: websocket")
        # RFC 9110 7.8: Upgrade goes with the "upgrade" connection option
        self.assertRegex(head, "(?im)^connection:[^\r\n]*\\bupgrade\\b")
        # a key that is not 16 bytes in base64: 400
        s = socket.create_connection((HOST, self.daemon.port), timeout=5)
        s.sendall(("GET /v1/turnpike/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\nSec-WebSocket-Version: 13\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % self.key()).encode())
        head = s.recv(4096).decode("latin-1")
        s.close()
        self.assertTrue(head.startswith("HTTP/1.1 400"), head)
        # a second Sec-WebSocket-Key or -Version (RFC 6455 11.3.1, 11.3.5: not
        # more than once): 400 (the first key's accept was sent, a 101)
        for dup in ("Sec-WebSocket-Key: %s\r\n" % base64.b64encode(os.urandom(16)).decode(),
                    "Sec-WebSocket-Version: 13\r\n"):
            s = socket.create_connection((HOST, self.daemon.port), timeout=5)
            s.sendall(("GET /v1/turnpike/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%sAuthorization: Bearer %s\r\n\r\n"
                       % (base64.b64encode(os.urandom(16)).decode(), dup, self.key())).encode())
            head = s.recv(4096).decode("latin-1")
            s.close()
            self.assertTrue(head.startswith("HTTP/1.1 400"), (dup, head))
        # Basic credentials with an Origin are a browser's kept ones (it can set
        # no Authorization on a WebSocket): refused, so a page elsewhere cannot
        # open the stream with them; Bearer with an Origin, and Basic without,
        # still open it
        def handshake(auth, origin):
            s = socket.create_connection((HOST, self.daemon.port), timeout=5)
            s.sendall(("GET /v1/turnpike/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                       "Authorization: %s\r\n%s\r\n" % (base64.b64encode(os.urandom(16)).decode(), auth,
                                                         "Origin: %s\r\n" % origin if origin else ""))
                      .encode())
            head = s.recv(4096).decode("latin-1")
            s.close()
            return head
        basic = "Basic " + base64.b64encode((self.key() + ":").encode()).decode()
        for origin in ("https://evil.example", "null", "http://x.evil.example"):
            head = handshake(basic, origin)
            self.assertTrue(head.startswith("HTTP/1.1 403"), (origin, head))
            self.assertIn('"tp_code":2035', head)
        self.assertTrue(handshake(basic, None).startswith("HTTP/1.1 101"))
        # the gateway's own origin (Python's websocket-client and Netty send it by default)
        self.assertTrue(handshake(basic, "http://x").startswith("HTTP/1.1 101"))
        self.assertTrue(handshake("Bearer " + self.key(), "https://evil.example").startswith("HTTP/1.1 101"))
        # a restricted key needs the admin scope, as for stream tokens
        from test_access import admin
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                   "payments:read refunds:write")["restricted_key"]
        ws = self.ws(rk)
        ws.close()
        self.assertEqual(ws.status, 403, ws.head)
        # and payments:read, which reads events: admin alone streamed what the key could not list
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                   "admin")["restricted_key"]
        ws = self.ws(rk)
        ws.close()
        self.assertEqual(ws.status, 403, ws.head)
        self.assertIn("payments:read", ws.head + ws.buf.decode("latin-1"))
        rk = admin(self.daemon, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                   "admin payments:read")["restricted_key"]
        ws = self.ws(rk)
        ws.close()
        self.assertEqual(ws.status, 101, ws.head)
        # a stream token opens a stream of everything: minted only by a key that reads everything
        kc = self.daemon.client(None)
        kc.key = rk
        r = kc.post("/v1/turnpike/stream_tokens", {})
        self.assertStripeError(r, 403, "permission_error")
        self.assertIn("reports:read", r.json["error"]["message"])
        # protocol errors the framing layer gives up on still get 1002
        for raw in (bytes([0x89, 0x80 | 126]) + struct.pack(">H", 126) + b"\0\0\0\0" + b"p" * 126,  # ping > 125
                    bytes([0x88, 0x81]) + b"\0\0\0\0" + b"\x03"):  # close with a 1-byte payload
            ws = self.ws()
            self.assertEqual(ws.status, 101)
            ws.sock.sendall(raw)
            self.assertEqual(struct.unpack(">H", ws.until(0x8)[:2])[0], 1002, raw[:2])
            ws.close()

    def thread_cpu_s(self, name):
        import glob
        for d in glob.glob("/proc/%d/task/*" % self.daemon.proc.pid):
            try:
                with open(d + "/comm") as f:
                    if f.read().strip() != name:
                        continue
                with open(d + "/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
        self.fail("no thread " + name)

    def test_a_half_close_past_the_bound_costs_nothing(self):
        """A client past its queue bound (not read any more) that half-closes
        its side: the stream thread waited on a half-close it could not act
        on, at 100% CPU until the ping timeout."""
        ws = RawWS(self.daemon.port, self.key(), rcvbuf=4096)
        try:
            self.assertEqual(ws.status, 101)
            ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125
            # ~210 KB of pongs owed: past the 128 KiB kernel buffer (socket_sndbuf) and the
            # 16 KiB bound, while what the server leaves unread still fits its receive buffer
            ws.sock.sendall(ping * 1600)
            time.sleep(0.5)
            ws.sock.shutdown(socket.SHUT_WR)
            time.sleep(0.5)
            before = self.thread_cpu_s("tp-stream")
            time.sleep(3)
            spent = self.thread_cpu_s("tp-stream") - before
            self.assertLess(spent, 0.5, "the stream thread spent %.2f s of 3" % spent)
        finally:
            ws.close()

    def test_a_framing_error_behind_queued_messages_still_gets_1002(self):
        """A ping over 125 bytes sent right after a subscribe (whose answer
        is queued): the close still says 1002 (it had no status code)."""
        ws = self.ws()
        try:
            self.assertEqual(ws.status, 101)
            ws.sock.sendall(bytes([0x81, 0x80 | 33]) + b"\0\0\0\0" + b'{"type":"subscribe","events":["*"]}'[:33]
                            + bytes([0x89, 0x80 | 126]) + struct.pack(">H", 126) + b"\0\0\0\0" + b"p" * 126)
            self.assertEqual(struct.unpack(">H", ws.until(0x8)[:2])[0], 1002)
        finally:
            ws.close()

    def test_a_last_event_id_after_every_event_resumes_from_now(self):
        """A last_event_id that sorts after every event of the account (a
        Stripe-made id, another account's newer one): said, and the events
        from then on come (every one was skipped for good)."""
        self.assertEqual(self.c("m").post("/v1/customers", {"name": "before"}).status, 200)
        ws = self.ws()
        try:
            self.subscribe(ws, "evt_1NG8Du2eZvKYlo2CUI79vXWy")
            msgs = [json.loads(ws.until(0x1)), json.loads(ws.until(0x1))]
            self.assertEqual(sorted(m["type"] for m in msgs), ["error", "subscribed"], msgs)
            self.assertEqual([m["code"] for m in msgs if m["type"] == "error"], ["invalid_subscription"])
            r = self.c("m").post("/v1/customers", {"name": "after"})
            got = json.loads(ws.until(0x1))
            self.assertEqual(got["event"]["data"]["object"]["id"], r.json["id"], got)
        finally:
            ws.close()

    def resume_on_a_new_account(self, last_event_id, before):
        """A fresh account (no events) subscribed with last_event_id: reads
        the first 1 + before messages ("subscribed" and any error), then a
        customer made there must come as an event. Returns those first
        messages."""
        from harness import Daemon
        d = Daemon()
        try:
            d.create_merchant("q")
            d.start(config=BOUNDS)
            ws = RawWS(d.port, d.merchants["q"]["secret_key"])
            try:
                ws.send(0x1, ('{"type":"subscribe","events":["*"],"last_event_id":"%s"}' % last_event_id).encode())
                first = [json.loads(ws.until(0x1)) for _ in range(1 + before)]
                r = d.client("q").post("/v1/customers", {"name": "first"})
                got = json.loads(ws.until(0x1))
                self.assertEqual((got["type"], got["event"]["data"]["object"]["id"]), ("event", r.json["id"]), got)
                return first
            finally:
                ws.close()
        finally:
            d.cleanup()

    def test_a_resume_of_an_account_without_events_is_quiet(self):
        """An account whose events are all gone (or never were): a resume
        from any id reads what comes, and is not told the id is after
        every event (there is none)."""
        first = self.resume_on_a_new_account("evt_0", 0)
        self.assertEqual(first[0]["type"], "subscribed")

    def test_a_resume_from_a_future_id_on_an_account_without_events_gets_them(self):
        """An account without events, resumed from an id that sorts after
        every one made from now on (a Stripe id, evt_1..., as a client
        moving over keeps): told so, and the events that come are sent.
        Every live event was skipped for good, silently, and a subscribe
        without a cursor did not recover."""
        first = self.resume_on_a_new_account("evt_1NG8Du2eZvKYlo2CUI79vXWy", 1)
        self.assertEqual(sorted(m["type"] for m in first), ["error", "subscribed"], first)
        err = [m for m in first if m["type"] == "error"][0]
        self.assertEqual(err["code"], "invalid_subscription", err)

    def test_an_http_1_0_upgrade_is_refused(self):
        """RFC 6455 4.1: HTTP/1.1 or higher. libmicrohttpd does not upgrade a
        1.0 connection: it was logged 101, closed unanswered, and its
        handshake leaked."""
        s = socket.create_connection((HOST, self.daemon.port), timeout=5)
        s.sendall(("GET /v1/turnpike/stream HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                   % (base64.b64encode(os.urandom(16)).decode(), self.key())).encode())
        head = s.recv(4096).decode("latin-1")
        s.close()
        self.assertTrue(head.startswith("HTTP/1.0 400") or head.startswith("HTTP/1.1 400"), head)

    def test_a_key_without_reports_read_streams_no_balance_events(self):
        """As /v1/events hides balance and payout events from a key without
        reports:read, so does its stream; the secret key's shows them."""
        import json as _json
        import subprocess
        from harness import BIN
        p = subprocess.run([BIN, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                            "admin payments:read", "--data", self.daemon.data], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        rk = _json.loads(p.stdout)["restricted_key"]
        streams = {"rk": RawWS(self.daemon.port, rk), "sk": RawWS(self.daemon.port, self.key())}
        try:
            for ws in streams.values():
                self.assertEqual(ws.status, 101, ws.head)
                ws.send(0x1, b'{"type":"subscribe","events":["*"]}')
                self.assertIn(b'"subscribed"', ws.until(0x1))
            r = self.c("m").post("/v1/payment_intents", {"amount": 1500, "currency": "usd", "confirm": "true",
                                                         "payment_method": "pm_card_visa"})
            self.assertEqual(r.status, 200, r)
            seen = {}
            for name in ("sk", "rk"):  # the secret key's first: once it has seen the balance event, so could the other
                ws = streams[name]
                types = []
                deadline = time.time() + (8 if name == "sk" else 1)
                ws.sock.settimeout(1)
                while time.time() < deadline and (name == "rk" or "balance.available" not in types):
                    try:
                        op, payload = ws.frame()
                    except socket.timeout:
                        continue
                    if op == 0x1:
                        ev = _json.loads(payload).get("event")
                        if ev:
                            types.append(ev["type"])
                seen[name] = types
            self.assertIn("balance.available", seen["sk"], seen)
            self.assertIn("payment_intent.succeeded", seen["rk"], seen)
            self.assertFalse([t for t in seen["rk"] if t.startswith(("balance.", "payout."))], seen)
        finally:
            for ws in streams.values():
                ws.close()

    def test_one_merchant_minting_many_tokens_does_not_push_out_another_s(self):
        """The gateway remembers each live token's key in a bounded table:
        a merchant holds at most 64 of it, so one minting thousands does
        not make another merchant's fresh token unusable."""
        import urllib.parse
        tok = self.c("m").post("/v1/turnpike/stream_tokens", {}).json["token"]
        n = self.c("n")
        for _ in range(1100):
            self.assertEqual(n.post("/v1/turnpike/stream_tokens", {}).status, 200)
        s = socket.create_connection((HOST, self.daemon.port), timeout=10)
        try:
            s.sendall(("GET /v1/turnpike/stream?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                       % (urllib.parse.quote(tok), base64.b64encode(os.urandom(16)).decode())).encode())
            head = s.recv(4096).decode("latin-1")
        finally:
            s.close()
        self.assertTrue(head.startswith("HTTP/1.1 101"), head[:300])

    def test_a_token_stream_closes_when_the_key_that_made_the_token_expires(self):
        """A stream opened with a stream token is checked against the key
        the token was made with: once that key expires, the stream closes
        (1008) and the token opens no more."""
        import json as _json
        import subprocess
        import urllib.parse
        from harness import BIN
        p = subprocess.run([BIN, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                            "admin payments:read reports:read", "--expires-in", "4", "--data", self.daemon.data],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        rk = _json.loads(p.stdout)
        kc = self.daemon.client(None)
        kc.key = rk["restricted_key"]
        r = kc.post("/v1/turnpike/stream_tokens", {})
        self.assertEqual(r.status, 200, r)
        tok = r.json["token"]

        def open_with_token():
            s = socket.create_connection((HOST, self.daemon.port), timeout=15)
            s.sendall(("GET /v1/turnpike/stream?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                       % (urllib.parse.quote(tok), base64.b64encode(os.urandom(16)).decode())).encode())
            return s
        s = open_with_token()
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(4096)
            self.assertTrue(buf.startswith(b"HTTP/1.1 101"), buf[:200])
            rest = buf.partition(b"\r\n\r\n")[2]
            deadline = time.time() + 15
            while b"\x88" not in rest[:1] and time.time() < deadline:
                d = s.recv(4096)
                if not d:
                    break
                rest += d
                # skip whole frames until a close frame heads the buffer
                while len(rest) >= 2 and rest[0] != 0x88:
                    n = rest[1] & 0x7F
                    if len(rest) < 2 + n:
                        break
                    rest = rest[2 + n:]
            self.assertTrue(rest[:1] == b"\x88", rest[:40])
            self.assertEqual(struct.unpack(">H", rest[2:4])[0], 1008)
        finally:
            s.close()
        s = open_with_token()
        try:
            head = s.recv(4096).decode("latin-1")
        finally:
            s.close()
        self.assertTrue(head.startswith("HTTP/1.1 401"), head)

    def test_a_stream_closes_when_the_key_that_opened_it_expires(self):
        """A key that expires (--expires-in, a roll's overlap) fails every
        request; a stream it opened is closed too (1008), within the
        recheck period (5 s), and carries nothing after that."""
        import json as _json
        import subprocess
        from harness import BIN
        p = subprocess.run([BIN, "api-key", "create", "--merchant", self.daemon.merchants["m"]["id"], "--scopes",
                            "admin payments:read", "--expires-in", "3", "--data", self.daemon.data], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        rk = _json.loads(p.stdout)
        ws = RawWS(self.daemon.port, rk["restricted_key"])
        try:
            self.assertEqual(ws.status, 101, ws.head)
            ws.sock.settimeout(15)
            deadline = time.time() + 15
            code = None
            while time.time() < deadline and code is None:
                op, payload = ws.frame()
                if op == 0x8:
                    code = struct.unpack(">H", payload[:2])[0]
            self.assertEqual(code, 1008, "the stream outlived its key")
            self.assertGreaterEqual(time.time() + 0.5, rk["expires_at"])
        finally:
            ws.close()
        # the merchant's own key still streams
        ok = RawWS(self.daemon.port, self.key())
        try:
            self.assertEqual(ok.status, 101, ok.head)
        finally:
            ok.close()

    def test_an_expired_stream_token_is_not_a_failed_login(self):
        """A browser reconnecting with its expired token (its old URL) is told
        so; that is no guess, and does not lock its address out."""
        import urllib.parse
        r = self.c("m").post("/v1/turnpike/stream_tokens", {})
        self.assertEqual(r.status, 200, r)
        tok = r.json["token"]
        time.sleep(max(0.0, r.json["expires_at"] - time.time()) + 1.5)
        for _ in range(40):
            s = socket.create_connection((HOST, self.daemon.port), timeout=5)
            s.sendall(("GET /v1/turnpike/stream?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                       % (urllib.parse.quote(tok), base64.b64encode(os.urandom(16)).decode())).encode())
            head = s.recv(4096).decode("latin-1")
            s.close()
            self.assertTrue(head.startswith("HTTP/1.1 401"), head)
            self.assertIn("Expired", head)
        self.assertEqual(self.c("m").get("/v1/customers", {"limit": 1}).status, 200)


if __name__ == "__main__":
    main()
