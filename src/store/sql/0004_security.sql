-- Security: key-encryption key versions and the tamper-evident audit log.

-- One row per KEK version; the highest is current. Card records name their
-- version in the vault blob header (see src/sec/vault.h).
CREATE TABLE kek_versions (
  version INTEGER PRIMARY KEY,
  provider TEXT NOT NULL,         -- file | pkcs11
  created INTEGER NOT NULL
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash || canonical entry),
-- computed inside the writer transaction by the SQL function tp_audit_hash
-- (src/sec/audit.c) from the single chain head row below.
CREATE TABLE audit_log (
  seq INTEGER PRIMARY KEY,
  created INTEGER NOT NULL,
  merchant TEXT,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  object_id TEXT,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL
);
INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
-- Signed heads: ECDSA P-256 over SHA-256("turnpike-audit-checkpoint|seq|hash").
CREATE TABLE audit_checkpoints (
  seq INTEGER PRIMARY KEY,
  hash TEXT NOT NULL,
  created INTEGER NOT NULL,
  sig TEXT NOT NULL,              -- DER, hex
  pubkey TEXT NOT NULL            -- PEM of the verifying key
);
