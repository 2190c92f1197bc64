-- SetupAttempts (src/api/setup_intents.c): one per confirmation of a
-- SetupIntent, in its state (requires_action, succeeded, failed). Keyed by
-- (merchant, id) as the other objects (0007); listed by SetupIntent.
CREATE TABLE setup_attempts (id TEXT NOT NULL, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  setup_intent TEXT, payment_method TEXT, data TEXT NOT NULL, PRIMARY KEY (merchant, id)) WITHOUT ROWID;
CREATE INDEX setup_attempts_si ON setup_attempts(merchant, setup_intent, id) WHERE setup_intent IS NOT NULL;
