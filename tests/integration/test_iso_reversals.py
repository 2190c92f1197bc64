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
  (on a new connection to the host) and the attempt ends `reversed`;
- the same for a timed-out capture (0220 of a manual-capture payment) and
  refund (0200, processing code 20) the host ignores: the merchant is told
  it did not happen (402 / refund `failed`), the capture or refund attempt
  is `reversal_pending`, every reversal names that message (field 37 = its
  RRN, field 90 its MTI, field 3 its processing code), never the
  authorization; `reversed` once accepted, with no event and the objects
  untouched, after which the merchant's repeat succeeds; and the capture's
  reversal survives a kill -9.
"""
import socket
import threading
import time
import unittest

import harness
from harness import HOST, PAN_OK, Client, Daemon, card, new_key
from test_iso_link import IsoHost, unpack, wait_for

WAIT_S = 20.0


class RefusingHost(IsoHost):
    """Never answers 0100/0200 (while `silent`); never answers a capture
    advice (0220) or a refund (0200, processing code 20) while `ignore_linked`;
    answers reversals as `rev_mode` says: "refuse" (39=96), "ignore" (no
    answer) or "accept": 00 when field 37 and field 90 (MTI, STAN, field 7)
    name a message it took, 25 ("unable to locate") otherwise, as a host
    that finds the original by field 90 does; `undone` holds the RRNs so
    reversed. Every message is recorded with the number of the connection
    it came on."""

    def __init__(self):
        self.rev_mode = "refuse"
        self.silent = True
        self.ignore_linked = True
        self.by_conn = []  # (connection number, mti, fields)
        self.undone = set()
        self.signon_delay = 0.0  # seconds the 0810 of a sign-on waits
        self.slow_s = 0.8  # how late "slow" answers reversals
        self.send_lock = threading.Lock()  # a late answer is sent from a timer thread
        super().__init__()

    def reply(self, c, mti, q, f39):
        with self.send_lock:
            super().reply(c, mti, q, f39)

    def late_reply(self, c, mti, q, f39):
        try:
            self.reply(c, mti, q, f39)
        except OSError:  # the connection (or the test) ended meanwhile
            pass

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
            mode, silent, ignore_linked = self.rev_mode, self.silent, self.ignore_linked
            originals = {(g.get(37), m + g.get(11, "") + g.get(7, "")) for m, g in self.seen
                         if m in ("0100", "0200", "0220")}
        refund = mti == "0200" and f.get(3) == "200000"
        if mti == "0800":
            if f.get(70) == "001" and self.signon_delay:
                time.sleep(self.signon_delay)
            self.reply(c, "0810", f, "00")
        elif refund or mti == "0220":
            if not ignore_linked:
                self.reply(c, mti[:2] + ("30" if mti == "0220" else "10"), f, "00")
        elif mti in ("0100", "0200"):
            if not silent:
                self.reply(c, mti[:2] + "10", f, "00")
        elif mti in ("0400", "0401"):
            if mode == "refuse":
                self.reply(c, "0410", f, "96")
            elif mode in ("accept", "slow"):
                found = (f.get(37), f.get(90, "")[:20]) in originals
                if found:
                    with self.lock:
                        self.undone.add(f.get(37))
                if mode == "slow":  # acknowledged, past the gateway's timeout
                    threading.Timer(self.slow_s, self.late_reply, (c, "0410", f, "00" if found else "25")).start()
                else:
                    self.reply(c, "0410", f, "00" if found else "25")

    def reversals(self, rrn, min_conn=0):
        with self.lock:
            return [(n, m, f) for n, m, f in self.by_conn
                    if m in ("0400", "0401") and f.get(37) == rrn and n >= min_conn]

    def original(self, rrn):
        """The fields of the authorization, capture or refund with this RRN."""
        with self.lock:
            got = [f for m, f in self.seen if m in ("0100", "0200", "0220") and f.get(37) == rrn]
        assert len(got) == 1, got
        return got[0]

    def auths(self):
        with self.lock:
            return [f for m, f in self.seen if m in ("0100", "0200") and f.get(3) != "200000"]

    def linked(self, mti):
        """Captures ("0220") or refunds ("0200" with processing code 20)."""
        with self.lock:
            return [f for m, f in self.seen if m == mti and (mti != "0200" or f.get(3) == "200000")]


def config(port, timeout_ms=500):
    return "\n".join([
        "[routing]", "deadline_ms = 8000", "recovery_interval_ms = 300", "backoff_base_ms = 20",
        "max_retries = 0", "reversal_backoff_max_ms = 600", "",
        "[processor.acq]", "type = iso8583", "endpoint = %s:%d" % (HOST, port), "timeout_ms = %d" % timeout_ms,
        "reversal_tries = 2", "echo_interval_ms = 200", "health_interval_ms = 0", "priority = 1",
        "breaker_consecutive = 50", "",
        "[processor.backup]", "type = sandbox", "priority = 2", "health_interval_ms = 0", "",
        "[route.all]", "merchant = *", "processors = acq,backup", "strategy = ordered", ""])


class ReversalBase(unittest.TestCase):
    HOST = RefusingHost  # the host class a test runs against
    TIMEOUT_MS = 500  # the ISO link's answer timeout

    def setUp(self):
        self.host = self.HOST()
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
        self.daemon.start(config=config(self.host.port, self.TIMEOUT_MS))
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
        orig = self.host.original(rrn)
        for _, mti, f in revs:
            self.assertEqual(f[37], rrn)
            self.assertEqual(f[4], "000000004321")
            # the connector's and recovery's alike name the original whole
            self.assertEqual(f[90][4:20], orig[11] + orig[7], f)
        self.assertIn(rrn, self.host.undone, "the host did not find the original the reversal names")
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


class ReversalSettledByOperator(ReversalBase):
    def test_operator_settles_an_owed_reversal(self):
        """The host never acknowledges the reversal; the operator learns
        from the acquirer that the authorization was not acted on and says
        so: the attempt is reversed (audit-logged), recovery stops sending
        the reversal, the payment is untouched. "processed" cannot settle an
        owed reversal (the payment went on without it)."""
        pi, rrn = self.pay_cascading()
        att = self.iso_attempt(pi["id"])
        c = self.daemon.client("m")
        wait_for(lambda: "reversal_retry" in self.daemon.log_text(), timeout=WAIT_S, what="recovery's reversal")
        listed = c.get("/v1/turnpike/attempts", {"state": "reversal_pending"}).json["data"]
        self.assertEqual([a["id"] for a in listed], [att["id"]], listed)
        r = c.post("/v1/turnpike/attempts/%s/resolve" % att["id"], {"outcome": "processed", "reason": "x"})
        self.assertEqual((r.status, r.json["error"]["tp_code"]), (400, 1100), r.json)
        deadline = time.monotonic() + WAIT_S
        while True:
            r = c.post("/v1/turnpike/attempts/%s/resolve" % att["id"],
                       {"outcome": "not_processed", "reason": "acquirer: authorization never booked"})
            if r.status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual((r.status, r.json.get("state"), r.json.get("result_code")),
                         (200, "reversed", "resolved_by_operator"), r.json)
        self.assertEqual(self.iso_attempt(pi["id"])["state"], "reversed")
        self.assertEqual(c.get("/v1/turnpike/attempts").json["data"], [])
        n = len(self.host.reversals(rrn))
        time.sleep(1.5)  # recovery_interval_ms and reversal_backoff_max_ms are shorter
        self.assertLessEqual(len(self.host.reversals(rrn)), n + 1)  # one may have been on the wire
        now = c.get("/v1/payment_intents/" + pi["id"]).json
        self.assertEqual((now["status"], now["amount_received"]), ("succeeded", pi["amount"]), now)
        with harness.open_db_ro(self.daemon) as con:
            rows = con.execute("SELECT details FROM audit_log WHERE action = 'attempt.resolved' AND object_id = ?",
                               (att["id"],)).fetchall()
        self.assertEqual(len(rows), 1, rows)
        self.assertIn("never booked", rows[0][0])


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
        orig = self.host.original(rrn)
        self.assertEqual(after[-1][2][90][4:20], orig[11] + orig[7], "field 90 kept across the restart")
        self.assertIn(rrn, self.host.undone)
        self.assertEqual(len(self.host.auths()), 1, "the authorization itself was re-sent")
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual(pi2["status"], "succeeded", pi2)
        self.assertEqual(self.host.errors, [])
        self.assertNotIn("runtime error", self.daemon.log_text())


class LinkedBase(ReversalBase):
    """The host approves authorizations but never answers the capture advice
    (0220) or the refund (0200, processing code 20) that follows: the call
    times out, the connector reverses it, and the attempt owes that reversal
    durably like a timed-out authorization."""

    def setUp(self):
        super().setUp()
        with self.host.lock:
            self.host.silent = False

    def of_kind(self, pi_id, kind):
        return [a for a in self.attempts(pi_id) if a["kind"] == kind]

    def authorize(self, capture_method):
        r = self.daemon.client("m").post(
            "/v1/payment_intents",
            {"amount": 4321, "currency": "usd", "confirm": "true", "capture_method": capture_method,
             "payment_method_data": card(PAN_OK)},
            idem=new_key("auth"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "requires_capture" if capture_method == "manual" else "succeeded", r)
        atts = self.attempts(r.json["id"])
        self.assertEqual([(a["processor"], a["kind"], a["state"]) for a in atts],
                         [("acq", "authorize", "succeeded")], atts)
        auths = self.host.auths()
        self.assertEqual(len(auths), 1, auths)
        return r.json, auths[0][37]

    def cancel_unsettled(self, rev_mode):
        """A manual-capture payment canceled while the host answers
        reversals as rev_mode says, past the link's timeout: the cancel is
        502 processor_status_unknown. (pi, the authorization's RRN, the
        client, the cancel's Idempotency-Key.)"""
        pi, auth_rrn = self.authorize("manual")
        c = self.daemon.client("m")
        with self.host.lock:
            self.host.rev_mode = rev_mode
        key = new_key("void")
        r = c.post("/v1/payment_intents/%s/cancel" % pi["id"], {}, idem=key)
        self.assertEqual((r.status, r.json["error"].get("tp_code")), (502, 6018), r)
        return pi, auth_rrn, c, key

    def capture_timing_out(self):
        """A manual-capture payment whose capture gets no answer: (pi, the
        authorization's RRN, the capture's RRN)."""
        pi, auth_rrn = self.authorize("manual")
        r = self.daemon.client("m").post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=new_key("cap"))
        # The capture did not happen (it is being reversed): the
        # authorization stands and the merchant may capture again.
        self.assertEqual(r.status, 402, r)
        self.assertEqual(r.json["error"].get("decline_code"), "processing_error", r)
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual((pi2["status"], pi2["amount_capturable"], pi2["amount_received"]),
                         ("requires_capture", 4321, 0), pi2)
        caps = self.of_kind(pi["id"], "capture")
        self.assertEqual([(a["processor"], a["state"], a["result_code"]) for a in caps],
                         [("acq", "reversal_pending", "processor_timeout")], caps)
        sent = self.host.linked("0220")
        self.assertEqual(len(sent), 1, sent)
        self.assertEqual(sent[0][48].strip(), auth_rrn)
        self.assertNotEqual(sent[0][37], auth_rrn)
        return pi, auth_rrn, sent[0][37]

    def gave_up_lines(self, rrn):
        return [ln.replace(" ", "") for ln in self.daemon.log_text().splitlines()
                if "iso_reversal_gave_up" in ln and rrn in ln]

    def events(self):
        return [e["id"] for e in self.daemon.client("m").get("/v1/events", {"limit": 100}).json["data"]]

    def check_reversals(self, rrn, mti, proc_code, min_n):
        revs = self.host.reversals(rrn)
        self.assertGreaterEqual(len(revs), min_n, revs)
        orig = self.host.original(rrn)
        for _, m, f in revs:
            self.assertEqual(f[37], rrn)
            self.assertEqual(f[3], proc_code)
            self.assertEqual(f[4], "000000004321")
            self.assertEqual(f[90][:20], mti + orig[11] + orig[7], f)
        self.assertIn(rrn, self.host.undone, "the host did not find the original the reversal names")
        return revs

    def owed_until_accepted(self, pi_id, kind, rrn, mti, proc_code):
        """The connector's repeats give up (owner: recovery), recovery keeps
        sending the reversal of that very message while the host refuses,
        then the attempt turns reversed once it accepts; nothing else moves."""
        wait_for(lambda: self.gave_up_lines(rrn), timeout=WAIT_S, what="the connector's repeats to end")
        for ln in self.gave_up_lines(rrn):
            self.assertIn('"owner":"recovery"', ln)
        self.assertNotIn('"owner":"none"', self.daemon.log_text().replace(" ", ""))
        wait_for(lambda: "reversal_retry" in self.daemon.log_text(), timeout=WAIT_S, what="recovery's reversal")
        n = len(self.host.reversals(rrn))
        wait_for(lambda: len(self.host.reversals(rrn)) >= n + 2, timeout=WAIT_S,
                 what="recovery repeating the refused reversal")
        self.assertEqual([a["state"] for a in self.of_kind(pi_id, kind)], ["reversal_pending"])
        wait_for(lambda: self.proc_view().get("reversals_pending") == 1, timeout=WAIT_S,
                 what="the processors view to count it")
        events_before = self.events()
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: self.of_kind(pi_id, kind)[0]["state"] == "reversed", timeout=WAIT_S,
                 what="the %s attempt to be reversed" % kind)
        self.check_reversals(rrn, mti, proc_code, 4)
        wait_for(lambda: self.proc_view().get("reversals_pending") == 0, timeout=WAIT_S, what="count back to 0")
        n = len(self.host.reversals(rrn))
        time.sleep(1.5)
        self.assertEqual(len(self.host.reversals(rrn)), n, "reversals went on after the acknowledgement")
        self.assertEqual(self.events(), events_before, "recovery emitted events")
        self.assertIn("reversal_recovered", self.daemon.log_text())


class VoidTimedOut(LinkedBase):
    def test_timed_out_void_is_settled_by_recovery(self):
        """A cancel whose reversal (the void of the authorization) gets no
        answer is not a failure: the link keeps repeating it and the host
        may release the hold. The cancel answers 502, the void attempt
        stays sent, a capture meanwhile is refused (409), and once the host
        answers, recovery reverses the authorization again: canceled, and
        the client's retry with its key gets that."""
        pi, auth_rrn, c, key = self.cancel_unsettled("ignore")
        self.assertEqual(c.get("/v1/payment_intents/" + pi["id"]).json["status"], "requires_capture")
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "void")], ["sent"])
        cap = c.post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=new_key("cap"))
        self.assertEqual((cap.status, cap.json["error"].get("tp_code")), (409, 3009), cap)
        self.assertEqual(self.host.linked("0220"), [])
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: c.get("/v1/payment_intents/" + pi["id"]).json["status"] == "canceled", timeout=WAIT_S,
                 what="recovery to settle the void")
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "void")], ["succeeded"])
        again = c.post("/v1/payment_intents/%s/cancel" % pi["id"], {}, idem=key)
        self.assertEqual((again.status, again.json.get("status")), (200, "canceled"), again)
        revs = self.host.reversals(auth_rrn)
        self.assertGreaterEqual(len(revs), 2, revs)
        self.assertTrue(all(f[90][:4] == "0100" for _, _, f in revs), revs)


class SlowHostAcknowledges(LinkedBase):
    def test_reversals_acknowledged_after_the_timeout_settle(self):
        """A host that acknowledges every reversal (00) but later than the
        link's timeout: the caller of a void is told the outcome is unknown
        before the 0410 comes, and the acknowledgement, seen only by the
        link, was dropped; recovery's reversals were cut off the same way
        for as long as the host stayed slow, so the void stayed sent and
        the PaymentIntent requires_capture while the hold was released at
        the host. The link remembers what the host acknowledged, and
        answers recovery from it."""
        pi, auth_rrn, c, key = self.cancel_unsettled("slow")
        wait_for(lambda: c.get("/v1/payment_intents/" + pi["id"]).json["status"] == "canceled", timeout=WAIT_S,
                 what="recovery to settle the void from the late acknowledgement")
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "void")], ["succeeded"])
        self.assertIn(auth_rrn, self.host.undone)
        again = c.post("/v1/payment_intents/%s/cancel" % pi["id"], {}, idem=key)
        self.assertEqual((again.status, again.json.get("status")), (200, "canceled"), again)
        # a repeat's late answer is a late answer, not a message of no call
        time.sleep(2 * self.host.slow_s)
        self.assertNotIn("iso_unknown_stan", self.daemon.log_text())
        self.assertEqual(self.host.errors, [])

    def test_an_owed_reversal_acknowledged_late_is_settled(self):
        """The same for a timed-out capture's owed reversal: reversed once
        the host has acknowledged it, though each acknowledgement comes
        after the timeout."""
        with self.host.lock:
            self.host.rev_mode = "slow"
        pi, auth_rrn, cap_rrn = self.capture_timing_out()
        wait_for(lambda: [a["state"] for a in self.of_kind(pi["id"], "capture")] == ["reversed"], timeout=WAIT_S,
                 what="the capture's reversal settled from the late acknowledgement")
        self.assertIn(cap_rrn, self.host.undone)
        self.assertNotIn(auth_rrn, self.host.undone)
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual((pi2["status"], pi2["amount_capturable"], pi2["amount_received"]),
                         ("requires_capture", 4321, 0), pi2)


class CaptureReversalOwed(LinkedBase):
    def test_timed_out_capture_reversed_until_acknowledged(self):
        pi, auth_rrn, cap_rrn = self.capture_timing_out()
        self.owed_until_accepted(pi["id"], "capture", cap_rrn, "0220", "000000")
        # Only the capture was reversed, never the authorization under it.
        self.assertEqual(self.host.reversals(auth_rrn), [])
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual((pi2["status"], pi2["amount_capturable"]), ("requires_capture", 4321), pi2)
        # The merchant captures again; this time the host answers.
        with self.host.lock:
            self.host.ignore_linked = False
        r = self.daemon.client("m").post("/v1/payment_intents/%s/capture" % pi["id"], {}, idem=new_key("cap"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["status"], r.json["amount_received"]), ("succeeded", 4321), r)
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "capture")], ["reversed", "succeeded"])
        caps = self.host.linked("0220")
        self.assertEqual(len(caps), 2, caps)
        self.assertNotEqual(caps[1][37], cap_rrn)
        self.assertEqual(self.host.errors, [])
        log = self.daemon.log_text()
        self.assertNotIn(PAN_OK, log)
        self.assertNotIn("runtime error", log)


class RefundReversalOwed(LinkedBase):
    def test_timed_out_refund_reversed_until_acknowledged(self):
        pi, auth_rrn = self.authorize("automatic")
        r = self.daemon.client("m").post("/v1/refunds", {"payment_intent": pi["id"]}, idem=new_key("re"))
        # Reported as not done (it is being reversed); the charge keeps its
        # amount refundable.
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "failed", r)
        re_id = r.json["id"]
        ch = self.daemon.client("m").get("/v1/charges/%s" % pi["latest_charge"]).json
        self.assertEqual((ch["amount_refunded"], ch["refunded"]), (0, False), ch)
        refs = self.of_kind(pi["id"], "refund")
        self.assertEqual([(a["processor"], a["state"], a["result_code"]) for a in refs],
                         [("acq", "reversal_pending", "processor_timeout")], refs)
        sent = self.host.linked("0200")
        self.assertEqual(len(sent), 1, sent)
        ref_rrn = sent[0][37]
        self.assertEqual(sent[0][48].strip(), auth_rrn)
        self.owed_until_accepted(pi["id"], "refund", ref_rrn, "0200", "200000")
        self.assertEqual(self.host.reversals(auth_rrn), [])
        self.assertEqual(self.daemon.client("m").get("/v1/refunds/%s" % re_id).json["status"], "failed")
        # The merchant refunds again; this time the host answers.
        with self.host.lock:
            self.host.ignore_linked = False
        r = self.daemon.client("m").post("/v1/refunds", {"payment_intent": pi["id"]}, idem=new_key("re"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["status"], r.json["amount"]), ("succeeded", 4321), r)
        ch = self.daemon.client("m").get("/v1/charges/%s" % pi["latest_charge"]).json
        self.assertEqual((ch["amount_refunded"], ch["refunded"]), (4321, True), ch)
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "refund")], ["reversed", "succeeded"])
        self.assertEqual(self.host.errors, [])
        self.assertNotIn("runtime error", self.daemon.log_text())


class CaptureReversalSurvivesKill9(LinkedBase):
    def test_capture_reversal_sent_again_after_restart(self):
        pi, auth_rrn, cap_rrn = self.capture_timing_out()
        wait_for(lambda: len(self.host.reversals(cap_rrn)) >= 1, timeout=WAIT_S, what="the first reversal")
        self.daemon.kill9()
        conns = self.host.connections
        self.start()
        wait_for(lambda: len(self.host.reversals(cap_rrn, min_conn=conns + 1)) >= 2, timeout=WAIT_S,
                 what="reversals after the restart")
        self.assertEqual([a["state"] for a in self.of_kind(pi["id"], "capture")], ["reversal_pending"])
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: self.of_kind(pi["id"], "capture")[0]["state"] == "reversed", timeout=WAIT_S,
                 what="the capture attempt to be reversed after the restart")
        after = self.host.reversals(cap_rrn, min_conn=conns + 1)
        self.assertTrue(after, "no reversal on the new connection")
        self.assertEqual((after[-1][2][37], after[-1][2][90][:4]), (cap_rrn, "0220"))
        self.check_reversals(cap_rrn, "0220", "000000", 3)
        self.assertEqual(len(self.host.linked("0220")), 1, "the capture itself was re-sent")
        self.assertEqual(self.host.reversals(auth_rrn), [])
        pi2 = self.daemon.client("m").get("/v1/payment_intents/%s" % pi["id"]).json
        self.assertEqual((pi2["status"], pi2["amount_capturable"]), ("requires_capture", 4321), pi2)
        self.assertEqual(self.host.errors, [])
        self.assertNotIn("runtime error", self.daemon.log_text())

class DroppingHost(RefusingHost):
    """Takes the first authorization and drops the connection at once,
    refusing sign-on for 3 s: the link reverses it (a 0400 naming it) but
    cannot send that, and the payment's outcome is left unknown."""

    def __init__(self):
        self.down_until = 0
        self.drop_next_auth = True
        super().__init__()

    def handle(self, c, body):
        mti, f = unpack(body)
        now = time.monotonic()
        if mti == "0800" and now < self.down_until:
            c.shutdown(socket.SHUT_RDWR)
            return
        if mti in ("0100", "0200") and self.drop_next_auth:
            self.drop_next_auth = False
            with self.lock:
                self.seen.append((mti, f))
                self.by_conn.append((self.connections, mti, f))
            self.down_until = now + 3.0
            c.shutdown(socket.SHUT_RDWR)
            return
        return super().handle(c, body)


class UnresolvedAuthorizationReversed(ReversalBase):
    HOST = DroppingHost

    def test_recovery_names_the_original_of_an_unresolved_authorization(self):
        """The link went down with the sale unanswered: the payment answers
        502 processing and its attempt stays sent. Recovery's reversals name
        the sale in field 90 as the link's did (they named zeros: a host
        that finds originals by field 90 answered 25, read as nothing
        stands, and the sale stood at the host while the PaymentIntent said
        unpaid)."""
        r = self.daemon.client("m").post(
            "/v1/payment_intents",
            {"amount": 4321, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)},
            idem=new_key("unk"))
        self.assertEqual((r.status, r.json["error"].get("tp_code")), (502, 6018), r)  # processor_status_unknown
        pid = r.json["error"]["payment_intent"]["id"]
        auth = self.host.auths()[0]
        rrn = auth[37]
        wait_for(lambda: "reversal_retry" in self.daemon.log_text() or "recovery_status" in self.daemon.log_text()
                 or len(self.host.reversals(rrn)) >= 3, timeout=WAIT_S, what="reversals after the link is back")
        with self.host.lock:
            self.host.rev_mode = "accept"
        wait_for(lambda: self.attempts(pid)[0]["state"] not in ("sent", "reversal_pending"), timeout=WAIT_S,
                 what="recovery to settle the attempt")
        revs = self.host.reversals(rrn)
        self.assertTrue(revs, "no reversal sent")
        for _, mti, f in revs:
            self.assertEqual(f[90][4:20], auth[11] + auth[7], f)
        self.assertIn(rrn, self.host.undone, "the sale stands at the host")
        pi = self.daemon.client("m").get("/v1/payment_intents/" + pid).json
        self.assertEqual((pi["status"], pi["amount_received"]), ("requires_payment_method", 0), pi)


class KilledBeforeTheAnswer(ReversalBase):
    TIMEOUT_MS = 30000  # the gateway is killed long before its link would give up
    SIGNON_DELAY_S = 0.0  # how long the host makes the restarted gateway's sign-on wait

    def test_recovery_names_the_authorization_sent_before_the_crash(self):
        """kill -9 while the host holds the authorization unanswered: the
        link never learnt the outcome, so only the attempt's write-ahead
        tells the restarted gateway what went out. Its reversal names the
        message in field 90 (MTI, STAN, field 7, fixed before the
        write-ahead); it named zeros past the MTI, and a host that finds
        originals by field 90 answered 25, read as nothing stands, while
        the sale stood at the host."""
        import threading
        key = new_key("kill")
        res = {}

        def pay():
            try:
                res["r"] = self.daemon.client("m").post(
                    "/v1/payment_intents",
                    {"amount": 4321, "currency": "usd", "confirm": "true",
                     "payment_method_data": card(PAN_OK)}, idem=key)
            except Exception as e:  # the connection dies with the daemon
                res["e"] = e

        t = threading.Thread(target=pay)
        t.start()
        wait_for(lambda: len(self.host.auths()) == 1, timeout=WAIT_S, what="the authorization at the host")
        self.daemon.kill9()
        t.join(10)
        self.assertNotIn("r", res, "answered before the kill: %r" % res.get("r"))
        auth = self.host.auths()[0]
        rrn = auth[37]
        with self.host.lock:
            self.host.rev_mode = "accept"
            self.host.signon_delay = self.SIGNON_DELAY_S
        self.start()
        pid = self.daemon.client("m").get("/v1/payment_intents?limit=1").json["data"][0]["id"]
        wait_for(lambda: self.attempts(pid)[0]["state"] not in ("sent", "reversal_pending"), timeout=WAIT_S,
                 what="recovery to settle the attempt")
        revs = self.host.reversals(rrn)
        self.assertTrue(revs, "no reversal sent")
        for _, mti, f in revs:
            self.assertEqual(f[90][:20], "0200" + auth[11] + auth[7], f)  # a sale: automatic capture
        self.assertIn(rrn, self.host.undone, "the sale stands at the host")
        self.assertEqual(len(self.host.auths()), 1, "the sale itself was re-sent")
        pi = self.daemon.client("m").get("/v1/payment_intents/" + pid).json
        self.assertEqual(pi["amount_received"], 0, pi)
        self.assertEqual(self.host.errors, [])
        self.assertNotIn("runtime error", self.daemon.log_text())


class KilledBeforeTheAnswerSlowSignOn(KilledBeforeTheAnswer):
    """The same with the restarted gateway's sign-on answered late: its
    start-up recovery finds the link not signed on (processor_link_down),
    and the attempt must not then wait twice the 30 s timeout from its
    creation for the recovery tick (CI saw this when the start-up pass
    raced the sign-on): no call of this process is behind an attempt left
    "sent" before it started."""
    SIGNON_DELAY_S = 1.5


if __name__ == "__main__":
    harness.main()
