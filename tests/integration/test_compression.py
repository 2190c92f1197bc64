"""Objects at rest are zstd frames with the built-in dictionary
(src/store/zjson.h): they are stored as BLOBs much smaller than their JSON,
the API returns the same objects, `[store] compress = off` stores plain
text, and a store holding both forms reads every object after a restart
in either mode."""
import json

from harness import (Daemon, ZSTD_MAGIC, main, new_key, open_db_ro, stored_json)
import unittest

PI = "/v1/payment_intents"


def pay(c, amount):
    r = c.post(PI, {"amount": amount, "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa",
                    "description": "order %d" % amount, "metadata[order]": str(amount)}, idem=new_key())
    assert r.status == 200, r
    return r


class CompressionTest(unittest.TestCase):

    def setUp(self):
        self.d = Daemon()
        self.d.create_merchant("m")

    def tearDown(self):
        self.d.cleanup()

    def rows(self, pi_id):
        db = open_db_ro(self.d)
        try:
            pi = db.execute("SELECT data FROM payment_intents WHERE id = ?", (pi_id,)).fetchone()[0]
            evs = [r[0] for r in db.execute("SELECT data FROM events WHERE object_id = ?", (pi_id,))]
            (body,) = db.execute("SELECT body FROM idempotency WHERE body IS NOT NULL "
                                 "ORDER BY rowid DESC LIMIT 1").fetchone()
            return pi, evs, body
        finally:
            db.close()

    def test_compressed_by_default_plain_when_off_and_both_read_back(self):
        self.d.start()
        c = self.d.client("m")
        first = pay(c, 1111)
        pi, evs, body = self.rows(first.json["id"])
        for v in [pi, body] + evs:
            self.assertIsInstance(v, bytes)
            self.assertTrue(v.startswith(ZSTD_MAGIC))
        self.assertEqual(json.loads(stored_json(pi)), first.json, "stored object is the reply")
        self.assertEqual(stored_json(body), first.body.decode(), "stored reply is the reply, byte for byte")
        self.assertLess(len(pi), len(stored_json(pi)) // 3, "compressed at least 3x")
        self.assertEqual(len(evs), 2)  # payment_intent.created and .succeeded
        self.d.stop()

        self.d.start(config="[store]\ncompress = off\n")
        c = self.d.client("m")
        second = pay(c, 2222)
        pi2, evs2, body2 = self.rows(second.json["id"])
        for v in [pi2, body2] + evs2:
            self.assertIsInstance(v, str, "compress = off stores text")
        self.assertEqual(json.loads(pi2), second.json)
        self.assertEqual(c.get(PI + "/" + first.json["id"]).json, first.json, "compressed row read with off")
        self.d.stop()

        self.d.start()
        c = self.d.client("m")
        for r in (first, second):
            self.assertEqual(c.get(PI + "/" + r.json["id"]).json, r.json)
        listed = c.get(PI, {"limit": 10}).json["data"]
        self.assertEqual([p["id"] for p in listed], [second.json["id"], first.json["id"]])
        types = sorted(e["type"] for e in c.get("/v1/events", {"limit": 10}).json["data"])
        self.assertEqual(types, sorted(["payment_intent.created", "charge.succeeded",
                                        "payment_intent.succeeded"] * 2))
        replay = c.post(PI, {"amount": 1111, "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa",
                             "description": "order 1111", "metadata[order]": "1111"},
                        idem=json.loads(stored_json(evs[0]))["request"]["idempotency_key"])
        self.assertEqual(replay.headers.get("Idempotent-Replayed"), "true", replay)
        self.assertEqual(replay.body, first.body, "a compressed reply replays byte for byte")


if __name__ == "__main__":
    main()
