-- Customer search by email:'…' (exact, ASCII case-insensitive, as
-- strcasecmp in src/api/search.c) reads the customers with that address
-- here instead of walking every customer within the scan budget. lower()
-- folds ASCII only, as strcasecmp does in the C locale.
CREATE INDEX IF NOT EXISTS customers_email_ci ON customers(merchant, lower(email), id) WHERE email IS NOT NULL;
