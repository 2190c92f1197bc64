"""Operations on the data directory: one server per directory, an online
backup taken under load, and a restore that brings every payment
acknowledged before the backup back, with its card vault readable.

- `turnpike serve` on a directory another server uses exits 1
  (data_dir_in_use) and leaves the first serving, its serve.addr untouched.
- `turnpike backup` while a load of confirmations runs: the copy holds every
  payment whose reply was read before the backup started, with the
  acknowledged status and amounts; its ledger balances; it never overwrites.
- `turnpike restore` into a fresh directory with the key files copied apart:
  a server on it answers the old key, shows those payments, charges a card
  saved before the backup (the vault decrypts), passes `audit verify`.
- Refusals change nothing: restore while a server runs, restore over a store
  without --force, restore of a truncated or non-store file."""
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BIN, HOST, Client, Daemon, DaemonTestCase, PaymentLoad, card, hostport, main

PI = "/v1/payment_intents"
FIELDS = ("status", "amount", "amount_received", "amount_capturable", "currency", "capture_method")


def run(*args, timeout=120):
    p = subprocess.run([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def tree(d):
    """{name: (size, mtime_ns)} of a directory's files, to prove nothing changed
    (but the lock file, which whoever takes the lock writes its pid into)."""
    out = {}
    for name in sorted(os.listdir(d)):
        if name == "turnpike.lock":
            continue
        st = os.stat(os.path.join(d, name))
        out[name] = (st.st_size, st.st_mtime_ns)
    return out


class BackupTest(DaemonTestCase):
    MERCHANTS = ("shop",)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tp-backup-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_a_second_server_on_the_same_directory_is_refused(self):
        addr = os.path.join(self.daemon.data, "serve.addr")
        with open(addr) as f:
            before = f.read()
        t0 = time.monotonic()
        p = subprocess.run([BIN, "serve", "--listen", hostport(HOST, 0), "--data", self.daemon.data],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p.stderr[-2000:])
        self.assertLess(time.monotonic() - t0, 10)
        err = p.stderr.decode()
        self.assertIn('"event":"data_dir_in_use"', err)
        self.assertIn('"pid":%d' % self.daemon.proc.pid, err)
        with open(addr) as f:
            self.assertEqual(f.read(), before)
        r = self.c().post(PI, {"amount": 500, "currency": "usd", "payment_method": "pm_card_visa",
                               "confirm": "true"})
        self.assertEqual((r.status, r.json["status"]), (200, "succeeded"), r)
        # the lock file deleted (it looks like a stale pid file): still refused,
        # the lock is the directory's
        os.unlink(os.path.join(self.daemon.data, "turnpike.lock"))
        p = subprocess.run([BIN, "serve", "--listen", hostport(HOST, 0), "--data", self.daemon.data],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p.stderr[-2000:])
        self.assertIn('"event":"data_dir_in_use"', p.stderr.decode())
        with open(addr) as f:
            self.assertEqual(f.read(), before)
        with open(os.path.join(self.daemon.data, "turnpike.lock"), "w") as f:
            f.write("%d\n" % self.daemon.proc.pid)  # as it was, for the other tests

    def test_a_second_server_on_the_same_port_is_refused(self):
        """Another data directory, the same address: the bind fails (with
        SO_REUSEPORT both listened and the kernel split the connections
        between two stores)."""
        other = os.path.join(self.tmp, "other")
        p = subprocess.run([BIN, "serve", "--listen", hostport(HOST, self.daemon.port), "--data", other],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p.stderr[-2000:])
        self.assertIn("listen_failed", p.stderr.decode())
        # the empty store got its demo merchant before the bind failed: its key is shown, not lost,
        # and not in the JSON log stream
        self.assertIn("sk_test_", p.stdout.decode())
        self.assertNotIn("sk_test_", p.stderr.decode())

    def test_admin_commands_refuse_what_they_would_otherwise_make(self):
        run = lambda *a: subprocess.run([BIN, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                                        stdin=subprocess.DEVNULL)
        # a host name other than localhost: refused before a store is made
        nowhere = os.path.join(self.tmp, "nowhere")
        p = run("serve", "--listen", "no-such-host.invalid:0", "--data", nowhere)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertFalse(os.path.exists(nowhere))
        # a mistyped --data: no new store for the command to change
        typo = os.path.join(self.tmp, "typo")
        for args in (("kek", "rotate"), ("api-key", "roll", "--merchant", "acct_x"),
                     ("oauth-client", "revoke", "--client-id", "oc_x")):
            with self.subTest(args=args):
                p = run(*args, "--data", typo)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn(b"no store in", p.stderr)
                self.assertFalse(os.path.exists(typo))
        # --config naming a directory is refused, not read as an empty file (the
        # in-process sandbox then approved every payment on built-in defaults)
        p = run("serve", "--config", self.tmp, "--data", nowhere, "--listen", "127.0.0.1:0")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b'"config_invalid_stop"', p.stderr)
        self.assertFalse(os.path.exists(nowhere))
        p = run("kek", "rotate", "--config", self.tmp, "--data", self.daemon.data)
        self.assertEqual(p.returncode, 2, p.stderr)
        # a pipe is read as a file (--config <(...)): only a directory is refused
        rfd, wfd = os.pipe()
        os.write(wfd, b"[vault]\nkek = file\n")
        os.close(wfd)
        try:
            p = subprocess.run([BIN, "kek", "rotate", "--config", "/dev/fd/%d" % rfd, "--data", typo],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, pass_fds=(rfd,),
                               stdin=subprocess.DEVNULL)
        finally:
            os.close(rfd)
        self.assertEqual(p.returncode, 1, p.stderr)  # read, then no store at typo
        self.assertIn(b"no store in", p.stderr)
        # a bad log level or listen address is a JSON line naming the setting, from wherever it came
        for args, env, setting in ((("--log-level", "loud"), {}, b'"log.level"'),
                                   ((), {"TURNPIKE_SERVER_LISTEN": "[::1"}, b'"server.listen"')):
            p = subprocess.run([BIN, "serve", "--data", nowhere, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60, stdin=subprocess.DEVNULL,
                               env=dict(os.environ, **env))
            self.assertEqual(p.returncode, 2, p.stderr)
            line = json.loads(p.stderr.decode().strip().splitlines()[-1])
            self.assertEqual(line["event"], "config_invalid_stop", line)
            self.assertIn(setting, p.stderr)
        # an admin command without --data takes TURNPIKE_SERVER_DATA, as serve does
        p = subprocess.run([BIN, "merchant", "create", "--name", "from env"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, cwd=self.tmp,
                           env=dict(os.environ, TURNPIKE_SERVER_DATA=self.daemon.data))
        self.assertEqual(p.returncode, 0, p.stderr)
        made = json.loads(p.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "var")))
        self.assertEqual(Client(self.daemon.host, self.daemon.port, key=made["secret_key"]).get(PI).status, 200)
        # migrate does not change the schema under a running server
        p = run("migrate", "--data", self.daemon.data)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"stop it first", p.stderr)

    def test_a_merchant_name_must_be_text(self):
        p = subprocess.run([BIN, "merchant", "create", "--data", os.path.join(self.tmp, "names"), "--name",
                            b"Caf\xe9"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"UTF-8", p.stderr)

    def test_backup_under_load_restores_every_payment_acknowledged_before_it(self):
        c = self.c()
        # a saved card, to prove the restored vault decrypts with the copied keys
        cus = c.post("/v1/customers", {"email": "saved@example.test"}).json
        pm = c.post("/v1/payment_methods", card("5555555555554444")).json
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm["id"], {"customer": cus["id"]}).status, 200)
        refunded = c.post(PI, {"amount": 3000, "currency": "usd", "payment_method": "pm_card_visa",
                               "confirm": "true"}).json
        rf = c.post("/v1/refunds", {"payment_intent": refunded["id"], "amount": 1200})
        self.assertEqual(rf.status, 200, rf)

        load = PaymentLoad(c, threads=6, seconds=6.0, tag="bk").start()
        time.sleep(2.5)
        out = os.path.join(self.tmp, "turnpike-backup.db")
        t_backup = time.monotonic()
        rc, stdout, stderr = run("backup", "--data", self.daemon.data, "--out", out)
        t_backup_end = time.monotonic()
        self.assertTrue(load.join(60))
        self.assertEqual(rc, 0, stderr)
        summary = json.loads(stdout)
        with load.lock:
            acks = list(load.acks)
        before = [a for a in acks if a.t_done < t_backup]
        after = [a for a in acks if a.t_sent > t_backup_end]
        print("backup: %d acknowledged before it, %d after, %.2f s, %d bytes, counts %s"
              % (len(before), len(after), t_backup_end - t_backup, summary["bytes"], summary["counts"]),
              file=sys.stderr)
        self.assertGreater(len(before), 20, "the load acknowledged too little before the backup")
        self.assertGreater(len(after), 0, "the server stopped taking payments during the backup")
        self.assertEqual((summary["object"], summary["ledger_balanced"], summary["unbalanced_transactions"],
                          summary["balances_off"]), ("backup", True, 0, 0))
        self.assertGreaterEqual(summary["counts"]["payment_intents"], len(before) + 1)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        self.assertFalse(os.path.exists(out + ".partial"))
        self.assertIn("vault.key", summary["key_files"])
        self.assertIn("kek-v1.key", summary["key_files"])
        # no key material inside the copy
        with open(out, "rb") as f:
            blob = f.read()
        for name in summary["key_files"]:
            with open(os.path.join(self.daemon.data, name), "rb") as f:
                key = f.read()
            mid = len(key) // 2
            self.assertNotIn(key[mid - 12:mid + 12], blob, name)
        # its checksum beside it, in sha256sum's format
        with open(out, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(summary["sha256"], digest)
        with open(out + ".sha256") as f:
            self.assertEqual(f.read(), "%s  %s\n" % (digest, os.path.basename(out)))
        self.assertEqual(os.stat(out + ".sha256").st_mode & 0o777, 0o600)
        # a checksum left half-written by a stopped backup does not block the next
        again = out + ".2"
        open(again + ".sha256.partial", "w").close()
        rc, _, stderr = run("backup", "--data", self.daemon.data, "--out", again)
        self.assertEqual(rc, 0, stderr)
        self.assertTrue(os.path.exists(again + ".sha256"))
        self.assertFalse(os.path.exists(again + ".sha256.partial"))
        # a backup never overwrites
        mtime = os.stat(out).st_mtime_ns
        rc, _, stderr = run("backup", "--data", self.daemon.data, "--out", out)
        self.assertEqual(rc, 1)
        self.assertIn("exists", stderr)
        self.assertEqual(os.stat(out).st_mtime_ns, mtime)
        # into a directory that is not there: said so (it said SQLite's "unable to open database")
        rc, _, stderr = run("backup", "--data", self.daemon.data, "--out", os.path.join(out + ".nodir", "b.db"))
        self.assertEqual(rc, 1)
        self.assertIn("cannot write into", stderr)
        self.assertIn("No such file or directory", stderr)

        # restore refuses while the server runs, and changes nothing
        keys = {k: v for k, v in tree(self.daemon.data).items() if k.endswith((".key", ".pem"))}
        rc, _, stderr = run("restore", "--from", out, "--data", self.daemon.data, "--force")
        self.assertEqual(rc, 1)
        self.assertIn("pid %d" % self.daemon.proc.pid, stderr)
        live = tree(self.daemon.data)
        self.assertEqual({k: v for k, v in live.items() if k.endswith((".key", ".pem"))}, keys)
        self.assertNotIn("turnpike.db.restoring", live)
        self.assertEqual(self.c().get(PI + "/" + refunded["id"]).json["amount_received"], 3000)

        # a fresh directory: the copy, and the key files carried apart
        fresh = Daemon(root=os.path.join(self.tmp, "restored"))
        self.addCleanup(fresh.cleanup)
        rc, stdout, stderr = run("restore", "--from", out, "--data", fresh.data)
        self.assertEqual(rc, 0, stderr)
        rs = json.loads(stdout)
        self.assertEqual(rs["counts"], summary["counts"])
        self.assertEqual(rs["checksum"], "verified")
        self.assertNotIn("checksum", stderr)
        # (and the audit checkpoints' key: a serving store signs its chain at start;
        # and the OAuth and JWE keys: made anew, earlier tokens and encrypted card
        # data were refused, and the list left them out of what backup names)
        self.assertEqual(rs["missing_key_files"], ["vault.key", "kek-v1.key", "audit-signing.pem",
                                                   "oauth_signing_key.pem", "jwe-rsa.pem", "jwe-ec.pem"])
        self.assertEqual(sorted(rs["missing_key_files"]), sorted(summary["key_files"]))
        for name in summary["key_files"]:
            shutil.copy2(os.path.join(self.daemon.data, name), os.path.join(fresh.data, name))
        fresh.merchants = self.daemon.merchants
        fresh.start()
        rc2 = fresh.client("shop")
        wrong = []
        for a in before:
            want = a.pi()
            got = rc2.get(PI + "/" + want["id"])
            if got.status != 200 or any(got.json.get(f) != want.get(f) for f in FIELDS):
                wrong.append((want["id"], got.status, [(f, want.get(f), (got.json or {}).get(f)) for f in FIELDS]))
        self.assertEqual(wrong[:5], [], "%d acknowledged payments wrong in the restored store" % len(wrong))
        self.assertEqual(rc2.get("/v1/refunds/" + rf.json["id"]).json["amount"], 1200)
        # the balance the restored ledger gives is the restored payments'
        pis = rc2.list_all(PI, max_pages=2000)
        captured = sum(p["amount_received"] for p in pis if p["status"] == "succeeded")
        bal = rc2.get("/v1/balance").json
        total = sum(b["amount"] for kind in ("available", "pending") for b in bal[kind] if b["currency"] == "usd")
        self.assertEqual(total, captured - 1200)
        # the vault opens with the copied keys: the saved card is charged
        paid = rc2.post(PI, {"amount": 4200, "currency": "usd", "customer": cus["id"], "payment_method": pm["id"],
                             "confirm": "true"})
        self.assertEqual((paid.status, paid.json["status"]), (200, "succeeded"), paid)
        ch = rc2.get("/v1/charges/" + paid.json["latest_charge"]).json
        self.assertEqual(ch["payment_method_details"]["card"]["last4"], "4444")
        rc, stdout, stderr = run("audit", "verify", "--data", fresh.data)
        self.assertEqual(rc, 0, stdout + stderr)

        # over a store: refused without --force, nothing changed
        fresh.stop()
        snap = tree(fresh.data)
        rc, _, stderr = run("restore", "--from", out, "--data", fresh.data)
        self.assertEqual(rc, 1)
        self.assertIn("--force", stderr)
        self.assertEqual(tree(fresh.data), snap)
        # a truncated copy, or a file that is not a store: refused, nothing changed
        cut = os.path.join(self.tmp, "cut.db")
        with open(out, "rb") as f, open(cut, "wb") as g:
            g.write(f.read(8192))
        # a copy whose pages are sound but whose rows and indexes disagree (bit rot in
        # a row): quick_check passes it, integrity_check does not
        rot = os.path.join(self.tmp, "rot.db")
        shutil.copyfile(out, rot)
        db = sqlite3.connect(rot)
        db.execute("PRAGMA writable_schema=ON")
        db.execute("UPDATE sqlite_schema SET sql=replace(sql, ?, ?) WHERE name='attempts_reversal'",
                   ("'reversal_pending'", "'succeeded'"))
        db.commit()
        db.close()
        db = sqlite3.connect(rot)
        self.assertEqual(db.execute("PRAGMA quick_check").fetchone()[0], "ok")
        self.assertNotEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        db.close()
        # a changed amount no index or constraint covers: integrity_check and
        # the ledger pass it; the backup's checksum does not (it restored)
        moved = os.path.join(self.tmp, "moved.db")
        shutil.copyfile(out, moved)
        db = sqlite3.connect(moved)
        db.execute("UPDATE payment_intents SET data = replace(data, '\"amount_received\":3000', "
                   "'\"amount_received\":3001') WHERE id = ?", (refunded["id"],))
        self.assertEqual(db.total_changes, 1)
        db.commit()
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        db.close()
        with open(out + ".sha256") as f, open(moved + ".sha256", "w") as g:
            g.write(f.read().replace(os.path.basename(out), "moved.db"))
        rc, _, stderr = run("restore", "--from", moved, "--data", fresh.data, "--force")
        self.assertEqual(rc, 1, stderr)
        self.assertIn("does not match its checksum", stderr)
        self.assertEqual(tree(fresh.data), snap)
        # sha256sum's --tag form and a bare digest are read too (the wrong digest: refused)
        for text in ("SHA256 (moved.db) = %s\n" % digest, digest.upper()):
            with open(moved + ".sha256", "w") as g:
                g.write(text)
            rc, _, stderr = run("restore", "--from", moved, "--data", fresh.data, "--force")
            self.assertEqual(rc, 1, stderr)
            self.assertIn("does not match its checksum", stderr)
        # a FIFO in its place is refused, not waited on
        os.unlink(moved + ".sha256")
        os.mkfifo(moved + ".sha256")
        rc, _, stderr = run("restore", "--from", moved, "--data", fresh.data, "--force")
        self.assertEqual(rc, 1, stderr)
        # and so is a dangling link (it restored as if there were none)
        os.unlink(moved + ".sha256")
        os.symlink(os.path.join(self.tmp, "nonexistent"), moved + ".sha256")
        rc, _, stderr = run("restore", "--from", moved, "--data", fresh.data, "--force")
        self.assertEqual(rc, 1, stderr)
        os.unlink(moved + ".sha256")
        with open(moved + ".sha256", "w") as g:
            g.write("not a checksum\n")
        rc, _, stderr = run("restore", "--from", moved, "--data", fresh.data, "--force")
        self.assertEqual(rc, 1, stderr)
        self.assertIn("not a SHA-256 checksum file", stderr)
        self.assertEqual(tree(fresh.data), snap)
        for bad in (cut, rot, os.path.join(self.daemon.data, "vault.key")):
            rc, _, stderr = run("restore", "--from", bad, "--data", fresh.data, "--force")
            self.assertEqual(rc, 1, bad)
            self.assertEqual(tree(fresh.data), snap)
        # --force puts the backup back: the payment made on the restored store is gone
        rc, _, stderr = run("restore", "--from", out, "--data", fresh.data, "--force")
        self.assertEqual(rc, 0, stderr)
        self.assertFalse(os.path.exists(os.path.join(fresh.data, "turnpike.db-wal")))
        fresh.start()
        self.assertStripeError(fresh.client("shop").get(PI + "/" + paid.json["id"]), 404, "invalid_request_error",
                               "resource_missing")

        # a store left by a killed server, its WAL beside it: restored whole
        # (a copy of the main file alone lost what the WAL held)
        late = [fresh.client("shop").post(PI, {"amount": 700 + i, "currency": "usd", "confirm": "true",
                                                "payment_method": "pm_card_visa"}).json["id"] for i in range(5)]
        fresh.kill9()
        self.assertTrue(os.path.getsize(os.path.join(fresh.data, "turnpike.db-wal")) > 0)
        third = Daemon(root=os.path.join(self.tmp, "third"))
        self.addCleanup(third.cleanup)
        rc, stdout, stderr = run("restore", "--from", os.path.join(fresh.data, "turnpike.db"), "--data", third.data)
        self.assertEqual(rc, 0, stderr)
        # without its key files the store is refused (a new vault.key made every replay a mismatch)
        third.merchants = self.daemon.merchants
        with self.assertRaises(RuntimeError):
            third.start()
        self.assertIn("vault_key_missing", third.log_text())
        self.assertFalse(os.path.exists(os.path.join(third.data, "vault.key")))
        for name in summary["key_files"]:
            shutil.copy2(os.path.join(self.daemon.data, name), os.path.join(third.data, name))
        third.merchants = self.daemon.merchants
        third.start()
        for pid in late:
            self.assertEqual(third.client("shop").get(PI + "/" + pid).status, 200, pid)
        # restoring a store onto itself is refused
        third.stop()
        rc, _, stderr = run("restore", "--from", os.path.join(third.data, "turnpike.db"), "--data", third.data,
                            "--force")
        self.assertEqual(rc, 1, stderr)



class AuditKeyTest(unittest.TestCase):
    """A restore names the audit checkpoints' signing key among the key
    files still missing, when the store's checkpoints were signed by the
    file provider's key (a new one made at start leaves a log of two keys)."""

    def test_a_restore_names_the_audit_signing_key(self):
        tmp = tempfile.mkdtemp(prefix="tp-audkey-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = Daemon(root=os.path.join(tmp, "a"))
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start()
        self.assertEqual(d.client("m").post("/v1/customers", {}).status, 200)
        self.assertEqual(d.stop(), 0)  # signs its head: a checkpoint
        out = os.path.join(tmp, "b.db")
        rc, _, err = run("backup", "--data", d.data, "--out", out)
        self.assertEqual(rc, 0, err)
        fresh = os.path.join(tmp, "fresh")
        rc, stdout, err = run("restore", "--from", out, "--data", fresh)
        self.assertEqual(rc, 0, err)
        self.assertIn("audit-signing.pem", json.loads(stdout)["missing_key_files"])

    def test_a_store_never_served_restores_without_a_checkpoint(self):
        """A store set up with the CLI alone has audit entries and no signed
        checkpoint (nothing has run to sign them) and no payment: restored
        as it is; one with payments and no checkpoint is refused unless
        --accept-unsealed-audit (a chain rewritten whole looks so)."""
        tmp = tempfile.mkdtemp(prefix="tp-unserved-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = Daemon(root=os.path.join(tmp, "a"))
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        out = os.path.join(tmp, "a.db")
        rc, _, err = run("backup", "--data", d.data, "--out", out)
        self.assertEqual(rc, 0, err)
        rc, stdout, err = run("restore", "--from", out, "--data", os.path.join(tmp, "fresh"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(stdout)["audit"]["checkpoints"], 0)
        with sqlite3.connect(out) as con:
            con.execute("INSERT INTO payment_intents(id, merchant, created, data) VALUES ('pi_x', 'acct_x', 1, '{}')")
        con.close()
        os.unlink(out + ".sha256")  # changed on purpose: its checksum would refuse it first
        rc, _, err = run("restore", "--from", out, "--data", os.path.join(tmp, "fresh2"))
        self.assertEqual(rc, 1, err)
        self.assertIn("no signed checkpoint", err)
        rc, _, err = run("restore", "--from", out, "--data", os.path.join(tmp, "fresh3"), "--accept-unsealed-audit")
        self.assertEqual(rc, 0, err)

    def test_a_restore_refuses_a_copy_its_keys_do_not_fit_and_reseals(self):
        """A copy made under another vault.key (another installation), or
        one whose KEK file the directory lacks when a store would be
        replaced: refused before anything is replaced (it replaced the store
        and said no key file was missing; no gateway could start on it). A
        restore that goes ahead makes the restored store's last checkpoint
        the record of what was signed, so the next start does not take the
        older chain for a tampered one."""
        tmp = tempfile.mkdtemp(prefix="tp-keyfit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        a, b = Daemon(root=os.path.join(tmp, "a")), Daemon(root=os.path.join(tmp, "b"))
        for d in (a, b):
            self.addCleanup(d.cleanup)
            d.create_merchant("m")
            d.start()
            self.assertEqual(d.client("m").post(PI, {"amount": 900, "currency": "usd", "confirm": "true",
                                                     "payment_method": "pm_card_visa"}).status, 200)
        out_a, out_b = os.path.join(tmp, "a.db"), os.path.join(tmp, "b.db")
        for d, out in ((a, out_a), (b, out_b)):
            rc, _, err = run("backup", "--data", d.data, "--out", out)
            self.assertEqual(rc, 0, err)
        self.assertEqual(a.client("m").post(PI, {"amount": 901, "currency": "usd", "confirm": "true",
                                                 "payment_method": "pm_card_visa"}).status, 200)
        self.assertEqual(a.stop(), 0)
        before = tree(a.data)
        # another installation's copy
        rc, _, err = run("restore", "--from", out_b, "--data", a.data, "--force")
        self.assertEqual(rc, 1, err)
        self.assertIn("another vault.key", err)
        self.assertEqual(tree(a.data), before)
        # its own copy, but a KEK file retired
        kek = os.path.join(a.data, "kek-v1.key")
        os.rename(kek, kek + ".away")
        rc, _, err = run("restore", "--from", out_a, "--data", a.data, "--force")
        self.assertEqual(rc, 1, err)
        self.assertIn("kek-v1.key", err)
        os.rename(kek + ".away", kek)
        self.assertEqual(tree(a.data), before)
        # with its keys: restored, the record of the last signed checkpoint
        # is the copy's, and the gateway starts on it without a tamper alarm
        rc, stdout, err = run("restore", "--from", out_a, "--data", a.data, "--force")
        self.assertEqual(rc, 0, err)
        with sqlite3.connect(os.path.join(a.data, "turnpike.db")) as con:
            last = con.execute("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        con.close()
        sealed = os.path.join(a.data, "audit-sealed")
        if last:
            with open(sealed) as f:
                self.assertEqual(f.read().split(), [str(last[0]), last[1]])
        else:
            self.assertFalse(os.path.exists(sealed))
        a.start()
        self.assertEqual(a.stop(), 0)
        self.assertNotIn("audit_chain_tampered", a.log_text())
        rc, out, err = run("audit", "verify", "--data", a.data, "--sealed")
        self.assertEqual(rc, 0, (out, err))


class DamagedStoreTest(unittest.TestCase):
    """Pages of the store overwritten (a bad disk): an object that cannot be
    read is 503 store_unavailable with store_read_failed in the log, never a
    404 that says it does not exist, and a list never a silently short page."""

    def test_unreadable_objects_are_not_missing(self):
        import random
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start()
        c = d.client("m")
        ids = [c.post(PI, {"amount": 1000 + i, "currency": "usd", "metadata[k]": "x" * 400}).json["id"]
               for i in range(300)]
        self.assertEqual(d.stop(), 0)
        db = os.path.join(d.data, "turnpike.db")
        # Which pages hold the PaymentIntents is up to SQLite's layout (an
        # offset into the file may land on an index): ask it, then damage
        # every other leaf page of that table.
        import sqlite3
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = [r[0] for r in con.execute(
            "SELECT pageno FROM dbstat WHERE name = 'payment_intents' AND pagetype = 'leaf' ORDER BY pageno")]
        con.close()
        self.assertGreater(len(pages), 4, pages)
        rnd = random.Random(1)
        with open(db, "r+b") as f:
            for pageno in pages[::2]:
                f.seek((pageno - 1) * page_size)
                f.write(bytes(rnd.getrandbits(8) for _ in range(page_size)))
        d.start()
        c = d.client("m")
        seen = {}
        for pid in ids:
            r = c.get(PI + "/" + pid)
            seen[r.status] = seen.get(r.status, 0) + 1
        self.assertNotIn(404, seen, seen)
        self.assertGreater(seen.get(503, 0), 0, seen)
        self.assertIn('"store_read_failed"', d.log_text())
        r = c.get(PI, {"limit": 100})
        self.assertTrue(r.status == 503 or len(r.json["data"]) == 100, r)
        # and it says so: not ready, the damage logged once with what to do
        r = c.get("/readyz", key=None)
        self.assertEqual((r.status, r.json.get("reason")), (503, "store_corrupt"), r)
        self.assertEqual(d.log_text().count('"event":"store_corrupt"'), 1)

class RetiredKek(unittest.TestCase):
    def test_a_retired_kek_is_not_asked_for(self):
        """Once every card record is re-wrapped under a new KEK, the old
        one's file may be destroyed (key retirement): restore --force and
        its missing_key_files asked for every version ever made, so a
        restore was refused for good."""
        tmp = tempfile.mkdtemp(prefix="tp-retired-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = Daemon(root=os.path.join(tmp, "d"))
        self.addCleanup(d.cleanup)
        d.create_merchant("m")
        d.start(config="[vault]\nrewrap_settle_ms = 300\n")
        c = d.client("m")
        pm = c.post("/v1/payment_methods", {"type": "card", "card": card("4242424242424242")["card"]}).json["id"]
        cus = c.post("/v1/customers", {}).json["id"]
        self.assertEqual(c.post("/v1/payment_methods/%s/attach" % pm, {"customer": cus}).status, 200)
        rc, _, err = run("kek", "rotate", "--data", d.data)
        self.assertEqual(rc, 0, err)
        deadline = time.monotonic() + 60
        while "kek_rewrap_done" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertIn("kek_rewrap_done", d.log_text())
        out = os.path.join(tmp, "b.db")
        rc, _, err = run("backup", "--data", d.data, "--out", out)
        self.assertEqual(rc, 0, err)
        self.assertEqual(d.stop(), 0)
        os.unlink(os.path.join(d.data, "kek-v1.key"))  # retired: destroyed
        rc, stdout, err = run("restore", "--from", out, "--data", d.data, "--force")
        self.assertEqual(rc, 0, err)
        self.assertNotIn("kek-v1.key", json.loads(stdout)["missing_key_files"])
        d.start(config="[vault]\nrewrap_settle_ms = 300\n")
        r = d.client("m").post(PI, {"amount": 700, "currency": "usd", "confirm": "true", "customer": cus,
                                    "payment_method": pm, "off_session": "true"})
        self.assertEqual((r.status, r.json.get("status")), (200, "succeeded"), r)


if __name__ == "__main__":
    main()
