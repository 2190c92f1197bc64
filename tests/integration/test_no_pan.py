"""After a run that uses every test card - raw card data, client-side
encrypted (JWE) cards, saved payment methods, declines, 3-D Secure, card
errors, idempotent replays - no test card number appears anywhere: not in
turnpike.db, its WAL or shared-memory file, any other file of the data dir,
nor the daemon's log; as plain digits, grouped with spaces or with dashes."""
import base64
import json
import os
import re
import urllib.parse
import unittest

from harness import (DaemonTestCase, all_stored_text, card, main, new_key, stored_json)

# python3-cryptography (scripts/deps.sh) encrypts the JWE cards independently
# of Turnpike's code.
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
HAVE_CRYPTO = True

PI = "/v1/payment_intents"

# Every card number the sandbox knows (harness contract and the pm_card_* ids).
PANS = [
    "4242424242424242", "4000056655665556", "5555555555554444", "5200828282828210", "5105105105105100",
    "371449635398431", "6011111111111117", "3056930009020004", "3566002020360505", "6200000000000005",
    "4000000000000002", "4000000000009995", "4000000000009987", "4000000000009979", "4000000000000069",
    "4000000000000127", "4000000000000119", "4100000000000019", "4000000000003220", "4000002760003184",
]
PM_IDS = ["pm_card_visa", "pm_card_visa_debit", "pm_card_mastercard", "pm_card_mastercard_debit",
          "pm_card_mastercard_prepaid", "pm_card_amex", "pm_card_discover", "pm_card_diners", "pm_card_jcb",
          "pm_card_unionpay", "pm_card_chargeDeclined", "pm_card_chargeDeclinedInsufficientFunds",
          "pm_card_threeDSecure2Required", "pm_card_authenticationRequired"]
BAD_LUHN = "4242424242424241"


def forms(pan):
    """The PAN as digits, in groups of 4 (4-6-5 for 15 digits) with spaces
    and with dashes."""
    if len(pan) == 15:
        groups = [pan[:4], pan[4:10], pan[10:]]
    else:
        groups = [pan[i:i + 4] for i in range(0, len(pan), 4)]
    return [pan.encode(), " ".join(groups).encode(), "-".join(groups).encode()]


def cardp(pan, **kw):
    """card() with a CVC of the right length (4 digits for Amex)."""
    kw.setdefault("cvc", "1234" if len(pan) == 15 else "123")
    return card(pan, **kw)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_dec(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwe_encrypt(jwk, payload):
    """Compact JWE with the `cryptography` package (not Turnpike's code)."""
    plain = json.dumps(payload).encode()
    cek_iv = os.urandom(12)
    if jwk["alg"] == "RSA-OAEP-256":
        pub = rsa.RSAPublicNumbers(int.from_bytes(b64u_dec(jwk["e"]), "big"),
                                   int.from_bytes(b64u_dec(jwk["n"]), "big")).public_key()
        cek = os.urandom(32)
        ek = pub.encrypt(cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                           label=None))
        hdr = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": jwk["kid"]}
    else:
        pub = ec.EllipticCurvePublicNumbers(int.from_bytes(b64u_dec(jwk["x"]), "big"),
                                            int.from_bytes(b64u_dec(jwk["y"]), "big"),
                                            ec.SECP256R1()).public_key()
        eph = ec.generate_private_key(ec.SECP256R1())
        z = eph.exchange(ec.ECDH(), pub)
        other = (len(b"A256GCM")).to_bytes(4, "big") + b"A256GCM" + b"\0\0\0\0" * 2 + (256).to_bytes(4, "big")
        cek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
        n = eph.public_key().public_numbers()
        hdr = {"alg": "ECDH-ES", "enc": "A256GCM", "kid": jwk["kid"],
               "epk": {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")),
                       "y": b64u(n.y.to_bytes(32, "big"))}}
        ek = b""
    h = b64u(json.dumps(hdr, separators=(",", ":")).encode())
    ct = AESGCM(cek).encrypt(cek_iv, plain, h.encode())
    return ".".join([h, b64u(ek), b64u(cek_iv), b64u(ct[:-16]), b64u(ct[-16:])])


class NoPanTest(DaemonTestCase):
    MERCHANTS = ("m",)

    def run_everything(self):
        c = self.c()
        statuses = {}

        def pay(params, idem=None):
            p = {"amount": 1234, "currency": "usd", "confirm": "true"}
            p.update(params)
            r = c.post(PI, p, idem=idem)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            self.assertIn(r.status, (200, 402), r)
            return r

        for pan in PANS:
            key = new_key("nopan")
            r = pay({"payment_method_data": cardp(pan)}, idem=key)
            again = c.post(PI, {"amount": 1234, "currency": "usd", "confirm": "true",
                                "payment_method_data": cardp(pan)}, idem=key)
            self.assertEqual(again.status, r.status)
            # saved card, attached to a customer, then charged
            pm = c.post("/v1/payment_methods", {"type": "card", "card": cardp(pan)["card"]})
            self.assertEqual(pm.status, 200, pm)
            cus = c.post("/v1/customers", {"email": "n@example.com"}).json["id"]
            att = c.post("/v1/payment_methods/%s/attach" % pm.json["id"], {"customer": cus})
            self.assertIn(att.status, (200, 402), att)  # a decline test card is refused by its issuer's check
            if att.status == 200:
                pay({"payment_method": pm.json["id"], "customer": cus})
            # a card token (POST /v1/tokens), then a charge made with it
            tok = c.post("/v1/tokens", {"card": dict(cardp(pan)["card"], name="N P")})
            self.assertEqual(tok.status, 200, tok)
            ch = c.post("/v1/charges", {"amount": 1234, "currency": "usd", "source": tok.json["id"]})
            self.assertIn(ch.status, (200, 402), ch)
        for pm in PM_IDS:
            pay({"payment_method": pm})
        # card errors must not echo the number
        for bad in (card(BAD_LUHN), card(PANS[0], exp_month=13), card(PANS[0], exp_year=2001),
                    card(PANS[0], cvc="12")):
            r = c.post(PI, {"amount": 500, "currency": "usd", "confirm": "true", "payment_method_data": bad})
            self.assertEqual(r.status // 100, 4, r)
            self.assertNotIn(bad["card"]["number"][6:], r.body.decode())
        # a card number typed into the wrong field is not echoed either (the
        # error messages that name the value mask it), nor stored with the
        # idempotent reply
        for pan, spaced in ((PANS[0], False), (PANS[5], True)):
            v = forms(pan)[1].decode() if spaced else pan
            tries = [("POST", PI, {"amount": 500, "currency": "usd", "payment_method": v}),
                     ("POST", PI, {"amount": 500, "currency": "usd", "customer": v}),
                     ("POST", "/v1/payment_methods", {"type": "card", "card": {"token": v}}),
                     ("POST", "/v1/refunds", {"charge": v}),
                     ("GET", "/v1/payment_methods/" + urllib.parse.quote(v), None),
                     ("POST", PI, {"amount": 500, "currency": "usd", "metadata": {v: "x" * 600}})]
            for method, path, params in tries:
                r = c.request(method, path, params, idem=new_key("wrong") if method == "POST" else None)
                self.assertEqual(r.status // 100, 4, r)
                body = r.body
                for form in forms(pan):
                    self.assertNotIn(form, body, "%s %s echoed the card number: %r" % (method, path, r))
        # client-side encrypted cards, both algorithms
        if HAVE_CRYPTO:
            keys = c.get("/v1/turnpike/encryption_key").json["keys"]
            for jwk in keys:
                for pan in PANS[:6] + ["4000000000000002", "4000002760003184"]:
                    jwe = jwe_encrypt(jwk, dict(cardp(pan)["card"]))
                    r = pay({"payment_method_data": {"type": "card", "card": {"encrypted": jwe}}})
                    if r.status == 200 and pan == PANS[0]:
                        self.assertIn(r.json["status"], ("succeeded",), r)
        # 3-D Secure challenges walked to the end, approved and failed
        for pan, result in (("4000002760003184", "approve"), ("4000000000003220", "fail")):
            r = c.post(PI, {"amount": 3100, "currency": "eur", "confirm": "true",
                            "payment_method_data": cardp(pan), "return_url": "https://shop.example/r"})
            self.assertEqual(r.json["status"], "requires_action", r)
            u = urllib.parse.urlsplit(r.json["next_action"]["redirect_to_url"]["url"])
            self.assertEqual(c.get(u.path + "?" + u.query, key=None).status, 200)
            token = urllib.parse.parse_qs(u.query)["token"][0]
            self.assertEqual(c.post(u.path, {"token": token, "result": result}, key=None).status, 303)
        # refunds on a few
        r = pay({"payment_method_data": card(PANS[0])})
        self.assertEqual(c.post("/v1/refunds", {"payment_intent": r.json["id"]}).status, 200)
        return statuses

    def test_a_no_core_files_are_written(self):
        """A crash must not leave card numbers in a core file: the daemon
        runs with RLIMIT_CORE 0 (soft and hard)."""
        with open("/proc/%d/limits" % self.daemon.proc.pid) as f:
            line = [l for l in f if l.startswith("Max core file size")][0]
        self.assertEqual(line.split()[4:6], ["0", "0"], line)

    def test_a_card_number_across_the_log_line_s_path_cut_is_masked(self):
        """The log line keeps 512 bytes of the path: a number across the cut
        was cut to 11 digits before the mask (12 or more) looked at it."""
        pan = "4571476977203348"
        for at in (500, 505, 508):
            path = "/v1/customers/" + "a" * (at - len("/v1/customers/")) + pan
            self.c().get(path)
        import time
        deadline = time.monotonic() + 10
        while True:  # the log is written by its own thread
            log = open(self.daemon.log_path, "rb").read()
            if log.count(b"a" * 400) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(log.count(b"a" * 400), 3, "the requests were logged")
        for n in range(7, len(pan) + 1):
            self.assertNotIn(pan[:n].encode(), log, n)

    def test_a_wide_card_number_across_the_log_line_s_path_cut_is_masked(self):
        """Full-width digits (3 bytes) parted by 8 ideographic spaces (24
        bytes): the slack past the cut was sized for ASCII digits, and 7 of
        them were logged."""
        import time
        import urllib.parse
        wide = [chr(0xFF10 + int(d)) for d in "4571476977203348"]
        gap = "\u3000" * 8
        run = gap.join("".join(wide[i:i + 4]) for i in range(0, 16, 4))
        for n in (440, 452, 470, 490):
            self.c().get("/v1/customers/" + "a" * n + urllib.parse.quote(run))
        deadline = time.monotonic() + 10
        while True:  # the log is written by its own thread
            log = open(self.daemon.log_path, "rb").read().decode("utf-8", "replace")
            if log.count("a" * 440) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(log.count("a" * 440), 4, "the requests were logged")
        self.assertNotIn("".join(wide[:4]) + gap + "".join(wide[4:7]), log)
        self.assertNotIn("".join(wide[:4]) + "\\u3000" * 8 + "".join(wide[4:7]), log)
        # a number past any fixed slack, brought into the kept part by what the mask
        # shortened before it (each full-width digit becomes one '*')
        digits = "".join(chr(0xFF10 + i % 10) for i in range(323))
        for tail in ("x4000056655665556", "x4000.0566.5566.5556"):
            self.c().get("/v1/customers/cus_a" + urllib.parse.quote(digits + tail))
        deadline = time.monotonic() + 10
        while True:
            log = open(self.daemon.log_path, "rb").read().decode("utf-8", "replace")
            if log.count("/v1/customers/cus_a") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(log.count("/v1/customers/cus_a"), 2)
        for leak in ("400005665", "4000.0566"):
            self.assertNotIn(leak, log)

    def test_a_card_number_in_full_width_digits_is_masked(self):
        """As an East Asian input method types it: not echoed in the error,
        the log line or the request log."""
        import time
        import urllib.parse
        wide = "".join(chr(0xFF10 + int(d)) for d in "4571476977203348")
        shown = " ".join(wide[i:i + 4] for i in range(0, 16, 4))
        r = self.c().get("/v1/customers/" + urllib.parse.quote(shown))
        self.assertEqual(r.status, 404, r)
        self.assertNotIn(wide[:8], r.json["error"]["message"], r)
        self.assertIn("**** ****", r.json["error"]["message"], r)
        logged = self.c().get(r.json["error"]["request_log_url"].split(str(self.daemon.port), 1)[1])
        self.assertEqual(logged.status, 200, logged)
        self.assertNotIn(wide[:4], json.dumps(logged.json, ensure_ascii=False), logged)
        deadline = time.monotonic() + 10
        while True:  # the log is written by its own thread
            log = open(self.daemon.log_path, "rb").read().decode("utf-8", "replace")
            if "/v1/customers/**** ****" in log or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn("/v1/customers/**** ****", log)
        self.assertNotIn(wide[:4], log)

    def test_no_test_pan_anywhere_after_a_full_run(self):
        statuses = self.run_everything()
        self.assertGreater(statuses.get(200, 0), 20)
        self.assertGreater(statuses.get(402, 0), 5)
        self.assertEqual(self.daemon.stop(), 0)
        files = []
        for root, _dirs, names in os.walk(self.daemon.data):
            files += [os.path.join(root, n) for n in names]
        files.append(self.daemon.log_path)
        names = [os.path.basename(f) for f in files]
        self.assertIn("turnpike.db", names)
        found = []
        total = 0
        # The raw files, and the database's values with the compressed ones
        # expanded (a card number inside a compressed object is not in the
        # file's bytes, yet it is on disk all the same).
        blobs = []
        for path in files:
            with open(path, "rb") as f:
                blobs.append((path, f.read()))
        expanded = all_stored_text(self.daemon.db_path())
        self.assertIn(b'"object":"payment_intent"', expanded, "compressed objects were expanded")
        blobs.append(("turnpike.db (expanded values)", expanded))
        for path, data in blobs:
            total += len(data)
            for pan in PANS + [BAD_LUHN]:
                for form in forms(pan):
                    if form in data:
                        found.append((os.path.basename(path), form.decode()))
        self.assertGreater(total, 100000, "searched the real files")
        # the search itself finds every form it looks for
        sample = b"x 4242 4242 4242 4242 y 3714-496353-98431 z 6011111111111117"
        self.assertIn(forms("4242424242424242")[1], sample)
        self.assertIn(forms("371449635398431")[2], sample)
        self.assertIn(forms("6011111111111117")[0], sample)
        self.assertEqual(found, [], "card numbers found on disk")

    def test_zz_tables_hold_no_card_digits_beyond_last4(self):
        # The store after the run above (or a fresh run): idempotency rows keep
        # a keyed hash of the request, never the body (and a plain hash of its
        # method and path); attempts only a token.
        import sqlite3
        db = sqlite3.connect(self.daemon.db_path())
        try:
            for (h,) in db.execute("SELECT req_hash FROM idempotency"):
                self.assertRegex(h, r"^[0-9a-f]{64}:[0-9a-f]{16}$")
            cols = [r[1] for r in db.execute("PRAGMA table_info(attempts)")]
            self.assertNotIn("pan", cols)
            pat = re.compile(rb"\d{13,19}")
            for table in ("attempts", "idempotency", "payment_methods", "charges", "events", "audit_log"):
                for row in db.execute("SELECT * FROM %s" % table):
                    for v in row:
                        v = stored_json(v)
                        b = v if isinstance(v, bytes) else str(v).encode()
                        for m in pat.findall(b):
                            self.assertNotIn(m.decode(), PANS, (table, row))
        finally:
            db.close()


if __name__ == "__main__":
    main()
