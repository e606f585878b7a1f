"""A local BigQuery emulator for tests: start it, point the real client at it, stop it.

There is no Google-made BigQuery emulator; ``local-bigquery`` 0.3.2 (the BigQuery REST API on
DuckDB) is installed by ``make bq-emulator`` into ``.bq-emulator/`` (see
``scripts/bq_emulator/install.sh``) and started by ``scripts/bq_emulator/run.sh`` as a
subprocess on free ports with its own data directory. Nothing goes to the network.

In a conftest::

    from tests.bigquery_emulator import bigquery_emulator_fixture

    bq_emulator = bigquery_emulator_fixture(scope="session")

    def test_something(bq_emulator):
        client = bq_emulator.client()

or directly: ``with bigquery_emulator() as emulator: client = emulator.client()``.

When the emulator is not installed this raises :class:`EmulatorNotInstalled` (an error, never a
skip: a test that cannot run must not pass silently).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from pipeline.tools.pubsub_emulator import free_port

if TYPE_CHECKING:
    from google.cloud import bigquery

REPO_ROOT = Path(__file__).resolve().parent.parent
EMULATOR_DIR = REPO_ROOT / ".bq-emulator"
RUN_SCRIPT = REPO_ROOT / "scripts" / "bq_emulator" / "run.sh"
DEFAULT_PROJECT = "emulator-project"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0

Scope = Literal["session", "package", "module", "class", "function"]


class EmulatorNotInstalled(RuntimeError):
    """The emulator's venv is missing: run ``make bq-emulator``."""


class EmulatorFailedToStart(RuntimeError):
    """The emulator exited or did not answer in time; the message holds its log."""


@dataclass(frozen=True)
class BigQueryEmulator:
    """A running emulator: where it listens and how to reach it with the real client."""

    endpoint: str  # REST API root, the client's api_endpoint, e.g. http://127.0.0.1:40123
    project: str  # created at start-up; other projects are created on first use
    grpc_address: str  # BigQuery Storage Read/Write API, host:port
    data_dir: Path
    log_path: Path
    pid: int

    def client(self, project: str | None = None, **kwargs: Any) -> bigquery.Client:
        """A ``google.cloud.bigquery.Client`` on the emulator, offline: anonymous credentials,
        no metadata server, no BigQuery Storage client. Close it when done."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=project or self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
            **kwargs,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def is_installed() -> bool:
    return (EMULATOR_DIR / ".installed").is_file() and os.access(
        EMULATOR_DIR / "venv" / "bin" / "local-bigquery", os.X_OK
    )


def require_installed() -> None:
    if not is_installed():
        raise EmulatorNotInstalled(
            f"the local BigQuery emulator is not installed in {EMULATOR_DIR}: run "
            "`make bq-emulator` (scripts/bq_emulator/install.sh; needs Python 3.13)"
        )


def _answers(endpoint: str, project: str) -> bool:
    # A real API call: the emulator opens its DuckDB catalog on the first request.
    url = f"{endpoint}/bigquery/v2/projects/{project}/datasets"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start(
    project: str, data_dir: Path, log_path: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], BigQueryEmulator]:
    port, grpc_port = free_port(), free_port()
    command = [
        str(RUN_SCRIPT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--project",
        project,
        "--data-dir",
        str(data_dir),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    emulator = BigQueryEmulator(
        endpoint=f"http://127.0.0.1:{port}",
        project=project,
        grpc_address=f"127.0.0.1:{grpc_port}",
        data_dir=data_dir,
        log_path=log_path,
        pid=process.pid,
    )
    deadline = time.monotonic() + timeout
    while not _answers(emulator.endpoint, project):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            why = (
                f"exited with {process.returncode}"
                if process.returncode and process.returncode > 0
                else f"did not answer within {timeout:.0f} s"
            )
            raise EmulatorFailedToStart(
                f"the BigQuery emulator ({' '.join(command)}) {why}; log:\n"
                + emulator.log()[-4000:]
            )
        time.sleep(0.05)
    return process, emulator


@contextlib.contextmanager
def bigquery_emulator(
    project: str = DEFAULT_PROJECT,
    data_dir: str | os.PathLike[str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    attempts: int = 3,
) -> Iterator[BigQueryEmulator]:
    """Start the emulator on free ports, wait until it answers, yield it, stop it.

    ``data_dir`` defaults to a fresh temporary directory, deleted afterwards (a given one is
    kept). ``attempts`` covers the small race of a free port being taken before the emulator
    binds it.
    """
    require_installed()
    base = Path(tempfile.mkdtemp(prefix="bq-emulator-"))
    directory = base / "data" if data_dir is None else Path(data_dir)
    try:
        for attempt in range(1, attempts + 1):
            try:
                process, emulator = _start(
                    project, directory, base / "emulator.log", startup_timeout
                )
                break
            except EmulatorFailedToStart as error:
                if attempt == attempts or "address already in use" not in str(error).lower():
                    raise
        try:
            yield emulator
        finally:
            _stop(process)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the log, and the data unless given


def bigquery_emulator_fixture(
    scope: Scope = "session", project: str = DEFAULT_PROJECT
) -> Callable[..., Any]:
    """A pytest fixture yielding a running :class:`BigQueryEmulator`; assign it in a conftest:
    ``bq_emulator = bigquery_emulator_fixture(scope="session")``."""

    @pytest.fixture(scope=scope)
    def fixture() -> Iterator[BigQueryEmulator]:
        with bigquery_emulator(project=project) as emulator:
            yield emulator

    return fixture
