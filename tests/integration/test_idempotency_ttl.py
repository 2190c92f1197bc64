"""Idempotency keys expire: a replay within the TTL returns the stored reply,
after it the key is as good as new, and expired keys are purged from the
store while pending marks are kept."""
import time
import unittest

from harness import Daemon, main, new_key, open_db_ro

PI = "/v1/payment_intents"


class IdempotencyTtlTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.d.create_merchant("m")
        self.d.start(config="[idempotency]\nttl_seconds = 3\npurge_interval_ms = 200\n")
        self.addCleanup(self.d.cleanup)

    def rows(self):
        db = open_db_ro(self.d)
        try:
            return db.execute("SELECT count(*) FROM idempotency").fetchone()[0]
        finally:
            db.close()

    def test_key_expires_and_is_purged(self):
        c = self.d.client("m")
        key = new_key()
        params = {"amount": 700, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
        first = c.post(PI, params, idem=key)
        self.assertEqual(first.status, 200, first)
        again = c.post(PI, params, idem=key)
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true", again)
        self.assertEqual(again.json["id"], first.json["id"])
        self.assertGreaterEqual(self.rows(), 1)
        # after the TTL the key no longer replays: a new payment is made
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.rows() > 0:
            time.sleep(0.2)
        self.assertEqual(self.rows(), 0, "expired keys were not purged")
        fresh = c.post(PI, params, idem=key)
        self.assertEqual(fresh.status, 200, fresh)
        self.assertNotEqual(fresh.headers.get("Idempotent-Replayed"), "true", fresh)
        self.assertNotEqual(fresh.json["id"], first.json["id"])
        # and the new use is kept again for the TTL
        replay = c.post(PI, params, idem=key)
        self.assertEqual(replay.json["id"], fresh.json["id"])
        self.assertEqual(replay.headers.get("Idempotent-Replayed"), "true", replay)


if __name__ == "__main__":
    main()
