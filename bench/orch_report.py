#!/usr/bin/env python3
"""Helpers of bench/orchestration.sh (standard library only).

  orch_report.py faults SIM_REST NAME JSON          POST /_sim/faults
  orch_report.py probe GW KEY SIM_REST NAME DELAY_S OUT
      after DELAY_S, switch processor NAME to an outage and send one payment
      after another until one is routed without touching NAME; writes the
      elapsed milliseconds (outage -> first payment routed around it) to OUT
  orch_report.py failover DB GATEWAY_LOG NAME PROBE_OUT
      outage -> breaker open (from the log), and new payments routed to NAME
      after that (from the attempts' ids)
  orch_report.py fault-stats DB SIM_REST
      success rate, recovered share of transient failures, double charges
  orch_report.py route-stats DB LABEL FEES
      authorization rate and fees of one routing run; FEES = "a:2.9,b:2.0"
All figures are printed as one line each, "key value" pairs.
"""
import http.client
import json
import sqlite3
import sys
import time
import urllib.parse
import urllib.request
import uuid

SOFT = ("processing_error", "issuer_not_available", "try_again_later", "reenter_transaction")


def sim_call(sim, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://%s%s" % (sim, path), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read().decode())


def gw(addr, key, method, path, params=None):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    body = urllib.parse.urlencode(params) if params else None
    hdrs = {"Authorization": "Bearer " + key, "Content-Type": "application/x-www-form-urlencoded"}
    if method == "POST":
        hdrs["Idempotency-Key"] = "probe-" + uuid.uuid4().hex
    c.request(method, path, body=body, headers=hdrs)
    r = c.getresponse()
    js = json.loads(r.read().decode() or "null")
    c.close()
    return r.status, js


def probe(addr, key, sim, name, at, out):
    # at: the wall-clock time the outage is due (the shell reads it as the
    # load starts): sleeping a delay from here started late by however long
    # python took to start, seconds on a loaded machine
    wait = float(at) - time.time()
    if wait > 0:
        time.sleep(wait)
    # The outage starts somewhere during this call; the breaker can open
    # before its answer is read under load, so the clock is read first (it
    # was read after, and a quick breaker was reported as never opened).
    outage_at = time.time()
    sim_call(sim, "POST", "/_sim/faults", {"processor": name, "outage": True})
    t0 = time.monotonic()
    elapsed = None
    for _ in range(2000):
        st, js = gw(addr, key, "POST", "/v1/payment_intents",
                    {"amount": 1999, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        pi = js.get("id") if st == 200 else (js.get("error") or {}).get("payment_intent", {}).get("id")
        if not pi:
            continue
        _, att = gw(addr, key, "GET", "/v1/payment_intents/%s/attempts" % pi)
        if all(a["processor"] != name for a in att.get("data", [])):
            elapsed = (time.monotonic() - t0) * 1000.0
            break
    with open(out, "w") as f:
        f.write("%s\n%.3f\n" % ("%.0f" % elapsed if elapsed is not None else "none", outage_at))


B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def id_ms(ident):
    """Unix milliseconds of a Turnpike id (the 8 base62 characters after '_')."""
    v = 0
    for ch in ident.split("_", 1)[1][:8]:
        v = v * 62 + B62.index(ch)
    return v


def failover(dbpath, log, name, probe_out):
    """Outage -> breaker open (detection), and what new payments did after it:
    how many still went to NAME first before its first half-open probe, and
    when the first one went elsewhere. From the gateway's log (wall-clock ms)
    and the attempts' ids (their creation ms)."""
    lines = open(probe_out).read().split()
    outage = float(lines[1]) * 1000.0 if len(lines) > 1 else None
    opened = half = None
    for line in open(log, errors="replace"):
        if '"processor_breaker"' not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("processor") != name:
            continue
        ts = float(ev["ts"]) * 1000.0
        if outage is not None and ts < outage:
            continue
        if opened is None and ev.get("to") == "open":
            opened = ts
        elif opened is not None and half is None and ev.get("to") == "half_open":
            half = ts
    if outage is None or opened is None:
        print("failover: breaker of %s never opened after the outage" % name)
        return
    first = {}
    for pi, aid, proc in db_rows(dbpath, "SELECT payment_intent, id, processor FROM attempts WHERE kind = 'authorize'"):
        if pi not in first or aid < first[pi][0]:
            first[pi] = (aid, proc)
    end = half if half is not None else float("inf")
    to_down = [id_ms(a) for a, p in first.values() if p == name and opened <= id_ms(a) < end]
    around = [id_ms(a) for a, p in first.values() if p != name and id_ms(a) >= opened]
    print("outage_to_detection_ms %.0f (breaker of %s open)" % (opened - outage, name))
    print("new_payments_to_%s_after_detection %d%s" % (
        name, len(to_down), " (last %.0f ms after)" % (max(to_down) - opened) if to_down else ""))
    print("detection_to_first_payment_routed_around_ms %s" % (
        "%.0f" % max(0.0, min(around) - opened) if around else "none"))


def db_rows(path, sql):
    db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(path), uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def fault_stats(dbpath, sim):
    pis = dict(db_rows(dbpath, "SELECT id, status FROM payment_intents"))
    att = db_rows(dbpath, "SELECT payment_intent, processor, state, result_code FROM attempts "
                          "WHERE kind = 'authorize' ORDER BY created, id")
    transient = set()
    sent = 0
    per_proc = {}
    for pi, proc, state, code in att:
        per_proc[proc] = per_proc.get(proc, 0) + 1
        if state == "sent":
            sent += 1
        if state == "failed" or (state == "declined" and code in SOFT):
            transient.add(pi)
    total = len(pis)
    ok = sum(1 for s in pis.values() if s == "succeeded")
    recovered = sum(1 for pi in transient if pis.get(pi) == "succeeded")
    j = sim_call(sim, "GET", "/_sim/journal?limit=1")
    print("payments %d succeeded %d success_rate %.4f" % (total, ok, ok / total if total else 0))
    print("payments_with_transient_failure %d recovered %d recovered_share %.4f" %
          (len(transient), recovered, recovered / len(transient) if transient else 1.0))
    print("attempts_by_processor %s attempts_left_sent %d" % (json.dumps(per_proc, sort_keys=True), sent))
    print("journal_charges_all_runs %d double_charges %d" % (j["summary"]["charges"], j["summary"]["double_charges"]))


def route_stats(dbpath, label, fees):
    fee = {}
    for part in fees.split(","):
        n, pct = part.split(":")
        fee[n] = float(pct)
    pis = db_rows(dbpath, "SELECT id, status FROM payment_intents")
    ok_att = db_rows(dbpath, "SELECT processor, amount FROM attempts WHERE kind = 'authorize' AND state = 'succeeded'")
    total = len(pis)
    ok = len(ok_att)
    # Fees in minor units, rounded half-even once per payment like the registry.
    cost = sum(round(amount * fee.get(proc, 0) / 100.0) for proc, amount in ok_att)
    volume = sum(amount for _, amount in ok_att)
    share = {}
    for proc, _ in ok_att:
        share[proc] = share.get(proc, 0) + 1
    print("%-12s payments %6d auth_rate %.4f fees_per_approved %.1f net_per_payment %.1f approved_by %s" %
          (label, total, ok / total if total else 0, cost / ok if ok else 0,
           (volume - cost) / total if total else 0, json.dumps(share, sort_keys=True)))


def main():
    cmd = sys.argv[1]
    if cmd == "faults":
        sim_call(sys.argv[2], "POST", "/_sim/faults", dict(json.loads(sys.argv[4]), processor=sys.argv[3]))
    elif cmd == "probe":
        probe(*sys.argv[2:8])
    elif cmd == "failover":
        failover(*sys.argv[2:6])
    elif cmd == "fault-stats":
        fault_stats(sys.argv[2], sys.argv[3])
    elif cmd == "route-stats":
        route_stats(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
