"""PostgreSQL for the platform tests: one server per test session (``pg_server``), a fresh
database per test (``pg_url``). In CI (``SSC_REQUIRE_POSTGRES=1``) a missing server is a
failure; elsewhere those tests are skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.platform.postgres import PgServer, postgres_missing, running_server


def require_postgres() -> None:
    """Skip (fail in CI) when no PostgreSQL server can be started here."""
    reason = postgres_missing()
    if reason is None:
        return
    if os.environ.get("SSC_REQUIRE_POSTGRES"):
        pytest.fail(f"{reason}, and SSC_REQUIRE_POSTGRES is set")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL 15 server on a free 127.0.0.1 port, for the whole session."""
    require_postgres()
    with running_server(free_port()) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The sink URL of a fresh database on the session's server."""
    return pg_server.url(pg_server.new_database())
