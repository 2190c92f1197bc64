"""Every API endpoint fed mutated requests: a random walk from valid Stripe
requests (a parameter dropped, added, renamed, its value swapped for an
edge case, a path id swapped for another kind's, another merchant's or a
malformed one) against the real daemon (ASan+UBSan in make test).

Each reply must be a JSON object with a Request-Id; never a 5xx; an error
must be Stripe-shaped and agree with the error registry; a refused POST
(4xx other than a card decline, which Stripe also records as a failed
charge) must change no stored row; one request in ten goes with the
publishable key, which must get nothing but a new PaymentMethod. At the end: the daemon is ready, the
ledger balances, every running balance equals its entries, no sanitizer
report is in its log and it exits 0.

Bounded: TP_FUZZ_REQUESTS requests (default 1500) or TP_FUZZ_SECONDS
(default 60) seconds, whichever ends first; TP_FUZZ_SEED picks the walk
(default: random, printed, so a failure can be replayed); TP_FUZZ_THREADS
walkers (default 1) share the requests."""
import copy
import json
import os
import random
import re
import sys
import threading
import time

from harness import (PAN_3DS, PAN_DECLINE, PAN_OK, DaemonTestCase, check_registry, form_encode, main,
                     new_key, open_db_ro)

REQUESTS = int(os.environ.get("TP_FUZZ_REQUESTS", "1500"))
SECONDS = float(os.environ.get("TP_FUZZ_SECONDS", "60"))
SEED = int(os.environ.get("TP_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 30))))

# Rows a refused request must not have changed (feature tables with their
# own background writers, such as the heartbeat, are left out).
# The errors kept under an Idempotency-Key (src/api/idem.c,
# tp_idem_keeps_error), by tp_code: the state of the objects acted on.
KEPT_ERRORS = {1050, 1055, 1060, 1061, 1063, 1067, 1068, 1072, 1074, 1077, 1078, 1079, 1080, 1081, 1082, 1085,
               1086, 1087, 1089, 1100, 1104}
COUNTED = ("payment_intents", "charges", "refunds", "customers", "payment_methods", "events",
           "balance_transactions", "ledger_entries", "attempts", "vault", "idempotency",
           "webhook_endpoints")

EDGE_VALUES = ["", " ", "0", "-1", "1", "49", "50", "99999999", "999999999999999999999", "-9223372036854775808",
               "1.5", "1e3", "true", "True", "false", "null", "[]", "{}", "usd", "USD", "zzz", "card",
               "manual", "automatic", "pm_card_visa", "pm_card_chargeDeclined", "pi_", "cus_", "ch_x",
               "\u00e9t\u00e9 \U0001f680", "a" * 600, "x" * 5001, "\x00", "\x7f", "line\nbreak",
               "<script>", "%s%n", "../../etc/passwd", "2020-01-01", "4242424242424242", "now"]

# Valid requests to start from: (method, path template, params).
# {pi} {pi_held} {ch} {re} {cus} {pm} {pm_saved} {we} {evt} name seeded objects.
def card(pan=PAN_OK):
    return {"number": pan, "exp_month": "12", "exp_year": "2034", "cvc": "123"}


TEMPLATES = [
    ("POST", "/v1/payment_intents", {"amount": "1000", "currency": "usd"}),
    ("POST", "/v1/payment_intents", {"amount": "1000", "currency": "usd", "confirm": "true",
                                     "payment_method": "pm_card_visa", "capture_method": "manual",
                                     "metadata": {"k": "v"}, "expand": ["latest_charge"]}),
    ("POST", "/v1/payment_intents", {"amount": "2000", "currency": "eur", "confirm": "true",
                                     "payment_method_data": {"type": "card", "card": card(),
                                                             "billing_details": {"email": "a@b.co"}},
                                     "shipping": {"name": "A", "address": {"line1": "1 St", "country": "DE"}},
                                     "payment_method_options": {"card": {"request_three_d_secure": "automatic"}}}),
    ("POST", "/v1/payment_intents", {"amount": "500", "currency": "usd", "confirm": "true",
                                     "payment_method_data": {"type": "card", "card": card(PAN_DECLINE)}}),
    ("POST", "/v1/payment_intents", {"amount": "700", "currency": "usd", "confirm": "true",
                                     "return_url": "https://shop.example/r",
                                     "payment_method_data": {"type": "card", "card": card(PAN_3DS)}}),
    ("POST", "/v1/payment_intents", {"amount": "800", "currency": "usd", "customer": "{cus}",
                                     "payment_method": "{pm_saved}", "off_session": "true", "confirm": "true"}),
    ("POST", "/v1/payment_intents/{pi}", {"description": "d", "metadata": {"a": "b"},
                                          "receipt_email": "x@y.example"}),
    ("POST", "/v1/payment_intents/{pi}/confirm", {"payment_method": "pm_card_visa"}),
    ("POST", "/v1/payment_intents/{pi_held}/capture", {"amount_to_capture": "500"}),
    ("POST", "/v1/payment_intents/{pi}/cancel", {"cancellation_reason": "duplicate"}),
    ("POST", "/v1/payment_intents/{pi_held}/increment_authorization", {"amount": "2000"}),
    ("GET", "/v1/payment_intents", {"limit": "3", "customer": "{cus}", "created": {"gte": "0"}}),
    ("GET", "/v1/payment_intents/{pi}", {"expand": ["latest_charge", "customer", "payment_method"]}),
    ("GET", "/v1/payment_intents/search", {"query": "status:'succeeded' AND amount>100", "limit": "2"}),
    ("GET", "/v1/payment_intents/{pi}/attempts", {}),
    ("GET", "/v1/charges", {"limit": "2", "payment_intent": "{pi}"}),
    ("GET", "/v1/charges/{ch}", {"expand": ["refunds", "balance_transaction"]}),
    ("POST", "/v1/charges/{ch}", {"description": "c", "metadata": {"x": "1"},
                                  "fraud_details": {"user_report": "safe"}}),
    ("GET", "/v1/charges/search", {"query": "amount>=1000"}),
    ("GET", "/v1/charges/{ch}/refunds", {"limit": "1"}),
    ("GET", "/v1/charges/{ch}/refunds/{re}", {}),
    ("POST", "/v1/refunds", {"payment_intent": "{pi_paid}", "amount": "100", "reason": "requested_by_customer"}),
    ("POST", "/v1/refunds", {"charge": "{ch}", "amount": "50", "metadata": {"r": "1"}}),
    ("GET", "/v1/refunds", {"limit": "5", "charge": "{ch}"}),
    ("GET", "/v1/refunds/{re}", {}),
    ("POST", "/v1/refunds/{re}", {"metadata": {"z": "9"}}),
    ("POST", "/v1/refunds/{re}/cancel", {}),
    ("POST", "/v1/customers", {"email": "c@d.example", "name": "N", "phone": "+1555",
                               "address": {"city": "X", "country": "us"},
                               "shipping": {"name": "S", "address": {"line1": "L"}},
                               "invoice_settings": {"footer": "f"}, "tax_exempt": "none",
                               "preferred_locales": ["en"], "metadata": {"m": "1"}}),
    ("POST", "/v1/customers/{cus}", {"description": "upd", "balance": "100",
                                     "invoice_settings": {"default_payment_method": "{pm_saved}"}}),
    ("DELETE", "/v1/customers/{cus_spare}", {}),
    ("GET", "/v1/customers", {"limit": "2", "email": "c@d.example"}),
    ("GET", "/v1/customers/search", {"query": "email:'c@d.example'"}),
    ("GET", "/v1/customers/{cus}/payment_methods", {"type": "card"}),
    ("GET", "/v1/customers/{cus}/payment_methods/{pm_saved}", {}),
    ("POST", "/v1/payment_methods", {"type": "card", "card": card(),
                                     "billing_details": {"name": "B", "address": {"country": "fr"}}}),
    ("GET", "/v1/payment_methods", {"customer": "{cus}", "type": "card"}),
    ("GET", "/v1/payment_methods/{pm}", {}),
    ("POST", "/v1/payment_methods/{pm_saved}", {"billing_details": {"phone": "1"}, "card": {"exp_month": "3"}}),
    ("POST", "/v1/payment_methods/{pm}/attach", {"customer": "{cus}"}),
    ("POST", "/v1/payment_methods/{pm_saved}/detach", {}),
    ("GET", "/v1/events", {"limit": "3", "type": "charge.succeeded", "types": ["charge.refunded"]}),
    ("GET", "/v1/events/{evt}", {}),
    ("POST", "/v1/webhook_endpoints", {"url": "https://hooks.example/h", "enabled_events": ["*"],
                                       "description": "w", "metadata": {"w": "1"}}),
    ("POST", "/v1/webhook_endpoints/{we}", {"disabled": "true", "enabled_events": ["charge.succeeded"]}),
    ("GET", "/v1/webhook_endpoints", {"limit": "1"}),
    ("GET", "/v1/webhook_endpoints/{we}/deliveries", {}),
    ("DELETE", "/v1/webhook_endpoints/{we_spare}", {}),
    ("GET", "/v1/balance", {}),
    ("GET", "/v1/balance_transactions", {"limit": "2", "type": "charge", "source": "{ch}"}),
    ("GET", "/v1/turnpike/processors", {}),
]


def flatten(params):
    out = []

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk("%s[%s]" % (prefix, k) if prefix else k, x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk("%s[%d]" % (prefix, i), x)
        else:
            out.append((prefix, v))

    walk("", params)
    return out


class ApiFuzz(DaemonTestCase):
    MERCHANTS = ("fuzz", "other")

    def setUp(self):
        self.c_ = self.c("fuzz")

    def seed_objects(self):
        c = self.c_
        ids = {}

        def make(name, path, params, field="id"):
            r = c.post(path, params)
            self.assertLess(r.status, 300, "seeding %s: %r" % (name, r))
            ids[name] = r.json[field]
            return r.json

        cus = make("cus", "/v1/customers", {"email": "seed@example.com"})
        make("cus_spare", "/v1/customers", {"name": "spare"})
        make("pm", "/v1/payment_methods", {"type": "card", "card": card()})
        saved = make("pm_saved", "/v1/payment_methods", {"type": "card", "card": card()})
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % saved["id"], {"customer": cus["id"]}).status, 200)
        make("pi", "/v1/payment_intents", {"amount": "1500", "currency": "usd"})
        make("pi_held", "/v1/payment_intents", {"amount": "2500", "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa", "capture_method": "manual"})
        paid = make("pi_paid", "/v1/payment_intents", {"amount": "3000", "currency": "usd", "confirm": "true",
                                                       "payment_method": "pm_card_visa"})
        ids["ch"] = paid["latest_charge"]
        make("re", "/v1/refunds", {"payment_intent": paid["id"], "amount": "100"})
        make("we", "/v1/webhook_endpoints", {"url": "https://hooks.example/a", "enabled_events[]": "*"})
        make("we_spare", "/v1/webhook_endpoints", {"url": "https://hooks.example/b", "enabled_events[]": "*"})
        ids["evt"] = c.get("/v1/events", {"limit": "1"}).json["data"][0]["id"]
        o = self.c("other")
        ids["other"] = [o.post("/v1/customers", {}).json["id"],
                        o.post("/v1/payment_intents", {"amount": "1000", "currency": "usd"}).json["id"]]
        return ids

    def counts(self, db):
        return tuple(db.execute("SELECT count(*) FROM %s" % t).fetchone()[0] for t in COUNTED)

    def mutate_value(self, rnd, ids, v):
        pick = rnd.random()
        if pick < 0.55:
            return rnd.choice(EDGE_VALUES)
        if pick < 0.75:
            pool = [x for x in ids.values() if isinstance(x, str)] + ids["other"]
            return rnd.choice(pool)
        if pick < 0.9:
            return str(v) * rnd.randint(2, 40)
        return "".join(chr(rnd.randint(1, 0x2FF)) for _ in range(rnd.randint(1, 30)))

    def mutate(self, rnd, ids, pairs):
        pairs = list(pairs)
        for _ in range(rnd.randint(1, 3)):
            op = rnd.random()
            if pairs and op < 0.25:
                pairs.pop(rnd.randrange(len(pairs)))
            elif pairs and op < 0.6:
                i = rnd.randrange(len(pairs))
                pairs[i] = (pairs[i][0], self.mutate_value(rnd, ids, pairs[i][1]))
            elif pairs and op < 0.7:
                i = rnd.randrange(len(pairs))
                k = pairs[i][0]
                pairs[i] = (rnd.choice([k + "[x]", k + "[]", k.split("[")[0], k + "[0][1]", "[" + k + "]",
                                        k.replace("[", "[[", 1), k.upper()]), pairs[i][1])
            elif pairs and op < 0.8:
                pairs.append(rnd.choice(pairs))  # a duplicate key
            else:
                pairs.append((rnd.choice(["colour", "expand[]", "metadata[%s]" % ("k" * rnd.randint(1, 60)),
                                          "amount", "currency", "limit", "starting_after", "ending_before",
                                          "created[gt]", "customer", "payment_method", "a[b][c][d][e]"]),
                              self.mutate_value(rnd, ids, "v")))
        return pairs

    def fill(self, rnd, ids, text):
        """text with each {name} replaced by that seeded object's id, or
        (one time in five) by another kind's, another merchant's or a
        malformed one."""
        def one(m):
            name = m.group(1)
            if rnd.random() < 0.8:
                return ids[name]
            return rnd.choice(ids["other"] + [ids[rnd.choice(["cus", "pi", "ch", "re", "pm", "we", "evt"])],
                                              "", "x", "pi_" + "9" * 300, "..", "%00", "%C3%A9t%C3%A9",
                                              "pi_%2Fcharges", "cus_" + "A" * 24])
        return re.sub(r"\{([a-z_]+)\}", one, text)

    JSON_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 63, 10 ** 30, -(2 ** 63) - 1, "", "x", [], {}, [1, "a"],
                   {"x": {"y": [None]}}, "\u0000", "\ud83d\ude80"]

    def json_mutate(self, rnd, ids, tree):
        """A copy of a request's parameter tree with one to three changes:
        a value of another JSON type, a key dropped or added."""
        tree = copy.deepcopy(tree)
        for _ in range(rnd.randint(1, 3)):
            node = tree
            while isinstance(node, dict) and node and rnd.random() < 0.5:
                child = node[rnd.choice(list(node))]
                if not isinstance(child, dict) or not child:
                    break
                node = child
            if not isinstance(node, dict):
                continue
            op = rnd.random()
            if node and op < 0.6:
                node[rnd.choice(list(node))] = copy.deepcopy(
                    rnd.choice(self.JSON_VALUES + [self.mutate_value(rnd, ids, "v")]))
            elif node and op < 0.8:
                del node[rnd.choice(list(node))]
            else:
                node[rnd.choice(["colour", "amount", "metadata", "expand", "customer"])] = copy.deepcopy(
                    rnd.choice(self.JSON_VALUES))
        return tree

    def check_reply(self, r, what):
        self.assertLess(r.status, 500, what)
        self.assertTrue(r.headers.get("Request-Id"), what)
        self.assertIsInstance(r.json, dict, what)
        if r.status >= 400:
            err = r.json.get("error")
            self.assertIsInstance(err, dict, what)
            self.assertIsInstance(err.get("type"), str, what)
            self.assertTrue(err.get("message"), what)
            check_registry(self, r, err)

    def walk(self, rnd, ids, quota, end, stats, alone):
        """quota mutated requests (until end); with alone, a refused POST
        or DELETE must leave every counted table as it was (with other
        walkers running alongside, rows change under it)."""
        db = open_db_ro(self.daemon)
        try:
            for n in range(quota):
                if time.monotonic() >= end:
                    break
                self.one_request(rnd, ids, db, n, stats, alone)
        finally:
            db.close()

    def send(self, what, *args, **kw):
        if os.environ.get("TP_FUZZ_TRACE"):  # the request about to go, whole
            with open(os.environ["TP_FUZZ_TRACE"], "w") as f:
                f.write(repr((args, kw)))
        try:
            return self.c_.request(*args, **kw)
        except OSError as e:  # no answer (a timeout) or the daemon gone
            raise AssertionError("%s: %r" % (what, e)) from e

    def one_request(self, rnd, ids, db, n, stats, alone):
        method, template, base = rnd.choice(TEMPLATES)
        path = self.fill(rnd, ids, template)
        filled = [(k, self.fill(rnd, ids, v)) for k, v in flatten(base)]
        pairs = self.mutate(rnd, ids, filled) if rnd.random() < 0.9 else filled
        what = "seed %d request %d: %s %s %r" % (SEED, n, method, path, pairs[:12])
        before = self.counts(db) if alone and method in ("POST", "DELETE") else None
        idem = new_key("fz") if method == "POST" and rnd.random() < 0.5 else None
        flat = [(k, str(v)) for k, v in pairs]
        while method in ("GET", "DELETE") and len(form_encode(flat)) > 16000:
            # A request line that does not fit the connection's 16 KiB
            # (past ~16,400 bytes) is refused by libmicrohttpd with its own
            # 414 page, not in Stripe's shape (docs/architecture.md §9), so
            # queries stay under 16,000 bytes; from 12 KiB up Turnpike
            # answers 414 itself as the line is parsed.
            i = max(range(len(flat)), key=lambda j: len(flat[j][1]))
            flat[i] = (flat[i][0], flat[i][1][:len(flat[i][1]) // 2])
        # One request in ten with the merchant's publishable key, which
        # every shopper's browser holds: it may only create PaymentMethods
        # (and confirm or read a PaymentIntent with its client_secret,
        # which this walk never has).
        pk = rnd.random() < 0.1
        key = self.daemon.merchants["fuzz"]["publishable_key"] if pk else Ellipsis
        if pk:
            what = "pk_ " + what
        if method == "POST" and rnd.random() < 0.15:
            # The request as JSON: other types (numbers, booleans, null,
            # arrays, objects) where the form has only strings.
            tree = self.json_mutate(rnd, ids, json.loads(self.fill(rnd, ids, json.dumps(base))))
            body = json.dumps(tree)
            what = "seed %d request %d: %s %s JSON %s" % (SEED, n, method, path, body[:400])
            r = self.send(what, method, path, body=body, content_type="application/json", idem=idem, key=key)
        else:
            r = self.send(what, method, path, flat, idem=idem, key=key)
        with self.lock:
            stats[r.status] = stats.get(r.status, 0) + 1
        self.check_reply(r, what + " -> %r" % (r,))
        if pk and r.status < 300:
            self.assertEqual((method, template), ("POST", "/v1/payment_methods"),
                             "a publishable key was let through: " + what)
        if before is not None and 400 <= r.status < 500 and r.status != 402:
            with self.lock:
                stats["refused"] = stats.get("refused", 0) + 1
            want = list(before)
            err = (r.json or {}).get("error", {}) if isinstance(r.json, dict) else {}
            # (a confirm missing a payment method, 1064 or a SetupIntent's 1074:
            # kept for an intent that exists, not for one a create-and-confirm
            # made and did not save)
            code = err.get("tp_code")
            kept = code in KEPT_ERRORS or code == 1064
            if code in (1064, 1074) and path in ("/v1/payment_intents", "/v1/setup_intents"):
                kept = False
            if idem and kept:
                # an error of the objects' state is the request's result:
                # kept under its key (Stripe's "started executing"), and
                # nothing else changes
                want[COUNTED.index("idempotency")] += 1
            self.assertEqual(self.counts(db), tuple(want), "a refused request changed the store: " + what)

    def test_mutated_requests(self):
        """One walker (TP_FUZZ_THREADS=1, the default) checks that refused
        requests change nothing; several (tests/tsan.sh runs 4) race each
        other over the same objects."""
        threads = int(os.environ.get("TP_FUZZ_THREADS", "1"))
        sys.stderr.write("api fuzz: TP_FUZZ_SEED=%d TP_FUZZ_THREADS=%d\n" % (SEED, threads))
        self.lock = threading.Lock()
        ids = self.seed_objects()
        end = time.monotonic() + SECONDS
        stats = {}
        failures = []

        def run(i):
            try:
                self.walk(random.Random(SEED + i), ids, REQUESTS // threads, end, stats, threads == 1)
            except BaseException as e:  # re-raised below, on the test's thread
                failures.append(e)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if failures:
            raise failures[0]
        refused = stats.pop("refused", 0)
        sys.stderr.write("api fuzz: %d requests (%d refused POST/DELETE checked), statuses %s\n"
                         % (sum(stats.values()), refused, dict(sorted(stats.items()))))
        self.assertGreater(stats.get(200, 0), 0)
        self.assertGreater(sum(n for s, n in stats.items() if s >= 400), 0)
        db = open_db_ro(self.daemon)
        self.addCleanup(db.close)

        # The daemon is ready, the ledger balances, the balances match.
        self.assertEqual(self.c_.get("/readyz", key=None).status, 200)
        bad = db.execute("SELECT txn_id, currency, sum(amount) FROM ledger_entries "
                         "GROUP BY txn_id, currency HAVING sum(amount) != 0").fetchall()
        self.assertEqual(bad, [])
        drift = db.execute("SELECT b.merchant, b.account, b.currency, b.amount, "
                           "(SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e WHERE e.merchant=b.merchant "
                           "AND e.account=b.account AND e.currency=b.currency) AS s FROM ledger_balances b "
                           "WHERE b.amount != s").fetchall()
        self.assertEqual(drift, [])
        # deliveries to the walk's made-up hosts can sit in name resolution
        # (no network here): the stop waits for them up to ~10 s
        rc = self.daemon.stop(timeout=40)
        log = self.daemon.log_text()
        for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(marker, log)
        self.assertEqual(rc, 0, self.daemon.log_tail())


if __name__ == "__main__":
    main()
