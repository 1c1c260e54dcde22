"""A private PostgreSQL cluster in a temporary directory, for tests that stop and restart it.

The machine's main cluster serves every other test, so restarting it is off limits; this one
belongs to the test alone. `initdb` and `pg_ctl` come from `/usr/lib/postgresql/*/bin/` (or
PATH). As root they run as the `postgres` OS user (`runuser -u postgres --`), because
PostgreSQL refuses to run as root; the directory is created directly under the system temp
directory (pytest's own tmp dirs are private to root) and chowned to that user.

Durability settings are relaxed (`fsync=off`): an immediate stop is a crash of PostgreSQL,
not of the machine, so WAL written at commit survives in the OS page cache, and WAL replay on
the next start still exercises crash recovery. Commits stay synchronous: an acknowledged
commit must survive the stop, as it would in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

OS_USER = "postgres"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    # Safe here: these only matter when the machine crashes. Not synchronous_commit=off: an
    # immediate stop would lose commits PostgreSQL had already acknowledged.
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest /usr/lib/postgresql/N/bin, or PATH."""

    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return None if found is None else Path(found).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable_reason() -> str | None:
    """Why a private cluster cannot run here, or None."""
    if find_bin_dir() is None:
        return "initdb not found (install the PostgreSQL server package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is not available"
    return None


def require_cluster_support() -> None:
    """Skip the test (fail it when CI is set) when no private cluster can be made here."""
    reason = unavailable_reason()
    if reason is None:
        return
    message = f"cannot run a private PostgreSQL cluster: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PostgresCluster:
    """One private cluster: `start()`, `stop()` (immediate by default), `url(db)`, `destroy()`."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        assert bin_dir is not None, unavailable_reason()
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="perdure-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgresql.log"
        self.port = free_port()
        self.running = False
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:1])} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_text()}"
            )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")  # fmt: skip
        lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self.root}'"]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# perdure tests\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; `immediate` is a crash as far as clients are concerned."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PostgresCluster]:
    """A started private cluster, destroyed afterwards (skips where none can run)."""
    require_cluster_support()
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
