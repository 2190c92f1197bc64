"""SIGTERM under load: requests already sent get their replies, the process
exits 0 within 10 s, and every acknowledged payment is there after restart."""
import signal
import subprocess
import sys
import time

from harness import DaemonTestCase, PaymentLoad, main

PI = "/v1/payment_intents"


class GracefulShutdownTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(self):
        if self.daemon.proc is None:
            self.daemon.start()
        c = self.c()
        load = PaymentLoad(c, threads=8, seconds=6.0, tag="term").start()
        time.sleep(2.0)
        proc = self.daemon.proc
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        exit_s = time.monotonic() - t_term
        if rc is None:
            self.daemon.kill9()
        else:
            self.daemon.proc = None
        load.stop_flag.set()
        self.assertTrue(load.join(60), "load threads hung")
        with load.lock:
            acks = list(load.acks)
            broken = list(load.sent_then_broken)
            other = list(load.other)
        before = [b for b in broken if b[3] < t_term]
        print("acknowledged %d, other replies %d (%s), broken after send %d (%d sent before SIGTERM), "
              "exit %s after %.2f s" % (len(acks), len(other), sorted({o[2].status for o in other}),
                                        len(broken), len(before), rc, exit_s), file=sys.stderr)
        self.assertIsNotNone(rc, "daemon still running 10 s after SIGTERM")
        self.assertEqual(rc, 0, "exit status after SIGTERM\n" + self.daemon.log_tail())
        self.assertGreater(len(acks), 0)
        self.assertEqual([(b[0], repr(b[2])) for b in before][:10], [],
                         "requests sent before SIGTERM got no reply")
        # replies during shutdown are acknowledgements or a clean 503
        self.assertEqual([o[2] for o in other if o[2].status != 503][:10], [])

        self.daemon.start()
        c = self.c()
        missing = []
        for a in acks:
            want = a.pi()
            r = c.get(PI + "/" + want["id"])
            if r.status != 200:
                missing.append((want["id"], r.status))
                continue
            for f in ("status", "amount", "amount_received", "amount_capturable"):
                if r.json.get(f) != want.get(f):
                    missing.append((want["id"], f, want.get(f), r.json.get(f)))
        self.assertEqual(missing[:20], [], "%d acknowledged payments lost or changed" % len(missing))

    def test_sigterm_when_idle_exits_0_quickly(self):
        if self.daemon.proc is None:
            self.daemon.start()
        t = time.monotonic()
        rc = self.daemon.stop(timeout=10)
        self.assertEqual(rc, 0, self.daemon.log_tail())
        self.assertLess(time.monotonic() - t, 10)
        self.daemon.start()
        self.assertEqual(self.c().get("/healthz", key=None).status, 200)


if __name__ == "__main__":
    main()
