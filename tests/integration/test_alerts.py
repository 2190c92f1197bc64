"""Alerting with dynamic baselines, end to end through the sandbox: a steady
stream of approvals teaches the baseline, a decline spike (test card
4000000000000002) opens turnpike.alert.opened (events API, log, metric),
approvals again resolve it with turnpike.alert.resolved. Small buckets keep
the whole run well under 30 s."""
import json
import threading
import time

from harness import PAN_DECLINE, PAN_OK, Client, Daemon, DaemonTestCase, HOST, Sim, card, main

PI = "/v1/payment_intents"
CONFIG = """
[alerts]
bucket_ms = 200
min_samples = 3
warmup_buckets = 8
open_after = 2
resolve_after = 3
min_abs_rate = 0.3
"""


class Traffic:
    """threads x confirmed payments with the current card until stopped."""

    def __init__(self, client, threads=3):
        self.client, self.pan = client, PAN_OK
        self.stop_flag = threading.Event()
        self.count = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        while not self.stop_flag.is_set():
            r = self.client.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true",
                                      "payment_method_data": card(self.pan)})
            if r.status not in (200, 402):
                raise AssertionError("payment failed unexpectedly: %r" % (r,))
            with self.lock:
                self.count += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


class AlertsTest(DaemonTestCase):
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

    def alert_events(self, type_):
        r = self.c().get("/v1/events", {"type": type_, "limit": 100})
        self.assertEqual(r.status, 200, r)
        return [e for e in r.json["data"]
                if e["data"]["object"].get("scope") == "payments"
                and e["data"]["object"].get("signal") == "decline_rate"]

    def wait_for(self, type_, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = self.alert_events(type_)
            if evs:
                return evs[0]
            time.sleep(0.1)
        return None

    def metric(self, name, labels):
        text = Client(HOST, self.daemon.port).get("/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith("%s{%s} " % (name, labels)):
                return float(line.rsplit(" ", 1)[1])
        return None

    def test_decline_spike_opens_an_alert_and_recovery_resolves_it(self):
        t0 = time.monotonic()
        traffic = Traffic(self.c()).start()
        try:
            time.sleep(4.0)  # approvals: warm-up and a steady baseline
            self.assertEqual(self.alert_events("turnpike.alert.opened"), [],
                             "an alert opened during steady approvals")
            traffic.pan = PAN_DECLINE  # the spike
            t_spike = time.monotonic()
            opened = self.wait_for("turnpike.alert.opened", 10.0)
            self.assertIsNotNone(opened, "no turnpike.alert.opened within 10 s of the spike:\n%s"
                                 % self.daemon.log_tail())
            print("alert opened %.1f s after the decline spike began" % (time.monotonic() - t_spike))
            alert = opened["data"]["object"]
            self.assertEqual(alert["object"], "turnpike.alert")
            self.assertEqual(alert["status"], "open")
            self.assertTrue(alert["id"].startswith("alrt_"))
            self.assertGreater(alert["value"], alert["baseline"] + 0.3)
            self.assertEqual(self.metric("turnpike_alert_open", 'scope="payments",signal="decline_rate"'), 1)
            traffic.pan = PAN_OK  # recovery
            resolved = self.wait_for("turnpike.alert.resolved", 10.0)
            self.assertIsNotNone(resolved, "no turnpike.alert.resolved within 10 s of recovery")
            self.assertEqual(resolved["data"]["object"]["id"], alert["id"])
            self.assertEqual(resolved["data"]["object"]["status"], "resolved")
            self.assertIsNotNone(resolved["data"]["object"]["resolved_at"])
        finally:
            traffic.stop()
        self.assertEqual(self.metric("turnpike_alert_open", 'scope="payments",signal="decline_rate"'), 0)
        log = [json.loads(l) for l in self.daemon.log_text().splitlines() if l.startswith("{")]
        kinds = [(l["event"], l.get("alert")) for l in log if l.get("event") in ("alert_opened", "alert_resolved")
                 and l.get("scope") == "payments"]
        self.assertIn(("alert_opened", alert["id"]), kinds)
        self.assertIn(("alert_resolved", alert["id"]), kinds)
        print("alert test: %d payments in %.1f s" % (traffic.count, time.monotonic() - t0))
        self.assertLess(time.monotonic() - t0, 30)



class ProcessorDownTest(DaemonTestCase):
    """A processor down for good: its breaker opens, it gets no more calls
    (payments go to the next processor), and so no samples; its buckets
    count as all errors while the breaker is open, so the outage raises an
    error_rate alert for that processor (it raised none, where a partial
    failure did)."""
    MERCHANTS = ("m",)
    WITH_SIM = True

    @classmethod
    def config(cls):
        return ("[processor.rest]\ntype = restjson\nendpoint = http://%s/p/rest\ntimeout_ms = 2000\npriority = 1\n"
                "[processor.sb]\ntype = sandbox\npriority = 2\n" % cls.sim.rest + CONFIG)

    def test_a_processor_whose_breaker_stays_open_raises_an_alert(self):
        traffic = Traffic(self.c()).start()
        try:
            time.sleep(3.0)  # warm-up: a baseline of approvals through rest
            self.sim.faults("rest", outage=True)  # connections refused: nothing reaches it
            deadline, opened = time.monotonic() + 15, []
            while time.monotonic() < deadline and not opened:
                evs = self.c().get("/v1/events", {"type": "turnpike.alert.opened", "limit": 100}).json["data"]
                opened = [e for e in evs if e["data"]["object"]["scope"] == "rest"
                          and e["data"]["object"]["signal"] == "error_rate"]
                time.sleep(0.2)
        finally:
            self.sim.faults("rest", outage=False)
            traffic.stop()
        self.assertTrue(opened, "no error_rate alert for the processor that is down:\n%s" % self.daemon.log_tail())
        self.assertEqual(opened[0]["data"]["object"]["value"], 1.0)

if __name__ == "__main__":
    main()
