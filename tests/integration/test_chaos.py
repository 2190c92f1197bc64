"""Money reconciliation under chaos.

Eight merchant threads run whole payment lives against the real gateway and
three processors in the real `turnpike sim` (REST, ISO 8583, REST, in that
order of the route): create+confirm (automatic or
manual capture, some declined cards, some 3-D Secure cards whose challenge
page the test's "browser" approves or fails, some saving the card to the
thread's customer and some charging a saved card off-session), then capture
(full or partial),
cancel, or leave a manual payment uncaptured, and refund paid ones (one or
two partial refunds). Every request carries its own Idempotency-Key and is
retried with it, as an SDK does, after a broken connection, a 5xx, a 409 or
a 429; some clients are impatient instead: after one failed capture they
cancel, after one failed refund they send the next, each with a new key,
while the first call's outcome may still be unknown; and some send two
calls on one payment at once (a capture and a cancel, or two refunds that
together exceed what was paid). Meanwhile a chaos thread keeps switching faults on the processors
(timeouts before and after processing, of every call or only some kinds,
resets, 5xx, outages, latency), stalls the sim, and the gateway itself, with
SIGSTOP, kills the sim with SIGKILL and restarts it on
its journal, and stops the gateway, once with SIGTERM (it must finish what
is in flight and exit 0) and once with SIGKILL, restarting it on its store.

When the chaos stops and recovery has settled every call, the gateway and
the processors must agree on every cent, payment by payment:

- no payment charged twice (the sim journal's own count);
- succeeded: one charge at the processors, captured there exactly
  `amount_received`; requires_capture: one uncaptured authorization;
  every other status: nothing charged, nothing captured;
- refunds that moved money (with a balance transaction) add up to what the
  processors refunded for that payment, and to the charge's
  `amount_refunded` less the released (never captured) part;
- the balance is the sum of what was captured less what was refunded;
- a request sent again with its key gets the very answer it got first,
  through the kills;
- every reply the client got as a success still holds (a 200 for a
  capture, refund or payment is never undone), and no PaymentIntent is
  left `processing`;
- the events are committed with their changes (the newest event of each
  object shows it as it is), and a webhook endpoint (failing one delivery
  in ten) gets every event of its types, signed, at least once, and none
  that was not committed; a WebSocket subscriber that reconnects with
  `last_event_id` after each restart sees every payment_intent event once,
  in commit order.

TP_CHAOS_SECONDS (default 20) and TP_CHAOS_SEED (default 1; the thread
interleaving differs from run to run anyway) vary the run.
"""
import collections
import http.client
import json
import socket
import os
import random
import signal
import threading
import time
import unittest
import urllib.parse

from harness import Daemon, Response, Sim, iso_rrn, main, new_key, open_db_ro
from test_stream import RawWS
from test_webhooks import Receiver, verify_signature

SECONDS = float(os.environ.get("TP_CHAOS_SECONDS", "20"))
SEED = int(os.environ.get("TP_CHAOS_SEED", "1"))
THREADS = 8
NAMES = ("a", "b")        # REST processors in the sim
SIM_NAMES = ("a", "b", "iso")  # what the chaos switches faults on ("iso": the sim's ISO 8583 host)
CALM = dict(outage=False, timeout_rate=0.0, error_rate=0.0, reset_rate=0.0, decline_rate=0.0,
            latency_ms_min=0, latency_ms_max=0, timeout_operations="all")


def gateway_config(sim):
    """a (REST), then x (ISO 8583 to the sim's host), then b (REST)."""
    ini = ["[routing]", "deadline_ms = 4000", "recovery_interval_ms = 300", "backoff_base_ms = 20",
           "reversal_backoff_max_ms = 1000", ""]
    breaker = ["breaker_consecutive = 5", "breaker_open_ms = 500", "breaker_half_open_probes = 1",
               "health_interval_ms = 0"]
    for i, n in enumerate(NAMES):
        ini += ["[processor.%s]" % n, "type = restjson", "endpoint = http://%s/p/%s" % (sim.rest, n),
                "timeout_ms = 300", "priority = %d" % (i + 1)] + breaker + [""]
    ini += ["[processor.x]", "type = iso8583", "endpoint = %s" % sim.iso, "timeout_ms = 400",
            "terminal_id = TERM0001", "merchant_id = TURNPIKE0000001"] + breaker + [""]
    ini += ["[route.all]", "merchant = *", "processors = a,x,b", "strategy = ordered", ""]
    ini += ["[webhooks]", "retry_base_ms = 100", "retry_max_ms = 400", "scan_interval_ms = 300",
            "timeout_ms = 1500", "connect_timeout_ms = 1000", "stop_wait_ms = 1000", ""]
    return "\n".join(ini)


HOOKED = ("payment_intent.succeeded", "payment_intent.canceled", "charge.refunded", "charge.captured")



def processor_money(entries, payment_of):
    """From the sim's journal: per payment (payment_of maps the journal's
    payment, an ISO RRN or a REST PaymentIntent id, to the PaymentIntent),
    what is captured and refunded now, after voids and reversals."""
    auth_pay, auth_cap, reversed_auth = {}, collections.Counter(), set()
    cap_of, ref_of = {}, {}
    refunded = collections.Counter()
    for e in entries:
        key = (e["processor"], e["reference"])
        op, st, amt = e["operation"], e["status"], e["amount"]
        if op == "authorize" and st == "approved":
            auth_pay[key] = payment_of(e["payment"])
            if e.get("captured"):
                auth_cap[key] += amt  # a sale: captured with the authorization
        elif op == "capture" and st == "captured":
            ak = (e["processor"], e["authorization"])
            auth_cap[ak] += amt
            cap_of[key] = (ak, amt)
        elif op == "refund" and st == "succeeded":
            refunded[payment_of(e["payment"])] += amt
            ref_of[key] = (payment_of(e["payment"]), amt)
        elif op == "reversal" and st == "reversed":
            reversed_auth.add(key)  # the authorization, and its capture with it
        elif op == "reversal" and st == "capture_reversed" and key in cap_of:
            ak, a = cap_of.pop(key)
            auth_cap[ak] -= a
        elif op == "reversal" and st == "refund_reversed" and key in ref_of:
            p, a = ref_of.pop(key)
            refunded[p] -= a
    captured = collections.Counter()
    for k, a in auth_cap.items():
        if k not in reversed_auth and k in auth_pay:
            captured[auth_pay[k]] += a
    return captured, refunded


class ChaosTest(unittest.TestCase):
    def setUp(self):
        print("chaos seed %d, %.0f s" % (SEED, SECONDS), flush=True)
        self.sim = Sim()
        self.daemon = Daemon()
        self.daemon.create_merchant("m")
        self.config = gateway_config(self.sim)
        self.daemon.start(config=self.config)
        self.client = self.daemon.client("m")
        # A webhook endpoint that fails one delivery in ten.
        self.hooks = Receiver()
        rnd = random.Random(SEED + 7)
        self.hooks.behaviour["/hook"] = lambda ev, n: (500 if rnd.random() < 0.1 else 200, 0)
        we = self.client.post("/v1/webhook_endpoints", {"url": self.hooks.url("/hook"),
                                                        "enabled_events": list(HOOKED)})
        assert we.status == 200, we
        self.hook_secret = we.json["secret"]
        self.gw_lock = threading.Lock()   # held while the gateway restarts
        self.log_lock = threading.Lock()
        self.ok = []        # (what, pi id, reply json) of 200 replies
        self.pis = set()
        self.events = collections.Counter()
        self.stop = threading.Event()
        self.term_rc = None
        self.crashed = []
        self.customers = []
        self.answers = []   # (method, path, params, key, Response) of answered keyed requests
        self.sub_ids, self.sub_log, self.sub_stop = set(), collections.Counter(), threading.Event()
        self.sub_ready = threading.Event()  # the first subscription is in force

    def tearDown(self):
        self.hooks.close()
        try:
            os.kill(self.sim.proc.pid, signal.SIGCONT)
        except (ProcessLookupError, AttributeError):
            pass
        self.daemon.cleanup()
        self.sim.stop()

    # -- the merchant side -------------------------------------------------
    def call(self, method, path, params, idem, budget=15.0, **kw):
        """One request, retried with the same key like an SDK until it gets
        an answer that is not a broken connection, 5xx, 409 or 429."""
        deadline = time.monotonic() + budget
        delay = 0.05
        r = None
        while True:
            with self.gw_lock:
                c = self.client
            try:
                r = c.request(method, path, params, idem=idem, timeout=20, **kw)
            except (OSError, http.client.HTTPException):
                r = None
            if r is not None and r.status < 500 and r.status not in (409, 429):
                if idem and r.status in (200, 402):
                    with self.log_lock:
                        self.answers.append((method, path, params, idem, r))
                return r
            with self.log_lock:
                self.events["retry %s" % (r.status if r is not None else "broken")] += 1
            if time.monotonic() > deadline or (self.stop.is_set() and time.monotonic() > deadline - budget / 2):
                return r
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def record(self, what, r):
        if r is not None and r.status == 200:
            with self.log_lock:
                self.ok.append((what, r.json))

    def challenge(self, pi, rnd):
        """The customer's browser on the 3-D Secure page: approve (mostly) or
        fail. A redirect that says succeeded is an acknowledged payment."""
        u = urllib.parse.urlsplit(pi["next_action"]["redirect_to_url"]["url"])
        token = urllib.parse.parse_qs(u.query).get("token", [""])[0]
        result = "approve" if rnd.random() < 0.85 else "fail"
        r = self.call("POST", u.path, {"token": token, "result": result}, None, budget=5.0, key=None)
        loc = r.headers.get("Location", "") if r is not None and r.status == 303 else ""
        with self.log_lock:
            self.events["3ds %s -> %s" % (result, "succeeded" if "redirect_status=succeeded" in loc else
                                          "failed" if loc else "no redirect")] += 1
        if "redirect_status=succeeded" in loc:
            with self.log_lock:
                self.ok.append(("3ds", {"id": pi["id"], "status": "authorized", "amount_received": 0}))
        with self.gw_lock:
            c = self.client
        try:
            now = c.get("/v1/payment_intents/" + pi["id"])
        except (OSError, http.client.HTTPException):
            return None
        return now.json if now.status == 200 else None

    def one_life(self, rnd, me):
        manual = rnd.random() < 0.45
        x = rnd.random()
        pm = "pm_card_chargeDeclined" if x < 0.08 else "pm_card_threeDSecure2Required" if x < 0.16 else "pm_card_visa"
        amount = rnd.randint(200, 5000)
        params = {"amount": amount, "currency": "usd", "confirm": "true", "payment_method": pm,
                  "capture_method": "manual" if manual else "automatic",
                  "return_url": "https://shop.example/return"}
        y = rnd.random()
        if me["customer"] and y < 0.12:
            # Save the card to this thread's customer for later payments.
            params.update(customer=me["customer"], setup_future_usage="off_session")
        elif me["customer"] and me["saved"] and y < 0.24:
            # Charge a saved card, the customer not present.
            params.update(customer=me["customer"], payment_method=rnd.choice(me["saved"]), off_session="true")
            params.pop("return_url")
        r = self.call("POST", "/v1/payment_intents", params, new_key("life"))
        if r is not None and r.status == 200 and params.get("setup_future_usage") and \
                r.json.get("status") in ("succeeded", "requires_capture"):
            me["saved"].append(r.json["payment_method"])
        if r is None:
            return
        if r.status == 200 and r.json.get("status") == "requires_action":
            with self.log_lock:
                self.pis.add(r.json["id"])
            pi = self.challenge(r.json, rnd)
            if not pi or pi["status"] not in ("succeeded", "requires_capture"):
                return
            r = Response(200, r.headers, pi, b"")
        pi = r.json if r.status == 200 else (r.json or {}).get("error", {}).get("payment_intent")
        if not pi:
            return
        with self.log_lock:
            self.pis.add(pi["id"])
        self.record("pay", r)
        if r.status != 200:
            return
        if pi["status"] == "requires_capture":
            x = rnd.random()
            if x < 0.1:
                # A capture and a cancel of one payment at the same time.
                self.concurrently(("capture", "POST", "/v1/payment_intents/%s/capture" % pi["id"], {}),
                                  ("cancel", "POST", "/v1/payment_intents/%s/cancel" % pi["id"], {}))
                return
            if x < 0.6:
                params = {}
                if rnd.random() < 0.4:
                    params["amount_to_capture"] = rnd.randint(1, amount)
                impatient = rnd.random() < 0.25
                r = self.call("POST", "/v1/payment_intents/%s/capture" % pi["id"], params, new_key("cap"),
                              budget=0.0 if impatient else 15.0)
                self.record("capture", r)
                if r is None or r.status != 200:
                    if impatient:
                        # A client that gives up on the capture and cancels
                        # instead, with a new key, while the capture's
                        # outcome may still be unknown.
                        self.record("cancel", self.call("POST", "/v1/payment_intents/%s/cancel" % pi["id"], {},
                                                        new_key("cancel")))
                    return
                pi = r.json
            elif x < 0.85:
                self.record("cancel", self.call("POST", "/v1/payment_intents/%s/cancel" % pi["id"], {},
                                                new_key("cancel")))
                return
            else:
                return
        if pi["status"] != "succeeded" or rnd.random() < 0.45:
            return
        if rnd.random() < 0.15:
            # Two refunds of one payment at the same time, together maybe
            # more than was paid.
            half = max(1, pi["amount_received"] * 2 // 3)
            self.concurrently(("refund", "POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": half}),
                              ("refund", "POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": half}))
            return
        for _ in range(rnd.choice((1, 1, 2))):
            params = {"payment_intent": pi["id"]}
            if rnd.random() < 0.7:
                params["amount"] = rnd.randint(1, max(1, pi["amount_received"] // 2))
            # Some clients do not retry a failed refund with its key but
            # send the next one at once.
            r = self.call("POST", "/v1/refunds", params, new_key("ref"), budget=0.0 if rnd.random() < 0.3 else 15.0)
            self.record("refund", r)

    def concurrently(self, *calls):
        """Each (what, method, path, params) on its own thread and key."""
        ts = [threading.Thread(target=lambda w=w, m=m, p=p, q=q: self.record(w, self.call(m, p, q, new_key(w))))
              for w, m, p, q in calls]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def merchant(self, i):
        rnd = random.Random(SEED * 100 + i)
        me = {"customer": None, "saved": []}
        try:
            r = self.call("POST", "/v1/customers", {"email": "chaos%d@example.com" % i}, new_key("cus"))
            if r is not None and r.status == 200:
                me["customer"] = r.json["id"]
                with self.log_lock:
                    self.customers.append(me["customer"])
            while not self.stop.is_set():
                self.one_life(rnd, me)
        except Exception as e:  # a bug in the test, or an answer it cannot read
            with self.log_lock:
                self.crashed.append("merchant %d: %r" % (i, e))
            raise

    # -- a WebSocket subscriber ---------------------------------------------
    def subscriber(self):
        """Follows payment_intent.* on /v1/turnpike/stream and, whenever the
        connection drops (the gateway is killed or stopped), reconnects with
        last_event_id. Records every event id; an id not above the last one
        (a duplicate, or out of commit order) is a failure."""
        last = None
        while not self.sub_stop.is_set():
            with self.gw_lock:
                port, key = self.daemon.port, self.daemon.merchants["m"]["secret_key"]
            try:
                ws = RawWS(port, key)
            except OSError:
                time.sleep(0.1)
                continue
            try:
                if ws.status != 101:
                    time.sleep(0.1)
                    continue
                sub = {"type": "subscribe", "events": ["payment_intent.*"]}
                if last:
                    sub["last_event_id"] = last
                ws.send(1, json.dumps(sub, separators=(",", ":")).encode())
                ws.sock.settimeout(0.5)
                self.sub_log["connections"] += 1
                while not self.sub_stop.is_set():
                    try:
                        op, payload = ws.frame()
                    except socket.timeout:
                        continue
                    if op == 9:
                        ws.send(10, payload[:125])
                    elif op == 8:
                        break
                    elif op == 1:
                        msg = json.loads(payload.decode())
                        if msg.get("type") == "event":
                            eid = msg["event"]["id"]
                            if last is not None and eid <= last:
                                self.sub_log["out of order or repeated"] += 1
                            self.sub_ids.add(eid)
                            last = eid
                        elif msg.get("type") == "subscribed":
                            self.sub_ready.set()
                        elif msg.get("type") == "error":
                            self.sub_log["error " + msg.get("code", "")] += 1
            except (OSError, EOFError, ValueError):
                pass
            finally:
                ws.close()

    # -- the chaos side ----------------------------------------------------
    def restart_gateway(self, graceful):
        """kill -9, or SIGTERM (which must finish what is in flight and exit 0)."""
        with self.gw_lock:
            if graceful:
                self.term_rc = self.daemon.stop()
            else:
                self.daemon.kill9()
            self.daemon.start(config=self.config)
            self.client = self.daemon.client("m")

    def chaos(self):
        rnd = random.Random(SEED)
        t0 = time.monotonic()
        plan = {SECONDS * 0.25: "term_gateway", SECONDS * 0.45: "kill_gateway", SECONDS * 0.7: "kill_sim"}
        while time.monotonic() - t0 < SECONDS:
            due = [k for k in plan if time.monotonic() - t0 >= k]
            for k in due:
                what = plan.pop(k)
                self.events[what] += 1
                if what in ("kill_gateway", "term_gateway"):
                    self.restart_gateway(graceful=what == "term_gateway")
                else:
                    self.sim.kill9()
                    time.sleep(0.3)
                    self.sim.restart()
            n = rnd.choice(SIM_NAMES)
            x = rnd.random()
            try:
                if x < 0.25:
                    self.sim.faults(n, timeout_rate=0.3, timeout_mode=rnd.choice(("before", "after")),
                                    timeout_hold_ms=500,
                                    timeout_operations=rnd.choice(("all", "all", "authorize", "capture,refund",
                                                                   "void")))
                    self.events["timeouts"] += 1
                elif x < 0.4:
                    self.sim.faults(n, reset_rate=0.2)
                    self.events["resets"] += 1
                elif x < 0.55:
                    self.sim.faults(n, error_rate=0.3)
                    self.events["errors"] += 1
                elif x < 0.65:
                    self.sim.faults(n, outage=True)
                    self.events["outage"] += 1
                elif x < 0.75:
                    self.sim.faults(n, latency_ms_min=50, latency_ms_max=400)
                    self.events["latency"] += 1
                elif x < 0.8:
                    os.kill(self.sim.proc.pid, signal.SIGSTOP)
                    time.sleep(rnd.uniform(0.3, 0.8))
                    os.kill(self.sim.proc.pid, signal.SIGCONT)
                    self.events["sigstop"] += 1
                elif x < 0.85:
                    # The gateway itself stalls (a paused VM, a long GC-like
                    # hiccup): its timers fire late, all at once.
                    with self.gw_lock:
                        pid = self.daemon.proc.pid
                        os.kill(pid, signal.SIGSTOP)
                        time.sleep(rnd.uniform(0.3, 0.8))
                        os.kill(pid, signal.SIGCONT)
                    self.events["gateway sigstop"] += 1
                else:
                    self.sim.faults(n, **CALM)
                    self.events["calm"] += 1
            except OSError:
                pass  # the sim is restarting
            time.sleep(rnd.uniform(0.3, 0.8))
        for n in SIM_NAMES:
            self.sim.faults(n, **CALM)

    # -- the check -----------------------------------------------------------
    def test_gateway_and_processors_agree_on_every_cent(self):
        sub = threading.Thread(target=self.subscriber, daemon=True)
        sub.start()
        # events before the first subscription is in force are not the stream's to
        # send (only a resume replays): under load the first payments beat it, and
        # their events were counted as lost
        self.assertTrue(self.sub_ready.wait(60), "the stream subscription was not acknowledged")
        workers = [threading.Thread(target=self.merchant, args=(i,), daemon=True) for i in range(THREADS)]
        for w in workers:
            w.start()
        self.chaos()
        self.stop.set()
        for w in workers:
            w.join(60)
        self.assertFalse(any(w.is_alive() for w in workers), "merchant threads stuck")
        self.assertEqual(self.crashed, [])
        print("chaos: %d payments, %d successes; %s" % (len(self.pis), len(self.ok), dict(self.events)),
              flush=True)
        self.assertGreater(len(self.pis), 30)
        self.assertEqual(self.term_rc, 0, "SIGTERM under chaos: exit status")

        # Recovery settles every call once the processors answer.
        deadline = time.monotonic() + 60
        while True:
            with open_db_ro(self.daemon) as db:
                left = db.execute("SELECT COUNT(*) FROM attempts WHERE state IN ('sent', 'reversal_pending')"
                                  ).fetchone()[0]
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(left, 0, "attempts still sent or owing a reversal 60 s after the chaos")

        c = self.daemon.client("m")
        pis = {p["id"]: p for p in c.list_all("/v1/payment_intents")}
        self.assertTrue(self.pis <= set(pis), self.pis - set(pis))
        charges = {ch["id"]: ch for ch in c.list_all("/v1/charges")}
        refunds = c.list_all("/v1/refunds")
        j = self.sim.journal(limit=100000)
        self.assertEqual(j["summary"]["double_charges"], 0, j["summary"])
        # ISO rows name the authorization's RRN, which the connector derives
        # from the attempt's reference.
        with open_db_ro(self.daemon) as db:
            rrn = {iso_rrn(ref): pi for pi, ref in db.execute(
                "SELECT payment_intent, idem_ref FROM attempts WHERE processor = 'x' AND kind = 'authorize'")}
        sim_charges = collections.Counter()
        for p, n in j["summary"]["charges_by_payment"].items():
            sim_charges[rrn.get(p, p)] += n
        self.assertTrue(all(n <= 1 for n in sim_charges.values()), sim_charges.most_common(3))
        sim_captured, sim_refunded = processor_money(j["entries"], lambda p: rrn.get(p, p))
        self.events["through ISO"] = len(rrn)
        gw_refunded = collections.Counter()
        for re in refunds:
            if re["status"] == "succeeded" and re.get("balance_transaction"):
                gw_refunded[re["payment_intent"]] += re["amount"]

        bad = []
        expected_balance = 0
        statuses = collections.Counter()
        for pid, pi in pis.items():
            st = pi["status"]
            statuses[st] += 1
            n = sim_charges.get(pid, 0)
            if st == "succeeded":
                ch = charges[pi["latest_charge"]]
                released = (ch.get("turnpike") or {}).get("released", 0)
                if (n, sim_captured[pid]) != (1, pi["amount_received"]):
                    bad.append("%s succeeded %d: processors charged %d, captured %d" %
                               (pid, pi["amount_received"], n, sim_captured[pid]))
                if gw_refunded[pid] != sim_refunded[pid] or ch["amount_refunded"] - released != gw_refunded[pid]:
                    bad.append("%s refunds: gateway %d (charge %d - released %d), processors %d" %
                               (pid, gw_refunded[pid], ch["amount_refunded"], released, sim_refunded[pid]))
                expected_balance += pi["amount_received"] - gw_refunded[pid]
            elif st == "requires_capture":
                if (n, sim_captured[pid]) != (1, 0):
                    bad.append("%s requires_capture: processors charged %d, captured %d" %
                               (pid, n, sim_captured[pid]))
            elif st == "processing":
                bad.append("%s left processing" % pid)
            else:
                if n or sim_captured[pid] or sim_refunded[pid]:
                    bad.append("%s %s: processors charged %d, captured %d, refunded %d" %
                               (pid, st, n, sim_captured[pid], sim_refunded[pid]))
        print("chaos: final statuses %s" % dict(statuses), flush=True)

        # Every success the client was told of still holds.
        for what, obj in self.ok:
            if what == "3ds":
                # Authorized after the challenge: paid, or held for capture
                # (a later cancel or capture may have moved it on).
                if pis[obj["id"]]["status"] not in ("succeeded", "requires_capture", "canceled"):
                    bad.append("3-D Secure payment %s redirected as succeeded, now %s" %
                               (obj["id"], pis[obj["id"]]["status"]))
            elif what in ("pay", "capture") and obj.get("status") == "succeeded":
                now = pis[obj["id"]]
                if now["status"] != "succeeded" or now["amount_received"] != obj["amount_received"]:
                    bad.append("%s %s acknowledged %d, now %s %d" % (what, obj["id"], obj["amount_received"],
                                                                   now["status"], now["amount_received"]))
            elif what == "refund" and obj.get("status") == "succeeded":
                if gw_refunded[obj["payment_intent"]] < obj["amount"]:
                    bad.append("refund %s acknowledged, not in the refunds" % obj["id"])
            elif what == "cancel" and pis[obj["id"]]["status"] != "canceled":
                bad.append("cancel %s acknowledged, now %s" % (obj["id"], pis[obj["id"]]["status"]))

        # The events are committed with the changes they describe: the
        # newest event of each PaymentIntent, charge and refund shows it as
        # it is now.
        newest, newest_ev = {}, {}
        for ev in c.list_all("/v1/events"):  # newest first
            obj = ev["data"]["object"]
            newest.setdefault(obj["id"], obj)
            newest_ev[ev["id"]] = ev["type"]
        for pid, pi in pis.items():
            ev = newest.get(pid)
            # Stripe has no event for a PaymentIntent going back to
            # requires_confirmation: a confirmation (or a challenge's
            # approval) that found every breaker open sent nothing and
            # leaves it so (exhausted_outcome, no_processor_available).
            back = pi["status"] == "requires_confirmation" and ev is not None and \
                ev["status"] in ("requires_action", "requires_payment_method") and pi["amount_received"] == 0
            if not back and (ev is None or (ev["status"], ev["amount_received"]) !=
                             (pi["status"], pi["amount_received"])):
                bad.append("%s is %s %d, its newest event says %s" %
                           (pid, pi["status"], pi["amount_received"],
                            ev and (ev["status"], ev["amount_received"])))
        for cid, ch in charges.items():
            ev = newest.get(cid)
            fields = ("status", "captured", "amount_captured", "amount_refunded", "refunded")
            if ev is None or [ev.get(f) for f in fields] != [ch.get(f) for f in fields]:
                bad.append("charge %s %r, its newest event %r" % (cid, [ch.get(f) for f in fields],
                                                                 ev and [ev.get(f) for f in fields]))
        for re in refunds:
            ev = newest.get(re["id"])
            if ev is None or ev["status"] != re["status"]:
                bad.append("refund %s %s, its newest event %s" % (re["id"], re["status"], ev and ev["status"]))
        # Webhooks: every committed event of the endpoint's types reaches
        # it, signed, at least once, through the kills; and nothing reaches
        # it that was not committed (an event of a change a kill undid).
        want = {e for e, obj in newest_ev.items() if obj in HOOKED}
        deadline = time.monotonic() + 60
        while True:
            got = self.hooks.on("/hook")
            delivered = {g["event"]["id"] for g in got if g["event"] and
                         verify_signature(g["body"], g["headers"].get("Stripe-Signature", ""), self.hook_secret)}
            if want <= delivered or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not want <= delivered:
            bad.append("%d of %d events never delivered (or badly signed), e.g. %s" %
                       (len(want - delivered), len(want), sorted(want - delivered)[:3]))
        phantom = {g["event"]["id"] for g in got if g["event"]} - set(newest_ev)
        if phantom:
            bad.append("webhooks for events that are not in /v1/events: %s" % sorted(phantom)[:3])
        self.events["webhooks"] = len(got)
        self.events["webhook events"] = len(want)
        print("chaos: %d webhook requests for %d events" % (len(got), len(want)), flush=True)

        # The stream subscriber, reconnecting with last_event_id after each
        # restart, saw every payment_intent.* event once, in commit order.
        want = {e for e, t in newest_ev.items() if t.startswith("payment_intent.")}
        deadline = time.monotonic() + 30
        while not want <= self.sub_ids and time.monotonic() < deadline:
            time.sleep(0.2)
        self.sub_stop.set()
        sub.join(10)
        print("chaos: stream %d of %d events, %s" % (len(self.sub_ids & want), len(want), dict(self.sub_log)),
              flush=True)
        if not want <= self.sub_ids:
            bad.append("stream: %d of %d payment_intent events never arrived, e.g. %s" %
                       (len(want - self.sub_ids), len(want), sorted(want - self.sub_ids)[:3]))
        if self.sub_ids - set(newest_ev):
            bad.append("stream: events that are not in /v1/events: %s" % sorted(self.sub_ids - set(newest_ev))[:3])
        if self.sub_log["out of order or repeated"]:
            bad.append("stream: %d events out of order or repeated" % self.sub_log["out of order or repeated"])

        # A request sent again with its key gets the answer it got (after
        # the kills and the restarts too), marked as replayed, and changes
        # nothing.
        sample = random.Random(SEED).sample(self.answers, min(150, len(self.answers)))
        for method, path, params, key, first in sample:
            again = c.request(method, path, params, idem=key)
            if (again.status, again.json) != (first.status, first.json) or \
                    again.headers.get("Idempotent-Replayed") != "true":
                bad.append("%s %s with key %s: first %d %s, again %d %s (replayed: %s)" % (
                    method, path, key, first.status, str(first.json)[:120], again.status, str(again.json)[:120],
                    again.headers.get("Idempotent-Replayed")))
        self.events["replays checked"] = len(sample)

        # A card saved with a payment (setup_future_usage) is the customer's
        # once the payment was authorized, and only then.
        attached = set()
        for cus in self.customers:
            attached |= {m["id"] for m in c.list_all("/v1/customers/%s/payment_methods" % cus)}
        saves = 0
        for pid, pi in pis.items():
            if not pi.get("setup_future_usage") or not pi.get("latest_charge"):
                continue
            ch = charges[pi["latest_charge"]]
            authorized = ch["status"] == "succeeded"
            saves += authorized
            if authorized != (ch["payment_method"] in attached):
                bad.append("%s: charge %s, its card %s %s attached to the customer" % (
                    pid, ch["status"], ch["payment_method"], "is not" if authorized else "is"))
        self.events["cards saved"] = saves
        print("chaos: %d cards saved to %d customers" % (saves, len(self.customers)), flush=True)

        # The balance transactions add up to the balance.
        txns = c.list_all("/v1/balance_transactions")
        if sum(t["amount"] for t in txns if t["currency"] == "usd") != expected_balance:
            bad.append("balance transactions add up to %d, captured less refunded %d" %
                       (sum(t["amount"] for t in txns), expected_balance))

        bal = c.get("/v1/balance").json
        total = sum(x["amount"] for k in ("available", "pending") for x in bal[k] if x["currency"] == "usd")
        if total != expected_balance:
            bad.append("balance %d, captured less refunded %d" % (total, expected_balance))
        self.assertEqual(bad, [], "seed %d:\n%s" % (SEED, "\n".join(bad[:40])))


if __name__ == "__main__":
    main()
