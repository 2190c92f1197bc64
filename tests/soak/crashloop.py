#!/usr/bin/env python3
"""Crash loop: the gateway killed with SIGKILL again and again under load,
with a REST/JSON and an ISO 8583 processor in `turnpike sim`.

  python3 tests/soak/crashloop.py [--cycles N] [--bin build/turnpike]

Each cycle starts `turnpike serve` on the same data directory, runs 12
threads of create+confirm payments (the harness's mix: automatic and manual
capture, declines) and kills it after 1-3 s. At the end it restarts once
more and checks every acknowledged reply against the store (present, same
status, same amount received), the balance transactions against
/v1/balance, the simulator's journal for double charges, and that recovery
left no attempt in flight. Exit status 1 if anything is off. Not part of
`make test` (a minute or more); see docs/architecture.md "Crash recovery".
"""
import argparse
import collections
import os
import random
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build", "turnpike"))
    args = ap.parse_args()
    harness.BIN = os.path.abspath(args.bin)
    sim = harness.Sim()
    d = harness.Daemon()
    ini = ("[processor.rest]\ntype = restjson\nendpoint = http://%s/p/rest\ntimeout_ms = 1500\n"
           "[processor.iso]\ntype = iso8583\nendpoint = %s\ntimeout_ms = 1500\n"
           "terminal_id = TERM0001\nmerchant_id = TURNPIKE0000001\n") % (sim.rest, sim.iso)
    failures = []
    try:
        d.create_merchant("m")
        acks = []
        for cycle in range(args.cycles):
            d.start(config=ini)
            load = harness.PaymentLoad(d.client("m"), threads=12, seconds=6.0, tag="cyc%d" % cycle).start()
            time.sleep(random.uniform(1.0, 3.0))
            d.kill9()
            load.stop_flag.set()
            load.join()
            acks += load.acks
            print("cycle %d: %d acknowledged, %d sent without a reply, %d other replies"
                  % (cycle, len(load.acks), len(load.sent_then_broken), len(load.other)), flush=True)
            failures += ["cycle %d: reply %r" % (cycle, o[2]) for o in load.other]

        d.start(config=ini)
        c = d.client("m")
        deadline = time.monotonic() + 30
        db = sqlite3.connect("file:%s?mode=ro" % d.db_path(), uri=True)
        while time.monotonic() < deadline:
            in_flight = db.execute("SELECT count(*) FROM attempts WHERE state IN ('sent', 'reversal_pending')"
                                   ).fetchone()[0]
            if in_flight == 0:
                break
            time.sleep(0.2)
        else:
            failures.append("%d attempts still in flight after recovery" % in_flight)
        states = dict(db.execute("SELECT state, count(*) FROM attempts GROUP BY state").fetchall())
        db.close()

        missing = wrong = 0
        for a in acks:
            pi = a.pi()
            r = c.get("/v1/payment_intents/%s" % pi["id"])
            if r.status != 200:
                missing += 1
            elif (r.json["status"], r.json["amount_received"]) != (pi["status"], pi["amount_received"]):
                wrong += 1
        if missing or wrong:
            failures.append("%d acknowledged payments missing, %d changed" % (missing, wrong))

        sums = collections.Counter()
        for bt in c.list_all("/v1/balance_transactions"):
            sums[bt["currency"]] += bt["net"]
        shown = collections.Counter()
        bal = c.get("/v1/balance").json
        for part in ("available", "pending"):
            for b in bal[part]:
                shown[b["currency"]] += b["amount"]
        if +sums != +shown:
            failures.append("balance transactions %r != balance %r" % (dict(sums), dict(shown)))
        j = sim.journal()["summary"]
        if j["double_charges"]:
            failures.append("%d double charges in the sim journal" % j["double_charges"])
        print("%d acknowledged payments over %d kills: %d missing, %d changed; attempts %r; "
              "ledger %s; sim journal %d charges, %d double"
              % (len(acks), args.cycles, missing, wrong, states, "balanced" if +sums == +shown else "OFF",
                 j["charges"], j["double_charges"]))
    finally:
        d.cleanup()
        sim.stop()
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
