"""A throwaway PostgreSQL cluster on loopback, for the demo, the tests and experiments.

    python -m producer.local_postgres [--port 5433]

runs one in the foreground (``make postgres``) and prints its DSN. Code uses
:func:`running_postgres`: ``initdb`` into a fresh temporary directory, ``postgres`` on a free
127.0.0.1 port, a connectable DSN yielded, and on exit (also after an exception) a fast shutdown
of the server and all its processes, then the directory removed. About 1-2 s.

Why this shape: PostgreSQL refuses to run as root, and the machine images and CI containers run
as root, so when we are root the binaries run as the ``postgres`` OS user through ``runuser``
and the directory is handed to that user (a path below a root-only ``pytest`` tmp_path would be
unreadable to it, so the directory is created directly under the system temp folder). As any
other user the binaries simply run as that user. Durability settings are off
(``fsync=off``...): these clusters are disposable, the proofs kill relays, never the database.

The binaries come from ``$PG_BIN`` or ``/usr/lib/postgresql/15/bin`` (Debian's postgresql-15).
When they are missing this raises :class:`PostgresUnavailable` with what to install; tests let
it fail, they never skip.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BIN = "/usr/lib/postgresql/15/bin"
SERVICE_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    data_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)


def bin_dir() -> Path:
    """The server binaries, or a clear error naming what is missing and how to get it."""
    folder = Path(os.environ.get("PG_BIN", DEFAULT_BIN))
    missing = [name for name in ("initdb", "postgres") if not (folder / name).is_file()]
    if missing:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries {missing} not found in {folder}: install PostgreSQL 15"
            " (Debian/Ubuntu: apt-get install postgresql-15) or point PG_BIN at the folder"
            " holding initdb and postgres"
        )
    return folder


def _as_service_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root needs runuser (util-linux) to drop to postgres")
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root needs an OS user {SERVICE_USER!r} to run the server as"
            " (the server refuses root); the postgresql-15 package creates it"
        ) from None
    return [runuser, "-u", SERVICE_USER, "--", *command]


def _make_workdir() -> Path:
    # Directly under the system temp folder (world-traversable), never below a root-only folder.
    workdir = Path(tempfile.mkdtemp(prefix="outbox-postgres-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVICE_USER)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    workdir.chmod(0o700)
    return workdir


def _wait_until_ready(postgres: Postgres, process: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PostgresUnavailable(f"postgres exited with {process.returncode}: {_tail(log)}")
        try:
            with psycopg.connect(postgres.dsn(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise PostgresUnavailable(f"postgres did not accept connections in 30 s: {_tail(log)}")


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _stop(process: subprocess.Popen[bytes], data_dir: Path) -> None:
    """Fast shutdown (SIGINT: disconnect clients, stop every backend), then immediate
    (SIGQUIT), then SIGKILL. The postmaster is signalled directly: ``runuser`` sits between us
    and it. Backends notice a dead postmaster and exit on their own."""
    pid = _postmaster_pid(data_dir)
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
        for target in filter(None, (pid, process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        try:
            process.wait(timeout=wait)
            if pid is None or not _alive(pid):
                return
        except subprocess.TimeoutExpired:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running_postgres(port: int | None = None) -> Iterator[Postgres]:
    """A fresh cluster on 127.0.0.1 (trust authentication, loopback only), removed on exit."""
    from pipeline.tools.pubsub_emulator import free_port  # noqa: PLC0415

    binaries = bin_dir()
    workdir = _make_workdir()
    data_dir, log = workdir / "data", workdir / "postgres.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        initdb = subprocess.run(
            _as_service_user([
                str(binaries / "initdb"), "-D", str(data_dir), "-U", SERVICE_USER,
                "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
            ]),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.strip()[-2000:]}")
        postgres = Postgres("127.0.0.1", port or free_port(), SERVICE_USER, data_dir)
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                _as_service_user([
                    str(binaries / "postgres"), "-D", str(data_dir),
                    "-h", postgres.host, "-p", str(postgres.port), "-k", str(workdir),
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ]),
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
            )  # fmt: skip
        _wait_until_ready(postgres, process, log)
        yield postgres
    finally:
        if process is not None:
            _stop(process, data_dir)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a throwaway PostgreSQL in the foreground.")
    parser.add_argument("--port", type=int, default=5433, help="Loopback port. Default: 5433")
    args = parser.parse_args(argv)
    with running_postgres(args.port) as postgres:
        print(f"PostgreSQL on {postgres.host}:{postgres.port}; DSN: {postgres.dsn()}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
