-- Disputes (src/api/disputes.c): a cardholder's chargeback or inquiry on a
-- captured charge. Keyed by (merchant, id) as the other objects (0007);
-- listed by charge and by PaymentIntent.
CREATE TABLE disputes (id TEXT NOT NULL, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  charge TEXT, payment_intent TEXT, data TEXT NOT NULL, PRIMARY KEY (merchant, id)) WITHOUT ROWID;
CREATE INDEX disputes_ch ON disputes(merchant, charge, id) WHERE charge IS NOT NULL;
CREATE INDEX disputes_pi ON disputes(merchant, payment_intent, id) WHERE payment_intent IS NOT NULL;
