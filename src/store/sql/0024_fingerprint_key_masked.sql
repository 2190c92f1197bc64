-- A merchant's card-fingerprint key is kept masked: the column holds the
-- key XOR a pad derived from vault.key (kept out of the store and its
-- backups), so a copy of the store alone no longer gives back the key, and
-- with it, by trying the digits a card's last4 and BIN leave open, the card
-- number behind each fingerprint (PCI DSS 3.5.1.1). 0: a row from before,
-- masked by serve at its next start (src/api/objects.c tp_fp_keys_mask).
ALTER TABLE merchants ADD COLUMN fp_key_masked INTEGER NOT NULL DEFAULT 0;
