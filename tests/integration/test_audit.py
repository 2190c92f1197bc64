"""The tamper-evident audit log: merchant creation (CLI and the demo merchant
of an empty store), refunds, KEK rotation and the configuration are recorded in a hash chain with signed checkpoints; `turnpike audit verify`
passes on the real log and names the first bad entry after any single-byte
edit, a deleted row, two swapped rows or a truncated tail."""
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

from harness import (BIN, PAN_OK, Daemon, card, main)

PI = "/v1/payment_intents"


def verify(data, *extra):
    p = subprocess.run([BIN, "audit", "verify", "--data", data] + list(extra), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL)
    out = json.loads(p.stdout) if p.stdout.strip() else {}
    return p.returncode, out, p.stderr.decode()


class AuditTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.daemon = d = Daemon()
        try:
            d.create_merchant("m")
            d.start(config="[audit]\ncheckpoint_seconds = 1\ncheckpoint_entries = 5\n"
                           "[vault]\nrewrap_settle_ms = 300\n")
            c = d.client("m")
            cls.refunds = []
            for i in range(12):
                r = c.post(PI, {"amount": 1000 + i, "currency": "usd", "confirm": "true",
                                "payment_method_data": card(PAN_OK)})
                assert r.status == 200, r
                rf = c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 100})
                assert rf.status == 200, rf
                cls.refunds.append(rf.json["id"])
                if i == 5:
                    time.sleep(1.5)  # let a checkpoint land mid-way
            p = subprocess.run([BIN, "kek", "rotate", "--data", d.data], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
            assert p.returncode == 0, p.stderr
            # the daemon picks the version up (a 2 s poll) and re-wraps; then a checkpoint (1 s)
            d.wait_log("kek_rewrap_done", timeout=30)
            time.sleep(2)
            assert d.stop() == 0
            cls.db = os.path.join(d.data, "turnpike.db")
            with sqlite3.connect(cls.db) as con:
                cls.rows = con.execute("SELECT seq, action, object_id, actor FROM audit_log ORDER BY seq").fetchall()
                cls.ckpts = [r[0] for r in con.execute("SELECT seq FROM audit_checkpoints ORDER BY seq")]
        except Exception:
            d.cleanup()
            raise
        cls.scratch = tempfile.mkdtemp(prefix="tp-audit-")

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        shutil.rmtree(cls.scratch, ignore_errors=True)

    def copy(self, name):
        """A private copy of the store to tamper with."""
        d = os.path.join(self.scratch, name)
        os.makedirs(d)
        src = sqlite3.connect(self.db)
        dst = sqlite3.connect(os.path.join(d, "turnpike.db"))
        src.backup(dst)
        src.close()
        return d, dst

    def assertBad(self, d, seq):
        rc, out, err = verify(d)
        self.assertEqual(rc, 1, (out, err))
        self.assertFalse(out["ok"])
        self.assertEqual(out["first_bad_seq"], seq, out)
        self.assertIn("entry %d" % seq, err)

    # -- the real log ---------------------------------------------------------
    def test_the_log_records_config_refunds_and_rotation(self):
        actions = [r[1] for r in self.rows]
        self.assertEqual([r[0] for r in self.rows], list(range(1, len(self.rows) + 1)))
        # `turnpike merchant create` ran before the first serve
        self.assertEqual(actions[0], "merchant.created")
        self.assertEqual(actions[1], "kek.created")
        self.assertIn("config.loaded", actions)
        self.assertIn("kek.rotated", actions)
        self.assertIn("kek.rewrapped", actions)
        refunded = [r[2] for r in self.rows if r[1] == "refund.created"]
        self.assertEqual(refunded, self.refunds)
        for r in self.rows:
            if r[1] == "refund.created":
                self.assertTrue(r[3].startswith("key:") or r[3] == "api", r)
        self.assertGreaterEqual(len(self.ckpts), 2, "periodic and shutdown checkpoints")
        self.assertEqual(self.ckpts[-1], self.rows[-1][0], "the shutdown checkpoint covers the head")

    def test_a_config_read_from_a_pipe_is_hashed_as_read(self):
        """--config <(...) or /dev/stdin: the file is read once and the
        bytes parsed are the ones hashed into config.loaded (it was opened
        again to hash it and, the pipe spent, the hash of nothing went in;
        a named pipe hung the start)."""
        import hashlib
        data = os.path.join(self.scratch, "piped")
        subprocess.run([BIN, "merchant", "create", "--data", data, "--name", "p"], check=True,
                       capture_output=True, timeout=60)
        cfg = b"[server]\nlisten = 127.0.0.1:0\n[audit]\ncheckpoint_seconds = 1\n"
        p = subprocess.Popen([BIN, "serve", "--data", data, "--config", "/dev/stdin"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p.stdin.write(cfg)
            p.stdin.close()
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(data, "serve.addr")) and time.monotonic() < deadline:
                self.assertIsNone(p.poll(), p.stderr.read() if p.poll() is not None else "")
                time.sleep(0.1)
            self.assertTrue(os.path.exists(os.path.join(data, "serve.addr")), "serve did not start")
        finally:
            p.terminate()
            self.assertEqual(p.wait(30), 0)
            p.stderr.close()
        with sqlite3.connect(os.path.join(data, "turnpike.db")) as con:
            (details,) = con.execute("SELECT details FROM audit_log WHERE action = 'config.loaded'").fetchone()
        self.assertEqual(json.loads(details)["sha256"], hashlib.sha256(cfg).hexdigest(), details)

    def assertMerchantEntry(self, db, merchant, actor, sk, pk):
        """One merchant.created entry for merchant, with key hints only."""
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT merchant, actor, object_id, details FROM audit_log "
                               "WHERE action = 'merchant.created'").fetchall()
            everything = "\n".join(str(r) for r in con.execute("SELECT * FROM audit_log"))
        self.assertEqual(len(rows), 1, rows)
        m, a, obj, details = rows[0]
        self.assertEqual((m, a, obj), (merchant, actor, merchant))
        det = json.loads(details)
        self.assertEqual(det["secret_key"], sk[:8] + "..." + sk[-4:])
        self.assertEqual(det["publishable_key"], pk[:8] + "..." + pk[-4:])
        self.assertTrue(det["secret_key"].startswith("sk_test_"), det)
        # never the full key, nor any long piece of it
        for key in (sk, pk):
            self.assertNotIn(key, everything)
            self.assertNotIn(key[8:-4], everything)

    def test_merchant_create_is_recorded(self):
        m = self.daemon.merchants["m"]
        self.assertMerchantEntry(self.db, m["id"], "cli", m["secret_key"], m["publishable_key"])

    def test_demo_merchant_of_an_empty_store_is_recorded(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()  # no merchant yet: serve creates the demo merchant
        self.assertEqual(d.stop(), 0)
        # serve prints the demo key once, on stdout (in the daemon's log file)
        sk = re.search(r"\b(sk_test_[A-Za-z0-9]+)", d.log_text()).group(1)
        with sqlite3.connect(d.db_path()) as con:
            (mid,) = con.execute("SELECT id FROM merchants").fetchone()
            rows = con.execute("SELECT actor, object_id, details FROM audit_log "
                               "WHERE action = 'merchant.created'").fetchall()
            everything = "\n".join(str(r) for r in con.execute("SELECT * FROM audit_log"))
        self.assertEqual(len(rows), 1, rows)
        actor, obj, details = rows[0]
        self.assertEqual((actor, obj), ("system", mid))
        det = json.loads(details)
        self.assertEqual(det["name"], "Demo merchant")
        self.assertEqual(det["secret_key"], sk[:8] + "..." + sk[-4:])
        self.assertRegex(det["publishable_key"], r"^pk_test_\.\.\.[A-Za-z0-9]{4}$")
        pk = re.search(r"\b(pk_test_[A-Za-z0-9]+)", d.log_text()).group(1)  # printed for browsers too
        self.assertEqual(det["publishable_key"], pk[:8] + "..." + pk[-4:])
        self.assertNotIn(sk, everything)
        self.assertNotIn(sk[8:-4], everything)
        rc, out, err = verify(d.data)
        self.assertEqual(rc, 0, (out, err))
        self.assertTrue(out["ok"])
        self.assertGreaterEqual(out["entries"], 2)

    def test_intact_log_verifies(self):
        rc, out, err = verify(os.path.dirname(self.db))
        self.assertEqual(rc, 0, (out, err))
        self.assertTrue(out["ok"])
        self.assertEqual(out["entries"], len(self.rows))
        self.assertEqual(out["checkpoints"], len(self.ckpts))
        self.assertEqual(len(out["checkpoint_key_sha256"]), 64)

    def test_a_copy_on_read_only_media_verifies(self):
        """The auditor's copy on write-once media: SQLite cannot make the
        -shm file a WAL store wants, and verify said "not an error / no
        audit log". A read-only bind mount stands for the media (skipped
        where this user may not mount)."""
        d, con = self.copy("ro-src")
        con.close()
        mnt = os.path.join(self.scratch, "ro-mnt")
        os.makedirs(mnt)
        p = subprocess.run(["mount", "--bind", d, mnt], capture_output=True)
        if p.returncode != 0:
            self.skipTest("cannot mount here: %s" % p.stderr.decode().strip())
        try:
            p = subprocess.run(["mount", "-o", "remount,bind,ro", mnt], capture_output=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            with self.assertRaises(OSError):
                open(os.path.join(mnt, "probe"), "w")
            rc, out, err = verify(mnt)
            self.assertEqual(rc, 0, (out, err))
            self.assertTrue(out["ok"])
            self.assertEqual(out["entries"], len(self.rows))
        finally:
            subprocess.run(["umount", mnt], capture_output=True)

    # -- single-byte edits in every column ----------------------------------------
    def flip(self, name, seq, col):
        d, con = self.copy(name)
        (v,) = con.execute("SELECT %s FROM audit_log WHERE seq = ?" % col, (seq,)).fetchone()
        if isinstance(v, int):
            nv = v ^ 1
        else:
            b = bytearray(v.encode())
            i = len(b) // 2
            b[i] = b[i] ^ 1 if chr(b[i] ^ 1).isprintable() else b[i] ^ 2
            nv = b.decode()
        con.execute("UPDATE audit_log SET %s = ? WHERE seq = ?" % col, (nv, seq))
        con.commit()
        con.close()
        return d

    def test_a_flipped_byte_in_any_column_is_found(self):
        mid = len(self.rows) // 2
        for col in ("created", "actor", "action", "details", "prev_hash", "hash"):
            with self.subTest(col=col):
                self.assertBad(self.flip("flip-" + col, mid, col), mid)
        # a refund's object id (merchant-visible) and merchant column
        seq = [r[0] for r in self.rows if r[1] == "refund.created"][3]
        self.assertBad(self.flip("flip-object", seq, "object_id"), seq)
        self.assertBad(self.flip("flip-merchant", seq, "merchant"), seq)

    def test_a_rewritten_entry_with_recomputed_hash_still_breaks_the_chain(self):
        # An attacker who edits an entry and recomputes its own hash (the
        # documented SHA-256(prev_hash || canonical entry)) breaks the next
        # entry's prev_hash.
        d, con = self.copy("rehash")
        seq = min(x for x in range(3, len(self.rows)) if x not in self.ckpts)  # not itself under a checkpoint
        row = con.execute("SELECT seq, created, merchant, actor, action, object_id, details, prev_hash, hash "
                          "FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        canon = json.dumps(list(row[:7]), separators=(",", ":"), ensure_ascii=True)
        self.assertEqual(hashlib.sha256((row[7] + canon).encode()).hexdigest(), row[8],
                         "the hash definition in docs/security.md holds")
        forged = list(row[:7])
        forged[3] = "cli"
        canon = json.dumps(forged, separators=(",", ":"), ensure_ascii=True)
        h = hashlib.sha256((row[7] + canon).encode()).hexdigest()
        con.execute("UPDATE audit_log SET actor = 'cli', hash = ? WHERE seq = ?", (h, seq))
        con.commit()
        con.close()
        self.assertBad(d, seq + 1)

    def test_a_deleted_middle_row_is_found(self):
        d, con = self.copy("delete")
        con.execute("DELETE FROM audit_log WHERE seq = 4")
        con.commit()
        con.close()
        self.assertBad(d, 4)

    def test_two_swapped_rows_are_found(self):
        d, con = self.copy("swap")
        con.execute("UPDATE audit_log SET seq = -1 WHERE seq = 5")
        con.execute("UPDATE audit_log SET seq = 5 WHERE seq = 7")
        con.execute("UPDATE audit_log SET seq = 7 WHERE seq = -1")
        con.commit()
        con.close()
        self.assertBad(d, 5)

    def test_a_truncated_tail_past_a_checkpoint_is_found(self):
        # Remove the last entries, including some a checkpoint signed, and
        # even move the chain head back to the new last entry.
        cp = [c for c in self.ckpts if c > 3][0]
        d, con = self.copy("truncate")
        con.execute("DELETE FROM audit_log WHERE seq >= ?", (cp - 1,))
        con.execute("UPDATE audit_head SET seq = ?, hash = (SELECT hash FROM audit_log WHERE seq = ?)",
                    (cp - 2, cp - 2))
        con.commit()
        con.close()
        self.assertBad(d, cp - 1)

    def test_a_forged_checkpoint_is_found(self):
        d, con = self.copy("forge")
        cp = self.ckpts[0]
        (sig,) = con.execute("SELECT sig FROM audit_checkpoints WHERE seq = ?", (cp,)).fetchone()
        bad = sig[:20] + ("0" if sig[20] != "0" else "1") + sig[21:]
        con.execute("UPDATE audit_checkpoints SET sig = ? WHERE seq = ?", (bad, cp))
        con.commit()
        con.close()
        self.assertBad(d, cp)

    def test_pinned_key_mismatch_is_found(self):
        other = os.path.join(self.scratch, "other.pem")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", other + ".key"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["openssl", "ec", "-in", other + ".key", "-pubout", "-out", other], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rc, out, _ = verify(os.path.dirname(self.db), "--pubkey", other)
        self.assertEqual(rc, 1)
        self.assertEqual(out["first_bad_seq"], self.ckpts[0])
        # and the real key file passes when pinned
        d = os.path.dirname(self.db)
        pub = os.path.join(self.scratch, "real.pem")
        subprocess.run(["openssl", "ec", "-in", os.path.join(d, "audit-signing.pem"), "-pubout", "-out", pub],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rc, out, err = verify(d, "--pubkey", pub)
        self.assertEqual(rc, 0, (out, err))


    def test_a_rewritten_tail_is_found_when_the_head_must_be_sealed(self):
        # Someone able to write the store but without the key rewrites an
        # entry and every hash after it, deletes the checkpoints from there
        # on and moves the head: the chain alone holds, but the head is no
        # longer under a signed checkpoint, which --sealed requires (a
        # stopped gateway signs its head as it stops).
        d, con = self.copy("retail")
        seq = self.ckpts[0] + 1 if len(self.ckpts) > 1 else 2
        prev = con.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq - 1,)).fetchone()[0]
        for row in con.execute("SELECT seq, created, merchant, actor, action, object_id, details FROM audit_log "
                               "WHERE seq >= ? ORDER BY seq", (seq,)).fetchall():
            row = list(row)
            if row[0] == seq:
                row[3] = "cli-forged"
            h = hashlib.sha256((prev + json.dumps(row, separators=(",", ":"), ensure_ascii=True)).encode()).hexdigest()
            con.execute("UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?", (row[3], prev, h, row[0]))
            prev = h
        con.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (seq,))
        con.execute("UPDATE audit_head SET hash = ?", (prev,))
        con.commit()
        con.close()
        rc, out, err = verify(d)
        self.assertEqual((rc, out["ok"]), (0, True), (out, err))  # the chain alone: intact
        self.assertGreater(out["unsealed_entries"], 0, out)
        rc, out, _ = verify(d, "--sealed")
        self.assertEqual((rc, out.get("first_bad_seq")), (1, seq), out)
        # the untouched store: its head is sealed
        rc, out, err = verify(os.path.dirname(self.db), "--sealed")
        self.assertEqual((rc, out["unsealed_entries"]), (0, 0), (out, err))

    def test_a_checkpoint_of_another_key_is_shown_and_found_pinned(self):
        # A checkpoint signed (validly) by a key of the attacker's own: each
        # signature verifies with the key stored beside it, but the
        # checkpoints are no longer of one key.
        d, con = self.copy("otherkey")
        other = os.path.join(self.scratch, "forger.key")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", other], check=True,
                       stdout=subprocess.DEVNULL)
        pub = subprocess.run(["openssl", "ec", "-in", other, "-pubout"], check=True, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.decode()
        seq = self.rows[-1][0]
        (h,) = con.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        msg = ("turnpike-audit-checkpoint|%d|%s" % (seq, h)).encode()
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", other], input=msg, check=True,
                             stdout=subprocess.PIPE).stdout
        (fmt,) = con.execute("SELECT sig FROM audit_checkpoints LIMIT 1").fetchone()
        enc = sig.hex() if all(c in "0123456789abcdef" for c in fmt) else __import__("base64").b64encode(sig).decode()
        con.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (seq,))
        con.execute("INSERT INTO audit_checkpoints(seq, hash, created, sig, pubkey) VALUES(?, ?, 0, ?, ?)",
                    (seq, h, enc, pub))
        con.commit()
        con.close()
        # unpinned, a change of key shows (a restore without the key file
        # changes it too); pinned, the checkpoint of the other key is found
        rc, out, _ = verify(d)
        self.assertEqual((rc, out["checkpoint_keys"]), (0, 2), out)
        real = os.path.join(self.scratch, "real-only.pem")
        subprocess.run(["openssl", "ec", "-in", os.path.join(os.path.dirname(self.db), "audit-signing.pem"),
                        "-pubout", "-out", real], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rc, out, _ = verify(d, "--pubkey", real)
        self.assertEqual((rc, out["first_bad_seq"]), (1, seq), out)
        # both pinned (a legitimate change of key): it passes
        forger_pub = os.path.join(self.scratch, "forger.pem")
        with open(forger_pub, "w") as f:
            f.write(pub)
        rc, out, _ = verify(d, "--pubkey", real, "--pubkey", forger_pub)
        self.assertEqual(rc, 0, out)

    def test_a_pinned_key_file_may_end_in_a_newline(self):
        # exported from a checkpoint row by sqlite3, which adds one
        d = os.path.dirname(self.db)
        con = sqlite3.connect(self.db)
        (pem,) = con.execute("SELECT pubkey FROM audit_checkpoints LIMIT 1").fetchone()
        con.close()
        pub = os.path.join(self.scratch, "exported.pem")
        with open(pub, "w") as f:
            f.write(pem + "\n\n")
        rc, out, err = verify(d, "--pubkey", pub)
        self.assertEqual(rc, 0, (out, err))


class VerifyUnderLoadTest(unittest.TestCase):
    """`audit verify` next to a serving gateway that keeps adding entries
    (a refund each): it reads one snapshot, so a clean store verifies."""

    def test_verify_while_entries_are_added(self):
        import threading
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config="[audit]\ncheckpoint_seconds = 1\ncheckpoint_entries = 5\n")
        c = d.client("m")
        stop = threading.Event()

        def load():
            while not stop.is_set():
                r = c.post(PI, {"amount": 1000, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
                if r.status == 200:
                    c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 100})
        ts = [threading.Thread(target=load) for _ in range(3)]
        for t in ts:
            t.start()
        try:
            time.sleep(0.5)
            bad = []
            for _ in range(15):
                rc, out, err = verify(d.data)
                if rc != 0:
                    bad.append((rc, out.get("reason"), err[-200:]))
        finally:
            stop.set()
            for t in ts:
                t.join(30)
        self.assertEqual(bad, [])


class SealedRecordTest(unittest.TestCase):
    """The gateway keeps the last checkpoint it signed outside the store
    (DATA/audit-sealed). A chain rewritten with recomputed hashes and its
    checkpoints deleted, or emptied, by someone who can write the store but
    holds no key: the next start says so (audit_chain_tampered) and signs
    nothing over it, and `audit verify` fails, --sealed or not. Before, the
    next stop signed the forged head with the real key and `--sealed
    --pubkey` passed; an emptied chain passed too."""

    def forge_and_restart(self, d, forge):
        db = os.path.join(d.data, "turnpike.db")
        with sqlite3.connect(db) as con:
            forge(con)
        con.close()
        d.start(config="[audit]\ncheckpoint_seconds = 1\ncheckpoint_entries = 1\n")
        d.client("m").post(PI, {"amount": 500, "currency": "usd", "confirm": "true",
                                "payment_method": "pm_card_visa"})
        d.wait_log("audit_checkpoint_refused")  # a checkpoint falls due within a second
        self.assertEqual(d.stop(), 0)
        self.assertIn("audit_chain_tampered", d.log_text())
        self.assertIn("audit_checkpoint_refused", d.log_text())
        for extra in ((), ("--sealed",)):
            rc, out, err = verify(d.data, *extra)
            self.assertEqual((rc, out.get("ok")), (1, False), (extra, out, err))
        self.assertIn("audit-sealed", verify(d.data)[1]["reason"])

    def fresh(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config="[audit]\ncheckpoint_seconds = 1\ncheckpoint_entries = 1\n")
        c = d.client("m")
        for i in range(4):
            r = c.post(PI, {"amount": 700 + i, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 100}).status, 200)
        self.assertEqual(d.stop(), 0)
        with open(os.path.join(d.data, "audit-sealed")) as f:
            seq, h = f.read().split()
        with sqlite3.connect(os.path.join(d.data, "turnpike.db")) as con:
            self.assertEqual(con.execute("SELECT max(seq), hash FROM audit_checkpoints").fetchone(), (int(seq), h))
        con.close()
        rc, out, err = verify(d.data, "--sealed")
        self.assertEqual((rc, out["sealed_record"]), (0, int(seq)), (out, err))
        return d

    def test_a_rewritten_chain_is_not_signed_over_at_the_next_start(self):
        d = self.fresh()

        def forge(con):
            # drop a refund's entry, renumber and rehash everything after it,
            # delete every checkpoint, move the head
            rows = con.execute("SELECT seq, created, merchant, actor, action, object_id, details FROM audit_log "
                               "ORDER BY seq").fetchall()
            victim = [r[0] for r in rows if r[4] == "refund.created"][0]
            con.execute("DELETE FROM audit_log")
            prev, seq = "0" * 64, 0
            for r in rows:
                if r[0] == victim:
                    continue
                seq += 1
                row = [seq] + list(r[1:])
                h = hashlib.sha256((prev + json.dumps(row, separators=(",", ":"), ensure_ascii=True))
                                   .encode()).hexdigest()
                con.execute("INSERT INTO audit_log(seq, created, merchant, actor, action, object_id, details, "
                            "prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)", row + [prev, h])
                prev = h
            con.execute("DELETE FROM audit_checkpoints")
            con.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq, prev))

        self.forge_and_restart(d, forge)

    def rewrite_whole(self, con):
        """Every refund's amount made 1, every hash recomputed, every
        checkpoint deleted, the head moved: a chain consistent in itself."""
        rows = con.execute("SELECT seq, created, merchant, actor, action, object_id, details FROM audit_log "
                           "ORDER BY seq").fetchall()
        prev = "0" * 64
        for r in rows:
            row = list(r)
            if row[4] == "refund.created":
                d = json.loads(row[6])
                d["amount"] = 1
                row[6] = json.dumps(d, separators=(",", ":"), sort_keys=True)
            h = hashlib.sha256((prev + json.dumps(row, separators=(",", ":"), ensure_ascii=True)).encode()).hexdigest()
            con.execute("UPDATE audit_log SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                        (row[6], prev, h, row[0]))
            prev = h
        con.execute("DELETE FROM audit_checkpoints")
        con.execute("UPDATE audit_head SET seq = ?, hash = ?", (rows[-1][0], prev))

    def test_a_chain_rewritten_while_the_gateway_runs_is_not_signed(self):
        """Rewritten behind a running gateway: its next checkpoint finds the
        chain no longer holds the one it last signed, and signs nothing
        (it signed the forged head, and made it the record)."""
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config="[audit]\ncheckpoint_seconds = 1\ncheckpoint_entries = 1\n")
        c = d.client("m")
        r = c.post(PI, {"amount": 700, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        self.assertEqual(c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 100}).status, 200)
        time.sleep(2.5)  # signed
        con = sqlite3.connect(os.path.join(d.data, "turnpike.db"), timeout=10)
        with con:
            self.rewrite_whole(con)
        con.close()
        r = c.post(PI, {"amount": 800, "currency": "usd", "confirm": "true", "payment_method": "pm_card_visa"})
        self.assertEqual(c.post("/v1/refunds", {"payment_intent": r.json["id"], "amount": 200}).status, 200)
        d.wait_log('"event":"audit_chain_tampered","when":"running"')  # a checkpoint falls due within a second
        self.assertEqual(d.stop(), 0)
        self.assertIn('"event":"audit_chain_tampered","when":"running"', d.log_text())
        rc, out, err = verify(d.data, "--sealed")
        self.assertEqual((rc, out.get("ok")), (1, False), (out, err))

    def test_a_restore_refuses_a_copy_whose_chain_cannot_be_checked(self):
        """A backup (on storage less guarded than the data directory) whose
        chain was rewritten whole, its checkpoints stripped: refused, as
        one whose chain is broken is; it restored and was signed at the
        next stop."""
        d = self.fresh()
        out = os.path.join(d.root, "b.db")
        p = subprocess.run([BIN, "backup", "--data", d.data, "--out", out], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        con = sqlite3.connect(out)
        with con:
            self.rewrite_whole(con)
        con.close()
        before = open(os.path.join(d.data, "turnpike.db"), "rb").read()
        # the backup's checksum no longer matches: refused on that first
        p = subprocess.run([BIN, "restore", "--data", d.data, "--from", out, "--force"], capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn(b"does not match its checksum", p.stderr)
        # and without its checksum file, on the chain
        os.unlink(out + ".sha256")
        p = subprocess.run([BIN, "restore", "--data", d.data, "--from", out, "--force"], capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn(b"no signed checkpoint", p.stderr)
        self.assertEqual(open(os.path.join(d.data, "turnpike.db"), "rb").read(), before)
        # a chain broken in the copy is refused too
        con = sqlite3.connect(out)
        with con:
            con.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 2")
        con.close()
        p = subprocess.run([BIN, "restore", "--data", d.data, "--from", out, "--force", "--accept-unsealed-audit"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn(b"is broken", p.stderr)

    def test_an_emptied_chain_is_found(self):
        d = self.fresh()

        def forge(con):
            con.execute("DELETE FROM audit_log")
            con.execute("DELETE FROM audit_checkpoints")
            con.execute("UPDATE audit_head SET seq = 0, hash = ?", ("0" * 64,))

        self.forge_and_restart(d, forge)
        # without the record too (removed with the chain): --sealed finds an
        # empty chain in a store that has merchants
        os.unlink(os.path.join(d.data, "audit-sealed"))
        with sqlite3.connect(os.path.join(d.data, "turnpike.db")) as con:
            con.execute("DELETE FROM audit_log")
            con.execute("DELETE FROM audit_checkpoints")
            con.execute("UPDATE audit_head SET seq = 0, hash = ?", ("0" * 64,))
        con.close()
        rc, out, err = verify(d.data, "--sealed")
        self.assertEqual((rc, out.get("first_bad_seq")), (1, 1), (out, err))
        self.assertIn("empty", out["reason"])


if __name__ == "__main__":
    main()
