"""Card vault keys: the file KEK (default, with a warning) and a PKCS#11 KEK on
a SoftHSM2 token the test creates; `turnpike kek rotate` under payment load,
background re-wrap to the new version, and old saved cards still charging."""
import json
import sqlite3
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import (BIN, PAN_OK, Daemon, card, main, open_db_ro)

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"
PI = "/v1/payment_intents"
REWRAP_WAIT_S = 60.0


def vault_versions(daemon):
    """{kek_version: count} read from the vault blob headers (format 2:
    byte 0 = 2, bytes 1..4 = version, big endian)."""
    db = open_db_ro(daemon)
    try:
        out = {}
        for (blob,) in db.execute("SELECT blob FROM vault"):
            b = bytes(blob)
            v = int.from_bytes(b[1:5], "big") if b and b[0] == 2 else -1
            out[v] = out.get(v, 0) + 1
        return out
    finally:
        db.close()


class Load:
    """Payments in a background thread until stopped; counts outcomes."""

    def __init__(self, client):
        self.client = client
        self.ok = 0
        self.bad = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set() and len(self.bad) < 20:
            r = self.client.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true",
                                      "payment_method_data": card(PAN_OK)})
            if r.status == 200 and r.json.get("status") == "succeeded":
                self.ok += 1
            else:
                self.bad.append(r)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(60)


class KekHelpers:
    """Rotation, saved cards and charges against self.daemon."""

    config = None
    env = None

    def rotate(self):
        cmd = [BIN, "kek", "rotate", "--data", self.daemon.data]
        if self.config is not None:
            ini = os.path.join(self.daemon.root, "turnpike.ini")
            cmd += ["--config", ini]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                           env=dict(os.environ, **(self.env or {})), stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return json.loads(p.stdout)

    def save_cards(self, n):
        """n cards saved to a customer (a card that paid without one is spent)."""
        cus = self.c().post("/v1/customers", {}).json["id"]
        self.saved_customer = cus
        ids = []
        for _ in range(n):
            r = self.c().post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
            self.assertEqual(r.status, 200, r)
            a = self.c().post("/v1/payment_methods/%s/attach" % r.json["id"], {"customer": cus})
            self.assertEqual(a.status, 200, a)
            ids.append(r.json["id"])
        return ids

    def wait_all_at(self, version):
        deadline = time.monotonic() + REWRAP_WAIT_S
        while time.monotonic() < deadline:
            vv = vault_versions(self.daemon)
            if set(vv) == {version}:
                return vv
            time.sleep(0.2)
        self.fail("records not re-wrapped to v%d: %r" % (version, vault_versions(self.daemon)))

    def charge(self, pm):
        cus = self.c().get("/v1/payment_methods/" + pm).json.get("customer")
        r = self.c().post(PI, {"amount": 2500, "currency": "usd", "confirm": "true", "payment_method": pm,
                               **({"customer": cus} if cus else {})})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "succeeded", r)



class KekRotationMixin(KekHelpers):
    """Shared scenario: saved cards, rotate under load, re-wrap, charge."""

    def test_rotation_under_load_rewraps_everything_and_old_cards_still_charge(self):
        saved = self.save_cards(30)
        self.assertEqual(set(vault_versions(self.daemon)), {1})
        with Load(self.c()) as load:
            time.sleep(0.5)
            v = self.rotate()
            self.assertEqual(v["version"], 2)
            # reads keep working while the re-wrap runs: charge old cards now
            for pm in saved[:5]:
                self.charge(pm)
            self.wait_all_at(2)
            time.sleep(0.3)
        self.assertEqual(load.bad, [], "payments failed during rotation")
        self.assertGreater(load.ok, 5)
        for pm in saved[5:10]:
            self.charge(pm)
        # a second rotation too, new records get the new version at once
        self.assertEqual(self.rotate()["version"], 3)
        self.wait_all_at(3)
        new = self.save_cards(1)[0]
        self.assertEqual(set(vault_versions(self.daemon)), {3})
        self.charge(new)
        self.charge(saved[-1])
        # the re-wrap's audit row is committed a settle window after the
        # last record (and logged after that commit): wait for it, bounded
        self.daemon.wait_log('"kek_rewrap_done","version":3', timeout=15)
        db = open_db_ro(self.daemon)
        try:
            versions = [r[0] for r in db.execute("SELECT version FROM kek_versions ORDER BY version")]
            actions = [r[0] for r in db.execute("SELECT action FROM audit_log ORDER BY seq")]
        finally:
            db.close()
        self.assertEqual(versions, [1, 2, 3])
        self.assertEqual(actions.count("kek.rotated"), 2, actions)
        self.assertIn("kek.rewrapped", actions)

    def test_a_vault_record_holds_no_clear_card_data(self):
        pm = self.save_cards(1)[0]
        db = open_db_ro(self.daemon)
        try:
            (blob,) = db.execute("SELECT blob FROM vault WHERE token = ?", (pm,)).fetchone()
        finally:
            db.close()
        self.assertNotIn(PAN_OK.encode(), bytes(blob))
        self.assertNotIn(PAN_OK[-4:].encode() + b"|", bytes(blob))


class FileKekTest(KekRotationMixin, unittest.TestCase):
    MERCHANTS = ("m",)

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.daemon.create_merchant("m")
        cls.daemon.start(config="[vault]\nrewrap_settle_ms = 300\n")

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()

    def c(self):
        return self.daemon.client("m")

    def test_a_store_without_payments_whose_vault_key_is_gone_is_refused_without_a_new_one(self):
        # it holds the key's check value (and masked fingerprint keys): a new
        # vault.key written then refused as a mismatch would block every start
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start()
            self.assertEqual(d.stop(), 0)
            os.replace(os.path.join(d.data, "vault.key"), os.path.join(d.root, "vault.key"))
            with self.assertRaises(RuntimeError) as e:
                d.start()
            self.assertIn("vault_key_missing", str(e.exception))
            self.assertFalse(os.path.exists(os.path.join(d.data, "vault.key")))
            os.replace(os.path.join(d.root, "vault.key"), os.path.join(d.data, "vault.key"))
            d.start()
        finally:
            d.cleanup()

    def test_keys_without_their_store_are_refused_not_given_a_new_store(self):
        # The store's WAL (every commit until a checkpoint) or its file lost,
        # with the keys still there: a new empty store with a new demo
        # merchant would take payments and charge every retry again.
        for lose in ("wal", "db", "empty"):
            with self.subTest(lose=lose):
                d = Daemon()
                try:
                    d.start()  # a first start: the store and its demo merchant in the WAL alone
                    d.kill9()
                    db = os.path.join(d.data, "turnpike.db")
                    if lose == "wal":
                        os.unlink(db + "-wal")
                        if os.path.exists(db + "-shm"):
                            os.unlink(db + "-shm")
                    elif lose == "db":
                        for f in (db, db + "-wal", db + "-shm"):
                            if os.path.exists(f):
                                os.unlink(f)
                    else:
                        for f in (db + "-wal", db + "-shm"):
                            if os.path.exists(f):
                                os.unlink(f)
                        open(db, "wb").close()
                    with self.assertRaises(RuntimeError) as e:
                        d.start()
                    self.assertIn("store_missing", str(e.exception))
                    # nothing was made in its place
                    out = subprocess.run(["sqlite3", db, "select count(*) from sqlite_master"],
                                         capture_output=True, text=True, timeout=30)
                    self.assertEqual(out.stdout.strip(), "0", out)
                finally:
                    d.cleanup()

    def test_a_store_that_lost_its_wal_after_a_checkpoint_is_refused(self):
        # merchant create checkpoints the schema into the file; the first
        # start's commits (the KEK version among them) live in the WAL
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start()
            d.kill9()
            db = os.path.join(d.data, "turnpike.db")
            for f in (db + "-wal", db + "-shm"):
                if os.path.exists(f):
                    os.unlink(f)
            with self.assertRaises(RuntimeError) as e:
                d.start()
            self.assertIn("store_missing", str(e.exception))
        finally:
            d.cleanup()

    def test_the_store_files_are_the_owners_alone(self):
        d = Daemon()
        try:
            os.makedirs(d.data, mode=0o755, exist_ok=True)
            os.chmod(d.data, 0o755)
            old = os.umask(0o022)
            try:
                d.start()
            finally:
                os.umask(old)
            for f in ("turnpike.db", "turnpike.db-wal", "turnpike.db-shm"):
                p = os.path.join(d.data, f)
                if os.path.exists(p):
                    self.assertEqual(os.stat(p).st_mode & 0o077, 0, f)
        finally:
            d.cleanup()

    def test_a_key_file_others_may_write_or_a_link_is_refused_one_they_may_read_is_tightened(self):
        """A KEK or vault.key that another user could have written (a data
        directory others can write: a planted all-zero kek-v2.key sealed
        every new card) is refused at start, and so is a symbolic link;
        one others could only read is made 0600 and the start goes on."""
        d = Daemon()
        try:
            self.stopped_store_with_a_card(d)
            kek = os.path.join(d.data, "kek-v1.key")
            os.chmod(kek, 0o644)
            d.start()
            self.assertEqual(stat.S_IMODE(os.stat(kek).st_mode), 0o600)
            self.assertIn('"secret_file_tightened"', d.log_text())
            self.assertEqual(d.stop(), 0)
            for name, how in (("kek-v1.key", "chmod"), ("vault.key", "chmod"), ("kek-v1.key", "link"),
                              ("kek-v1.key", "short")):
                with self.subTest(name=name, how=how):
                    p = os.path.join(d.data, name)
                    if how == "chmod":
                        os.chmod(p, 0o622)
                    elif how == "short":  # there but torn: said so, not "missing"
                        os.replace(p, p + ".real")
                        with open(p, "wb") as f:
                            f.write(b"0" * 16)
                        os.chmod(p, 0o600)
                    else:
                        os.replace(p, p + ".real")
                        os.symlink(p + ".real", p)
                    with self.assertRaises(RuntimeError):
                        d.start()
                    self.assertIn('"kek_file_bad"' if how == "short" else '"secret_file_unsafe"', d.log_text())
                    if how == "chmod":
                        os.chmod(p, 0o600)
                    else:
                        os.unlink(p)
                        os.replace(p + ".real", p)
            # a FIFO planted where an optional key is looked for is refused at
            # once, not opened for a writer that never comes (the start hung)
            fifo = os.path.join(d.data, "oauth_signing_key.prev.pem")
            os.mkfifo(fifo)
            d.start()
            self.assertEqual(d.client("m").get("/v1/payment_methods", {"type": "card"}).status, 200)
            self.assertIn("oauth_signing_key.prev.pem", d.log_text())
        finally:
            d.cleanup()

    def test_a_restart_inside_the_settle_period_still_says_the_rewrap_is_done(self):
        """Every record re-wrapped, the gateway stopped within the settle
        period: the next start found nothing to do and said nothing, so
        kek_rewrap_done (the operator's word to retire the old key) and the
        kek.rewrapped audit entry never came."""
        d = Daemon()
        try:
            self.stopped_store_with_a_card(d)
            d.start(config="[vault]\nrewrap_settle_ms = 600000\nkek_poll_seconds = 1\n")
            self.assertEqual(self.rotate_offline(d), 2)
            self.wait_versions(d, {2: 1})
            self.assertNotIn("kek_rewrap_done", d.log_text())
            self.assertEqual(d.stop(), 0)
            d.start(config="[vault]\nrewrap_settle_ms = 600000\nkek_poll_seconds = 1\n")
            deadline = time.monotonic() + REWRAP_WAIT_S
            while "kek_rewrap_done" not in d.log_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            self.assertIn("kek_rewrap_done", d.log_text())
            db = open_db_ro(d)
            try:
                acts = [a for (a,) in db.execute("SELECT action FROM audit_log WHERE action LIKE 'kek.%' ORDER BY seq")]
            finally:
                db.close()
            self.assertEqual(acts[-2:], ["kek.rotated", "kek.rewrapped"], acts)
            # said once: a later start owes nothing (meta kek_rewrapped_version)
            self.assertEqual(d.stop(), 0)
            d.start(config="[vault]\nrewrap_settle_ms = 600000\nkek_poll_seconds = 1\n")
            time.sleep(1.5)
            self.assertEqual(d.log_text().count('"kek_rewrap_done"'), 1)
        finally:
            d.cleanup()

    def stopped_store_with_a_card(self, d):
        """d started, a card saved, d stopped: the card's id."""
        d.create_merchant("m")
        d.start()
        r = d.client("m").post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(d.stop(), 0)
        return r.json["id"]

    def rotate_offline(self, d):
        p = subprocess.run([BIN, "kek", "rotate", "--data", d.data], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)["version"]

    def wait_versions(self, d, want):
        deadline = time.monotonic() + REWRAP_WAIT_S
        while vault_versions(d) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(vault_versions(d), want)

    def test_a_rotation_uses_a_key_file_already_there_and_rewrites_a_torn_one(self):
        # A store restored from an older backup, while a newer backup sealed
        # with kek-v2.key is kept: rotating again must not need that file
        # gone (it failed for good: "File exists"), nor replace it. A file
        # shorter than a key (a rotation killed while writing it) is written.
        d = Daemon()
        try:
            pm = self.stopped_store_with_a_card(d)
            kept = os.urandom(32)
            with open(os.path.join(d.data, "kek-v2.key"), "wb") as f:
                f.write(kept)
            os.chmod(os.path.join(d.data, "kek-v2.key"), 0o600)
            open(os.path.join(d.data, "kek-v3.key"), "wb").close()
            for want in (2, 3):
                self.assertEqual(self.rotate_offline(d), want)
            with open(os.path.join(d.data, "kek-v2.key"), "rb") as f:
                self.assertEqual(f.read(), kept)
            self.assertEqual(os.path.getsize(os.path.join(d.data, "kek-v3.key")), 32)
            d.start()
            self.wait_versions(d, {3: 1})
            cus = d.client("m").post("/v1/customers", {}).json["id"]
            self.assertEqual(d.client("m").post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
            pi = d.client("m").post("/v1/payment_intents", {"amount": 500, "currency": "usd", "confirm": "true",
                                                            "customer": cus, "payment_method": pm})
            self.assertEqual((pi.status, pi.json.get("status")), (200, "succeeded"), pi)
        finally:
            d.cleanup()

    def test_an_older_kek_a_record_still_names_must_be_there_too(self):
        # A re-wrap not finished (or a backup taken during one): cards still
        # under v1 while v2 is current. Without kek-v1.key the gateway said
        # ready and failed those cards with a 500.
        d = Daemon()
        try:
            self.stopped_store_with_a_card(d)
            self.assertEqual(self.rotate_offline(d), 2)
            self.assertEqual(vault_versions(d), {1: 1})
            os.rename(os.path.join(d.data, "kek-v1.key"), os.path.join(d.root, "kek-v1.key"))
            with self.assertRaises(RuntimeError) as e:
                d.start()
            self.assertIn("kek_missing", str(e.exception))
            self.assertIn('"version":1', str(e.exception))
            os.rename(os.path.join(d.root, "kek-v1.key"), os.path.join(d.data, "kek-v1.key"))
            d.start()
            self.wait_versions(d, {2: 1})
        finally:
            d.cleanup()

    def test_one_record_naming_a_version_never_made_does_not_stop_the_start(self):
        # A flipped bit in one record's KEK-version field named kek-v7.key,
        # a file that never existed, and the gateway refused to start; a
        # damaged record fails alone when read, as any other damage does.
        d = Daemon()
        try:
            pm = self.stopped_store_with_a_card(d)
            d.start()
            other = d.client("m").post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]}).json["id"]
            self.assertEqual(d.stop(), 0)
            db = sqlite3.connect(os.path.join(d.data, "turnpike.db"))
            try:
                (tok, blob), = db.execute("SELECT token, blob FROM vault ORDER BY token LIMIT 1").fetchall()
                b = bytearray(blob)
                self.assertEqual(b[0], 2)
                b[4] ^= 6  # version 1 -> 7
                db.execute("UPDATE vault SET blob = ? WHERE token = ?", (bytes(b), tok))
                db.commit()
            finally:
                db.close()
            d.start()
            self.assertIn('"vault_record_unreadable"', d.log_text())
            self.assertNotIn("kek_missing", d.log_text())
            c = d.client("m")
            pays = [c.post("/v1/payment_intents", {"amount": 500, "currency": "usd", "confirm": "true",
                                                   "payment_method": p}) for p in (pm, other)]
            # one of the two is the damaged record: it fails alone, the other pays
            self.assertEqual(sorted(r.status for r in pays), [200, 500], [r.json for r in pays])
            self.assertEqual([r.json["status"] for r in pays if r.status == 200], ["succeeded"])
        finally:
            d.cleanup()

    def test_a_deleted_card_s_sealed_record_is_gone_from_the_store_file(self):
        # A deleted card's sealed record stayed in turnpike.db's free space
        # (SQLite leaves a deleted cell's bytes in place): with the key
        # files beside it, the number could be opened again. The writer
        # zeroes what it deletes (secure_delete=FAST).
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start()
            c = d.client("m")
            cus = c.post("/v1/customers", {}).json["id"]
            cards = [c.post("/v1/customers/%s/sources" % cus, {"source": t}).json["id"]
                     for t in ("tok_visa", "tok_mastercard", "tok_amex")]
            self.assertTrue(all(x and x.startswith("card_") for x in cards), cards)
            self.assertEqual(d.stop(), 0)
            db = sqlite3.connect(os.path.join(d.data, "turnpike.db"))
            try:
                before = dict(db.execute("SELECT token, blob FROM vault").fetchall())
            finally:
                db.close()
            self.assertEqual(len(before), 3, before.keys())
            d.start()
            c = d.client("m")
            self.assertEqual(c.delete("/v1/customers/%s/sources/%s" % (cus, cards[1])).status, 200)
            self.assertEqual(d.stop(), 0)  # a clean stop checkpoints the WAL into the file
            db = sqlite3.connect(os.path.join(d.data, "turnpike.db"))
            try:
                after = dict(db.execute("SELECT token, blob FROM vault").fetchall())
            finally:
                db.close()
            gone = [t for t in before if t not in after]
            self.assertEqual(len(gone), 1, (before.keys(), after.keys()))
            with open(os.path.join(d.data, "turnpike.db"), "rb") as f:
                raw = f.read()
            sealed = before[gone[0]]
            self.assertGreater(len(sealed), 48)
            self.assertNotIn(sealed[-32:], raw)  # its ciphertext and tag
            for t in after:
                self.assertIn(after[t][-32:], raw)  # the search does find what is kept
        finally:
            d.cleanup()

    def test_a_store_whose_kek_file_is_gone_is_refused_at_start(self):
        d = Daemon()
        try:
            d.create_merchant("m")
            d.start()
            r = d.client("m").post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(d.stop(), 0)
            def refused(event, other_key=None):
                """The start fails with event; other_key: that file first replaced by another key."""
                if other_key:
                    with open(os.path.join(d.data, other_key), "wb") as f:
                        f.write(os.urandom(32))
                    os.chmod(os.path.join(d.data, other_key), 0o600)
                with self.assertRaises(RuntimeError) as e:
                    d.start()
                self.assertIn(event, str(e.exception))

            os.rename(os.path.join(d.data, "kek-v1.key"), os.path.join(d.root, "kek-v1.key"))
            for name in ("jwe-ec.pem", "jwe-rsa.pem"):  # as after a restore: the keys not copied in yet
                os.rename(os.path.join(d.data, name), os.path.join(d.root, name))
            refused("kek_missing")
            self.assertFalse(os.path.exists(os.path.join(d.data, "kek-v1.key")))  # not made anew
            # nor the JWE keys: an operator copying in only the KEK the refusal
            # named started with new ones, and card data encrypted to the
            # old ones was refused
            self.assertFalse([n for n in os.listdir(d.data) if n.startswith("jwe-")])
            for name in ("jwe-ec.pem", "jwe-rsa.pem"):
                os.rename(os.path.join(d.root, name), os.path.join(d.data, name))
            # another key of that version (another store's, one made anew): the cards do not open
            refused("kek_missing", "kek-v1.key")
            # another vault.key: sealed webhook secrets, idempotency records and fingerprints would all change
            os.replace(os.path.join(d.data, "vault.key"), os.path.join(d.root, "vault.key"))
            refused("vault_key_mismatch", "vault.key")
            for name in ("kek-v1.key", "vault.key"):
                os.replace(os.path.join(d.root, name), os.path.join(d.data, name))
            d.start()  # its own keys back: it starts and the card pays
            cus = d.client("m").post("/v1/customers", {}).json["id"]
            self.assertEqual(d.client("m").post("/v1/payment_methods/%s/attach" % r.json["id"],
                                                {"customer": cus}).status, 200)
        finally:
            d.cleanup()

    def test_file_kek_is_0600_and_warned_about(self):
        p = os.path.join(self.daemon.data, "kek-v1.key")
        st = os.stat(p)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_size, 32)
        self.assertIn('"vault_file_kek"', self.daemon.log_text())


class FingerprintKeyTest(unittest.TestCase):
    """A merchant's card-fingerprint key is stored masked by a pad from
    vault.key, which stays out of the store and its backups: the store alone
    does not give the key (with it, trying the digits a fingerprint's last4
    and BIN leave open gives back the card number). A store from before is
    masked at the next start, and every fingerprint stays what it was."""

    def test_the_stored_key_is_not_the_key_and_fingerprints_survive_the_masking(self):
        import base64, hashlib, hmac
        d = Daemon()
        try:
            m = d.create_merchant("m")
            d.start()
            fp = lambda: d.client("m").post("/v1/payment_methods", {"type": "card", "card[number]": PAN_OK,
                                                                    "card[exp_month]": "12",
                                                                    "card[exp_year]": "2034"}).json["card"]["fingerprint"]
            before = fp()
            d.stop()
            with open(os.path.join(d.data, "vault.key"), "rb") as f:
                vk = f.read()
            pad = hmac.new(vk, ("turnpike fingerprint key v1:" + m["id"]).encode(), hashlib.sha256).digest()
            con = sqlite3.connect(d.db_path())
            stored, masked = con.execute("SELECT fp_key, fp_key_masked FROM merchants WHERE id=?", (m["id"],)).fetchone()
            b62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            as_fp = lambda key: "".join(b62[b % 62] for b in hmac.new(key, PAN_OK.encode(), hashlib.sha256).digest()[:16])
            self.assertEqual(masked, 1)
            self.assertNotEqual(as_fp(bytes(stored)), before)  # the store alone: not the key
            key = bytes(a ^ b for a, b in zip(bytes(stored), pad))
            self.assertEqual(as_fp(key), before)                # with vault.key: the key
            # a store from before: the key itself, unmasked
            with con:
                con.execute("UPDATE merchants SET fp_key=?, fp_key_masked=0 WHERE id=?", (key, m["id"]))
            con.close()
            d.start()
            self.assertIn('"fingerprint_keys_masked"', d.log_text())
            self.assertEqual(fp(), before)
            d.stop()
            con = sqlite3.connect(d.db_path())
            self.assertEqual(con.execute("SELECT fp_key, fp_key_masked FROM merchants WHERE id=?",
                                         (m["id"],)).fetchone(), (stored, 1))
            con.close()
        finally:
            d.cleanup()

class PollOff(KekHelpers):
    """A daemon that polls for a new KEK once an hour: SIGHUP tells it."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.daemon.create_merchant("m")
        cls.config = "[vault]\nkek_poll_seconds = 3600\nrewrap_settle_ms = 300\n"
        cls.daemon.start(config=cls.config)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()

    def c(self):
        return self.daemon.client("m")


class IncompleteRewrapTest(PollOff, unittest.TestCase):
    """A record the re-wrap cannot open (its version's key is gone) keeps
    the job from announcing itself done: kek_rewrap_incomplete names what
    is left and the job tries again; done (log and audit) comes only when
    no record names an older version."""

    def set_version(self, token, version):
        db = sqlite3.connect(self.daemon.db_path(), timeout=30)
        try:
            (blob,) = db.execute("SELECT blob FROM vault WHERE token = ?", (token,)).fetchone()
            blob = bytes(blob)
            db.execute("UPDATE vault SET blob = ? WHERE token = ?", (blob[:1] + version.to_bytes(4, "big") + blob[5:], token))
            db.commit()
        finally:
            db.close()

    def test_a_record_left_behind_is_not_called_done(self):
        saved = self.save_cards(4)
        self.set_version(saved[0], 9)  # no key for version 9
        self.assertEqual(self.rotate()["version"], 2)
        os.kill(self.daemon.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + REWRAP_WAIT_S
        while "kek_rewrap_incomplete" not in self.daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = self.daemon.log_text()
        self.assertIn('"records_left":1', log)
        self.assertEqual(vault_versions(self.daemon), {2: 3, 9: 1})
        self.assertNotIn("kek_rewrap_done", log)
        # charged meanwhile, it cannot be opened: a 500, and the operator is told which record
        cus = self.c().get("/v1/payment_methods/" + saved[0]).json["customer"]
        r = self.c().post(PI, {"amount": 2500, "currency": "usd", "confirm": "true", "payment_method": saved[0],
                               "customer": cus})
        self.assertEqual(r.status, 500, r)
        self.assertIn('"event":"vault_record_unreadable"', self.daemon.log_text())
        self.assertIn('"payment_method":"%s"' % saved[0], self.daemon.log_text())
        self.set_version(saved[0], 1)  # its key is back: the next try finishes
        self.wait_all_at(2)
        deadline = time.monotonic() + 10
        while "kek_rewrap_done" not in self.daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertIn("kek_rewrap_done", self.daemon.log_text())
        self.charge(saved[0])


class SighupTest(PollOff, unittest.TestCase):
    """With polling effectively off, SIGHUP makes the daemon take a new KEK."""

    def test_sighup_picks_up_a_rotation(self):
        saved = self.save_cards(5)
        self.assertEqual(self.rotate()["version"], 2)
        time.sleep(1.0)
        self.assertEqual(set(vault_versions(self.daemon)), {1}, "no poll for an hour")
        os.kill(self.daemon.proc.pid, signal.SIGHUP)
        self.wait_all_at(2)
        self.assertEqual(self.daemon.proc.poll(), None, "SIGHUP does not stop the daemon")
        self.charge(saved[0])


class SoftHsm:
    """A SoftHSM2 token made for the class, and the daemon on it through
    module (SoftHSM2 itself, or p11fault.c in front of it)."""

    @classmethod
    def start_on_token(cls, module, extra_env=None, extra_config=""):
        cls.hsm = tempfile.mkdtemp(prefix="tp-hsm-")
        tokens = os.path.join(cls.hsm, "tokens")
        os.makedirs(tokens)
        conf = os.path.join(cls.hsm, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % tokens)
        cls.env = dict({"SOFTHSM2_CONF": conf, "TURNPIKE_VAULT_PKCS11_PIN": PIN}, **(extra_env or {}))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "T", "--pin", PIN,
                        "--so-pin", "5678"], check=True, env=dict(os.environ, **cls.env),
                       stdout=subprocess.DEVNULL, timeout=60)
        cls.config = ("[vault]\nkek = pkcs11\npkcs11_module = %s\npkcs11_token_label = T\nrewrap_settle_ms = 300\n"
                      % module) + extra_config
        cls.daemon = Daemon()
        cls.daemon.create_merchant("m")
        try:
            cls.daemon.start(extra_env=cls.env, config=cls.config)
        except Exception:
            cls.daemon.cleanup()
            shutil.rmtree(cls.hsm, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        shutil.rmtree(cls.hsm, ignore_errors=True)


class Pkcs11KekTest(SoftHsm, KekRotationMixin, unittest.TestCase):
    MERCHANTS = ("m",)

    @classmethod
    def setUpClass(cls):
        cls.start_on_token(SOFTHSM_MODULE, extra_config="pkcs11_key_label = turnpike-kek\n[audit]\n"
                                                        "checkpoint_seconds = 1\n")

    def c(self):
        return self.daemon.client("m")

    def test_a_token_without_the_store_s_key_is_refused_at_start(self):
        # Another, valid token (T2) that does not hold the store's KEK: the
        # gateway used to start, say ready, and fail every card with a 500.
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "T2", "--pin", PIN,
                        "--so-pin", "5678"], check=True, env=dict(os.environ, **self.env),
                       stdout=subprocess.DEVNULL, timeout=60)
        d = Daemon()
        try:
            d.create_merchant("m")
            own = self.config.replace("pkcs11_key_label = turnpike-kek", "pkcs11_key_label = tp-probe-kek")
            d.start(extra_env=self.env, config=own)
            r = d.client("m").post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(d.stop(), 0)
            with self.assertRaises(RuntimeError) as e:
                d.start(extra_env=self.env, config=own.replace("pkcs11_token_label = T\n", "pkcs11_token_label = T2\n"))
            self.assertIn("kek_missing", str(e.exception))
        finally:
            d.cleanup()

    def test_no_key_material_in_the_data_dir_and_checkpoints_signed_on_the_token(self):
        self.save_cards(2)
        names = os.listdir(self.daemon.data)
        self.assertFalse([n for n in names if n.startswith("kek-")], names)
        self.assertFalse([n for n in names if n.startswith("audit-signing")], names)
        self.assertNotIn('"vault_file_kek"', self.daemon.log_text())
        self.assertIn('"kek_pkcs11_ready"', self.daemon.log_text())
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline and n == 0:
            db = open_db_ro(self.daemon)
            try:
                n = db.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0]
            finally:
                db.close()
            time.sleep(0.2)
        self.assertGreater(n, 0)
        p = subprocess.run([BIN, "audit", "verify", "--data", self.daemon.data], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertGreater(json.loads(p.stdout)["checkpoints"], 0)

    def test_rotate_without_the_hsm_config_is_refused(self):
        p = subprocess.run([BIN, "kek", "rotate", "--data", self.daemon.data], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, env=dict(os.environ, **self.env))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"pkcs11 provider", p.stderr)
        self.assertFalse([n for n in os.listdir(self.daemon.data) if n.startswith("kek-")])

    def test_wrong_pin_refuses_to_start(self):
        d = Daemon()
        try:
            d.create_merchant("x")
            with self.assertRaises(RuntimeError) as cm:
                d.start(extra_env=dict(self.env, TURNPIKE_VAULT_PKCS11_PIN="0000"), config=self.config)
            self.assertIn("kek_pkcs11_failed", str(cm.exception))
            # an exit status a supervisor is told not to restart on (each
            # start is another wrong login: a real token locks after a few)
            self.assertIn("exited with 78 ", str(cm.exception))
        finally:
            d.cleanup()




P11FAULT_SO = os.environ.get("TP_P11FAULT_SO") or os.path.join(
    os.path.dirname(BIN), "tests", "integration", "libp11fault.so")


class HsmSessionLostTest(SoftHsm, KekHelpers, unittest.TestCase):
    """The token drops its session (pulled and put back; tests/integration/
    p11fault.c): card payments fail closed (500, nothing stored), each
    failure is logged, and once the token is back the daemon opens a new
    session and logs in by itself: no restart."""

    @classmethod
    def setUpClass(cls):
        cls.removed = tempfile.mktemp(prefix="tp-p11-removed-")
        cls.start_on_token(P11FAULT_SO, extra_env={"TP_P11FAULT_FILE": cls.removed})

    def c(self):
        return self.daemon.client("m")

    def test_payments_come_back_when_the_token_does(self):
        saved = self.save_cards(1)[0]
        self.charge(saved)
        before = len(self.c().list_all(PI))
        open(self.removed, "w").close()
        try:
            r = self.c().post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method": saved,
                                   "customer": self.saved_customer})
            self.assertEqual(r.status, 500, r)
            r = self.c().post(PI, {"amount": 1500, "currency": "usd", "confirm": "true",
                                   "payment_method_data": card(PAN_OK)})
            # a new card cannot be sealed: the vault is unavailable, and a retry
            # (the SDKs retry a 503) may do better (it was a 500 "unexpected
            # error", which reads as a bug)
            self.assertEqual((r.status, r.json["error"]["type"], r.json["error"]["tp_code"]), (503, "api_error", 8018), r)
        finally:
            os.unlink(self.removed)
        self.assertIn('"kek_pkcs11_error"', self.daemon.log_text())
        self.assertEqual(len(self.c().list_all(PI)), before, "nothing stored for the failed payments")
        deadline = time.monotonic() + 10
        while True:
            r = self.c().post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method": saved,
                                   "customer": self.saved_customer})
            if r.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)
        self.assertIn('"kek_pkcs11_reopened"', self.daemon.log_text())
        self.save_cards(1)

    def readyz(self):
        r = self.c().get("/readyz", key=None)
        return r.status, (r.json or {}).get("reason")

    def wait_readyz(self, want):
        deadline = time.monotonic() + 15
        got = self.readyz()
        while got != want and time.monotonic() < deadline:
            time.sleep(0.2)
            got = self.readyz()
        return got

    def test_readyz_is_not_ready_while_the_token_is_gone(self):
        """A load balancer asks /readyz: with the HSM gone every card payment
        fails, so the gateway says so within [vault] kek_poll_seconds (2 s),
        and is ready again once the token is back."""
        self.assertEqual(self.wait_readyz((200, None)), (200, None))
        open(self.removed, "w").close()
        try:
            self.assertEqual(self.wait_readyz((503, "vault_keys_unavailable")), (503, "vault_keys_unavailable"))
            self.assertIn('"kek_not_ready"', self.daemon.wait_log('"kek_not_ready"'))
        finally:
            os.unlink(self.removed)
        self.assertEqual(self.wait_readyz((200, None)), (200, None))
        self.assertIn('"kek_ready"', self.daemon.wait_log('"kek_ready"'))
        r = self.c().post(PI, {"amount": 1500, "currency": "usd", "confirm": "true",
                               "payment_method_data": card(PAN_OK)})
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)

class UnusableRotationTest(SoftHsm, KekHelpers, unittest.TestCase):
    """`kek rotate` run with a config that names another key label than the
    daemon's (the default one): version 2 is made on the token under a label
    the daemon does not look for. The daemon switched to it, every new card
    failed (500) while /readyz said ready, and a restart was refused. Now
    it keeps sealing with version 1, says why, and is not ready."""

    @classmethod
    def setUpClass(cls):
        cls.start_on_token(SOFTHSM_MODULE, extra_config="pkcs11_key_label = prod-kek\n")

    def test_a_version_the_daemon_cannot_use_is_not_switched_to(self):
        c = self.daemon.client("m")
        self.assertEqual(c.post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]}).status, 200)
        cli = os.path.join(self.hsm, "cli.ini")
        with open(cli, "w") as f:
            f.write(self.config.replace("pkcs11_key_label = prod-kek\n", ""))
        p = subprocess.run([BIN, "kek", "rotate", "--data", self.daemon.data, "--config", cli], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, env=dict(os.environ, **self.env))
        self.assertEqual(p.returncode, 0, p.stderr)
        deadline = time.monotonic() + 15
        while '"kek_version_unusable"' not in self.daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertIn('"kek_version_unusable"', self.daemon.log_text())
        r = c.get("/readyz", key=None)
        self.assertEqual((r.status, (r.json or {}).get("reason")), (503, "vault_keys_unavailable"), r)
        for _ in range(3):  # new cards are still sealed, with version 1
            r = c.post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
            self.assertEqual(r.status, 200, r)
        r = c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)
        self.assertNotIn('"kek_current"', self.daemon.log_text())
        # a restart in that state starts the same way (it was refused:
        # kek_missing, one deploy from an outage), and the saved cards pay
        self.assertEqual(self.daemon.stop(), 0)
        self.daemon.start(extra_env=self.env, config=self.config)
        c = self.daemon.client("m")
        r = c.get("/readyz", key=None)
        self.assertEqual((r.status, (r.json or {}).get("reason")), (503, "vault_keys_unavailable"), r)
        r = c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)


class FileUnusableVersionTest(unittest.TestCase):
    """The file provider's newest version is unreadable here (its key file
    moved away) and nothing is sealed under it: the start goes on with the
    version before it, not ready; the key put back and a SIGHUP, the daemon
    takes it at once (the once-a-minute retry of an unusable version does
    not hold up a SIGHUP)."""

    def test_start_on_the_previous_version_and_sighup_after_the_fix(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start()
        self.assertEqual(d.client("m").post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})
                         .status, 200)
        self.assertEqual(d.stop(), 0)
        for _ in range(2):
            p = subprocess.run([BIN, "kek", "rotate", "--data", d.data], capture_output=True, timeout=60,
                               stdin=subprocess.DEVNULL)
            self.assertEqual(p.returncode, 0, p.stderr)
        moved = os.path.join(d.root, "kek-v3.key")
        os.rename(os.path.join(d.data, "kek-v3.key"), moved)
        d.start()
        self.assertIn('"kek_version_unusable"', d.log_text())
        c = d.client("m")
        r = c.get("/readyz", key=None)
        self.assertEqual((r.status, (r.json or {}).get("reason")), (503, "vault_keys_unavailable"), r)
        self.assertEqual(c.post("/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]}).status, 200)
        time.sleep(3)  # a poll or two: the retry now waits a minute
        os.rename(moved, os.path.join(d.data, "kek-v3.key"))
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while c.get("/readyz", key=None).status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(c.get("/readyz", key=None).status, 200)
        self.assertIn('"kek_current","version":3', d.log_text())


class HsmHangTest(SoftHsm, KekHelpers, unittest.TestCase):
    """A token that stops answering (a call that does not return): the
    readiness check does not wait for the session's lock behind it, and
    /readyz says not ready within a few seconds (it said ready while every
    card request hung); once the token answers, the payment completes and
    the gateway is ready again."""

    @classmethod
    def setUpClass(cls):
        cls.hang = tempfile.mktemp(prefix="tp-p11-hang-")
        cls.start_on_token(P11FAULT_SO, extra_env={"TP_P11FAULT_HANG_FILE": cls.hang},
                           extra_config="[server]\nthreads = 4\n")

    def readyz(self):
        # a connection that lands on the HTTP thread stuck in the token call
        # gets no answer: asked again, on a new connection
        try:
            r = self.daemon.client(None, timeout=2).get("/readyz")
        except OSError:
            return None, "no answer"
        return r.status, (r.json or {}).get("reason")

    def test_readyz_says_not_ready_while_a_token_call_hangs(self):
        import threading
        c = self.daemon.client("m", timeout=90)
        self.assertEqual(self.readyz(), (200, None))
        open(self.hang, "w").close()
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", c.post(
            PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})))
        try:
            t.start()
            deadline = time.monotonic() + 20
            state = self.readyz()
            while state != (503, "vault_keys_unavailable") and time.monotonic() < deadline:
                time.sleep(0.2)
                state = self.readyz()
            self.assertEqual(state, (503, "vault_keys_unavailable"))
        finally:
            os.unlink(self.hang)
        t.join(60)
        self.assertEqual((got["r"].status, got["r"].json.get("status")), (200, "succeeded"), got["r"])
        deadline = time.monotonic() + 20
        while self.readyz() != (200, None) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.readyz(), (200, None))


    def test_new_connections_go_to_threads_not_stuck_in_the_token(self):
        """While a token call holds one HTTP thread, every new connection
        is answered: the acceptor hands it to a thread not inside a
        handler. (libmicrohttpd's pool placed connections by descriptor
        number, and every fourth new one here waited on the stuck thread;
        with two threads, every second.)"""
        import socket
        import threading
        c = self.daemon.client("m", timeout=90)
        open(self.hang, "w").close()
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", c.post(
            "/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]})))
        held, answers = [], []
        try:
            t.start()
            time.sleep(1.0)  # the token call is in and hangs
            for _ in range(12):
                s = socket.create_connection((self.daemon.host, self.daemon.port), timeout=3)
                held.append(s)  # kept open: each new one gets a new descriptor
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    answers.append(s.recv(12)[:12])
                except OSError as e:
                    answers.append(repr(e))
        finally:
            os.unlink(self.hang)
            for s in held:
                s.close()
        t.join(60)
        self.assertEqual(answers, [b"HTTP/1.1 200"] * 12)
        self.assertEqual(got["r"].status, 200, got["r"])


    def test_the_connection_limit_holds_while_every_thread_is_stuck(self):
        """Every HTTP thread inside a token call that does not return, and
        5,000 clients connecting: the gateway holds at most its 4,096
        connections (the rest wait in the backlog), and answers again once
        the token does. The acceptor forgot, after a second, connections
        handed to a thread that had not started them, took thousands more,
        and libmicrohttpd deadlocked at its own limit: nothing was answered
        again and the stop hung."""
        import resource
        import socket
        import threading
        n = 5000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < n + 300:
            self.skipTest("hard limit %d" % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 300, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        open(self.hang, "w").close()
        got = {}
        posts = [threading.Thread(target=lambda i=i: got.setdefault(i, self.daemon.client("m", timeout=120).post(
            "/v1/payment_methods", {"type": "card", "card": card(PAN_OK)["card"]}))) for i in range(4)]
        socks = []
        try:
            for t in posts:
                t.start()
                time.sleep(0.3)  # each on its own thread (the others are busy)
            time.sleep(1.0)
            socks += harness.connect_many(self.daemon, n)
            time.sleep(3.0)  # past the acceptor's one-second look at dropped hand-overs
            fds = len(os.listdir("/proc/%d/fd" % self.daemon.proc.pid))
            self.assertLess(fds, 4096 + 200, "the gateway holds %d descriptors" % fds)
        finally:
            os.unlink(self.hang)
            for s in socks:
                s.close()
        for t in posts:
            t.join(60)
        self.assertEqual(sorted(r.status for r in got.values()), [200] * 4, got)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.daemon.client(None, timeout=2).get("/healthz").status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        self.assertEqual(self.daemon.client(None, timeout=5).get("/healthz").status, 200)


class HsmPinChangedTest(SoftHsm, KekHelpers, unittest.TestCase):
    """The session drops while the token's PIN is changed (or locked): the
    login the daemon tries again is refused as a wrong PIN. It stops
    logging in (it tried once a second for ever: a real token locks after
    a few wrong PINs, for the security officer to unlock) and says not
    ready until a restart with the right PIN."""

    @classmethod
    def setUpClass(cls):
        cls.removed = tempfile.mktemp(prefix="tp-p11-removed-")
        cls.pin_file = tempfile.mktemp(prefix="tp-p11-pin-")
        cls.start_on_token(P11FAULT_SO, extra_env={"TP_P11FAULT_FILE": cls.removed,
                                                   "TP_P11FAULT_PIN_FILE": cls.pin_file})

    @classmethod
    def tearDownClass(cls):
        for f in (cls.removed, cls.pin_file):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        super().tearDownClass()

    def test_a_refused_pin_is_not_tried_again(self):
        c = self.daemon.client("m")
        self.assertEqual(c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true",
                                     "payment_method_data": card(PAN_OK)}).status, 200)
        open(self.removed, "w").close()
        with open(self.pin_file, "w"):
            pass
        r = c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})
        self.assertEqual(r.status, 503, r)
        os.unlink(self.removed)  # back, with another PIN
        deadline = time.monotonic() + 15
        while '"kek_pkcs11_pin_refused"' not in self.daemon.log_text() and time.monotonic() < deadline:
            c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})
            time.sleep(0.3)
        self.assertIn('"kek_pkcs11_pin_refused"', self.daemon.log_text())
        for _ in range(8):  # requests and the readiness checks go on for 4 s: no more logins
            r = c.post(PI, {"amount": 1500, "currency": "usd", "confirm": "true", "payment_method_data": card(PAN_OK)})
            self.assertEqual(r.status, 503, r)
            time.sleep(0.5)
        with open(self.pin_file) as f:
            self.assertEqual(f.read().count("login"), 1)
        r = c.get("/readyz", key=None)
        self.assertEqual((r.status, (r.json or {}).get("reason")), (503, "vault_keys_unavailable"), r)


if __name__ == "__main__":
    main()
