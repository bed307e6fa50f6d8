-- The idempotency key of a play: a client's Idempotency-Key header, else one the service generates
-- per request. A write the service retries after a lost connection (a failover) is stored once.
ALTER TABLE plays ADD COLUMN request_key text CHECK (request_key ~ '^[A-Za-z0-9_-]{1,64}$');

CREATE UNIQUE INDEX plays_request_key ON plays (request_key);
