"""The producer's command line.

    python -m producer init    --dsn DSN
    python -m producer service create  --dsn DSN --key K --account A --amount 12.50 --currency EUR
    python -m producer service post    --dsn DSN --key K --payment pay_...
    python -m producer service reverse --dsn DSN --key K --payment pay_...
    python -m producer service expire-keys --dsn DSN --older-than-hours 24
    python -m producer relay   --dsn DSN --topic projects/P/topics/T [--batch-size 100]
                               [--poll-interval 1] [--lease-seconds 60] [--once]
                               [--exit-when-idle SECONDS] ...
    python -m producer status  --dsn DSN [--max-age SECONDS]

``--dsn`` is a libpq connection string or URL; it defaults to ``$PRODUCER_DSN``, and when that
is empty too, to libpq's PG* environment variables. Every option also accepts its underscore
spelling (``--batch_size``), like the pipeline's options.

Service commands print the result as one JSON object (``"replayed": true`` when the key was
seen before) and exit 0; a refused request prints ``{"error": CODE, "message": ...}`` on stderr
and exits 1. The relay exits 0 after SIGTERM or SIGINT once its current batch is marked (a
second signal aborts at once: the rows it held come back when their lease expires). ``status``
prints the lag metric as JSON and, with ``--max-age``, exits 1 when the oldest unpublished row
is older: usable as a probe or a cron alert.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any

import psycopg

from producer.db import apply_schema, connect
from producer.relay import PubSubPublisher, Relay, RelayConfig, outbox_status
from producer.service import PaymentsService, ServiceError, expire_idempotency_keys

log = logging.getLogger("producer")


def _option(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """``--batch-size`` and its alias ``--batch_size``."""
    names = [name]
    if "-" in name[2:]:
        names.append("--" + name[2:].replace("-", "_"))
    parser.add_argument(*names, **kwargs)


def decimal_argument(text: str) -> Decimal:
    """argparse type: Decimal's own error (InvalidOperation) is not one argparse reports."""
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal") from None


def _dsn(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--dsn",
        default=os.environ.get("PRODUCER_DSN", ""),
        help="libpq connection string or URL. Default: $PRODUCER_DSN, else the PG* variables",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m producer", description="Payments service with an outbox, and its relay."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="Create the tables if absent (idempotent).")
    _dsn(init)

    service = commands.add_parser("service", help="Record a payment or a state change.")
    operations = service.add_subparsers(dest="operation", required=True)
    create = operations.add_parser("create", help="A new PENDING payment.")
    post = operations.add_parser("post", help="PENDING -> POSTED.")
    reverse = operations.add_parser("reverse", help="PENDING or POSTED -> REVERSED.")
    for sub in (create, post, reverse):
        _dsn(sub)
        _option(
            sub, "--key", required=True,
            help="Idempotency key: resend the same key when retrying the same request",
        )  # fmt: skip
        _option(
            sub, "--account-limit", type=decimal_argument, default=None,
            help="Most a (account, currency) may have outstanding; default: no limit",
        )  # fmt: skip
    _option(create, "--account", required=True, help="Account id (1..128 characters)")
    _option(create, "--amount", required=True, help="Positive decimal, e.g. 12.50")
    _option(create, "--currency", required=True, help="Three uppercase letters, e.g. EUR")
    for sub in (post, reverse):
        _option(sub, "--payment", required=True, help="payment_id returned by create")
    expire = operations.add_parser("expire-keys", help="Delete idempotency keys older than N h.")
    _dsn(expire)
    _option(expire, "--older-than-hours", type=float, default=24.0, help="Default: 24")

    relay = commands.add_parser("relay", help="Publish the outbox to Pub/Sub.")
    _dsn(relay)
    defaults = RelayConfig()
    _option(relay, "--topic", required=True, help="projects/PROJECT/topics/NAME")
    _option(
        relay, "--batch-size", type=int, default=defaults.batch_size,
        help=f"Rows claimed and published per batch (1..1000). Default: {defaults.batch_size}",
    )  # fmt: skip
    _option(
        relay, "--poll-interval", type=float, default=defaults.poll_interval_seconds,
        help="Seconds between polls when nothing is claimable."
        f" Default: {defaults.poll_interval_seconds}",
    )  # fmt: skip
    _option(
        relay, "--lease-seconds", type=float, default=defaults.lease_seconds,
        help="How long claimed rows stay reserved for this relay; after a crash they are"
        f" re-published when it expires. Default: {defaults.lease_seconds}",
    )  # fmt: skip
    _option(
        relay, "--publish-timeout", type=float, default=None,
        help="Seconds Pub/Sub may take to acknowledge a batch, retries included; must be"
        " below the lease. Default: half the lease",
    )  # fmt: skip
    _option(
        relay, "--retry-initial", type=float, default=defaults.retry_initial_seconds,
        help="Backoff after a row's first failed publish, doubled per attempt."
        f" Default: {defaults.retry_initial_seconds}",
    )  # fmt: skip
    _option(
        relay, "--retry-max", type=float, default=defaults.retry_max_seconds,
        help=f"Longest backoff. Default: {defaults.retry_max_seconds}",
    )  # fmt: skip
    _option(
        relay, "--retention-hours", type=float, default=defaults.retention.total_seconds() / 3600,
        help="Published rows older than this are deleted. Default: 168 (7 days)",
    )  # fmt: skip
    _option(
        relay, "--cleanup-interval", type=float, default=defaults.cleanup_interval_seconds,
        help=f"Seconds between cleanups. Default: {defaults.cleanup_interval_seconds}",
    )  # fmt: skip
    _option(
        relay, "--lag-log-interval", type=float, default=defaults.lag_log_interval_seconds,
        help=f"Seconds between outbox_lag log lines. Default: {defaults.lag_log_interval_seconds}",
    )  # fmt: skip
    _option(relay, "--once", action="store_true", help="Exit when nothing is claimable.")
    _option(
        relay, "--exit-when-idle", type=float, default=None, metavar="SECONDS",
        help="Exit once no row has been unpublished for this long (tests, demos, backfills)",
    )  # fmt: skip
    _option(relay, "--relay-id", default=None, help="Lease owner name. Default: host-pid-random")
    _option(
        relay, "--hold-before-mark", type=float, default=0.0, metavar="SECONDS",
        help="TEST SEAM, never in production: sleep between Pub/Sub's ack and the mark, so a"
        " test can kill -9 the relay in that window. Default: 0",
    )  # fmt: skip
    _option(
        relay, "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG logs every batch. Default: INFO",
    )  # fmt: skip

    status = commands.add_parser("status", help="The lag metric and pending rows, as JSON.")
    _dsn(status)
    _option(
        status, "--max-age", type=float, default=None, metavar="SECONDS",
        help="Exit 1 when the oldest unpublished row is older than this",
    )  # fmt: skip
    return parser


def _service(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        service = PaymentsService(conn, account_limit=args.account_limit)
        try:
            if args.operation == "create":
                result = service.create_payment(args.key, args.account, args.amount, args.currency)
            elif args.operation == "post":
                result = service.post_payment(args.key, args.payment)
            else:
                result = service.reverse_payment(args.key, args.payment)
        except ServiceError as error:
            print(json.dumps({"error": error.code, "message": str(error)}), file=sys.stderr)
            return 1
    print(json.dumps(result.to_json()))
    return 0


def _relay(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    lease = args.lease_seconds
    timeout = args.publish_timeout if args.publish_timeout is not None else lease / 2
    if not 0 < timeout < lease:
        print("--publish-timeout must be positive and below --lease-seconds", file=sys.stderr)
        return 2
    try:
        config = RelayConfig(
            batch_size=args.batch_size,
            lease_seconds=lease,
            poll_interval_seconds=args.poll_interval,
            retry_initial_seconds=args.retry_initial,
            retry_max_seconds=args.retry_max,
            retention=dt.timedelta(hours=args.retention_hours),
            cleanup_interval_seconds=args.cleanup_interval,
            lag_log_interval_seconds=args.lag_log_interval,
            hold_before_mark_seconds=args.hold_before_mark,
        )
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    with connect(args.dsn) as conn:
        if conn.execute("SELECT to_regclass('outbox')").fetchone() == (None,):
            print("no outbox table: run `python -m producer init` first", file=sys.stderr)
            return 2
    publisher = PubSubPublisher(
        args.topic, timeout_seconds=timeout, max_batch_messages=config.batch_size
    )
    relay = Relay(lambda: connect(args.dsn), publisher, config, args.relay_id)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if relay.stopping:  # a second signal: stop now, the leases will expire
            raise KeyboardInterrupt
        log.info("%s: finishing the current batch, then exiting", signal.Signals(signum).name)
        relay.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stats = relay.run(once=args.once, exit_when_idle=args.exit_when_idle)
    except KeyboardInterrupt:
        return 130
    finally:
        publisher.close()
    print(stats.render(relay.relay_id), flush=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        status = outbox_status(conn)
    print(json.dumps(dataclasses.asdict(status)))
    too_old = args.max_age is not None and status.oldest_unpublished_age_seconds > args.max_age
    return 1 if too_old else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except psycopg.OperationalError as error:  # unreachable database, bad DSN, refused login
        print(f"cannot use the database: {error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        with connect(args.dsn) as conn:
            apply_schema(conn)
        print("schema applied")
        return 0
    if args.command == "service":
        if args.operation == "expire-keys":
            with connect(args.dsn) as conn:
                deleted = expire_idempotency_keys(conn, dt.timedelta(hours=args.older_than_hours))
            print(json.dumps({"deleted": deleted}))
            return 0
        return _service(args)
    if args.command == "relay":
        return _relay(args)
    return _status(args)
