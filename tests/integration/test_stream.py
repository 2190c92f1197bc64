"""Stream limits that need their own daemon settings, spoken at the byte
level: the connection limit answers 429 before any upgrade, the server pings
and closes a client that never answers (1001), a client that answers stays,
and shutdown closes clients with 1001; and the protocol as RFC 6455 says
(pings, fragments, the close handshake, invalid UTF-8, unmasked frames)."""
import base64
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
"""


class RawWS:
    """A minimal RFC 6455 client: enough to see status codes and frames."""

    def __init__(self, port, key):
        self.sock = socket.create_connection((HOST, port), timeout=5)
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
            body = c.buf
            while not body.endswith(b"}}"):
                d = c.sock.recv(4096)
                if not d:
                    break
                body += d
            self.assertIn(b'"tp_code":2030', body)  # websocket_connection_limit
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


if __name__ == "__main__":
    main()
