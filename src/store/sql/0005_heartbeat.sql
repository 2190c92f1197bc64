-- One row the housekeeping job rewrites every second: readiness proves the
-- store is writable by the age of the last committed heartbeat.
CREATE TABLE heartbeat (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL
);
