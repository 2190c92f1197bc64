"""Store-and-forward reversals: a timed-out ISO 8583 authorization is
reversed until the host acknowledges it, durably (docs/iso8583.md
"Timeouts and reversals").

Against the independent Python host of test_iso_link, taught to never
answer authorizations and to refuse (0410 39=96) or ignore reversals until
the test lets it accept:
- the payment cascades to a second processor (in-process sandbox) and
  succeeds; the timed-out attempt is `reversal_pending` (API, processors
  view, gauge) while the host refuses, after the connector's own 0401
  repeats have given up; once the host accepts, recovery's reversal (field
  37 = the original RRN) turns the attempt `reversed`;
- kill -9 while the reversal is owed: the restarted gateway sends it again
  (on a new connection to the host) and the attempt ends `reversed`.
"""
import time
import unittest

import harness
from harness import HOST, PAN_OK, Client, Daemon, card, new_key
from test_iso_link import IsoHost, unpack, wait_for

WAIT_S = 20.0


class RefusingHost(IsoHost):
    """Never answers 0100/0200 (while `silent`); answers reversals as
    `rev_mode` says: "refuse" (39=96), "ignore" (no answer) or "accept"
    (00 for an RRN it saw, 25 otherwise). Every message is recorded with
    the number of the connection it came on."""

    def __init__(self):
        self.rev_mode = "refuse"
        self.silent = True
        self.by_conn = []  # (connection number, mti, fields)
        super().__init__()

    def handle(self, c, body):
        try:
            mti, f = unpack(body)
        except ValueError as e:
            with self.lock:
                self.errors.append(str(e))
            return
        with self.lock:
            self.seen.append((mti, f))
            self.by_conn.append((self.connections, mti, f))
            mode, silent = self.rev_mode, self.silent
            auth_rrns = {g.get(37) for m, g in self.seen if m in ("0100", "0200")}
        if mti == "0800":
            self.reply(c, "0810", f, "00")
        elif mti in ("0100", "0200"):
            if not silent:
                self.reply(c, mti[:2] + "10", f, "00")
        elif mti in ("0400", "0401"):
            if mode == "refuse":
                self.reply(c, "0410", f, "96")
            elif mode == "accept":
                self.reply(c, "0410", f, "00" if f.get(37) in auth_rrns else "25")

    def reversals(self, rrn, min_conn=0):
        with self.lock:
            return [(n, m, f) for n, m, f in self.by_conn
                    if m in ("0400", "0401") and f.get(37) == rrn and n >= min_conn]

    def auths(self):
        with self.lock:
            return [f for m, f in self.seen if m in ("0100", "0200")]


def config(port):
    return "\n".join([
        "[routing]", "deadline_ms = 8000", "recovery_interval_ms = 300", "backoff_base_ms = 20",
        "max_retries = 0", "reversal_backoff_max_ms = 600", "",
        "[processor.acq]", "type = iso8583", "endpoint = %s:%d" % (HOST, port), "timeout_ms = 500",
        "reversal_tries = 2", "echo_interval_ms = 200", "health_interval_ms = 0", "priority = 1",
        "breaker_consecutive = 50", "",
        "[processor.backup]", "type = sandbox", "priority = 2", "health_interval_ms = 0", "",
        "[route.all]", "merchant = *", "processors = acq,backup", "strategy = ordered", ""])


class ReversalBase(unittest.TestCase):
    def setUp(self):
        self.host = RefusingHost()
        self.daemon = Daemon()
        self.daemon.create_merchant("m")
        try:
            self.start()
        except Exception:
            self.daemon.cleanup()
            self.host.close()
            raise

    def tearDown(self):
        self.daemon.cleanup()
        self.host.close()

    def start(self):
        self.daemon.start(config=config(self.host.port))
        signons = self.host.count("0800", "001")
        wait_for(lambda: self.host.count("0800", "001") >= max(signons, 1) and self.link_up(),
                 timeout=WAIT_S, what="sign-on")

    def link_up(self):
        for p in self.daemon.client("m").get("/v1/turnpike/processors").json["data"]:
            if p["name"] == "acq":
                return p.get("link", {}).get("signed_on")
        return False

    def proc_view(self):
        for p in self.daemon.client("m").get("/v1/turnpike/processors").json["data"]:
            if p["name"] == "acq":
                return p
        self.fail("processor acq not listed")

    def attempts(self, pi_id):
        r = self.daemon.client("m").get("/v1/payment_intents/%s/attempts" % pi_id)
        self.assertEqual(r.status, 200, r)
        return r.json["data"]

    def iso_attempt(self, pi_id):
        atts = [a for a in self.attempts(pi_id) if a["processor"] == "acq"]
        self.assertEqual(len(atts), 1, atts)
        return atts[0]

    def pay_cascading(self):
        """A payment whose ISO authorization is never answered: it succeeds
        on the sandbox, the ISO attempt is owed a reversal."""
        r = self.daemon.client("m").post(
            "/v1/payment_intents",
            {"amount": 4321, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)},
            idem=new_key("rev"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)
        pi = r.json
        atts = self.attempts(pi["id"])
        self.assertEqual([(a["processor"], a["state"]) for a in atts],
                         [("acq", "reversal_pending"), ("backup", "succeeded")], atts)
        self.assertEqual(atts[0]["result_code"], "processor_timeout", atts)
        auths = self.host.auths()
        self.assertEqual(len(auths), 1, auths)
        self.assertEqual(auths[0][4], "000000004321")
        return pi, auths[0][37]

    def metric(self, name, labels):
        body = Client(HOST, self.daemon.port).get("/metrics").body.decode()
        for line in body.splitlines():
            if line.startswith("%s{%s}" % (name, labels)):
                return int(float(line.split()[-1]))
        return None


class ReversalOwed(ReversalBase):
    def test_reversal_repeated_until_acknowledged(self):
        pi, rrn = self.pay_cascading()
        # The connector's fast path (0400, then 0401 up to reversal_tries)
        # gives up; recovery keeps sending it (a fresh 0400 each time).
        wait_for(lambda: "iso_reversal_gave_up" in self.daemon.log_text(), timeout=WAIT_S,
                 what="the connector's repeats to end")
        wait_for(lambda: "reversal_retry" in self.daemon.log_text(), timeout=WAIT_S, what="recovery's reversal")
        n_refused = len(self.host.reversals(rrn))
        wait_for(lambda: len(self.host.reversals(rrn)) >= n_refused + 2, timeout=WAIT_S,
                 what="recovery repeating the refused reversal")
        self.assertEqual(self.iso_attempt(pi["id"])["state"], "reversal_pending")
        wait_for(lambda: self.proc_view().get("reversals_pending") == 1, timeout=WAIT_S,
                 what="the processors view to count it")
        wait_for(lambda: self.metric("turnpike_reversals_pending", 'processor="acq"') == 1, timeout=WAIT_S,
                 what="the gauge")
        self.assertIn('"owner":"recovery"', self.daemon.log_text().replace(" ", ""))
        # No answer at all is handled like a refusal.
        with self.host.lock:
            self.host.rev_mode = "ignore"
        n = len(self.host.reversals(rrn))
        wait_for(lambda: len(self.host.reversals(rrn)) >= n + 2, timeout=WAIT_S, what="reversals while ignored")
        self.assertEqual(self.iso_attempt(pi["id"])["state"], "reversal_pending")
        # The host acknowledges: the attempt is reversed, the payment untouched.
        events_before = self.daemon.client("m").get("/v1/events", {"limit": 100}).json["data"]
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: self.iso_attempt(pi["id"])["state"] == "reversed", timeout=WAIT_S,
                 what="the attempt to be reversed")
        revs = self.host.reversals(rrn)
        self.assertGreaterEqual(len(revs), 5, revs)
        for _, mti, f in revs:
            self.assertEqual(f[37], rrn)
            self.assertEqual(f[4], "000000004321")
        wait_for(lambda: self.proc_view().get("reversals_pending") == 0, timeout=WAIT_S, what="count back to 0")
        wait_for(lambda: self.metric("turnpike_reversals_pending", 'processor="acq"') == 0, timeout=WAIT_S,
                 what="the gauge back to 0")
        # Settled: no more reversals go out.
        n = len(self.host.reversals(rrn))
        time.sleep(1.5)
        self.assertEqual(len(self.host.reversals(rrn)), n)
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual((pi2["status"], pi2["amount_received"]), ("succeeded", 4321), pi2)
        events_after = self.daemon.client("m").get("/v1/events", {"limit": 100}).json["data"]
        self.assertEqual([e["id"] for e in events_after], [e["id"] for e in events_before])
        self.assertEqual(self.host.errors, [])
        log = self.daemon.log_text()
        self.assertIn("reversal_recovered", log)
        self.assertNotIn(PAN_OK, log)
        self.assertNotIn("runtime error", log)


class ReversalSurvivesKill9(ReversalBase):
    def test_reversal_sent_again_after_restart(self):
        pi, rrn = self.pay_cascading()
        wait_for(lambda: len(self.host.reversals(rrn)) >= 1, timeout=WAIT_S, what="the first reversal")
        self.daemon.kill9()
        conns = self.host.connections
        before = len(self.host.reversals(rrn))
        self.start()
        # Still refused: the restarted gateway keeps sending it.
        wait_for(lambda: len(self.host.reversals(rrn, min_conn=conns + 1)) >= 2, timeout=WAIT_S,
                 what="reversals after the restart")
        self.assertEqual(self.iso_attempt(pi["id"])["state"], "reversal_pending")
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: self.iso_attempt(pi["id"])["state"] == "reversed", timeout=WAIT_S,
                 what="the attempt to be reversed after the restart")
        after = self.host.reversals(rrn, min_conn=conns + 1)
        self.assertTrue(after, "no reversal on the new connection")
        self.assertGreater(len(self.host.reversals(rrn)), before)
        self.assertEqual(after[-1][2][37], rrn)
        self.assertEqual(len(self.host.auths()), 1, "the authorization itself was re-sent")
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual(pi2["status"], "succeeded", pi2)
        self.assertEqual(self.host.errors, [])
        self.assertNotIn("runtime error", self.daemon.log_text())


if __name__ == "__main__":
    harness.main()
