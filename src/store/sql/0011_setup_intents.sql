-- SetupIntents (src/api/setup_intents.c): a card saved for later payments,
-- verified and, where the issuer asks, authenticated first. Keyed by
-- (merchant, id) as the other objects (0007); listed by customer and by
-- PaymentMethod.
CREATE TABLE setup_intents (id TEXT NOT NULL, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  customer TEXT, payment_method TEXT, data TEXT NOT NULL, PRIMARY KEY (merchant, id)) WITHOUT ROWID;
CREATE INDEX setup_intents_c ON setup_intents(merchant, customer, id) WHERE customer IS NOT NULL;
CREATE INDEX setup_intents_pm ON setup_intents(merchant, payment_method, id) WHERE payment_method IS NOT NULL;
