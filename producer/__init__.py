"""The producer side of effectively-once: a reference payments service and its outbox relay.

The pipeline (``pipeline/``) makes the consumer side effectively-once. This package does the same
for the producer with the transactional outbox pattern, so the template covers the whole path:
service database -> Pub/Sub -> Beam -> warehouse.

* ``schema.sql``: the service's tables (payments, idempotency_keys) and the outbox.
* ``service.py``: records payments; each request writes the business row and its outbox event
  in one PostgreSQL transaction, under an idempotency key.
* ``relay.py``: publishes pending outbox rows to Pub/Sub (attributes ``event_id`` and
  ``event_time``), at least once, safe with several relays, and cleans up; the lag metric.
* ``__main__.py``: ``python -m producer init | service | relay | status``.
* ``verify.py``: compares a warehouse with the service database (the proof).
* ``demo.py``: ``make run-outbox``; ``local_postgres.py``: a throwaway PostgreSQL cluster.

Why it is safe, in one paragraph: an event exists if and only if its business change committed
(same transaction); the relay marks a row published only after Pub/Sub acknowledged it, so a
crash can only cause a re-publish of the same bytes with the same event_id, never a loss; and the
pipeline drops those duplicates by event_id. At-least-once here, effectively-once end to end.
"""
