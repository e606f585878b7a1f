-- The reference payments service's tables and its transactional outbox (PostgreSQL 13+).
-- Idempotent: `python -m producer init` applies it again safely.

-- The business rows: one per payment, in its current state.
CREATE TABLE IF NOT EXISTS payments (
    payment_id  text PRIMARY KEY,
    account_id  text NOT NULL,
    amount      numeric(38, 9) NOT NULL CHECK (amount > 0),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      text NOT NULL CHECK (status IN ('PENDING', 'POSTED', 'REVERSED')),
    created_at  timestamptz NOT NULL,
    -- The event_time of the latest state change: the next one is never earlier (service.py).
    updated_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_account ON payments (account_id, currency);

-- One row per request that changed something, written in the same transaction as the change:
-- a retried request finds it and gets the stored response instead of a second payment. A
-- request that rolled back leaves no row, so its retry runs again (nothing happened the first
-- time). request_hash tells a retry from a different request that reuses the key.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key text PRIMARY KEY,
    operation       text NOT NULL,
    request_hash    text NOT NULL,
    response        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);

-- The outbox: one row per event, inserted in the transaction that changes the business row, so
-- both commit or neither does. The relay (relay.py) publishes and marks rows; rows published
-- longer ago than the retention are deleted by it.
--   payload        the message body exactly as published: the contract's JSON line. text, not
--                  jsonb: jsonb would reorder keys and normalise numbers, and a re-publish must
--                  send the same bytes as the first publish.
--   event_id       stable for the event: a re-publish carries the same id (pipeline dedup key)
--   claimed_by, claimed_until
--                  the lease of the relay publishing the row; an expired lease is reclaimable.
--                  After a failed publish claimed_until is the earliest retry (the backoff).
--   attempts       how many times a relay claimed the row; > 1 means it was retried or
--                  re-published after a relay died
--   message_id     Pub/Sub's id of the acknowledged publish, for tracing
-- The table is a queue with constant churn: vacuum it early.
CREATE TABLE IF NOT EXISTS outbox (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    aggregate_id  text NOT NULL,
    payload       text NOT NULL,
    event_time    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    message_id    text,
    claimed_by    text,
    claimed_until timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
-- What the relay scans: only unpublished rows, so the scan stays small however long the
-- retention. What the cleanup scans: published rows by age.
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at ON outbox (published_at)
    WHERE published_at IS NOT NULL;
