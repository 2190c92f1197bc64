"""Search (GET /v1/{payment_intents,charges,customers}/search): the query
language against real stored objects, paging by next_page, merchant scoping,
and refusals that change nothing."""
import collections
import threading
import time

from harness import DaemonTestCase, main

PI = "/v1/payment_intents"


class SearchTest(DaemonTestCase):
    MERCHANTS = ("shop", "other")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.daemon.client("shop")
        cls.pis = []  # (id, amount, currency, status, metadata) oldest first
        for i in range(24):
            cur = "eur" if i % 3 == 0 else "usd"
            params = {"amount": 1000 + 100 * i, "currency": cur, "metadata[order]": "o%d" % i,
                      "metadata[parity]": "even" if i % 2 == 0 else "odd"}
            if i % 4 != 3:
                params.update({"confirm": "true",
                               "payment_method": "pm_card_mastercard" if i % 5 == 0 else "pm_card_visa"})
            r = c.post(PI, params)
            assert r.status == 200, r
            cls.pis.append(r.json)
        # a full refund on two of the charges, a partial one on a third
        cls.refunded = set()
        partly = False
        for p in cls.pis[:8]:
            if p["latest_charge"] and len(cls.refunded) < 2:
                r = c.post("/v1/refunds", {"payment_intent": p["id"]})
                assert r.status == 200, r
                cls.refunded.add(p["latest_charge"])
            elif p["latest_charge"] and not partly:
                r = c.post("/v1/refunds", {"payment_intent": p["id"], "amount": 100})
                assert r.status == 200, r
                partly = True
        cls.customers = []
        for name, email in (("Amy Rider", "amy@rocketrides.io"), ("Bob Stone", "bob@stone.example"),
                            ("Cat O'Hara", "cat@rocketrides.io"), ("Dan Gone", "dan@rocketrides.io")):
            r = c.post("/v1/customers", {"name": name, "email": email})
            assert r.status == 200, r
            cls.customers.append(r.json)
        r = c.delete("/v1/customers/" + cls.customers[3]["id"])
        assert r.status == 200, r
        r = c.post("/v1/customers", {"name": "Élodie Ærø-İnce", "email": "Élodie@Exemple.fr"})
        assert r.status == 200, r
        cls.elodie = r.json
        # the other merchant holds look-alikes that must never show
        o = cls.daemon.client("other")
        for i in range(5):
            r = o.post(PI, {"amount": 1000 + 100 * i, "currency": "usd", "metadata[order]": "o%d" % i})
            assert r.status == 200, r
        r = o.post("/v1/customers", {"name": "Amy Rider", "email": "amy@rocketrides.io"})
        assert r.status == 200, r

    def search_all(self, path, query, limit=3):
        """Every page of a search, following next_page; checks each page's shape."""
        c = self.c("shop")
        out, page, pages = [], None, 0
        while True:
            params = {"query": query, "limit": limit}
            if page:
                params["page"] = page
            r = c.get(path, params)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json["object"], "search_result", r)
            self.assertEqual(r.json["url"], path, r)
            self.assertLessEqual(len(r.json["data"]), limit, r)
            out += r.json["data"]
            pages += 1
            self.assertLess(pages, 50, "paging does not end")
            if not r.json["has_more"]:
                self.assertIsNone(r.json["next_page"], r)
                return out
            self.assertTrue(r.json["next_page"], r)
            page = r.json["next_page"]

    def test_a_page_token_is_for_its_own_resource(self):
        c = self.c("shop")
        r = c.get(PI + "/search", {"query": "currency:'usd'", "limit": 1})
        self.assertTrue(r.json["has_more"], r)
        r = c.get("/v1/customers/search", {"query": "name~'amy'", "page": r.json["next_page"]})
        self.assertStripeError(r, 400, "invalid_request_error", param="page")

    def test_search_needs_api_version_2020_08_27(self):
        """Stripe: "The minimum supported API Version to use search is
        2020-08-27" (a request pinned before was answered in the old shape)."""
        c = self.c("shop")
        for path in (PI + "/search", "/v1/charges/search", "/v1/customers/search"):
            for v in ("2019-12-03", "2020-03-02"):
                r = c.get(path, {"query": "created>0"}, headers={"Stripe-Version": v})
                err = self.assertStripeError(r, 400, "invalid_request_error")
                self.assertEqual(err["tp_code"], 1116, err)
            for v in ("2020-08-27", "2022-11-15"):
                self.assertEqual(c.get(path, {"query": "created>0"}, headers={"Stripe-Version": v}).status, 200)

    def current(self, kind, ids):
        c = self.c("shop")
        return [c.get("/v1/%s/%s" % (kind, i)).json for i in ids]

    def test_payment_intents(self):
        pis = self.current("payment_intents", [p["id"] for p in self.pis])
        cases = {
            "currency:'eur'": lambda p: p["currency"] == "eur",
            "status:\"succeeded\" AND amount>=2000": lambda p: p["status"] == "succeeded" and p["amount"] >= 2000,
            "metadata['parity']:'odd' amount<1500": lambda p: p["metadata"]["parity"] == "odd" and p["amount"] < 1500,
            "status:'requires_payment_method' OR metadata[\"order\"]:'o5'":
                lambda p: p["status"] == "requires_payment_method" or p["metadata"]["order"] == "o5",
            "-currency:'usd'": lambda p: p["currency"] != "usd",
            "metadata['missing']:null": lambda p: True,
            "-metadata['order']:null AND customer:null": lambda p: True,
            "amount:1700": lambda p: p["amount"] == 1700,
        }
        for q, pred in cases.items():
            with self.subTest(q):
                want = [p["id"] for p in reversed(pis) if pred(p)]
                self.assertTrue(want, "a case that matches nothing proves little")
                got = [p["id"] for p in self.search_all(PI + "/search", q)]
                self.assertEqual(got, want)
                # expand[]=total_count: every match, whatever the page
                r = self.c("shop").get(PI + "/search", {"query": q, "limit": 2, "expand": ["total_count"]})
                self.assertEqual((r.json["total_count"], len(r.json["data"])), (len(want), min(2, len(want))), r)
        r = self.c("shop").get(PI + "/search", {"query": "currency:'jpy'"})
        self.assertNotIn("total_count", r.json)  # only when expanded, as on Stripe
        r = self.c("shop").get("/v1/charges/search", {"query": "metadata['parity']:'odd'",
                                                      "expand": ["total_count", "data.payment_intent"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["total_count"], len(r.json["data"]), r)
        self.assertTrue(all(isinstance(ch["payment_intent"], dict) for ch in r.json["data"]), r)
        r = self.c("shop").get(PI + "/search", {"query": "currency:'eur'", "expand": ["count"]})
        self.assertStripeError(r, 400, param="expand")

    def test_charges(self):
        ch_ids = [p["latest_charge"] for p in self.pis if p["latest_charge"]]
        charges = self.current("charges", ch_ids)
        cases = {
            "refunded:true": lambda ch: ch["refunded"],
            "payment_method_details.card.last4:'4444'":
                lambda ch: ch["payment_method_details"]["card"]["last4"] == "4444",
            # Stripe: refunded:false is partly refunded, refunded:null not at all
            "payment_method_details.card.brand:'visa' AND refunded:null AND currency:'usd'":
                lambda ch: ch["payment_method_details"]["card"]["brand"] == "visa" and ch["amount_refunded"] == 0
                and ch["currency"] == "usd",
            "refunded:FALSE": lambda ch: ch["amount_refunded"] > 0 and not ch["refunded"],
            "payment_method_details.card.last4:4444":
                lambda ch: ch["payment_method_details"]["card"]["last4"] == "4444",
            "status:'succeeded' disputed:false": lambda ch: ch["status"] == "succeeded",
        }
        for q, pred in cases.items():
            with self.subTest(q):
                want = [ch["id"] for ch in reversed(charges) if pred(ch)]
                self.assertTrue(want)
                got = [ch["id"] for ch in self.search_all("/v1/charges/search", q, limit=2)]
                self.assertEqual(got, want)
        self.assertEqual({ch["id"] for ch in charges if ch["refunded"]}, self.refunded)
        one = self.pis[1]
        r = self.c("shop").get("/v1/charges/search", {"query": "payment_intent:'%s'" % one["id"],
                                                       "expand[]": "data.payment_intent"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 1, r)
        self.assertEqual(r.json["data"][0]["payment_intent"]["id"], one["id"])

    def test_customers(self):
        cu = self.customers
        got = [x["id"] for x in self.search_all("/v1/customers/search", "email~'rocketrides'")]
        self.assertEqual(got, [cu[2]["id"], cu[0]["id"]])  # the deleted one is gone
        got = [x["id"] for x in self.search_all("/v1/customers/search", "name:'cat o\\'hara'")]
        self.assertEqual(got, [cu[2]["id"]])
        got = [x["id"] for x in self.search_all("/v1/customers/search", "email:'BOB@stone.example' OR name~'rid'")]
        self.assertEqual(got, [cu[1]["id"], cu[0]["id"]])

    def test_case_folds_beyond_ascii(self):
        want = [self.elodie["id"]]
        for q in ("name:'élodie'", "name:'ÉLODIE ærø-İnce'", "name~'ærø'", "name~'ÆRØ'",
                  "email:'élodie@exemple.fr'", "email~'ÉLODIE@'"):
            got = [x["id"] for x in self.search_all("/v1/customers/search", q)]
            self.assertEqual(got, want, q)
        for q in ("name:'elodie'", "name~'aero'"):  # folding is of case, not of accents
            self.assertEqual(self.search_all("/v1/customers/search", q), [], q)
        # nor of a letter whose lower case is ASCII (İ): an email clause reads an index
        # folded as SQLite's lower() folds, ASCII from ASCII only, and so does the walk
        c = self.c("shop")
        ince = c.post("/v1/customers", {"email": "İnce@x.io"}).json
        try:
            for q in ("email:'ince@x.io'", "email:'ince@x.io' OR name:'nobody here'", "email~'ince@x'"):
                self.assertEqual(self.search_all("/v1/customers/search", q), [], q)
            for q in ("email:'İnce@x.io'", "email:'İNCE@X.IO' OR name:'nobody here'"):
                self.assertEqual([x["id"] for x in self.search_all("/v1/customers/search", q)], [ince["id"]], q)
        finally:
            c.delete("/v1/customers/" + ince["id"])

    def test_other_merchant_sees_only_its_own(self):
        o = self.c("other")
        r = o.get(PI + "/search", {"query": "amount>0", "limit": 100})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["data"]), 5, r)
        mine = {p["id"] for p in self.pis}
        self.assertFalse(mine & {p["id"] for p in r.json["data"]})
        r = o.get("/v1/customers/search", {"query": "email~'rocket'"})
        self.assertEqual(len(r.json["data"]), 1, r)
        self.assertNotIn(r.json["data"][0]["id"], {x["id"] for x in self.customers})

    def test_refusals(self):
        c = self.c("shop")
        before = c.get(PI, {"limit": 100}).json["data"]
        bad = [
            ({}, 400, "parameter_missing", "query"),
            ({"query": ""}, 400, "parameter_invalid_string", "query"),
            ({"query": "email:'a@b.c'"}, 400, "parameter_invalid_string", "query"),
            ({"query": "amount:1 OR amount:2 AND amount:3"}, 400, "parameter_invalid_string", "query"),
            ({"query": "status:succeeded"}, 400, "parameter_invalid_string", "query"),
            ({"query": "amount>1", "limit": 0}, 400, "parameter_invalid_integer", "limit"),
            ({"query": "amount>1", "limit": 101}, 400, "parameter_invalid_integer", "limit"),
            ({"query": "amount>1", "page": "pi_x'; DROP TABLE x"}, 400, "parameter_invalid_string", "page"),
            ({"query": "amount>1", "colour": "red"}, 400, "parameter_unknown", "colour"),
            ({"query": "amount:1 4242424242424242"}, 400, "parameter_invalid_string", "query"),
        ]
        for params, status, code, param in bad:
            with self.subTest(params):
                r = c.get(PI + "/search", params)
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.json["error"]["type"], "invalid_request_error", r)
                self.assertEqual(r.json["error"]["code"], code, r)
                self.assertEqual(r.json["error"].get("param"), param, r)
                self.assertNotIn("4242424242", r.body.decode(), r)
        self.assertEqual(c.get(PI, {"limit": 100}).json["data"], before)
        # a publishable key may not search
        from harness import Client
        d = self.daemon
        pk = Client(d.host, d.port, key=d.merchants["shop"]["publishable_key"], auth="bearer",
                    ssl_context=d.ssl_context)
        r = pk.get(PI + "/search", {"query": "amount>1"})
        self.assertEqual(r.status, 403, r)  # Stripe: a permission error



class SearchBudgetTest(DaemonTestCase):
    """A rare match under a small scan budget: short pages, each ending with
    has_more and a next_page, and following them finds every match once."""
    MERCHANTS = ("b",)

    @classmethod
    def config(cls):
        return "[search]\nmax_scan_rows = 10\n"

    def test_short_pages_still_find_everything(self):
        c = self.c("b")
        want = []
        for i in range(45):
            r = c.post(PI, {"amount": 1000 + i, "currency": "usd", "metadata[rare]": "yes" if i % 11 == 4 else "no"})
            self.assertEqual(r.status, 200, r)
            if i % 11 == 4:
                want.append(r.json["id"])
        got, page, pages, short = [], None, 0, 0
        while True:
            # negated, so no index drives it (metadata['rare']:'yes' would
            # read the metadata index: MetadataIndexTest)
            params = {"query": "-metadata['rare']:'no' AND amount>=1000 AND amount<1045", "limit": 3}
            if page:
                params["page"] = page
            r = c.get(PI + "/search", params)
            self.assertEqual(r.status, 200, r)
            got += [p["id"] for p in r.json["data"]]
            pages += 1
            self.assertLess(pages, 20)
            if not r.json["has_more"]:
                break
            short += len(r.json["data"]) < 3
            page = r.json["next_page"]
        self.assertEqual(got, want[::-1])
        self.assertGreaterEqual(pages, 2, "45 rows at 10 a request: the budget ends pages early")
        self.assertGreater(short, 0, "some page ended early on the budget")
        # but never empty while has_more: stripe-python and stripe-go stop
        # paging at the first empty page (a page reads on, up to 20 budgets,
        # until it has a match)
        r = c.get(PI + "/search", {"query": "-metadata['rare']:'no' AND amount>=1000 AND amount<1001"})
        self.assertEqual(([p["amount"] for p in r.json["data"]], r.json["has_more"]), ([], False), r)

    def test_a_customer_clause_reads_only_that_customers_rows(self):
        """customer:'cus_…' (and a charge's payment_intent:'pi_…') walks the
        column's index: the customer's payments among 45 others come in one
        page under a budget of 10 rows, the rest of the query still applied."""
        c = self.c("b")
        cus = c.post("/v1/customers", {"name": "rare"}).json["id"]
        mine = []
        for i in range(4):
            r = c.post(PI, {"amount": 700 + i, "currency": "usd", "customer": cus, "confirm": "true",
                            "payment_method": "pm_card_visa"})
            self.assertEqual(r.status, 200, r)
            mine.append(r.json)
        for i in range(45):
            c.post(PI, {"amount": 900, "currency": "usd"})
        r = c.get(PI + "/search", {"query": "customer:'%s'" % cus, "limit": 10})
        self.assertEqual(([p["id"] for p in r.json["data"]], r.json["has_more"]),
                         ([p["id"] for p in reversed(mine)], False))
        r = c.get(PI + "/search", {"query": "customer:'%s' AND amount>=702" % cus})
        self.assertEqual([p["amount"] for p in r.json["data"]], [703, 702])
        r = c.get(PI + "/search", {"query": "customer:'%s' OR amount:900" % cus, "limit": 3})
        self.assertTrue(r.json["has_more"])  # OR: no index drives it, the budget applies
        r = c.get("/v1/charges/search", {"query": "payment_intent:'%s'" % mine[1]["id"]})
        self.assertEqual(([ch["id"] for ch in r.json["data"]], r.json["has_more"]),
                         ([mine[1]["latest_charge"]], False))
        r = c.get(PI + "/search", {"query": "-customer:'%s' AND amount:701" % cus})
        self.assertEqual(r.json["data"], [])


class SearchConcurrencyTest(DaemonTestCase):
    """A search holds an HTTP thread while it reads: past [search]
    max_concurrent running at once, one is answered 429 at once (rate_limit,
    which the SDKs retry), so one merchant's searches cannot hold every
    thread while other merchants' payments wait."""
    MERCHANTS = ("s", "p")

    @classmethod
    def config(cls):
        return "[search]\nmax_concurrent = 1\n"

    def test_searches_past_the_limit_are_refused_not_queued(self):
        c = self.c("s")
        for i in range(300):
            self.assertEqual(c.post(PI, {"amount": 1000 + i, "currency": "usd"}).status, 200)
        out = []

        def run():
            cl = self.c("s")
            for _ in range(15):
                r = cl.get(PI + "/search", {"query": "amount:1 AND -currency:'eur'"})
                out.append((r.status, r.json.get("error", {}).get("tp_code"), r.headers.get("Stripe-Should-Retry")))
        ts = [threading.Thread(target=run) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        codes = collections.Counter(o[0] for o in out)
        self.assertEqual(set(codes) - {200, 429}, set(), out)
        self.assertGreater(codes[429], 0, "six clients against a limit of one: some were refused")
        self.assertGreater(codes[200], 0)
        self.assertEqual({(o[1], o[2]) for o in out if o[0] == 429}, {(2034, "true")})
        # payments meanwhile and afterwards go on
        r = self.c("p").post(PI, {"amount": 500, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(c.get(PI + "/search", {"query": "amount:1000"}).status, 200)


class SearchFairnessTest(DaemonTestCase):
    """One merchant holds at most half of [search] max_concurrent: another
    merchant's searches find a slot while the first searches in a loop."""
    MERCHANTS = ("s", "p")

    @classmethod
    def config(cls):
        # threads enough for one merchant's six clients to hold both slots (with two
        # threads the gateway-wide cap alone could never starve the other merchant)
        return "[server]\nthreads = 8\n[search]\nmax_concurrent = 2\n"

    def test_one_merchant_cannot_take_every_search_slot(self):
        # enough rows that a search finding nothing holds its slot a while
        def fill(n):
            cl = self.c("s")
            for i in range(n):
                self.assertEqual(cl.post(PI, {"amount": 1000 + i, "currency": "usd"}).status, 200)
        fillers = [threading.Thread(target=fill, args=(500,)) for _ in range(4)]
        for t in fillers:
            t.start()
        for t in fillers:
            t.join(300)
        out, theirs, stop = [], [], threading.Event()

        def run():
            cl = self.c("s")
            while not stop.is_set() and len(out) < 20000:
                r = cl.get(PI + "/search", {"query": "amount:1 AND -currency:'eur'"})
                out.append(r.status)
                if r.status == 429:
                    time.sleep(0.01)  # the SDKs back off too
        ts = [threading.Thread(target=run) for _ in range(8)]
        for t in ts:
            t.start()
        try:
            p = self.c("p")
            time.sleep(0.3)
            for _ in range(30):
                r = p.get("/v1/customers/search", {"query": "email~'nobody'"})
                theirs.append(r.status)
        finally:
            stop.set()
            for t in ts:
                t.join(120)
        self.assertEqual(set(theirs), {200}, theirs)
        self.assertIn(429, out, "six clients of one merchant against its share of one: some were refused")
        self.assertIn(200, out)


class MetadataIndexTest(DaemonTestCase):
    """metadata['key']:'value' reads the metadata index (migration 0020):
    the objects that have the pair come newest first in full pages whatever
    the scan budget, the rest of the query still applied, through updates
    that change or clear metadata, deleted customers left out; a store from
    before the index is filled by the migration."""
    MERCHANTS = ("x", "y", "z")

    @classmethod
    def config(cls):
        return "[search]\nmax_scan_rows = 10\n"

    def noise(self, n, **extra):
        c = self.c("x")
        for i in range(n):
            params = {"amount": 900, "currency": "usd", "metadata[order]": "noise-%d" % i}
            params.update(extra)
            self.assertEqual(c.post(PI, params).status, 200)

    def ids(self, path, query, limit=10, merchant="x"):
        r = self.c(merchant).get(path, {"query": query, "limit": limit})
        self.assertEqual(r.status, 200, r)
        return [o["id"] for o in r.json["data"]], r.json["has_more"]

    def test_the_narrowest_clause_drives_the_read_whatever_the_order(self):
        """Two indexed clauses: the one naming fewer rows is read, so the
        clause order changes nothing (a broad first clause answered an empty
        page with has_more under the budget, where stripe-python stops);
        and a created upper bound starts the walk at its time, a lower one
        ends it there."""
        c = self.c("z")
        old = c.post(PI, {"amount": 4242, "currency": "usd", "metadata[batch]": "big", "metadata[i]": "0"}).json
        t_old = old["created"]
        time.sleep(7.5)  # past the ids' margin over created (5 s, and 1 s ahead)
        for i in range(1, 240):
            self.assertEqual(c.post(PI, {"amount": 900, "currency": "usd", "metadata[batch]": "big",
                                         "metadata[i]": str(i)}).status, 200)
        for q in ("metadata['batch']:'big' AND metadata['i']:'0'", "metadata['i']:'0' AND metadata['batch']:'big'"):
            self.assertEqual(self.ids(PI + "/search", q, merchant="z"), ([old["id"]], False), q)
        for q in ("created<=%d" % t_old, "created<%d AND amount:4242" % (t_old + 1), "created:%d" % t_old):
            self.assertEqual(self.ids(PI + "/search", q, merchant="z"), ([old["id"]], False), q)
        r = c.get(PI + "/search", {"query": "created<=%d" % t_old, "expand[]": "total_count"})
        self.assertEqual(r.json["total_count"], 1, r.json)
        # a customer's email clause is counted too (its index is partial: the
        # count must say so, or it failed and the broad clause drove the read)
        target = c.post("/v1/customers", {"email": "target@ex.com", "metadata[batch]": "big"}).json
        for i in range(240):
            self.assertEqual(c.post("/v1/customers", {"email": "n%d@ex.com" % i, "metadata[batch]": "big"}).status,
                             200)
        for q in ("metadata['batch']:'big' AND email:'target@ex.com'",
                  "email:'target@ex.com' AND metadata['batch']:'big'"):
            self.assertEqual(self.ids("/v1/customers/search", q, merchant="z"), ([target["id"]], False), q)
        self.assertNotIn("sqlite_prepare", self.daemon.log_text())
        # a bound past the year 8888 (ids carry the time modulo 62^8 ms) bounds nothing
        far = 219340105577
        self.assertEqual(len(self.ids(PI + "/search", "created<=%d" % far, limit=3, merchant="z")[0]), 3)
        self.assertEqual(len(c.get(PI, {"created[lte]": far, "limit": 3}).json["data"]), 3)

    def test_payment_intents_and_charges_by_metadata(self):
        c = self.c("x")
        mine = []
        for i in range(4):
            params = {"amount": 1200 + i, "currency": "usd", "metadata[order]": "A-17", "metadata[n]": str(i)}
            if i % 2 == 0:
                params.update({"confirm": "true", "payment_method": "pm_card_visa"})
            r = c.post(PI, params)
            self.assertEqual(r.status, 200, r)
            mine.append(r.json)
            self.noise(12)
        # another merchant's look-alike never shows
        self.assertEqual(self.c("y").post(PI, {"amount": 500, "currency": "usd", "metadata[order]": "A-17"}).status, 200)
        want = [p["id"] for p in reversed(mine)]
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'A-17'"), (want, False))
        # paged through the index
        first, more = self.ids(PI + "/search", "metadata['order']:'A-17'", limit=3)
        self.assertEqual((first, more), (want[:3], True))
        r = c.get(PI + "/search", {"query": "metadata['order']:'A-17'", "limit": 3})
        r = c.get(PI + "/search", {"query": "metadata['order']:'A-17'", "limit": 3, "page": r.json["next_page"]})
        self.assertEqual(([p["id"] for p in r.json["data"]], r.json["has_more"]), (want[3:], False))
        # the rest of the query still applies
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'A-17' AND status:'succeeded'"),
                         ([mine[2]["id"], mine[0]["id"]], False))
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'A-17' AND metadata['n']:'1'"),
                         ([mine[1]["id"]], False))
        r = c.get(PI + "/search", {"query": "metadata['order']:'A-17'", "limit": 1, "expand": ["total_count"]})
        self.assertEqual((r.json["total_count"], len(r.json["data"])), (4, 1), r)
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'A-1'"), ([], False))  # exact, not a prefix
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'a-17'"), ([], False))  # case-sensitive
        # a charge carries its PaymentIntent's metadata
        self.assertEqual(self.ids("/v1/charges/search", "metadata['order']:'A-17'"),
                         ([mine[2]["latest_charge"], mine[0]["latest_charge"]], False))
        # a changed value is found by the new one only; cleared metadata by neither
        self.assertEqual(c.post(PI + "/" + mine[1]["id"], {"metadata[order]": "B-9"}).status, 200)
        self.assertEqual(c.post(PI + "/" + mine[3]["id"], {"metadata": ""}).status, 200)
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'A-17'"),
                         ([mine[2]["id"], mine[0]["id"]], False))
        self.assertEqual(self.ids(PI + "/search", "metadata['order']:'B-9'"), ([mine[1]["id"]], False))
        self.assertEqual(self.ids(PI + "/search", "metadata['n']:'3'"), ([], False))
        # a charge's own metadata, updated
        ch = mine[0]["latest_charge"]
        self.assertEqual(c.post("/v1/charges/" + ch, {"metadata[shipment]": "S-1"}).status, 200)
        self.assertEqual(self.ids("/v1/charges/search", "metadata['shipment']:'S-1'"), ([ch], False))
        # OR and negation read no index: the budget applies, but a page with
        # a match is never empty with has_more (the SDKs' auto-paging stops at one)
        got, more = self.ids(PI + "/search", "metadata['order']:'A-17' OR amount:1", limit=10)
        self.assertTrue(got or not more, (got, more))
        # the other merchant finds its own
        self.assertEqual(len(self.ids(PI + "/search", "metadata['order']:'A-17'", merchant="y")[0]), 1)

    def test_a_value_that_moves_on_leaves_the_index(self):
        """Status-like metadata: 15 orders go from pending to shipped, one
        stays pending; under a budget of 10 the pending one still comes in
        the first page (the index holds each object's current values, not
        every value it ever had), and a removed key goes too."""
        c = self.c("x")
        still = c.post(PI, {"amount": 990, "currency": "usd", "metadata[fulfil]": "pending"}).json
        moved = []
        for i in range(15):
            moved.append(c.post(PI, {"amount": 991, "currency": "usd", "metadata[fulfil]": "pending",
                                     "metadata[extra]": "e"}).json)
        for p in moved:
            self.assertEqual(c.post(PI + "/" + p["id"], {"metadata[fulfil]": "shipped", "metadata[extra]": ""}).status,
                             200)
        self.assertEqual(self.ids(PI + "/search", "metadata['fulfil']:'pending'"), ([still["id"]], False))
        r = c.get(PI + "/search", {"query": "metadata['fulfil']:'shipped'", "limit": 10, "expand": ["total_count"]})
        self.assertEqual((len(r.json["data"]), r.json["total_count"]), (10, 15), r)
        self.assertEqual(self.ids(PI + "/search", "metadata['extra']:'e'"), ([], False))

    def test_emptied_metadata_leaves_the_index(self):
        """Metadata emptied by an update (metadata="" or each key unset) takes
        the object's rows out of the index, for PaymentIntents, charges and
        customers, and so does deleting a customer; an update that keeps a
        key keeps its row."""
        import sqlite3
        c = self.c("x")

        def rows(obj_id):
            db = sqlite3.connect("file:%s?mode=ro" % self.daemon.db_path(), uri=True)
            try:
                return sorted(r[0] for r in db.execute("SELECT k FROM metadata_index WHERE id = ?", (obj_id,)))
            finally:
                db.close()

        pi = c.post(PI, {"amount": 1500, "currency": "usd", "metadata[a]": "1", "metadata[b]": "2",
                         "confirm": "true", "payment_method": "pm_card_visa"}).json
        other = c.post(PI, {"amount": 1501, "currency": "usd", "metadata[a]": "1"}).json
        ch = pi["latest_charge"]
        cus = c.post("/v1/customers", {"metadata[crm]": "7"}).json
        self.assertEqual((rows(pi["id"]), rows(ch), rows(cus["id"])), (["a", "b"], ["a", "b"], ["crm"]))
        self.assertEqual(c.post(PI + "/" + pi["id"], {"metadata[b]": ""}).status, 200)
        self.assertEqual(rows(pi["id"]), ["a"])
        self.assertEqual(c.post(PI + "/" + pi["id"], {"metadata": ""}).status, 200)
        self.assertEqual(c.post("/v1/charges/" + ch, {"metadata[a]": "", "metadata[b]": ""}).status, 200)
        self.assertEqual(c.post("/v1/customers/" + cus["id"], {"metadata": ""}).status, 200)
        gone = c.post("/v1/customers", {"metadata[crm]": "7"}).json
        self.assertEqual(rows(gone["id"]), ["crm"])
        self.assertEqual(c.delete("/v1/customers/" + gone["id"]).status, 200)
        self.assertEqual(rows(gone["id"]), [])
        self.assertEqual((rows(pi["id"]), rows(ch), rows(cus["id"])), ([], [], []))
        self.assertEqual(rows(other["id"]), ["a"])
        self.assertEqual(self.ids(PI + "/search", "metadata['a']:'1'"), ([other["id"]], False))
        # metadata given again is indexed again
        self.assertEqual(c.post(PI + "/" + pi["id"], {"metadata[a]": "1"}).status, 200)
        self.assertEqual(self.ids(PI + "/search", "metadata['a']:'1'"), ([other["id"], pi["id"]], False))

    def test_customers_by_metadata(self):
        c = self.c("x")
        a = c.post("/v1/customers", {"name": "a", "metadata[crm]": "42"}).json
        self.noise(15)
        b = c.post("/v1/customers", {"name": "b"}).json
        gone = c.post("/v1/customers", {"name": "gone", "metadata[crm]": "42"}).json
        self.assertEqual(c.post("/v1/customers/" + b["id"], {"metadata[crm]": "42"}).status, 200)
        self.assertEqual(c.delete("/v1/customers/" + gone["id"]).status, 200)
        self.assertEqual(self.ids("/v1/customers/search", "metadata['crm']:'42'"), ([b["id"], a["id"]], False))

    def test_customers_by_email_read_an_index(self):
        """email:'…' is exact and ASCII case-insensitive: the customers with
        that address among many others, in one page under a budget of 10."""
        c = self.c("x")
        amy = c.post("/v1/customers", {"name": "Amy", "email": "Amy.Rider@Rocket.example"}).json
        old = c.post("/v1/customers", {"name": "Old Amy", "email": "amy.rider@rocket.example"}).json
        for i in range(15):
            self.assertEqual(c.post("/v1/customers", {"email": "someone%d@rocket.example" % i}).status, 200)
        gone = c.post("/v1/customers", {"email": "AMY.RIDER@ROCKET.EXAMPLE"}).json
        self.assertEqual(c.delete("/v1/customers/" + gone["id"]).status, 200)
        self.assertEqual(self.ids("/v1/customers/search", "email:'amy.rider@rocket.example'"),
                         ([old["id"], amy["id"]], False))
        # an exact match on a string holds the query's words in order (Stripe):
        # "Old Amy" holds "amy"; "Amy" does not hold "old amy"
        self.assertEqual(self.ids("/v1/customers/search", "email:'amy.rider@rocket.example' AND name:'amy'"),
                         ([old["id"], amy["id"]], False))
        self.assertEqual(self.ids("/v1/customers/search", "email:'amy.rider@rocket.example' AND name:'OLD  amy'"),
                         ([old["id"]], False))
        self.assertEqual(self.ids("/v1/customers/search", "email:'amy.rider@rocket.example' AND name:'amy old'"),
                         ([], False))
        self.assertEqual(self.ids("/v1/customers/search", "email:'amy.rider@rocket'"), ([], False))
        # another merchant's customer with the address never shows
        self.assertEqual(self.c("y").post("/v1/customers", {"email": "amy.rider@rocket.example"}).status, 200)
        self.assertEqual(len(self.ids("/v1/customers/search", "email:'amy.rider@rocket.example'")[0]), 2)
        # a substring or OR walks the rows (no index), reading on past the
        # budget only until a page has a match
        got, more = self.ids("/v1/customers/search", "email~'amy.rider' OR name:'zzz'", limit=10)
        self.assertTrue(got, (got, more))

    def test_the_migration_fills_the_index_for_a_store_from_before(self):
        c = self.c("x")
        old = c.post(PI, {"amount": 1300, "currency": "usd", "metadata[legacy]": "L-1", "confirm": "true",
                          "payment_method": "pm_card_visa"}).json
        self.noise(12)
        self.daemon.stop()
        import sqlite3
        db = sqlite3.connect(self.daemon.db_path())
        db.execute("DELETE FROM metadata_index")
        # a store of migration 19: without what 0022, 0023, 0024, 0026 and 0028 add (0021,
        # 0025 and 0027 are IF NOT EXISTS; the fingerprint keys are then masked again, which
        # this test does not look at)
        db.execute("ALTER TABLE attempts DROP COLUMN reply_charge")
        db.execute("ALTER TABLE attempts DROP COLUMN reason")
        db.execute("ALTER TABLE attempts DROP COLUMN orig_data")
        db.execute("ALTER TABLE attempts DROP COLUMN reply_opts")
        db.execute("ALTER TABLE merchants DROP COLUMN fp_key_masked")
        db.execute("UPDATE meta SET value='19' WHERE key='schema_version'")
        db.commit()
        db.close()
        self.daemon.start(config=self.config())
        self.assertEqual(self.ids(PI + "/search", "metadata['legacy']:'L-1'"), ([old["id"]], False))
        self.assertEqual(self.ids("/v1/charges/search", "metadata['legacy']:'L-1'"), ([old["latest_charge"]], False))
        self.assertEqual(len(self.ids(PI + "/search", "metadata['order']:'noise-3'")[0]) > 0, True)


if __name__ == "__main__":
    main()
