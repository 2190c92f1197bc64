"""[store] commit_sync = pipelined keeps every guarantee of the default: the
crash test's kill -9 cycles run with the writer committing without waiting
for the disk and a second thread fdatasyncing the WAL before any reply, and
the daemon really runs in that mode."""
import os
import urllib.request

# Before the daemon starts: the harness hands os.environ to it.
os.environ["TURNPIKE_STORE_COMMIT_SYNC"] = "pipelined"

import test_crash  # noqa: E402  (after the environment is set)
from harness import main  # noqa: E402


class PipelinedCrashTest(test_crash.CrashTest):

    def test_mode_is_pipelined(self):
        c = self.c()
        r = c.post("/v1/payment_intents", {"amount": 1234, "currency": "usd", "confirm": "true",
                                           "payment_method": "pm_card_visa"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded")
        with urllib.request.urlopen("http://%s/metrics" % self.daemon.addr, timeout=10) as resp:
            text = resp.read().decode()
        counts = [line for line in text.splitlines()
                  if line.startswith("turnpike_store_sync_duration_seconds_count")]
        self.assertTrue(counts, "no sync metric: not running pipelined")
        self.assertGreater(float(counts[0].split()[-1]), 0)


if __name__ == "__main__":
    main()
