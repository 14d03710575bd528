"""A real PostgreSQL 15 server for the tests: ``initdb`` in a temp dir, ``pg_ctl`` on a free
127.0.0.1 port, run as the ``postgres`` user when the tests run as root (as in CI: the server
refuses to run as root). The benchmarks start one the same way.

Users: ``postgres`` connects without a password (trust, for the tests' own inspection),
every other role with its password (scram-sha-256), so password files are really checked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("SSC_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 30


def postgres_missing() -> str | None:
    """Why no server can be started here (None: one can)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}/initdb; apt install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server as"
    return None


class PgServer:
    """One server in its own temp dir; :meth:`stop` / :meth:`start` keep its data."""

    def __init__(self, port: int, *, durable: bool = False) -> None:
        self.port = port
        self.workdir = Path(tempfile.mkdtemp(prefix="ssc-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self._names = itertools.count(1)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        settings = [f"port = {port}", "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{self.workdir}'", "max_connections = 60",
                    "shared_buffers = 64MB"]
        if not durable:
            # the tests never crash the machine; a commit need not reach the disk
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", str(START_TIMEOUT), "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, db: str = "postgres", user: str = "postgres") -> str:
        """The sink URL of a database."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def admin(self, db: str = "postgres") -> Any:
        """A psycopg connection as ``postgres`` (autocommit)."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db,
                               autocommit=True)

    def new_database(self, owner: str = "postgres") -> str:
        """A fresh empty database; returns its name."""
        name = f"t{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
        return name

    def new_role(self, name: str, password: str) -> None:
        """A login role that needs its password."""
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)))


@contextlib.contextmanager
def running_server(port: int) -> Iterator[PgServer]:
    """A started server, stopped and deleted at the end."""
    server = PgServer(port)
    try:
        server.start()
        yield server
    finally:
        server.remove()
