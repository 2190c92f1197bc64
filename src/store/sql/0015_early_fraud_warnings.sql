-- Early fraud warnings (src/api/disputes.c): an issuer's report that a
-- captured charge may be fraudulent, before any dispute. Keyed by
-- (merchant, id) as the other objects (0007); listed by charge and by
-- PaymentIntent.
CREATE TABLE early_fraud_warnings (id TEXT NOT NULL, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  charge TEXT, payment_intent TEXT, data TEXT NOT NULL, PRIMARY KEY (merchant, id)) WITHOUT ROWID;
CREATE INDEX early_fraud_warnings_ch ON early_fraud_warnings(merchant, charge, id) WHERE charge IS NOT NULL;
CREATE INDEX early_fraud_warnings_pi ON early_fraud_warnings(merchant, payment_intent, id)
  WHERE payment_intent IS NOT NULL;
