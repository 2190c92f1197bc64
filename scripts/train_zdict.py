#!/usr/bin/env python3
"""Train the zstd dictionary that compresses objects at rest (src/store/zjson.h).

    scripts/train_zdict.py BUILD_DIR OUT.zdict DICT_ID

Starts `turnpike serve` from BUILD_DIR on a scratch directory, drives a varied
mix of API traffic through it (customers, cards of every brand, automatic and
manual captures, partial captures, declines of every kind, 3-D Secure,
cancellations, refunds, updates, metadata, errors that are kept for
idempotent replay), then trains a dictionary with `zstd --train` on every
stored object, event and idempotent reply (compression switched off for the
run, so the store holds the plain JSON).

A dictionary that has shipped must never change: rows name it by id. To
improve compression, train a new one with a new DICT_ID as
src/store/zdict/objects-N.zdict (N+1); writers use the newest, readers keep
every one."""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

PANS = ["4242424242424242", "5555555555554444", "2223003122003222", "378282246310005",
        "6011111111111117", "3056930009020004", "3566002020360505", "6200000000000005",
        "4000000000000002", "4000000000009995", "4000000000009987", "4000000000000069",
        "4000000000000127", "4000000000000119", "4100000000000019", "4000002760003184"]
CURRENCIES = ["usd", "eur", "gbp", "jpy", "kwd", "chf", "cad", "aud"]
WORDS = ["order", "invoice", "subscription", "gift", "coffee", "book", "shoes", "ticket", "hotel", "plan"]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    build, out, dict_id = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ["TURNPIKE_BIN"] = os.path.join(os.path.abspath(build), "turnpike")
    import harness
    rnd = random.Random(20261124)
    d = harness.Daemon()
    try:
        d.create_merchant("trainer")
        d.start(config="[store]\ncompress = off\n")
        c = d.client("trainer")
        customers = []
        for i in range(60):
            w = rnd.choice(WORDS)
            r = c.post("/v1/customers", {"email": "%s.%d@example.com" % (w, i), "name": "%s %d" % (w.title(), i),
                                         "description": "customer %d" % i, "metadata[tier]": rnd.choice(["gold", "basic"])})
            customers.append(r[2]["id"])
        for i in range(1500):
            pan = rnd.choice(PANS)
            cur = rnd.choice(CURRENCIES)
            amount = rnd.randint(50, 500000) if cur not in ("kwd",) else rnd.randint(100, 500000) * 10
            p = {"amount": amount, "currency": cur, "confirm": "true",
                 "payment_method_data[type]": "card", "payment_method_data[card][number]": pan,
                 "payment_method_data[card][exp_month]": rnd.randint(1, 12),
                 "payment_method_data[card][exp_year]": rnd.randint(2028, 2035),
                 "payment_method_data[card][cvc]": "1234" if pan.startswith("3") and len(pan) == 15 else "123",
                 "return_url": "https://shop.example.com/return"}
            if rnd.random() < 0.4:
                p["customer"] = rnd.choice(customers)
            if rnd.random() < 0.5:
                p["description"] = "%s #%d" % (rnd.choice(WORDS), rnd.randint(1, 99999))
            if rnd.random() < 0.5:
                p["metadata[order_id]"] = str(rnd.randint(100000, 999999))
            if rnd.random() < 0.3:
                p["receipt_email"] = "buyer%d@example.org" % rnd.randint(1, 999)
            manual = rnd.random() < 0.3
            if manual:
                p["capture_method"] = "manual"
            if rnd.random() < 0.1:
                p["payment_method"] = rnd.choice(["pm_card_visa", "pm_card_mastercard", "pm_card_amex"])
                for k in [k for k in p if k.startswith("payment_method_data")]:
                    del p[k]
            r = c.post("/v1/payment_intents", p, idem=harness.new_key("train"))
            if r[0] != 200:
                continue
            pi = r[2]
            if pi["status"] == "requires_capture":
                if rnd.random() < 0.7:
                    part = rnd.random() < 0.3
                    c.post("/v1/payment_intents/%s/capture" % pi["id"],
                           {"amount_to_capture": max(1, pi["amount"] // 2)} if part else {},
                           idem=harness.new_key("train"))
                else:
                    c.post("/v1/payment_intents/%s/cancel" % pi["id"],
                           {"cancellation_reason": rnd.choice(["requested_by_customer", "abandoned", "duplicate"])})
            if rnd.random() < 0.2 and pi["status"] in ("succeeded", "requires_capture"):
                c.post("/v1/refunds", {"payment_intent": pi["id"], "reason": rnd.choice(["requested_by_customer", "duplicate", "fraudulent"])},
                       idem=harness.new_key("train"))
            if rnd.random() < 0.1:
                c.post("/v1/payment_intents/%s" % pi["id"], {"metadata[note]": rnd.choice(WORDS)})
        for i in range(100):  # PaymentIntents left unconfirmed
            c.post("/v1/payment_intents", {"amount": rnd.randint(100, 9999), "currency": rnd.choice(CURRENCIES)})
    finally:
        d.stop()
    tmp = tempfile.mkdtemp(prefix="tp-zdict-")
    try:
        con = sqlite3.connect(d.db_path())
        n = 0
        for table, col in [("payment_intents", "data"), ("charges", "data"), ("refunds", "data"),
                           ("customers", "data"), ("payment_methods", "data"), ("events", "data"),
                           ("balance_transactions", "data"), ("idempotency", "body")]:
            for (v,) in con.execute("SELECT %s FROM %s WHERE %s IS NOT NULL" % (col, table, col)):
                with open(os.path.join(tmp, "%06d.json" % n), "w") as f:
                    f.write(v)
                n += 1
        con.close()
        print("training on %d stored values" % n)
        files = sorted(os.path.join(tmp, f) for f in os.listdir(tmp))
        subprocess.run(["zstd", "--train", "-q", "--maxdict=16384", "--dictID=%s" % dict_id, "-o", out] + files,
                       check=True)
    finally:
        shutil.rmtree(tmp)
        d.cleanup()


if __name__ == "__main__":
    main()
