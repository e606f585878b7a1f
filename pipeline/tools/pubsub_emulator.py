"""Google's Pub/Sub emulator, started and stopped for local runs and tests.

    python -m pipeline.tools.pubsub_emulator [--port 8085] [--project local-project]

runs one in the foreground (``make emulator``). Code uses :func:`running_emulator`, which starts
one on a free port, points ``PUBSUB_EMULATOR_HOST`` at it (every Google client honours it) and
stops it, with its Java child process, on exit. The emulator ships with the Google Cloud CLI
(``gcloud beta emulators pubsub start``); without it this fails with a clear message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROJECT = "local-project"


class EmulatorUnavailable(RuntimeError):
    pass


_EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_SERVICE_PORT = 20_000


def free_port() -> int:
    """A free port for a local service (an emulator, a test database) that another process
    starts after this returns. Taken below the kernel's ephemeral range where the machine says
    what it is: the kernel hands ephemeral ports to every outgoing connection and every bind to
    port 0 (the test proxies), so a port picked from that range can be taken by one of them
    before the service binds it, and the readiness check then finds the wrong server."""
    ephemeral_low = 0
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(_EPHEMERAL_PORTS.read_text().split()[0])
    for _ in range(100 if ephemeral_low > _LOWEST_SERVICE_PORT + 1000 else 0):
        port = random.randrange(_LOWEST_SERVICE_PORT, ephemeral_low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, project: str, data_dir: str) -> list[str]:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorUnavailable(
            "gcloud is not on the PATH: install the Google Cloud CLI with its Pub/Sub emulator"
            " (component pubsub-emulator, Java 11+) to run streaming locally and its tests"
        )
    return [
        gcloud, "beta", "emulators", "pubsub", "start",
        f"--host-port=127.0.0.1:{port}", f"--project={project}", f"--data-dir={data_dir}",
        "--quiet",
    ]  # fmt: skip


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmulatorUnavailable(f"the Pub/Sub emulator exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise EmulatorUnavailable(f"the Pub/Sub emulator did not listen on {port} in {timeout} s")


@dataclass(frozen=True)
class Emulator:
    host: str  # host:port, the value of PUBSUB_EMULATOR_HOST
    project: str

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"


@contextlib.contextmanager
def running_emulator(
    project: str = DEFAULT_PROJECT, port: int | None = None, startup_timeout: float = 60
) -> Iterator[Emulator]:
    """Start an emulator, set PUBSUB_EMULATOR_HOST for this process (and its children), stop
    the emulator and restore the environment afterwards."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="pubsub-emulator-") as data_dir:
        process = subprocess.Popen(
            _command(port, project, data_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the Java child is stopped with it
        )
        previous = os.environ.get("PUBSUB_EMULATOR_HOST")
        try:
            _wait_until_listening(port, process, startup_timeout)
            os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
            yield Emulator(f"127.0.0.1:{port}", project)
        finally:
            if previous is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def create_topic_and_subscription(
    topic: str,
    subscription: str,
    ack_deadline_seconds: int = 60,
    retention_seconds: int = 7 * 24 * 3600,
) -> None:
    """A topic and a subscription that retains acknowledged messages, so it can be replayed
    with seek (the same settings the Terraform module gives the real one)."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415
    from google.protobuf import duration_pb2  # noqa: PLC0415

    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(request={"name": topic})
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(
            request={
                "name": subscription,
                "topic": topic,
                "ack_deadline_seconds": ack_deadline_seconds,
                "retain_acked_messages": True,
                "message_retention_duration": duration_pb2.Duration(seconds=retention_seconds),
            }
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Google's Pub/Sub emulator in the foreground.")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    args = parser.parse_args(argv)
    with running_emulator(args.project, args.port) as emulator:
        print(f"Pub/Sub emulator on {emulator.host}: export PUBSUB_EMULATOR_HOST={emulator.host}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
