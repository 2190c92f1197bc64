-- Where the balance sweep (src/core/housekeeping.c, tp_balance_sweep) has
-- got to in each merchant's balance transactions: every one up to cursor
-- has been made available. Moved in the same commit as the funds it moves.
CREATE TABLE balance_sweep (merchant TEXT PRIMARY KEY, cursor TEXT NOT NULL) WITHOUT ROWID;
