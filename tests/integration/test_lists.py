"""Lists: newest first, stable cursor paging under concurrent inserts, limit
bounds, and expansion of latest_charge and customer."""
import threading
import time

from harness import DaemonTestCase, main

PI = "/v1/payment_intents"
PRE = 30          # objects that exist before paging starts
PAGE = 7
MAX_INSERTS = 300


class ListsTest(DaemonTestCase):
    MERCHANTS = ("order", "paging", "limits", "expand", "scan", "types", "ranges", "globs")

    def create_pis(self, c, n, tag):
        ids = []
        for i in range(n):
            r = c.post(PI, {"amount": 100 + i, "currency": "usd", "description": "%s-%d" % (tag, i)})
            self.assertEqual(r.status, 200, r)
            ids.append(r.json["id"])
        return ids

    def test_lists_are_newest_first(self):
        c = self.c("order")
        pis = self.create_pis(c, 6, "order")
        custs = []
        for i in range(6):
            r = c.post("/v1/customers", {"email": "c%d@example.com" % i})
            self.assertEqual(r.status, 200, r)
            custs.append(r.json["id"])
        for path, ids in ((PI, pis), ("/v1/customers", custs)):
            with self.subTest(path):
                r = c.get(path, {"limit": 10})
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json["object"], "list", r)
                self.assertFalse(r.json["has_more"], r)
                self.assertEqual([o["id"] for o in r.json["data"]], ids[::-1])
                created = [o["created"] for o in r.json["data"]]
                self.assertEqual(created, sorted(created, reverse=True))
                r = c.get(path, {"limit": 4})
                self.assertTrue(r.json["has_more"], r)
                self.assertEqual([o["id"] for o in r.json["data"]], ids[::-1][:4])

    def test_paging_is_stable_while_another_thread_inserts(self):
        c = self.c("paging")
        pre = self.create_pis(c, PRE, "pre")
        stop = threading.Event()
        inserted = []
        errors = []

        def inserter():
            for i in range(MAX_INSERTS):
                if stop.is_set():
                    return
                r = c.post(PI, {"amount": 5000 + i, "currency": "usd"})
                if r.status == 200:
                    inserted.append(r.json["id"])
                else:
                    errors.append(r)
                time.sleep(0.01)

        t = threading.Thread(target=inserter)
        t.start()
        try:
            time.sleep(0.1)
            # forward: newest to oldest with starting_after
            seen, params = [], {"limit": PAGE}
            for _ in range(200):
                r = c.get(PI, params)
                self.assertEqual(r.status, 200, r)
                data = r.json["data"]
                self.assertLessEqual(len(data), PAGE)
                seen.extend(o["id"] for o in data)
                if not r.json["has_more"]:
                    break
                params["starting_after"] = data[-1]["id"]
            else:
                self.fail("forward paging did not end")
            self.assertEqual(len(seen), len(set(seen)), "duplicates in forward paging")
            self.assertEqual(seen[-PRE:], pre[::-1], "forward paging lost or reordered objects")

            # backward: oldest to newest with ending_before
            back, cursor = [], pre[0]
            for _ in range(200):
                r = c.get(PI, {"limit": PAGE, "ending_before": cursor})
                self.assertEqual(r.status, 200, r)
                data = r.json["data"]
                self.assertLessEqual(len(data), PAGE)
                ids = [o["id"] for o in data]
                # a page is still newest first, and holds the objects right after the cursor
                back.extend(ids[::-1])
                if not data or not r.json["has_more"]:
                    break
                cursor = data[0]["id"]
            else:
                self.fail("backward paging did not end")
            self.assertEqual(len(back), len(set(back)), "duplicates in backward paging")
            self.assertEqual(back[:PRE - 1], pre[1:], "backward paging lost or reordered objects")
        finally:
            stop.set()
            t.join(60)
        self.assertEqual(errors[:5], [])
        self.assertGreater(len(inserted), 0, "the inserter made no objects")
        # everything is there afterwards, once each, in creation order
        everything = [o["id"] for o in c.list_all(PI)]
        self.assertEqual(everything, (pre + inserted)[::-1])

    def test_a_filtered_page_is_never_empty_with_has_more(self):
        """Events by a wildcard type or types[] are read through the type
        index, type by type, so 10,050 newer events of another type are
        passed over without being read, and a filter that matches nothing
        answers an empty page without has_more (an empty page with has_more
        gives no item to go on from: stripe-node's auto-paging throws). The
        events are written into the store beside the daemon (plain JSON,
        which the store reads as it reads its frames)."""
        import sqlite3
        c = self.c("scan")
        pi = c.post(PI, {"amount": 500, "currency": "usd"}).json
        merchant = self.daemon.merchants["scan"]["id"]
        ev = c.get("/v1/events", {"type": "payment_intent.created"}).json["data"]
        self.assertEqual([e["data"]["object"]["id"] for e in ev], [pi["id"]])
        db = sqlite3.connect(self.daemon.db_path(), timeout=30)
        try:
            rows = []
            for i in range(10050):
                eid = "evt_zzzz%012d" % i  # sorts after every real id
                rows.append((eid, merchant, ev[0]["created"], "test.noise", "x",
                             '{"id":"%s","object":"event","type":"test.noise","created":%d,"data":{"object":{}}}'
                             % (eid, ev[0]["created"])))
            db.executemany("INSERT INTO events(id, merchant, created, type, object_id, data) "
                           "VALUES(?,?,?,?,?,?)", rows)
            db.commit()
        finally:
            db.close()
        r = c.get("/v1/events", {"type": "payment_intent.*", "limit": 10})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(([e["id"] for e in r.json["data"]], r.json["has_more"]), ([ev[0]["id"]], False))
        r = c.get("/v1/events", {"types": ["charge.*", "customer.*"]})
        self.assertEqual((r.json["data"], r.json["has_more"]), ([], False))

    def test_event_type_wildcards_match_as_globs_in_bounded_time(self):
        """A wildcard matches any run of characters, wherever it stands; a
        pattern of many stars before a character that never matches is
        answered at once (the recursive matcher took C(n+k, k) steps: 15
        stars held every HTTP thread for minutes)."""
        c = self.c("globs")
        c.post(PI, {"amount": 777, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        c.post("/v1/customers", {"name": "glob"})
        every = c.get("/v1/events", {"limit": 100}).json["data"]
        import fnmatch
        for pat in ("*.succeeded", "pay*intent.*", "*", "*t*e*d", "charge.*d", "**.created", "c*c*c*"):
            with self.subTest(pat=pat):
                want = [e["id"] for e in every if fnmatch.fnmatchcase(e["type"], pat)]
                got = c.get("/v1/events", {"type": pat, "limit": 100}).json["data"]
                self.assertEqual([e["id"] for e in got], want)
        for params in ({"type": "*" * 60 + "#"}, {"types": ["*" * 60 + "#", "*" * 59 + "z"]},
                       {"type": "*" * 60 + "#", "delivery_success": "true"}):
            r = c.get("/v1/events", params, timeout=20)
            self.assertEqual((r.status, r.json["data"]), (200, []), r)

    def test_events_by_several_types_page_both_ways_as_the_whole_list_does(self):
        """types[] and wildcards merge one indexed page per matching type:
        paging forward (starting_after) and back (ending_before) with a small
        limit gives exactly the whole list's matching events, in order."""
        c = self.c("types")
        for i in range(4):
            c.post(PI, {"amount": 500 + i, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
            c.post("/v1/customers", {"name": "t%d" % i})
        every = c.get("/v1/events", {"limit": 100}).json["data"]
        for params, wanted in [({"types": ["charge.succeeded", "customer.created"]},
                                lambda t: t in ("charge.succeeded", "customer.created")),
                               ({"type": "payment_intent.*"}, lambda t: t.startswith("payment_intent.")),
                               ({"types": ["customer.*", "charge.succeeded"]},
                                lambda t: t.startswith("customer.") or t == "charge.succeeded")]:
            with self.subTest(params=params):
                expected = [e["id"] for e in every if wanted(e["type"])]
                self.assertEqual(len(expected), 8)
                got, cursor = [], None
                for _ in range(10):
                    q = dict(params, limit=3)
                    if cursor:
                        q["starting_after"] = cursor
                    page = c.get("/v1/events", q).json
                    got += [e["id"] for e in page["data"]]
                    if not page["has_more"]:
                        break
                    cursor = page["data"][-1]["id"]
                self.assertEqual(got, expected)
                # back from the oldest: pages of the 3 just newer, newest first within each
                back, cursor = [], expected[-1]
                for _ in range(10):
                    page = c.get("/v1/events", dict(params, limit=3, ending_before=cursor)).json
                    back = [e["id"] for e in page["data"]] + back
                    if not page["has_more"]:
                        break
                    cursor = page["data"][0]["id"]
                self.assertEqual(back, expected[:-1])

    def test_created_ranges_answer_what_the_whole_list_holds(self):
        """A lower created bound also bounds the ids (they begin with their
        creation time): every range gives exactly the whole list's rows in
        it, for objects and for events by type."""
        c = self.c("ranges")
        for i in range(3):
            c.post(PI, {"amount": 900 + i, "currency": "usd"})
            time.sleep(1.05)
        every = c.get(PI, {"limit": 100}).json["data"]
        events = c.get("/v1/events", {"type": "payment_intent.created", "limit": 100}).json["data"]
        for at in sorted({p["created"] for p in every}):
            for op, keep in [("gte", lambda x: x >= at), ("gt", lambda x: x > at), ("lte", lambda x: x <= at),
                             ("lt", lambda x: x < at)]:
                with self.subTest(created=at, op=op):
                    got = c.get(PI, {"created[%s]" % op: at, "limit": 100}).json["data"]
                    self.assertEqual([p["id"] for p in got], [p["id"] for p in every if keep(p["created"])])
                    got = c.get("/v1/events", {"type": "payment_intent.created", "created[%s]" % op: at,
                                               "limit": 100}).json["data"]
                    self.assertEqual([e["id"] for e in got], [e["id"] for e in events if keep(e["created"])])
        # bounds together are their intersection; one nothing passes empties the list
        ats = sorted({p["created"] for p in every})
        got = c.get(PI, {"created[gte]": ats[-1], "created[gt]": ats[0], "limit": 100}).json["data"]
        self.assertEqual([p["id"] for p in got], [p["id"] for p in every if p["created"] >= ats[-1]])
        got = c.get(PI, {"created[gt]": ats[-1], "created[gte]": ats[0], "limit": 100}).json["data"]
        self.assertEqual(got, [])
        for bound in ({"created[gt]": 2 ** 63 - 1}, {"created[lt]": -2 ** 63}):
            with self.subTest(bound=bound):
                r = c.get(PI, dict(bound, limit=100))
                self.assertEqual((r.status, r.json["data"], r.json["has_more"]), (200, [], False), r)

    def test_limit_must_be_between_1_and_100(self):
        c = self.c("limits")
        self.create_pis(c, 3, "lim")
        for bad in ("0", "101", "-1", "abc", "1.5"):
            with self.subTest(limit=bad):
                r = c.get(PI, {"limit": bad})
                self.assertStripeError(r, 400, "invalid_request_error", param="limit")
        r = c.get(PI, {"limit": 1})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 1)
        self.assertTrue(r.json["has_more"])
        r = c.get(PI, {"limit": 100})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 3)
        r = c.get(PI)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 3)

    def test_unknown_cursor_is_refused(self):
        c = self.c("limits")
        r = c.get(PI, {"starting_after": "pi_doesnotexist000000000000"})
        self.assertGreaterEqual(r.status, 400, r)
        self.assertLess(r.status, 500, r)
        # Stripe: invalid_request_error "No such ...", param starting_after
        self.assertStripeError(r, r.status, "invalid_request_error", param="starting_after")

    def test_both_cursors_are_refused(self):
        c = self.c("limits")
        ids = [c.post("/v1/customers", {}).json["id"] for _ in range(3)]
        r = c.get("/v1/customers", {"starting_after": ids[2], "ending_before": ids[0]})
        self.assertStripeError(r, 400, "invalid_request_error", param="ending_before")
        self.assertIn("only one", r.json["error"]["message"])
        r = c.get("/v1/events", {"starting_after": "evt_x", "ending_before": "evt_y", "types[]": "customer.*"})
        self.assertStripeError(r, 400, "invalid_request_error", param="ending_before")

    def test_expand_latest_charge(self):
        c = self.c("expand")
        r = c.post(PI, {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa",
                        "confirm": "true"})
        self.assertEqual(r.status, 200, r)
        pi = r.json
        self.assertIsInstance(pi["latest_charge"], str, r)
        self.assertTrue(pi["latest_charge"].startswith("ch_"), r)
        r = c.get(PI + "/" + pi["id"], [("expand[]", "latest_charge")])
        self.assertEqual(r.status, 200, r)
        ch = r.json["latest_charge"]
        self.assertIsInstance(ch, dict, r)
        self.assertEqual(ch["object"], "charge")
        self.assertEqual(ch["id"], pi["latest_charge"])
        self.assertEqual(ch["amount"], 2500)
        self.assertEqual(ch["payment_intent"], pi["id"])
        self.assertEqual(ch["status"], "succeeded")
        # the same charge through its own endpoint
        r2 = c.get("/v1/charges/" + ch["id"])
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.json["amount_captured"], 2500, r2)

    def test_expand_nested_balance_transaction(self):
        """expand[]=latest_charge.balance_transaction expands the charge and the
        balance transaction inside it, also in the reply of the confirmation
        that posted it (before it was readable from the store)."""
        c = self.c("expand")
        nested = [("expand[]", "latest_charge.balance_transaction")]

        def check_txn(ch, amount, type_):
            txn = ch["balance_transaction"]
            self.assertIsInstance(txn, dict, ch)
            self.assertEqual((txn["object"], txn["amount"], txn["type"], txn["source"]),
                             ("balance_transaction", amount, type_, ch["id"]))
            return txn

        pay = [("amount", "3100"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")]
        r = c.post(PI, pay + nested)
        self.assertEqual(r.status, 200, r)
        txn = check_txn(r.json["latest_charge"], 3100, "charge")
        got = c.get(PI + "/" + r.json["id"], nested)
        self.assertEqual(check_txn(got.json["latest_charge"], 3100, "charge"), txn)
        self.assertEqual(c.get("/v1/balance_transactions/" + txn["id"]).json, txn)
        # a manual capture, and a list with data. in front
        m = c.post(PI, pay + [("capture_method", "manual")]).json
        cap = c.post(PI + "/" + m["id"] + "/capture", [("amount_to_capture", "2000")] + nested)
        self.assertEqual(cap.status, 200, cap)
        check_txn(cap.json["latest_charge"], 2000, "charge")
        lst = c.get(PI, [("limit", "2"), ("expand[]", "data.latest_charge.balance_transaction")])
        self.assertEqual([p["id"] for p in lst.json["data"]], [m["id"], r.json["id"]])
        for p_ in lst.json["data"]:
            check_txn(p_["latest_charge"], p_["amount_received"], "charge")
        # a list's items are expanded under "data."; the list has no such field
        bad = c.get(PI, [("limit", "2"), ("expand[]", "latest_charge")])
        err = self.assertStripeError(bad, 400, "invalid_request_error", param="expand")
        self.assertIn("data.latest_charge", err["message"])
        # a refund's own balance transaction, in the refund's reply
        ref = c.post("/v1/refunds", [("payment_intent", r.json["id"]), ("amount", "600"),
                                     ("expand[]", "balance_transaction")])
        self.assertEqual(ref.status, 200, ref)
        rt = ref.json["balance_transaction"]
        self.assertEqual((rt["object"], rt["amount"], rt["type"], rt["source"]),
                         ("balance_transaction", -600, "refund", ref.json["id"]))

    def test_expand_customer(self):
        c = self.c("expand")
        r = c.post("/v1/customers", {"email": "expand@example.com", "name": "Ex Pand"})
        self.assertEqual(r.status, 200, r)
        cus = r.json["id"]
        r = c.post(PI, {"amount": 900, "currency": "usd", "customer": cus})
        self.assertEqual(r.status, 200, r)
        pi = r.json["id"]
        self.assertEqual(r.json["customer"], cus, r)
        r = c.get(PI + "/" + pi, [("expand[0]", "customer")])
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json["customer"], dict, r)
        self.assertEqual(r.json["customer"]["id"], cus)
        self.assertEqual(r.json["customer"]["object"], "customer")
        self.assertEqual(r.json["customer"]["email"], "expand@example.com")
        r = c.get(PI + "/" + pi)
        self.assertEqual(r.json["customer"], cus, r)
        r = c.get(PI + "/" + pi, [("expand[]", "no_such_field")])
        self.assertStripeError(r, 400, "invalid_request_error")
        for bad in ("metadata.customer", "amount.charge", ".customer", "customer.", "data"):
            r = c.get(PI + "/" + pi, [("expand[]", bad)])
            self.assertStripeError(r, 400, "invalid_request_error", param="expand")
        # an event expands alike whether or not the merchant has a webhook endpoint
        ev = [e for e in c.get("/v1/events", {"type": "payment_intent.created"}).json["data"]
              if e["data"]["object"]["id"] == pi][0]
        for _ in range(2):
            r = c.get("/v1/events/" + ev["id"], {"expand[]": "data.object.customer"})
            self.assertEqual((r.status, r.json["data"]["object"]["customer"]["id"]), (200, cus), r)
            self.assertEqual(c.post("/v1/webhook_endpoints", {"url": "http://127.0.0.1:9/h",
                                                              "enabled_events[]": "*"}).status, 200)


if __name__ == "__main__":
    main()
