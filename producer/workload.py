"""Simulated clients of the payments service, for the demo and the tests.

Clients that behave like real ones on a bad network: they create payments, post most of them,
reverse some; they retry a share of their requests with the same idempotency key (the response
was "lost"), and the retry must return the first result and change nothing; now and then they
reuse a key for a different request (refused); and the service rejects some requests after it
has written the rows: payments beyond the account's exposure limit, and transitions that are not
allowed (posting a reversed payment). Those roll back, and the event each would have produced
is remembered, so the proof can check it is nowhere.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from producer.service import PaymentResult, PaymentsService, ServiceError

CURRENCIES = ("EUR", "USD")


@dataclass
class Workload:
    requests: int = 0  # first attempts
    committed: int = 0  # requests that changed something: one outbox event each
    replayed: int = 0  # retries answered from the idempotency key
    refused: Counter[str] = field(default_factory=Counter)  # by error code
    refused_event_ids: list[str] = field(default_factory=list)
    payment_ids: list[str] = field(default_factory=list)

    def render(self) -> str:
        refused = ", ".join(f"{n} {code}" for code, n in sorted(self.refused.items())) or "none"
        return (
            f"{self.requests} requests: {self.committed} committed (one event each),"
            f" {self.replayed} retries answered from their idempotency key (nothing new),"
            f" refused and rolled back: {refused}"
        )


class _Client:
    def __init__(
        self, service: PaymentsService, rng: random.Random, retry_rate: float, rate: float
    ) -> None:
        self.service = service
        self.rng = rng
        self.retry_rate = retry_rate
        self.rate = rate
        self.workload = Workload()
        self._started = time.monotonic()

    def call(
        self, operation: Callable[..., PaymentResult], key: str, *args: object
    ) -> PaymentResult | None:
        self.workload.requests += 1
        if self.rate > 0:  # pace to ``rate`` first attempts per second
            ahead = self.workload.requests / self.rate - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)
        try:
            result = operation(key, *args)
        except ServiceError as error:
            self.workload.refused[error.code] += 1
            if error.event_id:
                self.workload.refused_event_ids.append(error.event_id)
            return None
        self.workload.committed += 1
        if self.rng.random() < self.retry_rate:
            again = operation(key, *args)
            if not again.replayed or again.event_id != result.event_id:
                raise RuntimeError(f"a retry of {key!r} was not answered with the first result")
            self.workload.replayed += 1
        return result


def run_workload(
    service: PaymentsService,
    *,
    payments: int,
    seed: int = 7,
    prefix: str = "",
    accounts: int = 20,
    retry_rate: float = 0.1,
    post_rate: float = 0.75,
    reverse_rate: float = 0.2,
    invalid_rate: float = 0.05,
    key_reuse_rate: float = 0.02,
    rate: float = 0.0,
) -> Workload:
    """Create ``payments`` payments, then move them on. ``prefix`` keeps idempotency keys of
    several calls on one database apart; ``rate`` paces requests per second (0: at once)."""
    rng = random.Random(seed)
    client = _Client(service, rng, retry_rate, rate)
    created: list[PaymentResult] = []
    for i in range(payments):
        account = f"acct-{rng.randrange(accounts):03d}"
        amount = Decimal(rng.randint(100, 50_000)) / 100
        currency = rng.choice(CURRENCIES)
        key = f"{prefix}create-{i}"
        result = client.call(service.create_payment, key, account, amount, currency)
        if result is None:
            continue
        created.append(result)
        if rng.random() < key_reuse_rate:  # the same key, another amount: must be refused
            client.call(service.create_payment, key, account, amount + 1, currency)
    for payment in created:
        payment_id = payment.payment_id
        roll = rng.random()
        if roll < post_rate:
            client.call(service.post_payment, f"{prefix}post-{payment_id}", payment_id)
            if rng.random() < reverse_rate:
                client.call(service.reverse_payment, f"{prefix}reverse-{payment_id}", payment_id)
            if rng.random() < invalid_rate:  # posting again (or a reversed one): not allowed
                client.call(service.post_payment, f"{prefix}post-again-{payment_id}", payment_id)
        elif roll < post_rate + (1 - post_rate) / 4:
            client.call(service.reverse_payment, f"{prefix}cancel-{payment_id}", payment_id)
    client.workload.payment_ids = [payment.payment_id for payment in created]
    return client.workload
